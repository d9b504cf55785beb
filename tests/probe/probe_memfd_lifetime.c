/* SPDX-License-Identifier: MIT */
/*
 * probe_memfd_lifetime.c - a memfd's pages live as long as anybody maps
 * them, whoever created the file and whoever holds descriptors (a VMA holds
 * a reference to its struct file: mm/vma.c __mmap_new_file_vma() takes it
 * with get_file(), remove_vma() drops it; mm/shmem.c shmem_evict_inode()
 * truncates the pages only when the inode goes).
 *
 *  1. Process A creates a memfd, fills it, seals it, sends it to B by
 *     SCM_RIGHTS and exits. B maps it MAP_PRIVATE and closes its
 *     descriptor: no descriptor of the file exists anywhere. B still reads
 *     A's content, also in pages it had not touched before the close.
 *  2. /proc/self/maps names the mapping "/memfd:NAME (deleted)" with the
 *     inode number fstat() gave for the descriptor: a process can tell
 *     which segment a mapping belongs to without any descriptor.
 *  3. B forks C (C inherits the mapping, nobody tells anyone), then B
 *     unmaps: C still reads the content, including pages neither touched.
 *
 * Why libdedup's group store depends on it (docs/sharing.md, "Reclaim" and
 * "Crash safety"): no slot is freed while anyone maps it because the kernel
 * counts the mappings, not us: the helper, the creator of a segment or any
 * member may die at any instant, and a forked child that never joined the
 * group keeps what it inherited. The group's bookkeeping only decides how
 * long the helper keeps a segment's descriptor (so new members can match
 * it); a wrong guess costs sharing or memory, never content. Fact 2 is how
 * a member (or a restarted member's engine) finds the segments it maps.
 */
#include "pshare.h"

#define NP 8

static int creator(void *arg, int s)
{
	(void)arg;
	int fd = p_memfd("probe-lifetime", NP, 700);
	CHECK(fcntl(fd, F_ADD_SEALS, P_SEALS) == 0);
	p_send_fd(s, fd, 0);
	close(fd);
	return T_PASS;   /* and A is gone */
}

static int inheritor(void *arg, int s)
{
	const unsigned char *b = arg;
	CHECK(p_hear(s) == 'u');   /* B unmapped */
	for (size_t i = 0; i < NP; i++)
		CHECK(p_mem_is(b + i * T_PAGE, 700 + i));
	return T_PASS;
}

/* The inode of the /proc/self/maps line starting at @start, its path in *name. */
static unsigned long maps_inode(const void *start, char *name, size_t n)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	unsigned long ino = 0;
	CHECK(f != NULL);
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo;
		int off = 0;
		if (sscanf(line, "%lx-%*x %*s %*x %*x:%*x %lu %n", &lo, &ino, &off) < 2 ||
		    lo != (uintptr_t)start) {
			ino = 0;
			continue;
		}
		snprintf(name, n, "%s", line + off);
		name[strcspn(name, "\n")] = 0;
		break;
	}
	fclose(f);
	return ino;
}

int main(void)
{
	int s;
	pid_t a = p_fork(creator, NULL, &s);
	int fd = p_recv_fd(s, NULL);
	CHECK(fd >= 0);
	close(s);
	CHECK(p_wait(a) == T_PASS);   /* A exited */

	/* 1. */
	struct stat st;
	CHECK(fstat(fd, &st) == 0);
	unsigned char *b = mmap(NULL, NP * T_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	CHECK(b != MAP_FAILED);
	CHECK(p_mem_is(b, 700));   /* page 0 read while the descriptor exists */
	close(fd);
	for (size_t i = 1; i < NP / 2; i++)
		CHECK(p_mem_is(b + i * T_PAGE, 700 + i));

	/* 2. */
	char name[256] = "";
	unsigned long ino = maps_inode(b, name, sizeof(name));
	printf("maps: inode %lu \"%s\" (fstat said %lu)\n", ino, name, (unsigned long)st.st_ino);
	CHECK(ino == (unsigned long)st.st_ino);
	CHECK(strncmp(name, "/memfd:probe-lifetime", 21) == 0);

	/* 3. */
	pid_t c = p_fork(inheritor, b, &s);
	CHECK(munmap(b, NP * T_PAGE) == 0);
	p_say(s, 'u');
	close(s);
	int v = p_wait(c);
	if (v == T_PASS)
		printf("PASS: a sealed memfd outlives its creator and every descriptor while "
		       "mapped, also by a fork()ed child alone; maps names its inode\n");
	return v;
}
