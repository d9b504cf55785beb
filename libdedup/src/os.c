/* SPDX-License-Identifier: MIT */
/*
 * os.c - the OS boundary: every mapping call of libdedup (raw system calls,
 * "ours" said explicitly), every userfaultfd ioctl, the present-page walk
 * (PAGEMAP_SCAN, or /proc/self/pagemap as the fallback), /proc parsing, the
 * one page of zeros, and the full read/write helpers. Callers get 0 /
 * -errno and never see errno - except from the mapping calls, which keep
 * the system calls' own contract (MAP_FAILED or -1, and errno).
 *
 * Feature probing happens once (dd_os_probe) into dd_feat; every fallback
 * can be forced from the environment for tests:
 *   DEDUP_FORCE_PAGEMAP=1      use /proc/self/pagemap instead of PAGEMAP_SCAN
 *   DEDUP_FORCE_USER_ONLY=1    act as if only a user-mode-only uffd existed
 *   DEDUP_FORCE_DIRECT_READ=1  compare moved pages in place, not via process_vm_readv
 *   DEDUP_FORCE_MAPS_TEXT=1    read the text of /proc/self/maps, not PROCMAP_QUERY
 *   DEDUP_TEST_FAR_SPAN=BYTES  our own mapping area that small ("Where our mappings go")
 *
 * Thread-safety: stateless apart from dd_feat (written at init) and the
 * pagemap fd (opened at init, used under eng.lock).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <linux/futex.h>

#include "internal.h"
#include "uapi.h"

struct dd_features dd_feat;
static int pagemap_fd = -1;

/* ---- mapping calls ---------------------------------------------------------
 *
 * Every mapping call of libdedup is a raw system call made here. The
 * preload library interposes mmap & co. for the program; if our own calls
 * went through those interposers, the interposer would have to guess whose
 * call it is (it used to, by the caller's return address). Here it is said:
 * a call with ours = true makes or moves libdedup's own memory, and
 * dd_os_ours_hook (set by the preload library before anything is mapped;
 * NULL otherwise) records it, so that the program's heap is never confused
 * with ours. ours = false is for memory that is the program's: a merged run
 * placed over its pages, a hole mended, a replacement moved into place.
 * Unmapping or moving memory away always tells the hook (forgetting a range
 * that was never ours is harmless).
 *
 * Two kinds of caller must not call the hook, and pass quiet = true by using
 * the dd_os_raw_* forms: the hook's own tables (ranges.c, which the hook
 * grows while it holds its lock), and a fork()ed child before its first
 * return to the program (the hook's lock may have been held by a thread
 * that fork did not copy).
 */
void (*dd_os_ours_hook)(uintptr_t lo, size_t len, bool add);

static void note(const void *p, size_t len, bool add)
{
	void (*hook)(uintptr_t, size_t, bool) = dd_os_ours_hook;
	int e = errno;

	if (hook && p != MAP_FAILED && len)
		hook((uintptr_t)p, len, add);
	errno = e;
}

void *dd_os_raw_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

int dd_os_raw_munmap(void *addr, size_t len)
{
	return (int)syscall(SYS_munmap, addr, len);
}

void *dd_os_raw_mremap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr)
{
	return (void *)syscall(SYS_mremap, old, old_len, new_len, flags, new_addr);
}

/*
 * DOC: Where our mappings go
 *
 * The kernel gives mmap(NULL) the highest free gap that fits: often a hole
 * the program has just made and means to fill again - munmap() and then
 * mmap() at the same address (MAP_FIXED, MAP_FIXED_NOREPLACE, or a hint it
 * expects to be given), an mremap() away and back. A mapping of ours placed
 * there meanwhile (the run being placed, merge.c, is a new mapping for every
 * run merged) would be replaced by the program's MAP_FIXED, under our feet,
 * or make its MAP_FIXED_NOREPLACE fail and its hint be ignored: calls that
 * never fail without us (tests/preload/pl_hole.c; pl_calls with threads).
 * So the mappings we make where the kernel would choose go to an area of our
 * own instead: far below where the kernel places mappings (half way down to
 * zero, at a random offset), taken next-fit and always with
 * MAP_FIXED_NOREPLACE, so that nothing there is ever replaced. A program
 * gets our area only by asking for it by address; it then keeps it, and we
 * go on past it. Only where the area is full, or smaller than the request
 * (the store's view, 8 TiB of address space), does the kernel choose.
 *
 * The program's own memory never goes there: a program's mmap(NULL) that an
 * interposer makes for it, and an mremap we emulate for it (preload/remap.c),
 * get the kernel's choice, as they would without us.
 */
static uintptr_t far_lo, far_hi;      /* the area, set once (far_init) */
static _Atomic uintptr_t far_next;    /* next-fit cursor in it */
static _Atomic int far_state;         /* 0 unset, 1 being set, 2 set */

/* Sets the area once. No lock and no waiting: a thread that finds another
 * one setting it (or a fork()ed child that found a thread fork did not
 * copy half way) lets the kernel choose meanwhile. */
static void far_init(void)
{
	/* The top of the address space the kernel maps in: a stack (the main
	 * thread's is above the mmap area, a thread's inside it, near its
	 * top), or our own code if that is higher. Not a probe mmap(NULL): it
	 * would take the program's hole for an instant itself. */
	uintptr_t top = (uintptr_t)__builtin_frame_address(0), gib = (uintptr_t)1 << 30;
	if ((uintptr_t)&far_init > top)
		top = (uintptr_t)&far_init;
	uintptr_t span = top / 16 < ((uintptr_t)1 << 40) ? top / 16 : (uintptr_t)1 << 40;
	if (span < gib)
		return;   /* a small address space: the kernel chooses */
	const char *t = getenv("DEDUP_TEST_FAR_SPAN");   /* a small area: wraps soon */
	if (t && strtoull(t, NULL, 0) >= ((uint64_t)1 << 20))
		span = (uintptr_t)strtoull(t, NULL, 0);
	/* a random start in [top/2, top/2 + top/16): the bits ASLR gave the
	 * stack and the clock, mixed */
	uint64_t x = ((uint64_t)top >> 12) ^ dd_now_ns();
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	far_lo = (top / 2 + (uintptr_t)(x % (top / 16))) & ~(gib - 1);
	far_hi = far_lo + span;
	atomic_store(&far_next, far_lo);
}

static bool far_ready(void)
{
	int st = atomic_load_explicit(&far_state, memory_order_acquire), zero = 0;
	if (st == 2)
		return far_lo != 0;
	if (st != 0 || !atomic_compare_exchange_strong(&far_state, &zero, 1))
		return false;
	far_init();
	atomic_store_explicit(&far_state, 2, memory_order_release);
	return far_lo != 0;
}

