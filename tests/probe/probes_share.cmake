# Kernel-behaviour probes for cross-process merging (issue 13,
# docs/sharing.md): sealed memfds, passing them between processes, mapping
# them with the merge path's userfaultfd calls, who may connect, what a
# punch or truncation does to another process's mapping, how long the
# pages live and whose memory cgroup pays for them. Each file's header says
# the fact and the part of the design that rests on it. The probes fork
# helper processes (tests/probe/pshare.h); a wait ends when the other
# process answers, or fails after t_cap(), hence TIMEOUT 600 for those.
dedup_test(probe_seal_write SOURCES probe_seal_write.c TIMEOUT 30 LABELS probe)
dedup_test(probe_seal_scm_rights SOURCES probe_seal_scm_rights.c TIMEOUT 600 LABELS probe)
dedup_test(probe_continue_foreign SOURCES probe_continue_foreign.c TIMEOUT 600 LABELS probe)
dedup_test(probe_peercred SOURCES probe_peercred.c TIMEOUT 600 LABELS probe)
dedup_test(probe_punch_private SOURCES probe_punch_private.c TIMEOUT 600 LABELS probe)
dedup_test(probe_memfd_lifetime SOURCES probe_memfd_lifetime.c TIMEOUT 600 LABELS probe)
dedup_test(probe_tmpfs_no_seal SOURCES probe_tmpfs_no_seal.c TIMEOUT 30 LABELS probe)
# Creates two memory cgroups at the root of the hierarchy (as
# tests/hostile/hostile.sh does) and removes them; skipped without root.
dedup_test(probe_memcg_charge SOURCES probe_memcg_charge.c TIMEOUT 600 LABELS probe)
