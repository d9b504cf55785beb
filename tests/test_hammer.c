/* SPDX-License-Identifier: MIT */
/*
 * test_hammer: writer threads hammer pages while the engine merges them
 * continuously; no write is ever lost.
 *
 * Each cycle maps a fresh region of identical pages (so the engine has
 * merges to do), registers it, and lets W threads write random words into
 * their own pages - and sometimes write whole pages back to the common
 * content - while the engine runs with no pause and tiny batches. Every
 * write is mirrored in a shadow copy and read back at once; at the end of
 * a cycle every byte is compared with the shadow.
 *
 * A cycle proves something only if the engine merged pages while the
 * writers ran, so a cycle lasts at least a second and until MERGES merges
 * happened in it; how long that takes depends on how busy the machine is
 * (a loaded 2-core machine under ASan: a few seconds), so the test counts
 * merges, not seconds. The run fails if the engine has not done that for
 * every cycle within t_cap() (3 minutes) of the start.
 *
 * With DEDUP_TEST_DONTNEED=1 writers also discard pages (madvise
 * MADV_DONTNEED: the page must then read as zeros). It found two bugs
 * (merge.c, "Placing a merged run"): a freed slot under a copied-on-write
 * merged page (a discarded page read zeros, then the slot's next content),
 * and a run mapped before it was registered (a discard and read in
 * between read the canonical page).
 * With DEDUP_TEST_SIGNALS=1 a thread also sends the writers a signal storm,
 * so writers blocked on a protected page are interrupted and retry.
 *
 * CYCLES cycles (DEDUP_TEST_CYCLES), and more until DEDUP_TEST_SECONDS have
 * passed if that is set (for long runs by hand); DEDUP_TEST_SEED the seed.
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

#include "tdedup.h"
void dd_trace(char op, uintptr_t a, size_t len, long v);   /* internal, test only */

#define PAGES 512
#define WRITERS 2
#define CYCLES 4
#define MERGES 50   /* per cycle */

static char *region, *shadow;
static char base[T_PAGE];
static _Atomic int stop_flag;
static _Atomic unsigned long writes;
static unsigned seed0;
static pthread_t writers_t[WRITERS];
static _Atomic unsigned long signals;
static int use_dontneed;

static void on_signal(int sig) { atomic_fetch_add(&signals, 1); }

static void *signaller(void *arg)
{
	while (!atomic_load(&stop_flag)) {
		for (int i = 0; i < WRITERS; i++)
			pthread_kill(writers_t[i], SIGUSR1);
		usleep(50);
	}
	return NULL;
}

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void fail_at(size_t off, unsigned char want, unsigned char got)
{
	fprintf(stderr, "MISMATCH at %p (page %zu offset %zu): expected %#x got %#x (seed %u)\n",
		(void *)(region + off), off / T_PAGE, off % T_PAGE, want, got, seed0);
	if (getenv("T_DEBUG")) {
		fprintf(stderr, "now %llu\n", (unsigned long long)(t_now() * 1e6));
		FILE *f = fopen("/proc/self/smaps", "r");
		char line[512];
		int on = 0;
		uintptr_t x = (uintptr_t)(region + off);
		while (fgets(line, sizeof line, f)) {
			unsigned long lo, hi;
			if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, ' ') &&
			    line[strlen(line) - 1] == '\n' && (line[0] != 'V'))
				on = (lo <= x && x < hi) && !strchr(line, ':') ? 1 : (strstr(line, "-") && sscanf(line, "%lx-%lx ", &lo, &hi) == 2 ? (lo <= x && x < hi) : on);
			if (on && (strstr(line, "-") || strstr(line, "VmFlags") || strstr(line, "Rss") || strstr(line, "Anonymous")))
				fputs(line, stderr);
		}
		fclose(f);
		size_t pg = off / T_PAGE * T_PAGE;
		fprintf(stderr, "page equals base: %d, equals shadow: %d\n",
			!memcmp(region + pg, base, T_PAGE), !memcmp(region + pg, shadow + pg, T_PAGE));
		void dd_trace_dump(uintptr_t);
		dd_trace_dump(x);
		int pm = open("/proc/self/pagemap", O_RDONLY);
		uint64_t e = 0;
		pread(pm, &e, 8, (off_t)(x / T_PAGE * 8));
		fprintf(stderr, "pagemap %#llx present %d file %d uffd-wp %d\n", (unsigned long long)e,
			(int)(e >> 63), (int)(e >> 61 & 1), (int)(e >> 57 & 1));
	}
	exit(T_FAIL);
}

