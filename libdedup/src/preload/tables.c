/* SPDX-License-Identifier: MIT */
/*
 * tables.c - preload mode: the state the folder shares (pl, preload.h) and
 * its tables. "ours" is libdedup's own memory (and its code: from_us());
 * with the ranges we registered (mine), those never to register (excl) and
 * those skipped until the next full round (ignore), it says which memory is
 * blocked. The tables live in memory we map ourselves, and grow inside
 * interposed calls: raw system calls only, no malloc.
 *
 * Locks: "ours" under pl.ours_lock, a spinlock that any thread takes (the
 * engine too, under eng.lock, through its own mmap calls) and under which
 * nothing else is taken; mine, excl, ignore and the snapshots under pl.lock.
 * Set up by start() (lifecycle.c), in the thread that starts the engine;
 * then used by the interposers and the dedup-preload thread.
 */
#include <link.h>

#include "preload.h"

struct dd_preload pl = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.ours_lock = ATOMIC_FLAG_INIT,
};

/* ---- range tables --------------------------------------------------------- */

static void *reserve(size_t bytes)
{
	void *p = dd_os_far_mmap(bytes, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p != MAP_FAILED)
		dd_os_madvise(p, bytes, MADV_DONTDUMP);   /* ours, not the program's */
	return p == MAP_FAILED ? NULL : p;
}

static size_t pages_of(size_t bytes) { return (bytes + DD_PAGE - 1) & ~(size_t)(DD_PAGE - 1); }

/*
 * Room for need entries of elem bytes in the table *p of *cap entries. A
 * table of mappings starts at the live vm.max_map_count (and some room:
 * dd_maps_table_cap), never at a guess of it, and doubles when the process
 * has more (the limit may be raised while we run). Raw system calls only:
 * this runs inside interposed calls. The table is in "ours" wherever it
 * moves. Not with pl.ours_lock held.
 */
bool dd_pl_table_grow(void **p, size_t *cap, size_t elem, size_t need)
{
	size_t ncap = *cap ? *cap : dd_own_table_cap(dd_maps_table_cap(), elem);
	void *q;

	while (ncap < need)
		ncap *= 2;
	if (*p && ncap == *cap)
		return true;
	if (*p)
		q = dd_os_far_mremap(*p, pages_of(*cap * elem), pages_of(ncap * elem));
	else
		q = reserve(pages_of(ncap * elem));
	if (!q || q == MAP_FAILED)
		return false;
	if (*p)
		dd_pl_ours_sub((uintptr_t)*p, pages_of(*cap * elem));
	dd_pl_ours_add((uintptr_t)q, pages_of(ncap * elem));
	*p = q;
	*cap = ncap;
	return true;
}

/*
 * The range tables (struct dd_rtab) grow by themselves (ranges.c) and may
 * move then: where each one was put in "ours" is remembered here, and the
 * reconcile moves that entry along (dd_pl_track_tables). Until it does, the
 * reconcile's check of VmFlags keeps it from registering a table that moved
 * (they are MADV_DONTDUMP).
 */
static struct { uintptr_t lo; size_t len; } tracked[4];

static void track(size_t i, uintptr_t lo, size_t len)
{
	if (tracked[i].lo == lo && tracked[i].len == len)
		return;
	if (tracked[i].len)
		dd_pl_ours_sub(tracked[i].lo, tracked[i].len);
	dd_pl_ours_add(lo, len);
	tracked[i].lo = lo;
	tracked[i].len = len;
}

void dd_pl_ours_add(uintptr_t lo, size_t len)
{
	ours_acquire();
	dd_rt_union(&pl.ours, pg_down(lo), pg_up(lo + len));
	ours_release();
}

void dd_pl_ours_sub(uintptr_t lo, size_t len)
{
	ours_acquire();
	dd_rt_sub(&pl.ours, pg_down(lo), pg_up(lo + len));
	ours_release();
}

/* Is [lo, hi) blocked: ours, excluded (by a call or by DEDUP_EXCLUDE),
 * ignored or already registered?
 * Returns the end of the blocking range at lo (> lo), or 0 if lo is free;
 * *next is set to the start of the next block above lo (or hi). pl.lock held. */
