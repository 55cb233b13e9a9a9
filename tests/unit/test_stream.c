/*
 * test_stream.c - the streaming engine with a fake clock and a fake sink.
 *
 * The sink writes for real (into memfds) but can be held (drain threads block inside it until
 * released, before or after the real write) or made to fail. Holding the sink is how the tests
 * sequence threads without sleeping: while it is held no slice can complete, so no buffer
 * shrinks and no parked writer can be woken, and a test may assert that a callback has NOT
 * run yet. The fake clock's sleeps only advance the fake time, so rate tests take no time.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "stream.h"

#define KiB 1024u
#define MiB (1024u * 1024u)

/* ---- fake clock ---- */

struct fake_clock {
	pthread_mutex_t lock;
	uint64_t now;
};

static uint64_t fake_now(void *ctx)
{
	struct fake_clock *c = ctx;
	pthread_mutex_lock(&c->lock);
	uint64_t t = c->now;
	pthread_mutex_unlock(&c->lock);
	return t;
}

static void fake_sleep_until(void *ctx, uint64_t t)
{
	struct fake_clock *c = ctx;
	pthread_mutex_lock(&c->lock);
	if (c->now < t)
		c->now = t;
	pthread_mutex_unlock(&c->lock);
}

static struct fake_clock fclock = {PTHREAD_MUTEX_INITIALIZER, 0};
static const struct clock fake_clock_if = {fake_now, fake_sleep_until, &fclock};

/* ---- fake sink ---- */

#define LOG_MAX 4096

struct sink_call {
	int fd;
	uint64_t off, len, time;
	const void *base; /* the first piece's memory */
};

struct fake_sink {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool hold;	  /* block calls until released */
	bool hold_after;  /* ...after (instead of before) the real write */
	unsigned inside;  /* calls currently blocked */
	int fail;	  /* errno for the next call (one shot), 0 = none */
	size_t short_max; /* write at most this many bytes per call (0 = no limit) */
	unsigned ncalls;
	unsigned owned; /* calls made while a test owner was entered on the calling thread */
	unsigned lent;	/* calls made on a thread inside stream_help (helper_main) */
	struct sink_call log[LOG_MAX];
	/* O_DIRECT, simulated: direct_fd has it set (-1: none); a write through it must be
	 * aligned to dio_align in offset, addresses and lengths, as the kernel asks, or it fails
	 * with EINVAL and counts in misaligned; refuse_dio fails every write through it so. */
	int direct_fd;
	unsigned opens;	   /* calls of the sink's direct_open() */
	int open_fail;	   /* errno direct_open fails with, 0: it returns a dup */
	unsigned switches; /* calls of the sink's direct() */
	unsigned dio_align, misaligned;
	bool refuse_dio;
	uint64_t direct_bytes, buffered_bytes;
};

/* Set by the test owner's enter on the thread that will write, cleared by its leave. */
static _Thread_local bool owner_entered;
/* Set on the thread running helper_main, a writer's thread lent by stream_help. */
static _Thread_local bool lent_thread;

static struct fake_sink fsink = {
    .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER, .direct_fd = -1};

/* [locked] Whether a write through O_DIRECT of iov at off meets the alignment. */
static bool dio_aligned(const struct fake_sink *k, const struct iovec *iov, int cnt, off_t off)
{
	bool ok = (uint64_t)off % k->dio_align == 0;
	for (int i = 0; i < cnt; i++)
		ok = ok && (uintptr_t)iov[i].iov_base % k->dio_align == 0 &&
		     iov[i].iov_len % k->dio_align == 0;
	return ok;
}

/* [locked] Blocks while the sink is held. */
static void sink_gate(struct fake_sink *k)
{
	k->inside++;
	pthread_cond_broadcast(&k->cond);
	while (k->hold)
		pthread_cond_wait(&k->cond, &k->lock);
	k->inside--;
}

static ssize_t fake_pwritev(void *ctx, int fd, const struct iovec *iov, int cnt, off_t off)
{
	struct fake_sink *k = ctx;
	struct iovec v[1024];
	size_t total = 0;

	pthread_mutex_lock(&k->lock);
	if (!k->hold_after)
		sink_gate(k);
	bool direct = fd == k->direct_fd;
	if (direct && (k->refuse_dio || !dio_aligned(k, iov, cnt, off))) {
		k->misaligned += !k->refuse_dio;
		pthread_mutex_unlock(&k->lock);
		errno = EINVAL;
		return -1;
	}
	if (k->fail) {
		int err = k->fail;
		k->fail = 0;
		pthread_mutex_unlock(&k->lock);
		errno = err;
		return -1;
	}
	/* Optionally cut the write short, to exercise the resume loop. */
	int n = 0;
	for (; n < cnt && n < 1024; n++) {
		v[n] = iov[n];
		if (k->short_max && total + v[n].iov_len > k->short_max) {
			v[n].iov_len = k->short_max - total;
			total = k->short_max;
			n++;
			break;
		}
		total += v[n].iov_len;
	}
	ssize_t r = pwritev(fd, v, n, off);
	if (r > 0)
		*(direct ? &k->direct_bytes : &k->buffered_bytes) += (uint64_t)r;
	if (owner_entered)
		k->owned++;
	if (lent_thread)
		k->lent++;
	if (r > 0 && k->ncalls < LOG_MAX)
		k->log[k->ncalls++] = (struct sink_call){fd, (uint64_t)off, (uint64_t)r,
							 fake_now(&fclock), iov[0].iov_base};
	if (k->hold_after)
		sink_gate(k);
	pthread_mutex_unlock(&k->lock);
	return r;
}

/* Write-behind calls, recorded (writeback_calls, wb_log) instead of made; wb_fail fails the
 * next one; wb_none answers every one as a store in memory does (STREAM_WB_NONE); while
 * wb_hold is set, calls wait (wb_inside counts them), as for a slow device. */
struct wb_call {
	uint64_t off, len, drop_off, drop_len;
};
static struct wb_call wb_log[LOG_MAX];
static unsigned wb_calls;
static int wb_fail;
static int wb_none;
static bool wb_hold;
static unsigned wb_inside;

static int fake_writeback(void *ctx, int fd, uint64_t off, uint64_t len, uint64_t drop_off,
			  uint64_t drop_len)
{
	struct fake_sink *k = ctx;
	(void)fd;
	pthread_mutex_lock(&k->lock);
	wb_inside++;
	pthread_cond_broadcast(&k->cond);
	while (wb_hold)
		pthread_cond_wait(&k->cond, &k->lock);
	wb_inside--;
	int err = wb_fail;
	wb_fail = 0;
	int none = wb_none;
	if (wb_calls < LOG_MAX)
		wb_log[wb_calls++] = (struct wb_call){off, len, drop_off, drop_len};
	pthread_mutex_unlock(&k->lock);
	return none ? STREAM_WB_NONE : -err;
}

static int fake_direct_open(void *ctx, int fd, unsigned *mem_align, unsigned *off_align)
{
	struct fake_sink *k = ctx;
	pthread_mutex_lock(&k->lock);
	k->opens++;
	int err = k->open_fail;
	*mem_align = k->dio_align;
	*off_align = k->dio_align;
	pthread_mutex_unlock(&k->lock);
	if (err != 0)
		return -err;
	int nfd = dup(fd);
	return nfd >= 0 ? nfd : -errno;
}

static int fake_direct(void *ctx, int fd, int on)
{
	struct fake_sink *k = ctx;
	pthread_mutex_lock(&k->lock);
	k->switches++;
	if (on)
		k->direct_fd = fd;
	else if (k->direct_fd == fd)
		k->direct_fd = -1;
	pthread_mutex_unlock(&k->lock);
	return 0;
}

/* The kind of store the sink plays (stream_sink.cached): a device's unless told otherwise. */
static int remote_store, memory_store;

static int fake_cached(void *ctx, int fd)
{
	struct fake_sink *k = ctx;
	(void)fd;
	pthread_mutex_lock(&k->lock);
	int kind = remote_store	  ? STREAM_STORE_REMOTE
		   : memory_store ? STREAM_STORE_MEMORY
				  : STREAM_STORE_DEVICE;
	pthread_mutex_unlock(&k->lock);
	return kind;
}

static const struct stream_sink fake_sink_if = {fake_pwritev,	  &fsink,      fake_writeback,
						fake_direct_open, fake_direct, fake_cached};

static void sink_reset(void)
{
	pthread_mutex_lock(&fsink.lock);
	fsink.hold = fsink.hold_after = false;
	fsink.fail = 0;
	fsink.short_max = 0;
	fsink.ncalls = 0;
	fsink.owned = 0;
	fsink.lent = 0;
	fsink.direct_fd = -1;
	fsink.switches = fsink.misaligned = fsink.opens = 0;
	fsink.open_fail = 0;
	fsink.dio_align = 512;
	fsink.refuse_dio = false;
	fsink.direct_bytes = fsink.buffered_bytes = 0;
	remote_store = memory_store = 0;
	wb_hold = false;
	wb_calls = 0;
	wb_fail = 0;
	wb_none = 0;
	pthread_mutex_unlock(&fsink.lock);
	fake_sleep_until(&fclock, 0);
}

static void sink_hold(bool after)
{
	pthread_mutex_lock(&fsink.lock);
	fsink.hold = true;
	fsink.hold_after = after;
	pthread_mutex_unlock(&fsink.lock);
}

static void sink_release(void)
{
	pthread_mutex_lock(&fsink.lock);
	fsink.hold = false;
	pthread_cond_broadcast(&fsink.cond);
	pthread_mutex_unlock(&fsink.lock);
}

/* Waits until n drain threads are blocked in the held sink. */
static void sink_wait_inside(unsigned n)
{
	pthread_mutex_lock(&fsink.lock);
	while (fsink.inside < n)
		pthread_cond_wait(&fsink.cond, &fsink.lock);
	pthread_mutex_unlock(&fsink.lock);
}

static void sink_fail_next(int err)
{
	pthread_mutex_lock(&fsink.lock);
	fsink.fail = err;
	pthread_mutex_unlock(&fsink.lock);
}

/* ---- callback recorder ---- */

struct recorder {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned ncalls;
	int order[64]; /* ids in call order */
	int err[64];   /* by id */
	unsigned calls_by_id[64];
};

struct ticket {
	struct recorder *r;
	int id;
};

static void rec_init(struct recorder *r)
{
	memset(r, 0, sizeof(*r));
	assert_int_equal(pthread_mutex_init(&r->lock, NULL), 0);
	assert_int_equal(pthread_cond_init(&r->cond, NULL), 0);
}

