/*
 * test_ops.c - every filesystem operation the view serves, one system call family at a time.
 *
 * Each test gets a fresh mount (h_setup/h_teardown). Where the kernel's own behaviour is the
 * specification, a test runs the same work function on plain/ and on the view (h_both), asserting
 * the results it can state outright inside the work, and then requires the two trees to match and
 * the backing dir to match the view. What a plain directory cannot show (caches dropped, a file
 * appearing behind the view's back, data reaching the backing store) is checked directly.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "harness.h"

/* Compare with plain in every respect but mtimes (work on two trees cannot happen at once). */
#define CMP_NO_TIME (H_CMP_ALL & ~(H_CMP_MTIME | H_CMP_ROOT))

static void put(const char *path, const char *text)
{
	assert_int_equal(h_write_file(path, text, strlen(text)), 0);
}

static void expect_content(const char *path, const void *want, size_t len)
{
	static char buf[1 << 20];
	assert_true(len <= sizeof(buf));
	ssize_t n = h_read_file(path, buf, sizeof(buf));
	assert_int_equal(n, (ssize_t)len);
	assert_memory_equal(buf, want, len);
}

static void expect_text(const char *path, const char *text)
{
	expect_content(path, text, strlen(text));
}

static int open_ok(const char *path, int flags, mode_t mode)
{
	int fd = open(path, flags | O_CLOEXEC, mode);
	if (fd < 0)
		fprintf(stderr, "open %s: %s\n", path, strerror(errno));
	assert_true(fd >= 0);
	return fd;
}

static void write_at(int fd, const void *buf, size_t len, off_t off)
{
	assert_int_equal(pwrite(fd, buf, len, off), (ssize_t)len);
}

/* ---- lookup, getattr, forget ---- */

static void work_lookup(const char *dir)
{
	struct stat st;
	assert_int_equal(mkdir(H_AT(dir, "d"), 0755), 0);
	assert_int_equal(mkdir(H_AT(dir, "d/e"), 0700), 0);
	put(H_AT(dir, "d/e/f"), "hello");
	put(H_AT(dir, "top"), "");

	assert_int_equal(stat(H_AT(dir, "d/e/f"), &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(st.st_size, 5);
	assert_int_equal(st.st_nlink, 1);
	assert_int_equal(stat(H_AT(dir, "d"), &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_nlink, 3);
	assert_int_equal(stat(H_AT(dir, "d/e/../e/./f"), &st), 0);
	assert_int_equal(st.st_size, 5);
	H_EXPECT_ERRNO(stat(H_AT(dir, "missing"), &st), ENOENT);
	H_EXPECT_ERRNO(stat(H_AT(dir, "d/missing/f"), &st), ENOENT);
	H_EXPECT_ERRNO(stat(H_AT(dir, "top/x"), &st), ENOTDIR);
}

static void lookup_getattr(void **state)
{
	struct h_fs *fs = *state;
	struct stat sv, sb;
	assert_int_equal(h_both(fs, work_lookup, CMP_NO_TIME), 0);

	/* The view reports the backing file's attributes (the inode number may be its own). */
	assert_int_equal(stat(H_AT(fs->mnt, "d/e/f"), &sv), 0);
	assert_int_equal(stat(H_AT(fs->backing, "d/e/f"), &sb), 0);
	assert_int_equal(sv.st_mode, sb.st_mode);
	assert_int_equal(sv.st_size, sb.st_size);
	assert_int_equal(sv.st_uid, sb.st_uid);
	assert_int_equal(sv.st_mtim.tv_sec, sb.st_mtim.tv_sec);
	assert_int_equal(sv.st_mtim.tv_nsec, sb.st_mtim.tv_nsec);
	assert_int_equal(sv.st_ctim.tv_sec, sb.st_ctim.tv_sec);
	assert_int_equal(sv.st_ctim.tv_nsec, sb.st_ctim.tv_nsec);
	/* Its preferred I/O size is 128 KiB whatever the store's: cp sizes its buffer by it, and
	 * glibc maps a larger one for every file (ops.c); a file just created says so too (cp
	 * asks then). */
	assert_int_equal(sv.st_blksize, 128 << 10);
	int fd = open(H_AT(fs->mnt, "d/new"), O_WRONLY | O_CREAT | O_EXCL, 0644);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &sv), 0);
	assert_int_equal(sv.st_blksize, 128 << 10);
	assert_int_equal(close(fd), 0);
}

static void forget(void **state)
{
	struct h_fs *fs = *state;
	char path[PATH_MAX] = "", text[64];
	struct stat st, before[200];

	/* A deep chain of directories and a wide one, so that forgetting has work to do. */
	h_path(path, "%s", fs->mnt);
	for (int i = 0; i < 12; i++) {
		char next[PATH_MAX];
		strcpy(path, h_path(next, "%s/level%d", path, i));
		assert_int_equal(mkdir(path, 0755), 0);
	}
	put(H_AT(path, "leaf"), "deep");
	for (int i = 0; i < 200; i++) {
		snprintf(text, sizeof(text), "file %d", i);
		put(h_path((char[PATH_MAX]){0}, "%s/f%03d", fs->mnt, i), text);
		assert_int_equal(
		    stat(h_path((char[PATH_MAX]){0}, "%s/f%03d", fs->mnt, i), &before[i]), 0);
	}
	/* An open file whose name is gone must survive the kernel forgetting everything else. */
	int fd = open_ok(H_AT(fs->mnt, "f000"), O_RDONLY, 0);
	assert_int_equal(unlink(H_AT(fs->mnt, "f000")), 0);

	for (int round = 0; round < 2; round++) {
		assert_int_equal(h_drop_dentries(), 0);
		expect_text(H_AT(path, "leaf"), "deep");
		for (int i = 1; i < 200; i++) {
			snprintf(text, sizeof(text), "file %d", i);
			const char *p = h_path((char[PATH_MAX]){0}, "%s/f%03d", fs->mnt, i);
			expect_text(p, text);
			assert_int_equal(stat(p, &st), 0);
			assert_int_equal(st.st_ino, before[i].st_ino);
			assert_int_equal(st.st_mtim.tv_nsec, before[i].st_mtim.tv_nsec);
		}
		char buf[16] = {0};
		assert_int_equal(pread(fd, buf, sizeof(buf), 0), 6);
		assert_string_equal(buf, "file 0");
		H_EXPECT_ERRNO(stat(H_AT(fs->mnt, "f000"), &st), ENOENT);
	}
	assert_int_equal(close(fd), 0);
}

/* ---- setattr ---- */

static void work_truncate(const char *dir)
{
	char buf[10000];
	h_fill(buf, sizeof(buf), 1);
	assert_int_equal(h_write_file(H_AT(dir, "t"), buf, sizeof(buf)), 0);
	assert_int_equal(truncate(H_AT(dir, "t"), 100), 0);
	expect_content(H_AT(dir, "t"), buf, 100);
	assert_int_equal(truncate(H_AT(dir, "t"), 50000), 0); /* grows with zeros */
	int fd = open_ok(H_AT(dir, "t"), O_RDWR, 0);
	char z[200];
	assert_int_equal(pread(fd, z, sizeof(z), 49900), 100);
	for (int i = 0; i < 100; i++)
		assert_int_equal(z[i], 0);
	assert_int_equal(ftruncate(fd, 7), 0);
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_size, 7);
	assert_int_equal(close(fd), 0);
	assert_int_equal(truncate(H_AT(dir, "t"), 0), 0);
	H_EXPECT_ERRNO(truncate(H_AT(dir, "missing"), 0), ENOENT);
	H_EXPECT_ERRNO(truncate(dir, 0), EISDIR);
}

static void setattr_truncate(void **state)
{
	assert_int_equal(h_both(*state, work_truncate, CMP_NO_TIME), 0);
}

