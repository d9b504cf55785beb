/* SPDX-License-Identifier: MIT */
/*
 * test_stat_prometheus: `dedup-stat --prometheus` (all processes) and
 * `dedup-stat PID --prometheus` follow the text exposition format 0.0.4,
 * checked line by line: `# HELP name text`, `# TYPE name counter|gauge`,
 * then samples `name{labels} value`; HELP and TYPE once per metric and
 * before its samples, a metric's samples together, names
 * ^libdedup_[a-z0-9_]+$, counters ending in _total, every sample labelled
 * pid and comm, no series twice. Values agree with dedup_stats().
 * The comm is renamed to contain a quote and a backslash, to check the
 * label escaping.
 */
#include <regex.h>

#include "test_stat_common.h"
#include "internal.h"

#define NAME "libdedup_[a-z0-9_]+"
#define LABEL "[a-zA-Z_][a-zA-Z0-9_]*=\"([^\"\\\\\n]|\\\\[\"\\\\n])*\""
#define COMM "t\"st\\x"          /* needs escaping in a label */
#define ESC_COMM "t\\\"st\\\\x"  /* and escaped */
#define VALUE "(-?[0-9]+(\\.[0-9]+)?([eE][-+]?[0-9]+)?|NaN|[+-]Inf)"

struct metric {
	char name[128];
	char type[16];
	bool help, done;
	int samples;
};

/* Validate; returns the number of problems. */
static int validate(const char *text, int pid, const char *esc_comm, size_t *nmetrics)
{
	regex_t help, type, sample;
	regmatch_t m[4];
	static struct metric mt[256];
	size_t n = 0, cur = SIZE_MAX;
	char seen[512][256];
	size_t nseen = 0;
	int bad = 0, lineno = 0;
	char want_labels[128];

	snprintf(want_labels, sizeof(want_labels), "{pid=\"%d\",comm=\"%s\"", pid, esc_comm);
	CHECK(regcomp(&help, "^# HELP (" NAME ") [^\n]+$", REG_EXTENDED) == 0);
	CHECK(regcomp(&type, "^# TYPE (" NAME ") (counter|gauge)$", REG_EXTENDED) == 0);
	CHECK(regcomp(&sample, "^(" NAME ")(\\{" LABEL "(," LABEL ")*\\}) " VALUE "$",
		      REG_EXTENDED) == 0);
	size_t len = strlen(text);
	if (!len || text[len - 1] != '\n') {
		fprintf(stderr, "output does not end with a newline\n");
		bad++;
	}
	for (const char *p = text; *p;) {
		const char *e = strchr(p, '\n');
		char line[1024];
		size_t l = e ? (size_t)(e - p) : strlen(p);
		CHECK(l < sizeof(line));
		memcpy(line, p, l);
		line[l] = 0;
		p += l + (e ? 1 : 0);
		lineno++;
		char name[128] = "";
#define PROBLEM(...) do { fprintf(stderr, "line %d: ", lineno); fprintf(stderr, __VA_ARGS__); \
			  fprintf(stderr, ": %s\n", line); bad++; } while (0)
		bool is_help = regexec(&help, line, 2, m, 0) == 0;
		bool is_type = !is_help && regexec(&type, line, 3, m, 0) == 0;
		bool is_sample = !is_help && !is_type && regexec(&sample, line, 3, m, 0) == 0;
		if (!is_help && !is_type && !is_sample) {
			PROBLEM("not a HELP, TYPE or sample line");
			continue;
		}
		snprintf(name, sizeof(name), "%.*s", (int)(m[1].rm_eo - m[1].rm_so), line + m[1].rm_so);
		size_t k;
		for (k = 0; k < n && strcmp(mt[k].name, name); k++)
			;
		if (k == n) {
			CHECK(n < 256);
			memset(&mt[n], 0, sizeof(mt[n]));
			snprintf(mt[n].name, sizeof(mt[n].name), "%s", name);
			n++;
		}
		struct metric *x = &mt[k];
		if (cur != k) {   /* a new metric starts: the previous one is over */
			if (cur != SIZE_MAX)
				mt[cur].done = true;
			if (x->done)
				PROBLEM("metric %s appears again after another metric", name);
			cur = k;
		}
		if (is_help) {
			if (x->help || x->type[0] || x->samples)
				PROBLEM("HELP twice or after TYPE/samples");
			x->help = true;
		} else if (is_type) {
			if (!x->help || x->type[0] || x->samples)
				PROBLEM("TYPE without HELP before it, twice, or after samples");
			snprintf(x->type, sizeof(x->type), "%.*s", (int)(m[2].rm_eo - m[2].rm_so),
				 line + m[2].rm_so);
			size_t nl = strlen(name);
			bool total = nl > 6 && !strcmp(name + nl - 6, "_total");
			if (!strcmp(x->type, "counter") != total)
				PROBLEM("counters, and only counters, end in _total");
		} else {
			if (!x->help || !x->type[0])
				PROBLEM("sample before HELP and TYPE");
			x->samples++;
			const char *labels = line + m[2].rm_so;
			/* a sharing group of this user's (test_stat_groups,
			 * another session's) shows with its own labels */
			if (strncmp(labels, want_labels, strlen(want_labels)) != 0 &&
			    strncmp(labels, "{group=\"", 8) != 0)
				PROBLEM("labels are not %s...", want_labels);
			char series[256];
			snprintf(series, sizeof(series), "%.*s", (int)(m[2].rm_eo - m[0].rm_so), line);
			for (size_t s = 0; s < nseen; s++)
				if (!strcmp(seen[s], series))
					PROBLEM("series twice");
			CHECK(nseen < 512);
			snprintf(seen[nseen++], sizeof(seen[0]), "%s", series);
		}
	}
	for (size_t k = 0; k < n; k++)
		if (!mt[k].samples) {
			fprintf(stderr, "metric %s has no sample\n", mt[k].name);
			bad++;
		}
	regfree(&help);
	regfree(&type);
	regfree(&sample);
	*nmetrics = n;
	return bad;
}

