/* SPDX-License-Identifier: MIT */
/*
 * test_stat_watch: `dedup-stat --watch` on a real engine in another process.
 * A child (this program again, with --child) runs the engine with a 50 ms
 * interval over duplicated memory and exits after 2 s without
 * dedup_shutdown(), as a crashing program would. Meanwhile:
 *   - `dedup-stat --watch 0.2 --count 3` (the list) prints 3 frames with the
 *     rate columns, frames separated by a blank line (stdout is a pipe, so no
 *     ANSI codes);
 *   - `dedup-stat PID --watch 0.2 --count 100 --json` prints one JSON object
 *     per refresh with its rates, sees the merges happen, and stops by
 *     itself when the child exits (exit 0); the stale file is then removed.
 *
 * The child mode doubles as a workload to look at by hand:
 *   DEDUP_STAT_DIR=/tmp/s test_stat_watch TOOL --child 1 60 &  dedup-stat
 */
#include "test_stat_common.h"

static const size_t N = 2048, K = 8;

static int child_main(int ready_fd, double hold_s)
{
	char *buf = ts_dup_memory(N, K);
	t_engine_start(50);
	CHECK(dedup_register(buf, N * T_PAGE) == 0);
	(void)!write(ready_fd, "r", 1);
	usleep((useconds_t)(hold_s * 1e6));
	_exit(0);   /* no dedup_shutdown(): the file stays behind, stale */
}

static int count(const char *s, const char *what)
{
	int n = 0;
	for (const char *p = strstr(s, what); p; p = strstr(p + 1, what))
		n++;
	return n;
}

int main(int argc, char **argv)
{
	int p[2];
	char c, pidarg[16], path[128];

	if (argc > 2 && !strcmp(argv[2], "--child"))
		return child_main(atoi(argv[3]), argc > 4 ? atof(argv[4]) : 2.0);
	ts_setup(argc, argv);
	CHECK(pipe(p) == 0);
	pid_t child = fork();
	CHECK(child >= 0);
	if (child == 0) {
		char fd[16];
		close(p[0]);
		snprintf(fd, sizeof(fd), "%d", p[1]);
		execl("/proc/self/exe", argv[0], argv[1], "--child", fd, (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	if (read(p[0], &c, 1) != 1) {
		int st;
		waitpid(child, &st, 0);
		if (WIFEXITED(st) && WEXITSTATUS(st) == T_SKIP)
			t_skip("userfaultfd not usable here");
		fprintf(stderr, "child failed\n");
		return T_FAIL;
	}
	snprintf(path, sizeof(path), "%s/%d.stats", ts_dir, (int)child);
	CHECK(access(path, F_OK) == 0);

	/* the list, three frames */
	struct ts_run *r = ts_tool_run("--watch", "0.2", "--count", "3", NULL);
	fprintf(stderr, "%s", r->out);
	CHECK(r->status == 0);
	CHECK(count(r->out, "every 0.2 s") == 3 && count(r->out, "MERGED/s") == 3);
	CHECK(count(r->out, "\n\ndedup-stat ") == 2 && !strchr(r->out, '\033'));
	snprintf(pidarg, sizeof(pidarg), "\n%7d ", (int)child);
	CHECK(count(r->out, pidarg) == 3);

	/* one process until it exits */
	snprintf(pidarg, sizeof(pidarg), "%d", (int)child);
	double t0 = t_now();
	r = ts_tool_run(pidarg, "--watch", "0.2", "--count", "100", "--json", NULL);
	fprintf(stderr, "after %.1f s, exit %d, stderr: %s", t_now() - t0, r->status, r->err);
	CHECK(r->status == 0);
	CHECK(t_now() - t0 < 15.0);   /* stopped by the exit, not by --count */
	char want[64];
	snprintf(want, sizeof(want), "dedup-stat: process %d exited\n", (int)child);
	CHECK(!strcmp(r->err, want));
	int frames = 0, windows = 0;
	uint64_t v, sharing = 0;
	for (char *line = strtok(r->out, "\n"); line; line = strtok(NULL, "\n")) {
		if (line[0] != '{')
			continue;   /* the "gone" line */
		frames++;
		const char *rates = strstr(line, "\"rates\":{");
		CHECK(rates && strstr(rates, "\"merged_pages_per_second\":") &&
		      strstr(rates, "\"scanned_mib_per_second\":") &&
		      strstr(rates, "\"engine_cpu_percent\":"));
		CHECK(ts_json_u64(line, "pid", &v) && v == (uint64_t)child);
		if (frames > 1 && strstr(rates, "\"since_start\":false") &&
		    !strstr(rates, "\"window_seconds\":0.000"))
			windows++;
		if (ts_json_u64(strstr(line, "\"stats\":{"), "pages_sharing", &v))
			sharing = v;
	}
	fprintf(stderr, "%d frames, %d with a rate window, pages_sharing %llu\n", frames, windows,
		(unsigned long long)sharing);
	CHECK(frames >= 3 && windows >= 1);
	CHECK(sharing == N);
	int st;
	CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	/* The stale file is removed by --watch when the process is gone - or,
	 * when the exiting process still held its lock at that moment (slow
	 * exits, e.g. under LeakSanitizer), by the next dedup-stat run. */
	if (access(path, F_OK) == 0)
		ts_tool_run(NULL);
	CHECK(access(path, F_OK) < 0);   /* the stale file was removed */
	return T_PASS;
}
