/*
 * test_mount.c - the ways in and out of a mount: signals unmount cleanly, mount.fuse3 and an
 * fstab line start the daemon with its options, many worker threads and one both end cleanly,
 * -o clone_fd is refused, a 1 MiB write arrives as one request, allow_other lets others in only as
 * far as the backing store's modes allow, meson install puts the daemon and its man page in place,
 * and
 * --help / --version say what they should.
 *
 * Mounts made outside the harness (mount.fuse3, fstab) are unmounted in the test's own
 * cleanup, and lazily by the harness's teardown of the temp dir as a last resort.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <cmocka.h>

#include "harness.h"

/* A signal to the daemon unmounts the view, and the daemon exits 0. */
static void stop_by(void **state, int sig)
{
	struct h_fs *fs = *state;
	assert_int_equal(h_write_file(H_AT(fs->mnt, "f"), "data", 4), 0);
	assert_int_equal(kill(fs->pid, sig), 0);
	assert_int_equal(h_fs_wait_exit(fs, 20000), 0);
	assert_false(h_is_mounted(fs->mnt));
	char buf[8];
	assert_int_equal(h_read_file(H_AT(fs->backing, "f"), buf, sizeof(buf)), 4);
}

static void sigterm_unmounts(void **state)
{
	stop_by(state, SIGTERM);
}

static void sigint_unmounts(void **state)
{
	stop_by(state, SIGINT);
}

/* ---- the worker threads (fs/loop.c) ---- */

#define PW_SIZE (4u << 20)

/* Writes PW_SIZE bytes of pattern seed to path in writes of chunk bytes and reads them back,
 * from n processes at once (seeds seed0...), each its own file name%d; returns how many failed. */
