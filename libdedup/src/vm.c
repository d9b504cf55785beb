/* SPDX-License-Identifier: MIT */
/*
 * vm.c - memory for libdedup's own tables, straight from mmap.
 *
 * Never the application's malloc: our threads may run while an application
 * thread that holds its allocator's lock is blocked on a page we protected.
 * Allocations are page granular and zeroed; they are few and large (tables
 * that double when full), so mmap's cost does not matter. Thread-safe.
 *
 * Single pages (dd_vm_page_get/put) are for tables made of many small
 * pieces that come and go (region.c's per-page metadata): they are carved
 * from reservations of ARENA bytes, so that giving one back never splits a
 * mapping - mappings are the application's budget too (vm.max_map_count).
 * A page given back stays in a small cache, beyond that it goes back to the
 * kernel (MADV_DONTNEED) and is reused from there, zeroed by the kernel.
 * dd_vm_bytes counts pages handed out and cached, not the reservations.
 * Single pages are not thread-safe: their only user, region.c, holds
 * eng.lock.
 */
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

_Atomic size_t dd_vm_bytes;

static size_t round_up(size_t n)
{
	return (n + DD_PAGE - 1) & ~(DD_PAGE - 1);
}

void *dd_vm_alloc(size_t size)
{
	void *p;

	size = round_up(size ? size : 1);
	p = dd_os_mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0, true);
	if (p == MAP_FAILED)
		return NULL;
	atomic_fetch_add(&dd_vm_bytes, size);
	return p;
}

void dd_vm_free(void *p, size_t size)
{
	if (!p)
		return;
	size = round_up(size ? size : 1);
	dd_os_munmap(p, size);
	atomic_fetch_sub(&dd_vm_bytes, size);
}

void *dd_vm_grow(void *p, size_t old_size, size_t new_size)
{
	void *q;

	if (!p)
		return dd_vm_alloc(new_size);
	old_size = round_up(old_size ? old_size : 1);
	new_size = round_up(new_size);
	if (new_size <= old_size)
		return p;
	q = dd_os_mremap(p, old_size, new_size, MREMAP_MAYMOVE, NULL, true);
	if (q == MAP_FAILED)
		return NULL;
	atomic_fetch_add(&dd_vm_bytes, new_size - old_size);
	return q;
}

/* ---- single pages ------------------------------------------------------ */

#define ARENA ((size_t)8 << 20)   /* the first reservations; later ones grow */
#define MAX_ARENAS 128
#define KEEP 64   /* pages given back and kept, not returned to the kernel */

static struct {
	struct { uintptr_t lo; size_t len; } arena[MAX_ARENAS];
	size_t narenas;
	uintptr_t next, end;      /* bump allocation in the last reservation */
	void *keep[KEEP];         /* given back, contents dirty */
	size_t nkeep;
	void **zeroed;            /* given back to the kernel: read as zeros */
	size_t nzeroed, cap;
} pg;

void *dd_vm_page_get(void)
{
	void *p;

	if (pg.nkeep) {
		p = pg.keep[--pg.nkeep];
		memset(p, 0, DD_PAGE);
		return p;
	}
	if (pg.nzeroed) {
		p = pg.zeroed[--pg.nzeroed];
	} else {
		if (pg.next == pg.end) {
			/* 8 MiB, then doubling every 8 reservations, up to 1 GiB */
			size_t len = ARENA << (pg.narenas / 8 < 7 ? pg.narenas / 8 : 7);
			void *a;
			if (pg.narenas == MAX_ARENAS)
				return NULL;
			a = dd_os_mmap(NULL, len, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0, true);
			if (a == MAP_FAILED)
				return NULL;
			pg.arena[pg.narenas].lo = (uintptr_t)a;
			pg.arena[pg.narenas++].len = len;
			pg.next = (uintptr_t)a;
			pg.end = pg.next + len;
		}
		p = (void *)pg.next;
		pg.next += DD_PAGE;
	}
	atomic_fetch_add(&dd_vm_bytes, DD_PAGE);
	return p;
}

void dd_vm_page_put(void *p)
{
	if (!p)
		return;
	if (pg.nkeep < KEEP) {
		pg.keep[pg.nkeep++] = p;
		return;
	}
	if (pg.nzeroed == pg.cap) {
		size_t ncap = pg.cap ? pg.cap * 2 : 512;
		void *q = dd_vm_grow(pg.zeroed, pg.cap * sizeof(void *), ncap * sizeof(void *));
		if (!q)
			return;   /* the page stays counted, lost for reuse: not wrong */
		pg.zeroed = q;
		pg.cap = ncap;
	}
	dd_os_madvise(p, DD_PAGE, MADV_DONTNEED);
	pg.zeroed[pg.nzeroed++] = p;
	atomic_fetch_sub(&dd_vm_bytes, DD_PAGE);
}

/* Every page handed out is forgotten and the reservations unmapped: at
 * shutdown, and in a fork()ed child that starts afresh, where the tables
 * the pages held may be torn (no walk over them is needed). */
void dd_vm_pages_reset(void)
{
	size_t held = 0;

	for (size_t i = 0; i < pg.narenas; i++) {
		dd_os_munmap((void *)pg.arena[i].lo, pg.arena[i].len);
		held += pg.arena[i].len;
	}
	held -= (pg.end - pg.next) + pg.nzeroed * DD_PAGE;
	atomic_fetch_sub(&dd_vm_bytes, held);
	dd_vm_free(pg.zeroed, pg.cap * sizeof(void *));
	memset(&pg, 0, sizeof(pg));
}
