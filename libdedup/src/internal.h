/* SPDX-License-Identifier: MIT */
/*
 * internal.h - types and declarations shared by libdedup's modules.
 *
 * Module map (one concern per file; "where does a page get replaced?" is
 * merge.c):
 *   os.c       the OS boundary: userfaultfd ioctls, memfd, PAGEMAP_SCAN,
 *              /proc reads, full read/write helpers. Nothing else calls
 *              ioctl() or parses /proc.
 *   fds.c      our file descriptors: placed above a floor, tagged, and
 *              checked before use, so the program's numbering is its own.
 *   vm.c       memory for our own tables, straight from mmap: no thread of
 *              ours ever calls the application's malloc (see below).
 *   store.c    the canonical page store: memfd slots, reference counts,
 *              hole punching and slot reuse.
 *   index.c    the stable index (hash -> canonical slot) and the unstable
 *              index (hash -> candidate address, rebuilt every pass).
 *   region.c   registered ranges and their per-page metadata.
 *   scan.c     one pass: which pages are present, hashing, candidate choice.
 *   merge.c    the merge protocol (write-protect, compare, move, replace,
 *              wake) on a batch of candidates.
 *   engine.c   threads (engine, uffd reader), event loops, pacing, fork.
 *   options.c  the option table (environment and struct dedup_config).
 *   stats.c    counters, snapshot and printers.
 *   api.c      the public dedup_* functions.
 *   preload/   LD_PRELOAD mode (shared library only): finds the program's
 *              heap, interposes mmap & co., reconciles with /proc/self/maps,
 *              wraps a shared jemalloc's extent hooks. One file per concern;
 *              preload/preload.h is the folder's map and contract.
 *
 * Locks (always taken in this order):
 *   eng.lock   protects regions, indexes, store metadata and the batch.
 *              Held by the engine thread for one batch at a time, and by
 *              API calls. Never held while waiting for the application.
 *   eng.gate   the merge window: held by the merger from the write-protect
 *              of a batch to its wake-up, and by the uffd reader around every
 *              read() of the userfaultfd. Because the reader cannot read
 *              (and so acknowledge) a non-cooperative event while a window is
 *              open, an madvise(MADV_DONTNEED) that races with a merge waits
 *              until the merge is complete. Nothing done under the gate
 *              raises a uffd event, so the gate cannot deadlock.
 *
 * Rule for every thread of ours and every interposed call: no application
 * malloc, no stdio, no lock that application code can hold. An application
 * thread may be blocked on a page we protected while holding its malloc
 * lock; if we then waited for that lock we would never wake it.
 * One exception, made safe by holding nothing: the dedup-preload thread
 * calls jemalloc's mallctl() (preload/jemalloc.c) with no lock of ours held. It may
 * wait there for a jemalloc lock, but the engine never waits for that
 * thread, so every protected page is still released.
 */
#ifndef DEDUP_INTERNAL_H
#define DEDUP_INTERNAL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "libdedup.h"

#define DD_PAGE_SHIFT 12
#define DD_PAGE ((size_t)1 << DD_PAGE_SHIFT)
#define DD_HIDDEN __attribute__((visibility("hidden")))
#define DD_API __attribute__((visibility("default")))
#define dd_likely(x) __builtin_expect(!!(x), 1)
#define dd_unlikely(x) __builtin_expect(!!(x), 0)
#define DD_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static inline bool dd_page_aligned(uintptr_t x) { return (x & (DD_PAGE - 1)) == 0; }

/*
 * The "Locking:" rules that can be checked: dd_assert_held(&eng.lock) at
 * the top of a function that needs the caller to hold a mutex. In debug
 * builds (no NDEBUG: the ASan+UBSan build of tools/check is one) it aborts,
 * naming the lock and the place, when the calling thread is not the
 * mutex's owner; glibc records the owner's thread id in every mutex it
 * locks, normal ones included (tests/test_unit_locks.c pins that down).
 * Release builds compile it away.
 */
#ifndef NDEBUG
#define dd_assert_held(m) dd_assert_held_at((m), #m, __FILE__, __LINE__)
void dd_assert_held_at(pthread_mutex_t *m, const char *what, const char *file, int line);
#else
#define dd_assert_held(m) ((void)0)
#endif

/* ---- log.c ---------------------------------------------------------- */
void dd_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define dd_err(...) dd_log(DEDUP_LOG_ERROR, __VA_ARGS__)
#define dd_warn(...) dd_log(DEDUP_LOG_WARN, __VA_ARGS__)
#define dd_info(...) dd_log(DEDUP_LOG_INFO, __VA_ARGS__)
#define dd_debug(...) dd_log(DEDUP_LOG_DEBUG, __VA_ARGS__)

