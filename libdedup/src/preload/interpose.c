/* SPDX-License-Identifier: MIT */
/*
 * interpose.c - preload mode: the program's mapping calls, so that the
 * engine's regions follow what the program changes and the program still
 * sees plain anonymous memory (the overview and the lock order: preload.h).
 *
 * Interposed calls, and why:
 *   munmap, mmap(MAP_FIXED), mremap, mprotect, pkey_mprotect, brk/sbrk that
 *     shrink: the engine must not be merging the range while it changes, and
 *     a registered range that vanished would keep the engine's region alive.
 *     We dedup_unregister() every registered range the call touches (this
 *     waits for the engine's current batch), make the call, and register
 *     again what is still anonymous rw-p memory. mprotect matters too: a
 *     merge maps rw, which would undo a PROT_READ.
 *   mremap: a range with merged pages is several VMAs, and the kernel
 *     refuses (EFAULT) to grow or move it. We then move it piece by piece
 *     (mremap of each VMA to its place in the destination, which moves page
 *     tables and never copies) and map the grown tail anonymous.
 *   madvise: MADV_FREE fails with EINVAL on a merged page (a private file
 *     mapping); we apply it to the anonymous pieces and leave merged pieces
 *     alone (MADV_FREE allows the old content to stay). MADV_DONTFORK,
 *     MADV_WIPEONFORK, MADV_DONTDUMP: a later merge would create a VMA
 *     without the flag, so the range is excluded from merging for good;
 *     WIPEONFORK also fails on a merged page, so merged pieces in the range
 *     are first turned back into anonymous memory (a copy: see "Known
 *     limits"). MADV_DONTNEED/REMOVE need nothing here: the engine sees them
 *     as uffd REMOVE events, from libc-internal callers too.
 *   ENOMEM: any of the calls above that fails with ENOMEM near
 *     vm.max_map_count while merging holds mappings is made again once
 *     after single merged pages are given back (give_back, below).
 *   mlock, mlock2: excluded for good (a merge would drop VM_LOCKED);
 *     mlockall: preload goes passive and unregisters everything.
 *   ioctl(UFFDIO_REGISTER) by the application: we unregister our ranges in
 *     it and exclude it for good, so its registration does not fail EBUSY.
 *   fork (child.c): the child guards the merged pages it inherited; with
 *     DEDUP_FORK=restart it then starts its own engine (dd_preload_forked,
 *     after every atfork handler, so after the allocator's).
 *   setuid, setgid, set{e,re,res}{u,g}id, setgroups: glibc applies them to
 *     every thread and aborts if one fails; ours first take the caller's
 *     capabilities and keep-caps flag (engine.c, dd_creds_sync), a guarded
 *     child's guard thread included.
 *   unshare, setns of a user namespace: need a single-threaded process; a
 *     guarded child gives up its guard first (child.c, dd_child_release).
 *
 * Each interposer runs in the program's thread that called it (mmap and
 * munmap also in signal handlers). A call that changes registered memory
 * holds pl.lock across the real system call (dd_pl_op_begin .. op_end).
 * Calls made by libdedup itself pass straight through: from_us() (preload.h)
 * looks at the return address, which must be the program's, not ours.
 */
#include <dlfcn.h>
#include <grp.h>
#include <stdarg.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "preload.h"
#include "uapi.h"

extern void *__sbrk(intptr_t increment);

static void op_begin(struct op *o, uintptr_t lo, uintptr_t hi, bool unmerge)
{
	pthread_mutex_lock(&pl.lock);
	o->dropped = state() == PL_ON &&
		     dd_pl_drop_overlaps(pg_down(lo), pg_up(hi), unmerge, &o->u);
}

void dd_pl_op_begin(struct op *o, uintptr_t lo, uintptr_t hi)
{
	op_begin(o, lo, hi, false);
}

void dd_pl_op_end(struct op *o)
{
	if (o->dropped && state() == PL_ON)
		dd_pl_register_parts(o->u.lo, o->u.hi);
	pthread_mutex_unlock(&pl.lock);
}

