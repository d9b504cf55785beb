/* SPDX-License-Identifier: MIT */
/*
 * test_unit_store: store.c driven directly, without the engine.
 *
 *   - dd_store_init: a memfd of store_max bytes (rounded down to pages),
 *     nothing allocated; a size too small to map fails cleanly;
 *   - dd_store_new: slots 1, 2, 3... (slot + 1), content written once and
 *     read back through dd_store_page() and pread(); refs 0, hash 0;
 *   - get/put: exact refs, pages_sharing (sum of refs) and pages_shared
 *     (slots with refs > 0); at zero refs the slot is released: the memfd
 *     page is punched (SEEK_DATA/SEEK_HOLE, st_blocks, pread gives zeros),
 *     its stable index entry removed, store_slots_freed counted; a slot
 *     nobody referenced is released by one put;
 *   - reuse: released slots come back last-released first, with refs and
 *     hash reset; a hint equal to the high-water mark takes a new slot even
 *     when the free list is not empty, so a run of new slots is contiguous
 *     and one mmap of the memfd maps it;
 *   - keep: slots referenced at dd_store_keep_all() (fork) are never
 *     punched or reused, stay in the stable index, and repeated puts at zero
 *     refs do not underflow the counters; other slots are released as usual;
 *   - the slot table grows past its first 4096 entries keeping refs;
 *   - DEDUP_STORE_MAX: 1M gives exactly 256 slots, the 257th dd_store_new
 *     returns 0 (with or without a hint), a released slot can be had again;
 *     the upper bound maps at most 2^31 slots (8 TiB): the slots above are
 *     group segments' (store.c).
 *
 * Preconditions: release() removes the slot's stable index entry, so
 * dd_index_init() must have run. Every caller holds eng.lock (no engine
 * thread runs here; taken anyway, as the contract says).
 */
#include "tcommon.h"
#include "internal.h"

#include <sys/stat.h>

static char *buf;          /* one page of scratch content */
static bool exact_blocks;  /* st_blocks counts 8 per 4K page (no shmem THP) */

static off_t off_of(uint32_t ref) { return (off_t)(ref - 1) * (off_t)T_PAGE; }

static uint32_t new_slot(uint64_t seed, uint32_t hint)
{
	t_fill(buf, seed);
	return dd_store_new(buf, hint);
}

static long blocks(void)
{
	struct stat sb;
	CHECK(fstat(dd_store_fd(), &sb) == 0);
	return (long)sb.st_blocks;
}

static off_t file_size(void)
{
	struct stat sb;
	CHECK(fstat(dd_store_fd(), &sb) == 0);
	return sb.st_size;
}

/* The memfd holds a page at the slot (not a hole). Does not fault it in. */
static bool allocated(uint32_t ref)
{
	errno = 0;
	off_t d = lseek(dd_store_fd(), off_of(ref), SEEK_DATA);
	CHECK(d >= 0 || errno == ENXIO);
	return d == off_of(ref);
}

/* Content through pread (a hole reads zeros without being allocated). */
static bool file_has(uint32_t ref, uint64_t seed)
{
	static char got[T_PAGE] __attribute__((aligned(64)));
	CHECK(pread(dd_store_fd(), got, T_PAGE, off_of(ref)) == (ssize_t)T_PAGE);
	if (seed == 0) {
		static const char zero[T_PAGE];
		return memcmp(got, zero, T_PAGE) == 0;
	}
	t_fill(buf, seed);
	return memcmp(got, buf, T_PAGE) == 0;
}

/* Content through the store's own view (faults the page in: live slots only). */
static bool view_has(uint32_t ref, uint64_t seed)
{
	t_fill(buf, seed);
	return memcmp(dd_store_page(ref - 1), buf, T_PAGE) == 0;
}

static uint64_t freed(void) { return atomic_load(&dd_cnt.store_slots_freed); }

