/* SPDX-License-Identifier: MIT */
/*
 * discard.c - what the uffd reader needs to keep merged pages anonymous in
 * behaviour when the application discards them.
 *
 * A merged page is a MAP_PRIVATE mapping of a memfd page. After
 * madvise(MADV_DONTNEED) a private file mapping reads the file again, where
 * anonymous memory reads zeros - and allocators rely on the zeros. So merged
 * runs are registered with our userfaultfd in MINOR mode: the kernel tells
 * us (UFFD_EVENT_REMOVE) before it zaps them, and the next access to a zapped
 * page is a minor fault that we resolve with zeros instead of the memfd
 * page. Two interval sets remember what is needed for that:
 *
 *   merged    address ranges where we placed canonical mappings (only
 *             REMOVE events inside them matter);
 *   discard   pages of those ranges the application discarded: a minor
 *             fault there gets a zero page, anywhere else the canonical page
 *             (UFFDIO_CONTINUE). A mark stays after the fault: the zero page
 *             we put there is anonymous, and an anonymous page in a merged
 *             run becomes empty again only by another discard (a REMOVE
 *             might be read before the zap it announces, and a fault taken
 *             in between must not use up the mark the zap still needs).
 *             Placing a new run clears the marks under it.
 *   refilled  marked pages that the reader filled with zeros since the
 *             last REMOVE that named them. A marked page that is present
 *             and not refilled may still be the old page whose zap is to
 *             come: unmerging (merge.c) hands it back as zeros.
 *
 * DOC: Discards racing with a merge
 *
 * The reader acknowledges a REMOVE by reading it, and the thread that called
 * madvise() zaps only when it runs again (tests/probe/probe_remove_zap_late.c).
 * In between, the old page is still there. If the merger moved it out then
 * and placed a canonical page, the zap would hit the canonical page and the
 * next fault would read it again where the application expects zeros. So
 * anonymous pages named by a REMOVE are not mergeable until we know the zap
 * is behind them. Three sets of addresses (outside merged runs) say so:
 *
 *   unfenced  named by a REMOVE, nothing known yet: never merged. The
 *             merger fences them at its next batch (dd_removing_fence):
 *             it write-protects what is present there. Not at read time:
 *             until the madvise caller has run, UFFDIO_WRITEPROTECT fails
 *             with EAGAIN.
 *   fenced    write-protected after the REMOVE. The zap drops the uffd-wp
 *             bit and a page faulted in afresh comes without it, so a page
 *             present without the bit is a new one (mergeable), with the
 *             bit it may still be the old one (not mergeable), and an empty
 *             page is past the zap. A page of zeros needs no fence: zeros
 *             are what the zap leaves, and what is written into it after
 *             the REMOVE is ordered after the zap.
 *   sticky    fenced pages the application wrote into (our reader lifted
 *             the protection): the old bytes around the write may still be
 *             there, and the bit no longer tells. Mergeable once seen empty.
 *
 * Pages are dropped from the sets when found mergeable or empty; at the end
 * of each pass the sets are pruned the same way (dd_removing_prune).
 *
 * Locking: eng.gate, held by the reader (events and faults) and by the
 * merger (which clears a range before it places a new mapping there).
 */
#include <string.h>

#include "internal.h"

struct ivset {
	uintptr_t (*iv)[2];   /* sorted, disjoint, non-adjacent [start, end) */
	size_t n, cap;
};

static struct ivset merged, discard, refilled, unfenced, fenced, sticky;
static struct ivset fork_snap;   /* discard, as of the last fork() */

