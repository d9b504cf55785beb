/* SPDX-License-Identifier: MIT */
/*
 * child.h - a fork()ed child's merged pages (child.c): the guard thread, and
 * handing pieces back as anonymous memory.
 */
#ifndef DEDUP_CHILD_H
#define DEDUP_CHILD_H

#include "ranges.h"

void dd_child_guard(void);           /* in the child, from fork() */
void dd_child_atfork(void);          /* engine.c's atfork child handler, last */
void dd_child_probe(void);           /* engine start: can a child start a thread? */
void dd_child_reserve(void);         /* engine start: the child's tables, mapped ahead */
bool dd_child_guarding(void);
unsigned dd_child_threads(void);     /* 1 while the guard thread runs */
void dd_child_wake(void);            /* the guard: dd_creds_follow() */
int dd_child_release(void);          /* back to anonymous memory, guard stopped */
void dd_child_events_handled(void);  /* the guard has handled what it read */
int dd_piece_to_anon(uintptr_t a, size_t len, int prot, const struct dd_rtab *zero, int uffd);
void dd_preload_forked(void);        /* preload/lifecycle.c: after the guard, in the child */

#endif /* DEDUP_CHILD_H */
