/* SPDX-License-Identifier: MIT */
/*
 * options.h - the option table (options.c): the DEDUP_* variables and struct
 * dedup_config, from one X-macro list. Needs nothing of libdedup but
 * libdedup.h: tools/dedup-run.c uses it alone.
 */
#ifndef DEDUP_OPTIONS_H
#define DEDUP_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "libdedup.h"

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
	  "mappings the engine may add (0: max_map_count - max(4 x own, 4096))")     \
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
	X(test_child_copy, uint64_t, "DEDUP_TEST_CHILD_COPY", 0, 0, 1, 0,            \
	  "test hook: a fork()ed child copies its merged pages, no guard thread")   \
	X(test_no_give_back, uint64_t, "DEDUP_TEST_NO_GIVE_BACK", 0, 0, 1, 0,       \
	  "test hook: no give-back when a call of the program fails with ENOMEM")   \
	X(test_mremap_hole, uint64_t, "DEDUP_TEST_MREMAP_HOLE", 0, 0, 1000000, 0,  \
	  "test hook: every Nth placing mremap unmaps its target, then fails")      \
	X(test_unmerge_by_run, uint64_t, "DEDUP_TEST_UNMERGE_BY_RUN", 0, 0, 1, 0,  \
	  "test hook: hand merged runs back one mremap each (no spans)")            \
	X(test_unmerge_smaps, uint64_t, "DEDUP_TEST_UNMERGE_SMAPS", 0, 0, 1, 0,    \
	  "test hook: read smaps for every hand-back, so spans form in small ranges too") \
	X(test_unsafe_span_flags, uint64_t, "DEDUP_TEST_UNSAFE_SPAN_FLAGS", 0, 0, 1, 0, \
	  "test hook: unmerge spans take gaps whatever their flags (they lose them)") \
	X(test_share_die, uint64_t, "DEDUP_TEST_SHARE_DIE", 0, 0, 7, 0,            \
	  "test hook: SIGKILL this process at sharing-group step N (group.h)")      \
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
/* DEDUP_SHARE / dedup_config.share: the sharing group, "" for none */
#define DD_SHARE_NAME_MAX 64
extern char dd_share_name[DD_SHARE_NAME_MAX + 1];
bool dd_share_name_ok(const char *name);   /* [A-Za-z0-9_.-]{1,64}, no leading '.' */
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

#endif /* DEDUP_OPTIONS_H */
