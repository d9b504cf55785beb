/* SPDX-License-Identifier: MIT */
/*
 * pl_daemon MODE [fork] - a program that closes every descriptor, as daemons
 * do at start-up, then opens files that get libdedup's old numbers, and
 * keeps allocating (issue 14, fds.c).
 *
 *   libc  close() of 3..65535, close_range(3, ~0U, 0) and closefrom(3)
 *         through libc, then dup2() of its own file onto each number that
 *         was libdedup's: to the program ours look unopened (EBADF), a dup2
 *         onto one moves ours away, and merging goes on.
 *   raw   close_range(3, ~0U, 0) as a raw system call, which no interposer
 *         sees, then the same dup2()s: libdedup notices before it uses a
 *         number again, hands merged memory back and stops merging, with
 *         one line on stderr.
 *   fork  do it in a fork()ed child after setsid() (run it with and without
 *         DEDUP_FORK=restart).
 * Either way: no crash, no hang, the program's files hold only what the
 * program wrote, every page reads right, and a discarded page that had been
 * merged reads zeros (anonymous-memory behaviour) - in a fork()ed child too,
 * where the fork guard holds them (raw fork failed before the guard had a
 * keeper: status 24).
 */
#include "pl.h"

#include <dirent.h>
#include <linux/io_uring.h>
#include <sys/stat.h>

#define NP 1024

static char errpath[] = "/tmp/pl_daemon_err.XXXXXX";
static char filepath[] = "/tmp/pl_daemon_file.XXXXXX";

/* Our numbers: what /proc/self/fd shows beyond the program's own. */
static int ours_list(int *out, int cap)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	CHECK(d != NULL);
	while ((e = readdir(d)) != NULL && n < cap) {
		char link[128], target[256];
		int fd = atoi(e->d_name);
		if (e->d_name[0] == '.' || fd == dirfd(d))
			continue;
		snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
		ssize_t k = readlink(link, target, sizeof(target) - 1);
		if (k <= 0)
			continue;
		target[k] = 0;
		if (strstr(target, "userfaultfd") || strstr(target, "memfd:libdedup") ||
		    strstr(target, "pagemap") || strstr(target, "eventfd") ||
		    strstr(target, "io_uring") || strstr(target, ".stats"))
			out[n++] = fd;
	}
	closedir(d);
	return n;
}

static int count_lines(const char *path, const char *needle, bool show)
{
	FILE *f = fopen(path, "r");
	char line[1024];
	int n = 0;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (strstr(line, needle)) {
			if (show)
				fprintf(stdout, "stderr: %s", line);
			n++;
		}
	fclose(f);
	return n;
}

/* io_uring can be set up here (not forbidden by seccomp or
 * kernel.io_uring_disabled): without it libdedup does not merge (keeper.c;
 * tests/hostile, no_io_uring). */
static bool have_io_uring(void)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	int fd = (int)syscall(__NR_io_uring_setup, 1, &p);
	if (fd < 0)
		return false;
	close(fd);
	return true;
}

