/* SPDX-License-Identifier: MIT */
/*
 * test_stat_exit: what a process leaves when it ends with DEDUP_LOG=stats.
 * A child (this program again, with --child MODE) merges N pages of K
 * contents through the API, its stderr a pipe we read; then:
 *   shutdown  dedup_shutdown(), then exit: one table, "stats at shutdown",
 *             with the merged figures (taken before unmerging), file gone;
 *   exit      exit() without dedup_shutdown(): one table, "stats at exit",
 *             and the stats file removed all the same;
 *   closed    the same, but an atexit handler closes stderr first, as GNU
 *             programs do: the table still arrives (a copy of stderr).
 * And preload mode (argv[2], libdedup.so; not in the sanitizer build):
 * `bash -c 'exec 2>&-'` under LD_PRELOAD, whose stderr is closed when the
 * library's destructors run: one table, file removed. (Not sh: dash leaves
 * with _exit(), which runs no destructor.)
 */
#include "test_stat_common.h"

static const size_t N = 1024, K = 4;

static void close_stderr(void)
{
	close(STDERR_FILENO);
}

static int child_main(const char *mode)
{
	char *buf = ts_dup_memory(N, K);
	t_engine_start(3600000);
	CHECK(dedup_register(buf, N * T_PAGE) == 0);
	CHECK(dedup_scan_now() >= 0);
	CHECK(dedup_scan_now() == (long)N);
	if (!strcmp(mode, "shutdown"))
		CHECK(dedup_shutdown() == 0);
	else if (!strcmp(mode, "closed"))
		atexit(close_stderr);
	exit(0);   /* runs atexit handlers, then the library's destructors */
}

/* Run argv with DEDUP_LOG=stats; its stderr into err, its pid into *pid. */
static int run(char *const argv[], const char *preload, char *err, size_t size, pid_t *pid)
{
	int e[2], st;
	CHECK(pipe(e) == 0);
	*pid = fork();
	CHECK(*pid >= 0);
	if (*pid == 0) {
		dup2(e[1], STDERR_FILENO);
		close(e[0]);
		close(e[1]);
		setenv("DEDUP_LOG", "stats", 1);
		if (preload) {
			setenv("LD_PRELOAD", preload, 1);
			setenv("DEDUP_PRELOAD", "1", 1);
			setenv("DEDUP_START", "0", 1);   /* small: no lazy start */
		}
		execv(argv[0], argv);
		_exit(127);
	}
	close(e[1]);
	ts_read_all(e[0], err, size);
	close(e[0]);
	CHECK(waitpid(*pid, &st, 0) == *pid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* The value of "libdedup[pid]: name" in the table, or -1. */
static long long row(const char *err, pid_t pid, const char *name)
{
	char pat[96];
	snprintf(pat, sizeof(pat), "libdedup[%d]: %-20s ", (int)pid, name);
	const char *p = strstr(err, pat);
	return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

static int count(const char *s, const char *what)
{
	int n = 0;
	for (const char *p = strstr(s, what); p; p = strstr(p + 1, what))
		n++;
	return n;
}

static bool file_left(pid_t pid)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/%d" DD_PUB_SUFFIX, ts_dir, (int)pid);
	return access(path, F_OK) == 0;
}

static void check_api(const char *self, const char *tool, const char *mode)
{
	static char err[16384];
	char want[64];
	pid_t pid;
	char *argv[] = { (char *)self, (char *)tool, (char *)"--child", (char *)mode, NULL };
	int status = run(argv, NULL, err, sizeof(err), &pid);

	fprintf(stderr, "--- %s: exit %d, stderr:\n%s", mode, status, err);
	if (status == T_SKIP)
		t_skip("userfaultfd not usable here");
	CHECK(status == 0);
	snprintf(want, sizeof(want), "libdedup[%d]: stats at %s\n", (int)pid,
		 strcmp(mode, "shutdown") ? "exit" : "shutdown");
	CHECK(count(err, want) == 1 && count(err, "]: stats at ") == 1);
	CHECK(row(err, pid, "pages_sharing") == (long long)N);
	CHECK(row(err, pid, "pages_shared") == (long long)K);
	CHECK(row(err, pid, "bytes_saved") == (long long)((N - K) * T_PAGE));
	long long meta = row(err, pid, "metadata_bytes");
	CHECK(meta > 0 && row(err, pid, "process_profit") == (long long)((N - K) * T_PAGE) - meta);
	CHECK(!file_left(pid));
}

int main(int argc, char **argv)
{
	static char err[16384];

	if (argc > 3 && !strcmp(argv[2], "--child"))
		return child_main(argv[3]);
	ts_setup(argc, argv);
	check_api("/proc/self/exe", argv[1], "shutdown");
	check_api("/proc/self/exe", argv[1], "exit");
	check_api("/proc/self/exe", argv[1], "closed");

	if (argc < 3) {
		fprintf(stderr, "no libdedup.so given: preload mode not tested\n");
		return T_PASS;
	}
	pid_t pid;
	char *sh[] = { (char *)"/bin/bash", (char *)"-c", (char *)"exec 2>&-; exit 0", NULL };
	int status = run(sh, argv[2], err, sizeof(err), &pid);
	fprintf(stderr, "--- preload: exit %d, stderr:\n%s", status, err);
	CHECK(status == 0);
	if (strstr(err, "not merging")) {
		fprintf(stderr, "userfaultfd not usable: preload mode not tested\n");
		return T_PASS;
	}
	CHECK(count(err, "]: stats at ") == 1 && row(err, pid, "pages_scanned") >= 0 &&
	      strstr(err, "]: process_profit "));
	CHECK(!file_left(pid));
	return T_PASS;
}
