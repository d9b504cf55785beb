/* SPDX-License-Identifier: MIT */
/*
 * api.c - the public dedup_* functions (libdedup.h).
 *
 * Each takes eng.lock for the time it touches engine state, returns 0 or a
 * negative errno, and never crashes on bad arguments. Runs in application
 * threads.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"
#include "uapi.h"

DD_API int dedup_version(void)
{
	return DEDUP_VERSION_NUMBER;
}

DD_API int dedup_init(const struct dedup_config *config)
{
	const char *why = NULL;
	int ret;

	pthread_mutex_lock(&eng.lock);
	if (eng.running) {
		ret = -EALREADY;
		goto out;
	}
	if (eng.child) {
		ret = -ECHILD;   /* a fork()ed child shares its parent's uffd */
		goto out;
	}
	ret = dd_options_load(config);
	if (ret < 0)
		goto out;
#define X(name, help) atomic_store(&dd_cnt.name, 0);
	DD_COUNTERS(X)
#undef X
	dd_trace_on = getenv("DEDUP_TRACE") != NULL;
	ret = dd_engine_init(&why);
	if (ret < 0) {
		if (why)
			dd_warn("not merging: %s", why);
		else
			dd_err("dedup_init failed: %s", strerror(-ret));
		goto out;
	}
	eng.running = true;
	eng.maps_counted_ns = 0;   /* the first pass counts (scan.c) */
	dd_publish_open();
	dd_stats_table_open();
	dd_info("engine started (interval %llu ms, cpu %llu%%, batch %llu, vma budget %llu, %s)",
		(unsigned long long)dd_opt.scan_interval_ms,
		(unsigned long long)dd_opt.cpu_percent, (unsigned long long)dd_opt.batch_pages,
		(unsigned long long)eng.vma_budget,
		dd_feat.pagemap_scan ? "PAGEMAP_SCAN" : "/proc/self/pagemap");
	ret = 0;
out:
	pthread_mutex_unlock(&eng.lock);
	return ret;
}

DD_API int dedup_register(void *addr, size_t len)
{
	uintptr_t a = (uintptr_t)addr;
	int ret;

	if (!len || !dd_page_aligned(a) || !dd_page_aligned(len) || a + len < a)
		return -EINVAL;
	pthread_mutex_lock(&eng.lock);
	if (!eng.running) {
		ret = -ENODEV;
		goto out;
	}
	if (dd_region_find(a) || (dd_region_find(a + len - 1))) {
		ret = -EEXIST;
		goto out;
	}
	ret = dd_check_anon_private(a, a + len);
	if (ret < 0)
		goto out;
	ret = dd_region_add(a, len);   /* also catches a region strictly inside */
	if (ret < 0)
		goto out;
	ret = dd_uffd_register(eng.uffd, a, len, UFFDIO_REGISTER_MODE_WP);
	if (ret < 0) {
		dd_region_remove(a, len, true);
		if (ret == -EINVAL)
			ret = -EINVAL;   /* e.g. mlocked or special mapping */
	}
out:
	pthread_mutex_unlock(&eng.lock);
	return ret;
}

DD_API int dedup_unregister(void *addr, size_t len)
{
	return dd_unregister(addr, len, (uintptr_t)addr, (uintptr_t)addr + len);
}

/*
 * Unregister the region [addr, addr + len). Its merged runs in [ulo, uhi)
 * are handed back as anonymous memory first (merge.c, "Unmerging"): the
 * whole region, as the API promises. The preload library passes an empty
 * range around munmap/mprotect/mremap, which it unregisters around and
 * registers again, and handles merged pieces itself (it moves them with
 * mremap, which keeps pinned pages); it passes the range of a call that
 * needs anonymous memory (mlock, MADV_WIPEONFORK, the program's
 * UFFDIO_REGISTER): unmerged here, from the region's metadata, that costs
 * no walk of the range's mappings.
 */