static int run(bool raw, bool in_child, bool engine_here, char *a, size_t len)
{
	int ours[64], nours = ours_list(ours, 64);
	uint64_t merges0 = pl_stats().merges;

	printf("%d descriptors of libdedup before closing:", nours);
	for (int i = 0; i < nours; i++)
		printf(" %d", ours[i]);
	printf("\n");
	fflush(stdout);
	if (engine_here)
		CHECK(nours > 0);

	/* the daemon's start-up: every descriptor above stderr goes */
	if (raw) {
		CHECK(syscall(SYS_close_range, 3, ~0U, 0) == 0);
	} else {
		for (int fd = 3; fd < 65536; fd++)
			close(fd);
		CHECK(close_range(3, ~0U, 0) == 0);
		closefrom(3);
		for (int i = 0; i < nours; i++) {   /* they look unopened */
			errno = 0;
			CHECK(close(ours[i]) == -1 && errno == EBADF);
		}
	}
	int null = open("/dev/null", O_RDWR);
	/* The program's numbering is its own: through libc it gets 3. After a
	 * raw close, libdedup's recovery (pagemap reopened, the uffd installed
	 * from its ring) holds a low number for an instant before moving it
	 * above the floor, and a concurrent open() may get the next one: a
	 * known limit (docs/preload.md). */
	CHECK(raw ? null >= 3 && null < 16 : null == 3);

	/* its own file, at every number that was ours */
	int f = open(filepath, O_RDWR);
	CHECK(f >= 0);
	for (int i = 0; i < nours; i++)
		CHECK(dup2(f, ours[i]) == ours[i]);

	/* keep allocating */
	char *b = t_map_anon(4 * len);
	for (int c = 0; c < 4; c++)
		pl_fill(b + c * len, NP, 77);
	if (engine_here && !raw) {
		/* merging goes on: b's copies merge */
		pl_wait_merged(merges0 + 3 * NP * 9 / 10);
	} else if (engine_here && raw) {
		/* libdedup notices, hands back, says so once. (In a child, a's
		 * merged pages are the fork guard's, not this engine's: see
		 * below.) */
		double t0 = t_now();
		while (count_lines(errpath, "libdedup", false) < 1 ||
		       (!in_child && pl_has_merged(a, 4 * len))) {
			if (t_now() - t0 > t_cap()) {
				fprintf(stderr, "FAIL: no hand-back within %g s\n", t_cap());
				return 20;
			}
			usleep(50000);
		}
	}
	for (int c = 0; c < 4; c++)
		if (!pl_check(a + c * len, NP, 71) || !pl_check(b + c * len, NP, 77))
			return 21;

	/* the program's file holds only what it wrote */
	struct stat st;
	char buf[T_PAGE];
	if (fstat(f, &st) != 0) {
		/* who took it: what each low number names now */
		fprintf(stderr, "FAIL: the program's file (fd %d) is gone (errno %d); fds now:\n", f, errno);
		for (int fd = 0; fd < 32; fd++) {
			char link[64], target[256];
			snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
			ssize_t k = readlink(link, target, sizeof(target) - 1);
			if (k > 0) {
				target[k] = 0;
				fprintf(stderr, "  %d -> %s\n", fd, target);
			}
		}
		return 26;
	}
	if (st.st_size != (off_t)T_PAGE || pread(f, buf, T_PAGE, 0) != (ssize_t)T_PAGE) {
		fprintf(stderr, "FAIL: the program's file changed size: %lld\n", (long long)st.st_size);
		return 22;
	}
	for (size_t i = 0; i < T_PAGE; i++)
		if (buf[i] != 'S') {
			fprintf(stderr, "FAIL: the program's file was written at %zu\n", i);
			return 23;
		}

	/* Anonymous-memory behaviour of what had been merged, in a child too:
	 * there a's merged pages are the fork guard's, whose uffd a raw close
	 * must not take (its keeper, keeper.c; before it the guard left and
	 * the discarded page read its merged content again). */
	CHECK(madvise(a + len, T_PAGE, MADV_DONTNEED) == 0);
	if (!pl_is_zero(a + len, T_PAGE)) {
		fprintf(stderr, "FAIL: a discarded page does not read zeros\n");
		return 24;
	}
	/* and a page discarded after it, and one read again: the guard
	 * serves faults with a number of its own again */
	CHECK(madvise(a + 2 * len, 2 * T_PAGE, MADV_DONTNEED) == 0);
	bool right = pl_is_zero(a + 2 * len, 2 * T_PAGE);
	for (size_t i = 2; i < NP && right; i++) {
		char want[T_PAGE];
		t_fill(want, 71 * 1000003 + i);
		right = memcmp(a + 2 * len + i * T_PAGE, want, T_PAGE) == 0;
	}
	if (!right) {
		fprintf(stderr, "FAIL: pages after a second discard read wrong\n");
		return 27;
	}
	int lines = count_lines(errpath, "libdedup", true);
	if (lines != (raw && engine_here ? 1 : 0)) {
		fprintf(stderr, "FAIL: %d lines of libdedup on stderr\n", lines);
		return 25;
	}
	return 0;
}

int main(int argc, char **argv)
{
	bool raw = argc > 1 && strcmp(argv[1], "raw") == 0;
	bool in_fork = argc > 2 && strcmp(argv[2], "fork") == 0;
	const char *fr = getenv("DEDUP_FORK");
	bool restart = fr && strcmp(fr, "restart") == 0;
	size_t len = NP * T_PAGE;

	pl_need_uffd();
	if (!have_io_uring()) {
		fprintf(stderr, "SKIP: no io_uring here: libdedup does not merge (hostile_no_io_uring)\n");
		return T_SKIP;
	}
	int e = mkstemp(errpath), f = mkstemp(filepath);
	CHECK(e >= 0 && f >= 0);
	char s[T_PAGE];
	memset(s, 'S', sizeof(s));
	CHECK(write(f, s, sizeof(s)) == (ssize_t)sizeof(s));
	close(f);
	/* what libdedup says, to read back; kept when the test fails (the
	 * program's own messages, CHECK's included, go there too) */
	printf("stderr goes to %s\n", errpath);
	fflush(stdout);
	CHECK(dup2(e, 2) == 2);
	close(e);

	char *a = t_map_anon(4 * len);
	for (int c = 0; c < 4; c++)
		pl_fill(a + c * len, NP, 71);
	pl_wait_merged(3 * NP * 9 / 10);
	CHECK(pl_has_merged(a, 4 * len));

	int ret;
	if (in_fork) {
		pid_t pid = fork();
		CHECK(pid >= 0);
		if (pid == 0) {
			CHECK(setsid() > 0);
			_exit(run(raw, true, restart, a, len));
		}
		int status;
		CHECK(waitpid(pid, &status, 0) == pid);
		ret = WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
		if (!ret)
			for (int c = 0; c < 4; c++)
				if (!pl_check(a + c * len, NP, 71))
					ret = 30;
	} else {
		ret = run(raw, false, true, a, len);
	}
	unlink(filepath);
	if (ret) {
		fprintf(stderr, "FAIL: status %d\n", ret);
		printf("FAIL: status %d; the program's stderr is kept in %s\n", ret, errpath);
		return T_FAIL;
	}
	unlink(errpath);
	return T_PASS;
}
