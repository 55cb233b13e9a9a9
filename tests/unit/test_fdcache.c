/* test_fdcache.c - the directory descriptor cache: hits, bounded size, LRU eviction, and that
 * no descriptor is closed while referenced or leaked after release. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>
#include <cmocka.h>

#include "fdcache.h"

static int open_fd(void)
{
	int fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
	assert_true(fd >= 0);
	return fd;
}

static int fd_is_open(int fd)
{
	return fcntl(fd, F_GETFD) != -1;
}

static void hit_after_add(void **state)
{
	(void)state;
	struct fdcache *c;
	struct fdcache_ref r, r2;
	assert_int_equal(fdcache_new(8, &c), 0);
	assert_int_equal(fdcache_get(c, 42, &r), -ENOENT);
	int fd = open_fd();
	fdcache_add(c, 42, fd, &r);
	assert_int_equal(r.fd, fd);
	fdcache_release(c, &r);
	assert_true(fd_is_open(fd)); /* cached, not closed */
	assert_int_equal(fdcache_get(c, 42, &r2), 0);
	assert_int_equal(r2.fd, fd);
	fdcache_release(c, &r2);
	struct fdcache_stats st;
	fdcache_stats(c, &st);
	assert_true(st.hits == 1 && st.misses == 1 && st.held == 1);
	fdcache_free(c);
	assert_false(fd_is_open(fd));
}

static void bounded_and_lru(void **state)
{
	(void)state;
	struct fdcache *c;
	assert_int_equal(fdcache_new(4, &c), 0); /* one set of four */
	int fds[6];
	for (int i = 0; i < 6; i++) {
		struct fdcache_ref r;
		fds[i] = open_fd();
		fdcache_add(c, (uint64_t)i, fds[i], &r);
		fdcache_release(c, &r);
		if (i == 3) { /* touch 0 so that 1 is the oldest */
			assert_int_equal(fdcache_get(c, 0, &r), 0);
			fdcache_release(c, &r);
		}
	}
	struct fdcache_stats st;
	fdcache_stats(c, &st);
	assert_int_equal(st.held, 4);
	assert_int_equal(st.evictions, 2);
	/* 1 and 2 were the least recently used; descriptor numbers get reused, so ask the
	 * cache rather than the descriptor table */
	static const int want[6] = {0, -ENOENT, -ENOENT, 0, 0, 0};
	for (int i = 0; i < 6; i++) {
		struct fdcache_ref r;
		assert_int_equal(fdcache_get(c, (uint64_t)i, &r), want[i]);
		if (want[i] == 0) {
			assert_int_equal(r.fd, fds[i]);
			fdcache_release(c, &r);
		}
	}
	fdcache_free(c);
}

static void in_use_is_never_closed(void **state)
{
	(void)state;
	struct fdcache *c;
	assert_int_equal(fdcache_new(4, &c), 0);
	struct fdcache_ref held[4], extra;
	int fds[4];
	for (int i = 0; i < 4; i++) {
		fds[i] = open_fd();
		fdcache_add(c, (uint64_t)i, fds[i], &held[i]);
	}
	/* all four in use: a fifth is not cached, and its ref owns it */
	int fd = open_fd();
	fdcache_add(c, 99, fd, &extra);
	assert_null(extra.ent);
	fdcache_release(c, &extra);
	assert_false(fd_is_open(fd));
	/* dropping a referenced entry defers the close to its release */
	fdcache_drop(c, 2);
	assert_true(fd_is_open(fds[2]));
	struct fdcache_ref r;
	assert_int_equal(fdcache_get(c, 2, &r), -ENOENT);
	fdcache_release(c, &held[2]);
	assert_false(fd_is_open(fds[2]));
	for (int i = 0; i < 4; i++)
		if (i != 2)
			fdcache_release(c, &held[i]);
	fdcache_drop(c, 0);
	assert_false(fd_is_open(fds[0]));
	struct fdcache_stats st;
	fdcache_stats(c, &st);
	assert_int_equal(st.held, 2);
	fdcache_free(c);
	assert_false(fd_is_open(fds[1]));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(hit_after_add),
	    cmocka_unit_test(bounded_and_lru),
	    cmocka_unit_test(in_use_is_never_closed),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
