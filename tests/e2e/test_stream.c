/*
 * test_stream.c - streaming writes end to end (issue 3): what a program that writes through the
 * view can observe of the buffers between it and a slow store.
 *
 *   - backpressure: over a stalled store a writer stops once its buffer is full, and while it
 *     (or a dozen writers, more than the daemon has drain threads) is blocked, every other
 *     request on the mount still answers;
 *   - the rate set with rate= or file_rate= holds, within a tolerance that a busy machine
 *     cannot break (the precise figure is the benchmark's business);
 *   - durability: close(2) and fsync(2) return only once the data is in the store;
 *   - errors of the store (a full tmpfs, faultfs's injected EIO) reach the writer, at write,
 *     fsync or close, stick to the file, and leave other files and the mount usable;
 *   - consistency while data is still buffered: read-your-writes through any descriptor, sizes,
 *     truncate, O_APPEND, scattered and overlapping writes, rename, unlink, copy_file_range;
 *     and under 8 writers and 8 readers sharing files;
 *   - memory: the daemon's resident size stays near its buffer budget while 256 MiB stream
 *     through it.
 *
 * The store is a faultfs mount (stalled with stall=1 so data stays buffered as long as a test
 * needs, or slowed with latency_us), a small tmpfs, or a plain directory. What reached the
 * store is always read behind the daemons' backs, in fs->store. Every wait is a poll against
 * a generous watchdog, and a request that must answer runs in a thread the test waits for
 * with that watchdog, so a hang is a failure and not a stuck test. Worker threads never call
 * cmocka's assertions (they cannot longjmp across threads): they record what they saw, and the
 * test thread asserts after joining them. The harness unmounts the view, then the store, even
 * after a failure (a stalled faultfs is released first so the daemon can drain and exit).
 *
 * STREAM_TEST=glob runs only the matching tests; STREAM_KNOWN_ISSUES=1 also runs the test of a
 * known limitation (test_known_open_behind_partial_page), which fails today.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "harness.h"

#define KiB	    (1ull << 10)
#define MiB	    (1ull << 20)
#define WATCHDOG_MS 20000 /* a request that must answer, a writer that must stop or finish */

/* ---- data: every byte a function of its file offset (h_pat_fill), so any piece can be
 * checked alone ---- */

/* Requires path to hold exactly size bytes of pattern seed. */
static void expect_pattern(const char *path, uint64_t size, unsigned seed)
{
	static unsigned char buf[1 << 20];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		fprintf(stderr, "open %s: %s\n", path, strerror(errno));
	assert_true(fd >= 0);
	uint64_t off = 0;
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0)
			fprintf(stderr, "read %s: %s\n", path, strerror(errno));
		assert_true(n >= 0);
		if (n == 0)
			break;
		ssize_t bad = h_pat_check(buf, (size_t)n, off, seed);
		if (bad >= 0)
			fprintf(stderr, "%s: wrong byte at offset %llu\n", path,
				(unsigned long long)(off + (uint64_t)bad));
		assert_true(bad < 0);
		off += (uint64_t)n;
	}
	assert_int_equal(close(fd), 0);
	if (off != size)
		fprintf(stderr, "%s: %llu bytes, expected %llu\n", path, (unsigned long long)off,
			(unsigned long long)size);
	assert_true(off == size);
}

/* Requires path to hold exactly want[0..len). */
static void expect_bytes(const char *path, const void *want, size_t len)
{
	unsigned char *buf = malloc(len + 1);
	assert_non_null(buf);
	ssize_t n = h_read_file(path, buf, len + 1);
	if (n != (ssize_t)len)
		fprintf(stderr, "%s: read %zd, expected %zu bytes\n", path, n, len);
	assert_int_equal(n, (ssize_t)len);
	assert_memory_equal(buf, want, len);
	free(buf);
}

/* Requires the descriptor to read want[0..len) from offset 0 and then end (the daemon's view of
 * the file: the kernel's cache of it is dropped first, so the reads reach the daemon). */
static void expect_fd_bytes(int fd, const void *want, size_t len)
{
	unsigned char *buf = malloc(len + 1);
	assert_non_null(buf);
	assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
	size_t got = 0;
	for (;;) {
		ssize_t n = pread(fd, buf + got, len + 1 - got, (off_t)got);
		assert_true(n >= 0);
		if (n == 0 || got + (size_t)n > len) {
			got += (size_t)n;
			break;
		}
		got += (size_t)n;
	}
	if (got != len)
		fprintf(stderr, "read %zu bytes, expected %zu\n", got, len);
	assert_int_equal(got, len);
	assert_memory_equal(buf, want, len);
	free(buf);
}

static int open_ok(const char *path, int flags)
{
	int fd = open(path, flags | O_CLOEXEC, 0644);
	if (fd < 0)
		fprintf(stderr, "open %s: %s\n", path, strerror(errno));
	assert_true(fd >= 0);
	return fd;
}

static void pwrite_ok(int fd, const void *buf, size_t len, uint64_t off)
{
	assert_int_equal(pwrite(fd, buf, len, (off_t)off), (ssize_t)len);
}

/* Writes the bytes [from, to) of pattern seed through fd, whose position is from, in
 * chunk-sized write(2) calls. */
static void write_pattern(int fd, uint64_t from, uint64_t to, size_t chunk, unsigned seed)
{
	unsigned char *buf = malloc(chunk);
	assert_non_null(buf);
	for (uint64_t off = from; off < to;) {
		size_t n = to - off < chunk ? (size_t)(to - off) : chunk;
		h_pat_fill(buf, n, off, seed);
		ssize_t w = write(fd, buf, n);
		if (w < 0)
			fprintf(stderr, "write at %llu: %s\n", (unsigned long long)off,
				strerror(errno));
		assert_true(w > 0);
		off += (uint64_t)w;
	}
	free(buf);
}

static off_t size_of(const char *path)
{
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	return st.st_size;
}

/* Bytes of path's data in the page cache (mincore over a mapping of the whole file). */
static uint64_t cached_bytes(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	size_t page = (size_t)sysconf(_SC_PAGESIZE), pages = ((size_t)st.st_size + page - 1) / page;
	void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	assert_true(map != MAP_FAILED);
	unsigned char *vec = malloc(pages);
	assert_non_null(vec);
	assert_int_equal(mincore(map, (size_t)st.st_size, vec), 0);
	uint64_t n = 0;
	for (size_t i = 0; i < pages; i++)
		n += vec[i] & 1;
	free(vec);
	assert_int_equal(munmap(map, (size_t)st.st_size), 0);
	close(fd);
	return n * page;
}

/* ---- fixtures: the view over a faultfs store, a tmpfs, or a plain directory ---- */

static int st_teardown(void **state)
{
	int rc = h_fs_free(*state);
	*state = NULL;
	return rc;
}

/* A fresh fs in *state (so the teardown frees it whatever happens next). */
static struct h_fs *fs_new(void **state)
{
	struct h_fs *fs = h_fs_new();
	assert_non_null(fs);
	*state = fs;
	return fs;
}

static struct h_fs *over_plain(void **state, const char *opts)
{
	struct h_fs *fs = fs_new(state);
	assert_int_equal(h_fs_mount(fs, opts), 0);
	return fs;
}

static struct h_fs *over_faultfs(void **state, const char *ffopts, const char *opts)
{
	struct h_fs *fs = fs_new(state);
	assert_int_equal(h_lower_faultfs(fs, ffopts), 0);
	assert_int_equal(h_fs_mount(fs, opts), 0);
	return fs;
}

/* A mount over a tmpfs of the given size, made for the test; skips the test when not root. */
static struct h_fs *over_tmpfs(void **state, const char *size, const char *opts)
{
	if (geteuid() != 0) {
		fprintf(stderr, "skipped: mounting a tmpfs needs root\n");
		skip();
	}
	struct h_fs *fs = fs_new(state);
	assert_int_equal(h_lower_tmpfs(fs, size), 0);
	assert_int_equal(h_fs_mount(fs, opts), 0);
	return fs;
}

static void ff_set(struct h_fs *fs, const char *name, const char *value)
{
	assert_int_equal(h_faultfs_set(fs, name, value), 0);
}

/* Waits until at least n writes are blocked in the stalled faultfs. */
static void wait_stalled(struct h_fs *fs, long long n)
{
	int64_t end = h_clock_ms() + WATCHDOG_MS;
	long long got;
	while ((got = h_faultfs_get(fs, "stalled")) < n) {
		assert_true(got >= 0);
		if (h_clock_ms() > end)
			fprintf(stderr, "only %lld writes reached the stalled store\n", got);
		assert_true(h_clock_ms() <= end);
		h_nap_ms(10);
	}
}

/* ---- requests that must answer: each runs in a thread, waited for with the watchdog ---- */

enum probe_kind { P_STAT, P_XATTR, P_READDIR, P_READ, P_STATFS, P_OPEN };

