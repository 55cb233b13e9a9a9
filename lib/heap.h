/*
 * heap.h - the metadata heap: a small generational, moving garbage collector for inode-like
 * records, addressed only through stable handles.
 *
 * Objects. heap_alloc(type, nrefs, nbytes) makes an object of a caller-chosen type
 * (0..HEAP_TYPE_MAX) with nrefs reference slots followed by nbytes raw bytes. Reference slots are
 * precise: they hold handles (or 0) and are written only through heap_set_ref, which runs the write
 * barrier. heap_deref returns a pointer to the raw bytes only, so a reference can never be stored
 * behind the collector's back. Raw bytes and reference slots start zeroed.
 *
 * Handles. Objects move (young objects are copied, the old space may be compacted), so the
 * embedder never keeps an address: it keeps a handle, a uint64_t that is never 0 and carries
 * a generation, so a slot reused by a later object gives a different value. A handle whose
 * object was collected is stale: heap_deref returns NULL and every other call -ESTALE.
 * Pointers from heap_deref are valid until the next call that may allocate or collect
 * (heap_alloc, heap_collect, heap_step); every other call leaves objects where they are.
 *
 * Liveness. An object is live when its root count is above zero or it is reachable from a
 * live object through reference slots. A new object is born with root count 1 ("born rooted")
 * so that it survives until the embedder either keeps it rooted (an inode with lookup count
 * > 0, an open file) or links it from a rooted object and calls heap_root_dec. Everything else
 * is garbage and is reclaimed by some later collection; using a handle to garbage (other than
 * heap_deref returning NULL once it is reclaimed) is a caller bug. An old object that a
 * finished marking found unreachable is stale at once, before the lazy sweeper reclaims it.
 *
 * Limits. The young generation is one semi-space pair of config.semi_space bytes each (of
 * which at most HEAP_SEMI_SPACE_USED are used; see there); the old
 * generation (including large objects) never exceeds config.old_space bytes. When even a full
 * mark-compact cannot make room, heap_alloc returns 0 (ENOMEM); nothing is corrupted. Until a
 * root count drops to zero or a reference is overwritten, later allocations that find no room
 * return 0 at once, without another full collection (none could find more).
 *
 * Threads. The heap is not internally locked: the embedder holds one lock around every heap
 * call (and around every use of a pointer returned by heap_deref). Collections run only
 * inside heap_alloc, heap_collect and heap_step, on the caller's thread.
 */
#ifndef THROTTLEFS_HEAP_H
#define THROTTLEFS_HEAP_H

#include <stddef.h>
#include <stdint.h>

/* config.semi_space is a limit (the reservation); the heap uses at most HEAP_SEMI_SPACE_USED
 * of it. A scavenge costs in proportion to its survivors, and while the kernel looks files up
 * nearly every new record survives, so the semi-space size is the pause: 128 KiB keeps a
 * scavenge well under a millisecond (bench_inode), 8 MiB took 25-50 ms. 64 KiB (bench_heap,
 * 1M live records, two runs each, scavenge p50 / p99.9 / loop pause total / alloc ns):
 * 128 KiB 0.040-0.055 / 0.24-0.33 ms / 316-428 ms / 10.6-10.8; 64 KiB 0.018-0.019 /
 * 0.12-0.38 ms / 306-325 ms / 10.1-10.4; 32 KiB 0.013-0.014 / 0.10-0.38 ms / 350-507 ms /
 * 10.6-21: halving to 64 KiB halves the typical pause at no cost in total pause or speed,
 * and a busy daemon's young pair holds 128 KiB instead of 256; at 32 KiB the per-scavenge
 * fixed costs (roots, remembered set) start to add up. 48 KiB (bench_heap, interleaved runs
 * on a busy machine, 64 vs 48 KiB: loop pause total 284-506 vs 307-318 ms, alloc 9.4-16.4
 * vs 9.2-9.5 ns, max pause 0.54-0.71 vs 0.44-1.3 ms; bench_inode populate max 0.38 ms):
 * no cost out of the noise, and the pair holds 96 KiB instead of 128 (the daemon's RSS after
 * a find over 19,000 files: -32 KiB). */
