#!/usr/bin/env bash
# bench/idle.sh [BUILD] [PAIRS] [MiB] [SETTLE_S] - what libdedup costs a program
# with nothing to merge: bench/idle run plain and under LD_PRELOAD=libdedup.so
# in alternating pairs (plain first in even pairs, preloaded first in odd ones),
# the ratio preloaded/plain per pair, and the median ratio of each loop.
# Writes bench-out/idle.csv. Defaults: build 5 1024 8.
set -euo pipefail
build=${1:-build}; pairs=${2:-5}; mib=${3:-1024}; settle=${4:-8}
exe=$build/bench/dedup-idle lib=$build/libdedup.so
[ -x "$exe" ] && [ -f "$lib" ] || { echo "idle.sh: build $build first (cmake --build $build)" >&2; exit 2; }
mkdir -p bench-out
csv=bench-out/idle.csv
echo "pair,mode,chase_ns,tlb_ns" > "$csv"
run() {   # mode
	if [ "$1" = plain ]; then "$exe" "$mib" "$settle"
	else LD_PRELOAD=$lib DEDUP_START=0 "$exe" "$mib" "$settle"; fi
}
declare -a rc rt
for ((p = 0; p < pairs; p++)); do
	if ((p % 2)); then order="preload plain"; else order="plain preload"; fi
	for m in $order; do
		out=$(run $m)
		c=$(sed -n 's/.*chase_ns=\([0-9]*\).*/\1/p' <<<"$out")
		t=$(sed -n 's/.*tlb_ns=\([0-9]*\).*/\1/p' <<<"$out")
		echo "$p,$m,$c,$t" >> "$csv"
		eval "c_$m=$c t_$m=$t"
	done
	rc[p]=$(awk -v a="$c_preload" -v b="$c_plain" 'BEGIN{printf "%.4f", a/b}')
	rt[p]=$(awk -v a="$t_preload" -v b="$t_plain" 'BEGIN{printf "%.4f", a/b}')
	printf 'pair %d: chase %.3f s / %.3f s = %s   tlb %.3f s / %.3f s = %s\n' "$p" \
		"$(awk -v x="$c_preload" 'BEGIN{print x/1e9}')" "$(awk -v x="$c_plain" 'BEGIN{print x/1e9}')" "${rc[p]}" \
		"$(awk -v x="$t_preload" 'BEGIN{print x/1e9}')" "$(awk -v x="$t_plain" 'BEGIN{print x/1e9}')" "${rt[p]}"
done
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
echo "median ratio preloaded/plain over $pairs pairs ($mib MiB, settled $settle s): chase $(med "${rc[@]}")  tlb $(med "${rt[@]}")"
echo "(per-run figures in $csv)"
