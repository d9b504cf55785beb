/* SPDX-License-Identifier: MIT */
/*
 * preload.c - what the preload mode (libdedup-preload) needs from the
 * parent: the measured process's environment, and libdedup's own counters
 * read from outside that process.
 *
 * Environment (preload_setenv(), in the forked child before exec):
 * LD_PRELOAD=<build>/libdedup.so, DEDUP_PRELOAD=1 (as dedup-run sets it),
 * DEDUP_INTERVAL and DEDUP_CPU at the values the API mode gives
 * dedup_init() unless the user set them (child.c, libdedup_start()); every
 * other DEDUP_* (DEDUP_BATCH, ...) reaches both modes the same way, from
 * the bench's environment. DEDUP_STAT_DIR points at a directory of this run.
 *
 * Counters: a process running libdedup publishes them in <dir>/<pid>.stats
 * (docs/stats.md, libdedup/src/publish.h), refreshed by its engine at most
 * every 100 ms. The parent maps that file read-only and reads it under the
 * seqlock, so it needs no help from the program - the same code serves the
 * bench's own child and redis-server. The mapping stays valid after the
 * process unlinks the file at dedup_shutdown() (the last snapshot).
 *
 * Runs in the parent only, in its one thread.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "publish.h"

struct preload {
	char dir[64];             /* DEDUP_STAT_DIR of the measured process */
	pid_t pid;
	int fd;
	const struct dd_pub *pub; /* <dir>/<pid>.stats, mapped read-only */
	struct dd_pub_live last;  /* the latest snapshot read */
	bool have;                /* last is filled */
};

struct preload *preload_new(void)
{
	struct preload *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->fd = -1;
	snprintf(s->dir, sizeof(s->dir), "/tmp/dedup-bench-stats-XXXXXX");
	if (!mkdtemp(s->dir)) {
		free(s);
		return NULL;
	}
	return s;
}

void preload_setenv(const struct preload *s)
{
	char v[16];

	setenv("LD_PRELOAD", DEDUP_BENCH_PRELOAD_LIB, 1);
	setenv("DEDUP_PRELOAD", "1", 1);
	snprintf(v, sizeof(v), "%d", BENCH_DEDUP_INTERVAL_MS);
	setenv("DEDUP_INTERVAL", v, 0);
	snprintf(v, sizeof(v), "%d", BENCH_DEDUP_CPU);
	setenv("DEDUP_CPU", v, 0);
	setenv("DEDUP_STAT_DIR", s->dir, 1);
	/* merging from the start, as in the other modes (no lazy start) */
	setenv("DEDUP_START", "0", 0);
}

static bool try_attach(struct preload *s)
{
	char path[128];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%d%s", s->dir, (int)s->pid, DD_PUB_SUFFIX);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	if (fstat(fd, &st) < 0 || st.st_size < (off_t)DD_PUB_FILE_SIZE) {
		close(fd);
		return false;
	}
	void *p = mmap(NULL, DD_PUB_FILE_SIZE, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		close(fd);
		return false;
	}
	const struct dd_pub *pub = p;
	if (memcmp(pub->magic, DD_PUB_MAGIC, 8) != 0 || pub->version != DD_PUB_VERSION ||
	    pub->pid != s->pid) {
		munmap(p, DD_PUB_FILE_SIZE);
		close(fd);
		return false;
	}
	s->fd = fd;
	s->pub = pub;
	return true;
}

bool preload_attach(struct preload *s, pid_t pid, int timeout_ms)
{
	s->pid = pid;
	for (int waited = 0;; waited += 10) {
		if (try_attach(s))
			return preload_poll(s, NULL, 0) >= 0;
		if (waited >= timeout_ms || g_stop)
			return false;
		struct timespec ts = { 0, 10000000 };
		nanosleep(&ts, NULL);
	}
}

