/* SPDX-License-Identifier: MIT */
/*
 * bench.h - dedup-bench: libdedup against kernel KSM on the same workloads.
 *
 * Architecture (one file per job):
 *   main.c    command line, the workload x mode loop, signals, slowdowns.
 *   tables.c  the two tables that define a run: modes and workloads.
 *   run.c     the parent side of one run: spawn the child, sample it every
 *             50-100 ms, decide when the merging has settled, collect.
 *   child.c   the hidden subcommand "__child": builds a synthetic workload
 *             in its own process, turns the merger on, runs the churn
 *             writers, times first writes to merged pages, reports.
 *   family.c  workers: the __child forks its sibling members, relays the
 *             parent's commands to them and sums their answers, so the
 *             parent sees one measured process that is N processes.
 *   redis.c   the redis workload: redis-server as the measured process.
 *   preload.c the preload mode: LD_PRELOAD environment of the measured
 *             process, and libdedup's counters from its published stats file.
 *   ksm.c     /sys/kernel/mm/ksm: save, set, restore (also from signals).
 *   proc.c    /proc readers: Pss, VMAs, CPU time of threads.
 *   report.c  the table on stdout, results.csv/json, series.csv, targets.
 *   plot.c    the PNG (gnuplot, or python3-matplotlib via plot.py).
 *   check_quick.sh  the CTest check of `dedup-bench --quick` (tests/bench.cmake).
 *
 * The parent never merges anything itself and never shares an address space
 * with a measured process: each workload x mode runs in a fresh child, so
 * modes cannot influence each other.
 */
#ifndef DEDUP_BENCH_H
#define DEDUP_BENCH_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#define B_PAGE 4096UL
#define B_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* ---- tables.c: modes and workloads ------------------------------------- */

enum merger { MERGER_NONE, MERGER_KSM, MERGER_LIBDEDUP };

/*
 * A mode: which merger runs, and how the measured process opts in. The
 * preload mode's process gets LD_PRELOAD=<libdedup.so> plus the DEDUP_*
 * environment (preload.c) and registers nothing itself, so it also applies
 * to programs we exec (redis).
 */
struct mode {
	const char *name;
	enum merger merger;
	unsigned ksm_pages_to_scan;  /* KSM modes: settings while the run lasts */
	unsigned ksm_sleep_ms;
	bool api;          /* opts in with code in our child: cannot wrap redis */
	bool preload;      /* opts in with LD_PRELOAD: works for any program */
	bool share;        /* api + dedup_config.share: one sharing group */
	bool ready;        /* false: not run unless asked for by name */
	bool slow;         /* at most the short cap (ksm-default) */
	const char *desc;
};

enum wl_kind { WL_RUNS, WL_SCATTERED, WL_UNIQUE, WL_ZERO, WL_CHURN, WL_REDIS, WL_WORKERS };

struct workload {
	const char *name;
	enum wl_kind kind;
	bool external;     /* the measured process is another program (exec) */
	bool noisy;        /* saving is not monotonic: final = mean of last 1 s */
	const char *desc;
};

extern const struct mode modes[];
extern const size_t nmodes;
extern const struct workload workloads[];
extern const size_t nworkloads;
const struct mode *mode_find(const char *name);
const struct workload *workload_find(const char *name);
/* Why this workload x mode pair is not run (reported as skipped), or NULL. */
const char *pair_skip(const struct workload *w, const struct mode *m);

/* Content of synthetic pages: fill 4 KiB from (seed, id); distinct ids give
 * distinct pages. K distinct contents of "runs", "scattered" and "churn". */
#define WL_K 64
void wl_fill_page(void *page, uint64_t seed, uint64_t id);

/* ---- options ----------------------------------------------------------- */

struct opts {
	bool quick;
	char *workloads;       /* comma list or NULL (all) */
	char *modes;           /* comma list or NULL (every ready mode) */
	size_t size_mib;
	const char *out;
	uint64_t seed;
	double cap_s;          /* time cap per run after "go" */
	double slow_cap_s;     /* time cap for slow modes (ksm-default) */
	double min_s;          /* never settle before this */
	double quiet_s;        /* settled: saving not grown for this long */
	unsigned interval_ms;  /* Pss sampling period */
	unsigned lat_samples;  /* first-write latency: pages sampled */
	unsigned churn_rate;   /* writes per second per churn thread */
	unsigned churn_hot;    /* churn writes go to 1 page in churn_hot */
	unsigned workers;      /* workers: processes, each holding size_mib */
	unsigned redis_requests;
	unsigned redis_reps;
	const char *self;      /* /proc/self/exe, for the child */
	char load_start[64], load_end[64];   /* /proc/loadavg around the runs */
	long max_map_count;    /* vm.max_map_count for the runs */
};
extern struct opts opt;

/* libdedup settings used by the libdedup modes unless DEDUP_* says otherwise */
#define BENCH_DEDUP_INTERVAL_MS 50
#define BENCH_DEDUP_CPU 100

/* ---- results ----------------------------------------------------------- */

