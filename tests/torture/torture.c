/* SPDX-License-Identifier: MIT */
/*
 * torture: libdedup's torture suite (issue 3).
 *
 * A program with a shadow copy of every byte it writes. The engine runs at
 * its most aggressive setting (1 ms interval, 100% CPU, batches of 4-16
 * pages chosen by the seed, zero pages on) while worker threads mix, for
 * --seconds and from --seed:
 *
 *   write         random bytes into merged and unmerged pages
 *   dup           a whole page back to duplicate (or zero) content, so it merges again
 *   verify        a whole region against the shadow
 *   odirect       pread(O_DIRECT) from a file into region pages (if the
 *                 filesystem supports O_DIRECT)
 *   pread         buffered pread (a kernel-mode writer)
 *   uring_direct  io_uring reads (O_DIRECT when possible) into region pages
 *   uring_fixed   io_uring READ_FIXED into registered (pinned) buffers that
 *                 live inside registered regions
 *   pipe, socket  read()/recv() into region pages (kernel-mode writers)
 *   dontneed      madvise(MADV_DONTNEED): the shadow becomes zeros (--no-dontneed)
 *   mprotect      a run read-only and back
 *   churn_munmap  unregister, munmap, mmap at the same address (MAP_FIXED_NOREPLACE), register
 *   churn_fixed   unregister, mmap(MAP_FIXED) over the same address, register
 *   mremap_grow / mremap_shrink / mremap_move
 *                 unregister, mremap, register the result (the API contract)
 *   remap_noreg   mremap a whole registered range WITHOUT unregistering it
 *                 (the engine follows UFFD_EVENT_REMAP); counted: does the
 *                 engine track it (dedup_unregister of the new range works,
 *                 pages merge at the new address)?
 *   remap_sub     mremap 1-4 pages of a registered range away and back,
 *                 without unregistering; also checks that nothing got mapped
 *                 at the hole the move left (a merge racing the move)
 *   thread_exit   short-lived threads write into pages and exit
 *   sleep         let pages settle, so they become merge candidates
 *   fork          (main thread) workers paused, fork; the child verifies
 *                 every page against the shadow, writes some pages, verifies
 *   arena         (main thread) pages interleaved between all workers, so
 *                 several threads write into one merge window; refreshed
 *                 while workers are paused
 *   signal        (signal thread) SIGUSR1 storms at the workers; the handler
 *                 writes into registered pages of its own, which may be
 *                 protected or merged
 *
 * Each worker owns its pages (disjoint), so the shadow is exact. Every read
 * is verified. A mismatch prints address, expected and actual bytes, what
 * the page is (merged file page, anonymous, absent) and what the bytes look
 * like (a palette page, zeros, a file page), and the seed; then the run
 * fails (--keep-going: count mismatches per action and continue).
 * At the end: merges, bytes verified, actions per kind. A run where nothing
 * merged proves nothing: it needs --min-merges merges per 10 s of --seconds
 * (3000 for 30 s). That is a count, not a rate: when --seconds is over and
 * the count is not reached yet (a busy machine), the run goes on until it
 * is, and fails only if it still is not after --max-seconds.
 *
 * Exit: 0 pass, 1 fail, 77 skip (no usable userfaultfd).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <execinfo.h>
#include <getopt.h>
#include <liburing.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "tdedup.h"
#include "internal.h"   /* diagnostics only: the engine's region table */

#define PG 4096UL
#define MAXW 16
#define NREG 5            /* regions per worker */
#define FIXB 8            /* io_uring fixed buffers per worker (pages of region 0) */
#define PALETTE 6         /* distinct duplicate contents */
#define FILE_PAGES 256    /* the O_DIRECT / pread source file */
#define SIGP 4            /* signal-handler pages per worker */
#define MAXPIECES 32      /* what we believe the engine tracks, per region */
#define TMPSZ (64 * 1024)

/* ---- actions ------------------------------------------------------------ */
#define ACTIONS(X)                                                              \
	X(write, 300) X(dup, 110) X(verify, 50) X(odirect, 35) X(pread, 25)      \
	X(uring_direct, 25) X(uring_fixed, 40) X(pipe, 35) X(socket, 20)         \
	X(dontneed, 30) X(mprotect, 10) X(churn_munmap, 10) X(churn_fixed, 6)    \
	X(mremap_grow, 4) X(mremap_shrink, 4) X(mremap_move, 4)                  \
	X(remap_noreg, 8) X(remap_sub, 12) X(thread_exit, 4) X(sleep, 60)        \
	X(fork, 0) X(arena, 0) X(signal, 0)

enum {
#define X(n, w) A_##n,
	ACTIONS(X)
#undef X
	NACT
};
static const char *act_name[NACT] = {
#define X(n, w) #n,
	ACTIONS(X)
#undef X
};
static unsigned act_weight[NACT] = {
#define X(n, w) w,
	ACTIONS(X)
#undef X
};
static bool act_on[NACT];
static _Atomic uint64_t act_done[NACT], act_skip[NACT], act_bad[NACT];

/* outcome counters (printed at the end) */
#define OUTCOMES(X)                                                                  \
	X(write_hit_merged) X(write_sampled) X(odirect_subpage)                      \
	X(churn_same_addr) X(churn_moved) X(register_ok) X(register_einval)          \
	X(register_eexist) X(register_other) X(unregister_ok) X(unregister_fail)     \
	X(mremap_ok) X(mremap_efault) X(mremap_other_err)                            \
	X(remap_noreg_ok) X(remap_noreg_fail) X(remap_tracked) X(remap_untracked)    \
	X(remap_merged_after_move) X(remap_sub_ok) X(remap_sub_fail)                 \
	X(remap_sub_back_per_page) X(remap_sub_stray_mapping) X(pieces_unregistered) \
	X(pieces_enoent) X(fixed_attach) X(fixed_attach_fail) X(fork_children)      \
	X(fork_child_failed) X(signals_sent) X(signals_handled) X(thp_regions)     \
	X(eintr) X(short_io) X(dontneed_merged_page) X(mremap_half_done) X(events_not_applied) X(leftover_unregistered) X(remap_no_event) X(stale_piece_unregistered)
enum {
#define X(n) O_##n,
	OUTCOMES(X)
#undef X
	NOUT
};
static const char *out_name[NOUT] = {
#define X(n) #n,
	OUTCOMES(X)
#undef X
};
static _Atomic uint64_t outc[NOUT];
#define OUT(n) atomic_fetch_add_explicit(&outc[O_##n], 1, memory_order_relaxed)

/* ---- options ------------------------------------------------------------ */
static struct {
	double seconds;
	unsigned seed;
	int threads;
	unsigned batch;
	bool keep_going;
	double min_merges;   /* per 10 s of --seconds */
	double max_seconds;  /* run on for min_merges until this long, then fail */
	const char *dir;
	double fork_every, arena_every;
	int no_child_dontneed;   /* known limit: README "Known bugs" */
	unsigned signal_us;
	bool verbose;
} opt = { .threads = 3, .min_merges = 1000, .fork_every = 0.7, .arena_every = 1.5,
	  .signal_us = 300 };

/* ---- shared state -------------------------------------------------------- */
struct piece { uintptr_t a; size_t len; };

struct region {
	char *addr;
	size_t npages;
	unsigned char *shadow;
	/* what we believe the engine tracks for this region */
	struct piece pc[MAXPIECES];
	int npc;
	bool exact;          /* pc[0] is exactly what we registered */
	bool moved_noreg;    /* moved whole without unregistering */
	size_t file_at_move; /* merged pages right after that move */
	uint64_t ev_seen;    /* engine event mark after our last move */
	bool dirty;          /* grown in place without unregistering: the new
	                        tail is registered, and nobody can unregister it */
	int thp;
	char hist[8][96];    /* last operations, for failure reports */
	unsigned nhist;
};

#define HIST(r, ...) snprintf((r)->hist[(r)->nhist++ % 8], sizeof((r)->hist[0]), __VA_ARGS__)

struct worker {
	int id;
	pthread_t thr;
	uint64_t rng;
	struct region r[NREG];
	struct io_uring ring;
	bool ring_ok;
	bool fixed_on;       /* FIXB pages of r[0] registered as fixed buffers */
	char *fixed_addr;
	int pipefd[2], sock[2];
	unsigned char *tmp, *tmp2;
	uint64_t sign;       /* signal handler sequence */
	uint64_t verified;
	bool sigpages_dirty;
};

static struct worker W[MAXW];
static struct region arena, sigreg;
static unsigned char palette[PALETTE][PG] __attribute__((aligned(4096)));
static unsigned char zero_pg[PG] __attribute__((aligned(4096)));
static unsigned char *filedata;
static int fd_direct = -1, fd_buf = -1;
static size_t od_align = PG;
static int pagemap_fd = -1;
static _Atomic int stop_all, pause_req, parked;
static _Atomic uint64_t bytes_verified, mismatches;
static struct { _Atomic uint64_t bytes, bad; } *shm;   /* shared with fork children */
static bool in_child;
static __thread struct worker *tls_w;
static char replay[256];
static double t_start;
static bool thp_ok;

/* ---- small helpers ----------------------------------------------------- */
static uint64_t rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}
static uint64_t rr(uint64_t *s, uint64_t n) { return n ? rnd(s) % n : 0; }

/* async-signal-safe-ish printing (used in fork children too) */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char buf[2048];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 1)
		n = sizeof(buf) - 1;
	(void)!write(2, buf, (size_t)n);
}

static uint64_t pagemap_entry(const void *addr)
{
	uint64_t e = 0;
	if (pagemap_fd < 0 ||
	    pread(pagemap_fd, &e, 8, (off_t)((uintptr_t)addr / PG * 8)) != 8)
		return 0;
	return e;
}

/* Is the page mapped from a file (i.e. merged into a canonical page)? */
static bool page_is_file(const void *addr)
{
	uint64_t e = pagemap_entry(addr);
	return (e >> 63) & 1 && (e >> 61) & 1;
}

static const char *page_state(const void *addr)
{
	unsigned char v;
	if (mincore((void *)((uintptr_t)addr & ~(PG - 1)), PG, &v) < 0)
		return "UNMAPPED";
	uint64_t e = pagemap_entry(addr);
	if (!((e >> 63) & 1))
		return (e >> 62) & 1 ? "swapped" : "not present";
	return (e >> 61) & 1 ? "present, file page (merged into a canonical page)"
			     : "present, anonymous";
}

/* What do these page bytes look like? */
static void describe_page(const unsigned char *page, char *out, size_t n)
{
	if (!memcmp(page, zero_pg, PG)) {
		snprintf(out, n, "all zeros");
		return;
	}
	for (int k = 0; k < PALETTE; k++)
		if (!memcmp(page, palette[k], PG)) {
			snprintf(out, n, "palette page %d", k);
			return;
		}
	for (int f = 0; f < FILE_PAGES; f++)
		if (!memcmp(page, filedata + (size_t)f * PG, PG)) {
			snprintf(out, n, "file page %d", f);
			return;
		}
	snprintf(out, n, "other content");
}

static void print_summary(void);