static int parallel_writers(const char *dir, const char *name, int n, size_t chunk, unsigned seed0)
{
	pid_t pids[64];
	assert_true(n <= 64);
	for (int i = 0; i < n; i++) {
		pids[i] = fork();
		assert_true(pids[i] >= 0);
		if (pids[i] > 0)
			continue;
		char path[PATH_MAX];
		unsigned char *buf = malloc(chunk);
		h_path(path, "%s/%s%d", dir, name, i);
		int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (buf == NULL || fd < 0)
			_exit(1);
		for (uint64_t off = 0; off < PW_SIZE; off += chunk) {
			h_pat_fill(buf, chunk, off, seed0 + (unsigned)i);
			if (write(fd, buf, chunk) != (ssize_t)chunk)
				_exit(2);
		}
		for (uint64_t off = 0; off < PW_SIZE; off += chunk) {
			if (pread(fd, buf, chunk, (off_t)off) != (ssize_t)chunk ||
			    h_pat_check(buf, chunk, off, seed0 + (unsigned)i) >= 0)
				_exit(3);
		}
		_exit(close(fd) == 0 ? 0 : 4);
	}
	int failed = 0;
	for (int i = 0; i < n; i++) {
		int st;
		if (waitpid(pids[i], &st, 0) != pids[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
			failed++;
	}
	return failed;
}

/* Whether the file name%d of dir holds pattern seed, PW_SIZE bytes. */
static void expect_written(const char *dir, const char *name, int i, unsigned seed)
{
	char path[PATH_MAX];
	static unsigned char buf[PW_SIZE];
	h_path(path, "%s/%s%d", dir, name, i);
	assert_int_equal(h_read_file(path, buf, sizeof(buf)), PW_SIZE);
	assert_int_equal(h_pat_check(buf, PW_SIZE, 0, seed), -1);
}

/* Whether dir/name holds 1 MiB of pattern seed. */
static void expect_written_1m(const char *dir, const char *name, unsigned seed)
{
	static unsigned char buf[(1 << 20) + 1];
	assert_int_equal(h_read_file(H_AT(dir, name), buf, sizeof(buf)), 1 << 20);
	assert_int_equal(h_pat_check(buf, 1 << 20, 0, seed), -1);
}

/* Many requests at once start many workers, most of which then wait in read(2) on /dev/fuse,
 * which fuse_session_exit does not interrupt: a signal must still end them all, and the
 * daemon exit 0 with every file whole in the store. */
static void signal_ends_many_workers(void **state)
{
	struct h_fs *fs = *state;
	assert_int_equal(parallel_writers(fs->mnt, "w", 24, 64 << 10, 60), 0);
	assert_int_equal(kill(fs->pid, SIGTERM), 0);
	assert_int_equal(h_fs_wait_exit(fs, 20000), 0);
	assert_false(h_is_mounted(fs->mnt));
	for (int i = 0; i < 24; i += 5)
		expect_written(fs->backing, "w", i, 60 + (unsigned)i);
}

/* With one worker (-o max_threads=1; -s is the same), requests are answered one at a time:
 * parallel writers all finish (a writer's thread lent to the store comes back), and the
 * view unmounts cleanly. */
static void one_worker(void **state)
{
	struct h_fs *fs = *state;
	assert_int_equal(h_fs_unmount(fs), 0);
	assert_int_equal(h_fs_mount(fs, "max_threads=1"), 0);
	assert_int_equal(parallel_writers(fs->mnt, "o", 8, 1 << 20, 80), 0);
	assert_int_equal(h_fs_unmount(fs), 0);
	for (int i = 0; i < 8; i++)
		expect_written(fs->backing, "o", i, 80 + (unsigned)i);
}

/* A write(2) of 1 MiB reaches the daemon in requests far larger than the 256 KiB of old
 * (max_write is 1 MiB; libfuse's debug log, -o debug, names the size of every request it
 * receives), and its data is whole. (The kernel does not always send exactly 1 MiB: once
 * 1,047,344 bytes and the rest after.) */
static void writes_arrive_whole(void **state)
{
	struct h_fs *fs = *state;
	assert_int_equal(h_fs_unmount(fs), 0);
	assert_int_equal(h_fs_mount(fs, "debug"), 0);
	static unsigned char buf[1 << 20];
	h_pat_fill(buf, sizeof(buf), 0, 90);
	int fd = open(H_AT(fs->mnt, "m"), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, buf, sizeof(buf)), sizeof(buf));
	assert_int_equal(close(fd), 0);
	assert_int_equal(h_fs_unmount(fs), 0);
	/* "opcode: WRITE (16), nodeid: N, insize: SIZE": the header and fuse_write_in, then data */
	FILE *log = fopen(fs->log, "re");
	assert_non_null(log);
	char line[512];
	unsigned long largest = 0;
	while (fgets(line, sizeof(line), log) != NULL) {
		const char *p = strstr(line, "opcode: WRITE ");
		unsigned long size;
		if (p != NULL && (p = strstr(p, "insize: ")) != NULL &&
		    sscanf(p, "insize: %lu", &size) == 1 && size > largest)
			largest = size;
	}
	fclose(log);
	fprintf(stderr, "largest WRITE request: %lu bytes\n", largest);
	assert_true(largest > 768 * 1024 && largest <= sizeof(buf) + 4096);
	expect_written_1m(fs->backing, "m", 90);
}

/* -o clone_fd (a /dev/fuse descriptor per worker) is refused before anything is mounted:
 * the daemon's loop reads through libfuse's public calls, which know one descriptor. */
static void clone_fd_refused(void **state)
{
	struct h_fs *fs = *state;
	char out[PATH_MAX];
	h_path(out, "%s/clone_fd.txt", fs->root);
	/* timeout: a daemon that took the option would serve in the foreground */
	int r = h_run("timeout -k 5 20 %s -f -o clone_fd %s %s >%s 2>&1", h_daemon_bin(),
		      fs->backing, fs->plain, out);
	bool mounted = h_is_mounted(fs->plain);
	if (mounted)
		h_run("fusermount3 -uz %s", fs->plain);
	assert_false(mounted);
	assert_int_equal(r, 2);
	assert_int_equal(h_run("grep -q 'clone_fd is not supported' %s", out), 0);
}

/* The directory holding the daemon binary, for a PATH that finds "throttlefs". */
static const char *bin_dir(char *buf)
{
	strcpy(buf, h_daemon_bin());
	char *slash = strrchr(buf, '/');
	assert_non_null(slash);
	*slash = '\0';
	return buf;
}

/* Waits up to 10 s for path to be (or stop being) a mount point. */
static int wait_mounted(const char *path, bool want)
{
	for (int i = 0; i < 200; i++) {
		if (h_is_mounted(path) == want)
			return 0;
		usleep(50000);
	}
	return -1;
}

/* Reads the root's effective rate from user.throttlefs.config. */
static long long config_rate(const char *mnt)
{
	char buf[1024];
	ssize_t n = getxattr(mnt, "user.throttlefs.config", buf, sizeof(buf) - 1);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	const char *p = strstr(buf, "\"rate\":");
	return p ? atoll(p + 7) : -1;
}

/* Unmounts a daemonized mount and waits until it is gone. */
static void unmount_daemonized(const char *mnt)
{
	assert_int_equal(h_run("fusermount3 -u %s", mnt), 0);
	assert_int_equal(wait_mounted(mnt, false), 0);
}

static void mount_fuse3_helper(void **state)
{
	struct h_fs *fs = *state;
	assert_int_equal(h_fs_unmount(fs), 0); /* this test mounts by itself */
	char dir[PATH_MAX];
	int r = h_run("PATH=%s:$PATH mount.fuse3 %s %s -t throttlefs -o rate=5M,buffer=1M",
		      bin_dir(dir), fs->backing, fs->mnt);
	assert_int_equal(r, 0);
	assert_int_equal(wait_mounted(fs->mnt, true), 0);
	long long rate = config_rate(fs->mnt);
	assert_int_equal(h_write_file(H_AT(fs->mnt, "g"), "x", 1), 0);
	unmount_daemonized(fs->mnt);
	assert_int_equal(rate, 5 << 20);
	char c;
	assert_int_equal(h_read_file(H_AT(fs->backing, "g"), &c, 1), 1);
}

static void fstab_line(void **state)
{
	struct h_fs *fs = *state;
	assert_int_equal(h_fs_unmount(fs), 0);
	char fstab[PATH_MAX];
	h_path(fstab, "%s/fstab", fs->root);
	FILE *f = fopen(fstab, "we");
	assert_non_null(f);
	/* The "type#source" form names the daemon by path, as the sanitized PATH of mount(8)
	 * would not find a build directory; an installed daemon is found as fuse.throttlefs. */
	fprintf(f, "%s#%s %s fuse rate=7M,allow_other 0 0\n", h_daemon_bin(), fs->backing, fs->mnt);
	assert_int_equal(fclose(f), 0);
	assert_int_equal(h_run("mount -T %s %s", fstab, fs->mnt), 0);
	assert_int_equal(wait_mounted(fs->mnt, true), 0);
	long long rate = config_rate(fs->mnt);
	unmount_daemonized(fs->mnt);
	assert_int_equal(rate, 7 << 20);
}

/* Runs fn as user nobody in a child; returns fn's result (an errno, 0 for success). */
static int as_nobody(int (*fn)(const char *), const char *arg)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		gid_t g = 65534;
		if (setgroups(1, &g) != 0 || setgid(65534) != 0 || setuid(65534) != 0)
			_exit(255);
		_exit(fn(arg));
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	return WEXITSTATUS(st);
}

