#!/usr/bin/env bash
# pl.sh N TAG:BUILD... - the preload library's unmerging paths (tests/preload/pl_unmerge_scale)
n=$1; shift
for m in wipeonfork uffd mremap release mlock; do
  nn=$n; [ $m = mlock ] && nn=1024
  for tb in "$@"; do
    tag=${tb%%:*}; b=${tb#*:}
    load=$(cut -d' ' -f1 /proc/loadavg)
    line=$(nice -n 5 /work/wt-unmerge2/tests/with_max_map_count.sh 1048576 -- env LD_PRELOAD=$b/libdedup.so.0.1.0 DEDUP_INTERVAL=20 \
        DEDUP_CPU=100 DEDUP_RECONCILE_MS=200 DEDUP_START=0 DEDUP_VMA_BUDGET=$((4*nn+4096)) \
        $b/tests/pl_unmerge_scale $m $nn 2>&1 | grep -iE "runs|FAIL|SKIP" | tail -1)
    echo "$tag $m $nn load=$load $line"
  done
done
