/* SPDX-License-Identifier: MIT */
/*
 * engine.c - libdedup's threads and their event loops.
 *
 *  - The engine thread scans and merges (scan.c, merge.c) one step at a
 *    time under eng.lock, and paces itself between steps: a CPU share of
 *    one core (DEDUP_CPU) and an optional page rate (DEDUP_PAGES_PER_SEC).
 *    Between steps it sleeps on a futex (eng.ctl) that dd_engine_kick()
 *    wakes (to stop, or to follow new credentials): no descriptor of its
 *    own. dedup_scan_now() does not wake it; it runs a pass itself.
 *  - The uffd reader thread waits (io_uring poll) for the userfaultfd to be
 *    readable, then reads every pending message under eng.gate. It never
 *    takes eng.lock and never waits on the merger beyond the gate, which is
 *    only held for one batch's merge window: so an application thread that
 *    triggers a non-cooperative event (madvise, mremap) is acknowledged
 *    within one batch, and nothing can deadlock on our own events.
 *
 * Setup: dd_engine_init() opens the uffd, probes the kernel, makes the
 * store, the index and the merger's memory (dd_merge_init), then starts
 * both threads; dd_engine_fini() undoes it. Both run under eng.lock, from
 * dedup_init() and dedup_shutdown().
 *
 * Descriptors (fds.c). The program may close ours by a raw system call that
 * no interposer sees. The reader keeps the uffd in an io_uring (keeper.c):
 * the userfaultfd itself can never be released behind our back (releasing
 * it would drop every registration - a merge window half done would read
 * zeros), and the reader installs it again at a new number when the old
 * one is no longer ours. It is woken by the uffd alone: to stop it, or to have it recover the
 * uffd, another thread discards the doorbell page D, which raises a REMOVE
 * event that the reader must read before that madvise() returns. The engine
 * checks every descriptor at each step; if one is gone it hands merged
 * memory back and stops merging, with one line on stderr ("lost", below).
 *
 * Faults the reader resolves: minor faults on merged pages (the canonical
 * page, or zeros after a discard: discard.c). WP and MISSING faults were
 * raised while a merge window was open and the merger has woken them
 * already (UFFDIO_WAKE after every window); any that is left - a page still
 * protected outside a window, an empty page in a MISSING range that is not
 * parked - is resolved here: un-protect, or map the zero page, and wake.
 *
 * fork(): the pthread_atfork prepare handler waits for the window in
 * progress and keeps new ones from starting (eng.forking), so a child never
 * inherits a window half done (a page moved out of its place), without
 * holding a lock while other handlers run (see prefork()). It also copies
 * the discard marks, briefly under eng.gate, for the child's guard. The
 * child has no engine threads; its copy of libdedup is marked stopped, and
 * fork() (child.c) guards the merged pages it inherited.
 *
 * Pacing between passes: the interval, doubled after each full pass that
 * merged (almost) nothing, up to DEDUP_IDLE_BACKOFF intervals; meanwhile
 * fresh regions (scan.c) get passes of their own every interval. A heap
 * that stays still (no page faulted in, none found changed) backs off
 * further, up to STILL_MAX times that (engine_main).
 */
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <linux/capability.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "keeper.h"
#include "uapi.h"

static void creds_atfork_child(void);

struct dd_engine eng = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	/* Adaptive: a thread that finds the gate taken spins a little before
	 * it sleeps. The merger and the reader pass it back and forth once
	 * for every run placed or handed back (the REMAP of the mremap, read
	 * under the gate), and the reader holds it for microseconds: sleeping
	 * cost a FUTEX_WAIT, a FUTEX_WAKE from the reader and another from
	 * the merger's next unlock, and a context switch, per run. */
	.gate = PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP,
	.uffd = -1,
};

/* dedup_init() returns once both threads have set up their event loops, so
 * that the process's mappings (io_uring rings) are complete when it returns. */
static pthread_mutex_t ready_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ready_cond = PTHREAD_COND_INITIALIZER;
static int ready;

static void thread_ready(void)
{
	pthread_mutex_lock(&ready_lock);
	ready++;
	pthread_cond_broadcast(&ready_cond);
	pthread_mutex_unlock(&ready_lock);
}

void dd_engine_account_cpu(uint64_t *last)
{
	uint64_t now = dd_thread_cpu_ns();
	DD_INC(engine_cpu_ns, now - *last);
	*last = now;
}

/* ---- the uffd reader ---------------------------------------------------- */

/* The reader's state (reader thread only). */
static struct {
	struct dd_keeper k;   /* the uffd's keeper (keeper.c) */
	bool checked;   /* this round of drain_uffd: eng.uffd found ours */
	bool lost;      /* this round: found not ours, and not had back */
} rd;

static bool uffd_usable(void);

/* Is eng.uffd's number ours (uffd_usable), checked once a round of
 * drain_uffd, before its first use. */
static bool number_ours(void)
{
	if (!rd.checked && !rd.lost) {
		rd.checked = uffd_usable();
		rd.lost = !rd.checked;
	}
	return rd.checked;
}
static ssize_t uffd_read(void *buf, size_t len);

/*
 * An ioctl of the reader on eng.uffd failed with r (-errno). If the number
 * no longer names our uffd (the program closed it with a raw system call
 * and may have opened a file of its own there, fds.c), the fault is not
 * resolved: keep it (-EAGAIN), and drain_uffd installs the uffd again before
 * it retries. Dropping it would leave its thread asleep for ever.
 */
static int kept_if_lost(int r)
{
	if (r < 0 && r != -EAGAIN && !dd_fd_intact(eng.uffd))
		return -EAGAIN;
	return r;
}

static void record_event(uint8_t type, uintptr_t from, uintptr_t to, size_t len)
{
	uint64_t h = atomic_load(&eng.ev_head);
	eng.ev[h % DD_EVRING] = (struct dd_event){ type, from, to, len };
	atomic_store(&eng.ev_head, h + 1);
}

static bool parked(uintptr_t a)
{
	uintptr_t lo = atomic_load(&eng.parked);
	return lo && a >= lo && a < atomic_load(&eng.parked_end);
}

