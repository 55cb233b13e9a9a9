/* test_inode.c - the inode table: lookup counting, paths, renames, stale ids, and that every
 * record is freed once nothing holds it. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "inode.h"

static int freed; /* data slots handed to count_free */

static void count_free(void *data)
{
	assert_non_null(data);
	freed++;
}

static int setup(void **state)
{
	struct inode_table *t;
	assert_int_equal(inode_table_new(7, 2, count_free, NULL, &t), 0);
	*state = t;
	return 0;
}

static int teardown(void **state)
{
	inode_table_free(*state);
	return 0;
}

/* A full collection, after which the heap and the table must be consistent. */
static void collect(struct inode_table *t)
{
	char err[256] = "";
	assert_int_equal(inode_table_collect(t, HEAP_FULL), 0);
	if (inode_table_verify(t, err, sizeof(err)) != 0)
		fail_msg("%s", err);
}

/* Live records once garbage is collected. */
static uint64_t live(struct inode_table *t)
{
	collect(t);
	struct inode_stats st;
	inode_stats(t, &st);
	return st.inodes;
}

static uint64_t link_one(struct inode_table *t, uint64_t parent, const char *name, uint64_t ino)
{
	uint64_t id, gen;
	assert_int_equal(inode_link(t, parent, name, 7, ino, &id, &gen), 0);
	assert_true(id != 0 && id != INODE_ROOT);
	return id;
}

static void paths_follow_parents(void **state)
{
	struct inode_table *t = *state;
	char buf[64];
	assert_int_equal(inode_path(t, INODE_ROOT, buf, sizeof(buf)), 1);
	assert_string_equal(buf, ".");
	uint64_t a = link_one(t, INODE_ROOT, "a", 10);
	uint64_t b = link_one(t, a, "bee", 11);
	uint64_t c = link_one(t, b, "c", 12);
	assert_int_equal(inode_path(t, c, buf, sizeof(buf)), 7);
	assert_string_equal(buf, "a/bee/c");
	/* too small a buffer is an error, never a truncated path */
	assert_int_equal(inode_path(t, c, buf, 7), -ENAMETOOLONG);
	assert_int_equal(inode_path(t, c, buf, 8), 7);
}

static void lookup_counting_frees_exactly(void **state)
{
	struct inode_table *t = *state;
	uint64_t a = link_one(t, INODE_ROOT, "a", 10);
	assert_true(link_one(t, INODE_ROOT, "a", 10) == a); /* same file, same id */
	uint64_t b = link_one(t, a, "b", 11);
	assert_int_equal(live(t), 3);
	inode_forget(t, a, 2);
	/* b still names a as its parent: a must stay */
	assert_int_equal(live(t), 3);
	char buf[32];
	assert_int_equal(inode_path(t, b, buf, sizeof(buf)), 3);
	inode_forget(t, b, 1);
	assert_int_equal(live(t), 1);
	assert_int_equal(inode_path(t, a, buf, sizeof(buf)), -ESTALE);
	assert_int_equal(inode_path(t, b, buf, sizeof(buf)), -ESTALE);
}

static void forget_more_than_known_is_harmless(void **state)
{
	struct inode_table *t = *state;
	uint64_t a = link_one(t, INODE_ROOT, "a", 10);
	inode_forget(t, a, 5);
	inode_forget(t, a, 1); /* stale now: ignored */
	inode_forget(t, INODE_ROOT, 3);
	assert_int_equal(live(t), 1);
	char buf[8];
	assert_int_equal(inode_path(t, INODE_ROOT, buf, sizeof(buf)), 1);
}

static void pin_outlives_forget(void **state)
{
	struct inode_table *t = *state;
	uint64_t a = link_one(t, INODE_ROOT, "a", 10);
	assert_int_equal(inode_pin(t, a), 0);
	inode_forget(t, a, 1);
	assert_int_equal(live(t), 2);
	inode_unpin(t, a);
	assert_int_equal(live(t), 1);
	assert_int_equal(inode_pin(t, a), -ESTALE);
}

static void reused_slot_gives_new_id(void **state)
{
	struct inode_table *t = *state;
	uint64_t a = link_one(t, INODE_ROOT, "a", 10);
	inode_forget(t, a, 1);
	collect(t);
	uint64_t b = link_one(t, INODE_ROOT, "b", 20);
	assert_true(a != b);
	assert_true((uint32_t)a == (uint32_t)b); /* same slot, other generation */
	uint64_t dev, ino;
	assert_int_equal(inode_ident(t, a, &dev, &ino), -ESTALE);
	assert_int_equal(inode_ident(t, b, &dev, &ino), 0);
	assert_true(ino == 20 && dev == 7);
}

static void hard_links_share_a_record(void **state)
{
	struct inode_table *t = *state;
	uint64_t d = link_one(t, INODE_ROOT, "d", 5);
	uint64_t a = link_one(t, INODE_ROOT, "a", 10);
	uint64_t b = link_one(t, d, "b", 10);
	assert_true(a == b);
	char buf[32];
	inode_path(t, a, buf, sizeof(buf));
	assert_string_equal(buf, "d/b"); /* the name last seen */
	inode_forget(t, d, 1);
	assert_int_equal(live(t), 3); /* d is a's parent now */
	inode_forget(t, a, 2);
	assert_int_equal(live(t), 1);
}

