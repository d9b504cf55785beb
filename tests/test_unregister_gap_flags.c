/* SPDX-License-Identifier: MIT */
/*
 * test_unregister_gap_flags: handing back isolated merged pages keeps the
 * flags the program gave the anonymous pages between them (the gaps).
 *
 * A span of runs is handed back with one mapping moved over the whole span
 * (merge.c, um_span): the gaps' mappings are replaced. A gap the program
 * gave MADV_WIPEONFORK, MADV_DONTFORK or MADV_DONTDUMP after the merge is
 * a mapping of its own whose flags only smaps shows; replaced by a plain
 * one, a fork()ed child would read the parent's secrets where it should
 * read zeros (BoringSSL's fork-safe RNG state is such a page), or inherit
 * a range it should not have, and a core dump would hold what the program
 * kept out of it. So a span forms only over gaps whose flags it has read
 * and can give the replacement (um_gap_ok); the others stay in place.
 *
 * Checks, after dedup_unregister(): every byte; the flags of each advised
 * gap and run, and of plain ones (smaps); the plain stretches one mapping
 * each; a fork()ed child reads zeros in the
 * WIPEONFORK gap, faults on the DONTFORK gap and reads the plain gaps; and
 * that spans were used at all (few voluntary context switches: one mremap
 * per run waits for our reader, a span does not), unless the test runs with
 * DEDUP_TEST_UNMERGE_BY_RUN. With DEDUP_TEST_UNSAFE_SPAN_FLAGS (spans that
 * ignore flags) it must fail.
 */
#include <setjmp.h>
#include <signal.h>
#include <sys/wait.h>

#include "tdedup.h"

#define RUNS 1024
#define T_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define N (2 * RUNS)

static char *region;

/* page i: even pages are duplicates (4 contents), odd pages unique */
static void fill(size_t i)
{
	t_fill(region + i * T_PAGE, i % 2 ? 1000000 + i : 31 + (i / 2) % 4);
}

/* Does the smaps entry of the mapping holding p list flag ("dd", ...)?
 * Also gives that mapping's bounds. */
static bool has_flag(const void *p, const char *flag, uintptr_t *lo, uintptr_t *hi)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	bool in = false, got = false;
	CHECK(f);
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = (uintptr_t)p >= a && (uintptr_t)p < b;
			if (in) {
				*lo = a;
				*hi = b;
			}
		} else if (in && strncmp(line, "VmFlags:", 8) == 0) {
			for (char *q = line + 8; *q; q++)
				if (q[0] == flag[0] && q[1] == flag[1] && q[-1] == ' ')
					got = true;
			break;
		}
	}
	fclose(f);
	return got;
}

static int ours(const void *p)
{
	char line[512];
	FILE *f = fopen("/proc/self/maps", "r");
	int r = 0;
	CHECK(f);
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx", &a, &b) == 2 && (uintptr_t)p >= a && (uintptr_t)p < b)
			r = strstr(line, "memfd:libdedup") != NULL;
	}
	fclose(f);
	return r;
}

static long voluntary_switches(void)
{
	char line[256];
	long v = -1;
	FILE *f = fopen("/proc/thread-self/status", "r");
	CHECK(f);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "voluntary_ctxt_switches: %ld", &v) == 1)
			break;
	fclose(f);
	return v;
}

static sigjmp_buf jb;
static void on_segv(int sig)
{
	(void)sig;
	siglongjmp(jb, 1);
}

/* the advised gaps (odd pages) */
#define WIPE 41
#define DONTFORK 61
#define DUMP 81
#define DUMP_LO 100   /* [DUMP_LO, DUMP_HI): runs and gaps, all DONTDUMP */
#define DUMP_HI 109
#define PLAIN 201

