/* SPDX-License-Identifier: MIT */
/*
 * dedup-stat - show what libdedup is doing in running processes.
 *
 * Reads the live stats files that libdedup's engine publishes (one per
 * process, layout and seqlock in libdedup/src/publish.h, design in
 * docs/stats.md): a list of every process, the full table for one, a
 * top-like --watch view with rates, JSON and Prometheus text output.
 *
 * The tool needs no cooperation from the application: it maps each file
 * read-only and copies a consistent snapshot with the seqlock. A file whose
 * process is gone is stale: it is ignored, and removed when we may.
 * Single threaded; an ordinary program (stdio and malloc are fine here).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <glob.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "publish.h"
#include "share_query.h"

enum {
	EXIT_OK = 0,
	EXIT_ERROR = 1,      /* usage, unreadable stats, other errors */
	EXIT_NO_PROCESS = 2, /* no process with that PID */
	EXIT_NO_LIBDEDUP = 3 /* the process does not publish libdedup stats */
};

/* ---- the figures: one table drives the PID view, JSON and Prometheus ---- */

enum kind { COUNTER, GAUGE };
enum unit { PAGES, BYTES, NUMBER, NSEC };

struct field {
	const char *name;     /* struct dedup_stats member = JSON key */
	size_t off;
	const char *section;  /* heading in the PID view */
	enum kind kind;
	enum unit unit;
	const char *prom;     /* Prometheus name after "libdedup_" */
	const char *label;    /* extra Prometheus label, or NULL */
	const char *meaning;  /* one line: the PID view and # HELP */
};

#define F(name, sec, kind, unit, prom, label, meaning) \
	{ #name, offsetof(struct dedup_stats, name), sec, kind, unit, prom, label, meaning }
static const struct field fields[] = {
	F(bytes_saved, "Memory saved", GAUGE, BYTES, "saved_bytes", NULL,
	  "memory saved now: (pages_sharing - pages_shared + zero_pages) x page size"),
	F(metadata_bytes, "Memory saved", GAUGE, BYTES, "metadata_bytes", NULL,
	  "memory libdedup itself uses for its tables (indexes, per-page data)"),
	F(pages_sharing, "Memory saved", GAUGE, PAGES, "pages_sharing", NULL,
	  "pages that now map a canonical page (ksm_merging_pages)"),
	F(pages_shared, "Memory saved", GAUGE, PAGES, "pages_shared", NULL,
	  "canonical pages in use: the one copy kept of each merged content"),
	F(zero_pages, "Memory saved", GAUGE, PAGES, "zero_pages", NULL,
	  "zero-filled pages mapped to the kernel's zero page (ksm_zero_pages)"),
	F(group_pages, "Memory saved", GAUGE, PAGES, "group_pages", NULL,
	  "pages that map a canonical page of the process's sharing group (DEDUP_SHARE);"
	  " not in pages_sharing or bytes_saved"),
	F(merges, "Merging", COUNTER, NUMBER, "merges_total", NULL,
	  "successful merges since the engine started (a page merged again counts again)"),
	F(cow_breaks, "Merging", COUNTER, NUMBER, "cow_breaks_total", NULL,
	  "merged pages later written: the kernel gave the writer a private copy"),
	F(store_slots_freed, "Merging", COUNTER, NUMBER, "store_slots_freed_total", NULL,
	  "canonical pages released because no page mapped them any more"),
	F(full_passes, "Scanning", COUNTER, NUMBER, "full_passes_total", NULL,
	  "completed passes over every registered range"),
	F(pages_scanned, "Scanning", COUNTER, PAGES, "pages_scanned_total", NULL,
	  "pages hashed by the scanner, all passes"),
	F(pages_skipped_smart, "Scanning", COUNTER, PAGES, "pages_skipped_smart_total", NULL,
	  "pages not hashed in a pass: unchanged and unmatched for passes before (smart scan)"),
	F(candidates, "Scanning", COUNTER, PAGES, "candidates_total", NULL,
	  "pages unchanged since the previous pass, offered for merging"),
	F(skipped_volatile, "Skipped pages, by reason", COUNTER, PAGES, "pages_skipped_total",
	  "volatile", "changed since the previous pass (not stable enough to merge yet)"),
	F(skipped_budget, "Skipped pages, by reason", COUNTER, PAGES, "pages_skipped_total",
	  "budget", "not merged because the VMA budget was spent"),
	F(skipped_pinned, "Skipped pages, by reason", COUNTER, PAGES, "pages_skipped_total",
	  "pinned", "pinned, or shared with another process (UFFDIO_MOVE said EBUSY)"),
	F(skipped_mismatch, "Skipped pages, by reason", COUNTER, PAGES, "pages_skipped_total",
	  "mismatch", "hash matched but the content did not (a hash collision)"),
	F(skipped_raced, "Skipped pages, by reason", COUNTER, PAGES, "pages_skipped_total",
	  "raced", "written or remapped while being merged; left as it was"),
	F(vmas_added, "Mappings", GAUGE, NUMBER, "vmas_added", NULL,
	  "mappings (VMAs) merging added to the process (estimate), held to vma_budget"),
	F(vma_budget, "Mappings", GAUGE, NUMBER, "vma_budget", NULL,
	  "mappings the engine may add (DEDUP_VMA_BUDGET; default vm.max_map_count - max(4 x own, 4096))"),
	F(regions, "Mappings", GAUGE, NUMBER, "regions", NULL,
	  "ranges registered (dedup_register() or the preload library)"),
	F(bytes_registered, "Mappings", GAUGE, BYTES, "registered_bytes", NULL,
	  "total length of the registered ranges"),
	F(engine_cpu_ns, "Engine", COUNTER, NSEC, "engine_cpu_seconds_total", NULL,
	  "CPU time of libdedup's threads and of dedup_scan_now() passes"),
	F(budget_waiting, "Waiting on vm.max_map_count", GAUGE, PAGES, "budget_waiting_pages", NULL,
	  "MiB waiting on vm.max_map_count: duplicates the VMA budget kept from merging"
	  " at the last pass, what a larger limit would let merge (pages saved)"),
	F(runs_given_back, "Waiting on vm.max_map_count", COUNTER, NUMBER, "runs_given_back_total",
	  NULL, "merged runs unmerged to give their mappings back (for a longer run, or an ENOMEM)"),
	F(enomem_retries, "Waiting on vm.max_map_count", COUNTER, NUMBER, "enomem_retries_total",
	  NULL, "program calls that failed with ENOMEM, retried after giving mappings back"),
};
#undef F
/* Every member of struct dedup_stats but .size has a row. */
#define NFIELDS (sizeof(fields) / sizeof(fields[0]))
_Static_assert(NFIELDS == sizeof(struct dedup_stats) / sizeof(uint64_t) - 1,
	       "a member of struct dedup_stats has no row in fields[]");

static uint64_t field_value(const struct dedup_stats *st, const struct field *f)
{
	uint64_t v;
	memcpy(&v, (const char *)st + f->off, sizeof(v));
	return v;
}

/* ---- options ------------------------------------------------------------ */

static struct {
	const char *dir;       /* --dir */
	bool json, prom;
	bool watch;
	double interval;       /* --watch seconds */
	long count;            /* --count: refreshes, 0 = until stopped */
	bool keep_stale;       /* --no-clean */
	bool groups;           /* --groups: the sharing groups only */
} opt = { .interval = 1.0 };

static volatile sig_atomic_t stop;
static void on_signal(int sig) { stop = 1; }

/* ---- finding and reading stats files ------------------------------------ */

/* One publishing process, one consistent sample. */
struct sample {
	int pid;
	char comm[16];
	char path[PATH_MAX];
	uint64_t start_time;
	uint64_t lib_version;
	uint64_t started_realtime_ns, started_mono_ns;
	uint32_t page_size;
	struct dd_pub_live live;
};

struct samples {
	struct sample *v;
	size_t n, cap;
	size_t denied;         /* files we were not allowed to read */
};

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n);
	if (!p) {
		fprintf(stderr, "dedup-stat: out of memory\n");
		exit(EXIT_ERROR);
	}
	return p;
}

struct dirs {
	char **v;
	dev_t *dev;
	ino_t *ino;
	size_t n;
};

/* Add a directory to look in, once (the same directory may be reached by
 * two names, e.g. $XDG_RUNTIME_DIR and the /run/user glob). */
