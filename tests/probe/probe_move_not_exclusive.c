/* SPDX-License-Identifier: MIT */
/*
 * probe_move_not_exclusive - UFFDIO_MOVE refuses a page that was shared
 * copy-on-write with a forked child, and keeps refusing it after the child
 * is gone, until the parent writes the page.
 *
 * Pinned down (this kernel, Linux 6.18; see tests/probe/KERNEL-NOTES.md -
 * kernel-facts.md expected the move to succeed once the child had exited):
 *  - control: before the fork the page moves (and moves back);
 *  - fork() clears the page's PageAnonExclusive flag. While the child is
 *    alive and has not written the page, UFFDIO_MOVE of the page in the
 *    parent fails with EBUSY, `move` == -EBUSY, nothing moves;
 *  - after the child has exited and been reaped (waitpid), the same move
 *    STILL fails with EBUSY and moves nothing: the parent is the only
 *    mapper again, but the exit does not restore the flag (pagemap's
 *    "exclusively mapped" bit 56, printed, is set again here: it does not
 *    predict movability);
 *  - the parent then writes the page once (A[0] = A[0]). That is a write
 *    fault (the fork left the PTE read-only for COW; RUSAGE_THREAD minflt
 *    goes up) that raises no uffd message; seen here: the kernel reuses the
 *    page in place (same PFN, printed as root, not asserted) and marks it
 *    exclusive again. After it the move succeeds: `move` == 4096, the source
 *    PTE is empty and the destination holds the content.
 * UFFD_FEATURE_EVENT_FORK is deliberately not requested (libdedup does not
 * use it; without it the child's VMAs are simply unregistered).
 *
 * Why libdedup depends on it: applications fork (e.g. redis BGSAVE). A page
 * shared with a child must never be moved out from under the parent's
 * mapping only; libdedup relies on the EBUSY to count such a page as skipped
 * (pinned/shared, dd_cnt.skipped_pinned) and leave it alone. It must also
 * not assume that a page becomes movable when the child exits: a page the
 * parent has not written since the fork stays EBUSY (skipped again on every
 * pass) until the application writes it.
 *
 * The child only waits on a pipe (bounded by alarm()) and exits; it never
 * touches the page. The parent is bounded by alarm() too (a write that
 * unexpectedly blocked on a userfault would otherwise hang).
 */
#include "tcommon.h"

#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>

#define FEATURES                                                           \
	((uint64_t)(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_EVENT_REMOVE | \
		    UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_MOVE))

#define PM_PFN_MASK ((1ULL << 55) - 1)

static int pagemap_fd = -1;

/* @addr's entry in /proc/self/pagemap (PFN bits read as 0 unless root). */
static uint64_t pagemap_entry(const void *addr)
{
	uint64_t e = 0;
	if (pagemap_fd < 0)
		pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	CHECK(pagemap_fd >= 0);
	CHECK(pread(pagemap_fd, &e, 8, (off_t)((uintptr_t)addr / T_PAGE) * 8) == 8);
	return e;
}

static int present(const void *addr)
{
	return (int)(pagemap_entry(addr) >> 63);
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
		alarm((unsigned)t_cap() + 30); /* never outlive a broken parent */
		close(go[1]);
		close(ready[0]);
		close(uffd);
		if (write(ready[1], "r", 1) != 1)
			_exit(2);
		/* Wait for the parent; never touch A. */
		_exit(read(go[0], &c, 1) == 1 ? 0 : 3);
	}
	atexit(kill_child);
	alarm((unsigned)t_cap() + 60); /* bound the parent too (before the ctest timeout) */
	close(go[0]);
	close(ready[1]);
	struct pollfd pr = { .fd = ready[0], .events = POLLIN };
	CHECK(poll(&pr, 1, t_cap_ms()) == 1);
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
	for (double t0 = t_now(); w == 0 && t_now() - t0 < t_cap();) {
		w = waitpid(child, &status, WNOHANG);
		if (w == 0)
			usleep(1000);
	}
	CHECK(w == child);
	child = -1;
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

	/* Child gone: the move still fails with EBUSY, nothing moved. */
	uint64_t ent = pagemap_entry(A);
	errno = 0;
	r = do_move(uffd, S, A, T_PAGE, &moved);
	printf("move after child exit (pagemap excl bit %d): ret %d errno %d (%s) "
	       "move %lld\n",
	       (int)((ent >> 56) & 1), r, errno, strerror(errno), (long long)moved);
	CHECK(r == -1 && errno == EBUSY && moved == -EBUSY);
	CHECK(present(A) && !present(S));
	CHECK(memcmp(A, pattern, T_PAGE) == 0);
	/* ... and it is not a transient state: a second try fails the same way. */
	usleep(10 * 1000);
	errno = 0;
	r = do_move(uffd, S, A, T_PAGE, &moved);
	CHECK(r == -1 && errno == EBUSY && moved == -EBUSY);
	CHECK(present(A) && !present(S));

	/*
	 * The parent writes the page once: a write fault (no uffd-wp bit on the
	 * PTE, so no uffd message); record whether the page was reused in place
	 * (same PFN) or copied.
	 */
	CHECK(((ent >> 57) & 1) == 0);
	uint64_t pfn0 = ent & PM_PFN_MASK;
	struct rusage ru0, ru1;
	CHECK(getrusage(RUSAGE_THREAD, &ru0) == 0);
	volatile unsigned char *v = A;
	v[0] = v[0];
	CHECK(getrusage(RUSAGE_THREAD, &ru1) == 0);
	long faults = ru1.ru_minflt - ru0.ru_minflt;
	uint64_t ent2 = pagemap_entry(A);
	uint64_t pfn1 = ent2 & PM_PFN_MASK;
	struct pollfd pu = { .fd = uffd, .events = POLLIN };
	CHECK(poll(&pu, 1, 100) == 0); /* no uffd message */
	printf("parent write A[0] = A[0]: %ld minor fault(s), PFN %s (0x%llx -> 0x%llx)\n",
	       faults,
	       pfn0 == 0 ? "not visible (not root)" :
	       pfn0 == pfn1 ? "unchanged: COW reuse" : "changed: COW copy",
	       (unsigned long long)pfn0, (unsigned long long)pfn1);
	CHECK(faults >= 1);
	CHECK(ent2 >> 63);
	CHECK(memcmp(A, pattern, T_PAGE) == 0);

	/* Now the move succeeds. */
	errno = 0;
	r = do_move(uffd, S, A, T_PAGE, &moved);
	printf("move after the parent's write: ret %d errno %d (%s) move %lld\n", r,
	       errno, strerror(errno), (long long)moved);
	CHECK(r == 0 && moved == (int64_t)T_PAGE);
	CHECK(!present(A) && present(S));
	CHECK(memcmp(S, pattern, T_PAGE) == 0);

	close(uffd);
	munmap(base, 3 * T_PAGE);
	munmap(S, T_PAGE);
	printf("PASS: shared-with-child page: EBUSY while the child lives, EBUSY after "
	       "it exited, movable after one parent write\n");
	return T_PASS;
}
