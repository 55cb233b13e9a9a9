/*
 * loop.c - the session loop: worker threads, and the pool of buffers they receive requests in.
 *
 * Why not libfuse's. libfuse's multi-threaded loop gives every worker a receive buffer of its
 * own, and the kernel writes each request into the buffer of whichever worker reads it, so a
 * buffer's pages stay resident up to the largest request its thread ever received. With
 * 1 MiB writes and 32 workers that is 32 MiB outside the stream's buffer budget, and 32
 * parallel writers reached it. Here the buffers are a pool of a fixed number (loop_config:
 * buffers) shared by all workers, so what they keep is bounded whatever the number of
 * threads: buffers x (max_write + 4 KiB), plus LOOP_SMALL per worker.
 *
 * A worker takes a buffer before it reads /dev/fuse and gives it back as soon as the request
 * is done with it. A small request (every kind but large writes and setxattrs) is copied into
 * the worker's own LOOP_SMALL buffer and its receive buffer goes back before the request is
 * even answered, so a slow read or lookup holds no pool buffer. A large write holds its buffer
 * while its handler copies the data into the stream (ops.c); the work a handler hands back
 * with loop_after (lending the thread to write the data to the store) runs after the buffer is
 * back in the pool. A handler may also lend the buffer itself (loop_lend: a large write
 * queued in it, ops.c): it then comes back from whichever thread writes the data, and counts
 * as held until then, so the pool's bound covers it. A worker that finds every buffer taken
 * waits for one, as long as another worker is reading: the pool bounds the readers.
 *
 * Extra buffers. A write handler may block: when writers keep coming while the store falls
 * behind, the stream's block pool reaches its hard cap and stream_write_from waits for the
 * drains (stream.h). That is the backpressure working, and with a store that keeps up the
 * pool's buffers come back within milliseconds; meanwhile the next writes wait in the kernel,
 * in the writers' pages, not in ours. But with a stalled store, if every pool buffer is held
 * by such a write, nobody reads /dev/fuse and the whole mount hangs behind the store, although
 * a stat or a read of another file needs no stream memory. So when all are held, nobody is
 * reading and none has come back for LOOP_STALL_MS, the store counts as stalled, and until a
 * pool buffer comes back each worker that needs one maps an extra buffer for one request and
 * unmaps it after: its memory is that request's, held only while the request is. The kernel
 * hands requests out in order, so to answer a stat queued behind N blocked writes all N
 * writes' data must be taken in: only while the store is stalled, and at most
 * loop_config.extra_buffers of them at once. That cap is what keeps memory bounded when the
 * store stalls under many writers: each blocked write holds its request (up to max_write)
 * until the store moves, so without it, 32 writers of 1 MiB writes on a stalled store would
 * hold 32 MiB of requests besides the streams' full buffer budget. Past the cap, the mount
 * waits for the store, as it does when every worker thread is blocked. (Without the delay,
 * 32 writers of 1 MiB on a store that keeps up had most of their writes in extra buffers at
 * once: 66 MiB peak, against 32-35 MiB with the pool alone; with 100 ms, on a machine busy
 * with other work, still up to 60 MiB.)
 *
 * Threads, as in libfuse's loop: one worker to start with; the worker that takes a request
 * when no other is left waiting for one starts another (up to max_threads); one that finds
 * more than max_idle others waiting when it is done exits. FORGETs, answered at once, do not
 * count as busy (as libfuse, so that a burst of them starts no threads). A worker waiting for
 * a buffer counts as waiting.
 *
 * Ending. The session ends when the view is unmounted (every read then fails with ENODEV,
 * which libfuse turns into fuse_session_exit), when a signal handler calls fuse_session_exit,
 * or when a read fails otherwise. Workers block SIGINT, SIGTERM, SIGHUP and SIGQUIT, so those
 * reach the calling thread, which waits in sem_timedwait (interrupted by the handler; the
 * timeout covers a signal taken by another thread of the daemon). fuse_session_exit wakes
 * nobody blocked in read(2): the calling thread then sends each worker that is reading
 * LOOP_KICK, whose handler does nothing but, installed without SA_RESTART, makes the read fail
 * with EINTR; it repeats the kicks until every worker is gone, because a worker may be
 * between its check and its read when the first one lands. Workers answering a request are
 * not kicked (their system calls must not fail), they finish it, and then leave.
 *
 * Invariants, all under l->lock: nworkers counts the threads on the live list; navail those
 * of them waiting for a buffer or a request; nreading those reading; nmade - nfree pool
 * buffers are held by workers or lent (loop_lend), and nmade <= max_bufs; nextra <= max_extra extra
 * buffers are mapped. An exiting worker moves itself to the dead list, whose threads are joined (by
 * the next thread started, or by loop_run at the end) and their records freed.
 */
