/*
 * test_heap.c - the metadata heap: handles, barriers, roots, limits, stats, and a property
 * test that runs random programs against a shadow model.
 *
 * The shadow model knows every object's contents, references and root count, and so which
 * objects are reachable. After every step the heap must agree: reachable objects keep their
 * bytes and references, heap_verify passes, and after two full collections every object the
 * model calls garbage has a stale handle (one full collection may keep floating garbage that
 * only dead old objects referenced). The PRNG is seeded per run; a failure prints the seed,
 * and HEAP_SEED=n reruns just that one.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "heap.h"

/* A clock that advances by `tick` ns on every read: pauses become exact. */
struct fake_clock {
	uint64_t now, tick;
	unsigned traces;
	char last[256];
};

static uint64_t fake_now(void *arg)
{
	struct fake_clock *c = arg;
	c->now += c->tick;
	return c->now;
}

static void fake_trace(void *arg, const char *line)
{
	struct fake_clock *c = arg;
	c->traces++;
	snprintf(c->last, sizeof(c->last), "%s", line);
}

static struct heap *new_heap(size_t semi, size_t old, struct fake_clock *clk)
{
	struct heap_config cfg = {.semi_space = semi, .old_space = old, .promote_age = 1};
	if (semi != 0 && semi / 4 < HEAP_DEFAULT_LARGE_OBJECT)
		cfg.large_object = semi / 4;
	if (clk != NULL) {
		cfg.clock_ns = fake_now;
		cfg.trace = fake_trace;
		cfg.arg = clk;
	}
	struct heap *h = NULL;
	assert_int_equal(heap_new(&cfg, &h), 0);
	return h;
}

static void check(struct heap *h)
{
	char err[256] = "";
	int rc = heap_verify(h, err, sizeof(err));
	if (rc != 0)
		fail_msg("heap_verify: %s", err);
}

static void fill(struct heap *h, uint64_t obj, unsigned seed)
{
	size_t n = 0;
	assert_int_equal(heap_shape(h, obj, NULL, &n), 0);
	unsigned char *p = heap_deref(h, obj);
	assert_non_null(p);
	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)(seed * 131 + i * 7 + 1);
}

static int intact(struct heap *h, uint64_t obj, unsigned seed)
{
	size_t n = 0;
	if (heap_shape(h, obj, NULL, &n) != 0)
		return 0;
	const unsigned char *p = heap_deref(h, obj);
	for (size_t i = 0; i < n; i++)
		if (p[i] != (unsigned char)(seed * 131 + i * 7 + 1))
			return 0;
	return 1;
}

static void handles_are_stable_and_go_stale(void **state)
{
	(void)state;
	struct heap *h = new_heap(0, 0, NULL);
	uint64_t a = heap_alloc(h, 1, 0, 24);
	assert_true(a != 0);
	fill(h, a, 5);
	assert_int_equal(heap_type(h, a), 1);
	assert_null(heap_deref(h, 0));
	assert_null(heap_deref(h, a + ((uint64_t)1 << 32))); /* wrong generation */
	assert_null(heap_deref(h, a + 12345));		     /* slot never used */
	for (int i = 0; i < 3; i++) {
		assert_int_equal(heap_collect(h, i == 1 ? HEAP_FULL : HEAP_MINOR), 0);
		check(h);
		assert_true(intact(h, a, 5));
	}
	assert_int_equal(heap_root_dec(h, a), 0);
	assert_int_equal(heap_root_dec(h, a), -EINVAL);
	assert_int_equal(heap_collect(h, HEAP_FULL), 0);
	check(h);
	assert_null(heap_deref(h, a));
	assert_int_equal(heap_type(h, a), -ESTALE);
	assert_int_equal(heap_root_inc(h, a), -ESTALE);
	assert_int_equal(heap_root_dec(h, a), -ESTALE);
	/* The freed slot is reused with a new generation: same index, different handle. */
	uint64_t b = heap_alloc(h, 2, 0, 8);
	assert_true(b != 0 && b != a);
	assert_true((uint32_t)b == (uint32_t)a);
	assert_null(heap_deref(h, a));
	assert_non_null(heap_deref(h, b));
	heap_free(h);
}

static void rejects_bad_arguments(void **state)
{
	(void)state;
	struct heap *h = NULL;
	struct heap_config bad = {.semi_space = 1024};
	assert_int_equal(heap_new(&bad, &h), -EINVAL);
	bad = (struct heap_config){.large_object = HEAP_DEFAULT_SEMI_SPACE};
	assert_int_equal(heap_new(&bad, &h), -EINVAL);
	bad = (struct heap_config){.compact_threshold = 1.5};
	assert_int_equal(heap_new(&bad, &h), -EINVAL);
	h = new_heap(0, 0, NULL);
	errno = 0;
	assert_true(heap_alloc(h, HEAP_TYPE_MAX + 1, 0, 0) == 0);
	assert_int_equal(errno, EINVAL);
	assert_true(heap_alloc(h, 0, HEAP_REFS_MAX + 1, 0) == 0);
	assert_true(heap_alloc(h, 0, 0, HEAP_BYTES_MAX + 1) == 0);
	uint64_t a = heap_alloc(h, 0, 2, 0), t;
	assert_true(a != 0);
	assert_int_equal(heap_set_ref(h, a, 2, 0), -EINVAL);
	assert_int_equal(heap_get_ref(h, a, 2, &t), -EINVAL);
	assert_int_equal(heap_set_ref(h, a, 0, a + 999), -ESTALE);
	assert_int_equal(heap_set_ref(h, 0, 0, a), -ESTALE);
	assert_int_equal(heap_set_ref(h, a, 1, a), 0); /* a self-reference is fine */
	assert_int_equal(heap_get_ref(h, a, 1, &t), 0);
	assert_true(t == a);
	assert_int_equal(heap_collect(h, 7), -EINVAL);
	heap_free(h);
}

/* An old object gets a young referent that nothing else keeps alive: only the remembered
 * set can save it at the next scavenge. */
static void barrier_keeps_young_referent(void **state)
{
	(void)state;
	struct heap *h = new_heap(64 << 10, 1 << 20, NULL);
	uint64_t parent = heap_alloc(h, 1, 1, 16);
	assert_int_equal(heap_collect(h, HEAP_MINOR), 0); /* promote_age 1: parent is old */
	struct heap_stats st;
	heap_stats(h, &st);
	assert_true(st.young.promoted_bytes > 0);
	assert_true(st.young.used == 0);
	uint64_t child = heap_alloc(h, 2, 0, 40);
	fill(h, child, 9);
	assert_int_equal(heap_set_ref(h, parent, 0, child), 0);
	assert_int_equal(heap_root_dec(h, child), 0);
	check(h);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(heap_collect(h, HEAP_MINOR), 0);
		check(h);
		assert_true(intact(h, child, 9));
	}
	/* Unlink: the child is garbage and goes away with the parent's next full cycle. */
	assert_int_equal(heap_set_ref(h, parent, 0, 0), 0);
	assert_int_equal(heap_collect(h, HEAP_FULL), 0);
	check(h);
	assert_null(heap_deref(h, child));
	assert_non_null(heap_deref(h, parent));
	heap_free(h);
}

