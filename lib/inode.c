/*
 * inode.c - the inode table (see inode.h for the contract).
 *
 * Records live in one growable array of slots; a node id is the slot index in the low 32 bits
 * and the slot's generation in the high 32 bits, so an id the kernel still quotes after its
 * slot was reused is recognised as stale instead of silently naming another file. Free slots
 * form a list threaded through the records. A chained hash over (dev, ino) finds the record of
 * a backing file, so a second lookup of a hard link or a readdirplus entry reuses the node id.
 *
 * Each record holds its parent's slot and a private copy of its name. A child keeps its
 * parent alive (nchild), so the chain from any live record to the root is always complete and
 * inode_path() can spell it. The issue "metadata in a generational heap" moves this storage
 * into lib/heap; this file's interface is what the daemon sees either way.
 */
#include "inode.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct rec {
	uint64_t dev, ino;
	uint64_t nlookup;
	char *name;	 /* NULL for a free slot and the root */
	void *data;	 /* the owner's slot */
	uint32_t parent; /* slot of the parent; the root is its own parent */
	uint32_t gen;
	uint32_t nchild; /* live records naming this one as parent */
	uint32_t npin;	 /* open files and directories */
	uint32_t hnext;	 /* next slot in the hash chain, or, when free, in the free list */
	uint32_t live;
};

struct inode_table {
	pthread_mutex_t lock;
	struct rec *recs;
	uint32_t nrecs, cap;
	uint32_t free_head; /* 0: none */
	uint32_t *bucket;
	uint32_t nbucket; /* a power of two */
	size_t name_bytes;
	void (*free_data)(void *data);
	struct inode_stats st;
};

#define ROOT_SLOT 1

static uint32_t slot_of(uint64_t id)
{
	return (uint32_t)id;
}

static uint64_t id_of(const struct inode_table *t, uint32_t slot)
{
	return ((uint64_t)t->recs[slot].gen << 32) | slot;
}

static uint32_t hash_ident(uint64_t dev, uint64_t ino)
{
	uint64_t h = (ino ^ (dev << 29) ^ (dev >> 7)) * 0x9e3779b97f4a7c15ull;
	return (uint32_t)(h >> 32);
}

/* The live record for id, or NULL when id is unknown or stale. */
static struct rec *rec_get(struct inode_table *t, uint64_t id)
{
	uint32_t s = slot_of(id);
	if (s == 0 || s >= t->nrecs || !t->recs[s].live || id_of(t, s) != id)
		return NULL;
	return &t->recs[s];
}

static uint32_t *bucket_for(struct inode_table *t, uint64_t dev, uint64_t ino)
{
	return &t->bucket[hash_ident(dev, ino) & (t->nbucket - 1)];
}

static uint32_t hash_find(struct inode_table *t, uint64_t dev, uint64_t ino)
{
	for (uint32_t s = *bucket_for(t, dev, ino); s != 0; s = t->recs[s].hnext)
		if (t->recs[s].ino == ino && t->recs[s].dev == dev)
			return s;
	return 0;
}

static void hash_insert(struct inode_table *t, uint32_t s)
{
	uint32_t *b = bucket_for(t, t->recs[s].dev, t->recs[s].ino);
	t->recs[s].hnext = *b;
	*b = s;
}

static void hash_remove(struct inode_table *t, uint32_t s)
{
	uint32_t *p = bucket_for(t, t->recs[s].dev, t->recs[s].ino);
	while (*p != s)
		p = &t->recs[*p].hnext;
	*p = t->recs[s].hnext;
}

static int hash_grow(struct inode_table *t)
{
	uint32_t n = t->nbucket * 2;
	uint32_t *b = calloc(n, sizeof(*b));
	if (b == NULL)
		return -ENOMEM;
	free(t->bucket);
	t->bucket = b;
	t->nbucket = n;
	for (uint32_t s = 1; s < t->nrecs; s++)
		if (t->recs[s].live)
			hash_insert(t, s);
	return 0;
}

static int slot_alloc(struct inode_table *t, uint32_t *out)
{
	if (t->free_head != 0) {
		*out = t->free_head;
		t->free_head = t->recs[*out].hnext;
		return 0;
	}
	if (t->nrecs == t->cap) {
		if (t->cap >= UINT32_MAX / 2)
			return -ENOMEM;
		uint32_t cap = t->cap * 2;
		struct rec *r = realloc(t->recs, cap * sizeof(*r));
		if (r == NULL)
			return -ENOMEM;
		memset(r + t->cap, 0, (cap - t->cap) * sizeof(*r));
		t->recs = r;
		t->cap = cap;
	}
	*out = t->nrecs++;
	return 0;
}

static size_t name_bytes(const struct rec *r)
{
	return r->name ? strlen(r->name) + 1 : 0;
}

