/* SPDX-License-Identifier: MIT */
/*
 * family.c - the processes of the workers workload, as one measured process.
 *
 * The __child (the leader, child.c) forks --workers - 1 siblings before it
 * builds anything, so that fork shares no page between them; each member
 * then builds the same buffer itself. A sibling's fds 3 and 4 are pipes to
 * the leader, so it runs child.c's conversation unchanged, with the leader
 * in the parent's place. The leader relays each command of the parent to
 * its siblings and answers the parent with one line made of its own and
 * theirs (combine(): counters summed, passes the minimum, *_secs the
 * maximum). run.c thus talks to one process and reads the family's Pss and
 * merger CPU through the pids the leader reports in "ready".
 *
 * Nothing outlives the leader: every sibling has PR_SET_PDEATHSIG(SIGKILL),
 * so the parent killing the leader (end of a run, SIGINT, a hang) kills
 * the family. A sibling that dies, reports an error or does not answer in
 * time becomes one "error" line naming it (with its wait channel when it
 * hangs); the leader passes it on and exits.
 *
 * Runs in the leader's main thread only (no locks); the siblings never
 * call anything here after fam_spawn() returned in them.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

struct sibling {
	pid_t pid;
	int ctl;               /* commands to it */
	struct linebuf lb;     /* its reports */
	char stat[1536];       /* its newest "stat" line, "" before the first */
};

static struct sibling *sibs;
static size_t nsibs;

int fam_spawn(unsigned n)
{
	pid_t leader = getpid();

	signal(SIGPIPE, SIG_IGN);   /* a dead sibling's pipe: EPIPE, not death */
	sibs = n > 1 ? calloc(n - 1, sizeof(*sibs)) : NULL;
	if (n > 1 && !sibs)
		return -1;
	for (unsigned i = 1; i < n; i++) {
		int ctl[2], rp[2];
		if (pipe2(ctl, O_CLOEXEC) < 0)
			return -1;
		if (pipe2(rp, O_CLOEXEC) < 0) {
			close(ctl[0]);
			close(ctl[1]);
			return -1;
		}
		pid_t pid = fork();
		if (pid < 0) {
			close(ctl[0]);
			close(ctl[1]);
			close(rp[0]);
			close(rp[1]);
			return -1;
		}
		if (pid == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() != leader)
				_exit(1);   /* the leader died before the prctl */
			if (dup2(ctl[0], 3) < 0 || dup2(rp[1], 4) < 0)
				_exit(127);
			close(ctl[0]);
			close(ctl[1]);
			close(rp[0]);
			close(rp[1]);
			for (size_t j = 0; j < nsibs; j++) {
				close(sibs[j].ctl);
				close(sibs[j].lb.fd);
			}
			free(sibs);
			sibs = NULL;
			nsibs = 0;
			return (int)i;
		}
		close(ctl[0]);
		close(rp[1]);
		struct sibling *s = &sibs[nsibs++];
		s->pid = pid;
		s->ctl = ctl[1];
		s->lb.fd = rp[0];
	}
	return 0;
}

bool fam_leader(void)
{
	return nsibs > 0;
}

void fam_send(const char *cmd)
{
	for (size_t i = 0; i < nsibs; i++) {
		write_full(sibs[i].ctl, cmd, strlen(cmd));
		write_full(sibs[i].ctl, "\n", 1);
	}
}

void fam_pids(char *out, size_t len)
{
	size_t used = (size_t)snprintf(out, len, "%d", (int)getpid());
	for (size_t i = 0; i < nsibs && used < len; i++)
		used += (size_t)snprintf(out + used, len - used, ",%d", (int)sibs[i].pid);
}

/* ---- combining lines of k=v words -------------------------------------------- */

struct kvs {
	size_t n;
	struct {
		char k[40], v[48];
	} e[64];
};

static void kv_parse(const char *line, struct kvs *o)
{
	const char *p = strchr(line, ' ');

	o->n = 0;
	while (p && *p && o->n < B_ARRAY_SIZE(o->e)) {
		while (*p == ' ')
			p++;
		size_t wl = strcspn(p, " ");
		const char *eq = memchr(p, '=', wl);
		if (eq) {
			snprintf(o->e[o->n].k, sizeof(o->e[0].k), "%.*s", (int)(eq - p), p);
			snprintf(o->e[o->n].v, sizeof(o->e[0].v), "%.*s", (int)(p + wl - eq - 1),
				 eq + 1);
			o->n++;
		}
		p += wl;
	}
}

static bool number(const char *v, double *out)
{
	char *end;
	*out = strtod(v, &end);
	return *v && !*end;
}

/* fold the value v of key k into a (the family's so far) */
static void fold(char *a, size_t alen, const char *k, const char *v)
{
	double x, y;
	size_t kl = strlen(k);

	if (!number(a, &x) || !number(v, &y))
		return;   /* words: the leader's stays */
	if (strcmp(k, "passes") == 0)
		x = x < y ? x : y;          /* the family settled when all members did */
	else if ((kl > 5 && strcmp(k + kl - 5, "_secs") == 0) || strcmp(k, "enable_ns") == 0)
		x = x > y ? x : y;          /* times side by side */
	else
		x += y;                     /* counters */
	snprintf(a, alen, "%.15g", x);
}

