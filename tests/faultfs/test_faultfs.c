/*
 * test_faultfs.c - faultfs end to end: a real mount over a temporary directory, checked from
 * both sides (through the mount and in the backing dir).
 *
 * Each test gets a fresh directory below $TFS_TEST_ROOT (or /tmp) holding backing/ and mnt/,
 * and mounts faultfs itself with the options it needs. faultfs runs in the foreground in a
 * child that dies with us (PR_SET_PDEATHSIG), and the teardown always unmounts, even after a
 * failed assertion: it releases stalled writers, tries fusermount3 -u, then stops the daemon,
 * then lazily unmounts whatever is left. It also fails the test when faultfs did not exit 0,
 * so sanitizer reports from the daemon count.
 *
 * Waits are polls against a generous watchdog (30 s) and never assert on how long anything
 * took: this runs on a busy two-core machine.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#define WATCHDOG_MS 30000
#define POLL_MS	    10

extern char **environ;

struct fx {
	char dir[PATH_MAX / 4];	    /* the per-test directory */
	char backing[PATH_MAX / 4]; /* dir/backing */
	char mnt[PATH_MAX / 4];	    /* dir/mnt */
	pid_t pid;		    /* the faultfs daemon, or 0 */
	int status;		    /* its wait status, once reaped */
};

/* ---- time and processes ---- */

