/*
 * vattr.c - the virtual attributes: user.throttlefs.* names answered by the daemon itself.
 *
 * They are never stored in or passed to the backing store and never listed by listxattr (like
 * CephFS's ceph.dir.rbytes), so cp -a, rsync -X and tar --xattrs never copy them. On every
 * regular file: progress (JSON) and state, received, committed, buffered, rate, percent
 * (plain values for shell use), and expected (writable). On the mount's root: memory, heap,
 * transfers, config (JSON), and rate, file_rate (writable: change the limits while copies run;
 * not persisted).
 *
 * Errors follow mergerfs's runtime interface: a bad value is EINVAL and changes nothing;
 * setting a read-only name is EROFS; an unknown user.throttlefs.* name is ENODATA; a buffer
 * too small is ERANGE. No call answers ENOSYS (the kernel would switch xattrs off for the
 * whole mount).
 *
 * A value is generated afresh for every call, but the usual two-step read (ask the size with
 * an empty buffer, then read) must see one snapshot: the value generated for a size probe is
 * kept for the same process, inode and name for a short while and served to its read.
 */
#include "tfs.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "json.h"
#include "size.h"

#define PREFIX	   "user.throttlefs."
#define PREFIX_LEN (sizeof(PREFIX) - 1)

/* ---- values ---- */

static const char *state_name(enum stream_state s)
{
	switch (s) {
	case STREAM_WRITING:
		return "writing";
	case STREAM_DRAINING:
		return "draining";
	case STREAM_DONE:
		return "done";
	case STREAM_ERROR:
		return "error";
	default:
		return "idle";
	}
}

/* Derived figures of a transfer. */
struct figures {
	double elapsed;	 /* s since the first write, to the end if it ended */
	double avg_rate; /* bytes/s committed over elapsed */
	int known;	 /* the size to come is known: percent and eta mean something */
	double percent;
	double eta; /* s; < 0: unknown (no current rate) */
};

static void figures_of(const struct node_progress *p, struct figures *f)
{
	memset(f, 0, sizeof(*f));
	if (p->started_rt != 0) {
		uint64_t end = p->ended_rt ? p->ended_rt : node_now_rt();
		f->elapsed = end > p->started_rt ? (double)(end - p->started_rt) / 1e9 : 0;
	}
	if (f->elapsed > 0)
		f->avg_rate = (double)p->st.committed / f->elapsed;
	f->known = p->expected > 0;
	if (f->known) {
		uint64_t done = p->st.committed < p->expected ? p->st.committed : p->expected;
		f->percent = 100.0 * (double)done / (double)p->expected;
		uint64_t left = p->expected - done;
		f->eta = left == 0 ? 0 : p->st.rate > 0 ? (double)left / (double)p->st.rate : -1;
	}
}

/* An errno (either sign) as its name ("EIO"), or null when err is 0. */
static void json_errno(struct json *j, int err)
{
	if (err < 0)
		err = -err;
	if (err != 0)
		json_string(j, strerrorname_np(err) ? strerrorname_np(err) : "?");
	else
		json_null(j);
}

/* The progress fields, into an object already begun. */
static void progress_fields(struct json *j, const struct node_progress *p)
{
	struct figures f;
	figures_of(p, &f);
	json_key(j, "state");
	json_string(j, state_name(p->st.state));
	json_field_u64(j, "received", p->st.received);
	json_field_u64(j, "committed", p->st.committed);
	json_field_u64(j, "buffered", p->st.buffered);
	json_field_u64(j, "rate", p->active ? p->st.rate : 0);
	json_field_u64(j, "avg_rate", (uint64_t)f.avg_rate);
	json_key(j, "started");
	if (p->started_rt)
		json_double(j, (double)p->started_rt / 1e9, 3);
	else
		json_null(j);
	json_key(j, "elapsed");
	json_double(j, f.elapsed, 3);
	json_key(j, "expected");
	if (f.known)
		json_u64(j, p->expected);
	else
		json_null(j);
	json_key(j, "percent");
	if (f.known)
		json_double(j, f.percent, 1);
	else
		json_null(j);
	json_key(j, "eta");
	if (f.known && f.eta >= 0)
		json_double(j, f.eta, 1);
	else
		json_null(j);
	json_key(j, "error");
	json_errno(j, p->st.error);
}

