/*
 * cred.c - acting on the backing store as the caller.
 *
 * A daemon run as root that creates files as root gets shared mounts wrong: a file alice
 * creates through the view would belong to root, the setgid directory rule and the backing
 * store's own permission checks would be root's. So for every request that creates, removes,
 * renames or opens, the worker thread takes on the caller's fsuid, fsgid and supplementary
 * groups for the duration of the call, as mergerfs does, and the backing store applies its
 * own rules to the real caller. (setattr stays root's: the kernel has already checked it with
 * default_permissions, and it must be able to clear setuid bits on behalf of a writer who does
 * not own the file.)
 *
 * These credentials are per thread: setfsuid and setfsgid are, and supplementary groups are
 * set with the raw system call, since glibc's setgroups() changes every thread of the process.
 * A thread always returns to the daemon's own credentials before it takes the next request.
 * A daemon not run as root does nothing here: files belong to the user who mounted, as for
 * any FUSE mount.
 */
#include "tfs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define CRED_MAX_GROUPS 256

static int daemon_is_root;
static uid_t daemon_uid;
static gid_t daemon_gid;
static gid_t daemon_groups[CRED_MAX_GROUPS];
static int daemon_ngroups;

int cred_init(void)
{
	daemon_uid = geteuid();
	daemon_gid = getegid();
	daemon_is_root = daemon_uid == 0;
	daemon_ngroups = getgroups(CRED_MAX_GROUPS, daemon_groups);
	if (daemon_ngroups < 0)
		return -errno;
	return 0;
}

static int set_groups(size_t n, const gid_t *list)
{
	return syscall(SYS_setgroups, n, list) == 0 ? 0 : -errno;
}

/* setfsuid/setfsgid report the previous id, never an error: read back to be sure. */
static int set_fs_ids(uid_t uid, gid_t gid)
{
	setfsgid(gid);
	setfsuid(uid);
	if ((uid_t)setfsuid((uid_t)-1) != uid || (gid_t)setfsgid((gid_t)-1) != gid)
		return -EPERM;
	return 0;
}

int cred_enter(fuse_req_t req, struct cred *c)
{
	c->switched = 0;
	if (!daemon_is_root)
		return 0;
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	if (ctx->uid == daemon_uid && ctx->gid == daemon_gid)
		return 0; /* already who we are */
	gid_t groups[CRED_MAX_GROUPS];
	int n = fuse_req_getgroups(req, CRED_MAX_GROUPS, groups);
	if (n < 0) /* the caller is gone, or /proc is unreadable: its primary group alone */
		n = 0;
	if (n > CRED_MAX_GROUPS)
		n = CRED_MAX_GROUPS;
	int err = set_groups((size_t)n, groups);
	if (err == 0)
		err = set_fs_ids(ctx->uid, ctx->gid);
	c->switched = 1;
	if (err != 0) {
		cred_leave(c);
		return err;
	}
	return 0;
}

void cred_leave(struct cred *c)
{
	if (!c->switched)
		return;
	c->switched = 0;
	int err = set_fs_ids(daemon_uid, daemon_gid);
	if (err == 0)
		err = set_groups((size_t)daemon_ngroups, daemon_groups);
	if (err != 0) {
		/* A worker that cannot become the daemon again must not serve another request
		 * with someone else's rights. */
		fuse_log(FUSE_LOG_ERR, "throttlefs: cannot restore credentials: %s\n",
			 strerror(-err));
		abort();
	}
}

/* Is the caller of req in group gid (primary or supplementary)? */
static int caller_in_group(fuse_req_t req, gid_t gid)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	if (ctx->gid == gid)
		return 1;
	gid_t groups[CRED_MAX_GROUPS];
	int n = fuse_req_getgroups(req, CRED_MAX_GROUPS, groups);
	for (int i = 0; i < n && i < CRED_MAX_GROUPS; i++)
		if (groups[i] == gid)
			return 1;
	return 0;
}

int cred_kill_priv(fuse_req_t req, int fd)
{
	if (fuse_req_ctx(req)->uid == 0)
		return 0; /* privileged (CAP_FSETID): keeps the bits, as on a local filesystem */
	struct stat st;
	if (fstat(fd, &st) != 0)
		return -errno;
	if (!S_ISREG(st.st_mode) || !(st.st_mode & (S_ISUID | S_ISGID)))
		return 0;
	/* What a local filesystem does on write and truncate by an unprivileged caller
	 * (should_remove_suid, setattr_should_drop_sgid): setuid always goes; setgid goes with
	 * group-execute, and without it when the caller is not in the file's group. The
	 * kernel's FUSE client does part of this and none of it for direct I/O, and the daemon
	 * writes as root, so it is done here. */
	mode_t mode = st.st_mode & 07777 & ~S_ISUID;
	if ((st.st_mode & S_IXGRP) || !caller_in_group(req, st.st_gid))
		mode &= ~S_ISGID;
	if (mode == (st.st_mode & 07777))
		return 0;
	char proc[32];
	backing_proc_path(fd, proc);
	return chmod(proc, mode) == 0 ? 0 : -errno;
}
