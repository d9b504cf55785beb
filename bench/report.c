/* SPDX-License-Identifier: MIT */
/*
 * report.c - dedup-bench's outputs, all from one list of figures.
 *
 *   stdout            one row per workload x mode, then notes and targets
 *   results.csv       the same rows, every figure ("n/a" when missing)
 *   results.json      the rows with null for missing figures, the merger's
 *                     own counters ("extra"), the settings, the targets
 *   series.csv        written while running (run.c): time_s, workload,
 *                     mode, pss_kib, saved_kib, merger_cpu_s
 *
 * The merger's own memory, so that modes compare like with like (run.c,
 * net_saving):
 *   meta_in_pss_kib   what the measured Pss already pays for: libdedup's
 *                     tables (metadata_bytes, allocated: an upper bound of
 *                     what is resident); 0 for KSM
 *   meta_out_pss_kib  what it does not show: KSM's kernel slab - one 64-byte
 *                     rmap_item per page it tracks (ksm_stat: merging_pages
 *                     * 4096 - ksm_process_profit, summed over the family)
 *                     and one 64-byte ksm_stable_node per shared page
 *                     (pages_shared, machine-wide); for libdedup-share the
 *                     group helper's Pss (its index and offers); 0 for a
 *                     process merging alone
 *   net_saved_kib     saved_kib - meta_out_pss_kib: saved net of the
 *                     merger's own memory, for every mode
 * n/a for mode none (no merger), and for KSM where ksm_stat is missing.
 *
 * When a figure is n/a (documented here, checked by check_quick.sh):
 *   merger_cpu_s, pages_scanned, scanned_pages_per_cpu_s   mode none
 *   t50/t90/t99, merge_cpu_s, cpu_s_per_gib_saved, merged_pages_per_cpu_s
 *                     the saving is below max(1 MiB, 1% of the buffer)
 *   cow_p50_us, cow_p99_us, cow_idle_p50_us, cow_idle_p99_us   no merged
 *                     page to write to (cow_samples 0: mode none, unique,
 *                     workers without cross-process merging), and redis
 *                     (the harness cannot write into the server)
 *   app_rate, slowdown_pct   workloads other than churn, redis and workers;
 *                     slowdown also when mode none was not run
 *   cow_idle_p50_us, cow_idle_p99_us   also the preload mode when its
 *                     child could not pause the engine (note says why)
 *
 * libdedup's own counters come from the API child's "stat" lines, or for
 * the preload mode from the stats file the library publishes (preload.c);
 * both give the same keys in "extra".
 *
 * workers: a row is its family's (run.c): pages, Pss, saved, VMAs and the
 * readers' rate are sums over the processes; libdedup's counters too, but
 * passes is the fewest of any member. The share mode's targets are its
 * own (share_targets()); the other modes have no workers target.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bench.h"

/* X(field, column name, decimals) */
#define FIGURES(X)                                   \
	X(duration_s, "duration_s", 2)               \
	X(pss_before_kib, "pss_before_kib", 0)       \
	X(pss_after_kib, "pss_after_kib", 0)         \
	X(saved_kib, "saved_kib", 0)                 \
	X(saved_pages, "saved_pages", 0)             \
	X(net_saved_kib, "net_saved_kib", 0)         \
	X(meta_in_kib, "meta_in_pss_kib", 0)         \
	X(meta_out_kib, "meta_out_pss_kib", 0)       \
	X(t50_s, "t50_s", 2)                         \
	X(t90_s, "t90_s", 2)                         \
	X(t99_s, "t99_s", 2)                         \
	X(merger_cpu_s, "merger_cpu_s", 3)           \
	X(merge_cpu_s, "merge_cpu_s", 3)             \
	X(cpu_per_gib, "cpu_s_per_gib_saved", 3)     \
	X(merged_per_cpu, "merged_pages_per_cpu_s", 0) \
	X(pages_scanned, "pages_scanned", 0)         \
	X(scanned_per_cpu, "scanned_pages_per_cpu_s", 0) \
	X(vmas_before, "vmas_before", 0)             \
	X(vmas_after, "vmas_after", 0)               \
	X(vmas_added, "vmas_added", 0)               \
	X(cow_p50_us, "cow_p50_us", 2)               \
	X(cow_p99_us, "cow_p99_us", 2)               \
	X(cow_samples, "cow_samples", 0)             \
	X(cow_idle_p50_us, "cow_idle_p50_us", 2)     \
	X(cow_idle_p99_us, "cow_idle_p99_us", 2)     \
	X(app_rate, "app_rate", 0)                   \
	X(slowdown_pct, "slowdown_pct", 2)