#include "loop.h"

#include <errno.h>
#include <limits.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* Sent by loop_run to the workers reading /dev/fuse once the session has ended. */
#define LOOP_KICK SIGUSR1

/* How long loop_run sleeps between checks that the session has ended (a signal handled on
 * another thread, which wakes nobody), and between rounds of kicks. */
#define LOOP_CHECK_MS  1000
#define LOOP_REKICK_MS 20

/* How long every pool buffer must stay held, nobody reading and none coming back, before the
 * store counts as stalled and extra buffers are mapped (see the top). */
#define LOOP_STALL_MS 1000

struct worker {
	struct loop *l;
	pthread_t thread;
	struct worker *next;   /* [l] in l->live or l->dead */
	bool reading;	       /* [l] in fuse_session_receive_buf: kicked at the end */
	bool extra;	       /* [l] the buffer it holds is an extra one, not the pool's */
	char *small;	       /* LOOP_SMALL bytes: copies of small requests */
	void (*after)(void *); /* loop_after, run once the receive buffer is back */
	void *after_arg;
	char *mem; /* the pool buffer its request is in, NULL when none (small, extra) */
	bool lent; /* loop_lend: mem is not its to give back */
};

struct loop {
	struct fuse_session *se;
	pthread_mutex_t lock;
	pthread_cond_t buf_free; /* a buffer came back, or stop */
	pthread_cond_t gone;	 /* a worker left the live list */
	sem_t finish;		 /* a worker saw the session end */
	size_t bufsize;		 /* what libfuse reads into a buffer */
	char **free_bufs;	 /* [l] nfree buffers, the last returned on top */
	unsigned nfree, nmade, max_bufs;
	unsigned nextra, max_extra; /* [l] extra buffers mapped now, and at most */
	unsigned nreading;	    /* [l] workers in fuse_session_receive_buf */
	uint64_t returned;	    /* [l] pool buffers given back so far */
	bool stalled; /* [l] no pool buffer came back for LOOP_STALL_MS: extras allowed */
	struct worker *live, *dead;
	unsigned nworkers, navail, max_threads, max_idle;
	bool stop;	  /* [l] loop_run is ending: workers leave */
	int error;	  /* [l] the first failure, a negative errno */
	sigset_t blocked; /* what workers block: the signals that end the daemon */
};

static __thread struct worker *loop_self;

/* The running loop, for buffers given back from other threads (loop_give_back), which may
 * come after loop_run has returned: then the buffer is unmapped, its size in lent_bufsize. */
static pthread_mutex_t lent_lock = PTHREAD_MUTEX_INITIALIZER;
static struct loop *lent_loop;
static size_t lent_bufsize;

/* The CLOCK_REALTIME time ms from now, for the timed waits (sem_timedwait knows no other clock;
 * a clock step only makes a wait shorter or longer). */
static struct timespec deadline_ms(long ms)
{
	struct timespec t;
	clock_gettime(CLOCK_REALTIME, &t);
	t.tv_sec += ms / 1000;
	t.tv_nsec += ms % 1000 * 1000000L;
	if (t.tv_nsec >= 1000000000L) {
		t.tv_sec++;
		t.tv_nsec -= 1000000000L;
	}
	return t;
}

static void kick_handler(int sig)
{
	(void)sig; /* the point is the EINTR of the read it interrupts */
}

/* [l] Records the first failure and ends the session. */
static void loop_fail(struct loop *l, int err)
{
	if (l->error == 0)
		l->error = err;
	fuse_session_exit(l->se);
}

/* A receive buffer: libfuse's read size of address space, of which only the pages a request
 * fills become resident (mmap, so that munmap gives them back). NULL on failure. */