static void work_chmod_chown(const char *dir)
{
	struct stat st;
	put(H_AT(dir, "m"), "x");
	assert_int_equal(chmod(H_AT(dir, "m"), 0640), 0);
	assert_int_equal(stat(H_AT(dir, "m"), &st), 0);
	assert_int_equal(st.st_mode & 07777, 0640);
	assert_int_equal(chown(H_AT(dir, "m"), 1234, 5678), 0);
	assert_int_equal(stat(H_AT(dir, "m"), &st), 0);
	assert_int_equal(st.st_uid, 1234);
	assert_int_equal(st.st_gid, 5678);

	/* chown drops the set-user-ID bit of an executable: the kernel's rule, kept by the view. */
	put(H_AT(dir, "suid"), "x");
	assert_int_equal(chmod(H_AT(dir, "suid"), 04755), 0);
	assert_int_equal(chown(H_AT(dir, "suid"), 42, -1), 0);

	assert_int_equal(mkdir(H_AT(dir, "d"), 0700), 0);
	assert_int_equal(chmod(H_AT(dir, "d"), 01777), 0);
	assert_int_equal(symlink("m", H_AT(dir, "l")), 0);
	assert_int_equal(lchown(H_AT(dir, "l"), 77, 88), 0);
	assert_int_equal(lstat(H_AT(dir, "l"), &st), 0);
	assert_int_equal(st.st_uid, 77);
	int fd = open_ok(H_AT(dir, "m"), O_RDONLY, 0);
	assert_int_equal(fchmod(fd, 0600), 0);
	assert_int_equal(fchown(fd, 5, 6), 0);
	assert_int_equal(close(fd), 0);
	H_EXPECT_ERRNO(chmod(H_AT(dir, "missing"), 0600), ENOENT);
}

static void setattr_chmod_chown(void **state)
{
	assert_int_equal(h_both(*state, work_chmod_chown, CMP_NO_TIME), 0);
}

static void expect_times(const char *path, struct timespec at, struct timespec mt)
{
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_atim.tv_sec, at.tv_sec);
	assert_int_equal(st.st_atim.tv_nsec, at.tv_nsec);
	assert_int_equal(st.st_mtim.tv_sec, mt.tv_sec);
	assert_int_equal(st.st_mtim.tv_nsec, mt.tv_nsec);
}

static void setattr_utimens(void **state)
{
	struct h_fs *fs = *state;
	const char *f = H_AT(fs->mnt, "u"), *b = H_AT(fs->backing, "u");
	const struct timespec a1 = {1000000000, 123456789}, m1 = {2000000000, 987654321};
	const struct timespec a2 = {1100000000, 5}, m2 = {1200000000, 999999999};
	struct stat st;
	struct timespec t0, t1;

	put(f, "times");
	/* Explicit times, to the nanosecond, in the view and in the backing file. */
	assert_int_equal(utimensat(AT_FDCWD, f, (struct timespec[]){a1, m1}, 0), 0);
	expect_times(f, a1, m1);
	expect_times(b, a1, m1);

	/* UTIME_OMIT leaves that time alone. */
	assert_int_equal(utimensat(AT_FDCWD, f, (struct timespec[]){a2, {0, UTIME_OMIT}}, 0), 0);
	expect_times(f, a2, m1);
	expect_times(b, a2, m1);
	assert_int_equal(utimensat(AT_FDCWD, f, (struct timespec[]){{0, UTIME_OMIT}, m2}, 0), 0);
	expect_times(f, a2, m2);
	expect_times(b, a2, m2);

	/* UTIME_NOW: the file's clock, not ours, so allow for coarse timestamps either side. */
	clock_gettime(CLOCK_REALTIME, &t0);
	assert_int_equal(
	    utimensat(AT_FDCWD, f, (struct timespec[]){{0, UTIME_OMIT}, {0, UTIME_NOW}}, 0), 0);
	clock_gettime(CLOCK_REALTIME, &t1);
	assert_int_equal(stat(f, &st), 0);
	assert_true(st.st_mtim.tv_sec >= t0.tv_sec - 2 && st.st_mtim.tv_sec <= t1.tv_sec + 2);
	assert_int_equal(st.st_atim.tv_sec, a2.tv_sec);
	assert_int_equal(st.st_atim.tv_nsec, a2.tv_nsec);
	struct stat sb;
	assert_int_equal(stat(b, &sb), 0);
	assert_int_equal(sb.st_mtim.tv_sec, st.st_mtim.tv_sec);
	assert_int_equal(sb.st_mtim.tv_nsec, st.st_mtim.tv_nsec);

	/* Through a file descriptor, and on a directory and a symlink itself. */
	int fd = open_ok(f, O_RDONLY, 0);
	assert_int_equal(futimens(fd, (struct timespec[]){a1, m1}), 0);
	assert_int_equal(close(fd), 0);
	expect_times(f, a1, m1);
	assert_int_equal(utimensat(AT_FDCWD, fs->mnt, (struct timespec[]){a2, m2}, 0), 0);
	expect_times(fs->mnt, a2, m2);
	expect_times(fs->backing, a2, m2);
	assert_int_equal(symlink("u", H_AT(fs->mnt, "l")), 0);
	assert_int_equal(utimensat(AT_FDCWD, H_AT(fs->mnt, "l"), (struct timespec[]){a2, m2},
				   AT_SYMLINK_NOFOLLOW),
			 0);
	assert_int_equal(lstat(H_AT(fs->backing, "l"), &sb), 0);
	assert_int_equal(sb.st_mtim.tv_sec, m2.tv_sec);
	expect_times(f, a1, m1); /* the target is untouched */
}

/* ---- directories ---- */

static void work_readdir(const char *dir)
{
	assert_int_equal(mkdir(H_AT(dir, "many"), 0755), 0);
	/* Long names so that the listing needs many readdir replies. */
	for (int i = 0; i < 2000; i++) {
		const char *p =
		    h_path((char[PATH_MAX]){0},
			   "%s/many/entry-%04d-with-a-rather-long-name-to-fill-buffers", dir, i);
		if (i % 100 == 7)
			assert_int_equal(mkdir(p, 0755), 0);
		else
			put(p, "");
	}
	assert_int_equal(symlink("x", H_AT(dir, "many/link")), 0);
	assert_int_equal(mkfifo(H_AT(dir, "many/fifo"), 0644), 0);
	/* Remove every third one: later listings must not resurrect them. */
	for (int i = 0; i < 2000; i += 3) {
		const char *p =
		    h_path((char[PATH_MAX]){0},
			   "%s/many/entry-%04d-with-a-rather-long-name-to-fill-buffers", dir, i);
		assert_int_equal(i % 100 == 7 ? rmdir(p) : unlink(p), 0);
	}
}

static void readdir_many(void **state)
{
	struct h_fs *fs = *state;
	assert_int_equal(h_both(fs, work_readdir, CMP_NO_TIME), 0);

	/* d_type agrees with lstat for every entry; "." and ".." are listed once each. */
	DIR *d = opendir(H_AT(fs->mnt, "many"));
	assert_non_null(d);
	int n = 0, dots = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) {
			dots++;
			continue;
		}
		struct stat st;
		const char *p = h_path((char[PATH_MAX]){0}, "%s/many/%s", fs->mnt, e->d_name);
		assert_int_equal(lstat(p, &st), 0);
		if (e->d_type != DT_UNKNOWN)
			assert_int_equal(e->d_type, IFTODT(st.st_mode));
		n++;
	}
	assert_int_equal(closedir(d), 0);
	assert_int_equal(dots, 2);
	assert_int_equal(n, 2000 - 667 + 2);

	/* A rewound directory stream lists the same again. */
	d = opendir(H_AT(fs->mnt, "many"));
	assert_non_null(d);
	int first = 0, second = 0;
	while (readdir(d) != NULL)
		first++;
	rewinddir(d);
	while (readdir(d) != NULL)
		second++;
	assert_int_equal(closedir(d), 0);
	assert_int_equal(first, second);
}

