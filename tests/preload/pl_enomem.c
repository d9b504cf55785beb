/* SPDX-License-Identifier: MIT */
/*
 * pl_enomem - a program that runs into vm.max_map_count after libdedup
 * merged isolated pages (issue 11, point 5): its mprotect() splits and its
 * mmap() must succeed as long as merging holds mappings it can give back.
 *
 * Run at a low limit (CTest: tests/with_max_map_count.sh 3000). First 4096
 * pages, every 4th a copy of one content: merging splits the mapping around
 * each copy (+2 mappings), up to the VMA budget. Then the program makes 100
 * mappings more than the limit leaves it (mprotect of every other page of a
 * PROT_NONE reservation, +2 each), and one mmap() after that. Without the
 * give-back (DEDUP_TEST_NO_GIVE_BACK=1, registered WILL_FAIL) an mprotect
 * fails with ENOMEM; with it, libdedup unmerges single pages when a call
 * fails, and the call is made again (enomem_retries, runs_given_back).
 * Every page keeps its content.
 */
#include "pl.h"

#define NP 4096

static void want(char *page, size_t i)
{
	if (i % 4 == 0)
		t_fill(page, 7);
	else
		t_fill(page, 1000 + i);
}

int main(void)
{
	pl_need_uffd();
	FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
	long limit = 0;
	CHECK(f && fscanf(f, "%ld", &limit) == 1);
	fclose(f);
	if (limit > 10000)
		t_skip("vm.max_map_count is %ld: run at 3000 (tests/with_max_map_count.sh)", limit);

	char *iso = mmap(NULL, NP * T_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			 -1, 0);
	CHECK(iso != MAP_FAILED);
	for (size_t i = 0; i < NP; i++)
		want(iso + i * T_PAGE, i);
	/* until merging stops for lack of budget */
	struct dedup_stats s;
	double t0 = t_now();
	for (;;) {
		s = pl_stats();
		if (s.skipped_budget && s.merges >= 64)
			break;
		if (t_now() - t0 > t_cap()) {
			pl_print("timeout", &s);
			fprintf(stderr, "FAIL: no budget stop after %.0f s\n", t_cap());
			return T_FAIL;
		}
		usleep(20000);
	}
	usleep(300000);   /* a window in flight ends */
	s = pl_stats();
	long m0 = t_map_count();
	fprintf(stderr, "limit %ld: %llu isolated merges, vmas_added %llu, budget %llu, %ld mappings\n",
		limit, (unsigned long long)s.merges, (unsigned long long)s.vmas_added,
		(unsigned long long)s.vma_budget, m0);
	CHECK(s.vmas_added >= 128);

	/* the program's own mappings: 100 more than the limit leaves it */
	size_t splits = (size_t)(limit - m0 + 100) / 2 + 1;
	size_t rp = 2 * splits + 2;
	char *r = mmap(NULL, rp * T_PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		       -1, 0);
	CHECK(r != MAP_FAILED);
	for (size_t i = 0; i < splits; i++)
		if (mprotect(r + (2 * i + 1) * T_PAGE, T_PAGE, PROT_READ) != 0) {
			int e = errno;
			s = pl_stats();
			fprintf(stderr, "FAIL: mprotect #%zu of %zu: %s at %ld mappings (limit %ld); "
				"enomem_retries %llu, runs_given_back %llu\n", i, splits, strerror(e),
				t_map_count(), limit, (unsigned long long)s.enomem_retries,
				(unsigned long long)s.runs_given_back);
			return T_FAIL;
		}
	/* and a mapping of its own, apart from the others (another protection) */
	char *m = mmap(NULL, T_PAGE, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		fprintf(stderr, "FAIL: mmap at %ld mappings: %s\n", t_map_count(), strerror(errno));
		return T_FAIL;
	}
	s = pl_stats();
	fprintf(stderr, "%zu splits made: %ld mappings; enomem_retries %llu, runs_given_back %llu, "
		"vmas_added %llu\n", splits, t_map_count(), (unsigned long long)s.enomem_retries,
		(unsigned long long)s.runs_given_back, (unsigned long long)s.vmas_added);
	CHECK(s.enomem_retries >= 1 && s.runs_given_back >= 50);

	for (size_t i = 0; i < NP; i++) {
		char page[T_PAGE] __attribute__((aligned(64)));
		want(page, i);
		if (memcmp(iso + i * T_PAGE, page, T_PAGE)) {
			fprintf(stderr, "FAIL: page %zu: wrong content\n", i);
			return T_FAIL;
		}
	}
	CHECK(munmap(m, T_PAGE) == 0);
	CHECK(munmap(r, rp * T_PAGE) == 0);
	CHECK(munmap(iso, NP * T_PAGE) == 0);
	printf("PASS: %zu splits near vm.max_map_count %ld, %llu calls retried after a give-back\n",
	       splits, limit, (unsigned long long)s.enomem_retries);
	return 0;
}
