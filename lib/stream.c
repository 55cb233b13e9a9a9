/*
 * stream.c - per-file write streams, the shared block pool and the drain workers.
 *
 * Data path. stream_write copies the caller's bytes (stream_write_from: whatever its fill
 * function supplies, e.g. a FUSE request's buffer vector) into the stream's *log*: a FIFO of
 * STREAM_BLOCK-byte blocks addressed by a monotonically growing log position. The bytes of a
 * write are appended at log_tail whatever their file offset; a *segment* (file offset,
 * length, log position) remembers where they go. Segments are kept in write order, their log
 * ranges are consecutive, and a write that continues the last segment in the file (and in the
 * log, trivially) extends it instead of adding one, so a sequential copy is one segment and
 * 4 KiB writes share blocks. Draining consumes segments from the head; blocks entirely below
 * the head segment go back to the pool, and when a stream runs empty all its blocks do.
 *
 * In-flight data. A drain thread marks the first `inflight` bytes of the head segments as
 * being written, drops the stream lock for the sleep and the pwritev, and on completion
 * consumes them. Until then they stay in the list, so stream_read (which preads and overlays
 * under the stream lock) always sees either the old pending bytes or the written file.
 *
 * Write-through. stream_write_through writes a large request straight from the caller's memory
 * when the stream is idle and nothing would be gained by buffering it (stream.h says when): the
 * writing thread claims the stream as a helper does (scheduled), so writes arriving meanwhile
 * are buffered behind it and no drain overtakes it, and it counts the bytes as received and
 * committed at once. Nothing of it is ever in the log: a read meanwhile sees the file as it
 * is, which is right for a write not yet answered. Its write-behind, which waits for the
 * device, is not the writer's to wait for: the thread gives up its claim, records the span as
 * owed (`behind`, `owed_*`) and does it after the reply (stream_behind), while the next write
 * may already go through. Until then the stream does not count as empty, so flush, fsync and
 * close wait for it and get its error.
 *
 * Lent segments. stream_write_lent queues a large write to a store in memory without copying
 * it: its segment points at the writer's memory (a FUSE receive buffer) instead of the log,
 * takes no log room (its pos is the log tail when it came, so the log positions of the other
 * segments stay consecutive), is never extended by a later write nor extends one, and is
 * given back (release) by slice_end once written or dropped. Everything else treats it as any
 * segment: the drains write it in order, stream_read overlays it, it counts as buffered. At
 * most lend_max are pending in the engine; a writer finding that many waits for one.
 *
 * Direct I/O (see stream.h). Once a stream has committed direct_from bytes, slices of at
 * least STREAM_DIRECT_MIN bytes go with O_DIRECT straight from the blocks, their unaligned
 * rest through the page cache (with write-behind). Two habits keep that rest small: slice_begin
 * cuts such slices at DIO_CUT boundaries of the file, and an empty log restarts at the next
 * write's offset within DIO_CUT, so a sequential copy's memory is congruent with its file
 * offsets whatever the writer's buffer alignment; and slice_map joins pieces that follow each
 * other in memory, so a segment boundary inside a block (FUSE requests of 256 KiB less a few
 * bytes, from a writer whose buffer is not page-aligned) splits no piece.
 *
 * Scheduling. A stream is `scheduled` while it is in the engine's ready queue or being
 * drained by a thread; only then does a thread touch its head. Writers queue an unscheduled
 * stream; a thread that finishes a slice re-queues the stream at the tail when more is
 * pending (round-robin, so N files get ~1/N of the rate each), otherwise unschedules it.
 * Both decisions are made holding the stream lock and the engine lock, so no data is ever
 * stranded in an unscheduled stream.
 *
 * Memory. The pool counts blocks in use (`nused`, including blocks reserved by writers) and
 * never lets it exceed cap_blocks, except for a single write larger than the whole cap when
 * the pool is empty. Freed blocks stay mapped for reuse while anything is buffered; when
 * nothing is, the pool shrinks to keep_blocks free blocks (a high-water mark's worth plus
 * STREAM_POOL_KEEP). mmap/munmap run under the
 * engine lock: they happen at most once per 128 KiB and only when the pool grows past its
 * high point or shrinks when idle.
 *
 * Locks. s->lock, then e->lock; never the reverse. Fields tagged [s] are protected by the
 * stream lock, [e] by the engine lock, [s+e] are written with both held and may be read with
 * either (the parked-writer check reads s->buffered and s->error under the engine lock).
 * Callbacks are collected into a private list and called after both locks are released.
 */
#include "stream.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "throttle.h"

#define NS_PER_S    1000000000ull
#define RING_SLOTS  8	/* per-second counters kept */
#define RING_WINDOW 4	/* seconds averaged for the current rate */
#define DRAIN_IOV   256 /* iovecs per pwritev: 1 MiB of 4 KiB pieces */
/* Direct slices are cut at multiples of this (or of a larger alignment the store asks for):
 * ext4 and xfs take a direct write that is not aligned to their 4 KiB block on a slow path
 * that zeroes the partial blocks under the inode's exclusive lock. */
#define DIO_CUT 4096u

enum { DIO_NONE = -1, DIO_UNTRIED = 0, DIO_ON = 1 };

/* Bytes committed per second over the last few seconds. */
struct rate_ring {
	uint64_t sec[RING_SLOTS];
	uint64_t bytes[RING_SLOTS];
};

struct seg {
	struct seg *next;
	uint64_t off;	   /* file offset of the first pending byte */
	uint64_t len;	   /* pending bytes */
	uint64_t pos;	   /* log position of the first pending byte (a lent segment: of none) */
	uint64_t inflight; /* leading bytes being written by a drain thread */
	/* A lent segment (stream_write_lent): its bytes are at lent, in the writer's memory,
	 * and take no room in the log; release(release_arg) once they are written or dropped. */
	char *lent;
	stream_release release;
	void *release_arg;
};

/* A parked writer (engine FIFO) or an empty-waiter (stream list); a pending callback. */
struct waiter {
	struct waiter *next;
	struct stream *s;
	stream_cb cb;
	void *arg;
	int err;
};

struct waitq {
	struct waiter *head, *tail;
};

struct stream {
	struct stream_engine *e;
	int fd;
	pthread_mutex_t lock;
	pthread_cond_t idle; /* broadcast when nothing is pending or owed any more (empty_wake) */
	struct throttle throttle;

	/* [s] segments and log */
	struct seg *head, *tail;
	uint64_t nsegs;
	char **blk; /* ring of block pointers, blk_cap a power of two */
	uint64_t blk_cap, blk_head, blk_n;
	uint64_t blk_first;   /* block number (log position / STREAM_BLOCK) of the first block */
	uint64_t log_tail;    /* log position where the next write goes */
	struct waitq empty;   /* stream_wait_empty callers */
	struct waiter *spare; /* preallocated parked-writer entry */
	unsigned syncing;     /* threads blocked in stream_sync/stream_close */

	/* [s] statistics */
	uint64_t received, committed, started_ns, last_ns, last_write_ns;
	struct rate_ring ring;

	/* [s+e] */
	uint64_t buffered;
	int error; /* sticky, positive errno */

	/* Direct I/O. [s] dio: DIO_UNTRIED until the first slice that may go direct, then
	 * DIO_ON (fd is the stream's own description, alignments in dio_mem and dio_off) or
	 * DIO_NONE for good; changed only by the thread draining the stream, which may read it
	 * without the lock. [drain] slice_direct: slice_begin's verdict on the current slice;
	 * dio_on: whether O_DIRECT is set on fd now. [atomic] direct: bytes written with it. */
	int dio;
	unsigned dio_mem, dio_off;
	bool slice_direct, dio_on;
	uint64_t direct;

	/* [atomic] the sink answered STREAM_WB_NONE: this file has no write-back to do */
	bool no_wb;
	/* [atomic] the sink's answer to cached, asked at the first large write: STREAM_STORE_*,
	 * or -1 until then */
	int store;

	/* [s] Write-behind owed by write-throughs (stream_write_through, stream_behind): how
	 * many are owed or running, and the span of the file they owe, STREAM_WB_CHUNK-aligned
	 * (owed_first == owed_last: none). Waiting for the stream to be empty waits for them. */
	unsigned behind;
	uint64_t owed_first, owed_last;

	/* [atomic] who slices are written as (stream_set_owner); NULL: the engine's sink alone */
	const struct stream_owner *owner;

	/* [drain] owned by the one drain thread scheduled on the stream */
	uint64_t prepaid;    /* bytes already charged to the file bucket for the next slice */
	uint64_t not_before; /* while on the timed list: when the file bucket allows them */

	/* [e] */
	bool scheduled;
	struct stream *ready_next;  /* ready queue or timed list */
	struct stream *prev, *next; /* all open streams */
};

struct stream_engine {
	pthread_mutex_t lock;
	pthread_cond_t work; /* the ready queue gained a stream, or stop */
	pthread_cond_t room; /* pool blocks were released */
	uint64_t high_water, max_buffer, cap_blocks;
	uint64_t keep_blocks; /* free blocks kept mapped when nothing is buffered */
	int no_help;	      /* config.no_help */
	int keep_cache;	      /* config.keep_cache */
	uint64_t direct_from; /* config.direct_from */
	unsigned helpers;  /* writer threads lent now (stream_help, write-through, stream_behind) */
	unsigned lend_max; /* config.lend_max */
	const struct clock *clock;
	struct stream_sink sink;
	struct throttle throttle; /* global rate */