/* What roots reference stays alive; dropping the root frees the whole chain. */
static void roots_keep_chains_alive(void **state)
{
	(void)state;
	struct heap *h = new_heap(64 << 10, 1 << 20, NULL);
	uint64_t chain[50];
	for (int i = 0; i < 50; i++) {
		chain[i] = heap_alloc(h, 3, 1, (size_t)i);
		assert_true(chain[i] != 0);
		fill(h, chain[i], (unsigned)i);
		if (i > 0) {
			assert_int_equal(heap_set_ref(h, chain[i - 1], 0, chain[i]), 0);
			assert_int_equal(heap_root_dec(h, chain[i]), 0);
		}
		if (i == 25)
			assert_int_equal(heap_collect(h, HEAP_MINOR), 0); /* half old, half young */
	}
	assert_int_equal(heap_collect(h, HEAP_FULL), 0);
	check(h);
	for (int i = 0; i < 50; i++)
		assert_true(intact(h, chain[i], (unsigned)i));
	assert_int_equal(heap_root_inc(h, chain[40]), 0);
	assert_int_equal(heap_root_dec(h, chain[0]), 0);
	assert_int_equal(heap_collect(h, HEAP_FULL), 0);
	check(h);
	for (int i = 0; i < 50; i++)
		assert_true(i >= 40 ? intact(h, chain[i], (unsigned)i)
				    : heap_deref(h, chain[i]) == NULL);
	struct heap_stats st;
	heap_stats(h, &st);
	assert_true(st.objects == 10);
	heap_free(h);
}

/* Filling the old space returns ENOMEM, never crashes, and keeps every record intact; once
 * refused, allocations fail without collecting until something is let go. */
static void enomem_keeps_records(void **state)
{
	(void)state;
	struct heap *h = new_heap(16 << 10, 64 << 10, NULL);
	uint64_t live[4096];
	size_t n = 0;
	for (;;) {
		errno = 0;
		uint64_t a = heap_alloc(h, 1, 1, 100);
		if (a == 0) {
			assert_int_equal(errno, ENOMEM);
			break;
		}
		assert_true(n < 4096);
		fill(h, a, (unsigned)n);
		live[n++] = a;
	}
	check(h);
	/* semi 16K + old 64K with 120-byte objects: at most (16K + 64K) / 120 fit. */
	assert_true(n > 400 && n <= (80 << 10) / 120);
	for (size_t i = 0; i < n; i++)
		assert_true(intact(h, live[i], (unsigned)i));
	assert_true(heap_alloc(h, 1, 0, 5000) == 0); /* large objects too */
	/* Refused again without another full collection: nothing was let go since the last. */
	struct heap_stats st;
	heap_stats(h, &st);
	uint64_t fulls = st.old.fulls;
	for (int i = 0; i < 100; i++)
		assert_true(heap_alloc(h, 1, 1, 100) == 0 && heap_alloc(h, 1, 0, 5000) == 0);
	heap_stats(h, &st);
	assert_int_equal(st.old.fulls, fulls);
	for (size_t i = 0; i < n; i += 2)
		assert_int_equal(heap_root_dec(h, live[i]), 0);
	assert_true(heap_alloc(h, 1, 1, 100) != 0);
	check(h);
	for (size_t i = 1; i < n; i += 2)
		assert_true(intact(h, live[i], (unsigned)i));
	/* Letting go of a reference counts too: fill the heap with a chain that only its head
	 * roots, then cut the chain after the head. */
	uint64_t head = heap_alloc(h, 1, 1, 100), prev = head, x;
	assert_true(head != 0);
	while ((x = heap_alloc(h, 1, 1, 100)) != 0) {
		assert_int_equal(heap_set_ref(h, prev, 0, x), 0);
		assert_int_equal(heap_root_dec(h, x), 0);
		prev = x;
	}
	assert_true(heap_alloc(h, 1, 1, 100) == 0);
	assert_int_equal(heap_set_ref(h, head, 0, 0), 0);
	assert_true(heap_alloc(h, 1, 1, 100) != 0);
	check(h);
	heap_free(h);
}

/* Large objects are never copied and are reclaimed like any other. */
static void large_objects_stay_put(void **state)
{
	(void)state;
	struct heap *h = new_heap(64 << 10, 1 << 20, NULL);
	uint64_t big = heap_alloc(h, 4, 1, 20000);
	uint64_t small = heap_alloc(h, 5, 0, 8);
	assert_true(big != 0 && small != 0);
	fill(h, big, 3);
	void *at = heap_deref(h, big);
	assert_int_equal(heap_set_ref(h, big, 0, small), 0);
	assert_int_equal(heap_root_dec(h, small), 0);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(heap_collect(h, i % 2 ? HEAP_FULL : HEAP_MINOR), 0);
		check(h);
		assert_ptr_equal(heap_deref(h, big), at);
		assert_true(intact(h, big, 3));
		assert_non_null(heap_deref(h, small));
	}
	assert_int_equal(heap_root_dec(h, big), 0);
	assert_int_equal(heap_collect(h, HEAP_FULL), 0);
	assert_int_equal(heap_collect(h, HEAP_FULL), 0);
	check(h);
	assert_null(heap_deref(h, big));
	assert_null(heap_deref(h, small));
	heap_free(h);
}

/* Large objects are listed in a table their handles index; when one in the middle dies, the
 * last one takes its place and its handle follows it: every survivor stays where it was,
 * intact, and the dead ones go stale. */
static void large_objects_die_in_any_order(void **state)
{
	(void)state;
	struct heap *h = new_heap(64 << 10, 1 << 20, NULL);
	enum { N = 9 };
	uint64_t big[N];
	void *at[N];
	for (unsigned i = 0; i < N; i++) {
		big[i] = heap_alloc(h, 4, i % 3, 5000 + 8 * i);
		assert_true(big[i] != 0);
		fill(h, big[i], i);
		at[i] = heap_deref(h, big[i]);
	}
	for (unsigned round = 0; round < 3; round++) {
		for (unsigned i = round; i < N; i += 3) /* the middle first, then the last ones */
			assert_int_equal(heap_root_dec(h, big[(i * 4) % N]), 0);
		assert_int_equal(heap_collect(h, HEAP_FULL), 0);
		check(h);
		for (unsigned i = 0; i < N; i++) {
			unsigned dead_round =
			    ((i * 7) % N) % 3; /* (i * 4) % N = j <=> i = 7 j % N */
			if (dead_round <= round) {
				assert_null(heap_deref(h, big[i]));
			} else {
				assert_ptr_equal(heap_deref(h, big[i]), at[i]);
				assert_true(intact(h, big[i], i));
			}
		}
	}
	heap_free(h);
}

