/* SPDX-License-Identifier: MIT */
/*
 * index.c - the two indexes of the merge, as in ksm.c:
 *
 *  - stable: hash -> canonical slot, for pages that are already shared.
 *    Lives as long as the slot (store.c removes entries it releases).
 *  - unstable: hash -> address of a candidate seen in this pass that did not
 *    match a stable page. A second candidate with the same hash (and, checked
 *    by the scanner, the same content) makes a new stable page. The unstable
 *    index is not trusted across passes: every pass starts it afresh (a
 *    generation number makes that O(1)), because the pages it points to are
 *    not protected and may have changed.
 *  - aged: hash -> address of the pages the smart scan skips (scan.c), by
 *    the checksum of the visit that last read them, kept across passes and
 *    changed only when a visit finds a page aged or young again: a
 *    candidate equal to a skipped page finds it here (below, "aged").
 *
 * A hash is never trusted for merging: merge.c compares the full page.
 * Both are open-addressing tables with linear probing, in dd_vm memory.
 * Hash value 0 is never stored (dd_hash_page() maps it to 1).
 *
 * Both are sized to what they hold, in both directions: they double when
 * three quarters full, and shrink back (IX_MIN entries at least) when at
 * most an eighth is used - the stable one as slots go, the unstable one at
 * the end of a pass, to what that pass put in it. A settled process
 * whose pages are all merged offers no candidate: before, it kept the
 * largest table any pass had needed (3 MiB of unstable index for 256 MiB
 * of heap, in the process's Pss, for nothing).
 *
 * Locking: eng.lock held by every caller.
 */
#include <string.h>

#include "internal.h"

struct stable_ent {
	uint64_t hash;
	uint32_t slot;
	uint16_t used;      /* 0 empty, 1 live, 2 dead */
	uint16_t verify;    /* a lookup of this hash must compare content */
};
struct unstable_ent { uint64_t hash; uintptr_t addr; uint64_t gen; };

static struct {
	struct stable_ent *s;
	size_t s_cap, s_live, s_dead;
	struct unstable_ent *u;
	size_t u_cap, u_live;
	uint64_t gen;
} ix;

static inline size_t mix(uint64_t h, size_t cap)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return (size_t)h & (cap - 1);
}

#define IX_MIN 1024   /* entries: 16 or 24 KiB */

static void aged_free(void);

int dd_index_init(void)
{
	memset(&ix, 0, sizeof(ix));
	dd_aged_reset();
	ix.s_cap = IX_MIN;
	ix.u_cap = IX_MIN;
	ix.s = dd_vm_alloc(ix.s_cap * sizeof(*ix.s));
	ix.u = dd_vm_alloc(ix.u_cap * sizeof(*ix.u));
	ix.gen = 1;
	return ix.s && ix.u ? 0 : -ENOMEM;
}

void dd_index_fini(void)
{
	aged_free();
	dd_vm_free(ix.s, ix.s_cap * sizeof(*ix.s));
	dd_vm_free(ix.u, ix.u_cap * sizeof(*ix.u));
	memset(&ix, 0, sizeof(ix));
}

static size_t aged_bytes(void);

size_t dd_index_bytes(void)
{
	return ix.s_cap * sizeof(*ix.s) + ix.u_cap * sizeof(*ix.u) + aged_bytes();
}

/* ---- stable ----------------------------------------------------------- */

/*
 * The canonical slot for @page among those with @hash. A 64-bit hash match
 * routes the page to its slot without a comparison: merge.c compares the
 * whole page under protection anyway, and that comparison is the one that
 * counts. But a hash must never hide an equal page: when a slot turns out
 * to differ (merge.c calls dd_stable_verify_hash), or when several slots
 * share the hash, every lookup of that hash compares contents, up to
 * DD_MAX_PROBE_CMP of them. *collided is set when a slot had the hash but
 * other content.
 */
