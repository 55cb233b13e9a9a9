/*
 * faultfs.c - a test-only FUSE passthrough filesystem that injects faults on command.
 *
 * throttlefs promises that errors and slowness of its backing store reach the program that
 * writes. To prove it, the e2e tests mount faultfs over a temporary directory and use that
 * mount as throttlefs's backing store; then they make faultfs fail or stall.
 *
 *   faultfs [-f] [-o OPTIONS] BACKING_DIR MOUNTPOINT
 *
 * Fault controls, each a mount option (-o name=value) and, at any time, an xattr of the mount
 * root (setfattr -n user.faultfs.NAME -v VALUE MNT; getfattr -n user.faultfs.NAME MNT):
 *
 *   latency_us=N          sleep N microseconds (0..60000000) in every write; default 0
 *   latency_all=0|1       1: sleep latency_us in every request, not only in writes
 *   fail_write_after=B|off  once B bytes in all have been written successfully, every further
 *                         write fails with the injected error. A write that straddles the
 *                         limit writes the part below it and returns that short count (as a
 *                         full disk does), so write(2) returns short and the next call fails.
 *                         B takes the size suffixes K M G T; "off" (default) means no limit.
 *                         The count is bytes_written since the mount, so at run time set
 *                         bytes_written + N to allow N more bytes.
 *   fail_fsync=0|1        1: fsync of a file fails with the injected error (flush and close,
 *                         and fsync of a directory, stay fine)
 *   errno=NAME            the injected error: EIO (default), ENOSPC, EDQUOT or EFBIG
 *   stall=0|1             1: every write blocks before it touches the backing file; setting 0
 *                         releases all blocked writers (they then proceed normally)
 *   watch_id=UID:GID|off  count the write requests that come with exactly this uid and gid in
 *                         watch_writes (setting it, even to the same value, zeroes the count);
 *                         "off" (default) counts nothing. A request's uid and gid are the
 *                         fsuid and fsgid of the thread that wrote to the mount, so a test
 *                         learns whose rights the daemon above used for its writes: with
 *                         watch_id set, every write of a run came as that id if and only if
 *                         watch_writes grew as much as writes did.
 *
 * Read-only xattrs of the mount root (setting them gives EPERM):
 *
 *   user.faultfs.bytes_written  bytes written successfully to backing files since the mount
 *   user.faultfs.writes         write requests received since the mount, failed ones included
 *   user.faultfs.stalled        writers blocked by stall=1 right now (poll it to know that a
 *                               writer has reached the stall)
 *   user.faultfs.watch_writes   write requests since watch_id was last set that came with the
 *                               watched uid and gid
 *   user.faultfs.watch_capable  of those, the ones whose writing thread had any effective
 *                               capability: CapEff in /proc/PID/status, PID being the request's
 *                               (the writing thread's id; it waits for the answer, so what is
 *                               read is what it wrote with). A status that cannot be read
 *                               counts as capable, so a test never passes for want of data.
 *
 * Values are plain decimal (or the errno name, or "off") without a newline. Setting a malformed
 * value (a trailing newline included) or an unknown user.faultfs.* name gives EINVAL and changes
 * nothing; getting an unknown one gives ENODATA, removing any gives EPERM. A bad mount option
 * makes faultfs exit with status 2 before mounting. The controls are not listed by listxattr.
 * Every other xattr, and user.faultfs.* on anything but the root, passes through.
 * Control requests are never delayed, so a test can always turn a fault off.
 *
 * Everything else is a plain passthrough of BACKING_DIR: the directory is opened once, before
 * mounting (so MOUNTPOINT may even be BACKING_DIR itself), and every path is resolved relative
 * to that descriptor with the *at() calls; open files keep their backing descriptor in fi->fh
 * and do all I/O with pread/pwrite on it. An unlinked file is gone from the backing dir at once
 * (hard_remove: no .fuse_hidden files, rmdir of its directory works) and stays open for read,
 * write, ftruncate, fsync and close; fstat and xattrs of it fail with ESTALE, because the kernel
 * sends those by inode and libfuse's path API has no path left for it. Files that the daemon, when
 * root, creates for another user are chowned to that user. Without writeback caching (libfuse's
 * default) every write(2) reaches faultfs before it returns, so injected errors are seen by
 * write(2) itself.
 *
 * faultfs exits 0 after an unmount (fusermount3 -u); SIGTERM also unmounts, with exit status 8
 * (libfuse 3.14's fuse_main reports a loop ended by a signal so); stalled writers then fail
 * with the injected error.
 *
 * Threads: libfuse's multi-threaded loop calls every operation concurrently. The plain knobs
 * and counters are C11 atomics; the write budget, stall flag and stalled count sit under one
 * mutex, and stalled writers sleep on a condition variable. They also wake every 100 ms to see
 * whether the session is ending (SIGTERM, unmount), because libfuse joins its workers and a
 * writer stalled forever would keep the daemon, and the test, from ever exiting.
 */
