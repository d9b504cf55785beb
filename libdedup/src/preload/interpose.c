/* SPDX-License-Identifier: MIT */
/*
 * preload.c - LD_PRELOAD mode: find an unmodified program's heap, keep the
 * engine's regions in step with the program's mapping calls, and keep the
 * program's view of its memory exactly that of anonymous memory.
 *
 * DOC: Overview
 *
 * The same libdedup.so serves the API and preloading. Preload mode is on only
 * when LD_PRELOAD names libdedup.so* or DEDUP_PRELOAD=1 (dedup-run sets it);
 * DEDUP_PRELOAD=0 turns it off. Otherwise every interposed function below is
 * a plain system call (or glibc's own sbrk/fork) and nothing is registered.
 *
 * Discovery ("reconcile", the dedup-preload thread, every DEDUP_RECONCILE_MS
 * and soon after a large anonymous mmap): read /proc/self/maps; forget our
 * registered ranges that are no longer wholly mapped (anonymous pieces or
 * pieces of our own memfd, rw-p) - glibc's free() of a large chunk and its
 * realloc() use internal munmap/mremap that no interposer sees; then register
 * every anonymous private rw-p range of at least DEDUP_MIN_REGION that is not
 * ours, not excluded and not already registered. Left alone: [stack] and
 * thread stacks (a PROT_NONE guard VMA right below), VMAs whose VmFlags
 * (/proc/self/smaps, read only when there are candidates) say lo, dc, wf or
 * dd, ranges another userfaultfd has (dedup_register says -EBUSY), and
 * libdedup's own memory. Our own memory is recognised by the caller: a
 * mapping call whose return address lies in libdedup's text (or made by one
 * of our threads) is recorded in the "ours" table; there is no other marker
 * (CONFIG_ANON_VMA_NAME is off on the target kernel). Every tenth round also
 * checks, in smaps, that the anonymous VMAs of our ranges still carry the
 * uffd-wp flag: a range that was unmapped internally and mapped again at the
 * same address looks unchanged in /proc/self/maps but is not registered.
 *
 * Allocator hooks (jemalloc.c): a shared jemalloc's extent hooks report each
 * new extent through dd_pl_track_new (a lock-free slot table: the hook runs
 * under jemalloc's mutexes) and the dedup-preload thread registers it at
 * once with dd_pl_register_parts, the reconcile's own rules; dd_pl_track_gone
 * forgets an extent jemalloc unmapped. The reconcile still covers the rest.
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
 *   mlock, mlock2: excluded for good (a merge would drop VM_LOCKED);
 *     mlockall: preload goes passive and unregisters everything.
 *   ioctl(UFFDIO_REGISTER) by the application: we unregister our ranges in
 *     it and exclude it for good, so its registration does not fail EBUSY.
 *   fork (child.c): the child guards the merged pages it inherited; with
 *     DEDUP_FORK=restart it then starts its own engine (dd_preload_forked,
 *     after every atfork handler, so after the allocator's).
 *   setuid, setgid, set{e,re,res}{u,g}id, setgroups: glibc applies them to
 *     every thread and aborts if one fails; ours first take the caller's
 *     capabilities and keep-caps flag (engine.c, dd_creds_sync).
 *   unshare, setns of a user namespace: need a single-threaded process; a
 *     guarded child gives up its guard first (child.c, dd_child_release).
 *
 * Locks, in order: pl.lock (ours; taken by interposed calls that change
 * mappings and by the reconcile thread around registering) -> eng.lock ->
 * eng.gate; pl.ours_lock (a spinlock) is a leaf, held only for table updates.
 * The real system call is made under pl.lock, so a reconcile can never
 * register a range between our check and the application's change. Calls
 * made by libdedup itself never take pl.lock (the engine calls mmap while
 * holding eng.lock). No malloc and no stdio anywhere here: tables live in
 * memory we mmap ourselves (MAP_NORESERVE reservations).
 *
 * Known limits: see docs/preload.md.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <grp.h>
#include <link.h>
#include <poll.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "preload.h"
#include "uapi.h"

extern void *__sbrk(intptr_t increment);

static bool perms_rw_private(const struct vma *v)
{
	return v->perms[0] == 'r' && v->perms[1] == 'w' && v->perms[2] == '-' && v->perms[3] == 'p';
}

/* A thread stack: an anonymous rw VMA right above a small PROT_NONE one
 * (glibc's guard; other runtimes do the same). prev may be NULL. */
