/* SPDX-License-Identifier: MIT */
/*
 * dedup-share - the helper of one sharing group (docs/sharing.md, issue 13).
 *
 * Owns the group's index and descriptors: segments (sealed memfds that
 * members published), id -> {fd, pages, hashes, holders}; an index
 * hash -> (segment, page) of the group's stable content; a bounded table of
 * recent unstable offers (hash -> connection, time); per connection, the
 * set of segments it holds. It never reads member memory and never writes
 * a page: it reads a published segment once, to check that each page has
 * the hash its publisher claims.
 *
 * Protocol: libdedup/src/share_proto.h, with the same message and segment
 * checks the members use. Trust: a connection is served only if the
 * kernel says (SO_PEERCRED) that its uid is ours; the socket lives in the
 * user's 0700 directory anyway. Anything malformed from a connection drops
 * that connection (its holds go with it) with one line on stderr, and the
 * helper goes on serving the others. Nothing a member sends can crash it.
 *
 * Lifetime: a segment stays findable while a connection holds it, and for
 * a grace period after its last hold went; then its descriptor is closed
 * (the kernel frees its pages when the last mapping goes, in whatever
 * process). The helper exits after --idle-exit seconds without any
 * member's connection (observers, HELLO pid 0, such as dedup-stat asking
 * for STATS, do not count). The socket's name is bound under the group's flock
 * (NAME.lock, the one members take to spawn a helper): a live helper found
 * there means this one is not needed and exits.
 *
 * Threads: one. poll() over the listening socket and the connections; every
 * reply is sent without waiting (a member that does not read its answers
 * is dropped), so one connection cannot stall the others.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "hash.h"
#include "options.h"
#include "publish.h"
#include "share_proto.h"

#define OFFERS_MIN (1u << 12)          /* unstable offers remembered at first (64 KiB) */
#define OFFERS_MAX (1u << 22)          /* ... at most (64 MiB; offers_rebuild) */
#define OFFER_WAYS 8                  /* of a set (below, do_lookup) */
#define OFFER_MS 60000u                /* how long an offer stays fresh */
#define PUBLISH_MS 2000u               /* how long a SEEN keeps others from publishing */
#define MAX_CONNS DD_SHARE_MAX_MEMBERS
#define FD_RESERVE 8                  /* descriptors kept for connections */
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77           /* Linux 6.5 */
#endif

static const char *prog = "dedup-share";
static const char *group = "?";

/*
 * Fault injection for tests/share/share_inject.c: DEDUP_SHARE_TEST_DIE=N in
 * the helper's own environment (a member never passes DEDUP_* on to a
 * helper it starts) makes it SIGKILL itself the first time it reaches:
 */
enum {
	DIE_PUBLISH_RECEIVED = 1,   /* a PUBLISH and its descriptor received, nothing done */
	DIE_PUBLISH_INDEXED,        /* indexed and held, not answered */
	DIE_LOOKUP_RECEIVED,        /* a LOOKUP received, not answered */
	DIE_RELEASED,               /* a RELEASE done */
	DIE_MEMBER_GONE,            /* a member's connection dropped, its holds let go */
};
static long test_die;

static void die_at(long step)
{
	if (test_die == step)
		kill(getpid(), SIGKILL);
}

struct seg {
	uint64_t id;
	int fd;
	uint32_t npages;
	uint32_t holders;        /* connections holding it */
	uint64_t free_at;        /* holders == 0: when its descriptor closes */
	uint64_t tag;            /* the lookup that last named it (answer table) */
	uint32_t tag_index;      /* its index in that lookup's table */
	uint32_t shadowed;       /* pages not indexed: another segment has them */
	uint64_t *hashes;        /* npages */
};

struct conn {
	int fd;
	uint64_t id;             /* never reused, unlike fd */
	pid_t pid;               /* SO_PEERCRED, for messages */
	int pidfd;               /* the member's process (-1: unknown): readable
				    when it exits, even if a child of its
				    still holds the socket (no EOF then) */
	bool hello;
	bool observer;           /* HELLO pid 0: reads STATS, is no member */
	uint64_t *holds;         /* segment ids, sorted */
	size_t nholds, cap;
};

struct slot {                    /* the index: open addressing, linear probing */
	uint64_t hash;           /* 0: empty */
	struct seg *seg;
	uint32_t page;
};

struct offer {
	uint64_t hash;           /* 0: a free way */
	uint32_t conn;           /* who offered it; | PUBLISHING: who publishes it */
	uint32_t at;             /* when, ms (now_ms(): wraps, compared as an age) */
};
#define PUBLISHING (1u << 31)

