/* SPDX-License-Identifier: MIT */
/*
 * group.c - the member's side of a sharing group (group.h): the connection
 * to the group's helper (tools/dedup-share.c), the protocol of
 * share_proto.h, and the sealed segments a member publishes or receives.
 * docs/sharing.md sections 4, 5, 10 and 13.
 *
 * Owns one descriptor, the connection: a SOCK_SEQPACKET unix socket in the
 * user's private directory (<private dir>/share/NAME.sock, publish.h),
 * adopted above the floor and tagged (fds.c) before it connects, checked
 * with dd_fd_intact() before every use. A program that closes it (a raw
 * close_range()) makes us leave the group quietly: one line, and nothing
 * is ever written to the number, which may be the program's file by then.
 *
 * Joining: connect; if nobody listens (ENOENT, ECONNREFUSED), take the
 * group's flock (NAME.lock), try again, and if still nobody listens,
 * spawn the helper, release the lock and retry for up to a second. The
 * lock only keeps two members from spawning two helpers at once; the
 * helper takes it itself around its own check-unlink-bind, and exits
 * quietly if it finds another helper already serving the name. So the
 * member must not hold it while it waits for the helper to listen. The
 * helper is started with --background: it forks and the process we
 * spawned exits at once, so we reap our own child (waitpid) and the
 * helper is nobody's child; a program that reaps every child itself
 * (SIGCHLD handler) may see that one exit.
 *
 * Trust: the helper's uid (SO_PEERCRED, taken at its listen()) must be
 * ours; every message is checked (dd_share_msg_check), every descriptor
 * received is checked as a segment (dd_group_segment_check: memfd, pages,
 * all four seals) and moved above the floor; anything else received is a
 * protocol error: every received descriptor is closed and we leave.
 *
 * Segment descriptors handed to the caller are dd_fd_place()d copies above
 * the floor, tagged, close-on-exec, not in fds.c's table (a lookup can
 * name up to 253 of them, the table has 16 slots): the caller uses and
 * closes them within its step, and checks them with dd_fd_intact() if it
 * keeps one across a call into the program.
 *
 * Locking: none of its own. The engine calls every function under
 * eng.lock (group.h); dd_group_atfork_child() runs in a fork()ed child
 * before any other thread exists. Rules of internal.h: no malloc, no stdio
 * streams (posix_spawn without file actions does not allocate).
 */
#include <dlfcn.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "publish.h"
#include "share_proto.h"

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif

#define SPAWN_WAIT_MS 1000   /* for the helper we started to listen */

extern char **environ;

static struct {
	int fd;                               /* the connection; -1: no group */
	uid_t uid;                            /* our euid when we joined */
	char name[DD_GROUP_NAME_MAX + 1];     /* the group's, also when not joined */
} grp = { .fd = -1 };

bool dd_group_name_ok(const char *name)
{
	return dd_share_name_ok(name);
}

bool dd_group_active(void)
{
	return grp.fd >= 0;
}

void dd_group_leave(void)
{
	if (grp.fd >= 0)
		dd_fd_close(&grp.fd);   /* closes only if the number is still ours */
	grp.fd = -1;
}

void dd_group_atfork_child(void)
{
	/* The helper must not see the parent's holds kept by a child, nor a
	 * child speak for its parent: close our copy, say nothing. */
	dd_group_leave();
}

/* Leave the group after a protocol or socket error; err is returned. */
_Static_assert(DD_GS_LAST == 7, "DEDUP_TEST_SHARE_DIE's range in options.h");

void dd_group_test_die(enum dd_group_step step)
{
	if (dd_unlikely(dd_opt.test_share_die == (uint64_t)step))
		kill(getpid(), SIGKILL);
}

static int fail(int err, const char *why)
{
	dd_warn("sharing group %s: %s (%s); leaving the group, merged pages stay merged",
		grp.name, why, strerror(err < 0 ? -err : err));
	dd_group_leave();
	return err;
}