static void rec_destroy(struct recorder *r)
{
	pthread_cond_destroy(&r->cond);
	pthread_mutex_destroy(&r->lock);
}

static void rec_cb(void *arg, int err)
{
	struct ticket *t = arg;
	struct recorder *r = t->r;
	pthread_mutex_lock(&r->lock);
	if (r->ncalls < 64)
		r->order[r->ncalls] = t->id;
	r->ncalls++;
	r->err[t->id] = err;
	r->calls_by_id[t->id]++;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

static unsigned rec_wait(struct recorder *r, unsigned n)
{
	pthread_mutex_lock(&r->lock);
	while (r->ncalls < n)
		pthread_cond_wait(&r->cond, &r->lock);
	unsigned got = r->ncalls;
	pthread_mutex_unlock(&r->lock);
	return got;
}

static unsigned rec_calls(struct recorder *r)
{
	pthread_mutex_lock(&r->lock);
	unsigned n = r->ncalls;
	pthread_mutex_unlock(&r->lock);
	return n;
}

/* ---- helpers ---- */

/* An engine of cfg on the fake clock and the fake sink, which is reset. */
static struct stream_engine *engine_of(struct stream_config cfg)
{
	cfg.clock = &fake_clock_if;
	cfg.sink = &fake_sink_if;
	struct stream_engine *e = NULL;
	sink_reset();
	assert_int_equal(stream_engine_new(&cfg, &e), 0);
	return e;
}

static struct stream_engine *engine(uint64_t hw, uint64_t max, unsigned threads, uint64_t rate,
				    uint64_t file_rate)
{
	return engine_of((struct stream_config){
	    .high_water = hw,
	    .max_buffer = max,
	    .rate = rate,
	    .file_rate = file_rate,
	    .drain_threads = threads,
	    .no_help = 1, /* these tests count on drain threads alone */
	});
}

/* An engine as the daemon runs it: no rate, writers' threads lent (STREAM_HELP), and one
 * drain thread for what they leave. */
static struct stream_engine *lending_engine(uint64_t hw)
{
	return engine_of(
	    (struct stream_config){.high_water = hw, .max_buffer = 8 * MiB, .drain_threads = 1});
}

/* Opens a stream on a fresh memfd; *check gets another descriptor of the same file. */
static struct stream *open_stream_fd(struct stream_engine *e, int *check, int *own)
{
	struct stream *s = NULL;
	int fd = memfd_create("throttlefs-test", 0);
	assert_true(fd >= 0);
	*check = dup(fd);
	assert_true(*check >= 0);
	if (own)
		*own = fd;
	assert_int_equal(stream_open(e, fd, &s), 0);
	return s;
}

static struct stream *open_stream(struct stream_engine *e, int *check)
{
	return open_stream_fd(e, check, NULL);
}

static void fill(unsigned char *buf, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (unsigned char)(seed * 131 + i * 7 + (i >> 9));
}

/* Asserts that the file behind fd holds exactly want[0..len). */
static void assert_file(int fd, const unsigned char *want, size_t len)
{
	unsigned char *got = malloc(len + 1);
	assert_non_null(got);
	assert_int_equal(pread(fd, got, len + 1, 0), (ssize_t)len);
	assert_memory_equal(got, want, len);
	free(got);
}

static uint64_t rng_next(uint64_t *x)
{
	*x = *x * 6364136223846793005ull + 1442695040888963407ull;
	return *x >> 33;
}

/* ---- tests ---- */

static void high_water_parks_writer(void **state)
{
	(void)state;
	struct stream_engine *e = engine(256 * KiB, 1 * MiB, 1, 0, 0);
	struct recorder r;
	struct ticket t0 = {&r, 0};
	static unsigned char data[256 * KiB + 1];
	int check;
	rec_init(&r);
	fill(data, sizeof(data), 1);
	struct stream *s = open_stream(e, &check);

	sink_hold(false);
	assert_int_equal(stream_write(s, data, 128 * KiB, 0, rec_cb, &t0), 0);
	sink_wait_inside(1); /* the first 128 KiB is in flight and stays there */
	assert_int_equal(stream_write(s, data + 128 * KiB, 128 * KiB, 128 * KiB, rec_cb, &t0), 0);
	/* 256 KiB buffered is at the mark, not above it; one more byte parks. */
	assert_int_equal(stream_write(s, data + 256 * KiB, 1, 256 * KiB, rec_cb, &t0),
			 STREAM_PARKED);
	struct stream_engine_stats es;
	stream_engine_stats(e, &es);
	assert_true(es.parked == 1 && es.buffered == 256 * KiB + 1);
	struct stream_stats ss;
	stream_stats(s, &ss);
	assert_true(ss.received == 256 * KiB + 1 && ss.committed == 0);
	assert_int_equal(ss.state, STREAM_WRITING);
	assert_int_equal(rec_calls(&r), 0); /* nothing can complete while the sink is held */

	sink_release();
	rec_wait(&r, 1);
	assert_int_equal(r.err[0], 0);
	assert_int_equal(stream_sync(s), 0);
	stream_stats(s, &ss);
	assert_true(ss.committed == sizeof(data) && ss.buffered == 0);
	assert_int_equal(ss.state, STREAM_DONE);
	assert_int_equal(stream_close(s), 0);
	assert_file(check, data, sizeof(data));
	assert_int_equal(rec_calls(&r), 1);
	close(check);
	stream_engine_free(e);
	rec_destroy(&r);
}

/* Two (three) streams share the budget; parked writers wake in FIFO order across streams. */
static void budget_shared_fifo_wakeups(void **state)
{
	(void)state;
	struct stream_engine *e = engine(256 * KiB, 256 * KiB, 1, 0, 0);
	struct recorder r;
	struct ticket ta = {&r, 0}, tb = {&r, 1}, tc = {&r, 2};
	static unsigned char data[128 * KiB];
	int ca, cb, cc;
	rec_init(&r);
	fill(data, sizeof(data), 2);
	struct stream *a = open_stream(e, &ca);
	struct stream *b = open_stream(e, &cb);
	struct stream *c = open_stream(e, &cc);

	sink_hold(false);
	assert_int_equal(stream_write(a, data, 128 * KiB, 0, rec_cb, &ta), 0);
	sink_wait_inside(1);
	assert_int_equal(stream_write(b, data, 128 * KiB, 0, rec_cb, &tb), 0);
	/* The budget is full (256 KiB); every stream is far below its own mark. */
	assert_int_equal(stream_write(c, data, 1, 0, rec_cb, &tc), STREAM_PARKED);
	assert_int_equal(stream_write(a, data, 1, 128 * KiB, rec_cb, &ta), STREAM_PARKED);
	assert_int_equal(stream_write(b, data, 1, 128 * KiB, rec_cb, &tb), STREAM_PARKED);
	assert_int_equal(rec_calls(&r), 0);

	sink_release();
	rec_wait(&r, 3);
	assert_int_equal(r.order[0], 2);
	assert_int_equal(r.order[1], 0);
	assert_int_equal(r.order[2], 1);
	assert_true(r.err[0] == 0 && r.err[1] == 0 && r.err[2] == 0);
	assert_int_equal(stream_close(a), 0);
	assert_int_equal(stream_close(b), 0);
	assert_int_equal(stream_close(c), 0);
	assert_int_equal(rec_calls(&r), 3);
	close(ca);
	close(cb);
	close(cc);
	stream_engine_free(e);
	rec_destroy(&r);
}

static void failed_drain_is_sticky(void **state)
{
	(void)state;
	struct stream_engine *e = engine(64 * KiB, 1 * MiB, 2, 0, 0);
	struct recorder r;
	struct ticket tw = {&r, 0}, tf = {&r, 1}, tp = {&r, 2};
	static unsigned char data[128 * KiB];
	int check;
	rec_init(&r);
	fill(data, sizeof(data), 3);
	struct stream *s = open_stream(e, &check);

	/* Empty: wait_empty answers at once and does not call back. */
	assert_int_equal(stream_wait_empty(s, rec_cb, &tf), 0);
	sink_hold(false);
	sink_fail_next(EIO);
	assert_int_equal(stream_write(s, data, 4 * KiB, 0, rec_cb, &tw), 0);
	sink_wait_inside(1);
	assert_int_equal(stream_wait_empty(s, rec_cb, &tf), STREAM_PARKED);
	assert_int_equal(stream_write(s, data, 128 * KiB, 4 * KiB, rec_cb, &tp), STREAM_PARKED);
	struct stream_stats ss;
	stream_stats(s, &ss);
	assert_int_equal(ss.state, STREAM_DRAINING);
	assert_int_equal(rec_calls(&r), 0);
	sink_release();
	rec_wait(&r, 2);
	assert_int_equal(r.err[1], -EIO); /* the flush sees the error */
	assert_int_equal(r.err[2], -EIO); /* and so does the parked writer */
	assert_int_equal(r.calls_by_id[0], 0);

	assert_int_equal(stream_write(s, data, 10, 0, rec_cb, &tw), -EIO);
	assert_int_equal(stream_wait_empty(s, rec_cb, &tf), -EIO);
	assert_int_equal(stream_sync(s), -EIO);
	stream_stats(s, &ss);
	assert_int_equal(ss.state, STREAM_ERROR);
	assert_int_equal(ss.error, EIO);
	assert_true(ss.buffered == 0 && ss.committed == 0);
	struct stream_engine_stats es;
	stream_engine_stats(e, &es);
	assert_true(es.buffered == 0 && es.blocks_used == 0); /* dropped data freed its blocks */
	assert_int_equal(stream_close(s), -EIO);
	assert_int_equal(rec_calls(&r), 2);
	close(check);
	stream_engine_free(e);
	rec_destroy(&r);
}

/* Random writes against a shadow copy; reads overlay pending data, also while the sink holds
 * data in flight (before or after the real write) and while drains run concurrently. */
static void read_overlays_pending(void **state)
{
	(void)state;
	enum { BASE = 300 * 1024, SPAN = 600 * 1024 };
	struct stream_engine *e = engine(64 * MiB, 64 * MiB, 2, 0, 0);
	unsigned char *shadow = calloc(1, SPAN), *buf = malloc(SPAN + 4096);
	unsigned char *wr = malloc(40000);
	uint64_t x = 42, logical = BASE;
	int check;
	assert_true(shadow && buf && wr);
	struct stream *s = open_stream(e, &check);
	fill(shadow, BASE, 9);
	assert_int_equal(pwrite(check, shadow, BASE, 0), BASE);
	pthread_mutex_lock(&fsink.lock);
	fsink.short_max = 50000; /* also exercise the short-write resume */
	pthread_mutex_unlock(&fsink.lock);

	for (int round = 0; round < 12; round++) {
		int mode = round % 3; /* 0: held before write, 1: held after, 2: free-running */
		if (mode != 2)
			sink_hold(mode == 1);
		for (int i = 0; i < 40; i++) {
			uint64_t off = rng_next(&x) % (SPAN - 40000);
			size_t len = 1 + rng_next(&x) % 39999;
			if (i % 4 == 0 && logical < SPAN - 40000)
				off = logical; /* some appends, which coalesce */
			fill(wr, len, (unsigned)rng_next(&x));
			assert_true(stream_write(s, wr, len, off, NULL, NULL) >= 0);
			memcpy(shadow + off, wr, len);
			if (off + len > logical)
				logical = off + len;
			if (i == 0 && mode != 2)
				sink_wait_inside(1);
		}
		assert_true(stream_end(s) <= logical);
		for (int i = 0; i < 30; i++) {
			uint64_t off = rng_next(&x) % SPAN;
			size_t len = 1 + rng_next(&x) % 100000;
			ssize_t n = stream_read(s, check, buf, len, off);
			size_t want =
			    off >= logical ? 0 : (logical - off < len ? logical - off : len);
			assert_int_equal(n, (ssize_t)want);
			assert_memory_equal(buf, shadow + off, want);
		}
		if (mode != 2)
			sink_release();
	}
	assert_int_equal(stream_sync(s), 0);
	assert_true(stream_end(s) == 0);
	assert_file(check, shadow, logical);
	assert_int_equal(stream_close(s), 0);
	close(check);
	stream_engine_free(e);
	free(shadow);
	free(buf);
	free(wr);
}

/* Sums the bytes the sink wrote per descriptor, in call order, and returns the largest
 * difference between fd a's and fd b's running totals after the first call (which went out
 * before the other stream had data); *total gets all bytes. */
static uint64_t sink_max_skew(int a, int b, uint64_t *total)
{
	uint64_t sa = 0, sb = 0, skew = 0;
	pthread_mutex_lock(&fsink.lock);
	assert_true(fsink.ncalls < LOG_MAX);
	for (unsigned i = 0; i < fsink.ncalls; i++) {
		struct sink_call *c = &fsink.log[i];
		assert_true(c->fd == a || c->fd == b);
		if (i == 0)
			continue;
		*(c->fd == a ? &sa : &sb) += c->len;
		uint64_t d = sa > sb ? sa - sb : sb - sa;
		if (d > skew)
			skew = d;
	}
	*total = sa + sb + (fsink.ncalls ? fsink.log[0].len : 0);
	pthread_mutex_unlock(&fsink.lock);
	return skew;
}

/* Returns the fake time of the sink's last write to fd; *first gets the length of the first
 * call if it went to fd, else 0. */
static uint64_t sink_last_time(int fd, uint64_t *first)
{
	uint64_t t = 0;
	pthread_mutex_lock(&fsink.lock);
	*first = fsink.ncalls && fsink.log[0].fd == fd ? fsink.log[0].len : 0;
	for (unsigned i = 0; i < fsink.ncalls; i++)
		if (fsink.log[i].fd == fd)
			t = fsink.log[i].time;
	pthread_mutex_unlock(&fsink.lock);
	return t;
}

/* Writes `each` bytes to a and to b while the sink holds the first slice, then (when
 * file_rate is not 0, setting it first so that both streams start with all their data
 * queued) lets the drains run until both are empty. Returns the fake time of the release. */
static uint64_t write_two(struct stream_engine *e, struct stream *a, struct stream *b,
			  uint64_t each, uint64_t file_rate)
{
	static unsigned char data[64 * KiB];
	fill(data, sizeof(data), 5);
	sink_hold(false);
	for (uint64_t off = 0; off < each; off += sizeof(data)) {
		assert_int_equal(stream_write(a, data, sizeof(data), off, NULL, NULL), 0);
		assert_int_equal(stream_write(b, data, sizeof(data), off, NULL, NULL), 0);
	}
	sink_wait_inside(1);
	if (file_rate)
		stream_engine_set_rate(e, 0, file_rate);
	uint64_t t = fake_now(&fclock);
	sink_release();
	assert_int_equal(stream_sync(a), 0);
	assert_int_equal(stream_sync(b), 0);
	return t;
}

/* One drain thread serves two streams round-robin under a global rate: neither runs ahead of
 * the other by more than a slice, and the fake clock ends exactly at bytes / rate. */
static void streams_share_rate_fairly(void **state)
{
	(void)state;
	const uint64_t rate = 1 * MiB, each = 2 * MiB;
	struct stream_engine *e = engine(4 * MiB, 8 * MiB, 1, rate, 0);
	int ca, cb, fa, fb;
	struct stream *a = open_stream_fd(e, &ca, &fa);
	struct stream *b = open_stream_fd(e, &cb, &fb);
	uint64_t t0 = fake_now(&fclock), total;

	write_two(e, a, b, each, 0);
	/* Token accounting: the bucket starts empty, so the last slice is due exactly
	 * 2 * each / rate after the start, not a nanosecond earlier or later. */
	assert_true(fake_now(&fclock) - t0 == 2 * each * 1000000000ull / rate);
	assert_true(sink_max_skew(fa, fb, &total) <= 128 * KiB); /* slice at 1 MiB/s */
	assert_true(total == 2 * each);
	struct stream_engine_stats es;
	stream_engine_stats(e, &es);
	assert_true(es.committed == 2 * each && es.rate == rate);

	/* A rate change applies to the next slices: 4 MiB more at 4 MiB/s take 1 s more. */
	stream_engine_set_rate(e, 4 * MiB, 0);
	uint64_t t1 = fake_now(&fclock);
	write_two(e, a, b, each, 0);
	uint64_t dt = fake_now(&fclock) - t1;
	assert_true(dt >= 1000000000ull - 20000000ull && dt <= 1000000000ull);
	assert_int_equal(stream_close(a), 0);
	assert_int_equal(stream_close(b), 0);
	close(ca);
	close(cb);
	stream_engine_free(e);
}

/* Per-file rates are independent: two files at file_rate each finish in each / file_rate. */
static void file_rate_is_per_stream(void **state)
{
	(void)state;
	const uint64_t file_rate = 256 * KiB, each = 1 * MiB;
	struct stream_engine *e = engine(4 * MiB, 8 * MiB, 1, 0, 0);
	int ca, cb, fa, fb;
	struct stream *a = open_stream_fd(e, &ca, &fa);
	struct stream *b = open_stream_fd(e, &cb, &fb);
	uint64_t total;

	/* The buckets start (empty) when the rate is set: b's 1 MiB then takes exactly 4 s. */
	uint64_t t0 = write_two(e, a, b, each, file_rate);
	assert_true(fake_now(&fclock) - t0 == each * 1000000000ull / file_rate);
	/* Each stream got exactly its own rate after the release (the first slice went out
	 * unthrottled before the rate was set), whatever the other did. */
	uint64_t first_a, first_b;
	assert_true(sink_last_time(fa, &first_a) - t0 ==
		    (each - first_a) * 1000000000ull / file_rate);
	assert_true(sink_last_time(fb, &first_b) - t0 ==
		    (each - first_b) * 1000000000ull / file_rate);
	assert_true(first_a + first_b > 0);
	sink_max_skew(fa, fb, &total);
	assert_true(total == 2 * each);
	assert_int_equal(stream_close(a), 0);
	assert_int_equal(stream_close(b), 0);
	close(ca);
	close(cb);
	stream_engine_free(e);
}

/* Small sequential writes share blocks: 64 writes of 4 KiB take two blocks, not 64. */
static void small_writes_coalesce(void **state)
{
	(void)state;
	struct stream_engine *e = engine(4 * MiB, 8 * MiB, 1, 0, 0);
	static unsigned char data[256 * KiB];
	int check;
	fill(data, sizeof(data), 6);
	struct stream *s = open_stream(e, &check);

	sink_hold(false);
	for (unsigned i = 0; i < 64; i++) {
		assert_int_equal(
		    stream_write(s, data + i * 4 * KiB, 4 * KiB, i * 4 * KiB, NULL, NULL), 0);
		if (i == 0)
			sink_wait_inside(1);
	}
	struct stream_engine_stats es;
	stream_engine_stats(e, &es);
	assert_true(es.blocks_used == 2 && es.buffered == sizeof(data));
	assert_true(stream_end(s) == sizeof(data));
	sink_release();
	assert_int_equal(stream_sync(s), 0);
	pthread_mutex_lock(&fsink.lock);
	assert_true(fsink.ncalls == 2); /* the first 4 KiB, then the other 252 KiB at once */
	pthread_mutex_unlock(&fsink.lock);
	stream_engine_stats(e, &es);
	assert_true(es.blocks_used == 0 && es.blocks_free == 2);
	assert_int_equal(stream_close(s), 0);
	assert_file(check, data, sizeof(data));
	close(check);
	stream_engine_free(e);
}

/* With no rate set, a write to an idle stream wakes no drain thread: the writer's thread is
 * asked to write it once it has replied (STREAM_HELP), at most STREAM_MAX_HELPERS at once.
 * With a rate, or over the high-water mark, the drain threads do it as usual. */
static void idle_writes_lend_the_writer_thread(void **state)
{
	(void)state;
	struct stream_engine *e = lending_engine(64 * KiB);
	static unsigned char data[256 * KiB];
	fill(data, sizeof(data), 9);
	int check[STREAM_MAX_HELPERS + 1];
	struct stream *s[STREAM_MAX_HELPERS + 1];
	struct stream_stats ss;

	s[0] = open_stream(e, &check[0]);
	assert_int_equal(stream_write(s[0], data, 4 * KiB, 0, NULL, NULL), STREAM_HELP);
	stream_stats(s[0], &ss);
	assert_true(ss.committed == 0 && ss.buffered == 4 * KiB); /* nobody wrote it yet */
	pthread_mutex_lock(&fsink.lock);
	assert_int_equal(fsink.ncalls, 0);
	pthread_mutex_unlock(&fsink.lock);
	stream_help(s[0]);
	stream_stats(s[0], &ss);
	assert_true(ss.committed == 4 * KiB && ss.buffered == 0);
	assert_file(check[0], data, 4 * KiB);

	/* at most STREAM_MAX_HELPERS threads are lent; the next write goes to a drain thread */
	for (unsigned i = 1; i <= STREAM_MAX_HELPERS; i++)
		s[i] = open_stream(e, &check[i]);
	for (unsigned i = 0; i < STREAM_MAX_HELPERS; i++)
		assert_int_equal(stream_write(s[i], data, 8 * KiB, 4 * KiB, NULL, NULL),
				 STREAM_HELP);
	assert_int_equal(stream_write(s[STREAM_MAX_HELPERS], data, 8 * KiB, 0, NULL, NULL), 0);
	assert_int_equal(stream_sync(s[STREAM_MAX_HELPERS]), 0);
	for (unsigned i = 0; i < STREAM_MAX_HELPERS; i++)
		stream_help(s[i]);

	/* a write that parks is not lent, and a failed slice sticks */
	assert_int_equal(stream_write(s[1], data, 128 * KiB, 0, NULL, NULL), STREAM_PARKED);
	assert_int_equal(stream_sync(s[1]), 0);
	sink_fail_next(EIO);
	assert_int_equal(stream_write(s[2], data, 4 * KiB, 0, NULL, NULL), STREAM_HELP);
	stream_help(s[2]);
	assert_int_equal(stream_write(s[2], data, 4 * KiB, 0, NULL, NULL), -EIO);

	/* with a rate set, the drain threads keep it */
	stream_engine_set_rate(e, 1 * MiB, 0);
	assert_int_equal(stream_write(s[3], data, 4 * KiB, 64 * KiB, NULL, NULL), 0);
	assert_int_equal(stream_sync(s[3]), 0);

	for (unsigned i = 0; i <= STREAM_MAX_HELPERS; i++) {
		assert_int_equal(stream_close(s[i]), i == 2 ? -EIO : 0);
		close(check[i]);
	}
	stream_engine_free(e);
}

static void *helper_main(void *arg)
{
	lent_thread = true;
	stream_help(arg);
	return NULL;
}

/* A lent thread goes on writing what arrives while it writes (a copy's next requests), so no
 * drain thread is woken for them; once a rate is set, the drain threads take the rest. */
static void helper_keeps_writing_what_arrives(void **state)
{
	(void)state;
	struct stream_engine *e = lending_engine(4 * MiB);
	static unsigned char data[64 * KiB];
	fill(data, sizeof(data), 11);
	int check;
	struct stream *s = open_stream(e, &check);

	for (int rated = 0; rated <= 1; rated++) {
		uint64_t at = rated * 2 * 16 * KiB;
		pthread_t t;
		sink_reset();
		sink_hold(false);
		assert_int_equal(stream_write(s, data + at, 16 * KiB, at, NULL, NULL), STREAM_HELP);
		assert_int_equal(pthread_create(&t, NULL, helper_main, s), 0);
		sink_wait_inside(1); /* the lent thread is writing the first 16 KiB */
		assert_int_equal(
		    stream_write(s, data + at + 16 * KiB, 16 * KiB, at + 16 * KiB, NULL, NULL),
		    0); /* scheduled already: accepted, nobody woken */
		if (rated)
			stream_engine_set_rate(e, 1024ull * MiB, 0);
		sink_release();
		assert_int_equal(pthread_join(t, NULL), 0);
		assert_int_equal(stream_sync(s), 0);
		pthread_mutex_lock(&fsink.lock);
		assert_int_equal(fsink.ncalls, 2);
		assert_int_equal(fsink.lent, rated ? 1 : 2);
		pthread_mutex_unlock(&fsink.lock);
	}
	assert_file(check, data, 64 * KiB);
	assert_int_equal(stream_close(s), 0);
	close(check);
	stream_engine_free(e);
}

/* A file with no write-back to do (the sink answers STREAM_WB_NONE: a store in memory) is
 * asked once, not for every chunk; its data is written all the same. */
static void write_behind_asks_once_when_store_has_none(void **state)
{
	(void)state;
	static unsigned char data[256 * KiB];
	fill(data, sizeof(data), 14);
	struct stream_engine *e =
	    engine_of((struct stream_config){.max_buffer = 8 * MiB, .drain_threads = 1});
	int check;
	struct stream *s = open_stream(e, &check);
	pthread_mutex_lock(&fsink.lock);
	wb_none = 1;
	pthread_mutex_unlock(&fsink.lock);
	uint64_t total = 3 * STREAM_WB_CHUNK; /* three chunks complete */
	for (uint64_t off = 0; off < total; off += sizeof(data)) {
		int rc = stream_write(s, data, sizeof(data), off, NULL, NULL);
		assert_true(rc >= 0);
		if (rc == STREAM_HELP)
			stream_help(s);
	}
	assert_int_equal(stream_sync(s), 0);
	pthread_mutex_lock(&fsink.lock);
	assert_int_equal(wb_calls, 1);
	assert_int_equal(wb_log[0].off, 0);
	pthread_mutex_unlock(&fsink.lock);
	struct stream_stats st;
	stream_stats(s, &st);
	assert_int_equal(st.committed, total);
	assert_int_equal(stream_close(s), 0);
	close(check);
	stream_engine_free(e);
}

/* Write-behind: a sequential copy's chunks are started in order as they complete, and each is
 * waited for and dropped STREAM_CACHE_BEHIND later, so only the last STREAM_CACHE_BEHIND bytes
 * stay cached; a failed write-back fails the stream; keep_cache turns it all off. */
static void write_behind_follows_a_copy(void **state)
{
	(void)state;
	static unsigned char data[256 * KiB];
	fill(data, sizeof(data), 13);
	for (int keep = 0; keep <= 1; keep++) {
		struct stream_engine *e = engine_of((struct stream_config){
		    .max_buffer = 8 * MiB, .drain_threads = 1, .keep_cache = keep});
		int check;
		struct stream *s = open_stream(e, &check);
		/* the last, partial chunk is not started */
		uint64_t total = 3 * STREAM_WB_CHUNK + 100 * KiB;
		for (uint64_t off = 0; off < total; off += sizeof(data)) {
			size_t n = total - off < sizeof(data) ? total - off : sizeof(data);
			int rc = stream_write(s, data, n, off, NULL, NULL);
			assert_true(rc >= 0);
			if (rc == STREAM_HELP)
				stream_help(s);
		}
		assert_int_equal(stream_sync(s), 0);
		pthread_mutex_lock(&fsink.lock);
		if (keep) {
			assert_int_equal(wb_calls, 0);
		} else {
			uint64_t started = 0, dropped = 0;
			for (unsigned i = 0; i < wb_calls; i++) {
				assert_int_equal(wb_log[i].off, started); /* in order, no gap */
				assert_int_equal(wb_log[i].off % STREAM_WB_CHUNK, 0);
				started += wb_log[i].len;
				assert_int_equal(wb_log[i].drop_off, dropped);
				dropped += wb_log[i].drop_len;
			}
			assert_int_equal(started, 3 * STREAM_WB_CHUNK);
			assert_int_equal(dropped, 3 * STREAM_WB_CHUNK - STREAM_CACHE_BEHIND);
		}
		pthread_mutex_unlock(&fsink.lock);
		if (!keep) { /* a write-back that fails fails the stream */
			pthread_mutex_lock(&fsink.lock);
			wb_fail = EIO;
			pthread_mutex_unlock(&fsink.lock);
			for (uint64_t off = total; off < 4 * STREAM_WB_CHUNK + 1;
			     off += sizeof(data)) {
				int rc = stream_write(s, data, sizeof(data), off, NULL, NULL);
				if (rc == STREAM_HELP)
					stream_help(s);
			} /* crosses into the next chunk: its write-back is asked for, and fails */
			assert_int_equal(stream_sync(s), -EIO);
		}
		assert_int_equal(stream_close(s), keep ? 0 : -EIO);
		close(check);
		stream_engine_free(e);
	}
}

/* ---- direct I/O ---- */

/* Writes data[0..len) at off (helping when asked) and waits until it is written. */
static void write_synced(struct stream *s, const unsigned char *data, size_t len, uint64_t off)
{
	int rc = stream_write(s, data, len, off, NULL, NULL);
	assert_true(rc >= 0);
	if (rc == STREAM_HELP)
		stream_help(s);
	assert_int_equal(stream_sync(s), 0);
}

static uint64_t stream_direct_bytes(struct stream *s)
{
	struct stream_stats st;
	stream_stats(s, &st);
	return st.direct;
}

/* An engine as the daemon runs it on a store with direct I/O, from direct_from bytes on, but
 * drained by its one thread alone (no help), so that what a test holds the sink for waits. */
static struct stream_engine *direct_engine(uint64_t direct_from)
{
	return engine_of((struct stream_config){.high_water = 8 * MiB,
						.max_buffer = 16 * MiB,
						.drain_threads = 1,
						.no_help = 1,
						.direct_from = direct_from});
}

/* With direct_from set, a stream's slices go direct once it has committed that much, and the
 * page cache it filled until then is written and dropped at the switch; of each slice, the
 * aligned part goes with O_DIRECT and nothing of it through write-behind. Through the page
 * cache go: an unaligned head or tail of a write, data whose memory in the log is not
 * aligned, and slices under STREAM_DIRECT_MIN (small random writes). An empty log restarts
 * aligned to the next write's offset. With direct_from 0 the sink is never asked to open or
 * switch. The file holds exactly what was written in every case. */
static void direct_io_takes_big_aligned_slices(void **state)
{
	(void)state;
	static unsigned char data[3 * MiB], want[3 * MiB + 384 * KiB + 100];
	fill(data, sizeof(data), 21);
	memset(want, 0, sizeof(want));
	for (int direct = 0; direct <= 1; direct++) {
		struct stream_engine *e = direct_engine(direct ? MiB : 0);
		int check;
		struct stream *s = open_stream(e, &check);
		/* 3 MiB in 256 KiB writes at 0: the first MiB buffered, then direct. */
		for (uint64_t off = 0; off < 3 * MiB; off += 256 * KiB)
			write_synced(s, data + off, 256 * KiB, off);
		memcpy(want, data, 3 * MiB);
		pthread_mutex_lock(&fsink.lock);
		assert_int_equal(fsink.direct_bytes, direct ? 2 * MiB : 0);
		assert_int_equal(fsink.misaligned, 0);
		assert_int_equal(fsink.opens, direct ? 1 : 0);
		assert_int_equal(fsink.switches, direct ? 1 : 0);
		/* No write-behind chunk is complete: only, going direct, the drop of what the
		 * page cache had, [0, 1 MiB). */
		assert_true(3 * MiB < STREAM_WB_CHUNK);
		assert_int_equal(wb_calls, direct ? 1 : 0);
		if (direct) {
			assert_int_equal(wb_log[0].off, 0);
			assert_int_equal(wb_log[0].len, MiB);
			assert_int_equal(wb_log[0].drop_off, 0);
			assert_int_equal(wb_log[0].drop_len, MiB);
		}
		pthread_mutex_unlock(&fsink.lock);
		uint64_t direct_bytes = direct ? 2 * MiB : 0;
		assert_int_equal(stream_direct_bytes(s), direct_bytes);
		/* One write of 64 KiB + 100 bytes: its 64 KiB direct, the 100 bytes not. */
		write_synced(s, data + 7, 64 * KiB + 100, 3 * MiB);
		memcpy(want + 3 * MiB, data + 7, 64 * KiB + 100);
		direct_bytes += direct ? 64 * KiB : 0;
		assert_int_equal(stream_direct_bytes(s), direct_bytes);
		/* 100 bytes, and behind them in the log (the sink held, so the stream does not run
		 * empty and start its log afresh) 64 KiB for an aligned offset: its memory is not
		 * aligned, so it goes through the page cache. */
		sink_hold(false);
		assert_true(stream_write(s, data + 1, 100, 3 * MiB + 128 * KiB, NULL, NULL) >= 0);
		assert_true(stream_write(s, data, 64 * KiB, 2 * MiB, NULL, NULL) >= 0);
		sink_release();
		assert_int_equal(stream_sync(s), 0);
		memcpy(want + 3 * MiB + 128 * KiB, data + 1, 100);
		memcpy(want + 2 * MiB, data, 64 * KiB);
		assert_int_equal(stream_direct_bytes(s), direct_bytes);
		/* 128 KiB at an unaligned offset into the empty stream: the log restarts at the
		 * same distance from a 4 KiB boundary (and takes two blocks for it); the head up
		 * to the boundary and the tail past the last one go through the page cache, the
		 * 31 pages between go direct. */
		write_synced(s, data + 5, 128 * KiB, 3 * MiB + 256 * KiB + 100);
		memcpy(want + 3 * MiB + 256 * KiB + 100, data + 5, 128 * KiB);
		direct_bytes += direct ? 31 * 4096 : 0;
		assert_int_equal(stream_direct_bytes(s), direct_bytes);
		/* Small aligned writes, each written alone: under STREAM_DIRECT_MIN, buffered. */
		for (unsigned i = 0; i < 16; i++) {
			uint64_t off = (uint64_t)(i * 37 % 16) * 64 * KiB;
			write_synced(s, data + 4096 * i, 4096, off);
			memcpy(want + off, data + 4096 * i, 4096);
		}
		assert_int_equal(stream_direct_bytes(s), direct_bytes);
		pthread_mutex_lock(&fsink.lock);
		assert_int_equal(fsink.direct_bytes, direct_bytes);
		assert_int_equal(fsink.buffered_bytes + fsink.direct_bytes,
				 3 * MiB + 2 * 64 * KiB + 200 + 128 * KiB + 16 * 4096);
		assert_int_equal(fsink.misaligned, 0);
		assert_int_equal(fsink.direct_fd, -1); /* cleared for the buffered part */
		assert_int_equal(fsink.opens, direct ? 1 : 0);
		pthread_mutex_unlock(&fsink.lock);
		assert_int_equal(stream_close(s), 0);
		assert_file(check, want, sizeof(want));
		close(check);
		stream_engine_free(e);
	}
}

/* A store without direct I/O (direct_open fails) or that refuses a direct write (EINVAL at
 * the write, for an alignment it did not report) costs nothing: the slice goes through the
 * page cache, and direct I/O is not tried again for the stream. A real error of a direct
 * write fails the stream as any. */
static void direct_io_refused_falls_back(void **state)
{
	(void)state;
	static unsigned char data[2 * MiB];
	fill(data, sizeof(data), 22);
	for (int how = 0; how <= 1; how++) {
		struct stream_engine *e = direct_engine(256 * KiB);
		int check;
		struct stream *s = open_stream(e, &check);
		pthread_mutex_lock(&fsink.lock);
		if (how == 0)
			fsink.open_fail = EOPNOTSUPP;
		else
			fsink.refuse_dio = true;
		pthread_mutex_unlock(&fsink.lock);
		for (uint64_t off = 0; off < 2 * MiB; off += 256 * KiB)
			write_synced(s, data + off, 256 * KiB, off);
		pthread_mutex_lock(&fsink.lock);
		assert_int_equal(fsink.direct_bytes, 0);
		assert_int_equal(fsink.buffered_bytes, 2 * MiB);
		assert_int_equal(fsink.opens, 1);
		/* Refused at the write: on for the slice, off for its rewrite, never again. */
		assert_int_equal(fsink.switches, how == 0 ? 0 : 2);
		pthread_mutex_unlock(&fsink.lock);
		assert_int_equal(stream_direct_bytes(s), 0);
		assert_int_equal(stream_close(s), 0);
		assert_file(check, data, 2 * MiB);
		close(check);
		stream_engine_free(e);
	}

	struct stream_engine *e = direct_engine(256 * KiB);
	int check;
	struct stream *s = open_stream(e, &check);
	write_synced(s, data, 256 * KiB, 0);
	sink_fail_next(EIO);
	assert_true(stream_write(s, data, 256 * KiB, 256 * KiB, NULL, NULL) >= 0);
	assert_int_equal(stream_sync(s), -EIO);
	pthread_mutex_lock(&fsink.lock);
	assert_int_equal(fsink.switches, 1); /* the failed write was a direct one */
	assert_int_equal(fsink.direct_bytes, 0);
	pthread_mutex_unlock(&fsink.lock);
	assert_int_equal(stream_close(s), -EIO);
	close(check);
	stream_engine_free(e);
}

/* A write into an empty log that restarts off a block's start (direct_from set, offset 100)
 * can need one block more than its length alone: when it must wait for blocks at the pool's
 * cap, it waits for that many, and gets them once the pool is empty. (It used to wait for one
 * block fewer, then spin forever asking for the last one while holding the whole cap.) */
static void *big_writer_main(void *arg)
{
	struct stream *s = arg;
	static unsigned char big[17 * STREAM_BLOCK];
	int rc = stream_write(s, big, sizeof(big), 100, NULL, NULL);
	assert_true(rc >= 0);
	return NULL;
}

static void direct_log_waits_for_its_lead(void **state)
{
	(void)state;
	struct stream_engine *e = engine_of((struct stream_config){.high_water = STREAM_BLOCK,
								   .max_buffer = STREAM_BLOCK,
								   .drain_threads = 1,
								   .no_help = 1,
								   .direct_from = MiB});
	struct stream_engine_stats st;
	stream_engine_stats(e, &st);
	assert_int_equal(st.blocks_cap, 17); /* the write below is the whole cap, plus its lead */
	int check_a, check_b;
	struct stream *a = open_stream(e, &check_a), *b = open_stream(e, &check_b);
	sink_hold(false);
	assert_true(stream_write(b, "x", 1, 0, NULL, NULL) >= 0);
	sink_wait_inside(1); /* b's slice holds a block in the held sink */
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, big_writer_main, a), 0);
	sink_release();
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_int_equal(stream_sync(a), 0);
	assert_int_equal(stream_close(a), 0);
	assert_int_equal(stream_close(b), 0);
	static unsigned char want[100 + 17 * STREAM_BLOCK];
	assert_file(check_a, want, sizeof(want));
	close(check_a);
	close(check_b);
	stream_engine_free(e);
}