#define FUSE_USE_VERSION 314

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "size.h"

#define FF_PREFIX	   "user.faultfs."
#define FF_LATENCY_MAX_US  60000000u
#define FF_VALUE_MAX	   32
#define FF_STALL_POLL_NSEC 100000000L
#define FF_UNLIMITED	   UINT64_MAX

/* The controls, in the order of the table below; one parser and one printer serve both the
 * mount options and the xattrs. */
enum ff_ctl {
	FF_LATENCY_US,
	FF_LATENCY_ALL,
	FF_FAIL_WRITE_AFTER,
	FF_FAIL_FSYNC,
	FF_ERRNO,
	FF_STALL,
	FF_WATCH_ID,
	FF_BYTES_WRITTEN,
	FF_WRITES,
	FF_STALLED,
	FF_WATCH_WRITES,
	FF_WATCH_CAPABLE,
	FF_NCTL
};

static const struct {
	const char *name;
	bool writable;
} ff_ctls[FF_NCTL] = {
    [FF_LATENCY_US] = {"latency_us", true},
    [FF_LATENCY_ALL] = {"latency_all", true},
    [FF_FAIL_WRITE_AFTER] = {"fail_write_after", true},
    [FF_FAIL_FSYNC] = {"fail_fsync", true},
    [FF_ERRNO] = {"errno", true},
    [FF_STALL] = {"stall", true},
    [FF_WATCH_ID] = {"watch_id", true},
    [FF_BYTES_WRITTEN] = {"bytes_written", false},
    [FF_WRITES] = {"writes", false},
    [FF_STALLED] = {"stalled", false},
    [FF_WATCH_WRITES] = {"watch_writes", false},
    [FF_WATCH_CAPABLE] = {"watch_capable", false},
};

static const struct {
	const char *name;
	int err;
} ff_errnos[] = {
    {"EIO", EIO},
    {"ENOSPC", ENOSPC},
    {"EDQUOT", EDQUOT},
    {"EFBIG", EFBIG},
};

static struct {
	int root; /* the backing directory, opened before the mount covers it */
	_Atomic uint64_t latency_us;
	atomic_bool latency_all;
	atomic_bool fail_fsync;
	atomic_int err; /* positive errno */
	_Atomic uint64_t bytes_written;
	_Atomic uint64_t writes;
	_Atomic uint64_t watch_id; /* uid << 32 | gid, or FF_UNLIMITED for off */
	_Atomic uint64_t watch_writes;
	_Atomic uint64_t watch_capable;

	pthread_mutex_t lock; /* guards the fields below */
	pthread_cond_t unstall;
	bool stall;
	unsigned stalled;
	uint64_t fail_after; /* FF_UNLIMITED when off */
	uint64_t reserved;   /* bytes written plus bytes of writes in flight */
} ff = {
    .root = -1,
    .err = EIO,
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .fail_after = FF_UNLIMITED,
    .watch_id = FF_UNLIMITED,
};

/* A mutex that fails to lock means memory corruption; a test tool stops right there. */
static void ff_lock(void)
{
	if (pthread_mutex_lock(&ff.lock) != 0)
		abort();
}

static void ff_unlock(void)
{
	if (pthread_mutex_unlock(&ff.lock) != 0)
		abort();
}

/* ---- the controls ---- */

/* Strict decimal: digits only, at most max. */
static int ff_parse_uint(const char *s, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;

	if (*s == '\0')
		return -EINVAL;
	for (; *s != '\0'; s++) {
		if (*s < '0' || *s > '9')
			return -EINVAL;
		unsigned d = (unsigned)(*s - '0');
		if (v > (max - d) / 10)
			return -EINVAL;
		v = v * 10 + d;
	}
	*out = v;
	return 0;
}

