/*
 * harness.h - end-to-end test harness: mounts the daemon on a fresh temp dir and compares trees.
 *
 * Every test gets its own temp dir below $TFS_TEST_ROOT (or /tmp) holding backing/ (what the
 * daemon serves), mnt/ (the view) and plain/ (an ordinary directory on the same filesystem, where
 * a test repeats its work so the view can be compared with what the kernel does natively). The
 * harness promises that a mount it made is gone when the test process ends, however it ends:
 * teardown unmounts, an atexit hook and a SIGINT/SIGTERM handler unmount what is left, and the
 * daemon itself gets SIGTERM through PR_SET_PDEATHSIG if the test process dies outright.
 *
 * The daemon is $THROTTLEFS_BIN_OVERRIDE if set (to run the suite against a stand-in), else
 * $THROTTLEFS_BIN (set by meson to the built daemon).
 *
 * Functions that can fail return 0 / -1 and print why on stderr; the cmocka-facing wrappers
 * (h_setup, h_teardown) turn that into a failed test.
 */
#ifndef THROTTLEFS_HARNESS_H
#define THROTTLEFS_HARNESS_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct h_fs {
	char root[PATH_MAX];	/* the temp dir; removed by h_fs_free */
	char backing[PATH_MAX]; /* root/backing */
	char mnt[PATH_MAX];	/* root/mnt */
	char plain[PATH_MAX];	/* root/plain */
	char log[PATH_MAX];	/* root/daemon.log: the daemon's stdout and stderr */
	pid_t pid;		/* the daemon while mounted, else 0 */
	/* A store mounted on backing/ (see h_lower_faultfs), else H_LOWER_NONE. */
	int lower;		  /* enum h_lower */
	pid_t lower_pid;	  /* faultfs while mounted, else 0 */
	char store[PATH_MAX];	  /* what the store really holds: root/store or backing/ */
	char lower_log[PATH_MAX]; /* root/faultfs.log */
	char ctl[PATH_MAX];	  /* faultfs's mount, whose root takes its controls */
};

/* The daemon binary to run, or NULL (with a message) when neither variable is set. */
const char *h_daemon_bin(void);

/* Creates a fresh temp dir with backing/, mnt/ and plain/; NULL on failure. */
struct h_fs *h_fs_new(void);

/*
 * Starts the daemon in the foreground on fs->backing and fs->mnt with "-o opts" (unless opts is
 * NULL or empty) and waits up to 20 s for the mount to appear. On failure the daemon is stopped,
 * its exit status and log are printed, and -1 is returned.
 */
int h_fs_mount(struct h_fs *fs, const char *opts);

/*
 * Unmounts (fusermount3 -u, retried while busy; then -uz and signals as a last resort) and reaps
 * the daemon. Returns 0 only if the clean path worked and the daemon exited with status 0; prints
 * the daemon log otherwise. A no-op returning 0 when not mounted.
 */
int h_fs_unmount(struct h_fs *fs);

/* Unmounts if needed, removes the temp dir and frees fs. Returns h_fs_unmount's verdict. */
/* Waits for the daemon to exit by itself (after a signal the test sent it): 0 when it exited
 * with status 0, else -1 with its status and log printed. The mount is forgotten either way. */
int h_fs_wait_exit(struct h_fs *fs, int timeout_ms);

int h_fs_free(struct h_fs *fs);

/* cmocka group or test setup/teardown: *state becomes a mounted struct h_fs (no options). */
int h_setup(void **state);
int h_teardown(void **state);

/* Whether path is a mount point according to /proc/self/mountinfo. */
bool h_is_mounted(const char *path);

/*
 * Runs the daemon with the given arguments (argv[0] excluded, NULL-terminated), its stdout and
 * stderr going to logpath, and returns its pid (-1 on failure). The daemon gets SIGTERM if the
 * test process dies.
 */
pid_t h_daemon_spawn(const char *const *args, const char *logpath);

/*
 * Waits up to timeout_ms for pid to exit; returns 0 and its wait status in *status, or -1 if it
 * is still running (then nothing is reaped).
 */
int h_wait_pid(pid_t pid, int timeout_ms, int *status);

/*
 * Runs a shell command built printf-style (stdout and stderr go to the test's stderr) and returns
 * its exit status: 0..255, or 128 + signal number, or -1 if it could not be run.
 */
