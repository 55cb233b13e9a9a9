/*
 * loop.h - the daemon's session loop: worker threads that read FUSE requests into receive
 * buffers from a bounded pool and answer them (loop.c says why it is ours, not libfuse's).
 */
#ifndef THROTTLEFS_LOOP_H
#define THROTTLEFS_LOOP_H

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

/* Requests of at most this many bytes are copied out of their receive buffer, which goes back
 * to the pool before the request is answered: every request but a large write or setxattr. */
#define LOOP_SMALL (8u << 10)

struct loop_config {
	unsigned max_threads;	/* workers at most (>= 1; 1: one request at a time, like -s) */
	unsigned max_idle;	/* idle workers kept; the surplus exit. UINT_MAX: none exits */
	unsigned buffers;	/* receive buffers (>= 1): at most this many workers read at once */
	unsigned extra_buffers; /* more, for requests taken in while the store is stalled */
};

/*
 * Serves se until it ends: the filesystem is unmounted, fuse_session_exit is called (the
 * signal handlers of fuse_set_signal_handlers do), or reading /dev/fuse fails. Returns 0, or
 * the negative errno of the failure that ended it (or kept it from starting). Every worker
 * has exited when it returns. The session is reset (fuse_session_reset), as libfuse's loops
 * do. One loop at a time per process.
 *
 * Memory: each receive buffer is as large as libfuse reads (256 pages and a header page),
 * but only the pages a request fills become resident, so the pool's buffers hold at most
 * buffers x (max_write + 4 KiB), plus LOOP_SMALL per worker for the copies of small requests.
 * Beyond that, only requests blocked in their handler while the pool is exhausted (writes
 * waiting for a stalled store) hold an extra buffer each, for as long as they are blocked,
 * and at most extra_buffers of them: (buffers + extra_buffers) x (max_write + 4 KiB) in all.
 */
int loop_run(struct fuse_session *se, const struct loop_config *c);

/*
 * Called from a request handler: runs fn(arg) on this thread once the handler has returned
 * and the request's receive buffer is back in the pool; the worker counts as busy meanwhile.
 * For work the request's answer does not wait for (lending the thread to write a stream's
 * data: ops.c). Outside a worker, or when this request already deferred something, fn runs
 * at once.
 */
void loop_after(void (*fn)(void *), void *arg);

/*
 * Called from a request handler: lends the request's receive buffer (its base; the request's
 * bytes in it stay valid) to whoever will give it back with loop_give_back, from any thread,
 * at any time, also after loop_run has returned (it is then unmapped). Until then it counts
 * as held: lent buffers are part of the pool and its memory bound. NULL when the request is
 * not in a pool buffer (a small request, copied out; an extra buffer; not a worker).
 * loop_unlend takes the loan back, from the same handler, when it was not needed after all.
 */
void *loop_lend(void);
void loop_unlend(void *buf);
void loop_give_back(void *buf);

#endif