static int ff_parse_bool(const char *s, bool *out)
{
	if (strcmp(s, "0") != 0 && strcmp(s, "1") != 0)
		return -EINVAL;
	*out = s[0] == '1';
	return 0;
}

/* "UID:GID" (strict decimal, each below 2^32 - 1) or "off", as watch_id packs it. */
static int ff_parse_id(const char *s, uint64_t *out)
{
	char uid[FF_VALUE_MAX];
	const char *colon = strchr(s, ':');
	uint64_t u, g;

	if (strcmp(s, "off") == 0) {
		*out = FF_UNLIMITED;
		return 0;
	}
	if (colon == NULL || (size_t)(colon - s) >= sizeof(uid))
		return -EINVAL;
	memcpy(uid, s, (size_t)(colon - s));
	uid[colon - s] = '\0';
	if (ff_parse_uint(uid, UINT32_MAX - 1, &u) != 0 ||
	    ff_parse_uint(colon + 1, UINT32_MAX - 1, &g) != 0)
		return -EINVAL;
	*out = u << 32 | g;
	return 0;
}

static int ff_ctl_find(const char *name)
{
	for (int i = 0; i < FF_NCTL; i++)
		if (strcmp(ff_ctls[i].name, name) == 0)
			return i;
	return -1;
}

/* Sets control id from the NUL-terminated text val; all or nothing. */
static int ff_ctl_set(enum ff_ctl id, const char *val)
{
	uint64_t n;
	bool b;
	int r;

	switch (id) {
	case FF_LATENCY_US:
		r = ff_parse_uint(val, FF_LATENCY_MAX_US, &n);
		if (r == 0)
			atomic_store(&ff.latency_us, n);
		return r;
	case FF_LATENCY_ALL:
	case FF_FAIL_FSYNC:
		r = ff_parse_bool(val, &b);
		if (r == 0)
			atomic_store(id == FF_LATENCY_ALL ? &ff.latency_all : &ff.fail_fsync, b);
		return r;
	case FF_FAIL_WRITE_AFTER:
		if (strcmp(val, "off") == 0)
			n = FF_UNLIMITED;
		else if (size_parse(val, &n) != 0 || n == FF_UNLIMITED)
			return -EINVAL;
		ff_lock();
		ff.fail_after = n;
		ff_unlock();
		return 0;
	case FF_ERRNO:
		for (size_t i = 0; i < sizeof(ff_errnos) / sizeof(ff_errnos[0]); i++) {
			if (strcmp(val, ff_errnos[i].name) == 0) {
				atomic_store(&ff.err, ff_errnos[i].err);
				return 0;
			}
		}
		return -EINVAL;
	case FF_WATCH_ID:
		r = ff_parse_id(val, &n);
		if (r == 0) {
			atomic_store(&ff.watch_writes, 0);
			atomic_store(&ff.watch_capable, 0);
			atomic_store(&ff.watch_id, n);
		}
		return r;
	case FF_STALL:
		r = ff_parse_bool(val, &b);
		if (r != 0)
			return r;
		ff_lock();
		ff.stall = b;
		if (!b && pthread_cond_broadcast(&ff.unstall) != 0)
			abort();
		ff_unlock();
		return 0;
	default:
		return -EPERM;
	}
}

