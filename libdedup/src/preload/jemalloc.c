/* SPDX-License-Identifier: MIT */
/*
 * jemalloc.c - preload mode: a shared jemalloc's extents, through its extent
 * hooks (jemalloc 5: "arena.<i>.extent_hooks", extent_hooks_t).
 *
 * DOC: Overview
 *
 * Without this file a jemalloc extent is found like any other memory: the
 * interposed mmap() sees jemalloc map it and kicks a reconcile, which reads
 * /proc/self/maps within 200 ms. With it, jemalloc tells us itself: we wrap
 * the extent hooks of every arena that uses jemalloc's own hooks, and each
 * wrapper calls the original hook, then
 *   alloc          reports the new extent (anonymous, committed, at least
 *                  DEDUP_MIN_REGION) to discover.c, which registers it at once
 *                  with the reconcile's own rules (dd_pl_register_parts);
 *   dalloc,        forget what we registered in an extent that is gone
 *   destroy        (discover.c: dd_pl_track_gone, as around a munmap);
 *   purge_forced,  nothing: see jh_purge_forced for why purged pages read
 *   purge_lazy     zeros (or their old content) after merging too;
 *   commit, decommit, split, merge: nothing.
 *
 * Who runs what. Detection (dlsym only) runs when preload mode starts, once
 * dedup_init() has loaded the options and before the dedup-preload thread
 * exists. Everything that calls mallctl() - the version check, reading and
 * swapping hooks - runs in the dedup-preload thread at the start of each
 * full reconcile round, holding no lock of ours (internal.h: the one place
 * where a thread of ours enters the application's allocator).
 * So arenas that appear later (a thread's first allocation initialises
 * another automatic arena, the first allocation above
 * opt.oversize_threshold creates the huge arena, arenas.create) are wrapped
 * within one reconcile period; until then the mmap interposer and the
 * reconcile find their extents as before.
 *
 * The wrappers run in any application thread, inside jemalloc and often
 * under its mutexes (jemalloc 5.3's source: alloc under the arena's grow
 * mutex or a base mutex; purges under none or the grow mutex; dalloc and
 * destroy under none, which jemalloc asserts).
 * They never call malloc, never take a lock of ours while jemalloc may hold
 * one (jemalloc's fork handler takes its mutexes after ours took pl.lock),
 * and cost one call plus, for alloc, a slot in a lock-free table and a
 * futex wake (pl.kicked).
 *
 * Not covered (the mmap interposer and the reconcile still are): a jemalloc
 * older than 5 or linked statically without exporting mallctl; an arena whose
 * hooks the application replaced, or that it created with its own hooks (we
 * only wrap jemalloc's own hooks, never the application's); an arena index
 * that was destroyed and created again after we wrapped it; extents that
 * jemalloc mapped before we wrapped their arena (found by the reconcile).
 */
#include <dlfcn.h>
#include <string.h>

#include "preload.h"

/*
 * jemalloc 5's extent_hooks_t, as in <jemalloc/jemalloc.h> and jemalloc(3)
 * (the same from 5.0 to 5.3). Our own copy: that header would declare malloc
 * and friends with jemalloc's attributes in a library that must not care
 * which allocator the program has.
 */
typedef struct jh_hooks jh_hooks;
struct jh_hooks {
	void *(*alloc)(jh_hooks *, void *new_addr, size_t size, size_t alignment, bool *zero,
		       bool *commit, unsigned arena);
	bool (*dalloc)(jh_hooks *, void *addr, size_t size, bool committed, unsigned arena);
	void (*destroy)(jh_hooks *, void *addr, size_t size, bool committed, unsigned arena);
	bool (*commit)(jh_hooks *, void *addr, size_t size, size_t off, size_t len, unsigned arena);
	bool (*decommit)(jh_hooks *, void *addr, size_t size, size_t off, size_t len,
			 unsigned arena);
	bool (*purge_lazy)(jh_hooks *, void *addr, size_t size, size_t off, size_t len,
			   unsigned arena);
	bool (*purge_forced)(jh_hooks *, void *addr, size_t size, size_t off, size_t len,
			     unsigned arena);
	bool (*split)(jh_hooks *, void *addr, size_t size, size_t size_a, size_t size_b,
		      bool committed, unsigned arena);
	bool (*merge)(jh_hooks *, void *addr_a, size_t size_a, void *addr_b, size_t size_b,
		      bool committed, unsigned arena);
};

