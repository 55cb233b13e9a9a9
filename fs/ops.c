/*
 * ops.c - the FUSE low-level operations: each request translated into calls on the backing
 * store beneath the root, with node ids kept by lib/inode.
 *
 * Rules every operation keeps:
 *  - a reply is sent exactly once, on every path; errors go back as positive errno values;
 *  - every entry replied to the kernel (lookup, create, mkdir, mknod, symlink, link,
 *    readdirplus) adds one lookup to its record, and FORGET takes them away, so no record
 *    outlives the kernel's interest;
 *  - descriptors are held only by open files and directories (struct handle); everything else
 *    is resolved afresh from the node's path (backing.c) and closed before the reply;
 *  - names are used only relative to a directory descriptor, and never through a symlink.
 */
#include "tfs.h"
#include "loop.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

/* What fi->fh points to for files and directories alike: fd comes first so setattr, which the
 * kernel may send with the handle of a directory, finds the descriptor either way. */
struct handle {
	int fd;
	fuse_ino_t ino;
	struct node *node;		  /* regular files: the inode's shared state and stream */
	const struct stream_owner *owner; /* writable, opened by non-root: whom it writes as */
	int writable;
	DIR *dir; /* directories only */
	off_t dir_off;
	struct dirent *dir_entry;   /* read but not yet replied */
	struct handle *prev, *next; /* on tfs.handles, so that shutdown can close what is open */
	atomic_uint splicing;	    /* replies being spliced from fd right now (tfs_read) */
};

/* The preferred I/O size reported for regular files. cp sizes its buffer by it (the least common
 * multiple of the source's and destination's, at least 128 KiB each) and writes a big file in
 * writes of that size, one request each; but it allocates that buffer for every file, and glibc
 * maps and unmaps any buffer above 128 KiB per file (the aligned request is always a few bytes
 * above the threshold the last unmapping set), while a 128 KiB buffer comes from the heap once
 * the heap has grown (after 2000 files of cp -r here). Each such mapping costs a page fault
 * and an unmap, expensive on a virtual machine: cp -r of 10,000 files of 4 KiB over tmpfs
 * (interleaved runs, /work/abs.sh) took 2.18-2.65 s at 1 MiB and at 256 or 512 KiB, 1.53-1.87 s
 * at 128 KiB (bindfs 1.90-1.99). What 128 KiB costs is a big file's cp in 128 KiB requests
 * instead of 1 MiB: 1 GiB over tmpfs ran 1505-1634 MiB/s against 1873-2403 (mergerfs
 * 1244-1455). An earlier measurement over 2000 files saw no difference: all were mapped. */
#define TFS_BLKSIZE (128u << 10)

static struct tfs *tfs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static struct handle *handle_of(struct fuse_file_info *fi)
{
	return (struct handle *)(uintptr_t)fi->fh;
}

static void close_fd(int fd)
{
	if (fd >= 0 && close(fd) != 0 && errno != EINTR)
		fuse_log(FUSE_LOG_ERR, "throttlefs: close(%d): %s\n", fd, strerror(errno));
}

static void reply_err(fuse_req_t req, int err)
{
	fuse_reply_err(req, err < 0 ? -err : err);
}

static void attr_fixup(struct stat *st)
{
	if (S_ISREG(st->st_mode))
		st->st_blksize = TFS_BLKSIZE;
}

/* The metadata heap said ENOMEM (max_old_space reached even after a full collection): the
 * request that needed a record fails with ENOMEM, nothing else changes, and the log says so,
 * at most once a second (with the count of refusals since), so that a scan of a huge tree
 * cannot flood it. */
static void heap_refused(const struct tfs *fs, const char *what, const char *name)
{
	static atomic_uint_fast64_t refused, next_s; /* next_s: no line before this second */
	uint64_t n = atomic_fetch_add_explicit(&refused, 1, memory_order_relaxed) + 1;
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
	uint_fast64_t next = atomic_load_explicit(&next_s, memory_order_relaxed);
	if ((uint64_t)now.tv_sec < next ||
	    !atomic_compare_exchange_strong(&next_s, &next, (uint64_t)now.tv_sec + 1))
		return; /* logged this second, or another thread logs it */
	fuse_log(FUSE_LOG_ERR,
		 "throttlefs: metadata heap full (max_old_space=%llu bytes): %s '%s' refused "
		 "with ENOMEM (%llu refused so far); forgotten inodes free room\n",
		 (unsigned long long)fs->opt.max_old_space, what, name, (unsigned long long)n);
}

/* Fills e for the entry name of directory parent whose attributes are st, adding one lookup.
 * The file was stat'ed before its node could be known: if it is open for writing or has been
 * written through the view, it is stat'ed again (by fd when >= 0, else by name in dfd) after
 * the stream's snapshot (see node_pending: a stream that closed in between would otherwise
 * leave a size without its data; a listing ran into that under the soak test). */
static int entry_make(struct tfs *fs, fuse_ino_t parent, const char *name, int dfd, int fd,
		      struct stat *st, struct fuse_entry_param *e)
{
	uint64_t id, gen;
	int err = inode_link(fs->inodes, parent, name, st->st_dev, st->st_ino, &id, &gen);
	if (err == -ENOMEM)
		heap_refused(fs, "lookup of", name);
	if (err != 0)
		return err;
	struct node_pending p;
	node_pending(fs, id, NULL, &p);
	if (p.restat &&
	    (fd >= 0 ? fstat(fd, st) : fstatat(dfd, name, st, AT_SYMLINK_NOFOLLOW)) != 0) {
		err = -errno;
		inode_forget(fs->inodes, id, 1);
		return err;
	}
	node_pending_apply(&p, st);
	memset(e, 0, sizeof(*e));
	attr_fixup(st);
	e->ino = id;
	e->generation = gen;
	e->attr = *st;
	e->attr_timeout = fs->timeout;
	e->entry_timeout = fs->timeout;
	return 0;
}

/* Looks name up in the directory open as dfd. */
static int entry_lookup(struct tfs *fs, fuse_ino_t parent, int dfd, const char *name,
			struct fuse_entry_param *e)
{
	struct stat st;
	if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
		return -errno;
	return entry_make(fs, parent, name, dfd, -1, &st, e);
}