/* Counts the requests of kind opcode (libfuse's name: "LOOKUP") in the daemon's debug log. */
static int requests_in_log(const char *log, const char *opcode)
{
	FILE *f = fopen(log, "r");
	assert_non_null(f);
	char line[512], want[64];
	snprintf(want, sizeof(want), "opcode: %s ", opcode);
	int n = 0;
	while (fgets(line, sizeof(line), f) != NULL)
		n += strstr(line, want) != NULL;
	fclose(f);
	return n;
}

/* A listing carries every entry's attributes (READDIRPLUS on every request, not only the
 * first): find, rm -r, du and the like list a cold directory whole and then stat each entry,
 * and that sends the daemon no LOOKUP per entry. With libfuse's default (READDIRPLUS_AUTO),
 * only the first reply of the listing has attributes (the kernel asks for them again while the
 * entries it got are being looked at, which a whole listing read first never does), and this
 * one of 2000 names then takes ~1600 lookups. */
static void listing_carries_attributes(void **state)
{
	struct h_fs *fs = *state;
	enum { N = 2000 };
	assert_int_equal(h_fs_unmount(fs), 0);
	assert_int_equal(mkdir(H_AT(fs->backing, "cold"), 0755), 0);
	for (int i = 0; i < N; i++)
		put(h_path((char[PATH_MAX]){0}, "%s/cold/file-%04d", fs->backing, i), "x");
	assert_int_equal(h_fs_mount(fs, "debug"), 0);
	struct stat st;
	assert_int_equal(stat(H_AT(fs->mnt, "cold"), &st), 0);
	int before = requests_in_log(fs->log, "LOOKUP");
	assert_true(before >= 1); /* the log does show lookups: "cold" itself */

	static char names[N][16];
	int n = 0;
	int64_t t0 = h_clock_ms();
	DIR *d = opendir(H_AT(fs->mnt, "cold"));
	assert_non_null(d);
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		assert_true(n < N && strlen(e->d_name) < sizeof(names[0]));
		strcpy(names[n++], e->d_name);
	}
	assert_int_equal(n, N);
	for (int i = 0; i < n; i++) {
		assert_int_equal(fstatat(dirfd(d), names[i], &st, AT_SYMLINK_NOFOLLOW), 0);
		assert_int_equal(st.st_size, 1);
	}
	assert_int_equal(closedir(d), 0);
	assert_true(requests_in_log(fs->log, "READDIRPLUS") >= 1);
	/* Entries are valid for 1 s from the reply that brought them; past that, the kernel
	 * rightly asks again, and the count says nothing. */
	if (h_clock_ms() - t0 >= 900) {
		fprintf(stderr, "listing and stats took %lld ms: too slow to judge\n",
			(long long)(h_clock_ms() - t0));
		skip();
	}
	assert_int_equal(requests_in_log(fs->log, "LOOKUP"), before);
}

static void statfs_sane(void **state)
{
	struct h_fs *fs = *state;
	struct statvfs v, b;
	assert_int_equal(statvfs(fs->mnt, &v), 0);
	assert_int_equal(statvfs(fs->backing, &b), 0);
	assert_true(v.f_bsize > 0 && v.f_frsize > 0);
	assert_true(v.f_blocks > 0);
	assert_true(v.f_bfree <= v.f_blocks);
	assert_true(v.f_bavail <= v.f_bfree);
	assert_true(v.f_ffree <= v.f_files);
	assert_true(v.f_namemax > 0 && v.f_namemax <= b.f_namemax);
	/* The view is as big as the backing filesystem. */
	assert_true((unsigned long long)v.f_blocks * v.f_frsize ==
		    (unsigned long long)b.f_blocks * b.f_frsize);
	int fd = open_ok(fs->mnt, O_RDONLY | O_DIRECTORY, 0);
	struct statvfs f;
	assert_int_equal(fstatvfs(fd, &f), 0);
	assert_true(f.f_blocks == v.f_blocks);
	assert_int_equal(close(fd), 0);
}

static void access_modes(void **state)
{
	struct h_fs *fs = *state;
	static const mode_t modes[] = {0000, 0100, 0400, 0200, 0644, 0755, 0001, 0010};
	static const int asks[] = {F_OK, R_OK, W_OK, X_OK, R_OK | X_OK, R_OK | W_OK | X_OK};
	const char *roots[] = {fs->plain, fs->mnt};

	for (size_t m = 0; m < sizeof(modes) / sizeof(modes[0]); m++) {
		for (int r = 0; r < 2; r++) {
			const char *p = h_path((char[PATH_MAX]){0}, "%s/a%zu", roots[r], m);
			put(p, "");
			assert_int_equal(chmod(p, modes[m]), 0);
		}
	}
	assert_int_equal(mkdir(H_AT(fs->mnt, "dir"), 0700), 0);
	assert_int_equal(mkdir(H_AT(fs->plain, "dir"), 0700), 0);

	for (size_t m = 0; m <= sizeof(modes) / sizeof(modes[0]); m++) {
		for (size_t a = 0; a < sizeof(asks) / sizeof(asks[0]); a++) {
			int res[2], err[2];
			for (int r = 0; r < 2; r++) {
				const char *p =
				    m == sizeof(modes) / sizeof(modes[0])
					? H_AT(roots[r], "dir")
					: h_path((char[PATH_MAX]){0}, "%s/a%zu", roots[r], m);
				errno = 0;
				res[r] = access(p, asks[a]);
				err[r] = errno;
			}
			if (res[0] != res[1] || err[0] != err[1])
				fprintf(stderr, "access(entry %zu, %d): plain %d/%d, view %d/%d\n",
					m, asks[a], res[0], err[0], res[1], err[1]);
			assert_int_equal(res[1], res[0]);
			assert_int_equal(err[1], err[0]);
		}
	}
	/* Sanity of the reference: root may not execute a file without any x bit. */
	H_EXPECT_ERRNO(access(H_AT(fs->plain, "a4"), X_OK), EACCES);
	H_EXPECT_ERRNO(access(H_AT(fs->mnt, "missing"), F_OK), ENOENT);
	assert_int_equal(faccessat(AT_FDCWD, H_AT(fs->mnt, "a5"), X_OK, AT_EACCESS), 0);
}

/* ---- open, read, write ---- */

