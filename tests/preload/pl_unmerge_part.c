/* SPDX-License-Identifier: MIT */
/*
 * pl_unmerge_part - the calls that need anonymous memory (mlock,
 * MADV_WIPEONFORK, the program's own UFFDIO_REGISTER) on part of a merged
 * range, cut in the middle of merged runs, behave as on anonymous memory,
 * both where the library still has the range as a region (it unmerges from
 * the region's metadata before dropping it: merge.c, dd_merge_unmerge) and
 * where merged pieces are left that no region covers any more (an earlier
 * call dropped the region: remap.c, dd_pl_unmerge_pieces):
 *   mlock: exactly the range locked (smaps Locked), every page right;
 *   MADV_WIPEONFORK: a fork()ed child reads zeros in the range and the
 *     data around it, the parent its data;
 *   UFFDIO_REGISTER (MISSING): a page discarded in the range raises the
 *     program's fault (a merged page would read its canonical page again);
 * and in every case no merged piece is left in the range, and a write there
 * stays private.
 */
#include <poll.h>

#include "pl.h"

#define NP 64                   /* pages per copy */
#define CL (NP * T_PAGE)
#define SEED 71
#define LO 10                   /* the call's range: pages [LO, HI) of copy 1 */
#define HI 40

enum { OP_MLOCK, OP_WIPE, OP_UFFD, NOPS };
static const char *const op_name[NOPS] = { "mlock", "MADV_WIPEONFORK", "UFFDIO_REGISTER" };

static int uffd = -1;

static void *handler(void *arg)
{
	static char fill[T_PAGE] __attribute__((aligned(4096)));
	(void)arg;
	memset(fill, 0x77, sizeof(fill));
	for (;;) {
		struct pollfd p = { uffd, POLLIN, 0 };
		if (poll(&p, 1, 60000) <= 0)
			return NULL;
		struct uffd_msg m;
		if (read(uffd, &m, sizeof(m)) != sizeof(m) || m.event != UFFD_EVENT_PAGEFAULT)
			continue;
		struct uffdio_copy c = { .dst = m.arg.pagefault.address & ~(uintptr_t)(T_PAGE - 1),
					 .src = (uintptr_t)fill, .len = T_PAGE };
		CHECK(ioctl(uffd, UFFDIO_COPY, &c) == 0);
	}
}

/* The two copies at m hold the pattern, pages [zlo, zhi) of copy 1 zeros. */
static bool data_ok(const char *m, size_t zlo, size_t zhi, const char *who)
{
	if (!pl_check(m, NP, SEED) || !pl_check(m + CL, zlo, SEED) ||
	    !pl_is_zero(m + CL + zlo * T_PAGE, (zhi - zlo) * T_PAGE)) {
		fprintf(stderr, "FAIL: %s: wrong data before the range's end\n", who);
		return false;
	}
	for (size_t i = zhi; i < NP; i++) {
		char want[T_PAGE] __attribute__((aligned(64)));
		t_fill(want, SEED * 1000003 + i);
		if (memcmp(m + CL + i * T_PAGE, want, T_PAGE)) {
			fprintf(stderr, "FAIL: %s: page %zu of copy 1 wrong\n", who, i);
			return false;
		}
	}
	return true;
}

