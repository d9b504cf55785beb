/* SPDX-License-Identifier: MIT */
/*
 * test_vma_cost: "saved" stays honest when merging adds mappings (issue 11,
 * point 7). Each mapping costs the kernel a vm_area_struct and a share of
 * the maple tree; metadata_bytes (and so ksm_process_profit) counts it, as
 * KSM's profit counts its rmap_items.
 *
 * 4096 pages, every 4th one a copy of one content: 1024 isolated
 * duplicates, each merge splitting the anonymous mapping (two more
 * mappings). Checked:
 *   - vmas_added, the engine's estimate of the mappings it added (the VMA
 *     budget spends it), is at least what /proc/self/maps shows and within
 *     10% of it (it counted 3 for each isolated page, which adds 2);
 *   - metadata_bytes grew by at least vmas_added x 192 bytes (the size of
 *     a vm_area_struct on Linux 6.18; any kernel's is larger than 150);
 *   - as root, where /proc/slabinfo is readable: what a mapping costs the
 *     kernel (the vm_area_struct and maple_node caches' growth per mapping,
 *     measured here) is within 2x of what libdedup counts (dd_feat.vma_cost).
 * Every page keeps its content.
 */
#include "tdedup.h"
#include "internal.h"

#define N 4096

/* bytes in use by a slab cache (active objects x object size), or -1 */
static long slab_bytes(const char *cache)
{
	FILE *f = fopen("/proc/slabinfo", "r");
	char line[512], name[64];
	long active, total, size, r = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%63s %ld %ld %ld", name, &active, &total, &size) == 4 &&
		    !strcmp(name, cache))
			r = active * size;
	fclose(f);
	return r;
}

/* What a mapping costs the kernel, measured: the growth of the
 * vm_area_struct and maple_node caches while we split a reservation into
 * 16k mappings, per mapping; the median of three (the caches are the whole
 * machine's, and VMAs unmapped just before are freed after an RCU grace
 * period). -1 without /proc/slabinfo. */
static long kernel_cost(void)
{
	long per[3];
	size_t np = 32768;

	for (int k = 0; k < 3; k++) {
		char *r = mmap(NULL, np * T_PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			       -1, 0);
		CHECK(r != MAP_FAILED);
		long m0 = t_map_count();
		long v0 = slab_bytes("vm_area_struct"), n0 = slab_bytes("maple_node");
		if (v0 < 0 || n0 < 0)
			return -1;
		for (size_t i = 1; i + 1 < np; i += 2)
			CHECK(mprotect(r + i * T_PAGE, T_PAGE, PROT_READ) == 0);
		long v1 = slab_bytes("vm_area_struct"), n1 = slab_bytes("maple_node");
		long m1 = t_map_count();
		per[k] = ((v1 - v0) + (n1 - n0)) / (m1 - m0);
		CHECK(munmap(r, np * T_PAGE) == 0);
	}
	long a = per[0], b = per[1], c = per[2];
	return a > b ? (b > c ? b : (a > c ? c : a)) : (a > c ? a : (b > c ? c : b));
}

static void want(char *page, size_t i)
{
	if (i % 4 == 0)
		t_fill(page, 4242);
	else
		t_fill(page, 90000 + i);
}

int main(void)
{
	struct dedup_config cfg = { .size = sizeof(cfg), .scan_interval_ms = 3600000,
				    .cpu_percent = 100 };
	int r = dedup_init(&cfg);
	if (r == -EPERM || r == -ENOSYS)
		t_skip("userfaultfd not usable here");
	CHECK(r == 0);
	char *buf = t_map_anon(N * T_PAGE), page[T_PAGE];
	CHECK(madvise(buf, N * T_PAGE, MADV_NOHUGEPAGE) == 0);
	for (size_t i = 0; i < N; i++)
		want(buf + i * T_PAGE, i);
	CHECK(dedup_register(buf, N * T_PAGE) == 0);
	CHECK(dedup_scan_now() >= 0);   /* hashes only: the tables grow now */

	struct dedup_stats s0 = t_stats();
	long maps0 = t_map_count();
	for (int pass = 0; pass < 8 && t_stats().merges < N / 4; pass++)
		CHECK(dedup_scan_now() >= 0);
	long maps1 = t_map_count();
	struct dedup_stats s1 = t_stats();
	t_print_stats("merged");

	CHECK(s1.merges >= N / 4 * 9 / 10);
	uint64_t added = s1.vmas_added - s0.vmas_added;
	CHECK(added >= N / 4);
	int64_t counted = (int64_t)s1.metadata_bytes - (int64_t)s0.metadata_bytes;
	fprintf(stderr, "mappings %ld -> %ld, vmas_added +%llu, metadata_bytes +%lld (%.0f bytes "
		"a mapping)\n", maps0, maps1, (unsigned long long)added, (long long)counted,
		(double)counted / (double)added);
	CHECK(counted >= (int64_t)added * 192);
	/* the estimate is an upper bound, and a tight one for isolated pages */
	/* (maps also counts our own tables, which may have grown by a few) */
	CHECK(added + 8 >= (uint64_t)(maps1 - maps0) && added <= (uint64_t)(maps1 - maps0) * 11 / 10);
	long kernel = kernel_cost();
	if (kernel > 0) {
		fprintf(stderr, "kernel: %ld bytes a mapping (median of 3); libdedup counts %ld\n",
			kernel, dd_feat.vma_cost);
		CHECK(kernel > dd_feat.vma_cost / 2 && kernel < dd_feat.vma_cost * 2);
	} else {
		fprintf(stderr, "/proc/slabinfo not readable: the kernel's figure not measured\n");
	}
	for (size_t i = 0; i < N; i++) {
		want(page, i);
		CHECK(memcmp(buf + i * T_PAGE, page, T_PAGE) == 0);
	}
	CHECK(dedup_shutdown() == 0);
	return T_PASS;
}
