/* SPDX-License-Identifier: MIT */
/*
 * lifecycle.c - preload mode: whether it is on, when the engine starts and
 * stops, and what a fork()ed child keeps.
 *
 * Lifecycle. The constructor runs after libc's (we depend on it), so getenv
 * and malloc work; it calls dedup_init(NULL) (DEDUP_* options; on failure
 * dedup_init logs its one line and we go passive), then starts the
 * "dedup-preload" thread, which registers memory. Nothing is registered from
 * the constructor itself. The destructor stops that thread and calls
 * dedup_shutdown() (which prints the DEDUP_LOG=stats table).
 *
 * Threads and locks. The constructor and the destructor run in the thread
 * that loads or exits; the lazy start in a thread of the program after its
 * free(), realloc() or brk() returned (holding nothing of ours); the fork
 * handlers in the thread calling fork(), with no lock of ours held across
 * it (pl_prepare). The state moves with atomics (pl.state).
 */
#include <dlfcn.h>
#include <link.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "preload.h"

/* ---- lazy start ----------------------------------------------------------------
 *
 * A program that never has much memory should not pay for us: the engine
 * (two threads, the userfaultfd, descriptors, tables) starts only once the
 * process has DEDUP_START bytes (64 MiB) of anonymous memory resident. Until
 * then the preload library only keeps watch, from calls the program makes
 * anyway: every 256th free() or realloc() of a thread (a thread-local count,
 * nothing shared), and each sbrk()/brk() and large anonymous mmap(), look at
 * the peak RSS (getrusage(): one system call, at most every 20 ms); past
 * the threshold, /proc/self/statm says how much of it is anonymous. The
 * start itself runs in the program's thread, after the real call returned:
 * never inside the allocator, and never from mmap() or munmap(), which a
 * signal handler may call (they only ask for a look at the next free()).
 */
static void start(void);
static uint64_t start_at;
static bool watch_restart;           /* DEDUP_FORK=restart: a child watches too */
static __thread unsigned watch_tick;
static _Atomic uint64_t watch_next_ns;
static _Atomic bool watch_soon;

static uint64_t anon_resident(void)
{
	char buf[128], *p = buf;
	int fd = dd_fd_open_temp("/proc/self/statm", O_RDONLY);
	ssize_t n = fd < 0 ? -1 : dd_fd_read_temp(fd, buf, sizeof(buf) - 1);
	unsigned long v[3];

	if (fd >= 0)
		dd_fd_close_temp(fd);
	if (n <= 0)
		return UINT64_MAX;   /* no /proc: start() says so */
	buf[n] = 0;
	for (int i = 0; i < 3; i++) {   /* size resident shared, in pages */
		char *end;
		v[i] = strtoul(p, &end, 10);
		if (end == p)
			return 0;
		p = end;
	}
	return v[1] > v[2] ? (uint64_t)(v[1] - v[2]) * DD_PAGE : 0;
}

void dd_pl_watch(bool may_start)
{
	struct timespec ts;
	struct rusage ru;

	if (dd_likely(state() != PL_WATCHING))
		return;
	if (!may_start) {   /* mmap, munmap, mremap: only ask */
		atomic_store_explicit(&watch_soon, true, memory_order_relaxed);
		return;
	}
	if ((++watch_tick & 255) && !atomic_load_explicit(&watch_soon, memory_order_relaxed))
		return;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	uint64_t now = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
	uint64_t next = atomic_load(&watch_next_ns);
	if (now < next || !atomic_compare_exchange_strong(&watch_next_ns, &next, now + 20000000ULL))
		return;
	atomic_store_explicit(&watch_soon, false, memory_order_relaxed);
	if (getrusage(RUSAGE_SELF, &ru) < 0 || (uint64_t)ru.ru_maxrss * 1024 < start_at)
		return;
	if (anon_resident() < start_at)
		return;
	int expect = PL_WATCHING;
	if (atomic_compare_exchange_strong(&pl.state, &expect, PL_STARTING))
		start();
}

/* ---- on or off, start, fork, stop ------------------------------------------ */

static bool env_is(const char *name, const char *val)
{
	const char *s = getenv(name);
	return s && strcasecmp(s, val) == 0;
}

