/* SPDX-License-Identifier: MIT */
/*
 * repro_unstable_stale: the engine must not touch a range after
 * dedup_unregister() returned, even in the middle of a pass.
 *
 * Found by the torture suite (seed 4 at commit ad01c99, --no-dontneed:
 * SIGSEGV in dedup-engine, dd_unstable_take -> memcmp). The unstable index
 * keeps the addresses of this pass's candidates from one engine step to the
 * next, and eng.lock is released between steps. An application that follows
 * the API contract - dedup_unregister(), then munmap() - between two steps
 * leaves a stale address in the index; a later page with the same hash is
 * compared with it: a read of unmapped memory, and the process dies.
 *
 * Layout: page L (content X, its own region), a registered gap of GAP empty
 * pages (several engine steps of address space), page H (content X, its own
 * region). The engine puts L in the unstable index, and while it walks the
 * gap we unregister and unmap L; when it reaches H it compares H with L.
 * The timing is random, so this loops for DEDUP_TEST_SECONDS (default 10)
 * and fails if the process crashes (exit by signal = CTest failure).
 */
#include "tdedup.h"

#define GAP 8192

int main(void)
{
	const char *e = getenv("DEDUP_TEST_SECONDS");
	double secs = e ? atof(e) : 10;
	struct dedup_config cfg = { .size = sizeof(cfg), .scan_interval_ms = 1,
				    .cpu_percent = 100, .batch_pages = 4 };
	int r = dedup_init(&cfg);
	if (r == -EPERM || r == -ENOSYS)
		t_skip("no usable userfaultfd");
	CHECK(r == 0);
	uint64_t s = 88172645463325252ULL;
	double end = t_now() + secs;
	unsigned long iters = 0;
	while (t_now() < end) {
		size_t n = GAP + 2;
		char *m = t_map_anon(n * T_PAGE), *lo = m, *gap = m + T_PAGE,
		     *hi = m + (n - 1) * T_PAGE;
		t_fill(lo, iters + 1);
		memcpy(hi, lo, T_PAGE);
		CHECK(dedup_register(lo, T_PAGE) == 0);
		CHECK(dedup_register(gap, GAP * T_PAGE) == 0);
		CHECK(dedup_register(hi, T_PAGE) == 0);
		s ^= s << 13, s ^= s >> 7, s ^= s << 17;
		usleep((useconds_t)(500 + s % 4000));   /* a pass or two: L becomes a candidate */
		CHECK(dedup_unregister(lo, T_PAGE) == 0);
		CHECK(munmap(lo, T_PAGE) == 0);          /* the contract: unregister first */
		usleep(2000);
		CHECK(dedup_unregister(gap, GAP * T_PAGE) == 0);
		CHECK(dedup_unregister(hi, T_PAGE) == 0);
		CHECK(munmap(gap, (GAP + 1) * T_PAGE) == 0);
		iters++;
	}
	t_print_stats("stale");
	fprintf(stderr, "%lu iterations, no crash\n", iters);
	CHECK(dedup_shutdown() == 0);
	return T_PASS;
}
