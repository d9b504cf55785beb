#!/usr/bin/env bash
# per_pass.sh LIB [MiB] [FROM_S] [TO_S] - a settled engine's cost per full pass:
# bench/idle (next to LIB) with MiB of distinct pages under LD_PRELOAD=LIB; at
# FROM_S and TO_S after start, full_passes (dedup-stat) and the CPU time of the
# dedup-* threads (/proc/PID/task/*/stat); in between, from FROM_S + 10 s,
# `strace -c -f` for 60 s, with full_passes before and after it.
set -uo pipefail
lib=$1 mib=${2:-1024} from=${3:-100} to=${4:-280}
exe=$(dirname "$lib")/bench/dedup-idle stat=/tmp/idle-rel/tools/dedup-stat
echo "lib $lib, $mib MiB, load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
LD_PRELOAD=$lib DEDUP_START=0 nice -n 5 "$exe" "$mib" $((to + 60)) >/dev/null &
pid=$!
hz=$(getconf CLK_TCK)
cpu() { local s=0; for t in /proc/$pid/task/*; do c=$(cat "$t/comm" 2>/dev/null) || continue
	[[ $c == dedup-* ]] || continue; f=$(sed 's/.*) //' "$t/stat"); set -- $f; s=$((s + ${12} + ${13})); done; echo $s; }
passes() { "$stat" $pid | awk '$1 == "full_passes" {print $2}'; }
sleep "$from"
c0=$(cpu) p0=$(passes) t0=$(date +%s.%N)
sleep 10
q0=$(passes)
echo "strace -c -f for 60 s from $((from + 10)) s, load $(cut -d' ' -f1 /proc/loadavg)"
timeout -s INT 60 strace -c -f -p $pid 2>&1 | grep -v '^strace: Process' | sed -n '1,25p'
q1=$(passes)
echo "full passes during strace: $((q1 - q0))"
now=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN{print a-b}')
left=$(awk -v a=$to -v b=$from -v n=$now 'BEGIN{x=a-b-n; print (x > 0 ? x : 0)}')
sleep "$left"
c1=$(cpu) p1=$(passes) t1=$(date +%s.%N)
awk -v c=$((c1 - c0)) -v hz=$hz -v p=$((p1 - p0)) -v a="$t1" -v b="$t0" -v f=$from 'BEGIN{
	w = a - b; ms = c * 1000 / hz
	printf "from %d s for %.0f s: engine threads %.0f ms CPU = %.1f ms/s; %d full passes, %.0f ms CPU a pass\n", f, w, ms, ms / w, p, p ? ms / p : 0 }'
for t in /proc/$pid/task/*; do f=$(sed 's/.*) //' "$t/stat"); set -- $f; echo "  thread $(cat $t/comm): $(( (${12} + ${13}) * 1000 / hz )) ms CPU in all"; done
"$stat" $pid | grep -E ' (full_passes|pages_scanned|pages_skipped_smart|metadata_bytes) '
kill $pid; wait $pid 2>/dev/null
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
