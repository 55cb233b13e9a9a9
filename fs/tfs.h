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

#include <pthread.h>
#include <sys/stat.h>

#include "collector.h"
#include "fdcache.h"
#include "inode.h"
#include "stream.h"
#include "options.h"

/*
 * Request sizes, and the memory of the receive buffers.
 *
 * The kernel writes each request into the buffer of the worker that reads it, so a buffer's
 * pages become resident up to the largest request it has received, and stay so. Only writes
 * (and setxattrs) fill more than a few KiB. The workers (at most TFS_MAX_THREADS) share a pool
 * of TFS_RECV_BUFFERS receive buffers (loop.c), each taken before a read of /dev/fuse and
 * given back as soon as the request no longer needs it (a small request is copied out at
 * once), so what the buffers hold outside the buffer budget is bounded by design:
 * TFS_RECV_BUFFERS x (TFS_MAX_WRITE + 4 KiB), whatever the number of threads, plus 8 KiB
 * (LOOP_SMALL) per worker. Only while the store has stalled does each write blocked on it
 * hold an extra buffer of its own, so that other requests are still answered (loop.c), and
 * at most TFS_RECV_EXTRA of them. So the daemon holds at most max_buffer + 2 MiB (the
 * stream's overflow) + 16 MiB of data whatever the number of writers; and with the store
 * stalled under more blocked writers than TFS_RECV_BUFFERS + TFS_RECV_EXTRA, the requests
 * queued behind theirs wait for the store too, as they would with every worker blocked.
 *
 * Reads are at most TFS_MAX_READ: a read reply is spliced through a 1 MiB pipe (ops.c; larger
 * than the pipe, libfuse would copy it through a buffer allocated for that one request), and
 * cold reads run faster with 256 KiB requests: a 1 MiB readahead window becomes four requests
 * that workers serve in parallel.
 *
 * Writes are at most TFS_MAX_WRITE, 1 MiB (dd bs=1M sends one request per block). Against 256 KiB,
 * with libfuse's loop: a dd bs=1M conv=fsync of 1 GiB (11 interleaved runs) cost 10% less daemon
 * CPU (tmpfs 0.44 against 0.49 cpu-s/GiB, disk 0.54 against 0.58), 4 times fewer context switches,
 * and ran 7-22% faster. But 32 writers at once (dd bs=1M each) then filled every worker's buffer:
 * peak RSS 68 MiB (512 KiB: 52 MiB) against 43 MiB with 256 KiB, past the max_buffer +
 * 16 MiB bound (32 + 16 MiB); giving a buffer's pages back after each large write (madvise)
 * kept the resident size down but not the peak, and cost 3-6 times the CPU per GiB. With the
 * pool (12 paired runs each, on a busy machine): over tmpfs 12% less CPU and 26% faster
 * (median ratios; 10 of 12 runs faster), over a disk no difference beyond the noise (CPU
 * 1.01, speed 0.98); 32 writers of 1 MiB writes peak at 26-29 MiB. cp sizes its writes by
 * st_blksize, which stays at 128 KiB (TFS_BLKSIZE, ops.c: a larger buffer costs cp a mapping
 * per file).
 */
#define TFS_MAX_READ	 (256u << 10)
#define TFS_MAX_WRITE	 (1024u << 10)
#define TFS_MAX_THREADS	 32
#define TFS_RECV_BUFFERS 8
#define TFS_RECV_EXTRA	 8
/* Receive buffers that may be lent to streams at once (stream_write_lent): a large write to a
 * store in memory is queued in the buffer it arrived in and answered at once, so the store's
 * copy of it overlaps the receipt of the next; the rest of the pool stays for receiving. Two,
 * not four: dd bs=1M conv=fsync of 1 GiB over tmpfs, 6 interleaved rounds, ran at 1804-2306
 * MiB/s and 0.53-0.68 daemon cpu-s/GiB lending 2, against 1042-2318 and 0.61-1.12 lending 4
 * (3: 1735-2327, 0.51-0.69; 1: 1712-1939, 0.52-0.62; mergerfs 1576-2012). The copies of four
 * buffers in rotation miss the caches more, and each one lent more is a hand-off more. */
