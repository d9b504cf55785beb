/* SPDX-License-Identifier: MIT */
/*
 * test_smart_scan: pages that never match are read less and less (KSM's
 * smart scan, libdedup/src/scan.c), and no merge is lost or much delayed
 * for it. Passes are driven by dedup_scan_now(), so they are counted, not
 * timed.
 *  1. N unique pages, unchanged. Every pass accounts for every page: hashed
 *     or skipped (pages_scanned + pages_skipped_smart grows by N). The pages
 *     hashed per 32 passes fall: passes 1-32 read the heap about 6 times
 *     (passes 1, 2, 4, 8, then about 16 and 30: a page of age k is read once
 *     every 2^k passes), 33-64 and 65-96 about once each (the cap, 2^5,
 *     less jitter). Without smart scan each window reads it 32 times.
 *  2. A page that is not present yet, written now with the content of a
 *     skipped page (new data duplicating old): merges in 2 passes, as any
 *     new duplicate (its first pass hashes it, the second finds the skipped
 *     page, which came earlier in the pass, by that page's old checksum).
 *  3. A skipped page written with the content of another skipped page that
 *     comes later in the pass, and one zeroed: each merges within 2^5 + 2
 *     passes (its next visit sees it changed, the one after finds its twin
 *     when the twin, skipped, is offered).
 * Every page reads its content throughout and after dedup_shutdown().
 * All of it twice: in a region read in place (the API's), and in a fragile
 * one (the preload library's, read through process_vm_readv(): scan.c).
 */
#include "tdedup.h"
#include "internal.h"   /* eng.fragile_regions, as the preload library sets it */

#define N 4096          /* the unique heap, pages */
#define HOLE 64         /* pages above it, not present until part 2 */
#define WINDOW 32       /* passes per window: the largest skip period */
#define MAX_WAIT (WINDOW + 2)

static char *buf;
static uint64_t want_seed[N + HOLE];   /* 0: zeros */

static void check_all(void)
{
	char want[T_PAGE];
	for (size_t i = 0; i < N + HOLE; i++) {
		if (i >= N && !want_seed[i])
			continue;   /* never touched */
		if (want_seed[i])
			t_fill(want, want_seed[i]);
		else
			memset(want, 0, T_PAGE);
		CHECK(memcmp(buf + i * T_PAGE, want, T_PAGE) == 0);
	}
}

/* Passes until @what has merged (pages_sharing + zero_pages reach @target),
 * at most @max passes and t_cap() seconds. Returns the passes it took. */
static int passes_until(uint64_t target, int max, const char *what)
{
	double t0 = t_now();
	for (int p = 1; p <= max && t_now() - t0 < t_cap(); p++) {
		CHECK(dedup_scan_now() >= 0);
		struct dedup_stats st = t_stats();
		if (st.pages_sharing + st.zero_pages >= target) {
			fprintf(stderr, "%s: merged after %d passes\n", what, p);
			return p;
		}
	}
	t_print_stats(what);
	fprintf(stderr, "%s: not merged within %d passes\n", what, max);
	exit(T_FAIL);
}

static void scenario(bool fragile, uint64_t seed0)
{
	fprintf(stderr, "-- %s region\n", fragile ? "a fragile" : "an API");
	buf = t_map_anon((N + HOLE) * T_PAGE);
	CHECK(madvise(buf, (N + HOLE) * T_PAGE, MADV_NOHUGEPAGE) == 0);
	memset(want_seed, 0, sizeof(want_seed));
	for (size_t i = 0; i < N; i++) {
		want_seed[i] = seed0 + i;
		t_fill(buf + i * T_PAGE, want_seed[i]);
	}
	pthread_mutex_lock(&eng.lock);
	eng.fragile_regions = fragile;
	pthread_mutex_unlock(&eng.lock);
	CHECK(dedup_register(buf, (N + HOLE) * T_PAGE) == 0);
	uint64_t merges0 = t_stats().merges;

	/* 1. the unchanged unique heap */
	uint64_t win[3] = { 0 };
	for (int p = 0; p < 3 * WINDOW; p++) {
		struct dedup_stats a = t_stats();
		CHECK(dedup_scan_now() == 0);
		struct dedup_stats b = t_stats();
		uint64_t hashed = b.pages_scanned - a.pages_scanned;
		uint64_t skipped = b.pages_skipped_smart - a.pages_skipped_smart;
		if (hashed + skipped != N) {
			fprintf(stderr, "pass %d: %llu hashed + %llu skipped, not %d\n", p + 1,
				(unsigned long long)hashed, (unsigned long long)skipped, N);
			exit(T_FAIL);
		}
		win[p / WINDOW] += hashed;
	}
	for (int w = 0; w < 3; w++)
		fprintf(stderr, "passes %d-%d: %.2f heaps hashed (without smart scan: %d)\n",
			w * WINDOW + 1, (w + 1) * WINDOW, (double)win[w] / N, WINDOW);
	CHECK(win[0] >= 5 * (uint64_t)N);       /* young pages are read often */
	CHECK(win[1] < win[0] / 3);             /* ... then less and less */
	CHECK(win[1] <= 2 * (uint64_t)N);       /* about once per 24-32 passes */
	CHECK(win[2] <= 2 * (uint64_t)N);
	CHECK(t_stats().merges == merges0);
	check_all();

	/* 2. new memory duplicating a skipped page: as prompt as ever */
	struct dedup_stats st = t_stats();
	uint64_t merged0 = st.pages_sharing + st.zero_pages;
	want_seed[N + 5] = want_seed[1234];
	t_fill(buf + (N + 5) * T_PAGE, want_seed[N + 5]);
	int p2 = passes_until(merged0 + 2, MAX_WAIT, "new page = skipped page");
	CHECK(p2 <= 2);
	check_all();

	/* 3. skipped pages written: seen at their next visit */
	st = t_stats();
	merged0 = st.pages_sharing + st.zero_pages;
	/* page 77 now holds page 3000's content: 77, read, becomes a
	 * candidate first in the pass, and 3000, skipped, finds it when it is
	 * offered (and is read then, out of order: scan.c offer_one) */
	want_seed[77] = want_seed[3000];
	t_fill(buf + 77 * T_PAGE, want_seed[77]);
	passes_until(merged0 + 2, MAX_WAIT, "skipped page = skipped page");
	check_all();
	st = t_stats();
	merged0 = st.pages_sharing + st.zero_pages;
	want_seed[2222] = 0;
	memset(buf + 2222 * T_PAGE, 0, T_PAGE);
	passes_until(merged0 + 1, MAX_WAIT, "skipped page zeroed");
	check_all();

	t_print_stats("end");
	CHECK(dedup_unregister(buf, (N + HOLE) * T_PAGE) == 0);
	check_all();
}

int main(void)
{
	t_engine_start(3600000);   /* no pass but ours */
	scenario(false, 1000000);
	char *api = buf;
	scenario(true, 2000000);
	CHECK(dedup_shutdown() == 0);
	check_all();
	CHECK(munmap(api, (N + HOLE) * T_PAGE) == 0);
	fprintf(stderr, "PASS\n");
	return T_PASS;
}
