/*
 * inode.c - the inode table (see inode.h for the contract), kept in the metadata heap.
 *
 * A record is one heap object of type T_REC: reference slot 0 names the parent, the raw bytes
 * are struct rec (the inode number's low half, the lookup count's low 16 bits, a 16-bit index
 * into the table's list of distinct volumes, a volume being a st_dev value and the high half
 * of inode numbers, then name length and flags: 10 bytes) followed by the name, inline. What
 * few records need lives beside them, in a side entry found by handle index (struct side):
 * the owner's data slot (only files that were opened or written have one), the pin count,
 * and the lookup count's high bits; a record looked up by `find` carries none. A rename to a
 * name longer than the inline room does not move the record (its handle is the node id):
 * slot 0 then names a T_LINK object instead, whose slot 0 is the parent and whose raw bytes
 * are the name. So a record costs one handle-table slot (8 bytes), a header (8), the parent
 * slot (8), and struct rec with the name rounded up to 8 (16 for names up to 6 bytes), plus
 * its share of the index (5 bytes a bucket, 1.2-2.5 buckets a record): about 52 + name bytes
 * (it was 90 with the device, the data pointer and the pin count in every record, 60 with
 * the whole inode number and 32 lookup-count bits).
 *
 * A volume list pays when many records share a volume: ext4, tmpfs and btrfs hand out inode
 * numbers from the bottom up, XFS keeps a few high bits for an allocation group. A store with
 * scattered 64-bit numbers (NFS or CIFS servers reporting hashed file ids, overlayfs with
 * xino, some FUSE stores) would add a volume for nearly every file, and the list holds at
 * most 65,535. So a device lists at most INODE_VOL_PER_DEV high halves and the table at most
 * INODE_VOL_MAX volumes; a record whose volume is not listed is "wide": its vol is VOL_WIDE
 * and its device and high half (12 bytes, WIDE_BYTES) sit inline before its name, so that it
 * costs 8 or 16 heap bytes more and nothing beside it (a listed volume used by one record
 * costs 24-40 bytes: the vol, its hash buckets, the array's slack). Which form a (dev, ino)
 * takes never changes: a volume once listed stays listed, and one refused stays refused (the
 * list and every device's count only grow), so a probe knows the form from the volume list
 * alone. Everything that reads a record's identity goes through rec_ident.
 *
 * Liveness is the heap's. A record holds exactly one heap root while its lookup count or pin
 * count is above zero (root_inc/dec on the transitions), and its parent slot keeps the chain
 * to the root alive by reachability, so nothing here counts children. A record nothing holds
 * is garbage; until a collection reclaims it, a lookup of the same file may find it again
 * (and root it again) through the index. The heap refuses handles of objects a finished
 * marking found dead, so such a record can never be resurrected under the sweeper's feet.
 *
 * The index maps (dev, ino) to records: open addressing over 4-byte handle indices (the low
 * half of a handle; heap_handle_at gives back the full one), linear probing, tombstones, and
 * beside each bucket a one-byte tag, the top bits of its entry's hash: a probe reads a
 * candidate record only when its tag matches, so a lookup of a new file (the common case
 * while the kernel walks a tree) reads no record at all instead of every record on its probe
 * sequence, each a cache miss (heap_deref was a quarter of inode_link's time). It is weak: it holds
 * no root, and the heap's on_free hook, which reports every reclaimed record, removes the entry
 * (found by probing from the hash of the dying record's identity, without looking at any other
 * object) and hands the data slot to free_data. The index is rebuilt, dropping entries of dead
 * records, only when tombstones and entries fill it, and never in one go (ix_reserve): its
 * successor is committed, the entries migrated and the old mapping unmapped a bounded step
 * per insertion, so that no call holds the lock for a rehash of a million records.
 *
 * Node ids are heap handles: never 0, generation-carrying, stale once collected. The root's
 * handle is translated to FUSE_ROOT_ID (1) both ways; no handle is ever 1 (a handle's
 * generation is at least 1, so handles are above 2^32).
 *
 * Locking: one mutex around every heap call. Collections happen only inside allocation (and
 * inode_table_step/idle/collect), on the caller's thread, under that mutex; on_free therefore runs
 * under it too, which is why free_data must not call back into the table.
 */
#include "inode.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

enum { T_REC = 1, T_LINK = 2 };
enum {
	R_LINKED = 1,	/* ref 0 names a T_LINK object holding (parent, name) */
	R_UNHASHED = 2, /* its file is gone: out of the index, so a reused st_ino is a new file */
	R_SIDE = 4,	/* it has a side entry (struct side) */
};

#define TOMB	     UINT32_MAX /* a removed index entry; no handle index is ever this */
#define INDEX_MIN    1024
#define MIGRATE_STEP 64			/* old index buckets moved per insertion */
#define IX_PAGE_STEP ((size_t)64 << 10) /* index bytes committed or unmapped per insertion */
#define NAME_MAX_IN  4095		/* namelen's 12 bits; NAME_MAX is 255 */
#define SIDE_STEP    8			/* side-table buckets moved per insertion while it grows */
/* Bits of the lookup count kept in the record; the rest goes to the side entry. Tests build
 * the table with 2 (unit_inode_narrow), so that the side half is exercised at small counts. */
#ifndef INODE_LOOKUP_LOW_BITS
#define INODE_LOOKUP_LOW_BITS 16
#endif
/* The volume list's bounds, INODE_VOL_MAX and INODE_VOL_PER_DEV, are in inode.h. A listed
 * volume costs 24-40 bytes and saves 8-16 on each of its records, so a device with a thousand
 * high halves is a scattered store whose further volumes would mostly hold one record each.
 * 100,000 files named s0..s99999 (scratch count, inode_stats after a full collection): with
 * numbers from 100 up, 49.8 bytes a record; with scattered 64-bit numbers on one device, 65.9
 * with the device bound at 1024 (65.8 at 16, 66.2 at 4096), 71.1 without it (65,535 volumes
 * of one record each); on 100 such devices 71.1 (the table's bound), 66.1 at 16 a device. A
 * thousand leaves room for XFS's allocation groups (a petabyte in 1 TiB groups: 512 high
 * halves), and the waste is bounded either way: at most 65,535 volumes, 2.6 MB. VOL_WIDE,
 * the 16-bit index's last value, is no volume. */
#define VOL_WIDE   0xffff
#define WIDE_BYTES 12 /* a wide record's device (8 bytes) and high half (4), before its name */
_Static_assert(INODE_VOL_MAX >= 1 && INODE_VOL_MAX <= VOL_WIDE, "volume indices are 16 bits");
_Static_assert(INODE_VOL_PER_DEV >= 1, "the backing root's volume is always listed");
_Static_assert(WIDE_BYTES == sizeof(uint64_t) + sizeof(uint32_t), "device and high half");
#define LOOKUP_LOW_MASK (UINT64_MAX >> (64 - INODE_LOOKUP_LOW_BITS))
#define LOOKUP_MAX	(UINT64_MAX >> (32 - INODE_LOOKUP_LOW_BITS))

/* 10 bytes: what every record needs. The rest lives in the table (the device and the inode
 * number's high half: a "volume") or in a side entry that only records opened, pinned or
 * looked up 2^16 times carry. Ten, not sixteen, because the object's raw bytes are rounded up
 * to 8: a name of up to 6 bytes now fits the record in 32 bytes instead of 40, one of up to
 * 14 in 40 instead of 48 (RSS after find over 19,000 files 'f00001'..: -150 KiB). */
