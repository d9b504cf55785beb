/* SPDX-License-Identifier: MIT */
/*
 * ranges.c - sorted tables of disjoint address ranges (struct dd_rtab).
 *
 * Used by the preload library (its registered, excluded and own ranges) and
 * by a fork()ed child's guard (child.c: pages discarded). A table lives in
 * one MAP_NORESERVE mapping made with the raw system call, so it can be
 * created and grown from inside an interposed mmap() and never touches
 * malloc. It starts at the size asked for (callers size tables of
 * mappings from the live vm.max_map_count: dd_maps_table_cap) and doubles
 * when full (mremap: the table may move; the owner's lock covers that, and
 * t->moves counts it for an owner that tracks where its tables are). No
 * locking here: each table's owner says what protects it. An insert that
 * finds no memory to grow fails (returns false) and leaves the table as it
 * was. The memory is MADV_DONTDUMP: ours, not the program's.
 */
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

static size_t bytes(size_t cap)
{
	return (cap * sizeof(struct dd_range) + DD_PAGE - 1) & ~(DD_PAGE - 1);
}

bool dd_rt_init(struct dd_rtab *t, size_t cap)
{
	cap = dd_own_table_cap(cap < 256 ? 256 : cap, sizeof(struct dd_range));
	void *p = dd_os_far_mmap(bytes(cap), PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	t->r = p == MAP_FAILED ? NULL : p;
	t->n = 0;
	t->cap = t->r ? bytes(cap) / sizeof(*t->r) : 0;
	t->moves = 0;
	if (t->r)
		dd_os_madvise(t->r, bytes(cap), MADV_DONTDUMP);
	return t->r != NULL;
}

/* Room for n ranges, growing (doubling) if needed. */
bool dd_rt_reserve(struct dd_rtab *t, size_t n)
{
	size_t ncap = t->cap;

	if (n <= t->cap)
		return true;
	if (!t->r)
		return false;
	while (ncap < n)
		ncap *= 2;
	void *p = dd_os_far_mremap(t->r, bytes(t->cap), bytes(ncap));
	if (p == MAP_FAILED)
		return false;
	if (p != (void *)t->r)
		t->moves++;
	t->r = p;
	t->cap = bytes(ncap) / sizeof(*t->r);
	return true;
}

void dd_rt_fini(struct dd_rtab *t)
{
	if (t->r)
		dd_os_raw_munmap(t->r, bytes(t->cap));
	t->r = NULL;
	t->n = t->cap = 0;
}

/* Index of the first range whose end is above addr. */
size_t dd_rt_lower(const struct dd_rtab *t, uintptr_t addr)
{
	size_t lo = 0, hi = t->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (t->r[mid].hi <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

bool dd_rt_overlaps(const struct dd_rtab *t, uintptr_t lo, uintptr_t hi)
{
	size_t i = dd_rt_lower(t, lo);
	return i < t->n && t->r[i].lo < hi;
}

void dd_rt_remove_at(struct dd_rtab *t, size_t i)
{
	memmove(&t->r[i], &t->r[i + 1], (t->n - i - 1) * sizeof(*t->r));
	t->n--;
}

/* Insert [lo, hi), which overlaps nothing. */
bool dd_rt_insert(struct dd_rtab *t, uintptr_t lo, uintptr_t hi)
{
	size_t i = dd_rt_lower(t, lo);
	if (t->n == t->cap && !dd_rt_reserve(t, t->n + 1))
		return false;
	memmove(&t->r[i + 1], &t->r[i], (t->n - i) * sizeof(*t->r));
	t->r[i] = (struct dd_range){ lo, hi };
	t->n++;
	return true;
}

/* Remove [lo, hi) from every range (splitting where needed). */
void dd_rt_sub(struct dd_rtab *t, uintptr_t lo, uintptr_t hi)
{
	size_t i = dd_rt_lower(t, lo);
	while (i < t->n && t->r[i].lo < hi) {
		struct dd_range r = t->r[i];
		dd_rt_remove_at(t, i);
		if (r.lo < lo)
			dd_rt_insert(t, r.lo, lo), i++;
		if (r.hi > hi) {
			dd_rt_insert(t, hi, r.hi);
			break;
		}
	}
}

/* Add [lo, hi) as a union (coalescing with what overlaps or touches it). */
bool dd_rt_union(struct dd_rtab *t, uintptr_t lo, uintptr_t hi)
{
	size_t i = dd_rt_lower(t, lo ? lo - 1 : 0);
	while (i < t->n && t->r[i].lo <= hi) {
		if (t->r[i].lo < lo)
			lo = t->r[i].lo;
		if (t->r[i].hi > hi)
			hi = t->r[i].hi;
		dd_rt_remove_at(t, i);
	}
	return dd_rt_insert(t, lo, hi);
}