typedef int (*mallctl_fn)(const char *, void *, size_t *, void *, size_t);
typedef int (*bymib_fn)(const size_t *, size_t, void *, size_t *, void *, size_t);
typedef int (*nametomib_fn)(const char *, size_t *, size_t *);

#define JH_MAX_ARENAS 4096   /* jemalloc 5 allows at most 4095 (MALLOCX_ARENA_LIMIT) */

static struct {
	mallctl_fn ctl;
	bymib_fn bymib;
	nametomib_fn nametomib;
	const char *prefix;          /* "" or "je_" */
	enum { JH_OFF, JH_FOUND, JH_ON } state;
	jh_hooks *orig;              /* jemalloc's own hooks: what we wrap */
	size_t mib_hooks[3];         /* arena.<i>.extent_hooks */
	size_t mib_decay[3];         /* arena.<i>.dirty_decay_ms: EFAULT if not initialised */
	uint64_t done[JH_MAX_ARENAS / 64];   /* arenas wrapped, or left alone for good */
	unsigned wrapped;
} jh;

static jh_hooks wrap;   /* must outlive every arena: static, never freed */

/* ---- the wrappers (application threads, inside jemalloc) -------------------- */

static void *jh_alloc(jh_hooks *h, void *new_addr, size_t size, size_t alignment, bool *zero,
		      bool *commit, unsigned arena)
{
	void *p = jh.orig->alloc(jh.orig, new_addr, size, alignment, zero, commit, arena);

	/* Decommitted memory (PROT_NONE, without overcommit) is not registered
	 * until it is committed: the interposed mmap over it sees that. */
	if (p && *commit)
		dd_pl_track_new((uintptr_t)p, size);
	return p;
}

/* Only installed with opt.retain off: with it on, jemalloc's own dalloc never
 * unmaps (it returns true, "retained"), which a NULL dalloc tells jemalloc
 * without a call and without the radix-tree deregister/reregister jemalloc
 * does around a dalloc that might succeed. */
static bool jh_dalloc(jh_hooks *h, void *addr, size_t size, bool committed, unsigned arena)
{
	bool kept = jh.orig->dalloc(jh.orig, addr, size, committed, arena);

	/* jemalloc's own dalloc unmaps with munmap(), whose interposer has
	 * already unregistered the range before the unmap (so the engine never
	 * reads it after); this catches anything that went another way. */
	if (!kept)
		dd_pl_track_gone((uintptr_t)addr, size);
	return kept;
}

static void jh_destroy(jh_hooks *h, void *addr, size_t size, bool committed, unsigned arena)
{
	jh.orig->destroy(jh.orig, addr, size, committed, arena);
	dd_pl_track_gone((uintptr_t)addr, size);
}

static bool jh_commit(jh_hooks *h, void *addr, size_t size, size_t off, size_t len,
		      unsigned arena)
{
	return jh.orig->commit(jh.orig, addr, size, off, len, arena);
}

static bool jh_decommit(jh_hooks *h, void *addr, size_t size, size_t off, size_t len,
			unsigned arena)
{
	return jh.orig->decommit(jh.orig, addr, size, off, len, arena);
}

/*
 * Purges change nothing in what is registered: the extent stays mapped and
 * stays one of our regions. Why the pages then read what jemalloc expects:
 *  - purge_forced is madvise(MADV_DONTNEED) (jemalloc trusts it to zero, and
 *    calloc() from a purged extent skips the memset). On a registered range
 *    the kernel first sends our userfaultfd a REMOVE event (we ask for
 *    UFFD_FEATURE_EVENT_REMOVE); the uffd reader acknowledges it only outside
 *    a merge window, so a purge never overlaps a merge. Anonymous pages are
 *    then zapped and read zeros; a merged page is a private mapping of our
 *    memfd, which would read the canonical page again, so discard.c records
 *    the removed range and the next access, a MINOR fault (merged runs are
 *    registered MINOR|MISSING), is answered with a zero page.
 *  - purge_lazy is MADV_FREE: the interposed madvise applies it to the
 *    anonymous pieces and leaves merged pieces as they are, which MADV_FREE
 *    allows (old content or zeros); jemalloc does not assume zeros after it.
 * Both go through the interposed madvise (jemalloc calls it through the PLT).
 */