int dd_unregister(void *addr, size_t len, uintptr_t ulo, uintptr_t uhi)
{
	uintptr_t a = (uintptr_t)addr;
	struct dd_region *r;
	int ret;

	if (!len || !dd_page_aligned(a) || !dd_page_aligned(len))
		return -EINVAL;
	pthread_mutex_lock(&eng.lock);
	if (!eng.running) {
		ret = -ENODEV;
		goto out;
	}
	r = dd_region_find(a);
	if (!r || r->start != a || r->npages * DD_PAGE != len) {
		ret = -ENOENT;
		goto out;
	}
	if (ulo < uhi)
		dd_merge_unmerge(r, ulo, uhi);   /* a run it cannot unmerge stays merged */
	/* Unregister the anonymous parts. Merged runs left (preload, or a run
	 * that could not be unmerged) stay registered MINOR|MISSING, so that a
	 * discard of a merged page still reads zeros. */
	for (size_t i = 0, m = 0, k; i < r->npages; i = k) {
		if (!dd_region_next_merged(r, &m, &k))
			m = k = r->npages;   /* anonymous up to the end */
		if (m > i)
			dd_uffd_unregister(eng.uffd, a + i * DD_PAGE, (m - i) * DD_PAGE);
		m = k;
	}
	/* Candidates of the current pass may point into the range, which the
	 * application may unmap as soon as we return: forget them. */
	dd_unstable_reset();
	pthread_mutex_lock(&eng.gate);
	dd_removing_unregistered(a, a + len);
	pthread_mutex_unlock(&eng.gate);
	ret = dd_region_remove(a, len, true);
out:
	pthread_mutex_unlock(&eng.lock);
	return ret;
}

DD_API long dedup_scan_now(void)
{
	long merged = 0;
	size_t scanned = 0;
	uintptr_t cursor = 0;

	pthread_mutex_lock(&eng.lock);
	if (!eng.running) {
		pthread_mutex_unlock(&eng.lock);
		return -ENODEV;
	}
	uint64_t cpu = dd_thread_cpu_ns();
	while (!dd_scan_step(&cursor, SIZE_MAX / 2, &merged, &scanned, false))
		;
	dd_engine_account_cpu(&cpu);
	dd_publish_update();
	pthread_mutex_unlock(&eng.lock);
	return merged;
}

DD_API int dedup_stats(struct dedup_stats *st)
{
	if (!st || st->size < sizeof(uint64_t))
		return -EINVAL;
	dd_stats_snapshot(st);
	return 0;
}

DD_API int dedup_shutdown(void)
{
	return dd_shutdown(true);
}

/* unmerge: hand merged runs back as anonymous memory first (merge.c,
 * "Unmerging"); the preload library passes false at process exit, where
 * the copy would only cost time. */
int dd_shutdown(bool unmerge)
{
	pthread_mutex_lock(&eng.lock);
	if (!eng.running) {
		pthread_mutex_unlock(&eng.lock);
		return -ENODEV;
	}
	/* The table first: after unmerging, nothing would show as saved. */
	dd_stats_report("shutdown");
	if (unmerge)   /* with the reader still there to read events */
		for (size_t i = 0; i < dd_region_count(); i++)
			dd_merge_unmerge(dd_region_at(i), 0, UINTPTR_MAX);
	eng.running = false;
	pthread_mutex_unlock(&eng.lock);
	dd_engine_stop();   /* joins: the engine thread needs eng.lock */

	pthread_mutex_lock(&eng.lock);
	dd_stats_table_close();
	dd_publish_close();
	/* Unregister every region explicitly (merged runs included), rather
	 * than rely on close(): another holder of the fd would keep the
	 * registrations alive with nobody reading. Closing the uffd then wakes
	 * any waiter; merged pages keep the memfd alive through their
	 * mappings. */
	for (size_t i = 0; i < dd_region_count(); i++) {
		struct dd_region *r = dd_region_at(i);
		dd_uffd_unregister(eng.uffd, r->start, r->npages * DD_PAGE);
	}
	dd_region_fini();
	dd_engine_fini();
	pthread_mutex_unlock(&eng.lock);
	return 0;
}

/*
 * The program exits with the engine still running: it never called
 * dedup_shutdown() (the preload library's destructor does, and may run
 * before or after this one). Two things must not be left undone: the
 * DEDUP_LOG=stats table, and the removal of the live stats file. Only those
 * (each is done once, whoever comes first), not a shutdown: other threads
 * of the program may still run and use registered memory, and the process
 * is going away. A fork()ed child has eng.running false: nothing to do.
 */
__attribute__((destructor)) static void api_fini(void)
{
	if (!__atomic_load_n(&eng.running, __ATOMIC_ACQUIRE))
		return;
	dd_stats_report("exit");
	dd_publish_unlink();
}
