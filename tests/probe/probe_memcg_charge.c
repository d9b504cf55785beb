/* SPDX-License-Identifier: MIT */
/*
 * probe_memcg_charge.c - whose memory cgroup pays for a memfd's pages
 * (mm/shmem.c shmem_get_folio_gfp(): fault_mm = vma ? vma->vm_mm : NULL,
 * then shmem_alloc_and_add_folio() -> mem_cgroup_charge(folio, fault_mm);
 * mm/memcontrol.c get_mem_cgroup_from_mm(): with mm NULL, the active memcg
 * or current->mm's). A page is charged once, when it is allocated into the
 * file, to the allocating task's memcg; mapping or reading it later charges
 * nobody, and the charge goes when the page is freed.
 *
 * With two fresh memory cgroups A and B (v2 with the memory controller, or
 * v1's memory hierarchy; needs root, else skipped):
 *  1. process A (in A) creates a memfd, fills 4 MiB with pwrite(), seals
 *     it, passes it on and exits: A's "shmem" (memory.stat) is 4 MiB;
 *  2. process B (in B) maps it MAP_PRIVATE and reads every page: B is not
 *     charged for them and A, whose process is gone, still is;
 *  3. the pages of another memfd that is all holes (made by this probe, in
 *     neither group) are charged to B when B's reads fault them in: the
 *     first to allocate pays, whoever created the file (this is also the
 *     probe's evidence that B's statistics were up to date in step 2);
 *  4. when B unmaps the sealed memfd, no descriptor or mapping of it is
 *     left: its pages are freed and A's charge drops to (about) zero.
 *
 * Why libdedup's group store depends on it (docs/sharing.md, "Memory
 * accounting"): a canonical page is charged to the memcg of the process
 * that wrote it into the segment (the publisher, or the helper if it wrote
 * it), for as long as any member maps it, also after that process exited;
 * members that map it pay nothing for it, a member's copy on write is its
 * own anonymous page. dedup-stat must say so, and count each canonical
 * page once.
 */
#include "pshare.h"

#define NPAGES 1024                       /* 4 MiB */
#define BYTES ((long long)NPAGES * 4096)

static char root[128], cg_a[192], cg_b[192];
static int ver;
static pid_t main_pid, kid_b;

static void cleanup(void)
{
	if (getpid() != main_pid)   /* a child's exit() runs this too */
		return;
	if (kid_b > 0 && kill(kid_b, SIGKILL) == 0)   /* failed: B must leave its group */
		waitpid(kid_b, NULL, 0);
	if (cg_a[0])
		rmdir(cg_a);
	if (cg_b[0])
		rmdir(cg_b);
}

static bool file_has_word(const char *path, const char *word)
{
	char buf[512];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = 0;
	for (char *t = strtok(buf, " \n"); t; t = strtok(NULL, " \n"))
		if (strcmp(t, word) == 0)
			return true;
	return false;
}

static bool write_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	bool ok = write(fd, s, strlen(s)) == (ssize_t)strlen(s);
	close(fd);
	return ok;
}

/* The "shmem" line of @cg's memory.stat, in bytes. */
static long long shmem_of(const char *cg)
{
	char path[256], key[64];
	long long v, got = -1;
	snprintf(path, sizeof(path), "%s/memory.stat", cg);
	FILE *f = fopen(path, "r");
	CHECK(f != NULL);
	while (fscanf(f, "%63s %lld", key, &v) == 2)
		if (strcmp(key, "shmem") == 0)
			got = v;
	fclose(f);
	CHECK(got >= 0);
	return got;
}

/* Wait until @cg's shmem is >= lo (or <= hi if lo < 0); false after t_cap(). */
static bool wait_shmem(const char *cg, long long lo, long long hi, long long *last)
{
	double end = t_now() + t_cap();
	do {
		*last = shmem_of(cg);
		if (lo >= 0 ? *last >= lo : *last <= hi)
			return true;
		usleep(20000);
	} while (t_now() < end);
	return false;
}

static void join(const char *cg)
{
	char path[256], pid[32];
	snprintf(path, sizeof(path), "%s/cgroup.procs", cg);
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	CHECK(write_str(path, pid));
}

static int proc_a(void *arg, int s)
{
	(void)arg;
	join(cg_a);
	int fd = p_memfd("probe-memcg-a", NPAGES, 800);
	CHECK(fcntl(fd, F_ADD_SEALS, P_SEALS) == 0);
	p_send_fd(s, fd, 0);
	close(fd);
	return T_PASS;
}

