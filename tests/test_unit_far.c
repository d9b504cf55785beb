/* SPDX-License-Identifier: MIT */
/*
 * test_unit_far: where libdedup puts its own mappings (os.c, "Where our
 * mappings go"). With the area made small (DEDUP_TEST_FAR_SPAN, 4 MiB), a
 * long-lived mapping in it and ROUNDS short-lived ones that go round it
 * many times: every one is placed in the area, never where the kernel
 * would choose, and the cursor wraps and steps over what is in its way.
 * (The first version of the wrap compared the cursor against the wrapped
 * value and looped forever at the first wrap.)
 */
#include <sys/mman.h>

#include "tcommon.h"
#include "internal.h"

#define SPAN ((size_t)4 << 20)
#define ROUNDS 4096
#define LEN ((size_t)64 << 10)

int main(void)
{
	setenv("DEDUP_TEST_FAR_SPAN", "4194304", 1);   /* before the first use */
	char *keep = dd_os_far_mmap(LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(keep != MAP_FAILED);
	uintptr_t lo = (uintptr_t)keep, hi = lo + LEN;
	for (int k = 0; k < ROUNDS; k++) {
		char *p = dd_os_far_mmap(LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		CHECK(p != MAP_FAILED);
		CHECK((uintptr_t)p + LEN <= (uintptr_t)keep || (uintptr_t)p >= (uintptr_t)keep + LEN);
		if ((uintptr_t)p < lo)
			lo = (uintptr_t)p;
		if ((uintptr_t)p + LEN > hi)
			hi = (uintptr_t)p + LEN;
		p[0] = 1;
		CHECK(munmap(p, LEN) == 0);
	}
	/* 4,096 mappings of 64 KiB (256 MiB) in one area of 4 MiB */
	if (hi - lo > SPAN) {
		fprintf(stderr, "FAIL: mappings spread over %#lx-%#lx, more than the area\n",
			(unsigned long)lo, (unsigned long)hi);
		return T_FAIL;
	}
	CHECK(munmap(keep, LEN) == 0);
	printf("PASS (%d mappings in %zu KiB)\n", ROUNDS, (size_t)(hi - lo) >> 10);
	return T_PASS;
}
