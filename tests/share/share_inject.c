/* SPDX-License-Identifier: MIT */
/*
 * share_inject.c - issue 13: a member or the helper killed between two
 * given steps of the group's protocol, every survivor's memory verified,
 * and the group working again afterwards.
 *
 *   share_inject HELPER [m1..m7 h1..h5 ...]    (default: every step)
 *
 * share_kill kills at random instants; this test kills at each step on
 * purpose, with the fault-injection hooks: DEDUP_TEST_SHARE_DIE=N in a
 * member (group.h, enum dd_group_step) and DEDUP_SHARE_TEST_DIE=N in a
 * helper (tools/dedup-share.c). The process SIGKILLs itself the first time
 * it reaches the step; the test waits for that death (a step never reached
 * fails the test: the hook, or the scenario, no longer does what it says).
 *
 * Members are forked processes in API mode holding NP pages of one
 * content: a publisher (P) holds it twice (its own pairs make it publish
 * segments), a user (U) once (it finds the publisher's segments). A victim
 * plays whichever role brings it to its step:
 *
 *   m1 locked    the first member, dies holding the group's flock before
 *                it spawns a helper; P then starts the helper (the kernel
 *                dropped the dead member's lock)
 *   m2 written   a publisher dies with a segment written, not sealed
 *   m3 sealed    ... sealed, not published
 *   m4 publish   ... PUBLISH sent, its answer not read (the helper may
 *                have indexed it: a segment whose publisher is dead)
 *   m5 found     a user dies with LOOKUP's segments received, nothing merged
 *   m6 merging   a user dies inside a merge window into a segment
 *   m7 release   a user that merged, then rewrote its pages, dies having
 *                sent RELEASE
 *   h1 publish received, h2 publish indexed (not answered), h3 lookup
 *   received, h4 release done, h5 a member's connection dropped: the
 *                helper dies there; members leave the group (one line
 *                each) and keep merging alone
 *
 * After the death: every survivor checks every page; a new publisher and
 * a new user join (after a helper's death they start a new helper) and the
 * user must come to map all its pages from the group; everyone checks
 * again, shuts down (unmerging) and checks once more. At the end of each
 * step the helper, asked as an observer, must hold no segment, and at the
 * end of the test the shared memory (Shmem) must be back: no segment
 * outlives the processes that map it, whoever died where.
 */
#include "tshare.h"   /* first: tcommon.h */
#include "group.h"
#include "libdedup.h"

#include <poll.h>

#define NP 512   /* pages of the content (2 MiB) */

static uint64_t word(size_t p, uint32_t v, size_t i)
{
	return ((uint64_t)p * 0x9e3779b97f4a7c15ULL + (uint64_t)v * 0xc2b2ae3d27d4eb4fULL) ^ i;
}

static void put(char *b, size_t p, uint32_t v)
{
	uint64_t *w = (uint64_t *)(b + p * T_PAGE);
	for (size_t i = 0; i < T_PAGE / 8; i++)
		w[i] = word(p % NP, v, i);
}

static size_t bad_pages(const char *b, size_t n, uint32_t v)
{
	size_t bad = 0;
	for (size_t p = 0; p < n; p++) {
		const uint64_t *w = (const uint64_t *)(b + p * T_PAGE);
		for (size_t i = 0; i < T_PAGE / 8; i++)
			if (w[i] != word(p % NP, v, i)) {
				if (bad < 4)
					fprintf(stderr, "member %d: page %zu reads wrong at word %zu\n",
						getpid(), p, i);
				bad++;
				break;
			}
	}
	return bad;
}

enum role { PUB, USER };

/*
 * A member: commands 'v' (verify: answers bad pages and group_pages), 'w'
 * (rewrite every page with another version: its segments go unused, it
 * releases them), 'q' (shut down, verify, exit). die: its step, or 0.
 */
static int member(const char *group, enum role role, int die, int rfd, int wfd)
{
	struct dedup_config cfg = { .size = sizeof(cfg), .scan_interval_ms = 10,
				    .cpu_percent = 50, .share = group };
	size_t n = role == PUB ? 2 * NP : NP;
	char *b = mmap(NULL, n * T_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		       -1, 0);
	uint32_t v = 0;
	char num[16];

	CHECK(b != MAP_FAILED);
	for (size_t p = 0; p < n; p++)
		put(b, p, v);
	if (die) {
		snprintf(num, sizeof(num), "%d", die);
		setenv("DEDUP_TEST_SHARE_DIE", num, 1);
	}
	CHECK(dedup_init(&cfg) == 0);
	CHECK(dedup_register(b, n * T_PAGE) == 0);
	for (;;) {
		char cmd;
		ssize_t r = read(rfd, &cmd, 1);
		if (r == 0)
			return 0;   /* the parent is gone */
		CHECK(r == 1);
		if (cmd == 'w') {
			v++;
			for (size_t p = 0; p < n; p++)
				put(b, p, v);
		}
		struct dedup_stats st = { .size = sizeof(st) };
		CHECK(dedup_stats(&st) == 0);
		if (cmd == 'q')
			dedup_shutdown();
		uint64_t ans[2] = { bad_pages(b, n, v), st.group_pages };
		CHECK(write(wfd, ans, sizeof(ans)) == sizeof(ans));
		if (cmd == 'q')
			return ans[0] ? T_FAIL : T_PASS;
	}
}

