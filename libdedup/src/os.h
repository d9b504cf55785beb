/* SPDX-License-Identifier: MIT */
/*
 * os.h - the OS boundary (os.c): every mapping call and userfaultfd ioctl of
 * libdedup, the present-page walk, page-table states, the reader of /proc
 * files, VMA queries, futexes, clocks.
 */
#ifndef DEDUP_OS_H
#define DEDUP_OS_H

#include "base.h"

/* ours: libdedup's own memory, told to dd_os_ours_hook; false: the program's */
void *dd_os_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off, bool ours);
int dd_os_munmap(void *addr, size_t len);
void *dd_os_mremap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr,
		   bool ours);
int dd_os_mprotect(void *addr, size_t len, int prot);
int dd_os_madvise(void *addr, size_t len, int advice);
/* the same, telling nobody: for the hook's own tables and a child in fork() */
void *dd_os_raw_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
/* ours, where the kernel would choose: in our own area (os.c, "Where our mappings go") */
void *dd_os_far_mmap(size_t len, int prot, int flags, int fd, off_t off);
void *dd_os_far_mremap(void *old, size_t old_len, size_t new_len);
int dd_os_raw_munmap(void *addr, size_t len);
void *dd_os_raw_mremap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr);
extern void (*dd_os_ours_hook)(uintptr_t lo, size_t len, bool add);   /* preload sets it */

/* vm.max_map_count, read now (the sysctl may change while we run) */
long dd_max_map_count_now(void);
/* Entries for a table that may hold one per mapping of the process: the
 * live vm.max_map_count and some room, bounded (such tables grow past it). */
size_t dd_maps_table_cap(void);
/*
 * Our own tables are never mapped smaller than this (MAP_NORESERVE: address
 * space, not memory). A mapping is placed in the highest gap it fits in, and
 * a small one fits in a hole the program has just made (an munmap, or in a
 * fork()ed child the hole of a MADV_DONTFORK range) and is about to map
 * again with MAP_FIXED: at vm.max_map_count 1000 the child guard's table
 * (80 KiB) took a DONTFORK range's place (pl_semantics at 1000). vm.c's
 * reservations are at least this big too.
 */
#define DD_OWN_MIN_MAP ((size_t)8 << 20)
static inline size_t dd_own_table_cap(size_t cap, size_t elem)
{
	return cap * elem < DD_OWN_MIN_MAP ? DD_OWN_MIN_MAP / elem : cap;
}
/* fn gets each line: lo, hi, "rwxp", and the rest (" offset dev inode [name]");
 * non-zero from fn stops the walk (a negative value is returned). */
typedef int (*dd_maps_fn)(void *ctx, uintptr_t lo, uintptr_t hi, const char *perms,
			  const char *rest);
int dd_maps_each(dd_maps_fn fn, void *ctx);
/* The one reader of /proc files (os.c): each line, no stdio, no malloc. */
typedef int (*dd_line_fn)(void *ctx, char *line);   /* non-zero stops */
int dd_proc_lines(const char *path, dd_line_fn fn, void *ctx);
struct dd_maps_line {
	uintptr_t lo, hi;
	char perms[5];         /* "rwxp" */
	const char *rest;      /* " offset dev inode name" */
	unsigned long inode;
	const char *name;      /* "" for anonymous memory */
};
bool dd_maps_header(const char *line, struct dd_maps_line *m);   /* maps/smaps header? */
struct dd_vmflag_name { char n[3]; unsigned f; };
unsigned dd_vmflags_parse(const char *p, const struct dd_vmflag_name *names, size_t n);
int dd_perms_prot(const char *perms);   /* PROT_* of "rwxp" */

struct dd_features {
	uint64_t uffd_features;   /* what UFFDIO_API granted */
	bool kernel_faults;       /* uffd handles kernel-mode faults */
	bool pagemap_scan;        /* PAGEMAP_SCAN ioctl works */
	bool vm_readv;            /* process_vm_readv() on ourselves works */
	long max_map_count;
	long vma_cost;            /* kernel bytes per mapping (vm_area_struct + tree) */
};
extern struct dd_features dd_feat;

int dd_uffd_open(int *fd_out, uint64_t extra_features, const char **why);
int dd_uffd_register(int uffd, uintptr_t start, size_t len, uint64_t mode);
int dd_uffd_unregister(int uffd, uintptr_t start, size_t len);
int dd_uffd_wp(int uffd, uintptr_t start, size_t len, bool protect);
int dd_uffd_wake(int uffd, uintptr_t start, size_t len);
/* Move pages; returns bytes moved (>= 0) and sets *err to the errno of the
 * first page that did not move (0 if all moved). */
ssize_t dd_uffd_move(int uffd, uintptr_t dst, uintptr_t src, size_t len, int *err);
/* The same with UFFDIO_MOVE_MODE_* flags (ALLOW_SRC_HOLES: empty source
 * pages are skipped, and counted as moved). */
ssize_t dd_uffd_move_mode(int uffd, uintptr_t dst, uintptr_t src, size_t len, uint64_t mode,
			  int *err);
/* Fill from src (UFFDIO_COPY), or map the pages the file already has
 * (UFFDIO_CONTINUE), waking the waiters unless !wake; the same convention. */
ssize_t dd_uffd_copy(int uffd, uintptr_t dst, const void *src, size_t len, bool wake, int *err);
ssize_t dd_uffd_continue(int uffd, uintptr_t start, size_t len, bool wake, int *err);
int dd_uffd_zeropage(int uffd, uintptr_t start, size_t len);   /* 0 or -errno */
/* a fault on a merged page: its file page, or zeros; woken. 0 or -errno */
int dd_uffd_resolve(int uffd, uintptr_t a, bool zeros);
extern const char dd_zero_page[DD_PAGE];   /* page-aligned zeros */

