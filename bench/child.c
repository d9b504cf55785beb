/* SPDX-License-Identifier: MIT */
/*
 * child.c - the measured process of a synthetic workload ("__child").
 *
 * dedup-bench forks and execs itself as
 *     dedup-bench __child WORKLOAD MODE BYTES SEED LAT_SAMPLES CHURN_RATE CHURN_HOT
 * with fd 3 = commands from the parent, fd 4 = reports to the parent, one
 * line each. The conversation:
 *
 *   child                                   parent
 *   builds the buffer, "ready pages=N"  ->  reads Pss (before), starts ksmd
 *                                       <-  "go"
 *   opts in (madvise / dedup_register;
 *   preload: copies the buffer from
 *   its staging place, see build()),
 *   starts churn writers, "started"     ->  samples Pss, merger CPU, VMAs
 *   every 100 ms "stat ..." (API)       ->  ... until settled or capped
 *                                       <-  "measure"
 *   "final ..." (API counters),
 *   stops writers, times first writes
 *   to merged pages, "lat ..."          ->  stops ksmd (run=0)
 *                                       <-  "pause"
 *   dedup_shutdown() (libdedup modes),
 *   times first writes to other merged
 *   pages, "done k=v ..."               ->  records the figures
 *                                       <-  "quit"
 *
 * Preload mode: the child runs with LD_PRELOAD=libdedup.so and does not
 * register anything; the parent reads libdedup's counters from the stats
 * file the library publishes (preload.c), not from "stat" lines. The only
 * call into the library is the shutdown at "pause" (preload_pause()).
 *
 * First-write latency: after the merge settled, the child finds its merged
 * pages (find_merged(): libdedup's file VMAs, KSM and zero pages from
 * /proc/kpageflags) and writes one byte (its own
 * value, so the content stays the same) to each of up to LAT_SAMPLES of
 * them, chosen at random, timing each store with clock_gettime. Each store
 * is the first write to that merged page: a copy-on-write fault. This is
 * done twice on distinct pages: with the merger still running (cow_*: what
 * the application sees; ksmd at sleep_millisecs=0 contends with the fault)
 * and with it paused (cow_idle_*: the copy-on-write path alone).
 *
 * Churn: 2 threads write one byte (again its own value) to random pages
 * among 1 in CHURN_HOT pages, each at CHURN_RATE writes per second, paced
 * against the clock (behind schedule they write without pausing). The rate
 * they achieve over the run, against mode none, is the slowdown.
 *
 * Workers (WORKERS, the 10th argument, processes): this process forks the
 * others before building (family.c) and each holds the same unique pages.
 * Every member runs the conversation above (a sibling with this process in
 * the parent's place) and one reader thread, paced like a churn writer,
 * that reads a byte of a random page: its rate and its time per read,
 * summed over the family, are the members' slowdown. Only this process
 * times first writes. libdedup-share: every member's dedup_config.share
 * is "bench-<pid of this process>".
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "group.h"
#include "libdedup.h"

#define CTL_FD 3
#define REP_FD 4

static void rep(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void rep(const char *fmt, ...)
{
	char line[2048];
	va_list ap;

	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	write_full(REP_FD, line, (size_t)n);
}

/* Wait for a command line; timeout_ms < 0 waits forever. Returns the
 * command, "" on timeout, NULL on EOF (the parent is gone). */
static const char *ctl_wait(int timeout_ms)
{
	static char buf[256];
	static size_t have;
	static char cmd[256];

	for (;;) {
		char *nl = memchr(buf, '\n', have);
		if (nl) {
			size_t len = (size_t)(nl - buf);
			memcpy(cmd, buf, len);
			cmd[len] = 0;
			memmove(buf, nl + 1, have - len - 1);
			have -= len + 1;
			return cmd;
		}
		struct pollfd p = { CTL_FD, POLLIN, 0 };
		int r = poll(&p, 1, timeout_ms);
		if (r < 0 && errno == EINTR)
			continue;
		if (r == 0)
			return "";
		ssize_t n = read(CTL_FD, buf + have, sizeof(buf) - have);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return NULL;
		have += (size_t)n;
	}
}