static void tfs_init(void *userdata, struct fuse_conn_info *conn)
{
	const struct tfs *fs = userdata;
	conn->want |= conn->capable & (FUSE_CAP_PARALLEL_DIROPS | FUSE_CAP_ATOMIC_O_TRUNC |
				       FUSE_CAP_ASYNC_READ | FUSE_CAP_READDIRPLUS);
	/* Every listing carries the entries' attributes, not only the first request of each
	 * (libfuse's default, READDIRPLUS_AUTO): after a plain READDIR the kernel looks each
	 * entry up again, one request per file, which is what find, ls -l, du, rsync, tar and rm
	 * -r then wait for. 2000 files, cold: find -printf of stat fields 0.081 -> 0.043 s on
	 * tmpfs, 0.097 -> 0.052 s on disk (1597 LOOKUPs -> none); a listing of names alone (ls
	 * -f) pays a stat per entry: 0.032 -> 0.048 s on disk. */
	conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
	/* Read data is sent through a pipe spliced from the backing file (tfs_read): no reply's
	 * payload passes through our memory. Receiving writes by splice is not asked for: see
	 * tfs_write_buf. */
	conn->want |= conn->capable & FUSE_CAP_SPLICE_WRITE;
	conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_MOVE);
	/* Writes pass through us; the kernel must not cache them behind our back. */
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
	conn->max_write = TFS_MAX_WRITE;
	/* As the max_read mount option says (TFS_MAX_READ from main.c, or the user's own):
	 * libfuse refuses an init that states another value. */
	conn->max_read = fs->max_read;
	conn->max_readahead = TFS_READAHEAD_KB << 10;
	conn->max_background = 64;
	conn->congestion_threshold = 48;
	conn->time_gran = 1;
}

static void tfs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct tfs *fs = tfs_of(req);
	struct fuse_entry_param e;
	struct fdcache_ref d;
	int err = backing_dir(fs, parent, &d);
	if (err != 0)
		return reply_err(req, err);
	err = entry_lookup(fs, parent, d.fd, name, &e);
	backing_put(fs, &d);
	if (err == -ENOENT) {
		/* A negative entry: the kernel remembers the absence for the timeout. */
		memset(&e, 0, sizeof(e));
		e.entry_timeout = fs->timeout;
		fuse_reply_entry(req, &e);
		return;
	}
	if (err != 0)
		return reply_err(req, err);
	fuse_reply_entry(req, &e);
}

/* What the kernel forgets is collected by the idle collector once enough of it has died
 * (collector.h): an idle daemon gives back a scanned tree without waiting for a lookup. */
static void tfs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	struct tfs *fs = tfs_of(req);
	if (inode_forget(fs->inodes, ino, nlookup))
		collector_kick(fs->collector);
	fuse_reply_none(req);
}

static void tfs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	struct tfs *fs = tfs_of(req);
	bool kick = false;
	for (size_t i = 0; i < count; i++)
		kick |= inode_forget(fs->inodes, forgets[i].ino, forgets[i].nlookup);
	if (kick)
		collector_kick(fs->collector);
	fuse_reply_none(req);
}

static void tfs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct tfs *fs = tfs_of(req);
	struct stat st;
	struct node_pending p;
	node_pending(fs, ino, fi ? handle_of(fi)->node : NULL, &p); /* before the stat */
	if (fi != NULL) {
		if (fstat(handle_of(fi)->fd, &st) != 0)
			return reply_err(req, errno);
	} else {
		int err = backing_stat(fs, ino, &st);
		if (err != 0)
			return reply_err(req, err);
	}
	node_pending_apply(&p, &st);
	attr_fixup(&st);
	fuse_reply_attr(req, &st, fs->timeout);
}

/* Applies the time part of a setattr: through fd when the file is open, else by path (the
 * node's own descriptor for files, its parent and name for a symlink, which has no proc link
 * that does not follow). */
static int setattr_times(struct tfs *fs, fuse_ino_t ino, int fd, int pfd, const struct stat *st,
			 const struct stat *attr, int valid)
{
	struct timespec tv[2] = {{.tv_nsec = UTIME_OMIT}, {.tv_nsec = UTIME_OMIT}};
	if (valid & FUSE_SET_ATTR_ATIME_NOW)
		tv[0].tv_nsec = UTIME_NOW;
	else if (valid & FUSE_SET_ATTR_ATIME)
		tv[0] = attr->st_atim;
	if (valid & FUSE_SET_ATTR_MTIME_NOW)
		tv[1].tv_nsec = UTIME_NOW;
	else if (valid & FUSE_SET_ATTR_MTIME)
		tv[1] = attr->st_mtim;
	if (fd >= 0)
		return futimens(fd, tv) == 0 ? 0 : -errno;
	if (S_ISLNK(st->st_mode)) {
		char name[256];
		struct fdcache_ref d;
		int err = backing_at(fs, ino, &d, name);
		if (err != 0)
			return err;
		err = utimensat(d.fd, name, tv, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : -errno;
		backing_put(fs, &d);
		return err;
	}
	char proc[32];
	backing_proc_path(pfd, proc);
	return utimensat(AT_FDCWD, proc, tv, 0) == 0 ? 0 : -errno;
}

static void tfs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int valid,
			struct fuse_file_info *fi)
{
	struct tfs *fs = tfs_of(req);
	int fd = fi ? handle_of(fi)->fd : -1;
	struct stat st;
	char proc[32];
	/* Buffered writes come first: a truncate or an explicit mtime must not be overtaken by
	 * data still on its way (cp -a sets the mtime right after its last write). */
	int err =
	    fi && handle_of(fi)->node ? node_sync(handle_of(fi)->node) : node_sync_ino(fs, ino);
	if (err != 0)
		return reply_err(req, err);
	int pfd = backing_open(fs, ino, O_PATH, &st);
	if (pfd < 0)
		return reply_err(req, pfd);
	backing_proc_path(pfd, proc);

