/* SPDX-License-Identifier: MIT */
/*
 * publish.h - the layout of a live stats file, shared by libdedup
 * (publish.c, the writer) and tools/dedup-stat.c (the reader).
 * docs/stats.md describes the design and the meaning of every figure.
 *
 * Each process running the engine owns one file <dir>/<pid>.stats (mode
 * 0600, one page, mapped MAP_SHARED by the process). <dir> is the first
 * usable of: $DEDUP_STAT_DIR, /run/libdedup, $XDG_RUNTIME_DIR/libdedup,
 * /tmp/libdedup-<uid>. The file is created under a temporary name, filled,
 * then renamed into place, so a reader never sees a half-made header; it is
 * unlinked at dedup_shutdown(). While it publishes, the process keeps the
 * file open with a shared flock(). A file whose process is gone (pid not
 * alive, different start time, or file no longer mapped by it, e.g. after
 * exec) is stale: readers ignore it, and delete it when they may and can
 * lock it exclusively (nobody holds the publisher's lock).
 *
 * Layout, version 1 (all integers native endian; a reader on the same host):
 *   0   header, constant once the file has its final name (struct dd_pub)
 *   128 seq, the seqlock counter, alone in its cache line
 *   192 live part (struct dd_pub_live): config, timestamps, struct
 *       dedup_stats last. Only 64-bit words, read and written one word at
 *       a time with relaxed atomics under the seqlock.
 *
 * Seqlock protocol (Boehm, "Can seqlocks get along with programming
 * language memory models?", 2012):
 *   writer: s = seq; seq = s + 1 (relaxed); release fence; store the words
 *           (relaxed); seq = s + 2 (release).
 *   reader: s1 = seq (acquire); if odd, retry; load the words (relaxed);
 *           acquire fence; s2 = seq (relaxed); retry unless s1 == s2.
 * There is one writer per file (the engine, under eng.lock), so seq needs no
 * read-modify-write. A reader never blocks the writer.
 *
 * Compatibility: the magic names the format; a reader refuses another
 * version. Within version 1, struct dedup_stats may grow at the end of the
 * page; live.stats.size says how many of its bytes the writer filled.
 *
 * The helpers at the end use open/read/close only (no stdio streams, no
 * malloc), so the library may call them from any thread.
 */
#ifndef DEDUP_PUBLISH_H
#define DEDUP_PUBLISH_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "libdedup.h"

#define DD_PUB_MAGIC "DEDUPST1"         /* 8 bytes, no terminating NUL */
#define DD_PUB_VERSION 1u
#define DD_PUB_FILE_SIZE 4096u          /* the file is one page */
#define DD_PUB_SUFFIX ".stats"          /* <pid>.stats */
#define DD_PUB_ENV_DIR "DEDUP_STAT_DIR"
#define DD_PUB_RUN_DIR "/run/libdedup"
#define DD_PUB_INTERVAL_NS 100000000ULL /* at most one update per 100 ms */

/* Everything under the seqlock: 64-bit words only (see the top). */
struct dd_pub_live {
	uint64_t updated_realtime_ns;  /* CLOCK_REALTIME of this snapshot */
	uint64_t updated_mono_ns;      /* CLOCK_MONOTONIC of this snapshot */
	uint64_t updates;              /* snapshots written so far */
	uint64_t cpu_percent;          /* DEDUP_CPU in force */
	uint64_t scan_interval_ms;     /* DEDUP_INTERVAL in force */
	uint64_t pages_per_sec;        /* DEDUP_PAGES_PER_SEC (0: no cap) */
	uint64_t batch_pages;          /* DEDUP_BATCH */
	uint64_t zero_pages_enabled;   /* DEDUP_ZERO_PAGES (1/0) */
	uint64_t vma_budget;           /* the budget in force (as stats.vma_budget) */
	uint64_t reserved[7];          /* zero; room for version-1 additions */
	struct dedup_stats stats;      /* dd_stats_snapshot(); grows at the end */
};

struct dd_pub {
	/* header: written before the file gets its final name, then constant */
	char magic[8];                 /* DD_PUB_MAGIC */
	uint32_t version;              /* DD_PUB_VERSION */
	uint32_t size;                 /* sizeof(struct dd_pub) of the writer */
	int32_t pid;                   /* getpid() of the publisher */
	uint32_t page_size;            /* the library's page size (bytes) */
	uint64_t start_time;           /* field 22 of /proc/<pid>/stat (clock
	                                  ticks after boot): detects pid reuse */
	char comm[16];                 /* field 2 of /proc/<pid>/stat, NUL padded */
	uint64_t lib_version;          /* dedup_version() of the publisher */
	uint64_t started_realtime_ns;  /* engine start, CLOCK_REALTIME */
	uint64_t started_mono_ns;      /* engine start, CLOCK_MONOTONIC */
	uint64_t header_reserved[7];
	/* 128: the seqlock counter; even = stable, odd = being written */
	_Atomic uint64_t seq;
	uint64_t seq_pad[7];
	/* 192 */
	struct dd_pub_live live;
};