static struct {
	struct seg **segs;       /* sorted by id (ids only grow) */
	size_t nsegs, segcap;
	uint64_t next_id, pages, holds, lookups;
	struct slot *idx;
	size_t idx_cap, idx_n;   /* capacity a power of two, at most half full */
	struct offer *offers;    /* offers_cap, in sets of OFFER_WAYS */
	size_t offers_cap, offers_used;   /* used: ways not free */
	struct conn *conns[MAX_CONNS];
	size_t nconns;
	size_t members;          /* of nconns: said HELLO as members; only they
				    keep us from idling */
	size_t observers;        /* of nconns: said HELLO as observers */
	uint64_t next_conn;
	uint64_t grace_ns, idle_ns;
	uint64_t next_free;      /* no segment's grace ends before this */
	uint64_t fd_limit;       /* RLIMIT_NOFILE */
	uint64_t accept_after;   /* no room for a connection: try again then */
	bool full;               /* said that the store is full */
} h = { .next_id = 1, .next_conn = 1, .next_free = UINT64_MAX };

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logmsg(const char *fmt, ...)
{
	char *line = NULL;
	va_list ap;

	va_start(ap, fmt);
	int n = vasprintf(&line, fmt, ap);
	va_end(ap);
	/* one write(2): the log may be shared (DIR/NAME.log, or the journal) */
	if (n >= 0)
		dprintf(STDERR_FILENO, "%s[%d] %s: %s\n", prog, (int)getpid(), group, line);
	free(line);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* The first of the OFFER_WAYS ways of hash's set. */
static size_t offer_pos(uint64_t hash)
{
	return (size_t)(hash * 0x9e3779b97f4a7c15ULL >> 32) % (h.offers_cap / OFFER_WAYS) *
	       OFFER_WAYS;
}

/* Where hash goes in its set: its own way, else a free one, else the
 * oldest. */
static struct offer *offer_way(uint64_t hash, uint32_t now, bool *own)
{
	struct offer *set = &h.offers[offer_pos(hash)], *old = set;

	for (unsigned w = 0; w < OFFER_WAYS; w++) {
		if (set[w].hash == hash) {
			*own = true;
			return &set[w];
		}
		if (old->hash && (!set[w].hash || now - set[w].at > now - old->at))
			old = &set[w];
	}
	*own = false;
	return old;
}

/*
 * The offers table is sized to the group: 64 KiB at first; when a quarter
 * of its ways are used it is made again without the stale offers, twice
 * as large if more than an eighth are fresh. A set of eight ways at a
 * quarter full overflows rarely (Poisson(2) above 8: 2e-4), and an offer
 * evicted by an overflow is a page published apart from its neighbours
 * (above). A fixed 2^18 was resident in the helper of any group, however
 * small (6 MiB: outside the members' Pss, and dedup-bench counts it
 * against the group's saving as it counts KSM's slab against KSM's), and
 * a table that starts small must grow before it evicts: at 4,096 ways
 * for 8,192 offers most were evicted. No memory for the new one keeps the
 * old one as it is.
 */
static void offers_rebuild(uint32_t now)
{
	size_t ocap = h.offers_cap, fresh = 0, ncap = ocap;
	struct offer *old = h.offers;

	for (size_t i = 0; i < ocap; i++)
		fresh += old[i].hash && now - old[i].at < OFFER_MS;
	if (fresh > ocap / 8 && ncap < OFFERS_MAX)
		ncap *= 2;
	struct offer *n = calloc(ncap, sizeof(*n));
	if (!n)
		return;
	h.offers = n;
	h.offers_cap = ncap;
	h.offers_used = 0;
	for (size_t i = 0; i < ocap; i++) {
		bool own;
		if (!old[i].hash || now - old[i].at >= OFFER_MS)
			continue;
		struct offer *o = offer_way(old[i].hash, now, &own);
		h.offers_used += !o->hash;
		*o = old[i];
	}
	free(old);
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n, size);
	if (!p) {
		logmsg("out of memory");
		exit(1);
	}
	return p;
}

/* ---- the index: hash -> (segment, page) ---- */

static size_t idx_pos(uint64_t hash)
{
	return (size_t)(hash * 0x9e3779b97f4a7c15ULL >> 20) & (h.idx_cap - 1);
}

static struct slot *idx_find(uint64_t hash)
{
	if (!h.idx_cap)
		return NULL;
	for (size_t i = idx_pos(hash);; i = (i + 1) & (h.idx_cap - 1)) {
		if (h.idx[i].hash == hash)
			return &h.idx[i];
		if (!h.idx[i].hash)
			return NULL;
	}
}

static void idx_put(uint64_t hash, struct seg *s, uint32_t page)
{
	size_t i = idx_pos(hash);

	while (h.idx[i].hash)
		i = (i + 1) & (h.idx_cap - 1);
	h.idx[i] = (struct slot){ hash, s, page };
	h.idx_n++;
}

static void idx_grow(void)
{
	struct slot *old = h.idx;
	size_t cap = h.idx_cap;

	h.idx_cap = cap ? cap * 2 : 4096;
	h.idx = xcalloc(h.idx_cap, sizeof(*h.idx));
	h.idx_n = 0;
	for (size_t i = 0; i < cap; i++)
		if (old[i].hash)
			idx_put(old[i].hash, old[i].seg, old[i].page);
	free(old);
}

/* Index page of s unless its hash is indexed already: the first segment
 * keeps it, unless nobody holds that one any more (it goes when its grace
 * ends). A page left out is counted as shadowed, to be indexed when the
 * other goes (reindex). */
static void idx_add(uint64_t hash, struct seg *s, uint32_t page)
{
	struct slot *e = idx_find(hash);

	if (e) {
		if (e->seg->holders || e->seg == s) {
			s->shadowed++;
		} else {
			e->seg->shadowed++;
			e->seg = s;
			e->page = page;
		}
		return;
	}
	if ((h.idx_n + 1) * 2 > h.idx_cap)
		idx_grow();
	idx_put(hash, s, page);
}

/* After segments went: index the shadowed pages whose hash is free now,
 * so that content another segment still has stays findable. Only walks
 * segments with shadowed pages (two members publishing one content). */
static void reindex(void)
{
	for (size_t i = 0; i < h.nsegs; i++) {
		struct seg *t = h.segs[i];
		for (uint32_t p = 0; t->shadowed && p < t->npages; p++)
			if (!idx_find(t->hashes[p])) {
				t->shadowed--;
				idx_add(t->hashes[p], t, p);
			}
	}
}