static void progress_json(struct json *j, const struct node_progress *p)
{
	json_begin_object(j);
	progress_fields(j, p);
	json_end_object(j);
}

/* VmRSS and VmHWM of this process, in bytes. */
static void read_rss(uint64_t *rss, uint64_t *peak)
{
	*rss = *peak = 0;
	FILE *f = fopen("/proc/self/status", "re");
	if (f == NULL)
		return;
	char line[256];
	while (fgets(line, sizeof(line), f) != NULL) {
		unsigned long long kb;
		if (sscanf(line, "VmRSS: %llu kB", &kb) == 1)
			*rss = kb * 1024;
		else if (sscanf(line, "VmHWM: %llu kB", &kb) == 1)
			*peak = kb * 1024;
	}
	fclose(f);
}

static void memory_json(struct tfs *fs, struct json *j)
{
	uint64_t rss, peak;
	read_rss(&rss, &peak);
	struct stream_engine_stats es;
	stream_engine_stats(fs->streams, &es);
	struct heap_stats hs;
	inode_heap_stats(fs->inodes, &hs);
	json_begin_object(j);
	json_field_u64(j, "rss", rss);
	json_field_u64(j, "heap_total", hs.heap_total);
	json_field_u64(j, "heap_used", hs.heap_used);
	json_field_u64(j, "external", es.pool_bytes);
	json_field_u64(j, "buffered", es.buffered);
	json_field_u64(j, "buffer_budget", es.budget);
	json_field_u64(j, "peak_rss", peak);
	json_field_u64(j, "peak_external", es.blocks_peak * STREAM_BLOCK);
	json_end_object(j);
}

static void heap_json(struct tfs *fs, struct json *j)
{
	struct heap_stats hs;
	inode_heap_stats(fs->inodes, &hs);
	struct inode_stats is;
	inode_stats(fs->inodes, &is);
	struct fdcache_stats ds;
	fdcache_stats(fs->dirs, &ds);
	json_begin_object(j);
	json_key(j, "young");
	json_begin_object(j);
	json_field_u64(j, "size", hs.young.size);
	json_field_u64(j, "used", hs.young.used);
	json_field_u64(j, "scavenges", hs.young.scavenges);
	json_field_u64(j, "promoted_bytes", hs.young.promoted_bytes);
	json_end_object(j);
	json_key(j, "old");
	json_begin_object(j);
	json_field_u64(j, "size", hs.old.size);
	json_field_u64(j, "used", hs.old.used);
	json_field_u64(j, "mark_sweeps", hs.old.mark_sweeps);
	json_field_u64(j, "mark_compacts", hs.old.mark_compacts);
	json_key(j, "fragmentation");
	json_double(j, hs.old.fragmentation, 3);
	json_end_object(j);
	json_key(j, "pause_us");
	json_begin_object(j);
	json_field_u64(j, "last", hs.pause_us.last);
	json_field_u64(j, "max", hs.pause_us.max);
	json_field_u64(j, "total", hs.pause_us.total);
	json_end_object(j);
	json_field_u64(j, "objects", hs.objects);
	json_field_u64(j, "inodes", is.inodes);
	json_field_u64(j, "peak_inodes", is.peak);
	json_field_u64(j, "lookups", is.lookups);
	json_field_u64(j, "forgotten", is.forgotten);
	json_field_u64(j, "heap_total", hs.heap_total);
	json_field_u64(j, "heap_used", hs.heap_used);
	json_key(j, "dir_cache");
	json_begin_object(j);
	json_field_u64(j, "held", ds.held);
	json_field_u64(j, "hits", ds.hits);
	json_field_u64(j, "misses", ds.misses);
	json_end_object(j);
	/* The idle collector (lib/collector.h): its failures (a thread that could not start) are
	 * shown here, where whoever wonders why nothing is given back will look. */
	struct collector_stats cs;
	collector_stats(fs->collector, &cs);
	json_key(j, "collector");
	json_begin_object(j);
	json_field_u64(j, "kicks", cs.kicks);
	json_field_u64(j, "cycles", cs.cycles);
	json_field_u64(j, "slices", cs.slices);
	json_key(j, "error");
	json_errno(j, cs.error);
	json_end_object(j);
	json_end_object(j);
}