/* Writers that ignore parking (more of them than the budget allows) are stopped by the pool's
 * hard cap: blocks in use never exceed STREAM_POOL_CAP(max_buffer). */
enum { CAP_WRITERS = 4, CAP_WRITES = 24 };

struct cap_writer {
	struct stream *s;
	struct recorder *r;
	struct ticket t[CAP_WRITES];
	unsigned parked;
	pthread_mutex_t *lock;
	pthread_cond_t *cond;
	uint64_t *accepted;
};

static void *cap_writer_main(void *arg)
{
	struct cap_writer *w = arg;
	static unsigned char data[128 * KiB];
	for (unsigned i = 0; i < CAP_WRITES; i++) {
		w->t[i] = (struct ticket){w->r, 0};
		int rc = stream_write(w->s, data, sizeof(data), (uint64_t)i * sizeof(data), rec_cb,
				      &w->t[i]);
		assert_true(rc == 0 || rc == STREAM_PARKED);
		w->parked += rc == STREAM_PARKED;
		pthread_mutex_lock(w->lock);
		*w->accepted += sizeof(data);
		pthread_cond_broadcast(w->cond);
		pthread_mutex_unlock(w->lock);
	}
	return NULL;
}

static void pool_never_exceeds_cap(void **state)
{
	(void)state;
	const uint64_t max = 1 * MiB, cap = STREAM_POOL_CAP(max);
	struct stream_engine *e = engine(1 * MiB, max, 2, 0, 0);
	pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
	uint64_t accepted = 0;
	struct recorder r;
	struct cap_writer w[CAP_WRITERS];
	pthread_t th[CAP_WRITERS];
	int check[CAP_WRITERS];
	rec_init(&r);
	assert_true(cap * STREAM_BLOCK < (uint64_t)CAP_WRITERS * CAP_WRITES * 128 * KiB);

	sink_hold(false);
	for (int i = 0; i < CAP_WRITERS; i++) {
		w[i] = (struct cap_writer){.s = open_stream(e, &check[i]),
					   .r = &r,
					   .lock = &lock,
					   .cond = &cond,
					   .accepted = &accepted};
		assert_int_equal(pthread_create(&th[i], NULL, cap_writer_main, &w[i]), 0);
	}
	/* With the sink held, the writers get exactly up to the cap and no further. */
	pthread_mutex_lock(&lock);
	while (accepted < cap * STREAM_BLOCK)
		pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);
	struct stream_engine_stats es;
	stream_engine_stats(e, &es);
	assert_true(es.blocks_used == cap && es.blocks_cap == cap);
	sink_release();
	unsigned parked = 0;
	for (int i = 0; i < CAP_WRITERS; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		parked += w[i].parked;
	}
	assert_true(parked > 0);
	for (int i = 0; i < CAP_WRITERS; i++) {
		assert_int_equal(stream_close(w[i].s), 0);
		close(check[i]);
	}
	stream_engine_stats(e, &es);
	assert_true(es.blocks_peak == cap && es.blocks_used == 0);
	/* idle again: the pool shrank to a high-water mark's worth plus STREAM_POOL_KEEP */
	assert_true(es.blocks_free <= STREAM_POOL_KEEP + 1 * MiB / STREAM_BLOCK);
	assert_true(es.committed == (uint64_t)CAP_WRITERS * CAP_WRITES * 128 * KiB);
	/* Every parked write was answered, once; a drain thread may still be running the
	 * callbacks it collected until the engine joins it. */
	stream_engine_free(e);
	assert_int_equal(rec_calls(&r), parked);
	rec_destroy(&r);
}