/* An address of our area for len bytes, or 0: next-fit, wrapping. */
static uintptr_t far_take(size_t len)
{
	if (!far_ready())
		return 0;
	size_t step = ((len + DD_PAGE - 1) & ~(DD_PAGE - 1)) + DD_PAGE;   /* a free page between ours */
	if (step > (far_hi - far_lo) / 4)
		return 0;
	uintptr_t cur = atomic_load(&far_next), a, n;
	do {   /* a failed exchange loads the cursor into cur */
		a = cur + step > far_hi ? far_lo : cur;   /* wrap */
		n = a + step;
	} while (!atomic_compare_exchange_weak(&far_next, &cur, n));
	return a;
}

/* mmap(NULL, ...) of ours, in our area (above), without the hook. Where
 * something is in the way (a long-lived mapping of ours met again after the
 * cursor wrapped, or the program's), it tries further on, by ever larger
 * steps, then lets the kernel choose. */
void *dd_os_far_mmap(size_t len, int prot, int flags, int fd, off_t off)
{
	for (int tries = 0; tries < 12; tries++) {
		uintptr_t a = far_take(len);
		if (!a)
			break;
		void *p = dd_os_raw_mmap((void *)a, len, prot, flags | MAP_FIXED_NOREPLACE, fd, off);
		if (p != MAP_FAILED || errno != EEXIST)
			return p;
		far_take(((size_t)64 << 10) << tries);   /* skip: 64 KiB .. 128 MiB */
	}
	return dd_os_raw_mmap(NULL, len, prot, flags, fd, off);
}

/* mremap(old, old_len, new_len, MREMAP_MAYMOVE) of ours: in place if it
 * can grow there, else moved to our area (onto a reservation made there
 * first: MREMAP_FIXED replaces what it lands on). Without the hook. */
void *dd_os_far_mremap(void *old, size_t old_len, size_t new_len)
{
	void *p = dd_os_raw_mremap(old, old_len, new_len, 0, NULL);
	if (p != MAP_FAILED || errno != ENOMEM)
		return p;
	void *r = dd_os_far_mmap(new_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (r == MAP_FAILED)
		return MAP_FAILED;
	p = dd_os_raw_mremap(old, old_len, new_len, MREMAP_MAYMOVE | MREMAP_FIXED, r);
	if (p == MAP_FAILED) {
		int e = errno;
		dd_os_raw_munmap(r, new_len);
		errno = e;
	}
	return p;
}

void *dd_os_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off, bool ours)
{
	void *p = !addr && ours && !(flags & (MAP_FIXED | MAP_FIXED_NOREPLACE))
			  ? dd_os_far_mmap(len, prot, flags, fd, off)
			  : dd_os_raw_mmap(addr, len, prot, flags, fd, off);
	/* only anonymous memory can be taken for the program's heap */
	if (ours && (flags & MAP_ANONYMOUS) && (flags & MAP_TYPE) == MAP_PRIVATE)
		note(p, len, true);
	return p;
}

int dd_os_munmap(void *addr, size_t len)
{
	int r = dd_os_raw_munmap(addr, len);
	if (r == 0)
		note(addr, len, false);
	return r;
}

void *dd_os_mremap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr, bool ours)
{
	void *p = ours && flags == MREMAP_MAYMOVE ? dd_os_far_mremap(old, old_len, new_len)
						  : dd_os_raw_mremap(old, old_len, new_len, flags, new_addr);
	if (p != MAP_FAILED) {
		note(old, old_len, false);
		if (ours)
			note(p, new_len, true);
	}
	return p;
}

int dd_os_mprotect(void *addr, size_t len, int prot)
{
	return (int)syscall(SYS_mprotect, addr, len, prot);
}

int dd_os_madvise(void *addr, size_t len, int advice)
{
	return (int)syscall(SYS_madvise, addr, len, advice);
}

ssize_t dd_read_full(int fd, void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t r = read(fd, (char *)buf + done, len - done);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return done ? (ssize_t)done : -errno;
		}
		if (r == 0)
			break;
		done += (size_t)r;
	}
	return (ssize_t)done;
}

ssize_t dd_write_full(int fd, const void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t r = write(fd, (const char *)buf + done, len - done);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		done += (size_t)r;
	}
	return (ssize_t)done;
}

void dd_futex_wait(_Atomic uint32_t *w, uint32_t val, uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / 1000000000ULL), (long)(ns % 1000000000ULL) };
	syscall(SYS_futex, w, FUTEX_WAIT_PRIVATE, val, ns ? &ts : NULL, NULL, 0);
}

void dd_futex_wake(_Atomic uint32_t *w)
{
	syscall(SYS_futex, w, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
}

uint64_t dd_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

uint64_t dd_thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static bool env_on(const char *name)
{
	const char *s = getenv(name);
	return s && *s && strcmp(s, "0") != 0;
}

/* ---- userfaultfd ------------------------------------------------------ */

#define DD_UFFD_FEATURES                                                   \
	(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_EVENT_REMOVE |       \
	 UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_MOVE | UFFD_FEATURE_MINOR_SHMEM)

/*
 * No userfaultfd at all: is a seccomp filter the reason? Under a filter
 * (PR_GET_SECCOMP says 2) that refuses even a user-mode-only userfaultfd,
 * which the kernel grants anybody (vm.unprivileged_userfaultfd only limits
 * kernel-mode faults), it is the filter - Docker's default profile, say -
 * and "run as root" would be the wrong advice.
 */
static bool seccomp_forbids_uffd(void)
{
	if (prctl(PR_GET_SECCOMP, 0, 0, 0, 0) != 2)
		return false;
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd >= 0) {
		close(fd);
		return false;
	}
	return errno == EPERM || errno == ENOSYS || errno == EACCES;
}

/*
 * A uffd that may handle kernel-mode faults, with DD_UFFD_FEATURES and the
 * extra features asked for. /dev/userfaultfd gives one to
 * whoever may open the node; the syscall gives one only with CAP_SYS_PTRACE
 * (otherwise the kernel insists on UFFD_USER_MODE_ONLY, and a read() into a
 * protected buffer would fail with EFAULT instead of waiting: we refuse).
 */
int dd_uffd_open(int *fd_out, uint64_t extra, const char **why)
{
	int fd = -1, dev;
	struct uffdio_api api = { .api = UFFD_API, .features = DD_UFFD_FEATURES | extra };

	if (env_on("DEDUP_FORCE_USER_ONLY")) {
		*why = "forced by DEDUP_FORCE_USER_ONLY: only a user-mode-only userfaultfd";
		return -EPERM;
	}
	if (dd_opt.test_unsafe_user_only) {
		/* Test hook only: what a naive engine would do with a user-mode-
		 * only uffd. tests/core.cmake shows test_kernel_writer failing. */
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
		if (fd < 0) {
			*why = "DEDUP_TEST_UNSAFE_USER_ONLY: no userfaultfd";
			return -EPERM;
		}
		goto api;
	}
	dev = dd_fd_open_temp("/dev/userfaultfd", O_RDWR);
	if (dev >= 0) {
		fd = dd_fd_intact(dev) ? ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK) : -1;
		dd_fd_close_temp(dev);
	}
	if (fd < 0)
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd < 0) {
		int e = errno;
		if (seccomp_forbids_uffd()) {
			*why = "a seccomp filter forbids userfaultfd (Docker's default profile does; "
			       "allow the userfaultfd system call, or ioctl USERFAULTFD_IOC_NEW on "
			       "/dev/userfaultfd, to merge)";
			return -EPERM;
		}
		*why = e == ENOSYS ? "the kernel has no userfaultfd" :
		       "no userfaultfd that may handle kernel faults (run as root, grant "
		       "CAP_SYS_PTRACE, or give read-write access to /dev/userfaultfd)";
		return -(e == ENOSYS ? ENOSYS : EPERM);
	}
