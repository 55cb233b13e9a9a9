/*
 * node.c - the daemon's state for an inode beyond its name: its open handles, the stream its
 * writes go through, and the record of its last transfer.
 *
 * A struct node hangs off the inode record's data slot (lib/inode) from the first open (or
 * the first user.throttlefs.expected) until the kernel forgets the inode, so the final record
 * of a transfer stays readable as long as the daemon knows the file. While handles are open:
 *  - it holds a descriptor of its own, so an open file or directory whose name is gone
 *    (unlinked, removed, renamed behind the view's back) still answers fstat, fchmod and the
 *    like, as on a local filesystem;
 *  - once opened for writing, it has one stream shared by every handle of the inode, so a
 *    second descriptor sees the same buffered data (read-your-writes, sizes, ordering), and it
 *    is on the list of active transfers.
 * The last release waits until the stream has written everything (normally nothing is left:
 * close already waited in flush), keeps its final figures, and closes stream and descriptor.
 *
 * Whose rights the stream writes with (cred.c). Each writable handle opened with credentials
 * other than root's brings a record of them (kept once per distinct set on the node's list,
 * freed only after the stream is closed, so a slice in flight can always use the record it
 * read). Before each write through such a handle, the stream's owner becomes that handle's
 * record: the stream drains as the most recent unprivileged writer. Writes through a handle
 * root opened leave the owner alone. So once any unprivileged user has written, no byte of the
 * file ever goes out with root's reach again: root's later writes to a file others are
 * writing are narrowed to theirs, never theirs widened to root's (root can fix what that
 * refuses; the reverse would be an escalation). "Most recent" rather than "first": when alice
 * and bob take turns on one file, the data in the buffers is mostly the last writer's, and
 * what is written as whom stays within the rights of someone who opened the file for writing.
 *
 * Locking: every field but started_rt and last_write_rt (atomic: set on the write path) is
 * read and changed under the inode table lock; the stream pointer is also read without it by
 * handles (atomically): it only goes away when no handle is left. Lock order: inode table,
 * then stream.
 */
#include "tfs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

struct node {
	fuse_ino_t ino;
	unsigned handles;	   /* open handles, and waiters holding the node */
	int fd;			   /* while handles > 0, else -1 */
	struct stream *stream;	   /* while handles > 0, once opened for writing */
	struct cred_id *writers;   /* the stream's owners (see above), freed after it closes */
	struct node *prev, *next;  /* on tfs.active while stream != NULL */
	uint64_t started_rt;	   /* CLOCK_REALTIME ns of the transfer's first write; 0: none */
	uint64_t last_write_rt;	   /* of its last write (atomic: set on the write path) */
	uint64_t ended_rt;	   /* when its stream closed; 0 while it runs */
	struct stream_stats final; /* the figures of the last stream, once closed */
	uint64_t expected;	   /* bytes the transfer will have; 0: unknown */
	enum node_cap cap;	   /* what security.capability is known to be */
};

