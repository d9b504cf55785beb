/* SPDX-License-Identifier: MIT */
/*
 * repro_mremap_grow: growing a fully merged range with mremap() must give
 * zero-filled pages in the new tail, as it does for anonymous memory.
 *
 * Found by the torture suite (action mremap_grow, e.g. seeds 1, 3, 4, 5 at
 * commit ad01c99). A range whose pages were all merged into contiguous
 * canonical slots is ONE private mapping of libdedup's memfd. The
 * application follows the API contract (dedup_unregister, then mremap) and
 * grows it: mremap extends that file mapping, so the new tail maps the
 * following slots of the memfd - other canonical pages - instead of zeros.
 *
 * Steps: two ranges A and B of 8 distinct pages each, B a copy of A, so
 * that a pass merges both into 8 contiguous new slots; then C and D, the
 * same with other contents (the next 8 slots). Unregister B, grow it to 16
 * pages: pages 8-15 must read as zeros.
 */
#include "tdedup.h"

#define N 8

static char *dup_pair(uint64_t seed, char **b)
{
	char *a = t_map_anon(N * T_PAGE);
	*b = t_map_anon(N * T_PAGE);
	for (size_t i = 0; i < N; i++) {
		t_fill(a + i * T_PAGE, seed + i);
		memcpy(*b + i * T_PAGE, a + i * T_PAGE, T_PAGE);
	}
	CHECK(dedup_register(a, N * T_PAGE) == 0);
	CHECK(dedup_register(*b, N * T_PAGE) == 0);
	return a;
}

int main(void)
{
	static const char zero[T_PAGE];
	char *a, *b, *c, *d;

	t_engine_start(3600000);
	a = dup_pair(1000, &b);
	c = dup_pair(2000, &d);
	(void)a;
	(void)c;
	dedup_scan_now();   /* hashes */
	dedup_scan_now();   /* merges */
	t_print_stats("after the passes");
	CHECK(t_stats().pages_sharing >= 2 * N);

	/* Whichever pair got the lower slots is followed by the other one in
	 * the memfd: grow both B and D (unregistered first, as the API asks). */
	int bad = 0, grown = 0;
	char *x[2] = { b, d }, *twin[2] = { c, a };   /* the other pair's contents */
	for (int k = 0; k < 2; k++) {
		CHECK(dedup_unregister(x[k], N * T_PAGE) == 0);
		char *g = mremap(x[k], N * T_PAGE, 2 * N * T_PAGE, MREMAP_MAYMOVE);
		if (g == MAP_FAILED) {
			fprintf(stderr, "mremap %c: %s (not one mapping)\n", "BD"[k], strerror(errno));
			continue;
		}
		grown++;
		for (size_t i = N; i < 2 * N; i++) {
			if (!memcmp(g + i * T_PAGE, zero, T_PAGE))
				continue;
			bool other = !memcmp(g + i * T_PAGE, twin[k] + (i - N) * T_PAGE, T_PAGE);
			fprintf(stderr, "%c grown to %d pages: page %zu is not zero%s\n", "BD"[k], 2 * N,
				i, other ? ": it holds a page of the other pair (its canonical page)" : "");
			bad++;
		}
		x[k] = g;
	}
	if (!grown)
		t_skip("neither range was one mapping");
	if (bad) {
		fprintf(stderr, "LOST ZERO-FILL: %d new pages map libdedup's memfd instead of zeros\n", bad);
		return T_FAIL;
	}
	CHECK(dedup_shutdown() == 0);
	return T_PASS;
}
