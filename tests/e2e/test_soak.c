/*
 * test_soak.c - a time-bounded soak: many threads hammer one small-budget mount at once.
 *
 * Under rate=32M,buffer=256K,max_buffer=4M, for TFS_SOAK_SECONDS (default 20):
 *   - 16 writers each create files of random sizes in their own directory, writing them in
 *     chunks at shuffled offsets and then overwriting a few ranges again;
 *   - 2 readers open files already closed and check every byte;
 *   - a walker runs nftw over the whole mount (a find/stat storm);
 *   - a poller reads user.throttlefs.progress of files being written and memory/transfers of
 *     the root, each of which must be valid JSON;
 *   - a mover renames finished files into another directory and unlinks some of them.
 * The model is exact because every file has one owner and its content is a function of its
 * seed and the offset (h_pat_fill): whatever order the chunks went in, the file must equal the
 * pattern over its size. Records of all files (name, size, seed, whether unlinked) live in a
 * table under one mutex; only the mover changes a finished file's name or existence.
 *
 * What must hold:
 *   - no deadlock: every thread stamps the time it started its current operation, and a
 *     watchdog fails the test when any stamp is older than 30 s (a hung thread is then left
 *     behind: the teardown kills the daemon, which unblocks it);
 *   - the daemon's resident size never passes max_buffer (4 MiB) + 16 MiB, the bound the
 *     issues set: sampled every 100 ms while the soak runs and, at the end, its peak as the
 *     kernel kept it (VmHWM), so no spike between two samples escapes. Not checked when the
 *     daemon runs under a sanitizer, whose shadow memory makes resident size meaningless (the
 *     test says so); TFS_SOAK_RSS=0 reports the figures without failing on them;
 *   - at the end every live file reads back equal to the model, through the view and in the
 *     backing dir (after fsync), unlinked files are gone, and the two trees list the same names.
 * The figures (operations per kind, bytes written, peak RSS) are printed at the end. Nothing is
 * timed: the duration bounds the work, not the other way round.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <cmocka.h>

#include "harness.h"
#include "jsonr.h"

#define WRITERS	    16
#define READERS	    2
#define NTHREADS    (WRITERS + READERS + 3) /* + walker, poller, mover */
#define MAX_FILES   8192
#define MAX_SIZE    (768 << 10)
#define MAX_CHUNK   (64 << 10)
#define STUCK_MS    30000
#define RSS_BOUND_K ((4 + 16) * 1024) /* max_buffer + 16 MiB */

enum { ST_WRITING, ST_DONE, ST_MOVING, ST_GONE };

struct rec {
	char name[48]; /* relative to the mount */
	size_t size;
	unsigned seed;
	int state;
};

enum { K_FILES, K_WRITES, K_BYTES, K_READS, K_WALKS, K_STATS, K_XATTRS, K_RENAMES, K_UNLINKS, K_N };
static const char *const kind_name[K_N] = {"files", "writes", "bytes written", "reads",	 "walks",
					   "stats", "xattrs", "renames",       "unlinks"};

static struct soak {
	struct h_fs *fs;
	pthread_mutex_t lock; /* guards recs, nrecs, current */
	struct rec recs[MAX_FILES];
	int nrecs;
	int current[WRITERS]; /* the record each writer is writing, or -1 */
	atomic_bool stop;
	atomic_int running;
	_Atomic int64_t started[NTHREADS]; /* ms when the thread's current op began, 0: idle */
	const char *_Atomic what[NTHREADS];
	atomic_ullong count[K_N];
	pthread_mutex_t fail_lock;
	char failure[512]; /* the first failure, empty while all is well */
} S = {.lock = PTHREAD_MUTEX_INITIALIZER, .fail_lock = PTHREAD_MUTEX_INITIALIZER};

static void op_begin(int t, const char *what)
{
	atomic_store(&S.what[t], what);
	atomic_store(&S.started[t], h_clock_ms());
}

static void op_end(int t)
{
	atomic_store(&S.started[t], 0);
}

