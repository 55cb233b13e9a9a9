/*
 * test_faults.c - the view when the world around it misbehaves (issue 7, faults).
 *
 *   - the backing dir changes behind the view's back while it is mounted (files rewritten,
 *     created, removed, renamed, chmodded directly in the backing dir): the view shows each
 *     change once its cached attributes and entries expire (1 s; the test polls, generously);
 *   - a writer whose backing file is unlinked directly in the backing dir keeps POSIX
 *     semantics: its writes and close succeed, the data lands in the unlinked inode (read
 *     through a descriptor taken before the unlink), and a new file of the same name, made
 *     through the view, is another file;
 *   - the daemon killed with SIGKILL in the middle of rate-limited copies: the writer in flight
 *     gets an error, never success; every file whose close(2) returned 0 before the kill is
 *     byte-identical in the store; the stale mount is removed with fusermount3 -u and a new
 *     mount on the same dirs works;
 *   - a graceful stop while copies are in flight: SIGTERM drains what writers handed over
 *     before the daemon exits (status 0); each writer either closed with 0 and its file is
 *     complete, or got an error and the store holds at least every byte write(2)
 *     acknowledged - never data dropped silently. fusermount3 -u, by contrast, is refused
 *     (EBUSY) while a file is open, and the copy goes on unharmed.
 *
 * Worker threads never call cmocka's assertions: they record what happened, and the test
 * thread asserts after joining them (with a watchdog, so a hang is a failure, not a stuck test).
 * Every file's bytes are h_pat_fill's pattern of its offset, so a prefix can be checked alone.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "harness.h"

#define KiB	    (1ull << 10)
#define MiB	    (1ull << 20)
#define WATCHDOG_MS 30000 /* a change to show, a writer to finish or fail, a daemon to exit */

/* ---- files ---- */

/* Size of path, or -errno. */
static long long size_or_err(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? (long long)st.st_size : -errno;
}

/* The length of the prefix of path (up to its size) that holds pattern seed, and its size;
 * -1 when it cannot be read. */
static long long pattern_prefix(const char *path, unsigned seed, long long *size)
{
	static unsigned char buf[1 << 20];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	long long off = 0;
	long long good = -2;
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0) {
			close(fd);
			return -1;
		}
		if (n == 0)
			break;
		ssize_t bad = h_pat_check(buf, (size_t)n, (uint64_t)off, seed);
		if (bad >= 0 && good == -2)
			good = off + bad;
		off += n;
	}
	close(fd);
	*size = off;
	return good == -2 ? off : good;
}

/* Requires path to hold exactly size bytes of pattern seed. */
static void expect_pattern(const char *path, uint64_t size, unsigned seed)
{
	long long got = 0;
	long long good = pattern_prefix(path, seed, &got);
	if (good != got || got != (long long)size)
		fprintf(stderr, "%s: %lld bytes (%lld of them right), expected %llu\n", path, got,
			good, (unsigned long long)size);
	assert_true(good == got && got == (long long)size);
}

/* Reads path into buf (NUL-terminated); the count or -errno. */
static ssize_t slurp(const char *path, char *buf, size_t cap)
{
	ssize_t n = h_read_file(path, buf, cap - 1);
	if (n >= 0)
		buf[n] = '\0';
	return n;
}

/* ---- polling: what the view shows, within its timeouts ---- */

/* Polls until path in the view reads want (NULL: until its name is gone: lstat says ENOENT,
 * the kernel's entry has expired; an open of it may fail with ENOENT a little earlier). */
static void poll_content(const char *path, const char *want)
{
	char buf[256];
	int64_t end = h_clock_ms() + WATCHDOG_MS;
	ssize_t n;
	struct stat st;
	for (;;) {
		n = want == NULL ? (lstat(path, &st) == 0 ? 0 : -errno)
				 : slurp(path, buf, sizeof(buf));
		if (want == NULL ? n == -ENOENT : n >= 0 && strcmp(buf, want) == 0)
			return;
		if (h_clock_ms() > end)
			break;
		h_nap_ms(50);
	}
	fprintf(stderr, "%s: still %zd '%s' after %d ms, expected '%s'\n", path, n,
		n >= 0 && want ? buf : "", WATCHDOG_MS, want ? want : "(gone)");
	fail();
}

