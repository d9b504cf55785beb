/* SPDX-License-Identifier: MIT */
/*
 * test_vma_budget: the engine never adds more mappings than its VMA budget;
 * once the budget is spent it stops merging non-zero isolated pages (and
 * counts them as skipped for the budget) but still merges zero pages, which
 * add no mapping; every page keeps its content.
 *
 * 1024 pages: every 4th page holds one of 8 shared contents (isolated
 * duplicates, each merge splits the anonymous mapping: up to 2 new VMAs),
 * every 4th+1 page is zero, the rest unique. Budget: 40 mappings.
 */
#include "tdedup.h"

#define N 1024
#define BUDGET 40

static void want(char *page, size_t i)
{
	if (i % 4 == 0)
		t_fill(page, 1000 + (i / 4) % 8);
	else if (i % 4 == 1)
		memset(page, 0, T_PAGE);
	else
		t_fill(page, 5000 + i);
}

int main(void)
{
	t_engine_start_budget(3600000, BUDGET);
	char *buf = t_map_anon(N * T_PAGE), page[T_PAGE];
	CHECK(madvise(buf, N * T_PAGE, MADV_NOHUGEPAGE) == 0);
	for (size_t i = 0; i < N; i++)
		want(buf + i * T_PAGE, i);
	long maps0 = t_map_count();
	CHECK(dedup_register(buf, N * T_PAGE) == 0);
	for (int pass = 0; pass < 4; pass++)
		CHECK(dedup_scan_now() >= 0);
	struct dedup_stats st = t_stats();
	long maps1 = t_map_count();
	t_print_stats("budget 40");
	fprintf(stderr, "maps %ld -> %ld (budget %d)\n", maps0, maps1, BUDGET);
	CHECK(st.vma_budget == BUDGET);
	CHECK(st.vmas_added <= BUDGET);
	/* the registration itself adds no line; a little slack for our own
	 * scratch mappings made after maps0 */
	CHECK(maps1 - maps0 <= BUDGET + 4);
	CHECK(st.skipped_budget > 0);               /* it did stop */
	CHECK(st.pages_sharing > 0);                /* after merging some */
	CHECK(st.zero_pages == N / 4);              /* zero pages: all of them */
	for (size_t i = 0; i < N; i++) {
		want(page, i);
		CHECK(memcmp(buf + i * T_PAGE, page, T_PAGE) == 0);
	}
	CHECK(dedup_unregister(buf, N * T_PAGE) == 0);
	CHECK(dedup_shutdown() == 0);
	return T_PASS;
}
