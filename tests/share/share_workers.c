/* SPDX-License-Identifier: MIT */
/*
 * share_workers.c - issue 13: processes of one group merge across each other.
 *
 *   share_workers MEMBERS MiB
 *
 * MEMBERS processes (API mode, dedup_config.share) each fill MiB of memory
 * with the same content, and no page repeats inside one process: alone,
 * none of them could merge anything. One more process holds the same content
 * in a group of another name. The test waits (up to t_cap()) until the
 * group's pages are merged - the members' Pss over their buffers adds up to
 * about one copy - and then checks:
 *  - every page of every process reads what it wrote (byte for byte);
 *  - a write to a merged page stays in the writer: the others read their old
 *    content, the writer its new one;
 *  - the process in the other group merged nothing of it (its buffer's Pss is
 *    its full size): groups do not share;
 *  - fork() inside a group: a child reads the parent's merged pages right,
 *    and its writes stay its own;
 *  - identical contiguous data ends as long runs: each member's buffer is
 *    a few mappings of contiguous segment pages (about one per segment of
 *    up to 1,024 pages), not thousands of runs of a few pages each (the
 *    4 x 256 MiB bench had 24,256 mappings: page tables in Pss, and about
 *    twenty system calls per run in the merge).
 * Needs the helper: DEDUP_SHARE_HELPER names it; XDG_RUNTIME_DIR is made
 * private to the test.
 */
#include "tcommon.h"
#include "libdedup.h"

#include <signal.h>
#include <sys/wait.h>

static size_t npages;

static void fill(char *b, uint64_t seed)
{
	for (size_t p = 0; p < npages; p++) {
		uint64_t *w = (uint64_t *)(b + p * T_PAGE);
		for (size_t i = 0; i < T_PAGE / 8; i++)
			w[i] = (seed + p) * 0x9e3779b97f4a7c15ULL ^ i;   /* unique per page */
	}
}

static bool same(const char *b, uint64_t seed, size_t p)
{
	const uint64_t *w = (const uint64_t *)(b + p * T_PAGE);
	for (size_t i = 0; i < T_PAGE / 8; i++)
		if (w[i] != ((seed + p) * 0x9e3779b97f4a7c15ULL ^ i))
			return false;
	return true;
}

/* Pss (or with anon, Anonymous) of [lo, hi) in /proc/pid/smaps, KiB. */
static long smaps_kib(pid_t pid, uintptr_t lo, uintptr_t hi, bool anon)
{
	char path[64], line[512];
	long sum = 0;
	bool in = false;

	snprintf(path, sizeof(path), "/proc/%d/smaps", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		long v;
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' '))
			in = a >= lo && b <= hi;
		else if (in && sscanf(line, anon ? "Anonymous: %ld kB" : "Pss: %ld kB", &v) == 1)
			sum += v;
	}
	fclose(f);
	return sum;
}

static long pss_kib(pid_t pid, uintptr_t lo, uintptr_t hi)
{
	return smaps_kib(pid, lo, hi, false);
}

/* Mappings inside [lo, hi) of pid, and the longest of them in pages. */
static long maps_in(pid_t pid, uintptr_t lo, uintptr_t hi, long *longest)
{
	char path[64], line[512];
	long n = 0;

	*longest = 0;
	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && a >= lo && b <= hi) {
			n++;
			if ((long)((b - a) / T_PAGE) > *longest)
				*longest = (long)((b - a) / T_PAGE);
		}
	}
	fclose(f);
	return n;
}

/* A member: fill, register, report its buffer, then obey the parent. */
struct cmd { char op; uint32_t page; };

static int member(const char *group, int rfd, int wfd)
{
	struct dedup_config cfg = { .size = sizeof(cfg), .scan_interval_ms = 20,
				    .cpu_percent = 100, .share = group };
	size_t len = npages * T_PAGE;
	char *b = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	CHECK(b != MAP_FAILED);
	fill(b, 7);
	CHECK(dedup_init(&cfg) == 0);
	CHECK(dedup_register(b, len) == 0);
	uintptr_t at = (uintptr_t)b;
	CHECK(write(wfd, &at, sizeof(at)) == sizeof(at));
	for (;;) {
		struct cmd c;
		char ok = 1;
		if (read(rfd, &c, sizeof(c)) != sizeof(c))
			return 1;
		switch (c.op) {
		case 'v':   /* verify all, page c.page excepted (written by someone) */
			for (size_t p = 0; p < npages; p++)
				if (p != c.page && !same(b, 7, p)) {
					fprintf(stderr, "member %d: page %zu reads wrong\n", getpid(), p);
					ok = 0;
				}
			break;
		case 'w':   /* write page c.page, read it back */
			memset(b + (size_t)c.page * T_PAGE, 0x5a, T_PAGE);
			for (size_t i = 0; i < T_PAGE; i++)
				ok &= b[(size_t)c.page * T_PAGE + i] == 0x5a;
			break;
		case 'f': { /* fork: the child checks and writes, the parent checks */
			pid_t k = fork();
			if (k == 0) {
				bool good = true;
				for (size_t p = 0; p < npages; p++)
					good &= p == c.page || same(b, 7, p);
				memset(b, 0x33, T_PAGE);
				good &= b[T_PAGE - 1] == 0x33;
				_exit(good ? 0 : 1);
			}
			int st;
			ok = k > 0 && waitpid(k, &st, 0) == k && WIFEXITED(st) && WEXITSTATUS(st) == 0;
			ok &= c.page == 0 || same(b, 7, 0);
			break;
		}
		case 'q':
			dedup_shutdown();
			for (size_t p = 0; p < npages; p++)
				ok &= p == c.page || same(b, 7, p);
			CHECK(write(wfd, &ok, 1) == 1);
			return ok ? 0 : 1;
		}
		CHECK(write(wfd, &ok, 1) == 1);
	}
}

