#!/usr/bin/env bash
# bench/unmerge.sh [BUILD] [RUNS] - time to hand back RUNS isolated merged
# pages (default 32000: 64,001 mappings, what fits under 65,530) with
# dedup_shutdown() and with dedup_unregister(), at vm.max_map_count 65530
# and 1048576 (tests/with_max_map_count.sh sets it as root and puts it back).
# Runs tests/test_unmerge_scale, which also checks one mapping and every
# page's content afterwards. CSV on stdout: limit,how,runs,seconds,cpu_s.
set -u
build=${1:-build}; runs=${2:-32000}
here=$(cd "$(dirname "$0")/.." && pwd)
echo "max_map_count,how,runs,seconds,cpu_s,status"
for mmc in 65530 1048576; do
	for how in shutdown unregister; do
		out=$(DEDUP_TEST_UNMERGE_CAP=${DEDUP_TEST_UNMERGE_CAP:-1200} \
			"$here/tests/with_max_map_count.sh" "$mmc" -- \
			"$build/tests/test_unmerge_scale" "$how" "$runs" 2>&1)
		st=$?
		line=$(grep -E "^dedup_(shutdown|unregister)\(\) of" <<<"$out")
		secs=$(sed -E 's/.*runs: ([0-9.]+) s.*/\1/' <<<"$line")
		cpu=$(sed -E 's/.*CPU ([0-9.]+) s.*/\1/' <<<"$line")
		echo "$mmc,$how,$runs,${secs:-},${cpu:-},$st"
		[ $st = 0 ] || grep -E "FAIL|SKIP" <<<"$out" >&2
	done
done
