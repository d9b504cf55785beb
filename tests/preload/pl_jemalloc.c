/* SPDX-License-Identifier: MIT */
/*
 * pl_jemalloc - a program whose allocator is a shared jemalloc (preloaded
 * after libdedup), run by pl_jemalloc.sh with purging forced
 * (MALLOC_CONF=dirty_decay_ms:0,muzzy_decay_ms:0), with and without the
 * extent hooks (DEDUP_JEMALLOC=1/0) and with retain:false.
 *
 *  1. Hooks. On: libdedup wraps the extent hooks of arena 0, of an arena the
 *     program creates later (arenas.create) and of the huge arena jemalloc
 *     creates for the first allocation above opt.oversize_threshold. Fresh
 *     extents of the created arena are registered: bytes_registered grows by
 *     their size; their addresses go to stderr ("fresh extent 0x..."), where
 *     pl_jemalloc.sh finds libdedup's "allocator hook reported" line for
 *     each (DEDUP_LOG=debug). Off: every arena keeps jemalloc's own hooks,
 *     and the reconcile registers the same extents.
 *  2. Merging: 32 identical page-aligned 1 MiB buffers merge, and Pss drops
 *     by most of the duplicate bytes.
 *  3. Zeros: after free() (purged at once: MADV_DONTNEED) calloc() reuses the
 *     purged extents without clearing them, and must read zeros, three
 *     rounds, the later ones over extents that were merged.
 *
 * stdout: what the program computed (digests of its buffers, checks passed),
 * the same in every configuration; pl_jemalloc.sh compares them.
 * Exit 0 pass, 1 fail, 77 skip.
 */
#include "pl.h"

#define NBUF 32
#define BUFSZ ((size_t)1 << 20)

/* From <jemalloc/jemalloc.h> (5.x); the program does not link jemalloc. */
#define MALLOCX_ALIGN_4K 12
#define MALLOCX_TCACHE_NONE (1 << 8)
#define MALLOCX_ARENA(a) ((int)(((unsigned)(a) + 1) << 20))

typedef int (*mallctl_fn)(const char *, void *, size_t *, void *, size_t);
typedef void *(*mallocx_fn)(size_t, int);
typedef void (*dallocx_fn)(void *, int);

static mallctl_fn ctl;
static mallocx_fn je_mallocx;
static dallocx_fn je_dallocx;
static bool hooks_on;

/* FNV-1a over a buffer: the program's "result" */
static uint64_t digest(uint64_t h, const void *p, size_t len)
{
	const unsigned char *c = p;
	for (size_t i = 0; i < len; i++)
		h = (h ^ c[i]) * 0x100000001b3ULL;
	return h;
}

/* Which object holds arena i's extent alloc hook: 'd' libdedup, 'j' jemalloc,
 * '?' other, 0 if the arena does not exist. */
static char hooks_owner(unsigned i)
{
	char name[64];
	void **h = NULL;
	size_t len = sizeof(h);
	Dl_info info;

	snprintf(name, sizeof(name), "arena.%u.extent_hooks", i);
	if (ctl(name, &h, &len, NULL, 0) || !h || !dladdr(h[0], &info) || !info.dli_fname)
		return 0;
	if (strstr(info.dli_fname, "libdedup"))
		return 'd';
	return strstr(info.dli_fname, "jemalloc") ? 'j' : '?';
}

/* Wait for arena i's hooks to be libdedup's (hooks on: up to t_cap()) or
 * check that they stay jemalloc's for a while (off: they would be wrapped
 * within one reconcile period, 200 ms in the tests). */
static void expect_hooks(unsigned i, const char *what)
{
	double t0 = t_now();
	char o;

	for (;;) {
		o = hooks_owner(i);
		if (hooks_on && o == 'd')
			break;
		if (!hooks_on && t_now() - t0 > 1.0)
			break;
		if (hooks_on && t_now() - t0 > t_cap())
			break;
		usleep(20000);
	}
	fprintf(stderr, "%s (arena %u): extent hooks from %s after %.2f s\n", what, i,
		o == 'd' ? "libdedup" : o == 'j' ? "jemalloc" : "?", t_now() - t0);
	if (o != (hooks_on ? 'd' : 'j')) {
		fprintf(stderr, "FAIL: %s: expected %s's extent hooks\n", what,
			hooks_on ? "libdedup" : "jemalloc");
		exit(T_FAIL);
	}
}