/*
 * A minor fault on a merged page whose PTE is empty: the canonical page
 * (UFFDIO_CONTINUE), or zeros if the application discarded it (discard.c).
 * Returns -EAGAIN if an event is pending (read it first, then retry).
 */
static int resolve_minor(uintptr_t a)
{
	bool zero = dd_discard_marked(a);
	int r;

	r = dd_uffd_resolve(eng.uffd, a, zero);
	if (zero && r == 0)
		dd_discard_refilled(a);   /* its zap is behind it */
	DD_TRACE(zero ? 'Z' : 'c', a, DD_PAGE, r);
	r = kept_if_lost(r);
	if (r < 0 && r != -EAGAIN)
		dd_uffd_wake(eng.uffd, a, DD_PAGE);   /* EEXIST: mapped meanwhile */
	return r == -EAGAIN ? r : 0;
}

/*
 * Faults read but not yet resolved. A fault message, once read, is never
 * delivered again: dropping one leaves its thread asleep forever. The
 * ioctls that resolve faults fail with EAGAIN while a non-cooperative event
 * is pending, and stay failing after we read the event until the thread
 * that raised it has run (it decrements the kernel's mmap_changing itself),
 * so resolution is retried until it succeeds. Reader thread only.
 */
#define DD_PENDING_MAX 1024
static struct pending { uintptr_t addr; uint8_t kind; } pend[DD_PENDING_MAX];
static size_t npend;
enum { PF_MINOR, PF_WP, PF_MISSING };

static int resolve(const struct pending *p)
{
	/* A parked range (a merge window, or a run being unmerged) is the
	 * merger's: it lets us read events while it waits, but a fault there
	 * is left to it (it wakes the whole range when it is done). Un-
	 * protecting a page it captured would let a write land in a page
	 * about to be replaced. */
	if (parked(p->addr))
		return 0;
	switch (p->kind) {
	case PF_MINOR:
		return resolve_minor(p->addr);
	case PF_WP:
		/* a page left protected outside a window: un-protect (wakes) */
		return kept_if_lost(dd_uffd_wp(eng.uffd, p->addr, DD_PAGE, false)) == -EAGAIN ? -EAGAIN : 0;
	default: {
		/* an empty page in a MISSING range, outside a window and not
		 * parked: a zero page (never touched, or discarded). Parked is
		 * checked again: the gate may have been released since the
		 * fault was read, and a new window may hold this page now. */
		if (parked(p->addr))
			return 0;   /* the merger wakes it */
		if (dd_discard_in_merged(p->addr)) {
			/* a merged page whose slot is gone (merge.c, "Placing a
			 * merged run"): zeros, as a real anonymous page */
			int err;
			DD_TRACE('z', p->addr, DD_PAGE, 0);
			if (!dd_uffd_copy(eng.uffd, p->addr, dd_zero_page, DD_PAGE, true, &err)) {
				if (kept_if_lost(-err) == -EAGAIN)
					return -EAGAIN;
			} else {
				dd_discard_refilled(p->addr);
			}
			dd_uffd_wake(eng.uffd, p->addr, DD_PAGE);
			return 0;
		}
		int zr = dd_uffd_zeropage(eng.uffd, p->addr, DD_PAGE);
		if (zr < 0 && kept_if_lost(zr) == -EAGAIN)
			return -EAGAIN;
		dd_uffd_wake(eng.uffd, p->addr, DD_PAGE);
		return 0;
	}
	}
}

/* Read and handle everything pending. Called with eng.gate held. Returns
 * whether the doorbell rang (a REMOVE of D: stop or recover, see above);
 * *lost is set if eng.uffd is no longer ours and cannot be had again. */
static bool drain_uffd(bool *lost)
{
	struct uffd_msg msg[32];
	uint64_t t0 = 0;
	unsigned fence_tries = 0;
	bool rang = false;

	for (;;) {
		ssize_t r = 0;
		/* Each round, before the first use of the number: is it still
		 * ours (a raw close by the program), else get the uffd back.
		 * Faults kept for that (kept_if_lost) wait. The ring reads its
		 * fixed file and needs no number, so with it the check waits
		 * until after the reads, and is left out when nothing uses the
		 * number: a round that only read a REMAP (merge.c wakes us with
		 * one for every run it places or hands back) saves its two
		 * system calls. Without the ring, read() uses the number:
		 * uffd_read checks first. The doorbell's ringers wait for the
		 * gate after their madvise (ring_doorbell), so a check after
		 * the read still comes before they look. */
		rd.checked = rd.lost = false;
		while (npend + DD_ARRAY_SIZE(msg) <= DD_PENDING_MAX) {
			r = uffd_read(msg, sizeof(msg));
			if (r == -EINTR)
				continue;
			if (r <= 0)
				break;
			/* A short read took all that was pending: no second read
			 * to hear EAGAIN (a system call per wake-up, and merge.c
			 * wakes us once per run it places or hands back). What
			 * comes later makes the uffd readable for the next poll. */
			bool drained = (size_t)r < sizeof(msg);
			for (size_t i = 0; i < (size_t)r / sizeof(msg[0]); i++) {
				struct uffd_msg *m = &msg[i];
				uintptr_t a;
				switch (m->event) {
				case UFFD_EVENT_PAGEFAULT:
					a = m->arg.pagefault.address & ~(uintptr_t)(DD_PAGE - 1);
					DD_TRACE('F', a, DD_PAGE, (long)m->arg.pagefault.flags);
					if (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR)
						pend[npend++] = (struct pending){ a, PF_MINOR };
					else if (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
						dd_removing_written(a);
						pend[npend++] = (struct pending){ a, PF_WP };
					}
					else if (!parked(a))   /* parked: the merger wakes it */
						pend[npend++] = (struct pending){ a, PF_MISSING };
					break;
				case UFFD_EVENT_REMOVE:
					if (m->arg.remove.start == eng.doorbell) {
						rang = true;
						break;
					}
					DD_TRACE('X', m->arg.remove.start, m->arg.remove.end - m->arg.remove.start, 0);
					dd_discard_removed(m->arg.remove.start, m->arg.remove.end);
					record_event(UFFD_EVENT_REMOVE, m->arg.remove.start, 0,
						     m->arg.remove.end - m->arg.remove.start);
					break;
				case UFFD_EVENT_REMAP:
					if (m->arg.remap.from == atomic_load(&eng.placing_from) &&
					    m->arg.remap.to == atomic_load(&eng.placing_to) &&
					    m->arg.remap.len == atomic_load(&eng.placing_len))
						break;   /* merge.c placing a run */
					dd_discard_moved(m->arg.remap.from, m->arg.remap.to,
							 m->arg.remap.len);
					record_event(UFFD_EVENT_REMAP, m->arg.remap.from,
						     m->arg.remap.to, m->arg.remap.len);
					break;
				default:
					break;
				}
			}
			if (drained) {
				r = 0;
				break;
			}
		}
		if ((npend || rang || rd.lost || dd_removing_unfenced()) && !number_ours()) {
			*lost = true;
			return rang;
		}
		/* resolve, keeping what still meets EAGAIN */
		size_t keep = 0;
		for (size_t i = 0; i < npend; i++)
			if (resolve(&pend[i]) == -EAGAIN)
				pend[keep++] = pend[i];
		npend = keep;
		/* Fence the ranges of REMOVEs just read (discard.c), as soon as
		 * their callers have run; a few tries, then the merger's turn. */
		bool fencing = dd_removing_fence() > 0 && fence_tries < 64;
		if (!npend && !fencing && r <= 0)
			return rang;
		if (fencing && !npend && r <= 0) {
			fence_tries++;
			pthread_mutex_unlock(&eng.gate);
			sched_yield();
			pthread_mutex_lock(&eng.gate);
		} else if (npend && r <= 0) {
			/* an event's thread has yet to run: let it */
			if (!t0)
				t0 = dd_now_ns();
			else if (dd_now_ns() - t0 > 2000000000ULL) {
				dd_warn("%zu page faults wait for an event to complete", npend);
				t0 = dd_now_ns();
			}
			pthread_mutex_unlock(&eng.gate);
			sched_yield();
			pthread_mutex_lock(&eng.gate);
		}
	}
}

