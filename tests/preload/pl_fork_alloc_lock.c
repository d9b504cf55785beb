/* SPDX-License-Identifier: MIT */
/*
 * pl_fork_alloc_lock - reproducer for an open bug (README "Known bugs"):
 * fork() can deadlock when another thread holds an allocator mutex and
 * waits in a userfault that only libdedup's uffd reader resolves.
 *
 * libdedup's fork handlers run before the allocator's (they were registered
 * later) and hold pl.lock, eng.lock and eng.gate from then on. jemalloc's
 * prefork handler then waits for its arena mutexes. If a thread holding one
 * writes jemalloc metadata on a registered page left write-protected after a
 * merge window (the reader un-protects such pages), it waits for the reader,
 * the reader waits for eng.gate, and the forking thread waits for the mutex.
 * Seen here with the build before jemalloc's extent hooks too.
 *
 * Two threads allocate, fill and free 1-7 MiB (jemalloc, purging at once)
 * while the main thread forks 300 times; an alarm turns a fork() that does
 * not return into a failure. Exit 0 pass, 1 fail (hang), 77 skip.
 */
#include <signal.h>
#include <stdatomic.h>

#include "pl.h"

static atomic_bool stop;
static char *volatile sink;

static void *churn(void *arg)
{
	for (unsigned long n = 0; !atomic_load(&stop); n++) {
		size_t size = ((n % 7) + 1) << 20;
		char *p = malloc(size);
		CHECK(p);
		memset(p, (int)n, size);
		sink = p;
		free(sink);
	}
	return NULL;
}

static void on_alarm(int sig)
{
	static const char msg[] = "FAIL: fork() did not return within 20 s (deadlock)\n";
	(void)!write(2, msg, sizeof(msg) - 1);
	_exit(T_FAIL);
}

int main(int argc, char **argv)
{
	int forks = argc > 1 ? atoi(argv[1]) : 300;
	pthread_t thr[2];

	pl_need_uffd();
	if (!dlsym(RTLD_DEFAULT, "mallctl"))
		t_skip("jemalloc is not the allocator (preload libjemalloc.so.2)");
	signal(SIGALRM, on_alarm);
	for (int i = 0; i < 2; i++)
		CHECK(pthread_create(&thr[i], NULL, churn, NULL) == 0);
	for (int i = 0; i < forks; i++) {
		int st;
		alarm(20);
		pid_t pid = fork();
		alarm(0);
		CHECK(pid >= 0);
		if (pid == 0)
			_exit(0);
		CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	atomic_store(&stop, true);
	for (int i = 0; i < 2; i++)
		pthread_join(thr[i], NULL);
	fprintf(stderr, "PASS: %d forks\n", forks);
	return T_PASS;
}
