/* SPDX-License-Identifier: MIT */
/*
 * test_stat_waiting: what waits on the VMA budget is counted and shown
 * (issue 11, point 5). A gauge, budget_waiting: the pages that would merge
 * (net pages saved) but that the budget kept from merging, as the last full
 * pass found them; dedup-stat shows it as "MiB waiting on vm.max_map_count"
 * (PID view, list column WAIT_MiB, JSON mib_waiting_on_max_map_count,
 * Prometheus libdedup_waiting_on_max_map_count_bytes).
 *
 * 512 pages, every 4th a copy of one content (128 isolated duplicates, each
 * merge splitting the mapping: +2 mappings), the rest unique; budget 8
 * mappings. After the budget is spent, every duplicate left waits: the gauge
 * must be exactly 128 - pages_sharing (the canonical page exists, so each
 * of them would save one page), and no unique page counts. When the
 * program then writes those pages (all different), the next passes find
 * nothing waiting: the gauge goes back to 0 (a counter would not).
 */
#include "test_stat_common.h"
#include "internal.h"

#define N 512
#define BUDGET 8

static void want(char *page, size_t i, int gen)
{
	if (i % 4 == 0 && gen == 0)
		t_fill(page, 4242);
	else
		t_fill(page, 90000 + i + (size_t)gen * 100000);
}

/* The published figures as dedup_stats() has them: kick the engine, which
 * publishes at its next step, and wait (bounded) for budget_waiting. */
static struct dedup_stats published(uint64_t waiting)
{
	struct dd_pub_live live;
	double t0 = t_now();

	dd_engine_kick();
	for (;;) {
		CHECK(ts_published(&live));
		if (live.stats.budget_waiting == waiting)
			return live.stats;
		if (t_now() - t0 > t_cap()) {
			fprintf(stderr, "published budget_waiting %llu, want %llu\n",
				(unsigned long long)live.stats.budget_waiting,
				(unsigned long long)waiting);
			exit(T_FAIL);
		}
		usleep(20000);
	}
}

int main(int argc, char **argv)
{
	char pidarg[16], pat[256], page[T_PAGE];

	ts_setup(argc, argv);
	struct dedup_config cfg = { .size = sizeof(cfg), .scan_interval_ms = 3600000,
				    .cpu_percent = 100, .vma_budget = BUDGET };
	int r = dedup_init(&cfg);
	if (r == -EPERM || r == -ENOSYS)
		t_skip("userfaultfd not usable here");
	CHECK(r == 0);
	char *buf = t_map_anon(N * T_PAGE);
	CHECK(madvise(buf, N * T_PAGE, MADV_NOHUGEPAGE) == 0);
	for (size_t i = 0; i < N; i++)
		want(buf + i * T_PAGE, i, 0);
	CHECK(dedup_register(buf, N * T_PAGE) == 0);
	for (int pass = 0; pass < 4; pass++)
		CHECK(dedup_scan_now() >= 0);

	struct dedup_stats st = t_stats();
	t_print_stats("budget 8");
	CHECK(st.pages_sharing > 0 && st.pages_sharing < N / 4);   /* the budget bound */
	CHECK(st.vmas_added <= BUDGET);
	uint64_t waiting = N / 4 - st.pages_sharing;
	fprintf(stderr, "merged %llu, waiting %llu (want %llu)\n",
		(unsigned long long)st.pages_sharing, (unsigned long long)st.budget_waiting,
		(unsigned long long)waiting);
	CHECK(st.budget_waiting == waiting);
	published(waiting);

	/* dedup-stat: the PID view, the list, JSON, Prometheus */
	snprintf(pidarg, sizeof(pidarg), "%d", (int)getpid());
	double mib = (double)(waiting * T_PAGE) / 1048576.0;
	struct ts_run *run = ts_tool_run(pidarg, NULL);
	fprintf(stderr, "%s", run->out);
	CHECK(run->status == 0);
	CHECK(strstr(run->out, "MiB waiting on vm.max_map_count") != NULL);
	char hum[32];
	snprintf(hum, sizeof(hum), "%.1f MiB", mib);
	snprintf(pat, sizeof(pat), "  %-20s %16llu %11s  MiB waiting on vm.max_map_count",
		 "budget_waiting", (unsigned long long)waiting, hum);
	CHECK(strstr(run->out, pat) != NULL);

	run = ts_tool_run(NULL);
	fprintf(stderr, "%s", run->out);
	CHECK(run->status == 0 && strstr(run->out, "WAIT_MiB") != NULL);
	snprintf(pat, sizeof(pat), " %8.1f ", mib);
	const char *line = strstr(run->out, pidarg);
	CHECK(line && strstr(line, pat) != NULL);

	run = ts_tool_run(pidarg, "--json", NULL);
	CHECK(run->status == 0);
	uint64_t v = 0;
	const char *stats = strstr(run->out, "\"stats\":{");
	CHECK(stats && ts_json_u64(stats, "budget_waiting", &v) && v == waiting);
	snprintf(pat, sizeof(pat), "\"mib_waiting_on_max_map_count\":%.1f,", mib);
	CHECK(strstr(run->out, pat) != NULL);

	run = ts_tool_run(pidarg, "--prometheus", NULL);
	CHECK(run->status == 0);
	const char *m = strstr(run->out, "\nlibdedup_waiting_on_max_map_count_bytes{");
	CHECK(m != NULL);
	m = strstr(m, "} ");
	CHECK(m && strtoull(m + 2, NULL, 10) == waiting * T_PAGE);
	CHECK(strstr(run->out, "# TYPE libdedup_budget_waiting_pages gauge") != NULL);

	/* a gauge: the waiting pages change, nothing waits any more */
	for (size_t i = 0; i < N; i += 4)
		want(buf + i * T_PAGE, i, 1);   /* merged ones too: copied on write */
	for (int pass = 0; pass < 3; pass++)
		CHECK(dedup_scan_now() >= 0);
	st = t_stats();
	fprintf(stderr, "after the writes: waiting %llu\n", (unsigned long long)st.budget_waiting);
	CHECK(st.budget_waiting == 0);
	published(0);

	/* every page holds what the program wrote */
	for (size_t i = 0; i < N; i++) {
		want(page, i, i % 4 == 0);
		CHECK(memcmp(buf + i * T_PAGE, page, T_PAGE) == 0);
	}
	CHECK(dedup_unregister(buf, N * T_PAGE) == 0);
	CHECK(dedup_shutdown() == 0);
	printf("PASS: budget_waiting %llu pages, shown by dedup-stat, back to 0\n",
	       (unsigned long long)waiting);
	return 0;
}