/*
 * Read messages from the uffd: with the ring, from its fixed file (the
 * number may name the program's file by now: a raw close, fds.c, and a
 * read() there would take the program's data or move its file offset).
 * Never waits: -EAGAIN when nothing is pending. Returns bytes read or
 * -errno.
 */
static ssize_t uffd_read(void *buf, size_t len)
{
	ssize_t r = dd_keeper_read(&rd.k, buf, len);

	if (r != -ENOSYS)
		return r;
	/* no ring: read() the number, once it is known to be ours */
	if (!number_ours())
		return -EBADF;
	r = read(eng.uffd, buf, len);
	return r < 0 ? -errno : r;
}

/*
 * Is eng.uffd still our userfaultfd? If the program closed the number (a
 * raw system call), install the uffd again from the ring. eng.gate held:
 * the merger uses eng.uffd under it or under eng.lock; when one of its
 * ioctls fails on a number that is no longer ours, it has us install the
 * uffd again before it goes on (dd_engine_uffd_back), and the engine checks
 * at each step ("lost", below).
 */
static bool uffd_usable(void)
{
	return dd_keeper_renumber(&rd.k, &eng.uffd);
}

static _Atomic bool reader_gone;   /* the reader left on its own */

static void *reader_main(void *arg)
{
	uint64_t cpu = dd_thread_cpu_ns();

	if (!dd_keeper_init(&rd.k, eng.uffd))
		dd_debug("no io_uring for the uffd reader: poll() and read()");
	eng.uffd_recoverable = rd.k.recoverable;
	dd_creds_thread_start();
	thread_ready();
	for (;;) {
		dd_creds_follow();
		if (!rd.k.have || dd_keeper_wait(&rd.k, -1, -1) < 0) {
			dd_keeper_exit(&rd.k);
			eng.uffd_recoverable = false;
			struct pollfd p = { eng.uffd, POLLIN, 0 };
			if (poll(&p, 1, -1) < 0 && errno != EINTR)
				break;
		}
		bool lost = false, rang;
		pthread_mutex_lock(&eng.gate);
		atomic_fetch_add(&eng.drain_gen, 1);
		rang = drain_uffd(&lost);
		atomic_fetch_add(&eng.drain_gen, 1);
		pthread_mutex_unlock(&eng.gate);
		dd_engine_account_cpu(&cpu);
		/* The number is gone and cannot be had again: leave, and with
		 * our ring the last reference to the uffd goes; the kernel then
		 * wakes every waiter and drops the registrations (merged pages
		 * keep their content). The engine says so (it checks too). */
		if (lost) {
			atomic_store(&eng.fds_lost, true);
			atomic_store(&reader_gone, true);
			break;
		}
		/* Only the doorbell with reader_stop set ends the loop, never
		 * eng.stop alone: the engine thread may be waiting for us to
		 * read an event it raised (its own madvise) while it is being
		 * stopped, and the stopper waits for us to read the doorbell. */
		if (rang && atomic_load(&eng.reader_stop))
			break;
		dd_creds_follow();   /* before the doorbell's ringer goes on */
	}
	dd_keeper_exit(&rd.k);
	dd_engine_account_cpu(&cpu);
	return NULL;
}

/* Discard D: the reader must read the REMOVE before this returns, and
 * before it reads it makes sure eng.uffd is ours (uffd_usable). Our own
 * madvise, straight to the kernel. Not while the reader may be gone. */
static void ring_doorbell(void)
{
	if (eng.doorbell) {
		dd_os_madvise((void *)eng.doorbell, DD_PAGE, MADV_DONTNEED);
		/* The reader read the REMOVE under the gate and checks the
		 * number in the same hold, after the read (drain_uffd): once
		 * we have had the gate, eng.uffd is ours again if it can be. */
		pthread_mutex_lock(&eng.gate);
		pthread_mutex_unlock(&eng.gate);
	}
}

/*
 * The merger, under eng.gate: an ioctl on eng.uffd failed, and the number
 * is no longer ours (the program closed it with a raw system call, fds.c),
 * while pages of a window may be out in S or a run half unmerged. Have the
 * reader install the uffd again (it does, uffd_usable, before it reads the
 * doorbell's REMOVE, and our madvise returns only once it has read it) and
 * go on with the new number. The gate is released meanwhile; the caller has
 * parked what must wait. Returns true if eng.uffd names our uffd again.
 */