	/* [e] */
	uint64_t rate, file_rate;
	void *free_blocks; /* chained through their first word */
	uint64_t nfree, nused, peak_used;
	uint64_t buffered, peak, committed, start_ns;
	struct rate_ring ring;
	struct waitq parked;
	uint64_t nparked;
	unsigned lent; /* lent segments pending in all streams (at most lend_max) */
	struct stream *ready_head, *ready_tail;
	struct stream *timed; /* scheduled streams waiting for their file bucket */
	bool timer;	      /* a drain thread sleeps for the earliest timed stream */
	struct stream *streams;
	uint64_t nstreams;
	bool stop;

	unsigned want;	   /* drain threads to run (config.drain_threads) */
	unsigned nthreads; /* [e] started so far: 0 until the first stream opens */
	pthread_t threads[];
};

static uint64_t stream_now(struct stream_engine *e)
{
	return e->clock->now_ns(e->clock->ctx);
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

static uint64_t max_u64(uint64_t a, uint64_t b)
{
	return a > b ? a : b;
}

/* ---- rate ring ---------------------------------------------------------------------- */

static void ring_add(struct rate_ring *r, uint64_t now, uint64_t n)
{
	uint64_t sec = now / NS_PER_S;
	unsigned i = (unsigned)(sec % RING_SLOTS);

	if (r->sec[i] != sec) {
		r->sec[i] = sec;
		r->bytes[i] = 0;
	}
	r->bytes[i] += n;
}

/* Bytes/s over the last RING_WINDOW seconds (the current one partially), or since start_ns
 * when that is more recent. */
static uint64_t ring_rate(const struct rate_ring *r, uint64_t now, uint64_t start_ns)
{
	uint64_t sec = now / NS_PER_S, sum = 0;
	uint64_t from = sec >= RING_WINDOW - 1 ? (sec - (RING_WINDOW - 1)) * NS_PER_S : 0;

	for (unsigned k = 0; k < RING_WINDOW && k <= sec; k++) {
		unsigned i = (unsigned)((sec - k) % RING_SLOTS);
		if (r->sec[i] == sec - k)
			sum += r->bytes[i];
	}
	if (start_ns > from)
		from = start_ns;
	if (now <= from)
		return 0;
	return (uint64_t)((unsigned __int128)sum * NS_PER_S / (now - from));
}

/* ---- wait queues -------------------------------------------------------------------- */

static void waitq_push(struct waitq *q, struct waiter *w)
{
	w->next = NULL;
	if (q->tail)
		q->tail->next = w;
	else
		q->head = w;
	q->tail = w;
}

/* Moves every waiter of q into out, each with result err. */
static void waitq_move_all(struct waitq *q, struct waitq *out, int err)
{
	struct waiter *w = q->head, *next;

	for (; w; w = next) {
		next = w->next;
		w->err = err;
		waitq_push(out, w);
	}
	q->head = q->tail = NULL;
}

/* Calls (unless cb is NULL) and frees every waiter of q. No lock may be held. */
static void waitq_run(struct waitq *q)
{
	struct waiter *w = q->head, *next;

	for (; w; w = next) {
		next = w->next;
		if (w->cb)
			w->cb(w->arg, w->err);
		free(w);
	}
	q->head = q->tail = NULL;
}

/* [e] Moves the parked writers that may go on into out: those of failed streams (with the
 * error) and those whose stream and engine are at or below their marks, in FIFO order. When
 * `only` is set, moves all of that stream's writers regardless of the marks (close). */
static void parked_release(struct stream_engine *e, struct waitq *out, struct stream *only)
{
	struct waiter **pp = &e->parked.head, *w;
	struct waiter *last = NULL;

	while ((w = *pp) != NULL) {
		struct stream *s = w->s;
		bool go;
		if (only)
			go = s == only;
		else
			go = s->error ||
			     (s->buffered <= e->high_water && e->buffered <= e->max_buffer);
		if (!go) {
			last = w;
			pp = &w->next;
			continue;
		}
		*pp = w->next;
		e->nparked--;
		w->err = s->error ? -s->error : 0;
		waitq_push(out, w);
	}
	e->parked.tail = last;
}

/* ---- block pool --------------------------------------------------------------------- */

/* [e] May n more blocks be taken now? */
static bool pool_room(struct stream_engine *e, uint64_t n)
{
	return e->nused + n <= e->cap_blocks || e->nused == 0;
}

/* [e] Returns the chained blocks to the pool: kept for reuse or unmapped. */
static void pool_put(struct stream_engine *e, void *chain)
{
	bool any = chain != NULL;

	while (chain) {
		void *next = *(void **)chain;
		e->nused--;
		*(void **)chain = e->free_blocks;
		e->free_blocks = chain;
		e->nfree++;
		chain = next;
	}
	/* While data flows, every freed block is kept: a block unmapped now would be mapped and
	 * faulted in again a moment later (that churn cost a fifth of the daemon's CPU on a
	 * large copy), and the pool never exceeds its cap anyway. Once nothing is buffered,
	 * the pool shrinks back to keep_blocks: one stream's high-water mark and a few more,
	 * so that a copy faster than the store, which empties the buffer after every write,
	 * does not churn either. A block that cannot be unmapped (cannot happen for a block we
	 * mapped) stays, accounted as free memory. */
	while (e->nused == 0 && e->nfree > e->keep_blocks) {
		void *b = e->free_blocks, *next = *(void **)b;
		if (munmap(b, STREAM_BLOCK) != 0)
			break;
		e->free_blocks = next;
		e->nfree--;
	}
	if (any)
		pthread_cond_broadcast(&e->room);
}

/* [e] Takes n blocks (the caller checked pool_room) and chains them onto *chain. Returns 0 or
 * -ENOMEM (nothing taken). */
static int pool_take(struct stream_engine *e, uint64_t n, void **chain)
{
	void *got = NULL;

	for (uint64_t i = 0; i < n; i++) {
		void *b = e->free_blocks;
		if (b) {
			e->free_blocks = *(void **)b;
			e->nfree--;
		} else {
			b = mmap(NULL, STREAM_BLOCK, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (b == MAP_FAILED) {
				e->nused += i;
				pool_put(e, got);
				return -ENOMEM;
			}
		}
		*(void **)b = got;
		got = b;
	}
	e->nused += n;
	if (e->nused > e->peak_used)
		e->peak_used = e->nused;
	/* Append to what the caller already holds. */
	if (got) {
		void *last = got;
		while (*(void **)last)
			last = *(void **)last;
		*(void **)last = *chain;
		*chain = got;
	}
	return 0;
}

/* ---- the log ------------------------------------------------------------------------ */

/* [s] Address of log position pos, and the bytes contiguous from there in its block. */
static char *log_ptr(struct stream *s, uint64_t pos, uint64_t *avail)
{
	uint64_t idx = pos / STREAM_BLOCK - s->blk_first;
	uint64_t in = pos % STREAM_BLOCK;

	*avail = STREAM_BLOCK - in;
	return s->blk[(s->blk_head + idx) & (s->blk_cap - 1)] + in;
}

/* [s] Copies len bytes of the log at pos out to mem. */
static void log_read(struct stream *s, uint64_t pos, void *mem, uint64_t len)
{
	char *m = mem;

	while (len) {
		uint64_t avail;
		char *p = log_ptr(s, pos, &avail);
		uint64_t n = min_u64(avail, len);
		memcpy(m, p, n);
		m += n;
		pos += n;
		len -= n;
	}
}

/* [s] Address of the byte `at` bytes into g's pending bytes, and how many follow it
 * contiguously: in the writer's memory for a lent segment, else in a log block. */
static char *seg_ptr(struct stream *s, const struct seg *g, uint64_t at, uint64_t *avail)
{
	if (g->lent != NULL) {
		*avail = g->len - at;
		return g->lent + at;
	}
	return log_ptr(s, g->pos + at, avail);
}

/* [s] Copies len bytes of g's pending bytes from `at` on out to mem. */
static void seg_read(struct stream *s, const struct seg *g, uint64_t at, void *mem, uint64_t len)
{
	if (g->lent != NULL)
		memcpy(mem, g->lent + at, len);
	else
		log_read(s, g->pos + at, mem, len);
}

/* [s] Fills len bytes of the log at pos from fill(ctx, ...), block piece by block piece.
 * Returns 0 or fill's negative errno (the log is then partly written beyond its tail, which
 * nothing reads: the caller does not advance log_tail). */
static int log_fill(struct stream *s, uint64_t pos, uint64_t len, stream_fill fill, void *ctx)
{
	while (len) {
		uint64_t avail;
		char *p = log_ptr(s, pos, &avail);
		uint64_t n = min_u64(avail, len);
		int rc = fill(ctx, p, (size_t)n);
		if (rc != 0)
			return rc;
		pos += n;
		len -= n;
	}
	return 0;
}

/* The fill of stream_write: the caller's bytes, consumed from the front. */
static int fill_from_mem(void *ctx, void *dst, size_t len)
{
	const char **src = ctx;

	memcpy(dst, *src, len);
	*src += len;
	return 0;
}

/* [s] Bytes free in the tail block. */
static uint64_t log_space(struct stream *s)
{
	if (s->blk_n == 0)
		return 0;
	return (s->blk_first + s->blk_n) * STREAM_BLOCK - s->log_tail;
}

/* [s] Makes room in the ring for `extra` more block pointers. Returns 0 or -ENOMEM. */
static int log_ring_reserve(struct stream *s, uint64_t extra)
{
	uint64_t cap = s->blk_cap ? s->blk_cap : 8;
	char **nb;

	if (s->blk_n + extra <= s->blk_cap)
		return 0;
	while (cap < s->blk_n + extra)
		cap *= 2;
	nb = malloc(cap * sizeof(*nb));
	if (!nb)
		return -ENOMEM;
	for (uint64_t i = 0; i < s->blk_n; i++)
		nb[i] = s->blk[(s->blk_head + i) & (s->blk_cap - 1)];
	free(s->blk);
	s->blk = nb;
	s->blk_cap = cap;
	s->blk_head = 0;
	return 0;
}

/* [s] Appends n blocks from *chain to the ring (room was reserved). */
static void log_add_blocks(struct stream *s, void **chain, uint64_t n)
{
	if (s->blk_n == 0)
		s->blk_first = s->log_tail / STREAM_BLOCK;
	for (uint64_t i = 0; i < n; i++) {
		char *b = *chain;
		*chain = *(void **)b;
		s->blk[(s->blk_head + s->blk_n) & (s->blk_cap - 1)] = b;
		s->blk_n++;
	}
}

/* [s] Unlinks the blocks no pending byte needs any more and chains them onto *chain. When
 * nothing is pending that is every block, and the log restarts at position 0 (or, with direct
 * I/O, where stream_write_from puts the next write: its offset within a DIO_CUT). */
static void log_trim(struct stream *s, void **chain)
{
	uint64_t keep_from = s->head ? s->head->pos / STREAM_BLOCK : UINT64_MAX;

	while (s->blk_n && s->blk_first < keep_from) {
		char *b = s->blk[s->blk_head];
		*(void **)b = *chain;
		*chain = b;
		s->blk_head = (s->blk_head + 1) & (s->blk_cap - 1);
		s->blk_n--;
		s->blk_first++;
	}
	if (!s->head) {
		s->log_tail = 0;
		s->blk_first = 0;
		s->blk_head = 0;
	}
}

/* [s] Largest file offset + 1 covered by a pending segment, 0 if none. */
static uint64_t seg_end(struct stream *s)
{
	uint64_t end = 0;

	for (struct seg *g = s->head; g; g = g->next)
		if (g->off + g->len > end)
			end = g->off + g->len;
	return end;
}

/* ---- writing ------------------------------------------------------------------------ */

/* [s] Counts len bytes accepted from a writer at time now. */
static void count_received(struct stream *s, uint64_t len, uint64_t now)
{
	if (s->received == 0)
		s->started_ns = now;
	s->received += len;
	s->last_ns = s->last_write_ns = now;
}

/* [s] Puts g at the tail of s's segments. */
static void seg_append(struct stream *s, struct seg *g)
{
	if (s->tail)
		s->tail->next = g;
	else
		s->head = g;
	s->tail = g;
	s->nsegs++;
}

/* [s+e] Counts len bytes accepted into s as buffered, in the stream and the engine. */
static void count_buffered(struct stream_engine *e, struct stream *s, uint64_t len)
{
	s->buffered += len;
	e->buffered += len;
	if (e->buffered > e->peak)
		e->peak = e->buffered;
}

/* [s+e] Counts n bytes the store took for s at time now, in the stream's figures and the
 * engine's. */
static void count_committed(struct stream_engine *e, struct stream *s, uint64_t n, uint64_t now)
{
	s->committed += n;
	s->last_ns = now;
	ring_add(&s->ring, now, n);
	e->committed += n;
	ring_add(&e->ring, now, n);
}

/* [s+e] Puts an unscheduled stream at the tail of the ready queue. */
static void ready_push(struct stream_engine *e, struct stream *s)
{
	s->scheduled = true;
	s->ready_next = NULL;
	if (e->ready_tail)
		e->ready_tail->ready_next = s;
	else
		e->ready_head = s;
	e->ready_tail = s;
	pthread_cond_signal(&e->work);
}

/* [e] Whether a writer's thread may be lent to write s (STREAM_HELP), and whether a lent one
 * that finished a slice writes the next one too instead of queueing s for a drain thread:
 * while writes keep arriving, waking a drain thread for each slice cost more context switches
 * than the writes themselves. Not once a rate is set (the helper would sleep for it). */
static bool help_allowed(struct stream_engine *e, struct stream *s)
{
	return !e->no_help && throttle_rate(&e->throttle) == 0 && throttle_rate(&s->throttle) == 0;
}

/* [s] Blocks a write of len bytes needs beyond the tail block's free space. */
static uint64_t log_need(struct stream *s, uint64_t len)
{
	uint64_t space = log_space(s);

	if (s->blk_n == 0) /* the log starts afresh at log_tail, not always a block's start */
		return (s->log_tail % STREAM_BLOCK + len + STREAM_BLOCK - 1) / STREAM_BLOCK;
	return len > space ? (len - space + STREAM_BLOCK - 1) / STREAM_BLOCK : 0;
}

/* [s] Adds blocks to *held (*nheld counts them) so that it holds `need`, or, when the pool is
 * at its hard cap, waits with the stream lock dropped (the drains need it to free blocks) for
 * as many blocks as len could need whatever the tail space (or an empty log's starting point)
 * is when we come back. The caller re-checks everything: the stream may have changed
 * meanwhile. Returns 0 or -ENOMEM. */
static int stream_get_blocks(struct stream *s, uint64_t len, uint64_t need, void **held,
			     uint64_t *nheld)
{
	struct stream_engine *e = s->e;
	int rc;

	pthread_mutex_lock(&e->lock);
	if (!pool_room(e, need - *nheld)) {
		pthread_mutex_unlock(&e->lock);
		pthread_mutex_unlock(&s->lock);
		/* An empty log may restart up to DIO_CUT - 1 bytes into its first block. */
		uint64_t lead = e->direct_from != 0 ? DIO_CUT - 1 : 0;
		need = (len + lead + STREAM_BLOCK - 1) / STREAM_BLOCK;
		pthread_mutex_lock(&e->lock);
		while (!pool_room(e, need - *nheld))
			pthread_cond_wait(&e->room, &e->lock);
		rc = pool_take(e, need - *nheld, held);
		if (rc == 0)
			*nheld = need;
		pthread_mutex_unlock(&e->lock);
		pthread_mutex_lock(&s->lock);
		return rc;
	}
	rc = pool_take(e, need - *nheld, held);
	if (rc == 0)
		*nheld = need;
	pthread_mutex_unlock(&e->lock);
	return rc;
}

static bool drain_one(struct stream_engine *e, struct stream *s, bool helping);

int stream_write(struct stream *s, const void *buf, size_t len, uint64_t off, stream_cb cb,
		 void *arg)
{
	const char *src = buf;

	return stream_write_from(s, len, off, fill_from_mem, &src, cb, arg);
}

int stream_write_from(struct stream *s, size_t len, uint64_t off, stream_fill fill, void *ctx,
		      stream_cb cb, void *arg)
{
	struct stream_engine *e = s->e;
	void *held = NULL;
	uint64_t nheld = 0, need;
	struct seg *fresh = NULL;
	int rc;

	if (off > (uint64_t)INT64_MAX || len > (uint64_t)INT64_MAX - off)
		return -EINVAL;
	pthread_mutex_lock(&s->lock);
	for (;;) {
		rc = s->error ? -s->error : 0;
		if (rc != 0 || len == 0)
			goto out;
		/* An empty log restarts where direct slices keep their memory aligned: at
		 * the write's offset within a DIO_CUT (slice_begin). */
		if (s->blk_n == 0 && s->head == NULL && e->direct_from != 0)
			s->log_tail = off % DIO_CUT;
		need = log_need(s, len);
		if (need <= nheld)
			break;
		rc = stream_get_blocks(s, len, need, &held, &nheld);
		if (rc != 0)
			goto out;
	}
	bool extend = s->tail && s->tail->inflight == 0 && s->tail->lent == NULL &&
		      s->tail->off + s->tail->len == off;
	if (!extend && !(fresh = malloc(sizeof(*fresh)))) {
		rc = -ENOMEM;
		goto out;
	}
	rc = log_ring_reserve(s, need);
	if (rc != 0)
		goto out;
	if (!s->spare)
		s->spare = malloc(sizeof(*s->spare)); /* NULL: this write is not parked */
	log_add_blocks(s, &held, need);
	nheld -= need;
	rc = log_fill(s, s->log_tail, len, fill, ctx);
	if (rc != 0)
		goto out; /* nothing accepted; the added blocks stay as tail space */
	if (extend) {
		s->tail->len += len;
	} else {
		*fresh = (struct seg){.off = off, .len = len, .pos = s->log_tail};
		seg_append(s, fresh);
		fresh = NULL;
	}
	s->log_tail += len;
	count_received(s, len, stream_now(e));

	pthread_mutex_lock(&e->lock);
	count_buffered(e, s, len);
	if ((s->buffered > e->high_water || e->buffered > e->max_buffer) && s->spare) {
		struct waiter *w = s->spare;
		s->spare = NULL;
		*w = (struct waiter){.s = s, .cb = cb, .arg = arg};
		waitq_push(&e->parked, w);
		e->nparked++;
		rc = STREAM_PARKED;
	}
	if (!s->scheduled) {
		/* The writer's thread may drain this itself once it has replied (stream_help):
		 * waking a drain thread for every write costs more than the write, when the
		 * store keeps up. Not when parked, nor when a rate must be kept (a helper would
		 * sleep for it), nor when enough threads are lent already. */
		if (rc == 0 && e->helpers < STREAM_MAX_HELPERS && help_allowed(e, s)) {
			s->scheduled = true;
			e->helpers++;
			rc = STREAM_HELP;
		} else {
			ready_push(e, s);
		}
	}
	pool_put(e, held);
	held = NULL;
	pthread_mutex_unlock(&e->lock);
out:
	if (held) {
		pthread_mutex_lock(&e->lock);
		pool_put(e, held);
		pthread_mutex_unlock(&e->lock);
	}
	pthread_mutex_unlock(&s->lock);
	free(fresh);
	return rc;
}

/* ---- draining ----------------------------------------------------------------------- */

static ssize_t stream_real_pwritev(void *ctx, int fd, const struct iovec *iov, int cnt, off_t off)
{
	(void)ctx;
	return pwritev(fd, iov, cnt, off);
}

/* Write-behind, as a streaming writer should do it: start the device write of what was just
 * written, wait for what lies STREAM_CACHE_BEHIND further back, drop that from the cache. A
 * copy then holds a few MiB of the store's page cache instead of the whole file, which also
 * made disk copies on the test VM 1.5-2.9x faster and cheaper (fresh page-cache pages cost a
 * host fault each there; reused ones do not). Only errors of the data itself count: a file
 * kind with no write-back (a pipe, a device) answers ESPIPE or EINVAL, and a cache that could
 * not be dropped is no error. */
static int stream_real_writeback(void *ctx, int fd, uint64_t off, uint64_t len, uint64_t drop_off,
				 uint64_t drop_len)
{
	(void)ctx;
	/* A store in memory has no device to write behind to, and there every drop fails,
	 * which makes the kernel drain the page lists of every CPU (lru_add_drain_all) and try
	 * again, for nothing. One fstatfs tells, and the stream does not ask again. */
	struct statfs sf;
	if (fstatfs(fd, &sf) == 0 && (sf.f_type == TMPFS_MAGIC || sf.f_type == RAMFS_MAGIC))
		return STREAM_WB_NONE;
	int rc = sync_file_range(fd, (off_t)off, (off_t)len, SYNC_FILE_RANGE_WRITE);
	if (rc == 0 && drop_len != 0) {
		rc = sync_file_range(fd, (off_t)drop_off, (off_t)drop_len,
				     SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
					 SYNC_FILE_RANGE_WAIT_AFTER);
		if (rc == 0 &&
		    posix_fadvise(fd, (off_t)drop_off, (off_t)drop_len, POSIX_FADV_DONTNEED) != 0)
			return 0; /* the pages stay cached: nothing is lost */
	}
	if (rc != 0 && (errno == EIO || errno == ENOSPC || errno == EDQUOT))
		return -errno;
	return 0;
}

/* Filesystems whose writes land in the local page cache: a write there is a copy. */
static int stream_real_cached(void *ctx, int fd)
{
	(void)ctx;
	struct statfs sf;
	if (fstatfs(fd, &sf) != 0)
		return STREAM_STORE_REMOTE; /* unknown: buffered, as for a remote store */
	switch (sf.f_type) {
	case TMPFS_MAGIC:
	case RAMFS_MAGIC:
		return STREAM_STORE_MEMORY;
	case EXT4_SUPER_MAGIC: /* ext2 and ext3 too */
	case XFS_SUPER_MAGIC:
	case BTRFS_SUPER_MAGIC:
	case F2FS_SUPER_MAGIC:
		return STREAM_STORE_DEVICE;
	default:
		return STREAM_STORE_REMOTE;
	}
}

/* A descriptor of the file open at fd that may go O_DIRECT: its own open file description
 * (O_DIRECT is a flag of the description, which a dup shares with whoever else reads through
 * it), opened again through /proc/self/fd, where statx reports direct I/O alignments. */
static int stream_real_direct_open(void *ctx, int fd, unsigned *mem_align, unsigned *off_align)
{
	(void)ctx;
	struct statx sx;
	if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) != 0)
		return -errno;
	if (!(sx.stx_mask & STATX_DIOALIGN) || sx.stx_dio_offset_align == 0)
		return -EOPNOTSUPP;
	char path[32];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	int nfd = open(path, O_WRONLY | O_CLOEXEC);
	if (nfd < 0)
		return -errno;
	*mem_align = sx.stx_dio_mem_align;
	*off_align = sx.stx_dio_offset_align;
	return nfd;
}