static const char *const probe_names[] = {"stat",      "getxattr", "readdir",
					  "open+read", "statfs",   "open"};

#define OTHER_TEXT "another file, already in the store"

struct probe {
	enum probe_kind kind;
	char path[PATH_MAX];
	atomic_bool done;
	int err;    /* errno of the failed call, or -1 when the answer was wrong */
	off_t size; /* P_STAT */
};

static void *probe_run(void *arg)
{
	struct probe *p = arg;
	char buf[256];
	struct stat st;
	struct statvfs sv;
	p->err = 0;
	switch (p->kind) {
	case P_STAT:
		if (stat(p->path, &st) != 0)
			p->err = errno;
		p->size = st.st_size;
		break;
	case P_XATTR: {
		ssize_t n = getxattr(p->path, "user.tag", buf, sizeof(buf));
		p->err = n < 0 ? errno : n == 3 && memcmp(buf, "tag", 3) == 0 ? 0 : -1;
		break;
	}
	case P_READDIR: {
		DIR *d = opendir(p->path);
		bool seen = false;
		if (d == NULL) {
			p->err = errno;
			break;
		}
		for (struct dirent *e; (e = readdir(d)) != NULL;)
			seen = seen || strcmp(e->d_name, "other") == 0;
		if (closedir(d) != 0)
			p->err = errno;
		else if (!seen)
			p->err = -1;
		break;
	}
	case P_READ: {
		ssize_t n = h_read_file(p->path, buf, sizeof(buf));
		p->err = n < 0 ? (int)-n
			 : n == sizeof(OTHER_TEXT) - 1 &&
				 memcmp(buf, OTHER_TEXT, sizeof(OTHER_TEXT) - 1) == 0
			     ? 0
			     : -1;
		break;
	}
	case P_STATFS:
		if (statvfs(p->path, &sv) != 0)
			p->err = errno;
		break;
	case P_OPEN: {
		int fd = open(p->path, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || close(fd) != 0)
			p->err = errno;
		break;
	}
	}
	atomic_store(&p->done, true);
	return NULL;
}

/* Runs one request in a thread and requires its answer within the watchdog; returns the size
 * for P_STAT. A request that hangs fails the test (its thread and probe are left behind). */
static off_t probe(enum probe_kind kind, const char *path)
{
	struct probe *p = calloc(1, sizeof(*p));
	assert_non_null(p);
	p->kind = kind;
	h_path(p->path, "%s", path);
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, probe_run, p), 0);
	struct timespec end;
	clock_gettime(CLOCK_REALTIME, &end);
	end.tv_sec += WATCHDOG_MS / 1000;
	int r = pthread_timedjoin_np(t, NULL, &end);
	if (r != 0) {
		fprintf(stderr, "%s %s: no answer within %d ms while writers are blocked\n",
			probe_names[kind], path, WATCHDOG_MS);
		fail();
	}
	if (p->err != 0)
		fprintf(stderr, "%s %s: %s\n", probe_names[kind], path,
			p->err > 0 ? strerror(p->err) : "wrong answer");
	assert_int_equal(p->err, 0);
	off_t size = p->size;
	free(p);
	return size;
}

/* A file the probes look at, written (and in the store) before any fault is switched on. */
static void make_other(struct h_fs *fs)
{
	assert_int_equal(h_write_file(H_AT(fs->mnt, "other"), OTHER_TEXT, strlen(OTHER_TEXT)), 0);
	assert_int_equal(setxattr(H_AT(fs->mnt, "other"), "user.tag", "tag", 3, 0), 0);
}

/* Every kind of request on other files of the mount answers. */
static void others_answer(struct h_fs *fs)
{
	assert_int_equal(probe(P_STAT, H_AT(fs->mnt, "other")), (off_t)strlen(OTHER_TEXT));
	probe(P_XATTR, H_AT(fs->mnt, "other"));
	probe(P_READDIR, fs->mnt);
	probe(P_READ, H_AT(fs->mnt, "other"));
	probe(P_STATFS, fs->mnt);
}

/* ---- writer threads: count what write(2) accepted ---- */

struct writer {
	int fd;
	unsigned seed;
	uint64_t limit; /* bytes to write at most */
	size_t chunk;
	_Atomic uint64_t done; /* bytes write(2) has returned */
	atomic_bool stop;      /* finish the current write(2), then return */
	atomic_int err;	       /* errno of a failed write(2) */
	pthread_t thread;
};

static void *writer_run(void *arg)
{
	struct writer *w = arg;
	unsigned char *buf = malloc(w->chunk);
	if (buf == NULL) {
		w->err = ENOMEM;
		return NULL;
	}
	uint64_t done = 0;
	while (done < w->limit && !atomic_load(&w->stop)) {
		size_t n = w->limit - done < w->chunk ? (size_t)(w->limit - done) : w->chunk;
		h_pat_fill(buf, n, done, w->seed);
		ssize_t r = write(w->fd, buf, n);
		if (r <= 0) {
			w->err = r < 0 ? errno : EIO;
			break;
		}
		done += (uint64_t)r;
		atomic_store(&w->done, done);
	}
	free(buf);
	return NULL;
}

static void writer_start(struct writer *w, int fd, unsigned seed, uint64_t limit, size_t chunk)
{
	memset(w, 0, sizeof(*w));
	w->fd = fd;
	w->seed = seed;
	w->limit = limit;
	w->chunk = chunk;
	assert_int_equal(pthread_create(&w->thread, NULL, writer_run, w), 0);
}

/* Joins w within the watchdog and requires that none of its writes failed. */
static void writer_join(struct writer *w)
{
	struct timespec end;
	clock_gettime(CLOCK_REALTIME, &end);
	end.tv_sec += WATCHDOG_MS / 1000;
	if (pthread_timedjoin_np(w->thread, NULL, &end) != 0) {
		fprintf(stderr, "a writer did not finish within %d ms\n", WATCHDOG_MS);
		fail();
	}
	if (w->err != 0)
		fprintf(stderr, "writer: %s\n", strerror(w->err));
	assert_int_equal(w->err, 0);
}

/* Waits until n writers stop making progress (their counts unchanged over three polls), as a
 * writer blocked by backpressure does; a writer that is not blocked would run through its
 * limit instead, and fail the caller's bound. */
static void wait_writers_blocked(struct writer *w, int n)
{
	int64_t end = h_clock_ms() + WATCHDOG_MS;
	uint64_t last = UINT64_MAX;
	for (int same = 0; same < 3;) {
		uint64_t sum = 0;
		for (int i = 0; i < n; i++) {
			sum += atomic_load(&w[i].done);
			assert_int_equal(w[i].err, 0);
		}
		same = sum == last ? same + 1 : 0;
		last = sum;
		assert_true(h_clock_ms() <= end);
		h_nap_ms(200);
	}
}

/* ---- backpressure ---- */

/* A writer over a stalled store is held once its buffer is full; meanwhile the mount answers,
 * and the blocked file itself shows the size of what was accepted. */
static void test_backpressure_stalled(void **state)
{
	struct h_fs *fs = over_faultfs(state, NULL, "buffer=1M");
	make_other(fs);
	const char *big = H_AT(fs->mnt, "big");
	int fd = open_ok(big, O_WRONLY | O_CREAT | O_TRUNC);
	ff_set(fs, "stall", "1");

	struct writer w;
	writer_start(&w, fd, 1, 64 * MiB, MiB);
	wait_stalled(fs, 1);
	wait_writers_blocked(&w, 1);
	uint64_t done = atomic_load(&w.done);
	fprintf(stderr, "blocked after %llu bytes accepted\n", (unsigned long long)done);
	assert_true(done > 0);
	assert_true(done <= MiB + MiB); /* buffer + one write */

	others_answer(fs);
	/* The file being written answers too, with its buffered bytes counted. */
	off_t size = probe(P_STAT, big);
	assert_true(size >= (off_t)done && size <= (off_t)(done + MiB));
	assert_int_equal(atomic_load(&w.done), done); /* and the writer is still held */

	atomic_store(&w.stop, true);
	ff_set(fs, "stall", "0");
	writer_join(&w);
	done = atomic_load(&w.done);
	assert_int_equal(close(fd), 0);
	expect_pattern(H_AT(fs->store, "big"), done, 1);
}

/* Opens n files prefix0... of the view, stalls the store, and starts a writer of `size`
 * bytes in 1 MiB writes (pattern seed0 + i) on each; returns once the store holds a write
 * and no writer moves any more. */
static void stalled_writers_start(struct h_fs *fs, struct writer *w, int *fd, int n,
				  const char *prefix, unsigned seed0, uint64_t size)
{
	for (int i = 0; i < n; i++) {
		char name[16];
		snprintf(name, sizeof(name), "%s%d", prefix, i);
		fd[i] = open_ok(H_AT(fs->mnt, name), O_WRONLY | O_CREAT | O_TRUNC);
	}
	ff_set(fs, "stall", "1");
	for (int i = 0; i < n; i++)
		writer_start(&w[i], fd[i], seed0 + (unsigned)i, size, MiB);
	wait_stalled(fs, 1);
	wait_writers_blocked(w, n);
}

