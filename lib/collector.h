/*
 * collector.h - the idle collector: gives back the inode records the kernel forgot, without
 * waiting for the next allocation to drive the heap's collector.
 *
 * The heap collects only inside allocation (and inode_table_step/idle): a daemon that scanned
 * a large tree and then sat idle while the kernel forgot it all would hold every record until
 * its next lookup. The forget handlers call collector_kick when inode_forget says enough has
 * died (see inode_table_idle); a thread of its own, started at the first kick, then runs the
 * table's idle cycle in slices of COLLECTOR_SLICE bytes with COLLECTOR_GAP_NS between them,
 * so that requests arriving meanwhile wait for one slice at most, and sleeps again once the
 * cycle is done. Nothing here times anything: the gap is a courtesy, not a measurement.
 */
#ifndef THROTTLEFS_COLLECTOR_H
#define THROTTLEFS_COLLECTOR_H

#include <stdint.h>

#include "inode.h"

#define COLLECTOR_SLICE	 ((size_t)64 << 10)
#define COLLECTOR_GAP_NS 1000000L

struct collector;

struct collector_stats {
	uint64_t kicks;	 /* collector_kick calls */
	uint64_t cycles; /* idle cycles run to the end */
	uint64_t slices; /* inode_table_idle calls that did work */
	int error;	 /* the last failure (negative errno: thread start, -ENOMEM), or 0 */
};

/* A collector for t (which must outlive it). No thread runs until the first kick. 0 or
 * -ENOMEM. */
int collector_new(struct inode_table *t, struct collector **out);
/* Stops the thread (after the slice it is in) and frees c. NULL is a no-op. */
void collector_free(struct collector *c);

/* Asks for an idle cycle: starts the thread if it is not running yet, wakes it. Cheap; may be
 * called from any thread. A thread that cannot be started is recorded in the stats' error
 * and tried again at the next kick. */
void collector_kick(struct collector *c);

/* Blocks until the thread has nothing left to do (no kick pending, no cycle under way), for
 * tests; returns at once if no thread ever started. (collector_free does not wait for a
 * cycle: it stops after the slice in progress.) */
void collector_wait_idle(struct collector *c);

void collector_stats(struct collector *c, struct collector_stats *st);

#endif
