/*
 * tfs.h - the daemon's shared state and the pieces of fs/ that use it.
 *
 * fs/ is a thin translation from FUSE low-level requests to lib/: ops.c answers requests,
 * backing.c turns node ids into descriptors beneath the backing root, options.c owns the
 * command line. Everything that needs no FUSE header lives in lib/.
 */
#ifndef THROTTLEFS_TFS_H
#define THROTTLEFS_TFS_H

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <sys/stat.h>

#include "fdcache.h"
#include "inode.h"
#include "options.h"

struct tfs {
	struct tfs_options opt;
	int root_fd; /* O_PATH descriptor of the backing root, held for the daemon's life */
	struct inode_table *inodes;
	struct fdcache *dirs; /* recently used directory descriptors */
	struct fuse_session *se;
	double timeout; /* entry and attribute validity, seconds */
};

/* The FUSE operations (ops.c). */
extern const struct fuse_lowlevel_ops tfs_ops;

/* backing.c: reaching the backing file of a node without following symlinks, beneath root. */

/* Borrows a descriptor (O_PATH) of directory node ino, for *at() calls on its entries; give it
 * back with backing_put(). Returns 0 or a negative errno. */
int backing_dir(struct tfs *fs, fuse_ino_t ino, struct fdcache_ref *d);
void backing_put(struct tfs *fs, struct fdcache_ref *d);

/* Borrows the directory holding node ino and copies the node's name into name (the root: the
 * root itself and "."). For calls that must not follow a final symlink. */
int backing_at(struct tfs *fs, fuse_ino_t ino, struct fdcache_ref *dir, char name[static 256]);

/* The attributes of node ino's backing file, checked to be the file the node recorded. */
int backing_stat(struct tfs *fs, fuse_ino_t ino, struct stat *st);

/* Opens node ino with flags (O_PATH for a handle to the node itself; O_NOFOLLOW and O_CLOEXEC
 * are always added) and checks that it is still the file the node names; *st (if not NULL)
 * receives its attributes. Returns a descriptor or a negative errno (-ESTALE when the name now
 * holds another file). */
int backing_open(struct tfs *fs, fuse_ino_t ino, int flags, struct stat *st);

/* "/proc/self/fd/N" for descriptor fd, for calls that take only a path. */
void backing_proc_path(int fd, char buf[static 32]);

#endif