static int try_read(const char *path)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return errno;
	char c;
	int err = read(fd, &c, 1) < 0 ? errno : 0;
	close(fd);
	return err;
}

static int try_create(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT, 0644);
	if (fd < 0)
		return errno;
	close(fd);
	return 0;
}

static void allow_other_checks_permissions(void **state)
{
	struct h_fs *fs = *state;
	assert_int_equal(h_fs_unmount(fs), 0);
	assert_int_equal(chmod(fs->root, 0755), 0); /* nobody must reach the mount point */
	assert_int_equal(h_write_file(H_AT(fs->backing, "secret"), "s", 1), 0);
	assert_int_equal(chmod(H_AT(fs->backing, "secret"), 0600), 0);
	assert_int_equal(h_write_file(H_AT(fs->backing, "public"), "p", 1), 0);
	assert_int_equal(chmod(H_AT(fs->backing, "public"), 0644), 0);
	assert_int_equal(chmod(fs->backing, 0755), 0);
	assert_int_equal(h_fs_mount(fs, "allow_other"), 0);
	assert_int_equal(as_nobody(try_read, H_AT(fs->mnt, "public")), 0);
	assert_int_equal(as_nobody(try_read, H_AT(fs->mnt, "secret")), EACCES);
	assert_int_equal(as_nobody(try_create, H_AT(fs->mnt, "new")), EACCES);
	struct stat st;
	assert_int_equal(lstat(H_AT(fs->backing, "new"), &st), -1);
}

