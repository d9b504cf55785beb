/* SPDX-License-Identifier: MIT */
/*
 * probe_seal_scm_rights.c - seals travel with the file, descriptors' modes
 * do not protect it (mm/memfd.c memfd_add_seals(): seals live in the shmem
 * inode, "can only be added, but never removed"; F_ADD_SEALS needs
 * FMODE_WRITE).
 *
 *  1. A memfd sealed with F_SEAL_SEAL|SHRINK|GROW|WRITE and passed to
 *     another process by SCM_RIGHTS shows the same seals there
 *     (F_GET_SEALS). The receiver holds an O_RDWR descriptor (memfd_create
 *     gives one), yet write, pwrite, ftruncate (both ways), hole punching
 *     and MAP_SHARED PROT_WRITE all fail with EPERM; adding a seal fails
 *     with EPERM (F_SEAL_SEAL); no call removes one. Reopening the file
 *     through /proc/self/fd/N with O_RDWR works but the new descriptor is
 *     just as sealed. The receiver can still map it MAP_PRIVATE and write
 *     its own copy; the sender reads the content it wrote.
 *  2. The alternative of "read-only descriptors": an unsealed memfd sent as
 *     an O_RDONLY descriptor refuses pwrite (EBADF), but the receiver, same
 *     uid, reopens /proc/self/fd/N with O_RDWR and writes the file; the
 *     sender sees the change. A descriptor's mode is no kernel guarantee
 *     between processes of one user; a seal is.
 *
 * Why libdedup's group store depends on it (docs/sharing.md, "Sealing" and
 * "Choices"): the guarantee that no member can change a canonical page
 * after publication is the seal, checked by every receiver with
 * F_GET_SEALS before it reads or maps a segment; read-only descriptors
 * alone would not give it.
 */
#include "pshare.h"

#define NP 4

static int receiver(void *arg, int s)
{
	(void)arg;
	unsigned char pg[T_PAGE];
	char path[64];

	/* 1. sealed */
	int fd = p_recv_fd(s, NULL);
	CHECK(fd >= 0);
	CHECK((fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDWR);
	CHECK(fcntl(fd, F_GET_SEALS) == P_SEALS);
	for (size_t i = 0; i < NP; i++)
		CHECK(p_file_is(fd, i, 300 + i));
	t_fill(pg, 1);
	errno = 0;
	CHECK(write(fd, pg, T_PAGE) == -1 && errno == EPERM);
	errno = 0;
	CHECK(pwrite(fd, pg, T_PAGE, 0) == -1 && errno == EPERM);
	errno = 0;
	CHECK(ftruncate(fd, T_PAGE) == -1 && errno == EPERM);
	errno = 0;
	CHECK(ftruncate(fd, 2 * NP * T_PAGE) == -1 && errno == EPERM);
	errno = 0;
	CHECK(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, T_PAGE) == -1 &&
	      errno == EPERM);
	errno = 0;
	CHECK(mmap(NULL, T_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED &&
	      errno == EPERM);
	errno = 0;
	CHECK(fcntl(fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE) == -1 && errno == EPERM);
	/* a fresh O_RDWR open of the same file is just as sealed */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	int fd2 = open(path, O_RDWR | O_CLOEXEC);
	CHECK(fd2 >= 0);
	CHECK(fcntl(fd2, F_GET_SEALS) == P_SEALS);
	errno = 0;
	CHECK(pwrite(fd2, pg, T_PAGE, 0) == -1 && errno == EPERM);
	close(fd2);
	/* private copies are still possible */
	unsigned char *p = mmap(NULL, NP * T_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	CHECK(p != MAP_FAILED);
	CHECK(p_mem_is(p + T_PAGE, 301));
	memset(p + T_PAGE, 0x11, T_PAGE);
	CHECK(p[T_PAGE] == 0x11);
	CHECK(p_file_is(fd, 1, 301));
	CHECK(munmap(p, NP * T_PAGE) == 0);
	close(fd);
	p_say(s, 'a');

	/* 2. unsealed, sent O_RDONLY */
	fd = p_recv_fd(s, NULL);
	CHECK(fd >= 0);
	CHECK((fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDONLY);
	errno = 0;
	CHECK(pwrite(fd, pg, T_PAGE, 0) == -1 && errno == EBADF);
	errno = 0;
	CHECK(mmap(NULL, T_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED &&
	      errno == EACCES);
	errno = 0;
	CHECK(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE) == -1 && errno == EPERM);   /* needs FMODE_WRITE */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	fd2 = open(path, O_RDWR | O_CLOEXEC);
	CHECK(fd2 >= 0);
	CHECK(pwrite(fd2, pg, T_PAGE, 0) == (ssize_t)T_PAGE);
	close(fd2);
	close(fd);
	p_say(s, 'b');
	return T_PASS;
}

int main(void)
{
	int s;
	pid_t pid = p_fork(receiver, NULL, &s);

	/* 1. */
	int fd = p_memfd("probe-scm-sealed", NP, 300);
	CHECK(fcntl(fd, F_ADD_SEALS, P_SEALS) == 0);
	p_send_fd(s, fd, 0);
	CHECK(p_hear(s) == 'a');
	for (size_t i = 0; i < NP; i++)
		CHECK(p_file_is(fd, i, 300 + i));
	close(fd);

	/* 2. */
	fd = p_memfd("probe-scm-rdonly", NP, 400);
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	int ro = open(path, O_RDONLY | O_CLOEXEC);
	CHECK(ro >= 0);
	p_send_fd(s, ro, 0);
	close(ro);
	CHECK(p_hear(s) == 'b');
	CHECK(p_file_is(fd, 0, 1));   /* the receiver wrote page 0 */
	printf("an O_RDONLY descriptor of an unsealed memfd, received by SCM_RIGHTS, "
	       "was reopened O_RDWR through /proc/self/fd and written\n");
	close(fd);
	close(s);
	int v = p_wait(pid);
	if (v == T_PASS)
		printf("PASS: seals survive SCM_RIGHTS and bind every descriptor; "
		       "read-only descriptors do not protect the file\n");
	return v;
}