static void dirs_add(struct dirs *d, const char *path)
{
	struct stat st;

	if (stat(path, &st) < 0 || !S_ISDIR(st.st_mode)) {
		if (opt.dir && path == opt.dir)
			fprintf(stderr, "dedup-stat: %s: %s\n", path,
				errno ? strerror(errno) : "not a directory");
		return;
	}
	for (size_t i = 0; i < d->n; i++)
		if (d->dev[i] == st.st_dev && d->ino[i] == st.st_ino)
			return;
	d->v = xrealloc(d->v, (d->n + 1) * sizeof(*d->v));
	d->dev = xrealloc(d->dev, (d->n + 1) * sizeof(*d->dev));
	d->ino = xrealloc(d->ino, (d->n + 1) * sizeof(*d->ino));
	d->v[d->n] = strdup(path);
	d->dev[d->n] = st.st_dev;
	d->ino[d->n] = st.st_ino;
	d->n++;
}

static void dirs_free(struct dirs *d)
{
	for (size_t i = 0; i < d->n; i++)
		free(d->v[i]);
	free(d->v);
	free(d->dev);
	free(d->ino);
}

static void dirs_glob(struct dirs *d, const char *pattern)
{
	glob_t g;
	if (glob(pattern, GLOB_NOSORT | GLOB_ONLYDIR, NULL, &g) == 0)
		for (size_t i = 0; i < g.gl_pathc; i++)
			dirs_add(d, g.gl_pathv[i]);
	globfree(&g);
}

/* The user's own directories, each followed by sub: $XDG_RUNTIME_DIR/
 * libdedup, then where XDG_RUNTIME_DIR points in a login session, for when
 * ours is unset or differs from the application's (su, sudo -u, cron),
 * then /tmp/libdedup-UID (publish.h, dd_pub_private_dir()). */
static void user_dirs(struct dirs *d, const char *sub)
{
	char buf[PATH_MAX];
	const char *env = getenv("XDG_RUNTIME_DIR");

	if (env && *env) {
		snprintf(buf, sizeof(buf), "%s/libdedup%s", env, sub);
		dirs_add(d, buf);
	}
	snprintf(buf, sizeof(buf), "/run/user/%u/libdedup%s", (unsigned)geteuid(), sub);
	dirs_add(d, buf);
	snprintf(buf, sizeof(buf), "/tmp/libdedup-%u%s", (unsigned)geteuid(), sub);
	dirs_add(d, buf);
}

/* Where libdedup may have published (the library's order, publish.h);
 * root also looks into every user's directories. */
static struct dirs stat_dirs(void)
{
	struct dirs d = { 0 };
	const char *env = getenv(DD_PUB_ENV_DIR);

	if (opt.dir) {
		errno = 0;
		dirs_add(&d, opt.dir);
		return d;
	}
	if (env && *env) {
		dirs_add(&d, env);
		return d;
	}
	dirs_add(&d, DD_PUB_RUN_DIR);
	user_dirs(&d, "");
	if (geteuid() == 0) {
		dirs_glob(&d, "/run/user/*/libdedup");
		dirs_glob(&d, "/tmp/libdedup-*");
	}
	return d;
}

/*
 * Does process pid map the file (st, named base)? Yes if a line of
 * /proc/<pid>/maps has its inode or its name; also yes when the maps cannot
 * be read: only positive evidence of absence makes a file stale, so a live
 * process's file is never deleted by mistake.
 */
static bool mapped_by(int pid, const struct stat *st, const char *base)
{
	char path[64], line[PATH_MAX + 128];
	bool found = false;
	size_t blen = strlen(base);

	snprintf(path, sizeof(path), "/proc/%d/maps", pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return true;
	while (!found && fgets(line, sizeof(line), f)) {
		unsigned long long ino = 0;
		int name_at = 0;
		if (sscanf(line, "%*s %*s %*s %*s %llu %n", &ino, &name_at) < 1)
			continue;
		if (ino == (unsigned long long)st->st_ino && ino != 0) {
			found = true;
			break;
		}
		char *name = line + name_at, *end = name + strcspn(name, "\n");
		*end = 0;
		if ((size_t)(end - name) >= 10 && !strcmp(end - 10, " (deleted)"))
			end[-10] = 0, end -= 10;
		if ((size_t)(end - name) > blen && end[-(long)blen - 1] == '/' &&
		    !strcmp(end - blen, base))
			found = true;
	}
	fclose(f);
	return found;
}

/*
 * Remove a stale file (fd open on it), unless it changed under us (a new
 * process with the same pid may just have renamed its own file into place)
 * or a process still holds its lock: the publisher keeps a shared flock()
 * while it lives, which also covers a publisher whose pid we cannot see
 * (another pid namespace). Such a file is hidden, never deleted.
 */
static void remove_stale(int fd, const char *path, const struct stat *seen)
{
	struct stat now;
	if (opt.keep_stale || flock(fd, LOCK_EX | LOCK_NB) < 0)
		return;
	if (lstat(path, &now) == 0 && now.st_dev == seen->st_dev && now.st_ino == seen->st_ino)
		unlink(path);   /* may fail (not our directory): then just ignore it */
	flock(fd, LOCK_UN);
}

enum load { L_OK, L_NOFILE, L_STALE, L_INVALID, L_DENIED, L_BUSY };

/* A file's owner may truncate it while we read it through the mapping
 * (root reads every user's files): SIGBUS. While bus_armed, that makes the
 * file invalid instead of ending dedup-stat and every other process's
 * figures with it. */
static sigjmp_buf bus_jmp;
static volatile sig_atomic_t bus_armed;

static void on_sigbus(int sig)
{
	if (bus_armed)
		siglongjmp(bus_jmp, 1);
	signal(sig, SIG_DFL);
	raise(sig);
}

/* Read <dir>/<pid>.stats into *out, if its process is alive. */
static enum load load_file(const char *dir, int pid, struct sample *out)
{
	char path[PATH_MAX], base[32];
	struct stat st;
	uint64_t start = 0;
	volatile enum load ret = L_OK;   /* volatile: sigsetjmp below */
	int fd, r;

	snprintf(base, sizeof(base), "%d" DD_PUB_SUFFIX, pid);
	if (snprintf(path, sizeof(path), "%s/%s", dir, base) >= (int)sizeof(path))
		return L_INVALID;
	/* O_NONBLOCK: anyone may put a FIFO named <pid>.stats in a directory
	 * we scan (root scans /tmp/libdedup-*); opening it must not hang us. */
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return L_NOFILE;
		if (errno != EACCES && errno != EPERM)
			return L_INVALID;
		/* another user's file: stale if its process is gone (not
		 * ours to remove), else a process we may not look at */
		return dd_pub_proc_stat(pid, NULL, NULL) == -ENOENT ? L_STALE : L_DENIED;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return L_INVALID;
	}
	/* Liveness first: a dead pid's file is stale whatever it holds. */
	r = dd_pub_proc_stat(pid, &start, NULL);
	if (r == -ENOENT) {
		remove_stale(fd, path, &st);
		close(fd);
		return L_STALE;
	}
	const struct dd_pub *p = MAP_FAILED;
	if ((size_t)st.st_size >= sizeof(struct dd_pub))
		p = mmap(NULL, DD_PUB_FILE_SIZE, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		close(fd);
		return L_INVALID;
	}
	static bool bus_handler;
	if (!bus_handler) {
		struct sigaction sa = { .sa_handler = on_sigbus };
		sigaction(SIGBUS, &sa, NULL);
		bus_handler = true;
	}
	if (sigsetjmp(bus_jmp, 1)) {   /* the file shrank under us */
		bus_armed = 0;
		munmap((void *)p, DD_PUB_FILE_SIZE);
		close(fd);
		return L_INVALID;
	}
	bus_armed = 1;
	if (memcmp(p->magic, DD_PUB_MAGIC, sizeof(p->magic)) || p->version != DD_PUB_VERSION ||
	    p->pid != pid) {
		ret = L_INVALID;
	} else if ((r == 0 && p->start_time != start) || !mapped_by(pid, &st, base)) {
		/* pid reused, or the process exec()ed or exited without
		 * dedup_shutdown() and its pid came back */
		remove_stale(fd, path, &st);
		ret = L_STALE;
	} else if (dd_pub_read(p, &out->live) < 0) {
		ret = L_BUSY;
	} else {
		out->pid = pid;
		memcpy(out->comm, p->comm, sizeof(out->comm));
		out->comm[sizeof(out->comm) - 1] = 0;
		snprintf(out->path, sizeof(out->path), "%s", path);
		out->start_time = p->start_time;
		out->lib_version = p->lib_version;
		out->started_realtime_ns = p->started_realtime_ns;
		out->started_mono_ns = p->started_mono_ns;
		out->page_size = p->page_size ? p->page_size : 4096;
	}
	bus_armed = 0;
	munmap((void *)p, DD_PUB_FILE_SIZE);
	close(fd);
	return ret;
}

