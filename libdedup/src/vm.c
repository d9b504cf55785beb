/* SPDX-License-Identifier: MIT */
/*
 * vm.c - memory for libdedup's own tables, straight from mmap.
 *
 * Never the application's malloc: our threads may run while an application
 * thread that holds its allocator's lock is blocked on a page we protected.
 * Allocations are page granular and zeroed; they are few and large (tables
 * that double when full), so mmap's cost does not matter. Thread-safe.
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
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
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
	munmap(p, size);
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
	q = mremap(p, old_size, new_size, MREMAP_MAYMOVE);
	if (q == MAP_FAILED)
		return NULL;
	atomic_fetch_add(&dd_vm_bytes, new_size - old_size);
	return q;
}