/* Sets or clears O_DIRECT on the stream's own open file description. */
static int stream_real_direct(void *ctx, int fd, int on)
{
	(void)ctx;
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return -errno;
	fl = on ? fl | O_DIRECT : fl & ~O_DIRECT;
	return fcntl(fd, F_SETFL, fl) == 0 ? 0 : -errno;
}

/* Writes all n bytes of iov at off through the sink, resuming after short writes and EINTR.
 * iov is consumed. Returns 0 or -errno (-EIO for a sink that writes nothing). */
static int sink_write_all(struct stream_engine *e, int fd, struct iovec *iov, int cnt, uint64_t off,
			  uint64_t n)
{
	while (n) {
		ssize_t r = e->sink.pwritev(e->sink.ctx, fd, iov, cnt, (off_t)off);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return errno ? -errno : -EIO;
		}
		if (r == 0)
			return -EIO;
		off += (uint64_t)r;
		n -= (uint64_t)r;
		while (cnt && (size_t)r >= iov->iov_len) {
			r -= (ssize_t)iov->iov_len;
			iov++;
			cnt--;
		}
		if (cnt) {
			iov->iov_base = (char *)iov->iov_base + r;
			iov->iov_len -= (size_t)r;
		}
	}
	return 0;
}

/* [s] Marks the next slice (contiguous in the file, at most `slice` bytes and DRAIN_IOV
 * pieces) in flight and maps it into iov. Returns its length; *off and *cnt describe it. */