static bool run(char *m, int op, const char *path)
{
	char *r = m + CL + LO * T_PAGE;
	size_t len = (HI - LO) * T_PAGE;
	char who[96];
	snprintf(who, sizeof(who), "%s (%s)", op_name[op], path);

	if (!pl_has_merged(m + CL, CL)) {
		fprintf(stderr, "FAIL: %s: copy 1 is not merged before the call\n", who);
		return false;
	}
	switch (op) {
	case OP_MLOCK:
		if (mlock(r, len) != 0) {
			fprintf(stderr, "FAIL: %s: %s\n", who, strerror(errno));
			return false;
		}
		if (pl_locked_kb(m, 2 * CL) != (long)(len / 1024)) {
			fprintf(stderr, "FAIL: %s: %ld kB locked, not %zu\n", who,
				pl_locked_kb(m, 2 * CL), len / 1024);
			return false;
		}
		break;
	case OP_WIPE: {
		if (madvise(r, len, MADV_WIPEONFORK) != 0) {
			fprintf(stderr, "FAIL: %s: %s\n", who, strerror(errno));
			return false;
		}
		fflush(NULL);
		pid_t pid = fork();
		CHECK(pid >= 0);
		if (pid == 0)
			_exit(data_ok(m, LO, HI, "the child") ? 0 : 1);
		int st;
		CHECK(waitpid(pid, &st, 0) == pid);
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			fprintf(stderr, "FAIL: %s: child status %#x\n", who, st);
			return false;
		}
		break;
	}
	case OP_UFFD:
		if (t_uffd_register(uffd, r, len, UFFDIO_REGISTER_MODE_MISSING) != 0) {
			fprintf(stderr, "FAIL: %s: %s\n", who, strerror(errno));
			return false;
		}
		break;
	}
	if (pl_has_merged(r, len)) {
		fprintf(stderr, "FAIL: %s: merged pieces left in the range\n", who);
		return false;
	}
	if (!data_ok(m, 0, 0, who))
		return false;
	if (op == OP_UFFD) {   /* a discarded page: the program's own fault */
		char *q = r + 5 * T_PAGE;
		CHECK(madvise(q, T_PAGE, MADV_DONTNEED) == 0);
		if (q[100] != 0x77 || q[T_PAGE - 1] != 0x77) {
			fprintf(stderr, "FAIL: %s: a page discarded in the range did not reach the "
				"program's handler (reads %#x)\n", who, q[100] & 0xff);
			return false;
		}
		t_fill(q, SEED * 1000003 + LO + 5);   /* its data again */
	}
	/* a write in the range stays private */
	r[7] = 'w';
	if (!pl_check(m, NP, SEED) || r[7] != 'w') {
		fprintf(stderr, "FAIL: %s: a write in the range reached another copy\n", who);
		return false;
	}
	r[7] = m[LO * T_PAGE + 7];
	return data_ok(m, 0, 0, who);
}

int main(void)
{
	pl_need_uffd();
	uint64_t got;
	uffd = t_uffd_open(0, &got);
	CHECK(uffd >= 0);
	pthread_t h;
	CHECK(pthread_create(&h, NULL, handler, NULL) == 0);

	/* each case has a mapping of its own (two copies): a call drops every
	 * region it touches */
	char *m[2][NOPS];
	for (int p = 0; p < 2; p++)
		for (int op = 0; op < NOPS; op++) {
			m[p][op] = t_map_anon(2 * CL);
			pl_fill(m[p][op], NP, SEED);
			pl_fill(m[p][op] + CL, NP, SEED);
		}
	double t0 = t_now();
	for (int p = 0; p < 2; p++)
		for (int op = 0; op < NOPS; op++)
			while (!pl_has_merged(m[p][op] + CL, CL) && t_now() - t0 < t_cap())
				usleep(20000);

	/* the region path: straight away */
	for (int op = 0; op < NOPS; op++)
		if (!run(m[0][op], op, "in a region"))
			return T_FAIL;
	/* the pieces path: an mprotect of one page drops the region; the
	 * anonymous parts are registered again, the merged pieces are not */
	for (int op = 0; op < NOPS; op++) {
		char *x = m[1][op];
		CHECK(mprotect(x, T_PAGE, PROT_READ) == 0);
		CHECK(mprotect(x, T_PAGE, PROT_READ | PROT_WRITE) == 0);
		if (!run(x, op, "pieces without a region"))
			return T_FAIL;
	}
	/* A neighbour's flags are not the run's: MADV_WIPEONFORK on the page
	 * before the range, then mlock of that page and the range (merged
	 * pieces without a region). The unmerged run could not merge with that
	 * neighbour; it once took its VmFlags, and a fork()ed child read zeros
	 * there. */
	char *w = t_map_anon(2 * CL);
	pl_fill(w, NP, SEED);
	pl_fill(w + CL, NP, SEED);
	t0 = t_now();
	while (!pl_has_merged(w + CL + LO * T_PAGE, (HI - LO) * T_PAGE) && t_now() - t0 < t_cap())
		usleep(20000);
	CHECK(madvise(w + CL + (LO - 1) * T_PAGE, T_PAGE, MADV_WIPEONFORK) == 0);
	if (!pl_has_merged(w + CL + LO * T_PAGE, (HI - LO) * T_PAGE)) {
		fprintf(stderr, "FAIL: the range did not merge (or was unmerged) before mlock\n");
		return T_FAIL;
	}
	CHECK(mlock(w + CL + (LO - 1) * T_PAGE, (HI - LO + 1) * T_PAGE) == 0);
	fflush(NULL);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0)
		_exit(data_ok(w, LO - 1, LO, "the child (a neighbour's WIPEONFORK)") ? 0 : 1);
	int st;
	CHECK(waitpid(pid, &st, 0) == pid);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "FAIL: child status %#x after mlock next to a WIPEONFORK page\n", st);
		return T_FAIL;
	}
	CHECK(data_ok(w, 0, 0, "the parent (a neighbour's WIPEONFORK)"));
	fprintf(stderr, "PASS\n");
	return T_PASS;
}
