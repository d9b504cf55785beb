/* SPDX-License-Identifier: MIT */
/*
 * probe_move_semantics - what UFFDIO_MOVE requires and what it leaves behind.
 *
 * Facts (kernel-facts.md, "Pinned pages" section):
 *  - destination PTE populated -> EEXIST; source not present (no
 *    ALLOW_SRC_HOLES) -> ENOENT; on failure `move` holds -errno;
 *  - success: `move` == len, the destination holds the content, the source
 *    PTE is empty;
 *  - after moving A out of a range registered MODE_WP only, a read of A
 *    returns zeros with no fault message and a write lands in a fresh zero
 *    page (silently wrong data);
 *  - with A registered MODE_MISSING|MODE_WP, after the move a reader of A
 *    blocks on a MISSING fault (flags without WRITE/WP for a read); after
 *    mmap(MAP_FIXED|MAP_PRIVATE) of a memfd page at A and UFFDIO_WAKE(A) the
 *    reader resumes and sees the memfd content;
 *  - a multi-page move that meets an absent source page in the middle stops
 *    there: the ioctl fails with EAGAIN and `move` reports the bytes moved
 *    before it (pages before it moved, pages from it on untouched). If the
 *    very first page is absent: ENOENT, move == -ENOENT.
 *  - a page of an mlock()ed VMA does not move into an unlocked one (EINVAL,
 *    nothing moved): unmerge spans (merge.c,
 *    um_gaps_out) rely on a page locked after their smaps read staying put.
 *
 * Why libdedup depends on it: libdedup moves a page out of the application's
 * range (to detect pins and to own the old page) before mapping the merged
 * page there. It must register MODE_MISSING|MODE_WP for that window, or an
 * application access in between would silently see zeros. The EAGAIN/`move`
 * result of a batched move tells it which page of a run failed.
 *
 * Empty MISSING-registered pages are never read directly by the main thread
 * (that would block); presence comes from /proc/self/pagemap. Accesses that
 * could block run in threads with timeouts. THP is disabled on the ranges.
 */
#include "probe.h"

#include <poll.h>
#include <sys/syscall.h>
#include <pthread.h>
#include <stdatomic.h>

#define FEATURES                                                           \
	((uint64_t)(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_EVENT_REMOVE | \
		    UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_MOVE))
#define MODE_MW (UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP)

static int uffd;
static int pagemap_fd = -1;
static unsigned char pattern[T_PAGE], zero[T_PAGE];

static int present(const void *addr)
{
	uint64_t e = 0;
	if (pagemap_fd < 0)
		pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	CHECK(pagemap_fd >= 0);
	CHECK(pread(pagemap_fd, &e, 8, (off_t)((uintptr_t)addr / T_PAGE) * 8) == 8);
	return (int)(e >> 63);
}

static int do_move(void *dst, void *src, size_t len, uint64_t mode,
		   int64_t *moved)
{
	struct uffdio_move mv = { .dst = (uintptr_t)dst, .src = (uintptr_t)src,
				  .len = len, .mode = mode };
	int r = ioctl(uffd, UFFDIO_MOVE, &mv);
	*moved = mv.move;
	return r;
}

static unsigned char *map_nothp(size_t len)
{
	unsigned char *p = t_map_anon(len);
	CHECK(madvise(p, len, MADV_NOHUGEPAGE) == 0);
	return p;
}

/* A thread that copies a page out (read) or stores one byte (write). */
struct access {
	volatile unsigned char *addr;
	int write;
	unsigned char val;
	unsigned char copy[T_PAGE];
	atomic_int done;
};

static void *access_fn(void *arg)
{
	struct access *a = arg;
	if (a->write)
		a->addr[0] = a->val;
	for (size_t i = 0; i < T_PAGE; i++)
		a->copy[i] = a->addr[i];
	atomic_store(&a->done, 1);
	return NULL;
}

/* Run an access that must not block; fail (not hang) if it does. */
static void access_nonblocking(struct access *a)
{
	pthread_t t;
	struct uffd_msg m;
	atomic_store(&a->done, 0);
	CHECK(pthread_create(&t, NULL, access_fn, a) == 0);
	if (!wait_flag(&a->done, t_cap_ms())) {
		int got = uffd_try_msg(uffd, 0, &m);
		fprintf(stderr, "access blocked (msg %d event %u flags 0x%llx)\n",
			got, got ? m.event : 0,
			got ? (unsigned long long)m.arg.pagefault.flags : 0ULL);
		CHECK(!"access to the moved-out page did not block");
	}
	CHECK(pthread_join(t, NULL) == 0);
}

