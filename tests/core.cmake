# Core engine tests (issue 2). Label: core.
# A test that waits for work (merges, cycles with merging, the reader's
# fence) waits up to t_cap() (tests/tcommon.h, 3 minutes) and then fails;
# its TIMEOUT of 600 s only catches a hang.
dedup_test(test_merge_basic TIMEOUT 60 LABELS core)
dedup_test(test_cow_write LABELS core)
dedup_test(test_zero_pages LABELS core)
dedup_test(test_collision LABELS core)
dedup_test(test_unregister LABELS core MMC)
dedup_test(test_hammer TIMEOUT 600 LABELS core race)
dedup_test(test_pinned LABELS core race)
# The same test with the pin check disabled must fail (lost data): proof that
# test_pinned can catch the bug it is about.
add_test(NAME test_pinned_catches_naive COMMAND test_pinned)
set_tests_properties(test_pinned_catches_naive PROPERTIES WILL_FAIL TRUE TIMEOUT 60
                     ENVIRONMENT "DEDUP_TEST_UNSAFE_NO_PIN_CHECK=1" LABELS "core;race")
dedup_test(test_kernel_writer TIMEOUT 600 LABELS core race)
add_test(NAME test_user_mode_only COMMAND test_kernel_writer)
set_tests_properties(test_user_mode_only PROPERTIES TIMEOUT 30 SKIP_RETURN_CODE 77
                     ENVIRONMENT "DEDUP_FORCE_USER_ONLY=1" LABELS core)
add_test(NAME test_hammer_signals COMMAND test_hammer)
set_tests_properties(test_hammer_signals PROPERTIES TIMEOUT 600 SKIP_RETURN_CODE 77
                     ENVIRONMENT "DEDUP_TEST_SIGNALS=1" LABELS "core;race")
dedup_test(test_discard LABELS core)
dedup_test(test_remove_race TIMEOUT 600 LABELS core race)
dedup_test(test_vma_budget LABELS core MMC)
dedup_test(test_vma_budget_own LABELS core MMC)
dedup_test(test_vma_budget_long LABELS core)
dedup_test(test_vma_cost LABELS core)
dedup_test(test_unregister_race TIMEOUT 600 LABELS core race MMC)
# The same with isolated merged pages: the pages between them are moved out
# and back while a span of runs is handed back (merge.c, um_span)
dedup_test(test_unregister_gaps TIMEOUT 600 LABELS core race)
# ... and keeps the flags a program gave the pages between them (smaps):
# spans read them, one mremap per run never touches them
dedup_test(test_unregister_gap_flags TIMEOUT 600 LABELS core)
add_test(NAME test_unregister_gap_flags_by_run COMMAND test_unregister_gap_flags)
set_tests_properties(test_unregister_gap_flags_by_run PROPERTIES TIMEOUT 600
                     ENVIRONMENT "DEDUP_TEST_UNMERGE_BY_RUN=1" LABELS "core")
add_test(NAME test_unregister_gap_flags_catches_naive COMMAND test_unregister_gap_flags)
set_tests_properties(test_unregister_gap_flags_catches_naive PROPERTIES WILL_FAIL TRUE TIMEOUT 600
                     ENVIRONMENT "DEDUP_TEST_UNSAFE_SPAN_FLAGS=1" LABELS "core")
# Each race test must fail on the naive implementation it guards against:
add_test(NAME test_remove_race_catches_naive COMMAND test_remove_race)
set_tests_properties(test_remove_race_catches_naive PROPERTIES WILL_FAIL TRUE TIMEOUT 600
                     ENVIRONMENT "DEDUP_TEST_UNSAFE_NO_DISCARD_FENCE=1" LABELS "core;race")
dedup_test(test_signal_thread TIMEOUT 600 LABELS core race)
add_test(NAME test_signal_thread_catches_naive COMMAND test_signal_thread)
set_tests_properties(test_signal_thread_catches_naive PROPERTIES WILL_FAIL TRUE TIMEOUT 600
                     ENVIRONMENT "DEDUP_TEST_UNSAFE_SIGNALS=1" LABELS "core;race")
add_test(NAME test_kernel_writer_catches_naive COMMAND test_kernel_writer)
set_tests_properties(test_kernel_writer_catches_naive PROPERTIES WILL_FAIL TRUE TIMEOUT 600
                     ENVIRONMENT "DEDUP_TEST_UNSAFE_USER_ONLY=1" LABELS "core;race")
