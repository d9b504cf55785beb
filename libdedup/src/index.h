/* SPDX-License-Identifier: MIT */
/*
 * index.h - the stable index (hash -> canonical slot), the unstable one
 * (hash -> candidate page, one pass) and the aged one (hash -> page the
 * smart scan skips, across passes) (index.c).
 */
#ifndef DEDUP_INDEX_H
#define DEDUP_INDEX_H

#include "base.h"

int dd_index_init(void);
void dd_index_fini(void);
#define DD_MAX_PROBE_CMP 16   /* full compares per lookup, at most */
uint32_t dd_stable_lookup(uint64_t hash, const void *page, bool *collided);
void dd_stable_verify_hash(uint64_t hash);
int dd_stable_insert(uint64_t hash, uint32_t slot);
void dd_stable_remove(uint64_t hash, uint32_t slot);
void dd_unstable_reset(void);     /* new pass: forget all candidates */
void dd_unstable_trim(void);      /* pass end: forget them, shrink to what it used */
uintptr_t dd_unstable_take(uint64_t hash, const void *page, bool *collided);
int dd_unstable_insert(uint64_t hash, uintptr_t addr);
size_t dd_unstable_count(void);   /* candidates of this pass */
/* pages the smart scan skips, by their last checksum, across passes */
void dd_aged_reset(void);         /* forget all (scan.c rebuilds it) */
bool dd_aged_insert(uint64_t hash, uintptr_t addr);   /* false: no room */
void dd_aged_remove(uint64_t hash, uintptr_t addr);
uintptr_t dd_aged_take(uint64_t hash, const void *page, uintptr_t self,
		       bool (*valid)(uintptr_t addr, uint64_t hash), bool *collided);
size_t dd_aged_count(void);       /* entries, stale ones included */
void dd_aged_prefetch(uint64_t hash);
size_t dd_index_bytes(void);

#endif /* DEDUP_INDEX_H */