static void work_open_flags(const char *dir)
{
	const char *f = H_AT(dir, "f");
	char buf[64] = {0};

	/* O_EXCL: creates once, then EEXIST; also on a directory and a dangling symlink. */
	int fd = open_ok(f, O_CREAT | O_EXCL | O_WRONLY, 0640);
	assert_int_equal(write(fd, "0123456789", 10), 10);
	assert_int_equal(close(fd), 0);
	H_EXPECT_ERRNO(open(f, O_CREAT | O_EXCL | O_WRONLY, 0640), EEXIST);
	H_EXPECT_ERRNO(open(dir, O_CREAT | O_EXCL | O_RDONLY, 0640), EEXIST);
	assert_int_equal(symlink("nowhere", H_AT(dir, "dangling")), 0);
	H_EXPECT_ERRNO(open(H_AT(dir, "dangling"), O_CREAT | O_EXCL | O_WRONLY, 0640), EEXIST);

	/* O_APPEND: every write lands at the current end, whatever the offset and other writers. */
	int ap = open_ok(f, O_WRONLY | O_APPEND, 0);
	int other = open_ok(f, O_WRONLY, 0);
	assert_int_equal(pwrite(other, "ABCDEFGHIJKLMNOPQRST", 20, 0), 20);
	assert_int_equal(write(ap, "xy", 2), 2);
	assert_int_equal(lseek(ap, 0, SEEK_SET), 0);
	assert_int_equal(write(ap, "z", 1), 1);
	assert_int_equal(close(ap), 0);
	assert_int_equal(close(other), 0);
	expect_text(f, "ABCDEFGHIJKLMNOPQRSTxyz");

	/* O_TRUNC empties an existing file; O_RDONLY|O_TRUNC is allowed on Linux and truncates. */
	fd = open_ok(f, O_RDWR | O_TRUNC, 0);
	assert_int_equal(read(fd, buf, sizeof(buf)), 0);
	assert_int_equal(write(fd, "new", 3), 3);
	assert_int_equal(close(fd), 0);
	expect_text(f, "new");
	fd = open_ok(H_AT(dir, "t2"), O_CREAT | O_WRONLY | O_TRUNC, 0600);
	assert_int_equal(close(fd), 0);

	/* Misuse. */
	H_EXPECT_ERRNO(open(H_AT(dir, "missing"), O_RDONLY), ENOENT);
	H_EXPECT_ERRNO(open(f, O_RDONLY | O_DIRECTORY), ENOTDIR);
	H_EXPECT_ERRNO(open(dir, O_WRONLY), EISDIR);
	H_EXPECT_ERRNO(open(H_AT(dir, "f/x"), O_CREAT | O_WRONLY, 0600), ENOTDIR);
	fd = open_ok(f, O_RDONLY, 0);
	H_EXPECT_ERRNO(write(fd, "x", 1), EBADF);
	assert_int_equal(close(fd), 0);
}

static void open_flags(void **state)
{
	assert_int_equal(h_both(*state, work_open_flags, CMP_NO_TIME), 0);
}

static void work_rw_offsets(const char *dir)
{
	static char big[1 << 20], back[1 << 20];
	char small[100];
	int fd = open_ok(H_AT(dir, "rw"), O_CREAT | O_RDWR, 0644);

	h_fill(big, sizeof(big), 7);
	write_at(fd, big, sizeof(big), 0);
	assert_int_equal(pread(fd, back, sizeof(back), 0), (ssize_t)sizeof(back));
	assert_memory_equal(back, big, sizeof(big));
	/* Overwrite inside, across a page boundary, and beyond the end (leaving a hole). */
	write_at(fd, "inside", 6, 1000);
	write_at(fd, "straddles-a-page", 16, 4096 - 8);
	write_at(fd, "after-hole", 10, (1 << 20) + 100000);
	memcpy(big + 1000, "inside", 6);
	memcpy(big + 4096 - 8, "straddles-a-page", 16);
	assert_int_equal(pread(fd, back, sizeof(back), 0), (ssize_t)sizeof(back));
	assert_memory_equal(back, big, sizeof(big));
	assert_int_equal(pread(fd, small, sizeof(small), (1 << 20) + 99950), 60);
	for (int i = 0; i < 50; i++)
		assert_int_equal(small[i], 0);
	assert_memory_equal(small + 50, "after-hole", 10);
	/* At and past the end. */
	assert_int_equal(pread(fd, small, sizeof(small), (1 << 20) + 100010), 0);
	assert_int_equal(pread(fd, small, sizeof(small), 1ll << 40), 0);
	/* Sequential read/write follow the file offset. */
	assert_int_equal(lseek(fd, 10, SEEK_SET), 10);
	assert_int_equal(write(fd, "seq", 3), 3);
	assert_int_equal(lseek(fd, 0, SEEK_CUR), 13);
	assert_int_equal(lseek(fd, -3, SEEK_CUR), 10);
	assert_int_equal(read(fd, small, 3), 3);
	assert_memory_equal(small, "seq", 3);
	assert_int_equal(lseek(fd, 0, SEEK_END), (1 << 20) + 100010);
	assert_int_equal(close(fd), 0);
	/* A second descriptor sees all of it. */
	fd = open_ok(H_AT(dir, "rw"), O_RDONLY, 0);
	assert_int_equal(pread(fd, small, 3, 10), 3);
	assert_memory_equal(small, "seq", 3);
	assert_int_equal(close(fd), 0);
}

static void read_write_offsets(void **state)
{
	assert_int_equal(h_both(*state, work_rw_offsets, CMP_NO_TIME), 0);
}

static void fsync_variants(void **state)
{
	struct h_fs *fs = *state;
	char data[100000];
	h_fill(data, sizeof(data), 3);

	int fd = open_ok(H_AT(fs->mnt, "s"), O_CREAT | O_WRONLY, 0644);
	assert_int_equal(write(fd, data, sizeof(data)), (ssize_t)sizeof(data));
	assert_int_equal(fsync(fd), 0);
	/* After fsync the data is in the backing file, while the file is still open. */
	expect_content(H_AT(fs->backing, "s"), data, sizeof(data));
	assert_int_equal(pwrite(fd, "tail", 4, sizeof(data)), 4);
	assert_int_equal(fdatasync(fd), 0);
	struct stat st;
	assert_int_equal(stat(H_AT(fs->backing, "s"), &st), 0);
	assert_int_equal(st.st_size, sizeof(data) + 4);
	assert_int_equal(close(fd), 0);

	assert_int_equal(mkdir(H_AT(fs->mnt, "d"), 0755), 0);
	int dfd = open_ok(H_AT(fs->mnt, "d"), O_RDONLY | O_DIRECTORY, 0);
	assert_int_equal(fsync(dfd), 0);
	assert_int_equal(fdatasync(dfd), 0);
	assert_int_equal(close(dfd), 0);
	fd = open_ok(H_AT(fs->mnt, "s"), O_RDONLY, 0);
	assert_int_equal(fsync(fd), 0); /* also on a read-only descriptor */
	assert_int_equal(close(fd), 0);
	assert_int_equal(syncfs(dfd = open_ok(fs->mnt, O_RDONLY, 0)), 0);
	assert_int_equal(close(dfd), 0);
}

/* ---- fallocate, copy_file_range, SEEK_DATA/SEEK_HOLE ---- */

static void fallocate_modes(void **state)
{
	struct h_fs *fs = *state;
	static const struct {
		int mode;
		off_t off, len;
	} ops[] = {
	    {0, 0, 1 << 20},
	    {0, 3 << 20, 4096},
	    {FALLOC_FL_KEEP_SIZE, 4 << 20, 1 << 20},
	    {FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 64 << 10},
	    {FALLOC_FL_PUNCH_HOLE, 0, 4096}, /* EOPNOTSUPP without KEEP_SIZE */
	    {FALLOC_FL_ZERO_RANGE, 8192, 8192},
	};
	const char *roots[] = {fs->plain, fs->mnt};
	int fds[2];
	char data[200000];

	h_fill(data, sizeof(data), 11);
	for (int r = 0; r < 2; r++) {
		fds[r] = open_ok(H_AT(roots[r], "fa"), O_CREAT | O_RDWR, 0644);
		write_at(fds[r], data, sizeof(data), 0);
	}
	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
		int res[2], err[2];
		struct stat st[2];
		for (int r = 0; r < 2; r++) {
			errno = 0;
			res[r] = fallocate(fds[r], ops[i].mode, ops[i].off, ops[i].len);
			err[r] = errno;
			assert_int_equal(fstat(fds[r], &st[r]), 0);
		}
		if (res[0] != res[1] || err[0] != err[1])
			fprintf(stderr, "fallocate op %zu: plain %d/%s, view %d/%s\n", i, res[0],
				strerror(err[0]), res[1], strerror(err[1]));
		assert_int_equal(res[1], res[0]);
		assert_int_equal(err[1], err[0]);
		assert_int_equal(st[1].st_size, st[0].st_size);
	}
	for (int r = 0; r < 2; r++)
		assert_int_equal(close(fds[r]), 0);
	assert_int_equal(h_tree_compare(fs->mnt, fs->plain, CMP_NO_TIME, NULL), 0);
	assert_int_equal(h_sync_tree(fs->mnt), 0);
	assert_int_equal(h_tree_compare(fs->mnt, fs->backing, H_CMP_ALL, NULL), 0);

	/* Space really is reserved beyond the end (KEEP_SIZE) and freed by the punched hole. */
	struct stat sp, sb;
	assert_int_equal(stat(H_AT(fs->plain, "fa"), &sp), 0);
	assert_int_equal(stat(H_AT(fs->backing, "fa"), &sb), 0);
	if (sp.st_blocks * 512 > sp.st_size)
		assert_true(sb.st_blocks * 512 > sb.st_size);
}