/* A root count has room for thousands of roots (the daemon holds one per record); past its
 * cap heap_root_inc says -EOVERFLOW and changes nothing. */
static void root_count_saturates(void **state)
{
	(void)state;
	struct heap *h = new_heap(0, 0, NULL);
	uint64_t a = heap_alloc(h, 1, 0, 8);
	assert_true(a != 0);
	long n = 1;
	int rc;
	while ((rc = heap_root_inc(h, a)) == 0)
		n++;
	assert_int_equal(rc, -EOVERFLOW);
	assert_true(n >= 4000);
	assert_int_equal(heap_root_count(h, a), n);
	check(h);
	for (long i = 0; i < n; i++)
		assert_int_equal(heap_root_dec(h, a), 0);
	assert_int_equal(heap_root_dec(h, a), -EINVAL);
	assert_int_equal(heap_collect(h, HEAP_MINOR), 0);
	assert_null(heap_deref(h, a));
	check(h);
	heap_free(h);
}

/* An object header is one word that keeps nbytes % 8 and the size in words; objects with
 * more than 255 references or past large_object keep theirs beside a large object. Every
 * shape reads back exactly, in the young generation, old, and after compaction. */
static void shapes_survive_moves(void **state)
{
	(void)state;
	struct heap *h = new_heap(64 << 10, 4 << 20, NULL);
	static const size_t nrefs[] = {0, 1, 7, 255, 256, 300};
	enum { NB = 17, NR = sizeof(nrefs) / sizeof(nrefs[0]) };
	uint64_t obj[NR][NB];
	for (size_t r = 0; r < NR; r++)
		for (size_t b = 0; b < NB; b++) {
			obj[r][b] = heap_alloc(h, (unsigned)(r * NB + b) % (HEAP_TYPE_MAX + 1),
					       nrefs[r], b == NB - 1 ? 5000 : b);
			assert_true(obj[r][b] != 0);
			fill(h, obj[r][b], (unsigned)(r * NB + b));
		}
	for (int round = 0; round < 3; round++) {
		for (size_t r = 0; r < NR; r++)
			for (size_t b = 0; b < NB; b++) {
				size_t nr = 0, nb = 0;
				assert_int_equal(heap_shape(h, obj[r][b], &nr, &nb), 0);
				assert_true(nr == nrefs[r] && nb == (b == NB - 1 ? 5000 : b));
				assert_int_equal(heap_type(h, obj[r][b]),
						 (int)((r * NB + b) % (HEAP_TYPE_MAX + 1)));
				assert_true(intact(h, obj[r][b], (unsigned)(r * NB + b)));
				uint64_t t = 1;
				if (nr != 0)
					assert_int_equal(heap_get_ref(h, obj[r][b], nr - 1, &t), 0);
				assert_true(t == (nr != 0 ? 0 : 1));
				assert_int_equal(heap_get_ref(h, obj[r][b], nr, &t), -EINVAL);
			}
		check(h);
		assert_int_equal(heap_collect(h, round == 0 ? HEAP_MINOR : HEAP_FULL), 0);
	}
	struct heap_config bad = {.promote_age = 4}; /* the age field holds 0..3 */
	struct heap *h2 = NULL;
	assert_int_equal(heap_new(&bad, &h2), -EINVAL);
	heap_free(h);
}

/* The semi-space limit is a limit: the heap uses HEAP_SEMI_SPACE_USED of a bigger one. When
 * every young object survives (a burst of lookups), a scavenge promotes early rather than
 * fill to-space, so allocation goes on with scavenges alone, never a full collection. */
static void young_generation_stays_small(void **state)
{
	(void)state;
	struct heap_config cfg = {.semi_space = 8 * HEAP_SEMI_SPACE_USED, .old_space = 64 << 20};
	struct heap *h = NULL;
	assert_int_equal(heap_new(&cfg, &h), 0);
	enum { N = 20000 };
	static uint64_t obj[N];
	struct heap_stats st;
	uint64_t scavenges = 0;
	for (unsigned i = 0; i < N; i++) {
		obj[i] = heap_alloc(h, 1, 1, 80);
		assert_true(obj[i] != 0);
		fill(h, obj[i], i);
		heap_stats(h, &st);
		assert_true(st.young.size == HEAP_SEMI_SPACE_USED);
		assert_true(st.young.used <= HEAP_SEMI_SPACE_USED);
		if (st.young.scavenges != scavenges) /* just after one: at most half full */
			assert_true(st.young.used <= HEAP_SEMI_SPACE_USED / 2 + 2 * 120);
		scavenges = st.young.scavenges;
	}
	check(h);
	assert_true(st.young.scavenges >= (uint64_t)N * 120 / HEAP_SEMI_SPACE_USED);
	assert_true(st.old.mark_compacts == 0 && st.old.mark_sweeps == 0);
	assert_true(st.heap_total < 2 * HEAP_SEMI_SPACE_USED + st.old.used + (4 << 20));
	for (unsigned i = 0; i < N; i++)
		assert_true(intact(h, obj[i], i));
	heap_free(h);
}

/* Memory is committed in proportion to use: a fresh heap (default limits) holds no page, a
 * few records a few pages, and the committed total (heap_total) follows the live bytes up
 * and never falls below heap_used; contents survive the scavenges in between. */