/* Stops the writers, releases the store, closes every file, and requires every step-th file
 * to hold in the store all that its writer had written. */
static void stalled_writers_finish(struct h_fs *fs, struct writer *w, int *fd, int n,
				   const char *prefix, unsigned seed0, int step)
{
	for (int i = 0; i < n; i++)
		atomic_store(&w[i].stop, true);
	ff_set(fs, "stall", "0");
	for (int i = 0; i < n; i++) {
		writer_join(&w[i]);
		assert_int_equal(close(fd[i]), 0);
	}
	for (int i = 0; i < n; i += step) {
		char name[16];
		snprintf(name, sizeof(name), "%s%d", prefix, i);
		expect_pattern(H_AT(fs->store, name), atomic_load(&w[i].done), seed0 + (unsigned)i);
	}
}

#define NWRITERS 16

/* More writers held at once on a tiny budget than the daemon has drain threads (3): their
 * 1 MiB requests fill the buffer pool's hard cap (max_buffer + 2 MiB: 3 requests, parked
 * without a thread), and the other 13 wait inside the daemon, each holding a worker and its
 * request's receive buffer: the loop's pool of 8 and, once the store counts as stalled, 5 of
 * its 8 extra buffers (fs/loop.c). The rest of the mount still answers. */
static void test_backpressure_many_writers(void **state)
{
	struct h_fs *fs = over_faultfs(state, NULL, "buffer=64K,max_buffer=1M");
	make_other(fs);
	static struct writer w[NWRITERS];
	int fd[NWRITERS];
	stalled_writers_start(fs, w, fd, NWRITERS, "w", 100, 16 * MiB);
	for (int i = 0; i < NWRITERS; i++)
		assert_true(atomic_load(&w[i].done) <= MiB + 64 * KiB);
	others_answer(fs);
	stalled_writers_finish(fs, w, fd, NWRITERS, "w", 100, 1);
}

/* More writers on a stalled store than the loop takes requests in for (TFS_RECV_BUFFERS +
 * TFS_RECV_EXTRA, 16): the daemon holds the stream's hard cap and at most 16 requests of
 * 1 MiB, not one per writer (32 writers: 29 blocked requests, 38 MiB peak without the cap on
 * extra buffers). The writes past the cap wait in the kernel; once the store moves, every
 * byte accepted is in it. Extra buffers are taken only after a second of stall (LOOP_STALL_MS),
 * hence the wait. VmHWM is not asserted under a sanitizer. */
static void test_stall_bounds_requests(void **state)
{
	struct h_fs *fs = over_faultfs(state, NULL, "buffer=64K,max_buffer=1M");
	enum { N = 32 };
	static struct writer w[N];
	int fd[N];
	stalled_writers_start(fs, w, fd, N, "s", 200, 8 * MiB);
	h_nap_ms(3000);
	long hwm = h_hwm_kib(fs->pid);
	/* max_buffer, STREAM_OVERFLOW, 16 requests, and 8 MiB for the daemon itself */
	long bound = (long)((1 * MiB + 2 * MiB + 16 * MiB + 8 * MiB) / KiB);
	bool check = !h_sanitized(fs->pid);
	fprintf(stderr, "%d writers on a stalled store: daemon VmHWM %ld KiB (bound %ld KiB)%s\n",
		N, hwm, bound, check ? "" : " [sanitized: not asserted]");
	stalled_writers_finish(fs, w, fd, N, "s", 200, 5);
	if (check)
		assert_true(hwm > 0 && hwm <= bound);
}

/* ---- rate ---- */

/* Writes size bytes through the view mounted with opts, expected to take size/rate seconds,
 * and requires the copy (open to close) to take between 0.6 and 2 times that. */
static void rate_case(void **state, const char *opts, uint64_t size, uint64_t rate)
{
	struct h_fs *fs = over_plain(state, opts);
	int64_t t0 = h_clock_ms();
	int fd = open_ok(H_AT(fs->mnt, "f"), O_WRONLY | O_CREAT | O_TRUNC);
	write_pattern(fd, 0, size, MiB, 7);
	assert_int_equal(close(fd), 0);
	int64_t took = h_clock_ms() - t0;
	int64_t expected = (int64_t)(size * 1000 / rate);
	fprintf(stderr, "%s: %llu MiB in %lld ms, expected %lld ms\n", opts,
		(unsigned long long)(size / MiB), (long long)took, (long long)expected);
	assert_true(took >= expected * 6 / 10);
	assert_true(took <= expected * 2);
	expect_pattern(H_AT(fs->store, "f"), size, 7);
}

static void test_rate(void **state)
{
	rate_case(state, "rate=8M", 24 * MiB, 8 * MiB);
}

static void test_file_rate(void **state)
{
	rate_case(state, "file_rate=8M", 16 * MiB, 8 * MiB);
}

/* ---- durability ---- */

/* A slow store (20 ms per write it receives), so that data is still buffered when the writer
 * closes or syncs; whether it was is printed, not asserted (it depends on the machine). */
#define SLOW_STORE "latency_us=20000"

static void note_pending(struct h_fs *fs, uint64_t size)
{
	long long in_store = h_faultfs_get(fs, "bytes_written");
	fprintf(stderr, "%lld of %llu bytes in the store before the call\n", in_store,
		(unsigned long long)size);
}

static void test_close_waits_for_store(void **state)
{
	struct h_fs *fs = over_faultfs(state, SLOW_STORE, NULL);
	int fd = open_ok(H_AT(fs->mnt, "f"), O_WRONLY | O_CREAT | O_TRUNC);
	write_pattern(fd, 0, 8 * MiB, MiB, 3);
	note_pending(fs, 8 * MiB);
	assert_int_equal(close(fd), 0);
	expect_pattern(H_AT(fs->store, "f"), 8 * MiB, 3);
}

/* Whether the store takes direct I/O for the file at path (it reports alignments for it:
 * ext4 does for regular files only). */
static bool store_has_direct_io(const char *path)
{
	struct statx sx;
	assert_int_equal(statx(AT_FDCWD, path, 0, STATX_DIOALIGN, &sx), 0);
	return (sx.stx_mask & STATX_DIOALIGN) && sx.stx_dio_offset_align != 0;
}

/* A copy through the view does not fill the store's page cache: write-behind leaves at most the
 * copy's last 24 MiB (STREAM_CACHE_BEHIND + STREAM_WB_CHUNK; its 1 MiB writes go to the store
 * straight from the request, and their write-behind runs after the reply, which close waits
 * for); with -o direct_write, on a store that takes direct I/O (ext4, xfs: it
 * reports STATX_DIOALIGN), the data past 8 MiB goes to the device with O_DIRECT and nothing
 * of the copy stays cached, though the writer's buffer (malloc'd) is not page-aligned, so every
 * FUSE request starts and ends off the block size. -o keep_cache leaves it all. Needs a store
 * with a device behind it: tmpfs pages cannot be dropped. */
static void test_copy_leaves_little_cache(void **state)
{
	static const char *const modes[] = {NULL, "keep_cache", "direct_write"};
	for (int m = 0; m < 3; m++) {
		struct h_fs *fs = over_plain(state, modes[m]);
		struct statfs sf;
		assert_int_equal(statfs(fs->backing, &sf), 0);
		if (sf.f_type == TMPFS_MAGIC || sf.f_type == RAMFS_MAGIC) {
			fprintf(stderr, "skipped: the store (%s) is in memory, nothing to drop\n",
				fs->backing);
			skip();
		}
		int fd = open_ok(H_AT(fs->mnt, "f"), O_WRONLY | O_CREAT | O_TRUNC);
		write_pattern(fd, 0, 64 * MiB, MiB, 5);
		assert_int_equal(close(fd), 0);
		bool direct = m == 2 && store_has_direct_io(H_AT(fs->store, "f"));
		if (m == 2 && !direct)
			fprintf(stderr, "note: the store (%s) has no direct I/O\n", fs->backing);
		uint64_t cached = cached_bytes(H_AT(fs->store, "f"));
		if (m == 1)
			assert_true(cached >= 48 * MiB);
		else if (direct)
			assert_true(cached <= 256 * KiB);
		else
			assert_true(cached <= 24 * MiB);
		expect_pattern(H_AT(fs->store, "f"), 64 * MiB, 5);
		assert_int_equal(h_fs_free(fs), 0);
		*state = NULL;
	}
}

