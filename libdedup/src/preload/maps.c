/* SPDX-License-Identifier: MIT */
/*
 * maps.c - preload mode: /proc/self/maps and smaps, one VMA (struct vma,
 * preload.h) at a time: its range, permissions, kind (anonymous, stack, a
 * piece of our memfd, other) and, from smaps, the VmFlags we care about.
 * Read from a stack buffer through a temporary descriptor of ours (../fds.c):
 * no stdio, no malloc, since this runs inside interposed calls.
 *
 * Any thread: the interposers and the dedup-preload thread. No lock of its
 * own; dd_pl_pieces_in fills pl.pieces, which is pl.lock's.
 */
#include <fcntl.h>
#include <string.h>

#include "preload.h"

static uintptr_t parse_hex(const char **pp)
{
	const char *p = *pp;
	uintptr_t v = 0;
	for (;; p++) {
		unsigned d;
		if (*p >= '0' && *p <= '9')
			d = (unsigned)(*p - '0');
		else if (*p >= 'a' && *p <= 'f')
			d = (unsigned)(*p - 'a' + 10);
		else
			break;
		v = v * 16 + d;
	}
	*pp = p;
	return v;
}

static bool is_header(const char *s)
{
	return (*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f');
}

/* "lo-hi perms offset dev inode name" */
static bool parse_header(const char *s, struct vma *v)
{
	const char *p = s;
	unsigned long inode = 0;

	v->lo = parse_hex(&p);
	if (*p++ != '-')
		return false;
	v->hi = parse_hex(&p);
	if (*p++ != ' ' || strlen(p) < 4)
		return false;
	memcpy(v->perms, p, 4);
	p += 4;
	while (*p == ' ')
		p++;
	parse_hex(&p);                 /* offset */
	while (*p == ' ')
		p++;
	parse_hex(&p);                 /* dev major */
	if (*p == ':')
		p++;
	parse_hex(&p);                 /* dev minor */
	while (*p == ' ')
		p++;
	while (*p >= '0' && *p <= '9')
		inode = inode * 10 + (unsigned long)(*p++ - '0');
	while (*p == ' ')
		p++;
	v->flags = 0;
	v->heap = inode == 0 && strncmp(p, "[heap]", 6) == 0;
	if (inode == 0) {
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

static uint32_t parse_vmflags(const char *p)
{
	static const struct { char n[3]; uint32_t f; } names[] = {
		{ "lo", VF_LO }, { "dc", VF_DC }, { "wf", VF_WF }, { "dd", VF_DD },
		{ "um", VF_UM }, { "uw", VF_UW }, { "ui", VF_UI },
	};
	uint32_t f = VF_KNOWN;

	while (*p) {
		while (*p == ' ')
			p++;
		if (!p[0] || !p[1])
			break;
		for (size_t i = 0; i < DD_ARRAY_SIZE(names); i++)
			if (p[0] == names[i].n[0] && p[1] == names[i].n[1])
				f |= names[i].f;
		p += 2;
	}
	return f;
}

typedef int (*vma_fn)(void *ctx, const struct vma *v);

/*
 * Call fn for every VMA of /proc/self/maps (smaps: with its VmFlags), in
 * address order, from a stack buffer (no stdio). Lines longer than the
 * buffer (paths) are cut; only their start matters. Stops when fn returns
 * non-zero. Returns 0 or -errno.
 */
int dd_pl_vma_walk(bool smaps, vma_fn fn, void *ctx)
{
	char buf[8192];
	size_t have = 0;
	bool pending = false, skip_rest = false;
	struct vma v = { 0 };
	int ret = 0;
	int fd = dd_fd_open_temp(smaps ? "/proc/self/smaps" : "/proc/self/maps", O_RDONLY);

	if (fd < 0)
		return fd;
	for (;;) {
		ssize_t r = dd_fd_read_temp(fd, buf + have, sizeof(buf) - 1 - have);
		if (r <= 0)
			break;
		have += (size_t)r;
		buf[have] = 0;
		char *line = buf, *nl;
		while ((nl = memchr(line, '\n', have - (size_t)(line - buf)))) {
			*nl = 0;
			if (skip_rest) {
				skip_rest = false;     /* the tail of a cut line */
			} else if (is_header(line)) {
				if (pending && (ret = fn(ctx, &v)))
					goto out;
				pending = parse_header(line, &v);
				if (pending && !smaps) {
					pending = false;
					if ((ret = fn(ctx, &v)))
						goto out;
				}
			} else if (pending && strncmp(line, "VmFlags:", 8) == 0) {
				v.flags = parse_vmflags(line + 8);
				pending = false;
				if ((ret = fn(ctx, &v)))
					goto out;
			}
			line = nl + 1;
		}
		have -= (size_t)(line - buf);
		memmove(buf, line, have);
		if (have == sizeof(buf) - 1) {   /* a line longer than buf */
			buf[have] = 0;
			if (is_header(buf)) {
				if (pending && (ret = fn(ctx, &v)))
					goto out;
				pending = parse_header(buf, &v);
				if (pending && !smaps) {
					pending = false;
					if ((ret = fn(ctx, &v)))
						goto out;
				}
			}
			have = 0;
			skip_rest = true;
		}
	}
	if (pending)
		ret = fn(ctx, &v);
out:
	dd_fd_close_temp(fd);
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
