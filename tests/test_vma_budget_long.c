/* SPDX-License-Identifier: MIT */
/*
 * test_vma_budget_long: long runs first (issue 11, point 5). The last part
 * of the VMA budget (1/32 of it, at least 64 mappings) is kept for runs that
 * save at least 2 pages per mapping they add (merge.c, worth_reserve).
 *
 * Budget 256 mappings. A: 1024 pages, every other one a copy of one content
 * (512 isolated duplicates, 2 mappings each): they stop at 256 - 64, and
 * the rest waits (budget_waiting). Then B: two copies of 32 distinct pages,
 * each copy one run of contiguous canonical pages (2 mappings for 32
 * pages): both merge, into the reserve. Before the rule the singles of A
 * took the whole budget, and B could not merge at all. Every page keeps its
 * content.
 */
#include "tdedup.h"

#define NA 1024
#define NB 64
#define BUDGET 256

static void want_a(char *page, size_t i)
{
	t_fill(page, i % 2 ? 555 : 20000 + i);
}

static void want_b(char *page, size_t i)
{
	t_fill(page, 9000 + i % (NB / 2));
}

int main(void)
{
	t_engine_start_budget(3600000, BUDGET);
	char *a = t_map_anon(NA * T_PAGE), *b = t_map_anon(NB * T_PAGE), page[T_PAGE];
	CHECK(madvise(a, NA * T_PAGE, MADV_NOHUGEPAGE) == 0);
	CHECK(madvise(b, NB * T_PAGE, MADV_NOHUGEPAGE) == 0);
	for (size_t i = 0; i < NA; i++)
		want_a(a + i * T_PAGE, i);
	for (size_t i = 0; i < NB; i++)
		want_b(b + i * T_PAGE, i);

	CHECK(dedup_register(a, NA * T_PAGE) == 0);
	for (int pass = 0; pass < 4; pass++)
		CHECK(dedup_scan_now() >= 0);
	struct dedup_stats st = t_stats();
	t_print_stats("singles");
	fprintf(stderr, "singles: vmas_added %llu of %d, waiting %llu\n",
		(unsigned long long)st.vmas_added, BUDGET, (unsigned long long)st.budget_waiting);
	CHECK(st.pages_sharing > 0);
	CHECK(st.vmas_added <= BUDGET - 64);        /* the reserve is left */
	CHECK(st.budget_waiting > 0);               /* and the rest waits */
	uint64_t singles = st.pages_sharing;

	CHECK(dedup_register(b, NB * T_PAGE) == 0);
	for (int pass = 0; pass < 4; pass++)
		CHECK(dedup_scan_now() >= 0);
	st = t_stats();
	t_print_stats("long runs");
	fprintf(stderr, "long runs: sharing %llu (singles %llu), vmas_added %llu\n",
		(unsigned long long)st.pages_sharing, (unsigned long long)singles,
		(unsigned long long)st.vmas_added);
	CHECK(st.pages_sharing >= singles + NB);     /* both copies of B merged */
	CHECK(st.vmas_added <= BUDGET);

	for (size_t i = 0; i < NA; i++) {
		want_a(page, i);
		CHECK(memcmp(a + i * T_PAGE, page, T_PAGE) == 0);
	}
	for (size_t i = 0; i < NB; i++) {
		want_b(page, i);
		CHECK(memcmp(b + i * T_PAGE, page, T_PAGE) == 0);
	}
	CHECK(dedup_unregister(a, NA * T_PAGE) == 0);
	CHECK(dedup_unregister(b, NB * T_PAGE) == 0);
	CHECK(dedup_shutdown() == 0);
	printf("PASS: %llu single pages left the reserve to 2 runs of %d pages\n",
	       (unsigned long long)singles, NB / 2);
	return 0;
}
