/* SPDX-License-Identifier: MIT */
/*
 * probe_wp_replace_wake - the wrprotect-then-replace sequence.
 *
 * Fact (kernel-facts.md, "The wrprotect-then-replace sequence"):
 *  1. UFFDIO_WRITEPROTECT(A, MODE_WP) on a page of a WP-registered anonymous
 *     private range makes a writer of A block; the uffd delivers
 *     UFFD_EVENT_PAGEFAULT with flags WRITE|WP.
 *  2. mmap(A, MAP_FIXED|MAP_PRIVATE, memfd) replacing the page does NOT wake
 *     the blocked writer.
 *  3. UFFDIO_WAKE(A) (no VMA lookup) wakes it although A is no longer
 *     registered; its fault retries on the new VMA, the kernel COWs the memfd
 *     page, the write lands in the private copy and the memfd is unchanged.
 *  4. UFFDIO_WRITEPROTECT(A, 0) on the replaced page fails with ENOENT.
 *
 * Why libdedup depends on it: this is the merge step itself. If a writer
 * woke up before the replacement it could write into the old page after we
 * compared it (lost write); if WAKE did not reach it, the application would
 * hang; if the write went into the shared memfd page every process sharing
 * the merged content would see it.
 *
 * The uffd uses the feature set libdedup asks for (WP|EVENT_REMOVE|
 * EVENT_REMAP|MOVE). The replacing mmap runs in a helper thread so that, if
 * it ever blocked on a non-cooperative event, the test fails instead of
 * hanging.
 */
#include "probe.h"

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>

#define FEATURES                                                           \
	((uint64_t)(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_EVENT_REMOVE | \
		    UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_MOVE))

#define WOFF 100 /* offset of the byte the writer stores */

static int uffd;

struct writer {
	volatile unsigned char *addr;
	unsigned char val;
	atomic_int started, done;
};

static void *writer_fn(void *arg)
{
	struct writer *w = arg;
	atomic_store(&w->started, 1);
	w->addr[WOFF] = w->val; /* blocks on the uffd-wp fault */
	atomic_store(&w->done, 1);
	return NULL;
}

struct replacer {
	void *addr;
	int memfd;
	void *ret;
	atomic_int done;
};

static void *replace_fn(void *arg)
{
	struct replacer *r = arg;
	r->ret = mmap(r->addr, T_PAGE, PROT_READ | PROT_WRITE,
		      MAP_FIXED | MAP_PRIVATE, r->memfd, 0);
	atomic_store(&r->done, 1);
	return NULL;
}

int main(void)
{
	static unsigned char pattern[T_PAGE], buf[T_PAGE];
	uint64_t got = 0;
	struct uffd_msg m;

	if (access("/dev/userfaultfd", F_OK) != 0)
		t_skip("/dev/userfaultfd does not exist");
	uffd = t_uffd_open(FEATURES, &got);
	if (uffd < 0 && errno == EINVAL)
		t_skip("UFFDIO_API refused features 0x%llx",
		       (unsigned long long)FEATURES);
	CHECK(uffd >= 0);

	t_fill(pattern, 42);

	/* memfd page with the same content (the merged page). */
	int memfd = memfd_create("probe_wp_replace", MFD_CLOEXEC);
	CHECK(memfd >= 0);
	CHECK(ftruncate(memfd, T_PAGE) == 0);
	CHECK(pwrite(memfd, pattern, T_PAGE, 0) == (ssize_t)T_PAGE);

	/* Anonymous range of 3 pages, A in the middle, registered WP. */
	unsigned char *base = t_map_anon(3 * T_PAGE);
	unsigned char *A = base + T_PAGE;
	for (int i = 0; i < 3; i++)
		t_fill(base + i * T_PAGE, 42);
	CHECK(memcmp(A, pattern, T_PAGE) == 0);
	CHECK(t_uffd_register(uffd, base, 3 * T_PAGE,
			      UFFDIO_REGISTER_MODE_WP) == 0);

	/* 1. Write-protect A; a writer blocks and we see a WRITE|WP fault. */
	CHECK(t_uffd_wp(uffd, A, T_PAGE, 1) == 0);
	unsigned char val = (unsigned char)(pattern[WOFF] ^ 0x5a);
	struct writer w = { .addr = A, .val = val };
	pthread_t wt;
	CHECK(pthread_create(&wt, NULL, writer_fn, &w) == 0);

	CHECK(uffd_try_msg(uffd, t_cap_ms(), &m) == 1);
	printf("fault: event %u flags 0x%llx address %p\n", m.event,
	       (unsigned long long)m.arg.pagefault.flags,
	       (void *)(uintptr_t)m.arg.pagefault.address);
	CHECK(m.event == UFFD_EVENT_PAGEFAULT);
	CHECK((m.arg.pagefault.address & ~(T_PAGE - 1)) == (uintptr_t)A);
	CHECK((m.arg.pagefault.flags &
	       (UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP)) ==
	      (UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP));
	CHECK(!atomic_load(&w.done));
	CHECK(memcmp(A, pattern, T_PAGE) == 0); /* reads still work */

	/* 2. Replace A by the memfd page; the writer must stay blocked. */
	struct replacer r = { .addr = A, .memfd = memfd };
	pthread_t rt;
	CHECK(pthread_create(&rt, NULL, replace_fn, &r) == 0);
	if (!wait_flag(&r.done, t_cap_ms())) {
		if (uffd_try_msg(uffd, 0, &m))
			fprintf(stderr, "mmap(MAP_FIXED) blocked on uffd event %u\n",
				m.event);
		CHECK(!"mmap(MAP_FIXED) over the registered page returned");
	}
	CHECK(pthread_join(rt, NULL) == 0);
	CHECK(r.ret == (void *)A);
	CHECK(uffd_try_msg(uffd, 0, &m) == 0); /* no event for the replacement */

	usleep(100 * 1000);
	CHECK(!atomic_load(&w.done)); /* replacing the VMA did not wake it */
	CHECK(memcmp(A, pattern, T_PAGE) == 0);

	/* 3. UFFDIO_WAKE on the now unregistered range releases the writer. */
	CHECK(t_uffd_wake(uffd, A, T_PAGE) == 0);
	CHECK(wait_flag(&w.done, t_cap_ms()));
	CHECK(pthread_join(wt, NULL) == 0);

	CHECK(A[WOFF] == val);
	CHECK(memcmp(A, pattern, WOFF) == 0);
	CHECK(memcmp(A + WOFF + 1, pattern + WOFF + 1, T_PAGE - WOFF - 1) == 0);
	/* The write went to a private copy: the memfd page is unchanged. */
	CHECK(pread(memfd, buf, T_PAGE, 0) == (ssize_t)T_PAGE);
	CHECK(memcmp(buf, pattern, T_PAGE) == 0);
	/* The retried fault hit the unregistered VMA: no further message. */
	CHECK(uffd_try_msg(uffd, 0, &m) == 0);
	/* Neighbours untouched. */
	CHECK(memcmp(base, pattern, T_PAGE) == 0);
	CHECK(memcmp(base + 2 * T_PAGE, pattern, T_PAGE) == 0);

	/* 4. The replaced page is not registered: WRITEPROTECT -> ENOENT. */
	errno = 0;
	CHECK(t_uffd_wp(uffd, A, T_PAGE, 0) == -1 && errno == ENOENT);

	close(uffd);
	close(memfd);
	munmap(base, 3 * T_PAGE);
	printf("PASS\n");
	return T_PASS;
}
