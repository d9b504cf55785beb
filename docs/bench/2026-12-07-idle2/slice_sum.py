import sys, statistics as st
rows=[tuple(map(int,l.split())) for l in open(sys.argv[1]) if l.strip() and l[0].isdigit()]
busy=[r for r in rows if r[2] > 2_000_000]   # engine used >2 ms during the slice
idle=[r for r in rows if r[2] < 200_000]
tot=sum(r[1] for r in rows); eng=sum(r[2] for r in rows)
f=lambda rs: st.median([r[0]/1e6 for r in rs]) if rs else float('nan')
print("%s: slices %d, engine CPU %.1f%% of the time; loop cpu ms/slice median: engine busy %.2f (n=%d), engine idle %.2f (n=%d), all %.2f" %
      (sys.argv[1], len(rows), 100*eng/tot, f(busy), len(busy), f(idle), len(idle), f(rows)))