struct rec {
	uint32_t ino_lo;       /* the inode number's low half; the volume holds the high half */
	uint16_t nlookup;      /* the kernel's lookup count, low bits (the rest: side entry) */
	uint16_t vol;	       /* index into the table's volumes (struct devs), or VOL_WIDE */
	uint16_t namelen : 12; /* inline name bytes, no NUL; 0 while R_LINKED */
	uint16_t flags : 4;
	char name[]; /* inline room: the object's raw bytes minus REC_FIXED; a wide record's
			first WIDE_BYTES are its identity (rec_skip), its name follows */
};

#define REC_FIXED offsetof(struct rec, name)
_Static_assert(REC_FIXED == 10, "a record's fixed part is 10 bytes");
_Static_assert(INODE_LOOKUP_LOW_BITS <= 16, "the record keeps at most 16 lookup-count bits");

/* What few records carry, found by the record's handle index: the owner's data slot, the pin
 * count, and the lookup count's high half. Allocated one by one, so that a void ** from
 * inode_data stays where it is until the record dies. */
struct side {
	struct side *next;  /* bucket chain */
	struct side *fresh; /* made by inode_data in the current lock hold (inode_unlock) */
	void *data;	    /* the owner's slot */
	uint32_t idx;	    /* the record's handle index */
	uint32_t npin;
	uint32_t nlookup_hi;
};

/* Chained buckets keyed by handle index. It grows by doubling without a rehash in one go:
 * the old bucket array is drained into the new one SIDE_STEP buckets per insertion. */
struct sides {
	struct side **b, **old; /* old: being drained into b; NULL: none */
	size_t cap, oldcap;	/* powers of two (cap 0: nothing yet) */
	size_t drain;		/* next bucket of old to move */
	size_t n;		/* entries */
};

/* A volume: a device and the high half of inode numbers on it. */
struct vol {
	uint64_t dev;
	uint64_t hi; /* ino >> 32 */
};

/* A device's count of listed volumes, for INODE_VOL_PER_DEV. */
struct devn {
	uint64_t dev;
	uint32_t nvol; /* 0: an empty bucket */
};

/* The distinct volumes listed, in order of appearance: a record holds a 16-bit index (nearly
 * every record has the backing root's device, and file systems hand out inode numbers from
 * the bottom up or keep a few high bits for an allocation group or a shard: a handful of
 * high halves per device). Never shrinks; at most INODE_VOL_MAX, INODE_VOL_PER_DEV a device.
 * Beside it, the listed devices' counts: open addressing keyed by device, consulted only
 * when a volume is new. */
struct devs {
	struct vol *v;
	uint32_t *hash; /* open addressing: 0 empty, else index + 1 */
	size_t n, cap, hcap;
	struct devn *per; /* per device: pcap buckets, nper of them used */
	size_t nper, pcap;
};

struct index {
	uint32_t *v;  /* 0: empty, TOMB: removed, else a handle index */
	uint8_t *tag; /* per bucket: the top 8 bits of its entry's hash (ix_tag) */
	size_t cap;   /* a power of two */
	size_t used, tomb;
	size_t ready; /* bytes of the mapping (v, then tag) committed so far */
};

struct inode_table {
	pthread_mutex_t lock;
	struct heap *heap;
	uint64_t root; /* the root record's handle, known to the kernel as INODE_ROOT */
	struct index ix;
	struct index old;  /* being migrated into ix; v NULL: none */
	size_t migrate;	   /* next bucket of old to migrate */
	struct index next; /* ix's successor, committed a step per insertion; v NULL: none */
	struct sides sides;
	struct side *fresh; /* side entries made by inode_data under the current lock hold */
	struct devs devs;
	char *dead;	 /* a retired index mapping, unmapped a step per insertion ... */
	size_t dead_len; /* ... from its end; 0: none */
	void (*free_data)(void *data);
	struct inode_config cfg;
	bool closing;	   /* inode_table_free: on_free only finalizes */
	uint64_t errors;   /* root count updates that failed where no caller could be told */
	uint64_t unrooted; /* records that lost their last root since the last idle cycle began */
	struct inode_stats st;
};

/* ---- ids and records ---- */

static uint64_t handle_of_id(const struct inode_table *t, uint64_t id)
{
	return id == INODE_ROOT ? t->root : id;
}

static uint64_t id_of_handle(const struct inode_table *t, uint64_t handle)
{
	return handle == t->root ? INODE_ROOT : handle;
}

/* The record of a live handle, or NULL. Valid until the next heap allocation. */
static struct rec *rec_get(struct inode_table *t, uint64_t handle)
{
	struct rec *r = heap_deref(t->heap, handle);
	return r != NULL && heap_type(t->heap, handle) == T_REC ? r : NULL;
}

/* ---- side entries ---- */

static size_t side_bucket(uint32_t idx, size_t cap)
{
	return (size_t)(((uint64_t)idx * 0x9e3779b97f4a7c15ull) >> 32) & (cap - 1);
}

static struct side *side_find(const struct sides *ss, uint32_t idx)
{
	for (int k = 0; k < 2; k++) {
		struct side **b = k == 0 ? ss->b : ss->old;
		size_t cap = k == 0 ? ss->cap : ss->oldcap;
		for (struct side *s = b != NULL ? b[side_bucket(idx, cap)] : NULL; s; s = s->next)
			if (s->idx == idx)
				return s;
	}
	return NULL;
}

/* Moves up to n buckets of the old array into the current one; frees it once drained. */
static void side_drain(struct sides *ss, size_t n)
{
	for (; ss->old != NULL && n > 0 && ss->drain < ss->oldcap; n--, ss->drain++) {
		struct side *s = ss->old[ss->drain], *next;
		for (; s != NULL; s = next) {
			next = s->next;
			size_t i = side_bucket(s->idx, ss->cap);
			s->next = ss->b[i];
			ss->b[i] = s;
		}
		ss->old[ss->drain] = NULL;
	}
	if (ss->old != NULL && ss->drain >= ss->oldcap) {
		free(ss->old);
		ss->old = NULL;
		ss->oldcap = 0;
	}
}

/* Adds s (s->idx set). A bucket array of twice the size replaces a full one (one side entry a
 * bucket); the old is drained step by step, so no insertion rehashes them all. 0 or -ENOMEM. */
static int side_insert(struct sides *ss, struct side *s)
{
	side_drain(ss, SIDE_STEP);
	if (ss->n + 1 > ss->cap) {
		side_drain(ss, SIZE_MAX); /* not expected: cap insertions passed since the last */
		size_t cap = ss->cap != 0 ? ss->cap * 2 : 64;
		struct side **b = calloc(cap, sizeof(*b));
		if (b == NULL)
			return -ENOMEM;
		ss->old = ss->b;
		ss->oldcap = ss->cap;
		ss->drain = 0;
		ss->b = b;
		ss->cap = cap;
	}
	size_t i = side_bucket(s->idx, ss->cap);
	s->next = ss->b[i];
	ss->b[i] = s;
	ss->n++;
	return 0;
}

static void side_remove(struct sides *ss, struct side *s)
{
	for (int k = 0; k < 2; k++) {
		struct side **b = k == 0 ? ss->b : ss->old;
		size_t cap = k == 0 ? ss->cap : ss->oldcap;
		for (struct side **p = b != NULL ? &b[side_bucket(s->idx, cap)] : NULL; p && *p;
		     p = &(*p)->next) {
			if (*p == s) {
				*p = s->next;
				ss->n--;
				return;
			}
		}
	}
}