static uint64_t ns_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ---- building the workload ---------------------------------------------- */

/*
 * The buffer, built before "go". staging (preload mode): in a shared
 * anonymous mapping instead, which the preloaded library never registers
 * (it takes private memory only): otherwise its engine would merge the
 * buffer while it is built, before the parent's "before" figures, and the
 * times would start from nothing. place() turns the staging copy into the
 * workload's real buffer at "go". Zero: the staging pages hold zeros
 * (written, so that they are resident like the real buffer's). The
 * templates are shared memory too, for the same reason.
 */
static char *build(enum wl_kind kind, size_t bytes, uint64_t seed, bool staging, size_t *len_out)
{
	size_t npages = bytes / B_PAGE;
	int type = staging ? MAP_SHARED : MAP_PRIVATE;

	if (kind == WL_ZERO && !staging) {
		/* calloc'd and touched by a read, never written. There is no
		 * shared zero page on this machine, so the read allocates a
		 * zeroed page (seen: Pss grows by the size). */
		char *c = calloc(1, bytes + B_PAGE);
		if (!c)
			return NULL;
		uintptr_t a = ((uintptr_t)c + B_PAGE - 1) & ~(B_PAGE - 1);
		volatile char sink = 0;
		for (size_t i = 0; i < npages; i++)
			sink += ((volatile char *)a)[i * B_PAGE];
		(void)sink;
		*len_out = npages * B_PAGE;
		return (char *)a;
	}
	char *buf = mmap(NULL, bytes, PROT_READ | PROT_WRITE, type | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		return NULL;
	*len_out = npages * B_PAGE;
	if (kind == WL_ZERO) {
		for (size_t i = 0; i < npages; i++)
			buf[i * B_PAGE] = 0;
		return buf;
	}
	char *tmpl = mmap(NULL, WL_K * B_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
			  -1, 0);
	if (tmpl == MAP_FAILED) {
		munmap(buf, bytes);
		return NULL;
	}
	for (size_t k = 0; k < WL_K; k++)
		wl_fill_page(tmpl + k * B_PAGE, seed, k);
	for (size_t i = 0; i < npages; i++) {
		char *p = buf + i * B_PAGE;
		switch (kind) {
		case WL_RUNS:
		case WL_CHURN:
			memcpy(p, tmpl + (i % WL_K) * B_PAGE, B_PAGE);
			break;
		case WL_SCATTERED:
			if (i % 8 == 0)
				memcpy(p, tmpl + ((i / 8) % WL_K) * B_PAGE, B_PAGE);
			else
				wl_fill_page(p, seed, WL_K + i);
			break;
		default:
			wl_fill_page(p, seed, WL_K + i);
			break;
		}
	}
	munmap(tmpl, WL_K * B_PAGE);
	return buf;
}

/*
 * Preload mode, at "go": the real buffer from the staging copy, made the way
 * build() makes it (calloc + a read of each page for zero, else a private
 * mapping written with the content), while the staging pages are freed as
 * they are copied, so the process's Pss stays that of one buffer. The
 * preloaded engine sees the new memory as it would in any program: a large
 * anonymous mmap wakes its reconcile thread; calloc's mmap is libc-internal
 * and is found at the next periodic reconcile.
 */
static char *place(enum wl_kind kind, char *st, size_t len)
{
	const size_t chunk = 2UL << 20;
	char *buf;

	if (kind == WL_ZERO) {
		char *c = calloc(1, len + B_PAGE);
		if (!c)
			return NULL;
		buf = (char *)(((uintptr_t)c + B_PAGE - 1) & ~(B_PAGE - 1));
	} else {
		buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (buf == MAP_FAILED)
			return NULL;
	}
	for (size_t off = 0; off < len; off += chunk) {
		size_t n = len - off < chunk ? len - off : chunk;
		if (kind == WL_ZERO) {
			volatile char sink = 0;
			for (size_t i = 0; i < n; i += B_PAGE)
				sink += ((volatile char *)buf)[off + i];
			(void)sink;
		} else {
			memcpy(buf + off, st + off, n);
		}
		madvise(st + off, n, MADV_REMOVE);
	}
	munmap(st, len);
	return buf;
}

/* ---- churn writers -------------------------------------------------------- */

struct churn {
	pthread_t thr;
	char *buf;
	size_t npages;
	unsigned hot, rate, index;
	bool read;          /* workers' reader: reads, any page (hot = 1) */
	uint64_t seed;
	atomic_bool *stop;
	_Atomic uint64_t writes, busy_ns;   /* read by the main thread at "measure" */
	uint64_t t0;
	_Atomic pid_t tid;
};

static void on_nudge(int sig)
{
	(void)sig;   /* only interrupts a wait: see churn_stop() */
}

static void *churn_main(void *arg)
{
	struct churn *c = arg;
	size_t nhot = (c->npages + c->hot - 1) / c->hot;
	uint64_t x = c->seed * 2654435761u + c->index + 1;

	atomic_store(&c->tid, (pid_t)syscall(SYS_gettid));
	while (!atomic_load_explicit(c->stop, memory_order_relaxed)) {
		uint64_t now = ns_now();
		uint64_t done = atomic_load_explicit(&c->writes, memory_order_relaxed);
		uint64_t due = (now - c->t0) * c->rate / 1000000000ULL;
		if (done >= due) {
			uint64_t next = c->t0 + (done + 1) * 1000000000ULL / c->rate;
			uint64_t wait = next > now ? next - now : 0;
			if (wait < 100000)
				wait = 100000;   /* sleep in 100 us steps at least */
			struct timespec ts = { 0, (long)(wait > 999999999 ? 999999999 : wait) };
			nanosleep(&ts, NULL);
			continue;
		}
		uint64_t n = due - done;
		if (n > 1000)
			n = 1000;
		uint64_t b0 = ns_now();
		for (uint64_t i = 0; i < n; i++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			/* hot pages are every c->hot-th page; thread t takes the
			 * even (t = 0) or odd (t = 1) ones among them */
			size_t h = (size_t)(x % ((nhot + 1) / 2)) * 2 + c->index;
			if (h >= nhot || c->read)
				h = c->read ? (size_t)(x % nhot) : c->index;
			volatile char *p = (volatile char *)c->buf + h * c->hot * B_PAGE +
					   (size_t)((x >> 32) % B_PAGE);
			if (c->read)
				(void)*p;   /* volatile: a load */
			else
				*p = *p;
		}
		atomic_fetch_add_explicit(&c->busy_ns, ns_now() - b0, memory_order_relaxed);
		atomic_fetch_add_explicit(&c->writes, n, memory_order_relaxed);
	}
	return NULL;
}

/*
 * Stop the writers. A writer that does not stop within 10 s is stuck in the
 * kernel (a fault the merger never resolved): name its wait channel, then
 * send it a signal (a signal ends a userfaultfd wait; the fault is retried)
 * and report both, so a lost wake-up is told apart from slowness.
 */
static void churn_stop(struct churn *ch, size_t nch, atomic_bool *stop, const char *pfx,
		       char *out, size_t len)
{
	size_t stuck = 0, released = 0;
	char wchan[64] = "-";

	atomic_store(stop, true);
	for (size_t i = 0; i < nch; i++) {
		struct timespec dl;
		clock_gettime(CLOCK_REALTIME, &dl);
		dl.tv_sec += 10;
		if (pthread_timedjoin_np(ch[i].thr, NULL, &dl) == 0)
			continue;
		stuck++;
		char path[96];
		snprintf(path, sizeof(path), "/proc/self/task/%d/wchan", (int)atomic_load(&ch[i].tid));
		if (!proc_read_file(path, wchan, sizeof(wchan)))
			snprintf(wchan, sizeof(wchan), "?");
		for (int k = 0; k < 50; k++) {
			pthread_kill(ch[i].thr, SIGUSR1);
			clock_gettime(CLOCK_REALTIME, &dl);
			dl.tv_nsec += 100000000;
			if (dl.tv_nsec >= 1000000000) {
				dl.tv_sec++;
				dl.tv_nsec -= 1000000000;
			}
			if (pthread_timedjoin_np(ch[i].thr, NULL, &dl) == 0) {
				released++;
				break;
			}
		}
	}
	snprintf(out, len, "%s_stuck=%zu %s_released_by_signal=%zu %s_stuck_wchan=%s", pfx, stuck,
		 pfx, released, pfx, wchan);
}

/* ---- first write to merged pages ------------------------------------------ */

#define PM_PRESENT (1ULL << 63)
#define PM_SWAP (1ULL << 62)
#define PM_FILE (1ULL << 61)
#define PM_PFN_MASK ((1ULL << 55) - 1)
#define KPF_KSM (1ULL << 21)
#define IDX_ABSENT (1u << 31)   /* find_merged(): the page is not mapped (zero) */
#define KPF_ZERO_PAGE (1ULL << 24)

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/*
 * File-backed VMAs inside [buf, buf + len): where libdedup mapped canonical
 * pages. Such a page may not be present at all (libdedup maps the memfd
 * without populating it), so pagemap alone cannot find it.
 */
struct range {
	uintptr_t start, end;
};

static size_t file_ranges(uintptr_t lo, uintptr_t hi, struct range **out)
{
	FILE *f = fopen("/proc/self/maps", "re");
	char line[512];
	size_t n = 0, cap = 0;
	struct range *r = NULL;

	while (f && fgets(line, sizeof(line), f)) {
		unsigned long s, e, ino;
		if (sscanf(line, "%lx-%lx %*s %*s %*s %lu", &s, &e, &ino) != 3 || !ino)
			continue;
		if (e <= lo || s >= hi)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 256;
			struct range *nr = realloc(r, cap * sizeof(*r));
			if (!nr)
				break;
			r = nr;
		}
		r[n++] = (struct range){ s < lo ? lo : s, e > hi ? hi : e };
	}
	if (f)
		fclose(f);
	*out = r;
	return n;
}