/* stream_close blocks until the data is on the backing store. */
struct closer {
	struct stream *s;
	int rc;
};

static void *closer_main(void *arg)
{
	struct closer *c = arg;
	c->rc = stream_close(c->s);
	return NULL;
}

static void close_waits_for_data(void **state)
{
	(void)state;
	struct stream_engine *e = engine(4 * MiB, 8 * MiB, 2, 0, 0);
	static unsigned char data[300 * KiB];
	int check;
	fill(data, sizeof(data), 8);
	struct stream *s = open_stream(e, &check);
	struct closer c = {s, 1};
	pthread_t th;

	sink_hold(true); /* the first slice is written, then held */
	assert_int_equal(stream_write(s, data, 100 * KiB, 0, NULL, NULL), 0);
	sink_wait_inside(1);
	assert_int_equal(stream_write(s, data + 100 * KiB, 200 * KiB, 100 * KiB, NULL, NULL), 0);
	assert_int_equal(pthread_create(&th, NULL, closer_main, &c), 0);
	/* Wait (yielding, no sleep) until the closer is blocked on the pending data: it cannot
	 * get further while the sink is held. */
	for (;;) {
		struct stream_stats ss;
		stream_stats(s, &ss);
		if (ss.state == STREAM_DRAINING)
			break;
		sched_yield();
	}
	sink_release();
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(c.rc, 0);
	assert_file(check, data, sizeof(data));
	close(check);
	stream_engine_free(e);
}

