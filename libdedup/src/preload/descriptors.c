/* SPDX-License-Identifier: MIT */
/*
 * descriptors.c - preload mode: our descriptors (../fds.c) are not the
 * program's to close, replace or see.
 *
 * Our descriptors are not the program's to close or replace. To the program
 * a number of ours looks like one that is not open: close() says EBADF and
 * closes nothing, close_range() and closefrom() close everything around it,
 * dup2()/dup3() from it say EBADF, and dup2()/dup3() onto it first move ours
 * to another number. The real calls are glibc's (close is a cancellation
 * point), resolved in the constructor; before that, the system call. These
 * run in any thread and in signal handlers (close and dup2 are async-signal-
 * safe): no lock, nothing but the lock-free table.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "preload.h"

static int (*next_close)(int);
static int (*next_dup2)(int, int);
static int (*next_dup3)(int, int, int);
static int (*next_fstat)(int, struct stat *);
static int (*next_fstat64)(int, struct stat64 *);
static int (*next_fstatat)(int, const char *, struct stat *, int);
static int (*next_fstatat64)(int, const char *, struct stat64 *, int);
static int (*next_statx)(int, const char *, int, unsigned int, struct statx *);

void dd_pl_resolve_fd_calls(void)
{
	next_close = (int (*)(int))dlsym(RTLD_NEXT, "close");
	next_dup2 = (int (*)(int, int))dlsym(RTLD_NEXT, "dup2");
	next_dup3 = (int (*)(int, int, int))dlsym(RTLD_NEXT, "dup3");
	next_fstat = (int (*)(int, struct stat *))dlsym(RTLD_NEXT, "fstat");
	next_fstat64 = (int (*)(int, struct stat64 *))dlsym(RTLD_NEXT, "fstat64");
	next_fstatat = (int (*)(int, const char *, struct stat *, int))dlsym(RTLD_NEXT, "fstatat");
	next_fstatat64 = (int (*)(int, const char *, struct stat64 *, int))dlsym(RTLD_NEXT,
										 "fstatat64");
	next_statx = (int (*)(int, const char *, int, unsigned int, struct statx *))dlsym(RTLD_NEXT,
											  "statx");
}

DD_API int close(int fd)
{
	if (dd_unlikely(dd_fd_ours(fd))) {
		errno = EBADF;
		return -1;
	}
	return next_close ? next_close(fd) : (int)syscall(SYS_close, fd);
}

#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

DD_API int close_range(unsigned int first, unsigned int last, int flags)
{
	unsigned int lo = first;
	int ret = 0, f = flags;   /* ret: -1 if a piece failed (errno says why) */

	/* setting close-on-exec changes nothing of ours (ours have it) */
	if (first > last || (flags & CLOSE_RANGE_CLOEXEC))
		return (int)syscall(SYS_close_range, first, last, flags);
	/* the ranges between our descriptors, lowest first */
	for (;;) {
		int o = dd_fd_next_ours(lo, last), r;
		if (o < 0) {
			r = (int)syscall(SYS_close_range, lo, last, f);
			return r < 0 ? r : ret;
		}
		if ((unsigned int)o > lo) {
			r = (int)syscall(SYS_close_range, lo, (unsigned int)o - 1, f);
			if (r < 0)
				ret = r;
			f &= ~(int)CLOSE_RANGE_UNSHARE;   /* unshared by the first call */
		}
		if ((unsigned int)o == last)
			return ret;
		lo = (unsigned int)o + 1;
	}
}

DD_API void closefrom(int lowfd)
{
	if (lowfd < 0)
		lowfd = 0;
	if (close_range((unsigned int)lowfd, ~0U, 0) == 0)
		return;
	/* no close_range (not on the kernels we run on): one by one */
	long max = sysconf(_SC_OPEN_MAX);
	for (long fd = lowfd; fd < max; fd++)
		close((int)fd);
}

DD_API int dup2(int oldfd, int newfd)
{
	if (dd_unlikely(dd_fd_ours(oldfd))) {
		errno = EBADF;
		return -1;
	}
	if (dd_unlikely(dd_fd_ours(newfd)) && oldfd != newfd && fcntl(oldfd, F_GETFD) >= 0)
		dd_fd_move_away(newfd);
	return next_dup2 ? next_dup2(oldfd, newfd) : (int)syscall(SYS_dup2, oldfd, newfd);
}

DD_API int dup3(int oldfd, int newfd, int flags)
{
	if (dd_unlikely(dd_fd_ours(oldfd))) {
		errno = EBADF;
		return -1;
	}
	if (dd_unlikely(dd_fd_ours(newfd)) && oldfd != newfd && fcntl(oldfd, F_GETFD) >= 0)
		dd_fd_move_away(newfd);
	return next_dup3 ? next_dup3(oldfd, newfd, flags) : (int)syscall(SYS_dup3, oldfd, newfd, flags);
}

/*
 * fstat() of a number of ours says EBADF too, as close() does: programs
 * find their open descriptors by probing every number up to their limit
 * with fstat() (CPython's fd_status.py, in test_subprocess, found the
 * engine's three). fstatat() and statx() only on the descriptor itself
 * (AT_EMPTY_PATH and an empty path). /proc/self/fd still lists them, and
 * binaries built against glibc before 2.33 call __fxstat64, not these.
 * (The raw fallbacks assume a 64-bit target: struct stat is stat64.)
 */
static bool hides(int fd, const char *path, int flags)
{
	return dd_unlikely(dd_fd_ours(fd)) && (flags & AT_EMPTY_PATH) && path && !*path;
}

DD_API int fstat(int fd, struct stat *st)
{
	if (dd_unlikely(dd_fd_ours(fd))) {
		errno = EBADF;
		return -1;
	}
	return next_fstat ? next_fstat(fd, st) : (int)syscall(SYS_fstat, fd, st);
}

DD_API int fstat64(int fd, struct stat64 *st)
{
	if (dd_unlikely(dd_fd_ours(fd))) {
		errno = EBADF;
		return -1;
	}
	return next_fstat64 ? next_fstat64(fd, st) : (int)syscall(SYS_fstat, fd, st);
}

DD_API int fstatat(int fd, const char *path, struct stat *st, int flags)
{
	if (hides(fd, path, flags)) {
		errno = EBADF;
		return -1;
	}
	return next_fstatat ? next_fstatat(fd, path, st, flags)
			    : (int)syscall(SYS_newfstatat, fd, path, st, flags);
}

DD_API int fstatat64(int fd, const char *path, struct stat64 *st, int flags)
{
	if (hides(fd, path, flags)) {
		errno = EBADF;
		return -1;
	}
	return next_fstatat64 ? next_fstatat64(fd, path, st, flags)
			      : (int)syscall(SYS_newfstatat, fd, path, st, flags);
}

DD_API int statx(int fd, const char *path, int flags, unsigned int mask, struct statx *stx)
{
	if (hides(fd, path, flags)) {
		errno = EBADF;
		return -1;
	}
	return next_statx ? next_statx(fd, path, flags, mask, stx)
			  : (int)syscall(SYS_statx, fd, path, flags, mask, stx);
}
