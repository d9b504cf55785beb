/* SPDX-License-Identifier: MIT */
/*
 * discover.c - preload mode: which of the program's memory the engine gets.
 * The candidate rules, registering and unregistering (for the interposers
 * too), the reconcile in the dedup-preload thread, and the ranges that
 * allocator hooks report.
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
 * Threads and locks. The dedup-preload thread runs dd_pl_reconcile_main.
 * The program's threads call dd_pl_register_parts and dd_pl_drop_overlaps
 * from their interposed calls, pl.lock held, and dd_pl_track_new from inside
 * the allocator, lock-free. Registering and unregistering take eng.lock
 * under pl.lock (the order in preload.h).
 */
#include <string.h>

#include "preload.h"

/* ---- the candidate rules ------------------------------------------------------ */

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
			dd_unregister((void *)lo, hi - lo, 0, 0);
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
 * overlaps it; with unmerge, after unmerging its runs in [lo, hi) (the
 * call needs anonymous memory there: remap.c says which). Returns the union
 * of [lo, hi) and those ranges in *u, the span to register again
 * afterwards. pl.lock held.
 */
bool dd_pl_drop_overlaps(uintptr_t lo, uintptr_t hi, bool unmerge, struct dd_range *u)
{
	bool any = false;
	size_t i = dd_rt_lower(&pl.mine, lo);

	u->lo = lo;
	u->hi = hi;
	while (i < pl.mine.n && pl.mine.r[i].lo < hi) {
		struct dd_range r = pl.mine.r[i];
		int ret = dd_unregister((void *)r.lo, r.hi - r.lo, unmerge ? lo : 0,
					unmerge ? hi : 0);
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

/* Stop merging for good: unregister everything we registered. */
void dd_pl_step_aside(void)
{
	pthread_mutex_lock(&pl.lock);
	atomic_store(&pl.state, PL_PASSIVE);
	while (pl.mine.n) {
		struct dd_range r = pl.mine.r[pl.mine.n - 1];
		dd_unregister((void *)r.lo, r.hi - r.lo, 0, 0);
		pl.mine.n--;
	}
	pthread_mutex_unlock(&pl.lock);
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
		dd_unregister((void *)r.lo, r.hi - r.lo, 0, 0);   /* -ENOENT: moved by REMAP */
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
			dd_unregister((void *)r.lo, r.hi - r.lo, 0, 0);
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
