/* SPDX-License-Identifier: MIT */
/*
 * test_cow_write: writing a merged page gives the writer a private copy.
 * The writer sees its write; every other sharer and the canonical page are
 * unchanged. The next pass counts the copy (cow_breaks) without any fault,
 * and a canonical page whose sharers all copied it is released
 * (store_slots_freed). A copied page is not merged again: it is an
 * anonymous page inside a file mapping, where UFFDIO_MOVE (our pin check)
 * does not work.
 */
#include "tdedup.h"

int main(void)
{
	const size_t N = 64;
	char *buf = t_map_anon(N * T_PAGE);
	char ref[2][T_PAGE];

	t_fill(ref[0], 7);
	t_fill(ref[1], 8);
	for (size_t i = 0; i < N; i++)   /* pages 0..31: content A, 32..63: B */
		memcpy(buf + i * T_PAGE, ref[i / 32], T_PAGE);

	t_engine_start(3600000);
	CHECK(dedup_register(buf, N * T_PAGE) == 0);
	dedup_scan_now();
	CHECK(dedup_scan_now() == (long)N);
	struct dedup_stats st = t_stats();
	CHECK(st.pages_sharing == N && st.pages_shared == 2);

	/* write one byte into page 5: only page 5 changes */
	buf[5 * T_PAGE + 100] ^= 0x5a;
	for (size_t i = 0; i < N; i++) {
		char want[T_PAGE];
		memcpy(want, ref[i / 32], T_PAGE);
		if (i == 5)
			want[100] ^= 0x5a;
		CHECK(memcmp(buf + i * T_PAGE, want, T_PAGE) == 0);
	}
	dedup_scan_now();
	st = t_stats();
	CHECK(st.cow_breaks == 1);
	CHECK(st.pages_sharing == N - 1);

	/* every sharer of B writes: B's canonical page must be released */
	for (size_t i = 32; i < N; i++)
		buf[i * T_PAGE] ^= 1;
	dedup_scan_now();
	st = t_stats();
	t_print_stats("after B copied");
	CHECK(st.pages_shared == 1);
	CHECK(st.pages_sharing == 31);
	CHECK(st.store_slots_freed >= 1);
	for (size_t i = 32; i < N; i++) {
		char want[T_PAGE];
		memcpy(want, ref[1], T_PAGE);
		want[0] ^= 1;
		CHECK(memcmp(buf + i * T_PAGE, want, T_PAGE) == 0);
	}
	/* write them back to B: still readable and right, but not merged again */
	for (size_t i = 32; i < N; i++)
		buf[i * T_PAGE] ^= 1;
	dedup_scan_now();
	dedup_scan_now();
	st = t_stats();
	t_print_stats("after B restored");
	CHECK(st.pages_shared == 1);
	CHECK(st.pages_sharing == N / 2 - 1);
	CHECK(st.skipped_raced == 0);
	for (size_t i = 32; i < N; i++)
		CHECK(memcmp(buf + i * T_PAGE, ref[1], T_PAGE) == 0);
	/* a new page with content B gets a new canonical page (a reused slot) */
	char *more = t_map_anon(4 * T_PAGE);
	for (int i = 0; i < 4; i++)
		memcpy(more + i * T_PAGE, ref[1], T_PAGE);
	CHECK(dedup_register(more, 4 * T_PAGE) == 0);
	dedup_scan_now();
	dedup_scan_now();
	st = t_stats();
	CHECK(st.pages_shared == 2 && st.pages_sharing == N / 2 - 1 + 4);
	for (int i = 0; i < 4; i++)
		CHECK(memcmp(more + i * T_PAGE, ref[1], T_PAGE) == 0);
	CHECK(dedup_shutdown() == 0);
	return T_PASS;
}
