/* SPDX-License-Identifier: MIT */
/*
 * region.h - registered ranges and their per-page metadata, kept where pages
 * are present (region.c).
 */
#ifndef DEDUP_REGION_H
#define DEDUP_REGION_H

#include "base.h"

struct dd_region {
	uintptr_t start;
	size_t npages;
	bool fragile;      /* may vanish without our knowing: read it safely (scan.c) */
	uint8_t passes;    /* passes that went over all of it, up to 2 (scan.c) */
	uint64_t scan_gen; /* eng.pass_gen of the pass that last began it */
};
int dd_region_add(uintptr_t start, size_t len);
int dd_region_remove(uintptr_t start, size_t len, bool exact);
struct dd_region *dd_region_find(uintptr_t addr);
size_t dd_region_lower(uintptr_t addr);   /* index of the first region ending above addr */
uint64_t dd_region_gen(void);   /* changes when regions are added or removed */
size_t dd_region_count(void);
size_t dd_region_count_relaxed(void);   /* without eng.lock */
struct dd_region *dd_region_at(size_t i);
void dd_region_fini(void);
uint64_t dd_region_bytes(void);
/* Per-page metadata (kept only where pages are present, see region.c):
 * page p of r is merged into dd_region_slot() (DD_SLOT_NONE / DD_SLOT_ZERO /
 * canonical slot + 1 / DD_SLOT_COWED). */
uint32_t dd_region_slot(const struct dd_region *r, size_t p);
void dd_region_set_slot(const struct dd_region *r, size_t p, uint32_t slot);
/* first run [*i, *k) of merged pages (real slot or COWED) at or after *i */
bool dd_region_next_merged(const struct dd_region *r, size_t *i, size_t *k);
/* scan.c: a walk over present pages visits each (its word: checksum, 0:
 * none, and smart-scan age, see scan.c; and its slot; false without memory
 * for them), then sweeps the range it walked: pages not visited forget
 * their word, empty chunks go. */
void dd_meta_walk_begin(void);
bool dd_meta_visit(uintptr_t a, uint64_t **hash, uint32_t **slot);
void dd_meta_sweep(uintptr_t lo, uintptr_t hi);
/* page a's word and slot if it has any, without creating them */
bool dd_meta_peek(uintptr_t a, uint64_t **hash, uint32_t **slot);
/* every page with a word (non-zero), in address order */
void dd_meta_each(void (*fn)(void *ctx, uintptr_t a, uint64_t hash, uint32_t slot), void *ctx);
size_t dd_meta_chunks(void);

#endif /* DEDUP_REGION_H */