/* Prints control id into buf; returns the length (no NUL counted). */
static int ff_ctl_get(enum ff_ctl id, char *buf, size_t len)
{
	uint64_t n = 0;

	switch (id) {
	case FF_LATENCY_US:
		n = atomic_load(&ff.latency_us);
		break;
	case FF_LATENCY_ALL:
		n = atomic_load(&ff.latency_all);
		break;
	case FF_FAIL_FSYNC:
		n = atomic_load(&ff.fail_fsync);
		break;
	case FF_FAIL_WRITE_AFTER:
		ff_lock();
		n = ff.fail_after;
		ff_unlock();
		if (n == FF_UNLIMITED)
			return snprintf(buf, len, "off");
		break;
	case FF_ERRNO: {
		int e = atomic_load(&ff.err);
		for (size_t i = 0; i < sizeof(ff_errnos) / sizeof(ff_errnos[0]); i++)
			if (ff_errnos[i].err == e)
				return snprintf(buf, len, "%s", ff_errnos[i].name);
		return snprintf(buf, len, "%d", e);
	}
	case FF_STALL:
	case FF_STALLED:
		ff_lock();
		n = id == FF_STALL ? ff.stall : ff.stalled;
		ff_unlock();
		break;
	case FF_BYTES_WRITTEN:
		n = atomic_load(&ff.bytes_written);
		break;
	case FF_WRITES:
		n = atomic_load(&ff.writes);
		break;
	case FF_WATCH_ID:
		n = atomic_load(&ff.watch_id);
		if (n == FF_UNLIMITED)
			return snprintf(buf, len, "off");
		return snprintf(buf, len, "%llu:%llu", (unsigned long long)(n >> 32),
				(unsigned long long)(n & UINT32_MAX));
	case FF_WATCH_WRITES:
		n = atomic_load(&ff.watch_writes);
		break;
	case FF_WATCH_CAPABLE:
		n = atomic_load(&ff.watch_capable);
		break;
	case FF_NCTL:
		break;
	}
	return snprintf(buf, len, "%llu", (unsigned long long)n);
}

/* Whether an xattr request is for faultfs itself: a user.faultfs.* name on the mount root.
 * Such requests never reach the backing dir; *id is the control, or -1 for an unknown name. */
static bool ff_is_ctl(const char *path, const char *name, int *id)
{
	if (path == NULL || strcmp(path, "/") != 0 ||
	    strncmp(name, FF_PREFIX, strlen(FF_PREFIX)) != 0)
		return false;
	*id = ff_ctl_find(name + strlen(FF_PREFIX));
	return true;
}

/* ---- the faults ---- */

static void ff_sleep_us(uint64_t us)
{
	struct timespec ts = {.tv_sec = (time_t)(us / 1000000),
			      .tv_nsec = (long)(us % 1000000) * 1000};

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Every request but a write starts here: the latency of latency_all=1. */
static void ff_enter(void)
{
	if (atomic_load(&ff.latency_all))
		ff_sleep_us(atomic_load(&ff.latency_us));
}

/* Blocks while stall is set. Returns 0, or an error when the session ends or the request is
 * interrupted while stalled. */
static int ff_stall_wait(void)
{
	struct fuse_session *se = fuse_get_session(fuse_get_context()->fuse);
	int ret = 0;

	ff_lock();
	if (ff.stall) {
		ff.stalled++;
		while (ff.stall && ret == 0) {
			struct timespec until;
			if (clock_gettime(CLOCK_MONOTONIC, &until) != 0)
				abort();
			until.tv_nsec += FF_STALL_POLL_NSEC;
			if (until.tv_nsec >= 1000000000L) {
				until.tv_sec++;
				until.tv_nsec -= 1000000000L;
			}
			int rc = pthread_cond_timedwait(&ff.unstall, &ff.lock, &until);
			if (rc != 0 && rc != ETIMEDOUT)
				ret = -rc;
			else if (fuse_session_exited(se))
				ret = -atomic_load(&ff.err);
			else if (fuse_interrupted())
				ret = -EINTR;
		}
		ff.stalled--;
	}
	ff_unlock();
	return ret;
}

/* Takes up to size bytes of the write budget into *granted. Returns 0, or the injected error
 * when nothing is left. What the write does not use goes back with ff_budget_return. */
static int ff_budget_take(size_t size, size_t *granted)
{
	int ret = 0;

	ff_lock();
	if (ff.fail_after == FF_UNLIMITED) {
		*granted = size;
	} else if (ff.reserved >= ff.fail_after) {
		ret = -atomic_load(&ff.err);
	} else {
		uint64_t room = ff.fail_after - ff.reserved;
		*granted = room < size ? (size_t)room : size;
	}
	if (ret == 0)
		ff.reserved += *granted;
	ff_unlock();
	return ret;
}

static void ff_budget_return(size_t unused)
{
	ff_lock();
	ff.reserved -= unused;
	ff_unlock();
}

/* ---- passthrough helpers ---- */

/* FUSE paths start with '/'; the backing descriptor wants them relative. */
static const char *ff_rel(const char *path)
{
	return path[1] == '\0' ? "." : path + 1;
}

/* There are no *at() xattr calls (before Linux 6.13): name the file through /proc instead. */
static int ff_proc_path(char *buf, size_t len, const char *path)
{
	int n = snprintf(buf, len, "/proc/self/fd/%d/%s", ff.root, ff_rel(path));
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* A root daemon creates everything as root; give a new object to the user who asked for it,
 * keeping the group that a setgid directory imposed. fd < 0: name it by path. */
static int ff_own(int fd, const char *path)
{
	const struct fuse_context *ctx = fuse_get_context();
	struct stat st;
	gid_t gid;

	if (geteuid() != 0)
		return 0;
	if ((fd >= 0 ? fstat(fd, &st) : fstatat(ff.root, ff_rel(path), &st, AT_SYMLINK_NOFOLLOW)) !=
	    0)
		return -errno;
	gid = st.st_gid == getegid() ? ctx->gid : (gid_t)-1;
	if (st.st_uid == ctx->uid && (gid == (gid_t)-1 || st.st_gid == gid))
		return 0;
	if ((fd >= 0 ? fchown(fd, ctx->uid, gid)
		     : fchownat(ff.root, ff_rel(path), ctx->uid, gid, AT_SYMLINK_NOFOLLOW)) != 0)
		return -errno;
	return 0;
}

/* Result of a call that returns 0 or -1 with errno. */
static int ff_ret(int r)
{
	return r == 0 ? 0 : -errno;
}

/* The kernel positions O_APPEND writes itself and sends the offset; an O_APPEND backing
 * descriptor would make pwrite ignore that offset. O_DIRECT would make the backing store reject
 * libfuse's unaligned buffers; the kernel has already done what it means for the caller. */
static int ff_open_flags(int flags)
{
	return (flags & ~(O_APPEND | O_DIRECT)) | O_CLOEXEC;
}

/* ---- operations ---- */

static void *ff_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	(void)conn;
	cfg->use_ino = 1;
	cfg->nullpath_ok = 1;
	cfg->hard_remove = 1;
	return NULL;
}

static int ff_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	ff_enter();
	if (fi != NULL)
		return ff_ret(fstat((int)fi->fh, st));
	return ff_ret(fstatat(ff.root, ff_rel(path), st, AT_SYMLINK_NOFOLLOW));
}