/* 1. hooks on existing and later arenas; fresh extents get registered */
static void hooks(void)
{
	static const size_t mib[] = { 2, 4, 8, 16 };
#define NMIB (sizeof(mib) / sizeof(mib[0]))
	char *fresh[NMIB];
	unsigned arena = 0, nauto = 0;
	size_t len = sizeof(arena);
	uint64_t h = 0xcbf29ce484222325ULL;

	expect_hooks(0, "arena 0");

	CHECK(ctl("arenas.create", &arena, &len, NULL, 0) == 0);
	expect_hooks(arena, "created arena");
	for (size_t k = 0; k < NMIB; k++) {
		size_t size = mib[k] << 20;
		uint64_t before = pl_stats().bytes_registered;
		double t0 = t_now();
		/* each larger than all earlier ones together: a new extent */
		fresh[k] = je_mallocx(size, MALLOCX_ARENA(arena) | MALLOCX_TCACHE_NONE |
						    MALLOCX_ALIGN_4K);
		CHECK(fresh[k]);
		while (pl_stats().bytes_registered < before + size && t_now() - t0 < t_cap())
			usleep(1000);
		fprintf(stderr, "fresh extent %p size %zu: registered after %.3f s\n",
			(void *)fresh[k], size, t_now() - t0);
		CHECK(pl_stats().bytes_registered >= before + size);
		pl_fill(fresh[k], size / T_PAGE, 100 + k);
	}
	for (size_t k = 0; k < NMIB; k++) {
		CHECK(pl_check(fresh[k], (mib[k] << 20) / T_PAGE, 100 + k));
		h = digest(h, fresh[k], mib[k] << 20);
		je_dallocx(fresh[k], MALLOCX_TCACHE_NONE);
	}
	printf("created arena: %zu fresh extents, digest %016llx\n", NMIB,
	       (unsigned long long)h);

	/* the huge arena: created by the first allocation above the threshold */
	size_t threshold = 0;
	len = sizeof(nauto);
	CHECK(ctl("opt.narenas", &nauto, &len, NULL, 0) == 0);
	len = sizeof(threshold);
	if (ctl("opt.oversize_threshold", &threshold, &len, NULL, 0) == 0 && threshold &&
	    threshold <= ((size_t)64 << 20)) {
		char *big = malloc(threshold + (4 << 20));
		CHECK(big);
		memset(big, 0x11, threshold + (4 << 20));
		expect_hooks(nauto, "huge arena");
		free(big);
	}
	printf("hooks: checked\n");
}

/* 2 and 3: merging, Pss, zeros after purge */
static void merge_and_zeros(void)
{
	char *tmpl = malloc(BUFSZ), *buf[NBUF];
	uint64_t h = 0xcbf29ce484222325ULL;

	CHECK(tmpl);
	pl_fill(tmpl, BUFSZ / T_PAGE, 71);
	for (int round = 0; round < 3; round++) {
		struct dedup_stats s0 = pl_stats(), s;
		long pss_start = t_rollup_kb("Pss:");

		for (int i = 0; i < NBUF; i++) {
			/* page aligned: jemalloc puts a plain 1 MiB allocation
			 * at a random cache-line offset (cache-oblivious), and
			 * copies at different offsets have no page in common */
			buf[i] = aligned_alloc(T_PAGE, BUFSZ);
			CHECK(buf[i]);
			memcpy(buf[i], tmpl, BUFSZ);
		}
		/* Round 0 merges. Later rounds reuse the purged extents: those
		 * are merged pieces (file mappings) that the copies wrote into,
		 * and the engine does not merge such copied pages again (see
		 * README "Limits"); they are only checked for content. */
		if (round == 0) {
			uint64_t want = (uint64_t)(NBUF - 1) * (BUFSZ / T_PAGE) * 8 / 10;
			long pss0 = pss_start + (long)(NBUF * BUFSZ >> 10), pss1;
			s = pl_wait_merged(s0.merges + want);
			pss1 = t_rollup_kb("Pss:");
			for (double t0 = t_now(); pss0 - pss1 < (long)(want * 4) && t_now() - t0 < t_cap();) {
				usleep(50000);
				pss1 = t_rollup_kb("Pss:");
			}
			fprintf(stderr, "Pss %ld kB + %ld kB allocated -> %ld kB\n", pss_start,
				(long)(NBUF * BUFSZ >> 10), pss1);
			CHECK(pss0 - pss1 >= (long)(want * 4));
			printf("merge: Pss dropped by at least %llu kB\n",
			       (unsigned long long)(want * 4));
		} else {
			usleep(300 * 1000);
			s = pl_stats();
		}
		pl_print("merged", &s);
		for (int i = 0; i < NBUF; i++) {
			CHECK(memcmp(buf[i], tmpl, BUFSZ) == 0);
			h = digest(h, buf[i], BUFSZ);
		}
		for (int i = 0; i < NBUF; i++)
			free(buf[i]);   /* decay 0: purged at once (MADV_DONTNEED) */
		for (int i = 0; i < NBUF; i++) {
			buf[i] = calloc(1, BUFSZ);
			CHECK(buf[i]);
			if (!pl_is_zero(buf[i], BUFSZ)) {
				fprintf(stderr, "FAIL: round %d: calloc()ed buffer %d is not zero\n",
					round, i);
				exit(T_FAIL);
			}
		}
		for (int i = 0; i < NBUF; i++)
			free(buf[i]);
		printf("round %d: contents digest %016llx, calloc after purge: zeros\n", round,
		       (unsigned long long)h);
	}
	free(tmpl);
}

int main(void)
{
	const char *e = getenv("DEDUP_JEMALLOC");

	pl_need_uffd();
	ctl = (mallctl_fn)dlsym(RTLD_DEFAULT, "mallctl");
	je_mallocx = (mallocx_fn)dlsym(RTLD_DEFAULT, "mallocx");
	je_dallocx = (dallocx_fn)dlsym(RTLD_DEFAULT, "dallocx");
	if (!ctl || !je_mallocx || !je_dallocx)
		t_skip("jemalloc is not the allocator (preload libjemalloc.so.2)");
	hooks_on = !e || !(strcmp(e, "0") == 0 || strcasecmp(e, "off") == 0);
	setvbuf(stdout, NULL, _IOLBF, 0);
	hooks();
	merge_and_zeros();
	fprintf(stderr, "PASS\n");
	return T_PASS;
}
