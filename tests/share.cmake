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