static int ff_access(const char *path, int mask)
{
	ff_enter();
	return ff_ret(faccessat(ff.root, ff_rel(path), mask, 0));
}

static int ff_readlink(const char *path, char *buf, size_t size)
{
	ssize_t n;

	ff_enter();
	if (size == 0)
		return -EINVAL;
	n = readlinkat(ff.root, ff_rel(path), buf, size - 1);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	return 0;
}

static int ff_mknod(const char *path, mode_t mode, dev_t rdev)
{
	ff_enter();
	if (mknodat(ff.root, ff_rel(path), mode, rdev) != 0)
		return -errno;
	return ff_own(-1, path);
}

static int ff_mkdir(const char *path, mode_t mode)
{
	ff_enter();
	if (mkdirat(ff.root, ff_rel(path), mode) != 0)
		return -errno;
	return ff_own(-1, path);
}

static int ff_unlink(const char *path)
{
	ff_enter();
	return ff_ret(unlinkat(ff.root, ff_rel(path), 0));
}

static int ff_rmdir(const char *path)
{
	ff_enter();
	return ff_ret(unlinkat(ff.root, ff_rel(path), AT_REMOVEDIR));
}

static int ff_symlink(const char *target, const char *path)
{
	ff_enter();
	if (symlinkat(target, ff.root, ff_rel(path)) != 0)
		return -errno;
	return ff_own(-1, path);
}

static int ff_rename(const char *from, const char *to, unsigned int flags)
{
	ff_enter();
	return ff_ret(renameat2(ff.root, ff_rel(from), ff.root, ff_rel(to), flags));
}

static int ff_link(const char *from, const char *to)
{
	ff_enter();
	return ff_ret(linkat(ff.root, ff_rel(from), ff.root, ff_rel(to), 0));
}

static int ff_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	ff_enter();
	if (fi != NULL)
		return ff_ret(fchmod((int)fi->fh, mode));
	return ff_ret(fchmodat(ff.root, ff_rel(path), mode, 0));
}

