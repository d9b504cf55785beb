#!/usr/bin/env bash
# tests/hostile/hostile.sh CASE LIB PL_PLAIN HL_CHURN HL_SECCOMP
#
# Hostile hosts (issue 14, point 5; docs/preload.md "Hostile hosts"): a
# program under LD_PRELOAD=libdedup.so on a host that forbids or limits
# what libdedup needs must run untouched - the same stdout and exit status
# as without libdedup - and libdedup says in one line on stderr why it does
# not merge, where it does not. CASE is one of:
#   seccomp        a seccomp filter forbids userfaultfd (as Docker's does)
#   no_io_uring    a seccomp filter forbids io_uring (as Docker's does since
#                  25.0; or kernel.io_uring_disabled=2): without it a raw
#                  close of libdedup's descriptors could lose pages, so no
#                  merging (libdedup/src/keeper.c)
#   noproc         /proc is a bare tmpfs (a mount namespace of its own)
#   nofile         RLIMIT_NOFILE 16
#   as             RLIMIT_AS just above the program's own need
#   memcg          a memory cgroup just above the footprint, no swap: no OOM kill
#   max_map_count  run by tests/with_max_map_count.sh at 1000
#   setuid         a program that drops privileges (PR_SET_KEEPCAPS,
#                  setresuid, capset, setresgid), in the process and in a
#                  fork()ed child: glibc aborted it when our threads failed
# Exit 0 pass, 1 fail, 77 skip (cannot be set up here, e.g. not root).
set -u
case=$1 lib=$2 plain=$3 churn=$4 seccomp=$5 setuid=${6:-} semantics=${7:-}
tmp=$(mktemp -d)
cg=
cleanup() {
	[ -n "$cg" ] && [ -d "$cg" ] && rmdir "$cg" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL [$case]: $*" >&2; exit 1; }
skip() { echo "SKIP [$case]: $*" >&2; exit 77; }
# fast settings, as the preload tests have them
fast=(DEDUP_INTERVAL=20 DEDUP_CPU=100 DEDUP_RECONCILE_MS=200)

# run NAME CMD...: stdout, stderr and exit status into $tmp/NAME.*
run() {
	local name=$1
	shift
	timeout -k 5 300 "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"
	echo $? >"$tmp/$name.rc"
}

# same REF RUN: RUN gave REF's stdout and exit status
same() {
	cat "$tmp/$2.err" >&2
	[ "$(cat "$tmp/$2.rc")" = "$(cat "$tmp/$1.rc")" ] ||
		fail "$2: exit status $(cat "$tmp/$2.rc"), $(cat "$tmp/$1.rc") without libdedup"
	cmp -s "$tmp/$1.out" "$tmp/$2.out" || fail "$2: stdout differs from the run without libdedup"
}

# oneline RUN REGEX: exactly one line from libdedup on RUN's stderr, matching REGEX
oneline() {
	local n
	n=$(grep -c '^libdedup\[' "$tmp/$1.err")
	[ "$n" -eq 1 ] || fail "$1: $n lines from libdedup on stderr, expected 1"
	grep '^libdedup\[' "$tmp/$1.err" | grep -Eq "$2" || fail "$1: the line does not match '$2'"
	echo "[$case] outcome: $(grep '^libdedup\[' "$tmp/$1.err" | sed 's/^libdedup\[[0-9]*\]: //')" >&2
}

pre=(env LD_PRELOAD="$lib")
case $case in
seccomp)
	run ref "$seccomp" "$plain"
	[ "$(cat "$tmp/ref.rc")" = 77 ] && skip "$(cat "$tmp/ref.err")"
	[ "$(cat "$tmp/ref.rc")" = 0 ] || fail "the program fails without libdedup"
	run pl "$seccomp" "${pre[@]}" DEDUP_START=0 "$plain"
	same ref pl
	oneline pl 'seccomp'
	;;
no_io_uring)
	run ref "$seccomp" --io-uring "$plain"
	[ "$(cat "$tmp/ref.rc")" = 77 ] && skip "$(cat "$tmp/ref.err")"
	[ "$(cat "$tmp/ref.rc")" = 0 ] || fail "the program fails without libdedup"
	run pl "$seccomp" --io-uring "${pre[@]}" DEDUP_START=0 "$plain"
	same ref pl
	oneline pl 'io_uring'
	;;
noproc)
	[ "$(id -u)" = 0 ] || skip "not root: cannot mount over /proc"
	hide='mount -t tmpfs none /proc || exit 77; exec "$@"'
	unshare -m true 2>/dev/null || skip "unshare -m is not allowed here"
	run ref unshare -m sh -c "$hide" sh "$plain"
	[ "$(cat "$tmp/ref.rc")" = 77 ] && skip "cannot mount a tmpfs over /proc"
	run pl unshare -m sh -c "$hide" sh "${pre[@]}" DEDUP_START=0 "$plain"
	same ref pl
	oneline pl '/proc'
	# lazy start (the default): the look at /proc/self/statm finds nothing
	run lazy unshare -m sh -c "$hide" sh "${pre[@]}" "$plain"
	same ref lazy
	;;
nofile)
	run ref bash -c 'ulimit -n 16 && exec "$@"' sh "$plain"
	[ "$(cat "$tmp/ref.rc")" = 0 ] || skip "the program does not run with ulimit -n 16 here"
	run pl bash -c 'ulimit -n 16 && exec "$@"' sh "${pre[@]}" DEDUP_START=0 "$plain"
	same ref pl
	oneline pl 'RLIMIT_NOFILE'
	;;