/* Records the first failure and stops every thread. */
static void soak_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void soak_fail(const char *fmt, ...)
{
	pthread_mutex_lock(&S.fail_lock);
	if (S.failure[0] == '\0') {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(S.failure, sizeof(S.failure), fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&S.fail_lock);
	atomic_store(&S.stop, true);
}

static bool stopping(void)
{
	return atomic_load(&S.stop);
}

static void add(int kind, unsigned long long n)
{
	atomic_fetch_add(&S.count[kind], n);
}

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Checks that fd holds exactly size bytes of pattern seed. Returns 0 or -1 with why. */
static int check_fd(int fd, size_t size, unsigned seed, char *why, size_t whylen)
{
	unsigned char buf[MAX_CHUNK];
	struct stat st;
	if (fstat(fd, &st) != 0 || (size_t)st.st_size != size) {
		snprintf(why, whylen, "size %lld, expected %zu", (long long)st.st_size, size);
		return -1;
	}
	size_t off = 0;
	for (;;) {
		ssize_t n = pread(fd, buf, sizeof(buf), (off_t)off);
		if (n < 0) {
			snprintf(why, whylen, "read at %zu: %s", off, strerror(errno));
			return -1;
		}
		if (n == 0)
			break;
		ssize_t bad = h_pat_check(buf, (size_t)n, off, seed);
		if (bad >= 0) {
			snprintf(why, whylen, "wrong byte at offset %zu", off + (size_t)bad);
			return -1;
		}
		off += (size_t)n;
	}
	if (off != size) {
		snprintf(why, whylen, "read %zu bytes, expected %zu", off, size);
		return -1;
	}
	return 0;
}

/* ---- writers ---- */

/* Writes record r's file: chunks in shuffled order, then a few overwrites. 0 or -1. */
static int write_one(int t, struct rec *r, uint64_t *rs)
{
	unsigned char buf[MAX_CHUNK];
	size_t offs[MAX_SIZE / 4096 + 1];
	char path[PATH_MAX];
	h_path(path, "%s/%s", S.fs->mnt, r->name);
	op_begin(t, "create");
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	op_end(t);
	if (fd < 0) {
		soak_fail("create %s: %s", r->name, strerror(errno));
		return -1;
	}
	size_t chunk = 4096 * (1 + rnd(rs) % (MAX_CHUNK / 4096));
	size_t n = 0;
	for (size_t off = 0; off < r->size; off += chunk)
		offs[n++] = off;
	for (size_t i = n; i > 1; i--) {
		size_t j = rnd(rs) % i, x = offs[i - 1];
		offs[i - 1] = offs[j];
		offs[j] = x;
	}
	/* Then up to 3 overwrites of random ranges inside the file: same bytes, new writes. */
	size_t extra = r->size ? rnd(rs) % 4 : 0;
	int rc = 0;
	for (size_t i = 0; i < n + extra && rc == 0 && !stopping(); i++) {
		size_t off = i < n ? offs[i] : rnd(rs) % r->size;
		size_t len = i < n ? chunk : 1 + rnd(rs) % MAX_CHUNK;
		if (len > r->size - off)
			len = r->size - off;
		h_pat_fill(buf, len, off, r->seed);
		op_begin(t, "pwrite");
		ssize_t w = pwrite(fd, buf, len, (off_t)off);
		op_end(t);
		if (w != (ssize_t)len) {
			soak_fail("pwrite %s at %zu: %zd (%s)", r->name, off, w,
				  w < 0 ? strerror(errno) : "short");
			rc = -1;
		}
		add(K_WRITES, 1);
		add(K_BYTES, len);
	}
	op_begin(t, "close");
	if (close(fd) != 0 && rc == 0) {
		soak_fail("close %s: %s", r->name, strerror(errno));
		rc = -1;
	}
	op_end(t);
	return rc;
}

static void *writer(void *arg)
{
	int t = (int)(intptr_t)arg;
	uint64_t rs = 0x9e3779b97f4a7c15ull * (uint64_t)(t + 1);
	for (int k = 0; !stopping(); k++) {
		pthread_mutex_lock(&S.lock);
		int i = S.nrecs < MAX_FILES ? S.nrecs++ : -1;
		struct rec copy;
		if (i >= 0) {
			struct rec *r = &S.recs[i];
			snprintf(r->name, sizeof(r->name), "w%02d/f%05d", t, k);
			r->size = rnd(&rs) % (MAX_SIZE + 1);
			r->seed = (unsigned)i * 7919u + 1;
			r->state = ST_WRITING;
			S.current[t] = i;
			copy = *r;
		}
		pthread_mutex_unlock(&S.lock);
		if (i < 0)
			break; /* the table is full: this writer is done */
		int rc = write_one(t, &copy, &rs);
		pthread_mutex_lock(&S.lock);
		S.current[t] = -1;
		/* A file cut short by the stop is not in the model: its content is partial. */
		bool done = rc == 0 && !stopping();
		S.recs[i].state = done ? ST_DONE : ST_GONE;
		if (!done)
			S.recs[i].name[0] = '\0';
		pthread_mutex_unlock(&S.lock);
		if (done)
			add(K_FILES, 1);
		else if (rc == 0 && unlink(H_AT(S.fs->mnt, copy.name)) != 0)
			soak_fail("unlink of unfinished %s: %s", copy.name, strerror(errno));
	}
	atomic_fetch_sub(&S.running, 1);
	return NULL;
}

/* Picks a random finished record; copies it and returns its index, or -1 if none. */
static int pick_done(uint64_t *rs, struct rec *out)
{
	pthread_mutex_lock(&S.lock);
	int idx = -1;
	for (int tries = 0; tries < 16 && S.nrecs > 0 && idx < 0; tries++) {
		int i = (int)(rnd(rs) % (uint64_t)S.nrecs);
		if (S.recs[i].state == ST_DONE)
			idx = i;
	}
	if (idx >= 0)
		*out = S.recs[idx];
	pthread_mutex_unlock(&S.lock);
	return idx;
}

/* Whether record i still has the name and state of snapshot r (a vanished file is a bug). */
static bool unchanged(int i, const struct rec *r)
{
	pthread_mutex_lock(&S.lock);
	bool same = S.recs[i].state == ST_DONE && strcmp(S.recs[i].name, r->name) == 0;
	pthread_mutex_unlock(&S.lock);
	return same;
}

/* ---- readers, walker, poller, mover ---- */

static void *reader(void *arg)
{
	int t = (int)(intptr_t)arg;
	uint64_t rs = 0xabcdef12345ull * (uint64_t)(t + 1);
	while (!stopping()) {
		struct rec r;
		int i = pick_done(&rs, &r);
		if (i < 0) {
			h_nap_ms(5);
			continue;
		}
		op_begin(t, "open+read");
		int fd = open(H_AT(S.fs->mnt, r.name), O_RDONLY | O_CLOEXEC);
		int err = errno;
		char why[160];
		if (fd < 0) {
			if (err != ENOENT || unchanged(i, &r))
				soak_fail("open %s: %s", r.name, strerror(err));
		} else {
			if (check_fd(fd, r.size, r.seed, why, sizeof(why)) != 0)
				soak_fail("read back %s: %s", r.name, why);
			if (close(fd) != 0)
				soak_fail("close %s: %s", r.name, strerror(errno));
			add(K_READS, 1);
		}
		op_end(t);
	}
	atomic_fetch_sub(&S.running, 1);
	return NULL;
}

static int walk_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)path, (void)st, (void)ftw;
	/* FTW_NS: lstat failed, i.e. the mover took the name between readdir and lstat. */
	if (flag != FTW_NS)
		add(K_STATS, 1);
	return stopping() ? 1 : 0;
}

