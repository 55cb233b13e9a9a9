/*
 * heap.c - a generational, moving collector for the daemon's metadata records.
 *
 * Why handles everywhere. Every object owns one slot of the handle table. A handle is
 * (generation << 32) | (slot index + 1), so it is never 0 and a reused slot yields a new
 * value. Reference slots inside objects hold handles too, not addresses. That choice makes
 * every move cheap and local: copying or sliding an object updates exactly one table entry,
 * no forwarding pointers, no pointer fix-up pass. The price is one indirection per reference
 * read, which is nothing next to a FUSE round trip. The table is one flat reservation, as
 * long as the spaces could ever hold objects (every object is at least a header), so a
 * lookup is one indexed load: a two-level table cost heap_root_dec a third of its time in
 * dependent loads.
 *
 * A slot is 8 bytes (there is one per record, so it counts like the record itself): a 32-bit
 * location, a 20-bit generation and a 12-bit root count. The location is not an address but
 * a word offset (+1, so 0 means "no object yet") into the heap's single reservation, which
 * holds both semi-spaces and the old arena; locations past that span name large objects,
 * which are malloc'd and listed in ltab, by their ltab index. Both fit 32 bits: the span is
 * at most (2 * 64 KiB + 16 GiB) / 8 words, just over 2^31, and heap_alloc refuses a large
 * object that would push span + 1 + ltab length past 2^32. A free slot has the all-ones root
 * count and chains the free list through its location. The split is a trade: the daemon
 * holds one root per record (and briefly two or three), so 4094 roots is plenty, while the
 * generation is only a safety net: the kernel never sends a node id it has been told to
 * forget (FUSE FORGET), so a stale handle reaching the heap is a bug, and the generation
 * catches it unless the slot was reused exactly a multiple of 2^20 - 1 times in between (it
 * wraps from 2^20 - 1 to 1, never 0; a 16-bit one would wrap 16 times as often). Retiring a
 * slot on wrap instead would leak table entries in a long-lived daemon: a busy slot (the
 * free list is LIFO) is reused at every scavenge. Before, a slot was 16 bytes (address,
 * 32-bit generation, 32-bit root count).
 *
 * The allocation fast path. heap_alloc's common case (small object, semi-space room, a slot
 * on the free list, no old-generation cycle to pace) is a straight line of a dozen stores
 * and a memset; everything else goes through alloc_slow, kept out of line so the common
 * case does not pay its register saves. With it, allocation plus root_dec runs at
 * calloc+free speed or better, scavenges included (bench_heap).
 *
 * Object layout (all 8-byte aligned): an 8-byte header, then nrefs uint64_t handles, then
 * nbytes raw bytes rounded up to 8. The header is one word of bit-fields: type (6 bits, so
 * HEAP_TYPE_MAX is 62 and T_FREE 63), flags (5), age (2: promote_age is at most 3), nbytes
 * % 8 (3), nrefs (8), the whole size in words (12) and the slot index (28). The raw byte
 * count is derived: (words - 1 - nrefs) * 8 less the padding the low bits imply, so
 * heap_shape still returns exactly what the caller asked for. 12 bits of words cover every
 * small object (at most large_object <= HEAP_SEMI_SPACE_USED / 4 = 1536 words); an object
 * with more than 255 references or above large_object is a large one, whose header leaves
 * nrefs and words 0 and whose struct large prefix holds size, nrefs and nbytes in full. 28
 * index bits cap a heap at 2^28 - 1 objects (max_slots), which only a >= 2 GiB old space of
 * minimal objects could reach; a heap_alloc beyond says ENOMEM. A free chunk's header is
 * type T_FREE with its size in words over words and idx (40 bits), and a chunk of 16 bytes
 * or more keeps its free-list link in the word after, so an 8-byte filler is still a valid
 * chunk and the old arena can always be walked from bottom to top. Before, the header was
 * 16 bytes (8-bit fields, 32-bit nbytes, idx and nrefs): with the 8-byte slot, a record
 * costs 16 bytes less (bench_heap: 72 -> 56 B + name per inode).
 *
 * Young generation: a semi-space pair. Allocation bumps a pointer in `from`, whose free part
 * is kept zeroed (each scavenge clears it in one memset, so allocation does not). A scavenge
 * (Cheney) copies what is reachable from the young roots (rooted young objects, kept in the
 * yroots vector) and from the remembered set (old objects that may hold young handles) into
 * `to`, breadth-first with `to` itself as the queue. A survivor whose age reaches
 * promote_age is copied into the old generation instead; promoted objects are queued on
 * pstack and scanned too, and join the remembered set if they still point at young objects.
 * If the old space is full the survivor simply stays young: `to` is as big as `from`, so a
 * scavenge can never run out of room. A survivor that would fill `to` past half is promoted
 * early whatever its age, so a scavenge always leaves room to allocate: when every young
 * object survives (a burst of lookups), the old rule left `to` full and every allocation
 * fell back on a full, compacting collection. Only ysize bytes of each semi-space are used
 * (HEAP_SEMI_SPACE_USED, far below the reserved limit), because the scavenge pause grows
 * with the survivors and nearly all new records survive. Dead young objects are found by one linear
 * walk of `from` (copied ones carry F_FORWARDED) and their handle slots are released.
 *
 * Memory is reserved, then committed in proportion to use. The semi-spaces, the old arena and
 * the handle table are MAP_NORESERVE mappings, and a page's first touch is a fault that costs
 * 20-40 us on a virtual machine: a scavenge that promoted 64 KiB into fresh arena pages took
 * 1-3 ms in faults alone (measured). So pages are committed (populated with one
 * MADV_POPULATE_WRITE, 1 us a page) before use, never touched cold inside a pause, but no
 * earlier than use calls for, since a fresh daemon's every idle KiB counts against its RSS
 * (heap_new used to populate 576 KiB; now nothing). The from-space is committed by doubling
 * steps from COMMIT_MIN as allocation reaches its end (outside pauses); the to-space, at the
 * start of a scavenge, up to what from holds, the most the survivors can take; the arena is
 * kept committed oahead bytes beyond its bump pointer, and oahead follows the promotion rate
 * (the largest promotion of a scavenge and a quarter, COMMIT_MIN..COMMIT_MAX), so that in steady
 * state a scavenge's promotions land on committed pages; handle slots a page at first,
 * doubling up to SLOT_COMMIT. When a cycle leaves the arena's top far below what is committed
 * (a compaction after the kernel forgot a tree, or a sweep that freed the arena's tail), the
 * pages beyond otop + oahead are given back (old_trim, MADV_DONTNEED), at most TRIM_STEP per
 * pause and only once they reach TRIM_MIN, so that a heap that shrinks and regrows a little
 * does not pay first touches again and again. Handle slots stay committed: freed ones hold
 * their generation, which must survive (see slot_release).
 *
 * Old generation: one reserved arena allocated by segregated free lists with a bump pointer at the
 * top, plus a list of large objects (bigger than config.large_object) that are malloc'd
 * individually and never move. It is collected by incremental mark-sweep: marking runs in slices
 * (heap_step, and paced by allocation), protected by a Dijkstra insertion barrier in heap_set_ref
 * and heap_root_inc (the newly stored old target is shaded). Young objects are not traced by old
 * marking; the atomic finish instead scavenges and then shades every old object referenced from the
 * young generation, which covers every old object reachable through young ones. Objects
 * promoted while marking are marked and queued grey. Sweeping is lazy: it rebuilds the free
 * lists from bottom to top, coalescing runs of garbage, a slice at a time; objects placed
 * above the sweep cursor are pre-marked so the sweeper keeps them. When the garbage share of
 * the arena passes compact_threshold, the finish slides every live object down instead
 * (mark-compact, stop-the-world, Lisp-2 order-preserving but with no pointer fix-up thanks to
 * handles).
 *
 * Finalization and weak tables. Every place that reclaims an object (the scavenger's walk of
 * from-space, the sweeper, compaction, the large-object sweep, heap_free) goes through
 * reclaim(), which calls config.on_free with the object's handle, type and raw bytes before
 * the handle is retired, so an embedder can clear weak-table entries and release external
 * resources exactly once. An old object that a finished marking left unmarked is already
 * stale to every API call (lookup() checks known_dead), so a weak table can never hand out,
 * and thereby resurrect, an object the lazy sweeper is about to reclaim.
 *
 * Invariants (heap_verify checks them):
 *  - every object's header names a live slot whose address is that object;
 *  - every non-zero reference slot of a live object holds a live handle;
 *  - an old object holding a young handle has F_REMEMBERED and its index is in rset;
 *  - outside marking and sweeping no old object carries F_MARK.
 */
#include "heap.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