api:
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		int e = errno;
		close(fd);
		*why = "UFFDIO_API refused write-protect, remove/remap events or UFFDIO_MOVE "
		       "(Linux 6.8 or later is needed)";
		return -(e ? e : EINVAL);
	}
	if ((api.features & (DD_UFFD_FEATURES | extra)) != (DD_UFFD_FEATURES | extra)) {
		close(fd);
		*why = "the kernel lacks UFFD_FEATURE_MOVE, MINOR_SHMEM or write-protect support "
		       "(Linux 6.8 or later is needed)";
		return -ENOSYS;
	}
	dd_feat.uffd_features = api.features;
	dd_feat.kernel_faults = !dd_opt.test_unsafe_user_only;
	if (dd_fd_adopt(fd_out, fd) < 0) {   /* above the floor, tagged (fds.c) */
		*why = "no file descriptor left for the userfaultfd";
		return -EMFILE;
	}
	return 0;
}

int dd_uffd_register(int uffd, uintptr_t start, size_t len, uint64_t mode)
{
	struct uffdio_register r = { .range = { .start = start, .len = len }, .mode = mode };
	return ioctl(uffd, UFFDIO_REGISTER, &r) < 0 ? -errno : 0;
}

int dd_uffd_unregister(int uffd, uintptr_t start, size_t len)
{
	struct uffdio_range r = { .start = start, .len = len };
	return ioctl(uffd, UFFDIO_UNREGISTER, &r) < 0 ? -errno : 0;
}

int dd_uffd_wp(int uffd, uintptr_t start, size_t len, bool protect)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = start, .len = len },
		.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};
	return ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) < 0 ? -errno : 0;
}

int dd_uffd_wake(int uffd, uintptr_t start, size_t len)
{
	struct uffdio_range r = { .start = start, .len = len };
	return ioctl(uffd, UFFDIO_WAKE, &r) < 0 ? -errno : 0;
}

ssize_t dd_uffd_move(int uffd, uintptr_t dst, uintptr_t src, size_t len, int *err)
{
	return dd_uffd_move_mode(uffd, dst, src, len, 0, err);
}

ssize_t dd_uffd_move_mode(int uffd, uintptr_t dst, uintptr_t src, size_t len, uint64_t mode,
			  int *err)
{
	struct uffdio_move m = { .dst = dst, .src = src, .len = len,
				 .mode = UFFDIO_MOVE_MODE_DONTWAKE | mode };

	*err = 0;
	if (ioctl(uffd, UFFDIO_MOVE, &m) == 0)
		return (ssize_t)len;
	*err = errno;
	return m.move > 0 ? (ssize_t)m.move : 0;
}

ssize_t dd_uffd_copy(int uffd, uintptr_t dst, const void *src, size_t len, bool wake, int *err)
{
	struct uffdio_copy c = { .dst = dst, .src = (uintptr_t)src, .len = len,
				 .mode = wake ? 0 : UFFDIO_COPY_MODE_DONTWAKE };

	*err = 0;
	if (ioctl(uffd, UFFDIO_COPY, &c) == 0)
		return (ssize_t)len;
	*err = errno;
	return c.copy > 0 ? (ssize_t)c.copy : 0;
}

ssize_t dd_uffd_continue(int uffd, uintptr_t start, size_t len, bool wake, int *err)
{
	struct uffdio_continue c = { .range = { .start = start, .len = len },
				     .mode = wake ? 0 : UFFDIO_CONTINUE_MODE_DONTWAKE };

	*err = 0;
	if (ioctl(uffd, UFFDIO_CONTINUE, &c) == 0)
		return (ssize_t)len;
	*err = errno;
	return c.mapped > 0 ? (ssize_t)c.mapped : 0;
}

/*
 * A fault on a merged page at a, resolved and woken: the page the file has
 * (UFFDIO_CONTINUE), or - zeros: where it was discarded - a real zeroed
 * anonymous page (UFFDIO_COPY), as a write fault on discarded anonymous
 * memory would give. Not UFFDIO_ZEROPAGE: in a private file mapping it
 * installs the special zero-pfn PTE, which did not stay mapped on this
 * project's machines (a second minor fault followed; tests/test_hammer.c
 * caught it). The engine's reader and a child's guard both answer faults
 * this way. 0 or -errno (EAGAIN: an event is pending; EEXIST: mapped
 * meanwhile - the caller wakes).
 */
int dd_uffd_resolve(int uffd, uintptr_t a, bool zeros)
{
	int err;

	if (zeros)
		return dd_uffd_copy(uffd, a, dd_zero_page, DD_PAGE, true, &err) ? 0 : -err;
	return dd_uffd_continue(uffd, a, DD_PAGE, true, &err) ? 0 : -err;
}

int dd_uffd_zeropage(int uffd, uintptr_t start, size_t len)
{
	struct uffdio_zeropage z = { .range = { .start = start, .len = len } };
	return ioctl(uffd, UFFDIO_ZEROPAGE, &z) < 0 ? -errno : 0;
}

/* The one page of zeros: hashing it, comparing with it, and the source of
 * UFFDIO_COPY where a page must read zeros (page-aligned, as COPY wants). */
const char dd_zero_page[DD_PAGE] __attribute__((aligned(4096)));

/* ---- present pages ---------------------------------------------------- */

/*
 * Both walks stop after max_pages present pages (a run may be cut there)
 * and say in *walk_end where they stopped. PAGEMAP_SCAN skips absent
 * page-table levels inside the kernel, so its cost follows the pages
 * present, not the range; /proc/self/pagemap has an entry for every page,
 * so its walk also stops after 64 entries per page it may return.
 */