/*
 * Giving mappings back on ENOMEM (issue 11, point 5). A mapping call of the
 * program that splits a VMA or adds one fails with ENOMEM once the process
 * has vm.max_map_count mappings, and part of them may be ours: merged runs
 * (an isolated page costs two). The budget leaves the program room
 * (engine.c, dd_engine_size_budget), but a program may grow faster than the
 * next count of the mappings, or the limit may be lowered under it. So when
 * such a call fails with ENOMEM while merging holds added mappings, and the
 * process really is near the limit (counted now: ENOMEM also means "out of
 * memory", where unmerging would only make things worse), the runs worth
 * least are unmerged - single pages first, GIVE_BACK mappings' worth
 * (merge.c, dd_merge_give_back) - the budget is held to what is left until
 * the next count, and the call is made once more. Whatever the second call
 * returns is the program's answer; errno is the first call's when there is
 * no second.
 *
 * Locks: called with pl.lock held (a call that changes registered memory)
 * or with nothing of ours (a plain mmap, also from a signal handler); takes
 * eng.lock, which comes after pl.lock, and, inside the unmerging, eng.gate.
 * eng.lock is only tried, for at most GIVE_BACK_WAIT_MS: the engine holds it
 * for one step at a time, but a signal handler may have interrupted this
 * very thread inside an interposer that holds it, and waiting would then
 * never end. Not getting it leaves the ENOMEM as it was.
 */
#define GIVE_BACK 64            /* mappings freed per failed call */
#define GIVE_BACK_NEAR 64       /* "near the limit": within this many */
#define GIVE_BACK_WAIT_MS 100

static bool give_back(int err)
{
	static _Atomic uint64_t far_ns;   /* when a count last found us far from the limit */
	if (err != ENOMEM || state() != PL_ON || dd_opt.test_no_give_back)
		return false;
	if ((int64_t)atomic_load(&dd_cnt.vmas_added) <= 0) {
		dd_debug("preload: ENOMEM, but merging holds no mappings");
		return false;
	}
	/* ENOMEM also means "not mapped" (madvise, mprotect): a program that
	 * gets that often pays for a count of the mappings once in 100 ms */
	if (dd_now_ns() - atomic_load(&far_ns) < 100000000ULL)
		return false;
	for (int i = 0; pthread_mutex_trylock(&eng.lock) != 0; i++) {
		if (i >= GIVE_BACK_WAIT_MS * 2) {
			dd_debug("preload: ENOMEM, but the engine is busy: not given back");
			goto no;
		}
		struct timespec ts = { 0, 500000 };
		nanosleep(&ts, NULL);
	}
	bool ok = false;
	if (eng.running && !eng.child) {
		long total = dd_count_maps(NULL, NULL), limit = dd_max_map_count_now();
		if (total > 0 && total + GIVE_BACK_NEAR >= limit)
			ok = dd_merge_give_back(GIVE_BACK, SIZE_MAX, true) > 0;
		else
			atomic_store(&far_ns, dd_now_ns());
		dd_debug("preload: ENOMEM at %ld of %ld mappings: %s (now %ld)", total, limit,
			 ok ? "runs given back, call made again" : "nothing given back",
			 dd_count_maps(NULL, NULL));
	}
	pthread_mutex_unlock(&eng.lock);
	if (ok) {
		DD_INC(enomem_retries, 1);
		return true;
	}
no:
	errno = err;
	return false;
}

static bool anon_private(int flags, int fd)
{
	return (flags & MAP_ANONYMOUS) && (flags & MAP_TYPE) == MAP_PRIVATE;
}

/*
 * Where preload mode is off or passive, mmap and munmap go on to the next
 * definition, not straight to the kernel: a library after us may define
 * them too - a sanitizer's runtime that the executable needs, when
 * libdedup.so was preloaded first (ThreadSanitizer resets its shadow of
 * the range there; skipped, it could report races between the memory's
 * old and new users). Resolved by the constructor (dd_pl_resolve_alloc);
 * before that, and if the lookup failed, the system call.
 */
static void *(*next_mmap)(void *, size_t, int, int, int, off_t);
static int (*next_munmap)(void *, size_t);

void dd_pl_resolve_mem_calls(void)
{
	void *m = dlsym(RTLD_NEXT, "mmap"), *u = dlsym(RTLD_NEXT, "munmap");
	if (m && u && m != (void *)mmap && u != (void *)munmap) {
		next_munmap = (int (*)(void *, size_t))u;
		next_mmap = (void *(*)(void *, size_t, int, int, int, off_t))m;
	}
}

