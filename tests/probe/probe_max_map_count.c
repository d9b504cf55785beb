/* SPDX-License-Identifier: MIT */
/*
 * probe_max_map_count.c - fact (kernel-facts.md, "VMAs"): at vm.max_map_count,
 * mmap(MAP_FIXED) of a memfd page into the middle of an anonymous VMA (which
 * would split it) fails with ENOMEM, and the old page and its content stay;
 * munmap() of a page in the middle of a VMA fails with ENOMEM too. Once the
 * limit is raised again the same mmap succeeds.
 *
 * The test lowers vm.max_map_count (a global sysctl, root only; skipped if
 * not writable) to this process's map count + 4 for a few milliseconds and
 * puts the original value back on every exit path (normal return, CHECK
 * failure via atexit, fatal signals, and an alarm). To keep the lowered limit
 * far above what other processes on the machine use, it first raises its own
 * map count to about 8,000 VMAs of PROT_NONE address space. It holds the
 * machine-wide lock of tests/mmc_lock.h (shared with with_max_map_count.sh
 * and dedup-bench --max-map-count) from before it reads the value until it
 * has put it back, so that it never lowers the limit under another run.
 *
 * Then mremap(MREMAP_FIXED): the kernel (mremap_to) refuses it with ENOMEM
 * unless the map count is several below the limit (map_count + 2 <
 * max_map_count - 3), even for a move that lowers the count - a one-page
 * VMA moved over a one-page file VMA - and then nothing has moved; at 7 above
 * the count of /proc/self/maps lines it goes through.
 *
 * Why libdedup depends on it: each isolated merge costs two VMAs. A merge
 * that runs into the limit must fail cleanly (ENOMEM, original page intact)
 * so that libdedup can skip it and keep going; and libdedup must leave
 * headroom, since an application at the limit fails in its own munmap().
 * Unmerging (merge.c, "Unmerging" 3.) moves a replacement over each merged
 * run with mremap: near the limit it needs that headroom before it can
 * give mappings back, and a refused move must leave the run as it was.
 */
#include "tcommon.h"
#include "uapi.h"
#include "mmc_lock.h"

#include <signal.h>

#define SYSCTL "/proc/sys/vm/max_map_count"

static char orig[32];
static volatile sig_atomic_t lowered;

/* async-signal-safe */
static void restore(void)
{
	if (!lowered)
		return;
	int fd = open(SYSCTL, O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (write(fd, orig, strlen(orig)) > 0)
			lowered = 0;
		close(fd);
	}
}

static void on_signal(int sig)
{
	restore();
	signal(sig, SIG_DFL);
	raise(sig);
}

