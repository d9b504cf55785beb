/* SPDX-License-Identifier: MIT */
/*
 * pl_calls [SEED [OPS [THREADS]]] - random memory calls of an unmodified
 * program on merged memory, against a shadow of every page.
 *
 * Each of THREADS threads (default 1) has its own arena of NPG pages whose content comes from a small palette, so that
 * the engine keeps merging it while the program, from SEED, does OPS of:
 *   write     a page gets a palette page (merges again) or a unique one
 *   poke      one byte of a page (copy on write of a merged page)
 *   dontneed  MADV_DONTNEED of a range: zeros
 *   free      MADV_FREE of a range, then every page of it written again
 *   lock      mlock of a range (at most MAXLOCK pages locked), or munlock
 *   wipe      MADV_WIPEONFORK or MADV_KEEPONFORK of a range
 *   protect   mprotect(PROT_READ) of a range, read it, back to read-write
 *   remap     mremap of a range to a free place and back (MREMAP_FIXED),
 *             read at the place between (ranges of one kind of page only:
 *             the same lock and wipe state, as one VMA would be)
 *   replace   munmap of a range and mmap(MAP_FIXED) there again: zeros
 *   uffd      the program's own userfaultfd: register a range (MISSING),
 *             discard a page there and read it (the program's handler fills
 *             it), unregister (rare: the range is excluded for good)
 *   fork      a child reads every page (zeros where wiped on fork)
 *   verify    every page
 * with ranges cut anywhere, merged runs included. Every call must succeed
 * and every page read what the shadow says. Each thread runs until it has
 * made OPS calls and MERGES pages were merged meanwhile (t_cap() at most): a
 * run that merges nothing proves nothing. With several threads the calls
 * race each other, the engine and the reader: the arenas merge against the
 * same canonical pages, a call in one arena runs while another arena's
 * range is being moved, locked or unmerged, and a fork() child checks the
 * arena of the thread that forked (the others may be mid-call).
 * To chase a failure: PL_CALLS_CHECK_MAPS=1 checks every page and the
 * arena's mappings after every call (names the call that broke it;
 * PL_CALLS_VERIFY_EACH=1 the pages only, which changes the timing less),
 * PL_CALLS_DUMP_OP=N prints the mappings of call N's range before and
 * after it, PL_CALLS_SKIP=3,7 leaves calls out by number (write 0 ...
 * verify 11, in the order above), and PL_CALLS_NATIVE=1 runs without
 * libdedup, to check the model itself. Found on 2026-12-07: the mremap of
 * a merged range half done by Linux 6.17+ (remap.c), discard marks left
 * behind by an mremap (discard.c), MADV_FREE's REMOVE events taken for
 * discards (discard.c), an unmerged run given its neighbour's
 * MADV_WIPEONFORK (merge.c), and the program's REMAP taken for the
 * merger's own (engine.c).
 */
#include "pl.h"

#include <poll.h>
#include <stdatomic.h>
#include <sys/mman.h>

#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#define MADV_KEEPONFORK 19
#endif

#define NPG 1024
#define MAXLEN 96      /* pages per range at most */
#define MAXLOCK 256    /* pages locked at most (RLIMIT_MEMLOCK is often 8 MiB) */
#define PALETTE 5
#define MERGES 2000
#define HIST 512      /* calls remembered per thread, for a failure */

struct pg {
	uint64_t seed;   /* t_fill(seed), or zeros if 0 */
	int16_t off;     /* a poked byte, or -1 */
	uint8_t val;
	bool locked, wipe;
};

/* One thread's calls: its arena, the shadow, its own userfaultfd */
struct th {
	char *arena, *scratch;
	struct pg sh[NPG];
	uint64_t rng, op, counts[12];
	int uffd;
	_Atomic uint64_t uffd_seed;
	long nlocked;
	pthread_t thr, handler;
	int result;
	struct { uint64_t op; uint16_t i, n; uint8_t a; } hist[HIST];   /* the last calls */
};

static const char *const names[12] = { "write",   "poke",  "dontneed", "free",
					"lock",    "wipe",  "protect",  "remap",
					"replace", "uffd",  "fork",     "verify" };
static uint64_t nops, merges0;
static bool native, check_maps, verify_each, skip[12];
static uint64_t dump_op = UINT64_MAX;

static uint64_t rnd(struct th *t)
{
	t->rng ^= t->rng << 13;
	t->rng ^= t->rng >> 7;
	t->rng ^= t->rng << 17;
	return t->rng;
}

