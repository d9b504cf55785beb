# Core engine tests (issue 2). Label: core.
dedup_test(test_merge_basic TIMEOUT 60 LABELS core)