static void memory_follows_use(void **state)
{
	(void)state;
	struct heap *h = NULL;
	assert_int_equal(heap_new(NULL, &h), 0);
	struct heap_stats st;
	heap_stats(h, &st);
	assert_true(st.heap_total == 0);
	enum { N = 30000 };
	static uint64_t obj[N];
	uint64_t scavenges = 0, promoted = 0, most = 0; /* the largest promotion of a scavenge */
	for (unsigned i = 0; i < N; i++) {
		obj[i] = heap_alloc(h, 1, 1, 80);
		assert_true(obj[i] != 0);
		fill(h, obj[i], i);
		heap_stats(h, &st);
		assert_true(st.heap_used <= st.heap_total);
		if (i == 0) /* a few pages of semi-space and one of handle slots */
			assert_true(st.heap_total <= (20 << 10));
		if (st.young.scavenges == scavenges + 1) {
			uint64_t p = st.young.promoted_bytes - promoted;
			most = p > most ? p : most;
		}
		scavenges = st.young.scavenges;
		promoted = st.young.promoted_bytes;
		/* beyond what is used: the rest of the young pair, the arena's commit-ahead (the
		 * largest promotion and a quarter, at least 16 KiB) and one step of handle slots
		 * (at most 8 KiB); nothing is garbage here */
		uint64_t ahead = most + most / 4 > (16 << 10) ? most + most / 4 : (16 << 10);
		assert_true(st.heap_total <= st.heap_used + 2 * HEAP_SEMI_SPACE_USED -
						 st.young.used + ahead + (8 << 10));
	}
	assert_true(most > (16 << 10)); /* the commit-ahead followed the promotions */
	check(h);
	assert_true(st.young.scavenges > 0 && st.old.used > (size_t)N * 80);
	for (unsigned i = 0; i < N; i++)
		assert_true(intact(h, obj[i], i));
	heap_free(h);
}

/* Memory follows use down too: once the kernel's records die (all but one in 1000), the
 * cycle that collects them compacts the arena and gives its pages back, at most a step per
 * call (each call one bounded pause), until what is committed is near what is used. The
 * survivors are intact. */
static void memory_given_back_after_a_cycle(void **state)
{
	(void)state;
	enum { N = 200000 };
	struct heap *h = new_heap(64 << 10, 64 << 20, NULL);
	static uint64_t obj[N];
	for (unsigned i = 0; i < N; i++) {
		assert_true((obj[i] = heap_alloc(h, 1, 0, 40)) != 0);
		fill(h, obj[i], i);
	}
	assert_int_equal(heap_collect(h, HEAP_MINOR), 0);
	struct heap_stats full, st;
	heap_stats(h, &full);
	assert_true(full.heap_total > (size_t)N * 40);
	for (unsigned i = 0; i < N; i++)
		if (i % 1000 != 0)
			assert_int_equal(heap_root_dec(h, obj[i]), 0);
	assert_int_equal(heap_collect(h, HEAP_CYCLE), 0);
	uint64_t trimmed = full.old.trimmed;
	unsigned calls = 0;
	while (heap_step(h, 64 << 10) == 1) {
		heap_stats(h, &st);
		assert_true(st.old.trimmed - trimmed <= (1 << 20)); /* TRIM_STEP a pause */
		trimmed = st.old.trimmed;
		assert_true(++calls < 100000);
	}
	heap_stats(h, &st);
	check(h);
	assert_true(st.old.trimmed - full.old.trimmed > (size_t)N * 40 / 2);
	/* left committed: the used bytes, the young pair, the ahead, a trim's worth below
	 * TRIM_MIN, and the handle table (its slots keep their generations) */
	assert_true(st.heap_total <= st.heap_used + (size_t)N * 8 + 2 * HEAP_SEMI_SPACE_USED +
					 (128 << 10) + (256 << 10) + 4096);
	assert_true(st.heap_total < full.heap_total / 3);
	for (unsigned i = 0; i < N; i += 1000)
		assert_true(intact(h, obj[i], i));
	/* and it grows again as before */
	for (unsigned i = 1; i < N; i += 2) {
		assert_true((obj[i] = heap_alloc(h, 1, 0, 40)) != 0);
		fill(h, obj[i], i);
	}
	assert_int_equal(heap_collect(h, HEAP_MINOR), 0);
	for (unsigned i = 1; i < N; i += 2)
		assert_true(intact(h, obj[i], i));
	check(h);
	heap_free(h);
}

/* Dropping most of a full old space fragments it; the next full cycle compacts. */
static void fragmentation_triggers_compaction(void **state)
{
	(void)state;
	struct heap *h = new_heap(64 << 10, 4 << 20, NULL);
	enum { N = 8000 };
	static uint64_t obj[N];
	for (unsigned i = 0; i < N; i++) {
		obj[i] = heap_alloc(h, 1, 0, 48 + (i % 5) * 8);
		assert_true(obj[i] != 0);
		fill(h, obj[i], i);
	}
	assert_int_equal(heap_collect(h, HEAP_FULL), 0);
	struct heap_stats before, after;
	heap_stats(h, &before);
	for (unsigned i = 0; i < N; i++)
		if (i % 4 != 0)
			assert_int_equal(heap_root_dec(h, obj[i]), 0);
	assert_int_equal(heap_collect(h, HEAP_FULL), 0);
	check(h);
	heap_stats(h, &after);
	assert_true(after.old.mark_compacts == before.old.mark_compacts + 1);
	assert_true(after.old.used < before.old.used / 3);
	assert_true(after.old.fragmentation == 0.0);
	for (unsigned i = 0; i < N; i++)
		assert_true(i % 4 == 0 ? intact(h, obj[i], i) : heap_deref(h, obj[i]) == NULL);
	/* Below the threshold, a full cycle sweeps: free chunks, fragmentation > 0. */
	for (unsigned i = 0; i < N; i += 12)
		assert_int_equal(heap_root_dec(h, obj[i]), 0);
	assert_int_equal(heap_collect(h, HEAP_FULL), 0);
	check(h);
	heap_stats(h, &before);
	assert_true(before.old.mark_sweeps > after.old.mark_sweeps);
	assert_true(before.old.fragmentation > 0.2 && before.old.fragmentation < 0.45);
	for (unsigned i = 0; i < N; i += 4)
		assert_true(i % 12 == 0 ? heap_deref(h, obj[i]) == NULL : intact(h, obj[i], i));
	/* The free chunks are reused: new promotions do not grow the arena. */
	uint64_t used = before.old.used;
	for (unsigned i = 0; i < 200; i++)
		assert_true(heap_alloc(h, 1, 0, 48) != 0);
	assert_int_equal(heap_collect(h, HEAP_MINOR), 0);
	check(h);
	heap_stats(h, &after);
	assert_true(after.old.used > used);
	assert_true(after.old.fragmentation < before.old.fragmentation);
	heap_free(h);
}

/* A cycle that finds the old space mostly garbage compacts in bounded slices, not in one
 * pause: objects slide down between the mutator's calls, handles and references stay valid,
 * objects promoted meanwhile are kept, and the arena ends with no free space inside. */
