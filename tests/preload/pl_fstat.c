/* SPDX-License-Identifier: MIT */
/*
 * pl_fstat.c - the engine's descriptors look unopened to fstat() too.
 *
 * A program finds its open descriptors by probing every number up to its
 * limit with fstat() (CPython's test_subprocess does, through fd_status.py,
 * and under DEDUP_START=0 found the engine's uffd, memfd and pagemap at
 * 1024-1026). With the engine running and merging, fstat, fstat64,
 * fstatat(AT_EMPTY_PATH) and statx(AT_EMPTY_PATH) must see only the
 * program's own: here, none at or above 1024, where /proc/self/fd shows the
 * engine's. The program's own descriptors stay visible. Run under
 * LD_PRELOAD with DEDUP_START=0 (tests/preload.cmake).
 * Exit 0 pass, 1 fail, 77 skip.
 */
#include "pl.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>

#define FLOOR 1024

static int visible_high(const char *how)
{
	struct rlimit rl;
	int n = 0;
	long max = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? (long)rl.rlim_cur : 4096;
	if (max > 65536)
		max = 65536;
	for (int fd = FLOOR; fd < max; fd++) {
		struct stat st;
		struct stat64 st64;
		struct statx stx;
		int r;
		if (!strcmp(how, "fstat"))
			r = fstat(fd, &st);
		else if (!strcmp(how, "fstat64"))
			r = fstat64(fd, &st64);
		else if (!strcmp(how, "fstatat"))
			r = fstatat(fd, "", &st, AT_EMPTY_PATH);
		else
			r = statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &stx);
		if (r == 0) {
			fprintf(stderr, "%s sees descriptor %d\n", how, fd);
			n++;
		} else if (errno != EBADF) {
			fprintf(stderr, "FAIL: %s(%d): %s, not EBADF\n", how, fd, strerror(errno));
			exit(T_FAIL);
		}
	}
	return n;
}

static int listed_high(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;
	if (!d)
		t_skip("no /proc/self/fd");
	while ((e = readdir(d)))
		if (atoi(e->d_name) >= FLOOR)
			n++;
	closedir(d);
	return n;
}

int main(void)
{
	pl_need_uffd();
	size_t len = 32u << 20;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(p != MAP_FAILED);
	memset(p, 0x5a, len);
	pl_wait_merged(1000);
	if (listed_high() == 0)
		t_skip("the engine keeps no descriptor at %d or above here", FLOOR);
	int mine = open("/dev/null", O_RDONLY);
	struct stat st;
	CHECK(mine >= 0 && fstat(mine, &st) == 0 && S_ISCHR(st.st_mode));
	struct statx stx;
	CHECK(statx(mine, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &stx) == 0);
	CHECK(fstatat(AT_FDCWD, "/dev/null", &st, 0) == 0);   /* paths unchanged */
	int bad = 0;
	bad += visible_high("fstat");
	bad += visible_high("fstat64");
	bad += visible_high("fstatat");
	bad += visible_high("statx");
	if (bad) {
		fprintf(stderr, "FAIL: %d probes saw libdedup's descriptors\n", bad);
		return T_FAIL;
	}
	for (size_t i = 0; i < len; i++)
		if (p[i] != 0x5a) {
			fprintf(stderr, "FAIL: byte %zu reads %#x\n", i, (unsigned char)p[i]);
			return T_FAIL;
		}
	fprintf(stderr, "PASS: %d descriptors of libdedup in /proc/self/fd, none seen by fstat\n",
		listed_high());
	return T_PASS;
}
