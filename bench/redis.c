/* SPDX-License-Identifier: MIT */
/*
 * redis.c - the redis workload: a real program as the measured process.
 *
 * The harness forks; the child opts in to the merger and execs redis-server
 * on 127.0.0.1 and a free port (no persistence). How each mode opts in:
 *   ksm-*     prctl(PR_SET_MEMORY_MERGE, 1) before exec. The flag
 *             (MMF_VM_MERGE_ANY) is inherited by fork and, since Linux 6.7
 *             ("mm/ksm: support fork/exec for prctl"), kept across exec;
 *             checked on every run: results.json has the server's own
 *             /proc/PID/ksm_stat ("ksm_merge_any": "yes", merging pages).
 *   preload   LD_PRELOAD=libdedup.so and DEDUP_* in the environment
 *             (preload.c); libdedup's counters (passes, pages scanned)
 *             come from the stats file it publishes. It merges from the
 *             server's start, so also while the dataset is loaded: Pss and
 *             VMAs "before" are those of the none row (run.c, run_begin),
 *             and the saving made before "go" is in results.json
 *             (saved_before_go_kib). Times count from "go" (the dataset
 *             loaded), as for KSM, whose ksmd starts then.
 *   api       cannot apply (redis does not call dedup_register): skipped.
 *
 * Dataset: --size MiB of identical 16368-byte values (a seeded printable
 * string; with redis's 5-byte string header and NUL it fills one 16 KiB
 * jemalloc class), keys "key:%012u" (redis-benchmark's __rand_int__ form),
 * loaded with `redis-cli --pipe`. Memory is the server's Pss, sampled like
 * any other run. After the saving settled, with the merger still running,
 * `redis-benchmark -t get -r NKEYS` measures GET/s (median of opt.redis_reps
 * runs); the slowdown is against mode none.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#endif

#define VALUE_LEN 16368u

static bool in_path(const char *prog)
{
	const char *path = getenv("PATH");
	char buf[4096];

	if (!path)
		path = "/usr/bin:/bin";
	while (*path) {
		size_t n = strcspn(path, ":");
		snprintf(buf, sizeof(buf), "%.*s/%s", (int)n, path, prog);
		if (access(buf, X_OK) == 0)
			return true;
		path += n + (path[n] == ':');
	}
	return false;
}

bool redis_available(const char **why)
{
	static const char *const progs[] = { "redis-server", "redis-cli", "redis-benchmark" };
	static char msg[96];
	for (size_t i = 0; i < B_ARRAY_SIZE(progs); i++) {
		if (!in_path(progs[i])) {
			snprintf(msg, sizeof(msg), "%s not installed (Debian: redis-server, redis-tools)",
				 progs[i]);
			*why = msg;
			return false;
		}
	}
	return true;
}

static int free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t l = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int port = -1;

	if (fd < 0)
		return -1;
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&a, &l) == 0)
		port = ntohs(a.sin_port);
	close(fd);
	return port;
}

static bool ping(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	char buf[16] = { 0 };
	bool ok = false;

	if (fd < 0)
		return false;
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
	    write_full(fd, "PING\r\n", 6) == 6 && read(fd, buf, sizeof(buf) - 1) > 0)
		ok = strncmp(buf, "+PONG", 5) == 0;
	close(fd);
	return ok;
}

/* Run argv with stdin fed from `in` (or /dev/null) and stdout captured
 * into out. Returns the exit status, -1 on failure. */
