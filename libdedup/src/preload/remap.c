/* SPDX-License-Identifier: MIT */
/*
 * remap.c - preload mode: ranges that merging split into pieces (anonymous
 * VMAs and VMAs of our memfd) where a call needs one anonymous range:
 * turning merged pieces back into anonymous memory (MADV_WIPEONFORK, mlock,
 * the program's UFFDIO_REGISTER), and mremap() of such a range, which the
 * kernel refuses (EFAULT) or would grow with the wrong content.
 *
 * Runs in the program's thread, inside its interposed call, with pl.lock
 * held (a guarded fork()ed child's mremap takes it here: dd_pl_child_mremap);
 * unmerging with the engine running goes through merge.c, which takes
 * eng.lock. Raw system calls only.
 */
#include "preload.h"

/* ---- turning merged pieces back into anonymous memory ------------------------ */

static int prot_of(const struct vma *v)
{
	return dd_perms_prot(v->perms);
}

/*
 * Replace every piece of our memfd in [lo, hi) by anonymous memory holding
 * the same bytes, for a call that needs anonymous memory there
 * (MADV_WIPEONFORK and mlock, refused or wrong on a file VMA, and the
 * program's own UFFDIO_REGISTER: MISSING faults). Its regions are dropped
 * already. With the engine running: its unmerging protocol (merge.c,
 * dd_merge_unmerge_pieces), which loses no write of another thread and
 * leaves one anonymous mapping. In a guarded fork()ed child (no engine,
 * child.c): a copy mremapped over each piece (dd_piece_to_anon; in a child
 * the copies stay mappings of their own: see there). pl.lock held.
 */
int dd_pl_unmerge_pieces(uintptr_t lo, uintptr_t hi)
{
	if (atomic_load(&pl.state) == PL_ON) {
		int r = dd_merge_unmerge_pieces(lo, hi);
		if (r != -ENODEV && r != -EBUSY)
			return r;
	}
	long n = dd_pl_pieces_in(lo, hi);
	int ret = n < 0 ? (int)n : 0;

	for (long i = 0; i < n; i++) {
		const struct vma *v = &pl.pieces[i];
		if (v->kind != K_DEDUP)
			continue;
		uintptr_t a = v->lo > lo ? v->lo : lo, e = v->hi < hi ? v->hi : hi;
		int r = dd_piece_to_anon(a, e - a, prot_of(v), NULL, -1);
		if (r < 0) {
			ret = r;
			break;
		}
	}
	return ret;
}

/* ---- mremap of a range that merging split into several VMAs ------------------ */

/* Is any page of [lo, hi) one of our merged (memfd) pieces? */
bool dd_pl_has_merged(uintptr_t lo, uintptr_t hi)
{
	long n = dd_pl_pieces_in(lo, hi);
	for (long i = 0; i < n; i++)
		if (pl.pieces[i].kind == K_DEDUP)
			return true;
	return false;
}

/* The n VMAs of [lo, hi) in pl.pieces: one anonymous range that merging
 * may have split (anonymous pieces and pieces of our memfd, all private with
 * one protection, no hole)? */
static bool one_range(long n, uintptr_t lo, uintptr_t hi)
{
	uintptr_t at = lo;

	if (n <= 0)
		return false;
	for (long i = 0; i < n; i++) {
		const struct vma *v = &pl.pieces[i];
		if (v->lo > at || (v->kind != K_ANON && v->kind != K_DEDUP) || v->perms[3] != 'p' ||
		    prot_of(v) != prot_of(&pl.pieces[0]))
			return false;
		at = v->hi;
	}
	return at >= hi;
}

/*
 * The kernel said EFAULT: [lo, hi) is not one VMA. If it is one anonymous
 * range that merging split (anonymous pieces and pieces of our memfd, all
 * private with the same protection, no hole), do what mremap would have
 * done: grow in place if the tail is free, else (MREMAP_MAYMOVE) move every
 * piece to its place in a new range with one mremap each - page tables
 * move, nothing is copied - and map the tail anonymous. pl.lock held.
 */