static char *buf_map(size_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

static void buf_unmap(char *b, size_t size)
{
	if (munmap(b, size) != 0)
		fuse_log(FUSE_LOG_ERR, "throttlefs: munmap: %s\n", strerror(errno));
}

/* [l] A buffer for w's next read: the pool's buffer returned last (its pages are likely
 * resident already), or a new one while fewer than max_bufs exist; when all are held, the next
 * one given back; but when nobody is reading and none has come back for LOOP_STALL_MS (the
 * store is stalled: see the top), an extra one while fewer than max_extra are mapped,
 * unmapped after its request. NULL when the loop stops, or when none can be mapped (then the
 * loop fails). */
static char *pool_get(struct loop *l, struct worker *w)
{
	uint64_t seen = l->returned;
	w->extra = false;
	while (!l->stop) {
		if (l->nfree > 0)
			return l->free_bufs[--l->nfree];
		bool extra = l->nmade >= l->max_bufs;
		if (!extra || (l->stalled && l->nreading == 0 && l->nextra < l->max_extra)) {
			char *b = buf_map(l->bufsize);
			if (b == NULL) {
				fuse_log(FUSE_LOG_ERR,
					 "throttlefs: no memory for a receive buffer\n");
				loop_fail(l, -ENOMEM);
				return NULL;
			}
			if (extra) {
				w->extra = true;
				l->nextra++;
			} else {
				l->nmade++;
			}
			return b;
		}
		if (l->nreading > 0) {
			pthread_cond_wait(&l->buf_free, &l->lock);
			seen = l->returned;
			continue;
		}
		struct timespec t = deadline_ms(LOOP_STALL_MS);
		int err = pthread_cond_timedwait(&l->buf_free, &l->lock, &t);
		if (err == ETIMEDOUT && l->returned == seen && l->nreading == 0 && l->nfree == 0)
			l->stalled = true;
		seen = l->returned;
	}
	return NULL;
}

/* [l] Puts pool buffer b back on top of the free ones. */
static void pool_return(struct loop *l, char *b)
{
	l->free_bufs[l->nfree++] = b;
	l->returned++;
	l->stalled = false;
	/* While another worker is reading, the buffer waits for the next worker to finish its
	 * request, instead of waking one that waits: the worker that just answered goes back to
	 * read(2) with it, its cache warm, and a request costs one wake-up, not two (with more
	 * workers than buffers, every small request used to wake a waiter here while its own
	 * worker then slept in pool_get: rm -r of 2000 files over a disk, 8,000-8,400 context
	 * switches against 6,000). Once nobody reads, set_reading wakes a waiter. */
	if (l->nreading == 0)
		pthread_cond_signal(&l->buf_free);
}

/* [l] Gives back the buffer w took. */
static void pool_put(struct loop *l, struct worker *w, char *b)
{
	if (w->extra) {
		buf_unmap(b, l->bufsize);
		w->extra = false;
		l->nextra--;
		/* A worker waiting for an extra one may now map it, if nobody reads (else the
		 * wake-up when the last reader stops serves: set_reading). */
		if (l->nreading == 0)
			pthread_cond_signal(&l->buf_free);
		return;
	}
	pool_return(l, b);
}

/* [l] w starts or stops reading /dev/fuse. When nobody is left reading, a worker waiting for
 * a buffer takes an extra one. */
static void set_reading(struct loop *l, struct worker *w, bool reading)
{
	w->reading = reading;
	if (reading) {
		l->nreading++;
	} else if (--l->nreading == 0) {
		pthread_cond_signal(&l->buf_free);
	}
}

/* [l] Joins the workers that have exited and frees their records. */
static void reap(struct loop *l)
{
	while (l->dead != NULL) {
		struct worker *w = l->dead;
		l->dead = w->next;
		/* It put itself here holding the lock and touches nothing of the loop after. */
		int err = pthread_join(w->thread, NULL);
		if (err != 0)
			fuse_log(FUSE_LOG_ERR, "throttlefs: joining a worker: %s\n", strerror(err));
		free(w->small);
		free(w);
	}
}

/* [l] Takes the caller off the live list and onto the dead one. */
static void worker_leave(struct loop *l, struct worker *w)
{
	struct worker **p = &l->live;
	while (*p != w)
		p = &(*p)->next;
	*p = w->next;
	w->next = l->dead;
	l->dead = w;
	l->nworkers--;
	pthread_cond_broadcast(&l->gone);
}

static void *worker_main(void *arg);

/* [l] Starts a worker, available at once. Returns 0 or a negative errno. */
static int worker_start(struct loop *l)
{
	reap(l);
	struct worker *w = calloc(1, sizeof(*w));
	char *small = malloc(LOOP_SMALL);
	if (w == NULL || small == NULL) {
		free(w);
		free(small);
		return -ENOMEM;
	}
	w->l = l;
	w->small = small;
	/* The new thread inherits the mask in force at pthread_create. */
	sigset_t old;
	int err = pthread_sigmask(SIG_BLOCK, &l->blocked, &old);
	if (err == 0) {
		err = pthread_create(&w->thread, NULL, worker_main, w);
		int e2 = pthread_sigmask(SIG_SETMASK, &old, NULL);
		if (err == 0 && e2 != 0)
			fuse_log(FUSE_LOG_ERR, "throttlefs: restoring the signal mask: %s\n",
				 strerror(e2));
	}
	if (err != 0) {
		free(small);
		free(w);
		return -err;
	}
	w->next = l->live;
	l->live = w;
	l->nworkers++;
	l->navail++;
	return 0;
}

/* Whether the request in b is a FORGET, which is answered at once (by no reply at all). */
static bool is_forget(const struct fuse_buf *b)
{
	if ((b->flags & FUSE_BUF_IS_FD) || b->size < sizeof(struct fuse_in_header))
		return false;
	const struct fuse_in_header *in = b->mem;
	return in->opcode == FUSE_FORGET || in->opcode == FUSE_BATCH_FORGET;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct loop *l = w->l;
	loop_self = w;
	pthread_mutex_lock(&l->lock);
	for (;;) {
		/* Available: counted in navail. */
		if (l->stop || fuse_session_exited(l->se))
			break;
		char *mem = pool_get(l, w);
		if (mem == NULL)
			break;
		set_reading(l, w, true);
		pthread_mutex_unlock(&l->lock);

		struct fuse_buf fb = {.mem = mem, .size = l->bufsize};
		int n = fuse_session_receive_buf(l->se, &fb);
		bool small = n > 0 && !(fb.flags & FUSE_BUF_IS_FD) && fb.size <= LOOP_SMALL;
		if (small) {
			memcpy(w->small, mem, fb.size);
			fb.mem = w->small;
		}

		pthread_mutex_lock(&l->lock);
		set_reading(l, w, false);
		if (n <= 0 || small) {
			pool_put(l, w, mem);
			mem = NULL;
		}
		w->mem = w->extra ? NULL : mem; /* what loop_lend may lend */
		if (n == -EINTR)
			continue; /* a kick, or a signal: look again whether to stop */
		if (n <= 0) {
			/* 0: the session ended (libfuse calls fuse_session_exit on ENODEV). */
			if (n < 0) {
				fuse_log(FUSE_LOG_ERR, "throttlefs: reading /dev/fuse: %s\n",
					 strerror(-n));
				loop_fail(l, n);
			}
			break;
		}
		bool forget = is_forget(&fb);
		if (!forget)
			l->navail--;
		if (l->navail == 0 && l->nworkers < l->max_threads && !l->stop) {
			int err = worker_start(l);
			if (err != 0)
				fuse_log(FUSE_LOG_ERR, "throttlefs: cannot start a worker: %s\n",
					 strerror(-err));
		}
		pthread_mutex_unlock(&l->lock);

		fuse_session_process_buf(l->se, &fb);
		if (w->lent) /* loop_give_back returns it, maybe already has */
			mem = NULL;
		w->mem = NULL;
		w->lent = false;

		void (*after)(void *) = w->after;
		if (after != NULL) {
			w->after = NULL;
			if (mem != NULL) {
				pthread_mutex_lock(&l->lock);
				pool_put(l, w, mem);
				mem = NULL;
				pthread_mutex_unlock(&l->lock);
			}
			after(w->after_arg);
		}
		pthread_mutex_lock(&l->lock);
		if (mem != NULL)
			pool_put(l, w, mem);
		if (!forget)
			l->navail++;
		if (!l->stop && l->navail > l->max_idle && l->navail > 1) {
			l->navail--;
			worker_leave(l, w);
			pthread_mutex_unlock(&l->lock);
			return NULL;
		}
	}
	/* The session ended or the loop stops: loop_run hears of it, and waits for us. */
	if (sem_post(&l->finish) != 0)
		fuse_log(FUSE_LOG_ERR, "throttlefs: sem_post: %s\n", strerror(errno));
	l->navail--;
	worker_leave(l, w);
	pthread_mutex_unlock(&l->lock);
	return NULL;
}

void *loop_lend(void)
{
	struct worker *w = loop_self; /* w->mem and w->lent are its own thread's: no lock */
	if (w == NULL || w->mem == NULL || w->lent)
		return NULL;
	w->lent = true;
	return w->mem;
}

void loop_unlend(void *buf)
{
	struct worker *w = loop_self;
	if (buf == NULL || w == NULL || !w->lent || w->mem != buf)
		abort(); /* only the request's own handler may take its loan back */
	w->lent = false;
}

void loop_give_back(void *buf)
{
	pthread_mutex_lock(&lent_lock);
	struct loop *l = lent_loop;
	if (l != NULL) {
		pthread_mutex_lock(&l->lock);
		pool_return(l, buf);
		pthread_mutex_unlock(&l->lock);
	} else {
		buf_unmap(buf, lent_bufsize);
	}
	pthread_mutex_unlock(&lent_lock);
}

void loop_after(void (*fn)(void *), void *arg)
{
	struct worker *w = loop_self;
	if (w == NULL || w->after != NULL) {
		fn(arg);
		return;
	}
	w->after = fn;
	w->after_arg = arg;
}

/* Waits until the session has ended: a worker posts finish, a signal handled here interrupts
 * the wait, and a signal handled on another thread is seen within LOOP_CHECK_S. */
static void wait_for_end(struct loop *l)
{
	while (!fuse_session_exited(l->se)) {
		struct timespec t = deadline_ms(LOOP_CHECK_MS);
		if (sem_timedwait(&l->finish, &t) != 0 && errno != EINTR && errno != ETIMEDOUT)
			fuse_log(FUSE_LOG_ERR, "throttlefs: sem_timedwait: %s\n", strerror(errno));
	}
}

/* [l] Makes every worker leave: those waiting for a buffer are woken, those reading are
 * kicked, again after LOOP_REKICK_MS in case a kick landed just before a worker's read. */
static void stop_workers(struct loop *l)
{
	l->stop = true;
	pthread_cond_broadcast(&l->buf_free);
	while (l->nworkers > 0) {
		for (struct worker *w = l->live; w != NULL; w = w->next) {
			int err = w->reading ? pthread_kill(w->thread, LOOP_KICK) : 0;
			if (err != 0)
				fuse_log(FUSE_LOG_ERR, "throttlefs: kicking a worker: %s\n",
					 strerror(err));
		}
		struct timespec t = deadline_ms(LOOP_REKICK_MS);
		pthread_cond_timedwait(&l->gone, &l->lock, &t);
	}
	reap(l);
}

int loop_run(struct fuse_session *se, const struct loop_config *c)
{
	struct loop l = {
	    .se = se,
	    .lock = PTHREAD_MUTEX_INITIALIZER,
	    .buf_free = PTHREAD_COND_INITIALIZER,
	    .gone = PTHREAD_COND_INITIALIZER,
	    /* libfuse 3.14 reads FUSE_MAX_MAX_PAGES (256) pages and a header page into a
	     * buffer whatever its size says (lib/fuse_lowlevel.c, se->bufsize). */
	    .bufsize = 256 * (size_t)sysconf(_SC_PAGESIZE) + 4096,
	    .max_bufs = c->buffers > 0 ? c->buffers : 1,
	    .max_extra = c->extra_buffers,
	    .max_threads = c->max_threads > 0 ? c->max_threads : 1,
	    .max_idle = c->max_idle,
	};
	sigemptyset(&l.blocked);
	sigaddset(&l.blocked, SIGINT);
	sigaddset(&l.blocked, SIGTERM);
	sigaddset(&l.blocked, SIGHUP);
	sigaddset(&l.blocked, SIGQUIT);
	l.free_bufs = calloc(l.max_bufs, sizeof(*l.free_bufs));
	if (l.free_bufs == NULL)
		return -ENOMEM;
	if (sem_init(&l.finish, 0, 0) != 0) {
		int err = -errno;
		free(l.free_bufs);
		return err;
	}
	struct sigaction kick = {.sa_handler = kick_handler}, old_kick;
	sigemptyset(&kick.sa_mask);
	int err = sigaction(LOOP_KICK, &kick, &old_kick) == 0 ? 0 : -errno;
	bool kick_installed = err == 0;

	pthread_mutex_lock(&lent_lock);
	lent_loop = &l;
	lent_bufsize = l.bufsize;
	pthread_mutex_unlock(&lent_lock);
	pthread_mutex_lock(&l.lock);
	if (err == 0)
		err = worker_start(&l);
	pthread_mutex_unlock(&l.lock);
	if (err == 0)
		wait_for_end(&l);
	pthread_mutex_lock(&l.lock);
	stop_workers(&l);
	if (err == 0)
		err = l.error;
	pthread_mutex_unlock(&l.lock);

	/* Buffers still lent come back after this: loop_give_back unmaps them. */
	pthread_mutex_lock(&lent_lock);
	lent_loop = NULL;
	pthread_mutex_unlock(&lent_lock);
	for (unsigned i = 0; i < l.nfree; i++)
		buf_unmap(l.free_bufs[i], l.bufsize);
	free(l.free_bufs);
	sem_destroy(&l.finish);
	if (kick_installed && sigaction(LOOP_KICK, &old_kick, NULL) != 0)
		fuse_log(FUSE_LOG_ERR, "throttlefs: restoring SIGUSR1: %s\n", strerror(errno));
	fuse_session_reset(se);
	return err;
}