static void *walker(void *arg)
{
	int t = (int)(intptr_t)arg;
	while (!stopping()) {
		op_begin(t, "nftw");
		int rc = nftw(S.fs->mnt, walk_entry, 32, FTW_PHYS);
		op_end(t);
		if (rc < 0)
			soak_fail("nftw over the mount: %s", strerror(errno));
		add(K_WALKS, 1);
	}
	atomic_fetch_sub(&S.running, 1);
	return NULL;
}

/* Reads virtual attribute name of path and checks it is JSON. 0, -ENOENT (path gone), or -1. */
#define POLL_BUF (1 << 20)
static int poll_json(int t, char *buf, const char *path, const char *name)
{
	char full[96];
	snprintf(full, sizeof(full), "user.throttlefs.%s", name);
	op_begin(t, name);
	ssize_t n = getxattr(path, full, buf, POLL_BUF);
	int err = errno;
	op_end(t);
	if (n < 0 && err == ENOENT)
		return -ENOENT;
	if (n < 0) {
		soak_fail("getxattr %s of %s: %s", full, path, strerror(err));
		return -1;
	}
	struct jsonr *d = NULL;
	if (jsonr_parse(buf, (size_t)n, &d) != 0) {
		soak_fail("%s of %s is not JSON: %.*s", full, path, (int)(n < 200 ? n : 200), buf);
		return -1;
	}
	jsonr_free(d);
	add(K_XATTRS, 1);
	return 0;
}

static void *poller(void *arg)
{
	int t = (int)(intptr_t)arg;
	uint64_t rs = 0x5eed;
	char *buf = malloc(POLL_BUF);
	if (buf == NULL)
		soak_fail("poller: out of memory");
	while (!stopping()) {
		poll_json(t, buf, S.fs->mnt, "memory");
		poll_json(t, buf, S.fs->mnt, "transfers");
		for (int w = 0; w < WRITERS && !stopping(); w++) {
			char name[48] = "";
			pthread_mutex_lock(&S.lock);
			int i = S.current[w];
			if (i >= 0)
				memcpy(name, S.recs[i].name, sizeof(name));
			pthread_mutex_unlock(&S.lock);
			if (name[0] != '\0')
				poll_json(t, buf, H_AT(S.fs->mnt, name), "progress");
		}
		struct rec r;
		if (pick_done(&rs, &r) >= 0)
			poll_json(t, buf, H_AT(S.fs->mnt, r.name), "progress");
		h_nap_ms(2);
	}
	free(buf);
	atomic_fetch_sub(&S.running, 1);
	return NULL;
}

