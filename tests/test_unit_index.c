/* SPDX-License-Identifier: MIT */
/*
 * test_unit_index: index.c driven directly, without the engine.
 *
 *   - stable index: insert, lookup, remove (hash -> slot); one slot per hash
 *     is trusted without a comparison until dd_stable_verify_hash(); several
 *     slots with one hash are told apart by content, at most
 *     DD_MAX_PROBE_CMP comparisons per lookup (a slot beyond that is not
 *     found); removal of a wrong (hash, slot) pair changes nothing;
 *   - unstable index: insert and take (each candidate is taken once, never
 *     the page itself, only with equal content), the same probe limit, and
 *     dd_unstable_reset(): candidates of an earlier pass never come back;
 *   - growth: both tables double at 3/4 load and keep every live entry (and
 *     the verify mark); insert/remove churn does not grow the stable table;
 *     passes of the same size do not grow the unstable one; dd_index_bytes()
 *     is the size of both tables and matches what dd_vm holds for them (old
 *     tables are freed).
 *   - aged index (the smart scan's skipped pages, across passes): found by
 *     hash and equal content, never the page itself, gone once taken or
 *     removed, a stale entry (the scanner's check says no) dropped; growth
 *     at 3/4 load, churn does not grow it, dd_aged_reset() forgets all.
 *
 * Preconditions (from index.c and store.c): dd_index_init() first; a lookup
 * that compares content reads the canonical page through dd_store_page(), so
 * slots are real store slots (dd_store_init()). Entries whose hash is unique
 * are never compared, so the growth checks use made-up slot numbers. Every
 * caller must hold eng.lock: no engine thread runs here, but the test takes
 * it anyway, as the code's contract says.
 */
#include "tcommon.h"
#include "internal.h"

#define STORE_BYTES (64UL << 20)

static char *probe;   /* the page being looked up */
/* growth steps of each table, and dd_index_bytes() right after init */
static size_t stable_step, unstable_step, init_bytes;

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

/* Distinct, non-zero hashes that none of the fixed ones below can equal. */
static uint64_t nth_hash(uint64_t seed, uint64_t i)
{
	uint64_t s = seed * 1000003 + i, h = splitmix(&s);
	return h | (1ULL << 63);
}

static void setup(void)
{
	CHECK(dd_store_init(STORE_BYTES) == 0);
	CHECK(dd_index_init() == 0);
}

static void teardown(void)
{
	dd_index_fini();
	dd_store_fini();
}

/* A store slot holding content @seed, entered in the stable index under @h. */
static uint32_t mk(uint64_t seed, uint64_t h)
{
	t_fill(probe, seed);
	uint32_t s = dd_store_new(probe, 0);
	CHECK(s != 0);
	dd_store_set_hash(s, h);
	CHECK(dd_stable_insert(h, s) == 0);
	return s;
}

static uint32_t look(uint64_t h, uint64_t seed, bool *collided)
{
	t_fill(probe, seed);
	*collided = false;
	return dd_stable_lookup(h, probe, collided);
}

static uintptr_t take(uint64_t h, uint64_t seed, bool *collided)
{
	t_fill(probe, seed);
	*collided = false;
	return dd_unstable_take(h, probe, collided);
}