/* Frees slot s if nothing holds it, then walks up: its parent may have been held only by it. */
static void rec_release(struct inode_table *t, uint32_t s)
{
	while (s != ROOT_SLOT) {
		struct rec *r = &t->recs[s];
		if (r->nlookup != 0 || r->npin != 0 || r->nchild != 0)
			return;
		uint32_t parent = r->parent;
		hash_remove(t, s);
		t->name_bytes -= name_bytes(r);
		free(r->name);
		r->name = NULL;
		if (r->data != NULL && t->free_data != NULL)
			t->free_data(r->data);
		r->data = NULL;
		r->live = 0;
		r->gen++;
		r->hnext = t->free_head;
		t->free_head = s;
		t->st.inodes--;
		t->st.forgotten++;
		t->recs[parent].nchild--;
		s = parent;
	}
}

int inode_table_new(uint64_t root_dev, uint64_t root_ino, void (*free_data)(void *data),
		    struct inode_table **out)
{
	struct inode_table *t = calloc(1, sizeof(*t));
	if (t == NULL)
		return -ENOMEM;
	t->cap = 1024;
	t->nbucket = 1024;
	t->recs = calloc(t->cap, sizeof(*t->recs));
	t->bucket = calloc(t->nbucket, sizeof(*t->bucket));
	int err = pthread_mutex_init(&t->lock, NULL);
	if (t->recs == NULL || t->bucket == NULL || err != 0) {
		free(t->recs);
		free(t->bucket);
		free(t);
		return err ? -err : -ENOMEM;
	}
	t->free_data = free_data;
	t->nrecs = ROOT_SLOT + 1;
	struct rec *root = &t->recs[ROOT_SLOT];
	root->dev = root_dev;
	root->ino = root_ino;
	root->parent = ROOT_SLOT;
	root->live = 1;
	hash_insert(t, ROOT_SLOT);
	t->st.inodes = t->st.peak = 1;
	*out = t;
	return 0;
}

