/*
 * collector.c - the idle collector's thread (see collector.h for the contract).
 *
 * State, under c->lock: `pending` (a kick not yet acted on), `busy` (the thread is running a
 * cycle), `stop`. The thread sleeps while nothing is pending; a kick that arrives during a
 * cycle leaves `pending` set, so the thread looks again once the cycle ends (the table then
 * decides whether another one is worth it). The table's own lock is taken only inside
 * inode_table_idle, never while c->lock is held, so a kick from a forget handler (which has
 * just released the table lock) never waits for a slice.
 */
#include "collector.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

struct collector {
	pthread_mutex_t lock;
	pthread_cond_t wake; /* pending or stop set */
	pthread_cond_t idle; /* busy and pending both clear */
	struct inode_table *t;
	pthread_t thread;
	bool started, pending, busy, stop;
	struct collector_stats st;
};

static void gap(void)
{
	struct timespec ts = {0, COLLECTOR_GAP_NS};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Runs one idle cycle of the table to its end (or until stop). Called without c->lock. */
static void run_cycle(struct collector *c)
{
	for (bool worked = false;; worked = true) {
		int rc = inode_table_idle(c->t, COLLECTOR_SLICE);
		pthread_mutex_lock(&c->lock);
		bool stop = c->stop;
		if (rc < 0)
			c->st.error = rc;
		else if (rc == 1)
			c->st.slices++;
		else if (worked)
			c->st.cycles++;
		pthread_mutex_unlock(&c->lock);
		if (rc != 1 || stop)
			return;
		gap();
	}
}

static void *collector_main(void *arg)
{
	struct collector *c = arg;
	pthread_mutex_lock(&c->lock);
	for (;;) {
		while (!c->pending && !c->stop)
			pthread_cond_wait(&c->wake, &c->lock);
		if (c->stop)
			break;
		c->pending = false;
		c->busy = true;
		pthread_mutex_unlock(&c->lock);
		run_cycle(c);
		pthread_mutex_lock(&c->lock);
		c->busy = false;
		if (!c->pending)
			pthread_cond_broadcast(&c->idle);
	}
	c->busy = false;
	c->pending = false;
	pthread_cond_broadcast(&c->idle);
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

int collector_new(struct inode_table *t, struct collector **out)
{
	struct collector *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return -ENOMEM;
	c->t = t;
	int err = pthread_mutex_init(&c->lock, NULL);
	if (err == 0 && (err = pthread_cond_init(&c->wake, NULL)) != 0)
		pthread_mutex_destroy(&c->lock);
	if (err == 0 && (err = pthread_cond_init(&c->idle, NULL)) != 0) {
		pthread_cond_destroy(&c->wake);
		pthread_mutex_destroy(&c->lock);
	}
	if (err != 0) {
		free(c);
		return -err;
	}
	*out = c;
	return 0;
}

void collector_free(struct collector *c)
{
	if (c == NULL)
		return;
	pthread_mutex_lock(&c->lock);
	c->stop = true;
	bool started = c->started;
	pthread_cond_signal(&c->wake);
	pthread_mutex_unlock(&c->lock);
	if (started)
		pthread_join(c->thread, NULL);
	pthread_cond_destroy(&c->idle);
	pthread_cond_destroy(&c->wake);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

void collector_kick(struct collector *c)
{
	pthread_mutex_lock(&c->lock);
	c->st.kicks++;
	if (!c->started && !c->stop) {
		int err = pthread_create(&c->thread, NULL, collector_main, c);
		if (err != 0)
			c->st.error = -err;
		else
			c->started = true;
	}
	if (c->started) {
		c->pending = true;
		pthread_cond_signal(&c->wake);
	}
	pthread_mutex_unlock(&c->lock);
}

void collector_wait_idle(struct collector *c)
{
	pthread_mutex_lock(&c->lock);
	while (c->started && !c->stop && (c->pending || c->busy))
		pthread_cond_wait(&c->idle, &c->lock);
	pthread_mutex_unlock(&c->lock);
}

void collector_stats(struct collector *c, struct collector_stats *st)
{
	pthread_mutex_lock(&c->lock);
	*st = c->st;
	pthread_mutex_unlock(&c->lock);
}