	if (valid & FUSE_SET_ATTR_MODE) {
		int r = fd >= 0 ? fchmod(fd, attr->st_mode) : chmod(proc, attr->st_mode);
		if (r != 0) {
			err = -errno;
			goto out;
		}
	}
	if (valid & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		uid_t uid = (valid & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1;
		gid_t gid = (valid & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1;
		if (fchownat(pfd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) {
			err = -errno;
			goto out;
		}
	}
	if (valid & FUSE_SET_ATTR_SIZE) {
		int r = fd >= 0 ? ftruncate(fd, attr->st_size) : truncate(proc, attr->st_size);
		if (r != 0 || (err = cred_kill_priv(req, pfd)) != 0) {
			err = err ? err : -errno;
			goto out;
		}
		if (fi != NULL && handle_of(fi)->node != NULL)
			node_sized(handle_of(fi)->node, fs, (uint64_t)attr->st_size);
	}
	if (valid & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW |
		     FUSE_SET_ATTR_MTIME_NOW)) {
		err = setattr_times(fs, ino, fd, pfd, &st, attr, valid);
		if (err != 0)
			goto out;
	}
	if (fstat(pfd, &st) != 0)
		err = -errno;
out:
	close_fd(pfd);
	if (err != 0)
		return reply_err(req, err);
	attr_fixup(&st);
	fuse_reply_attr(req, &st, fs->timeout);
}

static void tfs_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct tfs *fs = tfs_of(req);
	char buf[PATH_MAX + 1];
	int fd = backing_open(fs, ino, O_PATH, NULL);
	if (fd < 0)
		return reply_err(req, fd);
	ssize_t n = readlinkat(fd, "", buf, sizeof(buf));
	int err = n < 0 ? -errno : 0;
	close_fd(fd);
	if (err != 0)
		return reply_err(req, err);
	if ((size_t)n >= sizeof(buf))
		return reply_err(req, ENAMETOOLONG);
	buf[n] = '\0';
	fuse_reply_readlink(req, buf);
}

/* The shape of every call that makes a new name: do it in the parent's directory, then look
 * the result up to reply with its entry. */
enum make_kind { MAKE_NODE, MAKE_DIR, MAKE_SYMLINK };

static void make_entry(fuse_req_t req, fuse_ino_t parent, const char *name, enum make_kind kind,
		       mode_t mode, dev_t rdev, const char *link)
{
	struct tfs *fs = tfs_of(req);
	struct fuse_entry_param e;
	struct fdcache_ref d;
	int err = backing_dir(fs, parent, &d);
	if (err != 0)
		return reply_err(req, err);
	int r;
	switch (kind) {
	case MAKE_DIR:
		r = mkdirat(d.fd, name, mode);
		break;
	case MAKE_SYMLINK:
		r = symlinkat(link, d.fd, name);
		break;
	default:
		r = mknodat(d.fd, name, mode, rdev);
		break;
	}
	err = r != 0 ? -errno : entry_lookup(fs, parent, d.fd, name, &e);
	backing_put(fs, &d);
	if (err != 0)
		return reply_err(req, err);
	fuse_reply_entry(req, &e);
}

static void do_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	make_entry(req, parent, name, MAKE_NODE, mode, rdev, NULL);
}

static void do_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	make_entry(req, parent, name, MAKE_DIR, mode, 0, NULL);
}

static void do_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	make_entry(req, parent, name, MAKE_SYMLINK, 0, 0, link);
}

static void do_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	struct tfs *fs = tfs_of(req);
	struct fuse_entry_param e;
	char proc[32];
	int fd = backing_open(fs, ino, O_PATH, NULL);
	if (fd < 0)
		return reply_err(req, fd);
	struct fdcache_ref d;
	int err = backing_dir(fs, newparent, &d);
	if (err == 0) {
		backing_proc_path(fd, proc);
		err = linkat(AT_FDCWD, proc, d.fd, newname, AT_SYMLINK_FOLLOW) != 0
			  ? -errno
			  : entry_lookup(fs, newparent, d.fd, newname, &e);
		backing_put(fs, &d);
	}
	close_fd(fd);
	if (err != 0)
		return reply_err(req, err);
	fuse_reply_entry(req, &e);
}

/*
 * The store reuses the inode number of a file whose last name is gone, and the daemon knows
 * files by (dev, ino) without holding them open: so when a change through the view removes a
 * file's last name, its record leaves the index (inode_unhash), and a new file with the same
 * number gets a node of its own instead of the old file's cached attributes. `victim` is the
 * name's stat taken just before the change (st_nlink 0: nothing was there).
 */
static void forget_if_gone(struct tfs *fs, const struct stat *victim)
{
	if (victim->st_nlink != 0 && (S_ISDIR(victim->st_mode) || victim->st_nlink <= 1))
		inode_unhash(fs->inodes, victim->st_dev, victim->st_ino);
}

/* The stat of name in dfd before a change removes it; st_nlink 0 when there is none. */
static void victim_stat(int dfd, const char *name, struct stat *st)
{
	if (fstatat(dfd, name, st, AT_SYMLINK_NOFOLLOW) != 0)
		memset(st, 0, sizeof(*st));
}

/* Files of at most this many 512-byte blocks (1 MiB) are freed at once by a store in memory. */
#define CHEAP_FREE_BLOCKS 2048

static void remove_entry(fuse_req_t req, fuse_ino_t parent, const char *name, int flags)
{
	struct tfs *fs = tfs_of(req);
	struct fdcache_ref d;
	struct stat victim;
	int err = backing_dir(fs, parent, &d);
	if (err != 0)
		return reply_err(req, err);
	/* The last unlink of a file makes the store free it inside unlinkat (on ext4 that is
	 * most of the call: ~40 us for a 4 KiB file; on tmpfs, a page at a time). A reference
	 * held across the unlink defers the freeing to its close, after the reply, so the caller
	 * (rm -r) goes on with its next request while this thread does it. A small file in a
	 * store in memory is freed at once and cheaply: there the reference would only cost two
	 * system calls of the four. */
	victim_stat(d.fd, name, &victim);
	bool cheap = fs->memory_dev != 0 && victim.st_dev == fs->memory_dev &&
		     victim.st_blocks <= CHEAP_FREE_BLOCKS;
	int ref = flags == 0 && !cheap ? openat(d.fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC) : -1;
	err = unlinkat(d.fd, name, flags) != 0 ? -errno : 0;
	if (err == 0)
		forget_if_gone(fs, &victim);
	backing_put(fs, &d);
	reply_err(req, err);
	close_fd(ref);
}

static void do_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	remove_entry(req, parent, name, 0);
}

static void do_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	remove_entry(req, parent, name, AT_REMOVEDIR);
}

/* After a rename, the record of the file now at (dfd, name) follows it. */
static int rename_follow(struct tfs *fs, int dfd, fuse_ino_t parent, const char *name)
{
	struct stat st;
	if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
		return -errno;
	int err = inode_move(fs->inodes, st.st_dev, st.st_ino, parent, name);
	if (err == -ENOMEM)
		heap_refused(fs, "rename to", name);
	return err;
}

