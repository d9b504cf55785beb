/* SPDX-License-Identifier: MIT */
/*
 * child.c - the merged pages a fork()ed child inherits keep behaving as
 * anonymous memory.
 *
 * DOC: Why a child needs a guard
 *
 * A merged run is a MAP_PRIVATE mapping of our memfd, registered with the
 * parent's userfaultfd (MINOR|MISSING) so that a discarded page reads zeros
 * (discard.c). fork() copies the mapping but not the registration: our uffd
 * has no UFFD_FEATURE_EVENT_FORK (it needs CAP_SYS_PTRACE, and a child whose
 * faults its parent served would lose them when the parent exits - which is
 * how a daemon starts). Unguarded, a child reads the canonical page again
 * after madvise(MADV_DONTNEED) - its allocator's, libc's or a raw system
 * call's - where anonymous memory reads zeros. tests/preload/pl_fork_child.c
 * shows it, and fails with DEDUP_TEST_UNSAFE_NO_CHILD_GUARD=1.
 *
 * DOC: What the child does
 *
 * fork() is ours (below; exported by libdedup.so, and linked into a program
 * that uses libdedup.a): in the child, after every atfork handler (the
 * allocator's included) and while the child has one thread, it calls
 * dd_child_guard():
 *  1. Find the private mappings of a libdedup memfd in /proc/self/maps. If
 *     there are none, stop here: the child runs exactly as without us.
 *  2. Open a userfaultfd of its own (one that handles kernel-mode faults, as
 *     the engine's) with REMOVE, REMAP and UNMAP events.
 *  3. MADV_POPULATE_READ the pieces except the pages discarded before the
 *     fork (the marks prefork copied, discard.c): fork() copies no PTE of a
 *     file mapping without an anon_vma, and each first read would otherwise
 *     be a round trip to our thread (tests/probe/probe_fork_child_file.c).
 *  4. Register each run of pieces MINOR|MISSING and start the "dedup-child"
 *     thread. It first puts the uffd in an io_uring of its own (keeper.c;
 *     fork() waits for that), so that a raw close of the number by the
 *     child - a daemon closing everything - cannot end the guard: it
 *     installs the uffd at a new number before its next ioctl. It serves
 *     that uffd:
 *       REMOVE [a, b)  the pages are discarded: remember them;
 *       UNMAP [a, b)   forget them;
 *       REMAP f -> t   the marks move from f to t, and all of f counts as
 *                      discarded (with MREMAP_DONTUNMAP f stays mapped and
 *                      empty, and anonymous memory would read zeros there);
 *       minor fault    zeros (UFFDIO_COPY) where discarded, else the
 *                      canonical page (UFFDIO_CONTINUE);
 *       missing fault  zeros (the slot was freed before the fork: only a
 *                      page discarded since can be empty there).
 *     A mark stays after its fault, as in discard.c: the zeros are an
 *     anonymous page, which only another discard empties again.
 *  A piece that cannot be guarded (no uffd, a registration refused) is made
 *  anonymous memory again by a copy: more memory, same behaviour.
 *  The guard thread follows set*id() calls as the engine's threads do
 *  (engine.c, "credentials of our threads"): woken by its eventfd, it takes
 *  the caller's capabilities and keep-caps flag, and glibc's SIGSETXID then
 *  changes its ids with the others'. So a child that drops privileges (a
 *  pre-fork server's worker) keeps sharing what its parent merged.
 *
 * The child never merges these pieces; with DEDUP_FORK=restart its own new
 * engine merges other memory (a range holding our pieces is registered with
 * our uffd, and the engine's registration there fails EBUSY and skips it).
 * The preload interposers keep fixing up mremap, MADV_FREE and
 * MADV_WIPEONFORK on merged pieces in a guarded child (dd_child_guarding()).
 *
 * DOC: fork() of a guarded child
 *
 * The grandchild runs through here again: it closes the inherited uffd (no
 * thread serves it there) and guards its own copy of the pieces, with the
 * marks copied by prefork_guard(). The guard thread holds cg.lock from its
 * non-blocking read() until the messages are recorded and never waits while
 * holding it, so the prefork handler, which takes it for the copy only,
 * sees every discard whose madvise() returned before fork() was called.
 * (A discard in another thread, concurrent with the fork, may or may not
 * show in the grandchild, as with the engine: engine.c, prefork().)
 *
 * Locking: cg.lock protects cg.gone and cg.snap; the guard thread and
 * prefork_guard() take it, never around anything that can block. Our code
 * in the child never calls malloc: tables come from mmap (ranges.c).
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"
#include "keeper.h"
#include "uapi.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

#define CG_PENDING 1024

struct piece {
	uintptr_t lo, hi;
	int prot;
};

static struct {
	pthread_mutex_t lock;
	int uffd;                 /* -1: not guarding */
	int wake_fd;              /* eventfd: wakes the guard (to stop, to follow creds) */
	struct dd_keeper k;       /* the guard thread's: keeps the uffd (keeper.c) */
	_Atomic uint32_t ready;   /* the guard thread has made its keeper */
	pthread_t thr;
	bool thr_started;
	_Atomic bool stopping;    /* dd_child_release: the guard is to leave */
	_Atomic bool left;        /* the guard thread has left its loop */
	bool atfork_done;
	struct dd_rtab gone;      /* discarded pages of our pieces */
	struct dd_rtab snap;      /* gone, as of the last fork() (prefork_guard) */
	struct piece *pieces;     /* dd_child_guard: the pieces found (grows) */
	size_t npieces, cap;
} cg = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.uffd = -1,
	.wake_fd = -1,
};

