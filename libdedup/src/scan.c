/* SPDX-License-Identifier: MIT */
/*
 * scan.c - one pass over the registered regions: find present anonymous
 * pages, hash them, and choose merge candidates (ksm.c's scan loop).
 *
 * For each present anonymous page, in address order:
 *  0. Skip it if it has been unchanged and unmatched for a while (smart
 *     scan, below): it takes part in the pass by its old checksum only.
 *  1. Hash it (XXH3-64). If the hash differs from the last pass, the page
 *     is volatile: remember the new hash, skip it this time (KSM's rule;
 *     a page must be stable for a whole pass to be worth protecting).
 *  2. A zero page goes to the batch with the zero page as target.
 *  3. A hash found in the stable index goes to the batch with that
 *     canonical slot as target.
 *  4. A hash found in the unstable index (another candidate of this pass)
 *     with byte-equal content makes a new canonical slot; both pages go to
 *     the batch. Otherwise the page enters the unstable index.
 * Nothing here changes a mapping: merge.c does that, and re-checks every
 * page under write protection; the comparisons here only avoid work.
 *
 * Pages that are present but file-backed are pages we merged earlier;
 * present anonymous pages that we had merged were copied by a writer
 * (copy-on-write): their reference is dropped here, without any fault.
 *
 * Locking: eng.lock held. Runs in the engine thread or in dedup_scan_now().
 */
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "hash.h"
#include "internal.h"

#define FRAGILE_CHUNK 32   /* pages read per process_vm_readv() */

uint64_t dd_hash_page(const void *p)
{
	uint64_t h = dd_hash_content(p);
	if (dd_opt.test_hash_bits < 64)
		h &= (1ULL << dd_opt.test_hash_bits) - 1;   /* collisions on purpose */
	return h ? h : 1;
}

/*
 * Smart scan: pages that never match are read less and less.
 *
 * Borrowed from mm/ksm.c's smart scan (Linux 6.7, "ksm_smart_scan":
 * should_skip_rmap_item() and skip_age(); KSM counts the pages it passes
 * over in /sys/kernel/mm/ksm/pages_skipped). There each rmap_item has an
 * age, the scans it has been through; from age 3 on, it is skipped for
 * skip_age(age) scans (1, 2, 4, then 8) between visits. Here, as there, a
 * page's age grows with every visit that finds it unchanged and matching
 * nothing, and a page of age k is read once every 2^k full passes (capped
 * at 2^SMART_AGE_MAX: a unique heap then costs 1/32 of a hash pass per
 * pass, where it cost a whole one: the idle cost of issue 14). Unlike
 * KSM, whose age only grows:
 *  - the age starts again from 0 whenever a visit finds the page changed
 *    (volatile), or it goes to a merge batch (it matched), or it leaves
 *    (absent at a walk: dd_meta_sweep forgets the word), so freshly written
 *    and freshly faulted memory is read every pass, as before;
 *  - a page skipped in a pass can still be found by its checksum from the
 *    visit that last read it, without any work for it in that pass: it is
 *    in the aged index (index.c) from the visit that first aged it until
 *    one finds it young again. A candidate that matches no canonical page
 *    looks there before the unstable index, and reads and compares the
 *    aged page it finds: so a new duplicate of an old page merges as
 *    promptly as before, at any place in the pass. (Until 2026-12 every
 *    skipped page was offered to the unstable index at every pass instead:
 *    a random write per page per pass, a quarter of a settled engine's
 *    time, for a heap in which nothing happened.) What waits is a skipped
 *    page that is itself written: its change is seen at its next visit, at
 *    most 2^SMART_AGE_MAX passes later (no write-protection to notice it:
 *    that would cost the program a fault on its first write, and a TLB
 *    flush for every page protected).
 * When a page of age k is due is not counted down per page but read off a
 * clock, the full passes (sm.clock), and the page's address: due when
 * (clock + phase(a)) is a multiple of 2^k, phase() a hash of the address.
 * So pages aged together - a heap filled at once, read at the same passes
 * while young - fall due over the whole interval, 1/2^k of them at each
 * pass, where they used to fall due together (a jitter of at most a
 * quarter of the skip): whole-heap re-reads at passes 1, 2, 4, 8 and 16
 * of a settled engine, 0.7 s of CPU each for 1 GiB. At the cap a page is
 * read exactly once every 2^SMART_AGE_MAX passes, always at the same
 * phase. A page of age k+1 read at its age-k slot next falls due 2^k or
 * 2^(k+1) passes later.
 * Not in a sharing group: there every phase is 0. A page is asked about,
 * and published when another member has it, in the pass that reads it (or
 * asks by its old checksum), so spreading cut a contiguous range into pages
 * asked on different passes, each pass's share published into a segment
 * of its own: four members with the same 256 MiB ended with some 10,000
 * mappings each, runs of one to ten pages alternating between segments
 * (share_workers counts them). Without it, a range aged together stays
 * together, is asked about in one pass, in address order, and lands in one
 * segment in order. Pages merged into a slot or the zero page are not
 * present anonymous pages and are not visited at all; a present page that
 * was merged (copied by a writer) is always read.
 *
 * The word per page (region.c keeps it, only scan.c reads its parts):
 *   bits  0-55  checksum at the last visit (DD_HASH_MASK; 0: none)
 *   bits 56-58  age: visits in a row that found it unchanged, unmatched
 *   bits 59-63  zero (they held a per-page skip count before the clock)
 * A word with age >= 1 and a checksum (other than the zero page's) has an
 * entry in the aged index: word_set() keeps the two in step.
 */
