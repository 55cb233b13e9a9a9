/*
 * test_escape.c - a symlink swapped into the backing tree never lets the view reach outside it.
 *
 * A sentinel file lives next to the backing dir, outside it. One thread keeps exchanging a real
 * directory of the backing tree (at depth 1 and at depth 2) with a symlink to the sentinel's
 * directory (absolute and relative targets) or to "/", with renameat2(RENAME_EXCHANGE), so the
 * name flips atomically between the two. Meanwhile the test looks up, stats, opens, reads and
 * lists paths through the view, resolving them with openat2(RESOLVE_NO_SYMLINKS) from the mount
 * root: the kernel then follows no symlink of the view itself, so whatever it reaches is what
 * the daemon served. The invariant: the sentinel's bytes are never read, its name never listed,
 * and nothing is ever created outside. The run lasts ESCAPE_SECONDS (default 3) and prints how
 * often each side of the race was seen, so a run that never raced is visible.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cmocka.h>

#include "harness.h"

#define SENTINEL "SENTINEL: outside the backing dir"

struct swapper {
	struct h_fs *fs;
	char outside[PATH_MAX];
	atomic_bool stop;
	atomic_long swaps;
	int err; /* errno of a failed swap */
	pthread_t thread;
};

/* Exchanges rel (a real directory) with rel.lnk (a symlink) in the backing dir, twice. */
static int swap_pair(struct h_fs *fs, const char *rel)
{
	char a[PATH_MAX], b[PATH_MAX];
	h_path(a, "%s/%s", fs->backing, rel);
	h_path(b, "%s/%s.lnk", fs->backing, rel);
	for (int i = 0; i < 2; i++) {
		if (renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) != 0)
			return errno;
	}
	return 0;
}

static void *swap_run(void *arg)
{
	struct swapper *s = arg;
	static const char *const pairs[] = {"d", "p/q", "r", "t"};
	for (unsigned k = 0; !atomic_load(&s->stop); k++) {
		int e = swap_pair(s->fs, pairs[k % 4]);
		if (e != 0) {
			s->err = e;
			break;
		}
		atomic_fetch_add(&s->swaps, 1);
	}
	return NULL;
}

/* openat2 beneath root, following no symlink at all. */
static int open_nofollow(int root, const char *rel, int flags)
{
	struct open_how how = {.flags = (uint64_t)(flags | O_CLOEXEC),
			       .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS};
	long fd = syscall(SYS_openat2, root, rel, &how, sizeof(how));
	return fd < 0 ? -errno : (int)fd;
}

struct tally {
	long inside, refused, attempts;
};

/* Opens and reads rel through the view: must never be the sentinel. Returns -1 on an escape. */
static int probe_read(int root, const char *rel, struct tally *t)
{
	char buf[128];
	t->attempts++;
	int fd = open_nofollow(root, rel, O_RDONLY);
	if (fd < 0) {
		t->refused++;
		return 0;
	}
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0) {
		t->refused++;
		return 0;
	}
	buf[n] = '\0';
	if (strstr(buf, "SENTINEL") != NULL) {
		fprintf(stderr, "ESCAPE: read the sentinel through the view at %s\n", rel);
		return -1;
	}
	t->inside++;
	return 0;
}

/* Lists rel through the view: must never show the sentinel's name. */
static int probe_list(int root, const char *rel, struct tally *t)
{
	t->attempts++;
	int fd = open_nofollow(root, rel, O_RDONLY | O_DIRECTORY);
	if (fd < 0) {
		t->refused++;
		return 0;
	}
	DIR *d = fdopendir(fd);
	if (d == NULL) {
		close(fd);
		t->refused++;
		return 0;
	}
	int rc = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, "secret") == 0 || strcmp(e->d_name, "tmp") == 0 ||
		    strcmp(e->d_name, "proc") == 0) {
			fprintf(stderr, "ESCAPE: listed '%s' in %s through the view\n", e->d_name,
				rel);
			rc = -1;
		}
	}
	closedir(d);
	t->inside++;
	return rc;
}

/* Creates rel through the view (and removes it): must never land outside. */
static int probe_create(int root, const char *rel, struct tally *t)
{
	t->attempts++;
	int fd = open_nofollow(root, rel, O_WRONLY | O_CREAT | O_TRUNC);
	if (fd < 0) {
		t->refused++;
		return 0;
	}
	if (write(fd, "in", 2) == 2)
		t->inside++;
	else
		t->refused++;
	close(fd);
	unlinkat(root, rel, 0); /* may fail: the name may have moved meanwhile */
	return 0;
}

