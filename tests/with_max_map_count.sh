#!/usr/bin/env bash
# tests/with_max_map_count.sh [--timeout S] N -- COMMAND [ARGS...]
# tests/with_max_map_count.sh --restore
#
# Runs COMMAND with vm.max_map_count set to N and puts the previous value
# back afterwards: when COMMAND passes, fails or is killed, and when this
# script gets SIGTERM/SIGINT/SIGHUP. --timeout S kills COMMAND after S
# seconds (SIGTERM, SIGKILL 5 s later), so that the restore never depends
# on CTest's own timeout, which kills with SIGKILL (untrappable): keep S
# below the test's TIMEOUT. Should this script itself be SIGKILLed, the
# value it found is in a state file, and the next run (or --restore, which
# CTest runs as a cleanup fixture after these tests) puts it back.
#
# The sysctl is machine-wide, and several worktrees or CTest runs may share
# the machine. RESOURCE_LOCK only orders the tests of one CTest run, so this
# script also holds an exclusive flock on
#   /run/lock/libdedup-max_map_count.lock   (${TMPDIR:-/tmp}/... if /run/lock
#                                            is not writable)
# from before it reads the value until after it has put it back, COMMAND's
# whole run included. COMMAND inherits the lock: if this script is SIGKILLed,
# nobody changes the value until COMMAND is gone too. Anything else of ours
# that changes the sysctl takes the same lock (probe_max_map_count,
# dedup-bench --max-map-count). With --timeout S, the wait for the lock
# counts against S. The lock file names its holder while it is held.
# COMMAND gets DEDUP_MMC_LOCK_HELD=1 in its environment, and a run that
# finds it set does not take the lock again (flock locks belong to the open
# file: a nested run would wait for its own parent). Set it yourself when
# you hold the lock around a whole ctest (flock FILE ctest ...).
#
# A value below 65530 (the kernel's default) found in the state file, or
# found live when we start, is never put back: another run crashed while it
# had the limit lowered. We put back 65530 instead and say so.
#
# Without root (or without a writable /proc/sys/vm/max_map_count) COMMAND
# runs at the current value, and this script says so on stderr. Exit status:
# COMMAND's (77 = skip passes through); 1 if the lock or the sysctl fails.
set -u
usage() { echo "usage: $0 [--timeout S] N -- COMMAND [ARGS...] | --restore" >&2; exit 2; }
sysctl=/proc/sys/vm/max_map_count
floor=65530
if [ -w /run/lock ]; then lockdir=/run/lock; else lockdir=${TMPDIR:-/tmp}; fi
lock=$lockdir/libdedup-max_map_count.lock
# What to restore if a run of ours was SIGKILLed before it could: the
# value it found, written before it changed anything (under the lock).
state=$lockdir/libdedup-max_map_count.restore
say() { echo "with_max_map_count: $*" >&2; }

# take_lock WAIT_S: exclusive flock on $lock, held on fd $lockfd (inherited
# by COMMAND). WAIT_S empty: wait as long as it takes.
lockfd=
take_lock() {
	[ "${DEDUP_MMC_LOCK_HELD:-}" = 1 ] && return 0   # a parent holds it
	# (an exec's own redirections are permanent: 2>/dev/null goes on a group)
	{ exec {lockfd}<>"$lock"; } 2>/dev/null || { exec {lockfd}<"$lock"; } 2>/dev/null || {
		say "cannot open $lock; running without the lock"
		lockfd=
		return 0
	}
	flock -n "$lockfd" && return 0
	say "waiting for $lock, held by: $(head -c 200 "$lock" 2>/dev/null)"
	if [ -n "$1" ]; then
		flock -w "$1" "$lockfd" || { say "no lock after $1 s; not run"; exit 1; }
	else
		flock "$lockfd" || { say "flock $lock failed; not run"; exit 1; }
	fi
}
note_holder() { [ -n "$lockfd" ] && echo "pid $$ ($1): $2" >"$lock" 2>/dev/null; }

# valid N: N is a number
valid() { case $1 in '' | *[!0-9]*) return 1 ;; esac; }

restore_stale() {
	local old
	[ -f "$state" ] || return 0
	old=$(cat "$state" 2>/dev/null)
	valid "$old" || { rm -f "$state"; return 0; }
	if [ "$old" -lt $floor ]; then
		say "state file $state holds $old, below $floor: a crashed run's lowered value;" \
			"putting back $floor instead"
		old=$floor
	fi
	if [ "$(cat $sysctl)" != "$old" ]; then
		say "putting back vm.max_map_count=$old left by a killed run"
		echo "$old" >$sysctl 2>/dev/null || return 1
	fi
	rm -f "$state"
}

if [ "${1:-}" = --restore ]; then
	[ "$(id -u)" = 0 ] && [ -w $sysctl ] || exit 0
	take_lock ""
	note_holder restore "--restore"
	restore_stale || exit 1
	say "vm.max_map_count is $(cat $sysctl)"
	exit 0
fi
limit=
if [ "${1:-}" = --timeout ]; then
	limit=${2:-}
	shift 2 || usage
	valid "$limit" || usage
fi
[ $# -ge 3 ] || usage
want=$1
shift
[ "$1" = "--" ] || usage
shift
valid "$want" || usage

if [ "$(id -u)" != 0 ] || [ ! -w $sysctl ]; then
	say "not root: running at the current vm.max_map_count=$(cat $sysctl) instead of $want"
	run=("$@")
	[ -n "$limit" ] && run=(timeout -k 5 "$limit" "$@")
	exec "${run[@]}"
fi

t0=$SECONDS
take_lock "$limit"
export DEDUP_MMC_LOCK_HELD=1
note_holder "$want" "$*"
run=("$@")
if [ -n "$limit" ]; then
	left=$((limit - (SECONDS - t0)))
	[ $left -ge 1 ] || left=1
	run=(timeout -k 5 "$left" "$@")
fi

restore_stale
old=$(cat $sysctl)
if [ "$old" = "$want" ]; then
	say "vm.max_map_count is already $want"
	exec "${run[@]}"   # the lock goes with it
fi
if [ "$old" -lt $floor ]; then
	say "found vm.max_map_count=$old, below $floor, with no run of ours holding it:" \
		"another program's lowered value; $floor will be put back"
	old=$floor
fi

echo "$old" >"$state"
restored=0
restore() {
	[ $restored = 1 ] && return
	restored=1
	echo "$old" >$sysctl && rm -f "$state"
	say "vm.max_map_count back to $(cat $sysctl)"
}
child=
on_signal() {
	# pass it on to the test, wait for it, then restore
	[ -n "$child" ] && kill -"$1" "$child" 2>/dev/null && wait "$child" 2>/dev/null
	restore
	trap - "$1"
	kill -"$1" $$
}
trap restore EXIT
for s in TERM INT HUP QUIT; do
	trap "on_signal $s" $s
done

echo "$want" >$sysctl || { say "cannot set $want"; exit 1; }
say "vm.max_map_count=$(cat $sysctl) (was $old) for: $*"
"${run[@]}" &
child=$!
wait "$child"
rc=$?
restore
[ $rc = 124 ] && [ -n "$limit" ] && say "killed after $limit s"
exit $rc