#define COUNTS(sharing, shared) \
	CHECK(dd_store_sharing() == (sharing) && dd_store_shared() == (shared))
#define BLOCKS(pages) CHECK(!exact_blocks || blocks() == 8L * (pages))

static void setup(size_t bytes)
{
	CHECK(dd_store_init(bytes) == 0);
	CHECK(dd_index_init() == 0);
}

static void teardown(void)
{
	dd_index_fini();
	dd_store_fini();
	CHECK(dd_store_fd() == -1);
}

static void test_basic(void)
{
	bool c = false;

	setup(16UL << 20);
	int fd = dd_store_fd();
	CHECK(fd >= 0 && (fcntl(fd, F_GETFD) & FD_CLOEXEC));
	CHECK(file_size() == (off_t)(16UL << 20));
	CHECK(blocks() == 0);
	COUNTS(0, 0);

	uint32_t r1 = new_slot(1, 0);
	CHECK(r1 == 1);
	exact_blocks = blocks() == 8;
	if (!exact_blocks)
		fprintf(stderr, "note: st_blocks %ld for one page (shmem THP?): "
			"block counts not checked, holes still are\n", blocks());
	uint32_t r2 = new_slot(2, 0), r3 = new_slot(3, 0);
	CHECK(r2 == 2 && r3 == 3);
	BLOCKS(3);
	for (uint32_t r = 1; r <= 3; r++) {
		CHECK(allocated(r) && file_has(r, r) && view_has(r, r));
		CHECK(dd_store_refs(r) == 0 && dd_store_hash(r) == 0);
	}
	CHECK(!allocated(4) && file_has(4, 0));
	COUNTS(0, 0);   /* a new slot has no reference yet */
	dd_store_set_hash(r1, 0x1111);
	dd_store_set_hash(r2, 0x2222);
	CHECK(dd_store_hash(r1) == 0x1111 && dd_store_hash(r2) == 0x2222);
	CHECK(dd_store_hash(r3) == 0);
	CHECK(dd_stable_insert(0x1111, r1) == 0 && dd_stable_insert(0x2222, r2) == 0);

	/* reference counts */
	dd_store_get(r1);
	CHECK(dd_store_refs(r1) == 1);
	COUNTS(1, 1);
	dd_store_get(r1);
	CHECK(dd_store_refs(r1) == 2);
	COUNTS(2, 1);
	dd_store_get(r2);
	COUNTS(3, 2);
	dd_store_put(r1);
	CHECK(dd_store_refs(r1) == 1 && allocated(r1));
	COUNTS(2, 2);
	uint64_t f0 = freed();
	dd_store_put(r1);   /* the last one: released */
	CHECK(dd_store_refs(r1) == 0);
	COUNTS(1, 1);
	CHECK(freed() == f0 + 1);
	CHECK(!allocated(r1) && file_has(r1, 0));
	BLOCKS(2);
	CHECK(dd_store_hash(r1) == 0);
	CHECK(dd_stable_lookup(0x1111, buf, &c) == 0 && !c);   /* out of the index */
	CHECK(dd_stable_lookup(0x2222, buf, &c) == r2);
	CHECK(allocated(r2) && view_has(r2, 2) && dd_store_refs(r2) == 1);

	/* a slot nobody referenced is released by one put (merge.c does that
	 * with a canonical page that no page of its batch took) */
	dd_store_put(r3);
	CHECK(freed() == f0 + 2);
	COUNTS(1, 1);
	CHECK(!allocated(r3));
	BLOCKS(1);

	/* reuse: last released first, fresh state */
	uint32_t a = new_slot(30, 0), b = new_slot(10, 0), d = new_slot(40, 0);
	CHECK(a == r3 && b == r1 && d == 4);   /* then the high-water mark */
	CHECK(dd_store_refs(a) == 0 && dd_store_hash(a) == 0 && dd_store_hash(b) == 0);
	CHECK(allocated(a) && view_has(a, 30) && file_has(b, 10) && view_has(d, 40));
	BLOCKS(4);
	COUNTS(1, 1);

	/* release everything: nothing stays allocated */
	dd_store_put(a);
	dd_store_put(b);
	dd_store_put(d);
	dd_store_put(r2);
	COUNTS(0, 0);
	CHECK(freed() == f0 + 6);
	CHECK(blocks() == 0);
	CHECK(lseek(dd_store_fd(), 0, SEEK_DATA) < 0 && errno == ENXIO);
	teardown();
}

