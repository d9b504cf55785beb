# Benchmark harness test (issue 6). Label: bench.
# dedup_bench_quick runs `dedup-bench --quick --cap 60` (32 MiB per workload;
# each run ends when the merging settled, about a second, at most 60 s; the
# whole run about a minute, at most 480 s) and bench/check_quick.sh checks
# the output:
# every workload x mode row and figure present, results.csv/json and
# series.csv written, /sys/kernel/mm/ksm tunables the same after as before.
# It covers the workers workload (issue 13) at 2 processes x 32 MiB: the
# family's rows, ksm-fast saving across them, libdedup-api not, and
# libdedup-share with both members in the group and merged into its pages
# (skipped only where the build has no dedup-share helper).
# RUN_SERIAL: it drives the machine-wide ksmd and times things.
add_test(NAME dedup_bench_quick
         COMMAND sh ${PROJECT_SOURCE_DIR}/bench/check_quick.sh $<TARGET_FILE:dedup-bench>)
set_tests_properties(dedup_bench_quick PROPERTIES TIMEOUT 600 LABELS bench
                     SKIP_RETURN_CODE 77 RUN_SERIAL TRUE)
