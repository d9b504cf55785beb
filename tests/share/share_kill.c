/* SPDX-License-Identifier: MIT */
/*
 * share_kill.c - issue 13: SIGKILL across a sharing group, every member's
 * memory verified.
 *
 *   share_kill KILLS [MEMBERS [MiB]]
 *
 * MEMBERS processes (API mode, one group) hold MiB each: the same content
 * in all of them (page p holds pattern(p, 0)), no page repeated inside one,
 * so everything they merge is the group's, published by one of them. Each
 * member also writes: every few milliseconds it gives a random page a new
 * version (pattern(p, v), v its own count for the page, kept in memory
 * libdedup does not see), which breaks the page's sharing, and merges it
 * again only if another member happens to hold that version (rarely).
 *
 * The parent then kills, KILLS times, at random moments (0-150 ms apart):
 * mostly a member (SIGKILL, whatever it is doing: merging, publishing,
 * holding the group's lock file, writing), replaced by a new member with the
 * same content; every fifth time the group's helper (the members then merge
 * alone, with one line each, and the next new member starts a new helper).
 * After each kill every live member checks every page of its own against
 * the versions it wrote. A page that reads wrong fails the test: no member's
 * death, nor the helper's, may change what another member reads - the
 * kernel keeps a segment's pages for as long as anyone maps them.
 *
 * At the end the members shut down (unmerging: every page again its own)
 * and check once more; the helper, asked as an observer, must then let go
 * of every segment (its grace over); the helpers are stopped, and the
 * shared memory the group used (Shmem in /proc/meminfo) must go back: no
 * segment outlives the last process that maps it.
 */
#include "tshare.h"   /* first: tcommon.h */
#include "libdedup.h"

static size_t npages;

static uint64_t word(size_t p, uint32_t v, size_t i)
{
	return ((uint64_t)p * 0x9e3779b97f4a7c15ULL + (uint64_t)v * 0xc2b2ae3d27d4eb4fULL) ^ i;
}

static void put(char *b, size_t p, uint32_t v)
{
	uint64_t *w = (uint64_t *)(b + p * T_PAGE);
	for (size_t i = 0; i < T_PAGE / 8; i++)
		w[i] = word(p, v, i);
}

static size_t bad_pages(const char *b, const uint32_t *ver)
{
	size_t bad = 0;
	for (size_t p = 0; p < npages; p++) {
		const uint64_t *w = (const uint64_t *)(b + p * T_PAGE);
		for (size_t i = 0; i < T_PAGE / 8; i++)
			if (w[i] != word(p, ver[p], i)) {
				if (bad < 4)
					fprintf(stderr, "member %d: page %zu (version %u) reads wrong at word %zu\n",
						getpid(), p, ver[p], i);
				bad++;
				break;
			}
	}
	return bad;
}

/*
 * A member: 'v' verify (answers the count of bad pages), 'q' shut down,
 * verify, exit. Between commands it writes a page every 2 ms. The writer
 * and the checker are one thread: a check sees every write done.
 */
static int member(const char *group, int rfd, int wfd)
{
	struct dedup_config cfg = { .size = sizeof(cfg), .scan_interval_ms = 10,
				    .cpu_percent = 50, .share = group };
	size_t len = npages * T_PAGE;
	char *b = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint32_t *ver = calloc(npages, sizeof(*ver));   /* malloc: not registered */
	unsigned seed = (unsigned)getpid();

	CHECK(b != MAP_FAILED && ver);
	for (size_t p = 0; p < npages; p++)
		put(b, p, 0);
	CHECK(dedup_init(&cfg) == 0);
	CHECK(dedup_register(b, len) == 0);
	for (;;) {
		char cmd;
		uint64_t bad;
		ssize_t r = read(rfd, &cmd, 1);
		if (r == 0)
			return 0;   /* the parent is gone */
		if (r < 0 && errno == EAGAIN) {
			size_t p = (size_t)rand_r(&seed) % npages;
			put(b, p, ++ver[p]);
			usleep(2000);
			continue;
		}
		CHECK(r == 1);
		struct dedup_stats st = { .size = sizeof(st) };
		CHECK(dedup_stats(&st) == 0);
		if (cmd == 'q')
			dedup_shutdown();
		uint64_t ans[2] = { bad_pages(b, ver), st.group_pages };
		bad = ans[0];
		CHECK(write(wfd, ans, sizeof(ans)) == sizeof(ans));
		if (cmd == 'q')
			return bad ? T_FAIL : T_PASS;
	}
}

struct proc { pid_t pid; int to, from; };

static void start(struct proc *m, const char *group)
{
	int a[2], b[2];

	CHECK(pipe2(a, O_CLOEXEC) == 0 && pipe2(b, O_CLOEXEC) == 0);
	m->pid = fork();
	CHECK(m->pid >= 0);
	if (m->pid == 0) {
		ts_close_others(a[0], b[1]);
		CHECK(fcntl(a[0], F_SETFL, O_NONBLOCK) == 0);
		_exit(member(group, a[0], b[1]));
	}
	close(a[0]);
	close(b[1]);
	m->to = a[1];
	m->from = b[0];
}

