/*
 * throttle.c - token bucket with debt, kept as a virtual time.
 *
 * Instead of a token count refilled on every call (which needs a multiplication and a
 * rounding per call, and drifts), the bucket stores the instant v at which all bytes charged
 * so far are paid for. Charging n bytes moves v forward by n * 1e9 / rate ns, computed in
 * 128-bit arithmetic with the remainder carried in v_frac, so a billion small takes add up to
 * exactly the same deadline as one large one. Credit is modelled by letting v lag behind now,
 * but never by more than burst/rate: that is the bucket's capacity.
 *
 * Invariant: 0 <= v_frac < rate whenever rate != 0.
 */
#include "throttle.h"

#define NS_PER_S 1000000000ull

static uint64_t throttle_burst_for(uint64_t rate)
{
	uint64_t b = rate / 50;
	return b ? b : 1;
}

/* Nanoseconds needed to earn `bytes` at `rate`, rounded down. */
static uint64_t throttle_ns_for(uint64_t bytes, uint64_t rate)
{
	unsigned __int128 ns = (unsigned __int128)bytes * NS_PER_S / rate;
	return ns > UINT64_MAX ? UINT64_MAX : (uint64_t)ns;
}

/* Bytes earned in `ns` nanoseconds at `rate`, rounded down. */
static uint64_t throttle_bytes_for(uint64_t ns, uint64_t rate)
{
	unsigned __int128 b = (unsigned __int128)ns * rate / NS_PER_S;
	return b > UINT64_MAX ? UINT64_MAX : (uint64_t)b;
}

static uint64_t throttle_sat_add(uint64_t a, uint64_t b)
{
	return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* Places v so that the bucket holds `credit` bytes (or owes `debt` bytes) at now. */
static void throttle_place(struct throttle *t, uint64_t now, uint64_t credit, uint64_t debt)
{
	uint64_t c = throttle_ns_for(credit, t->rate);

	t->v_frac = 0;
	if (debt)
		t->v_ns = throttle_sat_add(now, throttle_ns_for(debt, t->rate));
	else
		t->v_ns = now > c ? now - c : 0;
}

int throttle_init(struct throttle *t, uint64_t rate_Bps, uint64_t now_ns)
{
	int rc = pthread_mutex_init(&t->lock, NULL);
	if (rc != 0)
		return -rc;
	t->rate = rate_Bps;
	t->burst = rate_Bps ? throttle_burst_for(rate_Bps) : 0;
	t->v_ns = now_ns;
	t->v_frac = 0;
	return 0;
}

void throttle_destroy(struct throttle *t)
{
	pthread_mutex_destroy(&t->lock);
}

void throttle_set_rate(struct throttle *t, uint64_t rate_Bps, uint64_t now_ns)
{
	uint64_t credit = 0, debt = 0;

	pthread_mutex_lock(&t->lock);
	if (rate_Bps == t->rate) {
		pthread_mutex_unlock(&t->lock);
		return;
	}
	if (t->rate != 0) {
		if (t->v_ns > now_ns)
			debt = throttle_bytes_for(t->v_ns - now_ns, t->rate);
		else
			credit = throttle_bytes_for(now_ns - t->v_ns, t->rate);
		if (credit > t->burst)
			credit = t->burst;
	}
	t->rate = rate_Bps;
	t->burst = rate_Bps ? throttle_burst_for(rate_Bps) : 0;
	if (rate_Bps != 0) {
		if (credit > t->burst)
			credit = t->burst;
		throttle_place(t, now_ns, credit, debt);
	}
	pthread_mutex_unlock(&t->lock);
}

uint64_t throttle_take(struct throttle *t, uint64_t bytes, uint64_t now_ns)
{
	uint64_t when;

	pthread_mutex_lock(&t->lock);
	if (t->rate == 0) {
		pthread_mutex_unlock(&t->lock);
		return now_ns;
	}
	/* Cap the credit: v may lag behind now by at most burst/rate. */
	uint64_t cap = throttle_ns_for(t->burst, t->rate);
	uint64_t floor = now_ns > cap ? now_ns - cap : 0;
	if (t->v_ns < floor) {
		t->v_ns = floor;
		t->v_frac = 0;
	}
	unsigned __int128 num = (unsigned __int128)bytes * NS_PER_S + t->v_frac;
	unsigned __int128 adv = num / t->rate;
	t->v_frac = (uint64_t)(num % t->rate);
	t->v_ns = throttle_sat_add(t->v_ns, adv > UINT64_MAX ? UINT64_MAX : (uint64_t)adv);
	/* Round the deadline up: bytes are never released before they are fully paid. */
	when = throttle_sat_add(t->v_ns, t->v_frac ? 1 : 0);
	pthread_mutex_unlock(&t->lock);
	return when > now_ns ? when : now_ns;
}

uint64_t throttle_rate(struct throttle *t)
{
	pthread_mutex_lock(&t->lock);
	uint64_t r = t->rate;
	pthread_mutex_unlock(&t->lock);
	return r;
}

uint64_t throttle_burst(struct throttle *t)
{
	pthread_mutex_lock(&t->lock);
	uint64_t b = t->burst;
	pthread_mutex_unlock(&t->lock);
	return b;
}

uint64_t throttle_slice(struct throttle *t)
{
	uint64_t r = throttle_rate(t);
	uint64_t s;

	if (r == 0)
		return THROTTLE_SLICE_MAX;
	s = (r / 8) & ~(uint64_t)(THROTTLE_SLICE_MIN - 1);
	if (s < THROTTLE_SLICE_MIN)
		s = THROTTLE_SLICE_MIN;
	if (s > THROTTLE_SLICE_MAX)
		s = THROTTLE_SLICE_MAX;
	return s;
}
