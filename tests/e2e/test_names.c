/*
 * test_names.c - bad input at the edges: long names, long paths, deep trees, odd bytes in
 * names, and values for the writable virtual attributes that must be refused.
 *
 * Names and paths run on the view and on a plain directory alike (h_both), so what the view
 * must do is what the kernel does natively: 255-byte names pass, 256 bytes is ENAMETOOLONG,
 * paths near PATH_MAX (reached with *at calls relative to a directory fd) and trees 200 levels
 * deep work, find walks them and rm -r removes them. A name is bytes, not text: newline, tab,
 * UTF-8, invalid UTF-8 and spaces pass through, and readdir returns them exactly. While such a
 * file is being written under rate=1M, user.throttlefs.transfers must stay valid JSON (checked
 * with the strict reader lib/jsonr) naming the file. The virtual attribute values refused here
 * complement test_vattr: oversized, with an embedded NUL, and number syntaxes the size parser
 * must not take; a refused value changes nothing.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <cmocka.h>

#include "harness.h"
#include "jsonr.h"

static int setup(void **state)
{
	return h_setup(state);
}

static int teardown(void **state)
{
	return h_teardown(state);
}

/* A name of len bytes of c (len < 512). */
static char *name_of(char *buf, size_t len, char c)
{
	memset(buf, c, len);
	buf[len] = '\0';
	return buf;
}

/* Whether dir lists name (exact bytes). */
static bool lists(const char *dir, const char *name)
{
	DIR *d = opendir(dir);
	assert_non_null(d);
	bool found = false;
	struct dirent *e;
	while ((e = readdir(d)) != NULL)
		found |= strcmp(e->d_name, name) == 0;
	closedir(d);
	return found;
}

static void long_names_work(const char *dir)
{
	char a[300], b[300], c[300];
	name_of(a, 255, 'a');
	name_of(b, 255, 'b');
	name_of(c, 256, 'c');
	const char *pa = H_AT(dir, a), *pb = H_AT(dir, b);
	assert_int_equal(h_write_file(pa, "long", 4), 0);
	struct stat st;
	assert_int_equal(stat(pa, &st), 0);
	assert_int_equal(st.st_size, 4);
	assert_true(lists(dir, a));
	assert_int_equal(rename(pa, pb), 0);
	assert_true(lists(dir, b) && !lists(dir, a));
	assert_int_equal(mkdir(pa, 0755), 0); /* a 255-byte directory name too */
	assert_int_equal(h_write_file(H_AT(pa, b), "in", 2), 0);
	/* 256 bytes: ENAMETOOLONG for every call that takes the name. */
	const char *pc = H_AT(dir, c);
	H_EXPECT_ERRNO(open(pc, O_WRONLY | O_CREAT, 0644), ENAMETOOLONG);
	H_EXPECT_ERRNO(mkdir(pc, 0755), ENAMETOOLONG);
	H_EXPECT_ERRNO(stat(pc, &st), ENAMETOOLONG);
	H_EXPECT_ERRNO(rename(pb, pc), ENAMETOOLONG);
	H_EXPECT_ERRNO(unlink(pc), ENAMETOOLONG);
	H_EXPECT_ERRNO(symlink("x", pc), ENAMETOOLONG);
	assert_int_equal(h_write_file(H_AT(dir, "keep"), "k", 1), 0);
	/* Created, renamed, then some removed: what is left is compared by h_both. */
	assert_int_equal(unlink(H_AT(pa, b)), 0);
	assert_int_equal(rmdir(pa), 0);
	assert_int_equal(h_write_file(pa, "again", 5), 0);
}

static void long_names(void **state)
{
	assert_int_equal(h_both(*state, long_names_work, 0), 0);
}

/* Builds a chain of 250-byte directories below dir until the relative path reaches ~4000
 * bytes, with mkdirat/openat from the previous level's fd, and a file at the bottom. Then find
 * walks it and rm -r removes it; a copy that stays is compared by h_both. */
