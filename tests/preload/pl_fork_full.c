/* SPDX-License-Identifier: MIT */
/*
 * pl_fork_full - a process within two mappings of vm.max_map_count forks:
 * the child still guards its merged pages (libdedup/src/child.c).
 *
 * A process with merged pages has many mappings. The child's guard needs a
 * few of its own (its tables, its thread's stack); the kernel merges most of
 * them into neighbouring anonymous mappings, so none is refused near the
 * limit - this test keeps it that way. (Below the limit, when it was lowered
 * under a process, the guard cannot start: README "Known bugs".)
 *
 * The parent merges 4 equal chunks, discards merged pages [0, 8) of chunk
 * 3, then takes mappings (splitting a PROT_NONE reservation page by page)
 * until the kernel refuses one, and gives back just enough for HEADROOM
 * more. The child then checks that the pages its parent discarded read
 * zeros, and that a discard of its own - by a raw system call, which no
 * interposer sees - reads zeros too: both need the guard. The parent's
 * memory is unchanged.
 */
#include "pl.h"

#include <sys/wait.h>

#define NP 64
#define HEADROOM 2
#define CH(c) (a + (size_t)(c) * NP * T_PAGE)

static char *a;

static bool chunk_ok(int c, size_t zlo, size_t zhi)
{
	return pl_pages_ok(CH(c), NP, 77 * 1000, zlo, zhi, c);
}

static int child(void)
{
	if (!chunk_ok(3, 0, 8))
		return 10;
	if (syscall(SYS_madvise, CH(1) + 4 * T_PAGE, 2 * T_PAGE, MADV_DONTNEED) != 0)
		return 11;
	if (!chunk_ok(1, 4, 6) || !chunk_ok(0, 0, 0) || !chunk_ok(2, 0, 0))
		return 12;
	return 0;
}

int main(void)
{
	pl_need_uffd();
	a = t_map_anon(4 * NP * T_PAGE);
	for (int c = 0; c < 4; c++)
		for (size_t i = 0; i < NP; i++)
			pl_fill(CH(c) + i * T_PAGE, 1, 77 * 1000 + i);
	/* every page the test discards must be merged first, or it would
	 * prove nothing about the guard (a discarded anonymous page reads
	 * zeros anyway): wait for those ten, up to t_cap() */
	pl_wait_merged(3 * NP * 9 / 10);
	for (double t0 = t_now();;) {
		bool all = true;
		for (size_t i = 0; i < 8; i++)
			all = all && pl_has_merged(CH(3) + i * T_PAGE, T_PAGE);
		for (size_t i = 4; i < 6; i++)
			all = all && pl_has_merged(CH(1) + i * T_PAGE, T_PAGE);
		if (all)
			break;
		CHECK(t_now() - t0 < t_cap());
		usleep(20000);
	}
	CHECK(madvise(CH(3), 8 * T_PAGE, MADV_DONTNEED) == 0);

	/* Up to the limit: every other page of R made readable is two more
	 * mappings. Then back down to HEADROOM. */
	long limit = 0;
	FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
	CHECK(f && fscanf(f, "%ld", &limit) == 1);
	fclose(f);
	if (limit > 262144) {   /* a million mappings: seconds and gigabytes */
		fprintf(stderr, "SKIP: vm.max_map_count is %ld; run at 65530 "
			"(tests/with_max_map_count.sh, as preload.cmake does)\n", limit);
		return T_SKIP;
	}
	size_t rpages = (size_t)limit + 16;
	char *r = mmap(NULL, rpages * T_PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		       -1, 0);
	CHECK(r != MAP_FAILED);
	size_t done = 0;
	for (size_t i = 1; i + 1 < rpages; i += 2, done++)
		if (mprotect(r + i * T_PAGE, T_PAGE, PROT_READ) != 0) {
			CHECK(errno == ENOMEM);
			break;
		}
	long at = t_map_count();
	/* each page given back joins its two neighbours: two mappings fewer */
	for (long k = 0; k < (HEADROOM + 1) / 2; k++) {
		done--;
		CHECK(mprotect(r + (1 + 2 * done) * T_PAGE, T_PAGE, PROT_NONE) == 0);
	}
	long now = t_map_count();
	fprintf(stderr, "max_map_count %ld: %ld mappings at the limit, %ld before fork\n", limit, at,
		now);
	CHECK(limit - now <= HEADROOM + 1);

	fflush(NULL);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0)
		_exit(child());
	int st;
	CHECK(waitpid(pid, &st, 0) == pid);
	CHECK(munmap(r, rpages * T_PAGE) == 0);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "FAIL: child status %#x\n", st);
		return T_FAIL;
	}
	CHECK(chunk_ok(0, 0, 0) && chunk_ok(1, 0, 0) && chunk_ok(2, 0, 0) && chunk_ok(3, 0, 8));
	return T_PASS;
}
