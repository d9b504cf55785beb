/* SPDX-License-Identifier: MIT */
/*
 * test_stat_groups.c - issue 13: dedup-stat shows sharing groups, and what a
 * group saves is counted once.
 *
 *   test_stat_groups PATH-TO-dedup-stat PATH-TO-dedup-share
 *
 * Two members of group statgrp-PID (API mode, dedup_config.share) hold the same
 * NPAGES pages, none repeated inside one process: alone, neither can merge
 * anything. The test waits (up to t_cap()) until both map the group's pages
 * (group_pages == NPAGES in their stats files), then checks:
 *  - the helper, asked as an observer (share_query.h), counts 2 members and
 *    lists their pids; the observer is no member, and one that asks for
 *    anything but STATS is dropped;
 *  - dedup-stat --groups --json: members 2, both pids, mapped_pages 2 x
 *    NPAGES, saved_bytes = (mapped - canonical) x page, > 0 and at most
 *    what one member holds;
 *  - dedup-stat (text): the group's line after the processes, the same
 *    figures, and the members' own SAVED_MiB 0.0: group pages are never in
 *    a process's saved column (nor in bytes_saved, --json);
 *  - dedup-stat --prometheus: libdedup_group_members 2 and
 *    libdedup_group_saved_bytes as in JSON;
 *  - each member's group: the last column of the text list, "group" in the
 *    processes' JSON, libdedup_process_group_info in Prometheus;
 *  - a socket nobody listens on is skipped without a word.
 */
#define _GNU_SOURCE   /* before any system header: struct ucred, nftw */
#include "test_stat_common.h"

#include <ftw.h>
#include <sys/un.h>

#include "share_query.h"

#define NPAGES 512

static char xdg[64];
static char name[32];   /* statgrp-PID: unique among root's groups too */
static pid_t helper, members[2];

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb; (void)flag; (void)ftw;
	remove(path);
	return 0;
}