/*
 * Indices of merged pages of buf; *why explains an empty answer. Merged:
 * inside a file VMA (libdedup) and not copied since (a present page there
 * that is not a file page is the private copy of a write); a present page
 * that /proc/kpageflags calls KSM or the zero page; or an absent page (the
 * buffer was fully touched: the merger dropped it, libdedup's zero pages).
 */
static uint32_t *find_merged(char *buf, size_t npages, size_t *n_out, const char **why)
{
	int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	int kf = open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);
	uint32_t *idx = malloc(npages * sizeof(*idx) + 1);
	uint64_t ent[512];
	size_t n = 0, ri = 0;
	bool pfn_seen = false;
	struct range *fr = NULL;
	size_t nfr = file_ranges((uintptr_t)buf, (uintptr_t)buf + npages * B_PAGE, &fr);

	*why = NULL;
	if (pm < 0 || !idx) {
		*why = "pagemap_not_readable";
		goto out;
	}
	for (size_t i = 0; i < npages; i += 512) {
		size_t k = npages - i < 512 ? npages - i : 512;
		off_t off = (off_t)(((uintptr_t)buf / B_PAGE + i) * 8);
		if (pread(pm, ent, k * 8, off) != (ssize_t)(k * 8)) {
			*why = "pagemap_read_failed";
			goto out;
		}
		for (size_t j = 0; j < k; j++) {
			uintptr_t a = (uintptr_t)buf + (i + j) * B_PAGE;
			uint64_t e = ent[j], flags = 0;
			while (ri < nfr && fr[ri].end <= a)
				ri++;
			if (ri < nfr && fr[ri].start <= a) {
				if (!(e & PM_PRESENT) || (e & PM_FILE))
					idx[n++] = (uint32_t)(i + j);
				continue;
			}
			if (!(e & PM_PRESENT)) {
				/* every page was touched when the buffer was
				 * built (and there is no swap): an absent page
				 * was taken away by the merger (libdedup's zero
				 * pages, with no shared zero page here) */
				if (!(e & PM_SWAP))
					idx[n++] = (uint32_t)(i + j) | IDX_ABSENT;
				continue;
			}
			uint64_t pfn = e & PM_PFN_MASK;
			if (!pfn || kf < 0)
				continue;
			pfn_seen = true;
			if (pread(kf, &flags, 8, (off_t)(pfn * 8)) == 8 &&
			    (flags & (KPF_KSM | KPF_ZERO_PAGE)))
				idx[n++] = (uint32_t)(i + j);
		}
	}
	if (!n)
		*why = pfn_seen || kf >= 0 ? "no_merged_page" : "pfn_hidden_not_root";
