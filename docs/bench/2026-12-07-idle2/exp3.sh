#!/usr/bin/env bash
# alternating plain / old (main's behaviour: the scratch build without knobs) / new
set -uo pipefail
runs=$1 rounds=$2
exe=/tmp/idle/idle-new2
key() { sed -n "s/.*\\b$1=\\([0-9]*\\).*/\\1/p" <<<"$2"; }
echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
cfgs=(plain old new)
for ((i=0;i<runs;i++)); do
 for ((j=0;j<3;j++)); do
  name=${cfgs[$(( (i+j) % 3 ))]}
  case $name in
   plain) out=$("$exe" 1024 20 128 $rounds);;
   old) out=$(LD_PRELOAD=/tmp/idle/x/libdedup.so DEDUP_START=1088M "$exe" 1024 20 128 $rounds);;
   new) out=$(LD_PRELOAD=/tmp/idle/new/libdedup.so DEDUP_START=1088M "$exe" 1024 20 128 $rounds);;
  esac
  echo "run $i $name: $out load $(cut -d' ' -f1 /proc/loadavg)"
 done
done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
