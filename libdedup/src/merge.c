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
 * while we hold eng.gate (see internal.h), one function each, called in
 * order by merge_window(). Before them, runs whose merge would spend more
 * mappings than the VMA budget has left are dropped (win_budget).
 *
 *  1. Write-protect (win_protect): UFFDIO_WRITEPROTECT on the window. From
 *     here on a user- or kernel-mode write to A blocks in the kernel and
 *     waits for us (our uffd handles kernel faults, so read(2) into A
 *     waits instead of failing).
 *  2. Make empty PTEs wait (win_wait_empty): register the window
 *     MISSING|WP (a re-registration, same uffd), and park it. Once we move
 *     a page out its PTE is empty; in a WP-only range an access to an
 *     empty PTE silently maps zeros, with MISSING it waits for us. Parked,
 *     the reader leaves those faults to us.
 *  3. Move out (win_move_out): UFFDIO_MOVE each page to our scratch area
 *     S. This is the pin check that write protection cannot give: the
 *     kernel refuses with EBUSY a page that is pinned (FOLL_PIN: O_DIRECT
 *     in flight, io_uring fixed buffers; a device could still write into
 *     it after we replaced the mapping) or not exclusively ours (shared
 *     copy-on-write with a forked child). Such pages stay in place and are
 *     counted as pinned. UFFDIO_MOVE also fails with EAGAIN while a
 *     non-cooperative event is pending, and when the VMA is no longer the
 *     one we registered.
 *  4. Compare (win_compare): every moved page, byte for byte, with its
 *     target. The copy in S is reachable by nobody but us, so this
 *     comparison is final: no write can land after it (a device write that
 *     landed before the unpin is in the copy). A page that differs is moved
 *     back. There is no comparison in place before 3: it would be decided
 *     again here, and a page we only compare in place is a page whose pin
 *     we have not checked.
 *  5. Replace (win_replace): each run of moved pages with contiguous slots
 *     becomes one MAP_PRIVATE mapping of the canonical slots, registered
 *     MINOR|MISSING (place_run, "Placing a merged run"); zero targets need
 *     nothing, their PTE is already empty. Pages a REMOVE named meanwhile
 *     stay out (events_in_window).
 *  6. Restore (win_restore): unregister and re-register WP-only what is
 *     still anonymous (a registration cannot drop MISSING), un-protect any
 *     dropped page that is left, and UFFDIO_WAKE the window: a writer that
 *     blocked on A retries on the new mapping and the kernel gives it a
 *     private copy of C; a reader that blocked on an empty PTE reads C or
 *     zeros. Then the window is unparked, and win_account records what
 *     each page now maps.
 *
 * Why the gate: between steps 3 and 5 the application must not discard A
 * (madvise MADV_DONTNEED/FREE/REMOVE), or we would map C where it expects
 * zeros. Those calls raise UFFD_EVENT_REMOVE before the kernel zaps, and the
 * caller waits until the event is read; the reader reads only under the
 * gate. None of the calls in steps 1-6 raises an event (we do not ask for
 * UNMAP events) except the mremap of step 5, done outside the gate, so
 * holding the gate never waits on the reader.
 *
 * The gate covers discards announced while a window is open. A discard
 * announced before (its REMOVE read) may still have its zap ahead of it:
 * the madvise() caller zaps when it runs again, and if that is after step 5
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
 * a pthread_atfork() handler (engine.c, prefork): it takes eng.lock, so it
 * waits for the batch in progress, and sets eng.forking, so no batch starts
 * until the fork is over; it takes the gate only to copy the discard marks
 * for the child.
 *
 * Locking: eng.lock held by the caller; eng.gate taken here.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
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

static const void *target_page(uint32_t target)
{
	return target == DD_SLOT_ZERO ? dd_zero_page : dd_store_page(target - 1);
}

/*
 * S, the scratch area, is this file's alone: made by dd_merge_init(), used
 * as a ring by the batches (the pages moved out are freed only when it
 * wraps, which amortises the madvise - a REMOVE event and a TLB shootdown -
 * over many batches: dd_merge_free_scratch), and unmapped by
 * dd_merge_fini(). It is registered MISSING with our uffd: UFFDIO_MOVE
 * wants both ends registered with the same uffd, and an access to an empty
 * page of S would wait for a reader - nobody but this thread touches it.
 * Written by the engine thread under eng.lock (the batch) and by the
 * thread that holds eng.lock for init and fini; discard.c only asks
 * whether a range lies in it.
 */
static struct {
	uintptr_t base;            /* 0: none */
	size_t pages;
	size_t used;               /* pages holding moved-out pages */
	size_t batch;              /* first page of this batch's part */
	bool lost;                 /* a page could not be restored: keep S */
	pid_t pid;                 /* ours, for process_vm_readv (read_moved) */
} scratch;

/* Page i of this batch's part of S. */
static uintptr_t scratch_of(size_t i) { return scratch.base + (scratch.batch + i) * DD_PAGE; }

bool dd_merge_is_scratch(uintptr_t a, uintptr_t b)
{
	return scratch.base && a >= scratch.base && b <= scratch.base + scratch.pages * DD_PAGE;
}

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

/*
 * An ioctl on eng.uffd failed with err (an errno). Was it because the number
 * is no longer ours - the program closed it with a raw system call, which no
 * interposer sees, and may have opened a file of its own there (fds.c)? Then
 * have the reader install our uffd again and say so: the caller retries with
 * the new eng.uffd. A page out in S, a write-protected page or a waiter not
 * yet woken must never be given up for a number the program took. The gate
 * is released meanwhile (engine.c): callers follow the events read since.
 */
static bool uffd_back(int err)
{
	return err != EAGAIN && !dd_fd_intact(eng.uffd) && dd_engine_uffd_back();
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
			if (dd_uffd_copy(eng.uffd, addr, (const void *)scratch_of(i), DD_PAGE, true, &err))
				return addr;
		}
		uint64_t since = atomic_load(&eng.ev_head);
		if ((err != EAGAIN && !uffd_back(err)) || tries > 100000) {
			/* Cannot happen while A stays registered with us and empty,
			 * and our uffd has a number. */
			dd_err("could not restore page %#lx (errno %d); its content is kept at %#lx",
			       (unsigned long)addr, err, (unsigned long)scratch_of(i));
			if (dd_trace_on)
				dd_trace_dump(addr);
			scratch.lost = true;
			return 0;
		}
		if (err == EAGAIN)
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
		if (r < 0 && uffd_back(-r))
			continue;
		if (r != -EAGAIN)
			return;  /* 0, or the range is no longer ours: nothing to undo */
		let_reader_run();
	}
}

/* Wake every thread that waits on [a, a+len): none may be left asleep. */
static void wake(uintptr_t a, size_t len)
{
	int r = dd_uffd_wake(eng.uffd, a, len);
	if (r < 0 && uffd_back(-r))
		dd_uffd_wake(eng.uffd, a, len);
}

/*
 * Mappings that placing pages [p, p + n) as one file mapping adds (see
 * region.c for the slot codes). The pages lie in an anonymous mapping X;
 * what is left of X is a piece on each side that is anonymous (L, R), the
 * new mapping comes in, and it joins a file mapping beside it that holds
 * the next slots: L + R - 1 (X) + 1 (new) - joins. An upper bound: a side
 * outside the region counts as anonymous, a copied-on-write neighbour as
 * one it cannot join, and a run over a boundary of X adds less. It used to
 * add 1 more ("the new VMA" besides the splits), which made isolated
 * merges count 3 where they cost 2 (tests/test_vma_cost.c).
 */
static long vma_delta(struct dd_region *r, size_t p, size_t n, uint32_t first, uint32_t last)
{
	long d = 0;
	uint32_t left = p ? dd_region_slot(r, p - 1) : DD_SLOT_NONE;
	uint32_t right = p + n < r->npages ? dd_region_slot(r, p + n) : DD_SLOT_NONE;

	if (left == DD_SLOT_NONE || left == DD_SLOT_ZERO)
		d++;                       /* an anonymous piece stays on the left */
	else if (DD_SLOT_REAL(left) && left + 1 == first)
		d--;                       /* joins the file mapping on the left */
	if (right == DD_SLOT_NONE || right == DD_SLOT_ZERO)
		d++;
	else if (DD_SLOT_REAL(right) && right == last + 1)
		d--;
	return d;
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
	eng.cmpbuf_used = true;
	ssize_t r = process_vm_readv(scratch.pid, local, nio, remote, nio, 0);
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
		int err;
		ssize_t m = dd_uffd_continue(eng.uffd, p, q - p, false, &err);
		if (m > 0 && (uintptr_t)m < q - p)
			q = p + (uintptr_t)m + DD_PAGE;   /* skip the page it stopped at */
		p = q;
	}
}

/*
 * mremap the VMA at t, registered with our uffd, over [a, a + l). Moving a
 * registered VMA raises UFFD_EVENT_REMAP and waits until our reader has
 * read it, so the gate is released meanwhile (the caller has parked what
 * must wait); the reader does not record this REMAP (eng.placing_from).
 * [a, a + l) is the program's memory, not ours (dd_os_mremap(..., false)).
 * Called and returns under the gate; errno is mremap's.
 */
static void *move_registered(void *t, size_t l, uintptr_t a)
{
	static uint64_t nth;
	atomic_store(&eng.placing_to, a);
	atomic_store(&eng.placing_len, l);
	atomic_store(&eng.placing_from, (uintptr_t)t);
	pthread_mutex_unlock(&eng.gate);
	void *m;
	if (dd_unlikely(dd_opt.test_mremap_hole) && ++nth % dd_opt.test_mremap_hole == 0) {
		/* Test hook: what a kernel does when the move fails after it
		 * unmapped the destination (mend_hole). */
		dd_os_munmap((void *)a, l);
		m = MAP_FAILED;
		errno = ENOMEM;
	} else {
		m = dd_os_mremap(t, l, l, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)a, false);
	}
	int e = errno;
	pthread_mutex_lock(&eng.gate);
	atomic_store(&eng.placing_from, 0);
	errno = e;
	return m;
}

/*
 * After a failed move_registered(): mremap(MREMAP_FIXED) unmaps the
 * destination before it moves the source, and can fail after that (ENOMEM:
 * the moved VMA cannot be allocated, or the map count, checked again once
 * the destination is gone, is over a vm.max_map_count lowered meanwhile). A
 * JVM heap under a limit that others lowered showed it: "could not restore
 * page ... (errno 2)", a one-page hole, SIGSEGV. So if [a, a + l) is gone,
 * map it again - anonymous, empty, registered MISSING|WP like the window
 * around it - before anyone who waits on it is woken; the caller then puts
 * the content back (move_back, refill). An access in between, by a thread
 * that was not already waiting, would still see the hole. Returns 1 if the
 * hole was mended, 0 if there was none, -1 if it could not be mended.
 */
