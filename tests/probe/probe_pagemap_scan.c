/* SPDX-License-Identifier: MIT */
/*
 * probe_pagemap_scan.c - fact (kernel-facts.md, "PAGEMAP_SCAN"):
 * ioctl(PAGEMAP_SCAN) on /proc/self/pagemap, asked with
 * category_anyof_mask = PAGE_IS_PRESENT and return_mask =
 * PRESENT|FILE|PFNZERO, reports per page:
 *  - untouched anonymous page:            not reported (not present)
 *  - written anonymous page:              PRESENT
 *  - anonymous page that was only read:   see below (zero page or not)
 *  - MAP_PRIVATE memfd page, only read:   PRESENT|FILE
 *  - the same after a write (COW copy):   PRESENT (not FILE)
 * and the read() interface of /proc/self/pagemap says the same: bit 63
 * present, bit 61 file-page-or-shared-anon (set only for the unCOWed memfd
 * page).
 *
 * Read-only anonymous pages depend on the kernel (see KERNEL-NOTES.md):
 *  - "no zero page" branch, taken if /proc/cmdline has pvm_no_zero_page=1
 *    (this project's machine: a Linux 6.18 PVM guest) or if, as root, two
 *    read-only anonymous pages are seen with different PFNs: a read fault
 *    allocates a fresh zeroed page. The page reads as zeros and is reported
 *    PRESENT only (not PFNZERO, not FILE), by the ioctl for both pages, and
 *    (root) the two pages have different nonzero PFNs in the pagemap read();
 *  - standard branch otherwise: the read maps the shared zero page: the
 *    ioctl reports PRESENT|PFNZERO for both, and (root) both pagemap entries
 *    carry the same PFN.
 * The test prints which branch ran and why. A kernel whose behaviour does not
 * match the branch its command line selects fails the test.
 *
 * Why libdedup depends on it: the scanner uses these categories to choose
 * candidates: it skips pages that are not present, treats PFNZERO pages as
 * already "merged" with the zero page, recognises pages it has merged (FILE)
 * and pages the application has since written (COW: no longer FILE). It
 * falls back to read()ing pagemap where the ioctl is missing, so both
 * interfaces must agree. Under pvm_no_zero_page=1 a read-only anonymous page
 * is a private zero-filled page like any written one: it is never PFNZERO, so
 * libdedup finds it by content (hash) and merges it like any other
 * duplicate, instead of skipping it as already shared.
 */
#include "tcommon.h"
#include "uapi.h"

enum { UNTOUCHED, WRITTEN, READ0, FREAD, FCOW, NPG };
static const char *names[NPG] = { "untouched anon", "written anon", "read-only anon",
				  "memfd read", "memfd written (COW)" };

#define PM_PRESENT (1ULL << 63)
#define PM_SWAP (1ULL << 62)
#define PM_FILE (1ULL << 61)
#define PM_PFN_MASK ((1ULL << 55) - 1)

/* Does the kernel command line disable the shared zero page? */
static int cmdline_no_zero_page(void)
{
	char buf[4096] = "";
	FILE *f = fopen("/proc/cmdline", "r");
	if (f) {
		if (!fgets(buf, sizeof(buf), f))
			buf[0] = 0;
		fclose(f);
	}
	/* a whole word: preceded by start or blank, followed by end or blank */
	for (char *p = buf; (p = strstr(p, "pvm_no_zero_page=1")) != NULL; p++) {
		char after = p[strlen("pvm_no_zero_page=1")];
		if ((p == buf || p[-1] == ' ') &&
		    (after == 0 || after == ' ' || after == '\n'))
			return 1;
	}
	return 0;
}

/* PAGEMAP_SCAN categories (PRESENT|FILE|PFNZERO) of the single page @addr. */
static uint64_t scan_one(int pm, const void *addr)
{
	struct page_region v[2];
	struct pm_scan_arg a = {
		.size = sizeof(a),
		.start = (uintptr_t)addr,
		.end = (uintptr_t)addr + T_PAGE,
		.vec = (uintptr_t)v,
		.vec_len = 2,
		.category_anyof_mask = PAGE_IS_PRESENT,
		.return_mask = PAGE_IS_PRESENT | PAGE_IS_FILE | PAGE_IS_PFNZERO,
	};
	long n = ioctl(pm, PAGEMAP_SCAN, &a);
	CHECK(n == 0 || n == 1);
	if (n == 0)
		return 0;
	CHECK(v[0].start == a.start && v[0].end == a.end);
	return v[0].categories;
}

