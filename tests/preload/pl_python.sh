#!/usr/bin/env bash
# pl_python.sh DEDUP_RUN WORKLOAD.py - python3 building 200 identical 1 MiB
# objects, with and without libdedup: identical output, and Pss drops by
# most of the duplicate memory. Prints the figures for the report.
# Exit 0 pass, 1 fail, 77 skip (no python3, or no usable userfaultfd).
set -u
run=$1 script=$2 n=200
fail() { echo "FAIL: $*" >&2; exit 1; }
command -v python3 >/dev/null || { echo "SKIP: no python3" >&2; exit 77; }
py=$(python3 -c 'import sys; print(sys.executable)')   # the binary, not a shim
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

get() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" "$2" | head -1; }
dup=$(( (n - 1) * 1024 ))                     # kB of duplicates
timeout 120 "$py" "$script" $n >"$tmp/ref.out" 2>"$tmp/ref.err" || fail "python3 failed without libdedup"
base=$(get pss_kb_after "$tmp/ref.err")      # without libdedup: nothing merged
[ -n "$base" ] || fail "no Pss figure without libdedup"
# The program waits (up to 180 s) until merging got its Pss down to what
# the check below wants, not for a fixed time.
timeout 300 "$run" --interval 20 --cpu 100 --reconcile 200 -- "$py" "$script" $n \
	$(( base - dup * 75 / 100 )) >"$tmp/dd.out" 2>"$tmp/dd.err"
rc=$?
cat "$tmp/dd.err" >&2
if grep -q 'not merging' "$tmp/dd.err"; then
	echo "SKIP: libdedup cannot merge here" >&2
	exit 77
fi
[ $rc -eq 0 ] || fail "python3 under libdedup: exit status $rc"
cmp -s "$tmp/ref.out" "$tmp/dd.out" || { diff "$tmp/ref.out" "$tmp/dd.out" >&2; fail "output differs"; }
grep -q '^equal True$' "$tmp/dd.out" || fail "objects not equal"

after=$(get pss_kb_after "$tmp/dd.err")
t=$(get merge_s "$tmp/dd.err")
echo "python3: Pss ${base} kB without libdedup, ${after} kB with it (merge ${t} s; duplicates ${dup} kB)" >&2
[ -n "$base" ] && [ -n "$after" ] || fail "no Pss figures"
[ $(( base - after )) -ge $(( dup * 75 / 100 )) ] || fail "Pss dropped by $(( base - after )) kB, expected >= $(( dup * 75 / 100 ))"
echo PASS >&2
