/* SPDX-License-Identifier: MIT */
/*
 * pl_dontneed - madvise(MADV_DONTNEED) on merged memory reads zeros
 * afterwards, as on anonymous memory (allocators rely on it), both on the
 * program's own mmap and on malloc()ed heap memory; and the memory is
 * usable (writable, keeps what is written) afterwards. Also through a raw
 * system call, with the kernel making the first read (write() to a pipe).
 */
#include "pl.h"

#define NP 512   /* pages per copy */

int main(void)
{
	pl_need_uffd();
	size_t len = NP * T_PAGE;
	char *a = t_map_anon(4 * len);
	char *h = malloc(4 * len + T_PAGE);
	CHECK(h);
	char *ha = (char *)(((uintptr_t)h + T_PAGE - 1) & ~(uintptr_t)(T_PAGE - 1));

	for (int c = 0; c < 4; c++) {
		pl_fill(a + c * len, NP, 11);
		pl_fill(ha + c * len, NP, 12);
	}
	pl_wait_merged(2 * 3 * NP * 9 / 10);

	/* the whole second copy, and single pages of the third */
	CHECK(madvise(a + len, len, MADV_DONTNEED) == 0);
	CHECK(madvise(ha + len, len, MADV_DONTNEED) == 0);
	for (int i = 0; i < NP; i += 7) {
		CHECK(madvise(a + 2 * len + i * T_PAGE, T_PAGE, MADV_DONTNEED) == 0);
		CHECK(madvise(ha + 2 * len + i * T_PAGE, T_PAGE, MADV_DONTNEED) == 0);
	}
	bool ok = true;
	if (!pl_is_zero(a + len, len)) {
		fprintf(stderr, "FAIL: mmap'd range not zero after MADV_DONTNEED\n");
		ok = false;
	}
	if (!pl_is_zero(ha + len, len)) {
		fprintf(stderr, "FAIL: heap range not zero after MADV_DONTNEED\n");
		ok = false;
	}
	for (int i = 0; i < NP; i++) {
		bool z = i % 7 == 0;
		char want[T_PAGE];
		t_fill(want, 11 * 1000003 + (uint64_t)i);
		if (z ? !pl_is_zero(a + 2 * len + i * T_PAGE, T_PAGE)
		      : memcmp(a + 2 * len + i * T_PAGE, want, T_PAGE) != 0) {
			fprintf(stderr, "FAIL: page %d of copy 2 wrong after single-page DONTNEED\n", i);
			ok = false;
			break;
		}
	}
	/* a raw system call (no interposer sees it), then the first read of
	 * the discarded pages by the kernel (write() to a pipe) */
	CHECK(syscall(SYS_madvise, a + 3 * len + 8 * T_PAGE, 4 * T_PAGE, MADV_DONTNEED) == 0);
	int pfd[2];
	char buf[4 * T_PAGE];
	CHECK(pipe(pfd) == 0);
	CHECK(write(pfd[1], a + 3 * len + 8 * T_PAGE, sizeof(buf)) == (ssize_t)sizeof(buf));
	CHECK(read(pfd[0], buf, sizeof(buf)) == (ssize_t)sizeof(buf));
	if (!pl_is_zero(buf, sizeof(buf)) || !pl_is_zero(a + 3 * len + 8 * T_PAGE, sizeof(buf))) {
		fprintf(stderr, "FAIL: not zero after a raw MADV_DONTNEED (read by the kernel)\n");
		ok = false;
	}
	CHECK(pl_check(a, NP, 11) && pl_check(a + 3 * len, 8, 11));
	CHECK(pl_check(ha, NP, 12) && pl_check(ha + 3 * len, NP, 12));
	/* usable afterwards */
	pl_fill(a + len, NP, 13);
	CHECK(pl_check(a + len, NP, 13));
	if (!ok)
		return T_FAIL;
	fprintf(stderr, "PASS\n");
	return T_PASS;
}
