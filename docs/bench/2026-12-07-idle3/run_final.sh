#!/usr/bin/env bash
# run_final.sh: settled.sh (130 s, strace 30 s from 60 s) for main and 1249505, alternating.
cd "$(dirname "$0")"
for i in 1 2; do
	./settled.sh /tmp/idle-snap/main/libdedup.so 1024 130 60 30 > final_main_$i.txt 2>&1
	./settled.sh /tmp/idle-snap/1249505/libdedup.so 1024 130 60 30 > final_1249505_$i.txt 2>&1
done
