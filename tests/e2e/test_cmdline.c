/*
 * test_cmdline.c - throttlefs refuses a bad command line before mounting anything.
 *
 * The contract: exit status 2, exactly one line on stderr naming the problem, and no mount left
 * anywhere below the test's temp dir. Each case runs the daemon in the foreground; should it
 * mount by mistake, the test fails and cleans up (lazy unmount, then signals).
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "harness.h"

/* Mount points below root in /proc/mounts; lazily unmounts them when cleanup is set. */
static int mounts_below(const char *root, bool cleanup)
{
	char line[3 * PATH_MAX], mp[PATH_MAX];
	int n = 0;
	FILE *f = fopen("/proc/mounts", "re");
	assert_non_null(f);
	while (fgets(line, sizeof(line), f) != NULL) {
		size_t len = strlen(root);
		if (sscanf(line, "%*s %4095s", mp) != 1 || strncmp(mp, root, len) != 0 ||
		    (mp[len] != '\0' && mp[len] != '/'))
			continue;
		if (cleanup) {
			fprintf(stderr, "mounted below the test dir: %s", line);
			h_run("fusermount3 -uz %s", mp);
		}
		n++;
	}
	fclose(f);
	return n;
}

/* Runs the daemon with args; requires status 2, one stderr line, and no mount. */
static void expect_refusal(struct h_fs *fs, const char *const *args)
{
	int st = 0;
	pid_t pid = h_daemon_spawn(args, fs->log);
	assert_true(pid > 0);
	/* Up to 10 s to give up, but a mount appearing is a failure at once. */
	bool exited = false;
	for (int i = 0; i < 200 && !exited; i++) {
		exited = h_wait_pid(pid, 50, &st) == 0;
		if (!exited && mounts_below(fs->root, false) > 0)
			break;
	}
	if (!exited) {
		mounts_below(fs->root, true);
		kill(pid, SIGTERM);
		if (h_wait_pid(pid, 5000, &st) != 0) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
		}
		fail_msg("the daemon accepted a bad command line (mounted or kept running)");
	}
	int stray = mounts_below(fs->root, true);

	char log[4096];
	ssize_t n = h_read_file(fs->log, log, sizeof(log) - 1);
	assert_true(n >= 0);
	log[n] = '\0';
	fprintf(stderr, "daemon said: %s", log);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 2);
	assert_int_equal(stray, 0);
	/* Exactly one line: non-empty, ending in its only newline. */
	assert_true(n > 1);
	assert_int_equal(log[n - 1], '\n');
	assert_ptr_equal(strchr(log, '\n'), log + n - 1);
}

static int setup(void **state)
{
	struct h_fs *fs = h_fs_new();
	if (fs == NULL)
		return -1;
	*state = fs;
	return 0;
}

static void missing_backing(void **state)
{
	struct h_fs *fs = *state;
	expect_refusal(fs, (const char *[]){"-f", H_AT(fs->root, "nothing"), fs->mnt, NULL});
}

static void backing_is_file(void **state)
{
	struct h_fs *fs = *state;
	assert_int_equal(h_write_file(H_AT(fs->root, "file"), "x", 1), 0);
	expect_refusal(fs, (const char *[]){"-f", H_AT(fs->root, "file"), fs->mnt, NULL});
}

static void missing_mountpoint(void **state)
{
	struct h_fs *fs = *state;
	expect_refusal(fs, (const char *[]){"-f", fs->backing, H_AT(fs->root, "nothing"), NULL});
}

static void mountpoint_is_backing(void **state)
{
	struct h_fs *fs = *state;
	expect_refusal(fs, (const char *[]){"-f", fs->backing, fs->backing, NULL});
}

static void mountpoint_inside_backing(void **state)
{
	struct h_fs *fs = *state;
	assert_int_equal(mkdir(H_AT(fs->backing, "inner"), 0755), 0);
	expect_refusal(fs, (const char *[]){"-f", fs->backing, H_AT(fs->backing, "inner"), NULL});
}

static void unknown_option(void **state)
{
	struct h_fs *fs = *state;
	expect_refusal(fs, (const char *[]){"-f", "-o", "bogus=1", fs->backing, fs->mnt, NULL});
}

static void malformed_size(void **state)
{
	struct h_fs *fs = *state;
	expect_refusal(fs, (const char *[]){"-f", "-o", "buffer=12Q", fs->backing, fs->mnt, NULL});
}

static void rate_out_of_range(void **state)
{
	struct h_fs *fs = *state;
	expect_refusal(fs, (const char *[]){"-f", "-o", "rate=-5", fs->backing, fs->mnt, NULL});
}

/*
 * Every row of fs/options.c's table, with the bad values it must refuse. A size or rate row gets
 * the same battery: malformed numbers and suffixes, a negative number, one too large for any
 * row, an empty value, no value at all, and zero where the row's minimum is above zero (a rate
 * of 0 means unlimited and is valid). The flag gets every form of "flag=value". Keep this list
 * in step with the table: a row missing here is an option whose refusals nobody checks.
 */