#define SMART_AGE_MAX 5
#define W_HASH(w) ((w) & DD_HASH_MASK)
#define W_AGE(w) ((unsigned)((w) >> 56) & 7u)
_Static_assert(SMART_AGE_MAX <= 7, "the age has 3 bits");

static struct {
	uint64_t clock;      /* full passes begun (smart scan) */
	size_t aged_seen;    /* this full pass: pages with an aged word after
				their visit or skip (aged_rebuild_if_stale) */
	bool full;           /* the pass in progress is a full one */
} sm;

static uint64_t w_make(uint64_t h, unsigned age)
{
	return h | (uint64_t)age << 56;
}

/* The word after a visit that found the page unchanged and unmatched. */
static uint64_t w_aged(uint64_t w)
{
	return w_make(W_HASH(w), W_AGE(w) < SMART_AGE_MAX ? W_AGE(w) + 1 : SMART_AGE_MAX);
}

/* The page's place in the skip interval: a hash of its page number
 * (Fibonacci hashing: any 2^k pages in a row take 2^k different phases). */
static unsigned phase(uintptr_t a)
{
	if (dd_group_active())   /* in a group, no spreading (above) */
		return 0;
	return (unsigned)(((uint64_t)(a / DD_PAGE) * 0x9E3779B97F4A7C15ULL) >> 40);
}

/* Is a page with word w at a to be read in this pass? */
static bool smart_due(uint64_t w, uintptr_t a)
{
	unsigned age = W_AGE(w);
	return !age || ((sm.clock + phase(a)) & ((1u << age) - 1)) == 0;
}

/* Does a page with word w belong in the aged index? */
static bool w_listed(uint64_t w)
{
	return W_AGE(w) && W_HASH(w) && W_HASH(w) != eng.zero_hash;
}

/* Set the word of the page at a, and its entry in the aged index with it:
 * only a change of state costs a write there. True if the page is listed
 * there now. */
static bool word_set(uintptr_t a, uint64_t *w, uint64_t nw)
{
	uint64_t ow = *w;
	bool was = w_listed(ow), is = w_listed(nw), in = is;

	if (was && (!is || W_HASH(ow) != W_HASH(nw)))
		dd_aged_remove(W_HASH(ow), a);
	if (is && (!was || W_HASH(ow) != W_HASH(nw)))
		in = dd_aged_insert(W_HASH(nw), a);
	if (is && sm.full)
		sm.aged_seen++;
	*w = nw;
	return in;   /* in the aged index now (as far as we know) */
}

/* For dd_aged_take: is the page at a still aged with checksum h? Its entry
 * may be stale: the page was unmapped or discarded (region.c forgot its
 * word without a visit), or merged. */
static bool aged_valid(uintptr_t a, uint64_t h)
{
	uint64_t *w;
	uint32_t *slot;
	return dd_meta_peek(a, &w, &slot) && *slot == DD_SLOT_NONE && w_listed(*w) &&
	       W_HASH(*w) == h;
}

/* An aged page that a candidate has taken: young again (it goes to a merge
 * batch; should the merge not happen, it is read at the next pass). */
static void aged_taken(uintptr_t b)
{
	uint64_t *w;
	uint32_t *slot;
	if (dd_meta_peek(b, &w, &slot))
		*w = w_make(W_HASH(*w), 0);   /* its entry is gone already */
}

/*
 * Stale entries (aged_valid) are dropped when a lookup meets them; pages
 * unmapped while aged that nothing looks up stay. Once they outnumber the
 * aged pages the last full pass met, the index is made again from the
 * metadata: O(heap), but only after as many pages have left: O(changed)
 * over time.
 */
static void aged_add(void *ctx, uintptr_t a, uint64_t w, uint32_t slot)
{
	(void)ctx;
	if (slot == DD_SLOT_NONE && w_listed(w))
		dd_aged_insert(W_HASH(w), a);
}

static void aged_rebuild_if_stale(void)
{
	if (dd_aged_count() <= 2 * sm.aged_seen + 1024)
		return;
	dd_aged_reset();
	dd_meta_each(aged_add, NULL);
}

/* A present anonymous page's metadata, between the two halves of a visit. */
struct page_ref {
	uint64_t *w;      /* its word: checksum, age, skip (above) */
	uint32_t *slot;
};

