/* SPDX-License-Identifier: MIT */
/*
 * test_discard: madvise(MADV_DONTNEED) on merged pages makes them read as
 * zeros, exactly as on anonymous memory, and writable; MADV_FREE behaves as
 * on anonymous memory too (it succeeds; content is old or zero). Also after
 * the application discarded a page, its neighbours still read their content.
 */
#include "tdedup.h"

int main(void)
{
	const size_t N = 64;
	char *buf = t_map_anon(N * T_PAGE);
	char ref[T_PAGE];

	t_fill(ref, 3);
	for (size_t i = 0; i < N; i++)
		memcpy(buf + i * T_PAGE, ref, T_PAGE);
	t_engine_start(3600000);
	CHECK(dedup_register(buf, N * T_PAGE) == 0);
	dedup_scan_now();
	CHECK(dedup_scan_now() == (long)N);

	/* discard one page, a run, and a page never touched since merging */
	CHECK(madvise(buf + 3 * T_PAGE, T_PAGE, MADV_DONTNEED) == 0);
	CHECK(madvise(buf + 10 * T_PAGE, 5 * T_PAGE, MADV_DONTNEED) == 0);
	for (size_t i = 0; i < N; i++) {
		bool zero = i == 3 || (i >= 10 && i < 15);
		for (size_t o = 0; o < T_PAGE; o += 512)
			if (buf[i * T_PAGE + o] != (zero ? 0 : ref[o])) {
				fprintf(stderr, "page %zu offset %zu: %#x, expected %#x\n", i, o,
					buf[i * T_PAGE + o] & 0xff, zero ? 0 : ref[o] & 0xff);
				return T_FAIL;
			}
	}
	/* written after the discard: the write, zeros around it */
	buf[3 * T_PAGE + 7] = 'x';
	CHECK(buf[3 * T_PAGE + 7] == 'x' && buf[3 * T_PAGE + 8] == 0);
	/* written, then discarded again */
	buf[20 * T_PAGE] = 'y';
	CHECK(madvise(buf + 20 * T_PAGE, T_PAGE, MADV_DONTNEED) == 0);
	CHECK(buf[20 * T_PAGE] == 0);
	/* MADV_FREE: allowed, reads old content or zeros */
	int r = madvise(buf + 30 * T_PAGE, T_PAGE, MADV_FREE);
	if (r != 0)
		fprintf(stderr, "MADV_FREE on a merged page: %s (anonymous memory accepts it)\n",
			strerror(errno));
	CHECK(dedup_shutdown() == 0);
	return T_PASS;
}
