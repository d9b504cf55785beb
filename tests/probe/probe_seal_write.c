/* SPDX-License-Identifier: MIT */
/*
 * probe_seal_write.c - what the write seals of a memfd forbid and what they
 * leave alone (mm/memfd.c memfd_add_seals(), memfd_check_seals_mmap();
 * mm/shmem.c shmem_fallocate(), shmem_write_begin()).
 *
 * F_SEAL_FUTURE_WRITE, added while a MAP_SHARED PROT_WRITE mapping exists:
 *  - succeeds; write() and pwrite() fail with EPERM; a new MAP_SHARED
 *    PROT_WRITE mapping fails with EPERM; a new MAP_SHARED PROT_READ one
 *    cannot be mprotect()ed to PROT_WRITE (EACCES);
 *  - BUT the mapping that existed before the seal still writes the file:
 *    F_GET_SEALS cannot tell a receiver that nobody can write;
 *  - hole punching (fallocate, and MADV_REMOVE through that old mapping)
 *    fails with EPERM.
 * F_SEAL_WRITE:
 *  - fails with EBUSY while any MAP_SHARED mapping with VM_MAYWRITE exists:
 *    a PROT_WRITE one, and also a PROT_READ one made from an O_RDWR
 *    descriptor (it could be mprotect()ed writable); a PROT_READ MAP_SHARED
 *    mapping of an O_RDONLY descriptor and any MAP_PRIVATE mapping do not
 *    stop it;
 *  - once set: write/pwrite EPERM, MAP_SHARED PROT_WRITE EPERM, mprotect of
 *    a shared read-only mapping to PROT_WRITE EACCES, punching EPERM: no
 *    process can change the file's pages any more.
 * Under both seals a MAP_PRIVATE mapping made before the seal, and new ones
 * made after it, can be written: the write copies the page (COW), the file
 * keeps its content. F_SEAL_WRITE alone does not stop ftruncate(): only
 * F_SEAL_SHRINK does (what a shrink does to mappers: probe_punch_private).
 *
 * Why libdedup's group store depends on it (docs/sharing.md, "Sealing"):
 * a member maps a canonical page only after checking F_GET_SEALS for
 * F_SEAL_WRITE (not FUTURE_WRITE: that one lets a writable mapping made
 * before it keep writing) together with SHRINK (a truncation would take
 * members' pages, copies included), GROW and SEAL; the
 * publisher must therefore fill a segment with pwrite() and hold no
 * writable shared view of it (today's store keeps one: it must go); merged
 * pages stay MAP_PRIVATE mappings that a write copies, as in one process;
 * and a sealed segment cannot be punched: slots are reclaimed by the
 * segment's file going away, never one by one.
 */
#include "pshare.h"

#define NP 4

static void expect_err(long r, int e, const char *what)
{
	if (r != -1 || errno != e) {
		fprintf(stderr, "%s: got %ld errno %d (%s), expected errno %d (%s)\n",
			what, r, errno, strerror(errno), e, strerror(e));
		exit(T_FAIL);
	}
}

static void expect_map_err(void *p, int e, const char *what)
{
	expect_err(p == MAP_FAILED ? -1 : 0, e, what);
}

/* Refusals common to both write seals. */
static void refused(int fd, const char *seal)
{
	unsigned char pg[T_PAGE];
	char what[128];

	t_fill(pg, 999);
	snprintf(what, sizeof(what), "%s: write()", seal);
	CHECK(lseek(fd, 0, SEEK_SET) == 0);
	errno = 0;
	expect_err(write(fd, pg, T_PAGE), EPERM, what);
	snprintf(what, sizeof(what), "%s: pwrite()", seal);
	errno = 0;
	expect_err(pwrite(fd, pg, T_PAGE, 0), EPERM, what);
	snprintf(what, sizeof(what), "%s: new MAP_SHARED PROT_WRITE", seal);
	errno = 0;
	expect_map_err(mmap(NULL, T_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), EPERM,
		       what);
	/* a shared read-only mapping is allowed, but stays read-only */
	void *ro = mmap(NULL, T_PAGE, PROT_READ, MAP_SHARED, fd, 0);
	CHECK(ro != MAP_FAILED);
	snprintf(what, sizeof(what), "%s: mprotect(PROT_WRITE) of a new MAP_SHARED PROT_READ", seal);
	errno = 0;
	expect_err(mprotect(ro, T_PAGE, PROT_READ | PROT_WRITE), EACCES, what);
	CHECK(munmap(ro, T_PAGE) == 0);
	snprintf(what, sizeof(what), "%s: fallocate(PUNCH_HOLE)", seal);
	errno = 0;
	expect_err(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, T_PAGE), EPERM,
		   what);
}

/* Private mappings, old (@old, made before the seal, page 2 read) and new,
 * are written privately; the file keeps pages 2 and 3. */
