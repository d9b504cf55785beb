#!/usr/bin/env bash
# tests/suite/run-long.sh [BUILD] [OUT] - the long selection of real test
# suites under libdedup (docs/suites.md): CPython's regrtest over
# tests/suite/regrtest-long.list (47 test files) compared case by case with
# and without LD_PRELOAD, then the JVM test under G1, Parallel and Serial
# with a larger heap. Logs, junit files and the sampled stats stay in OUT
# (default /tmp/dedup-suites-long). About an hour on a busy 2-core
# machine (docs/suites.md has the measured times).
# Exit 0 when everything gave the same results, 1 otherwise.
set -u
cd "$(dirname "$0")/../.."
build=${1:-build} out=${2:-/tmp/dedup-suites-long}
lib=$build/libdedup.so stat=$build/tools/dedup-stat
[ -e "$lib" ] && [ -x "$stat" ] || { echo "run-long.sh: build $build first" >&2; exit 2; }
mkdir -p "$out"
rc=0
start=$(date +%s)
python3 tests/suite/regrtest.py --lib "$lib" --stat "$stat" --list tests/suite/regrtest-long.list \
	--timeout 900 --out "$out/regrtest" 2>&1 | tee "$out/regrtest.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
for gc in G1 Parallel Serial; do
	bash tests/suite/jvm.sh "$lib" "$stat" $gc 16 256 2>&1 | tee "$out/jvm-$gc.txt"
	[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
done
echo "run-long.sh: $(( $(date +%s) - start )) s, exit $rc"
exit $rc