/* A log of every mapping operation (all threads), for failure reports. */
struct oplog { double t; int tid; char op[12]; uintptr_t a, b; size_t len; long ret; uint64_t ev; };
#define OPLOG 8192
static struct oplog oplog[OPLOG];
static _Atomic uint64_t oplog_n;
static void LOGOP(const char *op, const void *a, const void *b, size_t len, long ret)
{
	uint64_t i = atomic_fetch_add(&oplog_n, 1);
	struct oplog *o = &oplog[i % OPLOG];
	o->t = t_now() - t_start;
	o->tid = tls_w ? tls_w->id : -1;
	snprintf(o->op, sizeof(o->op), "%s", op);
	o->a = (uintptr_t)a;
	o->b = (uintptr_t)b;
	o->len = len;
	o->ret = ret;
	o->ev = atomic_load(&eng.ev_head);
}
/* The /proc/self/maps lines overlapping [lo, hi) (and 4 pages around). */
static void print_maps(uintptr_t lo, uintptr_t hi)
{
	char line[512];
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		return;
	say("/proc/self/maps around %#lx-%#lx:\n", (unsigned long)lo, (unsigned long)hi);
	while (fgets(line, sizeof(line), f)) {
		uintptr_t a = strtoul(line, NULL, 16), b = strtoul(strchr(line, '-') + 1, NULL, 16);
		if (a >= hi + 4 * PG)
			break;
		if (b + 4 * PG > lo)
			say("  %s", line);
	}
	fclose(f);
}

static void dump_ops(uintptr_t lo, uintptr_t hi)
{
	uint64_t n = atomic_load(&oplog_n);
	say("mapping operations touching %#lx-%#lx (oldest first):\n", (unsigned long)lo,
	    (unsigned long)hi);
	for (uint64_t i = n > OPLOG ? n - OPLOG : 0; i < n; i++) {
		struct oplog *o = &oplog[i % OPLOG];
		bool hit = (o->a < hi && o->a + o->len > lo) || (o->b && o->b < hi && o->b + o->len > lo);
		if (hit || i + 40 >= n)
			say("  %8.4f t%d %-10s %#lx -> %#lx len %#zx ret %ld (events %llu)%s\n", o->t,
			    o->tid, o->op, (unsigned long)o->a, (unsigned long)o->b, o->len, o->ret,
			    (unsigned long long)o->ev, hit ? " <--" : "");
	}
	uint64_t h = atomic_load(&eng.ev_head);
	say("engine events (REMAP/REMOVE) touching it, of the last %d (head %llu applied %llu):\n",
	    DD_EVRING, (unsigned long long)h, (unsigned long long)eng.ev_applied);
	for (uint64_t i = h > DD_EVRING ? h - DD_EVRING : 0; i < h; i++) {
		struct dd_event e = eng.ev[i % DD_EVRING];
		bool hit = (e.from < hi && e.from + e.len > lo) || (e.to && e.to < hi && e.to + e.len > lo);
		if (hit)
			say("  #%llu %s %#lx -> %#lx len %#zx%s\n", (unsigned long long)i,
			    e.type == UFFD_EVENT_REMAP ? "REMAP" : "REMOVE", (unsigned long)e.from,
			    (unsigned long)e.to, e.len, i < eng.ev_applied ? "" : " (not applied yet)");
	}
}

/*
 * Compare len bytes at addr with expect. On a mismatch: print the details,
 * then exit (or, with --keep-going, resync the expectation and go on).
 */
static bool check_mem(int act, const char *what, const void *addr, unsigned char *expect,
		      size_t len)
{
	const unsigned char *a = addr;
	atomic_fetch_add_explicit(in_child ? &shm->bytes : &bytes_verified, len,
				  memory_order_relaxed);
	if (tls_w)
		tls_w->verified += len;
	if (__builtin_expect(!memcmp(a, expect, len), 1))
		return true;
	/* Snapshot what we read (it may change under a racing engine). */
	size_t first = 0, ndiff = 0;
	while (a[first] == expect[first])
		first++;
	for (size_t i = first; i < len; i++)
		ndiff += a[i] != expect[i];
	const unsigned char *pa = (const unsigned char *)((uintptr_t)(a + first) & ~(PG - 1));
	unsigned char got[PG];
	memcpy(got, pa, PG);
	char dgot[64], dwant[64] = "(partial page)", hex_e[100] = "", hex_g[100] = "";
	describe_page(got, dgot, sizeof(dgot));
	if (pa >= a && pa + PG <= a + len)   /* the whole page was compared */
		describe_page(expect + (pa - a), dwant, sizeof(dwant));
	for (size_t i = 0; i < 16 && first + i < len; i++) {
		snprintf(hex_e + strlen(hex_e), sizeof(hex_e) - strlen(hex_e), "%02x ",
			 expect[first + i]);
		snprintf(hex_g + strlen(hex_g), sizeof(hex_g) - strlen(hex_g), "%02x ",
			 a[first + i]);
	}
	char runs[200] = "";
	{
		/* where in the page the bytes differ: up to 6 runs */
		size_t pstart = (size_t)(pa - a) < len ? (size_t)(pa - a) : 0, nr = 0;
		if (pa < a)
			pstart = 0;
		size_t pend = pstart + PG < len ? pstart + PG : len;
		for (size_t i = pstart; i < pend && nr < 6;) {
			if (a[i] == expect[i]) {
				i++;
				continue;
			}
			size_t j = i;
			while (j < pend && (a[j] != expect[j] || (j + 1 < pend && a[j + 1] != expect[j + 1])))
				j++;
			snprintf(runs + strlen(runs), sizeof(runs) - strlen(runs), " [%zu,%zu)",
				 (size_t)((uintptr_t)(a + i) & (PG - 1)),
				 (size_t)((uintptr_t)(a + i) & (PG - 1)) + (j - i));
			nr++;
			i = j;
		}
	}
	say("MISMATCH%s [%s] %s: address %p (page %p offset %zu), %zu of %zu bytes differ;"
	    " in this page at%s\n"
	    "  expected: %s (page looks like: %s)\n"
	    "  actual:   %s (page looks like: %s; %s)\n"
	    "  seed %u, %.2f s into the run; replay: %s\n",
	    in_child ? " (in fork child)" : "", act_name[act], what, (void *)(a + first),
	    (void *)pa, (size_t)((uintptr_t)(a + first) & (PG - 1)), ndiff, len, runs, hex_e, dwant,
	    hex_g, dgot, page_state(a + first), opt.seed, t_now() - t_start, replay);
	atomic_fetch_add(&act_bad[act], 1);
	atomic_fetch_add(in_child ? &shm->bad : &mismatches, 1);
	if (!opt.keep_going || atomic_load(&mismatches) < 3) {
		print_maps((uintptr_t)pa, (uintptr_t)pa + PG);
		dump_ops((uintptr_t)pa, (uintptr_t)pa + PG);
	}
	if (!opt.keep_going) {
		if (!in_child)
			print_summary();
		_exit(T_FAIL);
	}
	memcpy(expect, a, len);   /* resync, go on */
	return false;
}

static void hard_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void hard_fail(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	say("FAIL: %s (errno %d %s); seed %u; replay: %s\n", buf, errno, strerror(errno),
	    opt.seed, replay);
	_exit(T_FAIL);
}

static void *x_mremap(void *old, size_t oldlen, size_t newlen, int flags, void *to)
{
	void *r = mremap(old, oldlen, newlen, flags, to);
	int e = errno;
	LOGOP(flags & MREMAP_FIXED ? "mremap-fix" : "mremap", old, r == MAP_FAILED ? to : r,
	      oldlen, r == MAP_FAILED ? -e : (long)newlen);
	errno = e;
	return r;
}

static int x_munmap(void *a, size_t len)
{
	int r = munmap(a, len);
	LOGOP("munmap", a, NULL, len, r);
	return r;
}

static void *x_mmap(void *a, size_t len, int prot, int flags)
{
	void *r = mmap(a, len, prot, flags, -1, 0);
	int e = errno;
	LOGOP(flags & MAP_FIXED ? "mmap-fixed" : flags & MAP_FIXED_NOREPLACE ? "mmap-norep" : "mmap",
	      r == MAP_FAILED ? a : r, NULL, len, r == MAP_FAILED ? -e : 0);
	errno = e;
	return r;
}

/* ---- page contents ------------------------------------------------------ */

/* Content for a fresh page: mostly duplicates, some zeros, a few unique. */
static void gen_page(uint64_t *s, unsigned char *p)
{
	uint64_t x = rr(s, 100);
	if (x < 80)
		memcpy(p, palette[rr(s, PALETTE)], PG);
	else if (x < 92)
		memset(p, 0, PG);
	else
		t_fill(p, rnd(s));
}

/* ---- regions ----------------------------------------------------------- */

static void pieces_set(struct region *r, uintptr_t a, size_t len)
{
	r->npc = 1;
	r->pc[0] = (struct piece){ a, len };
	r->exact = true;
	r->moved_noreg = false;
}

/* What apply_events() does on a REMAP (from, to, len): every tracked piece
 * loses the overlap with [from, from+len), and (to, len) is added. */
static void pieces_remap(struct region *r, uintptr_t from, uintptr_t to, size_t len)
{
	struct piece out[MAXPIECES + 4];
	int n = 0;
	bool hit = false;
	uintptr_t end = from + len;
	for (int i = 0; i < r->npc; i++) {
		struct piece p = r->pc[i];
		uintptr_t pe = p.a + p.len;
		if (pe <= from || p.a >= end) {
			out[n++] = p;
			continue;
		}
		hit = true;
		if (p.a < from)
			out[n++] = (struct piece){ p.a, from - p.a };
		if (pe > end)
			out[n++] = (struct piece){ end, pe - end };
	}
	if (hit)
		out[n++] = (struct piece){ to, len };
	if (n > MAXPIECES)
		n = MAXPIECES;   /* callers keep well below this */
	memcpy(r->pc, out, sizeof(out[0]) * (size_t)n);
	r->npc = n;
	r->exact = false;
	HIST(r, "remap %#lx-%#lx -> %#lx (%d pieces)", (unsigned long)from, (unsigned long)end,
	     (unsigned long)to, n);
}

static size_t count_file_pages(const struct region *r)
{
	size_t n = 0;
	for (size_t i = 0; i < r->npages; i++)
		n += page_is_file(r->addr + i * PG);
	return n;
}

static void region_register(struct region *r)
{
	int ret = dedup_register(r->addr, r->npages * PG);
	LOGOP("register", r->addr, NULL, r->npages * PG, ret);
	HIST(r, "register %p-%p: %d", (void *)r->addr, (void *)(r->addr + r->npages * PG), ret);
	if (ret == 0) {
		OUT(register_ok);
		pieces_set(r, (uintptr_t)r->addr, r->npages * PG);
		return;
	}
	r->npc = 0;
	if (ret == -EINVAL)
		OUT(register_einval);   /* e.g. the range holds merged (file) pages */
	else if (ret == -EEXIST)
		OUT(register_eexist);   /* the engine still tracks something here */
	else
		OUT(register_other);
}

/* Stop the engine tracking r, before it is unmapped or remapped. */
/* ---- what the engine saw: its REMAP events (test-only peek at internals) --- */

static uint64_t ev_mark(void) { return atomic_load(&eng.ev_head); }

/* Did the engine read a REMAP(from -> to, len) since mark h0? mremap()
 * returns once the reader has read the event, which it records just after:
 * give it a moment. (No event at all: the range was not registered with the
 * engine's uffd, e.g. made of merged pages only.) */
static bool saw_remap(uint64_t h0, uintptr_t from, uintptr_t to, size_t len)
{
	for (int t = 0; t < 250; t++) {
		uint64_t h = ev_mark();
		for (uint64_t i = h - h0 > DD_EVRING ? h - DD_EVRING : h0; i < h; i++) {
			struct dd_event e = eng.ev[i % DD_EVRING];
			if (e.type == UFFD_EVENT_REMAP && e.from == from && e.to == to && e.len == len)
				return true;
		}
		usleep(20);
	}
	return false;
}

