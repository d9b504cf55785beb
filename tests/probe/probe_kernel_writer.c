/* SPDX-License-Identifier: MIT */
/*
 * probe_kernel_writer - kernel-mode writes into a write-protected page.
 *
 * Fact (kernel-facts.md, "userfaultfd on this kernel"): with a uffd from
 * /dev/userfaultfd (USERFAULTFD_IOC_NEW, no UFFD_USER_MODE_ONLY), a kernel-mode
 * write into a uffd-write-protected page (here: read() from a pipe into the
 * page, i.e. copy_to_user) raises a WP userfault and blocks until the page
 * is un-protected; then it completes with the right bytes. With a uffd made
 * by userfaultfd(UFFD_USER_MODE_ONLY) the same read() fails with EFAULT
 * instead (handle_userfault refuses faults without FAULT_FLAG_USER).
 *
 * Why libdedup depends on it: while a page is write-protected for the
 * compare-and-replace step, the application may hand that page to the kernel
 * as a read()/recv() buffer. With a user-mode-only uffd that syscall would
 * fail with EFAULT (the application sees a spurious error, or worse, loses
 * input); this is why libdedup opens /dev/userfaultfd and refuses to run with
 * a user-mode-only uffd.
 */
#include "probe.h"

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>

#define ROFF 512  /* where the read() lands inside the page */
#define RLEN 1000 /* how many bytes it reads */

struct reader {
	int fd;
	unsigned char *dst;
	ssize_t ret;
	int err;
	atomic_int done;
};

static void *reader_fn(void *arg)
{
	struct reader *r = arg;
	errno = 0;
	r->ret = read(r->fd, r->dst, RLEN);
	r->err = errno;
	atomic_store(&r->done, 1);
	return NULL;
}

static unsigned char pattern[T_PAGE], data[T_PAGE];

/*
 * Write-protect a fresh page registered (MODE_WP) with @uffd and start a
 * thread that read()s RLEN bytes from a pipe into it. Returns the page.
 */
static unsigned char *start_reader(int uffd, struct reader *r, pthread_t *t,
				   int pipefd[2])
{
	unsigned char *p = t_map_anon(T_PAGE);
	memcpy(p, pattern, T_PAGE); /* populated */
	CHECK(t_uffd_register(uffd, p, T_PAGE, UFFDIO_REGISTER_MODE_WP) == 0);
	CHECK(t_uffd_wp(uffd, p, T_PAGE, 1) == 0);
	CHECK(pipe(pipefd) == 0);
	CHECK(write(pipefd[1], data, RLEN) == RLEN);
	r->fd = pipefd[0];
	r->dst = p + ROFF;
	atomic_store(&r->done, 0);
	CHECK(pthread_create(t, NULL, reader_fn, r) == 0);
	return p;
}

static void check_page(const unsigned char *p, int written)
{
	CHECK(memcmp(p, pattern, ROFF) == 0);
	CHECK(memcmp(p + ROFF, written ? data : pattern + ROFF, RLEN) == 0);
	CHECK(memcmp(p + ROFF + RLEN, pattern + ROFF + RLEN,
		     T_PAGE - ROFF - RLEN) == 0);
}

int main(void)
{
	struct uffd_msg m;
	int pfd[2];
	pthread_t t;

	t_fill(pattern, 7);
	t_fill(data, 8);

	/* ---- Part 1: uffd from /dev/userfaultfd handles kernel faults ---- */
	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0 && errno == ENOENT)
		t_skip("/dev/userfaultfd does not exist");
	CHECK(dev >= 0);
	int uffd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
	CHECK(uffd >= 0);
	close(dev);
	struct uffdio_api api = { .api = UFFD_API,
				  .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP };
	CHECK(ioctl(uffd, UFFDIO_API, &api) == 0);

	struct reader r = { 0 };
	unsigned char *p = start_reader(uffd, &r, &t, pfd);

	CHECK(uffd_try_msg(uffd, t_cap_ms(), &m) == 1);
	printf("dev uffd: event %u flags 0x%llx address %p (page %p)\n",
	       m.event, (unsigned long long)m.arg.pagefault.flags,
	       (void *)(uintptr_t)m.arg.pagefault.address, (void *)p);
	CHECK(m.event == UFFD_EVENT_PAGEFAULT);
	CHECK((m.arg.pagefault.address & ~(T_PAGE - 1)) == (uintptr_t)p);
	CHECK((m.arg.pagefault.flags &
	       (UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP)) ==
	      (UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP));
	usleep(100 * 1000);
	CHECK(!atomic_load(&r.done)); /* blocked, not failed with EFAULT */
	check_page(p, 0);

	/* Un-protect (wakes the waiter): the read completes correctly. */
	CHECK(t_uffd_wp(uffd, p, T_PAGE, 0) == 0);
	CHECK(wait_flag(&r.done, t_cap_ms()));
	CHECK(pthread_join(t, NULL) == 0);
	if (r.ret != RLEN)
		fprintf(stderr, "read returned %zd errno %d\n", r.ret, r.err);
	CHECK(r.ret == RLEN);
	check_page(p, 1);
	close(pfd[0]);
	close(pfd[1]);
	close(uffd);
	munmap(p, T_PAGE);

	/* ---- Part 2: UFFD_USER_MODE_ONLY uffd: the read() gets EFAULT ---- */
	uffd = (int)syscall(SYS_userfaultfd,
			    O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (uffd < 0 && errno == ENOSYS)
		t_skip("userfaultfd syscall not available");
	CHECK(uffd >= 0);
	api = (struct uffdio_api){ .api = UFFD_API,
				   .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP };
	CHECK(ioctl(uffd, UFFDIO_API, &api) == 0);

	p = start_reader(uffd, &r, &t, pfd);
	if (!wait_flag(&r.done, t_cap_ms())) {
		/* It blocked instead: report and release it. */
		int got = uffd_try_msg(uffd, 0, &m);
		fprintf(stderr, "user-mode-only uffd: read() blocked (msg %d flags 0x%llx)\n",
			got, got ? (unsigned long long)m.arg.pagefault.flags : 0ULL);
		CHECK(t_uffd_wp(uffd, p, T_PAGE, 0) == 0);
		CHECK(wait_flag(&r.done, t_cap_ms()));
		CHECK(!"read() on a user-mode-only uffd failed with EFAULT");
	}
	CHECK(pthread_join(t, NULL) == 0);
	printf("user-mode-only uffd: read returned %zd errno %d (%s)\n", r.ret,
	       r.err, strerror(r.err));
	CHECK(r.ret == -1 && r.err == EFAULT);
	CHECK(uffd_try_msg(uffd, 0, &m) == 0); /* no fault was delivered */
	check_page(p, 0);                  /* nothing written */
	/* The data is still in the pipe: after un-protecting it reads fine. */
	CHECK(t_uffd_wp(uffd, p, T_PAGE, 0) == 0);
	CHECK(read(pfd[0], p + ROFF, RLEN) == RLEN);
	check_page(p, 1);

	close(pfd[0]);
	close(pfd[1]);
	close(uffd);
	munmap(p, T_PAGE);
	printf("PASS\n");
	return T_PASS;
}
