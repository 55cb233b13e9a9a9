/*
 * stream.h - bounded write streams between FUSE write handlers and the backing store.
 *
 * Every file open for writing has a stream: writes are copied into it and return at once,
 * and a small pool of drain threads writes the data to the backing file in order, at the rate
 * the user set. Memory is bounded twice:
 *
 *   - softly, by marks: a write that leaves its stream above `high_water` bytes, or the engine
 *     above `max_buffer` bytes, is accepted but *parked*: stream_write returns STREAM_PARKED
 *     and the callback fires later, from a drain thread, once the stream is back at or below
 *     its high-water mark and the engine at or below its budget. The FUSE reply is sent from
 *     the callback, so the writer blocks in write(2) while no daemon thread is held.
 *   - hard, by the block pool: buffered data lives in STREAM_BLOCK-byte blocks obtained with
 *     mmap; at most STREAM_POOL_CAP(max_buffer) blocks are in use at any time. A write that
 *     would take more blocks makes the *calling thread* wait for free blocks (the only
 *     blocking case; it needs as many concurrent writers as it takes to fill the overflow
 *     allowance, STREAM_OVERFLOW = 2 MiB, while all of them are already over the marks).
 *     Freed blocks are kept for reuse while data is buffered; once nothing is, all but a
 *     high-water mark's worth plus STREAM_POOL_KEEP blocks are unmapped. The daemon's
 *     buffer memory never exceeds STREAM_POOL_CAP(max_buffer) blocks (max_buffer +
 *     STREAM_OVERFLOW), whatever the file sizes.
 *
 * Data of a stream is one byte log of blocks: writes are appended to the tail block whatever
 * their file offset, so 4 KiB writes share blocks, and a write that continues the previous
 * one (off == previous off + len) just extends its segment. Drain threads serve streams with
 * pending data round-robin, one slice (<= 1 MiB, see throttle_slice) at a time: they charge
 * the slice to the global and the file's token bucket, sleep until the later deadline, and
 * write it with one pwritev of contiguous segments (two, when its aligned part goes direct and
 * the rest does not: see direct I/O below). One stream is drained by one thread at a
 * time, in write order. A failed write makes the stream's error sticky: its pending data is
 * dropped, parked writers and waiters get the error, and later writes are refused with it.
 *
 * Callbacks run on drain threads (or on a thread in stream_help or stream_behind, or, for
 * stream_close, on the closing thread) without any stream or engine lock held; they may call
 * stream_write etc. on other streams but must not block for long: they hold up that thread. Because
 * they run after the locks are dropped, a callback may run before stream_write (or
 * stream_wait_empty) has returned STREAM_PARKED to its caller, and after stream_close has returned:
 * callers must hand all the state the callback needs to `arg` and not touch it after STREAM_PARKED.
 * stream_engine_free returns only after every callback has returned.
 *
 * Locking (internal): per-stream mutex, then engine mutex, never the other way round; the
 * engine mutex is never held during memcpy, pread or pwritev.
 */
#ifndef THROTTLEFS_STREAM_H
#define THROTTLEFS_STREAM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "clock.h"

#define STREAM_BLOCK	 (128u << 10)
#define STREAM_OVERFLOW	 (2ull << 20)
#define STREAM_POOL_KEEP 16u
#define STREAM_POOL_CAP(max_buffer)                                                                \
	(((max_buffer) + STREAM_OVERFLOW + STREAM_BLOCK - 1) / STREAM_BLOCK)
#define STREAM_DEFAULT_HIGH_WATER (4ull << 20)
#define STREAM_DEFAULT_MAX_BUFFER (32ull << 20)
#define STREAM_DEFAULT_DRAINS	  3u
#define STREAM_MAX_DRAINS	  64u

/* Returned by stream_write: accepted, and the caller, after replying to its writer, must lend
 * its thread to write the data: stream_help(s). At most STREAM_MAX_HELPERS threads are lent
 * at once. */
#define STREAM_HELP	   2
#define STREAM_MAX_HELPERS 4u

/* Returned by stream_write and stream_wait_empty: the callback will be called later. */
#define STREAM_PARKED 1

/* Where drained data goes. NULL in the config means pwritev(2). The function may return a
 * short count (the rest is retried) or -1 with errno set (EINTR is retried).
 * writeback (NULL: the real one) is the write-behind after each written slice or
 * write-through (stream_behind; so two threads may run it on one file at once) unless the
 * engine keeps the cache (see stream_config.keep_cache), and once when a stream goes direct
 * (to write and drop what it had cached until then): start write-back of [off, off+len)
 * and wait for [drop_off, drop_off+drop_len) to be on the device, then drop it from the page
 * cache. Returns 0, a negative errno (a failed write-back fails the stream like a failed
 * write), or STREAM_WB_NONE when the file has no write-back to do (a store in memory): the
 * stream then asks no more for it. */
