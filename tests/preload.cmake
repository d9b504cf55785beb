# Preload mode (issue 4). Label: preload. The test programs are unmodified
# applications: they do not link libdedup, they run under
# LD_PRELOAD=libdedup.so and reach it only through dlsym (tests/preload/pl.h).
# Exit 0 pass, 1 fail, 77 skip.
if(DEDUP_SANITIZE)
  # ASan must be the first library of a process, and intercepts mmap itself:
  # preloading an instrumented libdedup into these programs cannot work.
  message(STATUS "preload tests: skipped in the sanitizer build")
  return()
endif()

set(PL_DIR ${CMAKE_CURRENT_SOURCE_DIR}/preload)
# DEDUP_START=0: these programs are small; lazy start has tests of its own
# (preload_lazy, and preload_python and preload_redis keep the default).
set(PL_ENV LD_PRELOAD=$<TARGET_FILE:dedup> DEDUP_INTERVAL=20 DEDUP_CPU=100
    DEDUP_RECONCILE_MS=200 DEDUP_START=0)

function(pl_program name)
  add_executable(${name} ${PL_DIR}/${name}.c)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests
                             ${PROJECT_SOURCE_DIR}/libdedup/src ${PROJECT_SOURCE_DIR}/libdedup/include)
  target_link_libraries(${name} PRIVATE Threads::Threads ${CMAKE_DL_LIBS})
  add_dependencies(${name} dedup)
endfunction()

# pl_test(NAME PROGRAM prog [TIMEOUT s] [ENV k=v...] [ARGS a...]): prog under
# LD_PRELOAD with the environment above. The programs wait for merging
# (pl_wait_merged) up to t_cap() (3 minutes) and then fail; the TIMEOUT of
# 600 s only catches a hang.
# MMC: at both vm.max_map_count values (tests/CMakeLists.txt), name@64k/@1m.
function(pl_test name)
  cmake_parse_arguments(T "MMC" "PROGRAM;TIMEOUT" "ENV;ARGS" ${ARGN})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 600)
  endif()
  if(T_MMC)
    dedup_mmc_test(NAME ${name} TIMEOUT ${T_TIMEOUT} LABELS preload
                   COMMAND ${CMAKE_COMMAND} -E env ${PL_ENV} ${T_ENV}
                           $<TARGET_FILE:${T_PROGRAM}> ${T_ARGS})
    return()
  endif()
  add_test(NAME ${name} COMMAND ${CMAKE_COMMAND} -E env ${PL_ENV} ${T_ENV}
           $<TARGET_FILE:${T_PROGRAM}> ${T_ARGS})
  set_tests_properties(${name} PROPERTIES TIMEOUT ${T_TIMEOUT} SKIP_RETURN_CODE 77
                       LABELS preload)
endfunction()

foreach(p pl_workload pl_dontneed pl_madv_free pl_mremap pl_fork pl_fork_child pl_exec pl_uffd_app
          pl_exclude pl_semantics pl_leave_alone
          pl_jemalloc pl_plain pl_fork_alloc_lock pl_daemon pl_lazy pl_sparse pl_fork_full
          pl_unmerge_scale pl_unmerge_part pl_calls pl_hole pl_fork_threads pl_fstat pl_share pl_enomem)
  pl_program(${p})
endforeach()

pl_test(preload_workload PROGRAM pl_workload)
# Another library's wrappers preloaded before libdedup (pl_shim.c): the same
# workload, merged, every byte right, no hang.
add_library(pl_shim SHARED ${PL_DIR}/pl_shim.c)
set_target_properties(pl_shim PROPERTIES C_VISIBILITY_PRESET hidden)
target_link_libraries(pl_shim PRIVATE ${CMAKE_DL_LIBS})
pl_test(preload_shim_first PROGRAM pl_workload TIMEOUT 300
        ENV LD_PRELOAD=$<TARGET_FILE:pl_shim>:$<TARGET_FILE:dedup>)