static void test_fsync_waits_for_store(void **state)
{
	struct h_fs *fs = over_faultfs(state, SLOW_STORE, NULL);
	int fd = open_ok(H_AT(fs->mnt, "f"), O_WRONLY | O_CREAT | O_TRUNC);
	write_pattern(fd, 0, 8 * MiB, MiB, 4);
	note_pending(fs, 8 * MiB);
	assert_int_equal(fsync(fd), 0);
	expect_pattern(H_AT(fs->store, "f"), 8 * MiB, 4);
	/* fdatasync likewise, for the data written since. */
	write_pattern(fd, 8 * MiB, 16 * MiB, MiB, 4);
	note_pending(fs, 16 * MiB);
	assert_int_equal(fdatasync(fd), 0);
	expect_pattern(H_AT(fs->store, "f"), 16 * MiB, 4);
	assert_int_equal(close(fd), 0);
}

/* ---- errors reach the writer ---- */

/* Writes size bytes of pattern seed to path and closes; returns the errno of the first failed
 * write(2) or of close(2), 0 when all succeeded. */
static int write_file_errno(const char *path, uint64_t size, unsigned seed)
{
	int fd = open_ok(path, O_WRONLY | O_CREAT | O_TRUNC);
	unsigned char *buf = malloc(MiB);
	assert_non_null(buf);
	int err = 0;
	for (uint64_t off = 0; off < size && err == 0;) {
		h_pat_fill(buf, MiB, off, seed);
		ssize_t n = write(fd, buf, MiB);
		if (n < 0)
			err = errno;
		else
			off += (uint64_t)n;
	}
	free(buf);
	if (close(fd) != 0 && err == 0)
		err = errno;
	return err;
}

/*
 * Waits until the filesystem of path has bytes free. The space of a file closed and unlinked
 * through the view comes back only once the daemon has closed its own descriptors of it, when
 * the kernel's RELEASE arrives, which FUSE sends after close(2) has returned.
 */
static void wait_free(const char *path, uint64_t bytes)
{
	int64_t start = h_clock_ms();
	struct statvfs sv;
	for (;;) {
		assert_int_equal(statvfs(path, &sv), 0);
		if ((uint64_t)sv.f_bavail * sv.f_frsize >= bytes)
			break;
		assert_true(h_clock_ms() - start <= WATCHDOG_MS);
		h_nap_ms(10);
	}
	if (h_clock_ms() - start > 0)
		fprintf(stderr, "space freed %lld ms after the unlink\n",
			(long long)(h_clock_ms() - start));
}

/* A 4 MiB tmpfs as the store: a 16 MiB file fails with ENOSPC, at write(2) or close(2), for a
 * program and for cp; a file written before stays intact; once space is freed, a new copy
 * works without a remount. */
static void test_enospc(void **state)
{
	struct h_fs *fs = over_tmpfs(state, "4M", NULL);
	const char *small = H_AT(fs->mnt, "small");
	int fd = open_ok(small, O_WRONLY | O_CREAT | O_TRUNC);
	write_pattern(fd, 0, MiB, 64 * KiB, 5);
	assert_int_equal(close(fd), 0);

	assert_int_equal(write_file_errno(H_AT(fs->mnt, "big"), 16 * MiB, 6), ENOSPC);
	assert_int_equal(unlink(H_AT(fs->mnt, "big")), 0);
	wait_free(fs->mnt, 2 * MiB);

	const char *src = H_AT(fs->plain, "src");
	fd = open_ok(src, O_WRONLY | O_CREAT | O_TRUNC);
	write_pattern(fd, 0, 16 * MiB, MiB, 6);
	assert_int_equal(close(fd), 0);
	const char *err = H_AT(fs->root, "cp.err");
	int rc = h_run("LC_ALL=C cp '%s' '%s' 2>'%s'", src, H_AT(fs->mnt, "copy"), err);
	assert_true(rc > 0 && rc < 128);
	char msg[1024];
	ssize_t n = h_read_file(err, msg, sizeof(msg) - 1);
	assert_true(n > 0);
	msg[n] = '\0';
	fprintf(stderr, "cp said: %s", msg);
	assert_non_null(strstr(msg, "No space left on device"));

	expect_pattern(small, MiB, 5);
	expect_pattern(H_AT(fs->store, "small"), MiB, 5);

	assert_int_equal(unlink(H_AT(fs->mnt, "copy")), 0);
	assert_int_equal(truncate(src, 2 * MiB), 0);
	wait_free(fs->mnt, 3 * MiB);
	assert_int_equal(h_run("cp '%s' '%s'", src, H_AT(fs->mnt, "copy")), 0);
	expect_pattern(H_AT(fs->mnt, "copy"), 2 * MiB, 6);
	expect_pattern(H_AT(fs->store, "copy"), 2 * MiB, 6);
}

/* A store that fills up under 1 MiB writes (a tmpfs small enough to fill). Over a store in
 * memory a large write is queued in the request's own buffer and answered at once
 * (stream_write_lent), so the store's refusal reaches the writer at the fsync that follows that
 * write, or at the next write(2), never later; every write before it, acknowledged and
 * fsync'ed, is in the store whole. The error then sticks to the file. */
static void test_store_full_errors_reach_writer(void **state)
{
	struct h_fs *fs = over_tmpfs(state, "4M", NULL);
	int fd = open_ok(H_AT(fs->mnt, "f"), O_WRONLY | O_CREAT | O_TRUNC);
	unsigned char *buf = malloc(MiB);
	assert_non_null(buf);
	uint64_t off = 0; /* acknowledged and fsync'ed */
	ssize_t w;
	int err = 0;
	for (;;) {
		assert_true(off < 8 * MiB);
		h_pat_fill(buf, MiB, off, 11);
		if ((w = write(fd, buf, MiB)) < 0) {
			err = errno;
			break;
		}
		/* A short write: buf is not page-aligned, so the kernel sent the write as two
		 * requests, and the store refused the first (answered before it was written)
		 * by the time the second came. The fsync then reports it. */
		if (fsync(fd) != 0) {
			err = errno;
			break;
		}
		assert_int_equal(w, (ssize_t)MiB);
		off += MiB;
	}
	free(buf);
	assert_int_equal(err, ENOSPC);
	assert_true(off >= 2 * MiB);
	H_EXPECT_ERRNO(fsync(fd), ENOSPC);
	H_EXPECT_ERRNO(close(fd), ENOSPC);
	assert_true(size_of(H_AT(fs->store, "f")) >= (off_t)off);
	assert_int_equal(truncate(H_AT(fs->store, "f"), (off_t)off), 0);
	expect_pattern(H_AT(fs->store, "f"), off, 11);
}

/* Over a store in memory, 1 MiB writes are answered before the store has them (lent: queued
 * in their receive buffers). A reader through the view sees each as soon as its write(2)
 * returned, size and bytes, and a rewrite over the ends of two earlier writes lands after both;
 * the store ends up with every byte. The reader uses O_DIRECT so that each read reaches the
 * daemon instead of the kernel's cache. */
static void test_lent_writes_read_back(void **state)
{
	struct h_fs *fs = over_tmpfs(state, "256M", NULL);
	const char *path = H_AT(fs->mnt, "f");
	int fd = open_ok(path, O_WRONLY | O_CREAT | O_TRUNC);
	int rd = open_ok(path, O_RDONLY | O_DIRECT);
	unsigned char *buf = aligned_alloc(4096, MiB), *back = aligned_alloc(4096, MiB);
	assert_true(buf != NULL && back != NULL);
	const uint64_t n = 48;
	for (uint64_t i = 0; i < n; i++) {
		h_pat_fill(buf, MiB, i * MiB, 21);
		assert_int_equal(pwrite(fd, buf, MiB, (off_t)(i * MiB)), (ssize_t)MiB);
		struct stat st;
		assert_int_equal(fstat(rd, &st), 0);
		assert_int_equal(st.st_size, (off_t)((i + 1) * MiB));
		assert_int_equal(pread(rd, back, MiB, (off_t)(i * MiB)), (ssize_t)MiB);
		if (memcmp(back, buf, MiB) != 0)
			fail_msg("MiB %llu read back through the view differs",
				 (unsigned long long)i);
	}
	/* A rewrite across the boundary of MiB 10 and 11, then the whole of both read back. */
	h_pat_fill(buf, MiB, 0, 22);
	assert_int_equal(pwrite(fd, buf, MiB, (off_t)(10 * MiB + MiB / 2)), (ssize_t)MiB);
	assert_int_equal(pread(rd, back, MiB, (off_t)(10 * MiB + MiB / 2)), (ssize_t)MiB);
	assert_memory_equal(back, buf, MiB);
	assert_int_equal(close(fd), 0);
	assert_int_equal(close(rd), 0);
	int st = open_ok(H_AT(fs->store, "f"), O_RDONLY);
	unsigned char *want = malloc(MiB);
	assert_non_null(want);
	for (uint64_t i = 0; i < n; i++) {
		h_pat_fill(want, MiB, i * MiB, 21);
		if (i == 10)
			memcpy(want + MiB / 2, buf, MiB / 2);
		if (i == 11)
			memcpy(want, buf + MiB / 2, MiB / 2);
		assert_int_equal(pread(st, back, MiB, (off_t)(i * MiB)), (ssize_t)MiB);
		if (memcmp(back, want, MiB) != 0)
			fail_msg("MiB %llu of the store differs", (unsigned long long)i);
	}
	assert_int_equal(close(st), 0);
	free(want);
	free(buf);
	free(back);
}

