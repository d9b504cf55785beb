#!/usr/bin/env bash
# count.sh BUILD [RUNS] - system calls per isolated page merged and per run
# handed back, by type (strace -c -f), with tests/test_unmerge_scale:
#  1. the whole test under strace -c -f (merging RUNS isolated duplicates
#     with dedup_scan_now(), then dedup_unregister() of them);
#  2. the hand-back alone: the test pauses after merging (T_PAUSE) and
#     strace attaches to every thread of it for the rest;
# merge = (1) - (2). Both at vm.max_map_count 65530 (tests/with_max_map_count.sh).
# Counts include the test's own few calls (mapping, filling, checking).
set -u
build=${1:?BUILD}; runs=${2:-8000}
here=$(cd "$(dirname "$0")/../../.." && pwd)
out=$(mktemp -d)
T_PAUSE=0 "$here/tests/with_max_map_count.sh" 65530 -- \
	strace -c -f -o "$out/all" "$build/tests/test_unmerge_scale" unregister "$runs" >"$out/all.log" 2>&1
(T_PAUSE=6 "$here/tests/with_max_map_count.sh" 65530 -- \
	"$build/tests/test_unmerge_scale" unregister "$runs" >"$out/back.log" 2>&1 &)
pid=
for _ in $(seq 4000); do
	pid=$(grep -o "^pid [0-9]*" "$out/back.log" 2>/dev/null | cut -d' ' -f2)
	[ -n "$pid" ] && break
	sleep 0.5
done
sleep 1
timeout 600 strace -c -f -p "$(ls /proc/"$pid"/task | paste -sd,)" -o "$out/back" 2>/dev/null &
sp=$!
while kill -0 "$pid" 2>/dev/null; do sleep 0.5; done
wait $sp
grep -h "merged\|^dedup_" "$out/all.log" "$out/back.log" >&2
python3 - "$out/all" "$out/back" "$runs" <<'PY'
import sys
def load(f):
    d = {}
    for l in open(f):
        p = l.split()
        if len(p) >= 5 and p[0][0].isdigit() and p[-1] != 'total':
            d[p[-1]] = int(p[3])
    return d
a, b, n = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
print("%-18s %10s %10s" % ('syscall', 'merge/page', 'back/run'))
for k in sorted(a, key=lambda k: -(a[k] - b.get(k, 0))):
    m, r = (a[k] - b.get(k, 0)) / n, b.get(k, 0) / n
    if abs(m) >= 0.05 or r >= 0.05:
        print("%-18s %10.2f %10.2f" % (k, m, r))
print("%-18s %10.2f %10.2f" % ('total', (sum(a.values()) - sum(b.values())) / n, sum(b.values()) / n))
PY
echo "raw: $out" >&2
