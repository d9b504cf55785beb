/* SPDX-License-Identifier: MIT */
/*
 * probe_fork_child_file.c - facts about a MAP_PRIVATE memfd mapping (a
 * merged run) in a fork()ed child, whose parent registered it MINOR|MISSING
 * with a userfaultfd that has no UFFD_FEATURE_EVENT_FORK:
 *  1. the child's VMA is not registered any more: a new uffd of the child's
 *     own can register it (MINOR|MISSING) without EBUSY;
 *  2. fork() did not copy the PTEs of file pages the parent only mapped
 *     (no anon_vma): pagemap shows them not present in the child, while a
 *     VMA holding a copied-on-write page had its PTEs copied;
 *  3. MADV_POPULATE_READ before registering maps the shared page cache
 *     pages without copying them (no message on the next read);
 *  4. after registering, madvise(MADV_DONTNEED) by another thread raises
 *     UFFD_EVENT_REMOVE, and the next read of the page raises a MINOR fault
 *     (the cache still has the page); UFFDIO_COPY of zeros resolves it and
 *     the page then reads zeros, also for a page copied on write before;
 *  5. mremap() moving a registered piece raises UFFD_EVENT_REMAP and the
 *     moved range stays registered (a DONTNEED there raises REMOVE).
 *
 * Why libdedup depends on it (libdedup/src/child.c): a child of a merging
 * process must read zeros after discarding a merged page, as anonymous
 * memory would. Without fact 1 the child could not serve its own faults;
 * fact 2 is why the child populates before registering (every first read
 * would otherwise be a round trip to the guard thread); facts 4 and 5 are
 * the guard's whole protocol.
 */
#include "tcommon.h"
#include "uapi.h"

#include <poll.h>
#include <pthread.h>
#include <sys/wait.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

#define NP 8

static bool present(const void *p)
{
	uint64_t e = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);
	CHECK(fd >= 0);
	CHECK(pread(fd, &e, 8, (off_t)((uintptr_t)p / T_PAGE * 8)) == 8);
	close(fd);
	return (e >> 63) & 1;
}

/* Next message, waiting at most t_cap(); false on timeout. */
static bool next_msg(int uffd, struct uffd_msg *m)
{
	struct pollfd pfd = { .fd = uffd, .events = POLLIN };
	if (poll(&pfd, 1, t_cap_ms()) != 1)
		return false;
	return read(uffd, m, sizeof(*m)) == sizeof(*m);
}

struct job { int op; char *a, *b; size_t len; volatile int done; unsigned char seen; };

static void *job_main(void *p)
{
	struct job *j = p;
	if (j->op == 0)
		madvise(j->a, j->len, MADV_DONTNEED);
	else if (j->op == 1)
		j->seen = *(volatile unsigned char *)j->a;
	else
		mremap(j->a, j->len, j->len, MREMAP_MAYMOVE | MREMAP_FIXED, j->b);
	j->done = 1;
	return NULL;
}

static pthread_t start(struct job *j)
{
	pthread_t t;
	j->done = 0;
	CHECK(pthread_create(&t, NULL, job_main, j) == 0);
	return t;
}