#define MAX_LISTED 1024

static void transfers_json(struct tfs *fs, struct json *j)
{
	struct node_progress *act = calloc(MAX_LISTED, sizeof(*act));
	uint64_t done = 0;
	size_t n = act ? node_active(fs, act, MAX_LISTED, &done) : 0;
	struct stream_engine_stats es;
	stream_engine_stats(fs->streams, &es);
	json_begin_object(j);
	json_key(j, "active");
	json_begin_array(j);
	for (size_t i = 0; i < n && i < MAX_LISTED; i++) {
		char path[4096];
		json_begin_object(j);
		json_key(j, "path");
		if (inode_path(fs->inodes, act[i].ino, path, sizeof(path)) >= 0)
			json_string(j, path);
		else
			json_null(j); /* unlinked or forgotten meanwhile */
		progress_fields(j, &act[i]);
		json_end_object(j);
	}
	json_end_array(j);
	json_key(j, "totals");
	json_begin_object(j);
	json_field_u64(j, "active", n);
	json_field_u64(j, "files_done", done);
	json_field_u64(j, "bytes_committed", es.committed);
	json_field_u64(j, "buffered", es.buffered);
	json_field_u64(j, "throughput", es.throughput);
	json_field_u64(j, "parked_writes", es.parked);
	json_end_object(j);
	json_end_object(j);
	free(act);
}

static void config_json(struct tfs *fs, struct json *j)
{
	struct tfs_options o = fs->opt;
	o.rate = __atomic_load_n(&fs->opt.rate, __ATOMIC_RELAXED);
	o.file_rate = __atomic_load_n(&fs->opt.file_rate, __ATOMIC_RELAXED);
	opts_json(&o, j);
}

/* ---- the names ---- */

enum where { ON_FILE, ON_ROOT };

struct vattr {
	const char *name; /* after the prefix */
	enum where where;
	int writable;
};

static const struct vattr vattrs[] = {
    {"progress", ON_FILE, 0},  {"state", ON_FILE, 0},	  {"received", ON_FILE, 0},
    {"committed", ON_FILE, 0}, {"buffered", ON_FILE, 0},  {"rate", ON_FILE, 0},
    {"percent", ON_FILE, 0},   {"expected", ON_FILE, 1},  {"memory", ON_ROOT, 0},
    {"heap", ON_ROOT, 0},      {"transfers", ON_ROOT, 0}, {"config", ON_ROOT, 0},
    {"rate", ON_ROOT, 1},      {"file_rate", ON_ROOT, 1},
};

/* The name's entry for an inode of this kind, or NULL (unknown here: ENODATA). */
static const struct vattr *vattr_find(const char *name, enum where where)
{
	for (size_t i = 0; i < sizeof(vattrs) / sizeof(vattrs[0]); i++)
		if (vattrs[i].where == where && strcmp(vattrs[i].name, name) == 0)
			return &vattrs[i];
	return NULL;
}

/* Where ino is: the root, a regular file, or neither (-ENODATA). */
static int where_of(struct tfs *fs, fuse_ino_t ino, enum where *w)
{
	if (ino == FUSE_ROOT_ID) {
		*w = ON_ROOT;
		return 0;
	}
	struct stat st;
	int err = backing_stat(fs, ino, &st);
	if (err != 0)
		return err;
	if (!S_ISREG(st.st_mode))
		return -ENODATA;
	*w = ON_FILE;
	return 0;
}

