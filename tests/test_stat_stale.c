/* SPDX-License-Identifier: MIT */
/*
 * test_stat_stale: dedup-stat lists only processes whose file is live, and
 * removes stale files. In a private DEDUP_STAT_DIR, next to a live file
 * (this process, made by hand with the publish.h layout and kept mapped, as
 * the library does; needs no userfaultfd):
 *   - a file of a pid that no longer exists               -> hidden, removed
 *   - a file of a live pid (our parent) with another
 *     start time, as after pid reuse                      -> hidden, removed
 *   - a file of a live pid with the right start time that
 *     the process does not map (it exec()ed or exited
 *     without dedup_shutdown and the pid came back)        -> hidden, removed
 *   - a file of a live pid with a bad magic                -> hidden, kept
 *   - a file of a dead pid that a process still holds the
 *     publisher's lock on (a publisher in another pid
 *     namespace, whose pid we cannot see)                  -> hidden, kept
 *   - names that are not <pid>.stats                       -> ignored, kept
 *   - a file this process maps, with another start time
 *     (pid reuse where the maps cannot tell)               -> hidden, removed
 *   - a FIFO named <live pid>.stats                        -> hidden, no hang
 *   - a live file truncated and refilled while read        -> no SIGBUS
 * --no-clean hides stale files without removing them. A live process's
 * file in a directory the tool does not look in is found by pid through
 * /proc/<pid>/maps (not with --dir, not in the list).
 */
#include <pthread.h>
#include <sys/file.h>

#include "test_stat_common.h"

/* A stats file as publish.c writes it, in dir; returns the mapping (kept
 * mapped when keep is set). */
static struct dd_pub *fake_in(const char *dir, int pid, uint64_t start, const char *magic,
			      bool keep)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/%d.stats", dir, pid);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	CHECK(fd >= 0 && ftruncate(fd, DD_PUB_FILE_SIZE) == 0);
	struct dd_pub *p = mmap(NULL, DD_PUB_FILE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(p != MAP_FAILED);
	close(fd);
	memcpy(p->magic, magic, 8);
	p->version = DD_PUB_VERSION;
	p->size = sizeof(*p);
	p->pid = pid;
	p->page_size = T_PAGE;
	p->start_time = start;
	snprintf(p->comm, sizeof(p->comm), "fake%d", pid);
	p->live.stats.size = sizeof(p->live.stats);
	p->live.stats.pages_sharing = 10;
	p->live.stats.pages_shared = 2;
	p->live.stats.bytes_saved = 8 * T_PAGE;
	p->live.updates = 1;
	atomic_store(&p->seq, 2);
	if (!keep) {
		munmap(p, DD_PUB_FILE_SIZE);
		return NULL;
	}
	return p;
}

static struct dd_pub *fake(int pid, uint64_t start, const char *magic, bool keep)
{
	return fake_in(ts_dir, pid, start, magic, keep);
}

/* Truncate a file to nothing and fill it again, until told to stop. */
struct shaker {
	int fd;
	const void *image;
	_Atomic bool stop;
};

static void *shake(void *arg)
{
	struct shaker *sh = arg;
	while (!atomic_load(&sh->stop)) {
		CHECK(ftruncate(sh->fd, 0) == 0);
		CHECK(pwrite(sh->fd, sh->image, DD_PUB_FILE_SIZE, 0) == DD_PUB_FILE_SIZE);
	}
	return NULL;
}

static bool exists(const char *name)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/%s", ts_dir, name);
	return access(path, F_OK) == 0;
}

static bool listed(const char *out, int pid)
{
	char pat[32];
	snprintf(pat, sizeof(pat), "\n%7d ", pid);
	return strstr(out, pat) != NULL;
}

