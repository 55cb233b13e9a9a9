/*
 * bench.h - what bench_heap and bench_inode share: clocks, a microsecond histogram, and the
 * one way a target is printed ("target <= 1 ms: met" / "NOT met", computed, never written
 * in), and the machine's noise floor to print next to pause figures. Header-only (static
 * functions), for the two bench programs alone.
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

/* The smallest value (us) with at least q of h's samples at or below it; 0 when empty. */
static inline uint64_t bench_hist_quantile(const struct bench_hist *h, double q)
{
	uint64_t seen = 0;
	for (uint64_t us = 0; us <= BENCH_HIST_US; us++) {
		seen += h->n[us];
		if (h->count != 0 && (double)seen >= q * (double)h->count)
			return us;
	}
	return 0;
}

/* "p50 x, p99 y, p99.9 z, p99.99 w, max m ms, k over 1 ms" of h into buf. */
static inline const char *bench_hist_fmt(const struct bench_hist *h, char *buf, size_t len)
{
	static const double q[] = {0.5, 0.99, 0.999, 0.9999};
	size_t off = 0;
	for (unsigned k = 0; k < 4; k++)
		off += (size_t)snprintf(buf + off, len - off, "p%g %.3f, ", q[k] * 100,
					(double)bench_hist_quantile(h, q[k]) / 1000);
	snprintf(buf + off, len - off, "max %.3f ms, %llu over 1 ms of %llu",
		 (double)h->max_us / 1000, (unsigned long long)h->over_1ms,
		 (unsigned long long)h->count);
	return buf;
}

/* The noise floor: `runs` timings of one fixed piece of work of a scavenge's size (copying
 * `bytes`, as a scavenge whose every young byte survives does, `reps` times over so that one
 * piece lasts about as long as a typical pause), each timed as the pauses are (thread CPU
 * time, bench_cpu_ns), into *out. The work never varies, so whatever spread its percentiles
 * show (a long max, a p99.9 far above p50) is this machine's doing: preemption charged to the
 * thread's CPU clock when the host steals the vCPU, interrupts, neighbours' cache traffic.
 * With as many pieces as there were pauses, each about as long, it is as exposed to that as
 * they were. Returns 0, or -1 when the buffers cannot be had. */
static inline int bench_noise_floor(size_t bytes, unsigned reps, unsigned runs,
				    struct bench_hist *out)
{
	char *src = malloc(bytes), *dst = malloc(bytes);
	if (src == NULL || dst == NULL) {
		free(src);
		free(dst);
		return -1;
	}
	memset(src, 1, bytes);
	memset(dst, 2, bytes);
	memset(out, 0, sizeof(*out));
	for (unsigned i = 0; i < runs; i++) {
		uint64_t t0 = bench_cpu_ns(NULL);
		for (unsigned r = 0; r < reps; r++) {
			memcpy(r % 2 ? src : dst, r % 2 ? dst : src, bytes);
			__asm__ volatile("" : : "r"(src), "r"(dst) : "memory"); /* not elided */
		}
		bench_hist_add(out, (bench_cpu_ns(NULL) - t0) / 1000);
	}
	free(src);
	free(dst);
	return 0;
}

/* Prints, under `indent`, the noise floor for pauses whose histogram is `pauses`: copies of
 * `bytes`, repeated to last about their median, as many times as there were pauses. */
static inline void bench_noise_print(const char *indent, size_t bytes,
				     const struct bench_hist *pauses)
{
	static struct bench_hist noise; /* 400 KB: not on the stack */
	char buf[200];
	if (bench_noise_floor(bytes, 1, 1000, &noise) < 0) { /* warm-up: first touches */
		printf("%snoise floor: no memory for the buffers\n", indent);
		return;
	}
	bench_noise_floor(bytes, 1000, 1, &noise); /* one sample: us per 1000 = ns per copy */
	double copy_ns = (double)noise.max_us > 1 ? (double)noise.max_us : 1;
	double p50_ns = (double)bench_hist_quantile(pauses, 0.5) * 1000 + 500;
	unsigned reps = p50_ns > copy_ns ? (unsigned)(p50_ns / copy_ns + 0.5) : 1;
	unsigned runs = pauses->count > 1000 ? (unsigned)pauses->count : 1000;
	bench_noise_floor(bytes, reps, runs, &noise);
	printf("%snoise floor, copying %zu KiB x %u (~ a median pause) %u times (CPU time, as "
	       "pauses): %s\n",
	       indent, bytes >> 10, reps, runs, bench_hist_fmt(&noise, buf, sizeof(buf)));
}

#endif