bool dd_engine_uffd_back(void)
{
	dd_assert_held(&eng.gate);
	if (dd_fd_intact(eng.uffd))
		return true;
	if (!eng.uffd_recoverable || atomic_load(&reader_gone))
		return false;
	pthread_mutex_unlock(&eng.gate);
	ring_doorbell();
	pthread_mutex_lock(&eng.gate);
	return dd_fd_intact(eng.uffd);
}

/* The reader leaves once it has read the doorbell with reader_stop set
 * (or on its own, once the uffd is gone for good: eng.fds_lost). */
static void stop_reader(void)
{
	atomic_store(&eng.reader_stop, true);
	if (!atomic_load(&reader_gone))
		ring_doorbell();
	pthread_join(eng.reader_thr, NULL);
}

/* ---- region upkeep from events ---------------------------------------- */

/*
 * Apply REMAP events to the regions (eng.lock held): the registration moved
 * with the VMA, so the moved part is tracked at its new address. REMOVE
 * needs nothing: discarded pages are simply not present at the next pass.
 */
static void apply_events(void)
{
	pthread_mutex_lock(&eng.gate);
	uint64_t head = atomic_load(&eng.ev_head);
	if (head - eng.ev_applied > DD_EVRING) {
		dd_info("missed %llu mapping events; re-checking every region",
			(unsigned long long)(head - eng.ev_applied - DD_EVRING));
		eng.ev_applied = head - DD_EVRING;
	}
	for (; eng.ev_applied < head; eng.ev_applied++) {
		struct dd_event e = eng.ev[eng.ev_applied % DD_EVRING];
		if (e.type != UFFD_EVENT_REMAP)
			continue;
		if (dd_region_remove(e.from, e.len, false) == 0) {
			dd_unstable_reset();   /* candidates may point into the old range */
			dd_region_add(e.to, e.len);
		}
	}
	pthread_mutex_unlock(&eng.gate);
}

/* ---- the engine thread ---------------------------------------------------- */

/* Sleep up to ns; returns early (true) when kicked or stopped. */
static bool wait_ns(uint64_t ns)
{
	if (atomic_exchange(&eng.ctl, 0))
		return true;
	dd_futex_wait(&eng.ctl, 0, ns);
	return atomic_exchange(&eng.ctl, 0) != 0;
}

/*
 * The program closed or replaced a descriptor of ours behind our back (a
 * raw close_range(), say: the interposed calls never let it). Lose nothing:
 * have the reader install the uffd again if it was that one, hand every
 * merged run back as anonymous memory, and stop merging; the preload
 * library then unregisters everything (eng.on_fds_lost). With the uffd
 * gone for good (the engine starts only where a keeper works, keeper.c:
 * only a ring that failed later leaves it so), merged pages keep their
 * content but a discard of one reads it again instead of zeros: we say
 * that too. Engine thread, no lock held.
 */
static void lost(void)
{
	if (!dd_fd_intact(eng.uffd) && eng.uffd_recoverable && !atomic_load(&eng.fds_lost))
		ring_doorbell();
	bool uffd_ok = dd_fd_intact(eng.uffd) && !atomic_load(&eng.fds_lost);
	atomic_store(&eng.fds_lost, true);
	if (uffd_ok) {
		pthread_mutex_lock(&eng.lock);
		dd_os_reopen();   /* unmerging reads the page table */
		for (size_t i = 0; i < dd_region_count(); i++)
			dd_merge_unmerge(dd_region_at(i), 0, UINTPTR_MAX);
		pthread_mutex_unlock(&eng.lock);
		dd_warn("the program closed libdedup's file descriptors; merged memory handed "
			"back, not merging any more");
	} else {
		dd_warn("the program closed libdedup's userfaultfd; not merging any more (merged "
			"pages keep their content, but MADV_DONTNEED on them no longer gives zeros)");
	}
	if (eng.on_fds_lost)
		eng.on_fds_lost();
}

/*
 * Still: how far a full pass that found nothing at all may be put off
 * beyond the idle back-off, as a power of two (2^3: 64 intervals, 12.8 s,
 * at the defaults). A settled engine did a full pass every 1.6 s, each of
 * which walks the page tables of the whole heap and offers every page the
 * smart scan skips to the unstable index (a random write each: megabytes
 * of table per pass). With 1 GiB of unique pages that was 4% of a core,
 * and the program's memory-bound loops ran 8-12% slower than before the
 * engine started (docs/bench/2026-12-07-idle, -idle2). "Nothing at all"
 * is, since the last full pass: no merge, a trickle at most of pages
 * found changed (scan.c's volatile pages, which include every new page at
 * its first visit: under 1 in 256 of the heap, as for merges - every
 * program has a few pages it keeps writing, its stdio buffers, counters;
 * with none allowed, a program printing a line a second never backed
 * off), and at most STILL_FAULTS page faults anywhere in the process. The
 * fault count (getrusage) is the one cheap sign of new memory we have
 * without write-protecting anything: a page faulted into a region that
 * has had its passes is otherwise found by full passes only. It is read
 * at every wake-up while the pass is put off, and more faults than that
 * end the stretch at once (the ordinary back-off still applies).
 * What it cannot see is a page written in place: that waits for its next
 * visit, as with the smart scan, now up to 2^STILL_MAX times longer.
 */
#define STILL_MAX 3
#define STILL_FAULTS 16   /* a stack or a buffer growing: 64 KiB */

static uint64_t process_faults(void)
{
	struct rusage ru;
	if (getrusage(RUSAGE_SELF, &ru) < 0)
		return 0;
	return (uint64_t)ru.ru_minflt + (uint64_t)ru.ru_majflt;
}

