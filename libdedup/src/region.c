/* SPDX-License-Identifier: MIT */
/*
 * region.c - the registered ranges and the metadata of their pages.
 *
 * A region is a page-aligned range that libdedup tracks. Regions are kept
 * sorted by address in one array; lookup is a binary search. Removing a
 * sub-range splits a region.
 *
 * Each page has two pieces of metadata: a word with its checksum at the
 * last visit (0: none) and the smart scan's age (8 bytes; its parts are
 * scan.c's business) and what it is merged into (4 bytes: nothing, the
 * zero page, a canonical slot, or DD_SLOT_COWED). They live in chunks of 64
 * pages (256 KiB of address space, aligned; 808 bytes), and a chunk exists
 * only once the scan has met a present page in it. So metadata follows the
 * pages present, not the range registered: a 1 TiB MAP_NORESERVE
 * reservation with 16 MiB touched (sanitizers, JITs, big hash tables make
 * them) costs 1.7 MiB, where one 12-byte entry per registered page cost
 * 3.2 GB (issue 14). With five chunks to a 4 KiB page, dense memory costs
 * 12.8 bytes per page (0.3%), a page alone in its chunk 819 bytes (20%;
 * the kernel's own page table for such a page is 4 KiB). After each walk
 * over a range the scan calls dd_meta_sweep(): pages it did not find
 * present forget their checksum and age, and a chunk left with no checksum and
 * nothing merged is freed. Absent pages keep their slot: a page merged
 * into the zero page is absent by design, a discarded merged page still
 * lies in a mapping of ours.
 *
 * Chunks are keyed by absolute address, not by region: a chunk may hold
 * pages of two adjacent regions, and splitting a region copies nothing.
 * Outside regions there is no metadata (removing a range clears its
 * pages). The chunks form a treap - a binary search tree kept balanced by
 * random priorities, expected depth O(log n) - so that a range or the next
 * merged run is found in address order without visiting absent pages
 * (unregistering a terabyte costs what is present in it); the chunk used
 * last is cached, as the scan goes through pages in order. Chunks are
 * carved five to a page ("slab page", vm.c's dd_vm_page_get); a slab page
 * whose chunks are all free goes back, a chunk freed among live ones is
 * the next to be reused (no compaction: what is held is bounded by the
 * most chunks ever live, which follow the pages present).
 *
 * Pages that were merged into a slot keep their reference when forgotten:
 * the mapping still exists, and a slot is only released when we know
 * nobody maps it.
 *
 * Locking: eng.lock held by every caller (rg.count and rg.bytes are read
 * without it, by stats).
 */
#include <string.h>

#include "internal.h"

static struct {
	struct dd_region *r;
	size_t n, cap;
	_Atomic size_t count;     /* == n, for lock-free stats readers */
	_Atomic uint64_t bytes;
} rg;

size_t dd_region_count(void) { return rg.n; }
size_t dd_region_count_relaxed(void) { return atomic_load_explicit(&rg.count, memory_order_relaxed); }
struct dd_region *dd_region_at(size_t i) { return &rg.r[i]; }
uint64_t dd_region_bytes(void) { return atomic_load_explicit(&rg.bytes, memory_order_relaxed); }

static uintptr_t rend(const struct dd_region *r) { return r->start + r->npages * DD_PAGE; }