void result_init(struct result *r, const struct workload *w, const struct mode *m)
{
	memset(r, 0, sizeof(*r));
	r->w = w;
	r->m = m;
	r->size_mib = opt.size_mib;
	r->pages = (uint64_t)opt.size_mib * 256;
	snprintf(r->status, sizeof(r->status), "failed");
	snprintf(r->end_reason, sizeof(r->end_reason), "n/a");
	r->app_unit = "n/a";
	r->baseline_kib = NA;
	r->baseline_vmas = NA;
#define X(f, name, dec) r->f = NA;
	FIGURES(X)
#undef X
}

void result_extra(struct result *r, const char *key, const char *fmt, ...)
{
	struct kv *e = NULL;
	for (size_t i = 0; i < r->nextra; i++)
		if (strcmp(r->extra[i].key, key) == 0)
			e = &r->extra[i];
	if (!e) {
		if (r->nextra == MAX_EXTRA)
			return;
		e = &r->extra[r->nextra++];
		snprintf(e->key, sizeof(e->key), "%s", key);
	}
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->val, sizeof(e->val), fmt, ap);
	va_end(ap);
}

const char *result_extra_get(const struct result *r, const char *key)
{
	for (size_t i = 0; i < r->nextra; i++)
		if (strcmp(r->extra[i].key, key) == 0)
			return r->extra[i].val;
	return NULL;
}

static const char *num(char *buf, size_t len, double v, int dec)
{
	if (is_na(v))
		return "n/a";
	snprintf(buf, len, "%.*f", dec, v);
	return buf;
}

/* ---- the table --------------------------------------------------------- */