DD_API void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	int st = state();
	void *ret;

	if (st == PL_OFF || st == PL_PASSIVE)
		return next_mmap ? next_mmap(addr, len, prot, flags, fd, off)
				 : dd_os_raw_mmap(addr, len, prot, flags, fd, off);
	if (from_us(__builtin_return_address(0))) {
		ret = dd_os_raw_mmap(addr, len, prot, flags, fd, off);
		if (ret != MAP_FAILED && anon_private(flags, fd) && !(flags & MAP_FIXED))
			dd_pl_ours_add((uintptr_t)ret, len);
		return ret;
	}
	if (st != PL_ON) {
		if (st == PL_WATCHING && anon_private(flags, fd) && len >= (1u << 20))
			dd_pl_watch(false);   /* a look at the next free() */
		return dd_os_raw_mmap(addr, len, prot, flags, fd, off);
	}
	if ((flags & MAP_FIXED) && !(flags & MAP_FIXED_NOREPLACE)) {
		struct op o;
		dd_pl_op_begin(&o, (uintptr_t)addr, (uintptr_t)addr + len);
		ret = dd_os_raw_mmap(addr, len, prot, flags, fd, off);
		if (ret == MAP_FAILED && give_back(errno))
			ret = dd_os_raw_mmap(addr, len, prot, flags, fd, off);
		if (ret != MAP_FAILED)
			dd_rt_sub(&pl.excl, pg_down((uintptr_t)addr), pg_up((uintptr_t)addr + len));
		dd_pl_op_end(&o);
		return ret;
	}
	ret = dd_os_raw_mmap(addr, len, prot, flags, fd, off);
	if (ret == MAP_FAILED && give_back(errno))
		ret = dd_os_raw_mmap(addr, len, prot, flags, fd, off);
	if (ret != MAP_FAILED && anon_private(flags, fd) && (prot & PROT_WRITE) &&
	    len >= min_region())
		dd_pl_kick();
	return ret;
}

DD_API void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
	__attribute__((alias("mmap")));

DD_API int munmap(void *addr, size_t len)
{
	int st = state(), ret;
	struct op o;

	if (st == PL_OFF || st == PL_PASSIVE)
		return next_munmap ? next_munmap(addr, len) : dd_os_raw_munmap(addr, len);
	if (from_us(__builtin_return_address(0))) {
		ret = dd_os_raw_munmap(addr, len);
		if (ret == 0)
			dd_pl_ours_sub((uintptr_t)addr, len);
		return ret;
	}
	if (st != PL_ON)
		return dd_os_raw_munmap(addr, len);
	dd_pl_op_begin(&o, (uintptr_t)addr, (uintptr_t)addr + len);
	ret = dd_os_raw_munmap(addr, len);
	if (ret < 0 && give_back(errno))
		ret = dd_os_raw_munmap(addr, len);
	if (ret == 0)
		dd_rt_sub(&pl.excl, pg_down((uintptr_t)addr), pg_up((uintptr_t)addr + len));
	dd_pl_op_end(&o);
	return ret;
}