static void test_errors(void)
{
	int64_t moved;
	unsigned char *src = map_nothp(2 * T_PAGE);
	unsigned char *dst = map_nothp(2 * T_PAGE);
	memcpy(src, pattern, T_PAGE); /* src[0] present, src[1] absent */
	memset(dst, 0x77, T_PAGE);    /* dst[0] present, dst[1] absent */
	CHECK(t_uffd_register(uffd, src, 2 * T_PAGE, MODE_MW) == 0);
	CHECK(t_uffd_register(uffd, dst, 2 * T_PAGE,
			      UFFDIO_REGISTER_MODE_MISSING) == 0);
	CHECK(present(src) && !present(src + T_PAGE));
	CHECK(present(dst) && !present(dst + T_PAGE));

	/* Destination populated: EEXIST, nothing changes. */
	errno = 0;
	int r = do_move(dst, src, T_PAGE, 0, &moved);
	printf("dst populated: ret %d errno %d move %lld\n", r, errno,
	       (long long)moved);
	CHECK(r == -1 && errno == EEXIST && moved == -EEXIST);
	CHECK(memcmp(src, pattern, T_PAGE) == 0);
	for (size_t i = 0; i < T_PAGE; i++)
		CHECK(dst[i] == 0x77);

	/* Source absent: ENOENT, nothing changes. */
	errno = 0;
	r = do_move(dst + T_PAGE, src + T_PAGE, T_PAGE, 0, &moved);
	printf("src absent: ret %d errno %d move %lld\n", r, errno,
	       (long long)moved);
	CHECK(r == -1 && errno == ENOENT && moved == -ENOENT);
	CHECK(!present(src + T_PAGE) && !present(dst + T_PAGE));

	/* Success: move == len, content at dst, src PTE empty. */
	errno = 0;
	r = do_move(dst + T_PAGE, src, T_PAGE, 0, &moved);
	CHECK(r == 0 && moved == (int64_t)T_PAGE);
	CHECK(!present(src) && present(dst + T_PAGE));
	CHECK(memcmp(dst + T_PAGE, pattern, T_PAGE) == 0);
	for (size_t i = 0; i < T_PAGE; i++)
		CHECK(dst[i] == 0x77);
	struct uffd_msg m;
	CHECK(uffd_try_msg(uffd, 0, &m) == 0);

	munmap(src, 2 * T_PAGE);
	munmap(dst, 2 * T_PAGE);
}

/* Moved out of a range registered MODE_WP only: zeros, no fault message. */
static void test_wp_only(void)
{
	int64_t moved;
	struct uffd_msg m;
	unsigned char *base = map_nothp(3 * T_PAGE);
	unsigned char *A = base + T_PAGE;
	unsigned char *S = map_nothp(T_PAGE);
	for (int i = 0; i < 3; i++)
		memcpy(base + i * T_PAGE, pattern, T_PAGE);
	CHECK(t_uffd_register(uffd, base, 3 * T_PAGE, UFFDIO_REGISTER_MODE_WP) == 0);
	CHECK(t_uffd_register(uffd, S, T_PAGE, UFFDIO_REGISTER_MODE_MISSING) == 0);

	CHECK(do_move(S, A, T_PAGE, 0, &moved) == 0 && moved == (int64_t)T_PAGE);
	CHECK(!present(A) && present(S));
	CHECK(memcmp(S, pattern, T_PAGE) == 0);

	static struct access a;
	memset(&a, 0, sizeof(a));
	a.addr = A;
	access_nonblocking(&a); /* read */
	CHECK(memcmp(a.copy, zero, T_PAGE) == 0);
	CHECK(uffd_try_msg(uffd, 0, &m) == 0);

	a.write = 1;
	a.val = 0xab;
	access_nonblocking(&a); /* write */
	CHECK(a.copy[0] == 0xab);
	CHECK(memcmp(a.copy + 1, zero + 1, T_PAGE - 1) == 0);
	CHECK(uffd_try_msg(uffd, 0, &m) == 0);
	CHECK(present(A));
	CHECK(A[0] == 0xab && memcmp(A + 1, zero + 1, T_PAGE - 1) == 0);
	/* The moved page is S's now; neighbours untouched. */
	CHECK(memcmp(S, pattern, T_PAGE) == 0);
	CHECK(memcmp(base, pattern, T_PAGE) == 0);
	CHECK(memcmp(base + 2 * T_PAGE, pattern, T_PAGE) == 0);

	munmap(base, 3 * T_PAGE);
	munmap(S, T_PAGE);
}