struct pass_ctx {
	struct dd_region *r;
	uint32_t last_new;   /* last slot created, for contiguous allocation */
	long merged;
	size_t scanned;
	size_t found;        /* present pages the walk returned */
};

static long batch_add(struct pass_ctx *c, uintptr_t addr, uint32_t target)
{
	long merged = 0;
	eng.batch[eng.nbatch++] = (struct dd_merge_item){ .addr = addr, .target = target };
	if (eng.nbatch >= dd_opt.batch_pages)
		merged = dd_merge_batch();
	c->merged += merged;
	return merged;
}

/*
 * A sharing group (docs/sharing.md sections 5 and 6). A candidate that
 * matched nothing in this process is asked about (group_ask): the helper
 * answers, for each checksum, a segment page that has it (FOUND: merged
 * into like any canonical page, the window compares it byte for byte),
 * SEEN (another member offered it: we publish it), or NONE (now it knows
 * that we have it). Pages to publish (group_publish: SEEN ones, and pairs
 * this process found itself) are copied at once, each content once, and
 * wait - across steps, like the unstable index's candidates, never beyond
 * the pass - until PUB_PAGES contents, the pass's end or PUB_WAIT_NS make
 * one sealed segment of them (group_publish_all); then the pages are
 * merged into it. Fewer, larger segments: each costs a member that uses it
 * a descriptor and a mapping. A copy that went stale merges nothing (the
 * window compares). In a group the process makes no canonical page of its
 * own: the group's is everybody's. Lookups are flushed before a step's
 * batch is, while the region is still where the walk found it; segments
 * stay until the step's end at least (store.c, dd_store_seg_sweep).
 * eng.lock held throughout.
 */
#define PUB_PAGES 1024                 /* contents of one segment, at most */
#define PUB_ADDRS (2 * PUB_PAGES)      /* pages waiting to merge into them */
#define PUB_WAIT_NS (200 * 1000000ULL) /* the oldest waits at most this long */
struct grp_ent { uintptr_t a; uint64_t h; };
static struct {
	struct grp_ent ask[DD_GROUP_MAX_LOOKUP];
	size_t nask;
	struct { uintptr_t a; uint32_t u; } pub[PUB_ADDRS];   /* u: its content */
	size_t npub;
	char *buf;                       /* PUB_PAGES contents */
	uint64_t h[PUB_PAGES];
	const void *pg[PUB_PAGES];
	size_t nu;
	uint64_t since_ns;               /* when the first one came */
	struct dd_group_answer ans[DD_GROUP_MAX_LOOKUP];
	struct dd_group_seg segs[DD_GROUP_MAX_LOOKUP];
	uint64_t ask_h[DD_GROUP_MAX_LOOKUP];
	uint32_t seg_base[DD_GROUP_MAX_LOOKUP];
} grp;

static long batch_add(struct pass_ctx *c, uintptr_t addr, uint32_t target);
static void group_lookup(struct pass_ctx *c);
static void group_publish_all(struct pass_ctx *c);

static void group_ask(struct pass_ctx *c, uintptr_t a, uint64_t h)
{
	grp.ask[grp.nask++] = (struct grp_ent){ a, h };
	if (grp.nask == DD_GROUP_MAX_LOOKUP)
		group_lookup(c);
}

/* Page a with checksum h, content d (NULL: read it now), to be published.
 * Each address once: a page asked about and then paired goes this way. */
static void group_publish(struct pass_ctx *c, uintptr_t a, uint64_t h, const void *d)
{
	size_t u;

	for (size_t i = 0; i < grp.nask; i++)
		if (grp.ask[i].a == a)
			grp.ask[i] = grp.ask[--grp.nask];
	for (size_t i = 0; i < grp.npub; i++)
		if (grp.pub[i].a == a)
			return;
	if (!grp.buf && !(grp.buf = dd_vm_alloc(PUB_PAGES * DD_PAGE)))
		return;
	if (grp.nu == PUB_PAGES || grp.npub == PUB_ADDRS)
		group_publish_all(c);
	char *p = grp.buf + grp.nu * DD_PAGE;
	if (!d) {   /* a copy: the page may change, the segment may not */
		if (!dd_read_page(a, p) || dd_hash_page(p) != h)
			return;
		d = p;
	}
	for (u = 0; u < grp.nu; u++)
		if (grp.h[u] == h && memcmp(grp.pg[u], d, DD_PAGE) == 0)
			break;
	if (u == grp.nu) {
		if (d != p)
			memcpy(p, d, DD_PAGE);
		grp.h[u] = h;
		grp.pg[u] = p;
		if (!grp.nu++)
			grp.since_ns = dd_now_ns();
	}
	grp.pub[grp.npub].a = a;
	grp.pub[grp.npub++].u = (uint32_t)u;
}