void report_table(FILE *f, struct result *rs, size_t n)
{
	char b[20][32], mi[32], mo[32], ns[32];

	fprintf(f, "\n%-9s %-16s %-7s %9s %9s %7s %7s %9s %6s %6s %6s %7s %7s %7s %9s %9s %6s %8s %8s %8s %8s %9s %8s %s\n",
		"workload", "mode", "status", "saved", "saved", "meta in", "meta", "net", "t50",
		"t90", "t99", "cpu", "merge", "cpu/GiB", "merged/", "scanned/", "VMAs", "cow p50",
		"cow p99", "idle p50", "idle p99", "app", "slowdown", "end");
	fprintf(f, "%-9s %-16s %-7s %9s %9s %7s %7s %9s %6s %6s %6s %7s %7s %7s %9s %9s %6s %8s %8s %8s %8s %9s %8s %s\n",
		"", "", "", "MiB", "pages", "Pss MiB", "out MiB", "saved MiB", "s", "s", "s", "s",
		"cpu s", "saved", "cpu s", "cpu s", "added", "us", "us", "us", "us", "rate", "%", "");
	for (size_t i = 0; i < n; i++) {
		struct result *r = &rs[i];
		fprintf(f,
			"%-9s %-16s %-7s %9s %9s %7s %7s %9s %6s %6s %6s %7s %7s %7s %9s %9s %6s %8s %8s %8s %8s %9s %8s %s\n",
			r->w->name, r->m->name, r->status,
			num(b[0], 32, is_na(r->saved_kib) ? NA : r->saved_kib / 1024, 1),
			num(b[1], 32, r->saved_pages, 0),
			num(mi, 32, is_na(r->meta_in_kib) ? NA : r->meta_in_kib / 1024, 1),
			num(mo, 32, is_na(r->meta_out_kib) ? NA : r->meta_out_kib / 1024, 1),
			num(ns, 32, is_na(r->net_saved_kib) ? NA : r->net_saved_kib / 1024, 1),
			num(b[2], 32, r->t50_s, 2),
			num(b[3], 32, r->t90_s, 2), num(b[4], 32, r->t99_s, 2),
			num(b[5], 32, r->merger_cpu_s, 2), num(b[6], 32, r->merge_cpu_s, 2),
			num(b[7], 32, r->cpu_per_gib, 2), num(b[8], 32, r->merged_per_cpu, 0),
			num(b[9], 32, r->scanned_per_cpu, 0), num(b[10], 32, r->vmas_added, 0),
			num(b[11], 32, r->cow_p50_us, 2), num(b[12], 32, r->cow_p99_us, 2),
			num(b[13], 32, r->cow_idle_p50_us, 2), num(b[14], 32, r->cow_idle_p99_us, 2),
			num(b[15], 32, r->app_rate, 0), num(b[16], 32, r->slowdown_pct, 2),
			r->end_reason);
	}
	fprintf(f, "\nsaved: Pss(go) - Pss(end) of the measured process. meta in Pss: the "
		   "merger's own tables, paid inside that Pss (libdedup's metadata_bytes, allocated); "
		   "meta out: its memory outside it (KSM: 64-byte rmap_items and stable nodes in "
		   "kernel slab; libdedup-share: the group helper's Pss); net saved: saved - meta "
		   "out.\ncpu: merger CPU from go to "
		   "the end; merge cpu: until 99%% of the saving (used for cpu/GiB and merged/cpu "
		   "s). cow: first write to a merged page with the merger running; idle: with it paused "
		   "(ksmd run=0, dedup_shutdown). app rate: churn writes/s, redis GET/s. Merger CPU "
		   "from %s.\n",
		proc_cpu_source());
	for (size_t i = 0; i < n; i++) {
		if (rs[i].w->kind != WL_WORKERS)
			continue;
		fprintf(f, "workers: %u processes of %zu MiB each; saved, VMAs and app rate (reads/s) "
			   "are sums over them, cpu that of every member's libdedup threads and the "
			   "group's dedup-share helper; cow: the first process's writes.\n",
			opt.workers, opt.size_mib);
		break;
	}
	fprintf(f, "loadavg at start: %s; at end: %s; vm.max_map_count: %ld\n", opt.load_start,
		opt.load_end, opt.max_map_count);
	bool notes = false;
	for (size_t i = 0; i < n; i++) {
		if (!rs[i].note[0])
			continue;
		if (!notes)
			fprintf(f, "notes:\n");
		notes = true;
		fprintf(f, "  %s x %s: %s\n", rs[i].w->name, rs[i].m->name, rs[i].note);
	}
}

/* ---- targets -------------------------------------------------------------- */

struct target {
	char name[96];
	double measured, goal, ratio;   /* ratio: measured against the goal's basis */
	char basis[96];
	const char *verdict;
};

static struct result *find(struct result *rs, size_t n, const char *w, const char *m)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(rs[i].w->name, w) == 0 && strcmp(rs[i].m->name, m) == 0 &&
		    strcmp(rs[i].status, "ok") == 0)
			return &rs[i];
	return NULL;
}

/*
 * The share mode's targets (issue 13), on workers only: the family's saving
 * against ksm-fast's; the merger CPU (every member's libdedup threads and
 * the helper) until 99% of the saving, against ksmd's (the whole run's CPU
 * depends on when each run settled: in the basis); the readers' slowdown
 * against libdedup-api's, which merges each member alone (what per-process
 * merging costs), with 1 point of noise.
 */
