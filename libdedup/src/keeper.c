/* SPDX-License-Identifier: MIT */
/*
 * keeper.c - a userfaultfd that a raw close() cannot take from us.
 *
 * DOC: Why a keeper
 *
 * The program may close our descriptors with a raw system call that no
 * interposer sees (fds.c). For most of them that only means we stop using
 * them. Not for a userfaultfd: when its last reference goes, the kernel drops
 * every registration on it, and the pages it guards change behaviour at once
 * - a merge window half done reads zeros (engine.c), a fork()ed child's
 * discarded page reads its merged content again (child.c).
 *
 * So the thread that serves a uffd holds it in an io_uring's fixed-file
 * table, where no close() reaches:
 *  - the ring's own descriptor is registered with the thread
 *    (io_uring_register_ring_fd) and then closed, so the ring has no number
 *    the program could close either; its mappings are kept from fork()ed
 *    children (io_uring_ring_dontfork), which would otherwise keep the ring,
 *    and with it the uffd, alive;
 *  - the thread waits for the uffd with a poll of the fixed file, and reads
 *    its messages from the fixed file (RWF_NOWAIT), never by the number:
 *    the number may name the program's pipe or socket by now;
 *  - the ioctls (UFFDIO_COPY & co.) need a number. Where the old one is no
 *    longer ours (dd_fd_intact), dd_keeper_install() gives the uffd a new one
 *    (IORING_OP_FIXED_FD_INSTALL, Linux 6.8), which the caller adopts
 *    (dd_fd_adopt: the file kept its tag). dd_keeper_init() tries it once,
 *    so that recovery is known to work before it is needed.
 * When the thread is done, dd_keeper_exit() releases the ring (also its
 * registration with the thread, which would otherwise keep it until the
 * thread exits), and with the number gone the uffd goes with it
 * (asynchronously: ring teardown runs in a kernel worker).
 *
 * Without a ring (io_uring refused by seccomp or kernel.io_uring_disabled)
 * a raw close would end the uffd, and a merge window open at that moment
 * could not put its pages back: the program would read wrong data
 * (hostile_no_io_uring). So the engine does not start where a keeper does
 * not work (dd_keeper_works, engine.c); the poll() and read() fallbacks
 * only serve a ring that fails later, and a fork()ed child's guard.
 *
 * Locking: none. A keeper belongs to the thread that made it: the
 * registered ring fd is that thread's (an io_uring_enter from another
 * thread would find no ring), and liburing's queue is single-issuer.
 */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"
#include "keeper.h"

/* Linux 6.8; liburing 2.3's headers predate it (uapi.h has no room for
 * io_uring): install fixed file sqe->fd as a new O_CLOEXEC descriptor. */
#define DD_IORING_OP_FIXED_FD_INSTALL 54
/* Linux 6.3: io_uring_register()'s fd is the index of a registered ring */
#define DD_IORING_REGISTER_USE_REGISTERED_RING (1U << 31)

/* Completion tags. */
enum { K_POLL = 1, K_READ = 2, K_INSTALL = 3, K_EXTRA = 4 };

/* Account for one completion; returns its tag and *res its result. */
static uint64_t seen(struct dd_keeper *k, struct io_uring_cqe *cqe, int *res)
{
	uint64_t what = io_uring_cqe_get_data64(cqe);

	*res = cqe->res;
	io_uring_cqe_seen(&k->ring, cqe);
	if (what == K_POLL)
		k->polled = false;
	else if (what == K_EXTRA)
		k->extra_polled = false;
	return what;
}

/* Wait for the completion tagged tag; returns its result, or -errno. */
static int wait_for(struct dd_keeper *k, uint64_t tag)
{
	for (;;) {
		struct io_uring_cqe *cqe;
		int r = io_uring_wait_cqe(&k->ring, &cqe), res;
		if (r == -EINTR)
			continue;
		if (r < 0)
			return r;
		if (seen(k, cqe, &res) == tag)
			return res;
	}
}

static struct io_uring_sqe *get_sqe(struct dd_keeper *k)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&k->ring);
	if (!sqe && io_uring_submit(&k->ring) >= 0)
		sqe = io_uring_get_sqe(&k->ring);
	return sqe;   /* NULL: the caller falls back to the number */
}

/* Submit one operation on the fixed uffd and wait for its result. */
static int do_fixed(struct dd_keeper *k, struct io_uring_sqe *sqe, uint64_t tag)
{
	sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, tag);
	int r = io_uring_submit(&k->ring);
	return r < 0 ? r : wait_for(k, tag);
}

/* The uffd at a new O_CLOEXEC number (the caller adopts it), or -errno. */
int dd_keeper_install(struct dd_keeper *k)
{
	struct io_uring_sqe *sqe = k->have ? get_sqe(k) : NULL;

	if (!sqe)
		return -EBUSY;
	io_uring_prep_rw(DD_IORING_OP_FIXED_FD_INSTALL, sqe, 0, NULL, 0, 0);
	sqe->flags = 0;
	return do_fixed(k, sqe, K_INSTALL);
}

/*
 * Make the ring and put uffd in its fixed-file table; false if there is no
 * ring (the caller then uses poll() and read() on the number). Call from
 * the thread that will use it.
 */
bool dd_keeper_init(struct dd_keeper *k, int uffd)
{
	memset(k, 0, sizeof(*k));
	if (io_uring_queue_init(4, &k->ring, 0) < 0)
		return false;
	if (io_uring_register_files(&k->ring, &uffd, 1) < 0 ||
	    io_uring_register_ring_fd(&k->ring) != 1) {
		io_uring_queue_exit(&k->ring);
		return false;
	}
	dd_sys_close(k->ring.ring_fd);
	k->ring.ring_fd = -1;
	io_uring_ring_dontfork(&k->ring);
	k->have = true;
	int fd = dd_keeper_install(k);
	if (fd >= 0) {
		dd_sys_close(fd);
		k->recoverable = true;
	}
	return true;
}

