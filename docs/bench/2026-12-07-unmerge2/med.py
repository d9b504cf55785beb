import sys, statistics as st, collections
d=collections.defaultdict(list)
for f in sys.argv[1:]:
    for l in open(f):
        p=l.strip().split(',')
        if len(p)<8 or not p[5]: continue
        tag,load,mmc,how,runs,secs,cpu,stt=p[:8]
        d[(how,mmc,tag)].append((float(secs),float(cpu),float(load),stt))
print("| path | limit | build | n | wall median (range) | CPU median (range) | load at start |")
print("|---|---|---|---|---|---|---|")
for k in sorted(d):
    v=d[k]; w=[x[0] for x in v]; c=[x[1] for x in v]; L=[x[2] for x in v]
    print("| %s | %s | %s | %d | %.3f s (%.3f-%.3f) | %.3f s (%.3f-%.3f) | %.2f-%.2f |"%(k[0],k[1],k[2],len(v),st.median(w),min(w),max(w),st.median(c),min(c),max(c),min(L),max(L)))