/*
 * The connection, still ours, and we still who joined? If the program
 * closed it, leave quietly. If it changed its uid without us in between
 * (an API program's setuid(); a preloaded one leaves before, dd_creds_sync),
 * leave: the helper took our uid at connect (SO_PEERCRED) and would go on
 * sharing with a process that is no longer the group's user. Checked before
 * every message and at every engine step (dd_group_check): the engine
 * thread's euid, which glibc's set*id() changes with every thread's.
 */
static bool conn_ok(void)
{
	if (grp.fd < 0)
		return false;
	if (!dd_fd_intact(grp.fd)) {
		dd_warn("sharing group %s: the program closed our connection; leaving the group",
			grp.name);
		dd_fd_forget(&grp.fd);   /* the number is not ours: never close it */
		grp.fd = -1;
		return false;
	}
	if (geteuid() != grp.uid) {
		dd_warn("sharing group %s: the process changed its uid (%u to %u); leaving the "
			"group, merged pages stay merged", grp.name, (unsigned)grp.uid,
			(unsigned)geteuid());
		dd_group_leave();
		return false;
	}
	return true;
}

void dd_group_check(void)
{
	if (grp.fd >= 0)
		(void)conn_ok();
}

/* One message: hdr (len bytes) then arr (alen bytes), with pass (>= 0)
 * attached. 0 or -errno. */
static int send_msg(const void *hdr, size_t len, const void *arr, size_t alen, int pass)
{
	struct iovec iov[2] = { { (void *)hdr, len }, { (void *)arr, alen } };
	union dd_share_cmsg c;
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = alen ? 2 : 1 };
	ssize_t r;

	dd_share_put_fds(&mh, &c, &pass, pass >= 0);
	do
		r = sendmsg(grp.fd, &mh, MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return errno == EAGAIN ? -ETIMEDOUT : -errno;
	return (size_t)r == len + alen ? 0 : -EPROTO;
}

/* Why send_msg() failed, for fail(). */
static const char *send_failed(int r)
{
	return r == -EPIPE || r == -ECONNRESET ? "the helper is gone" : "cannot send to the helper";
}

/* The largest answer, aligned for its structs. */
union reply {
	struct dd_share_hdr h;
	struct dd_share_hello hello;
	struct dd_share_answer answer;
	struct dd_share_id id;
	struct dd_share_error error;
	struct dd_share_stats stats;
	char buf[DD_SHARE_ANSWER_MAX];
};

/*
 * Receive one answer into r, its descriptors into fds[] (*nfds of them,
 * close-on-exec). Its type, checked well-formed (dd_share_msg_check), or
 * -errno; on any error no descriptor stays open.
 */
static int recv_msg(union reply *r, int *fds, size_t *nfds)
{
	union dd_share_cmsg c;
	struct iovec iov = { r, sizeof(*r) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = c.buf,
			     .msg_controllen = sizeof(c.buf) };
	ssize_t len;

	*nfds = 0;
	do
		len = recvmsg(grp.fd, &mh, MSG_CMSG_CLOEXEC);
	while (len < 0 && errno == EINTR);
	if (len < 0)
		return errno == EAGAIN ? -ETIMEDOUT : -errno;
	bool ok = dd_share_take_fds(&mh, fds, nfds);
	int type = len ? dd_share_msg_check(r, (size_t)len, *nfds) : -ECONNRESET;
	if (!ok || type < 0) {
		dd_share_close_fds(fds, *nfds);
		*nfds = 0;
		/* garbage, another version, or the helper went away */
		return !len ? -ECONNRESET : type == -EPROTONOSUPPORT ? type : -EPROTO;
	}
	return type;
}

/* Send a request and receive its answer, which must be of type want (or
 * ERROR when error_ok). Its type, or -errno after leaving the group. */
static int transact(const void *hdr, size_t len, const void *arr, size_t alen, int pass,
		    union reply *r, int *fds, size_t *nfds, int want, bool error_ok)
{
	int ret;

