/* SPDX-License-Identifier: MIT */
/*
 * store.c - the canonical page store.
 *
 * Every canonical ("stable") page lives at one slot of a memfd: slot s is
 * file offset s * 4096. A merged page is a MAP_PRIVATE mapping of its slot,
 * so the kernel shares one physical page between all sharers and gives a
 * writer its own copy. We read and write canonical pages through one
 * MAP_SHARED view of the whole file, and write a slot only once, before
 * anybody maps it: a canonical page is never written while mapped.
 *
 * The program may close the memfd's number with a raw system call and open
 * a file of its own there (fds.c). So a slot is released through the view
 * (MADV_REMOVE, not fallocate), which no descriptor can redirect; a private
 * mapping of slots (dd_store_map) is checked again after the mmap; and a
 * slot is written with pwrite() right after a check of the number (a copy
 * into the view would fault, and under a memory cgroup's limit a fault is
 * the OOM killer's, where pwrite() just fails).
 *
 * Slots are reference counted: one reference per page that maps the slot.
 * When the last one goes (the sharers copied the page on write), the slot's
 * page is released (punched: MADV_REMOVE on the view) and the slot is reused. A
 * punch is only ever done at zero references: punching a page that is still
 * mapped would make its sharers read zeros.
 *
 * Contiguity: new slots come from the high-water mark when the caller's hint
 * (the slot after the previous one) is it, so the canonical pages of a run of
 * new duplicates are contiguous in the file and one mmap covers the run.
 *
 * Group segments (a sharing group, docs/sharing.md): slots from SEG_BASE up
 * name pages of sealed memfds that another process may have written and
 * every member maps (group.c brings them). Slot SEG_BASE + k * SEG_PAGES + p
 * is page p of segment k, so a run of contiguous slots never crosses from
 * one file into another. A segment's pages are never written or punched by
 * anybody (sealed): its refs only count the pages of ours that map it, and
 * when none does (checked at the end of a scan step), we close our descriptor
 * and read-only view and tell the helper; the kernel frees the pages when
 * their last mapping anywhere goes. Its pages are not in sharing/shared
 * (those count this process's own canonical pages): group_pages counts them.
 *
 * Locking: all functions are called with eng.lock held.
 */
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

struct slot_info {
	uint64_t hash;
	uint32_t refs;
	uint32_t next_free;   /* free list link (slot + 1), 0 = end */
	bool keep;            /* in use at a fork(): never released */
};

/* Group segments: slot indexes from SEG_BASE, SEG_PAGES to a segment. */
#define SEG_BASE 0x80000000u
#define SEG_SHIFT 12
#define SEG_PAGES (1u << SEG_SHIFT)
#define SEG_MAX 65536u
_Static_assert(SEG_PAGES == DD_GROUP_MAX_SEG_PAGES, "a segment fits its slot range");
_Static_assert(SEG_BASE + SEG_MAX * SEG_PAGES - 1 < DD_SLOT_COWED - 1, "below the markers");

struct seg {
	uint64_t id;          /* the helper's; 0: a free entry */
	uint64_t ino;         /* the memfd's inode (fd checks, mappings) */
	int fd;               /* sealed, tagged, ours alone (not fds.c's table) */
	uint32_t npages;
	const char *view;     /* read-only shared view (allowed once sealed) */
	uint32_t live;        /* pages with refs > 0 */
	uint32_t next_free;   /* free list link (index + 1) */
	uint32_t *refs;       /* per page */
	uint64_t *hash;       /* per page */
};

static struct {
	struct seg *v;
	uint32_t n;           /* entries ever used */
	uint32_t free_head;   /* index + 1 */
	_Atomic uint64_t pages;   /* group pages mapped by us (refs), for stats */
	bool sweep;           /* a segment's last reference went */
	bool fresh;           /* a segment came this step */
} sg;

static struct seg *seg_of(uint32_t slot, uint32_t *page)
{
	uint32_t k = (slot - SEG_BASE) >> SEG_SHIFT;
	*page = slot & (SEG_PAGES - 1);
	return &sg.v[k];
}
#define IS_SEG(slot) ((slot) >= SEG_BASE)

