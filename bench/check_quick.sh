#!/bin/sh
# SPDX-License-Identifier: MIT
#
# check_quick.sh - CTest dedup_bench_quick: run `dedup-bench --quick` and
# check that its output is complete and that KSM was left as found.
#
#   sh check_quick.sh path/to/dedup-bench
#
# Checks:
#  - every KSM tunable in /sys/kernel/mm/ksm reads the same after the run as
#    before it (the bench changes run, pages_to_scan, sleep_millisecs);
#  - dedup-bench exits 0; results.csv, results.json, series.csv exist;
#  - results.csv has every figure column and a row for every workload x
#    mode; every row is "ok", except redis rows, which may be "skipped"
#    (redis-server missing), and redis x libdedup-api, which must be
#    "skipped" (needs the preload mode); when redis x none ran, redis x
#    libdedup-preload must be "ok"; libdedup-share is "skipped" on every
#    workload but workers, and so is workers x libdedup-preload;
#  - workers (--quick: 2 processes of 32 MiB, issue 13): every row is a
#    family of 2 ("workers" in its extra) with the readers' rate; ksm-fast
#    saved more than a quarter of one process's buffer, libdedup-api less
#    (nothing is duplicated inside one process); libdedup-share is "ok",
#    had both members in the group to the end and pages of each mapping
#    the group's (ld_group_pages > 0) - or, where the build has no
#    dedup-share helper next to the bench (tools/), "skipped" because the
#    group could not be joined. How much the group saved is not checked:
#    it merges over tens of passes, far beyond --quick's 1 s of quiet
#    (the table in docs/bench/2026-12-07-workers has the figure);
#  - in each ok row every figure is a number or "n/a", and "n/a" appears
#    only where report.c documents it; libdedup rows always have pages
#    scanned (the preload rows read them from the published stats file);
#  - the harness really measured: runs x ksm-fast, runs x libdedup-api and
#    runs x libdedup-preload saved more than a quarter of the buffer. A run
#    ends when the merging has settled (3 full passes of the merger and no
#    growth for a second, run.c): that is work, however long a busy machine
#    takes for it. --quick's cap of 6 s per run would end a slow run before
#    that and leave a saving that says nothing, so this check runs with
#    --cap 60 (the runs here settle in about a second; the slow ksm-default
#    keeps --quick's 3 s), and the whole dedup-bench with a limit of 480 s
#    (SIGTERM: it restores KSM and writes what it has; CTest's TIMEOUT is
#    600 s);
#  - the preload rows ran with the API mode's options (the stats file's
#    interval and CPU budget: 50 ms and 100% unless DEDUP_INTERVAL /
#    DEDUP_CPU are set), and their child paused the engine for the idle
#    COW timings (preload_pause "ok").
# Exit 0 pass, 1 fail, 77 skip (not root, or no writable KSM).

bench=${1:?usage: check_quick.sh DEDUP_BENCH}
ksm=/sys/kernel/mm/ksm
share_built=0
[ -x "$(dirname "$bench")/../tools/dedup-share" ] && share_built=1

if [ "$(id -u)" != 0 ] || [ ! -w "$ksm/run" ]; then
	echo "skip: dedup-bench needs root and a writable $ksm"
	exit 77
fi

snap() {
	for f in run pages_to_scan sleep_millisecs max_page_sharing merge_across_nodes \
		use_zero_pages smart_scan advisor_mode advisor_max_cpu advisor_min_pages_to_scan \
		advisor_max_pages_to_scan advisor_target_scan_time stable_node_chains_prune_millisecs; do
		[ -r "$ksm/$f" ] && printf '%s=%s\n' "$f" "$(cat "$ksm/$f")"
	done
}

out=$(mktemp -d "${TMPDIR:-/tmp}/dedup-bench-quick.XXXXXX") || exit 1

# The before/after snapshots and the run happen under dedup-bench's own
# machine-wide lock (main.c), so another dedup-bench cannot change KSM in
# between; dedup-bench is told not to take the lock again.
lock=/run/lock/dedup-bench.lock
[ -w /run/lock ] || lock=/tmp/dedup-bench.lock
if command -v flock >/dev/null 2>&1; then
	exec 9>>"$lock"
	flock 9
	DEDUP_BENCH_NO_LOCK=1
	export DEDUP_BENCH_NO_LOCK
fi
before=$(snap)
start=$(date +%s)
timeout -k 30 480 "$bench" --quick --cap 60 --out "$out" 9>&- >"$out/stdout.txt"
rc=$?
end=$(date +%s)
after=$(snap)
exec 9>&-
cat "$out/stdout.txt"
echo "dedup-bench --quick: exit $rc after $((end - start)) s, output in $out"

