/* SPDX-License-Identifier: MIT */
/* group_stub.c - placeholder until group.c lands: never in a group. */
#include "internal.h"
bool dd_group_name_ok(const char *name) { return dd_share_name_ok(name); }
int dd_group_join(const char *name) { (void)name; dd_warn("sharing groups: not built"); return -ENOSYS; }
void dd_group_leave(void) {}
bool dd_group_active(void) { return false; }
void dd_group_atfork_child(void) {}
int dd_group_lookup(const uint64_t *h, size_t n, struct dd_group_answer *a, struct dd_group_seg *s, size_t *ns)
{ (void)h; (void)n; (void)a; (void)s; *ns = 0; return -ENOSYS; }
int dd_group_segment_new(const void *const *p, size_t n) { (void)p; (void)n; return -ENOSYS; }
int dd_group_segment_check(int fd) { (void)fd; return -ENOSYS; }
int64_t dd_group_publish(int fd, const uint64_t *h, size_t n) { (void)fd; (void)h; (void)n; return -ENOSYS; }
int dd_group_release(const uint64_t *ids, size_t n) { (void)ids; (void)n; return -ENOSYS; }