#define STREAM_WB_NONE 1
struct stream_sink {
	ssize_t (*pwritev)(void *ctx, int fd, const struct iovec *iov, int cnt, off_t off);
	void *ctx;
	int (*writeback)(void *ctx, int fd, uint64_t off, uint64_t len, uint64_t drop_off,
			 uint64_t drop_len);
	/* Direct I/O (see stream_config.direct_from). direct_open (NULL: the real one) returns
	 * a new descriptor of the file open at fd, its own open file description, that may be
	 * switched to O_DIRECT, with the alignments the store asks for, or a negative errno when
	 * the store has no direct I/O (statx reports no STATX_DIOALIGN: tmpfs, NFS, FUSE) or the
	 * reopen (through /proc/self/fd, as the stream's owner) fails. direct (NULL: fcntl
	 * F_SETFL) sets (on = 1) or clears O_DIRECT on such a descriptor: 0 or -errno. */
	int (*direct_open)(void *ctx, int fd, unsigned *mem_align, unsigned *off_align);
	int (*direct)(void *ctx, int fd, int on);
	/* cached (NULL: the real one) says what kind of store the file at fd is on: one whose
	 * writes land in the local page cache, so that a write costs a copy and waits for no
	 * device or remote end, in memory alone (tmpfs, ramfs: STREAM_STORE_MEMORY) or on a
	 * device (ext2/3/4, xfs, btrfs, f2fs: STREAM_STORE_DEVICE); or another (network and FUSE
	 * stores, or unknown: STREAM_STORE_REMOTE). Only the first two are written through
	 * (stream_write_through), only the first is lent writes (stream_write_lent). */
	int (*cached)(void *ctx, int fd);
};

enum { STREAM_STORE_REMOTE = 0, STREAM_STORE_DEVICE = 1, STREAM_STORE_MEMORY = 2 };

/* Direct I/O. A store on a local device (ext4, xfs...) can take a stream's data straight from
 * its blocks with O_DIRECT: no copy into its page cache, no write-back for the daemon to start
 * and wait for, which on a VM is most of a buffered write's cost (2 GiB: 0.3 s of system time
 * against 1.8-3.7 s). But a direct write waits for the device, and a small file's close would
 * then wait for it too (the page cache lets the kernel batch a thousand small files into few
 * device writes): so only a stream that has committed direct_from bytes (a big file, being
 * copied) goes direct, and only in slices of at least STREAM_DIRECT_MIN bytes (so random small
 * writes stay buffered). Such slices are cut at 4 KiB file boundaries; the aligned part of
 * each goes with O_DIRECT set on the stream's own open file description (sink direct_open),
 * the unaligned rest with it cleared, through the page cache. What the file had in the cache
 * when it went direct is written and dropped then. A store that refuses a direct write with
 * EINVAL gets it, and the stream's later data, through the page cache. Write-behind runs over
 * direct slices too, for their buffered ends. keep_cache rules direct I/O out. */
#define STREAM_DIRECT_FROM (8ull << 20)
#define STREAM_DIRECT_MIN  (64u << 10)

/* Write-behind works a STREAM_WB_CHUNK of the file at a time: each chunk's device write is
 * started once the chunk is written, and STREAM_CACHE_BEHIND further back it is waited for and
 * dropped from the store's page cache, so a sequential copy keeps about
 * STREAM_CACHE_BEHIND + STREAM_WB_CHUNK of its most recent data there. 8 MiB chunks 16 MiB
 * behind rather than 1 MiB chunks 8 MiB behind: dd bs=1M of 1 GiB to disk, five interleaved
 * rounds, 0.32-0.45 daemon cpu-s/GiB against 0.37-0.60 (fewer, larger device writes, each
 * with its own virtio kick; fewer calls). Larger chunks measured lower still, but mostly by
 * leaving more of the copy cached when the timer stopped: work moved, not saved. */
#define STREAM_WB_CHUNK	    (8ull << 20)
#define STREAM_CACHE_BEHIND (16ull << 20)

/* Who a stream's data is written as. The library knows nothing of credentials: a stream may
 * have an owner (stream_set_owner), and every slice of it is written between owner->enter(owner)
 * and owner->leave(owner), on whichever thread writes the slice (a drain thread, or a writer's
 * thread lent with stream_help). enter returns 0 or a negative errno; on failure nothing is
 * written, leave is not called, and the error fails the stream like a failed write (an owner
 * that cannot be taken on must not be written around). leave must not fail. A stream without
 * an owner calls neither: its slices cost nothing extra. Embed this in a larger record. */
