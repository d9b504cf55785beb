/* SPDX-License-Identifier: MIT */
/*
 * tdedup.h - helpers for tests that run the libdedup engine.
 */
#ifndef DEDUP_TDEDUP_H
#define DEDUP_TDEDUP_H

#include "tcommon.h"
#include "libdedup.h"

/* Start the engine with a long interval (tests drive passes with
 * dedup_scan_now) or skip when userfaultfd is not usable here. */
/* dedup_init() at full CPU with this interval and VMA budget (0: the
 * default); skips where userfaultfd is refused. */
static inline void t_engine_start_budget(uint32_t interval_ms, uint64_t vma_budget)
{
	struct dedup_config cfg = { .size = sizeof(cfg), .scan_interval_ms = interval_ms,
				    .cpu_percent = 100, .vma_budget = vma_budget };
	int r = dedup_init(&cfg);
	if (r == -EPERM || r == -ENOSYS)
		t_skip("userfaultfd not usable here (%s)", strerror(-r));
	if (r < 0) {
		fprintf(stderr, "dedup_init: %s\n", strerror(-r));
		exit(T_FAIL);
	}
}

static inline void t_engine_start(uint32_t interval_ms)
{
	t_engine_start_budget(interval_ms, 0);
}

static inline struct dedup_stats t_stats(void)
{
	struct dedup_stats st = { .size = sizeof(st) };
	CHECK(dedup_stats(&st) == 0);
	return st;
}

static inline void t_print_stats(const char *tag)
{
	struct dedup_stats s = t_stats();
	fprintf(stderr,
		"%s: scanned %llu passes %llu cand %llu sharing %llu shared %llu zero %llu "
		"merges %llu cow %llu vol %llu budget %llu pinned %llu mismatch %llu raced %llu "
		"vmas %llu saved %llu KiB\n",
		tag, (unsigned long long)s.pages_scanned, (unsigned long long)s.full_passes,
		(unsigned long long)s.candidates, (unsigned long long)s.pages_sharing,
		(unsigned long long)s.pages_shared, (unsigned long long)s.zero_pages,
		(unsigned long long)s.merges, (unsigned long long)s.cow_breaks,
		(unsigned long long)s.skipped_volatile, (unsigned long long)s.skipped_budget,
		(unsigned long long)s.skipped_pinned, (unsigned long long)s.skipped_mismatch,
		(unsigned long long)s.skipped_raced, (unsigned long long)s.vmas_added,
		(unsigned long long)(s.bytes_saved >> 10));
}

#endif
