#!/usr/bin/env bash
# pl_dedup_run.sh DEDUP_RUN PLAIN_PROGRAM - the launcher: man-page --help,
# option validation (exit 2), the program's exit status, 127 for a program
# that cannot be executed, and the environment it sets.
set -u
run=$1 prog=$2
fail() { echo "FAIL: $*" >&2; exit 1; }

help=$("$run" --help) || fail "--help exit status"
for sec in NAME SYNOPSIS DESCRIPTION OPTIONS ENVIRONMENT "EXIT STATUS" EXAMPLES; do
	grep -q "^$sec\$" <<<"$help" || fail "--help lacks section $sec"
done
for bad in "--cpu 0" "--cpu 101" "--interval -1" "--interval 5x" "--batch 513" \
	   "--pages-per-sec lots" "--log loud" "--fork maybe" "--vma-budget" "--nonsense" \
	   "--min-region 1" "--exclude brk" "--exclude 2000-1000" "--exclude heap,0x10-zz"; do
	# shellcheck disable=SC2086
	"$run" $bad -- true 2>/dev/null
	rc=$?
	[ $rc -eq 2 ] || fail "'$bad' gave exit status $rc, expected 2"
done
"$run" 2>/dev/null; [ $? -eq 2 ] || fail "no program: expected 2"
"$run" -- sh -c 'exit 7'; [ $? -eq 7 ] || fail "exit status of the program not passed on"
"$run" -- /nonexistent/program 2>/dev/null; [ $? -eq 127 ] || fail "missing program: expected 127"
err=$("$run" -- /nonexistent/program 2>&1); grep -q "cannot execute" <<<"$err" || fail "no message for 127"

envout=$("$run" --interval 50 --cpu 30 --pages-per-sec 10K --no-zero-pages --vma-budget 1000 \
	--batch 32 --min-region 128K --log quiet --fork restart --reconcile 300 \
	--exclude heap,7f00-7f80 -- env)
for kv in DEDUP_INTERVAL=50 DEDUP_CPU=30 DEDUP_PAGES_PER_SEC=10K DEDUP_ZERO_PAGES=0 \
	  DEDUP_VMA_BUDGET=1000 DEDUP_BATCH=32 DEDUP_MIN_REGION=128K DEDUP_LOG=quiet \
	  DEDUP_FORK=restart DEDUP_RECONCILE_MS=300 DEDUP_EXCLUDE=heap,7f00-7f80 DEDUP_PRELOAD=1; do
	grep -qx "$kv" <<<"$envout" || fail "$kv not set"
done
grep -q '^LD_PRELOAD=/.*libdedup\.so' <<<"$envout" || fail "LD_PRELOAD not an absolute libdedup.so"
envout=$(LD_PRELOAD=/lib/nothing.so "$run" --log quiet -- env)
grep -q '^LD_PRELOAD=/.*libdedup\.so[^:]*:/lib/nothing.so$' <<<"$envout" || fail "existing LD_PRELOAD not kept"
envout=$("$run" --stats -- env 2>/dev/null)
grep -qx DEDUP_LOG=stats <<<"$envout" || fail "--stats"

# a real program under it: same output, and the stats table at exit
out=$("$run" --stats --interval 20 -- "$prog" 2>"${TMPDIR:-/tmp}/pl_dedup_run.$$") || fail "program failed under dedup-run"
ref=$("$prog") || fail "program failed"
[ "$out" = "$ref" ] || fail "output differs under dedup-run"
rm -f "${TMPDIR:-/tmp}/pl_dedup_run.$$"
echo PASS >&2
