/* SPDX-License-Identifier: MIT */
/*
 * pass_cost - CPU time of one full pass over a heap with nothing to merge,
 * driven by dedup_scan_now() (the pass runs in the calling thread: its
 * CLOCK_THREAD_CPUTIME_ID is the pass's CPU, whatever else the machine
 * does, short of cache and hypervisor effects). MiB (1024) of distinct
 * pages, registered through the API (read in place) or, with "fragile",
 * read through process_vm_readv as the preload library's regions are;
 * PASSES (96) passes; prints CPU ms per pass in windows of 8, the most in
 * one pass of each window, and the pages hashed per window.
 *
 *   gcc -O2 -DFRAGILE -o pass_cost pass_cost.c -I SRC/libdedup/include \
 *       -I SRC/libdedup/src BUILD/libdedup.a -luring -lpthread
 *   ./pass_cost [MiB] [PASSES] [api|fragile]
 * (SRC the source tree, BUILD its build directory; fragile sets the
 *  internal eng.fragile_regions, as the preload library does.)
 */
#define _GNU_SOURCE
#include <libdedup.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#ifdef FRAGILE
#include "internal.h"
#endif

static uint64_t cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024, len = mib << 20;
	int passes = argc > 2 ? atoi(argv[2]) : 96;
	uint64_t seed = 0x9E3779B97F4A7C15ULL;
	struct dedup_config cfg = { .size = sizeof(cfg), .scan_interval_ms = 3600000, .cpu_percent = 100 };

	if (dedup_init(&cfg) < 0)
		return 77;
#ifdef FRAGILE
	if (argc > 3 && !strcmp(argv[3], "fragile")) {
		pthread_mutex_lock(&eng.lock);
		eng.fragile_regions = true;
		pthread_mutex_unlock(&eng.lock);
	}
#endif
	char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	madvise(m, len, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < len / 8; i += 8) {
		seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
		((uint64_t *)m)[i] = seed;
	}
	if (dedup_register(m, len) < 0)
		return 1;
	double win = 0, most = 0;
	struct dedup_stats a = { .size = sizeof(a) }, b = { .size = sizeof(b) };
	dedup_stats(&a);
	for (int p = 1; p <= passes; p++) {
		uint64_t c0 = cpu_ns();
		dedup_scan_now();
		double ms = (cpu_ns() - c0) / 1e6;
		win += ms;
		if (ms > most)
			most = ms;
		if (p % 8 == 0) {
			dedup_stats(&b);
			printf("passes %3d-%3d: %7.2f ms CPU a pass, at most %7.2f; %8llu pages hashed\n",
			       p - 7, p, win / 8, most,
			       (unsigned long long)(b.pages_scanned - a.pages_scanned));
			a = b;
			win = most = 0;
		}
	}
	dedup_shutdown();
	return 0;
}
