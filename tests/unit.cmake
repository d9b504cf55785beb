# Unit tests (issue 2): index.c, store.c, options.c, os.c's smaps reader and fds.c driven directly,
# without the engine or a userfaultfd. Label: unit.
dedup_test(test_unit_index TIMEOUT 30 LABELS unit)
dedup_test(test_unit_store TIMEOUT 30 LABELS unit)
dedup_test(test_unit_options TIMEOUT 30 LABELS unit)
dedup_test(test_unit_locks TIMEOUT 30 LABELS unit)
dedup_test(test_unit_vmflags TIMEOUT 30 LABELS unit)
dedup_test(test_unit_fds TIMEOUT 30 LABELS unit)
dedup_test(test_unit_far TIMEOUT 30 LABELS unit)
