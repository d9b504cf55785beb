/* SPDX-License-Identifier: MIT */
/*
 * test_unit_vmflags: dd_vmas_in_smaps() (os.c) against the kernel's smaps.
 *
 * Handing merged runs back by span (merge.c, um_gap_ok) trusts the VmFlags
 * this parser reads: a flag it misses would be lost with the gap's mapping,
 * and one it calls plain though the kernel means something else (a name
 * the kernel adds or changes) likewise. So, on mappings given each flag:
 * MADV_DONTDUMP, DONTFORK, WIPEONFORK, MAP_NORESERVE and mlock() read as
 * their DD_VMF_* bit and nothing else beyond plain; MAP_GROWSDOWN (a flag
 * this code has no name for) reads as DD_VMF_OTHER; a plain mapping reads
 * plain; and the mappings, their bounds and protections are the ones
 * dd_vmas_in() (PROCMAP_QUERY) sees.
 */
#include <sys/mman.h>
#include <sys/syscall.h>

#include "tcommon.h"
#include "internal.h"

#define MAXV 16
struct seen { size_t n; struct dd_vma v[MAXV]; };

static int collect(void *ctx, const struct dd_vma *v)
{
	struct seen *s = ctx;
	CHECK(s->n < MAXV);
	s->v[s->n++] = *v;
	return 0;
}

int main(void)
{
	const size_t pg = T_PAGE;
	/* plain | DONTDUMP | DONTFORK | WIPEONFORK | locked | plain, then a
	 * gap, a NORESERVE mapping and a GROWSDOWN one at known places */
	char *base = mmap(NULL, 16 * pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(base != MAP_FAILED);
	char *a = mmap(base, 6 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
		       -1, 0);
	CHECK(a == base);
	memset(a, 1, 6 * pg);
	CHECK(madvise(a + pg, pg, MADV_DONTDUMP) == 0);
	CHECK(madvise(a + 2 * pg, pg, MADV_DONTFORK) == 0);
	CHECK(madvise(a + 3 * pg, pg, MADV_WIPEONFORK) == 0);
	/* the system call: ASan's mlock() interceptor does nothing, returns 0 */
	bool locked = syscall(SYS_mlock, a + 4 * pg, pg) == 0;
	char *nr = mmap(base + 8 * pg, 2 * pg, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
	CHECK(nr == base + 8 * pg);
	char *gd = mmap(base + 12 * pg, 2 * pg, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_GROWSDOWN, -1, 0);
	CHECK(gd == base + 12 * pg);

	static struct seen sm, pq;
	CHECK(dd_vmas_in_smaps((uintptr_t)base, (uintptr_t)base + 16 * pg, collect, &sm) == 0);
	CHECK(dd_vmas_in((uintptr_t)base, (uintptr_t)base + 16 * pg, collect, &pq) == 0);
	CHECK(sm.n == pq.n);
	for (size_t i = 0; i < sm.n; i++) {
		CHECK(sm.v[i].lo == pq.v[i].lo && sm.v[i].hi == pq.v[i].hi);
		CHECK(sm.v[i].prot == pq.v[i].prot && sm.v[i].anon == pq.v[i].anon);
		CHECK(sm.v[i].vmf_known && !pq.v[i].vmf_known);
	}
	static const struct { size_t page; unsigned want; const char *what; } cases[] = {
		{ 0, 0, "plain" }, { 1, DD_VMF_DONTDUMP, "MADV_DONTDUMP" },
		{ 2, DD_VMF_DONTFORK, "MADV_DONTFORK" }, { 3, DD_VMF_WIPEONFORK, "MADV_WIPEONFORK" },
		{ 4, DD_VMF_LOCKED, "mlock" }, { 5, 0, "plain" },
		{ 8, DD_VMF_NORESERVE, "MAP_NORESERVE" }, { 12, DD_VMF_OTHER, "MAP_GROWSDOWN" },
		{ 7, 0, "PROT_NONE" },
	};
	int bad = 0;
	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		uintptr_t p = (uintptr_t)base + cases[k].page * pg;
		const struct dd_vma *v = NULL;
		for (size_t i = 0; i < sm.n; i++)
			if (p >= sm.v[i].lo && p < sm.v[i].hi)
				v = &sm.v[i];
		CHECK(v);
		if (cases[k].want == DD_VMF_LOCKED && !locked)
			continue;
		/* beyond the flag: at most "ac" (accounted), which plain has */
		unsigned got = v->vmf & ~DD_VMF_ACCOUNT;
		printf("page %2zu (%s): VmFlags -> %#x\n", cases[k].page, cases[k].what, v->vmf);
		if (got != cases[k].want) {
			fprintf(stderr, "page %zu (%s): read %#x, want %#x\n", cases[k].page,
				cases[k].what, got, cases[k].want);
			bad++;
		}
	}
	if (!locked)
		printf("mlock: %s (not checked)\n", strerror(errno));
	syscall(SYS_munlock, a + 4 * pg, pg);
	munmap(base, 16 * pg);
	if (bad)
		return T_FAIL;
	printf("PASS\n");
	return T_PASS;
}