static int write_limit(long v)
{
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%ld\n", v);
	int fd = open(SYSCTL, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int r = write(fd, buf, (size_t)n) == n ? 0 : -1;
	int e = errno;
	close(fd);
	errno = e;
	return r;
}

static long read_limit(void)
{
	char buf[32] = "";
	int fd = open(SYSCTL, O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	CHECK(read(fd, buf, sizeof(buf) - 1) > 0);
	close(fd);
	return strtol(buf, NULL, 10);
}

int main(void)
{
	enum { NP = 32, BULK = 4000 };
	unsigned char apat[NP][T_PAGE], fpat[T_PAGE];
	long limit, base;
	int k, fail_at = -1, fail_errno = 0;

	/* writable? then the lock, then the original value */
	int fd = open(SYSCTL, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		t_skip("%s not writable: %s", SYSCTL, strerror(errno));
	close(fd);
	if (mmc_lock(t_cap(), "probe_max_map_count") < 0) {
		printf("FAIL: no lock on vm.max_map_count after %.0f s: %s\n", t_cap(),
		       strerror(errno));
		return T_FAIL;
	}
	fd = open(SYSCTL, O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	ssize_t n = read(fd, orig, sizeof(orig) - 1);
	close(fd);
	CHECK(n > 0);
	orig[n] = 0;
	if (strtol(orig, NULL, 10) < MMC_FLOOR) {
		printf("found vm.max_map_count=%ld below %ld (another run's crash?): "
		       "%ld will be put back\n", strtol(orig, NULL, 10), MMC_FLOOR, MMC_FLOOR);
		snprintf(orig, sizeof(orig), "%ld\n", MMC_FLOOR);
	}
	mmc_state_write(strtol(orig, NULL, 10));

	atexit(restore);
	int sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGSEGV, SIGBUS, SIGABRT,
		       SIGFPE, SIGILL, SIGALRM };
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		signal(sigs[i], on_signal);
	alarm(20);

	/* About 2*BULK extra VMAs: alternate PROT_NONE / PROT_READ pages. */
	unsigned char *bulk = mmap(NULL, 2 * BULK * T_PAGE, PROT_NONE,
				   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	CHECK(bulk != MAP_FAILED);
	for (int i = 0; i < BULK; i++)
		CHECK(mprotect(bulk + (2 * i + 1) * T_PAGE, T_PAGE, PROT_READ) == 0);

	/* the victim: an anonymous VMA with distinct page contents */
	int mfd = memfd_create("probe", MFD_CLOEXEC);
	CHECK(mfd >= 0);
	t_fill(fpat, 77);
	CHECK(pwrite(mfd, fpat, T_PAGE, 0) == (ssize_t)T_PAGE);
	unsigned char *r = t_map_anon(NP * T_PAGE);
	for (int i = 0; i < NP; i++) {
		t_fill(apat[i], 500 + i);
		memcpy(r + i * T_PAGE, apat[i], T_PAGE);
	}

	/* warm up stdio and the heap, then measure */
	(void)t_map_count();
	base = t_map_count();
	CHECK(base > 2 * BULK);
	limit = base + 4;
	printf("map count %ld, limit lowered from %ld to %ld\n", base,
	       strtol(orig, NULL, 10), limit);

	/* ---- at the limit (keep this window short: the sysctl is global) ---- */
	lowered = 1;
	CHECK(write_limit(limit) == 0);
	CHECK(read_limit() == limit);
	for (k = 0; k < 8; k++) {
		unsigned char *x = r + (2 + 2 * k) * T_PAGE;
		errno = 0;
		void *p = mmap(x, T_PAGE, PROT_READ | PROT_WRITE,
			       MAP_FIXED | MAP_PRIVATE, mfd, 0);
		if (p == MAP_FAILED) {
			fail_at = k;
			fail_errno = errno;
			break;
		}
		CHECK(p == x);
	}
	unsigned char *xf = r + (2 + 2 * k) * T_PAGE;
	long at_limit = t_map_count();
	/* munmap splitting a VMA in the middle fails too */
	unsigned char *y = r + (NP - 4) * T_PAGE;
	errno = 0;
	int ur = munmap(y, T_PAGE);
	int ue = errno;
	long after_munmap = t_map_count();
	restore();
	CHECK(!lowered);
	/* ---- limit restored ---- */

	CHECK(read_limit() == strtol(orig, NULL, 10));
	mmc_state_clear();
	printf("mmap(MAP_FIXED) #%d failed with %s; munmap of a middle page: %d (%s)\n",
	       fail_at, strerror(fail_errno), ur, ur ? strerror(ue) : "ok");
	CHECK(fail_at >= 1); /* splits below the limit worked */
	CHECK(fail_errno == ENOMEM);
	/*
	 * Each successful replacement added 2 VMAs, the failed one none. The
	 * kernel checks the count before a split-and-insert, so the count can
	 * end one or two above the limit (maps also lists [vsyscall]).
	 */
	CHECK(at_limit - base == 2L * fail_at);
	CHECK(at_limit <= limit + 2);
	/* the failed mmap left the old page and its content */
	CHECK(memcmp(xf, apat[2 + 2 * fail_at], T_PAGE) == 0);
	for (int i = 0; i < fail_at; i++)
		CHECK(memcmp(r + (2 + 2 * i) * T_PAGE, fpat, T_PAGE) == 0);
	for (int i = 0; i < NP; i++) {
		int merged = i >= 2 && i < 2 + 2 * fail_at && i % 2 == 0;
		if (!merged)
			CHECK(memcmp(r + i * T_PAGE, apat[i], T_PAGE) == 0);
	}
	errno = ue;
	CHECK(ur == -1 && ue == ENOMEM);
	CHECK(after_munmap == at_limit);
	CHECK(memcmp(y, apat[NP - 4], T_PAGE) == 0);

	/* With the limit back, the same replacement and munmap succeed. */
	CHECK(mmap(xf, T_PAGE, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE, mfd,
		   0) == xf);
	CHECK(memcmp(xf, fpat, T_PAGE) == 0);
	CHECK(munmap(y, T_PAGE) == 0);

	/* mremap(MREMAP_FIXED) of a one-page VMA over a one-page file VMA,
	 * each between PROT_NONE guards: it would lower the count by one */
	unsigned char *gs = mmap(NULL, 3 * T_PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	unsigned char *gd = mmap(NULL, 3 * T_PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(gs != MAP_FAILED && gd != MAP_FAILED);
	CHECK(mprotect(gs + T_PAGE, T_PAGE, PROT_READ | PROT_WRITE) == 0);
	memcpy(gs + T_PAGE, apat[0], T_PAGE);
	CHECK(mmap(gd + T_PAGE, T_PAGE, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE, mfd, 0) ==
	      gd + T_PAGE);
	(void)t_map_count();
	long base2 = t_map_count();
	/* ---- lowered again, twice (short: the sysctl is global) ---- */
	lowered = 1;
	CHECK(write_limit(base2 + 3) == 0);
	errno = 0;
	void *m1 = mremap(gs + T_PAGE, T_PAGE, T_PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, gd + T_PAGE);
	int me = errno;
	long c1 = t_map_count();
	bool kept = memcmp(gs + T_PAGE, apat[0], T_PAGE) == 0 && memcmp(gd + T_PAGE, fpat, T_PAGE) == 0;
	CHECK(write_limit(base2 + 7) == 0);
	void *m2 = mremap(gs + T_PAGE, T_PAGE, T_PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, gd + T_PAGE);
	long c2 = t_map_count();
	restore();
	CHECK(!lowered);
	/* ---- limit restored ---- */
	printf("mremap(MREMAP_FIXED) lowering the count, %ld maps lines: at limit +3: %s; "
	       "at +7: %s (%ld -> %ld lines)\n", base2, m1 == MAP_FAILED ? strerror(me) : "moved",
	       m2 == MAP_FAILED ? strerror(errno) : "moved", base2, c2);
	errno = me;
	CHECK(m1 == MAP_FAILED && me == ENOMEM);
	CHECK(c1 == base2);
	CHECK(kept);   /* the refused move left both as they were */
	CHECK(m2 == gd + T_PAGE);
	CHECK(c2 == base2 - 1);
	CHECK(memcmp(gd + T_PAGE, apat[0], T_PAGE) == 0);

	close(mfd);
	printf("PASS: at vm.max_map_count, VMA-splitting mmap/munmap fail with ENOMEM, "
	       "content kept; mremap(MREMAP_FIXED) needs headroom\n");
	return T_PASS;
}
