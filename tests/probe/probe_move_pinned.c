/* SPDX-License-Identifier: MIT */
/*
 * probe_move_pinned - UFFDIO_MOVE refuses a FOLL_PIN-pinned page.
 *
 * Fact (kernel-facts.md, "Pinned pages"): UFFDIO_MOVE fails with EBUSY on a
 * page that is pinned (folio_maybe_dma_pinned), e.g. an io_uring registered
 * (fixed) buffer, and moves nothing; once the buffer is unregistered the same
 * move succeeds. A device/kernel write through the pin (io_uring READ_FIXED)
 * after the failed move still lands in the page the application maps.
 *
 * Why libdedup depends on it: write-protection does not stop writes through
 * an existing pin, so replacing a pinned page would send those writes to a
 * page nobody maps any more (lost data). libdedup first moves the page out
 * of the application's range with UFFDIO_MOVE: the EBUSY is its only
 * pin detector. If a failed move touched anything, or the pinned writes
 * went elsewhere, the protocol would lose data.
 *
 * Layout: A is the middle page of a 3-page anonymous range registered
 * MODE_MISSING|MODE_WP; S is an empty anonymous page registered MODE_MISSING
 * with the same uffd. Empty pages are never read directly (a read of an
 * empty MISSING-registered page would block): presence is read from
 * /proc/self/pagemap. THP is disabled on the ranges (MADV_NOHUGEPAGE) so the
 * page is an order-0 folio.
 * Skips (77) if io_uring is unavailable (ENOSYS/EPERM) or UFFD_FEATURE_MOVE
 * is missing.
 */
#include "tcommon.h"

#include <liburing.h>

#define FEATURES                                                           \
	((uint64_t)(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_EVENT_REMOVE | \
		    UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_MOVE))

static int pagemap_fd = -1;

/* Is the PTE of @addr present (bit 63 of its /proc/self/pagemap entry)? */
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

int main(void)
{
	static unsigned char pattern[T_PAGE], data[T_PAGE];
	struct io_uring ring;
	int64_t moved;
	uint64_t got = 0;

	if (access("/dev/userfaultfd", F_OK) != 0)
		t_skip("/dev/userfaultfd does not exist");
	int uffd = t_uffd_open(FEATURES, &got);
	if (uffd < 0 && errno == EINVAL)
		t_skip("UFFDIO_API refused features 0x%llx (no UFFD_FEATURE_MOVE?)",
		       (unsigned long long)FEATURES);
	CHECK(uffd >= 0);

	int r = io_uring_queue_init(8, &ring, 0);
	if (r == -ENOSYS || r == -EPERM)
		t_skip("io_uring unavailable: %s", strerror(-r));
	CHECK(r == 0);

	t_fill(pattern, 11);
	t_fill(data, 12);

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
	CHECK(present(A) && !present(S));

	/* A file to read from with READ_FIXED. */
	int memfd = memfd_create("probe_move_pinned", MFD_CLOEXEC);
	CHECK(memfd >= 0);
	CHECK(pwrite(memfd, data, T_PAGE, 0) == (ssize_t)T_PAGE);

	/* Pin A: io_uring fixed buffer (FOLL_PIN | FOLL_LONGTERM). */
	struct iovec iov = { .iov_base = A, .iov_len = T_PAGE };
	r = io_uring_register_buffers(&ring, &iov, 1);
	if (r == -ENOMEM)
		t_skip("io_uring_register_buffers: ENOMEM (RLIMIT_MEMLOCK?)");
	CHECK(r == 0);

	/* 1. The move of the pinned page fails with EBUSY, nothing moved. */
	errno = 0;
	r = do_move(uffd, S, A, T_PAGE, &moved);
	printf("move of pinned page: ret %d errno %d (%s) move %lld\n", r,
	       errno, strerror(errno), (long long)moved);
	CHECK(r == -1 && errno == EBUSY);
	CHECK(moved == -EBUSY);
	CHECK(present(A) && !present(S));
	CHECK(memcmp(A, pattern, T_PAGE) == 0);

	/* 2. The pin still targets A's physical page: READ_FIXED lands in A. */
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	CHECK(sqe != NULL);
	io_uring_prep_read_fixed(sqe, memfd, A, T_PAGE, 0, 0);
	CHECK(io_uring_submit(&ring) == 1);
	struct io_uring_cqe *cqe = NULL;
	struct __kernel_timespec ts = { .tv_sec = (long long)t_cap() };
	r = io_uring_wait_cqe_timeout(&ring, &cqe, &ts);
	CHECK(r == 0 && cqe != NULL);
	printf("READ_FIXED res %d\n", cqe->res);
	CHECK(cqe->res == (int)T_PAGE);
	io_uring_cqe_seen(&ring, cqe);
	CHECK(memcmp(A, data, T_PAGE) == 0);
	CHECK(memcmp(base, pattern, T_PAGE) == 0);
	CHECK(memcmp(base + 2 * T_PAGE, pattern, T_PAGE) == 0);
	CHECK(!present(S));

	/* 3. Unpinned, the same move succeeds and carries A's content. */
	CHECK(io_uring_unregister_buffers(&ring) == 0);
	errno = 0;
	r = do_move(uffd, S, A, T_PAGE, &moved);
	printf("move after unregister: ret %d errno %d move %lld\n", r, errno,
	       (long long)moved);
	CHECK(r == 0);
	CHECK(moved == (int64_t)T_PAGE);
	CHECK(!present(A) && present(S));
	CHECK(memcmp(S, data, T_PAGE) == 0);
	CHECK(memcmp(base, pattern, T_PAGE) == 0);
	CHECK(memcmp(base + 2 * T_PAGE, pattern, T_PAGE) == 0);

	io_uring_queue_exit(&ring);
	close(memfd);
	close(uffd);
	munmap(base, 3 * T_PAGE);
	munmap(S, T_PAGE);
	printf("PASS\n");
	return T_PASS;
}
