/* SPDX-License-Identifier: MIT */
/*
 * scan.c - one pass over the registered regions: find present anonymous
 * pages, hash them, and choose merge candidates (ksm.c's scan loop).
 *
 * For each present anonymous page, in address order:
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

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "internal.h"

static const char zero_page[DD_PAGE] __attribute__((aligned(64)));
#define FRAGILE_CHUNK 32   /* pages read per process_vm_readv() */

uint64_t dd_hash_page(const void *p)
{
	uint64_t h = XXH3_64bits(p, DD_PAGE);
	if (dd_opt.test_hash_bits < 64)
		h &= (1ULL << dd_opt.test_hash_bits) - 1;
	return h ? h : 1;
}

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

static void visit_page(struct pass_ctx *c, uintptr_t a, const void *d)
{
	uint64_t h, *hash;
	uint32_t *slot;

	if (!dd_meta_visit(a, &hash, &slot))
		return;   /* no memory for its metadata: not a candidate */
	/* An anonymous page inside a file VMA of ours (a sharer copied it):
	 * UFFDIO_MOVE, our pin check, only works in anonymous VMAs, so it
	 * cannot be merged again safely. Leave it. */
	if (*slot == DD_SLOT_COWED)
		return;
	/* Present and anonymous. Was it merged before? Then a writer copied it. */
	if (*slot != DD_SLOT_NONE) {
		if (*slot == DD_SLOT_ZERO) {
			/* Faulted in again. A read does that too where the kernel
			 * has no shared zero page (pvm_no_zero_page): only a page
			 * that is no longer zero was written. */
			atomic_fetch_sub(&dd_cnt.zero_pages, 1);
			*slot = DD_SLOT_NONE;
			if (memcmp(d, zero_page, DD_PAGE))
				DD_INC(cow_breaks, 1);
		} else {
			dd_store_put(*slot);
			*slot = DD_SLOT_COWED;  /* still inside a file VMA */
			DD_INC(cow_breaks, 1);
		}
	}
	c->scanned++;
	/* VMA budget spent: only a zero page can still merge (it adds no
	 * mapping). Skip the rest before hashing (so no canonical page is
	 * written only to be dropped, and no stable match is tried): with the budget spent, a
	 * heap whose other duplicates could never merge was hashed whole on
	 * every pass, and its stable matches went to merge windows that
	 * write-protected them (a TLB shootdown each) only to find the
	 * budget spent - redis in the benchmark lost most of its GET rate to
	 * that. Its hash is forgotten: should the budget allow merges again,
	 * it starts over. */
	if (dd_merge_budget_spent() &&
	    ((((const uint64_t *)d)[0] | ((const uint64_t *)d)[1]) || memcmp(d, zero_page, DD_PAGE))) {
		*hash = 0;
		DD_INC(skipped_budget, 1);
		return;
	}
	h = dd_hash_page(d);
	if (h != *hash) {
		*hash = h;
		DD_INC(skipped_volatile, 1);
		return;
	}
	DD_INC(candidates, 1);
	if (h == eng.zero_hash && memcmp(d, zero_page, DD_PAGE) == 0) {
		if (dd_opt.zero_pages)
			batch_add(c, a, DD_SLOT_ZERO);
		return;
	}
	bool collided = false;
	uint32_t s = dd_stable_lookup(h, d, &collided);
	if (s) {
		batch_add(c, a, s);
		return;
	}
	uintptr_t b = dd_unstable_take(h, d, &collided);
	if (collided)
		DD_INC(skipped_mismatch, 1);   /* a hash matched, the content did not */
	if (b) {
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
	dd_unstable_insert(h, a);
}

static void on_present(void *ctx, uintptr_t start, uintptr_t end, unsigned flags)
{
	struct pass_ctx *c = ctx;

	c->found += (end - start) / DD_PAGE;
	if (flags & (DD_PG_FILE | DD_PG_ZERO))
		return;   /* merged by us, or the shared zero page: nothing to gain */
	if (!c->r->fragile) {
		for (uintptr_t a = start; a < end; a += DD_PAGE)
			visit_page(c, a, (const void *)a);
		return;
	}
	/* A fragile region (the preload library's: libc may shrink or unmap
	 * it behind any interposer's back, e.g. glibc trimming the brk heap)
	 * is read through process_vm_readv(), which fails where a direct read
	 * would kill the process. What is gone is simply not scanned. */
	static char *buf;
	if (!buf && !(buf = dd_vm_alloc(FRAGILE_CHUNK * DD_PAGE)))
		return;
	for (uintptr_t a = start; a < end;) {
		size_t n = (end - a) / DD_PAGE < FRAGILE_CHUNK ? (end - a) / DD_PAGE : FRAGILE_CHUNK;
		struct iovec l = { buf, n * DD_PAGE }, rv = { (void *)a, n * DD_PAGE };
		ssize_t got = process_vm_readv(getpid(), &l, 1, &rv, 1, 0);
		if (got < (ssize_t)DD_PAGE)
			return;
		for (size_t k = 0; k < (size_t)got / DD_PAGE; k++)
			visit_page(c, a + k * DD_PAGE, buf + k * DD_PAGE);
		if ((size_t)got < n * DD_PAGE)
			return;
		a += n * DD_PAGE;
	}
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
 * it returned, a little for the call, and with the /proc/self/pagemap
 * fallback the entries it read (64 to a page). PAGEMAP_SCAN skips what is
 * absent inside the kernel: a terabyte with nothing in it costs a call. */
#define WALK_COST 16

/*
 * Scan from *cursor for up to max_pages present pages (a pass over a huge
 * sparse region costs what is in it, and one step is as short over a
 * terabyte as over a megabyte); with fresh_only, of fresh regions only.
 * Returns true when the pass is complete. A pass starts with *cursor == 0.
 */
bool dd_scan_step(uintptr_t *cursor, size_t max_pages, long *merged, size_t *scanned,
		  bool fresh_only)
{
	struct pass_ctx c = { 0 };
	size_t budget = max_pages;

	if (*cursor == 0) {
		dd_unstable_reset();
		eng.pass_gen++;
	}
	if (*cursor == 0 && !fresh_only && recount_due()) {
		/* Recalibrate the VMA estimate from what the kernel says: the
		 * per-merge estimate (merge.c vma_delta) cannot see merges of
		 * adjacent mappings and overcounts. Mappings the application
		 * added since dedup_init() count against the budget too: the
		 * budget protects the process, whoever spends it. Not for a
		 * pass over fresh regions only, which may come every interval,
		 * and not at every pass (recount_due): the count reads all of
		 * /proc/self/maps. */
		uint64_t c0 = dd_thread_cpu_ns();
		eng.maps_at_pass = dd_count_maps(NULL, NULL);
		eng.maps_count_cpu_ns = dd_thread_cpu_ns() - c0;
		eng.maps_counted_ns = dd_now_ns();
		long added = eng.maps_at_pass - eng.maps_at_init;
		atomic_store(&dd_cnt.vmas_added, (uint64_t)(added > 0 ? added : 0));
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
			if (eng.nbatch)
				c.merged += dd_merge_batch();
			dd_merge_free_scratch();
			pthread_mutex_lock(&eng.gate);
			dd_removing_prune();
			pthread_mutex_unlock(&eng.gate);
			*cursor = 0;
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
		dd_meta_walk_begin();
		if (dd_present_walk(from, rend, budget, on_present, &c, &to) == 0 && to > from)
			dd_meta_sweep(from, to);   /* what is gone forgets its checksum */
		else
			to = rend;   /* cannot walk it (or no progress): next pass */
		/* a whole pass over r (this pass started at or below it) */
		if (to == rend && r->passes < 2 && r->scan_gen == eng.pass_gen)
			r->passes++;
		/* the batch refers to addresses, not to r: flush before r can move */
		if (eng.nbatch)
			c.merged += dd_merge_batch();
		size_t cost = c.found + WALK_COST;
		if (!dd_feat.pagemap_scan)
			cost += (to - from) / DD_PAGE / 64;
		*cursor = to;
		budget -= cost < budget ? cost : budget;
	}
	*merged += c.merged;
	*scanned += c.scanned;
	DD_INC(pages_scanned, c.scanned);
	return false;
}