static int64_t now_ms(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		abort();
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap(void)
{
	struct timespec ts = {0, POLL_MS * 1000000L};

	nanosleep(&ts, NULL);
}

/* Runs argv to completion, its stderr silenced when quiet; returns its exit status, or -1
 * when it could not run. */
static int run(char *const argv[], bool quiet)
{
	posix_spawn_file_actions_t fa;
	pid_t pid;
	int st, r;

	if (posix_spawn_file_actions_init(&fa) != 0)
		return -1;
	r = quiet ? posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0) : 0;
	if (r == 0)
		r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
	if (posix_spawn_file_actions_destroy(&fa) != 0 || r != 0)
		return -1;
	if (waitpid(pid, &st, 0) != pid)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Reaps the daemon if it exits within ms; true when it did. */
static bool fx_reap(struct fx *fx, int ms)
{
	int64_t end = now_ms() + ms;

	while (fx->pid > 0) {
		pid_t r = waitpid(fx->pid, &fx->status, WNOHANG);
		if (r == fx->pid || (r < 0 && errno == ECHILD)) {
			fx->pid = 0;
			return true;
		}
		if (now_ms() > end)
			return false;
		nap();
	}
	return true;
}

static bool is_mounted(const char *path)
{
	char line[2 * PATH_MAX];
	bool found = false;
	FILE *f = fopen("/proc/mounts", "re");

	if (f == NULL)
		return true; /* cannot tell: the caller then unmounts to be safe */
	while (!found && fgets(line, sizeof(line), f) != NULL) {
		char *mp = strchr(line, ' ');
		size_t n = strlen(path);
		found = mp != NULL && strncmp(mp + 1, path, n) == 0 && mp[1 + n] == ' ';
	}
	fclose(f);
	return found;
}

/* dir/name into buf; false when it does not fit. */
static bool join(char *buf, size_t len, const char *dir, const char *name)
{
	int n = snprintf(buf, len, "%s/%s", dir, name);

	return n > 0 && (size_t)n < len;
}

/* ---- the fixture ---- */

static int fx_setup(void **state)
{
	const char *top = getenv("TFS_TEST_ROOT");
	struct fx *fx = calloc(1, sizeof(*fx));

	if (fx == NULL)
		return -1;
	if (top == NULL || *top == '\0')
		top = "/tmp";
	if (!join(fx->dir, sizeof(fx->dir), top, "faultfs.XXXXXX") || mkdtemp(fx->dir) == NULL) {
		free(fx);
		return -1;
	}
	if (!join(fx->backing, sizeof(fx->backing), fx->dir, "backing") ||
	    !join(fx->mnt, sizeof(fx->mnt), fx->dir, "mnt") || mkdir(fx->backing, 0755) != 0 ||
	    mkdir(fx->mnt, 0755) != 0) {
		free(fx);
		return -1;
	}
	*state = fx;
	return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	return (flag == FTW_DP ? rmdir(path) : unlink(path)) == 0 ? 0 : -1;
}

static int fx_teardown(void **state)
{
	struct fx *fx = *state;
	int ret = 0;

	if (fx->pid > 0) {
		char *umount[] = {"fusermount3", "-u", fx->mnt, NULL};
		/* Best effort: a writer stalled in the mount keeps it busy. A dead mount may
		 * refuse the xattr, which the steps below then deal with. */
		if (setxattr(fx->mnt, "user.faultfs.stall", "0", 1, 0) != 0)
			fprintf(stderr, "teardown: releasing stall: %s\n", strerror(errno));
		for (int i = 0; i < 20 && fx->pid > 0; i++) {
			if (run(umount, i > 0) == 0) {
				fx_reap(fx, WATCHDOG_MS);
				break;
			}
			fx_reap(fx, 100); /* busy, or the daemon is gone already */
		}
		if (fx->pid > 0) {
			fprintf(stderr, "teardown: faultfs did not unmount; stopping it\n");
			ret = -1;
			if (kill(fx->pid, SIGTERM) != 0 || !fx_reap(fx, 10000)) {
				if (kill(fx->pid, SIGKILL) == 0)
					waitpid(fx->pid, &fx->status, 0);
				fx->pid = 0;
			}
		} else if (!WIFEXITED(fx->status) || WEXITSTATUS(fx->status) != 0) {
			fprintf(stderr, "teardown: faultfs exited with status %#x\n", fx->status);
			ret = -1;
		}
	}
	if (is_mounted(fx->mnt)) {
		char *lazy[] = {"fusermount3", "-uz", fx->mnt, NULL};
		fprintf(stderr, "teardown: %s still mounted; unmounting lazily\n", fx->mnt);
		if (run(lazy, false) != 0)
			fprintf(stderr, "teardown: fusermount3 -uz %s failed\n", fx->mnt);
		ret = -1;
	}
	if (nftw(fx->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) {
		fprintf(stderr, "teardown: cannot remove %s\n", fx->dir);
		ret = -1;
	}
	free(fx);
	return ret;
}

/* Starts faultfs with opts (NULL for none) without waiting for the mount. */
static void fx_spawn(struct fx *fx, const char *opts)
{
	const char *bin = getenv("FAULTFS_BIN");
	pid_t parent = getpid();

	assert_non_null(bin);
	fx->pid = fork();
	assert_true(fx->pid >= 0);
	if (fx->pid == 0) {
		if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent)
			_exit(127);
		if (opts != NULL)
			execl(bin, "faultfs", "-f", "-o", opts, fx->backing, fx->mnt, (char *)NULL);
		else
			execl(bin, "faultfs", "-f", fx->backing, fx->mnt, (char *)NULL);
		perror(bin);
		_exit(127);
	}
}

/* Starts faultfs and waits until the mount is live: mnt then lies on another device than
 * its parent directory. */
static void fx_mount(struct fx *fx, const char *opts)
{
	int64_t end = now_ms() + WATCHDOG_MS;

	fx_spawn(fx, opts);
	for (;;) {
		struct stat m, d;
		assert_int_equal(stat(fx->dir, &d), 0);
		if (stat(fx->mnt, &m) == 0 && m.st_dev != d.st_dev)
			return;
		assert_false(fx_reap(fx, 0)); /* faultfs died before mounting */
		assert_true(now_ms() < end);
		nap();
	}
}

/* ---- helpers for the checks ---- */

static void path_in(char *buf, size_t len, const char *dir, const char *name)
{
	assert_true(join(buf, len, dir, name));
}

/* The value of a control, NUL-terminated. */
static char *ctl_get(struct fx *fx, const char *name, char *buf, size_t len)
{
	char attr[64];
	ssize_t n;

	snprintf(attr, sizeof(attr), "user.faultfs.%s", name);
	n = getxattr(fx->mnt, attr, buf, len - 1);
	assert_true(n >= 0);
	buf[n] = '\0';
	return buf;
}

/* Sets a control; returns 0 or the errno. */
static int ctl_set(struct fx *fx, const char *name, const char *value)
{
	char attr[64];

	snprintf(attr, sizeof(attr), "user.faultfs.%s", name);
	return setxattr(fx->mnt, attr, value, strlen(value), 0) == 0 ? 0 : errno;
}

static void assert_ctl(struct fx *fx, const char *name, const char *want)
{
	char buf[64];

	assert_string_equal(ctl_get(fx, name, buf, sizeof(buf)), want);
}

static void write_file(const char *path, const char *data)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, strlen(data)), (ssize_t)strlen(data));
	assert_int_equal(close(fd), 0);
}

