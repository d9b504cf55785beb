# Kernel behaviour probes, set B (userfaultfd events, private file mappings,
# VMA merging and limits, PAGEMAP_SCAN). See each file's header comment for
# the fact it pins down and why libdedup relies on it. Waits for something
# due fail after t_cap() (3 minutes), hence TIMEOUT 600 for those probes.
dedup_test(probe_remove_event SOURCES probe_remove_event.c TIMEOUT 600 LABELS probe)
dedup_test(probe_remap_event SOURCES probe_remap_event.c TIMEOUT 600 LABELS probe)
dedup_test(probe_mmap_fixed_noevent SOURCES probe_mmap_fixed_noevent.c TIMEOUT 600 LABELS probe)
dedup_test(probe_private_file SOURCES probe_private_file.c TIMEOUT 30 LABELS probe)
dedup_test(probe_vma_merge SOURCES probe_vma_merge.c TIMEOUT 30 LABELS probe)
dedup_test(probe_pagemap_scan SOURCES probe_pagemap_scan.c TIMEOUT 30 LABELS probe)
# Lowers the global vm.max_map_count for a few milliseconds (restored on every
# exit path; alarm(20), set once it holds the lock, fires long before the
# timeout's SIGKILL). It waits up to t_cap() for the machine-wide lock
# (tests/mmc_lock.h) that another CTest run or worktree may hold ...
dedup_test(probe_max_map_count SOURCES probe_max_map_count.c TIMEOUT 600 LABELS probe)
# ... and never runs while a test of this CTest run is at another value
# (tests/CMakeLists.txt, MMC)
set_tests_properties(probe_max_map_count PROPERTIES RESOURCE_LOCK max_map_count)
dedup_test(probe_remove_zap_late SOURCES probe_remove_zap_late.c TIMEOUT 600 LABELS probe)
dedup_test(probe_fork_child_file SOURCES probe_fork_child_file.c TIMEOUT 600 LABELS probe)
# What lets an unmerged run merge with its neighbours again (merge.c,
# "Unmerging"), and where it cannot (a fork()ed child, child.c).
dedup_test(probe_mremap_fresh_merge SOURCES probe_mremap_fresh_merge.c TIMEOUT 30 LABELS probe)
dedup_test(probe_child_no_merge SOURCES probe_child_no_merge.c TIMEOUT 30 LABELS probe)
# A multi-VMA mremap(MREMAP_FIXED) stops at a registered VMA, half done
# (Linux 6.17+): why remap.c never hands the kernel a merged range to move.
dedup_test(probe_mremap_multi SOURCES probe_mremap_multi.c TIMEOUT 30 LABELS probe)