static void test_stable_basic(void)
{
	const uint64_t H1 = 0x1001, H2 = 0x2002, H3 = 0x3003;
	bool c;

	setup();
	CHECK(look(H1, 1, &c) == 0 && !c);           /* empty */
	uint32_t a = mk(1, H1), b = mk(2, H2);
	CHECK(a == 1 && b == 2);
	CHECK(look(H1, 1, &c) == a && !c);
	CHECK(look(H2, 2, &c) == b && !c);
	CHECK(look(H3, 1, &c) == 0 && !c);           /* found by hash only */

	/* One slot for a hash: trusted, no comparison (merge.c compares under
	 * protection). After a mismatch is reported, lookups compare. */
	CHECK(look(H1, 2, &c) == a && !c);
	dd_stable_verify_hash(H1);
	CHECK(look(H1, 2, &c) == 0 && c);
	CHECK(look(H1, 1, &c) == a && !c);
	CHECK(look(H2, 1, &c) == b && !c);           /* other hashes stay trusted */
	dd_stable_verify_hash(H3);                   /* absent hash: no effect */
	CHECK(look(H2, 1, &c) == b && !c);

	/* remove needs the exact (hash, slot) pair */
	dd_stable_remove(H1, b);
	dd_stable_remove(H2, a);
	dd_stable_remove(H3, a);
	CHECK(look(H1, 1, &c) == a && !c);
	CHECK(look(H2, 2, &c) == b && !c);
	dd_stable_remove(H1, a);
	CHECK(look(H1, 1, &c) == 0 && !c);
	dd_stable_remove(H1, a);                     /* twice: nothing left to remove */
	CHECK(look(H2, 2, &c) == b && !c);
	dd_stable_remove(H2, b);
	CHECK(look(H2, 2, &c) == 0 && !c);
	/* a removed entry does not hide one inserted later */
	CHECK(dd_stable_insert(H2, b) == 0);
	CHECK(look(H2, 2, &c) == b && !c);
	teardown();
}

/* Several slots with one hash: found by content, up to DD_MAX_PROBE_CMP. */
static void test_stable_same_hash(void)
{
	const uint64_t H = 0x5151;
	enum { N = DD_MAX_PROBE_CMP + 4 };
	uint32_t s[N];
	bool c;

	setup();
	for (int i = 0; i < N; i++)
		s[i] = mk(100 + i, H);
	/* In probe order (insertion order in a fresh table): the first slot
	 * is compared once a second one shows up. Content i costs i + 1
	 * comparisons; a mismatch on the way sets *collided. */
	for (int i = 0; i < DD_MAX_PROBE_CMP; i++) {
		CHECK(look(H, 100 + i, &c) == s[i]);
		CHECK(c == (i > 0));
	}
	/* Beyond DD_MAX_PROBE_CMP comparisons the lookup gives up: an equal
	 * page there is not found (the scanner then treats the page as new). */
	for (int i = DD_MAX_PROBE_CMP; i < N; i++)
		CHECK(look(H, 100 + i, &c) == 0 && c);
	CHECK(look(H, 999, &c) == 0 && c);           /* no such content */
	CHECK(look(H + 1, 100, &c) == 0 && !c);

	/* Removing one brings the next one within reach. */
	dd_stable_remove(H, s[3]);
	CHECK(look(H, 103, &c) == 0 && c);
	CHECK(look(H, 100 + DD_MAX_PROBE_CMP, &c) == s[DD_MAX_PROBE_CMP] && c);
	CHECK(look(H, 101 + DD_MAX_PROBE_CMP, &c) == 0 && c);
	CHECK(look(H, 100, &c) == s[0] && !c);

	/* Two slots, the first removed: the survivor is compared no more
	 * (it is the only one with this hash again). */
	const uint64_t H2 = 0x6262;
	uint32_t x = mk(500, H2), y = mk(501, H2);
	CHECK(look(H2, 501, &c) == y && c);
	CHECK(look(H2, 500, &c) == x && !c);
	CHECK(look(H2, 502, &c) == 0 && c);
	dd_stable_remove(H2, x);
	CHECK(look(H2, 501, &c) == y && !c);
	CHECK(look(H2, 502, &c) == y && !c);         /* trusted again */
	teardown();
}

/* Growth, removal and churn of the stable table; the verify mark survives
 * a rehash. Made-up slots with unique hashes: never compared. */