static int walk_scan(uintptr_t start, uintptr_t end, size_t max_pages, bool file,
		     dd_present_fn fn, void *ctx, uintptr_t *walk_end)
{
	struct page_region vec[256];
	struct pm_scan_arg arg;

	while (start < end && max_pages) {
		memset(&arg, 0, sizeof(arg));
		arg.size = sizeof(arg);
		arg.start = start;
		arg.end = end;
		arg.vec = (uintptr_t)vec;
		arg.vec_len = DD_ARRAY_SIZE(vec);
		arg.max_pages = max_pages;
		arg.category_anyof_mask = PAGE_IS_PRESENT;
		/* PAGE_IS_FILE costs a look at each present page's struct page
		 * (vm_normal_page, PageAnon: fs/proc/task_mmu.c, asked only if
		 * it is in a mask), where the rest is read off the PTE: most of
		 * the walk of a large heap (source, pagemap_page_category) */
		arg.return_mask = PAGE_IS_PRESENT | PAGE_IS_PFNZERO | (file ? PAGE_IS_FILE : 0);
		long n = ioctl(pagemap_fd, PAGEMAP_SCAN, &arg);
		if (n < 0)
			return -errno;
		for (long i = 0; i < n; i++) {
			unsigned f = 0;
			size_t pages = (vec[i].end - vec[i].start) / DD_PAGE;
			if (vec[i].categories & PAGE_IS_FILE)
				f |= DD_PG_FILE;
			if (vec[i].categories & PAGE_IS_PFNZERO)
				f |= DD_PG_ZERO;
			max_pages -= pages < max_pages ? pages : max_pages;
			fn(ctx, vec[i].start, vec[i].end, f);
		}
		if (arg.walk_end <= start)
			break;
		start = arg.walk_end;
	}
	*walk_end = start < end ? start : end;
	return 0;
}

#define PM_PRESENT (1ULL << 63)
#define PM_SWAP (1ULL << 62)
#define PM_FILE (1ULL << 61)
#define PM_UFFD_WP (1ULL << 57)
#define PM_EXCLUSIVE (1ULL << 56)
#define PM_PFN_MASK ((1ULL << 55) - 1)

/* The pfn of the zero page, learned once (0: unknown, e.g. not root: then
 * /proc/self/pagemap hides pfns). */
static uint64_t zero_pfn(void)
{
	static uint64_t pfn;
	static bool tried;

	if (!pfn && !tried) {
		/* Read an untouched anonymous page: the kernel maps the shared
		 * zero page - or, on some machines (this project's), a fresh
		 * exclusive page, and then there is no zero page to find. */
		tried = true;
		volatile char *p = dd_os_mmap(NULL, DD_PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0, true);
		uint64_t e;
		if (p == MAP_FAILED)
			return 0;
		(void)p[0];
		if (pread(pagemap_fd, &e, 8, (off_t)((uintptr_t)p / DD_PAGE * 8)) == 8 &&
		    (e & PM_PRESENT) && !(e & PM_EXCLUSIVE))
			pfn = e & PM_PFN_MASK;
		dd_os_munmap((void *)p, DD_PAGE);
	}
	return pfn;
}

static int walk_pagemap(uintptr_t start, uintptr_t end, size_t max_pages, dd_present_fn fn,
			void *ctx, uintptr_t *walk_end)
{
	uint64_t ent[512];
	uint64_t zpfn = zero_pfn();
	size_t entries = max_pages > SIZE_MAX / 64 ? SIZE_MAX : max_pages * 64;

	while (start < end && max_pages && entries) {
		size_t n = (end - start) / DD_PAGE;
		if (n > DD_ARRAY_SIZE(ent))
			n = DD_ARRAY_SIZE(ent);
		if (n > entries)
			n = entries;
		ssize_t r = pread(pagemap_fd, ent, n * 8, (off_t)(start / DD_PAGE * 8));
		if (r < 0)
			return -errno;
		n = (size_t)r / 8;
		if (!n)
			break;
		entries -= n;
		for (size_t i = 0; i < n;) {
			if (!(ent[i] & PM_PRESENT)) {
				i++;
				continue;
			}
			unsigned f = (ent[i] & PM_FILE) ? DD_PG_FILE : 0;
			if (zpfn && (ent[i] & PM_PFN_MASK) == zpfn)
				f = DD_PG_ZERO;
			size_t j = i + 1;
			while (j < n && j - i < max_pages && (ent[j] & PM_PRESENT) &&
			       ((ent[j] & PM_FILE) ? DD_PG_FILE : 0) == (f & DD_PG_FILE) &&
			       !(zpfn && (ent[j] & PM_PFN_MASK) == zpfn) == !(f & DD_PG_ZERO))
				j++;
			fn(ctx, start + i * DD_PAGE, start + j * DD_PAGE, f);
			max_pages -= j - i;
			i = j;
			if (!max_pages) {
				n = i;   /* stop right after the last page returned */
				break;
			}
		}
		start += n * DD_PAGE;
	}
	*walk_end = start < end ? start : end;
	return 0;
}

int dd_present_walk(uintptr_t start, uintptr_t end, size_t max_pages, bool file, dd_present_fn fn,
		    void *ctx, uintptr_t *walk_end)
{
	*walk_end = start;
	if (pagemap_fd < 0)
		return -EBADF;
	return dd_feat.pagemap_scan ? walk_scan(start, end, max_pages, file, fn, ctx, walk_end)
				    : walk_pagemap(start, end, max_pages, fn, ctx, walk_end);
}

/*
 * The first run of pages in [start, end) that are not empty (present, or
 * swapped out, or holding a marker: whatever pagemap does not show as
 * nothing), as [*lo, *hi); *lo = *hi = end if there is none. With
 * PAGEMAP_SCAN the empty stretch before it costs what its page tables hold,
 * not one entry per page. Returns 0 or -errno.
 */
int dd_first_mapped(uintptr_t start, uintptr_t end, uintptr_t *lo, uintptr_t *hi)
{
	*lo = *hi = end;
	if (pagemap_fd < 0)
		return -EBADF;
	if (dd_feat.pagemap_scan) {
		struct page_region v;
		struct pm_scan_arg arg;
		while (start < end) {
			memset(&arg, 0, sizeof(arg));
			arg.size = sizeof(arg);
			arg.start = start;
			arg.end = end;
			arg.vec = (uintptr_t)&v;
			arg.vec_len = 1;
			arg.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED;
			arg.return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED;
			long n = ioctl(pagemap_fd, PAGEMAP_SCAN, &arg);
			if (n < 0)
				return -errno;
			if (n > 0) {
				*lo = v.start;
				*hi = v.end;
				return 0;
			}
			if (arg.walk_end <= start)
				break;
			start = arg.walk_end;
		}
		return 0;
	}
	uint64_t ent[512];
	while (start < end) {
		size_t n = (end - start) / DD_PAGE;
		if (n > DD_ARRAY_SIZE(ent))
			n = DD_ARRAY_SIZE(ent);
		ssize_t r = pread(pagemap_fd, ent, n * 8, (off_t)(start / DD_PAGE * 8));
		if (r < 0)
			return -errno;
		n = (size_t)r / 8;
		if (!n)
			return -EIO;
		for (size_t i = 0; i < n; i++) {
			if (!(ent[i] & (PM_PRESENT | PM_SWAP)))
				continue;
			size_t j = i + 1;
			while (j < n && (ent[j] & (PM_PRESENT | PM_SWAP)))
				j++;
			*lo = start + i * DD_PAGE;
			*hi = start + j * DD_PAGE;
			return 0;
		}
		start += n * DD_PAGE;
	}
	return 0;
}

