/* SPDX-License-Identifier: MIT */
/*
 * vm.h - libdedup's own metadata memory (vm.c): page-granular, from mmap,
 * never the program's malloc.
 */
#ifndef DEDUP_VM_H
#define DEDUP_VM_H

#include "base.h"

void *dd_vm_alloc(size_t size);              /* zeroed, page granular */
void dd_vm_free(void *p, size_t size);
void *dd_vm_grow(void *p, size_t old_size, size_t new_size); /* keeps contents */
extern _Atomic size_t dd_vm_bytes;           /* metadata bytes in use */
/* single pages, for region.c (eng.lock held): */
void *dd_vm_page_get(void);                  /* one zeroed page, or NULL */
void dd_vm_page_put(void *p);                /* never splits a mapping */
void dd_vm_pages_reset(void);                /* all of them back, at once */

#endif /* DEDUP_VM_H */
