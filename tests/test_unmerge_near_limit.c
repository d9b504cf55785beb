/* SPDX-License-Identifier: MIT */
/*
 * test_unmerge_near_limit: handing merged runs back close to vm.max_map_count
 * (merge.c, "Unmerging", near the limit).
 *
 * Each trial merges RUNS + 1 isolated duplicates (one every other page, so each
 * merged page is a mapping of its own), makes the lowest one PROT_READ (its
 * replacement costs one mapping more than the others: an mprotect split of
 * the replacement T), lowers vm.max_map_count to the map count + m, and calls
 * dedup_unregister(). For every m from 3 to 30:
 *  - every page reads what it held, handed back or left merged;
 *  - a run is left merged only when nothing could be handed back at all:
 *    the process is then still within 20 mappings of the limit. (Before the
 *    deferral in um_group/um_run, at one m the PROT_READ run alone was left
 *    merged, after all the others had been handed back and had freed two
 *    mappings each - it needed one more than the first run had, and was
 *    never tried again; and a failing reservation for T did the same.)
 *  - for m >= 24, well above what the first hand-back needs (3 mappings for
 *    the reservation, 6 below the limit for mremap, some for the unmerge's
 *    buffers), every run is handed back: no file mapping left in the range.
 *
 * The sysctl is machine-wide: the test holds the lock of tests/mmc_lock.h,
 * first raises its own map count to about 8,000 (so that the lowered limit
 * stays far above what other processes use), keeps each lowered window to
 * one dedup_unregister() call, and puts the value back on every way out.
 * Skipped without root.
 */
#include "mmc_test.h"

enum { RUNS = 64, GAP = 2, NPAGES = RUNS * GAP + 1, NDUP = RUNS + 1, BULK = 4000 };

static void want(char *page, size_t i, int trial)
{
	if (i % GAP)
		t_fill(page, 1000000 + (uint64_t)trial * 10000 + i);   /* unique */
	else
		t_fill(page, 17 + (uint64_t)trial);                     /* duplicates */
}

/* mappings over [lo, hi), and how many of them are file mappings */
static int vmas_over(uintptr_t lo, uintptr_t hi, int *files)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	int n = 0;
	CHECK(f != NULL);
	*files = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b, off, ino;
		char perms[5];
		unsigned maj, min;
		if (sscanf(line, "%lx-%lx %4s %lx %x:%x %lu", &a, &b, perms, &off, &maj, &min,
			   &ino) != 7 || a >= hi || b <= lo)
			continue;
		n++;
		*files += ino != 0;
	}
	fclose(f);
	return n;
}

int main(void)
{
	t_mmc_start("test_unmerge_near_limit", BULK, 4 * RUNS + 512);

	int partial_before = 0, left_trials = 0;
	char page[T_PAGE];
	for (int m = 3; m <= 30; m++) {
		char *buf = t_map_anon(NPAGES * T_PAGE);
		uintptr_t lo = (uintptr_t)buf, hi = lo + NPAGES * T_PAGE;
		CHECK(madvise(buf, NPAGES * T_PAGE, MADV_NOHUGEPAGE) == 0);
		for (size_t i = 0; i < NPAGES; i++)
			want(buf + i * T_PAGE, i, m);
		CHECK(dedup_register(buf, NPAGES * T_PAGE) == 0);
		long merged = 0;
		for (int pass = 0; pass < 8 && merged < NDUP; pass++) {
			long k = dedup_scan_now();
			CHECK(k >= 0);
			merged += k;
		}
		int files;
		vmas_over(lo, hi, &files);
		if (files < NDUP) {
			t_print_stats("merge");
			printf("FAIL: m=%d: %d of %d duplicates merged\n", m, files, NDUP);
			return T_FAIL;
		}
		/* the lowest run: read-only (a whole mapping: no split) */
		CHECK(mprotect(buf, T_PAGE, PROT_READ) == 0);

		(void)t_map_count();
		long c0 = t_map_count();
		/* ---- lowered: one call (the sysctl is global) ---- */
		CHECK(mmc_set(c0 + m) == 0);
		int r = dedup_unregister(buf, NPAGES * T_PAGE);
		long c1 = t_map_count();
		int n1 = vmas_over(lo, hi, &files);
		mmc_put_back();
		CHECK(!mmc_changed);
		/* ---- put back ---- */
		CHECK(r == 0);

		size_t bad = 0;
		for (size_t i = 0; i < NPAGES; i++) {
			want(page, i, m);
			if (memcmp(buf + i * T_PAGE, page, T_PAGE) && bad++ < 3)
				printf("m=%d: page %zu does not read what it held\n", m, i);
		}
		printf("limit = count %ld + %d: %d runs left merged, %d mappings over the range; "
		       "count after: %ld (%ld below the limit)\n", c0, m, files, n1, c1,
		       c0 + m - c1);
		if (bad) {
			printf("FAIL: m=%d: %zu pages read wrong\n", m, bad);
			return T_FAIL;
		}
		if (files && c0 + m - c1 > 20) {
			printf("FAIL: m=%d: %d runs left merged although %ld mappings were free "
			       "at the end: they could have been handed back\n", m, files,
			       c0 + m - c1);
			return T_FAIL;
		}
		if (files && m >= 24) {
			printf("FAIL: m=%d: %d runs left merged with room for them\n", m, files);
			return T_FAIL;
		}
		partial_before |= files && files < NDUP;
		left_trials += files > 0;
		CHECK(munmap(buf, NPAGES * T_PAGE) == 0);
	}
	CHECK(dedup_shutdown() == 0);
	printf("PASS: %d of 28 limits too close to hand anything back; otherwise every run "
	       "handed back, every page as it read%s\n", left_trials,
	       partial_before ? " (some partly)" : "");
	return T_PASS;
}