struct proc { pid_t pid; int to, from; uintptr_t at; };

static void start(struct proc *p, const char *group)
{
	int a[2], b[2];
	CHECK(pipe(a) == 0 && pipe(b) == 0);
	p->pid = fork();
	CHECK(p->pid >= 0);
	if (p->pid == 0) {
		close(a[1]);
		close(b[0]);
		_exit(member(group, a[0], b[1]));
	}
	close(a[0]);
	close(b[1]);
	p->to = a[1];
	p->from = b[0];
	CHECK(read(p->from, &p->at, sizeof(p->at)) == sizeof(p->at));
}

static bool ask(struct proc *p, char op, uint32_t page)
{
	struct cmd c = { op, page };
	char ok = 0;
	CHECK(write(p->to, &c, sizeof(c)) == sizeof(c));
	return read(p->from, &ok, 1) == 1 && ok;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 4;
	size_t mib = argc > 2 ? (size_t)atoi(argv[2]) : 16;
	char dir[] = "/tmp/dedup-share-test-XXXXXX", group[64], other[64];
	struct proc m[16], x;

	CHECK(n >= 2 && n <= 16);
	if (!getenv("DEDUP_SHARE_HELPER"))
		t_skip("DEDUP_SHARE_HELPER not set");
	npages = mib << 8;
	CHECK(mkdtemp(dir));
	setenv("XDG_RUNTIME_DIR", dir, 1);
	snprintf(group, sizeof(group), "workers-%d", getpid());
	snprintf(other, sizeof(other), "other-%d", getpid());
	for (int i = 0; i < n; i++)
		start(&m[i], group);
	start(&x, other);

	/* Wait for about one copy between them: Pss over the buffers. */
	long one = (long)(mib << 10), total = 0;
	double t0 = t_now();
	for (;;) {
		total = 0;
		for (int i = 0; i < n; i++)
			total += pss_kib(m[i].pid, m[i].at, m[i].at + npages * T_PAGE);
		if (total <= one + one / 20)
			break;
		if (t_now() - t0 > t_cap()) {
			fprintf(stderr, "after %.0f s the %d members' Pss is %ld KiB, one copy is %ld KiB\n",
				t_now() - t0, n, total, one);
			return T_FAIL;
		}
		usleep(100000);
	}
	printf("%d members x %zu MiB: Pss %ld KiB (one copy %ld KiB) after %.1f s\n", n, mib, total,
	       one, t_now() - t0);
	/* Long runs: wait until every page is merged (no anonymous page left
	 * in any member's buffer: the Pss above is not enough, the members'
	 * read-only views of the segments share it), then count each
	 * member's mappings over its buffer. A segment holds up to 1,024
	 * contents, so the ideal is about npages / 1,024 mappings a member;
	 * allow four times that plus 16: a slow machine cuts segments short
	 * (the 200 ms wait) and members publish alternate lookups (about 65
	 * at 4 x 256 MiB, ctest's share_workers_runs, on a busy machine;
	 * 160 with every process under strace). Main had some 10,000. */
	for (long anon = 1; anon;) {
		anon = 0;
		for (int i = 0; i < n; i++)
			anon += smaps_kib(m[i].pid, m[i].at, m[i].at + npages * T_PAGE, true);
		if (anon && t_now() - t0 > t_cap()) {
			fprintf(stderr, "after %.0f s %ld KiB of the members' buffers are not merged\n",
				t_now() - t0, anon);
			return T_FAIL;
		}
		if (anon)
			usleep(100000);
	}
	if (getenv("SHARE_WORKERS_DUMP")) {   /* a look at the runs: member 0's maps */
		char cmd[256];
		snprintf(cmd, sizeof(cmd), "cat /proc/%d/smaps > %s", (int)m[0].pid,
			 getenv("SHARE_WORKERS_DUMP"));
		if (system(cmd) != 0)
			fprintf(stderr, "could not dump the maps\n");
	}
	long most = 0, limit = 4 * (long)(npages / 1024) + 16;
	for (int i = 0; i < n; i++) {
		long longest, v = maps_in(m[i].pid, m[i].at, m[i].at + npages * T_PAGE, &longest);
		printf("member %d: %ld mappings over its %zu pages, the longest %ld pages\n", i, v,
		       npages, longest);
		if (v > most)
			most = v;
	}
	if (most > limit) {
		fprintf(stderr, "fragmented: a member has %ld mappings over its buffer, at most %ld "
			"expected\n", most, limit);
		return T_FAIL;
	}
	long xp = pss_kib(x.pid, x.at, x.at + npages * T_PAGE);
	printf("the process of another group: Pss %ld KiB of %ld\n", xp, one);
	CHECK(xp >= one - one / 50);   /* nothing of it merged with the group */

	for (int i = 0; i < n; i++)
		CHECK(ask(&m[i], 'v', UINT32_MAX));
	/* member 0 writes page 5: only it sees the change */
	CHECK(ask(&m[0], 'w', 5));
	for (int i = 1; i < n; i++)
		CHECK(ask(&m[i], 'v', UINT32_MAX));
	CHECK(ask(&m[0], 'v', 5));
	CHECK(ask(&m[1], 'f', UINT32_MAX));   /* fork in a group */
	for (int i = 0; i < n; i++)
		CHECK(ask(&m[i], 'q', i == 0 ? 5 : UINT32_MAX));
	CHECK(ask(&x, 'q', UINT32_MAX));
	for (int i = 0; i < n; i++)
		waitpid(m[i].pid, NULL, 0);
	waitpid(x.pid, NULL, 0);
	printf("all %d members and the outsider read right, before and after shutdown\n", n);
	return T_PASS;
}
