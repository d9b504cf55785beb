/* SPDX-License-Identifier: MIT */
/*
 * preload.h - the preload folder's internal contract: the state its files
 * share, the raw system calls, the functions one file calls in another, and
 * the lock order. Shared library only (libdedup.so); nothing here is exported.
 *
 * DOC: Overview
 *
 * LD_PRELOAD mode: find an unmodified program's heap, keep the engine's
 * regions in step with the program's mapping calls, and keep the program's
 * view of its memory exactly that of anonymous memory.
 *
 * The same libdedup.so serves the API and preloading. Preload mode is on only
 * when LD_PRELOAD names libdedup.so* or DEDUP_PRELOAD=1 (dedup-run sets it);
 * DEDUP_PRELOAD=0 turns it off. Otherwise every interposed function is
 * a plain system call (or glibc's own sbrk/fork) and nothing is registered.
 *
 * One concern per file:
 *   lifecycle.c    constructor and destructor, lazy start (DEDUP_START), what
 *                  the host must allow, fork handlers, dd_preload_forked()
 *   tables.c       the shared state below and its tables: "ours" (libdedup's
 *                  own memory and code), the blocked ranges, growing tables
 *   maps.c         /proc/self/maps and smaps, read without stdio or malloc
 *   discover.c     what gets registered: the candidate rules, registering and
 *                  unregistering, the reconcile (the dedup-preload thread),
 *                  the allocator hooks' reports
 *   interpose.c    the interposed mapping calls, and why each is interposed
 *   remap.c        merged pieces: back to anonymous memory, and mremap of a
 *                  range that merging split into several VMAs
 *   libc_hooks.c   free and realloc, for glibc's mmapped chunks
 *   descriptors.c  close, dup2, fstat & co.: our descriptors (../fds.c) are
 *                  not the program's
 *   jemalloc.c     a shared jemalloc's extent hooks
 * fork() itself is interposed in ../child.c, which guards merged pages.
 *
 * Threads. The program's threads run the interposers and the allocator
 * hooks (mmap, munmap, close and dup2 also in signal handlers); the
 * dedup-preload thread (discover.c) registers memory; the constructor, the
 * destructor and the fork handlers (lifecycle.c) run in the thread that
 * loads, exits or forks.
 *
 * Locks, in order: pl.lock (ours; taken by interposed calls that change
 * mappings and by the reconcile thread around registering) -> eng.lock ->
 * eng.gate; pl.ours_lock (a spinlock) is a leaf, held only for table updates.
 * The real system call is made under pl.lock, so a reconcile can never
 * register a range between our check and the application's change. Calls
 * made by libdedup itself never take pl.lock (the engine calls mmap while
 * holding eng.lock). No malloc and no stdio anywhere here: tables live in
 * memory we mmap ourselves (MAP_NORESERVE reservations).
 *
 * Known limits: see docs/preload.md.
 */
#ifndef DEDUP_PRELOAD_H
#define DEDUP_PRELOAD_H

#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif
#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#endif

#pragma GCC visibility push(hidden)

/* The interposers' own system calls are os.c's raw forms (dd_os_raw_mmap
 * and friends, dd_os_mprotect, dd_os_madvise): the real calls, without
 * dlsym, and without telling the "ours" hook - the program's calls are not
 * ours. */

static inline uintptr_t pg_down(uintptr_t a) { return a & ~(uintptr_t)(DD_PAGE - 1); }
static inline uintptr_t pg_up(uintptr_t a)
{
	return (a + DD_PAGE - 1) & ~(uintptr_t)(DD_PAGE - 1);
}

/* ---- state ------------------------------------------------------------------ */

enum {
	PL_OFF = 0,     /* not preloaded: everything passes straight through */
	PL_STARTING,    /* dedup_init running: only our own mappings are tracked */
	PL_ON,
	PL_PASSIVE,     /* preloaded, but not merging (init failed, child, mlockall) */
	PL_WATCHING,    /* preloaded, engine not started yet (lazy start, lifecycle.c) */
};