static bool is_thread_stack(const struct vma *prev, const struct vma *v)
{
	return prev && prev->hi == v->lo && prev->kind == K_ANON &&
	       memcmp(prev->perms, "---p", 4) == 0 && prev->hi - prev->lo <= ((size_t)1 << 20);
}

static bool candidate_vma(const struct vma *prev, const struct vma *v)
{
	if (pl.conf_excl.kinds & (v->heap ? DD_EXCL_HEAP : DD_EXCL_MMAP))
		return false;
	return v->kind == K_ANON && perms_rw_private(v) && !is_thread_stack(prev, v);
}

/* ---- registering and unregistering ------------------------------------------ */

/* Record the engine's regions overlapping [lo, hi) as ours to unregister:
 * they were registered by someone else in this process (the application
 * through the API) or moved by a REMAP event (libc-internal mremap). */
static void adopt(uintptr_t lo, uintptr_t hi)
{
	struct dd_range got[16];
	size_t n = 0;

	pthread_mutex_lock(&eng.lock);
	for (size_t i = 0; i < dd_region_count() && n < DD_ARRAY_SIZE(got); i++) {
		struct dd_region *r = dd_region_at(i);
		uintptr_t e = r->start + r->npages * DD_PAGE;
		if (r->start < hi && e > lo)
			got[n++] = (struct dd_range){ r->start, e };
	}
	pthread_mutex_unlock(&eng.lock);
	for (size_t i = 0; i < n; i++)
		if (!dd_rt_overlaps(&pl.mine, got[i].lo, got[i].hi))
			dd_rt_insert(&pl.mine, got[i].lo, got[i].hi);
}

/* Register [lo, hi) (one VMA's worth, not blocked). pl.lock held. */
static int reg_one(uintptr_t lo, uintptr_t hi)
{
	int r = dedup_register((void *)lo, hi - lo);

	switch (r) {
	case 0:
		if (!dd_rt_insert(&pl.mine, lo, hi)) {
			dd_unregister((void *)lo, hi - lo, false);
			return -ENOMEM;
		}
		dd_debug("preload: registered %#lx-%#lx", (unsigned long)lo, (unsigned long)hi);
		break;
	case -EEXIST:
		adopt(lo, hi);
		break;
	case -ENODEV:
		break;
	default:   /* -EBUSY: another uffd has it; -EINVAL: changed meanwhile */
		dd_rt_union(&pl.ignore, lo, hi);
		/* errno numbers, not strerror(): it may allocate (translations) */
		dd_debug("preload: not registering %#lx-%#lx: errno %d", (unsigned long)lo,
			 (unsigned long)hi, -r);
		break;
	}
	return r;
}

/*
 * Register every anonymous rw-p part of [lo, hi) that is not blocked and at
 * least min_region long. Used after an interposed call to put back what we
 * unregistered before it. pl.lock held.
 */
void dd_pl_register_parts(uintptr_t lo, uintptr_t hi)
{
	/* one VMA below lo too, for the stack-guard check */
	long n = dd_pl_pieces_in(lo > DD_PAGE ? lo - DD_PAGE : lo, hi);

	for (long i = 0; i < n; i++) {
		const struct vma *v = &pl.pieces[i];
		const struct vma *prev = i ? &pl.pieces[i - 1] : NULL;
		if (!candidate_vma(prev, v))
			continue;
		uintptr_t a = v->lo > lo ? v->lo : lo, e = v->hi < hi ? v->hi : hi;
		while (a < e) {
			uintptr_t next, end = dd_pl_blocked_at(a, e, &next);
			if (end) {
				a = end;
				continue;
			}
			if (next - a >= min_region())
				reg_one(a, next);
			a = next;
		}
	}
}

/*
 * Before a call that changes [lo, hi): unregister every range of ours that
 * overlaps it. Returns the union of [lo, hi) and those ranges in *u, the
 * span to register again afterwards. pl.lock held.
 */
