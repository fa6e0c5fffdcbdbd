/*
 * vdiskfs: our replacement for the config.h xfstests' autoconf (configure.ac) writes: the HAVE_* macros
 * global.h, fsx.c and fsstress.c test, set for Debian 12 (glibc 2.36, Linux UAPI headers, xfslibs-dev
 * 6.1 for <xfs/xfs.h>). No libaio (AIO), liburing (URING) or libbtrfsutil: those code paths stay off.
 */
#ifndef VDISKFS_XFSTESTS_CONFIG_H
#define VDISKFS_XFSTESTS_CONFIG_H

#define HAVE_XFS_XFS_H 1
#define HAVE_SYS_TYPES_H 1
#define HAVE_SYS_STAT_H 1
#define HAVE_SYS_STATVFS_H 1
#define HAVE_SYS_TIME_H 1
#define HAVE_SYS_IOCTL_H 1
#define HAVE_SYS_WAIT_H 1
#define HAVE_MALLOC_H 1
#define HAVE_DIRENT_H 1
#define HAVE_STDLIB_H 1
#define HAVE_UNISTD_H 1
#define HAVE_ERRNO_H 1
#define HAVE_STRING_H 1
#define HAVE_SYS_FCNTL_H 1
#define HAVE_TIME_H 1
#define HAVE_WAIT_H 1
#define HAVE_SYS_PARAM_H 1
#define HAVE_LIBGEN_H 1
#define HAVE_ASSERT_H 1
#define STDC_HEADERS 1
#define HAVE_STRINGS_H 1
#define HAVE_SYS_MMAN_H 1
#define HAVE_LINUX_FALLOC_H 1
#define HAVE_LINUX_FIEMAP_H 1
#define HAVE_SYS_PRCTL_H 1
#define HAVE_ERR_H 1
#define HAVE_COPY_FILE_RANGE 1
#define HAVE_RENAMEAT2 1

#endif
