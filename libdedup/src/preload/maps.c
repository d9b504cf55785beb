/* SPDX-License-Identifier: MIT */
/*
 * maps.c - preload mode: /proc/self/maps and smaps, one VMA (struct vma,
 * preload.h) at a time: its range, permissions, kind (anonymous, stack, a
 * piece of our memfd, other) and, from smaps, the VmFlags we care about.
 * Read with os.c's reader (dd_proc_lines: a stack buffer, a temporary
 * descriptor of ours, no stdio, no malloc), since this runs inside
 * interposed calls.
 *
 * Any thread: the interposers and the dedup-preload thread. No lock of its
 * own; dd_pl_pieces_in fills pl.pieces, which is pl.lock's.
 */
#include <fcntl.h>
#include <string.h>

#include "preload.h"

/* One VMA from a header line of maps or smaps (os.c parses it). */
static bool parse_header(const char *line, struct vma *v)
{
	struct dd_maps_line m;
	const char *p;

	if (!dd_maps_header(line, &m))
		return false;
	v->lo = m.lo;
	v->hi = m.hi;
	memcpy(v->perms, m.perms, 4);
	v->flags = 0;
	p = m.name;
	v->heap = m.inode == 0 && strncmp(p, "[heap]", 6) == 0;
	if (m.inode == 0) {
		if (*p == 0 || strncmp(p, "[heap]", 6) == 0 ||
		    (strncmp(p, "[anon:", 6) == 0 && strncmp(p, "[anon:libdedup", 14) != 0))
			v->kind = K_ANON;
		else if (strncmp(p, "[stack", 6) == 0)
			v->kind = K_STACK;
		else
			v->kind = K_OTHER;
	} else {
		v->kind = strncmp(p, "/memfd:libdedup", 15) == 0 ? K_DEDUP : K_OTHER;
	}
	return true;
}

static const struct dd_vmflag_name vf_names[] = {
	{ "lo", VF_LO }, { "dc", VF_DC }, { "wf", VF_WF }, { "dd", VF_DD },
	{ "um", VF_UM }, { "uw", VF_UW }, { "ui", VF_UI },
};

typedef int (*vma_fn)(void *ctx, const struct vma *v);

struct walk {
	bool smaps;
	bool pending;            /* smaps: v is waiting for its VmFlags line */
	struct vma v;
	vma_fn fn;
	void *ctx;
};

static int walk_line(void *c, char *line)
{
	struct walk *w = c;
	int ret;

	if (w->smaps && w->pending && strncmp(line, "VmFlags:", 8) == 0) {
		w->v.flags = VF_KNOWN | dd_vmflags_parse(line + 8, vf_names, DD_ARRAY_SIZE(vf_names));
		w->pending = false;
		return w->fn(w->ctx, &w->v);
	}
	struct vma v;
	if (!parse_header(line, &v))
		return 0;
	if (w->pending && (ret = w->fn(w->ctx, &w->v)))   /* smaps without VmFlags */
		return ret;
	w->v = v;
	w->pending = w->smaps;
	return w->smaps ? 0 : w->fn(w->ctx, &w->v);
}

/*
 * Call fn for every VMA of /proc/self/maps (smaps: with its VmFlags), in
 * address order (os.c's reader: no stdio, no malloc). Stops when fn
 * returns non-zero. Returns 0 or -errno.
 */
int dd_pl_vma_walk(bool smaps, vma_fn fn, void *ctx)
{
	struct walk w = { .smaps = smaps, .fn = fn, .ctx = ctx };
	int ret = dd_proc_lines(smaps ? "/proc/self/smaps" : "/proc/self/maps", walk_line, &w);

	if (ret == 0 && w.pending)
		ret = fn(ctx, &w.v);
	return ret < 0 ? ret : 0;
}

struct collect {
	struct vma *out;
	size_t n, cap;
	bool grow;           /* out is pl.pieces: grow it when full */
	uintptr_t lo, hi;    /* only VMAs overlapping this */
};

static int collect_fn(void *c, const struct vma *v)
{
	struct collect *cc = c;
	if (v->hi <= cc->lo)
		return 0;
	if (v->lo >= cc->hi)
		return 1;
	if (cc->n == cc->cap) {
		if (!cc->grow || !TABLE_GROW(pl.pieces, pl.pcap, cc->n + 1))
			return -ENOSPC;
		cc->out = pl.pieces;
		cc->cap = pl.pcap;
	}
	cc->out[cc->n++] = *v;
	return 0;
}

/* VMAs overlapping [lo, hi) into out[0..cap). Returns the count or -errno. */
long dd_pl_vmas_in(bool smaps, uintptr_t lo, uintptr_t hi, struct vma *out, size_t cap)
{
	struct collect cc = { out, 0, cap, false, lo, hi };
	int r = dd_pl_vma_walk(smaps, collect_fn, &cc);
	return r < 0 ? r : (long)cc.n;
}

/* VMAs overlapping [lo, hi) into pl.pieces (grown as needed). pl.lock held. */
long dd_pl_pieces_in(uintptr_t lo, uintptr_t hi)
{
	struct collect cc = { pl.pieces, 0, pl.pcap, true, lo, hi };
	int r = dd_pl_vma_walk(false, collect_fn, &cc);
	return r < 0 ? r : (long)cc.n;
}