uint32_t dd_stable_lookup(uint64_t hash, const void *page, bool *collided)
{
	int cmps = 0;
	uint32_t first = 0;
	bool verify = false;

	for (size_t i = mix(hash, ix.s_cap);; i = (i + 1) & (ix.s_cap - 1)) {
		struct stable_ent *e = &ix.s[i];
		if (!e->used)
			break;
		if (e->used != 1 || e->hash != hash)
			continue;
		if (!first && !e->verify && !verify) {
			first = e->slot;   /* the common case: one slot, trusted hash */
			continue;
		}
		verify = true;
		if (first) {       /* a second slot: compare the first one too */
			if (memcmp(page, dd_store_page(first - 1), DD_PAGE) == 0)
				return first;
			*collided = true;
			first = 0;
			cmps++;
		}
		if (memcmp(page, dd_store_page(e->slot - 1), DD_PAGE) == 0)
			return e->slot;
		*collided = true;
		if (++cmps >= DD_MAX_PROBE_CMP)
			return 0;
	}
	return first;
}

/* Content behind @hash differed from a slot: compare from now on. */
void dd_stable_verify_hash(uint64_t hash)
{
	for (size_t i = mix(hash, ix.s_cap);; i = (i + 1) & (ix.s_cap - 1)) {
		struct stable_ent *e = &ix.s[i];
		if (!e->used)
			return;
		if (e->hash == hash)
			e->verify = 1;
	}
}

static int stable_rehash(size_t ncap)
{
	struct stable_ent *old = ix.s, *n = dd_vm_alloc(ncap * sizeof(*n));
	size_t ocap = ix.s_cap;

	if (!n)
		return -ENOMEM;
	for (size_t i = 0; i < ocap; i++) {
		if (old[i].used != 1)
			continue;
		size_t j = mix(old[i].hash, ncap);
		while (n[j].used)
			j = (j + 1) & (ncap - 1);
		n[j] = old[i];
	}
	ix.s = n;
	ix.s_cap = ncap;
	ix.s_dead = 0;
	dd_vm_free(old, ocap * sizeof(*old));
	return 0;
}

int dd_stable_insert(uint64_t hash, uint32_t slot)
{
	dd_assert_held(&eng.lock);
	if ((ix.s_live + ix.s_dead + 1) * 4 > ix.s_cap * 3 &&
	    stable_rehash(ix.s_live * 4 > ix.s_cap ? ix.s_cap * 2 : ix.s_cap) < 0)
		return -ENOMEM;
	size_t i = mix(hash, ix.s_cap);
	while (ix.s[i].used == 1)
		i = (i + 1) & (ix.s_cap - 1);
	if (ix.s[i].used == 2)
		ix.s_dead--;
	ix.s[i] = (struct stable_ent){ hash, slot, 1, 0 };
	ix.s_live++;
	return 0;
}

void dd_stable_remove(uint64_t hash, uint32_t slot)
{
	dd_assert_held(&eng.lock);
	for (size_t i = mix(hash, ix.s_cap);; i = (i + 1) & (ix.s_cap - 1)) {
		struct stable_ent *e = &ix.s[i];
		if (!e->used)
			return;
		if (e->used == 1 && e->hash == hash && e->slot == slot) {
			e->used = 2;
			ix.s_live--;
			ix.s_dead++;
			break;
		}
	}
	/* mostly empty: half the size (it holds at most a quarter then);
	 * no memory for the smaller one leaves it as it is */
	if (ix.s_cap > IX_MIN && ix.s_live * 8 <= ix.s_cap)
		stable_rehash(ix.s_cap / 2);
}

/* ---- unstable --------------------------------------------------------- */

void dd_unstable_reset(void)
{
	dd_assert_held(&eng.lock);
	ix.gen++;
	ix.u_live = 0;
}

/*
 * At a pass's end (scan.c): a fresh table the size the pass needed (u_live
 * counts what it put in), if that is an eighth of this one or less; its
 * candidates are forgotten at the next pass's start anyway. Here and not
 * at that start, so that metadata_bytes changes only with full_passes
 * (test_stat_prometheus compares a snapshot's profit with the tool's).
 */
void dd_unstable_trim(void)
{
	dd_assert_held(&eng.lock);
	if (ix.u_cap > IX_MIN && ix.u_live * 8 <= ix.u_cap) {
		size_t ncap = IX_MIN;
		while (ncap < ix.u_live * 2)
			ncap *= 2;
		struct unstable_ent *n = dd_vm_alloc(ncap * sizeof(*n));
		if (n) {   /* zeroed: generation 0, older than any ix.gen */
			dd_vm_free(ix.u, ix.u_cap * sizeof(*ix.u));
			ix.u = n;
			ix.u_cap = ncap;
			ix.u_live = 0;
		}
	}
}