/*
 * The directory of the stats file process pid maps, from /proc/<pid>/maps,
 * into buf: how we find a publisher whose directory we would not look in
 * (its XDG_RUNTIME_DIR or DEDUP_STAT_DIR is not ours). False if none.
 */
static bool mapped_dir(int pid, char *buf, size_t size)
{
	char path[64], line[PATH_MAX + 128], base[32];
	bool found = false;

	snprintf(path, sizeof(path), "/proc/%d/maps", pid);
	snprintf(base, sizeof(base), "/%d" DD_PUB_SUFFIX, pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f)) {
		int name_at = 0;
		if (sscanf(line, "%*s %*s %*s %*s %*u %n", &name_at) < 0 || !name_at ||
		    line[name_at] != '/')
			continue;
		char *name = line + name_at, *end = name + strcspn(name, "\n");
		size_t blen = strlen(base);
		*end = 0;   /* an unlinked file ends in " (deleted)": no match */
		if ((size_t)(end - name) > blen && !strcmp(end - blen, base) &&
		    (size_t)(end - name - blen) < size) {
			snprintf(buf, size, "%.*s", (int)(end - name - blen), name);
			found = true;
		}
	}
	fclose(f);
	return found;
}

/* The stats of one pid, from whichever directory holds a live file; failing
 * that (and without --dir), from the file the process maps. */
static enum load find_pid(const struct dirs *d, int pid, struct sample *out)
{
	enum load best = L_NOFILE;
	char dir[PATH_MAX];

	for (size_t i = 0; i < d->n; i++) {
		enum load r = load_file(d->v[i], pid, out);
		if (r == L_OK)
			return L_OK;
		if (r == L_DENIED || r == L_BUSY || (r == L_INVALID && best != L_DENIED))
			best = r;
	}
	if (best == L_NOFILE && !opt.dir && mapped_dir(pid, dir, sizeof(dir)))
		best = load_file(dir, pid, out);   /* checked like any other */
	return best;
}

static int by_pid(const void *a, const void *b)
{
	const struct sample *x = a, *y = b;
	return (x->pid > y->pid) - (x->pid < y->pid);
}

/* v (*cap elements of size) with room for element n. */
static void *grow(void *v, size_t *cap, size_t n, size_t size)
{
	if (n < *cap)
		return v;
	*cap = *cap ? 2 * *cap : 16;
	return xrealloc(v, *cap * size);
}

/* fn(dir, name, ctx) for every entry of the directories of d whose name
 * ends in suffix (and is longer). */
static void dirs_walk(const struct dirs *d, const char *suffix,
		      void (*fn)(const char *dir, const char *name, void *ctx), void *ctx)
{
	size_t sl = strlen(suffix);

	for (size_t i = 0; i < d->n; i++) {
		DIR *dir = opendir(d->v[i]);
		struct dirent *e;
		if (!dir)
			continue;
		while ((e = readdir(dir))) {
			size_t len = strlen(e->d_name);
			if (len > sl && !strcmp(e->d_name + len - sl, suffix))
				fn(d->v[i], e->d_name, ctx);
		}
		closedir(dir);
	}
}

/* dirs_walk(): add the process of <dir>/<pid>.stats to out, if it lives. */
static void add_sample(const char *dir, const char *name, void *ctx)
{
	struct samples *out = ctx;
	char *end;
	long pid = strtol(name, &end, 10);

	if (name[0] < '1' || name[0] > '9' || pid <= 0 || pid > INT_MAX ||
	    strcmp(end, DD_PUB_SUFFIX))
		return;
	out->v = grow(out->v, &out->cap, out->n, sizeof(*out->v));
	struct sample *s = &out->v[out->n];
	enum load r = load_file(dir, (int)pid, s);
	if (r == L_DENIED)
		out->denied++;
	if (r != L_OK)
		return;
	/* the same pid in two directories: keep the newer */
	size_t k;
	for (k = 0; k < out->n && out->v[k].pid != s->pid; k++)
		;
	if (k == out->n)
		out->n++;
	else if (s->live.updated_mono_ns > out->v[k].live.updated_mono_ns)
		out->v[k] = *s;
}

/* Every live publishing process, sorted by pid. */
static void scan_all(const struct dirs *d, struct samples *out)
{
	out->n = 0;
	out->denied = 0;
	dirs_walk(d, DD_PUB_SUFFIX, add_sample, out);
	if (out->n > 1)
		qsort(out->v, out->n, sizeof(*out->v), by_pid);
}

/* ---- derived figures ----------------------------------------------------- */

struct rates {
	double window_s;       /* the time the rates are over */
	bool since_start;      /* no earlier sample: averages since engine start */
	double merged_ps;      /* pages merged per second */
	double scanned_mibps;  /* MiB hashed per second */
	double cow_ps;         /* COW breaks per second */
	double cpu_percent;    /* engine CPU, percent of one core */
};

static double mib(uint64_t bytes) { return (double)bytes / (1024.0 * 1024.0); }

static int64_t profit(const struct sample *s)
{
	return (int64_t)s->live.stats.bytes_saved - (int64_t)s->live.stats.metadata_bytes;
}

/* Rates between two samples of the same process (prev may be NULL or of an
 * earlier incarnation): then averages since the engine started. */
static struct rates rates_of(const struct sample *prev, const struct sample *cur)
{
	struct rates r = { 0 };
	const struct dedup_stats *a = prev ? &prev->live.stats : NULL, *b = &cur->live.stats;
	uint64_t t0;

	if (prev && prev->pid == cur->pid && prev->start_time == cur->start_time &&
	    prev->started_mono_ns == cur->started_mono_ns) {
		t0 = prev->live.updated_mono_ns;
	} else {
		static const struct dedup_stats zero;
		a = &zero;
		t0 = cur->started_mono_ns;
		r.since_start = true;
	}
	if (cur->live.updated_mono_ns <= t0)
		return r;   /* no new snapshot since the previous sample: all zero */
	r.window_s = (double)(cur->live.updated_mono_ns - t0) / 1e9;
	r.merged_ps = (double)(b->merges - a->merges) / r.window_s;
	r.scanned_mibps = mib((b->pages_scanned - a->pages_scanned) * cur->page_size) / r.window_s;
	r.cow_ps = (double)(b->cow_breaks - a->cow_breaks) / r.window_s;
	r.cpu_percent = (double)(b->engine_cpu_ns - a->engine_cpu_ns) / 1e7 / r.window_s;
	return r;
}

static const struct sample *find_prev(const struct samples *prev, int pid)
{
	for (size_t i = 0; prev && i < prev->n; i++)
		if (prev->v[i].pid == pid)
			return &prev->v[i];
	return NULL;
}

static uint64_t realtime_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static double age_s(const struct sample *s)
{
	uint64_t now = realtime_ns(), t = s->live.updated_realtime_ns;
	return now > t ? (double)(now - t) / 1e9 : 0.0;
}

static void version_str(uint64_t v, char *buf, size_t size)
{
	snprintf(buf, size, "%llu.%llu.%llu", (unsigned long long)(v / 10000),
		 (unsigned long long)(v / 100 % 100), (unsigned long long)(v % 100));
}

/* ---- plain text ---------------------------------------------------------- */

static bool valid_utf8(const unsigned char *s);

/* A comm for the terminal (buf: 16 bytes): any process may name itself
 * with control characters, an escape sequence among them; like ps, show
 * them as '?' (and every high byte of a comm that is not UTF-8). */
static const char *printable(const char *comm, char *buf)
{
	bool utf8 = valid_utf8((const unsigned char *)comm);
	size_t i;
	for (i = 0; i < 15 && comm[i]; i++) {
		unsigned char c = (unsigned char)comm[i];
		buf[i] = c < 0x20 || c == 0x7f || (c >= 0x80 && !utf8) ? '?' : (char)c;
	}
	buf[i] = 0;
	return buf;
}

struct groups;
static const char *group_of(const struct groups *gs, int pid);