static int ff_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
	ff_enter();
	if (fi != NULL)
		return ff_ret(fchown((int)fi->fh, uid, gid));
	return ff_ret(fchownat(ff.root, ff_rel(path), uid, gid, AT_SYMLINK_NOFOLLOW));
}

static int ff_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	int fd, r;

	ff_enter();
	if (fi != NULL)
		return ff_ret(ftruncate((int)fi->fh, size));
	fd = openat(ff.root, ff_rel(path), O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	r = ff_ret(ftruncate(fd, size));
	if (close(fd) != 0 && r == 0)
		r = -errno;
	return r;
}

static int ff_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
	ff_enter();
	if (fi != NULL)
		return ff_ret(futimens((int)fi->fh, tv));
	return ff_ret(utimensat(ff.root, ff_rel(path), tv, AT_SYMLINK_NOFOLLOW));
}

static int ff_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	int fd, r;

	ff_enter();
	fd = openat(ff.root, ff_rel(path), ff_open_flags(fi->flags) | O_CREAT, mode);
	if (fd < 0)
		return -errno;
	r = ff_own(fd, path);
	if (r != 0) {
		if (close(fd) != 0)
			return -errno;
		return r;
	}
	fi->fh = (uint64_t)fd;
	return 0;
}

static int ff_open(const char *path, struct fuse_file_info *fi)
{
	int fd;

	ff_enter();
	fd = openat(ff.root, ff_rel(path), ff_open_flags(fi->flags));
	if (fd < 0)
		return -errno;
	fi->fh = (uint64_t)fd;
	return 0;
}

static int ff_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	ssize_t n;

	(void)path;
	ff_enter();
	n = pread((int)fi->fh, buf, size, off);
	return n < 0 ? -errno : (int)n;
}

/* Whether thread tid has any effective capability (true when that cannot be read). */
static bool ff_capable(pid_t tid)
{
	char path[64], line[256];
	unsigned long long eff = 1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)tid);
	f = fopen(path, "re");
	if (f == NULL)
		return true;
	while (fgets(line, sizeof(line), f) != NULL)
		if (sscanf(line, "CapEff: %llx", &eff) == 1)
			break;
	if (fclose(f) != 0)
		return true;
	return eff != 0;
}

/* The one place faults happen: count, delay, stall, then write what the budget allows. */
static int ff_write(const char *path, const char *buf, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	size_t granted = 0;
	ssize_t n;
	int r;

	(void)path;
	atomic_fetch_add(&ff.writes, 1);
	const struct fuse_context *ctx = fuse_get_context();
	if (((uint64_t)ctx->uid << 32 | ctx->gid) == atomic_load(&ff.watch_id)) {
		atomic_fetch_add(&ff.watch_writes, 1);
		if (ff_capable(ctx->pid))
			atomic_fetch_add(&ff.watch_capable, 1);
	}
	ff_sleep_us(atomic_load(&ff.latency_us));
	r = ff_stall_wait();
	if (r != 0)
		return r;
	r = ff_budget_take(size, &granted);
	if (r != 0)
		return r;
	n = pwrite((int)fi->fh, buf, granted, off);
	if (n < 0) {
		r = -errno;
		ff_budget_return(granted);
		return r;
	}
	ff_budget_return(granted - (size_t)n);
	atomic_fetch_add(&ff.bytes_written, (uint64_t)n);
	return (int)n;
}

static int ff_statfs(const char *path, struct statvfs *st)
{
	(void)path;
	ff_enter();
	return ff_ret(fstatvfs(ff.root, st));
}

static int ff_flush(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	(void)fi;
	ff_enter();
	return 0;
}

static int ff_release(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	ff_enter();
	return ff_ret(close((int)fi->fh));
}

static int ff_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	(void)path;
	ff_enter();
	if (atomic_load(&ff.fail_fsync))
		return -atomic_load(&ff.err);
	return ff_ret(datasync ? fdatasync((int)fi->fh) : fsync((int)fi->fh));
}