static void *engine_main(void *arg)
{
	uintptr_t cursor = 0;
	uint64_t cpu = dd_thread_cpu_ns();
	const size_t step = 1024;

	dd_creds_thread_start();
	thread_ready();
	/* The first pass starts one interval after dedup_init(), like every
	 * other: the application's start-up is its busiest time. */
	wait_ns(dd_opt.scan_interval_ms * 1000000ULL + 1);
	/* Idle back-off: after a full pass that merged nothing, the pause
	 * before the next full pass doubles, up to dd_opt.idle_backoff times
	 * the interval; a pass that merges resets it. Fresh regions get passes
	 * of their own meanwhile (below). A steady heap then costs a fraction
	 * of a full rescan every interval. (test_backoff) */
	unsigned quiet = 0;
	long pass_merged = 0;
	size_t pass_scanned = 0;
	uint64_t skipped0 = atomic_load(&dd_cnt.pages_skipped_smart);
	bool fresh_only = false;       /* this pass: fresh regions only */
	uint64_t next_full = 0;        /* backing off: no full pass before */
	/* Still (above): doublings beyond the back-off, and what the last
	 * full pass ended with, to tell whether anything happened since. */
	unsigned still = 0;
	uint64_t full_end = 0, faults_end = 0, volatile_end = 0;
	const uint64_t interval = dd_opt.scan_interval_ms * 1000000ULL;
	/* CPU share: each step owes a pause in proportion to the CPU it used
	 * since the last decision, the waits themselves included; pauses too
	 * short to take add up until they are worth a wait (short steps used
	 * to run back to back, 60% of a core at DEDUP_CPU=25). */
	uint64_t c0 = dd_thread_cpu_ns(), owed = 0;
	while (!atomic_load(&eng.stop)) {
		dd_creds_follow();
		long merged = 0;
		size_t scanned = 0;
		uint64_t t0 = dd_now_ns();

		if (cursor == 0) {
			/* Put off because nothing happened: a page faulted in
			 * since says otherwise (new memory in a region that
			 * has had its passes). */
			if (still && t0 < next_full && process_faults() - faults_end > STILL_FAULTS) {
				still = 0;
				if (full_end + (interval << quiet) < next_full)
					next_full = full_end + (interval << quiet);
			}
			/* Backing off: until the next full pass is due, wake
			 * every interval and scan only fresh regions (scan.c),
			 * if there are any: memory an allocator keeps mapping
			 * and unmapping then costs what it maps, not a rescan
			 * of the whole heap. */
			fresh_only = quiet && t0 < next_full;
			if (fresh_only) {
				pthread_mutex_lock(&eng.lock);
				bool fresh = dd_scan_fresh_regions();
				pthread_mutex_unlock(&eng.lock);
				if (!fresh) {
					uint64_t left = next_full - t0;
					wait_ns(left < interval ? left : interval);
					continue;
				}
			}
		}
		/* Our descriptors, before each step (fds.c): a step walks the
		 * page tables through one and may merge through the others.
		 * Not at the wake-ups that find nothing to do while the engine
		 * backs off (above): those use none, and were most of the
		 * checks of a settled engine (about 2 system calls a descriptor
		 * each, every interval). */
		if (dd_unlikely(!dd_fds_intact() || atomic_load(&eng.fds_lost))) {
			lost();
			while (!atomic_load(&eng.stop))
				wait_ns(0);
			break;
		}
		pthread_mutex_lock(&eng.lock);
		apply_events();
		dd_group_check();
		bool done = dd_scan_step(&cursor, step, &merged, &scanned, fresh_only);
		dd_engine_account_cpu(&cpu);
		dd_publish_update();
		pthread_mutex_unlock(&eng.lock);
		pass_merged += merged;
		pass_scanned += scanned;
		if (done) {
			/* A pass that merged resets the back-off; a full pass
			 * that merged nothing doubles the wait for the next. A
			 * trickle - under 1 page in 256 of those scanned - counts
			 * as nothing: a heap that yields a few pages per pass
			 * (freed memory turning to zeros, the last pairs under a
			 * spent VMA budget) is otherwise rescanned every interval
			 * for ever. The trickle still merges, at the backed-off
			 * pace. Pages the smart scan skipped (scan.c) count among
			 * those scanned here: the heap is as large as it was. */
			uint64_t skipped = atomic_load(&dd_cnt.pages_skipped_smart);
			pass_scanned += skipped - skipped0;
			skipped0 = skipped;
			/* Still (above): a full pass, nothing since the last */
			uint64_t f = fresh_only ? 0 : process_faults();
			uint64_t v = atomic_load(&dd_cnt.skipped_volatile);
			bool nothing = !fresh_only && !pass_merged &&
				       f - faults_end <= STILL_FAULTS &&
				       (v - volatile_end) * 256 < pass_scanned;
			if (pass_merged && (size_t)pass_merged * 256 >= pass_scanned)
				quiet = 0;
			else if (!fresh_only && (2u << quiet) <= dd_opt.idle_backoff)
				quiet++;
			else if (nothing && dd_opt.idle_backoff > 1 && still < STILL_MAX)
				still++;   /* at the back-off's ceiling */
			if (!quiet || (!fresh_only && !nothing))
				still = 0;
			if (!fresh_only) {
				full_end = dd_now_ns();
				faults_end = f;
				volatile_end = v;
			}
			if (!fresh_only || !quiet)
				next_full = dd_now_ns() + (interval << quiet << still);
			pass_merged = 0;
			pass_scanned = 0;
		}

		/* pacing: CPU share, then page rate */
		uint64_t now = dd_thread_cpu_ns(), used = now - c0, wall = dd_now_ns() - t0;
		c0 = now;
		owed += used * (100 - dd_opt.cpu_percent) / dd_opt.cpu_percent;
		uint64_t pause = owed;
		if (dd_opt.pages_per_sec) {
			uint64_t want = scanned * 1000000000ULL / dd_opt.pages_per_sec;
			if (want > wall && want - wall > pause)
				pause = want - wall;
		}
		if (done)
			pause += interval;
		if (pause < 50000)
			continue;
		owed = 0;
		if (wait_ns(pause))
			continue;   /* stop or kick: re-check */
	}
	dd_engine_account_cpu(&cpu);
	return NULL;
}

/* ---- our threads ------------------------------------------------------------ */

/*
 * Every thread of ours starts with all signals blocked. A signal sent to the
 * process goes to any thread that does not block it; the application's
 * handler would then run on our thread, and a handler that touches a page
 * we protected would leave our reader waiting for itself (tests/
 * test_signal_thread.c). The kernel's own synchronous signals (SIGSEGV,
 * SIGBUS on a fault of ours) cannot be blocked and still arrive.
 */