/*
 * Ask the helper about the pages waiting in grp.ask, and act on its
 * answers in address order (the order of a segment's contents, so that a
 * run of SEEN pages becomes a run of contiguous slots: one mapping). The
 * asks come nearly sorted (the smart scan's offers lag the reads by up to
 * OFFER_AHEAD pages): an insertion sort of the indexes, no allocation.
 *
 * Gaps: a NONE between SEEN pages, address neighbours in this answer, is
 * published with them (up to GAP_FILL pages in a row). Another member had
 * the pages on both sides, so it very likely has this one too, and the
 * helper just did not know it (its offer was evicted, or not made yet):
 * published alone later, by whoever asks next, it would cut the run in
 * three mappings in every member. Publishing a page nobody else has costs
 * us nothing but the copy (our own page is merged into the segment's and
 * freed); the segment's page lives as long as the segment does.
 */
#define GAP_FILL 16
static void group_lookup(struct pass_ctx *c)
{
	uint64_t *h = grp.ask_h;
	uint32_t *base = grp.seg_base;
	size_t n = grp.nask, ns = 0;
	uint16_t ord[DD_GROUP_MAX_LOOKUP];
	uint8_t kind[DD_GROUP_MAX_LOOKUP];

	grp.nask = 0;
	for (size_t i = 0; i < n; i++)
		h[i] = grp.ask[i].h;
	if (dd_group_lookup(h, n, grp.ans, grp.segs, &ns) < 0)
		return;   /* out of the group now (group.c said why) */
	for (size_t k = 0; k < ns; k++)
		base[k] = dd_store_seg_add(grp.segs[k].id, grp.segs[k].fd, grp.segs[k].npages);
	if (ns)
		dd_group_test_die(DD_GS_FOUND);
	for (size_t i = 0; i < n; i++) {
		size_t j = i;
		for (; j && grp.ask[ord[j - 1]].a > grp.ask[i].a; j--)
			ord[j] = ord[j - 1];
		ord[j] = (uint16_t)i;
		kind[i] = (uint8_t)grp.ans[i].kind;
	}
	for (size_t j = 1; j < n; j++) {   /* fill the gaps (above) */
		if (kind[ord[j]] != DD_GROUP_NONE || kind[ord[j - 1]] != DD_GROUP_SEEN)
			continue;
		size_t k = j;
		while (k < n && k - j < GAP_FILL && kind[ord[k]] == DD_GROUP_NONE &&
		       grp.ask[ord[k]].a == grp.ask[ord[k - 1]].a + DD_PAGE)
			k++;
		if (k < n && kind[ord[k]] == DD_GROUP_SEEN &&
		    grp.ask[ord[k]].a == grp.ask[ord[k - 1]].a + DD_PAGE)
			for (size_t m = j; m < k; m++)
				kind[ord[m]] = DD_GROUP_SEEN;
		j = k - 1 > j ? k - 1 : j;
	}
	for (size_t j = 0; j < n; j++) {
		size_t i = ord[j];
		const struct dd_group_answer *an = &grp.ans[i];
		if (kind[i] == DD_GROUP_SEEN) {
			group_publish(c, grp.ask[i].a, h[i], NULL);
		} else if (an->kind == DD_GROUP_FOUND && an->seg < ns && base[an->seg] &&
			   an->page < grp.segs[an->seg].npages) {
			uint32_t s = base[an->seg] + an->page;
			/* our own checksum of the segment's page (store.c): an
			 * answer that does not hold is no candidate */
			if (dd_store_hash(s) == h[i])
				batch_add(c, grp.ask[i].a, s);
		}
	}
}

static void group_publish_all(struct pass_ctx *c)
{
	size_t n = grp.npub, nu = grp.nu;

	grp.npub = grp.nu = 0;
	if (!nu)
		return;
	int fd = dd_group_segment_new(grp.pg, nu);
	if (fd < 0)
		return;
	int64_t id = dd_group_publish(fd, grp.h, nu);
	if (id <= 0) {
		dd_sys_close(fd);
		return;
	}
	uint32_t base = dd_store_seg_add((uint64_t)id, fd, (uint32_t)nu);
	for (size_t i = 0; base && i < n; i++)
		batch_add(c, grp.pub[i].a, base + grp.pub[i].u);
}

/* Before a step's batch is flushed (pass_end: the pass is over). */
static void group_flush(struct pass_ctx *c, bool pass_end)
{
	if (grp.nask)
		group_lookup(c);
	if (grp.nu && (pass_end || dd_now_ns() - grp.since_ns >= PUB_WAIT_NS))
		group_publish_all(c);
	if (pass_end && grp.buf) {   /* 4 MiB a pass needs only while it publishes */
		dd_vm_free(grp.buf, PUB_PAGES * DD_PAGE);
		grp.buf = NULL;
	}
}

/*
 * First half of a visit, metadata only: is the page's content to be read
 * this pass? Not for a page we cannot merge (no memory for its metadata,
 * or copied inside a file mapping of ours), nor for one the smart scan
 * skips this pass: that one costs its word here and nothing else (the
 * aged index has it already).
 */
