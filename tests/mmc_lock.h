/* SPDX-License-Identifier: MIT */
/*
 * mmc_lock.h - the machine-wide lock on vm.max_map_count.
 *
 * The sysctl is global, and several worktrees or CTest runs may share a
 * machine. Whatever of ours changes it (tests/with_max_map_count.sh,
 * probe_max_map_count, dedup-bench --max-map-count) holds an exclusive
 * flock on one file from before it reads the value until after it has put
 * the value back:
 *   /run/lock/libdedup-max_map_count.lock, or ${TMPDIR:-/tmp}/... when
 *   /run/lock is not writable (the same rule as the shell script).
 * The lock file names its holder while it is held; DEDUP_MMC_LOCK_HELD=1 in
 * the environment says a parent holds it already. The descriptor is
 * inherited across fork/exec (no O_CLOEXEC would be wrong here: a child that
 * runs at the changed value keeps it), so close it in children that must not.
 *
 * MMC_FLOOR: a value below the kernel's default found where we would put it
 * back is another run's crash, not a setting to restore.
 */
#ifndef DEDUP_MMC_LOCK_H
#define DEDUP_MMC_LOCK_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#define MMC_SYSCTL "/proc/sys/vm/max_map_count"
#define MMC_FLOOR 65530L

static inline void mmc_lock_path(char *buf, size_t n, const char *name)
{
	const char *dir = "/run/lock";
	if (access(dir, W_OK) != 0) {
		dir = getenv("TMPDIR");
		if (!dir || !*dir)
			dir = "/tmp";
	}
	snprintf(buf, n, "%s/%s", dir, name);
}

/*
 * Take the lock, waiting up to @wait_s seconds (< 0: no cap). @who names the
 * holder in the lock file. Returns the descriptor that holds it, or -1 with
 * errno (ETIMEDOUT when the wait ran out). Says on stderr that it waits.
 */
static inline int mmc_lock(double wait_s, const char *who)
{
	char path[512];
	/* held by a parent (tests/with_max_map_count.sh, or flock around a
	 * whole ctest): taking it again on a new open file would wait forever */
	const char *held = getenv("DEDUP_MMC_LOCK_HELD");
	if (held && strcmp(held, "1") == 0)
		return open("/dev/null", O_RDONLY);
	mmc_lock_path(path, sizeof(path), "libdedup-max_map_count.lock");
	int fd = open(path, O_RDWR | O_CREAT, 0644);
	if (fd < 0)
		fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		char holder[200] = "";
		ssize_t n = pread(fd, holder, sizeof(holder) - 1, 0);
		holder[n > 0 ? n : 0] = 0;
		fprintf(stderr, "waiting for %s, held by: %s\n", path, holder);
		struct timespec t0, t;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		for (;;) {
			if (flock(fd, LOCK_EX | LOCK_NB) == 0)
				break;
			clock_gettime(CLOCK_MONOTONIC, &t);
			if (wait_s >= 0 && (double)(t.tv_sec - t0.tv_sec) +
						   (t.tv_nsec - t0.tv_nsec) * 1e-9 > wait_s) {
				close(fd);
				errno = ETIMEDOUT;
				return -1;
			}
			usleep(100 * 1000);
		}
	}
	char line[300];
	int n = snprintf(line, sizeof(line), "pid %d: %s\n", (int)getpid(), who);
	if (ftruncate(fd, 0) == 0 && n > 0)
		(void)!pwrite(fd, line, (size_t)n, 0);
	return fd;
}

/*
 * The state file (next to the lock): the value to put back should the holder
 * be SIGKILLed. The next with_max_map_count.sh run (or its --restore) puts it
 * back. Write it, under the lock, before changing the sysctl; remove it once
 * the value is back.
 */