/* ---- options.c ------------------------------------------------------ */
#define DD_MAX_BATCH 512
/* X(name, type, env, default, min, max, is_size, help) */
#define DD_OPTIONS(X)                                                                \
	X(scan_interval_ms, uint64_t, "DEDUP_INTERVAL", 200, 0, 3600000, 0,          \
	  "milliseconds to pause between full passes")                               \
	X(pages_per_sec, uint64_t, "DEDUP_PAGES_PER_SEC", 0, 0, UINT64_MAX / 2, 1,   \
	  "cap on pages scanned per second (0: no cap; K/M suffixes)")               \
	X(cpu_percent, uint64_t, "DEDUP_CPU", 25, 1, 100, 0,                        \
	  "engine CPU budget, percent of one core")                                  \
	X(zero_pages, uint64_t, "DEDUP_ZERO_PAGES", 1, 0, 1, 0,                     \
	  "merge zero-filled pages into the kernel zero page (1/0)")                 \
	X(vma_budget, uint64_t, "DEDUP_VMA_BUDGET", 0, 0, UINT64_MAX / 2, 1,        \
	  "mappings the engine may add (0: half of vm.max_map_count)")               \
	X(min_region, uint64_t, "DEDUP_MIN_REGION", 65536, 4096, UINT64_MAX / 2, 1, \
	  "smallest range the preload library registers, bytes")                     \
	X(log_level, uint64_t, "DEDUP_LOG", 2, 0, 5, 0,                             \
	  "quiet|error|warn|info|debug|stats")                                       \
	X(batch_pages, uint64_t, "DEDUP_BATCH", 64, 1, DD_MAX_BATCH, 0,                      \
	  "pages write-protected and merged as one batch")                           \
	X(idle_backoff, uint64_t, "DEDUP_IDLE_BACKOFF", 8, 1, 1024, 0,             \
	  "after passes that merge nothing, pause up to this many intervals")      \
	X(test_hash_bits, uint64_t, "DEDUP_TEST_HASH_BITS", 64, 1, 64, 0,           \
	  "test hook: keep only this many hash bits (forces collisions)")            \
	X(test_unsafe_no_move, uint64_t, "DEDUP_TEST_UNSAFE_NO_PIN_CHECK", 0, 0, 1, 0, \
	  "test hook: the naive protocol (no UFFDIO_MOVE pin check); loses data") \
	X(test_unsafe_user_only, uint64_t, "DEDUP_TEST_UNSAFE_USER_ONLY", 0, 0, 1, 0, \
	  "test hook: merge with a user-mode-only uffd; read() into merging pages fails") \
	X(test_unsafe_no_fork_fence, uint64_t, "DEDUP_TEST_UNSAFE_NO_FORK_FENCE", 0, 0, 1, 0, \
	  "test hook: no fork() fence (slots a child maps may be reused)")           \
	X(test_unsafe_no_discard_fence, uint64_t, "DEDUP_TEST_UNSAFE_NO_DISCARD_FENCE", 0, 0, 1, 0, \
	  "test hook: merge pages whose discard is still to land")                   \
	X(test_unsafe_signals, uint64_t, "DEDUP_TEST_UNSAFE_SIGNALS", 0, 0, 1, 0,   \
	  "test hook: our threads take the application's signals")                \
	X(test_unsafe_no_child_guard, uint64_t, "DEDUP_TEST_UNSAFE_NO_CHILD_GUARD", 0, 0, 1, 0, \
	  "test hook: a fork()ed child's merged pages are left unguarded")          \
	X(test_mremap_hole, uint64_t, "DEDUP_TEST_MREMAP_HOLE", 0, 0, 1000000, 0,  \
	  "test hook: every Nth placing mremap unmaps its target, then fails")      \
	X(store_max, uint64_t, "DEDUP_STORE_MAX", 64ULL << 30, 1 << 20, 1ULL << 44, 1, \
	  "largest canonical page store (memfd), bytes")                             \
	X(reconcile_ms, uint64_t, "DEDUP_RECONCILE_MS", 1000, 10, 3600000, 0,       \
	  "preload: milliseconds between reads of /proc/self/maps for new memory")   \
	X(start_at, uint64_t, "DEDUP_START", 64ULL << 20, 0, UINT64_MAX / 2, 1,     \
	  "preload: start the engine once this much anonymous memory is resident (0: at once)") \
	X(fork_restart, uint64_t, "DEDUP_FORK", 0, 0, 1, 0,                         \
	  "preload: in a fork()ed child, off (no merging) or restart (own engine)")  \
	X(jemalloc_hooks, uint64_t, "DEDUP_JEMALLOC", 1, 0, 1, 0,                   \
	  "preload: register a shared jemalloc's extents through its extent hooks")