static void do_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned int flags)
{
	struct tfs *fs = tfs_of(req);
	struct fdcache_ref d, nd;
	int err = backing_dir(fs, parent, &d);
	if (err != 0)
		return reply_err(req, err);
	err = backing_dir(fs, newparent, &nd);
	if (err != 0) {
		backing_put(fs, &d);
		return reply_err(req, err);
	}
	struct stat victim, moved;
	victim_stat(nd.fd, newname, &victim); /* what the rename replaces, if anything */
	victim_stat(d.fd, name, &moved);
	if ((flags & RENAME_EXCHANGE) ||
	    (victim.st_ino == moved.st_ino && victim.st_dev == moved.st_dev))
		victim.st_nlink = 0; /* nothing dies: swapped, or two names of one file */
	if (renameat2(d.fd, name, nd.fd, newname, flags) != 0) {
		err = -errno;
	} else {
		forget_if_gone(fs, &victim);
		err = rename_follow(fs, nd.fd, newparent, newname);
		if (err == 0 && (flags & RENAME_EXCHANGE))
			err = rename_follow(fs, d.fd, parent, name);
		if (err != 0) {
			/* The rename itself happened; a record that could not follow goes stale. */
			fuse_log(FUSE_LOG_WARNING, "throttlefs: rename of '%s': %s\n", newname,
				 strerror(-err));
			err = 0;
		}
	}
	backing_put(fs, &nd);
	backing_put(fs, &d);
	reply_err(req, err);
}

/* The flags to open a backing file with. O_APPEND is the kernel's business: it sends each
 * write at the end it knows, and the stream writes at the offsets it is given. O_DIRECT would
 * make the stream's writes of buffered data fail on alignment. */
static int backing_flags(int flags)
{
	return flags & ~(O_APPEND | O_DIRECT | O_CREAT | O_EXCL | O_NOCTTY);
}

/* Pins the inode while h is open and joins the inode's node. */
static int handle_attach(struct tfs *fs, struct handle *h, int flags)
{
	int err = inode_pin(fs->inodes, h->ino);
	if (err != 0)
		return err;
	h->writable = !(flags & O_DIRECTORY) && (flags & O_ACCMODE) != O_RDONLY;
	err = node_attach(fs, h->ino, h->writable, h->fd, &h->node, &h->owner);
	if (err != 0) {
		inode_unpin(fs->inodes, h->ino);
		return err;
	}
	pthread_mutex_lock(&fs->handles_lock);
	h->prev = NULL;
	h->next = fs->handles;
	if (fs->handles != NULL)
		fs->handles->prev = h;
	fs->handles = h;
	pthread_mutex_unlock(&fs->handles_lock);
	return 0;
}

/* Opens the backing file of ino for a FUSE open or opendir and makes its handle. */
static int handle_open(struct tfs *fs, fuse_ino_t ino, int flags, struct handle **out)
{
	struct handle *h = calloc(1, sizeof(*h));
	if (h == NULL)
		return -ENOMEM;
	h->fd = backing_open(fs, ino, backing_flags(flags), NULL);
	h->ino = ino;
	int err = h->fd < 0 ? h->fd : handle_attach(fs, h, flags);
	if (err != 0) {
		close_fd(h->fd);
		free(h);
		return err;
	}
	*out = h;
	return 0;
}

static void handle_close(struct tfs *fs, struct handle *h)
{
	pthread_mutex_lock(&fs->handles_lock);
	if (h->prev != NULL)
		h->prev->next = h->next;
	else
		fs->handles = h->next;
	if (h->next != NULL)
		h->next->prev = h->prev;
	pthread_mutex_unlock(&fs->handles_lock);
	if (h->node != NULL)
		node_detach(fs, h->node);
	/* A read's reply reaches the kernel from inside fuse_reply_data, and the kernel may let
	 * the file go (RELEASE, here on another thread) before that call has returned: the
	 * descriptor is closed only once no splice from it is still under way. */
	while (atomic_load_explicit(&h->splicing, memory_order_acquire) != 0)
		sched_yield();
	if (h->dir != NULL)
		closedir(h->dir); /* closes h->fd too */
	else
		close_fd(h->fd);
	inode_unpin(fs->inodes, h->ino);
	free(h);
}

/* Hands h to the kernel in fi. A file open for writing only gets direct I/O: the kernel then
 * passes the writer's pages to us instead of first copying them into its page cache (a third
 * of the cost of a large write), and nothing is lost, since a write-only descriptor can
 * neither read nor be mapped. Other opens keep the page cache (reads, mmap). */
static void file_info_set(struct fuse_file_info *fi, struct handle *h)
{
	fi->fh = (uintptr_t)h;
	if ((fi->flags & O_ACCMODE) == O_WRONLY)
		fi->direct_io = 1;
}

static void do_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct tfs *fs = tfs_of(req);
	struct handle *h;
	/* A truncating open must not be overtaken by data still buffered from another
	 * descriptor, as setattr must not. */
	if (fi->flags & O_TRUNC) {
		int serr = node_sync_ino(fs, ino);
		if (serr != 0) /* that error is its own writers'; this open truncates anyway */
			fuse_log(FUSE_LOG_DEBUG,
				 "throttlefs: open(O_TRUNC) after failed writes: %s\n",
				 strerror(-serr));
	}
	int err = handle_open(fs, ino, fi->flags, &h);
	if (err != 0)
		return reply_err(req, err);
	file_info_set(fi, h);
	if (fuse_reply_open(req, fi) != 0)
		handle_close(fs, h);
}

static void do_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	struct tfs *fs = tfs_of(req);
	struct fuse_entry_param e;
	struct fdcache_ref d;
	int err = backing_dir(fs, parent, &d);
	if (err != 0)
		return reply_err(req, err);
	struct handle *h = calloc(1, sizeof(*h));
	err = -ENOMEM;
	if (h == NULL)
		goto out;
	/* Exclusive first, to know whether the file is new: a new file has no capability to
	 * look up before each write. One that appeared in the store meanwhile is just opened. */
	int flags = backing_flags(fi->flags) | O_CREAT | O_NOFOLLOW | O_CLOEXEC;
	int created = 1;
	h->fd = openat(d.fd, name, flags | O_EXCL, mode);
	if (h->fd < 0 && errno == EEXIST && !(fi->flags & O_EXCL)) {
		created = 0;
		h->fd = openat(d.fd, name, flags, mode);
	}
	if (h->fd < 0) {
		err = -errno;
		goto out;
	}
	struct stat st;
	if (fstat(h->fd, &st) != 0) {
		err = -errno;
		goto out;
	}
	err = entry_make(fs, parent, name, -1, h->fd, &st, &e);
	if (err != 0)
		goto out;
	h->ino = e.ino;
	err = handle_attach(fs, h, fi->flags);
	if (err != 0) {
		inode_forget(fs->inodes, e.ino, 1);
		goto out;
	}
	if (created)
		node_cap_set(fs, e.ino, NODE_CAP_NONE);
	backing_put(fs, &d);
	file_info_set(fi, h);
	if (fuse_reply_create(req, &e, fi) != 0) {
		inode_forget(fs->inodes, e.ino, 1);
		handle_close(fs, h);
	}
	return;