/* A disk that fails under a copy: the store is ext4 on a loop device whose image lives in a
 * faultfs, which then fails every write of the device. Over a disk a large write lands in the
 * store's page cache before its answer and reaches the device behind the copy (write-behind:
 * each 8 MiB is started as it lands and waited for 16 MiB later), so the device's refusal comes
 * after the writes it refused were answered. It must reach the writer at a later write(2),
 * without waiting for an fsync that a copy may never make, and stick: fsync and close report
 * it too. What was fsync'ed before the failure is intact. ext4 may have aborted its journal by
 * the time a write sees the error, so EROFS is as good an answer as EIO. */
static void disk_errors_reach_writer(void **state, const char *opts)
{
	if (geteuid() != 0) {
		fprintf(stderr, "skipped: a loop device needs root\n");
		skip();
	}
	struct h_fs *fs = fs_new(state);
	int rc = h_lower_disk(fs, 256);
	if (rc == 1) {
		fprintf(stderr, "skipped: no ext4 on a loop device here\n");
		skip();
	}
	assert_int_equal(rc, 0);
	assert_int_equal(h_fs_mount(fs, opts), 0);
	int fd = open_ok(H_AT(fs->mnt, "f"), O_WRONLY | O_CREAT | O_TRUNC);
	const uint64_t safe = 32 * MiB;
	write_pattern(fd, 0, safe, MiB, 12);
	assert_int_equal(fsync(fd), 0);

	long long written = h_faultfs_get(fs, "bytes_written");
	assert_true(written > 0);
	char lim[32];
	snprintf(lim, sizeof(lim), "%lld", written);
	ff_set(fs, "fail_write_after", lim); /* the device fails from now on */
	unsigned char *buf = malloc(MiB);
	assert_non_null(buf);
	int err = 0;
	uint64_t off = safe;
	for (; off < safe + 160 * MiB && err == 0; off += MiB) {
		h_pat_fill(buf, MiB, off, 12);
		if (write(fd, buf, MiB) < 0)
			err = errno;
	}
	fprintf(stderr,
		"the failing disk's error reached write(2) as %s, %llu MiB after the "
		"failure began\n",
		strerror(err), (unsigned long long)((off - safe) / MiB));
	assert_true(err == EIO || err == EROFS);
	H_EXPECT_ERRNO(fsync(fd), err);
	H_EXPECT_ERRNO(close(fd), err);

	/* Read, not truncated to the fsync'ed part and checked whole (expect_pattern): after
	 * an aborted journal (EROFS) the store could no longer be changed. */
	ff_set(fs, "fail_write_after", "off");
	int st = open_ok(H_AT(fs->store, "f"), O_RDONLY);
	for (uint64_t at = 0; at < safe; at += MiB) {
		assert_int_equal(pread(st, buf, MiB, (off_t)at), (ssize_t)MiB);
		if (h_pat_check(buf, MiB, at, 12) >= 0)
			fail_msg("MiB %llu of the store differs", (unsigned long long)(at / MiB));
	}
	assert_int_equal(close(st), 0);
	free(buf);
}

static void test_disk_errors_reach_writer(void **state)
{
	disk_errors_reach_writer(state, NULL);
}

/* The same with direct_write: past its first 8 MiB the file goes to the device with O_DIRECT
 * from the drains, so the device's error comes back from their writes, not from write-behind. */
static void test_disk_errors_reach_writer_direct(void **state)
{
	disk_errors_reach_writer(state, "direct_write");
}

/* faultfs fails every write once 2 MiB are in: EIO at write(2) or close(2). */
static void test_eio_on_write(void **state)
{
	struct h_fs *fs = over_faultfs(state, "fail_write_after=2M", NULL);
	assert_int_equal(write_file_errno(H_AT(fs->mnt, "f"), 16 * MiB, 8), EIO);
	assert_true(size_of(H_AT(fs->store, "f")) <= (off_t)(2 * MiB));
}

/* fsync of a file whose store fails fsync: EIO. */
static void test_eio_on_fsync(void **state)
{
	struct h_fs *fs = over_faultfs(state, "fail_fsync=1", NULL);
	int fd = open_ok(H_AT(fs->mnt, "f"), O_WRONLY | O_CREAT | O_TRUNC);
	write_pattern(fd, 0, MiB, 64 * KiB, 9);
	H_EXPECT_ERRNO(fsync(fd), EIO);
	H_EXPECT_ERRNO(fdatasync(fd), EIO);
	assert_int_equal(close(fd), 0); /* the data itself did reach the store */
	expect_pattern(H_AT(fs->store, "f"), MiB, 9);
}

/* Once the store has refused a file's data, the error sticks to the file: fsync, later writes
 * and close all report it. */
static void test_error_sticks(void **state)
{
	struct h_fs *fs = over_faultfs(state, "fail_write_after=0", NULL);
	int fd = open_ok(H_AT(fs->mnt, "f"), O_WRONLY | O_CREAT | O_TRUNC);
	/* One page, touched: a write(2) the kernel sends as one request, all accepted or not. */
	static char buf[4096] __attribute__((aligned(4096)));
	memset(buf, 'x', sizeof(buf));
	assert_int_equal(write(fd, buf, sizeof(buf)), (ssize_t)sizeof(buf)); /* buffered */
	H_EXPECT_ERRNO(fsync(fd), EIO);
	H_EXPECT_ERRNO(write(fd, buf, sizeof(buf)), EIO);
	H_EXPECT_ERRNO(close(fd), EIO);
	/* The mount itself is fine, and a file that the store accepts can be written. */
	ff_set(fs, "fail_write_after", "off");
	assert_int_equal(write_file_errno(H_AT(fs->mnt, "g"), MiB, 10), 0);
	expect_pattern(H_AT(fs->store, "g"), MiB, 10);
}

/* ---- consistency while data is buffered ---- */

/* The view over a stalled store: what is written stays buffered until stall_release. */
static struct h_fs *over_stalled(void **state, const char *opts)
{
	struct h_fs *fs = over_faultfs(state, NULL, opts);
	ff_set(fs, "stall", "1");
	return fs;
}

/*
 * Makes the file of fd keep what it receives next in the daemon: writes first[0..len) at
 * offset 0 and waits until that write is stuck in the stalled store. len must be whole pages:
 * faultfs is itself a FUSE mount, and while it has a write of a partial page in flight, the
 * kernel keeps that page of the store file locked, so that opening or reading the file in the
 * store waits for the stalled write (see test_known_open_behind_partial_page).
 */
static void stall_behind(struct h_fs *fs, int fd, const void *first, size_t len)
{
	assert_true(len > 0 && len % 4096 == 0);
	pwrite_ok(fd, first, len, 0);
	wait_stalled(fs, 1);
}

/* Releases the stall; the data then drains. */
static void stall_release(struct h_fs *fs)
{
	ff_set(fs, "stall", "0");
}

/* Writes read back through the writing descriptor, a second one, and by path; stat counts
 * them, also once the kernel's cached attributes have expired (then the daemon answers). */
static void test_buffered_reads(void **state)
{
	struct h_fs *fs = over_stalled(state, NULL);
	const char *f = H_AT(fs->mnt, "f");
	static unsigned char data[300 * KiB];
	h_pat_fill(data, sizeof(data), 0, 11);
	int fd = open_ok(f, O_RDWR | O_CREAT | O_TRUNC);
	stall_behind(fs, fd, data, 64 * KiB);
	pwrite_ok(fd, data + 64 * KiB, sizeof(data) - 64 * KiB - 1000, 64 * KiB);
	pwrite_ok(fd, data + sizeof(data) - 1000, 1000, sizeof(data) - 1000);

	expect_fd_bytes(fd, data, sizeof(data));
	int fd2 = open_ok(f, O_RDONLY);
	expect_fd_bytes(fd2, data, sizeof(data));
	assert_int_equal(size_of(f), (off_t)sizeof(data));
	h_nap_ms(1200); /* past the attribute timeout (1 s) */
	assert_int_equal(size_of(f), (off_t)sizeof(data));
	struct stat st;
	assert_int_equal(fstat(fd2, &st), 0);
	assert_int_equal(st.st_size, (off_t)sizeof(data));
	assert_true(st.st_blocks * 512 >= st.st_size); /* not mistaken for a sparse file */
	int fd3 = open_ok(f, O_RDONLY);
	expect_fd_bytes(fd3, data, sizeof(data));
	assert_int_equal(close(fd3), 0);
	assert_int_equal(close(fd2), 0);

	stall_release(fs);
	assert_int_equal(close(fd), 0);
	expect_bytes(H_AT(fs->store, "f"), data, sizeof(data));
}

