/* SPDX-License-Identifier: MIT */
/*
 * region.c - the registered ranges and their per-page metadata.
 *
 * A region is a page-aligned range that libdedup tracks, with two parallel
 * arrays: the checksum of each page at the last pass (8 bytes) and what the
 * page is merged into (4 bytes: nothing, the zero page, or a canonical slot).
 * That is 12 bytes of metadata per tracked 4 KiB page (0.3%).
 *
 * Regions are kept sorted by address in one array; lookup is a binary
 * search. Removing a sub-range splits a region. Pages that were merged into
 * a slot keep their reference when forgotten: the mapping still exists, and
 * a slot is only released when we know nobody maps it.
 *
 * Locking: eng.lock held by every caller.
 */
#include <string.h>

#include "internal.h"

static struct {
	struct dd_region *r;
	size_t n, cap;
	_Atomic size_t count;     /* == n, for lock-free stats readers */
	_Atomic uint64_t bytes;
} rg;

size_t dd_region_count(void) { return rg.n; }
size_t dd_region_count_relaxed(void) { return atomic_load_explicit(&rg.count, memory_order_relaxed); }
struct dd_region *dd_region_at(size_t i) { return &rg.r[i]; }
uint64_t dd_region_bytes(void) { return atomic_load_explicit(&rg.bytes, memory_order_relaxed); }

static uintptr_t rend(const struct dd_region *r) { return r->start + r->npages * DD_PAGE; }

/* Index of the first region whose end is above addr. */
static size_t lower(uintptr_t addr)
{
	size_t lo = 0, hi = rg.n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (rend(&rg.r[mid]) <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

struct dd_region *dd_region_find(uintptr_t addr)
{
	size_t i = lower(addr);
	if (i < rg.n && rg.r[i].start <= addr)
		return &rg.r[i];
	return NULL;
}

static int alloc_meta(struct dd_region *r)
{
	r->hash = dd_vm_alloc(r->npages * sizeof(*r->hash));
	r->slot = dd_vm_alloc(r->npages * sizeof(*r->slot));
	if (!r->hash || !r->slot) {
		dd_vm_free(r->hash, r->npages * sizeof(*r->hash));
		dd_vm_free(r->slot, r->npages * sizeof(*r->slot));
		return -ENOMEM;
	}
	return 0;
}

static void free_meta(struct dd_region *r)
{
	dd_vm_free(r->hash, r->npages * sizeof(*r->hash));
	dd_vm_free(r->slot, r->npages * sizeof(*r->slot));
}

static int insert_at(size_t i, const struct dd_region *r)
{
	if (rg.n == rg.cap) {
		size_t ncap = rg.cap ? rg.cap * 2 : 64;
		void *p = dd_vm_grow(rg.r, rg.cap * sizeof(*rg.r), ncap * sizeof(*rg.r));
		if (!p)
			return -ENOMEM;
		rg.r = p;
		rg.cap = ncap;
	}
	memmove(&rg.r[i + 1], &rg.r[i], (rg.n - i) * sizeof(*rg.r));
	rg.r[i] = *r;
	rg.n++;
	atomic_store(&rg.count, rg.n);
	atomic_fetch_add(&rg.bytes, r->npages * DD_PAGE);
	return 0;
}

static _Atomic uint64_t rg_gen;   /* bumped by every add and remove */

uint64_t dd_region_gen(void) { return atomic_load(&rg_gen); }

int dd_region_add(uintptr_t start, size_t len)
{
	atomic_fetch_add(&rg_gen, 1);
	struct dd_region r = { .start = start, .npages = len / DD_PAGE,
			       .fragile = eng.fragile_regions };
	size_t i = lower(start);

	if (i < rg.n && rg.r[i].start < start + len)
		return -EEXIST;
	if (alloc_meta(&r) < 0)
		return -ENOMEM;
	if (insert_at(i, &r) < 0) {
		free_meta(&r);
		return -ENOMEM;
	}
	return 0;
}

/* Forget pages [from, to) of r (metadata only). */
static void forget_pages(struct dd_region *r, size_t from, size_t to)
{
	for (size_t p = from; p < to; p++)
		if (r->slot[p] == DD_SLOT_ZERO)
			atomic_fetch_sub(&dd_cnt.zero_pages, 1);
}

/* A new region holding pages [from, to) of r, metadata copied. */
static int piece(const struct dd_region *r, size_t from, size_t to, struct dd_region *out)
{
	out->start = r->start + from * DD_PAGE;
	out->npages = to - from;
	out->fragile = r->fragile;
	if (alloc_meta(out) < 0)
		return -ENOMEM;
	memcpy(out->hash, r->hash + from, out->npages * sizeof(*r->hash));
	memcpy(out->slot, r->slot + from, out->npages * sizeof(*r->slot));
	return 0;
}

/*
 * Stop tracking [start, start+len). exact: it must be exactly one region
 * (dd_unregister); otherwise every overlapping region loses the overlap and
 * keeps the rest (remap events, munmap in the preload library).
 */
int dd_region_remove(uintptr_t start, size_t len, bool exact)
{
	atomic_fetch_add(&rg_gen, 1);
	uintptr_t end = start + len;
	size_t i = lower(start);
	int found = 0;

	if (exact) {
		if (i >= rg.n || rg.r[i].start != start || rend(&rg.r[i]) != end)
			return -ENOENT;
	}
	while (i < rg.n && rg.r[i].start < end) {
		struct dd_region old = rg.r[i], left = { 0 }, right = { 0 };
		size_t from = start > old.start ? (start - old.start) / DD_PAGE : 0;
		size_t to = end < rend(&old) ? (end - old.start) / DD_PAGE : old.npages;

		if ((from && piece(&old, 0, from, &left) < 0) ||
		    (to < old.npages && piece(&old, to, old.npages, &right) < 0)) {
			if (left.hash)
				free_meta(&left);
			return -ENOMEM;
		}
		forget_pages(&old, from, to);
		memmove(&rg.r[i], &rg.r[i + 1], (rg.n - i - 1) * sizeof(*rg.r));
		rg.n--;
		atomic_store(&rg.count, rg.n);
		atomic_fetch_sub(&rg.bytes, old.npages * DD_PAGE);
		free_meta(&old);
		if (left.npages)
			insert_at(i++, &left);   /* cannot fail: we just freed a slot */
		if (right.npages)
			insert_at(i++, &right);
		found = 1;
	}
	return found ? 0 : -ENOENT;
}

void dd_region_fini(void)
{
	for (size_t i = 0; i < rg.n; i++) {
		forget_pages(&rg.r[i], 0, rg.r[i].npages);
		free_meta(&rg.r[i]);
	}
	dd_vm_free(rg.r, rg.cap * sizeof(*rg.r));
	rg.r = NULL;
	rg.n = rg.cap = 0;
	atomic_store(&rg.count, 0);
	atomic_store(&rg.bytes, 0);
}