/* Renames finished files from their writer's directory to moved/, and unlinks moved ones. */
static void *mover(void *arg)
{
	int t = (int)(intptr_t)arg;
	uint64_t rs = 0x77;
	while (!stopping()) {
		h_nap_ms(3);
		struct rec r;
		int i = pick_done(&rs, &r);
		if (i < 0)
			continue;
		bool moved = strncmp(r.name, "moved/", 6) == 0;
		if (moved && rnd(&rs) % 2 == 0)
			continue; /* keep about half of the moved files to the end */
		char to[48];
		if (!moved)
			snprintf(to, sizeof(to), "moved/%.3s-%.20s", r.name, r.name + 4);
		/* The record leaves ST_DONE first, so that no reader picks it meanwhile, and a
		 * reader that picked it before and then fails to open it sees it changed. */
		pthread_mutex_lock(&S.lock);
		S.recs[i].state = moved ? ST_GONE : ST_MOVING;
		pthread_mutex_unlock(&S.lock);
		op_begin(t, moved ? "unlink" : "rename");
		int rc = moved ? unlink(H_AT(S.fs->mnt, r.name))
			       : rename(H_AT(S.fs->mnt, r.name), H_AT(S.fs->mnt, to));
		int err = errno;
		op_end(t);
		if (rc != 0)
			soak_fail("%s %s: %s", moved ? "unlink" : "rename", r.name, strerror(err));
		if (!moved) {
			pthread_mutex_lock(&S.lock);
			memcpy(S.recs[i].name, to, sizeof(to));
			S.recs[i].state = ST_DONE;
			pthread_mutex_unlock(&S.lock);
		}
		add(moved ? K_UNLINKS : K_RENAMES, 1);
	}
	atomic_fetch_sub(&S.running, 1);
	return NULL;
}

/* ---- the watchdog and the test ---- */

/* Returns the index of a thread stuck in one operation for STUCK_MS, or -1. */
static int stuck_thread(int64_t now)
{
	for (int t = 0; t < NTHREADS; t++) {
		int64_t s = atomic_load(&S.started[t]);
		if (s != 0 && now - s > STUCK_MS)
			return t;
	}
	return -1;
}

static int soak_seconds(void)
{
	const char *e = getenv("TFS_SOAK_SECONDS");
	int s = e && *e ? atoi(e) : 20;
	return s > 0 ? s : 20;
}

static int files_seen;
static int count_file(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)path, (void)ftw;
	files_seen += flag == FTW_F && S_ISREG(st->st_mode);
	return 0;
}

