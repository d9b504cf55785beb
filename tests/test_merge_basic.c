/* SPDX-License-Identifier: MIT */
/*
 * test_merge_basic: K distinct page contents repeated over N pages. After
 * two passes every duplicate is merged (pages_sharing == N, pages_shared ==
 * K), every page still reads its content, and Pss (smaps_rollup) dropped by
 * about (N - K) pages.
 */
#include "tdedup.h"

int main(void)
{
	const size_t N = 4096, K = 16;
	char *buf = t_map_anon(N * T_PAGE);
	char *ref = malloc(K * T_PAGE);

	for (size_t k = 0; k < K; k++)
		t_fill(ref + k * T_PAGE, k + 1);
	for (size_t i = 0; i < N; i++)
		memcpy(buf + i * T_PAGE, ref + (i % K) * T_PAGE, T_PAGE);

	t_engine_start(3600000);
	long pss0 = t_rollup_kb("Pss:");
	CHECK(dedup_register(buf, N * T_PAGE) == 0);
	CHECK(dedup_scan_now() >= 0);   /* pass 1: checksums */
	long merged = dedup_scan_now(); /* pass 2: merge */
	t_print_stats("after 2 passes");
	struct dedup_stats st = t_stats();
	CHECK(merged == (long)N);
	CHECK(st.pages_sharing == N);
	CHECK(st.pages_shared == K);
	CHECK(st.bytes_saved == (N - K) * T_PAGE);

	for (size_t i = 0; i < N; i++)
		CHECK(memcmp(buf + i * T_PAGE, ref + (i % K) * T_PAGE, T_PAGE) == 0);
	long pss1 = t_rollup_kb("Pss:");
	long drop = pss0 - pss1;
	fprintf(stderr, "Pss %ld kB -> %ld kB (drop %ld kB, expected about %zu kB)\n",
		pss0, pss1, drop, (N - K) * 4);
	CHECK(drop >= (long)((N - K) * 4 * 9 / 10));
	fprintf(stderr, "maps lines: %ld\n", t_map_count());

	CHECK(dedup_shutdown() == 0);
	for (size_t i = 0; i < N; i++)
		CHECK(memcmp(buf + i * T_PAGE, ref + (i % K) * T_PAGE, T_PAGE) == 0);
	free(ref);
	return T_PASS;
}
