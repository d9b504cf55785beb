/* SPDX-License-Identifier: MIT */
/*
 * hl_churn - an ordinary program for the hostile-host tests
 * (tests/hostile/, label "hostile"): it knows nothing of libdedup, holds
 * duplicate pages and keeps changing its mappings. It prints one line,
 * "ok <checksum>", and exits 0, or reports on stderr and exits 1. The
 * scripts run it with and without LD_PRELOAD and compare stdout and exit
 * status: under libdedup it must behave exactly the same.
 *
 *   hl_churn memcg ROUNDS MIB   each round mallocs MIB MiB in 4 MiB chunks
 *                               (glibc maps them itself), all chunks with the
 *                               same pages (new ones every round), checks and
 *                               frees them (glibc's internal munmap)
 *   hl_churn maps ROUNDS N      N small mappings with a PROT_NONE guard page
 *                               each (2 VMAs), duplicates in all of them, a
 *                               hole punched and mapped again in place
 *                               (MAP_FIXED_NOREPLACE), mremap, mprotect,
 *                               then everything unmapped: every call must
 *                               succeed
 *
 * HL_WAIT_MERGES=1: when preloaded, each round also waits (up to t_cap())
 * until libdedup merged something new, so that the round really runs with
 * merged memory; the wait is invisible on stdout.
 */
#include "../preload/pl.h"

#include <malloc.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

static uint64_t sum;
static pl_stats_fn stats_fn;

static uint64_t merges(void)
{
	struct dedup_stats s = { .size = sizeof(s) };
	if (!stats_fn || stats_fn(&s) < 0)
		return 0;
	return s.merges;
}

/* Wait for merges past @base, when asked to and preloaded with a running engine. */
static void wait_merges(uint64_t base)
{
	struct dedup_stats s = { .size = sizeof(s) };
	double t0 = t_now();

	if (!stats_fn || !getenv("HL_WAIT_MERGES"))
		return;
	while (merges() <= base) {
		if (stats_fn(&s) == 0 && s.regions == 0 && t_now() - t0 > 2)
			return;   /* not merging here (the test says why) */
		if (t_now() - t0 > t_cap()) {
			fprintf(stderr, "hl_churn: no merge after %.0f s\n", t_cap());
			exit(T_FAIL);
		}
		usleep(20000);
	}
}

static void check_pages(const char *p, size_t npages, uint64_t seed, const char *what)
{
	if (!pl_check(p, npages, seed)) {
		fprintf(stderr, "hl_churn: %s: wrong content\n", what);
		exit(T_FAIL);
	}
	for (size_t i = 0; i < npages * T_PAGE; i += 512)
		sum += (unsigned char)p[i];
}

static int run_memcg(int rounds, size_t mib)
{
	size_t k = mib / 4, np = (4u << 20) / T_PAGE;
	char **c = calloc(k, sizeof(*c));

	CHECK(c && k >= 2);
	/* a fixed threshold: every chunk is glibc's own mmap, every free()
	 * its internal munmap (which no interposer sees), every round */
	CHECK(mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1);
	for (int r = 0; r < rounds; r++) {
		uint64_t base = merges();
		for (size_t i = 0; i < k; i++) {
			c[i] = malloc(4u << 20);
			CHECK(c[i]);
			pl_fill(c[i], np, (uint64_t)r + 1);
		}
		wait_merges(base);
		for (size_t i = 0; i < k; i++) {
			check_pages(c[i], np, (uint64_t)r + 1, "memcg round");
			free(c[i]);
		}
	}
	free(c);
	return 0;
}