/* A fill that reads from a pipe, as ops.c does with a FUSE write spliced from /dev/fuse; it
 * fails once `fail_after` bytes have been taken (when not 0). */
struct pipe_fill {
	int fd;
	size_t taken, fail_after;
};

static int fill_from_pipe(void *ctx, void *dst, size_t len)
{
	struct pipe_fill *p = ctx;
	if (p->fail_after && p->taken + len > p->fail_after)
		return -EPIPE;
	size_t got = 0;
	while (got < len) {
		ssize_t n = read(p->fd, (char *)dst + got, len - got);
		if (n <= 0)
			return -EIO;
		got += (size_t)n;
	}
	p->taken += len;
	return 0;
}

static void write_from_fill_copies_once_or_not_at_all(void **state)
{
	(void)state;
	struct stream_engine *e = engine(4 * MiB, 8 * MiB, 1, 0, 0);
	static unsigned char data[300 * KiB];
	int check, fds[2];
	fill(data, sizeof(data), 9);
	struct stream *s = open_stream(e, &check);
	assert_int_equal(pipe(fds), 0);
	assert_int_equal(fcntl(fds[1], F_SETPIPE_SZ, (int)(1 * MiB)) >= (int)sizeof(data), 1);
	assert_int_equal(write(fds[1], data, sizeof(data)), (ssize_t)sizeof(data));

	/* 100 KiB then 200 KiB across block boundaries: the file gets exactly the pipe's bytes. */
	struct pipe_fill pf = {fds[0], 0, 0};
	assert_true(stream_write_from(s, 100 * KiB, 0, fill_from_pipe, &pf, NULL, NULL) >= 0);
	assert_true(stream_write_from(s, 200 * KiB, 100 * KiB, fill_from_pipe, &pf, NULL, NULL) >=
		    0);
	assert_int_equal(stream_sync(s), 0);
	assert_file(check, data, sizeof(data));

	/* A fill that fails part-way: the write is refused with its error, nothing of it is
	 * counted or written, and the stream goes on accepting writes. */
	assert_int_equal(write(fds[1], data, 200 * KiB), (ssize_t)(200 * KiB));
	struct pipe_fill bad = {fds[0], 0, 150 * KiB};
	assert_int_equal(
	    stream_write_from(s, 200 * KiB, sizeof(data), fill_from_pipe, &bad, NULL, NULL),
	    -EPIPE);
	struct stream_stats ss;
	stream_stats(s, &ss);
	assert_true(ss.received == sizeof(data) && ss.buffered == 0 && ss.error == 0);
	assert_int_equal(stream_write(s, data, 10, sizeof(data), NULL, NULL) >= 0, 1);
	assert_int_equal(stream_close(s), 0);
	unsigned char tail[10];
	assert_int_equal(pread(check, tail, sizeof(tail), sizeof(data)), (ssize_t)sizeof(tail));
	assert_memory_equal(tail, data, sizeof(tail));
	close(fds[0]);
	close(fds[1]);
	close(check);
	stream_engine_free(e);
}