DD_API void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
	int st = state();
	void *fixed = NULL, *ret;
	struct op o;

	if (flags & MREMAP_FIXED) {
		va_list ap;
		va_start(ap, flags);
		fixed = va_arg(ap, void *);
		va_end(ap);
	}
	if (st == PL_OFF || (st == PL_PASSIVE && !dd_child_guarding()))
		return dd_os_raw_mremap(old, old_len, new_len, flags, fixed);
	if (from_us(__builtin_return_address(0))) {
		/* Our own memory stays ours where it moves. The engine also
		 * moves merged runs into the application's memory (merge.c,
		 * placing a run): that is not ours, and marking it so kept
		 * the reconcile from ever registering memory the application
		 * mapped there again later. */
		ours_acquire();
		bool was_ours = dd_rt_overlaps(&pl.ours, pg_down((uintptr_t)old),
					       pg_up((uintptr_t)old + old_len));
		ours_release();
		ret = dd_os_raw_mremap(old, old_len, new_len, flags, fixed);
		if (ret != MAP_FAILED && was_ours) {
			dd_pl_ours_sub((uintptr_t)old, old_len);
			dd_pl_ours_add((uintptr_t)ret, new_len);
		}
		return ret;
	}
	if (st != PL_ON)
		return dd_pl_child_mremap(old, old_len, new_len, flags, fixed);
	uintptr_t lo = pg_down((uintptr_t)old), hi = pg_up((uintptr_t)old + old_len);
	struct dd_range dst = { 0, 0 };
	bool dst_dropped = false;
	dd_pl_op_begin(&o, lo, hi);
	/* MREMAP_FIXED unmaps whatever is at the destination first */
	if ((flags & MREMAP_FIXED) && state() == PL_ON)
		dst_dropped = dd_pl_drop_overlaps(pg_down((uintptr_t)fixed),
					    pg_up((uintptr_t)fixed + new_len), false, &dst);
	ret = dd_pl_grow_or_mremap(old, old_len, new_len, flags, fixed);
	if (ret == MAP_FAILED && give_back(errno))
		ret = dd_pl_grow_or_mremap(old, old_len, new_len, flags, fixed);
	if (ret != MAP_FAILED) {
		/* Exclusions travel with the memory; the new range is registered
		 * now when we had the old one (else the reconcile finds it). */
		uintptr_t nlo = (uintptr_t)ret;
		if (nlo != lo && !(flags & MREMAP_DONTUNMAP)) {
			size_t k = dd_rt_lower(&pl.excl, lo);
			struct dd_range moved[8];
			size_t nm = 0;
			for (; k < pl.excl.n && pl.excl.r[k].lo < hi && nm < DD_ARRAY_SIZE(moved); k++) {
				uintptr_t a = pl.excl.r[k].lo > lo ? pl.excl.r[k].lo : lo;
				uintptr_t e = pl.excl.r[k].hi < hi ? pl.excl.r[k].hi : hi;
				moved[nm++] = (struct dd_range){ nlo + (a - lo), nlo + (e - lo) };
			}
			dd_rt_sub(&pl.excl, lo, hi);
			for (size_t m = 0; m < nm; m++)
				dd_rt_union(&pl.excl, moved[m].lo, moved[m].hi);
		}
		if (o.dropped && state() == PL_ON)
			dd_pl_register_parts(nlo, nlo + pg_up(new_len));
		else if (new_len >= min_region())
			dd_pl_kick();
	}
	if (dst_dropped && state() == PL_ON)
		dd_pl_register_parts(dst.lo, dst.hi);
	dd_pl_op_end(&o);
	return ret;
}

/* caller: the entry point's __builtin_return_address(0) - read there, not
 * here, where it is the entry point's own address unless the compiler made
 * the call a tail jump (it did not for brk(), nor for any at -O0). */
static int protect_common(void *addr, size_t len, int prot, long pkey, const void *caller)
{
	int st = state(), ret;
	struct op o;

	if (st != PL_ON || from_us(caller))
		return pkey < 0 ? dd_os_mprotect(addr, len, prot)
				: (int)syscall(SYS_pkey_mprotect, addr, len, prot, pkey);
	dd_pl_op_begin(&o, (uintptr_t)addr, (uintptr_t)addr + len);
	ret = pkey < 0 ? dd_os_mprotect(addr, len, prot)
		       : (int)syscall(SYS_pkey_mprotect, addr, len, prot, pkey);
	if (ret < 0 && give_back(errno))
		ret = pkey < 0 ? dd_os_mprotect(addr, len, prot)
			       : (int)syscall(SYS_pkey_mprotect, addr, len, prot, pkey);
	if (ret == 0 && pkey >= 0)   /* a merge would map it with the default key */
		dd_rt_union(&pl.excl, pg_down((uintptr_t)addr), pg_up((uintptr_t)addr + len));
	dd_pl_op_end(&o);
	return ret;
}

DD_API int mprotect(void *addr, size_t len, int prot)
{
	return protect_common(addr, len, prot, -1, __builtin_return_address(0));
}

DD_API int pkey_mprotect(void *addr, size_t len, int prot, int pkey)
{
	return protect_common(addr, len, prot, pkey, __builtin_return_address(0));
}

/* Exclude [addr, addr+len) from merging for good, then run the call. With
 * anon, the call needs anonymous memory there (MADV_WIPEONFORK, mlock, the
 * program's UFFDIO_REGISTER): the regions' merged runs there are unmerged
 * before the regions go (dd_pl_drop_overlaps); merged pieces that no region
 * covered any more are left to dd_pl_unmerge_pieces (remap.c). */
static void exclude_range(uintptr_t lo, uintptr_t hi, bool anon, struct op *o)
{
	op_begin(o, lo, hi, anon);
	dd_rt_union(&pl.excl, pg_down(lo), pg_up(hi));
}