static void text_value(struct json *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void text_value(struct json *j, const char *fmt, ...)
{
	char b[64];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(b, sizeof(b), fmt, ap);
	va_end(ap);
	json_raw(j, b, (size_t)n);
}

/* Generates the value of v for ino into j; -ENODATA when it has none now. */
static int generate(struct tfs *fs, fuse_ino_t ino, const struct vattr *v, struct json *j)
{
	if (v->where == ON_ROOT) {
		if (strcmp(v->name, "memory") == 0)
			memory_json(fs, j);
		else if (strcmp(v->name, "heap") == 0)
			heap_json(fs, j);
		else if (strcmp(v->name, "transfers") == 0)
			transfers_json(fs, j);
		else if (strcmp(v->name, "config") == 0)
			config_json(fs, j);
		else if (strcmp(v->name, "rate") == 0)
			text_value(
			    j, "%llu",
			    (unsigned long long)__atomic_load_n(&fs->opt.rate, __ATOMIC_RELAXED));
		else
			text_value(j, "%llu",
				   (unsigned long long)__atomic_load_n(&fs->opt.file_rate,
								       __ATOMIC_RELAXED));
		return 0;
	}
	struct node_progress p;
	if (node_progress(fs, ino, &p) != 0) {
		memset(&p, 0, sizeof(p));
		p.ino = ino;
	}
	struct figures f;
	figures_of(&p, &f);
	if (strcmp(v->name, "progress") == 0)
		progress_json(j, &p);
	else if (strcmp(v->name, "state") == 0)
		text_value(j, "%s", state_name(p.st.state));
	else if (strcmp(v->name, "received") == 0)
		text_value(j, "%llu", (unsigned long long)p.st.received);
	else if (strcmp(v->name, "committed") == 0)
		text_value(j, "%llu", (unsigned long long)p.st.committed);
	else if (strcmp(v->name, "buffered") == 0)
		text_value(j, "%llu", (unsigned long long)p.st.buffered);
	else if (strcmp(v->name, "rate") == 0)
		text_value(j, "%llu", (unsigned long long)(p.active ? p.st.rate : 0));
	else if (strcmp(v->name, "percent") == 0 && f.known)
		text_value(j, "%.1f", f.percent);
	else if (strcmp(v->name, "expected") == 0 && p.expected > 0)
		text_value(j, "%llu", (unsigned long long)p.expected);
	else
		return -ENODATA;
	return 0;
}

/* ---- the size-probe snapshot ---- */

#define SNAP_SLOTS  16
#define SNAP_TTL_NS (2ull * 1000000000ull)

struct snapshot {
	pid_t pid;
	fuse_ino_t ino;
	const struct vattr *v;
	uint64_t when;
	char *text;
	size_t len;
};

static pthread_mutex_t snap_lock = PTHREAD_MUTEX_INITIALIZER;
static struct snapshot snaps[SNAP_SLOTS];

/* Keeps text (taking ownership) as what pid saw of (ino, v). */
static void snap_keep(pid_t pid, fuse_ino_t ino, const struct vattr *v, char *text, size_t len)
{
	uint64_t now = node_now_rt();
	char *old = NULL;
	pthread_mutex_lock(&snap_lock);
	struct snapshot *slot = &snaps[0];
	for (int i = 0; i < SNAP_SLOTS; i++) {
		struct snapshot *s = &snaps[i];
		if ((s->pid == pid && s->ino == ino && s->v == v) || s->text == NULL) {
			slot = s;
			break;
		}
		if (s->when < slot->when)
			slot = s;
	}
	old = slot->text;
	*slot = (struct snapshot){pid, ino, v, now, text, len};
	pthread_mutex_unlock(&snap_lock);
	free(old);
}

/* Takes the snapshot pid probed of (ino, v), if recent. */
static char *snap_take(pid_t pid, fuse_ino_t ino, const struct vattr *v, size_t *len)
{
	uint64_t now = node_now_rt();
	char *text = NULL;
	pthread_mutex_lock(&snap_lock);
	for (int i = 0; i < SNAP_SLOTS; i++) {
		struct snapshot *s = &snaps[i];
		if (s->text != NULL && s->pid == pid && s->ino == ino && s->v == v) {
			if (now - s->when < SNAP_TTL_NS) {
				text = s->text;
				*len = s->len;
			} else {
				free(s->text);
			}
			s->text = NULL;
			break;
		}
	}
	pthread_mutex_unlock(&snap_lock);
	return text;
}

/* ---- the calls ---- */

static int is_ours(const char *name)
{
	return strncmp(name, PREFIX, PREFIX_LEN) == 0;
}

int vattr_getxattr(fuse_req_t req, struct tfs *fs, fuse_ino_t ino, const char *name, size_t size)
{
	if (!is_ours(name))
		return 0;
	enum where w;
	const struct vattr *v = NULL;
	int err = where_of(fs, ino, &w);
	if (err == 0 && (v = vattr_find(name + PREFIX_LEN, w)) == NULL)
		err = -ENODATA;
	if (err != 0) {
		fuse_reply_err(req, -err);
		return 1;
	}
	pid_t pid = fuse_req_ctx(req)->pid;
	size_t len = 0;
	char *text = size ? snap_take(pid, ino, v, &len) : NULL;
	if (text == NULL) {
		struct json j;
		json_init(&j);
		err = generate(fs, ino, v, &j);
		if (err == 0)
			err = json_finish(&j, &text, &len);
		else
			free(j.buf);
	}
	if (err != 0)
		fuse_reply_err(req, -err);
	else if (size == 0) {
		/* Kept before the reply: the read that follows may reach another thread first. */
		snap_keep(pid, ino, v, text, len);
		fuse_reply_xattr(req, len);
		return 1;
	} else if (len > size)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, text, len);
	free(text);
	return 1;
}