bool dd_pl_drop_overlaps(uintptr_t lo, uintptr_t hi, struct dd_range *u)
{
	bool any = false;
	size_t i = dd_rt_lower(&pl.mine, lo);

	u->lo = lo;
	u->hi = hi;
	while (i < pl.mine.n && pl.mine.r[i].lo < hi) {
		struct dd_range r = pl.mine.r[i];
		int ret = dd_unregister((void *)r.lo, r.hi - r.lo, false);
		if (ret < 0 && ret != -ENOENT && ret != -ENODEV)
			dd_warn("preload: dedup_unregister(%#lx, %zu): errno %d", (unsigned long)r.lo,
				(size_t)(r.hi - r.lo), -ret);
		dd_rt_remove_at(&pl.mine, i);
		if (r.lo < u->lo)
			u->lo = r.lo;
		if (r.hi > u->hi)
			u->hi = r.hi;
		any = true;
	}
	return any;
}

/* ---- the reconcile thread --------------------------------------------------- */

struct fill_ctx {
	struct vma **out;    /* &pl.vbuf or &pl.sbuf */
	size_t *cap;
	size_t n;
};

static int fill_fn(void *c, const struct vma *v)
{
	struct fill_ctx *f = c;
	if (f->n == *f->cap && !dd_pl_table_grow((void **)f->out, f->cap, sizeof(**f->out), f->n + 1))
		return -ENOSPC;
	(*f->out)[f->n++] = *v;
	return 0;
}