/* Remove the entry of slot e, shifting later entries of its probe run
 * back (no tombstones). */
static void idx_del(struct slot *e)
{
	size_t i = (size_t)(e - h.idx), j = i;

	h.idx[i].hash = 0;
	h.idx_n--;
	for (;;) {
		j = (j + 1) & (h.idx_cap - 1);
		if (!h.idx[j].hash)
			return;
		size_t k = idx_pos(h.idx[j].hash);
		/* j's entry may move to i if its home k is not in (i, j] */
		if ((i <= j) ? (i < k && k <= j) : (i < k || k <= j))
			continue;
		h.idx[i] = h.idx[j];
		h.idx[j].hash = 0;
		i = j;
	}
}

/* ---- segments and holds ---- */

static struct seg *seg_find(uint64_t id)
{
	size_t lo = 0, hi = h.nsegs;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (h.segs[mid]->id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < h.nsegs && h.segs[lo]->id == id ? h.segs[lo] : NULL;
}

static void seg_free(size_t i)
{
	struct seg *s = h.segs[i];

	for (uint32_t p = 0; p < s->npages; p++) {
		struct slot *e = idx_find(s->hashes[p]);
		if (e && e->seg == s)
			idx_del(e);
	}
	close(s->fd);
	h.pages -= s->npages;
	free(s->hashes);
	free(s);
	memmove(&h.segs[i], &h.segs[i + 1], (h.nsegs - i - 1) * sizeof(*h.segs));
	h.nsegs--;
}

/* Close the descriptors of segments whose grace ran out; the next such
 * deadline (UINT64_MAX: none). A walk over the segments only when a grace
 * ran out, not at every message. */
static uint64_t sweep(uint64_t now)
{
	uint64_t next = UINT64_MAX;

	bool freed = false;

	if (now < h.next_free)
		return h.next_free;
	for (size_t i = 0; i < h.nsegs;) {
		struct seg *s = h.segs[i];
		if (!s->holders && s->free_at <= now) {
			seg_free(i);
			freed = true;
			continue;
		}
		if (!s->holders && s->free_at < next)
			next = s->free_at;
		i++;
	}
	if (freed)
		reindex();
	h.next_free = next;
	return next;
}

/* Where id is or would go in c's sorted holds. */
static size_t hold_pos(const struct conn *c, uint64_t id)
{
	size_t lo = 0, hi = c->nholds;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (c->holds[mid] < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static void hold(struct conn *c, struct seg *s)
{
	size_t i = hold_pos(c, s->id);

	if (i < c->nholds && c->holds[i] == s->id)
		return;
	if (c->nholds == c->cap) {
		c->cap = c->cap ? c->cap * 2 : 64;
		c->holds = realloc(c->holds, c->cap * sizeof(*c->holds));
		if (!c->holds) {
			logmsg("out of memory");
			exit(1);
		}
	}
	memmove(&c->holds[i + 1], &c->holds[i], (c->nholds - i) * sizeof(*c->holds));
	c->holds[i] = s->id;
	c->nholds++;
	s->holders++;
	h.holds++;
}

static void unhold_seg(struct seg *s, uint64_t now)
{
	h.holds--;
	if (--s->holders == 0) {
		s->free_at = now + h.grace_ns;
		if (s->free_at < h.next_free)
			h.next_free = s->free_at;
	}
}

static void release(struct conn *c, const uint64_t *ids, size_t n)
{
	uint64_t now = now_ns();

	for (size_t k = 0; k < n; k++) {
		size_t i = hold_pos(c, ids[k]);
		if (i >= c->nholds || c->holds[i] != ids[k])
			continue;   /* not held (twice released): nothing to do */
		memmove(&c->holds[i], &c->holds[i + 1], (c->nholds - i - 1) * sizeof(*c->holds));
		c->nholds--;
		struct seg *s = seg_find(ids[k]);
		if (s)
			unhold_seg(s, now);
	}
}

static void conn_drop(size_t i, const char *why)
{
	struct conn *c = h.conns[i];
	uint64_t now = now_ns();

	if (why)
		logmsg("connection %llu (pid %d): %s; dropped", (unsigned long long)c->id,
		       (int)c->pid, why);
	for (size_t k = 0; k < c->nholds; k++) {
		struct seg *s = seg_find(c->holds[k]);
		if (s)
			unhold_seg(s, now);
	}
	h.observers -= c->observer;
	h.members -= c->hello && !c->observer;
	close(c->fd);
	if (c->pidfd >= 0)
		close(c->pidfd);
	free(c->holds);
	bool member = c->hello && !c->observer;
	free(c);
	h.conns[i] = h.conns[--h.nconns];
	if (member)
		die_at(DIE_MEMBER_GONE);
}

/* ---- replies ---- */

/* Send without waiting; false: the member does not read, drop it. */
static bool reply(struct conn *c, const void *msg, size_t len, const int *fds, size_t nfds)
{
	union dd_share_cmsg cb;
	struct iovec iov = { (void *)msg, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t r;

	dd_share_put_fds(&mh, &cb, fds, nfds);
	do
		r = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
	while (r < 0 && errno == EINTR);
	return r == (ssize_t)len;
}

static bool reply_error(struct conn *c, int code)
{
	struct dd_share_error m = { .code = code };

	dd_share_hdr_init(&m.h, DD_SHARE_ERROR, 0);
	return reply(c, &m, sizeof(m), NULL, 0);
}

/* ---- requests ---- */

static bool do_lookup(struct conn *c, const uint64_t *hashes, uint32_t n)
{
	static union {
		struct dd_share_answer a;
		char buf[DD_SHARE_ANSWER_MAX];
	} m;
	struct dd_share_seg tab[DD_SHARE_MAX_FDS];
	struct dd_share_entry ent[DD_GROUP_MAX_LOOKUP];
	struct seg *named[DD_SHARE_MAX_FDS];
	int fds[DD_SHARE_MAX_FDS];
	uint32_t ns = 0;
	uint64_t tag = ++h.lookups;
	uint32_t now_ms = (uint32_t)(now_ns() / 1000000), me = (uint32_t)c->id & ~PUBLISHING;

	die_at(DIE_LOOKUP_RECEIVED);
	memset(ent, 0, n * sizeof(*ent));
	if (!h.offers) {
		h.offers = xcalloc(OFFERS_MIN, sizeof(*h.offers));
		h.offers_cap = OFFERS_MIN;
	}
	for (uint32_t i = 0; i < n; i++) {
		uint64_t x = hashes[i];
		struct slot *e = idx_find(x);
		if (e) {
			struct seg *s = e->seg;
			if (s->tag != tag) {
				if (ns == DD_SHARE_MAX_FDS)
					continue;   /* SCM_MAX_FD: the rest is NONE */
				s->tag = tag;
				s->tag_index = ns;
				tab[ns] = (struct dd_share_seg){ .id = s->id, .npages = s->npages };
				named[ns] = s;
				fds[ns++] = s->fd;
			}
			ent[i] = (struct dd_share_entry){ .kind = DD_GROUP_FOUND,
							  .seg = s->tag_index, .page = e->page };
			continue;
		}
		/* unstable: a fresh offer by another member makes this SEEN.
		 * Sets of OFFER_WAYS ways, and room for a few heaps: a member of
		 * 256 MiB offers 65,536 checksums in one pass, and with 4,096
		 * slots, one way, they evicted each other before the next member
		 * asked (4 x 256 MiB merged 12% in 2 minutes). With 2^18 slots in
		 * sets of two, 65,536 checksums still overflowed a few percent
		 * of the sets: each offer evicted that way was NONE to the next
		 * member, asked about again passes later and published alone,
		 * into another segment than its neighbours' - 4 x 256 MiB ended
		 * with some 10,000 mappings a member, runs of one to ten pages
		 * (share_workers counts them). In sets of eight, in a table
		 * at most a quarter full (offers_rebuild), an overflow is rare.
		 * The oldest of the set goes. */
		bool own;
		struct offer *o = offer_way(x, now_ms, &own);
		if (!own) {   /* a new offer, in place of a free or the oldest */
			if (!o->hash && ++h.offers_used > h.offers_cap / 4) {
				offers_rebuild(now_ms);
				o = offer_way(x, now_ms, &own);
				h.offers_used += !o->hash;
			}
			*o = (struct offer){ x, me, now_ms };
			continue;
		}
		/* A SEEN makes the asker the content's publisher: the offer
		 * stays, marked, so that for PUBLISH_MS (its segment comes
		 * within the member's PUB_WAIT_NS, scan.c) the others get NONE
		 * and find the segment at their next ask. It used to be dropped:
		 * of four members asking in step, the third offered again and the
		 * fourth published the same pages a second time (4 x 256 MiB kept
		 * 318 MiB of segments for 256 MiB of content). A publisher that
		 * never publishes (it died, its copy changed) leaves an offer that
		 * the next asker after PUBLISH_MS is SEEN on. */
		if ((o->conn & PUBLISHING) && now_ms - o->at < PUBLISH_MS) {
			continue;   /* NONE: it is being published */
		} else if ((o->conn & ~PUBLISHING) != me && now_ms - o->at < OFFER_MS) {
			ent[i].kind = DD_GROUP_SEEN;
			*o = (struct offer){ x, me | PUBLISHING, now_ms };
		} else {
			*o = (struct offer){ x, me, now_ms };
		}
	}
	/* the holds first: nothing can free a segment between here and the
	 * member's mapping it (one thread) */
	for (uint32_t k = 0; k < ns; k++)
		hold(c, named[k]);
	dd_share_hdr_init(&m.a.h, DD_SHARE_ANSWER, n);
	m.a.nsegs = ns;
	m.a.reserved = 0;
	memcpy(&m.a + 1, tab, ns * sizeof(*tab));
	memcpy((char *)(&m.a + 1) + ns * sizeof(*tab), ent, n * sizeof(*ent));
	return reply(c, &m, dd_share_msg_len(DD_SHARE_ANSWER, n, ns), fds, ns);
}

/* Check a published segment; 0 or a positive errno for the ERROR. */
static int check_segment(int fd, const uint64_t *hashes, uint32_t n)
{
	static union {
		char page[DD_PAGE];
		uint64_t align;
	} b;
	int np = dd_share_segment_check(fd, DD_PAGE);

	if (np < 0)
		return -np;
	if ((uint32_t)np != n)
		return EINVAL;
	for (uint32_t p = 0; p < n; p++) {
		size_t done = 0;
		while (done < DD_PAGE) {
			ssize_t r = pread(fd, b.page + done, DD_PAGE - done,
					  (off_t)((size_t)p * DD_PAGE + done));
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0)
				return r < 0 ? errno : EIO;
			done += (size_t)r;
		}
		if (dd_hash_content(b.page) != hashes[p])
			return EBADMSG;
	}
	return 0;
}

/* Room for another segment's descriptor, keeping FD_RESERVE for
 * connections (each has a socket and a pidfd)? Says so once when not. */
static bool fd_room(void)
{
	bool room = 4 + h.nsegs + 2 * h.nconns + FD_RESERVE < h.fd_limit;

	if (!room && !h.full)
		logmsg("store full: %zu segments use the descriptors RLIMIT_NOFILE (%llu) allows; "
		       "publications refused until some are released", h.nsegs,
		       (unsigned long long)h.fd_limit);
	h.full = !room;
	return room;
}

static bool do_publish(struct conn *c, const uint64_t *hashes, uint32_t n, int fd)
{
	die_at(DIE_PUBLISH_RECEIVED);
	if (!fd_room()) {
		close(fd);
		return reply_error(c, EMFILE);
	}
	int err = check_segment(fd, hashes, n);

	if (err) {
		close(fd);
		logmsg("connection %llu (pid %d): segment refused: %s", (unsigned long long)c->id,
		       (int)c->pid, strerror(err));
		return reply_error(c, err);
	}
	struct seg *s = xcalloc(1, sizeof(*s));
	s->id = h.next_id++;
	s->fd = fd;
	s->npages = n;
	s->hashes = xcalloc(n, sizeof(*s->hashes));
	memcpy(s->hashes, hashes, n * sizeof(*hashes));
	if (h.nsegs == h.segcap) {
		h.segcap = h.segcap ? h.segcap * 2 : 64;
		h.segs = realloc(h.segs, h.segcap * sizeof(*h.segs));
		if (!h.segs) {
			logmsg("out of memory");
			exit(1);
		}
	}
	h.segs[h.nsegs++] = s;   /* ids only grow: still sorted */
	h.pages += n;
	hold(c, s);   /* first: idx_add() tells held segments from others */
	for (uint32_t p = 0; p < n; p++)
		idx_add(hashes[p], s, p);

	die_at(DIE_PUBLISH_INDEXED);
	struct dd_share_id m = { .id = s->id };
	dd_share_hdr_init(&m.h, DD_SHARE_PUBLISHED, 0);
	return reply(c, &m, sizeof(m), NULL, 0);
}

/* The figures and the members' pids (observers are neither). */
static bool do_stats(struct conn *c)
{
	static union {
		struct dd_share_stats st;
		char buf[DD_SHARE_STATS_MAX];
	} m;
	uint32_t *pids = (uint32_t *)(&m.st + 1);
	uint32_t n = 0;

	for (size_t i = 0; i < h.nconns; i++)
		if (h.conns[i]->hello && !h.conns[i]->observer)
			pids[n++] = (uint32_t)h.conns[i]->pid;
	m.st.members = n;
	m.st.segments = h.nsegs;
	m.st.pages = h.pages;
	m.st.holds = h.holds;
	dd_share_hdr_init(&m.st.h, DD_SHARE_STATSREPLY, n);
	return reply(c, &m, dd_share_msg_len(DD_SHARE_STATSREPLY, n, 0), NULL, 0);
}

/* One message from connection i; false: drop it (why says why, NULL: it
 * just closed). */
static bool serve(size_t i, const char **why)
{
	static union {
		struct dd_share_hdr h;
		struct dd_share_hello hello;
		char buf[DD_SHARE_MSG_MAX + 8];   /* + 8: a longer one shows as truncated */
		uint64_t align;
	} m;
	union dd_share_cmsg cb;
	struct conn *c = h.conns[i];
	struct iovec iov = { m.buf, sizeof(m.buf) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cb.buf,
			     .msg_controllen = sizeof(cb.buf) };
	int fds[DD_SHARE_MAX_FDS];
	size_t nfds = 0;
	ssize_t len;

	*why = NULL;
	do
		len = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	while (len < 0 && errno == EINTR);
	if (len < 0)
		return errno == EAGAIN;
	bool ok = dd_share_take_fds(&mh, fds, &nfds);
	if (len == 0) {
		dd_share_close_fds(fds, nfds);
		return false;   /* the member went away */
	}
	int type = dd_share_msg_check(m.buf, (size_t)len, nfds);
	if (!ok && !nfds && (mh.msg_flags & MSG_CTRUNC) && c->hello &&
	    dd_share_msg_check(m.buf, (size_t)len, 1) == DD_SHARE_PUBLISH) {
		/* a PUBLISH whose descriptor we had no room for: the store
		 * is full, which is no fault of the member's */
		logmsg("no descriptor left for a segment (RLIMIT_NOFILE): publication refused");
		if (reply_error(c, EMFILE))
			return true;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			*why = "does not read its answers";
		return false;
	} else if (type == -EPROTONOSUPPORT && !c->hello) {
		/* a member of another libdedup: tell it in our version, so
		 * that it can say why */
		reply_error(c, EPROTONOSUPPORT);
		*why = "another protocol version";
	} else if (!ok || type < 0)
		*why = "malformed message";
	else if (!c->hello && type != DD_SHARE_HELLO)
		*why = "request before HELLO";
	else if (c->hello && type == DD_SHARE_HELLO)
		*why = "second HELLO";
	else if (c->observer && type != DD_SHARE_STATS)
		*why = "an observer's request other than STATS";
	if (*why || type != DD_SHARE_PUBLISH)
		dd_share_close_fds(fds, nfds);
	if (*why)
		return false;

	const uint64_t *arr = (const uint64_t *)(&m.h + 1);
	ok = true;
	switch (type) {
	case DD_SHARE_HELLO: {
		if (m.hello.page_size != DD_PAGE) {
			*why = "another page size";
			return false;
		}
		struct dd_share_hello w = { .page_size = DD_PAGE, .pid = (int32_t)getpid() };
		dd_share_hdr_init(&w.h, DD_SHARE_WELCOME, 0);
		c->hello = true;
		c->observer = m.hello.pid == 0;
		h.observers += c->observer;
		h.members += !c->observer;
		ok = reply(c, &w, sizeof(w), NULL, 0);
		break;
	}
	case DD_SHARE_LOOKUP:
		ok = do_lookup(c, arr, m.h.count);
		break;
	case DD_SHARE_PUBLISH:
		ok = do_publish(c, arr, m.h.count, fds[0]);
		break;
	case DD_SHARE_RELEASE:
		release(c, arr, m.h.count);
		die_at(DIE_RELEASED);
		break;
	case DD_SHARE_STATS:
		ok = do_stats(c);
		break;
	default:
		*why = "a message only the helper sends";
		return false;
	}
	/* a reply that cannot go: a member gone (quietly) or not reading */
	if (!ok && (errno == EAGAIN || errno == EWOULDBLOCK))
		*why = "does not read its answers";
	return ok;
}

/* ---- the listening socket ---- */

static void accept_one(int lfd)
{
	struct ucred uc;
	socklen_t ul = sizeof(uc);
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

	if (fd < 0) {
		if (errno == EMFILE || errno == ENFILE) {
			/* the connection waits in the backlog: do not spin on it */
			h.accept_after = now_ns() + 100 * 1000000ULL;
			logmsg("accept: %s; trying again in 100 ms", strerror(errno));
		} else if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
			logmsg("accept: %s", strerror(errno));
		return;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &ul) < 0 || uc.uid != geteuid()) {
		logmsg("connection from uid %u refused: not ours", (unsigned)uc.uid);
		close(fd);
		return;
	}
	if (h.nconns == MAX_CONNS) {
		logmsg("connection from pid %d refused: %d connections already", (int)uc.pid,
		       MAX_CONNS);
		close(fd);
		return;
	}
	struct conn *c = xcalloc(1, sizeof(*c));
	c->fd = fd;
	c->id = h.next_conn++;
	c->pid = uc.pid;
	/* the kernel's pidfd of the connecting process (6.5+), else one by
	 * its pid (a pid reused meanwhile only delays the drop to EOF) */
	socklen_t pl = sizeof(c->pidfd);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &c->pidfd, &pl) < 0)
		c->pidfd = uc.pid > 0 ? (int)syscall(SYS_pidfd_open, uc.pid, 0) : -1;
	if (c->pidfd >= 0)
		fcntl(c->pidfd, F_SETFD, FD_CLOEXEC);
	h.conns[h.nconns++] = c;
}