	*nfds = 0;
	if (!conn_ok())
		return -ENOTCONN;
	ret = send_msg(hdr, len, arr, alen, pass);
	if (ret < 0)
		return fail(ret, send_failed(ret));
	if (pass >= 0)
		dd_group_test_die(DD_GS_PUBLISH_SENT);
	ret = recv_msg(r, fds, nfds);
	if (ret < 0)
		return fail(ret, ret == -EPROTO ? "malformed message from the helper"
			    : ret == -EPROTONOSUPPORT ? "the helper speaks another protocol version "
							"(an older one exits when idle)"
			    : ret == -ECONNRESET ? "the helper is gone"
			    : "no answer from the helper");
	if (ret != want && !(error_ok && ret == DD_SHARE_ERROR)) {
		dd_share_close_fds(fds, *nfds);
		*nfds = 0;
		return fail(-EPROTO, "unexpected message from the helper");
	}
	return ret;
}

/* ---- joining ---- */

/* <private dir>/share into buf (created 0700 and checked); false if none. */
static bool share_dir(char *buf, size_t size)
{
	char base[PATH_MAX - 16];
	int n;

	if (!dd_pub_private_dir(base, sizeof(base)))
		return false;
	n = snprintf(buf, size, "%s/share", base);
	return n > 0 && (size_t)n < size && dd_pub_dir_usable(buf, 0700, true);
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* A fresh socket adopted as grp.fd, connected to path: 0 or -errno (then
 * grp.fd is -1). */
static int try_connect(const struct sockaddr_un *sa)
{
	struct timeval tv = { DD_GROUP_TIMEOUT_MS / 1000, (DD_GROUP_TIMEOUT_MS % 1000) * 1000 };
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0), r;

	if (s < 0)
		return -errno;
	r = dd_fd_adopt(&grp.fd, s);   /* above the floor before anything else */
	if (r < 0)
		return r;
	if (setsockopt(grp.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    setsockopt(grp.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0) {
		r = -errno;
		dd_group_leave();
		return r;
	}
	do
		r = connect(grp.fd, (const struct sockaddr *)sa, sizeof(*sa));
	while (r < 0 && errno == EINTR);
	if (r < 0) {
		r = -errno;
		dd_group_leave();
		return r;
	}
	return 0;
}

static bool nobody_listens(int r)
{
	return r == -ENOENT || r == -ECONNREFUSED;
}

/* The helper binary into buf: $DEDUP_SHARE_HELPER, else next to the
 * library (the build tree: build/libdedup.so and build/tools/dedup-share;
 * installed: lib/ or lib/<multiarch>/, and bin/ or libexec/). False: search
 * PATH. */
static bool find_helper(char *buf, size_t size)
{
	static const char *const rel[] = { "tools/dedup-share", "../tools/dedup-share",
					   "dedup-share", "../bin/dedup-share",
					   "../../bin/dedup-share",   /* lib/<multiarch>/ */
					   "../libexec/dedup-share" };
	const char *env = secure_getenv("DEDUP_SHARE_HELPER");
	Dl_info di;

	if (env && *env) {
		snprintf(buf, size, "%s", env);
		return true;
	}
	if (!dladdr((void *)dd_group_join, &di) || !di.dli_fname)
		return false;
	const char *slash = strrchr(di.dli_fname, '/');
	if (!slash)
		return false;
	for (size_t i = 0; i < DD_ARRAY_SIZE(rel); i++) {
		int n = snprintf(buf, size, "%.*s/%s", (int)(slash - di.dli_fname), di.dli_fname,
				 rel[i]);
		if (n > 0 && (size_t)n < size && access(buf, X_OK) == 0)
			return true;
	}
	return false;
}

/* Our environment without what must not reach the helper: LD_PRELOAD (it
 * would run libdedup in the helper), DEDUP_* (our options), LISTEN_*
 * (systemd's, meant for us). At most max - 1 entries are kept. */
static void helper_env(char **out, size_t max)
{
	size_t n = 0;

	for (char **e = environ; e && *e && n + 1 < max; e++)
		if (strncmp(*e, "LD_PRELOAD=", 11) && strncmp(*e, "DEDUP_", 6) &&
		    strncmp(*e, "LISTEN_", 7))
			out[n++] = *e;
	out[n] = NULL;
}

/* Start dedup-share for the group in dir; 0 or -errno. */
static int spawn_helper(const char *dir)
{
	char path[PATH_MAX], *envp[512];
	char *argv[] = { path, "--name", grp.name, "--dir", (char *)dir, "--background", NULL };
	posix_spawnattr_t at;
	sigset_t none, all;
	pid_t pid;
	int r, st;
	bool found = find_helper(path, sizeof(path));

	if (!found)
		snprintf(path, sizeof(path), "dedup-share");
	helper_env(envp, DD_ARRAY_SIZE(envp));
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawnattr_init(&at);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setsigdefault(&at, &all);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	r = found ? posix_spawn(&pid, path, NULL, &at, argv, envp)
		  : posix_spawnp(&pid, path, NULL, &at, argv, envp);
	posix_spawnattr_destroy(&at);
	if (r) {
		dd_warn("sharing group %s: cannot start %s (%s); set DEDUP_SHARE_HELPER",
			grp.name, path, strerror(r));
		return -r;
	}
	/* --background: the process we started forks the helper and exits at
	 * once; reap it. Never a blocking waitpid(): with SIGCHLD ignored by
	 * the program it would wait for every child the program has. */
	for (int waited = 0; waited < SPAWN_WAIT_MS; waited++) {
		r = waitpid(pid, &st, WNOHANG);
		if (r == pid || (r < 0 && errno != EINTR))
			break;   /* reaped, or by the program (ECHILD) */
		sleep_ms(1);
	}
	return 0;
}

/* The helper runs as our uid (SO_PEERCRED of its listen()), and speaks our
 * protocol version and page size. 0 or -errno (after leaving). */
static int hello(void)
{
	struct ucred uc;
	socklen_t ul = sizeof(uc);
	struct dd_share_hello m = { .page_size = DD_PAGE, .pid = (int32_t)getpid() };
	union reply r;
	int fds[DD_SHARE_MAX_FDS];
	size_t nfds;

	if (getsockopt(grp.fd, SOL_SOCKET, SO_PEERCRED, &uc, &ul) < 0)
		return fail(-errno, "cannot ask who the helper is");
	grp.uid = geteuid();
	if (uc.uid != grp.uid)
		return fail(-EACCES, "the helper runs as another user");
	dd_share_hdr_init(&m.h, DD_SHARE_HELLO, 0);
	int t = transact(&m, sizeof(m), NULL, 0, -1, &r, fds, &nfds, DD_SHARE_WELCOME, false);
	if (t < 0)
		return t;
	if (r.hello.page_size != DD_PAGE)
		return fail(-EPROTO, "the helper has another page size");
	return 0;
}

int dd_group_join(const char *name)
{
	char dir[PATH_MAX - 128], lock[PATH_MAX];
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int r, lk;

	if (grp.fd >= 0)
		return name && !strcmp(name, grp.name) ? 0 : -EBUSY;
	if (!dd_group_name_ok(name)) {
		dd_warn("sharing group name \"%.80s\" refused: use 1 to %d of A-Z a-z 0-9 _ . -, "
			"not starting with '.'; running without the group",
			name ? name : "", DD_GROUP_NAME_MAX);
		return -EINVAL;
	}
	snprintf(grp.name, sizeof(grp.name), "%s", name);
	if (!share_dir(dir, sizeof(dir))) {
		dd_warn("sharing group %s: no private directory for its socket "
			"($XDG_RUNTIME_DIR/libdedup/share or /tmp/libdedup-%u/share)",
			name, (unsigned)geteuid());
		return -EACCES;
	}
	r = snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/%s.sock", dir, name);
	if (r < 0 || (size_t)r >= sizeof(sa.sun_path)) {
		dd_warn("sharing group %s: socket path %s/%s.sock too long", name, dir, name);
		return -ENAMETOOLONG;
	}
	snprintf(lock, sizeof(lock), "%s/%s.lock", dir, name);

	r = try_connect(&sa);
	if (nobody_listens(r)) {
		lk = dd_fd_create_temp(lock, O_RDWR | O_CREAT | O_NOFOLLOW, 0600);
		if (lk < 0) {
			dd_warn("sharing group %s: cannot open %s (%s)", name, lock, strerror(-lk));
			return lk;
		}
		/* Held only around a check and a spawn, or a bind: a wait
		 * longer than that is a stuck holder, and going on without
		 * it costs at most a helper that finds another serving and
		 * exits. A second for the lock and one for the spawn keep a
		 * join within DD_GROUP_TIMEOUT_MS, but for the HELLO to a
		 * helper that accepts and never answers. */
		for (int waited = 0; flock(lk, LOCK_EX | LOCK_NB) < 0 &&
				     (errno == EWOULDBLOCK || errno == EINTR) &&
				     waited < SPAWN_WAIT_MS; waited += 10)
			sleep_ms(10);
		r = try_connect(&sa);
		if (nobody_listens(r)) {
			dd_group_test_die(DD_GS_LOCKED);
			r = spawn_helper(dir);
		}
		dd_fd_close_temp(lk);   /* the helper takes it to bind */
		if (!r && grp.fd < 0) {
			r = -ECONNREFUSED;
			for (int waited = 0; nobody_listens(r) && waited < SPAWN_WAIT_MS;
			     waited += 10) {
				r = try_connect(&sa);
				if (nobody_listens(r))
					sleep_ms(10);
			}
		}
	}
	if (r < 0) {
		dd_warn("sharing group %s: cannot reach its helper at %s (%s); running without "
			"the group", name, sa.sun_path, strerror(-r));
		return r;
	}
	r = hello();
	if (r < 0)
		return r;
	dd_info("sharing group %s joined (%s)", name, sa.sun_path);
	return 0;
}

/* ---- segments ---- */

int dd_group_segment_check(int fd)
{
	return dd_share_segment_check(fd, DD_PAGE);
}

int dd_group_segment_new(const void *const *pages, size_t n)
{
	char name[sizeof(DD_SHARE_MEMFD_PREFIX) + DD_GROUP_NAME_MAX];
	int raw, fd, e;

	if (!n || n > DD_GROUP_MAX_SEG_PAGES)
		return -EINVAL;
	snprintf(name, sizeof(name), DD_SHARE_MEMFD_PREFIX "%s", grp.name);
	raw = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL);
	if (raw < 0 && errno == EINVAL)   /* before 6.3 */
		raw = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (raw < 0)
		return -errno;
	fd = dd_fd_place(raw);   /* never at the program's low numbers for long */
	dd_sys_close(raw);
	if (fd < 0)
		return fd;
	if (ftruncate(fd, (off_t)(n * DD_PAGE)) < 0)
		goto fail;
	/* pwrite, in order: under a memcg limit it fails with ENOMEM where a
	 * store through a mapping would fault into the OOM killer */
	for (size_t i = 0; i < n; i++) {
		size_t done = 0;
		while (done < DD_PAGE) {
			ssize_t w = pwrite(fd, (const char *)pages[i] + done, DD_PAGE - done,
					   (off_t)(i * DD_PAGE + done));
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				if (w == 0)
					errno = EIO;
				goto fail;
			}
			done += (size_t)w;
		}
	}
	dd_group_test_die(DD_GS_WRITTEN);
	if (fcntl(fd, F_ADD_SEALS, DD_SHARE_SEALS) < 0)
		goto fail;
	dd_group_test_die(DD_GS_SEALED);
	return fd;
fail:
	e = errno;
	dd_sys_close(fd);
	return -e;
}

