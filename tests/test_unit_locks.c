/* SPDX-License-Identifier: MIT */
/*
 * test_unit_locks - the checked "Locking:" rules (internal.h,
 * dd_assert_held) can fail, and rest on a glibc fact that is pinned here.
 *
 *   - glibc records the owner's thread id in a default (normal) mutex it
 *     locks, and clears it on unlock: dd_assert_held() reads that field;
 *   - in a debug build (no NDEBUG: the ASan+UBSan build of tools/check),
 *     dd_assert_held(&eng.lock) aborts, naming the lock, in a thread that
 *     does not hold it - also while another thread holds it - and returns
 *     in the thread that does.
 * In a release build the assertion compiles away: only the glibc fact is
 * checked there.
 */
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

#include "tcommon.h"
#include "internal.h"

static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;

#ifndef NDEBUG
static pthread_mutex_t go = PTHREAD_MUTEX_INITIALIZER;

static void *holder(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&eng.lock);
	pthread_mutex_lock(&go);      /* until the main thread lets go */
	pthread_mutex_unlock(&go);
	pthread_mutex_unlock(&eng.lock);
	return NULL;
}

/* Run fn in a child: did it abort (true) or exit 0 (false)? */
static bool aborts(void (*fn)(void))
{
	pid_t p = fork();
	CHECK(p >= 0);
	if (p == 0) {
		fn();
		_exit(0);
	}
	int st;
	CHECK(waitpid(p, &st, 0) == p);
	CHECK((WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT) || (WIFEXITED(st) && WEXITSTATUS(st) == 0));
	return WIFSIGNALED(st);
}

static void not_held(void) { dd_assert_held(&eng.lock); }
static void held(void)
{
	pthread_mutex_lock(&eng.lock);
	dd_assert_held(&eng.lock);
	pthread_mutex_unlock(&eng.lock);
}
static void held_by_other(void)
{
	pthread_t t;
	pthread_mutex_lock(&go);
	CHECK(pthread_create(&t, NULL, holder, NULL) == 0);
	while (pthread_mutex_trylock(&eng.lock) == 0)   /* until it holds it */
		pthread_mutex_unlock(&eng.lock);
	dd_assert_held(&eng.lock);
}
#endif

int main(void)
{
	/* the glibc fact */
	pid_t tid = (pid_t)syscall(SYS_gettid);
	CHECK(m.__data.__owner == 0);
	pthread_mutex_lock(&m);
	CHECK(m.__data.__owner == tid);
	pthread_mutex_unlock(&m);
	CHECK(m.__data.__owner == 0);
	pthread_mutex_lock(&eng.lock);
	CHECK(eng.lock.__data.__owner == tid);
	pthread_mutex_unlock(&eng.lock);

#ifdef NDEBUG
	fprintf(stderr, "release build: dd_assert_held() compiles away (the ASan build "
		"checks it); the owner field is as it relies on\n");
	return T_PASS;
#else
	CHECK(!aborts(held));
	CHECK(aborts(not_held));
	CHECK(aborts(held_by_other));
	return T_PASS;
#endif
}
