/* test_inode.c - the inode table: lookup counting, paths, renames, stale ids, devices,
 * scattered 64-bit inode numbers, data slots, and that every record is freed once nothing
 * holds it. Built twice: unit_inode_narrow compiles lib/inode.c with 2 bits of lookup count in
 * the record and a volume list of 64 volumes, 3 a device, so that every test (the property
 * test too) also runs the counts' side-entry half and the wide records. */
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

/* Data slots pointing at counters: each free counts one. */
static void tag_free(void *data)
{
	(*(int *)data)++;
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

/* A file whose last name is gone leaves the index: the store may give its inode number to a
 * new file, which must get a new node id, while the old record lives on for its users. */
static void unhashed_number_is_a_new_file(void **state)
{
	struct inode_table *t = *state;
	uint64_t a = link_one(t, INODE_ROOT, "a", 10);
	assert_int_equal(inode_unhash(t, 7, 10), 1);
	assert_int_equal(inode_unhash(t, 7, 10), 0); /* nothing left to unhash */
	uint64_t b = link_one(t, INODE_ROOT, "b", 10);
	assert_true(a != b);
	char buf[8];
	assert_int_equal(inode_path(t, a, buf, sizeof(buf)), 1);
	assert_string_equal(buf, "a");
	char err[128];
	assert_int_equal(inode_table_verify(t, err, sizeof(err)), 0);
	inode_forget(t, a, 1);
	assert_int_equal(inode_table_collect(t, HEAP_FULL), 0);
	assert_int_equal(inode_table_verify(t, err, sizeof(err)), 0);
	/* the old record's end does not take the new one's index entry with it */
	assert_true(link_one(t, INODE_ROOT, "b", 10) == b);
	assert_int_equal(inode_unhash(t, 7, 1 /* never seen */), 0);
}

static void data_slot(void **state)
{
	struct inode_table *t = *state;
	uint64_t a = link_one(t, INODE_ROOT, "a", 10);
	int x;
	inode_lock(t);
	void **slot = inode_data(t, a, NULL);
	assert_non_null(slot);
	assert_null(*slot);
	*slot = &x;
	assert_ptr_equal(*inode_data(t, a, NULL), &x);
	int err = 0;
	assert_null(inode_data(t, a + (1ull << 32), &err)); /* a stale generation */
	assert_int_equal(err, -ESTALE);
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

/* Reading the data slot of a record that has none (a getattr of every file in a tree) leaves
 * nothing behind; a slot the owner fills stays, and is freed with its record, once. */
static void looks_leave_no_side_entry(void **state)
{
	struct inode_table *t = *state;
	enum { N = 300 };
	uint64_t ids[N];
	char name[16], err[200];
	for (int i = 0; i < N; i++) {
		snprintf(name, sizeof(name), "f%d", i);
		ids[i] = link_one(t, INODE_ROOT, name, 100 + (uint64_t)i);
	}
	struct inode_stats before, after;
	inode_lock(t); /* the first look makes the side table's (empty) bucket array */
	assert_null(*inode_data(t, ids[0], NULL));
	inode_unlock(t);
	inode_stats(t, &before);
	for (int i = 1; i < N; i++) {
		inode_lock(t);
		void **slot = inode_data(t, ids[i], NULL);
		assert_non_null(slot);
		assert_null(*slot);
		inode_unlock(t);
	}
	inode_stats(t, &after);
	assert_int_equal(after.bytes, before.bytes);
	if (inode_table_verify(t, err, sizeof(err)) != 0)
		fail_msg("%s", err);
	int x;
	inode_lock(t);
	*inode_data(t, ids[7], NULL) = &x;
	assert_null(*inode_data(t, ids[8], NULL)); /* two slots in one hold: the first stays put */
	inode_unlock(t);
	inode_stats(t, &after);
	assert_true(after.bytes > before.bytes);
	inode_lock(t);
	assert_ptr_equal(*inode_data(t, ids[7], NULL), &x);
	assert_ptr_equal(inode_data_peek(t, ids[7]), &x);
	assert_null(inode_data_peek(t, ids[9]));
	assert_null(inode_data_peek(t, ids[7] + (1ull << 32))); /* stale: nothing */
	inode_unlock(t);
	struct inode_stats peeked;
	inode_stats(t, &peeked);
	assert_int_equal(peeked.bytes, after.bytes); /* a peek makes no slot */
	if (inode_table_verify(t, err, sizeof(err)) != 0)
		fail_msg("%s", err);
	freed = 0;
	for (int i = 0; i < N; i++)
		inode_forget(t, ids[i], 1);
	assert_int_equal(live(t), 1);
	assert_int_equal(freed, 1);
}

/* Records of many devices: (dev, ino) pairs with the same ino are different files, found
 * again under their own ids, and give their device back. */
static void devices_are_told_apart(void **state)
{
	struct inode_table *t = *state;
	enum { NDEV = 300 };
	uint64_t ids[NDEV], id, gen, dev, ino;
	char name[16], err[200];
	for (int d = 0; d < NDEV; d++) {
		snprintf(name, sizeof(name), "m%d", d);
		assert_int_equal(
		    inode_link(t, INODE_ROOT, name, 1000 + (uint64_t)d * 77, 5, &ids[d], &gen), 0);
		for (int k = 0; k < d; k++)
			assert_true(ids[k] != ids[d]);
	}
	for (int d = 0; d < NDEV; d++) {
		snprintf(name, sizeof(name), "m%d", d);
		assert_int_equal(
		    inode_link(t, INODE_ROOT, name, 1000 + (uint64_t)d * 77, 5, &id, &gen), 0);
		assert_true(id == ids[d]);
		assert_int_equal(inode_ident(t, ids[d], &dev, &ino), 0);
		assert_int_equal(dev, 1000 + (uint64_t)d * 77);
		assert_int_equal(ino, 5);
	}
	assert_int_equal(inode_unhash(t, 1000 + 150 * 77, 5), 1);
	assert_int_equal(inode_unhash(t, 999, 5), 0); /* a device never seen */
	assert_int_equal(inode_link(t, INODE_ROOT, "m151", 1000 + 151 * 77, 5, &id, &gen), 0);
	assert_true(id == ids[151]);
	if (inode_table_verify(t, err, sizeof(err)) != 0)
		fail_msg("%s", err);
	for (int d = 0; d < NDEV; d++)
		inode_forget(t, ids[d], d == 151 ? 3 : 2);
	assert_int_equal(live(t), 1);
}

/* 64-bit inode numbers: a record keeps the low half, its volume the high half. Numbers that
 * share a low half but not a high one (or a high half but not the device) are different
 * files, each found again under its own id, and each gives back its whole number. */
static void wide_inode_numbers_are_told_apart(void **state)
{
	struct inode_table *t = *state;
	static const uint64_t inos[] = {
	    5,		(1ull << 32) | 5, (7ull << 32) | 5,	      (0xffffffffull << 32) | 5,
	    1ull << 32, UINT64_MAX,	  (7ull << 32) | 0xffffffffu, 0xffffffffu,
	};
	enum { N = sizeof(inos) / sizeof(inos[0]) };
	uint64_t ids[2][N], id, gen, dev, ino;
	char name[16], err[200];
	for (int d = 0; d < 2; d++)
		for (int i = 0; i < N; i++) {
			snprintf(name, sizeof(name), "w%d.%d", d, i);
			assert_int_equal(inode_link(t, INODE_ROOT, name, 7 + (uint64_t)d, inos[i],
						    &ids[d][i], &gen),
					 0);
			for (int k = 0; k < d * N + i; k++)
				assert_true(ids[k / N][k % N] != ids[d][i]);
		}
	for (int d = 0; d < 2; d++)
		for (int i = 0; i < N; i++) {
			snprintf(name, sizeof(name), "w%d.%d", d, i);
			assert_int_equal(
			    inode_link(t, INODE_ROOT, name, 7 + (uint64_t)d, inos[i], &id, &gen),
			    0);
			assert_true(id == ids[d][i]);
			assert_int_equal(inode_ident(t, id, &dev, &ino), 0);
			assert_int_equal(dev, 7 + (uint64_t)d);
			assert_int_equal(ino, inos[i]);
		}
	assert_int_equal(inode_unhash(t, 7, (3ull << 32) | 5), 0); /* a high half never seen */
	assert_int_equal(inode_unhash(t, 8, (7ull << 32) | 5), 1);
	assert_int_equal(inode_link(t, INODE_ROOT, "w1.2", 8, (7ull << 32) | 5, &id, &gen), 0);
	assert_true(id != ids[1][2]); /* unhashed: a new file */
	if (inode_table_verify(t, err, sizeof(err)) != 0)
		fail_msg("%s", err);
	for (int d = 0; d < 2; d++)
		for (int i = 0; i < N; i++)
			inode_forget(t, ids[d][i], 2);
	inode_forget(t, id, 1);
	assert_int_equal(live(t), 1);
}

/* What a record of a short name costs in the heap: 32 bytes up to 6 name bytes (header,
 * parent slot, 10 fixed bytes and the name), 40 up to 14, plus its 8-byte handle slot. */
static void short_names_make_small_records(void **state)
{
	struct inode_table *t = *state;
	static const struct {
		const char *name;
		uint64_t bytes;
	} cases[] = {{"a", 32},
		     {"f00001", 32},
		     {"f000001", 40},
		     {"abcdefghijklmn", 40},
		     {"abcdefghijklmno", 48}};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct heap_stats before, after;
		inode_heap_stats(t, &before);
		uint64_t id = link_one(t, INODE_ROOT, cases[i].name, 500 + i);
		inode_heap_stats(t, &after);
		assert_int_equal(after.heap_used - before.heap_used, cases[i].bytes + 8);
		char name[32];
		uint64_t parent;
		assert_int_equal(inode_parent(t, id, &parent, name, sizeof(name)), 0);
		assert_string_equal(name, cases[i].name);
	}
}

/* A bijection of 64-bit numbers (splitmix64's finalizer): distinct inputs give distinct,
 * scattered inode numbers, as a store reporting hashed file ids does. */
static uint64_t scatter(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* Links (dev, ino) under the root as name; returns the heap bytes it took (handle slot too). */
static uint64_t link_cost(struct inode_table *t, const char *name, uint64_t dev, uint64_t ino)
{
	struct heap_stats before, after;
	uint64_t id, gen;
	inode_heap_stats(t, &before);
	assert_int_equal(inode_link(t, INODE_ROOT, name, dev, ino, &id, &gen), 0);
	inode_heap_stats(t, &after);
	return after.heap_used - before.heap_used;
}

/* A device lists INODE_VOL_PER_DEV high halves; a file of a further one is a wide record,
 * which carries its device and high half: 40 heap bytes instead of 32 for a 1-byte name, 48
 * for a 6-byte one. Its listed high halves, and other devices, keep the 10-byte form. */
static void wide_records_carry_their_identity(void **state)
{
	struct inode_table *t = *state;
	char name[32], err[200];
	for (uint64_t hi = 0; hi < INODE_VOL_PER_DEV; hi++) {
		snprintf(name, sizeof(name), "v%llu", (unsigned long long)hi);
		link_one(t, INODE_ROOT, name, 1); /* dev 7 */
		uint64_t id, gen;
		assert_int_equal(inode_link(t, INODE_ROOT, name, 9, hi << 32 | 1, &id, &gen), 0);
	}
	const uint64_t far = (uint64_t)INODE_VOL_PER_DEV << 32;
	uint64_t id, gen, dev, ino, parent;
	/* a new volume of another device, after dev 9 took its share: listed */
	assert_int_equal(inode_link(t, INODE_ROOT, "w", 10, far | 1, &id, &gen), 0);
	collect(t); /* an empty young generation: the links below collect nothing */
	assert_int_equal(link_cost(t, "a", 9, far | 1), 40 + 8);
	assert_int_equal(link_cost(t, "abcdef", 9, far | 2), 48 + 8);
	assert_int_equal(link_cost(t, "b", 9, 2), 32 + 8);	  /* a listed high half */
	assert_int_equal(link_cost(t, "c", 10, far | 2), 32 + 8); /* and its volume */
	assert_int_equal(link_cost(t, "a", 9, far | 1), 0);	  /* found again */
	assert_int_equal(inode_link(t, INODE_ROOT, "abcdef", 9, far | 2, &id, &gen), 0);
	assert_int_equal(inode_ident(t, id, &dev, &ino), 0);
	assert_true(dev == 9 && ino == (far | 2));
	assert_int_equal(inode_parent(t, id, &parent, name, sizeof(name)), 0);
	assert_string_equal(name, "abcdef");
	/* renamed within its inline room, its identity stays; renamed beyond it, too */
	assert_int_equal(inode_move(t, 9, far | 2, INODE_ROOT, "xyz"), 0);
	assert_int_equal(inode_parent(t, id, &parent, name, sizeof(name)), 0);
	assert_string_equal(name, "xyz");
	assert_int_equal(inode_move(t, 9, far | 2, INODE_ROOT, "abcdefghijklmnopq"), 0);
	assert_int_equal(inode_parent(t, id, &parent, name, sizeof(name)), 0);
	assert_string_equal(name, "abcdefghijklmnopq");
	assert_int_equal(inode_ident(t, id, &dev, &ino), 0);
	assert_true(dev == 9 && ino == (far | 2));
	/* wide records that share device and low half are told apart by their high halves */
	enum { NSAME = 5000 };
	static uint64_t ids[NSAME];
	for (int round = 0; round < 2; round++)
		for (uint64_t k = 0; k < NSAME; k++) {
			snprintf(name, sizeof(name), "h%llu", (unsigned long long)k);
			uint64_t same = ((uint64_t)INODE_VOL_PER_DEV + k * 131071) << 32 | 3;
			assert_int_equal(inode_link(t, INODE_ROOT, name, 9, same, &id, &gen), 0);
			assert_true(round == 0 || id == ids[k]);
			ids[k] = id;
			assert_int_equal(inode_ident(t, id, &dev, &ino), 0);
			assert_true(dev == 9 && ino == same);
		}
	if (inode_table_verify(t, err, sizeof(err)) != 0)
		fail_msg("%s", err);
}

/* Files with scattered 64-bit inode numbers on ndev devices, far more volumes (device, high
 * half) than the table lists: past the bounds, records are wide. Each links, is found again
 * under its id by (dev, ino), gives back its identity whole, follows renames (short names
 * inline after its identity, long ones out of line) and unhashing, and is collected once
 * forgotten; the table verifies and costs a bounded amount per record. */
enum { NSCAT = 100000 };

static uint64_t scat_dev(int i, uint64_t ndev)
{
	return 7 + (uint64_t)i % ndev;
}

static void scattered(uint64_t ndev)
{
	struct inode_table *t;
	assert_int_equal(inode_table_new(7, 2, NULL, NULL, &t), 0);
	uint64_t *ids = calloc(NSCAT, sizeof(*ids));
	assert_non_null(ids);
	uint64_t dir = link_one(t, INODE_ROOT, "dir", 3), id, gen, dev, ino, parent;
	char name[300], err[200];
	for (int i = 0; i < NSCAT; i++) {
		snprintf(name, sizeof(name), "s%d", i);
		assert_int_equal(inode_link(t, dir, name, scat_dev(i, ndev), scatter((uint64_t)i),
					    &ids[i], &gen),
				 0);
	}
	struct inode_stats st;
	collect(t);
	inode_stats(t, &st);
	assert_int_equal(st.inodes, NSCAT + 2);
	/* a wide record of a 6-byte name: 48 heap bytes, an 8-byte handle slot, 6-12 of index;
	 * plus the volume list's share, at most 65,535 volumes of 24-40 bytes */
	print_message("%llu devices: %.1f bytes a record\n", (unsigned long long)ndev,
		      (double)st.bytes / NSCAT);
	assert_true(st.bytes <= (uint64_t)NSCAT * (ndev == 1 ? 72 : 96));
	for (int i = 0; i < NSCAT; i++) {
		snprintf(name, sizeof(name), "s%d", i);
		assert_int_equal(
		    inode_link(t, dir, name, scat_dev(i, ndev), scatter((uint64_t)i), &id, &gen),
		    0);
		assert_true(id == ids[i]);
		assert_int_equal(inode_ident(t, id, &dev, &ino), 0);
		assert_true(dev == scat_dev(i, ndev) && ino == scatter((uint64_t)i));
	}
	for (int i = 0; i < NSCAT; i += 997) {
		for (int len = 2; len < 300; len *= 3) { /* inline, then out of line */
			memset(name, 'a' + i % 26, (size_t)len);
			name[len] = '\0';
			assert_int_equal(inode_move(t, scat_dev(i, ndev), scatter((uint64_t)i),
						    INODE_ROOT, name),
					 0);
			char got[300];
			assert_int_equal(inode_parent(t, ids[i], &parent, got, sizeof(got)), 0);
			assert_true(parent == INODE_ROOT);
			assert_string_equal(got, name);
		}
		assert_int_equal(inode_ident(t, ids[i], &dev, &ino), 0);
		assert_true(dev == scat_dev(i, ndev) && ino == scatter((uint64_t)i));
	}
	/* a gone file's number given to a new one: a new id */
	assert_int_equal(inode_unhash(t, scat_dev(5, ndev), scatter(5)), 1);
	assert_int_equal(inode_link(t, dir, "new", scat_dev(5, ndev), scatter(5), &id, &gen), 0);
	assert_true(id != ids[5]);
	if (inode_table_verify(t, err, sizeof(err)) != 0)
		fail_msg("%s", err);
	uint64_t forgotten = st.forgotten;
	for (int i = 0; i < NSCAT; i++)
		inode_forget(t, ids[i], 2);
	inode_forget(t, id, 1);
	inode_forget(t, dir, 1);
	assert_int_equal(live(t), 1);
	inode_stats(t, &st);
	assert_int_equal(st.forgotten - forgotten, NSCAT + 2);
	for (int i = 0; i < NSCAT; i += 101)
		assert_int_equal(inode_ident(t, ids[i], &dev, &ino), -ESTALE);
	/* and found no more: a new file of the same number is a new record */
	assert_int_equal(inode_link(t, dir, "s1", scat_dev(1, ndev), scatter(1), &id, &gen),
			 -ESTALE); /* dir is gone too */
	assert_int_equal(inode_link(t, INODE_ROOT, "s1", scat_dev(1, ndev), scatter(1), &id, &gen),
			 0);
	assert_true(id != ids[1]);
	inode_table_free(t);
	free(ids);
}

static void scattered_numbers_one_device(void **state)
{
	(void)state;
	scattered(1);
}

static void scattered_numbers_many_devices(void **state)
{
	(void)state;
	scattered(100);
}

/* A count of many lookups (in the narrow build, mostly in the side entry) with a pin: the
 * record lives exactly until the last lookup is forgotten and the pin dropped. */
static void many_lookups_and_pins(void **state)
{
	struct inode_table *t = *state;
	enum { LOOKUPS = 1000 };
	uint64_t f = 0;
	for (int i = 0; i < LOOKUPS; i++) {
		uint64_t id = link_one(t, INODE_ROOT, "f", 10);
		assert_true(f == 0 || id == f);
		f = id;
	}
	assert_int_equal(inode_pin(t, f), 0);
	inode_forget(t, f, LOOKUPS - 1);
	assert_int_equal(live(t), 2);
	inode_forget(t, f, 1);
	assert_int_equal(live(t), 2); /* pinned */
	for (int i = 0; i < 5; i++)   /* and looked up again, across the low bits' edge */
		assert_true(link_one(t, INODE_ROOT, "f", 10) == f);
	inode_forget(t, f, 5);
	inode_unpin(t, f);
	assert_int_equal(live(t), 1);
	uint64_t dev, ino;
	assert_int_equal(inode_ident(t, f, &dev, &ino), -ESTALE);
}

/* Many records, random forgets: the table never loses a live one nor keeps a dead one. */
/* The index grows through several incremental rehashes (successor committed, entries
 * migrated, old table unmapped a step per insertion): at every step each record linked so
 * far is found again (same id), sampled, and the table verifies every 256 insertions. */
static void index_growth_keeps_entries_findable(void **state)
{
	struct inode_table *t = *state;
	enum { N = 12000 };
	uint64_t *ids = calloc(N, sizeof(*ids));
	assert_non_null(ids);
	uint64_t dir = link_one(t, INODE_ROOT, "d", 3);
	char err[200];
	for (int i = 0; i < N; i++) {
		char name[16];
		snprintf(name, sizeof(name), "g%d", i);
		ids[i] = link_one(t, dir, name, 1000 + (uint64_t)i);
		for (int k = 0; k < 3; k++) {
			int j = k == 0	 ? i / 2
				: k == 1 ? i - 1
					 : (int)((unsigned)i * 2654435761u % (unsigned)(i + 1));
			if (j < 0)
				continue;
			snprintf(name, sizeof(name), "g%d", j);
			assert_int_equal(link_one(t, dir, name, 1000 + (uint64_t)j), ids[j]);
			inode_forget(t, ids[j], 1);
		}
		if (i % 256 == 0 && inode_table_verify(t, err, sizeof(err)) != 0)
			fail_msg("%s", err);
	}
	for (int i = 0; i < N; i++) {
		uint64_t dev, ino;
		assert_int_equal(inode_ident(t, ids[i], &dev, &ino), 0);
		assert_int_equal(ino, 1000 + (uint64_t)i);
	}
	if (inode_table_verify(t, err, sizeof(err)) != 0)
		fail_msg("%s", err);
	free(ids);
}

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

/* The idle cycle (inode_table_idle): nothing to do until INODE_IDLE_MIN records lost their
 * last root; inode_forget says when that happens; then bounded calls reclaim what was
 * forgotten, with no allocation to drive them. */
static void idle_cycle_reclaims_forgotten(void **state)
{
	(void)state;
	struct inode_table *t;
	assert_int_equal(inode_table_new(7, 2, NULL, NULL, &t), 0);
	enum { N = 4000 };
	static uint64_t ids[N];
	uint64_t dir = link_one(t, INODE_ROOT, "dir", 3);
	for (int i = 0; i < N; i++) {
		char name[16];
		snprintf(name, sizeof(name), "f%d", i);
		ids[i] = link_one(t, dir, name, 100 + (uint64_t)i);
	}
	assert_int_equal(inode_table_collect(t, HEAP_FULL),
			 0);				/* all old: no scavenge frees them */
	assert_int_equal(inode_table_idle(t, 4096), 0); /* nothing forgotten: nothing to do */
	for (unsigned i = 0; i + 1 < INODE_IDLE_MIN; i++)
		assert_false(inode_forget(t, ids[i], 1));
	assert_int_equal(inode_table_idle(t, 4096), 0);
	struct inode_stats st;
	inode_stats(t, &st);
	assert_int_equal(st.inodes, N + 2);
	assert_true(inode_forget(t, ids[INODE_IDLE_MIN - 1], 1)); /* the one that tips it */
	for (unsigned i = INODE_IDLE_MIN; i < N / 2; i++)
		inode_forget(t, ids[i], 1);
	struct heap_stats a, b;
	inode_heap_stats(t, &a);
	unsigned calls = 0;
	int rc;
	while ((rc = inode_table_idle(t, 4096)) == 1)
		assert_true(++calls < 100000);
	assert_int_equal(rc, 0);
	assert_true(calls > 1);
	inode_heap_stats(t, &b);
	assert_int_equal(b.old.mark_sweeps + b.old.mark_compacts, /* one cycle did it */
			 a.old.mark_sweeps + a.old.mark_compacts + 1);
	inode_stats(t, &st);
	assert_int_equal(st.inodes, N / 2 + 2);
	assert_true(b.heap_used < a.heap_used);
	char err[200];
	assert_int_equal(inode_table_verify(t, err, sizeof(err)), 0);
	for (int i = 0; i < N; i++) {
		uint64_t dev, ino;
		assert_int_equal(inode_ident(t, ids[i], &dev, &ino), i < N / 2 ? -ESTALE : 0);
	}
	assert_int_equal(inode_table_idle(t, 4096), 0); /* done: nothing more wanted */
	inode_table_free(t);
}

/* Records the kernel forgot are reclaimed by a collection, each data slot freed exactly once,
 * and the figures say so. */
static void forgotten_records_are_collected(void **state)
{
	(void)state;
	struct inode_table *t;
	assert_int_equal(inode_table_new(7, 2, tag_free, NULL, &t), 0);
	enum { N = 3000 };
	static int frees[N];
	static uint64_t ids[N];
	memset(frees, 0, sizeof(frees));
	uint64_t dir = link_one(t, INODE_ROOT, "dir", 3);
	for (int i = 0; i < N; i++) {
		char name[16];
		snprintf(name, sizeof(name), "f%d", i);
		ids[i] = link_one(t, dir, name, 100 + (uint64_t)i);
		inode_lock(t);
		*inode_data(t, ids[i], NULL) = &frees[i];
		inode_unlock(t);
	}
	struct inode_stats st;
	inode_stats(t, &st);
	assert_int_equal(st.inodes, N + 2);
	uint64_t forgotten = st.forgotten;
	for (int i = 0; i < N; i += 2)
		inode_forget(t, ids[i], 1);
	assert_int_equal(live(t), N / 2 + 2);
	inode_stats(t, &st);
	assert_int_equal(st.forgotten - forgotten, N / 2);
	for (int i = 0; i < N; i++) {
		assert_int_equal(frees[i], i % 2 == 0 ? 1 : 0);
		uint64_t dev, ino;
		assert_int_equal(inode_ident(t, ids[i], &dev, &ino), i % 2 == 0 ? -ESTALE : 0);
	}
	struct heap_stats hs;
	inode_heap_stats(t, &hs);
	assert_true(hs.objects >= N / 2 + 2);
	assert_true(hs.heap_used > 0 && hs.heap_used <= hs.heap_total);
	for (int i = 1; i < N; i += 2)
		inode_forget(t, ids[i], 1);
	inode_forget(t, dir, 1);
	assert_int_equal(live(t), 1);
	for (int i = 0; i < N; i++)
		assert_int_equal(frees[i], 1);
	inode_table_free(t);
}

/* A renamed record keeps its id; a long new name goes out of line and back. */
static void long_renames(void **state)
{
	struct inode_table *t = *state;
	uint64_t d = link_one(t, INODE_ROOT, "d", 5);
	uint64_t f = link_one(t, d, "f", 10);
	char longname[200], buf[256];
	memset(longname, 'x', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	assert_int_equal(inode_move(t, 7, 10, INODE_ROOT, longname), 0);
	assert_int_equal(inode_path(t, f, buf, sizeof(buf)), (int)strlen(longname));
	assert_string_equal(buf, longname);
	inode_forget(t, d, 1);
	assert_int_equal(live(t), 2); /* d went: f's parent is the root now */
	assert_int_equal(inode_path(t, f, buf, sizeof(buf)), (int)strlen(longname));
	assert_string_equal(buf, longname);
	uint64_t e = link_one(t, INODE_ROOT, "e", 6);
	assert_true(link_one(t, e, "g", 10) == f);
	assert_int_equal(inode_path(t, f, buf, sizeof(buf)), 3);
	assert_string_equal(buf, "e/g");
	inode_forget(t, f, 2);
	inode_forget(t, e, 1);
	assert_int_equal(live(t), 1);
}

static int gc_lines; /* trace lines seen: a collection ran */

static void count_trace(void *arg, const char *line)
{
	(void)arg;
	assert_non_null(strstr(line, "heap: "));
	gc_lines++;
}

static struct inode_table *small_table(uint64_t semi, uint64_t old)
{
	struct inode_config cfg = {
	    .semi_space = semi, .old_space = old, .trace_gc = 1, .trace = count_trace};
	struct inode_table *t;
	assert_int_equal(inode_table_new(7, 2, count_free, &cfg, &t), 0);
	return t;
}

/* When even a full collection cannot make room, inode_link says -ENOMEM and changes
 * nothing; once the kernel forgets, the table works again. */
static void full_heap_says_enomem(void **state)
{
	(void)state;
	struct inode_table *t = small_table(16 << 10, 64 << 10);
	enum { MAX = 100000 };
	static uint64_t ids[MAX];
	int n = 0, err = 0;
	char name[64], buf[64];
	while (n < MAX) {
		uint64_t gen;
		snprintf(name, sizeof(name), "a-rather-long-file-name-%d", n);
		err = inode_link(t, INODE_ROOT, name, 7, 100 + (uint64_t)n, &ids[n], &gen);
		if (err != 0)
			break;
		n++;
	}
	assert_int_equal(err, -ENOMEM);
	assert_true(n > 100);
	char msg[256] = "";
	if (inode_table_verify(t, msg, sizeof(msg)) != 0)
		fail_msg("%s", msg);
	assert_int_equal(live(t), (uint64_t)n + 1);
	for (int i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "a-rather-long-file-name-%d", i);
		assert_int_equal(inode_path(t, ids[i], buf, sizeof(buf)), (int)strlen(name));
		assert_string_equal(buf, name);
	}
	/* a rename needing an out-of-line name may fail too, and leaves the record as it was */
	char longname[240];
	memset(longname, 'y', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	err = inode_move(t, 7, 100, INODE_ROOT, longname);
	assert_true(err == 0 || err == -ENOMEM);
	if (err == -ENOMEM) {
		assert_int_equal(inode_path(t, ids[0], buf, sizeof(buf)), 25);
		assert_string_equal(buf, "a-rather-long-file-name-0");
	}
	for (int i = 0; i < n; i++)
		inode_forget(t, ids[i], 1);
	uint64_t id = link_one(t, INODE_ROOT, "again", 5);
	assert_int_equal(inode_path(t, id, buf, sizeof(buf)), 5);
	assert_int_equal(live(t), 2);
	assert_true(gc_lines > 0);
	inode_table_free(t);
}

/* ---- randomized model test: the table against a plain model of what the kernel holds ---- */

enum { MFILES = 64, MTAGS = 4096 };

struct mfile {
	uint64_t dev, ino; /* the backing file: a small number on dev 7, or a scattered one */
	uint64_t id, nlookup, npin;
	int parent; /* model index; -1: the root */
	char name[64];
};

static struct mfile mf[MFILES];
static int tag_frees[MTAGS];
static int ntags;
static uint64_t mrnd_state;

static unsigned mrnd(unsigned n)
{
	mrnd_state = mrnd_state * 6364136223846793005ull + 1442695040888963407ull;
	return (unsigned)(mrnd_state >> 33) % n;
}

/* Alive in the model: looked up, pinned, or an ancestor of such a file. */
static void model_alive(char *alive)
{
	memset(alive, 0, MFILES);
	for (int i = 0; i < MFILES; i++)
		if (mf[i].nlookup != 0 || mf[i].npin != 0)
			for (int k = i; k >= 0 && !alive[k]; k = mf[k].parent)
				alive[k] = 1;
}

static int under(int p, int x) /* is p in x's subtree? */
{
	for (; p >= 0; p = mf[p].parent)
		if (p == x)
			return 1;
	return 0;
}

static int model_path(int i, char *buf, size_t len)
{
	if (mf[i].parent < 0)
		return snprintf(buf, len, "%s", mf[i].name);
	int n = model_path(mf[i].parent, buf, len);
	return n + snprintf(buf + n, len - (size_t)n, "/%s", mf[i].name);
}

static void random_name(char *name)
{
	int len = 1 + (int)mrnd(mrnd(4) == 0 ? 60 : 12);
	for (int k = 0; k < len; k++)
		name[k] = (char)('a' + mrnd(26));
	name[len] = '\0';
}

static uint64_t parent_id(int p)
{
	return p < 0 ? INODE_ROOT : mf[p].id;
}

static void model_check(struct inode_table *t, int full)
{
	char alive[MFILES], msg[256] = "";
	if (full)
		assert_int_equal(inode_table_collect(t, HEAP_FULL), 0);
	if (inode_table_verify(t, msg, sizeof(msg)) != 0)
		fail_msg("%s", msg);
	model_alive(alive);
	uint64_t want = 1;
	for (int i = 0; i < MFILES; i++) {
		if (!alive[i])
			continue;
		want++;
		char buf[4096], exp[4096];
		int n = model_path(i, exp, sizeof(exp));
		assert_int_equal(inode_path(t, mf[i].id, buf, sizeof(buf)), n);
		assert_string_equal(buf, exp);
		uint64_t dev, ino;
		assert_int_equal(inode_ident(t, mf[i].id, &dev, &ino), 0);
		assert_true(dev == mf[i].dev && ino == mf[i].ino);
	}
	if (full) {
		struct inode_stats st;
		inode_stats(t, &st);
		assert_int_equal(st.inodes, want);
		for (int i = 0; i < MFILES; i++) {
			uint64_t dev, ino;
			if (!alive[i] && mf[i].id != 0)
				assert_int_equal(inode_ident(t, mf[i].id, &dev, &ino), -ESTALE);
		}
	}
}

static void model_step(struct inode_table *t)
{
	int x = (int)mrnd(MFILES), p = (int)mrnd(MFILES + 1) - 1;
	char alive[MFILES];
	model_alive(alive);
	if (p >= 0 && mf[p].nlookup == 0)
		p = -1; /* the kernel names only parents it holds */
	switch (mrnd(10)) {
	case 0:
	case 1:
	case 2: { /* lookup */
		if (under(p, x))
			break;
		char name[64];
		random_name(name);
		uint64_t id, gen;
		int err = inode_link(t, parent_id(p), name, mf[x].dev, mf[x].ino, &id, &gen);
		if (err == -ENOMEM)
			break;
		assert_int_equal(err, 0);
		if (alive[x])
			assert_true(id == mf[x].id);
		mf[x].id = id;
		mf[x].nlookup++;
		mf[x].parent = p;
		strcpy(mf[x].name, name);
		inode_lock(t);
		void **slot = inode_data(t, id, NULL);
		assert_non_null(slot);
		if (*slot == NULL && ntags < MTAGS)
			*slot = &tag_frees[ntags++];
		inode_unlock(t);
		break;
	}
	case 3:
	case 4: /* forget */
		if (mf[x].nlookup != 0) {
			uint64_t n = 1 + mrnd((unsigned)mf[x].nlookup);
			inode_forget(t, mf[x].id, n);
			mf[x].nlookup -= n;
		}
		break;
	case 5: /* open */
		if (mf[x].nlookup != 0) {
			assert_int_equal(inode_pin(t, mf[x].id), 0);
			mf[x].npin++;
		}
		break;
	case 6: /* close */
		if (mf[x].npin != 0) {
			inode_unpin(t, mf[x].id);
			mf[x].npin--;
		}
		break;
	case 7: { /* rename */
		if (!alive[x] || under(p, x))
			break;
		char name[64];
		random_name(name);
		int err = inode_move(t, mf[x].dev, mf[x].ino, parent_id(p), name);
		if (err == -ENOMEM)
			break;
		assert_int_equal(err, 0);
		mf[x].parent = p;
		strcpy(mf[x].name, name);
		break;
	}
	case 8:
		assert_int_equal(inode_table_collect(t, mrnd(4) ? HEAP_MINOR : HEAP_FULL), 0);
		break;
	default: /* idle work, as the collector thread does it, or a plain step */
		if (mrnd(2))
			assert_true(inode_table_idle(t, 1 + mrnd(4096)) >= 0);
		else
			inode_table_step(t, 1 + mrnd(4096));
		break;
	}
}

static void run_model(unsigned seed, int steps)
{
	mrnd_state = seed;
	memset(mf, 0, sizeof(mf));
	/* half the files as ext4 numbers them, half scattered over 64 bits and three devices
	 * (in the narrow build, past its volume bounds: wide records) */
	for (int i = 0; i < MFILES; i++) {
		int wide = mrnd(2);
		mf[i].dev = wide ? 7 + mrnd(3) : 7;
		mf[i].ino = wide ? scatter((uint64_t)seed << 8 | (uint64_t)i) : 1000 + (uint64_t)i;
	}
	memset(tag_frees, 0, sizeof(tag_frees));
	ntags = 0;
	struct inode_config cfg = {.semi_space = 4 << 10,
				   .old_space = 32 << 10,
				   .trace_gc = 1,
				   .trace = count_trace,
				   .idle_min = 4}; /* so that idle cycles begin among 64 files */
	struct inode_table *t;
	assert_int_equal(inode_table_new(7, 2, tag_free, &cfg, &t), 0);
	for (int s = 0; s < steps; s++) {
		gc_lines = 0;
		model_step(t);
		if (gc_lines != 0 || s % 50 == 0)
			model_check(t, s % 97 == 0);
	}
	model_check(t, 1);
	inode_table_free(t);
	for (int i = 0; i < ntags; i++)
		if (tag_frees[i] != 1)
			fail_msg("seed %u: data %d freed %d times", seed, i, tag_frees[i]);
}

static void property_model(void **state)
{
	(void)state;
	for (unsigned seed = 1; seed <= 300; seed++)
		run_model(seed, 1000);
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
	    cmocka_unit_test_setup_teardown(unhashed_number_is_a_new_file, setup, teardown),
	    cmocka_unit_test_setup_teardown(data_slot, setup, teardown),
	    cmocka_unit_test_setup_teardown(looks_leave_no_side_entry, setup, teardown),
	    cmocka_unit_test_setup_teardown(devices_are_told_apart, setup, teardown),
	    cmocka_unit_test_setup_teardown(wide_inode_numbers_are_told_apart, setup, teardown),
	    cmocka_unit_test_setup_teardown(short_names_make_small_records, setup, teardown),
	    cmocka_unit_test_setup_teardown(wide_records_carry_their_identity, setup, teardown),
	    cmocka_unit_test(scattered_numbers_one_device),
	    cmocka_unit_test(scattered_numbers_many_devices),
	    cmocka_unit_test_setup_teardown(many_lookups_and_pins, setup, teardown),
	    cmocka_unit_test_setup_teardown(many_records, setup, teardown),
	    cmocka_unit_test_setup_teardown(index_growth_keeps_entries_findable, setup, teardown),
	    cmocka_unit_test(forgotten_records_are_collected),
	    cmocka_unit_test(idle_cycle_reclaims_forgotten),
	    cmocka_unit_test_setup_teardown(long_renames, setup, teardown),
	    cmocka_unit_test(full_heap_says_enomem),
	    cmocka_unit_test(property_model),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