/* A stream_write_through on its own thread, for a test that holds the sink meanwhile. */
struct through_call {
	struct stream *s;
	struct iovec iov;
	uint64_t off;
	int rc;
};

static void *through_main(void *arg)
{
	struct through_call *c = arg;
	c->rc = stream_write_through(c->s, &c->iov, 1, c->off);
	return NULL;
}

static struct sink_call sink_last(void)
{
	pthread_mutex_lock(&fsink.lock);
	struct sink_call c = fsink.ncalls ? fsink.log[fsink.ncalls - 1] : (struct sink_call){0};
	pthread_mutex_unlock(&fsink.lock);
	return c;
}

/* A large write to an idle stream over a store with no write-behind goes to the store from the
 * caller's memory, counted as received and committed; small ones, ones with a rate set, and
 * ones that find the stream busy are buffered; writes buffered behind one in flight follow it;
 * a store's failure is the write's and fails the stream. */
static void write_through_when_idle(void **state)
{
	(void)state;
	struct stream_engine *e = engine_of((struct stream_config){
	    .high_water = 4 * MiB, .max_buffer = 8 * MiB, .drain_threads = 1, .keep_cache = 1});
	static unsigned char data[2 * MiB];
	fill(data, sizeof(data), 12);
	int check;
	struct stream *s = open_stream(e, &check);
	struct iovec iov = {data, MiB};
	assert_int_equal(stream_write_through(s, &iov, 1, 0), 0);
	struct sink_call c = sink_last();
	assert_true(c.base == data && c.off == 0 && c.len == MiB); /* not copied */
	struct stream_stats ss;
	stream_stats(s, &ss);
	assert_true(ss.received == MiB && ss.committed == MiB && ss.buffered == 0);
	iov = (struct iovec){data + MiB, STREAM_THROUGH_MIN - 1};
	assert_int_equal(stream_write_through(s, &iov, 1, MiB), STREAM_THROUGH_NO);
	stream_engine_set_rate(e, 64 * MiB, 0);
	iov.iov_len = MiB / 2;
	assert_int_equal(stream_write_through(s, &iov, 1, MiB), STREAM_THROUGH_NO);
	stream_engine_set_rate(e, 0, 0);

	/* Held in the store: a write meanwhile is buffered (and not taken through), and the
	 * writer of the first is asked to write it after replying. */
	sink_hold(false);
	struct through_call t = {s, {data + MiB, MiB / 2}, MiB, 0};
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, through_main, &t), 0);
	sink_wait_inside(1);
	iov = (struct iovec){data + MiB + MiB / 2, MiB / 2};
	assert_int_equal(stream_write_through(s, &iov, 1, MiB + MiB / 2), STREAM_THROUGH_NO);
	assert_int_equal(stream_write(s, data + MiB + MiB / 2, MiB / 2, MiB + MiB / 2, NULL, NULL),
			 0);
	sink_release();
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(t.rc, STREAM_HELP);
	stream_help(s);
	assert_int_equal(stream_sync(s), 0);
	assert_file(check, data, sizeof(data));

	/* The store fails: the write gets its error, and so does everything after. */
	sink_fail_next(EIO);
	iov = (struct iovec){data, MiB};
	assert_int_equal(stream_write_through(s, &iov, 1, 2 * MiB), -EIO);
	stream_stats(s, &ss);
	assert_true(ss.received == 2 * MiB && ss.error == EIO);
	assert_int_equal(stream_write(s, data, 10, 2 * MiB, NULL, NULL), -EIO);
	assert_int_equal(stream_close(s), -EIO);
	assert_file(check, data, sizeof(data));
	close(check);
	stream_engine_free(e);
}

static void *help_main(void *arg);

/* stream_write_lent's release: counts the loans given back in the atomic_int at arg. */
static void released_cb(void *arg)
{
	atomic_fetch_add((atomic_int *)arg, 1);
}

struct lend_call {
	struct stream *s;
	const void *mem;
	size_t len;
	uint64_t off;
	atomic_int *released;
	atomic_int rc;
};

static void *lend_main(void *arg)
{
	struct lend_call *c = arg;
	atomic_store(&c->rc,
		     stream_write_lent(c->s, c->mem, c->len, c->off, released_cb, c->released));
	return NULL;
}

/* Over a store in memory, a large write is queued in the caller's memory: pending like
 * buffered bytes (read back, counted, in order with the other writes), written from that
 * memory with no copy, and given back once written, or once dropped when the store fails. At
 * most lend_max loans are pending; one more waits for one to be given back. Small writes, a
 * rate, a device store are not taken. */
