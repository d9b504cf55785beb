/* SPDX-License-Identifier: MIT */
/*
 * merge.c - the merge protocol: where a page gets replaced.
 *
 * DOC: Overview
 *
 * A candidate page A (anonymous, private, registered with our userfaultfd in
 * write-protect mode) is to be replaced by a mapping of canonical page C
 * (a memfd slot, mapped MAP_PRIVATE) or by nothing at all (a zero page: an
 * empty PTE reads as zeros and a write gets a fresh page). The scanner's hash
 * match is only a hint. A batch of candidates is sorted by address and cut
 * into windows of contiguous pages; each window goes through these steps
 * while we hold eng.gate (see internal.h):
 *
 *  1. Write-protect the window (UFFDIO_WRITEPROTECT). From here on a user-
 *     or kernel-mode write to A blocks in the kernel and waits for us (our
 *     uffd handles kernel faults, so read(2) into A waits instead of failing).
 *  2. Compare every page of the window with its target, byte for byte.
 *     A page that differs is dropped (un-protected at the end).
 *  3. Register the window MISSING|WP (a re-registration, same uffd). Once we
 *     move a page out, its PTE is empty; in a WP-only range an access to an
 *     empty PTE silently maps zeros, with MISSING it waits for us.
 *     (Step 2 is done before this one on purpose: reading an empty PTE in a
 *     MISSING range would block this very thread.)
 *  4. Move the pages out to our scratch area S with UFFDIO_MOVE. This is the
 *     pin check that write protection cannot give: the kernel refuses with
 *     EBUSY a page that is pinned (FOLL_PIN: O_DIRECT in flight, io_uring
 *     fixed buffers; a device could still write into it after we replaced
 *     the mapping) or not exclusively ours (shared copy-on-write with a
 *     forked child). Such pages stay in place and are counted as pinned.
 *     UFFDIO_MOVE also fails with EAGAIN while a non-cooperative event is
 *     pending, and when the VMA is no longer the one we registered.
 *  5. Compare again, now the copy in S: nobody but us can reach S, so this
 *     comparison is final. (A device write that landed between step 2 and
 *     the unpin is caught here.) A page that differs is moved back.
 *  6. Replace: each run of moved pages with contiguous slots becomes one
 *     MAP_PRIVATE mapping of the canonical slots, registered MINOR|MISSING
 *     (see "Placing a merged run"); zero targets need nothing, their PTE
 *     is already empty.
 *  7. Restore: unregister and re-register WP-only what is still anonymous
 *     (a registration cannot drop MISSING), un-protect any dropped page
 *     that is left, and UFFDIO_WAKE the window: a writer that blocked on A retries on the new mapping and the
 *     kernel gives it a private copy of C; a reader that blocked on an empty
 *     PTE reads C or zeros.
 *
 * Why the gate: between steps 4 and 6 the application must not discard A
 * (madvise MADV_DONTNEED/FREE/REMOVE), or we would map C where it expects
 * zeros. Those calls raise UFFD_EVENT_REMOVE before the kernel zaps, and the
 * caller waits until the event is read; the reader reads only under the
 * gate. None of the calls in steps 1-7 raises an event (we do not ask for
 * UNMAP events) except the mremap of step 6, done outside the gate, so
 * holding the gate never waits on the reader.
 *
 * The gate covers discards announced while a window is open. A discard
 * announced before (its REMOVE read) may still have its zap ahead of it:
 * the madvise() caller zaps when it runs again, and if that is after step 6
 * the zap lands on C, whose next fault reads C again instead of zeros. Such
 * pages are left out of batches until the zap is known to be behind them
 * (discard.c, "Discards racing with a merge"), and a REMOVE read while we
 * let the reader run inside a window drops the pages it names from the
 * window: they stay empty, as the discard leaves them (events_in_window).
 *
 * Leaving the gate with a page in S: un-protecting or moving back fails with
 * EAGAIN while an event is pending, and the pending event cannot be read
 * while we hold the gate. Un-protecting can simply be retried after letting
 * the reader run. Moving back is the one delicate case: the page's content
 * is in S and its address is empty. We "park" the address (the reader will
 * not resolve faults on it), release the gate, and when we come back we look
 * at the events that were read meanwhile: a REMOVE over the address means
 * the application discarded the page (leave it empty: it reads zeros, as it
 * should); a REMAP moved it (move back to the new address).
 *
 * Placing a merged run: a merged page is a private file mapping, and after
 * madvise(MADV_DONTNEED) such a mapping reads the file again, where the
 * application expects zeros. So merged runs are registered MINOR with our
 * uffd: a discard raises UFFD_EVENT_REMOVE (before the zap), and the next
 * access is a minor fault that the reader resolves with zeros (discard.c).
 * MISSING too: once every page of a slot's mappings has been copied on
 * write, the slot is freed and its memfd page punched (or reused for other
 * content) while our mapping still covers that offset. If such a page is
 * then discarded, a fault must not read the file: without a page there the
 * kernel would quietly insert a new zero page into our memfd, shared with
 * the next content stored in that slot (test_hammer_dontneed caught a
 * page that read zeros, then another page's content). With MISSING the
 * reader resolves it with zeros, as anonymous memory would read.
 *
 * The run must be registered from the instant it appears at A: mapped at A
 * first and registered after, a discard and a read in between would read
 * the canonical page (no event; test_hammer_dontneed caught that too). So
 * (place_run) the run is mapped at a fresh address T, registered there,
 * and moved over A with mremap. Moving a registered VMA raises
 * UFFD_EVENT_REMAP and waits for the reader, so the gate is released for
 * the mremap; the window stays parked, and discard marks for the run are
 * armed before (a REMOVE read meanwhile marks its pages). The run arrives
 * with empty PTEs (an access faults to the reader, who waits for the
 * gate), and UFFDIO_CONTINUE then maps every page not marked discarded.
 * No page tables move, and never MAP_POPULATE: it would copy every page.
 *
 * Known limits (see README "Limits"): we do not see munmap() or mmap(MAP_FIXED)
 * by the application as events; the API asks the caller to dedup_unregister()
 * first and the preload library interposes those calls. fork() is fenced by
 * a pthread_atfork() handler that takes the gate.
 *
 * Locking: eng.lock held by the caller; eng.gate taken here.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "internal.h"
#include "uapi.h"

enum {
	IT_LIVE,        /* protected, equal so far */
	IT_DROP_WP,     /* dropped, still in place and write-protected */
	IT_MOVED,       /* in S, verified */
	IT_DONE,        /* merged */
	IT_GONE,        /* dropped, nothing to undo */
};