/* Polls until stat(path) in the view gives mode bits mode. */
static void poll_mode(const char *path, mode_t mode)
{
	struct stat st = {0};
	int64_t end = h_clock_ms() + WATCHDOG_MS;
	while (stat(path, &st) != 0 || (st.st_mode & 07777) != mode) {
		if (h_clock_ms() > end) {
			fprintf(stderr, "%s: mode 0%o, expected 0%o\n", path, st.st_mode & 07777,
				mode);
			fail();
		}
		h_nap_ms(50);
	}
}

/* ---- fixtures ---- */

static int teardown(void **state)
{
	int rc = h_fs_free(*state);
	*state = NULL;
	return rc;
}

static struct h_fs *mounted(void **state, const char *opts)
{
	struct h_fs *fs = h_fs_new();
	assert_non_null(fs);
	*state = fs;
	assert_int_equal(h_fs_mount(fs, opts), 0);
	return fs;
}

/* ---- changes behind the view's back ---- */

static void test_backing_changes_show(void **state)
{
	struct h_fs *fs = mounted(state, NULL);
	const char *b = fs->backing, *m = fs->mnt;
	int faults = 0;

	assert_int_equal(h_write_file(H_AT(b, "f"), "one", 3), 0);
	assert_int_equal(mkdir(H_AT(b, "d"), 0755), 0);
	assert_int_equal(h_write_file(H_AT(b, "d/g"), "gee", 3), 0);
	poll_content(H_AT(m, "f"), "one");
	poll_content(H_AT(m, "d/g"), "gee");

	/* Rewritten in place with another size, and replaced by a new inode. */
	assert_int_equal(h_write_file(H_AT(b, "f"), "longer content", 14), 0);
	poll_content(H_AT(m, "f"), "longer content");
	faults++;
	assert_int_equal(h_write_file(H_AT(b, "f.new"), "replaced", 8), 0);
	assert_int_equal(rename(H_AT(b, "f.new"), H_AT(b, "f")), 0);
	poll_content(H_AT(m, "f"), "replaced");
	faults++;
	/* Created, renamed, removed, chmodded. */
	assert_int_equal(h_write_file(H_AT(b, "new"), "fresh", 5), 0);
	poll_content(H_AT(m, "new"), "fresh");
	faults++;
	assert_int_equal(rename(H_AT(b, "new"), H_AT(b, "d/moved")), 0);
	poll_content(H_AT(m, "new"), NULL);
	poll_content(H_AT(m, "d/moved"), "fresh");
	faults++;
	assert_int_equal(chmod(H_AT(b, "d/g"), 0600), 0);
	poll_mode(H_AT(m, "d/g"), 0600);
	faults++;
	assert_int_equal(unlink(H_AT(b, "d/g")), 0);
	poll_content(H_AT(m, "d/g"), NULL);
	faults++;
	/* A whole directory renamed and removed: its old entries go, its new name works. */
	assert_int_equal(rename(H_AT(b, "d"), H_AT(b, "e")), 0);
	poll_content(H_AT(m, "d/moved"), NULL);
	poll_content(H_AT(m, "e/moved"), "fresh");
	faults++;
	assert_int_equal(unlink(H_AT(b, "e/moved")), 0);
	assert_int_equal(rmdir(H_AT(b, "e")), 0);
	poll_content(H_AT(m, "e/moved"), NULL);
	faults++;
	/* A directory replaced by a file of the same name. */
	assert_int_equal(mkdir(H_AT(b, "x"), 0755), 0);
	poll_mode(H_AT(m, "x"), 0755);
	assert_int_equal(rmdir(H_AT(b, "x")), 0);
	assert_int_equal(h_write_file(H_AT(b, "x"), "now a file", 10), 0);
	poll_content(H_AT(m, "x"), "now a file");
	faults++;
	/* The view still works normally, and agrees with the backing dir. */
	assert_int_equal(h_write_file(H_AT(m, "through"), "view", 4), 0);
	assert_int_equal(h_tree_compare(m, b, H_CMP_ALL & ~H_CMP_ROOT, NULL), 0);
	fprintf(stderr, "faults tried: %d changes behind the view's back, each seen\n", faults);
}

