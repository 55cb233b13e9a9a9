/*
 * fdcache.h - a small, bounded cache of directory descriptors keyed by node id.
 *
 * Resolving a directory from its path costs a path walk per request; keeping one descriptor
 * per known directory would cost descriptors without bound. This cache keeps the most recently
 * used few (capacity fixed at creation), so hot directories (the one cp or rm is working in)
 * resolve with no system call, while the number of descriptors held stays bounded whatever
 * the number of known inodes.
 *
 * A descriptor handed out is referenced until released: eviction never closes a descriptor
 * in use; it is closed when its last user releases it. The cache is internally locked.
 */
#ifndef THROTTLEFS_FDCACHE_H
#define THROTTLEFS_FDCACHE_H

#include <stdint.h>

struct fdcache;
struct fdcache_ent;

/* A borrowed descriptor: use fd, then fdcache_release(). */
struct fdcache_ref {
	int fd;
	struct fdcache_ent *ent; /* NULL: fd is owned by the ref and closed at release */
};

struct fdcache_stats {
	uint64_t hits, misses, evictions;
	unsigned held; /* descriptors held now */
};

/* capacity: descriptors held at most (rounded up to a multiple of the set size). */
int fdcache_new(unsigned capacity, struct fdcache **out);
void fdcache_free(struct fdcache *c);

/* Fills ref with the cached descriptor of key and returns 0, or returns -ENOENT. */
int fdcache_get(struct fdcache *c, uint64_t key, struct fdcache_ref *ref);

/* Hands fd, just opened for key, to the cache, and fills ref with it. The cache owns fd from
 * now on (also when it cannot keep it: then the ref owns it and release closes it). */
void fdcache_add(struct fdcache *c, uint64_t key, int fd, struct fdcache_ref *ref);

void fdcache_release(struct fdcache *c, struct fdcache_ref *ref);

/* Forgets key: its descriptor is closed once nobody uses it. */
void fdcache_drop(struct fdcache *c, uint64_t key);

void fdcache_stats(struct fdcache *c, struct fdcache_stats *st);

#endif
