/* SPDX-License-Identifier: MIT */
/*
 * test_share_fuzz - garbage at the helper (tools/dedup-share, argv[1]):
 * random bytes, a wrong magic or version, truncated and oversized
 * messages, counts out of range, requests before HELLO, descriptors
 * attached to messages that carry none (up to SCM_MAX_FD of them), a
 * PUBLISH with no descriptor or two, a pipe or a socket as a segment,
 * messages only the helper sends. Each bad message drops its connection
 * (or, for a well-formed PUBLISH of a bad segment, gets ERROR); the helper
 * stays up, keeps no descriptor it was sent, and goes on serving a
 * well-behaved member (group.c) throughout.
 */
#include "tshare.h"

#include <dirent.h>

#define NAME "fuzz"

static pid_t helper;
static uint64_t rng = 0x2545F4914F6CDD1DULL;

static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* Descriptors the helper has open. */
static int helper_fds(void)
{
	char path[64];
	int n = 0;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)helper);
	DIR *d = opendir(path);
	CHECK(d);
	for (struct dirent *e; (e = readdir(d));)
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

/* The well-behaved member: a segment of its own, found again. */
static void member_works(uint64_t seed)
{
	static char mem[2 * DD_PAGE] __attribute__((aligned(4096)));
	const void *pages[2];
	uint64_t hashes[2];
	struct dd_group_answer ans[2];
	struct dd_group_seg segs[2];
	size_t ns;

	CHECK(dd_group_active());
	ts_pages(mem, pages, hashes, 2, seed * 100);   /* no page of another call */
	int fd = dd_group_segment_new(pages, 2);
	CHECK(fd >= 0);
	int64_t id = dd_group_publish(fd, hashes, 2);
	close(fd);
	CHECK(id > 0);
	CHECK(dd_group_lookup(hashes, 2, ans, segs, &ns) == 0 && ns == 1);
	CHECK(ans[0].kind == DD_GROUP_FOUND && ans[1].kind == DD_GROUP_FOUND);
	CHECK(segs[0].id == (uint64_t)id);
	close(segs[0].fd);
	uint64_t u = (uint64_t)id;
	CHECK(dd_group_release(&u, 1) == 0);
	CHECK(kill(helper, 0) == 0);
}

/* Send msg on a fresh connection (after HELLO if hello) and expect the
 * helper to drop it. */
static void dropped(const char *what, bool hello, const void *msg, size_t len, const int *fds,
		    size_t nfds)
{
	int s = hello ? ts_hello(NAME, NULL) : ts_connect(NAME);

	CHECK(s >= 0);
	int r = ts_send(s, msg, len, fds, nfds);
	if (r < 0 && r != -EPIPE && r != -ECONNRESET) {
		fprintf(stderr, "%s: send: %s\n", what, strerror(-r));
		exit(T_FAIL);
	}
	if (!ts_closed_by_peer(s)) {
		fprintf(stderr, "%s: the helper did not drop the connection\n", what);
		exit(T_FAIL);
	}
	close(s);
}

/* A header of type and count followed by len - 16 bytes of pattern. */
static size_t msg(void *buf, unsigned type, uint32_t count, size_t len)
{
	struct dd_share_hdr *h = buf;

	memset(buf, 0, len);
	for (size_t i = sizeof(*h); i + 8 <= len; i += 8) {
		uint64_t v = next() | 1;
		memcpy((char *)buf + i, &v, 8);
	}
	dd_share_hdr_init(h, type, count);
	return len;
}