/* A file open for reading in the view keeps reading its own inode when the name is replaced
 * behind its back (the daemon holds a descriptor of it, as a local filesystem would). */
static void test_open_reader_keeps_inode(void **state)
{
	struct h_fs *fs = mounted(state, NULL);
	char buf[64];
	assert_int_equal(h_write_file(H_AT(fs->backing, "r"), "original", 8), 0);
	int fd = open(H_AT(fs->mnt, "r"), O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(unlink(H_AT(fs->backing, "r")), 0);
	assert_int_equal(h_write_file(H_AT(fs->backing, "r"), "impostor", 8), 0);
	ssize_t n = pread(fd, buf, sizeof(buf), 0);
	assert_int_equal(n, 8);
	assert_memory_equal(buf, "original", 8);
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_size, 8);
	assert_int_equal(close(fd), 0);
	poll_content(H_AT(fs->mnt, "r"), "impostor");
}

/* ---- a writer whose backing file is unlinked ---- */

static void test_unlinked_writer(void **state)
{
	/* Rate-limited, so data is still buffered in the daemon when the name goes. */
	struct h_fs *fs = mounted(state, "rate=4M");
	const uint64_t half = 1 * MiB;
	unsigned char *buf = malloc(half);
	assert_non_null(buf);
	int w = open(H_AT(fs->mnt, "w"), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(w >= 0);
	h_pat_fill(buf, half, 0, 7);
	assert_int_equal(write(w, buf, half), (ssize_t)half);
	/* A descriptor of the backing inode, then its name goes, behind the view's back. */
	int keep = open(H_AT(fs->backing, "w"), O_RDONLY | O_CLOEXEC);
	assert_true(keep >= 0);
	assert_int_equal(unlink(H_AT(fs->backing, "w")), 0);
	h_pat_fill(buf, half, half, 7);
	assert_int_equal(write(w, buf, half), (ssize_t)half);
	/* The view learns that the name is gone (while the writer still has it open)... */
	poll_content(H_AT(fs->mnt, "w"), NULL);
	/* ...and a new file of that name, made through the view, is another file. */
	assert_int_equal(h_write_file(H_AT(fs->mnt, "w"), "second", 6), 0);
	struct stat sw, sn;
	assert_int_equal(fstat(w, &sw), 0);
	assert_int_equal(stat(H_AT(fs->mnt, "w"), &sn), 0);
	assert_true(sw.st_ino != sn.st_ino);
	assert_int_equal(sw.st_size, 2 * half);
	assert_int_equal(sn.st_size, 6);
	/* The writer goes on and closes without an error. */
	assert_int_equal(pwrite(w, "tail", 4, (off_t)(2 * half)), 4);
	assert_int_equal(fsync(w), 0);
	assert_int_equal(close(w), 0);
	/* Every byte reached the unlinked inode; the new name holds only its own. */
	unsigned char *got = malloc(2 * half + 4);
	assert_non_null(got);
	assert_int_equal(pread(keep, got, 2 * half + 4, 0), (ssize_t)(2 * half + 4));
	assert_int_equal(h_pat_check(got, 2 * half, 0, 7), -1);
	assert_memory_equal(got + 2 * half, "tail", 4);
	assert_int_equal(close(keep), 0);
	char text[64];
	assert_int_equal(slurp(H_AT(fs->backing, "w"), text, sizeof(text)), 6);
	assert_string_equal(text, "second");
	assert_int_equal(slurp(H_AT(fs->mnt, "w"), text, sizeof(text)), 6);
	assert_string_equal(text, "second");
	free(got);
	free(buf);
}

/* ---- writers in flight when the daemon goes ---- */

/* One file written chunk by chunk; what the writer saw. */
struct writer {
	char path[PATH_MAX];
	unsigned seed;
	uint64_t size;
	size_t chunk;
	atomic_ullong acked; /* bytes write(2) accepted */
	int write_err;	     /* errno of the failed write, else 0 */
	int close_rc, close_err;
	atomic_bool done;
	pthread_t thread;
};

static void *writer_run(void *arg)
{
	struct writer *w = arg;
	unsigned char *buf = malloc(w->chunk);
	int fd = buf ? open(w->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : -1;
	if (fd < 0) {
		w->write_err = buf ? errno : ENOMEM;
		w->close_rc = -1;
		goto out;
	}
	for (uint64_t off = 0; off < w->size;) {
		size_t n = w->size - off < w->chunk ? (size_t)(w->size - off) : w->chunk;
		h_pat_fill(buf, n, off, w->seed);
		ssize_t r = write(fd, buf, n);
		if (r <= 0) {
			w->write_err = r < 0 ? errno : EIO;
			break;
		}
		off += (uint64_t)r;
		atomic_store(&w->acked, off);
	}
	w->close_rc = close(fd);
	w->close_err = w->close_rc != 0 ? errno : 0;
out:
	free(buf);
	atomic_store(&w->done, true);
	return NULL;
}

static void writer_start(struct writer *w, const char *path, unsigned seed, uint64_t size,
			 size_t chunk)
{
	memset(w, 0, sizeof(*w));
	h_path(w->path, "%s", path);
	w->seed = seed;
	w->size = size;
	w->chunk = chunk;
	assert_int_equal(pthread_create(&w->thread, NULL, writer_run, w), 0);
}

/* Joins a thread that must end within the watchdog. */
static void join_within(pthread_t t, atomic_bool *done, const char *what)
{
	int64_t end = h_clock_ms() + WATCHDOG_MS;
	while (!atomic_load(done)) {
		if (h_clock_ms() > end) {
			/* A writer stuck in the kernel: leave it; the process exit ends it. */
			fprintf(stderr, "%s still blocked after %d ms\n", what, WATCHDOG_MS);
			fail();
		}
		h_nap_ms(10);
	}
	assert_int_equal(pthread_join(t, NULL), 0);
}

/* Whether the writer reported success for the whole file. */
static bool writer_ok(const struct writer *w)
{
	return w->write_err == 0 && w->close_rc == 0;
}

/* Writers of many small files: each file's close(2) verdict is kept. */
#define SMALL_SIZE  (128 * KiB)
#define SMALL_FILES 512

struct smalls {
	char dir[PATH_MAX];
	unsigned id;
	int closed_ok[SMALL_FILES]; /* 1: close returned 0 (and every write succeeded) */
	atomic_int count;	    /* files attempted */
	atomic_int ok;		    /* files whose close returned 0 */
	atomic_bool done;
	pthread_t thread;
};

static void small_name(char buf[PATH_MAX], const char *dir, unsigned id, int k)
{
	h_path(buf, "%s/s%u_%03d", dir, id, k);
}

static void *smalls_run(void *arg)
{
	struct smalls *s = arg;
	static _Thread_local unsigned char buf[SMALL_SIZE];
	for (int k = 0; k < SMALL_FILES; k++) {
		char path[PATH_MAX];
		small_name(path, s->dir, s->id, k);
		unsigned seed = s->id * 1000 + (unsigned)k;
		h_pat_fill(buf, sizeof(buf), 0, seed);
		atomic_store(&s->count, k + 1);
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0)
			break;
		bool good = write(fd, buf, sizeof(buf)) == (ssize_t)sizeof(buf);
		good = close(fd) == 0 && good;
		s->closed_ok[k] = good;
		if (!good)
			break;
		atomic_fetch_add(&s->ok, 1);
	}
	atomic_store(&s->done, true);
	return NULL;
}

/* Waits until path in the store holds at least bytes, within the watchdog. */
static void wait_store_size(const char *path, long long bytes)
{
	int64_t end = h_clock_ms() + WATCHDOG_MS;
	while (size_or_err(path) < bytes) {
		if (h_clock_ms() > end) {
			fprintf(stderr, "%s: %lld bytes in the store, waited for %lld\n", path,
				size_or_err(path), bytes);
			fail();
		}
		h_nap_ms(10);
	}
}

/* A mount left by a dead daemon is removed with fusermount3 -u; then the same dirs mount
 * again and serve the files the store holds. */
static void remount_works(struct h_fs *fs, const char *probe, unsigned seed, uint64_t size)
{
	if (h_is_mounted(fs->mnt))
		assert_int_equal(h_run("fusermount3 -u '%s'", fs->mnt), 0);
	assert_false(h_is_mounted(fs->mnt));
	assert_int_equal(h_fs_mount(fs, NULL), 0);
	if (probe != NULL)
		expect_pattern(H_AT(fs->mnt, probe), size, seed);
	assert_int_equal(h_write_file(H_AT(fs->mnt, "after"), "again", 5), 0);
	char text[16];
	assert_int_equal(slurp(H_AT(fs->backing, "after"), text, sizeof(text)), 5);
}

static void test_sigkill_mid_copy(void **state)
{
	struct h_fs *fs = mounted(state, "rate=4M");
	struct writer big;
	struct smalls sm[3];
	writer_start(&big, H_AT(fs->mnt, "big"), 99, 64 * MiB, 1 * MiB);
	for (unsigned i = 0; i < 3; i++) {
		memset(&sm[i], 0, sizeof(sm[i]));
		h_path(sm[i].dir, "%s", fs->mnt);
		sm[i].id = i;
		assert_int_equal(pthread_create(&sm[i].thread, NULL, smalls_run, &sm[i]), 0);
	}
	/* Mid-way: the big file partly in the store, some small files closed. */
	wait_store_size(H_AT(fs->backing, "big"), (long long)(2 * MiB));
	int64_t end = h_clock_ms() + WATCHDOG_MS;
	while (atomic_load(&sm[0].ok) + atomic_load(&sm[1].ok) + atomic_load(&sm[2].ok) < 3 &&
	       h_clock_ms() < end)
		h_nap_ms(10);
	assert_int_equal(kill(fs->pid, SIGKILL), 0);
	int st = 0;
	assert_int_equal(h_fs_reap(fs, WATCHDOG_MS, &st), 0);
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);

	join_within(big.thread, &big.done, "the big writer");
	for (unsigned i = 0; i < 3; i++)
		join_within(sm[i].thread, &sm[i].done, "a small-file writer");
	/* The writer in flight learned of the failure. */
	fprintf(stderr,
		"big writer: %llu bytes acknowledged, write errno %d, close %d (errno %d)\n",
		(unsigned long long)atomic_load(&big.acked), big.write_err, big.close_rc,
		big.close_err);
	assert_false(writer_ok(&big));
	/* What reached the store of it is its beginning, never other bytes. */
	long long size = 0, good = pattern_prefix(H_AT(fs->backing, "big"), 99, &size);
	assert_true(good == size && size >= (long long)(2 * MiB));
	/* Every file whose close returned 0 is whole in the store. */
	int checked = 0;
	for (unsigned i = 0; i < 3; i++) {
		for (int k = 0; k < atomic_load(&sm[i].count); k++) {
			if (!sm[i].closed_ok[k])
				continue;
			char path[PATH_MAX];
			small_name(path, fs->backing, i, k);
			expect_pattern(path, SMALL_SIZE, i * 1000 + (unsigned)k);
			checked++;
		}
	}
	assert_true(checked >= 3);
	fprintf(stderr, "after SIGKILL: %d closed files whole in the store, big file %lld bytes\n",
		checked, size);
	/* The stale mount answers ENOTCONN until removed; then the dirs mount again. */
	struct stat sb;
	H_EXPECT_ERRNO(stat(H_AT(fs->mnt, "big"), &sb), ENOTCONN);
	char first[PATH_MAX];
	small_name(first, "", 0, 0);
	remount_works(fs, first + 1, 0, SMALL_SIZE);
}

