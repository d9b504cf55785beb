/* SPDX-License-Identifier: MIT */
/*
 * test_backoff: the idle back-off (engine.c) spares a steady heap, and new
 * memory does not undo it.
 *  1. A steady 64 MiB region of unique pages: once backed off (interval
 *     20 ms, up to 64 intervals, so a full pass every 1.28 s), the engine
 *     scans it about once per 1.28 s, not every 20 ms.
 *  2. Small regions keep appearing and going (as allocator extents do):
 *     the steady region is still not rescanned every interval (the old
 *     rule reset the back-off on any change of the registered memory).
 *  3. A new region holding duplicates merges within a few intervals, long
 *     before the next full pass: fresh regions get passes of their own.
 * The figures are pages scanned, from dedup_stats(); the bounds leave a
 * factor of 3 or more between what the rule allows and what the old rule
 * did, so a loaded machine does not make the test flaky.
 */
#include "tdedup.h"

#define BIG (64UL << 20)
#define SMALL (256UL << 10)

static uint64_t scanned(void) { return t_stats().pages_scanned; }

int main(void)
{
	setenv("DEDUP_IDLE_BACKOFF", "64", 1);
	struct dedup_config cfg = { .size = sizeof(cfg), .scan_interval_ms = 20,
				    .cpu_percent = 100 };
	int r = dedup_init(&cfg);
	if (r == -EPERM || r == -ENOSYS)
		t_skip("userfaultfd not usable here");
	CHECK(r == 0);
	char *big = t_map_anon(BIG);
	CHECK(madvise(big, BIG, MADV_NOHUGEPAGE) == 0);
	for (size_t i = 0; i < BIG / T_PAGE; i++)
		t_fill(big + i * T_PAGE, 90000 + i);
	CHECK(dedup_register(big, BIG) == 0);
	size_t big_pages = BIG / T_PAGE;

	/* let it back off fully: 1+2+4+...+64 intervals, about 2.5 s */
	sleep(4);
	uint64_t s0 = scanned();
	sleep(3);
	uint64_t steady = scanned() - s0;
	fprintf(stderr, "steady: %.1f passes' worth of pages in 3 s\n", (double)steady / big_pages);
	/* backed off: 1.28 s per pass, at most 3 passes (without: 150) */
	CHECK(steady <= 4 * big_pages);

	/* 2. churn: a small region appears and goes every 10 ms */
	s0 = scanned();
	double t0 = t_now();
	while (t_now() - t0 < 3) {
		char *s = t_map_anon(SMALL);
		memset(s, 0x11, SMALL);
		CHECK(dedup_register(s, SMALL) == 0);
		usleep(10000);
		CHECK(dedup_unregister(s, SMALL) == 0);
		CHECK(munmap(s, SMALL) == 0);
	}
	uint64_t churn = scanned() - s0;
	fprintf(stderr, "churn: %.1f passes' worth of pages in 3 s\n", (double)churn / big_pages);
	CHECK(churn <= 8 * big_pages);   /* the old rule: a full pass every 20 ms */

	/* 3. new duplicates merge promptly */
	char *dup = t_map_anon(16 * SMALL);
	for (size_t i = 0; i < 16 * SMALL / T_PAGE; i++)
		t_fill(dup + i * T_PAGE, 7 + i % 8);
	uint64_t m0 = t_stats().merges;
	CHECK(dedup_register(dup, 16 * SMALL) == 0);
	t0 = t_now();
	while (t_stats().merges - m0 < 16 * SMALL / T_PAGE / 2 && t_now() - t0 < 10)
		usleep(10000);
	double took = t_now() - t0;
	fprintf(stderr, "new duplicates merged after %.2f s\n", took);
	CHECK(t_stats().merges - m0 >= 16 * SMALL / T_PAGE / 2);
	CHECK(took < 1.0);   /* the next full pass could be 1.28 s away */
	for (size_t i = 0; i < 16 * SMALL / T_PAGE; i++) {
		char want[T_PAGE];
		t_fill(want, 7 + i % 8);
		CHECK(memcmp(dup + i * T_PAGE, want, T_PAGE) == 0);
	}
	CHECK(dedup_shutdown() == 0);
	fprintf(stderr, "PASS\n");
	return T_PASS;
}