struct dd_options {
#define X(name, type, env, def, lo, hi, sz, help) type name;
	DD_OPTIONS(X)
#undef X
};
extern struct dd_options dd_opt;
int dd_options_load(const struct dedup_config *cfg);
int dd_parse_u64(const char *s, bool size_suffix, uint64_t *out);
/* DEDUP_EXCLUDE (options.c): memory the preload library never registers */
#define DD_EXCL_HEAP 1u   /* the brk heap */
#define DD_EXCL_MMAP 2u   /* every other anonymous mapping */
struct dd_exclude {
	unsigned kinds;
	size_t n;
	struct { uintptr_t lo, hi; } r[16];
};
int dd_parse_exclude(const char *s, struct dd_exclude *out, const char **bad, size_t *badlen);

/* ---- stats.c -------------------------------------------------------- */
/* X(name, help): every counter of struct dedup_stats that the engine keeps. */
#define DD_COUNTERS(X)                                                           \
	X(pages_scanned, "pages hashed")                                         \
	X(full_passes, "completed passes over all regions")                      \
	X(candidates, "pages unchanged since the last pass, offered to merge")   \
	X(merges, "successful merges (all time)")                                \
	X(cow_breaks, "merged pages later written (copied by the kernel)")       \
	X(skipped_volatile, "pages skipped: changed since the last pass")        \
	X(skipped_budget, "pages skipped: VMA budget spent")                     \
	X(skipped_pinned, "pages skipped: pinned or shared (UFFDIO_MOVE EBUSY)") \
	X(skipped_mismatch, "pages skipped: hash matched, content did not")      \
	X(skipped_raced, "pages skipped: changed or remapped during the merge")  \
	X(pages_skipped_smart, "pages not hashed: unchanged and unmatched for passes (smart scan)") \
	X(vmas_added, "mappings added by merging (estimate)")                    \
	X(store_slots_freed, "canonical pages released")                         \
	X(engine_cpu_ns, "CPU time of libdedup threads, ns")

struct dd_counters {
#define X(name, help) _Atomic uint64_t name;
	DD_COUNTERS(X)
#undef X
	_Atomic uint64_t zero_pages;  /* gauge */
};
extern struct dd_counters dd_cnt;
#define DD_INC(name, n) atomic_fetch_add_explicit(&dd_cnt.name, (n), memory_order_relaxed)
void dd_stats_snapshot(struct dedup_stats *st);   /* lock-free */
/* DEDUP_LOG=stats: open the copy of stderr (dedup_init), print the table
 * once per engine run (lock-free), close the copy (shutdown) */
void dd_stats_table_open(void);
void dd_stats_report(const char *when);   /* "shutdown", "exit" */
void dd_stats_table_close(void);

/* ---- vm.c ----------------------------------------------------------- */
void *dd_vm_alloc(size_t size);              /* zeroed, page granular */
void dd_vm_free(void *p, size_t size);
void *dd_vm_grow(void *p, size_t old_size, size_t new_size); /* keeps contents */
extern _Atomic size_t dd_vm_bytes;           /* metadata bytes in use */
/* single pages, for region.c (eng.lock held): */
void *dd_vm_page_get(void);                  /* one zeroed page, or NULL */
void dd_vm_page_put(void *p);                /* never splits a mapping */
void dd_vm_pages_reset(void);                /* all of them back, at once */

/* ---- os.c: mapping calls (raw system calls; see os.c) --------------------- */
/* ours: libdedup's own memory, told to dd_os_ours_hook; false: the program's */
void *dd_os_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off, bool ours);
int dd_os_munmap(void *addr, size_t len);
void *dd_os_mremap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr,
		   bool ours);
int dd_os_mprotect(void *addr, size_t len, int prot);
int dd_os_madvise(void *addr, size_t len, int advice);
/* the same, telling nobody: for the hook's own tables and a child in fork() */
void *dd_os_raw_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int dd_os_raw_munmap(void *addr, size_t len);
void *dd_os_raw_mremap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr);
extern void (*dd_os_ours_hook)(uintptr_t lo, size_t len, bool add);   /* preload sets it */

/* ---- os.c: /proc/self/maps ------------------------------------------------ */
/* vm.max_map_count, read now (the sysctl may change while we run) */
long dd_max_map_count_now(void);
/* Entries for a table that may hold one per mapping of the process: the
 * live vm.max_map_count and some room, bounded (such tables grow past it). */
