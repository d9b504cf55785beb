/* SPDX-License-Identifier: MIT */
/*
 * test_stat_common.h - helpers for the dedup-stat tests (test_stat_*.c).
 *
 * Each test gets the path of the built tool as argv[1] (stat.cmake passes
 * $<TARGET_FILE:dedup-stat>) and a private stats directory (mkdtemp, exported
 * as DEDUP_STAT_DIR before dedup_init, inherited by the tool), removed at
 * exit; nothing touches /run. These tests use one internal header on
 * purpose: publish.h, the file layout dedup-stat reads.
 */
#ifndef DEDUP_TEST_STAT_COMMON_H
#define DEDUP_TEST_STAT_COMMON_H

#include <dirent.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "tdedup.h"
#include "publish.h"

static char ts_dir[64];
static const char *ts_tool;
static uid_t ts_run_uid;   /* nonzero: ts_tool_run runs the tool as this user (and group) */

static void ts_cleanup(void)
{
	DIR *d = opendir(ts_dir);
	struct dirent *e;
	char path[512];

	if (!d)
		return;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
			snprintf(path, sizeof(path), "%s/%s", ts_dir, e->d_name);
			unlink(path);
		}
	closedir(d);
	rmdir(ts_dir);
}

/* Take the tool from argv[1] and make the private stats directory. */
static inline void ts_setup(int argc, char **argv)
{
	if (argc < 2 || access(argv[1], X_OK) != 0) {
		fprintf(stderr, "usage: %s PATH-TO-dedup-stat\n", argv[0]);
		exit(T_FAIL);
	}
	ts_tool = argv[1];
	snprintf(ts_dir, sizeof(ts_dir), "/tmp/dedup-stat-test-XXXXXX");
	CHECK(mkdtemp(ts_dir) != NULL);
	CHECK(setenv(DD_PUB_ENV_DIR, ts_dir, 1) == 0);
	atexit(ts_cleanup);
}

/* Output and exit status of one run of the tool. */
struct ts_run {
	char out[1 << 17];
	char err[4096];
	int status;     /* exit status, or 128 + signal */
};

static void ts_read_all(int fd, char *buf, size_t size)
{
	size_t n = 0;
	ssize_t r;
	while ((r = read(fd, buf + n, size - 1 - n)) > 0 || (r < 0 && errno == EINTR))
		if (r > 0 && (n += (size_t)r) == size - 1)
			break;
	buf[n] = 0;
}

/* Run the tool with the given arguments (NULL-terminated). */
static inline struct ts_run *ts_tool_run(const char *arg, ...)
{
	static struct ts_run run;
	const char *argv[16] = { ts_tool };
	int n = 1, o[2], e[2];
	va_list ap;

	va_start(ap, arg);
	for (const char *a = arg; a && n < 15; a = va_arg(ap, const char *))
		argv[n++] = a;
	va_end(ap);
	argv[n] = NULL;
	CHECK(pipe(o) == 0 && pipe(e) == 0);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		dup2(o[1], 1);
		dup2(e[1], 2);
		close(o[0]);
		close(e[0]);
		/* a tool that hangs fails the test (status 128 + SIGALRM),
		 * rather than CTest's timeout, which would wait on for the
		 * pipe the tool still holds */
		alarm(30);
		if (ts_run_uid && (setgroups(0, NULL) < 0 || setgid(ts_run_uid) < 0 ||
				   setuid(ts_run_uid) < 0))
			_exit(126);
		execv(ts_tool, (char *const *)argv);
		_exit(127);
	}
	close(o[1]);
	close(e[1]);
	/* stderr is small; read stdout to its end first */
	ts_read_all(o[0], run.out, sizeof(run.out));
	ts_read_all(e[0], run.err, sizeof(run.err));
	close(o[0]);
	close(e[0]);
	int st;
	CHECK(waitpid(pid, &st, 0) == pid);
	run.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	return &run;
}

/* The unsigned number after "key": inside the JSON object that starts at
 * obj (our tool's flat objects: a key is unique within its object). */
static inline bool ts_json_u64(const char *obj, const char *key, uint64_t *out)
{
	char pat[96];
	snprintf(pat, sizeof(pat), "\"%s\":", key);
	const char *p = strstr(obj, pat);
	if (!p)
		return false;
	p += strlen(pat);
	if (*p < '0' || *p > '9')
		return false;
	*out = strtoull(p, NULL, 10);
	return true;
}

static inline bool ts_json_i64(const char *obj, const char *key, int64_t *out)
{
	char pat[96];
	snprintf(pat, sizeof(pat), "\"%s\":", key);
	const char *p = strstr(obj, pat);
	if (!p)
		return false;
	*out = strtoll(p + strlen(pat), NULL, 10);
	return true;
}

/* This process's comm as the kernel reports it (15 characters at most). */
static inline void ts_comm(int pid, char comm[16])
{
	CHECK(dd_pub_proc_stat(pid, NULL, comm) == 0);
}

/* A child that renames itself and sleeps until killed. */
static inline pid_t ts_sleeper(const char *name)
{
	int p[2];
	char c;
	CHECK(pipe(p) == 0);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		/* never outlive the test, nor hold its output open (CTest
		 * waits for every holder of the pipe) */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		int null = open("/dev/null", O_RDWR);
		dup2(null, 1);
		dup2(null, 2);
		prctl(PR_SET_NAME, name);
		(void)!write(p[1], "x", 1);
		for (;;)
			pause();
	}
	close(p[1]);
	CHECK(read(p[0], &c, 1) == 1);
	close(p[0]);
	return pid;
}

/* A pid that was just in use and is now free (a reaped child). */
static inline pid_t ts_dead_pid(void)
{
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0)
		_exit(0);
	CHECK(waitpid(pid, NULL, 0) == pid);
	return pid;
}

/* The published snapshot of this process, read straight from its file. */
static inline bool ts_published(struct dd_pub_live *out)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/%d" DD_PUB_SUFFIX, ts_dir, (int)getpid());
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	const struct dd_pub *p = mmap(NULL, DD_PUB_FILE_SIZE, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		return false;
	bool ok = dd_pub_read(p, out) == 0;
	munmap((void *)p, DD_PUB_FILE_SIZE);
	return ok;
}

/* K distinct page contents repeated over n pages (test_merge_basic). */
static inline char *ts_dup_memory(size_t n, size_t k)
{
	char *buf = t_map_anon(n * T_PAGE);
	for (size_t i = 0; i < n; i++)
		t_fill(buf + i * T_PAGE, i % k + 1);
	return buf;
}

#endif
