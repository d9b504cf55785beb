/* SPDX-License-Identifier: MIT */
/*
 * pl_share.c - a sharing group in preload mode (issue 13): unmodified
 * programs, DEDUP_SHARE in their environment, merge across each other.
 *
 *   pl_share MEMBERS MiB
 *
 * The leader starts MEMBERS programs (fork + exec of itself, so each one is
 * a fresh preloaded process that joins the group named in DEDUP_SHARE).
 * Each fills MiB of malloc()ed memory with the same content - page i holds
 * pl_fill's page i, so no page repeats inside one process and alone none
 * could merge anything - waits until 90% of its pages map the group's
 * canonical pages (group_pages, up to t_cap()), checks every page, and tells
 * the leader. When all have, the leader lets them go on: each writes one
 * page (a private copy: the others' read their old content) and checks
 * every page again. Needs DEDUP_SHARE_HELPER (tests/preload.cmake).
 */
#include "pl.h"

static int member(size_t mib, int report, int go)
{
	size_t np = mib << 8;
	char *p = malloc(np * T_PAGE + T_PAGE), c = 1;
	double t0 = t_now();
	struct dedup_stats s;

	CHECK(p);
	p = (char *)(((uintptr_t)p + T_PAGE - 1) & ~(T_PAGE - 1));   /* whole pages */
	pl_fill(p, np, 9);
	do {
		usleep(50000);
		s = pl_stats();
	} while (s.group_pages < np * 9 / 10 && t_now() - t0 < t_cap());
	if (s.group_pages < np * 9 / 10) {
		pl_print("member", &s);
		fprintf(stderr, "FAIL: member %d: %llu of %zu pages map the group's after %.0f s\n",
			getpid(), (unsigned long long)s.group_pages, np, t_now() - t0);
		c = 0;
	}
	c &= pl_check(p, np, 9);
	printf("member %d: %llu of %zu pages map the group's after %.1f s\n", getpid(),
	       (unsigned long long)s.group_pages, np, t_now() - t0);
	fflush(stdout);
	CHECK(write(report, &c, 1) == 1);
	char x;
	while (read(go, &x, 1) > 0)
		;
	memset(p + 3 * T_PAGE, getpid() & 0xff, T_PAGE);   /* a copy of our own */
	for (size_t i = 0; i < T_PAGE; i++)
		c &= p[3 * T_PAGE + i] == (char)(getpid() & 0xff);
	t_fill(p + 3 * T_PAGE, 9 * 1000003 + 3);            /* and the old content back */
	c &= pl_check(p, np, 9);
	return c ? T_PASS : T_FAIL;
}

int main(int argc, char **argv)
{
	if (argc == 5 && strcmp(argv[1], "member") == 0)
		return member((size_t)atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
	int n = argc > 1 ? atoi(argv[1]) : 3, rep[2], go[2], ok = 1;
	size_t mib = argc > 2 ? (size_t)atoi(argv[2]) : 16;
	pid_t pid[16];
	char a2[32], a3[16], a4[16];

	pl_need_uffd();
	if (!getenv("DEDUP_SHARE") || !getenv("DEDUP_SHARE_HELPER"))
		t_skip("DEDUP_SHARE and DEDUP_SHARE_HELPER are not both set");
	CHECK(n >= 2 && n <= 16 && pipe(rep) == 0 && pipe(go) == 0);
	snprintf(a2, sizeof(a2), "%zu", mib);
	snprintf(a3, sizeof(a3), "%d", rep[1]);
	snprintf(a4, sizeof(a4), "%d", go[0]);
	for (int i = 0; i < n; i++) {
		pid[i] = fork();
		CHECK(pid[i] >= 0);
		if (pid[i] == 0) {
			close(rep[0]);
			close(go[1]);
			execl("/proc/self/exe", argv[0], "member", a2, a3, a4, (char *)NULL);
			_exit(127);
		}
	}
	close(rep[1]);
	close(go[0]);
	for (int i = 0; i < n; i++) {
		char c = 0;
		CHECK(read(rep[0], &c, 1) == 1);
		ok &= c;
	}
	close(go[1]);   /* all merged: go on */
	for (int i = 0; i < n; i++) {
		int st;
		CHECK(waitpid(pid[i], &st, 0) == pid[i]);
		ok &= WIFEXITED(st) && WEXITSTATUS(st) == 0;
	}
	printf("%d preloaded members x %zu MiB merged across each other, every page checked\n", n, mib);
	return ok ? T_PASS : T_FAIL;
}