static void print_list(const struct samples *s, const struct samples *prev,
		       const struct groups *gs)
{
	bool rates = opt.watch;

	printf("%7s %-15s %10s %9s %9s %9s %10s %15s %8s %6s", "PID", "COMMAND", "SAVED_MiB",
	       "SHARING", "SHARED", "ZERO", "COW_BREAKS", "VMAS/BUDGET", "WAIT_MiB", "CPU%");
	if (rates)
		printf(" %9s %10s", "MERGED/s", "SCAN_MiB/s");
	printf(" GROUP\n");
	for (size_t i = 0; i < s->n; i++) {
		const struct sample *x = &s->v[i];
		const struct dedup_stats *st = &x->live.stats;
		struct rates r = rates_of(rates ? find_prev(prev, x->pid) : NULL, x);
		char vmas[48];
		snprintf(vmas, sizeof(vmas), "%lld/%llu", (long long)st->vmas_added,
			 (unsigned long long)st->vma_budget);
		char cbuf[16];
		printf("%7d %-15s %10.1f %9llu %9llu %9llu %10llu %15s %8.1f %6.1f", x->pid,
		       printable(x->comm, cbuf),
		       mib(st->bytes_saved), (unsigned long long)st->pages_sharing,
		       (unsigned long long)st->pages_shared, (unsigned long long)st->zero_pages,
		       (unsigned long long)st->cow_breaks, vmas,
		       mib(st->budget_waiting * x->page_size), r.cpu_percent);
		if (rates)
			printf(" %9.0f %10.1f", r.merged_ps, r.scanned_mibps);
		const char *g = group_of(gs, x->pid);
		printf(" %s\n", g ? g : "-");
	}
	if (!s->n)
		printf("(no process publishes libdedup stats)\n");
	if (s->denied)
		fprintf(stderr, "dedup-stat: %zu process(es) not shown: permission denied\n",
			s->denied);
}

/* The human-readable form of a value, by unit. */
static void human(char *buf, size_t size, uint64_t v, enum unit unit, uint32_t page)
{
	switch (unit) {
	case PAGES:
		snprintf(buf, size, "%.1f MiB", mib(v * page));
		break;
	case BYTES:
		snprintf(buf, size, "%.1f MiB", mib(v));
		break;
	case NSEC:
		snprintf(buf, size, "%.3f s", (double)v / 1e9);
		break;
	default:
		buf[0] = 0;
	}
}

static void row(const char *name, const char *value, const char *hum, const char *meaning)
{
	printf("  %-20s %16s %11s  %s\n", name, value, hum, meaning);
}

static void print_table(const struct sample *x, const struct sample *prev)
{
	const struct dedup_stats *st = &x->live.stats;
	const struct dd_pub_live *l = &x->live;
	struct rates r = rates_of(prev, x);
	char ver[32], value[32], hum[32];
	const char *section = NULL;
	time_t started = (time_t)(x->started_realtime_ns / 1000000000ULL);
	char when[64];

	version_str(x->lib_version, ver, sizeof(ver));
	strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", localtime(&started));
	printf("libdedup %s in process %d (%s)\n", ver, x->pid, printable(x->comm, hum));
	printf("  engine started %s (up %.1f s); stats updated %.1f s ago (update #%llu)\n", when,
	       (double)(x->live.updated_mono_ns - x->started_mono_ns) / 1e9 + age_s(x), age_s(x),
	       (unsigned long long)l->updates);
	printf("  config: cpu %llu%%, interval %llu ms, rate cap ", (unsigned long long)l->cpu_percent,
	       (unsigned long long)l->scan_interval_ms);
	if (l->pages_per_sec)
		printf("%llu pages/s", (unsigned long long)l->pages_per_sec);
	else
		printf("none");
	printf(", batch %llu pages, zero pages %s, VMA budget %llu\n",
	       (unsigned long long)l->batch_pages, l->zero_pages_enabled ? "on" : "off",
	       (unsigned long long)l->vma_budget);
	printf("  file ");
	for (const char *c = x->path; *c; c++)   /* a directory name may hold anything */
		putchar((unsigned char)*c < 0x20 || *c == 0x7f ? '?' : *c);
	printf("\n");

	printf("\nAs /proc/<pid>/ksm_stat\n");
	snprintf(value, sizeof(value), "%llu", (unsigned long long)st->pages_sharing);
	human(hum, sizeof(hum), st->pages_sharing, PAGES, x->page_size);
	row("ksm_merging_pages", value, hum, "pages merged into a shared page (= pages_sharing)");
	snprintf(value, sizeof(value), "%llu", (unsigned long long)st->zero_pages);
	human(hum, sizeof(hum), st->zero_pages, PAGES, x->page_size);
	row("ksm_zero_pages", value, hum, "pages merged into the zero page (= zero_pages)");
	snprintf(value, sizeof(value), "%lld", (long long)profit(x));
	snprintf(hum, sizeof(hum), "%.1f MiB", (double)profit(x) / (1024.0 * 1024.0));
	row("ksm_process_profit", value, hum, "bytes_saved - metadata_bytes, bytes (may be < 0)");

	for (size_t i = 0; i < NFIELDS; i++) {
		const struct field *f = &fields[i];
		uint64_t v = field_value(st, f);
		if (f->section != section) {
			section = f->section;
			printf("\n%s\n", section);
		}
		if (!strcmp(f->name, "vmas_added"))   /* may go below zero */
			snprintf(value, sizeof(value), "%lld", (long long)v);
		else
			snprintf(value, sizeof(value), "%llu", (unsigned long long)v);
		human(hum, sizeof(hum), v, f->unit, x->page_size);
		row(f->name, value, hum, f->meaning);
	}

	printf("\n%s\n", r.since_start ? "Rates (averages since the engine started)"
				       : "Rates (over the last refresh)");
	snprintf(value, sizeof(value), "%.1f", r.merged_ps);
	row("merged_pages_per_s", value, "", "pages merged per second");
	snprintf(value, sizeof(value), "%.2f", r.scanned_mibps);
	row("scanned_mib_per_s", value, "", "MiB hashed by the scanner per second");
	snprintf(value, sizeof(value), "%.1f", r.cow_ps);
	row("cow_breaks_per_s", value, "", "merged pages written (copied) per second");
	snprintf(value, sizeof(value), "%.2f", r.cpu_percent);
	row("engine_cpu_percent", value, "", "engine CPU time / wall time, percent of one core");
}

/* ---- JSON ------------------------------------------------------------------ */

static bool valid_utf8(const unsigned char *s)
{
	while (*s) {
		int n = *s < 0x80 ? 0 : (*s & 0xe0) == 0xc0 ? 1 : (*s & 0xf0) == 0xe0 ? 2
			: (*s & 0xf8) == 0xf0 ? 3 : -1;
		if (n < 0)
			return false;
		s++;
		for (int i = 0; i < n; i++, s++)
			if ((*s & 0xc0) != 0x80)
				return false;
	}
	return true;
}

/* A JSON string: UTF-8 passes through; other bytes above 0x7f (a comm is
 * any bytes) are written as \u00XX, i.e. read as Latin-1. */
static void json_str(const char *s)
{
	bool utf8 = valid_utf8((const unsigned char *)s);
	putchar('"');
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			printf("\\%c", *p);
		else if (*p < 0x20 || *p == 0x7f || (*p >= 0x80 && !utf8))
			printf("\\u%04x", *p);
		else
			putchar(*p);
	}
	putchar('"');
}

/* gs: the groups, when they were asked (the list), else NULL (one PID):
 * "group" then says the process's group, or null. */
