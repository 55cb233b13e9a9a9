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
 *
 * Writes are different: they return once the data is in the file's stream, and a drain thread
 * (or a worker thread lent with stream_help) writes it later, serving every stream in turn. A
 * root thread would write with root's reach: ext4's reserved blocks (fsuid == resuid, a group
 * == resgid, or CAP_SYS_RESOURCE), quota overrun with CAP_SYS_RESOURCE, a store's own checks.
 * So the credentials a file is opened for writing with are kept in a record (struct cred_id:
 * fsuid, fsgid, groups) that the stream writes as: lib/stream calls the record's enter and
 * leave around every slice of up to 1 MiB, on whichever thread writes it. enter takes on the
 * ids and groups as cred_enter does and then empties the thread's effective capability set
 * (setfsuid to non-root already drops the filesystem capabilities; CAP_SYS_RESOURCE and the
 * rest are not filesystem capabilities and go only with capset); leave raises the daemon's
 * capabilities again first (setting ids needs CAP_SETUID and CAP_SETGID) and then returns to
 * the daemon's ids. Capabilities, like the ids, are per thread: capset on the calling thread
 * touches no other. About a dozen system calls per slice; a file opened by root gets no record
 * and its slices go out exactly as before, with no extra call.
 */
#include "tfs.h"

#include <errno.h>
#include <linux/capability.h>
#include <stddef.h>
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

/* Whether this thread has left the daemon's ids (become) and not yet come back: a thread that
 * has not is root, and cred_id_capture knows it without asking the kernel. */
static __thread int thread_away;

/* The daemon's own capabilities (when root), raised again after a stream's slice. */
static struct __user_cap_data_struct daemon_caps[_LINUX_CAPABILITY_U32S_3];

static int caps_get(struct __user_cap_data_struct *data)
{
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
	return syscall(SYS_capget, &h, data) == 0 ? 0 : -errno;
}

/* Sets this thread's capabilities (pid 0: the calling thread alone). */
static int caps_set(const struct __user_cap_data_struct *data)
{
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
	return syscall(SYS_capset, &h, data) == 0 ? 0 : -errno;
}

int cred_init(void)
{
	daemon_uid = geteuid();
	daemon_gid = getegid();
	daemon_is_root = daemon_uid == 0;
	daemon_ngroups = getgroups(CRED_MAX_GROUPS, daemon_groups);
	if (daemon_ngroups < 0)
		return -errno;
	return daemon_is_root ? caps_get(daemon_caps) : 0;
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

/* Takes on uid, gid and groups for this thread. On failure, the thread may be half switched:
 * the caller returns it with become_daemon(). */
static int become(uid_t uid, gid_t gid, size_t n, const gid_t *groups)
{
	thread_away = 1;
	int err = set_groups(n, groups);
	return err != 0 ? err : set_fs_ids(uid, gid);
}

/* Returns this thread to the daemon's ids and groups. */
static void become_daemon(void)
{
	int err = set_fs_ids(daemon_uid, daemon_gid);
	if (err == 0)
		err = set_groups((size_t)daemon_ngroups, daemon_groups);
	if (err != 0) {
		/* A thread that cannot become the daemon again must not serve another request
		 * or slice with someone else's rights. */
		fuse_log(FUSE_LOG_ERR, "throttlefs: cannot restore credentials: %s\n",
			 strerror(-err));
		abort();
	}
	thread_away = 0;
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
	int err = become(ctx->uid, ctx->gid, (size_t)n, groups);
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
	become_daemon();
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

/* ---- the credentials a stream writes with ---- */

struct cred_id {
	struct stream_owner owner; /* what lib/stream sees */
	struct cred_id *next;	   /* on the node's list (cred_id_keep) */
	uid_t uid;
	gid_t gid;
	int ngroups;
	gid_t groups[];
};

static const struct cred_id *id_of(const struct stream_owner *o)
{
	return (const struct cred_id *)((const char *)o - offsetof(struct cred_id, owner));
}

static int id_enter(const struct stream_owner *o)
{
	const struct cred_id *id = id_of(o);
	struct __user_cap_data_struct caps[_LINUX_CAPABILITY_U32S_3];
	int err = become(id->uid, id->gid, (size_t)id->ngroups, id->groups);
	if (err == 0) {
		/* Effective set emptied, permitted kept, so that id_leave can raise it again. */
		memcpy(caps, daemon_caps, sizeof(caps));
		for (int i = 0; i < _LINUX_CAPABILITY_U32S_3; i++)
			caps[i].effective = 0;
		err = caps_set(caps);
	}
	if (err != 0) {
		fuse_log(FUSE_LOG_ERR, "throttlefs: cannot write as uid %u: %s\n",
			 (unsigned)id->uid, strerror(-err));
		become_daemon();
	}
	return err;
}

static void id_leave(const struct stream_owner *o)
{
	(void)o;
	int err = caps_set(daemon_caps);
	if (err != 0) {
		fuse_log(FUSE_LOG_ERR, "throttlefs: cannot restore capabilities: %s\n",
			 strerror(-err));
		abort();
	}
	become_daemon();
}

int cred_id_capture(struct cred_id **out)
{
	*out = NULL;
	if (!daemon_is_root || !thread_away)
		return 0; /* the daemon's own ids (or not root): nothing to record */
	/* setfsuid and setfsgid with an invalid id change nothing and tell the current one. */
	uid_t uid = (uid_t)setfsuid((uid_t)-1);
	gid_t gid = (gid_t)setfsgid((gid_t)-1);
	if (uid == 0)
		return 0; /* root's own file: written as the daemon, at no cost */
	gid_t groups[CRED_MAX_GROUPS];
	int n = getgroups(CRED_MAX_GROUPS, groups); /* the raw call: this thread's groups */
	if (n < 0)
		return -errno;
	struct cred_id *id = malloc(sizeof(*id) + (size_t)n * sizeof(gid_t));
	if (id == NULL)
		return -ENOMEM;
	id->owner.enter = id_enter;
	id->owner.leave = id_leave;
	id->next = NULL;
	id->uid = uid;
	id->gid = gid;
	id->ngroups = n;
	memcpy(id->groups, groups, (size_t)n * sizeof(gid_t));
	*out = id;
	return 0;
}

static int id_equal(const struct cred_id *a, const struct cred_id *b)
{
	return a->uid == b->uid && a->gid == b->gid && a->ngroups == b->ngroups &&
	       memcmp(a->groups, b->groups, (size_t)a->ngroups * sizeof(gid_t)) == 0;
}

const struct stream_owner *cred_id_keep(struct cred_id **list, struct cred_id *id)
{
	if (id == NULL)
		return NULL;
	for (struct cred_id *k = *list; k != NULL; k = k->next) {
		if (id_equal(k, id)) {
			free(id);
			return &k->owner;
		}
	}
	id->next = *list;
	*list = id;
	return &id->owner;
}

void cred_id_free_all(struct cred_id **list)
{
	while (*list != NULL) {
		struct cred_id *k = *list;
		*list = k->next;
		free(k);
	}
}
