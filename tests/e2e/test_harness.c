/*
 * test_harness.c - the harness checked against itself, with no mount: every e2e verdict rests on
 * h_tree_compare seeing differences and on h_fs_mount noticing a daemon that dies, so each kind
 * of difference is planted once and must be caught.
 */
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

struct pair {
	struct h_fs *fs;
	char a[PATH_MAX], b[PATH_MAX];
};

/* Tree a with one of everything, and b = cp -a of a. */
static int setup(void **state)
{
	struct pair *p = calloc(1, sizeof(*p));
	if (p == NULL || (p->fs = h_fs_new()) == NULL)
		return -1;
	h_path(p->a, "%s/a", p->fs->plain);
	h_path(p->b, "%s/b", p->fs->plain);
	int rc =
	    h_run("set -e; mkdir -p %1$s/d/e; printf hello > %1$s/f; printf world > %1$s/d/g; "
		  "ln %1$s/f %1$s/d/e/hard; ln -s f %1$s/sym; mkfifo %1$s/fifo; "
		  "printf same > %1$s/s1; printf same > %1$s/s2; setfattr -n user.k -v v %1$s/d/g; "
		  "cp -a %1$s %2$s",
		  p->a, p->b);
	*state = p;
	return rc == 0 ? 0 : -1;
}

static int teardown(void **state)
{
	struct pair *p = *state;
	int rc = h_fs_free(p->fs);
	free(p);
	return rc;
}

/* Applies a change to b, requires compare to catch it (and not before), then rebuilds b. */
static void planted(struct pair *p, const char *change, unsigned flags)
{
	assert_int_equal(h_tree_compare(p->a, p->b, flags, NULL), 0);
	assert_int_equal(h_run("set -e; cd %s; %s", p->b, change), 0);
	assert_int_equal(h_tree_compare(p->a, p->b, flags, NULL), -1);
	assert_int_equal(h_run("rm -rf %s && cp -a %s %s", p->b, p->a, p->b), 0);
}

static void compare_catches_each_difference(void **state)
{
	struct pair *p = *state;
	planted(p, "printf jello > f", 0);			/* content, same size */
	planted(p, "printf x >> d/g", 0);			/* size */
	planted(p, "touch d/new", 0);				/* extra entry */
	planted(p, "rm d/g", 0);				/* missing entry */
	planted(p, "rm fifo; mkdir fifo", 0);			/* type */
	planted(p, "ln -sf d sym", 0);				/* symlink target */
	planted(p, "chmod 600 d/g", H_CMP_MODE);		/* mode */
	planted(p, "chown 1:1 d/g", H_CMP_OWNER);		/* owner */
	planted(p, "touch -d @1.000000001 d/g", H_CMP_MTIME);	/* mtime */
	planted(p, "touch -m -d @1.5 d", H_CMP_MTIME);		/* directory mtime */
	planted(p, "setfattr -n user.k -v w d/g", H_CMP_XATTR); /* xattr value */
	planted(p, "setfattr -x user.k d/g", H_CMP_XATTR);	/* xattr gone */
	planted(p, "setfattr -n user.k -v v d", H_CMP_XATTR);	/* xattr added on a dir */
	planted(p, "cp f f2 && mv f2 d/e/hard", H_CMP_LINKS);	/* link broken, content kept */
	planted(p, "ln -f s1 s2", H_CMP_LINKS);			/* new link, same content */
	planted(p, "chmod 700 .", H_CMP_MODE | H_CMP_ROOT);	/* the top directory itself */
}

static void compare_respects_flags(void **state)
{
	struct pair *p = *state;
	assert_int_equal(h_run("set -e; cd %s; chmod 600 d/g; chown 1:1 f; touch d/e/hard; "
			       "setfattr -n user.k -v w d/g; chmod 700 .; mkdir .git",
			       p->b),
			 0);
	assert_int_equal(h_tree_compare(p->a, p->b, 0, ".git"), 0);
	assert_int_equal(h_tree_compare(p->a, p->b, 0, NULL), -1);
	assert_int_equal(h_tree_compare(p->a, p->b, H_CMP_QUIET, NULL), -1);
	assert_int_equal(h_tree_compare(p->a, p->b, H_CMP_MODE, ".git"), -1);
}

static void run_and_read_report_failure(void **state)
{
	struct pair *p = *state;
	char buf[8];
	assert_int_equal(h_run("exit 3"), 3);
	assert_int_equal(h_run("kill -9 $$"), 128 + 9);
	assert_int_equal(h_read_file(H_AT(p->a, "f"), buf, 4), -EFBIG);
	assert_int_equal(h_read_file(H_AT(p->a, "f"), buf, 0), -EFBIG);
	assert_int_equal(h_read_file(H_AT(p->a, "none"), buf, sizeof(buf)), -ENOENT);
	assert_int_equal(h_read_file(H_AT(p->a, "d/g"), buf, 5), 5);
	assert_memory_equal(buf, "world", 5);
}

static void mount_notices_a_dead_daemon(void **state)
{
	struct pair *p = *state;
	const char *saved = getenv("THROTTLEFS_BIN_OVERRIDE");
	char *keep = saved != NULL ? strdup(saved) : NULL;
	assert_int_equal(setenv("THROTTLEFS_BIN_OVERRIDE", "/bin/false", 1), 0);
	int rc = h_fs_mount(p->fs, NULL);
	if (keep != NULL)
		assert_int_equal(setenv("THROTTLEFS_BIN_OVERRIDE", keep, 1), 0);
	else
		assert_int_equal(unsetenv("THROTTLEFS_BIN_OVERRIDE"), 0);
	free(keep);
	assert_int_equal(rc, -1);
	assert_int_equal(p->fs->pid, 0);
	assert_false(h_is_mounted(p->fs->mnt));
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    T(compare_catches_each_difference),
	    T(compare_respects_flags),
	    T(run_and_read_report_failure),
	    T(mount_notices_a_dead_daemon),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
