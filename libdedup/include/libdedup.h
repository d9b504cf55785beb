/* SPDX-License-Identifier: MIT */
/*
 * libdedup.h - merge identical pages of a process's own anonymous memory.
 *
 * libdedup finds pages with identical content in the ranges you register,
 * and maps each duplicate to one shared, read-only canonical page (kept in a
 * memfd and mapped MAP_PRIVATE, so a later write gets a private copy from the
 * kernel, exactly as with fork() or kernel KSM). Reading the memory always
 * gives what it gave before; only the process's footprint changes.
 *
 * Every function returns 0 (or a documented non-negative value) on success
 * and a negative errno value on failure; none sets errno. All functions are
 * thread-safe. Requires Linux >= 6.8 (UFFDIO_MOVE) and a userfaultfd that
 * may handle kernel-mode faults: root, CAP_SYS_PTRACE, or read-write access
 * to /dev/userfaultfd.
 *
 * Minimal use:
 *
 *	dedup_init(NULL);                        // options from DEDUP_* env
 *	dedup_register(buf, len);                // anonymous private memory
 *	...                                      // the engine merges in the background
 *	struct dedup_stats st = { .size = sizeof(st) };
 *	dedup_stats(&st);
 *	dedup_shutdown();                        // memory is plain anonymous again
 */
#ifndef LIBDEDUP_H
#define LIBDEDUP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DEDUP_VERSION_MAJOR 0
#define DEDUP_VERSION_MINOR 1
#define DEDUP_VERSION_PATCH 0
#define DEDUP_VERSION_NUMBER \
	(DEDUP_VERSION_MAJOR * 10000 + DEDUP_VERSION_MINOR * 100 + DEDUP_VERSION_PATCH)

/*
 * Log levels for dedup_config.log_level (DEDUP_LOG=quiet|error|warn|info|
 * debug|stats). "stats" is "warn" plus a stats table on stderr at
 * dedup_shutdown() (figures before unmerging), or at exit if the program
 * never called it.
 */
enum dedup_log_level {
	DEDUP_LOG_QUIET = 0,
	DEDUP_LOG_ERROR = 1,
	DEDUP_LOG_WARN = 2,
	DEDUP_LOG_INFO = 3,
	DEDUP_LOG_DEBUG = 4,
	DEDUP_LOG_STATS = 5,
};

/*
 * Engine configuration. Zero in a field means "the default" (the value of
 * the matching DEDUP_* environment variable if set and valid, else the
 * built-in default); set .size = sizeof(struct dedup_config). The defaults
 * are listed in README.md and by `dedup-run --help`.
 */
struct dedup_config {
	uint32_t size;              /* sizeof(struct dedup_config) */
	uint32_t scan_interval_ms;  /* DEDUP_INTERVAL: pause between full passes (200) */
	uint64_t pages_per_sec;     /* DEDUP_PAGES_PER_SEC: scan rate cap, 0 = none (0) */
	uint32_t cpu_percent;       /* DEDUP_CPU: engine CPU share of one core, 1-100 (25) */
	int32_t zero_pages;         /* DEDUP_ZERO_PAGES: merge zero pages, 1 on / -1 off (on) */
	uint64_t vma_budget;        /* DEDUP_VMA_BUDGET: VMAs the engine may add
	                               (max_map_count minus 4x the program's own
	                               mappings, at least 4096; 0 = that rule) */
	uint64_t min_region;        /* DEDUP_MIN_REGION: smallest range worth
	                               registering, bytes (64K; used by preload) */
	int32_t log_level;          /* DEDUP_LOG: enum dedup_log_level + 1; 0 = default (warn) */
	uint32_t batch_pages;       /* DEDUP_BATCH: pages protected at once (64) */
	const char *share;          /* DEDUP_SHARE: merge with the other processes of
	                               this user that join this group, by name
	                               ([A-Za-z0-9_.-], at most 64, no leading '.');
	                               NULL or "" = this process alone (default).
	                               README: sharing groups, and their risks */
};

/*
 * Statistics, a snapshot. Set .size = sizeof(struct dedup_stats) before the
 * call; fields beyond the caller's size are not written, fields the library
 * does not know are zeroed, so old and new binaries interoperate.
 */