static void compaction_runs_in_slices(void **state)
{
	(void)state;
	struct heap_config cfg = {.semi_space = 64 << 10,
				  .old_space = 4 << 20,
				  .promote_age = 1,
				  .large_object = 8 << 10,
				  .compact_threshold = 0.3};
	struct heap *h = NULL;
	assert_int_equal(heap_new(&cfg, &h), 0);
	enum { N = 8000, M = 400 };
	static uint64_t obj[N], late[M];
	for (unsigned i = 0; i < N; i++) {
		obj[i] = heap_alloc(h, 1, 1, 48);
		assert_true(obj[i] != 0);
		fill(h, obj[i], i);
		if (i % 4 == 0 && i >= 4)
			assert_int_equal(heap_set_ref(h, obj[i], 0, obj[i - 4]), 0);
	}
	assert_int_equal(heap_collect(h, HEAP_FULL), 0);
	struct heap_stats before, st;
	heap_stats(h, &before);
	for (unsigned i = 0; i < N; i++)
		if (i % 4 != 0 || i < N / 2) /* the upper half of the chain holds the lower */
			assert_int_equal(heap_root_dec(h, obj[i]), 0);
	unsigned slices = 0, compacting = 0, nlate = 0;
	/* Old garbage until the old space passes its trigger and a cycle starts. */
	while (heap_step(h, 64) == 0 && slices++ < 1000) {
		uint64_t batch[100];
		for (unsigned i = 0; i < 100; i++)
			assert_true((batch[i] = heap_alloc(h, 9, 0, 64)) != 0);
		assert_int_equal(heap_collect(h, HEAP_MINOR), 0);
		for (unsigned i = 0; i < 100; i++)
			assert_int_equal(heap_root_dec(h, batch[i]), 0);
	}
	for (slices = 0; slices < 100000; slices++) {
		heap_stats(h, &st);
		int in_compaction = st.old.mark_compacts > before.old.mark_compacts;
		if (in_compaction && nlate < M) { /* promoted while the compactor runs */
			late[nlate] = heap_alloc(h, 3, 0, 40);
			assert_true(late[nlate] != 0);
			fill(h, late[nlate], 10000 + nlate);
			nlate++;
			assert_int_equal(heap_collect(h, HEAP_MINOR), 0);
		}
		if (heap_step(h, 2048) == 0)
			break;
		compacting += in_compaction;
		if (slices % 8 == 0)
			check(h);
		for (unsigned i = 0; i < N && slices % 32 == 0; i += 4)
			assert_true(intact(h, obj[i], i));
	}
	check(h);
	heap_stats(h, &st);
	assert_true(st.old.mark_compacts == before.old.mark_compacts + 1);
	assert_true(compacting > 10 && nlate > 10);
	assert_true(st.old.fragmentation == 0.0 && st.old.used < before.old.used / 2);
	for (unsigned i = 0; i < N; i++) {
		uint64_t r = 0;
		if (i % 4 != 0) {
			assert_null(heap_deref(h, obj[i]));
			continue;
		}
		assert_true(intact(h, obj[i], i));
		assert_int_equal(heap_get_ref(h, obj[i], 0, &r), 0);
		assert_true(r == (i >= 4 ? obj[i - 4] : 0));
	}
	for (unsigned i = 0; i < nlate; i++)
		assert_true(intact(h, late[i], 10000 + i));
	heap_free(h);
}

/* Incremental marking in small slices while the mutator relinks objects under it. */
static void incremental_marking_with_mutation(void **state)
{
	(void)state;
	struct fake_clock clk = {.tick = 1000};
	struct heap *h = new_heap(64 << 10, 2 << 20, &clk);
	enum { N = 3000 };
	static uint64_t obj[N];
	uint64_t holder = heap_alloc(h, 1, 1, 0);
	for (unsigned i = 0; i < N; i++) { /* 3000 x 48 bytes: past the first marking trigger */
		obj[i] = heap_alloc(h, 2, 2, 24);
		fill(h, obj[i], i);
	}
	assert_int_equal(heap_collect(h, HEAP_MINOR), 0); /* everything old */
	/* Start a cycle by hand: heap_step starts marking once old usage passes the trigger,
	 * so drive it with full collections first to make the trigger small. */
	unsigned slices = 0;
	while (heap_step(h, 512) == 0 && slices < 100000) {
		uint64_t x = heap_alloc(h, 9, 0, 64);
		assert_int_equal(heap_root_dec(h, x), 0);
		slices++;
	}
	assert_true(slices < 100000); /* marking is under way */
	check(h);
	/* Mid-marking: move objects from roots into a chain hanging off `holder`. */
	uint64_t prev = holder;
	for (unsigned i = 0; i < N; i++) {
		if (i % 3 == 0) {
			assert_int_equal(heap_set_ref(h, prev, 0, obj[i]), 0);
			assert_int_equal(heap_root_dec(h, obj[i]), 0);
			prev = obj[i];
		} else if (i % 3 == 1) {
			assert_int_equal(heap_root_dec(h, obj[i]), 0); /* garbage */
		}
		if (i % 50 == 0)
			assert_true(heap_step(h, 256) >= 0);
		if (i % 500 == 0)
			check(h);
	}
	while (heap_step(h, 4096) != 0)
		;
	check(h);
	assert_int_equal(heap_collect(h, HEAP_FULL), 0);
	assert_int_equal(heap_collect(h, HEAP_FULL), 0);
	check(h);
	for (unsigned i = 0; i < N; i++) {
		if (i % 3 == 1)
			assert_null(heap_deref(h, obj[i]));
		else
			assert_true(intact(h, obj[i], i));
	}
	struct heap_stats st;
	heap_stats(h, &st);
	assert_true(st.old.mark_sweeps + st.old.mark_compacts >= 3);
	assert_true(clk.traces > 0);
	heap_free(h);
}

/* New objects start zeroed, refs and bytes, also where dead objects lay in the semi-space
 * before a scavenge (allocation no longer clears each object: the scavenge clears the space). */
static void new_objects_start_zeroed(void **state)
{
	(void)state;
	struct heap *h = new_heap(16 << 10, 1 << 20, NULL);
	for (unsigned round = 0; round < 8; round++) {
		uint64_t o[64];
		for (unsigned i = 0; i < 64; i++) {
			o[i] = heap_alloc(h, 1, 2, 40 + i % 5);
			assert_true(o[i] != 0);
			unsigned char *p = heap_deref(h, o[i]);
			for (size_t k = 0; k < 40 + i % 5; k++)
				assert_int_equal(p[k], 0);
			uint64_t r0 = 1, r1 = 1;
			assert_int_equal(heap_get_ref(h, o[i], 0, &r0), 0);
			assert_int_equal(heap_get_ref(h, o[i], 1, &r1), 0);
			assert_true(r0 == 0 && r1 == 0);
			fill(h, o[i], i); /* garbage for the next round to find */
			if (i > 0)
				assert_int_equal(heap_set_ref(h, o[i], 1, o[i - 1]), 0);
		}
		for (unsigned i = 0; i < 64; i++)
			assert_int_equal(heap_root_dec(h, o[i]), 0);
		assert_int_equal(heap_collect(h, HEAP_MINOR), 0);
		check(h); /* heap_verify: the free young space is zero */
	}
	heap_free(h);
}

