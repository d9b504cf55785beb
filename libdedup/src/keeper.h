/* SPDX-License-Identifier: MIT */
/*
 * keeper.h - a userfaultfd kept alive by an io_uring (keeper.c): the engine's
 * uffd reader (engine.c) and a fork()ed child's guard (child.c).
 */
#ifndef DEDUP_KEEPER_H
#define DEDUP_KEEPER_H

#include <liburing.h>
#include <stdbool.h>
#include <sys/types.h>

/* One thread's: the thread that called dd_keeper_init() uses it alone. */
struct dd_keeper {
	struct io_uring ring;
	bool have;          /* the ring works: the uffd is its fixed file 0 */
	bool recoverable;   /* and can be installed again (Linux 6.8) */
	bool polled;        /* a poll of the uffd is in flight */
	bool extra_polled;  /* a poll of the caller's other descriptor too */
	bool no_nowait;     /* RWF_NOWAIT refused: reads go through the number */
};

bool dd_keeper_init(struct dd_keeper *k, int uffd);
int dd_keeper_install(struct dd_keeper *k);
ssize_t dd_keeper_read(struct dd_keeper *k, void *buf, size_t len);
int dd_keeper_wait(struct dd_keeper *k, int extra_fd, int timeout_ms);
bool dd_keeper_renumber(struct dd_keeper *k, int *var);
bool dd_keeper_works(int uffd);
void dd_keeper_exit(struct dd_keeper *k);

#endif /* DEDUP_KEEPER_H */