out:
	if (h != NULL)
		close_fd(h->fd);
	free(h);
	backing_put(fs, &d);
	reply_err(req, err);
}

/*
 * Reads that must be assembled in memory (a range with data still in a stream, the source
 * of copy_file_range) use buffers of RBUF_SIZE bytes, the largest read request. A few are kept for
 * reuse under a lock and the rest are freed, so the daemon holds at most RBUF_KEEP of them whatever
 * the number of worker threads: a buffer per thread (as before) grew RSS by 1 MiB for every thread
 * a burst of readers created. Allocating one per request instead would map, fault in and unmap it
 * each time, and the unmapping's TLB shootdowns cost more than the copy. Plain reads need no buffer
 * at all: they are spliced from the backing file (tfs_read).
 */
#define RBUF_SIZE ((size_t)TFS_MAX_READ)
#define RBUF_KEEP 2

static pthread_mutex_t rbuf_lock = PTHREAD_MUTEX_INITIALIZER;
static char *rbuf_kept[RBUF_KEEP];
static unsigned rbuf_nkept;

/* A buffer of at least size bytes, or NULL; give it back with rbuf_put(b, size). Reads are
 * at most RBUF_SIZE unless the user mounted with a larger max_read: such a buffer is
 * allocated for the one request. */
static char *rbuf_get(size_t size)
{
	char *b = NULL;
	if (size > RBUF_SIZE)
		return malloc(size);
	pthread_mutex_lock(&rbuf_lock);
	if (rbuf_nkept > 0)
		b = rbuf_kept[--rbuf_nkept];
	pthread_mutex_unlock(&rbuf_lock);
	return b ? b : malloc(RBUF_SIZE);
}

static void rbuf_put(char *b, size_t size)
{
	if (size > RBUF_SIZE)
		return free(b);
	pthread_mutex_lock(&rbuf_lock);
	if (rbuf_nkept < RBUF_KEEP) {
		rbuf_kept[rbuf_nkept++] = b;
		b = NULL;
	}
	pthread_mutex_unlock(&rbuf_lock);
	free(b);
}

static void tfs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	(void)ino;
	struct handle *h = handle_of(fi);
	struct stream *s = h->node ? node_stream(h->node) : NULL;
	/* Nothing pending at or beyond off: the backing file alone has the bytes (and the end
	 * of file) this read must see, so they are spliced from it into the reply, through a
	 * pipe, never copied into our memory. A write accepted after this check is concurrent
	 * with the read, and either answer is right. (No SPLICE_F_MOVE: moving would steal the
	 * pages from the backing file's page cache.) */
	if (s == NULL || stream_end(s) <= (uint64_t)off) {
		struct fuse_bufvec bv = FUSE_BUFVEC_INIT(size);
		bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
		bv.buf[0].fd = h->fd;
		bv.buf[0].pos = off;
		atomic_fetch_add_explicit(&h->splicing, 1, memory_order_relaxed);
		fuse_reply_data(req, &bv, 0);
		atomic_fetch_sub_explicit(&h->splicing, 1, memory_order_release);
		return;
	}
	/* Otherwise data still in the stream is overlaid on what the store has
	 * (read-your-writes). */
	char *buf = rbuf_get(size);
	if (buf == NULL)
		return reply_err(req, ENOMEM);
	ssize_t n = stream_read(s, h->fd, buf, size, (uint64_t)off);
	if (n < 0)
		reply_err(req, (int)n);
	else
		fuse_reply_buf(req, buf, (size_t)n);
	rbuf_put(buf, size);
}

/* A write the stream accepted but parked: its reply waits for the stream's callback. */
struct parked_write {
	fuse_req_t req;
	size_t size;
};

static void write_done(void *arg, int err)
{
	struct parked_write *p = arg;
	if (err != 0)
		reply_err(p->req, err);
	else
		fuse_reply_write(p->req, p->size);
	free(p);
}

/* The fill of a write: the request's bytes, taken from libfuse's buffer vector (a pipe
 * spliced from /dev/fuse, or memory), which fuse_buf_copy advances as it goes. */
static int fill_from_bufvec(void *ctx, void *dst, size_t len)
{
	struct fuse_bufvec *src = ctx;
	struct fuse_bufvec d = FUSE_BUFVEC_INIT(len);
	d.buf[0].mem = dst;
	ssize_t n = fuse_buf_copy(&d, src, 0);
	if (n < 0)
		return (int)n;
	return (size_t)n == len ? 0 : -EIO;
}

/* loop_after's forms of stream_help and stream_behind. */
static void help_stream(void *s)
{
	stream_help(s);
}

static void behind_stream(void *s)
{
	stream_behind(s);
}

/* Hands the bytes of data (fuse_buf_size(data) of them, for offset off) to the stream of h
 * and replies now or once the stream has room (backpressure: the writer stays blocked in
 * write(2) meanwhile, no thread is held). */
