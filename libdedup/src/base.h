/* SPDX-License-Identifier: MIT */
/*
 * base.h - what every file of libdedup uses: page size, visibility, branch
 * hints, the checked locking rules (dd_assert_held), logging (log.c) and the
 * debug trace (stats.c).
 */
#ifndef DEDUP_BASE_H
#define DEDUP_BASE_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "libdedup.h"

#define DD_PAGE_SHIFT 12
#define DD_PAGE ((size_t)1 << DD_PAGE_SHIFT)
#define DD_HIDDEN __attribute__((visibility("hidden")))
#define DD_API __attribute__((visibility("default")))
#define dd_likely(x) __builtin_expect(!!(x), 1)
#define dd_unlikely(x) __builtin_expect(!!(x), 0)
#define DD_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static inline bool dd_page_aligned(uintptr_t x) { return (x & (DD_PAGE - 1)) == 0; }

/*
 * The "Locking:" rules that can be checked: dd_assert_held(&eng.lock) at
 * the top of a function that needs the caller to hold a mutex. In debug
 * builds (no NDEBUG: the ASan+UBSan build of tools/check is one) it aborts,
 * naming the lock and the place, when the calling thread is not the
 * mutex's owner; glibc records the owner's thread id in every mutex it
 * locks, normal ones included (tests/test_unit_locks.c pins that down).
 * Release builds compile it away.
 */
#ifndef NDEBUG
#define dd_assert_held(m) dd_assert_held_at((m), #m, __FILE__, __LINE__)
void dd_assert_held_at(pthread_mutex_t *m, const char *what, const char *file, int line);
#else
#define dd_assert_held(m) ((void)0)
#endif

void dd_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define dd_err(...) dd_log(DEDUP_LOG_ERROR, __VA_ARGS__)
#define dd_warn(...) dd_log(DEDUP_LOG_WARN, __VA_ARGS__)
#define dd_info(...) dd_log(DEDUP_LOG_INFO, __VA_ARGS__)
#define dd_debug(...) dd_log(DEDUP_LOG_DEBUG, __VA_ARGS__)

extern bool dd_trace_on;
void dd_trace(char op, uintptr_t a, size_t len, long v);
void dd_trace_dump(uintptr_t a);
#define DD_TRACE(op, a, len, v) do { if (dd_unlikely(dd_trace_on)) dd_trace(op, a, len, v); } while (0)

#endif /* DEDUP_BASE_H */