static int ff_setxattr(const char *path, const char *name, const char *value, size_t size,
		       int flags)
{
	char buf[PATH_MAX];
	int id, r;

	if (ff_is_ctl(path, name, &id)) {
		char val[FF_VALUE_MAX];
		if (id < 0 || size >= sizeof(val) || memchr(value, '\0', size) != NULL)
			return -EINVAL;
		memcpy(val, value, size);
		val[size] = '\0';
		return ff_ctl_set((enum ff_ctl)id, val);
	}
	ff_enter();
	r = ff_proc_path(buf, sizeof(buf), path);
	if (r != 0)
		return r;
	return ff_ret(lsetxattr(buf, name, value, size, flags));
}

static int ff_getxattr(const char *path, const char *name, char *value, size_t size)
{
	char buf[PATH_MAX];
	ssize_t n;
	int id, r;

	if (ff_is_ctl(path, name, &id)) {
		char val[FF_VALUE_MAX];
		if (id < 0)
			return -ENODATA;
		int len = ff_ctl_get((enum ff_ctl)id, val, sizeof(val));
		if (size == 0)
			return len;
		if ((size_t)len > size)
			return -ERANGE;
		memcpy(value, val, (size_t)len);
		return len;
	}
	ff_enter();
	r = ff_proc_path(buf, sizeof(buf), path);
	if (r != 0)
		return r;
	n = lgetxattr(buf, name, value, size);
	return n < 0 ? -errno : (int)n;
}

static int ff_listxattr(const char *path, char *list, size_t size)
{
	char buf[PATH_MAX];
	ssize_t n;
	int r;

	ff_enter();
	r = ff_proc_path(buf, sizeof(buf), path);
	if (r != 0)
		return r;
	n = llistxattr(buf, list, size);
	return n < 0 ? -errno : (int)n;
}

static int ff_removexattr(const char *path, const char *name)
{
	char buf[PATH_MAX];
	int id, r;

	if (ff_is_ctl(path, name, &id))
		return -EPERM;
	ff_enter();
	r = ff_proc_path(buf, sizeof(buf), path);
	if (r != 0)
		return r;
	return ff_ret(lremovexattr(buf, name));
}

static int ff_opendir(const char *path, struct fuse_file_info *fi)
{
	DIR *d;
	int fd;

	ff_enter();
	fd = openat(ff.root, ff_rel(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (d == NULL) {
		int r = -errno;
		if (close(fd) != 0)
			return -errno;
		return r;
	}
	fi->fh = (uint64_t)(uintptr_t)d;
	return 0;
}

/* The whole directory in one call, every offset 0: libfuse buffers it, so no telldir dance. */
static int ff_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
		      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	DIR *d = (DIR *)(uintptr_t)fi->fh;
	struct dirent *e;

	(void)path;
	(void)off;
	(void)flags;
	ff_enter();
	rewinddir(d);
	for (;;) {
		struct stat st = {0};
		errno = 0;
		e = readdir(d);
		if (e == NULL)
			return -errno;
		st.st_ino = e->d_ino;
		st.st_mode = (mode_t)DTTOIF(e->d_type);
		if (fill(buf, e->d_name, &st, 0, 0) != 0)
			return -ENOMEM;
	}
}

static int ff_releasedir(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	ff_enter();
	return ff_ret(closedir((DIR *)(uintptr_t)fi->fh));
}

static int ff_fsyncdir(const char *path, int datasync, struct fuse_file_info *fi)
{
	int fd = dirfd((DIR *)(uintptr_t)fi->fh);

	(void)path;
	ff_enter();
	if (fd < 0)
		return -errno;
	return ff_ret(datasync ? fdatasync(fd) : fsync(fd));
}

static int ff_fallocate(const char *path, int mode, off_t off, off_t len, struct fuse_file_info *fi)
{
	(void)path;
	ff_enter();
	return ff_ret(fallocate((int)fi->fh, mode, off, len));
}

static const struct fuse_operations ff_ops = {
    .init = ff_init,
    .getattr = ff_getattr,
    .access = ff_access,
    .readlink = ff_readlink,
    .mknod = ff_mknod,
    .mkdir = ff_mkdir,
    .unlink = ff_unlink,
    .rmdir = ff_rmdir,
    .symlink = ff_symlink,
    .rename = ff_rename,
    .link = ff_link,
    .chmod = ff_chmod,
    .chown = ff_chown,
    .truncate = ff_truncate,
    .utimens = ff_utimens,
    .create = ff_create,
    .open = ff_open,
    .read = ff_read,
    .write = ff_write,
    .statfs = ff_statfs,
    .flush = ff_flush,
    .release = ff_release,
    .fsync = ff_fsync,
    .setxattr = ff_setxattr,
    .getxattr = ff_getxattr,
    .listxattr = ff_listxattr,
    .removexattr = ff_removexattr,
    .opendir = ff_opendir,
    .readdir = ff_readdir,
    .releasedir = ff_releasedir,
    .fsyncdir = ff_fsyncdir,
    .fallocate = ff_fallocate,
};

/* ---- command line ---- */

struct ff_cmdline {
	const char *backing;
	bool help;
};

/* Takes our controls out of -o, and BACKING_DIR out of the positional arguments; the rest
 * (-f, allow_other, MOUNTPOINT...) goes on to fuse_main. */
static int ff_opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct ff_cmdline *cl = data;
	const char *eq;
	char name[FF_VALUE_MAX];
	int id;

	(void)outargs;
	if (key == FUSE_OPT_KEY_NONOPT) {
		if (cl->backing != NULL)
			return 1;
		cl->backing = arg;
		return 0;
	}
	if (key != FUSE_OPT_KEY_OPT)
		return 1;
	if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
		cl->help = true;
		return 1;
	}
	eq = strchr(arg, '=');
	if (eq == NULL || (size_t)(eq - arg) >= sizeof(name))
		return 1;
	memcpy(name, arg, (size_t)(eq - arg));
	name[eq - arg] = '\0';
	id = ff_ctl_find(name);
	if (id < 0)
		return 1;
	if (!ff_ctls[id].writable || ff_ctl_set((enum ff_ctl)id, eq + 1) != 0) {
		fprintf(stderr, "faultfs: bad option '%s'\n", arg);
		return -1;
	}
	return 0;
}

