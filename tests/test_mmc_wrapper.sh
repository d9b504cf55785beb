#!/usr/bin/env bash
# tests/test_mmc_wrapper.sh WRAPPER - tests/with_max_map_count.sh keeps the
# sysctl to itself and never puts back a crashed run's lowered value:
#  1. two runs at different values never overlap: B waits for A's lock, and
#     each command sees its own value from start to end; a run inside a run
#     (DEDUP_MMC_LOCK_HELD=1) does not wait for its parent;
#  2. a state file holding 1000 (a run SIGKILLed while it had the limit
#     lowered) makes --restore put back 65530, not 1000, and say so (only
#     where the value is 65530 to begin with).
# Values used: 65531 and 65532 (harmless to anything else running), for a
# second or two. Exit 0 pass, 1 fail, 77 skip (not root).
set -u
W=${1:?usage: $0 WRAPPER}
sysctl=/proc/sys/vm/max_map_count
[ "$(id -u)" = 0 ] && [ -w $sysctl ] || { echo "SKIP: not root"; exit 77; }
[ "${DEDUP_MMC_LOCK_HELD:-}" = 1 ] && { echo "SKIP: a parent holds the lock"; exit 77; }
if [ -w /run/lock ]; then dir=/run/lock; else dir=${TMPDIR:-/tmp}; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# 1. A holds 65531 for 2 s; B (started while A runs) must see 65532 only after
seen() { for i in 1 2 3 4; do cat $sysctl; sleep 0.5; done; }
"$W" --timeout 500 65531 -- bash -c "$(declare -f seen); sysctl=$sysctl; seen" >"$tmp/a" 2>"$tmp/a.err" &
a=$!
# (A may wait for another checkout's run that holds the lock)
for i in $(seq 1 4800); do grep -q 65531 "$tmp/a" 2>/dev/null && break; sleep 0.1; done
grep -q 65531 "$tmp/a" || fail "A never ran at 65531: $(cat "$tmp/a.err")"
"$W" --timeout 500 65532 -- bash -c "cat $sysctl; date +%s.%N" >"$tmp/b" 2>"$tmp/b.err"
wait $a || fail "A failed: $(cat "$tmp/a.err")"
[ "$(sort -u "$tmp/a")" = 65531 ] || fail "A saw $(sort -u "$tmp/a" | tr '\n' ' ') (want only 65531)"
[ "$(head -1 "$tmp/b")" = 65532 ] || fail "B saw $(head -1 "$tmp/b") (want 65532)"
grep -q "waiting for" "$tmp/b.err" || fail "B did not wait for A's lock: $(cat "$tmp/b.err")"
echo "1. two runs did not overlap (B waited for A)"

# 1b. nested: the wrapper inside the wrapper runs at once (no self-deadlock)
"$W" --timeout 120 65531 -- "$W" --timeout 20 65532 -- cat $sysctl >"$tmp/n" 2>"$tmp/n.err" ||
	fail "nested run failed: $(cat "$tmp/n.err")"
[ "$(cat "$tmp/n")" = 65532 ] || fail "nested run saw $(cat "$tmp/n")"
echo "1b. a run inside a run did not wait for its parent"

# 2. a crashed run's lowered value in the state file is not put back (only
# on a machine at the default: elsewhere --restore would set 65530 over the
# administrator's value)
before=$(cat $sysctl)
if [ "$before" = 65530 ]; then
	flock "$dir/libdedup-max_map_count.lock" -c "echo 1000 >'$dir/libdedup-max_map_count.restore'"
	"$W" --restore 2>"$tmp/r.err" || fail "--restore failed: $(cat "$tmp/r.err")"
	now=$(cat $sysctl)
	[ "$now" = 65530 ] || fail "--restore put back $now"
	grep -q "below 65530" "$tmp/r.err" || fail "--restore did not say why: $(cat "$tmp/r.err")"
	[ ! -e "$dir/libdedup-max_map_count.restore" ] || fail "state file left behind"
	echo "2. a stale state of 1000 left $now"
else
	echo "2. skipped: vm.max_map_count is $before here, not the default 65530"
fi
echo "PASS"