static uint64_t slice_map(struct stream *s, uint64_t slice, struct iovec *iov, int *cnt,
			  uint64_t *off)
{
	uint64_t n = 0;

	*cnt = 0;
	if (!s->head)
		return 0;
	*off = s->head->off;
	for (struct seg *g = s->head; g && n < slice && *cnt < DRAIN_IOV; g = g->next) {
		uint64_t want = min_u64(g->len, slice - n), got = 0;
		if (g->off != *off + n)
			break;
		while (got < want) {
			uint64_t avail;
			char *p = seg_ptr(s, g, got, &avail);
			avail = min_u64(avail, want - got);
			struct iovec *last = *cnt ? &iov[*cnt - 1] : NULL;
			if (last && (char *)last->iov_base + last->iov_len == p) {
				/* Segments that follow each other in the log are one piece: a
				 * direct write needs every piece a multiple of the block size. */
				last->iov_len += avail;
			} else {
				if (*cnt == DRAIN_IOV)
					break;
				iov[(*cnt)++] = (struct iovec){.iov_base = p, .iov_len = avail};
			}
			got += avail;
		}
		g->inflight = got;
		n += got;
		if (got < g->len)
			break;
	}
	return n;
}

/* [s] Once nothing is pending and no write-behind owed: answers stream_wait_empty's waiters
 * (moved to run) and wakes stream_sync's. */
static void empty_wake(struct stream *s, struct waitq *run)
{
	if (s->head || s->behind)
		return;
	waitq_move_all(&s->empty, run, s->error ? -s->error : 0);
	pthread_cond_broadcast(&s->idle);
}

/* Finishes a slice of n bytes with result rc: consumes or (on error) drops the pending data,
 * returns blocks, re-queues or unschedules the stream, and answers whoever may go on. A
 * helper's stream with more pending stays scheduled to it when help_allowed: returns true
 * then (the caller must drain s again), else false. */
