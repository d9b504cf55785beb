#!/usr/bin/env bash
# pl_oneline.sh LIB PROGRAM - with userfaultfd unusable (forced by
# DEDUP_FORCE_USER_ONLY=1) a preloaded program runs normally: same stdout,
# exit 0, and exactly one line from libdedup on stderr saying why; none with
# DEDUP_LOG=quiet. Exit 0 pass, 1 fail.
set -u
lib=$1 prog=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$prog" >"$tmp/ref.out" 2>"$tmp/ref.err" || fail "the program fails without libdedup"
timeout 60 env LD_PRELOAD="$lib" DEDUP_START=0 DEDUP_FORCE_USER_ONLY=1 "$prog" >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc -eq 0 ] || fail "exit status $rc under libdedup"
cmp -s "$tmp/ref.out" "$tmp/out" || fail "stdout differs under libdedup"
n=$(grep -c '^libdedup\[' "$tmp/err")
cat "$tmp/err" >&2
[ "$n" -eq 1 ] || fail "expected exactly 1 libdedup line on stderr, got $n"
[ "$(wc -l <"$tmp/err")" -eq 1 ] || fail "stderr has other lines too"
grep -q 'not merging' "$tmp/err" || fail "the line does not say it is not merging"

timeout 60 env LD_PRELOAD="$lib" DEDUP_START=0 DEDUP_FORCE_USER_ONLY=1 DEDUP_LOG=quiet "$prog" >"$tmp/out" 2>"$tmp/err"
[ $? -eq 0 ] || fail "exit status under DEDUP_LOG=quiet"
[ ! -s "$tmp/err" ] || { cat "$tmp/err" >&2; fail "DEDUP_LOG=quiet still printed"; }
echo PASS >&2