static size_t share_targets(struct result *rs, size_t n, const struct mode *L, struct target *t,
			    size_t max)
{
	struct result *a = find(rs, n, "workers", L->name), *b = find(rs, n, "workers", "ksm-fast");
	struct result *api = find(rs, n, "workers", "libdedup-api");
	struct target x[3];

	memset(x, 0, sizeof(x));
	snprintf(x[0].name, sizeof(x[0].name), "%s: saving on workers >= 99%% of ksm-fast", L->name);
	x[0].goal = 0.99;
	x[0].measured = a ? a->saved_kib : NA;
	x[0].ratio = a && b && b->saved_kib > 1024 ? a->saved_kib / b->saved_kib : NA;
	snprintf(x[0].basis, sizeof(x[0].basis), "x ksm-fast (%s MiB)", b ? "" : "n/a");
	if (b && a && !is_na(a->net_saved_kib) && !is_na(b->net_saved_kib) && b->net_saved_kib > 0)
		snprintf(x[0].basis, sizeof(x[0].basis), "x ksm-fast (%.1f MiB); net of metadata %.3f",
			 b->saved_kib / 1024, a->net_saved_kib / b->net_saved_kib);
	else if (b)
		snprintf(x[0].basis, sizeof(x[0].basis), "x ksm-fast (%.1f MiB)", b->saved_kib / 1024);
	x[0].verdict = is_na(x[0].ratio) ? "n/a" : x[0].ratio >= 0.99 ? "met" : "MISSED";

	snprintf(x[1].name, sizeof(x[1].name), "%s: merge CPU on workers <= ksmd's", L->name);
	x[1].goal = 1;
	x[1].measured = a ? a->merge_cpu_s : NA;
	x[1].ratio = a && b && !is_na(a->merge_cpu_s) && !is_na(b->merge_cpu_s) && b->merge_cpu_s > 0
			     ? a->merge_cpu_s / b->merge_cpu_s : NA;
	snprintf(x[1].basis, sizeof(x[1].basis), "x ksmd (n/a)");
	if (b && !is_na(b->merge_cpu_s) && a && !is_na(a->merger_cpu_s))
		snprintf(x[1].basis, sizeof(x[1].basis), "x ksmd (%.2f s); whole run %.2f / %.2f s",
			 b->merge_cpu_s, a->merger_cpu_s, b->merger_cpu_s);
	x[1].verdict = is_na(x[1].ratio) ? "n/a" : x[1].ratio <= 1 ? "met" : "MISSED";

	snprintf(x[2].name, sizeof(x[2].name), "%s: slowdown on workers <= libdedup-api's + 1",
		 L->name);
	x[2].goal = 1;
	x[2].measured = a ? a->slowdown_pct : NA;
	x[2].ratio = a && api && !is_na(a->slowdown_pct) && !is_na(api->slowdown_pct)
			     ? a->slowdown_pct - api->slowdown_pct : NA;
	snprintf(x[2].basis, sizeof(x[2].basis), "points over libdedup-api (n/a)");
	if (api && !is_na(api->slowdown_pct))
		snprintf(x[2].basis, sizeof(x[2].basis), "points over libdedup-api (%.2f%%)",
			 api->slowdown_pct);
	x[2].verdict = is_na(x[2].ratio) ? "n/a" : x[2].ratio <= 1 ? "met" : "MISSED";

	size_t k = 0;
	for (; k < 3 && k < max; k++)
		t[k] = x[k];
	return k;
}

