/* SPDX-License-Identifier: MIT */
/*
 * test_stat_json: a process merges duplicates, then `dedup-stat PID --json`
 * must report exactly its own dedup_stats(), field by field, plus the
 * ksm_stat figures derived from them; the list forms show it too, and after
 * dedup_shutdown() its file is gone and dedup-stat says it does not run
 * libdedup (exit 3).
 *
 * The engine runs with a one-hour interval and the passes are driven by
 * dedup_scan_now() in this thread. Those passes are published at the
 * engine's next step, so the test kicks the engine (dd_engine_kick, an
 * internal) and waits, bounded, until the published figures settle.
 */
#include "test_stat_common.h"
#include "internal.h"

/* Every member of struct dedup_stats but .size, by name (kept apart from
 * the tool's own table on purpose). */
#define STATS_FIELDS(X) X(pages_scanned) X(full_passes) X(candidates) X(pages_sharing) \
	X(pages_shared) X(zero_pages) X(merges) X(cow_breaks) X(skipped_volatile)        \
	X(skipped_budget) X(skipped_pinned) X(skipped_mismatch) X(skipped_raced)         \
	X(vmas_added) X(vma_budget) X(bytes_saved) X(metadata_bytes) X(regions)          \
	X(bytes_registered) X(engine_cpu_ns) X(store_slots_freed) X(pages_skipped_smart) X(group_pages) \
	X(budget_waiting) X(runs_given_back) X(enomem_retries)
#define COUNT(name) +1
_Static_assert(0 STATS_FIELDS(COUNT) == sizeof(struct dedup_stats) / 8 - 1,
	       "a member of struct dedup_stats is not checked");

/* Compare the tool's JSON for one process with st; returns the number of
 * mismatches (printed when verbose). */
static int compare(const char *json, const struct dedup_stats *st, bool verbose)
{
	const char *stats = strstr(json, "\"stats\":{");
	int bad = 0;
	uint64_t v = 0;

	if (!stats)
		return 1000;
#define X(name)                                                                       \
	if (!ts_json_u64(stats, #name, &v) || v != st->name) {                        \
		if (verbose)                                                          \
			fprintf(stderr, "%s: published %llu, dedup_stats %llu\n", #name, \
				(unsigned long long)v, (unsigned long long)st->name); \
		bad++;                                                                \
	}
	STATS_FIELDS(X)
#undef X
	return bad;
}

int main(int argc, char **argv)
{
	const size_t N = 2048, K = 8;
	char path[128], comm[16], pat[160];
	struct stat sb;

	ts_setup(argc, argv);
	char *buf = ts_dup_memory(N, K);
	t_engine_start(3600000);

	/* the file exists from dedup_init on, private to the user */
	snprintf(path, sizeof(path), "%s/%d.stats", ts_dir, (int)getpid());
	CHECK(stat(path, &sb) == 0);
	CHECK((sb.st_mode & 0777) == 0600 && sb.st_uid == geteuid());
	CHECK(sb.st_size == DD_PUB_FILE_SIZE);

	CHECK(dedup_register(buf, N * T_PAGE) == 0);
	CHECK(dedup_scan_now() >= 0);
	CHECK(dedup_scan_now() == (long)N);
	dd_engine_kick();

	/* bounded wait: the engine publishes the pass that closes after the
	 * kick, then sleeps; from then on both views must agree exactly */
	struct ts_run *r = NULL;
	struct dedup_stats st;
	char pidarg[16];
	snprintf(pidarg, sizeof(pidarg), "%d", (int)getpid());
	double t0 = t_now();
	for (;;) {
		r = ts_tool_run(pidarg, "--json", NULL);
		st = t_stats();
		CHECK(r->status == 0);
		if (compare(r->out, &st, false) == 0)
			break;
		if (t_now() - t0 > t_cap()) {
			fprintf(stderr, "published figures never matched:\n%s\n", r->out);
			compare(r->out, &st, true);
			return T_FAIL;
		}
		usleep(20000);
	}
	fprintf(stderr, "matched after %.3f s: %s", t_now() - t0, r->out);
	CHECK(st.pages_sharing == N && st.pages_shared == K && st.merges >= N);
	CHECK(st.bytes_saved == (N - K) * T_PAGE);

	/* identity and the ksm_stat figures */
	uint64_t v;
	int64_t profit;
	ts_comm(0, comm);
	CHECK(ts_json_u64(r->out, "pid", &v) && v == (uint64_t)getpid());
	snprintf(pat, sizeof(pat), "\"comm\":\"%s\"", comm);
	CHECK(strstr(r->out, pat) != NULL);
	const char *ksm = strstr(r->out, "\"ksm_stat\":{");
	CHECK(ksm != NULL);
	CHECK(ts_json_u64(ksm, "ksm_merging_pages", &v) && v == st.pages_sharing);
	CHECK(ts_json_u64(ksm, "ksm_zero_pages", &v) && v == st.zero_pages);
	CHECK(ts_json_i64(ksm, "ksm_process_profit", &profit) &&
	      profit == (int64_t)st.bytes_saved - (int64_t)st.metadata_bytes);
	CHECK(ts_json_u64(r->out, "cpu_percent", &v) && v == 100);
	CHECK(ts_json_u64(r->out, "scan_interval_ms", &v) && v == 3600000);
	CHECK(r->out[0] == '{' && strstr(r->out, "}}\n") != NULL);

	/* the list as JSON: an array holding us */
	r = ts_tool_run("--json", NULL);
	CHECK(r->status == 0 && r->out[0] == '[');
	snprintf(pat, sizeof(pat), "{\"pid\":%d,", (int)getpid());
	const char *me = strstr(r->out, pat);
	CHECK(me != NULL && compare(me, &st, true) == 0);

	/* the plain list: a header and our line, MiB saved and pages */
	r = ts_tool_run(NULL);
	fprintf(stderr, "%s", r->out);
	CHECK(r->status == 0 && strstr(r->out, "PID") && strstr(r->out, "SAVED_MiB"));
	snprintf(pat, sizeof(pat), "\n%7d %-15s %10.1f %9zu %9zu", (int)getpid(), comm,
		 (double)((N - K) * T_PAGE) / 1048576.0, N, K);
	CHECK(strstr(r->out, pat) != NULL);

	/* the table: every figure with its meaning */
	r = ts_tool_run(pidarg, NULL);
	fprintf(stderr, "%s", r->out);
	CHECK(r->status == 0);
#define X(name) CHECK(strstr(r->out, "  " #name " ") != NULL);
	STATS_FIELDS(X)
#undef X
	CHECK(strstr(r->out, "ksm_merging_pages") && strstr(r->out, "ksm_process_profit"));

	/* shutdown removes the file; the process no longer runs libdedup */
	CHECK(dedup_shutdown() == 0);
	CHECK(stat(path, &sb) < 0 && errno == ENOENT);
	r = ts_tool_run(pidarg, NULL);
	snprintf(pat, sizeof(pat), "dedup-stat: process %d (%s) does not run libdedup\n",
		 (int)getpid(), comm);
	fprintf(stderr, "after dedup_shutdown: exit %d: %s", r->status, r->err);
	CHECK(r->status == 3 && strcmp(r->err, pat) == 0);
	for (size_t i = 0; i < N; i++) {
		char ref[T_PAGE];
		t_fill(ref, i % K + 1);
		CHECK(memcmp(buf + i * T_PAGE, ref, T_PAGE) == 0);
	}
	return T_PASS;
}
