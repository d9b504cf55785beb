# dedup-bench: memory saved over time (generated)
set terminal pngcairo size 1500,900 font ',10'
set output '/tmp/budget-redis64k/saved.png'
set datafile separator ','
set key top left font ',8'
set grid
set logscale x
set xrange [0.05:*]
set xlabel 'seconds since go (log scale)'
set ylabel 'saved MiB (Pss)'
set multiplot layout 1,1 title 'dedup-bench: memory saved over time, 1024 MiB per workload'
set title 'redis'
plot '/tmp/budget-redis64k/series.csv' using 1:((strcol(2) eq 'redis' && strcol(3) eq 'none') ? $5/1024 : 1/0) with lines lw 2 title 'none', \
     '/tmp/budget-redis64k/series.csv' using 1:((strcol(2) eq 'redis' && strcol(3) eq 'ksm-fast') ? $5/1024 : 1/0) with lines lw 2 title 'ksm-fast', \
     '/tmp/budget-redis64k/series.csv' using 1:((strcol(2) eq 'redis' && strcol(3) eq 'libdedup-preload') ? $5/1024 : 1/0) with lines lw 2 title 'libdedup-preload'
unset multiplot
