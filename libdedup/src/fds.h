/* SPDX-License-Identifier: MIT */
/*
 * fds.h - our descriptors (fds.c): above a floor, tagged, checked before
 * each use, so that the program's numbering is its own.
 */
#ifndef DEDUP_FDS_H
#define DEDUP_FDS_H

#include "base.h"

#define DD_FD_TAG 47              /* F_SETSIG value that marks a file of ours */
int dd_fd_adopt(int *var, int fd); /* place fd above the floor, tag it, record
				      var (which gets the new number); closes fd */
int dd_fd_place(int fd);          /* a tagged copy above the floor, not recorded;
				      fd stays open. The copy or -errno */
void dd_fd_close(int *var);        /* forget; close only if still ours */
void dd_fd_forget(int *var);       /* forget without closing */
bool dd_fd_ours(int fd);           /* a number of ours (lock-free) */
int dd_fd_next_ours(unsigned int lo, unsigned int hi);   /* lowest in [lo, hi], or -1 */
bool dd_fd_intact(int fd);         /* the number still names our file */
bool dd_fds_intact(void);          /* every recorded descriptor is */
bool dd_fd_names(int fd, uint64_t ino);   /* tagged and that file (unrecorded ones) */
int dd_fd_move_away(int fd);       /* the program dup2()s onto fd: move ours */
int dd_fd_floor(void);
int dd_sys_close(int fd);          /* close(2), not the interposed close() */
struct stat;
int dd_sys_fstat(int fd, struct stat *sb);   /* fstat(2), which sees our numbers */
int dd_fd_open_temp(const char *path, int flags);   /* above the floor, checked, tagged */
int dd_fd_create_temp(const char *path, int flags, mode_t mode);   /* the same, O_CREAT */
int dd_fd_adopt_path(int *var, const char *path, int flags);
ssize_t dd_fd_read_temp(int fd, void *buf, size_t len); /* only while ours; -errno */
void dd_fd_close_temp(int fd);                        /* only if still ours */

#endif /* DEDUP_FDS_H */