/* One VMA of /proc/self/maps or smaps (maps.c). */
enum { K_ANON, K_STACK, K_DEDUP, K_OTHER };
enum {
	VF_LO = 1, VF_DC = 2, VF_WF = 4, VF_DD = 8, VF_UM = 16, VF_UW = 32, VF_UI = 64,
	VF_KNOWN = 1u << 31,   /* flags were read (smaps) */
};
struct vma {
	uintptr_t lo, hi;
	uint32_t kind, flags;
	char perms[4];
	bool heap;                   /* [heap]: the brk heap */
};

/* The allocator hooks' report slots (discover.c, dd_pl_track_new). */
#define REPORT_SLOTS 256
enum { SLOT_FREE, SLOT_BUSY, SLOT_READY };

/* Defined in tables.c. */
struct dd_preload {
	pthread_mutex_t lock;        /* see the top of this file */
	struct dd_rtab mine;            /* ranges we registered (exact, for dedup_unregister) */
	struct dd_rtab excl;            /* never register (app's uffd, mlock, DONTFORK...) */
	struct dd_rtab ignore;          /* skip until the next full check (bad flags, errors) */
	/* Tables of mappings (see dd_pl_table_grow: sized from the live
	 * vm.max_map_count, doubled when full) and their capacities. */
	struct vma *vbuf, *sbuf;     /* reconcile: maps and smaps snapshots */
	size_t nv, ns, vcap, scap;
	struct dd_range *cand;          /* reconcile: candidate ranges */
	size_t ncand, ccap;
	struct vma *pieces;          /* interposers (pl.lock): VMAs of one range */
	size_t pcap;
	pthread_t thr;
	bool thr_started;
	_Atomic uint32_t kicked;     /* futex: wakes the dedup-preload thread */
	_Atomic bool round_wanted;   /* "a large mapping appeared": reconcile */
	_Atomic bool stop;
	bool was_on;                 /* this process image ran in preload mode */

	_Atomic int state;           /* PL_*: read with state() */

	/* DEDUP_EXCLUDE (options.c), read once at start */
	struct dd_exclude conf_excl;

	/* libdedup's own mappings. Updated from any thread, including the engine
	 * under eng.lock: so a spinlock that nothing else is ever taken under. */
	struct dd_rtab ours;
	atomic_flag ours_lock;
	uintptr_t text_lo, text_hi;   /* libdedup's code */

	/* ranges reported by allocator hooks: lock-free (discover.c) */
	struct {
		_Atomic int state;
		uintptr_t lo, hi;
	} reported[REPORT_SLOTS];
	_Atomic unsigned report_hint;
};
extern struct dd_preload pl;

static inline void ours_acquire(void)
{
	while (atomic_flag_test_and_set_explicit(&pl.ours_lock, memory_order_acquire))
		;
}
static inline void ours_release(void)
{
	atomic_flag_clear_explicit(&pl.ours_lock, memory_order_release);
}

static inline int state(void) { return atomic_load_explicit(&pl.state, memory_order_acquire); }

static inline size_t min_region(void)
{
	return dd_opt.min_region > DD_PAGE ? (size_t)dd_opt.min_region : DD_PAGE;
}

/* ---- who is calling -------------------------------------------------------- */

/* Calls made by libdedup itself (its code, or its engine threads) pass straight
 * through and only keep the "ours" table up to date. libdedup's own mapping
 * calls no longer come here (os.c makes them raw and says which memory is
 * ours, dd_os_ours_hook); what is left is what libc maps for our threads
 * and for code of ours that calls libc (pthread_create's stacks, stdio of
 * the tools). ret is the interposer's __builtin_return_address(0), read in
 * the interposer itself: a function between the libc entry and that read
 * would make every call look like ours. */
static inline bool from_us(const void *ret)
{
	uintptr_t a = (uintptr_t)ret;
	if (a >= pl.text_lo && a < pl.text_hi)
		return true;
	pthread_t self = pthread_self();
	/* Not the dedup-preload thread: it calls jemalloc's mallctl(), and what
	 * jemalloc maps or unmaps there (its thread cache, new arenas' memory)
	 * is the application's. Its own calls come from our text. */
	if (eng.running && (pthread_equal(self, eng.engine_thr) || pthread_equal(self, eng.reader_thr)))
		return true;
	return false;
}

/* ---- tables.c --------------------------------------------------------------- */

