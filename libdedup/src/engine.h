/* SPDX-License-Identifier: MIT */
/*
 * engine.h - the process-wide engine state (struct dd_engine eng) and its
 * threads: engine, uffd reader (engine.c).
 */
#ifndef DEDUP_ENGINE_H
#define DEDUP_ENGINE_H

#include "base.h"

struct dd_merge_item {
	uintptr_t addr;
	uint32_t target;   /* slot + 1, or DD_SLOT_ZERO */
	uint32_t state;    /* merge.c's per-item state */
};

#define DD_EVRING 4096
struct dd_event {
	uint8_t type;            /* UFFD_EVENT_REMOVE or UFFD_EVENT_REMAP */
	uintptr_t from, to;      /* REMOVE: [from, from+len) */
	size_t len;
};

struct dd_engine {
	pthread_mutex_t lock;   /* see the top of this file */
	pthread_mutex_t gate;
	int uffd;
	_Atomic uint32_t ctl;   /* futex: non-zero wakes the engine (kick, stop) */
	uintptr_t doorbell;     /* D: one page registered MISSING; discarding it
				   wakes the uffd reader (engine.c) */
	_Atomic bool reader_stop;
	bool uffd_recoverable;  /* the reader can install the uffd again */
	_Atomic bool fds_lost;  /* the program took our descriptors: passive */
	void (*on_fds_lost)(void);   /* preload/: go passive too */
	bool running;
	_Atomic bool stop;
	pthread_t engine_thr, reader_thr;
	char *cmpbuf;           /* batch_pages pages: S read back for comparing (merge.c) */
	bool cmpbuf_used;       /* written since dd_merge_free_scratch() gave it back */
	struct dd_merge_item *batch;
	size_t nbatch;
	/* REMOVE/REMAP events read by the uffd reader (written under the gate):
	 * merge.c follows them for a parked page, engine.c applies REMAPs to
	 * the regions. */
	struct dd_event ev[DD_EVRING];
	_Atomic uint64_t ev_head;      /* sequence of the next event */
	uint64_t ev_applied;           /* engine: events applied to regions */
	/* [parked, parked_end): window whose pages sit in S while the merger is
	 * out of the gate (merge.c); the reader leaves their faults alone */
	_Atomic uintptr_t parked, parked_end;
	/* T, its target and length while merge.c moves a new run from T into
	 * place: the REMAP that raises is ours, the reader does not record it.
	 * All three: T's address is free again once it moved, and the program
	 * may map and move memory from there before placing_from is cleared
	 * (pl_calls: that REMAP was skipped, the discard marks stayed behind) */
	_Atomic uintptr_t placing_from, placing_to, placing_len;
	/* odd while the reader reads and handles messages (drain_uffd): a
	 * thread whose event was read knows it handled once this has moved on
	 * or is even (discard.c, dd_discard_free_end) */
	_Atomic uint64_t drain_gen;
	/* a fork() is under way: no merge window or unmerging starts (engine.c) */
	_Atomic bool forking;
	_Atomic bool fork_snap_failed; /* prefork could not copy the discard marks */
	/* new regions are fragile (scan.c): set by the preload library, whose
	 * regions libc may unmap or shrink behind its back */
	bool fragile_regions;
	bool keep_spares;              /* preload: spare mappings for a give-back (merge.c) */
	bool child;                    /* we are a fork()ed child */
	uintptr_t cursor;              /* dedup_scan_now's pass */
	/* VMA accounting for the budget */
	long maps_at_pass;      /* /proc/self/maps lines at the last count */
	long vmas_this_pass;    /* added by merges since that count */
	uint64_t maps_counted_ns, maps_count_cpu_ns;   /* when, and what it cost */
	uint64_t vma_budget;    /* dd_engine_size_budget(), at each recount; written
				 * under eng.lock, read without it (stats): __atomic */
	uint64_t budget_wait_pass;   /* pages waiting on the budget, this pass so far
				       (scan.c, merge.c); dd_cnt.budget_waiting at its end */
	uint64_t zero_hash;
	uint64_t pass_gen;
	uint64_t cpu_base;      /* thread CPU already added to the counter */
};
extern struct dd_engine eng;

int dd_engine_init(const char **why);   /* eng.lock held: uffd, tables, threads */
void dd_engine_size_budget(long own);  /* eng.lock held: the VMA budget from own mappings */
void dd_engine_fini(void);
int dd_engine_start(void);
void dd_engine_stop(void);
void dd_engine_kick(void);
/* set*id() ahead: our threads take the caller's capabilities (engine.c) */
void dd_creds_sync(unsigned others, void (*wake_others)(void));
void dd_creds_follow(void);
void dd_creds_thread_start(void);
void dd_engine_child_reset(void);
void dd_fork_serialize(void);   /* atfork prepare handlers: one fork() at a time */
void dd_engine_account_cpu(uint64_t *last);
bool dd_engine_uffd_back(void);   /* eng.gate held: eng.uffd ours again? */
int dd_thread_create(pthread_t *t, void *(*fn)(void *), void *arg);   /* signals blocked */

#endif /* DEDUP_ENGINE_H */