#define TFS_RECV_LEND	 2
#define TFS_READAHEAD_KB 1024u /* main.c */

struct handle;

struct tfs {
	struct tfs_options opt;
	int root_fd;	  /* O_PATH descriptor of the backing root, held for the daemon's life */
	dev_t memory_dev; /* the root's device when it is in memory (tmpfs, ramfs), else 0 */
	struct inode_table *inodes;
	struct collector *collector;   /* gives back what the kernel forgot while we are idle */
	struct fdcache *dirs;	       /* recently used directory descriptors */
	struct stream_engine *streams; /* write buffers, drain threads, rate limits */
	struct node *active;	       /* nodes open for writing (under the inode lock) */
	pthread_mutex_t handles_lock;
	struct handle *handles; /* every open file and directory (ops.c) */
	uint64_t files_done;	/* transfers completed without error */
	struct fuse_session *se;
	double timeout;	   /* entry and attribute validity, seconds */
	unsigned max_read; /* the max_read mount option in force (init must repeat it) */
};

/* The FUSE operations (ops.c). */
extern const struct fuse_lowlevel_ops tfs_ops;

/* At shutdown: closes every handle the kernel left open (their data reaches the store). */
void ops_close_all(struct tfs *fs);

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

/* node.c: the state of an inode beyond its name: open handles, stream, last transfer. */
struct node;

/* What security.capability is known to be on a node's file (the kernel asks before every
 * write; the answer is remembered while the daemon knows the inode). */
enum node_cap { NODE_CAP_UNKNOWN, NODE_CAP_NONE, NODE_CAP_PRESENT };

/* A transfer's figures: the stream's, and the times around it. */
struct node_progress {
	fuse_ino_t ino;
	struct stream_stats st;
	uint64_t started_rt, last_rt, ended_rt; /* CLOCK_REALTIME ns; 0: not (yet) */
	uint64_t expected;			/* bytes to come in all; 0: unknown */
	int active;				/* open for writing now */
};

/* Frees a node when its inode record goes (inode_table's free_data). */
void node_free(void *data);

/* A handle of ino (file or directory, open as fd) opens: find or make its node (with a stream
 * writing through a duplicate of fd when writable). When writable and opened with credentials
 * other than root's (this thread's, see cred_id_capture), *owner receives what the stream must
 * write the handle's data as (stream_set_owner before each write; valid while the handle is
 * open), else NULL. Returns 0 or a negative errno. */
int node_attach(struct tfs *fs, fuse_ino_t ino, int writable, int fd, struct node **out,
		const struct stream_owner **owner);

/* A handle closes; the last one waits for the stream's data, keeps its final figures, and
 * closes the stream and the node's descriptor. */
void node_detach(struct tfs *fs, struct node *n);

/* A new descriptor of ino's file when it has open handles, else -ENOENT. */
int node_fd(struct tfs *fs, fuse_ino_t ino);

/* The node's stream, or NULL when it is not open for writing. */
struct stream *node_stream(struct node *n);

/* Notes that a write was accepted now (for mtime while data is pending, and progress). */
void node_wrote(struct node *n);

/* What a file's stream still holds, for stat to show the file as written: the end of the
 * pending data (0: none) and the time of the last write. Take it BEFORE stat'ing the backing
 * file: data drained in between is then in the stat, data still pending is in the snapshot
 * (in the other order, data drained between the two would be in neither). */
struct node_pending {
	uint64_t end;
	uint64_t write_rt;
	/* A stat taken before this snapshot must be taken again: the file is open for writing,
	 * or has been written through the view, whose stream may have committed its data and
	 * closed since that stat (the snapshot then shows nothing pending, and the earlier stat
	 * would report the file without that data). */
	int restat;
};