_Static_assert(offsetof(struct dd_pub, seq) == 128, "publish layout: seq");
_Static_assert(offsetof(struct dd_pub, live) == 192, "publish layout: live");
_Static_assert(sizeof(struct dd_pub_live) % sizeof(uint64_t) == 0, "live: whole words");
_Static_assert(sizeof(struct dd_pub) <= DD_PUB_FILE_SIZE, "publish layout: one page");

/* Words of the live part a reader copies: the writer's size, if smaller. */
static inline size_t dd_pub_live_words(const struct dd_pub *p)
{
	size_t n = sizeof(struct dd_pub_live);
	if (p->size >= offsetof(struct dd_pub, live) && p->size - offsetof(struct dd_pub, live) < n)
		n = p->size - offsetof(struct dd_pub, live);
	return n / sizeof(uint64_t);
}

/*
 * Copy a consistent snapshot of p->live into *out (zero where the writer
 * had less). Returns 0, or -EAGAIN if the writer stayed in the middle of an
 * update for the whole time (a process that died while writing).
 */
static inline int dd_pub_read(const struct dd_pub *p, struct dd_pub_live *out)
{
	const uint64_t *src = (const uint64_t *)&p->live;
	uint64_t *dst = (uint64_t *)out;
	size_t words = dd_pub_live_words(p);

	memset(out, 0, sizeof(*out));
	for (int tries = 0; tries < 100000; tries++) {
		uint64_t s1 = atomic_load_explicit((_Atomic uint64_t *)&p->seq, memory_order_acquire);
		if (s1 & 1) {
			sched_yield();
			continue;
		}
		for (size_t i = 0; i < words; i++)
			dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
		atomic_thread_fence(memory_order_acquire);
		uint64_t s2 = atomic_load_explicit((_Atomic uint64_t *)&p->seq, memory_order_relaxed);
		if (s1 == s2)
			return 0;
	}
	return -EAGAIN;
}

/*
 * Read /proc/<pid>/stat (pid 0: this process): *start gets field 22
 * (starttime), comm (16 bytes) field 2, either may be NULL. Returns 0,
 * -ENOENT if there is no such process, or another -errno.
 */
static inline int dd_pub_proc_stat(int pid, uint64_t *start, char *comm)
{
	char path[64], buf[1024];
	ssize_t n = 0, r;
	int fd;

	if (pid)
		snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	else
		snprintf(path, sizeof(path), "/proc/self/stat");
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT || errno == ESRCH ? -ENOENT : -errno;
	while ((size_t)n < sizeof(buf) - 1) {
		r = read(fd, buf + n, sizeof(buf) - 1 - (size_t)n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += r;
	}
	close(fd);
	if (n <= 0)
		return -ENOENT;   /* the process went away while we read */
	buf[n] = 0;
	/* "pid (comm) S ppid ...": comm may hold spaces and ')', so the last
	 * ')' ends it; field 3 (state) follows it. */
	char *open_paren = strchr(buf, '('), *close_paren = strrchr(buf, ')');
	if (!open_paren || !close_paren || close_paren < open_paren)
		return -EINVAL;
	if (comm) {
		size_t len = (size_t)(close_paren - open_paren - 1);
		memset(comm, 0, 16);
		memcpy(comm, open_paren + 1, len < 15 ? len : 15);
	}
	if (start) {
		const char *s = close_paren + 1;
		for (int field = 2; field < 22 && *s; s++)
			if (*s == ' ')
				field++;
		uint64_t v = 0;
		if (*s < '0' || *s > '9')
			return -EINVAL;
		while (*s >= '0' && *s <= '9')
			v = v * 10 + (uint64_t)(*s++ - '0');
		*start = v;
	}
	return 0;
}

/*
 * Make sure dir exists and is a directory we may create files in. With
 * private set, it must also be ours and closed to others (a directory in a
 * shared place such as /tmp that someone else made is refused). lstat():
 * a symbolic link is not a directory. Also used for the sharing groups'
 * directory (group.c, tools/dedup-share.c).
 */
static inline bool dd_pub_dir_usable(const char *dir, mode_t mode, bool private)
{
	struct stat st;

	if (mkdir(dir, mode) < 0 && errno != EEXIST)
		return false;
	if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
		return false;
	if (private && (st.st_uid != geteuid() || (st.st_mode & 077)))
		return false;
	return access(dir, W_OK | X_OK) == 0;
}

/* The user's own directory into buf: $XDG_RUNTIME_DIR/libdedup if usable,
 * else /tmp/libdedup-<uid>; false if neither is (publish.c, libdedup only). */
bool dd_pub_private_dir(char *buf, size_t size);

#endif /* DEDUP_PUBLISH_H */