static void print_json(const struct sample *x, const struct sample *prev,
		       const struct groups *gs)
{
	const struct dd_pub_live *l = &x->live;
	struct rates r = rates_of(prev, x);
	char ver[32];

	version_str(x->lib_version, ver, sizeof(ver));
	printf("{\"pid\":%d,\"comm\":", x->pid);
	json_str(x->comm);
	printf(",\"start_time_ticks\":%llu,\"lib_version\":\"%s\",\"page_size\":%u,"
	       "\"started_unix_ns\":%llu,\"updated_unix_ns\":%llu,\"age_seconds\":%.3f,"
	       "\"updates\":%llu,",
	       (unsigned long long)x->start_time, ver, x->page_size,
	       (unsigned long long)x->started_realtime_ns,
	       (unsigned long long)l->updated_realtime_ns, age_s(x),
	       (unsigned long long)l->updates);
	printf("\"config\":{\"cpu_percent\":%llu,\"scan_interval_ms\":%llu,\"pages_per_sec\":%llu,"
	       "\"batch_pages\":%llu,\"zero_pages\":%s,\"vma_budget\":%llu},",
	       (unsigned long long)l->cpu_percent, (unsigned long long)l->scan_interval_ms,
	       (unsigned long long)l->pages_per_sec, (unsigned long long)l->batch_pages,
	       l->zero_pages_enabled ? "true" : "false", (unsigned long long)l->vma_budget);
	printf("\"stats\":{");
	for (size_t i = 0; i < NFIELDS; i++) {
		uint64_t v = field_value(&l->stats, &fields[i]);
		if (!strcmp(fields[i].name, "vmas_added"))
			printf("%s\"%s\":%lld", i ? "," : "", fields[i].name, (long long)v);
		else
			printf("%s\"%s\":%llu", i ? "," : "", fields[i].name, (unsigned long long)v);
	}
	printf("},\"ksm_stat\":{\"ksm_merging_pages\":%llu,\"ksm_zero_pages\":%llu,"
	       "\"ksm_process_profit\":%lld},",
	       (unsigned long long)l->stats.pages_sharing, (unsigned long long)l->stats.zero_pages,
	       (long long)profit(x));
	printf("\"mib_waiting_on_max_map_count\":%.1f,",
	       mib(l->stats.budget_waiting * x->page_size));
	if (gs) {
		const char *g = group_of(gs, x->pid);
		printf("\"group\":");
		if (g)
			json_str(g);
		else
			printf("null");
		printf(",");
	}
	printf("\"rates\":{\"window_seconds\":%.3f,\"since_start\":%s,\"merged_pages_per_second\":%.3f,"
	       "\"scanned_mib_per_second\":%.3f,\"cow_breaks_per_second\":%.3f,"
	       "\"engine_cpu_percent\":%.3f}}",
	       r.window_s, r.since_start ? "true" : "false", r.merged_ps, r.scanned_mibps, r.cow_ps,
	       r.cpu_percent);
}

/* ---- Prometheus text exposition format 0.0.4 -------------------------------- */

/* Label value: backslash, double quote and newline escaped; a comm that is
 * not UTF-8 gets '?' for its high bytes (the format is UTF-8). */
static void prom_label(const char *s)
{
	bool utf8 = valid_utf8((const unsigned char *)s);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '\\' || *p == '"')
			printf("\\%c", *p);
		else if (*p == '\n')
			printf("\\n");
		else if (*p >= 0x80 && !utf8)
			putchar('?');
		else
			putchar(*p);
	}
}

static void prom_head(const char *name, const char *type, const char *help)
{
	printf("# HELP libdedup_%s ", name);
	for (const char *p = help; *p; p++) {   /* HELP escapes \\ and newline */
		if (*p == '\\')
			printf("\\\\");
		else if (*p == '\n')
			printf("\\n");
		else
			putchar(*p);
	}
	printf("\n# TYPE libdedup_%s %s\n", name, type);
}

static void prom_sample(const char *name, const struct sample *x, const char *reason)
{
	printf("libdedup_%s{pid=\"%d\",comm=\"", name, x->pid);
	prom_label(x->comm);
	printf("\"");
	if (reason)
		printf(",reason=\"%s\"", reason);
	printf("} ");
}

/* Extra gauges that are not members of struct dedup_stats. */
enum extra { X_PROFIT, X_UPDATED, X_STARTED, X_CPU, X_INTERVAL, X_RATE, X_WAITING, X_NEXTRA };
static const struct {
	const char *name, *help;
} extras[X_NEXTRA] = {
	[X_PROFIT] = { "process_profit_bytes",
		       "bytes_saved minus metadata_bytes, as ksm_process_profit (may be negative)" },
	[X_UPDATED] = { "last_update_timestamp_seconds",
			"when the engine last published these figures, Unix time" },
	[X_STARTED] = { "engine_start_timestamp_seconds", "when the engine started, Unix time" },
	[X_CPU] = { "config_cpu_percent", "DEDUP_CPU: engine CPU budget, percent of one core" },
	[X_INTERVAL] = { "config_scan_interval_seconds",
			 "DEDUP_INTERVAL: pause between full passes, seconds" },
	[X_RATE] = { "config_pages_per_second_limit",
		     "DEDUP_PAGES_PER_SEC: scan rate cap, pages per second (0: none)" },
	[X_WAITING] = { "waiting_on_max_map_count_bytes",
			"memory waiting on vm.max_map_count: budget_waiting x page size, what a"
			" larger limit would let merge" },
};

/* Metrics outer, processes inner: each metric's HELP and TYPE once, then
 * all its samples together, as the format wants. No process: no output. */
static void print_prometheus(const struct samples *s)
{
	if (!s->n)
		return;
	for (size_t i = 0; i < NFIELDS;) {
		/* fields sharing a metric name (skipped by reason) are one
		 * metric: one HELP and TYPE, then all its samples */
		size_t k = i + 1;
		while (k < NFIELDS && !strcmp(fields[k].prom, fields[i].prom))
			k++;
		prom_head(fields[i].prom, fields[i].kind == COUNTER ? "counter" : "gauge",
			  k - i > 1 ? "pages skipped by the scanner or the merge, by reason"
				    : fields[i].meaning);
		for (size_t p = 0; p < s->n; p++) {
			for (size_t j = i; j < k; j++) {
				uint64_t v = field_value(&s->v[p].live.stats, &fields[j]);
				prom_sample(fields[j].prom, &s->v[p], fields[j].label);
				if (fields[j].unit == NSEC)
					printf("%.9f\n", (double)v / 1e9);
				else if (!strcmp(fields[j].name, "vmas_added"))
					printf("%lld\n", (long long)v);
				else
					printf("%llu\n", (unsigned long long)v);
			}
		}
		i = k;
	}
	for (int e = 0; e < X_NEXTRA; e++) {
		prom_head(extras[e].name, "gauge", extras[e].help);
		for (size_t p = 0; p < s->n; p++) {
			const struct sample *x = &s->v[p];
			prom_sample(extras[e].name, x, NULL);
			switch (e) {
			case X_PROFIT:
				printf("%lld\n", (long long)profit(x));
				break;
			case X_UPDATED:
				printf("%.3f\n", (double)x->live.updated_realtime_ns / 1e9);
				break;
			case X_STARTED:
				printf("%.3f\n", (double)x->started_realtime_ns / 1e9);
				break;
			case X_CPU:
				printf("%llu\n", (unsigned long long)x->live.cpu_percent);
				break;
			case X_INTERVAL:
				printf("%.3f\n", (double)x->live.scan_interval_ms / 1e3);
				break;
			case X_WAITING:
				printf("%llu\n", (unsigned long long)(x->live.stats.budget_waiting *
									x->page_size));
				break;
			default:
				printf("%llu\n", (unsigned long long)x->live.pages_per_sec);
				break;
			}
		}
	}
}

/* ---- sharing groups ------------------------------------------------------------ */

/*
 * A sharing group (docs/sharing.md) has a helper, found by its socket
 * <private dir>/share/NAME.sock, which we ask for its figures as an
 * observer (share_query.h); its members' group_pages come from their own
 * stats files, found by pid. What the group saves is counted here, once:
 * never in a member's bytes_saved (docs/stats.md, "Sharing groups").
 */
struct group_figs {
	uint64_t members, segments, pages, holds, mapped_pages, saved_bytes, members_unseen;
};

struct group {
	char name[NAME_MAX + 1];
	char sock[PATH_MAX];
	struct dd_share_info info;
	struct group_figs figs;
};

struct groups {
	struct group *v;
	size_t n, cap;
	const struct dirs *stat_dirs;   /* where the members' stats files are */
};

struct gfield {
	const char *name;     /* JSON key */
	size_t off;
	enum unit unit;
	const char *prom;     /* Prometheus name after "libdedup_" */
	const char *meaning;
};

