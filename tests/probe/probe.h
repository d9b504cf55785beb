/* SPDX-License-Identifier: MIT */
/*
 * probe.h - what the kernel probes share (header-only): an operation run in
 * a background thread that may block in the kernel (on a userfaultfd event
 * nobody has read yet), waited for with a bound, and reading uffd messages
 * with a bound. A probe that hangs proves nothing; these turn "it blocks"
 * into a checked answer.
 */
#ifndef DEDUP_PROBE_H
#define DEDUP_PROBE_H

#include "tcommon.h"
#include "uapi.h"

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>

/* ---- bounded background operation ------------------------------------- */

struct bg {
	pthread_t th;
	int pfd[2];
	long (*op)(struct bg *);
	void *addr, *addr2;        /* the operation's arguments, as it wants */
	size_t len;
	int arg, fd;
	long ret;                  /* op's result, and errno after it */
	int err;
};

static inline void *bg_main(void *p)
{
	struct bg *b = p;
	char c = 1;
	b->ret = b->op(b);
	b->err = errno;
	if (write(b->pfd[1], &c, 1) != 1)
		abort();
	return NULL;
}

static inline void bg_start(struct bg *b)
{
	CHECK(pipe2(b->pfd, O_CLOEXEC) == 0);
	CHECK(pthread_create(&b->th, NULL, bg_main, b) == 0);
}

/* 1 if the operation finished within @ms milliseconds. */
static inline int bg_done(struct bg *b, int ms)
{
	struct pollfd p = { .fd = b->pfd[0], .events = POLLIN };
	int r = poll(&p, 1, ms);
	CHECK(r >= 0);
	return r == 1;
}

static inline void bg_join(struct bg *b)
{
	CHECK(bg_done(b, t_cap_ms()));
	CHECK(pthread_join(b->th, NULL) == 0);
	close(b->pfd[0]);
	close(b->pfd[1]);
}

/* ---- uffd messages ------------------------------------------------------ */

/* 1 if the uffd is readable within @ms milliseconds. */
static inline int uffd_readable(int uffd, int ms)
{
	struct pollfd p = { .fd = uffd, .events = POLLIN };
	int r = poll(&p, 1, ms);
	CHECK(r >= 0);
	return r == 1 && (p.revents & POLLIN);
}

static inline void uffd_read_msg(int uffd, struct uffd_msg *m)
{
	CHECK(uffd_readable(uffd, t_cap_ms()));
	CHECK(read(uffd, m, sizeof(*m)) == (ssize_t)sizeof(*m));
}

/* Read one uffd message, waiting at most @ms: 1 = got one, 0 = none. */
static inline int uffd_try_msg(int uffd, int ms, struct uffd_msg *m)
{
	struct pollfd p = { .fd = uffd, .events = POLLIN };
	int r = poll(&p, 1, ms);
	CHECK(r >= 0);
	if (r == 0)
		return 0;
	ssize_t n = read(uffd, m, sizeof(*m));
	if (n < 0 && errno == EAGAIN)
		return 0;
	CHECK(n == (ssize_t)sizeof(*m));
	return 1;
}

/* Poll @flag (set by another thread) for up to @ms milliseconds. */
static inline int wait_flag(atomic_int *flag, int ms)
{
	for (int i = 0; i < ms && !atomic_load(flag); i++)
		usleep(1000);
	return atomic_load(flag);
}

#endif /* DEDUP_PROBE_H */