static void side_release(struct sides *ss)
{
	side_drain(ss, SIZE_MAX);
	free(ss->b);
	memset(ss, 0, sizeof(*ss));
}

/* The side entry of record r (handle), or NULL. */
static struct side *side_of(const struct inode_table *t, uint64_t handle, const struct rec *r)
{
	return r->flags & R_SIDE ? side_find(&t->sides, (uint32_t)handle) : NULL;
}

/* Gives record r (handle) an empty side entry: the entry, or NULL (out of memory). */
static struct side *side_add(struct inode_table *t, uint64_t handle, struct rec *r)
{
	struct side *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return NULL;
	s->idx = (uint32_t)handle;
	if (side_insert(&t->sides, s) != 0) {
		free(s);
		return NULL;
	}
	r->flags |= R_SIDE;
	return s;
}

/* Drops r's side entry s once it holds nothing. */
static void side_trim(struct inode_table *t, struct rec *r, struct side *s)
{
	if (s == NULL || s->data != NULL || s->npin != 0 || s->nlookup_hi != 0)
		return;
	side_remove(&t->sides, s);
	free(s);
	r->flags &= ~R_SIDE;
}

/* ---- the device table ---- */

static size_t dev_hash(struct vol v, size_t hcap)
{
	return (size_t)(((v.dev ^ (v.hi << 17)) * 0x9e3779b97f4a7c15ull) >> 32) & (hcap - 1);
}

static bool vol_eq(struct vol a, struct vol b)
{
	return a.dev == b.dev && a.hi == b.hi;
}

/* The index of the volume of (dev, ino), or -ENOENT. */
static int dev_find(const struct devs *d, uint64_t dev, uint64_t ino)
{
	struct vol v = {dev, ino >> 32};
	if (d->n != 0 && vol_eq(d->v[0], v)) /* the backing root's: nearly every record's */
		return 0;
	for (size_t i = d->hcap ? dev_hash(v, d->hcap) : 0; d->hcap && d->hash[i] != 0;
	     i = (i + 1) & (d->hcap - 1))
		if (vol_eq(d->v[d->hash[i] - 1], v))
			return (int)d->hash[i] - 1;
	return -ENOENT;
}

/* The count bucket of dev in per (pcap buckets, a power of two): its own or the empty one
 * where it would go. */
static struct devn *dev_count(struct devn *per, size_t pcap, uint64_t dev)
{
	size_t i = (size_t)((dev * 0x9e3779b97f4a7c15ull) >> 32) & (pcap - 1);
	while (per[i].nvol != 0 && per[i].dev != dev)
		i = (i + 1) & (pcap - 1);
	return &per[i];
}

/* Room for one more device count: the buckets at most half full (rebuilt in one go: devices
 * are few). 0 or -ENOMEM. */
static int dev_count_reserve(struct devs *d)
{
	if ((d->nper + 1) * 2 <= d->pcap)
		return 0;
	size_t pcap = d->pcap ? d->pcap * 2 : 4;
	struct devn *per = calloc(pcap, sizeof(*per));
	if (per == NULL)
		return -ENOMEM;
	for (size_t k = 0; k < d->pcap; k++)
		if (d->per[k].nvol != 0)
			*dev_count(per, pcap, d->per[k].dev) = d->per[k];
	free(d->per);
	d->per = per;
	d->pcap = pcap;
	return 0;
}

/* The index of the volume of (dev, ino), listed when new: the index, VOL_WIDE when it may not
 * be listed (INODE_VOL_MAX volumes, or INODE_VOL_PER_DEV of its device's, are: a condition
 * that never goes away, so a refused volume stays refused), or -ENOMEM (nothing changed). The
 * hash is rebuilt in one go as it doubles: a few hundred volumes is already rare. */
static int dev_index(struct devs *d, uint64_t dev, uint64_t ino)
{
	int i = dev_find(d, dev, ino);
	if (i >= 0)
		return i;
	struct vol vol = {dev, ino >> 32};
	if (d->n >= INODE_VOL_MAX ||
	    (d->pcap != 0 && dev_count(d->per, d->pcap, dev)->nvol >= INODE_VOL_PER_DEV))
		return VOL_WIDE;
	if (d->n == d->cap) {
		size_t cap = d->cap ? d->cap * 2 : 4;
		struct vol *v = realloc(d->v, cap * sizeof(*v));
		if (v == NULL)
			return -ENOMEM;
		d->v = v;
		d->cap = cap;
	}
	if ((d->n + 1) * 2 > d->hcap) {
		size_t hcap = d->hcap ? d->hcap * 2 : 8;
		uint32_t *h = calloc(hcap, sizeof(*h));
		if (h == NULL)
			return -ENOMEM;
		free(d->hash);
		d->hash = h;
		d->hcap = hcap;
		for (size_t k = 0; k < d->n; k++) {
			size_t j = dev_hash(d->v[k], hcap);
			while (h[j] != 0)
				j = (j + 1) & (hcap - 1);
			h[j] = (uint32_t)k + 1;
		}
	}
	if (dev_count_reserve(d) != 0)
		return -ENOMEM;
	struct devn *c = dev_count(d->per, d->pcap, dev);
	d->nper += c->nvol == 0;
	c->dev = dev;
	c->nvol++;
	size_t j = dev_hash(vol, d->hcap);
	while (d->hash[j] != 0)
		j = (j + 1) & (d->hcap - 1);
	d->v[d->n] = vol;
	d->hash[j] = (uint32_t)++d->n;
	return (int)d->n - 1;
}

static void dev_release(struct devs *d)
{
	free(d->v);
	free(d->hash);
	free(d->per);
	memset(d, 0, sizeof(*d));
}

/* ---- identity ---- */

struct ident {
	uint64_t dev, ino;
};

/* Bytes before a record's inline name: a wide record's identity. */
static size_t rec_skip(const struct rec *r)
{
	return r->vol == VOL_WIDE ? WIDE_BYTES : 0;
}

/* The backing file a record stands for, whichever its form: the one reader of a record's
 * identity (probes of wide records, unhashing, migration, inode_ident, verification). */
static struct ident rec_ident(const struct inode_table *t, const struct rec *r)
{
	if (r->vol != VOL_WIDE) {
		const struct vol *v = &t->devs.v[r->vol];
		return (struct ident){v->dev, v->hi << 32 | r->ino_lo};
	}
	uint64_t dev;
	uint32_t hi;
	memcpy(&dev, r->name, sizeof(dev)); /* unaligned: after 10 fixed bytes */
	memcpy(&hi, r->name + sizeof(dev), sizeof(hi));
	return (struct ident){dev, (uint64_t)hi << 32 | r->ino_lo};
}

/* Gives a new record (its vol set) the identity (dev, ino). */
static void rec_set_ident(struct rec *r, uint64_t dev, uint64_t ino)
{
	r->ino_lo = (uint32_t)ino;
	if (r->vol == VOL_WIDE) {
		uint32_t hi = (uint32_t)(ino >> 32);
		memcpy(r->name, &dev, sizeof(dev));
		memcpy(r->name + sizeof(dev), &hi, sizeof(hi));
	}
}

/* ---- counts ---- */

static uint64_t rec_nlookup(const struct inode_table *t, uint64_t handle, const struct rec *r)
{
	const struct side *s = side_of(t, handle, r);
	return r->nlookup | (s != NULL ? (uint64_t)s->nlookup_hi << INODE_LOOKUP_LOW_BITS : 0);
}