/* Bind NAME.sock in dir under the group's lock. The listening socket, 0 if
 * another helper already serves the name, or -1 (logged). *ino: the
 * socket file's inode, to unlink only our own at exit. */
static int bind_socket(const char *dir, struct sockaddr_un *sa, ino_t *ino)
{
	char lock[PATH_MAX];
	struct stat st;
	int lk, s, n;

	n = snprintf(sa->sun_path, sizeof(sa->sun_path), "%s/%s.sock", dir, group);
	if (n < 0 || (size_t)n >= sizeof(sa->sun_path)) {
		logmsg("%s/%s.sock: path too long", dir, group);
		return -1;
	}
	snprintf(lock, sizeof(lock), "%s/%s.lock", dir, group);
	lk = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (lk < 0 || flock(lk, LOCK_EX) < 0) {
		logmsg("%s: %s", lock, strerror(errno));
		return -1;
	}
	s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s < 0)
		goto fail;
	/* a helper already listening: nothing to do (it sees us connect and
	 * close, which is nothing to it either) */
	if (connect(s, (struct sockaddr *)sa, sizeof(*sa)) == 0) {
		close(s);
		close(lk);
		return 0;
	}
	close(s);
	if (unlink(sa->sun_path) < 0 && errno != ENOENT)   /* a stale socket */
		goto fail;
	s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s < 0 || bind(s, (struct sockaddr *)sa, sizeof(*sa)) < 0 ||
	    chmod(sa->sun_path, 0600) < 0 || listen(s, 128) < 0 || lstat(sa->sun_path, &st) < 0)
		goto fail;
	*ino = st.st_ino;
	close(lk);
	return s;
