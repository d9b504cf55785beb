/* SPDX-License-Identifier: MIT */
/*
 * pl.h - helpers for the preload tests (tests/preload/, label "preload").
 *
 * These programs are "unmodified applications": they do not link libdedup.
 * They run under LD_PRELOAD=libdedup.so (tests/preload.cmake) and reach the
 * library only through dlsym(RTLD_DEFAULT, "dedup_stats"), to wait for merges
 * precisely instead of sleeping. Exit 0 pass, 1 fail, 77 skip (tcommon.h).
 */
#ifndef DEDUP_PL_H
#define DEDUP_PL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <dlfcn.h>
#include <pthread.h>
#include <sys/wait.h>

#include "tcommon.h"
#include "libdedup.h"

typedef int (*pl_stats_fn)(struct dedup_stats *);

/* The preloaded library's dedup_stats, or fail: the test must run preloaded. */
static inline pl_stats_fn pl_stats_fn_get(void)
{
	pl_stats_fn f = (pl_stats_fn)dlsym(RTLD_DEFAULT, "dedup_stats");
	if (!f) {
		fprintf(stderr, "FAIL: libdedup is not preloaded (no dedup_stats)\n");
		exit(T_FAIL);
	}
	return f;
}

static inline struct dedup_stats pl_stats(void)
{
	struct dedup_stats st = { .size = sizeof(st) };
	CHECK(pl_stats_fn_get()(&st) == 0);
	return st;
}

/* Skip when this machine cannot give libdedup a userfaultfd. */
static inline void pl_need_uffd(void)
{
	int fd = t_uffd_open(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_MOVE, NULL);
	if (fd < 0)
		t_skip("no userfaultfd for kernel faults here (%s)", strerror(errno));
	close(fd);
	if (getenv("DEDUP_FORCE_USER_ONLY"))
		t_skip("DEDUP_FORCE_USER_ONLY is set");
}

static inline void pl_print(const char *tag, const struct dedup_stats *s)
{
	fprintf(stderr,
		"%s: regions %llu (%llu MiB) passes %llu sharing %llu shared %llu zero %llu "
		"merges %llu cow %llu raced %llu budget %llu volatile %llu cand %llu pinned %llu "
		"saved %llu KiB\n",
		tag, (unsigned long long)s->regions, (unsigned long long)(s->bytes_registered >> 20),
		(unsigned long long)s->full_passes, (unsigned long long)s->pages_sharing,
		(unsigned long long)s->pages_shared, (unsigned long long)s->zero_pages,
		(unsigned long long)s->merges, (unsigned long long)s->cow_breaks,
		(unsigned long long)s->skipped_raced, (unsigned long long)s->skipped_budget,
		(unsigned long long)s->skipped_volatile, (unsigned long long)s->candidates,
		(unsigned long long)s->skipped_pinned, (unsigned long long)(s->bytes_saved >> 10));
}

/* Wait until at least @pages merges happened (all time: a counter that
 * never goes down), or fail after t_cap() seconds (3 minutes: merging
 * that has not happened by then is not coming). */
static inline struct dedup_stats pl_wait_merged(uint64_t pages)
{
	double t0 = t_now(), timeout = t_cap();
	struct dedup_stats s;

	for (;;) {
		s = pl_stats();
		if (s.merges >= pages)
			return s;
		if (t_now() - t0 > timeout) {
			pl_print("timeout", &s);
			fprintf(stderr, "FAIL: %llu pages merged after %.1f s, expected %llu\n",
				(unsigned long long)s.merges, timeout,
				(unsigned long long)pages);
			exit(T_FAIL);
		}
		usleep(20000);
	}
}

/* Wait until bytes_registered reaches at least @bytes, or fail after
 * t_cap() seconds. */
static inline void pl_wait_registered(uint64_t bytes)
{
	double t0 = t_now(), timeout = t_cap();
	while (pl_stats().bytes_registered < bytes) {
		if (t_now() - t0 > timeout) {
			struct dedup_stats s = pl_stats();
			pl_print("timeout", &s);
			fprintf(stderr, "FAIL: only %llu bytes registered after %.1f s\n",
				(unsigned long long)s.bytes_registered, timeout);
			exit(T_FAIL);
		}
		usleep(20000);
	}
}

