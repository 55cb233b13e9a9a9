/*
 * test_collector.c - the idle collector's thread: started by the first kick, it runs the
 * table's idle cycle to the end and reclaims what was forgotten; kicks below the table's
 * threshold do nothing; free stops it. Waits are collector_wait_idle, never sleeps.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <cmocka.h>

#include "collector.h"

enum { N = 3000 };

static struct inode_table *table(uint64_t *ids)
{
	struct inode_table *t;
	assert_int_equal(inode_table_new(7, 2, NULL, NULL, &t), 0);
	for (int i = 0; i < N; i++) {
		char name[16];
		uint64_t gen;
		snprintf(name, sizeof(name), "f%d", i);
		assert_int_equal(
		    inode_link(t, INODE_ROOT, name, 7, 100 + (uint64_t)i, &ids[i], &gen), 0);
	}
	assert_int_equal(inode_table_collect(t, HEAP_FULL), 0);
	return t;
}

static uint64_t live(struct inode_table *t)
{
	struct inode_stats st;
	inode_stats(t, &st);
	return st.inodes;
}

static void kick_reclaims_forgotten(void **state)
{
	(void)state;
	static uint64_t ids[N];
	struct inode_table *t = table(ids);
	struct collector *c;
	assert_int_equal(collector_new(t, &c), 0);
	collector_wait_idle(c); /* no thread yet: returns at once */
	bool wanted = false;
	for (int i = 0; i < N; i++)
		wanted |= inode_forget(t, ids[i], 1);
	assert_true(wanted);
	assert_int_equal(live(t), N + 1); /* forgotten, not yet collected */
	collector_kick(c);
	collector_wait_idle(c);
	assert_int_equal(live(t), 1);
	struct collector_stats st;
	collector_stats(c, &st);
	assert_int_equal(st.kicks, 1);
	assert_int_equal(st.cycles, 1);
	assert_true(st.slices > 1); /* in slices, not one pause */
	assert_int_equal(st.error, 0);
	char err[200];
	assert_int_equal(inode_table_verify(t, err, sizeof(err)), 0);
	/* A kick with nothing to do finishes at once and leaves the table alone. */
	collector_kick(c);
	collector_wait_idle(c);
	collector_stats(c, &st);
	assert_int_equal(st.cycles, 1);
	collector_free(c);
	inode_table_free(t);
}

/* Freed while it works (or right after a kick): the thread stops, nothing is corrupted. */
static void free_stops_the_thread(void **state)
{
	(void)state;
	static uint64_t ids[N];
	struct inode_table *t = table(ids);
	struct collector *c;
	assert_int_equal(collector_new(t, &c), 0);
	for (int i = 0; i < N; i++)
		inode_forget(t, ids[i], 1);
	collector_kick(c);
	collector_free(c);
	char err[200];
	assert_int_equal(inode_table_verify(t, err, sizeof(err)), 0);
	assert_int_equal(inode_table_collect(t, HEAP_FULL), 0);
	assert_int_equal(live(t), 1);
	collector_free(NULL);
	inode_table_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(kick_reclaims_forgotten),
	    cmocka_unit_test(free_stops_the_thread),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
