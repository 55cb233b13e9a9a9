/*
 * node.c - the daemon's state for an inode that has open files: the stream its writes go
 * through, shared by every handle of the inode so that a second descriptor sees the same
 * buffered data (read-your-writes, sizes, ordering).
 *
 * A struct node hangs off the inode record's data slot (lib/inode) while at least one handle
 * is open. It holds a descriptor of its own, so that an open file or directory whose name is
 * gone (unlinked, removed, renamed behind the view's back) still answers fstat, fchmod and the
 * like, as on a local filesystem. It is created by the first open, gets a stream at the first open
 * for writing, and goes away with the last release, which first waits until the stream has written
 * everything (normally nothing is left: close already waited in flush). The slot is only read or
 * changed under the inode table lock; a handle keeps its node pointer, valid until its release. The
 * stream pointer is set once under that lock and read without it by handles (atomically): it only
 * goes away when no handle is left.
 */
#include "tfs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct node {
	unsigned handles;
	int fd; /* a descriptor of the file, so an open file stays reachable without a name */
	struct stream *stream;
	uint64_t last_write_ns; /* CLOCK_REALTIME of the last write accepted, for mtime */
};

int node_attach(struct tfs *fs, fuse_ino_t ino, int writable, int fd, struct node **out)
{
	int err = 0;
	inode_lock(fs->inodes);
	void **slot = inode_data(fs->inodes, ino);
	if (slot == NULL) {
		err = -ESTALE;
		goto out;
	}
	struct node *n = *slot;
	if (n == NULL) {
		n = calloc(1, sizeof(*n));
		if (n == NULL) {
			err = -ENOMEM;
			goto out;
		}
		n->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
		if (n->fd < 0) {
			err = -errno;
			free(n);
			goto out;
		}
		*slot = n;
	}
	if (writable && n->stream == NULL) {
		/* The stream writes through its own descriptor of the file, so that it outlives
		 * the handle that happened to open it first. */
		int sfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
		struct stream *s = NULL;
		err = sfd < 0 ? -errno : stream_open(fs->streams, sfd, &s);
		if (err != 0) {
			if (n->handles == 0) {
				close(n->fd);
				free(n);
				*slot = NULL;
			}
			goto out;
		}
		__atomic_store_n(&n->stream, s, __ATOMIC_RELEASE);
	}
	n->handles++;
	*out = n;
out:
	inode_unlock(fs->inodes);
	return err;
}

/* Bytes still pending in stream s. */
static uint64_t pending(struct stream *s)
{
	struct stream_stats ss;
	stream_stats(s, &ss);
	return ss.buffered;
}

void node_detach(struct tfs *fs, fuse_ino_t ino, struct node *n)
{
	inode_lock(fs->inodes);
	/* The last handle out waits for the data while still holding its reference, so the node
	 * keeps answering for the file's size and nobody else can free it meanwhile. */
	while (n->handles == 1 && n->stream != NULL && pending(n->stream) != 0) {
		inode_unlock(fs->inodes);
		int err = stream_sync(n->stream);
		if (err != 0)
			fuse_log(FUSE_LOG_WARNING, "throttlefs: data of inode %llu failed: %s\n",
				 (unsigned long long)ino, strerror(-err));
		inode_lock(fs->inodes);
	}
	if (--n->handles != 0) {
		inode_unlock(fs->inodes);
		return;
	}
	void **slot = inode_data(fs->inodes, ino);
	if (slot != NULL && *slot == n)
		*slot = NULL;
	inode_unlock(fs->inodes);
	if (n->stream != NULL) {
		int err = stream_close(n->stream);
		if (err != 0)
			fuse_log(FUSE_LOG_WARNING,
				 "throttlefs: closing the stream of inode %llu: %s\n",
				 (unsigned long long)ino, strerror(-err));
	}
	close(n->fd);
	free(n);
}

int node_fd(struct tfs *fs, fuse_ino_t ino)
{
	int fd = -ENOENT;
	inode_lock(fs->inodes);
	void **slot = inode_data(fs->inodes, ino);
	if (slot != NULL && *slot != NULL) {
		fd = fcntl(((struct node *)*slot)->fd, F_DUPFD_CLOEXEC, 0);
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
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	uint64_t t = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	__atomic_store_n(&n->last_write_ns, t, __ATOMIC_RELAXED);
}

/* Shows data still in the stream as the file's: size up to its end, mtime of its last write,
 * blocks enough to hold it (so no tool mistakes the file for sparse). */
static void attr_pending(struct node *n, struct stat *st)
{
	struct stream *s = node_stream(n);
	if (s == NULL)
		return;
	struct stream_stats ss;
	stream_stats(s, &ss);
	if (ss.buffered == 0)
		return;
	uint64_t end = stream_end(s);
	if (end > (uint64_t)st->st_size)
		st->st_size = (off_t)end;
	uint64_t t = __atomic_load_n(&n->last_write_ns, __ATOMIC_RELAXED);
	struct timespec w = {.tv_sec = (time_t)(t / 1000000000ull),
			     .tv_nsec = (long)(t % 1000000000ull)};
	if (w.tv_sec > st->st_mtim.tv_sec ||
	    (w.tv_sec == st->st_mtim.tv_sec && w.tv_nsec > st->st_mtim.tv_nsec))
		st->st_mtim = st->st_ctim = w;
	blkcnt_t blocks = (st->st_size + 511) / 512;
	if (st->st_blocks < blocks)
		st->st_blocks = blocks;
}

void node_attr(struct tfs *fs, fuse_ino_t ino, struct node *n, struct stat *st)
{
	if (n != NULL) {
		attr_pending(n, st);
		return;
	}
	inode_lock(fs->inodes);
	void **slot = inode_data(fs->inodes, ino);
	if (slot != NULL && *slot != NULL)
		attr_pending(*slot, st);
	inode_unlock(fs->inodes);
}

int node_sync(struct node *n)
{
	struct stream *s = n ? node_stream(n) : NULL;
	return s ? stream_sync(s) : 0;
}

int node_sync_ino(struct tfs *fs, fuse_ino_t ino)
{
	/* A stream is only closed once its node has no handle; hold one while waiting. */
	struct node *n = NULL;
	inode_lock(fs->inodes);
	void **slot = inode_data(fs->inodes, ino);
	if (slot != NULL && *slot != NULL) {
		n = *slot;
		n->handles++;
	}
	inode_unlock(fs->inodes);
	if (n == NULL)
		return 0;
	int err = node_sync(n);
	node_detach(fs, ino, n);
	return err;
}
