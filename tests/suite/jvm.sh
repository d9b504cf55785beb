#!/usr/bin/env bash
# jvm.sh LIBDEDUP DEDUP_STAT GC [THREADS=4] [MIB=64] - a JVM under libdedup
# (issue 14, point 6): tests/suite/java/DedupGc.java, compiled here with
# javac, run with -XX:+Use${GC}GC (G1, Parallel or Serial), once without
# libdedup and once under LD_PRELOAD (DEDUP_START=0, a short interval).
#
# The program (heap: 4 x MIB) fills MIB MiB of arrays (three in four duplicates) in THREADS
# threads, says "ready" and waits for a line on stdin. Under libdedup the
# test waits (up to t_cap, 180 s, or DEDUP_TEST_CAP_S) until the JVM's live
# stats (dedup-stat --json) show an eighth of the duplicate pages merged, then
# lets it go on: writes into merged arrays, garbage churn, a full compacting
# System.gc(), NullPointerExceptions caught through SIGSEGV, and every
# checksum checked twice. Pass: both runs exit 0 with the same stdout, and
# merging happened. Exit 0 pass, 1 fail, 77 skip (no java/javac, no usable
# userfaultfd).
set -u
lib=$(readlink -f "$1") stat=$2 gc=$3 threads=${4:-4} mib=${5:-64}
here=$(cd "$(dirname "$0")" && pwd)
cap=${DEDUP_TEST_CAP_S:-180}
fail() { echo "FAIL: $*" >&2; exit 1; }
command -v java >/dev/null && command -v javac >/dev/null ||
	{ echo "SKIP: no java/javac (Debian: openjdk-17-jdk-headless)" >&2; exit 77; }
case $gc in G1|Parallel|Serial) ;; *) echo "jvm.sh: GC is G1, Parallel or Serial" >&2; exit 2 ;; esac
tmp=$(mktemp -d)
jpid=
cleanup() { [ -n "$jpid" ] && kill "$jpid" 2>/dev/null; rm -rf "$tmp"; }   # timeout passes it on
trap cleanup EXIT
javac -d "$tmp/classes" "$here/java/DedupGc.java" || fail "javac failed"
heap=$(( mib * 4 ))m
jvm=(java -XX:+Use${gc}GC -Xms$heap -Xmx$heap -XX:-UsePerfData -cp "$tmp/classes" DedupGc
     "$threads" "$mib")
unset LD_PRELOAD ${!DEDUP_*}

# Without libdedup.
t0=$(date +%s%N)
timeout $((cap + 60)) nice -n 10 "${jvm[@]}" </dev/null >"$tmp/ref.out" 2>"$tmp/ref.err"
rc=$?
t_ref=$(( ($(date +%s%N) - t0) / 1000000 ))
[ $rc -eq 0 ] || { cat "$tmp/ref.err" >&2; fail "$gc: exit $rc without libdedup"; }