out:
	if (pm >= 0)
		close(pm);
	if (kf >= 0)
		close(kf);
	free(fr);
	*n_out = n;
	return idx;
}

/* Time the first write to each page of idx[0..n); summary into out. */
static void time_writes(char *buf, const uint32_t *idx, size_t n, const char *prefix, char *out,
			size_t outlen)
{
	uint64_t *lat = malloc((n + 1) * sizeof(*lat));

	if (!n || !lat) {
		snprintf(out, outlen, "%s_n=0", prefix);
		free(lat);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		volatile char *p = (volatile char *)buf + (size_t)(idx[i] & ~IDX_ABSENT) * B_PAGE;
		/* the value to write back: read it first (the page is mapped
		 * already, or this read maps it: not timed), except for an
		 * absent zero page, where reading would allocate the page and
		 * leave nothing for the write to do */
		char v = (idx[i] & IDX_ABSENT) ? 0 : *p;
		struct timespec a, b;
		clock_gettime(CLOCK_MONOTONIC, &a);
		*p = v;               /* the first write: copy-on-write */
		clock_gettime(CLOCK_MONOTONIC, &b);
		lat[i] = (uint64_t)((b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec));
	}
	qsort(lat, n, sizeof(*lat), cmp_u64);
	size_t i99 = n * 99 / 100;
	if (i99 >= n)
		i99 = n - 1;
	snprintf(out, outlen, "%s_n=%zu %s_p50_ns=%llu %s_p99_ns=%llu", prefix, n, prefix,
		 (unsigned long long)lat[n / 2], prefix, (unsigned long long)lat[i99]);
	free(lat);
}

