/* SPDX-License-Identifier: MIT */
/*
 * stats.h - the counters, their snapshot and printers (stats.c), and the
 * live stats file that dedup-stat reads (publish.c; its layout is
 * publish.h).
 */
#ifndef DEDUP_STATS_H
#define DEDUP_STATS_H

#include "base.h"

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
	X(runs_given_back, "merged runs unmerged to give their mappings back")  \
	X(enomem_retries, "program calls retried after an ENOMEM and a give-back") \
	X(engine_cpu_ns, "CPU time of libdedup threads, ns")

struct dd_counters {
#define X(name, help) _Atomic uint64_t name;
	DD_COUNTERS(X)
#undef X
	_Atomic uint64_t zero_pages;  /* gauge */
	_Atomic uint64_t budget_waiting;   /* gauge: set at the end of each full pass (scan.c) */
};
extern struct dd_counters dd_cnt;
#define DD_INC(name, n) atomic_fetch_add_explicit(&dd_cnt.name, (n), memory_order_relaxed)
void dd_stats_snapshot(struct dedup_stats *st);   /* lock-free */
/* DEDUP_LOG=stats: open the copy of stderr (dedup_init), print the table
 * once per engine run (lock-free), close the copy (shutdown) */
void dd_stats_table_open(void);
void dd_stats_report(const char *when);   /* "shutdown", "exit" */
void dd_stats_table_close(void);

int dd_publish_open(void);      /* at dedup_init, eng.lock held */
void dd_publish_update(void);   /* engine thread, after each step, eng.lock held */
void dd_publish_close(void);    /* at dedup_shutdown */
void dd_publish_unlink(void);   /* at exit without dedup_shutdown; lock-free */

#endif /* DEDUP_STATS_H */