/* The segment page a slot names, or NULL if it names none (an index past
 * the table, a released segment, a page past its end): for slots that may
 * come from outside (a helper's answer, a mapping's file offset). */
static struct seg *seg_live(uint32_t slot, uint32_t *page)
{
	if ((slot - SEG_BASE) >> SEG_SHIFT >= sg.n)
		return NULL;
	struct seg *g = seg_of(slot, page);
	return g->id && *page < g->npages ? g : NULL;
}

static struct {
	int fd;
	uint64_t ino;         /* the memfd's inode: mappings of it are merged runs */
	const char *view;     /* shared view of the whole file (reads, punches) */
	size_t max_slots;
	struct slot_info *info;
	size_t info_cap;      /* entries allocated in info */
	uint32_t hwm;         /* slots ever used */
	uint32_t free_head;   /* slot + 1 */
	_Atomic uint64_t sharing, shared;   /* read without eng.lock by stats */
} st = { .fd = -1 };

int dd_store_init(size_t max_bytes)
{
	st.max_slots = max_bytes / DD_PAGE;
	if (st.max_slots > SEG_BASE)
		st.max_slots = SEG_BASE;   /* 8 TiB; group segments above */
	int fd = memfd_create("libdedup", MFD_CLOEXEC);
	if (fd < 0)
		return -errno;
	fd = dd_fd_adopt(&st.fd, fd);   /* above the floor, tagged (fds.c) */
	if (fd < 0)
		return fd;
	struct stat sb;
	if (dd_sys_fstat(st.fd, &sb) < 0)   /* fstat() hides our numbers */
		goto fail;
	st.ino = sb.st_ino;
	if (ftruncate(st.fd, (off_t)(st.max_slots * DD_PAGE)) < 0)
		goto fail;
	st.view = dd_os_mmap(NULL, st.max_slots * DD_PAGE, PROT_READ | PROT_WRITE,
			     MAP_SHARED | MAP_NORESERVE, st.fd, 0, true);
	if (st.view == MAP_FAILED) {
		st.view = NULL;
		goto fail;
	}
	/* A core dump would otherwise read (and allocate) the whole sparse file. */
	dd_os_madvise((void *)st.view, st.max_slots * DD_PAGE, MADV_DONTDUMP);
	st.hwm = 0;
	st.free_head = 0;
	atomic_store(&st.sharing, 0);
	atomic_store(&st.shared, 0);
	return 0;
fail:;
	int e = -errno;
	dd_fd_close(&st.fd);
	return e;
}

/*
 * Called at shutdown. Merged pages keep their own reference to the memfd
 * (a mapping holds the file), so closing our fd and view is safe; the slot
 * table goes, and the pages of the file stay as long as somebody maps them.
 */
static void orph_reset(void);

static void seg_release_all(void);

void dd_store_fini(void)
{
	orph_reset();
	seg_release_all();
	if (st.view)
		dd_os_munmap((void *)st.view, st.max_slots * DD_PAGE);
	dd_fd_close(&st.fd);
	dd_vm_free(st.info, st.info_cap * sizeof(*st.info));
	st.view = NULL;
	st.info = NULL;
	st.info_cap = st.max_slots = 0;
	st.hwm = st.free_head = 0;
	st.fd = -1;
	/* sharing/shared stay: the pages are still shared after shutdown */
}

/* The number, -1 once it is no longer our memfd (fds.c). For tests that
 * look at the file; the library itself only maps through dd_store_map. */
int dd_store_fd(void) { return dd_fd_intact(st.fd) ? st.fd : -1; }

/*
 * A private mapping of slots [ref - 1, ref - 1 + len / page), anywhere, or
 * MAP_FAILED. The number is checked again after the mmap: once the program
 * has taken it (fds.c) it never names our memfd again (the memfd is not
 * installed anew), so a number that is still ours afterwards was ours when
 * it was mapped, and the mapping is of our file, never the program's.
 */
