#!/usr/bin/env bash
# pl_symbols.sh LIB - libdedup.so exports the dedup_* API (versioned) and the
# interposed libc functions of preload mode (unversioned, so that references
# to mmap@GLIBC_2.2.5 bind to them), and nothing else.
set -u
lib=$1
want="brk close close_range closefrom daemon dup2 dup3 fork free fstat fstat64 fstatat fstatat64 ioctl madvise mlock mlock2 mlockall mmap mmap64 mprotect mremap munmap pkey_mprotect realloc sbrk setns statx unshare setuid setgid seteuid setegid setreuid setregid setresuid setresgid setgroups"
got=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TWDBiV]$/ {print $3}')
bad=0
for s in $got; do
	case "$s" in
	dedup_*@@LIBDEDUP_*) ;;
	*@*) echo "FAIL: unexpected versioned export $s" >&2; bad=1 ;;
	*) case " $want " in *" $s "*) ;; *) echo "FAIL: unexpected export $s" >&2; bad=1 ;; esac ;;
	esac
done
for s in $want; do
	echo "$got" | grep -qx "$s" || { echo "FAIL: $s is not exported (unversioned)" >&2; bad=1; }
done
for s in dedup_init dedup_register dedup_unregister dedup_scan_now dedup_stats dedup_shutdown dedup_version; do
	echo "$got" | grep -qx "$s@@LIBDEDUP_0.1" || { echo "FAIL: $s@@LIBDEDUP_0.1 missing" >&2; bad=1; }
done
[ $bad -eq 0 ] && echo PASS >&2
exit $bad
