/* test_throttle.c - the token bucket, driven by explicit times: exact long-run rate, burst
 * bound, rate changes (including outstanding debt) and unlimited mode. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "throttle.h"

#define S 1000000000ull

/* Deterministic pseudo-random numbers, so a failure reproduces. */
static uint64_t rng_next(uint64_t *x)
{
	*x = *x * 6364136223846793005ull + 1442695040888963407ull;
	return *x >> 33;
}

/* A writer that sleeps until each deadline, with random piece sizes and a random write
 * latency below the burst's 20 ms and below the piece's own duration at the rate (a writer
 * able to sustain the rate), sends `total` bytes starting at t0. Returns the time of the
 * last deadline; checks on the way that no prefix is released faster than the rate allows. */
static uint64_t run_writer(struct throttle *t, uint64_t rate, uint64_t t0, uint64_t total,
			   uint64_t seed)
{
	uint64_t now = t0, sent = 0, last = t0;

	while (sent < total) {
		uint64_t n = 1 + rng_next(&seed) % 300000;
		if (n > total - sent)
			n = total - sent;
		uint64_t when = throttle_take(t, n, now);
		assert_true(when >= now);
		sent += n;
		/* The bucket starts empty: bytes released by `when` are paid by `when`. */
		assert_true((unsigned __int128)sent * S <= (unsigned __int128)(when - t0) * rate);
		last = when;
		uint64_t lat_max = n * S / rate + 1;
		if (lat_max > 15000000)
			lat_max = 15000000;
		now = when + rng_next(&seed) % lat_max;
	}
	return last;
}

static void long_run_rate_is_exact(void **state)
{
	(void)state;
	static const uint64_t rates[] = {1234567, 100u << 20, 4096, 999999937};
	for (size_t i = 0; i < sizeof(rates) / sizeof(rates[0]); i++) {
		struct throttle t;
		uint64_t rate = rates[i], t0 = 5 * S;
		uint64_t total = rate * 30; /* 30 s worth */
		assert_int_equal(throttle_init(&t, rate, t0), 0);
		uint64_t end = run_writer(&t, rate, t0, total, i + 1);
		double want = (double)total / (double)rate * 1e9;
		double got = (double)(end - t0);
		assert_true(got >= want - 1.0);
		assert_true(got <= want * 1.001);
		throttle_destroy(&t);
	}
}

static void burst_is_bounded(void **state)
{
	(void)state;
	struct throttle t;
	uint64_t rate = 10000000; /* burst = rate/50 = 200000 bytes */
	assert_int_equal(throttle_init(&t, rate, 0), 0);
	assert_true(throttle_burst(&t) == rate / 50);
	/* A new bucket is empty: the first byte waits. */
	assert_true(throttle_take(&t, 1000, 0) == 100000);
	/* After a long idle period only `burst` bytes go out at once. */
	uint64_t now = 60 * S, free_bytes = 0, when;
	while ((when = throttle_take(&t, 1000, now)) == now)
		free_bytes += 1000;
	assert_true(free_bytes == throttle_burst(&t));
	assert_true(when == now + 100000); /* the next 1000 bytes: 0.1 ms later */
	throttle_destroy(&t);
}

static void rate_change_applies(void **state)
{
	(void)state;
	struct throttle t;
	assert_int_equal(throttle_init(&t, 1000000, 0), 0);
	/* 10 s at 1 MB/s, then 10 s worth at 4 MB/s. */
	uint64_t end1 = run_writer(&t, 1000000, 0, 10000000, 7);
	throttle_set_rate(&t, 4000000, end1);
	assert_true(throttle_rate(&t) == 4000000);
	uint64_t end2 = run_writer(&t, 4000000, end1, 40000000, 8);
	double d = (double)(end2 - end1) / 1e9;
	assert_true(d >= 9.999 && d <= 10.01);
	throttle_destroy(&t);

	/* Outstanding debt keeps its size in bytes and is re-timed at the new rate. */
	assert_int_equal(throttle_init(&t, 1000000, 0), 0);
	assert_true(throttle_take(&t, 1000000, 0) == S);
	throttle_set_rate(&t, 2000000, 0);
	assert_true(throttle_take(&t, 2, 0) == S / 2 + 1000);
	throttle_destroy(&t);
}

static void unlimited_returns_now(void **state)
{
	(void)state;
	struct throttle t;
	assert_int_equal(throttle_init(&t, 0, 0), 0);
	for (uint64_t now = 0; now < 10 * S; now += S / 3)
		assert_true(throttle_take(&t, 1ull << 40, now) == now);
	assert_true(throttle_slice(&t) == THROTTLE_SLICE_MAX);
	/* Limited with a large debt, then unlimited: no more waiting. */
	throttle_set_rate(&t, 1000, S);
	assert_true(throttle_take(&t, 1000000, S) == S + 1000 * S);
	throttle_set_rate(&t, 0, S);
	assert_true(throttle_take(&t, 1000000, 2 * S) == 2 * S);
	/* Back to limited: starts empty. */
	throttle_set_rate(&t, 1000, 3 * S);
	assert_true(throttle_take(&t, 500, 3 * S) == 3 * S + S / 2);
	throttle_destroy(&t);
}

static void slices_follow_the_rate(void **state)
{
	(void)state;
	static const struct {
		uint64_t rate, slice;
	} cases[] = {
	    {0, 1u << 20},	    {100, 4096},
	    {1000000, 122880},	    {8u << 20, 1u << 20},
	    {1ull << 40, 1u << 20}, {32768 * 8 + 100, 32768},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct throttle t;
		assert_int_equal(throttle_init(&t, cases[i].rate, 0), 0);
		assert_true(throttle_slice(&t) == cases[i].slice);
		throttle_destroy(&t);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(long_run_rate_is_exact), cmocka_unit_test(burst_is_bounded),
	    cmocka_unit_test(rate_change_applies),    cmocka_unit_test(unlimited_returns_now),
	    cmocka_unit_test(slices_follow_the_rate),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