/* Snapshot for ino (n may be NULL: then ino's node, if any, is looked up). */
void node_pending(struct tfs *fs, fuse_ino_t ino, struct node *n, struct node_pending *p);

/* Shows the pending data in st: size up to its end, mtime of its last write, blocks enough to
 * hold it (so no tool mistakes the file for sparse). */
void node_pending_apply(const struct node_pending *p, struct stat *st);

/* Waits until the stream (of n, or of ino's node if any) has written everything; returns 0 or
 * the stream's error. Before operations that change the file other than by writes. */
int node_sync(struct node *n);
int node_sync_ino(struct tfs *fs, fuse_ino_t ino);

/* The progress of ino's current or last transfer: 0, or -ENOENT when it never had one. */
int node_progress(struct tfs *fs, fuse_ino_t ino, struct node_progress *p);

/* Sets the size a transfer is expected to reach (user.throttlefs.expected); 0 clears it. */
int node_expect(struct tfs *fs, fuse_ino_t ino, uint64_t bytes);

/* A file open for writing was truncated or allocated to size: the writer announced its final
 * size (cp and many tools do), so progress can tell the percentage. */
void node_sized(struct node *n, struct tfs *fs, uint64_t size);

/* Copies up to max active transfers into out; returns how many there are. */
size_t node_active(struct tfs *fs, struct node_progress *out, size_t max, uint64_t *files_done);

enum node_cap node_cap_get(struct tfs *fs, fuse_ino_t ino);
void node_cap_set(struct tfs *fs, fuse_ino_t ino, enum node_cap cap);

/* vattr.c: the virtual user.throttlefs.* attributes. Each returns 0 when name is not one of
 * them (the caller passes the call through), or 1 when it has replied. */
int vattr_getxattr(fuse_req_t req, struct tfs *fs, fuse_ino_t ino, const char *name, size_t size);
int vattr_setxattr(fuse_req_t req, struct tfs *fs, fuse_ino_t ino, const char *name,
		   const char *value, size_t size);
int vattr_removexattr(fuse_req_t req, struct tfs *fs, fuse_ino_t ino, const char *name);

/* cred.c: acting as the caller (see there). */
struct cred {
	int switched;
};

/* Records the daemon's own credentials; once, before any thread starts. */
int cred_init(void);

/* Takes on the caller's fsuid, fsgid and groups for this thread (when the daemon is root and
 * the caller is someone else). Returns 0 or a negative errno; then nothing changed. */
int cred_enter(fuse_req_t req, struct cred *c);

/* Returns this thread to the daemon's own credentials. */
void cred_leave(struct cred *c);

/* A write or truncate by req's caller changes the file open as fd: drops its setuid and
 * setgid bits where a local filesystem would (see there). 0 or a negative errno. */
int cred_kill_priv(fuse_req_t req, int fd);

/* The credentials a file was opened for writing with, which its stream writes as (cred.c):
 * a record that is a struct stream_owner for lib/stream. */
struct cred_id;

/* A record of this thread's current fsuid, fsgid and groups (inside cred_enter: the caller's)
 * in *out; *out = NULL when there is nothing to take on (the daemon is not root, or the ids are
 * root's: such a stream writes as the daemon at no extra cost). 0 or a negative errno. */
int cred_id_capture(struct cred_id **out);

/* Keeps id (NULL: returns NULL) on list, which owns it from now on; an equal record already
 * there is used instead and id freed. Returns the record as a stream owner, valid until
 * cred_id_free_all(list). */
const struct stream_owner *cred_id_keep(struct cred_id **list, struct cred_id *id);

/* Frees a list of records (once no stream can use them: after stream_close). */
void cred_id_free_all(struct cred_id **list);

/* CLOCK_REALTIME in ns. */
uint64_t node_now_rt(void);

#endif
