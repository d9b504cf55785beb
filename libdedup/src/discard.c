/* SPDX-License-Identifier: MIT */
/*
 * discard.c - what the uffd reader needs to keep merged pages anonymous in
 * behaviour when the application discards them.
 *
 * A merged page is a MAP_PRIVATE mapping of a memfd page. After
 * madvise(MADV_DONTNEED) a private file mapping reads the file again, where
 * anonymous memory reads zeros - and allocators rely on the zeros. So merged
 * runs are registered with our userfaultfd in MINOR mode: the kernel tells
 * us (UFFD_EVENT_REMOVE) before it zaps them, and the next access to a zapped
 * page is a minor fault that we resolve with zeros instead of the memfd
 * page. Two interval sets remember what is needed for that:
 *
 *   merged    address ranges where we placed canonical mappings (only
 *             REMOVE events inside them matter);
 *   discard   pages of those ranges the application discarded and has not
 *             touched since: a minor fault there gets a zero page, anywhere
 *             else the canonical page (UFFDIO_CONTINUE).
 *
 * Locking: eng.gate, held by the reader (events and faults) and by the
 * merger (which clears a range before it places a new mapping there).
 */
#include <string.h>

#include "internal.h"

struct ivset {
	uintptr_t (*iv)[2];   /* sorted, disjoint, non-adjacent [start, end) */
	size_t n, cap;
};

static struct ivset merged, discard;

/* first interval whose end is above a */
static size_t iv_lower(const struct ivset *s, uintptr_t a)
{
	size_t lo = 0, hi = s->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (s->iv[mid][1] <= a)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int iv_reserve(struct ivset *s, size_t extra)
{
	if (s->n + extra <= s->cap)
		return 0;
	size_t ncap = s->cap ? s->cap * 2 : 256;
	while (ncap < s->n + extra)
		ncap *= 2;
	void *p = dd_vm_grow(s->iv, s->cap * sizeof(*s->iv), ncap * sizeof(*s->iv));
	if (!p)
		return -ENOMEM;
	s->iv = p;
	s->cap = ncap;
	return 0;
}

static int iv_add(struct ivset *s, uintptr_t a, uintptr_t b)
{
	if (a >= b)
		return 0;
	/* intervals that overlap or touch [a, b) */
	size_t i = iv_lower(s, a ? a - 1 : 0), j = i;
	while (j < s->n && s->iv[j][0] <= b)
		j++;
	if (i < j) {
		if (s->iv[i][0] < a)
			a = s->iv[i][0];
		if (s->iv[j - 1][1] > b)
			b = s->iv[j - 1][1];
		s->iv[i][0] = a;
		s->iv[i][1] = b;
		memmove(&s->iv[i + 1], &s->iv[j], (s->n - j) * sizeof(*s->iv));
		s->n -= j - i - 1;
		return 0;
	}
	if (iv_reserve(s, 1) < 0)
		return -ENOMEM;
	memmove(&s->iv[i + 1], &s->iv[i], (s->n - i) * sizeof(*s->iv));
	s->iv[i][0] = a;
	s->iv[i][1] = b;
	s->n++;
	return 0;
}

static int iv_remove(struct ivset *s, uintptr_t a, uintptr_t b)
{
	size_t i = iv_lower(s, a);
	while (i < s->n && s->iv[i][0] < b) {
		uintptr_t lo = s->iv[i][0], hi = s->iv[i][1];
		if (lo < a && hi > b) {            /* split in two */
			if (iv_reserve(s, 1) < 0)
				return -ENOMEM;
			memmove(&s->iv[i + 1], &s->iv[i], (s->n - i) * sizeof(*s->iv));
			s->n++;
			s->iv[i][1] = a;
			s->iv[i + 1][0] = b;
			return 0;
		}
		if (lo < a) {
			s->iv[i][1] = a;
			i++;
		} else if (hi > b) {
			s->iv[i][0] = b;
			return 0;
		} else {
			memmove(&s->iv[i], &s->iv[i + 1], (s->n - i - 1) * sizeof(*s->iv));
			s->n--;
		}
	}
	return 0;
}

static bool iv_contains(const struct ivset *s, uintptr_t a)
{
	size_t i = iv_lower(s, a);
	return i < s->n && s->iv[i][0] <= a;
}

/* The merger places canonical mappings at [a, b): forget old discards. */
int dd_discard_merged(uintptr_t a, uintptr_t b)
{
	DD_TRACE('D', a, b - a, 0);
	iv_remove(&discard, a, b);
	return iv_add(&merged, a, b);
}

/* A REMOVE event for [a, b): the merged pages in it are being discarded. */
void dd_discard_removed(uintptr_t a, uintptr_t b)
{
	for (size_t i = iv_lower(&merged, a); i < merged.n && merged.iv[i][0] < b; i++) {
		uintptr_t lo = merged.iv[i][0] > a ? merged.iv[i][0] : a;
		uintptr_t hi = merged.iv[i][1] < b ? merged.iv[i][1] : b;
		if (iv_add(&discard, lo, hi) < 0)
			dd_err("out of memory tracking discarded pages");
	}
}

/* A minor fault at page a: true if it was discarded (then it is no longer). */
bool dd_discard_take(uintptr_t a)
{
	if (!iv_contains(&discard, a))
		return false;
	iv_remove(&discard, a, a + DD_PAGE);
	return true;
}

bool dd_discard_pending(uintptr_t a, uintptr_t b)
{
	size_t i = iv_lower(&discard, a);
	return i < discard.n && discard.iv[i][0] < b;
}

void dd_discard_fini(void)
{
	dd_vm_free(merged.iv, merged.cap * sizeof(*merged.iv));
	dd_vm_free(discard.iv, discard.cap * sizeof(*discard.iv));
	memset(&merged, 0, sizeof(merged));
	memset(&discard, 0, sizeof(discard));
}
