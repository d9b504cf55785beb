/* SPDX-License-Identifier: MIT */
/*
 * publish.c - live per-process stats for dedup-stat. (Placeholder: the
 * publication file is written in issue 5.)
 */
#include "internal.h"

int dd_publish_open(void) { return 0; }
void dd_publish_update(void) {}
void dd_publish_close(void) {}
