/*
 * clock.h - an injectable monotonic clock.
 *
 * Everything in lib/ that depends on time (the token buckets, the drain workers' sleeps, the
 * statistics) reads it through a struct clock, so that unit tests can substitute a fake clock
 * whose sleep_until_ns merely advances the fake time: rate tests then run in microseconds and
 * give the same answer on a loaded machine as on an idle one.
 *
 * Times are nanoseconds on an arbitrary monotonic origin. now_ns never goes backwards.
 */
#ifndef THROTTLEFS_CLOCK_H
#define THROTTLEFS_CLOCK_H

#include <stdint.h>

struct clock {
	/* The current time in nanoseconds; monotonic. Thread-safe. */
	uint64_t (*now_ns)(void *ctx);
	/* Returns once now_ns() >= t (at once when t is already past). Thread-safe. */
	void (*sleep_until_ns)(void *ctx, uint64_t t);
	void *ctx;
};

/* CLOCK_MONOTONIC; sleeps with clock_nanosleep(TIMER_ABSTIME), restarting after signals. */
extern const struct clock clock_monotonic;

#endif
