#!/usr/bin/env bash
# bench.sh ROUNDS TAG:BUILD... - bench/unmerge.sh 32000 for each build in turn, ROUNDS times,
# with the load before each run. Output: tag,load,CSV line
rounds=$1; shift
src=/work/wt-unmerge2
for r in $(seq "$rounds"); do
	for tb in "$@"; do
		tag=${tb%%:*}; b=${tb#*:}
		load=$(cut -d' ' -f1 /proc/loadavg)
		nice -n 5 "$src/bench/unmerge.sh" "$b" 32000 2>>/tmp/unmerge2-out/bench.err | tail -n +2 | sed "s/^/$tag,$load,/"
	done
done