/* A random sample of up to 2 * samples merged pages: the first half is
 * written with the merger running, the second after it was paused. */
static uint32_t *pick_merged(char *buf, size_t npages, unsigned samples, uint64_t seed,
			     size_t *merged, size_t *take, const char **why)
{
	uint32_t *idx = find_merged(buf, npages, merged, why);
	uint64_t x = seed ^ 0x5deece66dULL;
	size_t n = *merged;

	*take = n < 2 * (size_t)samples ? n : 2 * (size_t)samples;
	/* partial Fisher-Yates: the first `take` entries become a random sample */
	for (size_t i = 0; idx && i < *take; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		size_t j = i + (size_t)(x % (n - i));
		uint32_t t = idx[i];
		idx[i] = idx[j];
		idx[j] = t;
	}
	return idx;
}

/* ---- libdedup ---------------------------------------------------------------- */

static char group_name[DD_GROUP_NAME_MAX + 1];
static const char *group;   /* libdedup-share: the family's group, else NULL */

static void stats_line(char *out, size_t len)
{
	struct dedup_stats st = { .size = sizeof(st) };
	if (dedup_stats(&st) != 0) {
		snprintf(out, len, "stats_error=1");
		return;
	}
	snprintf(out, len,
		 "passes=%llu scanned=%llu cpu_ns=%llu ld_saved=%llu ld_sharing=%llu "
		 "ld_shared=%llu ld_zero=%llu ld_merges=%llu ld_cow_breaks=%llu "
		 "ld_skipped_volatile=%llu ld_skipped_budget=%llu ld_skipped_pinned=%llu "
		 "ld_skipped_mismatch=%llu ld_skipped_raced=%llu ld_vmas_added=%llu "
		 "ld_vma_budget=%llu ld_metadata_bytes=%llu ld_budget_waiting=%llu",
		 (unsigned long long)st.full_passes, (unsigned long long)st.pages_scanned,
		 (unsigned long long)st.engine_cpu_ns, (unsigned long long)st.bytes_saved,
		 (unsigned long long)st.pages_sharing, (unsigned long long)st.pages_shared,
		 (unsigned long long)st.zero_pages, (unsigned long long)st.merges,
		 (unsigned long long)st.cow_breaks, (unsigned long long)st.skipped_volatile,
		 (unsigned long long)st.skipped_budget, (unsigned long long)st.skipped_pinned,
		 (unsigned long long)st.skipped_mismatch, (unsigned long long)st.skipped_raced,
		 (unsigned long long)st.vmas_added, (unsigned long long)st.vma_budget,
		 (unsigned long long)st.metadata_bytes, (unsigned long long)st.budget_waiting);
	size_t used = strlen(out);
	if (group && used < len)   /* libdedup-share: still a member, pages in the group */
		snprintf(out + used, len - used, " ld_group_pages=%llu ld_in_group=%d",
			 (unsigned long long)st.group_pages, dd_group_active() ? 1 : 0);
}

