/* SPDX-License-Identifier: MIT */
/*
 * probe_private_file.c - fact (kernel-facts.md, "Private file mappings are
 * not anonymous memory"): on a page replaced by a MAP_PRIVATE memfd mapping
 * whose memfd page holds pattern P,
 *  - madvise(MADV_DONTNEED) succeeds and the page reads P again, not zeros,
 *    also after a write made a private (COW) copy;
 *  - madvise(MADV_FREE) fails with EINVAL;
 *  - MAP_POPULATE on a MAP_PRIVATE, PROT_WRITE memfd mapping pre-faults for
 *    write and copies every page (smaps Anonymous: grows), while
 *    MADV_POPULATE_READ maps the shared pages without copying (Anonymous: 0).
 *
 * Why libdedup depends on it: a merged page is a private file page. Allocators
 * assume MADV_DONTNEED leaves zeros and use MADV_FREE on anonymous memory, so
 * libdedup must unmerge (or zero-fill) ranges before such madvise calls reach
 * a merged page; and it must never populate merged ranges for write, or the
 * merge is undone at once.
 */
#include "tcommon.h"
#include "uapi.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

static int is_zero(const void *p)
{
	const unsigned char *c = p;
	for (size_t i = 0; i < T_PAGE; i++)
		if (c[i])
			return 0;
	return 1;
}

/*
 * A field (kB) of the /proc/self/smaps entry of the VMA starting at @start.
 * Header lines start with a lowercase hex address, field lines with a
 * capitalised name ("Rss:", "Anonymous:", "VmFlags:").
 */
static long smaps_kb(const void *start, const char *key)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[4096];
	size_t kl = strlen(key);
	int in = 0;
	long v = -1;
	CHECK(f != NULL);
	while (fgets(line, sizeof(line), f)) {
		char c = line[0];
		if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) {
			if (in)
				break;
			in = strtoul(line, NULL, 16) == (uintptr_t)start;
		} else if (in && strncmp(line, key, kl) == 0) {
			v = strtol(line + kl, NULL, 10);
			break;
		}
	}
	fclose(f);
	return v;
}

int main(void)
{
	enum { N = 16 };
	static unsigned char P[N][T_PAGE];
	unsigned char anon[T_PAGE];

	for (int i = 0; i < N; i++)
		t_fill(P[i], 100 + i);
	t_fill(anon, 99);
	int fd = memfd_create("probe", MFD_CLOEXEC);
	CHECK(fd >= 0);
	CHECK(write(fd, P, sizeof(P)) == (ssize_t)sizeof(P));

	/* Replace page 1 of an anonymous range with memfd page 0. */
	unsigned char *r = t_map_anon(3 * T_PAGE);
	for (int i = 0; i < 3; i++)
		memcpy(r + i * T_PAGE, anon, T_PAGE);
	unsigned char *x = r + T_PAGE;
	CHECK(mmap(x, T_PAGE, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE, fd,
		   0) == x);
	CHECK(memcmp(x, P[0], T_PAGE) == 0);

	/* DONTNEED on the clean page: reads P again, not zeros. */
	CHECK(madvise(x, T_PAGE, MADV_DONTNEED) == 0);
	CHECK(!is_zero(x));
	CHECK(memcmp(x, P[0], T_PAGE) == 0);

	/* After a write (private copy), DONTNEED drops the copy: P again. */
	memset(x, 0, T_PAGE);
	CHECK(is_zero(x));
	CHECK(madvise(x, T_PAGE, MADV_DONTNEED) == 0);
	CHECK(memcmp(x, P[0], T_PAGE) == 0);
	/* The memfd itself was never written by the COW. */
	unsigned char chk[T_PAGE];
	CHECK(pread(fd, chk, T_PAGE, 0) == (ssize_t)T_PAGE);
	CHECK(memcmp(chk, P[0], T_PAGE) == 0);

	/* MADV_FREE is refused on a file mapping, also after a COW write. */
	errno = 0;
	CHECK(madvise(x, T_PAGE, MADV_FREE) == -1 && errno == EINVAL);
	x[0] ^= 1;
	errno = 0;
	CHECK(madvise(x, T_PAGE, MADV_FREE) == -1 && errno == EINVAL);
	CHECK(x[0] == (P[0][0] ^ 1));
	CHECK(memcmp(x + 1, P[0] + 1, T_PAGE - 1) == 0);
	/* The neighbours are untouched anonymous pages. */
	CHECK(memcmp(r, anon, T_PAGE) == 0);
	CHECK(memcmp(r + 2 * T_PAGE, anon, T_PAGE) == 0);

	/* MAP_POPULATE with PROT_WRITE copies every page. */
	unsigned char *a = mmap(NULL, N * T_PAGE, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_POPULATE, fd, 0);
	CHECK(a != MAP_FAILED);
	long rss = smaps_kb(a, "Rss:"), an = smaps_kb(a, "Anonymous:");
	long pd = smaps_kb(a, "Private_Dirty:");
	printf("MAP_POPULATE:       Rss %ld kB, Anonymous %ld kB, Private_Dirty %ld kB\n",
	       rss, an, pd);
	CHECK(rss == N * 4);
	CHECK(an == N * 4);
	for (int i = 0; i < N; i++)
		CHECK(memcmp(a + i * T_PAGE, P[i], T_PAGE) == 0);

	/* MADV_POPULATE_READ maps the shared pages without copying. */
	unsigned char *b = mmap(NULL, N * T_PAGE, PROT_READ | PROT_WRITE,
				MAP_PRIVATE, fd, 0);
	CHECK(b != MAP_FAILED);
	CHECK(smaps_kb(b, "Rss:") == 0);
	errno = 0;
	int pr = madvise(b, N * T_PAGE, MADV_POPULATE_READ);
	if (pr != 0 && errno == EINVAL)
		t_skip("MADV_POPULATE_READ not supported");
	CHECK(pr == 0);
	rss = smaps_kb(b, "Rss:");
	an = smaps_kb(b, "Anonymous:");
	pd = smaps_kb(b, "Private_Dirty:");
	printf("MADV_POPULATE_READ: Rss %ld kB, Anonymous %ld kB, Private_Dirty %ld kB\n",
	       rss, an, pd);
	CHECK(rss == N * 4);
	/*
	 * Only Anonymous: tells copies apart. Private_Dirty: is not a COW
	 * indicator here: it also counts the memfd's own (dirty, singly
	 * mapped) page-cache pages.
	 */
	CHECK(an == 0);
	for (int i = 0; i < N; i++)
		CHECK(memcmp(b + i * T_PAGE, P[i], T_PAGE) == 0);
	CHECK(smaps_kb(b, "Anonymous:") == 0); /* reading did not copy either */

	close(fd);
	printf("PASS: private memfd pages: DONTNEED refills from file, FREE EINVAL, "
	       "POPULATE copies, POPULATE_READ shares\n");
	return T_PASS;
}