/* Old-generation work is bounded per pause whatever the heap holds. A marking slice of
 * budget B marks at most about B bytes: every root it shades is charged, not only the slot it
 * read (it shaded B / 8 roots, 1.5 ms a slice at a million records). And a scavenge whose
 * promotions find no free chunk while a sweep is pending sweeps at most 128 KiB on their
 * behalf (each promotion swept 64 KiB: the whole arena in one pause when nothing had died). */
static void old_work_is_bounded_per_pause(void **state)
{
	(void)state;
	enum { N = 500000, B = 16 << 10 };
	struct heap *h = new_heap(64 << 10, 64 << 20, NULL);
	static uint64_t obj[N];
	struct heap_stats a, b;
	/* Rooted records of 40 bytes until a second marking cycle starts (the first one's
	 * trigger: twice the old space it left); checked every 100, so that allocation's own
	 * pacing has done at most one slice of it. */
	unsigned n = 0;
	uint64_t first = 0; /* bytes the first cycle marked: more means the second one marks */
	do {
		for (unsigned k = 0; k < 100 && n < N; k++, n++)
			assert_true((obj[n] = heap_alloc(h, 2, 1, 24)) != 0);
		heap_stats(h, &a);
		if (first == 0 && a.old.mark_sweeps + a.old.mark_compacts != 0)
			first = a.old.marked;
	} while ((first == 0 || a.old.marked == first) && n < N);
	assert_true(n < N);
	assert_int_equal(heap_step(h, B), 1);
	heap_stats(h, &b);
	assert_true(b.old.marked > a.old.marked);	    /* the slice did mark */
	assert_true(b.old.marked - a.old.marked <= B + 64); /* and no more than its budget */
	/* Finish marking by slices; the sweep is then pending over the whole arena. */
	while (b.old.mark_sweeps + b.old.mark_compacts == a.old.mark_sweeps + a.old.mark_compacts) {
		assert_int_equal(heap_step(h, B), 1);
		heap_stats(h, &b);
	}
	check(h);
	uint64_t young[200];
	for (unsigned i = 0; i < 200; i++) /* promoted at the next scavenge (promote_age 1) */
		young[i] = heap_alloc(h, 3, 0, 40);
	heap_stats(h, &a);
	assert_int_equal(heap_collect(h, HEAP_MINOR), 0);
	heap_stats(h, &b);
	assert_true(b.young.promoted_bytes - a.young.promoted_bytes >= 200 * 48);
	/* 128 KiB, in steps that may each end one object past their budget */
	assert_true(b.old.swept - a.old.swept <= (128 << 10) + 1024);
	assert_true(b.old.swept - a.old.swept < b.old.used / 4); /* not the arena: 14 MB */
	check(h);
	for (unsigned i = 0; i < 200; i++)
		assert_non_null(heap_deref(h, young[i]));
	for (unsigned i = 0; i < n; i++)
		assert_non_null(heap_deref(h, obj[i]));
	heap_free(h);
}

/* HEAP_CYCLE begins an old-generation cycle below the trigger, for an embedder that knows
 * much has died: heap_step alone does nothing there, and after HEAP_CYCLE it finishes the
 * cycle in slices, the dead objects gone and the live ones intact. During a sweep it begins
 * nothing (the sweep would have to finish in that pause). */
static void cycle_begins_below_the_trigger(void **state)
{
	(void)state;
	enum { N = 2000 };
	struct heap *h = new_heap(64 << 10, 64 << 20, NULL);
	static uint64_t obj[N];
	for (unsigned i = 0; i < N; i++)
		assert_true((obj[i] = heap_alloc(h, 2, 0, 40)) != 0);
	assert_int_equal(heap_collect(h, HEAP_MINOR), 0); /* all promoted (promote_age 1) */
	for (unsigned i = 0; i < N; i += 2)
		assert_int_equal(heap_root_dec(h, obj[i]), 0);
	struct heap_stats a, b;
	heap_stats(h, &a);
	assert_int_equal(heap_step(h, 1 << 20), 0); /* below the trigger: idle */
	heap_stats(h, &b);
	assert_int_equal(b.old.mark_sweeps + b.old.mark_compacts,
			 a.old.mark_sweeps + a.old.mark_compacts);
	assert_int_equal(b.objects, N);

	assert_int_equal(heap_collect(h, HEAP_CYCLE), 0);
	heap_stats(h, &b);
	assert_int_equal(b.young.scavenges, a.young.scavenges + 1);
	unsigned slices = 0;
	while (heap_step(h, 4 << 10) == 1) {
		check(h);
		assert_true(++slices < 100000);
	}
	assert_true(slices > 1); /* 4 KiB slices: the cycle took several */
	heap_stats(h, &b);
	assert_int_equal(b.old.mark_sweeps + b.old.mark_compacts,
			 a.old.mark_sweeps + a.old.mark_compacts + 1);
	assert_int_equal(b.objects, N / 2);
	for (unsigned i = 0; i < N; i++)
		assert_true((heap_deref(h, obj[i]) != NULL) == (i % 2 == 1));
	check(h);

	/* Another cycle, stopped while it sweeps: HEAP_CYCLE then only scavenges. */
	for (unsigned i = 1; i < N; i += 4)
		assert_int_equal(heap_root_dec(h, obj[i]), 0);
	assert_int_equal(heap_collect(h, HEAP_CYCLE), 0);
	heap_stats(h, &a);
	while (a.old.mark_sweeps + a.old.mark_compacts == b.old.mark_sweeps + b.old.mark_compacts) {
		assert_int_equal(heap_step(h, 4 << 10), 1);
		heap_stats(h, &a);
	}
	if (heap_step(h, 1) == 1) { /* still sweeping: the arena is larger than one step */
		heap_stats(h, &a);
		assert_int_equal(heap_collect(h, HEAP_CYCLE), 0);
		heap_stats(h, &b);
		assert_int_equal(b.old.mark_sweeps + b.old.mark_compacts,
				 a.old.mark_sweeps + a.old.mark_compacts);
		assert_true(b.old.swept - a.old.swept <= (128 << 10) + 1024);
		while (heap_step(h, 4 << 10) == 1)
			;
	}
	check(h);
	heap_stats(h, &b);
	assert_int_equal(b.objects, N / 4);
	heap_free(h);
}

