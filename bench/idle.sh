#!/usr/bin/env bash
# bench/idle.sh [BUILD] [PAIRS] [MiB] [SETTLE_S] - what libdedup costs a program
# with nothing to merge: bench/idle run plain and under LD_PRELOAD=libdedup.so
# in alternating pairs (plain first in even pairs, preloaded first in odd ones),
# the ratio preloaded/plain per pair, and the median ratio of each loop, in
# wall time and in the thread's CPU time (see bench/idle.c), with the spread
# (lowest-highest ratio). Writes bench-out/idle.csv (IDLE_CSV overrides).
# Defaults: build 5 1024 8. IDLE_LIB=path runs that libdedup.so instead of
# BUILD's (the same bench program against another library, e.g. an older
# build).
set -euo pipefail
build=${1:-build}; pairs=${2:-5}; mib=${3:-1024}; settle=${4:-8}
exe=$build/bench/dedup-idle lib=${IDLE_LIB:-$build/libdedup.so}
[ -x "$exe" ] && [ -f "$lib" ] || { echo "idle.sh: build $build first (cmake --build $build)" >&2; exit 2; }
csv=${IDLE_CSV:-bench-out/idle.csv}
mkdir -p "$(dirname "$csv")"
echo "pair,mode,chase_ns,tlb_ns,chase_cpu_ns,tlb_cpu_ns,loadavg" > "$csv"
run() {   # mode
	if [ "$1" = plain ]; then "$exe" "$mib" "$settle"
	else LD_PRELOAD=$lib DEDUP_START=0 "$exe" "$mib" "$settle"; fi
}
key() { sed -n "s/.*\\b$1=\\([0-9]*\\).*/\\1/p" <<<"$2"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.4f", a/b}'; }
declare -a rc rt rcc rtc
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for ((p = 0; p < pairs; p++)); do
	if ((p % 2)); then order="preload plain"; else order="plain preload"; fi
	for m in $order; do
		out=$(run $m)
		c=$(key chase_ns "$out") t=$(key tlb_ns "$out")
		cc=$(key chase_cpu_ns "$out") tc=$(key tlb_cpu_ns "$out")
		echo "$p,$m,$c,$t,$cc,$tc,$(cut -d' ' -f1 /proc/loadavg)" >> "$csv"
		eval "c_$m=$c t_$m=$t cc_$m=$cc tc_$m=$tc"
	done
	rc[p]=$(ratio "$c_preload" "$c_plain") rt[p]=$(ratio "$t_preload" "$t_plain")
	rcc[p]=$(ratio "$cc_preload" "$cc_plain") rtc[p]=$(ratio "$tc_preload" "$tc_plain")
	printf 'pair %d: wall chase %.3f s / %.3f s = %s  tlb %.3f s / %.3f s = %s   cpu chase %s  tlb %s   load %s\n' "$p" \
		"$(awk -v x="$c_preload" 'BEGIN{print x/1e9}')" "$(awk -v x="$c_plain" 'BEGIN{print x/1e9}')" "${rc[p]}" \
		"$(awk -v x="$t_preload" 'BEGIN{print x/1e9}')" "$(awk -v x="$t_plain" 'BEGIN{print x/1e9}')" "${rt[p]}" \
		"${rcc[p]}" "${rtc[p]}" "$(cut -d' ' -f1 /proc/loadavg)"
done
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f (%.3f-%.3f)", m, a[1], a[NR]}'; }
echo "median ratio preloaded/plain over $pairs pairs ($mib MiB, settled $settle s), (lowest-highest):"
echo "  wall: chase $(med "${rc[@]}")  tlb $(med "${rt[@]}")"
echo "  cpu:  chase $(med "${rcc[@]}")  tlb $(med "${rtc[@]}")"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "(per-run figures in $csv)"