static void *emulate_mremap(uintptr_t lo, uintptr_t hi, size_t new_len, int flags, void *fixed)
{
	long n = dd_pl_pieces_in(lo, hi);
	uintptr_t dst;
	size_t old_len = hi - lo;
	int prot;

	new_len = pg_up(new_len);
	if ((flags & MREMAP_DONTUNMAP) || !one_range(n, lo, hi))
		goto efault;
	prot = prot_of(&pl.pieces[0]);

	if (new_len <= old_len && !(flags & MREMAP_FIXED)) {
		/* shrink in place: the kernel does not refuse this, but be safe */
		if (new_len < old_len && dd_os_raw_munmap((void *)(lo + new_len), old_len - new_len) < 0)
			return MAP_FAILED;
		return (void *)lo;
	}
	if (new_len < old_len) {
		if (dd_os_raw_munmap((void *)(lo + new_len), old_len - new_len) < 0)
			return MAP_FAILED;
		hi = lo + new_len;
		old_len = new_len;
	}
	if (!(flags & MREMAP_FIXED)) {
		void *t = dd_os_raw_mmap((void *)hi, new_len - old_len, prot,
				   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
		if (t == (void *)hi)
			return (void *)lo;      /* grown in place */
		if (t != MAP_FAILED)
			dd_os_raw_munmap(t, new_len - old_len);   /* old kernel: hint not honoured */
		if (!(flags & MREMAP_MAYMOVE)) {
			errno = ENOMEM;
			return MAP_FAILED;
		}
		void *res = dd_os_raw_mmap(NULL, new_len, PROT_NONE,
				     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (res == MAP_FAILED)
			return MAP_FAILED;
		dst = (uintptr_t)res;
	} else {
		dst = (uintptr_t)fixed;
	}
	/* Move piece by piece (re-reading: the shrink above may have cut one). */
	n = dd_pl_pieces_in(lo, hi);
	for (long i = 0; i < n; i++) {
		uintptr_t a = pl.pieces[i].lo > lo ? pl.pieces[i].lo : lo;
		uintptr_t e = pl.pieces[i].hi < hi ? pl.pieces[i].hi : hi;
		if (dd_os_raw_mremap((void *)a, e - a, e - a, MREMAP_MAYMOVE | MREMAP_FIXED,
			       (void *)(dst + (a - lo))) == MAP_FAILED) {
			int err = errno;
			/* Put back what moved; the range is then as before. */
			for (long k = i - 1; k >= 0; k--) {
				uintptr_t ka = pl.pieces[k].lo > lo ? pl.pieces[k].lo : lo;
				uintptr_t ke = pl.pieces[k].hi < hi ? pl.pieces[k].hi : hi;
				if (dd_os_raw_mremap((void *)(dst + (ka - lo)), ke - ka, ke - ka,
					       MREMAP_MAYMOVE | MREMAP_FIXED, (void *)ka) == MAP_FAILED)
					dd_err("preload: mremap emulation could not restore %#lx",
					       (unsigned long)ka);
			}
			if (!(flags & MREMAP_FIXED))
				dd_os_raw_munmap((void *)dst, new_len);
			errno = err;
			return MAP_FAILED;
		}
	}
	if (new_len > old_len &&
	    dd_os_raw_mmap((void *)(dst + old_len), new_len - old_len, prot,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
		dd_err("preload: mremap emulation could not map the tail at %#lx",
		       (unsigned long)(dst + old_len));
	return (void *)dst;
efault:
	errno = EFAULT;
	return MAP_FAILED;
}

/*
 * mremap() of a range that may hold merged pieces. pl.lock held.
 *  - Several VMAs: the kernel refuses (EFAULT), or since Linux 6.17 moves
 *    them with MREMAP_FIXED up to our first piece and then refuses;
 *    emulate_mremap() does it.
 *  - Growing a range that holds a piece: the kernel would grow a piece that
 *    is one whole VMA, or move one and grow it, by mapping more of our
 *    memfd - other pages' content (preload_mremap, case 6). emulate_mremap()
 *    maps the tail anonymous instead.
 */
void *dd_pl_grow_or_mremap(void *old, size_t old_len, size_t new_len, int flags, void *fixed)
{
	uintptr_t lo = pg_down((uintptr_t)old), hi = pg_up((uintptr_t)old + old_len);
	bool can = old_len && dd_page_aligned((uintptr_t)old) && !(flags & MREMAP_DONTUNMAP);
	void *ret;

	/* Growing a merged piece that is the whole range would map more of our
	 * memfd: not for the kernel. And since Linux 6.17 a move (MREMAP_FIXED)
	 * of several VMAs goes one VMA at a time and stops with EFAULT at one
	 * registered with a userfaultfd - a merged piece, or anonymous memory
	 * the engine follows there since an earlier move - leaving what came
	 * before it moved (tests/probe/probe_mremap_multi.c): one such range of
	 * ours is moved here, VMA by VMA. */
	if (can && pg_up(new_len) > hi - lo && dd_pl_has_merged(lo, hi))
		return emulate_mremap(lo, hi, new_len, flags, fixed);
	if (can && (flags & MREMAP_FIXED)) {
		long n = dd_pl_pieces_in(lo, hi);
		if (n > 1 && one_range(n, lo, hi))
			return emulate_mremap(lo, hi, new_len, flags, fixed);
	}
	ret = dd_os_raw_mremap(old, old_len, new_len, flags, fixed);
	if (ret == MAP_FAILED && errno == EFAULT && can)
		ret = emulate_mremap(lo, hi, new_len, flags, fixed);
	return ret;
}

/* A fork()ed child guarding its parent's merged pieces (child.c): no engine,
 * but the pieces are there. */
void *dd_pl_child_mremap(void *old, size_t old_len, size_t new_len, int flags, void *fixed)
{
	void *ret;

	if (!dd_child_guarding())
		return dd_os_raw_mremap(old, old_len, new_len, flags, fixed);
	pthread_mutex_lock(&pl.lock);
	ret = dd_pl_grow_or_mremap(old, old_len, new_len, flags, fixed);
	pthread_mutex_unlock(&pl.lock);
	return ret;
}