size_t dd_maps_table_cap(void);
/*
 * Our own tables are never mapped smaller than this (MAP_NORESERVE: address
 * space, not memory). A mapping is placed in the highest gap it fits in, and
 * a small one fits in a hole the program has just made (an munmap, or in a
 * fork()ed child the hole of a MADV_DONTFORK range) and is about to map
 * again with MAP_FIXED: at vm.max_map_count 1000 the child guard's table
 * (80 KiB) took a DONTFORK range's place (pl_semantics at 1000). vm.c's
 * reservations are at least this big too.
 */
#define DD_OWN_MIN_MAP ((size_t)8 << 20)
static inline size_t dd_own_table_cap(size_t cap, size_t elem)
{
	return cap * elem < DD_OWN_MIN_MAP ? DD_OWN_MIN_MAP / elem : cap;
}
/* fn gets each line: lo, hi, "rwxp", and the rest (" offset dev inode [name]");
 * non-zero from fn stops the walk (a negative value is returned). */
typedef int (*dd_maps_fn)(void *ctx, uintptr_t lo, uintptr_t hi, const char *perms,
			  const char *rest);
int dd_maps_each(dd_maps_fn fn, void *ctx);
/* The one reader of /proc files (os.c): each line, no stdio, no malloc. */
typedef int (*dd_line_fn)(void *ctx, char *line);   /* non-zero stops */
int dd_proc_lines(const char *path, dd_line_fn fn, void *ctx);
struct dd_maps_line {
	uintptr_t lo, hi;
	char perms[5];         /* "rwxp" */
	const char *rest;      /* " offset dev inode name" */
	uint64_t offset;
	unsigned long inode;
	const char *name;      /* "" for anonymous memory */
};
bool dd_maps_header(const char *line, struct dd_maps_line *m);   /* maps/smaps header? */
struct dd_vmflag_name { char n[3]; unsigned f; };
unsigned dd_vmflags_parse(const char *p, const struct dd_vmflag_name *names, size_t n);
int dd_perms_prot(const char *perms);   /* PROT_* of "rwxp" */

/* ---- fds.c: our descriptors, out of the program's way ------------------ */
#define DD_FD_TAG 47              /* F_SETSIG value that marks a file of ours */
int dd_fd_adopt(int *var, int fd); /* place fd above the floor, tag it, record
				      var (which gets the new number); closes fd */
void dd_fd_close(int *var);        /* forget; close only if still ours */
void dd_fd_forget(int *var);       /* forget without closing */
bool dd_fd_ours(int fd);           /* a number of ours (lock-free) */
int dd_fd_next_ours(unsigned int lo, unsigned int hi);   /* lowest in [lo, hi], or -1 */
bool dd_fd_intact(int fd);         /* the number still names our file */
bool dd_fds_intact(void);          /* every recorded descriptor is */
int dd_fd_move_away(int fd);       /* the program dup2()s onto fd: move ours */
int dd_fd_floor(void);
int dd_sys_close(int fd);          /* close(2), not the interposed close() */
int dd_fd_open_temp(const char *path, int flags);   /* above the floor, checked, tagged */
int dd_fd_adopt_path(int *var, const char *path, int flags);
ssize_t dd_fd_read_temp(int fd, void *buf, size_t len); /* only while ours; -errno */
void dd_fd_close_temp(int fd);                        /* only if still ours */

/* ---- ranges.c ------------------------------------------------------- */
struct dd_range {
	uintptr_t lo, hi;
};
struct dd_rtab {                 /* sorted, disjoint; owner does the locking */
	struct dd_range *r;
	size_t n, cap;
	unsigned moves;          /* times growing moved the table */
};
bool dd_rt_init(struct dd_rtab *t, size_t cap);   /* grows past cap when needed */
bool dd_rt_reserve(struct dd_rtab *t, size_t n);
void dd_rt_fini(struct dd_rtab *t);
size_t dd_rt_lower(const struct dd_rtab *t, uintptr_t addr);
bool dd_rt_overlaps(const struct dd_rtab *t, uintptr_t lo, uintptr_t hi);
void dd_rt_remove_at(struct dd_rtab *t, size_t i);
bool dd_rt_insert(struct dd_rtab *t, uintptr_t lo, uintptr_t hi);
void dd_rt_sub(struct dd_rtab *t, uintptr_t lo, uintptr_t hi);
bool dd_rt_union(struct dd_rtab *t, uintptr_t lo, uintptr_t hi);