struct bad_row {
	const char *name;
	bool zero_refused; /* its minimum is above zero */
	bool flag;
};

static const struct bad_row bad_rows[] = {
    {"rate", false, false},	 {"file_rate", false, false},	  {"buffer", true, false},
    {"max_buffer", true, false}, {"max_semi_space", true, false}, {"max_old_space", true, false},
    {"trace_gc", false, true},	 {"keep_cache", false, true},	  {"direct_write", false, true},
};

/* Values after "name=" that no size or rate row accepts (nor the flag, which takes none). */
static const char *const bad_values[] = {
    "12Q",
    "abc",
    "1.5M",
    "32MB",
    "4 M",
    " 4M",
    "4M ",
    "0x10",
    "-1",
    "-0",
    "+5",
    "99999999999T",
    "99999999999999999999",
    "18446744073709551616",
    "",
};

/* Spawns the daemon with "-f -o opt BACKING MNT" and expects the refusal. */
static void refuse_opt(struct h_fs *fs, const char *opt)
{
	fprintf(stderr, "case: -o '%s'\n", opt);
	expect_refusal(fs, (const char *[]){"-f", "-o", opt, fs->backing, fs->mnt, NULL});
}

static void every_option_refuses_bad_values(void **state)
{
	struct h_fs *fs = *state;
	char opt[128];
	int cases = 0;
	for (size_t i = 0; i < sizeof(bad_rows) / sizeof(bad_rows[0]); i++) {
		const struct bad_row *r = &bad_rows[i];
		for (size_t v = 0; v < sizeof(bad_values) / sizeof(bad_values[0]); v++) {
			snprintf(opt, sizeof(opt), "%s=%s", r->name, bad_values[v]);
			refuse_opt(fs, opt);
			cases++;
		}
		if (r->flag) {
			/* A flag given any value, even the ones that look like "on". */
			static const char *const on[] = {"1", "0", "true", "yes"};
			for (size_t v = 0; v < sizeof(on) / sizeof(on[0]); v++) {
				snprintf(opt, sizeof(opt), "%s=%s", r->name, on[v]);
				refuse_opt(fs, opt);
				cases++;
			}
			continue;
		}
		refuse_opt(fs, r->name); /* a size with no value at all */
		cases++;
		if (r->zero_refused) {
			snprintf(opt, sizeof(opt), "%s=0", r->name);
			refuse_opt(fs, opt);
			cases++;
		}
	}
	fprintf(stderr, "%d bad option values refused\n", cases);
}

/* Just above each row's maximum (rates: 1T; the largest sizes: 64G, semi-space 4G). */
static void every_option_refuses_one_past_max(void **state)
{
	struct h_fs *fs = *state;
	static const char *const over[] = {
	    "rate=1099511627777",     "file_rate=1099511627777",   "buffer=68719476737",
	    "max_buffer=68719476737", "max_semi_space=4294967297", "max_old_space=68719476737",
	};
	for (size_t i = 0; i < sizeof(over) / sizeof(over[0]); i++)
		refuse_opt(fs, over[i]);
}

static void unknown_options(void **state)
{
	struct h_fs *fs = *state;
	static const char *const unknown[] = {
	    "bogus",	 "Rate=1M", "rates=1M",	       "rate_=1M", "buffer_size=4M",
	    "trace_gcx", "=5",	    "rate=1M,bogus=2", /* a good option does not excuse a bad one
							  after it */
	};
	for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++)
		refuse_opt(fs, unknown[i]);
}

/* A bad value among good ones, and the same option twice with the last one bad. */
static void bad_value_among_good_ones(void **state)
{
	struct h_fs *fs = *state;
	refuse_opt(fs, "rate=1M,buffer=64K,max_buffer=0");
	refuse_opt(fs, "rate=1M,rate=-1");
	refuse_opt(fs, "buffer=8M,max_buffer=4M"); /* buffer above max_buffer */
	refuse_opt(fs, "direct_write,keep_cache"); /* contradict each other */
	expect_refusal(fs, (const char *[]){"-f", "-o", "rate=1M", "-o", "file_rate=x", fs->backing,
					    fs->mnt, NULL});
}

static int teardown(void **state)
{
	int rc = h_fs_free(*state);
	*state = NULL;
	return rc;
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    T(missing_backing),
	    T(backing_is_file),
	    T(missing_mountpoint),
	    T(mountpoint_is_backing),
	    T(mountpoint_inside_backing),
	    T(unknown_option),
	    T(malformed_size),
	    T(rate_out_of_range),
	    T(every_option_refuses_bad_values),
	    T(every_option_refuses_one_past_max),
	    T(unknown_options),
	    T(bad_value_among_good_ones),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
