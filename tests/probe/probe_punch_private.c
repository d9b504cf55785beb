/* SPDX-License-Identifier: MIT */
/*
 * probe_punch_private.c - what a process B that maps a memfd MAP_PRIVATE
 * reads after the file's owner A punches or truncates pages under it
 * (mm/shmem.c shmem_fallocate(): unmap_mapping_range(..., even_cows = 0),
 * "hole-punching leaves COWed pages"; shmem_setattr(): truncation unmaps
 * with even_cows = 1, "unmap again to remove racily COWed private pages";
 * shmem_fault() -> shmem_get_folio_gfp(SGP_CACHE) allocates a page in a
 * hole).
 *
 * B has page 0 mapped (read, not written), page 1 written (its private
 * copy), page 2 never touched, page 3 read. Then:
 *  1. A punches pages 0-2 (fallocate PUNCH_HOLE): B's page 0 reads zeros
 *     (its PTE was zapped and the next read found a hole), page 1 keeps
 *     B's private copy, page 2 reads zeros.
 *  2. B's reads of the holes put zero pages back into A's file (SEEK_DATA
 *     finds data at 0 again): a reader re-populates a freed slot. When A
 *     then stores new content there with pwrite(), B's page 0 shows it:
 *     a slot punched and reused while B maps it hands B another page's
 *     content.
 *  3. MADV_REMOVE through a MAP_SHARED view does what the punch does: B's
 *     page 3 reads zeros.
 *  4. ftruncate() to 0: B gets SIGBUS on page 0 and also on page 1, its
 *     private copy: truncation takes copies too.
 *  5. A memfd sealed with SEAL|SHRINK|GROW|WRITE refuses both (EPERM).
 *
 * Why libdedup's group store depends on it (docs/sharing.md, "Reclaim"):
 * in one process a slot is punched only when its last reference goes, and
 * the engine knows every reference. Across processes nobody can know that
 * no member maps a slot at the instant of a punch (facts 1-2 turn a wrong
 * guess into silent corruption, not a crash), and a truncation would kill
 * members (fact 4). So group segments are sealed (fact 5) and never punched
 * or shrunk: a segment's pages are freed by the kernel when its last
 * mapping and descriptor go, whoever held them.
 */
#include "pshare.h"

#include <setjmp.h>

#define NP 4

static sigjmp_buf jb;
static void on_bus(int sig) { siglongjmp(jb, sig); }

/* 1 if reading *p raised SIGBUS. */
static int bus_on_read(const volatile unsigned char *p)
{
	if (sigsetjmp(jb, 1))
		return 1;
	(void)*p;
	return 0;
}

static int member(void *arg, int s)
{
	(void)arg;
	int fd = p_recv_fd(s, NULL);
	CHECK(fd >= 0);
	unsigned char *b = mmap(NULL, NP * T_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	CHECK(b != MAP_FAILED);
	close(fd);
	CHECK(p_mem_is(b, 600));
	memset(b + T_PAGE, 0xab, T_PAGE);
	CHECK(p_mem_is(b + 3 * T_PAGE, 603));
	p_say(s, 'm');

	CHECK(p_hear(s) == 'p');   /* 1. punched 0-2 */
	CHECK(p_zero(b));
	CHECK(b[T_PAGE] == 0xab && b[2 * T_PAGE - 1] == 0xab);
	CHECK(p_zero(b + 2 * T_PAGE));
	CHECK(p_mem_is(b + 3 * T_PAGE, 603));
	p_say(s, 'r');

	CHECK(p_hear(s) == 'w');   /* 2. A stored new content in slot 0 */
	CHECK(p_mem_is(b, 777));
	p_say(s, 'n');

	CHECK(p_hear(s) == 'v');   /* 3. MADV_REMOVE of page 3 */
	CHECK(p_zero(b + 3 * T_PAGE));
	p_say(s, 'z');

	CHECK(p_hear(s) == 't');   /* 4. truncated */
	struct sigaction sa = { .sa_handler = on_bus };
	sigemptyset(&sa.sa_mask);
	CHECK(sigaction(SIGBUS, &sa, NULL) == 0);
	int bus0 = bus_on_read(b), bus1 = bus_on_read(b + T_PAGE);
	printf("after ftruncate(0): SIGBUS on the mapped page %s, on the private copy %s\n",
	       bus0 ? "yes" : "no", bus1 ? "yes" : "no");
	CHECK(bus0 && bus1);
	p_say(s, 'b');
	return T_PASS;
}

int main(void)
{
	int s;
	pid_t pid = p_fork(member, NULL, &s);
	int fd = p_memfd("probe-punch", NP, 600);
	p_send_fd(s, fd, 0);
	CHECK(p_hear(s) == 'm');

	/* 1. */
	CHECK(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 3 * T_PAGE) == 0);
	CHECK(lseek(fd, 0, SEEK_DATA) == (off_t)(3 * T_PAGE));
	p_say(s, 'p');
	CHECK(p_hear(s) == 'r');

	/* 2. B's read faults filled the holes of pages 0 and 2 */
	off_t d = lseek(fd, 0, SEEK_DATA);
	printf("after B read the punched pages: first data at offset %lld\n", (long long)d);
	CHECK(d == 0);
	CHECK(lseek(fd, T_PAGE, SEEK_DATA) == (off_t)(2 * T_PAGE));   /* page 1: B only copied */
	unsigned char pg[T_PAGE];
	t_fill(pg, 777);
	CHECK(pwrite(fd, pg, T_PAGE, 0) == (ssize_t)T_PAGE);
	p_say(s, 'w');
	CHECK(p_hear(s) == 'n');

	/* 3. */
	unsigned char *view = mmap(NULL, NP * T_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(view != MAP_FAILED);
	CHECK(madvise(view + 3 * T_PAGE, T_PAGE, MADV_REMOVE) == 0);
	CHECK(munmap(view, NP * T_PAGE) == 0);
	p_say(s, 'v');
	CHECK(p_hear(s) == 'z');

	/* 4. */
	CHECK(ftruncate(fd, 0) == 0);
	p_say(s, 't');
	CHECK(p_hear(s) == 'b');
	close(fd);
	close(s);
	int v = p_wait(pid);
	if (v != T_PASS)
		return v;

	/* 5. */
	fd = p_memfd("probe-punch-sealed", NP, 600);
	CHECK(fcntl(fd, F_ADD_SEALS, P_SEALS) == 0);
	errno = 0;
	CHECK(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, T_PAGE) == -1 &&
	      errno == EPERM);
	errno = 0;
	CHECK(ftruncate(fd, 0) == -1 && errno == EPERM);
	close(fd);
	printf("PASS: a punch zaps mapped pages (zeros, then whatever the slot holds next) "
	       "but keeps private copies; truncation SIGBUSes both; sealed files refuse both\n");
	return T_PASS;
}