static void assert_file(const char *path, const char *want)
{
	char buf[256];
	int fd = open(path, O_RDONLY);
	ssize_t n;

	assert_true(fd >= 0);
	n = read(fd, buf, sizeof(buf) - 1);
	assert_true(n >= 0);
	buf[n] = '\0';
	assert_int_equal(close(fd), 0);
	assert_string_equal(buf, want);
}

static off_t file_size(const char *path)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	return st.st_size;
}

/* Writes chunk-sized pieces of buf until write(2) fails; returns the bytes written and leaves
 * the failure's errno in *err. */
static size_t write_until_error(int fd, size_t chunk, int *err)
{
	static const char buf[4096];
	size_t total = 0;

	assert_true(chunk <= sizeof(buf));
	for (;;) {
		ssize_t n = write(fd, buf, chunk);
		if (n < 0) {
			*err = errno;
			return total;
		}
		assert_true(n > 0);
		total += (size_t)n;
		assert_true(total < ((size_t)1 << 30));
	}
}

/* ---- tests: passthrough ---- */

static void passthrough_data(void **state)
{
	struct fx *fx = *state;
	char m[PATH_MAX], b[PATH_MAX];
	int fd;

	fx_mount(fx, NULL);
	path_in(m, sizeof(m), fx->mnt, "a");
	path_in(b, sizeof(b), fx->backing, "a");
	write_file(m, "hello world");
	assert_file(m, "hello world");
	assert_file(b, "hello world");

	/* O_APPEND lands at the end. */
	fd = open(m, O_WRONLY | O_APPEND);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "!", 1), 1);
	assert_int_equal(fsync(fd), 0);
	assert_int_equal(close(fd), 0);
	assert_file(b, "hello world!");

	/* O_DIRECT writes go through too (faultfs does not pass O_DIRECT to the backing file) */
	static char block[4096] __attribute__((aligned(4096)));
	memset(block, 'd', sizeof(block));
	fd = open(m, O_WRONLY | O_DIRECT);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, block, sizeof(block), 4096), (ssize_t)sizeof(block));
	assert_int_equal(close(fd), 0);
	assert_int_equal(file_size(b), 8192);

	/* truncate by path and by descriptor, fallocate. */
	assert_int_equal(truncate(m, 5), 0);
	assert_file(b, "hello");
	fd = open(m, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, 4), 0);
	assert_int_equal(fallocate(fd, 0, 0, 65536), 0);
	assert_int_equal(close(fd), 0);
	assert_int_equal(file_size(b), 65536);

	/* An unlinked open file stays usable, and leaves no .fuse_hidden file behind. */
	fd = open(m, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(unlink(m), 0);
	assert_int_equal(pwrite(fd, "xyz", 3, 0), 3);
	char buf[4];
	assert_int_equal(pread(fd, buf, 3, 0), 3);
	assert_memory_equal(buf, "xyz", 3);
	assert_int_equal(ftruncate(fd, 3), 0);
	assert_int_equal(fsync(fd), 0);
	DIR *d = opendir(fx->backing);
	assert_non_null(d);
	for (struct dirent *e; (e = readdir(d)) != NULL;)
		assert_true(strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0);
	assert_int_equal(closedir(d), 0);
	assert_int_equal(close(fd), 0);
}