/* A figure that may be missing ("n/a" in the table and CSV, null in JSON). */
#define NA (-1e300)
static inline bool is_na(double v) { return v <= NA / 2; }

#define MAX_EXTRA 48
struct kv {
	char key[40];
	char val[40];
};

struct result {
	const struct workload *w;
	const struct mode *m;
	char status[16];        /* ok, skipped, failed */
	char note[256];
	char end_reason[16];    /* settled, cap, interrupted */
	double duration_s;      /* go -> end of sampling */
	size_t size_mib;
	uint64_t pages;         /* pages in the workload's buffer (or dataset) */
	double pss_before_kib, pss_after_kib, saved_kib, saved_pages;
	double net_saved_kib;   /* saved minus the merger's metadata outside Pss */
	double meta_in_kib;     /* the merger's metadata inside the measured Pss */
	double meta_out_kib;    /* ... and outside it (KSM's slab, the group's helper) */
	double baseline_kib;    /* preload x redis: Pss "before" from mode none */
	double baseline_vmas;   /* preload x redis: VMAs "before" from mode none */
	double t50_s, t90_s, t99_s;
	double merger_cpu_s;    /* merger CPU from go to the end of the run */
	double merge_cpu_s;     /* merger CPU until the saving reached 99% */
	double cpu_per_gib;     /* merge_cpu_s per GiB saved */
	double merged_per_cpu;  /* saved pages / merge_cpu_s */
	double pages_scanned;   /* during the run */
	double scanned_per_cpu; /* pages_scanned / merger_cpu_s */
	double vmas_before, vmas_after, vmas_added;
	double cow_p50_us, cow_p99_us, cow_samples;       /* merger running */
	double cow_idle_p50_us, cow_idle_p99_us;          /* merger paused */
	double app_rate;        /* churn writes/s or redis GET/s */
	const char *app_unit;
	double slowdown_pct;    /* vs mode none, same workload */
	struct kv extra[MAX_EXTRA];   /* merger counters etc., for JSON */
	size_t nextra;
};