static const char *const wname[] = {"a", "b", "c", "d"};

/* Four rate-limited copies in flight; SIGTERM. The daemon drains and exits with status 0. */
static void test_sigterm_mid_copies(void **state)
{
	struct h_fs *fs = mounted(state, "rate=8M");
	enum { N = 4 };
	struct writer w[N];
	for (unsigned i = 0; i < N; i++)
		writer_start(&w[i], H_AT(fs->mnt, wname[i]), 40 + i, 6 * MiB, 256 * KiB);
	for (unsigned i = 0; i < N; i++)
		wait_store_size(H_AT(fs->backing, wname[i]), 1);
	uint64_t acked_at_stop[N];
	for (unsigned i = 0; i < N; i++)
		acked_at_stop[i] = atomic_load(&w[i].acked);
	assert_int_equal(kill(fs->pid, SIGTERM), 0);
	assert_int_equal(h_fs_wait_exit(fs, WATCHDOG_MS), 0);
	int completed = 0, failed = 0;
	for (unsigned i = 0; i < N; i++) {
		join_within(w[i].thread, &w[i].done, "a writer");
		const char *path = H_AT(fs->backing, wname[i]);
		uint64_t acked = atomic_load(&w[i].acked);
		long long size = 0, good = pattern_prefix(path, w[i].seed, &size);
		fprintf(stderr,
			"writer %u: %llu bytes acknowledged (%llu at SIGTERM), write errno %d, "
			"close %d (errno %d); store has %lld\n",
			i, (unsigned long long)acked, (unsigned long long)acked_at_stop[i],
			w[i].write_err, w[i].close_rc, w[i].close_err, size);
		assert_true(good == size); /* only the file's own bytes, in place */
		if (writer_ok(&w[i])) {
			expect_pattern(path, w[i].size, w[i].seed);
			completed++;
		} else {
			/* An error, and nothing acknowledged was dropped. */
			assert_true(size >= (long long)acked);
			failed++;
		}
	}
	fprintf(stderr, "SIGTERM: %d copies completed, %d got an error, none lost data\n",
		completed, failed);
	assert_false(h_is_mounted(fs->mnt));
	remount_works(fs, writer_ok(&w[0]) ? "a" : NULL, w[0].seed, w[0].size);
}