static size_t targets(struct result *rs, size_t n, struct target *t, size_t max)
{
	size_t k = 0;
	const char *ksm = "ksm-fast";

#define ADD(x)                 \
	do {                   \
		if (k < max)   \
			t[k++] = (x); \
	} while (0)
	for (size_t mi = 0; mi < nmodes; mi++) {
		const struct mode *L = &modes[mi];
		if (L->merger != MERGER_LIBDEDUP)
			continue;
		bool any = false;
		for (size_t i = 0; i < n; i++)
			any |= rs[i].m == L && strcmp(rs[i].status, "ok") == 0;
		if (!any)
			continue;
		if (L->share) {
			k += share_targets(rs, n, L, t + k, max - k);
			continue;
		}
		struct target x;
		struct result *a, *b;

		/* 1: scanning unique memory */
		a = find(rs, n, "unique", L->name);
		b = find(rs, n, "unique", ksm);
		memset(&x, 0, sizeof(x));
		snprintf(x.name, sizeof(x.name), "%s: scan unique >= 1.5 M pages/CPU s", L->name);
		x.goal = 1.5e6;
		x.measured = a ? a->scanned_per_cpu : NA;
		x.ratio = is_na(x.measured) ? NA : x.measured / x.goal;
		if (b && !is_na(b->scanned_per_cpu))
			snprintf(x.basis, sizeof(x.basis), "of goal; ksm-fast %.0f pages/CPU s",
				 b->scanned_per_cpu);
		else
			snprintf(x.basis, sizeof(x.basis), "of goal");
		x.verdict = is_na(x.ratio) ? "n/a" : x.ratio >= 1 ? "met" : "MISSED";
		ADD(x);

		/* 2: merging runs per CPU second, against KSM */
		a = find(rs, n, "runs", L->name);
		b = find(rs, n, "runs", ksm);
		memset(&x, 0, sizeof(x));
		snprintf(x.name, sizeof(x.name), "%s: merge runs >= 2x ksm-fast pages/CPU s", L->name);
		x.goal = 2;
		x.measured = a ? a->merged_per_cpu : NA;
		x.ratio = a && b && !is_na(a->merged_per_cpu) && !is_na(b->merged_per_cpu)
				  ? a->merged_per_cpu / b->merged_per_cpu : NA;
		snprintf(x.basis, sizeof(x.basis), "x ksm-fast (%s pages/CPU s)",
			 b && !is_na(b->merged_per_cpu) ? "measured" : "n/a");
		if (b && !is_na(b->merged_per_cpu))
			snprintf(x.basis, sizeof(x.basis), "x ksm-fast (%.0f pages/CPU s)",
				 b->merged_per_cpu);
		x.verdict = is_na(x.ratio) ? "n/a" : x.ratio >= 2 ? "met" : "MISSED";
		ADD(x);

		/* 3: savings, every workload; workers (across processes)
		 * is the share mode's */
		for (size_t wi = 0; wi < nworkloads; wi++) {
			if (workloads[wi].kind == WL_WORKERS)
				continue;
			a = find(rs, n, workloads[wi].name, L->name);
			b = find(rs, n, workloads[wi].name, ksm);
			memset(&x, 0, sizeof(x));
			snprintf(x.name, sizeof(x.name), "%s: saving on %s >= 99%% of ksm-fast", L->name,
				 workloads[wi].name);
			x.goal = 0.99;
			x.measured = a ? a->saved_kib : NA;
			/* KSM saving nothing (unique) gives no basis */
			double floor_kib = (double)opt.size_mib * 1024 / 100;
			if (floor_kib < 1024)
				floor_kib = 1024;
			if (a && b && b->saved_kib >= floor_kib) {
				x.ratio = a->saved_kib / b->saved_kib;
				if (!is_na(a->net_saved_kib) && !is_na(b->net_saved_kib) &&
				    b->net_saved_kib > 0)
					snprintf(x.basis, sizeof(x.basis),
						 "x ksm-fast (%.1f MiB); net of metadata %.3f",
						 b->saved_kib / 1024, a->net_saved_kib / b->net_saved_kib);
				else
					snprintf(x.basis, sizeof(x.basis), "x ksm-fast (%.1f MiB)",
						 b->saved_kib / 1024);
			} else {
				x.ratio = NA;
				snprintf(x.basis, sizeof(x.basis), "%s",
					 !a   ? "not run or skipped (see notes)"
					 : !b ? "no ksm-fast run"
					      : "ksm-fast saved ~nothing: no basis");
			}
			x.verdict = is_na(x.ratio) ? "n/a" : x.ratio >= 0.99 ? "met" : "MISSED";
			ADD(x);
		}

		/* 4: slowdown on churn and redis */
		static const char *const apps[] = { "churn", "redis" };
		for (size_t j = 0; j < 2; j++) {
			a = find(rs, n, apps[j], L->name);
			memset(&x, 0, sizeof(x));
			snprintf(x.name, sizeof(x.name), "%s: slowdown on %s < 3%%", L->name, apps[j]);
			x.goal = 3;
			x.measured = a ? a->slowdown_pct : NA;
			x.ratio = is_na(x.measured) ? NA : x.measured / 3;
			b = find(rs, n, apps[j], ksm);
			snprintf(x.basis, sizeof(x.basis), "of the 3%% budget; ksm-fast %s%%",
				 b && !is_na(b->slowdown_pct) ? "" : "n/a");
			if (b && !is_na(b->slowdown_pct))
				snprintf(x.basis, sizeof(x.basis), "of the 3%% budget; ksm-fast %.2f%%",
					 b->slowdown_pct);
			x.verdict = is_na(x.measured) ? "n/a" : x.measured < 3 ? "met" : "MISSED";
			ADD(x);
		}

		/* 5: COW latency, every workload with merged pages under both */
		for (size_t wi = 0; wi < nworkloads; wi++) {
			a = find(rs, n, workloads[wi].name, L->name);
			b = find(rs, n, workloads[wi].name, ksm);
			if (!a || !b || is_na(a->cow_p50_us) || is_na(b->cow_p50_us))
				continue;
			static const char *const which[] = { "p50", "p99", "idle p50", "idle p99" };
			for (int p = 0; p < 4; p++) {
				double la = p == 0 ? a->cow_p50_us : p == 1 ? a->cow_p99_us
					    : p == 2 ? a->cow_idle_p50_us : a->cow_idle_p99_us;
				double lb = p == 0 ? b->cow_p50_us : p == 1 ? b->cow_p99_us
					    : p == 2 ? b->cow_idle_p50_us : b->cow_idle_p99_us;
				if (is_na(la) || is_na(lb))
					continue;
				memset(&x, 0, sizeof(x));
				snprintf(x.name, sizeof(x.name), "%s: COW %s on %s <= 1.5x ksm-fast",
					 L->name, which[p], workloads[wi].name);
				x.goal = 1.5;
				x.measured = la;
				x.ratio = lb > 0 ? la / lb : NA;
				snprintf(x.basis, sizeof(x.basis), "x ksm-fast (%.2f us)", lb);
				x.verdict = is_na(x.ratio) ? "n/a" : x.ratio <= 1.5 ? "met" : "MISSED";
				ADD(x);
			}
		}
	}
#undef ADD
	return k;
}