static void test_stable_growth(void)
{
	enum { N = 1537 };
	const uint64_t HV = 0x7007;
	bool c;

	setup();
	size_t b0 = dd_index_bytes(), vm0 = atomic_load(&dd_vm_bytes);
	uint32_t v = mk(1, HV);
	dd_stable_verify_hash(HV);
	size_t vm1 = atomic_load(&dd_vm_bytes);      /* + the store's slot table */
	CHECK(vm1 > vm0);
	CHECK(dd_index_bytes() == b0);

	size_t grew_at[2] = { 0, 0 }, step[2] = { 0, 0 }, last = b0;
	int ngrow = 0;
	for (uint64_t i = 1; i < N; i++) {     /* HV is entry 1 of 1537 */
		CHECK(dd_stable_insert(nth_hash(1, i), (uint32_t)(100000 + i)) == 0);
		size_t b = dd_index_bytes();
		if (b != last) {
			CHECK(ngrow < 2);
			grew_at[ngrow] = i + 1;        /* live entries after it */
			step[ngrow++] = b - last;
			last = b;
		}
	}
	/* 1024 entries at first, doubled when an insert would pass 3/4 load:
	 * at the 769th and the 1537th entry. */
	CHECK(ngrow == 2 && grew_at[0] == 769 && grew_at[1] == 1537);
	CHECK(step[1] == 2 * step[0]);
	stable_step = step[0];
	/* the old tables were freed: dd_vm holds exactly the current ones */
	CHECK(atomic_load(&dd_vm_bytes) - vm1 == dd_index_bytes() - b0);

	for (uint64_t i = 1; i < N; i++)
		CHECK(look(nth_hash(1, i), 0, &c) == 100000 + i && !c);
	CHECK(look(HV, 2, &c) == 0 && c);            /* still verified */
	CHECK(look(HV, 1, &c) == v && !c);

	/* remove half */
	for (uint64_t i = 1; i < N; i += 2)
		dd_stable_remove(nth_hash(1, i), (uint32_t)(100000 + i));
	for (uint64_t i = 1; i < N; i++)
		CHECK(look(nth_hash(1, i), 0, &c) == (i % 2 ? 0 : 100000 + i) && !c);

	/* Churn: dead entries are recycled by a rehash at the same size, not
	 * by growing (768 live entries need no more than 4096). */
	size_t b2 = dd_index_bytes(), vm2 = atomic_load(&dd_vm_bytes);
	for (uint64_t i = 0; i < 20000; i++) {
		uint64_t h = nth_hash(2, i);
		CHECK(dd_stable_insert(h, 7) == 0);
		dd_stable_remove(h, 7);
	}
	CHECK(dd_index_bytes() == b2);
	CHECK(atomic_load(&dd_vm_bytes) == vm2);
	for (uint64_t i = 1; i < N; i++)
		CHECK(look(nth_hash(1, i), 0, &c) == (i % 2 ? 0 : 100000 + i) && !c);
	CHECK(look(nth_hash(2, 5), 0, &c) == 0 && !c);
	CHECK(look(HV, 1, &c) == v && !c);
	CHECK(look(HV, 2, &c) == 0 && c);

	/* dd_index_fini gives back exactly what dd_index_bytes counts */
	size_t bytes = dd_index_bytes(), vm3 = atomic_load(&dd_vm_bytes);
	dd_index_fini();
	CHECK(dd_index_bytes() == 0);
	CHECK(vm3 - atomic_load(&dd_vm_bytes) == bytes);
	dd_store_fini();
}

