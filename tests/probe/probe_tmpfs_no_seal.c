/* SPDX-License-Identifier: MIT */
/*
 * probe_tmpfs_no_seal.c - a regular file on tmpfs (/dev/shm,
 * $XDG_RUNTIME_DIR) cannot be sealed: every shmem inode starts with
 * F_SEAL_SEAL set (mm/shmem.c __shmem_get_inode(): info->seals =
 * F_SEAL_SEAL) and only memfd_create(MFD_ALLOW_SEALING or MFD_NOEXEC_SEAL)
 * clears it (mm/memfd.c). F_GET_SEALS reports F_SEAL_SEAL and F_ADD_SEALS
 * fails with EPERM.
 *
 * Why it matters (docs/sharing.md, "Choices"): a group store kept as files
 * in $XDG_RUNTIME_DIR could protect its canonical pages only with file
 * modes, which a same-uid process changes at will; the kernel guarantee
 * the design relies on (a sealed file) exists only for memfds, which
 * travel by SCM_RIGHTS - hence a helper process that hands them out.
 */
#include "tcommon.h"

#include <sys/stat.h>
#include <sys/vfs.h>

#ifndef TMPFS_MAGIC
#define TMPFS_MAGIC 0x01021994
#endif

static bool is_tmpfs(const char *dir)
{
	struct statfs s;
	return dir && statfs(dir, &s) == 0 && s.f_type == TMPFS_MAGIC && access(dir, W_OK) == 0;
}

int main(void)
{
	char run[64];
	snprintf(run, sizeof(run), "/run/user/%u", (unsigned)getuid());
	const char *cands[] = { getenv("XDG_RUNTIME_DIR"), run, "/dev/shm", "/tmp" }, *dir = NULL;
	for (size_t i = 0; i < sizeof(cands) / sizeof(cands[0]) && !dir; i++)
		if (is_tmpfs(cands[i]))
			dir = cands[i];
	if (!dir)
		t_skip("no writable tmpfs directory ($XDG_RUNTIME_DIR, %s, /dev/shm, /tmp)", run);

	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0) {
		char path[256];
		snprintf(path, sizeof(path), "%s/libdedup-probe-XXXXXX", dir);
		fd = mkostemp(path, O_CLOEXEC);
		CHECK(fd >= 0);
		unlink(path);
	}
	CHECK(ftruncate(fd, (off_t)T_PAGE) == 0);
	int seals = fcntl(fd, F_GET_SEALS);
	printf("regular tmpfs file in %s: F_GET_SEALS = %#x\n", dir, (unsigned)seals);
	CHECK(seals == F_SEAL_SEAL);
	errno = 0;
	CHECK(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE) == -1 && errno == EPERM);
	CHECK(fcntl(fd, F_GET_SEALS) == F_SEAL_SEAL);
	close(fd);
	printf("PASS: tmpfs files come sealed against sealing; only memfds can be sealed\n");
	return T_PASS;
}