static const char zero_page[DD_PAGE] __attribute__((aligned(64)));

static const void *target_page(uint32_t target)
{
	return target == DD_SLOT_ZERO ? zero_page : dd_store_page(target - 1);
}

/* Page i of this batch's part of S. S is used as a ring: the pages moved out
 * are freed only when it wraps, which amortises the madvise (a REMOVE event
 * and a TLB shootdown) over many batches. */
static size_t scratch_base;
static uintptr_t scratch_of(size_t i) { return eng.scratch + (scratch_base + i) * DD_PAGE; }

static void drop(struct dd_merge_item *it, int state, _Atomic uint64_t *counter)
{
	it->state = (uint32_t)state;
	atomic_fetch_add_explicit(counter, 1, memory_order_relaxed);
}

/* Let the uffd reader drain pending events: release the gate briefly. */
static void let_reader_run(void)
{
	pthread_mutex_unlock(&eng.gate);
	usleep(50);
	pthread_mutex_lock(&eng.gate);
}

/* Has a REMOVE covering addr been read since sequence @since? Translate addr
 * through REMAPs read since then. Returns false if the page was discarded. */
static bool follow_events(uint64_t since, uintptr_t *addr)
{
	uint64_t head = atomic_load(&eng.ev_head);

	if (head - since > DD_EVRING)
		dd_info("event ring overflowed while a page was parked at %#lx",
			(unsigned long)*addr);
	for (uint64_t s = head - since > DD_EVRING ? head - DD_EVRING : since; s < head; s++) {
		const struct dd_event *e = &eng.ev[s % DD_EVRING];
		if (*addr < e->from || *addr >= e->from + e->len)
			continue;
		if (e->type == UFFD_EVENT_REMOVE)
			return false;
		if (e->type == UFFD_EVENT_REMAP)
			*addr = e->to + (*addr - e->from);
	}
	return true;
}

/*
 * Put the page in S back at its address. A is empty and registered
 * MISSING, so any access to it waits. Returns the address it went back to
 * (0 if the application discarded it meanwhile).
 */
static uintptr_t move_back(size_t i, uintptr_t addr)
{
	for (int tries = 0;; tries++) {
		int err;
		DD_TRACE('B', addr, DD_PAGE, tries);
		if (dd_uffd_move(eng.uffd, addr, scratch_of(i), DD_PAGE, &err) == (ssize_t)DD_PAGE)
			return addr;
		if (err != EAGAIN && err != EEXIST) {
			/* UFFDIO_MOVE refuses when the VMAs' protections differ (the
			 * application mprotect()ed the window meanwhile): copy the
			 * content back instead. S's page is ours and unpinned (the
			 * move out proved it), so a copy loses nothing. */
			struct uffdio_copy c = { .dst = addr, .src = scratch_of(i), .len = DD_PAGE };
			if (ioctl(eng.uffd, UFFDIO_COPY, &c) == 0)
				return addr;
			err = errno;
		}
		if (err != EAGAIN || tries > 100000) {
			/* Cannot happen while A stays registered with us and empty. */
			dd_err("could not restore page %#lx (errno %d); its content is kept at %#lx",
			       (unsigned long)addr, err, (unsigned long)scratch_of(i));
			eng.scratch_lost = true;
			return 0;
		}
		uint64_t since = atomic_load(&eng.ev_head);
		let_reader_run();   /* the window is parked: its faults wait */
		if (!follow_events(since, &addr)) {
			DD_TRACE('b', addr, DD_PAGE, 0);
			return 0;
		}
	}
}

