/* SPDX-License-Identifier: MIT */
/*
 * pl_plain - a plain workload that knows nothing of libdedup: identical
 * buffers, a fork, verification. Prints "ok <checksum>" on stdout. Used where
 * only the program's own behaviour matters (userfaultfd unavailable: it must
 * run normally, with one line from libdedup on stderr).
 */
#include "tcommon.h"
#include <sys/wait.h>

int main(void)
{
	enum { N = 16, SZ = 1 << 20 };
	char *b[N];
	uint64_t sum = 0;

	for (int i = 0; i < N; i++) {
		b[i] = malloc(SZ);
		CHECK(b[i]);
		for (int j = 0; j < SZ; j++)
			b[i][j] = (char)(j * 7 + j / 4096);
	}
	usleep(300 * 1000);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0)
		_exit(b[N - 1][SZ - 1] == (char)((SZ - 1) * 7 + (SZ - 1) / 4096) ? 0 : 1);
	int st;
	CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	for (int i = 0; i < N; i++)
		for (int j = 0; j < SZ; j++) {
			CHECK(b[i][j] == (char)(j * 7 + j / 4096));
			sum += (unsigned char)b[i][j];
		}
	printf("ok %llu\n", (unsigned long long)sum);
	for (int i = 0; i < N; i++)
		free(b[i]);   /* no leak for LeakSanitizer (pl_sanitizers.sh) */
	return 0;
}
