/*
 * test_vattr.c - the virtual attributes user.throttlefs.* on real mounts, and throttlefs-top.
 *
 * What issue 4 promises, checked from the outside with plain getxattr(2) and friends while
 * real copies run: the progress of a file is valid JSON whose figures only move forward
 * (committed never decreases and never passes received) and end where the data ends; the
 * root's figures agree with the kernel's (rss with /proc); the rate can be changed while a
 * copy runs; every error is the promised errno and a refused value changes nothing; the
 * names never show in listxattr, so copies out of the view never carry them; the usual size
 * probe then read always works; and throttlefs-top shows and dumps the same figures.
 *
 * Copies are written by a thread with plain write(2) calls while the test's main thread
 * watches. Rates are low enough that a copy lasts seconds on any machine (the throttle, not
 * the CPU, sets the pace), so watching sees it in flight even under sanitizers. The one
 * speed comparison (a rate raised mid-copy) compares against the time the old rate alone
 * would need, with a wide margin; every wait has a generous watchdog.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "harness.h"
#include "jsonr.h"

#define MiB	     (1024u * 1024u)
#define COPY_SIZE    (24u * MiB)
#define POLL_MS	     100
#define WATCHDOG_MS  60000 /* the longest any copy may take, sanitizers and load included */
#define VALUE_MAX    65536
#define PROBE_ROUNDS 200

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * The test's mount and copy live here, not on a test's stack: a failed assertion leaves the
 * test function at once, and teardown must still find both to unmount the one (by force if
 * busy, which makes the writer's calls fail) and then join the other.
 */
static struct h_fs *t_fs;

/* The mount with options; the test fails at once if it cannot be made. */
static struct h_fs *mount_with(const char *opts)
{
	t_fs = h_fs_new();
	assert_non_null(t_fs);
	if (h_fs_mount(t_fs, opts) != 0)
		fail_msg("cannot mount with -o %s", opts ? opts : "");
	return t_fs;
}

/* The clean unmount at the end of a test that passed so far. */
static void unmount(struct h_fs *fs)
{
	assert_ptr_equal(fs, t_fs);
	t_fs = NULL;
	assert_int_equal(h_fs_free(fs), 0);
}

/* ---- reading attributes ---- */

/* user.throttlefs.NAME of path into buf (NUL-terminated): its length, or -errno. */
static ssize_t vget(const char *path, const char *name, char *buf, size_t cap)
{
	char full[64];
	snprintf(full, sizeof(full), "user.throttlefs.%s", name);
	ssize_t n = lgetxattr(path, full, buf, cap - 1);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	return n;
}

static int vset(const char *path, const char *name, const char *value)
{
	char full[64];
	snprintf(full, sizeof(full), "user.throttlefs.%s", name);
	return lsetxattr(path, full, value, strlen(value), 0) == 0 ? 0 : -errno;
}

/* Parses text, failing the test (and showing the text) if it is not valid JSON. */
static struct jsonr *parse_or_fail(const char *what, const char *text, size_t len)
{
	struct jsonr *d = NULL;
	if (jsonr_parse(text, len, &d) != 0)
		fail_msg("%s is not valid JSON: %.*s", what, (int)len, text);
	return d;
}

/* user.throttlefs.NAME of path as a parsed JSON document. */
static struct jsonr *vjson(const char *path, const char *name)
{
	static char buf[VALUE_MAX];
	ssize_t n = vget(path, name, buf, sizeof(buf));
	if (n < 0)
		fail_msg("getxattr user.throttlefs.%s of %s: %s", name, path, strerror((int)-n));
	return parse_or_fail(name, buf, (size_t)n);
}

/* obj.key as a whole number; fails the test if missing or not one. */
static uint64_t u64_of(const struct jsonr_value *obj, const char *key)
{
	uint64_t x;
	if (jsonr_u64(jsonr_get(obj, key), &x) != 0)
		fail_msg("field %s missing or not a whole number", key);
	return x;
}

/* The root's configured rate, as config shows it. */
static uint64_t config_rate(struct h_fs *fs)
{
	struct jsonr *d = vjson(fs->mnt, "config");
	uint64_t r = u64_of(jsonr_root(d), "rate");
	jsonr_free(d);
	return r;
}

/* ---- a copy by another thread ---- */

struct writer {
	char path[PATH_MAX];
	size_t size;
	int truncate_first; /* ftruncate to the final size before writing */
	pthread_t thread;
	pid_t pid;  /* a writer process instead of a thread: its pid until reaped */
	int status; /* its wait status */
	/* Set by the thread before it sets done; read by the main thread after the join. */
	const char *failed; /* the step that failed, or NULL */
	int err;
	uint64_t committed_at_close; /* user.throttlefs.committed right after close returned */
	double started, ended;
	int done; /* atomic */
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	static char chunk[MiB];
	h_fill(chunk, sizeof(chunk), 7);
	int fd = open(w->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		w->failed = "open";
		goto out;
	}
	if (w->truncate_first && ftruncate(fd, (off_t)w->size) != 0) {
		w->failed = "ftruncate";
		close(fd);
		goto out;
	}
	for (size_t off = 0; off < w->size;) {
		size_t len = w->size - off < sizeof(chunk) ? w->size - off : sizeof(chunk);
		ssize_t n = write(fd, chunk, len);
		if (n <= 0) {
			w->failed = "write";
			close(fd);
			goto out;
		}
		off += (size_t)n;
	}
	if (close(fd) != 0) {
		w->failed = "close";
		goto out;
	}
	w->ended = now_s();
	char buf[64];
	ssize_t n = vget(w->path, "committed", buf, sizeof(buf));
	if (n < 0) {
		errno = (int)-n;
		w->failed = "getxattr committed after close";
		goto out;
	}
	w->committed_at_close = strtoull(buf, NULL, 10);
out:
	if (w->failed)
		w->err = errno;
	__atomic_store_n(&w->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

static struct writer t_writer;
static int t_writer_running; /* started and not yet joined */

/*
 * Starts the test's one copy: path gets size bytes, from a thread, or from a child process
 * when the test runs programs meanwhile. (A program started while this process has the file
 * open would inherit the descriptor; its close on exec then flushes, and a flush waits until
 * the stream has committed what it holds, which a running copy keeps refilling.)
 */
static struct writer *writer_start(const char *path, size_t size, int truncate_first,
				   int as_process)
{
	struct writer *w = &t_writer;
	memset(w, 0, sizeof(*w));
	h_path(w->path, "%s", path);
	w->size = size;
	w->truncate_first = truncate_first;
	w->started = now_s();
	if (as_process) {
		w->pid = fork();
		assert_true(w->pid >= 0);
		if (w->pid == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			writer_main(w);
			if (w->failed)
				fprintf(stderr, "writer of %s: %s: %s\n", w->path, w->failed,
					strerror(w->err));
			_exit(w->failed ? 1 : 0);
		}
	} else {
		assert_int_equal(pthread_create(&w->thread, NULL, writer_main, w), 0);
	}
	t_writer_running = 1;
	return w;
}

static int writer_done(struct writer *w)
{
	if (w->pid > 0 && waitpid(w->pid, &w->status, WNOHANG) == w->pid)
		w->pid = -1; /* reaped */
	return w->pid < 0 || (w->pid == 0 && __atomic_load_n(&w->done, __ATOMIC_ACQUIRE));
}

/* Waits for the writer whatever happens (teardown, after a forced unmount). */
static void writer_reap(struct writer *w)
{
	if (w->pid > 0)
		while (waitpid(w->pid, &w->status, 0) < 0 && errno == EINTR)
			;
	else if (w->pid == 0)
		pthread_join(w->thread, NULL);
	t_writer_running = 0;
}

/* Joins the writer (after up to WATCHDOG_MS) and fails the test if it failed. */
static void writer_join(struct writer *w)
{
	for (double t0 = now_s(); !writer_done(w); sleep_ms(POLL_MS))
		if ((now_s() - t0) * 1000 > WATCHDOG_MS)
			fail_msg("the writer of %s is still busy after %d ms", w->path,
				 WATCHDOG_MS); /* teardown unmounts (-uz), which unblocks it */
	writer_reap(w);
	if (w->pid < 0 && (!WIFEXITED(w->status) || WEXITSTATUS(w->status) != 0))
		fail_msg("the writer process of %s failed (wait status %#x)", w->path, w->status);
	if (w->failed)
		fail_msg("writer of %s: %s: %s", w->path, w->failed, strerror(w->err));
}

/* Waits until the file's state is "done" (the last handle released). */
static void wait_state_done(const char *path)
{
	char buf[64];
	for (double t0 = now_s();; sleep_ms(POLL_MS)) {
		if (vget(path, "state", buf, sizeof(buf)) > 0 && strcmp(buf, "done") == 0)
			return;
		if ((now_s() - t0) * 1000 > WATCHDOG_MS)
			fail_msg("%s: state still '%s'", path, buf);
	}
}

/* After every test: unmount what is left (forcing it if a copy still runs), join the copy. */
static int teardown(void **state)
{
	(void)state;
	int rc = 0;
	if (t_fs != NULL) {
		rc = h_fs_free(t_fs);
		t_fs = NULL;
	}
	if (t_writer_running)
		writer_reap(&t_writer);
	return rc;
}

/* ---- progress of a copy ---- */

/*
 * Watches a COPY_SIZE copy at rate=8M every POLL_MS: progress parses, committed never
 * decreases nor passes received, state goes from writing to done, and committed equals the
 * size once close returned. With truncate_first, expected and percent are known throughout.
 */
static void watch_copy(int truncate_first)
{
	struct h_fs *fs = mount_with("rate=8M");
	const char *path = H_AT(fs->mnt, "copy.bin");
	struct writer *w = writer_start(path, COPY_SIZE, truncate_first, 0);
	uint64_t last = 0;
	int polls = 0, saw_writing = 0, saw_done_early = 0, saw_expected = 0;
	static char buf[VALUE_MAX];
	for (double t0 = now_s(); !writer_done(w); sleep_ms(POLL_MS)) {
		if ((now_s() - t0) * 1000 > WATCHDOG_MS)
			break; /* writer_join reports it */
		ssize_t n = vget(path, "progress", buf, sizeof(buf));
		if (n == -ENOENT)
			continue; /* not created yet */
		if (n < 0)
			fail_msg("getxattr progress: %s", strerror((int)-n));
		struct jsonr *d = parse_or_fail("progress", buf, (size_t)n);
		const struct jsonr_value *p = jsonr_root(d);
		uint64_t committed = u64_of(p, "committed"), received = u64_of(p, "received");
		const char *state = jsonr_string(jsonr_get(p, "state"));
		assert_non_null(state);
		if (committed < last)
			fail_msg("committed went back from %llu to %llu", (unsigned long long)last,
				 (unsigned long long)committed);
		if (committed > received)
			fail_msg("committed %llu passed received %llu",
				 (unsigned long long)committed, (unsigned long long)received);
		assert_true(received <= COPY_SIZE);
		last = committed;
		if (strcmp(state, "writing") == 0) {
			saw_writing = 1;
			assert_false(saw_done_early); /* writing never follows done */
		} else if (strcmp(state, "done") == 0) {
			saw_done_early = 1;
		}
		const struct jsonr_value *expected = jsonr_get(p, "expected");
		const struct jsonr_value *percent = jsonr_get(p, "percent");
		if (truncate_first && strcmp(state, "writing") == 0 && received > 0) {
			assert_int_equal(u64_of(p, "expected"), COPY_SIZE);
			double pct = -1;
			assert_int_equal(jsonr_double(percent, &pct), 0);
			assert_true(pct >= 0 && pct <= 100);
			assert_true(pct <= 100.0 * (double)committed / COPY_SIZE + 0.1);
			saw_expected = 1;
		} else if (!truncate_first) {
			assert_int_equal(jsonr_type(expected), JSONR_NULL);
			assert_int_equal(jsonr_type(percent), JSONR_NULL);
		}
		jsonr_free(d);
		polls++;
	}
	writer_join(w);
	assert_true(polls >= 3); /* at 8M, 24M take seconds: the copy was seen in flight */
	assert_true(saw_writing);
	assert_true(!truncate_first || saw_expected);
	assert_int_equal(w->committed_at_close, COPY_SIZE);
	wait_state_done(path);
	struct jsonr *d = vjson(path, "progress");
	const struct jsonr_value *p = jsonr_root(d);
	assert_int_equal(u64_of(p, "committed"), COPY_SIZE);
	assert_int_equal(u64_of(p, "received"), COPY_SIZE);
	assert_int_equal(u64_of(p, "buffered"), 0);
	assert_int_equal(jsonr_type(jsonr_get(p, "error")), JSONR_NULL);
	jsonr_free(d);
	struct stat st;
	assert_int_equal(stat(H_AT(fs->backing, "copy.bin"), &st), 0);
	assert_int_equal(st.st_size, COPY_SIZE);
	unmount(fs);
}

static void progress_during_copy(void **state)
{
	(void)state;
	watch_copy(0);
}

static void progress_with_known_size(void **state)
{
	(void)state;
	watch_copy(1);
}

/* ---- listings ---- */

/* Whether the list of names (len bytes) holds name, or (prefix) any name starting so. */
static int listed(const char *list, ssize_t len, const char *name, int prefix)
{
	for (const char *p = list; p < list + len; p += strlen(p) + 1)
		if (prefix ? strncmp(p, name, strlen(name)) == 0 : strcmp(p, name) == 0)
			return 1;
	return 0;
}

static void expect_listing(const char *path, const char *real)
{
	static char list[VALUE_MAX];
	ssize_t len = llistxattr(path, list, sizeof(list));
	if (len < 0)
		fail_msg("llistxattr %s: %s", path, strerror(errno));
	if (real != NULL && !listed(list, len, real, 0))
		fail_msg("%s: %s not listed", path, real);
	if (listed(list, len, "user.throttlefs.", 1))
		fail_msg("%s: a user.throttlefs.* name is listed", path);
	/* The size probe agrees with the listing. */
	assert_int_equal(llistxattr(path, NULL, 0), len);
}

/* ---- writable names and errors ---- */

static void expected_settable(void **state)
{
	(void)state;
	struct h_fs *fs = mount_with(NULL);
	const char *f = H_AT(fs->mnt, "f");
	char buf[256];
	assert_int_equal(h_write_file(f, "0123456789", 10), 0);
	assert_int_equal(vget(f, "expected", buf, sizeof(buf)), -ENODATA); /* none known */
	assert_int_equal(vset(f, "expected", "1000"), 0);
	assert_true(vget(f, "expected", buf, sizeof(buf)) > 0);
	assert_string_equal(buf, "1000");
	assert_int_equal(vset(f, "expected", "4K\n"), 0); /* a suffix, and $(...)'s newline */
	assert_true(vget(f, "expected", buf, sizeof(buf)) > 0);
	assert_string_equal(buf, "4096");
	struct jsonr *d = vjson(f, "progress");
	assert_int_equal(u64_of(jsonr_root(d), "expected"), 4096);
	double pct = -1;
	assert_int_equal(jsonr_double(jsonr_get(jsonr_root(d), "percent"), &pct), 0);
	assert_true(pct >= 0 && pct <= 100);
	jsonr_free(d);
	static const char *const bad[] = {"abc",
					  "",
					  "12x",
					  "-1",
					  "1.5",
					  " 7",
					  "99999999999999999999999",
					  "1000000000000000000000000000000"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (vset(f, "expected", bad[i]) != -EINVAL)
			fail_msg("expected='%s' was not refused with EINVAL", bad[i]);
		assert_true(vget(f, "expected", buf, sizeof(buf)) > 0);
		assert_string_equal(buf, "4096"); /* unchanged */
	}
	assert_int_equal(lremovexattr(f, "user.throttlefs.expected"), 0);
	assert_int_equal(vget(f, "expected", buf, sizeof(buf)), -ENODATA);
	unmount(fs);
}

static void errors_by_name(void **state)
{
	(void)state;
	struct h_fs *fs = mount_with(NULL);
	const char *f = H_AT(fs->mnt, "f"), *dir = H_AT(fs->mnt, "d");
	char buf[VALUE_MAX];
	assert_int_equal(h_write_file(f, "x", 1), 0);
	assert_int_equal(mkdir(dir, 0755), 0);
	/* Read-only names: EROFS to set (and to remove). */
	static const char *const root_ro[] = {"memory", "heap", "transfers", "config"};
	for (size_t i = 0; i < 4; i++) {
		assert_int_equal(vset(fs->mnt, root_ro[i], "1"), -EROFS);
		assert_true(vget(fs->mnt, root_ro[i], buf, sizeof(buf)) > 0);
	}
	static const char *const file_ro[] = {"progress",  "state",    "received",
					      "committed", "buffered", "rate"};
	for (size_t i = 0; i < sizeof(file_ro) / sizeof(file_ro[0]); i++)
		assert_int_equal(vset(f, file_ro[i], "1"), -EROFS);
	H_EXPECT_ERRNO(lremovexattr(fs->mnt, "user.throttlefs.memory"), EROFS);
	H_EXPECT_ERRNO(lremovexattr(f, "user.throttlefs.progress"), EROFS);
	/* Unknown names, and names of the other kind of inode: ENODATA, get and set. */
	const char *const where[] = {fs->mnt, f, dir};
	for (size_t i = 0; i < 3; i++) {
		assert_int_equal(vget(where[i], "nope", buf, sizeof(buf)), -ENODATA);
		assert_int_equal(vset(where[i], "nope", "1"), -ENODATA);
	}
	assert_int_equal(vget(f, "memory", buf, sizeof(buf)), -ENODATA);
	assert_int_equal(vget(fs->mnt, "progress", buf, sizeof(buf)), -ENODATA);
	assert_int_equal(vget(dir, "progress", buf, sizeof(buf)), -ENODATA);
	assert_int_equal(vset(dir, "expected", "5"), -ENODATA);
	/* Nothing of this reached the backing store. */
	expect_listing(H_AT(fs->backing, "f"), NULL);
	expect_listing(H_AT(fs->backing, "d"), NULL);
	unmount(fs);
}

/* The config's rate field, checked after each refused value. */
static void config_refuses_bad_values(void **state)
{
	(void)state;
	struct h_fs *fs = mount_with("rate=4M,file_rate=2M");
	assert_int_equal(config_rate(fs), 4 * MiB);
	static const char *const bad[] = {
	    "abc", "", "-1", "4Q", "1.5M", "2T", "99999999999999999999"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (vset(fs->mnt, "rate", bad[i]) != -EINVAL)
			fail_msg("rate='%s' was not refused with EINVAL", bad[i]);
		if (vset(fs->mnt, "file_rate", bad[i]) != -EINVAL)
			fail_msg("file_rate='%s' was not refused with EINVAL", bad[i]);
		struct jsonr *d = vjson(fs->mnt, "config");
		assert_int_equal(u64_of(jsonr_root(d), "rate"), 4 * MiB);
		assert_int_equal(u64_of(jsonr_root(d), "file_rate"), 2 * MiB);
		jsonr_free(d);
	}
	char buf[64];
	assert_true(vget(fs->mnt, "rate", buf, sizeof(buf)) > 0);
	assert_string_equal(buf, "4194304");
	/* A good value changes both the plain name and config; 0 is unlimited. */
	assert_int_equal(vset(fs->mnt, "file_rate", "0"), 0);
	assert_int_equal(vset(fs->mnt, "rate", "16M"), 0);
	struct jsonr *d = vjson(fs->mnt, "config");
	assert_int_equal(u64_of(jsonr_root(d), "rate"), 16 * MiB);
	assert_int_equal(u64_of(jsonr_root(d), "file_rate"), 0);
	jsonr_free(d);
	unmount(fs);
}

/* ---- the root's figures ---- */

/* VmRSS of pid in bytes, from /proc. */
static uint64_t proc_rss(pid_t pid)
{
	char path[64], line[256];
	unsigned long long kb = 0;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "re");
	assert_non_null(f);
	while (fgets(line, sizeof(line), f) != NULL)
		if (sscanf(line, "VmRSS: %llu kB", &kb) == 1)
			break;
	fclose(f);
	assert_true(kb > 0);
	return kb * 1024;
}

static void memory_agrees_with_proc(void **state)
{
	(void)state;
	struct h_fs *fs = mount_with(NULL);
	/* RSS moves between two reads; bracket the attribute's value by /proc before and after
	 * and allow 10% on either side. A few rounds: one of them must agree. */
	int agreed = 0;
	for (int round = 0; round < 5 && !agreed; round++) {
		uint64_t before = proc_rss(fs->pid);
		struct jsonr *d = vjson(fs->mnt, "memory");
		uint64_t after = proc_rss(fs->pid);
		const struct jsonr_value *m = jsonr_root(d);
		uint64_t rss = u64_of(m, "rss"), peak = u64_of(m, "peak_rss");
		uint64_t lo = before < after ? before : after, hi = before < after ? after : before;
		agreed = (double)rss >= 0.9 * (double)lo && (double)rss <= 1.1 * (double)hi;
		if (!agreed)
			fprintf(stderr, "round %d: rss %llu, /proc VmRSS %llu..%llu\n", round,
				(unsigned long long)rss, (unsigned long long)lo,
				(unsigned long long)hi);
		assert_true(peak >= rss);
		assert_true(u64_of(m, "buffer_budget") > 0);
		assert_true(u64_of(m, "buffered") <= u64_of(m, "buffer_budget"));
		jsonr_free(d);
	}
	assert_true(agreed);
	/* heap and transfers parse too, with the fields the tools rely on. */
	struct jsonr *h = vjson(fs->mnt, "heap");
	assert_int_equal(jsonr_type(jsonr_root(h)), JSONR_OBJECT);
	jsonr_free(h);
	struct jsonr *t = vjson(fs->mnt, "transfers");
	assert_int_equal(jsonr_type(jsonr_get(jsonr_root(t), "active")), JSONR_ARRAY);
	assert_int_equal(jsonr_len(jsonr_get(jsonr_root(t), "active")), 0);
	assert_int_equal(jsonr_type(jsonr_get(jsonr_root(t), "totals")), JSONR_OBJECT);
	jsonr_free(t);
	unmount(fs);
}

static void rate_change_mid_copy(void **state)
{
	(void)state;
	struct h_fs *fs = mount_with("rate=4M");
	struct writer *w = writer_start(H_AT(fs->mnt, "copy.bin"), COPY_SIZE, 0, 0);
	sleep_ms(1000);
	assert_false(writer_done(w)); /* 24M at 4M cannot be done in a second */
	assert_int_equal(vset(fs->mnt, "rate", "64M"), 0);
	assert_int_equal(config_rate(fs), 64 * MiB);
	writer_join(w);
	/* At 4M the copy needs COPY_SIZE / 4M = 6 s (less only the burst the throttle allows);
	 * at 64M after the first second it needs well under 2 s. Three quarters of the slow time
	 * leaves room for a loaded machine and still fails if the change did not take. */
	double took = w->ended - w->started, slow = (double)COPY_SIZE / (4 * MiB);
	fprintf(stderr, "copy took %.2f s (at the old rate alone: %.1f s)\n", took, slow);
	assert_true(took < 0.75 * slow);
	assert_int_equal(w->committed_at_close, COPY_SIZE);
	assert_int_equal(config_rate(fs), 64 * MiB);
	unmount(fs);
}

/* ---- listing and copying ---- */

static void listxattr_hides_ours(void **state)
{
	(void)state;
	struct h_fs *fs = mount_with(NULL);
	const char *f = H_AT(fs->mnt, "f");
	assert_int_equal(h_write_file(f, "data", 4), 0);
	assert_int_equal(lsetxattr(f, "user.real", "1", 1, 0), 0);
	assert_int_equal(vset(f, "expected", "4"), 0); /* a virtual value that is set */
	assert_int_equal(lsetxattr(fs->mnt, "user.rootreal", "2", 1, 0), 0);
	expect_listing(f, "user.real");
	expect_listing(fs->mnt, "user.rootreal");
	expect_listing(H_AT(fs->backing, "f"), "user.real");
	expect_listing(fs->backing, "user.rootreal");
	char v[8];
	assert_int_equal(lgetxattr(f, "user.real", v, sizeof(v)), 1);
	assert_int_equal(v[0], '1');
	unmount(fs);
}

static void cp_a_carries_none(void **state)
{
	(void)state;
	struct h_fs *fs = mount_with(NULL);
	const char *f = H_AT(fs->mnt, "f");
	assert_int_equal(h_write_file(f, "payload", 7), 0);
	assert_int_equal(lsetxattr(f, "user.keep", "k", 1, 0), 0);
	assert_int_equal(vset(f, "expected", "7"), 0);
	assert_int_equal(h_run("cp -a '%s' '%s/copy'", f, fs->plain), 0);
	expect_listing(H_AT(fs->plain, "copy"), "user.keep");
	/* and a whole tree, root attributes included */
	assert_int_equal(h_run("cp -a '%s' '%s/tree'", fs->mnt, fs->plain), 0);
	expect_listing(H_AT(fs->plain, "tree"), NULL);
	expect_listing(H_AT(fs->plain, "tree/f"), "user.keep");
	unmount(fs);
}

/* ---- the two-step read ---- */

/* Probe then read NAME of path: both succeed, agree on the length, and the value parses. */
static void probe_then_read(const char *path, const char *name)
{
	static char buf[VALUE_MAX];
	char full[64];
	snprintf(full, sizeof(full), "user.throttlefs.%s", name);
	ssize_t size = lgetxattr(path, full, NULL, 0);
	if (size <= 0)
		fail_msg("size probe of %s on %s: %zd (%s)", name, path, size, strerror(errno));
	assert_true((size_t)size < sizeof(buf));
	ssize_t n = lgetxattr(path, full, buf, (size_t)size);
	if (n < 0)
		fail_msg("read of %s on %s after a probe of %zd: %s", name, path, size,
			 strerror(errno));
	if (n != size)
		fail_msg("%s on %s: the probe said %zd bytes, the read gave %zd: %.*s", name, path,
			 size, n, (int)n, buf);
	jsonr_free(parse_or_fail(name, buf, (size_t)n));
}

/* The size probe and the read that follows see one snapshot, while the values change. */
static void size_probe_then_read(void **state)
{
	(void)state;
	struct h_fs *fs = mount_with("rate=8M");
	const char *path = H_AT(fs->mnt, "copy.bin");
	struct writer *w = writer_start(path, COPY_SIZE, 0, 0);
	char buf[16];
	for (double t0 = now_s(); vget(path, "state", buf, sizeof(buf)) < 0; sleep_ms(10))
		assert_true((now_s() - t0) * 1000 < WATCHDOG_MS);
	/* A buffer too small is ERANGE, for JSON and for plain values. */
	ssize_t size = lgetxattr(path, "user.throttlefs.progress", NULL, 0);
	assert_true(size > 2);
	static char small[VALUE_MAX];
	H_EXPECT_ERRNO(lgetxattr(path, "user.throttlefs.progress", small, 2), ERANGE);
	H_EXPECT_ERRNO(lgetxattr(fs->mnt, "user.throttlefs.config", small, 3), ERANGE);
	H_EXPECT_ERRNO(lgetxattr(path, "user.throttlefs.state", small, 1), ERANGE);
	int during = 0;
	for (int i = 0; i < PROBE_ROUNDS; i++) {
		during += !writer_done(w);
		probe_then_read(path, "progress");
		probe_then_read(fs->mnt, "transfers");
		probe_then_read(fs->mnt, "memory");
	}
	writer_join(w);
	unmount(fs);
	fprintf(stderr, "%d of %d rounds while the copy ran\n", during, PROBE_ROUNDS);
	assert_true(during > 0);
}

/* ---- throttlefs-top ---- */

/* Runs throttlefs-top with args; its stdout (and stderr when with_err) into out. Returns the
 * exit status as h_run does. */
static int run_top(const char *args, char *out, size_t cap, int with_err)
{
	const char *bin = getenv("THROTTLEFS_TOP_BIN");
	if (bin == NULL || *bin == '\0')
		fail_msg("THROTTLEFS_TOP_BIN is not set");
	char cmd[2 * PATH_MAX];
	snprintf(cmd, sizeof(cmd), "'%s' %s %s", bin, args, with_err ? "2>&1 >/dev/null" : "");
	FILE *p = popen(cmd, "re");
	assert_non_null(p);
	size_t n = fread(out, 1, cap - 1, p);
	out[n] = '\0';
	int st = pclose(p);
	assert_true(st != -1);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void top_shows_transfers(void **state)
{
	(void)state;
	struct h_fs *fs = mount_with("rate=4M");
	static char out[VALUE_MAX * 4];
	char args[PATH_MAX + 32];
	/* A name longer than a line: top cuts it from the front, so its end stays in view. */
	struct writer *w = writer_start(H_AT(fs->mnt, "a-name-longer-than-a-terminal-line-of-"
						      "eighty-columns-which-throttlefs-top-cuts-"
						      "from-the-front-top-watched.bin"),
					16 * MiB, 1, 1);
	/* Wait until the daemon lists the transfer, then ask the tool. */
	for (double t0 = now_s();; sleep_ms(POLL_MS)) {
		struct jsonr *d = vjson(fs->mnt, "transfers");
		size_t n = jsonr_len(jsonr_get(jsonr_root(d), "active"));
		jsonr_free(d);
		if (n > 0)
			break;
		assert_true((now_s() - t0) * 1000 < WATCHDOG_MS);
	}
	snprintf(args, sizeof(args), "--once '%s'", fs->mnt);
	double t1 = now_s();
	assert_int_equal(run_top(args, out, sizeof(out), 0), 0);
	fprintf(stderr, "top --once took %.2f s, %.2f s after the copy began\n", now_s() - t1,
		now_s() - w->started);
	if (strstr(out, "top-watched.bin") == NULL)
		fail_msg("the active transfer is not shown (%zu bytes):\n%s", strlen(out), out);
	if (strstr(out, "\n...") == NULL || strstr(out, "-from-the-front-top-watched.bin ") == NULL)
		fail_msg("a long name is not cut from its front:\n%s", out);
	for (const char *l = out; *l;) {
		size_t n = strcspn(l, "\n");
		if (n > 80)
			fail_msg("a line of --once is wider than 80 columns: %.*s", (int)n, l);
		l += n + (l[n] == '\n');
	}
	assert_non_null(strstr(out, "4.0 MiB/s")); /* the limit, in people's units */
	assert_null(strchr(out, '\033'));	   /* --once draws no escape sequences */

	snprintf(args, sizeof(args), "--json '%s'", fs->mnt);
	assert_int_equal(run_top(args, out, sizeof(out), 0), 0);
	size_t len = strlen(out);
	assert_true(len > 0 && out[len - 1] == '\n');
	struct jsonr *d = parse_or_fail("throttlefs-top --json", out, len);
	const struct jsonr_value *r = jsonr_root(d);
	assert_int_equal(jsonr_len(r), 4);
	static const char *const keys[] = {"transfers", "memory", "heap", "config"};
	for (size_t i = 0; i < 4; i++)
		assert_int_equal(jsonr_type(jsonr_get(r, keys[i])), JSONR_OBJECT);
	assert_int_equal(u64_of(jsonr_get(r, "config"), "rate"), 4 * MiB);
	assert_true(u64_of(jsonr_get(r, "memory"), "rss") > 0);
	jsonr_free(d);
	writer_join(w);

	/* Not a mount: one line, exit status 2. So for a bad option. */
	assert_int_equal(run_top("/tmp", out, sizeof(out), 1), 2);
	assert_non_null(strstr(out, "is not a throttlefs mount"));
	assert_non_null(strchr(out, '\n'));
	assert_string_equal(strchr(out, '\n'), "\n");
	snprintf(args, sizeof(args), "'%s'", fs->plain);
	assert_int_equal(run_top(args, out, sizeof(out), 1), 2);
	assert_non_null(strstr(out, "is not a throttlefs mount"));
	snprintf(args, sizeof(args), "--bogus '%s'", fs->mnt);
	assert_int_equal(run_top(args, out, sizeof(out), 1), 2);
	assert_string_equal(strchr(out, '\n'), "\n");
	unmount(fs);
}

/* "done" means the transfer ended: while the file is open it stays "writing" even when all
 * it received is on the store (after an fsync, or between two slow writes), and "done"
 * comes at close and stays. */
static void done_only_after_close(void **state)
{
	(void)state;
	struct h_fs *fs = mount_with(NULL);
	const char *path = H_AT(fs->mnt, "open.bin");
	char buf[64];
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	static char data[4096];
	assert_int_equal(write(fd, data, sizeof(data)), (ssize_t)sizeof(data));
	assert_int_equal(fsync(fd), 0); /* everything received is on the store */
	assert_true(vget(path, "state", buf, sizeof(buf)) > 0);
	assert_string_equal(buf, "writing");
	assert_true(vget(path, "committed", buf, sizeof(buf)) > 0);
	assert_string_equal(buf, "4096");
	assert_int_equal(close(fd), 0);
	wait_state_done(path);
	assert_true(vget(path, "state", buf, sizeof(buf)) > 0);
	assert_string_equal(buf, "done");
	unmount(fs);
}

/* ---- the metadata heap (issue 5) ---- */

#define HEAP_FILES 40000
#define HEAP_DIRS  40

/* The heap's figures, with every field the issue names checked for presence and sense. */
struct heap_view {
	uint64_t inodes, objects, heap_used, heap_total, forgotten, scavenges, promoted, old_cycles;
	uint64_t collector_kicks, collector_cycles; /* the idle collector's */
};

static struct heap_view heap_read(const char *mnt)
{
	struct jsonr *d = vjson(mnt, "heap");
	const struct jsonr_value *r = jsonr_root(d), *y = jsonr_get(r, "young"),
				 *o = jsonr_get(r, "old"), *p = jsonr_get(r, "pause_us"),
				 *c = jsonr_get(r, "collector");
	/* No collector failure: its error is null (an errno name when its thread could not
	 * start). */
	assert_int_equal(jsonr_type(jsonr_get(c, "error")), JSONR_NULL);
	assert_true(u64_of(c, "slices") >= u64_of(c, "cycles"));
	assert_true(u64_of(y, "used") <= u64_of(y, "size"));
	assert_true(u64_of(o, "used") <= u64_of(o, "size"));
	double frag;
	assert_int_equal(jsonr_double(jsonr_get(o, "fragmentation"), &frag), 0);
	assert_true(frag >= 0 && frag <= 1);
	assert_true(u64_of(p, "last") <= u64_of(p, "max"));
	assert_true(u64_of(p, "max") <= u64_of(p, "total"));
	struct heap_view v = {
	    .inodes = u64_of(r, "inodes"),
	    .objects = u64_of(r, "objects"),
	    .heap_used = u64_of(r, "heap_used"),
	    .heap_total = u64_of(r, "heap_total"),
	    .forgotten = u64_of(r, "forgotten"),
	    .scavenges = u64_of(y, "scavenges"),
	    .promoted = u64_of(y, "promoted_bytes"),
	    .old_cycles = u64_of(o, "mark_sweeps") + u64_of(o, "mark_compacts"),
	    .collector_kicks = u64_of(c, "kicks"),
	    .collector_cycles = u64_of(c, "cycles"),
	};
	assert_true(v.objects >= v.inodes);
	assert_true(v.heap_total >= v.heap_used);
	jsonr_free(d);
	return v;
}

static bool log_has(const char *log, const char *what)
{
	static char text[1 << 20];
	ssize_t n = h_read_file(log, text, sizeof(text) - 1);
	if (n < 0)
		return false;
	text[n] = '\0';
	return strstr(text, what) != NULL;
}

/* HEAP_DIRS directories of HEAP_FILES / HEAP_DIRS empty files each, made in dir directly. */
static void make_tree(const char *dir)
{
	char path[PATH_MAX];
	for (int d = 0; d < HEAP_DIRS; d++) {
		assert_int_equal(mkdir(h_path(path, "%s/d%02d", dir, d), 0755), 0);
		for (int i = 0; i < HEAP_FILES / HEAP_DIRS; i++)
			assert_int_equal(
			    mknod(h_path(path, "%s/d%02d/file-%04d", dir, d, i), S_IFREG | 0644, 0),
			    0);
	}
}

/* What the kernel forgets is collected, with nothing else asked of the daemon: 40,000 files
 * are scanned through the view, the kernel drops its dentries and inodes (and sends FORGET
 * for each), and the idle daemon's live inode records and heap_used then fall far below
 * their peak. The files stay readable through the view afterwards (new records). */
static void heap_collects_forgotten_records(void **state)
{
	(void)state;
	struct h_fs *fs = mount_with("trace_gc");
	char path[PATH_MAX];
	make_tree(fs->backing);
	struct heap_view before = heap_read(fs->mnt);
	struct stat st;
	for (int d = 0; d < HEAP_DIRS; d++)
		for (int i = 0; i < HEAP_FILES / HEAP_DIRS; i++)
			assert_int_equal(
			    stat(h_path(path, "%s/d%02d/file-%04d", fs->mnt, d, i), &st), 0);
	struct heap_view peak = heap_read(fs->mnt);
	fprintf(stderr, "after the scan: %llu inodes, heap_used %llu\n",
		(unsigned long long)peak.inodes, (unsigned long long)peak.heap_used);
	assert_true(peak.inodes >= before.inodes + HEAP_FILES);
	assert_true(peak.scavenges > before.scavenges); /* 40,000 records outgrow the young space */
	assert_true(peak.promoted > 0);

	assert_int_equal(h_drop_dentries(), 0);
	struct heap_view now;
	double t0 = now_s();
	for (;;) {
		now = heap_read(fs->mnt);
		/* heap_total: the arena's pages beyond what the survivors need are given back. The
		 * idle collector counts its cycle once its last slice has returned, which may be
		 * after the figures show the work done (TSan run of 1859cd5): waited for too. */
		if (now.inodes < peak.inodes / 10 && now.heap_used < peak.heap_used / 2 &&
		    now.heap_total < peak.heap_total * 3 / 4 &&
		    now.collector_cycles > peak.collector_cycles)
			break;
		if ((now_s() - t0) * 1000 > WATCHDOG_MS)
			fail_msg(
			    "not collected: %llu of %llu inodes live, heap_used %llu of %llu, "
			    "heap_total %llu of %llu, %llu forgotten, %llu idle cycles (%llu "
			    "before)",
			    (unsigned long long)now.inodes, (unsigned long long)peak.inodes,
			    (unsigned long long)now.heap_used, (unsigned long long)peak.heap_used,
			    (unsigned long long)now.heap_total, (unsigned long long)peak.heap_total,
			    (unsigned long long)now.forgotten,
			    (unsigned long long)now.collector_cycles,
			    (unsigned long long)peak.collector_cycles);
		sleep_ms(POLL_MS);
	}
	fprintf(stderr,
		"%.1f s after the drop: %llu inodes, heap_used %llu, heap_total %llu (was %llu)\n",
		now_s() - t0, (unsigned long long)now.inodes, (unsigned long long)now.heap_used,
		(unsigned long long)now.heap_total, (unsigned long long)peak.heap_total);
	assert_true(now.forgotten >= peak.forgotten + HEAP_FILES * 9 / 10);
	assert_true(now.old_cycles > peak.old_cycles);
	/* ...and the idle collector did it: it was asked, and ran a cycle to the end (waited
	 * for above). */
	assert_true(now.collector_kicks > peak.collector_kicks);
	/* -o trace_gc: a line per collection, of each kind that ran. */
	assert_true(log_has(fs->log, "heap: scavenge"));
	assert_true(log_has(fs->log, "heap: mark-"));
	/* Forgotten is not lost: the files are found again. */
	assert_int_equal(stat(h_path(path, "%s/d07/file-0123", fs->mnt), &st), 0);
	assert_true(S_ISREG(st.st_mode));
	unmount(fs);
}

/* A full heap (max_old_space at its 1 MiB minimum, far too small for 40,000 records):
 * lookups that need a new record fail with ENOMEM and the log says so, at most a line a
 * second; the daemon goes on serving, and the records it has stay intact. Once the kernel
 * forgets, the room comes back and the refused files are found. */
static void full_heap_refuses_with_enomem(void **state)
{
	(void)state;
	struct h_fs *fs = mount_with("max_old_space=1M");
	char path[PATH_MAX];
	make_tree(fs->backing);
	struct stat st;
	static ino_t seen[HEAP_FILES]; /* 0: refused */
	unsigned refused = 0, found = 0, first_refused = HEAP_FILES;
	for (unsigned k = 0; k < HEAP_FILES; k++) {
		unsigned d = k / (HEAP_FILES / HEAP_DIRS), i = k % (HEAP_FILES / HEAP_DIRS);
		if (stat(h_path(path, "%s/d%02u/file-%04u", fs->mnt, d, i), &st) == 0) {
			seen[k] = st.st_ino;
			found++;
			continue;
		}
		assert_int_equal(errno, ENOMEM);
		seen[k] = 0;
		if (refused++ == 0)
			first_refused = k;
	}
	fprintf(stderr, "max_old_space=1M: %u found, %u refused (first: %u)\n", found, refused,
		first_refused);
	assert_true(refused > 0);
	assert_true(found > 1000);
	assert_true(log_has(fs->log, "metadata heap full"));
	/* Still serving, and what it remembers is intact: found files keep their inode. */
	assert_int_equal(stat(fs->mnt, &st), 0);
	for (unsigned k = 0; k < first_refused; k += 97) {
		unsigned d = k / (HEAP_FILES / HEAP_DIRS), i = k % (HEAP_FILES / HEAP_DIRS);
		assert_int_equal(stat(h_path(path, "%s/d%02u/file-%04u", fs->mnt, d, i), &st), 0);
		assert_int_equal(st.st_ino, seen[k]);
	}
	/* A listing of names is whole all the same: an entry that gets no record is listed
	 * without attributes, and only its use (a stat) is refused. */
	DIR *dir =
	    opendir(h_path(path, "%s/d%02u", fs->mnt, first_refused / (HEAP_FILES / HEAP_DIRS)));
	assert_non_null(dir);
	unsigned listed = 0;
	struct dirent *de;
	errno = 0;
	while ((de = readdir(dir)) != NULL)
		listed += de->d_name[0] != '.';
	assert_int_equal(errno, 0);
	assert_int_equal(closedir(dir), 0);
	assert_int_equal(listed, HEAP_FILES / HEAP_DIRS);
	/* Forgotten records make room: the file refused first is found after the kernel forgets
	 * (retried while the idle collector works). */
	assert_int_equal(h_drop_dentries(), 0);
	unsigned d = first_refused / (HEAP_FILES / HEAP_DIRS),
		 i = first_refused % (HEAP_FILES / HEAP_DIRS);
	h_path(path, "%s/d%02u/file-%04u", fs->mnt, d, i);
	double t0 = now_s();
	while (stat(path, &st) != 0) {
		assert_int_equal(errno, ENOMEM);
		assert_true((now_s() - t0) * 1000 < WATCHDOG_MS);
		sleep_ms(POLL_MS);
	}
	struct stat sb;
	assert_int_equal(
	    stat(h_path((char[PATH_MAX]){0}, "%s/d%02u/file-%04u", fs->backing, d, i), &sb), 0);
	assert_int_equal(st.st_ino, sb.st_ino);
	unmount(fs);
}

#define T(f) cmocka_unit_test_teardown(f, teardown)

int main(int argc, char **argv)
{
	const struct CMUnitTest attrs[] = {
	    T(progress_during_copy), T(progress_with_known_size),  T(expected_settable),
	    T(errors_by_name),	     T(config_refuses_bad_values), T(memory_agrees_with_proc),
	    T(rate_change_mid_copy), T(listxattr_hides_ours),	   T(cp_a_carries_none),
	    T(size_probe_then_read), T(top_shows_transfers),	   T(done_only_after_close),
	};
	/* The heap's tests scan 40,000 files each: meson runs them as their own test (e2e_heap,
	 * argument "heap"), beside the others rather than after them. */
	const struct CMUnitTest heap[] = {
	    T(heap_collects_forgotten_records),
	    T(full_heap_refuses_with_enomem),
	};
	if (argc > 1 && strcmp(argv[1], "heap") == 0)
		return cmocka_run_group_tests_name("heap", heap, NULL, NULL);
	return cmocka_run_group_tests_name("vattr", attrs, NULL, NULL);
}