static void deep_path_build(const char *dir, const char *top)
{
	char comp[256];
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(fd >= 0);
	size_t total = 0;
	for (int i = 0; total + 251 < 4000; i++) {
		if (i == 0)
			snprintf(comp, sizeof(comp), "%s", top);
		else
			name_of(comp, 250, (char)('a' + i % 26));
		assert_int_equal(mkdirat(fd, comp, 0755), 0);
		int next = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		assert_true(next >= 0);
		close(fd);
		fd = next;
		total += strlen(comp) + 1;
	}
	int f = openat(fd, "bottom", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	assert_true(f >= 0);
	assert_int_equal(write(f, "deep", 4), 4);
	assert_int_equal(close(f), 0);
	struct stat st;
	assert_int_equal(fstatat(fd, "bottom", &st, 0), 0);
	assert_int_equal(st.st_size, 4);
	close(fd);
	fprintf(stderr, "deep path below %s: %zu bytes\n", dir, total + 6);
}

static void deep_path_work(const char *dir)
{
	deep_path_build(dir, "gone");
	deep_path_build(dir, "kept");
	/* find prints a path ~4000 bytes long below the mount: the deepest file must be found. */
	assert_int_equal(h_run("test \"$(cd '%s' && find gone -name bottom | wc -l)\" = 1", dir),
			 0);
	assert_int_equal(h_run("cd '%s' && rm -r gone", dir), 0);
	assert_false(lists(dir, "gone"));
}

static void deep_path(void **state)
{
	assert_int_equal(h_both(*state, deep_path_work, 0), 0);
}

static void deep_tree_build(const char *dir, const char *top, int levels)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(fd >= 0);
	for (int i = 0; i < levels; i++) {
		const char *comp = i == 0 ? top : "d";
		assert_int_equal(mkdirat(fd, comp, 0755), 0);
		int next = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		assert_true(next >= 0);
		close(fd);
		fd = next;
	}
	int f = openat(fd, "leaf", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	assert_true(f >= 0);
	assert_int_equal(close(f), 0);
	close(fd);
}

static void deep_tree_work(const char *dir)
{
	deep_tree_build(dir, "gone", 200);
	deep_tree_build(dir, "kept", 200);
	/* 200 directories and the leaf. */
	assert_int_equal(h_run("test \"$(cd '%s' && find gone | wc -l)\" = 201", dir), 0);
	assert_int_equal(h_run("cd '%s' && rm -r gone", dir), 0);
	assert_false(lists(dir, "gone"));
}

static void deep_tree(void **state)
{
	assert_int_equal(h_both(*state, deep_tree_work, 0), 0);
}

static const char *const odd[] = {
    "new\nline",
    "tab\there",
    "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
    "bad\xff\xfe",
    "   ",
    " lead",
    "trail ",
    "quote\"back\\slash",
    "\x01\x1f",
    "-dash",
    "*?[glob]",
};
#define NODD (sizeof(odd) / sizeof(odd[0]))

static void odd_names_work(const char *dir)
{
	for (size_t i = 0; i < NODD; i++)
		assert_int_equal(h_write_file(H_AT(dir, odd[i]), odd[i], strlen(odd[i])), 0);
	assert_int_equal(mkdir(H_AT(dir, "dir\nwith\tthem \xff"), 0755), 0);
	assert_int_equal(rename(H_AT(dir, odd[0]), H_AT(dir, "dir\nwith\tthem \xff/moved\xfe")), 0);
	/* readdir returns every name exactly, and nothing else. */
	DIR *d = opendir(dir);
	assert_non_null(d);
	size_t seen = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		bool known = strcmp(e->d_name, "dir\nwith\tthem \xff") == 0;
		for (size_t i = 1; i < NODD; i++)
			known |= strcmp(e->d_name, odd[i]) == 0;
		if (!known)
			fail_msg("readdir of %s returned an unknown name '%s'", dir, e->d_name);
		seen++;
	}
	closedir(d);
	assert_int_equal(seen, NODD); /* NODD - 1 files and the directory */
}

static void odd_names(void **state)
{
	assert_int_equal(h_both(*state, odd_names_work, 0), 0);
}

/* Whether transfers (valid JSON, else the test fails) lists the path of name. */
static bool transfers_name(const char *mnt, const char *name)
{
	char buf[1 << 16];
	ssize_t n = getxattr(mnt, "user.throttlefs.transfers", buf, sizeof(buf));
	if (n < 0)
		fail_msg("getxattr transfers: %s", strerror(errno));
	struct jsonr *d = NULL;
	if (jsonr_parse(buf, (size_t)n, &d) != 0)
		fail_msg("transfers is not valid JSON: %.*s", (int)n, buf);
	const struct jsonr_value *act = jsonr_get(jsonr_root(d), "active");
	assert_int_equal(jsonr_type(act), JSONR_ARRAY);
	bool found = false;
	size_t nl = strlen(name);
	for (size_t i = 0; i < jsonr_len(act); i++) {
		const char *p = jsonr_string(jsonr_get(jsonr_at(act, i), "path"));
		size_t pl = p ? strlen(p) : 0;
		/* Paths are relative to the mount: "name", or "dir/name" below the root. */
		found |= p && pl >= nl && strcmp(p + pl - nl, name) == 0 &&
			 (pl == nl || p[pl - nl - 1] == '/');
	}
	jsonr_free(d);
	return found;
}

