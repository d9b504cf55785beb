/* SPDX-License-Identifier: MIT */
/*
 * test_pinned: a page pinned by the kernel (an io_uring registered buffer,
 * pinned with FOLL_PIN) is never merged, and a device read into it after
 * the merge pass lands where the program reads it.
 *
 * Write protection does not stop a pinned page's writer (the device writes
 * the physical page directly); replacing such a page's mapping would orphan
 * those writes. With DEDUP_TEST_UNSAFE_NO_PIN_CHECK=1 (the naive protocol)
 * this test must FAIL: CTest runs it that way too, expecting failure, to
 * show the test catches the bug it is about.
 */
#include <liburing.h>

#include "tdedup.h"

int main(void)
{
	const size_t N = 16;
	char *buf = t_map_anon(N * T_PAGE);
	char dup[T_PAGE], data[T_PAGE];
	struct io_uring ring;

	t_fill(dup, 5);
	t_fill(data, 77);
	for (size_t i = 0; i < N; i++)
		memcpy(buf + i * T_PAGE, dup, T_PAGE);

	/* a file holding the bytes the "device" will write */
	char path[] = "/tmp/dedup-pinned-XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0);
	unlink(path);
	CHECK(write(fd, data, T_PAGE) == (ssize_t)T_PAGE);

	if (io_uring_queue_init(4, &ring, 0) < 0)
		t_skip("io_uring not available");
	char *pinned = buf + 5 * T_PAGE;
	struct iovec iov = { pinned, T_PAGE };
	int r = io_uring_register_buffers(&ring, &iov, 1);
	if (r < 0)
		t_skip("io_uring_register_buffers: %s", strerror(-r));

	t_engine_start(3600000);
	CHECK(dedup_register(buf, N * T_PAGE) == 0);
	dedup_scan_now();
	dedup_scan_now();
	t_print_stats("after merge passes");
	struct dedup_stats st = t_stats();

	/* the device writes into the registered buffer */
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	io_uring_prep_read_fixed(sqe, fd, pinned, T_PAGE, 0, 0);
	CHECK(io_uring_submit(&ring) == 1);
	struct io_uring_cqe *cqe;
	CHECK(io_uring_wait_cqe(&ring, &cqe) == 0);
	CHECK(cqe->res == (int)T_PAGE);
	io_uring_cqe_seen(&ring, cqe);

	if (memcmp(pinned, data, T_PAGE) != 0) {
		fprintf(stderr, "LOST DATA: the read into the pinned buffer is not visible "
				"(the page was replaced while pinned)\n");
		return T_FAIL;
	}
	CHECK(st.skipped_pinned >= 1);
	CHECK(st.pages_sharing == N - 1);   /* everything else merged */
	for (size_t i = 0; i < N; i++)
		if (i != 5)
			CHECK(memcmp(buf + i * T_PAGE, dup, T_PAGE) == 0);
	io_uring_unregister_buffers(&ring);
	CHECK(dedup_shutdown() == 0);
	return T_PASS;
}