#define G(name, unit, prom, meaning) \
	{ #name, offsetof(struct group_figs, name), unit, prom, meaning }
static const struct gfield gfields[] = {
	G(members, NUMBER, "group_members",
	  "processes connected to the group's helper as members"),
	G(segments, NUMBER, "group_segments",
	  "segments (sealed memory files) the helper keeps, held or in their grace period"),
	G(pages, PAGES, "group_canonical_pages",
	  "canonical pages in those segments: the memory the group's store takes"),
	G(holds, NUMBER, "group_holds", "segments held, summed over the members"),
	G(mapped_pages, PAGES, "group_mapped_pages",
	  "pages of the members that map a segment: the sum of their group_pages"),
	G(saved_bytes, BYTES, "group_saved_bytes",
	  "memory the group saves: (group_mapped_pages - group_canonical_pages) x page size,"
	  " at least 0; in no process's saved_bytes"),
	G(members_unseen, NUMBER, "group_members_without_stats",
	  "members whose stats file could not be read: their group_pages are not counted"),
};
#undef G
#define NGFIELDS (sizeof(gfields) / sizeof(gfields[0]))
_Static_assert(NGFIELDS == sizeof(struct group_figs) / sizeof(uint64_t),
	       "a member of struct group_figs has no row in gfields[]");

static uint64_t gfield_value(const struct group_figs *g, const struct gfield *f)
{
	uint64_t v;
	memcpy(&v, (const char *)g + f->off, sizeof(v));
	return v;
}

/* The sharing groups' socket directories: <private dir>/share, where
 * libdedup's group.c puts them ($XDG_RUNTIME_DIR/libdedup, else
 * /tmp/libdedup-UID), and a login session's /run/user/UID/libdedup. Ours
 * only, also as root: a helper serves its own user only (SO_PEERCRED). */
static struct dirs share_dirs(void)
{
	struct dirs d = { 0 };

	user_dirs(&d, "/share");
	return d;
}

static int by_name(const void *a, const void *b)
{
	const struct group *x = a, *y = b;
	int c = strcmp(x->name, y->name);
	return c ? c : strcmp(x->sock, y->sock);
}

/* The figures of a group whose helper answered: its members' group_pages
 * from their stats files (stat dirs d, as for dedup-stat PID). */
static void group_figures(struct group *g, const struct dirs *d)
{
	struct group_figs *f = &g->figs;
	struct sample s;

	*f = (struct group_figs){ .members = g->info.members, .segments = g->info.segments,
				  .pages = g->info.pages, .holds = g->info.holds };
	for (uint32_t i = 0; i < g->info.npids; i++) {
		if (g->info.pids[i] > 0 && find_pid(d, g->info.pids[i], &s) == L_OK)
			f->mapped_pages += s.live.stats.group_pages;
		else
			f->members_unseen++;
	}
	if (f->mapped_pages > f->pages)
		f->saved_bytes = (f->mapped_pages - f->pages) * g->info.page_size;
}

/* dirs_walk(): add the group of socket <dir>/NAME.sock to out, if its
 * helper answers. A socket nobody answers (a helper gone, stopped or
 * exiting) is skipped quietly; a helper we may not trust or cannot
 * understand is said on stderr. */
static void add_group(const char *dir, const char *name, void *ctx)
{
	struct groups *out = ctx;
	size_t len = strlen(name) - strlen(".sock");

	if (name[0] == '.')
		return;
	out->v = grow(out->v, &out->cap, out->n, sizeof(*out->v));
	struct group *g = &out->v[out->n];
	snprintf(g->name, sizeof(g->name), "%.*s", (int)len, name);
	for (char *c = g->name; *c; c++)   /* the user's own names, but still */
		if ((unsigned char)*c < 0x20 || *c == 0x7f)
			*c = '?';
	if (snprintf(g->sock, sizeof(g->sock), "%s/%s", dir, name) >= (int)sizeof(g->sock))
		return;
	int r = dd_share_query(g->sock, &g->info);
	if (r == -EPROTONOSUPPORT || r == -EACCES || r == -EPROTO)
		fprintf(stderr, "dedup-stat: group %s (%s): %s; not shown\n", g->name, g->sock,
			r == -EACCES ? "its helper runs as another user"
			: r == -EPROTO ? "malformed answer from its helper"
			: "its helper speaks another protocol version");
	if (r < 0)
		return;
	group_figures(g, out->stat_dirs);
	out->n++;
}

/* Every group whose helper answers, sorted by name; the members' stats
 * files from the directories of d. */
static void scan_groups(const struct dirs *shares, const struct dirs *d, struct groups *out)
{
	out->n = 0;
	out->stat_dirs = d;
	dirs_walk(shares, ".sock", add_group, out);
	if (out->n > 1)
		qsort(out->v, out->n, sizeof(*out->v), by_name);
}

static void print_groups(const struct groups *gs)
{
	printf("%-24s %7s %8s %10s %10s %10s\n", "GROUP", "MEMBERS", "SEGMENTS", "STORE_MiB",
	       "MAPPED_MiB", "SAVED_MiB");
	for (size_t i = 0; i < gs->n; i++) {
		const struct group *g = &gs->v[i];
		printf("%-24s %7llu %8llu %10.1f %10.1f %10.1f\n", g->name,
		       (unsigned long long)g->figs.members, (unsigned long long)g->figs.segments,
		       mib(g->figs.pages * g->info.page_size),
		       mib(g->figs.mapped_pages * g->info.page_size), mib(g->figs.saved_bytes));
	}
	if (!gs->n)
		printf("(no sharing group's helper answers)\n");
}

static void print_groups_json(const struct groups *gs)
{
	printf("[");
	for (size_t i = 0; i < gs->n; i++) {
		const struct group *g = &gs->v[i];
		printf("%s{\"name\":", i ? "," : "");
		json_str(g->name);
		printf(",\"socket\":");
		json_str(g->sock);
		printf(",\"helper_pid\":%d,\"page_size\":%u,\"member_pids\":[",
		       (int)g->info.helper_pid, g->info.page_size);
		for (uint32_t k = 0; k < g->info.npids; k++)
			printf("%s%d", k ? "," : "", (int)g->info.pids[k]);
		printf("]");
		for (size_t k = 0; k < NGFIELDS; k++)
			printf(",\"%s\":%llu", gfields[k].name,
			       (unsigned long long)gfield_value(&g->figs, &gfields[k]));
		printf("}");
	}
	printf("]\n");
}

/* Gauges labelled group (and socket, as one name may live in two
 * directories). No group: no output. */
static void print_groups_prometheus(const struct groups *gs)
{
	if (!gs->n)
		return;
	for (size_t k = 0; k < NGFIELDS; k++) {
		prom_head(gfields[k].prom, "gauge", gfields[k].meaning);
		for (size_t i = 0; i < gs->n; i++) {
			printf("libdedup_%s{group=\"", gfields[k].prom);
			prom_label(gs->v[i].name);
			printf("\",socket=\"");
			prom_label(gs->v[i].sock);
			printf("\"} %llu\n",
			       (unsigned long long)gfield_value(&gs->v[i].figs, &gfields[k]));
		}
	}
}

/* The group whose helper lists pid as a member, or NULL. */
static const char *group_of(const struct groups *gs, int pid)
{
	for (size_t i = 0; gs && i < gs->n; i++)
		for (uint32_t k = 0; k < gs->v[i].info.npids; k++)
			if ((int)gs->v[i].info.pids[k] == pid)
				return gs->v[i].name;
	return NULL;
}

/* Which group each member process is in: an info metric (value 1), one
 * sample per member, so that a process's series keep their labels. */
static void print_members_prometheus(const struct samples *s, const struct groups *gs)
{
	bool head = false;
	for (size_t p = 0; p < s->n; p++) {
		const char *g = group_of(gs, s->v[p].pid);
		if (!g)
			continue;
		if (!head)
			prom_head("process_group_info", "gauge",
				  "1 for each process that is a member of a sharing group (label group)");
		head = true;
		printf("libdedup_process_group_info{pid=\"%d\",comm=\"", s->v[p].pid);
		prom_label(s->v[p].comm);
		printf("\",group=\"");
		prom_label(g);
		printf("\"} 1\n");
	}
}

/* ---- main ---------------------------------------------------------------------- */

static const char help_text[] =
"NAME\n"
"    dedup-stat - show what libdedup is doing in running processes\n"
"\n"
"SYNOPSIS\n"
"    dedup-stat [--json | --prometheus] [--dir DIR]\n"
"    dedup-stat PID [--json | --prometheus] [--dir DIR]\n"
"    dedup-stat --groups [--json | --prometheus] [--watch [SECONDS]]\n"
"    dedup-stat [PID] --watch [SECONDS] [--count N] [--json] [--dir DIR]\n"
"    dedup-stat --help\n"
"\n"
"DESCRIPTION\n"
"    Every process running the libdedup engine publishes its live figures\n"
"    in a small file, updated by the engine at most every 100 ms and at the\n"
"    end of every pass. dedup-stat reads those files; the application does\n"
"    not need to cooperate.\n"
"\n"
"    Without PID, one line per process: PID, command, MiB saved, pages\n"
"    sharing, pages shared, zero pages, COW breaks, VMAs added / VMA budget,\n"
"    MiB waiting on vm.max_map_count (duplicates the VMA budget kept from\n"
"    merging at the last pass: what a larger limit would let merge),\n"
"    and engine CPU% (CPU time of libdedup's threads over the time since\n"
"    the engine started, percent of one core; with --watch, over the last\n"
"    refresh), and last GROUP: the sharing group whose helper lists the\n"
"    process as a member, or - (in --json, \"group\", a name or null; in\n"
"    --prometheus, libdedup_process_group_info{group=...} 1).\n"
"\n"
"    Then, if any, one line per sharing group (DEDUP_SHARE, dedup-run\n"
"    --share) whose helper answers: GROUP (its name), MEMBERS (processes in\n"
"    it), SEGMENTS (the sealed memory files of its store), STORE_MiB (the\n"
"    canonical pages in them), MAPPED_MiB (pages of the members that map\n"
"    them: the sum of the members' group_pages, read from their stats\n"
"    files) and SAVED_MiB = MAPPED_MiB - STORE_MiB (at least 0). What a\n"
"    group saves is shown there only: a member's own SAVED_MiB never holds\n"
"    its group pages, so nothing is counted twice. A member whose stats\n"
"    file cannot be read adds nothing to MAPPED_MiB (an underestimate).\n"
"    A socket nobody answers within a second is skipped.\n"
"\n"
"    With PID, the full table for that process, each figure with its\n"
"    meaning, including the figures of /proc/PID/ksm_stat:\n"
"    ksm_merging_pages (= pages_sharing), ksm_zero_pages (= zero_pages) and\n"
"    ksm_process_profit (= bytes_saved - metadata_bytes; metadata_bytes counts\n"
"    the kernel memory of the mappings merging added, too).\n"
"\n"
"    Figures are a consistent snapshot (seqlock), taken when the engine last\n"
"    published: passes run by dedup_scan_now() show at the engine's next\n"
"    step. Files of processes that are gone are ignored and removed.\n"
"\n"
"OPTIONS\n"
"    --watch [SECONDS]\n"
"        Refresh every SECONDS (default 1, fractions allowed) until Ctrl-C\n"
"        (or q, on a terminal), or until the watched PID exits. On a terminal the screen is redrawn\n"
"        in place, like top; otherwise frames are separated by a blank line\n"
"        (with --json: one JSON document per line). Shows rates over each\n"
"        refresh: pages merged per second, MiB scanned per second, COW\n"
"        breaks per second, engine CPU%. A number right after --watch is\n"
"        always SECONDS: write `dedup-stat PID --watch` to watch a process.\n"
"    --count N\n"
"        With --watch: stop after N refreshes.\n"
"    --groups\n"
"        The sharing groups only, in any format (with --json: an array of\n"
"        group objects).\n"
"    --json\n"
"        JSON: an object for PID, an array of objects otherwise. Keys: pid,\n"
"        comm, start_time_ticks, lib_version, page_size, started_unix_ns,\n"
"        updated_unix_ns, age_seconds, updates, config{...}, stats{...} (the\n"
"        members of struct dedup_stats), ksm_stat{...},\n"
"        mib_waiting_on_max_map_count, group (in the array), rates{...}. Groups\n"
"        only with --groups, which keeps this array as it was: keys name,\n"
"        socket, helper_pid, page_size, member_pids[], members, segments,\n"
"        pages, holds, mapped_pages, saved_bytes, members_unseen.\n"
"    --prometheus\n"
"        Prometheus text exposition format 0.0.4, metrics libdedup_* with\n"
"        labels pid and comm (for node-exporter's textfile collector:\n"
"        dedup-stat --prometheus > DIR/libdedup.prom.$$ && mv ...), then\n"
"        the groups' libdedup_group_members, _segments, _canonical_pages,\n"
"        _holds, _mapped_pages, _saved_bytes, _members_without_stats, with\n"
"        labels group and socket, and libdedup_process_group_info (1, labels\n"
"        pid, comm and group) for each process in a group.\n"
"    --dir DIR\n"
"        Read stats files from DIR only.\n"
"    --no-clean\n"
"        Do not remove stale files (they are still ignored).\n"
"    -h, --help\n"
"        This text.\n"
"\n"
"FILES\n"
"    DIR/PID.stats, one page, mode 0600, where DIR is the first usable of\n"
"    $DEDUP_STAT_DIR, /run/libdedup (root), $XDG_RUNTIME_DIR/libdedup,\n"
"    /tmp/libdedup-UID. dedup-stat reads $DEDUP_STAT_DIR alone when it is\n"
"    set, else all the others and /run/user/UID/libdedup (as root also\n"
"    /run/user/*/libdedup and /tmp/libdedup-*). For a PID not found there\n"
"    (its XDG_RUNTIME_DIR or DEDUP_STAT_DIR differs from ours), the file\n"
"    the process maps, from /proc/PID/maps, unless --dir is given. The\n"
"    layout is in libdedup/src/publish.h, the meaning of every figure in\n"
"    docs/stats.md.\n"
"\n"
"    DIR/share/NAME.sock, the socket of sharing group NAME's helper, in the\n"
"    user's own directories: $XDG_RUNTIME_DIR/libdedup/share,\n"
"    /run/user/UID/libdedup/share and /tmp/libdedup-UID/share (also as\n"
"    root: a helper answers its own user only). dedup-stat asks it as an\n"
"    observer (it counts as no member and keeps no helper alive).\n"
"\n"
"ENVIRONMENT\n"
"    DEDUP_STAT_DIR\n"
"        The only directory to read stats files from (as libdedup's only\n"
"        place to publish them).\n"
"    XDG_RUNTIME_DIR\n"
"        $XDG_RUNTIME_DIR/libdedup is one of the places read, and its share/\n"
"        subdirectory one of those of the groups' sockets.\n"
"\n"
"EXIT STATUS\n"
"    0   success, also when no process publishes stats, and for --watch\n"
"        ended by Ctrl-C (SIGINT) or SIGTERM, --count or the PID's exit\n"
"    1   usage error, or stats that exist but could not be read\n"
"        (permission denied, a file that stays mid-update)\n"
"    2   no process PID (\"dedup-stat: no process PID\")\n"
"    3   process PID does not run libdedup\n"
"        (\"dedup-stat: process PID (COMM) does not run libdedup\")\n"
"\n"
"EXAMPLES\n"
"    dedup-stat                      all processes, one line each\n"
"    dedup-stat 1234                 the full table for process 1234\n"
"    dedup-stat 1234 --watch 2       redraw every 2 s with rates\n"
"    dedup-stat --json | jq '.[] | {pid, saved: .stats.bytes_saved}'\n"
"    dedup-stat --groups --json | jq '.[] | {name, saved_bytes}'\n"
"    dedup-stat --prometheus > /var/lib/node_exporter/libdedup.prom.$$ &&\n"
"        mv /var/lib/node_exporter/libdedup.prom.$$ /var/lib/node_exporter/libdedup.prom\n";

__attribute__((format(printf, 1, 0), noreturn))
static void usage_error(const char *fmt, const char *arg)
{
	fprintf(stderr, "dedup-stat: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\nTry 'dedup-stat --help'.\n");
	exit(EXIT_ERROR);
}

static bool parse_seconds(const char *s, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= 0.1 && v <= 86400.0))
		return false;
	*out = v;
	return true;
}

