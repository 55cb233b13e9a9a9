/*
 * test_tools.c - the programs people actually point at a filesystem: cp -a, rsync -aHX, tar -x
 * and git clone, each writing a copy of one source tree into the view.
 *
 * The source tree (built on plain/, the native filesystem) holds every kind of object the view
 * must carry: nested and empty directories, empty, small, large and sparse files, hard-link
 * groups across directories, relative, absolute and dangling symlinks, a fifo, user.* xattrs on
 * files and directories, odd modes and owners, and nanosecond mtimes. Each tool first copies it
 * within plain/ - proving the tool itself preserves what we compare - and then into the view;
 * the copy in the view and, after fsync, the one in the backing dir must equal the source.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <cmocka.h>

#include "harness.h"

static void put(const char *path, const char *text)
{
	assert_int_equal(h_write_file(path, text, strlen(text)), 0);
}

static long mtime_serial;

static int set_mtime(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st, (void)type, (void)ftw;
	mtime_serial++;
	const struct timespec t = {1500000000 + mtime_serial * 1000, 123456789 + mtime_serial};
	return utimensat(AT_FDCWD, path, (const struct timespec[]){t, t}, AT_SYMLINK_NOFOLLOW);
}

/* Builds the source tree at src. Mtimes are set last, deepest first, so nothing disturbs them. */
static void make_source(const char *src)
{
	static char big[3 << 20];
	static const char *dirs[] = {"a", "a/b", "a/b/c", "a/b/c/d", "empty", "private", "many"};

	assert_int_equal(mkdir(src, 0755), 0);
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++)
		assert_int_equal(mkdir(H_AT(src, dirs[i]), 0755), 0);
	assert_int_equal(chmod(H_AT(src, "private"), 0700), 0);

	put(H_AT(src, "empty-file"), "");
	put(H_AT(src, "small"), "small file\n");
	put(H_AT(src, "a/b/c/d/deep"), "deep\n");
	h_fill(big, sizeof(big), 21);
	assert_int_equal(h_write_file(H_AT(src, "big"), big, sizeof(big)), 0);
	int fd = open(H_AT(src, "sparse"), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, "start", 5, 0), 5);
	assert_int_equal(pwrite(fd, "end", 3, 5 << 20), 3);
	assert_int_equal(close(fd), 0);
	for (int i = 0; i < 60; i++) {
		char text[32];
		snprintf(text, sizeof(text), "file %d\n", i);
		put(h_path((char[PATH_MAX]){0}, "%s/many/f%02d", src, i), text);
	}

	/* Modes and owners. */
	put(H_AT(src, "exec"), "#!/bin/sh\n");
	assert_int_equal(chmod(H_AT(src, "exec"), 0751), 0);
	put(H_AT(src, "readonly"), "ro\n");
	assert_int_equal(chmod(H_AT(src, "readonly"), 0444), 0);
	put(H_AT(src, "private/secret"), "s\n");
	assert_int_equal(chmod(H_AT(src, "private/secret"), 0600), 0);
	assert_int_equal(chown(H_AT(src, "private/secret"), 1000, 1000), 0);
	assert_int_equal(chown(H_AT(src, "private"), 2000, 3000), 0);

	/* Hard links: a pair across directories and a group of three. */
	put(H_AT(src, "a/h1"), "linked pair\n");
	assert_int_equal(link(H_AT(src, "a/h1"), H_AT(src, "a/b/h2")), 0);
	put(H_AT(src, "t1"), "linked three\n");
	assert_int_equal(link(H_AT(src, "t1"), H_AT(src, "many/t2")), 0);
	assert_int_equal(link(H_AT(src, "t1"), H_AT(src, "a/b/c/t3")), 0);

	/* Symlinks, a fifo. */
	assert_int_equal(symlink("small", H_AT(src, "rel-link")), 0);
	assert_int_equal(symlink("../../small", H_AT(src, "a/b/up-link")), 0);
	assert_int_equal(symlink("/etc/hostname", H_AT(src, "abs-link")), 0);
	assert_int_equal(symlink("does-not-exist", H_AT(src, "dangling")), 0);
	assert_int_equal(symlink("a/b", H_AT(src, "dir-link")), 0);
	assert_int_equal(mkfifo(H_AT(src, "fifo"), 0640), 0);

	/* Extended attributes on files and directories. */
	assert_int_equal(setxattr(H_AT(src, "small"), "user.colour", "blue", 4, 0), 0);
	assert_int_equal(setxattr(H_AT(src, "small"), "user.bin", "\0\1\2", 3, 0), 0);
	assert_int_equal(setxattr(H_AT(src, "a/h1"), "user.linked", "yes", 3, 0), 0);
	assert_int_equal(setxattr(H_AT(src, "a"), "user.dir", "d", 1, 0), 0);

	/* Distinct mtimes with nanoseconds on everything, symlinks included: children before
	 * their directory, so that nothing disturbs a time once set. */
	mtime_serial = 0;
	assert_int_equal(nftw(src, set_mtime, 16, FTW_DEPTH | FTW_PHYS), 0);
}

