/* SPDX-License-Identifier: MIT */
/*
 * share_query.h - ask a sharing group's helper for its figures, as an
 * observer (share_proto.h: HELLO pid 0, then STATS). For dedup-stat's group
 * view and the tests; a member never needs it (it is connected already).
 *
 * The whole exchange is bounded by DD_SHARE_QUERY_MS: a non-blocking
 * socket, poll() before every receive. It never hangs on a helper that is
 * stuck, stopped or gone, and trusts only a helper of our own uid
 * (SO_PEERCRED, as group.c). Static inline, no malloc, no stdio, like
 * share_proto.h.
 */
#ifndef DEDUP_SHARE_QUERY_H
#define DEDUP_SHARE_QUERY_H

#include <poll.h>
#include <sys/un.h>
#include <time.h>

#include "share_proto.h"

#define DD_SHARE_QUERY_MS 1000

struct dd_share_info {
	int32_t helper_pid;               /* from WELCOME */
	uint32_t page_size;               /* the helper's (== DD_PAGE) */
	uint64_t members, segments, pages, holds;   /* STATSREPLY */
	uint32_t npids;                   /* == members */
	int32_t pids[DD_SHARE_MAX_MEMBERS];
};

static inline int64_t dd_share_query_left_ms(const struct timespec *end)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (int64_t)(end->tv_sec - now.tv_sec) * 1000 + (end->tv_nsec - now.tv_nsec) / 1000000;
}

/* One message of type want into buf (size, aligned for the structs) by
 * the deadline: its length, or -errno (-EPROTONOSUPPORT: an ERROR said the
 * helper speaks another version). Descriptors are closed: none belong. */
static inline ssize_t dd_share_query_recv(int s, void *buf, size_t size, int want,
					  const struct timespec *end)
{
	union dd_share_cmsg cb;
	struct iovec iov = { buf, size };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cb.buf,
			     .msg_controllen = sizeof(cb.buf) };
	struct pollfd pfd = { .fd = s, .events = POLLIN };
	int fds[DD_SHARE_MAX_FDS];
	size_t nfds;
	ssize_t len;

	for (;;) {
		int64_t left = dd_share_query_left_ms(end);
		if (left <= 0)
			return -ETIMEDOUT;
		int r = poll(&pfd, 1, (int)left);
		if (r < 0 && errno != EINTR)
			return -errno;
		if (r <= 0)
			continue;
		len = recvmsg(s, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
		if (len >= 0)
			break;
		if (errno != EINTR && errno != EAGAIN)
			return -errno;
	}
	bool ok = dd_share_take_fds(&mh, fds, &nfds);
	dd_share_close_fds(fds, nfds);
	if (!len)
		return -ECONNRESET;
	int type = dd_share_msg_check(buf, (size_t)len, nfds);
	if (type == -EPROTONOSUPPORT)
		return type;
	if (type == DD_SHARE_ERROR && ok)
		return ((const struct dd_share_error *)buf)->code == EPROTONOSUPPORT
			       ? -EPROTONOSUPPORT : -EPROTO;
	return ok && type == want ? len : -EPROTO;
}

/* Send req (len bytes) and receive the answer of type want into buf:
 * its length or -errno. The requests are small and the socket's buffer
 * empty: a send that would wait is a helper that does not read (timed
 * out). */
static inline ssize_t dd_share_query_ask(int s, const void *req, size_t len, int want,
					 void *buf, size_t size, const struct timespec *end)
{
	if (send(s, req, len, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)len)
		return errno == EAGAIN ? -ETIMEDOUT : -errno;
	return dd_share_query_recv(s, buf, size, want, end);
}

/*
 * The figures of the helper listening on the socket at path into *out.
 * 0, or -errno: -ENOENT or -ECONNREFUSED, nobody listens (a stale socket);
 * -EACCES, the helper runs as another user; -ETIMEDOUT, no answer within
 * DD_SHARE_QUERY_MS (or a backlog full: EAGAIN); -EPROTONOSUPPORT, a helper
 * of another protocol version; -EPROTO, anything malformed.
 */
static inline int dd_share_query(const char *path, struct dd_share_info *out)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct dd_share_hello hi = { .page_size = DD_PAGE, .pid = 0 };   /* 0: an observer */
	struct dd_share_hdr q;
	union {
		struct dd_share_hello w;
		struct dd_share_stats st;
		struct dd_share_error e;
		char buf[DD_SHARE_STATS_MAX];
	} m;
	struct ucred uc;
	socklen_t ul = sizeof(uc);
	struct timespec end;
	ssize_t len;
	int s, r;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	clock_gettime(CLOCK_MONOTONIC, &end);
	end.tv_sec += DD_SHARE_QUERY_MS / 1000;
	end.tv_nsec += (DD_SHARE_QUERY_MS % 1000) * 1000000L;
	if (end.tv_nsec >= 1000000000L) {
		end.tv_sec++;
		end.tv_nsec -= 1000000000L;
	}
	s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s < 0)
		return -errno;
	/* a unix connect completes at once or fails: EAGAIN is a full backlog */
	do
		r = connect(s, (const struct sockaddr *)&sa, sizeof(sa));
	while (r < 0 && errno == EINTR);
	if (r < 0) {
		r = errno == EAGAIN ? -ETIMEDOUT : -errno;
		goto out;
	}
	if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &uc, &ul) < 0) {
		r = -errno;
		goto out;
	}
	if (uc.uid != geteuid()) {
		r = -EACCES;
		goto out;
	}
	dd_share_hdr_init(&hi.h, DD_SHARE_HELLO, 0);
	len = dd_share_query_ask(s, &hi, sizeof(hi), DD_SHARE_WELCOME, &m, sizeof(m), &end);
	if (len < 0) {
		r = (int)len;
		goto out;
	}
	out->helper_pid = m.w.pid;
	out->page_size = m.w.page_size;
	dd_share_hdr_init(&q, DD_SHARE_STATS, 0);
	len = dd_share_query_ask(s, &q, sizeof(q), DD_SHARE_STATSREPLY, &m, sizeof(m), &end);
	if (len < 0) {
		r = (int)len;
		goto out;
	}
	if (m.st.members != m.st.h.count) {
		r = -EPROTO;
		goto out;
	}
	out->members = m.st.members;
	out->segments = m.st.segments;
	out->pages = m.st.pages;
	out->holds = m.st.holds;
	out->npids = m.st.h.count;
	memcpy(out->pids, &m.st + 1, out->npids * sizeof(*out->pids));
	r = 0;
out:
	close(s);
	return r;
}

#endif /* DEDUP_SHARE_QUERY_H */