enum {
	GEN_BITS = 20,		       /* slot generation; the rest of a word is the root count */
	GEN_MAX = (1 << GEN_BITS) - 1, /* wraps to 1, never 0 */
	ROOTS_FREE = (1 << (32 - GEN_BITS)) - 1, /* root count of a free slot */
	ROOTS_MAX = ROOTS_FREE - 1,		 /* heap_root_inc says -EOVERFLOW beyond */
	ROOT_ONE = 1 << GEN_BITS,		 /* one root, in slot.tag */
	F_MARK = 1,	  /* old: reached by the current marking (or kept by the sweeper) */
	F_REMEMBERED = 2, /* old: its index is in rset */
	F_YROOT = 4,	  /* young: its index is in yroots */
	F_FORWARDED = 8,  /* young, from-space copy: the object survived this scavenge */
	F_LARGE = 16,	  /* lives in the large-object list */
	T_FREE = HEAP_TYPE_MAX + 1, /* type of a free chunk in the old arena */
	AGE_MAX = 3,		    /* the age field saturates here: promote_age <= 3 */
	NREFS_SMALL = 255,	    /* more reference slots: a large object */
	WORDS_SMALL = 4095,	    /* a bigger small object could not say its size */
	IDX_BITS = 28,		    /* slot index bits in a header: 2^28 - 1 objects at most */
	NCLASS = 63,		    /* exact free lists for chunks of 2..NCLASS words */
	PACE_BYTES = 16384,	    /* allocation between two paced slices of old-generation work */
	SLOT_COMMIT_MIN = 256,	    /* handle slots committed first (one 4 KiB page) */
	SLOT_COMMIT = 1024	    /* most handle slots committed at a time (8 KiB): a
				       table holds at most 8 KiB it does not use (was 32) */
};
#define PACE_WORK ((size_t)128 << 10) /* bytes of marking, sweeping or compaction per slice */
/* A promotion that finds no free chunk while a sweep is pending sweeps this much further
 * before it bumps the arena instead; at most PACE_WORK in all per scavenge. Unbounded, every
 * promotion of a scavenge swept 64 KiB: when nothing had died (a tree walk), that was the
 * whole arena in one pause (3 ms at 19 MiB, 7-26 ms at 45 MiB: bench_inode populate). */
#define SWEEP_FOR_ALLOC ((size_t)16 << 10)
#define ROOT_SHADE_COST 64 /* marking budget bytes a shaded root costs (see mark_step) */
/* The old arena is committed this far ahead of its bump pointer, this much at a time. */
#define COMMIT_MIN ((size_t)16 << 10)  /* the first commit of a space: four pages */
#define COMMIT_MAX ((size_t)128 << 10) /* the most the arena is committed ahead */
#define TRIM_MIN   ((size_t)256 << 10) /* arena pages beyond the ahead worth giving back */
#define TRIM_STEP  ((size_t)1 << 20)   /* the most given back in one pause */
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

/* An object header, one 64-bit word (see the top comment). A free chunk has type T_FREE and
 * its size in words split over words (low 12 bits) and idx (the rest). */
struct hdr {
	uint64_t type : 6;
	uint64_t flags : 5;
	uint64_t age : 2;
	uint64_t tail : 3;   /* nbytes % 8: the raw byte count is words - 1 - nrefs words, less */
	uint64_t nrefs : 8;  /* large objects: 0, see struct large */
	uint64_t words : 12; /* the whole object's size in words; large objects: 0 */
	uint64_t idx : IDX_BITS; /* handle slot */
};
_Static_assert(sizeof(struct hdr) == 8, "an object header is one word");
_Static_assert(HEAP_TYPE_MAX + 1 < 64, "types and T_FREE fit 6 bits");
_Static_assert(HEAP_SEMI_SPACE_USED / 4 / 8 <= WORDS_SMALL, "a small object's size fits");

/* A large object: malloc'd with this prefix, listed in h->ltab at index lix. */
struct large {
	size_t size;	 /* the whole object, header included */
	uint32_t lix;	 /* its index in h->ltab */
	uint32_t nrefs;	 /* what a small object's header holds */
	uint32_t nbytes; /* ... */
	uint32_t pad;	 /* keeps the header 8-byte aligned */
};

/* A handle slot, 8 bytes. loc says where the object is: 0 none (a slot reserved while its
 * object is being allocated), 1..span the word (8 bytes) at loc - 1 of the heap's one
 * reservation (young and old spaces), above span the large object ltab[loc - span - 1].
 * A free slot has roots == ROOTS_FREE and chains the free list through loc (next free
 * index + 1, 0 ends). */
struct slot {
	uint32_t loc;
	uint32_t tag; /* generation in the low GEN_BITS, root count above (ROOT_ONE each) */
};

struct vec {
	uint32_t *v;
	size_t len, cap;
	bool whole; /* reserved whole at cap (MAP_NORESERVE): never reallocated */
};

enum state { IDLE, MARKING, SWEEPING };

struct heap {
	struct heap_config cfg;
	char *mem;    /* the one reservation: both semi-spaces, then the old arena */
	size_t span;  /* its length in words: slot locations 1..span are addresses in it */
	char *ymem;   /* both semi-spaces, 2 * ysize bytes at mem */
	size_t ysize; /* bytes per semi-space in use: min(semi, HEAP_SEMI_SPACE_USED) */
	char *from, *to, *ytop;
	char *ylimit;		 /* allocation stops here: from + min(ysize, fcommit) */
	size_t fcommit, tcommit; /* bytes committed at the start of from and of to */

	char *obase, *otop; /* old arena and its bump pointer */
	char *ocommit;	    /* [obase, ocommit) is committed (resident) */
	size_t oahead;	    /* how far ahead of otop the arena is committed */
	bool no_commit;	    /* heap_commit is unsupported here: pages fault in on first use */
	size_t olimit;
	size_t ofree;		    /* bytes in free chunks below otop */
	uint32_t flist[NCLASS + 1]; /* [w]: chunks of w words; [0]: bigger ones, first fit */
	uint64_t fmask;		    /* bit w set: flist[w] non-empty */
	struct large **ltab;	    /* every large object; ltab[i]->lix == i */
	size_t nlarge, large_cap;
	size_t large_bytes;

	struct slot *slots; /* the handle table: one reservation, never moved */
	size_t max_slots;   /* its reserved length: more than the heap can hold objects */
	size_t used_slots;  /* slots ever handed out (the table's extent) */
	size_t slot_commit; /* slots below this index are committed */
	uint32_t free_slot; /* index + 1 of the first free slot, 0: none */
	size_t live_slots;

	struct vec rset, yroots, mstack, pstack;

	enum state state;
	size_t root_cursor; /* marking: next slot to scan for roots */
	bool mark_overflow; /* mstack could not grow: rescan marked objects */
	bool full_mark;	    /* atomic full marking: young objects are traced and marked too */
	size_t marked_bytes;
	char *sweep;	 /* sweeping: next arena address to sweep */
	char *dst;	 /* compacting: where the next live object slides to */
	bool compacting; /* this sweep slides live objects down instead of freeing */
	bool trim;	 /* committed arena pages remain to give back (old_trim) */
	size_t trigger;
	size_t debt;
	size_t alloc_sweep; /* arena bytes old_alloc may still sweep in this pause (scavenge) */
	bool in_gc;
	/* The last full collection an allocation ran found no room, and no root or reference
	 * has been let go since: another would find none either, so allocations that need one
	 * fail at once. Without this, each of a scan's lookups past a full heap cost a full
	 * collection: e2e_heap's scan of 40,000 names past a 1 MiB heap took 200 s under
	 * ThreadSanitizer. */
	bool exhausted;

	struct heap_stats st;
	uint64_t pause_ns_total, pause_ns_max;
};

/* ---- small helpers ---- */

static size_t align8(size_t n)
{
	return (n + 7) & ~(size_t)7;
}

static struct large *large_of(const struct hdr *o)
{
	return (struct large *)o - 1;
}

static inline size_t hdr_nrefs(const struct hdr *o)
{
	return o->flags & F_LARGE ? large_of(o)->nrefs : o->nrefs;
}

static size_t hdr_nbytes(const struct hdr *o)
{
	if (o->flags & F_LARGE)
		return large_of(o)->nbytes;
	return 8 * ((size_t)o->words - 1 - o->nrefs) - ((8 - o->tail) & 7);
}

/* The size of an object (never a free chunk: the young generation has none). */
static inline size_t live_size(const struct hdr *o)
{
	return o->flags & F_LARGE ? large_of(o)->size : 8 * (size_t)o->words;
}

/* Writes a whole header in one 8-byte store. Assigning the bit-fields one by one (or a
 * compound literal) compiles to narrow stores, and the next read of the word then stalls on
 * store forwarding: that cost heap_alloc half its time. The shifts follow GCC's
 * little-endian bit-field layout, which heap_new checks once. */
static inline void hdr_set(struct hdr *o, uint64_t type, uint64_t flags, uint64_t tail,
			   uint64_t nrefs, uint64_t words, uint64_t idx)
{
	uint64_t w = type | flags << 6 | tail << 13 | nrefs << 16 | words << 24 | idx << 36;
	memcpy(o, &w, sizeof(w));
}

static size_t chunk_size(const struct hdr *c)
{
	return 8 * ((size_t)c->idx << 12 | c->words);
}

/* Turns the memory at c into the header of a free chunk of len bytes (len % 8 == 0). */
static void chunk_init(struct hdr *c, size_t len)
{
	hdr_set(c, T_FREE, 0, 0, 0, (len / 8) & 4095, len / 8 >> 12);
}

static size_t obj_size(const struct hdr *o)
{
	return o->type == T_FREE ? chunk_size(o) : live_size(o);
}

static uint64_t *refs(struct hdr *o)
{
	return (uint64_t *)(o + 1);
}

static struct slot *slot_at(const struct heap *h, uint32_t idx)
{
	return &h->slots[idx];
}

static struct hdr *large_hdr(struct large *l)
{
	return (struct hdr *)(l + 1);
}

/* The object of a slot that has one (slot_live). */
static inline struct hdr *slot_obj(const struct heap *h, const struct slot *s)
{
	if (s->loc <= h->span)
		return (struct hdr *)(h->mem + (size_t)(s->loc - 1) * 8);
	return large_hdr(h->ltab[s->loc - h->span - 1]);
}

/* A slot's tag is one 32-bit word, always written whole: a narrower store (a bit-field)
 * followed by a load of the word stalls store forwarding, and that doubled heap_alloc. */
static inline uint32_t slot_gen(const struct slot *s)
{
	return s->tag & GEN_MAX;
}

static inline uint32_t slot_roots(const struct slot *s)
{
	return s->tag >> GEN_BITS;
}

