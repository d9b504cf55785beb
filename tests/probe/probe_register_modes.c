/* SPDX-License-Identifier: MIT */
/*
 * probe_register_modes - changing the registration mode of one page.
 *
 * Pinned down (this kernel, Linux 6.18; see tests/probe/KERNEL-NOTES.md -
 * kernel-facts.md said a MODE_WP re-registration restores the original
 * state, and it does not):
 *  - inside a range registered MODE_WP, UFFDIO_REGISTER of a single page
 *    again with MODE_MISSING|MODE_WP (same uffd) succeeds; it splits the VMA
 *    (+2 lines in /proc/self/maps), the page's VMA shows VmFlags "um" and
 *    "uw" in /proc/self/smaps, and an empty PTE there raises a MISSING fault;
 *  - UFFDIO_REGISTER only ever ADDS modes: registering that page again with
 *    MODE_WP alone returns 0 but changes nothing (VMA still split, map count
 *    still +2, VmFlags still "um uw", an empty PTE still raises a MISSING
 *    fault);
 *  - UFFDIO_UNREGISTER of the page clears its VmFlags (no "um", no "uw"),
 *    leaves the split in place (the unregistered VMA cannot merge with its
 *    registered neighbours: map count still +2) and drops the uffd-wp bit of
 *    the page's PTE (pagemap bit 57), even though the page was
 *    write-protected just before;
 *  - a following UFFDIO_REGISTER(MODE_WP) of the page merges the VMAs back
 *    (one VMA, map count back to the original) with VmFlags "uw" only; the
 *    page is NOT write-protected any more: a write to it lands at once and
 *    queues no uffd message (poll 100 ms); the VMA is back to MODE_WP only
 *    (an empty PTE reads zeros without a fault), and UFFDIO_WRITEPROTECT
 *    works on it again;
 *  - a range registered with one uffd cannot be registered by a second uffd
 *    (EBUSY), neither in part nor as a whole.
 *
 * Why libdedup depends on it: for the window in which a page is moved out of
 * the application's range, libdedup upgrades that page's registration to
 * MISSING|WP (so an access waits instead of seeing zeros). Its restore step
 * is UFFDIO_UNREGISTER + UFFDIO_REGISTER(MODE_WP), because a plain MODE_WP
 * registration cannot drop MISSING; and since the unregister drops the
 * page's write-protection, libdedup must re-protect a page after the restore
 * if it still wants to track writes to it (a restored page counts as
 * written). The map-count bookkeeping (+2 per upgraded page until the
 * restore) keeps the process below vm.max_map_count. The EBUSY tells it that
 * another uffd owner (e.g. a checkpointing tool, or a second libdedup
 * instance) has the range.
 *
 * Features: PAGEFAULT_FLAG_WP only (no EVENT_REMOVE), so that MADV_DONTNEED
 * below does not raise an event nobody reads. Every access that may block
 * runs in a thread and is waited for with a timeout.
 */
#include "probe.h"

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>

#define NPAGES 8
#define PIDX 4 /* the page whose mode changes */

static int uffd;
static unsigned char pattern[T_PAGE], zero[T_PAGE];

struct reader {
	volatile unsigned char *addr;
	unsigned char copy[T_PAGE];
	atomic_int done;
};

static void *reader_fn(void *arg)
{
	struct reader *r = arg;
	for (size_t i = 0; i < T_PAGE; i++)
		r->copy[i] = r->addr[i];
	atomic_store(&r->done, 1);
	return NULL;
}

struct writer {
	volatile unsigned char *addr;
	unsigned char val;
	atomic_int done;
};

static void *writer_fn(void *arg)
{
	struct writer *w = arg;
	w->addr[0] = w->val;
	atomic_store(&w->done, 1);
	return NULL;
}

/* The uffd-wp bit (57) of @addr's entry in /proc/self/pagemap. */
static int pagemap_uffd_wp(const void *addr)
{
	uint64_t e = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	CHECK(pread(fd, &e, 8, (off_t)((uintptr_t)addr / T_PAGE) * 8) == 8);
	close(fd);
	CHECK(e >> 63); /* only meaningful for a present page */
	return (int)((e >> 57) & 1);
}

