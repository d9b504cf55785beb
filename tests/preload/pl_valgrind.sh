#!/usr/bin/env bash
# pl_valgrind.sh LIBDEDUP PLAIN_PROGRAM - a program run by Valgrind with
# libdedup preloaded behaves as without libdedup: same output, same status,
# no Valgrind complaint, and at most libdedup's one "not merging" line.
# Valgrind runs one thread at a time, so a fault that waits for our reader
# would never end; before, the engine's first UFFDIO_API ioctl drew
# "unhandled ioctl 0xaa00" from Valgrind and libdedup printed
# "dedup_init failed: Invalid argument".
set -u
lib=$1 prog=$2
fail() { echo "FAIL: $*" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "SKIP: no valgrind" >&2; exit 77; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

ref=$(valgrind -q --error-exitcode=99 "$prog" 2>"$tmp/ref.err"); rs=$?
[ $rs -eq 0 ] || fail "fails under valgrind without libdedup ($rs): $(head -3 "$tmp/ref.err")"
for start in 0 default; do
	if [ $start = default ]; then env=(LD_PRELOAD="$lib"); else env=(LD_PRELOAD="$lib" DEDUP_START=0); fi
	out=$(env "${env[@]}" timeout 300 valgrind -q --error-exitcode=99 "$prog" 2>"$tmp/err"); st=$?
	[ $st -eq 0 ] || fail "start=$start: exit status $st: $(head -5 "$tmp/err")"
	[ "$out" = "$ref" ] || fail "start=$start: output differs"
	n=$(grep -c . "$tmp/err")
	if [ $start = 0 ]; then
		[ "$n" -eq 1 ] && grep -q "libdedup\[[0-9]*\]: not merging: the program runs under Valgrind" "$tmp/err" ||
			fail "start=0: expected one 'not merging' line, stderr was: $(head -5 "$tmp/err")"
	else   # pl_plain stays below the lazy start: nothing at all
		[ "$n" -eq 0 ] || fail "start=default: stderr not empty: $(head -5 "$tmp/err")"
	fi
	echo "ok: DEDUP_START=$start" >&2
done
echo PASS >&2