/* ---- requests ---- */

int dd_group_lookup(const uint64_t *hashes, size_t n, struct dd_group_answer *ans,
		    struct dd_group_seg *segs, size_t *nsegs)
{
	struct dd_share_hdr h;
	union reply r;
	int fds[DD_SHARE_MAX_FDS];
	size_t nfds, i;
	int t;

	*nsegs = 0;
	if (!n)
		return 0;
	if (n > DD_GROUP_MAX_LOOKUP)
		return -EINVAL;
	for (i = 0; i < n; i++)
		if (!hashes[i])
			return -EINVAL;
	dd_share_hdr_init(&h, DD_SHARE_LOOKUP, (uint32_t)n);
	t = transact(&h, sizeof(h), hashes, n * sizeof(*hashes), -1, &r, fds, &nfds,
		     DD_SHARE_ANSWER, false);
	if (t < 0)
		return t;

	/* the answer: segment table, then one entry per hash */
	const struct dd_share_seg *st = (const void *)(&r.answer + 1);
	uint32_t ns = r.answer.nsegs;
	const struct dd_share_entry *en = (const void *)(st + ns);
	const char *why = NULL;
	if (r.h.count != n)
		why = "the helper answered for another number of hashes";
	for (i = 0; !why && i < ns; i++) {
		int np = dd_group_segment_check(fds[i]);
		if (!st[i].id || st[i].reserved || np <= 0 || (uint32_t)np != st[i].npages)
			why = np < 0 ? "the helper sent a descriptor that is not a sealed segment"
				     : "the helper sent a segment unlike its description";
	}
	for (i = 0; !why && i < n; i++) {
		if (en[i].reserved || en[i].kind > DD_GROUP_SEEN ||
		    (en[i].kind == DD_GROUP_FOUND &&
		     (en[i].seg >= ns || en[i].page >= st[en[i].seg].npages)) ||
		    (en[i].kind != DD_GROUP_FOUND && (en[i].seg || en[i].page)))
			why = "malformed answer entry from the helper";
	}
	/* above the floor: the received numbers are the lowest free ones */
	for (i = 0; !why && i < ns; i++) {
		int moved = dd_fd_place(fds[i]);
		if (moved < 0) {
			why = "no descriptor left for a segment";
			break;
		}
		dd_sys_close(fds[i]);
		fds[i] = moved;
	}
	if (why) {
		dd_share_close_fds(fds, nfds);
		return fail(-EPROTO, why);
	}
	for (i = 0; i < ns; i++)
		segs[i] = (struct dd_group_seg){ .id = st[i].id, .fd = fds[i],
						 .npages = st[i].npages };
	for (i = 0; i < n; i++)
		ans[i] = (struct dd_group_answer){ .kind = (uint8_t)en[i].kind, .seg = en[i].seg,
						   .page = en[i].page };
	*nsegs = ns;
	return 0;
}