/* Number of /proc/self/maps lines that overlap [addr, addr + len). */
static long vmas_in(const void *addr, size_t len)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	long n = 0;
	CHECK(f != NULL);
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx", &s, &e) == 2 &&
		    s < (uintptr_t)addr + len && e > (uintptr_t)addr)
			n++;
	}
	fclose(f);
	return n;
}

static void *noop_fn(void *arg)
{
	return arg;
}

/* The /proc/self/maps line that contains @addr: [*start, *end). */
static void vma_of(const void *addr, uintptr_t *start, uintptr_t *end)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	CHECK(f != NULL);
	*start = *end = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx", &s, &e) == 2 &&
		    s <= (uintptr_t)addr && (uintptr_t)addr < e) {
			*start = s;
			*end = e;
			break;
		}
	}
	fclose(f);
	CHECK(*end != 0);
}

/*
 * Does the VMA containing @addr carry the VmFlags mnemonic @flag ("um" is
 * VM_UFFD_MISSING, "uw" VM_UFFD_WP) in /proc/self/smaps?
 */
static int has_vmflag(const void *addr, const char *flag)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[1024];
	int in = 0, found = -1;
	CHECK(f != NULL);
	while (found < 0 && fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		/* Header lines start "start-end "; field lines "Name:". */
		if (sscanf(line, "%lx-%lx ", &s, &e) == 2) {
			in = s <= (uintptr_t)addr && (uintptr_t)addr < e;
			continue;
		}
		if (in && strncmp(line, "VmFlags:", 8) == 0) {
			found = 0;
			for (char *tok = strtok(line + 8, " \n"); tok;
			     tok = strtok(NULL, " \n"))
				if (strcmp(tok, flag) == 0)
					found = 1;
		}
	}
	fclose(f);
	CHECK(found >= 0);
	return found;
}

static int reg(int fd, void *addr, size_t len, uint64_t mode, uint64_t *ioctls)
{
	struct uffdio_register r = {
		.range = { .start = (uintptr_t)addr, .len = len }, .mode = mode
	};
	int ret = ioctl(fd, UFFDIO_REGISTER, &r);
	if (ioctls)
		*ioctls = r.ioctls;
	return ret;
}