/* first interval whose end is above a */
static size_t iv_lower(const struct ivset *s, uintptr_t a)
{
	size_t lo = 0, hi = s->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (s->iv[mid][1] <= a)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int iv_reserve(struct ivset *s, size_t extra)
{
	if (s->n + extra <= s->cap)
		return 0;
	size_t ncap = s->cap ? s->cap * 2 : 256;
	while (ncap < s->n + extra)
		ncap *= 2;
	void *p = dd_vm_grow(s->iv, s->cap * sizeof(*s->iv), ncap * sizeof(*s->iv));
	if (!p)
		return -ENOMEM;
	s->iv = p;
	s->cap = ncap;
	return 0;
}

static int iv_add(struct ivset *s, uintptr_t a, uintptr_t b)
{
	if (a >= b)
		return 0;
	/* intervals that overlap or touch [a, b) */
	size_t i = iv_lower(s, a ? a - 1 : 0), j = i;
	while (j < s->n && s->iv[j][0] <= b)
		j++;
	if (i < j) {
		if (s->iv[i][0] < a)
			a = s->iv[i][0];
		if (s->iv[j - 1][1] > b)
			b = s->iv[j - 1][1];
		s->iv[i][0] = a;
		s->iv[i][1] = b;
		memmove(&s->iv[i + 1], &s->iv[j], (s->n - j) * sizeof(*s->iv));
		s->n -= j - i - 1;
		return 0;
	}
	if (iv_reserve(s, 1) < 0)
		return -ENOMEM;
	memmove(&s->iv[i + 1], &s->iv[i], (s->n - i) * sizeof(*s->iv));
	s->iv[i][0] = a;
	s->iv[i][1] = b;
	s->n++;
	return 0;
}

static int iv_remove(struct ivset *s, uintptr_t a, uintptr_t b)
{
	size_t i = iv_lower(s, a);
	while (i < s->n && s->iv[i][0] < b) {
		uintptr_t lo = s->iv[i][0], hi = s->iv[i][1];
		if (lo < a && hi > b) {            /* split in two */
			if (iv_reserve(s, 1) < 0)
				return -ENOMEM;
			memmove(&s->iv[i + 1], &s->iv[i], (s->n - i) * sizeof(*s->iv));
			s->n++;
			s->iv[i][1] = a;
			s->iv[i + 1][0] = b;
			return 0;
		}
		if (lo < a) {
			s->iv[i][1] = a;
			i++;
		} else if (hi > b) {
			s->iv[i][0] = b;
			return 0;
		} else {
			memmove(&s->iv[i], &s->iv[i + 1], (s->n - i - 1) * sizeof(*s->iv));
			s->n--;
		}
	}
	return 0;
}

static bool iv_contains(const struct ivset *s, uintptr_t a)
{
	size_t i = iv_lower(s, a);
	return i < s->n && s->iv[i][0] <= a;
}

/* The merger places canonical mappings at [a, b): forget old discards. */
int dd_discard_merged(uintptr_t a, uintptr_t b)
{
	dd_assert_held(&eng.gate);
	DD_TRACE('D', a, b - a, 0);
	iv_remove(&discard, a, b);
	iv_remove(&refilled, a, b);
	return iv_add(&merged, a, b);
}

/* Move what s holds in [from, from + len) to [to, to + len), which loses
 * what it held (the ranges do not overlap: mremap refuses that). */
static void iv_move(struct ivset *s, uintptr_t from, uintptr_t to, size_t len)
{
	size_t i;

	iv_remove(s, to, to + len);
	while ((i = iv_lower(s, from)) < s->n && s->iv[i][0] < from + len) {
		uintptr_t lo = s->iv[i][0] > from ? s->iv[i][0] : from;
		uintptr_t hi = s->iv[i][1] < from + len ? s->iv[i][1] : from + len;
		if (iv_remove(s, lo, hi) < 0 || iv_add(s, lo - from + to, hi - from + to) < 0) {
			dd_err("out of memory tracking discarded pages");
			return;
		}
	}
}

/*
 * A REMAP event: [from, from + len) moved to [to, ...) with its page table
 * (the program's mremap of merged pieces; preload/remap.c moves a merged
 * range piece by piece). What the sets say about those pages goes with them:
 * a discarded merged page still reads zeros at its new address, and a page
 * there that was never discarded reads its canonical page. Read before any
 * fault at the new address (the mremap waits for its event to be read).
 */
void dd_discard_moved(uintptr_t from, uintptr_t to, size_t len)
{
	dd_assert_held(&eng.gate);
	struct ivset *sets[] = { &merged, &discard, &refilled, &unfenced, &fenced, &sticky };

	if (from == to || !len)
		return;
	for (size_t k = 0; k < DD_ARRAY_SIZE(sets); k++)
		iv_move(sets[k], from, to, len);
}

/* Anonymous [a, b) is being discarded. Whatever was fenced or sticky there
 * starts over: the zap to come erases what they were about. */
static void announce(uintptr_t a, uintptr_t b)
{
	iv_remove(&fenced, a, b);
	iv_remove(&sticky, a, b);
	if (iv_add(&unfenced, a, b) < 0)
		dd_err("out of memory tracking discarded pages");
}

/*
 * DOC: MADV_FREE raises REMOVE events too
 *
 * The kernel announces MADV_FREE with the same UFFD_EVENT_REMOVE as
 * MADV_DONTNEED, VMA by VMA, before it looks at the VMA - and on a merged
 * piece (a private file mapping) it then fails with EINVAL, having freed
 * nothing there. A merged page marked discarded by such an event read zeros
 * at its next fault and was handed back as zeros by an unmerge: the
 * program's data, lost (tests/preload/pl_calls.c). MADV_FREE never frees a
 * page of a merged piece (a page copied on write in it is in a file VMA
 * too), so its events mark nothing there; elsewhere they are what they
 * were (not mergeable until the zap is known to be behind them). The
 * preload library's madvise() says which calls are MADV_FREE
 * (dd_discard_free_begin/end); the event, read while the call waits for it,
 * finds the call in this table (the entry stays until the reader has
 * handled it: seen gone too early, it marked - pl_calls, 1 run in 8).
 * An entry is read under its sequence count: read as lo of one call and hi
 * of the next one to take the slot, it could cover another thread's
 * MADV_DONTNEED, whose merged pages would then not be marked and read their
 * old content (by reading the code, chasing the one pl_calls failure left
 * with four threads, 2026-12-08).
 * Limit: a raw MADV_FREE system call that no interposer sees still marks.
 */
#define FREEING_MAX 16
static struct {
	_Atomic uint64_t seq;       /* odd while lo and hi are one call's */
	_Atomic uintptr_t lo, hi;   /* lo 0: a free entry; 1: being taken */
} freeing[FREEING_MAX];

int dd_discard_free_begin(uintptr_t lo, uintptr_t hi)
{
	for (int k = 0; k < FREEING_MAX; k++) {
		uintptr_t zero = 0;
		if (!atomic_compare_exchange_strong(&freeing[k].lo, &zero, 1))
			continue;
		atomic_store(&freeing[k].hi, hi);
		atomic_store(&freeing[k].lo, lo > 1 ? lo : 2);
		atomic_fetch_add(&freeing[k].seq, 1);   /* odd: in use */
		return k;
	}
	return -1;   /* full: its events mark, as before */
}

/* After the call: its events were read (the kernel waits for that) but may
 * not be handled yet. The reader reads them only while it drains (engine.c:
 * eng.drain_gen odd) and handles them in the same drain, so once that count
 * is even or has moved on they are handled. Not the gate: the merger holds
 * it for whole steps, and waiting for it made each MADV_FREE cost about
 * 1 ms (0.1 ms before). In a guarded fork()ed child the guard reads and
 * handles under its own lock. */
void dd_discard_free_end(int k)
{
	if (k < 0)
		return;
	if (__atomic_load_n(&eng.running, __ATOMIC_ACQUIRE)) {
		uint64_t g = atomic_load(&eng.drain_gen);
		/* at most about 100 ms: the reader may be stopped, or wait for
		 * this very thread (a signal handler's madvise) */
		for (int i = 0; (g & 1) && atomic_load(&eng.drain_gen) == g && i < 100000; i++)
			sched_yield();
	} else {
		dd_child_events_handled();
	}
	atomic_fetch_add(&freeing[k].seq, 1);   /* even: lo and hi no longer say */
	atomic_store(&freeing[k].lo, 0);
}

/* A fork()ed child: calls that other threads had under way are not its
 * own (those threads are not there): their entries would keep its
 * discards unmarked. */
void dd_discard_free_atfork_child(void)
{
	for (int k = 0; k < FREEING_MAX; k++) {
		atomic_store(&freeing[k].seq, 0);
		atomic_store(&freeing[k].lo, 0);
	}
}

bool dd_discard_freeing(uintptr_t a, uintptr_t b)
{
	for (int k = 0; k < FREEING_MAX; k++) {
		uint64_t s = atomic_load(&freeing[k].seq);
		if (!(s & 1))
			continue;
		uintptr_t lo = atomic_load(&freeing[k].lo), hi = atomic_load(&freeing[k].hi);
		if (atomic_load(&freeing[k].seq) == s && lo <= a && b <= hi)
			return true;
	}
	return false;
}

/*
 * A REMOVE event for [a, b): the merged pages in it are being discarded, the
 * others are not mergeable until the zap is known to be behind them. From
 * MADV_FREE: nothing merged is discarded (above).
 */
void dd_discard_removed(uintptr_t a, uintptr_t b)
{
	dd_assert_held(&eng.gate);
	uintptr_t gap = a;

	if (dd_merge_is_scratch(a, b))
		return;   /* our own scratch area */
	if (dd_discard_freeing(a, b)) {
		announce(a, b);
		return;
	}
	for (size_t i = iv_lower(&merged, a); i < merged.n && merged.iv[i][0] < b; i++) {
		uintptr_t lo = merged.iv[i][0] > a ? merged.iv[i][0] : a;
		uintptr_t hi = merged.iv[i][1] < b ? merged.iv[i][1] : b;
		if (iv_add(&discard, lo, hi) < 0)
			dd_err("out of memory tracking discarded pages");
		iv_remove(&refilled, lo, hi);   /* a zap is announced again */
		if (lo > gap)
			announce(gap, lo);
		gap = hi;
	}
	if (gap < b)
		announce(gap, b);
}

/* A minor fault at page a: was it discarded? (The mark stays: see above.) */
bool dd_discard_marked(uintptr_t a)
{
	return iv_contains(&discard, a);
}

/* The reader filled marked page a with zeros (a fault after its zap). */
void dd_discard_refilled(uintptr_t a)
{
	if (iv_contains(&discard, a) && iv_add(&refilled, a, a + DD_PAGE) < 0)
		dd_err("out of memory tracking discarded pages");
}

/* Marked, and not filled since: the zap of its last REMOVE may be to come. */
bool dd_discard_pending(uintptr_t a)
{
	return iv_contains(&discard, a) && !iv_contains(&refilled, a);
}

/*
 * fork(): the child keeps reading zeros where its parent discarded merged
 * pages (child.c), so it needs the marks as they were when it was forked.
 * Its own copy of `discard` may be torn (the reader does not stop for a
 * fork: engine.c, prefork()), so prefork() copies the set here under
 * eng.gate, after every REMOVE read so far has been recorded. The child
 * takes them once (dd_discard_forked: sorted, disjoint intervals).
 */
int dd_discard_fork_snapshot(void)
{
	fork_snap.n = 0;
	if (iv_reserve(&fork_snap, discard.n) < 0)
		return -ENOMEM;
	if (discard.n)   /* both may be NULL while empty */
		memcpy(fork_snap.iv, discard.iv, discard.n * sizeof(*discard.iv));
	fork_snap.n = discard.n;
	return 0;
}

size_t dd_discard_forked(const uintptr_t (**iv)[2])
{
	size_t n = fork_snap.n;
	/* Once: a grandchild must not take the marks of a fork two
	 * generations back for its parent's (prefork refills this only
	 * where an engine runs). */
	fork_snap.n = 0;
	*iv = (const uintptr_t (*)[2])fork_snap.iv;
	return n;
}

/* ---- discards racing with a merge (see "DOC: Discards racing...") ---- */

/*
 * Fence what can be fenced now; returns the number of ranges left for later.
 * The reader calls it right after reading REMOVEs (retrying briefly: the
 * sooner the fence, the fewer fresh pages it catches - those then wait to
 * be seen empty), the merger at the start of each batch. Write protection
 * covers present and swapped-out pages alike; empty PTEs keep no mark
 * (probe_remove_zap_late.c).
 */
size_t dd_removing_fence(void)
{
	dd_assert_held(&eng.gate);
	for (size_t i = 0; i < unfenced.n;) {
		uintptr_t lo = unfenced.iv[i][0], hi = unfenced.iv[i][1];
		int r = dd_uffd_wp(eng.uffd, lo, hi - lo, true);
		DD_TRACE('f', lo, hi - lo, r);
		if (r == -EAGAIN || (r < 0 && !dd_fd_intact(eng.uffd))) {
			/* an event is pending, or the program took the number
			 * (fds.c) and the reader installs the uffd again: next
			 * batch (the range stays unmergeable meanwhile) */
			i++;
			continue;
		}
		iv_remove(&unfenced, lo, hi);
		if (r < 0)        /* no longer registered with us: nothing to merge there */
			dd_debug("discarded range %#lx-%#lx left (errno %d)", (unsigned long)lo,
				 (unsigned long)hi, -r);
		else if (iv_add(&fenced, lo, hi) < 0)
			dd_err("out of memory tracking discarded pages");
	}
	return unfenced.n;
}

/* Is page a, in state st (DD_PTE_*), known to be past a pending zap? Drops
 * it from the sets if so. */
static bool settle(uintptr_t a, uint8_t st)
{
	bool past = !(st & (DD_PTE_PRESENT | DD_PTE_SWAP)) || (st & DD_PTE_ZERO) ||
		    (!(st & (DD_PTE_WP | DD_PTE_SWAP)) && !iv_contains(&sticky, a));
	if (past) {
		iv_remove(&fenced, a, a + DD_PAGE);
		iv_remove(&sticky, a, a + DD_PAGE);
	}
	return past;
}

/* Merger: may anonymous page a be merged now? */
bool dd_removing_mergeable(uintptr_t a)
{
	dd_assert_held(&eng.gate);
	uint8_t st;

	if (dd_unlikely(dd_opt.test_unsafe_no_discard_fence))
		return true;   /* test hook: tests/core.cmake shows test_remove_race failing */
	if (iv_contains(&unfenced, a))
		return false;
	if (!iv_contains(&fenced, a) && !iv_contains(&sticky, a))
		return true;
	if (dd_pte_states(a, 1, &st) < 0)
		return false;
	DD_TRACE('m', a, DD_PAGE, st | (iv_contains(&sticky, a) ? 0x100 : 0));
	if (settle(a, st))
		return st & DD_PTE_PRESENT;
	/* Fenced and still protected: the old page, or one faulted in by a
	 * read after the zap. All zeros, it is what the zap leaves either way
	 * (and protected, it cannot change before our window). */
	if ((st & DD_PTE_PRESENT) && !iv_contains(&sticky, a) && dd_page_is_zero(a)) {
		iv_remove(&fenced, a, a + DD_PAGE);
		return true;
	}
	return false;
}

/* Merger, inside a window: was page a named by a REMOVE since the batch
 * started? (dd_removing_mergeable() left no such page in the sets.) */
bool dd_removing_named(uintptr_t a)
{
	return iv_contains(&unfenced, a) || iv_contains(&fenced, a) || iv_contains(&sticky, a);
}

/* Reader: the application writes into page a (a write-protect fault that
 * we are about to resolve, so the page does not hold the write yet). Into
 * a page of zeros, the write leaves zeros and that write: what the zap
 * would leave, then the write. (A read of discarded memory maps the zero
 * page, or on some machines a fresh page of zeros: this covers both.) */
void dd_removing_written(uintptr_t a)
{
	if (!iv_contains(&fenced, a))
		return;
	iv_remove(&fenced, a, a + DD_PAGE);
	bool zero = dd_page_is_zero(a);
	DD_TRACE('s', a, DD_PAGE, zero);
	if (zero)
		return;
	if (iv_add(&sticky, a, a + DD_PAGE) < 0)
		dd_err("out of memory tracking discarded pages");
}

/* dedup_unregister(): [a, b) lost its uffd-wp bits; fence again (a fence
 * fails and forgets the range if it stays unregistered). */
void dd_removing_unregistered(uintptr_t a, uintptr_t b)
{
	for (size_t i = iv_lower(&fenced, a); i < fenced.n && fenced.iv[i][0] < b; i++) {
		uintptr_t lo = fenced.iv[i][0] > a ? fenced.iv[i][0] : a;
		uintptr_t hi = fenced.iv[i][1] < b ? fenced.iv[i][1] : b;
		if (iv_add(&unfenced, lo, hi) < 0)
			dd_err("out of memory tracking discarded pages");
	}
	iv_remove(&fenced, a, b);
}

/* Pages of s past their zap leave it. An empty page is (settle()): the
 * empty stretches go at once, found without reading an entry per page - a
 * discard of a whole sparse reservation names a terabyte of them. */
static void prune(struct ivset *s)
{
	uint8_t st[512];
	uintptr_t pos = 0;

	for (;;) {
		size_t i = iv_lower(s, pos);
		if (i >= s->n)
			return;
		uintptr_t lo = s->iv[i][0] > pos ? s->iv[i][0] : pos, hi = s->iv[i][1];
		uintptr_t a, b;
		if (dd_first_mapped(lo, hi, &a, &b) < 0)
			return;
		if (a > lo)
			iv_remove(s, lo, a);
		if (a >= hi) {
			pos = hi;
			continue;
		}
		size_t n = (b - a) / DD_PAGE;
		if (n > DD_ARRAY_SIZE(st))
			n = DD_ARRAY_SIZE(st);
		if (dd_pte_states(a, n, st) < 0)
			return;
		for (size_t k = 0; k < n; k++)
			settle(a + k * DD_PAGE, st[k]);
		pos = a + n * DD_PAGE;
	}
}

/* End of a pass: forget the pages that are past their zap. */
void dd_removing_prune(void)
{
	prune(&fenced);
	prune(&sticky);
}

/* Ranges announced and not fenced yet (tests wait for 0). */
size_t dd_removing_unfenced(void)
{
	return unfenced.n;
}

/* [a, b) is anonymous memory again (unmerged): forget it. */
void dd_discard_unmerged(uintptr_t a, uintptr_t b)
{
	iv_remove(&merged, a, b);
	iv_remove(&discard, a, b);
	iv_remove(&refilled, a, b);
}

/* s minus the sorted, disjoint ranges d[0..m), in one pass (a new array:
 * cutting may split intervals). -ENOMEM leaves s as it was. */
static int iv_subtract(struct ivset *s, const uintptr_t (*d)[2], size_t m)
{
	if (!s->n || !m)
		return 0;
	size_t cap = s->n + m, n = 0, j = 0;
	uintptr_t (*out)[2] = dd_vm_alloc(cap * sizeof(*out));
	if (!out)
		return -ENOMEM;
	for (size_t i = 0; i < s->n; i++) {
		uintptr_t cur = s->iv[i][0], hi = s->iv[i][1];
		while (j < m && d[j][1] <= cur)
			j++;
		for (size_t k = j; k < m && d[k][0] < hi; k++) {
			if (d[k][0] > cur) {
				out[n][0] = cur;
				out[n++][1] = d[k][0];
			}
			if (d[k][1] > cur)
				cur = d[k][1];
			if (cur >= hi)
				break;
		}
		if (cur < hi) {
			out[n][0] = cur;
			out[n++][1] = hi;
		}
	}
	dd_vm_free(s->iv, s->cap * sizeof(*s->iv));
	s->iv = out;
	s->n = n;
	s->cap = cap;
	return 0;
}

/* Many ranges (sorted, disjoint) are anonymous memory again: one pass over
 * each set, not one memmove per range (16k unmerged runs made that
 * quadratic). */
void dd_discard_unmerged_many(const uintptr_t (*d)[2], size_t m)
{
	struct ivset *sets[] = { &merged, &discard, &refilled };
	for (size_t k = 0; k < DD_ARRAY_SIZE(sets); k++)
		if (iv_subtract(sets[k], d, m) < 0)
			for (size_t i = 0; i < m; i++)
				iv_remove(sets[k], d[i][0], d[i][1]);
}

/* Is page a inside a range where we placed a merged run? */
bool dd_discard_in_merged(uintptr_t a)
{
	return iv_contains(&merged, a);
}

void dd_discard_fini(void)
{
	dd_vm_free(merged.iv, merged.cap * sizeof(*merged.iv));
	dd_vm_free(discard.iv, discard.cap * sizeof(*discard.iv));
	dd_vm_free(refilled.iv, refilled.cap * sizeof(*refilled.iv));
	dd_vm_free(unfenced.iv, unfenced.cap * sizeof(*unfenced.iv));
	dd_vm_free(fenced.iv, fenced.cap * sizeof(*fenced.iv));
	dd_vm_free(sticky.iv, sticky.cap * sizeof(*sticky.iv));
	dd_vm_free(fork_snap.iv, fork_snap.cap * sizeof(*fork_snap.iv));
	memset(&merged, 0, sizeof(merged));
	memset(&discard, 0, sizeof(discard));
	memset(&refilled, 0, sizeof(refilled));
	memset(&unfenced, 0, sizeof(unfenced));
	memset(&fenced, 0, sizeof(fenced));
	memset(&sticky, 0, sizeof(sticky));
	memset(&fork_snap, 0, sizeof(fork_snap));
}