/* Applies a new value to a writable name. 0 or -EINVAL. */
static int apply(struct tfs *fs, fuse_ino_t ino, const struct vattr *v, const char *value)
{
	uint64_t x;
	if (v->where == ON_FILE) {
		if (size_parse(value, &x) != 0)
			return -EINVAL;
		return node_expect(fs, ino, x);
	}
	if (opts_value(v->name, value, &x) != 0)
		return -EINVAL;
	uint64_t rate = __atomic_load_n(&fs->opt.rate, __ATOMIC_RELAXED);
	uint64_t file_rate = __atomic_load_n(&fs->opt.file_rate, __ATOMIC_RELAXED);
	if (strcmp(v->name, "rate") == 0)
		rate = x;
	else
		file_rate = x;
	__atomic_store_n(&fs->opt.rate, rate, __ATOMIC_RELAXED);
	__atomic_store_n(&fs->opt.file_rate, file_rate, __ATOMIC_RELAXED);
	stream_engine_set_rate(fs->streams, rate, file_rate);
	fuse_log(FUSE_LOG_INFO, "throttlefs: %s set to %s at run time\n", v->name, value);
	return 0;
}

int vattr_setxattr(fuse_req_t req, struct tfs *fs, fuse_ino_t ino, const char *name,
		   const char *value, size_t size)
{
	if (!is_ours(name))
		return 0;
	enum where w;
	const struct vattr *v = NULL;
	int err = where_of(fs, ino, &w);
	if (err == 0 && (v = vattr_find(name + PREFIX_LEN, w)) == NULL)
		err = -ENODATA;
	if (err == 0 && !v->writable)
		err = -EROFS;
	/* The limits are the mount's: only its owner (or root) changes them. */
	uid_t uid = fuse_req_ctx(req)->uid;
	if (err == 0 && v->where == ON_ROOT && uid != 0 && uid != geteuid())
		err = -EPERM;
	char text[32];
	if (err == 0 && (size >= sizeof(text) || memchr(value, '\0', size) != NULL))
		err = -EINVAL; /* no valid value is that long, or holds a NUL */
	if (err == 0) {
		memcpy(text, value, size);
		text[size] = '\0';
		/* setfattr and echo add no newline, but a script's $(...) might: allow one */
		if (size > 0 && text[size - 1] == '\n')
			text[size - 1] = '\0';
		err = apply(fs, ino, v, text);
	}
	fuse_reply_err(req, -err);
	return 1;
}

int vattr_removexattr(fuse_req_t req, struct tfs *fs, fuse_ino_t ino, const char *name)
{
	if (!is_ours(name))
		return 0;
	enum where w;
	const struct vattr *v = NULL;
	int err = where_of(fs, ino, &w);
	if (err == 0 && (v = vattr_find(name + PREFIX_LEN, w)) == NULL)
		err = -ENODATA;
	if (err == 0)
		err = v->where == ON_FILE && v->writable ? node_expect(fs, ino, 0) : -EROFS;
	fuse_reply_err(req, -err);
	return 1;
}
