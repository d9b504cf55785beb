/* SPDX-License-Identifier: MIT */
/*
 * pl_jemalloc - a program whose allocator is a shared jemalloc (preloaded
 * after libdedup), with purging forced (MALLOC_CONF=dirty_decay_ms:0,
 * muzzy_decay_ms:0): its large identical allocations merge, and calloc()ed
 * memory from purged extents reads as zeros after merges (jemalloc trusts
 * MADV_DONTNEED to zero, and so skips clearing).
 */
#include "pl.h"

#define NBUF 32
#define BUFSZ ((size_t)1 << 20)

int main(void)
{
	pl_need_uffd();
	if (!dlsym(RTLD_DEFAULT, "mallctl"))
		t_skip("jemalloc is not the allocator (preload libjemalloc.so.2)");
	char *tmpl = malloc(BUFSZ), *buf[NBUF];
	CHECK(tmpl);
	pl_fill(tmpl, BUFSZ / T_PAGE, 71);
	for (int round = 0; round < 3; round++) {
		uint64_t before = pl_stats().merges;
		for (int i = 0; i < NBUF; i++) {
			/* page aligned: jemalloc puts a plain 1 MiB allocation
			 * at a random cache-line offset (cache-oblivious), and
			 * copies at different offsets have no page in common */
			buf[i] = aligned_alloc(T_PAGE, BUFSZ);
			CHECK(buf[i]);
			memcpy(buf[i], tmpl, BUFSZ);
		}
		/* Round 0 merges. Later rounds reuse the purged extents: those
		 * are merged pieces (file mappings) that the copies wrote into,
		 * and the engine does not merge such copied pages again (see
		 * README "Limits"); they are only checked for content. */
		struct dedup_stats s;
		if (round == 0) {
			s = pl_wait_merged(before + (NBUF - 1) * (BUFSZ / T_PAGE) * 8 / 10, 30);
		} else {
			usleep(500 * 1000);
			s = pl_stats();
		}
		pl_print("merged", &s);
		for (int i = 0; i < NBUF; i++)
			CHECK(memcmp(buf[i], tmpl, BUFSZ) == 0);
		for (int i = 0; i < NBUF; i++)
			free(buf[i]);   /* decay 0: purged at once (MADV_DONTNEED) */
		for (int i = 0; i < NBUF; i++) {
			buf[i] = calloc(1, BUFSZ);
			CHECK(buf[i]);
			if (!pl_is_zero(buf[i], BUFSZ)) {
				fprintf(stderr, "FAIL: round %d: calloc()ed buffer %d is not zero\n",
					round, i);
				return T_FAIL;
			}
		}
		for (int i = 0; i < NBUF; i++)
			free(buf[i]);
	}
	fprintf(stderr, "PASS\n");
	return T_PASS;
}