static inline void slot_set_roots(struct slot *s, uint32_t roots)
{
	s->tag = slot_gen(s) | roots << GEN_BITS;
}

static inline bool slot_live(const struct slot *s)
{
	return slot_roots(s) != ROOTS_FREE && s->loc != 0;
}

/* Points slot idx at o, an object in the reservation. */
static inline void slot_place(struct heap *h, uint32_t idx, const struct hdr *o)
{
	slot_at(h, idx)->loc = (uint32_t)(((const char *)o - h->mem) / 8 + 1);
}

static uint64_t handle_of(const struct heap *h, uint32_t idx)
{
	return ((uint64_t)slot_gen(slot_at(h, idx)) << 32) | ((uint64_t)idx + 1);
}

/* True when o is old garbage the sweeper has not reached yet. */
static bool known_dead(const struct heap *h, const struct hdr *o)
{
	return h->state == SWEEPING && !(o->flags & (F_MARK | F_LARGE)) &&
	       (const char *)o >= h->sweep && (const char *)o < h->otop;
}

/* The slot of a live handle, or NULL. An object that marking found dead is stale already,
 * though the sweeper has not reclaimed it yet: handing it out again (a weak table finding
 * it, say) would resurrect memory the sweeper is about to reuse. */
static struct slot *lookup(const struct heap *h, uint64_t handle)
{
	uint32_t low = (uint32_t)handle;
	if (low == 0 || low - 1 >= h->used_slots)
		return NULL;
	struct slot *s = slot_at(h, low - 1);
	if (!slot_live(s) || slot_gen(s) != handle >> 32 || known_dead(h, slot_obj(h, s)))
		return NULL;
	return s;
}

static bool in_range(const void *p, const char *base, size_t len)
{
	return (const char *)p >= base && (const char *)p < base + len;
}

static bool is_young(const struct heap *h, const struct hdr *o)
{
	return in_range(o, h->ymem, 2 * h->ysize);
}

static bool in_from(const struct heap *h, const struct hdr *o)
{
	return in_range(o, h->from, h->ysize);
}

static bool in_to(const struct heap *h, const struct hdr *o)
{
	return in_range(o, h->to, h->ysize);
}

static bool is_old(const struct heap *h, const struct hdr *o)
{
	return !is_young(h, o);
}

static int vec_reserve(struct vec *v, size_t n)
{
	if (n <= v->cap)
		return 0;
	if (v->whole)
		return -ENOMEM;
	size_t cap = v->cap ? v->cap : 256;
	while (cap < n)
		cap *= 2;
	uint32_t *nv = realloc(v->v, cap * sizeof(*nv));
	if (nv == NULL)
		return -ENOMEM;
	v->v = nv;
	v->cap = cap;
	return 0;
}

static int vec_push(struct vec *v, uint32_t x)
{
	int rc = vec_reserve(v, v->len + 1);
	if (rc < 0)
		return rc;
	v->v[v->len++] = x;
	return 0;
}

