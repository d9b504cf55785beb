/* SPDX-License-Identifier: MIT */
/*
 * store.h - the canonical pages (store.c): memfd slots, reference counts,
 * release and reuse.
 */
#ifndef DEDUP_STORE_H
#define DEDUP_STORE_H

#include "base.h"

#define DD_SLOT_NONE 0u
#define DD_SLOT_ZERO 0xffffffffu  /* page was merged into the zero page */
#define DD_SLOT_COWED 0xfffffffeu /* was merged, then copied: anonymous page
                                     inside a file VMA of ours */
#define DD_SLOT_REAL(s) ((s) != DD_SLOT_NONE && (s) < DD_SLOT_COWED)
/* Slot references in page metadata are slot index + 1. */
int dd_store_init(size_t max_bytes);
void dd_store_fini(void);
void *dd_store_map(uint32_t ref, size_t len);   /* MAP_PRIVATE slots, or MAP_FAILED */
int dd_store_fd(void);                          /* tests only */
uint32_t dd_store_new(const void *content, uint32_t hint); /* 0 on failure */
const void *dd_store_page(uint32_t slot);
void dd_store_get(uint32_t slot);
void dd_store_put(uint32_t slot);   /* frees (punches) at zero */
void dd_store_sweep_wanted(void);   /* a page's metadata went with its reference */
void dd_store_sweep(void);          /* release orphans (eng.lock, end of a pass) */
void dd_region_each_slot(void (*fn)(void *ctx, uint32_t ref), void *ctx);   /* region.c */
uint32_t dd_store_refs(uint32_t slot);
bool dd_store_alive(uint32_t slot);   /* in use (refs > 0): its page is there */
uint64_t dd_store_hash(uint32_t slot);
void dd_store_set_hash(uint32_t slot, uint64_t h);
uint64_t dd_store_sharing(void);    /* sum of refs */
void dd_store_keep_all(void);       /* fork(): never release slots in use */
uint64_t dd_store_shared(void);     /* slots with refs > 0 */
uint32_t dd_store_slot_at(uint64_t ino, uint64_t off);   /* a file's page: slot + 1 */
/* group segments (docs/sharing.md) */
uint32_t dd_store_seg_add(uint64_t id, int fd, uint32_t npages);  /* page 0's slot */
void dd_store_seg_sweep(void);         /* end of a step: release unused segments */
bool dd_store_slot_is_group(uint32_t slot);   /* a group segment's page */
uint64_t dd_store_group_pages(void);   /* our pages that map a group segment */
void dd_store_child_close_segments(void);

#endif /* DEDUP_STORE_H */
