/* SPDX-License-Identifier: MIT */
/*
 * test_sparse - a sparse reservation through the API (issue 14): 1 TiB of
 * MAP_NORESERVE memory registered whole, 16 MiB of it touched, every touched
 * page identical (half one 8 MiB cluster, half one page every 256 MiB of
 * the lower half, as a big hash table does), and as many unique pages
 * scattered over the upper half. The
 * engine, at DEDUP_CPU=25, must merge the identical ones;
 * libdedup's tables must stay in proportion to the 4096 pages present (the
 * 268 million registered pages cost 3.2 GB at 12 bytes each); its CPU over
 * a few settled seconds must stay near the budget; every page reads back
 * right; once the program discards the terabyte, the passes still cost what
 * is present and the tables of the pages gone are released; and
 * dedup_unregister() hands the range back without touching the absent
 * terabyte (the process does not grow by it).
 */
#include "tdedup.h"

#define RESERVE ((size_t)1 << 40)
#define CLUSTER_PAGES 2048
#define SCATTER_PAGES 2048
#define SCATTER_STRIDE (RESERVE / 2 / SCATTER_PAGES)
#define NPAGES (CLUSTER_PAGES + SCATTER_PAGES)
#define CLUSTER_OFF ((size_t)3 << 30)

static double process_cpu(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* unique page i: in the middle of each 256 MiB of the upper half */
static char *unique_at(char *base, size_t i)
{
	return base + RESERVE / 2 + i * SCATTER_STRIDE + SCATTER_STRIDE / 2;
}

static char *page_at(char *base, size_t i)
{
	if (i < CLUSTER_PAGES)
		return base + CLUSTER_OFF + i * T_PAGE;
	return base + (i - CLUSTER_PAGES) * SCATTER_STRIDE + SCATTER_STRIDE / 2;
}

static bool page_zero(const char *p)
{
	for (size_t k = 0; k < T_PAGE; k++)
		if (p[k])
			return false;
	return true;
}

static bool all_right(char *base, const char *want)
{
	for (size_t i = 0; i < NPAGES; i++)
		if (memcmp(page_at(base, i), want, T_PAGE)) {
			fprintf(stderr, "touched page %zu (%p) differs\n", i, (void *)page_at(base, i));
			return false;
		}
	for (size_t i = 0; i < 64; i++) {   /* a few untouched pages: zeros */
		const char *p = base + i * (RESERVE / 64) + 5 * T_PAGE;
		if (!page_zero(p)) {
			fprintf(stderr, "untouched page %p is not zero\n", (const void *)p);
			return false;
		}
	}
	return true;
}

/* Does any mapping of libdedup's memfd lie in [lo, hi)? */
static bool memfd_in(uintptr_t lo, uintptr_t hi)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	bool found = false;
	CHECK(f != NULL);
	while (fgets(line, sizeof(line), f)) {
		uintptr_t a, b;
		if (sscanf(line, "%lx-%lx", &a, &b) == 2 && a < hi && b > lo &&
		    strstr(line, "memfd:libdedup"))
			found = true;
	}
	fclose(f);
	return found;
}