/* ---- a piece back to anonymous memory ------------------------------------ */

/*
 * Replace [a, a + len), one private file VMA with protection prot, by
 * anonymous memory holding the same bytes: copy into an anonymous range
 * and mremap it over the piece (one step, no hole). Pages in `zero` (may be
 * NULL) read zeros instead: discarded pages the copy would read wrong. Not
 * atomic against another thread writing the piece meanwhile: callers hold
 * the only thread (the child at fork) or are changing the range anyway.
 * Quiet system calls (os.c): this runs inside fork() and interposed calls
 * (preload/remap.c). With uffd >= 0 the piece is unregistered from it
 * between the copy and the mremap: the copy still reads discarded pages
 * through the guard, and the mremap then raises no UNMAP event, whose round
 * trip to the guard thread (two context switches) cost more than the rest
 * of the step (dd_child_release, where the caller is the only thread of
 * the program left).
 * The copy stays a mapping of its own: in a fork()ed child the anonymous
 * neighbours came from the parent with anon_vma chains of their own, and
 * the kernel merges nothing into them (not even a fresh mapping made in
 * place: tests/probe/probe_child_no_merge.c), so the range keeps one
 * mapping per piece - no more than it had. Linear in the pieces: one read
 * of /proc/self/maps per call, three or four system calls per piece.
 */
/*
 * [lo, hi) of the piece at a was discarded since it merged (a mark): where
 * no page of its own has come since, it reads zeros, not the canonical
 * page the copy read. But a mark stays after its fault (discard.c): a page
 * discarded, faulted in as zeros and written since is a private anonymous
 * page holding the program's data, and fork() copied it. So the copy at t
 * is zeroed only where the page table has no private page: a present
 * anonymous page or a swapped one keeps what the copy read. (Zeroing every
 * marked page lost such writes: torture seed 2 with the guard thread
 * refused, DEDUP_TEST_CHILD_COPY=1.) Without a page table to read, zeros,
 * as before.
 */
static void zero_discarded(void *t, uintptr_t a, uintptr_t lo, uintptr_t hi)
{
	uint8_t st[512];   /* a pagemap descriptor opened per 512 pages */

	for (uintptr_t p = lo; p < hi;) {
		size_t n = (hi - p) / DD_PAGE < DD_ARRAY_SIZE(st) ? (hi - p) / DD_PAGE : DD_ARRAY_SIZE(st);
		bool known = dd_pte_states_here(p, n, st) == 0;
		for (size_t i = 0; i < n; i++, p += DD_PAGE) {
			bool own = known && (((st[i] & DD_PTE_PRESENT) && !(st[i] & DD_PTE_FILE)) ||
					     (st[i] & DD_PTE_SWAP));
			if (!own)
				memset((char *)t + (p - a), 0, DD_PAGE);
		}
	}
}

