#!/usr/bin/env bash
# settled.sh LIB [MiB] [END_S] [STRACE_AT_S] [STRACE_S] - what a settled engine costs, in
# robust counts: bench/idle (dedup-idle from the build next to LIB) maps MiB of
# distinct pages under LD_PRELOAD=LIB and sleeps; every 5 s the engine threads'
# CPU time (utime+stime of threads named dedup-*, /proc/PID/task/*/stat), per
# thread, as ms/s in that bucket; at STRACE_AT_S, `strace -c -f -p PID` for STRACE_S (10) s
# (system calls of the whole process: the program itself only sleeps).
set -uo pipefail
lib=$1 mib=${2:-1024} end=${3:-90} st=${4:-40} sts=${5:-10}
exe=$(dirname "$lib")/bench/dedup-idle
echo "lib $lib, $mib MiB, load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
LD_PRELOAD=$lib DEDUP_START=0 nice -n 5 "$exe" "$mib" $((end + 30)) >/dev/null &
pid=$!
t0=$(date +%s.%N)
hz=$(getconf CLK_TCK)
cpu() {  # sum of utime+stime of dedup-* threads, in ticks
	local s=0
	for t in /proc/$pid/task/*; do
		c=$(cat "$t/comm" 2>/dev/null) || continue
		[[ $c == dedup-* ]] || continue
		f=$(sed 's/.*) //' "$t/stat" 2>/dev/null) || continue
		set -- $f; s=$((s + ${12} + ${13}))
	done
	echo $s
}
el() { awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN{printf "%.1f", a-b}'; }
prev=$(cpu); tprev=$(el); traced=0
line="engine ms/s per 5 s bucket (end time s: ms/s):"
while :; do
	sleep 5
	now=$(el)
	c=$(cpu)
	line+=" $now:$(awk -v d=$((c - prev)) -v hz=$hz -v t="$(awk -v a=$now -v b=$tprev 'BEGIN{print a-b}')" 'BEGIN{printf "%.0f", d*1000/hz/t}')"
	prev=$c tprev=$now
	if [ $traced = 0 ] && awk -v a=$now -v b=$st 'BEGIN{exit !(a>=b)}'; then
		traced=1
		echo "strace -c -f -p $pid for $sts s from $now s, load $(cut -d' ' -f1 /proc/loadavg):"
		timeout -s INT $sts strace -c -f -p $pid 2>&1 | sed -n '1,30p'
		now=$(el); c=$(cpu); prev=$c tprev=$now; line+=" [strace]"
	fi
	awk -v a=$now -v b=$end 'BEGIN{exit !(a>=b)}' && break
done
echo "$line"
c=$(cpu)
echo "engine CPU total at $(el) s: $(awk -v c=$c -v hz=$hz 'BEGIN{printf "%.0f ms", c*1000/hz}')"
st=$(dirname "$lib")/../idle-rel/tools/dedup-stat
[ -x "$st" ] || st=/tmp/idle-rel/tools/dedup-stat
"$st" $pid | grep -E ' (full_passes|pages_scanned|pages_skipped_smart|metadata_bytes) '
kill $pid; wait $pid 2>/dev/null
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
