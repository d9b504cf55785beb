/* SPDX-License-Identifier: MIT */
/*
 * pl_sparse - an unmodified program with a sparse reservation: 1 TiB of
 * MAP_NORESERVE read-write private anonymous memory with 16 MiB touched (as
 * sanitizers' shadow memory, JITs and big hash tables make), every touched
 * page identical. Half of them are one 8 MiB cluster, the other half one
 * page every 512 MiB (a big hash table).
 *
 * Under LD_PRELOAD (tests/preload.cmake runs it through pl_sparse.sh, with
 * the default DEDUP_CPU=25), the pages merge; libdedup's metadata stays in
 * proportion to the pages present, not to the terabyte registered; once
 * merged, the engine stays within its CPU budget; every touched page reads
 * back as written and untouched ones as zeros.
 *
 * Without libdedup it only touches and waits as long. Either way it prints
 * "pss_kb N" (its Pss at the end) on stdout, for pl_sparse.sh to compare:
 * merging must leave the program smaller than it is without libdedup.
 */
#include "pl.h"

#define RESERVE ((size_t)1 << 40)
#define CLUSTER_PAGES 2048
#define SCATTER_PAGES 2048
#define SCATTER_STRIDE (RESERVE / SCATTER_PAGES)
#define NPAGES (CLUSTER_PAGES + SCATTER_PAGES)
#define CLUSTER_OFF ((size_t)3 << 30)

static double process_cpu(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static char *page_at(char *base, size_t i)
{
	if (i < CLUSTER_PAGES)
		return base + CLUSTER_OFF + i * T_PAGE;
	/* one page in the middle of each 512 MiB, away from the cluster */
	return base + (i - CLUSTER_PAGES) * SCATTER_STRIDE + SCATTER_STRIDE / 2;
}

int main(void)
{
	pl_stats_fn stats = (pl_stats_fn)dlsym(RTLD_DEFAULT, "dedup_stats");
	char want[T_PAGE] __attribute__((aligned(64)));
	double settle = 3.0;
	bool ok = true;   /* every figure is printed before it fails */

	if (stats)
		pl_need_uffd();
	char *base = mmap(NULL, RESERVE, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (base == MAP_FAILED)
		t_skip("cannot reserve 1 TiB here (%s)", strerror(errno));
	t_fill(want, 4242);
	for (size_t i = 0; i < NPAGES; i++)
		memcpy(page_at(base, i), want, T_PAGE);

	if (stats) {
		double t0 = t_now();
		struct dedup_stats s = pl_wait_merged(NPAGES);
		fprintf(stderr, "merged %d pages in %.2f s\n", NPAGES, t_now() - t0);
		/* The tables: the index and the other regions' pages take
		 * their share; what the terabyte adds must be in proportion to
		 * the 4096 pages present (1 KiB each at most), not to the
		 * 268 million pages of the reservation (12 bytes each before:
		 * 3.2 GB). */
		uint64_t allow = (1 << 20) + (uint64_t)NPAGES * 1024;
		fprintf(stderr, "metadata %llu KiB (allowed %llu KiB)\n",
			(unsigned long long)(s.metadata_bytes >> 10),
			(unsigned long long)(allow >> 10));
		ok &= s.metadata_bytes < allow;
		ok &= s.pages_sharing >= NPAGES;
		/* Settled: nothing left to merge, the engine only rescans.
		 * Its CPU over a few seconds of wall time must stay near its
		 * budget (25% of one core); the cap leaves a wide margin. */
		usleep(500000);
		struct dedup_stats a = pl_stats();
		double w0 = t_now(), p0 = process_cpu();
		usleep((useconds_t)(settle * 1e6));
		struct dedup_stats b = pl_stats();
		double wall = t_now() - w0, pcpu = process_cpu() - p0;
		double share = (double)(b.engine_cpu_ns - a.engine_cpu_ns) * 1e-9 / wall;
		pl_print("settled", &b);
		/* the process CPU is libdedup's threads' (this one sleeps),
		 * the preload library's reconcile included */
		fprintf(stderr, "engine CPU %.3f s over %.2f s wall (%.1f%%, budget 25%%), "
			"process %.3f s (%.1f%%)\n", (double)(b.engine_cpu_ns - a.engine_cpu_ns) * 1e-9,
			wall, share * 100, pcpu, 100 * pcpu / wall);
		ok &= b.full_passes > a.full_passes;   /* it did rescan */
		ok &= share < 0.5 && pcpu / wall < 0.5;
		ok &= b.metadata_bytes < allow;
	} else {
		usleep((useconds_t)((settle + 1.5) * 1e6));
	}

	long pss = t_rollup_kb("Pss:");
	for (size_t i = 0; i < NPAGES; i++)
		if (memcmp(page_at(base, i), want, T_PAGE)) {
			fprintf(stderr, "FAIL: touched page %zu (%p) differs\n", i,
				(void *)page_at(base, i));
			return T_FAIL;
		}
	/* a few untouched pages read zeros */
	for (size_t i = 0; i < 64; i++)
		CHECK(pl_is_zero(base + i * (RESERVE / 64) + 5 * T_PAGE, T_PAGE));
	printf("pss_kb %ld\n", pss);
	fprintf(stderr, "%s: Pss %ld kB\n", stats ? "preloaded" : "plain", pss);
	if (!ok)
		fprintf(stderr, "FAIL: metadata, sharing or engine CPU out of bounds (above)\n");
	return ok ? T_PASS : T_FAIL;
}