/* The insertion barrier: during marking, a scanned (black) object B takes over the only
 * reference to an unscanned (white) W from a not yet scanned (grey) G. heap_step with
 * budget 1 does exactly one unit of work (one root slot or one object), which lets the test
 * stop right after B is scanned. Without the barrier W would be swept. */
static void insertion_barrier_saves_moved_referent(void **state)
{
	(void)state;
	struct heap *h = new_heap(16 << 10, 64 << 10, NULL);
	for (int i = 0; i < 100; i++)
		assert_true(heap_alloc(h, 1, 0, 48) != 0); /* rooted filler: passes the trigger */
	uint64_t g = heap_alloc(h, 2, 1, 0);
	uint64_t w = heap_alloc(h, 3, 0, 32);
	uint64_t b = heap_alloc(h, 4, 1, 0);
	fill(h, w, 77);
	assert_int_equal(heap_set_ref(h, g, 0, w), 0);
	assert_int_equal(heap_root_dec(h, w), 0);
	assert_int_equal(heap_collect(h, HEAP_MINOR), 0); /* all old; starts marking */
	check(h);
	for (int i = 0; i < 103; i++) /* one root slot each */
		assert_int_equal(heap_step(h, 1), 1);
	assert_int_equal(heap_step(h, 1), 1); /* pops b, the last pushed: b is black */
	assert_int_equal(heap_set_ref(h, b, 0, w), 0);
	assert_int_equal(heap_set_ref(h, g, 0, 0), 0);
	while (heap_step(h, 1) != 0)
		;
	check(h);
	assert_true(intact(h, w, 77));
	uint64_t t = 0;
	assert_int_equal(heap_get_ref(h, b, 0, &t), 0);
	assert_true(t == w);
	heap_free(h);
}

/* Pause stats and trace lines follow the injected clock exactly. */
static void stats_follow_injected_clock(void **state)
{
	(void)state;
	struct fake_clock clk = {.tick = 250000}; /* 250 us per clock read */
	struct heap *h = new_heap(64 << 10, 1 << 20, &clk);
	uint64_t a = heap_alloc(h, 1, 0, 100);
	assert_true(a != 0);
	struct heap_stats st;
	heap_stats(h, &st);
	assert_true(st.objects == 1);
	assert_true(st.young.size == HEAP_SEMI_SPACE_USED && st.old.size == 1 << 20);
	assert_true(st.young.used == 8 + 104);		/* an 8-byte header, the bytes rounded up */
	assert_true(st.heap_used == st.young.used + 8); /* one 8-byte handle slot */
	assert_int_equal(heap_collect(h, HEAP_MINOR), 0);
	heap_stats(h, &st);
	assert_true(st.pause_us.last == 250 && st.pause_us.max == 250 && st.pause_us.total == 250);
	assert_true(st.young.scavenges == 1 && st.young.promoted_bytes == 112);
	assert_true(st.old.used == 112 && st.young.used == 0);
	assert_int_equal(clk.traces, 1);
	assert_non_null(strstr(clk.last, "scavenge"));
	assert_int_equal(heap_collect(h, HEAP_FULL), 0);
	heap_stats(h, &st);
	assert_true(st.pause_us.total == 500 && st.old.mark_sweeps + st.old.mark_compacts == 1);
	assert_true(clk.traces >= 2);
	assert_non_null(strstr(clk.last, "mark-"));
	heap_free(h);
}

/* ---- property test ---- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
	/* splitmix64: tiny, deterministic, good enough for test programs */
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static unsigned below(unsigned n)
{
	return (unsigned)(rnd() % n);
}

enum { MAXOBJ = 400, MAXREFS = 3, STEPS = 400 };

struct model {
	uint64_t handle;
	unsigned roots, nrefs;
	int refs[MAXREFS]; /* model indices, -1: null */
	int alive;	   /* reachable at the last check; 0: garbage, never touched again */
};

struct world {
	struct heap *h;
	struct model m[MAXOBJ];
	int n;
	unsigned seed;
};

static void mark_reachable(struct world *w, int i, char *seen)
{
	if (i < 0 || seen[i])
		return;
	seen[i] = 1;
	for (unsigned r = 0; r < w->m[i].nrefs; r++)
		mark_reachable(w, w->m[i].refs[r], seen);
}

/* Recomputes reachability; objects that became garbage are never used again. */
static void settle(struct world *w)
{
	char seen[MAXOBJ] = {0};
	for (int i = 0; i < w->n; i++)
		if (w->m[i].alive && w->m[i].roots > 0)
			mark_reachable(w, i, seen);
	for (int i = 0; i < w->n; i++)
		if (!seen[i])
			w->m[i].alive = 0;
}

static void agree(struct world *w, const char *when, int all_garbage_gone)
{
	char err[256] = "";
	if (heap_verify(w->h, err, sizeof(err)) != 0)
		fail_msg("seed %u after %s: heap_verify: %s", w->seed, when, err);
	for (int i = 0; i < w->n; i++) {
		struct model *o = &w->m[i];
		if (!o->alive) {
			if (all_garbage_gone && heap_deref(w->h, o->handle) != NULL)
				fail_msg("seed %u after %s: garbage object %d survived", w->seed,
					 when, i);
			continue;
		}
		if (!intact(w->h, o->handle, (unsigned)i))
			fail_msg("seed %u after %s: object %d lost its bytes", w->seed, when, i);
		for (unsigned r = 0; r < o->nrefs; r++) {
			uint64_t t = 1;
			int want = o->refs[r];
			if (heap_get_ref(w->h, o->handle, r, &t) != 0 ||
			    t != (want < 0 ? 0 : w->m[want].handle))
				fail_msg("seed %u after %s: object %d ref %u wrong", w->seed, when,
					 i, r);
		}
	}
}

static int pick_alive(struct world *w)
{
	if (w->n == 0)
		return -1;
	for (int tries = 0; tries < 8; tries++) {
		int i = (int)below((unsigned)w->n);
		if (w->m[i].alive)
			return i;
	}
	return -1;
}

/* What the random programs exercised, summed over all seeds: the property test fails if a
 * change to the generator stops covering some path of the collector. */
static struct {
	uint64_t scavenges, sweeps, compacts, enomem, promoted;
} seen;

