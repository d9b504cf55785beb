/* SPDX-License-Identifier: MIT */
/*
 * tshare.h - what the sharing-group tests (issue 13) have in common: a
 * private $XDG_RUNTIME_DIR per test, the helper binary given as argv[1]
 * (DEDUP_SHARE_HELPER), a raw client of the protocol (share_proto.h) to
 * send what group.c never would and to ask the helper for its STATS and
 * its pid, waits for conditions (capped by t_cap(), never a fixed sleep),
 * and the helper's end at exit. These tests use libdedup internals on
 * purpose: group.h and share_proto.h are what they test.
 */
#ifndef DEDUP_TSHARE_H
#define DEDUP_TSHARE_H

#include "tcommon.h"   /* first: _GNU_SOURCE */

#include <dirent.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "hash.h"
#include "share_proto.h"
#include "share_query.h"

static char ts_root[64];        /* the test's $XDG_RUNTIME_DIR */
static char ts_dir[80];         /* its libdedup/share */
static pid_t ts_helpers[8];     /* helpers seen, to end at exit */
static pid_t ts_owner;          /* only the process that set up cleans up */

static int ts_rm(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb; (void)flag; (void)ftw;
	remove(path);
	return 0;
}

static void ts_cleanup(void)
{
	if (getpid() != ts_owner)
		return;
	for (size_t i = 0; i < DD_ARRAY_SIZE(ts_helpers); i++)
		if (ts_helpers[i] > 0)
			kill(ts_helpers[i], SIGKILL);
	if (ts_root[0])
		nftw(ts_root, ts_rm, 16, FTW_DEPTH | FTW_PHYS);
}

/* A private runtime directory and the helper from argv[1]. */
static inline void ts_setup(int argc, char **argv)
{
	if (argc < 2 || access(argv[1], X_OK) < 0)
		t_skip("usage: %s /path/to/dedup-share", argv[0]);
	snprintf(ts_root, sizeof(ts_root), "/tmp/dd-share-test-XXXXXX");
	CHECK(mkdtemp(ts_root));
	setenv("XDG_RUNTIME_DIR", ts_root, 1);
	setenv("DEDUP_SHARE_HELPER", argv[1], 1);
	snprintf(ts_dir, sizeof(ts_dir), "%s/libdedup/share", ts_root);
	ts_owner = getpid();
	atexit(ts_cleanup);
}

static inline void ts_note_helper(pid_t pid)
{
	for (size_t i = 0; i < DD_ARRAY_SIZE(ts_helpers); i++) {
		if (ts_helpers[i] == pid)
			return;
		if (!ts_helpers[i]) {
			ts_helpers[i] = pid;
			return;
		}
	}
}

/* ---- a raw client ---- */

static inline int ts_send(int s, const void *msg, size_t len, const int *fds, size_t nfds)
{
	union dd_share_cmsg cb;
	struct iovec iov = { (void *)msg, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	dd_share_put_fds(&mh, &cb, fds, nfds);
	return sendmsg(s, &mh, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -errno;
}

/* One message (its length: 0 at EOF, -errno) and its descriptors. */
static inline ssize_t ts_recv(int s, void *buf, size_t size, int *fds, size_t *nfds)
{
	union dd_share_cmsg cb;
	struct iovec iov = { buf, size };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cb.buf,
			     .msg_controllen = sizeof(cb.buf) };
	ssize_t r = recvmsg(s, &mh, MSG_CMSG_CLOEXEC);

	*nfds = 0;
	if (r < 0)
		return -errno;
	dd_share_take_fds(&mh, fds, nfds);
	return r;
}

/* A connection to group name's socket, timeouts of 10 s; -errno. */
static inline int ts_connect(const char *name)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct timeval tv = { 10, 0 };
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

	CHECK(s >= 0);
	CHECK(strlen(ts_dir) + strlen(name) + 7 <= sizeof(sa.sun_path));
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%.80s/%.20s.sock", ts_dir, name);
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = -errno;
		close(s);
		return e;
	}
	return s;
}

/* Connect and HELLO; the helper's pid into *pid (noted for the cleanup). */
static inline int ts_hello(const char *name, pid_t *pid)
{
	struct dd_share_hello m = { .page_size = DD_PAGE, .pid = getpid() };
	union { struct dd_share_hello w; char buf[256]; } r;
	int fds[DD_SHARE_MAX_FDS];
	size_t nfds;
	int s = ts_connect(name);

	CHECK(s >= 0);
	dd_share_hdr_init(&m.h, DD_SHARE_HELLO, 0);
	CHECK(ts_send(s, &m, sizeof(m), NULL, 0) == 0);
	CHECK(ts_recv(s, &r, sizeof(r), fds, &nfds) == sizeof(r.w));
	CHECK(dd_share_msg_check(&r, sizeof(r.w), nfds) == DD_SHARE_WELCOME);
	ts_note_helper(r.w.pid);
	if (pid)
		*pid = r.w.pid;
	return s;
}