fail:
	logmsg("%s: %s", sa->sun_path, strerror(errno));
	close(lk);
	return -1;
}

/* A listening socket from systemd (LISTEN_FDS=1, LISTEN_PID ours, fd 3):
 * 3, or -1 when there is none. */
static int systemd_socket(void)
{
	const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
	int type = 0, acc = 0;
	socklen_t l = sizeof(int);

	if (!pid || !fds || atol(pid) != (long)getpid() || strcmp(fds, "1"))
		return -1;
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	if (getsockopt(3, SOL_SOCKET, SO_TYPE, &type, &l) < 0 || type != SOCK_SEQPACKET ||
	    getsockopt(3, SOL_SOCKET, SO_ACCEPTCONN, &acc, &l) < 0 || !acc) {
		logmsg("LISTEN_FDS: descriptor 3 is not a listening SOCK_SEQPACKET socket");
		exit(1);
	}
	fcntl(3, F_SETFD, FD_CLOEXEC);
	fcntl(3, F_SETFL, fcntl(3, F_GETFL) | O_NONBLOCK);
	return 3;
}

/* Idle: stop being findable (under the lock, and only our own socket
 * file), then serve what connected meanwhile. */
static void unlisten(const char *dir, const struct sockaddr_un *sa, ino_t ino)
{
	char lock[PATH_MAX];
	struct stat st;

	snprintf(lock, sizeof(lock), "%s/%s.lock", dir, group);
	int lk = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (lk >= 0)
		flock(lk, LOCK_EX);
	if (lstat(sa->sun_path, &st) == 0 && st.st_ino == ino)
		unlink(sa->sun_path);
	if (lk >= 0)
		close(lk);
}

