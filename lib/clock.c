/*
 * clock.c - the real clock: CLOCK_MONOTONIC.
 *
 * Sleeping is absolute (TIMER_ABSTIME) so that a signal or a late wakeup never stretches the
 * interval: callers compute deadlines from a token bucket and an absolute deadline keeps the
 * long-run rate exact however often the sleep is interrupted.
 */
#include "clock.h"

#include <errno.h>
#include <stdlib.h>
#include <time.h>

static uint64_t clock_monotonic_now(void *ctx)
{
	struct timespec ts;

	(void)ctx;
	/* CLOCK_MONOTONIC cannot fail on Linux with a valid pointer; treat failure as fatal
	 * rather than return a time that would break every deadline computed from it. */
	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		abort();
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void clock_monotonic_sleep_until(void *ctx, uint64_t t)
{
	struct timespec ts = {.tv_sec = (time_t)(t / 1000000000u),
			      .tv_nsec = (long)(t % 1000000000u)};
	int rc;

	(void)ctx;
	/* clock_nanosleep returns the error number; EINTR means "sleep again", anything else
	 * (EINVAL for an impossible time) cannot happen for a time we computed ourselves. */
	do
		rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
	while (rc == EINTR);
	if (rc != 0)
		abort();
}

const struct clock clock_monotonic = {
    .now_ns = clock_monotonic_now,
    .sleep_until_ns = clock_monotonic_sleep_until,
    .ctx = NULL,
};