int main(void)
{
	char want[T_PAGE] __attribute__((aligned(64)));
	bool ok = true;   /* every figure is printed before the test fails */

	/* passes every interval, none skipped by the idle back-off: the
	 * budget must hold while the engine rescans the terabyte */
	setenv("DEDUP_IDLE_BACKOFF", "1", 1);
	struct dedup_config cfg = { .size = sizeof(cfg), .scan_interval_ms = 50,
				    .cpu_percent = 25 };
	int r = dedup_init(&cfg);
	if (r == -EPERM || r == -ENOSYS)
		t_skip("userfaultfd not usable here (%s)", strerror(-r));
	CHECK(r == 0);
	uint64_t meta0 = t_stats().metadata_bytes;

	char *base = mmap(NULL, RESERVE, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (base == MAP_FAILED)
		t_skip("cannot reserve 1 TiB here (%s)", strerror(errno));
	t_fill(want, 4242);
	for (size_t i = 0; i < NPAGES; i++)
		memcpy(page_at(base, i), want, T_PAGE);
	for (size_t i = 0; i < SCATTER_PAGES; i++)
		t_fill(unique_at(base, i), 777000 + i);
	long rss0 = t_rollup_kb("Rss:");
	CHECK(dedup_register(base, RESERVE) == 0);

	double t0 = t_now();
	struct dedup_stats s;
	while ((s = t_stats()).merges < NPAGES && t_now() - t0 < t_cap())
		usleep(20000);
	t_print_stats("merged");
	fprintf(stderr, "%llu of %d pages merged in %.2f s\n", (unsigned long long)s.merges,
		NPAGES, t_now() - t0);
	CHECK(s.merges >= NPAGES && s.pages_sharing >= NPAGES);

	/* the tables: what the terabyte adds, in proportion to the pages
	 * present (at most 1 KiB each) */
	uint64_t allow = meta0 + (1 << 20) + (uint64_t)(NPAGES + SCATTER_PAGES) * 1024;
	fprintf(stderr, "metadata %llu KiB at start, %llu KiB merged (allowed %llu KiB)\n",
		(unsigned long long)(meta0 >> 10), (unsigned long long)(s.metadata_bytes >> 10),
		(unsigned long long)(allow >> 10));
	ok &= s.metadata_bytes < allow;

	/* settled: nothing to merge, the engine rescans every 50 ms */
	usleep(300000);
	struct dedup_stats a = t_stats();
	double w0 = t_now(), p0 = process_cpu();
	usleep(3000000);
	struct dedup_stats b = t_stats();
	double wall = t_now() - w0, cpu = (double)(b.engine_cpu_ns - a.engine_cpu_ns) * 1e-9;
	double pcpu = process_cpu() - p0;   /* this thread sleeps: it is libdedup's */
	fprintf(stderr, "settled: %llu passes, engine CPU %.3f s over %.2f s (%.1f%%, budget 25%%), "
		"process %.3f s\n", (unsigned long long)(b.full_passes - a.full_passes), cpu, wall,
		100 * cpu / wall, pcpu);
	ok &= b.full_passes > a.full_passes;   /* it did rescan */
	ok &= cpu / wall < 0.5 && pcpu / wall < 0.5;
	ok &= b.metadata_bytes < allow;

	ok &= all_right(base, want);
	/* a write into a merged page copies it, the others stay */
	page_at(base, 7)[100] ^= 1;
	page_at(base, NPAGES - 7)[100] ^= 1;
	CHECK(page_at(base, 7)[100] == (want[100] ^ 1));
	page_at(base, 7)[100] ^= 1;
	page_at(base, NPAGES - 7)[100] ^= 1;
	ok &= all_right(base, want);

	/* The program discards the whole reservation (a hash table reset):
	 * everything reads zeros, and the engine's passes, which then follow
	 * the discarded range until they see it empty, still cost what is
	 * present, not a look at every page of the terabyte. */
	uint64_t meta_before = t_stats().metadata_bytes;
	double m0 = t_now();
	CHECK(madvise(base, RESERVE, MADV_DONTNEED) == 0);
	double tm = t_now() - m0;
	struct dedup_stats d0 = t_stats();   /* passes from now on see it empty */
	double p1 = process_cpu(), x0 = t_now();
	while (t_stats().full_passes < d0.full_passes + 3 && t_now() - x0 < t_cap())
		usleep(10000);
	double xw = t_now() - x0, xc = process_cpu() - p1;
	struct dedup_stats d1 = t_stats();
	fprintf(stderr, "discarding the terabyte: madvise %.2f s, then 3 passes in %.2f s, process "
		"CPU %.3f s, metadata %llu KiB (was %llu KiB)\n", tm, xw, xc,
		(unsigned long long)(d1.metadata_bytes >> 10),
		(unsigned long long)(meta_before >> 10));
	/* CPU, not wall time (a busy machine stretches wall time): on 7dca772
	 * these passes cost 6-8 s of CPU, one pagemap entry per page */
	ok &= d1.full_passes >= d0.full_passes + 3 && xc < 3;
	/* the unique pages' tables went with them (the merged pages' stay:
	 * they are still mappings of ours). Their chunks were made after the
	 * others' (the scan goes in address order), so whole slab pages of
	 * them are freed, not holes among live chunks. */
	ok &= d1.metadata_bytes + (uint64_t)SCATTER_PAGES * 512 < meta_before;
	for (size_t i = 0; i < SCATTER_PAGES; i++)
		ok &= page_zero(unique_at(base, i));
	for (size_t i = 0; i < NPAGES; i++)
		ok &= page_zero(page_at(base, i));
	for (size_t i = 0; i < NPAGES; i++)
		memcpy(page_at(base, i), want, T_PAGE);   /* and back, for what follows */
	ok &= all_right(base, want);

	/* Handing the terabyte back: merged pages become anonymous again,
	 * found without a walk over what is absent - the process must not
	 * grow by the tables of 268 million pages it never touched. */
	double u0 = t_now();
	CHECK(dedup_unregister(base, RESERVE) == 0);
	double tu = t_now() - u0;
	long rss1 = t_rollup_kb("Rss:");
	struct dedup_stats c = t_stats();
	fprintf(stderr, "unregister: %.2f s, Rss %ld kB before registering, %ld kB after, "
		"metadata %llu KiB\n", tu, rss0, rss1, (unsigned long long)(c.metadata_bytes >> 10));
	ok &= !memfd_in((uintptr_t)base, (uintptr_t)base + RESERVE);
	ok &= rss1 < rss0 + 32 * 1024;
	ok &= c.metadata_bytes <= s.metadata_bytes;
	ok &= all_right(base, want);

	CHECK(dedup_shutdown() == 0);
	ok &= all_right(base, want);
	CHECK(munmap(base, RESERVE) == 0);
	if (!ok) {
		fprintf(stderr, "FAIL: a figure above is out of bounds\n");
		return T_FAIL;
	}
	fprintf(stderr, "PASS\n");
	return T_PASS;
}