static void copy_range(void **state)
{
	struct h_fs *fs = *state;
	static char data[1 << 20], back[1 << 20];
	h_fill(data, sizeof(data), 5);
	assert_int_equal(h_write_file(H_AT(fs->mnt, "src"), data, sizeof(data)), 0);

	int in = open_ok(H_AT(fs->mnt, "src"), O_RDONLY, 0);
	int out = open_ok(H_AT(fs->mnt, "dst"), O_CREAT | O_WRONLY, 0644);
	/* With explicit offsets: the middle of src to offset 100 of dst. */
	loff_t off_in = 4096, off_out = 100;
	size_t want = 512 << 10;
	while (want > 0) {
		ssize_t n = copy_file_range(in, &off_in, out, &off_out, want, 0);
		assert_true(n > 0);
		want -= (size_t)n;
	}
	assert_int_equal(lseek(in, 0, SEEK_CUR), 0); /* file offsets untouched */
	assert_int_equal(lseek(out, 0, SEEK_CUR), 0);
	/* With the file offsets: all of src onto the end of the copy above. */
	assert_int_equal(lseek(out, 0, SEEK_END), 100 + (512 << 10));
	ssize_t n, total = 0;
	while ((n = copy_file_range(in, NULL, out, NULL, sizeof(data), 0)) > 0)
		total += n;
	assert_int_equal(n, 0);
	assert_int_equal(total, sizeof(data));
	assert_int_equal(close(in), 0);
	assert_int_equal(close(out), 0);

	int fd = open_ok(H_AT(fs->mnt, "dst"), O_RDONLY, 0);
	assert_int_equal(pread(fd, back, 100, 0), 100);
	for (int i = 0; i < 100; i++)
		assert_int_equal(back[i], 0);
	assert_int_equal(pread(fd, back, 512 << 10, 100), 512 << 10);
	assert_memory_equal(back, data + 4096, 512 << 10);
	assert_int_equal(pread(fd, back, sizeof(back), 100 + (512 << 10)), sizeof(back));
	assert_memory_equal(back, data, sizeof(data));
	assert_int_equal(close(fd), 0);
	assert_int_equal(h_sync_tree(fs->mnt), 0);
	assert_int_equal(h_tree_compare(fs->mnt, fs->backing, H_CMP_ALL, NULL), 0);
}

static void seek_data_hole(void **state)
{
	struct h_fs *fs = *state;
	const char *roots[] = {fs->plain, fs->mnt};
	static const struct {
		int whence;
		off_t from;
	} asks[] = {
	    {SEEK_HOLE, 0},	    {SEEK_DATA, 0},	   {SEEK_HOLE, 100 << 10},
	    {SEEK_DATA, 100 << 10}, {SEEK_HOLE, 8 << 20},  {SEEK_DATA, (8 << 20) + 4096},
	    {SEEK_DATA, 9 << 20},   {SEEK_HOLE, 15 << 20}, {SEEK_DATA, 16 << 20},
	    {SEEK_HOLE, 16 << 20},  {SEEK_DATA, 32 << 20},
	};
	char chunk[64 << 10];
	h_fill(chunk, sizeof(chunk), 9);

	for (int r = 0; r < 2; r++) {
		int fd = open_ok(H_AT(roots[r], "sparse"), O_CREAT | O_RDWR, 0644);
		write_at(fd, chunk, sizeof(chunk), 0);
		write_at(fd, chunk, sizeof(chunk), 8 << 20);
		assert_int_equal(ftruncate(fd, 16 << 20), 0);
		assert_int_equal(fsync(fd), 0);
		assert_int_equal(close(fd), 0);
	}
	int fds[2] = {open_ok(H_AT(fs->plain, "sparse"), O_RDONLY, 0),
		      open_ok(H_AT(fs->mnt, "sparse"), O_RDONLY, 0)};
	for (size_t i = 0; i < sizeof(asks) / sizeof(asks[0]); i++) {
		off_t res[2];
		int err[2];
		for (int r = 0; r < 2; r++) {
			errno = 0;
			res[r] = lseek(fds[r], asks[i].from, asks[i].whence);
			err[r] = errno;
		}
		if (res[0] != res[1] || err[0] != err[1])
			fprintf(stderr, "lseek(%lld, %s): plain %lld/%d, view %lld/%d\n",
				(long long)asks[i].from,
				asks[i].whence == SEEK_HOLE ? "SEEK_HOLE" : "SEEK_DATA",
				(long long)res[0], err[0], (long long)res[1], err[1]);
		assert_int_equal(res[1], res[0]);
		assert_int_equal(err[1], err[0]);
	}
	/* The hole is found, not merely "data up to the end". */
	off_t hole = lseek(fds[1], 0, SEEK_HOLE);
	assert_true(hole >= (off_t)sizeof(chunk) && hole < (8 << 20));
	H_EXPECT_ERRNO(lseek(fds[1], 9 << 20, SEEK_DATA), ENXIO);
	for (int r = 0; r < 2; r++)
		assert_int_equal(close(fds[r]), 0);
	assert_int_equal(h_tree_compare(fs->mnt, fs->plain, CMP_NO_TIME, NULL), 0);

	/* The backing file is sparse too: 128K written, 16M long. */
	struct stat sb;
	assert_int_equal(stat(H_AT(fs->backing, "sparse"), &sb), 0);
	assert_int_equal(sb.st_size, 16 << 20);
	assert_true(sb.st_blocks * 512 < (2 << 20));
}

/* ---- namespace operations ---- */

static void work_mkdir_rmdir(const char *dir)
{
	struct stat st;
	assert_int_equal(mkdir(H_AT(dir, "a"), 0750), 0);
	assert_int_equal(mkdir(H_AT(dir, "a/b"), 0755), 0);
	H_EXPECT_ERRNO(mkdir(H_AT(dir, "a"), 0755), EEXIST);
	H_EXPECT_ERRNO(mkdir(H_AT(dir, "missing/x"), 0755), ENOENT);
	H_EXPECT_ERRNO(rmdir(H_AT(dir, "a")), ENOTEMPTY);
	put(H_AT(dir, "a/b/f"), "x");
	H_EXPECT_ERRNO(rmdir(H_AT(dir, "a/b")), ENOTEMPTY);
	H_EXPECT_ERRNO(rmdir(H_AT(dir, "a/b/f")), ENOTDIR);
	H_EXPECT_ERRNO(rmdir(H_AT(dir, "nothing")), ENOENT);
	assert_int_equal(unlink(H_AT(dir, "a/b/f")), 0);
	assert_int_equal(rmdir(H_AT(dir, "a/b")), 0);
	H_EXPECT_ERRNO(stat(H_AT(dir, "a/b"), &st), ENOENT);
	assert_int_equal(stat(H_AT(dir, "a"), &st), 0);
	assert_int_equal(st.st_nlink, 2);
	assert_int_equal(mkdir(H_AT(dir, "a/c"), 0700), 0);
	assert_int_equal(mkdir(H_AT(dir, "kept"), 02775), 0);
	/* A directory removed while open: still usable as an fd, gone by name. */
	assert_int_equal(mkdir(H_AT(dir, "gone"), 0755), 0);
	int fd = open_ok(H_AT(dir, "gone"), O_RDONLY | O_DIRECTORY, 0);
	assert_int_equal(rmdir(H_AT(dir, "gone")), 0);
	assert_int_equal(fstat(fd, &st), 0);
	H_EXPECT_ERRNO(openat(fd, "new", O_CREAT | O_WRONLY, 0644), ENOENT);
	assert_int_equal(close(fd), 0);
}

