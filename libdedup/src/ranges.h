/* SPDX-License-Identifier: MIT */
/*
 * ranges.h - sorted tables of disjoint address ranges (ranges.c), for the
 * preload library and the child guard.
 */
#ifndef DEDUP_RANGES_H
#define DEDUP_RANGES_H

#include "base.h"

struct dd_range {
	uintptr_t lo, hi;
};
struct dd_rtab {                 /* sorted, disjoint; owner does the locking */
	struct dd_range *r;
	size_t n, cap;
	unsigned moves;          /* times growing moved the table */
};
bool dd_rt_init(struct dd_rtab *t, size_t cap);   /* grows past cap when needed */
bool dd_rt_reserve(struct dd_rtab *t, size_t n);
void dd_rt_fini(struct dd_rtab *t);
size_t dd_rt_lower(const struct dd_rtab *t, uintptr_t addr);
bool dd_rt_overlaps(const struct dd_rtab *t, uintptr_t lo, uintptr_t hi);
void dd_rt_remove_at(struct dd_rtab *t, size_t i);
bool dd_rt_insert(struct dd_rtab *t, uintptr_t lo, uintptr_t hi);
void dd_rt_sub(struct dd_rtab *t, uintptr_t lo, uintptr_t hi);
bool dd_rt_union(struct dd_rtab *t, uintptr_t lo, uintptr_t hi);

#endif /* DEDUP_RANGES_H */