/* Wait until the engine has applied the events read up to mark h. */
static void wait_applied(uint64_t h)
{
	for (int t = 0; t < 10000; t++) {
		pthread_mutex_lock(&eng.lock);
		bool done = eng.ev_applied >= h || !eng.running;
		pthread_mutex_unlock(&eng.lock);
		if (done)
			return;
		usleep(200);
	}
	OUT(events_not_applied);
}

/* Engine regions overlapping [lo, hi) (under eng.lock). */
static int engine_regions(uintptr_t lo, uintptr_t hi, struct piece *out, int max)
{
	int n = 0;
	pthread_mutex_lock(&eng.lock);
	for (size_t i = 0; i < dd_region_count() && n < max; i++) {
		struct dd_region *x = dd_region_at(i);
		if (x->start < hi && x->start + x->npages * PG > lo)
			out[n++] = (struct piece){ x->start, x->npages * PG };
	}
	pthread_mutex_unlock(&eng.lock);
	return n;
}

static void region_history(struct region *r)
{
	say("region history (oldest first):\n");
	for (unsigned i = r->nhist > 8 ? r->nhist - 8 : 0; i < r->nhist; i++)
		say("  %s\n", r->hist[i % 8]);
}

/* Stop the engine tracking r, before it is unmapped or remapped. */
static void region_unregister(struct region *r)
{
	bool was_exact = r->exact;
	if (r->npc && r->exact) {
		int ret = dedup_unregister((void *)r->pc[0].a, r->pc[0].len);
		LOGOP("unregister", (void *)r->pc[0].a, NULL, r->pc[0].len, ret);
		if (ret != 0) {
			region_history(r);
			struct piece ov[16];
			int n = engine_regions(r->pc[0].a, r->pc[0].a + r->pc[0].len, ov, 16);
			say("engine regions overlapping it:\n");
			for (int i = 0; i < n; i++)
				say("  %#lx-%#lx\n", (unsigned long)ov[i].a, (unsigned long)(ov[i].a + ov[i].len));
			dump_ops(r->pc[0].a, r->pc[0].a + r->pc[0].len);
			hard_fail("dedup_unregister(%p, %zu) of a range we registered: %s",
				  (void *)r->pc[0].a, r->pc[0].len, strerror(-ret));
		}
		OUT(unregister_ok);
		HIST(r, "unregister %#lx+%zu", (unsigned long)r->pc[0].a, r->pc[0].len);
		r->npc = 0;
		return;
	}
	if (r->npc) {
		/* Moved without unregistering: the engine learns of a move through
		 * UFFD_EVENT_REMAP (we saw which ones it read), and applies them at
		 * its next step. Once applied, it must track exactly our pieces. */
		if (r->moved_noreg && count_file_pages(r) > r->file_at_move)
			OUT(remap_merged_after_move);
		wait_applied(r->ev_seen);
		bool all = true;
		for (int i = 0; i < r->npc; i++) {
			int ret = dedup_unregister((void *)r->pc[i].a, r->pc[i].len);
			LOGOP("unreg-pc", (void *)r->pc[i].a, NULL, r->pc[i].len, ret);
			if (ret == 0) {
				OUT(pieces_unregistered);
			} else {
				OUT(pieces_enoent);
				all = false;
			}
		}
		if (r->moved_noreg) {
			if (all)
				OUT(remap_tracked);
			else
				OUT(remap_untracked);
		}
		r->npc = 0;
		HIST(r, "unregistered pieces (%s)", all ? "all" : "some missing");
	}
	/* Whatever the engine still tracks over our range (an event it applied
	 * differently from what we expected): let go of it too, so the next
	 * user of these addresses starts clean. */
	if (was_exact && !r->dirty)
		return;
	struct piece ov[32];
	wait_applied(ev_mark());
	int n = engine_regions((uintptr_t)r->addr, (uintptr_t)r->addr + r->npages * PG, ov, 32);
	for (int i = 0; i < n; i++) {
		if (ov[i].a < (uintptr_t)r->addr || ov[i].a + ov[i].len > (uintptr_t)r->addr + r->npages * PG)
			continue;   /* not only ours */
		int ret = dedup_unregister((void *)ov[i].a, ov[i].len);
		LOGOP("unreg-left", (void *)ov[i].a, NULL, ov[i].len, ret);
		OUT(leftover_unregistered);
	}
}

static void fill_region(uint64_t *s, struct region *r, size_t from)
{
	for (size_t i = from; i < r->npages; i++) {
		gen_page(s, r->shadow + i * PG);
		memcpy(r->addr + i * PG, r->shadow + i * PG, PG);
	}
}

/* Map npages at hint: how 0 anywhere, 1 MAP_FIXED_NOREPLACE at hint (else
 * anywhere), 2 MAP_FIXED at hint (replacing what is there). */
static char *map_at(char *hint, size_t npages, int how, bool *same)
{
	int fl = MAP_PRIVATE | MAP_ANONYMOUS;
	void *p = MAP_FAILED;
	if (how == 1)
		p = x_mmap(hint, npages * PG, PROT_READ | PROT_WRITE, fl | MAP_FIXED_NOREPLACE);
	else if (how == 2)
		p = x_mmap(hint, npages * PG, PROT_READ | PROT_WRITE, fl | MAP_FIXED);
	if (p == MAP_FAILED)
		p = x_mmap(NULL, npages * PG, PROT_READ | PROT_WRITE, fl);
	if (p == MAP_FAILED)
		hard_fail("mmap %zu pages", npages);
	if (same)
		*same = p == hint;
	return p;
}

static char *map_thp(size_t npages)
{
	size_t len = npages * PG, huge = 2UL << 20;
	char *p = mmap(NULL, len + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		       -1, 0);
	if (p == MAP_FAILED)
		hard_fail("mmap thp");
	char *a = (char *)(((uintptr_t)p + huge - 1) & ~(huge - 1));
	if (a > p)
		x_munmap(p, (size_t)(a - p));
	if (a + len < p + len + huge)
		x_munmap(a + len, (size_t)(p + len + huge - (a + len)));
	madvise(a, len, MADV_HUGEPAGE);
	return a;
}

static void region_new(uint64_t *s, struct region *r, char *hint, size_t npages, int how,
		       bool thp)
{
	bool same = false;
	r->thp = thp;
	r->dirty = false;
	if (thp) {
		r->addr = map_thp(npages);
		OUT(thp_regions);
	} else {
		r->addr = map_at(hint, npages, how, &same);
		if (how) {
			if (same)
				OUT(churn_same_addr);
			else
				OUT(churn_moved);
		}
	}
	r->npages = npages;
	r->shadow = realloc(r->shadow, npages * PG);
	if (!r->shadow)
		hard_fail("malloc shadow");
	/* Fill before or after registering. */
	if (rr(s, 2)) {
		fill_region(s, r, 0);
		region_register(r);
	} else {
		region_register(r);
		fill_region(s, r, 0);
	}
}

static bool verify_region(int act, struct region *r, const char *what)
{
	if (!r->addr)
		return true;
	return check_mem(act, what, r->addr, r->shadow, r->npages * PG);
}

/* ---- io_uring fixed buffers (pages 0..FIXB-1 of region 0) ---------------- */

static void fixed_release(struct worker *w)
{
	if (!w->fixed_on)
		return;
	io_uring_unregister_buffers(&w->ring);
	w->fixed_on = false;
	w->fixed_addr = NULL;
}

static void fixed_attach(struct worker *w)
{
	struct region *r = &w->r[0];
	if (!w->ring_ok || w->fixed_on || !act_on[A_uring_fixed] || r->npages < FIXB)
		return;
	struct iovec iov[FIXB];
	for (int i = 0; i < FIXB; i++)
		iov[i] = (struct iovec){ r->addr + (size_t)i * PG, PG };
	int ret = io_uring_register_buffers(&w->ring, iov, FIXB);
	if (ret < 0) {
		OUT(fixed_attach_fail);
		return;
	}
	OUT(fixed_attach);
	w->fixed_on = true;
	w->fixed_addr = r->addr;
}

/* Pages that must not be discarded or moved away: pinned fixed buffers. */
static bool is_fixed(struct worker *w, struct region *r, size_t page)
{
	return w->fixed_on && r == &w->r[0] && page < FIXB;
}

static int uring_wait(struct io_uring *ring, struct io_uring_cqe **cqe)
{
	int ret;
	do {
		ret = io_uring_wait_cqe(ring, cqe);
		if (ret == -EINTR)
			OUT(eintr);
	} while (ret == -EINTR);
	return ret;
}

/* ---- pause (for fork and arena refresh) --------------------------------- */