static void passthrough_namespace(void **state)
{
	struct fx *fx = *state;
	char m[PATH_MAX], m2[PATH_MAX], b[PATH_MAX], l[PATH_MAX], target[64];
	int seen = 0;

	fx_mount(fx, NULL);
	path_in(m, sizeof(m), fx->mnt, "d");
	assert_int_equal(mkdir(m, 0750), 0);
	path_in(b, sizeof(b), fx->backing, "d");
	struct stat st;
	assert_int_equal(stat(b, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0750);
	path_in(m, sizeof(m), fx->mnt, "a");
	write_file(m, "data");
	path_in(m2, sizeof(m2), fx->mnt, "d/b");
	assert_int_equal(rename(m, m2), 0);
	path_in(b, sizeof(b), fx->backing, "d/b");
	assert_file(b, "data");
	assert_int_equal(access(m, F_OK), -1);
	assert_int_equal(errno, ENOENT);

	/* readdir */
	path_in(m, sizeof(m), fx->mnt, "d");
	DIR *d = opendir(m);
	assert_non_null(d);
	for (struct dirent *e; (e = readdir(d)) != NULL;)
		if (strcmp(e->d_name, "b") == 0)
			seen += e->d_type == DT_REG ? 1 : 100;
	assert_int_equal(closedir(d), 0);
	assert_int_equal(seen, 1);

	/* symlink, readlink, and reading through the link; hard link */
	path_in(l, sizeof(l), fx->mnt, "l");
	assert_int_equal(symlink("d/b", l), 0);
	ssize_t n = readlink(l, target, sizeof(target));
	assert_int_equal(n, 3);
	assert_memory_equal(target, "d/b", 3);
	assert_file(l, "data");
	path_in(l, sizeof(l), fx->mnt, "h");
	assert_int_equal(link(m2, l), 0);
	assert_int_equal(stat(l, &st), 0);
	assert_int_equal(st.st_nlink, 2);
	assert_int_equal(unlink(l), 0);

	/* rename over an existing file, then unlink and rmdir */
	path_in(l, sizeof(l), fx->mnt, "c");
	write_file(l, "new");
	assert_int_equal(rename(l, m2), 0);
	assert_file(b, "new");
	assert_int_equal(unlink(m2), 0);
	path_in(l, sizeof(l), fx->mnt, "l");
	assert_int_equal(unlink(l), 0);
	assert_int_equal(rmdir(m), 0);
	path_in(b, sizeof(b), fx->backing, "d");
	assert_int_equal(access(b, F_OK), -1);
}

static void passthrough_attrs(void **state)
{
	struct fx *fx = *state;
	char m[PATH_MAX], b[PATH_MAX], v[16];
	struct stat st;
	struct statvfs ms, bs;

	fx_mount(fx, NULL);
	path_in(m, sizeof(m), fx->mnt, "f");
	path_in(b, sizeof(b), fx->backing, "f");
	write_file(m, "x");

	assert_int_equal(chmod(m, 0640), 0);
	assert_int_equal(stat(b, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0640);
	if (geteuid() == 0) {
		assert_int_equal(chown(m, 1234, 5678), 0);
		assert_int_equal(stat(b, &st), 0);
		assert_int_equal(st.st_uid, 1234);
		assert_int_equal(st.st_gid, 5678);
	}

	struct timespec tv[2] = {{1000000, 0}, {2000000, 500}};
	assert_int_equal(utimensat(AT_FDCWD, m, tv, 0), 0);
	assert_int_equal(stat(b, &st), 0);
	assert_int_equal(st.st_mtim.tv_sec, 2000000);
	assert_int_equal(st.st_atim.tv_sec, 1000000);
	assert_int_equal(stat(m, &st), 0);
	assert_int_equal(st.st_mtim.tv_sec, 2000000);

	/* ordinary xattrs pass through, on files and on the root */
	assert_int_equal(setxattr(m, "user.t", "v1", 2, 0), 0);
	assert_int_equal(getxattr(b, "user.t", v, sizeof(v)), 2);
	assert_memory_equal(v, "v1", 2);
	assert_int_equal(getxattr(m, "user.t", v, sizeof(v)), 2);
	char list[256];
	ssize_t n = listxattr(m, list, sizeof(list));
	assert_true(n > 0);
	assert_non_null(memmem(list, (size_t)n, "user.t", 7));
	assert_int_equal(removexattr(m, "user.t"), 0);
	assert_int_equal(getxattr(b, "user.t", v, sizeof(v)), -1);
	assert_int_equal(errno, ENODATA);
	assert_int_equal(setxattr(fx->mnt, "user.r", "v2", 2, 0), 0);
	assert_int_equal(getxattr(fx->backing, "user.r", v, sizeof(v)), 2);
	/* ...and the controls are not listed */
	n = listxattr(fx->mnt, list, sizeof(list));
	assert_true(n > 0);
	assert_null(memmem(list, (size_t)n, "faultfs", 7));

	assert_int_equal(statvfs(m, &ms), 0);
	assert_int_equal(statvfs(b, &bs), 0);
	assert_int_equal(ms.f_blocks * ms.f_frsize, bs.f_blocks * bs.f_frsize);
}

/* ---- tests: faults ---- */

static void fail_write_after_gives_eio(void **state)
{
	struct fx *fx = *state;
	char m[PATH_MAX], b[PATH_MAX];
	int err = 0, fd;

	fx_mount(fx, "fail_write_after=10000");
	path_in(m, sizeof(m), fx->mnt, "f");
	path_in(b, sizeof(b), fx->backing, "f");
	fd = open(m, O_WRONLY | O_CREAT, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write_until_error(fd, 4096, &err), 10000);
	assert_int_equal(err, EIO);
	assert_int_equal(write(fd, "x", 1), -1); /* and it stays failed */
	assert_int_equal(errno, EIO);
	assert_int_equal(close(fd), 0); /* flush is not a write */
	assert_int_equal(file_size(b), 10000);
	assert_ctl(fx, "bytes_written", "10000");
}

static void fail_write_after_gives_enospc(void **state)
{
	struct fx *fx = *state;
	char m[PATH_MAX], b[PATH_MAX];
	int fd;

	fx_mount(fx, "fail_write_after=0,errno=ENOSPC");
	assert_ctl(fx, "errno", "ENOSPC");
	path_in(m, sizeof(m), fx->mnt, "f");
	path_in(b, sizeof(b), fx->backing, "f");
	fd = open(m, O_WRONLY | O_CREAT, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "abc", 3), -1);
	assert_int_equal(errno, ENOSPC);
	assert_int_equal(close(fd), 0);
	assert_int_equal(file_size(b), 0);
	assert_ctl(fx, "bytes_written", "0");
	assert_ctl(fx, "writes", "1");
}

static void fail_fsync_fails_fsync_only(void **state)
{
	struct fx *fx = *state;
	char m[PATH_MAX], b[PATH_MAX];
	int fd;

	fx_mount(fx, "fail_fsync=1");
	path_in(m, sizeof(m), fx->mnt, "f");
	path_in(b, sizeof(b), fx->backing, "f");
	fd = open(m, O_WRONLY | O_CREAT, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "abc", 3), 3);
	assert_int_equal(fsync(fd), -1);
	assert_int_equal(errno, EIO);
	assert_int_equal(ctl_set(fx, "errno", "EDQUOT"), 0);
	assert_int_equal(fdatasync(fd), -1);
	assert_int_equal(errno, EDQUOT);
	assert_int_equal(ctl_set(fx, "fail_fsync", "0"), 0);
	assert_int_equal(fsync(fd), 0);
	assert_int_equal(ctl_set(fx, "fail_fsync", "1"), 0);
	assert_int_equal(close(fd), 0);
	assert_file(b, "abc");
}