static void expect_page(char *buf, const struct pg *s)
{
	if (s->seed)
		t_fill(buf, s->seed);
	else
		memset(buf, 0, T_PAGE);
	if (s->off >= 0)
		buf[s->off] = (char)s->val;
}

static bool page_ok(struct th *t, const char *p, size_t i, bool wiped, const char *when)
{
	char want[T_PAGE] __attribute__((aligned(64)));
	struct pg s = t->sh[i];
	if (wiped)
		s = (struct pg){ 0, -1, 0, false, false };
	expect_page(want, &s);
	if (memcmp(p, want, T_PAGE) == 0)
		return true;
	size_t b = 0;
	while (p[b] == want[b])
		b++;
	fprintf(stderr, "%d: FAIL (%s, arena %p, op %llu, seed %llu): page %zu byte %zu reads %#x, "
		"not %#x\n", (int)getpid(), when, (void *)t->arena, (unsigned long long)t->op,
		(unsigned long long)s.seed, i, b, p[b] & 0xff, want[b] & 0xff);
	/* this thread's last calls that covered the page, oldest first */
	for (uint64_t k = t->op >= HIST ? t->op - HIST + 1 : 0; k <= t->op; k++) {
		const typeof(t->hist[0]) *h = &t->hist[k % HIST];
		if (h->op == k && h->i <= i && i < (size_t)h->i + h->n)
			fprintf(stderr, "  op %llu: %s of pages [%u, %u)\n", (unsigned long long)k,
				names[h->a], h->i, h->i + h->n);
	}
	return false;
}

static bool all_ok(struct th *t, bool child, const char *when)
{
	for (size_t i = 0; i < NPG; i++)
		if (!page_ok(t, t->arena + i * T_PAGE, i, child && t->sh[i].wipe, when))
			return false;
	return true;
}

static void write_page(struct th *t, size_t i, uint64_t seed)
{
	t_fill(t->arena + i * T_PAGE, seed);
	t->sh[i].seed = seed;
	t->sh[i].off = -1;
}

static void *handler(void *arg)
{
	struct th *t = arg;
	char *fill = t_map_anon(T_PAGE);
	for (;;) {
		struct pollfd p = { t->uffd, POLLIN, 0 };
		if (poll(&p, 1, -1) <= 0)
			continue;
		struct uffd_msg m;
		if (read(t->uffd, &m, sizeof(m)) != sizeof(m) || m.event != UFFD_EVENT_PAGEFAULT)
			continue;
		t_fill(fill, atomic_load(&t->uffd_seed));
		struct uffdio_copy c = { .dst = m.arg.pagefault.address & ~(uintptr_t)(T_PAGE - 1),
					 .src = (uintptr_t)fill, .len = T_PAGE };
		CHECK(ioctl(t->uffd, UFFDIO_COPY, &c) == 0);
	}
	return NULL;
}

/* A PROT_NONE reservation for remap (at want, if that is free): MREMAP_FIXED
 * replaces it, and no other mapping can be in its place meanwhile. */
static char *reserve(char *want)
{
	char *r = mmap(want, MAXLEN * T_PAGE, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (want ? MAP_FIXED_NOREPLACE : 0),
		       -1, 0);
	if (r == MAP_FAILED && want)
		return reserve(NULL);
	CHECK(r != MAP_FAILED);
	return r;
}

/* The mappings over [lo, hi) (smaps header and VmFlags), for a failure */
static void dump_maps(const char *lo, const char *hi)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	bool in = false;
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = a < (uintptr_t)hi && b > (uintptr_t)lo;
			if (in)
				fprintf(stderr, "  %s", line);
		} else if (in && !strncmp(line, "VmFlags:", 8)) {
			fprintf(stderr, "    %s", line);
		}
	}
	fclose(f);
}

/* The first page of [lo, hi) in no mapping, or NULL */
static char *hole_in(char *lo, char *hi)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	uintptr_t at = (uintptr_t)lo;
	CHECK(f != NULL);
	while (fgets(line, sizeof(line), f) && at < (uintptr_t)hi) {
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx ", &a, &b) != 2 || b <= at)
			continue;
		if (a > at)
			break;
		at = b;
	}
	fclose(f);
	return at < (uintptr_t)hi ? (char *)at : NULL;
}

/* A call of the program on [p, p + len) that must succeed; on failure, the
 * mappings there now */