static void without_allow_other_only_owner(void **state)
{
	struct h_fs *fs = *state;
	assert_int_equal(chmod(fs->root, 0755), 0);
	assert_int_equal(chmod(fs->backing, 0755), 0);
	assert_int_equal(h_write_file(H_AT(fs->backing, "public"), "p", 1), 0);
	assert_int_equal(chmod(H_AT(fs->backing, "public"), 0644), 0);
	/* The kernel keeps everyone but the mounting user out of a FUSE mount by default. */
	assert_int_equal(as_nobody(try_read, H_AT(fs->mnt, "public")), EACCES);
	assert_int_equal(try_read(H_AT(fs->mnt, "public")), 0);
}

static void meson_install(void **state)
{
	struct h_fs *fs = *state;
	const char *build = getenv("TFS_BUILD_ROOT");
	assert_non_null(build);
	int r = h_run("meson install -C %s --no-rebuild --destdir %s/dest >%s/install.log 2>&1",
		      build, fs->root, fs->root);
	if (r != 0)
		h_run("cat %s/install.log >&2", fs->root);
	assert_int_equal(r, 0);
	const char *want[] = {"bin/throttlefs", "share/man/man1/throttlefs.1", "bin/throttlefs-top",
			      "share/man/man1/throttlefs-top.1"};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		assert_int_equal(
		    h_run("test -s \"$(find %s/dest -path '*/%s' | head -1)\"", fs->root, want[i]),
		    0);
	/* The installed daemon runs. */
	assert_int_equal(h_run("\"$(find %s/dest -path '*/bin/throttlefs' | head -1)\" --version "
			       "| grep -q '^throttlefs '",
			       fs->root),
			 0);
}

/* The backing path in user.throttlefs.config is escaped JSON, whatever it holds. */
static void config_escapes_backing_path(void **state)
{
	struct h_fs *fs = *state;
	assert_int_equal(h_fs_unmount(fs), 0);
	char odd[PATH_MAX];
	h_path(odd, "%s/q\"b\\k", fs->root);
	assert_int_equal(mkdir(odd, 0755), 0);
	assert_int_equal(h_run("%s '%s' %s", h_daemon_bin(), odd, fs->mnt), 0);
	assert_int_equal(wait_mounted(fs->mnt, true), 0);
	char buf[2048], want[PATH_MAX + 32];
	ssize_t n = getxattr(fs->mnt, "user.throttlefs.config", buf, sizeof(buf) - 1);
	unmount_daemonized(fs->mnt);
	assert_true(n > 0);
	buf[n] = '\0';
	h_path(want, "\"backing\":\"%s/q\\\"b\\\\k\"}", fs->root);
	assert_non_null(strstr(buf, want));
}