struct proc { pid_t pid; int to, from; size_t pages; bool live; };

static struct proc start(const char *group, enum role role, int die)
{
	int a[2], b[2];
	struct proc m = { .pages = role == PUB ? 2 * NP : NP, .live = true };

	CHECK(pipe2(a, O_CLOEXEC) == 0 && pipe2(b, O_CLOEXEC) == 0);
	m.pid = fork();
	CHECK(m.pid >= 0);
	if (m.pid == 0) {
		ts_close_others(a[0], b[1]);
		_exit(member(group, role, die, a[0], b[1]));
	}
	close(a[0]);
	close(b[1]);
	m.to = a[1];
	m.from = b[0];
	return m;
}

/* Ask m; false if it is gone (the victim, dying meanwhile). A member that
 * does not answer within t_cap() is hung: that fails the test. */
static bool ask(struct proc *m, char cmd, uint64_t ans[2])
{
	struct pollfd pf = { .fd = m->from, .events = POLLIN };

	if (write(m->to, &cmd, 1) != 1)
		return false;
	if (poll(&pf, 1, t_cap_ms()) != 1) {
		fprintf(stderr, "member %d: no answer to '%c' within %.0f s\n", (int)m->pid, cmd,
			t_cap());
		exit(T_FAIL);
	}
	return read(m->from, ans, 2 * sizeof(*ans)) == 2 * sizeof(*ans);
}

/* Every page of m reads right; its group pages into *group if asked. */
static void verify(struct proc *m, uint64_t *group)
{
	uint64_t ans[2];
	CHECK(ask(m, 'v', ans));
	if (ans[0]) {
		fprintf(stderr, "member %d: %llu pages read wrong\n", (int)m->pid,
			(unsigned long long)ans[0]);
		exit(T_FAIL);
	}
	if (group)
		*group = ans[1];
}

/* Until every page of m maps the group's (up to t_cap()), checking as it goes. */
static void wait_merged(struct proc *m, const char *what)
{
	double t0 = t_now();
	uint64_t g = 0;
	for (;;) {
		verify(m, &g);
		if (g >= m->pages)
			return;
		if (t_now() - t0 > t_cap()) {
			fprintf(stderr, "%s: %llu of %zu pages map the group after %.0f s\n", what,
				(unsigned long long)g, m->pages, t_cap());
			exit(T_FAIL);
		}
		usleep(20000);
	}
}

/* pid died of SIGKILL (its hook) within t_cap(); anything else fails. */
static void wait_killed(pid_t pid, const char *what)
{
	double t0 = t_now();
	int st;
	pid_t r;
	while ((r = waitpid(pid, &st, WNOHANG)) == 0 && t_now() - t0 < t_cap())
		usleep(10000);
	if (r != pid || !WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL) {
		fprintf(stderr, "%s: never reached its step (%s)\n", what,
			r == 0 ? "still running" : WIFEXITED(st) ? "exited" : "killed otherwise");
		if (r == 0)
			kill(pid, SIGKILL);
		exit(T_FAIL);
	}
}

static void quit(struct proc *m)
{
	uint64_t ans[2];
	CHECK(ask(m, 'q', ans));
	close(m->to);
	close(m->from);
	CHECK(ts_wait(m->pid) == T_PASS && ans[0] == 0);
	m->live = false;
}

/* A helper of our own for group, with DEDUP_SHARE_TEST_DIE=die, listening
 * when this returns. */
static pid_t start_helper(const char *helper, const char *group, int die)
{
	char num[16];
	pid_t pid = fork();

	CHECK(pid >= 0);
	if (pid == 0) {
		snprintf(num, sizeof(num), "%d", die);
		setenv("DEDUP_SHARE_TEST_DIE", num, 1);
		execl(helper, helper, "--name", group, "--dir", ts_dir, (char *)NULL);
		_exit(127);
	}
	ts_note_helper(pid);   /* killed at exit, should the test fail first */
	double t0 = t_now();
	int s;
	while ((s = ts_connect(group)) < 0 && t_now() - t0 < t_cap())
		usleep(10000);
	CHECK(s >= 0);
	close(s);   /* no HELLO: not a member */
	return pid;
}