int main(void)
{
	unsigned char fpat[2][T_PAGE], chk[T_PAGE];
	uint64_t cat[NPG] = { 0 };
	struct page_region vec[16];

	t_fill(fpat[0], 31);
	t_fill(fpat[1], 32);
	int mfd = memfd_create("probe", MFD_CLOEXEC);
	CHECK(mfd >= 0);
	CHECK(write(mfd, fpat, sizeof(fpat)) == (ssize_t)sizeof(fpat));

	/* One spare page on each side so that the scan range is one area. */
	unsigned char *r = t_map_anon((NPG + 2) * T_PAGE) + T_PAGE;
	CHECK(mmap(r + FREAD * T_PAGE, 2 * T_PAGE, PROT_READ | PROT_WRITE,
		   MAP_FIXED | MAP_PRIVATE, mfd, 0) == r + FREAD * T_PAGE);
	volatile unsigned char *v = r;
	v[WRITTEN * T_PAGE + 5] = 7;
	CHECK(v[READ0 * T_PAGE + 5] == 0);
	CHECK(memcmp(r + FREAD * T_PAGE, fpat[0], T_PAGE) == 0);
	CHECK(memcmp(r + FCOW * T_PAGE, fpat[1], T_PAGE) == 0);
	v[FCOW * T_PAGE + 5] ^= 0xff;
	/* a second read-only anonymous page elsewhere, for the zero-page PFN */
	volatile unsigned char *z = t_map_anon(T_PAGE);
	CHECK(z[9] == 0);

	int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	CHECK(pm >= 0);

	/* ---- PAGEMAP_SCAN ---- */
	struct pm_scan_arg a = {
		.size = sizeof(a),
		.flags = 0,
		.start = (uintptr_t)r,
		.end = (uintptr_t)r + NPG * T_PAGE,
		.vec = (uintptr_t)vec,
		.vec_len = 16,
		.category_anyof_mask = PAGE_IS_PRESENT,
		.return_mask = PAGE_IS_PRESENT | PAGE_IS_FILE | PAGE_IS_PFNZERO,
	};
	CHECK(sizeof(a) == 96);
	errno = 0;
	long n = ioctl(pm, PAGEMAP_SCAN, &a);
	if (n < 0 && (errno == ENOTTY || errno == EINVAL))
		t_skip("PAGEMAP_SCAN not supported: %s", strerror(errno));
	CHECK(n >= 0 && n <= 16);
	CHECK(a.walk_end == a.end);
	for (long i = 0; i < n; i++) {
		CHECK(vec[i].start < vec[i].end);
		CHECK(vec[i].start >= a.start && vec[i].end <= a.end);
		CHECK((vec[i].categories & ~a.return_mask) == 0);
		for (uint64_t p = vec[i].start; p < vec[i].end; p += T_PAGE) {
			int idx = (int)((p - a.start) / T_PAGE);
			CHECK(cat[idx] == 0);
			cat[idx] = vec[i].categories;
		}
	}
	uint64_t catz = scan_one(pm, (const void *)z);
	for (int i = 0; i < NPG; i++)
		printf("scan    %-20s categories 0x%02llx\n", names[i],
		       (unsigned long long)cat[i]);
	printf("scan    %-20s categories 0x%02llx\n", "2nd read-only anon",
	       (unsigned long long)catz);
	CHECK(cat[UNTOUCHED] == 0);
	CHECK(cat[WRITTEN] == PAGE_IS_PRESENT);
	CHECK((cat[READ0] & ~PAGE_IS_PFNZERO) == PAGE_IS_PRESENT);
	CHECK((catz & ~PAGE_IS_PFNZERO) == PAGE_IS_PRESENT);
	CHECK(cat[FREAD] == (PAGE_IS_PRESENT | PAGE_IS_FILE));
	CHECK(cat[FCOW] == PAGE_IS_PRESENT);

	/* ---- read() fallback ---- */
	uint64_t e[NPG], ez;
	CHECK(pread(pm, e, sizeof(e), (off_t)((uintptr_t)r / T_PAGE * 8)) ==
	      (ssize_t)sizeof(e));
	CHECK(pread(pm, &ez, 8, (off_t)((uintptr_t)z / T_PAGE * 8)) == 8);
	for (int i = 0; i < NPG; i++)
		printf("pagemap %-20s entry 0x%016llx\n", names[i],
		       (unsigned long long)e[i]);
	printf("pagemap %-20s entry 0x%016llx\n", "2nd read-only anon",
	       (unsigned long long)ez);
	CHECK(e[UNTOUCHED] == 0);
	CHECK((e[WRITTEN] & (PM_PRESENT | PM_SWAP | PM_FILE)) == PM_PRESENT);
	CHECK((e[READ0] & (PM_PRESENT | PM_SWAP | PM_FILE)) == PM_PRESENT);
	CHECK((ez & (PM_PRESENT | PM_SWAP | PM_FILE)) == PM_PRESENT);
	CHECK((e[FREAD] & (PM_PRESENT | PM_SWAP | PM_FILE)) == (PM_PRESENT | PM_FILE));
	CHECK((e[FCOW] & (PM_PRESENT | PM_SWAP | PM_FILE)) == PM_PRESENT);

	/* Both read-only anonymous pages read as zeros, whatever backs them. */
	static const unsigned char zero[T_PAGE];
	CHECK(memcmp(r + READ0 * T_PAGE, zero, T_PAGE) == 0);
	CHECK(memcmp((const void *)z, zero, T_PAGE) == 0);

	/* ---- which zero-page behaviour applies ---- */
	int root = geteuid() == 0;
	uint64_t zpfn = e[READ0] & PM_PFN_MASK, zpfn2 = ez & PM_PFN_MASK;
	int by_cmdline = cmdline_no_zero_page();
	int by_pfn = root && zpfn != 0 && zpfn2 != 0 && zpfn != zpfn2;
	int no_zero_page = by_cmdline || by_pfn;
	printf("branch: %s (%s)\n",
	       no_zero_page ? "no shared zero page" : "standard: shared zero page",
	       by_cmdline ? "/proc/cmdline has pvm_no_zero_page=1" :
	       by_pfn ? "two read-only anonymous pages have different PFNs" :
	       root ? "no pvm_no_zero_page=1 on /proc/cmdline, read-only pages share a PFN" :
		      "no pvm_no_zero_page=1 on /proc/cmdline; PFNs not visible (not root)");

	if (no_zero_page) {
		/* A read fault allocated a fresh zeroed page: plain PRESENT. */
		CHECK(cat[READ0] == PAGE_IS_PRESENT);
		CHECK(catz == PAGE_IS_PRESENT);
	} else {
		/* A read fault mapped the shared zero page. */
		CHECK(cat[READ0] == (PAGE_IS_PRESENT | PAGE_IS_PFNZERO));
		CHECK(catz == (PAGE_IS_PRESENT | PAGE_IS_PFNZERO));
	}
	/* As root the PFNs are visible. */
	if (root) {
		CHECK(zpfn != 0);
		CHECK(zpfn2 != 0);
		if (no_zero_page)
			CHECK(zpfn2 != zpfn); /* two separate zeroed pages */
		else
			CHECK(zpfn2 == zpfn); /* both map the one zero page */
		CHECK((e[WRITTEN] & PM_PFN_MASK) != zpfn);
		CHECK((e[WRITTEN] & PM_PFN_MASK) != zpfn2);
		CHECK((e[FREAD] & PM_PFN_MASK) != (e[FCOW] & PM_PFN_MASK));
	}

	/* content: the memfd was not touched by the COW write */
	CHECK(pread(mfd, chk, T_PAGE, T_PAGE) == (ssize_t)T_PAGE);
	CHECK(memcmp(chk, fpat[1], T_PAGE) == 0);
	CHECK(r[FCOW * T_PAGE + 5] == (unsigned char)(fpat[1][5] ^ 0xff));

	close(pm);
	close(mfd);
	printf("PASS: PAGEMAP_SCAN and pagemap read() agree on PRESENT/FILE/PFNZERO "
	       "(%s)\n", no_zero_page ? "no shared zero page" : "shared zero page");
	return T_PASS;
}
