# The torture suite (issue 3, tests/torture; docs/torture.md). Label: torture.
# CTest runs a short version: two seeds x DEDUP_TORTURE_SECONDS (30 s), the
# proof that it catches the naive protocol, and the reproducers of bugs it
# found. The long run (an hour) is tests/torture/long-run.sh.
function(torture_exe name)
  add_executable(${name} ${CMAKE_CURRENT_SOURCE_DIR}/torture/${name}.c)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests
                             ${PROJECT_SOURCE_DIR}/libdedup/src)
  target_link_libraries(${name} PRIVATE dedup_static PkgConfig::URING Threads::Threads)
endfunction()
torture_exe(torture)
torture_exe(repro_mremap_grow)
torture_exe(repro_unstable_stale)
torture_exe(repro_mprotect_moveback)
torture_exe(repro_fork_store)
torture_exe(repro_unregister_mremap)

set(DEDUP_TORTURE_SECONDS 30 CACHE STRING "seconds per torture run in CTest")
# A run needs 1000 merges per 10 s of it; on a busy machine it goes on past
# its seconds until it has them, for up to 180 s more (torture --max-seconds).
math(EXPR _torture_timeout "${DEDUP_TORTURE_SECONDS} * 3 + 60 + 180")
# Nothing known to be broken is left out of the CI runs (set options here if
# something ever is, with its README "Known bugs" entry).
set(_torture_known)
# Each seed at both vm.max_map_count values (tests/CMakeLists.txt, MMC).
# Seed 2 hands ranges back by span whatever their size (merge.c, um_walk:
# on its own only ranges of hundreds of runs read smaps and span).
set(_torture_env_1 "")
set(_torture_env_2 "DEDUP_TEST_UNMERGE_SMAPS=1")
foreach(seed 1 2)
  dedup_mmc_test(NAME torture_seed${seed} TIMEOUT ${_torture_timeout} LABELS torture race
                 ENV ${_torture_env_${seed}}
                 COMMAND $<TARGET_FILE:torture> --seconds ${DEDUP_TORTURE_SECONDS} --seed ${seed}
                         ${_torture_known})
endforeach()

# With the pin check disabled (the naive protocol) the torture must lose data
# in its io_uring fixed-buffer reads: proof that it catches that bug. The run
# stops at the first mismatch (well under a second); --seconds is only the
# cap for a run that never finds it (and then passes: WILL_FAIL turns red).
add_test(NAME torture_catches_naive
         COMMAND torture --seconds 180 --seed 11 --min-merges 0
                 --only uring_fixed,write,dup,verify,sleep)
set_tests_properties(torture_catches_naive PROPERTIES WILL_FAIL TRUE TIMEOUT 600
                     ENVIRONMENT "DEDUP_TEST_UNSAFE_NO_PIN_CHECK=1" LABELS "torture;race")

# Without the guard of a fork()ed child's merged pages (child.c) the children
# must read merged content where their MADV_DONTNEED left zeros (the same:
# until the first, at most 180 s).
add_test(NAME torture_catches_naive_child
         COMMAND torture --seconds 180 --seed 1 --min-merges 0)
set_tests_properties(torture_catches_naive_child PROPERTIES WILL_FAIL TRUE TIMEOUT 600
                     ENVIRONMENT "DEDUP_TEST_UNSAFE_NO_CHILD_GUARD=1" LABELS "torture;race")

# A child that cannot run the guard thread (ThreadSanitizer's runtime kills
# it; or no userfaultfd there) copies its merged pages instead (child.c,
# give_up). The copy zeroed every page discarded since its merge, also those
# written since: the fork child lost writes (seed 2, within a second, every
# run, before 2026-12-07). Must pass.
add_test(NAME torture_child_copy
         COMMAND torture --seconds 20 --seed 2)
set_tests_properties(torture_child_copy PROPERTIES TIMEOUT 300
                     ENVIRONMENT "DEDUP_TEST_CHILD_COPY=1" LABELS "torture;race")

# Bugs the torture found, reduced to small deterministic programs.
# After dedup_unregister merged runs used to stay file mappings, so mremap
# grow mapped other canonical pages and a move of several registered VMAs
# failed half done (merge.c, "Unmerging").
add_test(NAME torture_repro_mremap_grow COMMAND repro_mremap_grow)
set_tests_properties(torture_repro_mremap_grow PROPERTIES TIMEOUT 30 SKIP_RETURN_CODE 77
                     LABELS "torture")
add_test(NAME torture_repro_unstable_stale COMMAND repro_unstable_stale)
set_tests_properties(torture_repro_unstable_stale PROPERTIES TIMEOUT 60 SKIP_RETURN_CODE 77
                     ENVIRONMENT "DEDUP_TEST_SECONDS=10" LABELS "torture;race")
add_test(NAME torture_repro_mprotect_moveback COMMAND repro_mprotect_moveback)
set_tests_properties(torture_repro_mprotect_moveback PROPERTIES TIMEOUT 60 SKIP_RETURN_CODE 77
                     ENVIRONMENT "DEDUP_TEST_SECONDS=10" LABELS "torture;race")
# fork() of a merged process, at both vm.max_map_count values
dedup_mmc_test(NAME torture_repro_fork_store TIMEOUT 45 LABELS torture race
               COMMAND $<TARGET_FILE:repro_fork_store>)
# ... and fails without the fork() fence (prefork's dd_store_keep_all).
add_test(NAME torture_repro_fork_store_catches_naive COMMAND repro_fork_store)
set_tests_properties(torture_repro_fork_store_catches_naive PROPERTIES WILL_FAIL TRUE TIMEOUT 30
                     ENVIRONMENT "DEDUP_TEST_UNSAFE_NO_FORK_FENCE=1" LABELS "torture;race")
add_test(NAME torture_repro_unregister_mremap COMMAND repro_unregister_mremap)
set_tests_properties(torture_repro_unregister_mremap PROPERTIES TIMEOUT 30 SKIP_RETURN_CODE 77
                     LABELS "torture")