# A sharing group of preloaded programs (issue 13), in a runtime directory
# of its own so that the test's helper is nobody else's.
pl_test(preload_share PROGRAM pl_share ARGS 3 16
        ENV DEDUP_SHARE=pltest DEDUP_SHARE_HELPER=$<TARGET_FILE:dedup-share>
            XDG_RUNTIME_DIR=${CMAKE_BINARY_DIR}/pl-share-run)
add_dependencies(pl_share dedup-share)
file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/pl-share-run)
pl_test(preload_dontneed PROGRAM pl_dontneed)
pl_test(preload_madv_free PROGRAM pl_madv_free)
pl_test(preload_mremap PROGRAM pl_mremap MMC)
pl_test(preload_fork PROGRAM pl_fork MMC)
pl_test(preload_fork_restart PROGRAM pl_fork ARGS restart ENV DEDUP_FORK=restart MMC)
# A fork()ed child's merged pages behave as anonymous memory (child.c); with
# the guard off the child reads the merged content where zeros are due.
pl_test(preload_fork_child PROGRAM pl_fork_child MMC)
pl_test(preload_fork_child_catches_naive PROGRAM pl_fork_child ENV DEDUP_TEST_UNSAFE_NO_CHILD_GUARD=1)
# ... also when the parent is within two mappings of vm.max_map_count (at
# 65,530 only: filling a million mappings would take seconds and gigabytes).
add_test(NAME preload_fork_full COMMAND ${DEDUP_BASH} ${DEDUP_MMC_WRAP} --timeout 100 65530 --
         ${CMAKE_COMMAND} -E env ${PL_ENV} $<TARGET_FILE:pl_fork_full>)
set_tests_properties(preload_fork_full PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77
                     LABELS "preload;max_map_count" RESOURCE_LOCK max_map_count
                     FIXTURES_REQUIRED max_map_count
                     ENVIRONMENT "DEDUP_STAT_DIR=${CMAKE_BINARY_DIR}/stat-dir")
set_tests_properties(preload_fork_child_catches_naive PROPERTIES WILL_FAIL TRUE)
# A program that runs into vm.max_map_count after merging (issue 11.5): its
# mprotect splits and mmap succeed because libdedup gives mappings back on
# ENOMEM and the call is made again; without the give-back they fail.
foreach(v give_back no_give_back)
  set(env "")
  if(v STREQUAL no_give_back)
    set(env DEDUP_TEST_NO_GIVE_BACK=1)
  endif()
  add_test(NAME preload_enomem_${v} COMMAND ${DEDUP_BASH} ${DEDUP_MMC_WRAP} --timeout 200 3000 --
           ${CMAKE_COMMAND} -E env ${PL_ENV} ${env} $<TARGET_FILE:pl_enomem>)
  set_tests_properties(preload_enomem_${v} PROPERTIES TIMEOUT 220 SKIP_RETURN_CODE 77
                       LABELS "preload;max_map_count" RESOURCE_LOCK max_map_count
                       FIXTURES_REQUIRED max_map_count
                       ENVIRONMENT "DEDUP_STAT_DIR=${CMAKE_BINARY_DIR}/stat-dir")
endforeach()
set_tests_properties(preload_enomem_no_give_back PROPERTIES WILL_FAIL TRUE)
# DEDUP_EXCLUDE: the brk heap, every other anonymous mapping, an address range
pl_test(preload_exclude_heap PROGRAM pl_exclude ARGS heap ENV DEDUP_EXCLUDE=heap)
pl_test(preload_exclude_mmap PROGRAM pl_exclude ARGS mmap ENV DEDUP_EXCLUDE=mmap)
pl_test(preload_exclude_range PROGRAM pl_exclude ARGS range
        ENV DEDUP_EXCLUDE=0x600000000000-0x600000400000)
