/*
 * test_creds.c - whose rights the daemon's writes to the store use (issue 8).
 *
 * A write through the view returns once its data is in the file's stream; a drain thread of the
 * daemon, run as root, writes it to the store later. The promise: that thread writes with the
 * credentials of the file's opener, so a user's data never gets root's reach in the store
 * (ext4's reserved blocks, quota overrun with CAP_SYS_RESOURCE, ...).
 *
 * The store is faultfs, which counts the write requests that come with a given fsuid and fsgid
 * (watch_id, watch_writes; the kernel fills a FUSE request's uid and gid with the writing
 * thread's fsuid and fsgid): with watch_id set, every write of a run came as that id exactly
 * when watch_writes grew as much as writes did. Both faultfs and the view are mounted with
 * allow_other (a drain thread acting as nobody must be let into faultfs), and the test
 * directory is opened up so that nobody reaches a world-writable directory in the view.
 *
 *   - nobody writes several MiB into a file it creates: every write reaches the store as
 *     nobody:nogroup from a thread without any effective capability (faultfs reads the
 *     writing thread's CapEff: a root thread with only its fsuid changed keeps
 *     CAP_SYS_RESOURCE and others), and the file holds the data;
 *   - root writes: every write reaches the store as root, capabilities and all (its path is
 *     unchanged);
 *   - nobody and root write one file through one shared stream: root's writes, made while
 *     nobody's are in the stream's care, go out as nobody too (never widened);
 *   - on a small ext4 image with a large reserved share (loop mount), nobody writing through
 *     the view runs out of space where the reserved blocks begin, as it does writing directly,
 *     instead of filling root's reserve. Skipped, saying why, where loop mounts are not
 *     available.
 *
 * Children switch to nobody after fork and report through their exit status; only the test
 * process asserts. The harness unmounts view and store after every test, pass or fail.
 */
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <grp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "harness.h"

#define MiB	   (1u << 20)
#define CHUNK	   (256u << 10)
#define NOBODY	   65534
#define NOBODY_ID  "65534:65534"
#define FILE_BYTES (6u * MiB)

/* Makes the store's world-writable directory pub/ (nobody must also reach the test's root,
 * made 0755 before). 0 or -1. */
static int make_pub(struct h_fs *fs)
{
	if (mkdir(H_AT(fs->store, "pub"), 0777) != 0 || chmod(H_AT(fs->store, "pub"), 01777) != 0) {
		fprintf(stderr, "making %s/pub: %s\n", fs->store, strerror(errno));
		return -1;
	}
	return 0;
}

static int teardown(void **state)
{
	int rc = h_fs_free(*state);
	*state = NULL;
	return rc;
}

/* faultfs below the view, both with allow_other. cmocka runs no teardown after a failed
 * setup, so a setup cleans up after itself. */
static int setup(void **state)
{
	struct h_fs *fs = h_fs_new();
	*state = fs;
	if (fs == NULL)
		return -1;
	if (chmod(fs->root, 0755) != 0 || h_lower_faultfs(fs, "allow_other") != 0 ||
	    make_pub(fs) != 0 || h_fs_mount(fs, "allow_other") != 0) {
		teardown(state);
		return -1;
	}
	return 0;
}

/* Writes len bytes of the pattern at off..off+len of path's file through fd. 0 or errno. */
static int write_pattern(int fd, uint64_t off, uint64_t len)
{
	static char buf[CHUNK];
	while (len > 0) {
		size_t n = len < CHUNK ? (size_t)len : CHUNK;
		h_pat_fill(buf, n, off, 8);
		ssize_t w = pwrite(fd, buf, n, (off_t)off);
		if (w < 0)
			return errno;
		if (w == 0)
			return EIO;
		off += (uint64_t)w;
		len -= (uint64_t)w;
	}
	return 0;
}

/* In a child: becomes nobody:nogroup with no other group. */
static void become_nobody(void)
{
	gid_t g = NOBODY;
	if (setgroups(1, &g) != 0 || setgid(NOBODY) != 0 || setuid(NOBODY) != 0)
		_exit(254);
}

/* Creates path and writes FILE_BYTES of the pattern; 0 or an errno (close's included). */
static int create_and_write(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
	if (fd < 0)
		return errno;
	int err = write_pattern(fd, 0, FILE_BYTES);
	if (close(fd) != 0 && err == 0)
		err = errno;
	return err;
}

/* Runs create_and_write(path) as nobody in a child; returns its result. */
static int nobody_creates(const char *path)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		become_nobody();
		_exit(create_and_write(path));
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	return WEXITSTATUS(st);
}

/* The store's copy of rel (below pub/) holds size bytes of the pattern and belongs to uid. */
static void check_stored(struct h_fs *fs, const char *rel, uint64_t size, uid_t uid)
{
	char path[PATH_MAX];
	h_path(path, "%s/pub/%s", fs->store, rel);
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, size);
	assert_int_equal(st.st_uid, uid);
	char *buf = malloc(size);
	assert_non_null(buf);
	ssize_t n = h_read_file(path, buf, size);
	ssize_t bad = n == (ssize_t)size ? h_pat_check(buf, size, 0, 8) : 0;
	free(buf);
	assert_int_equal(n, size);
	assert_int_equal(bad, -1);
}

