/* SPDX-License-Identifier: MIT */
/*
 * probe_vma_merge.c - fact (kernel-facts.md, "VMAs"): mmap(MAP_FIXED|
 * MAP_PRIVATE) of one memfd page into the middle of an anonymous VMA turns
 * one VMA into three (+2 lines in /proc/self/maps). Adjacent file VMAs merge
 * only if they map the same struct file at contiguous offsets:
 *  - 8 memfd pages over 8 anon pages with one mmap: +2;
 *  - the same as 8 separate mmaps of consecutive offsets at consecutive
 *    addresses (ascending or descending order): still +2 in total;
 *  - 2 adjacent pages mapping the SAME offset: +3 (no merge);
 *  - 2 adjacent pages at contiguous offsets of two different memfds: +3;
 *  - the same memfd reopened through /proc/self/fd (same inode, another
 *    struct file): +3, no merge either.
 *
 * Why libdedup depends on it: every merge maps a memfd page over an
 * anonymous page, and vm.max_map_count (65530) bounds the number of VMAs.
 * libdedup keeps the count down by laying out identical-content runs at
 * contiguous offsets of ONE memfd, opened once, so that neighbouring merged
 * pages collapse into one VMA; pages merged to the same offset cost a VMA
 * each, which its budget must count.
 */
#include "tcommon.h"
#include "uapi.h"

enum { NP = 32, MID = 12, RUN = 8 };

static int memfd_pages(int n, uint64_t seed)
{
	int fd = memfd_create("probe", MFD_CLOEXEC);
	unsigned char pg[T_PAGE];
	CHECK(fd >= 0);
	for (int i = 0; i < n; i++) {
		t_fill(pg, seed + i);
		CHECK(pwrite(fd, pg, T_PAGE, (off_t)i * T_PAGE) == (ssize_t)T_PAGE);
	}
	return fd;
}

static void map_at(unsigned char *addr, int fd, int pages, int off)
{
	void *p = mmap(addr, pages * T_PAGE, PROT_READ | PROT_WRITE,
		       MAP_FIXED | MAP_PRIVATE, fd, (off_t)off * T_PAGE);
	CHECK(p == addr);
}

static void check_page(unsigned char *addr, uint64_t seed)
{
	unsigned char pg[T_PAGE];
	t_fill(pg, seed);
	CHECK(memcmp(addr, pg, T_PAGE) == 0);
}

/* A fresh anonymous VMA of NP touched pages; returns it and the map count. */
static unsigned char *fresh(long *before)
{
	unsigned char *r = t_map_anon(NP * T_PAGE);
	memset(r, 0xa5, NP * T_PAGE);
	*before = t_map_count();
	return r;
}

static void expect(const char *what, long before, long delta)
{
	long now = t_map_count();
	printf("%-58s %+ld (expected %+ld)\n", what, now - before, delta);
	if (now - before != delta) {
		fprintf(stderr, "FAIL: %s: map count changed by %+ld, expected %+ld\n",
			what, now - before, delta);
		exit(T_FAIL);
	}
}

int main(void)
{
	const uint64_t S = 1000, S2 = 2000;
	int fd = memfd_pages(RUN, S);
	int fd2 = memfd_pages(RUN, S2);
	long before;
	unsigned char *r;
	char path[64];

	/* warm up stdio and the heap so that t_map_count() itself adds no VMA */
	(void)t_map_count();
	(void)t_map_count();

	/* one page in the middle: 1 VMA -> 3 */
	r = fresh(&before);
	map_at(r + MID * T_PAGE, fd, 1, 0);
	check_page(r + MID * T_PAGE, S);
	expect("1 memfd page into an anon VMA", before, 2);
	CHECK(munmap(r, NP * T_PAGE) == 0);

	/* 8 pages with one mmap */
	r = fresh(&before);
	map_at(r + MID * T_PAGE, fd, RUN, 0);
	for (int i = 0; i < RUN; i++)
		check_page(r + (MID + i) * T_PAGE, S + i);
	expect("8 memfd pages, one mmap", before, 2);
	CHECK(munmap(r, NP * T_PAGE) == 0);

	/* 8 separate mmaps, consecutive offsets at consecutive addresses */
	r = fresh(&before);
	for (int i = 0; i < RUN; i++)
		map_at(r + (MID + i) * T_PAGE, fd, 1, i);
	for (int i = 0; i < RUN; i++)
		check_page(r + (MID + i) * T_PAGE, S + i);
	expect("8 mmaps, contiguous offsets, ascending", before, 2);
	CHECK(munmap(r, NP * T_PAGE) == 0);

	r = fresh(&before);
	for (int i = RUN - 1; i >= 0; i--)
		map_at(r + (MID + i) * T_PAGE, fd, 1, i);
	for (int i = 0; i < RUN; i++)
		check_page(r + (MID + i) * T_PAGE, S + i);
	expect("8 mmaps, contiguous offsets, descending", before, 2);
	CHECK(munmap(r, NP * T_PAGE) == 0);

	/* 2 adjacent pages mapping the same offset: no merge */
	r = fresh(&before);
	map_at(r + MID * T_PAGE, fd, 1, 3);
	map_at(r + (MID + 1) * T_PAGE, fd, 1, 3);
	check_page(r + MID * T_PAGE, S + 3);
	check_page(r + (MID + 1) * T_PAGE, S + 3);
	expect("2 adjacent pages, same offset", before, 3);
	CHECK(munmap(r, NP * T_PAGE) == 0);

	/* contiguous offsets, but of two different memfds: no merge */
	r = fresh(&before);
	map_at(r + MID * T_PAGE, fd, 1, 0);
	map_at(r + (MID + 1) * T_PAGE, fd2, 1, 1);
	check_page(r + MID * T_PAGE, S);
	check_page(r + (MID + 1) * T_PAGE, S2 + 1);
	expect("2 adjacent pages, contiguous offsets, 2 memfds", before, 3);
	CHECK(munmap(r, NP * T_PAGE) == 0);

	/* same inode reopened (another struct file): no merge */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	int fd3 = open(path, O_RDWR | O_CLOEXEC);
	CHECK(fd3 >= 0);
	r = fresh(&before);
	map_at(r + MID * T_PAGE, fd, 1, 0);
	map_at(r + (MID + 1) * T_PAGE, fd3, 1, 1);
	check_page(r + MID * T_PAGE, S);
	check_page(r + (MID + 1) * T_PAGE, S + 1);
	expect("2 adjacent pages, contiguous offsets, memfd reopened", before, 3);
	CHECK(munmap(r, NP * T_PAGE) == 0);

	/* control: a dup()ed fd is the same struct file and does merge */
	int fd4 = dup(fd);
	CHECK(fd4 >= 0);
	r = fresh(&before);
	map_at(r + MID * T_PAGE, fd, 1, 0);
	map_at(r + (MID + 1) * T_PAGE, fd4, 1, 1);
	check_page(r + (MID + 1) * T_PAGE, S + 1);
	expect("2 adjacent pages, contiguous offsets, dup()ed fd", before, 2);
	CHECK(munmap(r, NP * T_PAGE) == 0);

	close(fd);
	close(fd2);
	close(fd3);
	close(fd4);
	printf("PASS: file VMAs merge only for one struct file at contiguous offsets\n");
	return T_PASS;
}