static bool page_due(struct pass_ctx *c, uintptr_t a, struct page_ref *p)
{
	if (!dd_meta_visit(a, &p->w, &p->slot))
		return false;   /* no memory for its metadata: not a candidate */
	/* An anonymous page inside a file VMA of ours (a sharer copied it):
	 * UFFDIO_MOVE, our pin check, only works in anonymous VMAs, so it
	 * cannot be merged again safely. Leave it. */
	if (*p->slot == DD_SLOT_COWED)
		return false;
	uint64_t w = *p->w;
	if (*p->slot != DD_SLOT_NONE)
		return true;
	if (smart_due(w, a)) {
		/* read and hashed before its look at the aged index: a random
		 * access in a table as large as the heap's pages, started now */
		if (w_listed(w))
			dd_aged_prefetch(W_HASH(w));
		return true;
	}
	DD_INC(pages_skipped_smart, 1);
	if (sm.full && w_listed(w))
		sm.aged_seen++;   /* and word_set() counts those read */
	/* In a group, asked about by its old checksum at every fourth pass
	 * it sits out, without a read: a member that joins later finds our
	 * offer fresh (SEEN: it publishes), and we find what it published
	 * (FOUND: the window reads and compares the page). Otherwise an aged
	 * page would speak to the group once in 32 passes, and members
	 * started minutes apart hardly merge. */
	if (dd_group_active() && W_HASH(w) && ((sm.clock + phase(a)) & 3) == 0)
		group_ask(c, a, W_HASH(w));
	return false;
}

/*
 * A page whose metadata says merged (a slot, or the zero page) and that the
 * walk reported present and anonymous: was it really copied? The walk's
 * word may be stale. A batch flushed during the step (visit_page) merges an
 * aged page that a candidate took from the aged index, which may lie ahead
 * of the walk: in the PAGEMAP_SCAN results already read (present,
 * anonymous, before the merge), or in a part walked without PAGE_IS_FILE
 * because no slot had a reference when the step began
 * (file_pages_possible). Dropping the slot's reference for a page that still
 * maps it would release the slot under it: the slot is punched or reused,
 * and the page's next fault reads zeros (or another content). So the page
 * table is asked again: one pagemap read per copy-on-write break. A copy
 * cannot turn back into a merged page but by a merge, and merges happen
 * only here, under eng.lock.
 */
static bool merged_page_copied(uintptr_t a)
{
	uint8_t st;
	return dd_pte_states(a, 1, &st) == 0 && (st & DD_PTE_PRESENT) &&
	       !(st & (DD_PTE_FILE | DD_PTE_ZERO));
}

/* Another page equal to page a (content d, checksum h), taken out of the
 * indexes: an aged page (skipped or not, this pass or an earlier one; young
 * again once taken), then a candidate of this pass that is not in the aged
 * index. 0 if none. */
static uintptr_t take_twin(uint64_t h, const void *d, uintptr_t a, bool *collided)
{
	uintptr_t b = dd_aged_take(h, d, a, aged_valid, collided);

	if (b)
		aged_taken(b);
	else
		b = dd_unstable_take(h, d, collided);
	return b;
}

/*
 * The VMA budget is spent and page a (content d) is not zero: it does not
 * go to a merge window. Before, such a page went to windows that
 * write-protected it (a TLB shootdown each) only to find the budget spent:
 * redis in the benchmark lost most of its GET rate to that. And no
 * canonical page is written for it (dd_store_new): it would only be
 * dropped. But we still find out whether it *would* merge, and count it in
 * the gauge budget_waiting (what a larger vm.max_map_count would let
 * merge, docs/stats.md): hashed, unchanged since the last pass, and equal
 * to a canonical page (one page saved) or to another page of this pass
 * (which then stands for both in the unstable index: n equal pages count
 * n - 1, the pages merging them would save). The check costs a hash and at
 * most one compare per page; a page that matches nothing ages as usual
 * (smart scan), so the budget-bound heap is not hashed whole every pass.
 * A page that waits stays young: it is hashed at each pass and merges as
 * soon as the budget allows. Not in a sharing group: its lookups go to the
 * helper, which a page that cannot merge should not load.
 */
static void budget_wait(uintptr_t a, const void *d, uint64_t *w)
{
	bool collided = false;
	uint64_t h;

	uintptr_t b;

	DD_INC(skipped_budget, 1);
	if (dd_group_active()) {   /* as before: starts over later */
		word_set(a, w, w_aged(w_make(0, W_AGE(*w))));
		return;
	}
	h = dd_hash_page(d);
	if (h != W_HASH(*w)) {   /* changed since the last pass: not a candidate */
		word_set(a, w, w_make(h, 0));
		return;
	}
	if (dd_stable_lookup(h, d, &collided)) {
		eng.budget_wait_pass++;
		word_set(a, w, w_make(h, 0));
		return;
	}
	b = take_twin(h, d, a, &collided);
	if (b) {
		eng.budget_wait_pass++;
		word_set(a, w, w_make(h, 0));
		dd_unstable_insert(h, a);   /* the next equal page meets this one */
		return;
	}
	if (!word_set(a, w, w_aged(*w)))   /* as in visit_page */
		dd_unstable_insert(h, a);
}

