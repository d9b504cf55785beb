# dedup-stat and the live stats files (issue 5). Label: stat.
# Each test gets the built tool's path as its first argument.
foreach(t test_stat_json test_stat_prometheus test_stat_stale test_stat_errors test_stat_watch)
  dedup_test(${t} SOURCES ${t}.c TIMEOUT 60 LABELS stat ARGS $<TARGET_FILE:dedup-stat>)
  add_dependencies(${t} dedup-stat)
endforeach()
