#!/usr/bin/env bash
# pl_sanitizers.sh DEDUP_RUN LIBDEDUP ASAN_PROG TSAN_PROG - programs built with
# a sanitizer run exactly as without libdedup: same output and exit status,
# at most libdedup's one "not merging" line. AddressSanitizer aborts when its
# runtime is not the first library, so dedup-run preloads the runtime the
# program needs before libdedup.so; with that order set by hand, and with
# ThreadSanitizer in either order, libdedup stays passive (preload/lifecycle.c,
# find_sanitizer). Before: ASan-first hung in the reconcile thread (our ioctl
# came back to our interposer through ASan's), TSan with libdedup first
# recursed in free() until the stack ran out, and with its runtime first
# the uffd reader waited on an event it raised itself.
set -u
run=$1 lib=$2 asan=$3 tsan=$4
fail() { echo "FAIL: $*" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
export ASAN_OPTIONS=detect_leaks=1 TSAN_OPTIONS=halt_on_error=1

# check NAME PROG EXPECT_LINE -- command...: output and status as without us
check() {
	local name=$1 prog=$2 line=$3; shift 4
	ref=$(timeout 300 "$prog" 2>"$tmp/ref.err"); rs=$?
	[ $rs -eq 0 ] || fail "$name: fails without libdedup ($rs): $(head -3 "$tmp/ref.err")"
	out=$(timeout 300 "$@" 2>"$tmp/err"); st=$?
	[ $st -eq $rs ] || fail "$name: exit status $st, without libdedup $rs: $(head -5 "$tmp/err")"
	[ "$out" = "$ref" ] || fail "$name: output differs"
	n=$(grep -c . "$tmp/err")
	if [ "$line" = yes ]; then
		[ "$n" -eq 1 ] && grep -q "libdedup\[[0-9]*\]: not merging: the program runs under" "$tmp/err" ||
			fail "$name: expected one 'not merging' line, stderr was: $(head -5 "$tmp/err")"
	else
		[ "$n" -eq 0 ] || fail "$name: stderr not empty: $(head -5 "$tmp/err")"
	fi
	echo "ok: $name" >&2
}

if [ -n "$asan" ]; then
	art=$(ldd "$asan" | awk '/libasan\.so/ {print $3; exit}')
	# dedup-run: the runtime first, the lazy start never reached through
	# ASan's allocator (so no line either)
	check "asan dedup-run" "$asan" no -- "$run" -- "$asan"
	check "asan dedup-run start=0" "$asan" yes -- "$run" --start 0 -- "$asan"
	[ -n "$art" ] && check "asan runtime first by hand" "$asan" yes -- \
		env LD_PRELOAD="$art:$lib" DEDUP_START=0 "$asan"
	pre=$(LD_PRELOAD= "$run" --log quiet -- sh -c 'echo "$LD_PRELOAD"')
	case $pre in *libasan*) fail "a program without ASan got its runtime preloaded: $pre" ;; esac
fi
if [ -n "$tsan" ]; then
	trt=$(ldd "$tsan" | awk '/libtsan\.so/ {print $3; exit}')
	check "tsan dedup-run start=0" "$tsan" yes -- "$run" --start 0 -- "$tsan"
	check "tsan libdedup first" "$tsan" yes -- env LD_PRELOAD="$lib" DEDUP_START=0 "$tsan"
	[ -n "$trt" ] && check "tsan runtime first" "$tsan" yes -- \
		env LD_PRELOAD="$trt:$lib" DEDUP_START=0 "$tsan"
fi
[ -n "$asan$tsan" ] || { echo "SKIP: the compiler builds no sanitized program" >&2; exit 77; }
echo PASS >&2
