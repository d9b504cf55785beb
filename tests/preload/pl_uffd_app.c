/* SPDX-License-Identifier: MIT */
/*
 * pl_uffd_app - a program that uses userfaultfd itself keeps working: its
 * UFFDIO_REGISTER on memory libdedup had registered (and merged) succeeds
 * instead of failing with EBUSY, and its write-protect and missing faults
 * reach its own handler.
 */
#include <poll.h>

#include "pl.h"

#define NP 512

static int uffd;
static char *area;

/* Fault handler thread: un-protect WP faults, fill missing pages with 0x77. */
static void *handler(void *arg)
{
	static char fill[T_PAGE] __attribute__((aligned(4096)));
	memset(fill, 0x77, sizeof(fill));
	for (;;) {
		struct pollfd p = { uffd, POLLIN, 0 };
		if (poll(&p, 1, 10000) <= 0)
			return NULL;
		struct uffd_msg m;
		if (read(uffd, &m, sizeof(m)) != sizeof(m))
			continue;
		if (m.event != UFFD_EVENT_PAGEFAULT)
			continue;
		uintptr_t a = m.arg.pagefault.address & ~(T_PAGE - 1);
		if (m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
			CHECK(t_uffd_wp(uffd, (void *)a, T_PAGE, 0) == 0);
		} else {
			struct uffdio_copy c = { .dst = a, .src = (uintptr_t)fill, .len = T_PAGE };
			CHECK(ioctl(uffd, UFFDIO_COPY, &c) == 0);
		}
	}
}

static void *writer(void *arg)
{
	*(volatile char *)arg = 0x42;
	return NULL;
}

int main(void)
{
	pl_need_uffd();
	size_t len = NP * T_PAGE;
	area = t_map_anon(4 * len);
	for (int c = 0; c < 4; c++)
		pl_fill(area + c * len, NP, 61);
	pl_wait_merged(3 * NP * 9 / 10);

	uint64_t got;
	uffd = t_uffd_open(UFFD_FEATURE_PAGEFAULT_FLAG_WP, &got);
	CHECK(uffd >= 0);
	if (t_uffd_register(uffd, area, 4 * len,
			    UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP) != 0) {
		fprintf(stderr, "FAIL: the application's UFFDIO_REGISTER: %s\n", strerror(errno));
		return T_FAIL;
	}
	pthread_t h, w;
	CHECK(pthread_create(&h, NULL, handler, NULL) == 0);

	/* write-protect fault on page 3 of copy 1 reaches our handler */
	char *p = area + len + 3 * T_PAGE;
	CHECK(t_uffd_wp(uffd, p, T_PAGE, 1) == 0);
	CHECK(pthread_create(&w, NULL, writer, p) == 0);
	CHECK(pthread_join(w, NULL) == 0);
	CHECK(*p == 0x42);
	/* missing fault after discarding a page */
	char *q = area + 2 * len + 5 * T_PAGE;
	CHECK(madvise(q, T_PAGE, MADV_DONTNEED) == 0);
	CHECK(q[100] == 0x77);
	/* everything else intact */
	CHECK(pl_check(area, NP, 61));
	CHECK(pl_check(area + 3 * len, NP, 61));
	/* and libdedup still works elsewhere */
	uint64_t before = pl_stats().merges;
	char *b = t_map_anon(3 * len);
	for (int c = 0; c < 3; c++)
		pl_fill(b + c * len, NP, 62);
	pl_wait_merged(before + 2 * NP * 8 / 10);
	fprintf(stderr, "PASS\n");
	return T_PASS;
}
