/* SPDX-License-Identifier: MIT */
/*
 * pl_workload - an unmodified program under LD_PRELOAD: 64 identical 1 MiB
 * malloc() buffers and calloc()ed memory. After merging, Pss dropped by most
 * of the duplicate bytes and every byte reads back as written (zeros for
 * calloc). Then it frees everything and does it again, to exercise the
 * reconcile's "forget what libc unmapped behind our back".
 */
#include "pl.h"

#define NBUF 64
#define BUFSZ ((size_t)1 << 20)
#define NSMALL 256
#define SMALLSZ ((size_t)32 << 10)

static void round_trip(int round)
{
	static char *buf[NBUF], *small[NSMALL];
	char *tmpl = malloc(BUFSZ);
	struct dedup_stats s0 = pl_stats();
	long pss_start = t_rollup_kb("Pss:");

	CHECK(tmpl);
	pl_fill(tmpl, BUFSZ / T_PAGE, 7 + (uint64_t)round);
	for (int i = 0; i < NBUF; i++) {
		/* Round 0: glibc serves 1 MiB from mmap'd chunks. After they are
		 * freed its threshold rises, and round 1 comes from the brk heap,
		 * where only page-aligned copies have equal pages. */
		buf[i] = round ? aligned_alloc(T_PAGE, BUFSZ) : malloc(BUFSZ);
		CHECK(buf[i]);
		memcpy(buf[i], tmpl, BUFSZ);
	}
	/* calloc()ed memory that calloc really cleared (reused heap memory) */
	for (int i = 0; i < NSMALL; i++) {
		small[i] = malloc(SMALLSZ);
		CHECK(small[i]);
		memset(small[i], 0x5a, SMALLSZ);
	}
	for (int i = 0; i < NSMALL; i++)
		free(small[i]);
	for (int i = 0; i < NSMALL; i++) {
		small[i] = calloc(1, SMALLSZ);
		CHECK(small[i]);
	}
	/* and a large calloc (fresh mmap), read so its pages are present */
	char *big = calloc(1, 16 << 20);
	CHECK(big);
	CHECK(pl_is_zero(big, 16 << 20));

	/* Merging starts while we fill (the reconcile finds new memory within
	 * 200 ms): measure against what we allocated, not a Pss taken now. */
	long alloc_kb = (long)((NBUF * BUFSZ + NSMALL * SMALLSZ + (16 << 20) + BUFSZ) >> 10);
	long pss0 = pss_start + alloc_kb;
	double t0 = t_now();
	uint64_t want = (uint64_t)(NBUF - 1) * (BUFSZ / T_PAGE) * 8 / 10;
	struct dedup_stats s = pl_wait_merged(s0.merges + want);
	double t_merge = t_now() - t0;
	/* Pss lags the counters by nothing, but give the last batch a moment */
	long pss1 = t_rollup_kb("Pss:");
	for (double t1 = t_now(); pss0 - pss1 < (long)(want * 4) && t_now() - t1 < t_cap();) {
		usleep(50000);
		pss1 = t_rollup_kb("Pss:");
	}
	pl_print("merged", &s);
	fprintf(stderr, "round %d: Pss %ld kB + %ld kB allocated -> %ld kB (waited %.2f s)\n",
		round, pss_start, alloc_kb, pss1, t_merge);
	CHECK(pss0 - pss1 >= (long)(want * 4));

	for (int i = 0; i < NBUF; i++)
		CHECK(memcmp(buf[i], tmpl, BUFSZ) == 0);
	for (int i = 0; i < NSMALL; i++)
		CHECK(pl_is_zero(small[i], SMALLSZ));
	CHECK(pl_is_zero(big, 16 << 20));
	/* write into merged pages: private copies, others unchanged */
	for (int i = 0; i < NBUF; i += 2)
		buf[i][i * 4096 + 1] ^= 1;
	for (int i = 0; i < NBUF; i++) {
		buf[i][i * 4096 + 1] ^= (i % 2 == 0);
		CHECK(memcmp(buf[i], tmpl, BUFSZ) == 0);
	}
	for (int i = 0; i < NBUF; i++)
		free(buf[i]);
	for (int i = 0; i < NSMALL; i++)
		free(small[i]);
	free(big);
	free(tmpl);
}

int main(void)
{
	pl_need_uffd();
	round_trip(0);
	round_trip(1);   /* same addresses again, unmapped and mapped by libc */
	fprintf(stderr, "PASS\n");
	return T_PASS;
}