static inline void mmc_state_write(long old)
{
	char path[512], buf[32];
	mmc_lock_path(path, sizeof(path), "libdedup-max_map_count.restore");
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	int n = snprintf(buf, sizeof(buf), "%ld\n", old);
	if (fd >= 0) {
		(void)!write(fd, buf, (size_t)n);
		close(fd);
	}
}

static inline void mmc_state_clear(void)
{
	char path[512];
	mmc_lock_path(path, sizeof(path), "libdedup-max_map_count.restore");
	unlink(path);
}

/*
 * For a test program that lowers the sysctl itself (mmc_hold, mmc_set,
 * mmc_put_back): it takes the lock, remembers the value to put back (never
 * below MMC_FLOOR) in the state file too, and puts it back on every way out
 * it can see (exit, fatal signals, an alarm after alarm_s seconds).
 * Returns 0, or -1 when the sysctl is not writable (skip) or the lock could
 * not be had (errno).
 */
static long mmc_orig = -1;
static volatile sig_atomic_t mmc_changed;

static inline int mmc_write(long v)
{
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%ld\n", v);
	int fd = open(MMC_SYSCTL, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int r = write(fd, buf, (size_t)n) == n ? 0 : -1;
	int e = errno;
	close(fd);
	errno = e;
	return r;
}

/* async-signal-safe (no stdio, no allocation) */
static inline void mmc_put_back(void)
{
	if (!mmc_changed || mmc_orig < 0)
		return;
	char buf[24], *p = buf + sizeof(buf);
	long v = mmc_orig;
	*--p = '\n';
	do
		*--p = (char)('0' + v % 10);
	while ((v /= 10) > 0);
	int fd = open(MMC_SYSCTL, O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (write(fd, p, (size_t)(buf + sizeof(buf) - p)) > 0)
			mmc_changed = 0;
		close(fd);
	}
}

static inline void mmc_on_signal(int sig)
{
	mmc_put_back();
	signal(sig, SIG_DFL);
	raise(sig);
}

static inline void mmc_at_exit(void)
{
	mmc_put_back();
	if (!mmc_changed)
		mmc_state_clear();
}

/* The lock, and the value to put back (also in the state file). A program
 * with its own signal handling (dedup-bench) calls this, then mmc_set(),
 * and mmc_put_back() on its ways out; a test calls mmc_hold(). */
static inline int mmc_begin(const char *who, double wait_s)
{
	int fd = open(MMC_SYSCTL, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	close(fd);
	if (mmc_lock(wait_s, who) < 0)
		return -1;
	char buf[32] = "";
	fd = open(MMC_SYSCTL, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || read(fd, buf, sizeof(buf) - 1) <= 0)
		return -1;
	close(fd);
	mmc_orig = strtol(buf, NULL, 10);
	if (mmc_orig < MMC_FLOOR) {
		fprintf(stderr, "found vm.max_map_count=%ld below %ld (another run's crash?): "
			"%ld will be put back\n", mmc_orig, MMC_FLOOR, MMC_FLOOR);
		mmc_orig = MMC_FLOOR;
	}
	mmc_state_write(mmc_orig);
	atexit(mmc_at_exit);
	return 0;
}

static inline int mmc_hold(const char *who, double wait_s, unsigned alarm_s)
{
	if (mmc_begin(who, wait_s) < 0)
		return -1;
	int sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGSEGV, SIGBUS, SIGABRT,
		       SIGFPE, SIGILL, SIGALRM };
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		signal(sigs[i], mmc_on_signal);
	alarm(alarm_s);
	return 0;
}

/* The value now (-1 if unreadable). */
static inline long mmc_read_now(void)
{
	char buf[32] = "";
	int fd = open(MMC_SYSCTL, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	return n > 0 ? strtol(buf, NULL, 10) : -1;
}

/* Set the sysctl to v (held: mmc_hold first). */
static inline int mmc_set(long v)
{
	mmc_changed = 1;
	return mmc_write(v);
}

#endif /* DEDUP_MMC_LOCK_H */
