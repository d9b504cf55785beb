/* SPDX-License-Identifier: MIT */
/*
 * test_collision: two pages with equal hash but different content are never
 * merged. DEDUP_TEST_HASH_BITS=3 keeps 3 bits of every hash, so nearly every
 * pair of distinct pages collides; only truly equal pages may be merged.
 */
#include "tdedup.h"

int main(void)
{
	const size_t N = 512, K = 64;   /* K distinct contents, 8 copies each */
	char *buf = t_map_anon(N * T_PAGE);
	char *ref = malloc(N * T_PAGE);

	setenv("DEDUP_TEST_HASH_BITS", "3", 1);
	for (size_t i = 0; i < N; i++)
		t_fill(ref + i * T_PAGE, (i % K) + 100);
	memcpy(buf, ref, N * T_PAGE);
	t_engine_start(3600000);
	CHECK(dedup_register(buf, N * T_PAGE) == 0);
	for (int p = 0; p < 6; p++)
		dedup_scan_now();
	struct dedup_stats st = t_stats();
	t_print_stats("3-bit hashes");
	CHECK(memcmp(buf, ref, N * T_PAGE) == 0);
	CHECK(st.skipped_mismatch > 0);     /* collisions were seen ... */
	/* ... and did not hide equal pages: each content has one canonical page */
	CHECK(st.pages_shared == K && st.pages_sharing == N);
	/* writes still land where they should */
	for (size_t i = 0; i < N; i++)
		buf[i * T_PAGE + 1] ^= 0x11, ref[i * T_PAGE + 1] ^= 0x11;
	CHECK(memcmp(buf, ref, N * T_PAGE) == 0);
	CHECK(dedup_shutdown() == 0);
	free(ref);
	return T_PASS;
}
