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
 *    consult (preload/descriptors.c):
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
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#define DD_FD_MAX 16
/* slots of the table: the variable that holds the number, and the number */
static struct {
	int *_Atomic var;
	_Atomic int fd;
	/* the file's identity, recorded before fd is published: a check
	 * must not take a file of the program's for ours just because it
	 * carries our tag (F_SETSIG is per open file, and a dup2() of the
	 * program's racing with ours could leave it on the program's file) */
	_Atomic uint64_t dev, ino;
} tab[DD_FD_MAX];

/* fstat(2), not the interposed fstat() (preload/descriptors.c), which hides our own
 * numbers from the program: here we ask about exactly those. */
int dd_sys_fstat(int fd, struct stat *sb) { return (int)syscall(SYS_fstat, fd, sb); }
#define sys_fstat dd_sys_fstat

/* Record n's identity in slot i (before its number is published). */
static void set_identity(size_t i, int n)
{
	struct stat sb;
	bool ok = sys_fstat(n, &sb) == 0;
	atomic_store_explicit(&tab[i].dev, ok ? (uint64_t)sb.st_dev : 0, memory_order_relaxed);
	atomic_store_explicit(&tab[i].ino, ok ? (uint64_t)sb.st_ino : 0, memory_order_relaxed);
}

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
	if (fd < 0 || fcntl(fd, F_GETSIG) != DD_FD_TAG)
		return false;
	/* a recorded descriptor: the same file too (anonymous inodes are
	 * shared by every userfaultfd and eventfd, but never by a file the
	 * program opens) */
	for (size_t i = 0; i < DD_FD_MAX; i++) {
		if (atomic_load_explicit(&tab[i].fd, memory_order_acquire) != fd + 1)
			continue;
		struct stat sb;
		uint64_t ino = atomic_load_explicit(&tab[i].ino, memory_order_relaxed);
		return !ino || (sys_fstat(fd, &sb) == 0 && (uint64_t)sb.st_ino == ino &&
				(uint64_t)sb.st_dev == atomic_load_explicit(&tab[i].dev,
									    memory_order_relaxed));
	}
	return true;
}

/* fd carries our tag and names inode ino: a descriptor of ours that the
 * table does not record (a group segment's, store.c), checked before each use. */
bool dd_fd_names(int fd, uint64_t ino)
{
	struct stat sb;

	return fd >= 0 && fcntl(fd, F_GETSIG) == DD_FD_TAG && sys_fstat(fd, &sb) == 0 &&
	       (uint64_t)sb.st_ino == ino;
}

/* Temporary descriptors (dd_fd_open_temp) while they are open, number + 1:
 * hidden from the program like the others (close, dup2, the fstat family).
 * A slot is its opener's: the offset of its next read, and the number
 * alone does not say whose it is. dd_fd_close_temp closes before it frees
 * the slot (until the close the number must stay hidden), so for an instant
 * a closed number's slot is still there while another thread opens the same
 * number into a second slot. Found by pl_calls with threads: that thread
 * read /proc/self/maps from the first slot's offset, the middle of the file,
 * and missed the mappings before it (an mremap refused with EFAULT, an
 * madvise with EINVAL, where the program's call should have worked). So a
 * slot is looked up by number and opener, and its opener is cleared before
 * it is freed: a slot being taken never shows a stale opener. */
#define DD_TEMP_MAX 8
static _Atomic int temp[DD_TEMP_MAX];
static _Atomic pthread_t temp_owner[DD_TEMP_MAX];   /* its opener, 0 while free */
static off_t temp_off[DD_TEMP_MAX];   /* the next read's offset (its opener's) */

/* The slot of temporary fd opened by this thread, or DD_TEMP_MAX */
static size_t temp_slot(int fd)
{
	pthread_t self = pthread_self();
	size_t i = 0;

	while (i < DD_TEMP_MAX && !(atomic_load_explicit(&temp[i], memory_order_acquire) == fd + 1 &&
				    pthread_equal(atomic_load_explicit(&temp_owner[i],
								       memory_order_relaxed), self)))
		i++;
	return i;
}

bool dd_fd_ours(int fd)
{
	if (fd < 0)
		return false;
	for (size_t i = 0; i < DD_FD_MAX; i++)
		if (atomic_load_explicit(&tab[i].fd, memory_order_acquire) == fd + 1)
			return true;
	for (size_t i = 0; i < DD_TEMP_MAX; i++)
		if (atomic_load_explicit(&temp[i], memory_order_acquire) == fd + 1)
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
	for (size_t i = 0; i < DD_TEMP_MAX; i++) {
		long f = (long)atomic_load_explicit(&temp[i], memory_order_acquire) - 1;
		if (f >= (long)lo && f <= (long)hi && (best < 0 || f < best))
			best = f;
	}
	return (int)best;
}

/* A copy of fd above the floor, tagged; fd itself is left open. Not
 * recorded: for descriptors a caller owns for a moment (group segments). */
