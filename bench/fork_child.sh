#!/usr/bin/env bash
# bench/fork_child.sh [BUILD] [MIB] [ROUNDS] - the fork() cost of the child
# guard (libdedup/src/child.c): dedup-bench-fork without libdedup, preloaded,
# and preloaded with the guard switched off (whose status 3 shows the
# discarded pages reading merged content). CSV on stdout.
set -eu
build=${1:-build}; mib=${2:-512}; rounds=${3:-3}
exe=$build/bench/dedup-bench-fork
lib=$(cd "$build" && pwd)/libdedup.so
echo "mode,mib,fork_ms,read_ms,dontneed_read_ms,status"
FORK_BENCH_MODE=none "$exe" "$mib" "$rounds"
FORK_BENCH_MODE=libdedup LD_PRELOAD=$lib DEDUP_START=0 DEDUP_INTERVAL=20 DEDUP_CPU=100 "$exe" "$mib" "$rounds"
FORK_BENCH_MODE=no-guard LD_PRELOAD=$lib DEDUP_START=0 DEDUP_INTERVAL=20 DEDUP_CPU=100 \
	DEDUP_TEST_UNSAFE_NO_CHILD_GUARD=1 "$exe" "$mib" "$rounds"