/* ---- child.c: a fork()ed child's merged pages ------------------------------ */
void dd_child_guard(void);           /* in the child, from fork() */
bool dd_child_guarding(void);
int dd_child_release(void);          /* back to anonymous memory, guard stopped */
int dd_piece_to_anon(uintptr_t a, size_t len, int prot, const struct dd_rtab *zero);
void dd_preload_forked(void);        /* preload/lifecycle.c: after the guard, in the child */

/* ---- os.c ----------------------------------------------------------- */
struct dd_features {
	uint64_t uffd_features;   /* what UFFDIO_API granted */
	bool kernel_faults;       /* uffd handles kernel-mode faults */
	bool pagemap_scan;        /* PAGEMAP_SCAN ioctl works */
	bool vm_readv;            /* process_vm_readv() on ourselves works */
	long max_map_count;
};
extern struct dd_features dd_feat;

int dd_uffd_open(int *fd_out, uint64_t extra_features, const char **why);
int dd_uffd_register(int uffd, uintptr_t start, size_t len, uint64_t mode);
int dd_uffd_unregister(int uffd, uintptr_t start, size_t len);
int dd_uffd_wp(int uffd, uintptr_t start, size_t len, bool protect);
int dd_uffd_wake(int uffd, uintptr_t start, size_t len);
/* Move pages; returns bytes moved (>= 0) and sets *err to the errno of the
 * first page that did not move (0 if all moved). */
ssize_t dd_uffd_move(int uffd, uintptr_t dst, uintptr_t src, size_t len, int *err);
/* Fill from src (UFFDIO_COPY), or map the pages the file already has
 * (UFFDIO_CONTINUE), waking the waiters unless !wake; the same convention. */
ssize_t dd_uffd_copy(int uffd, uintptr_t dst, const void *src, size_t len, bool wake, int *err);
ssize_t dd_uffd_continue(int uffd, uintptr_t start, size_t len, bool wake, int *err);
int dd_uffd_zeropage(int uffd, uintptr_t start, size_t len);   /* 0 or -errno */
extern const char dd_zero_page[DD_PAGE];   /* page-aligned zeros */

/* Present-page walk: calls fn(start, end, categories) for each run of
 * present pages in [start, end), in address order, up to max_pages pages
 * (the last run may be cut), and sets *walk_end to where it stopped (end if
 * it got there). Its cost follows the pages present, not the range (with
 * the /proc/self/pagemap fallback it reads at most 64 entries per page it
 * may return, and may stop early for that). Returns 0 or -errno. */
#define DD_PG_FILE 1u
#define DD_PG_ZERO 2u
typedef void (*dd_present_fn)(void *ctx, uintptr_t start, uintptr_t end, unsigned flags);
int dd_present_walk(uintptr_t start, uintptr_t end, size_t max_pages, dd_present_fn fn,
		    void *ctx, uintptr_t *walk_end);
#define DD_PTE_PRESENT 1u
#define DD_PTE_SWAP 2u
#define DD_PTE_WP 4u
#define DD_PTE_ZERO 8u
#define DD_PTE_FILE 16u   /* present, a file (memfd) page */
int dd_pte_states(uintptr_t start, size_t n, uint8_t *out);
/* first run of pages in [start, end) that are not empty (present, swapped,
 * or a marker), cost following the page tables: *lo = *hi = end if none */
int dd_first_mapped(uintptr_t start, uintptr_t end, uintptr_t *lo, uintptr_t *hi);
bool dd_page_is_zero(uintptr_t a);
bool dd_read_page(uintptr_t a, void *buf);
void dd_os_probe(void);
void dd_os_close(void);
void dd_os_reopen(void);   /* pagemap again, after the program closed ours */

/* VMA facts read from /proc/self/maps. */
long dd_count_maps(const char *needle, long *matching);
/* 0 if [start,end) is covered by private, writable, anonymous mappings. */
int dd_check_anon_private(uintptr_t start, uintptr_t end);
int dd_vma_prot(uintptr_t a);

/* Mappings by address (os.c): PROCMAP_QUERY where the kernel has it (one
 * ioctl per VMA, whatever the number of mappings), else the text of maps. */