static int run_maps(int rounds, size_t n)
{
	enum { NP = 16 };   /* pages per mapping, the last one a guard */
	char **m = calloc(n, sizeof(*m));
	size_t big_np = 4096;

	CHECK(m);
	/* Isolated duplicates first: every even page of this region is the
	 * same, every odd one unique. Each merge of one of them splits the
	 * VMA (+2 mappings): a merger that took all it could would leave the
	 * program few of its own. */
	char *iso = mmap(NULL, big_np * T_PAGE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(iso != MAP_FAILED);
	for (size_t i = 0; i < big_np; i++)
		t_fill(iso + i * T_PAGE, i % 2 ? 1000 + i : 7);
	if (stats_fn && getenv("HL_WAIT_MERGES")) {
		/* until merging stops for lack of mappings, or all are merged */
		struct dedup_stats s = { .size = sizeof(s) };
		double t0 = t_now();
		for (;;) {
			CHECK(stats_fn(&s) == 0);
			if (s.skipped_budget || s.merges >= big_np / 2 - 1)
				break;
			if (t_now() - t0 > t_cap()) {
				fprintf(stderr, "hl_churn: %llu merges, no budget stop after %.0f s\n",
					(unsigned long long)s.merges, t_cap());
				exit(T_FAIL);
			}
			usleep(20000);
		}
		fprintf(stderr, "hl_churn: %llu isolated merges, %ld mappings\n",
			(unsigned long long)s.merges, t_map_count());
	}
	/* then the program's own mappings, changed in every way it can */
	for (int r = 0; r < rounds; r++) {
		uint64_t seed = 100 + (uint64_t)r;
		for (size_t i = 0; i < n; i++) {
			m[i] = mmap(NULL, NP * T_PAGE, PROT_READ | PROT_WRITE,
				    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			CHECK(m[i] != MAP_FAILED);
			CHECK(mprotect(m[i] + (NP - 1) * T_PAGE, T_PAGE, PROT_NONE) == 0);
			pl_fill(m[i], NP - 1, seed);
		}
		/* a hole in the middle of some of them, mapped again in place */
		for (size_t i = 0; i < n / 4; i++) {
			char *h = m[i] + 4 * T_PAGE;
			CHECK(munmap(h, 2 * T_PAGE) == 0);
			char *g = mmap(h, 2 * T_PAGE, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
			CHECK(g == h);
			t_fill(h, seed * 1000003 + 4);   /* what pl_fill gave pages 4, 5 */
			t_fill(h + T_PAGE, seed * 1000003 + 5);
		}
		/* holes of 1 to 64 pages in a registered-sized mapping (1 MiB),
		 * mapped again in place at once: nothing may land in between */
		{
			char *b = mmap(NULL, 256 * T_PAGE, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			CHECK(b != MAP_FAILED);
			pl_fill(b, 256, seed);
			for (size_t h = 1; h <= 64; h *= 2) {
				char *at = b + (256 - h) / 2 * T_PAGE;
				CHECK(munmap(at, h * T_PAGE) == 0);
				char *g = mmap(at, h * T_PAGE, PROT_READ | PROT_WRITE,
					       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
				if (g != at) {
					fprintf(stderr, "hl_churn: the hole at %p (%zu pages) was taken: "
						"%s\n", (void *)at, h, g == MAP_FAILED ? strerror(errno) : "moved");
					exit(T_FAIL);
				}
				for (size_t q = 0; q < h; q++)
					t_fill(at + q * T_PAGE, seed * 1000003 + (size_t)(at - b) / T_PAGE + q);
			}
			check_pages(b, 256, seed, "holes");
			CHECK(munmap(b, 256 * T_PAGE) == 0);
		}
		/* mprotect a page in the middle read-only, and back */
		for (size_t i = n / 4; i < n / 2; i++) {
			CHECK(mprotect(m[i] + 3 * T_PAGE, T_PAGE, PROT_READ) == 0);
			CHECK(mprotect(m[i] + 3 * T_PAGE, T_PAGE, PROT_READ | PROT_WRITE) == 0);
		}
		/* some moved and grown */
		for (size_t i = n / 2; i < n / 2 + n / 8; i++) {
			/* one VMA again first: mremap() moves a single VMA */
			CHECK(mprotect(m[i] + (NP - 1) * T_PAGE, T_PAGE, PROT_READ | PROT_WRITE) == 0);
			char *nm = mremap(m[i], NP * T_PAGE, (NP + 4) * T_PAGE, MREMAP_MAYMOVE);
			CHECK(nm != MAP_FAILED);
			CHECK(munmap(nm + NP * T_PAGE, 4 * T_PAGE) == 0);
			CHECK(mprotect(nm + (NP - 1) * T_PAGE, T_PAGE, PROT_NONE) == 0);
			m[i] = nm;
		}
		for (size_t i = 0; i < n; i++)
			check_pages(m[i], NP - 1, seed, "small");
		for (size_t i = 0; i < n; i++)
			CHECK(munmap(m[i], NP * T_PAGE) == 0);
	}
	for (size_t i = 0; i < big_np; i++) {
		char want[T_PAGE] __attribute__((aligned(64)));
		t_fill(want, i % 2 ? 1000 + i : 7);
		if (memcmp(iso + i * T_PAGE, want, T_PAGE)) {
			fprintf(stderr, "hl_churn: isolated page %zu: wrong content\n", i);
			exit(T_FAIL);
		}
		sum += (unsigned char)iso[i * T_PAGE];
	}
	CHECK(munmap(iso, big_np * T_PAGE) == 0);
	free(m);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s memcg ROUNDS MIB | maps ROUNDS N\n", argv[0]);
		return 2;
	}
	stats_fn = (pl_stats_fn)dlsym(RTLD_DEFAULT, "dedup_stats");
	int rounds = atoi(argv[2]);
	size_t n = strtoul(argv[3], NULL, 10);
	int rc = strcmp(argv[1], "memcg") == 0 ? run_memcg(rounds, n)
		 : strcmp(argv[1], "maps") == 0 ? run_maps(rounds, n) : 2;
	if (rc == 0)
		printf("ok %llu\n", (unsigned long long)sum);
	return rc;
}
