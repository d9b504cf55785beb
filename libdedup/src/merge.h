/* SPDX-License-Identifier: MIT */
/*
 * merge.h - the merge protocol and unmerging (merge.c), and api.c's internal
 * entry points.
 */
#ifndef DEDUP_MERGE_H
#define DEDUP_MERGE_H

#include "region.h"

long dd_merge_batch(void);      /* eng.lock held; merges eng.batch */
int dd_merge_unmerge(struct dd_region *r, uintptr_t lo, uintptr_t hi);   /* eng.lock held */
int dd_merge_unmerge_pieces(uintptr_t lo, uintptr_t hi);   /* preload: takes eng.lock */
int dd_unregister(void *addr, size_t len, uintptr_t ulo, uintptr_t uhi);   /* api.c */
int dd_shutdown(bool unmerge);                             /* api.c */
void dd_merge_free_scratch(void);
int dd_merge_init(void);       /* eng.lock held: batch, cmpbuf, S */
void dd_merge_fini(void);
bool dd_merge_is_scratch(uintptr_t a, uintptr_t b);   /* [a, b) inside S */
bool dd_merge_budget_spent(void);
long dd_merge_give_back(long want, size_t max_len, bool hold);   /* eng.lock held */
void dd_merge_spares_keep(void);   /* eng.lock held */

#endif /* DEDUP_MERGE_H */
