/* SPDX-License-Identifier: MIT */
/*
 * run.c - the parent side of one workload x mode run.
 *
 * The measured process is a fresh child (child.c for synthetic workloads,
 * redis.c for redis). Before "go" the parent reads the child's Pss (the
 * "before" figure), its VMAs, the merger's CPU and KSM's counters, and for a
 * KSM mode sets ksmd running. After "go" it samples every opt.interval_ms:
 *
 *   saved(t)  = Pss(go) - Pss(t)                 (KiB; series.csv)
 *   cpu(t)    = merger CPU since go              (ksmd, or libdedup's threads)
 *   VMAs      = lines of /proc/PID/maps          (once a second, and at end)
 *
 * The run ends when it has settled: at least opt.min_s after go, the merger
 * has finished 3 full passes since go (KSM full_scans, libdedup full_passes:
 * the API child's "stat" lines, or the preloaded process's published stats
 * file, preload.c), and the saving has not grown by
 * more than max(256 KiB, 0.2% of the buffer) for opt.quiet_s. Or at the cap.
 * (unique: at least 10 s outside --quick, a steadier scan rate.)
 *
 * Figures from the samples:
 *   final saving       last sample (mean of the last second for churn)
 *   t50/t90/t99        first sample where saved >= 50/90/99% of final
 *   merger CPU         cpu at the end of the run (both mergers keep scanning
 *                      after the saving settled, so this grows with the run)
 *   merge CPU          cpu at t99: what reaching the saving cost. CPU per GiB
 *                      saved and merged pages per CPU second use this one.
 *   scanned/CPU s      pages scanned during the run / merger CPU of the run
 *                      (KSM: sysfs pages_scanned; libdedup: pages_scanned)
 * Savings, times and rates are "n/a" when the final saving is below
 * max(1 MiB, 1% of the buffer): there is nothing to time.
 *
 * workers: the measured process is a family (family.c). Pss and VMAs are
 * sums over its members (pids from "ready"), the merger CPU that of every
 * member's libdedup threads plus the group's dedup-share helper, read
 * before the family is told to quit; a member whose /proc cannot be read
 * any more ends the run as a dead measured process does. The buffer is
 * all members' buffers.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

int lb_read(struct linebuf *lb, char *line, size_t len, int timeout_ms)
{
	double end = now_s() + timeout_ms / 1000.0;

	for (;;) {
		char *nl = memchr(lb->buf, '\n', lb->have);
		if (nl) {
			size_t n = (size_t)(nl - lb->buf);
			size_t c = n < len - 1 ? n : len - 1;
			memcpy(line, lb->buf, c);
			line[c] = 0;
			memmove(lb->buf, nl + 1, lb->have - n - 1);
			lb->have -= n + 1;
			return 1;
		}
		if (lb->have == sizeof(lb->buf))
			lb->have = 0;   /* an overlong line: drop it */
		if (g_stop)
			return 0;
		/* poll at least once, also with no time left: drains what is
		 * there without waiting */
		double left = end - now_s();
		struct pollfd p = { lb->fd, POLLIN, 0 };
		int ms = left <= 0 ? 0 : left > 0.1 ? 100 : (int)(left * 1000) + 1;
		int r = poll(&p, 1, ms);
		if (r < 0 && errno != EINTR)
			return -1;
		if (r <= 0) {
			if (left <= 0)
				return 0;
			continue;
		}
		ssize_t n = read(lb->fd, lb->buf + lb->have, sizeof(lb->buf) - lb->have);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		lb->have += (size_t)n;
	}
}

bool kv_num(const char *line, const char *key, double *out)
{
	size_t k = strlen(key);
	for (const char *p = line; (p = strstr(p, key)); p += k) {
		if ((p == line || p[-1] == ' ') && p[k] == '=') {
			char *end;
			double v = strtod(p + k + 1, &end);
			if (end == p + k + 1)
				return false;
			*out = v;
			return true;
		}
	}
	return false;
}

/* every k=v word of a line into r->extra (after the first word) */
static void kv_extras(struct result *r, const char *line, const char *prefix)
{
	const char *p = strchr(line, ' ');
	while (p && *p) {
		while (*p == ' ')
			p++;
		const char *eq = strchr(p, '='), *sp = strchr(p, ' ');
		if (!eq || (sp && sp < eq))
			break;
		size_t kl = (size_t)(eq - p), vl = sp ? (size_t)(sp - eq - 1) : strlen(eq + 1);
		char key[40], val[40];
		snprintf(key, sizeof(key), "%s%.*s", prefix, (int)kl, p);
		snprintf(val, sizeof(val), "%.*s", (int)vl, eq + 1);
		result_extra(r, key, "%s", val);
		p = sp;
	}
}