static bool slice_end(struct stream_engine *e, struct stream *s, uint64_t n, int rc, bool helping)
{
	bool again = false;
	struct waitq run = {NULL, NULL};
	void *freed = NULL;
	struct seg *done = NULL; /* lent segments to release once the locks are dropped */
	unsigned ndone = 0;
	uint64_t dropped = 0, now = stream_now(e);

	pthread_mutex_lock(&s->lock);
	while (s->head && (rc != 0 || s->head->inflight)) {
		struct seg *g = s->head;
		uint64_t k = rc != 0 ? g->len : g->inflight;
		dropped += k;
		g->off += k;
		if (g->lent != NULL)
			g->lent += k;
		else
			g->pos += k;
		g->len -= k;
		g->inflight = 0;
		if (g->len)
			break;
		s->head = g->next;
		if (!s->head)
			s->tail = NULL;
		s->nsegs--;
		if (g->lent != NULL) {
			g->next = done;
			done = g;
			ndone++;
		} else {
			free(g);
		}
	}
	log_trim(s, &freed);
	pthread_mutex_lock(&e->lock);
	if (ndone != 0) {
		e->lent -= ndone;
		pthread_cond_broadcast(&e->room); /* stream_write_lent waits there for a slot */
	}
	if (rc != 0)
		s->error = -rc;
	else
		count_committed(e, s, n, now);
	s->buffered -= dropped;
	e->buffered -= dropped;
	pool_put(e, freed);
	s->scheduled = false;
	/* More pending. After a failed slice nothing is, but a stream_behind may have failed the
	 * stream meanwhile: then a drain thread's drain_one drops the rest, which must not be
	 * stranded in an unscheduled stream. */
	if (s->head) {
		if (helping && !s->error && help_allowed(e, s))
			s->scheduled = again = true;
		else
			ready_push(e, s);
	}
	parked_release(e, &run, NULL);
	pthread_mutex_unlock(&e->lock);
	empty_wake(s, &run);
	pthread_mutex_unlock(&s->lock);
	/* s may be freed from here on (stream_close), unless again: it still has pending data. */
	waitq_run(&run);
	while (done != NULL) {
		struct seg *g = done;
		done = g->next;
		g->release(g->release_arg);
		free(g);
	}
	return again;
}

/* The sink's write-back of s's file, unless it said the file has none. Run by the thread
 * draining s, or after a write-through by the thread that wrote it (stream_behind). */
static int sink_writeback(struct stream_engine *e, struct stream *s, uint64_t off, uint64_t len,
			  uint64_t drop_off, uint64_t drop_len)
{
	if (__atomic_load_n(&s->no_wb, __ATOMIC_RELAXED))
		return 0;
	int rc = e->sink.writeback(e->sink.ctx, s->fd, off, len, drop_off, drop_len);
	if (rc == STREAM_WB_NONE) {
		__atomic_store_n(&s->no_wb, true, __ATOMIC_RELAXED);
		rc = 0;
	}
	return rc;
}

/* The chunks [*first, *last) whose write-behind a slice [off, off+n) completed; false when it
 * completed none, or s has no write-back to do. */
static bool behind_span(struct stream_engine *e, struct stream *s, uint64_t off, uint64_t n,
			uint64_t *first, uint64_t *last)
{
	*first = off / STREAM_WB_CHUNK * STREAM_WB_CHUNK;
	*last = (off + n) / STREAM_WB_CHUNK * STREAM_WB_CHUNK;
	return !e->keep_cache && *last != *first && !__atomic_load_n(&s->no_wb, __ATOMIC_RELAXED);
}

/* Starts the write-back of chunks [first, last) and waits for and drops the same span
 * STREAM_CACHE_BEHIND further back. */
static int behind_run(struct stream_engine *e, struct stream *s, uint64_t first, uint64_t last)
{
	uint64_t lag = STREAM_CACHE_BEHIND;
	uint64_t drop_off = first > lag ? first - lag : 0, drop_end = last > lag ? last - lag : 0;
	return sink_writeback(e, s, first, last - first, drop_off, drop_end - drop_off);
}

/* After a slice [off, off+n) reached the store: the write-behind (stream_real_writeback), a
 * STREAM_WB_CHUNK of the file at a time, so that small writes do not each cost it: when the
 * slice ends in a later chunk than it began, the chunks it completed are started, and the
 * same span STREAM_CACHE_BEHIND further back is waited for and dropped. A sequential copy
 * thus keeps about its last STREAM_CACHE_BEHIND + STREAM_WB_CHUNK bytes cached; other
 * patterns, whatever they wrote there. */
static int write_behind(struct stream_engine *e, struct stream *s, uint64_t off, uint64_t n)
{
	uint64_t first, last;
	return behind_span(e, s, off, n, &first, &last) ? behind_run(e, s, first, last) : 0;
}

/* [drain] Changes s->dio (which slice_begin reads under the lock). */
static void dio_set(struct stream *s, int dio)
{
	pthread_mutex_lock(&s->lock);
	s->dio = dio;
	pthread_mutex_unlock(&s->lock);
}

/* The first slice that may go direct, at off: takes the stream's own descriptor (closing the
 * dup it had) and writes out and drops what the file has in the page cache below off, which
 * write-behind would otherwise have dropped later. On any failure to set up, the stream stays
 * buffered for good (DIO_NONE) and 0 is returned; only a failed write-back is an error. */
static int direct_begin(struct stream_engine *e, struct stream *s, uint64_t off)
{
	unsigned mem = 0, align = 0;
	int fd = e->sink.direct_open(e->sink.ctx, s->fd, &mem, &align);
	if (fd >= 0 && (align == 0 || align > DIO_CUT || DIO_CUT % align != 0)) {
		/* An alignment slices are not cut for: of no use. Nothing was written through
		 * fd, so its close has no error to report. */
		close(fd);
		fd = -EOPNOTSUPP;
	}
	if (fd < 0) {
		dio_set(s, DIO_NONE);
		return 0;
	}
	int old = s->fd;
	s->fd = fd;
	s->dio_mem = mem ? mem : 1;
	s->dio_off = align;
	dio_set(s, DIO_ON);
	/* The dup was the stream's own descriptor (its description stays open in the handles
	 * that share it): closing it fails only where close reports write errors (NFS), which
	 * is not a store with direct I/O. */
	if (close(old) != 0 && errno == EIO)
		return -EIO;
	return off != 0 ? sink_writeback(e, s, 0, off, 0, off) : 0;
}

/* Bytes at the start of a slice at off that direct I/O can write: up to the first piece whose
 * address is not dio_mem-aligned or whose length is not a multiple of dio_off (of that piece,
 * its whole multiples). 0 when direct I/O is not on or off itself is not aligned. */
static uint64_t direct_prefix(const struct stream *s, const struct iovec *iov, int cnt,
			      uint64_t off)
{
	uint64_t d = 0;
	if (s->dio != DIO_ON || off % s->dio_off != 0)
		return 0;
	for (int i = 0; i < cnt; i++) {
		if ((uintptr_t)iov[i].iov_base % s->dio_mem != 0)
			break;
		size_t whole = iov[i].iov_len / s->dio_off * s->dio_off;
		d += whole;
		if (whole != iov[i].iov_len)
			break;
	}
	return d;
}

/* Switches O_DIRECT on s's descriptor to `on` unless it already is. */
static int direct_switch(struct stream_engine *e, struct stream *s, bool on)
{
	if (s->dio_on == on)
		return 0;
	int rc = e->sink.direct(e->sink.ctx, s->fd, on);
	if (rc == 0)
		s->dio_on = on;
	return rc;
}

/* Writes the first d bytes of a slice (direct_prefix) with O_DIRECT, straight from the
 * blocks to the device: no copy into the page cache, no write-back to start or wait for.
 * iov is left as it was. Returns 0, a negative errno of the data, or 1 when the store
 * refused direct I/O after all (EINVAL: an alignment it did not report, or no support):
 * direct I/O is then off for good and the caller writes the whole slice as buffered data
 * (rewriting whatever part went out is harmless: same bytes, same place). */
static int direct_write(struct stream_engine *e, struct stream *s, const struct iovec *iov,
			uint64_t off, uint64_t d)
{
	struct iovec part[DRAIN_IOV];
	int k = 0;
	for (uint64_t got = 0; got < d; k++) {
		part[k] = iov[k];
		if (part[k].iov_len > d - got)
			part[k].iov_len = (size_t)(d - got);
		got += part[k].iov_len;
	}
	int rc = direct_switch(e, s, true);
	if (rc == 0)
		rc = sink_write_all(e, s->fd, part, k, off, d);
	if (rc != -EINVAL)
		return rc;
	dio_set(s, DIO_NONE);
	return 1;
}

/* Writes a slice as the stream's owner (if any): when slice_begin let it go direct, its
 * aligned start with O_DIRECT, the rest through the page cache. The owner is read after
 * slice_begin took the stream lock: stream_set_owner before a stream_write (which appends
 * under that lock) happens before, so every byte goes out as the owner set before it was
 * written, or a later one. iov is consumed. */
static int slice_store(struct stream_engine *e, struct stream *s, struct iovec *iov, int cnt,
		       uint64_t off, uint64_t n)
{
	const struct stream_owner *o = __atomic_load_n(&s->owner, __ATOMIC_ACQUIRE);
	int rc = o != NULL ? o->enter(o) : 0;
	if (rc != 0)
		return rc;
	uint64_t d = 0;
	if (s->slice_direct && s->dio == DIO_UNTRIED)
		rc = direct_begin(e, s, off);
	if (rc == 0 && s->slice_direct)
		d = direct_prefix(s, iov, cnt, off);
	if (d != 0) {
		rc = direct_write(e, s, iov, off, d);
		if (rc == 1)
			d = rc = 0; /* refused: all of it through the page cache */
		else if (rc == 0)
			__atomic_add_fetch(&s->direct, d, __ATOMIC_RELAXED);
	}
	if (rc == 0 && d < n) {
		/* Skip the pieces the direct write took whole; trim the one it took part of. */
		uint64_t skip = d;
		while (skip >= iov->iov_len && skip != 0) {
			skip -= iov->iov_len;
			iov++;
			cnt--;
		}
		iov->iov_base = (char *)iov->iov_base + skip;
		iov->iov_len -= (size_t)skip;
		rc = direct_switch(e, s, false);
		if (rc == 0)
			rc = sink_write_all(e, s->fd, iov, cnt, off + d, n - d);
	}
	if (o != NULL)
		o->leave(o);
	return rc;
}

