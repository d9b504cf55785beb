/* SPDX-License-Identifier: MIT */
/*
 * probe_move_not_exclusive - UFFDIO_MOVE refuses a page shared COW with a
 * forked child.
 *
 * Fact (kernel-facts.md, "Pinned pages"): UFFDIO_MOVE fails with EBUSY on a
 * page that is not exclusively owned, e.g. an anonymous page still shared
 * copy-on-write with a forked child (fork clears PageAnonExclusive). Nothing
 * moves. Once the child has exited, the same move succeeds.
 * UFFD_FEATURE_EVENT_FORK is deliberately not requested (libdedup does not
 * use it; without it the child's VMAs are simply unregistered).
 *
 * Why libdedup depends on it: applications fork (e.g. redis BGSAVE). A page
 * shared with a child must not be moved out from under the parent's mapping
 * only: the EBUSY tells libdedup to leave the page alone (and retry later);
 * a move that "succeeded" here would break the COW sharing invariants.
 * libdedup retries such pages after the child is gone, so the second half
 * (success after the child exited) matters too.
 *
 * The child only waits on a pipe (bounded by alarm()) and exits; it never
 * touches the page.
 */
#include "tcommon.h"

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>

#define FEATURES                                                           \
	((uint64_t)(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_EVENT_REMOVE | \
		    UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_MOVE))

static int pagemap_fd = -1;

static int present(const void *addr)
{
	uint64_t e = 0;
	if (pagemap_fd < 0)
		pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	CHECK(pagemap_fd >= 0);
	CHECK(pread(pagemap_fd, &e, 8, (off_t)((uintptr_t)addr / T_PAGE) * 8) == 8);
	return (int)(e >> 63);
}

static int do_move(int uffd, void *dst, void *src, size_t len, int64_t *moved)
{
	struct uffdio_move mv = { .dst = (uintptr_t)dst, .src = (uintptr_t)src,
				  .len = len, .mode = 0 };
	int r = ioctl(uffd, UFFDIO_MOVE, &mv);
	*moved = mv.move;
	return r;
}

static pid_t child = -1;

static void kill_child(void)
{
	if (child > 0)
		kill(child, SIGKILL);
}

int main(void)
{
	static unsigned char pattern[T_PAGE];
	int64_t moved;
	uint64_t got = 0;

	if (access("/dev/userfaultfd", F_OK) != 0)
		t_skip("/dev/userfaultfd does not exist");
	int uffd = t_uffd_open(FEATURES, &got);
	if (uffd < 0 && errno == EINVAL)
		t_skip("UFFDIO_API refused features 0x%llx (no UFFD_FEATURE_MOVE?)",
		       (unsigned long long)FEATURES);
	CHECK(uffd >= 0);

	t_fill(pattern, 31);
	unsigned char *base = t_map_anon(3 * T_PAGE);
	unsigned char *A = base + T_PAGE;
	unsigned char *S = t_map_anon(T_PAGE);
	CHECK(madvise(base, 3 * T_PAGE, MADV_NOHUGEPAGE) == 0);
	CHECK(madvise(S, T_PAGE, MADV_NOHUGEPAGE) == 0);
	for (int i = 0; i < 3; i++)
		memcpy(base + i * T_PAGE, pattern, T_PAGE);
	CHECK(t_uffd_register(uffd, base, 3 * T_PAGE,
			      UFFDIO_REGISTER_MODE_MISSING |
				      UFFDIO_REGISTER_MODE_WP) == 0);
	CHECK(t_uffd_register(uffd, S, T_PAGE, UFFDIO_REGISTER_MODE_MISSING) == 0);

	/* Control: the page is movable before the fork (then move it back). */
	CHECK(do_move(uffd, S, A, T_PAGE, &moved) == 0 && moved == (int64_t)T_PAGE);
	CHECK(do_move(uffd, A, S, T_PAGE, &moved) == 0 && moved == (int64_t)T_PAGE);
	CHECK(present(A) && !present(S));
	CHECK(memcmp(A, pattern, T_PAGE) == 0);

	int go[2], ready[2];
	CHECK(pipe(go) == 0 && pipe(ready) == 0);
	fflush(stdout);
	child = fork();
	CHECK(child >= 0);
	if (child == 0) {
		char c = 0;
		alarm(10); /* never outlive a broken parent */
		close(go[1]);
		close(ready[0]);
		close(uffd);
		if (write(ready[1], "r", 1) != 1)
			_exit(2);
		/* Wait for the parent; never touch A. */
		_exit(read(go[0], &c, 1) == 1 ? 0 : 3);
	}
	atexit(kill_child);
	close(go[0]);
	close(ready[1]);
	struct pollfd pr = { .fd = ready[0], .events = POLLIN };
	CHECK(poll(&pr, 1, 5000) == 1);
	char c;
	CHECK(read(ready[0], &c, 1) == 1);

	/* While the child lives: EBUSY, nothing moved. */
	errno = 0;
	int r = do_move(uffd, S, A, T_PAGE, &moved);
	printf("move while shared with child: ret %d errno %d (%s) move %lld\n",
	       r, errno, strerror(errno), (long long)moved);
	CHECK(r == -1 && errno == EBUSY && moved == -EBUSY);
	CHECK(present(A) && !present(S));
	CHECK(memcmp(A, pattern, T_PAGE) == 0); /* a read does not un-share */

	/* Let the child exit and reap it (bounded). */
	CHECK(write(go[1], "g", 1) == 1);
	int status = 0;
	pid_t w = 0;
	for (int i = 0; i < 5000 && w == 0; i++) {
		w = waitpid(child, &status, WNOHANG);
		if (w == 0)
			usleep(1000);
	}
	CHECK(w == child);
	child = -1;
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

	/* Child gone: the same move succeeds. */
	errno = 0;
	r = do_move(uffd, S, A, T_PAGE, &moved);
	int e = errno;
	printf("move after child exit: ret %d errno %d (%s) move %lld\n", r,
	       e, strerror(e), (long long)moved);
	if (r != 0) {
		/*
		 * Diagnostic only (the assertion below still fails): does a
		 * write by the now sole owner make the page movable again?
		 */
		volatile unsigned char *v = A;
		v[0] = v[0];
		errno = 0;
		int r2 = do_move(uffd, S, A, T_PAGE, &moved);
		fprintf(stderr,
			"diagnostic: after a parent write to A the move returns %d errno %d (%s) move %lld\n",
			r2, errno, strerror(errno), (long long)moved);
		errno = e;
	}
	CHECK(r == 0 && moved == (int64_t)T_PAGE);
	CHECK(!present(A) && present(S));
	CHECK(memcmp(S, pattern, T_PAGE) == 0);

	close(uffd);
	munmap(base, 3 * T_PAGE);
	munmap(S, T_PAGE);
	printf("PASS\n");
	return T_PASS;
}