static bool is_number(const char *s)
{
	char *end;
	if (!*s)
		return false;
	strtod(s, &end);
	return !*end;
}

/* Is process pid still running (not gone, not a zombie)? */
static bool proc_running(int pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return false;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	return p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X' && p[2] != 0;
}

/* --watch on a terminal: 'q' quits, as in top. The terminal gets
 * non-canonical input without echo while we watch, and its settings back
 * however we stop (the loop's end, exit(), Ctrl-C and SIGTERM end the loop). */
static struct termios tty_saved;
static bool tty_raw;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void tty_restore(void)
{
	if (tty_raw)
		tcsetattr(STDIN_FILENO, TCSANOW, &tty_saved);
	tty_raw = false;
}

static void tty_keys(void)
{
	struct termios t;

	if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO) || tcgetattr(STDIN_FILENO, &tty_saved))
		return;
	t = tty_saved;
	t.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
	t.c_cc[VMIN] = 0;
	t.c_cc[VTIME] = 0;
	if (tcsetattr(STDIN_FILENO, TCSANOW, &t) == 0) {
		tty_raw = true;
		atexit(tty_restore);
	}
}

/* Wait s seconds, or less if 'q' is typed (then stop). */
static void sleep_s(double s)
{
	struct timespec ts = { (time_t)s, (long)((s - (double)(time_t)s) * 1e9) };

	if (!tty_raw) {
		while (!stop && nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
		return;
	}
	double end = now_s() + s;
	while (!stop) {
		double left = end - now_s();
		if (left <= 0)
			break;
		struct pollfd pfd = { .fd = STDIN_FILENO, .events = POLLIN };
		if (poll(&pfd, 1, (int)(left * 1000) + 1) > 0) {
			char c[16];
			ssize_t n = read(STDIN_FILENO, c, sizeof(c));
			for (ssize_t i = 0; i < n; i++)
				if (c[i] == 'q' || c[i] == 'Q')
					stop = 1;
			if (n == 0)
				break;   /* end of input: keep the cadence without spinning */
		}
	}
}

/* Exit status and message for a PID without readable stats. */
static int explain_missing(int pid, enum load why)
{
	char raw[16] = "?", comm[16];

	if (dd_pub_proc_stat(pid, NULL, raw) == -ENOENT) {
		fprintf(stderr, "dedup-stat: no process %d\n", pid);
		return EXIT_NO_PROCESS;
	}
	printable(raw, comm);
	if (why == L_DENIED) {
		fprintf(stderr, "dedup-stat: process %d (%s): cannot read its stats: %s\n", pid,
			comm, strerror(EACCES));
		return EXIT_ERROR;
	}
	if (why == L_BUSY) {
		fprintf(stderr, "dedup-stat: process %d (%s): stats file stays mid-update\n", pid,
			comm);
		return EXIT_ERROR;
	}
	fprintf(stderr, "dedup-stat: process %d (%s) does not run libdedup\n", pid, comm);
	return EXIT_NO_LIBDEDUP;
}

static void output_one(const struct sample *x, const struct sample *prev)
{
	if (opt.json) {
		print_json(x, prev, NULL);
		printf("\n");
	} else if (opt.prom) {
		struct samples one = { .v = (struct sample *)x, .n = 1 };
		print_prometheus(&one);
	} else {
		print_table(x, prev);
	}
}

/* The list: processes, then the groups (JSON: one or the other, so that
 * the array of processes keeps its shape). */
static void output_all(const struct samples *s, const struct samples *prev,
		       const struct groups *gs)
{
	if (opt.groups) {
		if (opt.json)
			print_groups_json(gs);
		else if (opt.prom)
			print_groups_prometheus(gs);
		else
			print_groups(gs);
	} else if (opt.json) {
		printf("[");
		for (size_t i = 0; i < s->n; i++) {
			if (i)
				printf(",");
			print_json(&s->v[i], opt.watch ? find_prev(prev, s->v[i].pid) : NULL, gs);
		}
		printf("]\n");
	} else if (opt.prom) {
		print_prometheus(s);
		print_groups_prometheus(gs);
		print_members_prometheus(s, gs);
	} else {
		print_list(s, prev, gs);
		if (gs->n) {
			printf("\n");
			print_groups(gs);
		}
	}
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "watch", no_argument, NULL, 'w' },
		{ "count", required_argument, NULL, 'c' },
		{ "json", no_argument, NULL, 'j' },
		{ "prometheus", no_argument, NULL, 'p' },
		{ "dir", required_argument, NULL, 'd' },
		{ "no-clean", no_argument, NULL, 'n' },
		{ "groups", no_argument, NULL, 'g' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	long pid = 0;
	int c;

	/* --watch takes an optional separate argument, which getopt cannot
	 * express: it is SECONDS when it is a number. */
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--"))
			break;
		if (!strncmp(argv[i], "--watch=", 8)) {
			if (!parse_seconds(argv[i] + 8, &opt.interval))
				usage_error("--watch: SECONDS must be 0.1 to 86400, not '%s'",
					    argv[i] + 8);
			argv[i] = (char *)"--watch";
		} else if (!strcmp(argv[i], "--watch") && i + 1 < argc && is_number(argv[i + 1])) {
			if (!parse_seconds(argv[i + 1], &opt.interval))
				usage_error("--watch: SECONDS must be 0.1 to 86400, not '%s'",
					    argv[i + 1]);
			memmove(&argv[i + 1], &argv[i + 2], (size_t)(argc - i - 2) * sizeof(*argv));
			argv[--argc] = NULL;
		}
	}
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'w':
			opt.watch = true;
			break;
		case 'c': {
			char *end;
			opt.count = strtol(optarg, &end, 10);
			if (*end || opt.count <= 0)
				usage_error("--count: not a positive number: '%s'", optarg);
			break;
		}
		case 'j':
			opt.json = true;
			break;
		case 'p':
			opt.prom = true;
			break;
		case 'd':
			opt.dir = optarg;
			break;
		case 'n':
			opt.keep_stale = true;
			break;
		case 'g':
			opt.groups = true;
			break;
		case 'h':
			fputs(help_text, stdout);
			return EXIT_OK;
		default:
			fprintf(stderr, "Try 'dedup-stat --help'.\n");
			return EXIT_ERROR;
		}
	}
	if (optind < argc) {
		char *end;
		errno = 0;
		pid = strtol(argv[optind], &end, 10);
		if (errno || *end || pid <= 0 || pid > INT_MAX)
			usage_error("not a process id: '%s'", argv[optind]);
		if (optind + 1 < argc)
			usage_error("unexpected argument '%s'", argv[optind + 1]);
	}
	if (opt.json && opt.prom)
		usage_error("%s", "--json and --prometheus exclude each other");
	if (opt.watch && opt.prom)
		usage_error("%s", "--watch does not combine with --prometheus");
	if (opt.groups && pid)
		usage_error("%s", "--groups does not combine with PID");
	if (opt.count && !opt.watch)
		usage_error("%s", "--count needs --watch");

	struct dirs dirs = stat_dirs(), shares = share_dirs();
	struct groups groups = { 0 };
	struct sample cur, prev;
	struct samples all = { 0 }, before = { 0 };
	bool tty = isatty(STDOUT_FILENO), have_prev = false;
	int status = EXIT_OK;

	if (opt.watch) {
		/* a frame is one write: no half-drawn screen */
		setvbuf(stdout, NULL, _IOFBF, 1 << 16);
		struct sigaction sa = { .sa_handler = on_signal };
		sigaction(SIGINT, &sa, NULL);
		sigaction(SIGTERM, &sa, NULL);
		if (tty && !opt.json)
			tty_keys();
	}
	for (long n = 0; !stop; n++) {
		if (n && !opt.json) {
			if (tty)
				printf("\033[H\033[2J");
			else
				printf("\n");
		}
		if (opt.watch && !opt.json) {
			char when[32];
			time_t t = time(NULL);
			strftime(when, sizeof(when), "%H:%M:%S", localtime(&t));
			if (n == 0 && tty)
				printf("\033[H\033[2J");
			printf("dedup-stat %s  every %g s  (%s to quit)\n\n", when,
			       opt.interval, tty_raw ? "q or Ctrl-C" : "Ctrl-C");
		}
		if (pid) {
			enum load r = find_pid(&dirs, (int)pid, &cur);
			if (r != L_OK) {
				if (n == 0) {
					status = explain_missing((int)pid, r);
					break;
				}
				bool running = proc_running((int)pid);
				if (!opt.json)
					printf("process %ld %s\n", pid,
					       running ? "no longer runs libdedup" : "exited");
				fprintf(stderr, "dedup-stat: process %ld %s\n", pid,
					running ? "stopped running libdedup" : "exited");
				break;
			}
			output_one(&cur, have_prev ? &prev : NULL);
			prev = cur;
			have_prev = opt.watch;
		} else {
			if (!opt.groups)
				scan_all(&dirs, &all);
			scan_groups(&shares, &dirs, &groups);   /* also for each process's group */
			output_all(&all, have_prev ? &before : NULL, &groups);
			struct samples t = before;
			before = all;
			all = t;
			have_prev = opt.watch;
		}
		fflush(stdout);
		if (!opt.watch || (opt.count && n + 1 >= opt.count))
			break;
		sleep_s(opt.interval);
	}
	free(all.v);
	free(before.v);
	free(groups.v);
	dirs_free(&dirs);
	dirs_free(&shares);
	return status;
}