/* Un-protect [a, a+len): retried while events are pending. */
static void unprotect(uintptr_t a, size_t len)
{
	for (int tries = 0; tries < 100000; tries++) {
		int r = dd_uffd_wp(eng.uffd, a, len, false);
		if (r != -EAGAIN)
			return;  /* 0, or the range is no longer ours: nothing to undo */
		let_reader_run();
	}
}

/* VMAs one mmap of pages [i, j) would add (see region.c for the slot codes). */
static long vma_delta(struct dd_region *r, size_t p, size_t n, uint32_t first, uint32_t last)
{
	long d = 0;
	uint32_t left = p ? dd_region_slot(r, p - 1) : DD_SLOT_NONE;
	uint32_t right = p + n < r->npages ? dd_region_slot(r, p + n) : DD_SLOT_NONE;

	if (left == DD_SLOT_NONE || left == DD_SLOT_ZERO)
		d++;                       /* splits an anonymous VMA */
	else if (DD_SLOT_REAL(left) && left + 1 == first)
		d--;                       /* merges with the file VMA on the left */
	if (right == DD_SLOT_NONE || right == DD_SLOT_ZERO)
		d++;
	else if (DD_SLOT_REAL(right) && right == last + 1)
		d--;
	return d + 1;                      /* the new VMA */
}

/* May a merge that adds @delta mappings go ahead? vmas_added is the
 * estimate recalibrated at each pass start plus this pass's merges. */
static bool budget_allows(long delta)
{
	long hard = dd_feat.max_map_count - 256;
	if ((long)atomic_load(&dd_cnt.vmas_added) + delta > (long)eng.vma_budget)
		return false;
	return eng.maps_at_pass + eng.vmas_this_pass + delta <= hard;
}

/* Is the budget spent, so that a merge needing a new mapping cannot go? */
bool dd_merge_budget_spent(void)
{
	return !budget_allows(1);
}

/* Length of the run of items from i with state st and contiguous addresses. */
static size_t run_len(struct dd_merge_item *it, size_t i, size_t n, uint32_t st)
{
	size_t j = i + 1;
	while (j < n && it[j].state == st && it[j].addr == it[j - 1].addr + DD_PAGE)
		j++;
	return j - i;
}

/* Same, and targets that are contiguous slots (one mmap) or all zero. */
static size_t map_run_len(struct dd_merge_item *it, size_t i, size_t n)
{
	size_t j = i + 1;
	while (j < n && it[j].state == IT_MOVED && it[j].addr == it[j - 1].addr + DD_PAGE &&
	       ((it[i].target == DD_SLOT_ZERO && it[j].target == DD_SLOT_ZERO) ||
		(it[i].target != DD_SLOT_ZERO && it[j].target == it[j - 1].target + 1)))
		j++;
	return j - i;
}

/*
 * Read the pages moved into S (state IT_MOVED, window it[0..n)) into
 * eng.cmpbuf with process_vm_readv(), or return NULL (then the caller reads
 * S directly); base is it[0]'s scratch page. Why not just read S: the first user access to a PTE that
 * UFFDIO_MOVE just installed costs ~5 us on a shadow-paging guest such as
 * this project's machines, process_vm_readv walks the page tables in
 * software and copies through the kernel's direct map (~0.6 us a page,
 * measured: README "Performance notes"). Only moved pages are read: S is
 * registered MISSING, and touching an empty page of it would block this
 * thread on its own userfaultfd.
 */
static const char *read_moved(struct dd_merge_item *it, size_t n, size_t base)
{
	struct iovec local[64], remote[64];
	size_t nio = 0, total = 0;

	if (!dd_feat.vm_readv)
		return NULL;
	for (size_t i = 0; i < n;) {
		if (it[i].state != IT_MOVED) {
			i++;
			continue;
		}
		size_t k = run_len(it, i, n, IT_MOVED);
		if (nio == DD_ARRAY_SIZE(local))
			return NULL;
		local[nio] = (struct iovec){ eng.cmpbuf + i * DD_PAGE, k * DD_PAGE };
		remote[nio] = (struct iovec){ (void *)scratch_of(base + i), k * DD_PAGE };
		nio++;
		total += k * DD_PAGE;
		i += k;
	}
	if (!nio)
		return eng.cmpbuf;
	ssize_t r = process_vm_readv(getpid(), local, nio, remote, nio, 0);
	return r == (ssize_t)total ? eng.cmpbuf : NULL;
}

/* UFFDIO_CONTINUE on the pages of [a, a + l) that are not marked discarded:
 * maps their canonical pages read-only. A page it cannot map (an event
 * pending: EAGAIN) is mapped by the reader on first access instead. */
static void map_canonical(uintptr_t a, size_t l)
{
	for (uintptr_t p = a, end = a + l; p < end;) {
		if (dd_discard_marked(p)) {
			p += DD_PAGE;
			continue;
		}
		uintptr_t q = p + DD_PAGE;
		while (q < end && !dd_discard_marked(q))
			q += DD_PAGE;
		struct uffdio_continue c = { .range = { p, q - p }, .mode = UFFDIO_CONTINUE_MODE_DONTWAKE };
		if (ioctl(eng.uffd, UFFDIO_CONTINUE, &c) < 0 && c.mapped > 0 && (uintptr_t)c.mapped < q - p)
			q = p + (uintptr_t)c.mapped + DD_PAGE;   /* skip the page it stopped at */
		p = q;
	}
}