/* Second half: the page's content d (the page itself, or a copy of it). */
static void visit_page(struct pass_ctx *c, uintptr_t a, const void *d, const struct page_ref *p)
{
	uint64_t h, *w = p->w;
	uint32_t *slot = p->slot;

	/* Present and anonymous. Was it merged before? Then a writer copied it,
	 * if the page table still says so (merged_page_copied). */
	if (*slot != DD_SLOT_NONE) {
		if (!merged_page_copied(a))
			return;
		if (*slot == DD_SLOT_ZERO) {
			/* Faulted in again. A read does that too where the kernel
			 * has no shared zero page (pvm_no_zero_page): only a page
			 * that is no longer zero was written. */
			atomic_fetch_sub(&dd_cnt.zero_pages, 1);
			*slot = DD_SLOT_NONE;
			if (memcmp(d, dd_zero_page, DD_PAGE))
				DD_INC(cow_breaks, 1);
		} else {
			dd_store_put(*slot);
			*slot = DD_SLOT_COWED;  /* still inside a file VMA */
			DD_INC(cow_breaks, 1);
		}
		word_set(a, w, W_HASH(*w));   /* young again */
	}
	c->scanned++;
	/* VMA budget spent: only a zero page can still merge (it adds no
	 * mapping). The rest is not offered to merge (budget_wait). */
	if (dd_merge_budget_spent() &&
	    ((((const uint64_t *)d)[0] | ((const uint64_t *)d)[1]) || memcmp(d, dd_zero_page, DD_PAGE))) {
		budget_wait(a, d, w);
		return;
	}
	h = dd_hash_page(d);
	if (h != W_HASH(*w)) {
		word_set(a, w, w_make(h, 0));
		DD_INC(skipped_volatile, 1);
		return;
	}
	DD_INC(candidates, 1);
	if (h == eng.zero_hash && memcmp(d, dd_zero_page, DD_PAGE) == 0) {
		if (dd_opt.zero_pages) {
			word_set(a, w, w_make(h, 0));
			batch_add(c, a, DD_SLOT_ZERO);
		} else {
			word_set(a, w, w_aged(*w));   /* not listed: zeros */
		}
		return;
	}
	bool collided = false;
	uint32_t s = dd_stable_lookup(h, d, &collided);
	if (s) {
		word_set(a, w, w_make(h, 0));
		batch_add(c, a, s);
		return;
	}
	uintptr_t b = take_twin(h, d, a, &collided);
	if (collided)
		DD_INC(skipped_mismatch, 1);   /* a hash matched, the content did not */
	if (b) {
		word_set(a, w, w_make(h, 0));
		if (dd_group_active()) {   /* the group's canonical page, not ours */
			group_publish(c, b, h, d);   /* equal: index.c compared */
			group_publish(c, a, h, d);
			return;
		}
		s = dd_store_new(d, c->last_new ? c->last_new + 1 : 0);
		if (!s)
			return;
		c->last_new = s;
		dd_store_set_hash(s, h);
		if (dd_stable_insert(h, s) < 0) {
			dd_store_put(s);
			return;
		}
		/* both pages in one batch, so the new slot cannot be released
		 * (no reference yet) between them */
		if (eng.nbatch + 2 > dd_opt.batch_pages && eng.nbatch)
			c->merged += dd_merge_batch();
		eng.batch[eng.nbatch++] = (struct dd_merge_item){ .addr = b, .target = s };
		batch_add(c, a, s);
		return;
	}
	/* Matched nothing: it ages (smart scan) and so enters the aged index,
	 * where later candidates find it, in this pass and the next ones. The
	 * unstable index is left for what the aged one could not take (no
	 * memory for it). */
	if (!word_set(a, w, w_aged(*w)))
		dd_unstable_insert(h, a);
	if (dd_group_active())
		group_ask(c, a, h);   /* maybe another member has it */
}

/* This process, for process_vm_readv(): asked once per step (glibc does
 * not cache getpid(), and a system call per 32 pages read was as many as
 * the reads themselves; a step never spans a fork, the engine thread
 * does not exist in a child). */
static pid_t self_pid;