static void controls_change_at_run_time(void **state)
{
	struct fx *fx = *state;
	char m[PATH_MAX];
	int err = 0, fd;

	fx_mount(fx, NULL);
	assert_ctl(fx, "latency_us", "0");
	assert_ctl(fx, "latency_all", "0");
	assert_ctl(fx, "fail_write_after", "off");
	assert_ctl(fx, "fail_fsync", "0");
	assert_ctl(fx, "errno", "EIO");
	assert_ctl(fx, "stall", "0");
	assert_ctl(fx, "stalled", "0");

	path_in(m, sizeof(m), fx->mnt, "f");
	fd = open(m, O_WRONLY | O_CREAT, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "abcd", 4), 4);
	assert_int_equal(ctl_set(fx, "errno", "EFBIG"), 0);
	assert_int_equal(ctl_set(fx, "fail_write_after", "1K"), 0);
	assert_ctl(fx, "fail_write_after", "1024");
	assert_int_equal(write_until_error(fd, 100, &err), 1020);
	assert_int_equal(err, EFBIG);
	assert_int_equal(ctl_set(fx, "fail_write_after", "off"), 0);
	assert_int_equal(write(fd, "e", 1), 1);
	assert_ctl(fx, "bytes_written", "1025");

	assert_int_equal(ctl_set(fx, "latency_us", "2000"), 0);
	assert_int_equal(ctl_set(fx, "latency_all", "1"), 0);
	assert_ctl(fx, "latency_us", "2000");
	assert_ctl(fx, "latency_all", "1");
	assert_int_equal(write(fd, "f", 1), 1);
	assert_int_equal(close(fd), 0);
	assert_int_equal(file_size(m), 1026);
}