/*
 * mremap the VMA at t, registered with our uffd, over [a, a + l). Moving a
 * registered VMA raises UFFD_EVENT_REMAP and waits until our reader has
 * read it, so the gate is released meanwhile (the caller has parked what
 * must wait); the reader does not record this REMAP (eng.placing_from).
 * Called and returns under the gate; errno is mremap's.
 */
static void *move_registered(void *t, size_t l, uintptr_t a)
{
	atomic_store(&eng.placing_from, (uintptr_t)t);
	pthread_mutex_unlock(&eng.gate);
	void *m = mremap(t, l, l, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)a);
	int e = errno;
	pthread_mutex_lock(&eng.gate);
	atomic_store(&eng.placing_from, 0);
	errno = e;
	return m;
}

/*
 * Place canonical slots [target, target + l/page) at window address a, whose
 * pages are moved out (empty, parked). Returns 0, or -1 with a untouched.
 * Called and returns under the gate, which it releases during the mremap.
 */
static int place_run(uintptr_t a, size_t l, uint32_t target)
{
	/* Map the slots at a fresh address T nobody else knows and register
	 * them there, so that the run is registered from the moment it
	 * appears at a: no access or discard there can miss us. */
	void *t = mmap(NULL, l, PROT_READ | PROT_WRITE, MAP_PRIVATE, dd_store_fd(),
		       (off_t)(target - 1) * (off_t)DD_PAGE);
	if (t == MAP_FAILED)
		return -1;
	if (dd_uffd_register(eng.uffd, (uintptr_t)t, l,
			     UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_MISSING) < 0) {
		munmap(t, l);
		return -1;
	}
	/* From here a REMOVE over [a, a + l) marks discarded pages. */
	dd_discard_merged(a, a + l);
	/* Moving a registered VMA raises UFFD_EVENT_REMAP and waits until our
	 * reader has read it: leave the gate meanwhile. The window stays
	 * parked; a REMOVE read now marks pages of the run (above) or names
	 * other pages in S (events_in_window). */
	if (move_registered(t, l, a) == MAP_FAILED) {
		munmap(t, l);
		return -1;
	}
	DD_TRACE('R', a, l, 0);
	/* Every PTE of the run is empty: an access faults to the reader, who
	 * waits for the gate. Map the canonical pages, except where the
	 * application discarded them meanwhile (those must read zeros). */
	map_canonical(a, l);
	return 0;
}

/*
 * Events the reader read while we let it run inside this window (EAGAIN
 * retries in move_back): a page in S that the application discarded stays
 * out (its address is empty, as the discard leaves it; placing C there
 * would bring old content back when the zap comes), and pages of a range
 * that was moved are put back at their new address. Everything else goes on.
 */
static void events_in_window(struct dd_merge_item *it, size_t n, size_t base, uint64_t since)
{
	for (size_t i = 0; i < n; i++) {
		if (it[i].state != IT_MOVED)
			continue;
		uintptr_t a = it[i].addr;
		if (dd_removing_named(a) || !follow_events(since, &a)) {
			DD_TRACE('x', it[i].addr, DD_PAGE, 0);
			drop(&it[i], IT_GONE, &dd_cnt.skipped_raced);
		} else if (a != it[i].addr) {
			move_back(base + i, a);
			drop(&it[i], IT_GONE, &dd_cnt.skipped_raced);
		}
	}
}

/*
 * One window: items it[0..n), contiguous addresses inside region r;
 * base is the index of it[0] in the batch (its scratch page).
 */