/*
 * Read messages from the fixed uffd. Never waits: -EAGAIN when nothing is
 * pending. Not the uffd's O_NONBLOCK but RWF_NOWAIT says so to io_uring,
 * which otherwise waits for a pollable file to become readable. Returns
 * bytes read, -errno, or -ENOSYS where the ring cannot read: the caller
 * read()s the number then, once it knows the number is ours.
 */
ssize_t dd_keeper_read(struct dd_keeper *k, void *buf, size_t len)
{
	struct io_uring_sqe *sqe = k->have && !k->no_nowait ? get_sqe(k) : NULL;

	if (!sqe)
		return -ENOSYS;
	io_uring_prep_read(sqe, 0, buf, (unsigned)len, 0);
	sqe->rw_flags = RWF_NOWAIT;
	int r = do_fixed(k, sqe, K_READ);
	if (r == -EOPNOTSUPP || r == -EINVAL) {
		k->no_nowait = true;
		dd_debug("io_uring read of the uffd with RWF_NOWAIT: errno %d; using read()", -r);
		return -ENOSYS;
	}
	return r;
}

/*
 * Wait until the uffd is readable (a poll of the fixed file: it needs no
 * number) or, if extra_fd >= 0, extra_fd is (a poll of that number: the
 * caller checks it is ours first; the poll holds the file it found), at
 * most timeout_ms (-1: no limit). A signal ends the wait early. Returns 1
 * when the uffd is readable, 2 when extra_fd's poll ended (readable, or the
 * file went), 0 when the time ran out, -errno if the ring failed (the
 * caller goes on with poll()).
 */
int dd_keeper_wait(struct dd_keeper *k, int extra_fd, int timeout_ms)
{
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;

	if (!k->polled) {
		if (!(sqe = get_sqe(k)))
			return -EBUSY;
		io_uring_prep_poll_add(sqe, 0, POLLIN);
		sqe->flags |= IOSQE_FIXED_FILE;
		io_uring_sqe_set_data64(sqe, K_POLL);
		k->polled = true;
	}
	if (extra_fd >= 0 && !k->extra_polled) {
		if (!(sqe = get_sqe(k)))
			return -EBUSY;
		io_uring_prep_poll_add(sqe, extra_fd, POLLIN);
		io_uring_sqe_set_data64(sqe, K_EXTRA);
		k->extra_polled = true;
	}
	/* submit and wait in one system call (the engine's reader comes here
	 * once per run merge.c places); a signal may end the wait, or come
	 * before the submission: submit again */
	struct __kernel_timespec ts = { timeout_ms / 1000, (long long)(timeout_ms % 1000) * 1000000 };
	for (;;) {
		int r;
		if (io_uring_sq_ready(&k->ring))
			r = timeout_ms < 0 ? io_uring_submit_and_wait(&k->ring, 1)
					   : io_uring_submit_and_wait_timeout(&k->ring, &cqe, 1, &ts, NULL);
		else
			r = timeout_ms < 0 ? io_uring_wait_cqe(&k->ring, &cqe)
					   : io_uring_wait_cqe_timeout(&k->ring, &cqe, &ts);
		if (r == -EINTR || r == -ETIME)
			return io_uring_sq_ready(&k->ring) && io_uring_submit(&k->ring) < 0 ? -EIO : 0;
		if (r < 0)
			return r;
		if (io_uring_peek_cqe(&k->ring, &cqe) != 0)
			continue;
		int res;
		uint64_t what = seen(k, cqe, &res);
		if (what == K_EXTRA)
			return 2;
		if (what == K_POLL)
			return res < 0 ? res : 1;
	}
}

/*
 * Can a keeper hold uffd here and give it a new number (a ring, the uffd in
 * it, FIXED_FD_INSTALL)? Made in the calling thread and released at once.
 */
bool dd_keeper_works(int uffd)
{
	struct dd_keeper k;
	bool ok = dd_keeper_init(&k, uffd) && k.recoverable;

	dd_keeper_exit(&k);
	return ok;
}

/*
 * *var, adopted (fds.c), is the number of the kept uffd: if the program
 * closed it by a raw system call (and may have opened a file of its own
 * there), install the uffd at a new number and adopt that. false: it cannot
 * be had again (no ring, or a kernel before 6.8).
 */
bool dd_keeper_renumber(struct dd_keeper *k, int *var)
{
	if (dd_fd_intact(*var))
		return true;
	if (!k->recoverable)
		return false;
	int fd = dd_keeper_install(k);
	if (fd < 0)
		return false;
	dd_fd_forget(var);
	return dd_fd_adopt(var, fd) >= 0;   /* the file kept its tag */
}

void dd_keeper_exit(struct dd_keeper *k)
{
	if (k->have) {
		/* The registered ring fd holds the ring (and so the uffd) until
		 * it is unregistered or the thread exits. liburing 2.3 would
		 * unregister it through ring_fd, which we closed: do it by its
		 * index (Linux 6.3), so that the uffd goes now
		 * (tests/probe/probe_uffd_keeper.c, fact 4). */
		struct io_uring_rsrc_update up = { .offset = k->ring.enter_ring_fd };
		(void)syscall(__NR_io_uring_register, k->ring.enter_ring_fd,
			      IORING_UNREGISTER_RING_FDS | DD_IORING_REGISTER_USE_REGISTERED_RING, &up, 1);
		io_uring_queue_exit(&k->ring);
	}
	k->have = k->recoverable = false;
}
