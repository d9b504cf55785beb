/* SPDX-License-Identifier: MIT */
/*
 * test_unregister_gaps: dedup_unregister() of isolated merged pages while
 * writers hammer the whole range - the merged pages and the anonymous pages
 * between them (the gaps) - loses no write and resurrects no discarded
 * page. Handing back a span of runs moves the gaps' pages out of the range
 * and back (merge.c, um_span): while a page is out its address is empty,
 * and an access to it must wait for the hand-back, not read or fill zeros;
 * a page the program discards while it is out must stay discarded.
 *
 * Each cycle: RUNS duplicate pages, one every other page, the unique pages
 * between them the gaps; registered and merged by passes; WRITERS threads
 * start (each owns the pages i % WRITERS == id, mirrors every write in a
 * shadow copy): 64-byte stores, read() from a pipe (a kernel-mode write),
 * and now and then MADV_DONTNEED of a page (the shadow becomes zeros);
 * the main thread unregisters the range while they go on, they stop a
 * little after, and every byte is compared. A cycle counts when most pages
 * were merged as the hand-back started and writes landed during it; the
 * test runs until CYCLES cycles counted (a count, not a time), and fails if
 * that has not happened within t_cap().
 */
#include <pthread.h>
#include <stdatomic.h>

#include "tdedup.h"

#define RUNS 2048
#define N (2 * RUNS)
#define WRITERS 2
#define CYCLES 12

static char *region, *shadow;
static _Atomic int stop;
static _Atomic unsigned long writes, during;
static _Atomic int handing_back;

static void *writer(void *arg)
{
	long id = (long)arg;
	int pfd[2];
	uint64_t x = 88172645463325252ULL + (uint64_t)id * 7919 + (uint64_t)t_now();
	CHECK(pipe(pfd) == 0);
	while (!atomic_load(&stop)) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		size_t page = (x % (N / WRITERS)) * WRITERS + (size_t)id;
		size_t off = (x >> 20) % (T_PAGE / 64) * 64;
		char v[64];
		memset(v, (int)(x >> 40) | 1, sizeof(v));
		unsigned what = (unsigned)(x >> 33) % 32;
		if (what == 0) {
			/* a discard: zeros from now on */
			CHECK(madvise(region + page * T_PAGE, T_PAGE, MADV_DONTNEED) == 0);
			memset(shadow + page * T_PAGE, 0, T_PAGE);
		} else if (what < 17) {
			memcpy(region + page * T_PAGE + off, v, sizeof(v));
			memcpy(shadow + page * T_PAGE + off, v, sizeof(v));
		} else {   /* a kernel-mode write: read() from a pipe */
			t_kernel_write(pfd, region + page * T_PAGE + off, v, sizeof(v));
			memcpy(shadow + page * T_PAGE + off, v, sizeof(v));
		}
		atomic_fetch_add(&writes, 1);
		if (atomic_load(&handing_back))
			atomic_fetch_add(&during, 1);
	}
	close(pfd[0]);
	close(pfd[1]);
	return NULL;
}

int main(void)
{
	int cycles = 0, counted = 0;

	t_engine_start(3600000);
	shadow = t_map_anon(N * T_PAGE);
	double t0 = t_now(), give_up = t0 + t_cap();
	while (counted < CYCLES) {
		if (t_now() > give_up) {
			fprintf(stderr, "FAIL: %d cycles with merged pages and writes during the "
				"hand-back (of %d) within %g s, wanted %d\n", counted, cycles, t_cap(),
				CYCLES);
			return T_FAIL;
		}
		/* A fresh address each cycle: the pages discarded in the last
		 * one are not mergeable until the engine has seen them go
		 * (discard.c), which it does at its next batch. */
		char *old = region;
		region = t_map_anon(N * T_PAGE);
		if (old)
			CHECK(munmap(old, N * T_PAGE) == 0);
		CHECK(madvise(region, N * T_PAGE, MADV_NOHUGEPAGE) == 0);
		for (size_t i = 0; i < N; i++)
			t_fill(region + i * T_PAGE, i % 2 ? 1000000 + i : 31 + (i / 2) % 4);
		memcpy(shadow, region, N * T_PAGE);
		CHECK(dedup_register(region, N * T_PAGE) == 0);
		long sharing0 = (long)t_stats().pages_sharing, merged = 0;
		for (int pass = 0; pass < 4; pass++)
			merged += dedup_scan_now();
		long merged_pages = (long)t_stats().pages_sharing - sharing0;
		atomic_store(&stop, 0);
		atomic_store(&during, 0);
		pthread_t t[WRITERS];
		for (long i = 0; i < WRITERS; i++)
			CHECK(pthread_create(&t[i], NULL, writer, (void *)i) == 0);
		usleep(2000);
		atomic_store(&handing_back, 1);
		CHECK(dedup_unregister(region, N * T_PAGE) == 0);
		atomic_store(&handing_back, 0);
		usleep(2000);
		atomic_store(&stop, 1);
		for (int i = 0; i < WRITERS; i++)
			CHECK(pthread_join(t[i], NULL) == 0);
		for (size_t off = 0; off < N * T_PAGE; off++)
			if (region[off] != shadow[off]) {
				size_t p = off / T_PAGE;
				fprintf(stderr, "LOST WRITE at page %zu (%s) offset %zu: expected %#x "
					"got %#x (cycle %d, %ld merged, %lu writes during the hand-back)\n",
					p, p % 2 ? "gap" : "merged", off % T_PAGE, shadow[off] & 0xff,
					region[off] & 0xff, cycles, merged,
					(unsigned long)atomic_load(&during));
				return T_FAIL;
			}
		cycles++;
		counted += merged_pages > RUNS / 2 && atomic_load(&during) > 0;
	}
	fprintf(stderr, "%d cycles (%d counted) in %.1f s, %lu writes verified\n", cycles, counted,
		t_now() - t0, (unsigned long)atomic_load(&writes));
	CHECK(dedup_shutdown() == 0);
	return T_PASS;
}