static long merge_window(struct dd_region *r, struct dd_merge_item *it, size_t n, size_t base)
{
	uintptr_t a0 = it[0].addr;
	size_t len = n * DD_PAGE;
	long merged = 0;
	/* events read so far; more are read only when we let the reader run */
	const uint64_t since = atomic_load(&eng.ev_head);
	uint64_t seen = since;

	/* The VMA budget: drop non-zero runs that would spend too much. */
	for (size_t i = 0; i < n;) {
		size_t k = i + 1;
		if (it[i].target != DD_SLOT_ZERO) {
			while (k < n && it[k].target == it[k - 1].target + 1)
				k++;
			size_t p = (it[i].addr - r->start) / DD_PAGE;
			if (!budget_allows(vma_delta(r, p, k - i, it[i].target, it[k - 1].target)))
				for (size_t m = i; m < k; m++)
					drop(&it[m], IT_GONE, &dd_cnt.skipped_budget);
		}
		i = k;
	}

	/* 1. write-protect */
	DD_TRACE('W', a0, len, 0);
	if (dd_uffd_wp(eng.uffd, a0, len, true) < 0) {
		for (size_t i = 0; i < n; i++)
			if (it[i].state == IT_LIVE)
				drop(&it[i], IT_GONE, &dd_cnt.skipped_raced);
		return 0;
	}
	for (size_t i = 0; i < n; i++)
		if (it[i].state == IT_GONE)
			it[i].state = IT_DROP_WP;

	/* 2. make empty PTEs wait for us */
	int reg = dd_uffd_register(eng.uffd, a0, len,
				   UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP);
	if (reg < 0)
		for (size_t i = 0; i < n; i++)
			if (it[i].state == IT_LIVE)
				drop(&it[i], IT_DROP_WP, reg == -ENOMEM ? &dd_cnt.skipped_budget
									: &dd_cnt.skipped_raced);

	/* From the first move to the final wake, pages of this window may be
	 * empty with their content in S, and we may leave the gate (EAGAIN
	 * retries, 5b). The whole window is parked meanwhile: the reader leaves
	 * its MISSING faults to us instead of filling them with zeros. */
	atomic_store(&eng.parked_end, a0 + len);
	atomic_store(&eng.parked, a0);

	/* 3. move out (the pin check) */
	if (dd_unlikely(dd_opt.test_unsafe_no_move)) {
		/* Test hook only: the naive protocol that trusts write protection,
		 * compares in place and replaces. It loses a device's writes into
		 * a pinned page; tests/test_pinned.c shows that it does. */
		for (size_t i = 0; i < n; i++)
			if (it[i].state == IT_LIVE)
				it[i].state = it[i].target == DD_SLOT_ZERO ||
					      memcmp((const void *)it[i].addr,
						     target_page(it[i].target), DD_PAGE)
						      ? IT_DROP_WP : IT_MOVED;
		goto replace;
	}
	for (size_t i = 0; i < n;) {
		if (it[i].state != IT_LIVE) {
			i++;
			continue;
		}
		size_t k = run_len(it, i, n, IT_LIVE);
		int err;
		ssize_t moved = dd_uffd_move(eng.uffd, scratch_of(base + i), it[i].addr,
					     k * DD_PAGE, &err);
		DD_TRACE('M', it[i].addr, k * DD_PAGE, moved);
		size_t m = moved > 0 ? (size_t)moved / DD_PAGE : 0;
		for (size_t x = i; x < i + m; x++)
			it[x].state = IT_MOVED;
		if (m == k) {
			i += k;
		} else if (err == EAGAIN && m > 0) {
			/* A run stops with EAGAIN at a page it cannot take (a hole,
			 * probe_move_semantics.c): retry from that page alone. */
			i += m;
		} else if (err == EAGAIN) {
			/* an event is pending: stop this window */
			for (size_t x = i; x < n; x++)
				if (it[x].state == IT_LIVE)
					drop(&it[x], IT_DROP_WP, &dd_cnt.skipped_raced);
			i = n;
		} else {
			/* it[i+m] did not move: EBUSY = pinned, or shared copy-on-write
			 * with a child (probe_move_not_exclusive.c); ENOENT = gone */
			drop(&it[i + m], IT_DROP_WP,
			     err == EBUSY ? &dd_cnt.skipped_pinned : &dd_cnt.skipped_raced);
			i += m + 1;
		}
	}

	/* 4. the comparison, on our private copy */
	const char *copy = read_moved(it, n, base);
	for (size_t i = 0; i < n; i++) {
		if (it[i].state != IT_MOVED)
			continue;
		const void *page = copy ? copy + i * DD_PAGE : (const void *)scratch_of(base + i);
		if (!memcmp(page, target_page(it[i].target), DD_PAGE))
			continue;
		DD_INC(skipped_mismatch, 1);
		if (it[i].target != DD_SLOT_ZERO)
			dd_stable_verify_hash(dd_store_hash(it[i].target));
		it[i].state = move_back(base + i, it[i].addr) ? IT_DROP_WP : IT_GONE;
	}

replace:
	/* 5. replace (see "Placing a merged run" above) */
	for (size_t i = 0; i < n;) {
		if (atomic_load(&eng.ev_head) != seen) {
			seen = atomic_load(&eng.ev_head);
			events_in_window(it, n, base, since);
		}
		if (it[i].state != IT_MOVED) {
			i++;
			continue;
		}
		size_t k = map_run_len(it, i, n);
		if (it[i].target == DD_SLOT_ZERO) {
			for (size_t x = i; x < i + k; x++)
				it[x].state = IT_DONE;
			merged += (long)k;
			i += k;
			continue;
		}
		uintptr_t a = it[i].addr;
		size_t p = (a - r->start) / DD_PAGE, l = k * DD_PAGE;
		long delta = vma_delta(r, p, k, it[i].target, it[i + k - 1].target);
		if (place_run(a, l, it[i].target) < 0) {   /* ENOMEM at the map limit */
			for (size_t x = i; x < i + k; x++) {
				DD_INC(skipped_budget, 1);
				it[x].state = move_back(base + x, it[x].addr) ? IT_DROP_WP : IT_GONE;
			}
		} else {
			for (size_t x = i; x < i + k; x++)
				it[x].state = IT_DONE;
			merged += (long)k;
			eng.vmas_this_pass += delta;
			DD_INC(vmas_added, delta);
		}
		i += k;
	}

	/* 6. restore: WP-only registration on what is still anonymous. A
	 * registration can only add modes (tests/probe/probe_register_modes.c),
	 * so MISSING goes with an unregister first; that also drops the
	 * write-protection of those pages, which is what we want now: every
	 * page of the window is either merged or given back. While the range is
	 * briefly unregistered an empty PTE reads as zeros, which is right for
	 * every empty page left in the window (zero merges, discarded pages). */
	if (reg == 0) {
		for (size_t i = 0; i < n;) {
			bool file = it[i].state == IT_DONE && it[i].target != DD_SLOT_ZERO;
			size_t k = i + 1;
			while (k < n && (it[k].state == IT_DONE && it[k].target != DD_SLOT_ZERO) == file)
				k++;
			if (!file) {
				uintptr_t s0 = it[i].addr;
				size_t l = (k - i) * DD_PAGE;
				dd_uffd_unregister(eng.uffd, s0, l);
				if (dd_uffd_register(eng.uffd, s0, l, UFFDIO_REGISTER_MODE_WP) < 0)
					dd_debug("could not re-register %#lx+%zu: no longer merged",
						(unsigned long)s0, l);
				for (size_t x = i; x < k; x++)
					if (it[x].state == IT_DROP_WP)
						it[x].state = IT_GONE;
			}
			i = k;
		}
	}
	/* ... un-protect the dropped pages (this wakes their writers) ... */
	for (size_t i = 0; i < n;) {
		if (it[i].state != IT_DROP_WP) {
			i++;
			continue;
		}
		size_t k = run_len(it, i, n, IT_DROP_WP);
		unprotect(it[i].addr, k * DD_PAGE);
		i += k;
	}
	/* ... and wake everybody who waited on the window. */
	dd_uffd_wake(eng.uffd, a0, len);
	atomic_store(&eng.parked, 0);
	DD_TRACE('w', a0, len, 0);

	/* Bookkeeping (eng.lock): what each page now maps. */
	for (size_t i = 0; i < n; i++) {
		if (it[i].state != IT_DONE)
			continue;
		size_t p = (it[i].addr - r->start) / DD_PAGE;
		if (it[i].target == DD_SLOT_ZERO) {
			atomic_fetch_add(&dd_cnt.zero_pages, 1);
		} else {
			dd_store_get(it[i].target);
		}
		dd_region_set_slot(r, p, it[i].target);
		DD_INC(merges, 1);
	}
	return merged;
}