/*
 * MADV_FREE on a range holding merged pieces: the kernel refuses the file
 * VMAs (EINVAL). Apply it to every anonymous piece; leave merged pieces as
 * they are (MADV_FREE lets a page keep its old content until it is freed).
 * Only when every piece is anonymous or ours, else the kernel's EINVAL
 * stands. pl.lock held.
 */
static int madv_free_pieces(uintptr_t lo, uintptr_t hi)
{
	long n = dd_pl_pieces_in(lo, hi);
	uintptr_t at = lo;

	for (long i = 0; i < n; i++) {
		if (pl.pieces[i].lo > at || (pl.pieces[i].kind != K_ANON && pl.pieces[i].kind != K_DEDUP))
			return -EINVAL;
		at = pl.pieces[i].hi;
	}
	if (at < hi)
		return -ENOMEM;
	for (long i = 0; i < n; i++) {
		if (pl.pieces[i].kind != K_ANON)
			continue;
		uintptr_t a = pl.pieces[i].lo > lo ? pl.pieces[i].lo : lo;
		uintptr_t e = pl.pieces[i].hi < hi ? pl.pieces[i].hi : hi;
		if (dd_os_madvise((void *)a, e - a, MADV_FREE) < 0)
			return -errno;
	}
	return 0;
}

/* A guarded fork()ed child (child.c): MADV_FREE and MADV_WIPEONFORK on
 * merged pieces, as for the parent below, without an engine to stop. */
static int child_madvise_call(void *addr, size_t len, int advice, uintptr_t lo, uintptr_t hi)
{
	int ret = dd_os_madvise(addr, len, advice), r;

	if (ret == 0 || errno != EINVAL || !dd_page_aligned(lo) || !len || !dd_child_guarding() ||
	    (advice != MADV_FREE && advice != MADV_WIPEONFORK))
		return ret;
	pthread_mutex_lock(&pl.lock);
	if (!dd_pl_has_merged(lo, hi))
		r = -EINVAL;
	else if (advice == MADV_FREE)
		r = madv_free_pieces(lo, hi);
	else if ((r = dd_pl_unmerge_pieces(lo, hi)) == 0)
		r = dd_os_madvise(addr, len, advice) < 0 ? -errno : 0;
	pthread_mutex_unlock(&pl.lock);
	if (r < 0) {
		errno = -r;
		return -1;
	}
	return 0;
}

static int child_madvise(void *addr, size_t len, int advice)
{
	uintptr_t lo = (uintptr_t)addr, hi = pg_up((uintptr_t)addr + len);
	/* MADV_FREE's REMOVE events mark no piece gone (discard.c) */
	int k = advice == MADV_FREE ? dd_discard_free_begin(lo, hi) : -1;
	int ret = child_madvise_call(addr, len, advice, lo, hi), e = errno;

	dd_discard_free_end(k);
	errno = e;
	return ret;
}

DD_API int madvise(void *addr, size_t len, int advice)
{
	int st = state(), ret;
	uintptr_t lo = (uintptr_t)addr, hi = pg_up((uintptr_t)addr + len);
	struct op o;

	if (from_us(__builtin_return_address(0)))
		return dd_os_madvise(addr, len, advice);
	if (st != PL_ON)
		return child_madvise(addr, len, advice);
	switch (advice) {
	case MADV_FREE: {
		/* its REMOVE events discard no merged page (discard.c) */
		int k = dd_discard_free_begin(lo, hi);
		ret = dd_os_madvise(addr, len, advice);
		if (ret < 0 && errno == EINVAL && dd_page_aligned(lo) && len) {
			/* eng.lock: the engine merges only under it, so no piece
			 * turns into a file mapping while we go through them.
			 * (MADV_FREE raises no userfaultfd event: no deadlock
			 * with the reader.) */
			pthread_mutex_lock(&pl.lock);
			pthread_mutex_lock(&eng.lock);
			int r = dd_pl_has_merged(lo, hi) ? madv_free_pieces(lo, hi) : -EINVAL;
			pthread_mutex_unlock(&eng.lock);
			pthread_mutex_unlock(&pl.lock);
			if (r == 0)
				ret = 0;
			else
				errno = -r;
		}
		int e = errno;
		dd_discard_free_end(k);
		errno = e;
		return ret;
	}
	case MADV_DONTFORK:
	case MADV_WIPEONFORK:
	case MADV_DONTDUMP:
		exclude_range(lo, hi, advice == MADV_WIPEONFORK, &o);
		ret = dd_os_madvise(addr, len, advice);
		if (ret < 0 && give_back(errno))   /* a split of flags, near the limit */
			ret = dd_os_madvise(addr, len, advice);
		if (ret < 0 && errno == EINVAL && advice == MADV_WIPEONFORK && dd_page_aligned(lo) &&
		    dd_pl_has_merged(lo, hi) && dd_pl_unmerge_pieces(lo, hi) == 0)
			ret = dd_os_madvise(addr, len, advice);
		dd_pl_op_end(&o);
		return ret;
	default:
		ret = dd_os_madvise(addr, len, advice);
		if (ret < 0 && give_back(errno))
			ret = dd_os_madvise(addr, len, advice);
		return ret;
	}
}

