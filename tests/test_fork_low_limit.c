/* SPDX-License-Identifier: MIT */
/*
 * test_fork_low_limit: fork() after vm.max_map_count was lowered below what
 * the process already maps (engine.c, child_room).
 *
 * A fork()ed child guards the merged pages it inherits (child.c): it maps a
 * table, its discard marks, an io_uring. Where the limit was lowered under
 * the running process (others' tests did that on our CI machine: CPython's
 * test_multiprocessing_fork then printed "child: no memory to look for merged
 * pages" five times and one child hung), the child could map nothing and
 * ran unguarded, and a merged page it discarded read its old content
 * instead of zeros. Now the parent gives merged runs back before fork()
 * until the child has room. Here: RUNS isolated duplicates merged (two
 * mappings each), the limit set to the map count - DROP, fork():
 *  - in the child, MADV_DONTNEED of every other duplicate reads zeros, the
 *    rest reads what it held, and the child says nothing on stderr about
 *    unguarded pages (its stderr is checked by the parent);
 *  - the parent reads every page right, before and after the child.
 * The sysctl is machine-wide: the test holds the lock of tests/mmc_lock.h,
 * first raises its own map count to about 8,000 (so the lowered limit stays
 * far above what other processes use), keeps the lowered window to the
 * fork and the child, and puts the value back on every way out. Skipped
 * without root.
 */
#include <sys/wait.h>
#include "mmc_test.h"

enum { RUNS = 300, GAP = 2, NPAGES = RUNS * GAP + 1, BULK = 4000, DROP = 100 };

static void want(char *page, size_t i)
{
	if (i % GAP)
		t_fill(page, 1000000 + i);   /* unique */
	else
		t_fill(page, 17);            /* duplicates */
}

static int check_all(const char *who, const char *buf, bool child)
{
	char page[T_PAGE];
	size_t bad = 0;
	for (size_t i = 0; i < NPAGES; i++) {
		want(page, i);
		if (child && i % (2 * GAP) == 0)
			memset(page, 0, T_PAGE);   /* discarded in the child */
		if (memcmp(buf + i * T_PAGE, page, T_PAGE) && bad++ < 3)
			printf("%s: page %zu reads wrong%s\n", who, i,
			       child && i % (2 * GAP) == 0 ? " (discarded: not zeros)" : "");
	}
	return bad ? T_FAIL : T_PASS;
}

int main(void)
{
	t_mmc_start("test_fork_low_limit", BULK, 4 * RUNS + 512);

	char *buf = t_map_anon(NPAGES * T_PAGE);
	CHECK(madvise(buf, NPAGES * T_PAGE, MADV_NOHUGEPAGE) == 0);
	for (size_t i = 0; i < NPAGES; i++)
		want(buf + i * T_PAGE, i);
	CHECK(dedup_register(buf, NPAGES * T_PAGE) == 0);
	double t0 = t_now();
	while (t_stats().pages_sharing < RUNS) {   /* RUNS + 1 pages, one canonical */
		CHECK(t_now() - t0 < t_cap());
		CHECK(dedup_scan_now() >= 0);
	}
	CHECK(check_all("parent, merged", buf, false) == T_PASS);

	int errp[2];
	CHECK(pipe(errp) == 0);
	long c0 = t_map_count();
	/* ---- lowered: the fork and the child (the sysctl is global) ---- */
	CHECK(mmc_set(c0 - DROP) == 0);
	pid_t p = fork();
	CHECK(p >= 0);
	if (p == 0) {
		dup2(errp[1], 2);
		close(errp[0]);
		for (size_t i = 0; i < NPAGES; i += 2 * GAP)
			CHECK(madvise(buf + i * T_PAGE, T_PAGE, MADV_DONTNEED) == 0);
		_exit(check_all("child", buf, true));
	}
	close(errp[1]);
	char err[4096];
	ssize_t n = read(errp[0], err, sizeof(err) - 1), m;
	while (n >= 0 && n < (ssize_t)sizeof(err) - 1 &&
	       (m = read(errp[0], err + n, sizeof(err) - 1 - (size_t)n)) > 0)
		n += m;
	err[n > 0 ? n : 0] = 0;
	int st;
	CHECK(waitpid(p, &st, 0) == p);
	long c1 = t_map_count();
	mmc_put_back();
	CHECK(!mmc_changed);
	/* ---- put back ---- */
	struct dedup_stats s = t_stats();
	printf("map count %ld, limit set to %ld; after the fork %ld; %llu pages still sharing\n",
	       c0, c0 - DROP, c1, (unsigned long long)s.pages_sharing);
	if (*err)
		printf("child's stderr: %s", err);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != T_PASS) {
		printf("FAIL: the child %s %d\n", WIFEXITED(st) ? "exited" : "was killed by signal",
		       WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
		return T_FAIL;
	}
	if (strstr(err, "child:")) {
		printf("FAIL: the child's guard did not start cleanly\n");
		return T_FAIL;
	}
	CHECK(check_all("parent, after the child", buf, false) == T_PASS);
	CHECK(dedup_shutdown() == 0);
	CHECK(check_all("parent, after shutdown", buf, false) == T_PASS);
	printf("PASS\n");
	return T_PASS;
}
