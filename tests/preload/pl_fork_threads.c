/* SPDX-License-Identifier: MIT */
/*
 * pl_fork_threads - fork() from several threads at once, on merged memory.
 *
 * Each of NTH threads owns NPG merged pages. In every round it discards one
 * of them (MADV_DONTNEED: zeros from now on), writes another (a palette
 * page: it merges again), and forks; the child checks every page of the
 * thread's own, against the thread's shadow, and exits. The threads fork
 * at the same time all along. A child learns which merged pages were
 * discarded from a snapshot its prepare handler copies: while two forks
 * shared that one buffer, a child read a discarded page's old content, or
 * zeros where its parent had written (engine.c, "One fork() at a time").
 * Half the pages at least are merged before the first fork. The threads
 * fork in bursts of BURST rounds; between bursts they give the engine a
 * turn, until it merges a page or for PAUSE_MS (no merge starts while a
 * fork is under way, and four threads forking back to back leave it none),
 * so that pages written meanwhile merge again. Runs until every thread has
 * made ROUNDS forks. (How many pages merge again during the run is
 * reported, not required: in about 1 run of 13 the engine merged none of
 * them, with its passes going on - a question left open, see the note of
 * 2026-12-08.)
 */
#include "pl.h"

#include <sys/mman.h>

#define NTH 4
#define NPG 256
#define ROUNDS 160
#define BURST 8
#define PAUSE_MS 300
#define PALETTE 4

struct th {
	char *a;
	uint64_t seed[NPG];   /* t_fill(seed), 0: zeros */
	uint64_t rng;
	pthread_t t;
	int id, result;
};

static uint64_t merges0, merged0;
static pthread_barrier_t burst;
static bool done;   /* thread 0 says, between bursts */

static uint64_t rnd(struct th *t)
{
	t->rng ^= t->rng << 13;
	t->rng ^= t->rng >> 7;
	t->rng ^= t->rng << 17;
	return t->rng;
}

static bool all_ok(const struct th *t, const char *who, int round)
{
	static __thread char want[T_PAGE];
	for (size_t i = 0; i < NPG; i++) {
		if (t->seed[i])
			t_fill(want, t->seed[i]);
		else
			memset(want, 0, T_PAGE);
		if (memcmp(t->a + i * T_PAGE, want, T_PAGE) != 0) {
			fprintf(stderr, "%d: FAIL (%s, round %d): page %zu of %p reads %#x..., not %s\n",
				(int)getpid(), who, round, i, (void *)t->a, t->a[i * T_PAGE] & 0xff,
				t->seed[i] ? "its content" : "zeros");
			return false;
		}
	}
	return true;
}

static void *run(void *arg)
{
	struct th *t = arg;
	double t0 = t_now();
	for (int round = 0;; round++) {
		if (round % BURST == 0) {   /* between bursts: the engine's turn */
			pthread_barrier_wait(&burst);
			if (t->id == 0) {
				uint64_t m0 = pl_stats().merges;
				double p0 = t_now();
				while (pl_stats().merges == m0 && t_now() - p0 < PAUSE_MS / 1000.0)
					usleep(2000);
				done = round >= ROUNDS;
				if (!done && t_now() - t0 > t_cap()) {
					fprintf(stderr, "FAIL: %d rounds after %.0f s\n", round, t_cap());
					exit(T_FAIL);
				}
			}
			pthread_barrier_wait(&burst);
			if (done)
				break;
		}
		size_t d = rnd(t) % NPG, w = rnd(t) % NPG;
		CHECK(madvise(t->a + d * T_PAGE, T_PAGE, MADV_DONTNEED) == 0);
		t->seed[d] = 0;
		t->seed[w] = 1 + rnd(t) % PALETTE;
		t_fill(t->a + w * T_PAGE, t->seed[w]);
		pid_t pid = fork();
		CHECK(pid >= 0);
		if (pid == 0)
			_exit(all_ok(t, "child", round) ? 0 : 1);
		int st;
		CHECK(waitpid(pid, &st, 0) == pid);
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || !all_ok(t, "parent", round))
			exit(T_FAIL);   /* the others wait at the barrier */
	}
	t->result = T_PASS;
	return NULL;
}

int main(void)
{
	static struct th th[NTH];
	pl_need_uffd();
	for (int k = 0; k < NTH; k++) {
		th[k].a = t_map_anon(NPG * T_PAGE);
		th[k].id = k;
		th[k].rng = 0x9e3779b97f4a7c15ULL * (k + 1);
		for (size_t i = 0; i < NPG; i++) {
			th[k].seed[i] = 1 + i % PALETTE;
			t_fill(th[k].a + i * T_PAGE, th[k].seed[i]);
		}
	}
	merges0 = pl_stats().merges;
	pl_wait_merged(merges0 + NTH * NPG / 2);
	merged0 = pl_stats().merges - merges0;
	merges0 += merged0;
	CHECK(pthread_barrier_init(&burst, NULL, NTH) == 0);
	for (int k = 0; k < NTH; k++)
		CHECK(pthread_create(&th[k].t, NULL, run, &th[k]) == 0);
	int result = T_PASS;
	for (int k = 0; k < NTH; k++) {
		CHECK(pthread_join(th[k].t, NULL) == 0);
		if (th[k].result != T_PASS)
			result = T_FAIL;
	}
	if (result == T_PASS)
		fprintf(stderr, "%d threads x %d forks, %llu pages merged before, %llu meanwhile: "
			"PASS\n", NTH, ROUNDS, (unsigned long long)merged0,
			(unsigned long long)(pl_stats().merges - merges0));
	return result;
}