/* Index of the first region whose end is above addr. */
size_t dd_region_lower(uintptr_t addr)
{
	size_t lo = 0, hi = rg.n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (rend(&rg.r[mid]) <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

struct dd_region *dd_region_find(uintptr_t addr)
{
	size_t i = dd_region_lower(addr);
	if (i < rg.n && rg.r[i].start <= addr)
		return &rg.r[i];
	return NULL;
}

/* ---- chunks of page metadata ------------------------------------------ */

#define CHUNK_SHIFT 6
#define CHUNK_PAGES (1u << CHUNK_SHIFT)
#define CHUNK_BYTES ((uintptr_t)CHUNK_PAGES * DD_PAGE)

struct chunk {
	struct chunk *l, *r;       /* treap children */
	uint64_t key;              /* address / CHUNK_BYTES */
	uint32_t prio;             /* treap priority (random) */
	uint32_t walk;             /* the walk that `seen` is about */
	uint64_t seen;             /* bit i: page i present in that walk */
	uint64_t hash[CHUNK_PAGES];   /* checksum and age (scan.c), 0: none */
	uint32_t slot[CHUNK_PAGES];
};

struct slab {                      /* at the start of a slab page */
	struct slab *prev, *next;  /* slab pages with a free chunk */
	uint32_t used;             /* bit i: chunk i in use */
};
#define PER_SLAB ((DD_PAGE - sizeof(struct slab)) / sizeof(struct chunk))
#define SLAB_FULL ((1u << PER_SLAB) - 1)
_Static_assert(PER_SLAB >= 1 && PER_SLAB < 32, "chunks per slab page");

static struct {
	struct chunk *root;
	struct chunk *last;        /* cache: the chunk used last */
	struct slab *partial;      /* slab pages with a free chunk */
	size_t n;
	uint32_t rnd;              /* xorshift state for priorities */
	uint32_t walk;
} mt;

static uint64_t key_of(uintptr_t a) { return a / CHUNK_BYTES; }
static unsigned idx_of(uintptr_t a) { return (unsigned)(a / DD_PAGE) & (CHUNK_PAGES - 1); }
static uintptr_t chunk_start(const struct chunk *c) { return (uintptr_t)c->key * CHUNK_BYTES; }
static bool merged_slot(uint32_t s) { return DD_SLOT_REAL(s) || s == DD_SLOT_COWED; }

static void slab_unlink(struct slab *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else if (mt.partial == s)
		mt.partial = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->prev = s->next = NULL;
}

static void slab_push(struct slab *s)
{
	s->prev = NULL;
	s->next = mt.partial;
	if (mt.partial)
		mt.partial->prev = s;
	mt.partial = s;
}

static struct chunk *chunk_alloc(void)
{
	struct slab *s = mt.partial;

	if (!s) {
		s = dd_vm_page_get();   /* zeroed */
		if (!s)
			return NULL;
		slab_push(s);
	}
	unsigned i = (unsigned)__builtin_ctz(~s->used);
	s->used |= 1u << i;
	if (s->used == SLAB_FULL)
		slab_unlink(s);
	struct chunk *c = (struct chunk *)(s + 1) + i;
	memset(c, 0, sizeof(*c));
	return c;
}

static void chunk_free(struct chunk *c)
{
	struct slab *s = (struct slab *)((uintptr_t)c & ~(uintptr_t)(DD_PAGE - 1));
	unsigned i = (unsigned)(c - (struct chunk *)(s + 1));

	if (s->used == SLAB_FULL)
		slab_push(s);
	s->used &= ~(1u << i);
	if (!s->used) {
		slab_unlink(s);
		dd_vm_page_put(s);
	}
}

static uint32_t next_prio(void)
{
	uint32_t x = mt.rnd ? mt.rnd : 0x9e3779b9u;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return mt.rnd = x;
}

static struct chunk *rot_right(struct chunk *t)
{
	struct chunk *l = t->l;
	t->l = l->r;
	l->r = t;
	return l;
}

static struct chunk *rot_left(struct chunk *t)
{
	struct chunk *r = t->r;
	t->r = r->l;
	r->l = t;
	return r;
}

static struct chunk *insert(struct chunk *t, struct chunk *c)
{
	if (!t)
		return c;
	if (c->key < t->key) {
		t->l = insert(t->l, c);
		if (t->l->prio > t->prio)
			t = rot_right(t);
	} else {
		t->r = insert(t->r, c);
		if (t->r->prio > t->prio)
			t = rot_left(t);
	}
	return t;
}

static struct chunk *join(struct chunk *a, struct chunk *b)
{
	if (!a)
		return b;
	if (!b)
		return a;
	if (a->prio > b->prio) {
		a->r = join(a->r, b);
		return a;
	}
	b->l = join(a, b->l);
	return b;
}

static struct chunk *unlink_key(struct chunk *t, uint64_t key)
{
	if (key == t->key)
		return join(t->l, t->r);
	if (key < t->key)
		t->l = unlink_key(t->l, key);
	else
		t->r = unlink_key(t->r, key);
	return t;
}

static struct chunk *find(uint64_t key)
{
	if (mt.last && mt.last->key == key)
		return mt.last;
	for (struct chunk *c = mt.root; c;) {
		if (key == c->key)
			return mt.last = c;
		c = key < c->key ? c->l : c->r;
	}
	return NULL;
}

/* The first chunk at or after address a. */
static struct chunk *find_from(uintptr_t a)
{
	uint64_t key = key_of(a);
	struct chunk *best = NULL;

	if (mt.last && mt.last->key == key)
		return mt.last;
	for (struct chunk *c = mt.root; c;) {
		if (c->key >= key) {
			best = c;
			c = c->l;
		} else {
			c = c->r;
		}
	}
	return best;
}

static struct chunk *next_chunk(const struct chunk *c)
{
	return find_from(chunk_start(c) + CHUNK_BYTES);
}

static struct chunk *get(uintptr_t a, bool create)
{
	struct chunk *c = find(key_of(a));

	if (c || !create)
		return c;
	if (!(c = chunk_alloc()))
		return NULL;
	c->key = key_of(a);
	c->prio = next_prio();
	mt.root = insert(mt.root, c);
	mt.n++;
	return mt.last = c;
}

/* Free c if nothing is left in it. */
static void drop_if_empty(struct chunk *c)
{
	for (unsigned i = 0; i < CHUNK_PAGES; i++)
		if (c->hash[i] || c->slot[i])
			return;
	mt.root = unlink_key(mt.root, c->key);
	mt.n--;
	if (mt.last == c)
		mt.last = NULL;
	chunk_free(c);
}

/* Pages [lo, hi) of c as a range of indexes [*i, *k): false if none. */
static bool overlap(const struct chunk *c, uintptr_t lo, uintptr_t hi, unsigned *i, unsigned *k)
{
	uintptr_t s = chunk_start(c), e = s + CHUNK_BYTES;
	if (lo > s)
		s = lo;
	if (hi < e)
		e = hi;
	if (s >= e)
		return false;
	*i = idx_of(s);
	*k = *i + (unsigned)((e - s) / DD_PAGE);
	return true;
}

/* ---- page metadata, for scan.c and merge.c ----------------------------- */

void dd_meta_walk_begin(void)
{
	mt.walk++;
}

bool dd_meta_visit(uintptr_t a, uint64_t **hash, uint32_t **slot)
{
	struct chunk *c = get(a, true);
	unsigned i = idx_of(a);

	if (!c)
		return false;   /* no memory for it: the page is not scanned */
	if (c->walk != mt.walk) {
		c->walk = mt.walk;
		c->seen = 0;
	}
	c->seen |= 1ULL << i;
	*hash = &c->hash[i];
	*slot = &c->slot[i];
	return true;
}

void dd_meta_sweep(uintptr_t lo, uintptr_t hi)
{
	for (struct chunk *c = find_from(lo), *next; c && chunk_start(c) < hi; c = next) {
		uint64_t seen = c->walk == mt.walk ? c->seen : 0;
		unsigned i, k;
		next = next_chunk(c);
		if (!overlap(c, lo, hi, &i, &k))
			continue;
		for (; i < k; i++)
			if (!(seen & (1ULL << i)))
				c->hash[i] = 0;
		drop_if_empty(c);
	}
}

/* Page a's word and slot, if it has metadata; nothing is created, and the
 * scan's cache of the last chunk is left alone (scan.c looks up pages out
 * of address order: the aged index). */
bool dd_meta_peek(uintptr_t a, uint64_t **hash, uint32_t **slot)
{
	uint64_t key = key_of(a);
	struct chunk *c = mt.root;

	if (mt.last && mt.last->key == key)
		c = mt.last;
	while (c && c->key != key)
		c = key < c->key ? c->l : c->r;
	if (!c)
		return false;
	*hash = &c->hash[idx_of(a)];
	*slot = &c->slot[idx_of(a)];
	return true;
}

/* fn(ctx, address, word, slot) for every page with a word, in address
 * order (scan.c rebuilds the aged index from them). */
static void each(const struct chunk *c, void (*fn)(void *, uintptr_t, uint64_t, uint32_t),
		 void *ctx)
{
	for (; c; c = c->r) {
		each(c->l, fn, ctx);
		for (unsigned i = 0; i < CHUNK_PAGES; i++)
			if (c->hash[i])
				fn(ctx, chunk_start(c) + i * DD_PAGE, c->hash[i], c->slot[i]);
	}
}

void dd_meta_each(void (*fn)(void *ctx, uintptr_t a, uint64_t hash, uint32_t slot), void *ctx)
{
	each(mt.root, fn, ctx);
}

/* Forget pages [lo, hi) (region removal). */
static void meta_clear(uintptr_t lo, uintptr_t hi)
{
	for (struct chunk *c = find_from(lo), *next; c && chunk_start(c) < hi; c = next) {
		unsigned i, k;
		next = next_chunk(c);
		if (!overlap(c, lo, hi, &i, &k))
			continue;
		for (; i < k; i++) {
			/* The page's reference stays with its slot: the page may
			 * still map it (a range unregistered around mprotect), or
			 * be gone (an munmap no interposer saw). The store's
			 * orphan sweep tells which (store.c, dd_store_sweep). */
			if (DD_SLOT_REAL(c->slot[i]))
				dd_store_sweep_wanted();
			if (c->slot[i] == DD_SLOT_ZERO)
				atomic_fetch_sub(&dd_cnt.zero_pages, 1);
			c->hash[i] = 0;
			c->slot[i] = DD_SLOT_NONE;
		}
		drop_if_empty(c);
	}
}

uint32_t dd_region_slot(const struct dd_region *r, size_t p)
{
	uintptr_t a = r->start + p * DD_PAGE;
	struct chunk *c = get(a, false);
	return c ? c->slot[idx_of(a)] : DD_SLOT_NONE;
}

/*
 * Record what page p of r is merged into. Its chunk exists (the scan made
 * it, and kept it for the checksum the merge started from); should it not
 * and there be no memory for one, the page keeps the slot reference the
 * caller took (dd_store_get first): the slot is never released under it,
 * a leak and not a wrong page.
 */
void dd_region_set_slot(const struct dd_region *r, size_t p, uint32_t slot)
{
	dd_assert_held(&eng.lock);
	uintptr_t a = r->start + p * DD_PAGE;
	struct chunk *c = get(a, slot != DD_SLOT_NONE);

	if (c)
		c->slot[idx_of(a)] = slot;
	else if (slot != DD_SLOT_NONE)
		dd_err("no memory for the metadata of %#lx: its canonical page is kept",
		       (unsigned long)a);
}

/*
 * The first run of merged pages (slot real or COWED: pages inside a file
 * mapping of ours) of r at or after page *i: [*i, *k). False if none. Only
 * chunks that exist are visited.
 */
bool dd_region_next_merged(const struct dd_region *r, size_t *i, size_t *k)
{
	uintptr_t lo = r->start + *i * DD_PAGE, hi = rend(r);

	for (struct chunk *c = find_from(lo); c && chunk_start(c) < hi; c = next_chunk(c)) {
		unsigned j, e;
		if (!overlap(c, lo, hi, &j, &e))
			continue;
		for (; j < e && !merged_slot(c->slot[j]); j++)
			;
		if (j == e)
			continue;
		uintptr_t a = chunk_start(c) + (uintptr_t)j * DD_PAGE, b = a;
		while (b < hi && merged_slot(dd_region_slot(r, (b - r->start) / DD_PAGE)))
			b += DD_PAGE;
		*i = (a - r->start) / DD_PAGE;
		*k = (b - r->start) / DD_PAGE;
		return true;
	}
	return false;
}

size_t dd_meta_chunks(void)
{
	return mt.n;
}

/* ---- regions ----------------------------------------------------------- */

static int reserve(size_t extra)
{
	if (rg.n + extra <= rg.cap)
		return 0;
	size_t ncap = rg.cap ? rg.cap * 2 : 64;
	void *p = dd_vm_grow(rg.r, rg.cap * sizeof(*rg.r), ncap * sizeof(*rg.r));
	if (!p)
		return -ENOMEM;
	rg.r = p;
	rg.cap = ncap;
	return 0;
}

static void insert_at(size_t i, const struct dd_region *r)   /* room reserved */
{
	memmove(&rg.r[i + 1], &rg.r[i], (rg.n - i) * sizeof(*rg.r));
	rg.r[i] = *r;
	rg.n++;
	atomic_store(&rg.count, rg.n);
	atomic_fetch_add(&rg.bytes, r->npages * DD_PAGE);
}

static _Atomic uint64_t rg_gen;   /* bumped by every add and remove */

uint64_t dd_region_gen(void) { return atomic_load(&rg_gen); }

int dd_region_add(uintptr_t start, size_t len)
{
	dd_assert_held(&eng.lock);
	atomic_fetch_add(&rg_gen, 1);
	struct dd_region r = { .start = start, .npages = len / DD_PAGE,
			       .fragile = eng.fragile_regions };
	size_t i = dd_region_lower(start);

	if (i < rg.n && rg.r[i].start < start + len)
		return -EEXIST;
	if (reserve(1) < 0)
		return -ENOMEM;
	insert_at(i, &r);
	return 0;
}

/*
 * Stop tracking [start, start+len). exact: it must be exactly one region
 * (dd_unregister); otherwise every overlapping region loses the overlap and
 * keeps the rest (remap events, munmap in the preload library).
 */
int dd_region_remove(uintptr_t start, size_t len, bool exact)
{
	dd_assert_held(&eng.lock);
	atomic_fetch_add(&rg_gen, 1);
	uintptr_t end = start + len;
	size_t i = dd_region_lower(start);
	int found = 0;

	if (exact) {
		if (i >= rg.n || rg.r[i].start != start || rend(&rg.r[i]) != end)
			return -ENOENT;
	}
	while (i < rg.n && rg.r[i].start < end) {
		struct dd_region old = rg.r[i];
		uintptr_t lo = start > old.start ? start : old.start;
		uintptr_t hi = end < rend(&old) ? end : rend(&old);
		/* the pieces left are new regions (fresh: scan.c), whose
		 * pages keep their metadata */
		struct dd_region left = { .start = old.start, .npages = (lo - old.start) / DD_PAGE,
					  .fragile = old.fragile };
		struct dd_region right = { .start = hi, .npages = (rend(&old) - hi) / DD_PAGE,
					   .fragile = old.fragile };

		if (left.npages && right.npages && reserve(1) < 0)
			return -ENOMEM;
		meta_clear(lo, hi);
		memmove(&rg.r[i], &rg.r[i + 1], (rg.n - i - 1) * sizeof(*rg.r));
		rg.n--;
		atomic_store(&rg.count, rg.n);
		atomic_fetch_sub(&rg.bytes, old.npages * DD_PAGE);
		if (left.npages)
			insert_at(i++, &left);
		if (right.npages)
			insert_at(i++, &right);
		found = 1;
	}
	return found ? 0 : -ENOENT;
}

/* Forget every region and all page metadata, at once: the pages go back
 * without a walk over the chunks, which a fork()ed child starting afresh
 * (dd_engine_child_reset) may have inherited torn. */
void dd_region_fini(void)
{
	dd_vm_pages_reset();
	memset(&mt, 0, sizeof(mt));
	atomic_store(&dd_cnt.zero_pages, 0);
	dd_vm_free(rg.r, rg.cap * sizeof(*rg.r));
	rg.r = NULL;
	rg.n = rg.cap = 0;
	atomic_store(&rg.count, 0);
	atomic_store(&rg.bytes, 0);
}

/* Set bit (slot) in bits for every canonical slot a page of a region is
 * merged into (metadata: slot + 1), for the store's orphan sweep. */
void dd_region_each_slot(void (*fn)(void *ctx, uint32_t ref), void *ctx)
{
	for (struct chunk *c = find_from(0); c; c = next_chunk(c))
		for (unsigned i = 0; i < CHUNK_PAGES; i++)
			if (DD_SLOT_REAL(c->slot[i]))
				fn(ctx, c->slot[i]);
}
