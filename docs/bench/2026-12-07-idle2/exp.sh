#!/usr/bin/env bash
# exp.sh LIB RUNS MIB SETTLE cfg... ; cfg = name or name:VAR=x,VAR=y ; "plain" = no preload
set -uo pipefail
lib=$1 runs=$2 mib=$3 settle=$4; shift 4
exe=${EXE:-/tmp/idle/idle-new}
key() { sed -n "s/.*\\b$1=\\([0-9]*\\).*/\\1/p" <<<"$2"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.4f", a/b}'; }
med() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END{m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f (%.3f-%.3f)", m, a[1], a[NR]}'; }
declare -A R
cfgs=("$@"); n=${#cfgs[@]}
echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for ((i=0;i<runs;i++)); do
 for ((j=0;j<n;j++)); do
  cfg=${cfgs[$(( (i+j) % n ))]}; name=${cfg%%:*}; envs=""; [[ $cfg == *:* ]] && envs=${cfg#*:}
  if [ "$name" = plain ]; then out=$("$exe" "$mib" "$settle" 128 ${ROUNDS:-8})
  else out=$(env LD_PRELOAD=$lib DEDUP_START=$((mib+64))M ${envs//,/ } "$exe" "$mib" "$settle" 128 ${ROUNDS:-8}); fi
  for k in chase tlb; do
   R[$name,$k]+="$(ratio "$(key b_${k}_ns "$out")" "$(key a_${k}_ns "$out")") "
   R[$name,${k}c]+="$(ratio "$(key b_${k}_cpu_ns "$out")" "$(key a_${k}_cpu_ns "$out")") "
  done
  echo "run $i $name: $out load $(cut -d' ' -f1 /proc/loadavg)"
 done
done
echo "median B/A over $runs runs ($mib MiB, settle $settle s): wall chase | wall tlb | cpu chase | cpu tlb"
for cfg in "${cfgs[@]}"; do name=${cfg%%:*}
 echo "  $name: $(med "${R[$name,chase]}") | $(med "${R[$name,tlb]}") | $(med "${R[$name,chasec]}") | $(med "${R[$name,tlbc]}")"
done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