/* Index of the VMA containing addr in a sorted snapshot, or n. */
static size_t vma_find(const struct vma *v, size_t n, uintptr_t addr)
{
	size_t lo = 0, hi = n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (v[mid].hi <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && v[lo].lo <= addr ? lo : n;
}

/*
 * Is [lo, hi) still wholly one of our ranges in snapshot v: rw-p pieces that
 * are anonymous or our memfd, without a hole? With flags known, anonymous
 * pieces must also still be registered (uffd-wp).
 */
static bool still_ours(const struct vma *v, size_t n, uintptr_t lo, uintptr_t hi, bool flags)
{
	size_t i = vma_find(v, n, lo);
	uintptr_t at = lo;

	for (; i < n && at < hi; i++) {
		if (v[i].lo > at || !perms_rw_private(&v[i]) ||
		    (v[i].kind != K_ANON && v[i].kind != K_DEDUP))
			return false;
		if (flags && v[i].kind == K_ANON && (v[i].flags & VF_KNOWN) &&
		    !(v[i].flags & (VF_UW | VF_UM)))
			return false;
		at = v[i].hi;
	}
	return at >= hi;
}

static void reconcile(unsigned round)
{
	bool full = round % 10 == 0;   /* also check registrations in smaps */
	struct fill_ctx f = { &pl.vbuf, &pl.vcap, 0 };

	if (dd_pl_vma_walk(false, fill_fn, &f) < 0)
		return;
	pl.nv = f.n;

	pthread_mutex_lock(&pl.lock);
	if (atomic_load(&pl.state) != PL_ON)
		goto out;
	dd_pl_track_tables();
	if (full)
		pl.ignore.n = 0;
	/* 1. forget what went away (unmapped or replaced behind our back) */
	for (size_t i = 0; i < pl.mine.n;) {
		struct dd_range r = pl.mine.r[i];
		if (still_ours(pl.vbuf, pl.nv, r.lo, r.hi, false)) {
			i++;
			continue;
		}
		dd_unregister((void *)r.lo, r.hi - r.lo, false);   /* -ENOENT: moved by REMAP */
		dd_rt_remove_at(&pl.mine, i);
		dd_debug("preload: forgot %#lx-%#lx (unmapped)", (unsigned long)r.lo,
			 (unsigned long)r.hi);
	}
	/* 2. candidates: anonymous rw-p memory nobody has */
	pl.ncand = 0;
	for (size_t i = 0; i < pl.nv; i++) {
		const struct vma *v = &pl.vbuf[i];
		if (!candidate_vma(i ? &pl.vbuf[i - 1] : NULL, v))
			continue;
		for (uintptr_t a = v->lo; a < v->hi;) {
			uintptr_t next, end = dd_pl_blocked_at(a, v->hi, &next);
			if (end) {
				a = end;
				continue;
			}
			if (next - a >= min_region() &&
			    (pl.ncand < pl.ccap || TABLE_GROW(pl.cand, pl.ccap, pl.ncand + 1)))
				pl.cand[pl.ncand++] = (struct dd_range){ a, next };
			a = next;
		}
	}
	pthread_mutex_unlock(&pl.lock);

	if (!pl.ncand && !full)
		return;
	/* 3. VmFlags of the candidates (and of our ranges, on a full round) */
	f = (struct fill_ctx){ &pl.sbuf, &pl.scap, 0 };
	if (dd_pl_vma_walk(true, fill_fn, &f) < 0)
		return;
	pl.ns = f.n;

	pthread_mutex_lock(&pl.lock);
	if (atomic_load(&pl.state) != PL_ON)
		goto out;
	if (full) {
		for (size_t i = 0; i < pl.mine.n;) {
			struct dd_range r = pl.mine.r[i];
			if (still_ours(pl.sbuf, pl.ns, r.lo, r.hi, true)) {
				i++;
				continue;
			}
			dd_unregister((void *)r.lo, r.hi - r.lo, false);
			dd_rt_remove_at(&pl.mine, i);
			dd_debug("preload: forgot %#lx-%#lx (no longer registered)",
				 (unsigned long)r.lo, (unsigned long)r.hi);
		}
	}
	/* 4. register; re-checked under the lock (the application may have
	 * changed the range since we read maps: then dedup_register refuses) */
	for (size_t i = 0, done = 0; i < pl.ncand && done < 256; i++) {
		struct dd_range c = pl.cand[i];
		size_t k = vma_find(pl.sbuf, pl.ns, c.lo);
		uintptr_t next;
		if (k == pl.ns || pl.sbuf[k].hi < c.hi || !perms_rw_private(&pl.sbuf[k]))
			continue;   /* changed since the maps snapshot */
		if (pl.sbuf[k].flags & (VF_LO | VF_DC | VF_WF | VF_DD)) {
			dd_rt_union(&pl.ignore, c.lo, c.hi);
			continue;
		}
		if (dd_pl_blocked_at(c.lo, c.hi, &next) || next < c.hi)
			continue;
		if (reg_one(c.lo, c.hi) == -ENODEV) {
			atomic_store(&pl.state, PL_PASSIVE);
			break;
		}
		done++;
	}
out:
	pthread_mutex_unlock(&pl.lock);
}

static void take_reported(void);

void *dd_pl_reconcile_main(void *arg)
{
	const uint64_t rate_ns = 200000000ULL;   /* full rounds at most every 200 ms */
	unsigned round = 0;
	uint64_t last = 0;
	bool due = true;
	int here;

	/* Our own stack is ours (belt and braces: it has a guard page too). */
	{
		struct vma v[4];
		uintptr_t sp = (uintptr_t)&here;
		long n = dd_pl_vmas_in(false, sp, sp + 1, v, DD_ARRAY_SIZE(v));
		if (n == 1)
			dd_pl_ours_add(v[0].lo, v[0].hi - v[0].lo);
	}
	while (!atomic_load(&pl.stop)) {
		uint64_t now = dd_now_ns(), until;

		dd_creds_follow();   /* a set*id() ahead (engine.c) */

		/* The program took our descriptors (engine.c, lost()): the
		 * engine handed merged memory back; unregister, and stop our
		 * threads (not this one: it is not the engine's to join). */
		if (atomic_load(&eng.fds_lost)) {
			dd_pl_step_aside();
			dd_shutdown(false);
			break;
		}

		/* what the allocator's hooks reported: at once */
		take_reported();
		/* a full round: every reconcile_ms, and soon after a kick */
		if (atomic_exchange(&pl.round_wanted, false) ||
		    (last && now - last >= dd_opt.reconcile_ms * 1000000ULL))
			due = true;
		if (due && (!last || now - last >= rate_ns)) {
			/* jemalloc's new arenas first (mallctl: no lock of ours held) */
			dd_jemalloc_sync();
			last = dd_now_ns();
			due = false;
			reconcile(round++);
			if (atomic_load(&pl.state) != PL_ON)
				break;
			now = dd_now_ns();
		}
		until = last + (due ? rate_ns : dd_opt.reconcile_ms * 1000000ULL);
		if (until > now && !atomic_load(&pl.kicked))
			dd_futex_wait(&pl.kicked, 0, until - now);
		atomic_store(&pl.kicked, 0);
	}
	return NULL;
}

/* ---- interposed functions ---------------------------------------------------- */

void dd_pl_op_begin(struct op *o, uintptr_t lo, uintptr_t hi)
{
	pthread_mutex_lock(&pl.lock);
	o->dropped = state() == PL_ON && dd_pl_drop_overlaps(pg_down(lo), pg_up(hi), &o->u);
}

void dd_pl_op_end(struct op *o)
{
	if (o->dropped && state() == PL_ON)
		dd_pl_register_parts(o->u.lo, o->u.hi);
	pthread_mutex_unlock(&pl.lock);
}

/* ---- ranges reported by allocator hooks (jemalloc.c) ------------------------ */

/*
 * An allocator's hook reports a new extent while the allocator holds its own
 * locks (jemalloc 5.3 calls the extent alloc hook under its grow or base
 * mutex), and jemalloc's fork handler takes those mutexes after pl_prepare
 * took pl.lock: a hook that waited for pl.lock could deadlock with fork().
 * So the hook only puts the range in a free slot here (lock-free, any thread)
 * and wakes the dedup-preload thread, which registers it at once - no rate
 * limit, no full reconcile. With every slot taken the report is dropped;
 * the next reconcile finds the range anyway.
 */
void dd_pl_wake(void)
{
	if (!atomic_exchange(&pl.kicked, 1))
		dd_futex_wake(&pl.kicked);
}

/* An interposed call saw a large anonymous mapping appear: reconcile soon. */
void dd_pl_kick(void)
{
	atomic_store(&pl.round_wanted, true);
	dd_pl_wake();
}

void dd_pl_track_new(uintptr_t lo, size_t len)
{
	uintptr_t a = pg_down(lo), e = pg_up(lo + len);
	unsigned h;

	if (state() != PL_ON || e - a < min_region())
		return;
	h = atomic_fetch_add_explicit(&pl.report_hint, 1, memory_order_relaxed);
	for (unsigned k = 0; k < REPORT_SLOTS; k++) {
		unsigned i = (h + k) % REPORT_SLOTS;
		int expect = SLOT_FREE;
		if (atomic_compare_exchange_strong(&pl.reported[i].state, &expect, SLOT_BUSY)) {
			pl.reported[i].lo = a;
			pl.reported[i].hi = e;
			/* seq_cst, like dd_pl_wake()'s exchange: the thread clears
			 * pl.kicked before it looks at the slots, so it either
			 * sees this slot or gets a new wake-up. */
			atomic_store(&pl.reported[i].state, SLOT_READY);
			break;
		}
	}
	dd_pl_wake();
}

/* dedup-preload thread: register what the hooks reported. */
static void take_reported(void)
{
	bool locked = false;

	for (unsigned i = 0; i < REPORT_SLOTS; i++) {
		if (atomic_load(&pl.reported[i].state) != SLOT_READY)
			continue;
		struct dd_range r = { pl.reported[i].lo, pl.reported[i].hi };
		atomic_store(&pl.reported[i].state, SLOT_FREE);
		if (!locked) {
			pthread_mutex_lock(&pl.lock);
			locked = true;
		}
		if (state() != PL_ON)
			continue;
		dd_debug("preload: allocator hook reported %#lx-%#lx", (unsigned long)r.lo,
			 (unsigned long)r.hi);
		dd_pl_register_parts(r.lo, r.hi);
	}
	if (locked)
		pthread_mutex_unlock(&pl.lock);
}

/*
 * A hook saw [lo, lo+len) go away (jemalloc's dalloc and destroy hooks run
 * with no jemalloc mutex held, so waiting for pl.lock is safe there): forget
 * what we registered in it, and register again what is still anonymous
 * memory - the same as around an interposed munmap.
 */
void dd_pl_track_gone(uintptr_t lo, size_t len)
{
	struct op o;

	if (state() != PL_ON)
		return;
	dd_pl_op_begin(&o, lo, lo + len);
	dd_pl_op_end(&o);
}

static bool anon_private(int flags, int fd)
{
	return (flags & MAP_ANONYMOUS) && (flags & MAP_TYPE) == MAP_PRIVATE;
}

DD_API void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	int st = state();
	void *ret;

	if (st == PL_OFF || st == PL_PASSIVE)
		return sys_mmap(addr, len, prot, flags, fd, off);
	if (from_us(__builtin_return_address(0))) {
		ret = sys_mmap(addr, len, prot, flags, fd, off);
		if (ret != MAP_FAILED && anon_private(flags, fd) && !(flags & MAP_FIXED))
			dd_pl_ours_add((uintptr_t)ret, len);
		return ret;
	}
	if (st != PL_ON) {
		if (st == PL_WATCHING && anon_private(flags, fd) && len >= (1u << 20))
			dd_pl_watch(false);   /* a look at the next free() */
		return sys_mmap(addr, len, prot, flags, fd, off);
	}
	if ((flags & MAP_FIXED) && !(flags & MAP_FIXED_NOREPLACE)) {
		struct op o;
		dd_pl_op_begin(&o, (uintptr_t)addr, (uintptr_t)addr + len);
		ret = sys_mmap(addr, len, prot, flags, fd, off);
		if (ret != MAP_FAILED)
			dd_rt_sub(&pl.excl, pg_down((uintptr_t)addr), pg_up((uintptr_t)addr + len));
		dd_pl_op_end(&o);
		return ret;
	}
	ret = sys_mmap(addr, len, prot, flags, fd, off);
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
		return sys_munmap(addr, len);
	if (from_us(__builtin_return_address(0))) {
		ret = sys_munmap(addr, len);
		if (ret == 0)
			dd_pl_ours_sub((uintptr_t)addr, len);
		return ret;
	}
	if (st != PL_ON)
		return sys_munmap(addr, len);
	dd_pl_op_begin(&o, (uintptr_t)addr, (uintptr_t)addr + len);
	ret = sys_munmap(addr, len);
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
		return sys_mremap(old, old_len, new_len, flags, fixed);
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
		ret = sys_mremap(old, old_len, new_len, flags, fixed);
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
					    pg_up((uintptr_t)fixed + new_len), &dst);
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

