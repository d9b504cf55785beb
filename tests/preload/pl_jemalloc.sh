#!/usr/bin/env bash
# pl_jemalloc.sh PROGRAM LIBDEDUP LIBJEMALLOC - pl_jemalloc (a program whose
# allocator is a shared jemalloc, purging at once) under libdedup:
#   on       extent hooks on (the default): every fresh extent the program
#            reports on stderr was reported to libdedup by the alloc hook
#            (DEDUP_LOG=debug line "allocator hook reported LO-HI");
#   off      DEDUP_JEMALLOC=0: no hooks installed, nothing reported;
#   noretain hooks on, MALLOC_CONF retain:false (jemalloc unmaps extents:
#            the dalloc hook is installed and used).
# Each run must pass on its own (merges, Pss, zeros after purge, content),
# and all must print the same results on stdout.
# Exit 0 pass, 1 fail, 77 skip.
set -u
prog=$1 lib=$2 je=$3
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

run() {
	local name=$1 conf=$2; shift 2
	timeout 300 env LD_PRELOAD="$lib:$je" DEDUP_START=0 DEDUP_INTERVAL=20 DEDUP_CPU=100 \
		DEDUP_RECONCILE_MS=200 DEDUP_LOG=debug MALLOC_CONF="$conf" "$@" \
		"$prog" >"$tmp/$name.out" 2>"$tmp/$name.err"
	local rc=$?
	# the program's own lines and libdedup's non-debug ones
	grep -v -e 'preload: registered' -e 'preload: forgot' -e 'hook reported' \
		"$tmp/$name.err" | sed "s/^/[$name] /" >&2
	[ $rc -eq 77 ] && { echo "SKIP: $name" >&2; exit 77; }
	[ $rc -eq 0 ] || fail "$name: exit status $rc"
}

decay=dirty_decay_ms:0,muzzy_decay_ms:0
run on "$decay"
run off "$decay" DEDUP_JEMALLOC=0
run noretain "retain:false,$decay"

# on: each fresh extent lies in a range the alloc hook reported
for name in on noretain; do
	ptrs=$(grep -o 'fresh extent 0x[0-9a-f]*' "$tmp/$name.err" | awk '{print $3}')
	ranges=$(grep -o 'allocator hook reported 0x[0-9a-f]*-0x[0-9a-f]*' "$tmp/$name.err" |
		 awk '{print $4}')
	[ -n "$ptrs" ] || fail "$name: the program reported no fresh extent"
	for p in $ptrs; do
		found=0
		for r in $ranges; do
			if (( p >= ${r%-*} && p < ${r#*-} )); then found=1; break; fi
		done
		[ $found -eq 1 ] || fail "$name: fresh extent $p was not reported by the alloc hook"
	done
	echo "$name: $(wc -w <<<"$ptrs") fresh extents, each reported by the alloc hook" >&2
done
grep -q 'retain on' "$tmp/on.err" || fail "on: libdedup did not say it wraps the hooks"
grep -q 'retain off' "$tmp/noretain.err" || fail "noretain: libdedup did not see retain:false"

# off: nothing wrapped, nothing reported
grep -q -e 'hook reported' -e 'hooks wrapped' "$tmp/off.err" &&
	fail "off: extent hooks were used with DEDUP_JEMALLOC=0"
grep -q 'extent hooks off (DEDUP_JEMALLOC=0)' "$tmp/off.err" ||
	fail "off: libdedup did not say the hooks are off"

# the same results every way
for name in off noretain; do
	cmp -s "$tmp/on.out" "$tmp/$name.out" ||
		{ diff "$tmp/on.out" "$tmp/$name.out" >&2; fail "stdout differs: on vs $name"; }
done
sed 's/^/[stdout] /' "$tmp/on.out" >&2
echo PASS >&2