/* ---- main ---- */

/* Serve until idle: poll() over the listening socket (while listening),
 * the connections and their members' pidfds. The exit status. */
static int run(int lfd, const char *dir, const struct sockaddr_un *sa, ino_t ino)
{
	uint64_t idle_since = now_ns();
	bool listening = true;
	static struct pollfd pfd[2 * MAX_CONNS + 1];   /* listener, connections, pidfds */
	for (;;) {
		uint64_t now = now_ns(), next = sweep(now);
		/* Only members keep us: dedup-stat --watch connects every
		 * second (and says HELLO only after its accept). Once we stopped
		 * listening, whoever came meanwhile is served, observers
		 * excepted. */
		if (h.members)
			idle_since = now;
		else if (!listening) {
			if (h.nconns == h.observers)
				break;
		} else if (now - idle_since >= h.idle_ns) {
			/* stop being findable, then serve who came meanwhile */
			if (ino)
				unlisten(dir, sa, ino);
			else
				break;   /* systemd's socket: systemd listens on */
			listening = false;
			for (;;) {
				size_t before = h.nconns;
				accept_one(lfd);
				if (h.nconns == before)
					break;
			}
			close(lfd);
			if (h.nconns == h.observers)
				break;
			continue;
		} else if (idle_since + h.idle_ns < next) {
			next = idle_since + h.idle_ns;
		}
		if (listening && now < h.accept_after && h.accept_after < next)
			next = h.accept_after;   /* no room for a connection: not before */
		int timeout = -1;
		if (next != UINT64_MAX)
			timeout = next <= now ? 0 : (int)((next - now) / 1000000 + 1);
		size_t base = listening ? 1 : 0;
		if (listening)
			pfd[0] = (struct pollfd){ .fd = now < h.accept_after ? -1 : lfd,
						  .events = POLLIN };
		size_t nc = h.nconns;
		for (size_t i = 0; i < nc; i++) {
			pfd[base + i] = (struct pollfd){ .fd = h.conns[i]->fd, .events = POLLIN };
			pfd[base + nc + i] = (struct pollfd){ .fd = h.conns[i]->pidfd,
							      .events = POLLIN };
		}
		size_t np = base + 2 * nc;
		if (poll(pfd, np, timeout) < 0) {
			if (errno == EINTR)
				continue;
			logmsg("poll: %s", strerror(errno));
			return 1;
		}
		/* connections first, from the last: a drop moves the last one
		 * into the dropped one's place */
		for (size_t i = nc; i-- > 0;) {
			short ev = pfd[base + i].revents;
			const char *why = NULL;
			if (pfd[base + nc + i].revents)   /* its process is gone */
				conn_drop(i, NULL);
			else if (ev && ((ev & POLLIN) ? !serve(i, &why) : true))
				conn_drop(i, why);
		}
		if (listening && (pfd[0].revents & POLLIN))
			accept_one(lfd);
	}
	return 0;
}