void *dd_store_map(uint32_t ref, size_t len)
{
	int fd = st.fd;
	uint64_t ino = 0;
	off_t off = (off_t)(ref - 1) * (off_t)DD_PAGE;

	if (IS_SEG(ref - 1)) {   /* the same, with a segment's descriptor */
		uint32_t p;
		struct seg *g = seg_of(ref - 1, &p);
		if (p + len / DD_PAGE > g->npages)
			return MAP_FAILED;
		fd = g->fd;
		ino = g->ino;
		off = (off_t)p * (off_t)DD_PAGE;
	}
	if (ino ? !dd_fd_names(fd, ino) : !dd_fd_intact(fd))
		return MAP_FAILED;
	void *t = dd_os_mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, off, true);
	if (t != MAP_FAILED && (ino ? !dd_fd_names(fd, ino) : !dd_fd_intact(fd))) {
		dd_os_munmap(t, len);
		return MAP_FAILED;
	}
	return t;
}

const void *dd_store_page(uint32_t slot)
{
	if (IS_SEG(slot)) {
		uint32_t p;
		struct seg *g = seg_of(slot, &p);
		return g->view + (size_t)p * DD_PAGE;
	}
	return st.view + (size_t)slot * DD_PAGE;
}

/* The slot (+ 1) that page offset off of the file with inode ino holds, or
 * DD_SLOT_NONE: for a mapping found outside any region (unmerging). */
uint32_t dd_store_slot_at(uint64_t ino, uint64_t off)
{
	uint64_t p = off / DD_PAGE;

	if (ino == st.ino)
		return p < st.max_slots ? (uint32_t)p + 1 : DD_SLOT_NONE;
	for (uint32_t k = 0; ino && k < sg.n; k++)
		if (sg.v[k].id && sg.v[k].ino == ino)
			return p < sg.v[k].npages ? SEG_BASE + (k << SEG_SHIFT) + (uint32_t)p + 1
						  : DD_SLOT_NONE;
	return DD_SLOT_NONE;
}

static int ensure_info(uint32_t slot)
{
	if (slot < st.info_cap)
		return 0;
	size_t ncap = st.info_cap ? st.info_cap * 2 : 4096;
	while (ncap <= slot)
		ncap *= 2;
	void *p = dd_vm_grow(st.info, st.info_cap * sizeof(*st.info), ncap * sizeof(*st.info));
	if (!p)
		return -ENOMEM;
	st.info = p;
	st.info_cap = ncap;
	return 0;
}

/* A new slot holding a copy of @content, zero references. 0 on failure,
 * else slot + 1. */
uint32_t dd_store_new(const void *content, uint32_t hint)
{
	dd_assert_held(&eng.lock);
	uint32_t slot;

	if (hint && hint - 1 == st.hwm && st.hwm < st.max_slots) {
		slot = st.hwm++;
	} else if (st.free_head) {
		slot = st.free_head - 1;
		st.free_head = st.info[slot].next_free;
	} else if (st.hwm < st.max_slots) {
		slot = st.hwm++;
	} else {
		return 0;
	}
	if (ensure_info(slot) < 0)
		goto undo;
	/* pwrite(), not a copy into the view: under a memory cgroup's limit
	 * the write fails (ENOMEM) and the merge is skipped, where a fault in
	 * the view would have the cgroup's OOM killer take the program
	 * (hostile_memcg failed 4 runs in 9 with the copy). The number is
	 * checked right before (a few instructions; docs/preload.md). */
	if (pwrite(dd_store_fd(), content, DD_PAGE, (off_t)slot * (off_t)DD_PAGE) != (ssize_t)DD_PAGE)
		goto undo;
	st.info[slot].refs = 0;
	st.info[slot].next_free = 0;
	st.info[slot].hash = 0;
	st.info[slot].keep = false;
	return slot + 1;
undo:
	/* give it back */
	if (slot < st.info_cap) {
		st.info[slot].next_free = st.free_head;
		st.free_head = slot + 1;
	}
	return 0;
}

void dd_store_get(uint32_t ref)
{
	dd_assert_held(&eng.lock);
	if (IS_SEG(ref - 1)) {
		uint32_t p;
		struct seg *g = seg_of(ref - 1, &p);
		if (g->refs[p]++ == 0)
			g->live++;
		sg.pages++;
		return;
	}
	struct slot_info *si = &st.info[ref - 1];
	if (si->refs++ == 0)
		st.shared++;
	st.sharing++;
}