as)
	# the smallest ulimit -v (KiB, in steps of 4 MiB) the program runs in,
	# then 8 MiB more: no room for the engine's reservations
	kib=
	for v in $(seq 8192 4096 262144); do
		if bash -c 'ulimit -v '"$v"' && exec "$@"' sh "$plain" >/dev/null 2>&1; then
			kib=$((v + 8192))
			break
		fi
	done
	[ -n "$kib" ] || skip "the program does not run under any ulimit -v up to 256 MiB"
	echo "[$case] ulimit -v $kib" >&2
	lim=(bash -c 'ulimit -v '"$kib"' && exec "$@"' sh)
	run ref "${lim[@]}" "$plain"
	# lazy start (the default): the constructor reserves nothing
	run lazy "${lim[@]}" "${pre[@]}" "$plain"
	same ref lazy
	# started at once: one line, no merging
	run pl "${lim[@]}" "${pre[@]}" DEDUP_START=0 "$plain"
	same ref pl
	oneline pl 'RLIMIT_AS'
	;;
memcg)
	[ "$(id -u)" = 0 ] || skip "not root: cannot create a memory cgroup"
	# cgroup v2 where it has the memory controller, else v1's memory hierarchy
	if grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
		ver=2 root=/sys/fs/cgroup
		grep -qw memory $root/cgroup.subtree_control ||
			echo +memory >$root/cgroup.subtree_control 2>/dev/null
	elif [ -w /sys/fs/cgroup/memory/cgroup.procs ]; then
		ver=1 root=/sys/fs/cgroup/memory
	else
		skip "no writable memory cgroup (v2 or v1) here"
	fi
	cg=$root/libdedup-hostile-$$
	mkdir "$cg" || skip "cannot create $cg"
	# 32 MiB of duplicates at a time, 12 rounds; the limit 24 MiB above
	# that (the program's binary, libc, stacks, libdedup's engine)
	lim=$((56 << 20))
	if [ $ver = 2 ]; then
		echo $lim >"$cg/memory.max" && echo 0 >"$cg/memory.swap.max" 2>/dev/null ||
			skip "cannot set memory.max / memory.swap.max"
	else
		echo $lim >"$cg/memory.limit_in_bytes" || skip "cannot set memory.limit_in_bytes"
		echo $lim >"$cg/memory.memsw.limit_in_bytes" 2>/dev/null || true   # no swap accounting: no swap either
	fi
	oom_kills() {
		if [ $ver = 2 ]; then
			awk '$1 == "oom_kill" { print $2 }' "$cg/memory.events"
		else
			awk '$1 == "oom_kill" { print $2 }' "$cg/memory.oom_control"
		fi
	}
	incg=(sh -c 'echo $$ >'"$cg"'/cgroup.procs && exec "$@"' sh)
	run ref "${incg[@]}" "$churn" memcg 12 32
	[ "$(oom_kills)" = 0 ] && [ "$(cat "$tmp/ref.rc")" = 0 ] ||
		skip "the program does not fit in its cgroup without libdedup here (oom_kill $(oom_kills))"
	run pl "${incg[@]}" "${pre[@]}" DEDUP_START=0 "${fast[@]}" HL_WAIT_MERGES=1 \
		DEDUP_LOG=stats "$churn" memcg 12 32
	grep -E 'merges|pages_shar|slots_freed' "$tmp/pl.err" >&2
	[ "$(oom_kills)" = 0 ] || fail "OOM-killed in the cgroup under libdedup (oom_kill $(oom_kills))"
	sed -i '/^libdedup\[/d' "$tmp/pl.err"
	same ref pl
	echo "[$case] outcome: merged, oom_kill 0, exit status $(cat "$tmp/pl.rc")" >&2
	;;
max_map_count)
	[ "$(cat /proc/sys/vm/max_map_count)" = 1000 ] ||
		skip "vm.max_map_count is $(cat /proc/sys/vm/max_map_count), not 1000 (not root?)"
	run ref "$churn" maps 8 200
	[ "$(cat "$tmp/ref.rc")" = 0 ] || fail "the program fails at 1000 without libdedup"
	run pl "${pre[@]}" DEDUP_START=0 "${fast[@]}" HL_WAIT_MERGES=1 "$churn" maps 8 200
	same ref pl
	echo "[$case] outcome: exit status $(cat "$tmp/pl.rc"), $(grep 'isolated merges' "$tmp/pl.err")" >&2
	# MADV_DONTFORK on merged memory, then fork(): at 1000 the child's
	# guard used to map its table (80 KiB) into the hole the DONTFORK range
	# left, and the child found memory where it must fault (2-3 runs in 6)
	if [ -n "$semantics" ]; then
		for i in 1 2 3 4 5 6; do
			run sem "${pre[@]}" DEDUP_START=0 "${fast[@]}" "$semantics"
			[ "$(cat "$tmp/sem.rc")" = 0 ] ||
				{ cat "$tmp/sem.err" >&2; fail "pl_semantics at 1000, run $i"; }
		done
		echo "[$case] pl_semantics: 6 runs passed" >&2
	fi
	;;
setuid)
	[ "$(id -u)" = 0 ] || skip "not root: nothing to drop"
	for how in "" fork; do
		run ref "$setuid" $how
		[ "$(cat "$tmp/ref.rc")" = 0 ] || fail "the program fails without libdedup ($how)"
		run pl "${pre[@]}" DEDUP_START=0 "${fast[@]}" "$setuid" $how
		same ref pl
		run lazy "${pre[@]}" "$setuid" $how
		same ref lazy
		echo "[$case] outcome${how:+ ($how)}: exit status $(cat "$tmp/pl.rc"), no line" >&2
	done
	;;
*)
	echo "unknown case $case" >&2
	exit 2
	;;
esac
echo "PASS [$case]" >&2