static bool rooted(const struct inode_table *t, uint64_t handle, const struct rec *r)
{
	const struct side *s = r->nlookup != 0 ? NULL : side_of(t, handle, r);
	return r->nlookup != 0 || (s != NULL && (s->npin != 0 || s->nlookup_hi != 0));
}

/* Sets the lookup count (at most LOOKUP_MAX); a count above the record's bits needs a side
 * entry. 0 or -ENOMEM (unchanged). */
static int rec_set_nlookup(struct inode_table *t, uint64_t handle, struct rec *r, uint64_t n)
{
	struct side *s = side_of(t, handle, r);
	if (s == NULL && n > LOOKUP_LOW_MASK && (s = side_add(t, handle, r)) == NULL)
		return -ENOMEM;
	r->nlookup = (uint16_t)(n & LOOKUP_LOW_MASK);
	if (s != NULL) {
		s->nlookup_hi = (uint32_t)(n >> INODE_LOOKUP_LOW_BITS);
		side_trim(t, r, s);
	}
	return 0;
}

/* Keeps the record's single heap root in step with rooted(): call with rooted() before and
 * after a count change. The root record holds its birth root forever. */
static int root_follow(struct inode_table *t, uint64_t handle, bool was, bool now)
{
	if (was == now || handle == t->root)
		return 0;
	if (now)
		return heap_root_inc(t->heap, handle);
	t->unrooted++;
	return heap_root_dec(t->heap, handle);
}

/* The parent handle and name of a non-root record. */
static int rec_name(struct inode_table *t, uint64_t handle, uint64_t *parent, const char **name,
		    size_t *len)
{
	const struct rec *r = rec_get(t, handle);
	uint64_t ref;
	int rc = r != NULL ? heap_get_ref(t->heap, handle, 0, &ref) : -ESTALE;
	if (rc != 0)
		return rc;
	if (!(r->flags & R_LINKED)) {
		*parent = ref;
		*name = r->name + rec_skip(r);
		*len = r->namelen;
		return 0;
	}
	*name = heap_deref(t->heap, ref);
	if (*name == NULL || (rc = heap_shape(t->heap, ref, NULL, len)) != 0 ||
	    (rc = heap_get_ref(t->heap, ref, 0, parent)) != 0)
		return rc != 0 ? rc : -ESTALE;
	return 0;
}

/* ---- the weak (dev, ino) index ---- */

/* Whether record r is (dev, ino), whose volume index is dix (VOL_WIDE: not listed). A listed
 * volume's index stands for the device and the high half; only a wide record's identity is
 * read whole. */
static bool rec_is(const struct inode_table *t, const struct rec *r, uint16_t dix, uint64_t dev,
		   uint64_t ino)
{
	if (r->ino_lo != (uint32_t)ino || r->vol != dix)
		return false;
	struct ident id = dix == VOL_WIDE ? rec_ident(t, r) : (struct ident){dev, ino};
	return id.dev == dev && id.ino == ino;
}

static size_t ix_hash(uint64_t dev, uint64_t ino)
{
	uint64_t h = (ino ^ (dev << 29) ^ (dev >> 7)) * 0x9e3779b97f4a7c15ull;
	return (size_t)(h ^ (h >> 29));
}

static uint8_t ix_tag(size_t hash)
{
	return (uint8_t)(hash >> (8 * sizeof(size_t) - 8));
}

/* The live record of (dev, ino), of volume index dix (VOL_WIDE: not listed), in one table, or
 * 0. Only entries whose tag matches are looked at (1 in 256 of the others), so a probe touches
 * the index, not every record on its way. */
static uint64_t ix_probe(struct inode_table *t, const struct index *ix, uint64_t dev, uint64_t ino,
			 uint16_t dix)
{
	size_t mask = ix->cap - 1, hash = ix_hash(dev, ino);
	uint8_t tag = ix_tag(hash);
	for (size_t i = hash & mask;; i = (i + 1) & mask) {
		uint32_t e = ix->v[i];
		if (e == 0)
			return 0;
		uint64_t handle = e != TOMB && ix->tag[i] == tag ? heap_handle_at(t->heap, e) : 0;
		const struct rec *r = handle ? rec_get(t, handle) : NULL;
		if (r != NULL && rec_is(t, r, dix, dev, ino))
			return handle;
	}
}

static uint64_t ix_find(struct inode_table *t, uint64_t dev, uint64_t ino)
{
	int dix = dev_find(&t->devs, dev, ino);
	if (dix < 0) /* not listed: only a wide record can have it */
		dix = VOL_WIDE;
	uint64_t handle = ix_probe(t, &t->ix, dev, ino, (uint16_t)dix);
	if (handle == 0 && t->old.v != NULL)
		handle = ix_probe(t, &t->old, dev, ino, (uint16_t)dix);
	return handle;
}

static void ix_place(struct index *ix, uint32_t e, uint64_t dev, uint64_t ino)
{
	size_t mask = ix->cap - 1, hash = ix_hash(dev, ino), i = hash & mask;
	while (ix->v[i] != 0 && ix->v[i] != TOMB)
		i = (i + 1) & mask;
	if (ix->v[i] == TOMB)
		ix->tomb--;
	ix->v[i] = e;
	ix->tag[i] = ix_tag(hash);
	ix->used++;
}

/* Bytes of the mapping of an index of cap buckets: the entries, then the tags. */
static size_t ix_map_len(size_t cap)
{
	return cap * (sizeof(uint32_t) + 1);
}

/* An empty index of cap buckets (a power of two), reserved but not committed (ix_commit):
 * 0 or -ENOMEM. Fresh anonymous pages read as zero, which is "empty" for every bucket. */