static void lent_writes_queue_without_copy(void **state)
{
	(void)state;
	struct stream_engine *e = engine_of((struct stream_config){
	    .high_water = 4 * MiB, .max_buffer = 8 * MiB, .drain_threads = 1, .lend_max = 2});
	static unsigned char data[3 * MiB], newer[64 * KiB], want[4 * MiB], back[MiB];
	fill(data, sizeof(data), 14);
	fill(newer, sizeof(newer), 15);
	atomic_int released = 0;
	int check;
	struct stream *s = open_stream(e, &check);
	/* A device's store goes through instead (stream_write_through). */
	assert_int_equal(stream_write_lent(s, data, MiB, 0, released_cb, &released),
			 STREAM_THROUGH_NO);
	assert_int_equal(stream_close(s), 0);
	close(check);
	pthread_mutex_lock(&fsink.lock);
	memory_store = 1;
	pthread_mutex_unlock(&fsink.lock);
	s = open_stream(e, &check);
	assert_int_equal(
	    stream_write_lent(s, data, STREAM_THROUGH_MIN - 1, 0, released_cb, &released),
	    STREAM_THROUGH_NO);
	stream_engine_set_rate(e, 64 * MiB, 0);
	assert_int_equal(stream_write_lent(s, data, MiB, 0, released_cb, &released),
			 STREAM_THROUGH_NO);
	stream_engine_set_rate(e, 0, 0);

	/* Queued, not written until the caller lends its thread: pending all that time. */
	assert_int_equal(stream_write_lent(s, data, MiB, 0, released_cb, &released), STREAM_HELP);
	assert_int_equal(stream_end(s), MiB);
	assert_int_equal(stream_read(s, check, back, MiB, 0), (ssize_t)MiB);
	assert_memory_equal(back, data, MiB);
	struct stream_stats ss;
	stream_stats(s, &ss);
	assert_true(ss.received == MiB && ss.buffered == MiB && ss.committed == 0);
	assert_int_equal(atomic_load(&released), 0);
	stream_help(s);
	assert_true(sink_last().base == data); /* written from the caller's memory */
	assert_int_equal(atomic_load(&released), 1);
	memcpy(want, data, MiB);

	/* Order: a buffered write over the end of a loan goes out after it, and a loan over the
	 * end of that one after it in turn. The third loan waits for a slot (lend_max 2). */
	sink_hold(false);
	assert_int_equal(stream_write_lent(s, data + MiB, MiB, MiB, released_cb, &released),
			 STREAM_HELP);
	assert_int_equal(stream_write(s, newer, sizeof(newer), 2 * MiB - 32 * KiB, NULL, NULL), 0);
	memcpy(want + MiB, data + MiB, MiB);
	memcpy(want + 2 * MiB - 32 * KiB, newer, sizeof(newer));
	assert_int_equal(stream_write_lent(s, data + 2 * MiB, MiB, 2 * MiB, released_cb, &released),
			 0);
	memcpy(want + 2 * MiB, data + 2 * MiB, MiB);
	assert_int_equal(stream_read(s, check, back, MiB, 2 * MiB - MiB / 2), (ssize_t)MiB);
	assert_memory_equal(back, want + 2 * MiB - MiB / 2, MiB);
	struct lend_call c = {s, data, MiB, 3 * MiB, &released, 99};
	memcpy(want + 3 * MiB, data, MiB);
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, lend_main, &c), 0);
	usleep(50 * 1000);
	assert_int_equal(atomic_load(&c.rc), 99); /* still waiting for a slot */
	pthread_t helper;
	assert_int_equal(pthread_create(&helper, NULL, help_main, s), 0);
	sink_wait_inside(1);
	sink_release();
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(pthread_join(helper, NULL), 0);
	if (atomic_load(&c.rc) == STREAM_HELP)
		stream_help(s);
	else
		assert_int_equal(atomic_load(&c.rc), 0);
	assert_int_equal(stream_sync(s), 0);
	assert_int_equal(atomic_load(&released), 4);
	assert_file(check, want, sizeof(want));
	stream_stats(s, &ss);
	assert_true(ss.committed == ss.received && ss.buffered == 0);

	/* A rate set while a writer waits for a slot sends it to the buffered path at once,
	 * instead of waiting for loans that would now drain at that rate. */
	assert_int_equal(stream_write_lent(s, data, MiB, 0, released_cb, &released), STREAM_HELP);
	assert_int_equal(stream_write_lent(s, data + MiB, MiB, MiB, released_cb, &released), 0);
	struct lend_call w = {s, data + 2 * MiB, MiB, 2 * MiB, &released, 99};
	assert_int_equal(pthread_create(&th, NULL, lend_main, &w), 0);
	usleep(50 * 1000);
	assert_int_equal(atomic_load(&w.rc), 99);
	stream_engine_set_rate(e, 64 * MiB, 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(atomic_load(&w.rc), STREAM_THROUGH_NO);
	stream_engine_set_rate(e, 0, 0);
	stream_help(s);
	assert_int_equal(stream_sync(s), 0);
	assert_int_equal(atomic_load(&released), 6);

	/* The store fails: the loan is dropped and given back, and the error sticks. */
	sink_fail_next(EIO);
	assert_int_equal(stream_write_lent(s, data, MiB, 0, released_cb, &released), STREAM_HELP);
	stream_help(s);
	assert_int_equal(atomic_load(&released), 7);
	assert_int_equal(stream_write_lent(s, data, MiB, 0, released_cb, &released), -EIO);
	assert_int_equal(stream_close(s), -EIO);
	assert_int_equal(atomic_load(&released), 7);
	close(check);
	stream_engine_free(e);
}

/* stream_wait_empty's callback: stores the result in the atomic_int at arg (it may run on
 * another thread). */
static void flushed_cb(void *arg, int err)
{
	atomic_store((atomic_int *)arg, err);
}

/* Over a store with write-behind, a large write goes through as well and owes its
 * write-behind: none of it runs before the caller has replied and called stream_behind, and
 * until then the stream is not empty for flush and fsync. At most STREAM_MAX_HELPERS threads
 * are held so (a stalled store holds no more); spans owed meanwhile are done in one call. A
 * failed write-behind fails the stream for later writes and for close. Once a stream has
 * learned that its store has no write-behind, nothing is owed. */
static void write_through_owes_write_behind(void **state)
{
	(void)state;
	struct stream_engine *e = lending_engine(4 * MiB);
	const uint64_t c = STREAM_WB_CHUNK;
	static unsigned char data[3 * STREAM_WB_CHUNK];
	fill(data, sizeof(data), 13);
	int check;
	struct stream *s = open_stream(e, &check);
	struct iovec iov;
	for (unsigned i = 0; i < STREAM_MAX_HELPERS; i++) { /* each completes chunk 0 */
		iov = (struct iovec){data, c};
		assert_int_equal(stream_write_through(s, &iov, 1, 0), STREAM_BEHIND);
		assert_true(sink_last().base == data); /* not copied */
	}
	iov = (struct iovec){data, c};
	assert_int_equal(stream_write_through(s, &iov, 1, 0), STREAM_THROUGH_NO);
	atomic_int flushed = 1;
	assert_int_equal(stream_wait_empty(s, flushed_cb, &flushed), STREAM_PARKED);
	pthread_mutex_lock(&fsink.lock);
	assert_int_equal(wb_calls, 0);
	pthread_mutex_unlock(&fsink.lock);
	stream_behind(s);
	pthread_mutex_lock(&fsink.lock);
	assert_int_equal(wb_calls, 1);
	assert_true(wb_log[0].off == 0 && wb_log[0].len == c && wb_log[0].drop_len == 0);
	pthread_mutex_unlock(&fsink.lock);
	for (unsigned i = 1; i < STREAM_MAX_HELPERS; i++) {
		assert_int_equal(atomic_load(&flushed), 1); /* some still owed */
		stream_behind(s);
	}
	assert_int_equal(atomic_load(&flushed), 0);
	pthread_mutex_lock(&fsink.lock);
	assert_int_equal(wb_calls, 1); /* the first did all that was owed */
	pthread_mutex_unlock(&fsink.lock);

	/* A write that completes no chunk owes nothing; the next chunk's is owed. */
	iov = (struct iovec){data + c, c / 2};
	assert_int_equal(stream_write_through(s, &iov, 1, c), 0);
	iov = (struct iovec){data + c + c / 2, c};
	assert_int_equal(stream_write_through(s, &iov, 1, c + c / 2), STREAM_BEHIND);
	stream_behind(s);
	pthread_mutex_lock(&fsink.lock);
	assert_int_equal(wb_calls, 2);
	assert_true(wb_log[1].off == c && wb_log[1].len == c);
	wb_fail = EIO;
	pthread_mutex_unlock(&fsink.lock);
	assert_int_equal(stream_sync(s), 0);

	/* The write-behind fails after the write was answered: later writes and close say so. */
	iov = (struct iovec){data + 2 * c + c / 2, c / 2};
	assert_int_equal(stream_write_through(s, &iov, 1, 2 * c + c / 2), STREAM_BEHIND);
	stream_behind(s);
	assert_int_equal(stream_write(s, data, 10, 3 * c, NULL, NULL), -EIO);
	assert_int_equal(stream_wait_empty(s, flushed_cb, &flushed), -EIO);
	assert_int_equal(stream_close(s), -EIO);
	assert_file(check, data, sizeof(data));
	close(check);

	/* A store in memory: asked once, then nothing is owed. */
	s = open_stream(e, &check);
	pthread_mutex_lock(&fsink.lock);
	wb_none = 1;
	pthread_mutex_unlock(&fsink.lock);
	iov = (struct iovec){data, c};
	assert_int_equal(stream_write_through(s, &iov, 1, 0), STREAM_BEHIND);
	stream_behind(s);
	iov = (struct iovec){data + c, c};
	assert_int_equal(stream_write_through(s, &iov, 1, c), 0);
	pthread_mutex_lock(&fsink.lock);
	assert_int_equal(wb_calls, 4);
	pthread_mutex_unlock(&fsink.lock);
	assert_int_equal(stream_close(s), 0);
	assert_file(check, data, 2 * c);
	close(check);

	/* A remote store (network, FUSE): buffered, so the writer does not wait for it. */
	s = open_stream(e, &check);
	pthread_mutex_lock(&fsink.lock);
	remote_store = 1;
	pthread_mutex_unlock(&fsink.lock);
	iov = (struct iovec){data, c};
	assert_int_equal(stream_write_through(s, &iov, 1, 0), STREAM_THROUGH_NO);
	assert_int_equal(stream_close(s), 0);
	close(check);
	stream_engine_free(e);
}