void result_init(struct result *r, const struct workload *w, const struct mode *m);
void result_extra(struct result *r, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
const char *result_extra_get(const struct result *r, const char *key);

/* ---- proc.c -------------------------------------------------------------- */
double proc_pss_kib(pid_t pid);            /* smaps_rollup Pss, or NA */
long proc_maps_lines(pid_t pid);           /* -1 if gone */
uint64_t proc_task_cpu_ns(pid_t pid, pid_t tid);  /* UINT64_MAX if gone */
const char *proc_cpu_source(void);
/* CPU of a merger: ksmd, or the measured process's libdedup threads
 * (dedup-engine, dedup-uffd, dedup-preload), in every member of a workers
 * family, plus the dedup-share helper serving its group. Keeps the last
 * value of threads that have exited. */
#define MAX_WORKERS 32
struct cpu_tracker {
	pid_t pid[MAX_WORKERS];   /* processes whose threads to look at */
	size_t npid;
	bool by_comm;       /* true: libdedup's threads by name, false: pid itself */
	char group[72];     /* "": no helper; else the group whose helper counts */
	pid_t helper;       /* its pid once found, 0: not (yet) */
	pid_t helper_seen;  /* the last helper found, for the results */
	size_t n;
	struct { pid_t tid; uint64_t ns; bool helper; } t[128];
};
void tracker_init(struct cpu_tracker *t, pid_t pid, bool by_comm);
void tracker_add(struct cpu_tracker *t, pid_t pid);   /* another member */
void tracker_helper(struct cpu_tracker *t, const char *group);
uint64_t tracker_ns(struct cpu_tracker *t);
uint64_t tracker_helper_ns(const struct cpu_tracker *t);   /* the helper's part */
bool proc_read_file(const char *path, char *buf, size_t len);

/* ---- run.c --------------------------------------------------------------- */

/* Lines from a child's report pipe. */
struct linebuf {
	int fd;
	size_t have;
	char buf[8192];
};
/* 1: a line in *line; 0: timeout; -1: EOF or error. Polls in 100 ms slices
 * and gives up early (0) when g_stop is set. */
int lb_read(struct linebuf *lb, char *line, size_t len, int timeout_ms);
/* value of "key=" in a line of k=v words */
bool kv_num(const char *line, const char *key, double *out);

struct preload;   /* preload.c */

/* The parent's view of one run, shared by run.c and redis.c. */
struct run_ctx {
	struct result *r;
	FILE *series;
	pid_t pid;                /* measured process */
	pid_t fam[MAX_WORKERS];   /* workers: every member (fam[0] = pid), */
	size_t nfam;              /* figures are sums over them; else 0 */
	char group[72];           /* libdedup-share: the family's group */
	struct linebuf *rep;      /* child's reports, or NULL (redis) */
	double pss0;              /* Pss at "go", KiB */
	long maps0;
	struct cpu_tracker tr;    /* the merger's CPU */
	uint64_t cpu0;            /* tracker at "go" */
	double t_go;
	long long ksm_scanned0, ksm_full0, ksm_skipped0;
	/* libdedup's counters: the latest "stat" line of an API child, or the
	 * published stats file of a preloaded process (pl) */
	double ld_passes, ld_scanned, ld_cpu_ns;
	double ld_passes0;        /* full passes before "go" (preload) */
	struct preload *pl;       /* preload mode: its stats file, else NULL */
	double cpu_end_s;         /* merger CPU at the end of sampling */
	bool child_died;
};

/* Before "go": baseline Pss, VMAs, merger CPU and KSM counters, then start
 * ksmd for a KSM mode. Returns false (r->status set) on failure. */
bool run_begin(struct run_ctx *c);
/* Sample from "go" until settled or capped; fills the memory, time and
 * CPU figures. Returns false if interrupted or the process died. */
bool run_sample(struct run_ctx *c);
/* After sampling: KSM counters and the process's ksm_stat into r->extra;
 * then net_saved_kib. */
void run_ksm_collect(struct run_ctx *c);
/* Run one workload x mode and fill *r; series: the open series.csv. */
void run_one(struct result *r, FILE *series);
/* Preload: a note when more than 10% of the final saving was made before
 * the clock started (while the data was written: the merger runs from the
 * process's start), so the times are read for what they are. */
void run_note_early(struct result *r, double early_kib, const char *when, double secs);
/* libdedup modes, after sampling: pages scanned and scanned per CPU second
 * from libdedup's own final counters, paired with a CPU read at the same
 * moment; the counters into r->extra (preload). */
void run_ld_final(struct run_ctx *c);

/* ---- child.c ------------------------------------------------------------- */
int child_main(int argc, char **argv);

/* ---- family.c ------------------------------------------------------------ */
/* In the __child, before anything is built: fork n - 1 siblings (they die
 * with it: PR_SET_PDEATHSIG). Returns this process's index, 0 in the
 * leader; a sibling's fds 3 and 4 then talk to the leader, and it runs the
 * same conversation as the leader does with the parent. -1: failed. */
int fam_spawn(unsigned n);
bool fam_leader(void);            /* the leader of a family (with siblings) */
void fam_send(const char *cmd);   /* the parent's command, to every sibling */
/* Wait up to timeout_ms for each sibling's line starting with want and
 * combine them with own (the leader's line, same word) into out: numbers
 * summed, except passes (min) and *_secs (max). false: a sibling failed
 * (out holds an "error ..." line to pass on). */
bool fam_collect(const char *want, const char *own, char *out, size_t len, int timeout_ms);
/* While sampling: each sibling's newest "stat" line combined with own;
 * false (error line in out) if a sibling died. */
bool fam_stat(const char *own, char *out, size_t len);
void fam_pids(char *out, size_t len);   /* "pid,pid,..." of all members */
void fam_end(void);               /* "quit" to siblings, reap them */

/* ---- redis.c ------------------------------------------------------------- */
void redis_run(struct result *r, FILE *series);
bool redis_available(const char **why);

/* ---- preload.c ----------------------------------------------------------- */
/* A private DEDUP_STAT_DIR for one run; NULL on failure. */
struct preload *preload_new(void);
/* In the forked child, before exec: LD_PRELOAD, DEDUP_* (see preload.c). */
void preload_setenv(const struct preload *s);
/* Map the stats file of pid (it appears at dedup_init, in the preloaded
 * library's constructor); false if it did not within timeout_ms. */
bool preload_attach(struct preload *s, pid_t pid, int timeout_ms);
/* Read the latest snapshot into c->ld_* (c may be NULL), waiting up to
 * wait_ms for one newer than the last read. 1: a newer one, 0: none newer,
 * -1: not attached. */
int preload_poll(struct preload *s, struct run_ctx *c, int wait_ms);
/* The last snapshot's counters and options into r->extra. */
void preload_extras(const struct preload *s, struct result *r);
/* Unmap, remove the directory (and a file a killed process left). */
void preload_free(struct preload *s);

/* ---- ksm.c --------------------------------------------------------------- */
bool ksm_usable(const char **why);
int ksm_setup(void);              /* save originals, set run=0 */
int ksm_start(unsigned pages_to_scan, unsigned sleep_ms);
void ksm_stop(void);              /* run=0 */
void ksm_restore(void);           /* originals back (idempotent) */
void ksm_restore_signal_safe(void);
long long ksm_read(const char *file);  /* a counter, -1 if missing */
pid_t ksm_ksmd_pid(void);
void ksm_settings_json(FILE *f);
void ksm_warn_other_users(void);

/* ---- report.c ------------------------------------------------------------ */
void report_table(FILE *f, struct result *rs, size_t n);
void report_targets(FILE *f, struct result *rs, size_t n);
int report_files(const char *dir, struct result *rs, size_t n);
void series_header(FILE *f);

/* ---- plot.c -------------------------------------------------------------- */
int plot_png(const char *dir, struct result *rs, size_t n);

/* ---- main.c -------------------------------------------------------------- */
extern volatile sig_atomic_t g_stop;
extern volatile pid_t g_child;   /* measured process, killed on a 2nd signal */
double now_s(void);
void progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
ssize_t write_full(int fd, const void *buf, size_t len);

#endif