static void help(void)
{
	printf(
"NAME\n"
"    dedup-share - the helper process of a libdedup sharing group\n"
"\n"
"SYNOPSIS\n"
"    dedup-share --name NAME --dir DIR [--idle-exit SECONDS] [--grace MS]\n"
"                [--background]\n"
"    dedup-share --help\n"
"\n"
"DESCRIPTION\n"
"    Processes of one user that join the sharing group NAME (dedup-run\n"
"    --share NAME, DEDUP_SHARE=NAME) merge their duplicate pages against one\n"
"    store: sealed memory files (memfds) that members publish. dedup-share\n"
"    keeps the group's index (page hash -> file, page) and a descriptor of\n"
"    each file, and hands descriptors to members that look a hash up. It\n"
"    never reads a member's memory and never writes a page; it reads each\n"
"    published file once to check its hashes.\n"
"\n"
"    libdedup starts it on demand (the first member of a group spawns it,\n"
"    under the group's lock), so there is normally no need to run it by\n"
"    hand. It listens on DIR/NAME.sock, a SOCK_SEQPACKET unix socket, mode\n"
"    0600, in DIR, which must be a directory of the user's, mode 0700\n"
"    ($XDG_RUNTIME_DIR/libdedup/share or /tmp/libdedup-UID/share). Only\n"
"    processes of the same uid are served (SO_PEERCRED). If another helper\n"
"    already serves NAME, it exits at once with status 0.\n"
"\n"
"    A published file stays findable while a member holds it (from the\n"
"    lookup or publication that named it until the member releases it or\n"
"    its connection closes) and for --grace after that; then the helper\n"
"    closes its descriptor, and the kernel frees the pages when the last\n"
"    process mapping them unmaps them. A member that sends anything\n"
"    malformed is disconnected (one line on standard error); the others\n"
"    are not affected.\n"
"\n"
"    Under systemd, a socket unit may pass the listening socket\n"
"    (LISTEN_FDS=1, LISTEN_PID, descriptor 3); --dir is then optional.\n"
"\n"
"OPTIONS\n"
"    --name NAME          the group: 1 to 64 of A-Z a-z 0-9 _ . -, not\n"
"                         starting with '.'\n"
"    --dir DIR            the directory of the group's socket and lock\n"
"    --idle-exit SECONDS  exit after this long without any member connected\n"
"                         (30); dedup-stat's queries do not count\n"
"    --grace MS           keep a segment nobody holds this long (2000)\n"
"    --background         fork; the process started exits at once (what\n"
"                         libdedup uses, so that it need not wait for us);\n"
"                         messages then go to DIR/NAME.log, not to the\n"
"                         stderr of the member that started the helper\n"
"    --help               this text\n"
"\n"
"    The helper detaches from its terminal session (setsid), closes every\n"
"    inherited descriptor but standard error, and logs there.\n"
"\n"
"EXIT STATUS\n"
"    0 when idle (or another helper serves NAME), 1 on an error, 2 on a\n"
"    usage error.\n"
"\n"
"SEE ALSO\n"
"    dedup-run(1), dedup-stat(1), docs/sharing.md\n");
}