# Lazy start: no thread, no descriptor of ours in a small process; the engine
# starts by itself past DEDUP_START (64M, the default here).
pl_test(preload_lazy PROGRAM pl_lazy ENV DEDUP_START=64M)
# A program that closes every descriptor (fds.c): through libc, by a raw
# system call, in the process and in a fork()ed child, with and without
# DEDUP_FORK=restart. Before fds.c the engine died with SIGSEGV.
pl_test(preload_daemon_libc PROGRAM pl_daemon ARGS libc)
pl_test(preload_daemon_raw PROGRAM pl_daemon ARGS raw)
pl_test(preload_daemon_fork PROGRAM pl_daemon ARGS libc fork)
pl_test(preload_daemon_fork_raw PROGRAM pl_daemon ARGS raw fork)
pl_test(preload_daemon_restart PROGRAM pl_daemon ARGS libc fork ENV DEDUP_FORK=restart)
pl_test(preload_daemon_restart_raw PROGRAM pl_daemon ARGS raw fork ENV DEDUP_FORK=restart)
# fstat() and friends see the engine's descriptors as not open, like close()
# does (CPython's test_subprocess.test_pass_fds_redirected, docs/suites.md)
pl_test(preload_fstat PROGRAM pl_fstat)
# mprotect, munmap, mlock, MADV_DONTFORK and MADV_WIPEONFORK on merged memory
pl_test(preload_semantics PROGRAM pl_semantics)
# Thread stacks, mlock/DONTDUMP/WIPEONFORK/DONTFORK (libc and raw syscalls), small ranges
pl_test(preload_leave_alone PROGRAM pl_leave_alone)
# The library's own unmerging of 4096 isolated runs: linear, one mapping again
# (mlock: 512 runs, 4 MiB, under the usual 8 MiB RLIMIT_MEMLOCK)
foreach(m wipeonfork uffd mremap mlock release)
  set(n 4096)
  if(m STREQUAL mlock)
    set(n 512)
  endif()
  pl_test(preload_unmerge_scale_${m} PROGRAM pl_unmerge_scale ARGS ${m} ${n} TIMEOUT 150 MMC
          ENV DEDUP_VMA_BUDGET=16384)
endforeach()
pl_test(preload_exec_fds PROGRAM pl_exec)
pl_test(preload_uffd_app PROGRAM pl_uffd_app)
# mlock, MADV_WIPEONFORK and the program's UFFDIO_REGISTER on part of a merged
# range, cut mid-run: unmerged from the region, or as pieces no region covers
pl_test(preload_unmerge_part PROGRAM pl_unmerge_part)
# Random memory calls (madvise, mlock, mprotect, mremap, munmap/mmap, the
# program's own userfaultfd, fork) on ranges cut anywhere in merged memory,
# against a shadow of every page (tests/preload/pl_calls.c); more seeds by
# hand (docs/preload.md).
foreach(seed 1 2)
  pl_test(preload_calls_${seed} PROGRAM pl_calls ARGS ${seed} 3000 TIMEOUT 300)
endforeach()
# The same calls from four threads at once, each on an arena of its own: they
# race each other, the engine and the reader (docs/preload.md, Tests)
pl_test(preload_calls_threads PROGRAM pl_calls ARGS 3 2000 4 TIMEOUT 400)
# A hole the program makes while merges go on stays free for it to map again
pl_test(preload_hole PROGRAM pl_hole TIMEOUT 300)
# fork() from four threads at once: each child sees its thread's discards
pl_test(preload_fork_threads PROGRAM pl_fork_threads TIMEOUT 300)
# fork() used to deadlock when a thread holding a jemalloc mutex waited in a
# userfault only the uffd reader resolves, while libdedup's fork handlers held
# eng.gate and jemalloc's waited for the mutex (hung in about 1 run of 4-8,
# 300 forks each). Now the handlers hold no lock (engine.c, prefork()).
pl_test(preload_repro_fork_alloc_lock PROGRAM pl_fork_alloc_lock TIMEOUT 120
        ENV LD_PRELOAD=$<TARGET_FILE:dedup>:${JEMALLOC_LINK_LIBRARIES} DEDUP_RECONCILE_MS=50
            MALLOC_CONF=dirty_decay_ms:0,muzzy_decay_ms:0)