static void malformed_values_are_einval(void **state)
{
	struct fx *fx = *state;
	static const struct {
		const char *name, *value;
	} bad[] = {
	    {"latency_us", ""},
	    {"latency_us", "abc"},
	    {"latency_us", "-1"},
	    {"latency_us", "12x"},
	    {"latency_us", "1 "},
	    {"latency_us", "60000001"},
	    {"latency_us", "2K"},
	    {"latency_all", "2"},
	    {"fail_fsync", "yes"},
	    {"fail_write_after", "1.5M"},
	    {"fail_write_after", "of"},
	    {"fail_write_after", "-1"},
	    {"errno", "ENOENT"},
	    {"errno", "eio"},
	    {"errno", "EIO\n"},
	    {"stall", "true"},
	    {"stall", ""},
	    {"nosuch", "1"},
	};

	fx_mount(fx, NULL);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (ctl_set(fx, bad[i].name, bad[i].value) != EINVAL)
			fail_msg("%s=\"%s\" was not EINVAL", bad[i].name, bad[i].value);
	}
	assert_int_equal(setxattr(fx->mnt, "user.faultfs.stall", "1\0", 2, 0), -1);
	assert_int_equal(errno, EINVAL);
	assert_int_equal(ctl_set(fx, "bytes_written", "0"), EPERM);
	assert_int_equal(ctl_set(fx, "writes", "0"), EPERM);
	assert_int_equal(removexattr(fx->mnt, "user.faultfs.stall"), -1);
	assert_int_equal(errno, EPERM);
	char v[8];
	assert_int_equal(getxattr(fx->mnt, "user.faultfs.nosuch", v, sizeof(v)), -1);
	assert_int_equal(errno, ENODATA);

	/* nothing changed */
	assert_ctl(fx, "latency_us", "0");
	assert_ctl(fx, "latency_all", "0");
	assert_ctl(fx, "fail_write_after", "off");
	assert_ctl(fx, "fail_fsync", "0");
	assert_ctl(fx, "errno", "EIO");
	assert_ctl(fx, "stall", "0");
}