/* Copy the application's page at a into buf through process_vm_readv(),
 * which fails (false) where a direct read would fault. */
bool dd_read_page(uintptr_t a, void *buf)
{
	struct iovec l = { buf, DD_PAGE }, r = { (void *)a, DD_PAGE };
	return process_vm_readv(getpid(), &l, 1, &r, 1, 0) == (ssize_t)DD_PAGE;
}

/* Is the page at a all zeros? Read through process_vm_readv(): the
 * application may unmap it under us. False if it cannot be read. */
bool dd_page_is_zero(uintptr_t a)
{
	uint64_t buf[DD_PAGE / 8];
	struct iovec l = { buf, DD_PAGE }, r = { (void *)a, DD_PAGE };

	if (process_vm_readv(getpid(), &l, 1, &r, 1, 0) != (ssize_t)DD_PAGE)
		return false;
	for (size_t i = 0; i < DD_ARRAY_SIZE(buf); i++)
		if (buf[i])
			return false;
	return true;
}

/*
 * The state of the PTEs of n pages from start (DD_PTE_* bits per page), from
 * /proc/self/pagemap: present, swapped (or a migration entry: not present
 * but not gone), uffd-wp bit set, the zero page (known only when pfns are
 * visible, i.e. as root). Returns 0 or -errno.
 */
static int pte_states(int fd, uintptr_t start, size_t n, uint8_t *out)
{
	uint64_t ent[512];
	uint64_t zpfn;

	if (fd < 0)
		return -EBADF;
	zpfn = zero_pfn();
	while (n) {
		size_t k = n < DD_ARRAY_SIZE(ent) ? n : DD_ARRAY_SIZE(ent);
		ssize_t r = pread(fd, ent, k * 8, (off_t)(start / DD_PAGE * 8));
		if (r < 0)
			return -errno;
		if ((size_t)r != k * 8)
			return -EIO;
		for (size_t i = 0; i < k; i++) {
			uint8_t f = 0;
			if (ent[i] & PM_PRESENT)
				f |= DD_PTE_PRESENT;
			if (ent[i] & PM_SWAP)
				f |= DD_PTE_SWAP;
			if (ent[i] & PM_UFFD_WP)
				f |= DD_PTE_WP;
			if ((ent[i] & PM_PRESENT) && (ent[i] & PM_FILE))
				f |= DD_PTE_FILE;
			if ((ent[i] & PM_PRESENT) && zpfn && (ent[i] & PM_PFN_MASK) == zpfn)
				f |= DD_PTE_ZERO;
			out[i] = f;
		}
		out += k;
		n -= k;
		start += k * DD_PAGE;
	}
	return 0;
}

int dd_pte_states(uintptr_t start, size_t n, uint8_t *out)
{
	return pte_states(pagemap_fd, start, n, out);
}

/* The same through a descriptor opened for the call: in a fork()ed child,
 * where the engine's pagemap_fd, opened by the parent, reads the parent's
 * page table. */
int dd_pte_states_here(uintptr_t start, size_t n, uint8_t *out)
{
	int fd = dd_fd_open_temp("/proc/self/pagemap", O_RDONLY);
	int r = pte_states(fd, start, n, out);

	if (fd >= 0)
		dd_fd_close_temp(fd);
	return fd < 0 ? fd : r;
}

static long read_long_file(const char *path, long def)
{
	char buf[64];
	int fd = dd_fd_open_temp(path, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		return def;
	n = dd_fd_read_temp(fd, buf, sizeof(buf) - 1);
	dd_fd_close_temp(fd);
	if (n <= 0)
		return def;
	buf[n] = 0;
	return strtol(buf, NULL, 10);
}

long dd_max_map_count_now(void)
{
	return read_long_file("/proc/sys/vm/max_map_count", 65530);
}

size_t dd_maps_table_cap(void)
{
	long l = dd_max_map_count_now();
	size_t cap = (l > 0 ? (size_t)l : 65530) + 4096;
	/* SteamOS says 2147483642: start at 4M entries there, grow if used */
	return cap < ((size_t)1 << 22) ? cap : (size_t)1 << 22;
}

struct slab_ctx { long vma, node; };

static int slab_line(void *c, char *line)
{
	struct slab_ctx *sc = c;
	long *want = NULL;
	char *p;

	/* "name <active_objs> <num_objs> <objsize> ..." */
	if (!strncmp(line, "vm_area_struct ", 15))
		want = &sc->vma;
	else if (!strncmp(line, "maple_node ", 11))
		want = &sc->node;
	if (!want)
		return 0;
	p = strchr(line, ' ');
	strtol(p, &p, 10);
	strtol(p, &p, 10);
	*want = strtol(p, &p, 10);
	return 0;
}

/*
 * What one mapping costs the kernel, in bytes: a vm_area_struct and its
 * share of the maple tree, counted as a quarter of a node (a leaf holds up
 * to 16 entries, but splits leave nodes part full and add inner nodes:
 * tests/test_vma_cost.c measured 233-309 bytes a mapping on this project's
 * machines, where this gives 256). From /proc/slabinfo's object sizes where
 * it can be read (root), else those of Linux 6.18 on x86-64 (192 and 256).
 * Merging isolated pages adds up to two mappings per page: at 500k
 * mappings, ~128 MB of kernel memory that "saved" must not hide (stats.c,
 * metadata_bytes).
 */
static long vma_cost(void)
{
	struct slab_ctx sc = { 0, 0 };

	if (dd_proc_lines("/proc/slabinfo", slab_line, &sc) < 0 || sc.vma <= 0 || sc.node <= 0)
		return 192 + 256 / 4;
	return sc.vma + sc.node / 4;
}

void dd_os_probe(void)
{
	struct pm_scan_arg arg;

	if (pagemap_fd < 0)
		dd_fd_adopt_path(&pagemap_fd, "/proc/self/pagemap", O_RDONLY);
	memset(&arg, 0, sizeof(arg));
	arg.size = sizeof(arg);
	arg.start = (uintptr_t)&arg & ~(uintptr_t)(DD_PAGE - 1);
	arg.end = arg.start + DD_PAGE;
	arg.category_anyof_mask = PAGE_IS_PRESENT;
	arg.return_mask = PAGE_IS_PRESENT;
	dd_feat.pagemap_scan = pagemap_fd >= 0 && !env_on("DEDUP_FORCE_PAGEMAP") &&
			       ioctl(pagemap_fd, PAGEMAP_SCAN, &arg) >= 0;
	dd_feat.max_map_count = dd_max_map_count_now();
	dd_feat.vma_cost = vma_cost();

	char a = 1, b = 0;
	struct iovec l = { &b, 1 }, r = { &a, 1 };
	dd_feat.vm_readv = !env_on("DEDUP_FORCE_DIRECT_READ") &&
			   process_vm_readv(getpid(), &l, 1, &r, 1, 0) == 1 && b == 1;
}

/* The program closed our pagemap descriptor (engine.c, lost()): it is only
 * a file of ours to open again. */
void dd_os_reopen(void)
{
	if (pagemap_fd < 0 || dd_fd_intact(pagemap_fd))
		return;
	dd_fd_forget(&pagemap_fd);
	dd_fd_adopt_path(&pagemap_fd, "/proc/self/pagemap", O_RDONLY);
}

void dd_os_close(void)
{
	dd_fd_close(&pagemap_fd);
}

/* ---- /proc/self/maps ---------------------------------------------------- */

/*
 * The one reader of /proc files: fn gets each line of path (NUL-terminated,
 * without its newline), read through a temporary descriptor of ours
 * (fds.c) into a stack buffer - no stdio, no malloc (see internal.h): this
 * runs in our threads and inside interposed calls. A line longer than the
 * buffer (only a path can be) is given cut, and its tail is skipped.
 * Stops when fn returns non-zero; returns that value if negative, else 0,
 * or -errno if the file cannot be opened.
 */
int dd_proc_lines(const char *path, dd_line_fn fn, void *ctx)
{
	char buf[8192];
	size_t have = 0;
	bool skip = false;   /* the tail of a cut line */
	int fd = dd_fd_open_temp(path, O_RDONLY);
	int ret = 0;

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
			if (skip)
				skip = false;
			else if ((ret = fn(ctx, line)))
				goto out;
			line = nl + 1;
		}
		have -= (size_t)(line - buf);
		memmove(buf, line, have);
		if (have == sizeof(buf) - 1) {   /* no newline in a full buffer */
			buf[have] = 0;
			if (!skip && (ret = fn(ctx, buf)))
				goto out;
			have = 0;
			skip = true;
		}
	}