static int ix_alloc(struct index *ix, size_t cap)
{
	void *p = mmap(NULL, ix_map_len(cap), PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return -ENOMEM;
	*ix = (struct index){.v = p, .tag = (uint8_t *)p + cap * sizeof(uint32_t), .cap = cap};
	return 0;
}

/* Commits up to n more bytes of the index's mapping; returns true once all of it is. A
 * kernel without MADV_POPULATE_WRITE leaves the pages to fault in on first use. */
static bool ix_commit(struct index *ix, size_t n)
{
	size_t len = ix_map_len(ix->cap), k = len - ix->ready < n ? len - ix->ready : n;
	if (k != 0 && heap_commit((char *)ix->v + ix->ready, k) < 0)
		k = len - ix->ready;
	ix->ready += k;
	return ix->ready == len;
}

static void ix_release(struct index *ix)
{
	if (ix->v != NULL)
		munmap(ix->v, ix_map_len(ix->cap));
	memset(ix, 0, sizeof(*ix));
}

/* Unmaps up to n bytes of the retired mapping, from its end (munmap of 20 MB of committed
 * index takes 1-1.5 ms here: it is spread over insertions like the commit). */
static void ix_unmap_step(struct inode_table *t, size_t n)
{
	if (t->dead_len == 0)
		return;
	size_t page = (size_t)getpagesize(), keep = t->dead_len > n ? t->dead_len - n : 0;
	keep = (keep + page - 1) & ~(page - 1);
	if (keep == 0 || keep < t->dead_len)
		munmap(t->dead + keep, t->dead_len - keep);
	t->dead_len = keep;
}

/* Hands an index's mapping to the incremental unmapper (finishing any earlier one first). */
static void ix_retire(struct inode_table *t, struct index *ix)
{
	ix_unmap_step(t, SIZE_MAX);
	t->dead = (char *)ix->v;
	t->dead_len = ix->v != NULL ? ix_map_len(ix->cap) : 0;
	memset(ix, 0, sizeof(*ix));
}

/* Moves up to n buckets of the old table into the current one, dropping entries of dead
 * records; frees the old table once it is empty. */
static void ix_migrate(struct inode_table *t, size_t n)
{
	struct index *old = &t->old;
	for (; n > 0 && t->migrate < old->cap; n--, t->migrate++) {
		uint32_t e = old->v[t->migrate];
		if (e == 0 || e == TOMB)
			continue;
		uint64_t handle = heap_handle_at(t->heap, e);
		const struct rec *r = handle ? rec_get(t, handle) : NULL;
		if (r != NULL) {
			struct ident id = rec_ident(t, r);
			ix_place(&t->ix, e, id.dev, id.ino);
		}
		old->v[t->migrate] = TOMB;
		old->used--;
		old->tomb++;
	}
	if (t->migrate >= old->cap)
		ix_retire(t, old);
}

/* Buckets for `live` entries plus `more` to come, at most half full. */
static size_t ix_cap_for(size_t live, size_t more)
{
	size_t cap = INDEX_MIN;
	while (cap < (live + more + 1) * 2)
		cap *= 2;
	return cap;
}

/* Fill (entries plus tombstones) of an index of cap buckets at which its successor is mapped,
 * and at which the successor takes over. An insertion walks a cluster reading only buckets and
 * tags; with ix_hash, mean buckets per insertion over a 1M-bucket table filled from half to
 * 5/8, 3/4, 13/16, 7/8: 3.2, 5.8, 11.1, 20.8 (scratch count). Switching at 13/16, a table
 * runs between 13/32 and 13/16 full: 4.8 buckets an insertion on average over a cycle (3.5
 * at 3/4, 7.3 at 7/8), 6.2 to 12.3 index bytes a record. The successor is mapped at 3/4, so
 * that twice the index's memory is held only in the last sixteenth of a cycle. */
static size_t ix_start(size_t cap)
{
	return cap / 4 * 3;
}

static size_t ix_limit(size_t cap)
{
	return cap / 16 * 13;
}

/* Makes room for one more entry, never doing more than a bounded step of work:
 *  - once entries and tombstones pass ix_start, ix's successor is mapped (sized for the live
 *    entries plus those still to come before the switch) and committed in IX_PAGE_STEP
 *    chunks, paced so that its last chunk is committed as the fill reaches ix_limit: fresh
 *    pages cost a 20-40 us fault each on first touch, and a 4M-bucket table is 5,000 pages,
 *    so neither a calloc'd table (faults during migration) nor committing it at the switch
 *    (5-8 ms) keeps a call under a millisecond, while committing it early holds twice the
 *    index's memory for longer than needed (2/3 of the index bytes at 19,000 files);
 *  - when they would pass ix_limit, the successor takes over and the old table is migrated
 *    into it MIGRATE_STEP buckets per insertion (each needs a look at the record for its
 *    hash), far fewer insertions than the next switch is away;
 *  - the migrated table's mapping is unmapped IX_PAGE_STEP bytes per insertion. */
static int ix_reserve(struct inode_table *t)
{
	ix_unmap_step(t, IX_PAGE_STEP);
	if (t->old.v != NULL)
		ix_migrate(t, MIGRATE_STEP);
	struct index *ix = &t->ix;
	size_t fill = ix->used + ix->tomb + 1, live = ix->used + t->old.used;
	size_t start = ix_start(ix->cap), limit = ix_limit(ix->cap);
	if (t->next.v == NULL && fill > start && fill <= limit)
		ix_alloc(&t->next, ix_cap_for(live, limit - fill)); /* -ENOMEM: retried */
	if (t->next.v != NULL && fill > start && fill <= limit) {
		size_t len = ix_map_len(t->next.cap);
		size_t due =
		    (size_t)((double)len * (double)(fill - start) / (double)(limit - start));
		if (due > t->next.ready)
			ix_commit(&t->next, IX_PAGE_STEP);
	}
	if (fill <= limit)
		return 0;
	if (t->next.v != NULL && t->next.cap < ix_cap_for(live, 0))
		ix_retire(t, &t->next); /* not expected: sized for this many at the start */
	if (t->next.v == NULL && ix_alloc(&t->next, ix_cap_for(live, 0)) < 0)
		return -ENOMEM;
	ix_commit(&t->next, SIZE_MAX); /* normally done by now */
	if (t->old.v != NULL)	       /* not expected: the margin lets a migration finish */
		ix_migrate(t, SIZE_MAX);
	t->old = *ix;
	*ix = t->next;
	memset(&t->next, 0, sizeof(t->next));
	t->migrate = 0;
	ix_migrate(t, MIGRATE_STEP);
	return 0;
}

/* Removes the entry of a dying record; absent when a migration dropped it already. */
static bool ix_remove(struct index *ix, uint32_t e, uint64_t dev, uint64_t ino)
{
	size_t mask = ix->cap - 1;
	for (size_t i = ix_hash(dev, ino) & mask; ix->v[i] != 0; i = (i + 1) & mask) {
		if (ix->v[i] == e) {
			ix->v[i] = TOMB;
			ix->used--;
			ix->tomb++;
			return true;
		}
	}
	return false;
}

/* ---- heap hooks ---- */

static void on_free(void *arg, uint64_t handle, unsigned type, void *payload)
{
	struct inode_table *t = arg;
	if (type != T_REC)
		return;
	struct rec *r = payload;
	if (!t->closing) {
		struct ident id = rec_ident(t, r);
		if (!ix_remove(&t->ix, (uint32_t)handle, id.dev, id.ino) && t->old.v != NULL)
			ix_remove(&t->old, (uint32_t)handle, id.dev, id.ino);
		t->st.forgotten++;
	}
	struct side *s = side_of(t, handle, r);
	if (s != NULL) {
		if (s->data != NULL && t->free_data != NULL)
			t->free_data(s->data);
		side_remove(&t->sides, s);
		free(s);
	}
	t->st.inodes--;
}

static void trace_stderr(void *arg, const char *line)
{
	(void)arg;
	fprintf(stderr, "throttlefs: %s\n", line);
}

static void on_trace(void *arg, const char *line)
{
	struct inode_table *t = arg;
	t->cfg.trace(t->cfg.trace_arg, line);
}

static uint64_t on_clock(void *arg)
{
	struct inode_table *t = arg;
	return t->cfg.clock_ns(t->cfg.trace_arg);
}

/* ---- table ---- */

int inode_table_new(uint64_t root_dev, uint64_t root_ino, void (*free_data)(void *data),
		    const struct inode_config *config, struct inode_table **out)
{
	struct inode_table *t = calloc(1, sizeof(*t));
	if (t == NULL)
		return -ENOMEM;
	if (config != NULL)
		t->cfg = *config;
	if (t->cfg.trace == NULL)
		t->cfg.trace = trace_stderr;
	t->free_data = free_data;
	struct heap_config hc = {
	    .semi_space = t->cfg.semi_space,
	    .old_space = t->cfg.old_space,
	    .clock_ns = t->cfg.clock_ns ? on_clock : NULL,
	    .trace = t->cfg.trace_gc ? on_trace : NULL,
	    .on_free = on_free,
	    .arg = t,
	};
	/* tiny semi-spaces (tests) need a smaller large-object bound */
	if (hc.semi_space != 0 && hc.semi_space / 4 < HEAP_DEFAULT_LARGE_OBJECT)
		hc.large_object = hc.semi_space / 4;
	int err = pthread_mutex_init(&t->lock, NULL);
	if (err != 0) {
		free(t);
		return -err;
	}
	err = heap_new(&hc, &t->heap);
	if (err == 0 && (err = ix_alloc(&t->ix, INDEX_MIN)) == 0)
		ix_commit(&t->ix, SIZE_MAX);
	if (err == 0 && (err = dev_index(&t->devs, root_dev, root_ino)) > 0)
		err = 0; /* index 0: the list is empty, so the root is never wide */
	if (err == 0) {
		t->root = heap_alloc(t->heap, T_REC, 1, REC_FIXED);
		if (t->root == 0)
			err = -ENOMEM;
	}
	if (err != 0) {
		heap_free(t->heap);
		ix_release(&t->ix);
		dev_release(&t->devs);
		pthread_mutex_destroy(&t->lock);
		free(t);
		return err;
	}
	/* The root keeps its birth root for ever; its parent slot stays 0. */
	struct rec *r = rec_get(t, t->root);
	r->vol = 0;
	rec_set_ident(r, root_dev, root_ino);
	ix_place(&t->ix, (uint32_t)t->root, root_dev, root_ino);
	t->st.inodes = t->st.peak = 1;
	*out = t;
	return 0;
}

void inode_table_free(struct inode_table *t)
{
	if (t == NULL)
		return;
	t->closing = true;
	heap_free(t->heap); /* finalizes every record: free_data for each data slot */
	ix_release(&t->ix);
	ix_release(&t->old);
	ix_release(&t->next);
	ix_unmap_step(t, SIZE_MAX);
	side_release(&t->sides);
	dev_release(&t->devs);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

/* Runs heap_root_dec on handle, counting a failure nobody can be told about. */
static void root_release(struct inode_table *t, uint64_t handle)
{
	if (heap_root_dec(t->heap, handle) != 0)
		t->errors++;
}

/* Points record `handle` at (parent, name). Both must be live; either may be unrooted (they
 * are rooted across the allocation a long name needs). */
static int rec_rename(struct inode_table *t, uint64_t handle, uint64_t parent, const char *name)
{
	size_t len = strlen(name), nbytes, oldlen;
	uint64_t oldparent;
	const char *oldname;
	int rc = rec_name(t, handle, &oldparent, &oldname, &oldlen);
	if (rc != 0)
		return rc;
	if (oldparent == parent && oldlen == len && memcmp(oldname, name, len) == 0)
		return 0;
	if (len > NAME_MAX_IN)
		return -ENAMETOOLONG;
	if ((rc = heap_shape(t->heap, handle, NULL, &nbytes)) != 0)
		return rc;
	if (len <= nbytes - REC_FIXED - rec_skip(rec_get(t, handle))) {
		if ((rc = heap_set_ref(t->heap, handle, 0, parent)) != 0)
			return rc;
		struct rec *r = rec_get(t, handle);
		memcpy(r->name + rec_skip(r), name, len);
		r->namelen = (uint16_t)len;
		r->flags &= (uint16_t)~R_LINKED;
		return 0;
	}
	if ((rc = heap_root_inc(t->heap, handle)) != 0)
		return rc;
	if ((rc = heap_root_inc(t->heap, parent)) != 0) {
		root_release(t, handle);
		return rc;
	}
	uint64_t link = heap_alloc(t->heap, T_LINK, 1, len);
	rc = link != 0 ? 0 : -ENOMEM;
	if (rc == 0) {
		memcpy(heap_deref(t->heap, link), name, len);
		rc = heap_set_ref(t->heap, link, 0, parent);
		if (rc == 0)
			rc = heap_set_ref(t->heap, handle, 0, link);
		if (rc == 0) {
			struct rec *r = rec_get(t, handle);
			r->namelen = 0;
			r->flags |= R_LINKED;
		}
		root_release(t, link);
	}
	root_release(t, parent);
	root_release(t, handle);
	return rc;
}

/* A new record for (dev, ino) under (parent, name), with one lookup. */
static int rec_new(struct inode_table *t, uint64_t parent, const char *name, uint64_t dev,
		   uint64_t ino, uint64_t *out)
{
	size_t len = strlen(name);
	if (len > NAME_MAX_IN)
		return -ENAMETOOLONG;
	int dix = dev_index(&t->devs, dev, ino);
	if (dix < 0)
		return dix;
	int rc = ix_reserve(t);
	if (rc != 0)
		return rc;
	/* born rooted: the root is the lookup about to be counted */
	size_t skip = dix == VOL_WIDE ? WIDE_BYTES : 0;
	uint64_t handle = heap_alloc(t->heap, T_REC, 1, REC_FIXED + skip + len);
	if (handle == 0)
		return -ENOMEM;
	struct rec *r = rec_get(t, handle);
	r->vol = (uint16_t)dix;
	rec_set_ident(r, dev, ino);
	r->nlookup = 1;
	r->namelen = (uint16_t)len;
	memcpy(r->name + skip, name, len);
	if (++t->st.inodes > t->st.peak)
		t->st.peak = t->st.inodes;
	/* The allocation may have collected an unrooted parent: set_ref then says -ESTALE and
	 * the new record is left to the collector. */
	if ((rc = heap_set_ref(t->heap, handle, 0, parent)) != 0) {
		r->nlookup = 0;
		root_release(t, handle);
		return rc;
	}
	ix_place(&t->ix, (uint32_t)handle, dev, ino);
	*out = handle;
	return 0;
}

/* One more lookup of the existing record `handle`, now seen as (parent, name); on failure
 * it is left as it was. */
static int rec_lookup_again(struct inode_table *t, uint64_t handle, uint64_t parent,
			    const char *name)
{
	struct rec *r = rec_get(t, handle);
	bool was = rooted(t, handle, r);
	uint64_t n = rec_nlookup(t, handle, r);
	if (n == LOOKUP_MAX)
		return -EOVERFLOW;
	int err = rec_set_nlookup(t, handle, r, n + 1);
	if (err != 0)
		return err;
	err = root_follow(t, handle, was, true);
	if (err == 0 && handle != t->root && (err = rec_rename(t, handle, parent, name)) != 0 &&
	    root_follow(t, handle, true, was) != 0)
		t->errors++;
	/* back to n: a smaller count allocates nothing, and the record is still live */
	if (err != 0 && rec_set_nlookup(t, handle, rec_get(t, handle), n) != 0)
		t->errors++;
	return err;
}

int inode_link(struct inode_table *t, uint64_t parent, const char *name, uint64_t dev, uint64_t ino,
	       uint64_t *id, uint64_t *gen)
{
	int err = 0;
	pthread_mutex_lock(&t->lock);
	uint64_t p = handle_of_id(t, parent);
	if (rec_get(t, p) == NULL) {
		err = -ESTALE;
		goto out;
	}
	uint64_t handle = ix_find(t, dev, ino);
	if (handle == 0) {
		err = rec_new(t, p, name, dev, ino, &handle);
	} else {
		err = rec_lookup_again(t, handle, p, name);
	}
	if (err == 0) {
		t->st.lookups++;
		*id = id_of_handle(t, handle);
		*gen = handle == t->root ? 0 : handle >> 32;
	}
out:
	pthread_mutex_unlock(&t->lock);
	return err;
}

/* Whether enough records lost their last root since the last idle cycle began for another
 * (inode_table_idle): idle_min (INODE_IDLE_MIN) of them, and an eighth of the live records. */
static bool idle_wanted(const struct inode_table *t)
{
	return t->unrooted >= (t->cfg.idle_min ? t->cfg.idle_min : INODE_IDLE_MIN) &&
	       t->unrooted >= t->st.inodes / 8;
}

bool inode_forget(struct inode_table *t, uint64_t id, uint64_t nlookup)
{
	pthread_mutex_lock(&t->lock);
	uint64_t handle = handle_of_id(t, id);
	struct rec *r = rec_get(t, handle);
	if (r != NULL) {
		bool was = rooted(t, handle, r);
		uint64_t n = rec_nlookup(t, handle, r);
		/* a smaller count needs no new side entry: this cannot fail */
		if (rec_set_nlookup(t, handle, r, nlookup >= n ? 0 : n - nlookup) != 0 ||
		    root_follow(t, handle, was, rooted(t, handle, r)) != 0)
			t->errors++;
	}
	bool wanted = idle_wanted(t);
	pthread_mutex_unlock(&t->lock);
	return wanted;
}

int inode_pin(struct inode_table *t, uint64_t id)
{
	int err = -ESTALE;
	pthread_mutex_lock(&t->lock);
	uint64_t handle = handle_of_id(t, id);
	struct rec *r = rec_get(t, handle);
	struct side *s = r != NULL ? side_of(t, handle, r) : NULL;
	bool was = r != NULL && rooted(t, handle, r);
	if (r != NULL && s == NULL && (s = side_add(t, handle, r)) == NULL) {
		err = -ENOMEM;
	} else if (s != NULL && s->npin == UINT32_MAX) {
		err = -EOVERFLOW;
	} else if (s != NULL) {
		s->npin++;
		if ((err = root_follow(t, handle, was, true)) != 0) {
			s->npin--;
			side_trim(t, r, s);
		}
	}
	pthread_mutex_unlock(&t->lock);
	return err;
}

void inode_unpin(struct inode_table *t, uint64_t id)
{
	pthread_mutex_lock(&t->lock);
	uint64_t handle = handle_of_id(t, id);
	struct rec *r = rec_get(t, handle);
	struct side *s = r != NULL ? side_of(t, handle, r) : NULL;
	if (s != NULL && s->npin > 0) {
		s->npin--;
		if (root_follow(t, handle, true, rooted(t, handle, r)) != 0)
			t->errors++;
		side_trim(t, r, s);
	}
	pthread_mutex_unlock(&t->lock);
}

int inode_unhash(struct inode_table *t, uint64_t dev, uint64_t ino)
{
	pthread_mutex_lock(&t->lock);
	uint64_t handle = ix_find(t, dev, ino);
	struct rec *r = handle && handle != t->root ? rec_get(t, handle) : NULL;
	if (r != NULL) {
		if (!ix_remove(&t->ix, (uint32_t)handle, dev, ino) && t->old.v != NULL)
			ix_remove(&t->old, (uint32_t)handle, dev, ino);
		r->flags |= R_UNHASHED;
	}
	pthread_mutex_unlock(&t->lock);
	return r != NULL;
}

int inode_move(struct inode_table *t, uint64_t dev, uint64_t ino, uint64_t parent, const char *name)
{
	int err = 0;
	pthread_mutex_lock(&t->lock);
	uint64_t p = handle_of_id(t, parent);
	uint64_t handle = ix_find(t, dev, ino);
	if (rec_get(t, p) == NULL)
		err = -ESTALE;
	else if (handle != 0 && handle != t->root)
		err = rec_rename(t, handle, p, name);
	pthread_mutex_unlock(&t->lock);
	return err;
}

int inode_path(struct inode_table *t, uint64_t id, char *buf, size_t len)
{
	int n = -ESTALE;
	pthread_mutex_lock(&t->lock);
	uint64_t handle = handle_of_id(t, id);
	if (rec_get(t, handle) == NULL)
		goto out;
	if (handle == t->root) {
		n = len >= 2 ? 1 : -ENAMETOOLONG;
		if (n > 0)
			memcpy(buf, ".", 2);
		goto out;
	}
	/* Spell the path backwards from the end of buf, then move it to the front. Every step
	 * takes at least one byte, so even a (corrupt) cycle ends in -ENAMETOOLONG. */
	size_t end = len, pos = len;
	n = -ENAMETOOLONG;
	if (pos == 0)
		goto out;
	buf[--pos] = '\0';
	for (uint64_t s = handle;;) {
		uint64_t parent;
		const char *name;
		size_t l;
		int rc = rec_name(t, s, &parent, &name, &l);
		if (rc != 0) {
			n = rc;
			goto out;
		}
		if (l > pos)
			goto out;
		pos -= l;
		memcpy(buf + pos, name, l);
		if (parent == t->root)
			break;
		if (pos == 0)
			goto out;
		buf[--pos] = '/';
		s = parent;
	}
	memmove(buf, buf + pos, end - pos);
	n = (int)(end - pos - 1);
out:
	pthread_mutex_unlock(&t->lock);
	return n;
}

int inode_parent(struct inode_table *t, uint64_t id, uint64_t *parent, char *name, size_t len)
{
	pthread_mutex_lock(&t->lock);
	uint64_t handle = handle_of_id(t, id), p = t->root;
	const char *n = ".";
	size_t l = 1;
	int err = rec_get(t, handle) == NULL ? -ESTALE : 0;
	if (err == 0 && handle != t->root)
		err = rec_name(t, handle, &p, &n, &l);
	if (err == 0 && l >= len)
		err = -ENAMETOOLONG;
	if (err == 0) {
		memcpy(name, n, l);
		name[l] = '\0';
		*parent = id_of_handle(t, p);
	}
	pthread_mutex_unlock(&t->lock);
	return err;
}

int inode_ident(struct inode_table *t, uint64_t id, uint64_t *dev, uint64_t *ino)
{
	int err = -ESTALE;
	pthread_mutex_lock(&t->lock);
	const struct rec *r = rec_get(t, handle_of_id(t, id));
	if (r != NULL) {
		struct ident i = rec_ident(t, r);
		*dev = i.dev;
		*ino = i.ino;
		err = 0;
	}
	pthread_mutex_unlock(&t->lock);
	return err;
}

void inode_lock(struct inode_table *t)
{
	pthread_mutex_lock(&t->lock);
}

/* Side entries inode_data made for a look (the owner left the slot NULL) go again, so that
 * a getattr on every file of a tree leaves no entry behind. */
void inode_unlock(struct inode_table *t)
{
	for (struct side *s = t->fresh, *next; s != NULL; s = next) {
		next = s->fresh;
		s->fresh = NULL;
		uint64_t handle = heap_handle_at(t->heap, s->idx);
		struct rec *r = handle != 0 ? rec_get(t, handle) : NULL;
		if (r != NULL)
			side_trim(t, r, s);
		else
			t->errors++; /* not expected: no collection runs under inode_lock */
	}
	t->fresh = NULL;
	pthread_mutex_unlock(&t->lock);
}

void **inode_data(struct inode_table *t, uint64_t id, int *err)
{
	uint64_t handle = handle_of_id(t, id);
	struct rec *r = rec_get(t, handle);
	struct side *s = r != NULL ? side_of(t, handle, r) : NULL;
	if (r != NULL && s == NULL && (s = side_add(t, handle, r)) != NULL) {
		s->fresh = t->fresh;
		t->fresh = s;
	}
	if (s == NULL && err != NULL)
		*err = r == NULL ? -ESTALE : -ENOMEM;
	return s != NULL ? &s->data : NULL;
}

void *inode_data_peek(struct inode_table *t, uint64_t id)
{
	uint64_t handle = handle_of_id(t, id);
	const struct rec *r = rec_get(t, handle);
	const struct side *s = r != NULL ? side_of(t, handle, r) : NULL;
	return s != NULL ? s->data : NULL;
}

/* Memory the table holds outside the heap: index mappings, side entries, device table. */
static size_t ix_bytes(const struct inode_table *t)
{
	const struct sides *ss = &t->sides;
	const struct devs *d = &t->devs;
	return ix_map_len(t->ix.cap) + ix_map_len(t->old.cap) + t->next.ready +
	       (ss->cap + ss->oldcap) * sizeof(struct side *) + ss->n * sizeof(struct side) +
	       d->cap * sizeof(struct vol) + d->hcap * sizeof(uint32_t) +
	       d->pcap * sizeof(struct devn);
}

void inode_stats(struct inode_table *t, struct inode_stats *st)
{
	struct heap_stats hs;
	pthread_mutex_lock(&t->lock);
	heap_stats(t->heap, &hs);
	*st = t->st;
	st->bytes = sizeof(*t) + hs.heap_used + ix_bytes(t);
	pthread_mutex_unlock(&t->lock);
}

void inode_heap_stats(struct inode_table *t, struct heap_stats *st)
{
	pthread_mutex_lock(&t->lock);
	heap_stats(t->heap, st);
	st->heap_total += ix_bytes(t);
	st->heap_used += ix_bytes(t);
	pthread_mutex_unlock(&t->lock);
}

int inode_table_step(struct inode_table *t, size_t budget)
{
	pthread_mutex_lock(&t->lock);
	int rc = heap_step(t->heap, budget);
	pthread_mutex_unlock(&t->lock);
	return rc;
}

int inode_table_idle(struct inode_table *t, size_t budget)
{
	pthread_mutex_lock(&t->lock);
	int rc = heap_step(t->heap, budget);
	if (rc == 0 && idle_wanted(t)) {
		rc = heap_collect(t->heap, HEAP_CYCLE);
		if (rc == 0) {
			t->unrooted = 0;
			rc = 1;
		}
	}
	pthread_mutex_unlock(&t->lock);
	return rc;
}

int inode_table_collect(struct inode_table *t, enum heap_collect_kind kind)
{
	pthread_mutex_lock(&t->lock);
	int rc = heap_collect(t->heap, kind);
	pthread_mutex_unlock(&t->lock);
	return rc;
}

static int verify_fail(char *err, size_t len, const char *what, uint64_t handle)
{
	if (err != NULL && len != 0)
		snprintf(err, len, "inode table: %s (handle %#llx)", what,
			 (unsigned long long)handle);
	return -EFAULT;
}

struct verify {
	struct inode_table *t;
	uint32_t *recs; /* handle indices of every record, dead or alive */
	size_t nrecs, cap;
	size_t nside; /* records with R_SIDE */
	uint64_t bad; /* first record found inconsistent, 0: none */
	const char *what;
};

static void verify_record(void *arg, uint64_t handle, unsigned type, void *payload, int dead)
{
	struct verify *v = arg;
	if (type != T_REC)
		return;
	if (v->nrecs < v->cap)
		v->recs[v->nrecs] = (uint32_t)handle;
	v->nrecs++;
	const struct rec *r = payload;
	v->nside += (r->flags & R_SIDE) != 0;
	if (v->bad != 0)
		return;
	if (r->vol >= v->t->devs.n && r->vol != VOL_WIDE) {
		v->what = "a record's volume index is out of the volume table";
		v->bad = handle;
		return;
	}
	struct ident id = rec_ident(v->t, r);
	if (r->vol == VOL_WIDE && dev_find(&v->t->devs, id.dev, id.ino) >= 0)
		v->what = "a wide record's volume is listed";
	else if ((r->flags & R_SIDE) && side_find(&v->t->sides, (uint32_t)handle) == NULL)
		v->what = "a record's side entry is missing";
	else if (dead || handle == v->t->root)
		return;
	else if (heap_root_count(v->t->heap, handle) != (rooted(v->t, handle, r) ? 1 : 0))
		v->what = "root count disagrees with the lookup and pin counts";
	/* a live record is indexed unless it was never rooted (rec_new's failure path) */
	else if (rooted(v->t, handle, r) && !(r->flags & R_UNHASHED) &&
		 ix_find(v->t, id.dev, id.ino) != handle)
		v->what = "a rooted record is not found through the index";
	else
		return;
	v->bad = handle;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

/* Every record is counted, consistent and findable; every index entry names a record. */
static int verify_table(struct inode_table *t, char *err, size_t len)
{
	struct verify v = {.t = t, .cap = t->st.inodes + 1};
	v.recs = malloc(v.cap * sizeof(uint32_t));
	if (v.recs == NULL)
		return verify_fail(err, len, "out of memory for the verifier", 0);
	heap_walk(t->heap, verify_record, &v);
	int rc = 0;
	if (v.nrecs != t->st.inodes)
		rc = verify_fail(err, len, "record count disagrees with the heap", v.nrecs);
	else if (v.bad != 0)
		rc = verify_fail(err, len, v.what, v.bad);
	else if (v.nside != t->sides.n)
		rc = verify_fail(err, len, "side entries disagree with the records having one",
				 v.nside);
	qsort(v.recs, rc == 0 ? v.nrecs : 0, sizeof(uint32_t), cmp_u32);
	for (int k = 0; k < 2 && rc == 0; k++) {
		const struct index *ix = k == 0 ? &t->ix : &t->old;
		size_t entries = 0, tombs = 0;
		for (size_t i = 0; rc == 0 && i < ix->cap; i++) {
			uint32_t e = ix->v[i];
			tombs += e == TOMB;
			if (e == 0 || e == TOMB)
				continue;
			entries++;
			uint64_t handle = heap_handle_at(t->heap, e);
			const struct rec *r = handle != 0 ? rec_get(t, handle) : NULL;
			struct ident id = r != NULL ? rec_ident(t, r) : (struct ident){0, 0};
			if (bsearch(&e, v.recs, v.nrecs, sizeof(uint32_t), cmp_u32) == NULL)
				rc = verify_fail(err, len, "an index entry names no record", e);
			else if (r != NULL && ix->tag[i] != ix_tag(ix_hash(id.dev, id.ino)))
				rc = verify_fail(err, len, "an index entry's tag is not its hash's",
						 e);
		}
		if (rc == 0 && (entries != ix->used || tombs != ix->tomb))
			rc = verify_fail(err, len, "index counts disagree", entries);
	}
	if (rc == 0 && t->errors != 0)
		rc = verify_fail(err, len, "a root count update failed", t->errors);
	free(v.recs);
	return rc;
}

int inode_table_verify(struct inode_table *t, char *err, size_t len)
{
	pthread_mutex_lock(&t->lock);
	int rc = heap_verify(t->heap, err, len);
	if (rc == 0)
		rc = verify_table(t, err, len);
	pthread_mutex_unlock(&t->lock);
	return rc;
}