void inode_table_free(struct inode_table *t)
{
	if (t == NULL)
		return;
	for (uint32_t s = 0; s < t->nrecs; s++) {
		free(t->recs[s].name);
		if (t->recs[s].live && t->recs[s].data != NULL && t->free_data != NULL)
			t->free_data(t->recs[s].data);
	}
	free(t->recs);
	free(t->bucket);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

/* Points record s at (parent, name), keeping the parents' child counts right. */
static int rec_rename(struct inode_table *t, uint32_t s, uint32_t parent, const char *name)
{
	struct rec *r = &t->recs[s];
	if (r->name != NULL && r->parent == parent && strcmp(r->name, name) == 0)
		return 0;
	char *copy = strdup(name);
	if (copy == NULL)
		return -ENOMEM;
	t->name_bytes -= name_bytes(r);
	free(r->name);
	r->name = copy;
	t->name_bytes += name_bytes(r);
	uint32_t old = r->parent;
	r->parent = parent;
	t->recs[parent].nchild++;
	if (old != 0) {
		t->recs[old].nchild--;
		rec_release(t, old);
	}
	return 0;
}

int inode_link(struct inode_table *t, uint64_t parent, const char *name, uint64_t dev, uint64_t ino,
	       uint64_t *id, uint64_t *gen)
{
	int err = 0;
	pthread_mutex_lock(&t->lock);
	struct rec *p = rec_get(t, parent);
	if (p == NULL) {
		err = -ESTALE;
		goto out;
	}
	uint32_t ps = slot_of(parent);
	uint32_t s = hash_find(t, dev, ino);
	if (s != 0) {
		if (s != ROOT_SLOT)
			err = rec_rename(t, s, ps, name);
		if (err != 0)
			goto out;
	} else {
		if (t->st.inodes >= t->nbucket && (err = hash_grow(t)) != 0)
			goto out;
		if ((err = slot_alloc(t, &s)) != 0)
			goto out;
		struct rec *r = &t->recs[s];
		uint32_t g = r->gen;
		memset(r, 0, sizeof(*r));
		r->gen = g == 0 ? 1 : g; /* generation 0 is the root's alone */
		r->dev = dev;
		r->ino = ino;
		if ((err = rec_rename(t, s, ps, name)) != 0) {
			r->hnext = t->free_head;
			t->free_head = s;
			goto out;
		}
		r->live = 1;
		hash_insert(t, s);
		t->st.inodes++;
		if (t->st.inodes > t->st.peak)
			t->st.peak = t->st.inodes;
	}
	t->recs[s].nlookup++;
	t->st.lookups++;
	*id = id_of(t, s);
	*gen = t->recs[s].gen;
out:
	pthread_mutex_unlock(&t->lock);
	return err;
}

void inode_forget(struct inode_table *t, uint64_t id, uint64_t nlookup)
{
	pthread_mutex_lock(&t->lock);
	struct rec *r = rec_get(t, id);
	if (r != NULL) {
		r->nlookup = nlookup >= r->nlookup ? 0 : r->nlookup - nlookup;
		rec_release(t, slot_of(id));
	}
	pthread_mutex_unlock(&t->lock);
}

int inode_pin(struct inode_table *t, uint64_t id)
{
	int err = -ESTALE;
	pthread_mutex_lock(&t->lock);
	struct rec *r = rec_get(t, id);
	if (r != NULL) {
		r->npin++;
		err = 0;
	}
	pthread_mutex_unlock(&t->lock);
	return err;
}

void inode_unpin(struct inode_table *t, uint64_t id)
{
	pthread_mutex_lock(&t->lock);
	struct rec *r = rec_get(t, id);
	if (r != NULL && r->npin > 0) {
		r->npin--;
		rec_release(t, slot_of(id));
	}
	pthread_mutex_unlock(&t->lock);
}

int inode_move(struct inode_table *t, uint64_t dev, uint64_t ino, uint64_t parent, const char *name)
{
	int err = 0;
	pthread_mutex_lock(&t->lock);
	uint32_t s = hash_find(t, dev, ino);
	if (rec_get(t, parent) == NULL)
		err = -ESTALE;
	else if (s != 0 && s != ROOT_SLOT)
		err = rec_rename(t, s, slot_of(parent), name);
	pthread_mutex_unlock(&t->lock);
	return err;
}

int inode_path(struct inode_table *t, uint64_t id, char *buf, size_t len)
{
	int n = -ESTALE;
	pthread_mutex_lock(&t->lock);
	struct rec *r = rec_get(t, id);
	if (r == NULL)
		goto out;
	if (slot_of(id) == ROOT_SLOT) {
		n = len >= 2 ? 1 : -ENAMETOOLONG;
		if (n > 0)
			memcpy(buf, ".", 2);
		goto out;
	}
	/* Spell the path backwards from the end of buf, then move it to the front. */
	size_t end = len, pos = len;
	if (pos == 0) {
		n = -ENAMETOOLONG;
		goto out;
	}
	buf[--pos] = '\0';
	for (uint32_t s = slot_of(id);; s = t->recs[s].parent) {
		size_t l = strlen(t->recs[s].name);
		if (l > pos) {
			n = -ENAMETOOLONG;
			goto out;
		}
		pos -= l;
		memcpy(buf + pos, t->recs[s].name, l);
		if (t->recs[s].parent == ROOT_SLOT)
			break;
		if (pos == 0) {
			n = -ENAMETOOLONG;
			goto out;
		}
		buf[--pos] = '/';
	}
	memmove(buf, buf + pos, end - pos);
	n = (int)(end - pos - 1);
out:
	pthread_mutex_unlock(&t->lock);
	return n;
}

int inode_parent(struct inode_table *t, uint64_t id, uint64_t *parent, char *name, size_t len)
{
	int err = -ESTALE;
	pthread_mutex_lock(&t->lock);
	struct rec *r = rec_get(t, id);
	if (r != NULL) {
		const char *n = slot_of(id) == ROOT_SLOT ? "." : r->name;
		size_t l = strlen(n);
		err = l < len ? 0 : -ENAMETOOLONG;
		if (err == 0) {
			memcpy(name, n, l + 1);
			*parent = id_of(t, r->parent);
		}
	}
	pthread_mutex_unlock(&t->lock);
	return err;
}

int inode_ident(struct inode_table *t, uint64_t id, uint64_t *dev, uint64_t *ino)
{
	int err = -ESTALE;
	pthread_mutex_lock(&t->lock);
	struct rec *r = rec_get(t, id);
	if (r != NULL) {
		*dev = r->dev;
		*ino = r->ino;
		err = 0;
	}
	pthread_mutex_unlock(&t->lock);
	return err;
}

void inode_lock(struct inode_table *t)
{
	pthread_mutex_lock(&t->lock);
}

void inode_unlock(struct inode_table *t)
{
	pthread_mutex_unlock(&t->lock);
}

void **inode_data(struct inode_table *t, uint64_t id)
{
	struct rec *r = rec_get(t, id);
	return r ? &r->data : NULL;
}

void inode_stats(struct inode_table *t, struct inode_stats *st)
{
	pthread_mutex_lock(&t->lock);
	*st = t->st;
	st->bytes = sizeof(*t) + (uint64_t)t->cap * sizeof(*t->recs) +
		    (uint64_t)t->nbucket * sizeof(*t->bucket) + t->name_bytes;
	pthread_mutex_unlock(&t->lock);
}
