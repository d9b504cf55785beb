/* SPDX-License-Identifier: MIT */
/*
 * pl_hole - a hole the program makes stays the program's while libdedup
 * merges.
 *
 * The kernel gives mmap(NULL) the highest free gap that fits. The program
 * finds where its next one-page mapping would go (maps a page and unmaps it
 * again), keeps that hole open while the engine merges single pages - each
 * merged run is placed through a new mapping of the engine's - and then
 * maps the hole again: with MAP_FIXED_NOREPLACE, or with the address as a
 * hint alone. Without libdedup both always get the address. Before
 * libdedup put its own mappings in an area of its own (os.c, "Where our
 * mappings go"), the next run merged landed in the hole: the program's
 * MAP_FIXED_NOREPLACE failed with EEXIST, its hint was not honoured, and
 * a MAP_FIXED would have replaced the run the engine was placing.
 *
 * The arena holds isolated duplicates (every other page one of a few
 * contents, the pages between unique), so every merge places a run of one
 * page. Each round rewrites merged pages (a copy on write; they merge
 * again) and waits, hole open, until the engine has merged HOLE_MERGES
 * pages; it runs until MERGES pages were merged with the hole open.
 */
#include "pl.h"

#include <sys/mman.h>

#define NPG 8192
#define HOLE_MERGES 24
#define MERGES 768

static uint64_t content(size_t i)
{
	return i % 2 ? 100000 + i : 1 + (i / 2) % 4;
}

static bool reads(const char *p, uint64_t seed)
{
	static char want[T_PAGE];
	t_fill(want, seed);
	return memcmp(p, want, T_PAGE) == 0;
}

int main(void)
{
	pl_need_uffd();
	char *a = t_map_anon(NPG * T_PAGE);
	for (size_t i = 0; i < NPG; i++)
		t_fill(a + i * T_PAGE, content(i));
	pl_wait_merged(NPG / 4);

	uint64_t during = 0, rounds = 0, next = 0;
	double t0 = t_now();
	while (during < MERGES) {
		/* where the kernel puts the next page: a hole there */
		char *h = mmap(NULL, T_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		CHECK(h != MAP_FAILED);
		CHECK(munmap(h, T_PAGE) == 0);

		uint64_t m0 = pl_stats().merges;
		for (int k = 0; k < 2 * HOLE_MERGES; k++, next = (next + 2) % NPG)
			t_fill(a + next * T_PAGE, content(next));   /* the same content: merges again */
		uint64_t m;
		while ((m = pl_stats().merges) < m0 + HOLE_MERGES) {
			if (t_now() - t0 > t_cap()) {
				fprintf(stderr, "FAIL: %llu pages merged with the hole open in %.0f s, "
					"%d wanted\n", (unsigned long long)during, t_cap(), MERGES);
				return T_FAIL;
			}
			usleep(1000);
		}
		during += m - m0;

		bool hint = rounds++ % 2;
		char *q = mmap(h, T_PAGE, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | (hint ? 0 : MAP_FIXED_NOREPLACE), -1, 0);
		if (q != h) {
			fprintf(stderr, "FAIL (round %llu): mmap(%p, %s) of the program's own hole gave "
				"%p (%s), after %llu pages merged while it was open\n",
				(unsigned long long)rounds, (void *)h, hint ? "a hint" : "MAP_FIXED_NOREPLACE",
				(void *)q, q == MAP_FAILED ? strerror(errno) : "elsewhere",
				(unsigned long long)(m - m0));
			return T_FAIL;
		}
		CHECK(munmap(q, T_PAGE) == 0);
	}
	for (size_t i = 0; i < NPG; i++)
		CHECK(reads(a + i * T_PAGE, content(i)));
	fprintf(stderr, "%llu rounds, %llu pages merged with the hole open; PASS\n",
		(unsigned long long)rounds, (unsigned long long)during);
	return T_PASS;
}
