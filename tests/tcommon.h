/* SPDX-License-Identifier: MIT */
/*
 * tcommon.h - helpers shared by the test programs (header-only).
 *
 * Convention (as liburing's test/): a test exits T_PASS (0), T_FAIL (1) or
 * T_SKIP (77). CHECK() prints file:line and the failed expression, then
 * exits T_FAIL. Tests never rely on libdedup internals unless they say so.
 */
#ifndef DEDUP_TCOMMON_H
#define DEDUP_TCOMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "uapi.h"

#define T_PASS 0
#define T_FAIL 1
#define T_SKIP 77

#define T_PAGE 4096UL

#define CHECK(cond)                                                           \
	do {                                                                  \
		if (!(cond)) {                                                \
			fprintf(stderr, "%s:%d: CHECK failed: %s (errno %d %s)\n", \
				__FILE__, __LINE__, #cond, errno,             \
				strerror(errno));                             \
			exit(T_FAIL);                                         \
		}                                                             \
	} while (0)

static inline void t_skip(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "SKIP: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(T_SKIP);
}

static inline double t_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/*
 * How long a test waits for work it needs before it calls that a failure.
 * A test that needs something to have happened (so many merges, a published
 * snapshot, a fault message) waits until it has happened, not for a fixed
 * time: what a second gives depends on how busy the machine is. The cap
 * only ends a wait for work that never comes: T_CAP_S (3 minutes), or
 * DEDUP_TEST_CAP_S seconds when set (e.g. 5, to see a failure quickly).
 * Tests that wait this long have a CTest TIMEOUT of 600 s, so a missed cap
 * fails with the test's own message, not a kill.
 */
#define T_CAP_S 180.0

static inline double t_cap(void)
{
	const char *e = getenv("DEDUP_TEST_CAP_S");
	double v = e ? atof(e) : 0;
	return v > 0 ? v : T_CAP_S;
}

static inline int t_cap_ms(void) { return (int)(t_cap() * 1000); }

/* Anonymous private read-write memory, page aligned. */
static inline void *t_map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(p != MAP_FAILED);
	return p;
}

/*
 * A userfaultfd that handles kernel-mode faults too (through
 * /dev/userfaultfd), non-blocking and close-on-exec, with the API
 * handshake done for @features. Returns -1 (errno set) on failure.
 */
static inline int t_uffd_open(uint64_t features, uint64_t *got)
{
	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	int fd;
	if (dev >= 0) {
		fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
		close(dev);
	} else {
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	}
	if (fd < 0)
		return -1;
	struct uffdio_api api = { .api = UFFD_API, .features = features };
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	if (got)
		*got = api.features;
	return fd;
}

static inline int t_uffd_register(int uffd, void *addr, size_t len, uint64_t mode)
{
	struct uffdio_register r = {
		.range = { .start = (uintptr_t)addr, .len = len }, .mode = mode
	};
	return ioctl(uffd, UFFDIO_REGISTER, &r);
}

static inline int t_uffd_wp(int uffd, void *addr, size_t len, int protect)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = (uintptr_t)addr, .len = len },
		.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};
	return ioctl(uffd, UFFDIO_WRITEPROTECT, &wp);
}

static inline int t_uffd_wake(int uffd, void *addr, size_t len)
{
	struct uffdio_range r = { .start = (uintptr_t)addr, .len = len };
	return ioctl(uffd, UFFDIO_WAKE, &r);
}

/* A value (in kB) from /proc/self/smaps_rollup, e.g. "Pss:" or "Rss:". */
static inline long t_rollup_kb(const char *key)
{
	FILE *f = fopen("/proc/self/smaps_rollup", "r");
	char line[256];
	long v = -1;
	size_t kl = strlen(key);
	CHECK(f != NULL);
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, key, kl) == 0) {
			v = strtol(line + kl, NULL, 10);
			break;
		}
	}
	fclose(f);
	return v;
}

/* Number of lines (VMAs) in /proc/self/maps. */
static inline long t_map_count(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	long n = 0;
	int c;
	CHECK(f != NULL);
	while ((c = getc(f)) != EOF)
		n += c == '\n';
	fclose(f);
	return n;
}

/* Fill a page with a pattern derived from @seed (never all zero). */
/* A kernel-mode write of len bytes of v into dst: read() from a pipe
 * (pfd from pipe()). Exits T_FAIL if the read falls short. */
static inline void t_kernel_write(const int pfd[2], void *dst, const void *v, size_t len)
{
	CHECK(write(pfd[1], v, len) == (ssize_t)len);
	ssize_t r = read(pfd[0], dst, len);
	if (r != (ssize_t)len) {
		fprintf(stderr, "read() into the range: %zd (%s)\n", r, strerror(errno));
		_exit(T_FAIL);
	}
}

static inline void t_fill(void *page, uint64_t seed)
{
	uint64_t *w = page;
	uint64_t x = seed * 0x9E3779B97F4A7C15ULL + 1;
	for (size_t i = 0; i < T_PAGE / 8; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		w[i] = x | 1;
	}
}

#endif /* DEDUP_TCOMMON_H */