static void stream_submit(fuse_req_t req, struct handle *h, struct fuse_bufvec *data, off_t off)
{
	size_t size = fuse_buf_size(data);
	struct stream *s = h->node ? node_stream(h->node) : NULL;
	if (s == NULL)
		return reply_err(req, EBADF);
	int err = cred_kill_priv(req, h->fd);
	if (err != 0)
		return reply_err(req, err);
	struct parked_write *p = malloc(sizeof(*p));
	if (p == NULL)
		return reply_err(req, ENOMEM);
	p->req = req;
	p->size = size;
	node_wrote(h->node);
	if (h->owner != NULL) /* never NULL'ed here: root's writes do not widen others' */
		stream_set_owner(s, h->owner);
	/* A large write skips the copy into the stream's blocks. Over a store in memory it is
	 * lent: queued in its receive buffer and answered at once, so the store's copy overlaps
	 * the receipt of the next request (dd bs=1M of 1 GiB over tmpfs, 3-4 interleaved
	 * rounds: 2038-2460 MiB/s against 1520-1968 written through, mergerfs 1798-2073, at
	 * 0.49-0.58 daemon cpu-s/GiB against 0.47-0.62). Else, to an idle stream, it goes
	 * straight from the request's buffer before the answer (write-through: dd over tmpfs
	 * 0.34-0.38 cpu-s/GiB against 0.43-0.52 buffered); over a disk its write-behind waits
	 * until the writer has its answer. Lent over a disk, a copy ran at 1118-1372 MiB/s
	 * against 1754-1953 written through: the drain of a lent write waits for the device
	 * behind it, and the next lent writes wait for the drain. */
	int r = STREAM_THROUGH_NO;
	if (data->count == 1 && data->idx == 0 && data->off == 0 &&
	    !(data->buf[0].flags & FUSE_BUF_IS_FD)) {
		void *loan = size >= STREAM_THROUGH_MIN ? loop_lend() : NULL;
		if (loan != NULL) {
			r = stream_write_lent(s, data->buf[0].mem, size, (uint64_t)off,
					      loop_give_back, loan);
			if (r == STREAM_THROUGH_NO || r < 0)
				loop_unlend(loan);
		}
		if (r == STREAM_THROUGH_NO) {
			struct iovec iov = {data->buf[0].mem, size};
			r = stream_write_through(s, &iov, 1, (uint64_t)off);
		}
	}
	if (r == STREAM_THROUGH_NO)
		r = stream_write_from(s, size, (uint64_t)off, fill_from_bufvec, data, write_done,
				      p);
	if (r == STREAM_PARKED)
		return; /* p belongs to the callback now */
	free(p);
	if (r < 0)
		return reply_err(req, r);
	fuse_reply_write(req, size);
	/* The writer has its answer; this thread now writes the data, instead of waking a
	 * drain thread to do it (see stream_write), once the request's receive buffer is back
	 * in the pool (loop_after). */
	if (r == STREAM_HELP)
		loop_after(help_stream, s);
	else if (r == STREAM_BEHIND)
		loop_after(behind_stream, s);
}

/* The write's data arrives in a receive buffer of the loop's pool (loop.c) and is copied
 * once, into the stream's blocks, or written to the store from it (stream_submit); the buffer
 * goes back to the pool when this returns, or, lent to the stream, once written. Receiving it
 * by splice instead would need a pipe larger than the 1 MiB an unprivileged pipe may hold
 * (libfuse sizes it for its largest possible request), so it is not asked for; what bounds the
 * receive buffers' memory is TFS_RECV_BUFFERS times TFS_MAX_WRITE (tfs.h). */
static void tfs_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *data, off_t off,
			  struct fuse_file_info *fi)
{
	(void)ino;
	stream_submit(req, handle_of(fi), data, off);
}

static void flush_done(void *arg, int err)
{
	reply_err((fuse_req_t)arg, err);
}

static void tfs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	struct handle *h = handle_of(fi);
	struct stream *s = h->node && h->writable ? node_stream(h->node) : NULL;
	if (s != NULL) {
		/* close(2) returns once the data has reached the store, with its error. */
		int r = stream_wait_empty(s, flush_done, req);
		if (r != STREAM_PARKED)
			reply_err(req, r);
		return;
	}
	/* Closing a duplicate reports errors that some stores (NFS) only give at close. */
	int fd = dup(h->fd);
	int err = fd < 0 || close(fd) != 0 ? errno : 0;
	reply_err(req, err);
}

static void tfs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	handle_close(tfs_of(req), handle_of(fi));
	fuse_reply_err(req, 0);
}

struct parked_sync {
	fuse_req_t req;
	int fd;
	int datasync;
};

/* fsync once the stream is empty: the data first reaches the file, then the disk. */
static void sync_done(void *arg, int err)
{
	struct parked_sync *p = arg;
	if (err == 0 && (p->datasync ? fdatasync(p->fd) : fsync(p->fd)) != 0)
		err = -errno;
	reply_err(p->req, err);
	free(p);
}

static void tfs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	(void)ino;
	struct handle *h = handle_of(fi);
	struct parked_sync *p = malloc(sizeof(*p));
	if (p == NULL)
		return reply_err(req, ENOMEM);
	*p = (struct parked_sync){.req = req, .fd = h->fd, .datasync = datasync};
	struct stream *s = h->node ? node_stream(h->node) : NULL;
	int r = s ? stream_wait_empty(s, sync_done, p) : 0;
	if (r != STREAM_PARKED)
		sync_done(p, r);
}

static void tfs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct tfs *fs = tfs_of(req);
	struct handle *h;
	int err = handle_open(fs, ino, O_RDONLY | O_DIRECTORY, &h);
	if (err != 0)
		return reply_err(req, err);
	h->dir = fdopendir(h->fd);
	if (h->dir == NULL) {
		err = errno;
		handle_close(fs, h);
		return reply_err(req, err);
	}
	fi->fh = (uintptr_t)h;
	if (fuse_reply_open(req, fi) != 0)
		handle_close(fs, h);
}

static int is_dot_or_dotdot(const char *name)
{
	return name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'));
}