static uint64_t now_ns(const struct heap *h)
{
	if (h->cfg.clock_ns != NULL)
		return h->cfg.clock_ns(h->cfg.arg);
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A MAP_NORESERVE mapping: address space only, until pages are committed or touched. */
static void *reserve(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	return p != MAP_FAILED ? p : NULL;
}

static void unreserve(void *p, size_t len)
{
	if (p != NULL && munmap(p, len) != 0)
		abort(); /* only a wrong address or length fails: a bug, not a condition */
}

int heap_commit(void *addr, size_t len)
{
	uintptr_t page = (uintptr_t)getpagesize(), a = (uintptr_t)addr & ~(page - 1);
	size_t n = ((uintptr_t)addr + len - a + page - 1) & ~(page - 1);
	return len == 0 || madvise((void *)a, n, MADV_POPULATE_WRITE) == 0 ? 0 : -errno;
}

/* Commits [p, p + len) of one of the heap's own mappings. A kernel (or valgrind) without
 * MADV_POPULATE_WRITE says so once; the pages then fault in on first touch, as they would
 * have anyway, only at a cost the pauses cannot bound. */
static void commit(struct heap *h, void *p, size_t len)
{
	if (!h->no_commit && heap_commit(p, len) < 0)
		h->no_commit = true;
}

/* Keeps the arena committed oahead bytes beyond otop, in steps of at least oahead / 2. */
static void old_commit(struct heap *h)
{
	size_t want = (size_t)(h->otop - h->obase) + h->oahead;
	if (want > h->olimit)
		want = h->olimit;
	if (h->obase + want <= h->ocommit)
		return;
	commit(h, h->ocommit, (size_t)(h->obase + want - h->ocommit));
	h->ocommit = h->obase + want;
}

/* Gives back up to TRIM_STEP bytes of committed arena pages beyond otop + oahead, from the
 * top down, once there are at least TRIM_MIN of them. Returns true when some remain to give
 * back (another call will). A failed madvise leaves them committed: nothing is lost. */
static bool old_trim(struct heap *h)
{
	uintptr_t page = (uintptr_t)getpagesize();
	char *keep = (char *)(((uintptr_t)h->otop + h->oahead + page - 1) & ~(page - 1));
	/* commit() populates whole pages: the one ocommit falls in is resident too */
	char *top = (char *)(((uintptr_t)h->ocommit + page - 1) & ~(page - 1));
	if (keep >= top || (size_t)(top - keep) < TRIM_MIN)
		return false;
	size_t n = (size_t)(top - keep);
	if (n > TRIM_STEP)
		n = TRIM_STEP;
	if (madvise(top - n, n, MADV_DONTNEED) != 0)
		return false;
	h->ocommit = top - n;
	h->st.old.trimmed += n;
	return h->ocommit > keep;
}

/* A scavenge promoted `promoted` bytes: the arena's commit-ahead follows the promotion rate,
 * the largest promotion seen and a quarter more, from COMMIT_MIN up to COMMIT_MAX (a
 * scavenge promotes at most ysize), so the next scavenge's promotions land on committed
 * pages. Each scavenge ends here, so the arena is committed this far ahead when the next one
 * starts: a promotion no bigger than the largest so far needs no page it has not. (Twice the
 * largest held 32 KiB more than that at the usual 32 KiB promotions, for nothing.) */
static void old_ahead(struct heap *h, size_t promoted)
{
	size_t want = promoted + promoted / 4;
	if (want > COMMIT_MAX)
		want = COMMIT_MAX;
	if (want > h->oahead)
		h->oahead = want;
	old_commit(h);
}

/* The semi-space `from` gets room for at least `need` bytes (already inside ysize): the
 * committed part doubles, from COMMIT_MIN, so an idle heap holds a few pages, not ysize. */
static void young_commit(struct heap *h, size_t need)
{
	size_t want = h->fcommit ? 2 * h->fcommit : COMMIT_MIN;
	if (want < need)
		want = need;
	if (want > h->ysize)
		want = h->ysize;
	if (want > h->fcommit) {
		commit(h, h->from + h->fcommit, want - h->fcommit);
		h->fcommit = want;
	}
	h->ylimit = h->from + h->fcommit;
}

static size_t old_used(const struct heap *h)
{
	return (size_t)(h->otop - h->obase) - h->ofree + h->large_bytes;
}

/* Free chunk bytes over the arena extent (during a lazy sweep: swept part only). */
static double fragmentation(const struct heap *h)
{
	size_t extent = (size_t)(h->otop - h->obase);
	return extent ? (double)h->ofree / (double)extent : 0;
}

/* Ends a pause that began at t0; traces `what` when the embedder asked for it. */
static void pause_end(struct heap *h, uint64_t t0, const char *what)
{
	uint64_t dt = now_ns(h) - t0;
	h->pause_ns_total += dt;
	if (dt > h->pause_ns_max)
		h->pause_ns_max = dt;
	h->st.pause_us.last = dt / 1000;
	if (what == NULL || h->cfg.trace == NULL)
		return;
	char line[200];
	snprintf(line, sizeof(line),
		 "heap: %s young %zuK/%zuK old %zuK/%zuK frag %.2f objects %zu pause %.3f ms", what,
		 (size_t)(h->ytop - h->from) >> 10, h->ysize >> 10, old_used(h) >> 10,
		 h->olimit >> 10, fragmentation(h), h->live_slots, (double)dt / 1e6);
	h->cfg.trace(h->cfg.arg, line);
}

/* ---- handle table ---- */

static int slot_alloc(struct heap *h, uint32_t *idx)
{
	if (h->free_slot != 0) {
		*idx = h->free_slot - 1;
		struct slot *s = slot_at(h, *idx);
		h->free_slot = s->loc;
		s->loc = 0;
		slot_set_roots(s, 0);
		h->live_slots++;
		return 0;
	}
	if (h->used_slots == h->slot_commit) {
		/* Committed in proportion to use: a page at first, doubling up to SLOT_COMMIT. */
		size_t n = h->slot_commit < SLOT_COMMIT ? h->slot_commit : SLOT_COMMIT;
		if (n < SLOT_COMMIT_MIN)
			n = SLOT_COMMIT_MIN;
		if (n > h->max_slots - h->slot_commit)
			n = h->max_slots - h->slot_commit;
		if (n == 0)
			return -ENOMEM;
		commit(h, slot_at(h, (uint32_t)h->used_slots), n * sizeof(struct slot));
		h->slot_commit += n;
	}
	*idx = (uint32_t)h->used_slots++;
	slot_at(h, *idx)->tag = 1; /* generation 1, no root */
	slot_at(h, *idx)->loc = 0;
	h->live_slots++;
	return 0;
}

/* The object in slot idx is gone: bump the generation so old handles go stale (it wraps
 * from GEN_MAX to 1; see the top comment) and push the slot on the free list. */
static inline void slot_release(struct heap *h, uint32_t idx)
{
	struct slot *s = slot_at(h, idx);
	h->live_slots--;
	uint32_t gen = slot_gen(s);
	s->tag = (gen == GEN_MAX ? 1 : gen + 1) | (uint32_t)ROOTS_FREE << GEN_BITS;
	s->loc = h->free_slot;
	h->free_slot = idx + 1;
}

static void *payload(struct hdr *o)
{
	return (char *)(o + 1) + 8 * hdr_nrefs(o);
}

/* Object o is garbage and its memory is about to be reused: tell the embedder (its weak
 * tables and external resources), then retire the handle. */
static inline void reclaim(struct heap *h, struct hdr *o)
{
	if (h->cfg.on_free != NULL)
		h->cfg.on_free(h->cfg.arg, handle_of(h, o->idx), o->type, payload(o));
	slot_release(h, o->idx);
}

/* ---- old arena free lists ---- */

static struct hdr *chunk_at(const struct heap *h, uint32_t link)
{
	return link == 0 ? NULL : (struct hdr *)(h->obase + (size_t)(link - 1) * 8);
}

static uint32_t chunk_link(const struct heap *h, const struct hdr *c)
{
	return (uint32_t)(((const char *)c - h->obase) / 8 + 1);
}

static void flist_reset(struct heap *h)
{
	memset(h->flist, 0, sizeof(h->flist));
	h->fmask = 0;
	h->ofree = 0;
}

/* Turns [p, p + len) into free space: a listed chunk, or an 8-byte filler. */
static void chunk_add(struct heap *h, char *p, size_t len)
{
	struct hdr *c = (struct hdr *)p;
	chunk_init(c, len);
	h->ofree += len;
	if (len < 16) /* room for the header only: an unlisted filler */
		return;
	size_t w = len / 8 <= NCLASS ? len / 8 : 0;
	refs(c)[0] = h->flist[w];
	h->flist[w] = chunk_link(h, c);
	h->fmask |= (uint64_t)1 << w;
}

static struct hdr *chunk_pop(struct heap *h, size_t w)
{
	struct hdr *c = chunk_at(h, h->flist[w]);
	h->flist[w] = (uint32_t)refs(c)[0];
	if (h->flist[w] == 0)
		h->fmask &= ~((uint64_t)1 << w);
	return c;
}

/* Takes `size` bytes from the free lists: the smallest non-empty exact class that fits,
 * else first fit among the big chunks; the rest of the chunk goes back as free space. */
static struct hdr *flist_take(struct heap *h, size_t size)
{
	size_t w = size / 8;
	struct hdr *c = NULL;
	if (w <= NCLASS) {
		uint64_t m = h->fmask & (~(uint64_t)0 << w) & ~(uint64_t)1;
		if (m != 0)
			c = chunk_pop(h, (size_t)__builtin_ctzll(m));
	}
	if (c == NULL) {
		uint64_t *link = NULL; /* the link naming c; NULL: flist[0] */
		uint32_t next = h->flist[0];
		while (next != 0 && chunk_size(chunk_at(h, next)) < size) {
			link = refs(chunk_at(h, next));
			next = (uint32_t)*link;
		}
		if (next == 0)
			return NULL;
		c = chunk_at(h, next);
		if (link == NULL)
			h->flist[0] = (uint32_t)refs(c)[0];
		else
			*link = refs(c)[0];
		if (h->flist[0] == 0)
			h->fmask &= ~(uint64_t)1;
	}
	size_t csize = chunk_size(c);
	h->ofree -= csize;
	if (csize > size)
		chunk_add(h, (char *)c + size, csize - size);
	return c;
}

/* ---- lazy sweeping ---- */

static void sweep_done(struct heap *h)
{
	h->state = IDLE;
	h->trim = old_trim(h);
	size_t used = old_used(h);
	size_t room = h->olimit - used;
	h->trigger = used + (used < room / 2 ? used : room / 2);
	if (h->trigger < used + h->olimit / 16)
		h->trigger = used + h->olimit / 16;
}

/* Sweeps about budget bytes of the arena (live objects kept, garbage reclaimed, both count).
 * A run of garbage and free chunks becomes one free chunk, unless the budget ends inside it:
 * then the rest of the run starts the next chunk, so a slice is bounded even in a region that
 * died wholesale. */
static void sweep_step(struct heap *h, size_t budget)
{
	char *p = h->sweep;
	while (p < h->otop && budget > 0) {
		char *run = p;
		while (p < h->otop && budget > 0) {
			struct hdr *o = (struct hdr *)p;
			if (o->type != T_FREE && (o->flags & F_MARK))
				break;
			size_t sz = obj_size(o);
			if (o->type != T_FREE) {
				reclaim(h, o);
				budget = budget > sz ? budget - sz : 0;
			}
			p += sz;
		}
		if (p > run) {
			if (p == h->otop)
				h->otop = run;
			else
				chunk_add(h, run, (size_t)(p - run));
		}
		if (p < h->otop && budget > 0) {
			struct hdr *o = (struct hdr *)p;
			o->flags &= (uint8_t)~F_MARK;
			size_t sz = obj_size(o);
			p += sz;
			budget = budget > sz ? budget - sz : 0;
		}
	}
	h->st.old.swept += (uint64_t)(p - h->sweep);
	h->sweep = p;
	if (p >= h->otop)
		sweep_done(h);
}

/* Incremental mark-compact: a sweep that slides every live object down to h->dst instead of
 * freeing around it, in address order, a slice at a time. Handles make a move one slot update,
 * and no heap_deref pointer survives a call that may collect, so objects may move between any
 * two slices. While it runs the free lists are empty and [dst, sweep) is one unlisted free
 * chunk (the gap, all of ofree), so the arena stays walkable; new old objects are bumped at
 * otop, pre-marked, and slide down when the compactor reaches them. */
static void compact_step(struct heap *h, size_t budget)
{
	char *p = h->sweep, *dst = h->dst;
	while (p < h->otop && budget > 0) {
		struct hdr *o = (struct hdr *)p;
		size_t sz = obj_size(o);
		if (o->type != T_FREE && (o->flags & F_MARK)) {
			o->flags &= (uint8_t)~F_MARK;
			if (dst != p) {
				memmove(dst, p, sz);
				slot_place(h, ((struct hdr *)dst)->idx, (struct hdr *)dst);
			}
			dst += sz;
		} else if (o->type != T_FREE) {
			reclaim(h, o);
		}
		budget = budget > sz ? budget - sz : 0;
		p += sz;
	}
	h->sweep = p;
	h->dst = dst;
	h->ofree = (size_t)(p - dst);
	if (p >= h->otop) {
		h->otop = dst;
		h->ofree = 0;
		h->compacting = false;
		sweep_done(h);
	} else if (p > dst) {
		chunk_init((struct hdr *)dst, (size_t)(p - dst));
	}
}

/* One slice of sweeping or compacting. */
static void sweep_slice(struct heap *h, size_t budget)
{
	if (h->compacting)
		compact_step(h, budget);
	else
		sweep_step(h, budget);
}

static void sweep_all(struct heap *h)
{
	while (h->state == SWEEPING)
		sweep_slice(h, SIZE_MAX);
}

/* ---- old allocation ---- */

/* Bumps otop when the arena has room; the object is marked when a sweep or compaction has yet
 * to pass it, so that it is kept. */
static struct hdr *old_bump(struct heap *h, size_t size)
{
	if ((size_t)(h->otop - h->obase) + h->large_bytes + size > h->olimit)
		return NULL;
	struct hdr *o = (struct hdr *)h->otop;
	h->otop += size;
	if (h->otop + h->oahead / 2 > h->ocommit)
		old_commit(h);
	o->flags = h->state == SWEEPING ? F_MARK : 0;
	return o;
}

static struct hdr *old_alloc(struct heap *h, size_t size)
{
	struct hdr *o = flist_take(h, size);
	if (o == NULL && h->state == SWEEPING && !h->compacting && h->alloc_sweep > 0) {
		size_t n = h->alloc_sweep < SWEEP_FOR_ALLOC ? h->alloc_sweep : SWEEP_FOR_ALLOC;
		h->alloc_sweep -= n;
		sweep_step(h, n);
		o = flist_take(h, size);
	}
	if (o == NULL && (o = old_bump(h, size)) != NULL)
		return o;
	if (o == NULL && h->state == SWEEPING) {
		sweep_all(h);
		o = flist_take(h, size);
		if (o == NULL)
			return old_bump(h, size);
	}
	if (o != NULL)
		o->flags = 0;
	return o;
}

/* ---- marking ---- */

static void shade(struct heap *h, struct hdr *o)
{
	if (o->flags & F_MARK)
		return;
	o->flags |= F_MARK;
	if (!(o->flags & F_LARGE) && is_old(h, o)) {
		h->marked_bytes += obj_size(o);
		h->st.old.marked += obj_size(o);
	}
	if (hdr_nrefs(o) != 0 && vec_push(&h->mstack, o->idx) < 0)
		h->mark_overflow = true;
}

/* The object a stored reference names, or NULL when the slot went stale (only possible in
 * garbage whose referents were swept first). */
static struct hdr *ref_obj(const struct heap *h, uint64_t r)
{
	struct slot *s = lookup(h, r);
	return s ? slot_obj(h, s) : NULL;
}

static size_t scan_for_mark(struct heap *h, struct hdr *o)
{
	uint64_t *r = refs(o);
	for (size_t i = 0, n = hdr_nrefs(o); i < n; i++) {
		struct hdr *t = r[i] ? ref_obj(h, r[i]) : NULL;
		if (t != NULL && (h->full_mark || is_old(h, t)))
			shade(h, t);
	}
	return obj_size(o);
}

/* After mstack overflowed: rescan every marked object so no grey one is forgotten. */
static void mark_rescan(struct heap *h)
{
	h->mark_overflow = false;
	for (char *p = h->from; h->full_mark && p < h->ytop; p += obj_size((struct hdr *)p))
		if (((struct hdr *)p)->flags & F_MARK)
			scan_for_mark(h, (struct hdr *)p);
	for (char *p = h->obase; p < h->otop; p += obj_size((struct hdr *)p)) {
		struct hdr *o = (struct hdr *)p;
		if (o->type != T_FREE && (o->flags & F_MARK))
			scan_for_mark(h, o);
	}
	for (size_t i = 0; i < h->nlarge; i++) {
		struct hdr *o = large_hdr(h->ltab[i]);
		if (o->flags & F_MARK)
			scan_for_mark(h, o);
	}
}

/* Marks for about budget bytes. Returns true when marking is complete. */
static bool mark_step(struct heap *h, size_t budget)
{
	while (budget > 0) {
		if (h->root_cursor < h->used_slots) {
			/* A slot costs what scanning its bytes costs; a root it shades costs a
			 * visit of the object (a cache miss, the slot table is read in order):
			 * charged as ROOT_SHADE_COST bytes. Charging slots alone let one slice
			 * shade 16,384 roots scattered over 45 MiB: 1.5 ms (bench_inode). */
			while (budget > 0 && h->root_cursor < h->used_slots) {
				struct slot *s = slot_at(h, (uint32_t)h->root_cursor++);
				budget = budget > sizeof(*s) ? budget - sizeof(*s) : 0;
				if (slot_live(s) && slot_roots(s) != 0 &&
				    (h->full_mark || is_old(h, slot_obj(h, s)))) {
					shade(h, slot_obj(h, s));
					budget =
					    budget > ROOT_SHADE_COST ? budget - ROOT_SHADE_COST : 0;
				}
			}
			continue;
		}
		if (h->mstack.len == 0) {
			if (!h->mark_overflow)
				return true;
			mark_rescan(h);
			continue;
		}
		struct hdr *o = slot_obj(h, slot_at(h, h->mstack.v[--h->mstack.len]));
		size_t sz = scan_for_mark(h, o);
		budget = budget > sz ? budget - sz : 0;
	}
	return h->root_cursor >= h->used_slots && h->mstack.len == 0 && !h->mark_overflow;
}

static void mark_start(struct heap *h)
{
	if (h->state == SWEEPING)
		sweep_all(h);
	h->state = MARKING;
	h->root_cursor = 0;
	h->mstack.len = 0;
	h->mark_overflow = false;
	h->marked_bytes = 0;
	if (h->cfg.trace != NULL) {
		char line[120];
		snprintf(line, sizeof(line), "heap: marking start old %zuK/%zuK", old_used(h) >> 10,
			 h->olimit >> 10);
		h->cfg.trace(h->cfg.arg, line);
	}
}

/* ---- scavenge ---- */

/* Copies the object in slot idx out of from-space (if it is there) and returns its address. */
static struct hdr *evacuate(struct heap *h, uint32_t idx, bool promote_all, char **to_top)
{
	struct slot *s = slot_at(h, idx);
	struct hdr *o = slot_obj(h, s);
	if (!in_from(h, o))
		return o;
	size_t size = obj_size(o);
	unsigned age = o->age + 1u;
	struct hdr *n = NULL;
	if (promote_all || age >= h->cfg.promote_age ||
	    (size_t)(*to_top - h->to) + size > h->ysize / 2) {
		n = old_alloc(h, size);
		if (n != NULL) {
			uint8_t keep = n->flags & F_MARK;
			memcpy(n, o, size);
			n->flags = keep;
			h->pstack.v[h->pstack.len++] = idx;
			h->st.young.promoted_bytes += size;
			if (h->state == MARKING) {
				n->flags |= F_MARK;
				h->marked_bytes += size;
				if (hdr_nrefs(n) != 0)
					h->mstack.v[h->mstack.len++] = idx;
			}
		}
	}
	if (n == NULL) {
		n = (struct hdr *)*to_top;
		*to_top += size;
		memcpy(n, o, size);
		n->flags &= (uint8_t) ~(F_YROOT | F_FORWARDED | F_MARK);
		n->age = age > AGE_MAX ? AGE_MAX : age;
	}
	o->flags |= F_FORWARDED;
	slot_place(h, idx, n);
	return n;
}

/* Evacuates the young referents of o; returns true if o still points into the young
 * generation afterwards. */
static bool scavenge_refs(struct heap *h, struct hdr *o, bool promote_all, char **to_top)
{
	bool young = false;
	uint64_t *r = refs(o);
	for (size_t i = 0, n = hdr_nrefs(o); i < n; i++) {
		struct slot *s = r[i] ? lookup(h, r[i]) : NULL;
		if (s == NULL)
			continue;
		struct hdr *t = evacuate(h, (uint32_t)(r[i] - 1), promote_all, to_top);
		young |= in_to(h, t);
	}
	return young;
}

static int scavenge(struct heap *h, bool promote_all)
{
	size_t most = (size_t)(h->ytop - h->from) / sizeof(struct hdr);
	if (vec_reserve(&h->pstack, most) < 0 || vec_reserve(&h->rset, h->rset.len + most) < 0 ||
	    (h->state == MARKING && vec_reserve(&h->mstack, h->mstack.len + most) < 0))
		return -ENOMEM;
	/* Survivors take at most what from holds: commit to-space that far, in the pause (one
	 * MADV_POPULATE_WRITE, 1 us a page) rather than fault page by page while copying. */
	size_t used = (size_t)(h->ytop - h->from);
	if (used > h->tcommit) {
		size_t page = (size_t)getpagesize();
		size_t want = (used + page - 1) & ~(page - 1);
		want = want < h->ysize ? want : h->ysize;
		commit(h, h->to + h->tcommit, want - h->tcommit);
		h->tcommit = want;
	}
	uint64_t promoted = h->st.young.promoted_bytes;
	h->alloc_sweep = PACE_WORK;
	char *to_top = h->to;
	char *scan = h->to;
	h->pstack.len = 0;

	for (size_t i = 0; i < h->yroots.len; i++) {
		struct slot *s = slot_at(h, h->yroots.v[i]);
		if (slot_live(s) && slot_roots(s) != 0)
			evacuate(h, h->yroots.v[i], promote_all, &to_top);
	}

	/* Remembered set: drop stale entries and duplicates, then scan each once. */
	size_t n = 0;
	for (size_t i = 0; i < h->rset.len; i++) {
		struct slot *s = slot_at(h, h->rset.v[i]);
		struct hdr *o = slot_live(s) ? slot_obj(h, s) : NULL;
		if (o == NULL || is_young(h, o) || !(o->flags & F_REMEMBERED))
			continue;
		o->flags &= (uint8_t)~F_REMEMBERED;
		if (!known_dead(h, o) && !(h->full_mark && !(o->flags & F_MARK)))
			h->rset.v[n++] = h->rset.v[i];
	}
	h->rset.len = n;
	n = 0;
	for (size_t i = 0; i < h->rset.len; i++) {
		struct hdr *o = slot_obj(h, slot_at(h, h->rset.v[i]));
		if (scavenge_refs(h, o, promote_all, &to_top)) {
			o->flags |= F_REMEMBERED;
			h->rset.v[n++] = h->rset.v[i];
		}
	}
	h->rset.len = n;

	while (scan < to_top || h->pstack.len != 0) {
		if (scan < to_top) {
			struct hdr *o = (struct hdr *)scan;
			scavenge_refs(h, o, promote_all, &to_top);
			scan += obj_size(o);
			continue;
		}
		uint32_t idx = h->pstack.v[--h->pstack.len];
		struct hdr *o = slot_obj(h, slot_at(h, idx));
		if (scavenge_refs(h, o, promote_all, &to_top) && !(o->flags & F_REMEMBERED)) {
			o->flags |= F_REMEMBERED;
			h->rset.v[h->rset.len++] = idx;
		}
	}

	for (char *p = h->from; p < h->ytop; p += live_size((struct hdr *)p)) {
		struct hdr *o = (struct hdr *)p;
		if (!(o->flags & F_FORWARDED))
			reclaim(h, o);
	}

	char *old_from = h->from;
	h->from = h->to;
	size_t fc = h->fcommit;
	h->fcommit = h->tcommit;
	h->tcommit = fc;
	h->ylimit = h->from + h->fcommit;
	h->to = old_from;
	h->ytop = to_top;
	/* Allocation hands out zeroed memory: zero what this space held before, once per
	 * scavenge (64 KiB at most, a few us), instead of each object as it is allocated.
	 * Pages committed later are fresh, hence zero. */
	memset(h->ytop, 0, (size_t)(h->ylimit - h->ytop));

	n = 0;
	for (size_t i = 0; i < h->yroots.len; i++) {
		uint32_t idx = h->yroots.v[i];
		struct slot *s = slot_at(h, idx);
		struct hdr *o = slot_live(s) ? slot_obj(h, s) : NULL;
		if (o == NULL || !in_from(h, o) || slot_roots(s) == 0 || (o->flags & F_YROOT))
			continue;
		o->flags |= F_YROOT;
		h->yroots.v[n++] = idx;
	}
	h->yroots.len = n;
	h->st.young.scavenges++;
	old_ahead(h, (size_t)(h->st.young.promoted_bytes - promoted));
	return 0;
}

/* ---- finishing a cycle ---- */

/* Unlists and frees large object l (its handle is retired already): the last entry of ltab
 * moves into its place, and that object's slot follows it. */
static void large_drop(struct heap *h, struct large *l)
{
	struct large *last = h->ltab[--h->nlarge];
	if (last != l) {
		last->lix = l->lix;
		h->ltab[l->lix] = last;
		slot_at(h, large_hdr(last)->idx)->loc = (uint32_t)(h->span + 1 + last->lix);
	}
	h->large_bytes -= l->size;
	free(l);
}

static void large_sweep(struct heap *h)
{
	for (size_t i = 0; i < h->nlarge;) {
		struct large *l = h->ltab[i];
		struct hdr *o = large_hdr(l);
		if (o->flags & F_MARK) {
			o->flags &= (uint8_t)~F_MARK;
			i++;
		} else {
			reclaim(h, o);
			large_drop(h, l); /* ltab[i] is now another object, or i == nlarge */
		}
	}
}

/* Starts sliding every marked arena object down to the bottom (see compact_step). */
static void compact_start(struct heap *h)
{
	flist_reset(h);
	h->state = SWEEPING;
	h->compacting = true;
	h->sweep = h->dst = h->obase;
	h->st.old.mark_compacts++;
}

/* The atomic end of marking: scavenge, shade what young objects point at, drain, then
 * sweep (lazily unless `atomic`) or compact. Returns the kind of cycle for the trace. */
static const char *mark_finish(struct heap *h, bool atomic, bool force_compact)
{
	if (scavenge(h, atomic) < 0)
		return NULL; /* still marking; the next slice or collection retries */
	if (!h->full_mark)
		for (char *p = h->from; p < h->ytop; p += obj_size((struct hdr *)p))
			scan_for_mark(h, (struct hdr *)p);
	h->full_mark = false;
	mark_step(h, SIZE_MAX);
	large_sweep(h);
	size_t extent = (size_t)(h->otop - h->obase);
	double garbage = extent ? 1.0 - (double)h->marked_bytes / (double)extent : 0;
	const char *what = "mark-compact";
	if (force_compact || garbage > h->cfg.compact_threshold) {
		compact_start(h);
	} else {
		what = "mark-sweep";
		h->st.old.mark_sweeps++;
		flist_reset(h);
		h->state = SWEEPING;
		h->sweep = h->obase;
	}
	if (atomic)
		sweep_all(h);
	return what;
}

/* A precise full collection. A cycle already marking is finished first (it may keep
 * floating garbage). Then the young generation is promoted wholesale, so the fresh marking
 * sees one generation and the remembered set cannot keep dead young objects alive; what
 * could not be promoted for lack of room gets a last chance after the sweep. */
static int collect_full(struct heap *h, bool force_compact)
{
	uint64_t t0 = now_ns(h);
	h->st.old.fulls++;
	const char *what = "full";
	if (h->state == MARKING) {
		mark_step(h, SIZE_MAX);
		what = mark_finish(h, true, false);
	}
	if (h->state == SWEEPING)
		sweep_all(h);
	if (what != NULL && scavenge(h, true) < 0)
		what = NULL;
	if (what != NULL) {
		mark_start(h);
		h->full_mark = true;
		mark_step(h, SIZE_MAX);
		what = mark_finish(h, true, force_compact);
	}
	if (what != NULL && h->ytop != h->from && scavenge(h, true) < 0)
		what = NULL;
	if (h->full_mark) { /* the finishing scavenge failed: young marks must not linger */
		for (char *p = h->from; p < h->ytop; p += obj_size((struct hdr *)p))
			((struct hdr *)p)->flags &= (uint8_t)~F_MARK;
		h->full_mark = false;
	}
	pause_end(h, t0, what);
	return what != NULL ? 0 : -ENOMEM;
}

/* A scavenge; then an old-generation cycle begins if the old space passed its trigger or, for
 * HEAP_CYCLE (begin), in any case, unless a cycle is under way. A cycle still sweeping is
 * left to finish in slices (mark_start would sweep the rest in this pause). */
static int collect_minor(struct heap *h, bool begin)
{
	uint64_t t0 = now_ns(h);
	int rc = scavenge(h, false);
	if (rc == 0 && h->state == IDLE && (begin || old_used(h) >= h->trigger))
		mark_start(h);
	pause_end(h, t0, "scavenge");
	return rc;
}

/* One slice of old-generation work. Returns 1 while a cycle is in progress. */
static int step(struct heap *h, size_t budget)
{
	if (h->state == IDLE && old_used(h) >= h->trigger)
		mark_start(h);
	if (h->state == IDLE && h->trim) { /* the last cycle left pages to give back */
		uint64_t t0 = now_ns(h);
		h->trim = old_trim(h);
		pause_end(h, t0, NULL);
		return h->trim;
	}
	if (h->state == IDLE)
		return 0;
	uint64_t t0 = now_ns(h);
	const char *what = NULL;
	if (h->state == MARKING) {
		if (mark_step(h, budget))
			what = mark_finish(h, false, false);
	} else {
		sweep_slice(h, budget);
	}
	pause_end(h, t0, what);
	return h->state != IDLE || h->trim;
}

/* ---- public API ---- */

int heap_new(const struct heap_config *config, struct heap **out)
{
	struct heap_config c = {0};
	if (config != NULL)
		c = *config;
	if (c.semi_space == 0)
		c.semi_space = HEAP_DEFAULT_SEMI_SPACE;
	if (c.old_space == 0)
		c.old_space = HEAP_DEFAULT_OLD_SPACE;
	if (c.promote_age == 0)
		c.promote_age = HEAP_DEFAULT_PROMOTE_AGE;
	if (c.large_object == 0)
		c.large_object = HEAP_DEFAULT_LARGE_OBJECT;
	if (c.compact_threshold == 0)
		c.compact_threshold = HEAP_DEFAULT_COMPACT;
	c.semi_space = align8(c.semi_space);
	c.old_space = align8(c.old_space);
	if (c.semi_space < HEAP_MIN_SEMI_SPACE || c.semi_space > ((size_t)1 << 32) ||
	    c.old_space > HEAP_MAX_OLD_SPACE || c.promote_age > AGE_MAX ||
	    c.large_object >
		(c.semi_space < HEAP_SEMI_SPACE_USED ? c.semi_space : HEAP_SEMI_SPACE_USED) / 4 ||
	    c.large_object < sizeof(struct hdr) ||
	    !(c.compact_threshold > 0 && c.compact_threshold <= 1))
		return -EINVAL;

	struct hdr t;
	hdr_set(&t, 1, 2, 3, 4, 5, 6);
	if (t.type != 1 || t.flags != 2 || t.age != 0 || t.tail != 3 || t.nrefs != 4 ||
	    t.words != 5 || t.idx != 6)
		return -ENOTSUP; /* a compiler laid struct hdr out otherwise: hdr_set must follow */
	struct heap *h = calloc(1, sizeof(*h));
	if (h == NULL)
		return -ENOMEM;
	h->cfg = c;
	h->ysize = c.semi_space < HEAP_SEMI_SPACE_USED ? c.semi_space : HEAP_SEMI_SPACE_USED;
	h->olimit = c.old_space;
	/* No object is smaller than a header, so the young and old spaces together can never hold
	 * more objects than this: the handle table cannot run out before the spaces do. */
	size_t most = (h->ysize + h->olimit) / sizeof(struct hdr) + 2;
	size_t cap = ((size_t)1 << IDX_BITS) - 1; /* what a header can name */
	h->max_slots = most < cap ? most : cap;
	h->span = (2 * h->ysize + h->olimit) / 8;
	h->mem = reserve(h->span * 8);
	h->slots = reserve(h->max_slots * sizeof(struct slot));
	/* An object turns grey once a cycle and is pushed then, so the mark stack never holds
	 * more than max_slots entries: it is reserved whole, like the handle table, and its
	 * pages fault in as marking reaches them, a few a slice. Grown by realloc instead, a
	 * stack of a million entries doubled inside a scavenge's pause: 3.7 ms (bench_inode's
	 * churn, the same scavenge in every run). */
	h->mstack.v = reserve(h->max_slots * sizeof(uint32_t));
	h->mstack.cap = h->max_slots;
	h->mstack.whole = true;
	if (h->mem == NULL || h->slots == NULL || h->mstack.v == NULL) {
		heap_free(h);
		return -ENOMEM;
	}
	h->ymem = h->mem;
	h->obase = h->mem + 2 * h->ysize;
	h->from = h->ytop = h->ylimit = h->ymem;
	h->to = h->ymem + h->ysize;
	h->otop = h->ocommit = h->obase;
	h->oahead = COMMIT_MIN; /* nothing is committed before it is about to be used */
	sweep_done(h);
	h->st.young.size = h->ysize;
	h->st.old.size = h->olimit;
	*out = h;
	return 0;
}

/* Calls fn for every object of every space. */
static void each_object(struct heap *h, void (*fn)(struct heap *h, struct hdr *o, void *arg),
			void *arg)
{
	for (char *p = h->from; p < h->ytop; p += obj_size((struct hdr *)p))
		fn(h, (struct hdr *)p, arg);
	for (char *p = h->obase; p < h->otop; p += obj_size((struct hdr *)p))
		if (((struct hdr *)p)->type != T_FREE)
			fn(h, (struct hdr *)p, arg);
	for (size_t i = 0; i < h->nlarge; i++)
		fn(h, large_hdr(h->ltab[i]), arg);
}

static void reclaim_each(struct heap *h, struct hdr *o, void *arg)
{
	(void)arg;
	reclaim(h, o);
}

struct walk {
	void (*fn)(void *arg, uint64_t handle, unsigned type, void *payload, int dead);
	void *arg;
};

static void walk_each(struct heap *h, struct hdr *o, void *arg)
{
	struct walk *w = arg;
	w->fn(w->arg, handle_of(h, o->idx), o->type, payload(o), known_dead(h, o));
}

void heap_walk(struct heap *h,
	       void (*fn)(void *arg, uint64_t handle, unsigned type, void *payload, int dead),
	       void *arg)
{
	struct walk w = {fn, arg};
	each_object(h, walk_each, &w);
}

void heap_free(struct heap *h)
{
	if (h == NULL)
		return;
	if (h->cfg.on_free != NULL) {
		h->state = IDLE; /* every object is finalized, garbage or not */
		each_object(h, reclaim_each, NULL);
	}
	for (size_t i = 0; i < h->nlarge; i++)
		free(h->ltab[i]);
	free(h->ltab);
	unreserve(h->slots, h->max_slots * sizeof(struct slot));
	free(h->rset.v);
	free(h->yroots.v);
	unreserve(h->mstack.v, h->mstack.cap * sizeof(uint32_t));
	free(h->pstack.v);
	unreserve(h->mem, h->span * 8);
	free(h);
}

/* The last resort of an allocation that found no room: a full, compacting collection, unless
 * the last one found none and nothing was let go since. Then room(h, size) says whether the
 * allocation fits now. */
static bool collect_for(struct heap *h, size_t size, bool (*room)(struct heap *, size_t))
{
	if (h->exhausted)
		return false;
	if (collect_full(h, true) == 0 && room(h, size))
		return true;
	h->exhausted = true;
	return false;
}

static bool large_room(struct heap *h, size_t size)
{
	return (size_t)(h->otop - h->obase) + h->large_bytes + size <= h->olimit;
}

static struct hdr *large_alloc(struct heap *h, size_t size)
{
	if (!large_room(h, size) && !collect_for(h, size, large_room))
		return NULL;
	/* A slot's loc names a large object as span + 1 + its ltab index, in 32 bits. */
	if (h->nlarge >= (size_t)UINT32_MAX - h->span)
		return NULL;
	if (h->nlarge == h->large_cap) {
		size_t cap = h->large_cap ? 2 * h->large_cap : 16;
		struct large **t = realloc(h->ltab, cap * sizeof(*t));
		if (t == NULL)
			return NULL;
		h->ltab = t;
		h->large_cap = cap;
	}
	struct large *l = malloc(sizeof(*l) + size);
	if (l == NULL)
		return NULL;
	l->size = size;
	l->lix = (uint32_t)h->nlarge;
	l->pad = 0;
	h->ltab[h->nlarge++] = l;
	h->large_bytes += size;
	return large_hdr(l);
}

/* Whether `size` more bytes fit in the semi-space; commits them when they do. */
static bool young_room(struct heap *h, size_t size)
{
	size_t need = (size_t)(h->ytop - h->from) + size;
	if (need > h->ysize)
		return false;
	if (h->ytop + size > h->ylimit)
		young_commit(h, need);
	return true;
}

static struct hdr *young_alloc(struct heap *h, size_t size)
{
	if (!young_room(h, size)) {
		if (collect_minor(h, false) < 0)
			return NULL;
		if (!young_room(h, size) && !collect_for(h, size, young_room))
			return NULL;
	}
	struct hdr *o = (struct hdr *)h->ytop;
	h->ytop += size;
	return o;
}

/* Makes the memory at o object `idx`: header, zeroed reference slots and raw bytes, and the
 * slot's one root. Returns its handle. */
static inline uint64_t alloc_finish(struct heap *h, struct hdr *o, uint32_t idx, unsigned flags,
				    unsigned type, size_t nrefs, size_t nbytes, size_t size)
{
	struct slot *s = slot_at(h, idx);
	if (flags & F_LARGE) { /* the header cannot say its size: struct large does */
		hdr_set(o, type, flags, 0, 0, 0, idx);
		large_of(o)->nrefs = (uint32_t)nrefs;
		large_of(o)->nbytes = (uint32_t)nbytes;
		s->loc = (uint32_t)(h->span + 1 + large_of(o)->lix);
	} else { /* one store: the fields are bits of one word */
		hdr_set(o, type, flags, nbytes & 7, nrefs, size / 8, idx);
		slot_place(h, idx, o);
	}
	if (flags & F_LARGE) /* young memory above ytop is zero already (see scavenge) */
		memset(o + 1, 0, size - sizeof(*o));
	uint32_t gen = slot_gen(s);
	s->tag = gen | ROOT_ONE;
	return ((uint64_t)gen << 32) | ((uint64_t)idx + 1);
}

/* Every allocation heap_alloc's straight line does not take: a large object, a full (or not
 * yet committed) semi-space, no free slot or yroots room at hand, or an old-generation cycle
 * in progress, whose work is paced by allocation. */
static __attribute__((noinline)) uint64_t alloc_slow(struct heap *h, unsigned type, size_t nrefs,
						     size_t nbytes, size_t size)
{
	bool large = size > h->cfg.large_object || nrefs > NREFS_SMALL;
	uint32_t idx;
	if ((!large && vec_reserve(&h->yroots, h->yroots.len + 1) < 0) || slot_alloc(h, &idx) < 0) {
		errno = ENOMEM;
		return 0;
	}
	/* The slot is reserved but empty (obj NULL) while a collection may run. */
	struct hdr *o = large ? large_alloc(h, size) : young_alloc(h, size);
	if (o == NULL) {
		slot_release(h, idx);
		errno = ENOMEM;
		return 0;
	}
	unsigned flags = !large ? F_YROOT : F_LARGE | (h->state == MARKING ? F_MARK : 0);
	uint64_t handle = alloc_finish(h, o, idx, flags, type, nrefs, nbytes, size);
	if (!large)
		h->yroots.v[h->yroots.len++] = idx;
	if (h->state != IDLE) {
		h->debt += size;
		if (h->debt >= PACE_BYTES) {
			h->debt = 0;
			step(h, PACE_WORK);
		}
	}
	return handle;
}

/* The common case is one straight line: a small object bumped into the semi-space, a slot
 * popped off the free list, its index pushed on yroots (born rooted), no collector work. */
uint64_t heap_alloc(struct heap *h, unsigned type, size_t nrefs, size_t nbytes)
{
	if (type > HEAP_TYPE_MAX || nrefs > HEAP_REFS_MAX || nbytes > HEAP_BYTES_MAX) {
		errno = EINVAL;
		return 0;
	}
	size_t size = sizeof(struct hdr) + 8 * nrefs + align8(nbytes);
	if (size > h->cfg.large_object || nrefs > NREFS_SMALL ||
	    size > (size_t)(h->ylimit - h->ytop) || h->free_slot == 0 ||
	    h->yroots.len == h->yroots.cap || h->state != IDLE)
		return alloc_slow(h, type, nrefs, nbytes, size);
	uint32_t idx = h->free_slot - 1;
	h->free_slot = slot_at(h, idx)->loc;
	h->live_slots++;
	struct hdr *o = (struct hdr *)h->ytop;
	h->ytop += size;
	h->yroots.v[h->yroots.len++] = idx;
	return alloc_finish(h, o, idx, F_YROOT, type, nrefs, nbytes, size);
}

void *heap_deref(struct heap *h, uint64_t handle)
{
	struct slot *s = lookup(h, handle);
	return s != NULL ? payload(slot_obj(h, s)) : NULL;
}

uint64_t heap_handle_at(struct heap *h, uint32_t index)
{
	if (index == 0 || index - 1 >= h->used_slots)
		return 0;
	uint64_t handle = handle_of(h, index - 1);
	return lookup(h, handle) != NULL ? handle : 0;
}

int heap_type(struct heap *h, uint64_t handle)
{
	struct slot *s = lookup(h, handle);
	return s ? slot_obj(h, s)->type : -ESTALE;
}

int heap_shape(struct heap *h, uint64_t handle, size_t *nrefs, size_t *nbytes)
{
	struct slot *s = lookup(h, handle);
	if (s == NULL)
		return -ESTALE;
	struct hdr *o = slot_obj(h, s);
	if (nrefs != NULL)
		*nrefs = hdr_nrefs(o);
	if (nbytes != NULL)
		*nbytes = hdr_nbytes(o);
	return 0;
}

int heap_set_ref(struct heap *h, uint64_t obj, size_t slot, uint64_t target)
{
	struct slot *s = lookup(h, obj);
	struct slot *t = target ? lookup(h, target) : NULL;
	if (s == NULL || (target != 0 && t == NULL))
		return -ESTALE;
	struct hdr *o = slot_obj(h, s);
	if (slot >= hdr_nrefs(o))
		return -EINVAL;
	if (refs(o)[slot] != 0 && refs(o)[slot] != target)
		h->exhausted = false; /* what it referred to may be garbage now */
	if (t != NULL) {
		struct hdr *to = slot_obj(h, t);
		if (is_old(h, o) && is_young(h, to) && !(o->flags & F_REMEMBERED)) {
			if (vec_push(&h->rset, o->idx) < 0)
				return -ENOMEM;
			o->flags |= F_REMEMBERED;
		}
		if (h->state == MARKING && is_old(h, to))
			shade(h, to);
	}
	refs(o)[slot] = target;
	return 0;
}

int heap_get_ref(struct heap *h, uint64_t obj, size_t slot, uint64_t *target)
{
	struct slot *s = lookup(h, obj);
	if (s == NULL)
		return -ESTALE;
	struct hdr *o = slot_obj(h, s);
	if (slot >= hdr_nrefs(o))
		return -EINVAL;
	*target = refs(o)[slot];
	return 0;
}

int heap_root_inc(struct heap *h, uint64_t handle)
{
	struct slot *s = lookup(h, handle);
	if (s == NULL)
		return -ESTALE;
	if (slot_roots(s) == ROOTS_MAX)
		return -EOVERFLOW;
	struct hdr *o = slot_obj(h, s);
	if (is_young(h, o) && !(o->flags & F_YROOT)) {
		if (vec_push(&h->yroots, o->idx) < 0)
			return -ENOMEM;
		o->flags |= F_YROOT;
	}
	if (h->state == MARKING && is_old(h, o))
		shade(h, o);
	s->tag += ROOT_ONE;
	return 0;
}

int heap_root_dec(struct heap *h, uint64_t handle)
{
	struct slot *s = lookup(h, handle);
	if (s == NULL)
		return -ESTALE;
	if (slot_roots(s) == 0)
		return -EINVAL;
	s->tag -= ROOT_ONE;
	if (slot_roots(s) == 0)
		h->exhausted = false;
	return 0;
}

long heap_root_count(struct heap *h, uint64_t handle)
{
	struct slot *s = lookup(h, handle);
	return s != NULL ? (long)slot_roots(s) : -ESTALE;
}

int heap_collect(struct heap *h, enum heap_collect_kind kind)
{
	if (kind == HEAP_MINOR)
		return collect_minor(h, false);
	if (kind == HEAP_FULL)
		return collect_full(h, false);
	if (kind == HEAP_CYCLE)
		return collect_minor(h, true);
	return -EINVAL;
}

int heap_step(struct heap *h, size_t budget)
{
	return step(h, budget ? budget : 1);
}

void heap_stats(const struct heap *h, struct heap_stats *out)
{
	*out = h->st;
	out->young.used = (uint64_t)(h->ytop - h->from);
	out->old.used = old_used(h);
	out->old.fragmentation = fragmentation(h);
	out->pause_us.max = h->pause_ns_max / 1000;
	out->pause_us.total = h->pause_ns_total / 1000;
	out->objects = h->live_slots;
	size_t table = h->slot_commit * sizeof(struct slot);
	out->heap_total =
	    h->fcommit + h->tcommit + (size_t)(h->ocommit - h->obase) + h->large_bytes + table;
	out->heap_used = out->young.used + out->old.used + h->live_slots * sizeof(struct slot);
}

/* ---- verification ---- */

struct verify {
	struct heap *h;
	uint8_t *listed; /* bit per slot: in yroots (young objects) or rset (old ones) */
	char *err;
	size_t len;
	size_t objects;
};

static int fail(struct verify *v, const char *fmt, ...)
{
	if (v->err != NULL && v->len != 0) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(v->err, v->len, fmt, ap);
		va_end(ap);
	}
	return -EFAULT;
}

