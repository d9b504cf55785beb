/* SPDX-License-Identifier: MIT */
/*
 * test_signal_thread: the application's signal handlers never run on a
 * thread of libdedup's.
 *
 * A signal sent to the process is delivered to any thread that does not
 * block it. If our engine or uffd reader thread took one, the application's
 * handler would run there, and a handler that writes to a page we had
 * write-protected would leave the reader waiting for itself: every merge and
 * every blocked writer would stop for good. libdedup's threads therefore
 * start with all signals blocked (engine.c, dd_thread_create).
 *
 * The test blocks SIGUSR1 in its only thread (after dedup_init, so the
 * engine's threads did not inherit that) and sends SIGUSR1 to the process:
 * no thread may run the handler until the main thread unblocks it, and then
 * the main thread runs it. With DEDUP_TEST_UNSAFE_SIGNALS=1 (our threads
 * take signals) it fails: tests/core.cmake checks that too.
 */
#include <signal.h>
#include <stdatomic.h>
#include <sys/syscall.h>

#include "tdedup.h"

static _Atomic int calls;
static _Atomic pid_t last_tid;

static void on_usr1(int sig)
{
	(void)sig;
	atomic_store(&last_tid, (pid_t)syscall(SYS_gettid));
	atomic_fetch_add(&calls, 1);
}

int main(void)
{
	pid_t me = (pid_t)syscall(SYS_gettid);
	struct sigaction sa = { .sa_handler = on_usr1, .sa_flags = SA_RESTART };
	sigset_t usr1;

	t_engine_start(20);
	char *buf = t_map_anon(64 * T_PAGE);
	for (int i = 0; i < 64; i++)
		memset(buf + i * T_PAGE, i % 4, T_PAGE);
	CHECK(dedup_register(buf, 64 * T_PAGE) == 0);
	CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	CHECK(pthread_sigmask(SIG_BLOCK, &usr1, NULL) == 0);
	/* Signals until libdedup's threads have surely run with one pending:
	 * at least 20, and until the engine has finished 3 passes since the
	 * first (a count, not a time: on a busy machine 100 ms may not see
	 * our threads run at all); fail if it never does. */
	uint64_t p0 = t_stats().full_passes;
	double give_up = t_now() + t_cap();
	for (int sent = 0; !atomic_load(&calls) && (sent < 20 || t_stats().full_passes < p0 + 3);
	     sent++) {
		if (t_now() > give_up) {
			fprintf(stderr, "FAIL: the engine finished %llu passes in %g s, not 3\n",
				(unsigned long long)(t_stats().full_passes - p0), t_cap());
			_exit(T_FAIL);   /* see below */
		}
		CHECK(kill(getpid(), SIGUSR1) == 0);
		usleep(5000);
	}
	if (atomic_load(&calls)) {
		char path[64], comm[32] = "?";
		snprintf(path, sizeof(path), "/proc/self/task/%d/comm", (int)atomic_load(&last_tid));
		FILE *f = fopen(path, "r");
		if (f) {
			if (fgets(comm, sizeof(comm), f))
				comm[strcspn(comm, "\n")] = 0;
			fclose(f);
		}
		fprintf(stderr, "FAIL: the SIGUSR1 handler ran %d times while the only application "
			"thread blocked it, last on thread %d (%s)\n", atomic_load(&calls),
			(int)atomic_load(&last_tid), comm);
		/* _exit: a thread of ours that ran the handler may be wedged
		 * (the naive variant), and exit's handlers (LeakSanitizer
		 * stopping every thread) can wait for it: once, under ASan on a
		 * busy machine, this run printed the line above and then hung
		 * until CTest's timeout */
		_exit(T_FAIL);
	}
	CHECK(pthread_sigmask(SIG_UNBLOCK, &usr1, NULL) == 0);
	CHECK(atomic_load(&calls) >= 1 && atomic_load(&last_tid) == me);
	fprintf(stderr, "handler ran %d time(s), on the application's thread only\n",
		atomic_load(&calls));
	CHECK(dedup_shutdown() == 0);
	return T_PASS;
}