/* Writes at scattered, overlapping and sparse offsets: the view shows the last write of every
 * byte, zeros in holes, before the data drains and after. */
static void test_buffered_scattered(void **state)
{
	struct h_fs *fs = over_stalled(state, "buffer=16M,max_buffer=32M");
	const size_t span = 8 * MiB;
	unsigned char *model = calloc(1, span);
	unsigned char *piece = malloc(64 * KiB);
	assert_non_null(model);
	assert_non_null(piece);
	int fd = open_ok(H_AT(fs->mnt, "f"), O_RDWR | O_CREAT | O_TRUNC);
	h_pat_fill(piece, 64 * KiB, 0, 1000);
	stall_behind(fs, fd, piece, 64 * KiB);
	memcpy(model, piece, 64 * KiB);
	uint32_t x = 12345;
	size_t end = 64 * KiB;
	for (int i = 0; i < 120; i++) {
		x ^= x << 13, x ^= x >> 17, x ^= x << 5;
		size_t len = 1 + x % (48 * KiB);
		x ^= x << 13, x ^= x >> 17, x ^= x << 5;
		size_t off = x % (6 * MiB);
		h_pat_fill(piece, len, off, (unsigned)i);
		pwrite_ok(fd, piece, len, off);
		memcpy(model + off, piece, len);
		end = off + len > end ? off + len : end;
	}
	/* A write far beyond the rest leaves a hole, and one rewrites the very start. */
	h_pat_fill(piece, 1000, span - 1000, 999);
	pwrite_ok(fd, piece, 1000, span - 1000);
	memcpy(model + span - 1000, piece, 1000);
	pwrite_ok(fd, "start", 5, 0);
	memcpy(model, "start", 5);
	end = span;

	expect_fd_bytes(fd, model, end);
	assert_int_equal(size_of(H_AT(fs->mnt, "f")), (off_t)end);
	stall_release(fs);
	assert_int_equal(close(fd), 0);
	expect_bytes(H_AT(fs->mnt, "f"), model, end);
	expect_bytes(H_AT(fs->store, "f"), model, end);
	free(piece);
	free(model);
}

/* -o direct_write with everything that is not a plain copy: a file past the size where its
 * stream goes direct (STREAM_DIRECT_FROM, 8 MiB), then rewritten in random pieces of up to
 * 384 KiB from buffers at random alignments, at random offsets (some beyond the end), read
 * back through the view between writes; the view and the store must hold exactly the model.
 * On a store with direct I/O the pieces' aligned middles go with O_DIRECT, their ends through
 * the page cache; elsewhere all goes through the page cache, and the test holds all the same. */
static void test_direct_rewrites(void **state)
{
	struct h_fs *fs = over_plain(state, "direct_write");
	const size_t span = 24 * MiB, first = 12 * MiB;
	unsigned char *model = calloc(1, span);
	unsigned char *raw = malloc(384 * KiB + 4096), *back = malloc(384 * KiB);
	assert_non_null(model);
	assert_non_null(raw);
	assert_non_null(back);
	int fd = open_ok(H_AT(fs->mnt, "f"), O_RDWR | O_CREAT | O_TRUNC);
	write_pattern(fd, 0, first, MiB, 7);
	h_pat_fill(model, first, 0, 7);
	size_t end = first;
	uint32_t x = 4242;
	for (int i = 0; i < 150; i++) {
		x ^= x << 13, x ^= x >> 17, x ^= x << 5;
		size_t len = 1 + x % (384 * KiB);
		x ^= x << 13, x ^= x >> 17, x ^= x << 5;
		size_t off = x % (span - 384 * KiB);
		if (i % 3 == 0)
			off &= ~(size_t)4095; /* aligned starts too */
		unsigned char *piece = raw + x % 4096;
		h_pat_fill(piece, len, off, 100 + (unsigned)i);
		pwrite_ok(fd, piece, len, off);
		memcpy(model + off, piece, len);
		end = off + len > end ? off + len : end;
		if (i % 10 == 9) {
			size_t at = (off + len / 2) % end,
			       n = end - at < 384 * KiB ? end - at : 384 * KiB;
			assert_int_equal(pread(fd, back, n, (off_t)at), (ssize_t)n);
			assert_memory_equal(back, model + at, n);
		}
	}
	expect_fd_bytes(fd, model, end);
	assert_int_equal(fsync(fd), 0);
	assert_int_equal(close(fd), 0);
	expect_bytes(H_AT(fs->mnt, "f"), model, end);
	expect_bytes(H_AT(fs->store, "f"), model, end);
	free(back);
	free(raw);
	free(model);
}

/* O_APPEND lands at the end that counts buffered data, also for a descriptor opened after the
 * kernel's attributes expired. */
static void test_buffered_append(void **state)
{
	struct h_fs *fs = over_stalled(state, NULL);
	const char *f = H_AT(fs->mnt, "f");
	char want[4096 + 1000];
	memset(want, 'a', 4096);
	memset(want + 4096, 'b', 500);
	memset(want + 4596, 'c', 300);
	memset(want + 4896, 'd', 200);
	int fd = open_ok(f, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND);
	stall_behind(fs, fd, want, 4096); /* O_APPEND: at the end, 0 */
	assert_int_equal(write(fd, want + 4096, 500), 500);
	int fd2 = open_ok(f, O_WRONLY | O_APPEND);
	assert_int_equal(write(fd2, want + 4596, 300), 300);
	h_nap_ms(1200); /* past the attribute timeout: the next open asks the daemon for the size */
	int fd3 = open_ok(f, O_WRONLY | O_APPEND);
	assert_int_equal(write(fd3, want + 4896, 200), 200);
	int rfd = open_ok(f, O_RDONLY);
	expect_fd_bytes(rfd, want, sizeof(want));
	assert_int_equal(close(rfd), 0);

	stall_release(fs);
	assert_int_equal(close(fd3), 0);
	assert_int_equal(close(fd2), 0);
	assert_int_equal(close(fd), 0);
	expect_bytes(H_AT(fs->store, "f"), want, sizeof(want));
}

/* A truncate between buffered writes keeps its place in their order (over a slow store: a
 * truncate waits for the data before it, which a stalled store would never write). */
static void test_truncate_order(void **state)
{
	struct h_fs *fs = over_faultfs(state, SLOW_STORE, NULL);
	const char *f = H_AT(fs->mnt, "f");
	static unsigned char model[400 * KiB], piece[512 * KiB];
	int fd = open_ok(f, O_RDWR | O_CREAT | O_TRUNC);
	h_pat_fill(piece, sizeof(piece), 0, 12);
	pwrite_ok(fd, piece, sizeof(piece), 0);
	assert_int_equal(ftruncate(fd, 100 * KiB), 0);
	memcpy(model, piece, 100 * KiB);
	h_pat_fill(piece, 64 * KiB, 300 * KiB, 13);
	pwrite_ok(fd, piece, 64 * KiB, 300 * KiB);
	memcpy(model + 300 * KiB, piece, 64 * KiB);
	h_pat_fill(piece, 10 * KiB, 50 * KiB, 14);
	pwrite_ok(fd, piece, 10 * KiB, 50 * KiB);
	memcpy(model + 50 * KiB, piece, 10 * KiB);
	assert_int_equal(truncate(f, 380 * KiB), 0); /* by path, while data is pending */
	h_pat_fill(piece, 5000, 379 * KiB, 15);
	pwrite_ok(fd, piece, 5000, 379 * KiB);
	memcpy(model + 379 * KiB, piece, 5000);
	size_t end = 379 * KiB + 5000;

	expect_fd_bytes(fd, model, end);
	assert_int_equal(size_of(f), (off_t)end);
	assert_int_equal(close(fd), 0);
	expect_bytes(H_AT(fs->store, "f"), model, end);
}

/* Rename and unlink of a file with buffered data: the data ends in the file under its new
 * name; an unlinked file stays readable through its descriptor and closes cleanly. The data is
 * held back by a low rate over a plain store, not by a stalled faultfs: a FUSE store keeps a
 * file with a write in flight locked against rename and unlink (see the known limitation
 * below), which is the store's business. */
