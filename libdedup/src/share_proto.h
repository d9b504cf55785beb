/* SPDX-License-Identifier: MIT */
/*
 * share_proto.h - the wire protocol between a sharing group's members
 * (group.c, inside libdedup) and the group's helper (tools/dedup-share.c),
 * docs/sharing.md sections 10 and 13. Both sides include this header and
 * nothing else of each other, so the checks below are the only definition
 * of a well-formed message and of a segment.
 *
 * Transport: a SOCK_SEQPACKET unix socket, <dir>/NAME.sock in the user's
 * 0700 directory. One message per send, descriptors attached to the message
 * they belong to (SCM_RIGHTS). Native endian: both ends are on one host.
 * Every message starts with struct dd_share_hdr; count says how many array
 * elements follow the fixed part, and the length of the message must be
 * exactly what type and count make it (dd_share_msg_len).
 *
 *   member -> helper                      helper -> member
 *   HELLO {page size, pid}                WELCOME {page size, helper pid}
 *   LOOKUP u64 hashes[count]              ANSWER {nsegs} segs[nsegs]
 *                                                entries[count]
 *                                          + one descriptor per seg, in order
 *   PUBLISH u64 hashes[count] + 1 fd      PUBLISHED {id} or ERROR {errno}
 *   RELEASE u64 ids[count]                (no answer)
 *   STATS                                 STATSREPLY {members, segments,
 *                                                     pages, holds}
 *                                                u32 pids[count]
 * The helper sends nothing unasked, and each request but RELEASE gets
 * exactly one answer, so a member reads the answer to what it just sent.
 * Hashes are dd_hash_content() values (hash.h): never 0. The first message
 * of a connection is HELLO; the helper drops a connection that sends
 * anything malformed (its holds go with it), and a member leaves the group
 * when it receives anything malformed.
 *
 * Observers: a HELLO with pid 0 comes from a reader of the group's figures
 * (dedup-stat, share_query.h), not a member. The helper counts it in no
 * figure and serves it STATS only; anything else from it drops it.
 * STATSREPLY's members and pids[] are the connections that said HELLO as
 * members (pids[i]: SO_PEERCRED of the connection), count == members.
 *
 * Version 2 added the members' pids to STATSREPLY and observers (dedup-stat's
 * group view). A STATSREPLY of version 1 had no pids, so the length check
 * of either side would call the other's malformed: the version changed, and
 * a peer of version 1 gets ERROR {EPROTONOSUPPORT} at its HELLO, as any
 * other version (a member says so and runs without the group; an old
 * helper exits when idle).
 *
 * Everything here is static inline and uses no malloc and no stdio: the
 * library calls it from the engine thread.
 */
#ifndef DEDUP_SHARE_PROTO_H
#define DEDUP_SHARE_PROTO_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "group.h"

#ifndef F_SEAL_SEAL
#define F_ADD_SEALS 1033
#define F_GET_SEALS 1034
#define F_SEAL_SEAL 0x0001
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#define F_SEAL_WRITE 0x0008
#endif
#define DD_SHARE_SEALS (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE)

#define DD_SHARE_MAGIC 0x48534444u     /* "DDSH" in memory order */
#define DD_SHARE_VERSION 2u
#define DD_SHARE_MAX_FDS 253           /* SCM_MAX_FD: descriptors per message */
#define DD_SHARE_MAX_RELEASE 4096      /* ids per RELEASE */
#define DD_SHARE_MAX_MEMBERS 4096      /* connections a helper serves: pids per STATSREPLY */
#define DD_SHARE_MEMFD_PREFIX "libdedup-g:"   /* memfd name: prefix + group name */

enum dd_share_type {
	DD_SHARE_HELLO = 1,
	DD_SHARE_WELCOME = 2,
	DD_SHARE_LOOKUP = 3,
	DD_SHARE_ANSWER = 4,
	DD_SHARE_PUBLISH = 5,
	DD_SHARE_PUBLISHED = 6,
	DD_SHARE_RELEASE = 7,
	DD_SHARE_STATS = 8,
	DD_SHARE_STATSREPLY = 9,
	DD_SHARE_ERROR = 10,
	DD_SHARE_TYPE_MAX = 10
};

/* 16 bytes, so that the arrays of u64 after it are aligned */
struct dd_share_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t type;
	uint32_t count;        /* elements of the trailing array */
	uint32_t reserved;     /* 0 */
};

struct dd_share_hello {        /* HELLO (member) and WELCOME (helper) */
	struct dd_share_hdr h;
	uint32_t page_size;
	int32_t pid;
};