/* Counts the store's writes from now on, those as id apart. */
struct tally {
	long long writes0;
};

static struct tally tally_start(struct h_fs *fs, const char *id)
{
	assert_int_equal(h_faultfs_set(fs, "watch_id", id), 0);
	struct tally t = {h_faultfs_get(fs, "writes")};
	assert_true(t.writes0 >= 0);
	return t;
}

/* Every write the store received since tally_start came as its id, and there were some; the
 * writing threads had effective capabilities in all of them (capable) or in none. */
static void tally_all_as_id(struct h_fs *fs, struct tally t, bool capable)
{
	long long writes = h_faultfs_get(fs, "writes") - t.writes0;
	long long as_id = h_faultfs_get(fs, "watch_writes");
	long long with_caps = h_faultfs_get(fs, "watch_capable");
	fprintf(stderr,
		"of the store's %lld writes, %lld came as the writer, %lld of them capable\n",
		writes, as_id, with_caps);
	assert_true(writes > 0);
	assert_int_equal(as_id, writes);
	assert_int_equal(with_caps, capable ? writes : 0);
}

static void unprivileged_writer_writes_as_itself(void **state)
{
	struct h_fs *fs = *state;
	struct tally t = tally_start(fs, NOBODY_ID);
	assert_int_equal(nobody_creates(H_AT(fs->mnt, "pub/nobody.dat")), 0);
	tally_all_as_id(fs, t, false);
	check_stored(fs, "nobody.dat", FILE_BYTES, NOBODY);
}

static void root_writer_writes_as_root(void **state)
{
	struct h_fs *fs = *state;
	struct tally t = tally_start(fs, "0:0");
	assert_int_equal(create_and_write(H_AT(fs->mnt, "pub/root.dat")), 0);
	tally_all_as_id(fs, t, true);
	check_stored(fs, "root.dat", FILE_BYTES, 0);
}

/* nobody creates the file and writes its first half, then holds it open while root opens the
 * same file (one shared stream) and writes and fsyncs the second half; then nobody closes. */
static void root_does_not_widen_a_shared_stream(void **state)
{
	struct h_fs *fs = *state;
	const char *path = H_AT(fs->mnt, "pub/shared.dat");
	int go[2], done[2]; /* child -> parent: first half written; parent -> child: close */
	assert_int_equal(pipe(go), 0);
	assert_int_equal(pipe(done), 0);
	struct tally t = tally_start(fs, NOBODY_ID);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(go[0]);
		close(done[1]);
		become_nobody();
		int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
		int err = fd < 0 ? errno : write_pattern(fd, 0, FILE_BYTES / 2);
		char c = (char)err;
		if (write(go[1], &c, 1) != 1 && err == 0)
			err = errno;
		if (read(done[0], &c, 1) != 1 && err == 0)
			err = EPIPE;
		if (fd >= 0 && close(fd) != 0 && err == 0)
			err = errno;
		_exit(err);
	}
	close(go[1]);
	close(done[0]);
	char c = 1;
	ssize_t got = read(go[0], &c, 1);
	int fd = got == 1 && c == 0 ? open(path, O_WRONLY) : -1;
	int err = fd < 0 ? errno : write_pattern(fd, FILE_BYTES / 2, FILE_BYTES / 2);
	if (fd >= 0 && err == 0 && fsync(fd) != 0)
		err = errno;
	if (fd >= 0 && close(fd) != 0 && err == 0)
		err = errno;
	/* Let the child go whatever happened, before asserting anything. */
	assert_int_equal(write(done[1], "x", 1), 1);
	close(go[0]);
	close(done[1]);
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_int_equal(got, 1);
	assert_int_equal(c, 0);
	assert_int_equal(err, 0);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	tally_all_as_id(fs, t, false);
	check_stored(fs, "shared.dat", FILE_BYTES, NOBODY);
}

/* ---- ext4's reserved blocks ---- */

#define EXT4_IMAGE_MIB 32
#define FILL_CAP       (4ull * EXT4_IMAGE_MIB * MiB)

/* The image mount is this file's, not the harness's, whose exit hooks do not know it: this
 * one detaches it (lazily: the view may still be up) if the process exits with it mounted. */
static char ext4_mounted[PATH_MAX];

static void ext4_at_exit(void)
{
	if (ext4_mounted[0] != '\0' && h_is_mounted(ext4_mounted) &&
	    h_run("umount -l '%s'", ext4_mounted) != 0)
		fprintf(stderr, "umount -l %s failed\n", ext4_mounted);
}

