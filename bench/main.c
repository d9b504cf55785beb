/* SPDX-License-Identifier: MIT */
/*
 * main.c - dedup-bench: libdedup against kernel KSM, side by side.
 *
 *   dedup-bench [--quick] [--workload W[,W..]] [--mode M[,M..]] [--size MiB]
 *               [--out DIR] [--seed N] [--cap S] [--max-map-count N] [--workers N]
 *               [--quiet S]
 *
 * For each workload x mode (tables.c) one fresh child process is measured
 * from the outside (run.c, redis.c); the figures are defined in run.c and
 * report.c. Progress goes to stderr, the table to stdout, the files to DIR
 * (default bench-out/): results.csv, results.json, series.csv, saved.png.
 *
 * KSM settings changed for the KSM modes are restored on every exit path
 * (ksm.c). SIGINT/SIGTERM set g_stop: the current run stops, its child is
 * killed, KSM is restored, the partial results are written, exit 130. A
 * second signal restores KSM from the handler and exits at once.
 *
 * Only one dedup-bench runs at a time (flock on /run/lock/dedup-bench.lock);
 * a second one waits.
 *
 * --max-map-count N sets vm.max_map_count for all the runs and puts the old
 * value back on the same paths as KSM's settings, under the machine-wide
 * lock that the tests' wrapper holds too (tests/mmc_lock.h: it waits for a
 * test that runs at another value, and a test waits for it).
 *
 * Exit status: 0 all runs ok or skipped, 1 a run failed, 2 usage, 130
 * interrupted.
 */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "mmc_lock.h"

struct opts opt;
volatile sig_atomic_t g_stop;
volatile pid_t g_child;

double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char progress_prefix[96];

void progress(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	fprintf(stderr, "%s%s\n", progress_prefix, buf);
}

ssize_t write_full(int fd, const void *buf, size_t len)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = write(fd, (const char *)buf + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

static void on_signal(int sig)
{
	if (g_stop) {
		/* second signal: do not wait for the main path */
		if (g_child > 0)
			kill(g_child, SIGKILL);
		ksm_restore_signal_safe();
		mmc_put_back();
		_exit(128 + sig);
	}
	g_stop = sig;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dedup-bench [--quick] [--workload W[,W..]] [--mode M[,M..]] [--size MiB]\n"
		"                   [--out DIR] [--seed N] [--cap SECONDS] [--max-map-count N]\n"
		"                   [--workers N] [--quiet SECONDS]\n"
		"  --quick     small and short: %d MiB, caps of a few seconds (CI)\n"
		"  --size      MiB per workload (default 1024); workers: per process\n"
		"  --workers   processes of the workers workload (default 4; --quick 2)\n"
		"  --quiet     settled: no growth of the saving for this long (default 2; --quick 1)\n"
		"  --out       output directory (default bench-out)\n"
		"  --cap       longest run after go, seconds (default 60; --quick 6)\n"
		"  --max-map-count  set vm.max_map_count to N for the runs (root), put back after\n"
		"workloads:\n", 32);
	for (size_t i = 0; i < nworkloads; i++)
		fprintf(f, "  %-17s %s\n", workloads[i].name, workloads[i].desc);
	fprintf(f, "modes:\n");
	for (size_t i = 0; i < nmodes; i++)
		fprintf(f, "  %-17s %s%s\n", modes[i].name, modes[i].desc,
			modes[i].ready ? "" : " [not available yet]");
}

static bool in_list(const char *list, const char *name)
{
	if (!list)
		return true;
	size_t n = strlen(name);
	for (const char *p = list; *p;) {
		size_t l = strcspn(p, ",");
		if (l == n && strncmp(p, name, n) == 0)
			return true;
		p += l + (p[l] == ',');
	}
	return false;
}

static bool check_list(const char *list, bool modes_list)
{
	char item[64];
	for (const char *p = list; p && *p;) {
		size_t l = strcspn(p, ",");
		snprintf(item, sizeof(item), "%.*s", (int)l, p);
		if (modes_list ? !mode_find(item) : !workload_find(item)) {
			fprintf(stderr, "dedup-bench: unknown %s '%s'\n",
				modes_list ? "mode" : "workload", item);
			return false;
		}
		p += l + (p[l] == ',');
	}
	return true;
}

static bool mode_selected(const struct mode *m)
{
	if (opt.modes)
		return in_list(opt.modes, m->name);
	return m->ready;
}

static int mkdir_p(const char *dir)
{
	char buf[4096];
	snprintf(buf, sizeof(buf), "%s", dir);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, 0755) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/*
 * One dedup-bench at a time on a machine: two would fight over ksmd (one
 * would save the other's settings as "original" and restore those) and
 * disturb each other's timing. flock() on a well-known file; wait for the
 * other instance. DEDUP_BENCH_NO_LOCK=1: the caller holds the lock
 * (check_quick.sh does, around its own before/after KSM snapshots).
 */
#define LOCK_FILE "/run/lock/dedup-bench.lock"
#define LOCK_FILE_ALT "/tmp/dedup-bench.lock"