static void test_unstable(void)
{
	enum { NP = 24 };
	char *pg = t_map_anon(NP * T_PAGE);
	uintptr_t a[NP];
	const uint64_t H = 0x8008, H2 = 0x9009, H3 = 0xa00a;
	bool c;

	for (int i = 0; i < NP; i++) {
		a[i] = (uintptr_t)(pg + i * T_PAGE);
		t_fill(pg + i * T_PAGE, 200 + i);
	}
	setup();
	CHECK(take(H, 200, &c) == 0 && !c);          /* empty */

	CHECK(dd_unstable_insert(H, a[0]) == 0);
	CHECK(take(H2, 200, &c) == 0 && !c);         /* other hash */
	CHECK(take(H, 201, &c) == 0 && c);           /* same hash, other content */
	CHECK(take(H, 200, &c) == a[0] && !c);       /* still there after that */
	CHECK(take(H, 200, &c) == 0 && !c);          /* taken once only */

	/* a page never matches itself */
	CHECK(dd_unstable_insert(H, a[0]) == 0);
	c = false;
	CHECK(dd_unstable_take(H, (const void *)a[0], &c) == 0 && !c);
	CHECK(take(H, 200, &c) == a[0] && !c);

	/* several candidates with one hash: by content, in insertion order */
	memcpy(pg + 2 * T_PAGE, pg + 1 * T_PAGE, T_PAGE);   /* a[1], a[2]: 201 */
	CHECK(dd_unstable_insert(H2, a[1]) == 0);
	CHECK(dd_unstable_insert(H2, a[3]) == 0);
	CHECK(dd_unstable_insert(H2, a[2]) == 0);
	CHECK(take(H2, 201, &c) == a[1] && !c);
	CHECK(take(H2, 201, &c) == a[2] && c);       /* a[3] compared on the way */
	CHECK(take(H2, 201, &c) == 0 && c);
	CHECK(take(H2, 203, &c) == a[3] && !c);      /* taken ones are skipped */
	CHECK(take(H2, 203, &c) == 0 && !c);

	/* the probe limit: 20 candidates of one hash, all different */
	for (int i = 4; i < 4 + DD_MAX_PROBE_CMP + 4; i++)
		CHECK(dd_unstable_insert(H3, a[i]) == 0);
	int k17 = 4 + DD_MAX_PROBE_CMP, k16 = k17 - 1;
	CHECK(take(H3, 200 + k17, &c) == 0 && c);    /* 17th: out of reach */
	CHECK(take(H3, 200 + k16, &c) == a[k16] && c);
	CHECK(take(H3, 200 + k17, &c) == a[k17] && c);   /* a taken one costs nothing */
	CHECK(take(H3, 200 + 4, &c) == a[4] && !c);

	/* a new pass forgets every candidate of the earlier ones */
	CHECK(dd_unstable_insert(H, a[0]) == 0);
	dd_unstable_reset();
	CHECK(take(H, 200, &c) == 0 && !c);
	CHECK(take(H3, 200 + 5, &c) == 0 && !c);
	CHECK(take(H2, 201, &c) == 0 && !c);
	/* even where the old chain is long and the new one short */
	for (int i = 4; i < 14; i++)
		CHECK(dd_unstable_insert(H, a[i]) == 0);
	dd_unstable_reset();
	CHECK(dd_unstable_insert(H, a[20]) == 0);
	for (int i = 4; i < 14; i++)
		CHECK(take(H, 200 + i, &c) == 0 && c);   /* only a[20] is compared */
	CHECK(take(H, 220, &c) == a[20] && !c);
	CHECK(take(H, 220, &c) == 0 && !c);
	/* and after many passes */
	for (int p = 0; p < 50; p++) {
		CHECK(dd_unstable_insert(H, a[p % NP]) == 0);
		dd_unstable_reset();
	}
	for (int i = 0; i < NP; i++)
		CHECK(take(H, 200 + i, &c) == 0 && !c);
	teardown();
	munmap(pg, NP * T_PAGE);
}

/* Unstable growth: the table doubles at 3/4 load, live candidates survive
 * it and taken ones stay taken; passes that fit do not grow it. */
