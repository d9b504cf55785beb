/* SPDX-License-Identifier: MIT */
/*
 * dedup-demo - a sample workload that shows libdedup's effect on memory.
 *
 * It allocates a heap buffer (malloc), fills it with a few distinct page
 * contents repeated in runs (as when the same data is loaded many times),
 * hands it to libdedup, and prints the process's memory (Pss, Rss from
 * /proc/self/smaps_rollup) before and after merging, with the engine's
 * figures: time to 50/90/99% of the final saving, engine CPU, VMAs added.
 * Every page is verified at the end. --unique fills unique pages instead
 * and reports the scan rate (pages hashed per engine CPU second).
 *
 *   dedup-demo [--size MiB] [--contents K] [--unique] [--zero] [--csv]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "libdedup.h"

#define PAGE 4096UL

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static long rollup_kb(const char *key)
{
	FILE *f = fopen("/proc/self/smaps_rollup", "r");
	char line[256];
	long v = -1;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, strlen(key)))
			v = strtol(line + strlen(key), NULL, 10);
	fclose(f);
	return v;
}

static long map_count(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	long n = 0;
	int c;
	if (!f)
		return -1;
	while ((c = getc(f)) != EOF)
		n += c == '\n';
	fclose(f);
	return n;
}

static void fill(char *p, uint64_t seed)
{
	uint64_t *w = (uint64_t *)p, x = seed * 0x9E3779B97F4A7C15ULL + 1;
	for (size_t i = 0; i < PAGE / 8; i++) {
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		w[i] = x | 1;
	}
}

static void usage(FILE *f)
{
	fprintf(f,
"NAME\n"
"    dedup-demo - show libdedup merging a sample workload\n\n"
"SYNOPSIS\n"
"    dedup-demo [--size MiB] [--contents K] [--unique | --zero] [--csv]\n\n"
"DESCRIPTION\n"
"    Fills a malloc'd buffer with K distinct page contents repeated in runs,\n"
"    registers it with libdedup and prints memory before and after merging.\n\n"
"OPTIONS\n"
"    --size MiB      buffer size (default 256)\n"
"    --contents K    distinct page contents (default 16)\n"
"    --unique        unique pages: nothing to merge; reports the scan rate\n"
"    --zero          zero-filled (touched) pages\n"
"    --timeout S     give up waiting after S seconds (default 60)\n"
"    --csv           one CSV line of results on stdout\n"
"    -h, --help      this text\n\n"
"ENVIRONMENT\n"
"    DEDUP_* options apply (see README.md); e.g. DEDUP_CPU=100.\n\n"
"EXIT STATUS\n"
"    0 done and verified, 1 a page read back wrong, 2 usage error,\n"
"    3 libdedup could not start (the reason is printed).\n");
}

int main(int argc, char **argv)
{
	size_t mib = 256, K = 16;
	int unique = 0, zero = 0, csv = 0;
	double timeout = 60;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--size") && i + 1 < argc)
			mib = strtoul(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--contents") && i + 1 < argc)
			K = strtoul(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
			timeout = atof(argv[++i]);
		else if (!strcmp(argv[i], "--unique"))
			unique = 1;
		else if (!strcmp(argv[i], "--zero"))
			zero = 1;
		else if (!strcmp(argv[i], "--csv"))
			csv = 1;
		else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			usage(stdout);
			return 0;
		} else {
			fprintf(stderr, "dedup-demo: unknown argument '%s' (try --help)\n", argv[i]);
			return 2;
		}
	}
	if (!mib || !K) {
		fprintf(stderr, "dedup-demo: --size and --contents must be positive\n");
		return 2;
	}
	size_t n = mib * 1024 * 1024 / PAGE;
	char *buf = aligned_alloc(PAGE, n * PAGE);
	char *ref = malloc(K * PAGE);
	if (!buf || !ref) {
		perror("dedup-demo: malloc");
		return 2;
	}
	madvise(buf, n * PAGE, MADV_NOHUGEPAGE);
	for (size_t k = 0; k < K; k++)
		fill(ref + k * PAGE, k + 1);
	for (size_t i = 0; i < n; i++) {
		if (zero)
			memset(buf + i * PAGE, 0, PAGE);
		else if (unique)
			fill(buf + i * PAGE, i + 1000003);
		else
			memcpy(buf + i * PAGE, ref + (i % K) * PAGE, PAGE);
	}

	struct dedup_config cfg = { .size = sizeof(cfg) };
	if (!getenv("DEDUP_INTERVAL"))
		cfg.scan_interval_ms = 20;
	int r = dedup_init(&cfg);
	if (r < 0 && r != -EALREADY) {
		fprintf(stderr, "dedup-demo: libdedup could not start: %s\n", strerror(-r));
		return 3;
	}
	long pss0 = rollup_kb("Pss:"), rss0 = rollup_kb("Rss:"), maps0 = map_count();
	double t0 = now();
	r = dedup_register(buf, n * PAGE);
	if (r < 0) {
		fprintf(stderr, "dedup-demo: dedup_register: %s\n", strerror(-r));
		return 3;
	}
	size_t expect = unique ? 0 : zero ? n : n - K;
	double t50 = 0, t90 = 0, t99 = 0;
	struct dedup_stats st = { .size = sizeof(st) };
	uint64_t passes0 = 0;
	for (;;) {
		usleep(10000);
		dedup_stats(&st);
		double t = now() - t0;
		size_t saved = st.bytes_saved / PAGE;
		if (!t50 && saved >= expect / 2 && expect) t50 = t;
		if (!t90 && saved >= expect * 9 / 10 && expect) t90 = t;
		if (!t99 && saved >= expect * 99 / 100 && expect) t99 = t;
		if (!passes0)
			passes0 = st.full_passes + 1;
		if (expect ? saved >= expect : st.full_passes >= passes0 + 1)
			break;
		if (t > timeout) {
			fprintf(stderr, "dedup-demo: gave up after %.0f s\n", timeout);
			break;
		}
	}
	double elapsed = now() - t0;
	long pss1 = rollup_kb("Pss:"), rss1 = rollup_kb("Rss:"), maps1 = map_count();
	dedup_stats(&st);

	int bad = 0;
	for (size_t i = 0; i < n && !bad; i++) {
		char want[PAGE];
		if (zero)
			memset(want, 0, PAGE);
		else if (unique)
			fill(want, i + 1000003);
		else
			memcpy(want, ref + (i % K) * PAGE, PAGE);
		bad = memcmp(buf + i * PAGE, want, PAGE) != 0;
	}
	double cpu = st.engine_cpu_ns / 1e9;
	if (csv) {
		printf("size_mib,contents,pss_before_kib,pss_after_kib,pages_merged,expected,"
		       "t50_s,t90_s,t99_s,engine_cpu_s,vmas_added,pages_scanned,scan_rate\n");
		printf("%zu,%zu,%ld,%ld,%llu,%zu,%.3f,%.3f,%.3f,%.3f,%ld,%llu,%.0f\n", mib,
		       unique ? n : K, pss0, pss1, (unsigned long long)(st.bytes_saved / PAGE),
		       expect, t50, t90, t99, cpu, maps1 - maps0,
		       (unsigned long long)st.pages_scanned, cpu ? st.pages_scanned / cpu : 0);
	} else {
		printf("\nlibdedup demo: %zu MiB, %s\n\n", mib,
		       zero ? "zero-filled pages" : unique ? "unique pages" : "duplicate runs");
		printf("  %-26s %12s %12s\n", "", "before", "after");
		printf("  %-26s %9.1f MiB %9.1f MiB\n", "Pss (smaps_rollup)", pss0 / 1024.0, pss1 / 1024.0);
		printf("  %-26s %9.1f MiB %9.1f MiB\n", "Rss", rss0 / 1024.0, rss1 / 1024.0);
		printf("  %-26s %12ld %12ld\n", "mappings (maps lines)", maps0, maps1);
		printf("\n  pages merged            %llu of %zu expected (%.2f%%)\n",
		       (unsigned long long)(st.bytes_saved / PAGE), expect,
		       expect ? 100.0 * (st.bytes_saved / PAGE) / expect : 100.0);
		if (expect)
			printf("  time to 50/90/99%%       %.2f / %.2f / %.2f s\n", t50, t90, t99);
		printf("  engine CPU              %.3f s over %.2f s\n", cpu, elapsed);
		printf("  pages hashed            %llu (%.2f M pages per CPU second)\n",
		       (unsigned long long)st.pages_scanned,
		       cpu ? st.pages_scanned / cpu / 1e6 : 0);
		printf("  canonical pages         %llu, zero pages %llu, VMAs added %llu (%.4f per merged page)\n",
		       (unsigned long long)st.pages_shared, (unsigned long long)st.zero_pages,
		       (unsigned long long)(maps1 - maps0 > 0 ? maps1 - maps0 : 0),
		       st.bytes_saved ? (double)(maps1 - maps0) / (st.bytes_saved / PAGE) : 0);
		printf("  metadata                %.2f MiB (%.1f bytes per registered page)\n",
		       st.metadata_bytes / 1048576.0, (double)st.metadata_bytes / n);
		printf("  every page verified     %s\n\n", bad ? "NO - MISMATCH" : "yes");
	}
	dedup_shutdown();
	return bad ? 1 : 0;
}