static void mkdir_rmdir(void **state)
{
	assert_int_equal(h_both(*state, work_mkdir_rmdir, CMP_NO_TIME), 0);
}

static void work_unlink(const char *dir)
{
	struct stat st;
	put(H_AT(dir, "f"), "content");
	put(H_AT(dir, "g"), "other");
	int fd = open_ok(H_AT(dir, "f"), O_RDWR, 0);
	assert_int_equal(unlink(H_AT(dir, "f")), 0);
	H_EXPECT_ERRNO(stat(H_AT(dir, "f"), &st), ENOENT);
	H_EXPECT_ERRNO(unlink(H_AT(dir, "f")), ENOENT);
	/* The open file lives on, readable and writable, with no name. */
	char buf[16] = {0};
	assert_int_equal(pread(fd, buf, sizeof(buf), 0), 7);
	assert_string_equal(buf, "content");
	assert_int_equal(pwrite(fd, "C", 1, 0), 1);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_nlink, 0);
	assert_int_equal(close(fd), 0);
	/* A new file under the same name is a new file. */
	put(H_AT(dir, "f"), "fresh");
	expect_text(H_AT(dir, "f"), "fresh");
	assert_int_equal(mkdir(H_AT(dir, "d"), 0755), 0);
	H_EXPECT_ERRNO(unlink(H_AT(dir, "d")), EISDIR);
	assert_int_equal(unlinkat(AT_FDCWD, H_AT(dir, "d"), AT_REMOVEDIR), 0);
	assert_int_equal(unlink(H_AT(dir, "g")), 0);
}

static void unlink_files(void **state)
{
	assert_int_equal(h_both(*state, work_unlink, CMP_NO_TIME), 0);
}

/* The same over a store in memory, where an unlink holds no reference to defer the freeing
 * (remove_entry). */
static void unlink_files_over_tmpfs(void **state)
{
	struct h_fs *fs = *state;
	assert_int_equal(h_fs_unmount(fs), 0);
	assert_int_equal(h_lower_tmpfs(fs, "16M"), 0);
	assert_int_equal(h_fs_mount(fs, NULL), 0);
	assert_int_equal(h_both(fs, work_unlink, CMP_NO_TIME), 0);
}

static void work_rename(const char *dir)
{
	struct stat st;
	put(H_AT(dir, "a"), "A");
	assert_int_equal(rename(H_AT(dir, "a"), H_AT(dir, "b")), 0);
	H_EXPECT_ERRNO(stat(H_AT(dir, "a"), &st), ENOENT);
	expect_text(H_AT(dir, "b"), "A");

	/* Over an existing file: the old target's inode lives on only through its other link. */
	put(H_AT(dir, "c"), "C");
	assert_int_equal(link(H_AT(dir, "c"), H_AT(dir, "c-keep")), 0);
	assert_int_equal(rename(H_AT(dir, "b"), H_AT(dir, "c")), 0);
	expect_text(H_AT(dir, "c"), "A");
	expect_text(H_AT(dir, "c-keep"), "C");
	assert_int_equal(stat(H_AT(dir, "c-keep"), &st), 0);
	assert_int_equal(st.st_nlink, 1);

	/* Across directories, directories with contents, and a file kept open across a rename. */
	assert_int_equal(mkdir(H_AT(dir, "d1"), 0755), 0);
	assert_int_equal(mkdir(H_AT(dir, "d2"), 0755), 0);
	put(H_AT(dir, "d1/x"), "X");
	int fd = open_ok(H_AT(dir, "d1/x"), O_RDWR, 0);
	assert_int_equal(rename(H_AT(dir, "d1/x"), H_AT(dir, "d2/y")), 0);
	assert_int_equal(pwrite(fd, "Y", 1, 1), 1);
	assert_int_equal(close(fd), 0);
	expect_text(H_AT(dir, "d2/y"), "XY");
	assert_int_equal(rename(H_AT(dir, "d2"), H_AT(dir, "d1/d2moved")), 0);
	expect_text(H_AT(dir, "d1/d2moved/y"), "XY");
	assert_int_equal(stat(H_AT(dir, "d1"), &st), 0);
	assert_int_equal(st.st_nlink, 3);

	/* Directory over an empty directory, errors for the rest. */
	assert_int_equal(mkdir(H_AT(dir, "empty"), 0700), 0);
	assert_int_equal(mkdir(H_AT(dir, "full"), 0755), 0);
	put(H_AT(dir, "full/f"), "");
	assert_int_equal(rename(H_AT(dir, "d1"), H_AT(dir, "empty")), 0);
	expect_text(H_AT(dir, "empty/d2moved/y"), "XY");
	H_EXPECT_ERRNO(rename(H_AT(dir, "empty"), H_AT(dir, "full")), ENOTEMPTY);
	H_EXPECT_ERRNO(rename(H_AT(dir, "c"), H_AT(dir, "full")), EISDIR);
	H_EXPECT_ERRNO(rename(H_AT(dir, "full"), H_AT(dir, "c")), ENOTDIR);
	H_EXPECT_ERRNO(rename(H_AT(dir, "full"), H_AT(dir, "full/sub")), EINVAL);
	H_EXPECT_ERRNO(rename(H_AT(dir, "nothing"), H_AT(dir, "x")), ENOENT);
	/* Renaming a name onto itself, or onto another link of the same inode, does nothing. */
	assert_int_equal(rename(H_AT(dir, "c"), H_AT(dir, "c")), 0);
	assert_int_equal(link(H_AT(dir, "c"), H_AT(dir, "c2")), 0);
	assert_int_equal(rename(H_AT(dir, "c"), H_AT(dir, "c2")), 0);
	assert_int_equal(stat(H_AT(dir, "c"), &st), 0);
	assert_int_equal(st.st_nlink, 2);
}

static void rename_plain(void **state)
{
	assert_int_equal(h_both(*state, work_rename, CMP_NO_TIME), 0);
}

static void work_rename_flags(const char *dir)
{
	struct stat st;
	put(H_AT(dir, "a"), "A");
	put(H_AT(dir, "b"), "B");
	assert_int_equal(mkdir(H_AT(dir, "d"), 0700), 0);
	put(H_AT(dir, "d/inside"), "I");

	H_EXPECT_ERRNO(
	    renameat2(AT_FDCWD, H_AT(dir, "a"), AT_FDCWD, H_AT(dir, "b"), RENAME_NOREPLACE),
	    EEXIST);
	expect_text(H_AT(dir, "a"), "A");
	expect_text(H_AT(dir, "b"), "B");
	assert_int_equal(
	    renameat2(AT_FDCWD, H_AT(dir, "a"), AT_FDCWD, H_AT(dir, "c"), RENAME_NOREPLACE), 0);
	H_EXPECT_ERRNO(stat(H_AT(dir, "a"), &st), ENOENT);
	expect_text(H_AT(dir, "c"), "A");

	/* RENAME_EXCHANGE swaps two files, then a file and a directory. */
	assert_int_equal(
	    renameat2(AT_FDCWD, H_AT(dir, "b"), AT_FDCWD, H_AT(dir, "c"), RENAME_EXCHANGE), 0);
	expect_text(H_AT(dir, "b"), "A");
	expect_text(H_AT(dir, "c"), "B");
	assert_int_equal(
	    renameat2(AT_FDCWD, H_AT(dir, "b"), AT_FDCWD, H_AT(dir, "d"), RENAME_EXCHANGE), 0);
	expect_text(H_AT(dir, "d"), "A");
	expect_text(H_AT(dir, "b/inside"), "I");
	H_EXPECT_ERRNO(
	    renameat2(AT_FDCWD, H_AT(dir, "b"), AT_FDCWD, H_AT(dir, "none"), RENAME_EXCHANGE),
	    ENOENT);
	H_EXPECT_ERRNO(renameat2(AT_FDCWD, H_AT(dir, "b"), AT_FDCWD, H_AT(dir, "c"),
				 RENAME_EXCHANGE | RENAME_NOREPLACE),
		       EINVAL);
}

