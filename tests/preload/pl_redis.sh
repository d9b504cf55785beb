#!/usr/bin/env bash
# pl_redis.sh DEDUP_RUN - redis-server under libdedup (dedup-run), loaded with
# 200 keys holding the same 1 MiB value: after merging every key reads back
# exactly, DEBUG DIGEST equals the digest taken before merging, and the
# server's Pss dropped; then half the keys are overwritten and everything is
# verified again. The same steps run first without libdedup, for the Pss
# baseline and the expected digests. Exit 0 pass, 1 fail, 77 skip.
set -u
run=$1 n=200
# Waits for something due (the server up or gone, merging done) end when it
# has happened, or fail after $cap s: 180, or $DEDUP_TEST_CAP_S (tcommon.h).
cap=${DEDUP_TEST_CAP_S:-180}
cap=${cap%.*}; [ "${cap:-0}" -gt 0 ] 2>/dev/null || cap=1
command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
	{ echo "SKIP: redis-server or redis-cli not installed" >&2; exit 77; }
tmp=$(mktemp -d)
pid=
cleanup() {
	[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$tmp/server.log" ] && tail -20 "$tmp/server.log" >&2; exit 1; }
pss() { awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup"; }

free_port() {
	local p
	for _ in $(seq 1 50); do
		p=$(( 20000 + RANDOM % 20000 ))
		(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo $p; return; }
	done
	return 1
}
cli() { timeout 20 redis-cli -p "$port" "$@"; }

start() {   # start [launcher...]
	port=$(free_port) || fail "no free port"
	"$@" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
		--enable-debug-command yes --dir "$tmp" --daemonize no >"$tmp/server.log" 2>&1 &
	pid=$!
	local t0=$SECONDS
	while [ $(( SECONDS - t0 )) -lt "$cap" ]; do
		[ "$(cli ping 2>/dev/null)" = PONG ] && return 0
		kill -0 "$pid" 2>/dev/null || fail "redis-server did not start"
		sleep 0.1
	done
	fail "redis-server does not answer after $cap s"
}
stop() {
	cli shutdown nosave >/dev/null 2>&1
	local t0=$SECONDS
	while [ $(( SECONDS - t0 )) -lt "$cap" ]; do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	kill -0 "$pid" 2>/dev/null && fail "redis-server did not stop after $cap s"
	wait "$pid" 2>/dev/null
	pid=
}
load() {    # load FILE KEYS...: SET each key to the file's content (one --pipe)
	local f=$1 size; shift
	size=$(stat -c %s "$f")
	for k in "$@"; do
		printf '*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n' ${#k} "$k" "$size"
		cat "$f"
		printf '\r\n'
	done >"$tmp/pipe"
	timeout 120 redis-cli -p "$port" --pipe <"$tmp/pipe" >"$tmp/pipe.out" 2>&1 ||
		{ cat "$tmp/pipe.out" >&2; fail "loading with redis-cli --pipe"; }
	grep -q "errors: 0," "$tmp/pipe.out" || { cat "$tmp/pipe.out" >&2; fail "SET errors"; }
	rm -f "$tmp/pipe"
}
verify() {  # every key holds the value it should
	for i in $(seq 0 $((n - 1))); do
		local want="$tmp/v1"
		[ "${1:-}" = half ] && [ $((i % 2)) -eq 0 ] && want="$tmp/v2"
		cli --raw GET "k$i" | head -c 1048576 | cmp -s - "$want" || fail "key k$i reads back wrong"
	done
}
keys=(); for i in $(seq 0 $((n - 1))); do keys+=("k$i"); done
even=(); for i in $(seq 0 2 $((n - 1))); do even+=("k$i"); done
head -c 1048576 /dev/urandom >"$tmp/v1"
head -c 1048576 /dev/urandom >"$tmp/v2"

# --- baseline, without libdedup
start env
load "$tmp/v1" "${keys[@]}"
sleep 1
base=$(pss)
digest1=$(cli DEBUG DIGEST)
load "$tmp/v2" "${even[@]}"
digest2=$(cli DEBUG DIGEST)
stop

# --- under libdedup
start "$run" --interval 20 --cpu 100 --reconcile 200
grep -q 'not merging' "$tmp/server.log" && { echo "SKIP: libdedup cannot merge here" >&2; exit 77; }
t0=$(date +%s.%N)
load "$tmp/v1" "${keys[@]}"
loaded=$(pss)
tl=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN{printf "%.1f", a-b}')
# merged: Pss is down by what the check below wants (the work, however long
# a busy machine takes for it) and stops falling (3 s without a 1% change);
# at most $cap s, then the check says how far it got
dup=$(( (n - 1) * 1024 ))
want=$(( base - dup * 50 / 100 ))
last=$loaded stable=0 tm=0 w0=$SECONDS
while [ $(( SECONDS - w0 )) -lt "$cap" ]; do
	sleep 0.5
	p=$(pss)
	if [ $(( last - p )) -gt $(( last / 100 )) ]; then
		stable=0
		tm=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN{printf "%.1f", a-b}')
	else
		stable=$((stable + 1))
		[ $stable -ge 6 ] && [ "$p" -le "$want" ] && break
	fi
	last=$p
done
after=$(pss)
[ "$(cli DEBUG DIGEST)" = "$digest1" ] || fail "DEBUG DIGEST changed after merging"
verify
echo "redis: Pss ${base} kB without libdedup; with it ${loaded} kB when loading ended (${tl} s, merging meanwhile), ${after} kB merged (stable ${tm} s after loading began; duplicates ${dup} kB)" >&2
# jemalloc places each large value at a random cache-line offset in its
# first page (cache-oblivious), and only values at the same offset have equal
# pages: with 200 values over 64 offsets about 70% of the duplicates merge.
[ $(( base - after )) -ge $(( dup * 50 / 100 )) ] || fail "Pss dropped by $(( base - after )) kB only"

load "$tmp/v2" "${even[@]}"
[ "$(cli DEBUG DIGEST)" = "$digest2" ] || fail "DEBUG DIGEST wrong after overwriting half"
verify half
sleep 3   # merged again (the new values are duplicates of each other)
[ "$(cli DEBUG DIGEST)" = "$digest2" ] || fail "DEBUG DIGEST changed after merging again"
echo "redis: Pss ${after} kB -> $(pss) kB after overwriting half the keys" >&2
stop
echo PASS >&2
