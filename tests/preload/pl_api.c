/* SPDX-License-Identifier: MIT */
/*
 * pl_api - a program that links libdedup.so for its API, without
 * LD_PRELOAD, sees no surprise: nothing is registered behind its back, and
 * mmap/munmap/mremap/madvise (which libdedup.so exports for preload mode)
 * behave as plain system calls.
 */
#include "pl.h"

int main(void)
{
	struct dedup_config cfg = { .size = sizeof(cfg), .scan_interval_ms = 20 };
	size_t len = 1024 * T_PAGE;
	char *a = t_map_anon(2 * len);

	pl_fill(a, 1024, 81);
	pl_fill(a + len, 1024, 81);
	int r = dedup_init(&cfg);
	if (r == -EPERM || r == -ENOSYS)
		t_skip("userfaultfd not usable here");
	CHECK(r == 0);
	usleep(1500 * 1000);
	struct dedup_stats s = { .size = sizeof(s) };
	CHECK(dedup_stats(&s) == 0);
	if (s.regions || s.bytes_registered) {
		fprintf(stderr, "FAIL: %llu regions registered without being asked\n",
			(unsigned long long)s.regions);
		return T_FAIL;
	}
	/* plain system-call behaviour, errors included */
	errno = 0;
	CHECK(munmap(a + 1, T_PAGE) == -1 && errno == EINVAL);
	char *b = mremap(a, 2 * len, 4 * len, MREMAP_MAYMOVE);
	CHECK(b != MAP_FAILED);
	CHECK(pl_check(b, 1024, 81) && pl_check(b + len, 1024, 81));
	CHECK(madvise(b, len, MADV_DONTNEED) == 0 && pl_is_zero(b, len));
	/* and the API itself works */
	CHECK(dedup_register(b, 4 * len) == 0);
	pl_fill(b, 1024, 81);
	CHECK(dedup_scan_now() >= 0);
	CHECK(dedup_scan_now() >= 0);
	CHECK(dedup_stats(&s) == 0);
	CHECK(s.pages_sharing >= 1024);
	CHECK(pl_check(b, 1024, 81) && pl_check(b + len, 1024, 81));
	CHECK(dedup_unregister(b, 4 * len) == 0);
	CHECK(munmap(b, 4 * len) == 0);
	CHECK(dedup_shutdown() == 0);
	fprintf(stderr, "PASS\n");
	return T_PASS;
}
