/* SPDX-License-Identifier: MIT */
/*
 * pass_maps.c - dedup-bench-pass: what one full pass over a registered range
 * costs with many mappings in the process (issue 11, point 3: the per-pass
 * cost must not grow with the mapping count).
 *
 *   dedup-bench-pass MAPPINGS [MiB] [PASSES] [scattered|unique]
 *
 * Adds about MAPPINGS mappings of its own (one page each, PROT_NONE and
 * PROT_READ in turn, never touched), fills MiB (default 1024) with the
 * `scattered` content of dedup-bench (unique pages, every 8th one of 64
 * shared contents; or every page unique, where merging adds no mapping),
 * registers it through the API, and runs passes with
 * dedup_scan_now() until two in a row merge nothing. Then it times PASSES
 * (default 5) more passes: wall time and the calling thread's CPU (the pass
 * runs in it). One CSV line on stdout:
 *   content,mappings,maps_lines,mib,merged,passes,pass_wall_median_s,pass_cpu_median_s
 * Above 65,530 mappings, run it at a higher vm.max_map_count
 * (tests/with_max_map_count.sh 1048576 -- ...).
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

#define PG 4096UL

static double clk(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fill(uint64_t *w, uint64_t seed)
{
	uint64_t x = seed * 0x9E3779B97F4A7C15ULL + 1;
	for (size_t i = 0; i < PG / 8; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		w[i] = x | 1;
	}
}

static long maps_lines(void)
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

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s MAPPINGS [MiB] [PASSES]\n", argv[0]);
		return 2;
	}
	size_t want = strtoul(argv[1], NULL, 10);
	size_t mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 1024;
	int passes = argc > 3 ? atoi(argv[3]) : 5;
	int unique = argc > 4 && strcmp(argv[4], "unique") == 0;
	if (passes < 1 || passes > 100 || !mib)
		return 2;

	/* the extra mappings: 2 per mprotect()ed page */
	size_t half = want / 2 + 1;
	char *bulk = mmap(NULL, 2 * half * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			  -1, 0);
	if (bulk == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	for (size_t i = 0; i + 1 < half; i++)
		if (mprotect(bulk + (2 * i + 1) * PG, PG, PROT_READ) < 0) {
			fprintf(stderr, "mprotect #%zu: %s (vm.max_map_count too low?)\n", i,
				strerror(errno));
			return 1;
		}

	size_t npages = mib << 8;
	char *buf = mmap(NULL, npages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			 -1, 0);
	if (buf == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	for (size_t i = 0; i < npages; i++)
		fill((uint64_t *)(buf + i * PG), unique || i % 8 ? 1000000 + i : i / 8 % 64);

	struct dedup_config cfg = { .size = sizeof(cfg), .scan_interval_ms = 3600000,
				    .cpu_percent = 100 };
	int r = dedup_init(&cfg);
	if (r < 0) {
		fprintf(stderr, "dedup_init: %s\n", strerror(-r));
		return r == -EPERM || r == -ENOSYS ? 77 : 1;
	}
	if ((r = dedup_register(buf, npages * PG)) < 0) {
		fprintf(stderr, "dedup_register: %s\n", strerror(-r));
		return 1;
	}
	long merged = 0;
	for (int idle = 0, n = 0; idle < 2 && n < 50; n++) {
		long m = dedup_scan_now();
		if (m < 0)
			return 1;
		merged += m;
		idle = m ? 0 : idle + 1;
	}
	long lines = maps_lines();
	double wall[100], cpu[100];
	for (int p = 0; p < passes; p++) {
		double w0 = clk(CLOCK_MONOTONIC), c0 = clk(CLOCK_THREAD_CPUTIME_ID);
		long m = dedup_scan_now();
		cpu[p] = clk(CLOCK_THREAD_CPUTIME_ID) - c0;
		wall[p] = clk(CLOCK_MONOTONIC) - w0;
		merged += m > 0 ? m : 0;
	}
	qsort(wall, (size_t)passes, sizeof(double), cmp);
	qsort(cpu, (size_t)passes, sizeof(double), cmp);
	printf("content,mappings,maps_lines,mib,merged,passes,pass_wall_median_s,pass_cpu_median_s\n");
	printf("%s,%zu,%ld,%zu,%ld,%d,%.4f,%.4f\n", unique ? "unique" : "scattered", want, lines, mib,
	       merged, passes,
	       wall[passes / 2], cpu[passes / 2]);
	if (!getenv("DEDUP_BENCH_PASS_NO_SHUTDOWN"))   /* (strace -c of merging only) */
		dedup_shutdown();
	return 0;
}
