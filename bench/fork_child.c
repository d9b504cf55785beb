/* SPDX-License-Identifier: MIT */
/*
 * dedup-bench-fork - what a fork()ed child of a merging process pays for the
 * guard of its merged pages (libdedup/src/child.c).
 *
 *   dedup-bench-fork [MIB] [ROUNDS]
 *
 * Fills MIB (default 512) of anonymous memory with 256 distinct page
 * contents, waits until libdedup (when preloaded) has merged 90% of it, then
 * forks ROUNDS (default 3) children. Each child measures: the time from the
 * parent's fork() call to the child's first instruction after it, reading
 * one byte of every page, and MADV_DONTNEED of the first half followed by
 * reading it back (it must be zeros: exit 3 otherwise). One CSV line per
 * round on stdout: mode,mib,fork_ms,read_ms,dontneed_read_ms,status.
 * Run it plain and under LD_PRELOAD=build/libdedup.so (bench/fork_child.sh
 * runs both, and the guard switched off for comparison).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "libdedup.h"

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 512;
	int rounds = argc > 2 ? atoi(argv[2]) : 3;
	const char *mode = getenv("FORK_BENCH_MODE") ? getenv("FORK_BENCH_MODE") : "?";
	size_t len = mib << 20, np = len / 4096;
	char *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (a == MAP_FAILED || !mib || rounds < 1) {
		fprintf(stderr, "usage: dedup-bench-fork [MIB] [ROUNDS]\n");
		return 2;
	}
	for (size_t i = 0; i < np; i++) {
		memset(a + i * 4096, (int)(i % 255) + 1, 4096);
		a[i * 4096] = (char)(i % 256);
	}
	int (*stats)(struct dedup_stats *) = (int (*)(struct dedup_stats *))dlsym(RTLD_DEFAULT, "dedup_stats");
	if (stats) {
		struct dedup_stats s = { .size = sizeof(s) };
		double t0 = now();
		do {
			usleep(50000);
			stats(&s);
		} while (s.pages_sharing < np * 9 / 10 && now() - t0 < 120);
		fprintf(stderr, "%s: %llu pages sharing after %.2f s\n", mode,
			(unsigned long long)s.pages_sharing, now() - t0);
	}
	for (int k = 0; k < rounds; k++) {
		int p[2];
		double r[3] = { -1, -1, -1 };
		if (pipe(p) < 0)
			return 2;
		double f0 = now();
		pid_t pid = fork();
		if (pid == 0) {
			double f1 = now();
			volatile unsigned long sum = 0;
			for (size_t i = 0; i < np; i++)
				sum += (unsigned char)a[i * 4096 + 8];
			double f2 = now();
			int bad = madvise(a, len / 2, MADV_DONTNEED) != 0;
			for (size_t i = 0; i < np / 2 && !bad; i++)
				bad = a[i * 4096 + 8] != 0;
			double f3 = now();
			r[0] = f1 - f0, r[1] = f2 - f1, r[2] = f3 - f2;
			(void)!write(p[1], r, sizeof(r));
			_exit(bad ? 3 : 0);
		}
		close(p[1]);
		int st = 0;
		ssize_t got = read(p[0], r, sizeof(r));
		close(p[0]);
		waitpid(pid, &st, 0);
		printf("%s,%zu,%.1f,%.1f,%.1f,%d\n", mode, mib, got == sizeof(r) ? r[0] * 1e3 : -1,
		       r[1] * 1e3, r[2] * 1e3, WIFEXITED(st) ? WEXITSTATUS(st) : 128);
		fflush(stdout);
	}
	return 0;
}