out:
	dd_fd_close_temp(fd);
	return ret < 0 ? ret : 0;
}

/* A header line of maps or smaps, "lo-hi perms offset dev inode name":
 * false for the other lines of smaps. */
bool dd_maps_header(const char *line, struct dd_maps_line *m)
{
	const char *p = line;
	char *e;

	if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
		return false;
	m->lo = strtoull(p, &e, 16);
	if (*e != '-')
		return false;
	m->hi = strtoull(e + 1, &e, 16);
	if (*e != ' ' || strnlen(e + 1, 4) < 4)
		return false;
	memcpy(m->perms, e + 1, 4);
	m->perms[4] = 0;
	m->rest = e + 5;
	strtoull(m->rest, &e, 16);   /* offset */
	while (*e == ' ')
		e++;
	while (*e && *e != ' ')   /* dev */
		e++;
	m->inode = strtoull(e, &e, 10);
	while (*e == ' ')
		e++;
	m->name = e;
	return true;
}

/* The VmFlags of an smaps "VmFlags:" line, p after the colon: two letters
 * each, the ones names[] knows. */
unsigned dd_vmflags_parse(const char *p, const struct dd_vmflag_name *names, size_t n)
{
	unsigned f = 0;

	while (*p) {
		while (*p == ' ')
			p++;
		if (!p[0] || !p[1])
			break;
		for (size_t i = 0; i < n; i++)
			if (p[0] == names[i].n[0] && p[1] == names[i].n[1])
				f |= names[i].f;
		p += 2;
	}
	return f;
}

struct each_ctx { dd_maps_fn fn; void *ctx; };

static int each_line(void *c, char *line)
{
	struct each_ctx *ec = c;
	struct dd_maps_line m;

	return dd_maps_header(line, &m) ? ec->fn(ec->ctx, m.lo, m.hi, m.perms, m.rest) : 0;
}

/* Calls fn on each line of /proc/self/maps. Stops when fn returns non-zero. */
int dd_maps_each(dd_maps_fn fn, void *ctx)
{
	struct each_ctx ec = { fn, ctx };
	return dd_proc_lines("/proc/self/maps", each_line, &ec);
}

/* PROT_* of a maps line's "rwxp" */
int dd_perms_prot(const char *perms)
{
	return (perms[0] == 'r' ? PROT_READ : 0) | (perms[1] == 'w' ? PROT_WRITE : 0) |
	       (perms[2] == 'x' ? PROT_EXEC : 0);
}

struct prot_ctx { uintptr_t a; int prot; };

static int prot_line(void *c, uintptr_t lo, uintptr_t hi, const char *perms, const char *rest)
{
	struct prot_ctx *pc = c;
	(void)rest;
	if (pc->a < lo || pc->a >= hi)
		return 0;
	pc->prot = dd_perms_prot(perms);
	return 1;
}

/* The protection (PROT_*) of the mapping holding a, or -ENOENT. */
int dd_vma_prot(uintptr_t a)
{
	struct prot_ctx pc = { a, -ENOENT };
	int r = dd_maps_each(prot_line, &pc);
	return r < 0 ? r : pc.prot;
}

/* ---- mappings by address: PROCMAP_QUERY, or the text of maps ------------- */

/*
 * PROCMAP_QUERY (Linux 6.11) answers "which VMA covers (or follows) this
 * address" with one ioctl on an open /proc/self/maps, at a cost that does not
 * grow with the number of mappings. Without it (older kernels, or forced by
 * DEDUP_FORCE_MAPS_TEXT=1 for tests) dd_vmas_in() reads the text of maps,
 * which costs one line per mapping below the range: callers then ask once
 * per range, never once per page or per run.
 */
static _Atomic int procmap_query_state;   /* 0 unknown, 1 works, -1 missing */

static bool procmap_query_ok(void)
{
	int s = atomic_load_explicit(&procmap_query_state, memory_order_relaxed);
	if (!s) {
		s = env_on("DEDUP_FORCE_MAPS_TEXT") ? -1 : 1;   /* 1: try, and see */
		atomic_store_explicit(&procmap_query_state, s, memory_order_relaxed);
	}
	return s > 0;
}

int dd_procmap_open(void)
{
	if (!procmap_query_ok())
		return -ENOTTY;
	return dd_fd_open_temp("/proc/self/maps", O_RDONLY);
}

static void vma_kind(struct dd_vma *v, const char *name)
{
	v->ours = v->file && strncmp(name, "/memfd:libdedup", 15) == 0;
	v->named = strncmp(name, "[anon:", 6) == 0;
	v->anon = !v->file && !v->shared &&
		  (!*name || strncmp(name, "[heap]", 6) == 0 ||
		   (strncmp(name, "[anon:", 6) == 0 && strncmp(name, "[anon:libdedup", 14) != 0));
}

