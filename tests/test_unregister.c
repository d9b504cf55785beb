/* SPDX-License-Identifier: MIT */
/*
 * test_unregister: dedup_unregister() and dedup_shutdown() leave every page
 * readable (same content) and writable, merged or not, and hand it back as
 * plain anonymous memory (merge.c, "Unmerging"): a page written or
 * discarded while merged keeps that, and a discard afterwards reads zeros
 * (a private memfd mapping would read the canonical page again). The
 * engine can be started again afterwards and merges again.
 */
#include "tdedup.h"

static void fill(char *buf, size_t n, uint64_t salt)
{
	for (size_t i = 0; i < n; i++)
		t_fill(buf + i * T_PAGE, (i % 4) + salt);
}

static void check_rw(char *buf, size_t n, uint64_t salt)
{
	char want[T_PAGE];
	for (size_t i = 0; i < n; i++) {
		t_fill(want, (i % 4) + salt);
		CHECK(memcmp(buf + i * T_PAGE, want, T_PAGE) == 0);
	}
	for (size_t i = 0; i < n; i++)
		buf[i * T_PAGE + 9] = 'w';
	for (size_t i = 0; i < n; i++)
		CHECK(buf[i * T_PAGE + 9] == 'w');
}

/* Every page of buf is anonymous (present, not a file page), one mapping
 * covers it all, and a discard of the first half reads zeros; content
 * restored for check_rw. */
static void check_anon(char *buf, size_t n, uint64_t salt)
{
	static const char zero[T_PAGE];
	int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	CHECK(pm >= 0);
	for (size_t i = 0; i < n; i++) {
		uint64_t e = 0;
		CHECK(pread(pm, &e, 8, (off_t)((uintptr_t)(buf + i * T_PAGE) / T_PAGE) * 8) == 8);
		if (!(e >> 63) || (e >> 61 & 1)) {
			fprintf(stderr, "page %zu: present %d file %d\n", i, (int)(e >> 63),
				(int)(e >> 61 & 1));
			exit(T_FAIL);
		}
	}
	close(pm);
	/* one mapping again, as the application made it */
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	int vmas = 0;
	CHECK(f != NULL);
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && lo < (uintptr_t)buf + n * T_PAGE &&
		    hi > (uintptr_t)buf)
			vmas++;
	}
	fclose(f);
	if (vmas != 1) {
		fprintf(stderr, "%d mappings cover the range, expected 1\n", vmas);
		exit(T_FAIL);
	}
	CHECK(madvise(buf, n / 2 * T_PAGE, MADV_DONTNEED) == 0);
	for (size_t i = 0; i < n / 2; i++)
		CHECK(memcmp(buf + i * T_PAGE, zero, T_PAGE) == 0);
	fill(buf, n / 2, salt);
}

int main(void)
{
	const size_t N = 256;
	char *a = t_map_anon(N * T_PAGE), *b = t_map_anon(N * T_PAGE);

	fill(a, N, 1);
	fill(b, N, 1);
	t_engine_start(3600000);
	CHECK(dedup_register(a, N * T_PAGE) == 0);
	CHECK(dedup_register(b, N * T_PAGE) == 0);
	dedup_scan_now();
	CHECK(dedup_scan_now() == (long)(2 * N));
	/* while merged: page 5 written (copied on write), page 6 discarded */
	static const char zero[T_PAGE];
	a[5 * T_PAGE + 100] = 'c';
	CHECK(madvise(a + 6 * T_PAGE, T_PAGE, MADV_DONTNEED) == 0);
	uint64_t sharing = t_stats().pages_sharing;
	CHECK(dedup_unregister(a, N * T_PAGE) == 0);
	CHECK(dedup_unregister(a, N * T_PAGE) == -ENOENT);
	CHECK(t_stats().pages_sharing == sharing - N);   /* a's N pages let go of their slots */
	CHECK(a[5 * T_PAGE + 100] == 'c');
	CHECK(memcmp(a + 6 * T_PAGE, zero, T_PAGE) == 0);
	fill(a, N, 1);
	check_anon(a, N, 1);
	check_rw(a, N, 1);
	CHECK(t_stats().regions == 1);
	CHECK(dedup_shutdown() == 0);
	CHECK(dedup_shutdown() == -ENODEV);
	check_anon(b, N, 1);
	check_rw(b, N, 1);

	/* again, on fresh memory */
	char *c = t_map_anon(N * T_PAGE);
	fill(c, N, 9);
	t_engine_start(3600000);
	CHECK(dedup_register(c, N * T_PAGE) == 0);
	dedup_scan_now();
	CHECK(dedup_scan_now() == (long)N);
	CHECK(dedup_shutdown() == 0);
	check_rw(c, N, 9);
	return T_PASS;
}
