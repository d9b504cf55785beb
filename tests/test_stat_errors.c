/* SPDX-License-Identifier: MIT */
/*
 * test_stat_errors: the documented messages and exit statuses.
 *   - a live process without libdedup: "dedup-stat: process PID (COMM) does
 *     not run libdedup", exit 3 (a plain child; and, when userfaultfd is
 *     usable, a fork()ed child of a process running the engine, which
 *     inherits neither the engine nor the stats file);
 *   - a pid that does not exist: "dedup-stat: no process PID", exit 2;
 *   - usage errors: exit 1; --help: a man page, exit 0;
 *   - a command name with control characters is printed with '?' for them.
 */
#include "test_stat_common.h"

static void expect_not_libdedup(pid_t pid, const char *comm)
{
	char arg[16], want[128];
	snprintf(arg, sizeof(arg), "%d", (int)pid);
	snprintf(want, sizeof(want), "dedup-stat: process %d (%s) does not run libdedup\n",
		 (int)pid, comm);
	struct ts_run *r = ts_tool_run(arg, NULL);
	fprintf(stderr, "pid %d: exit %d: %s", (int)pid, r->status, r->err);
	CHECK(r->status == 3 && !strcmp(r->err, want) && !r->out[0]);
	r = ts_tool_run(arg, "--json", NULL);   /* the same for every format */
	CHECK(r->status == 3 && !strcmp(r->err, want) && !r->out[0]);
}

int main(int argc, char **argv)
{
	char arg[16], want[128];
	struct ts_run *r;

	ts_setup(argc, argv);

	pid_t plain = ts_sleeper("plain-sleeper");
	expect_not_libdedup(plain, "plain-sleeper");
	kill(plain, SIGKILL);
	waitpid(plain, NULL, 0);

	/* a name with control characters reaches the terminal as '?' */
	pid_t esc = ts_sleeper("e\033[2J\a\nx");
	expect_not_libdedup(esc, "e?[2J??x");
	kill(esc, SIGKILL);
	waitpid(esc, NULL, 0);

	/* no such process (the pid just reaped) */
	snprintf(arg, sizeof(arg), "%d", (int)plain);
	snprintf(want, sizeof(want), "dedup-stat: no process %d\n", (int)plain);
	r = ts_tool_run(arg, NULL);
	fprintf(stderr, "pid %d: exit %d: %s", (int)plain, r->status, r->err);
	CHECK(r->status == 2 && !strcmp(r->err, want));
	r = ts_tool_run(arg, "--prometheus", NULL);
	CHECK(r->status == 2 && !strcmp(r->err, want) && !r->out[0]);

	/* usage */
	CHECK(ts_tool_run("--bogus", NULL)->status == 1);
	CHECK(ts_tool_run("12ab", NULL)->status == 1);
	CHECK(ts_tool_run("1", "2", NULL)->status == 1);
	CHECK(ts_tool_run("--json", "--prometheus", NULL)->status == 1);
	CHECK(ts_tool_run("--count", "2", NULL)->status == 1);
	CHECK(ts_tool_run("--watch=0", NULL)->status == 1);
	r = ts_tool_run("--help", NULL);
	CHECK(r->status == 0);
	const char *sections[] = { "NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "FILES",
				   "ENVIRONMENT", "EXIT STATUS", "EXAMPLES" };
	for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]); i++) {
		char s[32];
		snprintf(s, sizeof(s), "\n%s\n", sections[i]);
		CHECK(strstr(r->out, s) != NULL || !strncmp(r->out, s + 1, strlen(s + 1)));
	}

	/* a fork()ed child of a process running the engine */
	struct dedup_config cfg = { .size = sizeof(cfg), .scan_interval_ms = 3600000 };
	int ret = dedup_init(&cfg);
	if (ret == -EPERM || ret == -ENOSYS) {
		fprintf(stderr, "note: userfaultfd not usable, fork case not tested\n");
		return T_PASS;
	}
	CHECK(ret == 0);
	pid_t child = ts_sleeper("forked-sleeper");
	expect_not_libdedup(child, "forked-sleeper");
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	/* and the parent does run it */
	snprintf(arg, sizeof(arg), "%d", (int)getpid());
	CHECK(ts_tool_run(arg, NULL)->status == 0);
	CHECK(dedup_shutdown() == 0);
	return T_PASS;
}