int dd_piece_to_anon(uintptr_t a, size_t len, int prot, const struct dd_rtab *zero, int uffd)
{
	void *t = dd_os_far_mmap(len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (t == MAP_FAILED)
		return -ENOMEM;
	if (!(prot & PROT_READ))
		dd_os_mprotect((void *)a, len, PROT_READ | (prot & PROT_WRITE));
	memcpy(t, (void *)a, len);
	if (zero)
		for (size_t i = dd_rt_lower(zero, a); i < zero->n && zero->r[i].lo < a + len; i++) {
			uintptr_t lo = zero->r[i].lo > a ? zero->r[i].lo : a;
			uintptr_t hi = zero->r[i].hi < a + len ? zero->r[i].hi : a + len;
			zero_discarded(t, a, lo, hi);
		}
	if (prot != (PROT_READ | PROT_WRITE))
		dd_os_mprotect(t, len, prot);
	if (uffd >= 0)
		(void)dd_uffd_unregister(uffd, a, len);
	if (dd_os_raw_mremap(t, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)a) == MAP_FAILED) {
		int e = errno;
		dd_os_raw_munmap(t, len);
		return -e;
	}
	return 0;
}

/* ---- the guard thread ----------------------------------------------------- */

/* Resolve a fault at page a; -EAGAIN while an event's thread has yet to run. */
static int resolve(uintptr_t a, bool minor)
{
	int r = dd_uffd_resolve(cg.uffd, a, !minor || dd_rt_overlaps(&cg.gone, a, a + DD_PAGE));

	if (r == -EAGAIN)
		return r;
	if (r < 0)   /* EEXIST: mapped meanwhile; ENOENT: unmapped meanwhile */
		dd_uffd_wake(cg.uffd, a, DD_PAGE);
	return 0;
}

static void mark_gone(uintptr_t lo, uintptr_t hi)
{
	if (!dd_rt_union(&cg.gone, lo, hi))
		dd_err("child: out of room tracking discarded pages");
}

/* REMAP from -> to (len): see "What the child does". cg.lock held. */
static void remapped(uintptr_t from, uintptr_t to, size_t len)
{
	struct dd_range moved[64];
	size_t n = 0;

	dd_assert_held(&cg.lock);

	dd_rt_sub(&cg.gone, to, to + len);
	for (size_t i = dd_rt_lower(&cg.gone, from); i < cg.gone.n && cg.gone.r[i].lo < from + len; i++) {
		uintptr_t lo = cg.gone.r[i].lo > from ? cg.gone.r[i].lo : from;
		uintptr_t hi = cg.gone.r[i].hi < from + len ? cg.gone.r[i].hi : from + len;
		if (n == DD_ARRAY_SIZE(moved)) {
			/* too scattered to copy here: all of it reads zeros
			 * would be wrong, so keep every mark we can */
			mark_gone(to + (lo - from), to + (hi - from));
			continue;
		}
		moved[n++] = (struct dd_range){ to + (lo - from), to + (hi - from) };
	}
	for (size_t i = 0; i < n; i++)
		mark_gone(moved[i].lo, moved[i].hi);
	mark_gone(from, from + len);
}

/* Wait for the uffd or the wake-up eventfd, at most timeout_ms (-1: no
 * limit). Returns 2 when the eventfd rang (drained here), 1 otherwise, -1
 * to leave (the uffd is gone, or poll() failed). */
static int guard_wait(int timeout_ms)
{
	/* The numbers are read again each time: an interposed dup2() onto
	 * one of ours moves it (fds.c). */
	int wake = dd_fd_intact(cg.wake_fd) ? cg.wake_fd : -1, r = -1;
	uint64_t v;

	/* without wake_fd (closed behind our back), look every 100 ms */
	if (wake < 0 && timeout_ms < 0)
		timeout_ms = 100;
	if (cg.k.have) {
		r = dd_keeper_wait(&cg.k, wake, timeout_ms);
		if (r < 0)
			dd_keeper_exit(&cg.k);   /* the ring failed: poll() the number */
	}
	if (r < 0) {
		/* Without a keeper a uffd the program closed by a raw system
		 * call is gone for good: leave (its file went with the number,
		 * and the kernel dropped the registrations). */
		if (!dd_fd_intact(cg.uffd))
			return -1;
		struct pollfd pfd[2] = { { .fd = cg.uffd, .events = POLLIN }, { .fd = wake, .events = POLLIN } };
		r = poll(pfd, 2, timeout_ms);
		if (r < 0 && errno != EINTR)
			return -1;
		r = r > 0 && (pfd[1].revents & POLLIN) ? 2 : 1;
	}
	/* non-blocking; the number checked just above, as for every use */
	if (r == 2 && dd_fd_intact(wake))
		(void)!read(wake, &v, sizeof(v));
	return r;
}