static void make_tree(struct h_fs *fs, const char *outside)
{
	char rel[PATH_MAX];
	assert_int_equal(mkdir(outside, 0755), 0);
	assert_int_equal(h_write_file(H_AT(outside, "secret"), SENTINEL, strlen(SENTINEL)), 0);
	assert_int_equal(mkdir(H_AT(fs->backing, "p"), 0755), 0);
	/* Real directories, each with an inner file, and the symlinks they swap with. */
	static const char *const dirs[] = {"d", "p/q", "r", "t"};
	/* absolute, relative (to the sentinel's dir), and the root of the machine */
	h_path(rel, "../%s", strrchr(outside, '/') + 1);
	const char *targets[] = {outside, "../../outside", rel, "/"};
	for (int i = 0; i < 4; i++) {
		assert_int_equal(mkdir(H_AT(fs->backing, dirs[i]), 0755), 0);
		assert_int_equal(
		    h_write_file(H_AT(H_AT(fs->backing, dirs[i]), "inner"), "inner", 5), 0);
		char lnk[PATH_MAX];
		h_path(lnk, "%s/%s.lnk", fs->backing, dirs[i]);
		assert_int_equal(symlink(targets[i], lnk), 0);
	}
}

static void test_symlink_swap(void **state)
{
	struct h_fs *fs = h_fs_new();
	assert_non_null(fs);
	*state = fs;
	char outside[PATH_MAX];
	h_path(outside, "%s/outside", fs->root);
	make_tree(fs, outside);
	assert_int_equal(h_fs_mount(fs, NULL), 0);

	const char *env = getenv("ESCAPE_SECONDS");
	int seconds = env != NULL && atoi(env) > 0 ? atoi(env) : 3;
	struct swapper s = {.fs = fs};
	h_path(s.outside, "%s", outside);
	assert_int_equal(pthread_create(&s.thread, NULL, swap_run, &s), 0);

	int root = open(fs->mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(root >= 0);
	/* Paths that would reach the sentinel if the daemon followed a swapped-in symlink: the
	 * "/" link is probed through the test's own path to the sentinel. */
	char via_root[PATH_MAX];
	h_path(via_root, "t%s/secret", outside);
	const char *reads[] = {"d/secret", "p/q/secret", "r/secret", via_root,
			       "d/inner",  "p/q/inner",	 "r/inner",  "t/inner"};
	const char *lists[] = {"d", "p/q", "r", "t"};
	const char *creates[] = {"d/new", "p/q/new", "r/new"};
	struct tally t = {0};
	int escapes = 0;
	int64_t end = h_clock_ms() + seconds * 1000;
	while (h_clock_ms() < end && escapes == 0) {
		for (int i = 0; i < 8; i++)
			escapes += probe_read(root, reads[i], &t) != 0;
		for (int i = 0; i < 4; i++)
			escapes += probe_list(root, lists[i], &t) != 0;
		for (int i = 0; i < 3; i++)
			escapes += probe_create(root, creates[i], &t) != 0;
		/* stat through the view, resolved without following any symlink on this side:
		 * a plain fstatat would follow "d" itself when it is (rightly) shown as the
		 * symlink the swapper made, and reach the sentinel through the host, not the
		 * daemon. */
		struct stat st;
		int sfd = open_nofollow(root, "d/secret", O_PATH | O_NOFOLLOW);
		if (sfd >= 0) {
			if (fstat(sfd, &st) == 0 && st.st_size == (off_t)strlen(SENTINEL))
				escapes++,
				    fprintf(stderr, "ESCAPE: stat saw the sentinel's size\n");
			close(sfd);
		}
	}
	atomic_store(&s.stop, true);
	assert_int_equal(pthread_join(s.thread, NULL), 0);
	close(root);
	fprintf(stderr,
		"symlink swaps: %ld; probes through the view: %ld (%ld inside, %ld refused); "
		"escapes: %d\n",
		atomic_load(&s.swaps), t.attempts, t.inside, t.refused, escapes);
	assert_int_equal(s.err, 0);
	assert_int_equal(escapes, 0);
	/* Nothing was created outside, and the sentinel is as it was. */
	char buf[128];
	assert_int_equal(h_read_file(H_AT(outside, "secret"), buf, sizeof(buf)),
			 (ssize_t)strlen(SENTINEL));
	DIR *d = opendir(outside);
	assert_non_null(d);
	struct dirent *e;
	int entries = 0;
	while ((e = readdir(d)) != NULL)
		entries += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
	closedir(d);
	assert_int_equal(entries, 1);
	/* The race was real: both sides were seen. */
	assert_true(t.inside > 0 && t.refused > 0);
}

static int teardown(void **state)
{
	int rc = h_fs_free(*state);
	*state = NULL;
	return rc;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(test_symlink_swap, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
