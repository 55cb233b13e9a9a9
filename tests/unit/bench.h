/*
 * bench.h - what bench_heap and bench_inode share: clocks, a microsecond histogram, and the
 * one way a target is printed ("target <= 1 ms: met" / "NOT met", computed, never written
 * in). Header-only (static functions), for the two bench programs alone.
 */
#ifndef THROTTLEFS_BENCH_H
#define THROTTLEFS_BENCH_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Thread CPU time in ns: a collector pause without the time another process (or the host)
 * held the CPU. Usable as a heap clock_ns. */
static inline uint64_t bench_cpu_ns(void *arg)
{
	(void)arg;
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline double bench_now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Prints "  <what>: <value> <unit> (target <= <limit>: met|NOT met)"; returns whether met. */
static inline int bench_target_le(const char *what, double value, double limit, const char *unit)
{
	int met = value <= limit;
	printf("  %s: %.3f %s (target <= %g %s: %s)\n", what, value, unit, limit, unit,
	       met ? "met" : "NOT met");
	return met;
}

/* The pause of a trace_gc line ("... pause 0.123 ms ..."), in ms, or -1 for a line without
 * one; *scavenge tells whether it was a scavenge. */
static inline double bench_trace_pause(const char *line, int *scavenge)
{
	const char *p = strstr(line, "pause ");
	if (p == NULL)
		return -1;
	*scavenge = strstr(line, "scavenge") != NULL;
	return strtod(p + 6, NULL);
}

/* Microsecond histogram: on a shared virtual machine the maximum is partly the host's doing
 * even in thread CPU time, so the percentiles say more about the collector. */
enum { BENCH_HIST_US = 100000 };
struct bench_hist {
	uint32_t n[BENCH_HIST_US + 1];
	uint64_t count, max_us, over_1ms;
};

static inline void bench_hist_add(struct bench_hist *h, uint64_t us)
{
	h->n[us < BENCH_HIST_US ? us : BENCH_HIST_US]++;
	h->count++;
	h->over_1ms += us > 1000;
	if (us > h->max_us)
		h->max_us = us;
}

/* "p50 x, p99 y, p99.9 z, p99.99 w, max m ms, k over 1 ms" of h into buf. */
static inline const char *bench_hist_fmt(const struct bench_hist *h, char *buf, size_t len)
{
	static const double q[] = {0.5, 0.99, 0.999, 0.9999};
	size_t off = 0;
	uint64_t seen = 0;
	unsigned k = 0;
	buf[0] = '\0';
	for (uint64_t us = 0; us <= BENCH_HIST_US && k < 4; us++) {
		seen += h->n[us];
		while (k < 4 && h->count != 0 && (double)seen >= q[k] * (double)h->count) {
			off += (size_t)snprintf(buf + off, len - off, "p%g %.3f, ", q[k] * 100,
						(double)us / 1000);
			k++;
		}
	}
	snprintf(buf + off, len - off, "max %.3f ms, %llu over 1 ms of %llu",
		 (double)h->max_us / 1000, (unsigned long long)h->over_1ms,
		 (unsigned long long)h->count);
	return buf;
}

#endif
