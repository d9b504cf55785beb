/* SPDX-License-Identifier: MIT */
/*
 * repro_mprotect_moveback: mprotect() of a page while the engine has it
 * moved out (between UFFDIO_MOVE and the move back) must not lose the page.
 *
 * Found by the torture suite (seed 1015 of the long run, action mprotect:
 * "could not restore page ... (errno 22); its content is kept at <scratch>",
 * then the page read as zeros and an 8-byte write was lost). merge.c moves a
 * candidate out to its scratch area S, compares, and moves it back if it
 * differs (it was written after the scan). UFFDIO_MOVE wants source and
 * destination VMAs with the same access flags: if the application made the
 * page read-only meanwhile (mprotect is allowed on registered memory), the
 * move back fails with EINVAL and the engine gives up on the page: it reads
 * as zeros from then on.
 *
 * Threads own disjoint pages of a region of duplicates and repeat: write 8
 * bytes into a page (so that a candidate differs from its hash), mprotect it
 * read-only, check it, make it writable again. Runs DEDUP_TEST_SECONDS
 * (default 10); fails at the first lost write.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "tdedup.h"

#define PAGES 1024
#define THREADS 2

static char *region, *shadow;
static _Atomic int stop;
static _Atomic unsigned long rounds;

static void *worker(void *arg)
{
	long id = (long)arg;
	uint64_t s = 0x9E3779B97F4A7C15ULL * (uint64_t)(id + 1);
	while (!atomic_load(&stop)) {
		s ^= s << 13, s ^= s >> 7, s ^= s << 17;
		size_t pg = (s % (PAGES / THREADS)) * THREADS + (size_t)id;
		size_t off = (s >> 20) % (T_PAGE / 8) * 8;
		char *p = region + pg * T_PAGE, *sh = shadow + pg * T_PAGE;
		uint64_t v = s | 1;
		memcpy(sh + off, &v, 8);
		*(volatile uint64_t *)(p + off) = v;
		CHECK(mprotect(p, T_PAGE, PROT_READ) == 0);
		if (memcmp(p, sh, T_PAGE)) {
			size_t i = 0;
			while (p[i] == sh[i])
				i++;
			fprintf(stderr, "LOST DATA: page %zu (%p) offset %zu: expected %#x, read %#x "
					"(after %lu rounds)\n", pg, (void *)p, i, (unsigned char)sh[i],
				(unsigned char)p[i], atomic_load(&rounds));
			exit(T_FAIL);
		}
		CHECK(mprotect(p, T_PAGE, PROT_READ | PROT_WRITE) == 0);
		if (s % 8 == 0) {   /* back to the duplicate content, to merge again */
			memset(p, 0x5a, T_PAGE);
			memset(sh, 0x5a, T_PAGE);
		}
		if (s % 4 == 0)
			usleep(100);
		atomic_fetch_add(&rounds, 1);
	}
	return NULL;
}

int main(void)
{
	const char *e = getenv("DEDUP_TEST_SECONDS");
	double secs = e ? atof(e) : 10;
	/* big batches: longer merge windows; a huge VMA budget, or merging
	 * stops after a few seconds (vmas_added never goes down) */
	struct dedup_config cfg = { .size = sizeof(cfg), .scan_interval_ms = 1,
				    .cpu_percent = 100, .batch_pages = 64,
				    .vma_budget = 1ULL << 40 };
	int r = dedup_init(&cfg);
	if (r == -EPERM || r == -ENOSYS)
		t_skip("no usable userfaultfd");
	CHECK(r == 0);
	double end = t_now() + secs;
	while (t_now() < end) {
		/* fresh duplicates each round: a page merged and then copied is not
		 * merged again */
		region = t_map_anon(PAGES * T_PAGE);
		shadow = malloc(PAGES * T_PAGE);
		memset(region, 0x5a, PAGES * T_PAGE);
		memset(shadow, 0x5a, PAGES * T_PAGE);
		CHECK(dedup_register(region, PAGES * T_PAGE) == 0);
		atomic_store(&stop, 0);
		pthread_t t[THREADS];
		for (long i = 0; i < THREADS; i++)
			pthread_create(&t[i], NULL, worker, (void *)i);
		usleep(500000);
		atomic_store(&stop, 1);
		for (int i = 0; i < THREADS; i++)
			pthread_join(t[i], NULL);
		CHECK(memcmp(region, shadow, PAGES * T_PAGE) == 0);
		CHECK(dedup_unregister(region, PAGES * T_PAGE) == 0);
		munmap(region, PAGES * T_PAGE);
		free(shadow);
	}
	t_print_stats("mprotect");
	fprintf(stderr, "%lu rounds, no lost write\n", atomic_load(&rounds));
	CHECK(dedup_shutdown() == 0);
	return T_PASS;
}