int dd_fd_place(int fd)
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
	n = dd_fd_place(fd);
	/* fd names the same file as n, so it carries the tag now - unless
	 * the program closed it meanwhile (a raw close_range) and opened a
	 * file of its own there: that one stays open. */
	if (n < 0 || dd_fd_intact(fd))
		real_close(fd);
	if (n < 0) {
		*var = -1;
		return n;
	}
	for (size_t i = 0; i < DD_FD_MAX; i++) {
		int *none = NULL;
		if (atomic_compare_exchange_strong(&tab[i].var, &none, var)) {
			set_identity(i, n);
			atomic_store_explicit(&tab[i].fd, n + 1, memory_order_release);
			*var = n;
			return n;
		}
	}
	real_close(n);   /* cannot happen: more descriptors than we ever keep */
	*var = -1;
	return -EMFILE;
}

/*
 * Descriptors we hold for an instant (a /proc file read once, the
 * /dev/userfaultfd node) are opened at the lowest free number, where a raw
 * close_range() of the program's may close it and a later open() of the
 * program's may reuse it - even before our next instruction. So the number
 * open() returned is never used: it is copied above the floor at once, the
 * copy is checked to be the file at @path (its device and inode: any file
 * the program could have opened there meanwhile is another), tagged, and
 * used; the low number is closed only if it still names that same file.
 * Then reads and the close go through the tag check (dd_fd_intact): we never
 * read from, move the offset of, or close a file of the program's. Returns
 * the descriptor or -errno.
 */
static void temp_add(int fd)
{
	for (size_t i = 0; i < DD_TEMP_MAX; i++) {
		int none = 0;
		if (atomic_compare_exchange_strong(&temp[i], &none, fd + 1)) {
			temp_off[i] = 0;
			atomic_store_explicit(&temp_owner[i], pthread_self(), memory_order_relaxed);
			return;
		}
	}   /* more at once than we ever hold: it stays visible */
}

static void temp_del(int fd)
{
	size_t i = temp_slot(fd);

	if (i < DD_TEMP_MAX) {
		atomic_store_explicit(&temp_owner[i], (pthread_t)0, memory_order_relaxed);
		atomic_store_explicit(&temp[i], 0, memory_order_release);
	}
}

static bool same_file(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

int dd_fd_open_temp(const char *path, int flags)
{
	return dd_fd_create_temp(path, flags, 0);
}

/* The same, with open()'s mode for O_CREAT. */
int dd_fd_create_temp(const char *path, int flags, mode_t mode)
{
	struct stat want, got;
	int x = open(path, flags | O_CLOEXEC, mode), n;

	if (x < 0)
		return -errno;
	n = fcntl(x, F_DUPFD_CLOEXEC, dd_fd_floor());
	if (n >= 0)
		temp_add(n);
	if (n < 0) {
		/* no room above the floor: the low number, tagged at once */
		n = fcntl(x, F_SETSIG, DD_FD_TAG) == 0 ? x : -1;
		return n < 0 ? -EBADF : n;
	}
	if (stat(path, &want) < 0 || sys_fstat(n, &got) < 0 || !same_file(&want, &got)) {
		temp_del(n);
		real_close(n);   /* our copy of whatever x had become */
		return -EBADF;
	}
	if (sys_fstat(x, &got) == 0 && same_file(&want, &got))
		real_close(x);
	if (fcntl(n, F_SETSIG, DD_FD_TAG) < 0) {
		int e = errno;
		temp_del(n);
		real_close(n);
		return -e;
	}
	return n;
}

/* A file at @path, adopted (dd_fd_adopt) without ever using the low number
 * open() gave it (dd_fd_open_temp). */
int dd_fd_adopt_path(int *var, const char *path, int flags)
{
	int fd = dd_fd_open_temp(path, flags);

	if (fd < 0) {
		*var = -1;
		return fd;
	}
	int r = dd_fd_adopt(var, fd);   /* closes fd: a temporary no more */
	temp_del(fd);
	return r;
}

void dd_fd_close_temp(int fd)
{
	if (dd_fd_intact(fd))
		real_close(fd);
	temp_del(fd);
}

/*
 * read(2) on a temporary descriptor, only while it is ours: -EBADF else.
 * The check and the read are two system calls, and between them a raw close
 * and an open() of the program's in another thread could take the number.
 * So the read is a pread() at the offset we keep: it never moves the
 * program's file offset, and on its pipe or socket it fails (ESPIPE)
 * without taking a byte. And the tag is checked again after it: a number
 * once lost never names our file again, so what we read is kept only if it
 * came from our file. (seq_file /proc files read on from the same offset
 * as with read(): no re-walk.)
 */
ssize_t dd_fd_read_temp(int fd, void *buf, size_t len)
{
	size_t i = temp_slot(fd);

	for (;;) {
		if (!dd_fd_intact(fd))
			return -EBADF;
		/* not in the table (no room above the floor): the low number,
		 * read() as before */
		ssize_t r = i < DD_TEMP_MAX ? pread(fd, buf, len, temp_off[i]) : read(fd, buf, len);
		int e = errno;
		if (r >= 0 && !dd_fd_intact(fd))
			return -EBADF;
		if (r >= 0) {
			if (i < DD_TEMP_MAX)
				temp_off[i] += r;
			return r;
		}
		if (e != EINTR)
			return -e;
	}
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
	bool ours = dd_fd_intact(fd);   /* with its identity, while recorded */

	forget(var);
	if (ours)
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
		/* The number may not be ours any more (a raw close, and the
		 * program's file there now): copying it would tag the
		 * program's file as ours. Leave it; the engine sees it lost. */
		if (!dd_fd_intact(fd))
			return 0;
		int n = dd_fd_place(fd);
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
