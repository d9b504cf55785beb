/* SPDX-License-Identifier: MIT */
/*
 * hash.h - the checksum of a page's content, one definition for the engine
 * (scan.c's dd_hash_page(), which adds a test option on top) and for the
 * sharing group's helper (tools/dedup-share.c), which checks that a
 * published page has the hash its publisher claims. xxHash is built inline
 * (XXH_INLINE_ALL): a preloaded library must not collide with the
 * program's own copy, so include this only where the hash is computed.
 */
#ifndef DEDUP_HASH_H
#define DEDUP_HASH_H

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "scan.h"

/* XXH3-64 of one page, cut to DD_HASH_MASK; never 0 (index.c keeps 0 for
 * "none"). */
static inline uint64_t dd_hash_content(const void *p)
{
	uint64_t h = XXH3_64bits(p, DD_PAGE) & DD_HASH_MASK;
	return h ? h : 1;
}

#endif /* DEDUP_HASH_H */