/* own's first word, then every key of own and of the lines, folded */
static void combine(const char *own, const char *const *lines, size_t n, char *out, size_t len)
{
	static struct kvs acc, one;

	kv_parse(own, &acc);
	for (size_t i = 0; i < n; i++) {
		kv_parse(lines[i], &one);
		for (size_t j = 0; j < one.n; j++) {
			size_t a = 0;
			while (a < acc.n && strcmp(acc.e[a].k, one.e[j].k) != 0)
				a++;
			if (a < acc.n) {
				fold(acc.e[a].v, sizeof(acc.e[a].v), one.e[j].k, one.e[j].v);
			} else if (acc.n < B_ARRAY_SIZE(acc.e)) {
				acc.e[acc.n++] = one.e[j];
			}
		}
	}
	size_t used = (size_t)snprintf(out, len, "%.*s", (int)strcspn(own, " "), own);
	for (size_t a = 0; a < acc.n && used < len; a++)
		used += (size_t)snprintf(out + used, len - used, " %s=%s", acc.e[a].k, acc.e[a].v);
}

/* ---- siblings' answers ----------------------------------------------------------- */

static void keep_stat(struct sibling *s, const char *line)
{
	size_t n = strnlen(line, sizeof(s->stat) - 1);
	memcpy(s->stat, line, n);
	s->stat[n] = 0;
}

/* An "error" line about sibling i into out: it failed, died or hangs. */
static void sibling_failed(size_t i, const char *what, const char *line, int got, char *out,
			   size_t len)
{
	struct sibling *s = &sibs[i];
	char path[64], wchan[64] = "?";
	int st;

	if (got > 0) {   /* its own error line, with who said it */
		snprintf(out, len, "%s (workers member %zu, pid %d)", line, i + 1, (int)s->pid);
		return;
	}
	if (got < 0) {
		pid_t w = waitpid(s->pid, &st, WNOHANG);
		if (w == s->pid)
			snprintf(out, len, "error workers member %zu (pid %d) %s %d %s", i + 1,
				 (int)s->pid, WIFEXITED(st) ? "exited with status" : "killed by signal",
				 WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st), what);
		else
			snprintf(out, len, "error workers member %zu (pid %d) closed its pipe %s",
				 i + 1, (int)s->pid, what);
		return;
	}
	snprintf(path, sizeof(path), "/proc/%d/wchan", (int)s->pid);
	proc_read_file(path, wchan, sizeof(wchan));
	snprintf(out, len, "error workers member %zu (pid %d) hung %s (wchan %s)", i + 1,
		 (int)s->pid, what, wchan[0] ? wchan : "-");
}

bool fam_collect(const char *want, const char *own, char *out, size_t len, int timeout_ms)
{
	static char got[MAX_WORKERS][1536];
	const char *lines[MAX_WORKERS];
	double end = now_s() + timeout_ms / 1000.0;
	char what[64];

	snprintf(what, sizeof(what), "before answering \"%s\"", want);
	for (size_t i = 0; i < nsibs; i++) {
		for (;;) {
			double left = end - now_s();
			int r = lb_read(&sibs[i].lb, got[i], sizeof(got[i]),
					left > 0 ? (int)(left * 1000) + 1 : 0);
			if (r > 0 && strncmp(got[i], "stat ", 5) == 0) {
				keep_stat(&sibs[i], got[i]);
				continue;
			}
			if (r > 0 && strncmp(got[i], want, strlen(want)) == 0)
				break;
			if (r > 0 && strncmp(got[i], "error", 5) != 0)
				continue;   /* a line for another phase */
			sibling_failed(i, what, got[i], r, out, len);
			return false;
		}
		lines[i] = got[i];
	}
	combine(own, lines, nsibs, out, len);
	return true;
}

bool fam_stat(const char *own, char *out, size_t len)
{
	const char *lines[MAX_WORKERS];
	char line[1536];

	for (size_t i = 0; i < nsibs; i++) {
		int r;
		while ((r = lb_read(&sibs[i].lb, line, sizeof(line), 0)) > 0) {
			if (strncmp(line, "stat ", 5) == 0)
				keep_stat(&sibs[i], line);
			else if (strncmp(line, "error", 5) == 0)
				break;
		}
		if (r != 0) {
			sibling_failed(i, "while running", line, r, out, len);
			return false;
		}
		/* no report yet: no pass yet */
		lines[i] = sibs[i].stat[0] ? sibs[i].stat : "stat passes=0";
	}
	if (own)
		combine(own, lines, nsibs, out, len);
	return true;
}

void fam_end(void)
{
	int st;

	/* "quit" went to them through fam_send(); a closed pipe says the
	 * same. 5 s to exit, then kill. */
	for (size_t i = 0; i < nsibs; i++)
		close(sibs[i].ctl);
	double end = now_s() + 5;
	for (size_t i = 0; i < nsibs; i++) {
		while (waitpid(sibs[i].pid, &st, WNOHANG) == 0) {
			if (now_s() > end) {
				kill(sibs[i].pid, SIGKILL);
				waitpid(sibs[i].pid, &st, 0);
				break;
			}
			struct timespec ts = { 0, 10000000 };
			nanosleep(&ts, NULL);
		}
		close(sibs[i].lb.fd);
	}
	nsibs = 0;
}
