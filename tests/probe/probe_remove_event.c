/* SPDX-License-Identifier: MIT */
/*
 * probe_remove_event.c - fact (kernel-facts.md, "Non-cooperative events can
 * deadlock their own reader"): with UFFD_FEATURE_EVENT_REMOVE, a thread that
 * calls madvise(MADV_DONTNEED) or madvise(MADV_FREE) on a range registered
 * with the uffd blocks until the UFFD_EVENT_REMOVE message is read(). The
 * event is a notification *before* the change: while it is pending the page
 * still holds its old content. While it is pending UFFDIO_WRITEPROTECT and
 * UFFDIO_MOVE fail with EAGAIN, UFFDIO_WAKE works (and does not release the
 * madvise caller). After the read the madvise returns and (DONTNEED) the page
 * reads zeros. MADV_FREE on a private file mapping (what a merged page is)
 * raises the REMOVE too, then fails with EINVAL and frees nothing.
 *
 * Why libdedup depends on it: the merger sees application purges of merged
 * or write-protected pages through REMOVE and must drop its state for the
 * range before the zap lands; it must treat EAGAIN from its own ioctls as
 * "drain the event queue, then retry", never as a failure; and it may use
 * UFFDIO_WAKE to release blocked writers while an event is queued, knowing
 * that this does not release the event's own waiter. And a REMOVE does not
 * say whether it was MADV_FREE, which discards no merged page: the preload
 * library tells the reader which calls are (discard.c, "MADV_FREE raises
 * REMOVE events too").
 */
#include "probe.h"

/* ---- helpers ----------------------------------------------------------- */

static long op_madvise(struct bg *b)
{
	return madvise(b->addr, b->len, b->arg);
}

static int is_zero(const void *p)
{
	const unsigned char *c = p;
	for (size_t i = 0; i < T_PAGE; i++)
		if (c[i])
			return 0;
	return 1;
}

static int is_present(void *p)
{
	unsigned char v = 0;
	CHECK(mincore(p, T_PAGE, &v) == 0);
	return v & 1;
}

static int uffd_move(int uffd, void *dst, void *src, size_t len,
		     struct uffdio_move *mv)
{
	memset(mv, 0, sizeof(*mv));
	mv->dst = (uintptr_t)dst;
	mv->src = (uintptr_t)src;
	mv->len = len;
	return ioctl(uffd, UFFDIO_MOVE, mv);
}

