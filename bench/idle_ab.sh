#!/usr/bin/env bash
# bench/idle_ab.sh [BUILD] [RUNS] [MiB] [SETTLE_S] [TLB_ROUNDS] - what libdedup costs a
# program with nothing to merge, measured inside one process (bench/idle.c,
# AB mode): the loops before the engine starts and again once it has
# settled, on the same pages. Each run is a fresh process; RUNS of them
# preloaded (DEDUP_START between MiB and MiB + 128) and RUNS plain (the same
# A/B without libdedup: what the method itself shows when nothing changes).
# Prints each run's B/A ratios and the medians, of wall time and of the
# loop thread's CPU time (which leaves out the time others' processes kept
# it waiting, not what they did to the caches). Defaults: build 7 1024 20 8.
set -euo pipefail
build=${1:-build}; runs=${2:-7}; mib=${3:-1024}; settle=${4:-20}; rounds=${5:-8}
exe=$build/bench/dedup-idle lib=$build/libdedup.so
[ -x "$exe" ] && [ -f "$lib" ] || { echo "idle_ab.sh: build $build first" >&2; exit 2; }
key() { sed -n "s/.*\\b$1=\\([0-9]*\\).*/\\1/p" <<<"$2"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.4f", a/b}'; }
med() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END{m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f (%.3f-%.3f)", m, a[1], a[NR]}'; }
declare -A R
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for ((i = 0; i < runs; i++)); do
	for m in preload plain; do
		if [ $m = preload ]; then
			out=$(LD_PRELOAD=$lib DEDUP_START=$((mib + 64))M "$exe" "$mib" "$settle" 128 "$rounds")
		else
			out=$("$exe" "$mib" "$settle" 128 "$rounds")
		fi
		c=$(ratio "$(key b_chase_ns "$out")" "$(key a_chase_ns "$out")")
		t=$(ratio "$(key b_tlb_ns "$out")" "$(key a_tlb_ns "$out")")
		cc=$(ratio "$(key b_chase_cpu_ns "$out")" "$(key a_chase_cpu_ns "$out")")
		tc=$(ratio "$(key b_tlb_cpu_ns "$out")" "$(key a_tlb_cpu_ns "$out")")
		R[$m,c]+="$c " R[$m,t]+="$t " R[$m,cc]+="$cc " R[$m,tc]+="$tc "
		echo "run $i $m: B/A chase $c tlb $t, cpu chase $cc tlb $tc (threads $(key threads_a "$out") -> $(key threads_b "$out")), load $(cut -d' ' -f1 /proc/loadavg)"
	done
done
echo "median B/A over $runs runs ($mib MiB, settled $settle s, tlb $rounds rounds), (lowest-highest):"
for m in preload plain; do
	echo "  $m: chase $(med "${R[$m,c]}")  tlb $(med "${R[$m,t]}")"
	echo "  $m, cpu time: chase $(med "${R[$m,cc]}")  tlb $(med "${R[$m,tc]}")"
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