/* readdir and readdirplus: fill one reply buffer from the directory stream, resuming at off. */
static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi, int plus)
{
	struct tfs *fs = tfs_of(req);
	struct handle *h = handle_of(fi);
	char *buf = calloc(1, size);
	size_t used = 0;
	int err = 0;
	if (buf == NULL)
		return reply_err(req, ENOMEM);
	if (off != h->dir_off) {
		seekdir(h->dir, off);
		h->dir_entry = NULL;
		h->dir_off = off;
	}
	for (;;) {
		if (h->dir_entry == NULL) {
			errno = 0;
			h->dir_entry = readdir(h->dir);
			if (h->dir_entry == NULL) {
				err = errno ? -errno : 0;
				break;
			}
		}
		struct dirent *d = h->dir_entry;
		off_t next = d->d_off;
		size_t n;
		if (plus) {
			struct fuse_entry_param e = {0};
			bool dots = is_dot_or_dotdot(d->d_name);
			err = dots ? 0 : entry_lookup(fs, ino, h->fd, d->d_name, &e);
			if (err == -ENOENT) { /* gone since readdir: skip it */
				err = 0;
				h->dir_entry = NULL;
				h->dir_off = next;
				continue;
			}
			if (dots || err != 0) {
				/* The name without attributes (node id 0). For an entry whose
				 * record or stat failed (a full metadata heap, a store that cannot
				 * stat it), the kernel looks it up when it is used, and that lookup
				 * reports the error: a listing of names must not fail for want of
				 * what it did not ask for. */
				e = (struct fuse_entry_param){0};
				e.attr.st_ino = d->d_ino;
				e.attr.st_mode = (mode_t)d->d_type << 12;
				err = 0;
			}
			n = fuse_add_direntry_plus(req, buf + used, size - used, d->d_name, &e,
						   next);
			if (n > size - used) {
				if (e.ino != 0)
					inode_forget(fs->inodes, e.ino, 1);
				break;
			}
		} else {
			struct stat st = {.st_ino = d->d_ino, .st_mode = (mode_t)d->d_type << 12};
			n = fuse_add_direntry(req, buf + used, size - used, d->d_name, &st, next);
			if (n > size - used)
				break;
		}
		used += n;
		h->dir_entry = NULL;
		h->dir_off = next;
	}
	/* An error after some entries is reported by the next call, which starts with it. */
	if (err != 0 && used == 0)
		reply_err(req, err);
	else
		fuse_reply_buf(req, buf, used);
	free(buf);
}

static void tfs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, 0);
}

static void tfs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			    struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, 1);
}

static void tfs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	handle_close(tfs_of(req), handle_of(fi));
	fuse_reply_err(req, 0);
}

static void tfs_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	(void)ino;
	int fd = handle_of(fi)->fd;
	int r = datasync ? fdatasync(fd) : fsync(fd);
	reply_err(req, r != 0 ? errno : 0);
}

static void tfs_statfs(fuse_req_t req, fuse_ino_t ino)
{
	(void)ino;
	struct statvfs sv;
	if (fstatvfs(tfs_of(req)->root_fd, &sv) != 0)
		return reply_err(req, errno);
	fuse_reply_statfs(req, &sv);
}

static void tfs_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
	struct tfs *fs = tfs_of(req);
	int fd = backing_open(fs, ino, O_PATH, NULL);
	if (fd < 0)
		return reply_err(req, fd);
	char proc[32];
	backing_proc_path(fd, proc);
	int err = faccessat(AT_FDCWD, proc, mask, 0) != 0 ? errno : 0;
	close_fd(fd);
	reply_err(req, err);
}

/*
 * Extended attributes pass through to the backing file. A path is needed (the f*xattr calls
 * refuse O_PATH descriptors): the node's proc link for files and directories, and for a
 * symlink, whose proc link would be followed, its name in the parent with the l*xattr calls.
 */
enum xattr_op { XATTR_GET, XATTR_SET, XATTR_LIST, XATTR_REMOVE };

struct xattr_call {
	enum xattr_op op;
	const char *name;
	const char *value;
	char *buf;
	size_t size;
	int flags;
};

static ssize_t xattr_on_path(const char *path, int nofollow, const struct xattr_call *c)
{
	ssize_t r;
	switch (c->op) {
	case XATTR_GET:
		r = nofollow ? lgetxattr(path, c->name, c->buf, c->size)
			     : getxattr(path, c->name, c->buf, c->size);
		break;
	case XATTR_SET:
		r = nofollow ? lsetxattr(path, c->name, c->value, c->size, c->flags)
			     : setxattr(path, c->name, c->value, c->size, c->flags);
		break;
	case XATTR_LIST:
		r = nofollow ? llistxattr(path, c->buf, c->size) : listxattr(path, c->buf, c->size);
		break;
	default:
		r = nofollow ? lremovexattr(path, c->name) : removexattr(path, c->name);
		break;
	}
	return r < 0 ? -errno : r;
}

static ssize_t xattr_call(struct tfs *fs, fuse_ino_t ino, const struct xattr_call *c)
{
	struct stat st;
	char path[32 + 1 + 256];
	int fd = backing_open(fs, ino, O_PATH, &st);
	if (fd < 0)
		return fd;
	ssize_t r;
	if (S_ISLNK(st.st_mode)) {
		char name[256];
		struct fdcache_ref d;
		int err = backing_at(fs, ino, &d, name);
		if (err != 0) {
			close_fd(fd);
			return err;
		}
		backing_proc_path(d.fd, path);
		strcat(path, "/");
		strcat(path, name);
		r = xattr_on_path(path, 1, c);
		backing_put(fs, &d);
	} else {
		backing_proc_path(fd, path);
		r = xattr_on_path(path, 0, c);
	}
	close_fd(fd);
	return r;
}

/* Replies to a get or list: the size when asked for it, else the bytes. */
static void reply_xattr(fuse_req_t req, ssize_t r, const char *buf, size_t size)
{
	if (r < 0)
		reply_err(req, r);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)r);
	else
		fuse_reply_buf(req, buf, (size_t)r);
}

#define XATTR_CAPS "security.capability"

static void tfs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct tfs *fs = tfs_of(req);
	if (vattr_getxattr(req, fs, ino, name, size))
		return;
	/* The kernel asks for security.capability before every write(2): once the file is
	 * known to have none, say so at once. */
	int caps = strcmp(name, XATTR_CAPS) == 0;
	if (caps && node_cap_get(fs, ino) == NODE_CAP_NONE)
		return reply_err(req, ENODATA);
	char *buf = size ? malloc(size) : NULL;
	if (size && buf == NULL)
		return reply_err(req, ENOMEM);
	struct xattr_call c = {.op = XATTR_GET, .name = name, .buf = buf, .size = size};
	ssize_t r = xattr_call(fs, ino, &c);
	if (caps && (r >= 0 || r == -ENODATA))
		node_cap_set(fs, ino, r == -ENODATA ? NODE_CAP_NONE : NODE_CAP_PRESENT);
	reply_xattr(req, r, buf, size);
	free(buf);
}

static void tfs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	char *buf = size ? malloc(size) : NULL;
	if (size && buf == NULL)
		return reply_err(req, ENOMEM);
	struct xattr_call c = {.op = XATTR_LIST, .buf = buf, .size = size};
	reply_xattr(req, xattr_call(tfs_of(req), ino, &c), buf, size);
	free(buf);
}