/* The end of a step: survivors shut down; the helper lets go of every
 * segment; the group's helpers are stopped. */
static void finish(const char *group, struct proc *m, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (m[i].live)
			quit(&m[i]);
	char sock[600];
	uint64_t segs;
	snprintf(sock, sizeof(sock), "%s/%s.sock", ts_dir, group);
	if (ts_segments_drain(sock, &segs) == 0 && segs) {
		fprintf(stderr, "%s: the helper still holds %llu segments with no member left\n",
			group, (unsigned long long)segs);
		exit(T_FAIL);
	}
	pid_t hp[8];
	int nh = ts_group_helpers(group, hp, 8);
	for (int j = 0; j < nh; j++)
		kill(hp[j], SIGKILL);
}

static void member_step(int s)
{
	char group[64];
	struct proc m[4];
	size_t n = 0;

	snprintf(group, sizeof(group), "inj-m%d-%d-", s, (int)getpid());
	if (s <= DD_GS_PUBLISH_SENT) {
		/* m1: nobody listens yet, the victim takes the lock first;
		 * m2-m4: the victim publishes its own pairs */
		struct proc v = start(group, PUB, s);
		wait_killed(v.pid, group);
		m[n++] = start(group, PUB, 0);
	} else {
		m[n++] = start(group, PUB, 0);
		wait_merged(&m[0], "publisher");
		struct proc v = start(group, USER, s);
		if (s == DD_GS_RELEASE_SENT) {
			wait_merged(&v, "victim");
			uint64_t ans[2];
			CHECK(ask(&v, 'w', ans) && ans[0] == 0);   /* its segments go unused */
		}
		wait_killed(v.pid, group);
		close(v.to);
		close(v.from);
		verify(&m[0], NULL);
	}
	m[n++] = start(group, USER, 0);
	wait_merged(&m[n - 1], "user after the death");
	for (size_t i = 0; i < n; i++)
		verify(&m[i], NULL);
	finish(group, m, n);
	printf("m%d: member killed at its step; %zu survivors and newcomers verified, the group "
	       "works\n", s, n);
}

static void helper_step(const char *helper, int s)
{
	char group[64];
	struct proc m[6];
	size_t n = 0;

	snprintf(group, sizeof(group), "inj-h%d-%d-", s, (int)getpid());
	pid_t hp = start_helper(helper, group, s);
	m[n++] = start(group, PUB, 0);   /* h1-h3: its first publication or lookup */
	if (s >= 4) {
		wait_merged(&m[0], "publisher");
		m[n++] = start(group, USER, 0);
		wait_merged(&m[1], "user");
		uint64_t ans[2];
		if (s == 4)   /* its segments go unused: RELEASE */
			CHECK(ask(&m[1], 'w', ans) && ans[0] == 0);
		else {        /* a member's death: the helper drops its connection */
			kill(m[1].pid, SIGKILL);
			waitpid(m[1].pid, NULL, 0);
			close(m[1].to);
			close(m[1].from);
			m[1].live = false;
		}
	}
	wait_killed(hp, group);
	for (size_t i = 0; i < n; i++)
		if (m[i].live)
			verify(&m[i], NULL);
	/* a new helper (started by the next member), and the group works */
	m[n++] = start(group, PUB, 0);
	wait_merged(&m[n - 1], "publisher after the helper's death");
	m[n++] = start(group, USER, 0);
	wait_merged(&m[n - 1], "user after the helper's death");
	for (size_t i = 0; i < n; i++)
		if (m[i].live)
			verify(&m[i], NULL);
	finish(group, m, n);
	printf("h%d: helper killed at its step; members verified, a new helper serves\n", s);
}

int main(int argc, char **argv)
{
	ts_setup(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	long shm0 = ts_shmem_kib();
	int steps = 0;

	for (int s = 1; s <= DD_GS_LAST + 5; s++) {
		bool helper = s > DD_GS_LAST;
		int k = helper ? s - DD_GS_LAST : s;
		char name[8];
		bool want = argc == 2;
		snprintf(name, sizeof(name), "%c%d", helper ? 'h' : 'm', k);
		for (int i = 2; i < argc; i++)
			want |= !strcmp(argv[i], name);
		if (!want)
			continue;
		if (helper)
			helper_step(argv[1], k);
		else
			member_step(k);
		steps++;
	}
	/* every segment of every step is gone with its processes */
	double t0 = t_now();
	long shm = ts_shmem_kib(), slack = 4096;
	while (shm > shm0 + slack && t_now() - t0 < t_cap()) {
		usleep(100000);
		shm = ts_shmem_kib();
	}
	printf("%d steps; Shmem %ld -> %ld KiB\n", steps, shm0, shm);
	CHECK(steps > 0 && shm <= shm0 + slack);
	return T_PASS;
}