static void cleanup(void)
{
	for (int i = 0; i < 2; i++)
		if (members[i] > 0 && kill(members[i], SIGKILL) == 0)
			waitpid(members[i], NULL, 0);
	if (helper > 0)
		kill(helper, SIGKILL);
	if (xdg[0])
		nftw(xdg, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* A member: the same NPAGES distinct pages as the other; says when it is
 * registered, and stays until the parent closes its pipe. */
static pid_t member(void)
{
	int ready[2], hold[2];
	char c;

	CHECK(pipe(ready) == 0 && pipe(hold) == 0);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (!pid) {
		struct dedup_config cfg = { .size = sizeof(cfg), .scan_interval_ms = 20,
					    .cpu_percent = 100, .share = name };
		char *b = t_map_anon(NPAGES * T_PAGE);

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		close(ready[0]);
		close(hold[1]);
		for (size_t p = 0; p < NPAGES; p++)
			t_fill(b + p * T_PAGE, p + 1);
		CHECK(dedup_init(&cfg) == 0);
		CHECK(dedup_register(b, NPAGES * T_PAGE) == 0);
		CHECK(write(ready[1], "x", 1) == 1);
		(void)!read(hold[0], &c, 1);   /* until the parent goes */
		dedup_shutdown();
		_exit(0);
	}
	close(ready[1]);
	close(hold[0]);   /* hold[1] stays open in the parent: the member's life */
	CHECK(read(ready[0], &c, 1) == 1);
	close(ready[0]);
	return pid;
}

/* group_pages of process pid, from its stats file (0 if none yet). */
static uint64_t group_pages(pid_t pid)
{
	char path[128];
	struct dd_pub_live l;

	snprintf(path, sizeof(path), "%s/%d" DD_PUB_SUFFIX, ts_dir, (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	const struct dd_pub *p = mmap(NULL, DD_PUB_FILE_SIZE, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		return 0;
	bool ok = dd_pub_read(p, &l) == 0;
	munmap((void *)p, DD_PUB_FILE_SIZE);
	return ok ? l.stats.group_pages : 0;
}

static bool has_pid(const struct dd_share_info *in, pid_t pid)
{
	for (uint32_t i = 0; i < in->npids; i++)
		if (in->pids[i] == pid)
			return true;
	return false;
}

/* The value of our group's sample of metric m in Prometheus text out. */
static uint64_t prom_value(const char *out, const char *m)
{
	char pat[128];
	snprintf(pat, sizeof(pat), "\n%s{group=\"%s\",", m, name);
	const char *p = strstr(out, pat);
	CHECK(p);
	p = strchr(p + 1, '\n');
	CHECK(p);
	while (p[-1] != ' ')
		p--;
	return strtoull(p, NULL, 10);
}

int main(int argc, char **argv)
{
	char sock[PATH_MAX];
	struct dd_share_info in;

	ts_setup(argc, argv);
	if (argc < 3 || access(argv[2], X_OK) != 0)
		t_skip("usage: %s PATH-TO-dedup-stat PATH-TO-dedup-share", argv[0]);
	snprintf(xdg, sizeof(xdg), "/tmp/dedup-stat-groups-XXXXXX");
	CHECK(mkdtemp(xdg));
	atexit(cleanup);
	CHECK(setenv("XDG_RUNTIME_DIR", xdg, 1) == 0);
	CHECK(setenv("DEDUP_SHARE_HELPER", argv[2], 1) == 0);
	snprintf(name, sizeof(name), "statgrp-%d", (int)getpid());
	snprintf(sock, sizeof(sock), "%s/libdedup/share/%s.sock", xdg, name);

	pid_t a = members[0] = member(), b = members[1] = member();
	double t0 = t_now();
	/* merged: both map all their pages into the group's store, and the
	 * store holds less than both copies (the helper asked as dedup-stat
	 * asks it) */
	in.pages = 0;
	while (group_pages(a) < NPAGES || group_pages(b) < NPAGES ||
	       dd_share_query(sock, &in) < 0 || in.pages >= 2 * NPAGES) {
		if (t_now() - t0 > t_cap()) {
			fprintf(stderr, "waited %.0f s for the members to merge: group_pages %llu, "
				"%llu of %d, %llu pages in the store\n", t_cap(),
				(unsigned long long)group_pages(a),
				(unsigned long long)group_pages(b), NPAGES,
				(unsigned long long)in.pages);
			return T_FAIL;
		}
		usleep(20000);
	}
	helper = in.helper_pid;
	CHECK(in.members == 2 && in.npids == 2 && has_pid(&in, a) && has_pid(&in, b));
	CHECK(in.page_size == T_PAGE && in.pages >= NPAGES);
	uint64_t want_saved = (2 * NPAGES - in.pages) * T_PAGE;

	/* an observer is served STATS only */
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct dd_share_hello hi = { .page_size = DD_PAGE, .pid = 0 };
	struct { struct dd_share_hdr h; uint64_t hash; } look = { .hash = 1 };
	char buf[256];
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	struct timeval tv = { 10, 0 };
	CHECK(s >= 0 && setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%.100s", sock);
	CHECK(connect(s, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	dd_share_hdr_init(&hi.h, DD_SHARE_HELLO, 0);
	dd_share_hdr_init(&look.h, DD_SHARE_LOOKUP, 1);
	CHECK(send(s, &hi, sizeof(hi), 0) == sizeof(hi));
	CHECK(recv(s, buf, sizeof(buf), 0) == sizeof(struct dd_share_hello));
	CHECK(send(s, &look, sizeof(look), 0) == sizeof(look));
	ssize_t r = recv(s, buf, sizeof(buf), 0);
	CHECK(r == 0 || (r < 0 && errno == ECONNRESET));
	close(s);

	/* a socket file nobody listens on: skipped quietly */
	char stale[PATH_MAX];
	snprintf(stale, sizeof(stale), "%s/libdedup/share/stale.sock", xdg);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%.100s", stale);
	s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	CHECK(s >= 0 && bind(s, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	close(s);

	/* JSON, groups only */
	struct ts_run *run = ts_tool_run("--groups", "--json", NULL);
	if (run->status || run->err[0] || strstr(run->out, "stale"))
		fprintf(stderr, "status %d\n%s\n%s\n", run->status, run->out, run->err);
	CHECK(run->status == 0 && !run->err[0] && !strstr(run->out, "\"stale\""));
	char key[64];
	snprintf(key, sizeof(key), "{\"name\":\"%s\"", name);
	const char *obj = strstr(run->out, key);
	CHECK(run->out[0] == '[' && obj);
	char pids[64], pids2[64];
	snprintf(pids, sizeof(pids), "\"member_pids\":[%d,%d]", (int)a, (int)b);
	snprintf(pids2, sizeof(pids2), "\"member_pids\":[%d,%d]", (int)b, (int)a);
	CHECK(strstr(obj, pids) || strstr(obj, pids2));
	uint64_t v, saved;
	CHECK(ts_json_u64(obj, "members", &v) && v == 2);
	CHECK(ts_json_u64(obj, "members_unseen", &v) && v == 0);
	CHECK(ts_json_u64(obj, "mapped_pages", &v) && v == 2 * NPAGES);
	CHECK(ts_json_u64(obj, "saved_bytes", &saved));
	printf("group %s: canonical pages %llu, saved %llu bytes\n", name,
	       (unsigned long long)in.pages, (unsigned long long)saved);
	/* the store may have changed between the two questions (a segment
	 * in its grace period going): then saved only grew */
	CHECK(saved > 0 && saved >= want_saved && saved <= NPAGES * T_PAGE);

	/* the processes' JSON keeps its shape: an array of processes, whose
	 * bytes_saved holds no group page */
	run = ts_tool_run("--json", NULL);
	CHECK(run->status == 0 && run->out[0] == '[' && !strstr(run->out, "\"member_pids\""));
	for (pid_t p = a;; p = b) {
		char pk[32];
		snprintf(pk, sizeof(pk), "{\"pid\":%d,", (int)p);
		const char *o = strstr(run->out, pk);
		CHECK(o);
		CHECK(ts_json_u64(o, "bytes_saved", &v) && v == 0);
		CHECK(ts_json_u64(o, "group_pages", &v) && v == NPAGES);
		char gk[64];   /* the process's group, by its helper's member list */
		snprintf(gk, sizeof(gk), "\"group\":\"%s\"", name);
		const char *gv = strstr(o, gk), *next = strstr(o + 1, "{\"pid\":");
		CHECK(gv && (!next || gv < next));
		if (p == b)
			break;
	}

	/* text: processes, then the group line */
	run = ts_tool_run(NULL);
	CHECK(run->status == 0 && !run->err[0]);
	fputs(run->out, stdout);
	const char *grp = strstr(run->out, "\nGROUP ");
	snprintf(key, sizeof(key), "\n%s ", name);
	const char *line = strstr(run->out, key);
	CHECK(grp && line > grp && !strstr(run->out, "\nstale "));
	for (pid_t p = a;; p = b) {
		char pk[32];
		snprintf(pk, sizeof(pk), "\n%7d ", (int)p);
		const char *pl = strstr(run->out, pk);
		CHECK(pl && pl < grp);
		double psv = -1;
		CHECK(sscanf(pl + 1, "%*d %*s %lf", &psv) == 1 && psv == 0.0);
		const char *eol = strchr(pl + 1, '\n');   /* last column: GROUP */
		CHECK(eol && (size_t)(eol - pl) > strlen(name) + 1 &&
		      !strncmp(eol - strlen(name) - 1, " ", 1) &&
		      !strncmp(eol - strlen(name), name, strlen(name)));
		if (p == b)
			break;
	}
	unsigned long long nmem, segs;
	double store, mapped, sv;
	CHECK(sscanf(line + strlen(key), "%llu %llu %lf %lf %lf", &nmem,
		     &segs, &store, &mapped, &sv) == 5);
	CHECK(nmem == 2 && mapped == 2.0 * NPAGES * T_PAGE / 1048576.0);
	CHECK(sv > 0 && sv <= NPAGES * T_PAGE / 1048576.0);

	/* Prometheus: processes and groups */
	run = ts_tool_run("--prometheus", NULL);
	CHECK(run->status == 0 && strstr(run->out, "# TYPE libdedup_group_saved_bytes gauge\n"));
	CHECK(prom_value(run->out, "libdedup_group_members") == 2);
	for (pid_t p = a;; p = b) {
		char pk[96];
		snprintf(pk, sizeof(pk), "libdedup_process_group_info{pid=\"%d\",", (int)p);
		const char *pl = strstr(run->out, pk), *eol = pl ? strchr(pl, '\n') : NULL;
		snprintf(pk, sizeof(pk), ",group=\"%s\"} 1", name);
		const char *gl = pl ? strstr(pl, pk) : NULL;
		CHECK(gl && gl < eol);
		if (p == b)
			break;
	}
	v = prom_value(run->out, "libdedup_group_saved_bytes");
	CHECK(v > 0 && v <= NPAGES * T_PAGE);
	run = ts_tool_run("--groups", "--prometheus", NULL);
	CHECK(run->status == 0 && !strstr(run->out, "{pid=\"") &&
	      prom_value(run->out, "libdedup_group_saved_bytes") == v);
	fputs(run->out, stdout);

	/* dedup-stat asked as an observer: still two members */
	CHECK(dd_share_query(sock, &in) == 0 && in.members == 2);
	printf("ok\n");
	return T_PASS;
}