static int protect_common(void *addr, size_t len, int prot, long pkey)
{
	int st = state(), ret;
	struct op o;

	if (st != PL_ON || from_us(__builtin_return_address(0)))
		return pkey < 0 ? sys_mprotect(addr, len, prot)
				: (int)syscall(SYS_pkey_mprotect, addr, len, prot, pkey);
	dd_pl_op_begin(&o, (uintptr_t)addr, (uintptr_t)addr + len);
	ret = pkey < 0 ? sys_mprotect(addr, len, prot)
		       : (int)syscall(SYS_pkey_mprotect, addr, len, prot, pkey);
	if (ret == 0 && pkey >= 0)   /* a merge would map it with the default key */
		dd_rt_union(&pl.excl, pg_down((uintptr_t)addr), pg_up((uintptr_t)addr + len));
	dd_pl_op_end(&o);
	return ret;
}

DD_API int mprotect(void *addr, size_t len, int prot)
{
	return protect_common(addr, len, prot, -1);
}

DD_API int pkey_mprotect(void *addr, size_t len, int prot, int pkey)
{
	return protect_common(addr, len, prot, pkey);
}

/* Exclude [addr, addr+len) from merging for good, then run the call. */
static void exclude_range(uintptr_t lo, uintptr_t hi, struct op *o)
{
	dd_pl_op_begin(o, lo, hi);
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
		if (sys_madvise((void *)a, e - a, MADV_FREE) < 0)
			return -errno;
	}
	return 0;
}

