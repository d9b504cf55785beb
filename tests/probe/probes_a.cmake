# Kernel-behaviour probes, set A (userfaultfd API, wrprotect-then-replace,
# kernel-mode writers, UFFDIO_MOVE, registration modes). See the comment at
# the top of each file for the fact it pins down and why libdedup needs it.
# A wait for something due (a fault message, a blocked thread released, a
# completion) ends when it comes, or fails after t_cap() (tests/tcommon.h,
# 3 minutes): those probes have a TIMEOUT of 600 s, the others 30 s.
dedup_test(probe_uffd_api SOURCES probe_uffd_api.c TIMEOUT 30 LABELS probe)
dedup_test(probe_wp_replace_wake SOURCES probe_wp_replace_wake.c TIMEOUT 600 LABELS probe)
dedup_test(probe_kernel_writer SOURCES probe_kernel_writer.c TIMEOUT 600 LABELS probe)
dedup_test(probe_move_pinned SOURCES probe_move_pinned.c TIMEOUT 600 LABELS probe)
dedup_test(probe_move_semantics SOURCES probe_move_semantics.c TIMEOUT 600 LABELS probe)
dedup_test(probe_move_not_exclusive SOURCES probe_move_not_exclusive.c TIMEOUT 600 LABELS probe)
dedup_test(probe_register_modes SOURCES probe_register_modes.c TIMEOUT 600 LABELS probe)
dedup_test(probe_uffd_keeper SOURCES probe_uffd_keeper.c TIMEOUT 600 LABELS probe)
