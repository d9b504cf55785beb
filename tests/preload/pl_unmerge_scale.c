/* SPDX-License-Identifier: MIT */
/*
 * pl_unmerge_scale MODE [RUNS] - the preload library's own ways of turning
 * many isolated merged runs back into anonymous memory take time linear in
 * their number, keep every page's content, and leave what anonymous memory
 * would be:
 *   wipeonfork  madvise(MADV_WIPEONFORK) over the range (refused on a merged
 *               page: the library unmerges first); then one mapping, and a
 *               fork()ed child reads zeros there;
 *   uffd        the program registers the range with a userfaultfd of its
 *               own (the library gets out of the way and unmerges); then one
 *               mapping;
 *   mremap      mremap() growing the range with MREMAP_MAYMOVE (several
 *               VMAs: the library moves them piece by piece); content
 *               moved, tail zeros;
 *   mlock       mlock() of the range; content kept, all resident;
 *   release     a fork()ed child gives up its guard (unshare(CLONE_NEWUSER)
 *               needs one thread): its merged pages become anonymous memory,
 *               content kept. Not one mapping: in a child the kernel merges
 *               nothing into mappings inherited from the parent
 *               (probe_child_no_merge), so no more mappings than before.
 * RUNS (default 4096) isolated duplicates, one every other page. A watchdog
 * fails the test if the operation has not returned after
 * DEDUP_TEST_UNMERGE_CAP seconds (default 60): a hang guard, no timing is
 * asserted; the time is printed.
 */
#include "pl.h"

#include <sched.h>
#include <stdatomic.h>
#include <sys/resource.h>

static size_t runs = 4096, npages;
static char *buf;

static void want(char *page, size_t i)
{
	if (i % 2)
		t_fill(page, 5000000 + i);
	else
		t_fill(page, 77 + (i / 2) % 8);
}

static int vmas_over(uintptr_t lo, uintptr_t hi, int *files)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	int n = 0;
	CHECK(f != NULL);
	*files = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx", &a, &b) != 2 || a >= hi || b <= lo)
			continue;
		n++;
		if (strstr(line, "memfd:"))
			(*files)++;
	}
	fclose(f);
	return n;
}

static bool check_all(const char *p, size_t n)
{
	char page[T_PAGE];
	size_t bad = 0;
	for (size_t i = 0; i < n; i++) {
		want(page, i);
		if (memcmp(p + i * T_PAGE, page, T_PAGE) && bad++ < 5)
			fprintf(stderr, "page %zu reads wrong\n", i);
	}
	return bad == 0;
}

static double cap;
static _Atomic int done;
static const char *mode;

static void *watchdog(void *arg)
{
	(void)arg;
	double t0 = t_now();
	while (!atomic_load(&done)) {
		if (t_now() - t0 > cap) {
			fprintf(stderr, "FAIL: %s has not returned after %.0f s (hang guard)\n", mode, cap);
			_exit(T_FAIL);
		}
		usleep(10000);
	}
	return NULL;
}

static pthread_t wd;
static double t0, cpu0, cpu;   /* cpu: the process's CPU seconds, start() to stop() */

/* CPU seconds of the process, every thread (the engine's too): a figure
 * that a busy machine disturbs less than the wall time. */