static void rename_flags(void **state)
{
	assert_int_equal(h_both(*state, work_rename_flags, CMP_NO_TIME), 0);
}

static void work_link(const char *dir)
{
	struct stat s1, s2;
	put(H_AT(dir, "a"), "one");
	assert_int_equal(link(H_AT(dir, "a"), H_AT(dir, "b")), 0);
	assert_int_equal(stat(H_AT(dir, "a"), &s1), 0);
	assert_int_equal(stat(H_AT(dir, "b"), &s2), 0);
	assert_int_equal(s1.st_ino, s2.st_ino);
	assert_int_equal(s1.st_nlink, 2);
	assert_int_equal(s2.st_nlink, 2);
	/* A write through one name is read through the other. */
	put(H_AT(dir, "b"), "two");
	expect_text(H_AT(dir, "a"), "two");
	assert_int_equal(mkdir(H_AT(dir, "sub"), 0755), 0);
	assert_int_equal(link(H_AT(dir, "a"), H_AT(dir, "sub/c")), 0);
	assert_int_equal(stat(H_AT(dir, "b"), &s2), 0);
	assert_int_equal(s2.st_nlink, 3);
	assert_int_equal(unlink(H_AT(dir, "a")), 0);
	assert_int_equal(stat(H_AT(dir, "b"), &s2), 0);
	assert_int_equal(s2.st_nlink, 2);
	expect_text(H_AT(dir, "sub/c"), "two");
	H_EXPECT_ERRNO(link(H_AT(dir, "b"), H_AT(dir, "sub/c")), EEXIST);
	H_EXPECT_ERRNO(link(H_AT(dir, "sub"), H_AT(dir, "dirlink")), EPERM);
	H_EXPECT_ERRNO(link(H_AT(dir, "missing"), H_AT(dir, "x")), ENOENT);
	/* A hard link to a symlink links the symlink itself. */
	assert_int_equal(symlink("b", H_AT(dir, "sl")), 0);
	assert_int_equal(linkat(AT_FDCWD, H_AT(dir, "sl"), AT_FDCWD, H_AT(dir, "sl2"), 0), 0);
	assert_int_equal(lstat(H_AT(dir, "sl2"), &s1), 0);
	assert_true(S_ISLNK(s1.st_mode));
	assert_int_equal(s1.st_nlink, 2);
}

static void link_hard(void **state)
{
	struct h_fs *fs = *state;
	struct stat s1, s2;
	assert_int_equal(h_both(fs, work_link, CMP_NO_TIME), 0);
	/* The backing store holds real hard links, not copies. */
	assert_int_equal(stat(H_AT(fs->backing, "b"), &s1), 0);
	assert_int_equal(stat(H_AT(fs->backing, "sub/c"), &s2), 0);
	assert_int_equal(s1.st_ino, s2.st_ino);
	assert_int_equal(s1.st_nlink, 2);
}

static void work_symlink(const char *dir)
{
	char buf[PATH_MAX];
	struct stat st;
	static const char *targets[] = {"f",
					"sub/../f",
					"/etc/hostname",
					"dangling",
					"../up",
					"with space",
					"a/very/long/" /* and longer */
					"target-that-goes-on-and-on-and-on"};
	put(H_AT(dir, "f"), "target");
	assert_int_equal(mkdir(H_AT(dir, "sub"), 0755), 0);
	for (size_t i = 0; i < sizeof(targets) / sizeof(targets[0]); i++) {
		const char *l = h_path((char[PATH_MAX]){0}, "%s/l%zu", dir, i);
		assert_int_equal(symlink(targets[i], l), 0);
		ssize_t n = readlink(l, buf, sizeof(buf));
		assert_int_equal(n, (ssize_t)strlen(targets[i]));
		assert_memory_equal(buf, targets[i], (size_t)n);
		assert_int_equal(lstat(l, &st), 0);
		assert_true(S_ISLNK(st.st_mode));
		assert_int_equal(st.st_size, strlen(targets[i]));
	}
	/* Following: to a file, through a directory symlink, and a dangling one. */
	expect_text(H_AT(dir, "l1"), "target");
	assert_int_equal(symlink("sub", H_AT(dir, "tosub")), 0);
	put(H_AT(dir, "tosub/via"), "via");
	expect_text(H_AT(dir, "sub/via"), "via");
	H_EXPECT_ERRNO(stat(H_AT(dir, "l3"), &st), ENOENT);
	H_EXPECT_ERRNO(symlink("x", H_AT(dir, "f")), EEXIST);
	H_EXPECT_ERRNO(readlink(H_AT(dir, "f"), buf, sizeof(buf)), EINVAL);
	/* A loop is reported, not followed forever. */
	assert_int_equal(symlink("loop2", H_AT(dir, "loop1")), 0);
	assert_int_equal(symlink("loop1", H_AT(dir, "loop2")), 0);
	H_EXPECT_ERRNO(stat(H_AT(dir, "loop1"), &st), ELOOP);
	/* A short buffer truncates silently. */
	assert_int_equal(readlink(H_AT(dir, "l1"), buf, 3), 3);
	assert_memory_equal(buf, "sub", 3);
}

static void symlink_readlink(void **state)
{
	assert_int_equal(h_both(*state, work_symlink, CMP_NO_TIME), 0);
}

