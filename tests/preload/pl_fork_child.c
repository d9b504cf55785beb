/* SPDX-License-Identifier: MIT */
/*
 * pl_fork_child - a fork()ed child's merged pages behave as anonymous memory
 * (libdedup/src/child.c). The parent merges eight equal chunks, discards a
 * few merged pages without touching them again, and forks. The child checks:
 *   - pages its parent discarded before the fork read zeros;
 *   - madvise(MADV_DONTNEED) through libc, and through a raw system call
 *     (what an interposer cannot see), leave zeros, also after a write;
 *   - a kernel-mode read (write() to a pipe) of a discarded page gives zeros;
 *   - MADV_FREE and MADV_WIPEONFORK succeed; mremap grows a merged chunk;
 *   - a grandchild sees the child's discards (made before its fork) as zeros,
 *     and discards of its own too; unshare(CLONE_NEWUSER), which needs a
 *     single-threaded process, is not refused because of libdedup;
 *   - a process that daemon() made (glibc forks internally) is guarded too.
 * The parent's memory is unchanged by all of it.
 * With DEDUP_TEST_UNSAFE_NO_CHILD_GUARD=1 (no guard) the child must fail.
 */
#include "pl.h"

#include <sched.h>

#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#endif

#define NP 64
#define CH(c) (a + (size_t)(c) * NP * T_PAGE)

static char *a;

#define EXPECT(cond, code)                                                         \
	do {                                                                       \
		if (!(cond)) {                                                     \
			fprintf(stderr, "%d: FAIL at %s:%d: %s\n", (int)getpid(),  \
				__FILE__, __LINE__, #cond);                        \
			_exit(code);                                               \
		}                                                                  \
	} while (0)

/* Page i of chunk c holds its pattern page, or zeros where zero() says. */
static bool chunk_ok(int c, size_t zlo, size_t zhi)
{
	return pl_pages_ok(CH(c), NP, 41 * 1000, zlo, zhi, c);
}

static void fill_chunk(int c)
{
	for (size_t i = 0; i < NP; i++)
		pl_fill(CH(c) + i * T_PAGE, 1, 41 * 1000 + i);
}

static int grandchild(void)
{
	/* the child's discard of chunk 7 pages [16, 32), made before this fork */
	EXPECT(chunk_ok(7, 0, 32), 30);
	EXPECT(madvise(CH(0) + 5 * T_PAGE, T_PAGE, MADV_DONTNEED) == 0, 31);
	EXPECT(chunk_ok(0, 5, 6), 32);
	/* needs a single-threaded process: the guard makes way */
	int r = unshare(CLONE_NEWUSER);
	EXPECT(r == 0 || errno != EINVAL, 33);
	EXPECT(chunk_ok(0, 5, 6) && chunk_ok(7, 0, 32), 34);
	EXPECT(madvise(CH(0) + 6 * T_PAGE, T_PAGE, MADV_DONTNEED) == 0, 35);
	EXPECT(chunk_ok(0, 5, 7), 36);
	return 0;
}

static int child(void)
{
	/* discarded by the parent before the fork, never touched since */
	EXPECT(chunk_ok(7, 0, 16), 10);
	for (int c = 0; c < 7; c++)
		EXPECT(chunk_ok(c, 0, 0), 11);
	/* libc's madvise */
	EXPECT(madvise(CH(1), NP * T_PAGE, MADV_DONTNEED) == 0, 12);
	EXPECT(chunk_ok(1, 0, NP), 13);
	/* a raw system call: no interposer sees it */
	EXPECT(syscall(SYS_madvise, CH(2), NP * T_PAGE, MADV_DONTNEED) == 0, 14);
	EXPECT(chunk_ok(2, 0, NP), 15);
	/* a written (copied-on-write) page, then discarded */
	memset(CH(3), 0x5a, 100);
	EXPECT(madvise(CH(3), T_PAGE, MADV_DONTNEED) == 0, 16);
	EXPECT(chunk_ok(3, 0, 1), 17);
	/* the kernel reads a discarded page (copy_from_user) */
	int pfd[2];
	char buf[T_PAGE];
	EXPECT(pipe(pfd) == 0, 18);
	EXPECT(madvise(CH(6) + 9 * T_PAGE, T_PAGE, MADV_DONTNEED) == 0, 19);
	EXPECT(write(pfd[1], CH(6) + 9 * T_PAGE, T_PAGE) == (ssize_t)T_PAGE, 20);
	EXPECT(read(pfd[0], buf, T_PAGE) == (ssize_t)T_PAGE && pl_is_zero(buf, T_PAGE), 21);
	EXPECT(chunk_ok(6, 9, 10), 22);
	/* MADV_FREE and MADV_WIPEONFORK succeed on merged pages */
	EXPECT(madvise(CH(4), NP * T_PAGE, MADV_FREE) == 0, 23);
	for (size_t i = 0; i < NP; i++) {
		const char *p = CH(4) + i * T_PAGE;
		EXPECT(pl_is_zero(p, T_PAGE) || pl_check(p, 1, 41 * 1000 + i), 24);
	}
	/* mremap grows a chunk holding merged pages (moving it) */
	char *g = mremap(CH(5), NP * T_PAGE, 3 * NP * T_PAGE, MREMAP_MAYMOVE);
	EXPECT(g != MAP_FAILED, 25);
	for (size_t i = 0; i < NP; i++)
		EXPECT(pl_check(g + i * T_PAGE, 1, 41 * 1000 + i), 26);
	EXPECT(pl_is_zero(g + NP * T_PAGE, 2 * NP * T_PAGE), 27);
	/* the moved pages stay guarded */
	EXPECT(madvise(g + 3 * T_PAGE, T_PAGE, MADV_DONTNEED) == 0, 28);
	EXPECT(pl_is_zero(g + 3 * T_PAGE, T_PAGE), 28);
	EXPECT(madvise(CH(0), NP * T_PAGE, MADV_WIPEONFORK) == 0 && chunk_ok(0, 0, 0), 29);
	EXPECT(madvise(CH(0), NP * T_PAGE, MADV_KEEPONFORK) == 0, 29);

	/* discarded here, not touched before the grandchild is forked */
	EXPECT(madvise(CH(7) + 16 * T_PAGE, 16 * T_PAGE, MADV_DONTNEED) == 0, 40);
	fflush(NULL);
	pid_t pid = fork();
	EXPECT(pid >= 0, 41);
	if (pid == 0)
		_exit(grandchild());
	int st;
	EXPECT(waitpid(pid, &st, 0) == pid, 42);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "FAIL: grandchild status %#x\n", st);
		_exit(43);
	}
	EXPECT(chunk_ok(7, 0, 32) && chunk_ok(0, 0, 0), 44);
	return 0;
}