/* At fork(): a child may map every slot in use; keep them for good. */
void dd_store_keep_all(void)
{
	dd_assert_held(&eng.lock);
	for (uint32_t i = 0; i < st.hwm && i < st.info_cap; i++)
		if (st.info[i].refs)
			st.info[i].keep = true;
}

static void release(uint32_t slot)
{
	if (st.info[slot].keep)
		return;   /* stays a valid canonical page, found by its hash */
	/* Nobody maps it (refs == 0): punching cannot change what anyone reads. */
	/* a punch of the view's page: no descriptor can redirect it */
	dd_os_madvise((void *)(st.view + (size_t)slot * DD_PAGE), DD_PAGE, MADV_REMOVE);
	dd_stable_remove(st.info[slot].hash, slot + 1);
	st.info[slot].hash = 0;
	st.info[slot].next_free = st.free_head;
	st.free_head = slot + 1;
	DD_INC(store_slots_freed, 1);
}

static void seg_release(struct seg *g);

/* Drop one reference; at zero the slot is released. Also used with a
 * slot that never got a reference (a canonical page nobody matched). */
void dd_store_put(uint32_t ref)
{
	dd_assert_held(&eng.lock);
	if (IS_SEG(ref - 1)) {
		uint32_t p;
		struct seg *g = seg_of(ref - 1, &p);
		if (g->refs[p]) {
			sg.pages--;
			if (--g->refs[p] == 0)
				g->live--;
		}
		sg.sweep |= !g->live;   /* released at the end of the step */
		return;
	}
	struct slot_info *si = &st.info[ref - 1];

	if (si->refs) {
		st.sharing--;
		if (--si->refs)
			return;
		st.shared--;
	}
	release(ref - 1);
}

uint32_t dd_store_refs(uint32_t ref)
{
	uint32_t p;
	return IS_SEG(ref - 1) ? seg_of(ref - 1, &p)->refs[p] : st.info[ref - 1].refs;
}
bool dd_store_alive(uint32_t ref)
{
	if (ref && IS_SEG(ref - 1)) {
		uint32_t p;
		struct seg *g = seg_live(ref - 1, &p);
		return g && g->refs[p];
	}
	return ref && ref - 1 < st.hwm && ref - 1 < st.info_cap && st.info[ref - 1].refs;
}
uint64_t dd_store_hash(uint32_t ref)
{
	uint32_t p;
	if (!IS_SEG(ref - 1))
		return st.info[ref - 1].hash;
	/* a segment page the helper named: 0 unless it is one (scan.c checks
	 * an answer with this) */
	struct seg *g = seg_live(ref - 1, &p);
	return g ? g->hash[p] : 0;
}
void dd_store_set_hash(uint32_t ref, uint64_t h) { st.info[ref - 1].hash = h; }
uint64_t dd_store_group_pages(void) { return atomic_load(&sg.pages); }
bool dd_store_slot_is_group(uint32_t slot) { return IS_SEG(slot); }
uint64_t dd_store_sharing(void) { return atomic_load(&st.sharing); }
uint64_t dd_store_shared(void) { return atomic_load(&st.shared); }

/*
 * Orphans. A page's reference is dropped where libdedup sees the page go
 * (a copy on write, a discard, an unmerge). The preload library cannot see
 * everything: glibc's free() of a large chunk is an munmap inside libc, and
 * a range it unregisters around mprotect or munmap leaves its merged pieces
 * to whatever the program does next. The region's metadata then goes
 * (region.c, meta_clear) while the reference stays: the slot's page would
 * stay in the memfd for good, charged to the program's memory cgroup:
 * orphans that grow with every round of malloc/free until the cgroup's
 * limit kills the program (hostile_memcg, tests/hostile/hostile.sh).
 *
 * The sweep releases a slot that nothing can read any more: referenced
 * (refs > 0, so not a fresh slot of this pass), not kept for a fork()ed
 * child, merged into by no page of any region (metadata), and mapped by no
 * private mapping of our memfd in the process (a mapping covers the slot
 * at its file offset; a page that was copied on write still counts, which
 * only keeps a slot longer). Punching a slot that a page still maps would
 * make it read zeros, so a slot must be found unmapped by two walks of the
 * mappings, at least a pass and 100 ms apart, and 20 times as long as the
 * last walk took (a walk costs one PROCMAP_QUERY per mapping: a process
 * with many mappings walks less often). At 500 ms a program that frees
 * memory quickly under a memory cgroup's limit outran the sweep
 * (hostile_memcg OOM-killed in 3 runs of 9 on a quiet machine). A walk goes up
 * the address space VMA by VMA, and a piece that mremap() moves below the
 * walk while it runs is missed by that walk - but not by both, unless it
 * moves during each of them. Runs with eng.lock held at the end of a
 * pass, with no merge in flight; only after a region dropped metadata of a
 * merged page.
 */