/* Moved out of a MODE_MISSING|MODE_WP range: the reader waits for us. */
static void test_missing_wp(void)
{
	int64_t moved;
	struct uffd_msg m;
	static unsigned char mpat[T_PAGE];
	t_fill(mpat, 99);

	int memfd = memfd_create("probe_move_sem", MFD_CLOEXEC);
	CHECK(memfd >= 0);
	CHECK(pwrite(memfd, mpat, T_PAGE, 0) == (ssize_t)T_PAGE);

	unsigned char *base = map_nothp(3 * T_PAGE);
	unsigned char *A = base + T_PAGE;
	unsigned char *S = map_nothp(T_PAGE);
	for (int i = 0; i < 3; i++)
		memcpy(base + i * T_PAGE, pattern, T_PAGE);
	CHECK(t_uffd_register(uffd, base, 3 * T_PAGE, MODE_MW) == 0);
	CHECK(t_uffd_register(uffd, S, T_PAGE, UFFDIO_REGISTER_MODE_MISSING) == 0);

	CHECK(do_move(S, A, T_PAGE, 0, &moved) == 0 && moved == (int64_t)T_PAGE);
	CHECK(!present(A) && present(S));
	CHECK(memcmp(S, pattern, T_PAGE) == 0);

	static struct access a;
	memset(&a, 0, sizeof(a));
	a.addr = A;
	pthread_t t;
	CHECK(pthread_create(&t, NULL, access_fn, &a) == 0);
	CHECK(uffd_try_msg(uffd, t_cap_ms(), &m) == 1);
	printf("reader fault: event %u flags 0x%llx\n", m.event,
	       (unsigned long long)m.arg.pagefault.flags);
	CHECK(m.event == UFFD_EVENT_PAGEFAULT);
	CHECK((m.arg.pagefault.address & ~(T_PAGE - 1)) == (uintptr_t)A);
	CHECK((m.arg.pagefault.flags &
	       (UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP)) == 0);
	usleep(100 * 1000);
	CHECK(!atomic_load(&a.done));

	void *p = mmap(A, T_PAGE, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE,
		       memfd, 0);
	CHECK(p == (void *)A);
	usleep(100 * 1000);
	CHECK(!atomic_load(&a.done)); /* mmap does not wake */
	CHECK(t_uffd_wake(uffd, A, T_PAGE) == 0);
	CHECK(wait_flag(&a.done, t_cap_ms()));
	CHECK(pthread_join(t, NULL) == 0);
	CHECK(memcmp(a.copy, mpat, T_PAGE) == 0);
	CHECK(memcmp(A, mpat, T_PAGE) == 0);
	CHECK(uffd_try_msg(uffd, 0, &m) == 0);
	CHECK(memcmp(base, pattern, T_PAGE) == 0);
	CHECK(memcmp(base + 2 * T_PAGE, pattern, T_PAGE) == 0);

	close(memfd);
	munmap(base, 3 * T_PAGE);
	munmap(S, T_PAGE);
}