static void test_hint(void)
{
	setup(16UL << 20);
	uint32_t s[4];
	for (int i = 0; i < 4; i++)
		s[i] = new_slot(50 + i, 0);
	CHECK(s[0] == 1 && s[3] == 4);
	dd_store_put(s[1]);             /* refs 2 and 3 on the free list */
	dd_store_put(s[2]);

	/* hint == high-water mark + 1: a new slot, not a free one */
	uint32_t r0 = new_slot(60, 5);
	uint32_t r1 = new_slot(61, r0 + 1), r2 = new_slot(62, r1 + 1);
	CHECK(r0 == 5 && r1 == 6 && r2 == 7);
	/* no hint, or a hint that is not the high-water mark: free list first */
	CHECK(new_slot(63, 0) == s[2]);
	CHECK(new_slot(64, 3) == s[1]);
	CHECK(new_slot(65, 100) == 8);  /* free list empty: high-water mark */
	CHECK(view_has(s[2], 63) && view_has(s[1], 64) && view_has(8, 65));

	/* the run r0..r2 is contiguous in the memfd: one mapping shows it */
	char *m = mmap(NULL, 3 * T_PAGE, PROT_READ, MAP_PRIVATE, dd_store_fd(), off_of(r0));
	CHECK(m != MAP_FAILED);
	for (int i = 0; i < 3; i++) {
		t_fill(buf, 60 + i);
		CHECK(memcmp(m + i * T_PAGE, buf, T_PAGE) == 0);
	}
	munmap(m, 3 * T_PAGE);
	teardown();
}

static void test_keep(void)
{
	bool c = false;

	setup(16UL << 20);
	uint32_t ka = new_slot(70, 0), kb = new_slot(71, 0), kc = new_slot(72, 0);
	dd_store_set_hash(ka, 0x7070);
	dd_store_set_hash(kb, 0x7171);
	dd_store_set_hash(kc, 0x7272);
	CHECK(dd_stable_insert(0x7070, ka) == 0 && dd_stable_insert(0x7171, kb) == 0 &&
	      dd_stable_insert(0x7272, kc) == 0);
	dd_store_get(ka);
	dd_store_get(ka);
	dd_store_get(kc);
	COUNTS(3, 2);
	dd_store_keep_all();            /* fork(): ka and kc are mapped by the child */

	uint64_t f0 = freed();
	dd_store_put(ka);
	dd_store_put(ka);
	CHECK(dd_store_refs(ka) == 0);
	COUNTS(1, 1);
	CHECK(freed() == f0);           /* not released ... */
	CHECK(allocated(ka) && file_has(ka, 70));
	CHECK(dd_store_hash(ka) == 0x7070);
	CHECK(dd_stable_lookup(0x7070, buf, &c) == ka);   /* ... still found */
	/* merge.c puts an unreferenced canonical page once more: no effect */
	dd_store_put(ka);
	CHECK(dd_store_refs(ka) == 0 && freed() == f0 && allocated(ka));
	COUNTS(1, 1);

	/* kb had no reference at the fork: released as usual */
	dd_store_put(kb);
	CHECK(freed() == f0 + 1 && !allocated(kb));
	CHECK(dd_stable_lookup(0x7171, buf, &c) == 0);
	dd_store_put(kc);
	CHECK(freed() == f0 + 1 && allocated(kc) && file_has(kc, 72));
	COUNTS(0, 0);

	/* kept slots are never handed out again */
	CHECK(new_slot(73, 0) == kb);
	CHECK(new_slot(74, 0) == 4);
	/* a slot created after the fork is released as usual */
	uint32_t kd = new_slot(75, 0);
	CHECK(kd == 5);
	dd_store_get(kd);
	dd_store_put(kd);
	CHECK(freed() == f0 + 2 && !allocated(kd));
	CHECK(new_slot(76, 0) == kd);
	/* a kept slot can be shared again, and stays kept */
	dd_store_get(ka);
	COUNTS(1, 1);
	dd_store_put(ka);
	COUNTS(0, 0);
	CHECK(freed() == f0 + 2 && allocated(ka) && view_has(ka, 70) && view_has(kc, 72));
	teardown();
}