static ssize_t guard_read(void *buf, size_t len)
{
	ssize_t r = dd_keeper_read(&cg.k, buf, len);

	if (r != -ENOSYS)
		return r;
	r = read(cg.uffd, buf, len);   /* no keeper: guard_wait checked the number */
	return r < 0 ? -errno : r;
}

static void *guard_main(void *arg)
{
	static struct { uintptr_t a; bool minor; } pend[CG_PENDING];
	size_t npend = 0;
	struct uffd_msg msg[32];

	(void)arg;
	/* The keeper first, while the child's one other thread waits in
	 * dd_child_guard(): nothing can close the uffd's number before the
	 * ring holds it. */
	if (!dd_keeper_init(&cg.k, cg.uffd))
		dd_debug("child: no io_uring to keep the guard's uffd");
	dd_creds_thread_start();
	atomic_store(&cg.ready, 1);
	dd_futex_wake(&cg.ready);
	for (;;) {
		if (guard_wait(npend ? 1 : -1) < 0 || atomic_load(&cg.stopping))
			break;
		dd_creds_follow();   /* a set*id() call is waiting for us */
		pthread_mutex_lock(&cg.lock);
		while (npend + DD_ARRAY_SIZE(msg) <= CG_PENDING) {
			ssize_t r = guard_read(msg, sizeof(msg));
			if (r <= 0)
				break;
			for (size_t i = 0; i < (size_t)r / sizeof(msg[0]); i++) {
				const struct uffd_msg *m = &msg[i];
				switch (m->event) {
				case UFFD_EVENT_PAGEFAULT:
					pend[npend].a = m->arg.pagefault.address & ~(uintptr_t)(DD_PAGE - 1);
					pend[npend++].minor = m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR;
					break;
				case UFFD_EVENT_REMOVE:   /* MADV_FREE frees no piece (discard.c) */
					if (!dd_discard_freeing(m->arg.remove.start, m->arg.remove.end))
						mark_gone(m->arg.remove.start, m->arg.remove.end);
					break;
				case UFFD_EVENT_UNMAP:
					dd_rt_sub(&cg.gone, m->arg.remove.start, m->arg.remove.end);
					break;
				case UFFD_EVENT_REMAP:
					remapped(m->arg.remap.from, m->arg.remap.to, m->arg.remap.len);
					break;
				default:
					break;
				}
			}
		}
		/* the ioctls need a number that is ours: after a raw close,
		 * the keeper installs the uffd at a new one */
		if (npend && !dd_keeper_renumber(&cg.k, &cg.uffd)) {
			pthread_mutex_unlock(&cg.lock);
			break;
		}
		size_t keep = 0;
		for (size_t i = 0; i < npend; i++)
			if (resolve(pend[i].a, pend[i].minor) == -EAGAIN)
				pend[keep++] = pend[i];
		npend = keep;
		pthread_mutex_unlock(&cg.lock);
		if (npend)
			sched_yield();   /* an event's thread has yet to run */
	}
	/* With the number gone too, the uffd goes with the ring: the kernel
	 * drops the registrations and wakes every fault. */
	dd_keeper_exit(&cg.k);
	atomic_store(&cg.left, true);
	return NULL;
}

/* ---- fork() of a guarded child -------------------------------------------- */