int h_run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* snprintf into a PATH_MAX buffer; aborts the test process on truncation. Returns buf. */
char *h_path(char *buf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Writes len bytes to path (created or truncated, mode 0644). Returns 0 or -errno. */
int h_write_file(const char *path, const void *data, size_t len);

/*
 * Reads up to cap bytes of path into buf; returns the count read or -errno. A file longer than
 * cap is reported as -EFBIG so a caller never compares a prefix by accident.
 */
ssize_t h_read_file(const char *path, void *buf, size_t cap);

/* Fills buf with a byte pattern that depends on seed and on the position. */
void h_fill(void *buf, size_t len, unsigned seed);

/* What h_tree_compare looks at beyond type, names, file size, content and symlink targets. */
enum {
	H_CMP_MODE = 1u << 0,  /* permission bits */
	H_CMP_OWNER = 1u << 1, /* uid and gid */
	H_CMP_MTIME = 1u << 2, /* mtime to the nanosecond, directories included */
	H_CMP_LINKS = 1u << 3, /* hard-link structure: the same groups of names share an inode */
	H_CMP_XATTR = 1u << 4, /* user.* extended attributes, names and values */
	H_CMP_ROOT = 1u << 5,  /* apply the above to the two top directories too */
	H_CMP_ALL = 0x3f,
	H_CMP_QUIET = 1u << 6, /* do not print the difference (when polling for a match) */
};

/*
 * Walks the trees a and b in name order and returns 0 if they match under flags, else prints the
 * first difference (with both paths) and returns -1. A name equal to skip (may be NULL) is ignored
 * at every level, e.g. ".git".
 */
int h_tree_compare(const char *a, const char *b, unsigned flags, const char *skip);

/*
 * fsyncs every regular file and directory below dir (symlinks not followed), so that a daemon
 * that streams writes behind the application's back has delivered them to the backing store.
 * Returns 0 or -1 (after printing which path failed).
 */
int h_sync_tree(const char *dir);

/*
 * The comparison most tests make: run work(dir) on fs->plain and on fs->mnt, then require the
 * view to match plain under flags and, after h_sync_tree, the backing dir to match the view in
 * every respect (H_CMP_ALL). Returns 0 or -1 (after printing the difference).
 */
int h_both(struct h_fs *fs, void (*work)(const char *dir), unsigned flags);

/* "dir/rel" in a temporary buffer that lives until the end of the enclosing block. */
#define H_AT(dir, rel) h_path((char[PATH_MAX]){0}, "%s/%s", (dir), (rel))

/*
 * A store below the view, mounted on fs->backing before h_fs_mount, so that the daemon's backing
 * dir is itself a mount:
 *   - faultfs ($FAULTFS_BIN, with "-o opts" unless NULL or empty) serving root/store, which
 *     fs->store names: what really reached the store is read there, behind both daemons;
 *   - a tmpfs of the given size (e.g. "4M"), a small disk that fills up; fs->store is backing/;
 *   - a disk that can fail: ext4 on a loop device of size_mib MiB whose image lives in a faultfs
 *     (mounted on root/dev, serving root/devstore), so that faultfs's faults are the device's:
 *     a failed write is an I/O error of the disk, seen by ext4's write-back. fs->store is
 *     backing/. Needs mkfs.ext4 and loop devices: 1 with why when they are missing.
 * fs->ctl is the faultfs mount (h_faultfs_set). h_fs_free (and h_fs_lower_unmount) always
 * unmounts the store, after the view: first a faultfs is told to release stalled writers and
 * drop its latency (so the view's daemon can drain and exit), then the view goes, then the store
 * (a disk's faults are lifted first, its ext4 unmounted, then its faultfs). The atexit and signal
 * hooks unmount stores too. Return 0 / -1 (and h_lower_disk 1, as said).
 */
enum h_lower { H_LOWER_NONE, H_LOWER_FAULTFS, H_LOWER_TMPFS, H_LOWER_DISK };
int h_lower_faultfs(struct h_fs *fs, const char *opts);
int h_lower_tmpfs(struct h_fs *fs, const char *size);
int h_lower_disk(struct h_fs *fs, int size_mib);
int h_fs_lower_unmount(struct h_fs *fs);

/* Sets faultfs control name (user.faultfs.NAME of its root) to value. Returns 0 or -errno. */
int h_faultfs_set(struct h_fs *fs, const char *name, const char *value);

/* The numeric value of faultfs control name, or -1 (with a message) on failure. */
long long h_faultfs_get(struct h_fs *fs, const char *name);

/* Asserts (cmocka) that call returns -1 and sets errno to err. */
#define H_EXPECT_ERRNO(call, err)                                                                  \
	do {                                                                                       \
		errno = 0;                                                                         \
		long h_ret_ = (long)(call);                                                        \
		int h_err_ = errno;                                                                \
		assert_int_equal(h_ret_, -1);                                                      \
		assert_int_equal(h_err_, (err));                                                   \
	} while (0)

/* ---- helpers shared by the fault, soak, model and input tests ---- */

/* CLOCK_MONOTONIC in ms, and a sleep that survives signals. */
int64_t h_clock_ms(void);
void h_nap_ms(int ms);

/*
 * Waits up to timeout_ms for the daemon to end after a signal the test sent it (SIGKILL,
 * SIGTERM), without judging how it ended: 0 and its wait status in *status, or -1 if it is still
 * running. The daemon is forgotten, but a mount it left behind (a killed daemon cannot unmount)
 * is not: the test unmounts it, or h_fs_free does (fusermount3 -uz).
 */
int h_fs_reap(struct h_fs *fs, int timeout_ms, int *status);

/* A byte pattern that is a function of the file offset, so any piece can be checked alone:
 * h_pat_fill writes the bytes of offsets off..off+len, h_pat_check returns the index of the
 * first byte of buf (holding offsets off...) that differs from it, or -1. */
void h_pat_fill(void *buf, size_t len, uint64_t off, unsigned seed);
ssize_t h_pat_check(const void *buf, size_t len, uint64_t off, unsigned seed);

/* VmRSS of pid in KiB, or -1; and whether pid runs with a sanitizer runtime mapped (whose
 * shadow memory makes any bound on its resident size meaningless). */
long h_rss_kib(pid_t pid);
bool h_sanitized(pid_t pid);
/* Peak resident size of pid since it started (VmHWM, kept by the kernel, so no spike between
 * two samples escapes) in KiB, or -1. */
long h_hwm_kib(pid_t pid);

/* Syncs, then makes the kernel drop every dentry and inode it can (drop_caches 2), so that
 * FUSE daemons get FORGET for what they had looked up. 0, or -1 with why on stderr. */
int h_drop_dentries(void);

#endif
