/* SPDX-License-Identifier: MIT */
/*
 * mmc_test.h - the start of a test that lowers vm.max_map_count itself
 * (test_unmerge_near_limit, test_fork_low_limit): the machine-wide lock of
 * mmc_lock.h (held to exit, the value put back on every way out; skipped
 * without root), about 2 * @bulk mappings of the test's own - alternating
 * PROT_NONE and PROT_READ pages - so that a limit lowered to near its map
 * count stays far above what other processes use, then the engine, with
 * no passes of its own (dedup_scan_now() drives it) and @vma_budget.
 */
#ifndef DEDUP_MMC_TEST_H
#define DEDUP_MMC_TEST_H

#include "tdedup.h"
#include "mmc_lock.h"

static inline void t_mmc_start(const char *who, int bulk, uint64_t vma_budget)
{
	if (mmc_hold(who, t_cap(), 300) < 0) {
		if (errno == ETIMEDOUT) {
			printf("FAIL: no lock on vm.max_map_count after %.0f s\n", t_cap());
			exit(T_FAIL);
		}
		t_skip("%s not writable: %s", MMC_SYSCTL, strerror(errno));
	}
	char *b = mmap(NULL, 2 * (size_t)bulk * T_PAGE, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	CHECK(b != MAP_FAILED);
	for (int i = 0; i < bulk; i++)
		CHECK(mprotect(b + (2 * i + 1) * T_PAGE, T_PAGE, PROT_READ) == 0);
	/* (before dedup_init: the budget counts mappings added after it) */
	struct dedup_config cfg = { .size = sizeof(cfg), .scan_interval_ms = 3600000,
				    .cpu_percent = 100, .vma_budget = vma_budget };
	int r = dedup_init(&cfg);
	if (r == -EPERM || r == -ENOSYS)
		t_skip("userfaultfd not usable here");
	CHECK(r == 0);
}

#endif /* DEDUP_MMC_TEST_H */