static void test_buffered_rename_unlink(void **state)
{
	struct h_fs *fs = over_plain(state, "rate=64K");
	static unsigned char data[96 * KiB], du[64 * KiB];
	h_pat_fill(data, sizeof(data), 0, 16);
	h_pat_fill(du, sizeof(du), 0, 19);
	int fa = open_ok(H_AT(fs->mnt, "a"), O_RDWR | O_CREAT | O_TRUNC);
	pwrite_ok(fa, data, sizeof(data), 0);
	int fu = open_ok(H_AT(fs->mnt, "u"), O_RDWR | O_CREAT | O_TRUNC);
	pwrite_ok(fu, du, sizeof(du), 0);

	assert_int_equal(rename(H_AT(fs->mnt, "a"), H_AT(fs->mnt, "b")), 0);
	H_EXPECT_ERRNO(access(H_AT(fs->mnt, "a"), F_OK), ENOENT);
	assert_int_equal(size_of(H_AT(fs->mnt, "b")), (off_t)sizeof(data));
	expect_bytes(H_AT(fs->mnt, "b"), data, sizeof(data));
	pwrite_ok(fa, "renamed", 7, 0); /* the old descriptor writes to the renamed file */
	memcpy(data, "renamed", 7);
	expect_bytes(H_AT(fs->mnt, "b"), data, sizeof(data));

	assert_int_equal(unlink(H_AT(fs->mnt, "u")), 0);
	H_EXPECT_ERRNO(access(H_AT(fs->mnt, "u"), F_OK), ENOENT);
	expect_fd_bytes(fu, du, sizeof(du)); /* still readable, buffered data included */
	struct stat st;
	assert_int_equal(fstat(fu, &st), 0);
	assert_int_equal(st.st_size, (off_t)sizeof(du));
	long long left = (long long)sizeof(data) - (long long)size_of(H_AT(fs->store, "b"));
	fprintf(stderr, "%lld bytes of b still buffered before close\n", left);

	assert_int_equal(close(fa), 0);
	assert_int_equal(close(fu), 0);
	expect_bytes(H_AT(fs->mnt, "b"), data, sizeof(data));
	expect_bytes(H_AT(fs->store, "b"), data, sizeof(data));
	H_EXPECT_ERRNO(access(H_AT(fs->store, "a"), F_OK), ENOENT);
	H_EXPECT_ERRNO(access(H_AT(fs->store, "u"), F_OK), ENOENT);
}

/* copy_file_range inside the view copies buffered data of the source into the destination's
 * stream. */
static void test_buffered_copy_range(void **state)
{
	struct h_fs *fs = over_stalled(state, NULL);
	static unsigned char data[300 * KiB];
	h_pat_fill(data, sizeof(data), 0, 17);
	int src = open_ok(H_AT(fs->mnt, "src"), O_RDWR | O_CREAT | O_TRUNC);
	stall_behind(fs, src, data, sizeof(data));
	int dst = open_ok(H_AT(fs->mnt, "dst"), O_RDWR | O_CREAT | O_TRUNC);
	loff_t in = 0, out = 0;
	size_t left = sizeof(data);
	while (left > 0) {
		ssize_t n = copy_file_range(src, &in, dst, &out, left, 0);
		if (n <= 0)
			fprintf(stderr, "copy_file_range: %s\n", n < 0 ? strerror(errno) : "0");
		assert_true(n > 0);
		left -= (size_t)n;
	}
	expect_fd_bytes(dst, data, sizeof(data));
	assert_int_equal(size_of(H_AT(fs->mnt, "dst")), (off_t)sizeof(data));

	stall_release(fs);
	assert_int_equal(close(src), 0);
	assert_int_equal(close(dst), 0);
	expect_bytes(H_AT(fs->store, "dst"), data, sizeof(data));
}

/*
 * KNOWN LIMITATION, reported to the lead (not a test of the promises, which are about
 * other files): opening a file through the view while its drain has a write of a partial page
 * in flight in a FUSE store waits until that store write completes, because the daemon opens
 * the store file afresh for every open, and the store's kernel (no keep_cache) invalidates the
 * file's pages on open and waits for the page the write holds locked. Reading that page through
 * the view waits likewise (stream_read preads the store file even where pending data covers
 * the whole range). Over a slow store this is a delay of one slice; over a stalled store, a
 * hang of every open and read of that file. Skipped unless STREAM_KNOWN_ISSUES=1.
 */
static void test_known_open_behind_partial_page(void **state)
{
	const char *run = getenv("STREAM_KNOWN_ISSUES");
	if (run == NULL || strcmp(run, "1") != 0) {
		fprintf(stderr,
			"skipped: known limitation, open of a file whose partial-page write "
			"is in flight in a FUSE store blocks (STREAM_KNOWN_ISSUES=1 runs it)\n");
		skip();
	}
	struct h_fs *fs = over_stalled(state, NULL);
	int fd = open_ok(H_AT(fs->mnt, "f"), O_WRONLY | O_CREAT | O_TRUNC);
	assert_int_equal(write(fd, "partial", 7), 7);
	wait_stalled(fs, 1);
	probe(P_OPEN, H_AT(fs->mnt, "f"));
	stall_release(fs);
	assert_int_equal(close(fd), 0);
}

/* ---- consistency under concurrency ---- */

#define CC_FILES   2
#define CC_WRITERS 8
#define CC_READERS 8
#define CC_REGION  (64 << 10)
#define CC_SIZE	   (4 << 20) /* per file */
#define CC_REGIONS (CC_SIZE / CC_REGION)

struct cc {
	struct h_fs *fs;
	atomic_int writers_left;
	atomic_int bad; /* wrong bytes seen by readers, or failed calls */
	_Atomic uint64_t reads;
};

struct cc_worker {
	struct cc *cc;
	int id;
	pthread_t thread;
};

static const char *cc_name(int file)
{
	return file == 0 ? "shared0" : "shared1";
}

/* Writer id owns, in both files, the regions r with r % CC_WRITERS == id, and writes them in a
 * scrambled order through its own descriptors. */
static void *cc_write(void *arg)
{
	struct cc_worker *me = arg;
	struct cc *cc = me->cc;
	unsigned char *buf = malloc(CC_REGION);
	int fd[CC_FILES];
	for (int f = 0; f < CC_FILES; f++)
		fd[f] = open(H_AT(cc->fs->mnt, cc_name(f)), O_WRONLY | O_CLOEXEC);
	for (int k = 0; buf != NULL && k < CC_REGIONS / CC_WRITERS; k++) {
		for (int f = 0; f < CC_FILES; f++) {
			int kk = (k * 7 + me->id) % (CC_REGIONS / CC_WRITERS);
			uint64_t off = (uint64_t)(kk * CC_WRITERS + me->id) * CC_REGION;
			h_pat_fill(buf, CC_REGION, off, (unsigned)f);
			if (fd[f] < 0 ||
			    pwrite(fd[f], buf, CC_REGION, (off_t)off) != (ssize_t)CC_REGION)
				atomic_fetch_add(&cc->bad, 1);
		}
	}
	for (int f = 0; f < CC_FILES; f++) {
		if (fd[f] < 0 || close(fd[f]) != 0)
			atomic_fetch_add(&cc->bad, 1);
	}
	if (buf == NULL)
		atomic_fetch_add(&cc->bad, 1);
	free(buf);
	atomic_fetch_sub(&cc->writers_left, 1);
	return NULL;
}

/* Readers read aligned regions anywhere while the writers run: every byte must be either
 * still zero (a hole, or not yet written) or the byte its owner writes there. */
static void *cc_read(void *arg)
{
	struct cc_worker *me = arg;
	struct cc *cc = me->cc;
	unsigned char *buf = malloc(CC_REGION);
	int fd[CC_FILES];
	uint32_t x = 777u + (uint32_t)me->id;
	for (int f = 0; f < CC_FILES; f++)
		fd[f] = open(H_AT(cc->fs->mnt, cc_name(f)), O_RDONLY | O_CLOEXEC);
	do {
		x ^= x << 13, x ^= x >> 17, x ^= x << 5;
		int f = (int)(x % CC_FILES);
		uint64_t off = (uint64_t)((x >> 8) % CC_REGIONS) * CC_REGION;
		ssize_t n =
		    fd[f] < 0 || buf == NULL ? -1 : pread(fd[f], buf, CC_REGION, (off_t)off);
		if (n < 0) {
			atomic_fetch_add(&cc->bad, 1);
			break;
		}
		for (ssize_t i = 0; i < n; i++) {
			if (buf[i] != 0 &&
			    h_pat_check(&buf[i], 1, off + (uint64_t)i, (unsigned)f) >= 0) {
				fprintf(stderr, "reader: %s byte %llu is neither 0 nor its data\n",
					cc_name(f), (unsigned long long)(off + (uint64_t)i));
				atomic_fetch_add(&cc->bad, 1);
				break;
			}
		}
		atomic_fetch_add(&cc->reads, 1);
	} while (atomic_load(&cc->writers_left) > 0);
	for (int f = 0; f < CC_FILES; f++) {
		if (fd[f] >= 0)
			close(fd[f]);
	}
	free(buf);
	return NULL;
}

