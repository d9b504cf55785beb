/* SPDX-License-Identifier: MIT */
/*
 * fds.c - libdedup's own file descriptors, kept out of the program's way.
 *
 * Descriptors are the program's. It numbers its files itself (a daemon
 * closes everything from 3 up and expects its next open() to get 3), it
 * dup2()s onto numbers of its choosing, and it may close every descriptor
 * with a raw close_range() that no interposer sees (glibc's closefrom()
 * does). A number we remember may then name the program's own file, and a
 * pwrite(), mmap() or read() on "our memfd" or "our uffd" would hit it.
 *
 * So every descriptor libdedup keeps is adopted here:
 *  - moved above a high floor with F_DUPFD_CLOEXEC (1024 when RLIMIT_NOFILE
 *    allows, out of select()'s range and out of a sequential numbering;
 *    else as high as the limit allows), close-on-exec;
 *  - tagged: F_SETSIG with DD_FD_TAG. The signal number only matters for
 *    O_ASYNC files, and ours are never O_ASYNC, so the tag is inert; a file
 *    the program opens later has 0 there. dd_fd_intact() is that check, one
 *    fcntl() (the inode alone would not do: every eventfd shares one);
 *  - recorded in a small lock-free table that the interposed close(),
 *    close_range(), closefrom(), dup2(), dup3() and the fstat() family
 *    consult (preload.c):
 *    to the program, our numbers look like descriptors that are not open
 *    (EBADF), and a dup2() onto one of them first moves ours elsewhere
 *    (dd_fd_move_away).
 * What no interposer sees (a raw syscall) is caught by dd_fd_intact()
 * before each use that cannot be interposed: the engine checks its
 * descriptors at each step, the uffd reader at each wake-up (engine.c).
 *
 * Locking: none. The table is read lock-free (interposed close() and dup2()
 * may run in a signal handler). Entries are added and removed by the code
 * that opens and closes the descriptor (dedup_init, shutdown, fork), and
 * moved by an interposed dup2() onto one of ours: the new number is stored
 * before the program's dup2() takes the old one, and until then the old
 * one still names our file; a thread of ours that loaded the old number
 * just before and uses it just after would hit the program's file, a
 * window of a few instructions that only a dup2() onto a number of ours
 * can open (the tag check at each engine step catches what follows).
 */
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#define DD_FD_MAX 16
/* slots of the table: the variable that holds the number, and the number */
static struct {
	int *_Atomic var;
	_Atomic int fd;
} tab[DD_FD_MAX];

int dd_sys_close(int fd) { return (int)syscall(SYS_close, fd); }
#define real_close dd_sys_close

/* Lowest number for our descriptors: 1024 when RLIMIT_NOFILE allows, or
 * the top of what it allows, leaving room for the program below. */
int dd_fd_floor(void)
{
	struct rlimit rl;
	rlim_t cur;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 3;
	cur = rl.rlim_cur;
	if (cur >= 2048)
		return 1024;
	if (cur > 64 + 3)
		return (int)cur - 64;
	return 3;
}

bool dd_fd_intact(int fd)
{
	return fd >= 0 && fcntl(fd, F_GETSIG) == DD_FD_TAG;
}

bool dd_fd_ours(int fd)
{
	if (fd < 0)
		return false;
	for (size_t i = 0; i < DD_FD_MAX; i++)
		if (atomic_load_explicit(&tab[i].fd, memory_order_acquire) == fd + 1)
			return true;
	return false;
}

/* The lowest number of ours in [lo, hi], or -1 (close_range). */
int dd_fd_next_ours(unsigned int lo, unsigned int hi)
{
	long best = -1;

	for (size_t i = 0; i < DD_FD_MAX; i++) {
		long f = (long)atomic_load_explicit(&tab[i].fd, memory_order_acquire) - 1;
		if (f >= (long)lo && f <= (long)hi && (best < 0 || f < best))
			best = f;
	}
	return (int)best;
}

/* A copy of fd above the floor, tagged; fd itself is left open. */
static int place(int fd)
{
	int n = fcntl(fd, F_DUPFD_CLOEXEC, dd_fd_floor());

	if (n < 0)
		n = fcntl(fd, F_DUPFD_CLOEXEC, 3);   /* the floor is taken: anywhere */
	if (n < 0)
		return -errno;
	if (fcntl(n, F_SETSIG, DD_FD_TAG) < 0) {
		int e = errno;
		real_close(n);
		return -e;
	}
	return n;
}

int dd_fd_adopt(int *var, int fd)
{
	int n;

	if (fd < 0)
		return fd;
	n = place(fd);
	real_close(fd);
	if (n < 0) {
		*var = -1;
		return n;
	}
	for (size_t i = 0; i < DD_FD_MAX; i++) {
		int *none = NULL;
		if (atomic_compare_exchange_strong(&tab[i].var, &none, var)) {
			atomic_store_explicit(&tab[i].fd, n + 1, memory_order_release);
			*var = n;
			return n;
		}
	}
	real_close(n);   /* cannot happen: more descriptors than we ever keep */
	*var = -1;
	return -EMFILE;
}

static void forget(int *var)
{
	for (size_t i = 0; i < DD_FD_MAX; i++)
		if (atomic_load(&tab[i].var) == var) {
			atomic_store_explicit(&tab[i].fd, 0, memory_order_release);
			atomic_store(&tab[i].var, NULL);
		}
}

void dd_fd_forget(int *var)
{
	forget(var);
}

/* Close our descriptor - only if the number still is ours: after a raw
 * close_range() by the program it may be the program's file now. */
void dd_fd_close(int *var)
{
	int fd = *var;

	forget(var);
	if (fd >= 0 && dd_fd_intact(fd))
		real_close(fd);
	*var = -1;
}

/* The program wants number fd (dup2/dup3 onto it): move ours out of its way
 * first. The copy is made before the number changes hands, so our file is
 * never without a descriptor. 0, or -errno (then the number stays ours). */
int dd_fd_move_away(int fd)
{
	for (size_t i = 0; i < DD_FD_MAX; i++) {
		if (atomic_load_explicit(&tab[i].fd, memory_order_acquire) != fd + 1)
			continue;
		int *var = atomic_load(&tab[i].var);
		int n = place(fd);
		if (n < 0)
			return n;
		if (var)
			*var = n;
		atomic_store_explicit(&tab[i].fd, n + 1, memory_order_release);
		/* fd stays open (with our tag) until the program's dup2()
		 * replaces it; a thread of ours that read the old number just
		 * before sees our file or, after the dup2, not our tag. */
		return 0;
	}
	return 0;
}

/* Every descriptor in the table still ours? */
bool dd_fds_intact(void)
{
	for (size_t i = 0; i < DD_FD_MAX; i++) {
		int f = atomic_load_explicit(&tab[i].fd, memory_order_acquire);
		if (f && !dd_fd_intact(f - 1))
			return false;
	}
	return true;
}
