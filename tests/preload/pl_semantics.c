/* SPDX-License-Identifier: MIT */
/*
 * pl_semantics - the remaining calls of issue 4's list behave on merged
 * memory as on anonymous memory:
 *   mprotect(PROT_READ): reads work, a write faults (SIGSEGV), also after
 *     the engine had time to merge again; back to read-write, writes work;
 *   munmap of half a merged chunk: the other half keeps its content, the
 *     unmapped half faults;
 *   mlock: succeeds, the whole range is resident and locked (smaps Locked),
 *     content intact; munlock;
 *   MADV_DONTFORK: the child has no such range (SIGSEGV there);
 *   MADV_WIPEONFORK: the child reads zeros there, the parent its data;
 *   munmap and mmap again at the same address: the new memory merges.
 */
#include "pl.h"

#include <setjmp.h>
#include <signal.h>

#define NP 64
#define CL (NP * T_PAGE)

static sigjmp_buf jb;

static void on_segv(int sig)
{
	(void)sig;
	siglongjmp(jb, 1);
}

/* Does touching p (writing when write) fault? */
static bool faults(char *p, bool write)
{
	struct sigaction sa = { .sa_handler = on_segv }, old;
	bool f = false;
	sigaction(SIGSEGV, &sa, &old);
	if (sigsetjmp(jb, 1) == 0) {
		if (write)
			*(volatile char *)p = 1;
		else
			(void)*(volatile char *)p;
	} else {
		f = true;
	}
	sigaction(SIGSEGV, &old, NULL);
	return f;
}

static char *ch(char *a, int c) { return a + (size_t)c * CL; }

int main(void)
{
	pl_need_uffd();
	char *a = t_map_anon(7 * CL);
	for (int c = 0; c < 7; c++)
		pl_fill(ch(a, c), NP, 51);
	pl_wait_merged(6 * NP * 9 / 10);
	for (int c = 1; c < 6; c++)
		if (!pl_has_merged(ch(a, c), CL)) {
			fprintf(stderr, "FAIL: chunk %d did not merge\n", c);
			return T_FAIL;
		}

	/* 1. mprotect */
	CHECK(mprotect(ch(a, 1), CL, PROT_READ) == 0);
	CHECK(pl_check(ch(a, 1), NP, 51));
	CHECK(faults(ch(a, 1) + 5 * T_PAGE, true));
	usleep(300000);   /* passes of the engine meanwhile */
	CHECK(faults(ch(a, 1) + 6 * T_PAGE, true));
	CHECK(pl_check(ch(a, 1), NP, 51));
	CHECK(mprotect(ch(a, 1), CL, PROT_READ | PROT_WRITE) == 0);
	CHECK(!faults(ch(a, 1) + 5 * T_PAGE, true));
	t_fill(ch(a, 1) + 5 * T_PAGE, 51 * 1000003 + 5);   /* page 5's pattern again */
	CHECK(pl_check(ch(a, 1), NP, 51));

	/* 2. munmap half of a merged chunk */
	CHECK(munmap(ch(a, 2) + CL / 2, CL / 2) == 0);
	CHECK(pl_check(ch(a, 2), NP / 2, 51));
	CHECK(faults(ch(a, 2) + CL / 2, false));
	CHECK(faults(ch(a, 2) + CL - 1, false));

	/* 3. mlock */
	CHECK(mlock(ch(a, 3), CL) == 0);
	CHECK(pl_check(ch(a, 3), NP, 51));
	long kb = pl_locked_kb(ch(a, 3), CL);
	if (kb != (long)(CL / 1024)) {
		fprintf(stderr, "FAIL: %ld kB locked of %lu\n", kb, CL / 1024);
		return T_FAIL;
	}
	CHECK(munlock(ch(a, 3), CL) == 0);
	CHECK(pl_check(ch(a, 3), NP, 51));

	/* 4 and 5. MADV_DONTFORK, MADV_WIPEONFORK */
	CHECK(madvise(ch(a, 4), CL, MADV_DONTFORK) == 0);
	CHECK(madvise(ch(a, 5), CL, MADV_WIPEONFORK) == 0);
	fflush(NULL);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		if (!faults(ch(a, 4), false) || !faults(ch(a, 4) + CL - 1, false))
			_exit(20);
		if (!pl_is_zero(ch(a, 5), CL))
			_exit(21);
		if (!pl_check(ch(a, 6), NP, 51))
			_exit(22);
		_exit(0);
	}
	int st;
	CHECK(waitpid(pid, &st, 0) == pid);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "FAIL: child status %#x (20: DONTFORK range mapped, 21: "
			"WIPEONFORK range not zeros)\n", st);
		return T_FAIL;
	}
	CHECK(pl_check(ch(a, 4), NP, 51) && pl_check(ch(a, 5), NP, 51));

	/* 6. memory mapped again where a merged run was merges again (the
	 * placement's mremap once marked such addresses as libdedup's own) */
	CHECK(munmap(ch(a, 6), CL) == 0);
	CHECK(mmap(ch(a, 6), CL, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
		   -1, 0) == ch(a, 6));
	pl_fill(ch(a, 6), NP, 51);
	double t0 = t_now();
	while (!pl_has_merged(ch(a, 6), CL) && t_now() - t0 < t_cap())
		usleep(20000);
	if (!pl_has_merged(ch(a, 6), CL)) {
		fprintf(stderr, "FAIL: memory mapped again at a former merged run never merged\n");
		return T_FAIL;
	}
	CHECK(pl_check(ch(a, 6), NP, 51));
	fprintf(stderr, "PASS\n");
	return T_PASS;
}