int main(void)
{
	pl_need_uffd();
	a = t_map_anon(8 * NP * T_PAGE);
	for (int c = 0; c < 8; c++)
		fill_chunk(c);
	pl_wait_merged(7 * NP * 9 / 10);
	/* discard merged pages and leave them untouched: the child must read
	 * zeros there although fork() copies no page table entry for them */
	CHECK(madvise(CH(7), 16 * T_PAGE, MADV_DONTNEED) == 0);

	fflush(NULL);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0)
		_exit(child());
	int st;
	CHECK(waitpid(pid, &st, 0) == pid);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "FAIL: child status %#x\n", st);
		return T_FAIL;
	}
	for (int c = 0; c < 7; c++)
		CHECK(chunk_ok(c, 0, 0));
	CHECK(chunk_ok(7, 0, 16));

	/* daemon(): glibc forks internally; the process that goes on is the
	 * child, and it is guarded too */
	int pfd[2];
	CHECK(pipe(pfd) == 0);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		close(pfd[0]);
		if (daemon(1, 1) != 0)
			_exit(50);
		char ok = madvise(CH(0) + T_PAGE, T_PAGE, MADV_DONTNEED) == 0 && chunk_ok(0, 1, 2) &&
			  chunk_ok(7, 0, 16) ? 'y' : 'n';
		(void)!write(pfd[1], &ok, 1);
		_exit(0);
	}
	close(pfd[1]);
	char ok = 0;
	CHECK(read(pfd[0], &ok, 1) == 1);
	CHECK(waitpid(pid, &st, 0) == pid);
	if (ok != 'y') {
		fprintf(stderr, "FAIL: a daemon()ized child read merged content after a discard\n");
		return T_FAIL;
	}
	CHECK(chunk_ok(0, 0, 0));
	fprintf(stderr, "PASS\n");
	return T_PASS;
}