static struct {
	bool wanted;
	uint8_t *suspect;     /* slots unmapped at the first walk (bit_of) */
	size_t bytes;
	size_t n;             /* own slots at the first walk: segments' bits follow */
	uint64_t *seg_id;     /* segments at the first walk, by index */
	size_t nseg;
	uint64_t last_ns;     /* the last walk */
	uint64_t cost_ns;     /* what it took */
} orph;

void dd_store_sweep_wanted(void) { orph.wanted = true; }

static void orph_reset(void)
{
	if (orph.suspect)
		dd_vm_free(orph.suspect, orph.bytes);
	if (orph.seg_id)
		dd_vm_free(orph.seg_id, orph.nseg * sizeof(*orph.seg_id));
	orph.suspect = NULL;
	orph.seg_id = NULL;
	orph.wanted = false;
}

/* A walk's bitmap: own slots [0, n), then SEG_PAGES bits per segment. */
struct mark_ctx { uint8_t *bits; size_t n, nseg; };

static void mark(struct mark_ctx *m, size_t bit)
{
	m->bits[bit / 8] |= (uint8_t)(1u << (bit % 8));
}

static bool marked(const uint8_t *bits, size_t bit) { return bits[bit / 8] & (1u << (bit % 8)); }

static void mark_slot(void *ctx, uint32_t ref)
{
	struct mark_ctx *m = ctx;
	uint32_t s = ref - 1;

	if (!IS_SEG(s) && s < m->n)
		mark(m, s);
	else if (IS_SEG(s) && ((s - SEG_BASE) >> SEG_SHIFT) < m->nseg)
		mark(m, m->n + (s - SEG_BASE));
}

static int mark_mapped(void *ctx, const struct dd_vma *v)
{
	struct mark_ctx *m = ctx;
	uint64_t s = v->offset / DD_PAGE, e = s + (v->hi - v->lo) / DD_PAGE;

	if (!v->ours || v->shared)   /* a shared view is ours, not a page's */
		return 0;
	if (v->ino == st.ino) {
		for (; s < e && s < m->n; s++)
			mark(m, s);
		return 0;
	}
	for (uint32_t k = 0; k < m->nseg; k++)
		if (sg.v[k].id && sg.v[k].ino == v->ino) {
			for (; s < e && s < sg.v[k].npages; s++)
				mark(m, m->n + ((size_t)k << SEG_SHIFT) + s);
			break;
		}
	return 0;
}

/* An orphan found by both walks: its references go. */
static void release_orphan(size_t bit)
{
	if (bit < orph.n) {
		struct slot_info *si = &st.info[bit];
		st.sharing -= si->refs;
		st.shared--;
		si->refs = 0;
		release((uint32_t)bit);
		return;
	}
	struct seg *g = &sg.v[(bit - orph.n) >> SEG_SHIFT];
	uint32_t p = (uint32_t)(bit - orph.n) & (SEG_PAGES - 1);
	sg.pages -= g->refs[p];
	g->refs[p] = 0;
	g->live--;
	sg.sweep = true;   /* the segment goes at the step's end if it was its last */
}

/* Is bit an orphan candidate: referenced, not kept, the same segment as at
 * the first walk? */
static bool referenced(size_t bit)
{
	if (bit < orph.n)
		return bit < st.info_cap && st.info[bit].refs && !st.info[bit].keep;
	size_t k = (bit - orph.n) >> SEG_SHIFT;
	uint32_t p;
	struct seg *g = seg_live(SEG_BASE + (uint32_t)(bit - orph.n), &p);
	return g && k < orph.nseg && g->id == orph.seg_id[k] && g->refs[p];
}