fail=0
if [ "$before" != "$after" ]; then
	echo "FAIL: KSM settings differ after the run"
	echo "before:"; echo "$before"
	echo "after:"; echo "$after"
	fail=1
fi
if [ "$rc" != 0 ]; then
	echo "FAIL: dedup-bench exited $rc"
	fail=1
fi
for f in results.csv results.json series.csv; do
	if [ ! -s "$out/$f" ]; then
		echo "FAIL: $out/$f missing or empty"
		fail=1
	fi
done
[ -s "$out/saved.png" ] || echo "note: no saved.png (gnuplot/python3-matplotlib missing?)"
[ "$fail" = 0 ] || exit 1

if ! head -n 1 "$out/series.csv" | grep -qx 'time_s,workload,mode,pss_kib,saved_kib,merger_cpu_s'; then
	echo "FAIL: series.csv header"
	exit 1
fi
if ! grep -q '^[0-9.]*,runs,ksm-fast,' "$out/series.csv"; then
	echo "FAIL: series.csv has no samples of runs x ksm-fast"
	exit 1
fi
if command -v python3 >/dev/null 2>&1; then
	if ! python3 -m json.tool "$out/results.json" >/dev/null; then
		echo "FAIL: results.json is not valid JSON"
		exit 1
	fi
fi

# results.csv: the note is the last column and the only one that may hold
# commas (quoted), so columns 1..NC-1 split cleanly on ','.
awk -F, -v size_mib=32 -v share_built=$share_built '
function fail(msg) { print "FAIL: " msg; bad = 1 }
function isnum(v) { return v ~ /^-?[0-9]+(\.[0-9]+)?$/ }
NR == 1 {
	nc = split("workload,mode,status,end_reason,size_mib,pages,app_unit,duration_s,pss_before_kib,pss_after_kib,saved_kib,saved_pages,net_saved_kib,meta_in_pss_kib,meta_out_pss_kib,t50_s,t90_s,t99_s,merger_cpu_s,merge_cpu_s,cpu_s_per_gib_saved,merged_pages_per_cpu_s,pages_scanned,scanned_pages_per_cpu_s,vmas_before,vmas_after,vmas_added,cow_p50_us,cow_p99_us,cow_samples,cow_idle_p50_us,cow_idle_p99_us,app_rate,slowdown_pct,note", want, ",")
	for (i = 1; i <= NF; i++)
		col[$i] = i
	for (i = 1; i <= nc; i++)
		if (!(want[i] in col))
			fail("results.csv has no column " want[i])
	next
}
{
	w = $col["workload"]; m = $col["mode"]; st = $col["status"]
	seen[w "," m] = 1
	status[w "," m] = st
	if ((w == "redis" && m == "libdedup-api") || (w != "workers" && m == "libdedup-share") ||
	    (w == "workers" && m == "libdedup-preload")) {
		if (st != "skipped") fail(w " x " m " should be skipped, is " st)
		next
	}
	if (w == "workers" && m == "libdedup-share" && st == "skipped" && !share_built &&
	    $0 ~ /not in sharing group/)
		next
	if (st != "ok" && !(w == "redis" && st == "skipped")) {
		fail(w " x " m ": status " st)
		next
	}
	if (st != "ok")
		next
	merged = (w == "runs" && (m == "ksm-fast" || m ~ /^libdedup-/)) ||
		 (w == "workers" && m == "ksm-fast")
	for (i = 8; i < nc; i++) {
		name = want[i]; v = $col[name]
		if (isnum(v)) continue
		if (v != "n/a") { fail(w " x " m ": " name " is \"" v "\""); continue }
		# where n/a is allowed (report.c)
		ok = 0
		if (name ~ /^(t50_s|t90_s|t99_s|merge_cpu_s|cpu_s_per_gib_saved|merged_pages_per_cpu_s)$/)
			ok = !merged
		else if (name ~ /^cow_/)
			ok = !merged
		else if (name == "merger_cpu_s" || name == "meta_in_pss_kib")
			ok = (m == "none")
		else if (name == "meta_out_pss_kib")   # KSM: n/a without ksm_stat
			ok = (m == "none" || m ~ /^ksm-/)
		else if (name == "pages_scanned" || name == "scanned_pages_per_cpu_s")
			ok = (m == "none" || (w != "unique" && m !~ /^libdedup-/))
		else if (name == "app_rate" || name == "slowdown_pct")
			ok = (w != "churn" && w != "redis" && w != "workers")
		if (!ok) fail(w " x " m ": " name " is n/a")
	}
	if (merged && $col["saved_kib"] < size_mib * 1024 / 4)
		fail(w " x " m ": saved only " $col["saved_kib"] " KiB of " size_mib * 1024)
	if (w == "workers" && m == "libdedup-api" && $col["saved_kib"] >= size_mib * 1024 / 4)
		fail(w " x " m ": saved " $col["saved_kib"] " KiB merging each process alone")
}
END {
	if (status["redis,none"] == "ok" && status["redis,libdedup-preload"] != "ok")
		fail("redis x libdedup-preload should be ok (redis x none ran), is " status["redis,libdedup-preload"])
	nw = split("runs scattered unique zero churn redis workers", W, " ")
	nm = split("none ksm-fast ksm-default libdedup-api libdedup-preload libdedup-share", M, " ")
	for (i = 1; i <= nw; i++)
		for (j = 1; j <= nm; j++)
			if (!((W[i] "," M[j]) in seen))
				fail("no row for " W[i] " x " M[j])
	exit bad
}' "$out/results.csv" || exit 1