/* Monotonic milliseconds, for the test's own watchdogs. */
static int64_t now_ms(void)
{
	struct timespec ts;
	assert_int_equal(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void wb_hold_set(bool on)
{
	pthread_mutex_lock(&fsink.lock);
	wb_hold = on;
	pthread_cond_broadcast(&fsink.cond);
	pthread_mutex_unlock(&fsink.lock);
}

/* Waits until a write-behind call waits in wb_hold. */
static void wb_wait_inside(void)
{
	pthread_mutex_lock(&fsink.lock);
	while (wb_inside == 0)
		pthread_cond_wait(&fsink.cond, &fsink.lock);
	pthread_mutex_unlock(&fsink.lock);
}

static void *behind_main(void *arg)
{
	stream_behind(arg);
	return NULL;
}

static void *help_main(void *arg)
{
	stream_help(arg);
	return NULL;
}

/* A write-through's span owed while an earlier stream_behind waits for the device is its own,
 * not merged with what that one took: the second call writes back [c, 2c), not the file from
 * 0. And a write-behind that fails while a helper writes buffered data (the stream is not
 * claimed by its write-through any more) drops the rest of that data: flush and close get the
 * error, none of it is stranded. */
static void write_behind_owed_while_one_runs(void **state)
{
	(void)state;
	struct stream_engine *e = lending_engine(4 * MiB);
	const uint64_t c = STREAM_WB_CHUNK;
	static unsigned char data[2 * STREAM_WB_CHUNK];
	fill(data, sizeof(data), 15);
	int check;
	struct stream *s = open_stream(e, &check);
	struct iovec iov = {data, c};
	assert_int_equal(stream_write_through(s, &iov, 1, 0), STREAM_BEHIND);
	wb_hold_set(true);
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, behind_main, s), 0);
	wb_wait_inside();
	iov = (struct iovec){data + c, c};
	assert_int_equal(stream_write_through(s, &iov, 1, c), STREAM_BEHIND);
	wb_hold_set(false);
	assert_int_equal(pthread_join(th, NULL), 0);
	stream_behind(s);
	pthread_mutex_lock(&fsink.lock);
	assert_int_equal(wb_calls, 2);
	assert_true(wb_log[0].off == 0 && wb_log[0].len == c);
	assert_true(wb_log[1].off == c && wb_log[1].len == c);
	pthread_mutex_unlock(&fsink.lock);
	assert_int_equal(stream_sync(s), 0);
	assert_file(check, data, sizeof(data));

	/* Owed again; a 2 MiB write buffered now is written by a helper, held in the store
	 * halfway (its first slice); meanwhile the write-behind fails. */
	iov = (struct iovec){data, c};
	assert_int_equal(stream_write_through(s, &iov, 1, 2 * c), STREAM_BEHIND);
	sink_hold(false);
	assert_int_equal(stream_write(s, data, 2 * MiB, 3 * c, NULL, NULL), STREAM_HELP);
	assert_int_equal(pthread_create(&th, NULL, help_main, s), 0);
	sink_wait_inside(1);
	atomic_int flushed = 1;
	assert_int_equal(stream_wait_empty(s, flushed_cb, &flushed), STREAM_PARKED);
	pthread_mutex_lock(&fsink.lock);
	wb_fail = EIO;
	pthread_mutex_unlock(&fsink.lock);
	stream_behind(s);
	sink_release();
	assert_int_equal(pthread_join(th, NULL), 0);
	int64_t until = now_ms() + 10000;
	while (atomic_load(&flushed) == 1 && now_ms() < until)
		usleep(1000);
	assert_int_equal(atomic_load(&flushed), -EIO);
	struct stream_stats ss;
	stream_stats(s, &ss);
	assert_true(ss.buffered == 0 && ss.error == EIO);
	assert_int_equal(stream_close(s), -EIO);
	close(check);
	stream_engine_free(e);
}

/* An owner that counts its calls and can refuse to be entered. */
struct test_owner {
	struct stream_owner o;
	atomic_uint enters, leaves;
	atomic_int refuse; /* negative errno: enter fails with it */
};

static int test_owner_enter(const struct stream_owner *o)
{
	struct test_owner *t = (struct test_owner *)o;
	int err = atomic_load(&t->refuse);
	if (err != 0)
		return err;
	assert_false(owner_entered);
	owner_entered = true;
	atomic_fetch_add(&t->enters, 1);
	return 0;
}

static void test_owner_leave(const struct stream_owner *o)
{
	struct test_owner *t = (struct test_owner *)o;
	assert_true(owner_entered);
	owner_entered = false;
	atomic_fetch_add(&t->leaves, 1);
}

static void owner_brackets_every_slice(void **state)
{
	(void)state;
	struct stream_engine *e = engine(4 * MiB, 8 * MiB, 2, 0, 0);
	static unsigned char data[64 * KiB];
	struct test_owner t = {.o = {test_owner_enter, test_owner_leave}};
	int check;
	fill(data, sizeof(data), 10);

	/* No owner: slices are written as they are, nothing is entered. */
	struct stream *plain = open_stream(e, &check);
	assert_true(stream_write(plain, data, sizeof(data), 0, NULL, NULL) >= 0);
	assert_int_equal(stream_close(plain), 0);
	close(check);
	assert_int_equal(atomic_load(&t.enters), 0);

	/* Three writes that are not contiguous in the file are three slices: each is written
	 * between enter and leave, on the thread that writes it. */
	sink_reset();
	struct stream *s = open_stream(e, &check);
	stream_set_owner(s, &t.o);
	assert_true(stream_write(s, data, 4 * KiB, 0, NULL, NULL) >= 0);
	assert_true(stream_write(s, data, 4 * KiB, 32 * KiB, NULL, NULL) >= 0);
	assert_true(stream_write(s, data, 4 * KiB, 16 * KiB, NULL, NULL) >= 0);
	assert_int_equal(stream_sync(s), 0);
	pthread_mutex_lock(&fsink.lock);
	unsigned calls = fsink.ncalls, owned = fsink.owned;
	pthread_mutex_unlock(&fsink.lock);
	assert_true(calls >= 1);
	assert_int_equal(owned, calls);
	assert_int_equal(atomic_load(&t.enters), atomic_load(&t.leaves));
	assert_true(atomic_load(&t.enters) >= 1);

	/* An owner that cannot be entered fails the stream: nothing is written around it. */
	unsigned before = atomic_load(&t.leaves);
	atomic_store(&t.refuse, -EACCES);
	assert_true(stream_write(s, data, 4 * KiB, 64 * KiB, NULL, NULL) >= 0);
	assert_int_equal(stream_sync(s), -EACCES);
	assert_int_equal(stream_write(s, data, 1, 0, NULL, NULL), -EACCES);
	assert_int_equal(atomic_load(&t.leaves), before);
	pthread_mutex_lock(&fsink.lock);
	assert_int_equal(fsink.ncalls, calls); /* not one more write reached the store */
	pthread_mutex_unlock(&fsink.lock);
	assert_int_equal(stream_close(s), -EACCES);
	struct stat st;
	assert_int_equal(fstat(check, &st), 0);
	assert_int_equal(st.st_size, 36 * KiB);
	close(check);
	stream_engine_free(e);
}

/* Threads of this process, as the kernel lists them. */
static unsigned task_count(void)
{
	DIR *d = opendir("/proc/self/task");
	assert_non_null(d);
	unsigned n = 0;
	for (struct dirent *de; (de = readdir(d)) != NULL;)
		n += de->d_name[0] != '.';
	closedir(d);
	return n;
}

/* An engine holds no drain thread until the first stream opens; then all of them run (and
 * drain: no_help leaves the writing to them), and freeing the engine joins them. */
/* The task count once it is want, or after 5 s whatever it is: a joined thread can stay
 * listed in /proc/self/task for a moment (the kernel clears its tid, which pthread_join
 * waits for, before it reaps it), also one of an earlier test's engines. */
static unsigned tasks_settled(unsigned want)
{
	unsigned n = task_count();
	for (int i = 0; i < 5000 && n != want; i++) {
		nanosleep(&(struct timespec){0, 1000000}, NULL);
		n = task_count();
	}
	return n;
}

static void drain_threads_start_with_first_stream(void **state)
{
	(void)state;
	unsigned before = tasks_settled(1); /* the test's own thread, once earlier ones are gone */
	struct stream_engine *e = engine(1 * MiB, 4 * MiB, 3, 0, 0);
	struct stream_engine_stats es;
	stream_engine_stats(e, &es);
	assert_int_equal(es.threads, 0);
	assert_int_equal(task_count(), before);

	static unsigned char data[64 * KiB];
	fill(data, sizeof(data), 7);
	int check;
	struct stream *s = open_stream(e, &check);
	stream_engine_stats(e, &es);
	assert_int_equal(es.threads, 3);
	assert_int_equal(task_count(), before + 3);
	int check2;
	struct stream *s2 = open_stream(e, &check2); /* a second stream starts no more */
	stream_engine_stats(e, &es);
	assert_int_equal(es.threads, 3);
	assert_int_equal(task_count(), before + 3);
	assert_int_equal(stream_close(s2), 0);
	close(check2);

	assert_int_equal(stream_write(s, data, sizeof(data), 0, NULL, NULL), 0);
	assert_int_equal(stream_sync(s), 0);
	assert_file(check, data, sizeof(data));
	assert_int_equal(stream_close(s), 0);
	close(check);
	stream_engine_free(e);
	assert_int_equal(tasks_settled(before), before);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(high_water_parks_writer),
	    cmocka_unit_test(write_from_fill_copies_once_or_not_at_all),
	    cmocka_unit_test(write_through_when_idle),
	    cmocka_unit_test(lent_writes_queue_without_copy),
	    cmocka_unit_test(write_through_owes_write_behind),
	    cmocka_unit_test(write_behind_owed_while_one_runs),
	    cmocka_unit_test(owner_brackets_every_slice),
	    cmocka_unit_test(budget_shared_fifo_wakeups),
	    cmocka_unit_test(failed_drain_is_sticky),
	    cmocka_unit_test(read_overlays_pending),
	    cmocka_unit_test(streams_share_rate_fairly),
	    cmocka_unit_test(file_rate_is_per_stream),
	    cmocka_unit_test(small_writes_coalesce),
	    cmocka_unit_test(idle_writes_lend_the_writer_thread),
	    cmocka_unit_test(helper_keeps_writing_what_arrives),
	    cmocka_unit_test(write_behind_asks_once_when_store_has_none),
	    cmocka_unit_test(write_behind_follows_a_copy),
	    cmocka_unit_test(direct_io_takes_big_aligned_slices),
	    cmocka_unit_test(direct_io_refused_falls_back),
	    cmocka_unit_test(direct_log_waits_for_its_lead),
	    cmocka_unit_test(pool_never_exceeds_cap),
	    cmocka_unit_test(close_waits_for_data),
	    cmocka_unit_test(drain_threads_start_with_first_stream),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