/*
 * Take (find and remove) a candidate of this pass with @hash whose content
 * equals @page right now. Candidates are not protected: the comparison only
 * says they were equal a moment ago, merge.c checks again under protection.
 */
uintptr_t dd_unstable_take(uint64_t hash, const void *page, bool *collided)
{
	dd_assert_held(&eng.lock);
	static char cmp[DD_PAGE] __attribute__((aligned(64)));   /* eng.lock */
	int cmps = 0;
	for (size_t i = mix(hash, ix.u_cap);; i = (i + 1) & (ix.u_cap - 1)) {
		struct unstable_ent *e = &ix.u[i];
		if (e->gen != ix.gen)
			return 0;
		uintptr_t a = e->addr;
		if (e->hash != hash || !a || a == (uintptr_t)page)
			continue;
		/* a is the application's page, read the safe way: in a
		 * fragile region (scan.c) it may be gone since it was seen */
		if (dd_read_page(a, cmp) && memcmp(page, cmp, DD_PAGE) == 0) {
			e->addr = 0;   /* stays as a probe-chain marker until next pass */
			return a;
		}
		*collided = true;
		if (++cmps >= DD_MAX_PROBE_CMP)
			return 0;
	}
}

static int unstable_grow(void)
{
	size_t ocap = ix.u_cap, ncap = ocap * 2;
	struct unstable_ent *old = ix.u, *n = dd_vm_alloc(ncap * sizeof(*n));

	if (!n)
		return -ENOMEM;
	for (size_t i = 0; i < ocap; i++) {
		if (old[i].gen != ix.gen || !old[i].addr)
			continue;
		size_t j = mix(old[i].hash, ncap);
		while (n[j].gen == ix.gen)
			j = (j + 1) & (ncap - 1);
		n[j] = old[i];
	}
	ix.u = n;
	ix.u_cap = ncap;
	dd_vm_free(old, ocap * sizeof(*old));
	return 0;
}

size_t dd_unstable_count(void)
{
	return ix.u_live;
}

int dd_unstable_insert(uint64_t hash, uintptr_t addr)
{
	dd_assert_held(&eng.lock);
	if ((ix.u_live + 1) * 4 > ix.u_cap * 3 && unstable_grow() < 0)
		return -ENOMEM;
	size_t i = mix(hash, ix.u_cap);
	while (ix.u[i].gen == ix.gen)
		i = (i + 1) & (ix.u_cap - 1);
	ix.u[i] = (struct unstable_ent){ hash, addr, ix.gen };
	ix.u_live++;
	return 0;
}

/* ---- aged ------------------------------------------------------------- */

/*
 * The checksums of the pages the smart scan skips (scan.c), kept across
 * passes: hash -> address, several addresses per hash allowed. A page
 * enters when a visit first finds it unchanged and unmatched (it ages)
 * and leaves when a visit finds it young again (changed, merged, copied);
 * a candidate that matches nothing else looks here, reads the aged page
 * and compares (dd_aged_take). Before, every skipped page entered the
 * unstable index at every pass instead, a random write per page per pass,
 * a quarter of a settled engine's time: this index costs what changes.
 *
 * Pages can also leave without a visit (unmapped, discarded: region.c
 * forgets their word without telling us), so an entry is only a hint: the
 * scanner's @valid callback checks the page's word still says "aged, with
 * this checksum" before it is read, and drops the entry otherwise. Such
 * stale entries are bounded by a rebuild (scan.c, dd_aged_reset and
 * re-insertion) when they outnumber the live ones.
 */
struct aged_ent { uint64_t hash; uintptr_t addr; };   /* addr 0: empty, 1: dead */
#define A_DEAD ((uintptr_t)1)

static struct {
	struct aged_ent *t;
	size_t cap, live, dead;
} ag;

static int aged_rehash(size_t ncap)
{
	struct aged_ent *old = ag.t, *n = dd_vm_alloc(ncap * sizeof(*n));
	size_t ocap = ag.cap;

	if (!n)
		return -ENOMEM;
	for (size_t i = 0; i < ocap; i++) {
		if (old[i].addr <= A_DEAD)
			continue;
		size_t j = mix(old[i].hash, ncap);
		while (n[j].addr)
			j = (j + 1) & (ncap - 1);
		n[j] = old[i];
	}
	ag.t = n;
	ag.cap = ncap;
	ag.dead = 0;
	dd_vm_free(old, ocap * sizeof(*old));
	return 0;
}

