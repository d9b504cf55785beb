/* SPDX-License-Identifier: MIT */
/*
 * probe_mmap_fixed_noevent.c - fact (kernel-facts.md, "Non-cooperative events
 * can deadlock their own reader"): only UFFD_FEATURE_EVENT_UNMAP makes
 * munmap() and mmap(MAP_FIXED) over a registered range wait for the reader.
 * With features PAGEFAULT_FLAG_WP|EVENT_REMOVE|EVENT_REMAP (no EVENT_UNMAP),
 * mmap(MAP_FIXED) of a memfd page over a registered page and munmap() of a
 * registered page complete at once and queue no message. With EVENT_UNMAP
 * added, both block the caller until the UFFD_EVENT_UNMAP message is read;
 * the event is sent after the change (the range is already unmapped, or
 * already maps the new page, while the message is pending).
 *
 * Why libdedup depends on it: the merger replaces a write-protected page
 * with mmap(MAP_FIXED) of a memfd page from its own thread, which is also the
 * uffd reader. If that mmap queued an event and waited for it, the merger
 * would wait on itself forever (seen: process stuck in D state). libdedup
 * therefore must not enable EVENT_UNMAP on the uffd it merges through, and
 * this probe checks that REMOVE and REMAP alone are safe.
 */
#include "probe.h"

/*
 * Run an operation that is expected NOT to block on the uffd. If it does not
 * finish in time, read (and report) whatever the uffd queued so the thread
 * is released, then fail.
 */
static void run_unblocked(struct bg *b, int uffd, const char *what)
{
	bg_start(b);
	if (!bg_done(b, t_cap_ms())) {
		struct uffd_msg m;
		fprintf(stderr, "FAIL: %s blocked\n", what);
		while (uffd_readable(uffd, 1000) &&
		       read(uffd, &m, sizeof(m)) == (ssize_t)sizeof(m))
			fprintf(stderr, "  uffd event 0x%x\n", m.event);
		bg_join(b);
		exit(T_FAIL);
	}
	bg_join(b);
	if (uffd_readable(uffd, 100)) {
		struct uffd_msg m;
		CHECK(read(uffd, &m, sizeof(m)) == (ssize_t)sizeof(m));
		fprintf(stderr, "FAIL: %s queued uffd event 0x%x\n", what, m.event);
		exit(T_FAIL);
	}
}

/* ---- helpers ----------------------------------------------------------- */

static long op_mmap_fixed(struct bg *b)
{
	void *p = mmap(b->addr, T_PAGE, PROT_READ | PROT_WRITE,
		       MAP_FIXED | MAP_PRIVATE, b->fd, 0);
	return p == MAP_FAILED ? -1 : (long)(uintptr_t)p;
}

static long op_munmap(struct bg *b)
{
	return munmap(b->addr, b->len);
}

static int is_unmapped(void *p, size_t len)
{
	unsigned char v[16];
	CHECK(len / T_PAGE <= sizeof(v));
	errno = 0;
	return mincore(p, len, v) == -1 && errno == ENOMEM;
}

static int make_memfd(const void *content)
{
	int fd = memfd_create("probe", MFD_CLOEXEC);
	CHECK(fd >= 0);
	CHECK(pwrite(fd, content, T_PAGE, 0) == (ssize_t)T_PAGE);
	return fd;
}