static void test_unstable_growth(void)
{
	enum { N = 2000 };
	char *pg = t_map_anon(N * T_PAGE);
	bool c;
#define PG(i) ((uintptr_t)(pg + (size_t)(i) * T_PAGE))

	for (int i = 0; i < N; i++)
		t_fill(pg + (size_t)i * T_PAGE, 1000 + i);

	/* passes of 768 candidates (3/4 of 1024) never grow the table; the
	 * 769th candidate of a pass does, the 1537th again */
	setup();
	size_t b0 = dd_index_bytes(), vm0 = atomic_load(&dd_vm_bytes);
	init_bytes = b0;
	for (int p = 0; p < 5; p++) {
		dd_unstable_reset();
		for (int i = 0; i < 768; i++)
			CHECK(dd_unstable_insert(nth_hash(3, i), PG(i)) == 0);
		CHECK(dd_index_bytes() == b0);
	}
	for (int i = 0; i < 768; i++)
		CHECK(take(nth_hash(3, i), 1000 + i, &c) == PG(i) && !c);
	size_t last = b0, step[2] = { 0, 0 };
	int ngrow = 0;
	dd_unstable_reset();
	for (int i = 0; i < 1537; i++) {
		CHECK(dd_unstable_insert(nth_hash(3, i), PG(i)) == 0);
		size_t b = dd_index_bytes();
		if (b != last) {
			CHECK(ngrow < 2);
			CHECK(i + 1 == (ngrow ? 1537 : 769));
			step[ngrow++] = b - last;
			last = b;
		}
	}
	CHECK(ngrow == 2 && step[1] == 2 * step[0]);
	unstable_step = step[0];
	CHECK(atomic_load(&dd_vm_bytes) - vm0 == dd_index_bytes() - b0);
	for (int i = 0; i < 1537; i++)
		CHECK(take(nth_hash(3, i), 1000 + i, &c) == PG(i) && !c);
	teardown();

	/* Growing while some candidates of the pass are taken (the rehash
	 * drops them): the others are all found, the taken ones never. */
	setup();
	for (int i = 0; i < N; i++) {
		CHECK(dd_unstable_insert(nth_hash(4, i), PG(i)) == 0);
		if (i == 699)
			for (int j = 0; j < 100; j++)
				CHECK(take(nth_hash(4, j), 1000 + j, &c) == PG(j) && !c);
	}
	/* 1900 live candidates need the 4096-entry table (3/4 of 2048 < 1900) */
	CHECK(dd_index_bytes() == b0 + 3 * unstable_step);
	CHECK(atomic_load(&dd_vm_bytes) - vm0 == 3 * unstable_step);
	for (int i = 0; i < 100; i++)
		CHECK(take(nth_hash(4, i), 1000 + i, &c) == 0 && !c);
	for (int i = 100; i < N; i++)
		CHECK(take(nth_hash(4, i), 1000 + i, &c) == PG(i) && !c);
	dd_unstable_reset();
	for (int i = 0; i < N; i++)
		CHECK(take(nth_hash(4, i), 1000 + i, &c) == 0 && !c);
	/* the next pass of the same size fits */
	for (int i = 0; i < N; i++)
		CHECK(dd_unstable_insert(nth_hash(5, i), PG(i)) == 0);
	CHECK(dd_index_bytes() == b0 + 3 * unstable_step);
	CHECK(take(nth_hash(5, 1234), 1000 + 1234, &c) == PG(1234) && !c);
	teardown();
	munmap(pg, N * T_PAGE);
#undef PG
}

/*
 * Aged index: pages the smart scan skips, across passes. A page is found by
 * its hash while @valid says its metadata still has it (a stale entry is
 * dropped unread), and only with equal content now; taking it removes it;
 * a removed one is not found; several pages share a hash; the table grows
 * at 3/4 load and drops dead entries when it rehashes; dd_aged_reset()
 * forgets all.
 */
static uintptr_t stale_addr;   /* aged_ok() says no for this one */
static bool aged_ok(uintptr_t a, uint64_t h)
{
	(void)h;
	return a != stale_addr;
}

static uintptr_t atake(uint64_t h, uint64_t seed, uintptr_t self, bool *collided)
{
	t_fill(probe, seed);
	*collided = false;
	return dd_aged_take(h, probe, self, aged_ok, collided);
}

static size_t aged_step;