for w in runs scattered unique zero churn redis workers; do
	for m in none ksm-fast ksm-default libdedup-api libdedup-preload libdedup-share; do
		if ! grep -q "\"workload\": \"$w\", \"mode\": \"$m\"" "$out/results.json"; then
			echo "FAIL: results.json has no result for $w x $m"
			exit 1
		fi
	done
done

# The preload rows: run with the API mode's options (bench.h), and (the
# synthetic ones) with the engine paused for the idle timings.
want_interval=${DEDUP_INTERVAL:-50}
want_cpu=${DEDUP_CPU:-100}
grep '"mode": "libdedup-preload", "status": "ok"' "$out/results.json" >"$out/preload.rows"
if [ ! -s "$out/preload.rows" ]; then
	echo "FAIL: no ok libdedup-preload row in results.json"
	exit 1
fi
while IFS= read -r row; do
	w=$(printf '%s\n' "$row" | sed 's/.*"workload": "\([a-z]*\)".*/\1/')
	for kv in "\"ld_cfg_interval_ms\": $want_interval," "\"ld_cfg_cpu_percent\": $want_cpu,"; do
		case $row in
		*"$kv"*) ;;
		*) echo "FAIL: $w x libdedup-preload: no $kv in its extra (stats file not read, or other options)"
		   exit 1 ;;
		esac
	done
	if [ "$w" != redis ]; then
		case $row in
		*'"preload_pause": "ok"'*) ;;
		*) echo "FAIL: $w x libdedup-preload: the child did not pause the engine (preload_pause)"
		   exit 1 ;;
		esac
	fi
done <"$out/preload.rows"
# The workers rows: families of 2; the share row's members stayed in the group.
grep '"workload": "workers", "mode": "[a-z-]*", "status": "ok"' "$out/results.json" >"$out/workers.rows"
if [ "$(wc -l <"$out/workers.rows")" -lt 4 ]; then
	echo "FAIL: fewer than 4 ok workers rows (none, ksm-fast, ksm-default, libdedup-api)"
	exit 1
fi
while IFS= read -r row; do
	m=$(printf '%s\n' "$row" | sed 's/.*"mode": "\([a-z-]*\)".*/\1/')
	case $row in
	*'"workers": 2,'* | *'"workers": 2}'*) ;;
	*) echo "FAIL: workers x $m: not a family of 2 (no \"workers\": 2 in its extra)"
	   exit 1 ;;
	esac
	if [ "$m" = libdedup-share ]; then
		case $row in
		*'"ld_in_group": 2,'* | *'"ld_in_group": 2}'*) ;;
		*) echo "FAIL: workers x libdedup-share: not both members in the group at the end"
		   exit 1 ;;
		esac
		case $row in
		*'"ld_group_pages": 0,'* | *'"ld_group_pages": 0}'* | *'"ld_group_pages": 0.'*)
		   echo "FAIL: workers x libdedup-share: no page maps the group's pages"
		   exit 1 ;;
		*'"ld_group_pages": '[0-9]*) ;;
		*) echo "FAIL: workers x libdedup-share: no ld_group_pages in its extra"
		   exit 1 ;;
		esac
	fi
done <"$out/workers.rows"
if ! grep -q '^targets' "$out/stdout.txt"; then
	echo "FAIL: no targets in the table footer"
	exit 1
fi
echo "PASS"
rm -rf "$out"
exit 0
