/*
 * inode.h - the inode table: which backing files the kernel knows, under which node ids.
 *
 * The kernel names every file it has looked up by a 64-bit node id and keeps a lookup count on
 * it: each reply to lookup, create, mkdir, mknod, symlink, link or readdirplus adds one, and
 * FORGET takes counts away. The table maps node ids to records holding the backing file's
 * identity (st_dev, st_ino), the last (parent, name) under which it was seen, and that count.
 *
 * Deliberately, no record holds a file descriptor: with millions of known inodes and an
 * open-file limit of 20,000, a descriptor per inode (as libfuse's passthrough_ll keeps) cannot
 * work. A record is reached from the backing root by the path its parent chain spells, and the
 * daemon resolves that path beneath the root without following symlinks.
 *
 * The records live in the metadata heap (lib/heap.h): a node id is the record's heap handle
 * (FUSE_ROOT_ID aside), so ids carry a generation and a stale one is detected. A record is a
 * heap root while the kernel references it or it is pinned; its parent is a heap reference,
 * so the chain to the root stays alive by reachability. A record nothing holds is garbage: it
 * stays (and can be found again by a lookup) until a collection reclaims it.
 *
 * Invariants:
 *  - node id 1 (FUSE_ROOT_ID) is the backing root; it is never freed.
 *  - a record lives while the kernel references it (lookup count > 0), while it is pinned (an
 *    open file or directory), or while a live record names it as parent; otherwise some
 *    later collection frees it (and its data, through free_data, exactly once).
 *  - one live record per (dev, ino): hard links share one node id, as the kernel expects.
 *  - a node id is never reused with the same generation, so a stale id is detected.
 *  - collections run only inside inode_link, inode_move, inode_table_step,
 *    inode_table_idle and inode_table_collect, under the table lock; the lock hold time is
 *    the pause.
 * The table is internally locked; data slots are only touched under inode_lock().
 */
#ifndef THROTTLEFS_INODE_H
#define THROTTLEFS_INODE_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#include "heap.h"

#define INODE_ROOT 1

struct inode_table;

struct inode_stats {
	uint64_t inodes;    /* live records, the root included */
	uint64_t peak;	    /* most live records at once */
	uint64_t bytes;	    /* memory held by records, names and index */
	uint64_t lookups;   /* records found or created by inode_link */
	uint64_t forgotten; /* records freed */
};

/* The heap's limits and tracing; a zero field takes the heap's default. */
struct inode_config {
	uint64_t semi_space; /* bytes per young semi-space (-o max_semi_space) */
	uint64_t old_space;  /* max old-space bytes (-o max_old_space) */
	int trace_gc;	     /* one line per collection (-o trace_gc) ... */
	void (*trace)(void *arg, const char *line); /* ... given to trace; NULL: stderr */
	void *trace_arg;
	uint64_t (*clock_ns)(void *arg); /* for pause figures; NULL: CLOCK_MONOTONIC */
	uint64_t idle_min; /* unrooted records before an idle cycle (inode_table_idle); 0:
			      INODE_IDLE_MIN. Tests lower it. */
};

/* free_data, if not NULL, is called (under the table lock, with the record's data) when a
 * record whose data slot is not NULL is freed, and for every such record at inode_table_free;
 * it must not call the table. config may be NULL for the defaults. Returns 0, -EINVAL for
 * impossible limits, or -ENOMEM. */
int inode_table_new(uint64_t root_dev, uint64_t root_ino, void (*free_data)(void *data),
		    const struct inode_config *config, struct inode_table **out);
void inode_table_free(struct inode_table *t);

/* Records that (parent, name) names backing file (dev, ino) and adds one kernel lookup to its
 * record, creating it when new. Returns 0 with *id and *gen set, -ENOMEM (the heap is full
 * even after a full collection; the table is unchanged), or -ESTALE when parent is unknown. */
int inode_link(struct inode_table *t, uint64_t parent, const char *name, uint64_t dev, uint64_t ino,
	       uint64_t *id, uint64_t *gen);

/* The kernel drops nlookup references (FORGET). What nothing holds any more becomes garbage
 * for a later collection. Returns true when enough has become garbage for an idle cycle
 * (inode_table_idle) to be worth running. */
bool inode_forget(struct inode_table *t, uint64_t id, uint64_t nlookup);

/* Pins a record while a file or directory is open on it, so it outlives FORGET. */
int inode_pin(struct inode_table *t, uint64_t id);
void inode_unpin(struct inode_table *t, uint64_t id);