void dd_store_sweep(void)
{
	dd_assert_held(&eng.lock);
	size_t n = orph.suspect ? orph.n : (st.hwm < st.info_cap ? st.hwm : st.info_cap);
	size_t nseg = orph.suspect ? orph.nseg : sg.n, freed = 0;
	size_t nbits = n + (nseg << SEG_SHIFT), bytes = (nbits + 7) / 8;
	uint8_t *live;

	if ((!orph.wanted && !orph.suspect) || !nbits)
		return;
	/* a walk costs one PROCMAP_QUERY per mapping (above) */
	uint64_t now = dd_now_ns(), gap = 20 * orph.cost_ns;
	if (now - orph.last_ns < (gap > 100000000ULL ? gap : 100000000ULL))
		return;
	orph.last_ns = now;
	live = dd_vm_alloc(bytes);
	if (!live)
		return;
	struct mark_ctx m = { live, n, nseg < sg.n ? nseg : sg.n };
	dd_region_each_slot(mark_slot, &m);
	int walked = dd_vmas_in(0, UINTPTR_MAX, mark_mapped, &m);
	orph.cost_ns = dd_now_ns() - now;
	if (walked < 0)
		goto out;
	if (!orph.suspect) {
		/* first walk: remember the suspects, and which segments they are in */
		size_t found = 0;
		orph.wanted = false;
		orph.n = n;
		orph.nseg = nseg;
		orph.suspect = dd_vm_alloc(bytes);
		orph.seg_id = nseg ? dd_vm_alloc(nseg * sizeof(*orph.seg_id)) : NULL;
		if (!orph.suspect || (nseg && !orph.seg_id)) {
			orph_reset();
			goto out;
		}
		orph.bytes = bytes;
		for (size_t k = 0; k < nseg; k++)
			orph.seg_id[k] = sg.v[k].id;
		for (size_t b = 0; b < nbits; b++)
			if (referenced(b) && !marked(live, b)) {
				orph.suspect[b / 8] |= (uint8_t)(1u << (b % 8));
				found++;
			}
		if (!found)
			orph_reset();
		goto out;
	}
	/* second walk: release what both found unmapped */
	for (size_t b = 0; b < nbits; b++)
		if (marked(orph.suspect, b) && referenced(b) && !marked(live, b)) {
			release_orphan(b);
			freed++;
		}
	orph_reset();
	if (freed)
		dd_debug("store: released %zu canonical pages that no page maps any more", freed);
out:
	dd_vm_free(live, bytes);
}

/* ---- group segments ------------------------------------------------------ */

/*
 * Take segment id (descriptor fd, checked and sealed: group.c; now ours)
 * of npages pages. Every page is hashed from a read-only view, so that an
 * answer of the helper's naming one of its pages can be checked (scan.c
 * group_lookup): the hashes the helper gave are not trusted for anything.
 * The pages are not entered in our stable index: the helper's index is the
 * group's, and a candidate that matches nothing here is asked about anyway
 * (one LOOKUP per 256). Entered, they cost a member 16 to 32 bytes a page
 * for as long as it held the segment (2 MiB of a 256 MiB member's Pss once
 * all its pages were merged, where KSM's stable tree is kernel memory),
 * to save it a round trip per 256 pages while it merged. A
 * segment we hold already is not taken twice (fd is closed). Returns the
 * slot (+ 1) of its page 0, or 0. It stays at least until the end of the
 * step (dd_store_seg_sweep), so the caller may batch merges into it.
 */