static void malformed_mount_option_refuses_to_mount(void **state)
{
	struct fx *fx = *state;

	fx_spawn(fx, "latency_us=abc");
	assert_true(fx_reap(fx, WATCHDOG_MS));
	assert_true(WIFEXITED(fx->status));
	assert_int_equal(WEXITSTATUS(fx->status), 2);
	assert_false(is_mounted(fx->mnt));
	fx->status = 0;
}

/* ---- tests: stall and counters ---- */

struct writer {
	int fd;
	ssize_t result;
	int err;
	atomic_bool done;
};

static void *writer_main(void *arg)
{
	static const char buf[4096];
	struct writer *w = arg;

	w->result = write(w->fd, buf, sizeof(buf));
	w->err = errno;
	if (close(w->fd) != 0 && w->result >= 0)
		w->result = -2;
	atomic_store(&w->done, true);
	return NULL;
}

/* Waits until `stalled` reads want. */
static void wait_stalled(struct fx *fx, const char *want)
{
	int64_t end = now_ms() + WATCHDOG_MS;
	char buf[32];

	while (strcmp(ctl_get(fx, "stalled", buf, sizeof(buf)), want) != 0) {
		assert_true(now_ms() < end);
		nap();
	}
}

/* Starts a writer of 4096 bytes to file and waits until faultfs holds it stalled. The writer
 * is static: it may outlive a failed test's frame until the teardown releases the stall. */
static struct writer *stalled_writer_start(struct fx *fx, const char *file, pthread_t *t)
{
	static struct writer w;
	char m[PATH_MAX];

	path_in(m, sizeof(m), fx->mnt, file);
	w = (struct writer){.result = -1};
	w.fd = open(m, O_WRONLY | O_CREAT, 0644);
	assert_true(w.fd >= 0);
	assert_int_equal(pthread_create(t, NULL, writer_main, &w), 0);
	wait_stalled(fx, "1");
	assert_false(atomic_load(&w.done)); /* it is inside faultfs, blocked */
	return &w;
}

static void writer_join(pthread_t t, struct writer *w)
{
	struct timespec deadline;

	assert_int_equal(clock_gettime(CLOCK_REALTIME, &deadline), 0);
	deadline.tv_sec += WATCHDOG_MS / 1000;
	assert_int_equal(pthread_timedjoin_np(t, NULL, &deadline), 0);
	assert_true(atomic_load(&w->done));
}

/* One stalled writer: blocked until stall is turned off, then completes normally. */
static void stall_one_writer(struct fx *fx, const char *file)
{
	char m[PATH_MAX];
	pthread_t t;
	struct writer *w = stalled_writer_start(fx, file, &t);

	assert_ctl(fx, "stall", "1");
	assert_int_equal(ctl_set(fx, "stall", "0"), 0);
	writer_join(t, w);
	assert_int_equal(w->result, 4096);
	assert_ctl(fx, "stalled", "0");
	path_in(m, sizeof(m), fx->mnt, file);
	assert_int_equal(file_size(m), 4096);
}

static void stall_blocks_writers_until_released(void **state)
{
	struct fx *fx = *state;

	fx_mount(fx, "stall=1");
	stall_one_writer(fx, "a");
	assert_ctl(fx, "bytes_written", "4096");
	assert_int_equal(ctl_set(fx, "stall", "1"), 0);
	stall_one_writer(fx, "b");
	assert_ctl(fx, "bytes_written", "8192");
}

/* SIGTERM ends faultfs even while a writer is stalled: the writer gets the injected error and
 * the daemon exits and unmounts. */
