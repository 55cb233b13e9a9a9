/*
 * backing.c - from node ids to descriptors beneath the backing root.
 *
 * A node is known by the path its parent chain spells (lib/inode), never by a descriptor kept
 * open: the daemon holds descriptors only for open files and directories, so millions of known
 * inodes cost no descriptors. Each request that needs the backing file resolves that path with
 * openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) relative to the root descriptor: the kernel
 * itself guarantees that no component is a symlink and that nothing resolves outside the
 * backing dir, so a symlink swapped into the backing tree during a lookup cannot make the view
 * escape it. The final component may be a symlink only when opened O_PATH | O_NOFOLLOW, which
 * gives a handle to the link itself.
 *
 * Because a name can be reused behind the view's back (unlink, then create), the file found is
 * checked against the (dev, ino) the node recorded; a mismatch is -ESTALE, never another file.
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

int backing_open(struct tfs *fs, fuse_ino_t ino, int flags, struct stat *st)
{
	struct stat local;
	if (st == NULL)
		st = &local;
	char path[PATH_MAX];
	int n = inode_path(fs->inodes, ino, path, sizeof(path));
	if (n < 0)
		return n;
	int fd = open_beneath(fs, path, flags);
	if (fd < 0)
		return fd;
	uint64_t dev, nino;
	if (inode_ident(fs->inodes, ino, &dev, &nino) != 0 || fstat(fd, st) != 0 ||
	    st->st_dev != dev || st->st_ino != nino) {
		close(fd);
		return -ESTALE;
	}
	return fd;
}

int backing_dir(struct tfs *fs, fuse_ino_t ino)
{
	if (ino == FUSE_ROOT_ID) {
		int fd = fcntl(fs->root_fd, F_DUPFD_CLOEXEC, 0);
		return fd < 0 ? -errno : fd;
	}
	return backing_open(fs, ino, O_PATH | O_DIRECTORY, NULL);
}

int backing_parent(struct tfs *fs, fuse_ino_t ino, char name[static 256])
{
	char path[PATH_MAX];
	int n = inode_path(fs->inodes, ino, path, sizeof(path));
	if (n < 0)
		return n;
	char *slash = strrchr(path, '/');
	const char *base = slash ? slash + 1 : path;
	if (strlen(base) > 255)
		return -ENAMETOOLONG;
	strcpy(name, base);
	if (slash == NULL)
		return backing_dir(fs, FUSE_ROOT_ID);
	*slash = '\0';
	return open_beneath(fs, path, O_PATH | O_DIRECTORY);
}

void backing_proc_path(int fd, char buf[static 32])
{
	snprintf(buf, 32, "/proc/self/fd/%d", fd);
}
