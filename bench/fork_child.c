/* SPDX-License-Identifier: MIT */
/*
 * dedup-bench-fork - what a fork()ed child of a merging process pays for the
 * guard of its merged pages (libdedup/src/child.c).
 *
 *   dedup-bench-fork [MIB] [ROUNDS] [CONTENT]
 *
 * Fills MIB (default 512) of anonymous memory, waits until libdedup (when
 * preloaded) has merged what it should, then forks ROUNDS (default 3)
 * children. CONTENT:
 *   runs      (default) page i filled with i % 255 + 1, its first byte
 *             i % 256: the contents repeat every 65,280 pages (255 MiB), so
 *             MIB below 255 has nothing to merge, and above it the copies
 *             line up in long merged runs, few mappings. Waits for 90% of
 *             the pages to be sharing.
 *   isolated  every odd page is one of 4 contents, every even page unique:
 *             each merged page is a mapping of its own between two anonymous
 *             ones, about MIB * 256 mappings (2048 MiB: ~524k). Needs
 *             vm.max_map_count and DEDUP_VMA_BUDGET above that (see
 *             bench/fork_child.sh). Waits for 99.9% of the odd pages.
 * The wait ends after FORK_BENCH_WAIT_S seconds (default 120 for runs, 3600
 * for isolated), and for isolated also when pages_sharing has not grown for
 * 60 s; stderr says how long merging took and how many mappings the parent
 * has before each fork (the child inherits them), and how long reading
 * /proc/self/maps took (a lower bound for the child guard's first step).
 * Each child measures: the time from the parent's fork() call to the
 * child's first instruction after it (the guard's setup included), reading
 * one byte of every page, and MADV_DONTNEED of the first half followed by
 * reading it back (it must be zeros: exit 3 otherwise). One CSV line per
 * round on stdout: mode,mib,fork_ms,read_ms,dontneed_read_ms,status.
 * Run it plain and under LD_PRELOAD=build/libdedup.so (bench/fork_child.sh
 * runs both, and the guard switched off for comparison).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
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

/* Lines of /proc/self/maps: the mappings of this process. */
static long count_maps(void)
{
	static char buf[1 << 16];
	long n = 0;
	ssize_t got;
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	while ((got = read(fd, buf, sizeof(buf))) > 0)
		for (ssize_t i = 0; i < got; i++)
			n += buf[i] == '\n';
	close(fd);
	return got < 0 ? -1 : n;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 512;
	int rounds = argc > 2 ? atoi(argv[2]) : 3;
	const char *mode = getenv("FORK_BENCH_MODE") ? getenv("FORK_BENCH_MODE") : "?";
	size_t len = mib << 20, np = len / 4096;
	const char *content = argc > 3 ? argv[3] : "runs";
	int isolated = !strcmp(content, "isolated");
	char *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (a == MAP_FAILED || !mib || rounds < 1 || (!isolated && strcmp(content, "runs"))) {
		fprintf(stderr, "usage: dedup-bench-fork [MIB] [ROUNDS] [runs|isolated]\n");
		return 2;
	}
	size_t want = np * 9 / 10;
	if (isolated) {
		/* odd pages: one of 4 full-page fills; even pages: 0x5a with the
		 * page's index at both ends, so no two are alike and none is zero */
		for (size_t i = 0; i < np; i++) {
			char *pg = a + i * 4096;
			if (i & 1) {
				memset(pg, 0xa1 + (int)((i >> 1) & 3), 4096);
			} else {
				uint64_t tag = i + 1;
				memset(pg, 0x5a, 4096);
				memcpy(pg, &tag, sizeof(tag));
				memcpy(pg + 4096 - sizeof(tag), &tag, sizeof(tag));
			}
		}
		want = np / 2 * 999 / 1000;
	} else {
		for (size_t i = 0; i < np; i++) {
			memset(a + i * 4096, (int)(i % 255) + 1, 4096);
			a[i * 4096] = (char)(i % 256);
		}
	}
	int (*stats)(struct dedup_stats *) = (int (*)(struct dedup_stats *))dlsym(RTLD_DEFAULT, "dedup_stats");
	if (stats) {
		struct dedup_stats s = { .size = sizeof(s) };
		const char *w = getenv("FORK_BENCH_WAIT_S");
		double cap = w ? atof(w) : isolated ? 3600 : 120;
		double t0 = now(), grew = t0, said = t0;
		uint64_t last = 0;
		do {
			usleep(50000);
			stats(&s);
			if (s.pages_sharing > last)
				last = s.pages_sharing, grew = now();
			if (isolated && now() - said >= 10) {
				said = now();
				fprintf(stderr, "%s: %llu of %zu pages sharing after %.0f s\n", mode,
					(unsigned long long)s.pages_sharing, want, said - t0);
			}
		} while (s.pages_sharing < want && now() - t0 < cap && (!isolated || now() - grew < 60));
		fprintf(stderr, "%s: %llu pages sharing (waited for %zu), %llu mappings added, after %.2f s%s\n",
			mode, (unsigned long long)s.pages_sharing, want, (unsigned long long)s.vmas_added,
			now() - t0, s.pages_sharing >= want ? "" : now() - grew >= 60 ? " (stalled 60 s)" : " (cap)");
	}
	for (int k = 0; k < rounds; k++) {
		int p[2];
		double r[3] = { -1, -1, -1 };
		if (pipe(p) < 0)
			return 2;
		double m0 = now();
		long maps = count_maps();
		fprintf(stderr, "%s: round %d: %ld mappings before fork() (/proc/self/maps read in %.0f ms)\n",
			mode, k + 1, maps, (now() - m0) * 1e3);
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
