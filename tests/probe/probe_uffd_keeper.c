/* SPDX-License-Identifier: MIT */
/*
 * probe_uffd_keeper.c - facts about a userfaultfd held in an io_uring's
 * fixed-file table, whose ring fd was registered with the thread
 * (io_uring_register_ring_fd) and then closed (libdedup/src/keeper.c):
 *  1. closing the uffd's only number does not release it: a fault in its
 *     registered range still blocks, and a poll of fixed file 0 sees the
 *     message;
 *  2. an RWF_NOWAIT read of the fixed file returns the message, and with
 *     nothing pending it returns -EAGAIN at once (it does not wait);
 *  3. IORING_OP_FIXED_FD_INSTALL (Linux 6.8) gives the uffd a new number,
 *     close-on-exec, on which UFFDIO_COPY resolves the fault;
 *  4. the registered ring fd holds the ring until it is unregistered
 *     (liburing 2.3 cannot: it asks through ring_fd, closed; by index with
 *     IORING_REGISTER_USE_REGISTERED_RING, Linux 6.3, it can) or the thread
 *     exits. Unregistered and unmapped (io_uring_queue_exit), the ring goes,
 *     and the registration with it - a fault no longer blocks - although a
 *     fork()ed child is alive: io_uring_ring_dontfork kept the ring's
 *     mappings, its only other hold, from the child;
 *  5. without io_uring_ring_dontfork that child keeps the ring, and with it
 *     the registration, until it exits: a fault blocks meanwhile.
 *
 * Why libdedup depends on it: the program may close every descriptor with a
 * raw close_range() that no interposer sees (a daemon's start-up). The
 * engine's uffd reader and a fork()ed child's guard keep their uffd this
 * way: released, it would drop every registration, and a merged page that
 * the program discards would read its merged content where anonymous
 * memory reads zeros (tests/preload/pl_daemon.c, raw fork). Fact 2 is how
 * they read without a number (the number may name the program's pipe by
 * now), fact 3 how they get a number for the ioctls again, fact 4 why a
 * fork()ed child cannot keep a parent's registrations alive unserved.
 */
#include "probe.h"

#include <liburing.h>
#include <sys/wait.h>

#define OP_FIXED_FD_INSTALL 54   /* Linux 6.8; liburing 2.3 predates it */

#define USE_REGISTERED_RING (1U << 31)   /* Linux 6.3 */

static struct io_uring ring;

/* A ring holding uffd as fixed file 0, its fd registered and closed. */
static void keeper(int uffd, bool dontfork)
{
	CHECK(io_uring_queue_init(4, &ring, 0) == 0);
	CHECK(io_uring_register_files(&ring, &uffd, 1) == 0);
	CHECK(io_uring_register_ring_fd(&ring) == 1);
	CHECK(close(ring.ring_fd) == 0);
	ring.ring_fd = -1;
	if (dontfork)
		CHECK(io_uring_ring_dontfork(&ring) == 0);
}

/* What keeper.c's dd_keeper_exit() does. */
static void keeper_exit(void)
{
	struct io_uring_rsrc_update up = { .offset = ring.enter_ring_fd };
	CHECK(syscall(__NR_io_uring_register, ring.enter_ring_fd,
		      IORING_UNREGISTER_RING_FDS | USE_REGISTERED_RING, &up, 1) == 1);
	io_uring_queue_exit(&ring);
}

static int ring_wait(uint64_t tag)
{
	for (;;) {
		struct io_uring_cqe *cqe;
		struct __kernel_timespec ts = { t_cap_ms() / 1000, 0 };
		int r = io_uring_wait_cqe_timeout(&ring, &cqe, &ts);
		if (r == -EINTR)
			continue;
		CHECK(r == 0);   /* -ETIME: nothing came within the cap */
		uint64_t what = io_uring_cqe_get_data64(cqe);
		int res = cqe->res;
		io_uring_cqe_seen(&ring, cqe);
		if (what == tag)
			return res;
	}
}

static int ring_fixed(struct io_uring_sqe *sqe, uint64_t tag)
{
	sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, tag);
	CHECK(io_uring_submit(&ring) == 1);
	return ring_wait(tag);
}

static int ring_read(void *buf, size_t len)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	io_uring_prep_read(sqe, 0, buf, (unsigned)len, 0);
	sqe->rw_flags = RWF_NOWAIT;
	return ring_fixed(sqe, 2);
}

