/* SPDX-License-Identifier: MIT */
/*
 * test_fork_not_ours: a child made by a fork() that is not libdedup's still
 * keeps its merged pages behaving as anonymous memory (child.c,
 * dd_child_atfork).
 *
 * libdedup's fork() (child.c) guards the merged pages a child inherits
 * (MADV_DONTNEED must read zeros there, not the canonical page). A program
 * linked with libdedup.a and ThreadSanitizer's runtime calls TSan's fork
 * interceptor instead (bound ahead of ours): its children read the
 * canonical page after MADV_DONTNEED (tests/torture seed 2 in a TSan build,
 * "[fork] child MADV_DONTNEED"). Here libc's fork() is called through
 * dlsym(RTLD_NEXT), which runs the atfork handlers but not the code after
 * them in our fork(). Child and grandchild (made the same way) each check:
 *  - a merged page discarded with MADV_DONTNEED reads zeros;
 *  - a merged page written keeps the write, its neighbours their content;
 *  - every other page reads its content.
 * Without the call of dd_child_atfork() in engine.c's postfork_child (as
 * before 2026-12-07) the child fails: "child: page 5 reads wrong
 * (discarded: the canonical page, not zeros)". test_fork_not_ours_catches_naive
 * runs it with no child guard at all (DEDUP_TEST_UNSAFE_NO_CHILD_GUARD=1).
 */
#include <dlfcn.h>
#include <sys/wait.h>
#include "tdedup.h"

#define N 64   /* pages, all the same content: one canonical page */

static char *buf;
static pid_t (*libc_fork)(void);

/* What each page holds in this process: the child's changes are the
 * grandchild's too (fork copies them). */
static bool zeroed[N], written[N];

static void check_child(const char *who, size_t dn, size_t wr)
{
	char want[T_PAGE];

	CHECK(madvise(buf + dn * T_PAGE, T_PAGE, MADV_DONTNEED) == 0);
	zeroed[dn] = true;
	buf[wr * T_PAGE + 100] ^= 0x5a;
	written[wr] = !written[wr];
	for (size_t i = 0; i < N; i++) {
		t_fill(want, 77);
		if (zeroed[i])
			memset(want, 0, T_PAGE);
		if (written[i])
			want[100] ^= 0x5a;
		if (memcmp(buf + i * T_PAGE, want, T_PAGE)) {
			fprintf(stderr, "%s: page %zu reads wrong%s\n", who, i,
				i == dn ? " (discarded: the canonical page, not zeros)" : "");
			_exit(T_FAIL);
		}
	}
}

static int wait_child(pid_t p)
{
	int st;
	CHECK(waitpid(p, &st, 0) == p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int main(void)
{
	libc_fork = (pid_t (*)(void))dlsym(RTLD_NEXT, "fork");
	CHECK(libc_fork && libc_fork != fork);
	t_engine_start(10);
	buf = t_map_anon(N * T_PAGE);
	for (size_t i = 0; i < N; i++)
		t_fill(buf + i * T_PAGE, 77);
	CHECK(dedup_register(buf, N * T_PAGE) == 0);
	double t0 = t_now();
	while (t_stats().pages_sharing < N) {
		CHECK(t_now() - t0 < t_cap());
		CHECK(dedup_scan_now() >= 0);
	}

	pid_t p = libc_fork();
	CHECK(p >= 0);
	if (p == 0) {
		check_child("child", 5, 9);
		pid_t g = libc_fork();   /* a grandchild, the same way */
		if (g < 0)
			_exit(T_FAIL);
		if (g == 0) {
			check_child("grandchild", 20, 30);
			_exit(T_PASS);
		}
		_exit(wait_child(g));
	}
	int rc = wait_child(p);
	if (rc != T_PASS) {
		fprintf(stderr, "FAIL: a child of libc's fork() (exit %d)\n", rc);
		return T_FAIL;
	}
	/* the parent's pages are untouched */
	char want[T_PAGE];
	t_fill(want, 77);
	for (size_t i = 0; i < N; i++)
		CHECK(memcmp(buf + i * T_PAGE, want, T_PAGE) == 0);
	CHECK(dedup_shutdown() == 0);
	fprintf(stderr, "PASS\n");
	return T_PASS;
}