static int run_capture(char *const argv[], const char *in, size_t inlen, char *out, size_t outlen,
		       void (*feed)(int fd, void *ctx), void *ctx)
{
	int pin[2], pout[2];
	if (pipe2(pin, O_CLOEXEC) < 0 || pipe2(pout, O_CLOEXEC) < 0)
		return -1;
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		dup2(pin[0], 0);
		dup2(pout[1], 1);
		int null = open("/dev/null", O_WRONLY);
		if (null >= 0)
			dup2(null, 2);
		execvp(argv[0], argv);
		_exit(127);
	}
	close(pin[0]);
	close(pout[1]);
	if (feed)
		feed(pin[1], ctx);
	else if (in)
		write_full(pin[1], in, inlen);
	close(pin[1]);
	size_t got = 0;
	for (;;) {
		ssize_t n = read(pout[0], out + got, outlen - 1 - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
		if (got + 1 >= outlen)
			got = 0;   /* keep the tail only */
	}
	out[got] = 0;
	close(pout[0]);
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

struct load {
	unsigned nkeys;
	char *value;
};

static void feed_sets(int fd, void *ctx)
{
	struct load *l = ctx;
	size_t cap = 1 << 20, len = 0;
	char *buf = malloc(cap);

	if (!buf)
		return;
	for (unsigned i = 0; i < l->nkeys && !g_stop; i++) {
		if (len + VALUE_LEN + 128 > cap) {
			if (write_full(fd, buf, len) < 0)
				break;
			len = 0;
		}
		len += (size_t)sprintf(buf + len, "*3\r\n$3\r\nSET\r\n$16\r\nkey:%012u\r\n$%u\r\n", i,
				       VALUE_LEN);
		memcpy(buf + len, l->value, VALUE_LEN);
		len += VALUE_LEN;
		memcpy(buf + len, "\r\n", 2);
		len += 2;
	}
	if (len)
		write_full(fd, buf, len);
	free(buf);
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double bench_gets(int port, unsigned nkeys)
{
	char p[16], r[16], n[16], out[8192];
	double rates[16];
	unsigned reps = opt.redis_reps < 16 ? opt.redis_reps : 16, got = 0;

	snprintf(p, sizeof(p), "%d", port);
	snprintf(r, sizeof(r), "%u", nkeys);
	snprintf(n, sizeof(n), "%u", opt.redis_requests);
	char *argv[] = { (char *)"redis-benchmark", (char *)"-h", (char *)"127.0.0.1", (char *)"-p", p,
			 (char *)"-t", (char *)"get", (char *)"-r", r, (char *)"-n", n,
			 (char *)"-c", (char *)"8", (char *)"--csv", NULL };
	for (unsigned i = 0; i < reps && !g_stop; i++) {
		if (run_capture(argv, NULL, 0, out, sizeof(out), NULL, NULL) != 0)
			continue;
		char *g = strstr(out, "\"GET\",\"");
		if (g)
			rates[got++] = strtod(g + 7, NULL);
	}
	if (!got)
		return NA;
	qsort(rates, got, sizeof(rates[0]), cmp_d);
	return rates[got / 2];
}

void redis_run(struct result *r, FILE *series)
{
	const struct mode *m = r->m;
	const char *why;
	char out[4096], logpath[4096], dir[] = "/tmp/dedup-bench-redis-XXXXXX";
	struct run_ctx c = { .r = r, .series = series };

	if (m->api) {
		snprintf(r->status, sizeof(r->status), "skipped");
		snprintf(r->note, sizeof(r->note),
			 "needs preload: redis cannot call dedup_register (mode libdedup-preload will)");
		return;
	}
	if (!redis_available(&why)) {
		snprintf(r->status, sizeof(r->status), "skipped");
		snprintf(r->note, sizeof(r->note), "%s", why);
		return;
	}
	int port = free_port();
	if (port <= 0 || !mkdtemp(dir)) {
		snprintf(r->status, sizeof(r->status), "failed");
		snprintf(r->note, sizeof(r->note), "no free port or temporary directory");
		return;
	}
	if (m->preload && !(c.pl = preload_new())) {
		snprintf(r->status, sizeof(r->status), "failed");
		snprintf(r->note, sizeof(r->note), "cannot make a DEDUP_STAT_DIR: %s", strerror(errno));
		rmdir(dir);
		return;
	}
	unsigned nkeys = (unsigned)((r->size_mib << 20) / 16384);
	r->pages = (uint64_t)nkeys * 4;
	snprintf(logpath, sizeof(logpath), "%s/redis-%s.log", opt.out, m->name);
	char ps[16];
	snprintf(ps, sizeof(ps), "%d", port);

	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		snprintf(r->status, sizeof(r->status), "failed");
		snprintf(r->note, sizeof(r->note), "fork: %s", strerror(errno));
		rmdir(dir);
		preload_free(c.pl);
		return;
	}
	if (pid == 0) {
		signal(SIGINT, SIG_IGN);
		int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		if (m->merger == MERGER_KSM && prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) != 0) {
			fprintf(stderr, "prctl(PR_SET_MEMORY_MERGE): %s\n", strerror(errno));
			_exit(126);
		}
		if (c.pl)
			preload_setenv(c.pl);
		execlp("redis-server", "redis-server", "--port", ps, "--bind", "127.0.0.1", "--save",
		       "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no",
		       "--dir", dir, "--loglevel", "warning", (char *)NULL);
		_exit(127);
	}
	c.pid = pid;
	g_child = pid;
	bool up = false;
	for (int i = 0; i < 200 && !g_stop && !up; i++) {
		struct timespec ts = { 0, 50000000 };
		nanosleep(&ts, NULL);
		up = ping(port);
	}
	if (!up) {
		snprintf(r->status, sizeof(r->status), g_stop ? "interrupted" : "failed");
		snprintf(r->note, sizeof(r->note), "redis-server did not answer (see %.200s)", logpath);
		goto out;
	}
	if (c.pl && !preload_attach(c.pl, pid, 5000)) {
		snprintf(r->status, sizeof(r->status), g_stop ? "interrupted" : "failed");
		snprintf(r->note, sizeof(r->note),
			 "libdedup not running in preloaded redis-server (no stats file; see %.160s)",
			 logpath);
		goto out;
	}

	progress("  loading %u keys x %u bytes into redis on port %d", nkeys, VALUE_LEN, port);
	struct load l = { .nkeys = nkeys, .value = malloc(VALUE_LEN) };
	if (!l.value)
		goto out;
	uint64_t x = opt.seed * 0x9e3779b97f4a7c15ULL + 1;
	for (unsigned i = 0; i < VALUE_LEN; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		l.value[i] = (char)('a' + x % 26);
	}
	char *cli[] = { (char *)"redis-cli", (char *)"-h", (char *)"127.0.0.1", (char *)"-p", ps,
			(char *)"--pipe", NULL };
	double t_load = now_s();
	int st = run_capture(cli, NULL, 0, out, sizeof(out), feed_sets, &l);
	result_extra(r, "load_s", "%.2f", now_s() - t_load);
	free(l.value);
	if (st != 0 || !strstr(out, "errors: 0")) {
		snprintf(r->status, sizeof(r->status), g_stop ? "interrupted" : "failed");
		snprintf(r->note, sizeof(r->note), "redis-cli --pipe failed (status %d)", st);
		goto out;
	}
	{
		struct timespec ts = { 0, 500000000 };   /* let the server settle */
		nanosleep(&ts, NULL);
	}
	if (!run_begin(&c))
		goto out;
	c.t_go = now_s();
	if (!run_sample(&c)) {
		snprintf(r->status, sizeof(r->status), g_stop ? "interrupted" : "failed");
		goto out;
	}
	if (c.pl)
		run_ld_final(&c);
	const char *early = result_extra_get(r, "saved_before_go_kib");
	const char *load = result_extra_get(r, "load_s");
	if (early)
		run_note_early(r, strtod(early, NULL), "redis loaded its data, before go",
			       load ? strtod(load, NULL) + 0.5 : NA);
	run_ksm_collect(&c);
	if (m->merger == MERGER_KSM && !is_na(r->pages_scanned) && c.cpu_end_s > 0)
		r->scanned_per_cpu = r->pages_scanned / c.cpu_end_s;
	progress("  redis-benchmark: %u GETs x %u", opt.redis_requests, opt.redis_reps);
	r->app_rate = bench_gets(port, nkeys);
	r->app_unit = "GET/s";
	if (is_na(r->app_rate))
		snprintf(r->note, sizeof(r->note), "redis-benchmark gave no GET rate");
	snprintf(r->status, sizeof(r->status), "ok");
out:
	if (m->merger == MERGER_KSM)
		ksm_stop();
	kill(pid, SIGTERM);
	for (int i = 0; i < 500; i++) {
		if (waitpid(pid, &st, WNOHANG) != 0)
			break;
		struct timespec ts = { 0, 10000000 };
		nanosleep(&ts, NULL);
		if (i == 499) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
		}
	}
	g_child = 0;
	rmdir(dir);
	preload_free(c.pl);
}
