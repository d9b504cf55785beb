/* SPDX-License-Identifier: MIT */
/*
 * test_unregister: dedup_unregister() and dedup_shutdown() leave every page
 * readable (same content) and writable, merged or not; the engine can be
 * started again afterwards and merges again.
 */
#include "tdedup.h"

static void fill(char *buf, size_t n, uint64_t salt)
{
	for (size_t i = 0; i < n; i++)
		t_fill(buf + i * T_PAGE, (i % 4) + salt);
}

static void check_rw(char *buf, size_t n, uint64_t salt)
{
	char want[T_PAGE];
	for (size_t i = 0; i < n; i++) {
		t_fill(want, (i % 4) + salt);
		CHECK(memcmp(buf + i * T_PAGE, want, T_PAGE) == 0);
	}
	for (size_t i = 0; i < n; i++)
		buf[i * T_PAGE + 9] = 'w';
	for (size_t i = 0; i < n; i++)
		CHECK(buf[i * T_PAGE + 9] == 'w');
}

int main(void)
{
	const size_t N = 256;
	char *a = t_map_anon(N * T_PAGE), *b = t_map_anon(N * T_PAGE);

	fill(a, N, 1);
	fill(b, N, 1);
	t_engine_start(3600000);
	CHECK(dedup_register(a, N * T_PAGE) == 0);
	CHECK(dedup_register(b, N * T_PAGE) == 0);
	dedup_scan_now();
	CHECK(dedup_scan_now() == (long)(2 * N));
	CHECK(dedup_unregister(a, N * T_PAGE) == 0);
	CHECK(dedup_unregister(a, N * T_PAGE) == -ENOENT);
	check_rw(a, N, 1);
	CHECK(t_stats().regions == 1);
	CHECK(dedup_shutdown() == 0);
	CHECK(dedup_shutdown() == -ENODEV);
	check_rw(b, N, 1);

	/* again, on fresh memory */
	char *c = t_map_anon(N * T_PAGE);
	fill(c, N, 9);
	t_engine_start(3600000);
	CHECK(dedup_register(c, N * T_PAGE) == 0);
	dedup_scan_now();
	CHECK(dedup_scan_now() == (long)N);
	CHECK(dedup_shutdown() == 0);
	check_rw(c, N, 9);
	return T_PASS;
}
