/* SPDX-License-Identifier: MIT */
/*
 * pl_shim - a library preloaded *before* libdedup.so that wraps some of the
 * calls libdedup interposes too, as fakeroot (fstat), libfaketime, a
 * sanitizer runtime (ioctl, mmap, free) or a profiler's preload do: each
 * wrapper forwards to the next definition (dlsym(RTLD_NEXT)), which is
 * libdedup's. Under it, libdedup's own calls of these functions must not
 * come back to its interposers looking like the program's: on 2ce1aa0 the
 * reconcile thread's ioctl(UFFDIO_REGISTER) did (from AddressSanitizer's
 * interceptor), took pl.lock it already held and hung the program.
 * Test: preload_shim_first (LD_PRELOAD=pl_shim.so:libdedup.so pl_workload).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static _Atomic unsigned long calls;   /* so that the wrappers do something */

#define NEXT(name) \
	static __typeof__(&name) next_##name; \
	if (!next_##name) \
		next_##name = (__typeof__(&name))dlsym(RTLD_NEXT, #name); \
	atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed)

__attribute__((visibility("default"))) int ioctl(int fd, unsigned long req, ...)
{
	va_list ap;
	va_start(ap, req);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	NEXT(ioctl);
	return next_ioctl(fd, req, arg);
}

__attribute__((visibility("default"))) int close(int fd)
{
	NEXT(close);
	return next_close(fd);
}

__attribute__((visibility("default"))) int fstat(int fd, struct stat *st)
{
	NEXT(fstat);
	return next_fstat(fd, st);
}

__attribute__((visibility("default"))) void *mmap(void *a, size_t l, int p, int f, int fd, off_t o)
{
	NEXT(mmap);
	return next_mmap(a, l, p, f, fd, o);
}

__attribute__((visibility("default"))) int munmap(void *a, size_t l)
{
	NEXT(munmap);
	return next_munmap(a, l);
}

__attribute__((visibility("default"))) int madvise(void *a, size_t l, int advice)
{
	NEXT(madvise);
	return next_madvise(a, l, advice);
}

__attribute__((visibility("default"))) int mprotect(void *a, size_t l, int p)
{
	NEXT(mprotect);
	return next_mprotect(a, l, p);
}