static void test_aged(void)
{
	enum { N = 1600 };
	char *pg = t_map_anon(N * T_PAGE);
	bool c;
#define PG(i) ((uintptr_t)(pg + (size_t)(i) * T_PAGE))
	for (int i = 0; i < N; i++)
		t_fill(pg + (size_t)i * T_PAGE, 5000 + i);
	setup();
	size_t b0 = dd_index_bytes();
	const uint64_t H = nth_hash(9, 0);
	CHECK(dd_aged_count() == 0);
	CHECK(dd_aged_insert(H, PG(0)));
	CHECK(atake(H, 5001, 0, &c) == 0);            /* other content */
	CHECK(atake(H, 5000, PG(0), &c) == 0);        /* never the page itself */
	CHECK(atake(H, 5000, 0, &c) == PG(0));
	CHECK(atake(H, 5000, 0, &c) == 0);            /* taken: gone */
	CHECK(dd_aged_count() == 0);
	/* several pages under one hash; a removed one is not found */
	for (int i = 1; i <= 4; i++)
		CHECK(dd_aged_insert(H, PG(i)));
	dd_aged_remove(H, PG(2));
	dd_aged_remove(H, PG(7));                     /* not there: nothing */
	CHECK(dd_aged_count() == 3);
	CHECK(atake(H, 5002, 0, &c) == 0 && !c);
	CHECK(atake(H, 5003, 0, &c) == PG(3) && !c);  /* PG(1) compared on the way */
	/* a page whose content still has the hash, but not this one: a collision
	 * only if the compared page's own content has H (it has not here) */
	CHECK(atake(H, 4999, 0, &c) == 0 && !c);
	/* stale: dropped without a read */
	stale_addr = PG(4);
	CHECK(atake(H, 5004, 0, &c) == 0);
	stale_addr = 0;
	CHECK(atake(H, 5004, 0, &c) == 0);            /* dropped for good */
	CHECK(dd_aged_count() == 1);                  /* PG(1) */
	CHECK(dd_index_bytes() == b0);
	/* growth: the 769th live entry doubles the table; all stay findable */
	dd_aged_reset();
	size_t last = dd_index_bytes();
	CHECK(last == b0);
	for (int i = 0; i < N; i++) {
		CHECK(dd_aged_insert(nth_hash(10, i), PG(i)));
		if (dd_index_bytes() != last && !aged_step) {
			CHECK(i + 1 == 769);
			aged_step = dd_index_bytes() - last;
		}
	}
	CHECK(aged_step > 0);
	for (int i = 0; i < N; i++)
		CHECK(atake(nth_hash(10, i), 5000 + i, 0, &c) == PG(i) && !c);
	CHECK(dd_aged_count() == 0);
	/* churn: insert and remove, over and over, does not grow it */
	size_t b1 = dd_index_bytes();
	for (int r = 0; r < 20; r++) {
		for (int i = 0; i < 500; i++)
			CHECK(dd_aged_insert(nth_hash(11 + r, i), PG(i)));
		for (int i = 0; i < 500; i++)
			dd_aged_remove(nth_hash(11 + r, i), PG(i));
	}
	CHECK(dd_index_bytes() == b1);
	dd_aged_reset();
	CHECK(dd_aged_count() == 0 && dd_index_bytes() == b0);
	teardown();
	munmap(pg, N * T_PAGE);
#undef PG
}

int main(void)
{
	probe = t_map_anon(T_PAGE);
	pthread_mutex_lock(&eng.lock);
	test_stable_basic();
	test_stable_same_hash();
	test_stable_growth();
	test_unstable();
	test_unstable_growth();
	test_aged();
	/* the tables start at the same capacity: dd_index_bytes() after
	 * dd_index_init() is one growth step of each, nothing else */
	CHECK(init_bytes == stable_step + unstable_step + aged_step);
	pthread_mutex_unlock(&eng.lock);
	return T_PASS;
}