static void *writer(void *arg)
{
	long id = (long)arg;
	uint64_t s = seed0 * 7919ULL + (uint64_t)id * 104729ULL + 1;

	while (!atomic_load(&stop_flag)) {
		size_t page = (rnd(&s) % (PAGES / WRITERS)) * WRITERS + (size_t)id;
		char *p = region + page * T_PAGE, *sh = shadow + page * T_PAGE;
		uint64_t action = rnd(&s) % 64;
		if (action < 4) {
			memcpy(p, base, T_PAGE);
			memcpy(sh, base, T_PAGE);
		} else if (action == 4 && use_dontneed) {
			dd_trace('d', (uintptr_t)p, T_PAGE, p[0]);
			CHECK(madvise(p, T_PAGE, MADV_DONTNEED) == 0);
			dd_trace('e', (uintptr_t)p, T_PAGE, p[0]);
			memset(sh, 0, T_PAGE);
			for (size_t i = 0; i < T_PAGE; i += 64)
				if (p[i])
					fail_at(page * T_PAGE + i, 0, (unsigned char)p[i]);
		} else {
			size_t off = (rnd(&s) % (T_PAGE / 8)) * 8;
			uint64_t v = rnd(&s);
			memcpy(p + off, &v, 8);
			memcpy(sh + off, &v, 8);
			if (memcmp(p + off, &v, 8))
				fail_at(page * T_PAGE + off, (unsigned char)v, (unsigned char)p[off]);
		}
		atomic_fetch_add(&writes, 1);
		if (rnd(&s) % 64 == 0)
			usleep(200);   /* let pages settle so they become candidates */
	}
	return NULL;
}

int main(void)
{
	const char *e = getenv("DEDUP_TEST_SECONDS");
	double seconds = e ? atof(e) : 0;
	e = getenv("DEDUP_TEST_CYCLES");
	int ncycles = e ? atoi(e) : CYCLES;
	e = getenv("DEDUP_TEST_SEED");
	seed0 = e ? (unsigned)atoi(e) : (unsigned)time(NULL);
	int use_signals = getenv("DEDUP_TEST_SIGNALS") != NULL;
	use_dontneed = getenv("DEDUP_TEST_DONTNEED") != NULL;
	if (use_signals) {
		struct sigaction sa = { .sa_handler = on_signal };   /* no SA_RESTART */
		sigaction(SIGUSR1, &sa, NULL);
	}
	struct dedup_config cfg = { .size = sizeof(cfg), .scan_interval_ms = 1,
				    .cpu_percent = 100, .batch_pages = 8 };
	int r = dedup_init(&cfg);
	if (r == -EPERM || r == -ENOSYS)
		t_skip("no usable userfaultfd");
	CHECK(r == 0);
	fprintf(stderr, "seed %u, %d cycles of %d merges each\n", seed0, ncycles, MERGES);
	t_fill(base, seed0);
	shadow = malloc(PAGES * T_PAGE);

	double t0 = t_now(), end = t0 + seconds, give_up = t0 + t_cap();
	int cycles = 0;
	bool starved = false;
	while (!starved && (cycles < ncycles || t_now() < end)) {
		region = t_map_anon(PAGES * T_PAGE);
		for (size_t i = 0; i < PAGES; i++)
			memcpy(region + i * T_PAGE, base, T_PAGE);
		memcpy(shadow, region, PAGES * T_PAGE);
		uint64_t m0 = t_stats().merges, merged;
		double c0 = t_now();
		CHECK(dedup_register(region, PAGES * T_PAGE) == 0);
		atomic_store(&stop_flag, 0);
		pthread_t *t = writers_t, sig;
		for (long i = 0; i < WRITERS; i++)
			pthread_create(&t[i], NULL, writer, (void *)i);
		if (use_signals)
			pthread_create(&sig, NULL, signaller, NULL);
		/* at least a second of writing, and until MERGES merges */
		while ((merged = t_stats().merges - m0) < MERGES || t_now() < c0 + 1.0) {
			if (t_now() > give_up) {
				starved = true;
				break;
			}
			usleep(10000);
		}
		atomic_store(&stop_flag, 1);
		for (int i = 0; i < WRITERS; i++)
			pthread_join(t[i], NULL);
		if (use_signals)
			pthread_join(sig, NULL);
		for (size_t off = 0; off < PAGES * T_PAGE; off++)
			if (region[off] != shadow[off])
				fail_at(off, (unsigned char)shadow[off], (unsigned char)region[off]);
		CHECK(dedup_unregister(region, PAGES * T_PAGE) == 0);
		munmap(region, PAGES * T_PAGE);
		fprintf(stderr, "cycle %d: %llu merges in %.1f s%s\n", cycles,
			(unsigned long long)merged, t_now() - c0,
			starved ? ", when the cap ran out" : "");
		cycles += !starved;
	}
	struct dedup_stats st = t_stats();
	t_print_stats("hammer");
	fprintf(stderr, "%d cycles in %.1f s, %lu writes verified, %llu merges, %lu signals\n",
		cycles, t_now() - t0, (unsigned long)atomic_load(&writes),
		(unsigned long long)st.merges, (unsigned long)atomic_load(&signals));
	CHECK(dedup_shutdown() == 0);
	if (starved) {   /* merging did not really happen: the run proves nothing */
		fprintf(stderr, "FAIL: %d of %d cycles (each 1 s and %d merges) done within %g s\n",
			cycles, ncycles, MERGES, t_cap());
		return T_FAIL;
	}
	return T_PASS;
}