# Writers also discard pages (MADV_DONTNEED must read zeros).
add_test(NAME test_hammer_dontneed COMMAND test_hammer)
set_tests_properties(test_hammer_dontneed PROPERTIES TIMEOUT 600 SKIP_RETURN_CODE 77
                     ENVIRONMENT "DEDUP_TEST_DONTNEED=1" LABELS "core;race")
dedup_test(test_backoff TIMEOUT 600 LABELS core)
# A 1 TiB sparse reservation (issue 14): metadata, scan cost and the CPU
# budget follow the pages present, not the range registered.
dedup_test(test_sparse TIMEOUT 600 LABELS core)
# Smart scan (issue 14, idle cost): pages that never match are read less
# and less, and duplicates that appear later still merge.
dedup_test(test_smart_scan TIMEOUT 600 LABELS core)
dedup_test(test_fork_not_ours TIMEOUT 120 LABELS core)
add_test(NAME test_fork_not_ours_catches_naive COMMAND test_fork_not_ours)
set_tests_properties(test_fork_not_ours_catches_naive PROPERTIES WILL_FAIL TRUE TIMEOUT 120
                     ENVIRONMENT "DEDUP_TEST_UNSAFE_NO_CHILD_GUARD=1" LABELS core)
# A still heap (nothing faults, nothing changes) backs off beyond the idle
# back-off (issue 14, idle cost); new memory in it ends that at once.
dedup_test(test_still TIMEOUT 600 LABELS core)
# Unmerging 16k isolated merged runs: linear time (a 60 s hang guard, no
# timing asserted), one anonymous mapping again, every page as it read.
add_executable(test_unmerge_scale test_unmerge_scale.c)
target_include_directories(test_unmerge_scale PRIVATE ${PROJECT_SOURCE_DIR}/tests
                           ${PROJECT_SOURCE_DIR}/libdedup/src)
target_link_libraries(test_unmerge_scale PRIVATE dedup_static Threads::Threads)
foreach(how shutdown unregister)
  dedup_mmc_test(NAME test_unmerge_scale_${how} TIMEOUT 180 LABELS core
                 COMMAND $<TARGET_FILE:test_unmerge_scale> ${how} 16384)
endforeach()
# ... and without PROCMAP_QUERY (Linux < 6.11): the text of /proc/self/maps,
# read once per region, not once per run
add_test(NAME test_unmerge_scale_maps_text COMMAND test_unmerge_scale unregister 16384)
set_tests_properties(test_unmerge_scale_maps_text PROPERTIES TIMEOUT 180 SKIP_RETURN_CODE 77
                     LABELS core ENVIRONMENT "DEDUP_FORCE_MAPS_TEXT=1;DEDUP_STAT_DIR=${CMAKE_BINARY_DIR}/stat-dir")
# Run by run (one mremap each, no spans: merge.c, um_span), the path a span
# falls back to when a page between its runs will not move
add_test(NAME test_unmerge_scale_by_run COMMAND test_unmerge_scale unregister 16384)
set_tests_properties(test_unmerge_scale_by_run PROPERTIES TIMEOUT 180 SKIP_RETURN_CODE 77
                     LABELS core ENVIRONMENT "DEDUP_TEST_UNMERGE_BY_RUN=1;DEDUP_STAT_DIR=${CMAKE_BINARY_DIR}/stat-dir")
# Near vm.max_map_count: a run is left merged only when nothing at all can
# be handed back. Lowers the sysctl itself, for one call at a time, under the
# machine-wide lock (tests/mmc_lock.h), which it may wait for (up to t_cap()).
dedup_test(test_unmerge_near_limit TIMEOUT 600 LABELS core max_map_count)
set_tests_properties(test_unmerge_near_limit PROPERTIES RESOURCE_LOCK max_map_count)
# Not in the sanitizer build: at the lowered limit the child's ASan runtime
# cannot map its own memory ("AddressSanitizer failed to allocate").
if(NOT DEDUP_SANITIZE)
  dedup_test(test_fork_low_limit TIMEOUT 600 LABELS core max_map_count)
  set_tests_properties(test_fork_low_limit PROPERTIES RESOURCE_LOCK max_map_count)
endif()