/* The slot table starts with 4096 entries and grows; refs survive. */
static void test_many(void)
{
	enum { N = 5000 };
	setup(32UL << 20);
	uint32_t first = new_slot(1, 0);
	dd_store_get(first);
	dd_store_get(first);
	dd_store_get(first);
	uint32_t last = first;
	for (uint32_t i = 2; i <= N; i++) {
		uint32_t r = new_slot(i, last + 1);
		CHECK(r == i);
		last = r;
	}
	CHECK(dd_store_refs(first) == 3 && view_has(first, 1));
	CHECK(view_has(N, N) && view_has(4096, 4096) && view_has(4097, 4097));
	BLOCKS(N);
	COUNTS(3, 1);
	uint64_t f0 = freed();
	for (uint32_t r = 1; r <= N; r++)
		dd_store_put(r);
	COUNTS(2, 1);
	CHECK(freed() == f0 + N - 1 && allocated(first));
	dd_store_put(first);
	dd_store_put(first);
	COUNTS(0, 0);
	CHECK(freed() == f0 + N);
	CHECK(blocks() == 0);
	teardown();
}

/* DEDUP_STORE_MAX bounds the store: allocation fails cleanly at the limit. */
static void test_limit(void)
{
	unsetenv("DEDUP_LOG");
	CHECK(setenv("DEDUP_STORE_MAX", "1M", 1) == 0);
	CHECK(dd_options_load(NULL) == 0);
	CHECK(dd_opt.store_max == 1 << 20);
	setup(dd_opt.store_max);
	CHECK(file_size() == 1 << 20);
	uint32_t last = 0;
	for (uint32_t i = 1; i <= 256; i++) {
		last = new_slot(i, last ? last + 1 : 0);
		CHECK(last == i);
	}
	BLOCKS(256);
	CHECK(new_slot(300, 0) == 0);
	CHECK(new_slot(300, 257) == 0);   /* the hint does not pass the limit */
	CHECK(new_slot(300, 1) == 0);
	CHECK(view_has(256, 256) && file_has(256, 256));
	BLOCKS(256);
	dd_store_put(10);
	CHECK(!allocated(10));
	CHECK(new_slot(310, 257) == 10);
	CHECK(view_has(10, 310));
	CHECK(new_slot(311, 0) == 0);
	teardown();
	unsetenv("DEDUP_STORE_MAX");

	/* not a page multiple: rounded down */
	setup((1UL << 20) + 100);
	CHECK(file_size() == 1 << 20);
	teardown();

	/* too small to map: an error, not a crash, and no fd left */
	CHECK(dd_store_init(100) < 0);
	CHECK(dd_store_fd() == -1);

	/* a DEDUP_STORE_MAX of 16T maps at most 2^31 slots, so that slot + 1
	 * stays below the group segments' slots and the DD_SLOT_COWED/ZERO
	 * markers */
	int r = dd_store_init(1ULL << 44);
	if (r == -ENOMEM || r == -EFBIG) {
		fprintf(stderr, "note: no 16 TiB sparse store here (%s): cap not checked\n",
			strerror(-r));
		return;
	}
	CHECK(r == 0);
	CHECK(dd_index_init() == 0);
	CHECK((uint64_t)file_size() == (1ULL << 31) * T_PAGE);
	CHECK(DD_SLOT_REAL((uint32_t)1 << 31));   /* the last slot's ref */
	CHECK(new_slot(1, 0) == 1 && view_has(1, 1));
	dd_store_put(1);
	CHECK(blocks() == 0);
	teardown();
}