static int lock_common(const void *addr, size_t len, unsigned flags, bool two, const void *caller)
{
	int st = state(), ret;
	struct op o;

	if (st != PL_ON || from_us(caller))
		return two ? (int)syscall(SYS_mlock2, addr, len, flags)
			   : (int)syscall(SYS_mlock, addr, len);
	exclude_range((uintptr_t)addr, (uintptr_t)addr + len, true, &o);
	/* Locking a merged piece would copy every page on write (a private
	 * file mapping is populated for writing) and keep it a mapping of
	 * its own: unmerge it first, into one locked anonymous mapping. */
	uintptr_t lo = pg_down((uintptr_t)addr), hi = pg_up((uintptr_t)addr + len);
	if (len && dd_pl_has_merged(lo, hi) && dd_pl_unmerge_pieces(lo, hi) < 0)
		dd_debug("preload: could not unmerge %#lx-%#lx before mlock", (unsigned long)lo,
			 (unsigned long)hi);
	ret = two ? (int)syscall(SYS_mlock2, addr, len, flags) : (int)syscall(SYS_mlock, addr, len);
	dd_pl_op_end(&o);
	return ret;
}

DD_API int mlock(const void *addr, size_t len)
{
	return lock_common(addr, len, 0, false, __builtin_return_address(0));
}

DD_API int mlock2(const void *addr, size_t len, unsigned int flags)
{
	return lock_common(addr, len, flags, true, __builtin_return_address(0));
}

DD_API int mlockall(int flags)
{
	if (state() == PL_ON && !from_us(__builtin_return_address(0))) {
		/* Every VMA, now and later, is to be locked: step aside. */
		dd_pl_step_aside();
		dd_info("preload: mlockall(): no longer merging");
	}
	return (int)syscall(SYS_mlockall, flags);
}

/* brk/sbrk go through glibc's __sbrk, which keeps its idea of the break. */
static void *sbrk_common(intptr_t inc, const void *caller)
{
	int st = state();
	void *ret;
	struct op o;

	if (st != PL_ON || inc >= 0 || from_us(caller))
		return __sbrk(inc);
	uintptr_t cur = (uintptr_t)__sbrk(0);
	dd_pl_op_begin(&o, cur + (uintptr_t)inc, cur);
	ret = __sbrk(inc);
	dd_pl_op_end(&o);
	return ret;
}

DD_API void *sbrk(intptr_t inc) { return sbrk_common(inc, __builtin_return_address(0)); }

DD_API int brk(void *addr)
{
	uintptr_t cur = (uintptr_t)__sbrk(0);
	void *r = sbrk_common((intptr_t)((uintptr_t)addr - cur), __builtin_return_address(0));
	return r == (void *)-1 ? -1 : 0;
}

