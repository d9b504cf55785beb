/* SPDX-License-Identifier: MIT */
/*
 * test_kernel_writer: kernel-mode writes into pages that are being merged
 * (read() from a pipe into the buffer) block and complete, never fail with
 * EFAULT, and land. Also: with only a user-mode-only userfaultfd available
 * (forced by DEDUP_FORCE_USER_ONLY=1) dedup_init refuses with -EPERM, and
 * the program runs untouched.
 *
 * Reads prove something only while pages are being merged: the test runs
 * cycles of 0.3 s, at least CYCLES of them and until the engine has merged
 * MERGES pages in all (a count of merges, not a time: how many a second
 * gives depends on the machine), and fails if that has not happened within
 * t_cap() (3 minutes).
 */
#include <pthread.h>
#include <stdatomic.h>

#include "tdedup.h"

#define N 256
#define CYCLES 10
#define MERGES 500
static char *buf;
static int pfd[2];

static void *reader(void *arg)
{
	uint64_t seq = 0;
	for (;;) {   /* until the writer closes the pipe */
		size_t page = (seq * 7) % N;
		char *dst = buf + page * T_PAGE + (seq % 8) * 512;
		ssize_t r = read(pfd[0], dst, 512);
		if (r == 0)
			break;
		if (r != 512) {
			fprintf(stderr, "read() into a merging page: %zd (%s)\n", r, strerror(errno));
			/* _exit: the engine still holds pages protected, and exit's
			 * handlers (LeakSanitizer stopping every thread) could wait
			 * for a thread blocked on one */
			_exit(T_FAIL);
		}
		for (int i = 0; i < 512; i++)
			if (dst[i] != (char)(seq + (uint64_t)i)) {
				fprintf(stderr, "read() data lost at page %zu (seq %llu, byte %d: %#x, "
					"expected %#x)\n", page, (unsigned long long)seq, i,
					dst[i] & 0xff, (char)(seq + (uint64_t)i) & 0xff);
				if (getenv("DEDUP_TRACE")) {
					void dd_trace_dump(uintptr_t);
					dd_trace_dump((uintptr_t)dst);
				}
				_exit(T_FAIL);
			}
		memset(dst, 0x42, 512);   /* back to duplicate content */
		seq++;
	}
	return (void *)(uintptr_t)seq;
}

int main(void)
{
	if (getenv("DEDUP_FORCE_USER_ONLY")) {
		CHECK(dedup_init(NULL) == -EPERM);
		CHECK(dedup_register(t_map_anon(T_PAGE), T_PAGE) == -ENODEV);
		return T_PASS;
	}
	struct dedup_config cfg = { .size = sizeof(cfg), .scan_interval_ms = 1,
				    .cpu_percent = 100, .batch_pages = 16, .zero_pages = -1 };
	int r = dedup_init(&cfg);
	if (r == -EPERM || r == -ENOSYS)
		t_skip("no usable userfaultfd");
	CHECK(r == 0);
	double t0 = t_now(), give_up = t0 + t_cap();
	uint64_t reads = 0;
	int cycles = 0;
	char chunk[512];
	/* Fresh duplicate pages every cycle, so that reads keep landing in
	 * pages that are being merged (a page once copied is not merged again). */
	while (cycles < CYCLES || t_stats().merges < MERGES) {
		if (t_now() > give_up) {
			t_print_stats("kernel writer");
			fprintf(stderr, "FAIL: %d cycles and %llu merges within %g s, wanted %d "
				"and %d\n", cycles, (unsigned long long)t_stats().merges, t_cap(),
				CYCLES, MERGES);
			return T_FAIL;
		}
		buf = t_map_anon(N * T_PAGE);
		memset(buf, 0x42, N * T_PAGE);
		CHECK(pipe(pfd) == 0);   /* fresh: the last chunk of a cycle stays unread */
		CHECK(dedup_register(buf, N * T_PAGE) == 0);
		pthread_t t;
		CHECK(pthread_create(&t, NULL, reader, NULL) == 0);
		double cyc = t_now() + 0.3;
		uint64_t seq = 0;
		while (t_now() < cyc) {
			for (int i = 0; i < 512; i++)
				chunk[i] = (char)(seq + (uint64_t)i);
			CHECK(write(pfd[1], chunk, 512) == 512);
			seq++;
			if (seq % 16 == 0)
				usleep(1000);   /* let pages settle and merge */
		}
		/* The reader reads everything written, then sees end-of-file
		 * (under load it may lag the writer by a full pipe). */
		close(pfd[1]);
		void *n;
		CHECK(pthread_join(t, &n) == 0);
		CHECK((uintptr_t)n == seq);
		reads += (uintptr_t)n;
		CHECK(dedup_unregister(buf, N * T_PAGE) == 0);
		munmap(buf, N * T_PAGE);
		close(pfd[0]);
		cycles++;
	}
	t_print_stats("kernel writer");
	fprintf(stderr, "%lu reads into merging pages verified, %d cycles, %.1f s\n",
		(unsigned long)reads, cycles, t_now() - t0);
	CHECK(dedup_shutdown() == 0);
	return T_PASS;
}