static inline struct dd_share_stats ts_stats(int s)
{
	struct dd_share_hdr q;
	static union { struct dd_share_stats st; char buf[DD_SHARE_STATS_MAX]; } r;
	int fds[DD_SHARE_MAX_FDS];
	size_t nfds;

	dd_share_hdr_init(&q, DD_SHARE_STATS, 0);
	CHECK(ts_send(s, &q, sizeof(q), NULL, 0) == 0);
	ssize_t len = ts_recv(s, &r, sizeof(r), fds, &nfds);
	CHECK(len >= (ssize_t)sizeof(r.st));
	CHECK(dd_share_msg_check(&r, (size_t)len, nfds) == DD_SHARE_STATSREPLY);
	CHECK(r.st.h.count == r.st.members);   /* a pid per member */
	return r.st;
}

/* The helper closed s (EOF or reset, within the receive timeout)? */
static inline bool ts_closed_by_peer(int s)
{
	char buf[256];
	int fds[DD_SHARE_MAX_FDS];
	size_t nfds;
	ssize_t r = ts_recv(s, buf, sizeof(buf), fds, &nfds);

	for (size_t i = 0; i < nfds; i++)
		close(fds[i]);
	return r == 0 || r == -ECONNRESET;
}

/* Wait until the helper's STATS satisfy cond, polled every 10 ms, up to
 * t_cap(). */
#define TS_WAIT_STATS(s, st, cond)                                                  \
	do {                                                                        \
		double t0_ = t_now();                                               \
		for (;;) {                                                          \
			st = ts_stats(s);                                           \
			if (cond)                                                   \
				break;                                              \
			if (t_now() - t0_ > t_cap()) {                              \
				fprintf(stderr, "%s:%d: waited %.0f s for %s\n",    \
					__FILE__, __LINE__, t_cap(), #cond);        \
				exit(T_FAIL);                                       \
			}                                                           \
			usleep(10000);                                              \
		}                                                                   \
	} while (0)

/* n pages of distinct content from seed, and their hashes. */
static inline void ts_pages(void *mem, const void **pages, uint64_t *hashes, size_t n,
			    uint64_t seed)
{
	for (size_t i = 0; i < n; i++) {
		char *p = (char *)mem + i * DD_PAGE;
		t_fill(p, seed + i);
		pages[i] = p;
		hashes[i] = dd_hash_content(p);
	}
}

/* A forked child's exit status (0..255, or 128 + signal). */
static inline int ts_wait(pid_t pid)
{
	int st;

	CHECK(waitpid(pid, &st, 0) == pid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* In a forked member: close every descriptor but stdio and its own two
 * pipe ends. Other members' pipe ends inherited here would keep each
 * other's reads from seeing the parent's exit: after a failed CHECK they
 * would wait for ever, holding the test's output open. */
static inline void ts_close_others(int keep1, int keep2)
{
	for (int fd = 3; fd < 1024; fd++)
		if (fd != keep1 && fd != keep2)
			close(fd);
}

/* The helpers of group (every dedup-share whose command line names it),
 * whoever started them. */
static inline int ts_group_helpers(const char *group, pid_t *out, int max)
{
	char path[300], buf[512];
	struct dirent *e;
	int n = 0;
	DIR *d = opendir("/proc");

	CHECK(d);
	while ((e = readdir(d)) && n < max) {
		pid_t p = (pid_t)atoi(e->d_name);
		if (p <= 0)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)p);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		ssize_t k = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (k <= 0)
			continue;
		buf[k] = 0;
		for (ssize_t i = 0; i < k; i++)
			if (!buf[i])
				buf[i] = ' ';
		if (strstr(buf, "dedup-share") && strstr(buf, group))
			out[n++] = p;
	}
	closedir(d);
	return n;
}

/* Ask the helper at sock, as an observer (share_query.h), until it holds no
 * segment (its grace over once no member holds them), up to t_cap(). The
 * query's result (-errno: no helper to ask, e.g. one killed last), and
 * the segments it held at the last answer in *segs. */
static inline int ts_segments_drain(const char *sock, uint64_t *segs)
{
	struct dd_share_info in;
	double t0 = t_now();
	int q;

	while ((q = dd_share_query(sock, &in)) == 0 && in.segments && t_now() - t0 < t_cap())
		usleep(50000);
	*segs = q == 0 ? in.segments : 0;
	return q;
}

static inline long ts_shmem_kib(void)
{
	char line[256];
	long v = -1;
	FILE *f = fopen("/proc/meminfo", "r");
	CHECK(f);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Shmem: %ld kB", &v) == 1)
			break;
	fclose(f);
	return v;
}

#endif /* DEDUP_TSHARE_H */