static void prefork_guard(void)
{
	if (cg.uffd < 0)
		return;
	dd_fork_serialize();   /* cg.snap is one buffer (engine.c) */
	pthread_mutex_lock(&cg.lock);
	cg.snap.n = 0;
	if (dd_rt_reserve(&cg.snap, cg.gone.n)) {
		memcpy(cg.snap.r, cg.gone.r, cg.gone.n * sizeof(*cg.gone.r));
		cg.snap.n = cg.gone.n;
	} else {
		dd_err("child: out of memory copying the discard marks for fork()");
	}
	pthread_mutex_unlock(&cg.lock);
}

static __thread bool in_our_fork;   /* below, fork() */

/*
 * ThreadSanitizer's runtime kills a fork()ed child of a multi-threaded
 * process that starts a thread (its die_after_fork, on by default): the
 * guard thread would end the child. In such a program the pieces are
 * copied instead (give_up: more memory, the same behaviour). Found at
 * engine start (dd_child_probe). The runtime is told by a weak reference,
 * bound at load time: not dlsym(), whose miss allocates its error message
 * (the engine may start from inside the program's free(): lifecycle.c).
 */
extern void __tsan_init(void) __attribute__((weak));
static bool threads_fatal;

void dd_child_probe(void)
{
	const char *o = getenv("TSAN_OPTIONS");
	threads_fatal = (__tsan_init && !(o && strstr(o, "die_after_fork=0"))) ||
			dd_opt.test_child_copy;
}

static void postfork_guard_child(void)
{
	if (in_our_fork)   /* else dd_child_atfork() did it, and started the guard */
		pthread_mutex_init(&cg.lock, NULL);
}

/* ---- starting the guard --------------------------------------------------- */

/* Room for n pieces: the table starts at the live vm.max_map_count (a
 * process has at most that many mappings, ours among them) and doubles if
 * the limit was raised since. Quiet system calls (os.c): we may be inside
 * fork(). */
