/* SPDX-License-Identifier: MIT */
/*
 * pl_fork - fork() of a program whose memory is merged: the child sees the
 * right content and can write to it (its own copy), the parent is not
 * affected, and the parent keeps merging afterwards.
 * With argument "restart" (run with DEDUP_FORK=restart), the child also
 * starts its own engine and merges its own new memory, and a grandchild
 * sees the discards of both the child's engine and its guard right.
 */
#include "pl.h"

#define NP 512

int main(int argc, char **argv)
{
	bool restart = argc > 1 && strcmp(argv[1], "restart") == 0;
	size_t len = NP * T_PAGE;

	pl_need_uffd();
	char *a = t_map_anon(4 * len);
	for (int c = 0; c < 4; c++)
		pl_fill(a + c * len, NP, 41);
	pl_wait_merged(3 * NP * 9 / 10);

	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		for (int c = 0; c < 4; c++)
			if (!pl_check(a + c * len, NP, 41))
				_exit(10);
		for (int c = 0; c < 4; c += 2)
			pl_fill(a + c * len, NP, 42);
		for (int c = 0; c < 4; c++)
			if (!pl_check(a + c * len, NP, c % 2 ? 41 : 42))
				_exit(11);
		if (restart) {
			/* new memory of the child's own, merged by its own engine */
			char *b = t_map_anon(4 * len);
			for (int c = 0; c < 4; c++)
				pl_fill(b + c * len, NP, 43);
			struct dedup_stats s = pl_stats();
			double t0 = t_now();
			while (s.pages_sharing < 3 * NP * 9 / 10 && t_now() - t0 < t_cap()) {
				usleep(20000);
				s = pl_stats();
			}
			pl_print("child", &s);
			if (s.pages_sharing < 3 * NP * 9 / 10)
				_exit(12);
			for (int c = 0; c < 4; c++)
				if (!pl_check(b + c * len, NP, 43))
					_exit(13);
			/* The child's own engine and the guard of the parent's
			 * pages, together, seen by a grandchild: (1) a page of
			 * the parent's merged memory discarded here, then the
			 * range unmapped and mapped again with content the
			 * child's engine merges: it must not read as discarded;
			 * (2) a page the child's engine merged, discarded and
			 * not touched before the fork: zeros. */
			char *a1 = NULL;   /* a copy that is one of the parent's merged pieces */
			for (int c = 0; c < 4 && !a1; c++)
				if (pl_has_merged(a + c * len, len))
					a1 = a + c * len;
			if (!a1)
				_exit(20);
			if (madvise(a1, T_PAGE, MADV_DONTNEED) || !pl_is_zero(a1, T_PAGE))
				_exit(14);
			if (mmap(a1, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
				 -1, 0) != a1)
				_exit(15);
			pl_fill(a1, NP, 43);
			uint64_t m0 = pl_stats().merges;
			t0 = t_now();
			while (pl_stats().merges < m0 + NP * 9 / 10 && t_now() - t0 < t_cap())
				usleep(20000);
			if (pl_stats().merges < m0 + NP * 9 / 10)
				_exit(21);   /* (1) below would test nothing */
			if (madvise(b + len + 3 * T_PAGE, T_PAGE, MADV_DONTNEED))
				_exit(16);
			pid_t g = fork();
			if (g == 0) {
				if (!pl_check(a1, NP, 43))
					_exit(17);
				if (!pl_is_zero(b + len + 3 * T_PAGE, T_PAGE))
					_exit(18);
				_exit(0);
			}
			int gs;
			if (g < 0 || waitpid(g, &gs, 0) != g || !WIFEXITED(gs) || WEXITSTATUS(gs))
				_exit(19);
		}
		_exit(0);
	}
	int st;
	CHECK(waitpid(pid, &st, 0) == pid);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "FAIL: child status %#x\n", st);
		return T_FAIL;
	}
	for (int c = 0; c < 4; c++)
		CHECK(pl_check(a + c * len, NP, 41));
	/* the parent still merges new memory after the fork */
	uint64_t before = pl_stats().merges;
	char *b = t_map_anon(4 * len);
	for (int c = 0; c < 4; c++)
		pl_fill(b + c * len, NP, 44);
	pl_wait_merged(before + 3 * NP * 9 / 10);
	for (int c = 0; c < 4; c++)
		CHECK(pl_check(b + c * len, NP, 44));
	fprintf(stderr, "PASS\n");
	return T_PASS;
}
