/* SPDX-License-Identifier: MIT */
/*
 * stats.c - the engine's counters (DD_COUNTERS in internal.h), snapshots for
 * dedup_stats() and the table printed at exit with DEDUP_LOG=stats.
 *
 * Counters are relaxed atomics bumped by whichever thread does the work,
 * and so are the gauges kept by the store and the region table: a snapshot
 * needs no lock (the engine may hold eng.lock for a whole step), and is
 * consistent per field, not across fields. No malloc, no stdio.
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

struct dd_counters dd_cnt;

void dd_stats_snapshot(struct dedup_stats *out)
{
	struct dedup_stats st;
	size_t n = out->size < sizeof(st) ? (size_t)out->size : sizeof(st);

	memset(&st, 0, sizeof(st));
	st.size = n;
#define X(name, help) st.name = atomic_load_explicit(&dd_cnt.name, memory_order_relaxed);
	DD_COUNTERS(X)
#undef X
	st.zero_pages = atomic_load(&dd_cnt.zero_pages);
	st.pages_sharing = dd_store_sharing();
	st.pages_shared = dd_store_shared();
	st.bytes_saved = (st.pages_sharing - st.pages_shared + st.zero_pages) * DD_PAGE;
	st.metadata_bytes = atomic_load(&dd_vm_bytes);
	st.regions = dd_region_count_relaxed();
	st.bytes_registered = dd_region_bytes();
	st.vma_budget = eng.vma_budget;
	memcpy(out, &st, n);
}

void dd_stats_print(int fd)
{
	struct dedup_stats st = { .size = sizeof(st) };
	char buf[256];
	int n;

	dd_stats_snapshot(&st);
#define ROW(name) \
	n = snprintf(buf, sizeof(buf), "libdedup: %-20s %llu\n", #name, \
		     (unsigned long long)st.name); \
	dd_write_full(fd, buf, (size_t)n);
	ROW(pages_scanned) ROW(full_passes) ROW(candidates) ROW(merges)
	ROW(pages_sharing) ROW(pages_shared) ROW(zero_pages) ROW(cow_breaks)
	ROW(skipped_volatile) ROW(skipped_budget) ROW(skipped_pinned)
	ROW(skipped_mismatch) ROW(skipped_raced) ROW(vmas_added) ROW(vma_budget)
	ROW(bytes_saved) ROW(metadata_bytes) ROW(regions) ROW(bytes_registered)
	ROW(engine_cpu_ns) ROW(store_slots_freed)
#undef ROW
}

/* ---- debug trace ---------------------------------------------------------- */
bool dd_trace_on;
static struct { uint64_t t; char op; uintptr_t a; size_t len; long v; } trace_ring[1 << 16];
static _Atomic uint64_t trace_head;

void dd_trace(char op, uintptr_t a, size_t len, long v)
{
	uint64_t h = atomic_fetch_add(&trace_head, 1);
	trace_ring[h & 0xffff].t = dd_now_ns();
	trace_ring[h & 0xffff].op = op;
	trace_ring[h & 0xffff].a = a;
	trace_ring[h & 0xffff].len = len;
	trace_ring[h & 0xffff].v = v;
}

void dd_trace_dump(uintptr_t a)
{
	uint64_t h = atomic_load(&trace_head);
	char buf[160];
	for (uint64_t i = h > 0xffff ? h - 0xffff : 0; i < h; i++) {
		typeof(trace_ring[0]) *e = &trace_ring[i & 0xffff];
		if (a < e->a || a >= e->a + (e->len ? e->len : 1))
			continue;
		int n = snprintf(buf, sizeof buf, "trace %llu %c %#lx+%zu v=%ld\n",
				 (unsigned long long)(e->t / 1000), e->op, (unsigned long)e->a, e->len, e->v);
		dd_write_full(2, buf, (size_t)n);
	}
}
