/* SPDX-License-Identifier: MIT */
/*
 * discard.h - discards of merged pages, and discards racing a merge
 * (discard.c). eng.gate held by every caller.
 */
#ifndef DEDUP_DISCARD_H
#define DEDUP_DISCARD_H

#include "base.h"

int dd_discard_merged(uintptr_t a, uintptr_t b);
void dd_discard_removed(uintptr_t a, uintptr_t b);
int dd_discard_free_begin(uintptr_t lo, uintptr_t hi);   /* MADV_FREE in flight: no gate */
void dd_discard_free_end(int k);
bool dd_discard_freeing(uintptr_t a, uintptr_t b);        /* no gate */
void dd_discard_free_atfork_child(void);   /* engine.c, postfork_child */
void dd_discard_moved(uintptr_t from, uintptr_t to, size_t len);   /* a REMAP event */
bool dd_discard_marked(uintptr_t a);
void dd_discard_refilled(uintptr_t a);
bool dd_discard_pending(uintptr_t a);
bool dd_discard_in_merged(uintptr_t a);
int dd_discard_fork_snapshot(void);          /* prefork, eng.gate held */
size_t dd_discard_forked(const uintptr_t (**iv)[2]);   /* in the child */
void dd_discard_unmerged(uintptr_t a, uintptr_t b);
void dd_discard_unmerged_many(const uintptr_t (*iv)[2], size_t n);
size_t dd_removing_fence(void);
bool dd_removing_mergeable(uintptr_t a);
bool dd_removing_named(uintptr_t a);
void dd_removing_written(uintptr_t a);
void dd_removing_unregistered(uintptr_t a, uintptr_t b);
void dd_removing_prune(void);
size_t dd_removing_unfenced(void);
void dd_discard_fini(void);

#endif /* DEDUP_DISCARD_H */