static long number(const char *s, const char *opt, long lo, long hi)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi) {
		fprintf(stderr, "%s: %s: %s is not a number in %ld..%ld\n", prog, opt, s, lo, hi);
		exit(2);
	}
	return v;
}

/*
 * Started in the background by a member, the helper must not keep that
 * member's stderr: a pipeline (`dedup-run --share x -- cmd | less`, a test
 * runner reading a program's output) would not end until the helper does,
 * idle-exit seconds after the last member. Its lines go to DIR/NAME.log
 * (0600, in the group's private directory), or nowhere. Under systemd
 * (not --background) stderr is the journal and stays.
 */
static void setup_process(bool background, bool keep3, const char *dir)
{
	sigset_t none;
	struct rlimit rl;
	int null;

	if (background) {
		pid_t pid = fork();
		if (pid < 0) {
			perror("dedup-share: fork");
			exit(1);
		}
		if (pid)
			_exit(0);
	}
	setsid();
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGPIPE, SIG_IGN);
	/* nothing of the member that started us (it may be any program) */
	close_range(keep3 ? 4 : 3, ~0U, 0);
	null = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null >= 0) {
		dup2(null, STDIN_FILENO);
		dup2(null, STDOUT_FILENO);
		if (background) {
			char path[PATH_MAX];
			int log = -1;
			if (dir && snprintf(path, sizeof(path), "%s/%s.log", dir, group) < (int)sizeof(path))
				log = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
			dup2(log >= 0 ? log : null, STDERR_FILENO);
			if (log > STDERR_FILENO)
				close(log);
		}
		if (null > STDERR_FILENO)
			close(null);
	}
	/* one descriptor per segment */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	h.fd_limit = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? (uint64_t)rl.rlim_cur : 1024;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "name", required_argument, NULL, 'n' },
		{ "dir", required_argument, NULL, 'd' },
		{ "idle-exit", required_argument, NULL, 'i' },
		{ "grace", required_argument, NULL, 'g' },
		{ "background", no_argument, NULL, 'b' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	const char *dir = NULL;
	bool background = false;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	ino_t ino = 0;
	int c, lfd;

	const char *td = getenv("DEDUP_SHARE_TEST_DIE");
	test_die = td ? strtol(td, NULL, 10) : 0;
	h.idle_ns = 30ULL * 1000000000;
	h.grace_ns = 2000ULL * 1000000;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'n': group = optarg; break;
		case 'd': dir = optarg; break;
		case 'i': h.idle_ns = (uint64_t)number(optarg, "--idle-exit", 0, 86400 * 365) *
				      1000000000ULL; break;
		case 'g': h.grace_ns = (uint64_t)number(optarg, "--grace", 0, 86400000) *
				       1000000ULL; break;
		case 'b': background = true; break;
		case 'h': help(); return 0;
		default:
			fprintf(stderr, "Try '%s --help' for more information.\n", prog);
			return 2;
		}
	}
	if (optind != argc || !dd_share_name_ok(group)) {
		fprintf(stderr, "%s: %s\nTry '%s --help' for more information.\n", prog,
			optind != argc ? "unexpected argument" : "--name: a valid group name is needed",
			prog);
		return 2;
	}
	if (sysconf(_SC_PAGESIZE) != (long)DD_PAGE) {
		fprintf(stderr, "%s: page size %ld, built for %zu\n", prog, sysconf(_SC_PAGESIZE),
			DD_PAGE);
		return 1;
	}
	lfd = systemd_socket();
	if (lfd < 0 && !dir) {
		fprintf(stderr, "%s: --dir is needed\nTry '%s --help' for more information.\n",
			prog, prog);
		return 2;
	}
	if (lfd < 0 && !dd_pub_dir_usable(dir, 0700, true)) {
		fprintf(stderr, "%s: %s: not a directory of ours closed to others (0700)\n", prog,
			dir);
		return 1;
	}
	setup_process(background, lfd == 3, dir);
	if (lfd < 0) {
		lfd = bind_socket(dir, &sa, &ino);
		if (lfd <= 0)
			return lfd < 0 ? 1 : 0;
	}

	return run(lfd, dir, &sa, ino);
}