static int teardown_ext4(void **state)
{
	struct h_fs *fs = *state;
	if (fs == NULL)
		return 0;
	*state = NULL;
	int rc = h_fs_unmount(fs);
	for (int i = 0; i < 50 && h_is_mounted(fs->backing); i++)
		if (h_run("umount '%s'", fs->backing) != 0)
			h_nap_ms(100);
	if (h_is_mounted(fs->backing)) {
		fprintf(stderr, "the ext4 image on %s stays busy: detaching it lazily\n",
			fs->backing);
		if (h_run("umount -l '%s'", fs->backing) != 0)
			fprintf(stderr, "umount -l %s failed\n", fs->backing);
		rc = -1;
	}
	ext4_mounted[0] = '\0';
	return h_fs_free(fs) != 0 ? -1 : rc;
}

/* A small ext4 image, half of it reserved for root, loop-mounted on backing/ with a
 * world-writable pub/, then the view with allow_other. When the loop mount cannot be made,
 * *state is the fs with nothing mounted on backing/, and the test skips saying why. */
static int setup_ext4(void **state)
{
	static bool hooked;
	struct h_fs *fs = h_fs_new();
	*state = fs;
	if (fs == NULL || chmod(fs->root, 0755) != 0 || (!hooked && atexit(ext4_at_exit) != 0)) {
		teardown(state);
		return -1;
	}
	hooked = true;
	char img[PATH_MAX];
	h_path(img, "%s/ext4.img", fs->root);
	h_path(fs->store, "%s", fs->backing);
	h_path(ext4_mounted, "%s", fs->backing);
	if (h_run("truncate -s %dM '%s' && mkfs.ext4 -q -F -m 50 '%s' >/dev/null 2>&1",
		  EXT4_IMAGE_MIB, img, img) != 0 ||
	    h_run("mount -o loop '%s' '%s' 2>/dev/null", img, fs->backing) != 0 ||
	    !h_is_mounted(fs->backing))
		return 0;
	if (make_pub(fs) != 0 || h_fs_mount(fs, "allow_other") != 0) {
		teardown_ext4(state);
		return -1;
	}
	return 0;
}

/* Writes path (created) in 1 MiB pieces until something fails or FILL_CAP is reached, then
 * fsyncs and closes. Returns the first error (write's, fsync's or close's) or 0. */
static int fill_until_error(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
	if (fd < 0)
		return errno;
	int err = 0;
	for (uint64_t off = 0; err == 0 && off < FILL_CAP; off += MiB)
		err = write_pattern(fd, off, MiB);
	if (fsync(fd) != 0 && err == 0)
		err = errno;
	if (close(fd) != 0 && err == 0)
		err = errno;
	return err;
}

/* fill_until_error(path) as nobody (as root when !nobody) in a child; returns its result. */
static int fill_as(const char *path, bool nobody)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		if (nobody)
			become_nobody();
		_exit(fill_until_error(path));
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	return WEXITSTATUS(st);
}

static long long stored_size(struct h_fs *fs, const char *rel)
{
	struct stat st;
	assert_int_equal(stat(H_AT(fs->store, rel), &st), 0);
	return (long long)st.st_size;
}

/* nobody fills the disk directly (the baseline), then through the view: both stop at
 * ENOSPC with about the same amount, where the reserve begins; then root fills the reserve
 * through the view, which shows that it was there to be taken. */
static void unprivileged_writer_stops_at_the_reserve(void **state)
{
	struct h_fs *fs = *state;
	if (!h_is_mounted(fs->backing)) {
		fprintf(stderr,
			"no ext4 image: mkfs.ext4 or mount -o loop is not available here\n");
		skip();
	}
	struct statvfs sv;
	assert_int_equal(statvfs(fs->backing, &sv), 0);
	long long avail = (long long)(sv.f_bavail * sv.f_frsize);
	long long reserve = (long long)((sv.f_bfree - sv.f_bavail) * sv.f_frsize);
	assert_true(reserve > 8 * (long long)MiB);

	assert_int_equal(fill_as(H_AT(fs->backing, "pub/direct"), true), ENOSPC);
	long long direct = stored_size(fs, "pub/direct");
	assert_int_equal(unlink(H_AT(fs->backing, "pub/direct")), 0);
	assert_int_equal(h_run("sync -f '%s'", fs->backing), 0);

	assert_int_equal(fill_as(H_AT(fs->mnt, "pub/view"), true), ENOSPC);
	long long view = stored_size(fs, "pub/view");
	fprintf(stderr, "avail %lld, reserve %lld: nobody wrote %lld directly, %lld via the view\n",
		avail, reserve, direct, view);
	assert_true(direct <= avail);
	assert_true(view <= avail + reserve / 4);
	assert_true(view >= direct - reserve / 4);

	assert_int_equal(fill_as(H_AT(fs->mnt, "pub/root"), false), ENOSPC);
	long long root = stored_size(fs, "pub/root");
	fprintf(stderr, "root then wrote %lld via the view\n", root);
	assert_true(root >= reserve / 2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(unprivileged_writer_writes_as_itself, setup, teardown),
	    cmocka_unit_test_setup_teardown(root_writer_writes_as_root, setup, teardown),
	    cmocka_unit_test_setup_teardown(root_does_not_widen_a_shared_stream, setup, teardown),
	    cmocka_unit_test_setup_teardown(unprivileged_writer_stops_at_the_reserve, setup_ext4,
					    teardown_ext4),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