struct stream_owner {
	int (*enter)(const struct stream_owner *o);
	void (*leave)(const struct stream_owner *o);
};

struct stream_config {
	uint64_t high_water;		/* per-stream mark; 0 = STREAM_DEFAULT_HIGH_WATER */
	uint64_t max_buffer;		/* engine-wide mark; 0 = STREAM_DEFAULT_MAX_BUFFER */
	uint64_t rate;			/* bytes/s for all streams together; 0 = unlimited */
	uint64_t file_rate;		/* bytes/s for each stream; 0 = unlimited */
	unsigned drain_threads;		/* 0 = STREAM_DEFAULT_DRAINS; at most STREAM_MAX_DRAINS */
	const struct clock *clock;	/* NULL = &clock_monotonic */
	const struct stream_sink *sink; /* NULL = pwritev(2); copied, must outlive the engine */
	int no_help;	/* 1: stream_write never returns STREAM_HELP (drain threads do it all) */
	int keep_cache; /* 1: no write-behind; written data stays in the store's page cache */
	uint64_t direct_from; /* 0: no direct I/O; see STREAM_DIRECT_FROM */
	unsigned lend_max;    /* lent writes pending at most (stream_write_lent); 0: none */
};

struct stream_engine;
struct stream;

/* Called with err = 0 or a negative errno; see stream_write and stream_wait_empty. */
typedef void (*stream_cb)(void *arg, int err);

/* Gives a lent write's memory back to its owner (stream_write_lent). */
typedef void (*stream_release)(void *arg);

struct stream_engine_stats {
	uint64_t buffered;	  /* bytes of file data held now (accepted, not yet written) */
	uint64_t peak;		  /* highest `buffered` so far */
	uint64_t budget;	  /* max_buffer */
	uint64_t high_water;	  /* per-stream mark */
	uint64_t rate, file_rate; /* current settings */
	uint64_t blocks_used;	  /* pool blocks holding data */
	uint64_t blocks_free;	  /* mapped pool blocks kept for reuse */
	uint64_t blocks_peak;	  /* highest blocks_used so far (<= blocks_cap) */
	uint64_t blocks_cap;	  /* STREAM_POOL_CAP(max_buffer) */
	uint64_t pool_bytes;	  /* (blocks_used + blocks_free) * STREAM_BLOCK: memory held */
	uint64_t committed;	  /* bytes written to the backing store by all streams */
	uint64_t throughput;	  /* bytes/s committed over the last few seconds */
	uint64_t parked;	  /* writes waiting for their callback */
	uint64_t streams;	  /* open streams */
	uint64_t threads;	  /* drain threads running: 0 until the first stream_open */
};

enum stream_state {
	STREAM_IDLE,	 /* nothing received yet */
	STREAM_WRITING,	 /* data pending (or its write-behind: STREAM_BEHIND), accepting writes */
	STREAM_DRAINING, /* data pending and someone waits for it (close, flush, fsync) */
	STREAM_DONE,	 /* everything received has been written */
	STREAM_ERROR,	 /* a write to the backing store failed; `error` says why */
};

struct stream_stats {
	uint64_t received;   /* bytes accepted by stream_write */
	uint64_t committed;  /* bytes written to the backing store */
	uint64_t direct;     /* of these, bytes written with direct I/O (direct_from) */
	uint64_t buffered;   /* bytes pending (buffered or being written) */
	uint64_t started_ns; /* clock time of the first accepted write; 0 if none */
	uint64_t last_ns;    /* clock time of the last accepted write or commit */
	uint64_t rate;	     /* bytes/s committed over the last few seconds */
	enum stream_state state;
	int error; /* positive errno when state == STREAM_ERROR, else 0 */
};

/* Creates an engine. Its drain threads start with the first stream_open, so an engine nobody
 * writes through holds no threads. Returns 0 or -errno (-EINVAL when high_water > max_buffer
 * or drain_threads > STREAM_MAX_DRAINS). */
int stream_engine_new(const struct stream_config *cfg, struct stream_engine **out);

/* Closes every stream still open (waiting for its data, as stream_close), stops and joins
 * the drain threads, and frees everything. No other call may run concurrently. */
void stream_engine_free(struct stream_engine *e);

/* Changes the rates at runtime, for all open and future streams; applies from the next
 * slice each drain thread starts. 0 = unlimited. */
void stream_engine_set_rate(struct stream_engine *e, uint64_t rate, uint64_t file_rate);

