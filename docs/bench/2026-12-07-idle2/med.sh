#!/usr/bin/env bash
# med.sh FILE: per config, median (min-max) of B/A: wall chase, wall tlb, cpu chase, cpu tlb
awk '/^run/ { name=$3; sub(":","",name);
  for (i=4;i<=NF;i++){ split($i,kv,"="); v[kv[1]]=kv[2] }
  print name, v["b_chase_ns"]/v["a_chase_ns"], v["b_tlb_ns"]/v["a_tlb_ns"], v["b_chase_cpu_ns"]/v["a_chase_cpu_ns"], v["b_tlb_cpu_ns"]/v["a_tlb_cpu_ns"] }' "$1" |
python3 -c '
import sys, statistics as st
d={}
for l in sys.stdin:
    f=l.split(); d.setdefault(f[0],[]).append([float(x) for x in f[1:]])
print("config  n  wall-chase  wall-tlb  cpu-chase  cpu-tlb   (median, min-max)")
for k,v in d.items():
    cols=list(zip(*v))
    print("%-6s %2d  " % (k,len(v)) + "  ".join("%.3f (%.2f-%.2f)" % (st.median(c),min(c),max(c)) for c in cols))
'
