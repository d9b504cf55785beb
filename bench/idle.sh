#!/usr/bin/env bash
# bench/idle.sh [BUILD] [PAIRS] [MiB] [SETTLE_S] - what libdedup costs a program
# with nothing to merge: bench/idle run plain and under LD_PRELOAD=libdedup.so
# in alternating pairs (plain first in even pairs, preloaded first in odd ones),
# the ratio preloaded/plain per pair, and the median ratio of each loop, in
# wall time and in the thread's CPU time (see bench/idle.c), with the spread
# (lowest-highest ratio). Writes bench-out/idle.csv (IDLE_CSV overrides).
# Defaults: build 5 1024 8.
#
# IDLE_BASE_LIB=path/libdedup.so adds a third run to each round, the same
# program under that library (an older build: before/after in one go, the
# plain run shared); the order rotates from round to round, and the ratios
# are given for both libraries.
set -euo pipefail
build=${1:-build}; pairs=${2:-5}; mib=${3:-1024}; settle=${4:-8}
exe=$build/bench/dedup-idle lib=$build/libdedup.so base=${IDLE_BASE_LIB:-}
[ -x "$exe" ] && [ -f "$lib" ] || { echo "idle.sh: build $build first (cmake --build $build)" >&2; exit 2; }
[ -z "$base" ] || [ -f "$base" ] || { echo "idle.sh: no $base" >&2; exit 2; }
csv=${IDLE_CSV:-bench-out/idle.csv}
mkdir -p "$(dirname "$csv")"
echo "round,mode,chase_ns,tlb_ns,chase_cpu_ns,tlb_cpu_ns,loadavg" > "$csv"
modes=(plain preload); [ -z "$base" ] || modes+=(base)
run() {   # mode
	case $1 in
	plain) "$exe" "$mib" "$settle" ;;
	preload) LD_PRELOAD=$lib DEDUP_START=0 "$exe" "$mib" "$settle" ;;
	base) LD_PRELOAD=$base DEDUP_START=0 "$exe" "$mib" "$settle" ;;
	esac
}
key() { sed -n "s/.*\\b$1=\\([0-9]*\\).*/\\1/p" <<<"$2"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.4f", a/b}'; }
s() { awk -v x="$1" 'BEGIN{printf "%.3f", x/1e9}'; }
declare -A R   # R[mode,loop] = space-separated ratios
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for ((p = 0; p < pairs; p++)); do
	n=${#modes[@]} order=()
	for ((i = 0; i < n; i++)); do order+=("${modes[(i + p) % n]}"); done
	for m in "${order[@]}"; do
		out=$(run "$m")
		c=$(key chase_ns "$out") t=$(key tlb_ns "$out")
		cc=$(key chase_cpu_ns "$out") tc=$(key tlb_cpu_ns "$out")
		echo "$p,$m,$c,$t,$cc,$tc,$(cut -d' ' -f1 /proc/loadavg)" >> "$csv"
		eval "c_$m=$c t_$m=$t cc_$m=$cc tc_$m=$tc"
	done
	line="round $p (${order[*]}):"
	for m in "${modes[@]:1}"; do
		eval "a=(\$c_$m \$t_$m \$cc_$m \$tc_$m)"
		r1=$(ratio "${a[0]}" "$c_plain") r2=$(ratio "${a[1]}" "$t_plain")
		r3=$(ratio "${a[2]}" "$cc_plain") r4=$(ratio "${a[3]}" "$tc_plain")
		R[$m,c]+="$r1 " R[$m,t]+="$r2 " R[$m,cc]+="$r3 " R[$m,tc]+="$r4 "
		line+=" $m/plain wall chase $(s "${a[0]}")/$(s "$c_plain") s = $r1, tlb $(s "${a[1]}")/$(s "$t_plain") s = $r2; cpu chase $r3, tlb $r4;"
	done
	echo "$line load $(cut -d' ' -f1 /proc/loadavg)"
done
med() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END{m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f (%.3f-%.3f)", m, a[1], a[NR]}'; }
echo "median ratio over $pairs rounds ($mib MiB, settled $settle s), (lowest-highest):"
for m in "${modes[@]:1}"; do
	lib_m=$lib; [ "$m" = preload ] || lib_m=$base
	echo "  $m ($lib_m)/plain:"
	echo "    wall: chase $(med "${R[$m,c]}")  tlb $(med "${R[$m,t]}")"
	echo "    cpu:  chase $(med "${R[$m,cc]}")  tlb $(med "${R[$m,tc]}")"
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "(per-run figures in $csv)"
