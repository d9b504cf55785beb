/* SPDX-License-Identifier: MIT */
/*
 * probe_remove_zap_late.c - fact: UFFD_EVENT_REMOVE is acknowledged when it
 * is read, but the madvise(MADV_DONTNEED) caller zaps only afterwards, when
 * it runs again. Between the read and the zap:
 *   - the pages are still present with their old content, and
 *   - UFFDIO_WRITEPROTECT still fails with EAGAIN (the caller drops the
 *     kernel's mmap_changing only when it runs).
 * After the zap (anonymous memory):
 *   - the pages are not present and carry no uffd-wp bit (the zap drops it,
 *     pagemap bit 57), and a page faulted in afresh has no uffd-wp bit;
 *   - UFFDIO_WRITEPROTECT of an empty PTE succeeds and leaves no marker.
 *
 * Why libdedup depends on it (merge.c, "Discards racing with a merge";
 * discard.c, "removing"): the reader acknowledging a REMOVE is not the end
 * of the discard. A merge that moved the old page out after the read and
 * placed a canonical page would be zapped later, and the next fault would
 * read the canonical page where the application expects zeros (torture seed
 * 2 caught this). So the engine fences a removed range with write
 * protection once it can (not at read time: EAGAIN), and treats a page
 * there as mergeable only when it is gone or was faulted in afresh (no
 * uffd-wp bit) - which relies on the zap dropping the bit and on fresh pages
 * coming without it.
 *
 * Ordering is made deterministic by running on one CPU: the main thread is
 * SCHED_FIFO, the madvise thread SCHED_OTHER, so once the main thread has
 * read the event the madvise thread cannot run until the main thread sleeps.
 * Skips (77) when SCHED_FIFO is not allowed.
 */
#define _GNU_SOURCE
#include "tcommon.h"
#include "uapi.h"

#include <poll.h>
#include <pthread.h>
#include <sched.h>

#define PM_PRESENT (1ULL << 63)
#define PM_UFFD_WP (1ULL << 57)

static char *area;
static int pm_fd;

static uint64_t pm(const void *a)
{
	uint64_t e = 0;
	CHECK(pread(pm_fd, &e, 8, (off_t)((uintptr_t)a / T_PAGE) * 8) == 8);
	return e;
}

static void *dontneed(void *arg)
{
	(void)arg;
	CHECK(madvise(area, 2 * T_PAGE, MADV_DONTNEED) == 0);
	return NULL;
}

int main(void)
{
	cpu_set_t one;
	CPU_ZERO(&one);
	CPU_SET(0, &one);
	CHECK(sched_setaffinity(0, sizeof(one), &one) == 0);
	struct sched_param fifo = { .sched_priority = 1 };
	if (sched_setscheduler(0, SCHED_FIFO, &fifo) < 0)
		t_skip("SCHED_FIFO not allowed (errno %d)", errno);

	int uffd = t_uffd_open(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_EVENT_REMOVE, NULL);
	if (uffd < 0)
		t_skip("no userfaultfd (errno %d)", errno);
	pm_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	CHECK(pm_fd >= 0);
	area = t_map_anon(2 * T_PAGE);
	CHECK(madvise(area, 2 * T_PAGE, MADV_NOHUGEPAGE) == 0);
	t_fill(area, 1);
	t_fill(area + T_PAGE, 2);
	static char want1[T_PAGE];
	t_fill(want1, 2);
	CHECK(t_uffd_register(uffd, area, 2 * T_PAGE, UFFDIO_REGISTER_MODE_WP) == 0);
	CHECK(t_uffd_wp(uffd, area, T_PAGE, 1) == 0);       /* page 0 protected */
	CHECK(pm(area) & PM_UFFD_WP);
	CHECK(!(pm(area + T_PAGE) & PM_UFFD_WP));

	pthread_attr_t at;
	struct sched_param other = { .sched_priority = 0 };
	pthread_t th;
	CHECK(pthread_attr_init(&at) == 0);
	CHECK(pthread_attr_setinheritsched(&at, PTHREAD_EXPLICIT_SCHED) == 0);
	CHECK(pthread_attr_setschedpolicy(&at, SCHED_OTHER) == 0);
	CHECK(pthread_attr_setschedparam(&at, &other) == 0);
	CHECK(pthread_create(&th, &at, dontneed, NULL) == 0);

	/* Sleep in poll: the madvise thread runs, raises the event, waits. */
	struct pollfd p = { .fd = uffd, .events = POLLIN };
	CHECK(poll(&p, 1, t_cap_ms()) == 1);
	struct uffd_msg m;
	CHECK(read(uffd, &m, sizeof(m)) == (ssize_t)sizeof(m));
	CHECK(m.event == UFFD_EVENT_REMOVE);
	CHECK(m.arg.remove.start == (uintptr_t)area);

	/* The event is acknowledged; the madvise thread is runnable but we hold
	 * the only CPU. Nothing may sleep until the checks are done. */
	uint64_t e0 = pm(area), e1 = pm(area + T_PAGE);
	int wp_err = t_uffd_wp(uffd, area + T_PAGE, T_PAGE, 1) < 0 ? errno : 0;
	int same = !memcmp(area + T_PAGE, want1, T_PAGE);

	usleep(20000);   /* now the madvise thread runs and zaps */
	CHECK(pthread_join(th, NULL) == 0);
	struct sched_param normal = { .sched_priority = 0 };
	CHECK(sched_setscheduler(0, SCHED_OTHER, &normal) == 0);

	printf("after the read, before the zap: page 0 present %d wp %d, page 1 present %d; "
	       "WRITEPROTECT -> %s\n", !!(e0 & PM_PRESENT), !!(e0 & PM_UFFD_WP),
	       !!(e1 & PM_PRESENT), wp_err ? strerror(wp_err) : "0");
	CHECK(e0 & PM_PRESENT);
	CHECK(e0 & PM_UFFD_WP);
	CHECK(e1 & PM_PRESENT);
	CHECK(same);
	CHECK(wp_err == EAGAIN);

	/* After the zap: gone, no uffd-wp bit. */
	CHECK(!(pm(area) & (PM_PRESENT | PM_UFFD_WP)));
	CHECK(!(pm(area + T_PAGE) & (PM_PRESENT | PM_UFFD_WP)));
	/* Write-protecting an empty anonymous PTE leaves nothing behind. */
	CHECK(t_uffd_wp(uffd, area + T_PAGE, T_PAGE, 1) == 0);
	CHECK(!(pm(area + T_PAGE) & (PM_PRESENT | PM_UFFD_WP)));
	/* A page faulted in afresh (page 0 by a write) has no uffd-wp bit. */
	area[0] = 7;
	uint64_t e = pm(area);
	CHECK((e & PM_PRESENT) && !(e & PM_UFFD_WP));
	printf("after the zap: not present, no uffd-wp bit; a fresh page has none either\n");
	return T_PASS;
}