/* The API mode's settings: ours unless the DEDUP_* variable is set (a zero
 * field means "the environment's value, else the library default"). */
static int libdedup_start(void *buf, size_t len)
{
	struct dedup_config cfg = { .size = sizeof(cfg) };
	if (!getenv("DEDUP_INTERVAL"))
		cfg.scan_interval_ms = BENCH_DEDUP_INTERVAL_MS;
	if (!getenv("DEDUP_CPU"))
		cfg.cpu_percent = BENCH_DEDUP_CPU;
	cfg.share = group;
	int r = dedup_init(&cfg);
	if (r < 0)
		return r;
	/* a group that cannot be joined leaves the engine merging alone:
	 * that would be libdedup-api's row under another name */
	if (group && !dd_group_active())
		return -ENOTCONN;
	return dedup_register(buf, len);
}

/*
 * Preload mode, "pause": stop the preloaded library's engine the way the API
 * mode does, with its own dedup_shutdown() (merged pages stay; its
 * reconcile thread then finds the engine gone and goes passive). The one
 * call into the library this child makes; the bench binary's own static
 * copy of libdedup is a different one, hence the handle on the preloaded
 * file. Failure is reported (preload_pause=...) and the idle timings are
 * then taken with the engine running.
 */
static void preload_pause(char *out, size_t len)
{
	void *h = dlopen(DEDUP_BENCH_PRELOAD_LIB, RTLD_NOW | RTLD_NOLOAD);
	int (*shutdown_fn)(void) = h ? (int (*)(void))dlsym(h, "dedup_shutdown") : NULL;
	int r = shutdown_fn ? shutdown_fn() : -ENOENT;

	snprintf(out, len, "preload_pause=%s", r == 0 ? "ok" : strerror(-r));
	for (char *p = out; *p; p++)
		if (*p == ' ')
			*p = '_';
	if (h)
		dlclose(h);
}

/* ---- main ------------------------------------------------------------------- */

/* A command from the parent (NULL: it is gone, "": timeout), passed on to a
 * workers family's siblings as it arrives. */
static const char *command(int timeout_ms)
{
	const char *cmd = ctl_wait(timeout_ms);
	if (cmd && *cmd && fam_leader())
		fam_send(cmd);
	return cmd;
}

/* Report own, the answer of this process; a workers leader first waits for
 * its siblings' answers and reports the family's (or what failed). The
 * leader's waits are shorter than the parent's for the same answer (run.c:
 * ready 300 s, started 60 s, final 30 s, done 120 s), so that a hanging
 * sibling is named before the parent gives up on the leader. */
static bool answer(const char *own, int timeout_ms)
{
	char word[16], out[2048];

	if (!fam_leader()) {
		rep("%s", own);
		return true;
	}
	snprintf(word, sizeof(word), "%.*s", (int)strcspn(own, " "), own);
	bool ok = fam_collect(word, own, out, sizeof(out), timeout_ms);
	rep("%s", out);
	return ok;
}

