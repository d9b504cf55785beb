/* SPDX-License-Identifier: MIT */
/*
 * publish.c - live per-process stats for dedup-stat: the writer side of the
 * stats file described in publish.h (layout, seqlock) and docs/stats.md.
 *
 * Owns one shared page, mapped from <dir>/<pid>.stats, and the choice of
 * <dir>. dd_publish_open() creates the file at dedup_init(): under a
 * temporary name, filled with the header and a first snapshot, then renamed
 * into place, so readers only ever see a complete header. The engine thread
 * calls dd_publish_update() after every scan step; it writes a snapshot at
 * most every 100 ms (DD_PUB_INTERVAL_NS), except that the first step after a
 * pass ended is always published: the engine then sleeps for the scan
 * interval, and the figures must not stay stale meanwhile.
 * dd_publish_close() unlinks the file at dedup_shutdown(); at exit without
 * it, dd_publish_unlink() (from api.c's destructor) only unlinks it.
 *
 * Locking: every entry point but dd_publish_unlink() runs with eng.lock
 * held, which makes this file's state single-writer (dd_stats_snapshot()
 * itself is lock-free). Readers in other processes never lock: they use
 * the seqlock.
 *
 * The file keeps a shared flock() for as long as we publish, with no
 * descriptor of ours left open (a program may close every descriptor):
 * flock() belongs to the open file, and our MAP_SHARED mapping keeps the
 * open file, so the lock lasts until munmap(), exec or the process's end.
 * A process that never gets to run destructors (_exit(), a crash, a signal)
 * leaves its file behind; dedup-stat recognises it as stale and removes it,
 * but only once it can lock the file exclusively. A fork()ed child inherits
 * neither the mapping (MADV_DONTFORK) nor the lock, and never publishes.
 *
 * Rules of internal.h apply: no malloc, no stdio streams; snprintf into stack
 * buffers only. Failing to publish never fails dedup_init(): it is logged
 * (info) and the engine runs unobserved.
 */
#include <limits.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>

#include "internal.h"
#include "publish.h"

static struct {
	struct dd_pub *page;       /* NULL: not publishing */
	/* no descriptor: the shared flock() taken on the file is held by the
	 * mapping of it (a mapping keeps the open file, and with it the lock) */
	char path[PATH_MAX];       /* <dir>/<pid>.stats */
	uint64_t last_ns;          /* CLOCK_MONOTONIC of the last snapshot */
	uint64_t last_passes;      /* full_passes in the last snapshot */
	_Atomic bool unlinked;     /* the file no longer has its name */
} pub;

/* A fork()ed child must not keep the file's lock alive after we exit: it
 * does not inherit the mapping (MADV_DONTFORK), the lock's only holder. */
static void postfork_child(void)
{
	pub.page = NULL;
}

static uint64_t realtime_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

bool dd_pub_private_dir(char *buf, size_t size)
{
	const char *env = secure_getenv("XDG_RUNTIME_DIR");
	int n;

	if (env && *env) {
		n = snprintf(buf, size, "%s/libdedup", env);
		if (n > 0 && (size_t)n < size && dd_pub_dir_usable(buf, 0700, true))
			return true;
	}
	n = snprintf(buf, size, "/tmp/libdedup-%u", (unsigned)geteuid());
	return n > 0 && (size_t)n < size && dd_pub_dir_usable(buf, 0700, true);
}

/* Choose the directory (see publish.h) into buf; false if none is usable. */
static bool choose_dir(char *buf, size_t size)
{
	const char *env = secure_getenv(DD_PUB_ENV_DIR);
	int n;

	if (env && *env) {
		n = snprintf(buf, size, "%s", env);
		return n > 0 && (size_t)n < size && dd_pub_dir_usable(buf, 0700, false);
	}
	/* /run/libdedup: the system-wide place, usable as root. */
	n = snprintf(buf, size, "%s", DD_PUB_RUN_DIR);
	if (dd_pub_dir_usable(buf, 0755, false))
		return true;
	return dd_pub_private_dir(buf, size);
}

