#!/usr/bin/env bash
# run_settled.sh: settled.sh for main and the branch, alternating, twice.
cd "$(dirname "$0")"
for i in 1 2; do
	./settled.sh /tmp/idle-snap/main/libdedup.so 1024 100 40 > settled_main_$i.txt 2>&1
	./settled.sh /tmp/idle-snap/713d555/libdedup.so 1024 100 40 > settled_713d555_$i.txt 2>&1
done