struct dd_vma {
	uintptr_t lo, hi;
	int prot;          /* PROT_* */
	bool shared;
	bool file;         /* backed by a file (inode != 0) */
	bool anon;         /* private anonymous memory ([heap], [anon:...] too) */
	bool ours;         /* a mapping of a libdedup memfd (a merged run) */
	uint64_t offset;   /* file offset of lo */
};
typedef int (*dd_vma_fn)(void *ctx, const struct dd_vma *v);   /* non-zero stops */
int dd_procmap_open(void);   /* fd for dd_vma_query, or -ENOTTY (no PROCMAP_QUERY) */
/* The VMA covering a (or_next: or the first above it): 0, -ENOENT, -ENOTTY */
int dd_vma_query(int fd, uintptr_t a, bool or_next, struct dd_vma *v);
/* fn for each VMA overlapping [lo, hi), in address order. 0 or -errno. */
int dd_vmas_in(uintptr_t lo, uintptr_t hi, dd_vma_fn fn, void *ctx);
#define DD_VMF_NOHUGEPAGE 0x001u
#define DD_VMF_HUGEPAGE   0x002u
#define DD_VMF_DONTDUMP   0x004u
#define DD_VMF_DONTFORK   0x008u
#define DD_VMF_WIPEONFORK 0x010u
#define DD_VMF_SEQ_READ   0x020u
#define DD_VMF_RAND_READ  0x040u
#define DD_VMF_MERGEABLE  0x080u
#define DD_VMF_NORESERVE  0x100u
#define DD_VMF_ACCOUNT    0x200u
#define DD_VMF_LOCKED     0x400u
int dd_vma_vmflags(uintptr_t a, unsigned *flags);   /* from smaps: expensive */
ssize_t dd_read_full(int fd, void *buf, size_t len);
/* futex on a word of ours: sleep while *w == val, up to ns (0: no limit) */
void dd_futex_wait(_Atomic uint32_t *w, uint32_t val, uint64_t ns);
void dd_futex_wake(_Atomic uint32_t *w);
ssize_t dd_write_full(int fd, const void *buf, size_t len);
uint64_t dd_now_ns(void);
uint64_t dd_thread_cpu_ns(void);

/* ---- store.c -------------------------------------------------------- */
#define DD_SLOT_NONE 0u
#define DD_SLOT_ZERO 0xffffffffu  /* page was merged into the zero page */
#define DD_SLOT_COWED 0xfffffffeu /* was merged, then copied: anonymous page
                                     inside a file VMA of ours */
#define DD_SLOT_REAL(s) ((s) != DD_SLOT_NONE && (s) < DD_SLOT_COWED)
/* Slot references in page metadata are slot index + 1. */
int dd_store_init(size_t max_bytes);
void dd_store_fini(void);
void *dd_store_map(uint32_t ref, size_t len);   /* MAP_PRIVATE slots, or MAP_FAILED */
int dd_store_fd(void);                          /* tests only */
uint32_t dd_store_new(const void *content, uint32_t hint); /* 0 on failure */
const void *dd_store_page(uint32_t slot);
void dd_store_get(uint32_t slot);
void dd_store_put(uint32_t slot);   /* frees (punches) at zero */
void dd_store_sweep_wanted(void);   /* a page's metadata went with its reference */
void dd_store_sweep(void);          /* release orphans (eng.lock, end of a pass) */
void dd_region_mark_slots(uint8_t *bits, size_t nslots);
uint32_t dd_store_refs(uint32_t slot);
bool dd_store_alive(uint32_t slot);   /* in use (refs > 0): its page is there */
uint64_t dd_store_hash(uint32_t slot);
void dd_store_set_hash(uint32_t slot, uint64_t h);
uint64_t dd_store_sharing(void);    /* sum of refs */
void dd_store_keep_all(void);       /* fork(): never release slots in use */
uint64_t dd_store_shared(void);     /* slots with refs > 0 */

/* ---- index.c -------------------------------------------------------- */
int dd_index_init(void);
void dd_index_fini(void);
#define DD_MAX_PROBE_CMP 16   /* full compares per lookup, at most */
uint32_t dd_stable_lookup(uint64_t hash, const void *page, bool *collided);
void dd_stable_verify_hash(uint64_t hash);
int dd_stable_insert(uint64_t hash, uint32_t slot);
void dd_stable_remove(uint64_t hash, uint32_t slot);
void dd_unstable_reset(void);     /* new pass: forget all candidates */
uintptr_t dd_unstable_take(uint64_t hash, const void *page, bool *collided);
int dd_unstable_insert(uint64_t hash, uintptr_t addr);
bool dd_stable_has(uint64_t hash);   /* a live slot with this hash? */
void dd_stable_prefetch(uint64_t hash);
/* a page skipped this pass with checksum @hash from an earlier one: true if
 * a candidate of this pass has that hash, else it enters as a stale one */
bool dd_unstable_offer(uint64_t hash, uintptr_t addr);
void dd_unstable_prefetch(uint64_t hash);
size_t dd_index_bytes(void);