static void on_present(void *ctx, uintptr_t start, uintptr_t end, unsigned flags)
{
	struct pass_ctx *c = ctx;
	struct page_ref p;

	c->found += (end - start) / DD_PAGE;
	if (flags & (DD_PG_FILE | DD_PG_ZERO))
		return;   /* merged by us, or the shared zero page: nothing to gain */
	if (!c->r->fragile) {
		for (uintptr_t a = start; a < end; a += DD_PAGE)
			if (page_due(c, a, &p))
				visit_page(c, a, (const void *)a, &p);
		return;
	}
	/* A fragile region (the preload library's: libc may shrink or unmap
	 * it behind any interposer's back, e.g. glibc trimming the brk heap)
	 * is read through process_vm_readv(), which fails where a direct read
	 * would kill the process. What is gone is simply not scanned. Only
	 * the pages due this pass are read, up to FRAGILE_CHUNK at a time. */
	static char *buf;
	if (!buf && !(buf = dd_vm_alloc(FRAGILE_CHUNK * DD_PAGE)))
		return;
	for (uintptr_t a = start; a < end;) {
		struct page_ref due[FRAGILE_CHUNK];
		struct iovec rv[FRAGILE_CHUNK];
		size_t n = 0;
		for (; a < end && n < FRAGILE_CHUNK; a += DD_PAGE)
			if (page_due(c, a, &due[n]))
				rv[n++] = (struct iovec){ (void *)a, DD_PAGE };
		if (!n)
			continue;
		struct iovec l = { buf, n * DD_PAGE };
		ssize_t got = process_vm_readv(self_pid, &l, 1, rv, n, 0);
		size_t k = got > 0 ? (size_t)got / DD_PAGE : 0;
		for (size_t i = 0; i < k; i++)
			visit_page(c, (uintptr_t)rv[i].iov_base, buf + i * DD_PAGE, &due[i]);
		if (k < n)
			break;
	}
}

/*
 * Can a present page of ours be a file page - a page merged into a slot of
 * ours or a group segment, still mapping it? Not while no slot has a
 * reference: a slot is released only once nobody maps it (store.c). Then
 * the walk need not tell file pages from anonymous ones (os.c: that costs
 * a look at every page's struct page in the kernel, most of a settled
 * engine's walk over a heap with nothing merged). A page that merely
 * was merged and then copied (DD_SLOT_COWED) is told by its metadata
 * (page_due); a file page the program mapped over a range of ours by a
 * raw system call is then taken for an anonymous page and read - as it
 * could be anyway, mapped there between the walk and the merge - and the
 * merge refuses it (its VMA is not registered with our userfaultfd).
 */
static bool file_pages_possible(void)
{
	return dd_store_sharing() || dd_store_group_pages();
}

/*
 * A region is fresh until two passes went over all of it: the first hashes
 * its pages, the second finds which of them held still. The engine scans
 * fresh regions promptly even while it backs off from full passes over a
 * steady heap (engine.c): memory that an allocator keeps mapping and
 * unmapping then costs what is new, not a rescan of everything.
 */
bool dd_scan_fresh_regions(void)
{
	for (size_t i = 0; i < dd_region_count(); i++)
		if (dd_region_at(i)->passes < 2)
			return true;
	return false;
}

/*
 * Is a count of the mappings (all of /proc/self/maps) due at this pass
 * start? It costs about 0.4 us a mapping: milliseconds at 30,000, a fifth
 * of a second at 500,000, where a pass over 1 GiB takes about as long
 * (issue 11: a pass must not cost more with more mappings). So the count
 * is amortised: due once the time since the last one is 20 times what that
 * one cost (at most 5% of the time on counting), or 4 times when the
 * estimate is near the budget or the limit, where a stale one matters.
 * Meanwhile the estimate goes on from merges' own deltas (they only
 * overcount); what it misses is mappings the program adds itself, for at
 * most 20 counts' time.
 */
static bool recount_due(void)
{
	if (!eng.maps_counted_ns)
		return true;
	uint64_t since = dd_now_ns() - eng.maps_counted_ns, cost = eng.maps_count_cpu_ns;
	if (since >= 20 * cost)
		return true;
	long est = eng.maps_at_pass + eng.vmas_this_pass;
	long room = dd_feat.max_map_count - 256 - est;
	long left = (long)eng.vma_budget - (long)atomic_load(&dd_cnt.vmas_added);
	long near = (long)eng.vma_budget / 16 > 1024 ? (long)eng.vma_budget / 16 : 1024;
	return since >= 4 * cost && (room < near || left < near);
}

/* What one walk costs against a step's budget, in pages hashed: the pages
 * it hashed, 1/SKIP_COST_DIV for each other page it returned (skipped by
 * the smart scan, or merged: metadata only - its word, read in address
 * order, and its PTE in the walk: 64 skipped pages cost about one hashed
 * page since the smart scan stopped offering them to the unstable index,
 * and every step has a fixed cost: a descriptor check, a wake-up, a lock
 * round trip), a little for the call, and
 * with the /proc/self/pagemap fallback the entries it read (64 to a page).
 * PAGEMAP_SCAN skips what is absent inside the kernel: a terabyte with
 * nothing in it costs a call. A settled heap thus takes few steps per pass:
 * each step has a fixed cost (a sleep and a wake-up, a few system calls). */
#define WALK_COST 16
#define SKIP_COST_DIV 64

/*
 * Scan from *cursor for up to max_pages present pages (a pass over a huge
 * sparse region costs what is in it, and one step is as short over a
 * terabyte as over a megabyte); with fresh_only, of fresh regions only.
 * Returns true when the pass is complete. A pass starts with *cursor == 0.
 */