int main(void)
{
	const uint64_t need = UFFD_FEATURE_PAGEFAULT_FLAG_WP |
			      UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_MOVE;
	uint64_t have = 0;
	unsigned char pat[T_PAGE], pat2[T_PAGE];
	struct uffdio_move mv;
	struct uffd_msg m;
	struct bg b;

	int q = t_uffd_open(0, &have);
	if (q < 0)
		t_skip("userfaultfd unavailable: %s", strerror(errno));
	close(q);
	if ((have & need) != need)
		t_skip("uffd features 0x%llx lack 0x%llx", (unsigned long long)have,
		       (unsigned long long)(need & ~have));
	int uffd = t_uffd_open(need, NULL);
	CHECK(uffd >= 0);

	/* page 0: DONTNEED target, page 1: MADV_FREE target, page 2: MOVE dst */
	unsigned char *r = t_map_anon(4 * T_PAGE);
	unsigned char *x = r, *y = r + T_PAGE, *dst = r + 2 * T_PAGE;
	t_fill(pat, 1);
	t_fill(pat2, 2);
	memcpy(x, pat, T_PAGE);
	CHECK(t_uffd_register(uffd, r, 4 * T_PAGE, UFFDIO_REGISTER_MODE_WP) == 0);

	/* ---- MADV_DONTNEED ---- */
	memset(&b, 0, sizeof(b));
	b.op = op_madvise;
	b.addr = x;
	b.len = T_PAGE;
	b.arg = MADV_DONTNEED;
	bg_start(&b);

	CHECK(uffd_readable(uffd, t_cap_ms())); /* the event is queued */
	CHECK(!bg_done(&b, 100));          /* and the caller is blocked on it */

	/* (a) REMOVE comes before the zap: the content is still there. */
	CHECK(is_present(x));
	CHECK(memcmp(x, pat, T_PAGE) == 0);
	/* (b) WRITEPROTECT fails with EAGAIN while the event is pending. */
	errno = 0;
	CHECK(t_uffd_wp(uffd, x, T_PAGE, 1) == -1 && errno == EAGAIN);
	errno = 0;
	CHECK(t_uffd_wp(uffd, x, T_PAGE, 0) == -1 && errno == EAGAIN);
	/* (c) MOVE fails with EAGAIN and moves nothing. */
	errno = 0;
	CHECK(uffd_move(uffd, dst, x, T_PAGE, &mv) == -1 && errno == EAGAIN);
	CHECK(!is_present(dst));
	CHECK(memcmp(x, pat, T_PAGE) == 0);
	/* (d) WAKE works, and it does not release the event's waiter. */
	CHECK(t_uffd_wake(uffd, x, T_PAGE) == 0);
	CHECK(!bg_done(&b, 50));
	CHECK(memcmp(x, pat, T_PAGE) == 0);

	uffd_read_msg(uffd, &m);
	CHECK(m.event == UFFD_EVENT_REMOVE);
	CHECK(m.arg.remove.start == (uintptr_t)x);
	CHECK(m.arg.remove.end == (uintptr_t)x + T_PAGE);
	bg_join(&b);
	errno = b.err;
	CHECK(b.ret == 0);
	/* After the read, the zap has happened. */
	CHECK(!is_present(x));
	CHECK(is_zero(x));
	CHECK(!uffd_readable(uffd, 0));

	/* The EAGAINs were due to the pending event: the same calls work now. */
	CHECK(t_uffd_wp(uffd, x, T_PAGE, 1) == 0);
	CHECK(t_uffd_wp(uffd, x, T_PAGE, 0) == 0);
	memcpy(x, pat, T_PAGE);
	CHECK(uffd_move(uffd, dst, x, T_PAGE, &mv) == 0);
	CHECK(mv.move == (int64_t)T_PAGE);
	CHECK(memcmp(dst, pat, T_PAGE) == 0);

	/* ---- MADV_FREE on registered anonymous memory ---- */
	memcpy(y, pat2, T_PAGE);
	memset(&b, 0, sizeof(b));
	b.op = op_madvise;
	b.addr = y;
	b.len = T_PAGE;
	b.arg = MADV_FREE;
	bg_start(&b);

	CHECK(uffd_readable(uffd, t_cap_ms()));
	CHECK(!bg_done(&b, 100));
	CHECK(memcmp(y, pat2, T_PAGE) == 0);
	errno = 0;
	CHECK(t_uffd_wp(uffd, y, T_PAGE, 1) == -1 && errno == EAGAIN);
	uffd_read_msg(uffd, &m);
	CHECK(m.event == UFFD_EVENT_REMOVE);
	CHECK(m.arg.remove.start == (uintptr_t)y);
	CHECK(m.arg.remove.end == (uintptr_t)y + T_PAGE);
	bg_join(&b);
	errno = b.err;
	CHECK(b.ret == 0);
	/*
	 * MADV_FREE only marks the page lazily freeable: it keeps its content
	 * until reclaim takes it, then reads zeros. Either is legal; nothing
	 * else is.
	 */
	int kept = memcmp(y, pat2, T_PAGE) == 0;
	CHECK(kept || is_zero(y));
	printf("MADV_FREE: REMOVE event raised; afterwards the page %s\n",
	       kept ? "still holds its content (lazy free)" : "reads zeros (reclaimed)");
	CHECK(!uffd_readable(uffd, 0));

	/* ---- MADV_FREE on a private file mapping: REMOVE, then EINVAL ---- */
	int mfd = memfd_create("probe", MFD_CLOEXEC);
	CHECK(mfd >= 0 && ftruncate(mfd, T_PAGE) == 0 && pwrite(mfd, pat, T_PAGE, 0) == T_PAGE);
	unsigned char *f = mmap(NULL, T_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, mfd, 0);
	CHECK(f != MAP_FAILED && memcmp(f, pat, T_PAGE) == 0);
	CHECK(t_uffd_register(uffd, f, T_PAGE, UFFDIO_REGISTER_MODE_MISSING) == 0);
	memset(&b, 0, sizeof(b));
	b.op = op_madvise;
	b.addr = f;
	b.len = T_PAGE;
	b.arg = MADV_FREE;
	bg_start(&b);
	CHECK(uffd_readable(uffd, t_cap_ms()));
	uffd_read_msg(uffd, &m);
	CHECK(m.event == UFFD_EVENT_REMOVE);
	CHECK(m.arg.remove.start == (uintptr_t)f && m.arg.remove.end == (uintptr_t)f + T_PAGE);
	bg_join(&b);
	CHECK(b.ret == -1 && b.err == EINVAL);
	CHECK(is_present(f) && memcmp(f, pat, T_PAGE) == 0);
	printf("MADV_FREE on a private file mapping: REMOVE event raised, then EINVAL, page kept\n");
	CHECK(!uffd_readable(uffd, 0));

	close(uffd);
	printf("PASS: REMOVE is delivered before the zap; WP/MOVE EAGAIN, WAKE ok while pending\n");
	return T_PASS;
}
