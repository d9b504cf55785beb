/* SPDX-License-Identifier: MIT */
/*
 * test_share_proto - the member's side of a sharing group (group.c) against
 * the real helper (tools/dedup-share, argv[1]): joining spawns one helper
 * even when members race to join; a segment published by one member is
 * FOUND by another, whose descriptor is checked, above the floor and reads
 * the same bytes; NONE then SEEN across two connections; after RELEASE and
 * the grace period the content is gone (NONE); the helper refuses an
 * unsealed segment and a wrong hash without dropping the member; group
 * names are checked; a fork()ed child leaves its parent's connection alone.
 * The second member is a fork()ed child with a connection of its own
 * (dd_group_atfork_child, then dd_group_join), as with DEDUP_FORK=restart.
 */
#include "tshare.h"
#include "share_query.h"
#include "fds.h"

#include <sys/file.h>
#include <sys/resource.h>

#define NAME "proto"
#define NPAGES 3

static uint64_t hashes[NPAGES + 1];
static char *mem;

static void names(void)
{
	char long_name[DD_GROUP_NAME_MAX + 2];

	CHECK(!dd_group_name_ok(""));
	CHECK(!dd_group_name_ok(NULL));
	CHECK(!dd_group_name_ok(".x"));
	CHECK(!dd_group_name_ok("."));
	CHECK(!dd_group_name_ok(".."));
	CHECK(!dd_group_name_ok("a/b"));
	CHECK(!dd_group_name_ok("a b"));
	CHECK(dd_group_name_ok("ok_name-1.2"));
	memset(long_name, 'a', sizeof(long_name) - 1);
	long_name[DD_GROUP_NAME_MAX + 1] = 0;   /* 65 */
	CHECK(!dd_group_name_ok(long_name));
	long_name[DD_GROUP_NAME_MAX] = 0;       /* 64 */
	CHECK(dd_group_name_ok(long_name));
	CHECK(dd_group_join("../x") == -EINVAL);
	CHECK(!dd_group_active());
}

/* A new sealed segment: seals, name, size, content. */
static int segment(const void **pages, size_t n)
{
	char path[64], link[128];
	int fd = dd_group_segment_new(pages, n);

	CHECK(fd >= 0);
	CHECK(fd >= dd_fd_floor());
	CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	CHECK((fcntl(fd, F_GET_SEALS) & DD_SHARE_SEALS) == DD_SHARE_SEALS);
	CHECK(dd_group_segment_check(fd) == (int)n);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t l = readlink(path, link, sizeof(link) - 1);
	CHECK(l > 0);
	link[l] = 0;
	CHECK(!strncmp(link, "/memfd:libdedup-g:" NAME, strlen("/memfd:libdedup-g:" NAME)));
	CHECK(pwrite(fd, mem, DD_PAGE, 0) < 0 && errno == EPERM);
	return fd;
}

