/* SPDX-License-Identifier: MIT */
/*
 * idle - what libdedup costs a program that has nothing to merge (issue 14).
 *
 *   idle [MiB] [settle_s]
 *
 * Maps MiB (1024) of anonymous memory, every page distinct, waits settle_s
 * (8) seconds for the engine to scan it and back off, then times two loops
 * and prints them as key=value:
 *   chase_ns  5 M dependent loads along a random cycle through the memory
 *             (one cache line per page visited: memory latency);
 *   tlb_ns    one load per page, pages in random order, 8 rounds (a TLB
 *             miss per load: TLB reach, and what a TLB flush costs).
 * and the same loops in CPU time of the thread (chase_cpu_ns, tlb_cpu_ns):
 * on a machine that others keep busy, wall time mostly measures how long
 * the scheduler kept the thread waiting; CPU time keeps what slows the
 * loads themselves (caches, TLB, flushes and interrupts), but not the CPU
 * the engine takes away.
 * bench/idle.sh runs it plain and under LD_PRELOAD in alternating pairs.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
	unsigned settle = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : 8;
	size_t len = mib << 20, npages = len / 4096;
	uint64_t seed = 0x9E3779B97F4A7C15ULL;

	char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint32_t *order = malloc(npages * sizeof(*order));
	if (m == MAP_FAILED || !order) {
		perror("idle: mmap");
		return 1;
	}
	/* distinct pages: a random word every 64 bytes */
	for (size_t i = 0; i < len / 8; i += 8)
		((uint64_t *)m)[i] = rnd(&seed);
	/* a random cycle through the pages (Sattolo), the link in each page's
	 * first line, at a per-page random line so the loads are not aligned */
	for (size_t i = 0; i < npages; i++)
		order[i] = (uint32_t)i;
	for (size_t i = npages - 1; i > 0; i--) {
		size_t j = rnd(&seed) % i;
		uint32_t t = order[i];
		order[i] = order[j];
		order[j] = t;
	}
	for (size_t i = 0; i < npages; i++) {
		size_t from = order[i], to = order[(i + 1) % npages];
		*(uint64_t *)(m + from * 4096 + 8) = (uint64_t)(to * 4096 + 8);
	}
	sleep(settle);

	uint64_t t0 = now_ns(), c0 = cpu_ns(), off = (uint64_t)order[0] * 4096 + 8;
	for (long k = 0; k < 5000000; k++)
		off = *(volatile uint64_t *)(m + off);
	uint64_t chase = now_ns() - t0, chase_cpu = cpu_ns() - c0;

	uint64_t sum = 0;
	t0 = now_ns();
	c0 = cpu_ns();
	for (int r = 0; r < 8; r++)
		for (size_t i = 0; i < npages; i++)
			sum += *(volatile char *)(m + (size_t)order[i] * 4096 + 100);
	uint64_t tlb = now_ns() - t0, tlb_cpu = cpu_ns() - c0;
	printf("chase_ns=%llu tlb_ns=%llu chase_cpu_ns=%llu tlb_cpu_ns=%llu check=%llu\n",
	       (unsigned long long)chase, (unsigned long long)tlb, (unsigned long long)chase_cpu,
	       (unsigned long long)tlb_cpu, (unsigned long long)((sum + off) & 1));
	return 0;
}