struct dd_share_seg {          /* an ANSWER's segment table */
	uint64_t id;
	uint32_t npages;
	uint32_t reserved;
};

struct dd_share_entry {        /* an ANSWER's entry for one hash */
	uint32_t kind;         /* enum dd_group_kind */
	uint32_t seg;          /* FOUND: index into the segment table */
	uint32_t page;         /* FOUND: page within that segment */
	uint32_t reserved;
};

struct dd_share_answer {       /* + segs[nsegs], then entries[h.count] */
	struct dd_share_hdr h;
	uint32_t nsegs;
	uint32_t reserved;
};

struct dd_share_id {           /* PUBLISHED */
	struct dd_share_hdr h;
	uint64_t id;
};

struct dd_share_error {        /* ERROR: why a request was refused */
	struct dd_share_hdr h;
	int32_t code;          /* a positive errno */
	uint32_t reserved;
};

struct dd_share_stats {        /* STATSREPLY, + u32 pids[h.count] */
	struct dd_share_hdr h;
	uint64_t members, segments, pages, holds;
};

/* The largest STATSREPLY: every connection a member. */
#define DD_SHARE_STATS_MAX (sizeof(struct dd_share_stats) + DD_SHARE_MAX_MEMBERS * sizeof(uint32_t))

/* The largest message of either side: a full ANSWER or a full PUBLISH
 * (a full STATSREPLY is smaller). */
#define DD_SHARE_ANSWER_MAX (sizeof(struct dd_share_answer) + \
			     DD_GROUP_MAX_LOOKUP * (sizeof(struct dd_share_seg) + \
						    sizeof(struct dd_share_entry)))
#define DD_SHARE_PUBLISH_MAX (sizeof(struct dd_share_hdr) + DD_GROUP_MAX_SEG_PAGES * sizeof(uint64_t))
#define DD_SHARE_MSG_MAX (DD_SHARE_PUBLISH_MAX > DD_SHARE_ANSWER_MAX ? \
			  DD_SHARE_PUBLISH_MAX : DD_SHARE_ANSWER_MAX)
_Static_assert(DD_SHARE_STATS_MAX <= DD_SHARE_MSG_MAX, "a full STATSREPLY is a message too");

static inline void dd_share_hdr_init(struct dd_share_hdr *h, enum dd_share_type type,
				     uint32_t count)
{
	h->magic = DD_SHARE_MAGIC;
	h->version = DD_SHARE_VERSION;
	h->type = (uint16_t)type;
	h->count = count;
	h->reserved = 0;
}

/* The length a message of this type and count must have; 0 if the count
 * is out of range for the type. nsegs only for ANSWER. */
static inline size_t dd_share_msg_len(unsigned type, uint32_t count, uint32_t nsegs)
{
	switch (type) {
	case DD_SHARE_HELLO:
	case DD_SHARE_WELCOME:
		return count ? 0 : sizeof(struct dd_share_hello);
	case DD_SHARE_LOOKUP:
		if (!count || count > DD_GROUP_MAX_LOOKUP)
			return 0;
		return sizeof(struct dd_share_hdr) + count * sizeof(uint64_t);
	case DD_SHARE_ANSWER:
		if (!count || count > DD_GROUP_MAX_LOOKUP || nsegs > count ||
		    nsegs > DD_SHARE_MAX_FDS)
			return 0;
		return sizeof(struct dd_share_answer) + nsegs * sizeof(struct dd_share_seg) +
		       count * sizeof(struct dd_share_entry);
	case DD_SHARE_PUBLISH:
		if (!count || count > DD_GROUP_MAX_SEG_PAGES)
			return 0;
		return sizeof(struct dd_share_hdr) + count * sizeof(uint64_t);
	case DD_SHARE_RELEASE:
		if (!count || count > DD_SHARE_MAX_RELEASE)
			return 0;
		return sizeof(struct dd_share_hdr) + count * sizeof(uint64_t);
	case DD_SHARE_PUBLISHED:
		return count ? 0 : sizeof(struct dd_share_id);
	case DD_SHARE_STATS:
		return count ? 0 : sizeof(struct dd_share_hdr);
	case DD_SHARE_STATSREPLY:
		if (count > DD_SHARE_MAX_MEMBERS)
			return 0;
		return sizeof(struct dd_share_stats) + count * sizeof(uint32_t);
	case DD_SHARE_ERROR:
		return count ? 0 : sizeof(struct dd_share_error);
	default:
		return 0;
	}
}

/* How many descriptors a message of this type carries (ANSWER: nsegs). */
static inline uint32_t dd_share_msg_fds(unsigned type, uint32_t nsegs)
{
	return type == DD_SHARE_PUBLISH ? 1 : type == DD_SHARE_ANSWER ? nsegs : 0;
}

