/* SPDX-License-Identifier: MIT */
/*
 * index.h - the stable index (hash -> canonical slot) and the unstable one
 * (hash -> candidate page, one pass) (index.c).
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
bool dd_stable_has(uint64_t hash);   /* a live slot with this hash? */
void dd_stable_prefetch(uint64_t hash);
/* a page skipped this pass with checksum @hash from an earlier one: true if
 * a candidate of this pass has that hash, else it enters as a stale one */
bool dd_unstable_offer(uint64_t hash, uintptr_t addr);
void dd_unstable_prefetch(uint64_t hash);
size_t dd_index_bytes(void);

#endif /* DEDUP_INDEX_H */