#define CALL(expr)                                                                           \
	do {                                                                                 \
		if ((expr) != 0) {                                                           \
			int e_ = errno;                                                      \
			fprintf(stderr, "FAIL (arena %p, op %llu, pages [%zu, %zu)): %s: %s\n",  \
				(void *)t->arena, (unsigned long long)t->op, i, i + n, #expr,    \
				strerror(e_));                                               \
			dump_maps(p, p + len);                                               \
			return T_FAIL;                                                       \
		}                                                                            \
	} while (0)

/* One thread's OPS calls on its arena; T_PASS or T_FAIL */
static int run(struct th *t)
{
	double t0 = t_now();
	uint64_t merged = 0;
	char *arena = t->arena;
	struct pg *sh = t->sh;
	if (check_maps || verify_each)
		fprintf(stderr, "arena %p, %d pages\n", (void *)arena, NPG);
	for (; t->op < nops || merged < MERGES; t->op++) {
		uint64_t op = t->op;
		if (t_now() - t0 > t_cap()) {
			fprintf(stderr, "FAIL: %llu ops and %llu merges after %.0f s\n",
				(unsigned long long)op, (unsigned long long)merged, t_cap());
			return T_FAIL;
		}
		size_t i = rnd(t) % NPG, n = 1 + rnd(t) % MAXLEN;
		if (i + n > NPG)
			n = NPG - i;
		char *p = arena + i * T_PAGE;
		size_t len = n * T_PAGE;
		/* lock, wipe and uffd exclude their range from merging until it is
		 * unmapped (replace): rarer than replace */
		static const unsigned weight[12] = { 30, 8, 8, 6, 4, 4, 7, 8, 14, 1, 2, 8 };
		unsigned k = (unsigned)(rnd(t) % 100);
		int a = 0;
		while (k >= weight[a])
			k -= weight[a++];
		if (skip[a])
			continue;
		t->counts[a]++;
		if (dump_op == op) {
			fprintf(stderr, "op %llu: %s of pages [%zu, %zu) at %p; before:\n",
				(unsigned long long)op, names[a], i, i + n, (void *)p);
			dump_maps(p, p + n * T_PAGE);
		}
		if (a == 2 || a == 3)   /* DONTNEED and FREE fail (EINVAL) on locked pages */
			for (size_t j = i; j < i + n; j++)
				if (sh[j].locked) {
					n = j - i;
					break;
				}
		if (!n)
			continue;
		len = n * T_PAGE;
		t->hist[op % HIST].op = op;
		t->hist[op % HIST].a = (uint8_t)a;
		t->hist[op % HIST].i = (uint16_t)i;
		t->hist[op % HIST].n = (uint16_t)n;
		switch (a) {
		case 0:   /* write */
			for (size_t j = i; j < i + n && j < i + 8; j++)
				write_page(t, j, rnd(t) % 4 ? 1 + rnd(t) % PALETTE : 1000 + rnd(t));
			break;
		case 1: {   /* poke */
			size_t off = rnd(t) % T_PAGE;
			uint8_t v = (uint8_t)rnd(t);
			p[off] = (char)v;
			if (sh[i].off >= 0 && (size_t)sh[i].off != off) {   /* keep one poke exact */
				write_page(t, i, sh[i].seed ? sh[i].seed : 1);
				p[off] = (char)v;
			}
			sh[i].off = (int16_t)off;
			sh[i].val = v;
			break;
		}
		case 2:   /* dontneed */
			CALL(madvise(p, len, MADV_DONTNEED));
			for (size_t j = i; j < i + n; j++) {
				sh[j].seed = 0;
				sh[j].off = -1;
			}
			break;
		case 3:   /* free, then written again */
			CALL(madvise(p, len, MADV_FREE));
			for (size_t j = i; j < i + n; j++)
				write_page(t, j, 1 + rnd(t) % PALETTE);
			break;
		case 4:   /* lock or unlock */
			if (rnd(t) % 2 && t->nlocked + (long)n <= MAXLOCK) {
				CALL(mlock(p, len));
				for (size_t j = i; j < i + n; j++)
					t->nlocked += !sh[j].locked, sh[j].locked = true;
			} else {
				CALL(munlock(p, len));
				for (size_t j = i; j < i + n; j++)
					t->nlocked -= sh[j].locked, sh[j].locked = false;
			}
			break;
		case 5: {   /* wipe or keep on fork */
			bool w = rnd(t) % 2;
			CALL(madvise(p, len, w ? MADV_WIPEONFORK : MADV_KEEPONFORK));
			for (size_t j = i; j < i + n; j++)
				sh[j].wipe = w;
			break;
		}
		case 6:   /* protect */
			CALL(mprotect(p, len, PROT_READ));
			for (size_t j = i; j < i + n; j++)
				if (!page_ok(t, arena + j * T_PAGE, j, false, "read-only"))
					return T_FAIL;
			CALL(mprotect(p, len, PROT_READ | PROT_WRITE));
			break;
		case 7: {   /* remap away and back, one kind of page only */
			size_t j = i + 1;
			while (j < i + n && sh[j].locked == sh[i].locked && sh[j].wipe == sh[i].wipe)
				j++;
			len = (j - i) * T_PAGE;
			if (mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, t->scratch) != t->scratch) {
				fprintf(stderr, "FAIL (op %llu): mremap away of pages [%zu, %zu) at %p: %s "
					"(a hole at %p)\n", (unsigned long long)op, i, j, (void *)p,
					strerror(errno), (void *)hole_in(p, p + len));
				dump_maps(p, p + len);
				return T_FAIL;
			}
			for (size_t q = i; q < j; q++)
				if (!page_ok(t, t->scratch + (q - i) * T_PAGE, q, false, "moved"))
					return T_FAIL;
			if (mremap(t->scratch, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, p) != p) {
				fprintf(stderr, "FAIL (arena %p, op %llu): mremap back of pages [%zu, %zu) "
					"from %p: %s; there:\n", (void *)arena, (unsigned long long)op,
					i, j, (void *)t->scratch, strerror(errno));
				dump_maps(t->scratch, t->scratch + len);
				fprintf(stderr, "  and at the arena:\n");
				dump_maps(p, p + len);
				return T_FAIL;
			}
			if (len < MAXLEN * T_PAGE)   /* what is left of the reservation */
				CHECK(munmap(t->scratch + len, MAXLEN * T_PAGE - len) == 0);
			t->scratch = reserve(t->scratch);
			break;
		}
		case 8:   /* replace */
			CALL(munmap(p, len));
			if (mmap(p, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
				 -1, 0) != p) {
				fprintf(stderr, "FAIL (op %llu): mmap again: %s\n",
					(unsigned long long)op, strerror(errno));
				return T_FAIL;
			}
			for (size_t j = i; j < i + n; j++) {
				t->nlocked -= sh[j].locked;
				sh[j] = (struct pg){ 0, -1, 0, false, false };
			}
			break;
		case 9: {   /* the program's own userfaultfd */
			if (t_uffd_register(t->uffd, p, len, UFFDIO_REGISTER_MODE_MISSING) != 0) {
				fprintf(stderr, "FAIL (op %llu): UFFDIO_REGISTER: %s\n",
					(unsigned long long)op, strerror(errno));
				return T_FAIL;
			}
			size_t j = i + rnd(t) % n;
			if (!sh[j].locked) {
				uint64_t s = 5000 + rnd(t) % 1000;
				atomic_store(&t->uffd_seed, s);
				CALL(madvise(arena + j * T_PAGE, T_PAGE, MADV_DONTNEED));
				sh[j].seed = s;
				sh[j].off = -1;
			}
			if (!page_ok(t, arena + j * T_PAGE, j, false, "own uffd"))
				return T_FAIL;
			struct uffdio_range r = { (uintptr_t)p, len };
			CALL(ioctl(t->uffd, UFFDIO_UNREGISTER, &r));
			break;
		}
		case 10: {   /* fork */
			fflush(NULL);
			pid_t pid = fork();
			CHECK(pid >= 0);
			if (pid == 0) {
				if (all_ok(t, true, "child"))
					_exit(0);
				if (getenv("PL_CALLS_CHECK_MAPS"))
					dump_maps(arena, arena + NPG * T_PAGE);
				_exit(1);
			}
			int st;
			CHECK(waitpid(pid, &st, 0) == pid);
			if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
				fprintf(stderr, "FAIL (op %llu): child status %#x\n",
					(unsigned long long)op, st);
				return T_FAIL;
			}
			break;
		}
		case 11:
			if (!all_ok(t, false, "verify"))
				return T_FAIL;
			break;
		}
		if (dump_op == op) {
			fprintf(stderr, "after:\n");
			dump_maps(p, p + n * T_PAGE);
		}
		if ((check_maps || verify_each) && !all_ok(t, false, names[a])) {
			fprintf(stderr, "  after %s of pages [%zu, %zu)\n", names[a], i, i + n);
			return T_FAIL;
		}
		char *hole;
		if (check_maps && (hole = hole_in(arena, arena + NPG * T_PAGE))) {
			fprintf(stderr, "FAIL (op %llu, %s of pages [%zu, %zu)): page %zu unmapped\n",
				(unsigned long long)op, names[a], i, i + n,
				(size_t)(hole - arena) / T_PAGE);
			return T_FAIL;
		}
		merged = native ? MERGES : pl_stats().merges - merges0;
		if (op % 64 == 63)
			usleep(2000);   /* the engine gets a pass now and then */
	}
	if (!all_ok(t, false, "end"))
		return T_FAIL;
	return T_PASS;
}