/* Does LD_PRELOAD name libdedup.so (any directory, any version suffix)? */
static bool preloaded(void)
{
	const char *s = getenv("LD_PRELOAD");

	if (env_is("DEDUP_PRELOAD", "0") || env_is("DEDUP_PRELOAD", "off"))
		return false;
	if (env_is("DEDUP_PRELOAD", "1") || env_is("DEDUP_PRELOAD", "on"))
		return true;
	while (s && *s) {
		size_t n = strcspn(s, ": \t");
		const char *base = s;
		for (size_t i = 0; i < n; i++)
			if (s[i] == '/')
				base = s + i + 1;
		if ((size_t)(s + n - base) >= 11 && strncmp(base, "libdedup.so", 11) == 0)
			return true;
		s += n;
		while (*s == ':' || *s == ' ' || *s == '\t')
			s++;
	}
	return false;
}

/* No lock held across fork(): like the engine's prepare handler (engine.c,
 * prefork()), ours runs before the allocator's, and a thread holding an
 * allocator mutex may be waiting for pl.lock in an interposed mmap/munmap.
 * The child starts from clean tables (pl_child) whatever state it saw. */
static void pl_prepare(void) { }
static void pl_parent(void) { }

static void pl_child(void)
{
	bool watching = state() == PL_WATCHING;
	/* Only this thread exists. The engine's handler marked the engine a
	 * child; our registrations did not come along (no EVENT_FORK). */
	pthread_mutex_init(&pl.lock, NULL);
	atomic_flag_clear(&pl.ours_lock);
	pl.mine.n = 0;
	pl.thr_started = false;
	atomic_store(&pl.kicked, 0);
	atomic_store(&pl.round_wanted, false);
	for (unsigned i = 0; i < REPORT_SLOTS; i++)   /* a reporter may have died mid-slot */
		atomic_store(&pl.reported[i].state, SLOT_FREE);
	/* a parent that had not started: with DEDUP_FORK=restart the child
	 * keeps watch for itself */
	atomic_store(&pl.state, watching && watch_restart ? PL_WATCHING : PL_PASSIVE);
	atomic_store(&watch_next_ns, 0);
	/* The parent's userfaultfd: keeping it open here would keep its
	 * context alive after the parent closes it (dedup_shutdown), and a
	 * later madvise(DONTNEED) in the parent would then wait for a reader
	 * that no longer exists. */
	dd_fd_close(&eng.uffd);
}

static int start_thread(void)
{
	int r;

	atomic_store(&pl.stop, false);
	r = dd_thread_create(&pl.thr, dd_pl_reconcile_main, NULL);
	if (r)
		return -r;
	pl.thr_started = true;
	pthread_setname_np(pl.thr, "dedup-preload");
	return 0;
}

/*
 * What the host must allow before we start, checked here rather than left
 * to fail half-way (docs/preload.md, "Hostile hosts"). Each refusal is one
 * line, and the program runs as without us:
 *  - /proc/self/maps readable: finding the heap, our own mappings, the
 *    program's unseen munmaps all read it (a container may mount no /proc,
 *    or hide it);
 *  - RLIMIT_NOFILE of at least DD_MIN_NOFILE: our three or four descriptors
 *    sit at the top of the program's range (fds.c); below that they would
 *    take numbers the program may count on having;
 *  - no finite RLIMIT_AS: the engine reserves address space far beyond what
 *    it ever touches (the canonical store's view alone is DEDUP_STORE_MAX,
 *    64 GiB by default), all of which counts against RLIMIT_AS; taken from
 *    the program's limit, it would make its own malloc() fail.
 * A limit the program sets after we started is not watched.
 */
#define DD_MIN_NOFILE 128
static const char *sanitizer;   /* the constructor's findings (below) */
static bool valgrind;