int preload_poll(struct preload *s, struct run_ctx *c, int wait_ms)
{
	struct dd_pub_live l;

	int ret = 0;

	if (!s->pub)
		return -1;
	for (int waited = 0;; waited += 2) {
		if (dd_pub_read(s->pub, &l) == 0 && (!s->have || l.updates != s->last.updates)) {
			s->last = l;
			s->have = true;
			ret = 1;
			break;
		}
		if (waited >= wait_ms || g_stop)
			break;
		struct timespec ts = { 0, 2000000 };
		nanosleep(&ts, NULL);
	}
	if (c && s->have) {
		c->ld_passes = (double)s->last.stats.full_passes;
		c->ld_scanned = (double)s->last.stats.pages_scanned;
		c->ld_cpu_ns = (double)s->last.stats.engine_cpu_ns;
	}
	return ret;
}

/* The API child's "stat" line (child.c, stats_line) has the same keys, so
 * report.c treats both libdedup modes alike. */
void preload_extras(const struct preload *s, struct result *r)
{
	const struct dd_pub_live *l = &s->last;
	const struct dedup_stats *st = &l->stats;

	if (!s->have)
		return;
	result_extra(r, "passes", "%llu", (unsigned long long)st->full_passes);
	result_extra(r, "scanned", "%llu", (unsigned long long)st->pages_scanned);
	result_extra(r, "cpu_ns", "%llu", (unsigned long long)st->engine_cpu_ns);
	result_extra(r, "ld_saved", "%llu", (unsigned long long)st->bytes_saved);
	result_extra(r, "ld_sharing", "%llu", (unsigned long long)st->pages_sharing);
	result_extra(r, "ld_shared", "%llu", (unsigned long long)st->pages_shared);
	result_extra(r, "ld_zero", "%llu", (unsigned long long)st->zero_pages);
	result_extra(r, "ld_merges", "%llu", (unsigned long long)st->merges);
	result_extra(r, "ld_cow_breaks", "%llu", (unsigned long long)st->cow_breaks);
	result_extra(r, "ld_skipped_volatile", "%llu", (unsigned long long)st->skipped_volatile);
	result_extra(r, "ld_skipped_budget", "%llu", (unsigned long long)st->skipped_budget);
	result_extra(r, "ld_skipped_pinned", "%llu", (unsigned long long)st->skipped_pinned);
	result_extra(r, "ld_skipped_mismatch", "%llu", (unsigned long long)st->skipped_mismatch);
	result_extra(r, "ld_skipped_raced", "%llu", (unsigned long long)st->skipped_raced);
	result_extra(r, "ld_vmas_added", "%llu", (unsigned long long)st->vmas_added);
	result_extra(r, "ld_vma_budget", "%llu", (unsigned long long)st->vma_budget);
	result_extra(r, "ld_metadata_bytes", "%llu", (unsigned long long)st->metadata_bytes);
	result_extra(r, "ld_budget_waiting", "%llu", (unsigned long long)st->budget_waiting);
	result_extra(r, "ld_regions", "%llu", (unsigned long long)st->regions);
	result_extra(r, "ld_bytes_registered", "%llu", (unsigned long long)st->bytes_registered);
	/* the options in force, to show they are the API mode's */
	result_extra(r, "ld_cfg_interval_ms", "%llu", (unsigned long long)l->scan_interval_ms);
	result_extra(r, "ld_cfg_cpu_percent", "%llu", (unsigned long long)l->cpu_percent);
	result_extra(r, "ld_cfg_batch_pages", "%llu", (unsigned long long)l->batch_pages);
}

void preload_free(struct preload *s)
{
	char path[128];

	if (!s)
		return;
	if (s->pub)
		munmap((void *)s->pub, DD_PUB_FILE_SIZE);
	if (s->fd >= 0)
		close(s->fd);
	/* a process killed before dedup_shutdown() leaves its file (and
	 * dedup_init's temporary name, if it died right then) */
	if (s->pid > 0) {
		snprintf(path, sizeof(path), "%s/%d%s", s->dir, (int)s->pid, DD_PUB_SUFFIX);
		unlink(path);
		snprintf(path, sizeof(path), "%s/.%d%s.tmp", s->dir, (int)s->pid, DD_PUB_SUFFIX);
		unlink(path);
	}
	rmdir(s->dir);
	free(s);
}