bool dd_scan_step(uintptr_t *cursor, size_t max_pages, long *merged, size_t *scanned,
		  bool fresh_only)
{
	dd_assert_held(&eng.lock);
	struct pass_ctx c = { 0 };
	size_t budget = max_pages;

	self_pid = getpid();
	if (*cursor == 0) {
		dd_unstable_reset();
		grp.nask = grp.npub = grp.nu = 0;   /* flushed at the end of a pass */
		eng.pass_gen++;
		/* the smart scan's clock counts full passes: a page of a region
		 * that fresh-only passes leave out must not miss its turn */
		sm.full = !fresh_only;
		if (sm.full) {
			sm.clock++;
			sm.aged_seen = 0;
			eng.budget_wait_pass = 0;
		}
	}
	if (*cursor == 0 && !fresh_only && recount_due()) {
		/* Recalibrate the VMA estimate from what the kernel says: the
		 * per-merge estimate (merge.c vma_delta) cannot see merges of
		 * adjacent mappings and overcounts. The count splits the total
		 * into ours (our memfd runs and the pieces they split off:
		 * dd_count_maps_ours) and the program's own, and the budget is
		 * sized again from the program's own (engine.c
		 * dd_engine_size_budget), with the limit read again: what the
		 * program adds shrinks our budget by several times as much,
		 * and the hard stop (merge.c budget_allows) holds the total
		 * below the limit whoever spends it. Not for a pass over fresh
		 * regions only, which may come every interval, and not at
		 * every pass (recount_due): the count reads all of
		 * /proc/self/maps. */
		uint64_t c0 = dd_thread_cpu_ns();
		long ours = 0, total = dd_count_maps_ours(&ours);
		eng.maps_count_cpu_ns = dd_thread_cpu_ns() - c0;
		eng.maps_counted_ns = dd_now_ns();
		if (total > 0) {
			long limit = dd_max_map_count_now();
			if (limit > 0)
				dd_feat.max_map_count = limit;
			eng.maps_at_pass = total;
			atomic_store(&dd_cnt.vmas_added, (uint64_t)ours);
			dd_engine_size_budget(total - ours);
			dd_merge_spares_keep();   /* for a give-back at the limit (merge.c) */
		}
		eng.vmas_this_pass = 0;
	}
	while (budget) {
		struct dd_region *r = NULL;
		/* first region ending above the cursor */
		for (size_t i = dd_region_lower(*cursor); i < dd_region_count(); i++) {
			struct dd_region *x = dd_region_at(i);
			if (!fresh_only || x->passes < 2) {
				r = x;
				break;
			}
		}
		if (!r) {
			group_flush(&c, true);
			if (eng.nbatch)
				c.merged += dd_merge_batch();
			dd_merge_free_scratch();
			dd_unstable_trim();   /* sized to what this pass used */
			dd_store_sweep();   /* orphaned canonical pages (store.c) */
			if (sm.full)
				aged_rebuild_if_stale();
			dd_store_seg_sweep();
			pthread_mutex_lock(&eng.gate);
			dd_removing_prune();
			pthread_mutex_unlock(&eng.gate);
			*cursor = 0;
			/* what waits on the budget, as this pass found it (a pass
			 * over fresh regions only adds to the next full one) */
			if (!fresh_only)
				atomic_store_explicit(&dd_cnt.budget_waiting, eng.budget_wait_pass,
						      memory_order_relaxed);
			DD_INC(full_passes, 1);
			*merged += c.merged;
			*scanned += c.scanned;
			DD_INC(pages_scanned, c.scanned);
			return true;
		}
		uintptr_t from = *cursor > r->start ? *cursor : r->start;
		uintptr_t rend = r->start + r->npages * DD_PAGE, to;
		c.r = r;
		c.found = 0;
		if (from == r->start)
			r->scan_gen = eng.pass_gen;
		size_t hashed0 = c.scanned;
		dd_meta_walk_begin();
		if (dd_present_walk(from, rend, budget, file_pages_possible(), on_present, &c, &to) == 0 &&
		    to > from)
			dd_meta_sweep(from, to);   /* what is gone forgets its checksum */
		else
			to = rend;   /* cannot walk it (or no progress): next pass */
		/* a whole pass over r (this pass started at or below it) */
		if (to == rend && r->passes < 2 && r->scan_gen == eng.pass_gen)
			r->passes++;
		/* the batch refers to addresses, not to r: flush before r can move */
		group_flush(&c, false);
		if (eng.nbatch)
			c.merged += dd_merge_batch();
		size_t hashed = c.scanned - hashed0;
		size_t cost = hashed + (c.found - hashed) / SKIP_COST_DIV + WALK_COST;
		if (!dd_feat.pagemap_scan)
			cost += (to - from) / DD_PAGE / 64;
		*cursor = to;
		budget -= cost < budget ? cost : budget;
	}
	dd_store_seg_sweep();   /* no batch names a slot now */
	*merged += c.merged;
	*scanned += c.scanned;
	DD_INC(pages_scanned, c.scanned);
	return false;
}