/* The backing file (dev, ino) is gone (its last name was removed): its record, if any, leaves
 * the (dev, ino) index, so that a new file the store gives the same inode number gets a new
 * node id and generation, not the old file's (the kernel would take it for the same file and
 * trust what it cached of the old one). The record itself lives on while the kernel or an
 * open handle still refers to it. Returns 1 when a record was unhashed, else 0. */
int inode_unhash(struct inode_table *t, uint64_t dev, uint64_t ino);

/* A rename moved backing file (dev, ino) to (parent, name): its record, if any, follows. */
int inode_move(struct inode_table *t, uint64_t dev, uint64_t ino, uint64_t parent,
	       const char *name);

/* Writes the path of id relative to the backing root ("." for the root) into buf. Returns its
 * length, -ESTALE for an unknown id, or -ENAMETOOLONG. */
int inode_path(struct inode_table *t, uint64_t id, char *buf, size_t len);

/* The parent and name under which id was last seen (the root: itself and "."). Returns 0,
 * -ESTALE, or -ENAMETOOLONG when name (len bytes) cannot hold it. */
int inode_parent(struct inode_table *t, uint64_t id, uint64_t *parent, char *name, size_t len);

/* The backing identity recorded for id: 0, or -ESTALE. */
int inode_ident(struct inode_table *t, uint64_t id, uint64_t *dev, uint64_t *ino);

/* The owner's per-inode data slot (initially NULL), valid only between inode_lock() and
 * inode_unlock(); NULL with *err (if err is not NULL) set to -ESTALE for an unknown id or
 * -ENOMEM when memory for the slot ran out. The data lives as long as the record (see
 * free_data); no other call may be made while the lock is held. A slot left NULL costs
 * nothing after inode_unlock: looking is free. */
void inode_lock(struct inode_table *t);
void inode_unlock(struct inode_table *t);
void **inode_data(struct inode_table *t, uint64_t id, int *err);
/* What id's slot holds (NULL: nothing, or an unknown id), without making a slot: for the
 * many calls (a getattr's look for pending data) that only read it. Under inode_lock(). */
void *inode_data_peek(struct inode_table *t, uint64_t id);

/* A record names its device and the high half of its inode number by a 16-bit index into a
 * list of such volumes: at most INODE_VOL_MAX of them, at most INODE_VOL_PER_DEV of one
 * device. A record whose volume cannot be listed (a store with scattered 64-bit inode numbers)
 * carries its device and high half itself: 8 or 16 bytes more, found and freed alike. Tests
 * lower both (unit_inode_narrow), so that few records exercise that form. */
#ifndef INODE_VOL_MAX
#define INODE_VOL_MAX 65535
#endif
#ifndef INODE_VOL_PER_DEV
#define INODE_VOL_PER_DEV 1024
#endif

/* inodes counts records in the heap, garbage not yet collected included; forgotten counts
 * records collected; bytes is the heap's used bytes plus the index, the side entries of
 * records with data or pins, and the device table. */
void inode_stats(struct inode_table *t, struct inode_stats *st);

/* The heap's figures (for user.throttlefs.heap and memory.heap_*). */
void inode_heap_stats(struct inode_table *t, struct heap_stats *st);

/* About budget bytes of incremental old-generation work, for an idle timer; allocation
 * paces this work by itself. Returns 1 while a cycle is in progress, 0 when idle. */
int inode_table_step(struct inode_table *t, size_t budget);

/* Work for an idle daemon: gives back what the kernel forgot without waiting for allocation
 * to drive the collector. Once at least idle_min (INODE_IDLE_MIN) records, and an eighth of
 * the live records, have lost their last root (lookup and pin counts at zero) since the last such
 * cycle began, a scavenge begins an old-generation cycle (HEAP_CYCLE); each call then does
 * about budget bytes of it (heap_step). Returns 1 while there is more to do (call again,
 * after letting requests in), 0 when there is nothing to do, or -ENOMEM (the scavenge could
 * not grow its bookkeeping; nothing is lost). Each call is one bounded pause. */
#define INODE_IDLE_MIN 1024u
int inode_table_idle(struct inode_table *t, size_t budget);

/* Collects now (HEAP_MINOR, HEAP_FULL or HEAP_CYCLE): 0, -EINVAL or -ENOMEM. */
int inode_table_collect(struct inode_table *t, enum heap_collect_kind kind);

/* heap_verify plus the table's own invariants (index <-> records, root counts). Returns 0 or
 * -EFAULT with a description in err. */
int inode_table_verify(struct inode_table *t, char *err, size_t len);

#endif