/*
 * Check a received message: magic, version, a known type, the exact length
 * for its count, reserved fields 0, and the number of descriptors that came
 * with it. The type, -EPROTONOSUPPORT for a header of another version (a
 * helper or member of another libdedup: said as such), or -EPROTO. buf is
 * aligned for the structs (8).
 */
static inline int dd_share_msg_check(const void *buf, size_t len, size_t nfds)
{
	const struct dd_share_hdr *h = buf;
	uint32_t nsegs = 0;

	if (len < sizeof(*h) || h->magic != DD_SHARE_MAGIC)
		return -EPROTO;
	if (h->version != DD_SHARE_VERSION)
		return -EPROTONOSUPPORT;
	if (h->reserved || !h->type || h->type > DD_SHARE_TYPE_MAX)
		return -EPROTO;
	if (h->type == DD_SHARE_ANSWER) {
		if (len < sizeof(struct dd_share_answer))
			return -EPROTO;
		nsegs = ((const struct dd_share_answer *)buf)->nsegs;
	}
	size_t want = dd_share_msg_len(h->type, h->count, nsegs);
	if (!want || want != len || nfds != dd_share_msg_fds(h->type, nsegs))
		return -EPROTO;
	return h->type;
}

/* Room for a message's descriptors, aligned for struct cmsghdr. */
union dd_share_cmsg {
	char buf[CMSG_SPACE(DD_SHARE_MAX_FDS * sizeof(int))];
	struct cmsghdr align;
};

/* Attach fds[0..n) (n <= DD_SHARE_MAX_FDS) to mh, in c. */
static inline void dd_share_put_fds(struct msghdr *mh, union dd_share_cmsg *c, const int *fds,
				    size_t n)
{
	if (!n)
		return;
	memset(c, 0, sizeof(*c));
	mh->msg_control = c->buf;
	mh->msg_controllen = CMSG_SPACE(n * sizeof(int));
	struct cmsghdr *cm = CMSG_FIRSTHDR(mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(n * sizeof(int));
	memcpy(CMSG_DATA(cm), fds, n * sizeof(int));
}

/*
 * The descriptors that came with a received message (recvmsg into mh with
 * c as its control buffer) into fds[] (*n of them, at most
 * DD_SHARE_MAX_FDS: the kernel's limit; any beyond are closed). False if
 * the message also carried something else, or more than fit (MSG_CTRUNC,
 * MSG_TRUNC): the caller closes fds[] and treats the message as malformed.
 * close(2) itself, not an interposed close() (preload/descriptors.c).
 */
static inline bool dd_share_take_fds(struct msghdr *mh, int *fds, size_t *n)
{
	bool ok = !(mh->msg_flags & (MSG_CTRUNC | MSG_TRUNC));

	*n = 0;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) {
			ok = false;
			continue;
		}
		size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
			if (*n < DD_SHARE_MAX_FDS)
				fds[(*n)++] = fd;
			else
				syscall(SYS_close, fd);
		}
	}
	return ok;
}

/* Close fds[0..n) (close(2) itself). */
static inline void dd_share_close_fds(const int *fds, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (fds[i] >= 0)
			syscall(SYS_close, fds[i]);
}

/*
 * fd is a group segment: a memfd of ours by name, a regular file of a
 * positive number of pages (at most DD_GROUP_MAX_SEG_PAGES), with all four
 * seals. Its page count, or -errno: with the seals checked, its content is
 * final whatever descriptor anyone holds (docs/sharing.md section 5).
 */
static inline int dd_share_segment_check(int fd, size_t page)
{
	struct stat st;
	char path[64], name[128];
	ssize_t n;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode) || st.st_size <= 0 || (size_t)st.st_size % page ||
	    (size_t)st.st_size / page > DD_GROUP_MAX_SEG_PAGES)
		return -EINVAL;
	int seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0)
		return errno == EINVAL ? -EINVAL : -errno;   /* not a memfd */
	if ((seals & DD_SHARE_SEALS) != DD_SHARE_SEALS)
		return -EPERM;
	/* "/memfd:libdedup-g:NAME (deleted)" */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, name, sizeof(name) - 1);
	if (n < 0)
		return -errno;
	name[n] = 0;
	if (strncmp(name, "/memfd:" DD_SHARE_MEMFD_PREFIX, strlen("/memfd:" DD_SHARE_MEMFD_PREFIX)))
		return -EINVAL;
	return (int)((size_t)st.st_size / page);
}

#endif /* DEDUP_SHARE_PROTO_H */