/* A drained slice: slice_store, then write-behind over the whole slice, direct part too: the
 * buffered ends of direct slices (a page or two a FUSE request, from a writer whose buffer is
 * not aligned) are then written out, waited for (their errors fail the stream) and dropped
 * like any buffered data. */
static int slice_write(struct stream_engine *e, struct stream *s, struct iovec *iov, int cnt,
		       uint64_t off, uint64_t n)
{
	int rc = slice_store(e, s, iov, cnt, off, n);
	return rc != 0 ? rc : write_behind(e, s, off, n);
}

/* [s] Un-marks a slice that is postponed. */
static void slice_cancel(struct stream *s)
{
	for (struct seg *g = s->head; g && g->inflight; g = g->next)
		g->inflight = 0;
}

/* [s] The next slice (slice_map), and whether it may go direct (s->slice_direct): when the
 * stream has committed direct_from bytes, direct I/O is not ruled out for it and the slice
 * has STREAM_DIRECT_MIN bytes. Such a slice is cut at DIO_CUT boundaries of the file: a writer
 * whose buffer is not page-aligned (Python's bytes, a malloc'd buffer) makes FUSE requests of
 * 256 KiB less a few bytes, at offsets that are not aligned, and slices following them would
 * never be. So an unaligned start is written alone (through the page cache) up to the next
 * boundary, and a slice from an aligned start ends at the last boundary it reaches; the rest
 * is the next slice (with what arrived meanwhile, if anything did: a thread lent by a writer
 * drains each request as it comes, so then the rest and the next request's head go out as
 * two small buffered writes). Since the log keeps a sequential copy's bytes at positions
 * congruent to their file offsets, their memory is then aligned too. */
static uint64_t slice_begin(struct stream *s, uint64_t slice, struct iovec *iov, int *cnt,
			    uint64_t *off)
{
	struct stream_engine *e = s->e;
	uint64_t n = slice_map(s, slice, iov, cnt, off), want = n;
	s->slice_direct = false;
	if (e->direct_from == 0 || s->dio == DIO_NONE || s->committed < e->direct_from ||
	    n < STREAM_DIRECT_MIN)
		return n;
	if (*off % DIO_CUT != 0) {
		want = DIO_CUT - *off % DIO_CUT;
	} else {
		s->slice_direct = true;
		want = n - n % DIO_CUT;
	}
	if (want == n)
		return n;
	slice_cancel(s);
	return slice_map(s, want, iov, cnt, off);
}

/* Drains one slice of s: charge the buckets, sleep, write, finish. A slice the file's bucket
 * does not allow yet is not slept for here (that would stall every other stream this thread
 * could serve): its bytes stay charged (prepaid) and the stream goes to the timed list until
 * the bucket's deadline. The global bucket is slept for in place: it holds back every stream
 * alike, so no other slice could go out earlier anyway. Returns slice_end's verdict: true
 * when a helper must drain s again. */
static bool drain_one(struct stream_engine *e, struct stream *s, bool helping)
{
	struct iovec iov[DRAIN_IOV];
	uint64_t off = 0, n, now, when;
	int cnt, rc = 0;

	uint64_t slice = min_u64(throttle_slice(&e->throttle), throttle_slice(&s->throttle));
	if (s->prepaid)
		slice = min_u64(slice, s->prepaid);
	pthread_mutex_lock(&s->lock);
	/* A stream that failed while it was queued (stream_write_through) only drops its data. */
	rc = s->error ? -s->error : 0;
	n = rc != 0 ? 0 : slice_begin(s, slice, iov, &cnt, &off);
	pthread_mutex_unlock(&s->lock);
	if (n) {
		now = stream_now(e);
		if (s->prepaid) {
			s->prepaid -= min_u64(n, s->prepaid);
		} else if ((when = throttle_take(&s->throttle, n, now)) > now) {
			pthread_mutex_lock(&s->lock);
			slice_cancel(s);
			pthread_mutex_unlock(&s->lock);
			s->prepaid = n;
			s->not_before = when;
			pthread_mutex_lock(&e->lock);
			s->ready_next = e->timed;
			e->timed = s;
			pthread_cond_signal(&e->work); /* someone must time it */
			pthread_mutex_unlock(&e->lock);
			return false;
		}
		when = throttle_take(&e->throttle, n, now);
		if (when > now)
			e->clock->sleep_until_ns(e->clock->ctx, when);
		rc = slice_write(e, s, iov, cnt, off, n);
	}
	return slice_end(e, s, n, rc, helping);
}

/* What kind of store s's file is on (STREAM_STORE_*, stream_sink.cached), asked once per
 * stream, at its first large write: racing askers get the same answer. */
static int store_kind(struct stream_engine *e, struct stream *s)
{
	int kind = __atomic_load_n(&s->store, __ATOMIC_RELAXED);
	if (kind < 0) {
		kind = e->sink.cached(e->sink.ctx, s->fd);
		if (kind != STREAM_STORE_DEVICE && kind != STREAM_STORE_MEMORY)
			kind = STREAM_STORE_REMOTE;
		__atomic_store_n(&s->store, kind, __ATOMIC_RELAXED);
	}
	return kind;
}

/* [s+e] Whether a large write may go straight to the store now (stream_write_through). */
static bool through_allowed(struct stream_engine *e, struct stream *s)
{
	return !s->scheduled && s->head == NULL && !s->error && e->direct_from == 0 &&
	       e->helpers < STREAM_MAX_HELPERS && help_allowed(e, s);
}

int stream_write_through(struct stream *s, struct iovec *iov, int cnt, uint64_t off)
{
	struct stream_engine *e = s->e;
	uint64_t len = 0;

	for (int i = 0; i < cnt; i++)
		len += iov[i].iov_len;
	if (len < STREAM_THROUGH_MIN) /* the common small write pays no lock here */
		return STREAM_THROUGH_NO;
	if (off > (uint64_t)INT64_MAX || len > (uint64_t)INT64_MAX - off)
		return -EINVAL;
	if (store_kind(e, s) == STREAM_STORE_REMOTE)
		return STREAM_THROUGH_NO;
	pthread_mutex_lock(&s->lock);
	pthread_mutex_lock(&e->lock);
	bool take = through_allowed(e, s);
	if (take) { /* the stream is this thread's as a helper's: no drain touches it */
		s->scheduled = true;
		e->helpers++;
	}
	pthread_mutex_unlock(&e->lock);
	pthread_mutex_unlock(&s->lock);
	if (!take)
		return STREAM_THROUGH_NO;

	s->slice_direct = false;
	int rc = slice_store(e, s, iov, cnt, off, len);
	uint64_t now = stream_now(e), first, last;
	bool owe = rc == 0 && behind_span(e, s, off, len, &first, &last);
	struct waitq run = {NULL, NULL};
	pthread_mutex_lock(&s->lock);
	if (rc == 0)
		count_received(s, len, now);
	if (owe) {
		/* Merged with a span still owed; not with one a stream_behind already took, which
		 * left [0, 0) behind while it waits for the device. */
		bool owed = s->owed_first != s->owed_last;
		s->owed_first = owed ? min_u64(s->owed_first, first) : first;
		s->owed_last = owed ? max_u64(s->owed_last, last) : last;
		s->behind++;
	}
	pthread_mutex_lock(&e->lock);
	if (rc == 0) {
		count_committed(e, s, len, now);
	} else {
		s->error = -rc;
		parked_release(e, &run, NULL);
	}
	/* Writes that came meanwhile were buffered behind this one: the caller writes them after
	 * replying (a failed stream's go to a drain thread, which drops them), unless it owes
	 * the write-behind: then a drain thread does, and the stream is free for the next
	 * write-through while this thread waits for the device. */
	int ret = rc;
	if (rc == 0 && s->head != NULL && !owe) {
		ret = STREAM_HELP;
	} else {
		s->scheduled = false;
		if (owe)
			ret = STREAM_BEHIND; /* the thread stays lent until stream_behind */
		else
			e->helpers--;
		if (s->head != NULL)
			ready_push(e, s);
	}
	pthread_mutex_unlock(&e->lock);
	pthread_mutex_unlock(&s->lock);
	waitq_run(&run);
	return ret;
}

/* [s+e] Whether a large write may be queued in the writer's memory (stream_write_lent). */
static bool lend_allowed(struct stream_engine *e, struct stream *s)
{
	return e->lend_max != 0 && e->direct_from == 0 && !e->stop && help_allowed(e, s);
}