static int ring_install(void)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	io_uring_prep_rw(OP_FIXED_FD_INSTALL, sqe, 0, NULL, 0, 0);
	return ring_fixed(sqe, 3);
}

static long touch(struct bg *b)
{
	return *(volatile char *)b->addr;
}

/* A uffd, range [a, a + len) registered MISSING, kept by a ring, its own
 * number closed. */
static void kept_uffd(char *a, size_t len, bool dontfork)
{
	int uffd = t_uffd_open(0, NULL);
	CHECK(uffd >= 0);
	keeper(uffd, dontfork);
	CHECK(t_uffd_register(uffd, a, len, UFFDIO_REGISTER_MODE_MISSING) == 0);
	CHECK(close(uffd) == 0);
}

/* Fork a child that lives until told; release the ring; does a fault at p
 * still block (the registration alive) after ms, the child alive? */
static bool blocks_with_child(char *p, int ms)
{
	int go[2];
	CHECK(pipe(go) == 0);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		char x;
		close(go[1]);
		_exit(read(go[0], &x, 1) == 0 ? 0 : 1);   /* until the parent says */
	}
	close(go[0]);
	keeper_exit();
	/* the ring's teardown runs in a kernel worker: a fault may block
	 * until it has run */
	struct bg b = { .op = touch, .addr = p };
	bg_start(&b);
	bool done = bg_done(&b, ms);
	close(go[1]);   /* the child exits: whatever it held goes */
	int st;
	CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	bg_join(&b);
	CHECK(b.ret == 0);
	return !done;
}

int main(void)
{
	int uffd = t_uffd_open(0, NULL);
	if (uffd < 0)
		t_skip("no userfaultfd: %s", strerror(errno));
	close(uffd);
	struct io_uring probe;
	if (io_uring_queue_init(4, &probe, 0) < 0)
		t_skip("no io_uring");
	io_uring_queue_exit(&probe);

	char *a = t_map_anon(4 * T_PAGE);
	kept_uffd(a, 4 * T_PAGE, true);

	/* 2: nothing pending: -EAGAIN at once */
	struct uffd_msg m;
	CHECK(ring_read(&m, sizeof(m)) == -EAGAIN);

	/* 1: a fault still blocks; the fixed file's poll sees it */
	struct bg b = { .op = touch, .addr = a };
	bg_start(&b);
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	io_uring_prep_poll_add(sqe, 0, POLLIN);
	int pr = ring_fixed(sqe, 1);
	CHECK(pr > 0 && (pr & POLLIN));
	CHECK(!bg_done(&b, 100));
	/* 2: the message, read from the fixed file */
	CHECK(ring_read(&m, sizeof(m)) == (int)sizeof(m));
	CHECK(m.event == UFFD_EVENT_PAGEFAULT && m.arg.pagefault.address / T_PAGE == (uintptr_t)a / T_PAGE);

	/* 3: a new number, close-on-exec; UFFDIO_COPY through it */
	int n = ring_install();
	if (n == -EINVAL || n == -EOPNOTSUPP)
		t_skip("no IORING_OP_FIXED_FD_INSTALL (Linux 6.8): %s", strerror(-n));
	CHECK(n >= 0);
	CHECK((fcntl(n, F_GETFD) & FD_CLOEXEC) != 0);
	char src[T_PAGE] __attribute__((aligned(T_PAGE)));
	memset(src, 0x6b, sizeof(src));
	struct uffdio_copy c = { .dst = (uintptr_t)a, .src = (uintptr_t)src, .len = T_PAGE };
	CHECK(ioctl(n, UFFDIO_COPY, &c) == 0);
	bg_join(&b);
	CHECK(b.ret == 0x6b);
	CHECK(close(n) == 0);

	/* 4: released, with a child alive: the registration goes. */
	if (blocks_with_child(a + T_PAGE, t_cap_ms())) {
		fprintf(stderr, "FAIL: fact 4: the registration outlived the ring\n");
		return T_FAIL;
	}
	/* 5: without dontfork, the child keeps it while it lives (2 s: a
	 * slow teardown can only make a release look kept, not the reverse) */
	char *a5 = t_map_anon(T_PAGE);
	kept_uffd(a5, T_PAGE, false);
	if (!blocks_with_child(a5, 2000)) {
		fprintf(stderr, "FAIL: fact 5: a child did not keep a ring without dontfork "
			"(io_uring_ring_dontfork no longer needed?)\n");
		return T_FAIL;
	}
	printf("PASS\n");
	return T_PASS;
}