/* At start: the range tables, the snapshots, "ours" and our text. */
bool dd_pl_tables_init(void);
/* Room for need entries of elem bytes in *p (see there). */
bool dd_pl_table_grow(void **p, size_t *cap, size_t elem, size_t need);
#define TABLE_GROW(ptr, cap, need) \
	dd_pl_table_grow((void **)&(ptr), &(cap), sizeof(*(ptr)), (need))
void dd_pl_ours_add(uintptr_t lo, size_t len);   /* any thread; takes pl.ours_lock */
void dd_pl_ours_sub(uintptr_t lo, size_t len);
/* Is [lo, hi) blocked at lo? pl.lock held. */
uintptr_t dd_pl_blocked_at(uintptr_t lo, uintptr_t hi, uintptr_t *next);
/* The range tables moved as they grew: "ours" follows them. pl.lock held. */
void dd_pl_track_tables(void);

/* ---- maps.c ----------------------------------------------------------------- */

typedef int (*vma_fn)(void *ctx, const struct vma *v);
int dd_pl_vma_walk(bool smaps, vma_fn fn, void *ctx);
long dd_pl_vmas_in(bool smaps, uintptr_t lo, uintptr_t hi, struct vma *out, size_t cap);
long dd_pl_pieces_in(uintptr_t lo, uintptr_t hi);   /* into pl.pieces; pl.lock held */

/* ---- discover.c ------------------------------------------------------------- */

/* Register / unregister around a call that changes [lo, hi). pl.lock held. */
void dd_pl_register_parts(uintptr_t lo, uintptr_t hi);
bool dd_pl_drop_overlaps(uintptr_t lo, uintptr_t hi, bool unmerge, struct dd_range *u);
void dd_pl_step_aside(void);          /* stop merging for good */
void *dd_pl_reconcile_main(void *arg);   /* the dedup-preload thread */
void dd_pl_wake(void);                /* wake the dedup-preload thread */
void dd_pl_kick(void);                /* and ask for a reconcile */
/* An allocator hook saw [lo, lo+len) appear: register its anonymous rw-p
 * parts now (the reconcile's rules: min_region, exclusions). Any thread. */
void dd_pl_track_new(uintptr_t lo, size_t len);
/* An allocator hook saw [lo, lo+len) go away: forget what we registered
 * there (and register again what is still anonymous memory). Any thread. */
void dd_pl_track_gone(uintptr_t lo, size_t len);

/* ---- remap.c ---------------------------------------------------------------- */

int dd_pl_unmerge_pieces(uintptr_t lo, uintptr_t hi);   /* pl.lock held */
bool dd_pl_has_merged(uintptr_t lo, uintptr_t hi);      /* pl.lock held */
void *dd_pl_grow_or_mremap(void *old, size_t old_len, size_t new_len, int flags, void *fixed);
void *dd_pl_child_mremap(void *old, size_t old_len, size_t new_len, int flags, void *fixed);

/* ---- interpose.c ------------------------------------------------------------ */

/* Around a call that changes [lo, hi): see dd_pl_drop_overlaps and
 * dd_pl_register_parts. op_begin takes pl.lock, op_end drops it. */
struct op {
	struct dd_range u;
	bool dropped;
};
void dd_pl_op_begin(struct op *o, uintptr_t lo, uintptr_t hi);
void dd_pl_op_end(struct op *o);

/* ---- lifecycle.c, libc_hooks.c, descriptors.c -------------------------------- */

void dd_pl_watch(bool may_start);   /* lazy start: a look at the memory in use */
void dd_pl_resolve_alloc(void);     /* the next free and realloc */
void dd_pl_resolve_fd_calls(void);  /* the next close, dup2, fstat & co. */
void dd_pl_resolve_mem_calls(void); /* the next mmap and munmap (interpose.c) */

/* ---- jemalloc.c ------------------------------------------------------------- */

/* preload start, before the dedup-preload thread: is jemalloc the
 * allocator? (dlsym only, nothing of jemalloc called) */
bool dd_jemalloc_detect(void);
/* dedup-preload thread, no lock of ours held: wrap the extent hooks of
 * every arena that has jemalloc's own hooks and is not wrapped yet. */
void dd_jemalloc_sync(void);

#pragma GCC visibility pop

#endif /* DEDUP_PRELOAD_H */
