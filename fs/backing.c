/*
 * backing.c - from node ids to descriptors beneath the backing root.
 *
 * A node is known by its parent and name (lib/inode), never by a descriptor kept open: the
 * daemon holds descriptors only for open files and directories, plus a small bounded cache of
 * directory descriptors (lib/fdcache), so millions of known inodes cost no descriptors.
 *
 * A directory missing from the cache is resolved from the path its parent chain spells with
 * openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) relative to the root descriptor: the kernel
 * itself guarantees that no component is a symlink and that nothing resolves outside the
 * backing dir, so a symlink swapped into the backing tree during a lookup cannot make the view
 * escape it. A file is then reached by its name in that directory with *at() calls that do not
 * follow a final symlink (O_NOFOLLOW, AT_SYMLINK_NOFOLLOW).
 *
 * Because a name can be reused behind the view's back (unlink, then create), the file found is
 * checked against the (dev, ino) its node recorded; a mismatch is -ESTALE, never another file.
 */
#include "tfs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static int open_beneath(struct tfs *fs, const char *path, int flags)
{
	struct open_how how = {
	    .flags = (uint64_t)(flags | O_NOFOLLOW | O_CLOEXEC),
	    .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
	};
	long fd;
	do
		fd = syscall(SYS_openat2, fs->root_fd, path, &how, sizeof(how));
	while (fd < 0 && errno == EAGAIN);
	return fd < 0 ? -errno : (int)fd;
}

/* Is st the file node ino recorded? */
static int same_file(struct tfs *fs, fuse_ino_t ino, const struct stat *st)
{
	uint64_t dev, nino;
	if (inode_ident(fs->inodes, ino, &dev, &nino) != 0)
		return -ESTALE;
	return st->st_dev == dev && st->st_ino == nino ? 0 : -ESTALE;
}

int backing_dir(struct tfs *fs, fuse_ino_t ino, struct fdcache_ref *d)
{
	if (ino == FUSE_ROOT_ID) {
		d->fd = fs->root_fd;
		d->ent = NULL;
		return 0;
	}
	if (fdcache_get(fs->dirs, ino, d) == 0)
		return 0;
	char path[PATH_MAX];
	int n = inode_path(fs->inodes, ino, path, sizeof(path));
	if (n < 0)
		return n;
	int fd = open_beneath(fs, path, O_PATH | O_DIRECTORY);
	if (fd < 0)
		return fd;
	struct stat st;
	int err = fstat(fd, &st) != 0 ? -errno : same_file(fs, ino, &st);
	if (err != 0) {
		close(fd);
		return err;
	}
	fdcache_add(fs->dirs, ino, fd, d);
	return 0;
}

void backing_put(struct tfs *fs, struct fdcache_ref *d)
{
	if (d->ent == NULL && d->fd == fs->root_fd)
		return; /* the root descriptor lives as long as the daemon */
	fdcache_release(fs->dirs, d);
}

int backing_at(struct tfs *fs, fuse_ino_t ino, struct fdcache_ref *dir, char name[static 256])
{
	uint64_t parent;
	int err = inode_parent(fs->inodes, ino, &parent, name, 256);
	return err != 0 ? err : backing_dir(fs, parent, dir);
}

/* A file whose name is gone (unlinked while open) is still reached through its open handles. */
static int open_by_node(struct tfs *fs, fuse_ino_t ino, int err, struct stat *st)
{
	if (err != -ENOENT && err != -ESTALE)
		return err;
	int fd = node_fd(fs, ino);
	if (fd < 0)
		return err;
	if (fstat(fd, st) != 0) {
		err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

int backing_stat(struct tfs *fs, fuse_ino_t ino, struct stat *st)
{
	struct fdcache_ref dir;
	char name[256];
	int err = backing_at(fs, ino, &dir, name);
	if (err == 0) {
		if (fstatat(dir.fd, name, st, AT_SYMLINK_NOFOLLOW) != 0)
			err = -errno;
		else
			err = same_file(fs, ino, st);
		backing_put(fs, &dir);
	}
	if (err == 0)
		return 0;
	int fd = open_by_node(fs, ino, err, st);
	if (fd < 0)
		return fd;
	close(fd);
	return 0;
}

int backing_open(struct tfs *fs, fuse_ino_t ino, int flags, struct stat *st)
{
	struct stat local;
	struct fdcache_ref dir;
	char name[256];
	if (st == NULL)
		st = &local;
	int err = backing_at(fs, ino, &dir, name);
	if (err != 0)
		return (flags & O_PATH) ? open_by_node(fs, ino, err, st) : err;
	int fd = openat(dir.fd, name, flags | O_NOFOLLOW | O_CLOEXEC);
	backing_put(fs, &dir);
	if (fd < 0)
		err = -errno;
	else if (fstat(fd, st) != 0)
		err = -errno;
	else
		err = same_file(fs, ino, st);
	if (err == 0)
		return fd;
	if (fd >= 0)
		close(fd);
	/* Only a handle to the node itself may come from an open handle of another mode. */
	return (flags & O_PATH) ? open_by_node(fs, ino, err, st) : err;
}

void backing_proc_path(int fd, char buf[static 32])
{
	snprintf(buf, 32, "/proc/self/fd/%d", fd);
}
