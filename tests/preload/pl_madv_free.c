/* SPDX-License-Identifier: MIT */
/*
 * pl_madv_free - MADV_FREE on merged memory succeeds as on anonymous memory
 * (the kernel alone refuses it on a merged page, a private file mapping):
 * each page then reads either its old content or zeros, and a write after
 * it sticks.
 */
#include "pl.h"

#define NP 256

int main(void)
{
	pl_need_uffd();
	size_t len = NP * T_PAGE;
	char *a = t_map_anon(3 * len);
	char want[T_PAGE];

	for (int c = 0; c < 3; c++)
		pl_fill(a + c * len, NP, 21);
	pl_wait_merged(2 * NP * 9 / 10);

	if (madvise(a, 3 * len, MADV_FREE) != 0) {
		fprintf(stderr, "FAIL: MADV_FREE: %s\n", strerror(errno));
		return T_FAIL;
	}
	CHECK(madvise(a + len + 5 * T_PAGE, 3 * T_PAGE, MADV_FREE) == 0);
	for (int c = 0; c < 3; c++)
		for (int i = 0; i < NP; i++) {
			char *p = a + c * len + i * T_PAGE;
			t_fill(want, 21 * 1000003 + (uint64_t)i);
			CHECK(memcmp(p, want, T_PAGE) == 0 || pl_is_zero(p, T_PAGE));
		}
	for (int c = 0; c < 3; c++)
		pl_fill(a + c * len, NP, 22);
	for (int c = 0; c < 3; c++)
		CHECK(pl_check(a + c * len, NP, 22));
	/* the kernel's own EINVAL stays: not page aligned */
	CHECK(madvise(a + 1, T_PAGE, MADV_FREE) == -1 && errno == EINVAL);
	fprintf(stderr, "PASS\n");
	return T_PASS;
}