static bool host_allows(void)
{
	struct rlimit rl;

	if (sanitizer) {
		dd_warn("not merging: the program runs under %s, whose runtime reads, poisons and "
			"unmaps memory from every thread, libdedup's included", sanitizer);
		return false;
	}
	if (valgrind) {
		dd_warn("not merging: the program runs under Valgrind, which runs one thread at a "
			"time: a page fault waiting for libdedup's thread would never end");
		return false;
	}
	int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/maps", O_RDONLY | O_CLOEXEC);
	char c;

	if (fd < 0 || read(fd, &c, 1) != 1) {
		if (fd >= 0)
			dd_sys_close(fd);
		dd_warn("not merging: /proc/self/maps cannot be read (/proc is not mounted, or "
			"hidden); libdedup needs it to find the program's memory");
		return false;
	}
	dd_sys_close(fd);
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < DD_MIN_NOFILE) {
		dd_warn("not merging: RLIMIT_NOFILE is %llu; libdedup needs at least %d to keep "
			"its descriptors out of the program's range", (unsigned long long)rl.rlim_cur,
			DD_MIN_NOFILE);
		return false;
	}
	if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
		dd_warn("not merging: RLIMIT_AS is %llu MiB; libdedup's address-space "
			"reservations would count against the program's limit",
			(unsigned long long)(rl.rlim_cur >> 20));
		return false;
	}
	return true;
}

/* Start (or, in a fork()ed child with DEDUP_FORK=restart, restart). */
static void start(void)
{
	int r;

	atomic_store(&pl.state, PL_STARTING);
	if (!host_allows()) {
		atomic_store(&pl.state, PL_PASSIVE);
		return;
	}
	/* Our tables only now, not in the constructor: a process that never
	 * starts the engine reserves nothing (RLIMIT_AS counts reservations). */
	if (!dd_pl_tables_init()) {
		dd_warn("preload: cannot map the preload tables; not merging");
		atomic_store(&pl.state, PL_PASSIVE);
		return;
	}
	r = dedup_init(NULL);
	if (r >= 0) {
		const char *x = getenv("DEDUP_EXCLUDE"), *bad;
		size_t badlen;
		if (x && dd_parse_exclude(x, &pl.conf_excl, &bad, &badlen) < 0) {
			/* excluding too little would merge what was meant to be
			 * left alone: better not to merge at all */
			dd_warn("DEDUP_EXCLUDE: '%.*s' is not heap, mmap or LO-HI (hex, LO < HI, "
				"at most 16 ranges); not merging", (int)badlen, bad);
			dedup_shutdown();
			r = -EINVAL;
		}
	}
	if (r < 0) {
		/* dedup_init() said why, in one line (DEDUP_LOG=quiet: nothing) */
		atomic_store(&pl.state, PL_PASSIVE);
		return;
	}
	/* libc may shrink or unmap what we register behind any interposer's
	 * back (glibc trims the brk heap with its internal sbrk): the engine
	 * reads our regions the safe way (scan.c, "fragile"). */
	eng.fragile_regions = true;
	/* spare mappings for an ENOMEM give-back (interpose.c, merge.c) */
	eng.keep_spares = true;
	/* Options (DEDUP_JEMALLOC, DEDUP_LOG) are loaded now. Only dlsym here;
	 * the dedup-preload thread installs the hooks (jemalloc.c). */
	dd_jemalloc_detect();
	eng.on_fds_lost = dd_pl_wake;
	/* ON before the thread starts: it stops when it finds us not ON. */
	pl.was_on = true;
	atomic_store(&pl.state, PL_ON);
	r = start_thread();
	if (r < 0) {
		dd_warn("preload: cannot start the preload thread: %s; not merging", strerror(-r));
		atomic_store(&pl.state, PL_PASSIVE);
		dedup_shutdown();
		return;
	}
	dd_info("preload: merging (reconcile every %llu ms, min region %llu bytes)",
		(unsigned long long)dd_opt.reconcile_ms, (unsigned long long)dd_opt.min_region);
}

/*
 * Called by fork() (child.c) in the child, after the merged pages it
 * inherited are guarded. The engine state a fork()ed child inherited belongs
 * to the parent: its userfaultfd, pagemap fd and store memfd (opened on the
 * parent's mm) and tables. With DEDUP_FORK=restart, let go of all of it
 * without touching anything the parent still uses (nothing is punched or
 * unregistered: this is the child's copy), so that dedup_init() can start
 * afresh.
 */