static int verify_object(struct verify *v, struct hdr *o, const char *space)
{
	struct heap *h = v->h;
	if (o->type > HEAP_TYPE_MAX || hdr_nrefs(o) > HEAP_REFS_MAX ||
	    hdr_nbytes(o) > HEAP_BYTES_MAX ||
	    live_size(o) != align8(hdr_nbytes(o)) + 8 * (hdr_nrefs(o) + 1) ||
	    (!(o->flags & F_LARGE) && live_size(o) > v->h->cfg.large_object) || o->age > AGE_MAX)
		return fail(v, "%s object %p: bad header", space, (void *)o);
	if (o->idx >= h->used_slots || !slot_live(slot_at(h, o->idx)) ||
	    slot_obj(h, slot_at(h, o->idx)) != o)
		return fail(v, "%s object %p: slot %u does not point back", space, (void *)o,
			    o->idx);
	v->objects++;
	if (o->flags & F_FORWARDED)
		return fail(v, "%s object %p: forwarded outside a scavenge", space, (void *)o);
	bool garbage = known_dead(h, o);
	bool young_ref = false;
	for (size_t i = 0, n = hdr_nrefs(o); i < n; i++) {
		uint64_t r = refs(o)[i];
		if (r == 0)
			continue;
		struct slot *s = lookup(h, r);
		if (s == NULL) {
			if (garbage)
				continue;
			return fail(v, "%s object slot %u: ref %u is stale (%#llx)", space, o->idx,
				    i, (unsigned long long)r);
		}
		young_ref |= is_young(h, slot_obj(h, s));
	}
	bool listed = (v->listed[o->idx / 8] >> (o->idx % 8)) & 1;
	if (is_old(h, o)) {
		if (young_ref && !garbage && !(o->flags & F_REMEMBERED))
			return fail(v, "old object slot %u points young but is not remembered",
				    o->idx);
		if ((o->flags & F_REMEMBERED) && !listed)
			return fail(v, "old object slot %u remembered but not in rset", o->idx);
		if ((o->flags & F_MARK) && h->state == IDLE)
			return fail(v, "old object slot %u marked while idle", o->idx);
	} else if (o->flags & (F_MARK | F_REMEMBERED | F_LARGE)) {
		return fail(v, "young object slot %u has old flags %#x", o->idx, o->flags);
	} else if ((o->flags & F_YROOT) && !listed) {
		return fail(v, "young object slot %u flagged root but not in yroots", o->idx);
	} else if (!(o->flags & F_YROOT) && slot_roots(slot_at(h, o->idx)) != 0) {
		return fail(v, "young object slot %u rooted but not in yroots", o->idx);
	}
	return 0;
}