static void *run_thread(void *arg)
{
	struct th *t = arg;
	t->result = run(t);
	return NULL;
}

int main(int argc, char **argv)
{
	uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : 1;
	int nth = argc > 3 ? atoi(argv[3]) : 1;
	nops = argc > 2 ? strtoull(argv[2], NULL, 0) : 4000;
	CHECK(nth >= 1 && nth <= 16);

	pl_need_uffd();
	/* PL_CALLS_NATIVE=1: without libdedup, to check the model itself */
	native = getenv("PL_CALLS_NATIVE") != NULL;
	check_maps = getenv("PL_CALLS_CHECK_MAPS") != NULL;   /* after every call */
	verify_each = getenv("PL_CALLS_VERIFY_EACH") != NULL;  /* the pages only: faster */
	/* PL_CALLS_SKIP=7,8: not these calls (a failure's bisection) */
	for (const char *q = getenv("PL_CALLS_SKIP"); q && *q; q += strcspn(q, ","), q += !!*q)
		if (atoi(q) >= 0 && atoi(q) < 12)
			skip[atoi(q)] = true;
	if (getenv("PL_CALLS_DUMP_OP"))
		dump_op = strtoull(getenv("PL_CALLS_DUMP_OP"), NULL, 0);

	struct th *th = t_map_anon(nth * sizeof(*th));   /* not in the arenas */
	/* The reservations first: mapped after an arena, one landed right
	 * below it, and an rw mapping right above a small PROT_NONE one is
	 * taken for a thread stack and left alone (preload/discover.c): the
	 * arena never merged (preload_calls_1, 1 run in 3 once libdedup's own
	 * mappings stopped landing between them). */
	for (int k = 0; k < nth; k++)
		th[k].scratch = reserve(NULL);   /* where remap moves a range for a moment */
	for (int k = 0; k < nth; k++) {
		struct th *t = &th[k];
		t->rng = (seed + 1000003ULL * k) * 0x9e3779b97f4a7c15ULL + 1;
		t->arena = t_map_anon(NPG * T_PAGE);
		for (size_t i = 0; i < NPG; i++) {
			t->sh[i] = (struct pg){ 0, -1, 0, false, false };
			write_page(t, i, 1 + (i / 8) % PALETTE);   /* runs of 8 equal pages */
		}
		uint64_t got;
		t->uffd = t_uffd_open(0, &got);
		CHECK(t->uffd >= 0);
		CHECK(pthread_create(&t->handler, NULL, handler, t) == 0);
	}
	merges0 = native ? 0 : pl_stats().merges;
	if (!native)
		pl_wait_merged(merges0 + nth * NPG / 2);

	if (nth == 1) {
		th[0].result = run(&th[0]);
	} else {
		for (int k = 0; k < nth; k++)
			CHECK(pthread_create(&th[k].thr, NULL, run_thread, &th[k]) == 0);
		for (int k = 0; k < nth; k++)
			CHECK(pthread_join(th[k].thr, NULL) == 0);
	}
	int result = T_PASS;
	uint64_t counts[12] = { 0 }, op = 0;
	for (int k = 0; k < nth; k++) {
		if (th[k].result != T_PASS)
			result = T_FAIL;
		op += th[k].op;
		for (int a = 0; a < 12; a++)
			counts[a] += th[k].counts[a];
	}
	if (result != T_PASS)
		return result;
	uint64_t merged = native ? 0 : pl_stats().merges - merges0;
	fprintf(stderr, "seed %llu, %d thread%s: %llu ops, %llu pages merged meanwhile;",
		(unsigned long long)seed, nth, nth > 1 ? "s" : "", (unsigned long long)op,
		(unsigned long long)merged);
	for (int a = 0; a < 12; a++)
		fprintf(stderr, " %s %llu", names[a], (unsigned long long)counts[a]);
	fprintf(stderr, "\nPASS\n");
	return T_PASS;
}