static bool pieces_reserve(size_t n)
{
	size_t ncap = cg.cap ? cg.cap : dd_own_table_cap(dd_maps_table_cap(), sizeof(*cg.pieces));
	void *p;

	if (cg.pieces && n <= cg.cap)
		return true;
	while (ncap < n)
		ncap *= 2;
	if (!cg.pieces)
		p = dd_os_far_mmap(ncap * sizeof(*cg.pieces), PROT_READ | PROT_WRITE,
				   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	else
		p = dd_os_far_mremap(cg.pieces, cg.cap * sizeof(*cg.pieces),
				     ncap * sizeof(*cg.pieces));
	if (p == MAP_FAILED)
		return false;
	/* ours, not the program's: the preload library leaves "dd" alone
	 * (it registered this table as heap memory before) */
	dd_os_madvise(p, ncap * sizeof(*cg.pieces), MADV_DONTDUMP);
	cg.pieces = p;
	cg.cap = ncap;
	return true;
}

/*
 * The child's tables, mapped once in the parent at engine start, so that a
 * child maps nothing to list and mark its pieces. At a vm.max_map_count
 * lowered below what the process maps (others' tests did that on our CI
 * machine), no mmap succeeds in the child, nor an unmerge in the parent
 * (each needs a mapping for a moment): the child then ran unguarded ("child:
 * no memory to look for merged pages") and its discarded merged pages read
 * their old content. The parent never writes them (no memory, three
 * MAP_NORESERVE mappings); a child writes its copy. The guard's io_uring is
 * optional (keeper.c), and its thread takes a stack glibc cached at fork().
 * Failures are left for the child to try again.
 */
void dd_child_reserve(void)
{
	(void)pieces_reserve(1);
	if (!cg.gone.r && dd_rt_init(&cg.gone, dd_maps_table_cap()) &&
	    !dd_rt_init(&cg.snap, dd_maps_table_cap()))
		dd_rt_fini(&cg.gone);
}

static int piece_line(void *ctx, uintptr_t lo, uintptr_t hi, const char *perms, const char *rest)
{
	(void)ctx;
	if (perms[3] != 'p' || !strstr(rest, "/memfd:libdedup"))
		return 0;
	if (!pieces_reserve(cg.npieces + 1))
		return -ENOMEM;
	cg.pieces[cg.npieces++] = (struct piece){ lo, hi, dd_perms_prot(perms) };
	return 0;
}

static void give_up(size_t first, size_t last, const char *why, int err)
{
	for (size_t i = first; i < last; i++) {
		const struct piece *p = &cg.pieces[i];
		int r = dd_piece_to_anon(p->lo, p->hi - p->lo, p->prot, &cg.gone, -1);
		if (r < 0)
			dd_err("child: cannot guard nor copy merged pages at %#lx (%s: %s)",
			       (unsigned long)p->lo, why, strerror(-r));
	}
	if (last > first)
		dd_debug("child: %zu merged pieces copied (%s: %s)", last - first, why, strerror(-err));
}

/* Populate [lo, hi) except what was discarded before the fork. */
static void populate(uintptr_t lo, uintptr_t hi)
{
	uintptr_t at = lo;
	for (size_t i = dd_rt_lower(&cg.gone, lo); at < hi; i++) {
		uintptr_t end = i < cg.gone.n && cg.gone.r[i].lo < hi ? cg.gone.r[i].lo : hi;
		if (end > at)
			(void)dd_os_madvise((void *)at, end - at, MADV_POPULATE_READ);
		if (i >= cg.gone.n || cg.gone.r[i].lo >= hi)
			break;
		at = cg.gone.r[i].hi;
	}
}

/* The marks the child starts from: its parent's guard's (a grandchild)
 * and its parent's engine's (which, with DEDUP_FORK=restart, a guarded
 * child may run too: both then have merged pieces). */
static void seed_marks(bool grandchild)
{
	cg.gone.n = 0;
	if (grandchild)
		for (size_t i = 0; i < cg.snap.n; i++)
			mark_gone(cg.snap.r[i].lo, cg.snap.r[i].hi);
	const uintptr_t (*iv)[2];
	size_t n = dd_discard_forked(&iv);
	if (atomic_load(&eng.fork_snap_failed))
		dd_err("child: out of memory copying the discard marks at fork(); pages the "
		       "parent discarded may read their merged content here");
	for (size_t i = 0; i < n; i++)
		mark_gone(iv[i][0], iv[i][1]);
}

void dd_child_guard(void)
{
	bool grandchild = cg.uffd >= 0;
	const char *why = NULL;
	int r;

	if (grandchild) {
		/* our parent's guard uffd: nobody serves it here */
		dd_fd_close(&cg.uffd);
		dd_fd_close(&cg.wake_fd);
		cg.thr_started = false;
		memset(&cg.k, 0, sizeof(cg.k));   /* the parent's ring: not inherited */
	}
	if (dd_opt.test_unsafe_no_child_guard)
		return;   /* test hook: tests/preload.cmake shows pl_fork_child failing */
	if (!pieces_reserve(1)) {
		dd_err("child: no memory to look for merged pages");
		return;
	}
	cg.npieces = 0;
	r = dd_maps_each(piece_line, NULL);
	if (r < 0)   /* no memory for the table: the pieces listed are guarded */
		dd_err("child: out of memory listing merged pages; some are not guarded");
	if (!cg.npieces)
		return;
	if (!cg.gone.r && (!dd_rt_init(&cg.gone, dd_maps_table_cap()) ||
			   !dd_rt_init(&cg.snap, dd_maps_table_cap()))) {
		/* Nothing to keep marks in: copy, the one way left. Pages
		 * discarded before the fork then read their merged content. */
		dd_err("child: no memory for the discard marks; merged pages copied");
		give_up(0, cg.npieces, "mmap", -ENOMEM);
		return;
	}
	seed_marks(grandchild);
	if (threads_fatal) {
		give_up(0, cg.npieces, "a thread in a child", -ENOTSUP);
		return;
	}

	/* UNMAP events too: marks of memory the program unmaps must go, or
	 * they would zero what a restarted engine merges there later */
	r = dd_uffd_open(&cg.uffd, UFFD_FEATURE_EVENT_UNMAP, &why);
	if (r == 0) {
		r = dd_fd_adopt(&cg.wake_fd, eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
		if (r < 0)
			r = -errno, why = "eventfd";
	}
	if (r < 0) {
		dd_fd_close(&cg.uffd);
		give_up(0, cg.npieces, why ? why : "userfaultfd", r);
		return;
	}
	for (size_t i = 0; i < cg.npieces;) {
		size_t j = i + 1;
		while (j < cg.npieces && cg.pieces[j].lo == cg.pieces[j - 1].hi)
			j++;
		uintptr_t lo = cg.pieces[i].lo, hi = cg.pieces[j - 1].hi;
		populate(lo, hi);
		r = dd_uffd_register(cg.uffd, lo, hi - lo,
				     UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_MISSING);
		if (r < 0)
			give_up(i, j, "UFFDIO_REGISTER", r);
		i = j;
	}
	atomic_store(&cg.ready, 0);
	atomic_store(&cg.left, false);
	atomic_store(&cg.stopping, false);
	r = dd_thread_create(&cg.thr, guard_main, NULL);
	if (r) {
		/* Unregistered again by closing the uffd, then copied. */
		dd_fd_close(&cg.uffd);
		dd_fd_close(&cg.wake_fd);
		give_up(0, cg.npieces, "pthread_create", -r);
		return;
	}
	pthread_setname_np(cg.thr, "dedup-child");
	while (!atomic_load(&cg.ready))
		dd_futex_wait(&cg.ready, 0, 0);
	cg.thr_started = true;
	if (!cg.atfork_done) {
		pthread_atfork(prefork_guard, NULL, postfork_guard_child);
		cg.atfork_done = true;
	}
	dd_debug("child: guarding %zu merged pieces", cg.npieces);
}

bool dd_child_guarding(void)
{
	return cg.uffd >= 0;
}

/* Our threads in this (guarded) child that follow credentials: the guard
 * thread, while it runs (engine.c, dd_creds_sync). */
unsigned dd_child_threads(void)
{
	return cg.thr_started && !atomic_load(&cg.left) ? 1 : 0;
}

/* Wake the guard thread (dd_creds_sync: it then follows the caller's
 * capabilities and keep-caps flag). */
void dd_child_wake(void)
{
	uint64_t one = 1;

	if (cg.thr_started && dd_fd_intact(cg.wake_fd))
		(void)!write(cg.wake_fd, &one, sizeof(one));
}

/*
 * Make every guarded piece anonymous memory again and stop the guard: for a
 * call that needs a single-threaded process (unshare(CLONE_NEWUSER) and
 * friends, preload/interpose.c). Copies merged pages: memory, not behaviour.
 */
/* Threads in this process (/proc/self/stat field 20), or -1. */
static long thread_count(void)
{
	char buf[1024], *p;
	int fd = dd_fd_open_temp("/proc/self/stat", O_RDONLY);
	ssize_t n = fd >= 0 ? dd_fd_read_temp(fd, buf, sizeof(buf) - 1) : -1;

	if (fd >= 0)
		dd_fd_close_temp(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	p = strrchr(buf, ')');   /* the command may hold spaces */
	for (int field = 2; p && field < 20; field++)
		p = strchr(p + 1, ' ');
	return p ? strtol(p + 1, NULL, 10) : -1;
}

/* Every event the guard has read so far is handled (it reads and handles
 * under cg.lock): for dd_discard_free_end. */
void dd_child_events_handled(void)
{
	if (dd_child_guarding()) {
		pthread_mutex_lock(&cg.lock);
		pthread_mutex_unlock(&cg.lock);
	}
}

int dd_child_release(void)
{
	uint64_t one = 1;
	int ret = 0;

	if (cg.uffd < 0)
		return 0;
	/* With threads of the program's own the call fails anyway (EINVAL),
	 * as it would without us: keep the guard, and copy nothing under
	 * their feet. */
	if (cg.thr_started && thread_count() != 2)
		return 0;
	/* The copies read discarded pages through the guard (zeros): it must
	 * still run. Each piece leaves the guard's uffd before its mremap, which
	 * then raises no event (dd_piece_to_anon). */
	int uffd = dd_fd_intact(cg.uffd) ? cg.uffd : -1;
	cg.npieces = 0;
	dd_maps_each(piece_line, NULL);
	for (size_t i = 0; i < cg.npieces; i++) {
		const struct piece *p = &cg.pieces[i];
		int r = dd_piece_to_anon(p->lo, p->hi - p->lo, p->prot, NULL, uffd);
		if (r < 0 && !ret)
			ret = r;
	}
	if (cg.thr_started) {
		atomic_store(&cg.stopping, true);
		if (dd_fd_intact(cg.wake_fd))
			(void)!write(cg.wake_fd, &one, sizeof(one));
		pthread_join(cg.thr, NULL);
		cg.thr_started = false;
		/* pthread_join() returns once the kernel cleared the thread's
		 * id, early in its exit; it leaves the thread group later (a
		 * guard with a ring takes longer: its io_uring context goes
		 * first), and until then the call that needs one thread fails
		 * EINVAL. Wait for that, briefly. */
		for (int i = 0; i < 2000 && thread_count() > 1; i++)
			usleep(50);
	}
	dd_fd_close(&cg.uffd);
	dd_fd_close(&cg.wake_fd);
	return ret;
}

/* ---- fork() ------------------------------------------------------------- */

extern pid_t __fork(void);
/* preload/lifecycle.c, when linked in (libdedup.so): DEDUP_FORK=restart */
void dd_preload_forked(void) __attribute__((weak));

/* The next fork() in the lookup order (a sanitizer's or another preloaded
 * library's interceptor, or libc's), else glibc's own. */
static pid_t (*next_fork)(void);

DD_API pid_t fork(void)
{
	if (!next_fork) {
		pid_t (*f)(void) = (pid_t (*)(void))dlsym(RTLD_NEXT, "fork");
		next_fork = f && f != fork ? f : __fork;
	}
	in_our_fork = true;
	pid_t pid = next_fork();   /* runs every atfork handler, ours included */
	in_our_fork = false;

	if (pid != 0)
		return pid;
	/* Merged pages from the parent (or from a guarded parent) first,
	 * before a restarted engine looks at the child's memory. */
	if (eng.child || dd_child_guarding())
		dd_child_guard();
	if (dd_preload_forked)
		dd_preload_forked();
	return 0;
}

/*
 * A fork() that is not the one above still runs the atfork handlers: a
 * program linked with libdedup.a and a sanitizer's runtime (TSan's fork
 * interceptor is bound ahead of ours: a child of a TSan build read the
 * canonical page after MADV_DONTNEED, torture seed 2), or one that calls
 * libc's fork through dlsym. The engine's child handler (engine.c,
 * postfork_child) calls this last: when fork() above is not on the way,
 * the guard starts here, before the handlers registered after the
 * engine's have run - ours do not use the allocator, and the guard's own
 * (postfork_guard_child) then leaves the lock it set up alone. The child
 * is single-threaded as in fork() above. (_Fork() and a raw clone() run no
 * handler at all: no interposer sees them.)
 */
void dd_child_atfork(void)
{
	if (in_our_fork)
		return;   /* fork() above guards, once every handler has run */
	if (dd_child_guarding())   /* a grandchild: the lock a parent held */
		pthread_mutex_init(&cg.lock, NULL);
	dd_child_guard();
	/* not dd_preload_forked() (DEDUP_FORK=restart): a new engine from
	 * inside fork(), before the later handlers, is one risk too many; the
	 * child runs guarded, without an engine of its own */
}

/*
 * daemon(3): glibc's calls its internal fork, which is not ours, and the
 * child is the process that goes on running. So it is done here the same
 * way (glibc 2.36 misc/daemon.c) with our fork().
 */
DD_API int daemon(int nochdir, int noclose)
{
	struct stat st;
	int fd;

	switch (fork()) {
	case -1:
		return -1;
	case 0:
		break;
	default:
		_exit(0);
	}
	if (setsid() == -1)
		return -1;
	if (!nochdir)
		(void)!chdir("/");
	if (!noclose) {
		fd = open("/dev/null", O_RDWR);   /* as glibc: no O_CLOEXEC when it is 0-2 */
		if (fd < 0)
			return -1;
		if (fstat(fd, &st) != 0 || !S_ISCHR(st.st_mode)) {
			close(fd);
			errno = ENODEV;
			return -1;
		}
		(void)dup2(fd, STDIN_FILENO);
		(void)dup2(fd, STDOUT_FILENO);
		(void)dup2(fd, STDERR_FILENO);
		if (fd > 2)
			close(fd);
	}
	return 0;
}
