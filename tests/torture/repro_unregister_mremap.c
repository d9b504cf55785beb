/* SPDX-License-Identifier: MIT */
/*
 * repro_unregister_mremap: after dedup_unregister(), the application may
 * mremap() the range (that is what the API asks it to unregister for), and
 * the move must work as it would without libdedup.
 *
 * Found by the torture suite at commit 44da2ae (action mremap_move, seeds
 * 1, 2 and 6: "failed with EFAULT after moving N of the pages although the
 * range was dedup_unregister()ed"; smaps shows the merged pages' VMAs still
 * flagged "ui", registered MINOR with the engine's uffd). Since merged runs
 * are registered MINOR (for MADV_DONTNEED), dedup_unregister(), which only
 * unregisters the anonymous parts, leaves them registered. A range made of
 * several VMAs may be moved by mremap since Linux 6.17 only if none of them
 * is registered with a userfaultfd; the kernel moves VMA by VMA and stops
 * with EFAULT at the first registered one: the move is left half done, and
 * the application, told it failed, looks for its data at the old address.
 *
 * Steps: B = [unique page, 4 copies of A's pages, unique page], merged;
 * unregister B; mremap(B, MREMAP_MAYMOVE|MREMAP_FIXED) to a placeholder.
 */
#include "tdedup.h"

#define N 6

int main(void)
{
	t_engine_start(3600000);
	char *a = t_map_anon(N * T_PAGE), *b = t_map_anon(N * T_PAGE), copy[N * T_PAGE];
	for (size_t i = 0; i < N; i++) {
		t_fill(a + i * T_PAGE, 100 + i);
		if (i == 0 || i == N - 1)
			t_fill(b + i * T_PAGE, 200 + i);   /* unique: stays anonymous */
		else
			memcpy(b + i * T_PAGE, a + i * T_PAGE, T_PAGE);
	}
	memcpy(copy, b, sizeof(copy));
	CHECK(dedup_register(a, N * T_PAGE) == 0);
	CHECK(dedup_register(b, N * T_PAGE) == 0);
	dedup_scan_now();
	dedup_scan_now();
	t_print_stats("merged");
	CHECK(t_stats().pages_sharing >= 2);

	CHECK(dedup_unregister(b, N * T_PAGE) == 0);
	char *ph = mmap(NULL, N * T_PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(ph != MAP_FAILED);
	char *m = mremap(b, N * T_PAGE, N * T_PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, ph);
	if (m == MAP_FAILED) {
		int e = errno;
		unsigned char v;
		size_t moved = 0;
		for (size_t i = 0; i < N; i++)
			moved += mincore(b + i * T_PAGE, T_PAGE, &v) < 0 && errno == ENOMEM;
		fprintf(stderr, "mremap of the unregistered range failed: %s; %zu of %d pages are "
				"gone from the old address (moved anyway)\n", strerror(e), moved, N);
		return T_FAIL;
	}
	CHECK(memcmp(m, copy, sizeof(copy)) == 0);
	CHECK(dedup_shutdown() == 0);
	return T_PASS;
}