int64_t dd_group_publish(int fd, const uint64_t *hashes, size_t n)
{
	struct dd_share_hdr h;
	union reply r;
	int fds[DD_SHARE_MAX_FDS];
	size_t nfds;
	int t;

	if (!n || n > DD_GROUP_MAX_SEG_PAGES)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (!hashes[i])
			return -EINVAL;
	dd_share_hdr_init(&h, DD_SHARE_PUBLISH, (uint32_t)n);
	t = transact(&h, sizeof(h), hashes, n * sizeof(*hashes), fd, &r, fds, &nfds,
		     DD_SHARE_PUBLISHED, true);
	if (t < 0)
		return t;
	if (t == DD_SHARE_ERROR) {
		/* refused, and said why: we stay in the group */
		if (r.error.code <= 0 || r.error.code >= 4096 || r.error.reserved)
			return fail(-EPROTO, "malformed error from the helper");
		return -r.error.code;
	}
	if (!r.id.id)
		return fail(-EPROTO, "segment id 0 from the helper");
	return (int64_t)r.id.id;
}

int dd_group_release(const uint64_t *ids, size_t n)
{
	while (n) {
		size_t k = n < DD_SHARE_MAX_RELEASE ? n : DD_SHARE_MAX_RELEASE;
		struct dd_share_hdr h;
		int r;

		if (!conn_ok())
			return -ENOTCONN;
		dd_share_hdr_init(&h, DD_SHARE_RELEASE, (uint32_t)k);
		r = send_msg(&h, sizeof(h), ids, k * sizeof(*ids), -1);
		if (r < 0)
			return fail(r, send_failed(r));
		dd_group_test_die(DD_GS_RELEASE_SENT);
		ids += k;
		n -= k;
	}
	return 0;
}