int dd_vma_query(int fd, uintptr_t a, bool or_next, struct dd_vma *v)
{
	char name[4096];
	struct procmap_query q = {
		.size = sizeof(q),
		.query_flags = or_next ? PROCMAP_QUERY_COVERING_OR_NEXT_VMA : 0,
		.query_addr = a,
		.vma_name_size = sizeof(name),
		.vma_name_addr = (uintptr_t)name,
	};

	if (fd < 0 || !dd_fd_intact(fd))   /* a temporary descriptor of ours (fds.c) */
		return -EBADF;
	if (ioctl(fd, PROCMAP_QUERY, &q) < 0) {
		int e = errno;
		if (e == ENOTTY || e == EINVAL || e == EOPNOTSUPP) {
			atomic_store_explicit(&procmap_query_state, -1, memory_order_relaxed);
			return -ENOTTY;
		}
		return -e;
	}
	if (!q.vma_name_size)
		name[0] = 0;
	v->lo = q.vma_start;
	v->hi = q.vma_end;
	v->prot = ((q.vma_flags & PROCMAP_QUERY_VMA_READABLE) ? PROT_READ : 0) |
		  ((q.vma_flags & PROCMAP_QUERY_VMA_WRITABLE) ? PROT_WRITE : 0) |
		  ((q.vma_flags & PROCMAP_QUERY_VMA_EXECUTABLE) ? PROT_EXEC : 0);
	v->shared = q.vma_flags & PROCMAP_QUERY_VMA_SHARED;
	v->file = q.inode != 0;
	v->ino = q.inode;
	v->offset = q.vma_offset;
	v->vmf = 0;
	v->vmf_known = false;
	vma_kind(v, name);
	return 0;
}

