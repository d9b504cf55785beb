#!/usr/bin/env bash
# pl_sparse.sh LIB PROGRAM - a program with a 1 TiB sparse reservation
# (pl_sparse.c) run without and with libdedup preloaded, at the default CPU
# budget (DEDUP_CPU=25). Preloaded it asserts merging, metadata and CPU
# itself; here its Pss with libdedup must end below its Pss without (on
# 7dca772 it ended above: the metadata of the terabyte outweighed the
# merge). Exit 0 pass, 1 fail, 77 skip.
set -u
lib=$1 prog=$2
fail() { echo "FAIL: $*" >&2; exit 1; }

plain=$(env -u LD_PRELOAD "$prog"); rc=$?
[ $rc -eq 77 ] && exit 77
[ $rc -eq 0 ] || fail "the program fails without libdedup (exit $rc)"
# Passes every 50 ms and no idle back-off: the budget must hold while the
# engine rescans the terabyte, not only while it waits. DEDUP_START=0: 16 MiB
# resident is below the lazy start's threshold, and the point is what the
# engine costs once it runs.
pre=$(timeout 500 env LD_PRELOAD="$lib" DEDUP_CPU=25 DEDUP_INTERVAL=50 DEDUP_IDLE_BACKOFF=1 \
	DEDUP_START=0 "$prog"); rc=$?
[ $rc -eq 77 ] && exit 77
a=$(sed -n 's/^pss_kb //p' <<<"$plain") b=$(sed -n 's/^pss_kb //p' <<<"$pre")
echo "Pss without libdedup ${a:-?} kB, with ${b:-?} kB" >&2
[ $rc -eq 0 ] || fail "exit status $rc under libdedup"
[ -n "$a" ] && [ -n "$b" ] || fail "no pss_kb line"
[ "$b" -lt "$a" ] || fail "Pss with libdedup ($b kB) not below Pss without ($a kB)"
echo PASS >&2
