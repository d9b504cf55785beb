#!/usr/bin/env bash
# bench/fork_child.sh [BUILD] [MIB] [ROUNDS] [CONTENT] [MODES] - the fork()
# cost of the child guard (libdedup/src/child.c): dedup-bench-fork without
# libdedup, preloaded, and preloaded with the guard switched off (whose
# status 3 shows the discarded pages reading merged content). CSV on stdout.
#
# CONTENT (default runs) is dedup-bench-fork's: runs (256 contents, long
# merged runs, few mappings) or isolated (every other page a duplicate, each
# merged page a mapping of its own: about MIB * 256 mappings, so 2048 MiB
# gives ~524k). For isolated, every run goes through
# tests/with_max_map_count.sh ${FORK_BENCH_MAX_MAP_COUNT:-1048576} (which
# restores the sysctl afterwards) with DEDUP_VMA_BUDGET=${DEDUP_VMA_BUDGET:-1000000}.
# MODES (default none,libdedup,no-guard): which of the three to run.
set -eu
build=${1:-build}; mib=${2:-512}; rounds=${3:-3}; content=${4:-runs}
modes=${5:-none,libdedup,no-guard}
exe=$build/bench/dedup-bench-fork
lib=$(cd "$build" && pwd)/libdedup.so
wrap=()
if [ "$content" = isolated ]; then
	wrap=("$(dirname "$0")/../tests/with_max_map_count.sh" "${FORK_BENCH_MAX_MAP_COUNT:-1048576}" --)
	export DEDUP_VMA_BUDGET=${DEDUP_VMA_BUDGET:-1000000}
fi
has() { case ",$modes," in *",$1,"*) return 0 ;; esac; return 1; }
echo "mode,mib,fork_ms,read_ms,dontneed_read_ms,status"
if has none; then
	FORK_BENCH_MODE=none ${wrap[@]+"${wrap[@]}"} "$exe" "$mib" "$rounds" "$content"
fi
if has libdedup; then
	FORK_BENCH_MODE=libdedup LD_PRELOAD=$lib DEDUP_START=0 DEDUP_INTERVAL=20 DEDUP_CPU=100 \
		${wrap[@]+"${wrap[@]}"} "$exe" "$mib" "$rounds" "$content"
fi
if has no-guard; then
	FORK_BENCH_MODE=no-guard LD_PRELOAD=$lib DEDUP_START=0 DEDUP_INTERVAL=20 DEDUP_CPU=100 \
		DEDUP_TEST_UNSAFE_NO_CHILD_GUARD=1 ${wrap[@]+"${wrap[@]}"} "$exe" "$mib" "$rounds" "$content"
fi