/* Page i of a pattern: distinct pages within one copy, equal across copies,
 * so that copies merge in runs of contiguous canonical pages (few VMAs). */
static inline void pl_fill(char *p, size_t npages, uint64_t seed)
{
	for (size_t i = 0; i < npages; i++)
		t_fill(p + i * T_PAGE, seed * 1000003 + i);
}

static inline bool pl_check(const char *p, size_t npages, uint64_t seed)
{
	char want[T_PAGE] __attribute__((aligned(64)));
	for (size_t i = 0; i < npages; i++) {
		t_fill(want, seed * 1000003 + i);
		if (memcmp(p + i * T_PAGE, want, T_PAGE)) {
			fprintf(stderr, "page %zu of %p differs\n", i, (const void *)p);
			return false;
		}
	}
	return true;
}

static inline bool pl_is_zero(const char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i])
			return false;
	return true;
}

/* Does [p, p + len) hold a merged piece (a mapping of libdedup's memfd), or
 * a VMA registered with a userfaultfd (VmFlags uw/um/ui)? From smaps. */
static inline void pl_look(const void *p, size_t len, bool *merged, bool *registered)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	bool in = false;
	*merged = *registered = false;
	CHECK(f != NULL);
	while (fgets(line, sizeof(line), f)) {
		uintptr_t a, b;
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = a < (uintptr_t)p + len && b > (uintptr_t)p;
			if (in && strstr(line, "memfd:libdedup"))
				*merged = true;
		} else if (in && !strncmp(line, "VmFlags:", 8) &&
			   (strstr(line, " uw") || strstr(line, " um") || strstr(line, " ui"))) {
			*registered = true;
		}
	}
	fclose(f);
}

/* Page i of the np pages at p holds pl_fill()'s page for seed + i, or zeros
 * for i in [zlo, zhi); says which page is wrong (c: a label, a chunk). */
static inline bool pl_pages_ok(const char *p, size_t np, uint64_t seed, size_t zlo, size_t zhi,
			       int c)
{
	for (size_t i = 0; i < np; i++) {
		const char *q = p + i * T_PAGE;
		bool zero = i >= zlo && i < zhi;
		if (zero ? !pl_is_zero(q, T_PAGE) : !pl_check(q, 1, seed + i)) {
			fprintf(stderr, "%d: chunk %d page %zu: expected %s\n", (int)getpid(), c, i,
				zero ? "zeros" : "the pattern");
			return false;
		}
	}
	return true;
}

/* Merged pieces (private mappings of libdedup's memfd) overlapping
 * [lo, hi), from maps; *first: the start of the first that starts inside,
 * or 0. */
static inline size_t pl_pieces(uintptr_t lo, uintptr_t hi, uintptr_t *first)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	size_t n = 0;

	CHECK(f != NULL);
	*first = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		char perms[8];
		if (sscanf(line, "%lx-%lx %7s", &a, &b, perms) != 3 || perms[3] != 'p' ||
		    a >= hi || b <= lo || !strstr(line, "memfd:libdedup"))
			continue;
		n++;
		if (!*first && a >= lo)
			*first = a;
	}
	fclose(f);
	return n;
}

/* Sum of smaps "Locked:" (kB) over the VMAs overlapping [p, p + len). */
static inline long pl_locked_kb(const char *p, size_t len)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	bool in = false;
	long kb = 0;
	CHECK(f != NULL);
	while (fgets(line, sizeof(line), f)) {
		uintptr_t lo, hi;
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' '))
			in = lo < (uintptr_t)p + len && hi > (uintptr_t)p;
		else if (in && !strncmp(line, "Locked:", 7))
			kb += strtol(line + 7, NULL, 10);
	}
	fclose(f);
	return kb;
}

static inline bool pl_has_merged(const void *p, size_t len)
{
	bool m, r;
	pl_look(p, len, &m, &r);
	return m;
}

#endif