static const char *ex(const struct result *r, const char *key)
{
	const char *v = result_extra_get(r, key);
	return v ? v : "?";
}

/* Figures behind the headline ones, per mode: what a reader needs to judge
 * the slowdown and the savings. */
static void report_details(FILE *f, struct result *rs, size_t n)
{
	bool head = false;
	for (size_t i = 0; i < n; i++) {
		struct result *r = &rs[i];
		const char *npw = result_extra_get(r, "churn_ns_per_write");
		const char *budget = result_extra_get(r, "ld_skipped_budget");
		const char *prof = result_extra_get(r, "general_profit");
		const char *npr = result_extra_get(r, "read_ns_per_read");
		if (strcmp(r->status, "ok") != 0 || (!npw && !budget && !prof && !npr))
			continue;
		if (!head)
			fprintf(f, "\ndetails (results.json \"extra\" has all counters):\n");
		head = true;
		fprintf(f, "  %-9s %-16s", r->w->name, r->m->name);
		if (npw)
			fprintf(f, " churn: %.0f writes/s of %s, %s ns per write;", r->app_rate,
				ex(r, "churn_target_writes_per_s"), npw);
		if (npr)
			fprintf(f, " readers: %.0f reads/s of %s, %s ns per read;", r->app_rate,
				ex(r, "read_target_reads_per_s"), npr);
		if (result_extra_get(r, "ld_in_group"))
			fprintf(f, " group: %s of %s members in it, %s pages mapping its pages;",
				ex(r, "ld_in_group"), ex(r, "workers"), ex(r, "ld_group_pages"));
		if (budget) {
			fprintf(f, " libdedup: %s passes, skipped for VMA budget %s, VMAs added %s "
				   "(budget %s), metadata %s bytes", ex(r, "passes"),
				budget, ex(r, "ld_vmas_added"),
				ex(r, "ld_vma_budget"),
				ex(r, "ld_metadata_bytes"));
			const char *wait = result_extra_get(r, "ld_budget_waiting");
			if (wait)   /* pages that would merge with a larger limit */
				fprintf(f, ", waiting on vm.max_map_count %.1f MiB",
					strtod(wait, NULL) * 4096.0 / 1048576.0);
		}
		if (prof)
			fprintf(f, " ksm: %s full scans, pages_sharing %s, pages_shared %s, "
				   "general_profit %s bytes", ex(r, "ksm_full_scans"),
				ex(r, "pages_sharing"), ex(r, "pages_shared"),
				prof);
		fputc('\n', f);
	}
}

