/* SPDX-License-Identifier: MIT */
/*
 * probe_peercred.c - who is at the other end of a unix socket, as the
 * kernel sees it (net/unix/af_unix.c: unix_listen() and
 * unix_stream_connect() record the credentials with init_peercred() and
 * copy_peercred(); sock_getsockopt() SO_PEERCRED / SO_PEERPIDFD).
 *
 *  1. On a connected SOCK_STREAM unix socket, SO_PEERCRED gives the
 *     accepting side the connecting process's pid, uid and gid, and gives
 *     the connecting side the pid, uid and gid of the process that called
 *     listen().
 *  2. (root only) The credentials are those of connect() time: a process
 *     that connects as uid 0 and then changes to uid 65534 is still uid 0
 *     to its peer. One that changes to 65534 first is seen as 65534.
 *  3. (root only) A filesystem socket in a 0700 directory of another user
 *     cannot be connected to (EACCES: the path lookup needs search
 *     permission); a socket in the abstract namespace can, by any uid: it
 *     has no permission check at all.
 *  4. SO_PEERPIDFD (Linux 6.5) gives a pidfd of the peer that becomes
 *     readable (POLLIN) when that process exits, even while another
 *     process still holds the socket.
 *
 * Why libdedup depends on it (docs/sharing.md, "Security" and "Crash
 * safety"): the helper admits a member only if SO_PEERCRED's uid is its
 * own, and a member talks to a helper only if the helper's uid is its own:
 * the kernel's word, never a message's. The socket lives in a 0700
 * directory of the user, never in the abstract namespace. A member that
 * changes uid must leave the group itself (fact 2). The helper learns that
 * a member died from its pidfd (fact 4), not only from the socket's EOF,
 * which a forked child holding the socket would delay.
 */
#include "pshare.h"

#include <poll.h>
#include <stddef.h>

#define NOBODY 65534

static struct sockaddr_un addr;
static socklen_t addr_len;

static struct ucred peer(int s)
{
	struct ucred c;
	socklen_t l = sizeof(c);
	CHECK(getsockopt(s, SOL_SOCKET, SO_PEERCRED, &c, &l) == 0 && l == sizeof(c));
	return c;
}

static int client(void)
{
	int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(c >= 0);
	if (connect(c, (struct sockaddr *)&addr, addr_len) < 0) {
		int e = errno;
		close(c);
		errno = e;
		return -1;
	}
	return c;
}

static void drop_to_nobody(void)
{
	CHECK(setresgid(NOBODY, NOBODY, NOBODY) == 0);
	CHECK(setresuid(NOBODY, NOBODY, NOBODY) == 0);
}

/* Modes of the client child. */
enum { C_PLAIN, C_DROP_BEFORE, C_DROP_AFTER, C_EXPECT_EACCES };

static int client_main(void *arg, int s)
{
	int mode = (int)(intptr_t)arg;
	pid_t server = getppid();

	if (mode == C_DROP_BEFORE || mode == C_EXPECT_EACCES)
		drop_to_nobody();
	int c = client();
	if (mode == C_EXPECT_EACCES) {
		CHECK(c < 0 && errno == EACCES);
		p_say(s, 'e');
		return T_PASS;
	}
	CHECK(c >= 0);
	struct ucred pc = peer(c);
	/* the listener's credentials, taken at listen() */
	CHECK(pc.pid == server);
	CHECK(pc.uid == (mode == C_PLAIN ? getuid() : 0));
	if (mode == C_DROP_AFTER)
		drop_to_nobody();
	CHECK(write(c, "x", 1) == 1);
	p_say(s, 'c');
	char b;
	CHECK(read(c, &b, 1) == 1);   /* the server is done with us */
	close(c);
	return T_PASS;
}

/* Accept one client forked in @mode; check what SO_PEERCRED says. */
static void one(int l, int mode, uid_t want_uid, gid_t want_gid)
{
	int s;
	pid_t pid = p_fork(client_main, (void *)(intptr_t)mode, &s);
	if (mode == C_EXPECT_EACCES) {
		CHECK(p_hear(s) == 'e');
		CHECK(p_wait(pid) == T_PASS);
		close(s);
		return;
	}
	int a = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	CHECK(a >= 0);
	CHECK(p_hear(s) == 'c');   /* it connected, changed uid if asked, wrote */
	struct ucred c = peer(a);
	printf("mode %d: SO_PEERCRED pid %d uid %u gid %u (child %d)\n", mode, (int)c.pid,
	       (unsigned)c.uid, (unsigned)c.gid, (int)pid);
	CHECK(c.pid == pid);
	CHECK(c.uid == want_uid && c.gid == want_gid);

	/* 4. the pidfd reports the exit */
	int pfd = -1;
	socklen_t pl = sizeof(pfd);
	bool have_pidfd = getsockopt(a, SOL_SOCKET, SO_PEERPIDFD, &pfd, &pl) == 0;
	if (!have_pidfd)
		printf("SO_PEERPIDFD: %s (fact 4 not checked)\n", strerror(errno));
	CHECK(write(a, "y", 1) == 1);
	CHECK(p_wait(pid) == T_PASS);
	if (have_pidfd) {
		struct pollfd p = { .fd = pfd, .events = POLLIN };
		CHECK(poll(&p, 1, t_cap_ms()) == 1 && (p.revents & POLLIN));
		close(pfd);
	}
	close(a);
	close(s);
}

int main(void)
{
	char dir[] = "/tmp/libdedup-probe-peercred-XXXXXX";
	CHECK(mkdtemp(dir) != NULL);   /* mode 0700 */
	struct stat st;
	CHECK(stat(dir, &st) == 0 && (st.st_mode & 0777) == 0700);
	addr.sun_family = AF_UNIX;
	snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/s", dir);
	addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(addr.sun_path) + 1);
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(l >= 0);
	CHECK(bind(l, (struct sockaddr *)&addr, addr_len) == 0);
	CHECK(listen(l, 8) == 0);

	/* 1. and 4. */
	one(l, C_PLAIN, getuid(), getgid());
	int ret = T_PASS;
	if (geteuid() != 0) {
		printf("not root: facts 2 and 3 not checked\n");
		goto out;
	}
	/* 2. */
	one(l, C_DROP_AFTER, 0, 0);
	one(l, C_EXPECT_EACCES, 0, 0);   /* 3: 0700 directory of root */
	/* 3, abstract: any uid connects, and is seen as what it is */
	close(l);
	unlink(addr.sun_path);
	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	int n = snprintf(addr.sun_path + 1, sizeof(addr.sun_path) - 1,
			 "libdedup-probe-peercred-%d", (int)getpid());
	addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
	l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(l >= 0);
	CHECK(bind(l, (struct sockaddr *)&addr, addr_len) == 0);
	CHECK(listen(l, 8) == 0);
	one(l, C_DROP_BEFORE, NOBODY, NOBODY);
	printf("an abstract socket of uid 0 accepted a connection from uid %d\n", NOBODY);
out:
	close(l);
	if (addr.sun_path[0])
		unlink(addr.sun_path);
	rmdir(dir);
	if (ret == T_PASS)
		printf("PASS: SO_PEERCRED is the connecting process%s\n",
		       geteuid() ? "" : " at connect() time; a 0700 directory keeps other uids "
				       "out, an abstract socket does not");
	return ret;
}
