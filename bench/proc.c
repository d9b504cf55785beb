/* SPDX-License-Identifier: MIT */
/*
 * proc.c - what the parent reads about a measured process from /proc.
 *
 *  - Memory: "Pss:" of /proc/PID/smaps_rollup, in KiB. A page shared by n
 *    mappings counts 1/n, so a KSM page or a libdedup canonical page counts
 *    once, however many pages map it.
 *  - VMAs: lines of /proc/PID/maps.
 *  - Merger CPU: ksmd's CPU time, or the CPU time of the measured process's
 *    libdedup threads (dedup-engine, dedup-uffd, dedup-preload), in each
 *    member of a workers family, plus every thread of the dedup-share helper
 *    serving the family's group (found by its name and the group's name on
 *    its command line, so another group's helper never counts). Read from
 *    /proc/PID/task/TID/schedstat (nanoseconds on CPU) when the kernel has
 *    it, else utime+stime of /proc/PID/task/TID/stat (clock ticks). Both
 *    count the same time; schedstat has finer resolution.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

bool proc_read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t got = 0;

	if (fd < 0)
		return false;
	while (got + 1 < len) {
		ssize_t n = read(fd, buf + got, len - 1 - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	buf[got] = 0;
	return got > 0;
}

double proc_pss_kib(pid_t pid)
{
	char path[64], buf[2048];

	snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", pid);
	if (!proc_read_file(path, buf, sizeof(buf)))
		return NA;
	char *p = strstr(buf, "\nPss:");
	if (!p)
		return NA;
	return strtod(p + 5, NULL);
}

long proc_maps_lines(pid_t pid)
{
	char path[64], buf[65536];
	long lines = 0;

	snprintf(path, sizeof(path), "/proc/%d/maps", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		for (ssize_t i = 0; i < n; i++)
			lines += buf[i] == '\n';
	}
	close(fd);
	return lines;
}

static int cpu_source = -1;   /* 1: schedstat, 0: stat */

const char *proc_cpu_source(void)
{
	return cpu_source == 1 ? "schedstat (ns)" : "stat utime+stime (ticks)";
}

uint64_t proc_task_cpu_ns(pid_t pid, pid_t tid)
{
	char path[96], buf[1024];

	if (cpu_source < 0)
		cpu_source = access("/proc/self/schedstat", R_OK) == 0;
	if (cpu_source == 1) {
		snprintf(path, sizeof(path), "/proc/%d/task/%d/schedstat", pid, tid);
		if (!proc_read_file(path, buf, sizeof(buf)))
			return UINT64_MAX;   /* the task is gone */
		return strtoull(buf, NULL, 10);
	}
	snprintf(path, sizeof(path), "/proc/%d/task/%d/stat", pid, tid);
	if (!proc_read_file(path, buf, sizeof(buf)))
		return UINT64_MAX;
	/* fields after "(comm)": state is field 3, utime 14, stime 15 */
	char *p = strrchr(buf, ')');
	if (!p)
		return UINT64_MAX;
	unsigned long long ut = 0, st = 0;
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return UINT64_MAX;
	long hz = sysconf(_SC_CLK_TCK);
	return (ut + st) * (1000000000ULL / (uint64_t)(hz > 0 ? hz : 100));
}

/*
 * libdedup's own threads, by the names it gives them (engine.c, preload/lifecycle.c).
 * Exact names: the bench child and its churn writers are "dedup-bench", and
 * their CPU is the application's, not the merger's.
 */
static bool merger_thread(const char *comm)
{
	static const char *const names[] = { "dedup-engine", "dedup-uffd", "dedup-preload" };
	size_t len = strcspn(comm, "\n");
	for (size_t i = 0; i < B_ARRAY_SIZE(names); i++)
		if (strlen(names[i]) == len && strncmp(comm, names[i], len) == 0)
			return true;
	return false;
}

void tracker_init(struct cpu_tracker *t, pid_t pid, bool by_comm)
{
	memset(t, 0, sizeof(*t));
	t->pid[0] = pid;
	t->npid = 1;
	t->by_comm = by_comm;
}

