/* SPDX-License-Identifier: MIT */
/*
 * internal.h - everything a core file may use: the headers of the modules
 * below, in dependency order. Each module declares its own interface in its
 * header (os.c in os.h, and so on; options.h stands alone, for the tools).
 * docs/design.md has the threads, the locks, a glossary and the life of a
 * page.
 *
 * Module map (one concern per file; "where does a page get replaced?" is
 * merge.c):
 *   base.h     page size, visibility, dd_assert_held, logging (log.c).
 *   os.c       the OS boundary: every mapping call of libdedup (raw, with
 *              "ours" said explicitly), every userfaultfd ioctl, the
 *              present-page walk, the one reader of /proc files, the page
 *              of zeros. Nothing else calls ioctl() on the uffd, maps
 *              memory, or parses /proc/self/maps.
 *   fds.c      our file descriptors: placed above a floor, tagged, and
 *              checked before use, so the program's numbering is its own.
 *   vm.c       memory for our own tables, from os.c: no thread of ours ever
 *              calls the application's malloc (see below).
 *   ranges.c   sorted tables of address ranges.
 *   store.c    the canonical page store: memfd slots, reference counts,
 *              hole punching and slot reuse.
 *   index.c    the stable index (hash -> canonical slot) and the unstable
 *              index (hash -> candidate address, rebuilt every pass).
 *   region.c   registered ranges and their per-page metadata.
 *   discard.c  discards of merged pages, and discards racing a merge.
 *   scan.c     one pass: which pages are present, hashing, candidate choice.
 *   merge.c    the merge protocol (one function per step) and unmerging;
 *              owns S, the scratch area.
 *   engine.c   threads (engine, uffd reader), event loops, pacing, fork,
 *              the engine's init.
 *   child.c    a fork()ed child's merged pages (the guard).
 *   options.c  the option table (environment and struct dedup_config).
 *   stats.c    counters, snapshot and printers; publish.c the live file.
 *   api.c      the public dedup_* functions.
 *   preload/   LD_PRELOAD mode (shared library only): finds the program's
 *              heap, interposes mmap & co., reconciles with /proc/self/maps,
 *              wraps a shared jemalloc's extent hooks. One file per concern;
 *              preload/preload.h is the folder's map and contract.
 *
 * Locks (always taken in this order):
 *   eng.lock   protects regions, indexes, store metadata and the batch.
 *              Held by the engine thread for one batch at a time, and by
 *              API calls. Never held while waiting for the application.
 *   eng.gate   the merge window: held by the merger from the write-protect
 *              of a batch to its wake-up, and by the uffd reader around every
 *              read() of the userfaultfd. Because the reader cannot read
 *              (and so acknowledge) a non-cooperative event while a window is
 *              open, an madvise(MADV_DONTNEED) that races with a merge waits
 *              until the merge is complete. Nothing done under the gate
 *              raises a uffd event, so the gate cannot deadlock.
 *
 * Rule for every thread of ours and every interposed call: no application
 * malloc, no stdio, no lock that application code can hold. An application
 * thread may be blocked on a page we protected while holding its malloc
 * lock; if we then waited for that lock we would never wake it.
 * One exception, made safe by holding nothing: the dedup-preload thread
 * calls jemalloc's mallctl() (preload/jemalloc.c) with no lock of ours held. It may
 * wait there for a jemalloc lock, but the engine never waits for that
 * thread, so every protected page is still released.
 */
#ifndef DEDUP_INTERNAL_H
#define DEDUP_INTERNAL_H

#include "base.h"
#include "options.h"
#include "stats.h"
#include "vm.h"
#include "os.h"
#include "fds.h"
#include "ranges.h"
#include "child.h"
#include "store.h"
#include "group.h"
#include "index.h"
#include "region.h"
#include "discard.h"
#include "engine.h"
#include "scan.h"
#include "merge.h"

#endif /* DEDUP_INTERNAL_H */
