/* SPDX-License-Identifier: MIT */
/*
 * libc_hooks.c - preload mode: free and realloc, for glibc's malloc only.
 *
 * A chunk glibc allocated with
 * mmap (large requests) is unmapped by free() and moved or unmapped by
 * realloc() through glibc-internal calls that no interposer sees; the engine
 * would then read pages that are gone. So before glibc does it, we
 * unregister what overlaps the chunk's mapping (its header says where: the
 * IS_MMAPPED bit, and prev_size is the offset from the mapping's start), and
 * hold pl.lock across the call so that no reconcile registers it meanwhile.
 * With another allocator (jemalloc, tcmalloc: the next "free" is not glibc's)
 * everything is forwarded untouched: they call munmap/madvise through the
 * PLT, where the interposers (interpose.c) see them.
 *
 * Any of the program's threads. pl.lock only around an mmapped glibc chunk
 * (dd_pl_op_begin / dd_pl_op_end); every other call is forwarded, then may
 * take a look for the lazy start (lifecycle.c, dd_pl_watch).
 */
#include <dlfcn.h>

#include "preload.h"

extern void __libc_free(void *);
static void (*next_free)(void *);
static void *(*next_realloc)(void *, size_t);
static bool glibc_malloc;
static __thread volatile bool resolving;   /* volatile: dlsym() reads it, via free() */

void dd_pl_resolve_alloc(void)
{
	/* dlsym(RTLD_NEXT) of a defined symbol does not allocate, but it may
	 * free the error string of an earlier failed dlsym() - ThreadSanitizer's
	 * start-up leaves one, allocated by its malloc - and that free() comes
	 * back here: the nested call finds `resolving` set and leaks the string
	 * (free) or fails (realloc) instead of recursing until the stack ends.
	 * Very early (ld.so freeing during start-up) dlsym may find nothing
	 * yet: then we try again next time, and the constructor resolves for
	 * good. */
	if (resolving)
		return;
	resolving = true;
	void *f = dlsym(RTLD_NEXT, "free"), *r = dlsym(RTLD_NEXT, "realloc");
	resolving = false;
	if (!f || !r)
		return;
	glibc_malloc = f == (void *)__libc_free;
	next_realloc = (void *(*)(void *, size_t))r;
	next_free = (void (*)(void *))f;   /* same values from every thread */
	dd_pl_resolve_fd_calls();
	dd_pl_resolve_mem_calls();
}

/* The mapping of glibc chunk p, if it is an mmapped chunk. */
static bool glibc_mmapped(void *p, uintptr_t *lo, uintptr_t *hi)
{
	const size_t *h = (const size_t *)p;
	size_t size, prev;

	if (!glibc_malloc)   /* only then is there a glibc header before p */
		return false;
	size = h[-1];
	if (!(size & 2))     /* IS_MMAPPED */
		return false;
	prev = h[-2];
	*lo = (uintptr_t)p - 2 * sizeof(size_t) - prev;
	*hi = *lo + prev + (size & ~(size_t)7);
	return dd_page_aligned(*lo) && *hi > *lo;
}

DD_API void free(void *p)
{
	uintptr_t lo, hi;
	struct op o;

	if (dd_unlikely(!next_free)) {
		dd_pl_resolve_alloc();
		if (!next_free)
			return;   /* too early to know whose memory this is: leak it */
	}
	if (!p || state() != PL_ON || from_us(__builtin_return_address(0)) ||
	    !glibc_mmapped(p, &lo, &hi)) {
		next_free(p);
		dd_pl_watch(true);
		return;
	}
	dd_pl_op_begin(&o, lo, hi);
	next_free(p);
	dd_pl_op_end(&o);
}

DD_API void *realloc(void *p, size_t n)
{
	uintptr_t lo, hi;
	struct op o;
	void *r;

	if (dd_unlikely(!next_realloc))
		dd_pl_resolve_alloc();
	if (dd_unlikely(!next_realloc)) {
		errno = ENOMEM;
		return NULL;
	}
	if (!p || state() != PL_ON || from_us(__builtin_return_address(0)) ||
	    !glibc_mmapped(p, &lo, &hi)) {
		r = next_realloc(p, n);
		dd_pl_watch(true);
		return r;
	}
	dd_pl_op_begin(&o, lo, hi);
	r = next_realloc(p, n);
	dd_pl_op_end(&o);
	return r;
}