void dd_preload_forked(void)
{
	if (pl.was_on && dd_opt.fork_restart && state() == PL_PASSIVE) {
		pl.thr_started = false;
		dd_engine_child_reset();
		start();
	}
}

/* DEDUP_START and DEDUP_FORK, read by the constructor: the engine's
 * options are loaded only when it starts (a bad value is reported then). */
static uint64_t env_size(const char *name, uint64_t def)
{
	const char *s = getenv(name);
	uint64_t v;
	return s && *s && dd_parse_u64(s, true, &v) == 0 ? v : def;
}

/*
 * A sanitizer's runtime in the process: AddressSanitizer (its leak check
 * stops every thread, ours too, then reads all memory - a page in a merge
 * window would wait forever), ThreadSanitizer (its interceptors run in our
 * threads and unmap shadow and allocator memory we registered: our reader
 * thread waited on its own event), MemorySanitizer, HWASan, LeakSanitizer.
 * Such a build is a test build, where memory savings mean nothing and
 * the program must behave exactly as without us: we stay passive. The
 * runtime is in the executable (clang's default) or a library it needs
 * (gcc's); either way its entry points are global symbols. Found here, in
 * the constructor, where dlsym() may allocate. Said in one line when the
 * engine would start at once (DEDUP_START=0: host_allows); otherwise
 * preload mode goes passive in silence (preload_init). dedup-run puts a
 * needed runtime before libdedup.so in LD_PRELOAD, as ASan requires
 * (docs/preload.md, "Other preloaded libraries, and sanitizers").
 */
static const char *find_sanitizer(void)
{
	static const char *const rt[][2] = {
		{ "__asan_init", "AddressSanitizer" },  { "__tsan_init", "ThreadSanitizer" },
		{ "__msan_init", "MemorySanitizer" },   { "__hwasan_init", "HWAddressSanitizer" },
		{ "__lsan_init", "LeakSanitizer" },
	};
	const char *found = NULL;
	for (size_t i = 0; i < sizeof(rt) / sizeof(rt[0]) && !found; i++)
		if (dlsym(RTLD_DEFAULT, rt[i][0]))
			found = rt[i][1];
	(void)dlerror();   /* the program's next dlerror() must not see our misses */
	return found;
}

/* Valgrind: its synthetic CPU runs one thread at a time, so a thread that
 * faults on a page in a merge window holds the CPU our reader needs (and it
 * does not know the userfaultfd ioctls). It always preloads its
 * vgpreload_core-<arch>.so. */
static int vg_object(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)size;
	(void)data;
	const char *n = info->dlpi_name;
	return n && strstr(n, "/vgpreload_core-") != NULL;
}

__attribute__((constructor)) static void preload_init(void)
{
	dd_pl_resolve_alloc();
	if (!preloaded())
		return;
	sanitizer = find_sanitizer();
	valgrind = dl_iterate_phdr(vg_object, NULL) != 0;
	pthread_atfork(pl_prepare, pl_parent, pl_child);
	start_at = env_size("DEDUP_START", 64ULL << 20);
	watch_restart = env_is("DEDUP_FORK", "restart") || env_is("DEDUP_FORK", "1");
	if (start_at == 0) {
		start();
		return;
	}
	if (sanitizer || valgrind) {
		/* Passive at once: no watching (whose interposers go straight to
		 * the kernel, past a runtime's own mmap), and no line - through
		 * such a runtime's allocator the lazy start is hardly ever
		 * reached anyway (its free() does not call ours). */
		atomic_store(&pl.state, PL_PASSIVE);
		return;
	}
	atomic_store(&pl.state, PL_WATCHING);
	dd_pl_watch(true);
}

__attribute__((destructor)) static void preload_fini(void)
{
	if (state() != PL_ON)
		return;
	atomic_store(&pl.stop, true);
	if (pl.thr_started) {
		dd_pl_wake();
		pthread_join(pl.thr, NULL);
		pl.thr_started = false;
	}
	dd_shutdown(false);   /* prints the DEDUP_LOG=stats table; no unmerging at exit */
	atomic_store(&pl.state, PL_PASSIVE);
}
