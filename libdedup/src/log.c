/* SPDX-License-Identifier: MIT */
/*
 * log.c - one line per message on stderr, without stdio or malloc.
 *
 * Runs in any thread, including the uffd reader and interposed calls, so it
 * formats into a stack buffer and issues a single write(2): no FILE lock that
 * an application thread (possibly blocked on a page we protected) could hold.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

void dd_log(int level, const char *fmt, ...)
{
	char buf[512];
	int n;
	va_list ap;

	/* "stats" logs like "warn", plus the table at shutdown (stats.c) */
	int max = dd_opt.log_level == DEDUP_LOG_STATS ? DEDUP_LOG_WARN : (int)dd_opt.log_level;
	if (level > max)
		return;
	n = snprintf(buf, sizeof(buf), "libdedup[%d]: ", (int)getpid());
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	dd_write_full(STDERR_FILENO, buf, (size_t)n);
}

#ifndef NDEBUG
#include <stdlib.h>
#include <sys/syscall.h>

/* dd_assert_held(): a broken locking rule is a bug to stop at, with its
 * place: the message goes out whatever DEDUP_LOG says. */
void dd_assert_held_at(pthread_mutex_t *m, const char *what, const char *file, int line)
{
	if (dd_likely(m->__data.__owner == (int)syscall(SYS_gettid)))
		return;
	char buf[256];
	int n = snprintf(buf, sizeof(buf), "libdedup[%d]: %s:%d: %s is not held by this thread\n",
			 (int)getpid(), file, line, what);
	dd_write_full(STDERR_FILENO, buf, n > 0 && n < (int)sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
	abort();
}
#endif
