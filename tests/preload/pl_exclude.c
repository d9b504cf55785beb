/* SPDX-License-Identifier: MIT */
/*
 * pl_exclude MODE - DEDUP_EXCLUDE keeps memory out of merging.
 * Three places hold the same duplicate pages: the brk heap (grown with
 * sbrk), region A mapped at a fixed address, region B mapped anywhere.
 * The test runs with
 *   heap:  DEDUP_EXCLUDE=heap               -> A and B merge, the heap not;
 *   mmap:  DEDUP_EXCLUDE=mmap               -> the heap merges, A and B not;
 *   range: DEDUP_EXCLUDE=<A's range in hex> -> the heap and B merge, A not.
 * "Not" means: no merged piece in it and not registered at all (no uffd
 * flag in its VmFlags), after the others have merged and a second more.
 */
#include "pl.h"

#define A_ADDR 0x600000000000UL
#define LEN (4UL << 20)

static void fill(char *p)
{
	for (size_t i = 0; i < LEN / T_PAGE; i++)
		t_fill(p + i * T_PAGE, 7000 + i % 64);
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "";
	pl_need_uffd();
	char *heap = sbrk(0);
	heap = (char *)(((uintptr_t)heap + T_PAGE - 1) & ~(T_PAGE - 1));
	CHECK(brk(heap + LEN) == 0);
	char *a = mmap((void *)A_ADDR, LEN, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (a != (char *)A_ADDR)
		t_skip("cannot map at %#lx", A_ADDR);
	char *b = t_map_anon(LEN);
	fill(heap);
	fill(a);
	fill(b);

	struct { const char *name; char *p; bool want; } r[3] = {
		{ "heap", heap, strcmp(mode, "heap") != 0 },
		{ "A", a, strcmp(mode, "mmap") != 0 && strcmp(mode, "range") != 0 },
		{ "B", b, strcmp(mode, "mmap") != 0 },
	};
	bool m, reg;
	double t0 = t_now();
	for (int i = 0; i < 3; i++) {
		if (!r[i].want)
			continue;
		do {
			usleep(20000);
			pl_look(r[i].p, LEN, &m, &reg);
		} while (!m && t_now() - t0 < t_cap());
		if (!m) {
			fprintf(stderr, "FAIL: %s: %s did not merge\n", mode, r[i].name);
			return T_FAIL;
		}
	}
	sleep(1);
	for (int i = 0; i < 3; i++) {
		pl_look(r[i].p, LEN, &m, &reg);
		if (!r[i].want && (m || reg)) {
			fprintf(stderr, "FAIL: %s: %s is %s although excluded\n", mode, r[i].name,
				m ? "merged" : "registered");
			return T_FAIL;
		}
		for (size_t k = 0; k < LEN / T_PAGE; k++) {
			char want[T_PAGE];
			t_fill(want, 7000 + k % 64);
			CHECK(memcmp(r[i].p + k * T_PAGE, want, T_PAGE) == 0);
		}
	}
	fprintf(stderr, "PASS (%s)\n", mode);
	return T_PASS;
}