static void move_follows_rename(void **state)
{
	struct inode_table *t = *state;
	uint64_t d = link_one(t, INODE_ROOT, "d", 5);
	uint64_t e = link_one(t, INODE_ROOT, "e", 6);
	uint64_t f = link_one(t, d, "f", 10);
	assert_int_equal(inode_move(t, 7, 10, e, "g"), 0);
	char buf[32];
	inode_path(t, f, buf, sizeof(buf));
	assert_string_equal(buf, "e/g");
	inode_forget(t, d, 1); /* d held by nothing now */
	assert_int_equal(live(t), 3);
	assert_int_equal(inode_move(t, 7, 99, e, "x"), 0); /* unknown file: nothing to do */
	assert_int_equal(inode_move(t, 7, 10, d, "x"), -ESTALE);
}

static void parent_and_name(void **state)
{
	struct inode_table *t = *state;
	uint64_t d = link_one(t, INODE_ROOT, "dir", 5);
	uint64_t f = link_one(t, d, "file", 6);
	uint64_t p = 0;
	char name[8];
	assert_int_equal(inode_parent(t, f, &p, name, sizeof(name)), 0);
	assert_true(p == d);
	assert_string_equal(name, "file");
	assert_int_equal(inode_parent(t, INODE_ROOT, &p, name, sizeof(name)), 0);
	assert_true(p == INODE_ROOT);
	assert_string_equal(name, ".");
	assert_int_equal(inode_parent(t, f, &p, name, 4), -ENAMETOOLONG);
	inode_forget(t, f, 1);
	collect(t);
	assert_int_equal(inode_parent(t, f, &p, name, sizeof(name)), -ESTALE);
}

static void data_slot(void **state)
{
	struct inode_table *t = *state;
	uint64_t a = link_one(t, INODE_ROOT, "a", 10);
	int x;
	inode_lock(t);
	void **slot = inode_data(t, a);
	assert_non_null(slot);
	assert_null(*slot);
	*slot = &x;
	assert_ptr_equal(*inode_data(t, a), &x);
	assert_null(inode_data(t, a + (1ull << 32)));
	inode_unlock(t);
	/* the data goes with its record, once */
	freed = 0;
	inode_forget(t, a, 1);
	collect(t);
	assert_int_equal(freed, 1);
	inode_forget(t, a, 1);
	collect(t);
	assert_int_equal(freed, 1);
}

/* Many records, random forgets: the table never loses a live one nor keeps a dead one. */
static void many_records(void **state)
{
	struct inode_table *t = *state;
	enum { N = 20000 };
	uint64_t *ids = calloc(N, sizeof(*ids));
	uint64_t *counts = calloc(N, sizeof(*counts));
	assert_non_null(ids);
	assert_non_null(counts);
	uint64_t dir = link_one(t, INODE_ROOT, "dir", 3);
	unsigned seed = 12345;
	for (int round = 0; round < 4; round++) {
		for (int i = 0; i < N; i++) {
			char name[16];
			snprintf(name, sizeof(name), "f%d", i);
			ids[i] = link_one(t, dir, name, 100 + (uint64_t)i);
			counts[i]++;
		}
		for (int i = 0; i < N; i++) {
			seed = seed * 1103515245 + 12345;
			if ((seed >> 16) % 3 == 0) {
				inode_forget(t, ids[i], counts[i]);
				counts[i] = 0;
			}
		}
	}
	uint64_t want = 2;
	collect(t);
	for (int i = 0; i < N; i++) {
		char buf[32], name[16];
		snprintf(name, sizeof(name), "dir/f%d", i);
		if (counts[i] == 0)
			continue;
		want++;
		assert_int_equal(inode_path(t, ids[i], buf, sizeof(buf)), (int)strlen(name));
		assert_string_equal(buf, name);
	}
	assert_int_equal(live(t), want);
	for (int i = 0; i < N; i++)
		if (counts[i] != 0)
			inode_forget(t, ids[i], counts[i]);
	inode_forget(t, dir, 1);
	assert_int_equal(live(t), 1);
	free(ids);
	free(counts);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(paths_follow_parents, setup, teardown),
	    cmocka_unit_test_setup_teardown(lookup_counting_frees_exactly, setup, teardown),
	    cmocka_unit_test_setup_teardown(forget_more_than_known_is_harmless, setup, teardown),
	    cmocka_unit_test_setup_teardown(pin_outlives_forget, setup, teardown),
	    cmocka_unit_test_setup_teardown(reused_slot_gives_new_id, setup, teardown),
	    cmocka_unit_test_setup_teardown(hard_links_share_a_record, setup, teardown),
	    cmocka_unit_test_setup_teardown(move_follows_rename, setup, teardown),
	    cmocka_unit_test_setup_teardown(parent_and_name, setup, teardown),
	    cmocka_unit_test_setup_teardown(data_slot, setup, teardown),
	    cmocka_unit_test_setup_teardown(many_records, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
