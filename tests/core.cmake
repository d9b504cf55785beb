# Core engine tests (issue 2). Label: core.
dedup_test(test_merge_basic TIMEOUT 60 LABELS core)
dedup_test(test_cow_write LABELS core)
dedup_test(test_zero_pages LABELS core)
dedup_test(test_collision LABELS core)
dedup_test(test_unregister LABELS core)
dedup_test(test_hammer TIMEOUT 120 LABELS core race)