/* A guarded fork()ed child (child.c): MADV_FREE and MADV_WIPEONFORK on
 * merged pieces, as for the parent below, without an engine to stop. */
static int child_madvise(void *addr, size_t len, int advice)
{
	uintptr_t lo = (uintptr_t)addr, hi = pg_up((uintptr_t)addr + len);
	int ret = sys_madvise(addr, len, advice), r;

	if (ret == 0 || errno != EINVAL || !dd_page_aligned(lo) || !len || !dd_child_guarding() ||
	    (advice != MADV_FREE && advice != MADV_WIPEONFORK))
		return ret;
	pthread_mutex_lock(&pl.lock);
	if (!dd_pl_has_merged(lo, hi))
		r = -EINVAL;
	else if (advice == MADV_FREE)
		r = madv_free_pieces(lo, hi);
	else if ((r = dd_pl_unmerge_pieces(lo, hi)) == 0)
		r = sys_madvise(addr, len, advice) < 0 ? -errno : 0;
	pthread_mutex_unlock(&pl.lock);
	if (r < 0) {
		errno = -r;
		return -1;
	}
	return 0;
}

DD_API int madvise(void *addr, size_t len, int advice)
{
	int st = state(), ret;
	uintptr_t lo = (uintptr_t)addr, hi = pg_up((uintptr_t)addr + len);
	struct op o;

	if (from_us(__builtin_return_address(0)))
		return sys_madvise(addr, len, advice);
	if (st != PL_ON)
		return child_madvise(addr, len, advice);
	switch (advice) {
	case MADV_FREE:
		ret = sys_madvise(addr, len, advice);
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
				return 0;
			errno = -r;
		}
		return ret;
	case MADV_DONTFORK:
	case MADV_WIPEONFORK:
	case MADV_DONTDUMP:
		exclude_range(lo, hi, &o);
		ret = sys_madvise(addr, len, advice);
		if (ret < 0 && errno == EINVAL && advice == MADV_WIPEONFORK && dd_page_aligned(lo) &&
		    dd_pl_has_merged(lo, hi) && dd_pl_unmerge_pieces(lo, hi) == 0)
			ret = sys_madvise(addr, len, advice);
		dd_pl_op_end(&o);
		return ret;
	default:
		return sys_madvise(addr, len, advice);
	}
}

