/* SPDX-License-Identifier: MIT */
/*
 * test_zero_pages: touched zero-filled pages are merged without the memfd
 * and without adding mappings: they read as zeros, are writable, and the
 * process's Rss drops. With zero-page merging off, they are left alone.
 */
#include "tdedup.h"

static void run(bool on)
{
	const size_t N = 2048;
	char *buf = t_map_anon(N * T_PAGE);
	struct dedup_config cfg = { .size = sizeof(cfg), .scan_interval_ms = 3600000,
				    .zero_pages = on ? 1 : -1 };

	for (size_t i = 0; i < N; i++)
		buf[i * T_PAGE] = 1, buf[i * T_PAGE] = 0;   /* touch: a real page */
	int r = dedup_init(&cfg);
	if (r == -EPERM || r == -ENOSYS)
		t_skip("no usable userfaultfd");
	CHECK(r == 0);
	CHECK(dedup_register(buf, N * T_PAGE) == 0);
	dedup_scan_now();   /* pass 1 merges nothing; engine threads are up */
	long maps0 = t_map_count(), rss0 = t_rollup_kb("Rss:");
	long merged = dedup_scan_now();
	struct dedup_stats st = t_stats();
	t_print_stats(on ? "zero on" : "zero off");
	long rss1 = t_rollup_kb("Rss:");
	if (!on) {
		CHECK(merged == 0 && st.zero_pages == 0);
	} else {
		CHECK(merged == (long)N && st.zero_pages == N);
		CHECK(st.pages_sharing == 0 && st.pages_shared == 0);
		CHECK(st.bytes_saved == N * T_PAGE);
		fprintf(stderr, "Rss %ld -> %ld kB, maps %ld -> %ld\n", rss0, rss1, maps0,
			t_map_count());
		CHECK(rss0 - rss1 >= (long)(N * 4 * 9 / 10));
		CHECK(t_map_count() <= maps0 + 1);   /* no mapping per page */
	}
	for (size_t i = 0; i < N * T_PAGE; i += 512)
		CHECK(buf[i] == 0);
	for (size_t i = 0; i < N; i += 3)
		buf[i * T_PAGE + 7] = (char)i | 1;
	for (size_t i = 0; i < N; i++)
		CHECK(buf[i * T_PAGE + 7] == ((i % 3) ? 0 : ((char)i | 1)));
	dedup_scan_now();
	if (on) {
		st = t_stats();
		/* written pages are anonymous again: no longer counted as zero */
		CHECK(st.zero_pages <= N - (N + 2) / 3);
	}
	CHECK(dedup_shutdown() == 0);
	munmap(buf, N * T_PAGE);
}

int main(void)
{
	run(true);
	run(false);
	return T_PASS;
}