int main(void)
{
	bool by_run = getenv("DEDUP_TEST_UNMERGE_BY_RUN");

	t_engine_start(3600000);
	region = t_map_anon(N * T_PAGE);
	CHECK(madvise(region, N * T_PAGE, MADV_NOHUGEPAGE) == 0);
	for (size_t i = 0; i < N; i++)
		fill(i);
	CHECK(dedup_register(region, N * T_PAGE) == 0);
	double give_up = t_now() + t_cap();
	static const int around[] = { WIPE, DONTFORK, DUMP, PLAIN, DUMP_LO, DUMP_HI - 1 };
	for (bool all = false; !all;) {
		CHECK(t_now() < give_up);
		dedup_scan_now();
		all = true;
		for (size_t k = 0; k < T_ARRAY_SIZE(around); k++) {
			int g = around[k];
			if (g % 2)   /* a gap: both neighbours merged */
				all &= ours(region + (g - 1) * T_PAGE) && ours(region + (g + 1) * T_PAGE);
			else
				all &= ours(region + g * T_PAGE);
		}
	}
	long merged = (long)t_stats().pages_sharing;
	CHECK(madvise(region + WIPE * T_PAGE, T_PAGE, MADV_WIPEONFORK) == 0);
	CHECK(madvise(region + DONTFORK * T_PAGE, T_PAGE, MADV_DONTFORK) == 0);
	CHECK(madvise(region + DUMP * T_PAGE, T_PAGE, MADV_DONTDUMP) == 0);
	CHECK(madvise(region + DUMP_LO * T_PAGE, (DUMP_HI - DUMP_LO) * T_PAGE, MADV_DONTDUMP) == 0);
	uintptr_t lo, hi;
	CHECK(has_flag(region + WIPE * T_PAGE, "wf", &lo, &hi));
	CHECK(lo == (uintptr_t)region + WIPE * T_PAGE && hi == lo + T_PAGE);   /* one VMA */

	long v0 = voluntary_switches();
	CHECK(dedup_unregister(region, N * T_PAGE) == 0);
	long switches = voluntary_switches() - v0;
	printf("%ld pages merged; hand-back: %ld voluntary context switches\n", merged, switches);

	int bad = 0;
	static char want[T_PAGE];
	for (size_t i = 0; i < N; i++) {
		t_fill(want, i % 2 ? 1000000 + i : 31 + (i / 2) % 4);
		if (memcmp(region + i * T_PAGE, want, T_PAGE) != 0) {
			fprintf(stderr, "page %zu reads wrong after the hand-back\n", i);
			return T_FAIL;
		}
	}
	static const struct { int page; const char *flag; bool want; } chk[] = {
		{ WIPE, "wf", true }, { DONTFORK, "dc", true }, { DUMP, "dd", true },
		{ DUMP_LO, "dd", true }, { DUMP_LO + 1, "dd", true }, { DUMP_HI - 2, "dd", true },
		{ DUMP_HI - 1, "dd", true }, { PLAIN, "dd", false }, { PLAIN, "wf", false },
		{ PLAIN, "dc", false }, { DUMP_HI, "dd", false }, { DUMP_LO - 1, "dd", false },
		/* the runs next to an advised gap keep their own flags: a replacement
		 * that could not merge with the gap once took the gap's */
		{ WIPE - 1, "wf", false }, { WIPE + 1, "wf", false },
		{ DONTFORK - 1, "dc", false }, { DONTFORK + 1, "dc", false },
		{ DUMP - 1, "dd", false }, { DUMP + 1, "dd", false },
	};
	for (size_t k = 0; k < T_ARRAY_SIZE(chk); k++) {
		bool got = has_flag(region + chk[k].page * T_PAGE, chk[k].flag, &lo, &hi);
		if (got != chk[k].want) {
			fprintf(stderr, "page %d: VmFlags %s \"%s\" after the hand-back (%#lx-%#lx)\n",
				chk[k].page, got ? "has" : "lacks", chk[k].flag, (unsigned long)lo,
				(unsigned long)hi);
			bad++;
		}
	}
	/* and the plain parts are one mapping each again */
	has_flag(region + PLAIN * T_PAGE, "dd", &lo, &hi);
	if (lo != (uintptr_t)region + DUMP_HI * T_PAGE || hi < (uintptr_t)region + N * T_PAGE) {
		fprintf(stderr, "pages %d-%d: mapping %#lx-%#lx, not one from page %d on\n", DUMP_HI,
			N - 1, (unsigned long)lo, (unsigned long)hi, DUMP_HI);
		bad++;
	}
	has_flag(region + T_PAGE, "dd", &lo, &hi);
	if (lo > (uintptr_t)region || hi != (uintptr_t)region + WIPE * T_PAGE) {
		fprintf(stderr, "pages 0-%d: mapping %#lx-%#lx, not one\n", WIPE - 1,
			(unsigned long)lo, (unsigned long)hi);
		bad++;
	}
	/* what a child sees */
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		static char zero[T_PAGE];
		if (memcmp(region + WIPE * T_PAGE, zero, T_PAGE) != 0)
			_exit(10);   /* the parent's page in a WIPEONFORK range */
		if (memcmp(region + PLAIN * T_PAGE, zero, T_PAGE) == 0 ||
		    memcmp(region + (WIPE - 1) * T_PAGE, zero, T_PAGE) == 0 ||
		    memcmp(region + (WIPE + 1) * T_PAGE, zero, T_PAGE) == 0)
			_exit(11);
		signal(SIGSEGV, on_segv);
		if (sigsetjmp(jb, 1) == 0) {
			volatile char c = region[DONTFORK * T_PAGE];
			(void)c;
			_exit(12);   /* a DONTFORK range in the child */
		}
		_exit(0);
	}
	int status;
	CHECK(waitpid(pid, &status, 0) == pid);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "child: %s %d (10: WIPEONFORK gap not wiped, 11: plain gap or run wiped, "
			"12: DONTFORK gap inherited)\n", WIFEXITED(status) ? "exit" : "signal",
			WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
		bad++;
	}
	/* Spans at all: one mremap per run sleeps until our reader has read
	 * its event (a voluntary switch each), a span once per span. */
	if (!by_run && switches > RUNS / 4) {
		fprintf(stderr, "%ld voluntary switches handing back %d runs: no spans?\n", switches,
			RUNS);
		bad++;
	}
	if (bad)
		return T_FAIL;
	CHECK(dedup_shutdown() == 0);
	printf("PASS\n");
	return T_PASS;
}