static void handle_line(struct run_ctx *c, const char *line)
{
	if (strncmp(line, "stat ", 5) == 0 || strncmp(line, "final ", 6) == 0) {
		kv_num(line, "passes", &c->ld_passes);
		kv_num(line, "scanned", &c->ld_scanned);
		kv_num(line, "cpu_ns", &c->ld_cpu_ns);
	} else if (strncmp(line, "error", 5) == 0) {
		snprintf(c->r->note, sizeof(c->r->note), "child: %s", line);
	}
}

static double maps_d(pid_t pid)
{
	long l = proc_maps_lines(pid);
	return l < 0 ? NA : (double)l;
}

/* A /proc figure of the measured process, or its sum over a workers family
 * (NA as soon as a member is gone: the note says which) */
static double fam_sum(struct run_ctx *c, double (*read)(pid_t))
{
	if (!c->nfam)
		return read(c->pid);
	double sum = 0;
	for (size_t i = 0; i < c->nfam; i++) {
		double v = read(c->fam[i]);
		if (is_na(v)) {
			if (!c->r->note[0])
				snprintf(c->r->note, sizeof(c->r->note),
					 "workers member %zu (pid %d) is gone", i, (int)c->fam[i]);
			return NA;
		}
		sum += v;
	}
	return sum;
}

static double pss_of(struct run_ctx *c)
{
	return fam_sum(c, proc_pss_kib);
}

static long maps_of(struct run_ctx *c)
{
	double v = fam_sum(c, maps_d);
	return is_na(v) ? -1 : (long)v;
}