static uint64_t hex_at(const char **pp)
{
	const char *p = *pp;
	uint64_t v = 0;

	while (*p == ' ')
		p++;
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

/* A maps line's rest (" offset dev:dev inode [name]") into v. */
static void vma_from_line(struct dd_vma *v, uintptr_t lo, uintptr_t hi, const char *perms,
			  const char *rest)
{
	const char *p = rest;
	uint64_t inode = 0;

	v->lo = lo;
	v->hi = hi;
	v->vmf = 0;
	v->vmf_known = false;
	v->prot = dd_perms_prot(perms);
	v->shared = perms[3] == 's';
	v->offset = hex_at(&p);
	hex_at(&p);                 /* dev major */
	if (*p == ':')
		p++;
	hex_at(&p);                 /* dev minor */
	while (*p == ' ')
		p++;
	while (*p >= '0' && *p <= '9')
		inode = inode * 10 + (uint64_t)(*p++ - '0');
	while (*p == ' ')
		p++;
	v->file = inode != 0;
	v->ino = inode;
	vma_kind(v, p);
}

struct vmas_ctx {
	uintptr_t lo, hi;
	dd_vma_fn fn;
	void *ctx;
};

static int vmas_line(void *c, uintptr_t lo, uintptr_t hi, const char *perms, const char *rest)
{
	struct vmas_ctx *vc = c;
	struct dd_vma v;

	if (hi <= vc->lo)
		return 0;
	if (lo >= vc->hi)
		return 1;
	vma_from_line(&v, lo, hi, perms, rest);
	return vc->fn(vc->ctx, &v);
}

int dd_vmas_in(uintptr_t lo, uintptr_t hi, dd_vma_fn fn, void *ctx)
{
	int fd = dd_procmap_open(), r = 0;

	if (fd >= 0) {
		struct dd_vma v;
		uintptr_t a = lo;
		while (a < hi) {
			r = dd_vma_query(fd, a, true, &v);
			if (r == -ENOENT) {
				r = 0;
				break;
			}
			if (r < 0 || v.lo >= hi || (r = fn(ctx, &v)) != 0)
				break;
			a = v.hi;
		}
		dd_fd_close_temp(fd);
		if (r != -ENOTTY)
			return r < 0 ? r : 0;
		/* no PROCMAP_QUERY after all: the text */
	}
	struct vmas_ctx vc = { lo, hi, fn, ctx };
	r = dd_maps_each(vmas_line, &vc);
	return r < 0 ? r : 0;
}

/* dd_vmas_in() from the text of maps, even where PROCMAP_QUERY works: one
 * read, a line per mapping of the process below hi, where the ioctl walk
 * costs an ioctl and a descriptor check per mapping of the range. For a
 * range that holds a good part of the process's mappings. */
int dd_vmas_in_text(uintptr_t lo, uintptr_t hi, dd_vma_fn fn, void *ctx)
{
	struct vmas_ctx vc = { lo, hi, fn, ctx };
	int r = dd_maps_each(vmas_line, &vc);
	return r < 0 ? r : 0;
}

/* VmFlags names of /proc/self/smaps that dd_vma_vmflags reports */
static const struct dd_vmflag_name vmflag_names[] = {
	{ "nh", DD_VMF_NOHUGEPAGE }, { "hg", DD_VMF_HUGEPAGE }, { "dd", DD_VMF_DONTDUMP },
	{ "dc", DD_VMF_DONTFORK }, { "wf", DD_VMF_WIPEONFORK }, { "sr", DD_VMF_SEQ_READ },
	{ "rr", DD_VMF_RAND_READ }, { "mg", DD_VMF_MERGEABLE }, { "nr", DD_VMF_NORESERVE },
	{ "ac", DD_VMF_ACCOUNT }, { "lo", DD_VMF_LOCKED },
};

struct vmflags_ctx { uintptr_t a; bool in; unsigned *out; };

static int vmflags_line(void *c, char *line)
{
	struct vmflags_ctx *vc = c;
	struct dd_maps_line m;

	if (strncmp(line, "VmFlags:", 8) == 0) {
		if (!vc->in)
			return 0;
		*vc->out = dd_vmflags_parse(line + 8, vmflag_names, DD_ARRAY_SIZE(vmflag_names));
		return 1;
	}
	if (!dd_maps_header(line, &m))
		return 0;
	if (m.lo > vc->a)
		return -ENOENT;   /* past it: a is not mapped */
	vc->in = vc->a >= m.lo && vc->a < m.hi;
	return 0;
}

/*
 * The VmFlags (DD_VMF_*) of the mapping holding a, from /proc/self/smaps.
 * Expensive (the kernel walks the page tables of every mapping it prints,
 * up to a's), so only for the rare case that needs them: an unmerged run
 * whose replacement did not merge with its neighbour (merge.c).
 */
int dd_vma_vmflags(uintptr_t a, unsigned *out)
{
	struct vmflags_ctx vc = { a, false, out };
	int r = dd_proc_lines("/proc/self/smaps", vmflags_line, &vc);

	if (r < 0)
		return r;
	return vc.in ? 0 : -ENOENT;
}

/* The VmFlags every private anonymous read-write mapping may have, ours
 * included (uffd registration, soft-dirty, accounting): not told apart. */
static const char plain_vmflags[][3] = {
	"rd", "wr", "ex", "sh", "mr", "mw", "me", "ms", "ac", "sd", "um", "uw", "ui",
};

/* The DD_VMF_* of a "VmFlags:" line as dd_vmflags_parse() of vmflag_names,
 * and DD_VMF_OTHER for a flag that is neither one of them nor plain
 * (VM_GROWSDOWN, mseal, VM_LOCKONFAULT, a flag newer than this code...). */
static unsigned vmflags_all(const char *p)
{
	unsigned f = 0;

	for (; *p; p++) {
		if (*p == ' ' || !p[1])
			continue;
		bool known = false;
		for (size_t i = 0; i < DD_ARRAY_SIZE(vmflag_names) && !known; i++)
			if (p[0] == vmflag_names[i].n[0] && p[1] == vmflag_names[i].n[1]) {
				f |= vmflag_names[i].f;
				known = true;
			}
		for (size_t i = 0; i < DD_ARRAY_SIZE(plain_vmflags) && !known; i++)
			known = p[0] == plain_vmflags[i][0] && p[1] == plain_vmflags[i][1];
		if (!known || (p[2] && p[2] != ' '))
			f |= DD_VMF_OTHER;   /* (a name of three letters or more: other too) */
		while (p[1] && p[1] != ' ')
			p++;
	}
	return f;
}

struct smaps_ctx {
	uintptr_t lo, hi;
	dd_vma_fn fn;
	void *ctx;
	struct dd_vma v;
	bool in;   /* v is a header of the range, its VmFlags to come */
};

static int smaps_line(void *c, char *line)
{
	struct smaps_ctx *sc = c;
	struct dd_maps_line m;

	if (strncmp(line, "VmFlags:", 8) == 0) {
		if (!sc->in)
			return 0;
		sc->in = false;
		sc->v.vmf = vmflags_all(line + 8);
		sc->v.vmf_known = true;
		return sc->fn(sc->ctx, &sc->v);
	}
	if (!dd_maps_header(line, &m))
		return 0;
	if (sc->in)
		return -EPROTO;   /* a mapping without VmFlags: not the smaps we know */
	if (m.hi <= sc->lo)
		return 0;
	if (m.lo >= sc->hi)
		return 1;
	vma_from_line(&sc->v, m.lo, m.hi, m.perms, m.rest);
	sc->in = true;
	return 0;
}

/*
 * dd_vmas_in() from /proc/self/smaps, with each VMA's VmFlags: one read,
 * but the kernel walks the page tables of every mapping it prints (below
 * hi), and prints twenty lines for each. For the one caller that must know
 * the flags of many mappings at once (merge.c: the gaps of a span).
 */
int dd_vmas_in_smaps(uintptr_t lo, uintptr_t hi, dd_vma_fn fn, void *ctx)
{
	struct smaps_ctx sc = { .lo = lo, .hi = hi, .fn = fn, .ctx = ctx };
	int r = dd_proc_lines("/proc/self/smaps", smaps_line, &sc);

	if (r >= 0 && sc.in)
		r = -EPROTO;   /* cut short */
	return r < 0 ? r : 0;
}

/* The process's resident pages (the second field of /proc/self/statm). */
long dd_resident_pages(void)
{
	char buf[128];
	int fd = dd_fd_open_temp("/proc/self/statm", O_RDONLY);

	if (fd < 0)
		return fd;
	ssize_t n = dd_fd_read_temp(fd, buf, sizeof(buf) - 1);
	dd_fd_close_temp(fd);
	if (n <= 0)
		return -EIO;
	buf[n] = 0;
	char *e;
	strtol(buf, &e, 10);
	long rss = strtol(e, &e, 10);
	return rss >= 0 ? rss : -EIO;
}

struct count_ctx { long n, match; const char *needle; };

static int count_line(void *c, uintptr_t lo, uintptr_t hi, const char *perms, const char *rest)
{
	struct count_ctx *cc = c;
	cc->n++;
	if (cc->needle && strstr(rest, cc->needle))
		cc->match++;
	return 0;
}

/*
 * Mappings merging added, counted from the text of maps: each private
 * mapping of one of our memfds (a merged run: "/memfd:libdedup", or a
 * sharing group's "/memfd:libdedup-g:...") is one, and so is the anonymous
 * piece right after it, which exists only because the run split an
 * anonymous mapping. The piece before a run is the mapping that was there
 * already. An upper bound: a run at the very start of a mapping counts the
 * piece after it although nothing was split before it. Our store's shared
 * view ('s') is not a merge.
 */
static bool rest_is_anon(const char *rest);
struct ours_ctx { long n, ours; uintptr_t run_end; };

static int ours_line(void *c, uintptr_t lo, uintptr_t hi, const char *perms, const char *rest)
{
	struct ours_ctx *oc = c;
	oc->n++;
	if (perms[3] == 'p' && strstr(rest, "/memfd:libdedup")) {
		oc->ours++;
		oc->run_end = hi;
		return 0;
	}
	if (oc->run_end == lo && rest_is_anon(rest))
		oc->ours++;   /* the piece a run split off */
	oc->run_end = 0;
	return 0;
}

long dd_count_maps_ours(long *ours)
{
	struct ours_ctx oc = { 0, 0, 0 };
	int r = dd_maps_each(ours_line, &oc);
	*ours = oc.ours;
	return r < 0 ? r : oc.n;
}

long dd_count_maps(const char *needle, long *matching)
{
	struct count_ctx cc = { 0, 0, needle };
	int r = dd_maps_each(count_line, &cc);
	if (matching)
		*matching = cc.match;
	return r < 0 ? r : cc.n;
}

struct anon_ctx { uintptr_t start, end, covered; int bad; };

/* Is this the rest of a maps line for anonymous memory? ("offset dev inode [name]") */
static bool rest_is_anon(const char *rest)
{
	unsigned long long off;
	unsigned maj, min;
	unsigned long ino;
	int n = 0;

	if (sscanf(rest, " %llx %x:%x %lu %n", &off, &maj, &min, &ino, &n) < 4)
		return false;
	if (ino != 0)
		return false;
	rest += n;
	/* [heap] and [anon:...] are anonymous; [stack] and [vvar] etc. are not ours */
	return *rest == 0 || strncmp(rest, "[heap]", 6) == 0 || strncmp(rest, "[anon:", 6) == 0;
}

static int anon_line(void *c, uintptr_t lo, uintptr_t hi, const char *perms, const char *rest)
{
	struct anon_ctx *a = c;

	if (hi <= a->covered || lo >= a->end)
		return lo >= a->end ? 1 : 0;
	if (lo > a->covered) {  /* hole */
		a->bad = -EINVAL;
		return 1;
	}
	if (perms[0] != 'r' || perms[1] != 'w' || perms[3] != 'p' || !rest_is_anon(rest)) {
		a->bad = -EINVAL;
		return 1;
	}
	a->covered = hi;
	return a->covered >= a->end ? 1 : 0;
}

int dd_check_anon_private(uintptr_t start, uintptr_t end)
{
	struct anon_ctx a = { start, end, start, 0 };
	int r = dd_maps_each(anon_line, &a);

	if (r < 0)
		return r;
	if (a.bad)
		return a.bad;
	return a.covered >= end ? 0 : -EINVAL;
}
