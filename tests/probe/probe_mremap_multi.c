/* SPDX-License-Identifier: MIT */
/*
 * probe_mremap_multi.c - mremap(MREMAP_MAYMOVE | MREMAP_FIXED) of a range
 * made of several VMAs, without resizing it: since Linux 6.17 the kernel
 * moves such a range one VMA at a time (before, EFAULT and nothing moved).
 * It stops with EFAULT at a VMA registered with a userfaultfd, and the VMAs
 * before that one stay moved: the call fails, yet part of the range is at
 * the destination and a hole is left at the source. Seen on Linux 6.18.
 *
 * Why libdedup depends on it: merged pieces are VMAs of our memfd,
 * registered with our userfaultfd (MINOR|MISSING). A program's mremap of a
 * merged range therefore never goes to the kernel as it is: the preload
 * library moves it piece by piece (preload/remap.c, emulate_mremap) when the
 * call moves (MREMAP_FIXED) or grows a range that holds a merged piece. Here:
 *   1. three VMAs, none registered: the kernel moves all or (before 6.17)
 *      fails with EFAULT having moved nothing;
 *   2. the same with the middle VMA registered: EFAULT, and either nothing
 *      moved (before 6.17) or exactly the first VMA moved (6.17 and later).
 * Anything else fails: a kernel that moves a registered VMA this way, or
 * loses a page, needs a new look at remap.c.
 */
#include "tcommon.h"

#include <sys/syscall.h>

static bool mapped(const char *p)
{
	unsigned char v;
	return mincore((void *)p, T_PAGE, &v) == 0;
}

/* 3 VMAs of one page each at a (the middle one MADV_DONTFORK), filled
 * 'A', 'B', 'C'; with uffd >= 0 the middle one registered MISSING. */
static char *three(int uffd)
{
	char *a = t_map_anon(3 * T_PAGE);
	for (int i = 0; i < 3; i++)
		a[i * T_PAGE] = (char)('A' + i);
	CHECK(madvise(a + T_PAGE, T_PAGE, MADV_DONTFORK) == 0);   /* a VMA of its own */
	if (uffd >= 0)
		CHECK(t_uffd_register(uffd, a + T_PAGE, T_PAGE, UFFDIO_REGISTER_MODE_MISSING) == 0);
	return a;
}

int main(void)
{
	char *a = three(-1);
	char *dst = mmap(NULL, 3 * T_PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(dst != MAP_FAILED);
	void *r = mremap(a, 3 * T_PAGE, 3 * T_PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	bool multi = r == dst;
	if (multi) {
		for (int i = 0; i < 3; i++)
			CHECK(!mapped(a + i * T_PAGE) && dst[i * T_PAGE] == 'A' + i);
	} else {
		CHECK(errno == EFAULT);
		for (int i = 0; i < 3; i++)
			CHECK(a[i * T_PAGE] == 'A' + i);
	}
	printf("a move of 3 VMAs: %s\n", multi ? "done (Linux 6.17+)" : "EFAULT, nothing moved");

	uint64_t got;
	int uffd = t_uffd_open(0, &got);
	if (uffd < 0)
		t_skip("userfaultfd not usable here");
	a = three(uffd);
	dst = mmap(NULL, 3 * T_PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(dst != MAP_FAILED);
	r = mremap(a, 3 * T_PAGE, 3 * T_PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	if (r != MAP_FAILED || errno != EFAULT) {
		fprintf(stderr, "FAIL: a move over a registered VMA returned %p (%s)\n", r,
			r == MAP_FAILED ? strerror(errno) : "moved");
		return T_FAIL;
	}
	bool first_moved = !mapped(a) && dst[0] == 'A';
	if (first_moved != multi || a[T_PAGE] != 'B' || a[2 * T_PAGE] != 'C' ||
	    (!first_moved && a[0] != 'A')) {
		fprintf(stderr, "FAIL: after EFAULT: first page %s, the rest %s (multi-VMA moves: %s)\n",
			first_moved ? "moved" : "in place",
			a[T_PAGE] == 'B' && a[2 * T_PAGE] == 'C' ? "in place" : "wrong",
			multi ? "yes" : "no");
		return T_FAIL;
	}
	printf("a move over a registered VMA: EFAULT, %s\n",
	       first_moved ? "the VMA before it moved (a hole left)" : "nothing moved");
	return T_PASS;
}
