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
 *     Their pages are unique: a region of duplicates that lives for two
 *     intervals merges, and a pass that merges resets the back-off (as it
 *     should); whether one lives that long depends on how busy the
 *     machine is (a 10 ms sleep can take 50), so duplicates made this
 *     check fail under load.
 *  3. A new region holding duplicates merges without waiting for full
 *     passes: fresh regions get passes of their own. Counted in work, not
 *     time (the back-off is a timer, the fresh passes need CPU: on a busy
 *     machine a full pass may well come first): until the new region's
 *     duplicates merged, the engine scanned the steady region at most once
 *     more. The old rule merged a new region in the second full pass over
 *     it, and it lies above the steady region (scanned after it), so that
 *     took two scans of it. The new region holds only a trickle of
 *     duplicates (8 pages in 4096): a pass that merges more resets the
 *     back-off (engine.c), and full passes every interval after the merge
 *     would blur the count.
 * The figures are pages scanned, from dedup_stats(); the bounds leave a
 * factor of 3 or more between what the rule allows and what the old rule
 * did, so a loaded machine does not make the test flaky.
 */
#include "tdedup.h"

#define BIG (64UL << 20)
#define SMALL (256UL << 10)
#define NEW (16UL << 20)   /* part 3's region, above the steady one */
#define NDUP 8             /* duplicate pages in it */

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
	/* the steady region, a page of nothing, and part 3's region above */
	char *big = t_map_anon(BIG + T_PAGE + NEW), *dup = big + BIG + T_PAGE;
	CHECK(munmap(big + BIG, T_PAGE) == 0);
	CHECK(madvise(big, BIG, MADV_NOHUGEPAGE) == 0 && madvise(dup, NEW, MADV_NOHUGEPAGE) == 0);
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
	uint64_t cm0 = t_stats().merges, seed = 500000;
	double t0 = t_now();
	while (t_now() - t0 < 3) {
		char *s = t_map_anon(SMALL);
		for (size_t i = 0; i < SMALL / T_PAGE; i++)
			t_fill(s + i * T_PAGE, seed++);
		CHECK(dedup_register(s, SMALL) == 0);
		usleep(10000);
		CHECK(dedup_unregister(s, SMALL) == 0);
		CHECK(munmap(s, SMALL) == 0);
	}
	uint64_t churn = scanned() - s0;
	fprintf(stderr, "churn: %.1f passes' worth of pages in 3 s, %llu merges\n",
		(double)churn / big_pages, (unsigned long long)(t_stats().merges - cm0));
	CHECK(t_stats().merges == cm0);  /* nothing there to merge */
	CHECK(churn <= 8 * big_pages);   /* the old rule: a full pass every 20 ms */

	/* 3. new duplicates merge without waiting for full passes */
	for (size_t i = 0; i < NEW / T_PAGE; i++)
		t_fill(dup + i * T_PAGE, i < NDUP ? 7 : 700000 + i);
	uint64_t m0 = t_stats().merges;
	s0 = scanned();
	CHECK(dedup_register(dup, NEW) == 0);
	t0 = t_now();
	while (t_stats().merges - m0 < NDUP - 1 && t_now() - t0 < t_cap())
		usleep(10000);
	uint64_t before_merge = scanned() - s0;
	fprintf(stderr, "new duplicates merged after %.2f s, %.2f scans' worth of the steady "
		"region meanwhile\n", t_now() - t0, (double)before_merge / big_pages);
	CHECK(t_stats().merges - m0 >= NDUP - 1);
	CHECK(before_merge < 2 * big_pages);   /* the old rule: two scans of it, at least */
	for (size_t i = 0; i < NEW / T_PAGE; i++) {
		char want[T_PAGE];
		t_fill(want, i < NDUP ? 7 : 700000 + i);
		CHECK(memcmp(dup + i * T_PAGE, want, T_PAGE) == 0);
	}
	CHECK(dedup_shutdown() == 0);
	fprintf(stderr, "PASS\n");
	return T_PASS;
}
