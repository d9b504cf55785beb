/* SPDX-License-Identifier: MIT */
/*
 * probe_mremap_fresh_merge.c - how a replacement VMA moved in with mremap()
 * can merge with its anonymous neighbours (seen on Linux 6.18):
 *  - mremap(MREMAP_FIXED) of an anonymous VMA that was never touched (no
 *    anon_vma) gives it the page offset of its new address (copy_vma): moved
 *    over a memfd page in the middle of an anonymous VMA, it merges with
 *    both sides (three VMAs become one), also when everything is registered
 *    MISSING|WP with one userfaultfd (UFFD_EVENT_REMAP read by a thread),
 *    and it stays one VMA after UFFDIO_COPY fills it and the range is
 *    unregistered;
 *  - a VMA that was touched before the move keeps its old page offset and
 *    anon_vma: it stays a VMA of its own (the bug that left 16,423 mappings
 *    after 16k unmerged runs: merge.c took its replacement from a mmap(NULL)
 *    that had merged with a touched buffer);
 *  - a neighbour with VM_NOHUGEPAGE (madvise) does not merge with a
 *    replacement without it; madvise(MADV_NOHUGEPAGE) of the still empty
 *    replacement merges them.
 *
 * Why libdedup depends on it: dedup_unregister() must leave one anonymous
 * mapping where the application had one (merge.c, "Unmerging", step 3).
 */
#include "tcommon.h"

#include <poll.h>
#include <pthread.h>

static int uffd;

static void *reader(void *arg)
{
	(void)arg;
	for (;;) {
		struct pollfd p = { uffd, POLLIN, 0 };
		struct uffd_msg m;
		if (poll(&p, 1, -1) > 0 && read(uffd, &m, sizeof(m)) < 0 && errno == EBADF)
			break;
	}
	return NULL;
}

static int vmas(const char *lo, size_t len)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	int n = 0;
	CHECK(f != NULL);
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx", &a, &b) == 2 && a < (uintptr_t)lo + len && b > (uintptr_t)lo)
			n++;
	}
	fclose(f);
	return n;
}

/* A 5-page anonymous VMA (touched) with a memfd page over page 2. */
static char *setup(int mfd, bool nohuge, bool reg)
{
	char *v = t_map_anon(5 * T_PAGE);
	if (nohuge)
		CHECK(madvise(v, 5 * T_PAGE, MADV_NOHUGEPAGE) == 0);
	memset(v, 1, 5 * T_PAGE);
	CHECK(mmap(v + 2 * T_PAGE, T_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, mfd, 0) ==
	      v + 2 * T_PAGE);
	CHECK(vmas(v, 5 * T_PAGE) == 3);
	if (reg)
		CHECK(t_uffd_register(uffd, v, 5 * T_PAGE,
				      UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP) == 0);
	return v;
}

/* A replacement page, away from anything it could merge with (PROT_NONE
 * guards), touched or not, registered or not. */
static char *replacement(bool touch, bool reg)
{
	char *g = mmap(NULL, 3 * T_PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(g != MAP_FAILED);
	CHECK(mprotect(g + T_PAGE, T_PAGE, PROT_READ | PROT_WRITE) == 0);
	if (touch)
		g[T_PAGE] = 7;
	if (reg)
		CHECK(t_uffd_register(uffd, g + T_PAGE, T_PAGE,
				      UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP) == 0);
	return g + T_PAGE;
}

static void move(char *t, char *dst)
{
	CHECK(mremap(t, T_PAGE, T_PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, dst) == dst);
}

int main(void)
{
	uffd = t_uffd_open(UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_PAGEFAULT_FLAG_WP, NULL);
	if (uffd < 0)
		t_skip("no userfaultfd here (%s)", strerror(errno));
	pthread_t th;
	CHECK(pthread_create(&th, NULL, reader, NULL) == 0);
	int mfd = memfd_create("probe", MFD_CLOEXEC);
	CHECK(mfd >= 0 && ftruncate(mfd, T_PAGE) == 0);

	/* untouched, unregistered: merges */
	char *v = setup(mfd, false, false);
	move(replacement(false, false), v + 2 * T_PAGE);
	CHECK(vmas(v, 5 * T_PAGE) == 1);

	/* untouched, all registered MISSING|WP: merges, and stays merged */
	v = setup(mfd, false, true);
	move(replacement(false, true), v + 2 * T_PAGE);
	CHECK(vmas(v, 5 * T_PAGE) == 1);
	char src[T_PAGE];
	memset(src, 2, sizeof(src));
	struct uffdio_copy c = { .dst = (uintptr_t)v + 2 * T_PAGE, .src = (uintptr_t)src, .len = T_PAGE };
	CHECK(ioctl(uffd, UFFDIO_COPY, &c) == 0);
	struct uffdio_range rg = { (uintptr_t)v, 5 * T_PAGE };
	CHECK(ioctl(uffd, UFFDIO_UNREGISTER, &rg) == 0);
	CHECK(vmas(v, 5 * T_PAGE) == 1);
	CHECK(v[T_PAGE] == 1 && v[2 * T_PAGE] == 2 && v[3 * T_PAGE] == 1);

	/* touched before the move: its own VMA */
	v = setup(mfd, false, false);
	move(replacement(true, false), v + 2 * T_PAGE);
	CHECK(vmas(v, 5 * T_PAGE) == 3);

	/* VM_NOHUGEPAGE neighbours: no merge until the replacement has it */
	v = setup(mfd, true, false);
	move(replacement(false, false), v + 2 * T_PAGE);
	CHECK(vmas(v, 5 * T_PAGE) == 3);
	CHECK(madvise(v + 2 * T_PAGE, T_PAGE, MADV_NOHUGEPAGE) == 0);
	CHECK(vmas(v, 5 * T_PAGE) == 1);
	return T_PASS;
}