# Under libdedup. stdin is a FIFO, so the test decides when phase 2 starts.
# An eighth of the duplicate pages merged before that (the count includes
# other duplicates: zeroed, unused heap), or give up at the cap.
want=$(( mib * 256 * 3 / 4 / 8 ))
field() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
mmc=/proc/sys/vm/max_map_count
run_dd() {   # -> rc, merges, sharing, t_dd; 2 if the run was disturbed
	rm -rf "$tmp/in" "$tmp/stat-dir"
	mkfifo "$tmp/in"
	sdir=$tmp/stat-dir
	mkdir "$sdir"
	local mmc0 i t1 js
	mmc0=$(cat $mmc)
	t0=$(date +%s%N)
	# (env last: timeout and nice are not the program under test)
	timeout $((cap + 60)) nice -n 10 env LD_PRELOAD="$lib" DEDUP_START=0 DEDUP_INTERVAL=20 \
		DEDUP_CPU=100 DEDUP_RECONCILE_MS=200 DEDUP_STAT_DIR="$sdir" DEDUP_LOG=stats \
		"${jvm[@]}" <"$tmp/in" >"$tmp/dd.out" 2>"$tmp/dd.err" &
	jpid=$!
	exec 3>"$tmp/in"
	# dd.err gets "ready" once phase 1 is done
	for ((i = 0; i < cap * 10; i++)); do
		grep -q '^ready$' "$tmp/dd.err" 2>/dev/null && break
		kill -0 $jpid 2>/dev/null || break
		[ "$(cat $mmc)" -ge "$mmc0" ] || mmc_changed=$(cat $mmc)
		sleep 0.1
	done
	merges=0
	t1=$(date +%s)
	while grep -q '^ready$' "$tmp/dd.err"; do
		js=$("$stat" --json --dir "$sdir" 2>/dev/null)
		merges=$(printf '%s' "$js" | field merges)
		merges=${merges:-0}
		sharing=$(printf '%s' "$js" | field pages_sharing)
		[ "$(cat $mmc)" -ge "$mmc0" ] || mmc_changed=$(cat $mmc)
		[ "$merges" -ge $want ] && break
		[ $(( $(date +%s) - t1 )) -ge "$cap" ] && break
		kill -0 $jpid 2>/dev/null || break
		sleep 0.2
	done
	echo go >&3
	exec 3>&-
	while kill -0 $jpid 2>/dev/null; do
		[ "$(cat $mmc)" -ge "$mmc0" ] || mmc_changed=$(cat $mmc)
		sleep 0.2
	done
	wait $jpid
	rc=$?
	jpid=
	t_dd=$(( ($(date +%s%N) - t0) / 1000000 ))
	[ "$(cat $mmc)" -ge "$mmc0" ] || mmc_changed=$(cat $mmc)
	# vm.max_map_count is machine-wide, and other tests on a shared machine
	# lower it (to 1000) for a while: merged pieces are mappings, and the
	# JVM's own mmap() then fails. Not this test's question: run again.
	if [ -n "${mmc_changed:-}" ]; then
		echo "note: vm.max_map_count went down from $mmc0 to $mmc_changed during the run (another test on this machine); running again" >&2
		mmc_changed=
		return 2
	fi
	return 0
}
for attempt in 1 2 3 4; do
	run_dd && break
	[ $attempt -lt 4 ] || { echo "SKIP: vm.max_map_count kept changing during the runs" >&2; exit 77; }
	sleep 10
done
grep -q '^ready$' "$tmp/dd.err" || { cat "$tmp/dd.err" >&2; fail "$gc: the JVM never got ready"; }
if grep -q 'not merging' "$tmp/dd.err"; then
	echo "SKIP: libdedup cannot merge here: $(grep 'not merging' "$tmp/dd.err")" >&2
	exit 77
fi
if [ $rc -ne 0 ]; then
	cat "$tmp/dd.err" >&2
	fail "$gc: exit $rc under libdedup (0 without)"
fi
cmp -s "$tmp/ref.out" "$tmp/dd.out" ||
	{ diff "$tmp/ref.out" "$tmp/dd.out" >&2; fail "$gc: output differs under libdedup"; }
[ "$merges" -ge $want ] || fail "$gc: only $merges pages merged in ${cap} s (want $want)"
# The table at exit (DEDUP_LOG=stats): what happened after the go.
get() { sed -n "s/^libdedup\[[0-9]*\]: $1 *\([0-9]*\).*/\1/p" "$tmp/dd.err" | tail -1; }
printf '%s: same output, exit 0 both; %d ms without, %d ms with libdedup; before phase 2: %s pages merged, %s sharing; at exit: merges %s, cow_breaks %s, pages_sharing %s, zero_pages %s\n' \
	"$gc" "$t_ref" "$t_dd" "$merges" "${sharing:-?}" "$(get merges)" "$(get cow_breaks)" \
	"$(get pages_sharing)" "$(get zero_pages)" >&2
echo PASS >&2
