/* SPDX-License-Identifier: MIT */
/*
 * repro_fork_store: a fork()ed child must keep reading what its memory held
 * at fork time, whatever the parent's engine does afterwards.
 *
 * Found by the torture suite (seed 1001 of the long run, action fork: the
 * child read a page of zeros where the parent, checked at the same instant,
 * had the right content). A merged page the child has not touched yet is an
 * empty PTE in a private mapping of the parent's memfd: the child's first
 * read faults in whatever the memfd holds then. The parent's engine counts
 * only the parent's references: when the parent's sharers are copied by
 * writes, it frees (punches) the canonical page, and may reuse the slot for
 * new content. The child then reads zeros, or another page.
 *
 * Steps: A and B hold the same content X; two passes merge them. fork().
 * The parent writes to A and B (copies), runs a pass (the slot loses its
 * last reference and is punched), merges new pages C, D with content Y (the
 * slot may be reused), then lets the child look: A and B must read X.
 */
#include <sys/wait.h>

#include "tdedup.h"

int main(void)
{
	char x[T_PAGE], y[T_PAGE];
	int go[2];

	t_fill(x, 11);
	t_fill(y, 22);
	t_engine_start(3600000);
	char *m = t_map_anon(4 * T_PAGE), *a = m, *b = m + 2 * T_PAGE;
	memcpy(a, x, T_PAGE);
	memcpy(b, x, T_PAGE);
	CHECK(dedup_register(a, T_PAGE) == 0);
	CHECK(dedup_register(b, T_PAGE) == 0);
	dedup_scan_now();
	dedup_scan_now();
	CHECK(t_stats().pages_sharing == 2);
	/* from here the parent does not read a or b before the fork */
	CHECK(pipe(go) == 0);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		char c;
		close(go[1]);
		CHECK(read(go[0], &c, 1) == 1);
		int bad = 0;
		for (int i = 0; i < 2; i++) {
			const char *p = i ? b : a;
			if (memcmp(p, x, T_PAGE)) {
				bool zero = true;
				for (size_t k = 0; k < T_PAGE; k++)
					zero &= p[k] == 0;
				fprintf(stderr, "child: page %c does not hold what it held at fork: %s\n",
					"AB"[i], zero ? "it reads zeros (the slot was punched)"
					     : !memcmp(p, y, T_PAGE) ? "it reads the parent's new page (slot reused)"
								    : "other content");
				bad++;
			}
		}
		_exit(bad ? T_FAIL : T_PASS);
	}
	close(go[0]);
	/* the parent copies its sharers, and the engine notices */
	a[0] ^= 1;
	b[0] ^= 1;
	dedup_scan_now();
	dedup_scan_now();
	/* new duplicates: a new canonical page, maybe in the freed slot */
	char *n = t_map_anon(2 * T_PAGE);
	memcpy(n, y, T_PAGE);
	memcpy(n + T_PAGE, y, T_PAGE);
	CHECK(dedup_register(n, 2 * T_PAGE) == 0);
	dedup_scan_now();
	dedup_scan_now();
	t_print_stats("parent");
	CHECK(write(go[1], "g", 1) == 1);
	int st;
	CHECK(waitpid(pid, &st, 0) == pid);
	CHECK(dedup_shutdown() == 0);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "LOST DATA in the fork()ed child\n");
		return T_FAIL;
	}
	return T_PASS;
}
