/* SPDX-License-Identifier: MIT */
/*
 * test_stat_watch: `dedup-stat --watch` on a real engine in another process.
 * A child (this program again, with --child) runs the engine with a 50 ms
 * interval over duplicated memory and exits when told, without
 * dedup_shutdown(), as a crashing program would. Meanwhile:
 *   - `dedup-stat --watch 0.2 --count 3` (the list) prints 3 frames with the
 *     rate columns, frames separated by a blank line (stdout is a pipe, so no
 *     ANSI codes);
 *   - `dedup-stat PID --watch 0.2 --json` prints one JSON object per refresh
 *     with its rates and sees the merges happen; once it has shown them
 *     (3 frames or more, one with a rate window, all pages merged: work,
 *     however long a busy machine takes for it, up to t_cap()) the child is
 *     told to exit, and the tool stops by itself (exit 0, "process exited");
 *     the stale file is then removed.
 *
 * The child mode doubles as a workload to look at by hand:
 *   DEDUP_STAT_DIR=/tmp/s test_stat_watch TOOL --child 1 60 &  dedup-stat
 */
#include "test_stat_common.h"

static const size_t N = 2048, K = 8;

/* Hold the engine for hold_s seconds, or until exit_fd (if >= 0) is
 * readable: a byte from the parent, or its end of the pipe closed. */
static int child_main(int ready_fd, double hold_s, int exit_fd)
{
	char *buf = ts_dup_memory(N, K);
	t_engine_start(50);
	CHECK(dedup_register(buf, N * T_PAGE) == 0);
	(void)!write(ready_fd, "r", 1);
	struct pollfd pf = { .fd = exit_fd, .events = POLLIN };
	while (poll(&pf, exit_fd >= 0 ? 1 : 0, (int)(hold_s * 1000)) < 0 && errno == EINTR)
		;
	_exit(0);   /* no dedup_shutdown(): the file stays behind, stale */
}

/* The tool, running with its stdout and stderr on pipes. */
struct tool {
	pid_t pid;
	int out, err;
};

static struct tool tool_start(const char *const argv[])
{
	int o[2], e[2];
	struct tool t;
	CHECK(pipe(o) == 0 && pipe(e) == 0);
	for (int i = 0; i < 2; i++)
		CHECK(fcntl(o[i], F_SETFD, FD_CLOEXEC) == 0 && fcntl(e[i], F_SETFD, FD_CLOEXEC) == 0);
	t.pid = fork();
	CHECK(t.pid >= 0);
	if (t.pid == 0) {
		dup2(o[1], 1);
		dup2(e[1], 2);
		execv(ts_tool, (char *const *)argv);
		_exit(127);
	}
	close(o[1]);
	close(e[1]);
	t.out = o[0];
	t.err = e[0];
	return t;
}

/* One line of the tool's stdout into line (without the newline): 1, or 0
 * at end of file, or -1 when nothing came before the deadline. */
