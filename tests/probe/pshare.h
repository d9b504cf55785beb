/* SPDX-License-Identifier: MIT */
/*
 * pshare.h - helpers for the cross-process sharing probes (issue 13,
 * docs/sharing.md), header-only, on top of tcommon.h.
 *
 * A probe that needs "another process" forks a child that runs one
 * function and exits with its verdict (T_PASS, T_FAIL, T_SKIP; CHECK() in
 * the child exits T_FAIL). Descriptors reach the child the way they will
 * reach a group member: SCM_RIGHTS over a unix socket, created after the
 * fork so that nothing is simply inherited.
 */
#ifndef DEDUP_PSHARE_H
#define DEDUP_PSHARE_H

#include "tcommon.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

/* The seals a group member requires before it reads a segment
 * (docs/sharing.md, "Publication"). */
#define P_SEALS (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE)

/* A sealable memfd of @n pages, page i filled with t_fill(seed + i). */
static inline int p_memfd(const char *name, size_t n, uint64_t seed)
{
	static unsigned char pg[T_PAGE];
	int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	CHECK(fd >= 0);
	for (size_t i = 0; i < n; i++) {
		t_fill(pg, seed + i);
		CHECK(pwrite(fd, pg, T_PAGE, (off_t)(i * T_PAGE)) == (ssize_t)T_PAGE);
	}
	return fd;
}

/* Does page @i of @fd (read with pread) hold t_fill(seed)? */
static inline bool p_file_is(int fd, size_t i, uint64_t seed)
{
	unsigned char a[T_PAGE], b[T_PAGE];
	t_fill(b, seed);
	CHECK(pread(fd, a, T_PAGE, (off_t)(i * T_PAGE)) == (ssize_t)T_PAGE);
	return memcmp(a, b, T_PAGE) == 0;
}

static inline bool p_mem_is(const void *p, uint64_t seed)
{
	unsigned char b[T_PAGE];
	t_fill(b, seed);
	return memcmp(p, b, T_PAGE) == 0;
}

static inline bool p_zero(const void *p)
{
	const unsigned char *c = p;
	for (size_t i = 0; i < T_PAGE; i++)
		if (c[i])
			return false;
	return true;
}

/* Send @fd (or none if fd < 0) and one byte @tag over unix socket @s. */
static inline void p_send_fd(int s, int fd, char tag)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { .iov_base = &tag, .iov_len = 1 };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	memset(cbuf, 0, sizeof(cbuf));
	if (fd >= 0) {
		m.msg_control = cbuf;
		m.msg_controllen = sizeof(cbuf);
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	CHECK(sendmsg(s, &m, MSG_NOSIGNAL) == 1);
}

/* Receive one byte (into *tag if not NULL) and at most one descriptor
 * (returned, close-on-exec; -1 if none came). A truncated control
 * message fails the probe: a member would refuse it too. */
static inline int p_recv_fd(int s, char *tag)
{
	char t = 0, cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { .iov_base = &t, .iov_len = 1 };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1,
			    .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	int fd = -1;
	CHECK(recvmsg(s, &m, MSG_CMSG_CLOEXEC) == 1);
	CHECK(!(m.msg_flags & (MSG_CTRUNC | MSG_TRUNC)));
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
		    c->cmsg_len == CMSG_LEN(sizeof(int)))
			memcpy(&fd, CMSG_DATA(c), sizeof(int));
	if (tag)
		*tag = t;
	return fd;
}

/* One byte, no descriptor: a step of a two-process script. */
static inline void p_say(int s, char tag) { p_send_fd(s, -1, tag); }
static inline char p_hear(int s)
{
	char t;
	int fd = p_recv_fd(s, &t);
	if (fd >= 0)
		close(fd);
	return t;
}

/* fork(); the child runs fn(arg, its end of a socketpair) and exits with its
 * verdict. *peer gets the parent's end. */
static inline pid_t p_fork(int (*fn)(void *, int), void *arg, int *peer)
{
	int sv[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	fflush(NULL);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		close(sv[0]);
		alarm((unsigned)t_cap() + 10);   /* a stuck child must not outlive the probe */
		exit(fn(arg, sv[1]));   /* exit, not _exit: the child's stdout is flushed */
	}
	close(sv[1]);
	*peer = sv[0];
	return pid;
}

/* The verdict of child @pid: its exit status, T_FAIL if a signal killed it. */
static inline int p_wait(pid_t pid)
{
	int st;
	CHECK(waitpid(pid, &st, 0) == pid);
	if (WIFSIGNALED(st)) {
		fprintf(stderr, "child %d killed by signal %d\n", (int)pid, WTERMSIG(st));
		return T_FAIL;
	}
	return WEXITSTATUS(st);
}

#endif /* DEDUP_PSHARE_H */