int dd_thread_create(pthread_t *t, void *(*fn)(void *), void *arg)
{
	sigset_t all, old;
	int ret;

	sigfillset(&all);
	if (dd_opt.test_unsafe_signals)   /* test hook: the naive thread */
		sigemptyset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	ret = pthread_create(t, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return ret;
}

/* ---- fork ----------------------------------------------------------------- */

static bool atfork_done;

/*
 * Room for the child's guard. A fork()ed child that inherits merged pages
 * maps a few things to guard them (its table of pieces, the discard marks,
 * an io_uring, perhaps a thread stack: child.c). The VMA budget keeps the
 * process far below vm.max_map_count, but the limit can be lowered under a
 * running process (other people's tests did it on our CI machine): then
 * the child can map nothing, runs unguarded ("child: no memory to look for
 * merged pages"), and a merged page it discards reads its old content.
 * So, near the live limit, merged runs are given back before the fork
 * (the cheapest first: dd_merge_give_back), until the child has
 * CHILD_ROOM mappings to spare. The mappings are counted exactly (a read
 * of /proc/self/maps) when the limit is below the one the engine last
 * read, or the estimate (the last count plus what merges added since) is
 * near it, or there was no count yet; the sysctl itself is read at every
 * fork while merged runs exist (one open, read and close).
 * eng.lock held, eng.forking not yet set (the give-back refuses then).
 */
#define CHILD_ROOM 64

static void child_room(void)
{
	if (!eng.running || eng.child || atomic_load(&dd_cnt.vmas_added) == 0)
		return;
	long limit = dd_max_map_count_now();
	bool lowered = limit < dd_feat.max_map_count;   /* since the engine last read it */
	if (limit <= 0 || (!lowered && eng.maps_at_pass > 0 &&
			   eng.maps_at_pass + eng.vmas_this_pass + 4 * CHILD_ROOM < limit))
		return;
	long total = dd_count_maps(NULL, NULL);
	if (total <= 0 || total + CHILD_ROOM < limit)
		return;
	long freed = dd_merge_give_back(total + CHILD_ROOM - limit + 1, SIZE_MAX, true);
	dd_info("fork() at %ld of %ld mappings: %ld given back for the child's guard", total,
		limit, freed);
}

/*
 * One fork() at a time through our handlers. The child learns which merged
 * pages were discarded from a snapshot its prepare handler copies (here,
 * and prefork_guard in a guarded child), in one buffer: when two threads
 * forked at once, the second one's copy (emptied, then refilled) was what
 * the first one's child inherited, and that child read a discarded page's
 * old content (pl_calls with four threads: "child ... reads 0xa9, not 0").
 * And eng.forking, a flag, was cleared by the first fork to end while the
 * second was still under way. So the first of our prepare handlers to run
 * takes fork_lock, and the parent's handler gives it back once the fork is
 * done (the child makes it anew). A second forker waits in its prepare
 * handler, holding no lock of ours; the kernel's fork takes mmap_lock for
 * writing anyway, so forks of one process hardly overlapped.
 */
static pthread_mutex_t fork_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread bool fork_locked;   /* this thread's fork holds fork_lock */

void dd_fork_serialize(void)
{
	if (!fork_locked) {
		pthread_mutex_lock(&fork_lock);
		fork_locked = true;
	}
}

static void fork_unserialize(bool child)
{
	if (child)
		pthread_mutex_init(&fork_lock, NULL);
	else if (fork_locked)
		pthread_mutex_unlock(&fork_lock);
	fork_locked = false;
}

/*
 * Our prepare handler runs before the allocator's (it was registered after
 * them), and holds no lock of ours while theirs run (fork_lock aside, which
 * only another forker waits for): an application thread
 * that holds an allocator mutex may be waiting for our reader (a write to a
 * protected page) or for eng.lock (an interposed munmap), and the
 * allocator's handler waits for that mutex (preload_repro_fork_alloc_lock).
 * Instead, eng.forking keeps merge windows and unmerging from starting
 * until the fork is done; taking eng.lock once waits for the one in
 * progress, so a child never inherits a window half done.
 */
static void prefork(void)
{
	if (dd_unlikely(dd_opt.test_unsafe_no_fork_fence))
		return;   /* test hook: tests/torture.cmake shows repro_fork_store failing */
	dd_fork_serialize();
	pthread_mutex_lock(&eng.lock);
	child_room();
	atomic_store(&eng.forking, true);
	/* The child inherits private mappings of every slot in use now and
	 * faults them in from our memfd for as long as it lives: those slots
	 * must never be punched or reused (tests/torture found a child reading
	 * another page's content). No window places a new one until then. */
	if (eng.running)
		dd_store_keep_all();
	pthread_mutex_unlock(&eng.lock);
	/* The child guards the merged pages it inherits (child.c) and must
	 * know which of them were discarded. The reader records a REMOVE
	 * under eng.gate in the same hold that read it, so once we hold the
	 * gate every discard whose madvise() returned before this fork() is
	 * recorded. Held only for the copy, never across other handlers. */
	if (eng.running) {
		pthread_mutex_lock(&eng.gate);
		if (dd_discard_fork_snapshot() < 0)
			atomic_store(&eng.fork_snap_failed, true);
		pthread_mutex_unlock(&eng.gate);
	}
}

static void postfork_parent(void)
{
	atomic_store(&eng.forking, false);
	atomic_store(&eng.fork_snap_failed, false);
	fork_unserialize(false);
}

static void postfork_child(void)
{
	/* No threads of ours here, and the child's VMAs are unregistered (no
	 * EVENT_FORK): it never merges, and fork() (child.c) guards the merged
	 * pages it inherited once every handler has run. It lets go of the
	 * parent's userfaultfd at once: while a child held it, the parent's
	 * registrations would outlive the parent's dedup_shutdown(), and a
	 * discard there would wait forever for a reader. */
	pthread_mutexattr_t adaptive;
	pthread_mutexattr_init(&adaptive);
	pthread_mutexattr_settype(&adaptive, PTHREAD_MUTEX_ADAPTIVE_NP);
	pthread_mutex_init(&eng.gate, &adaptive);   /* as the initialiser above */
	pthread_mutexattr_destroy(&adaptive);
	pthread_mutex_init(&eng.lock, NULL);
	atomic_store(&eng.forking, false);
	fork_unserialize(true);
	dd_discard_free_atfork_child();
	dd_fd_close(&eng.uffd);
	/* the parent's group connection and segments are the parent's */
	dd_group_atfork_child();
	dd_store_child_close_segments();
	eng.running = false;
	eng.child = true;
	creds_atfork_child();
	dd_child_atfork();   /* a fork() that is not ours: guard from here */
}

/*
 * In a fork()ed child that wants an engine of its own (preload/lifecycle.c,
 * DEDUP_FORK=restart): free the parent's tables, so that dedup_init()
 * starts afresh. Single-threaded: the child has no thread of ours.
 */
void dd_engine_child_reset(void)
{
	dd_region_fini();
	dd_index_fini();
	dd_discard_fini();
	dd_store_fini();
	dd_os_close();
	dd_merge_fini();
	if (eng.doorbell)
		dd_os_raw_munmap((void *)eng.doorbell, DD_PAGE);   /* in a child: quiet */
	eng.doorbell = 0;
	atomic_store(&eng.parked, 0);
	eng.ev_applied = atomic_load(&eng.ev_head);
	eng.child = false;
}

static void doorbell_free(void)
{
	if (eng.doorbell)
		dd_os_munmap((void *)eng.doorbell, DD_PAGE);
	eng.doorbell = 0;
}

/*
 * The VMA budget: how many mappings merging may add (issue 11, point 5).
 * Every merged run is a mapping, and an isolated page costs two; past
 * vm.max_map_count the kernel refuses the *program's* next mmap, mprotect
 * or munmap that splits a mapping, and the program breaks in its own code.
 * So the budget is what the limit leaves once the program has room to grow:
 *
 *	budget = limit - headroom,
 *	headroom = max(4 x own, min(4096, 3/4 x limit))
 *
 * where own is the mappings the process has that merging did not add (all
 * of them minus ours: scan.c counts both at each recount, and this is
 * called again then, so the budget follows the program as it grows or
 * shrinks). Why 4 x: a program's mapping count moves with its load
 * (threads bring a stack and a guard each, allocators add arenas and
 * split them with mprotect, JITs map code); room for it to quadruple
 * covers what we saw (redis 121, a JVM a few thousand) without the
 * half of the limit that the old flat budget held back for a program of
 * a hundred mappings. Why 4096 at least: the kernel itself wants a few
 * mappings more than it has for a split or a fork's copy, and a small
 * program may start many threads at once. Where the limit itself is only a
 * few thousand, the floor is three quarters of it: at limit 1000 (the
 * hostile-host test) the budget is at most 250, and none once the program
 * has 250 mappings of its own, so merging never takes the last mappings of
 * a program that runs close to the limit on its own (zero pages, which add
 * no mapping, still merge). With no floor below 4096 there would be no
 * budget at all up to limit 4096, and a program of 50 mappings there could
 * not merge even one run. Above the budget there is a
 * hard stop at limit - 256 (merge.c budget_allows) for the total count,
 * and if the program still meets ENOMEM, the preload library gives runs
 * back and retries its call (preload/interpose.c).
 *
 * DEDUP_VMA_BUDGET overrides the whole rule (the hard stop stays).
 * eng.lock held (or before the threads run).
 */
#define BUDGET_OWN_TIMES 4
#define BUDGET_FLOOR 4096

void dd_engine_size_budget(long own)
{
	if (dd_opt.vma_budget) {
		__atomic_store_n(&eng.vma_budget, dd_opt.vma_budget, __ATOMIC_RELAXED);
		return;
	}
	long limit = dd_feat.max_map_count;
	long room = own > 0 ? BUDGET_OWN_TIMES * own : 0;
	long floor = limit - limit / 4 < BUDGET_FLOOR ? limit - limit / 4 : BUDGET_FLOOR;
	if (room < floor)
		room = floor;
	/* stored whole: dedup_stats() reads it without the lock */
	__atomic_store_n(&eng.vma_budget, limit > room ? (uint64_t)(limit - room) : 0,
			 __ATOMIC_RELAXED);
}

/*
 * Everything the engine needs before its threads run: the userfaultfd, the
 * kernel's features, the store, the index, the merger's memory (merge.c),
 * then the two threads. Called by dedup_init() under eng.lock. 0, or -errno
 * with nothing left behind; *why is set when the host refuses userfaultfd
 * (the caller says "not merging" and why).
 */
int dd_engine_init(const char **why)
{
	int ret;

	ret = dd_uffd_open(&eng.uffd, 0, why);
	if (ret < 0)
		return ret;
	/* Without a keeper (keeper.c) a raw close of the uffd by the program
	 * in the middle of a merge window would leave pages out of place:
	 * the program would read wrong data. Not a merge to risk. */
	if (!dd_keeper_works(eng.uffd)) {
		dd_fd_close(&eng.uffd);
		*why = "io_uring is not available (a seccomp filter or kernel.io_uring_disabled "
		       "forbids it, or the kernel is older than 6.8); libdedup keeps its "
		       "userfaultfd in an io_uring, so that the program closing every descriptor "
		       "cannot make it lose pages";
		return -ENOTSUP;
	}
	*why = NULL;
	dd_os_probe();
	dd_engine_size_budget(dd_count_maps(NULL, NULL));
	atomic_store(&dd_cnt.budget_waiting, 0);
	eng.budget_wait_pass = 0;
	eng.zero_hash = dd_hash_page(dd_zero_page);
	eng.cursor = 0;
	ret = dd_store_init(dd_opt.store_max);
	if (ret == 0)
		ret = dd_index_init();
	/* A group that cannot be joined leaves this process merging alone
	 * (group.c said why): the user asked for more merging, not less. */
	if (ret == 0 && dd_share_name[0] && dd_opt.test_hash_bits < 64)
		dd_warn("DEDUP_TEST_HASH_BITS: not in a sharing group (its members and helper "
			"check full checksums); merging alone");
	else if (ret == 0 && dd_share_name[0])
		dd_group_join(dd_share_name);
	if (ret == 0)
		ret = dd_merge_init();
	if (ret == 0)
		ret = dd_engine_start();
	if (ret < 0)
		dd_engine_fini();
	return ret;
}

/* Undo dd_engine_init() once the threads are gone (dd_engine_stop), or
 * after it failed. eng.lock held. */
void dd_engine_fini(void)
{
	dd_merge_fini();
	dd_index_fini();
	dd_discard_fini();
	dd_store_fini();
	dd_group_leave();
	dd_os_close();
	dd_fd_close(&eng.uffd);
}

int dd_engine_start(void)
{
	int ret;

	dd_child_reserve();
	if (!atfork_done) {
		dd_child_probe();
		pthread_atfork(prefork, postfork_parent, postfork_child);
		atfork_done = true;
	}
	/* D, the reader's doorbell: registered MISSING, never touched */
	void *d = dd_os_mmap(NULL, DD_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			     -1, 0, true);
	if (d == MAP_FAILED)
		return -ENOMEM;
	eng.doorbell = (uintptr_t)d;
	ret = dd_uffd_register(eng.uffd, eng.doorbell, DD_PAGE, UFFDIO_REGISTER_MODE_MISSING);
	if (ret < 0) {
		doorbell_free();
		return ret;
	}
	atomic_store(&eng.stop, false);
	atomic_store(&eng.reader_stop, false);
	atomic_store(&reader_gone, false);
	atomic_store(&eng.fds_lost, false);
	atomic_store(&eng.ctl, 0);
	ready = 0;
	ret = dd_thread_create(&eng.reader_thr, reader_main, NULL);
	if (ret) {
		doorbell_free();
		return -ret;
	}
	ret = dd_thread_create(&eng.engine_thr, engine_main, NULL);
	if (ret) {
		stop_reader();
		doorbell_free();
		return -ret;
	}
	pthread_setname_np(eng.engine_thr, "dedup-engine");
	pthread_setname_np(eng.reader_thr, "dedup-uffd");
	pthread_mutex_lock(&ready_lock);
	while (ready < 2)
		pthread_cond_wait(&ready_cond, &ready_lock);
	pthread_mutex_unlock(&ready_lock);
	return 0;
}

/* ---- credentials of our threads --------------------------------------------
 *
 * glibc applies setuid(), setresgid(), setgroups() and the rest to every
 * thread of the process (it signals each, SIGSETXID) and aborts the process
 * when the call gives a different result in one of them. Capabilities and
 * the keep-caps flag are per thread: a program that drops privileges the
 * usual way (PR_SET_KEEPCAPS, setresuid(), then capset() to raise what it
 * kept, then setresgid()) has them in its own thread only, and in ours the
 * same call fails with EPERM: abort. So before such a call (preload/interpose.c
 * interposes them) each of our threads takes the caller's capability sets
 * and keep-caps flag (dd_creds_sync); the kernel then changes every thread
 * alike. Our threads apply it at the top of their loops (dd_creds_follow),
 * woken for it: the engine by a kick, the reader by the doorbell, the
 * preload thread by its own wake-up, a fork()ed child's guard by its
 * eventfd (child.c). The caller waits for them, with a cap
 * (2 s): a thread that does not answer in time is no worse off than before.
 */
static struct {
	pthread_mutex_t lock;       /* one sync at a time (program threads) */
	_Atomic uint32_t gen, acks;
	int keepcaps;
	struct __user_cap_data_struct cap[2];
} creds = { .lock = PTHREAD_MUTEX_INITIALIZER };
static __thread uint32_t creds_seen;

/* A thread of ours starts: it follows syncs made from now on. */
void dd_creds_thread_start(void)
{
	creds_seen = atomic_load_explicit(&creds.gen, memory_order_acquire);
}

void dd_creds_follow(void)
{
	uint32_t g = atomic_load_explicit(&creds.gen, memory_order_acquire);
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };

	if (dd_likely(g == creds_seen))
		return;
	creds_seen = g;
	prctl(PR_SET_KEEPCAPS, creds.keepcaps, 0, 0, 0);
	syscall(SYS_capset, &h, creds.cap);
	atomic_fetch_add_explicit(&creds.acks, 1, memory_order_release);
}