static uint64_t group_seen;   /* group pages the members mapped, summed over checks */

/* The member's count of pages reading wrong. */
static uint64_t ask(struct proc *m, char cmd)
{
	uint64_t ans[2] = { ~0ULL, 0 };
	CHECK(write(m->to, &cmd, 1) == 1);
	CHECK(read(m->from, ans, sizeof(ans)) == sizeof(ans));
	group_seen += ans[1];
	return ans[0];
}

static void stop(struct proc *m, int sig)
{
	if (sig)
		kill(m->pid, sig);
	close(m->to);
	close(m->from);
	waitpid(m->pid, NULL, 0);
}

int main(int argc, char **argv)
{
	int kills = argc > 1 ? atoi(argv[1]) : 40;
	int n = argc > 2 ? atoi(argv[2]) : 4;
	size_t mib = argc > 3 ? (size_t)atoi(argv[3]) : 8;
	char dir[] = "/tmp/dedup-share-kill-XXXXXX", group[64];
	struct proc m[16];
	unsigned seed = (unsigned)getpid();
	uint64_t verified = 0;
	int member_kills = 0, helper_kills = 0, started = 0;

	CHECK(n >= 2 && n <= 16 && kills >= 0);
	if (!getenv("DEDUP_SHARE_HELPER"))
		t_skip("DEDUP_SHARE_HELPER not set");
	signal(SIGPIPE, SIG_IGN);
	npages = mib << 8;
	CHECK(mkdtemp(dir));
	setenv("XDG_RUNTIME_DIR", dir, 1);
	snprintf(group, sizeof(group), "kill-%d", getpid());
	long shm0 = ts_shmem_kib();

	for (int i = 0; i < n; i++, started++)
		start(&m[i], group);
	/* the group merging first (up to t_cap()): kills must hit merged members */
	double t1 = t_now();
	do {
		group_seen = 0;
		usleep(20000);
		for (int i = 0; i < n; i++)
			CHECK(ask(&m[i], 'v') == 0);
	} while (group_seen < (uint64_t)n * npages / 2 && t_now() - t1 < t_cap());
	CHECK(group_seen >= (uint64_t)n * npages / 2);
	group_seen = 0;
	for (int k = 0; k < kills; k++) {
		usleep((useconds_t)(rand_r(&seed) % 150000));
		pid_t hp[8];
		int nh = k % 5 == 2 ? ts_group_helpers(group, hp, 8) : 0;   /* the last kills are members' */
		if (nh) {
			for (int j = 0; j < nh; j++)
				kill(hp[j], SIGKILL);
			helper_kills += nh;
		} else {
			int v = rand_r(&seed) % n;
			stop(&m[v], SIGKILL);
			member_kills++;
			start(&m[v], group);
			started++;
		}
		for (int i = 0; i < n; i++) {
			uint64_t bad = ask(&m[i], 'v');
			if (bad) {
				fprintf(stderr, "kill %d: member %d has %llu pages reading wrong\n", k,
					(int)m[i].pid, (unsigned long long)bad);
				return T_FAIL;
			}
			verified += npages * T_PAGE;
		}
	}
	for (int i = 0; i < n; i++) {
		CHECK(ask(&m[i], 'q') == 0);
		verified += npages * T_PAGE;
		stop(&m[i], 0);
	}
	/* The helper lets go of every segment once no member holds it (after
	 * its grace): asked as an observer (share_query.h), it must come to
	 * 0 segments. A helper killed last may have left no socket: then
	 * there is nothing to ask. */
	char sock[600];
	uint64_t segs;
	snprintf(sock, sizeof(sock), "%s/libdedup/share/%s.sock", dir, group);
	int q = ts_segments_drain(sock, &segs);
	if (q == 0)
		printf("the helper holds %llu segments once the members are gone\n",
		       (unsigned long long)segs);
	if (q != 0)
		printf("no helper to ask (%s)\n", strerror(-q));
	CHECK(q != 0 || segs == 0);
	pid_t hp[8];
	int nh = ts_group_helpers(group, hp, 8);
	for (int j = 0; j < nh; j++)
		kill(hp[j], SIGKILL);   /* not our children: Shmem tells when they are gone */
	/* Every mapping and descriptor of every segment is gone: the kernel
	 * frees them. Wait for Shmem to come back near where it started (other
	 * programs on the machine use shared memory too: a generous margin,
	 * far below what the group published, n x MiB). */
	double t0 = t_now();
	long shm = ts_shmem_kib(), slack = (long)(mib << 10) / 2 + 4096;
	while (shm > shm0 + slack && t_now() - t0 < t_cap()) {
		usleep(100000);
		shm = ts_shmem_kib();
	}
	printf("%d members (%d started), %d member kills, %d helper kills, %.1f MiB verified "
	       "(%.0f%% of it mapping group pages); Shmem %ld -> %ld KiB\n", n, started, member_kills,
	       helper_kills, (double)verified / (1 << 20),
	       100.0 * (double)group_seen * T_PAGE / (double)verified, shm0, shm);
	CHECK(shm <= shm0 + slack);
	return T_PASS;
}
