/* SPDX-License-Identifier: MIT */
/*
 * hl_setuid - a program that drops privileges the way daemons do: keep
 * capabilities across the change (PR_SET_KEEPCAPS), setgroups(), setresgid()
 * and setresuid() to nobody, then go on allocating duplicates. glibc makes
 * every thread of the process take the new ids (a signal to each, SIGSETXID)
 * and aborts the process if one of them fails, so libdedup's threads must
 * take them too. Prints "ok <checksum>"; exit 77 when not root.
 * hl_setuid fork: the same in a fork()ed child (the daemon way, and a
 * pre-fork server's workers'). There the guard of the merged pages the
 * child inherited (libdedup/src/child.c) follows the ids too and keeps
 * guarding: the pages stay shared with the parent (they were copied before
 * the guard followed credentials), and a discarded one reads zeros.
 */
#include "../preload/pl.h"

#include <grp.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

/* In a guarded child after the ids changed: a merged page of b reads zeros
 * once discarded; then it gets its content back. */
static bool still_guarded(char *b, size_t pages)
{
	char *start = b + 4096 - ((uintptr_t)b & 4095);
	uintptr_t p;

	if (!pl_pieces((uintptr_t)start, (uintptr_t)start + pages * T_PAGE, &p) || !p)
		return true;   /* nothing merged in this buffer */
	CHECK(madvise((void *)p, T_PAGE, MADV_DONTNEED) == 0);
	if (!pl_is_zero((const char *)p, T_PAGE)) {
		fprintf(stderr, "hl_setuid: a discarded merged page does not read zeros after the "
			"ids changed\n");
		return false;
	}
	t_fill((void *)p, 1 * 1000003 + (p - (uintptr_t)start) / T_PAGE);
	return true;
}

int main(int argc, char **argv)
{
	enum { N = 16, SZ = 1 << 20 };
	uint64_t sum = 0;
	char *b[2 * N];

	if (geteuid() != 0) {
		fprintf(stderr, "SKIP: not root\n");
		return T_SKIP;
	}
	for (int i = 0; i < N; i++) {
		b[i] = malloc(SZ);
		CHECK(b[i]);
		pl_fill(b[i] + 4096 - ((uintptr_t)b[i] & 4095), SZ / T_PAGE - 1, 1);
	}
	usleep(300 * 1000);   /* the engine (if any) is running by now */
	if (argc > 1 && strcmp(argv[1], "fork") == 0) {
		/* a daemon: the child drops privileges (and, under libdedup,
		 * guards the merged pages it inherited with a thread) */
		fflush(stdout);
		pid_t pid = fork();
		CHECK(pid >= 0);
		if (pid > 0) {
			int st;
			CHECK(waitpid(pid, &st, 0) == pid);
			if (!WIFEXITED(st)) {
				fprintf(stderr, "hl_setuid: the child died of signal %d\n", WTERMSIG(st));
				return T_FAIL;
			}
			return WEXITSTATUS(st);
		}
	}
	uintptr_t any;
	size_t merged = pl_pieces(0, UINTPTR_MAX, &any);   /* inherited, in a child */
	CHECK(prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) == 0);
	gid_t g = 65534;
	CHECK(setgroups(1, &g) == 0);
	CHECK(setresuid(65534, 65534, 65534) == 0);
	/* the kept capabilities are permitted, not effective: raise
	 * CAP_SETGID again in this thread (capset() is per thread, as libcap's
	 * cap_set_proc() is), then change the group ids */
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];
	CHECK(syscall(SYS_capget, &h, d) == 0);
	d[0].effective |= 1u << CAP_SETGID;
	CHECK(syscall(SYS_capset, &h, d) == 0);
	CHECK(setresgid(65534, 65534, 65534) == 0);
	CHECK(getuid() == 65534 && getgid() == 65534);
	if (argc > 1 && strcmp(argv[1], "fork") == 0 && merged) {
		if (!pl_pieces(0, UINTPTR_MAX, &any)) {
			fprintf(stderr, "hl_setuid: %zu merged pieces before the ids changed, none "
				"after: the child's guard let go and copied them\n", merged);
			return T_FAIL;
		}
		for (int i = 0; i < N; i++)
			if (!still_guarded(b[i], SZ / T_PAGE - 1))
				return T_FAIL;
	}
	for (int i = N; i < 2 * N; i++) {
		b[i] = malloc(SZ);
		CHECK(b[i]);
		pl_fill(b[i] + 4096 - ((uintptr_t)b[i] & 4095), SZ / T_PAGE - 1, 1);
	}
	usleep(300 * 1000);
	for (int i = 0; i < 2 * N; i++) {
		CHECK(pl_check(b[i] + 4096 - ((uintptr_t)b[i] & 4095), SZ / T_PAGE - 1, 1));
		sum += (unsigned char)b[i][SZ / 2];
	}
	printf("ok %llu\n", (unsigned long long)sum);
	return 0;
}
