/* SPDX-License-Identifier: MIT */
/*
 * probe_uffd_api - the userfaultfd API handshake libdedup performs.
 *
 * Fact (kernel-facts.md, "userfaultfd on this kernel"): a uffd created via
 * /dev/userfaultfd + USERFAULTFD_IOC_NEW accepts UFFDIO_API with
 * UFFD_FEATURE_PAGEFAULT_FLAG_WP | EVENT_REMOVE | EVENT_REMAP | MOVE and
 * reports those bits back; after UFFDIO_REGISTER with MODE_MISSING|MODE_WP on
 * anonymous memory the returned ioctls bitmap contains WRITEPROTECT, WAKE
 * and MOVE (bit _UFFDIO_MOVE == 5).
 *
 * Why libdedup depends on it: the merge protocol write-protects a page
 * (WRITEPROTECT), moves it out of the application's range when it must
 * (MOVE), wakes blocked faulters after replacing the page (WAKE), and needs
 * the REMOVE/REMAP events to keep uffd-wp state intact across
 * MADV_DONTNEED and mremap. If the kernel stops offering any of these the
 * library must not start.
 *
 * Skips (77) if /dev/userfaultfd is absent or the kernel does not list one of
 * the features (the facility is missing, not misbehaving).
 */
#include "tcommon.h"

#ifndef _UFFDIO_MOVE
#define _UFFDIO_MOVE (0x05)
#endif

#define WANT_FEATURES                                                      \
	((uint64_t)(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_EVENT_REMOVE | \
		    UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_MOVE))

_Static_assert(_UFFDIO_MOVE == 5, "_UFFDIO_MOVE must be 5");
_Static_assert(UFFD_FEATURE_MOVE == (1 << 16), "UFFD_FEATURE_MOVE is bit 16");
_Static_assert(UFFDIO_MOVE == _IOWR(0xAA, 0x05, struct uffdio_move),
	       "UFFDIO_MOVE ioctl number");
_Static_assert(sizeof(struct uffdio_move) == 40, "struct uffdio_move size");

/* A fresh uffd straight from /dev/userfaultfd, no API handshake yet. */
static int dev_uffd(void)
{
	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0) {
		if (errno == ENOENT)
			t_skip("/dev/userfaultfd does not exist");
		CHECK(dev >= 0);
	}
	int fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
	CHECK(fd >= 0);
	close(dev);
	return fd;
}

int main(void)
{
	/* 1. What does the kernel offer at all? (features = 0 handshake) */
	int fd = dev_uffd();
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	CHECK(ioctl(fd, UFFDIO_API, &api) == 0);
	CHECK(api.api == UFFD_API);
	printf("offered features 0x%llx ioctls 0x%llx\n",
	       (unsigned long long)api.features, (unsigned long long)api.ioctls);
	close(fd);
	if ((api.features & WANT_FEATURES) != WANT_FEATURES)
		t_skip("kernel lacks uffd features 0x%llx",
		       (unsigned long long)(WANT_FEATURES & ~api.features));

	/* 2. The handshake libdedup does: the requested bits come back. */
	fd = dev_uffd();
	memset(&api, 0, sizeof(api));
	api.api = UFFD_API;
	api.features = WANT_FEATURES;
	CHECK(ioctl(fd, UFFDIO_API, &api) == 0);
	CHECK(api.api == UFFD_API);
	CHECK((api.features & WANT_FEATURES) == WANT_FEATURES);
	const uint64_t api_ioctls = (1ULL << _UFFDIO_REGISTER) |
				    (1ULL << _UFFDIO_UNREGISTER) |
				    (1ULL << _UFFDIO_API);
	CHECK((api.ioctls & api_ioctls) == api_ioctls);

	/* A second UFFDIO_API on the same fd is refused (one handshake). */
	struct uffdio_api again = { .api = UFFD_API, .features = 0 };
	errno = 0;
	CHECK(ioctl(fd, UFFDIO_API, &again) == -1 && errno == EINVAL);

	/* 3. Register anonymous memory MISSING|WP: per-range ioctls. */
	char *p = t_map_anon(4 * T_PAGE);
	t_fill(p, 1);
	struct uffdio_register reg = {
		.range = { .start = (uintptr_t)p, .len = 4 * T_PAGE },
		.mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP,
	};
	CHECK(ioctl(fd, UFFDIO_REGISTER, &reg) == 0);
	printf("range ioctls 0x%llx\n", (unsigned long long)reg.ioctls);
	CHECK(reg.ioctls & (1ULL << _UFFDIO_WRITEPROTECT));
	CHECK(reg.ioctls & (1ULL << _UFFDIO_WAKE));
	CHECK(reg.ioctls & (1ULL << _UFFDIO_MOVE));
	CHECK(reg.ioctls & (1ULL << _UFFDIO_COPY));

	/* The registration took effect: write-protect/unprotect work. */
	CHECK(t_uffd_wp(fd, p, T_PAGE, 1) == 0);
	CHECK(t_uffd_wp(fd, p, T_PAGE, 0) == 0);
	CHECK(t_uffd_wake(fd, p, T_PAGE) == 0);

	/* The same through the tcommon helper (the code path tests use). */
	uint64_t got = 0;
	int fd2 = t_uffd_open(WANT_FEATURES, &got);
	CHECK(fd2 >= 0);
	CHECK((got & WANT_FEATURES) == WANT_FEATURES);

	close(fd2);
	close(fd);
	munmap(p, 4 * T_PAGE);
	printf("PASS\n");
	return T_PASS;
}