static void aged_free(void)
{
	dd_vm_free(ag.t, ag.cap * sizeof(*ag.t));
	memset(&ag, 0, sizeof(ag));
}

static size_t aged_bytes(void)
{
	return ag.cap * sizeof(*ag.t);
}

void dd_aged_reset(void)
{
	dd_vm_free(ag.t, ag.cap * sizeof(*ag.t));
	ag.cap = 1024;
	ag.live = ag.dead = 0;
	ag.t = dd_vm_alloc(ag.cap * sizeof(*ag.t));
	if (!ag.t)
		ag.cap = 0;
}

size_t dd_aged_count(void)
{
	return ag.live;
}

/* A page that aged with checksum @hash. False if there is no room (the
 * scanner then offers it to the unstable index, for this pass only). */
bool dd_aged_insert(uint64_t hash, uintptr_t addr)
{
	dd_assert_held(&eng.lock);
	if (!ag.cap)
		return false;
	if ((ag.live + ag.dead + 1) * 4 > ag.cap * 3 &&
	    aged_rehash(ag.live * 2 > ag.cap ? ag.cap * 2 : ag.cap) < 0)
		return false;
	size_t i = mix(hash, ag.cap);
	while (ag.t[i].addr > A_DEAD)
		i = (i + 1) & (ag.cap - 1);
	if (ag.t[i].addr == A_DEAD)
		ag.dead--;
	ag.t[i] = (struct aged_ent){ hash, addr };
	ag.live++;
	return true;
}

/* Fetch the slot a lookup of @hash starts at (scan.c, a page about to be
 * read: its lookup comes after the read and the hash). */
void dd_aged_prefetch(uint64_t hash)
{
	if (ag.cap)
		__builtin_prefetch(&ag.t[mix(hash, ag.cap)], 0);
}

static void aged_kill(struct aged_ent *e)
{
	e->addr = A_DEAD;
	ag.live--;
	ag.dead++;
}

/* The page at @addr, aged with @hash, is young again (or gone). */
void dd_aged_remove(uint64_t hash, uintptr_t addr)
{
	dd_assert_held(&eng.lock);
	if (!ag.cap)
		return;
	for (size_t i = mix(hash, ag.cap);; i = (i + 1) & (ag.cap - 1)) {
		struct aged_ent *e = &ag.t[i];
		if (!e->addr)
			return;
		if (e->hash == hash && e->addr == addr) {
			aged_kill(e);
			return;
		}
	}
}

/*
 * Take an aged page with @hash whose content equals @page right now, other
 * than the page at @self; 0 if none (*collided set if one had the checksum
 * but other content). @valid(addr, hash) says whether the
 * page's metadata still has it aged with that checksum (else the entry is
 * dropped, unread). As with the unstable index, equal content now is only
 * a reason to try: merge.c compares again under protection. An aged page
 * whose content moved on stays (its next visit sees that and removes it).
 */
uintptr_t dd_aged_take(uint64_t hash, const void *page, uintptr_t self,
		       bool (*valid)(uintptr_t addr, uint64_t hash), bool *collided)
{
	dd_assert_held(&eng.lock);
	static char cmp[DD_PAGE] __attribute__((aligned(64)));   /* eng.lock */
	int cmps = 0;

	if (!ag.cap)
		return 0;
	for (size_t i = mix(hash, ag.cap);; i = (i + 1) & (ag.cap - 1)) {
		struct aged_ent *e = &ag.t[i];
		if (!e->addr)
			return 0;
		if (e->addr == A_DEAD || e->hash != hash || e->addr == self)
			continue;
		uintptr_t a = e->addr;
		if (!valid(a, hash)) {
			aged_kill(e);
			continue;
		}
		/* the application's page, read the safe way: it may be gone */
		if (!dd_read_page(a, cmp)) {   /* gone (a fragile region) */
			if (++cmps >= DD_MAX_PROBE_CMP)
				return 0;
			continue;
		}
		if (memcmp(page, cmp, DD_PAGE) == 0) {
			aged_kill(e);
			return a;
		}
		/* other content: a collision if it still has the checksum, or
		 * else a page written since its last visit (not one) */
		if (dd_hash_page(cmp) == hash)
			*collided = true;
		if (++cmps >= DD_MAX_PROBE_CMP)
			return 0;
	}
}