/*
 * DOC: Unmerging
 *
 * dedup_unregister() and dedup_shutdown() hand the range back as anonymous
 * memory: merged runs are private memfd mappings, and left so an mremap()
 * that grows one would map the memfd's next slots where zeros belong, and
 * a discard after we stop listening would read the canonical page again.
 * The result must also be what the application had: one anonymous VMA
 * where it had one (an mremap() over several fails with EFAULT). Each run
 * of merged pages (its VMAs are ours: canonical pages, and pages copied on
 * write since) goes, under the gate:
 *  1. parked, registered WP as well and write-protected: from here a
 *     write, user or kernel mode, waits for us, and so does a read of an
 *     empty page (the reader leaves a parked range's faults to us, also
 *     when we let it run to read events);
 *  2. copied into a buffer B, page by page from what A reads: a canonical
 *     page from the store, a page copied on write from A itself (anonymous:
 *     reading it never faults to us), zeros where A was discarded;
 *  3. replaced by an empty anonymous VMA registered MISSING|WP like the
 *     rest of the region, which takes MISSING for this (dd_merge_unmerge;
 *     mapped at T, registered, moved over A: the REMAP
 *     this raises is read by our reader, so the gate is released for the
 *     mremap, with the run parked: its faults wait). It has no anon_vma of
 *     its own, so it merges with its anonymous neighbours;
 *  4. filled from B with UFFDIO_COPY, except pages the application
 *     discarded while we were out of the gate (they stay empty: zeros),
 *     and woken. dedup_unregister() then unregisters the whole region,
 *     and what is left is one anonymous VMA.
 * Limit: a page copied on write that a device is writing into at that
 * moment (O_DIRECT in flight, an io_uring fixed buffer) is copied, not
 * moved; the device's later writes go to the old page. UFFDIO_MOVE, our pin
 * check, does not take pages out of a file VMA. Do not unregister memory
 * with such I/O in flight.
 */

/* UFFDIO_COPY of [dst, dst + len) from src, retried while events are
 * pending; pages a REMOVE read since @since names stay empty. */
static int refill(uintptr_t dst, const char *src, size_t len, uint64_t since)
{
	for (size_t off = 0; off < len;) {
		uintptr_t x = dst + off;
		if (!follow_events(since, &x) || x != dst + off) {
			off += DD_PAGE;   /* discarded (or moved: not ours to fill) */
			continue;
		}
		struct uffdio_copy c = { .dst = dst + off, .src = (uintptr_t)src + off,
					 .len = DD_PAGE, .mode = UFFDIO_COPY_MODE_DONTWAKE };
		if (ioctl(eng.uffd, UFFDIO_COPY, &c) == 0 || errno == EEXIST) {
			off += DD_PAGE;
			continue;
		}
		if (errno != EAGAIN)
			return -errno;
		let_reader_run();   /* parked: faults on the run still wait */
	}
	return 0;
}