static void do_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			size_t size, int flags)
{
	struct tfs *fs = tfs_of(req);
	if (vattr_setxattr(req, fs, ino, name, value, size))
		return;
	struct xattr_call c = {
	    .op = XATTR_SET, .name = name, .value = value, .size = size, .flags = flags};
	ssize_t r = xattr_call(fs, ino, &c);
	if (strcmp(name, XATTR_CAPS) == 0)
		node_cap_set(fs, ino, NODE_CAP_UNKNOWN);
	reply_err(req, r < 0 ? (int)r : 0);
}

static void do_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	struct tfs *fs = tfs_of(req);
	if (vattr_removexattr(req, fs, ino, name))
		return;
	struct xattr_call c = {.op = XATTR_REMOVE, .name = name};
	ssize_t r = xattr_call(fs, ino, &c);
	if (strcmp(name, XATTR_CAPS) == 0)
		node_cap_set(fs, ino, NODE_CAP_UNKNOWN);
	reply_err(req, r < 0 ? (int)r : 0);
}

static void tfs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
			  struct fuse_file_info *fi)
{
	(void)ino;
	struct handle *h = handle_of(fi);
	int err = node_sync(h->node);
	if (err == 0 && fallocate(h->fd, mode, off, len) != 0)
		err = -errno;
	if (err == 0 && !(mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_COLLAPSE_RANGE)))
		node_sized(h->node, tfs_of(req), (uint64_t)(off + len));
	reply_err(req, err);
}

/* copy_file_range inside the view goes through the destination's stream like any write, one
 * piece per request: the reply may be short, and the caller asks again for the rest. */
#define COPY_PIECE RBUF_SIZE

static void tfs_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
				struct fuse_file_info *fi_in, fuse_ino_t ino_out, off_t off_out,
				struct fuse_file_info *fi_out, size_t len, int flags)
{
	(void)ino_in;
	(void)ino_out;
	if (flags != 0)
		return reply_err(req, EINVAL);
	struct handle *in = handle_of(fi_in);
	size_t size = len < COPY_PIECE ? len : COPY_PIECE;
	char *buf = rbuf_get(size);
	if (buf == NULL)
		return reply_err(req, ENOMEM);
	struct stream *s = in->node ? node_stream(in->node) : NULL;
	ssize_t n = s ? stream_read(s, in->fd, buf, size, (uint64_t)off_in)
		      : pread(in->fd, buf, size, off_in);
	if (n < 0) {
		reply_err(req, s ? (int)n : errno);
	} else if (n == 0) {
		fuse_reply_write(req, 0);
	} else {
		struct fuse_bufvec bv = FUSE_BUFVEC_INIT((size_t)n);
		bv.buf[0].mem = buf;
		stream_submit(req, handle_of(fi_out), &bv, off_out);
	}
	rbuf_put(buf, size);
}

static void tfs_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		      struct fuse_file_info *fi)
{
	(void)ino;
	struct handle *h = handle_of(fi);
	int err = node_sync(h->node); /* holes and data as the store will hold them */
	if (err != 0)
		return reply_err(req, err);
	off_t r = lseek(h->fd, off, whence);
	if (r < 0)
		return reply_err(req, errno);
	fuse_reply_lseek(req, r);
}

void ops_close_all(struct tfs *fs)
{
	for (;;) {
		pthread_mutex_lock(&fs->handles_lock);
		struct handle *h = fs->handles;
		pthread_mutex_unlock(&fs->handles_lock);
		if (h == NULL)
			break;
		handle_close(fs, h);
	}
}

/*
 * Requests that create, remove, rename or open run with the caller's credentials (cred.c), so
 * new files belong to the caller and the backing store applies its own rules to the caller.
 */
static int caller_begin(fuse_req_t req, struct cred *c)
{
	int err = cred_enter(req, c);
	if (err != 0)
		reply_err(req, err);
	return err;
}

#define AS_CALLER(call)                                                                            \
	do {                                                                                       \
		struct cred c_;                                                                    \
		if (caller_begin(req, &c_) == 0) {                                                 \
			call;                                                                      \
			cred_leave(&c_);                                                           \
		}                                                                                  \
	} while (0)

static void tfs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	AS_CALLER(do_mknod(req, parent, name, mode, rdev));
}

static void tfs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	AS_CALLER(do_mkdir(req, parent, name, mode));
}

static void tfs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	AS_CALLER(do_symlink(req, link, parent, name));
}

static void tfs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	AS_CALLER(do_link(req, ino, newparent, newname));
}

static void tfs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	AS_CALLER(do_unlink(req, parent, name));
}

static void tfs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	AS_CALLER(do_rmdir(req, parent, name));
}

static void tfs_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		       const char *newname, unsigned int flags)
{
	AS_CALLER(do_rename(req, parent, name, newparent, newname, flags));
}

static void tfs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	AS_CALLER(do_open(req, ino, fi));
}

static void tfs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		       struct fuse_file_info *fi)
{
	AS_CALLER(do_create(req, parent, name, mode, fi));
}

static void tfs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			 size_t size, int flags)
{
	AS_CALLER(do_setxattr(req, ino, name, value, size, flags));
}

static void tfs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	AS_CALLER(do_removexattr(req, ino, name));
}

const struct fuse_lowlevel_ops tfs_ops = {
    .init = tfs_init,
    .lookup = tfs_lookup,
    .forget = tfs_forget,
    .forget_multi = tfs_forget_multi,
    .getattr = tfs_getattr,
    .setattr = tfs_setattr,
    .readlink = tfs_readlink,
    .mknod = tfs_mknod,
    .mkdir = tfs_mkdir,
    .symlink = tfs_symlink,
    .link = tfs_link,
    .unlink = tfs_unlink,
    .rmdir = tfs_rmdir,
    .rename = tfs_rename,
    .open = tfs_open,
    .create = tfs_create,
    .read = tfs_read,
    .write_buf = tfs_write_buf,
    .flush = tfs_flush,
    .release = tfs_release,
    .fsync = tfs_fsync,
    .opendir = tfs_opendir,
    .readdir = tfs_readdir,
    .readdirplus = tfs_readdirplus,
    .releasedir = tfs_releasedir,
    .fsyncdir = tfs_fsyncdir,
    .statfs = tfs_statfs,
    .access = tfs_access,
    .setxattr = tfs_setxattr,
    .getxattr = tfs_getxattr,
    .listxattr = tfs_listxattr,
    .removexattr = tfs_removexattr,
    .fallocate = tfs_fallocate,
    .copy_file_range = tfs_copy_file_range,
    .lseek = tfs_lseek,
};