static int child(char *run, char *cowed, char *spare)
{
	uint64_t got;
	int uffd = t_uffd_open(UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_REMAP |
			       UFFD_FEATURE_MINOR_SHMEM, &got);
	struct uffd_msg m;

	CHECK(uffd >= 0);
	/* fact 2 */
	CHECK(!present(run) && !present(run + 3 * T_PAGE));
	CHECK(present(cowed));
	/* fact 3 */
	CHECK(madvise(run, NP * T_PAGE, MADV_POPULATE_READ) == 0);
	CHECK(present(run + 3 * T_PAGE));
	/* fact 1 */
	struct uffdio_register r = { .range = { (uintptr_t)run, NP * T_PAGE },
				     .mode = UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_MISSING };
	CHECK(ioctl(uffd, UFFDIO_REGISTER, &r) == 0);
	r.range = (struct uffdio_range){ (uintptr_t)cowed, NP * T_PAGE };
	CHECK(ioctl(uffd, UFFDIO_REGISTER, &r) == 0);
	CHECK(run[3 * T_PAGE] == 'A' && cowed[0] == 'W' && cowed[T_PAGE] == 'A');
	struct pollfd pfd = { .fd = uffd, .events = POLLIN };
	CHECK(poll(&pfd, 1, 0) == 0);   /* populated: no fault */

	/* fact 4, on a shared page and on a copied-on-write one */
	char *pages[2] = { run + 3 * T_PAGE, cowed };
	for (int i = 0; i < 2; i++) {
		struct job d = { .op = 0, .a = pages[i], .len = T_PAGE };
		pthread_t t = start(&d);
		CHECK(next_msg(uffd, &m) && m.event == UFFD_EVENT_REMOVE &&
		      m.arg.remove.start == (uintptr_t)pages[i]);
		pthread_join(t, NULL);
		struct job rd = { .op = 1, .a = pages[i] };
		t = start(&rd);
		CHECK(next_msg(uffd, &m) && m.event == UFFD_EVENT_PAGEFAULT);
		CHECK(m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR);
		CHECK((m.arg.pagefault.address & ~(T_PAGE - 1)) == (uintptr_t)pages[i]);
		static char zeros[T_PAGE] __attribute__((aligned(4096)));
		struct uffdio_copy c = { .dst = (uintptr_t)pages[i], .src = (uintptr_t)zeros,
					 .len = T_PAGE };
		CHECK(ioctl(uffd, UFFDIO_COPY, &c) == 0);
		pthread_join(t, NULL);
		CHECK(rd.seen == 0 && pages[i][100] == 0);
	}
	CHECK(run[4 * T_PAGE] == 'A');

	/* fact 5 */
	struct job mv = { .op = 2, .a = run, .b = spare, .len = NP * T_PAGE };
	pthread_t t = start(&mv);
	CHECK(next_msg(uffd, &m) && m.event == UFFD_EVENT_REMAP);
	CHECK(m.arg.remap.from == (uintptr_t)run && m.arg.remap.to == (uintptr_t)spare);
	pthread_join(t, NULL);
	struct job d = { .op = 0, .a = spare + 5 * T_PAGE, .len = T_PAGE };
	t = start(&d);
	CHECK(next_msg(uffd, &m) && m.event == UFFD_EVENT_REMOVE &&
	      m.arg.remove.start == (uintptr_t)spare + 5 * T_PAGE);
	pthread_join(t, NULL);
	return T_PASS;
}

int main(void)
{
	uint64_t got;
	int uffd = t_uffd_open(UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_MINOR_SHMEM, &got);
	if (uffd < 0)
		t_skip("no userfaultfd (%s)", strerror(errno));
	int mfd = memfd_create("probe", MFD_CLOEXEC);
	CHECK(mfd >= 0 && ftruncate(mfd, NP * T_PAGE) == 0);
	char *w = mmap(NULL, NP * T_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	CHECK(w != MAP_FAILED);
	memset(w, 'A', NP * T_PAGE);
	char *run = mmap(NULL, NP * T_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, mfd, 0);
	char *cowed = mmap(NULL, NP * T_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, mfd, 0);
	char *spare = mmap(NULL, NP * T_PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(run != MAP_FAILED && cowed != MAP_FAILED && spare != MAP_FAILED);
	/* the parent registers both as libdedup does, and reads them */
	struct uffdio_register r = { .range = { (uintptr_t)run, NP * T_PAGE },
				     .mode = UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_MISSING };
	CHECK(madvise(run, NP * T_PAGE, MADV_POPULATE_READ) == 0);
	CHECK(madvise(cowed, NP * T_PAGE, MADV_POPULATE_READ) == 0);
	CHECK(ioctl(uffd, UFFDIO_REGISTER, &r) == 0);
	r.range.start = (uintptr_t)cowed;
	CHECK(ioctl(uffd, UFFDIO_REGISTER, &r) == 0);
	cowed[0] = 'W';   /* a COW: the VMA gets an anon_vma */
	CHECK(present(run + 3 * T_PAGE));

	fflush(NULL);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0)
		_exit(child(run, cowed, spare));
	int st;
	CHECK(waitpid(pid, &st, 0) == pid);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "FAIL: child status %#x\n", st);
		return T_FAIL;
	}
	CHECK(run[3 * T_PAGE] == 'A' && cowed[0] == 'W');
	fprintf(stderr, "PASS\n");
	return T_PASS;
}
