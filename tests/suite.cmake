# Real test suites under LD_PRELOAD (issue 14, point 6). Label: suite.
# CPython's own regression tests (Debian: libpython3.11-testsuite) and a JVM
# under its three main collectors (Debian: openjdk-17-jdk-headless), each run
# without and with libdedup and compared: case by case for regrtest, output
# and exit status for the JVM. Merging must have happened during the run.
# tools/deps.sh installs the packages (DEDUP_SUITE_PKGS); without them the
# tests exit 77 (skip). The long selection: tests/suite/run-long.sh and
# docs/suites.md. Exit 0 pass, 1 fail, 77 skip.
if(DEDUP_SANITIZE)
  # ASan cannot be preloaded into programs that are not built with it.
  message(STATUS "suite tests: skipped in the sanitizer build")
  return()
endif()
set(SUITE_DIR ${CMAKE_CURRENT_SOURCE_DIR}/suite)
find_program(SUITE_PYTHON3 python3)
find_program(SUITE_BASH bash REQUIRED)
if(SUITE_PYTHON3)
  # The CI-sized selection, about a minute per run on 2 cores; the driver
  # reruns a case that differs, alone, in both modes, before calling it ours.
  add_test(NAME suite_regrtest
           COMMAND ${SUITE_PYTHON3} ${SUITE_DIR}/regrtest.py --lib $<TARGET_FILE:dedup>
                   --stat $<TARGET_FILE:dedup-stat> --list ${SUITE_DIR}/regrtest-ci.list
                   --timeout 300 --run-cap 450)
  set_tests_properties(suite_regrtest PROPERTIES TIMEOUT 1200 SKIP_RETURN_CODE 77
                       LABELS "suite;programs")
endif()
foreach(gc G1 Parallel Serial)
  string(TOLOWER ${gc} n)
  add_test(NAME suite_jvm_${n}
           COMMAND ${SUITE_BASH} ${SUITE_DIR}/jvm.sh $<TARGET_FILE:dedup>
                   $<TARGET_FILE:dedup-stat> ${gc})
  set_tests_properties(suite_jvm_${n} PROPERTIES TIMEOUT 600 SKIP_RETURN_CODE 77
                       LABELS "suite;programs")
endforeach()