int child_main(int argc, char **argv)
{
	if (argc < 9) {
		fprintf(stderr, "__child: bad arguments\n");
		return 2;
	}
	const struct workload *w = workload_find(argv[2]);
	const struct mode *m = mode_find(argv[3]);
	size_t bytes = strtoull(argv[4], NULL, 10);
	uint64_t seed = strtoull(argv[5], NULL, 10);
	unsigned lat_samples = (unsigned)strtoul(argv[6], NULL, 10);
	unsigned churn_rate = (unsigned)strtoul(argv[7], NULL, 10);
	unsigned churn_hot = (unsigned)strtoul(argv[8], NULL, 10);
	unsigned workers = argc > 9 ? (unsigned)strtoul(argv[9], NULL, 10) : 1;
	bool family = w && w->kind == WL_WORKERS;
	char line[1536], own[2048];
	size_t len = 0;

	if (!w || !m || w->external || bytes < B_PAGE || !churn_hot || !churn_rate ||
	    (family && (workers < 1 || workers > MAX_WORKERS))) {
		rep("error bad arguments");
		return 2;
	}
	/* before anything is built: fork shares no page */
	int member = 0;
	if (family) {
		snprintf(group_name, sizeof(group_name), "bench-%d", (int)getpid());
		group = m->share ? group_name : NULL;
		/* the helper of this build tree, unless the caller chose one */
		if (group && !getenv("DEDUP_SHARE_HELPER") &&
		    access(DEDUP_BENCH_SHARE_HELPER, X_OK) == 0)
			setenv("DEDUP_SHARE_HELPER", DEDUP_BENCH_SHARE_HELPER, 1);
		member = fam_spawn(workers);
		if (member < 0) {
			rep("error cannot fork the workers members: %s", strerror(errno));
			return 1;
		}
	}
	char *buf = build(w->kind, bytes, seed, m->preload, &len);
	if (!buf) {
		rep("error cannot allocate %zu bytes", bytes);
		return 1;
	}
	size_t npages = len / B_PAGE;
	snprintf(own, sizeof(own), "ready pages=%zu", npages);
	if (!fam_leader()) {
		rep("%s", own);
	} else {
		char out[2048], pids[MAX_WORKERS * 12];
		if (!fam_collect("ready", own, out, sizeof(out), 240000)) {
			rep("%s", out);
			return 1;
		}
		fam_pids(pids, sizeof(pids));
		rep("%s pids=%s%s%s", out, pids, group ? " group=" : "", group ? group : "");
	}

	const char *cmd = command(-1);
	if (!cmd || strcmp(cmd, "go") != 0)
		return 1;
	uint64_t e0 = ns_now();
	if (m->merger == MERGER_KSM) {
		if (madvise(buf, len, MADV_MERGEABLE) != 0) {
			rep("error madvise(MADV_MERGEABLE): %s", strerror(errno));
			return 1;
		}
	} else if (m->merger == MERGER_LIBDEDUP && m->api) {
		int r = libdedup_start(buf, len);
		if (r == -ENOTCONN) {
			rep("error-unusable libdedup: not in sharing group %s (the library's line on "
			    "stderr says why)", group);
			return 1;
		}
		if (r < 0) {
			rep("error%s libdedup: %s", (r == -EPERM || r == -ENOSYS) ? "-unusable" : "",
			    strerror(-r));
			return 1;
		}
	} else if (m->preload) {
		/* nothing to opt in: the data appears, the library finds it */
		buf = place(w->kind, buf, len);
		if (!buf) {
			rep("error cannot allocate %zu bytes", len);
			return 1;
		}
	}
	uint64_t enable_ns = ns_now() - e0;   /* preload: the copy */

	atomic_bool stop = false;
	struct churn ch[2];
	size_t nch = w->kind == WL_CHURN ? 2 : family ? 1 : 0;
	struct sigaction sa = { .sa_handler = on_nudge };   /* no SA_RESTART */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	uint64_t t_go = ns_now();
	for (size_t i = 0; i < nch; i++) {
		ch[i] = (struct churn){ .buf = buf, .npages = npages, .hot = family ? 1 : churn_hot,
					.rate = churn_rate, .index = (unsigned)i, .read = family,
					.seed = seed + (uint64_t)member, .stop = &stop, .t0 = t_go };
		if (pthread_create(&ch[i].thr, NULL, churn_main, &ch[i]) != 0) {
			rep("error pthread_create");
			return 1;
		}
	}
	snprintf(own, sizeof(own), "started enable_ns=%llu", (unsigned long long)enable_ns);
	if (!answer(own, 45000))
		return 1;

	bool libdedup = m->merger == MERGER_LIBDEDUP && m->api;
	for (;;) {
		cmd = command(100);
		if (!cmd)
			return 1;
		if (strcmp(cmd, "measure") == 0)
			break;
		if (libdedup) {
			stats_line(line, sizeof(line));
			snprintf(own, sizeof(own), "stat %s", line);
		}
		if (fam_leader()) {
			/* the family's counters; a sibling that died ends the run */
			char out[2048];
			bool ok = fam_stat(libdedup ? own : NULL, out, sizeof(out));
			if (!ok || libdedup)
				rep("%s", out);
			if (!ok)
				return 1;
		} else if (libdedup) {
			rep("%s", own);
		}
	}
	/* the final counters first, so the parent pairs them with its CPU read */
	if (libdedup) {
		stats_line(line, sizeof(line));
		snprintf(own, sizeof(own), "final %s", line);
		if (!answer(own, 20000))
			return 1;
	}
	/* the churn rate (workers: the readers') over the sampled window: go .. measure */
	uint64_t writes = 0, busy = 0;
	double secs = nch ? (double)(ns_now() - ch[0].t0) / 1e9 : 0;
	for (size_t i = 0; i < nch; i++) {
		writes += atomic_load(&ch[i].writes);
		busy += atomic_load(&ch[i].busy_ns);
	}
	const char *pfx = family ? "read" : "churn";
	char stuck[160] = "";
	if (nch)
		churn_stop(ch, nch, &stop, pfx, stuck, sizeof(stuck));
	/* first writes with the merger still running, then with it paused
	 * (parent: ksmd run=0; here: dedup_shutdown, merged pages stay);
	 * in a workers family only by its first member */
	size_t merged = 0, take = 0;
	const char *why = NULL;
	uint32_t *idx = member == 0 ? pick_merged(buf, npages, lat_samples, seed, &merged, &take, &why)
				    : NULL;
	char lat[256], lat_idle[256];
	time_writes(buf, idx, take / 2, "cow", lat, sizeof(lat));
	if (member == 0)
		rep("lat %s", lat);
	cmd = command(60000);
	if (!cmd || strcmp(cmd, "pause") != 0)
		return 1;
	line[0] = 0;
	if (libdedup) {
		stats_line(line, sizeof(line));   /* before shutdown */
		dedup_shutdown();
	} else if (m->preload) {
		preload_pause(line, sizeof(line));
	}
	struct timespec settle = { 0, 100000000 };
	nanosleep(&settle, NULL);
	time_writes(buf, idx ? idx + take / 2 : NULL, take - take / 2, "cow_idle", lat_idle,
		    sizeof(lat_idle));
	free(idx);
	/* a report cut short loses only its last words (the parent reads what
	 * is there); the length is checked so that the build says nothing */
	if (snprintf(own, sizeof(own),
		 "done merged_pages=%zu cow_why=%s %s %s %s=%llu %s_secs=%.3f %s_busy_ns=%llu %s %s",
		 merged, why ? why : "-", lat, lat_idle, family ? "read_ops" : "churn_writes",
		 (unsigned long long)writes, pfx, secs, pfx, (unsigned long long)busy, stuck, line) >=
	    (int)sizeof(own))
		own[sizeof(own) - 1] = 0;
	if (!answer(own, 100000))
		return 1;
	cmd = command(60000);
	if (fam_leader())
		fam_end();
	return 0;
}
