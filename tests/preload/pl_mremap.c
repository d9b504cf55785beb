/* SPDX-License-Identifier: MIT */
/*
 * pl_mremap - mremap of a range with merged pages inside (several VMAs, which
 * the kernel alone refuses to grow or move: EFAULT) succeeds as on anonymous
 * memory and keeps the content: grow with MREMAP_MAYMOVE, move to a fixed
 * address, grow in place, shrink. New tail pages read zeros and are
 * writable; the old range is gone.
 * Also a range that is one merged piece (a single file VMA, which the kernel
 * grows by mapping more of our memfd: other pages' content): its new tail is
 * anonymous memory and reads zeros, grown in place or moved.
 */
#include "pl.h"

#define NP 512

static void *merged_range(uint64_t seed, size_t extra_free)
{
	size_t len = NP * T_PAGE;
	/* reserve room after it, so growing in place is possible */
	char *r = t_map_anon(4 * len + extra_free);
	if (extra_free)
		CHECK(munmap(r + 4 * len, extra_free) == 0);
	for (int c = 0; c < 4; c++)
		pl_fill(r + c * len, NP, seed);
	return r;
}

static void check_copies(const char *r, uint64_t seed)
{
	for (int c = 0; c < 4; c++)
		CHECK(pl_check(r + c * NP * T_PAGE, NP, seed));
}

static bool mapped(const void *p)
{
	unsigned char v;
	return mincore((void *)((uintptr_t)p & ~(T_PAGE - 1)), T_PAGE, &v) == 0;
}

/* Grow the one-piece copy at q (NP merged pages) to 2 NP pages. */
static void grow_piece(char *q, int flags, uint64_t seed)
{
	size_t l = NP * T_PAGE;
	char *q2 = mremap(q, l, 2 * l, flags);
	if (q2 == MAP_FAILED) {
		fprintf(stderr, "FAIL: mremap grow of a merged piece (flags %d): %s\n", flags,
			strerror(errno));
		exit(T_FAIL);
	}
	CHECK(pl_check(q2, NP, seed));
	if (pl_has_merged(q2 + l, l) || !pl_is_zero(q2 + l, l)) {
		fprintf(stderr, "FAIL: the grown tail of a merged piece maps our memfd\n");
		exit(T_FAIL);
	}
}

int main(void)
{
	pl_need_uffd();
	size_t len = 4 * NP * T_PAGE;
	uint64_t base = pl_stats().merges;

	char *a = merged_range(31, 0);
	char *b = merged_range(32, 0);
	char *c = merged_range(33, 2 * len);
	pl_wait_merged(base + 3 * 3 * NP * 9 / 10);

	/* 1. grow, may move */
	char *a2 = mremap(a, len, 2 * len, MREMAP_MAYMOVE);
	if (a2 == MAP_FAILED) {
		fprintf(stderr, "FAIL: mremap grow: %s\n", strerror(errno));
		return T_FAIL;
	}
	check_copies(a2, 31);
	CHECK(pl_is_zero(a2 + len, len));
	memset(a2 + len, 0x33, len);
	CHECK(a2[2 * len - 1] == 0x33);
	if (a2 != a)
		CHECK(!mapped(a));

	/* 2. move to a fixed address */
	char *dst = t_map_anon(len);
	char *b2 = mremap(b, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	if (b2 != dst) {
		fprintf(stderr, "FAIL: mremap move: %s\n", strerror(errno));
		return T_FAIL;
	}
	check_copies(dst, 32);
	CHECK(!mapped(b));

	/* 3. grow in place (room was left above c) */
	char *c2 = mremap(c, len, len + len / 2, 0);
	if (c2 != c) {
		fprintf(stderr, "FAIL: mremap grow in place: %s\n", strerror(errno));
		return T_FAIL;
	}
	check_copies(c, 33);
	CHECK(pl_is_zero(c + len, len / 2));
	/* 4. shrink */
	CHECK(mremap(c, len + len / 2, len / 2, 0) == c);
	for (int k = 0; k < 2; k++)
		CHECK(pl_check(c + k * NP * T_PAGE, NP, 33));
	CHECK(!mapped(c + len / 2));
	/* 5. the kernel's errors stay: growing in place without room */
	char *d = merged_range(34, 0);
	char *guard = mmap(d + len, T_PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (guard == d + len) {
		pl_wait_merged(base + 4 * 3 * NP * 8 / 10);
		CHECK(mremap(d, len, 2 * len, 0) == MAP_FAILED && errno == ENOMEM);
		check_copies(d, 34);
	}
	/* 6. one merged piece grown in place (the last copy, room above), and
	 * one grown and moved (a copy in the middle) */
	char *e = merged_range(36, 2 * len);
	char *last = e + 3 * NP * T_PAGE;
	for (double t0 = t_now(); !pl_has_merged(last, NP * T_PAGE) && t_now() - t0 < t_cap();)
		usleep(20000);
	if (pl_has_merged(last, NP * T_PAGE)) {   /* merged */
		grow_piece(last, 0, 36);
		CHECK(mremap(last, 2 * NP * T_PAGE, NP * T_PAGE, 0) == last);
		grow_piece(e + NP * T_PAGE, MREMAP_MAYMOVE, 36);
	} else {
		fprintf(stderr, "FAIL: the last copy of e did not merge\n");
		return T_FAIL;
	}
	/* merging goes on in the moved ranges */
	pl_fill(a2 + len, NP, 35);
	pl_fill(a2 + len + NP * T_PAGE, NP, 35);
	struct dedup_stats s = pl_stats();
	pl_print("end", &s);
	fprintf(stderr, "PASS\n");
	return T_PASS;
}
