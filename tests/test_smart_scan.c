/* SPDX-License-Identifier: MIT */
/*
 * test_smart_scan: pages that never match are read less and less (KSM's
 * smart scan, libdedup/src/scan.c), and no merge is lost or much delayed
 * for it. Passes are driven by dedup_scan_now(), so they are counted, not
 * timed.
 *  1. N + 1 unique pages, unchanged. Every pass accounts for every page:
 *     hashed or skipped (pages_scanned + pages_skipped_smart grows by N + 1). The pages
 *     hashed per 32 passes fall: passes 1-32 read the heap about 6 times
 *     (passes 1, 2, 4, 8, then about 16 and 30: a page of age k is read once
 *     every 2^k passes), 33-64 and 65-96 about once each (the cap, 2^5,
 *     less jitter). Without smart scan each window reads it 32 times.
 *     What a settled pass costs follows what it reads, not the heap: in
 *     passes 33-96, the pages read in one pass are at most N/16 (pages
 *     aged together fall due over the whole skip interval: N/32 a pass,
 *     not bursts of N/8 and more), and the unstable index holds no more
 *     entries after a pass than the pages read in it (skipped pages are
 *     found through the aged index, index.c, written only when a page
 *     ages or changes; they used to be offered to the unstable index at
 *     every pass: N entries).
 *  2. A page that is not present yet, written now with the content of a
 *     skipped page (new data duplicating old): merges in 2 passes, as any
 *     new duplicate (its first pass hashes it, the second finds the skipped
 *     page by that page's old checksum in the aged index). Twice: with the
 *     skipped page earlier in the pass, and later (the hole's last page,
 *     present and aged with the heap).
 *  3. A skipped page written with the content of another skipped page that
 *     comes later in the pass, and one zeroed: each merges within 2^5 + 2
 *     passes (its next visit sees it changed, the one after finds its twin
 *     in the aged index).
 *  4. Three quarters of the heap discarded while aged: their aged entries
 *     are stale (nothing visits a page that is gone), and once they
 *     outnumber the live ones the index is rebuilt: its entries fall to
 *     about the pages left.
 * Every page reads its content throughout and after dedup_shutdown().
 * All of it twice: in a region read in place (the API's), and in a fragile
 * one (the preload library's, read through process_vm_readv(): scan.c).
 *  5. (stale) An aged page B that a candidate A earlier in the pass finds in
 *     the aged index, merged before the walk reaches B: with DEDUP_BATCH=2
 *     the pair's batch is merged at once, while the walk's PAGEMAP_SCAN
 *     report, read before, still says B is a present anonymous page. B's
 *     metadata says merged: a walk that trusted the report took B for a
 *     page a writer had copied and dropped its reference to the slot
 *     (scan.c, merged_page_copied). Then A is written (its copy drops the
 *     other reference), the slot is freed and punched, and B read zeros or
 *     hung in a missing-page fault of the memfd. With the default batch the
 *     pair waits in the batch while the walk reaches B, young again: B is
 *     then batched a second time (it must merge once). Both regions, B in
 *     the same PAGEMAP_SCAN chunk as A, and B read right to the end.
 */
#include "tdedup.h"
#include "internal.h"   /* eng.fragile_regions, as the preload library sets it */

#define N 4096          /* the unique heap, pages */
#define HOLE 64         /* pages above it, not present until part 2 */
#define LAST (N + HOLE - 1)   /* but the last one, present from the start */
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
	want_seed[LAST] = seed0 + LAST;   /* one page at the top, for part 2 */
	t_fill(buf + LAST * T_PAGE, want_seed[LAST]);
	pthread_mutex_lock(&eng.lock);
	eng.fragile_regions = fragile;
	pthread_mutex_unlock(&eng.lock);
	CHECK(dedup_register(buf, (N + HOLE) * T_PAGE) == 0);
	uint64_t merges0 = t_stats().merges;

	/* 1. the unchanged unique heap */
	uint64_t win[3] = { 0 }, most[3] = { 0 }, unst[3] = { 0 };
	for (int p = 0; p < 3 * WINDOW; p++) {
		struct dedup_stats a = t_stats();
		CHECK(dedup_scan_now() == 0);
		struct dedup_stats b = t_stats();
		uint64_t hashed = b.pages_scanned - a.pages_scanned;
		uint64_t skipped = b.pages_skipped_smart - a.pages_skipped_smart;
		if (hashed + skipped != N + 1) {
			fprintf(stderr, "pass %d: %llu hashed + %llu skipped, not %d\n", p + 1,
				(unsigned long long)hashed, (unsigned long long)skipped, N + 1);
			exit(T_FAIL);
		}
		win[p / WINDOW] += hashed;
		if (hashed > most[p / WINDOW])
			most[p / WINDOW] = hashed;
		pthread_mutex_lock(&eng.lock);
		uint64_t u = dd_unstable_count();   /* this pass's entries */
		pthread_mutex_unlock(&eng.lock);
		if (p >= WINDOW && u > hashed) {
			fprintf(stderr, "pass %d: %llu pages read, %llu unstable entries\n", p + 1,
				(unsigned long long)hashed, (unsigned long long)u);
			unst[p / WINDOW]++;
		}
	}
	for (int w = 0; w < 3; w++)
		fprintf(stderr, "passes %d-%d: %.2f heaps hashed (without smart scan: %d), "
			"at most %llu pages in one pass\n", w * WINDOW + 1, (w + 1) * WINDOW,
			(double)win[w] / N, WINDOW, (unsigned long long)most[w]);
	CHECK(most[1] <= N / 16 && most[2] <= N / 16);   /* spread, no bursts */
	CHECK(!unst[1] && !unst[2]);   /* skipped pages cost no index entry */
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
	/* the same with the skipped twin later in the pass: the last page of
	 * the hole, aged with the heap */
	st = t_stats();
	merged0 = st.pages_sharing + st.zero_pages;
	want_seed[N + 9] = want_seed[LAST];
	t_fill(buf + (N + 9) * T_PAGE, want_seed[N + 9]);
	p2 = passes_until(merged0 + 2, MAX_WAIT, "new page = later skipped page");
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

	/* 4. most of the aged heap goes: the aged index follows */
	pthread_mutex_lock(&eng.lock);
	size_t before = dd_aged_count();
	pthread_mutex_unlock(&eng.lock);
	CHECK(madvise(buf + N / 4 * T_PAGE, 3 * N / 4 * T_PAGE, MADV_DONTNEED) == 0);
	for (size_t i = N / 4; i < N; i++)
		want_seed[i] = 0;
	for (int p = 0; p < 2; p++)
		CHECK(dedup_scan_now() == 0);
	pthread_mutex_lock(&eng.lock);
	size_t after = dd_aged_count();
	pthread_mutex_unlock(&eng.lock);
	fprintf(stderr, "aged index: %zu entries, %zu once 3/4 of the heap went\n", before, after);
	CHECK(before >= N - 64);
	CHECK(after <= N / 4 + 64);
	check_all();

	t_print_stats("end");
	CHECK(dedup_unregister(buf, (N + HOLE) * T_PAGE) == 0);
	check_all();
}

