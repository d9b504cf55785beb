/* SPDX-License-Identifier: MIT */
/*
 * tables.c - what dedup-bench measures: the modes (which merger, how the
 * measured process opts in) and the workloads (what its memory holds), plus
 * the seeded page contents the synthetic workloads are built from.
 *
 * Each mode x workload pair is one run in a fresh child process. A mode that
 * merges through our own code (libdedup-api) cannot apply to a program we
 * only exec (redis): that pair is reported as skipped, with the reason; the
 * preload mode covers it. pair_skip() says which pairs those are.
 *
 * workers: N processes (--workers, each with --size MiB) hold the same
 * pages, none twice inside one process: what only cross-process merging
 * saves (kernel KSM, libdedup-share; libdedup-api merges each alone and
 * saves nothing, which is the point of its row).
 */
#include <string.h>

#include "bench.h"

const struct mode modes[] = {
	{ .name = "none", .merger = MERGER_NONE, .ready = true,
	  .desc = "no merger: the baseline for slowdowns" },
	{ .name = "ksm-fast", .merger = MERGER_KSM, .ksm_pages_to_scan = 10000,
	  .ksm_sleep_ms = 0, .ready = true,
	  .desc = "kernel KSM at its fastest: pages_to_scan=10000 sleep_millisecs=0" },
	{ .name = "ksm-default", .merger = MERGER_KSM, .ksm_pages_to_scan = 100,
	  .ksm_sleep_ms = 20, .ready = true, .slow = true,
	  .desc = "kernel KSM at the kernel defaults: 100 pages every 20 ms (capped)" },
	{ .name = "libdedup-api", .merger = MERGER_LIBDEDUP, .api = true, .ready = true,
	  .desc = "libdedup through the API: dedup_init + dedup_register on the buffer" },
	/* The preload mode: its process gets LD_PRELOAD and DEDUP_INTERVAL /
	 * DEDUP_CPU as the API mode sets them (preload.c) and registers nothing
	 * itself. The synthetic child builds its data where the engine cannot
	 * see it and copies it into place at "go" (child.c), so the figures
	 * mean what they mean for the API mode; redis merges while it loads,
	 * so its "before" comes from the none row (run.c). Merger CPU: all of
	 * libdedup's threads from the process's start (finding memory is part
	 * of the cost); counters from the library's published stats file. */
	{ .name = "libdedup-preload", .merger = MERGER_LIBDEDUP, .preload = true,
	  .ready = true,
	  .desc = "libdedup preloaded: LD_PRELOAD=libdedup.so, DEDUP_* environment" },
	/* The API mode with dedup_config.share = "bench-<pid of the first
	 * member>": every member of a workers family in one sharing group
	 * (README, sharing groups). Merger CPU: every member's libdedup
	 * threads and the group's dedup-share helper. */
	{ .name = "libdedup-share", .merger = MERGER_LIBDEDUP, .api = true, .share = true,
	  .ready = true,
	  .desc = "libdedup-api, every workers member in one sharing group (workers only)" },
};
const size_t nmodes = B_ARRAY_SIZE(modes);

const struct workload workloads[] = {
	{ "runs", WL_RUNS, false, false,
	  "64 distinct pages repeated: page i holds content i % 64 (a 256 KiB blob loaded N times)" },
	{ "scattered", WL_SCATTERED, false, false,
	  "unique pages; every 8th page (i % 8 == 0) holds one of 64 shared contents" },
	{ "unique", WL_UNIQUE, false, false, "every page distinct: pure scanning cost" },
	{ "zero", WL_ZERO, false, false, "calloc'd, every page read once, never written" },
	{ "churn", WL_CHURN, false, true,
	  "runs content; 2 threads write 1 page in 16 at a set rate (same value: re-mergeable)" },
	{ "redis", WL_REDIS, true, false,
	  "redis-server holding identical 16 KiB values, GET throughput by redis-benchmark" },
	{ "workers", WL_WORKERS, false, false,
	  "--workers processes with the same unique pages each; 1 reader thread per process" },
};
const size_t nworkloads = B_ARRAY_SIZE(workloads);

const struct mode *mode_find(const char *name)
{
	for (size_t i = 0; i < nmodes; i++)
		if (strcmp(modes[i].name, name) == 0)
			return &modes[i];
	return NULL;
}

const struct workload *workload_find(const char *name)
{
	for (size_t i = 0; i < nworkloads; i++)
		if (strcmp(workloads[i].name, name) == 0)
			return &workloads[i];
	return NULL;
}

const char *pair_skip(const struct workload *w, const struct mode *m)
{
	if (m->share && w->kind != WL_WORKERS)
		return "a sharing group of one process merges what libdedup-api merges: run on "
		       "workers only";
	/* the members are fork()ed from one process; a preloaded library
	 * merges in the first only (DEDUP_FORK=off), and what each member
	 * alone would save is libdedup-api's row */
	if (m->preload && w->kind == WL_WORKERS)
		return "the members are fork()ed siblings: preloaded, only the first merges "
		       "(DEDUP_FORK=off); merging alone is the libdedup-api row";
	return NULL;
}

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

void wl_fill_page(void *page, uint64_t seed, uint64_t id)
{
	uint64_t *w = page;
	uint64_t s = seed * 0x100000001b3ULL ^ (id + 1) * 0xc2b2ae3d27d4eb4fULL;
	uint64_t x = splitmix64(&s);

	/* xorshift64 after a splitmix64 start: fast, and never all zero */
	if (!x)
		x = 1;
	for (size_t i = 0; i < B_PAGE / 8; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		w[i] = x;
	}
}