static void work_mknod(const char *dir)
{
	struct stat st;
	assert_int_equal(mkfifo(H_AT(dir, "fifo"), 0640), 0);
	assert_int_equal(mknod(H_AT(dir, "fifo2"), S_IFIFO | 0600, 0), 0);
	assert_int_equal(mknod(H_AT(dir, "sock"), S_IFSOCK | 0755, 0), 0);
	assert_int_equal(mknod(H_AT(dir, "reg"), S_IFREG | 0600, 0), 0);
	assert_int_equal(lstat(H_AT(dir, "fifo"), &st), 0);
	assert_true(S_ISFIFO(st.st_mode));
	assert_int_equal(lstat(H_AT(dir, "sock"), &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(lstat(H_AT(dir, "reg"), &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(st.st_size, 0);
	H_EXPECT_ERRNO(mkfifo(H_AT(dir, "fifo"), 0640), EEXIST);

	/* The fifo is a working pipe. */
	int rd = open_ok(H_AT(dir, "fifo"), O_RDONLY | O_NONBLOCK, 0);
	int wr = open_ok(H_AT(dir, "fifo"), O_WRONLY, 0);
	char buf[8] = {0};
	assert_int_equal(write(wr, "pipe", 4), 4);
	assert_int_equal(read(rd, buf, sizeof(buf)), 4);
	assert_string_equal(buf, "pipe");
	assert_int_equal(close(wr), 0);
	assert_int_equal(close(rd), 0);
	assert_int_equal(unlink(H_AT(dir, "fifo2")), 0);
}

static void mknod_special(void **state)
{
	struct h_fs *fs = *state;
	struct stat st;
	assert_int_equal(h_both(fs, work_mknod, CMP_NO_TIME), 0);
	assert_int_equal(lstat(H_AT(fs->backing, "sock"), &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(lstat(H_AT(fs->backing, "fifo"), &st), 0);
	assert_true(S_ISFIFO(st.st_mode));
}

/* ---- extended attributes ---- */

static const char xval[] = {'b', 'i', 'n', 0, 'a', 'r', 'y', (char)0xff};

static void work_xattr(const char *dir)
{
	const char *f = H_AT(dir, "x");
	char buf[256];
	put(f, "");
	assert_int_equal(mkdir(H_AT(dir, "d"), 0755), 0);

	assert_int_equal(setxattr(f, "user.a", "1", 1, 0), 0);
	assert_int_equal(setxattr(f, "user.bin", xval, sizeof(xval), 0), 0);
	assert_int_equal(setxattr(f, "user.empty", "", 0, 0), 0);
	assert_int_equal(setxattr(H_AT(dir, "d"), "user.ondir", "dir", 3, 0), 0);
	assert_int_equal(getxattr(f, "user.bin", NULL, 0), sizeof(xval));
	assert_int_equal(getxattr(f, "user.bin", buf, sizeof(buf)), sizeof(xval));
	assert_memory_equal(buf, xval, sizeof(xval));
	assert_int_equal(getxattr(f, "user.empty", buf, sizeof(buf)), 0);
	H_EXPECT_ERRNO(getxattr(f, "user.bin", buf, 2), ERANGE);
	H_EXPECT_ERRNO(getxattr(f, "user.none", buf, sizeof(buf)), ENODATA);
	H_EXPECT_ERRNO(setxattr(f, "user.a", "2", 1, XATTR_CREATE), EEXIST);
	H_EXPECT_ERRNO(setxattr(f, "user.none", "2", 1, XATTR_REPLACE), ENODATA);
	assert_int_equal(setxattr(f, "user.a", "22", 2, XATTR_REPLACE), 0);

	/* The list holds exactly our names (other namespaces may add their own). */
	ssize_t len = listxattr(f, NULL, 0);
	assert_true(len > 0 && (size_t)len <= sizeof(buf));
	assert_int_equal(listxattr(f, buf, sizeof(buf)), len);
	int seen = 0;
	for (char *p = buf; p < buf + len; p += strlen(p) + 1) {
		if (!strcmp(p, "user.a") || !strcmp(p, "user.bin") || !strcmp(p, "user.empty"))
			seen++;
		else
			assert_true(strncmp(p, "user.", 5) != 0);
	}
	assert_int_equal(seen, 3);
	H_EXPECT_ERRNO(listxattr(f, buf, 3), ERANGE);

	assert_int_equal(removexattr(f, "user.empty"), 0);
	H_EXPECT_ERRNO(removexattr(f, "user.empty"), ENODATA);
	int fd = open_ok(f, O_RDONLY, 0);
	assert_int_equal(fsetxattr(fd, "user.viafd", "fd", 2, 0), 0);
	assert_int_equal(fgetxattr(fd, "user.viafd", buf, sizeof(buf)), 2);
	assert_int_equal(close(fd), 0);
}

static void xattr_user(void **state)
{
	struct h_fs *fs = *state;
	char buf[64];
	assert_int_equal(h_both(fs, work_xattr, CMP_NO_TIME), 0);
	/* The attributes live on the backing file itself. */
	assert_int_equal(getxattr(H_AT(fs->backing, "x"), "user.bin", buf, sizeof(buf)),
			 sizeof(xval));
	assert_memory_equal(buf, xval, sizeof(xval));
	assert_int_equal(getxattr(H_AT(fs->backing, "x"), "user.a", buf, sizeof(buf)), 2);
	H_EXPECT_ERRNO(getxattr(H_AT(fs->backing, "x"), "user.empty", buf, sizeof(buf)), ENODATA);
	assert_int_equal(getxattr(H_AT(fs->backing, "d"), "user.ondir", buf, sizeof(buf)), 3);
	/* And one set on the backing file shows through the view. */
	assert_int_equal(setxattr(H_AT(fs->backing, "x"), "user.behind", "b", 1, 0), 0);
	assert_int_equal(getxattr(H_AT(fs->mnt, "x"), "user.behind", buf, sizeof(buf)), 1);
}

/* ---- the backing dir changing under the view, and mmap ---- */

/* stat(path) until it succeeds, for up to 3 s: the view may cache a lookup that long. */
static int stat_eventually(const char *path, struct stat *st)
{
	for (int i = 0; i < 300; i++) {
		if (stat(path, st) == 0)
			return 0;
		if (errno != ENOENT)
			return -1;
		usleep(10000);
	}
	return -1;
}

static void backing_visible(void **state)
{
	struct h_fs *fs = *state;
	struct stat st;
	assert_int_equal(mkdir(H_AT(fs->mnt, "d"), 0755), 0);
	put(H_AT(fs->mnt, "d/old"), "old");

	put(H_AT(fs->backing, "d/new"), "made behind the view's back");
	assert_int_equal(mkdir(H_AT(fs->backing, "newdir"), 0700), 0);
	put(H_AT(fs->backing, "newdir/inner"), "inner");

	assert_int_equal(stat_eventually(H_AT(fs->mnt, "d/new"), &st), 0);
	expect_text(H_AT(fs->mnt, "d/new"), "made behind the view's back");
	assert_int_equal(stat_eventually(H_AT(fs->mnt, "newdir/inner"), &st), 0);
	expect_text(H_AT(fs->mnt, "newdir/inner"), "inner");
	/* Attributes cached before the change (the root's mtime) may lag by the attr timeout. */
	for (int i = 0; i < 300; i++) {
		if (h_tree_compare(fs->mnt, fs->backing, H_CMP_ALL | H_CMP_QUIET, NULL) == 0)
			break;
		usleep(10000);
	}
	assert_int_equal(h_tree_compare(fs->mnt, fs->backing, H_CMP_ALL, NULL), 0);
}

static void mmap_rw(void **state)
{
	struct h_fs *fs = *state;
	const size_t len = 3 * 4096 + 100;
	static char data[3 * 4096 + 100];
	h_fill(data, len, 13);
	assert_int_equal(h_write_file(H_AT(fs->mnt, "m"), data, len), 0);

	int fd = open_ok(H_AT(fs->mnt, "m"), O_RDONLY, 0);
	char *p = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
	assert_true(p != MAP_FAILED);
	assert_memory_equal(p, data, len);
	assert_int_equal(munmap(p, len), 0);
	assert_int_equal(close(fd), 0);

	fd = open_ok(H_AT(fs->mnt, "m"), O_RDWR, 0);
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(p != MAP_FAILED);
	memset(p + 4096 - 10, 'S', 20); /* across the first page boundary */
	memcpy(p + len - 5, "tail!", 5);
	memset(data + 4096 - 10, 'S', 20);
	memcpy(data + len - 5, "tail!", 5);
	assert_int_equal(msync(p, len, MS_SYNC), 0);
	assert_int_equal(munmap(p, len), 0);
	assert_int_equal(close(fd), 0);
	expect_content(H_AT(fs->backing, "m"), data, len);
	expect_content(H_AT(fs->mnt, "m"), data, len);
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_setup, h_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    T(lookup_getattr),
	    T(forget),
	    T(setattr_truncate),
	    T(setattr_chmod_chown),
	    T(setattr_utimens),
	    T(readdir_many),
	    T(statfs_sane),
	    T(access_modes),
	    T(open_flags),
	    T(read_write_offsets),
	    T(fsync_variants),
	    T(fallocate_modes),
	    T(copy_range),
	    T(seek_data_hole),
	    T(mkdir_rmdir),
	    T(unlink_files),
	    T(rename_plain),
	    T(rename_flags),
	    T(link_hard),
	    T(symlink_readlink),
	    T(mknod_special),
	    T(xattr_user),
	    T(backing_visible),
	    T(mmap_rw),
	    T(listing_carries_attributes),
	    T(unlink_files_over_tmpfs),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
