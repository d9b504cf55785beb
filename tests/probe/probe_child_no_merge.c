/* SPDX-License-Identifier: MIT */
/*
 * probe_child_no_merge.c - in a fork()ed child, a fresh anonymous mapping
 * made in place (mmap MAP_FIXED) over a memfd page in the middle of an
 * anonymous VMA inherited from the parent does not merge with its
 * neighbours (three VMAs stay three): the child's copies of the parent's
 * VMAs have anon_vma chains of their own, and the kernel only merges a VMA
 * without anon_vma into one whose chain is singular. The same in the
 * parent merges (one VMA). Seen on Linux 6.18.
 *
 * Why libdedup depends on it: a fork()ed child that gives up the guard of
 * its merged pages (child.c, dd_piece_to_anon) cannot hand them back as
 * one mapping; it keeps one per piece, no more than it had.
 */
#include "tcommon.h"

#include <sys/wait.h>

static int vmas(const char *lo, size_t len)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	int n = 0;
	CHECK(f != NULL);
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx", &a, &b) == 2 && a < (uintptr_t)lo + len && b > (uintptr_t)lo)
			n++;
	}
	fclose(f);
	return n;
}

static int replace(char *v)
{
	CHECK(mmap(v + 2 * T_PAGE, T_PAGE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == v + 2 * T_PAGE);
	v[2 * T_PAGE] = 3;
	return vmas(v, 5 * T_PAGE);
}

int main(void)
{
	char *v = t_map_anon(5 * T_PAGE);
	memset(v, 1, 5 * T_PAGE);
	int mfd = memfd_create("probe", MFD_CLOEXEC);
	CHECK(mfd >= 0 && ftruncate(mfd, T_PAGE) == 0);
	CHECK(mmap(v + 2 * T_PAGE, T_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, mfd, 0) ==
	      v + 2 * T_PAGE);
	CHECK(vmas(v, 5 * T_PAGE) == 3);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0)
		_exit(replace(v) == 3 ? 0 : 1);
	int st;
	CHECK(waitpid(pid, &st, 0) == pid);
	if (!WIFEXITED(st) || WEXITSTATUS(st)) {
		fprintf(stderr, "FAIL: in the child the replacement merged (status %#x)\n", st);
		return T_FAIL;
	}
	CHECK(replace(v) == 1);
	return T_PASS;
}