static void run_program(unsigned seed, int steps)
{
	struct world *w = calloc(1, sizeof(*w));
	assert_non_null(w);
	w->seed = seed;
	rng_state = seed;
	size_t semi = (size_t)4096 << below(4);
	size_t old = (size_t)16384 << below(4);
	struct heap_config cfg = {.semi_space = semi,
				  .old_space = old,
				  .promote_age = 1 + below(2),
				  .large_object = semi / 4,
				  .compact_threshold = 0.2 + 0.2 * below(4)};
	if (heap_new(&cfg, &w->h) != 0)
		fail_msg("seed %u: heap_new", seed);
	unsigned allocs = 0, ok_allocs = 0;
	uint64_t last_cycles = 0;
	for (int s = 0; s < steps; s++) {
		unsigned op = below(100);
		int a = pick_alive(w), b = pick_alive(w);
		const char *what = "op";
		if (op < 35 && w->n < MAXOBJ) {
			unsigned nrefs = below(MAXREFS + 1);
			size_t nbytes = below(8) == 0 ? semi / 4 + below(600) : below(120);
			settle(w);
			allocs++;
			errno = 0;
			uint64_t hd = heap_alloc(w->h, below(HEAP_TYPE_MAX + 1), nrefs, nbytes);
			what = "alloc";
			if (hd == 0) {
				if (errno != ENOMEM)
					fail_msg("seed %u: alloc failed with %d", seed, errno);
			} else {
				ok_allocs++;
				struct model *o = &w->m[w->n];
				*o = (struct model){
				    .handle = hd, .roots = 1, .nrefs = nrefs, .alive = 1};
				for (unsigned r = 0; r < MAXREFS; r++)
					o->refs[r] = -1;
				fill(w->h, hd, (unsigned)w->n);
				w->n++;
			}
		} else if (op < 60 && a >= 0 && w->m[a].nrefs > 0) {
			unsigned r = below(w->m[a].nrefs);
			int t = below(4) == 0 ? -1 : b;
			if (heap_set_ref(w->h, w->m[a].handle, r, t < 0 ? 0 : w->m[t].handle) != 0)
				fail_msg("seed %u: set_ref failed", seed);
			w->m[a].refs[r] = t;
			what = "set_ref";
		} else if (op < 72 && a >= 0) {
			if (heap_root_inc(w->h, w->m[a].handle) != 0)
				fail_msg("seed %u: root_inc failed", seed);
			w->m[a].roots++;
			what = "root_inc";
		} else if (op < 90 && a >= 0 && w->m[a].roots > 0) {
			if (heap_root_dec(w->h, w->m[a].handle) != 0)
				fail_msg("seed %u: root_dec failed", seed);
			w->m[a].roots--;
			what = "root_dec";
		} else if (op < 93) {
			settle(w);
			bool cycle = below(4) == 0; /* sometimes an idle cycle's start instead */
			if (heap_collect(w->h, cycle ? HEAP_CYCLE : HEAP_MINOR) != 0)
				fail_msg("seed %u: %s failed", seed, cycle ? "cycle" : "minor");
			what = cycle ? "cycle" : "minor";
		} else if (op < 98) {
			settle(w);
			heap_step(w->h, 16 + below(below(2) ? 256 : 4096));
			what = "step";
		} else {
			settle(w);
			if (heap_collect(w->h, HEAP_FULL) != 0)
				fail_msg("seed %u: full failed", seed);
			what = "full";
		}
		/* Full agreement after every collection (any op that changed the collector's
		 * counters), and every 16th step regardless. */
		struct heap_stats st;
		heap_stats(w->h, &st);
		uint64_t cycles = st.young.scavenges + st.old.mark_sweeps + st.old.mark_compacts;
		if (cycles != last_cycles || s % 16 == 0)
			agree(w, what, 0);
		last_cycles = cycles;
	}
	settle(w);
	if (heap_collect(w->h, HEAP_FULL) != 0)
		fail_msg("seed %u: final full failed", seed);
	agree(w, "final full collections", 1);
	struct heap_stats st;
	heap_stats(w->h, &st);
	seen.scavenges += st.young.scavenges;
	seen.sweeps += st.old.mark_sweeps;
	seen.compacts += st.old.mark_compacts;
	seen.promoted += st.young.promoted_bytes;
	seen.enomem += allocs - ok_allocs;
	/* ENOMEM must be the exception: the model never holds more than MAXOBJ objects. */
	if (allocs > 20 && ok_allocs * 2 < allocs)
		fail_msg("seed %u: only %u of %u allocations succeeded", seed, ok_allocs, allocs);
	heap_free(w->h);
	free(w);
}

static void property_random_programs(void **state)
{
	(void)state;
	const char *one = getenv("HEAP_SEED");
	if (one != NULL) {
		run_program((unsigned)strtoul(one, NULL, 10), STEPS);
		return;
	}
	unsigned seeds = 2000;
	const char *env = getenv("HEAP_SEEDS");
	if (env != NULL)
		seeds = (unsigned)strtoul(env, NULL, 10);
	for (unsigned seed = 1; seed <= seeds; seed++)
		run_program(seed, STEPS);
	printf("property: %u seeds, %llu scavenges, %llu mark-sweeps, %llu mark-compacts, "
	       "%llu ENOMEM, %llu bytes promoted\n",
	       seeds, (unsigned long long)seen.scavenges, (unsigned long long)seen.sweeps,
	       (unsigned long long)seen.compacts, (unsigned long long)seen.enomem,
	       (unsigned long long)seen.promoted);
	if (seeds >= 100)
		assert_true(seen.scavenges > seeds * 5 && seen.sweeps > seeds &&
			    seen.compacts > seeds && seen.enomem > 0 && seen.promoted > 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(handles_are_stable_and_go_stale),
	    cmocka_unit_test(rejects_bad_arguments),
	    cmocka_unit_test(barrier_keeps_young_referent),
	    cmocka_unit_test(roots_keep_chains_alive),
	    cmocka_unit_test(enomem_keeps_records),
	    cmocka_unit_test(large_objects_stay_put),
	    cmocka_unit_test(large_objects_die_in_any_order),
	    cmocka_unit_test(root_count_saturates),
	    cmocka_unit_test(shapes_survive_moves),
	    cmocka_unit_test(young_generation_stays_small),
	    cmocka_unit_test(memory_follows_use),
	    cmocka_unit_test(memory_given_back_after_a_cycle),
	    cmocka_unit_test(fragmentation_triggers_compaction),
	    cmocka_unit_test(compaction_runs_in_slices),
	    cmocka_unit_test(incremental_marking_with_mutation),
	    cmocka_unit_test(new_objects_start_zeroed),
	    cmocka_unit_test(old_work_is_bounded_per_pause),
	    cmocka_unit_test(cycle_begins_below_the_trigger),
	    cmocka_unit_test(insertion_barrier_saves_moved_referent),
	    cmocka_unit_test(stats_follow_injected_clock),
	    cmocka_unit_test(property_random_programs),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