static void help_and_version(void **state)
{
	struct h_fs *fs = *state;
	const char *opts[] = {"rate=",		 "file_rate=",	   "buffer=",  "max_buffer=",
			      "max_semi_space=", "max_old_space=", "trace_gc", "keep_cache",
			      "direct_write",	 "allow_other"};
	char out[PATH_MAX];
	h_path(out, "%s/help.txt", fs->root);
	assert_int_equal(h_run("%s --help >%s 2>&1", h_daemon_bin(), out), 0);
	for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++)
		assert_int_equal(h_run("grep -q -- '%s' %s", opts[i], out), 0);
	/* every throttlefs option line names its default */
	assert_int_equal(h_run("test $(grep -c 'default: ' %s) -ge 8", out), 0);
	assert_int_equal(h_run("%s --version | grep -q '^throttlefs [0-9]'", h_daemon_bin()), 0);
}

/* Whether the mount at mnt lists opt among its options in /proc/self/mounts. */
static bool mounted_with(const char *mnt, const char *opt)
{
	FILE *f = fopen("/proc/self/mounts", "re");
	char line[4096], dir[PATH_MAX], opts[2048];
	bool found = false;
	assert_non_null(f);
	while (!found && fgets(line, sizeof(line), f) != NULL)
		found = sscanf(line, "%*s %4095s %*s %2047s", dir, opts) == 2 &&
			strcmp(dir, mnt) == 0 && strstr(opts, opt) != NULL;
	fclose(f);
	return found;
}

/* Request sizes are throttlefs's choice (256 KiB reads) unless the user mounts with a max_read
 * of their own: the mount then works with theirs (init must repeat the option's value, or
 * libfuse ends the session), and reads larger than 256 KiB come out right. */
static void own_max_read(void **state)
{
	struct h_fs *fs = *state;
	enum { LEN = 3 << 20 };
	char *want = malloc(LEN), *got = malloc(LEN);
	assert_non_null(want);
	assert_non_null(got);
	h_pat_fill(want, LEN, 0, 7);
	assert_int_equal(h_write_file(H_AT(fs->backing, "big"), want, LEN), 0);
	assert_int_equal(h_fs_unmount(fs), 0);
	assert_int_equal(h_fs_mount(fs, "max_read=1048576"), 0);
	assert_true(mounted_with(fs->mnt, "max_read=1048576"));
	int fd = open(H_AT(fs->mnt, "big"), O_RDONLY | O_DIRECT);
	assert_true(fd >= 0);
	size_t n = 0;
	while (n < LEN) {
		ssize_t r = read(fd, got + n, 1 << 20);
		assert_true(r > 0);
		n += (size_t)r;
	}
	close(fd);
	assert_memory_equal(got, want, LEN);
	free(want);
	free(got);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(sigterm_unmounts, h_setup, h_teardown),
	    cmocka_unit_test_setup_teardown(sigint_unmounts, h_setup, h_teardown),
	    cmocka_unit_test_setup_teardown(signal_ends_many_workers, h_setup, h_teardown),
	    cmocka_unit_test_setup_teardown(one_worker, h_setup, h_teardown),
	    cmocka_unit_test_setup_teardown(clone_fd_refused, h_setup, h_teardown),
	    cmocka_unit_test_setup_teardown(writes_arrive_whole, h_setup, h_teardown),
	    cmocka_unit_test_setup_teardown(mount_fuse3_helper, h_setup, h_teardown),
	    cmocka_unit_test_setup_teardown(fstab_line, h_setup, h_teardown),
	    cmocka_unit_test_setup_teardown(allow_other_checks_permissions, h_setup, h_teardown),
	    cmocka_unit_test_setup_teardown(without_allow_other_only_owner, h_setup, h_teardown),
	    cmocka_unit_test_setup_teardown(meson_install, h_setup, h_teardown),
	    cmocka_unit_test_setup_teardown(config_escapes_backing_path, h_setup, h_teardown),
	    cmocka_unit_test_setup_teardown(help_and_version, h_setup, h_teardown),
	    cmocka_unit_test_setup_teardown(own_max_read, h_setup, h_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