static int take_lock(void)
{
	const char *v = getenv("DEDUP_BENCH_NO_LOCK");
	if (v && strcmp(v, "1") == 0)
		return 0;
	const char *path = access("/run/lock", W_OK) == 0 ? LOCK_FILE : LOCK_FILE_ALT;
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
	if (fd < 0) {
		fprintf(stderr, "dedup-bench: warning: no lock file %s: %s\n", path, strerror(errno));
		return 0;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) == 0)
		return 0;
	fprintf(stderr, "dedup-bench: another dedup-bench holds %s; waiting for it\n", path);
	while (flock(fd, LOCK_EX) != 0) {
		if (errno != EINTR || g_stop)
			return -1;
	}
	return 0;   /* fd stays open: the lock lasts until we exit */
}

static void slowdowns(struct result *rs, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (is_na(rs[i].app_rate))
			continue;
		for (size_t j = 0; j < n; j++) {
			if (rs[j].w != rs[i].w || rs[j].m->merger != MERGER_NONE ||
			    is_na(rs[j].app_rate) || rs[j].app_rate <= 0)
				continue;
			rs[i].slowdown_pct = (1 - rs[i].app_rate / rs[j].app_rate) * 100;
		}
	}
}

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "__child") == 0)
		return child_main(argc, argv);

	static const struct option lopts[] = {
		{ "quick", no_argument, 0, 'q' },    { "workload", required_argument, 0, 'w' },
		{ "mode", required_argument, 0, 'm' }, { "size", required_argument, 0, 's' },
		{ "out", required_argument, 0, 'o' }, { "seed", required_argument, 0, 'S' },
		{ "cap", required_argument, 0, 'c' }, { "help", no_argument, 0, 'h' },
		{ "max-map-count", required_argument, 0, 'M' },
		{ "workers", required_argument, 0, 'W' }, { "quiet", required_argument, 0, 'Q' },
		{ 0, 0, 0, 0 },
	};
	long size = -1, mmc = -1, workers = -1;
	double cap = -1, quiet = -1;
	int c;

	opt.out = "bench-out";
	opt.seed = 1;
	while ((c = getopt_long(argc, argv, "qw:m:s:o:S:c:h", lopts, NULL)) != -1) {
		switch (c) {
		case 'q': opt.quick = true; break;
		case 'w': opt.workloads = optarg; break;
		case 'm': opt.modes = optarg; break;
		case 's': size = strtol(optarg, NULL, 10); break;
		case 'o': opt.out = optarg; break;
		case 'S': opt.seed = strtoull(optarg, NULL, 10); break;
		case 'c': cap = strtod(optarg, NULL); break;
		case 'M': mmc = strtol(optarg, NULL, 10); break;
		case 'W': workers = strtol(optarg, NULL, 10); break;
		case 'Q': quiet = strtod(optarg, NULL); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc || (opt.workloads && !check_list(opt.workloads, false)) ||
	    (opt.modes && !check_list(opt.modes, true)) || (size != -1 && size < 1) ||
	    (cap != -1 && cap <= 0) || (mmc != -1 && mmc < 1024) ||
	    (workers != -1 && (workers < 1 || workers > MAX_WORKERS)) || (quiet != -1 && quiet <= 0)) {
		usage(stderr);
		return 2;
	}
	/* the defaults: --quick keeps the whole CI run around a minute */
	opt.size_mib = size > 0 ? (size_t)size : opt.quick ? 32 : 1024;
	opt.cap_s = cap > 0 ? cap : opt.quick ? 6 : 60;
	opt.slow_cap_s = opt.quick ? 3 : opt.cap_s;
	if (opt.slow_cap_s > opt.cap_s)
		opt.slow_cap_s = opt.cap_s;
	opt.min_s = opt.quick ? 0.5 : 3;
	opt.quiet_s = quiet > 0 ? quiet : opt.quick ? 1 : 2;
	opt.interval_ms = opt.quick ? 50 : 100;
	opt.lat_samples = opt.quick ? 200 : 2000;
	opt.churn_rate = 20000;
	opt.churn_hot = 16;
	opt.workers = workers > 0 ? (unsigned)workers : opt.quick ? 2 : 4;
	opt.redis_requests = opt.quick ? 2000 : 20000;
	opt.redis_reps = opt.quick ? 1 : 3;

	static char self[4096];
	ssize_t l = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (l <= 0) {
		perror("dedup-bench: /proc/self/exe");
		return 1;
	}
	self[l] = 0;
	opt.self = self;
	if (mkdir_p(opt.out) < 0) {
		fprintf(stderr, "dedup-bench: cannot create %s: %s\n", opt.out, strerror(errno));
		return 1;
	}

	struct sigaction sa = { .sa_handler = on_signal };   /* no SA_RESTART */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (take_lock() < 0)
		return 130;
	if (mmc > 0) {
		/* under the machine-wide lock, put back at exit (atexit) or
		 * from the second signal's handler */
		if (mmc_begin("dedup-bench --max-map-count", -1) < 0 || mmc_set(mmc) < 0) {
			fprintf(stderr, "dedup-bench: cannot set vm.max_map_count=%ld: %s\n", mmc,
				strerror(errno));
			return 1;
		}
		progress("vm.max_map_count=%ld (was %ld) for these runs", mmc, mmc_orig);
	}
	opt.max_map_count = mmc_read_now();

	/* KSM: save and stop it if any KSM mode will run */
	const char *ksm_why = NULL;
	bool want_ksm = false;
	for (size_t i = 0; i < nmodes; i++)
		want_ksm |= modes[i].merger == MERGER_KSM && mode_selected(&modes[i]);
	if (want_ksm) {
		if (!ksm_usable(&ksm_why) || ksm_setup() < 0) {
			if (!ksm_why)
				ksm_why = "cannot save /sys/kernel/mm/ksm settings";
		} else {
			ksm_warn_other_users();
		}
	}

	size_t total = 0;
	for (size_t wi = 0; wi < nworkloads; wi++)
		for (size_t mi = 0; mi < nmodes; mi++)
			total += in_list(opt.workloads, workloads[wi].name) && mode_selected(&modes[mi]);
	struct result *rs = calloc(total ? total : 1, sizeof(*rs));
	char path[4096];
	snprintf(path, sizeof(path), "%s/series.csv", opt.out);
	FILE *series = fopen(path, "w");
	if (!rs || !series) {
		fprintf(stderr, "dedup-bench: cannot write %s\n", path);
		return 1;
	}
	series_header(series);

	/* other work on the machine skews every timing: say so */
	proc_read_file("/proc/loadavg", opt.load_start, sizeof(opt.load_start));
	opt.load_start[strcspn(opt.load_start, "\n")] = 0;
	if (strtod(opt.load_start, NULL) > 1.0)
		fprintf(stderr, "dedup-bench: warning: machine busy (loadavg %s): CPU and latency "
				"figures will be noisy\n", opt.load_start);

	size_t n = 0;
	double t_start = now_s();
	for (size_t wi = 0; wi < nworkloads && !g_stop; wi++) {
		const struct workload *w = &workloads[wi];
		if (!in_list(opt.workloads, w->name))
			continue;
		for (size_t mi = 0; mi < nmodes && !g_stop; mi++) {
			const struct mode *m = &modes[mi];
			if (!mode_selected(m))
				continue;
			struct result *r = &rs[n++];
			result_init(r, w, m);
			snprintf(progress_prefix, sizeof(progress_prefix), "[%2zu/%zu %s x %s] ", n, total,
				 w->name, m->name);
			const char *skip = pair_skip(w, m);
			if (m->merger == MERGER_KSM && ksm_why)
				skip = ksm_why;
			if (skip) {
				snprintf(r->status, sizeof(r->status), "skipped");
				snprintf(r->note, sizeof(r->note), "%s", skip);
			} else {
				/* a preloaded program we exec (redis) merges
				 * before "go": count from none's Pss and VMAs */
				bool early = m->preload && w->external;
				for (size_t j = 0; early && j + 1 < n; j++) {
					if (rs[j].w == w && rs[j].m->merger == MERGER_NONE &&
					    strcmp(rs[j].status, "ok") == 0) {
						r->baseline_kib = rs[j].pss_before_kib;
						r->baseline_vmas = rs[j].vmas_before;
					}
				}
				if (early && is_na(r->baseline_kib))
					snprintf(r->note, sizeof(r->note),
						 "no none row to count from: merging before go is missed");
				run_one(r, series);
			}
			fflush(series);
			progress("%s%s%s", r->status, r->note[0] ? ": " : "", r->note);
		}
	}
	progress_prefix[0] = 0;
	fclose(series);
	proc_read_file("/proc/loadavg", opt.load_end, sizeof(opt.load_end));
	opt.load_end[strcspn(opt.load_end, "\n")] = 0;
	ksm_restore();
	if (mmc > 0) {
		mmc_put_back();
		progress("vm.max_map_count back to %ld", mmc_read_now());
	}
	if (g_stop)
		progress("interrupted: KSM settings restored; writing partial results");

	slowdowns(rs, n);
	report_table(stdout, rs, n);
	report_targets(stdout, rs, n);
	fflush(stdout);
	int err = report_files(opt.out, rs, n);
	if (err < 0)
		fprintf(stderr, "dedup-bench: cannot write results to %s: %s\n", opt.out,
			strerror(-err));
	if (plot_png(opt.out, rs, n) < 0)
		progress("no plot: neither gnuplot nor python3-matplotlib produced %s/saved.png",
			 opt.out);
	progress("done in %.0f s; results in %s/", now_s() - t_start, opt.out);

	if (g_stop)
		return 130;
	if (err < 0)
		return 1;
	for (size_t i = 0; i < n; i++)
		if (strcmp(rs[i].status, "ok") != 0 && strcmp(rs[i].status, "skipped") != 0)
			return 1;
	return 0;
}