/* Write one snapshot under the seqlock (eng.lock held). */
static void write_snapshot(uint64_t mono_ns)
{
	struct dd_pub *p = pub.page;
	struct dd_pub_live live;
	const uint64_t *src = (const uint64_t *)&live;
	uint64_t *dst = (uint64_t *)&p->live;

	memset(&live, 0, sizeof(live));
	live.stats.size = sizeof(live.stats);
	dd_stats_snapshot(&live.stats);
	live.updated_realtime_ns = realtime_ns();
	live.updated_mono_ns = mono_ns;
	live.updates = __atomic_load_n(&p->live.updates, __ATOMIC_RELAXED) + 1;
	live.cpu_percent = dd_opt.cpu_percent;
	live.scan_interval_ms = dd_opt.scan_interval_ms;
	live.pages_per_sec = dd_opt.pages_per_sec;
	live.batch_pages = dd_opt.batch_pages;
	live.zero_pages_enabled = dd_opt.zero_pages;
	live.vma_budget = __atomic_load_n(&eng.vma_budget, __ATOMIC_RELAXED);

	uint64_t s = atomic_load_explicit(&p->seq, memory_order_relaxed);
	atomic_store_explicit(&p->seq, s + 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
	for (size_t i = 0; i < sizeof(live) / sizeof(uint64_t); i++)
		__atomic_store_n(&dst[i], src[i], __ATOMIC_RELAXED);
	atomic_store_explicit(&p->seq, s + 2, memory_order_release);

	pub.last_ns = mono_ns;
	pub.last_passes = live.stats.full_passes;
}

static bool atfork_done;

int dd_publish_open(void)
{
	char dir[PATH_MAX - 32], tmp[PATH_MAX];
	struct dd_pub *p;
	int fd, n, ret;
	pid_t pid = getpid();

	if (pub.page)
		return 0;
	if (!choose_dir(dir, sizeof(dir))) {
		dd_info("live stats not published: no usable directory "
			"(set " DD_PUB_ENV_DIR ")");
		return -ENOENT;
	}
	n = snprintf(pub.path, sizeof(pub.path), "%s/%d" DD_PUB_SUFFIX, dir, (int)pid);
	snprintf(tmp, sizeof(tmp), "%s/.%d" DD_PUB_SUFFIX ".tmp", dir, (int)pid);
	if (n <= 0 || (size_t)n >= sizeof(pub.path))
		return -ENAMETOOLONG;

	unlink(tmp);   /* left by an earlier process with our pid */
	/* never at the program's low numbers, not even for an instant (fds.c) */
	fd = dd_fd_create_temp(tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, 0600);
	if (fd < 0) {
		ret = fd;
		goto fail_log;
	}
	if (fchmod(fd, 0600) < 0 || ftruncate(fd, DD_PUB_FILE_SIZE) < 0) {
		ret = -errno;
		goto fail_unlink;
	}
	/* The shared lock says "a live process publishes here": dedup-stat
	 * never deletes a file it cannot lock exclusively, even when the pid
	 * looks dead to it (another pid namespace). */
	if (flock(fd, LOCK_SH | LOCK_NB) < 0) {
		ret = -errno;
		goto fail_unlink;
	}
	p = dd_os_mmap(NULL, DD_PUB_FILE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0, true);
	if (p == MAP_FAILED) {
		ret = -errno;
		goto fail_unlink;
	}
	dd_os_madvise(p, DD_PUB_FILE_SIZE, MADV_DONTFORK);
	if (!atfork_done) {
		pthread_atfork(NULL, NULL, postfork_child);
		atfork_done = true;
	}

	/* The header; the file is still private to us under its temporary
	 * name, so plain stores are fine. */
	memcpy(p->magic, DD_PUB_MAGIC, sizeof(p->magic));
	p->version = DD_PUB_VERSION;
	p->size = sizeof(*p);
	p->pid = (int32_t)pid;
	p->page_size = DD_PAGE;
	dd_pub_proc_stat(0, &p->start_time, p->comm);
	p->lib_version = (uint64_t)DEDUP_VERSION_NUMBER;
	p->started_realtime_ns = realtime_ns();
	p->started_mono_ns = dd_now_ns();
	pub.page = p;
	write_snapshot(p->started_mono_ns);

	if (rename(tmp, pub.path) < 0) {
		ret = -errno;
		dd_os_munmap(p, DD_PUB_FILE_SIZE);
		pub.page = NULL;
		goto fail_unlink;
	}
	dd_fd_close_temp(fd);   /* the mapping holds the file and its lock */
	atomic_store(&pub.unlinked, false);
	dd_debug("live stats published in %s", pub.path);
	return 0;

fail_unlink:
	if (fd >= 0)
		dd_fd_close_temp(fd);
	unlink(tmp);
fail_log:
	dd_info("live stats not published in %s: %s", dir, strerror(-ret));
	return ret;
}

void dd_publish_update(void)
{
	dd_assert_held(&eng.lock);
	uint64_t now;

	if (!pub.page)
		return;
	now = dd_now_ns();
	/* A pass ended since the last snapshot: publish now, as the engine is
	 * about to sleep for the scan interval (unless that is short, and the
	 * 100 ms rule catches up soon anyway). */
	bool pass_ended = atomic_load_explicit(&dd_cnt.full_passes, memory_order_relaxed) !=
			  pub.last_passes &&
			  dd_opt.scan_interval_ms * 1000000ULL >= DD_PUB_INTERVAL_NS;
	if (now - pub.last_ns < DD_PUB_INTERVAL_NS && !pass_ended)
		return;
	write_snapshot(now);
}

void dd_publish_close(void)
{
	if (!pub.page)
		return;
	/* Unlink before unmapping: while the file has its name it is mapped by
	 * a live process, which is how dedup-stat tells live from stale. */
	dd_publish_unlink();
	dd_os_munmap(pub.page, DD_PUB_FILE_SIZE);
	pub.page = NULL;
	pub.last_ns = 0;
	pub.last_passes = 0;
}

/* Take the file's name away, once; the mapping and the lock stay until
 * dd_publish_close() or the process's end. Needs no lock: pub.path does not
 * change while pub.page is set. */
void dd_publish_unlink(void)
{
	if (__atomic_load_n(&pub.page, __ATOMIC_ACQUIRE) && !atomic_exchange(&pub.unlinked, true))
		unlink(pub.path);
}