/* ---- region.c ------------------------------------------------------- */
struct dd_region {
	uintptr_t start;
	size_t npages;
	bool fragile;      /* may vanish without our knowing: read it safely (scan.c) */
	uint8_t passes;    /* passes that went over all of it, up to 2 (scan.c) */
	uint64_t scan_gen; /* eng.pass_gen of the pass that last began it */
};
int dd_region_add(uintptr_t start, size_t len);
int dd_region_remove(uintptr_t start, size_t len, bool exact);
struct dd_region *dd_region_find(uintptr_t addr);
size_t dd_region_lower(uintptr_t addr);   /* index of the first region ending above addr */
uint64_t dd_region_gen(void);   /* changes when regions are added or removed */
size_t dd_region_count(void);
size_t dd_region_count_relaxed(void);   /* without eng.lock */
struct dd_region *dd_region_at(size_t i);
void dd_region_fini(void);
uint64_t dd_region_bytes(void);
/* Per-page metadata (kept only where pages are present, see region.c):
 * page p of r is merged into dd_region_slot() (DD_SLOT_NONE / DD_SLOT_ZERO /
 * canonical slot + 1 / DD_SLOT_COWED). */
uint32_t dd_region_slot(const struct dd_region *r, size_t p);
void dd_region_set_slot(const struct dd_region *r, size_t p, uint32_t slot);
/* first run [*i, *k) of merged pages (real slot or COWED) at or after *i */
bool dd_region_next_merged(const struct dd_region *r, size_t *i, size_t *k);
/* scan.c: a walk over present pages visits each (its word: checksum, 0:
 * none, and smart-scan age, see scan.c; and its slot; false without memory
 * for them), then sweeps the range it walked: pages not visited forget
 * their word, empty chunks go. */
void dd_meta_walk_begin(void);
bool dd_meta_visit(uintptr_t a, uint64_t **hash, uint32_t **slot);
void dd_meta_sweep(uintptr_t lo, uintptr_t hi);
size_t dd_meta_chunks(void);

/* ---- debug trace (DEDUP_TRACE=1; tests dump it on failure) ---------- */
extern bool dd_trace_on;
void dd_trace(char op, uintptr_t a, size_t len, long v);
void dd_trace_dump(uintptr_t a);
#define DD_TRACE(op, a, len, v) do { if (dd_unlikely(dd_trace_on)) dd_trace(op, a, len, v); } while (0)

/* ---- discard.c (eng.gate held) ---------------------------------------- */
int dd_discard_merged(uintptr_t a, uintptr_t b);
void dd_discard_removed(uintptr_t a, uintptr_t b);
bool dd_discard_marked(uintptr_t a);
void dd_discard_refilled(uintptr_t a);
bool dd_discard_pending(uintptr_t a);
bool dd_discard_in_merged(uintptr_t a);
int dd_discard_fork_snapshot(void);          /* prefork, eng.gate held */
size_t dd_discard_forked(const uintptr_t (**iv)[2]);   /* in the child */
void dd_discard_unmerged(uintptr_t a, uintptr_t b);
void dd_discard_unmerged_many(const uintptr_t (*iv)[2], size_t n);
size_t dd_removing_fence(void);
bool dd_removing_mergeable(uintptr_t a);
bool dd_removing_named(uintptr_t a);
void dd_removing_written(uintptr_t a);
void dd_removing_unregistered(uintptr_t a, uintptr_t b);
void dd_removing_prune(void);
size_t dd_removing_unfenced(void);
void dd_discard_fini(void);

/* ---- engine.c: the process-wide engine state -------------------------- */
struct dd_merge_item {
	uintptr_t addr;
	uint32_t target;   /* slot + 1, or DD_SLOT_ZERO */
	uint32_t state;    /* merge.c's per-item state */
};

#define DD_EVRING 4096
struct dd_event {
	uint8_t type;            /* UFFD_EVENT_REMOVE or UFFD_EVENT_REMAP */
	uintptr_t from, to;      /* REMOVE: [from, from+len) */
	size_t len;
};

