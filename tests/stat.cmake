# dedup-stat and the live stats files (issue 5). Label: stat.
# Each test gets the built tool's path as its first argument. Waits for the
# engine (a published snapshot, merges seen by --watch) are capped by
# t_cap() (3 minutes); TIMEOUT 600 only catches a hang.
foreach(t test_stat_json test_stat_prometheus test_stat_stale test_stat_errors test_stat_watch
          test_stat_waiting)
  dedup_test(${t} SOURCES ${t}.c TIMEOUT 600 LABELS stat ARGS $<TARGET_FILE:dedup-stat>)
  add_dependencies(${t} dedup-stat)
endforeach()
# The DEDUP_LOG=stats table at exit; the second argument, libdedup.so, adds
# preload mode (not in the sanitizer build: ASan must come first in a process).
if(DEDUP_SANITIZE)
  dedup_test(test_stat_exit SOURCES test_stat_exit.c TIMEOUT 60 LABELS stat
             ARGS $<TARGET_FILE:dedup-stat>)
else()
  dedup_test(test_stat_exit SOURCES test_stat_exit.c TIMEOUT 60 LABELS stat
             ARGS $<TARGET_FILE:dedup-stat> $<TARGET_FILE:dedup>)
  add_dependencies(test_stat_exit dedup)
endif()
add_dependencies(test_stat_exit dedup-stat)
# Sharing groups in dedup-stat (issue 13): two members of a group, the group
# line in text, --json and --prometheus. Also label share: it needs the helper.
dedup_test(test_stat_groups TIMEOUT 600 LABELS stat share
           ARGS $<TARGET_FILE:dedup-stat> $<TARGET_FILE:dedup-share>)
add_dependencies(test_stat_groups dedup-stat dedup-share)