static void ff_usage(const char *prog)
{
	fprintf(stderr,
		"usage: %s [-f] [-o OPTIONS] BACKING_DIR MOUNTPOINT\n"
		"fault options (also xattrs user.faultfs.NAME of the mount root):\n"
		"    -o latency_us=N          sleep N us in every write\n"
		"    -o latency_all=0|1       ... and in every request\n"
		"    -o fail_write_after=B    fail writes once B bytes are written (or 'off')\n"
		"    -o fail_fsync=0|1        fail fsync\n"
		"    -o errno=NAME            EIO (default), ENOSPC, EDQUOT or EFBIG\n"
		"    -o stall=0|1             block every write until stall is 0\n"
		"    -o watch_id=UID:GID      count writes by this id in watch_writes (or 'off')\n",
		prog);
}

int main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct ff_cmdline cl = {0};
	pthread_condattr_t ca;
	int r;

	if (pthread_condattr_init(&ca) != 0 ||
	    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
	    pthread_cond_init(&ff.unstall, &ca) != 0 || pthread_condattr_destroy(&ca) != 0) {
		fprintf(stderr, "faultfs: cannot set up a condition variable\n");
		return 1;
	}
	if (fuse_opt_parse(&args, &cl, NULL, ff_opt_proc) != 0) {
		fuse_opt_free_args(&args);
		return 2;
	}
	if (cl.help) {
		ff_usage(argv[0]);
		r = fuse_main(args.argc, args.argv, &ff_ops, NULL);
		fuse_opt_free_args(&args);
		return r;
	}
	if (cl.backing == NULL) {
		ff_usage(argv[0]);
		fuse_opt_free_args(&args);
		return 2;
	}
	ff.root = open(cl.backing, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (ff.root < 0) {
		fprintf(stderr, "faultfs: %s: %s\n", cl.backing, strerror(errno));
		fuse_opt_free_args(&args);
		return 2;
	}
	/* libfuse 3.14's fuse_main passes an unset max_idle_threads (-1) to its loop, which logs a
	 * bogus warning; name the default. A user's own -o max_idle_threads comes later and wins.
	 */
	if (fuse_opt_insert_arg(&args, 1, "-omax_idle_threads=10") != 0) {
		fuse_opt_free_args(&args);
		return 1;
	}
	umask(0); /* the kernel already applied the caller's umask to every mode we get */
	r = fuse_main(args.argc, args.argv, &ff_ops, NULL);
	fuse_opt_free_args(&args);
	if (close(ff.root) != 0 && r == 0)
		r = 1;
	return r;
}