int main(void)
{
	struct uffd_msg m;
	uintptr_t s, e;
	uint64_t ioctls;
	pthread_t t;
	static struct reader rd;
	static struct writer wr;

	if (access("/dev/userfaultfd", F_OK) != 0)
		t_skip("/dev/userfaultfd does not exist");
	uffd = t_uffd_open(UFFD_FEATURE_PAGEFAULT_FLAG_WP, NULL);
	CHECK(uffd >= 0);
	t_fill(pattern, 3);

	/*
	 * An 8-page range with guard pages around it (PROT_NONE) so that it
	 * never merges with a neighbouring mapping. Page PIDX is left empty.
	 */
	unsigned char *g = mmap(NULL, (NPAGES + 2) * T_PAGE, PROT_NONE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(g != MAP_FAILED);
	unsigned char *R = g + T_PAGE;
	CHECK(mmap(R, NPAGES * T_PAGE, PROT_READ | PROT_WRITE,
		   MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == R);
	CHECK(madvise(R, NPAGES * T_PAGE, MADV_NOHUGEPAGE) == 0);
	unsigned char *P = R + PIDX * T_PAGE;
	for (int i = 0; i < NPAGES; i++)
		if (i != PIDX)
			memcpy(R + i * T_PAGE, pattern, T_PAGE);

	CHECK(reg(uffd, R, NPAGES * T_PAGE, UFFDIO_REGISTER_MODE_WP, NULL) == 0);
	vma_of(P, &s, &e);
	CHECK(s == (uintptr_t)R && e == (uintptr_t)(R + NPAGES * T_PAGE));
	CHECK(vmas_in(R, NPAGES * T_PAGE) == 1);
	/*
	 * Warm up glibc's thread-stack cache so that the reader/writer threads
	 * below do not add their stacks to the process-wide map count.
	 */
	CHECK(pthread_create(&t, NULL, noop_fn, NULL) == 0);
	CHECK(pthread_join(t, NULL) == 0);
	long count0 = t_map_count();

	/* 1. One page upgraded to MISSING|WP: +2 VMAs, P alone in its VMA. */
	CHECK(reg(uffd, P, T_PAGE,
		  UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP,
		  &ioctls) == 0);
	CHECK(ioctls & (1ULL << _UFFDIO_WRITEPROTECT));
	long count1 = t_map_count();
	printf("1. REGISTER(P, MISSING|WP): maps lines %ld -> %ld, um=%d uw=%d\n",
	       count0, count1, has_vmflag(P, "um"), has_vmflag(P, "uw"));
	CHECK(count1 == count0 + 2);
	CHECK(vmas_in(R, NPAGES * T_PAGE) == 3);
	CHECK(has_vmflag(P, "um") && has_vmflag(P, "uw"));
	CHECK(!has_vmflag(R, "um") && has_vmflag(R, "uw"));
	vma_of(P, &s, &e);
	CHECK(s == (uintptr_t)P && e == (uintptr_t)(P + T_PAGE));

	/* ... and its empty PTE now raises a MISSING fault (read: flags 0). */
	rd.addr = P;
	CHECK(pthread_create(&t, NULL, reader_fn, &rd) == 0);
	CHECK(uffd_try_msg(uffd, t_cap_ms(), &m) == 1);
	printf("   fault: event %u flags 0x%llx\n", m.event,
	       (unsigned long long)m.arg.pagefault.flags);
	CHECK(m.event == UFFD_EVENT_PAGEFAULT);
	CHECK((m.arg.pagefault.address & ~(T_PAGE - 1)) == (uintptr_t)P);
	CHECK((m.arg.pagefault.flags &
	       (UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP)) == 0);
	usleep(100 * 1000);
	CHECK(!atomic_load(&rd.done));
	struct uffdio_copy cp = { .dst = (uintptr_t)P, .src = (uintptr_t)pattern,
				  .len = T_PAGE, .mode = 0 };
	CHECK(ioctl(uffd, UFFDIO_COPY, &cp) == 0 && cp.copy == (int64_t)T_PAGE);
	CHECK(wait_flag(&rd.done, t_cap_ms()));
	CHECK(pthread_join(t, NULL) == 0);
	CHECK(memcmp(rd.copy, pattern, T_PAGE) == 0);

	/*
	 * 2. REGISTER(P, MODE_WP) alone: returns 0 but changes nothing.
	 *    Registration only adds modes; MISSING stays.
	 */
	CHECK(reg(uffd, P, T_PAGE, UFFDIO_REGISTER_MODE_WP, NULL) == 0);
	long count2 = t_map_count();
	printf("2. REGISTER(P, WP) over MISSING|WP: ret 0, maps lines %ld, um=%d uw=%d\n",
	       count2, has_vmflag(P, "um"), has_vmflag(P, "uw"));
	CHECK(count2 == count0 + 2);
	CHECK(vmas_in(R, NPAGES * T_PAGE) == 3);
	CHECK(has_vmflag(P, "um") && has_vmflag(P, "uw"));
	CHECK(!has_vmflag(R, "um") && has_vmflag(R, "uw"));
	vma_of(P, &s, &e);
	CHECK(s == (uintptr_t)P && e == (uintptr_t)(P + T_PAGE));
	CHECK(memcmp(P, pattern, T_PAGE) == 0);
	/* MISSING still in force: an emptied P makes a reader wait again. */
	CHECK(madvise(P, T_PAGE, MADV_DONTNEED) == 0);
	memset(&rd, 0, sizeof(rd));
	rd.addr = P;
	CHECK(pthread_create(&t, NULL, reader_fn, &rd) == 0);
	CHECK(uffd_try_msg(uffd, t_cap_ms(), &m) == 1);
	CHECK(m.event == UFFD_EVENT_PAGEFAULT);
	CHECK((m.arg.pagefault.address & ~(T_PAGE - 1)) == (uintptr_t)P);
	CHECK((m.arg.pagefault.flags &
	       (UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP)) == 0);
	usleep(100 * 1000);
	CHECK(!atomic_load(&rd.done));
	cp = (struct uffdio_copy){ .dst = (uintptr_t)P, .src = (uintptr_t)pattern,
				   .len = T_PAGE, .mode = 0 };
	CHECK(ioctl(uffd, UFFDIO_COPY, &cp) == 0 && cp.copy == (int64_t)T_PAGE);
	CHECK(wait_flag(&rd.done, t_cap_ms()));
	CHECK(pthread_join(t, NULL) == 0);
	CHECK(memcmp(rd.copy, pattern, T_PAGE) == 0);

	/*
	 * 3. Write-protect P. Control: the uffd-wp bit is set and a write
	 *    blocks on a WP fault until un-protected; then protect it again.
	 */
	CHECK(t_uffd_wp(uffd, P, T_PAGE, 1) == 0);
	CHECK(pagemap_uffd_wp(P) == 1);
	wr.addr = P;
	wr.val = (unsigned char)(pattern[0] ^ 0x55);
	CHECK(pthread_create(&t, NULL, writer_fn, &wr) == 0);
	CHECK(uffd_try_msg(uffd, t_cap_ms(), &m) == 1);
	CHECK(m.event == UFFD_EVENT_PAGEFAULT);
	CHECK((m.arg.pagefault.address & ~(T_PAGE - 1)) == (uintptr_t)P);
	CHECK((m.arg.pagefault.flags &
	       (UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP)) ==
	      (UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP));
	usleep(100 * 1000);
	CHECK(!atomic_load(&wr.done));
	CHECK(P[0] == pattern[0]);
	CHECK(t_uffd_wp(uffd, P, T_PAGE, 0) == 0); /* un-protect + wake */
	CHECK(wait_flag(&wr.done, t_cap_ms()));
	CHECK(pthread_join(t, NULL) == 0);
	CHECK(P[0] == wr.val);
	P[0] = pattern[0];
	CHECK(uffd_try_msg(uffd, 0, &m) == 0);
	CHECK(t_uffd_wp(uffd, P, T_PAGE, 1) == 0);
	CHECK(pagemap_uffd_wp(P) == 1);
	printf("3. WRITEPROTECT(P): pagemap uffd-wp 1, a write blocked on a WP fault "
	       "(flags 0x%llx) until un-protected; protected again\n",
	       (unsigned long long)m.arg.pagefault.flags);

	/*
	 * 4. UNREGISTER(P): VmFlags cleared, split kept (P's VMA cannot merge
	 *    with its registered neighbours), uffd-wp bit dropped.
	 */
	struct uffdio_range ur = { .start = (uintptr_t)P, .len = T_PAGE };
	CHECK(ioctl(uffd, UFFDIO_UNREGISTER, &ur) == 0);
	long count3 = t_map_count();
	int wp3 = pagemap_uffd_wp(P);
	printf("4. UNREGISTER(P): maps lines %ld, um=%d uw=%d, pagemap uffd-wp %d\n",
	       count3, has_vmflag(P, "um"), has_vmflag(P, "uw"), wp3);
	CHECK(count3 == count0 + 2);
	CHECK(vmas_in(R, NPAGES * T_PAGE) == 3);
	CHECK(!has_vmflag(P, "um") && !has_vmflag(P, "uw"));
	CHECK(!has_vmflag(R, "um") && has_vmflag(R, "uw"));
	CHECK(wp3 == 0);
	CHECK(memcmp(P, pattern, T_PAGE) == 0);

	/*
	 * 5. REGISTER(P, MODE_WP): one VMA again, "uw" only, and P is no
	 *    longer write-protected: a write lands without any uffd message.
	 */
	CHECK(reg(uffd, P, T_PAGE, UFFDIO_REGISTER_MODE_WP, &ioctls) == 0);
	CHECK(ioctls & (1ULL << _UFFDIO_WRITEPROTECT));
	long count4 = t_map_count();
	printf("5. REGISTER(P, WP) after UNREGISTER: maps lines %ld, um=%d uw=%d, "
	       "pagemap uffd-wp %d\n",
	       count4, has_vmflag(P, "um"), has_vmflag(P, "uw"),
	       pagemap_uffd_wp(P));
	CHECK(count4 == count0);
	CHECK(vmas_in(R, NPAGES * T_PAGE) == 1);
	vma_of(P, &s, &e);
	CHECK(s == (uintptr_t)R && e == (uintptr_t)(R + NPAGES * T_PAGE));
	CHECK(!has_vmflag(P, "um") && has_vmflag(P, "uw"));
	CHECK(pagemap_uffd_wp(P) == 0);
	memset(&wr, 0, sizeof(wr));
	wr.addr = P;
	wr.val = (unsigned char)(pattern[0] ^ 0xaa);
	CHECK(pthread_create(&t, NULL, writer_fn, &wr) == 0);
	int got = uffd_try_msg(uffd, 100, &m);
	if (got)
		fprintf(stderr, "write to P after restore raised event %u flags 0x%llx\n",
			m.event, (unsigned long long)m.arg.pagefault.flags);
	CHECK(got == 0);
	CHECK(wait_flag(&wr.done, t_cap_ms()));
	CHECK(pthread_join(t, NULL) == 0);
	CHECK(P[0] == wr.val);
	CHECK(memcmp(P + 1, pattern + 1, T_PAGE - 1) == 0);
	CHECK(uffd_try_msg(uffd, 0, &m) == 0);
	printf("   write to the formerly write-protected P: landed, no uffd message\n");
	P[0] = pattern[0];

	/* WP mode in force on the merged VMA, MISSING gone. */
	CHECK(t_uffd_wp(uffd, R, NPAGES * T_PAGE, 1) == 0);
	CHECK(pagemap_uffd_wp(P) == 1);
	CHECK(t_uffd_wp(uffd, R, NPAGES * T_PAGE, 0) == 0);
	CHECK(pagemap_uffd_wp(P) == 0);
	/* Empty P again: a read now sees zeros, with no message. */
	CHECK(madvise(P, T_PAGE, MADV_DONTNEED) == 0);
	memset(&rd, 0, sizeof(rd));
	rd.addr = P;
	CHECK(pthread_create(&t, NULL, reader_fn, &rd) == 0);
	if (!wait_flag(&rd.done, t_cap_ms())) {
		got = uffd_try_msg(uffd, 0, &m);
		fprintf(stderr, "reader blocked after restore (msg %d)\n", got);
		CHECK(!"read of an empty page in a MODE_WP range did not complete");
	}
	CHECK(pthread_join(t, NULL) == 0);
	CHECK(memcmp(rd.copy, zero, T_PAGE) == 0);
	CHECK(uffd_try_msg(uffd, 0, &m) == 0);
	CHECK(t_map_count() == count0);

	/* 6. A second uffd cannot register any part of the range. */
	int uffd2 = t_uffd_open(UFFD_FEATURE_PAGEFAULT_FLAG_WP, NULL);
	CHECK(uffd2 >= 0);
	errno = 0;
	CHECK(reg(uffd2, P, T_PAGE, UFFDIO_REGISTER_MODE_WP, NULL) == -1 &&
	      errno == EBUSY);
	errno = 0;
	CHECK(reg(uffd2, P, T_PAGE, UFFDIO_REGISTER_MODE_MISSING, NULL) == -1 &&
	      errno == EBUSY);
	errno = 0;
	CHECK(reg(uffd2, R, NPAGES * T_PAGE,
		  UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP,
		  NULL) == -1 &&
	      errno == EBUSY);
	CHECK(t_map_count() == count0); /* nothing split by the failures */
	/* ... while a fresh range is fine for it. */
	unsigned char *other = t_map_anon(T_PAGE);
	CHECK(reg(uffd2, other, T_PAGE, UFFDIO_REGISTER_MODE_WP, NULL) == 0);

	close(uffd2);
	close(uffd);
	munmap(other, T_PAGE);
	munmap(g, (NPAGES + 2) * T_PAGE);
	printf("PASS: REGISTER only adds modes; UNREGISTER + REGISTER(WP) restores "
	       "one VMA and drops write-protection\n");
	return T_PASS;
}