static bool jh_purge_lazy(jh_hooks *h, void *addr, size_t size, size_t off, size_t len,
			  unsigned arena)
{
	return jh.orig->purge_lazy(jh.orig, addr, size, off, len, arena);
}

static bool jh_purge_forced(jh_hooks *h, void *addr, size_t size, size_t off, size_t len,
			    unsigned arena)
{
	return jh.orig->purge_forced(jh.orig, addr, size, off, len, arena);
}

/* Split and merge only change jemalloc's bookkeeping: our regions are the
 * mappings jemalloc got from alloc, whatever it carves them into. */
static bool jh_split(jh_hooks *h, void *addr, size_t size, size_t size_a, size_t size_b,
		     bool committed, unsigned arena)
{
	return jh.orig->split(jh.orig, addr, size, size_a, size_b, committed, arena);
}

static bool jh_merge(jh_hooks *h, void *addr_a, size_t size_a, void *addr_b, size_t size_b,
		     bool committed, unsigned arena)
{
	return jh.orig->merge(jh.orig, addr_a, size_a, addr_b, size_b, committed, arena);
}

/* ---- detection (constructor) and installation (dedup-preload thread) ---- */

static void *sym(const char *prefix, const char *name)
{
	char full[32];
	size_t n = strlen(prefix);

	memcpy(full, prefix, n);
	memcpy(full + n, name, strlen(name) + 1);
	return dlsym(RTLD_DEFAULT, full);
}

bool dd_jemalloc_detect(void)
{
	static const char *const prefixes[] = { "", "je_" };

	if (jh.ctl)
		return true;   /* a fork()ed child restarting: the parent's state holds */
	for (size_t i = 0; i < DD_ARRAY_SIZE(prefixes) && !jh.ctl; i++) {
		jh.ctl = (mallctl_fn)sym(prefixes[i], "mallctl");
		jh.bymib = (bymib_fn)sym(prefixes[i], "mallctlbymib");
		jh.nametomib = (nametomib_fn)sym(prefixes[i], "mallctlnametomib");
		jh.prefix = prefixes[i];
		if (!jh.bymib || !jh.nametomib)
			jh.ctl = NULL;
	}
	if (!jh.ctl)
		return false;
	if (!dd_opt.jemalloc_hooks) {
		dd_info("preload: jemalloc detected; extent hooks off (DEDUP_JEMALLOC=0): its "
			"extents are found through mmap and the reconcile");
		return true;
	}
	jh.state = JH_FOUND;
	return true;
}

/* Is p inside the same loaded object as jemalloc's mallctl? */
static bool in_jemalloc(const void *p)
{
	Dl_info a, b;
	return p && dladdr(p, &a) && dladdr((const void *)jh.ctl, &b) && a.dli_fbase == b.dli_fbase;
}

/* First round: jemalloc 5, its own hooks, the MIBs. false: leave jemalloc be. */
static bool setup(void)
{
	const char *version = NULL;
	bool retain = false;
	size_t len = sizeof(version), n;
	jh_hooks *h = NULL;

	if (jh.ctl("version", &version, &len, NULL, 0) || !version) {
		dd_info("preload: %smallctl(\"version\") failed; no extent hooks", jh.prefix);
		return false;
	}
	/* That first call gave this thread jemalloc's thread data: a thread
	 * cache, bound to an arena (and an internal one for metadata), which
	 * initialises another automatic arena when each existing one has a
	 * thread: about 90 KB of metadata, 150 KB resident (5.3, measured).
	 * "thread.arena" would move only the first binding, so it stays. */
	if (version[0] != '5' || version[1] != '.') {
		dd_info("preload: jemalloc %s: extent hooks need jemalloc 5; its extents are found "
			"through mmap and the reconcile", version);
		return false;
	}
	len = sizeof(retain);
	if (jh.ctl("opt.retain", &retain, &len, NULL, 0))
		retain = false;
	n = 3;
	if (jh.nametomib("arena.0.extent_hooks", jh.mib_hooks, &n) || n != 3)
		return false;
	n = 3;
	if (jh.nametomib("arena.0.dirty_decay_ms", jh.mib_decay, &n) || n != 3)
		return false;
	/* jemalloc's own hooks: arena 0's, unless the application replaced
	 * them already; an automatic arena not initialised yet reports them
	 * too. Either way they must live inside jemalloc. */
	unsigned nauto = 0;
	len = sizeof(nauto);
	jh.ctl("opt.narenas", &nauto, &len, NULL, 0);
	unsigned cand[2] = { 0, nauto ? nauto - 1 : 0 };
	for (size_t i = 0; i < 2 && !jh.orig; i++) {
		jh.mib_hooks[1] = cand[i];
		len = sizeof(h);
		if (!jh.bymib(jh.mib_hooks, 3, &h, &len, NULL, 0) && in_jemalloc(h))
			jh.orig = h;
	}
	if (!jh.orig || !jh.orig->alloc) {
		dd_info("preload: jemalloc %s: its own extent hooks not found; no extent hooks",
			version);
		return false;
	}
	/* NULL where jemalloc's own hook is NULL: the same opt-out */
	wrap.alloc = jh_alloc;
	wrap.dalloc = jh.orig->dalloc && !retain ? jh_dalloc : NULL;
	wrap.destroy = jh.orig->destroy ? jh_destroy : NULL;
	wrap.commit = jh.orig->commit ? jh_commit : NULL;
	wrap.decommit = jh.orig->decommit ? jh_decommit : NULL;
	wrap.purge_lazy = jh.orig->purge_lazy ? jh_purge_lazy : NULL;
	wrap.purge_forced = jh.orig->purge_forced ? jh_purge_forced : NULL;
	wrap.split = jh.orig->split ? jh_split : NULL;
	wrap.merge = jh.orig->merge ? jh_merge : NULL;
	dd_info("preload: jemalloc %s detected; wrapping its extent hooks (retain %s)", version,
		retain ? "on" : "off");
	return true;
}

