/* SPDX-License-Identifier: MIT */
/*
 * group.h - membership of a sharing group (group.c): the member's side of
 * the protocol with the group's helper, tools/dedup-share.c (docs/sharing.md
 * sections 10 and 13). Nothing here touches the program's memory or the
 * engine's tables: the engine (store.c, scan.c) calls these under eng.lock
 * and decides what to merge; a group only supplies sealed segments.
 *
 * A segment is a memfd named "libdedup-g:NAME", n pages, sealed with
 * F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE before anybody
 * else sees it. Every descriptor this file hands out has been checked
 * (dd_group_segment_check) and sits above the descriptor floor, close-on-
 * exec (fds.c). The caller owns it.
 *
 * Errors: any protocol or socket error makes the member leave the group
 * (one line on stderr, dd_group_active() false from then on); what is
 * merged stays merged. Functions return -errno, never block longer than
 * DD_GROUP_TIMEOUT_MS.
 */
#ifndef DEDUP_GROUP_H
#define DEDUP_GROUP_H

#include "base.h"

#define DD_GROUP_NAME_MAX 64
#define DD_GROUP_MAX_LOOKUP 256       /* hashes per lookup */
#define DD_GROUP_MAX_SEG_PAGES 4096   /* pages per segment, at most */
#define DD_GROUP_TIMEOUT_MS 2000

/* [A-Za-z0-9_.-]{1,64}, not starting with '.' */
bool dd_group_name_ok(const char *name);

/* Connect to NAME's helper (spawning dedup-share under the group's flock
 * if nobody listens), check its SO_PEERCRED uid, HELLO. 0 or -errno (one
 * line printed saying why). */
int dd_group_join(const char *name);
void dd_group_leave(void);          /* close the connection; idempotent */
bool dd_group_active(void);
void dd_group_check(void);          /* leave if the connection is no longer ours
                                       or our euid changed (once a step) */
void dd_group_atfork_child(void);   /* a fork()ed child: close the inherited
                                       connection without a word to the helper */

enum dd_group_kind { DD_GROUP_NONE = 0, DD_GROUP_FOUND = 1, DD_GROUP_SEEN = 2 };

struct dd_group_answer {
	uint8_t kind;       /* enum dd_group_kind */
	uint32_t seg;       /* FOUND: index into the segs[] the call filled */
	uint32_t page;      /* FOUND: page within that segment */
};

struct dd_group_seg {
	uint64_t id;        /* the helper's segment id (never 0) */
	int fd;             /* checked, sealed, above the floor; caller closes */
	uint32_t npages;
};

/*
 * Look up n <= DD_GROUP_MAX_LOOKUP page hashes. ans[i] answers hashes[i];
 * the segments named are returned once each in segs[] (*nsegs of them, at
 * most n), each with a fresh descriptor the caller owns. NONE: the helper
 * now remembers that this member offered the hash. SEEN: another member
 * offered it recently; the caller should publish the content. Naming a
 * segment makes the helper record a hold on it for this member.
 */
int dd_group_lookup(const uint64_t *hashes, size_t n, struct dd_group_answer *ans,
		    struct dd_group_seg *segs, size_t *nsegs);

/* A new sealed segment holding pages[0..n) (n <= DD_GROUP_MAX_SEG_PAGES),
 * written with pwrite(): a descriptor, or -errno (ENOMEM under a memcg
 * limit: skip, as dd_store_new does). */
int dd_group_segment_new(const void *const *pages, size_t n);

/* fd is a segment: a memfd, a regular file whose size is a positive
 * multiple of the page and at most DD_GROUP_MAX_SEG_PAGES pages, all four
 * seals set. Its page count, or -errno. */
int dd_group_segment_check(int fd);

/* Hand segment fd (from dd_group_segment_new) with its n page hashes to the
 * helper, which checks it, indexes it and records a hold for this member.
 * The segment's id, or -errno. fd stays the caller's. */
int64_t dd_group_publish(int fd, const uint64_t *hashes, size_t n);

/* This member maps no page of these segments any more. */
int dd_group_release(const uint64_t *ids, size_t n);

/*
 * Fault injection (DEDUP_TEST_SHARE_DIE=N, tests/share/share_inject.c):
 * the process SIGKILLs itself the first time it reaches step N, so that a
 * test can kill a member between two steps of the protocol rather than at
 * a random instant. The helper has its own (tools/dedup-share.c).
 */
enum dd_group_step {
	DD_GS_LOCKED = 1,     /* holding the group's flock, the helper not spawned */
	DD_GS_WRITTEN,        /* a segment written, not sealed */
	DD_GS_SEALED,         /* sealed, not published */
	DD_GS_PUBLISH_SENT,   /* PUBLISH sent, its answer not read */
	DD_GS_FOUND,          /* a LOOKUP answered with segments, nothing merged yet */
	DD_GS_MERGING,        /* a window into a segment: pages moved out, not replaced */
	DD_GS_RELEASE_SENT,   /* RELEASE sent */
	DD_GS_LAST = DD_GS_RELEASE_SENT
};
void dd_group_test_die(enum dd_group_step step);

#endif /* DEDUP_GROUP_H */
