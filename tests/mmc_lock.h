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
 * The lock file names its holder while it is held. The descriptor is
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

#endif /* DEDUP_MMC_LOCK_H */