static void maybe_park(void)
{
	if (!atomic_load(&pause_req))
		return;
	sigset_t set, old;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	atomic_fetch_add(&parked, 1);
	while (atomic_load(&pause_req))
		usleep(50);
	atomic_fetch_sub(&parked, 1);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void pause_world(void)
{
	atomic_store(&pause_req, 1);
	while (atomic_load(&parked) < opt.threads)
		usleep(50);
}

static void resume_world(void)
{
	atomic_store(&pause_req, 0);
	while (atomic_load(&parked))   /* or the next pause could count them twice */
		usleep(20);
}

/* ---- picking pages ------------------------------------------------------ */

struct target { struct region *r; size_t page; bool arena; };

static struct region *pick_region(struct worker *w, size_t min_pages)
{
	for (int t = 0; t < 8; t++) {
		struct region *r = &w->r[rr(&w->rng, NREG)];
		if (r->addr && r->npages >= min_pages)
			return r;
	}
	return NULL;
}

static bool pick_page(struct worker *w, struct target *t, bool allow_arena)
{
	if (allow_arena && arena.addr && act_on[A_arena] && rr(&w->rng, 4) == 0) {
		size_t per = arena.npages / (size_t)opt.threads;
		if (per) {
			t->r = &arena;
			t->page = rr(&w->rng, per) * (size_t)opt.threads + (size_t)w->id;
			t->arena = true;
			return true;
		}
	}
	t->r = pick_region(w, 1);
	if (!t->r)
		return false;
	t->page = rr(&w->rng, t->r->npages);
	t->arena = false;
	return true;
}

/* ---- actions: memory writes -------------------------------------------- */

static void act_write(struct worker *w)
{
	struct target t;
	if (!pick_page(w, &t, true))
		return;
	size_t len = rr(&w->rng, 4) ? 8 : 1 + rr(&w->rng, 64);
	size_t off = rr(&w->rng, PG - len + 1);
	if (len == 8)
		off &= ~7UL;
	char *p = t.r->addr + t.page * PG + off;
	unsigned char *sh = t.r->shadow + t.page * PG + off;
	if ((rnd(&w->rng) & 15) == 0) {
		OUT(write_sampled);
		if (page_is_file(p))
			OUT(write_hit_merged);
	}
	for (size_t i = 0; i < len; i++)
		sh[i] = (unsigned char)rnd(&w->rng);
	if (len == 8)
		*(volatile uint64_t *)p = *(uint64_t *)sh;
	else
		memcpy(p, sh, len);
	check_mem(A_write, t.arena ? "arena write" : "write", p, sh, len);
}

static void act_dup(struct worker *w)
{
	struct target t;
	if (!pick_page(w, &t, true))
		return;
	char *p = t.r->addr + t.page * PG;
	unsigned char *sh = t.r->shadow + t.page * PG;
	if (rr(&w->rng, 8) == 0)
		memset(sh, 0, PG);
	else
		memcpy(sh, palette[rr(&w->rng, PALETTE)], PG);
	memcpy(p, sh, PG);
	check_mem(A_dup, t.arena ? "arena page rewritten to duplicate" : "page rewritten to duplicate",
		  p, sh, PG);
}

static void act_verify(struct worker *w)
{
	struct region *r = pick_region(w, 1);
	if (r)
		verify_region(A_verify, r, "region");
	if (rr(&w->rng, 4) == 0 && arena.addr) {
		/* our stripe of the arena */
		for (size_t p = (size_t)w->id; p < arena.npages; p += (size_t)opt.threads)
			check_mem(A_verify, "arena stripe", arena.addr + p * PG, arena.shadow + p * PG, PG);
	}
	if (sigreg.addr && act_on[A_signal]) {
		/* our signal pages: the handler writes them, keep it out meanwhile */
		sigset_t set, old;
		sigemptyset(&set);
		sigaddset(&set, SIGUSR1);
		pthread_sigmask(SIG_BLOCK, &set, &old);
		size_t off = (size_t)w->id * SIGP * PG;
		check_mem(A_signal, "signal-handler pages", sigreg.addr + off, sigreg.shadow + off,
			  SIGP * PG);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
	}
}

/* ---- actions: kernel-mode writers --------------------------------------- */

/* A run of n pages in one of our regions, not touching pinned pages. */
static struct region *pick_run(struct worker *w, size_t n, size_t *p0)
{
	struct region *r = pick_region(w, n);
	if (!r)
		return NULL;
	*p0 = rr(&w->rng, r->npages - n + 1);
	for (size_t i = *p0; i < *p0 + n; i++)
		if (is_fixed(w, r, i))
			return NULL;
	return r;
}

static ssize_t pread_full(int fd, void *buf, size_t len, off_t off)
{
	size_t got = 0;
	while (got < len) {
		ssize_t r = pread(fd, (char *)buf + got, len - got, off + (off_t)got);
		if (r < 0 && errno == EINTR) {
			OUT(eintr);
			continue;
		}
		if (r <= 0)
			return got ? (ssize_t)got : r;
		if ((size_t)r < len - got)
			OUT(short_io);
		got += (size_t)r;
	}
	return (ssize_t)got;
}

static void act_odirect(struct worker *w)
{
	if (fd_direct < 0) {
		atomic_fetch_add(&act_skip[A_odirect], 1);
		return;
	}
	size_t n = 1 + rr(&w->rng, 4), p0;
	struct region *r = pick_run(w, n, &p0);
	if (!r)
		return;
	size_t off = 0, len = n * PG;
	if (od_align < PG && rr(&w->rng, 3) == 0) {
		/* sub-page: 512-byte granular start and length */
		off = rr(&w->rng, PG / od_align) * od_align;
		len = od_align * (1 + rr(&w->rng, (n * PG - off) / od_align));
		OUT(odirect_subpage);
	}
	size_t fpage = rr(&w->rng, FILE_PAGES - n + 1);
	off_t foff = (off_t)(fpage * PG + (od_align < PG ? rr(&w->rng, PG / od_align) * od_align : 0));
	if ((size_t)foff + len > FILE_PAGES * PG)
		foff = (off_t)(fpage * PG);
	char *dst = r->addr + p0 * PG + off;
	ssize_t got = pread_full(fd_direct, dst, len, foff);
	if (got != (ssize_t)len)
		hard_fail("O_DIRECT pread into %p len %zu returned %zd", (void *)dst, len, got);
	memcpy(r->shadow + p0 * PG + off, filedata + foff, len);
	check_mem(A_odirect, "O_DIRECT pread", dst, r->shadow + p0 * PG + off, len);
}

static void act_pread(struct worker *w)
{
	size_t n = 1 + rr(&w->rng, 3), p0;
	struct region *r = pick_run(w, n, &p0);
	if (!r)
		return;
	size_t off = rr(&w->rng, PG), len = 1 + rr(&w->rng, n * PG - off);
	off_t foff = (off_t)rr(&w->rng, FILE_PAGES * PG - len);
	char *dst = r->addr + p0 * PG + off;
	ssize_t got = pread_full(fd_buf, dst, len, foff);
	if (got != (ssize_t)len)
		hard_fail("pread into %p len %zu returned %zd", (void *)dst, len, got);
	memcpy(r->shadow + p0 * PG + off, filedata + foff, len);
	check_mem(A_pread, "buffered pread", dst, r->shadow + p0 * PG + off, len);
}

/* Several io_uring reads in flight at once, into distinct pages of a region. */
static void act_uring_direct(struct worker *w)
{
	if (!w->ring_ok)
		return;
	struct region *r = pick_region(w, 8);
	if (!r)
		return;
	size_t k = 1 + rr(&w->rng, 4), pages[4], fpages[4];
	int fd = fd_direct >= 0 ? fd_direct : fd_buf;
	size_t lo = is_fixed(w, r, 0) ? FIXB : 0;   /* not the pinned buffers */
	if (r->npages - lo < 4)
		return;
	for (size_t i = 0; i < k; i++) {
	again:
		pages[i] = lo + rr(&w->rng, r->npages - lo);
		for (size_t j = 0; j < i; j++)
			if (pages[j] == pages[i])
				goto again;
		fpages[i] = rr(&w->rng, FILE_PAGES);
		struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
		io_uring_prep_read(sqe, fd, r->addr + pages[i] * PG, PG, (off_t)(fpages[i] * PG));
		io_uring_sqe_set_data64(sqe, i);
	}
	int sub = io_uring_submit(&w->ring);
	if (sub != (int)k)
		hard_fail("io_uring_submit: %d", sub);
	for (size_t i = 0; i < k; i++) {
		struct io_uring_cqe *cqe;
		if (uring_wait(&w->ring, &cqe) < 0)
			hard_fail("io_uring_wait_cqe");
		size_t x = io_uring_cqe_get_data64(cqe);
		if (cqe->res != (int)PG)
			hard_fail("io_uring read into %p: res %d (%s)",
				  (void *)(r->addr + pages[x] * PG), cqe->res,
				  cqe->res < 0 ? strerror(-cqe->res) : "short");
		io_uring_cqe_seen(&w->ring, cqe);
	}
	for (size_t i = 0; i < k; i++) {
		memcpy(r->shadow + pages[i] * PG, filedata + fpages[i] * PG, PG);
		check_mem(A_uring_direct, fd == fd_direct ? "io_uring O_DIRECT read" : "io_uring read",
			  r->addr + pages[i] * PG, r->shadow + pages[i] * PG, PG);
	}
}

/* READ_FIXED into a registered buffer: the page stays pinned (FOLL_PIN)
 * between reads, while the engine keeps trying to merge it. */
static void act_uring_fixed(struct worker *w)
{
	if (!w->fixed_on) {
		atomic_fetch_add(&act_skip[A_uring_fixed], 1);
		return;
	}
	struct region *r = &w->r[0];
	int b = (int)rr(&w->rng, FIXB);
	/* mostly palette pages from the file, so the buffer stays a duplicate */
	size_t fpage = rr(&w->rng, 4) ? rr(&w->rng, FILE_PAGES / 2) * 2 : rr(&w->rng, FILE_PAGES);
	int fd = fd_direct >= 0 && rr(&w->rng, 2) ? fd_direct : fd_buf;
	char *dst = w->fixed_addr + (size_t)b * PG;
	struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
	io_uring_prep_read_fixed(sqe, fd, dst, PG, (off_t)(fpage * PG), b);
	if (io_uring_submit(&w->ring) != 1)
		hard_fail("io_uring_submit");
	struct io_uring_cqe *cqe;
	if (uring_wait(&w->ring, &cqe) < 0)
		hard_fail("io_uring_wait_cqe");
	if (cqe->res != (int)PG)
		hard_fail("io_uring READ_FIXED into %p: res %d", (void *)dst, cqe->res);
	io_uring_cqe_seen(&w->ring, cqe);
	memcpy(r->shadow + (size_t)b * PG, filedata + fpage * PG, PG);
	check_mem(A_uring_fixed, fd == fd_direct ? "io_uring READ_FIXED (O_DIRECT) into a registered buffer"
						  : "io_uring READ_FIXED into a registered buffer",
		  dst, r->shadow + (size_t)b * PG, PG);
}

static void gen_bytes(struct worker *w, unsigned char *d, size_t len)
{
	if (rr(&w->rng, 2)) {
		const unsigned char *src = palette[rr(&w->rng, PALETTE)];
		size_t o = rr(&w->rng, PG);
		for (size_t i = 0; i < len; i++)
			d[i] = src[(o + i) % PG];
	} else {
		for (size_t i = 0; i < len; i += 8) {
			uint64_t v = rnd(&w->rng);
			memcpy(d + i, &v, len - i < 8 ? len - i : 8);
		}
	}
}

/* read()/recv() into region pages, across page boundaries. */
static void act_pipe_like(struct worker *w, int act)
{
	size_t n = 1 + rr(&w->rng, 3), p0;
	struct region *r = pick_run(w, n, &p0);
	if (!r)
		return;
	bool sock = act == A_socket;
	int rfd = sock ? w->sock[0] : w->pipefd[0], wfd = sock ? w->sock[1] : w->pipefd[1];
	size_t off = rr(&w->rng, PG), len = 1 + rr(&w->rng, n * PG - off);
	char *dst = r->addr + p0 * PG + off;
	unsigned char *sh = r->shadow + p0 * PG + off;
	gen_bytes(w, w->tmp, len);
	size_t put = 0;
	while (put < len) {
		ssize_t x = write(wfd, w->tmp + put, len - put);
		if (x < 0 && errno == EINTR) {
			OUT(eintr);
			continue;
		}
		if (x <= 0)
			hard_fail("write to %s", sock ? "socket" : "pipe");
		put += (size_t)x;
	}
	size_t got = 0;
	while (got < len) {
		ssize_t x = sock ? recv(rfd, dst + got, len - got, 0) : read(rfd, dst + got, len - got);
		if (x < 0 && errno == EINTR) {
			OUT(eintr);
			continue;
		}
		if (x <= 0)
			hard_fail("%s into %p (page state %s) returned %zd after %zu of %zu bytes",
				  sock ? "recv()" : "read()", (void *)(dst + got), page_state(dst + got),
				  x, got, len);
		if ((size_t)x < len - got)
			OUT(short_io);
		got += (size_t)x;
	}
	memcpy(sh, w->tmp, len);
	check_mem(act, sock ? "recv() from a socket" : "read() from a pipe", dst, sh, len);
}

/* ---- actions: discard, protect ------------------------------------------- */

static void act_dontneed(struct worker *w)
{
	struct target t;
	size_t n = 1;
	if (rr(&w->rng, 3) == 0) {
		/* a run in one of our regions */
		n = 1 + rr(&w->rng, 4);
		size_t p0;
		t.r = pick_run(w, n, &p0);
		if (!t.r)
			return;
		t.page = p0;
		t.arena = false;
	} else {
		if (!pick_page(w, &t, true) || is_fixed(w, t.r, t.page))
			return;
	}
	char *p = t.r->addr + t.page * PG;
	unsigned char *sh = t.r->shadow + t.page * PG;
	bool merged = false;
	for (size_t i = 0; i < n; i++)
		merged |= page_is_file(p + i * PG);
	if (merged)
		OUT(dontneed_merged_page);
	if (madvise(p, n * PG, MADV_DONTNEED) != 0)
		hard_fail("madvise(%p, %zu, MADV_DONTNEED)", (void *)p, n * PG);
	memset(sh, 0, n * PG);
	check_mem(A_dontneed,
		  merged ? "MADV_DONTNEED (a page was merged before): must read zeros"
			 : "MADV_DONTNEED: must read zeros",
		  p, sh, n * PG);
}

static void act_mprotect(struct worker *w)
{
	size_t n = 1 + rr(&w->rng, 8), p0;
	struct region *r = pick_run(w, n, &p0);
	if (!r)
		return;
	char *p = r->addr + p0 * PG;
	if (mprotect(p, n * PG, PROT_READ) != 0)
		hard_fail("mprotect RO");
	check_mem(A_mprotect, "read-only run", p, r->shadow + p0 * PG, n * PG);
	usleep((useconds_t)rr(&w->rng, 500));
	if (mprotect(p, n * PG, PROT_READ | PROT_WRITE) != 0)
		hard_fail("mprotect RW");
	size_t pg = rr(&w->rng, n), off = rr(&w->rng, PG / 8) * 8;
	uint64_t v = rnd(&w->rng);
	memcpy(r->shadow + (p0 + pg) * PG + off, &v, 8);
	*(volatile uint64_t *)(p + pg * PG + off) = v;
	check_mem(A_mprotect, "write after mprotect RW", p, r->shadow + p0 * PG, n * PG);
}

/* ---- actions: mapping changes ------------------------------------------- */

static size_t new_size(struct worker *w, int idx)
{
	size_t lo = idx == 0 ? FIXB + 8 : 8;
	return lo + rr(&w->rng, 96);
}

/* Retire region idx and map a fresh one at the same address. */
static void act_churn(struct worker *w, int act)
{
	int idx = (int)rr(&w->rng, NREG);
	struct region *r = &w->r[idx];
	if (!r->addr)
		return;
	verify_region(act, r, "region before retiring it");
	if (idx == 0)
		fixed_release(w);
	region_unregister(r);
	char *old = r->addr;
	size_t n = rr(&w->rng, 3) ? r->npages : new_size(w, idx);
	bool thp = thp_ok && idx && rr(&w->rng, 16) == 0;
	if (act == A_churn_munmap || thp) {
		x_munmap(r->addr, r->npages * PG);
		if (thp) {
			n = 512;
			region_new(&w->rng, r, NULL, n, 0, true);
		} else {
			region_new(&w->rng, r, old, n, 1, false);
		}
	} else {
		/* MAP_FIXED straight over the old mapping (drop a tail it no
		 * longer covers) */
		if (n < r->npages)
			x_munmap(r->addr + n * PG, (r->npages - n) * PG);
		else if (n > r->npages)
			n = r->npages;   /* do not clobber a neighbour */
		region_new(&w->rng, r, old, n, 2, false);
	}
	if (idx == 0)
		fixed_attach(w);
	verify_region(act, r, "fresh region");
}

static bool is_hole(const void *a)
{
	unsigned char v;
	return mincore((void *)a, PG, &v) < 0 && errno == ENOMEM;
}

/* Per page of [lo, lo + n pages): does the /proc/self/maps line of its
 * mapping satisfy want()? Pages in no mapping get false. */
static void maps_pages(uintptr_t lo, size_t n, bool *out, bool (*want)(const char *line))
{
	char buf[512];
	uintptr_t hi = lo + n * PG;
	memset(out, 0, n);
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		hard_fail("open /proc/self/maps");
	while (fgets(buf, sizeof(buf), f)) {
		uintptr_t a = strtoul(buf, NULL, 16), b = strtoul(strchr(buf, '-') + 1, NULL, 16);
		if (a >= hi)
			break;
		if (b <= lo || !want(buf))
			continue;
		for (uintptr_t x = a > lo ? a : lo; x < b && x < hi; x += PG)
			out[(x - lo) / PG] = true;
	}
	fclose(f);
}

/* mapped read-write (not our PROT_NONE placeholder, not a hole) */
static bool line_rw(const char *l) { return !strncmp(strchr(l, ' ') + 1, "rw", 2); }
/* a mapping of libdedup's memfd (a merged page) */
static bool line_memfd(const char *l) { return strstr(l, "memfd:libdedup") != NULL; }

static void maps_rw(uintptr_t lo, size_t n, bool *rw) { maps_pages(lo, n, rw, line_rw); }
static void maps_memfd(uintptr_t lo, size_t n, bool *out) { maps_pages(lo, n, out, line_memfd); }

/* The smaps header and VmFlags of the VMAs overlapping [lo, hi) ("uw" = uffd
 * write-protect, "um" = missing, "ui" = minor registration). */
static void print_vmflags(uintptr_t lo, uintptr_t hi)
{
	char buf[512], head[512] = "";
	bool in = false;
	FILE *f = fopen("/proc/self/smaps", "r");
	if (!f)
		return;
	say("VMAs in %#lx-%#lx (smaps VmFlags):\n", (unsigned long)lo, (unsigned long)hi);
	while (fgets(buf, sizeof(buf), f)) {
		char *dash = strchr(buf, '-'), *colon = strchr(buf, ':');
		if (dash && (!colon || dash < colon) && buf[0] != 'V') {
			uintptr_t a = strtoul(buf, NULL, 16), b = strtoul(dash + 1, NULL, 16);
			if (a >= hi)
				break;
			in = b > lo;
			snprintf(head, sizeof(head), "%s", buf);
			head[strcspn(head, "\n")] = 0;
		} else if (in && !strncmp(buf, "VmFlags:", 8)) {
			say("  %s  |%s", head, buf + 8);
		}
	}
	fclose(f);
}

/*
 * A failed mremap(MREMAP_FIXED) of a range made of several VMAs can leave
 * the first VMAs moved: since Linux 6.17 mremap moves VMA by VMA and stops
 * with EFAULT at one it may not move in a multi-VMA move (one registered
 * with a userfaultfd). Merging makes one VMA into many, so this is what an
 * application gets when it mremaps a range with merged pages in it. Find
 * the pages that reached dst (a PROT_NONE placeholder of ours until then)
 * and put them back. With MREMAP_DONTUNMAP the source stays mapped, empty;
 * without, it is a hole that anybody's mmap may take meanwhile (then this
 * test cannot go on). Unmaps what is left of the placeholder dst. Returns
 * the number of pages put back.
 */
static size_t recover_partial(int act, char *src, size_t n, char *dst, bool dontunmap,
			      bool after_unregister)
{
	static _Atomic int notes;
	size_t moved = 0;
	bool *rw = malloc(n);
	maps_rw((uintptr_t)dst, n, rw);
	for (size_t i = 0; i < n; i++) {
		if (!rw[i])
			continue;
		moved++;
		if (!dontunmap && !is_hole(src + i * PG)) {
			print_maps((uintptr_t)src + i * PG, (uintptr_t)src + (i + 1) * PG);
			print_maps((uintptr_t)dst + i * PG, (uintptr_t)dst + (i + 1) * PG);
			dump_ops((uintptr_t)src + i * PG, (uintptr_t)src + (i + 1) * PG);
		}
		if (!dontunmap && !is_hole(src + i * PG))
			hard_fail("test limitation: a half-done mremap left %p empty and something "
				  "else was mapped there before we could put the page back",
				  (void *)(src + i * PG));
		if (x_mremap(dst + i * PG, PG, PG, MREMAP_MAYMOVE | MREMAP_FIXED, src + i * PG) ==
		    MAP_FAILED)
			hard_fail("cannot put %p back to %p", (void *)(dst + i * PG), (void *)(src + i * PG));
	}
	/* Drop what is left of the placeholder, and only that: where a page
	 * was put back there is a hole now, which someone else may have taken. */
	for (size_t i = 0; i < n;) {
		size_t j = i;
		while (j < n && !rw[j])
			j++;
		if (j > i)
			x_munmap(dst + i * PG, (j - i) * PG);
		i = j + 1;
	}
	free(rw);
	if (!moved)
		return 0;
	OUT(mremap_half_done);
	if (after_unregister || atomic_fetch_add(&notes, 1) < 3)
		say("%s [%s]: mremap(%p, %zu pages -> %p%s) failed with EFAULT after moving %zu of "
		    "the pages%s; seed %u\n",
		    after_unregister ? "BUG" : "NOTE", act_name[act], (void *)src, n, (void *)dst,
		    dontunmap ? ", DONTUNMAP" : "", moved,
		    after_unregister ? " although the range was dedup_unregister()ed: part of it is "
				       "still registered with a userfaultfd"
				     : " (the range spans VMAs registered with libdedup's userfaultfd; "
				       "put back)",
		    opt.seed);
	if (after_unregister)
		print_vmflags((uintptr_t)src, (uintptr_t)src + n * PG);
	return moved;
}

static void mremap_err(int e)
{
	if (e == EFAULT)
		OUT(mremap_efault);   /* the range spans several VMAs (merged pages) */
	else
		OUT(mremap_other_err);
}

/* unregister, mremap, register the result: the API contract */
static void act_mremap(struct worker *w, int act)
{
	int idx = (int)rr(&w->rng, NREG);
	struct region *r = &w->r[idx];
	if (!r->addr || (act == A_mremap_shrink && r->npages < (idx ? 2 : FIXB + 2)))
		return;
	verify_region(act, r, "region before mremap");
	if (idx == 0)
		fixed_release(w);
	region_unregister(r);
	size_t oldn = r->npages, newn = oldn;
	void *res;
	if (act == A_mremap_grow) {
		newn = oldn + 1 + rr(&w->rng, 32);
		res = x_mremap(r->addr, oldn * PG, newn * PG, MREMAP_MAYMOVE, NULL);
	} else if (act == A_mremap_shrink) {
		size_t lo = idx ? 1 : FIXB + 1;
		newn = lo + rr(&w->rng, oldn - lo);
		res = x_mremap(r->addr, oldn * PG, newn * PG, 0, NULL);
	} else {
		void *ph = x_mmap(NULL, oldn * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS);
		res = x_mremap(r->addr, oldn * PG, oldn * PG, MREMAP_MAYMOVE | MREMAP_FIXED, ph);
		if (res == MAP_FAILED) {
			int e = errno;
			if (recover_partial(act, r->addr, oldn, ph, false, !r->dirty) && !r->dirty) {
				region_history(r);
				dump_ops((uintptr_t)r->addr, (uintptr_t)r->addr + oldn * PG);
				atomic_fetch_add(&act_bad[act], 1);
				atomic_fetch_add(&mismatches, 1);
				if (!opt.keep_going) {
					print_summary();
					_exit(T_FAIL);
				}
			}
			errno = e;
		}
	}
	if (res == MAP_FAILED) {
		mremap_err(errno);
	} else {
		OUT(mremap_ok);
		r->addr = res;
		r->shadow = realloc(r->shadow, newn * PG);
		if (newn > oldn)
			memset(r->shadow + oldn * PG, 0, (newn - oldn) * PG);
		r->npages = newn;
	}
	verify_region(act, r, res == MAP_FAILED ? "region after a failed mremap" : "region after mremap");
	region_register(r);   /* may fail: merged pages are file mappings */
	if (idx == 0)
		fixed_attach(w);
	if (newn > oldn && res != MAP_FAILED) {
		/* fill the new tail with duplicates too */
		fill_region(&w->rng, r, oldn);
		verify_region(act, r, "grown region after filling its tail");
	}
}

/* After a successful move of [from, from+len) to `to` without unregistering:
 * follow what the engine saw. It gets a REMAP event only for a range
 * registered with its uffd; a range made only of merged pages (file
 * mappings, not registered) moves unseen, and the engine keeps tracking the
 * old addresses. Then (unless we come back, keep_stale) we let go of that
 * stale piece at once, while the old addresses are still ours (DONTUNMAP)
 * or at least before anyone else registers there. */
static void note_move(struct region *r, uint64_t h0, uintptr_t from, uintptr_t to, size_t len,
		      bool keep_stale)
{
	if (saw_remap(h0, from, to, len)) {
		pieces_remap(r, from, to, len);
	} else {
		OUT(remap_no_event);
		if (!keep_stale) {
			wait_applied(ev_mark());
			struct piece ov[16];
			int n = engine_regions(from, from + len, ov, 16);
			for (int i = 0; i < n; i++) {
				int ret = dedup_unregister((void *)ov[i].a, ov[i].len);
				LOGOP("unreg-stale", (void *)ov[i].a, NULL, ov[i].len, ret);
				if (ret == 0)
					OUT(stale_piece_unregistered);
				/* forget it in our pieces too */
				for (int j = 0; j < r->npc; j++)
					if (r->pc[j].a == ov[i].a && r->pc[j].len == ov[i].len)
						r->pc[j--] = r->pc[--r->npc];
			}
			r->exact = false;
		}
	}
	r->ev_seen = ev_mark();
}

/*
 * mremap a registered range WITHOUT unregistering it: a move (with
 * MREMAP_DONTUNMAP, so that the old range stays mapped until we unmap it
 * ourselves: a hole there could be taken by another thread's mmap before a
 * half-done move is put back), or a grow that may move (a plain mremap,
 * which leaves a hole). The engine is told by UFFD_EVENT_REMAP.
 * (A shrink would be an munmap of the tail without unregistering: outside
 * the API, and not something the engine can see.)
 */
static void act_remap_noreg(struct worker *w)
{
	int idx = (int)rr(&w->rng, NREG);
	struct region *r = &w->r[idx];
	if (!r->addr || !r->npc || !r->exact)
		return;
	if (idx == 0)
		fixed_release(w);
	size_t oldn = r->npages, newn = oldn;
	uintptr_t from = (uintptr_t)r->addr;
	bool move = rr(&w->rng, 10) < 7;
	uint64_t h0 = ev_mark();
	void *res, *ph = NULL;
	if (move) {
		ph = x_mmap(NULL, oldn * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS);
		res = x_mremap(r->addr, oldn * PG, oldn * PG,
			       MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, ph);
	} else {
		newn = oldn + 1 + rr(&w->rng, 16);
		res = x_mremap(r->addr, oldn * PG, newn * PG, MREMAP_MAYMOVE, NULL);
	}
	if (res == MAP_FAILED) {
		int e = errno;
		if (ph)
			recover_partial(A_remap_noreg, r->addr, oldn, ph, true, false);
		OUT(remap_noreg_fail);
		mremap_err(e);
	} else {
		OUT(remap_noreg_ok);
		/* grown in place: no event, the engine keeps tracking (from,
		 * old length), which stays our piece */
		if ((uintptr_t)res != from)
			note_move(r, h0, from, (uintptr_t)res, oldn * PG, false);
		else
			r->dirty = true;   /* the grown tail is registered, untracked */
		if (move)
			x_munmap(r->addr, oldn * PG);   /* what DONTUNMAP left behind */
		r->moved_noreg = !r->exact;
		r->addr = res;
		r->shadow = realloc(r->shadow, newn * PG);
		if (newn > oldn)
			memset(r->shadow + oldn * PG, 0, (newn - oldn) * PG);
		r->npages = newn;
		r->file_at_move = count_file_pages(r);
	}
	verify_region(A_remap_noreg, r, res == MAP_FAILED ? "region after a failed mremap (not unregistered)"
							  : "region after mremap without unregistering");
	if (idx == 0)
		fixed_attach(w);
}

/* Move 1-4 pages of a registered range away and back, without unregistering. */
static void act_remap_sub(struct worker *w)
{
	size_t k = 1 + rr(&w->rng, 4), p0;
	struct region *r = pick_run(w, k, &p0);
	if (!r || !r->npc || r->npc > MAXPIECES - 8)
		return;
	char *a = r->addr + p0 * PG;
	unsigned char *sh = r->shadow + p0 * PG;
	void *ph = x_mmap(NULL, k * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS);
	bool memfd_before[4], memfd_after[4], memfd_b[4];
	maps_memfd((uintptr_t)a, k, memfd_before);
	uint64_t h0 = ev_mark();
	/* DONTUNMAP: the old range stays mapped (empty), so no other thread's
	 * mmap can take it before we move the pages back */
	void *b = x_mremap(a, k * PG, k * PG, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, ph);
	if (b == MAP_FAILED) {
		recover_partial(A_remap_sub, a, k, ph, true, false);
		OUT(remap_sub_fail);   /* spans merged pages (several VMAs) */
		return;
	}
	OUT(remap_sub_ok);
	note_move(r, h0, (uintptr_t)a, (uintptr_t)b, k * PG, true);
	/* The old range is now an empty VMA (DONTUNMAP). If a merge raced the
	 * move, the engine may have mapped a canonical page over it. */
	maps_memfd((uintptr_t)a, k, memfd_after);
	maps_memfd((uintptr_t)b, k, memfd_b);
	for (size_t i = 0; i < k; i++) {
		/* (a page merged before the move leaves its file VMA at both ends) */
		if (!memfd_after[i] || memfd_before[i] || memfd_b[i])
			continue;
		OUT(remap_sub_stray_mapping);
		say("BUG [remap_sub]: after mremap(%p -> %p, %zu pages) a libdedup page is mapped at "
		    "the old address %p (%s); seed %u; replay: %s\n",
		    (void *)a, b, k, (void *)(a + i * PG), page_state(a + i * PG), opt.seed, replay);
		print_maps((uintptr_t)a, (uintptr_t)a + k * PG);
		print_maps((uintptr_t)b, (uintptr_t)b + k * PG);
		dump_ops((uintptr_t)a, (uintptr_t)a + k * PG);
		if (!opt.keep_going)
			check_mem(A_remap_sub, "pages at their temporary address, after the stray mapping",
				  b, sh, k * PG);
		atomic_fetch_add(&act_bad[A_remap_sub], 1);
		atomic_fetch_add(&mismatches, 1);
		if (!opt.keep_going) {
			print_summary();
			_exit(T_FAIL);
		}
		break;
	}
	check_mem(A_remap_sub, "pages at their temporary address", b, sh, k * PG);
	if (rr(&w->rng, 2)) {
		size_t off = rr(&w->rng, k * PG / 8) * 8;
		uint64_t x = rnd(&w->rng);
		memcpy(sh + off, &x, 8);
		*(volatile uint64_t *)((char *)b + off) = x;
	}
	if (rr(&w->rng, 2))
		usleep((useconds_t)rr(&w->rng, 3000));   /* let the engine see them there */
	check_mem(A_remap_sub, "pages at their temporary address (2)", b, sh, k * PG);
	h0 = ev_mark();
	void *back = x_mremap(b, k * PG, k * PG, MREMAP_MAYMOVE | MREMAP_FIXED, a);
	if (back == MAP_FAILED) {
		/* merged meanwhile at b: several VMAs, the move stops (maybe half
		 * done) at one registered with the uffd; move page by page */
		OUT(remap_sub_back_per_page);
		for (size_t i = 0; i < k; i++) {
			char *bi = (char *)b + i * PG, *ai = a + i * PG;
			if (is_hole(bi) && !is_hole(ai))
				continue;   /* the first call moved it */
			h0 = ev_mark();
			back = x_mremap(bi, PG, PG, MREMAP_MAYMOVE | MREMAP_FIXED, ai);
			if (back == MAP_FAILED)
				hard_fail("mremap %p back to %p", (void *)bi, (void *)ai);
			note_move(r, h0, (uintptr_t)bi, (uintptr_t)ai, PG, false);
		}
	} else {
		note_move(r, h0, (uintptr_t)b, (uintptr_t)a, k * PG, false);
	}
	check_mem(A_remap_sub, "pages moved back", a, sh, k * PG);
}

/* ---- actions: threads --------------------------------------------------- */

struct eph { struct worker *w; struct region *r; size_t p0, n; uint64_t rng; };

static void *eph_main(void *arg)
{
	struct eph *e = arg;
	for (int i = 0; i < 64; i++) {
		size_t pg = e->p0 + rr(&e->rng, e->n), off = rr(&e->rng, PG / 8) * 8;
		uint64_t v = rnd(&e->rng);
		if (rr(&e->rng, 16) == 0) {
			memcpy(e->r->shadow + pg * PG, palette[rr(&e->rng, PALETTE)], PG);
			memcpy(e->r->addr + pg * PG, e->r->shadow + pg * PG, PG);
		} else {
			memcpy(e->r->shadow + pg * PG + off, &v, 8);
			*(volatile uint64_t *)(e->r->addr + pg * PG + off) = v;
		}
	}
	return NULL;   /* exits right after writes that may have blocked */
}

static void act_thread_exit(struct worker *w)
{
	struct region *r = pick_region(w, 8);
	if (!r)
		return;
	struct eph e[3];
	pthread_t t[3];
	size_t per = r->npages / 3;
	for (int i = 0; i < 3; i++) {
		e[i] = (struct eph){ w, r, (size_t)i * per, per, rnd(&w->rng) };
		if (pthread_create(&t[i], NULL, eph_main, &e[i]))
			hard_fail("pthread_create");
	}
	for (int i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	verify_region(A_thread_exit, r, "region written by exited threads");
}

/* ---- the worker --------------------------------------------------------- */

static unsigned wsum;
static int pick_action(struct worker *w)
{
	uint64_t x = rr(&w->rng, wsum);
	for (int a = 0; a < NACT; a++) {
		unsigned wt = act_on[a] ? act_weight[a] : 0;
		if (x < wt)
			return a;
		x -= wt;
	}
	return A_sleep;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	tls_w = w;
	while (!atomic_load(&stop_all)) {
		maybe_park();
		int a = pick_action(w);
		switch (a) {
		case A_write: act_write(w); break;
		case A_dup: act_dup(w); break;
		case A_verify: act_verify(w); break;
		case A_odirect: act_odirect(w); break;
		case A_pread: act_pread(w); break;
		case A_uring_direct: act_uring_direct(w); break;
		case A_uring_fixed: act_uring_fixed(w); break;
		case A_pipe:
		case A_socket: act_pipe_like(w, a); break;
		case A_dontneed: act_dontneed(w); break;
		case A_mprotect: act_mprotect(w); break;
		case A_churn_munmap:
		case A_churn_fixed: act_churn(w, a); break;
		case A_mremap_grow:
		case A_mremap_shrink:
		case A_mremap_move: act_mremap(w, a); break;
		case A_remap_noreg: act_remap_noreg(w); break;
		case A_remap_sub: act_remap_sub(w); break;
		case A_thread_exit: act_thread_exit(w); break;
		case A_sleep: usleep((useconds_t)(100 + rr(&w->rng, 1500))); break;
		}
		atomic_fetch_add_explicit(&act_done[a], 1, memory_order_relaxed);
	}
	tls_w = NULL;
	return NULL;
}

/* ---- signals ----------------------------------------------------------- */

static void on_sigusr1(int sig)
{
	struct worker *w = tls_w;
	int e = errno;
	OUT(signals_handled);
	if (w && sigreg.addr) {
		/* write into one of our signal pages: it may be protected by a
		 * merge in progress, or merged (the write copies it) */
		uint64_t n = ++w->sign;
		size_t pg = (size_t)w->id * SIGP + n % SIGP, off = ((n / SIGP) % (PG / 8)) * 8;
		uint64_t v = n * 0x9E3779B97F4A7C15ULL ^ (uint64_t)w->id;
		memcpy(sigreg.shadow + pg * PG + off, &v, 8);
		*(volatile uint64_t *)(sigreg.addr + pg * PG + off) = v;
		if (*(volatile uint64_t *)(sigreg.addr + pg * PG + off) != v) {
			say("MISMATCH [signal] handler write at %p did not stick; seed %u\n",
			    (void *)(sigreg.addr + pg * PG + off), opt.seed);
			atomic_fetch_add(&act_bad[A_signal], 1);
			atomic_fetch_add(&mismatches, 1);
		}
	}
	errno = e;
}

/* A crash: say where, in which of our regions, and what happened there. */
static void on_crash(int sig, siginfo_t *si, void *uc)
{
	uintptr_t a = (uintptr_t)si->si_addr;
	say("CRASH: signal %d (%s) at address %p, worker %d (tid %d, %s); seed %u; replay: %s\n",
	    sig, strsignal(sig), si->si_addr, tls_w ? tls_w->id : -1, (int)gettid(),
	    in_child ? "fork child" : "parent", opt.seed, replay);
	void *bt[32];
	int nbt = backtrace(bt, 32);
	backtrace_symbols_fd(bt, nbt, 2);
	for (int i = 0; i < opt.threads; i++)
		for (int j = 0; j < NREG; j++) {
			struct region *r = &W[i].r[j];
			if ((uintptr_t)r->addr <= a + (1 << 20) && a < (uintptr_t)r->addr + r->npages * PG + (1 << 20)) {
				say("  near worker %d region %d: %p-%p (%zu pages, %d pieces)\n", i, j,
				    (void *)r->addr, (void *)(r->addr + r->npages * PG), r->npages, r->npc);
				for (unsigned h = r->nhist > 8 ? r->nhist - 8 : 0; h < r->nhist; h++)
					say("    %s\n", r->hist[h % 8]);
			}
		}
	dump_ops(a & ~(PG - 1), (a & ~(PG - 1)) + PG);
	_exit(T_FAIL);
}

static void *signaller_main(void *arg)
{
	uint64_t s = opt.seed * 31ULL + 7;
	while (!atomic_load(&stop_all)) {
		int n = 1 + (int)rr(&s, 8);   /* a burst */
		for (int i = 0; i < n; i++) {
			pthread_kill(W[rr(&s, (uint64_t)opt.threads)].thr, SIGUSR1);
			OUT(signals_sent);
		}
		usleep((useconds_t)(opt.signal_us / 2 + rr(&s, opt.signal_us)));
	}
	return NULL;
}

/* ---- main-thread actions: arena, fork ------------------------------------ */

static void refresh_shared(uint64_t *s, struct region *r, size_t npages, const char *what)
{
	if (r->addr) {
		verify_region(A_arena, r, what);
		region_unregister(r);
		x_munmap(r->addr, r->npages * PG);
	}
	region_new(s, r, r->addr, npages, r->addr ? 1 : 0, false);
}

static void child_verify_all(uint64_t *s)
{
	for (int i = 0; i < opt.threads; i++)
		for (int j = 0; j < NREG; j++)
			verify_region(A_fork, &W[i].r[j], "child's view of a worker region");
	verify_region(A_fork, &arena, "child's view of the arena");
	verify_region(A_fork, &sigreg, "child's view of the signal pages");
}

static void child_main(uint64_t seed)
{
	uint64_t s = seed;
	in_child = true;
	child_verify_all(&s);
	/* write into pages (merged or not): must not affect the parent */
	for (int k = 0; k < 300; k++) {
		struct region *r = &W[rr(&s, (uint64_t)opt.threads)].r[rr(&s, NREG)];
		if (!r->addr)
			continue;
		size_t pg = rr(&s, r->npages), off = rr(&s, PG / 8) * 8;
		char *p = r->addr + pg * PG;
		uint64_t x = rr(&s, 8);
		if (x == 0) {
			memcpy(r->shadow + pg * PG, palette[rr(&s, PALETTE)], PG);
			memcpy(p, r->shadow + pg * PG, PG);
			check_mem(A_fork, "child rewrote a page", p, r->shadow + pg * PG, PG);
		} else if (x == 1 && act_on[A_dontneed] && !opt.no_child_dontneed) {
			madvise(p, PG, MADV_DONTNEED);
			memset(r->shadow + pg * PG, 0, PG);
			check_mem(A_fork, "child MADV_DONTNEED", p, r->shadow + pg * PG, PG);
		} else {
			uint64_t v = rnd(&s);
			memcpy(r->shadow + pg * PG + off, &v, 8);
			*(volatile uint64_t *)(p + off) = v;
			check_mem(A_fork, "child write", p + off, r->shadow + pg * PG + off, 8);
		}
	}
	usleep((useconds_t)rr(&s, 30000));   /* keep pages shared a little */
	child_verify_all(&s);
	_exit(atomic_load(&shm->bad) ? T_FAIL : T_PASS);
}

static pid_t children[8];
static int nchildren;

static void reap(bool block)
{
	for (int i = 0; i < nchildren;) {
		int st;
		pid_t p = waitpid(children[i], &st, block ? 0 : WNOHANG);
		if (p == 0) {
			i++;
			continue;
		}
		if (p < 0 && errno == EINTR)
			continue;
		if (p < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			OUT(fork_child_failed);
			say("FAIL [fork]: child %d %s %d; seed %u; replay: %s\n", children[i],
			    p > 0 && WIFSIGNALED(st) ? "killed by signal" : "exited with",
			    p > 0 ? (WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st)) : -1, opt.seed,
			    replay);
			atomic_fetch_add(&act_bad[A_fork], 1);
			atomic_fetch_add(&mismatches, 1);
			if (!opt.keep_going) {
				print_summary();
				_exit(T_FAIL);
			}
		}
		children[i] = children[--nchildren];
	}
}

static void do_fork(uint64_t *s)
{
	if (nchildren >= 2)
		reap(true);
	pause_world();
	uint64_t cs = rnd(s);
	pid_t p = fork();
	if (p == 0)
		child_main(cs);
	/* the parent's view at the same instant: a mismatch only the child
	 * sees is the fork's doing, one both see happened before */
	for (int i = 0; i < opt.threads; i++)
		for (int j = 0; j < NREG; j++)
			verify_region(A_fork, &W[i].r[j], "parent's view right after fork");
	resume_world();
	if (p < 0)
		hard_fail("fork");
	children[nchildren++] = p;
	OUT(fork_children);
	atomic_fetch_add(&act_done[A_fork], 1);
}

/* ---- setup ------------------------------------------------------------- */

static void setup_file(void)
{
	static char path[4096];
	const char *dirs[4] = { opt.dir, ".", "/var/tmp", "/tmp" };
	filedata = aligned_alloc(PG, FILE_PAGES * PG);
	for (int i = 0; i < FILE_PAGES; i++) {
		/* even pages: palette content (reads make duplicates), odd: unique */
		if (i % 2 == 0)
			memcpy(filedata + (size_t)i * PG, palette[(i / 2) % PALETTE], PG);
		else
			t_fill(filedata + (size_t)i * PG, (uint64_t)opt.seed * 1000003ULL + (uint64_t)i);
	}
	for (int d = 0; d < 4; d++) {
		if (!dirs[d])
			continue;
		snprintf(path, sizeof(path), "%s/dedup-torture-XXXXXX", dirs[d]);
		int fd = mkstemp(path);
		if (fd < 0)
			continue;
		unlink(path);
		if (write(fd, filedata, FILE_PAGES * PG) != (ssize_t)(FILE_PAGES * PG)) {
			close(fd);
			continue;
		}
		fsync(fd);
		fd_buf = fd;
		char proc[64];
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
		int dfd = open(proc, O_RDONLY | O_DIRECT | O_CLOEXEC);
		if (dfd >= 0) {
			/* the test read: does O_DIRECT work here, and at what granularity? */
			char *b = aligned_alloc(PG, 2 * PG);
			if (pread(dfd, b, PG, 0) == (ssize_t)PG && !memcmp(b, filedata, PG)) {
				fd_direct = dfd;
				if (pread(dfd, b + 512, 512, 512) == 512 &&
				    !memcmp(b + 512, filedata + 512, 512))
					od_align = 512;
			} else {
				close(dfd);
			}
			free(b);
		}
		say("file: %s (deleted), O_DIRECT %s", path,
		    fd_direct >= 0 ? "supported" : "NOT supported: odirect skipped");
		if (fd_direct >= 0)
			say(", granularity %zu", od_align);
		say("\n");
		return;
	}
	hard_fail("no directory for the source file");
}

static uint64_t stat_merges(void)
{
	struct dedup_stats st = { .size = sizeof(st) };
	dedup_stats(&st);
	return st.merges;
}

static void print_summary(void)
{
	struct dedup_stats st = { .size = sizeof(st) };
	dedup_stats(&st);
	double el = t_now() - t_start;
	say("---- torture summary: seed %u, %.1f s, %d threads, batch %u ----\n", opt.seed, el,
	    opt.threads, opt.batch);
	say("engine: merges %llu (%.0f/s), scanned %llu, passes %llu, candidates %llu, "
	    "sharing %llu, zero %llu, cow_breaks %llu\n",
	    (unsigned long long)st.merges, el > 0 ? (double)st.merges / el : 0.0,
	    (unsigned long long)st.pages_scanned, (unsigned long long)st.full_passes,
	    (unsigned long long)st.candidates, (unsigned long long)st.pages_sharing,
	    (unsigned long long)st.zero_pages, (unsigned long long)st.cow_breaks);
	say("        skipped: volatile %llu pinned %llu mismatch %llu raced %llu budget %llu; "
	    "vmas_added %llu\n",
	    (unsigned long long)st.skipped_volatile, (unsigned long long)st.skipped_pinned,
	    (unsigned long long)st.skipped_mismatch, (unsigned long long)st.skipped_raced,
	    (unsigned long long)st.skipped_budget, (unsigned long long)st.vmas_added);
	if (!in_child)
		say("        /proc/self/maps lines now: %ld (vma budget %llu)\n", t_map_count(),
		    (unsigned long long)st.vma_budget);
	uint64_t bv = atomic_load(&bytes_verified) + (shm ? atomic_load(&shm->bytes) : 0);
	say("bytes verified: %llu (%.1f MiB; %llu in fork children)\n", (unsigned long long)bv,
	    (double)bv / 1048576.0, shm ? (unsigned long long)atomic_load(&shm->bytes) : 0ULL);
	say("actions (done / skipped / mismatches):\n");
	for (int a = 0; a < NACT; a++) {
		if (!act_on[a] && !atomic_load(&act_done[a]))
			continue;
		say("  %-14s %10llu %8llu %6llu\n", act_name[a],
		    (unsigned long long)atomic_load(&act_done[a]),
		    (unsigned long long)atomic_load(&act_skip[a]),
		    (unsigned long long)atomic_load(&act_bad[a]));
	}
	say("outcomes:");
	for (int o = 0; o < NOUT; o++)
		if (atomic_load(&outc[o]))
			say("%s %s=%llu", o % 5 == 0 ? "\n " : "", out_name[o],
			    (unsigned long long)atomic_load(&outc[o]));
	say("\nmismatches: %llu\n",
	    (unsigned long long)(atomic_load(&mismatches) + (shm ? atomic_load(&shm->bad) : 0)));
}

static void usage(void)
{
	say("usage: torture [--seconds S] [--seed N] [--threads N] [--batch N] [--no-dontneed]\n"
	    "               [--remap-noreg]\n"
	    "               [--only a,b,...] [--no a,b,...] [--keep-going] [--min-merges N]\n"
	    "               [--max-seconds S]\n"
	    "               [--dir DIR] [--fork-every S] [--arena-every S] [--signal-us US]\n"
	    "  --seconds     run time (default: $DEDUP_TEST_SECONDS, else 10)\n"
	    "  --seed        (default: $DEDUP_TEST_SEED, else time and pid)\n"
	    "  --min-merges  merges needed per 10 s of --seconds (default 1000); the run\n"
	    "                goes on past --seconds until it has them, then ends\n"
	    "  --max-seconds give up waiting for them (fail) after this long\n"
	    "                (default: --seconds + 180, or + $DEDUP_TEST_CAP_S)\n"
	    "  --dir         where the O_DIRECT source file goes (default: ., /var/tmp, /tmp)\n"
	    "  --remap-noreg also mremap registered ranges without dedup_unregister()\n"
	    "                (remap_noreg, remap_sub: outside the API contract)\n"
	    "actions:");
	for (int a = 0; a < NACT; a++)
		say(" %s", act_name[a]);
	say("\n");
}

static void set_actions(const char *list, bool on)
{
	char buf[1024];
	snprintf(buf, sizeof(buf), "%s", list);
	for (char *t = strtok(buf, ","); t; t = strtok(NULL, ",")) {
		int a;
		for (a = 0; a < NACT; a++)
			if (!strcmp(t, act_name[a]))
				break;
		if (a == NACT) {
			say("unknown action '%s'\n", t);
			usage();
			exit(2);
		}
		act_on[a] = on;
	}
}

int main(int argc, char **argv)
{
	const char *e = getenv("DEDUP_TEST_SECONDS");
	opt.seconds = e ? atof(e) : 10;
	e = getenv("DEDUP_TEST_SEED");
	opt.seed = e ? (unsigned)strtoul(e, NULL, 0) : (unsigned)(time(NULL) ^ (getpid() << 16));
	for (int a = 0; a < NACT; a++)
		act_on[a] = true;
	/* outside the API contract (mremap without dedup_unregister): only on request */
	act_on[A_remap_noreg] = act_on[A_remap_sub] = false;
	static const struct option lo[] = {
		{ "seconds", 1, 0, 's' }, { "seed", 1, 0, 'S' }, { "threads", 1, 0, 't' },
		{ "batch", 1, 0, 'b' }, { "no-dontneed", 0, 0, 'D' }, { "only", 1, 0, 'o' },
		{ "no", 1, 0, 'n' }, { "keep-going", 0, 0, 'k' }, { "min-merges", 1, 0, 'm' },
		{ "dir", 1, 0, 'd' }, { "fork-every", 1, 0, 'f' }, { "arena-every", 1, 0, 'a' },
		{ "signal-us", 1, 0, 'u' }, { "verbose", 0, 0, 'v' }, { "help", 0, 0, 'h' },
		{ "remap-noreg", 0, 0, 'R' }, { "no-child-dontneed", 0, 0, 'C' },
		{ "max-seconds", 1, 0, 'M' },
		{ 0, 0, 0, 0 }
	};
	int c;
	char cmdline[200] = "";
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 's': opt.seconds = atof(optarg); break;
		case 'S': opt.seed = (unsigned)strtoul(optarg, NULL, 0); break;
		case 't': opt.threads = atoi(optarg); break;
		case 'b': opt.batch = (unsigned)atoi(optarg); break;
		case 'D': act_on[A_dontneed] = false; break;
		case 'o':
			for (int a = 0; a < NACT; a++)
				act_on[a] = false;
			set_actions(optarg, true);
			break;
		case 'n': set_actions(optarg, false); break;
		case 'k': opt.keep_going = true; break;
		case 'm': opt.min_merges = atof(optarg); break;
		case 'M': opt.max_seconds = atof(optarg); break;
		case 'd': opt.dir = optarg; break;
		case 'f': opt.fork_every = atof(optarg); break;
		case 'C': opt.no_child_dontneed = 1; break;
		case 'a': opt.arena_every = atof(optarg); break;
		case 'u': opt.signal_us = (unsigned)atoi(optarg); break;
		case 'v': opt.verbose = true; break;
		case 'R': act_on[A_remap_noreg] = act_on[A_remap_sub] = true; break;
		default: usage(); return c == 'h' ? 0 : 2;
		}
	}
	if (opt.max_seconds <= 0)
		opt.max_seconds = opt.seconds + t_cap();
	if (opt.threads < 1 || opt.threads > MAXW)
		opt.threads = opt.threads < 1 ? 1 : MAXW;
	uint64_t s = opt.seed * 0x2545F4914F6CDD1DULL + 1;
	if (!opt.batch)
		opt.batch = 4 + (unsigned)rr(&s, 13);   /* 4..16 */
	for (int i = 1; i < argc; i++)
		if (strncmp(argv[i], "--seed", 6) && (i == 1 || strcmp(argv[i - 1], "--seed")))
			snprintf(cmdline + strlen(cmdline), sizeof(cmdline) - strlen(cmdline), " %s",
				 argv[i]);
	snprintf(replay, sizeof(replay), "%s --seed %u%s", argv[0], opt.seed, cmdline);
	wsum = 0;
	for (int a = 0; a < NACT; a++)
		wsum += act_on[a] ? act_weight[a] : 0;
	if (!wsum) {
		act_on[A_sleep] = true;
		wsum = act_weight[A_sleep];
	}
	{
		FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
		char b[128] = "";
		if (f) {
			if (!fgets(b, sizeof(b), f))
				b[0] = 0;
			fclose(f);
		}
		thp_ok = strstr(b, "[never]") == NULL && b[0];
	}

	say("torture: seed %u, %.1f s, %d threads, batch %u, dontneed %s, remap-noreg %s, "
	    "keep-going %s\n",
	    opt.seed, opt.seconds, opt.threads, opt.batch, act_on[A_dontneed] ? "on" : "off",
	    act_on[A_remap_noreg] || act_on[A_remap_sub] ? "on" : "off",
	    opt.keep_going ? "on" : "off");
	say("replay: %s\n", replay);

	for (int k = 0; k < PALETTE; k++)
		t_fill(palette[k], (uint64_t)opt.seed * 7919ULL + (uint64_t)k + 1);
	setup_file();
	pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	shm = x_mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS);
	if (shm == MAP_FAILED)
		hard_fail("mmap shared");

	/* No core dumps: the dump of a process using libdedup includes its
	 * canonical page store, a sparse memfd mapped shared, and dumping
	 * faults in every hole of it (up to DEDUP_STORE_MAX, 64 GiB). */
	struct rlimit nocore = { 0, 0 };
	setrlimit(RLIMIT_CORE, &nocore);
	struct sigaction sa = { .sa_handler = on_sigusr1 };   /* no SA_RESTART */
	sigaction(SIGUSR1, &sa, NULL);
	struct sigaction sc = { .sa_sigaction = on_crash, .sa_flags = SA_SIGINFO | SA_RESETHAND };
	sigaction(SIGSEGV, &sc, NULL);
	sigaction(SIGBUS, &sc, NULL);

	struct dedup_config cfg = { .size = sizeof(cfg), .scan_interval_ms = 1,
				    .cpu_percent = 100, .batch_pages = opt.batch, .zero_pages = 1 };
	int r = dedup_init(&cfg);
	if (r == -EPERM || r == -ENOSYS)
		t_skip("no usable userfaultfd (%s)", strerror(-r));
	if (r < 0)
		hard_fail("dedup_init: %s", strerror(-r));
	t_start = t_now();

	for (int i = 0; i < opt.threads; i++) {
		struct worker *w = &W[i];
		w->id = i;
		w->rng = opt.seed * 0x9E3779B97F4A7C15ULL + (uint64_t)i * 0x632BE59BD9B4E019ULL + 3;
		w->tmp = malloc(TMPSZ);
		w->tmp2 = malloc(TMPSZ);
		if (pipe2(w->pipefd, O_CLOEXEC) || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, w->sock))
			hard_fail("pipe/socketpair");
		w->ring_ok = io_uring_queue_init(16, &w->ring, 0) == 0;
		for (int j = 0; j < NREG; j++)
			region_new(&w->rng, &w->r[j], NULL, new_size(w, j), 0, false);
		fixed_attach(w);
	}
	if (act_on[A_arena])
		refresh_shared(&s, &arena, 32 * (size_t)opt.threads, "arena");
	if (act_on[A_signal])
		refresh_shared(&s, &sigreg, SIGP * (size_t)opt.threads, "signal pages");
	for (int i = 0; i < opt.threads; i++)
		if (pthread_create(&W[i].thr, NULL, worker_main, &W[i]))
			hard_fail("pthread_create");
	pthread_t sig_thr;
	bool sig_started = act_on[A_signal] && !pthread_create(&sig_thr, NULL, signaller_main, NULL);

	double end = t_start + opt.seconds, next_fork = t_start + opt.fork_every * rr(&s, 100) / 100.0,
	       next_arena = t_start + opt.arena_every, next_report = t_start + 10;
	/* --seconds, and on until the merges this run needs have happened */
	uint64_t want = (uint64_t)(opt.min_merges * opt.seconds / 10.0);
	bool over_time = false;
	for (;;) {
		if (t_now() >= end) {
			uint64_t m = stat_merges();
			if (m >= want || t_now() >= t_start + opt.max_seconds)
				break;
			if (!over_time)
				say("  %.0f s: %llu merges of the %llu needed: running on until they "
				    "happened (at most %.0f s in all)\n", t_now() - t_start,
				    (unsigned long long)m, (unsigned long long)want, opt.max_seconds);
			over_time = true;
		}
		usleep(5000);
		double now = t_now();
		reap(false);
		if (act_on[A_fork] && now >= next_fork) {
			do_fork(&s);
			next_fork = now + opt.fork_every * (0.5 + rr(&s, 100) / 100.0);
		}
		if ((act_on[A_arena] || act_on[A_signal]) && now >= next_arena) {
			pause_world();
			if (act_on[A_arena]) {
				refresh_shared(&s, &arena, arena.npages, "arena before refresh");
				atomic_fetch_add(&act_done[A_arena], 1);
			}
			if (act_on[A_signal])
				refresh_shared(&s, &sigreg, sigreg.npages, "signal pages before refresh");
			resume_world();
			next_arena = now + opt.arena_every;
		}
		if (now >= next_report) {
			uint64_t bv = atomic_load(&bytes_verified);
			say("  %.0f s: merges %llu, %.1f MiB verified, mismatches %llu\n", now - t_start,
			    (unsigned long long)stat_merges(), (double)bv / 1048576.0,
			    (unsigned long long)atomic_load(&mismatches));
			next_report = now + 10;
		}
	}
	atomic_store(&stop_all, 1);
	if (sig_started)
		pthread_join(sig_thr, NULL);
	for (int i = 0; i < opt.threads; i++)
		pthread_join(W[i].thr, NULL);
	reap(true);

	/* final: every byte, then let go of everything */
	for (int i = 0; i < opt.threads; i++) {
		for (int j = 0; j < NREG; j++) {
			verify_region(A_verify, &W[i].r[j], "final check");
			if (j == 0)
				fixed_release(&W[i]);
			region_unregister(&W[i].r[j]);
		}
	}
	verify_region(A_verify, &arena, "final check of the arena");
	verify_region(A_signal, &sigreg, "final check of the signal pages");
	region_unregister(&arena);
	region_unregister(&sigreg);
	uint64_t merges = stat_merges();
	double el = t_now() - t_start;
	print_summary();
	if (dedup_shutdown() != 0)
		hard_fail("dedup_shutdown");
	uint64_t bad = atomic_load(&mismatches) + atomic_load(&shm->bad);
	if (bad) {
		say("FAIL: %llu mismatches (seed %u)\n", (unsigned long long)bad, opt.seed);
		return T_FAIL;
	}
	if (merges < want) {
		say("FAIL: only %llu merges in %.1f s (%llu needed): this run proves nothing "
		    "(seed %u)\n", (unsigned long long)merges, el, (unsigned long long)want, opt.seed);
		return T_FAIL;
	}
	say("PASS: seed %u, %llu merges, %llu bytes verified\n", opt.seed,
	    (unsigned long long)merges,
	    (unsigned long long)(atomic_load(&bytes_verified) + atomic_load(&shm->bytes)));
	return T_PASS;
}
