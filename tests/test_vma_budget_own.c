/* SPDX-License-Identifier: MIT */
/*
 * test_vma_budget_own: the default VMA budget is sized from the program's
 * own mappings (issue 11, point 5), not a flat half of vm.max_map_count:
 *
 *	budget = limit - max(4 x own, min(4096, 3/4 x limit))
 *
 * with own = all mappings minus those merging added (engine.c
 * dd_engine_size_budget). Checked, at the limit the test runs at (CTest:
 * 65530 and 1048576 through tests/with_max_map_count.sh):
 *   - after merging 16 isolated duplicates (32 mappings), vmas_added counts
 *     them (32-34: an upper bound, from our memfd runs in maps) and the
 *     budget is the formula's, above half of the limit (the old budget was
 *     exactly half: this fails there);
 *   - the program then makes 3000 mappings of its own: at the next pass the
 *     budget is smaller by 4 x its own count less the floor (about 8000);
 *     once it unmaps them, it is back.
 * Every page keeps its content.
 */
#include "tdedup.h"

#define N 64

static void want(char *page, size_t i)
{
	if (i % 4 == 0)
		t_fill(page, 4242);
	else
		t_fill(page, 70000 + i);
}

static long limit_now(void)
{
	FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
	long l = -1;
	if (f) {
		if (fscanf(f, "%ld", &l) != 1)
			l = -1;
		fclose(f);
	}
	return l;
}

static long formula(long limit, long own)
{
	long floor = limit - limit / 4 < 4096 ? limit - limit / 4 : 4096;
	long room = 4 * own > floor ? 4 * own : floor;
	return limit > room ? limit - room : 0;
}

/* A pass that counts the mappings again (scan.c recount_due: due once the
 * time since the last count is 20 times what it cost). */
static struct dedup_stats counted_pass(void)
{
	usleep(100000);
	CHECK(dedup_scan_now() >= 0);
	return t_stats();
}

/* The budget must be what the formula gives for the program's own count
 * now (our own mappings made after the count, a scratch area or a table,
 * may move "own" by a few). */
static void check_budget(const struct dedup_stats *st, long limit, const char *when)
{
	long own = t_map_count() - (long)st->vmas_added;
	long lo = formula(limit, own + 8), hi = formula(limit, own - 8);
	fprintf(stderr, "%s: limit %ld, mappings %ld, vmas_added %llu, own %ld: budget %llu "
		"(formula %ld-%ld)\n", when, limit, t_map_count(), (unsigned long long)st->vmas_added,
		own, (unsigned long long)st->vma_budget, lo, hi);
	CHECK((long)st->vma_budget >= lo && (long)st->vma_budget <= hi);
}

int main(void)
{
	long limit = limit_now();
	if (limit < 20000)
		t_skip("vm.max_map_count is %ld: run at 65530 or more (with_max_map_count.sh)", limit);
	t_engine_start(3600000);

	char *buf = t_map_anon(N * T_PAGE), page[T_PAGE];
	CHECK(madvise(buf, N * T_PAGE, MADV_NOHUGEPAGE) == 0);
	for (size_t i = 0; i < N; i++)
		want(buf + i * T_PAGE, i);
	long maps0 = t_map_count();
	CHECK(dedup_register(buf, N * T_PAGE) == 0);
	for (int pass = 0; pass < 3; pass++)
		CHECK(dedup_scan_now() >= 0);
	struct dedup_stats st = counted_pass();
	fprintf(stderr, "merged %llu, maps %ld -> %ld\n", (unsigned long long)st.merges, maps0,
		t_map_count());
	CHECK(st.merges == N / 4);
	CHECK(st.vmas_added >= 2 * N / 4 && st.vmas_added <= 2 * N / 4 + 2);
	check_budget(&st, limit, "merged");
	CHECK((long)st.vma_budget > limit / 2);   /* not the old flat half */
	uint64_t b0 = st.vma_budget;

	/* the program grows by 3000 mappings of its own */
	size_t np = 3001;
	char *r = mmap(NULL, np * T_PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	CHECK(r != MAP_FAILED);
	for (size_t i = 1; i + 1 < np; i += 2)
		CHECK(mprotect(r + i * T_PAGE, T_PAGE, PROT_READ) == 0);
	st = counted_pass();
	check_budget(&st, limit, "program grown");
	CHECK(st.vma_budget + 7000 <= b0);   /* 4 x 3000 over the floor of 4096 */
	CHECK(st.vmas_added >= 2 * N / 4 && st.vmas_added <= 2 * N / 4 + 2);   /* not its mappings */

	CHECK(munmap(r, np * T_PAGE) == 0);
	st = counted_pass();
	check_budget(&st, limit, "program shrunk");
	CHECK(st.vma_budget + 64 >= b0 && st.vma_budget <= b0 + 64);

	for (size_t i = 0; i < N; i++) {
		want(page, i);
		CHECK(memcmp(buf + i * T_PAGE, page, T_PAGE) == 0);
	}
	CHECK(dedup_unregister(buf, N * T_PAGE) == 0);
	CHECK(dedup_shutdown() == 0);
	printf("PASS: budget %llu at limit %ld, follows the program's own mappings\n",
	       (unsigned long long)b0, limit);
	return 0;
}