static double cpu_now(void)
{
	struct rusage ru;
	CHECK(getrusage(RUSAGE_SELF, &ru) == 0);
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void start(void)
{
	if (getenv("T_PAUSE")) {   /* time to attach a profiler to the hand-back */
		fprintf(stderr, "pid %d: pausing %s s\n", getpid(), getenv("T_PAUSE"));
		usleep((useconds_t)(atof(getenv("T_PAUSE")) * 1e6));
	}
	atomic_store(&done, 0);
	CHECK(pthread_create(&wd, NULL, watchdog, NULL) == 0);
	cpu0 = cpu_now();
	t0 = t_now();
}

static double stop(void)
{
	double t = t_now() - t0;
	cpu = cpu_now() - cpu0;
	atomic_store(&done, 1);
	pthread_join(wd, NULL);
	return t;
}

static void report(const char *what, double t, const char *p, size_t n)
{
	int files, v = vmas_over((uintptr_t)p, (uintptr_t)p + n * T_PAGE, &files);
	fprintf(stderr, "%s of %zu merged runs: %.3f s (%.1f us a run; CPU %.3f s, %.1f us a "
		"run); %d mappings over the range, %d of them merged pieces\n", what, runs, t,
		t * 1e6 / (double)runs, cpu, cpu * 1e6 / (double)runs, v, files);
}

static int one_anon_mapping(const char *p, size_t n)
{
	int files, v = vmas_over((uintptr_t)p, (uintptr_t)p + n * T_PAGE, &files);
	if (v != 1 || files) {
		fprintf(stderr, "FAIL: %d mappings (%d merged) cover the range, expected one "
			"anonymous mapping\n", v, files);
		return T_FAIL;
	}
	return T_PASS;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s wipeonfork|uffd|mremap|mlock|release [RUNS]\n", argv[0]);
		return T_FAIL;
	}
	mode = argv[1];
	if (argc > 2)
		runs = strtoul(argv[2], NULL, 0);
	const char *c = getenv("DEDUP_TEST_UNMERGE_CAP");
	cap = c ? atof(c) : 60;
	npages = 2 * runs;
	pl_need_uffd();
	(void)pl_stats();

	buf = mmap(NULL, npages * T_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(buf != MAP_FAILED);
	CHECK(madvise(buf, npages * T_PAGE, MADV_NOHUGEPAGE) == 0);
	for (size_t i = 0; i < npages; i++)
		want(buf + i * T_PAGE, i);
	double tm = t_now();
	pl_wait_merged(runs);
	int files, v = vmas_over((uintptr_t)buf, (uintptr_t)buf + npages * T_PAGE, &files);
	fprintf(stderr, "%s: %zu runs merged in %.2f s, %d mappings over the range\n", mode, runs,
		t_now() - tm, v);
	CHECK(files >= (int)runs * 9 / 10);

	if (!strcmp(mode, "wipeonfork")) {
		start();
		CHECK(madvise(buf, npages * T_PAGE, MADV_WIPEONFORK) == 0);
		report("MADV_WIPEONFORK", stop(), buf, npages);
		CHECK(check_all(buf, npages));
		pid_t pid = fork();
		CHECK(pid >= 0);
		if (pid == 0)
			_exit(pl_is_zero(buf, npages * T_PAGE) ? 0 : 3);
		int st;
		CHECK(waitpid(pid, &st, 0) == pid);
		if (!WIFEXITED(st) || WEXITSTATUS(st)) {
			fprintf(stderr, "FAIL: the child did not read zeros (status %#x)\n", st);
			return T_FAIL;
		}
		return one_anon_mapping(buf, npages);
	}
	if (!strcmp(mode, "uffd")) {
		int uffd = t_uffd_open(0, NULL);
		CHECK(uffd >= 0);
		start();
		CHECK(t_uffd_register(uffd, buf, npages * T_PAGE, UFFDIO_REGISTER_MODE_MISSING) == 0);
		report("the program's UFFDIO_REGISTER", stop(), buf, npages);
		CHECK(check_all(buf, npages));
		return one_anon_mapping(buf, npages);
	}
	if (!strcmp(mode, "mremap")) {
		start();
		char *q = mremap(buf, npages * T_PAGE, 2 * npages * T_PAGE, MREMAP_MAYMOVE);
		double t = stop();
		CHECK(q != MAP_FAILED);
		report("mremap", t, q, npages);
		CHECK(check_all(q, npages));
		CHECK(pl_is_zero(q + npages * T_PAGE, npages * T_PAGE));
		return T_PASS;
	}
	if (!strcmp(mode, "mlock")) {
		struct rlimit rl = { RLIM_INFINITY, RLIM_INFINITY };
		if (setrlimit(RLIMIT_MEMLOCK, &rl) < 0 &&
		    (getrlimit(RLIMIT_MEMLOCK, &rl) < 0 || rl.rlim_cur < npages * T_PAGE))
			t_skip("RLIMIT_MEMLOCK is below %zu bytes", npages * T_PAGE);
		start();
		CHECK(mlock(buf, npages * T_PAGE) == 0);
		report("mlock", stop(), buf, npages);
		CHECK(check_all(buf, npages));
		CHECK(t_rollup_kb("Locked:") >= (long)(npages * T_PAGE / 1024));
		return one_anon_mapping(buf, npages);
	}
	if (!strcmp(mode, "release")) {
		int before = v;
		pid_t pid = fork();
		CHECK(pid >= 0);
		if (pid == 0) {
			/* one thread of the program's own (the call needs that):
			 * the hang guard is an alarm, not a thread */
			alarm((unsigned)cap);
			cpu0 = cpu_now();
			double t1 = t_now();
			if (unshare(CLONE_NEWUSER) < 0) {
				fprintf(stderr, "unshare: %s\n", strerror(errno));
				_exit(T_FAIL);
			}
			double t = t_now() - t1;
			cpu = cpu_now() - cpu0;
			report("the child's release of its guard", t, buf, npages);
			if (!check_all(buf, npages))
				_exit(T_FAIL);
			int after = vmas_over((uintptr_t)buf, (uintptr_t)buf + npages * T_PAGE, &files);
			if (files || after > before) {
				fprintf(stderr, "FAIL: %d mappings (%d merged) after, %d before\n", after,
					files, before);
				_exit(T_FAIL);
			}
			_exit(T_PASS);
		}
		int st;
		CHECK(waitpid(pid, &st, 0) == pid);
		CHECK(check_all(buf, npages));
		return WIFEXITED(st) ? WEXITSTATUS(st) : T_FAIL;
	}
	fprintf(stderr, "unknown mode %s\n", mode);
	return T_FAIL;
}