static int lock_common(const void *addr, size_t len, unsigned flags, bool two)
{
	int st = state(), ret;
	struct op o;

	if (st != PL_ON || from_us(__builtin_return_address(0)))
		return two ? (int)syscall(SYS_mlock2, addr, len, flags)
			   : (int)syscall(SYS_mlock, addr, len);
	exclude_range((uintptr_t)addr, (uintptr_t)addr + len, &o);
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

DD_API int mlock(const void *addr, size_t len) { return lock_common(addr, len, 0, false); }

DD_API int mlock2(const void *addr, size_t len, unsigned int flags)
{
	return lock_common(addr, len, flags, true);
}

/* Stop merging for good: unregister everything we registered. */
void dd_pl_step_aside(void)
{
	pthread_mutex_lock(&pl.lock);
	atomic_store(&pl.state, PL_PASSIVE);
	while (pl.mine.n) {
		struct dd_range r = pl.mine.r[pl.mine.n - 1];
		dd_unregister((void *)r.lo, r.hi - r.lo, false);
		pl.mine.n--;
	}
	pthread_mutex_unlock(&pl.lock);
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
static void *sbrk_common(intptr_t inc)
{
	int st = state();
	void *ret;
	struct op o;

	if (st != PL_ON || inc >= 0 || from_us(__builtin_return_address(0)))
		return __sbrk(inc);
	uintptr_t cur = (uintptr_t)__sbrk(0);
	dd_pl_op_begin(&o, cur + (uintptr_t)inc, cur);
	ret = __sbrk(inc);
	dd_pl_op_end(&o);
	return ret;
}

DD_API void *sbrk(intptr_t inc) { return sbrk_common(inc); }

DD_API int brk(void *addr)
{
	uintptr_t cur = (uintptr_t)__sbrk(0);
	void *r = sbrk_common((intptr_t)((uintptr_t)addr - cur));
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
			exclude_range(r.range.start, r.range.start + r.range.len, &o);
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
 * dd_creds_sync); a fork()ed child's guard thread is simply let go, as for
 * unshare() above. The real calls are glibc's.
 */
static void before_setxid(void)
{
	if (dd_child_guarding())
		dd_child_release();
	/* also for a program that runs the engine through the API */
	dd_creds_sync(state() == PL_ON && pl.thr_started ? 1 : 0, dd_pl_wake);
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