static void verify_list(struct verify *v, const struct vec *list)
{
	for (size_t i = 0; i < list->len; i++)
		if (list->v[i] < v->h->used_slots)
			v->listed[list->v[i] / 8] |= (uint8_t)(1u << (list->v[i] % 8));
}

static int verify_spaces(struct verify *v)

{
	struct heap *h = v->h;
	int rc;
	for (char *p = h->from; p < h->ytop; p += obj_size((struct hdr *)p))
		if ((rc = verify_object(v, (struct hdr *)p, "young")) < 0)
			return rc;
	if (h->ytop > h->from + h->ysize || h->ytop > h->from + h->fcommit ||
	    h->ylimit != h->from + h->fcommit || h->fcommit > h->ysize || h->tcommit > h->ysize)
		return fail(v, "young top or limit beyond the (committed) semi-space");
	for (const uint64_t *w = (const uint64_t *)h->ytop; w < (const uint64_t *)h->ylimit; w++)
		if (*w != 0)
			return fail(v, "young free space not zero at offset %zu",
				    (size_t)((const char *)w - h->from));
	if ((size_t)(h->ocommit - h->obase) > h->olimit)
		return fail(v, "arena committed beyond its limit");
	size_t free_bytes = 0;
	for (char *p = h->obase; p < h->otop;) {
		struct hdr *o = (struct hdr *)p;
		size_t size = obj_size(o);
		if (size < 8 || size % 8 != 0 || p + size > h->otop)
			return fail(v, "old arena at offset %zu: bad size %zu",
				    (size_t)(p - h->obase), size);
		if (o->type == T_FREE) {
			if (h->state != SWEEPING || p < h->sweep)
				free_bytes += size;
		} else if ((rc = verify_object(v, o, "old")) < 0) {
			return rc;
		}
		p += size;
	}
	if (free_bytes != h->ofree)
		return fail(v, "free bytes %zu but accounted %zu", free_bytes, h->ofree);
	size_t large_bytes = 0;
	for (size_t i = 0; i < h->nlarge; i++) {
		struct large *l = h->ltab[i];
		struct hdr *o = large_hdr(l);
		if (!(o->flags & F_LARGE) || l->size != obj_size(o) || l->lix != i)
			return fail(v, "large object %p: bad header", (void *)o);
		if ((rc = verify_object(v, o, "large")) < 0)
			return rc;
		large_bytes += l->size;
	}
	if (large_bytes != h->large_bytes)
		return fail(v, "large bytes %zu but accounted %zu", large_bytes, h->large_bytes);
	if (v->objects != h->live_slots)
		return fail(v, "%zu objects but %zu live handles", v->objects, h->live_slots);
	size_t free_slots = 0;
	for (uint32_t f = h->free_slot; f != 0; f = slot_at(h, f - 1)->loc) {
		if (f - 1 >= h->used_slots || slot_roots(slot_at(h, f - 1)) != ROOTS_FREE ||
		    slot_gen(slot_at(h, f - 1)) == 0 || ++free_slots > h->used_slots)
			return fail(v, "handle free list broken at slot %u", f - 1);
	}
	for (size_t i = 0; i < h->used_slots; i++) {
		const struct slot *s = slot_at(h, (uint32_t)i);
		if (slot_gen(s) == 0)
			return fail(v, "slot %zu: generation 0", i);
		if (!slot_live(s))
			continue;
		if (s->loc > h->span + h->nlarge)
			return fail(v, "slot %zu: location %u beyond the heap", i, s->loc);
		const struct hdr *o = slot_obj(h, s);
		bool young = in_range(o, h->from, (size_t)(h->ytop - h->from));
		bool old = in_range(o, h->obase, (size_t)(h->otop - h->obase));
		if ((s->loc <= h->span && !young && !old) || o->idx != i)
			return fail(v, "slot %zu: location %u is not its object", i, s->loc);
	}
	if (free_slots + h->live_slots > h->used_slots)
		return fail(v, "handle table: %zu free + %zu live > %zu", free_slots, h->live_slots,
			    h->used_slots);
	return 0;
}

int heap_verify(struct heap *h, char *err, size_t len)
{
	struct verify v = {.h = h, .err = err, .len = len};
	v.listed = calloc(h->used_slots / 8 + 1, 1);
	if (v.listed == NULL)
		return fail(&v, "out of memory for the verifier");
	verify_list(&v, &h->yroots);
	verify_list(&v, &h->rset);
	int rc = verify_spaces(&v);
	free(v.listed);
	return rc;
}