# A program linking libdedup for its API, without LD_PRELOAD: no surprise.
add_executable(pl_api ${PL_DIR}/pl_api.c)
target_include_directories(pl_api PRIVATE ${PROJECT_SOURCE_DIR}/tests
                           ${PROJECT_SOURCE_DIR}/libdedup/src)
target_link_libraries(pl_api PRIVATE dedup Threads::Threads ${CMAKE_DL_LIBS})
add_test(NAME preload_api_no_surprise COMMAND pl_api)
set_tests_properties(preload_api_no_surprise PROPERTIES TIMEOUT 60 SKIP_RETURN_CODE 77
                     LABELS preload)

# Scripts: userfaultfd unusable, exported symbols, the launcher, real programs.
find_program(PL_BASH bash REQUIRED)
# jemalloc as the program's allocator, purging at once (calloc must see zeros):
# extent hooks on, off (DEDUP_JEMALLOC=0) and with retain:false, same results
add_test(NAME preload_jemalloc
         COMMAND ${PL_BASH} ${PL_DIR}/pl_jemalloc.sh $<TARGET_FILE:pl_jemalloc> $<TARGET_FILE:dedup>
                 ${JEMALLOC_LINK_LIBRARIES})
set_tests_properties(preload_jemalloc PROPERTIES TIMEOUT 600 SKIP_RETURN_CODE 77
                     LABELS preload)
add_test(NAME preload_uffd_unavailable
         COMMAND ${PL_BASH} ${PL_DIR}/pl_oneline.sh $<TARGET_FILE:dedup> $<TARGET_FILE:pl_plain>)
add_test(NAME preload_symbols COMMAND ${PL_BASH} ${PL_DIR}/pl_symbols.sh $<TARGET_FILE:dedup>)
# Programs built with a sanitizer (pl_plain again): unchanged under libdedup.
include(CheckCSourceCompiles)
foreach(san address thread)
  set(CMAKE_REQUIRED_FLAGS -fsanitize=${san})
  set(CMAKE_REQUIRED_LINK_OPTIONS -fsanitize=${san})
  check_c_source_compiles("int main(void) { return 0; }" PL_CAN_${san})
  unset(CMAKE_REQUIRED_FLAGS)
  unset(CMAKE_REQUIRED_LINK_OPTIONS)
  if(PL_CAN_${san})
    add_executable(pl_plain_${san} ${PL_DIR}/pl_plain.c)
    target_include_directories(pl_plain_${san} PRIVATE ${PROJECT_SOURCE_DIR}/tests
                               ${PROJECT_SOURCE_DIR}/libdedup/src ${PROJECT_SOURCE_DIR}/libdedup/include)
    target_compile_options(pl_plain_${san} PRIVATE -fsanitize=${san})
    target_link_options(pl_plain_${san} PRIVATE -fsanitize=${san})
    target_link_libraries(pl_plain_${san} PRIVATE Threads::Threads)
    set(PL_SAN_${san} $<TARGET_FILE:pl_plain_${san}>)
  else()
    set(PL_SAN_${san} "")
  endif()
endforeach()
add_test(NAME preload_sanitizers
         COMMAND ${PL_BASH} ${PL_DIR}/pl_sanitizers.sh $<TARGET_FILE:dedup-run> $<TARGET_FILE:dedup>
                 "${PL_SAN_address}" "${PL_SAN_thread}")
set_tests_properties(preload_sanitizers PROPERTIES TIMEOUT 900 SKIP_RETURN_CODE 77 LABELS preload)
add_test(NAME preload_valgrind
         COMMAND ${PL_BASH} ${PL_DIR}/pl_valgrind.sh $<TARGET_FILE:dedup> $<TARGET_FILE:pl_plain>)