int main(int argc, char **argv)
{
	uint64_t my_start, parent_start, child_start;
	char name[64];
	int me = getpid(), parent = getppid();

	ts_setup(argc, argv);
	CHECK(dd_pub_proc_stat(0, &my_start, NULL) == 0);
	CHECK(dd_pub_proc_stat(parent, &parent_start, NULL) == 0);
	int dead = ts_dead_pid();
	pid_t child = ts_sleeper("stat-sleeper");
	CHECK(dd_pub_proc_stat(child, &child_start, NULL) == 0);

	struct dd_pub *mine = fake(me, my_start, DD_PUB_MAGIC, true);
	fake(dead, 12345, DD_PUB_MAGIC, false);
	int dead2 = ts_dead_pid();
	fake(dead2, 12345, DD_PUB_MAGIC, false);
	char path2[128];
	snprintf(path2, sizeof(path2), "%s/%d.stats", ts_dir, dead2);
	int lock_fd = open(path2, O_RDONLY | O_CLOEXEC);
	CHECK(lock_fd >= 0 && flock(lock_fd, LOCK_SH) == 0);
	fake(child, child_start, "NOTDEDUP", false);
	/* the parent's file: right start time, not mapped by the parent */
	fake(parent, parent_start, DD_PUB_MAGIC, false);
	char maps[64];
	snprintf(maps, sizeof(maps), "/proc/%d/maps", parent);
	FILE *f = fopen(maps, "r");
	bool can_read_maps = f && fgetc(f) != EOF;
	if (f)
		fclose(f);
	int fd = open(strcat(strcpy(name, ts_dir), "/notes.txt"), O_CREAT | O_WRONLY, 0600);
	CHECK(fd >= 0);
	close(fd);
	fd = open(strcat(strcpy(name, ts_dir), "/12x.stats"), O_CREAT | O_WRONLY, 0600);
	CHECK(fd >= 0);
	close(fd);

	/* --no-clean: hidden, kept */
	struct ts_run *r = ts_tool_run("--no-clean", NULL);
	fprintf(stderr, "%s", r->out);
	CHECK(r->status == 0);
	CHECK(listed(r->out, me));
	CHECK(!listed(r->out, dead) && !listed(r->out, child));
	CHECK(!listed(r->out, parent) || !can_read_maps);
	snprintf(name, sizeof(name), "%d.stats", dead);
	CHECK(exists(name));

	/* the parent's file with the wrong start time, as after pid reuse */
	if (!can_read_maps) {
		fprintf(stderr, "note: cannot read %s; testing the start time only\n", maps);
		fake(parent, parent_start + 1, DD_PUB_MAGIC, false);
	}
	r = ts_tool_run(NULL);
	fprintf(stderr, "%s", r->out);
	CHECK(r->status == 0 && listed(r->out, me));
	CHECK(!listed(r->out, dead) && !listed(r->out, child) && !listed(r->out, parent));
	snprintf(name, sizeof(name), "%d.stats", dead);
	CHECK(!exists(name));
	snprintf(name, sizeof(name), "%d.stats", parent);
	CHECK(!exists(name));
	snprintf(name, sizeof(name), "%d.stats", child);
	CHECK(exists(name));   /* not ours to judge: live pid, unknown format */
	CHECK(exists("notes.txt") && exists("12x.stats"));
	CHECK(!listed(r->out, dead2));
	snprintf(name, sizeof(name), "%d.stats", dead2);
	CHECK(exists(name));   /* locked: a live publisher we cannot see */
	close(lock_fd);
	r = ts_tool_run(NULL);
	CHECK(r->status == 0 && !listed(r->out, dead2) && !exists(name));
	snprintf(name, sizeof(name), "%d.stats", me);
	CHECK(exists(name));

	/* pid reuse, now for sure: start time differs */
	fake(parent, parent_start + 1, DD_PUB_MAGIC, false);
	r = ts_tool_run("--json", NULL);
	CHECK(r->status == 0);
	snprintf(name, sizeof(name), "\"pid\":%d,", parent);
	CHECK(strstr(r->out, name) == NULL);
	snprintf(name, sizeof(name), "{\"pid\":%d,", me);
	CHECK(strstr(r->out, name) != NULL);
	snprintf(name, sizeof(name), "%d.stats", parent);
	CHECK(!exists(name));

	/* asking for them by pid: the parent does not run libdedup, the dead
	 * pid does not exist */
	char pidarg[16], want[128], comm[16];
	snprintf(pidarg, sizeof(pidarg), "%d", dead);
	fake(dead, 1, DD_PUB_MAGIC, false);
	r = ts_tool_run(pidarg, NULL);
	snprintf(want, sizeof(want), "dedup-stat: no process %d\n", dead);
	CHECK(r->status == 2 && !strcmp(r->err, want));
	snprintf(pidarg, sizeof(pidarg), "%d", parent);
	fake(parent, parent_start + 1, DD_PUB_MAGIC, false);
	r = ts_tool_run(pidarg, NULL);
	ts_comm(parent, comm);
	snprintf(want, sizeof(want), "dedup-stat: process %d (%s) does not run libdedup\n", parent,
		 comm);
	CHECK(r->status == 3 && !strcmp(r->err, want));

	/* our own file, found by pid through --dir as well */
	snprintf(pidarg, sizeof(pidarg), "%d", me);
	unsetenv(DD_PUB_ENV_DIR);
	r = ts_tool_run(pidarg, "--dir", ts_dir, "--json", NULL);
	CHECK(r->status == 0 && strstr(r->out, "\"pages_sharing\":10,"));
	CHECK(setenv(DD_PUB_ENV_DIR, ts_dir, 1) == 0);

	/* a file in a directory dedup-stat does not look in (the publisher's
	 * XDG_RUNTIME_DIR is not ours): found by pid through the process's
	 * maps, unless --dir says where to look; never in the list */
	char other[64] = "/tmp/dedup-stat-other-XXXXXX", opath[128];
	CHECK(mkdtemp(other) != NULL);
	snprintf(opath, sizeof(opath), "%s/%d.stats", other, me);
	munmap(mine, DD_PUB_FILE_SIZE);
	snprintf(name, sizeof(name), "%d.stats", me);
	CHECK(unlink(strcat(strcat(strcpy(path2, ts_dir), "/"), name)) == 0);
	mine = fake_in(other, me, my_start, DD_PUB_MAGIC, true);
	r = ts_tool_run(pidarg, NULL);
	fprintf(stderr, "found through maps: exit %d, %s%s", r->status, r->err, r->out);
	CHECK(r->status == 0 && strstr(r->out, opath));
	r = ts_tool_run(pidarg, "--dir", ts_dir, NULL);
	CHECK(r->status == 3);
	r = ts_tool_run(NULL);
	CHECK(r->status == 0 && !listed(r->out, me));
	munmap(mine, DD_PUB_FILE_SIZE);
	unlink(opath);
	rmdir(other);

	/* pid reuse that the maps cannot tell: a file this process maps, with
	 * a start time that is not ours */
	mine = fake(me, my_start + 1, DD_PUB_MAGIC, true);
	r = ts_tool_run(NULL);
	CHECK(r->status == 0 && !listed(r->out, me) && !exists(name));
	r = ts_tool_run(pidarg, NULL);
	CHECK(r->status == 3);
	munmap(mine, DD_PUB_FILE_SIZE);

	/* a FIFO named after a live pid: neither listed nor waited for (a
	 * blocking open would hang here until the test's timeout) */
	snprintf(path2, sizeof(path2), "%s/%d.stats", ts_dir, (int)child);
	CHECK(unlink(path2) == 0 && mkfifo(path2, 0600) == 0);
	r = ts_tool_run(NULL);
	CHECK(r->status == 0 && !listed(r->out, child));
	snprintf(pidarg, sizeof(pidarg), "%d", (int)child);
	r = ts_tool_run(pidarg, NULL);
	CHECK(r->status == 3);

	/* our file, truncated and filled again over and over while the tool
	 * reads it: the tool sees it or not, but never dies of SIGBUS (before
	 * the fix, about one run in ten did) */
	{
		static char image[DD_PUB_FILE_SIZE];
		struct dd_pub *p = fake(me, my_start, DD_PUB_MAGIC, true);
		memcpy(image, p, sizeof(image));
		snprintf(path2, sizeof(path2), "%s/%d.stats", ts_dir, me);
		struct shaker sh = { .fd = open(path2, O_RDWR | O_CLOEXEC), .image = image };
		pthread_t thr;
		CHECK(sh.fd >= 0 && pthread_create(&thr, NULL, shake, &sh) == 0);
		char mearg[16];
		snprintf(mearg, sizeof(mearg), "%d", me);
		for (int i = 0; i < 60; i++) {   /* the list and the PID form */
			r = ts_tool_run(i % 2 ? "--no-clean" : mearg, i % 2 ? NULL : "--no-clean",
					NULL);
			CHECK(r->status == 0 || r->status == 3);
		}
		atomic_store(&sh.stop, true);
		pthread_join(thr, NULL);
		close(sh.fd);
		fprintf(stderr, "truncated while read: 60 runs, no crash\n");
		munmap(p, DD_PUB_FILE_SIZE);
		unlink(path2);
	}

	/* another user's files (as root, run the tool as nobody): a dead
	 * pid's file is stale, not a process we may not look at; a live
	 * pid's is, and dedup-stat PID says so (exit 1) */
	if (geteuid() == 0) {
		char pub[64] = "/tmp/dedup-stat-pub-XXXXXX";
		CHECK(mkdtemp(pub) != NULL && chmod(pub, 0755) == 0);
		int dead3 = ts_dead_pid();
		fake_in(pub, dead3, 12345, DD_PUB_MAGIC, false);
		fake_in(pub, child, child_start, DD_PUB_MAGIC, false);
		ts_run_uid = 65534;
		r = ts_tool_run("--dir", pub, NULL);
		struct ts_run list = *r;
		r = ts_tool_run(pidarg, "--dir", pub, NULL);
		ts_run_uid = 0;
		if (list.status == 126 || list.status == 127) {
			fprintf(stderr, "note: cannot run the tool as nobody; not tested\n");
		} else {
			fprintf(stderr, "as nobody: exit %d: %s", list.status, list.err);
			CHECK(list.status == 0 &&
			      !strcmp(list.err, "dedup-stat: 1 process(es) not shown: permission denied\n"));
			fprintf(stderr, "as nobody, pid %d: exit %d: %s", (int)child, r->status, r->err);
			CHECK(r->status == 1 && strstr(r->err, "Permission denied"));
		}
		snprintf(path2, sizeof(path2), "%s/%d.stats", pub, dead3);
		CHECK(access(path2, F_OK) == 0);   /* not nobody's to remove */
		unlink(path2);
		snprintf(path2, sizeof(path2), "%s/%d.stats", pub, (int)child);
		unlink(path2);
		rmdir(pub);
	}

	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	return T_PASS;
}