/* A sealed segment of n pages, page p holding t_fill(seed + p), as a
 * group member gets one (group.c), made here without a helper. */
static int sealed_segment(uint32_t n, uint64_t seed)
{
	int fd = memfd_create("libdedup-g:unit", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	CHECK(fd >= 0);
	for (uint32_t p = 0; p < n; p++) {
		t_fill(buf, seed + p);
		CHECK(pwrite(fd, buf, T_PAGE, (off_t)p * (off_t)T_PAGE) == (ssize_t)T_PAGE);
	}
	CHECK(fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) == 0);
	return fd;
}

static long fd_count(void)
{
	long n = 0;
	for (int fd = 0; fd < 4096; fd++)
		n += fcntl(fd, F_GETFD) >= 0;
	return n;
}

/*
 * Group segments (store.c): slots above the store's own, contiguous within
 * a segment, read through a read-only view, mapped privately, checked by
 * the store's own checksums but not entered in the stable index; the same
 * segment id taken twice is one segment; released - descriptor, view - only
 * at the step's end (dd_store_seg_sweep) and only when no page maps it;
 * never counted in sharing/shared, but in group_pages.
 */
static void test_segments(void)
{
	bool c = false;

	setup(16UL << 20);
	long fds0 = fd_count();
	uint32_t a = dd_store_seg_add(11, sealed_segment(4, 100), 4);
	CHECK(a && DD_SLOT_REAL(a) && a - 1 >= (1u << 31));
	CHECK(fd_count() == fds0 + 1);
	for (uint32_t p = 0; p < 4; p++) {
		CHECK(view_has(a + p, 100 + p));
		t_fill(buf, 100 + p);
		CHECK(dd_store_hash(a + p) == dd_hash_page(buf));
		/* not in our stable index: the helper's index is the group's */
		CHECK(dd_stable_lookup(dd_hash_page(buf), buf, &c) == 0);
	}
	/* the same id again: one segment, the new descriptor closed */
	CHECK(dd_store_seg_add(11, sealed_segment(4, 100), 4) == a);
	CHECK(fd_count() == fds0 + 1);
	/* a second segment does not follow the first one's slots */
	uint32_t b = dd_store_seg_add(12, sealed_segment(2, 200), 2);
	CHECK(b && b != a + 4 && view_has(b + 1, 201));

	/* a private mapping of pages 1-2 reads them, and a write stays in it */
	char *m = dd_store_map(a + 1, 2 * T_PAGE);
	CHECK(m != MAP_FAILED);
	t_fill(buf, 102);
	CHECK(memcmp(m + T_PAGE, buf, T_PAGE) == 0);
	memset(m, 0x77, T_PAGE);
	CHECK(view_has(a + 1, 101));
	CHECK(dd_store_map(a + 3, 2 * T_PAGE) == MAP_FAILED);   /* past its end */

	/* references: group_pages, never sharing/shared */
	dd_store_get(a + 1);
	dd_store_get(a + 1);
	dd_store_get(a + 2);
	CHECK(dd_store_refs(a + 1) == 2 && dd_store_alive(a + 2) && !dd_store_alive(a));
	CHECK(dd_store_group_pages() == 3);
	COUNTS(0, 0);
	/* b has no reference: the sweep releases it, and only it */
	dd_store_seg_sweep();
	CHECK(fd_count() == fds0 + 1);
	t_fill(buf, 201);
	CHECK(dd_stable_lookup(dd_hash_page(buf), buf, &c) == 0);
	CHECK(view_has(a + 2, 102));
	/* the last references go: released at the step's end, not before */
	dd_store_put(a + 1);
	dd_store_put(a + 1);
	dd_store_put(a + 2);
	CHECK(dd_store_group_pages() == 0 && fd_count() == fds0 + 1);
	CHECK(view_has(a + 3, 103));   /* still readable within the step */
	dd_store_seg_sweep();
	CHECK(fd_count() == fds0);
	t_fill(buf, 103);
	CHECK(dd_stable_lookup(dd_hash_page(buf), buf, &c) == 0);
	/* our mapping outlives the segment's descriptor and view */
	t_fill(buf, 102);
	CHECK(memcmp(m + T_PAGE, buf, T_PAGE) == 0 && (unsigned char)m[0] == 0x77);
	munmap(m, 2 * T_PAGE);

	/* a file page's slot by inode: ours by offset, a segment's by its own */
	uint32_t g = dd_store_seg_add(13, sealed_segment(3, 300), 3);
	struct stat sb;
	CHECK(dd_sys_fstat(dd_store_fd(), &sb) == 0);
	CHECK(dd_store_slot_at(sb.st_ino, 5 * T_PAGE) == 6);
	void *v = dd_store_map(g, 3 * T_PAGE);
	CHECK(v != MAP_FAILED);
	/* the mapping's inode is what /proc/self/maps and PROCMAP_QUERY give */
	struct dd_vma q;
	int qfd = dd_procmap_open();
	if (qfd >= 0) {
		CHECK(dd_vma_query(qfd, (uintptr_t)v, false, &q) == 0);
		dd_fd_close_temp(qfd);
		CHECK(dd_store_slot_at(q.ino, q.offset + 2 * T_PAGE) == g + 2);
		CHECK(dd_store_slot_at(q.ino, 3 * T_PAGE) == DD_SLOT_NONE);
	}
	CHECK(dd_store_slot_at(1, 0) == DD_SLOT_NONE);

	/* orphans (store.c, the sweep): a reference that no region's page and
	 * no mapping holds any more goes after two walks; a mapped page's stays */
	dd_store_get(g);       /* g + 0: mapped by v */
	dd_store_get(g + 1);   /* mapped by v too */
	munmap((char *)v + T_PAGE, 2 * T_PAGE);   /* g + 1, g + 2 unmapped */
	dd_store_get(g + 2);   /* a reference nothing holds */
	CHECK(dd_store_group_pages() == 3);
	for (int walk = 0; walk < 2; walk++) {
		dd_store_sweep_wanted();
		usleep(150000);   /* walks are at least 100 ms apart */
		dd_store_sweep();
	}
	CHECK(dd_store_group_pages() == 1 && dd_store_refs(g) == 1);
	CHECK(dd_store_refs(g + 1) == 0 && dd_store_refs(g + 2) == 0);
	dd_store_seg_sweep();
	CHECK(dd_store_alive(g));   /* still in use: the segment stays */
	munmap(v, T_PAGE);
	teardown();   /* releases g too: no descriptor left */
	CHECK(fd_count() == fds0 - 1);   /* the store's own memfd went as well */
}

int main(void)
{
	buf = t_map_anon(T_PAGE);
	pthread_mutex_lock(&eng.lock);
	test_basic();
	test_hint();
	test_keep();
	test_many();
	test_limit();
	test_segments();
	/* counters outlive dd_store_fini (pages may stay shared after
	 * shutdown); dd_store_init starts them afresh */
	setup(16UL << 20);
	dd_store_get(new_slot(1, 0));
	dd_store_fini();
	COUNTS(1, 1);
	CHECK(dd_store_init(16UL << 20) == 0);
	COUNTS(0, 0);
	teardown();
	pthread_mutex_unlock(&eng.lock);
	return T_PASS;
}