static int mend_hole(uintptr_t a, size_t l, int prot)
{
	unsigned char v;

	if (mincore((void *)a, DD_PAGE, &v) == 0 || errno != ENOMEM)
		return 0;   /* mapped: the mremap failed before it unmapped */
	void *m = dd_os_mmap((void *)a, l, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
			     -1, 0, false);   /* the program's memory */
	if (m != (void *)a ||
	    dd_uffd_register(eng.uffd, a, l, UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP) < 0) {
		dd_err("a failed mremap left %#lx+%zu unmapped, and it could not be mapped again "
		       "(errno %d): its pages are lost", (unsigned long)a, l, errno);
		return -1;
	}
	dd_info("a failed mremap left %#lx+%zu unmapped: mapped again, its content goes back",
		(unsigned long)a, l);
	return 1;
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
	void *t = dd_store_map(target, l);
	if (t == MAP_FAILED)
		return -1;
	if (dd_uffd_register(eng.uffd, (uintptr_t)t, l,
			     UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_MISSING) < 0) {
		dd_os_munmap(t, l);
		return -1;
	}
	/* From here a REMOVE over [a, a + l) marks discarded pages. */
	dd_discard_merged(a, a + l);
	/* Moving a registered VMA raises UFFD_EVENT_REMAP and waits until our
	 * reader has read it: leave the gate meanwhile. The window stays
	 * parked; a REMOVE read now marks pages of the run (above) or names
	 * other pages in S (events_in_window). */
	if (move_registered(t, l, a) == MAP_FAILED) {
		DD_TRACE('r', a, l, errno);
		dd_os_munmap(t, l);
		/* moved pages were in a writable VMA: UFFDIO_MOVE needs one */
		mend_hole(a, l, PROT_READ | PROT_WRITE);
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
 * One window: the state its steps share. Items it[0..n) have contiguous
 * addresses inside region r; base is the index of it[0] in the batch (its
 * page in S). The steps are the DOC's, one function each, run in order by
 * merge_window() under the gate.
 */
struct window {
	struct dd_region *r;
	struct dd_merge_item *it;
	size_t n, base;
	uintptr_t a0;              /* it[0].addr */
	size_t len;                /* n pages, bytes */
	uint64_t since;            /* events read before the window opened */
	uint64_t seen;             /* events already looked at (5.) */
	int reg;                   /* 2.: the MISSING|WP registration, 0 or -errno */
	long merged;
};

/*
 * Long runs first (issue 11, point 5). A run of L pages that adds d
 * mappings saves L pages for them: a single page in the middle of a
 * mapping saves 1 for 2, a run of 16 pages 16 for 2. Where the budget
 * binds, every mapping should go to the longest runs. The scanner cannot
 * sort a pass's runs by length before merging them (it finds them in
 * address order, and merges as it goes), so one simple rule: the last part
 * of the budget (RESERVE_SHARE of it, at least RESERVE_MIN mappings) is
 * kept for runs that save at least 2 pages per mapping they add (L >= 2 d):
 * a single page or a pair is refused there and waits (budget_waiting), so
 * the reserve is not eaten by singles while longer runs still come (new
 * memory the program fills, a heap that settles). The rule only refuses
 * merges: nothing here can change what the program reads. Its cost, when
 * no long run ever comes: the reserve's worth of single pages, half a page
 * a mapping (at 65,530: about 1,900 mappings, some 950 pages, 3.7 MiB).
 * Not done: evicting merged single pages for a long run. The scanner
 * stops offering non-zero pages once the budget is spent (scan.c
 * budget_wait), and with the reserve the budget is never spent by singles,
 * so a long run always finds room without it; dd_merge_give_back() (below)
 * is the eviction a fuller scheme would use.
 */
#define RESERVE_SHARE 32
#define RESERVE_MIN 64

static bool worth_reserve(size_t pages, long delta)
{
	if (delta <= 0 || (long)pages >= 2 * delta)
		return true;
	long left = (long)eng.vma_budget - (long)atomic_load(&dd_cnt.vmas_added);
	long reserve = (long)eng.vma_budget / RESERVE_SHARE;
	if (reserve < RESERVE_MIN)
		reserve = RESERVE_MIN;
	/* a tiny budget (hostile hosts, tests) is not split */
	return (long)eng.vma_budget < 4 * RESERVE_MIN || left - delta >= reserve;
}

/* Before 1: drop non-zero runs that would spend more mappings than the VMA
 * budget has left, or spend its reserve on few pages (worth_reserve). */
static void win_budget(struct window *w)
{
	struct dd_merge_item *it = w->it;

	for (size_t i = 0; i < w->n;) {
		size_t k = i + 1;
		if (it[i].target != DD_SLOT_ZERO) {
			while (k < w->n && it[k].target == it[k - 1].target + 1)
				k++;
			size_t p = (it[i].addr - w->r->start) / DD_PAGE;
			long d = vma_delta(w->r, p, k - i, it[i].target, it[k - 1].target);
			if (!budget_allows(d) || !worth_reserve(k - i, d)) {
				for (size_t m = i; m < k; m++)
					drop(&it[m], IT_GONE, &dd_cnt.skipped_budget);
				eng.budget_wait_pass += k - i;   /* they would merge */
			}
		}
		i = k;
	}
}

/* 1. Write-protect the window. Returns false if nothing of it can go on. */
static bool win_protect(struct window *w)
{
	struct dd_merge_item *it = w->it;

	DD_TRACE('W', w->a0, w->len, 0);
	if (dd_uffd_wp(eng.uffd, w->a0, w->len, true) < 0) {
		for (size_t i = 0; i < w->n; i++)
			if (it[i].state == IT_LIVE)
				drop(&it[i], IT_GONE, &dd_cnt.skipped_raced);
		return false;
	}
	for (size_t i = 0; i < w->n; i++)
		if (it[i].state == IT_GONE)
			it[i].state = IT_DROP_WP;
	return true;
}

/* 2. Make empty PTEs wait for us: register the window MISSING|WP, and park
 * it. From the first move to the final wake, pages of this window may be
 * empty with their content in S, and we may leave the gate (EAGAIN retries
 * in move_back and unprotect, the mremap of 5.). While the window is parked
 * the reader leaves its MISSING faults to us instead of filling them with
 * zeros. */
static void win_wait_empty(struct window *w)
{
	struct dd_merge_item *it = w->it;

	w->reg = dd_uffd_register(eng.uffd, w->a0, w->len,
				  UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP);
	if (w->reg < 0)
		for (size_t i = 0; i < w->n; i++)
			if (it[i].state == IT_LIVE)
				drop(&it[i], IT_DROP_WP, w->reg == -ENOMEM ? &dd_cnt.skipped_budget
									   : &dd_cnt.skipped_raced);
	atomic_store(&eng.parked_end, w->a0 + w->len);
	atomic_store(&eng.parked, w->a0);
}

/* 3. Move out to S with UFFDIO_MOVE: the pin check. Returns false when the
 * test hook has done the naive protocol instead (4. is then skipped). */
static bool win_move_out(struct window *w)
{
	struct dd_merge_item *it = w->it;
	size_t n = w->n;

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
		return false;
	}
	for (size_t i = 0; i < n;) {
		if (it[i].state != IT_LIVE) {
			i++;
			continue;
		}
		size_t k = run_len(it, i, n, IT_LIVE);
		int err;
		ssize_t moved = dd_uffd_move(eng.uffd, scratch_of(w->base + i), it[i].addr,
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
	return true;
}

/* 4. Compare each moved page, our private copy in S, with its target; a
 * page that differs goes back. */
static void win_compare(struct window *w)
{
	struct dd_merge_item *it = w->it;
	const char *copy = read_moved(it, w->n, w->base);

	for (size_t i = 0; i < w->n; i++) {
		if (it[i].state != IT_MOVED)
			continue;
		const void *page = copy ? copy + i * DD_PAGE : (const void *)scratch_of(w->base + i);
		if (!memcmp(page, target_page(it[i].target), DD_PAGE))
			continue;
		DD_INC(skipped_mismatch, 1);
		if (it[i].target != DD_SLOT_ZERO)
			dd_stable_verify_hash(dd_store_hash(it[i].target));
		it[i].state = move_back(w->base + i, it[i].addr) ? IT_DROP_WP : IT_GONE;
	}
}

/* 5. Replace: each run of moved pages with contiguous slots is placed as one
 * mapping (place_run, "Placing a merged run"); zero targets need nothing,
 * their PTEs are already empty. */
static void win_replace(struct window *w)
{
	struct dd_merge_item *it = w->it;
	size_t n = w->n;

	if (dd_unlikely(dd_opt.test_share_die == DD_GS_MERGING))
		for (size_t i = 0; i < n; i++)
			if (it[i].state == IT_MOVED && DD_SLOT_REAL(it[i].target) &&
			    dd_store_slot_is_group(it[i].target - 1))
				dd_group_test_die(DD_GS_MERGING);
	for (size_t i = 0; i < n;) {
		if (atomic_load(&eng.ev_head) != w->seen) {
			w->seen = atomic_load(&eng.ev_head);
			events_in_window(it, n, w->base, w->since);
		}
		if (it[i].state != IT_MOVED) {
			i++;
			continue;
		}
		size_t k = map_run_len(it, i, n);
		if (it[i].target == DD_SLOT_ZERO) {
			for (size_t x = i; x < i + k; x++)
				it[x].state = IT_DONE;
			w->merged += (long)k;
			i += k;
			continue;
		}
		uintptr_t a = it[i].addr;
		size_t p = (a - w->r->start) / DD_PAGE, l = k * DD_PAGE;
		long delta = vma_delta(w->r, p, k, it[i].target, it[i + k - 1].target);
		if (place_run(a, l, it[i].target) < 0) {   /* ENOMEM at the map limit */
			eng.budget_wait_pass += k;
			for (size_t x = i; x < i + k; x++) {
				DD_INC(skipped_budget, 1);
				it[x].state = move_back(w->base + x, it[x].addr) ? IT_DROP_WP : IT_GONE;
			}
		} else {
			for (size_t x = i; x < i + k; x++)
				it[x].state = IT_DONE;
			w->merged += (long)k;
			eng.vmas_this_pass += delta;
			DD_INC(vmas_added, delta);
		}
		i += k;
	}
}

/*
 * 6. Restore: WP-only registration on what is still anonymous. A
 * registration can only add modes (tests/probe/probe_register_modes.c), so
 * MISSING goes with an unregister first; that also drops the write-
 * protection of those pages, which is what we want now: every page of the
 * window is either merged or given back. While the range is briefly
 * unregistered an empty PTE reads as zeros, which is right for every empty
 * page left in the window (zero merges, discarded pages). Then un-protect
 * the dropped pages that are left (this wakes their writers), wake
 * everybody who waited on the window, and unpark it.
 */
static void win_restore(struct window *w)
{
	struct dd_merge_item *it = w->it;
	size_t n = w->n;

	for (size_t i = 0; w->reg == 0 && i < n;) {
		bool file = it[i].state == IT_DONE && it[i].target != DD_SLOT_ZERO;
		size_t k = i + 1;
		while (k < n && (it[k].state == IT_DONE && it[k].target != DD_SLOT_ZERO) == file)
			k++;
		if (!file) {
			uintptr_t s0 = it[i].addr;
			size_t l = (k - i) * DD_PAGE;
			int e = dd_uffd_unregister(eng.uffd, s0, l);
			if (e < 0 && uffd_back(-e))
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
	for (size_t i = 0; i < n;) {
		if (it[i].state != IT_DROP_WP) {
			i++;
			continue;
		}
		size_t k = run_len(it, i, n, IT_DROP_WP);
		unprotect(it[i].addr, k * DD_PAGE);
		i += k;
	}
	wake(w->a0, w->len);
	atomic_store(&eng.parked, 0);
	DD_TRACE('w', w->a0, w->len, 0);
}

/* After 6, under eng.lock: what each page of the region now maps. */
static void win_account(struct window *w)
{
	for (size_t i = 0; i < w->n; i++) {
		const struct dd_merge_item *it = &w->it[i];
		if (it->state != IT_DONE)
			continue;
		if (it->target == DD_SLOT_ZERO)
			atomic_fetch_add(&dd_cnt.zero_pages, 1);
		else
			dd_store_get(it->target);
		dd_region_set_slot(w->r, (it->addr - w->r->start) / DD_PAGE, it->target);
		DD_INC(merges, 1);
	}
}

/* One window through the steps of the DOC. Returns the pages merged. */
static long merge_window(struct dd_region *r, struct dd_merge_item *it, size_t n, size_t base)
{
	dd_assert_held(&eng.gate);
	/* events read so far; more are read only when we let the reader run */
	uint64_t since = atomic_load(&eng.ev_head);
	struct window w = { .r = r, .it = it, .n = n, .base = base, .a0 = it[0].addr,
			    .len = n * DD_PAGE, .since = since, .seen = since };

	win_budget(&w);
	if (!win_protect(&w))                 /* 1 */
		return 0;
	win_wait_empty(&w);                   /* 2 */
	if (win_move_out(&w))                 /* 3 */
		win_compare(&w);              /* 4 */
	win_replace(&w);                      /* 5 */
	win_restore(&w);                      /* 6 */
	win_account(&w);
	return w.merged;
}

/*
 * DOC: Unmerging
 *
 * dedup_unregister() and dedup_shutdown() hand the range back as anonymous
 * memory: merged runs are private memfd mappings, and left so an mremap()
 * that grows one would map the memfd's next slots where zeros belong, and
 * a discard after we stop listening would read the canonical page again.
 * The result must also be what the application had: one anonymous VMA
 * where it had one (an mremap() over several fails with EFAULT).
 *
 * Each run of merged pages (its VMAs are ours: canonical pages, and pages
 * copied on write since) is cut into chunks (at most UM_CHUNK pages, one
 * protection). A group of chunks (at most UM_GROUP of them within UM_SPAN
 * pages) goes through these steps under the gate:
 *  0. (once per region, before the first group) every run is registered
 *     MINOR|MISSING|WP, then the whole region MISSING|WP. In this order: a
 *     registration that does not ask for every mode a VMA has replaces its
 *     modes (tests/probe/probe_register_modes.c), and a run without MINOR
 *     would read its canonical page again after a discard. The anonymous
 *     parts take MISSING so that their VMAs are like the replacements (3.);
 *  1. the group's span is parked and its chunks write-protected (not the
 *     anonymous pages between them: each VMA protected costs a TLB flush):
 *     from here a write to a chunk, user or kernel mode, waits for us, and
 *     so does a read of an empty page (the reader leaves a parked
 *     range's faults to us, also when we let it run to read events). What each page is comes from pagemap,
 *     read once before and once after the protection;
 *  2. per chunk, it is copied into a buffer B page by page from what A
 *     reads: a canonical page from the store, a page copied on write from
 *     A itself (anonymous: reading it never faults to us), zeros where A
 *     was discarded - and where a discard was announced (its REMOVE read)
 *     whose zap may still be to come (dd_discard_pending: the zap would
 *     otherwise land on the old page after our copy and be lost);
 *  3. replaced by an empty anonymous VMA registered MISSING|WP like the
 *     rest of the region: a piece T of a PROT_NONE reservation registered
 *     with us, made accessible (mprotect keeps the registration) and moved
 *     over A (the REMAP this raises is read by our reader, so the gate is
 *     released for the mremap, with the span parked: its faults wait). T
 *     has never been touched, so it has no anon_vma and the kernel gives it
 *     the page offset of its new address (copy_vma): it merges with its
 *     anonymous neighbours at once. (A T mapped with mmap(NULL) next to our
 *     buffer merged with that buffer instead, took its anon_vma, and kept
 *     T's page offset: every unmerged run stayed a VMA of its own, 16,423
 *     of them after 16k runs.) T's flags (madvise: MADV_NOHUGEPAGE and
 *     friends, or MAP_NORESERVE) must be the run's and its neighbours': a
 *     big range's walk reads them all from smaps (um_t_flags); otherwise,
 *     if T did not merge with a neighbour, we read that neighbour's VmFlags
 *     once (smaps), give them to the still empty replacement and to every
 *     later T (um_check_merge);
 *  4. filled from B with UFFDIO_COPY (pages that read zeros stay empty),
 *     except pages the application discarded while we were out of the
 *     gate (they stay empty: zeros);
 *  3.-4. by span: chunks close together (within UM_CHUNK pages, read-
 *     write, the anonymous gaps between them plain, with flags read from
 *     smaps that T can be given: um_walk, um_gap_ok) go as one: the gaps'
 *     pages are moved out to X with UFFDIO_MOVE, one T is moved over the
 *     whole span (one mremap, one REMAP round trip, for all its runs), the
 *     chunks are filled from B and the gaps' pages moved back (um_span,
 *     which says why that is safe). Where a gap page will not move
 *     (pinned, shared with a child, locked), the span goes chunk by chunk;
 *  5. the span is un-protected and woken. dedup_unregister() then
 *     unregisters the whole region, and what is left is one anonymous VMA.
 * Near vm.max_map_count: step 3 needs mappings to spare before it gives
 * any back. The reservation is three VMAs (guards, T), an mprotect of T a
 * split, and the kernel refuses an mremap(MREMAP_FIXED) unless the map
 * count is at least 6 below the limit, even one that would lower the count
 * (tests/probe/probe_max_map_count.c); every isolated run handed back
 * gives back two. A chunk whose reservation, mprotect or mremap fails with
 * ENOMEM is not left merged but deferred (untouched: it stays merged and
 * valid meanwhile), and the deferred chunks are tried again once the others
 * are done, for as long as a round hands some back. Only a chunk that no
 * round could hand back is left merged: the process is then within a few
 * mappings of the limit, and mapping an anonymous VMA at A without moving
 * a registered one (no headroom needed) would let the program read zeros,
 * or write, before we could register and fill it.
 * Every step costs the same whatever the number of mappings: protections
 * come from one PROCMAP_QUERY per VMA of the region (or one read of maps
 * text per region), never from parsing maps per run (that was a quadratic
 * 57 s for 16k runs).
 * Limit: a page copied on write that a device is writing into at that
 * moment (O_DIRECT in flight, an io_uring fixed buffer) is copied, not
 * moved; the device's later writes go to the old page. UFFDIO_MOVE, our pin
 * check, does not take pages out of a file VMA. Do not unregister memory
 * with such I/O in flight.
 */

#define UM_CHUNK 1024      /* pages per chunk: the size of B */
#define UM_SPAN 8192       /* pages a group spans at most */
#define UM_GROUP 256       /* chunks per group */
#define UM_RESERVE ((size_t)64 << 20)   /* T reservation, bytes */

struct um_chunk {
	uintptr_t a;
	size_t n;          /* pages */
	int prot;
};

/* The state of one unmerge: a region's runs (dd_merge_unmerge), or the
 * pieces of our memfd in a range that no region covers any more
 * (dd_merge_unmerge_pieces: r is NULL). */
struct um {
	struct dd_region *r;
	uintptr_t lo, hi;          /* the range (r's, or the one asked for) */
	uintptr_t pos;             /* chunks are found from here on */
	struct um_vma {
		uintptr_t lo, hi;
		uint64_t offset, ino;
		int prot;
		bool ours, anon, named;
		bool vmf_known;    /* vmf read from smaps (um_walk) */
		unsigned vmf;      /* DD_VMF_* */
	} *v;
	size_t nv, vcap, vi;       /* the range's VMAs; vi: cursor */
	char *buf;                 /* B */
	uint8_t *st, *st2;         /* PTE states of a span, before/after 1. */
	uint8_t zero[UM_CHUNK];    /* what B's pages are (UM_COPIED, ...) */
	uint8_t gap[UM_CHUNK];     /* a span's pages in X: UM_X_* (um_span) */
	uintptr_t x;               /* X: where a span's gaps wait (um_x), 0: none */
	bool x_dirty;              /* X holds pages nobody took back: make it anew */
	bool x_lost;               /* X holds pages we could not put back: keep it */
	bool missing;              /* 0. registered the range MISSING: spans allowed */
	unsigned span_vmf;         /* um_span_end: the flags of the span's gaps */
	bool span_gaps;            /* ... if it has any */
	struct um_chunk ch[UM_GROUP];
	uintptr_t res, res_end, res_pos;   /* T reservation */
	bool noreserve;            /* T: MAP_NORESERVE (a neighbour has it) */
	unsigned vmf;              /* T: the neighbours' madvise flags */
	int qfd;                   /* /proc/self/maps for PROCMAP_QUERY, or < 0 */
	bool checked;              /* without PROCMAP_QUERY: merge checked once */
	unsigned nchecked;         /* merges checked (PROCMAP_QUERY) */
	int learned;               /* smaps reads */
	int err;                   /* first error */
	uintptr_t (*done)[2];      /* unmerged ranges, for discard.c at the end */
	size_t ndone, donecap;
	struct um_chunk *later;    /* deferred: no mapping to spare (ENOMEM) */
	size_t nlater, latercap;
};

static void um_error(struct um *u, int e, uintptr_t a, size_t n, const char *what)
{
	dd_warn("could not unmerge %#lx+%zu (%s, errno %d): left merged", (unsigned long)a,
		n * DD_PAGE, what, -e);
	if (!u->err)
		u->err = e;
}

/* Step 3 found no mapping to spare (ENOMEM near vm.max_map_count): try c
 * again once other chunks gave some back (um_run). */
static void um_defer(struct um *u, const struct um_chunk *c)
{
	if (u->nlater == u->latercap) {
		size_t ncap = u->latercap ? u->latercap * 2 : 256;
		void *p = dd_vm_grow(u->later, u->latercap * sizeof(*u->later),
				     ncap * sizeof(*u->later));
		if (!p) {
			um_error(u, -ENOMEM, c->a, c->n, "no mapping to spare, no room to defer");
			return;
		}
		u->later = p;
		u->latercap = ncap;
	}
	u->later[u->nlater++] = *c;
}

static int um_vma_fn(void *ctx, const struct dd_vma *v)
{
	struct um *u = ctx;
	if (u->nv == u->vcap) {
		size_t ncap = u->vcap ? u->vcap * 2 : 256;
		void *p = dd_vm_grow(u->v, u->vcap * sizeof(*u->v), ncap * sizeof(*u->v));
		if (!p)
			return -ENOMEM;
		u->v = p;
		u->vcap = ncap;
	}
	u->v[u->nv] = (struct um_vma){ v->lo, v->hi, v->offset, v->ino, v->prot, v->ours, v->anon,
				       v->named, v->vmf_known, v->vmf };
	u->nv++;
	return 0;
}

/* The VMA holding a (binary search), or NULL. */
static const struct um_vma *um_find(const struct um *u, uintptr_t a)
{
	size_t lo = 0, hi = u->nv;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (u->v[mid].hi <= a)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < u->nv && u->v[lo].lo <= a ? &u->v[lo] : NULL;
}

/* Is page a (inside the range) merged: a page of one of our memfd's VMAs?
 * (Pages of chunks already unmerged are not.) */
static bool um_file(const struct um *u, uintptr_t a)
{
	if (u->r) {
		uint32_t slot = dd_region_slot(u->r, (a - u->r->start) / DD_PAGE);
		return DD_SLOT_REAL(slot) || slot == DD_SLOT_COWED;
	}
	if (u->ndone && a >= u->done[0][0] && a < u->done[u->ndone - 1][1])
		for (size_t i = u->ndone; i-- > 0 && u->done[i][1] > a;)
			if (a >= u->done[i][0])
				return false;
	const struct um_vma *v = um_find(u, a);
	return v && v->ours;
}

/* Is page a an anonymous page of the range, that the replacement of a
 * chunk next to it should merge with? */
static bool um_anon_at(const struct um *u, uintptr_t a)
{
	if (a < u->lo || a >= u->hi)
		return false;
	if (u->r)
		return !um_file(u, a);
	const struct um_vma *v = um_find(u, a);
	return v && (!v->ours || !um_file(u, a));
}

/* The canonical page a maps (slot + 1), or DD_SLOT_NONE if there is none to
 * read: outside a region it comes from the VMA's file offset, and only a
 * slot in use is read (a free one may be a hole: reading it would put a
 * page into our memfd). */
static uint32_t um_slot(const struct um *u, uintptr_t a)
{
	if (u->r)
		return dd_region_slot(u->r, (a - u->r->start) / DD_PAGE);
	const struct um_vma *v = um_find(u, a);
	if (!v || !v->ours)
		return DD_SLOT_NONE;
	uint32_t s = dd_store_slot_at(v->ino, v->offset + (a - v->lo));
	return dd_store_alive(s) ? s : DD_SLOT_NONE;
}

/* The madvise flags a replacement T can be given (um_advise) */
#define UM_ADVISED (DD_VMF_NOHUGEPAGE | DD_VMF_HUGEPAGE | DD_VMF_DONTDUMP | DD_VMF_DONTFORK | \
		    DD_VMF_WIPEONFORK | DD_VMF_SEQ_READ | DD_VMF_RAND_READ | DD_VMF_MERGEABLE)

/*
 * The next run of merged pages at or after u->pos, [*a, *e): from the
 * region's metadata (without visiting absent pages: region.c), or from the
 * VMA table (the VMAs of our memfd). False: none left.
 */
static bool um_next_run(struct um *u, uintptr_t *a, uintptr_t *e)
{
	if (u->r) {
		size_t i = (u->pos - u->r->start) / DD_PAGE, k;
		if (u->pos >= u->hi || !dd_region_next_merged(u->r, &i, &k) ||
		    u->r->start + i * DD_PAGE >= u->hi)   /* past a range short of r's end */
			return false;
		*a = u->r->start + i * DD_PAGE;
		*e = u->r->start + k * DD_PAGE;
		if (*e > u->hi)   /* a range cut inside a run: the part in it */
			*e = u->hi;
		return true;
	}
	while (u->vi < u->nv && (u->v[u->vi].hi <= u->pos || !u->v[u->vi].ours))
		u->vi++;
	/* (a piece across the range's end: done at u->hi, not a run of 0) */
	if (u->pos >= u->hi || u->vi == u->nv || u->v[u->vi].lo >= u->hi)
		return false;
	*a = u->v[u->vi].lo > u->pos ? u->v[u->vi].lo : u->pos;
	*e = u->v[u->vi].hi < u->hi ? u->v[u->vi].hi : u->hi;
	return true;
}

/* The next chunk from u->pos (false: none left): merged pages of one
 * protection, contiguous, at most UM_CHUNK. */
static bool um_next_chunk(struct um *u, struct um_chunk *c)
{
	uintptr_t a, e;

	if (!um_next_run(u, &a, &e))
		return false;
	const struct um_vma *v = um_find(u, a);
	int prot = v ? v->prot : -1;
	uintptr_t end = a + UM_CHUNK * DD_PAGE < e ? a + UM_CHUNK * DD_PAGE : e;
	unsigned vmf = v && v->vmf_known ? v->vmf & UM_ADVISED : 0;
	/* cut where the protection changes, or the madvise flags where smaps
	 * told them (the VMA table, in order): T gets one set */
	for (uintptr_t vend = v ? v->hi : end; vend < end; vend = v->hi) {
		v = um_find(u, vend);
		if (!v || v->prot != prot || (v->vmf_known && (v->vmf & UM_ADVISED) != vmf)) {
			end = vend;
			break;
		}
	}
	*c = (struct um_chunk){ a, (end - a) / DD_PAGE, prot };
	u->pos = end;
	return true;
}

/* Give [a, a + len) the madvise flags vmf (none of these raises an event). */
static const struct { unsigned f; int advice; } um_advice[] = {
	{ DD_VMF_NOHUGEPAGE, MADV_NOHUGEPAGE }, { DD_VMF_HUGEPAGE, MADV_HUGEPAGE },
	{ DD_VMF_DONTDUMP, MADV_DONTDUMP }, { DD_VMF_DONTFORK, MADV_DONTFORK },
	{ DD_VMF_WIPEONFORK, MADV_WIPEONFORK }, { DD_VMF_SEQ_READ, MADV_SEQUENTIAL },
	{ DD_VMF_RAND_READ, MADV_RANDOM }, { DD_VMF_MERGEABLE, MADV_MERGEABLE },
};

static void um_advise(uintptr_t a, size_t len, unsigned vmf)
{
	for (size_t i = 0; i < DD_ARRAY_SIZE(um_advice); i++)
		if (vmf & um_advice[i].f)
			(void)dd_os_madvise((void *)a, len, um_advice[i].advice);
}

/* Let go of what is left of the reservation (and its guard pages). Only
 * what is left: the parts moved out are holes that other mappings may fill
 * by now. */
static void um_drop_reserve(struct um *u)
{
	if (u->res) {
		dd_os_munmap((void *)(u->res - DD_PAGE), DD_PAGE);
		dd_os_munmap((void *)u->res_pos, u->res_end + DD_PAGE - u->res_pos);
	}
	u->res = 0;
}

static int um_one_fn(void *ctx, const struct dd_vma *v)
{
	*(struct dd_vma *)ctx = *v;
	return 1;
}

/* A reservation of sz bytes between two PROT_NONE guard pages, which
 * keep it from merging with a neighbour (and taking its anon_vma) when it
 * is made accessible. An mmap that merged with a PROT_NONE neighbour
 * already is given back and tried elsewhere. */
static uintptr_t um_reserve(size_t sz, bool noreserve)
{
	int flags = MAP_PRIVATE | MAP_ANONYMOUS | (noreserve ? MAP_NORESERVE : 0);

	for (int tries = 0; tries < 4; tries++) {
		char *p = dd_os_mmap(NULL, sz + 2 * DD_PAGE, PROT_NONE, flags, -1, 0, true);
		struct dd_vma v = { 0 };
		if (p == MAP_FAILED)
			return 0;
		if (dd_vmas_in((uintptr_t)p, (uintptr_t)p + 1, um_one_fn, &v) == 0 &&
		    v.lo == (uintptr_t)p && v.hi == (uintptr_t)p + sz + 2 * DD_PAGE) {
			if (dd_os_mprotect(p + DD_PAGE, sz, PROT_READ | PROT_WRITE) == 0)
				return (uintptr_t)p + DD_PAGE;
			dd_os_munmap(p, sz + 2 * DD_PAGE);
			return 0;   /* strict overcommit, say */
		}
		dd_os_munmap(p, sz + 2 * DD_PAGE);
	}
	return 0;
}

/*
 * T for a chunk: the next len bytes of a reservation, private anonymous
 * read-write memory (accounted like the application's, or MAP_NORESERVE
 * like a neighbour that has it; with the neighbours' madvise flags), never
 * touched, registered MISSING|WP with our uffd. Never touched, it has no
 * anon_vma: moving a piece of it gives that piece the page offset of its
 * new address (see "Unmerging", 3.). The pieces need no gaps between them.
 */
static uintptr_t um_make_t(struct um *u, size_t len, int prot)
{
	if (u->res && u->res_pos + len > u->res_end)
		um_drop_reserve(u);
	if (!u->res) {
		size_t sz = len > UM_RESERVE ? len : UM_RESERVE;
		uintptr_t p = um_reserve(sz, u->noreserve);
		if (!p && sz > len)
			p = um_reserve(sz = len, u->noreserve);
		if (!p)
			return 0;
		um_advise(p, sz, u->vmf);
		u->res = u->res_pos = p;
		u->res_end = p + sz;
		if (dd_uffd_register(eng.uffd, p, sz,
				     UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP) < 0) {
			um_drop_reserve(u);
			return 0;
		}
	}
	uintptr_t t = u->res_pos;
	u->res_pos += len;
	if (prot != (PROT_READ | PROT_WRITE) && dd_os_mprotect((void *)t, len, prot) < 0) {
		dd_os_munmap((void *)t, len);
		return 0;
	}
	return t;
}

/*
 * 3., after the move: the replacement at [a, a + l) should have merged with
 * the anonymous neighbour(s) that left/right say it has. If not, learn that
 * neighbour's VmFlags (smaps) and give them, but for the fork flags, to
 * the replacement (still empty: nothing to lose) and to every later T:
 * madvise adds flags; where T has a flag the neighbour lacks, or differs
 * in MAP_NORESERVE, a new T with the right ones is moved over it. With
 * PROCMAP_QUERY the first chunks are checked, then every 32nd (a miss
 * costs a mapping, not data); without it, the first (maps text is read for
 * it).
 */
static void um_check_merge(struct um *u, uintptr_t a, size_t l, int prot, bool left, bool right)
{
	struct dd_vma v = { 0 };
	int q = -ENOENT;

	if (!left && !right)
		return;
	if (u->qfd >= 0) {
		if (u->nchecked++ >= 8 && u->nchecked % 32)
			return;
		q = dd_vma_query(u->qfd, a, false, &v);
		if (q == -ENOTTY) {
			dd_fd_close_temp(u->qfd);
			u->qfd = -1;
		}
	}
	if (u->qfd < 0) {
		if (u->checked)
			return;
		u->checked = true;
		q = dd_vmas_in(a, a + 1, um_one_fn, &v);
		if (q == 0 && !v.hi)
			q = -ENOENT;
	}
	if (q < 0 || ((!left || v.lo < a) && (!right || v.hi > a + l)))
		return;
	unsigned f;
	uintptr_t nb = left ? a - DD_PAGE : a + l;
	if (u->learned >= 4 || dd_vma_vmflags(nb, &f) < 0)
		return;
	u->learned++;
	u->nchecked = 0;   /* check the next ones again */
	/* Not WIPEONFORK or DONTFORK: they decide what a fork()ed child reads,
	 * and a merged run never had them (a piece, a file VMA, cannot have
	 * WIPEONFORK; the preload library unmerges a range before either goes
	 * on it). Taken from a neighbour, the run read zeros in the child, or
	 * was not there (pl_unmerge_part). */
	unsigned want = f & UM_ADVISED & ~(DD_VMF_WIPEONFORK | DD_VMF_DONTFORK);
	bool noreserve = f & DD_VMF_NORESERVE;
	dd_debug("unmerge: %#lx did not merge with its neighbour (VmFlags %#x): copying them",
		 (unsigned long)a, f);
	if ((u->vmf & ~want) || noreserve != u->noreserve) {
		um_drop_reserve(u);
		u->vmf = want;
		u->noreserve = noreserve;
		uintptr_t t = um_make_t(u, l, prot);
		if (t && move_registered((void *)t, l, a) == MAP_FAILED) {
			/* the first replacement stays: unmerged alone - unless the
			 * failed move took it with it (mend_hole) */
			dd_os_munmap((void *)t, l);
			mend_hole(a, l, prot);
		}
	} else {
		um_advise(a, l, want & ~u->vmf);
		um_drop_reserve(u);
		u->vmf = want;
	}
}

enum { UM_COPIED, UM_ZERO, UM_READ };   /* what B's page is (um.zero) */

/* 4.: UFFDIO_COPY of B (from its page b) into [a, a + n pages), retried
 * while events are pending; pages that read zeros, and pages a REMOVE read
 * since @since names, stay empty. */
static int refill(struct um *u, uintptr_t a, size_t n, uint64_t since, size_t b)
{
	const char *buf = u->buf + b * DD_PAGE;
	const uint8_t *zero = u->zero + b;

	for (size_t i = 0; i < n;) {
		uintptr_t x = a + i * DD_PAGE;
		if (zero[i] == UM_ZERO || !follow_events(since, &x) || x != a + i * DD_PAGE) {
			i++;   /* zeros, discarded (or moved: not ours to fill) */
			continue;
		}
		size_t k = i + 1;
		while (k < n && zero[k] != UM_ZERO && k - i < 64) {
			x = a + k * DD_PAGE;
			if (!follow_events(since, &x) || x != a + k * DD_PAGE)
				break;
			k++;
		}
		int e;
		ssize_t got = dd_uffd_copy(eng.uffd, a + i * DD_PAGE, buf + i * DD_PAGE,
					   (k - i) * DD_PAGE, false, &e);
		if (!e) {
			i = k;
			continue;
		}
		if (got > 0)
			i += (size_t)got / DD_PAGE;     /* stopped at a page: look again */
		else if (e == EEXIST)
			i++;                            /* filled meanwhile */
		else if (e == EAGAIN)
			let_reader_run();               /* parked: faults still wait */
		else if (!uffd_back(e))
			return -e;
	}
	return 0;
}

/* 2.: the chunk's content into B, from B's page b on. off: its first page
 * in the span's state arrays. zero[q] says what B's page b + q is: 0
 * copied, 1 zeros (not filled: the page is left empty), 2 to be read from
 * A. */
static int um_copy(struct um *u, const struct um_chunk *c, size_t off, size_t b)
{
	char *buf = u->buf + b * DD_PAGE;
	uint8_t *zero = u->zero + b;

	for (size_t q = 0; q < c->n; q++) {
		uintptr_t pa = c->a + q * DD_PAGE;
		uint8_t s1 = u->st[off + q], s2 = u->st2[off + q];
		uint32_t slot = um_slot(u, pa);
		bool was_anon = (s1 & DD_PTE_SWAP) || ((s1 & DD_PTE_PRESENT) && !(s1 & DD_PTE_FILE));
		/* present after 1.: what it is now (nothing changes any more);
		 * not present: swapped out (ours to read) if it was anonymous
		 * before, else empty (now a marker) */
		bool anon = (s2 & DD_PTE_PRESENT) ? !(s2 & DD_PTE_FILE) : was_anon && (s2 & DD_PTE_SWAP);
		bool file = (s2 & DD_PTE_PRESENT) && (s2 & DD_PTE_FILE);

		if (anon) {
			/* a REMOVE read and no fault since: the old page, with
			 * its zap to come */
			zero[q] = dd_discard_pending(pa) ? UM_ZERO : UM_READ;
		} else if (dd_discard_marked(pa)) {
			zero[q] = UM_ZERO;   /* discarded (present: its zap to come) */
		} else if (DD_SLOT_REAL(slot)) {
			memcpy(buf + q * DD_PAGE, dd_store_page(slot - 1), DD_PAGE);
			zero[q] = UM_COPIED;   /* what it maps, or a minor fault would */
		} else {
			/* present: as it reads; empty and no slot: a fault reads zeros */
			zero[q] = file ? UM_READ : UM_ZERO;
		}
	}
	/* the pages to read, runs of them per iovec, 64 iovecs a call */
	struct iovec lv[64], rv[64];
	size_t nio = 0, want = 0;
	for (size_t q = 0; q <= c->n; q++) {
		if (q < c->n && zero[q] == UM_READ) {
			if (nio && (q && zero[q - 1] == UM_READ)) {
				lv[nio - 1].iov_len += DD_PAGE;
				rv[nio - 1].iov_len += DD_PAGE;
			} else {
				lv[nio] = (struct iovec){ buf + q * DD_PAGE, DD_PAGE };
				rv[nio] = (struct iovec){ (void *)(c->a + q * DD_PAGE), DD_PAGE };
				nio++;
			}
			want += DD_PAGE;
			if (nio < DD_ARRAY_SIZE(lv) || (q + 1 < c->n && zero[q + 1] == UM_READ))
				continue;
		} else if (!nio || (q < c->n && nio < DD_ARRAY_SIZE(lv))) {
			continue;
		}
		if (process_vm_readv(getpid(), lv, nio, rv, nio, 0) != (ssize_t)want)
			return -EFAULT;
		nio = want = 0;
	}
	return 0;
}

/* [a, b) is unmerged; discard.c forgets it at the end (one pass). */
static void um_done(struct um *u, uintptr_t a, uintptr_t b)
{
	if (u->ndone && u->done[u->ndone - 1][1] == a) {
		u->done[u->ndone - 1][1] = b;
		return;
	}
	if (u->ndone == u->donecap) {
		size_t ncap = u->donecap ? u->donecap * 2 : 512;
		void *p = dd_vm_grow(u->done, u->donecap * sizeof(*u->done), ncap * sizeof(*u->done));
		if (!p) {
			dd_discard_unmerged(a, b);   /* one at a time, then */
			return;
		}
		u->done = p;
		u->donecap = ncap;
	}
	u->done[u->ndone][0] = a;
	u->done[u->ndone++][1] = b;
}

/* Region bookkeeping for n pages from a, unmerged: their slots go. Pieces
 * no region covers keep their slots (region.c). */
static void um_put_slots(struct um *u, uintptr_t a, size_t n)
{
	struct dd_region *r = u->r;

	if (!r)
		return;
	size_t p = (a - r->start) / DD_PAGE;
	for (size_t q = p; q < p + n; q++) {
		uint32_t slot = dd_region_slot(r, q);
		if (DD_SLOT_REAL(slot))
			dd_store_put(slot);
		dd_region_set_slot(r, q, DD_SLOT_NONE);
	}
}

/*
 * T's flags where smaps told what the replaced mappings have (um_walk).
 * Our runs were mapped without the flags of the memory they replaced, so
 * what a run has was given to it since (the program's madvise after the
 * merge) and T keeps it; the rest comes from the anonymous memory around,
 * which kept what the program gave the range: the flags the neighbours on
 * both sides share (a neighbour that has a flag the other lacks is where a
 * madvise'd range begins or ends), or the one neighbour's; in a span the
 * gaps' (all the same, um_span_end). MAP_NORESERVE likewise. True if they
 * are known: T is then given them (a new reservation if they differ from
 * the current one's), and um_check_merge, which guesses them from a
 * neighbour T failed to merge with, must not run: a neighbour with other
 * flags is then right not to merge.
 */
static bool um_t_flags(struct um *u, uintptr_t a, size_t l)
{
	const struct um_vma *v = um_find(u, a), *nl = um_find(u, a - DD_PAGE), *nr = um_find(u, a + l);
	unsigned around;

	if (!v || !v->vmf_known)
		return false;
	if (u->span_gaps) {
		around = u->span_vmf;
	} else {
		nl = nl && nl->anon && nl->vmf_known ? nl : NULL;
		nr = nr && nr->anon && nr->vmf_known ? nr : NULL;
		if (!nl && !nr)
			return false;
		around = nl && nr ? nl->vmf & nr->vmf : (nl ? nl : nr)->vmf;
	}
	unsigned advised = (v->vmf | around) & UM_ADVISED;
	bool noreserve = around & DD_VMF_NORESERVE;
	if (u->vmf != advised || u->noreserve != noreserve) {
		um_drop_reserve(u);
		u->vmf = advised;
		u->noreserve = noreserve;
	}
	return true;
}

/* 2.-4. for chunk c alone: its own T and mremap. s: the group's first
 * page (for the state arrays). Under the gate, released for the mremap. */
static void um_chunk(struct um *u, const struct um_chunk *c, uintptr_t s)
{
	size_t l = c->n * DD_PAGE;
	int ret;

	/* 2. */
	if ((ret = um_copy(u, c, (c->a - s) / DD_PAGE, 0)) < 0) {
		um_error(u, ret, c->a, c->n, "reading it");
		return;
	}
	/* 3. */
	const uint64_t since = atomic_load(&eng.ev_head);
	u->span_gaps = false;
	bool known = um_t_flags(u, c->a, l);
	uintptr_t t = um_make_t(u, l, c->prot);
	if (!t) {   /* near the limit: mappings to spare later, maybe */
		um_defer(u, c);
		return;
	}
	if (move_registered((void *)t, l, c->a) == MAP_FAILED) {
		ret = -errno;
		/* nothing moved; the piece goes back to the reservation
		 * (or away: it may have been split off by mprotect) */
		if (c->prot == (PROT_READ | PROT_WRITE) && t + l == u->res_pos)
			u->res_pos = t;
		else
			dd_os_munmap((void *)t, l);
		int m = mend_hole(c->a, l, c->prot);
		if (m < 0) {
			um_error(u, ret, c->a, c->n, "mremap left a hole");
			return;
		}
		if (m == 0) {
			if (ret == -ENOMEM)
				um_defer(u, c);
			else
				um_error(u, ret, c->a, c->n, "mremap");
			return;
		}
		/* the run was unmapped, and is anonymous and empty
		 * again: go on as if it had been moved (B has it all) */
	}
	if (!known)
		um_check_merge(u, c->a, l, c->prot, um_anon_at(u, c->a - DD_PAGE),
			       um_anon_at(u, c->a + l));
	/* 4. */
	ret = refill(u, c->a, c->n, since, 0);
	if (ret < 0)   /* cannot happen while the run stays ours and empty */
		dd_err("could not refill %#lx+%zu while unmerging (errno %d): pages lost",
		       (unsigned long)c->a, l, -ret);
	um_done(u, c->a, c->a + l);
	um_put_slots(u, c->a, c->n);
}

/*
 * X: where the gaps of a span wait while T is moved over it (um_span).
 * Private anonymous read-write memory of ours, registered MISSING with our
 * uffd like S: UFFDIO_MOVE wants both ends anonymous, registered with the
 * same uffd, of the same protection; and an access to an empty page of it
 * would wait for a reader (nobody but this thread touches it). Between
 * spans it is empty. A page that was not taken back (the application
 * discarded it meanwhile) makes it dirty: unmapped (no event: we do not ask
 * for UNMAP) and made again. False: no X (no span then).
 */
static bool um_x(struct um *u)
{
	const size_t len = UM_CHUNK * DD_PAGE;

	if (u->x_lost)
		return false;   /* it keeps what we could not put back */
	if (u->x && u->x_dirty) {
		dd_os_munmap((void *)u->x, len);
		u->x = 0;
	}
	if (!u->x) {
		void *p = dd_os_mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
				     -1, 0, true);
		if (p == MAP_FAILED)
			return false;
		dd_os_madvise(p, len, MADV_NOHUGEPAGE);
		if (dd_uffd_register(eng.uffd, (uintptr_t)p, len, UFFDIO_REGISTER_MODE_MISSING) < 0) {
			dd_os_munmap(p, len);
			return false;
		}
		u->x = (uintptr_t)p;
		u->x_dirty = false;
	}
	return true;
}

/*
 * May [g0, g1), the anonymous pages between two chunks, go to X while T
 * is moved over it and its chunks? It must be one anonymous mapping of the
 * span's protection (read-write, as X) with no name: its pages come back
 * into T's mapping, which replaces the gap's. So its flags must be known
 * (smaps, um_walk) and be ones T can be given (*vmf: madvise flags and
 * MAP_NORESERVE, um_make_t); a locked gap (its lock would go) or one with
 * any other flag (VM_GROWSDOWN, mseal, lock-on-fault, a flag newer than
 * this code) stays in place. And none of its pages may be named by a
 * REMOVE whose zap may still be to come (discard.c): moved out, the page
 * would miss its zap and come back with the old content.
 */
static bool um_gap_ok(const struct um *u, uintptr_t g0, uintptr_t g1, unsigned *vmf)
{
	const struct um_vma *v = um_find(u, g0);
	bool any = dd_unlikely(dd_opt.test_unsafe_span_flags);
	if (!v || v->ours || !v->anon || v->named || v->hi < g1 ||
	    v->prot != (PROT_READ | PROT_WRITE) ||
	    (!any && (!v->vmf_known || (v->vmf & (DD_VMF_LOCKED | DD_VMF_OTHER)))))
		return false;
	for (uintptr_t p = g0; p < g1; p += DD_PAGE)
		if (dd_removing_named(p))
			return false;
	*vmf = any ? u->vmf | (u->noreserve ? DD_VMF_NORESERVE : 0)   /* what T has */
		   : v->vmf & (UM_ADVISED | DD_VMF_NORESERVE);
	return true;
}

/* The chunks from i of the group that go as one span: i..j-1, read-write,
 * within UM_CHUNK pages (B holds them at their offsets), none left
 * unprotected, gaps um_gap_ok and all of the same flags (u->span_vmf, the
 * flags T will get). j == i + 1: chunk i alone. */
static size_t um_span_end(struct um *u, size_t i, size_t n, const bool *wp_failed)
{
	const struct um_chunk *ch = u->ch;
	size_t j = i + 1;

	u->span_gaps = false;
	/* A gap page out in X leaves its address empty: only MISSING
	 * registration (step 0) makes an access there wait for us. */
	if (dd_unlikely(dd_opt.test_unmerge_by_run) || !u->missing || wp_failed[i] ||
	    ch[i].prot != (PROT_READ | PROT_WRITE) || u->x_lost)
		return j;
	/* The runs' flags: T gets the gaps' (um_t_flags), so a run given a
	 * flag the gaps lack goes alone. Runs and gaps locked, or with a flag
	 * T cannot be given, stay out of spans. */
	const bool any = dd_unlikely(dd_opt.test_unsafe_span_flags);
	const struct um_vma *v = um_find(u, ch[i].a);
	if (!any && (!v || !v->vmf_known || (v->vmf & (DD_VMF_LOCKED | DD_VMF_OTHER))))
		return j;
	unsigned runs = v ? v->vmf & UM_ADVISED : 0;
	for (; j < n && !wp_failed[j] && ch[j].prot == ch[i].prot &&
	       ch[j].a + ch[j].n * DD_PAGE - ch[i].a <= UM_CHUNK * DD_PAGE; j++) {
		uintptr_t g0 = ch[j - 1].a + ch[j - 1].n * DD_PAGE, g1 = ch[j].a;
		unsigned f = u->span_vmf;
		v = um_find(u, g1);
		if (!any && (!v || !v->vmf_known || (v->vmf & (DD_VMF_LOCKED | DD_VMF_OTHER))))
			break;
		if (g0 != g1 && (!um_gap_ok(u, g0, g1, &f) || (u->span_gaps && f != u->span_vmf)))
			break;
		unsigned r2 = runs | (v ? v->vmf & UM_ADVISED : 0);
		if (!any && (g0 != g1 || u->span_gaps) && (r2 & ~f))
			break;
		runs = r2;
		if (g0 != g1) {
			u->span_vmf = f;
			u->span_gaps = true;
		}
	}
	if (any)
		u->span_gaps = false;   /* (T as it is: the naive span) */
	return j;
}

/* What page i of a span is in X (u->gap[i]). */
enum { UM_X_NONE, UM_X_GAP, UM_X_FILLED, UM_X_LEFT };

/*
 * Move the span at a back from X: its gap pages (UM_X_GAP), and the pages
 * of its chunks filled in X from B (UM_X_FILLED), each to its address as
 * followed through the events read since @since. A page the application
 * discarded meanwhile stays out (its address is empty and reads zeros, as
 * the discard leaves it); a chunk's page whose address moved stays out too
 * (not ours to fill, as in refill); X is then dirty. Contiguous pages go in
 * one UFFDIO_MOVE, holes of X (UM_X_NONE: pages that read zeros) included
 * if @whole (T is over the span: one mapping): the kernel clears the moved
 * PTEs of one call with one TLB flush (against one each, page by page:
 * about 5 us a page on this guest, 0.1-0.7 us a page for 512 in one
 * call). Without @whole (T never came) only gap pages, each
 * stretch into its own anonymous mapping. Retried while
 * events are pending (the span is parked: its faults wait). Moves the
 * pages, so whatever they are - written, swapped - they come back as they
 * left.
 */
static void um_gaps_back(struct um *u, uintptr_t a, size_t np, uint64_t since, bool whole)
{
	int tries = 0;

	for (size_t i = 0; i < np;) {
		if (u->gap[i] == UM_X_NONE || u->gap[i] == UM_X_LEFT) {
			i++;
			continue;
		}
		uintptr_t p = a + i * DD_PAGE, to = p;
		if (!follow_events(since, &to) || (to != p && u->gap[i] == UM_X_FILLED)) {
			DD_TRACE('b', p, DD_PAGE, 0);
			u->gap[i++] = UM_X_LEFT;
			u->x_dirty = true;
			continue;
		}
		size_t k = i + 1;
		while (to == p && k < np && u->gap[k] != UM_X_LEFT &&
		       (whole || u->gap[k] == UM_X_GAP)) {
			uintptr_t q = a + k * DD_PAGE;
			if (!follow_events(since, &q) || q != a + k * DD_PAGE)
				break;
			k++;
		}
		int err;
		ssize_t m = dd_uffd_move_mode(eng.uffd, to, u->x + i * DD_PAGE, (k - i) * DD_PAGE,
					      UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, &err);
		DD_TRACE('B', to, (k - i) * DD_PAGE, m);
		size_t got = m > 0 ? (size_t)m / DD_PAGE : 0;
		memset(u->gap + i, UM_X_NONE, got);
		i += got;
		if (!err || (err == EAGAIN && got))
			continue;   /* all, or stopped at a page: from there */
		if ((err == EAGAIN || uffd_back(err)) && ++tries < 100000) {
			if (err == EAGAIN)
				let_reader_run();   /* an event is pending */
			continue;
		}
		/* Cannot happen while the span stays parked, registered with
		 * us and empty, and our uffd has a number. */
		dd_err("could not restore page %#lx (errno %d); its content is kept at %#lx",
		       (unsigned long)to, err, (unsigned long)(u->x + i * DD_PAGE));
		if (dd_trace_on)
			dd_trace_dump(to);
		u->x_lost = true;
		u->gap[i++] = UM_X_LEFT;
	}
}

/* 4. for a span: the pages of its chunks i..j-1 from B into X at their
 * offsets (UFFDIO_COPY: X is empty there), except those that read zeros,
 * for um_gaps_back to move with the gaps. False if a copy failed (then
 * the caller fills the chunks in place with refill). */
static bool um_fill_x(struct um *u, size_t i, size_t j)
{
	uintptr_t a = u->ch[i].a;
	int tries = 0;

	for (size_t x = i; x < j; x++) {
		size_t b = (u->ch[x].a - a) / DD_PAGE;
		for (size_t q = b, end = b + u->ch[x].n; q < end;) {
			if (u->zero[q] == UM_ZERO) {
				q++;
				continue;
			}
			size_t k = q + 1;
			while (k < end && u->zero[k] != UM_ZERO)
				k++;
			int err;
			ssize_t got = dd_uffd_copy(eng.uffd, u->x + q * DD_PAGE, u->buf + q * DD_PAGE,
						   (k - q) * DD_PAGE, false, &err);
			size_t g = got > 0 ? (size_t)got / DD_PAGE : 0;
			memset(u->gap + q, UM_X_FILLED, g);
			if (err && !(err == EAGAIN && g)) {
				if (err != EAGAIN || ++tries > 100000)
					return false;
				let_reader_run();   /* parked: faults still wait */
			}
			q += g;
		}
	}
	return true;
}

/* Move the gaps of chunks i..j-1 out to X (u->gap says which pages went).
 * False if one would not go (pinned or shared with a child: EBUSY; locked,
 * or another protection: EINVAL; an event pending: EAGAIN): then every
 * page is back in its place. */
static bool um_gaps_out(struct um *u, size_t i, size_t j, uint64_t since)
{
	const struct um_chunk *ch = u->ch;
	uintptr_t a = ch[i].a;

	for (size_t x = i + 1; x < j; x++) {
		uintptr_t g0 = ch[x - 1].a + ch[x - 1].n * DD_PAGE, g1 = ch[x].a;
		if (g0 == g1)
			continue;
		int err;
		ssize_t m = dd_uffd_move_mode(eng.uffd, u->x + (g0 - a), g0, g1 - g0,
					      UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, &err);
		DD_TRACE('M', g0, g1 - g0, m);
		size_t got = m > 0 ? (size_t)m / DD_PAGE : 0;
		memset(u->gap + (g0 - a) / DD_PAGE, UM_X_GAP, got);
		if (got * DD_PAGE == g1 - g0)
			continue;
		dd_debug("unmerge: %#lx stays in place (errno %d): its span goes run by run",
			 (unsigned long)(g0 + got * DD_PAGE), err);
		um_gaps_back(u, a, (g1 - a) / DD_PAGE, since, false);
		return false;
	}
	return true;
}

/*
 * 2.-4. for chunks i..j-1 as one span [a, e): one T and one mremap for all
 * of them, the anonymous pages between them (the gaps) moved out to X
 * before and back after. What that spares: an mremap per run - each an
 * unmap with its TLB flush, a VMA move and merge, and a REMAP that our
 * reader must read before the mremap returns (two context switches) -
 * for two UFFDIO_MOVEs per gap page. Why it is safe:
 *  - the chunks are write-protected and parked as in the per-chunk steps;
 *  - a gap page is either in place (untouched, the application's as
 *    always), or in X with its address empty in a MISSING-registered,
 *    parked range (an access waits for us, user or kernel mode), or back;
 *    UFFDIO_MOVE moves the page itself, so nothing is copied: a gap page
 *    that is pinned (a device may write into it) or shared with a child
 *    does not move (EBUSY), nor does a locked one (EINVAL), and the span
 *    then goes chunk by chunk, every gap page back in place;
 *  - a discard of a gap page announced before we look (its zap perhaps to
 *    come) keeps the span from forming (um_gap_ok); one announced while
 *    we let the reader run (the mremap, EAGAIN retries) leaves the page out
 *    (um_gaps_back, follow_events), as for the chunks' pages (refill);
 *  - a gap's flags: T replaces its VMA, so a span forms only where every
 *    gap is one VMA of the span's protection, no name, and flags read from
 *    smaps (um_walk) that are all the same and that T can be given: T gets
 *    them (MADV_DONTDUMP, DONTFORK, WIPEONFORK... and MAP_NORESERVE), and
 *    a gap with any other flag, or locked, stays in place (um_gap_ok). A
 *    flag given after the read (a raw madvise the preload library does not
 *    see) is the program changing the range while it unregisters it. (A
 *    page locked meanwhile does not move either: UFFDIO_MOVE refuses a
 *    VM_LOCKED source into an unlocked X, probe_move_semantics.)
 * False if the span could not be formed (nothing changed: the caller goes
 * chunk by chunk). Under the gate, released for the mremap.
 */
static bool um_span(struct um *u, size_t i, size_t j, uintptr_t s)
{
	const struct um_chunk *ch = u->ch;
	uintptr_t a = ch[i].a, e = ch[j - 1].a + ch[j - 1].n * DD_PAGE;
	size_t np = (e - a) / DD_PAGE, l = e - a;
	int prot = ch[i].prot, ret;

	if (!um_x(u))
		return false;
	/* 2. */
	for (size_t x = i; x < j; x++)
		if (um_copy(u, &ch[x], (ch[x].a - s) / DD_PAGE, (ch[x].a - a) / DD_PAGE) < 0)
			return false;   /* chunk by chunk, which says so */
	/* 3. */
	const uint64_t since = atomic_load(&eng.ev_head);
	memset(u->gap, UM_X_NONE, np);
	if (!um_gaps_out(u, i, j, since))
		return false;
	/* T takes the runs' and gaps' place: it gets their flags */
	bool known = !dd_opt.test_unsafe_span_flags && um_t_flags(u, a, l);
	uintptr_t t = um_make_t(u, l, prot);
	if (!t) {
		um_gaps_back(u, a, np, since, false);
		return false;
	}
	if (move_registered((void *)t, l, a) == MAP_FAILED) {
		ret = -errno;
		if (t + l == u->res_pos)
			u->res_pos = t;
		else
			dd_os_munmap((void *)t, l);
		int m = mend_hole(a, l, prot);
		if (m == 0) {   /* nothing moved: chunk by chunk (ENOMEM defers) */
			um_gaps_back(u, a, np, since, false);
			return false;
		}
		if (m < 0) {
			um_error(u, ret, a, np, "mremap left a hole");
			u->x_lost = true;   /* the gaps' pages are there */
			return true;
		}
		/* unmapped and mapped again, anonymous and empty: go on */
	}
	if (!known)
		um_check_merge(u, a, l, prot, um_anon_at(u, a - DD_PAGE), um_anon_at(u, e));
	/* 4.: the chunks' pages into X, and all back with the gaps */
	if (!um_fill_x(u, i, j)) {
		for (size_t q = 0; q < np; q++)
			if (u->gap[q] == UM_X_FILLED) {
				u->gap[q] = UM_X_LEFT;
				u->x_dirty = true;
			}
		for (size_t x = i; x < j; x++) {
			ret = refill(u, ch[x].a, ch[x].n, since, (ch[x].a - a) / DD_PAGE);
			if (ret < 0)   /* cannot happen while the span stays ours and empty */
				dd_err("could not refill %#lx+%zu while unmerging (errno %d): "
				       "pages lost", (unsigned long)ch[x].a, ch[x].n * DD_PAGE, -ret);
		}
	}
	um_gaps_back(u, a, np, since, true);
	um_done(u, a, e);
	for (size_t x = i; x < j; x++)
		um_put_slots(u, ch[x].a, ch[x].n);
	return true;
}

/* Steps 1-5 for the chunks u->ch[0..n). Returns with the gate released. */
static void um_group(struct um *u, size_t n)
{
	uintptr_t s = u->ch[0].a, e = u->ch[n - 1].a + u->ch[n - 1].n * DD_PAGE;
	size_t np = (e - s) / DD_PAGE;
	int ret;

	pthread_mutex_lock(&eng.gate);
	/* 1. Parked from here to the end: when we let the reader run (EAGAIN
	 * retries, the mremaps), it leaves the span's faults to us, and never
	 * un-protects a page we have copied. What each page is, read before
	 * the protection: protecting an empty PTE of a file VMA leaves a
	 * marker that pagemap shows like a swapped-out page, and reading it
	 * would fault to our own reader, who waits for the gate we hold.
	 * Meanwhile nothing empties a page (a discard waits for its REMOVE to
	 * be read) and nothing fills an empty one (its fault waits too). */
	atomic_store(&eng.parked_end, e);
	atomic_store(&eng.parked, s);
	DD_TRACE('U', s, e - s, (long)n);
	if ((ret = dd_pte_states(s, np, u->st)) < 0)
		goto out;
	/* Only the chunks are protected, each stretch of adjacent ones with
	 * one call: not the anonymous pages between them, which nothing here
	 * reads or replaces. The kernel flushes the TLB once per VMA it
	 * protects (uffd_wp_range), and between isolated runs every other
	 * VMA is such a page: protecting the span cost twice the flushes. */
	bool wp_failed[UM_GROUP];
	for (size_t i = 0, k; i < n; i = k) {
		uintptr_t pe = u->ch[i].a + u->ch[i].n * DD_PAGE;
		for (k = i + 1; k < n && u->ch[k].a == pe; k++)
			pe += u->ch[k].n * DD_PAGE;
		for (int tries = 0;; tries++) {
			ret = dd_uffd_wp(eng.uffd, u->ch[i].a, pe - u->ch[i].a, true);
			if (ret < 0 && tries <= 1000 && uffd_back(-ret))
				continue;
			if (ret != -EAGAIN || tries > 1000)
				break;
			let_reader_run();   /* an event is pending */
		}
		for (size_t x = i; x < k; x++)
			wp_failed[x] = ret < 0;
		if (ret < 0)
			um_error(u, ret, u->ch[i].a, (pe - u->ch[i].a) / DD_PAGE,
				 "write-protecting it");
	}
	if ((ret = dd_pte_states(s, np, u->st2)) < 0)
		goto out;
	/* 2.-4., a span of chunks at a time where one can be (um_span), else
	 * chunk by chunk */
	for (size_t i = 0, j; i < n; i = j) {
		j = um_span_end(u, i, n, wp_failed);
		if (j > i + 1 && um_span(u, i, j, s))
			continue;
		for (size_t x = i; x < j; x++)
			if (!wp_failed[x])   /* left merged (and valid) */
				um_chunk(u, &u->ch[x], s);
	}
	ret = 0;
out:
	if (ret < 0)
		um_error(u, ret, s, np, "reading its page states");
	/* 5. (what is left merged is un-protected too) */
	unprotect(s, e - s);
	atomic_store(&eng.parked, 0);
	wake(s, e - s);
	pthread_mutex_unlock(&eng.gate);
}

static void um_fini(struct um *u)
{
	um_drop_reserve(u);
	if (u->x && !u->x_lost)
		dd_os_munmap((void *)u->x, UM_CHUNK * DD_PAGE);
	if (u->qfd >= 0)
		dd_fd_close_temp(u->qfd);
	dd_vm_free(u->v, u->vcap * sizeof(*u->v));
	dd_vm_free(u->done, u->donecap * sizeof(*u->done));
	dd_vm_free(u->later, u->latercap * sizeof(*u->later));
	dd_vm_free(u->buf, UM_CHUNK * DD_PAGE);
	dd_vm_free(u->st, UM_SPAN);
	dd_vm_free(u->st2, UM_SPAN);
	dd_vm_free(u, sizeof(*u));
}

/*
 * The range's VMAs into u->v. PROCMAP_QUERY costs an ioctl and a check of
 * its descriptor per VMA (dd_vmas_in); the text of maps one read with a
 * line per VMA of the whole process below hi (dd_vmas_in_text); smaps the
 * same with each VMA's flags, which spans need (um_gap_ok), but twenty
 * lines a VMA and a walk of the page tables of every mapping it prints
 * (dd_vmas_in_smaps: 0.1 s for 64k mappings and 1 GiB resident, about
 * 1.5 us a mapping and 0.3 us a resident page). A span saves about 45 us a
 * run against one mremap each (docs/bench/2026-12-07-unmerge2), so smaps
 * is read where the range's merged runs outnumber (resident pages + 5 x
 * mappings) / 150; else the text where the region holds a good part of the
 * process's VMAs (a quarter, and at least 1024: 2 per isolated run), else
 * PROCMAP_QUERY (give-back hands back one run at a time: the text would
 * cost the whole process each time). Pieces no region covers are counted
 * by a first walk, which stops once they are enough for smaps. Without
 * smaps, no span: runs go one mremap each.
 */
/* um_walk: merged runs from which smaps is worth reading (at least 256) */
static long um_smaps_at(void)
{
	long total = eng.maps_at_pass + eng.vmas_this_pass, rss = dd_resident_pages();

	return rss < 0 ? LONG_MAX : (rss + 5 * total) / 150 + 256;
}

/* um_walk without a region: collect the range's VMAs, counting our pieces,
 * and stop as soon as there are enough of them to read smaps instead (the
 * rest of an ioctl walk would be wasted: 2 x 32k queries for 32k runs). */
struct um_count {
	struct um *u;
	long runs, smaps_at;
};

static int um_count_fn(void *ctx, const struct dd_vma *v)
{
	struct um_count *c = ctx;
	int ret = um_vma_fn(c->u, v);

	if (ret || !v->ours)
		return ret;
	if (++c->runs == 256 && c->smaps_at > 1)   /* statm is not read for a few runs */
		c->smaps_at = um_smaps_at();
	return c->runs >= c->smaps_at;
}

static int um_walk(struct um *u)
{
	struct dd_region *r = u->r;
	long total = eng.maps_at_pass + eng.vmas_this_pass, runs = 0;
	long smaps_at = dd_unlikely(dd_opt.test_unmerge_smaps) ? 1 : 256;
	long text_at = total / 4 > 1024 ? total / 4 : 1024;
	int ret;

	if (r) {
		size_t i = (u->lo - r->start) / DD_PAGE, k;
		long enough = text_at / 2 + 1;
		while (dd_region_next_merged(r, &i, &k) && r->start + i * DD_PAGE < u->hi) {
			runs++;
			i = k;
			if (runs == 256 && smaps_at > 1)   /* statm is not read for a few runs */
				smaps_at = um_smaps_at();
			if (runs >= smaps_at && runs >= enough)
				break;
		}
		if (runs >= smaps_at && dd_vmas_in_smaps(u->lo, u->hi, um_vma_fn, u) == 0)
			return 0;
		u->nv = 0;   /* (smaps failed: the others) */
		if (u->qfd >= 0 && 2 * runs + 1 >= text_at)
			return dd_vmas_in_text(u->lo, u->hi, um_vma_fn, u);
		return dd_vmas_in(u->lo, u->hi, um_vma_fn, u);
	}
	struct um_count c = { u, 0, smaps_at };
	if ((ret = dd_vmas_in(u->lo, u->hi, um_count_fn, &c)) < 0)
		return ret;
	if (c.runs < c.smaps_at)
		return 0;   /* walked it all */
	u->nv = 0;
	if (dd_vmas_in_smaps(u->lo, u->hi, um_vma_fn, u) == 0)
		return 0;
	u->nv = 0;
	return dd_vmas_in(u->lo, u->hi, um_vma_fn, u);
}

static struct um *um_init(struct dd_region *r, uintptr_t lo, uintptr_t hi, int *err)
{
	struct um *u = dd_vm_alloc(sizeof(*u));

	*err = -ENOMEM;
	if (!u)
		return NULL;
	u->r = r;
	u->lo = u->pos = lo;
	u->hi = hi;
	u->qfd = dd_procmap_open();
	u->buf = dd_vm_alloc(UM_CHUNK * DD_PAGE);
	u->st = dd_vm_alloc(UM_SPAN);
	u->st2 = dd_vm_alloc(UM_SPAN);
	*err = !u->buf || !u->st || !u->st2 ? -ENOMEM : um_walk(u);
	if (*err < 0) {
		um_fini(u);
		return NULL;
	}
	return u;
}

/* 0. (under the gate): the merged pieces MINOR|MISSING|WP, then the whole
 * range MISSING|WP (see "Unmerging"). */
static void um_register(struct um *u)
{
	uintptr_t a, e;
	int ret;

	for (u->pos = u->lo, u->vi = 0; um_next_run(u, &a, &e); u->pos = e) {
		ret = dd_uffd_register(eng.uffd, a, e - a, UFFDIO_REGISTER_MODE_MINOR |
				       UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP);
		if (ret < 0)   /* its write-protection fails then: left merged */
			dd_debug("unmerge: could not register %#lx+%zu (errno %d)", (unsigned long)a,
				 (size_t)(e - a), -ret);
	}
	u->pos = u->lo;
	u->vi = 0;
	ret = dd_uffd_register(eng.uffd, u->lo, u->hi - u->lo,
			       UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP);
	u->missing = ret == 0;
	if (ret < 0)
		dd_debug("unmerge: could not register %#lx+%zu MISSING (errno %d): it may stay "
			 "several mappings", (unsigned long)u->lo, (size_t)(u->hi - u->lo), -ret);
}

/* Add chunk c to the group being gathered (*n chunks), unmerging the
 * group first when c does not fit in it. */
static void um_gather(struct um *u, size_t *n, const struct um_chunk *c)
{
	if (*n && (*n == UM_GROUP || c->a + c->n * DD_PAGE - u->ch[0].a > UM_SPAN * DD_PAGE)) {
		um_group(u, *n);
		*n = 0;
	}
	u->ch[(*n)++] = *c;
}

/* Find the chunks, in groups, and unmerge them (steps 1-5); then the
 * deferred ones, in rounds, while a round hands some back. */
static int um_run(struct um *u)
{
	struct um_chunk c;
	size_t n = 0;

	pthread_mutex_lock(&eng.gate);
	um_register(u);
	pthread_mutex_unlock(&eng.gate);
	while (um_next_chunk(u, &c)) {
		if (c.prot < 0 || !(c.prot & PROT_READ)) {
			um_error(u, -EACCES, c.a, c.n, "not readable");
			continue;
		}
		um_gather(u, &n, &c);
	}
	if (n)
		um_group(u, n);
	while (u->nlater) {
		struct um_chunk *l = u->later;
		size_t nl = u->nlater, lcap = u->latercap;
		u->later = NULL;
		u->nlater = u->latercap = 0;
		n = 0;
		for (size_t i = 0; i < nl; i++)   /* in address order still */
			um_gather(u, &n, &l[i]);
		if (n)
			um_group(u, n);
		dd_debug("unmerge: %zu of %zu deferred chunks handed back", nl - u->nlater, nl);
		if (u->nlater == nl) {   /* no progress: no mapping to spare at all */
			size_t pages = 0;
			for (size_t i = 0; i < nl; i++)
				pages += l[i].n;
			dd_warn("%zu merged runs (%zu pages) near vm.max_map_count %ld:", nl, pages,
				dd_max_map_count_now());
			um_error(u, -ENOMEM, l[0].a, l[0].n, "no mapping to spare; and the others");
			u->nlater = 0;
		}
		dd_vm_free(l, lcap * sizeof(*l));
	}
	/* Until here the unmerged chunks still count as merged for discard.c:
	 * a REMOVE there marks pages instead of fencing them, and an empty
	 * page's fault gets zeros either way; the range is going away. */
	pthread_mutex_lock(&eng.gate);
	dd_discard_unmerged_many((const uintptr_t (*)[2])u->done, u->ndone);
	pthread_mutex_unlock(&eng.gate);
	return u->err;
}

static bool slot_merged(uint32_t s)
{
	return s != DD_SLOT_NONE && s != DD_SLOT_ZERO;
}

/* How far um_widen looks for the next merged page on either side */
#define UM_WIDEN_MAX ((size_t)1 << 16)

/*
 * Page indices [*lo, *hi) of r, widened over the anonymous pages on both
 * sides up to the next merged page or r's edge (at most UM_WIDEN_MAX): the
 * unmerge registers its range MISSING|WP like its replacement, which then
 * merges with them at once (see "Unmerging", 0. and 3.), and registering
 * whole VMAs splits none - at the limit a split would fail. An edge inside
 * a stretch of merged pages stays where it is: the run there is cut
 * (um_next_run), not unmerged beyond the range.
 */
static void um_widen(const struct dd_region *r, size_t *lo, size_t *hi)
{
	size_t a = *lo, b = *hi, n;

	for (n = 0; a > 0 && n < UM_WIDEN_MAX && !slot_merged(dd_region_slot(r, a - 1)); n++)
		a--;
	if (n < UM_WIDEN_MAX)
		*lo = a;
	for (n = 0; b < r->npages && n < UM_WIDEN_MAX && !slot_merged(dd_region_slot(r, b)); n++)
		b++;
	if (n < UM_WIDEN_MAX)
		*hi = b;
}

/*
 * Unmerge the merged runs of r in [lo, hi) (see "Unmerging"): all of them
 * for dedup_unregister() and dedup_shutdown(); the preload library's part
 * of a region before a call that needs anonymous memory there (mlock,
 * MADV_WIPEONFORK, the program's UFFDIO_REGISTER: preload/discover.c).
 * eng.lock held. Returns 0, or the first error (the runs it concerns stay
 * merged and valid). The caller unregisters the region.
 */
int dd_merge_unmerge(struct dd_region *r, uintptr_t lo, uintptr_t hi)
{
	dd_assert_held(&eng.lock);
	uintptr_t end = r->start + r->npages * DD_PAGE;
	int ret;

	lo = lo > r->start ? lo : r->start;
	hi = hi < end ? hi : end;
	if (lo >= hi)
		return 0;
	size_t i = (lo - r->start) / DD_PAGE, k, e = (hi - r->start + DD_PAGE - 1) / DD_PAGE;
	/* merged runs are found without visiting absent pages (region.c) */
	if (!dd_region_next_merged(r, &i, &k) || i >= e)
		return 0;
	if (atomic_load(&eng.forking))   /* engine.c, prefork(): stay merged */
		return -EBUSY;
	i = (lo - r->start) / DD_PAGE;
	if (i > 0 || e < r->npages)
		um_widen(r, &i, &e);
	struct um *u = um_init(r, r->start + i * DD_PAGE, r->start + e * DD_PAGE, &ret);
	if (!u)
		return ret;
	ret = um_run(u);
	um_fini(u);
	return ret;
}

static int unreg_anon_fn(void *ctx, const struct dd_vma *v)
{
	const struct um *u = ctx;
	uintptr_t a = v->lo > u->lo ? v->lo : u->lo, e = v->hi < u->hi ? v->hi : u->hi;
	if (!v->ours)
		dd_uffd_unregister(eng.uffd, a, e - a);
	return 0;
}

/*
 * The preload library (preload/remap.c, dd_pl_unmerge_pieces): [lo, hi) is to become
 * anonymous memory (MADV_WIPEONFORK, mlock, the program's own userfaultfd)
 * and no region covers it any more (it dropped them), but merged pieces of
 * ours are left there (registered MINOR|MISSING, served by our reader).
 * Unmerge them with the same protocol, then unregister the range except
 * what could not be unmerged. Takes eng.lock. 0 or the first error.
 */
int dd_merge_unmerge_pieces(uintptr_t lo, uintptr_t hi)
{
	int ret;

	pthread_mutex_lock(&eng.lock);
	if (!eng.running) {
		ret = -ENODEV;
		goto out;
	}
	if (atomic_load(&eng.forking)) {
		ret = -EBUSY;
		goto out;
	}
	struct dd_region *r = dd_region_find(lo);
	if ((r && r->start < hi) || dd_region_find(hi - 1)) {
		ret = -EBUSY;   /* a region: dedup_unregister() first */
		goto out;
	}
	for (size_t i = 0; i < dd_region_count(); i++) {
		r = dd_region_at(i);
		if (r->start < hi && r->start + r->npages * DD_PAGE > lo) {
			ret = -EBUSY;
			goto out;
		}
	}
	struct um *u = um_init(NULL, lo, hi, &ret);
	if (!u)
		goto out;
	ret = um_run(u);
	/* unregister what is anonymous now (what is still merged keeps MINOR) */
	dd_vmas_in(lo, hi, unreg_anon_fn, u);
	um_fini(u);
out:
	pthread_mutex_unlock(&eng.lock);
	return ret;
}

/*
 * Giving mappings back (issue 11, point 5): unmerge the merged runs worth
 * least - those of at most max_len pages, shortest first: a single page
 * costs two mappings and saves one page - until about @want mappings are
 * freed. Each run goes through the unmerging protocol above on its own
 * range of a region that stays registered; what is anonymous again then
 * gets the region's WP-only registration back, so that it merges with its
 * anonymous neighbours into one VMA (the unmerge leaves it MISSING|WP like
 * the replacement, which would keep it a VMA of its own); what could not
 * be unmerged stays merged and registered as it was. Used by the preload
 * library when a call of the program fails with ENOMEM near the limit
 * (preload/interpose.c), and to make room for a long run (dd_merge_batch).
 * With @hold (the ENOMEM case) the budget is lowered to what is left, so the
 * pages given back are not merged again before the next count of the
 * mappings sizes the budget anew (scan.c); that count is made due. eng.lock
 * held, not the gate. Returns the mappings freed (an estimate, as
 * vmas_added).
 */
static long give_back_run(struct dd_region *r, size_t i, size_t k)
{
	long delta = vma_delta(r, i, k - i, dd_region_slot(r, i), dd_region_slot(r, k - 1));
	int err;

	/* The range unmerged is the run with the whole anonymous pieces on its
	 * sides (um_widen) */
	size_t lo = i, hi = k;
	um_widen(r, &lo, &hi);
	struct um *u = um_init(r, r->start + lo * DD_PAGE, r->start + hi * DD_PAGE, &err);
	if (!u) {
		dd_debug("give back: %#lx+%zu: errno %d", (unsigned long)(r->start + i * DD_PAGE),
			 (k - i) * DD_PAGE, -err);
		return 0;
	}
	um_run(u);
	size_t left = 0;
	pthread_mutex_lock(&eng.gate);
	for (size_t p = lo; p < hi;) {   /* the region's registration, where anonymous */
		bool merged = slot_merged(dd_region_slot(r, p));
		size_t q = p + 1;
		while (q < hi && slot_merged(dd_region_slot(r, q)) == merged)
			q++;
		if (!merged) {
			uintptr_t s = r->start + p * DD_PAGE;
			int ret = dd_uffd_unregister(eng.uffd, s, (q - p) * DD_PAGE);
			if (ret < 0 && uffd_back(-ret))
				dd_uffd_unregister(eng.uffd, s, (q - p) * DD_PAGE);
			if (dd_uffd_register(eng.uffd, s, (q - p) * DD_PAGE, UFFDIO_REGISTER_MODE_WP) < 0)
				dd_debug("give back: could not register %#lx+%zu again",
					 (unsigned long)s, (q - p) * DD_PAGE);
		} else {
			left += q - p;
		}
		p = q;
	}
	pthread_mutex_unlock(&eng.gate);
	um_fini(u);
	dd_debug("give back: %#lx+%zu in [%zu, %zu): %zu pages left merged, delta %ld",
		 (unsigned long)(r->start + i * DD_PAGE), (k - i) * DD_PAGE, lo, hi, left, delta);
	if (left || delta <= 0)
		return 0;   /* left merged (a warning said why), or it cost nothing */
	DD_INC(runs_given_back, 1);
	return delta;
}

/*
 * Spare mappings for giving back at the limit. Unmerging a run needs
 * mappings to spare before it gives any back (see "Unmerging": about 9),
 * and where a call of the program failed with ENOMEM there are none. So
 * while merging holds added mappings we keep SPARES mappings of our own,
 * one reservation of SPARES pages whose every other page has another
 * protection (a VMA each, no memory: never touched). Unmapping them splits
 * nothing, which the kernel allows at the limit; dd_merge_give_back()
 * unmaps them first and makes them again after. Only in preload mode
 * (eng.keep_spares), the one caller at the limit: an API program keeps
 * every mapping of the budget's count. eng.lock.
 */
#define SPARES 32
static uintptr_t spares;

void dd_merge_spares_keep(void)
{
	dd_assert_held(&eng.lock);
	if (spares || !eng.keep_spares || (int64_t)atomic_load(&dd_cnt.vmas_added) <= 0)
		return;
	void *p = dd_os_mmap(NULL, SPARES * DD_PAGE, PROT_NONE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0, true);
	if (p == MAP_FAILED)
		return;
	for (size_t i = 1; i < SPARES; i += 2)
		if (dd_os_mprotect((char *)p + i * DD_PAGE, DD_PAGE, PROT_READ) < 0)
			break;   /* fewer spares */
	spares = (uintptr_t)p;
}

/* Page by page: an inner page is a VMA of its own, so its munmap splits
 * nothing; an edge page may have merged with a neighbour of the same kind
 * (another PROT_NONE reservation), and is left mapped (no memory) if its
 * munmap fails at the limit. */
static void spares_release(void)
{
	if (!spares)
		return;
	for (size_t i = 1; i + 1 < SPARES; i++)
		dd_os_munmap((void *)(spares + i * DD_PAGE), DD_PAGE);
	dd_os_munmap((void *)spares, DD_PAGE);
	dd_os_munmap((void *)(spares + (SPARES - 1) * DD_PAGE), DD_PAGE);
	spares = 0;
}

long dd_merge_give_back(long want, size_t max_len, bool hold)
{
	dd_assert_held(&eng.lock);
	long freed = 0;
	int failed = 0;   /* in a row: no mapping to spare, stop trying */

	if (!eng.running || atomic_load(&eng.forking) || eng.child)
		return 0;
	spares_release();
	for (size_t len = 1; len <= max_len && len <= ((size_t)1 << 20) && freed < want &&
			     failed < 8;
	     len = len < 4 ? len + 1 : len * 2) {
		for (size_t x = 0; x < dd_region_count() && freed < want && failed < 8; x++) {
			struct dd_region *r = dd_region_at(x);
			size_t i = 0, k;
			while (freed < want && failed < 8 && dd_region_next_merged(r, &i, &k)) {
				size_t n = k - i;
				if (n <= len && (len == 1 || n > len / 2)) {
					long d = give_back_run(r, i, k);
					failed = d > 0 ? 0 : failed + 1;
					freed += d;
					eng.vmas_this_pass -= d;
				}
				i = k;
			}
		}
	}
	if (freed) {
		int64_t added = (int64_t)atomic_load(&dd_cnt.vmas_added) - freed;
		atomic_store(&dd_cnt.vmas_added, (uint64_t)(added > 0 ? added : 0));
		if (hold && eng.vma_budget > (uint64_t)(added > 0 ? added : 0))
			__atomic_store_n(&eng.vma_budget, (uint64_t)(added > 0 ? added : 0),
					 __ATOMIC_RELAXED);   /* read unlocked: stats.c */
		if (hold)
			eng.maps_counted_ns = 0;   /* count again at the next pass (scan.c) */
	}
	dd_merge_spares_keep();
	return freed;
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
	if (scratch.used && !scratch.lost)
		dd_os_madvise((void *)scratch.base, scratch.used * DD_PAGE, MADV_DONTNEED);
	scratch.used = 0;
	/* and the compare buffer (read_moved): a batch's pages, resident
	 * since the first batch, used only inside one. At a pass's end no
	 * batch is open (eng.lock); a settled process gives it back. */
	if (eng.cmpbuf_used) {
		dd_os_madvise(eng.cmpbuf, (dd_opt.batch_pages + 2) * DD_PAGE, MADV_DONTNEED);
		eng.cmpbuf_used = false;
	}
}

/*
 * The merger's memory: the batch (filled by scan.c), the buffer its moved
 * pages are read back into for comparing (read_moved), and S. Called by
 * dd_engine_init() under eng.lock, with eng.uffd open. 0 or -errno; on
 * failure dd_merge_fini() undoes what was done.
 */
int dd_merge_init(void)
{
	eng.batch = dd_vm_alloc((dd_opt.batch_pages + 2) * sizeof(*eng.batch));
	eng.cmpbuf = dd_vm_alloc((dd_opt.batch_pages + 2) * DD_PAGE);
	eng.nbatch = 0;
	scratch.pages = dd_opt.batch_pages * 8 > 512 ? dd_opt.batch_pages * 8 : 512;
	scratch.used = 0;
	scratch.lost = false;
	/* getpid() is a system call (glibc caches nothing), and read_moved
	 * needs it once a window. Batches run only in the process whose
	 * engine this is (a fork()ed child that merges starts an engine of
	 * its own, and comes here again). */
	scratch.pid = getpid();
	void *s = dd_os_mmap(NULL, scratch.pages * DD_PAGE, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0, true);
	if (!eng.batch || !eng.cmpbuf || s == MAP_FAILED)
		return -ENOMEM;
	scratch.base = (uintptr_t)s;
	dd_os_madvise(s, scratch.pages * DD_PAGE, MADV_NOHUGEPAGE);
	return dd_uffd_register(eng.uffd, scratch.base, scratch.pages * DD_PAGE,
				UFFDIO_REGISTER_MODE_MISSING);
}

/* Free what dd_merge_init() made. Also in a fork()ed child that starts its
 * own engine (single-threaded there): the raw munmap, no interposer. */
static void spares_release(void);

void dd_merge_fini(void)
{
	spares_release();
	if (scratch.base)
		dd_os_raw_munmap((void *)scratch.base, scratch.pages * DD_PAGE);
	scratch.base = 0;
	scratch.used = 0;
	dd_vm_free(eng.batch, (dd_opt.batch_pages + 2) * sizeof(*eng.batch));
	dd_vm_free(eng.cmpbuf, (dd_opt.batch_pages + 2) * DD_PAGE);
	eng.batch = NULL;
	eng.cmpbuf = NULL;
	eng.nbatch = 0;
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
	dd_assert_held(&eng.lock);
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
	if (scratch.used + n > scratch.pages)
		dd_merge_free_scratch();
	scratch.batch = scratch.used;
	scratch.used += n;

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