static void private_cow(int fd, unsigned char *old)
{
	CHECK(p_mem_is(old + 2 * T_PAGE, 102));
	memset(old + 2 * T_PAGE, 0x5a, T_PAGE);   /* COW of a mapped page */
	memset(old + 3 * T_PAGE, 0x5b, T_PAGE);   /* COW of a never-read page */
	CHECK(old[2 * T_PAGE] == 0x5a && old[3 * T_PAGE + 7] == 0x5b);
	unsigned char *n = mmap(NULL, NP * T_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	CHECK(n != MAP_FAILED);
	CHECK(p_mem_is(n + 2 * T_PAGE, 102));
	memset(n + 2 * T_PAGE, 0x6a, T_PAGE);
	CHECK(n[2 * T_PAGE + 100] == 0x6a);
	CHECK(p_file_is(fd, 2, 102));
	CHECK(p_file_is(fd, 3, 103));
	CHECK(munmap(n, NP * T_PAGE) == 0);
}

int main(void)
{
	/* --- F_SEAL_FUTURE_WRITE --- */
	int fd = p_memfd("probe-future", NP, 100);
	unsigned char *priv = mmap(NULL, NP * T_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	unsigned char *shw = mmap(NULL, NP * T_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(priv != MAP_FAILED && shw != MAP_FAILED);
	CHECK(p_mem_is(priv + 2 * T_PAGE, 102));
	CHECK(fcntl(fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE) == 0);
	CHECK(fcntl(fd, F_GET_SEALS) == F_SEAL_FUTURE_WRITE);
	refused(fd, "F_SEAL_FUTURE_WRITE");
	/* the writable shared mapping from before the seal still writes */
	memset(shw + T_PAGE, 0x77, T_PAGE);
	unsigned char chk[T_PAGE];
	CHECK(pread(fd, chk, T_PAGE, T_PAGE) == (ssize_t)T_PAGE);
	CHECK(chk[0] == 0x77 && chk[T_PAGE - 1] == 0x77);
	printf("F_SEAL_FUTURE_WRITE: a MAP_SHARED PROT_WRITE mapping made before the seal "
	       "still writes the file\n");
	errno = 0;
	expect_err(madvise(shw, T_PAGE, MADV_REMOVE), EPERM,
		   "F_SEAL_FUTURE_WRITE: MADV_REMOVE through the old shared mapping");
	private_cow(fd, priv);
	CHECK(munmap(shw, NP * T_PAGE) == 0 && munmap(priv, NP * T_PAGE) == 0);
	close(fd);

	/* --- F_SEAL_WRITE --- */
	fd = p_memfd("probe-write", NP, 100);
	priv = mmap(NULL, NP * T_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	CHECK(priv != MAP_FAILED);
	CHECK(p_mem_is(priv + 2 * T_PAGE, 102));
	/* a writable shared mapping blocks it */
	shw = mmap(NULL, NP * T_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(shw != MAP_FAILED);
	errno = 0;
	expect_err(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE), EBUSY,
		   "F_SEAL_WRITE with a MAP_SHARED PROT_WRITE mapping");
	CHECK(munmap(shw, NP * T_PAGE) == 0);
	/* so does a read-only shared mapping of the O_RDWR descriptor */
	void *ro = mmap(NULL, NP * T_PAGE, PROT_READ, MAP_SHARED, fd, 0);
	CHECK(ro != MAP_FAILED);
	errno = 0;
	expect_err(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE), EBUSY,
		   "F_SEAL_WRITE with a MAP_SHARED PROT_READ mapping of an O_RDWR descriptor");
	CHECK(munmap(ro, NP * T_PAGE) == 0);
	printf("F_SEAL_WRITE: EBUSY while a MAP_SHARED mapping of an O_RDWR descriptor "
	       "exists, even PROT_READ\n");
	/* a read-only shared mapping of an O_RDONLY descriptor does not */
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	int rfd = open(path, O_RDONLY | O_CLOEXEC);
	CHECK(rfd >= 0);
	const unsigned char *view = mmap(NULL, NP * T_PAGE, PROT_READ, MAP_SHARED, rfd, 0);
	CHECK(view != MAP_FAILED);
	CHECK(fcntl(fd, F_ADD_SEALS, P_SEALS) == 0);
	CHECK(fcntl(fd, F_GET_SEALS) == P_SEALS);
	refused(fd, "F_SEAL_WRITE");
	errno = 0;
	expect_err(mprotect((void *)view, T_PAGE, PROT_READ | PROT_WRITE), EACCES,
		   "F_SEAL_WRITE: mprotect(PROT_WRITE) of the O_RDONLY shared view");
	CHECK(p_mem_is(view + 2 * T_PAGE, 102));   /* the view reads the file */
	private_cow(fd, priv);
	CHECK(p_mem_is(view + 2 * T_PAGE, 102));   /* unchanged by the copies */
	CHECK(munmap((void *)view, NP * T_PAGE) == 0 && munmap(priv, NP * T_PAGE) == 0);
	close(rfd);
	close(fd);

	/* F_SEAL_WRITE alone: the file can still be shrunk */
	fd = p_memfd("probe-write-only", NP, 100);
	CHECK(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE) == 0);
	CHECK(ftruncate(fd, T_PAGE) == 0);
	CHECK(lseek(fd, 0, SEEK_END) == (off_t)T_PAGE);
	CHECK(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) == 0);
	errno = 0;
	expect_err(ftruncate(fd, 0), EPERM, "F_SEAL_SHRINK: ftruncate(0)");
	close(fd);
	printf("PASS: write seals refuse write/pwrite/shared-write mmap/mprotect/punch; "
	       "private mappings copy on write; FUTURE_WRITE spares old writable mappings\n");
	return T_PASS;
}
