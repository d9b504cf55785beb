/* SPDX-License-Identifier: MIT */
/*
 * idle - what libdedup costs a program that has nothing to merge (issue 14).
 *
 *   idle [MiB] [settle_s] [AB_MiB] [tlb_rounds]
 *
 * Maps MiB (1024) of anonymous memory, every page distinct, waits settle_s
 * (8) seconds for the engine to scan it and back off, then times two loops
 * and prints them as key=value:
 *   chase_ns  5 M dependent loads along a random cycle through the memory
 *             (one cache line per page visited: memory latency);
 *   tlb_ns    one load per page, pages in random order, tlb_rounds (8)
 *             rounds (a TLB miss per load: TLB reach, and what a TLB flush
 *             costs). The loads are independent and overlap: 8 rounds over
 *             1 GiB take well under 0.1 s, within a scheduler tick or two
 *             of noise; 128 rounds take about a second.
 * and the same loops in CPU time of the thread (chase_cpu_ns, tlb_cpu_ns):
 * on a machine that others keep busy, wall time mostly measures how long
 * the scheduler kept the thread waiting; CPU time keeps what slows the
 * loads themselves (caches, TLB, flushes and interrupts), but not the CPU
 * the engine takes away.
 * bench/idle.sh runs it plain and under LD_PRELOAD in alternating pairs.
 *
 * With AB_MiB, one process measures both: the loops once before libdedup
 * starts (run it with DEDUP_START between MiB and MiB + AB_MiB), then it
 * maps and fills AB_MiB more, which starts the engine, waits settle_s, and
 * runs the loops again on the same pages (a_* and b_* fields, wall and
 * CPU time as above). Two
 * processes place their pages differently, which on this project's
 * shadow-paging guests moves these loops by 15% from run to run; one
 * process keeps its pages. bench/idle_ab.sh runs it.
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

struct loops { uint64_t chase, tlb, chase_cpu, tlb_cpu, check; };

static struct loops run_loops(char *m, const uint32_t *order, size_t npages, int rounds)
{
	struct loops l;
	uint64_t t0 = now_ns(), c0 = cpu_ns(), off = (uint64_t)order[0] * 4096 + 8;

	for (long k = 0; k < 5000000; k++)
		off = *(volatile uint64_t *)(m + off);
	l.chase = now_ns() - t0;
	l.chase_cpu = cpu_ns() - c0;

	uint64_t sum = 0;
	t0 = now_ns();
	c0 = cpu_ns();
	for (int r = 0; r < rounds; r++)
		for (size_t i = 0; i < npages; i++)
			sum += *(volatile char *)(m + (size_t)order[i] * 4096 + 100);
	l.tlb = now_ns() - t0;
	l.tlb_cpu = cpu_ns() - c0;
	l.check = sum + off;
	return l;
}

/* threads of this process (/proc/self/status), or -1 */
static long threads(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long n = -1;

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "Threads: %ld", &n) == 1)
			break;
	if (f)
		fclose(f);
	return n;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
	unsigned settle = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : 8;
	size_t ab = argc > 3 ? strtoul(argv[3], NULL, 10) : 0;
	int rounds = argc > 4 ? atoi(argv[4]) : 8;
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
	if (ab) {
		/* A: the same pages, before libdedup starts (DEDUP_START above
		 * MiB); then cross the threshold, let it settle, and B */
		struct loops a = run_loops(m, order, npages, rounds);
		size_t xlen = ab << 20;
		char *x = mmap(NULL, xlen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (x == MAP_FAILED) {
			perror("idle: mmap");
			return 1;
		}
		for (size_t i = 0; i < xlen / 8; i += 8)
			((uint64_t *)x)[i] = rnd(&seed);
		long t_a = threads();
		for (int i = 0; i < 20 && threads() == t_a; i++) {   /* a look at the next free() */
			free(malloc(1 << 20));
			usleep(30000);
		}
		sleep(settle);
		struct loops b = run_loops(m, order, npages, rounds);
		printf("a_chase_ns=%llu a_tlb_ns=%llu b_chase_ns=%llu b_tlb_ns=%llu "
		       "a_chase_cpu_ns=%llu a_tlb_cpu_ns=%llu b_chase_cpu_ns=%llu b_tlb_cpu_ns=%llu "
		       "threads_a=%ld threads_b=%ld check=%llu\n", (unsigned long long)a.chase,
		       (unsigned long long)a.tlb, (unsigned long long)b.chase,
		       (unsigned long long)b.tlb, (unsigned long long)a.chase_cpu,
		       (unsigned long long)a.tlb_cpu, (unsigned long long)b.chase_cpu,
		       (unsigned long long)b.tlb_cpu, t_a, threads(),
		       (unsigned long long)((a.check + b.check) & 1));
		return 0;
	}
	sleep(settle);
	struct loops l = run_loops(m, order, npages, rounds);
	printf("chase_ns=%llu tlb_ns=%llu chase_cpu_ns=%llu tlb_cpu_ns=%llu check=%llu\n",
	       (unsigned long long)l.chase, (unsigned long long)l.tlb,
	       (unsigned long long)l.chase_cpu, (unsigned long long)l.tlb_cpu,
	       (unsigned long long)(l.check & 1));
	return 0;
}
