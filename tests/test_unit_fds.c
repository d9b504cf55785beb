/* SPDX-License-Identifier: MIT */
/*
 * test_unit_fds: libdedup's own descriptors (fds.c) against a program that
 * closes them behind our back with a raw system call and opens its own
 * files at the same numbers.
 *
 *  1. dd_fd_adopt() places a descriptor above the floor, close-on-exec,
 *     tagged; dd_fd_intact() says yes while it is ours, and no once the
 *     number was closed (raw) and names a file of the program's - even one
 *     of the same kind (another eventfd: every eventfd shares one inode).
 *  2. dd_fd_close() of such a number leaves the program's file open.
 *  3. dd_fd_move_away() (an interposed dup2() onto ours) moves ours and
 *     keeps it intact; dd_fd_forget() leaves the number open.
 *  4. dd_proc_lines() reads a file of 3,000 lines across many 8 KiB reads
 *     (dd_fd_read_temp reads at the offset it keeps: pread) and gives every
 *     line once, in order, with none cut.
 *  5. dd_fd_read_temp() on a temporary number that the program closed and
 *     reopened: -EBADF, and the program's file is untouched - its pipe keeps
 *     every byte, its regular file keeps its offset.
 *  6. READERS threads read the file with dd_proc_lines() at once, READS times
 *     each: every read gives every line. A temporary number one thread has
 *     just closed is often the next one the other opens, while the first
 *     thread's slot is still there (fds.c, temp_slot): the second thread
 *     used to read at the first one's offset, from the end of the file, and
 *     got no line at all.
 */
#include <sys/eventfd.h>
#include <sys/syscall.h>

#include "tcommon.h"
#include "internal.h"

static int raw_close(int fd)
{
	return (int)syscall(SYS_close, fd);
}

/* The program opens its file at number n (raw close of ours first). */
static void take_number(int n, int file)
{
	CHECK(raw_close(n) == 0);
	CHECK(dup2(file, n) == n);
}

struct lines { size_t n; bool ok; };

static int line_fn(void *ctx, char *line)
{
	struct lines *l = ctx;
	char want[64];
	snprintf(want, sizeof(want), "line %zu of the test file, padded to some length ......", l->n);
	if (strcmp(line, want) != 0) {
		fprintf(stderr, "line %zu: got '%.80s'\n", l->n, line);
		l->ok = false;
		return -1;
	}
	l->n++;
	return 0;
}

#define READERS 8   /* more than the cores: a closer is preempted now and then */
#define READS 2000

static const char *file6;

static void *reader6(void *arg)
{
	(void)arg;
	for (int k = 0; k < READS; k++) {
		struct lines l = { 0, true };
		int r = dd_proc_lines(file6, line_fn, &l);
		if (r != 0 || !l.ok || l.n != 3000) {
			fprintf(stderr, "FAIL: read %d of the file gave %zu lines of 3000 (%d)\n", k,
				l.n, r);
			return (void *)1;
		}
	}
	return NULL;
}

int main(void)
{
	/* 1 */
	int ours = -1;
	CHECK(dd_fd_adopt(&ours, eventfd(0, EFD_CLOEXEC)) >= 0);
	CHECK(ours >= dd_fd_floor());
	CHECK(fcntl(ours, F_GETFD) & FD_CLOEXEC);
	CHECK(dd_fd_intact(ours) && dd_fd_ours(ours));
	int theirs = eventfd(0, 0);   /* the same kind of file: the same inode */
	CHECK(theirs >= 0);
	int n = ours;
	take_number(n, theirs);
	CHECK(!dd_fd_intact(n));
	/* 2 */
	dd_fd_close(&ours);
	CHECK(ours == -1 && fcntl(n, F_GETFD) >= 0);   /* the program's, still open */
	CHECK(close(n) == 0 && close(theirs) == 0);

	/* 3 */
	CHECK(dd_fd_adopt(&ours, eventfd(0, EFD_CLOEXEC)) >= 0);
	n = ours;
	CHECK(dd_fd_move_away(n) == 0);
	CHECK(ours != n && dd_fd_intact(ours));
	CHECK(raw_close(n) == 0);   /* the program's dup2() took it */
	CHECK(dd_fd_intact(ours));
	int keep = ours;
	dd_fd_forget(&ours);
	CHECK(fcntl(keep, F_GETFD) >= 0);
	CHECK(raw_close(keep) == 0);

	/* 4 */
	char path[] = "/tmp/test_unit_fds.XXXXXX";
	int f = mkstemp(path);
	CHECK(f >= 0);
	FILE *w = fdopen(f, "w");
	CHECK(w != NULL);
	for (size_t i = 0; i < 3000; i++)
		fprintf(w, "line %zu of the test file, padded to some length ......\n", i);
	CHECK(fclose(w) == 0);
	struct lines l = { 0, true };
	CHECK(dd_proc_lines(path, line_fn, &l) == 0);
	CHECK(l.ok && l.n == 3000);

	/* 5: a pipe with the program's bytes at our temporary number */
	int t = dd_fd_open_temp(path, O_RDONLY);
	CHECK(t >= dd_fd_floor());
	char buf[256];
	CHECK(dd_fd_read_temp(t, buf, 10) == 10);
	int p[2];
	CHECK(pipe(p) == 0);
	CHECK(write(p[1], "program's", 9) == 9);
	take_number(t, p[0]);
	CHECK(dd_fd_read_temp(t, buf, sizeof(buf)) == -EBADF);
	dd_fd_close_temp(t);   /* not ours: stays open */
	CHECK(read(t, buf, sizeof(buf)) == 9 && memcmp(buf, "program's", 9) == 0);
	CHECK(close(t) == 0 && close(p[0]) == 0 && close(p[1]) == 0);
	/* and a regular file of the program's: its offset stays */
	t = dd_fd_open_temp(path, O_RDONLY);
	CHECK(t >= 0);
	int g = open(path, O_RDONLY);
	CHECK(g >= 0 && lseek(g, 5, SEEK_SET) == 5);
	take_number(t, g);
	CHECK(dd_fd_read_temp(t, buf, sizeof(buf)) == -EBADF);
	dd_fd_close_temp(t);
	CHECK(lseek(g, 0, SEEK_CUR) == 5 && lseek(t, 0, SEEK_CUR) == 5);
	CHECK(close(t) == 0 && close(g) == 0);

	/* 6 */
	file6 = path;
	pthread_t th[READERS];
	for (int i = 0; i < READERS; i++)
		CHECK(pthread_create(&th[i], NULL, reader6, NULL) == 0);
	for (int i = 0; i < READERS; i++) {
		void *res;
		CHECK(pthread_join(th[i], &res) == 0);
		CHECK(res == NULL);
	}
	unlink(path);
	printf("PASS\n");
	return T_PASS;
}
