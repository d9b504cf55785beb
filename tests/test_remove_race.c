/* SPDX-License-Identifier: MIT */
/*
 * test_remove_race: a page whose discard has been announced (REMOVE read)
 * but not carried out (zap still to come) is never merged.
 *
 * madvise(MADV_DONTNEED) raises UFFD_EVENT_REMOVE, waits until our reader
 * reads it, and zaps only when it runs again (probe_remove_zap_late.c). If
 * the engine merged the page in between, the zap would hit the canonical
 * page and the application, after its madvise() returned, would read the
 * old content where it expects zeros (torture seed 2 caught this on CI).
 *
 * The window between the read and the zap cannot be held open from user
 * space (while the caller has not run, every uffd ioctl fails with EAGAIN;
 * once it runs, the zap follows within microseconds), so this test puts the
 * engine in exactly the state it would see there: it hands the reader's
 * REMOVE handling (dd_discard_removed, under eng.gate) a page that is still
 * present with its old content, and checks that
 *   1. passes merge every duplicate but that page, which gets fenced
 *      (write-protected) and stays unmerged pass after pass;
 *   2. a fenced page the application writes into (the old bytes around the
 *      write may still be there) stays unmerged even when its content is a
 *      duplicate again;
 *   3. once the page is really discarded it reads zeros, and written again
 *      (a fresh page) it merges like any other.
 * Without the fence logic (discard.c, "Discards racing with a merge") step 1
 * fails: the page merges at once.
 */
#include "tdedup.h"
#include "internal.h"

#define NP 8

static char *region;
static char content[T_PAGE];
static int pm_fd;

#define PM_PRESENT (1ULL << 63)
#define PM_FILE (1ULL << 61)
#define PM_UFFD_WP (1ULL << 57)

static uint64_t pm(int page)
{
	uint64_t e = 0;
	uintptr_t a = (uintptr_t)(region + page * T_PAGE);
	CHECK(pread(pm_fd, &e, 8, (off_t)(a / T_PAGE) * 8) == 8);
	return e;
}

static int merged(int page) { return (pm(page) & (PM_PRESENT | PM_FILE)) == (PM_PRESENT | PM_FILE); }

/* What the uffd reader does when it reads a REMOVE for @page. */
static void announce_discard(int page)
{
	uintptr_t a = (uintptr_t)(region + page * T_PAGE);
	CHECK(pthread_mutex_lock(&eng.gate) == 0);
	dd_discard_removed(a, a + T_PAGE);
	CHECK(pthread_mutex_unlock(&eng.gate) == 0);
}

static void passes(int n)
{
	for (int i = 0; i < n; i++)
		CHECK(dedup_scan_now() >= 0);
}

static void expect_unmerged(int page, const char *when)
{
	if (merged(page)) {
		fprintf(stderr, "FAIL: page %d merged %s\n", page, when);
		exit(T_FAIL);
	}
	CHECK(!memcmp(region + page * T_PAGE, content, T_PAGE));
}

/* madvise(MADV_DONTNEED), then wait until the reader has fenced the range:
 * a fence that comes after the page is written again cannot tell the new
 * page from the old one, and keeps it unmerged (safe, but not what this
 * test is about). */
static void discard_for_real(int page)
{
	static const char zeros[T_PAGE];
	CHECK(madvise(region + page * T_PAGE, T_PAGE, MADV_DONTNEED) == 0);
	double until = t_now() + t_cap();   /* the reader runs when it gets a CPU */
	for (;;) {
		CHECK(pthread_mutex_lock(&eng.gate) == 0);
		size_t left = dd_removing_unfenced();
		CHECK(pthread_mutex_unlock(&eng.gate) == 0);
		if (!left)
			break;
		CHECK(t_now() < until);
		usleep(100);
	}
	CHECK(!memcmp(region + page * T_PAGE, zeros, T_PAGE));
}

int main(void)
{
	t_engine_start(3600000);     /* passes only through dedup_scan_now() */
	pm_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	CHECK(pm_fd >= 0);
	t_fill(content, 42);
	region = t_map_anon(NP * T_PAGE);
	CHECK(madvise(region, NP * T_PAGE, MADV_NOHUGEPAGE) == 0);
	for (int i = 0; i < NP; i++)
		memcpy(region + i * T_PAGE, content, T_PAGE);
	CHECK(dedup_register(region, NP * T_PAGE) == 0);
	passes(1);                   /* checksums only */
	CHECK(t_stats().merges == 0);

	/* 1. Page 0's discard is announced, its zap is still to come. */
	announce_discard(0);
	passes(3);
	t_print_stats("announced");
	for (int i = 1; i < NP; i++)
		CHECK(merged(i));
	expect_unmerged(0, "while its zap was still to come");
	CHECK(pm(0) & PM_UFFD_WP);   /* fenced */
	CHECK(merged(NP - 1));

	/* 2. The application writes into the fenced page (our reader lifts the
	 * fence) and puts the byte back: a duplicate again, but bytes from
	 * before the discard may be in it. It stays unmerged. */
	((volatile char *)region)[8] ^= 1;
	((volatile char *)region)[8] ^= 1;
	CHECK(!(pm(0) & PM_UFFD_WP));
	passes(3);
	t_print_stats("written into");
	expect_unmerged(0, "after being written into while fenced");

	/* 3. The zap lands; the page is written again: a fresh page. */
	discard_for_real(0);
	memcpy(region, content, T_PAGE);
	passes(3);
	t_print_stats("rewritten");
	if (!merged(0)) {
		fprintf(stderr, "FAIL: page 0, written afresh after its discard, did not merge\n");
		return T_FAIL;
	}

	for (int i = 0; i < NP; i++)
		CHECK(!memcmp(region + i * T_PAGE, content, T_PAGE));
	CHECK(dedup_unregister(region, NP * T_PAGE) == 0);
	CHECK(dedup_shutdown() == 0);
	return T_PASS;
}
