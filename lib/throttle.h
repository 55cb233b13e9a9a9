/*
 * throttle.h - a token bucket that hands out deadlines instead of refusals.
 *
 * A throttle admits bytes at `rate` bytes per second. throttle_take(t, n, now) charges n bytes
 * and returns the absolute time at which they may be written; the caller sleeps until then and
 * writes. Tokens may go negative ("debt"): a take never fails and never has to be retried, so
 * several threads may charge the same bucket and each simply gets a later deadline. This is
 * what makes the long-run rate exact: the bucket's virtual clock advances by exactly n/rate
 * seconds per n bytes (kept as a fraction, so there is no rounding drift), whatever the
 * lateness of the sleepers or the size of the pieces.
 *
 * The bucket holds at most `burst` bytes of credit: after an idle period that many bytes go
 * out at once, so over any window of W seconds at most rate*W + burst bytes are admitted.
 * burst = rate/50 (20 ms worth, at least 1 byte): enough to absorb the latency of one write to
 * the backing store (a writer that comes back late for its next slice finds the credit it
 * earned meanwhile, so latency below 20 ms costs no throughput), and small enough that a copy
 * of D seconds never exceeds the set rate by more than 0.02/D (0.2% for a 10 s copy).
 * A new bucket starts empty, so the first bytes of a copy are paid like all the others.
 *
 * Writers cut their data into slices of throttle_slice() bytes: rate/8 rounded to 4 KiB,
 * clamped to [4 KiB, 1 MiB] (1 MiB when unlimited). A slice larger than the burst is not a
 * problem in the debt model (it just waits for its debt); the slice bound keeps a single sleep
 * short (~1/8 s) so that a rate change takes effect quickly and several files interleave
 * finely enough to share the rate fairly.
 *
 * rate 0 means unlimited: throttle_take returns `now`. All functions are thread-safe.
 */
#ifndef THROTTLEFS_THROTTLE_H
#define THROTTLEFS_THROTTLE_H

#include <pthread.h>
#include <stdint.h>

#define THROTTLE_SLICE_MIN (4u << 10)
#define THROTTLE_SLICE_MAX (1u << 20)

struct throttle {
	pthread_mutex_t lock;
	uint64_t rate;	/* bytes per second; 0 = unlimited */
	uint64_t burst; /* bytes of credit the bucket holds at most */
	/* The bucket's virtual time: the instant at which everything charged so far is paid,
	 * v_ns + v_frac/rate nanoseconds (0 <= v_frac < rate). Credit is (now - v) * rate,
	 * capped at burst; v > now means debt. */
	uint64_t v_ns;
	uint64_t v_frac;
};

/* Initializes an empty bucket at `now_ns`. Returns 0 or -errno (mutex init). */
int throttle_init(struct throttle *t, uint64_t rate_Bps, uint64_t now_ns);
void throttle_destroy(struct throttle *t);

/* Changes the rate at `now_ns`. Outstanding debt or credit keeps its value in bytes and is
 * re-timed at the new rate (credit is capped at the new burst); deadlines already returned
 * stay as they were. Switching from unlimited starts with an empty bucket. */
void throttle_set_rate(struct throttle *t, uint64_t rate_Bps, uint64_t now_ns);

/* Charges `bytes` at `now_ns` and returns the absolute time (>= now_ns) at which they may be
 * written. Unlimited: returns now_ns. */
uint64_t throttle_take(struct throttle *t, uint64_t bytes, uint64_t now_ns);

uint64_t throttle_rate(struct throttle *t);
uint64_t throttle_burst(struct throttle *t);
/* The slice size writers should use with this bucket (see above). */
uint64_t throttle_slice(struct throttle *t);

#endif