/* Present-page walk: calls fn(start, end, categories) for each run of
 * present pages in [start, end), in address order, up to max_pages pages
 * (the last run may be cut), and sets *walk_end to where it stopped (end if
 * it got there). Its cost follows the pages present, not the range (with
 * the /proc/self/pagemap fallback it reads at most 64 entries per page it
 * may return, and may stop early for that). Without @file, DD_PG_FILE may
 * be left out: the caller knows no page of the range can be a file page it
 * cares about (PAGEMAP_SCAN then reads the PTEs only, not each page's
 * struct page). Returns 0 or -errno. */
#define DD_PG_FILE 1u
#define DD_PG_ZERO 2u
typedef void (*dd_present_fn)(void *ctx, uintptr_t start, uintptr_t end, unsigned flags);
int dd_present_walk(uintptr_t start, uintptr_t end, size_t max_pages, bool file, dd_present_fn fn,
		    void *ctx, uintptr_t *walk_end);
#define DD_PTE_PRESENT 1u
#define DD_PTE_SWAP 2u
#define DD_PTE_WP 4u
#define DD_PTE_ZERO 8u
#define DD_PTE_FILE 16u   /* present, a file (memfd) page */
int dd_pte_states(uintptr_t start, size_t n, uint8_t *out);
int dd_pte_states_here(uintptr_t start, size_t n, uint8_t *out);   /* fresh descriptor */
/* first run of pages in [start, end) that are not empty (present, swapped,
 * or a marker), cost following the page tables: *lo = *hi = end if none */
int dd_first_mapped(uintptr_t start, uintptr_t end, uintptr_t *lo, uintptr_t *hi);
bool dd_page_is_zero(uintptr_t a);
bool dd_read_page(uintptr_t a, void *buf);
void dd_os_probe(void);
void dd_os_close(void);
void dd_os_reopen(void);   /* pagemap again, after the program closed ours */

/* VMA facts read from /proc/self/maps. */
long dd_count_maps(const char *needle, long *matching);
/* all mappings; *ours: those merging added (an upper bound) */
long dd_count_maps_ours(long *ours);
/* 0 if [start,end) is covered by private, writable, anonymous mappings. */
int dd_check_anon_private(uintptr_t start, uintptr_t end);
int dd_vma_prot(uintptr_t a);

/* Mappings by address (os.c): PROCMAP_QUERY where the kernel has it (one
 * ioctl per VMA, whatever the number of mappings), else the text of maps. */
struct dd_vma {
	uintptr_t lo, hi;
	int prot;          /* PROT_* */
	bool shared;
	bool file;         /* backed by a file (inode != 0) */
	bool anon;         /* private anonymous memory ([heap], [anon:...] too) */
	bool ours;         /* a mapping of a libdedup memfd (a merged run) */
	bool named;        /* [anon:NAME] (prctl PR_SET_VMA_ANON_NAME) */
	uint64_t offset;   /* file offset of lo */
	uint64_t ino;      /* the file's inode number (0: anonymous) */
	unsigned vmf;      /* DD_VMF_*, if vmf_known (dd_vmas_in_smaps only) */
	bool vmf_known;
};
typedef int (*dd_vma_fn)(void *ctx, const struct dd_vma *v);   /* non-zero stops */
int dd_procmap_open(void);   /* fd for dd_vma_query, or -ENOTTY (no PROCMAP_QUERY) */
/* The VMA covering a (or_next: or the first above it): 0, -ENOENT, -ENOTTY */
int dd_vma_query(int fd, uintptr_t a, bool or_next, struct dd_vma *v);
/* fn for each VMA overlapping [lo, hi), in address order. 0 or -errno. */
int dd_vmas_in(uintptr_t lo, uintptr_t hi, dd_vma_fn fn, void *ctx);
/* The same from the text of maps, whatever the kernel offers. */
int dd_vmas_in_text(uintptr_t lo, uintptr_t hi, dd_vma_fn fn, void *ctx);
/* The same from smaps, with each VMA's VmFlags (vmf_known): expensive. */
int dd_vmas_in_smaps(uintptr_t lo, uintptr_t hi, dd_vma_fn fn, void *ctx);
#define DD_VMF_NOHUGEPAGE 0x001u
#define DD_VMF_HUGEPAGE   0x002u
#define DD_VMF_DONTDUMP   0x004u
#define DD_VMF_DONTFORK   0x008u
#define DD_VMF_WIPEONFORK 0x010u
#define DD_VMF_SEQ_READ   0x020u
#define DD_VMF_RAND_READ  0x040u
#define DD_VMF_MERGEABLE  0x080u
#define DD_VMF_NORESERVE  0x100u
#define DD_VMF_ACCOUNT    0x200u
#define DD_VMF_LOCKED     0x400u
#define DD_VMF_OTHER      0x800u   /* dd_vmas_in_smaps: a flag none of these, nor plain */
int dd_vma_vmflags(uintptr_t a, unsigned *flags);   /* from smaps: expensive */
long dd_resident_pages(void);   /* /proc/self/statm, or -errno */
ssize_t dd_read_full(int fd, void *buf, size_t len);
/* futex on a word of ours: sleep while *w == val, up to ns (0: no limit) */
void dd_futex_wait(_Atomic uint32_t *w, uint32_t val, uint64_t ns);
void dd_futex_wake(_Atomic uint32_t *w);
ssize_t dd_write_full(int fd, const void *buf, size_t len);
uint64_t dd_now_ns(void);
uint64_t dd_thread_cpu_ns(void);

#endif /* DEDUP_OS_H */