#define HEAP_DEFAULT_SEMI_SPACE	  ((size_t)8 << 20)   /* 8 MiB per semi-space, reserved */
#define HEAP_SEMI_SPACE_USED	  ((size_t)48 << 10)  /* 48 KiB of it in use */
#define HEAP_DEFAULT_OLD_SPACE	  ((size_t)256 << 20) /* 256 MiB: ~1M inodes with 100 B names */
#define HEAP_DEFAULT_PROMOTE_AGE  2		      /* survive two scavenges (see bench_heap) */
#define HEAP_DEFAULT_LARGE_OBJECT 2048		      /* bigger objects are never copied */
#define HEAP_DEFAULT_COMPACT	  0.5		      /* fragmentation that triggers compaction */
#define HEAP_MIN_SEMI_SPACE	  ((size_t)4 << 10)   /* tiny heaps are for tests */
#define HEAP_MAX_OLD_SPACE	  ((size_t)16 << 30)
#define HEAP_TYPE_MAX		  62
#define HEAP_REFS_MAX		  65535
#define HEAP_BYTES_MAX		  ((size_t)1 << 30)

struct heap;

struct heap_config {
	size_t semi_space;	  /* bytes per semi-space; 0: default; >= HEAP_MIN_SEMI_SPACE */
	size_t old_space;	  /* max old generation bytes incl. large objects; 0: default */
	unsigned promote_age;	  /* scavenges survived before promotion (1..3); 0: default */
	size_t large_object;	  /* objects above this many bytes live in the large space and
				     are never copied; 0: default; at most semi_space / 4 */
	double compact_threshold; /* old-space fragmentation (0..1) above which a full
				     collection compacts instead of sweeping; 0: default */
	uint64_t (*clock_ns)(void *arg); /* monotonic ns for pause stats; NULL: CLOCK_MONOTONIC */
	void (*trace)(void *arg, const char *line); /* one line per collection; NULL: silent */
	/* Finalization: called once for every object the collector reclaims (and, at heap_free,
	 * for every object left), with its last handle, type and raw bytes, just before its
	 * memory and handle are reused. It runs inside a collection: it must not call the heap.
	 * NULL: none. */
	void (*on_free)(void *arg, uint64_t handle, unsigned type, void *payload);
	void *arg; /* passed to clock_ns, trace and on_free */
};

struct heap_stats {
	struct {
		uint64_t size; /* bytes of one semi-space */
		uint64_t used; /* bytes allocated in the current semi-space */
		uint64_t scavenges;
		uint64_t promoted_bytes; /* total bytes promoted to the old generation */
	} young;
	struct {
		uint64_t size; /* max old-space bytes (config.old_space) */
		uint64_t used; /* bytes in objects, incl. large ones and not yet swept garbage */
		uint64_t mark_sweeps;
		uint64_t mark_compacts;
		uint64_t fulls;	      /* stop-the-world full collections: heap_collect(HEAP_FULL)
					 or the last resort before ENOMEM; never in normal operation */
		double fragmentation; /* free bytes inside the old arena / arena extent, 0..1 */
		uint64_t marked;  /* bytes of old objects marking shaded (its work), all cycles */
		uint64_t swept;	  /* arena bytes the sweeper passed, all cycles */
		uint64_t trimmed; /* committed arena bytes given back to the system, all cycles */
	} old;
	struct {
		uint64_t last, max,
		    total; /* microseconds the caller was stopped in the collector */
	} pause_us;
	uint64_t objects;    /* objects with a live handle (incl. garbage not yet reclaimed) */
	uint64_t heap_total; /* committed (resident) bytes: the committed parts of both
				semi-spaces, of the old arena and of the handle table, plus
				large objects; it grows with use, a few pages when idle */
	uint64_t heap_used;  /* young used + old used + 8 bytes per live handle */
};

enum heap_collect_kind {
	HEAP_MINOR = 1, /* scavenge the young generation */
	HEAP_FULL = 2,	/* scavenge, promote everything, mark the whole heap, sweep or compact */
	/* scavenge, and begin an incremental marking cycle of the old generation now, below its
	 * trigger (unless a cycle is already under way); heap_step does the rest in slices. For
	 * an embedder that knows much has just died, e.g. when the kernel forgot many inodes,
	 * and wants it back without waiting for allocation to drive the collector. */
	HEAP_CYCLE = 3,
};

