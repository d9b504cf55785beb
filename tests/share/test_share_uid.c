/* SPDX-License-Identifier: MIT */
/*
 * test_share_uid - another uid cannot join (root only: the child drops to
 * 65534). Through the group's own directory the kernel refuses it (the
 * 0700 directory: EACCES), whatever name it tries. With the directory and
 * socket opened up on purpose, it can connect, and the helper's
 * SO_PEERCRED check closes the connection before any answer. And a member
 * refuses a directory that is not its own (another uid's, or open to
 * others). The helper serves its own uid throughout. And a member (API,
 * its engine running) that becomes another uid with setuid() leaves the
 * group on its own: the helper would otherwise go on sharing with it.
 */
#include "tshare.h"
#include "libdedup.h"

#include <grp.h>

#define NAME "uid"
#define NOBODY 65534

/* In a child as nobody: connect to the group's socket; the errno, 0 if
 * connected and HELLO got an answer, or -1 if the helper closed it. */
static int child_try(void)
{
	if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
		return 100;
	int s = ts_connect(NAME);
	if (s < 0)
		return -s;
	struct dd_share_hello m = { .page_size = DD_PAGE, .pid = getpid() };
	dd_share_hdr_init(&m.h, DD_SHARE_HELLO, 0);
	if (ts_send(s, &m, sizeof(m), NULL, 0) < 0)
		return 99;   /* closed before we could even send: refused */
	return ts_closed_by_peer(s) ? 99 : 0;
}

static int run_child(void)
{
	pid_t kid = fork();

	CHECK(kid >= 0);
	if (!kid)
		_exit(child_try());
	return ts_wait(kid);
}

/* A member through the API that drops to nobody once the parent says so
 * (a byte on rfd); it stays alive until killed or the parent is gone (EOF:
 * a failing test must not leave it holding ctest's output). */
static int member_then_nobody(int rfd)
{
	struct dedup_config cfg = { .size = sizeof(cfg), .scan_interval_ms = 10, .share = NAME };
	char c;

	CHECK(dedup_init(&cfg) == 0);
	CHECK(read(rfd, &c, 1) == 1);
	CHECK(setgroups(0, NULL) == 0 && setgid(NOBODY) == 0 && setuid(NOBODY) == 0);
	while (read(rfd, &c, 1) != 0)
		;
	return 0;
}

int main(int argc, char **argv)
{
	char sock[PATH_MAX];
	pid_t helper;

	if (geteuid() != 0)
		t_skip("needs root, to become another uid");
	ts_setup(argc, argv);
	CHECK(dd_group_join(NAME) == 0);
	int s = ts_hello(NAME, &helper);

	/* the 0700 directory keeps nobody out */
	CHECK(run_child() == EACCES);

	/* open the way on purpose: the helper itself refuses the uid */
	snprintf(sock, sizeof(sock), "%s/%s.sock", ts_dir, NAME);
	CHECK(chmod(ts_root, 0711) == 0);
	char lib[PATH_MAX];
	snprintf(lib, sizeof(lib), "%s/libdedup", ts_root);
	CHECK(chmod(lib, 0711) == 0 && chmod(ts_dir, 0711) == 0 && chmod(sock, 0666) == 0);
	CHECK(run_child() == 99);
	CHECK(chmod(ts_root, 0700) == 0 && chmod(lib, 0700) == 0);

	/* a member refuses a directory open to others */
	dd_group_leave();
	CHECK(dd_group_join(NAME) == -EACCES);
	CHECK(chmod(ts_dir, 0700) == 0);
	CHECK(dd_group_join(NAME) == 0);

	/* ... and one of another uid */
	dd_group_leave();
	CHECK(chown(ts_dir, NOBODY, NOBODY) == 0);
	CHECK(dd_group_join(NAME) == -EACCES);
	CHECK(chown(ts_dir, 0, 0) == 0);

	/* the helper still serves us */
	CHECK(dd_group_join(NAME) == 0);
	struct dd_share_stats st = ts_stats(s);
	CHECK(st.members == 2);

	/* a member that changes its uid leaves (up to t_cap()); the child
	 * must not inherit our connection */
	dd_group_leave();
	TS_WAIT_STATS(s, st, st.members == 1);
	int go[2];
	CHECK(pipe(go) == 0);
	pid_t kid = fork();
	CHECK(kid >= 0);
	if (!kid) {
		close(go[1]);
		_exit(member_then_nobody(go[0]));
	}
	TS_WAIT_STATS(s, st, st.members == 2);
	CHECK(write(go[1], "x", 1) == 1);
	TS_WAIT_STATS(s, st, st.members == 1);
	kill(kid, SIGKILL);
	CHECK(ts_wait(kid) == 128 + SIGKILL);
	CHECK(kill(helper, 0) == 0);
	close(s);
	printf("PASS: another uid is refused by the directory and by SO_PEERCRED; a member "
	       "that becomes another uid leaves\n");
	return T_PASS;
}
