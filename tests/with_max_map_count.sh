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
# The sysctl is machine-wide: CTest runs every test that uses this with
# RESOURCE_LOCK max_map_count, so that two of them never overlap, and the
# value is only changed for the time COMMAND runs.
#
# Without root (or without a writable /proc/sys/vm/max_map_count) COMMAND
# runs at the current value, and this script says so on stderr. Exit status:
# COMMAND's (77 = skip passes through).
set -u
usage() { echo "usage: $0 [--timeout S] N -- COMMAND [ARGS...] | --restore" >&2; exit 2; }
sysctl=/proc/sys/vm/max_map_count
# What to restore if a run of ours was SIGKILLed before it could: the
# value it found, written before it changed anything.
state=${TMPDIR:-/tmp}/libdedup-max_map_count.restore

restore_stale() {
	local old
	[ -f "$state" ] || return 0
	old=$(cat "$state" 2>/dev/null)
	case $old in '' | *[!0-9]*) rm -f "$state"; return 0 ;; esac
	if [ "$(cat $sysctl)" != "$old" ]; then
		echo "with_max_map_count: putting back vm.max_map_count=$old left by a killed run" >&2
		echo "$old" >$sysctl 2>/dev/null || return 1
	fi
	rm -f "$state"
}

if [ "${1:-}" = --restore ]; then
	[ "$(id -u)" = 0 ] && [ -w $sysctl ] || exit 0
	restore_stale || exit 1
	echo "with_max_map_count: vm.max_map_count is $(cat $sysctl)" >&2
	exit 0
fi
limit=
if [ "${1:-}" = --timeout ]; then
	limit=${2:-}
	shift 2 || usage
	case $limit in '' | *[!0-9]*) usage ;; esac
fi
[ $# -ge 3 ] || usage
want=$1
shift
[ "$1" = "--" ] || usage
shift
case $want in '' | *[!0-9]*) usage ;; esac
run=("$@")
[ -n "$limit" ] && run=(timeout -k 5 "$limit" "$@")

if [ "$(id -u)" != 0 ] || [ ! -w $sysctl ]; then
	echo "with_max_map_count: not root: running at the current vm.max_map_count=$(cat $sysctl)" \
		"instead of $want" >&2
	exec "${run[@]}"
fi

restore_stale
old=$(cat $sysctl)
if [ "$old" = "$want" ]; then
	echo "with_max_map_count: vm.max_map_count is already $want" >&2
	exec "${run[@]}"
fi

echo "$old" >"$state"
restored=0
restore() {
	[ $restored = 1 ] && return
	restored=1
	echo "$old" >$sysctl && rm -f "$state"
	echo "with_max_map_count: vm.max_map_count back to $(cat $sysctl)" >&2
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

echo "$want" >$sysctl || { echo "with_max_map_count: cannot set $want" >&2; exit 1; }
echo "with_max_map_count: vm.max_map_count=$(cat $sysctl) (was $old) for: $*" >&2
"${run[@]}" &
child=$!
wait "$child"
rc=$?
restore
[ $rc = 124 ] && [ -n "$limit" ] && echo "with_max_map_count: killed after $limit s" >&2
exit $rc