void report_targets(FILE *f, struct result *rs, size_t n)
{
	report_details(f, rs, n);

	struct target t[64];
	size_t k = targets(rs, n, t, B_ARRAY_SIZE(t));
	char b1[32], b2[32];

	fprintf(f, "\ntargets (goals from issues 6 and 13; ratio = measured / basis; \"net of metadata\": "
		   "net saved / net saved, each mode's memory outside Pss counted against its saving):\n");
	if (!k)
		fprintf(f, "  none evaluated (no libdedup mode ran)\n");
	for (size_t i = 0; i < k; i++)
		fprintf(f, "  %-58s measured %12s  ratio %7s %-48s %s\n", t[i].name,
			num(b1, 32, t[i].measured, t[i].measured < 100 ? 2 : 0),
			num(b2, 32, t[i].ratio, 2), t[i].basis, t[i].verdict);
}

/* ---- files ---------------------------------------------------------------- */

static void csv_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"')
			fputc('"', f);
		fputc(*s, f);
	}
	fputc('"', f);
}

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fputc('\\', f);
		if ((unsigned char)*s < 0x20)
			fprintf(f, "\\u%04x", *s);
		else
			fputc(*s, f);
	}
	fputc('"', f);
}

static void json_num(FILE *f, double v, int dec)
{
	if (is_na(v))
		fprintf(f, "null");
	else
		fprintf(f, "%.*f", dec, v);
}

static int write_csv(const char *path, struct result *rs, size_t n)
{
	FILE *f = fopen(path, "w");
	char b[32];

	if (!f)
		return -errno;
	fprintf(f, "workload,mode,status,end_reason,size_mib,pages,app_unit");
#define X(fld, name, dec) fprintf(f, ",%s", name);
	FIGURES(X)
#undef X
	fprintf(f, ",note\n");
	for (size_t i = 0; i < n; i++) {
		struct result *r = &rs[i];
		fprintf(f, "%s,%s,%s,%s,%zu,%llu,%s", r->w->name, r->m->name, r->status, r->end_reason,
			r->size_mib, (unsigned long long)r->pages, r->app_unit);
#define X(fld, name, dec) fprintf(f, ",%s", num(b, sizeof(b), r->fld, dec));
		FIGURES(X)
#undef X
		fputc(',', f);
		csv_str(f, r->note);
		fputc('\n', f);
	}
	return fclose(f) == 0 ? 0 : -errno;
}

