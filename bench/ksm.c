/* SPDX-License-Identifier: MIT */
/*
 * ksm.c - kernel KSM settings for the KSM modes (/sys/kernel/mm/ksm).
 *
 * We change three files: run, pages_to_scan, sleep_millisecs. Each one's
 * original text is saved before the first write, and ksm_restore() writes
 * back exactly what was there, only for files we wrote. It runs on every
 * exit path: the normal end of main, atexit (exit() from an error), and a
 * SIGINT/SIGTERM (main notices the flag; a second signal restores from the
 * handler with open/write/close only, which are async-signal-safe).
 *
 * We never write run=2 (that unmerges every KSM page on the machine). If run
 * holds anything other than 0 or 1 at start, the KSM modes are not usable.
 * Outside a KSM run, run=0: ksmd must not merge other modes' children (it
 * would not anyway, since they do not opt in, but it would take CPU).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

#define KSM_DIR "/sys/kernel/mm/ksm/"

struct saved {
	const char *file;
	char orig[32];      /* text read at setup, newline stripped */
	bool saved;         /* orig is valid */
	volatile sig_atomic_t dirty;   /* we wrote this file */
};

/* restore order: tunables first, run last */
static struct saved saved[] = {
	{ .file = KSM_DIR "pages_to_scan" },
	{ .file = KSM_DIR "sleep_millisecs" },
	{ .file = KSM_DIR "run" },
};
static bool setup_done;

static bool read_text(const char *path, char *buf, size_t len)
{
	if (!proc_read_file(path, buf, len))
		return false;
	buf[strcspn(buf, "\n")] = 0;
	return true;
}

static int write_text(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = write(fd, text, strlen(text));
	int err = n < 0 ? -errno : 0;
	close(fd);
	return err;
}

bool ksm_usable(const char **why)
{
	char run[32];

	if (access(KSM_DIR "run", F_OK) != 0) {
		*why = "no /sys/kernel/mm/ksm (kernel without CONFIG_KSM)";
		return false;
	}
	if (access(KSM_DIR "run", W_OK) != 0 || geteuid() != 0) {
		*why = "/sys/kernel/mm/ksm not writable (needs root)";
		return false;
	}
	if (!read_text(KSM_DIR "run", run, sizeof(run)) ||
	    (strcmp(run, "0") != 0 && strcmp(run, "1") != 0)) {
		*why = "ksm run is neither 0 nor 1 at start: left alone";
		return false;
	}
	return true;
}

static int set(struct saved *s, const char *text)
{
	if (!s->saved)
		return -EINVAL;
	s->dirty = 1;   /* before the write: a signal in between restores it */
	return write_text(s->file, text);
}

int ksm_setup(void)
{
	const char *why;

	if (!ksm_usable(&why))
		return -EPERM;
	for (size_t i = 0; i < B_ARRAY_SIZE(saved); i++) {
		if (!read_text(saved[i].file, saved[i].orig, sizeof(saved[i].orig)))
			return -EIO;
		saved[i].saved = true;
	}
	setup_done = true;
	atexit(ksm_restore);
	if (strcmp(saved[2].orig, "0") != 0)
		return set(&saved[2], "0");
	return 0;
}

int ksm_start(unsigned pages_to_scan, unsigned sleep_ms)
{
	char b[32];
	int err;

	if (!setup_done)
		return -EPERM;
	snprintf(b, sizeof(b), "%u", pages_to_scan);
	if ((err = set(&saved[0], b)) < 0)
		return err;
	snprintf(b, sizeof(b), "%u", sleep_ms);
	if ((err = set(&saved[1], b)) < 0)
		return err;
	return set(&saved[2], "1");
}

void ksm_stop(void)
{
	if (setup_done)
		set(&saved[2], "0");
}

void ksm_restore(void)
{
	if (!setup_done)
		return;
	for (size_t i = 0; i < B_ARRAY_SIZE(saved); i++) {
		if (!saved[i].dirty)
			continue;
		char now[32];
		if (read_text(saved[i].file, now, sizeof(now)) && strcmp(now, saved[i].orig) == 0) {
			saved[i].dirty = 0;
			continue;
		}
		if (write_text(saved[i].file, saved[i].orig) < 0)
			fprintf(stderr, "dedup-bench: could not restore %s to %s\n", saved[i].file,
				saved[i].orig);
		else
			saved[i].dirty = 0;
	}
}

/* From a signal handler: no stdio, no reads, no allocation. */
void ksm_restore_signal_safe(void)
{
	if (!setup_done)
		return;
	for (size_t i = 0; i < B_ARRAY_SIZE(saved); i++) {
		if (!saved[i].dirty)
			continue;
		int fd = open(saved[i].file, O_WRONLY | O_CLOEXEC);
		if (fd >= 0) {
			(void)!write(fd, saved[i].orig, strlen(saved[i].orig));
			close(fd);
		}
		saved[i].dirty = 0;
	}
}

long long ksm_read(const char *file)
{
	char path[128], buf[64];

	snprintf(path, sizeof(path), KSM_DIR "%s", file);
	if (!read_text(path, buf, sizeof(buf)))
		return -1;
	return strtoll(buf, NULL, 10);
}

pid_t ksm_ksmd_pid(void)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	pid_t found = -1;

	if (!d)
		return -1;
	while ((e = readdir(d))) {
		char path[64], comm[32];
		pid_t pid = (pid_t)atoi(e->d_name);
		if (pid <= 0)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/comm", pid);
		if (read_text(path, comm, sizeof(comm)) && strcmp(comm, "ksmd") == 0) {
			found = pid;
			break;
		}
	}
	closedir(d);
	return found;
}

/* Every readable setting, for results.json. Called after ksm_restore(): run,
 * pages_to_scan and sleep_millisecs are the originals (modes[] has the values
 * each KSM mode ran with). */
void ksm_settings_json(FILE *f)
{
	static const char *const names[] = {
		"run", "pages_to_scan", "sleep_millisecs", "max_page_sharing",
		"merge_across_nodes", "use_zero_pages", "smart_scan", "advisor_mode",
		"stable_node_chains_prune_millisecs",
	};
	bool first = true;

	fprintf(f, "{");
	for (size_t i = 0; i < B_ARRAY_SIZE(names); i++) {
		char path[128], buf[64];
		snprintf(path, sizeof(path), KSM_DIR "%s", names[i]);
		if (!read_text(path, buf, sizeof(buf)))
			continue;
		for (char *p = buf; *p; p++)
			if (*p == '"' || *p == '\\')
				*p = '\'';
		fprintf(f, "%s\"%s\": \"%s\"", first ? "" : ", ", names[i], buf);
		first = false;
	}
	fprintf(f, "}");
}

/* ksmd's CPU and pages_scanned count every process that opted in; tell the
 * user if some process other than ours has. */
void ksm_warn_other_users(void)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	int others = 0;

	if (!d)
		return;
	while ((e = readdir(d))) {
		char path[64], buf[512];
		pid_t pid = (pid_t)atoi(e->d_name);
		if (pid <= 0 || pid == getpid())
			continue;
		snprintf(path, sizeof(path), "/proc/%d/ksm_stat", pid);
		if (proc_read_file(path, buf, sizeof(buf)) && strstr(buf, "ksm_mergeable: yes"))
			others++;
	}
	closedir(d);
	if (others)
		fprintf(stderr,
			"dedup-bench: warning: %d other process(es) opted in to KSM; ksmd's CPU and "
			"counters include their pages\n", others);
}