/* Checks record r against the view and the backing dir; fails the test on a difference. */
static void check_final(struct h_fs *fs, const struct rec *r)
{
	const char *dirs[2] = {fs->mnt, fs->backing};
	for (int d = 0; d < 2; d++) {
		const char *p = H_AT(dirs[d], r->name);
		if (r->state == ST_GONE) {
			if (r->name[0] != '\0' && access(p, F_OK) == 0)
				fail_msg("%s exists but was unlinked", p);
			continue;
		}
		int fd = open(p, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			fail_msg("open %s: %s", p, strerror(errno));
		char why[160];
		int rc = check_fd(fd, r->size, r->seed, why, sizeof(why));
		close(fd);
		if (rc != 0)
			fail_msg("%s: %s", p, why);
	}
}

static void soak(void **state)
{
	(void)state;
	int secs = soak_seconds();
	struct h_fs *fs = h_fs_new();
	assert_non_null(fs);
	S.fs = fs;
	if (h_fs_mount(fs, "rate=32M,buffer=256K,max_buffer=4M") != 0) {
		h_fs_free(fs);
		fail_msg("mount failed");
	}
	for (int w = 0; w < WRITERS; w++) {
		S.current[w] = -1;
		char d[PATH_MAX];
		assert_int_equal(mkdir(h_path(d, "%s/w%02d", fs->mnt, w), 0755), 0);
	}
	assert_int_equal(mkdir(H_AT(fs->mnt, "moved"), 0755), 0);

	bool sanitized = h_sanitized(fs->pid);
	const char *want = getenv("TFS_SOAK_RSS");
	bool enforce = !sanitized && !(want && strcmp(want, "0") == 0);
	long base = h_rss_kib(fs->pid), peak = base;
	assert_true(base > 0);
	if (sanitized)
		fprintf(stderr,
			"soak: the daemon runs under a sanitizer: its RSS is printed but not "
			"bounded (shadow memory)\n");
	else if (!enforce)
		fprintf(stderr, "soak: TFS_SOAK_RSS=0: the RSS bound (%d KiB) is reported only\n",
			RSS_BOUND_K);

	pthread_t th[NTHREADS];
	int nt = 0;
	atomic_store(&S.running, NTHREADS);
	for (int w = 0; w < WRITERS; w++, nt++)
		assert_int_equal(pthread_create(&th[nt], NULL, writer, (void *)(intptr_t)nt), 0);
	for (int r = 0; r < READERS; r++, nt++)
		assert_int_equal(pthread_create(&th[nt], NULL, reader, (void *)(intptr_t)nt), 0);
	assert_int_equal(pthread_create(&th[nt], NULL, walker, (void *)(intptr_t)nt), 0);
	nt++;
	assert_int_equal(pthread_create(&th[nt], NULL, poller, (void *)(intptr_t)nt), 0);
	nt++;
	assert_int_equal(pthread_create(&th[nt], NULL, mover, (void *)(intptr_t)nt), 0);
	nt++;

	/* The watchdog runs here: until the time is up, then until every thread has finished. */
	int64_t end = h_clock_ms() + secs * 1000LL;
	int stuck = -1;
	while (atomic_load(&S.running) > 0 && stuck < 0) {
		h_nap_ms(100);
		int64_t now = h_clock_ms();
		if (now >= end)
			atomic_store(&S.stop, true);
		long rss = h_rss_kib(fs->pid);
		if (rss > peak)
			peak = rss;
		if (enforce && rss > RSS_BOUND_K)
			soak_fail("daemon VmRSS %ld KiB, above max_buffer + 16 MiB = %d KiB", rss,
				  RSS_BOUND_K);
		stuck = stuck_thread(now);
	}
	if (stuck >= 0) {
		/* Left running: the teardown kills the daemon, which unblocks the thread. */
		fprintf(stderr, "soak: thread %d stuck in %s for more than %d s\n", stuck,
			atomic_load(&S.what[stuck]), STUCK_MS / 1000);
		h_fs_free(fs);
		fail_msg("deadlock: thread %d stuck in %s", stuck, atomic_load(&S.what[stuck]));
	}
	for (int i = 0; i < nt; i++)
		pthread_join(th[i], NULL);

	fprintf(stderr, "soak: %d s, %d threads; ", secs, NTHREADS);
	for (int k = 0; k < K_N; k++)
		fprintf(stderr, "%s %llu%s", kind_name[k], (unsigned long long)S.count[k],
			k + 1 < K_N ? ", " : "\n");
	long hwm = h_hwm_kib(fs->pid);
	fprintf(stderr,
		"soak: daemon VmRSS %ld KiB at start, sampled peak %ld KiB, VmHWM %ld KiB "
		"(bound %d)%s\n",
		base, peak, hwm, RSS_BOUND_K,
		sanitized ? " [sanitized: not bounded]"
		: enforce ? ""
			  : " [bound not enforced]");
	if (enforce && S.failure[0] == '\0' && hwm > RSS_BOUND_K)
		soak_fail("daemon VmHWM %ld KiB, above max_buffer + 16 MiB = %d KiB", hwm,
			  RSS_BOUND_K);
	if (S.failure[0] != '\0') {
		fprintf(stderr, "soak: %s\n", S.failure);
		h_fs_free(fs);
		fail_msg("soak failed: %s", S.failure);
	}

	/* The model against the view, then (after fsync) against the backing dir. */
	assert_int_equal(h_sync_tree(fs->mnt), 0);
	int live = 0;
	for (int i = 0; i < S.nrecs; i++) {
		check_final(fs, &S.recs[i]);
		live += S.recs[i].state == ST_DONE;
	}
	assert_int_equal(nftw(fs->mnt, count_file, 32, FTW_PHYS), 0);
	if (files_seen != live)
		fail_msg("the view holds %d files, the model %d", files_seen, live);
	assert_int_equal(h_tree_compare(fs->mnt, fs->backing, H_CMP_MODE, NULL), 0);
	fprintf(stderr, "soak: %d files in the model, %d live, all equal in view and backing\n",
		S.nrecs, live);
	assert_true(S.count[K_FILES] > 0 && S.count[K_READS] > 0);
	assert_int_equal(h_fs_free(fs), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {cmocka_unit_test(soak)};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