static int write_json(const char *path, struct result *rs, size_t n)
{
	FILE *f = fopen(path, "w");
	struct target t[64];
	size_t k = targets(rs, n, t, B_ARRAY_SIZE(t));

	if (!f)
		return -errno;
	fprintf(f, "{\n  \"tool\": \"dedup-bench\",\n  \"config\": {\"quick\": %s, \"size_mib\": %zu, "
		   "\"seed\": %llu, \"cap_s\": %.1f, \"slow_cap_s\": %.1f, \"min_s\": %.1f, "
		   "\"quiet_s\": %.1f, \"interval_ms\": %u, \"lat_samples\": %u, "
		   "\"churn_rate_per_thread\": %u, \"churn_threads\": 2, \"churn_hot\": %u, "
		   "\"redis_requests\": %u, \"redis_reps\": %u, \"workers\": %u, "
		   "\"libdedup_interval_ms\": %d, "
		   "\"libdedup_cpu_percent\": %d, \"cpu_source\": ",
		opt.quick ? "true" : "false", opt.size_mib, (unsigned long long)opt.seed, opt.cap_s,
		opt.slow_cap_s, opt.min_s, opt.quiet_s, opt.interval_ms, opt.lat_samples,
		opt.churn_rate, opt.churn_hot, opt.redis_requests, opt.redis_reps, opt.workers,
		BENCH_DEDUP_INTERVAL_MS, BENCH_DEDUP_CPU);
	json_str(f, proc_cpu_source());
	fprintf(f, ", \"loadavg_start\": ");
	json_str(f, opt.load_start);
	fprintf(f, ", \"loadavg_end\": ");
	json_str(f, opt.load_end);
	fprintf(f, ", \"max_map_count\": %ld", opt.max_map_count);
	fprintf(f, ", \"dedup_env\": {");
	static const char *const env[] = { "DEDUP_INTERVAL", "DEDUP_CPU", "DEDUP_BATCH",
					   "DEDUP_PAGES_PER_SEC", "DEDUP_ZERO_PAGES",
					   "DEDUP_VMA_BUDGET", "DEDUP_LOG", "DEDUP_SHARE_HELPER" };
	bool first = true;
	for (size_t i = 0; i < B_ARRAY_SIZE(env); i++) {
		const char *v = getenv(env[i]);
		if (!v)
			continue;
		fprintf(f, "%s\"%s\": ", first ? "" : ", ", env[i]);
		json_str(f, v);
		first = false;
	}
	fprintf(f, "}},\n  \"ksm_settings\": ");
	ksm_settings_json(f);
	fprintf(f, ",\n  \"modes\": [");
	for (size_t i = 0; i < nmodes; i++) {
		fprintf(f, "%s\n    {\"name\": \"%s\", \"ready\": %s, \"description\": ", i ? "," : "",
			modes[i].name, modes[i].ready ? "true" : "false");
		json_str(f, modes[i].desc);
		fprintf(f, "}");
	}
	fprintf(f, "\n  ],\n  \"workloads\": [");
	for (size_t i = 0; i < nworkloads; i++) {
		fprintf(f, "%s\n    {\"name\": \"%s\", \"description\": ", i ? "," : "",
			workloads[i].name);
		json_str(f, workloads[i].desc);
		fprintf(f, "}");
	}
	fprintf(f, "\n  ],\n  \"results\": [");
	for (size_t i = 0; i < n; i++) {
		struct result *r = &rs[i];
		fprintf(f, "%s\n    {\"workload\": \"%s\", \"mode\": \"%s\", \"status\": \"%s\", "
			   "\"end_reason\": \"%s\", \"size_mib\": %zu, \"pages\": %llu, \"app_unit\": ",
			i ? "," : "", r->w->name, r->m->name, r->status, r->end_reason, r->size_mib,
			(unsigned long long)r->pages);
		json_str(f, r->app_unit);
#define X(fld, name, dec)                         \
	fprintf(f, ", \"%s\": ", name);           \
	json_num(f, r->fld, dec);
		FIGURES(X)
#undef X
		fprintf(f, ", \"note\": ");
		json_str(f, r->note);
		fprintf(f, ", \"extra\": {");
		for (size_t j = 0; j < r->nextra; j++) {
			fprintf(f, "%s", j ? ", " : "");
			json_str(f, r->extra[j].key);
			fprintf(f, ": ");
			char *end;
			strtod(r->extra[j].val, &end);
			if (r->extra[j].val[0] && !*end)
				fprintf(f, "%s", r->extra[j].val);
			else
				json_str(f, r->extra[j].val);
		}
		fprintf(f, "}}");
	}
	fprintf(f, "\n  ],\n  \"targets\": [");
	for (size_t i = 0; i < k; i++) {
		fprintf(f, "%s\n    {\"target\": ", i ? "," : "");
		json_str(f, t[i].name);
		fprintf(f, ", \"measured\": ");
		json_num(f, t[i].measured, 3);
		fprintf(f, ", \"goal\": ");
		json_num(f, t[i].goal, 3);
		fprintf(f, ", \"ratio\": ");
		json_num(f, t[i].ratio, 3);
		fprintf(f, ", \"basis\": ");
		json_str(f, t[i].basis);
		fprintf(f, ", \"verdict\": \"%s\"}", t[i].verdict);
	}
	fprintf(f, "\n  ]\n}\n");
	return fclose(f) == 0 ? 0 : -errno;
}

void series_header(FILE *f)
{
	fprintf(f, "time_s,workload,mode,pss_kib,saved_kib,merger_cpu_s\n");
}

int report_files(const char *dir, struct result *rs, size_t n)
{
	char path[4096];
	int err;

	snprintf(path, sizeof(path), "%s/results.csv", dir);
	if ((err = write_csv(path, rs, n)) < 0)
		return err;
	snprintf(path, sizeof(path), "%s/results.json", dir);
	return write_json(path, rs, n);
}