static bool alive(struct run_ctx *c)
{
	int st;
	if (c->child_died)
		return false;
	if (waitpid(c->pid, &st, WNOHANG) == c->pid) {
		c->child_died = true;
		if (!c->r->note[0])
			snprintf(c->r->note, sizeof(c->r->note), "measured process exited (status %d)",
				 WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
		return false;
	}
	return true;
}

bool run_begin(struct run_ctx *c)
{
	struct result *r = c->r;
	const struct mode *m = r->m;

	c->pss0 = pss_of(c);
	c->maps0 = maps_of(c);
	if (is_na(c->pss0) || c->maps0 < 0) {
		snprintf(r->status, sizeof(r->status), "failed");
		snprintf(r->note, sizeof(r->note), "cannot read /proc of the measured process");
		return false;
	}
	/* A preloaded redis-server merges while the dataset is loaded, before
	 * "go": its saving (and VMAs added) are counted from the same workload
	 * under mode none (same seed, same dataset), so they include what was
	 * merged early. (The synthetic child builds its data where the engine
	 * cannot see it until "go", child.c.) */
	if (!is_na(r->baseline_kib)) {
		result_extra(r, "pss_at_go_kib", "%.0f", c->pss0);
		result_extra(r, "saved_before_go_kib", "%.0f", r->baseline_kib - c->pss0);
		c->pss0 = r->baseline_kib;
	}
	if (!is_na(r->baseline_vmas)) {
		result_extra(r, "vmas_at_go", "%ld", c->maps0);
		c->maps0 = (long)r->baseline_vmas;
	}
	r->pss_before_kib = c->pss0;
	r->vmas_before = (double)c->maps0;
	if (m->merger == MERGER_KSM) {
		pid_t k = ksm_ksmd_pid();
		tracker_init(&c->tr, k, false);
		if (k <= 0)
			snprintf(r->note, sizeof(r->note), "ksmd not found: no CPU figure");
		c->ksm_scanned0 = ksm_read("pages_scanned");
		c->ksm_full0 = ksm_read("full_scans");
		c->ksm_skipped0 = ksm_read("pages_skipped");
	} else if (m->merger == MERGER_LIBDEDUP) {
		tracker_init(&c->tr, c->pid, true);
		for (size_t i = 1; i < c->nfam; i++)
			tracker_add(&c->tr, c->fam[i]);
		if (c->group[0])
			tracker_helper(&c->tr, c->group);
	} else {
		tracker_init(&c->tr, 0, false);
	}
	/* libdedup: all the CPU of its threads (with preload they run from the
	 * process's start: finding memory is part of the cost; with the API
	 * they do not exist yet) */
	c->cpu0 = m->merger == MERGER_LIBDEDUP ? 0 : tracker_ns(&c->tr);
	if (m->merger == MERGER_KSM) {
		int err = ksm_start(m->ksm_pages_to_scan, m->ksm_sleep_ms);
		if (err < 0) {
			snprintf(r->status, sizeof(r->status), "failed");
			snprintf(r->note, sizeof(r->note), "cannot start ksmd: %s", strerror(-err));
			return false;
		}
	}
	return true;
}

struct sample {
	double t, saved, cpu;
};

static void figures(struct run_ctx *c, struct sample *s, size_t n)
{
	struct result *r = c->r;
	double final = s[n - 1].saved;

	if (r->w->noisy) {
		double sum = 0;
		size_t k = 0;
		for (size_t i = n; i-- > 0 && s[n - 1].t - s[i].t <= 1.0;) {
			sum += s[i].saved;
			k++;
		}
		final = sum / (double)k;
	}
	r->saved_kib = final;
	r->saved_pages = final / 4.0;
	r->pss_after_kib = c->pss0 - s[n - 1].saved;
	r->duration_s = s[n - 1].t;
	bool merger = r->m->merger != MERGER_NONE;
	r->merger_cpu_s = merger ? s[n - 1].cpu : NA;
	c->cpu_end_s = s[n - 1].cpu;

	double floor_kib = (double)r->pages * 4.0 / 100.0;
	if (floor_kib < 1024)
		floor_kib = 1024;
	if (final < floor_kib)
		return;   /* nothing worth timing: n/a */
	static const double pct[] = { 0.5, 0.9, 0.99 };
	double *dst[] = { &r->t50_s, &r->t90_s, &r->t99_s };
	for (size_t j = 0; j < 3; j++) {
		for (size_t i = 0; i < n; i++) {
			if (s[i].saved >= pct[j] * final) {
				*dst[j] = s[i].t;
				if (j == 2 && merger)
					r->merge_cpu_s = s[i].cpu;
				break;
			}
		}
	}
	if (merger && !is_na(r->merge_cpu_s) && r->merge_cpu_s > 0) {
		r->cpu_per_gib = r->merge_cpu_s / (final / 1048576.0);
		r->merged_per_cpu = r->saved_pages / r->merge_cpu_s;
	}
}

bool run_sample(struct run_ctx *c)
{
	struct result *r = c->r;
	const struct mode *m = r->m;
	size_t cap_n = 1024, n = 0;
	struct sample *s = malloc(cap_n * sizeof(*s));
	double cap = m->slow && opt.slow_cap_s < opt.cap_s ? opt.slow_cap_s : opt.cap_s;
	double eps = (double)r->pages * 4.0 * 0.002, plateau = 0, growth_t = 0;
	double next = c->t_go, last_progress = 0;
	unsigned maps_every = opt.interval_ms ? 1000 / opt.interval_ms : 10;
	long maps = c->maps0;
	bool ok = true;
	char line[4096];

	if (eps < 256)
		eps = 256;
	if (c->pl) {
		preload_poll(c->pl, c, 0);
		c->ld_passes0 = c->ld_passes;
	}
	/* unique saves nothing and would settle at once: give the scan rate a
	 * longer window (pages scanned per CPU second is its figure) */
	double min_s = opt.min_s;
	if (r->w->kind == WL_UNIQUE && !opt.quick && min_s < 10)
		min_s = 10;
	snprintf(r->end_reason, sizeof(r->end_reason), "cap");
	for (unsigned tick = 1;; tick++) {
		next += opt.interval_ms / 1000.0;
		/* wait for the tick, reading the child's reports meanwhile; read
		 * everything even when late (a full pipe would block the child) */
		for (;;) {
			double left = next - now_s();
			if (g_stop)
				break;
			if (!c->rep) {
				struct timespec ts = { 0, left > 0 ? (long)(left * 1e9) : 0 };
				nanosleep(&ts, NULL);
				break;
			}
			int got = lb_read(c->rep, line, sizeof(line), left > 0 ? (int)(left * 1000) + 1 : 0);
			if (got > 0) {
				handle_line(c, line);
				continue;
			}
			if (got < 0)
				c->rep = NULL;   /* EOF: the child is gone */
			if (now_s() >= next)
				break;
		}
		/* reading /proc of a big process can take longer than a tick on
		 * a busy machine: skip ticks rather than run behind */
		if (now_s() > next + opt.interval_ms / 1000.0)
			next = now_s();
		if (g_stop) {
			snprintf(r->end_reason, sizeof(r->end_reason), "interrupted");
			ok = false;
			break;
		}
		double pss = pss_of(c);
		if (!alive(c) || is_na(pss)) {
			c->child_died = true;
			ok = false;
			break;
		}
		double t = now_s() - c->t_go;
		double cpu = (double)(tracker_ns(&c->tr) - c->cpu0) / 1e9;
		if (tick % maps_every == 0) {
			long l = maps_of(c);
			if (l >= 0)
				maps = l;
		}
		double saved = c->pss0 - pss;
		fprintf(c->series, "%.3f,%s,%s,%.0f,%.0f,%.4f\n", t, r->w->name, m->name, pss, saved,
			cpu);
		if (n == cap_n) {
			cap_n *= 2;
			struct sample *ns = realloc(s, cap_n * sizeof(*s));
			if (!ns)
				break;
			s = ns;
		}
		s[n++] = (struct sample){ t, saved, cpu };
		if (saved > plateau + eps) {
			plateau = saved;
			growth_t = t;
		}
		double npass = -1;   /* full passes since go, -1: unknown */
		if (m->merger == MERGER_KSM)
			npass = (double)(ksm_read("full_scans") - c->ksm_full0);
		else if (m->merger == MERGER_LIBDEDUP && m->api)
			npass = c->ld_passes;
		else if (m->merger == MERGER_LIBDEDUP && c->pl && preload_poll(c->pl, c, 0) >= 0)
			npass = c->ld_passes - c->ld_passes0;
		bool passes = npass < 0 || npass >= 3;
		if (t - last_progress >= 1.0) {
			last_progress = t;
			progress("  %5.1f s  saved %8.1f MiB  merger cpu %6.2f s  VMAs %ld  passes %.0f",
				 t, saved / 1024, cpu, maps, npass);
		}
		if (t >= min_s && passes && t - growth_t >= opt.quiet_s) {
			snprintf(r->end_reason, sizeof(r->end_reason), "settled");
			break;
		}
		if (t >= cap)
			break;
	}
	if (n)
		figures(c, s, n);
	free(s);
	if (ok) {
		long l = maps_of(c);
		if (l >= 0)
			maps = l;
	}
	r->vmas_after = (double)maps;
	r->vmas_added = (double)(maps - c->maps0);
	if (m->merger == MERGER_KSM) {
		long long sc = ksm_read("pages_scanned");
		if (sc >= 0 && c->ksm_scanned0 >= 0)
			r->pages_scanned = (double)(sc - c->ksm_scanned0);
	}
	progress("  -> %s after %.1f s: saved %.1f MiB, merger cpu %.2f s", r->end_reason,
		 r->duration_s, r->saved_kib / 1024, c->cpu_end_s);
	return ok;
}

/* The merger's own memory in and outside the measured Pss, and the saving
 * net of what is outside (report.c explains each figure). */
#define KSM_SLAB_OBJ 64   /* struct ksm_rmap_item, struct ksm_stable_node (x86_64, NUMA) */
static void net_saving(struct run_ctx *c)
{
	struct result *r = c->r;
	const char *mp = result_extra_get(r, "ksm_merging_pages");
	const char *pp = result_extra_get(r, "ksm_process_profit");
	const char *ps = result_extra_get(r, "pages_shared");
	const char *lm = result_extra_get(r, "ld_metadata_bytes");

	if (is_na(r->saved_kib))
		return;
	r->net_saved_kib = r->saved_kib;
	if (r->m->merger == MERGER_KSM && mp && pp) {
		/* profit = merging pages - rmap_items * sizeof: the family's
		 * rmap_items; stable nodes from the machine-wide count (one
		 * per shared page: the bench holds the KSM lock) */
		double rmap = (strtod(mp, NULL) * 4096 - strtod(pp, NULL)) / 1024;
		double stable = ps ? strtod(ps, NULL) * KSM_SLAB_OBJ / 1024 : 0;
		result_extra(r, "ksm_rmap_items_kib", "%.0f", rmap);
		result_extra(r, "ksm_stable_nodes_kib", "%.0f", stable);
		result_extra(r, "merger_meta_kib", "%.0f", rmap + stable);
		result_extra(r, "merger_meta_in_pss", "no");
		r->meta_in_kib = 0;
		r->meta_out_kib = rmap + stable;
	} else if (r->m->merger == MERGER_LIBDEDUP && lm) {
		/* the tables are the members' own memory; a group's helper is
		 * another process, its index and offers outside their Pss */
		double helper = 0;
		pid_t hp = c->tr.helper ? c->tr.helper : c->tr.helper_seen;
		const char *had = result_extra_get(r, "helper_pss_kib");
		if (had) {   /* read at the end of sampling; later the members
			      * have left and the helper may be gone */
			helper = strtod(had, NULL);
		} else if (c->group[0] && hp > 0) {
			helper = proc_pss_kib(hp);
			if (is_na(helper))
				helper = 0;   /* gone (idle exit): it holds nothing */
			result_extra(r, "helper_pss_kib", "%.0f", helper);
		}
		result_extra(r, "merger_meta_kib", "%.0f", strtod(lm, NULL) / 1024);
		result_extra(r, "merger_meta_in_pss", "yes");
		r->meta_in_kib = strtod(lm, NULL) / 1024;
		r->meta_out_kib = helper;
	}
	if (!is_na(r->meta_out_kib))
		r->net_saved_kib = r->saved_kib - r->meta_out_kib;
}

void run_ksm_collect(struct run_ctx *c)
{
	static const char *const counters[] = {
		"pages_sharing", "pages_shared", "pages_unshared", "pages_volatile",
		"general_profit", "ksm_zero_pages", "stable_node_chains", "stable_node_dups",
	};
	struct result *r = c->r;
	char path[64], buf[1024];

	if (r->m->merger != MERGER_KSM) {
		net_saving(c);
		return;
	}
	long long v = ksm_read("full_scans");
	if (v >= 0)
		result_extra(r, "ksm_full_scans", "%lld", v - c->ksm_full0);
	v = ksm_read("pages_skipped");
	if (v >= 0)
		result_extra(r, "ksm_pages_skipped", "%lld", v - c->ksm_skipped0);
	for (size_t i = 0; i < B_ARRAY_SIZE(counters); i++) {
		v = ksm_read(counters[i]);
		if (v >= 0)
			result_extra(r, counters[i], "%lld", v);
	}
	/* the process's own view: merging pages, and whether prctl's
	 * "merge any" survived (exec); a workers family's counts summed */
	for (size_t i = 0; i < (c->nfam ? c->nfam : 1); i++) {
		snprintf(path, sizeof(path), "/proc/%d/ksm_stat", c->nfam ? c->fam[i] : c->pid);
		if (!proc_read_file(path, buf, sizeof(buf)))
			continue;
		for (char *l = strtok(buf, "\n"); l; l = strtok(NULL, "\n")) {
			char key[40], val[40], *end;
			if (sscanf(l, "%39[a-z_]%*[: ]%39s", key, val) != 2)
				continue;
			const char *had = result_extra_get(r, key);
			double x = strtod(val, &end);
			if (i && had && !*end)
				result_extra(r, key, "%.0f", strtod(had, NULL) + x);
			else if (!i)
				result_extra(r, key, "%s", val);
		}
	}
	net_saving(c);
}

void run_note_early(struct result *r, double early_kib, const char *when, double secs)
{
	if (is_na(r->saved_kib) || r->saved_kib <= 0 || early_kib <= 0.1 * r->saved_kib)
		return;
	snprintf(r->note, sizeof(r->note),
		 "merging overlapped the data being written: %.1f MiB saved while %s (%.2f s), "
		 "%.1f MiB at the end; t50/t90/t99 count from after that", early_kib / 1024, when,
		 is_na(secs) ? -1.0 : secs, r->saved_kib / 1024);
}

void run_ld_final(struct run_ctx *c)
{
	struct result *r = c->r;

	/* preload: wait for a snapshot newer than the end of sampling (the
	 * engine publishes at least every ~150 ms), then read the CPU at once */
	if (c->pl) {
		if (preload_poll(c->pl, c, 500) < 0)
			return;
		preload_extras(c->pl, r);
	}
	double cpu = (double)(tracker_ns(&c->tr) - c->cpu0) / 1e9;
	r->pages_scanned = c->ld_scanned;
	if (cpu > 0)
		r->scanned_per_cpu = c->ld_scanned / cpu;
	result_extra(r, "engine_cpu_s_own_count", "%.3f", c->ld_cpu_ns / 1e9);
	/* libdedup-share: the helper's part of the merger CPU, and whether it
	 * was found at all (pid 0: never; its CPU then is missing) */
	if (c->group[0]) {
		result_extra(r, "helper_pid", "%d", (int)c->tr.helper_seen);
		result_extra(r, "helper_cpu_s", "%.3f", (double)tracker_helper_ns(&c->tr) / 1e9);
	}
}

/* A child that stopped answering: what each of its threads waits in, for
 * the note (e.g. "dedup-bench:handle_userfault"). */
static void hang_note(struct run_ctx *c, const char *what)
{
	struct result *r = c->r;
	char path[96], comm[32], wchan[64], list[200] = "";
	size_t len = 0;

	/* not hung but failed: its own error line says more */
	if (g_stop || !alive(c) || strncmp(r->note, "child: error", 12) == 0)
		return;
	snprintf(path, sizeof(path), "/proc/%d/task", c->pid);
	DIR *d = opendir(path);
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task/%.16s/comm", c->pid, e->d_name);
		if (!proc_read_file(path, comm, sizeof(comm)))
			continue;
		comm[strcspn(comm, "\n")] = 0;
		snprintf(path, sizeof(path), "/proc/%d/task/%.16s/wchan", c->pid, e->d_name);
		if (!proc_read_file(path, wchan, sizeof(wchan)))
			snprintf(wchan, sizeof(wchan), "?");
		int n = snprintf(list + len, sizeof(list) - len, "%s%s:%s", len ? " " : "", comm,
				 wchan);
		if (n < 0 || (size_t)n >= sizeof(list) - len)
			break;
		len += (size_t)n;
	}
	if (d)
		closedir(d);
	snprintf(r->note, sizeof(r->note), "child hung %s; threads (comm:wchan): %s", what, list);
}