/* Creates a heap. config may be NULL for all defaults. Returns 0, -EINVAL for an impossible
 * configuration, -ENOMEM, or -ENOTSUP when built by a compiler whose bit-field layout the
 * heap's one-store header writes do not follow (never with GCC or Clang on x86-64). */
int heap_new(const struct heap_config *config, struct heap **out);
void heap_free(struct heap *h);

/* Allocates an object, born with root count 1. Returns its handle, or 0 with errno set to
 * EINVAL (bad type, nrefs > HEAP_REFS_MAX, nbytes > HEAP_BYTES_MAX) or ENOMEM. */
uint64_t heap_alloc(struct heap *h, unsigned type, size_t nrefs, size_t nbytes);

/* The raw bytes of the object, or NULL when handle is 0 or stale. See the lifetime above. */
void *heap_deref(struct heap *h, uint64_t handle);
/* Weak tables. The low 32 bits of a handle (its "index", never 0) name its handle-table
 * slot; heap_handle_at gives back the live handle of that slot, or 0 when the slot is free
 * or its object is already known dead. A weak table may thus store 4-byte indices, and must
 * drop an entry when on_free reports its object. */
uint64_t heap_handle_at(struct heap *h, uint32_t index);

/* Object metadata; -ESTALE for a stale handle. */
int heap_type(struct heap *h, uint64_t handle);
int heap_shape(struct heap *h, uint64_t handle, size_t *nrefs, size_t *nbytes);

/* Stores target (a live handle or 0) in reference slot `slot` of obj, running the write
 * barrier. Returns 0, -ESTALE (obj or target stale), -EINVAL (slot out of range) or -ENOMEM
 * (remembered set could not grow; nothing is stored). */
int heap_set_ref(struct heap *h, uint64_t obj, size_t slot, uint64_t target);
/* Reads reference slot `slot` of obj into *target. Returns 0, -ESTALE or -EINVAL. */
int heap_get_ref(struct heap *h, uint64_t obj, size_t slot, uint64_t *target);

/* Root counts. inc: 0, -ESTALE, -EOVERFLOW or -ENOMEM. dec: 0, -ESTALE or -EINVAL when the
 * count is already 0. A dec to zero makes the object garbage unless it is reachable. */
int heap_root_inc(struct heap *h, uint64_t handle);
int heap_root_dec(struct heap *h, uint64_t handle);
/* The root count (>= 0), or -ESTALE. */
long heap_root_count(struct heap *h, uint64_t handle);

/* Runs a collection now. Returns 0 or -ENOMEM (bookkeeping could not grow; heap intact). */
int heap_collect(struct heap *h, enum heap_collect_kind kind);

/* Does about budget bytes of incremental old-generation work (marking, then lazy sweeping),
 * e.g. from an idle loop. Starts a marking cycle when the old space passed its trigger; after
 * a cycle that shrank the arena, gives back its surplus pages, a step a call. Returns 1
 * while a cycle is in progress or pages remain to give back, 0 when there is nothing to do. */
int heap_step(struct heap *h, size_t budget);

void heap_stats(const struct heap *h, struct heap_stats *out);

/* Makes the pages of [addr, addr + len), part of a private anonymous mapping the caller owns,
 * resident now, in one system call (MADV_POPULATE_WRITE). On this kind of (virtual) machine
 * a page's first touch costs 20-40 us, a populated page 1 us: the heap commits its arena,
 * semi-spaces and handle table ahead of use with it, so that no pause takes a run of first-
 * touch faults, and the inode index does the same for its tables. Returns 0 or -errno
 * (-EINVAL where the kernel lacks it: the pages then simply fault in on first use). */
int heap_commit(void *addr, size_t len);

/* Calls fn for every object in the heap: its handle, type, raw bytes, and whether it is
 * garbage a finished marking already found dead (its handle is stale). fn must not call the
 * heap. For verifiers and statistics. */
void heap_walk(struct heap *h,
	       void (*fn)(void *arg, uint64_t handle, unsigned type, void *payload, int dead),
	       void *arg);

/* Walks every object, the handle table and the remembered set. Returns 0, or -EFAULT with a
 * description of the first inconsistency in err (when err != NULL). */
int heap_verify(struct heap *h, char *err, size_t len);

#endif