static int unmerge_run(struct dd_region *r, size_t i, size_t k)
{
	uintptr_t a = r->start + i * DD_PAGE;
	size_t l = (k - i) * DD_PAGE;
	int prot = dd_vma_prot(a), ret = 0;
	uint8_t st[64], st2[64];
	bool replaced = false;
	void *t = MAP_FAILED;

	if (prot < 0 || !(prot & PROT_READ))
		return prot < 0 ? prot : -EACCES;
	char *buf = mmap(NULL, l, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		return -ENOMEM;
	pthread_mutex_lock(&eng.gate);
	/* Parked from here to the end: when we let the reader run (EAGAIN
	 * retries), it leaves the run's faults to us, and never un-protects a
	 * page we have copied. */
	atomic_store(&eng.parked_end, a + l);
	atomic_store(&eng.parked, a);
	ret = dd_uffd_register(eng.uffd, a, l, UFFDIO_REGISTER_MODE_MINOR |
				UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP);
	if (ret < 0)
		goto out;
	DD_TRACE('U', a, l, 0);
	for (size_t p = i; p < k; p += DD_ARRAY_SIZE(st)) {
		size_t n = k - p < DD_ARRAY_SIZE(st) ? k - p : DD_ARRAY_SIZE(st);
		uintptr_t c = r->start + p * DD_PAGE;
		/* What each page is, read before 1.: protecting an empty PTE
		 * of a file VMA leaves a marker that pagemap shows like a
		 * swapped-out page, and reading it would fault to our own
		 * reader, who waits for the gate we hold. Meanwhile nothing
		 * empties a page (a discard waits for its REMOVE to be read)
		 * and nothing fills an empty one (its fault waits too). */
		if ((ret = dd_pte_states(c, n, st)) < 0)
			goto out;
		/* 1. */
		for (int tries = 0;; tries++) {
			ret = dd_uffd_wp(eng.uffd, c, n * DD_PAGE, true);
			if (ret != -EAGAIN || tries > 1000)
				break;
			let_reader_run();   /* an event is pending */
		}
		if (ret < 0 || (ret = dd_pte_states(c, n, st2)) < 0)
			goto out;
		/* 2. A canonical page may have been copied on write between the
		 * first look and the protection: what a present page is comes
		 * from the second look (st2, nothing changes any more), whether
		 * a page that is not present is swapped out (ours to read) or
		 * was empty (now a marker) from the first (st). */
		for (size_t q = 0; q < n; q++) {
			uintptr_t pa = c + q * DD_PAGE;
			char *dst = buf + (p + q - i) * DD_PAGE;
			uint32_t slot = dd_region_slot(r, p + q);
			bool was_anon = (st[q] & DD_PTE_SWAP) ||
					((st[q] & DD_PTE_PRESENT) && !(st[q] & DD_PTE_FILE));
			bool anon = (st2[q] & DD_PTE_PRESENT) ? !(st2[q] & DD_PTE_FILE)
							       : was_anon && (st2[q] & DD_PTE_SWAP);
			if (anon) {
				struct iovec lv = { dst, DD_PAGE }, rv = { (void *)pa, DD_PAGE };
				if (process_vm_readv(getpid(), &lv, 1, &rv, 1, 0) != (ssize_t)DD_PAGE) {
					ret = -EFAULT;
					goto out;
				}
			} else if (DD_SLOT_REAL(slot) &&
				   ((st2[q] & DD_PTE_PRESENT) || (st[q] & DD_PTE_PRESENT) ||
				    !dd_discard_marked(pa))) {
				memcpy(dst, dd_store_page(slot - 1), DD_PAGE);
			}   /* else discarded: zeros */
		}
	}
	/* 3. */
	t = mmap(NULL, l, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (t == MAP_FAILED ||
	    dd_uffd_register(eng.uffd, (uintptr_t)t, l,
			     UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP) < 0) {
		ret = -ENOMEM;
		goto out;
	}
	const uint64_t since = atomic_load(&eng.ev_head);
	if (move_registered(t, l, a) == MAP_FAILED) {
		ret = -errno;
		goto out;
	}
	t = MAP_FAILED;
	replaced = true;
	/* 4. */
	ret = refill(a, buf, l, since);
	if (ret < 0)   /* cannot happen while the run stays ours and empty */
		dd_err("could not refill %#lx+%zu while unmerging (errno %d): pages lost",
		       (unsigned long)a, l, -ret);
	dd_discard_unmerged(a, a + l);
	for (size_t p = i; p < k; p++) {
		uint32_t slot = dd_region_slot(r, p);
		if (DD_SLOT_REAL(slot))
			dd_store_put(slot);
		dd_region_set_slot(r, p, DD_SLOT_NONE);
	}
out:
	if (!replaced)   /* left merged: lift the protection */
		dd_uffd_wp(eng.uffd, a, l, false);
	atomic_store(&eng.parked, 0);
	dd_uffd_wake(eng.uffd, a, l);
	pthread_mutex_unlock(&eng.gate);
	if (t != MAP_FAILED)
		munmap(t, l);
	munmap(buf, l);
	return replaced ? 0 : ret;
}

/* Unmerge every merged run of r (see "Unmerging"). eng.lock held. Returns
 * 0, or the first error (the runs it concerns stay merged and valid). */
int dd_merge_unmerge(struct dd_region *r)
{
	int ret = 0;
	size_t i = 0, k;

	/* merged runs are found without visiting absent pages (region.c) */
	if (!dd_region_next_merged(r, &i, &k))
		return 0;
	if (atomic_load(&eng.forking))   /* engine.c, prefork(): stay merged */
		return -EBUSY;
	/* The anonymous parts take MISSING too (their empty pages then fault
	 * to the reader, who fills them with zeros as the kernel would): with
	 * the same flags as the runs' replacements (step 3), the VMAs merge. */
	ret = dd_uffd_register(eng.uffd, r->start, r->npages * DD_PAGE,
			       UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP);
	if (ret < 0)
		dd_debug("unmerge: could not register %#lx MISSING (errno %d): the "
			 "region may stay several mappings", (unsigned long)r->start, -ret);
	ret = 0;
	for (i = 0; dd_region_next_merged(r, &i, &k); i = k) {
		int e = unmerge_run(r, i, k);
		if (e < 0) {
			dd_warn("could not unmerge %#lx+%zu (errno %d): left merged",
				(unsigned long)(r->start + i * DD_PAGE), (k - i) * DD_PAGE, -e);
			if (!ret)
				ret = e;
		}
	}
	return ret;
}

/* Sort the batch by address in place. Not qsort(): glibc's may malloc, and
 * no thread of ours may call the application's allocator (internal.h).
 * Batches are small and arrive mostly sorted: an insertion sort. */
static void sort_batch(struct dd_merge_item *it, size_t n)
{
	for (size_t i = 1; i < n; i++) {
		struct dd_merge_item x = it[i];
		size_t j = i;
		while (j > 0 && it[j - 1].addr > x.addr) {
			it[j] = it[j - 1];
			j--;
		}
		it[j] = x;
	}
}

/*
 * Free the pages earlier batches moved out into S. S is registered with our
 * uffd, so this raises a REMOVE event: never called under the gate, the
 * reader acknowledges it. Called when S is full and at the end of a pass.
 */
void dd_merge_free_scratch(void)
{
	if (eng.scratch_used && !eng.scratch_lost)
		madvise((void *)eng.scratch, eng.scratch_used * DD_PAGE, MADV_DONTNEED);
	eng.scratch_used = 0;
}

/* A canonical page created for this batch that nobody took is freed. */
static void release_untaken(const struct dd_merge_item *it, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint32_t t = it[i].target;
		if (t != DD_SLOT_ZERO && dd_store_hash(t) && dd_store_refs(t) == 0)
			dd_store_put(t);
	}
}

long dd_merge_batch(void)
{
	struct dd_merge_item *it = eng.batch;
	size_t n = eng.nbatch;
	long merged = 0;

	if (!n)
		return 0;
	if (atomic_load(&eng.forking)) {   /* engine.c, prefork() */
		DD_INC(skipped_raced, n);
		release_untaken(it, n);
		eng.nbatch = 0;
		return 0;
	}
	sort_batch(it, n);
	for (size_t i = 0; i < n; i++)
		it[i].state = IT_LIVE;
	if (eng.scratch_used + n > eng.scratch_pages)
		dd_merge_free_scratch();
	scratch_base = eng.scratch_used;
	eng.scratch_used += n;

	pthread_mutex_lock(&eng.gate);
	/* Pages named by a REMOVE whose zap may still be coming are left out
	 * (discard.c, "Discards racing with a merge"). They also cut windows:
	 * a window write-protects and un-protects every page in it, which
	 * would erase the fence. */
	dd_removing_fence();
	for (size_t i = 0; i < n; i++)
		if (!dd_removing_mergeable(it[i].addr))
			drop(&it[i], IT_GONE, &dd_cnt.skipped_raced);
	for (size_t i = 0; i < n;) {
		struct dd_region *r = it[i].state == IT_LIVE ? dd_region_find(it[i].addr) : NULL;
		size_t k = i + 1;
		if (!r) {
			if (it[i].state == IT_LIVE)
				drop(&it[i], IT_GONE, &dd_cnt.skipped_raced);
			i++;
			continue;
		}
		uintptr_t rend = r->start + r->npages * DD_PAGE;
		while (k < n && it[k].addr == it[k - 1].addr + DD_PAGE && it[k].addr < rend &&
		       it[k].state == IT_LIVE)
			k++;
		merged += merge_window(r, it + i, k - i, i);
		i = k;
	}
	pthread_mutex_unlock(&eng.gate);

	release_untaken(it, n);
	eng.nbatch = 0;
	return merged;
}