void tracker_add(struct cpu_tracker *t, pid_t pid)
{
	if (t->npid < B_ARRAY_SIZE(t->pid))
		t->pid[t->npid++] = pid;
}

void tracker_helper(struct cpu_tracker *t, const char *group)
{
	snprintf(t->group, sizeof(t->group), "%s", group);
}

static void tracker_set(struct cpu_tracker *t, pid_t tid, uint64_t ns, bool helper)
{
	for (size_t i = 0; i < t->n; i++) {
		if (t->t[i].tid == tid) {
			if (ns > t->t[i].ns)
				t->t[i].ns = ns;
			return;
		}
	}
	if (t->n < B_ARRAY_SIZE(t->t)) {
		t->t[t->n].tid = tid;
		t->t[t->n].ns = ns;
		t->t[t->n].helper = helper;
		t->n++;
	}
}

/* the threads of pid: libdedup's (by name) or all of them */
static bool tracker_threads(struct cpu_tracker *t, pid_t pid, bool libdedup_only)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task", pid);
	DIR *d = opendir(path);
	struct dirent *e;
	if (!d)
		return false;
	while ((e = readdir(d))) {
		pid_t tid = (pid_t)atoi(e->d_name);
		char cpath[96], comm[32];
		if (tid <= 0)
			continue;
		snprintf(cpath, sizeof(cpath), "/proc/%d/task/%d/comm", pid, tid);
		if (libdedup_only && (tid == pid || !proc_read_file(cpath, comm, sizeof(comm)) ||
				      !merger_thread(comm)))
			continue;
		uint64_t ns = proc_task_cpu_ns(pid, tid);
		if (ns != UINT64_MAX)
			tracker_set(t, tid, ns, !libdedup_only);
	}
	closedir(d);
	return true;
}

/* The dedup-share helper of group: comm "dedup-share" and the group's name
 * as one of its arguments. 0: none (yet, or any more). */
static pid_t find_helper(const char *group)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	pid_t found = 0;
	char path[64], buf[1024];

	while (d && !found && (e = readdir(d))) {
		pid_t pid = (pid_t)atoi(e->d_name);
		if (pid <= 0)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/comm", pid);
		if (!proc_read_file(path, buf, sizeof(buf)) || strcmp(buf, "dedup-share\n") != 0)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/cmdline", pid);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
		if (fd >= 0)
			close(fd);
		if (n > 0)
			buf[n] = 0;
		/* "NAME" or "--name=NAME" */
		for (ssize_t i = 0; i < n; i += (ssize_t)strlen(buf + i) + 1) {
			const char *eq = strchr(buf + i, '=');
			if (strcmp(buf + i, group) == 0 || (eq && strcmp(eq + 1, group) == 0))
				found = pid;
		}
	}
	if (d)
		closedir(d);
	return found;
}

uint64_t tracker_ns(struct cpu_tracker *t)
{
	if (t->pid[0] <= 0)
		return 0;
	if (!t->by_comm) {
		uint64_t ns = proc_task_cpu_ns(t->pid[0], t->pid[0]);
		if (ns != UINT64_MAX)
			tracker_set(t, t->pid[0], ns, false);
	} else {
		for (size_t i = 0; i < t->npid; i++)
			tracker_threads(t, t->pid[i], true);
	}
	/* the helper may start late (the first member spawns it) and exit
	 * early (idle): look for it until found, and again once gone */
	if (t->group[0] && !t->helper && (t->helper = find_helper(t->group)))
		t->helper_seen = t->helper;
	if (t->helper && !tracker_threads(t, t->helper, false))
		t->helper = 0;
	uint64_t sum = 0;
	for (size_t i = 0; i < t->n; i++)
		sum += t->t[i].ns;
	return sum;
}

uint64_t tracker_helper_ns(const struct cpu_tracker *t)
{
	uint64_t sum = 0;
	for (size_t i = 0; i < t->n; i++)
		sum += t->t[i].helper ? t->t[i].ns : 0;
	return sum;
}