static int send_cmd(int fd, const char *cmd)
{
	return write_full(fd, cmd, strlen(cmd)) < 0 ? -1 : 0;
}

/* wait for a line starting with want; other lines go to handle_line */
static bool expect(struct run_ctx *c, const char *want, char *line, size_t len, int timeout_ms)
{
	double end = now_s() + timeout_ms / 1000.0;
	while (c->rep && now_s() < end && !g_stop) {
		int got = lb_read(c->rep, line, len, (int)((end - now_s()) * 1000) + 1);
		if (got < 0)
			return false;
		if (got == 0)
			continue;
		if (strncmp(line, want, strlen(want)) == 0)
			return true;
		handle_line(c, line);
		if (strncmp(line, "error", 5) == 0)
			return false;
	}
	return false;
}

static void reap(pid_t pid, int grace_ms)
{
	int st;
	for (int i = 0; i < grace_ms / 10; i++) {
		if (waitpid(pid, &st, WNOHANG) != 0)
			return;
		struct timespec ts = { 0, 10000000 };
		nanosleep(&ts, NULL);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
}

/*
 * The churn writers' rate (2 threads), or a workers family's readers' (one
 * per member: readers > 0), from the "done" line. A thread blocked for good
 * is a hang, not a slowdown.
 */
static void app_figures(struct result *r, const char *line, size_t readers)
{
	const char *pfx = readers ? "read" : "churn", *what = readers ? "reader" : "churn writer";
	const char *unit = readers ? "reads/s" : "writes/s";
	unsigned target = (unsigned)(readers ? readers : 2) * opt.churn_rate;
	char key[48];
	double ops = 0, secs = 0, stuck = 0, rel = 0, v;

	snprintf(key, sizeof(key), "%s_secs", pfx);
	if (kv_num(line, readers ? "read_ops" : "churn_writes", &ops) && kv_num(line, key, &secs) &&
	    secs > 0) {
		r->app_rate = ops / secs;
		r->app_unit = unit;
		snprintf(key, sizeof(key), "%s_target_%s_per_s", pfx, readers ? "reads" : "writes");
		result_extra(r, key, "%u", target);
		snprintf(key, sizeof(key), "%s_busy_ns", pfx);
		if (kv_num(line, key, &v) && ops > 0) {
			snprintf(key, sizeof(key), "%s_ns_per_%s", pfx, readers ? "read" : "write");
			result_extra(r, key, "%.1f", v / ops);
		}
	}
	snprintf(key, sizeof(key), "%s_stuck", pfx);
	if (kv_num(line, key, &stuck) && stuck > 0) {
		snprintf(key, sizeof(key), "%s_released_by_signal", pfx);
		kv_num(line, key, &rel);
		snprintf(key, sizeof(key), "%s_stuck_wchan", pfx);
		const char *wc = result_extra_get(r, key);
		snprintf(r->status, sizeof(r->status), "failed");
		snprintf(r->note, sizeof(r->note),
			 "%.0f %s(s) still blocked in the kernel (wchan %s) 10 s after the run; %.0f "
			 "released by a signal: a fault never resolved (lost wake-up?); %s rate %.0f "
			 "of %u %s", stuck, what, wc ? wc : "?", rel, readers ? "read" : "churn",
			 r->app_rate, target, unit);
	} else if (!is_na(r->app_rate) && r->app_rate < 0.1 * target) {
		snprintf(r->status, sizeof(r->status), "failed");
		snprintf(r->note, sizeof(r->note), "%ss stalled: %.0f of %u %s", what, r->app_rate,
			 target, unit);
	}
}

void run_one(struct result *r, FILE *series)
{
	const struct mode *m = r->m;
	int ctl[2], rp[2];
	char line[4096];
	struct linebuf lb = { 0 };
	struct run_ctx c = { .r = r, .series = series };

	if (r->w->external) {
		redis_run(r, series);
		return;
	}
	size_t bytes = r->size_mib << 20;
	if (m->preload && !(c.pl = preload_new())) {
		snprintf(r->status, sizeof(r->status), "failed");
		snprintf(r->note, sizeof(r->note), "cannot make a DEDUP_STAT_DIR: %s", strerror(errno));
		return;
	}
	if (pipe2(ctl, O_CLOEXEC) < 0 || pipe2(rp, O_CLOEXEC) < 0) {
		snprintf(r->status, sizeof(r->status), "failed");
		snprintf(r->note, sizeof(r->note), "pipe: %s", strerror(errno));
		preload_free(c.pl);
		return;
	}
	char a_bytes[32], a_seed[32], a_lat[16], a_rate[16], a_hot[16], a_workers[16];
	snprintf(a_bytes, sizeof(a_bytes), "%zu", bytes);
	snprintf(a_seed, sizeof(a_seed), "%llu", (unsigned long long)opt.seed);
	snprintf(a_lat, sizeof(a_lat), "%u", opt.lat_samples);
	snprintf(a_rate, sizeof(a_rate), "%u", opt.churn_rate);
	snprintf(a_hot, sizeof(a_hot), "%u", opt.churn_hot);
	snprintf(a_workers, sizeof(a_workers), "%u", opt.workers);
	char *argv[] = { (char *)"dedup-bench", (char *)"__child", (char *)r->w->name,
			 (char *)m->name, a_bytes, a_seed, a_lat, a_rate, a_hot, a_workers, NULL };
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		snprintf(r->status, sizeof(r->status), "failed");
		snprintf(r->note, sizeof(r->note), "fork: %s", strerror(errno));
		preload_free(c.pl);
		return;
	}
	if (pid == 0) {
		signal(SIGINT, SIG_IGN);   /* the parent decides when we stop */
		signal(SIGTERM, SIG_DFL);
		if (dup2(ctl[0], 3) < 0 || dup2(rp[1], 4) < 0)
			_exit(127);
		if (c.pl)
			preload_setenv(c.pl);
		execv(opt.self, argv);
		_exit(127);
	}
	g_child = pid;
	close(ctl[0]);
	close(rp[1]);
	lb.fd = rp[0];
	c.pid = pid;
	c.rep = &lb;

	progress("  building %zu MiB", r->size_mib);
	if (!expect(&c, "ready", line, sizeof(line), 300000)) {
		snprintf(r->status, sizeof(r->status), g_stop ? "interrupted" : "failed");
		if (!r->note[0])
			snprintf(r->note, sizeof(r->note), "child did not get ready");
		goto out;
	}
	double pages;
	if (kv_num(line, "pages", &pages))
		r->pages = (uint64_t)pages;
	/* workers: the family's members and group (family.c) */
	const char *p = strstr(line, " pids=");
	for (p = p ? p + 6 : NULL; p && c.nfam < MAX_WORKERS; p = strchr(p, ',')) {
		p += *p == ',';
		c.fam[c.nfam++] = (pid_t)strtol(p, NULL, 10);
	}
	if ((p = strstr(line, " group=")))
		snprintf(c.group, sizeof(c.group), "%.*s", (int)strcspn(p + 7, " "), p + 7);
	if (c.nfam)
		result_extra(r, "workers", "%zu", c.nfam);
	/* the library's constructor published the file before main() ran */
	if (c.pl && !preload_attach(c.pl, pid, 5000)) {
		snprintf(r->status, sizeof(r->status), g_stop ? "interrupted" : "failed");
		snprintf(r->note, sizeof(r->note),
			 "libdedup is not running in the preloaded child (no stats file; its "
			 "stderr says why)");
		goto out;
	}
	if (!run_begin(&c))
		goto out;
	c.t_go = now_s();
	send_cmd(ctl[1], "go\n");
	if (!expect(&c, "started", line, sizeof(line), 60000)) {
		bool unusable = strstr(r->note, "error-unusable") != NULL;
		snprintf(r->status, sizeof(r->status), g_stop ? "interrupted" : unusable ? "skipped" : "failed");
		if (!r->note[0])
			snprintf(r->note, sizeof(r->note), "child did not start the merger");
		goto out;
	}
	double enable_ns = NA;
	if (kv_num(line, "enable_ns", &enable_ns))
		result_extra(r, m->preload ? "data_copy_ms" : "enable_ms", "%.2f", enable_ns / 1e6);
	if (m->preload) {
		/* go..started was the child writing its data where the engine
		 * sees it (child.c): the clock starts when the data is in place,
		 * as it does for the API at dedup_register. What merged during
		 * the copy counts, at t = 0. */
		c.t_go = now_s();
		double pss = proc_pss_kib(pid);
		if (!is_na(pss))
			result_extra(r, "saved_at_start_kib", "%.0f", c.pss0 - pss);
	}
	if (!run_sample(&c)) {
		snprintf(r->status, sizeof(r->status), g_stop ? "interrupted" : "failed");
		goto out;
	}
	if (c.pl) {
		const char *early = result_extra_get(r, "saved_at_start_kib");
		if (early)
			run_note_early(r, strtod(early, NULL), "the child copied its data in",
				       is_na(enable_ns) ? NA : enable_ns / 1e9);
		run_ld_final(&c);
	}
	run_ksm_collect(&c);

	send_cmd(ctl[1], "measure\n");
	/* the libdedup child answers with its final counters at once: pair them
	 * with the CPU read now */
	if (m->merger == MERGER_LIBDEDUP && m->api && expect(&c, "final", line, sizeof(line), 30000)) {
		handle_line(&c, line);
		run_ld_final(&c);
	} else if (m->merger == MERGER_KSM && !is_na(r->pages_scanned) && c.cpu_end_s > 0) {
		r->scanned_per_cpu = r->pages_scanned / c.cpu_end_s;
	}
	if (!expect(&c, "lat", line, sizeof(line), 120000)) {
		snprintf(r->status, sizeof(r->status), g_stop ? "interrupted" : "failed");
		hang_note(&c, "after \"measure\" (stopping churn writers, timing writes)");
		if (!r->note[0])
			snprintf(r->note, sizeof(r->note), "child did not time its writes");
		goto out;
	}
	/* pause the merger for the second half of the write timing */
	if (m->merger == MERGER_KSM)
		ksm_stop();
	send_cmd(ctl[1], "pause\n");
	if (!expect(&c, "done", line, sizeof(line), 120000)) {
		snprintf(r->status, sizeof(r->status), g_stop ? "interrupted" : "failed");
		hang_note(&c, "after \"pause\" (dedup_shutdown, timing writes)");
		if (!r->note[0])
			snprintf(r->note, sizeof(r->note), "child did not finish the measurements");
		goto out;
	}
	kv_extras(r, line, "");
	net_saving(&c);   /* again, with the final counters */
	double v, n = 0;
	if (kv_num(line, "cow_n", &n) && n > 0 && kv_num(line, "cow_p50_ns", &v)) {
		r->cow_p50_us = v / 1000;
		if (kv_num(line, "cow_p99_ns", &v))
			r->cow_p99_us = v / 1000;
	}
	r->cow_samples = n;
	if (kv_num(line, "cow_idle_n", &n) && n > 0 && kv_num(line, "cow_idle_p50_ns", &v)) {
		r->cow_idle_p50_us = v / 1000;
		if (kv_num(line, "cow_idle_p99_ns", &v))
			r->cow_idle_p99_us = v / 1000;
	}
	snprintf(r->status, sizeof(r->status), "ok");
	const char *pause = result_extra_get(r, "preload_pause");
	if (m->preload && (!pause || strcmp(pause, "ok") != 0)) {
		/* the idle timings would be of a running engine: not idle */
		r->cow_idle_p50_us = r->cow_idle_p99_us = NA;
		snprintf(r->note, sizeof(r->note), "no idle COW timing: the preloaded "
			 "dedup_shutdown() failed (%s)", pause ? pause : "not reported");
	}
	if (r->w->kind == WL_CHURN || r->w->kind == WL_WORKERS)
		app_figures(r, line, r->w->kind == WL_WORKERS ? (c.nfam ? c.nfam : 1) : 0);
out:
	if (m->merger == MERGER_KSM)
		ksm_stop();
	send_cmd(ctl[1], "quit\n");
	close(ctl[1]);
	close(rp[0]);
	reap(pid, g_stop ? 0 : 10000);
	g_child = 0;
	preload_free(c.pl);
}
