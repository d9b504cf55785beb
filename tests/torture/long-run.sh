#!/usr/bin/env bash
# tests/torture/long-run.sh - the long torture run (issue 3): back-to-back
# torture runs of --per-run seconds, seeds --first-seed, +1, ..., until
# --total seconds have passed. One line per seed, totals at the end; the log
# of every run is kept in --logdir. Exit status 1 if any run failed.
#
#   tests/torture/long-run.sh                       # an hour, 60 s per seed
#   tests/torture/long-run.sh --total 600 -- --no-dontneed
#
# Options:
#   --total S        total run time in seconds (default 3600)
#   --per-run S      seconds per torture run (default 60)
#   --first-seed N   first seed (default: derived from the date)
#   --torture PATH   the torture binary (default: build/tests/torture)
#   --logdir DIR     where the logs go (default: torture-logs-<first seed>)
#   -- ARGS          passed to every torture run (e.g. --no-dontneed, --remap-noreg)
set -uo pipefail
total=3600 per=60 first=$(( $(date +%s) % 100000 * 10 )) bin="" logdir=""
extra=()
while [ $# -gt 0 ]; do
	case "$1" in
	--total) total=$2; shift ;;
	--per-run) per=$2; shift ;;
	--first-seed) first=$2; shift ;;
	--torture) bin=$2; shift ;;
	--logdir) logdir=$2; shift ;;
	--) shift; extra=("$@"); break ;;
	-h|--help) sed -n '2,17p' "$0"; exit 0 ;;
	*) echo "long-run.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${bin:-$here/build/tests/torture}
logdir=${logdir:-torture-logs-$first}
[ -x "$bin" ] || { echo "long-run.sh: no torture binary at $bin (build first)" >&2; exit 2; }
mkdir -p "$logdir"
ulimit -c 0   # a core dump of a libdedup process would include its whole page store

start=$(date +%s) seed=$first runs=0 failed=0 merges=0 bytes=0
failed_seeds=()
echo "long run: ${total} s, ${per} s per seed from seed $first, args: ${extra[*]:-(none)}; logs in $logdir"
while [ $(( $(date +%s) - start )) -lt "$total" ]; do
	log=$logdir/seed-$seed.log
	# a run may go on 180 s past --per-run for the merges it needs (--max-seconds)
	timeout -k 10 $(( per * 3 + 60 + 180 )) "$bin" --seconds "$per" --seed "$seed" "${extra[@]}" >"$log" 2>&1
	rc=$?
	m=$(sed -n 's/^engine: merges \([0-9]*\).*/\1/p' "$log" | tail -1)
	b=$(sed -n 's/^bytes verified: \([0-9]*\).*/\1/p' "$log" | tail -1)
	m=${m:-0} b=${b:-0}
	merges=$((merges + m)) bytes=$((bytes + b)) runs=$((runs + 1))
	if [ $rc -eq 0 ]; then
		printf 'seed %-8s PASS  merges %-8s bytes verified %s\n' "$seed" "$m" "$b"
	else
		failed=$((failed + 1))
		failed_seeds+=("$seed")
		why=$(grep -m1 -E '^(MISMATCH|BUG|CRASH|FAIL)' "$log" || true)
		[ $rc -eq 124 ] || [ $rc -eq 137 ] && why="TIMEOUT (hang?) ${why}"
		printf 'seed %-8s FAIL  (exit %s) merges %-8s bytes verified %s\n    %s\n' \
			"$seed" "$rc" "$m" "$b" "${why:0:300}"
	fi
	seed=$((seed + 1))
done
echo "---- long run: $runs runs, seeds $first..$((seed - 1)), $(( $(date +%s) - start )) s"
echo "     merges $merges, bytes verified $bytes ($((bytes / 1048576)) MiB), failed runs $failed${failed_seeds:+ (seeds ${failed_seeds[*]})}"
[ "$failed" -eq 0 ]
