/* SPDX-License-Identifier: MIT */
/*
 * pl_exec - exec() leaks no file descriptor of libdedup's (userfaultfd,
 * memfd, eventfds, io_uring, pagemap, stats file): they are all close-on-
 * exec. The program merges some memory, then execs itself with "--list"
 * (and DEDUP_PRELOAD=0, so that the new image's libdedup opens nothing),
 * which fails if any such descriptor is open.
 */
#include <dirent.h>

#include "pl.h"

static int list_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int bad = 0;

	CHECK(d);
	while ((e = readdir(d))) {
		char path[64], target[512];
		if (e->d_name[0] == '.')
			continue;
		int fd = atoi(e->d_name);
		if (fd == dirfd(d))
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		ssize_t n = readlink(path, target, sizeof(target) - 1);
		if (n < 0)
			continue;
		target[n] = 0;
		fprintf(stderr, "fd %d -> %s\n", fd, target);
		if (strstr(target, "userfaultfd") || strstr(target, "libdedup") ||
		    strstr(target, "eventfd") || strstr(target, "io_uring") ||
		    strstr(target, "pagemap") || strstr(target, ".stats")) {
			fprintf(stderr, "FAIL: fd %d (%s) leaked through exec\n", fd, target);
			bad = 1;
		}
	}
	closedir(d);
	return bad ? T_FAIL : T_PASS;
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "--list") == 0)
		return list_fds();
	pl_need_uffd();
	size_t len = 256 * T_PAGE;
	char *a = t_map_anon(3 * len);
	for (int c = 0; c < 3; c++)
		pl_fill(a + c * len, 256, 51);
	pl_wait_merged(2 * 256 * 9 / 10);
	setenv("DEDUP_PRELOAD", "0", 1);
	execl("/proc/self/exe", argv[0], "--list", (char *)NULL);
	perror("exec");
	return T_FAIL;
}