void stream_engine_stats(struct stream_engine *e, struct stream_engine_stats *st);

/* Opens a stream writing to fd, first starting the engine's drain threads that are not
 * running yet. The stream owns fd from now on, also on failure (it is then closed). Returns 0
 * or -errno (-EAGAIN and the like when not even one drain thread could be started). */
int stream_open(struct stream_engine *e, int fd, struct stream **out);

/* Sets who the data of s is written as from the next slice on (NULL: nobody, plain pwritev).
 * Data written by stream_write after this call is written as o or as an owner set later, never
 * as an earlier one. Cheap when o already is the owner (one atomic load), so it may be called
 * before every write. o must stay valid until stream_close(s) has returned. */
void stream_set_owner(struct stream *s, const struct stream_owner *o);

/* Waits (blocking the calling thread) until everything pending is written or has failed, and
 * every write-behind a write-through owes (STREAM_BEHIND) is done;
 * answers this stream's parked writers (cb(arg, 0), or the error); closes fd (or the stream's
 * own descriptor that replaced it when it went direct) and frees the
 * stream. Returns 0, the stream's sticky error, or close(2)'s error (negative errno). No call
 * on this stream may run concurrently or follow. */
int stream_close(struct stream *s);

/* Copies buf[0..len) destined for file offset off into the stream. Returns:
 *   0             accepted; the caller replies now.
 *   STREAM_PARKED accepted, but the stream is above high_water or the engine above
 *                 max_buffer: cb(arg, 0) is called later, once both are at or below their
 *                 marks (parked writes are woken in FIFO order across all streams), or
 *                 cb(arg, -errno) if the stream fails meanwhile.
 *   -errno        not accepted: the sticky error of an earlier failed write, -ENOMEM,
 *                 -EINVAL (len 0 is accepted and returns 0; off + len must not overflow
 *                 off_t).
 *   STREAM_HELP   accepted, as 0; and no drain thread was woken for it: the caller replies,
 *                 then calls stream_help(s) to write it (only when no rate is set, the
 *                 stream was idle, and fewer than STREAM_MAX_HELPERS threads are lent).
 * Blocks the calling thread only while the block pool is at its hard cap (see above).
 * cb may be NULL: the write is parked all the same, nobody is called back. */
int stream_write(struct stream *s, const void *buf, size_t len, uint64_t off, stream_cb cb,
		 void *arg);

/* Supplies a write's data: fills dst[0..len) with the next len bytes, in order, and returns
 * 0 or a negative errno. Called with the stream's lock held: it must not call back into the
 * stream (a read from a pipe or a memcpy, not a read of this same file through its stream). */
typedef int (*stream_fill)(void *ctx, void *dst, size_t len);

/* stream_write for data the caller copies out itself (fs/: libfuse's buffer vector, which may
 * be memory or a pipe): the bytes are taken with fill(ctx, ...) straight into the stream's
 * blocks, so they are copied once.
 * Returns as stream_write; when fill fails, its error, and nothing of the write is accepted. */
int stream_write_from(struct stream *s, size_t len, uint64_t off, stream_fill fill, void *ctx,
		      stream_cb cb, void *arg);

/* Returned by stream_write_through: not taken, the caller buffers the write (stream_write). */
#define STREAM_THROUGH_NO 3
/* Writes below this size are buffered: written straight from a 128 KiB request, cp's, the
 * writer waited for the store's copy instead of preparing its next write meanwhile, and cp
 * of 1 GiB ran 9% slower. */
#define STREAM_THROUGH_MIN (512u << 10)

/* Returned by stream_write_through: written, and the caller, after replying, must call
 * stream_behind(s), which does the write's write-behind. */
#define STREAM_BEHIND 4

/* Writes iov (cnt pieces, at file offset off) straight to the store from the caller's memory,
 * on the calling thread, before the caller replies: no copy into the stream's blocks. Taken
 * only when that costs the writer nothing the buffered path would have spared it: the store's
 * writes land in the local page cache (stream_sink.cached: over a network or FUSE store the
 * writer would wait for the remote end, where buffering lets it go on), the stream
 * has nothing pending and no drain is on it, no rate is set, direct I/O is off, the write has
 * at least STREAM_THROUGH_MIN bytes, and fewer than STREAM_MAX_HELPERS threads are lent (a
 * stalled store holds at most that many here). Returns:
 *   STREAM_THROUGH_NO not taken: nothing happened, the caller goes on with stream_write.
 *   0                 written and counted as received and committed.
 *   STREAM_HELP       written; writes buffered meanwhile wait behind it: the caller replies,
 *                     then calls stream_help(s).
 *   STREAM_BEHIND     written; its write-behind (see stream_sink.writeback) is owed: the
 *                     caller replies, then calls stream_behind(s). Writes buffered meanwhile
 *                     go to a drain thread. Until stream_behind returns, the stream is not
 *                     empty for stream_wait_empty, stream_sync and stream_close, and a
 *                     failed write-behind fails the stream for them and for later writes.
 *   -errno            the store failed: the stream has failed with it (as a drained write's
 *                     failure fails it), and this write is not accepted.
 * iov is consumed (advanced past what was written). The stream must not be closed while this
 * runs: like a write not yet answered, it is not pending for stream_sync and stream_close. */