/* A sync in another thread at fork() left the lock held: it is ours now
 * (the child's guard thread follows syncs: child.c). */
static void creds_atfork_child(void)
{
	pthread_mutex_init(&creds.lock, NULL);
}

void dd_creds_sync(unsigned others, void (*wake_others)(void))
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	bool engine = __atomic_load_n(&eng.running, __ATOMIC_ACQUIRE);
	unsigned want = others + (engine ? 1 : 0) + (engine && !atomic_load(&reader_gone) ? 1 : 0);
	int kc;

	/* A group member that changes identity leaves its group first: the
	 * helper knows it by the uid it connected with (docs/sharing.md 10).
	 * What it merged stays merged. */
	if (engine && dd_group_active()) {
		pthread_mutex_lock(&eng.lock);
		if (dd_group_active()) {
			dd_info("changing identity: leaving the sharing group");
			dd_group_leave();
		}
		pthread_mutex_unlock(&eng.lock);
	}
	if (!want)
		return;
	pthread_mutex_lock(&creds.lock);
	kc = prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0);
	if (kc < 0 || syscall(SYS_capget, &h, creds.cap) < 0) {
		pthread_mutex_unlock(&creds.lock);
		return;
	}
	creds.keepcaps = kc;
	atomic_store(&creds.acks, 0);
	atomic_fetch_add_explicit(&creds.gen, 1, memory_order_release);
	if (engine) {
		dd_engine_kick();
		if (!atomic_load(&reader_gone))
			ring_doorbell();   /* returns once the reader has read it */
	}
	if (wake_others)
		wake_others();
	for (int i = 0; i < 2000 && atomic_load(&creds.acks) < want; i++)
		usleep(1000);
	pthread_mutex_unlock(&creds.lock);
}

void dd_engine_kick(void)
{
	atomic_store(&eng.ctl, 1);
	dd_futex_wake(&eng.ctl);
}

void dd_engine_stop(void)
{
	atomic_store(&eng.stop, true);
	dd_engine_kick();
	pthread_join(eng.engine_thr, NULL);
	stop_reader();
	doorbell_free();
}
