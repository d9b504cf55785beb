/* SPDX-License-Identifier: MIT */
/*
 * pl_lazy - lazy start (issue 14): under LD_PRELOAD with the default
 * DEDUP_START, a process with little memory gets no thread and no
 * descriptor of ours, even with duplicates and many free()s; once it has
 * more anonymous memory than the threshold, the engine starts by itself
 * (from the program's own free() calls) and merges.
 */
#include "pl.h"

#include <dirent.h>

static int count_dir(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	int n = 0;
	CHECK(d != NULL);
	while ((e = readdir(d)) != NULL)
		n += e->d_name[0] != '.';
	closedir(d);
	return n - (strcmp(path, "/proc/self/fd") == 0);   /* the DIR's own fd */
}

static void churn(int n)
{
	/* through a volatile pointer: the compiler may drop free(malloc(n)) */
	void *volatile p;
	for (int i = 0; i < n; i++) {
		p = malloc(64);
		free(p);
	}
}

int main(void)
{
	pl_need_uffd();
	const char *st = getenv("DEDUP_START");
	if (st && strcmp(st, "64M") && strcmp(st, "67108864"))
		t_skip("DEDUP_START=%s: this test wants the default", st);
	int fds0 = count_dir("/proc/self/fd");

	/* small: 16 MiB of duplicates, and the allocator busy */
	size_t small = 16u << 20;
	char *a = malloc(small);
	CHECK(a != NULL);
	for (size_t i = 0; i < small; i += T_PAGE)
		t_fill(a + i, 5);
	churn(100000);
	usleep(300000);
	churn(100000);
	int threads = count_dir("/proc/self/task"), fds = count_dir("/proc/self/fd");
	printf("small: %d threads, %d descriptors (%d at start)\n", threads, fds, fds0);
	CHECK(threads == 1);
	CHECK(fds == fds0);
	CHECK(pl_stats().merges == 0);

	/* large: 96 MiB more, in malloc'd chunks (glibc maps them itself:
	 * no interposer sees it) */
	enum { N = 96 };
	char *b[N];
	for (int i = 0; i < N; i++) {
		b[i] = malloc(1u << 20);
		CHECK(b[i] != NULL);
		for (size_t k = 0; k < (1u << 20); k += T_PAGE)
			t_fill(b[i] + k, 6);
	}
	double t0 = t_now();
	while (count_dir("/proc/self/task") == 1) {   /* the program's free()s start it */
		churn(10000);
		if (t_now() - t0 > t_cap()) {
			fprintf(stderr, "FAIL: no engine after %g s with %d MiB anonymous\n", t_cap(),
				N + 16);
			return T_FAIL;
		}
		usleep(10000);
	}
	printf("started after %.2f s: %d threads, %d descriptors\n", t_now() - t0,
	       count_dir("/proc/self/task"), count_dir("/proc/self/fd"));
	pl_wait_merged((uint64_t)N * 256 * 9 / 10);
	char want[T_PAGE];
	t_fill(want, 6);
	for (int i = 0; i < N; i++)
		for (size_t k = 0; k < (1u << 20); k += T_PAGE)
			CHECK(memcmp(b[i] + k, want, T_PAGE) == 0);
	t_fill(want, 5);
	for (size_t i = 0; i < small; i += T_PAGE)
		CHECK(memcmp(a + i, want, T_PAGE) == 0);
	printf("PASS\n");
	return T_PASS;
}