struct dd_engine {
	pthread_mutex_t lock;   /* see the top of this file */
	pthread_mutex_t gate;
	int uffd;
	_Atomic uint32_t ctl;   /* futex: non-zero wakes the engine (kick, stop) */
	uintptr_t doorbell;     /* D: one page registered MISSING; discarding it
				   wakes the uffd reader (engine.c) */
	_Atomic bool reader_stop;
	bool uffd_recoverable;  /* the reader can install the uffd again */
	_Atomic bool fds_lost;  /* the program took our descriptors: passive */
	void (*on_fds_lost)(void);   /* preload/: go passive too */
	bool running;
	_Atomic bool stop;
	pthread_t engine_thr, reader_thr;
	char *cmpbuf;           /* batch_pages pages: S read back for comparing (merge.c) */
	struct dd_merge_item *batch;
	size_t nbatch;
	/* REMOVE/REMAP events read by the uffd reader (written under the gate):
	 * merge.c follows them for a parked page, engine.c applies REMAPs to
	 * the regions. */
	struct dd_event ev[DD_EVRING];
	_Atomic uint64_t ev_head;      /* sequence of the next event */
	uint64_t ev_applied;           /* engine: events applied to regions */
	/* [parked, parked_end): window whose pages sit in S while the merger is
	 * out of the gate (merge.c); the reader leaves their faults alone */
	_Atomic uintptr_t parked, parked_end;
	/* T while merge.c moves a new run from T into place: the REMAP that
	 * raises is ours, the reader does not record it */
	_Atomic uintptr_t placing_from;
	/* a fork() is under way: no merge window or unmerging starts (engine.c) */
	_Atomic bool forking;
	_Atomic bool fork_snap_failed; /* prefork could not copy the discard marks */
	/* new regions are fragile (scan.c): set by the preload library, whose
	 * regions libc may unmap or shrink behind its back */
	bool fragile_regions;
	bool child;                    /* we are a fork()ed child */
	uintptr_t cursor;              /* dedup_scan_now's pass */
	/* VMA accounting for the budget */
	long maps_at_init;      /* /proc/self/maps lines after dedup_init */
	long maps_at_pass;      /* /proc/self/maps lines at the last count */
	long vmas_this_pass;    /* added by merges since that count */
	uint64_t maps_counted_ns, maps_count_cpu_ns;   /* when, and what it cost */
	uint64_t vma_budget;
	uint64_t zero_hash;
	uint64_t pass_gen;
	uint64_t cpu_base;      /* thread CPU already added to the counter */
};
extern struct dd_engine eng;

int dd_engine_init(const char **why);   /* eng.lock held: uffd, tables, threads */
void dd_engine_fini(void);
int dd_engine_start(void);
void dd_engine_stop(void);
void dd_engine_kick(void);
/* set*id() ahead: our threads take the caller's capabilities (engine.c) */
void dd_creds_sync(unsigned others, void (*wake_others)(void));
void dd_creds_follow(void);
void dd_engine_child_reset(void);
void dd_engine_account_cpu(uint64_t *last);
bool dd_engine_uffd_back(void);   /* eng.gate held: eng.uffd ours again? */
int dd_thread_create(pthread_t *t, void *(*fn)(void *), void *arg);   /* signals blocked */

/* ---- scan.c / merge.c --------------------------------------------------- */
bool dd_scan_step(uintptr_t *cursor, size_t max_pages, long *merged, size_t *scanned,
		  bool fresh_only);
bool dd_scan_fresh_regions(void);   /* a region with fewer than 2 passes? */
long dd_merge_batch(void);      /* eng.lock held; merges eng.batch */
int dd_merge_unmerge(struct dd_region *r);   /* eng.lock held */
int dd_merge_unmerge_pieces(uintptr_t lo, uintptr_t hi);   /* preload: takes eng.lock */
int dd_unregister(void *addr, size_t len, bool unmerge);   /* api.c */
int dd_shutdown(bool unmerge);                             /* api.c */
void dd_merge_free_scratch(void);
int dd_merge_init(void);       /* eng.lock held: batch, cmpbuf, S */
void dd_merge_fini(void);
bool dd_merge_is_scratch(uintptr_t a, uintptr_t b);   /* [a, b) inside S */
bool dd_merge_budget_spent(void);
uint64_t dd_hash_page(const void *p);   /* never 0, at most DD_HASH_MASK */
/* Page checksums keep 56 bits: the word of page metadata that holds one
 * (region.c) keeps the smart scan's age and skip count above it (scan.c).
 * Hashes only route pages, content is always compared. */
#define DD_HASH_MASK ((1ULL << 56) - 1)



/* ---- publish.c: live stats for dedup-stat (issue 5) --------------------- */
int dd_publish_open(void);      /* at dedup_init, eng.lock held */
void dd_publish_update(void);   /* engine thread, after each step, eng.lock held */
void dd_publish_close(void);    /* at dedup_shutdown */
void dd_publish_unlink(void);   /* at exit without dedup_shutdown; lock-free */
#endif /* DEDUP_INTERNAL_H */