/* The value of the sample of metric name; extra is more label text, e.g.
 * ",reason=\"raced\"". */
static double sample_value(const char *text, const char *name, const char *extra)
{
	char pat[256];
	snprintf(pat, sizeof(pat), "\n%s{pid=\"%d\",comm=\"%s\"%s} ", name, (int)getpid(),
		 ESC_COMM, extra ? extra : "");
	const char *p = strstr(text, pat);
	if (!p) {
		fprintf(stderr, "no sample %s\n", pat + 1);
		exit(T_FAIL);
	}
	return strtod(p + strlen(pat), NULL);
}

int main(int argc, char **argv)
{
	const size_t N = 1024, K = 4;
	char pidarg[16];
	struct dd_pub_live live;
	size_t nmetrics;

	ts_setup(argc, argv);
	CHECK(prctl(PR_SET_NAME, COMM) == 0);
	char *buf = ts_dup_memory(N, K);
	t_engine_start(3600000);
	CHECK(dedup_register(buf, N * T_PAGE) == 0);
	CHECK(dedup_scan_now() >= 0);
	CHECK(dedup_scan_now() == (long)N);
	dd_engine_kick();
	double t0 = t_now();
	struct dedup_stats st;
	do {   /* bounded wait until the engine published the settled figures */
		CHECK(t_now() - t0 < t_cap());
		usleep(10000);
		st = t_stats();
		CHECK(ts_published(&live));
	} while (live.stats.full_passes != st.full_passes || live.stats.merges != st.merges ||
		 live.stats.pages_scanned != st.pages_scanned);

	snprintf(pidarg, sizeof(pidarg), "%d", (int)getpid());
	struct ts_run *r = ts_tool_run(pidarg, "--prometheus", NULL);
	fprintf(stderr, "%s", r->out);
	CHECK(r->status == 0);
	CHECK(validate(r->out, getpid(), ESC_COMM, &nmetrics) == 0);
	CHECK(nmetrics >= 20);
	CHECK(sample_value(r->out, "libdedup_pages_sharing", NULL) == (double)st.pages_sharing);
	CHECK(sample_value(r->out, "libdedup_pages_shared", NULL) == (double)st.pages_shared);
	CHECK(sample_value(r->out, "libdedup_merges_total", NULL) == (double)st.merges);
	CHECK(sample_value(r->out, "libdedup_saved_bytes", NULL) == (double)st.bytes_saved);
	CHECK(sample_value(r->out, "libdedup_pages_skipped_total", ",reason=\"volatile\"") ==
	      (double)st.skipped_volatile);
	CHECK(sample_value(r->out, "libdedup_process_profit_bytes", NULL) ==
	      (double)((int64_t)st.bytes_saved - (int64_t)st.metadata_bytes));
	double cpu = sample_value(r->out, "libdedup_engine_cpu_seconds_total", NULL);
	CHECK(cpu > 0 && (uint64_t)(cpu * 1e9 + 0.5) == st.engine_cpu_ns);
	const char *reasons[] = { "volatile", "budget", "pinned", "mismatch", "raced" };
	for (size_t i = 0; i < 5; i++) {
		char l[64];
		snprintf(l, sizeof(l), ",reason=\"%s\"}", reasons[i]);
		CHECK(strstr(r->out, l) != NULL);
	}

	/* the all-processes form: the same format (only we publish here) */
	r = ts_tool_run("--prometheus", NULL);
	CHECK(r->status == 0);
	CHECK(validate(r->out, getpid(), ESC_COMM, &nmetrics) == 0);
	CHECK(dedup_shutdown() == 0);

	/* nobody publishes: no metric at all (rather than metrics without
	 * samples), but for the groups of the user's that some other test or
	 * session may run meanwhile */
	r = ts_tool_run("--prometheus", NULL);
	CHECK(r->status == 0 && (r->out[0] == 0 || !strstr(r->out, "{pid=\"")));
	return T_PASS;
}