struct dedup_stats {
	uint64_t size;               /* in: sizeof(struct dedup_stats) */
	uint64_t pages_scanned;      /* pages hashed, all passes */
	uint64_t full_passes;        /* completed passes over every region */
	uint64_t candidates;         /* pages offered for merging */
	uint64_t pages_sharing;      /* pages now mapping a canonical page */
	uint64_t pages_shared;       /* canonical pages in use */
	uint64_t zero_pages;         /* pages merged into the kernel's zero page */
	uint64_t merges;             /* successful merges, all time */
	uint64_t cow_breaks;         /* merged pages later written (copied) */
	uint64_t skipped_volatile;   /* changed since the last pass */
	uint64_t skipped_budget;     /* VMA budget spent */
	uint64_t skipped_pinned;     /* pinned or shared page (UFFDIO_MOVE EBUSY) */
	uint64_t skipped_mismatch;   /* hash matched, content did not */
	uint64_t skipped_raced;      /* content or mapping changed during a merge */
	uint64_t vmas_added;         /* mappings added by merging (estimate) */
	uint64_t vma_budget;         /* the budget vmas_added is held to */
	uint64_t bytes_saved;        /* (pages_sharing - pages_shared + zero) * page */
	uint64_t metadata_bytes;     /* memory libdedup uses for its tables, and the
	                                kernel's for the mappings merging added */
	uint64_t regions;            /* registered ranges */
	uint64_t bytes_registered;   /* their total length */
	uint64_t engine_cpu_ns;      /* CPU time of libdedup's threads */
	uint64_t store_slots_freed;  /* canonical pages released (punched) */
	uint64_t pages_skipped_smart; /* pages not hashed in a pass: unchanged and
	                                unmatched for passes before (smart scan) */
	uint64_t group_pages;        /* pages that map a sharing group's canonical
	                                page (DEDUP_SHARE); not in pages_sharing,
	                                bytes_saved: the group saves them, once */
	uint64_t budget_waiting;     /* pages that would merge (net pages saved) but
	                                wait on the VMA budget, as found by the last
	                                full pass: what a larger vm.max_map_count
	                                would let merge (a gauge) */
	uint64_t runs_given_back;    /* merged runs unmerged to give mappings back:
	                                for a longer run, or for a program call
	                                that failed with ENOMEM */
	uint64_t enomem_retries;     /* the program's mapping calls that failed with
	                                ENOMEM, retried after a give-back (preload) */
};

/* Start the engine (threads, userfaultfd, page store). NULL: defaults.
 * -EALREADY if already running, -EPERM/-ENOSYS if userfaultfd cannot handle
 * kernel faults here (no merge will ever happen; the reason is logged). */
int dedup_init(const struct dedup_config *config);

/* Track [addr, addr+len): anonymous, private, writable memory, page aligned.
 * -EINVAL: unaligned, empty, or not anonymous private read-write memory;
 * -EEXIST: overlaps a range already registered with libdedup;
 * -EBUSY: registered with another userfaultfd; -ENOMEM: no table space;
 * -ENODEV: dedup_init() not called (or failed).
 * Before unmapping or mremapping the range, call dedup_unregister(). */
int dedup_register(void *addr, size_t len);

/* Stop tracking exactly a range given to dedup_register(). The range is
 * handed back as plain anonymous memory holding the same bytes: merged
 * pages are copied back (the saving goes), and the range is again one
 * mapping where it was one, so mremap() and madvise() behave as without
 * libdedup. Do not call it while a device writes into the range (O_DIRECT
 * or io_uring fixed-buffer I/O in flight): a page copied on write since its
 * merge is copied again, and the device would write into the old copy.
 * -ENOENT if no such range; -EBUSY is never returned (if a run cannot be
 * handed back it stays merged, valid, and a warning is logged). */
int dedup_unregister(void *addr, size_t len);

/* Run one full pass (scan and merge every region) in the caller's thread's
 * time: returns when the pass is done. Returns the number of pages merged in
 * that pass (>= 0) or a negative errno. */
long dedup_scan_now(void);

/* Copy a snapshot of the counters into *st (st->size must be set). */
int dedup_stats(struct dedup_stats *st);

/* Hand every registered range back as dedup_unregister() does, stop the
 * engine threads and release what can be released. dedup_init() may be
 * called again afterwards. */
int dedup_shutdown(void);

/* Runtime version, DEDUP_VERSION_NUMBER of the library actually loaded. */
int dedup_version(void);

#ifdef __cplusplus
}
#endif

#endif /* LIBDEDUP_H */
