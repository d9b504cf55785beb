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
 *    not protected and may have changed. Pages the scanner skips in a pass
 *    (scan.c, smart scan) enter it too, with the checksum of the pass that
 *    last read them, marked stale: a candidate equal to one of them still
 *    finds it, and a stale one whose content moved on is no hash collision.
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
#define U_STALE ((uintptr_t)1)   /* in addr: a hash from an earlier pass */

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

int dd_index_init(void)
{
	memset(&ix, 0, sizeof(ix));
	ix.s_cap = IX_MIN;
	ix.u_cap = IX_MIN;
	ix.s = dd_vm_alloc(ix.s_cap * sizeof(*ix.s));
	ix.u = dd_vm_alloc(ix.u_cap * sizeof(*ix.u));
	ix.gen = 1;
	return ix.s && ix.u ? 0 : -ENOMEM;
}

void dd_index_fini(void)
{
	dd_vm_free(ix.s, ix.s_cap * sizeof(*ix.s));
	dd_vm_free(ix.u, ix.u_cap * sizeof(*ix.u));
	memset(&ix, 0, sizeof(ix));
}

size_t dd_index_bytes(void)
{
	return ix.s_cap * sizeof(*ix.s) + ix.u_cap * sizeof(*ix.u);
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

/* A live slot with @hash: a page skipped with that checksum could match. */
bool dd_stable_has(uint64_t hash)
{
	for (size_t i = mix(hash, ix.s_cap);; i = (i + 1) & (ix.s_cap - 1)) {
		struct stable_ent *e = &ix.s[i];
		if (!e->used)
			return false;
		if (e->used == 1 && e->hash == hash)
			return true;
	}
}

void dd_stable_prefetch(uint64_t hash)
{
	__builtin_prefetch(&ix.s[mix(hash, ix.s_cap)], 0);
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
		uintptr_t a = e->addr & ~U_STALE;
		if (e->hash != hash || !a || a == (uintptr_t)page)
			continue;
		/* a is the application's page, read the safe way: in a
		 * fragile region (scan.c) it may be gone since it was seen */
		if (dd_read_page(a, cmp) && memcmp(page, cmp, DD_PAGE) == 0) {
			e->addr = 0;   /* stays as a probe-chain marker until next pass */
			return a;
		}
		if (!(e->addr & U_STALE))   /* a stale one may simply have changed */
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

/* Fetch the slot dd_unstable_offer(hash) starts at (scan.c offers skipped
 * pages a few at a time: the table is large, the slots random). */
void dd_unstable_prefetch(uint64_t hash)
{
	__builtin_prefetch(&ix.u[mix(hash, ix.u_cap)], 1);
}

/*
 * A page the scanner skips this pass (scan.c, smart scan), whose checksum
 * when it was last read is @hash. If a candidate of this pass has that
 * hash, the two could match: true, and the scanner reads the page after
 * all (it then takes the candidate as any other page would). Otherwise the
 * page enters as a stale candidate, for one that comes later in the pass:
 * one probe, where reading the page would be 4 KiB. False also when there
 * is no room (the page is simply skipped).
 */
bool dd_unstable_offer(uint64_t hash, uintptr_t addr)
{
	if ((ix.u_live + 1) * 4 > ix.u_cap * 3 && unstable_grow() < 0)
		return false;
	size_t i = mix(hash, ix.u_cap);
	for (; ix.u[i].gen == ix.gen; i = (i + 1) & (ix.u_cap - 1))
		if (ix.u[i].hash == hash && ix.u[i].addr)
			return true;
	ix.u[i] = (struct unstable_ent){ hash, addr | U_STALE, ix.gen };
	ix.u_live++;
	return false;
}