static int tool_line(struct tool *t, char *line, size_t size, double deadline)
{
	static char buf[1 << 16];
	static size_t have;
	for (;;) {
		char *nl = memchr(buf, '\n', have);
		if (nl || have == sizeof(buf) - 1) {
			size_t n = nl ? (size_t)(nl - buf) : have;
			size_t c = n < size - 1 ? n : size - 1;
			memcpy(line, buf, c);
			line[c] = 0;
			have -= n + (nl != NULL);
			memmove(buf, buf + n + (nl != NULL), have);
			return 1;
		}
		double left = deadline - t_now();
		if (left <= 0)
			return -1;
		struct pollfd pf = { .fd = t->out, .events = POLLIN };
		int r = poll(&pf, 1, (int)(left * 1000) + 1);
		if (r < 0 && errno == EINTR)
			continue;
		CHECK(r >= 0);
		if (r == 0)
			continue;
		ssize_t got = read(t->out, buf + have, sizeof(buf) - 1 - have);
		if (got < 0 && errno == EINTR)
			continue;
		CHECK(got >= 0);
		if (got == 0) {
			if (!have)
				return 0;
			buf[have++] = '\n';   /* a last line without a newline */
			continue;
		}
		have += (size_t)got;
	}
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
	int p[2], q[2];
	char c, pidarg[16], path[128];

	if (argc > 2 && !strcmp(argv[2], "--child"))
		return child_main(atoi(argv[3]), argc > 4 ? atof(argv[4]) : 2.0,
				  argc > 5 ? atoi(argv[5]) : -1);
	ts_setup(argc, argv);
	/* p: the child says it is ready; q: the parent tells it to exit (the
	 * write end closes on exec, so the child also goes when we do) */
	CHECK(pipe(p) == 0 && pipe(q) == 0);
	CHECK(fcntl(q[1], F_SETFD, FD_CLOEXEC) == 0);
	double hold = t_cap() + 60;   /* never much longer than the test */
	pid_t child = fork();
	CHECK(child >= 0);
	if (child == 0) {
		char fd[16], efd[16], hs[32];
		close(p[0]);
		snprintf(fd, sizeof(fd), "%d", p[1]);
		snprintf(efd, sizeof(efd), "%d", q[0]);
		snprintf(hs, sizeof(hs), "%.0f", hold);
		execl("/proc/self/exe", argv[0], argv[1], "--child", fd, hs, efd, (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	close(q[0]);
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

	/* one process until it exits: a --count it cannot reach (0.2 s x
	 * 100000), so only the exit stops it */
	snprintf(pidarg, sizeof(pidarg), "%d", (int)child);
	const char *targv[] = { ts_tool, pidarg, "--watch", "0.2", "--count", "100000", "--json",
				NULL };
	struct tool t = tool_start(targv);
	double t0 = t_now(), give_up = t0 + t_cap(), told = 0;
	int frames = 0, windows = 0, got;
	uint64_t v, sharing = 0;
	static char line[1 << 16];
	while ((got = tool_line(&t, line, sizeof(line), give_up)) > 0) {
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
		if (told == 0 && frames >= 3 && windows >= 1 && sharing == N) {
			CHECK(write(q[1], "x", 1) == 1);   /* seen it all: exit now */
			told = t_now();
		}
	}
	if (got < 0) {
		fprintf(stderr, "FAIL: after %.0f s: %d frames, %d with a rate window, "
			"pages_sharing %llu of %zu%s\n", t_now() - t0, frames, windows,
			(unsigned long long)sharing, N, told > 0 ? " (and the tool did not stop)" : "");
		kill(t.pid, SIGKILL);
		kill(child, SIGKILL);
		return T_FAIL;
	}
	int st;
	CHECK(waitpid(t.pid, &st, 0) == t.pid);
	static char err[4096];
	ts_read_all(t.err, err, sizeof(err));
	close(t.out);
	close(t.err);
	fprintf(stderr, "after %.1f s (told to exit at %.1f s), exit %d, stderr: %s", t_now() - t0,
		told - t0, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), err);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	char want[64];
	snprintf(want, sizeof(want), "dedup-stat: process %d exited\n", (int)child);
	CHECK(told > 0 && !strcmp(err, want));   /* stopped by the exit */
	fprintf(stderr, "%d frames, %d with a rate window, pages_sharing %llu\n", frames, windows,
		(unsigned long long)sharing);
	CHECK(frames >= 3 && windows >= 1);
	CHECK(sharing == N);
	CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	/* The stale file is removed by --watch when the process is gone - or,
	 * when the exiting process still held its lock at that moment (slow
	 * exits, e.g. under LeakSanitizer), by the next dedup-stat run. */
	if (access(path, F_OK) == 0)
		ts_tool_run(NULL);
	CHECK(access(path, F_OK) < 0);   /* the stale file was removed */
	return T_PASS;
}