uint32_t dd_store_seg_add(uint64_t id, int fd, uint32_t npages)
{
	dd_assert_held(&eng.lock);
	struct stat sb;
	struct seg *g = NULL;
	uint32_t k;

	/* the tag dd_fd_names() checks before each use (fds.c) */
	if (fcntl(fd, F_SETSIG, DD_FD_TAG) < 0)
		goto fail;

	for (k = 0; k < sg.n; k++)
		if (sg.v[k].id == id) {
			/* ours still, or the program closed it (a raw close_range):
			 * then this one, the same file, takes its place */
			g = &sg.v[k];
			if (!dd_fd_names(g->fd, g->ino) && dd_fd_names(fd, g->ino))
				g->fd = fd;
			else
				dd_sys_close(fd);
			return SEG_BASE + (k << SEG_SHIFT) + 1;
		}
	if (!id || !npages || npages > SEG_PAGES || dd_sys_fstat(fd, &sb) < 0)
		goto fail;
	if (sg.free_head) {
		k = sg.free_head - 1;
		sg.free_head = sg.v[k].next_free;
	} else if (sg.n < SEG_MAX) {
		void *v = dd_vm_grow(sg.v, sg.n * sizeof(*sg.v), (sg.n + 1) * sizeof(*sg.v));
		if (!v)
			goto fail;
		sg.v = v;
		k = sg.n++;
	} else {
		goto fail;
	}
	g = &sg.v[k];
	*g = (struct seg){ .id = id, .ino = sb.st_ino, .fd = fd, .npages = npages };
	size_t tb = npages * (sizeof(*g->refs) + sizeof(*g->hash));
	g->hash = dd_vm_alloc(tb);
	g->view = dd_os_mmap(NULL, npages * DD_PAGE, PROT_READ, MAP_SHARED, fd, 0, true);
	if (!g->hash || g->view == MAP_FAILED || !dd_fd_names(fd, g->ino)) {
		if (g->view != MAP_FAILED)
			dd_os_munmap((void *)g->view, npages * DD_PAGE);
		dd_vm_free(g->hash, tb);
		*g = (struct seg){ .next_free = sg.free_head };
		sg.free_head = k + 1;
		goto fail;
	}
	dd_os_madvise((void *)g->view, npages * DD_PAGE, MADV_DONTDUMP);
	sg.fresh = true;
	g->refs = (uint32_t *)(g->hash + npages);
	uint32_t base = SEG_BASE + (k << SEG_SHIFT) + 1;
	for (uint32_t p = 0; p < npages; p++)
		g->hash[p] = dd_hash_page(g->view + (size_t)p * DD_PAGE);
	return base;
fail:
	dd_sys_close(fd);
	return 0;
}

/* At the end of a scan step (no batch refers to a slot any more): release
 * the segments nothing of ours maps, fresh ones that nothing took included.
 * Never earlier: a batch may name a slot whose last reference just went,
 * and its compare reads the view. */
void dd_store_seg_sweep(void)
{
	dd_assert_held(&eng.lock);
	if (!sg.sweep && !sg.fresh)
		return;
	sg.sweep = sg.fresh = false;
	for (uint32_t k = 0; k < sg.n; k++)
		if (sg.v[k].id && !sg.v[k].live)
			seg_release(&sg.v[k]);
}

/* Nothing of ours maps g (or we are done): forget it, and tell the
 * helper. Its pages are in no index of ours (dd_store_seg_add). */
static void seg_release(struct seg *g)
{
	uint32_t k = (uint32_t)(g - sg.v);
	uint64_t id = g->id;

	dd_os_munmap((void *)g->view, g->npages * DD_PAGE);
	if (g->fd >= 0 && dd_fd_names(g->fd, g->ino))
		dd_sys_close(g->fd);
	dd_vm_free(g->hash, g->npages * (sizeof(*g->refs) + sizeof(*g->hash)));
	*g = (struct seg){ .next_free = sg.free_head };
	sg.free_head = k + 1;
	if (dd_group_active())
		dd_group_release(&id, 1);
}

static void seg_release_all(void)
{
	for (uint32_t k = 0; k < sg.n; k++)
		if (sg.v[k].id)
			seg_release(&sg.v[k]);
	dd_vm_free(sg.v, sg.n * sizeof(*sg.v));
	sg.v = NULL;
	sg.n = sg.free_head = 0;
}

/* A fork()ed child: the segments' descriptors are the parent's business
 * (the child's merged pages hold their files by their mappings). */
void dd_store_child_close_segments(void)
{
	for (uint32_t k = 0; k < sg.n; k++)
		if (sg.v[k].id && sg.v[k].fd >= 0) {
			if (dd_fd_names(sg.v[k].fd, sg.v[k].ino))
				dd_sys_close(sg.v[k].fd);
			sg.v[k].fd = -1;
		}
}
