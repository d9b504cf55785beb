/* SPDX-License-Identifier: MIT */
/*
 * probe_remap_event.c - fact (kernel-facts.md, "Non-cooperative events can
 * deadlock their own reader"): with UFFD_FEATURE_EVENT_REMAP,
 * mremap(MREMAP_MAYMOVE|MREMAP_FIXED) of a registered range blocks the caller
 * until the UFFD_EVENT_REMAP message (from, to, len) is read(); while it is
 * pending UFFDIO_WRITEPROTECT fails with EAGAIN. The event is a notification
 * *after* the change: when it can be read, the data already lives at the new
 * address and the old range is unmapped. The new range stays registered
 * (uffd-wp bits travel with the PTEs; a write to it raises a WP fault) and
 * the old range is gone.
 *
 * Why libdedup depends on it: the merger keys its per-page state by address.
 * On REMAP it must move that state from "from" to "to"; because the move has
 * already happened, any ioctl it issues must target the new address, and the
 * old range must be treated as unmapped. It also relies on the range staying
 * registered and write-protected so that merged pages stay protected.
 */
#include "probe.h"

/* ---- helpers ----------------------------------------------------------- */

static long op_mremap(struct bg *b)
{
	void *p = mremap(b->addr, b->len, b->len, MREMAP_MAYMOVE | MREMAP_FIXED,
			 b->addr2);
	return p == MAP_FAILED ? -1 : (long)(uintptr_t)p;
}

static long op_write(struct bg *b)
{
	*(volatile uint64_t *)b->addr = 0x5a5a5a5a5a5a5a5aULL;
	return 0;
}

/* 1 if [p, p + len) is entirely unmapped (mincore fails with ENOMEM). */
static int is_unmapped(void *p, size_t len)
{
	unsigned char v[16];
	CHECK(len / T_PAGE <= sizeof(v));
	errno = 0;
	int r = mincore(p, len, v);
	return r == -1 && errno == ENOMEM;
}

/* /proc/self/pagemap bit 57: PTE is uffd write-protected. */
static int pagemap_uffd_wp(void *p)
{
	uint64_t e = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	CHECK(pread(fd, &e, 8, (off_t)((uintptr_t)p / T_PAGE * 8)) == 8);
	close(fd);
	CHECK(e >> 63 & 1); /* present */
	return (int)(e >> 57 & 1);
}

int main(void)
{
	const uint64_t need = UFFD_FEATURE_PAGEFAULT_FLAG_WP |
			      UFFD_FEATURE_EVENT_REMAP;
	const size_t len = 2 * T_PAGE;
	uint64_t have = 0;
	unsigned char pat[2][T_PAGE];
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

	unsigned char *old = t_map_anon(len);
	/* The destination: a reserved, unregistered hole elsewhere. */
	unsigned char *nw = mmap(NULL, len, PROT_NONE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	CHECK(nw != MAP_FAILED);
	t_fill(pat[0], 11);
	t_fill(pat[1], 12);
	memcpy(old, pat[0], T_PAGE);
	memcpy(old + T_PAGE, pat[1], T_PAGE);
	CHECK(t_uffd_register(uffd, old, len, UFFDIO_REGISTER_MODE_WP) == 0);
	/* Page 0 write-protected, page 1 not. */
	CHECK(t_uffd_wp(uffd, old, T_PAGE, 1) == 0);
	CHECK(pagemap_uffd_wp(old) == 1);
	CHECK(pagemap_uffd_wp(old + T_PAGE) == 0);

	memset(&b, 0, sizeof(b));
	b.op = op_mremap;
	b.addr = old;
	b.addr2 = nw;
	b.len = len;
	bg_start(&b);

	CHECK(uffd_readable(uffd, t_cap_ms()));
	CHECK(!bg_done(&b, 100)); /* the mremap caller waits for the read */

	/* While pending: the move is already done. */
	CHECK(is_unmapped(old, len));
	CHECK(memcmp(nw, pat[0], T_PAGE) == 0);
	CHECK(memcmp(nw + T_PAGE, pat[1], T_PAGE) == 0);
	errno = 0;
	CHECK(t_uffd_wp(uffd, nw, len, 1) == -1 && errno == EAGAIN);
	CHECK(t_uffd_wake(uffd, nw, len) == 0);
	CHECK(!bg_done(&b, 20));

	uffd_read_msg(uffd, &m);
	CHECK(m.event == UFFD_EVENT_REMAP);
	CHECK(m.arg.remap.from == (uintptr_t)old);
	CHECK(m.arg.remap.to == (uintptr_t)nw);
	CHECK(m.arg.remap.len == len);
	bg_join(&b);
	errno = b.err;
	CHECK(b.ret == (long)(uintptr_t)nw);
	CHECK(!uffd_readable(uffd, 0));

	/* Afterwards: old range unmapped, not registered; new range holds data. */
	CHECK(is_unmapped(old, len));
	errno = 0;
	CHECK(t_uffd_wp(uffd, old, len, 1) == -1 && errno == ENOENT);
	CHECK(memcmp(nw, pat[0], T_PAGE) == 0);
	CHECK(memcmp(nw + T_PAGE, pat[1], T_PAGE) == 0);
	/* The uffd-wp bit moved with the PTE. */
	CHECK(pagemap_uffd_wp(nw) == 1);
	CHECK(pagemap_uffd_wp(nw + T_PAGE) == 0);

	/* The new range is registered: WP works and a write raises a WP fault. */
	CHECK(t_uffd_wp(uffd, nw, len, 1) == 0);
	CHECK(pagemap_uffd_wp(nw + T_PAGE) == 1);
	memset(&b, 0, sizeof(b));
	b.op = op_write;
	b.addr = nw + T_PAGE + 64;
	bg_start(&b);
	uffd_read_msg(uffd, &m);
	CHECK(m.event == UFFD_EVENT_PAGEFAULT);
	CHECK(m.arg.pagefault.flags ==
	      (UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP));
	CHECK(m.arg.pagefault.address / T_PAGE == (uintptr_t)(nw + T_PAGE) / T_PAGE);
	CHECK(!bg_done(&b, 100));
	CHECK(memcmp(nw + T_PAGE, pat[1], T_PAGE) == 0);
	CHECK(t_uffd_wp(uffd, nw + T_PAGE, T_PAGE, 0) == 0); /* un-protect + wake */
	bg_join(&b);
	CHECK(*(uint64_t *)(nw + T_PAGE + 64) == 0x5a5a5a5a5a5a5a5aULL);
	CHECK(memcmp(nw + T_PAGE + 72, pat[1] + 72, T_PAGE - 72) == 0);

	close(uffd);
	printf("PASS: REMAP is delivered after the move; new range stays registered\n");
	return T_PASS;
}