static int proc_b(void *arg, int s)
{
	(void)arg;
	join(cg_b);
	int sealed = p_recv_fd(s, NULL), holes = p_recv_fd(s, NULL);
	CHECK(sealed >= 0 && holes >= 0);
	unsigned char *a = mmap(NULL, NPAGES * T_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE,
				sealed, 0);
	unsigned char *h = mmap(NULL, NPAGES * T_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE,
				holes, 0);
	CHECK(a != MAP_FAILED && h != MAP_FAILED);
	close(sealed);
	close(holes);
	for (size_t i = 0; i < NPAGES; i++) {
		CHECK(p_mem_is(a + i * T_PAGE, 800 + i));   /* 2 */
		CHECK(h[i * T_PAGE] == 0);                   /* 3: allocates the page */
	}
	p_say(s, 'r');
	CHECK(p_hear(s) == 'u');
	CHECK(munmap(a, NPAGES * T_PAGE) == 0);             /* 4 */
	p_say(s, 'd');
	CHECK(p_hear(s) == 'x');
	return T_PASS;
}

int main(void)
{
	if (geteuid() != 0)
		t_skip("not root: cannot create memory cgroups");
	if (file_has_word("/sys/fs/cgroup/cgroup.controllers", "memory")) {
		ver = 2;
		snprintf(root, sizeof(root), "/sys/fs/cgroup");
		if (!file_has_word("/sys/fs/cgroup/cgroup.subtree_control", "memory") &&
		    !write_str("/sys/fs/cgroup/cgroup.subtree_control", "+memory"))
			t_skip("cgroup v2: cannot enable the memory controller for children");
	} else if (access("/sys/fs/cgroup/memory/cgroup.procs", W_OK) == 0) {
		ver = 1;
		snprintf(root, sizeof(root), "/sys/fs/cgroup/memory");
	} else {
		t_skip("no writable memory cgroup (v2 with memory, or v1 memory) here");
	}
	snprintf(cg_a, sizeof(cg_a), "%s/libdedup-probe-memcg-%d-A", root, (int)getpid());
	snprintf(cg_b, sizeof(cg_b), "%s/libdedup-probe-memcg-%d-B", root, (int)getpid());
	if (mkdir(cg_a, 0755) < 0) {
		cg_a[0] = 0;
		t_skip("cannot create %s/...: %s", root, strerror(errno));
	}
	main_pid = getpid();
	atexit(cleanup);
	CHECK(mkdir(cg_b, 0755) == 0);
	printf("cgroup v%d under %s\n", ver, root);
	long long v;

	/* B first: a process forked later would inherit the descriptors below */
	int sb, s;
	pid_t pb = p_fork(proc_b, NULL, &sb);
	kid_b = pb;

	/* 1. A fills a segment and exits */
	pid_t pa = p_fork(proc_a, NULL, &s);
	int sealed = p_recv_fd(s, NULL);
	CHECK(sealed >= 0);
	close(s);
	CHECK(p_wait(pa) == T_PASS);
	CHECK(wait_shmem(cg_a, BYTES * 9 / 10, 0, &v));
	printf("1. A wrote %lld KiB and exited: A shmem %lld KiB\n", BYTES / 1024, v / 1024);

	/* 2, 3. B reads A's segment and faults in a file of holes */
	int holes = memfd_create("probe-memcg-holes", MFD_CLOEXEC);
	CHECK(holes >= 0 && ftruncate(holes, BYTES) == 0);
	s = sb;
	p_send_fd(s, sealed, 0);
	p_send_fd(s, holes, 0);
	close(sealed);   /* B's mapping is now all that holds A's segment */
	CHECK(p_hear(s) == 'r');
	bool ok = wait_shmem(cg_b, BYTES * 9 / 10, 0, &v);   /* 3 */
	printf("3. B faulted in %lld KiB of holes: B shmem %lld KiB\n", BYTES / 1024, v / 1024);
	CHECK(ok);
	long long b = shmem_of(cg_b), a = shmem_of(cg_a);
	printf("2. B read %lld KiB of A's segment: B shmem %lld KiB, A shmem %lld KiB\n",
	       BYTES / 1024, b / 1024, a / 1024);
	CHECK(b < BYTES + BYTES / 10);    /* the holes, not A's pages too */
	CHECK(a >= BYTES * 9 / 10);       /* still A's, A long gone */

	/* 4. B unmaps: A's segment is freed, A's charge goes */
	p_say(s, 'u');
	CHECK(p_hear(s) == 'd');
	ok = wait_shmem(cg_a, -1, BYTES / 10, &v);
	printf("4. B unmapped A's segment: A shmem %lld KiB\n", v / 1024);
	CHECK(ok);
	p_say(s, 'x');
	close(s);
	CHECK(p_wait(pb) == T_PASS);
	kid_b = 0;
	close(holes);
	printf("PASS: memfd pages are charged to the memcg of the process that allocated "
	       "them, for as long as they live; mapping processes pay nothing\n");
	return T_PASS;
}