uintptr_t dd_pl_blocked_at(uintptr_t lo, uintptr_t hi, uintptr_t *next)
{
	const struct dd_rtab *tabs[] = { &pl.mine, &pl.excl, &pl.ignore, &pl.ours };
	uintptr_t end = 0, nxt = hi;

	ours_acquire();
	for (size_t k = 0; k < DD_ARRAY_SIZE(tabs); k++) {
		const struct dd_rtab *t = tabs[k];
		size_t i = dd_rt_lower(t, lo);
		if (i >= t->n)
			continue;
		if (t->r[i].lo <= lo) {
			if (t->r[i].hi > end)
				end = t->r[i].hi;
		} else if (t->r[i].lo < nxt) {
			nxt = t->r[i].lo;
		}
	}
	ours_release();
	for (size_t k = 0; k < pl.conf_excl.n; k++) {   /* DEDUP_EXCLUDE ranges */
		if (pl.conf_excl.r[k].lo <= lo && pl.conf_excl.r[k].hi > lo) {
			if (pl.conf_excl.r[k].hi > end)
				end = pl.conf_excl.r[k].hi;
		} else if (pl.conf_excl.r[k].lo > lo && pl.conf_excl.r[k].lo < nxt) {
			nxt = pl.conf_excl.r[k].lo;
		}
	}
	*next = nxt;
	return end;
}

/* The range tables that moved as they grew: "ours" follows them. pl.lock
 * held (mine, excl, ignore); ours is read under pl.ours_lock. */
void dd_pl_track_tables(void)
{
	const struct dd_rtab *t[] = { &pl.mine, &pl.excl, &pl.ignore };
	for (size_t i = 0; i < DD_ARRAY_SIZE(t); i++)
		track(i, (uintptr_t)t[i]->r, t[i]->cap * sizeof(*t[i]->r));
	ours_acquire();
	uintptr_t lo = (uintptr_t)pl.ours.r;
	size_t len = pl.ours.cap * sizeof(*pl.ours.r);
	ours_release();
	track(3, lo, len);
}

extern const ElfW(Ehdr) __ehdr_start __attribute__((visibility("hidden")));

/* Our text (to recognise our calls) and our writable segments (ours). */
static void self_ranges(void)
{
	const ElfW(Ehdr) *eh = &__ehdr_start;
	const ElfW(Phdr) *ph = (const void *)((const char *)eh + eh->e_phoff);
	uintptr_t bias = (uintptr_t)eh;

	for (int i = 0; i < eh->e_phnum; i++)
		if (ph[i].p_type == PT_LOAD && ph[i].p_offset == 0)
			bias = (uintptr_t)eh - ph[i].p_vaddr;
	for (int i = 0; i < eh->e_phnum; i++) {
		if (ph[i].p_type != PT_LOAD)
			continue;
		uintptr_t lo = bias + ph[i].p_vaddr, hi = lo + ph[i].p_memsz;
		if (ph[i].p_flags & PF_X) {
			if (!pl.text_lo || lo < pl.text_lo)
				pl.text_lo = lo;
			if (hi > pl.text_hi)
				pl.text_hi = hi;
		}
		if (ph[i].p_flags & PF_W)
			dd_rt_union(&pl.ours, pg_down(lo), pg_up(hi));
	}
}

/* os.c's mapping calls say which memory is ours (dd_os_ours_hook). */
static void ours_hook(uintptr_t lo, size_t len, bool add)
{
	if (add)
		dd_pl_ours_add(lo, len);
	else
		dd_pl_ours_sub(lo, len);
}

bool dd_pl_tables_init(void)
{
	if (pl.mine.r)
		return true;
	/* sized from the live vm.max_map_count; they grow (dd_pl_table_grow) */
	size_t cap = dd_maps_table_cap();
	if (!dd_rt_init(&pl.ours, cap) || !dd_rt_init(&pl.mine, cap) ||
	    !dd_rt_init(&pl.excl, cap) || !dd_rt_init(&pl.ignore, cap))
		return false;
	if (!TABLE_GROW(pl.vbuf, pl.vcap, 1) || !TABLE_GROW(pl.sbuf, pl.scap, 1) ||
	    !TABLE_GROW(pl.pieces, pl.pcap, 1) || !TABLE_GROW(pl.cand, pl.ccap, 1))
		return false;
	track(0, (uintptr_t)pl.mine.r, pl.mine.cap * sizeof(*pl.mine.r));
	track(1, (uintptr_t)pl.excl.r, pl.excl.cap * sizeof(*pl.excl.r));
	track(2, (uintptr_t)pl.ignore.r, pl.ignore.cap * sizeof(*pl.ignore.r));
	track(3, (uintptr_t)pl.ours.r, pl.ours.cap * sizeof(*pl.ours.r));
	self_ranges();
	dd_os_ours_hook = ours_hook;   /* before the engine maps anything */
	return true;
}