int main(int argc, char **argv)
{
	static union {
		struct dd_share_hdr h;
		struct dd_share_hello hello;
		char buf[DD_SHARE_MSG_MAX + 4096];
	} m;
	int pipefd[2], many[DD_SHARE_MAX_FDS];

	ts_setup(argc, argv);
	CHECK(dd_group_join(NAME) == 0);
	int st_sock = ts_hello(NAME, &helper);
	member_works(1);
	struct dd_share_stats st;
	TS_WAIT_STATS(st_sock, st, st.segments == 0);   /* after its grace */
	int base = helper_fds();

	CHECK(pipe(pipefd) == 0);
	for (size_t i = 0; i < DD_SHARE_MAX_FDS; i++)
		many[i] = pipefd[i % 2];

	/* random bytes, before and after HELLO, of many lengths */
	for (int i = 0; i < 200; i++) {
		size_t len = 1 + next() % (i < 100 ? 64 : sizeof(m.buf));
		for (size_t k = 0; k < len; k++)
			m.buf[k] = (char)next();
		dropped("random", i & 1, m.buf, len, NULL, 0);
	}
	member_works(2);

	/* a wrong magic, version, reserved field, type */
	size_t len = msg(&m, DD_SHARE_STATS, 0, sizeof(struct dd_share_hdr));
	m.h.magic ^= 1;
	dropped("magic", true, &m, len, NULL, 0);
	msg(&m, DD_SHARE_STATS, 0, len);
	m.h.version = DD_SHARE_VERSION + 1;
	dropped("version", true, &m, len, NULL, 0);
	msg(&m, DD_SHARE_STATS, 0, len);
	m.h.reserved = 1;
	dropped("reserved", true, &m, len, NULL, 0);
	msg(&m, 0, 0, len);
	dropped("type 0", true, &m, len, NULL, 0);
	msg(&m, DD_SHARE_TYPE_MAX + 1, 0, len);
	dropped("type max+1", true, &m, len, NULL, 0);

	/* a HELLO of another version: told so (in the helper's version),
	 * then dropped */
	{
		union { struct dd_share_error e; char buf[256]; } r;
		int rf[DD_SHARE_MAX_FDS];
		size_t nrf;
		int v = ts_connect(NAME);
		msg(&m.hello, DD_SHARE_HELLO, 0, sizeof(m.hello));
		m.hello.page_size = DD_PAGE;
		m.h.version = DD_SHARE_VERSION + 1;
		CHECK(ts_send(v, &m, sizeof(m.hello), NULL, 0) == 0);
		CHECK(ts_recv(v, &r, sizeof(r), rf, &nrf) == sizeof(r.e));
		CHECK(dd_share_msg_check(&r, sizeof(r.e), nrf) == DD_SHARE_ERROR);
		CHECK(r.e.code == EPROTONOSUPPORT);
		CHECK(ts_closed_by_peer(v));
		close(v);
	}

	/* truncated and oversized */
	len = msg(&m, DD_SHARE_LOOKUP, 5, sizeof(struct dd_share_hdr) + 4 * 8);
	dropped("truncated lookup", true, &m, len, NULL, 0);
	len = msg(&m, DD_SHARE_LOOKUP, 5, sizeof(struct dd_share_hdr) + 6 * 8);
	dropped("long lookup", true, &m, len, NULL, 0);
	dropped("half a header", true, &m, 7, NULL, 0);
	len = msg(&m, DD_SHARE_LOOKUP, DD_GROUP_MAX_LOOKUP + 1,
		  sizeof(struct dd_share_hdr) + (DD_GROUP_MAX_LOOKUP + 1) * 8);
	dropped("lookup count", true, &m, len, NULL, 0);
	len = msg(&m, DD_SHARE_LOOKUP, 0, sizeof(struct dd_share_hdr));
	dropped("lookup of none", true, &m, len, NULL, 0);
	len = msg(&m, DD_SHARE_LOOKUP, 0xffffffffu, sizeof(struct dd_share_hdr) + 8);
	dropped("lookup count 2^32-1", true, &m, len, NULL, 0);
	len = msg(&m, DD_SHARE_RELEASE, DD_SHARE_MAX_RELEASE + 1, sizeof(struct dd_share_hdr) + 8);
	dropped("release count", true, &m, len, NULL, 0);
	len = msg(&m, DD_SHARE_PUBLISH, 1, sizeof(m.buf));
	dropped("longer than any message", true, &m, len, &pipefd[0], 1);
	len = msg(&m, DD_SHARE_PUBLISH, DD_GROUP_MAX_SEG_PAGES + 1,
		  sizeof(struct dd_share_hdr) + (DD_GROUP_MAX_SEG_PAGES + 1) * 8);
	dropped("publish count", true, &m, len, &pipefd[0], 1);
	member_works(3);

	/* the order of things and descriptors where none belong */
	len = msg(&m, DD_SHARE_LOOKUP, 1, sizeof(struct dd_share_hdr) + 8);
	dropped("lookup before hello", false, &m, len, NULL, 0);
	msg(&m.hello, DD_SHARE_HELLO, 0, sizeof(m.hello));
	m.hello.page_size = DD_PAGE;
	dropped("second hello", true, &m, sizeof(m.hello), NULL, 0);
	m.hello.page_size = 65536;
	dropped("page size", false, &m, sizeof(m.hello), NULL, 0);
	m.hello.page_size = DD_PAGE;
	dropped("hello with a descriptor", false, &m, sizeof(m.hello), &pipefd[0], 1);
	len = msg(&m, DD_SHARE_LOOKUP, 1, sizeof(struct dd_share_hdr) + 8);
	dropped("lookup with 253 descriptors", true, &m, len, many, DD_SHARE_MAX_FDS);
	len = msg(&m, DD_SHARE_STATS, 0, sizeof(struct dd_share_hdr));
	dropped("stats with a descriptor", true, &m, len, &pipefd[1], 1);
	len = msg(&m, DD_SHARE_PUBLISH, 1, sizeof(struct dd_share_hdr) + 8);
	dropped("publish without a descriptor", true, &m, len, NULL, 0);
	dropped("publish with two", true, &m, len, pipefd, 2);
	len = msg(&m, DD_SHARE_ANSWER, 1, sizeof(struct dd_share_answer) +
					  sizeof(struct dd_share_entry));
	((struct dd_share_answer *)&m)->nsegs = 0;
	((struct dd_share_answer *)&m)->reserved = 0;
	dropped("an answer from a member", true, &m, len, NULL, 0);
	len = msg(&m, DD_SHARE_WELCOME, 0, sizeof(struct dd_share_hello));
	dropped("a welcome from a member", true, &m, len, NULL, 0);
	member_works(4);

	/* well-formed PUBLISHes of things that are not segments: ERROR, and
	 * the connection stays */
	int s = ts_hello(NAME, NULL);
	int sock[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sock) == 0);
	int bad[] = { pipefd[0], sock[0], open("/dev/null", O_RDONLY) };
	for (size_t i = 0; i < DD_ARRAY_SIZE(bad); i++) {
		union { struct dd_share_error e; char buf[256]; } r;
		int rf[DD_SHARE_MAX_FDS];
		size_t nrf;
		len = msg(&m, DD_SHARE_PUBLISH, 1, sizeof(struct dd_share_hdr) + 8);
		CHECK(ts_send(s, &m, len, &bad[i], 1) == 0);
		CHECK(ts_recv(s, &r, sizeof(r), rf, &nrf) == sizeof(r.e));
		CHECK(dd_share_msg_check(&r, sizeof(r.e), nrf) == DD_SHARE_ERROR && r.e.code > 0);
	}
	/* releasing what it never held is nothing */
	len = msg(&m, DD_SHARE_RELEASE, 3, sizeof(struct dd_share_hdr) + 3 * 8);
	CHECK(ts_send(s, &m, len, NULL, 0) == 0);
	st = ts_stats(s);
	CHECK(st.members >= 2);
	close(s);

	/* random well-framed messages after HELLO: whatever the helper makes
	 * of each, it survives and the member is served */
	for (int i = 0; i < 300; i++) {
		unsigned type = 1 + (unsigned)(next() % DD_SHARE_TYPE_MAX);
		uint32_t count = (uint32_t)(next() % 8);
		len = msg(&m, type, count, sizeof(struct dd_share_hdr) + (next() % 12) * 8);
		s = ts_hello(NAME, NULL);
		size_t nf = next() % 3;   /* none, one or two descriptors */
		ts_send(s, &m, len, pipefd, nf);
		close(s);
	}
	member_works(5);

	/* nothing it was sent stays open (dropped connections included) */
	TS_WAIT_STATS(st_sock, st, st.members == 2 && !st.segments && helper_fds() == base);
	printf("PASS: the helper dropped every garbage connection and kept serving\n");
	return T_PASS;
}
