/*
 * fdcache.c - set-associative cache of directory descriptors (see fdcache.h).
 *
 * Keys hash to a set of WAYS entries; a miss that is added evicts the least recently used
 * entry of its set that nobody references, so a descriptor is never closed under a user. An
 * entry dropped while referenced is marked doomed: lookups no longer find it, and its last
 * release closes it and frees the slot. When every entry of the set is in use, the new
 * descriptor is simply not cached: the caller's ref owns it.
 */
#include "fdcache.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#define WAYS 4

struct fdcache_ent {
	uint64_t key;
	uint64_t used; /* clock of the last use, for LRU */
	int fd;	       /* -1: empty */
	unsigned refs;
	int doomed; /* dropped while in use: close at the last release */
};

struct fdcache {
	pthread_mutex_t lock;
	unsigned nsets;
	uint64_t clock;
	struct fdcache_ent *ents; /* nsets * WAYS, each set contiguous */
	struct fdcache_stats st;
};

static struct fdcache_ent *set_of(struct fdcache *c, uint64_t key)
{
	uint64_t h = key * 0x9e3779b97f4a7c15ull;
	return &c->ents[(h >> 32) % c->nsets * WAYS];
}

int fdcache_new(unsigned capacity, struct fdcache **out)
{
	struct fdcache *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return -ENOMEM;
	c->nsets = capacity / WAYS + (capacity % WAYS != 0);
	if (c->nsets == 0)
		c->nsets = 1;
	c->ents = calloc((size_t)c->nsets * WAYS, sizeof(*c->ents));
	int err = c->ents ? pthread_mutex_init(&c->lock, NULL) : ENOMEM;
	if (err != 0) {
		free(c->ents);
		free(c);
		return -err;
	}
	for (unsigned i = 0; i < c->nsets * WAYS; i++)
		c->ents[i].fd = -1;
	*out = c;
	return 0;
}

void fdcache_free(struct fdcache *c)
{
	if (c == NULL)
		return;
	for (unsigned i = 0; i < c->nsets * WAYS; i++)
		if (c->ents[i].fd >= 0)
			close(c->ents[i].fd);
	pthread_mutex_destroy(&c->lock);
	free(c->ents);
	free(c);
}

int fdcache_get(struct fdcache *c, uint64_t key, struct fdcache_ref *ref)
{
	int err = -ENOENT;
	pthread_mutex_lock(&c->lock);
	struct fdcache_ent *set = set_of(c, key);
	for (int i = 0; i < WAYS; i++) {
		if (set[i].fd >= 0 && set[i].key == key && !set[i].doomed) {
			set[i].refs++;
			set[i].used = ++c->clock;
			ref->fd = set[i].fd;
			ref->ent = &set[i];
			c->st.hits++;
			err = 0;
			break;
		}
	}
	if (err != 0)
		c->st.misses++;
	pthread_mutex_unlock(&c->lock);
	return err;
}

void fdcache_add(struct fdcache *c, uint64_t key, int fd, struct fdcache_ref *ref)
{
	int victim_fd = -1;
	ref->fd = fd;
	ref->ent = NULL;
	pthread_mutex_lock(&c->lock);
	struct fdcache_ent *set = set_of(c, key), *slot = NULL;
	for (int i = 0; i < WAYS; i++) {
		if (set[i].fd >= 0 && set[i].key == key && !set[i].doomed) {
			/* Raced with another miss: keep theirs, ours stays the caller's. */
			pthread_mutex_unlock(&c->lock);
			return;
		}
		if (set[i].refs == 0 &&
		    (slot == NULL || set[i].fd < 0 || (slot->fd >= 0 && set[i].used < slot->used)))
			slot = &set[i];
	}
	if (slot != NULL) {
		if (slot->fd >= 0) {
			victim_fd = slot->fd;
			c->st.evictions++;
			c->st.held--;
		}
		slot->key = key;
		slot->fd = fd;
		slot->refs = 1;
		slot->used = ++c->clock;
		slot->doomed = 0;
		ref->ent = slot;
		c->st.held++;
	}
	pthread_mutex_unlock(&c->lock);
	if (victim_fd >= 0)
		close(victim_fd);
}

void fdcache_release(struct fdcache *c, struct fdcache_ref *ref)
{
	struct fdcache_ent *e = ref->ent;
	int fd = -1;
	if (e == NULL) {
		fd = ref->fd;
	} else {
		pthread_mutex_lock(&c->lock);
		if (--e->refs == 0 && e->doomed) {
			fd = e->fd;
			e->fd = -1;
			e->doomed = 0;
			c->st.held--;
		}
		pthread_mutex_unlock(&c->lock);
	}
	ref->fd = -1;
	ref->ent = NULL;
	if (fd >= 0)
		close(fd);
}

void fdcache_drop(struct fdcache *c, uint64_t key)
{
	int fd = -1;
	pthread_mutex_lock(&c->lock);
	struct fdcache_ent *set = set_of(c, key);
	for (int i = 0; i < WAYS; i++) {
		struct fdcache_ent *e = &set[i];
		if (e->fd < 0 || e->key != key || e->doomed)
			continue;
		if (e->refs > 0) {
			e->doomed = 1;
		} else {
			fd = e->fd;
			e->fd = -1;
			c->st.held--;
		}
		break;
	}
	pthread_mutex_unlock(&c->lock);
	if (fd >= 0)
		close(fd);
}

void fdcache_stats(struct fdcache *c, struct fdcache_stats *st)
{
	pthread_mutex_lock(&c->lock);
	*st = c->st;
	pthread_mutex_unlock(&c->lock);
}