/* A run of 4 pages whose page 2 is absent; then one whose page 0 is. */
static void test_partial(void)
{
	int64_t moved;
	struct uffd_msg m;
	unsigned char *src = map_nothp(4 * T_PAGE);
	unsigned char *dst = map_nothp(4 * T_PAGE);
	for (int i = 0; i < 4; i++)
		if (i != 2)
			t_fill(src + i * T_PAGE, 200 + i);
	CHECK(t_uffd_register(uffd, src, 4 * T_PAGE, MODE_MW) == 0);
	CHECK(t_uffd_register(uffd, dst, 4 * T_PAGE,
			      UFFDIO_REGISTER_MODE_MISSING) == 0);

	errno = 0;
	int r = do_move(dst, src, 4 * T_PAGE, 0, &moved);
	int e = errno;
	printf("partial move: ret %d errno %d (%s) move %lld\n", r, e,
	       strerror(e), (long long)moved);
	CHECK(r == -1 && e == EAGAIN);
	CHECK(moved == (int64_t)(2 * T_PAGE));
	static unsigned char want[T_PAGE];
	for (int i = 0; i < 2; i++) {
		CHECK(!present(src + i * T_PAGE) && present(dst + i * T_PAGE));
		t_fill(want, 200 + i);
		CHECK(memcmp(dst + i * T_PAGE, want, T_PAGE) == 0);
	}
	CHECK(!present(src + 2 * T_PAGE) && !present(dst + 2 * T_PAGE));
	CHECK(present(src + 3 * T_PAGE) && !present(dst + 3 * T_PAGE));
	t_fill(want, 203);
	CHECK(memcmp(src + 3 * T_PAGE, want, T_PAGE) == 0);
	CHECK(uffd_try_msg(uffd, 0, &m) == 0);

	/* Now the run starts at the hole: nothing moves, ENOENT. */
	errno = 0;
	r = do_move(dst + 2 * T_PAGE, src + 2 * T_PAGE, 2 * T_PAGE, 0, &moved);
	e = errno;
	printf("move starting at hole: ret %d errno %d move %lld\n", r, e,
	       (long long)moved);
	CHECK(r == -1 && e == ENOENT && moved == -ENOENT);
	CHECK(present(src + 3 * T_PAGE) && !present(dst + 3 * T_PAGE));

	/* With ALLOW_SRC_HOLES the hole is skipped and counted. */
	errno = 0;
	r = do_move(dst + 2 * T_PAGE, src + 2 * T_PAGE, 2 * T_PAGE,
		    UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, &moved);
	printf("move with ALLOW_SRC_HOLES: ret %d errno %d move %lld\n", r, errno,
	       (long long)moved);
	CHECK(r == 0 && moved == (int64_t)(2 * T_PAGE));
	CHECK(!present(dst + 2 * T_PAGE));
	CHECK(!present(src + 3 * T_PAGE) && present(dst + 3 * T_PAGE));
	CHECK(memcmp(dst + 3 * T_PAGE, want, T_PAGE) == 0);

	munmap(src, 4 * T_PAGE);
	munmap(dst, 4 * T_PAGE);
}

/* VM_LOCKED must match on both sides (mm/userfaultfd.c, validate_move_areas). */
static void test_locked(void)
{
	int64_t moved;
	unsigned char *src = map_nothp(2 * T_PAGE);
	unsigned char *dst = map_nothp(2 * T_PAGE);
	t_fill(src, 210);
	t_fill(src + T_PAGE, 211);
	/* the system call: a sanitizer's mlock() interceptor does nothing */
	if (syscall(SYS_mlock, src, T_PAGE) != 0) {
		printf("mlock: %s: locked moves not probed\n", strerror(errno));
		goto out;
	}
	CHECK(t_uffd_register(uffd, src, 2 * T_PAGE, MODE_MW) == 0);
	CHECK(t_uffd_register(uffd, dst, 2 * T_PAGE, UFFDIO_REGISTER_MODE_MISSING) == 0);
	errno = 0;
	int r = do_move(dst, src, T_PAGE, 0, &moved);
	int e = errno;
	printf("move out of a locked VMA: ret %d errno %d (%s) move %lld\n", r, e, strerror(e),
	       (long long)moved);
	CHECK(r == -1 && e == EINVAL);
	CHECK(present(src) && !present(dst));
	static unsigned char want[T_PAGE];
	t_fill(want, 210);
	CHECK(memcmp(src, want, T_PAGE) == 0);
	syscall(SYS_munlock, src, T_PAGE);
out:
	munmap(src, 2 * T_PAGE);
	munmap(dst, 2 * T_PAGE);
}

int main(void)
{
	uint64_t got = 0;
	if (access("/dev/userfaultfd", F_OK) != 0)
		t_skip("/dev/userfaultfd does not exist");
	uffd = t_uffd_open(FEATURES, &got);
	if (uffd < 0 && errno == EINVAL)
		t_skip("UFFDIO_API refused features 0x%llx (no UFFD_FEATURE_MOVE?)",
		       (unsigned long long)FEATURES);
	CHECK(uffd >= 0);
	t_fill(pattern, 5);

	test_errors();
	test_wp_only();
	test_missing_wp();
	test_partial();
	test_locked();

	close(uffd);
	printf("PASS\n");
	return T_PASS;
}
