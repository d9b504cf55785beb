/* SPDX-License-Identifier: MIT */
/*
 * test_unregister_race: dedup_unregister() while writers (user-mode stores
 * and read() from a pipe, a kernel-mode write) hammer merged pages loses no
 * write. Unmerging copies every merged page out and replaces the run
 * (merge.c, "Unmerging"); a write that landed between the copy and the
 * replacement would be lost, so the run stays protected - and its faults
 * left to the merger - until it is replaced.
 *
 * Each cycle: N identical pages, registered, merged by two passes; two
 * writer threads start (each owns every other page, mirrors every write in
 * a shadow copy); after a short while the main thread unregisters the
 * range; the writers go on a little, stop, and every byte is compared.
 * A cycle counts when the pages were merged as the writers started; the
 * test runs until CYCLES cycles counted (a count, not a time: how many a
 * second gives depends on the machine), and fails if that has not happened
 * within t_cap() (3 minutes). DEDUP_TEST_SECONDS: also run at least that
 * long (long runs by hand).
 */
#include <pthread.h>
#include <stdatomic.h>

#include "tdedup.h"

#define N 256
#define WRITERS 2
#define CYCLES 40

static char *region, *shadow;
static _Atomic int stop;
static _Atomic unsigned long writes;

static void *writer(void *arg)
{
	long id = (long)arg;
	int pfd[2];
	uint64_t x = 88172645463325252ULL + (uint64_t)id;
	CHECK(pipe(pfd) == 0);
	while (!atomic_load(&stop)) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		size_t page = (x % (N / WRITERS)) * WRITERS + (size_t)id;
		size_t off = (x >> 20) % (T_PAGE / 64) * 64;
		char v[64];
		memset(v, (int)(x >> 40) | 1, sizeof(v));
		if (x & 1) {
			memcpy(region + page * T_PAGE + off, v, sizeof(v));
		} else {   /* a kernel-mode write: read() from a pipe */
			t_kernel_write(pfd, region + page * T_PAGE + off, v, sizeof(v));
		}
		memcpy(shadow + page * T_PAGE + off, v, sizeof(v));
		atomic_fetch_add(&writes, 1);
	}
	close(pfd[0]);
	close(pfd[1]);
	return NULL;
}

int main(void)
{
	const char *e = getenv("DEDUP_TEST_SECONDS");
	double seconds = e ? atof(e) : 0;
	char base[T_PAGE];
	int cycles = 0, counted = 0;

	t_engine_start(3600000);
	t_fill(base, 77);
	shadow = t_map_anon(N * T_PAGE);
	double t0 = t_now(), end = t0 + seconds, give_up = t0 + t_cap();
	while (counted < CYCLES || t_now() < end) {
		if (t_now() > give_up) {
			fprintf(stderr, "FAIL: %d cycles with merged pages (of %d) within %g s, "
				"wanted %d\n", counted, cycles, t_cap(), CYCLES);
			return T_FAIL;
		}
		region = t_map_anon(N * T_PAGE);
		for (size_t i = 0; i < N; i++)
			memcpy(region + i * T_PAGE, base, T_PAGE);
		memcpy(shadow, region, N * T_PAGE);
		CHECK(dedup_register(region, N * T_PAGE) == 0);
		dedup_scan_now();
		dedup_scan_now();
		long merged_pages = (long)t_stats().pages_sharing;
		atomic_store(&stop, 0);
		pthread_t t[WRITERS];
		for (long i = 0; i < WRITERS; i++)
			CHECK(pthread_create(&t[i], NULL, writer, (void *)i) == 0);
		usleep(20000);
		CHECK(dedup_unregister(region, N * T_PAGE) == 0);
		usleep(20000);
		atomic_store(&stop, 1);
		for (int i = 0; i < WRITERS; i++)
			CHECK(pthread_join(t[i], NULL) == 0);
		for (size_t off = 0; off < N * T_PAGE; off++)
			if (region[off] != shadow[off]) {
				fprintf(stderr, "LOST WRITE at page %zu offset %zu: expected %#x got %#x "
					"(cycle %d, %ld pages were merged)\n", off / T_PAGE, off % T_PAGE,
					shadow[off] & 0xff, region[off] & 0xff, cycles, merged_pages);
				return T_FAIL;
			}
		CHECK(munmap(region, N * T_PAGE) == 0);
		cycles++;
		counted += merged_pages > 0;
	}
	fprintf(stderr, "%d cycles (%d with merged pages) in %.1f s, %lu writes verified\n", cycles,
		counted, t_now() - t0, (unsigned long)atomic_load(&writes));
	CHECK(dedup_shutdown() == 0);
	return T_PASS;
}
