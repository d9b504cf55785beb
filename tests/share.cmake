# Sharing groups (issue 13): the helper (tools/dedup-share) and the member's
# side of its protocol (libdedup/src/group.c). Label: share. Each test gets
# the built helper's path as its first argument (DEDUP_SHARE_HELPER), its
# own $XDG_RUNTIME_DIR under /tmp, and kills the helpers it started at exit.
# Waits are for conditions, capped by t_cap(); TIMEOUT only catches a hang.
foreach(t test_share_proto test_share_fuzz test_share_uid)
  dedup_test(${t} SOURCES share/${t}.c TIMEOUT 300 LABELS share ARGS $<TARGET_FILE:dedup-share>)
  target_link_libraries(${t} PRIVATE PkgConfig::XXHASH)
  add_dependencies(${t} dedup-share)
endforeach()

# Merging across processes through the engine (scan.c, store.c): members
# with the same content and none repeated inside one end with one copy
# between them; writes stay private; another group shares nothing; fork.
dedup_test(share_workers SOURCES share/share_workers.c TIMEOUT 600 LABELS share
           ENV DEDUP_SHARE_HELPER=$<TARGET_FILE:dedup-share> ARGS 4 32)
add_dependencies(share_workers dedup-share)
# The same at 4 x 256 MiB, where it counts each member's mappings over its
# buffer: identical contiguous data must end as long runs of contiguous
# segment pages (about one mapping per 1,024 pages), not thousands of runs
# of a few pages (offers evicted in the helper, pages published alone).
dedup_test(share_workers_runs SOURCES share/share_workers.c TIMEOUT 600 LABELS share
           ENV DEDUP_SHARE_HELPER=$<TARGET_FILE:dedup-share> ARGS 4 256)
add_dependencies(share_workers_runs dedup-share)
# SIGKILL of members and helpers across a group, every member's memory
# checked after each kill, the group's shared memory gone at the end.
# The long run: share_kill 1000 8 64 (README, Tests).
dedup_test(share_kill SOURCES share/share_kill.c TIMEOUT 600 LABELS share
           ENV DEDUP_SHARE_HELPER=$<TARGET_FILE:dedup-share> ARGS 40 4 8)
add_dependencies(share_kill dedup-share)
# A member or the helper killed at each step of the protocol (the
# DEDUP_TEST_SHARE_DIE / DEDUP_SHARE_TEST_DIE hooks), survivors verified,
# the group working again, nothing left behind.
dedup_test(share_inject SOURCES share/share_inject.c TIMEOUT 600 LABELS share
           ARGS $<TARGET_FILE:dedup-share>)
add_dependencies(share_inject dedup-share)