int stream_write_lent(struct stream *s, const void *mem, size_t len, uint64_t off,
		      stream_release release, void *arg)
{
	struct stream_engine *e = s->e;
	int rc;

	if (len < STREAM_THROUGH_MIN || e->lend_max == 0 || release == NULL)
		return STREAM_THROUGH_NO;
	if (off > (uint64_t)INT64_MAX || len > (uint64_t)INT64_MAX - off)
		return -EINVAL;
	if (store_kind(e, s) != STREAM_STORE_MEMORY)
		return STREAM_THROUGH_NO;
	struct seg *g = malloc(sizeof(*g));
	if (g == NULL)
		return STREAM_THROUGH_NO; /* the buffered path answers for the memory */
	pthread_mutex_lock(&s->lock);
	pthread_mutex_lock(&e->lock);
	for (;;) {
		rc = s->error ? -s->error : lend_allowed(e, s) ? 0 : STREAM_THROUGH_NO;
		if (rc != 0 || e->lent < e->lend_max)
			break;
		/* Every slot is taken: wait for one, as a write waits for pool blocks, with the
		 * stream lock dropped (the drains need it). The store is local and unthrottled, so
		 * slots come back within the time of a write to its page cache. */
		pthread_mutex_unlock(&s->lock);
		pthread_cond_wait(&e->room, &e->lock);
		pthread_mutex_unlock(&e->lock);
		pthread_mutex_lock(&s->lock);
		pthread_mutex_lock(&e->lock);
	}
	if (rc != 0) {
		pthread_mutex_unlock(&e->lock);
		pthread_mutex_unlock(&s->lock);
		free(g);
		return rc;
	}
	uint64_t now = stream_now(e);
	*g = (struct seg){.off = off,
			  .len = len,
			  .pos = s->log_tail,
			  .lent = (char *)mem,
			  .release = release,
			  .release_arg = arg};
	seg_append(s, g);
	e->lent++;
	count_buffered(e, s, len);
	/* As a buffered write's (stream_write_from), but never parked: its memory is the
	 * writer's, bounded by lend_max, not by the buffer budget. */
	if (!s->scheduled) {
		if (e->helpers < STREAM_MAX_HELPERS) {
			s->scheduled = true;
			e->helpers++;
			rc = STREAM_HELP;
		} else {
			ready_push(e, s);
		}
	}
	pthread_mutex_unlock(&e->lock);
	count_received(s, len, now);
	pthread_mutex_unlock(&s->lock);
	return rc;
}

void stream_behind(struct stream *s)
{
	struct stream_engine *e = s->e;
	struct waitq run = {NULL, NULL};

	/* Whatever is owed by now: a write-through that came meanwhile may have widened the span,
	 * and its own stream_behind then finds less or nothing left to do. */
	pthread_mutex_lock(&s->lock);
	uint64_t first = s->owed_first, last = s->owed_last;
	s->owed_first = s->owed_last = 0;
	pthread_mutex_unlock(&s->lock);
	int rc = first != last ? behind_run(e, s, first, last) : 0;
	pthread_mutex_lock(&s->lock);
	pthread_mutex_lock(&e->lock);
	if (rc != 0 && !s->error) { /* as a drained slice's failure: pending data is dropped */
		s->error = -rc;
		parked_release(e, &run, NULL);
	}
	e->helpers--;
	pthread_mutex_unlock(&e->lock);
	s->behind--;
	empty_wake(s, &run);
	pthread_mutex_unlock(&s->lock);
	/* s may be freed from here on (stream_close) */
	waitq_run(&run);
}

void stream_set_owner(struct stream *s, const struct stream_owner *o)
{
	if (__atomic_load_n(&s->owner, __ATOMIC_RELAXED) != o)
		__atomic_store_n(&s->owner, o, __ATOMIC_RELEASE);
}

void stream_help(struct stream *s)
{
	struct stream_engine *e = s->e;
	while (drain_one(e, s, true))
		; /* s may be gone once drain_one returns false */
	pthread_mutex_lock(&e->lock);
	e->helpers--;
	pthread_mutex_unlock(&e->lock);
}

/* [e] Moves the timed streams that are due at `now` to the ready queue; returns the earliest
 * deadline of those left (UINT64_MAX if none). */
static uint64_t timed_release(struct stream_engine *e, uint64_t now)
{
	struct stream **pp = &e->timed, *s;
	uint64_t next = UINT64_MAX;

	while ((s = *pp) != NULL) {
		if (s->not_before > now) {
			next = min_u64(next, s->not_before);
			pp = &s->ready_next;
			continue;
		}
		*pp = s->ready_next;
		ready_push(e, s);
	}
	return next;
}

static void *drain_main(void *arg)
{
	struct stream_engine *e = arg;

	pthread_mutex_lock(&e->lock);
	for (;;) {
		uint64_t next = timed_release(e, stream_now(e));
		struct stream *s = e->ready_head;
		if (s) {
			e->ready_head = s->ready_next;
			if (!e->ready_head)
				e->ready_tail = NULL;
			pthread_mutex_unlock(&e->lock);
			drain_one(e, s, false);
			pthread_mutex_lock(&e->lock);
		} else if (e->stop) {
			break; /* streams are all closed: nothing is timed */
		} else if (next != UINT64_MAX && !e->timer) {
			/* Sleep for the earliest timed stream; other threads take new work. */
			e->timer = true;
			pthread_mutex_unlock(&e->lock);
			e->clock->sleep_until_ns(e->clock->ctx, next);
			pthread_mutex_lock(&e->lock);
			e->timer = false;
		} else {
			pthread_cond_wait(&e->work, &e->lock);
		}
	}
	pthread_mutex_unlock(&e->lock);
	return NULL;
}

/* ---- waiting and reading ------------------------------------------------------------ */

int stream_wait_empty(struct stream *s, stream_cb cb, void *arg)
{
	int rc;

	pthread_mutex_lock(&s->lock);
	if (s->error) {
		rc = -s->error;
	} else if (!s->head && !s->behind) {
		rc = 0;
	} else {
		struct waiter *w = malloc(sizeof(*w));
		if (w) {
			*w = (struct waiter){.s = s, .cb = cb, .arg = arg};
			waitq_push(&s->empty, w);
			rc = STREAM_PARKED;
		} else {
			rc = -ENOMEM;
		}
	}
	pthread_mutex_unlock(&s->lock);
	return rc;
}

/* [s] Waits until nothing is pending; returns 0 or the negative sticky error. */
static int stream_sync_locked(struct stream *s)
{
	s->syncing++;
	while (s->head || s->behind)
		pthread_cond_wait(&s->idle, &s->lock);
	s->syncing--;
	return s->error ? -s->error : 0;
}

int stream_sync(struct stream *s)
{
	pthread_mutex_lock(&s->lock);
	int rc = stream_sync_locked(s);
	pthread_mutex_unlock(&s->lock);
	return rc;
}

ssize_t stream_read(struct stream *s, int fd, void *buf, size_t len, uint64_t off)
{
	ssize_t r;

	if (off > (uint64_t)INT64_MAX || len > (uint64_t)INT64_MAX - off)
		return -EINVAL;
	pthread_mutex_lock(&s->lock);
	do
		r = pread(fd, buf, len, (off_t)off);
	while (r < 0 && errno == EINTR);
	if (r < 0) {
		r = -errno;
		pthread_mutex_unlock(&s->lock);
		return r;
	}
	uint64_t end = min_u64(seg_end(s), off + len);
	if (end > off + (uint64_t)r) {
		memset((char *)buf + r, 0, end - off - (uint64_t)r);
		r = (ssize_t)(end - off);
	}
	for (struct seg *g = s->head; g; g = g->next) {
		uint64_t a = g->off > off ? g->off : off;
		uint64_t b = min_u64(g->off + g->len, off + (uint64_t)r);
		if (a < b)
			seg_read(s, g, a - g->off, (char *)buf + (a - off), b - a);
	}
	pthread_mutex_unlock(&s->lock);
	return r;
}

uint64_t stream_end(struct stream *s)
{
	pthread_mutex_lock(&s->lock);
	uint64_t end = seg_end(s);
	pthread_mutex_unlock(&s->lock);
	return end;
}

uint64_t stream_last_write_ns(struct stream *s)
{
	pthread_mutex_lock(&s->lock);
	uint64_t t = s->last_write_ns;
	pthread_mutex_unlock(&s->lock);
	return t;
}

void stream_stats(struct stream *s, struct stream_stats *st)
{
	uint64_t now = stream_now(s->e);

	pthread_mutex_lock(&s->lock);
	*st = (struct stream_stats){
	    .received = s->received,
	    .committed = s->committed,
	    .direct = __atomic_load_n(&s->direct, __ATOMIC_RELAXED),
	    .buffered = s->buffered,
	    .started_ns = s->started_ns,
	    .last_ns = s->last_ns,
	    .rate = s->received ? ring_rate(&s->ring, now, s->started_ns) : 0,
	    .error = s->error,
	};
	if (s->error)
		st->state = STREAM_ERROR;
	else if (s->head || s->behind)
		st->state = s->syncing || s->empty.head ? STREAM_DRAINING : STREAM_WRITING;
	else
		st->state = s->received ? STREAM_DONE : STREAM_IDLE;
	pthread_mutex_unlock(&s->lock);
}