/*
 * Runs cmd (a printf format taking the source and the destination, in that order, as %1$s and
 * %2$s) into plain/NAME and mnt/NAME, and requires both copies - and the backing one - to equal
 * the source under flags.
 */
static void copy_both(struct h_fs *fs, const char *name, const char *cmd, unsigned flags)
{
	char src[PATH_MAX], dst[PATH_MAX], shell[2 * PATH_MAX + 256];
	h_path(src, "%s/src", fs->plain);
	make_source(src);
	const char *roots[] = {fs->plain, fs->mnt};
	for (int r = 0; r < 2; r++) {
		h_path(dst, "%s/%s", roots[r], name);
		snprintf(shell, sizeof(shell), cmd, src, dst);
		assert_int_equal(h_run("%s", shell), 0);
		if (h_tree_compare(src, dst, flags, NULL) != 0)
			fail_msg("%s: copy in %s differs from the source", name,
				 r == 0 ? "plain/ (the tool itself)" : "the view");
	}
	assert_int_equal(h_sync_tree(fs->mnt), 0);
	assert_int_equal(h_tree_compare(src, H_AT(fs->backing, name), flags, NULL), 0);
	assert_int_equal(
	    h_tree_compare(H_AT(fs->mnt, name), H_AT(fs->backing, name), H_CMP_ALL, NULL), 0);
}

static void cp_a(void **state)
{
	copy_both(*state, "cp", "cp -a %1$s %2$s", H_CMP_ALL);
}

static void rsync_ahx(void **state)
{
	copy_both(*state, "rsync", "rsync -aHX --specials %1$s/ %2$s/", H_CMP_ALL);
}

static void tar_x(void **state)
{
	/* Archive to a file first (pax keeps nanoseconds), then extract as root keeping owners. */
	copy_both(*state, "tar",
		  "set -e; tar --format=posix --xattrs --xattrs-include='user.*' -C %1$s -cf "
		  "%1$s.tar .; mkdir %2$s; tar --xattrs --xattrs-include='user.*' "
		  "--numeric-owner -xpf %1$s.tar -C %2$s",
		  H_CMP_ALL);
}

static void git_clone(void **state)
{
	struct h_fs *fs = *state;
	const char *git =
	    "git -c safe.directory='*' -c user.name=e2e -c user.email=e2e@example.org "
	    "-c init.defaultBranch=main -c core.fsync=all";
	char repo[PATH_MAX];
	h_path(repo, "%s/repo", fs->plain);

	/* A small repository with history, an executable, a symlink and a subdirectory. */
	assert_int_equal(mkdir(repo, 0755), 0);
	assert_int_equal(h_run("set -e; cd %s; %s init -q .; mkdir -p src/sub; "
			       "printf 'one\\n' > README; printf 'int x;\\n' > src/x.c; "
			       "printf '#!/bin/sh\\necho hi\\n' > run.sh; chmod 755 run.sh; "
			       "ln -s src/x.c link; seq 1 20000 > src/sub/numbers; "
			       "%s add -A; %s commit -qm first; printf 'two\\n' >> README; "
			       "git rm -q src/x.c; %s commit -qam second",
			       repo, git, git, git, git),
			 0);

	const char *roots[] = {fs->plain, fs->mnt};
	for (int r = 0; r < 2; r++) {
		assert_int_equal(h_run("cd %s && %s clone -q file://%s clone", roots[r], git, repo),
				 0);
		assert_int_equal(
		    h_run("cd %s/clone && %s fsck --strict --no-progress && "
			  "test -z \"$(%s status --porcelain)\" && "
			  "test \"$(%s rev-parse HEAD)\" = \"$(%s -C %s rev-parse HEAD)\"",
			  roots[r], git, git, git, git, repo),
		    0);
	}
	/* The checked-out trees agree (mtimes are checkout times, .git holds stat data). */
	assert_int_equal(h_tree_compare(H_AT(fs->plain, "clone"), H_AT(fs->mnt, "clone"),
					H_CMP_MODE | H_CMP_OWNER | H_CMP_LINKS | H_CMP_XATTR,
					".git"),
			 0);
	assert_int_equal(h_sync_tree(fs->mnt), 0);
	assert_int_equal(
	    h_tree_compare(H_AT(fs->mnt, "clone"), H_AT(fs->backing, "clone"), H_CMP_ALL, NULL), 0);
	/* git still trusts its index in the backing dir: nothing it stat()ed has changed. */
	assert_int_equal(h_run("cd %s/clone && %s fsck --no-progress && "
			       "test -z \"$(%s status --porcelain)\"",
			       fs->backing, git, git),
			 0);
}

#define T(f) cmocka_unit_test_setup_teardown(f, h_setup, h_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {T(cp_a), T(rsync_ahx), T(tar_x), T(git_clone)};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