int stream_write_through(struct stream *s, struct iovec *iov, int cnt, uint64_t off);

/* Queues a large write without copying it: its bytes stay in the caller's memory, mem[0..len),
 * which the stream reads until they are written to the store (or dropped, when the stream
 * fails), and then gives back with release(arg), from whichever thread wrote them (possibly
 * before this returns). Meanwhile they are pending like buffered bytes: in order with the
 * stream's other writes, seen by stream_read and stream_end, waited for by stream_sync,
 * stream_wait_empty and stream_close, counted as buffered. So the caller may reply at once,
 * and the store's write of this request overlaps the receipt of the next, which neither a
 * copy into the blocks (one copy more) nor stream_write_through (the writer waits for the
 * store) gives. Taken only over a store in memory (STREAM_STORE_MEMORY: over a disk the drain
 * of a lent write would wait for the write-behind, and the next loans for that drain), with no
 * rate, no direct I/O, at least STREAM_THROUGH_MIN bytes, and while fewer than
 * config.lend_max lent writes are pending in the engine; when that many are, it waits
 * for one to be written, as a write at the pool's hard cap waits. Never parked: the caller's
 * memory is bounded by lend_max, not by the buffer budget. Returns:
 *   STREAM_THROUGH_NO not taken: nothing happened, the caller goes on as without it.
 *   0                 queued; the caller replies.
 *   STREAM_HELP       queued, as 0, and no drain thread was woken: the caller replies, then
 *                     calls stream_help(s).
 *   -errno            not taken: the stream's sticky error, or -EINVAL for an offset past
 *                     off_t. */
int stream_write_lent(struct stream *s, const void *mem, size_t len, uint64_t off,
		      stream_release release, void *arg);

/* Asks to be told when nothing is pending (buffered or being written, or a write-behind owed:
 * STREAM_BEHIND). Returns 0 when that is already the case, the negative sticky error when the
 * stream has failed (in both cases cb is NOT called), or STREAM_PARKED: cb(arg, 0 or -errno)
 * is called later from a drain thread or the thread in stream_help or stream_behind.
 * -ENOMEM when the waiter cannot be recorded. Used for FUSE flush and fsync. */
int stream_wait_empty(struct stream *s, stream_cb cb, void *arg);

/* After replying to a write that returned STREAM_BEHIND: the write-behind owed, on the calling
 * thread (which holds it for the device's latency: the writer already has its answer). A
 * write-through that came meanwhile may have added its span to the one this call does. */
void stream_behind(struct stream *s);

/* After replying to a write that returned STREAM_HELP: writes s's pending data on the calling
 * thread, as a drain thread would, slice after slice for as long as more keeps arriving (and
 * no rate is set; otherwise the rest goes to the drain threads); callbacks of other writers
 * may run here. The stream must not be closed before this returns. Holds the thread for the
 * store's latency: the writer already has its answer. */
void stream_help(struct stream *s);

/* Blocking variant: waits until nothing is pending and no write-behind is owed; returns 0 or
 * the negative sticky error.
 * Used before truncate, fallocate, copy_file_range and other direct changes to the file. */
int stream_sync(struct stream *s);

/* Read-your-writes: preads [off, off+len) from fd (any descriptor of the backing file), then
 * overlays every pending segment (buffered or being written) in write order. If pending data
 * extends beyond the backing file's end, the result extends up to the logical end, gaps read
 * as zeros. Returns the byte count or -errno (pread's). Consistent against concurrent drains. */
ssize_t stream_read(struct stream *s, int fd, void *buf, size_t len, uint64_t off);

/* max(off + len) over pending segments, 0 if none: the file's size is
 * max(backing size, stream_end). */
uint64_t stream_end(struct stream *s);

/* Clock time of the last accepted write (0 if none); for mtime. */
uint64_t stream_last_write_ns(struct stream *s);

void stream_stats(struct stream *s, struct stream_stats *st);

#endif