int main(void)
{
	const uint64_t base = UFFD_FEATURE_PAGEFAULT_FLAG_WP |
			      UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_REMAP;
	const uint64_t need = base | UFFD_FEATURE_EVENT_UNMAP;
	uint64_t have = 0;
	unsigned char fpat[T_PAGE], apat[T_PAGE];
	struct uffd_msg m;
	struct bg b;

	int q = t_uffd_open(0, &have);
	if (q < 0)
		t_skip("userfaultfd unavailable: %s", strerror(errno));
	close(q);
	if ((have & need) != need)
		t_skip("uffd features 0x%llx lack 0x%llx", (unsigned long long)have,
		       (unsigned long long)(need & ~have));

	t_fill(fpat, 21);
	t_fill(apat, 22);
	int mfd = make_memfd(fpat);

	/* ---- without EVENT_UNMAP: no block, no message ---- */
	int uffd = t_uffd_open(base, NULL);
	CHECK(uffd >= 0);
	unsigned char *r = t_map_anon(4 * T_PAGE);
	for (int i = 0; i < 4; i++)
		memcpy(r + i * T_PAGE, apat, T_PAGE);
	CHECK(t_uffd_register(uffd, r, 4 * T_PAGE, UFFDIO_REGISTER_MODE_WP) == 0);
	CHECK(t_uffd_wp(uffd, r, 4 * T_PAGE, 1) == 0);

	memset(&b, 0, sizeof(b));
	b.op = op_mmap_fixed;
	b.addr = r + T_PAGE;
	b.fd = mfd;
	run_unblocked(&b, uffd, "mmap(MAP_FIXED) over a registered page");
	CHECK(b.ret == (long)(uintptr_t)(r + T_PAGE));
	CHECK(memcmp(r + T_PAGE, fpat, T_PAGE) == 0);
	CHECK(memcmp(r, apat, T_PAGE) == 0);

	memset(&b, 0, sizeof(b));
	b.op = op_munmap;
	b.addr = r + 2 * T_PAGE;
	b.len = T_PAGE;
	run_unblocked(&b, uffd, "munmap of a registered page");
	CHECK(b.ret == 0);
	CHECK(is_unmapped(r + 2 * T_PAGE, T_PAGE));
	CHECK(memcmp(r + 3 * T_PAGE, apat, T_PAGE) == 0);
	close(uffd);
	CHECK(munmap(r, 4 * T_PAGE) == 0);

	/* ---- with EVENT_UNMAP: the caller waits for the reader ---- */
	uffd = t_uffd_open(need, NULL);
	CHECK(uffd >= 0);
	r = t_map_anon(4 * T_PAGE);
	for (int i = 0; i < 4; i++)
		memcpy(r + i * T_PAGE, apat, T_PAGE);
	CHECK(t_uffd_register(uffd, r, 4 * T_PAGE, UFFDIO_REGISTER_MODE_WP) == 0);

	/* munmap of a registered page */
	memset(&b, 0, sizeof(b));
	b.op = op_munmap;
	b.addr = r + 2 * T_PAGE;
	b.len = T_PAGE;
	bg_start(&b);
	CHECK(uffd_readable(uffd, t_cap_ms()));
	CHECK(!bg_done(&b, 100));
	CHECK(is_unmapped(r + 2 * T_PAGE, T_PAGE)); /* already done */
	uffd_read_msg(uffd, &m);
	CHECK(m.event == UFFD_EVENT_UNMAP);
	CHECK(m.arg.remove.start == (uintptr_t)(r + 2 * T_PAGE));
	CHECK(m.arg.remove.end == (uintptr_t)(r + 3 * T_PAGE));
	bg_join(&b);
	errno = b.err;
	CHECK(b.ret == 0);
	CHECK(is_unmapped(r + 2 * T_PAGE, T_PAGE));
	CHECK(!uffd_readable(uffd, 0));

	/* mmap(MAP_FIXED) over a registered page */
	memset(&b, 0, sizeof(b));
	b.op = op_mmap_fixed;
	b.addr = r + T_PAGE;
	b.fd = mfd;
	bg_start(&b);
	CHECK(uffd_readable(uffd, t_cap_ms()));
	CHECK(!bg_done(&b, 100));
	CHECK(memcmp(r + T_PAGE, fpat, T_PAGE) == 0); /* already replaced */
	uffd_read_msg(uffd, &m);
	CHECK(m.event == UFFD_EVENT_UNMAP);
	CHECK(m.arg.remove.start == (uintptr_t)(r + T_PAGE));
	CHECK(m.arg.remove.end == (uintptr_t)(r + 2 * T_PAGE));
	bg_join(&b);
	errno = b.err;
	CHECK(b.ret == (long)(uintptr_t)(r + T_PAGE));
	CHECK(memcmp(r + T_PAGE, fpat, T_PAGE) == 0);
	CHECK(memcmp(r, apat, T_PAGE) == 0);
	CHECK(!uffd_readable(uffd, 0));

	close(uffd);
	close(mfd);
	printf("PASS: MAP_FIXED/munmap silent without EVENT_UNMAP; block until read with it\n");
	return T_PASS;
}