static void sigterm_fails_stalled_writer_and_exits(void **state)
{
	struct fx *fx = *state;
	pthread_t t;
	struct writer *w;

	fx_mount(fx, "stall=1,errno=ENOSPC");
	w = stalled_writer_start(fx, "a", &t);
	assert_int_equal(kill(fx->pid, SIGTERM), 0);
	writer_join(t, w);
	assert_int_equal(w->result, -1);
	assert_int_equal(w->err, ENOSPC);
	assert_true(fx_reap(fx, WATCHDOG_MS));
	/* exited, not killed (a sanitizer report aborts); libfuse 3.14's fuse_main returns 8 when
	 * a signal ended its loop */
	assert_true(WIFEXITED(fx->status));
	assert_true(WEXITSTATUS(fx->status) == 0 || WEXITSTATUS(fx->status) == 8);
	assert_false(is_mounted(fx->mnt));
}

static void counters_count_writes_and_bytes(void **state)
{
	struct fx *fx = *state;
	char m[PATH_MAX], buf[1000] = {0};
	int fd;

	fx_mount(fx, NULL);
	assert_ctl(fx, "bytes_written", "0");
	assert_ctl(fx, "writes", "0");
	path_in(m, sizeof(m), fx->mnt, "f");
	fd = open(m, O_WRONLY | O_CREAT, 0644);
	assert_true(fd >= 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(write(fd, buf, sizeof(buf)), (ssize_t)sizeof(buf));
	assert_int_equal(close(fd), 0);
	assert_ctl(fx, "bytes_written", "3000");
	assert_ctl(fx, "writes", "3");
}

/* Concurrent writers share one budget: together they write exactly fail_write_after bytes. */
struct budget_writer {
	int fd;
	size_t total;
	int err;
};

static void *budget_writer_main(void *arg)
{
	static const char buf[4096];
	struct budget_writer *w = arg;

	for (;;) {
		ssize_t n = write(w->fd, buf, sizeof(buf));
		if (n <= 0) {
			w->err = n < 0 ? errno : 0;
			return NULL;
		}
		w->total += (size_t)n;
	}
}

static void budget_is_shared_by_concurrent_writers(void **state)
{
	struct fx *fx = *state;
	static struct budget_writer w[4]; /* static, as in stall_one_writer */
	pthread_t t[4];
	size_t total = 0;

	fx_mount(fx, "fail_write_after=100001");
	for (int i = 0; i < 4; i++) {
		char m[PATH_MAX], name[8];
		snprintf(name, sizeof(name), "f%d", i);
		path_in(m, sizeof(m), fx->mnt, name);
		w[i] = (struct budget_writer){.fd = open(m, O_WRONLY | O_CREAT, 0644)};
		assert_true(w[i].fd >= 0);
	}
	for (int i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&t[i], NULL, budget_writer_main, &w[i]), 0);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(pthread_join(t[i], NULL), 0);
		assert_int_equal(w[i].err, EIO);
		assert_int_equal(close(w[i].fd), 0);
		total += w[i].total;
	}
	assert_int_equal(total, 100001);
	assert_ctl(fx, "bytes_written", "100001");
}

#define FX_TEST(f) cmocka_unit_test_setup_teardown(f, fx_setup, fx_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    FX_TEST(passthrough_data),
	    FX_TEST(passthrough_namespace),
	    FX_TEST(passthrough_attrs),
	    FX_TEST(fail_write_after_gives_eio),
	    FX_TEST(fail_write_after_gives_enospc),
	    FX_TEST(fail_fsync_fails_fsync_only),
	    FX_TEST(controls_change_at_run_time),
	    FX_TEST(malformed_values_are_einval),
	    FX_TEST(malformed_mount_option_refuses_to_mount),
	    FX_TEST(stall_blocks_writers_until_released),
	    FX_TEST(sigterm_fails_stalled_writer_and_exits),
	    FX_TEST(counters_count_writes_and_bytes),
	    FX_TEST(budget_is_shared_by_concurrent_writers),
	};

	return cmocka_run_group_tests_name("faultfs", tests, NULL, NULL);
}
