/* SPDX-License-Identifier: MIT */
/*
 * pl_leave_alone - what the preload library must not register, even when it
 * holds duplicates: a thread's stack; memory that is mlock()ed, or marked
 * MADV_DONTDUMP, MADV_WIPEONFORK or MADV_DONTFORK - through libc (the
 * interposers see it) and through raw system calls (only the VmFlags in
 * /proc/self/smaps tell); and a range smaller than DEDUP_MIN_REGION.
 * A plain range with the same content merges (the control); once it has,
 * and a few reconcile periods later, none of the others is merged or
 * registered with a userfaultfd, and every byte is as written.
 */
#include "pl.h"

#include <pthread.h>
#include <sys/syscall.h>

#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#endif
#ifndef MADV_DONTDUMP
#define MADV_DONTDUMP 16
#endif

#define NP 64
#define LEN (NP * T_PAGE)

static pthread_barrier_t ready, done;
static char *stack_buf;

static void *thread_main(void *arg)
{
	char buf[LEN] __attribute__((aligned(4096)));   /* on this thread's stack */
	(void)arg;
	pl_fill(buf, NP, 61);
	stack_buf = buf;
	pthread_barrier_wait(&ready);
	pthread_barrier_wait(&done);
	/* the stack is checked by its owner, after everything else ran */
	return pl_check(buf, NP, 61) ? NULL : (void *)1;
}

int main(void)
{
	pl_need_uffd();
	struct { const char *what; char *p; size_t len; } r[8];
	int n = 0;

	/* flags through libc, set before the content */
	static const struct { const char *what; int advice; } adv[] = {
		{ "MADV_DONTDUMP", MADV_DONTDUMP }, { "MADV_WIPEONFORK", MADV_WIPEONFORK },
		{ "MADV_DONTFORK", MADV_DONTFORK },
	};
	for (size_t i = 0; i < sizeof(adv) / sizeof(adv[0]); i++) {
		char *p = t_map_anon(LEN);
		CHECK(madvise(p, LEN, adv[i].advice) == 0);
		r[n++] = (typeof(r[0])){ adv[i].what, p, LEN };
	}
	char *locked = t_map_anon(LEN);
	CHECK(mlock(locked, LEN) == 0);
	r[n++] = (typeof(r[0])){ "mlock", locked, LEN };
	/* flags through raw system calls: no interposer sees them */
	char *rawdd = t_map_anon(LEN), *rawlo = t_map_anon(LEN);
	CHECK(syscall(SYS_madvise, rawdd, LEN, MADV_DONTDUMP) == 0);
	CHECK(syscall(SYS_mlock, rawlo, LEN) == 0);
	r[n++] = (typeof(r[0])){ "raw MADV_DONTDUMP", rawdd, LEN };
	r[n++] = (typeof(r[0])){ "raw mlock", rawlo, LEN };
	/* smaller than DEDUP_MIN_REGION (64K) */
	char *tiny = t_map_anon(8 * T_PAGE);
	r[n++] = (typeof(r[0])){ "a range under DEDUP_MIN_REGION", tiny, 8 * T_PAGE };
	for (int i = 0; i < n; i++)
		pl_fill(r[i].p, r[i].len / T_PAGE, 61);

	/* a thread whose stack holds the same pages */
	pthread_attr_t at;
	pthread_t th;
	CHECK(pthread_barrier_init(&ready, NULL, 2) == 0 && pthread_barrier_init(&done, NULL, 2) == 0);
	CHECK(pthread_attr_init(&at) == 0 && pthread_attr_setstacksize(&at, 4 * LEN) == 0);
	CHECK(pthread_create(&th, &at, thread_main, NULL) == 0);
	pthread_barrier_wait(&ready);

	/* the control: merges */
	char *ctl = t_map_anon(2 * LEN);
	pl_fill(ctl, NP, 61);
	pl_fill(ctl + LEN, NP, 61);
	bool m, reg;
	double t0 = t_now();
	do {
		usleep(20000);
		pl_look(ctl, 2 * LEN, &m, &reg);
	} while (!m && t_now() - t0 < t_cap());
	if (!m) {
		fprintf(stderr, "FAIL: the control range did not merge\n");
		return T_FAIL;
	}
	usleep(1000000);   /* five reconcile periods (DEDUP_RECONCILE_MS=200) */
	int bad = 0;
	for (int i = 0; i < n; i++) {
		pl_look(r[i].p, r[i].len, &m, &reg);
		if (m || reg) {
			fprintf(stderr, "FAIL: %s: %s\n", r[i].what, m ? "merged" : "registered");
			bad++;
		}
		if (!pl_check(r[i].p, r[i].len / T_PAGE, 61)) {
			fprintf(stderr, "FAIL: %s: content changed\n", r[i].what);
			bad++;
		}
	}
	pl_look(stack_buf, LEN, &m, &reg);
	if (m || reg) {
		fprintf(stderr, "FAIL: a thread stack is %s\n", m ? "merged" : "registered");
		bad++;
	}
	pthread_barrier_wait(&done);
	void *ret;
	CHECK(pthread_join(th, &ret) == 0);
	if (ret) {
		fprintf(stderr, "FAIL: the thread's stack changed\n");
		bad++;
	}
	if (bad)
		return T_FAIL;
	fprintf(stderr, "PASS\n");
	return T_PASS;
}