/* ---- lifetime ----------------------------------------------------------------------- */

/* [e] Starts the drain threads not yet running. They start with the first stream, not with
 * the engine: until something is opened for writing there is nothing to drain, and a daemon
 * that only serves lookups and reads (a find, a backup read) then keeps no idle thread
 * stacks and thread state (about 10 KiB resident each). Returns 0 when at least one thread
 * runs (a later stream_open tries again for the rest), else the error. */
static int engine_start(struct stream_engine *e)
{
	int rc = 0;

	while (e->nthreads < e->want) {
		rc = -pthread_create(&e->threads[e->nthreads], NULL, drain_main, e);
		if (rc != 0)
			break;
		e->nthreads++;
	}
	return e->nthreads != 0 ? 0 : rc;
}

int stream_open(struct stream_engine *e, int fd, struct stream **out)
{
	struct stream *s = calloc(1, sizeof(*s));
	int rc = -ENOMEM;

	if (!s)
		goto fail;
	s->e = e;
	s->fd = fd;
	s->store = -1;
	rc = -pthread_mutex_init(&s->lock, NULL);
	if (rc != 0)
		goto fail_free;
	rc = -pthread_cond_init(&s->idle, NULL);
	if (rc != 0)
		goto fail_mutex;
	pthread_mutex_lock(&e->lock);
	rc = engine_start(e);
	if (rc == 0)
		rc = throttle_init(&s->throttle, e->file_rate, stream_now(e));
	if (rc == 0) {
		s->next = e->streams;
		if (e->streams)
			e->streams->prev = s;
		e->streams = s;
		e->nstreams++;
	}
	pthread_mutex_unlock(&e->lock);
	if (rc != 0)
		goto fail_cond;
	*out = s;
	return 0;
fail_cond:
	pthread_cond_destroy(&s->idle);
fail_mutex:
	pthread_mutex_destroy(&s->lock);
fail_free:
	free(s);
fail:
	if (close(fd) != 0 && rc == 0)
		rc = -errno;
	return rc;
}

int stream_close(struct stream *s)
{
	struct stream_engine *e = s->e;
	struct waitq run = {NULL, NULL};
	int rc;

	pthread_mutex_lock(&s->lock);
	rc = stream_sync_locked(s);
	pthread_mutex_lock(&e->lock);
	/* Nothing pending means unscheduled: slice_end decides both under both locks (a
	 * stream_write_through would be the exception, and none runs on a closing stream). */
	parked_release(e, &run, s);
	if (s->prev)
		s->prev->next = s->next;
	else
		e->streams = s->next;
	if (s->next)
		s->next->prev = s->prev;
	e->nstreams--;
	pthread_mutex_unlock(&e->lock);
	pthread_mutex_unlock(&s->lock);
	waitq_run(&run);

	free(s->blk);
	free(s->spare);
	throttle_destroy(&s->throttle);
	pthread_cond_destroy(&s->idle);
	pthread_mutex_destroy(&s->lock);
	if (close(s->fd) != 0 && rc == 0)
		rc = -errno;
	free(s);
	return rc;
}

void stream_engine_set_rate(struct stream_engine *e, uint64_t rate, uint64_t file_rate)
{
	uint64_t now = stream_now(e);

	pthread_mutex_lock(&e->lock);
	e->rate = rate;
	e->file_rate = file_rate;
	throttle_set_rate(&e->throttle, rate, now);
	for (struct stream *s = e->streams; s; s = s->next)
		throttle_set_rate(&s->throttle, file_rate, now);
	/* Writers waiting for a lend slot ask again: with a rate, they buffer instead of
	 * waiting for a lent write that now drains at that rate. */
	pthread_cond_broadcast(&e->room);
	pthread_mutex_unlock(&e->lock);
}

void stream_engine_stats(struct stream_engine *e, struct stream_engine_stats *st)
{
	uint64_t now = stream_now(e);

	pthread_mutex_lock(&e->lock);
	*st = (struct stream_engine_stats){
	    .buffered = e->buffered,
	    .peak = e->peak,
	    .budget = e->max_buffer,
	    .high_water = e->high_water,
	    .rate = e->rate,
	    .file_rate = e->file_rate,
	    .blocks_used = e->nused,
	    .blocks_free = e->nfree,
	    .blocks_peak = e->peak_used,
	    .blocks_cap = e->cap_blocks,
	    .pool_bytes = (e->nused + e->nfree) * STREAM_BLOCK,
	    .committed = e->committed,
	    .throughput = ring_rate(&e->ring, now, e->start_ns),
	    .parked = e->nparked,
	    .streams = e->nstreams,
	    .threads = e->nthreads,
	};
	pthread_mutex_unlock(&e->lock);
}

/* Stops and joins the drain threads. */
static void engine_stop(struct stream_engine *e)
{
	pthread_mutex_lock(&e->lock);
	e->stop = true;
	unsigned n = e->nthreads;
	pthread_cond_broadcast(&e->work);
	pthread_mutex_unlock(&e->lock);
	for (unsigned i = 0; i < n; i++) {
		/* pthread_join fails only for an invalid or self thread: not ours to see. */
		if (pthread_join(e->threads[i], NULL) != 0)
			abort();
	}
}

/* Frees an engine whose threads are stopped and whose streams are closed. */
static void engine_release(struct stream_engine *e)
{
	void *b = e->free_blocks;

	while (b) {
		void *next = *(void **)b;
		if (munmap(b, STREAM_BLOCK) != 0)
			abort(); /* only possible for memory we did not map */
		b = next;
	}
	throttle_destroy(&e->throttle);
	pthread_cond_destroy(&e->room);
	pthread_cond_destroy(&e->work);
	pthread_mutex_destroy(&e->lock);
	free(e);
}

int stream_engine_new(const struct stream_config *cfg, struct stream_engine **out)
{
	static const struct stream_sink real_sink = {
	    .pwritev = stream_real_pwritev,
	    .writeback = stream_real_writeback,
	    .direct_open = stream_real_direct_open,
	    .direct = stream_real_direct,
	    .cached = stream_real_cached,
	};
	unsigned n = cfg->drain_threads ? cfg->drain_threads : STREAM_DEFAULT_DRAINS;
	uint64_t hw = cfg->high_water ? cfg->high_water : STREAM_DEFAULT_HIGH_WATER;
	uint64_t max = cfg->max_buffer ? cfg->max_buffer : STREAM_DEFAULT_MAX_BUFFER;
	struct stream_engine *e;
	int rc;

	if (n > STREAM_MAX_DRAINS || hw > max || max > UINT64_MAX / 2)
		return -EINVAL;
	e = calloc(1, sizeof(*e) + n * sizeof(e->threads[0]));
	if (!e)
		return -ENOMEM;
	e->high_water = hw;
	e->max_buffer = max;
	e->cap_blocks = STREAM_POOL_CAP(max);
	e->keep_blocks = STREAM_POOL_KEEP + (e->high_water + STREAM_BLOCK - 1) / STREAM_BLOCK;
	if (e->keep_blocks > e->cap_blocks)
		e->keep_blocks = e->cap_blocks;
	e->clock = cfg->clock ? cfg->clock : &clock_monotonic;
	e->no_help = cfg->no_help;
	e->lend_max = cfg->lend_max;
	e->keep_cache = cfg->keep_cache;
	e->direct_from = cfg->keep_cache ? 0 : cfg->direct_from; /* direct I/O drops the cache */
	e->sink = cfg->sink ? *cfg->sink : real_sink;
	if (e->sink.writeback == NULL)
		e->sink.writeback = stream_real_writeback;
	if (e->sink.direct_open == NULL)
		e->sink.direct_open = stream_real_direct_open;
	if (e->sink.direct == NULL)
		e->sink.direct = stream_real_direct;
	if (e->sink.cached == NULL)
		e->sink.cached = stream_real_cached;
	e->rate = cfg->rate;
	e->file_rate = cfg->file_rate;
	e->start_ns = stream_now(e);
	rc = -pthread_mutex_init(&e->lock, NULL);
	if (rc != 0)
		goto fail;
	rc = -pthread_cond_init(&e->work, NULL);
	if (rc != 0)
		goto fail_mutex;
	rc = -pthread_cond_init(&e->room, NULL);
	if (rc != 0)
		goto fail_work;
	rc = throttle_init(&e->throttle, cfg->rate, e->start_ns);
	if (rc != 0)
		goto fail_room;
	e->want = n; /* started by the first stream_open (engine_start) */
	*out = e;
	return 0;
fail_room:
	pthread_cond_destroy(&e->room);
fail_work:
	pthread_cond_destroy(&e->work);
fail_mutex:
	pthread_mutex_destroy(&e->lock);
fail:
	free(e);
	return rc;
}

void stream_engine_free(struct stream_engine *e)
{
	for (;;) {
		pthread_mutex_lock(&e->lock);
		struct stream *s = e->streams;
		pthread_mutex_unlock(&e->lock);
		if (!s)
			break;
		/* The owner should have closed it and seen the result; nobody is left to
		 * report an error to, and the data has been written or has failed either way. */
		int rc = stream_close(s);
		(void)rc;
	}
	engine_stop(e);
	engine_release(e);
}