/* fusermount3 -u is refused while a copy is open (its data still buffered: rate-limited), and
 * the copy goes on unharmed; after its close the unmount works and the file is whole. */
static void test_unmount_busy_copy(void **state)
{
	struct h_fs *fs = mounted(state, "rate=2M");
	const size_t half = 2 * MiB;
	unsigned char *buf = malloc(half);
	assert_non_null(buf);
	int fd = open(H_AT(fs->mnt, "copy"), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	h_pat_fill(buf, half, 0, 5);
	assert_int_equal(write(fd, buf, half), (ssize_t)half);
	int rc = h_run("fusermount3 -u '%s' 2>&1", fs->mnt);
	assert_true(rc != 0);
	assert_true(h_is_mounted(fs->mnt));
	h_pat_fill(buf, half, half, 5);
	assert_int_equal(write(fd, buf, half), (ssize_t)half);
	assert_int_equal(close(fd), 0);
	free(buf);
	assert_int_equal(h_fs_unmount(fs), 0);
	expect_pattern(H_AT(fs->backing, "copy"), 2 * half, 5);
}

#define T(f) cmocka_unit_test_teardown(f, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    T(test_backing_changes_show), T(test_open_reader_keeps_inode),
	    T(test_unlinked_writer),	  T(test_sigkill_mid_copy),
	    T(test_sigterm_mid_copies),	  T(test_unmount_busy_copy),
	};
	const char *only = getenv("FAULTS_TEST");
	if (only != NULL && *only != '\0')
		cmocka_set_test_filter(only);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
