/* SPDX-License-Identifier: MIT */
/*
 * scan.h - one pass over the registered memory (scan.c): which pages are
 * present, their checksums, the candidates it hands to merge.c.
 */
#ifndef DEDUP_SCAN_H
#define DEDUP_SCAN_H

#include "base.h"

bool dd_scan_step(uintptr_t *cursor, size_t max_pages, long *merged, size_t *scanned,
		  bool fresh_only);
bool dd_scan_fresh_regions(void);   /* a region with fewer than 2 passes? */
uint64_t dd_hash_page(const void *p);   /* never 0, at most DD_HASH_MASK */
/* Page checksums keep 56 bits: the word of page metadata that holds one
 * (region.c) keeps the smart scan's age and skip count above it (scan.c).
 * Hashes only route pages, content is always compared. */
#define DD_HASH_MASK ((1ULL << 56) - 1)

#endif /* DEDUP_SCAN_H */