/* 5. (above) */
#define SN 256
#define SA 40    /* the candidate */
#define SB 200   /* the aged page it finds, later in the pass */
static void stale(bool fragile, uint64_t seed0, const char *batch)
{
	char want[T_PAGE];

	fprintf(stderr, "-- stale report, %s region, DEDUP_BATCH=%s\n",
		fragile ? "a fragile" : "an API", batch);
	CHECK(setenv("DEDUP_BATCH", batch, 1) == 0);
	t_engine_start(3600000);
	CHECK(unsetenv("DEDUP_BATCH") == 0);
	char *b = t_map_anon(SN * T_PAGE);
	CHECK(madvise(b, SN * T_PAGE, MADV_NOHUGEPAGE) == 0);
	for (size_t i = 0; i < SN; i++)
		t_fill(b + i * T_PAGE, seed0 + i);
	pthread_mutex_lock(&eng.lock);
	eng.fragile_regions = fragile;
	pthread_mutex_unlock(&eng.lock);
	CHECK(dedup_register(b, SN * T_PAGE) == 0);
	for (int p = 0; p < 4; p++)   /* every page aged, in the aged index */
		CHECK(dedup_scan_now() == 0);
	pthread_mutex_lock(&eng.lock);
	CHECK(dd_aged_count() >= SN - 1);
	pthread_mutex_unlock(&eng.lock);

	t_fill(b + SA * T_PAGE, seed0 + SB);   /* A = B */
	struct dedup_stats st = t_stats();
	uint64_t merges0 = st.merges, cow0 = st.cow_breaks;
	for (int p = 0; t_stats().merges < merges0 + 2; p++) {
		CHECK(p < MAX_WAIT);   /* A is read at its turn: 2^age passes */
		CHECK(dedup_scan_now() >= 0);
	}
	st = t_stats();
	if (st.cow_breaks != cow0) {   /* nobody wrote: the walk thought so */
		t_print_stats("B taken for a copied page");
		exit(T_FAIL);
	}
	fprintf(stderr, "merged: sharing %llu shared %llu merges %llu raced %llu\n",
		(unsigned long long)st.pages_sharing, (unsigned long long)st.pages_shared,
		(unsigned long long)st.merges, (unsigned long long)st.skipped_raced);
	CHECK(st.pages_sharing == 2 && st.pages_shared == 1);
	for (int p = 0; p < 2; p++)   /* the walk after the merge, twice */
		CHECK(dedup_scan_now() == 0);
	CHECK(t_stats().pages_sharing == 2);   /* B still holds its reference */

	b[SA * T_PAGE + 7] ^= 1;   /* A's copy: its reference goes */
	for (int p = 0; p < 2; p++)
		CHECK(dedup_scan_now() == 0);
	st = t_stats();
	CHECK(st.pages_sharing == 1 && st.pages_shared == 1);   /* B's slot lives */
	for (size_t i = 0; i < SN; i++) {
		t_fill(want, seed0 + (i == SA ? SB : i));
		if (i == SA)
			want[7] ^= 1;
		if (memcmp(b + i * T_PAGE, want, T_PAGE)) {
			fprintf(stderr, "page %zu reads wrong%s\n", i,
				i == SB ? " (B: its slot was freed under it)" : "");
			exit(T_FAIL);
		}
	}
	CHECK(dedup_shutdown() == 0);
	t_fill(want, seed0 + SB);
	CHECK(memcmp(b + SB * T_PAGE, want, T_PAGE) == 0);
	CHECK(munmap(b, SN * T_PAGE) == 0);
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
	stale(false, 3000000, "2");
	stale(true, 4000000, "2");
	stale(false, 5000000, "64");
	stale(true, 6000000, "64");
	fprintf(stderr, "PASS\n");
	return T_PASS;
}