set_tests_properties(preload_valgrind PROPERTIES TIMEOUT 600 SKIP_RETURN_CODE 77 LABELS preload)
add_test(NAME preload_dedup_run
         COMMAND ${PL_BASH} ${PL_DIR}/pl_dedup_run.sh $<TARGET_FILE:dedup-run> $<TARGET_FILE:pl_plain>)
add_test(NAME preload_python
         COMMAND ${PL_BASH} ${PL_DIR}/pl_python.sh $<TARGET_FILE:dedup-run> ${PL_DIR}/pl_workload.py)
add_test(NAME preload_redis
         COMMAND ${PL_BASH} ${PL_DIR}/pl_redis.sh $<TARGET_FILE:dedup-run>)
# A 1 TiB sparse reservation (issue 14): merges, metadata and engine CPU in
# proportion to the pages present; Pss below the run without libdedup.
add_test(NAME preload_sparse
         COMMAND ${PL_BASH} ${PL_DIR}/pl_sparse.sh $<TARGET_FILE:dedup> $<TARGET_FILE:pl_sparse>)
set_tests_properties(preload_uffd_unavailable preload_symbols preload_dedup_run
                     PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77 LABELS preload)
set_tests_properties(preload_python preload_redis
                     PROPERTIES TIMEOUT 600 SKIP_RETURN_CODE 77 LABELS "preload;programs")
set_tests_properties(preload_sparse PROPERTIES TIMEOUT 600 SKIP_RETURN_CODE 77 LABELS preload)
# Hostile hosts (issue 14, point 5; docs/preload.md "Hostile hosts"): the
# program runs untouched (same stdout and exit status as without libdedup),
# with one line from libdedup where it does not merge. Label hostile.
set(HL_DIR ${CMAKE_CURRENT_SOURCE_DIR}/hostile)
add_executable(hl_seccomp ${HL_DIR}/hl_seccomp.c)
add_executable(hl_churn ${HL_DIR}/hl_churn.c)
add_executable(hl_setuid ${HL_DIR}/hl_setuid.c)
target_include_directories(hl_setuid PRIVATE ${PROJECT_SOURCE_DIR}/tests
                           ${PROJECT_SOURCE_DIR}/libdedup/src ${PROJECT_SOURCE_DIR}/libdedup/include)
target_link_libraries(hl_setuid PRIVATE ${CMAKE_DL_LIBS})
target_include_directories(hl_churn PRIVATE ${PROJECT_SOURCE_DIR}/tests
                           ${PROJECT_SOURCE_DIR}/libdedup/src ${PROJECT_SOURCE_DIR}/libdedup/include)
target_link_libraries(hl_churn PRIVATE ${CMAKE_DL_LIBS})
set(HL_ARGS $<TARGET_FILE:dedup> $<TARGET_FILE:pl_plain> $<TARGET_FILE:hl_churn>
    $<TARGET_FILE:hl_seccomp> $<TARGET_FILE:hl_setuid>)
foreach(c seccomp no_io_uring noproc nofile as memcg setuid)
  add_test(NAME hostile_${c} COMMAND ${PL_BASH} ${HL_DIR}/hostile.sh ${c} ${HL_ARGS})
  set_tests_properties(hostile_${c} PROPERTIES TIMEOUT 600 SKIP_RETURN_CODE 77
                       LABELS "preload;hostile")
endforeach()
# vm.max_map_count 1000, set (and put back) by the wrapper, under its lock
add_test(NAME hostile_max_map_count
         COMMAND ${PL_BASH} ${DEDUP_MMC_WRAP} --timeout 500 1000 --
                 ${PL_BASH} ${HL_DIR}/hostile.sh max_map_count ${HL_ARGS}
                 $<TARGET_FILE:pl_semantics>)
set_tests_properties(hostile_max_map_count PROPERTIES TIMEOUT 600 SKIP_RETURN_CODE 77
                     LABELS "preload;hostile;max_map_count" RESOURCE_LOCK max_map_count
                     FIXTURES_REQUIRED max_map_count)