static void test_concurrent_writers_readers(void **state)
{
	struct h_fs *fs = over_plain(state, "buffer=256K,max_buffer=2M");
	struct cc cc = {.fs = fs, .writers_left = CC_WRITERS};
	struct cc_worker wk[CC_WRITERS + CC_READERS];
	for (int f = 0; f < CC_FILES; f++)
		assert_int_equal(h_write_file(H_AT(fs->mnt, cc_name(f)), "", 0), 0);
	for (int i = 0; i < CC_WRITERS + CC_READERS; i++) {
		wk[i] = (struct cc_worker){.cc = &cc, .id = i < CC_WRITERS ? i : i - CC_WRITERS};
		assert_int_equal(pthread_create(&wk[i].thread, NULL,
						i < CC_WRITERS ? cc_write : cc_read, &wk[i]),
				 0);
	}
	struct timespec end;
	clock_gettime(CLOCK_REALTIME, &end);
	end.tv_sec += 3 * WATCHDOG_MS / 1000;
	for (int i = 0; i < CC_WRITERS + CC_READERS; i++) {
		if (pthread_timedjoin_np(wk[i].thread, NULL, &end) != 0) {
			fprintf(stderr, "thread %d did not finish\n", i);
			fail();
		}
	}
	fprintf(stderr, "%llu reads while writing\n", (unsigned long long)cc.reads);
	assert_int_equal(atomic_load(&cc.bad), 0);
	for (int f = 0; f < CC_FILES; f++) {
		expect_pattern(H_AT(fs->mnt, cc_name(f)), CC_SIZE, (unsigned)f);
		expect_pattern(H_AT(fs->store, cc_name(f)), CC_SIZE, (unsigned)f);
	}
}

/* ---- memory ---- */

struct sampler {
	pid_t pid;
	atomic_bool stop;
	atomic_long peak;
	pthread_t thread;
};

static void *sample_run(void *arg)
{
	struct sampler *s = arg;
	while (!atomic_load(&s->stop)) {
		long r = h_rss_kib(s->pid);
		if (r > atomic_load(&s->peak))
			atomic_store(&s->peak, r);
		h_nap_ms(10);
	}
	return NULL;
}

/* 256 MiB stream through the daemon with max_buffer=8M: its resident size stays below the
 * budget + 16 MiB (over what it held before the copy). Under a sanitizer only the copy runs,
 * shorter, and the bound is not asserted. */
static void test_memory_bound(void **state)
{
	struct h_fs *fs = over_plain(state, "buffer=8M,max_buffer=8M");
	long start = h_rss_kib(fs->pid);
	assert_true(start > 0);
	bool check = !h_sanitized(fs->pid) && start <= 64 * 1024;
	uint64_t size = check ? 256 * MiB : 64 * MiB;
	if (!check)
		fprintf(stderr,
			"daemon under a sanitizer (VmRSS %ld KiB at start): "
			"copying 64 MiB without asserting the memory bound\n",
			start);
	struct sampler s = {.pid = fs->pid, .peak = start};
	assert_int_equal(pthread_create(&s.thread, NULL, sample_run, &s), 0);
	int fd = open_ok(H_AT(fs->mnt, "big"), O_WRONLY | O_CREAT | O_TRUNC);
	write_pattern(fd, 0, size, MiB, 18);
	int rc = close(fd);
	atomic_store(&s.stop, true);
	assert_int_equal(pthread_join(s.thread, NULL), 0);
	assert_int_equal(rc, 0);
	long peak = atomic_load(&s.peak);
	fprintf(stderr, "daemon VmRSS: %ld KiB at start, %ld KiB at peak\n", start, peak);
	if (check)
		assert_true(peak < start + (long)((8 * MiB + 16 * MiB) / KiB));
	expect_pattern(H_AT(fs->store, "big"), size, 18);
}

/* Many writers at once, each writing its file of `size` bytes in writes of `chunk`. */
struct mw_writer {
	const char *path;
	unsigned seed;
	size_t chunk;
	uint64_t size;
	int err; /* errno of the first failure, 0 if none */
	pthread_t thread;
};

static void *mw_run(void *arg)
{
	struct mw_writer *w = arg;
	unsigned char *buf = malloc(w->chunk);
	int fd = buf ? open(w->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : -1;
	if (fd < 0) {
		w->err = buf ? errno : ENOMEM;
		free(buf);
		return NULL;
	}
	for (uint64_t off = 0; off < w->size && w->err == 0; off += w->chunk) {
		h_pat_fill(buf, w->chunk, off, w->seed);
		if (write(fd, buf, w->chunk) != (ssize_t)w->chunk)
			w->err = errno ? errno : EIO;
	}
	if (close(fd) != 0 && w->err == 0)
		w->err = errno;
	free(buf);
	return NULL;
}

/* Mounts with opts, runs n writers of files of `size` bytes (san_size under a sanitizer) at once
 * (seeds from 40) and requires the daemon's peak
 * resident size (the kernel's VmHWM, so no spike escapes) to stay under max_buffer + 16 MiB,
 * the bound the issues set (not asserted under a sanitizer), and every ninth file to be right
 * in the store. */
static void many_writers(void **state, const char *opts, uint64_t max_buffer, int n, size_t chunk,
			 uint64_t size, uint64_t san_size)
{
	struct h_fs *fs = over_plain(state, opts);
	bool check = !h_sanitized(fs->pid);
	if (!check)
		size = san_size;
	struct mw_writer *w = calloc((size_t)n, sizeof(*w));
	char(*paths)[PATH_MAX] = calloc((size_t)n, PATH_MAX);
	assert_non_null(w);
	assert_non_null(paths);
	for (int i = 0; i < n; i++) {
		w[i] = (struct mw_writer){.path = h_path(paths[i], "%s/mw%02d", fs->mnt, i),
					  .seed = 40 + (unsigned)i,
					  .chunk = chunk,
					  .size = size};
		assert_int_equal(pthread_create(&w[i].thread, NULL, mw_run, &w[i]), 0);
	}
	for (int i = 0; i < n; i++)
		assert_int_equal(pthread_join(w[i].thread, NULL), 0);
	long hwm = h_hwm_kib(fs->pid);
	long bound = (long)((max_buffer + 16 * MiB) / KiB);
	fprintf(stderr, "%d writers of %zu KiB writes: daemon VmHWM %ld KiB (bound %ld KiB)%s\n", n,
		(size_t)(chunk / KiB), hwm, bound, check ? "" : " [sanitized: not asserted]");
	for (int i = 0; i < n; i++)
		assert_int_equal(w[i].err, 0);
	if (check)
		assert_true(hwm > 0 && hwm <= bound);
	char stored[PATH_MAX];
	for (int i = 0; i < n; i += 9)
		expect_pattern(h_path(stored, "%s/mw%02d", fs->store, i), size, 40 + (unsigned)i);
	free(paths);
	free(w);
}

/* More writers than the daemon has worker threads, 64 files of 4 MiB in 256 KiB writes under
 * a rate. */
static void test_memory_many_writers(void **state)
{
	many_writers(state, "rate=128M,buffer=256K,max_buffer=4M", 4 * MiB, 64, 256 * KiB, 4 * MiB,
		     4 * MiB);
}

/* As many writers as worker threads, with the defaults (max_buffer 32 MiB), each in writes of
 * 1 MiB (dd bs=1M), as large as requests get: every worker may hold a 1 MiB request at once,
 * and only the pool of receive buffers (loop.c) keeps them within the bound; with a buffer
 * per worker (libfuse's loop) they reached 68 MiB. 16 MiB files (4 MiB under a sanitizer). */
static void test_memory_many_large_writers(void **state)
{
	many_writers(state, NULL, 32 * MiB, 32, MiB, 16 * MiB, 4 * MiB);
}

#define T(f) cmocka_unit_test_teardown(f, st_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    T(test_backpressure_stalled),
	    T(test_backpressure_many_writers),
	    T(test_stall_bounds_requests),
	    T(test_rate),
	    T(test_file_rate),
	    T(test_close_waits_for_store),
	    T(test_copy_leaves_little_cache),
	    T(test_direct_rewrites),
	    T(test_fsync_waits_for_store),
	    T(test_enospc),
	    T(test_store_full_errors_reach_writer),
	    T(test_lent_writes_read_back),
	    T(test_disk_errors_reach_writer),
	    T(test_disk_errors_reach_writer_direct),
	    T(test_eio_on_write),
	    T(test_eio_on_fsync),
	    T(test_error_sticks),
	    T(test_buffered_reads),
	    T(test_buffered_scattered),
	    T(test_buffered_append),
	    T(test_truncate_order),
	    T(test_buffered_rename_unlink),
	    T(test_buffered_copy_range),
	    T(test_known_open_behind_partial_page),
	    T(test_concurrent_writers_readers),
	    T(test_memory_bound),
	    T(test_memory_many_writers),
	    T(test_memory_many_large_writers),
	};
	/* STREAM_TEST=name (a glob) runs only the matching tests, when chasing one. */
	const char *only = getenv("STREAM_TEST");
	if (only != NULL && *only != '\0')
		cmocka_set_test_filter(only);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