/* Not segments: a pipe, an unsealed memfd, a sealed one of the wrong size. */
static void not_segments(void)
{
	int p[2];
	CHECK(pipe(p) == 0);
	CHECK(dd_group_segment_check(p[0]) < 0);
	close(p[0]);
	close(p[1]);
	int m = memfd_create("libdedup-g:x", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	CHECK(m >= 0 && ftruncate(m, DD_PAGE) == 0);
	CHECK(dd_group_segment_check(m) == -EPERM);
	CHECK(ftruncate(m, DD_PAGE + 1) == 0 && fcntl(m, F_ADD_SEALS, DD_SHARE_SEALS) == 0);
	CHECK(dd_group_segment_check(m) == -EINVAL);
	close(m);
}

/* In a child: a member of its own, looking the hashes up; the last one
 * was never published (last: what the answer must be). */
static int child_lookup(uint8_t last)
{
	struct dd_group_answer ans[NPAGES + 1];
	struct dd_group_seg segs[NPAGES + 1];
	size_t ns;
	char buf[DD_PAGE];

	dd_group_atfork_child();
	CHECK(!dd_group_active());
	CHECK(dd_group_join(NAME) == 0);
	CHECK(dd_group_lookup(hashes, NPAGES + 1, ans, segs, &ns) == 0);
	CHECK(ns == 1);
	CHECK(segs[0].id > 0 && segs[0].npages == NPAGES);
	CHECK(segs[0].fd >= dd_fd_floor() && (fcntl(segs[0].fd, F_GETFD) & FD_CLOEXEC));
	CHECK(dd_fd_intact(segs[0].fd));
	for (size_t i = 0; i < NPAGES; i++) {
		CHECK(ans[i].kind == DD_GROUP_FOUND && ans[i].seg == 0 && ans[i].page == i);
		CHECK(pread(segs[0].fd, buf, DD_PAGE, (off_t)(ans[i].page * DD_PAGE)) ==
		      (ssize_t)DD_PAGE);
		CHECK(!memcmp(buf, mem + i * DD_PAGE, DD_PAGE));
	}
	CHECK(ans[NPAGES].kind == last);
	close(segs[0].fd);
	return 0;
}

/* In a child: look up a hash the parent offered: SEEN, once. */
static int child_seen(uint64_t x)
{
	struct dd_group_answer a;
	struct dd_group_seg s;
	size_t ns;

	dd_group_atfork_child();
	CHECK(dd_group_join(NAME) == 0);
	CHECK(dd_group_lookup(&x, 1, &a, &s, &ns) == 0 && ns == 0);
	CHECK(a.kind == DD_GROUP_SEEN);
	CHECK(dd_group_lookup(&x, 1, &a, &s, &ns) == 0 && ns == 0);
	CHECK(a.kind == DD_GROUP_NONE);   /* the offer is used up; ours now */
	return 0;
}

/* Four members join a group nobody serves yet, at once: one helper. */
static void race(void)
{
	int go[2], ready[2], done[2];
	pid_t kids[4];
	char c;

	CHECK(pipe(go) == 0 && pipe(ready) == 0 && pipe(done) == 0);
	for (size_t i = 0; i < 4; i++) {
		kids[i] = fork();
		CHECK(kids[i] >= 0);
		if (!kids[i]) {
			close(go[1]);
			close(ready[0]);
			close(done[1]);
			dd_group_atfork_child();
			CHECK(read(go[0], &c, 1) == 0);   /* the parent closed: start */
			_exit(dd_group_join("race") == 0 && write(ready[1], "r", 1) == 1 &&
			      read(done[0], &c, 1) == 0 ? 0 : 1);
		}
	}
	close(go[0]);
	close(ready[1]);
	close(done[0]);
	close(go[1]);   /* all go */
	for (size_t i = 0; i < 4; i++)
		CHECK(read(ready[0], &c, 1) == 1);
	/* every child is connected now: one helper has all of them */
	int s = ts_hello("race", NULL);
	struct dd_share_stats st = ts_stats(s);
	CHECK(st.members == 5);
	close(s);
	close(done[1]);
	for (size_t i = 0; i < 4; i++)
		CHECK(ts_wait(kids[i]) == 0);
	close(ready[0]);
}

/* The helper exits when idle, unlinking its socket; a helper killed with
 * SIGKILL leaves a stale socket that the next join replaces. Started by
 * hand here (our child: its exit status is seen) with a short idle time. */
static void lifetime(const char *helper_bin)
{
	char sock[PATH_MAX], idle[] = "1";
	struct stat sb;
	pid_t pid, first;

	snprintf(sock, sizeof(sock), "%s/life.sock", ts_dir);
	pid = fork();
	CHECK(pid >= 0);
	if (!pid) {
		execl(helper_bin, helper_bin, "--name", "life", "--dir", ts_dir, "--idle-exit", idle,
		      "--grace", "0", (char *)NULL);
		_exit(127);
	}
	ts_note_helper(pid);
	/* it listens once the socket connects (wait for that, not a time) */
	int s;
	double t0 = t_now();
	while ((s = ts_connect("life")) < 0) {
		CHECK(t_now() - t0 < t_cap());
		usleep(10000);
	}
	close(s);
	CHECK(dd_group_join("life") == 0);
	dd_group_leave();
	CHECK(ts_wait(pid) == 0);          /* idle: exits by itself */
	CHECK(lstat(sock, &sb) < 0 && errno == ENOENT);

	/* a second helper started while one serves exits at once */
	CHECK(dd_group_join("life") == 0);   /* spawns one */
	s = ts_hello("life", &first);
	pid = fork();
	CHECK(pid >= 0);
	if (!pid) {
		execl(helper_bin, helper_bin, "--name", "life", "--dir", ts_dir, (char *)NULL);
		_exit(127);
	}
	CHECK(ts_wait(pid) == 0);
	struct dd_share_stats st = ts_stats(s);
	CHECK(st.members == 2);
	close(s);

	/* SIGKILLed: the socket file stays, nobody listens, the next join
	 * starts another helper */
	dd_group_leave();
	CHECK(kill(first, SIGKILL) == 0);
	while ((s = ts_connect("life")) != -ECONNREFUSED) {   /* dead, maybe a zombie */
		if (s >= 0)
			close(s);
		CHECK(t_now() - t0 < t_cap());
		usleep(10000);
	}
	CHECK(lstat(sock, &sb) == 0 && S_ISSOCK(sb.st_mode));
	CHECK(dd_group_join("life") == 0);
	pid_t second;
	s = ts_hello("life", &second);
	CHECK(second != first);
	close(s);
	dd_group_leave();
}

/* The program closes our connection with a raw close_range() and opens a
 * file of its own at that number: we leave the group without touching it. */
static void program_closes(void)
{
	char buf[8];
	struct dd_group_answer a;
	struct dd_group_seg sg;
	size_t ns;

	CHECK(dd_group_join(NAME) == 0);
	int fd = dd_fd_next_ours((unsigned)dd_fd_floor(), ~0U);
	CHECK(fd >= 0);
	CHECK(syscall(SYS_close_range, fd, fd, 0) == 0);
	int p[2];
	CHECK(pipe(p) == 0 && dup2(p[0], fd) == fd);
	CHECK(dd_group_lookup(hashes, 1, &a, &sg, &ns) == -ENOTCONN);
	CHECK(!dd_group_active());
	CHECK(write(p[1], "x", 1) == 1 && read(fd, buf, 1) == 1 && buf[0] == 'x');   /* still open */
	close(fd);
	close(p[0]);
	close(p[1]);
}

/* A member that exits while a child of its (forked without our atfork
 * handler) still holds the connection: the helper drops its holds all the
 * same (its pidfd, SO_PEERPIDFD), not when the child exits. */
static void member_dies_child_holds(int s)
{
	int hold[2];
	char c;

	CHECK(pipe(hold) == 0);
	pid_t a = fork();
	CHECK(a >= 0);
	if (!a) {
		const void *pages[1] = { mem + NPAGES * DD_PAGE };
		dd_group_atfork_child();
		CHECK(dd_group_join(NAME) == 0);
		int fd = dd_group_segment_new(pages, 1);
		CHECK(fd >= 0 && dd_group_publish(fd, &hashes[NPAGES], 1) > 0);
		pid_t b = fork();   /* keeps the socket: no atfork handler here */
		CHECK(b >= 0);
		if (!b) {
			close(hold[1]);
			CHECK(read(hold[0], &c, 1) == 0);   /* until the parent test says */
			_exit(0);
		}
		_exit(0);
	}
	close(hold[0]);
	CHECK(ts_wait(a) == 0);
	struct dd_share_stats st;
	TS_WAIT_STATS(s, st, st.holds == 0 && st.members == 1);
	close(hold[1]);   /* the grandchild may go */
}

/* An observer (dedup-stat: HELLO pid 0, share_query.h) is no member: it
 * is not counted, and asking every 100 ms keeps no idle helper alive. */
static void observer(const char *helper_bin)
{
	char sock[PATH_MAX];
	struct dd_share_info in;
	int st, r;

	snprintf(sock, sizeof(sock), "%s/watched.sock", ts_dir);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (!pid) {
		execl(helper_bin, helper_bin, "--name", "watched", "--dir", ts_dir, "--idle-exit",
		      "1", (char *)NULL);
		_exit(127);
	}
	ts_note_helper(pid);
	double t0 = t_now();
	while ((r = dd_share_query(sock, &in)) < 0) {   /* until it listens */
		CHECK(t_now() - t0 < t_cap());
		usleep(10000);
	}
	CHECK(in.members == 0 && in.npids == 0 && in.helper_pid == pid);
	while (waitpid(pid, &st, WNOHANG) == 0) {
		CHECK(t_now() - t0 < t_cap());
		r = dd_share_query(sock, &in);
		CHECK(r < 0 || in.members == 0);
		usleep(100000);
	}
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* Socket activation: a listening socket passed as descriptor 3 with
 * LISTEN_FDS=1 and LISTEN_PID, as a systemd socket unit does. */
static void systemd_socket(const char *helper_bin)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int l = socket(AF_UNIX, SOCK_SEQPACKET, 0);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/sd.sock", ts_dir);
	CHECK(l >= 0 && bind(l, (struct sockaddr *)&sa, sizeof(sa)) == 0 && listen(l, 8) == 0);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (!pid) {
		char n[16];
		CHECK(dup2(l, 3) == 3);
		snprintf(n, sizeof(n), "%d", (int)getpid());
		setenv("LISTEN_PID", n, 1);
		setenv("LISTEN_FDS", "1", 1);
		execl(helper_bin, helper_bin, "--name", "sd", "--idle-exit", "1", (char *)NULL);
		_exit(127);
	}
	close(l);
	ts_note_helper(pid);
	pid_t got;
	int s = ts_hello("sd", &got);   /* the backlog holds us until it accepts */
	CHECK(got == pid);
	struct dd_share_stats st = ts_stats(s);
	CHECK(st.members == 1);
	close(s);
	CHECK(ts_wait(pid) == 0);   /* idle: exits, and leaves systemd's socket alone */
	struct stat sb;
	CHECK(lstat(sa.sun_path, &sb) == 0 && S_ISSOCK(sb.st_mode));
}

/* A full store: the helper has no descriptor left for another segment
 * (started here with RLIMIT_NOFILE 32). The publication is refused with
 * EMFILE, and the member stays in the group. */
static void full_store(const char *helper_bin)
{
	static char page[DD_PAGE] __attribute__((aligned(4096)));
	const void *pages[1] = { page };
	int64_t r = 0;

	pid_t pid = fork();
	CHECK(pid >= 0);
	if (!pid) {
		struct rlimit rl = { 32, 32 };
		CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
		execl(helper_bin, helper_bin, "--name", "full", "--dir", ts_dir, (char *)NULL);
		_exit(127);
	}
	ts_note_helper(pid);
	int s;
	double t0 = t_now();
	while ((s = ts_connect("full")) < 0) {
		CHECK(t_now() - t0 < t_cap());
		usleep(10000);
	}
	close(s);
	CHECK(dd_group_join("full") == 0);
	for (uint64_t i = 0; i < 64 && r >= 0; i++) {
		t_fill(page, 5000 + i);
		uint64_t x = dd_hash_content(page);
		int fd = dd_group_segment_new(pages, 1);
		CHECK(fd >= 0);
		r = dd_group_publish(fd, &x, 1);
		close(fd);
	}
	CHECK(r == -EMFILE);
	CHECK(dd_group_active());
	uint64_t x = dd_hash_content(page);
	struct dd_group_answer a;
	struct dd_group_seg sg;
	size_t ns;
	CHECK(dd_group_lookup(&x, 1, &a, &sg, &ns) == 0 && a.kind == DD_GROUP_NONE);
	dd_group_leave();
	kill(pid, SIGKILL);
	ts_wait(pid);
}

/* Two members publish one content; the first segment goes (released, grace
 * over): the content stays findable in the second. */
static void same_content_twice(int s)
{
	static char page[DD_PAGE] __attribute__((aligned(4096)));
	const void *pages[1] = { page };
	struct dd_group_answer a;
	struct dd_group_seg sg;
	size_t ns;
	int ready[2], done[2];
	char c;

	t_fill(page, 9000);
	uint64_t x = dd_hash_content(page);
	CHECK(dd_group_join(NAME) == 0);
	int fd = dd_group_segment_new(pages, 1);
	int64_t first = dd_group_publish(fd, &x, 1);
	CHECK(first > 0);
	CHECK(pipe(ready) == 0 && pipe(done) == 0);
	pid_t kid = fork();
	CHECK(kid >= 0);
	if (!kid) {
		close(ready[0]);
		close(done[1]);
		dd_group_atfork_child();
		CHECK(dd_group_join(NAME) == 0);
		int64_t second = dd_group_publish(fd, &x, 1);   /* the same segment, again */
		CHECK(second > 0 && second != first);
		CHECK(write(ready[1], &second, sizeof(second)) == sizeof(second));
		CHECK(read(done[0], &c, 1) == 0);
		_exit(0);
	}
	close(fd);
	close(ready[1]);
	close(done[0]);
	int64_t second;
	CHECK(read(ready[0], &second, sizeof(second)) == sizeof(second));
	uint64_t u = (uint64_t)first;
	CHECK(dd_group_release(&u, 1) == 0);
	struct dd_share_stats st;
	TS_WAIT_STATS(s, st, st.segments == 1);
	CHECK(dd_group_lookup(&x, 1, &a, &sg, &ns) == 0 && ns == 1 && a.kind == DD_GROUP_FOUND);
	CHECK(sg.id == (uint64_t)second);
	close(sg.fd);
	dd_group_leave();
	close(done[1]);
	CHECK(ts_wait(kid) == 0);
	close(ready[0]);
	TS_WAIT_STATS(s, st, st.segments == 0);
}

int main(int argc, char **argv)
{
	const void *pages[NPAGES + 1];
	struct dd_group_answer a;
	struct dd_group_seg sg;
	size_t ns;
	pid_t kid, helper;

	ts_setup(argc, argv);
	mem = t_map_anon((NPAGES + 2) * DD_PAGE);
	names();
	not_segments();

	/* the first member spawns the helper */
	CHECK(dd_group_join(NAME) == 0);
	CHECK(dd_group_active());
	CHECK(dd_group_join(NAME) == 0);           /* idempotent */
	CHECK(dd_group_join("other") == -EBUSY);   /* one group at a time */
	int s = ts_hello(NAME, &helper);
	CHECK(kill(helper, 0) == 0);

	ts_pages(mem, pages, hashes, NPAGES + 1, 1000);
	int fd = segment(pages, NPAGES);
	int64_t id = dd_group_publish(fd, hashes, NPAGES);
	CHECK(id > 0);
	close(fd);   /* the helper keeps its own */
	struct dd_share_stats st = ts_stats(s);
	CHECK(st.segments == 1 && st.pages == NPAGES && st.holds == 1 && st.members == 2);

	/* another member finds it */
	kid = fork();
	CHECK(kid >= 0);
	if (!kid)
		_exit(child_lookup(DD_GROUP_NONE));
	CHECK(ts_wait(kid) == 0);
	CHECK(dd_group_active());   /* the child's leaving was not ours */

	/* refused publications keep the member */
	int raw = memfd_create("libdedup-g:" NAME, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	CHECK(raw >= 0 && pwrite(raw, mem, DD_PAGE, 0) == (ssize_t)DD_PAGE);
	CHECK(dd_group_publish(raw, hashes, 1) == -EPERM);   /* not sealed */
	close(raw);
	CHECK(dd_group_active());
	fd = segment(pages, 1);
	CHECK(dd_group_publish(fd, &hashes[1], 1) == -EBADMSG);   /* another page's hash */
	CHECK(dd_group_publish(fd, hashes, 2) == -EINVAL);        /* the wrong size */
	close(fd);
	CHECK(dd_group_active());
	st = ts_stats(s);
	CHECK(st.segments == 1);

	/* NONE, then SEEN for another connection */
	t_fill(mem + (NPAGES + 1) * DD_PAGE, 77);
	uint64_t x = dd_hash_content(mem + (NPAGES + 1) * DD_PAGE);
	CHECK(dd_group_lookup(&x, 1, &a, &sg, &ns) == 0 && ns == 0 && a.kind == DD_GROUP_NONE);
	CHECK(dd_group_lookup(&x, 1, &a, &sg, &ns) == 0 && a.kind == DD_GROUP_NONE);  /* ours */
	kid = fork();
	CHECK(kid >= 0);
	if (!kid)
		_exit(child_seen(x));
	CHECK(ts_wait(kid) == 0);

	/* RELEASE; after the grace period the content cannot be found */
	uint64_t uid = (uint64_t)id;
	CHECK(dd_group_release(&uid, 1) == 0);
	TS_WAIT_STATS(s, st, st.segments == 0);
	CHECK(st.holds == 0 && st.pages == 0);
	CHECK(dd_group_lookup(hashes, 1, &a, &sg, &ns) == 0 && ns == 0 && a.kind == DD_GROUP_NONE);

	/* a lookup's hold: released by the connection's end */
	fd = segment(pages, NPAGES);
	id = dd_group_publish(fd, hashes, NPAGES);
	close(fd);
	CHECK(id > 0);
	kid = fork();
	CHECK(kid >= 0);
	if (!kid)   /* the first child offered the last hash */
		_exit(child_lookup(DD_GROUP_SEEN));
	CHECK(ts_wait(kid) == 0);
	uid = (uint64_t)id;
	st = ts_stats(s);
	CHECK(st.holds == 1);   /* ours; the child's went with its connection */
	dd_group_leave();
	CHECK(!dd_group_active());
	CHECK(dd_group_lookup(hashes, 1, &a, &sg, &ns) == -ENOTCONN);
	TS_WAIT_STATS(s, st, st.segments == 0 && st.members == 1);
	member_dies_child_holds(s);
	same_content_twice(s);
	close(s);

	race();
	program_closes();
	lifetime(argv[1]);
	observer(argv[1]);
	systemd_socket(argv[1]);
	full_store(argv[1]);
	printf("PASS: publish/lookup, NONE/SEEN, release and grace, refusals, names, race, "
	       "a closed connection, a dead member's holds, idle exit, an observer, stale sockets, "
	       "socket activation, a full store, one content published twice\n");
	return T_PASS;
}