DD_API int ioctl(int fd, unsigned long req, ...)
{
	va_list ap;
	void *arg;

	va_start(ap, req);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (req == UFFDIO_REGISTER && state() == PL_ON && !from_us(__builtin_return_address(0))) {
		/* The application registers a range with its own userfaultfd:
		 * step out of its way (ours would make it fail with EBUSY). */
		struct uffdio_register r;
		struct iovec l = { &r, sizeof(r) }, rem = { arg, sizeof(r) };
		if (process_vm_readv(getpid(), &l, 1, &rem, 1, 0) == (ssize_t)sizeof(r) && r.range.len) {
			struct op o;
			exclude_range(r.range.start, r.range.start + r.range.len, true, &o);
			/* Whatever of ours is still registered there (merged runs
			 * are registered MINOR) goes too: the range is no region
			 * any more, so the engine no longer looks at it. */
			uintptr_t lo = pg_down(r.range.start), hi = pg_up(r.range.start + r.range.len);
			/* A merged page is a private file mapping: after
			 * MADV_DONTNEED it would read the canonical page again
			 * instead of raising the application's MISSING fault.
			 * Make the range anonymous memory again (while its
			 * pieces are still registered with us: their discards
			 * read zeros until then), then step out of the way. */
			if (dd_pl_has_merged(lo, hi) && dd_pl_unmerge_pieces(lo, hi) < 0)
				dd_warn("preload: could not unmerge %#lx-%#lx before the "
					"application's UFFDIO_REGISTER", (unsigned long)lo,
					(unsigned long)hi);
			if (eng.uffd >= 0)
				dd_uffd_unregister(eng.uffd, lo, hi - lo);
			int ret = (int)syscall(SYS_ioctl, fd, req, arg);
			int e = errno;
			dd_pl_op_end(&o);
			dd_debug("preload: the application registers %#llx+%llu with its userfaultfd",
				 (unsigned long long)r.range.start, (unsigned long long)r.range.len);
			errno = e;
			return ret;
		}
	}
	return (int)syscall(SYS_ioctl, fd, req, arg);
}

/*
 * A few calls need a single-threaded process: unshare() and setns() of a
 * user namespace (the kernel says EINVAL otherwise). A fork()ed child that
 * guards merged pages has our thread (child.c); it turns those pages back
 * into anonymous memory and stops the thread first, so that the call
 * behaves as without us. (A process that merges has our threads too; there
 * the call fails as it would in any multi-threaded process.)
 */
#ifndef CLONE_NEWUSER
#define CLONE_NEWUSER 0x10000000
#endif
#define NEEDS_ONE_THREAD (CLONE_NEWUSER | 0x00010000 /* THREAD */ | 0x00000800 /* SIGHAND */ | \
			  0x00000100 /* VM */)

DD_API int unshare(int flags)
{
	if ((flags & NEEDS_ONE_THREAD) && dd_child_guarding())
		dd_child_release();
	return (int)syscall(SYS_unshare, flags);
}

DD_API int setns(int fd, int nstype)
{
	if ((nstype == 0 || (nstype & CLONE_NEWUSER)) && dd_child_guarding())
		dd_child_release();
	return (int)syscall(SYS_setns, fd, nstype);
}

/*
 * set*id(): glibc makes every thread take the new ids and aborts the
 * process if one of them fails where the caller succeeded. Ours must have
 * the caller's capabilities and keep-caps flag first (engine.c,
 * dd_creds_sync), a fork()ed child's guard thread included. The real calls
 * are glibc's.
 */
static bool pl_thread_runs(void)
{
	return state() == PL_ON && pl.thr_started;
}

static void wake_ours(void)
{
	if (pl_thread_runs())
		dd_pl_wake();
	dd_child_wake();
}

static void before_setxid(void)
{
	/* also for a program that runs the engine through the API; a
	 * guarded child's guard follows too, and keeps guarding: a pre-fork
	 * server's workers that drop privileges keep sharing what the parent
	 * merged */
	dd_creds_sync((pl_thread_runs() ? 1 : 0) + dd_child_threads(), wake_ours);
}

#define SETXID(name, params, args)                                             \
	DD_API int name params                                                 \
	{                                                                      \
		static int (*next) params;                                     \
		if (!next)                                                     \
			next = (int (*) params)dlsym(RTLD_NEXT, #name);        \
		if (!next) {                                                   \
			errno = ENOSYS;                                        \
			return -1;                                             \
		}                                                              \
		before_setxid();                                               \
		return next args;                                              \
	}
SETXID(setuid, (uid_t u), (u))
SETXID(setgid, (gid_t g), (g))
SETXID(seteuid, (uid_t u), (u))
SETXID(setegid, (gid_t g), (g))
SETXID(setreuid, (uid_t r, uid_t e), (r, e))
SETXID(setregid, (gid_t r, gid_t e), (r, e))
SETXID(setresuid, (uid_t r, uid_t e, uid_t s), (r, e, s))
SETXID(setresgid, (gid_t r, gid_t e, gid_t s), (r, e, s))
SETXID(setgroups, (size_t n, const gid_t *l), (n, l))

