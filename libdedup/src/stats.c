/* SPDX-License-Identifier: MIT */
/*
 * stats.c - the engine's counters (DD_COUNTERS in stats.h), snapshots for
 * dedup_stats() and the table printed at shutdown or exit with
 * DEDUP_LOG=stats, with the copy of stderr it is written to.
 *
 * Counters are relaxed atomics bumped by whichever thread does the work,
 * and so are the gauges kept by the store and the region table: a snapshot
 * needs no lock (the engine may hold eng.lock for a whole step), and is
 * consistent per field, not across fields. No malloc, no stdio.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
	st.budget_waiting = atomic_load_explicit(&dd_cnt.budget_waiting, memory_order_relaxed);
	st.pages_sharing = dd_store_sharing();
	st.pages_shared = dd_store_shared();
	st.group_pages = dd_store_group_pages();
	st.bytes_saved = (st.pages_sharing - st.pages_shared + st.zero_pages) * DD_PAGE;
	/* our tables, and the kernel's for the mappings merging added: a
	 * mapping costs a vm_area_struct and tree nodes (os.c, vma_cost) */
	int64_t added = (int64_t)atomic_load(&dd_cnt.vmas_added);
	st.metadata_bytes = atomic_load(&dd_vm_bytes) +
			    (added > 0 ? (uint64_t)added * (uint64_t)dd_feat.vma_cost : 0);
	st.regions = dd_region_count_relaxed();
	st.bytes_registered = dd_region_bytes();
	st.vma_budget = __atomic_load_n(&eng.vma_budget, __ATOMIC_RELAXED);
	memcpy(out, &st, n);
}

/*
 * The DEDUP_LOG=stats table goes to stderr; if the program closed its stderr
 * before we print (GNU programs do, in an atexit handler that runs before a
 * library's destructor), to a copy of it taken at dedup_init(), as long as
 * that copy still is the file stderr was (a program may close every
 * descriptor, and the number be reused for something else).
 */
static struct {
	int fd;                  /* F_DUPFD_CLOEXEC of stderr, or -1 */
	dev_t dev;
	ino_t ino;
	_Atomic bool printed;    /* once per engine run */
} tbl = { .fd = -1 };

void dd_stats_table_open(void)
{
	struct stat st;
	int fd;

	atomic_store(&tbl.printed, false);
	if (dd_opt.log_level != DEDUP_LOG_STATS || tbl.fd >= 0)
		return;
	fd = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, dd_fd_floor());   /* out of the way (fds.c) */
	if (fd < 0)
		return;
	if (fstat(fd, &st) < 0) {
		close(fd);
		return;
	}
	tbl.dev = st.st_dev;
	tbl.ino = st.st_ino;
	tbl.fd = fd;
}

/* Our copy of stderr, if the number still is it (the program may have
 * closed it by a raw system call and opened a file of its own there). */
static bool tbl_intact(void)
{
	struct stat st;
	return tbl.fd >= 0 && fstat(tbl.fd, &st) == 0 && st.st_dev == tbl.dev && st.st_ino == tbl.ino;
}

void dd_stats_table_close(void)
{
	if (tbl_intact())
		dd_sys_close(tbl.fd);
	tbl.fd = -1;
}

static int table_fd(void)
{
	if (fcntl(STDERR_FILENO, F_GETFD) >= 0 || !tbl_intact())
		return STDERR_FILENO;
	return tbl.fd;
}

void dd_stats_report(const char *when)
{
	struct dedup_stats st = { .size = sizeof(st) };
	char buf[3072];
	size_t n = 0;
	int pid = (int)getpid();

	if (dd_opt.log_level != DEDUP_LOG_STATS || atomic_exchange(&tbl.printed, true))
		return;
	dd_stats_snapshot(&st);
	/* one write: tables of processes sharing a stderr do not interleave */
#define LINE(...) \
	do { \
		int l_ = snprintf(buf + n, sizeof(buf) - n, __VA_ARGS__); \
		if (l_ > 0 && (size_t)l_ < sizeof(buf) - n) \
			n += (size_t)l_; \
	} while (0)
#define ROW(name) LINE("libdedup[%d]: %-20s %llu\n", pid, #name, (unsigned long long)st.name);
	LINE("libdedup[%d]: stats at %s\n", pid, when);
	ROW(pages_scanned) ROW(pages_skipped_smart) ROW(full_passes) ROW(candidates) ROW(merges)
	ROW(pages_sharing) ROW(pages_shared) ROW(zero_pages) ROW(cow_breaks)
	ROW(skipped_volatile) ROW(skipped_budget) ROW(skipped_pinned)
	ROW(skipped_mismatch) ROW(skipped_raced)
	LINE("libdedup[%d]: %-20s %lld\n", pid, "vmas_added", (long long)st.vmas_added); /* may be < 0 */
	ROW(vma_budget) ROW(bytes_saved) ROW(metadata_bytes) ROW(regions) ROW(bytes_registered)
	ROW(engine_cpu_ns) ROW(store_slots_freed) ROW(budget_waiting)
	ROW(runs_given_back) ROW(enomem_retries)
	/* ksm_process_profit's counterpart; may be negative */
	LINE("libdedup[%d]: %-20s %lld\n", pid, "process_profit",
	     (long long)st.bytes_saved - (long long)st.metadata_bytes);
#undef ROW
#undef LINE
	dd_write_full(table_fd(), buf, n);
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