uint64_t node_now_rt(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The node of ino, made if missing. Under the inode lock. NULL with *err set on failure. */
static struct node *node_get(struct tfs *fs, fuse_ino_t ino, int *err)
{
	void **slot = inode_data(fs->inodes, ino, err);
	if (slot == NULL)
		return NULL;
	if (*slot == NULL) {
		struct node *n = calloc(1, sizeof(*n));
		if (n == NULL) {
			*err = -ENOMEM;
			return NULL;
		}
		n->ino = ino;
		n->fd = -1;
		*slot = n;
	}
	return *slot;
}

/* The node of ino if it has one. Under the inode lock. */
static struct node *node_find(struct tfs *fs, fuse_ino_t ino)
{
	return inode_data_peek(fs->inodes, ino);
}

void node_free(void *data)
{
	struct node *n = data;
	/* A record is freed only when nothing pins it: no handle is open. */
	if (n->handles != 0 || n->fd >= 0 || n->stream != NULL || n->writers != NULL)
		fuse_log(FUSE_LOG_ERR, "throttlefs: inode %llu freed while open\n",
			 (unsigned long long)n->ino);
	free(n);
}

static void active_add(struct tfs *fs, struct node *n)
{
	n->prev = NULL;
	n->next = fs->active;
	if (fs->active != NULL)
		fs->active->prev = n;
	fs->active = n;
}

static void active_remove(struct tfs *fs, struct node *n)
{
	if (n->prev != NULL)
		n->prev->next = n->next;
	else
		fs->active = n->next;
	if (n->next != NULL)
		n->next->prev = n->prev;
	n->prev = n->next = NULL;
}

int node_attach(struct tfs *fs, fuse_ino_t ino, int writable, int fd, struct node **out,
		const struct stream_owner **owner)
{
	struct cred_id *id = NULL;
	int err = writable ? cred_id_capture(&id) : 0;
	if (err != 0)
		return err;
	inode_lock(fs->inodes);
	struct node *n = node_get(fs, ino, &err);
	if (n == NULL)
		goto out;
	int new_fd = -1;
	if (n->handles == 0) {
		new_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
		if (new_fd < 0) {
			err = -errno;
			goto out;
		}
	}
	if (writable && n->stream == NULL) {
		/* The stream writes through its own descriptor of the file, so that it outlives
		 * the handle that happened to open it first. A new transfer starts. */
		int sfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
		struct stream *s = NULL;
		err = sfd < 0 ? -errno : stream_open(fs->streams, sfd, &s);
		if (err != 0) {
			if (new_fd >= 0)
				close(new_fd);
			goto out;
		}
		__atomic_store_n(&n->stream, s, __ATOMIC_RELEASE);
		__atomic_store_n(&n->started_rt, 0, __ATOMIC_RELAXED);
		n->ended_rt = 0;
		memset(&n->final, 0, sizeof(n->final));
		active_add(fs, n);
	}
	if (new_fd >= 0)
		n->fd = new_fd;
	n->handles++;
	*out = n;
	*owner = cred_id_keep(&n->writers, id);
	id = NULL;
out:
	inode_unlock(fs->inodes);
	cred_id_free_all(&id); /* not kept: the attach failed */
	return err;
}

/* Whether stream s has data still to write, or a write-behind still to finish (whose error
 * its close would report). */
static bool unfinished(struct stream *s)
{
	struct stream_stats ss;
	stream_stats(s, &ss);
	return ss.state == STREAM_WRITING || ss.state == STREAM_DRAINING;
}

void node_detach(struct tfs *fs, struct node *n)
{
	inode_lock(fs->inodes);
	/* The last handle out waits for the data while still holding its reference, so the node
	 * keeps answering for the file's size and nobody else can close the stream meanwhile. */
	while (n->handles == 1 && n->stream != NULL && unfinished(n->stream)) {
		inode_unlock(fs->inodes);
		int err = stream_sync(n->stream);
		if (err != 0)
			fuse_log(FUSE_LOG_WARNING, "throttlefs: data of inode %llu failed: %s\n",
				 (unsigned long long)n->ino, strerror(-err));
		inode_lock(fs->inodes);
	}
	struct stream *s = NULL;
	struct cred_id *writers = NULL;
	int fd = -1;
	if (--n->handles == 0) {
		s = n->stream;
		fd = n->fd;
		n->fd = -1;
		/* Taken with the stream: a new stream opened meanwhile starts its own list. */
		writers = n->writers;
		n->writers = NULL;
		if (s != NULL) {
			stream_stats(s, &n->final);
			n->ended_rt = node_now_rt();
			active_remove(fs, n);
			__atomic_store_n(&n->stream, NULL, __ATOMIC_RELEASE);
			if (n->final.state == STREAM_DONE && n->final.received > 0)
				fs->files_done++;
		}
	}
	inode_unlock(fs->inodes);
	if (s != NULL) {
		int err = stream_close(s);
		if (err != 0) {
			fuse_log(FUSE_LOG_WARNING,
				 "throttlefs: closing the stream of inode %llu: %s\n",
				 (unsigned long long)n->ino, strerror(-err));
			inode_lock(fs->inodes);
			if (n->final.error == 0) {
				n->final.state = STREAM_ERROR;
				n->final.error = -err;
			}
			inode_unlock(fs->inodes);
		}
	}
	cred_id_free_all(&writers); /* no slice runs any more */
	if (fd >= 0)
		close(fd);
}

int node_fd(struct tfs *fs, fuse_ino_t ino)
{
	int fd = -ENOENT;
	inode_lock(fs->inodes);
	struct node *n = node_find(fs, ino);
	if (n != NULL && n->fd >= 0) {
		fd = fcntl(n->fd, F_DUPFD_CLOEXEC, 0);
		if (fd < 0)
			fd = -errno;
	}
	inode_unlock(fs->inodes);
	return fd;
}

struct stream *node_stream(struct node *n)
{
	return __atomic_load_n(&n->stream, __ATOMIC_ACQUIRE);
}

void node_wrote(struct node *n)
{
	uint64_t t = node_now_rt();
	__atomic_store_n(&n->last_write_rt, t, __ATOMIC_RELAXED);
	uint64_t zero = 0;
	__atomic_compare_exchange_n(&n->started_rt, &zero, t, 0, __ATOMIC_RELAXED,
				    __ATOMIC_RELAXED);
}

/* Under the inode lock when n came from the slot. */
static void pending_of(struct node *n, struct node_pending *p)
{
	struct stream *s = node_stream(n);
	p->end = s ? stream_end(s) : 0;
	p->write_rt = __atomic_load_n(&n->last_write_rt, __ATOMIC_RELAXED);
	p->restat = s != NULL || p->write_rt != 0;
}

void node_pending(struct tfs *fs, fuse_ino_t ino, struct node *n, struct node_pending *p)
{
	memset(p, 0, sizeof(*p));
	if (n != NULL) {
		pending_of(n, p);
		return;
	}
	inode_lock(fs->inodes);
	n = node_find(fs, ino);
	if (n != NULL)
		pending_of(n, p);
	inode_unlock(fs->inodes);
}

void node_pending_apply(const struct node_pending *p, struct stat *st)
{
	if (p->end == 0)
		return;
	if (p->end > (uint64_t)st->st_size)
		st->st_size = (off_t)p->end;
	struct timespec w = {.tv_sec = (time_t)(p->write_rt / 1000000000ull),
			     .tv_nsec = (long)(p->write_rt % 1000000000ull)};
	if (w.tv_sec > st->st_mtim.tv_sec ||
	    (w.tv_sec == st->st_mtim.tv_sec && w.tv_nsec > st->st_mtim.tv_nsec))
		st->st_mtim = st->st_ctim = w;
	blkcnt_t blocks = (st->st_size + 511) / 512;
	if (st->st_blocks < blocks)
		st->st_blocks = blocks;
}

int node_sync(struct node *n)
{
	struct stream *s = n ? node_stream(n) : NULL;
	return s ? stream_sync(s) : 0;
}

int node_sync_ino(struct tfs *fs, fuse_ino_t ino)
{
	/* A stream is only closed once its node has no handle; hold one while waiting. */
	inode_lock(fs->inodes);
	struct node *n = node_find(fs, ino);
	if (n != NULL && n->stream != NULL)
		n->handles++;
	else
		n = NULL;
	inode_unlock(fs->inodes);
	if (n == NULL)
		return 0;
	int err = node_sync(n);
	node_detach(fs, n);
	return err;
}

/* Fills p from n. Under the inode lock. */
static void progress_of(struct node *n, struct node_progress *p)
{
	memset(p, 0, sizeof(*p));
	p->ino = n->ino;
	struct stream *s = n->stream;
	if (s != NULL)
		stream_stats(s, &p->st);
	else
		p->st = n->final;
	/* A stream that has written all it received while its file is still open is between
	 * two writes, not done: "done" means the transfer ended (the last writer closed) with
	 * everything on the store, and never turns back into "writing". */
	if (s != NULL && p->st.state == STREAM_DONE)
		p->st.state = STREAM_WRITING;
	p->started_rt = __atomic_load_n(&n->started_rt, __ATOMIC_RELAXED);
	p->last_rt = __atomic_load_n(&n->last_write_rt, __ATOMIC_RELAXED);
	p->ended_rt = s != NULL ? 0 : n->ended_rt;
	p->expected = n->expected;
	p->active = s != NULL;
}

int node_progress(struct tfs *fs, fuse_ino_t ino, struct node_progress *p)
{
	int err = -ENOENT;
	inode_lock(fs->inodes);
	struct node *n = node_find(fs, ino);
	if (n != NULL) {
		progress_of(n, p);
		err = 0;
	}
	inode_unlock(fs->inodes);
	return err;
}

int node_expect(struct tfs *fs, fuse_ino_t ino, uint64_t bytes)
{
	int err = 0;
	inode_lock(fs->inodes);
	struct node *n = node_get(fs, ino, &err);
	if (n != NULL)
		n->expected = bytes;
	inode_unlock(fs->inodes);
	return err;
}

void node_sized(struct node *n, struct tfs *fs, uint64_t size)
{
	if (n == NULL)
		return;
	inode_lock(fs->inodes);
	if (n->stream != NULL && size > 0)
		n->expected = size;
	inode_unlock(fs->inodes);
}

size_t node_active(struct tfs *fs, struct node_progress *out, size_t max, uint64_t *files_done)
{
	size_t count = 0;
	inode_lock(fs->inodes);
	for (struct node *n = fs->active; n != NULL; n = n->next, count++)
		if (count < max)
			progress_of(n, &out[count]);
	*files_done = fs->files_done;
	inode_unlock(fs->inodes);
	return count;
}

enum node_cap node_cap_get(struct tfs *fs, fuse_ino_t ino)
{
	inode_lock(fs->inodes);
	struct node *n = node_find(fs, ino);
	enum node_cap c = n ? n->cap : NODE_CAP_UNKNOWN;
	inode_unlock(fs->inodes);
	return c;
}

void node_cap_set(struct tfs *fs, fuse_ino_t ino, enum node_cap cap)
{
	inode_lock(fs->inodes);
	struct node *n = node_find(fs, ino);
	if (n != NULL)
		n->cap = cap;
	inode_unlock(fs->inodes);
}