/* Names whose bytes JSON must escape (or, for invalid UTF-8, must not pass raw). */
static void odd_names_in_transfers(void **state)
{
	(void)state;
	/* Each name and the path transfers must decode to: lib/json.c writes a byte that is not
	 * valid UTF-8 as \u00XX of that byte (documented in json.h), so 0xff reads back as U+00FF.
	 */
	static const char *const names[][2] = {
	    {"new\nline \"q\" \\", "new\nline \"q\" \\"},
	    {"tab\there\x01", "tab\there\x01"},
	    {"caf\xc3\xa9 \xf0\x9f\x98\x80", "caf\xc3\xa9 \xf0\x9f\x98\x80"},
	    {"bad\xff\xfe", "bad\xc3\xbf\xc3\xbe"},
	};
	struct h_fs *fs = h_fs_new();
	assert_non_null(fs);
	if (h_fs_mount(fs, "rate=1M") != 0) {
		h_fs_free(fs);
		fail_msg("mount failed");
	}
	static char data[1536 << 10];
	h_fill(data, sizeof(data), 7);
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		const char *p = H_AT(fs->mnt, names[i][0]);
		int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		assert_true(fd >= 0);
		/* 1.5 MiB at 1 MiB/s, polled while the file is still open: an active transfer. */
		assert_int_equal(write(fd, data, sizeof(data)), (ssize_t)sizeof(data));
		bool found = transfers_name(fs->mnt, names[i][1]);
		assert_int_equal(close(fd), 0);
		static char got[sizeof(data)];
		assert_int_equal(h_read_file(p, got, sizeof(got)), (ssize_t)sizeof(data));
		assert_memory_equal(got, data, sizeof(data));
		assert_true(found);
	}
	assert_int_equal(h_fs_free(fs), 0);
}

/* Sets virtual attribute name of path to value[0..len): 0 or -errno. */
static int vset_n(const char *path, const char *name, const void *value, size_t len)
{
	char full[96];
	snprintf(full, sizeof(full), "user.throttlefs.%s", name);
	return lsetxattr(path, full, value, len, 0) == 0 ? 0 : -errno;
}

static void vget_str(const char *path, const char *name, char *buf, size_t cap)
{
	char full[96];
	snprintf(full, sizeof(full), "user.throttlefs.%s", name);
	ssize_t n = lgetxattr(path, full, buf, cap - 1);
	if (n < 0)
		fail_msg("getxattr %s of %s: %s", full, path, strerror(errno));
	buf[n] = '\0';
}

static void refused_values(void **state)
{
	struct h_fs *fs = *state;
	const char *f = H_AT(fs->mnt, "f");
	assert_int_equal(h_write_file(f, "x", 1), 0);
	assert_int_equal(vset_n(fs->mnt, "rate", "4M", 2), 0);
	assert_int_equal(vset_n(fs->mnt, "file_rate", "2M", 2), 0);
	assert_int_equal(vset_n(f, "expected", "4096", 4), 0);
	static char big[4096];
	memset(big, '9', sizeof(big));
	struct {
		const char *v;
		size_t len;
	} bad[] = {
	    {big, sizeof(big)},
	    {"5\0", 2},
	    {"\0", 1},
	    {"5\0"
	     "6",
	     3},
	    {"1e3", 3},
	    {"0x10", 4},
	    {"+5", 2},
	    {"-0", 2},
	    {"5 ", 2},
	    {"5\n\n", 3},
	    {"0.5", 3},
	    {"1/2", 3},
	    {"-1M", 3},
	    {"5M5", 3},
	    {"1KB", 3},
	    {"18446744073709551616", 20},
	    {"99999999999T", 12},
	};
	const struct {
		const char *path, *name, *expect;
	} targets[] = {{fs->mnt, "rate", "4194304"},
		       {fs->mnt, "file_rate", "2097152"},
		       {f, "expected", "4096"}};
	for (size_t t = 0; t < 3; t++) {
		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			int rc = vset_n(targets[t].path, targets[t].name, bad[i].v, bad[i].len);
			if (rc != -EINVAL)
				fail_msg("%s = value %zu (%.*s, %zu bytes): %d, not -EINVAL",
					 targets[t].name, i,
					 (int)(bad[i].len < 24 ? bad[i].len : 24), bad[i].v,
					 bad[i].len, rc);
			char now[64];
			vget_str(targets[t].path, targets[t].name, now, sizeof(now));
			if (strcmp(now, targets[t].expect) != 0)
				fail_msg("%s changed to %s after refused value %zu",
					 targets[t].name, now, i);
		}
	}
	/* config agrees with the plain names. */
	char cfg[4096];
	vget_str(fs->mnt, "config", cfg, sizeof(cfg));
	struct jsonr *d = NULL;
	assert_int_equal(jsonr_parse(cfg, strlen(cfg), &d), 0);
	uint64_t r = 0, fr = 0;
	assert_int_equal(jsonr_u64(jsonr_get(jsonr_root(d), "rate"), &r), 0);
	assert_int_equal(jsonr_u64(jsonr_get(jsonr_root(d), "file_rate"), &fr), 0);
	jsonr_free(d);
	assert_int_equal(r, 4u << 20);
	assert_int_equal(fr, 2u << 20);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    T(long_names), T(deep_path),      T(deep_tree),
	    T(odd_names),  T(refused_values), cmocka_unit_test(odd_names_in_transfers),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