static void mark_done(unsigned i) { jh.done[i / 64] |= 1ULL << (i % 64); }
static bool is_done(unsigned i) { return jh.done[i / 64] >> (i % 64) & 1; }

/* Wrap arena i if it is initialised and still has jemalloc's own hooks. */
static void wrap_arena(unsigned i)
{
	jh_hooks *cur = NULL, *old = NULL, *mine = &wrap;
	ssize_t decay;
	size_t len = sizeof(decay);

	/* Reading extent_hooks of an automatic arena that does not exist yet
	 * reports jemalloc's hooks, and writing them would create the arena:
	 * look first with a read that fails (EFAULT) for such an arena. */
	jh.mib_decay[1] = i;
	if (jh.bymib(jh.mib_decay, 3, &decay, &len, NULL, 0))
		return;   /* not initialised (yet): next round */
	jh.mib_hooks[1] = i;
	len = sizeof(cur);
	if (jh.bymib(jh.mib_hooks, 3, &cur, &len, NULL, 0))
		return;
	if (cur == &wrap) {
		mark_done(i);   /* a fork()ed child: wrapped by the parent */
		return;
	}
	if (cur != jh.orig) {
		mark_done(i);   /* the application's own hooks: not ours to wrap */
		dd_debug("preload: jemalloc arena %u has the application's extent hooks; "
			 "left alone", i);
		return;
	}
	/* Swap, and look at what we replaced: if the application installed its
	 * hooks between our read and this write, give them back. (jemalloc(3)
	 * makes hooks of automatic arenas best effort anyway; for arenas the
	 * application creates with hooks there is no window.) */
	len = sizeof(old);
	if (jh.bymib(jh.mib_hooks, 3, &old, &len, &mine, sizeof(mine)))
		return;
	mark_done(i);
	if (old != jh.orig) {
		jh.bymib(jh.mib_hooks, 3, NULL, NULL, &old, sizeof(old));
		dd_debug("preload: jemalloc arena %u got the application's hooks meanwhile; "
			 "left alone", i);
		return;
	}
	jh.wrapped++;
	dd_debug("preload: jemalloc arena %u: extent hooks wrapped", i);
}

void dd_jemalloc_sync(void)
{
	unsigned narenas = 0;
	size_t len = sizeof(narenas);

	if (jh.state == JH_FOUND) {
		if (!setup()) {
			jh.state = JH_OFF;
			return;
		}
		jh.state = JH_ON;
	}
	if (jh.state != JH_ON)
		return;
	if (jh.ctl("arenas.narenas", &narenas, &len, NULL, 0))
		return;
	if (narenas > JH_MAX_ARENAS)
		narenas = JH_MAX_ARENAS;
	for (unsigned i = 0; i < narenas; i++)
		if (!is_done(i))
			wrap_arena(i);
}
