/*
 * test_model.c - a model checker: the view must behave exactly as a plain directory.
 *
 * For each seed, a deterministic random sequence of file operations (open with various flags,
 * write, pwrite, read, lseek, truncate, ftruncate, fallocate, rename, unlink, fsync, close, and
 * mmap: reads of a shared mapping, writes to it followed by msync) runs step by step on a
 * directory of the view and on a directory of the plain filesystem (the model: the kernel's own
 * behaviour). After every step the two must agree: the return value and errno of the call, the
 * bytes a read or a mapping returned, and then every name's existence, size and content. The
 * first disagreement fails the test with its seed and step, and MODEL_SEED=N replays one seed.
 *
 * Seeds cycle through four mounts (seed % 4): default options, rate=64M, buffer=64K with
 * max_buffer=1M, and file_rate=16M; a mount serves all seeds of its options, each seed in fresh
 * directories, so the outcome depends on the seed alone. MODEL_SEEDS sets how many seeds run
 * (default 36, a third of that when the daemon runs under a sanitizer), MODEL_STEPS the steps
 * per seed (default 250). The totals are printed at the end.
 *
 * It found two daemon bugs, both fixed: an open with O_TRUNC overtaken by data buffered from
 * another descriptor, and a stat that missed data drained between its two halves (a file
 * opened afresh right after a write read short).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "harness.h"

#define NAMES	 3
#define SLOTS	 4
#define MAX_LEN	 (96 << 10)
#define MAX_OFF	 (256 << 10)
#define MAX_FILE (1 << 20)

static const char *const mount_opts[4] = {NULL, "rate=64M", "buffer=64K,max_buffer=1M",
					  "file_rate=16M"};

/* One side of the comparison: a directory, and the descriptors open in it. */
struct side {
	char dir[PATH_MAX];
	int fd[SLOTS];
};

/* What a call did: its return value and errno, and the bytes it produced (reads, maps). */
struct result {
	long long ret;
	int err;
	size_t len;
	unsigned char *data;
};

struct rng {
	uint64_t s;
};

static uint64_t next(struct rng *r)
{
	r->s ^= r->s << 13;
	r->s ^= r->s >> 7;
	r->s ^= r->s << 17;
	return r->s;
}

static unsigned below(struct rng *r, unsigned n)
{
	return (unsigned)(next(r) % n);
}

/* One operation, its arguments drawn before it runs on either side. */
struct op {
	int kind;
	int slot, name, name2, flags, mode;
	off_t off, len;
	unsigned seed;
};

enum {
	OP_OPEN,
	OP_WRITE,
	OP_PWRITE,
	OP_READ,
	OP_LSEEK,
	OP_TRUNCATE,
	OP_FTRUNCATE,
	OP_FALLOCATE,
	OP_RENAME,
	OP_UNLINK,
	OP_FSYNC,
	OP_CLOSE,
	OP_MMAP_READ,
	OP_MMAP_WRITE,
	OP_KINDS
};

static const char *const op_names[OP_KINDS] = {
    "open",	 "write",  "pwrite", "read",  "lseek", "truncate",  "ftruncate",
    "fallocate", "rename", "unlink", "fsync", "close", "mmap-read", "mmap-write"};

static void draw(struct rng *r, struct op *o)
{
	static const int acc[] = {O_RDONLY, O_WRONLY, O_RDWR, O_RDWR};
	static const int modes[] = {0, FALLOC_FL_KEEP_SIZE,
				    FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE};
	memset(o, 0, sizeof(*o));
	o->kind = (int)below(r, OP_KINDS);
	if (below(r, 5) == 0)
		o->kind = OP_OPEN; /* opens more likely: most steps need a descriptor */
	o->slot = (int)below(r, SLOTS);
	o->name = (int)below(r, NAMES);
	o->name2 = (int)below(r, NAMES);
	o->flags = acc[below(r, 4)] | (below(r, 4) ? O_CREAT : 0) |
		   (below(r, 5) == 0 ? O_TRUNC : 0) | (below(r, 6) == 0 ? O_APPEND : 0);
	o->mode = modes[below(r, 3)];
	o->off = (off_t)below(r, MAX_OFF);
	o->len = (off_t)below(r, MAX_LEN) + 1;
	o->seed = (unsigned)next(r);
}

static void path_of(char buf[PATH_MAX], const struct side *s, int name)
{
	h_path(buf, "%s/f%d", s->dir, name);
}

/* Runs o on one side; res receives what it did. */
static void run(struct side *s, const struct op *o, struct result *res, unsigned char *buf)
{
	char p[PATH_MAX], q[PATH_MAX];
	int fd = s->fd[o->slot];
	long long r = 0;
	res->len = 0;
	res->data = buf;
	errno = 0;
	switch (o->kind) {
	case OP_OPEN:
		if (fd >= 0)
			close(fd);
		path_of(p, s, o->name);
		r = s->fd[o->slot] = open(p, o->flags | O_CLOEXEC, 0644);
		r = r >= 0 ? 0 : -1; /* descriptor numbers differ; success does not */
		break;
	case OP_WRITE:
		h_pat_fill(buf, (size_t)o->len, 0, o->seed);
		r = write(fd, buf, (size_t)o->len);
		break;
	case OP_PWRITE:
		h_pat_fill(buf, (size_t)o->len, (uint64_t)o->off, o->seed);
		r = pwrite(fd, buf, (size_t)o->len, o->off);
		break;
	case OP_READ:
		r = read(fd, buf, (size_t)o->len);
		res->len = r > 0 ? (size_t)r : 0;
		break;
	case OP_LSEEK:
		r = lseek(fd, o->off, SEEK_SET);
		break;
	case OP_TRUNCATE:
		path_of(p, s, o->name);
		r = truncate(p, o->off);
		break;
	case OP_FTRUNCATE:
		r = ftruncate(fd, o->off);
		break;
	case OP_FALLOCATE:
		r = fallocate(fd, o->mode, o->off, o->len);
		break;
	case OP_RENAME:
		path_of(p, s, o->name);
		path_of(q, s, o->name2);
		r = rename(p, q);
		break;
	case OP_UNLINK:
		path_of(p, s, o->name);
		r = unlink(p);
		break;
	case OP_FSYNC:
		r = fsync(fd);
		break;
	case OP_CLOSE:
		r = close(fd);
		if (fd >= 0)
			s->fd[o->slot] = -1;
		break;
	case OP_MMAP_READ:
	case OP_MMAP_WRITE: {
		struct stat st;
		if (fstat(fd, &st) != 0 || st.st_size == 0 || st.st_size > MAX_FILE) {
			r = fd < 0 ? -1 : 0;
			break;
		}
		bool w = o->kind == OP_MMAP_WRITE;
		size_t len = (size_t)st.st_size;
		unsigned char *m =
		    mmap(NULL, len, PROT_READ | (w ? PROT_WRITE : 0), MAP_SHARED, fd, 0);
		if (m == MAP_FAILED) {
			r = -1;
			break;
		}
		if (w) {
			size_t at = (size_t)o->off % len, n = (size_t)o->len;
			if (n > len - at)
				n = len - at;
			h_pat_fill(m + at, n, at, o->seed);
			r = msync(m, len, MS_SYNC);
		}
		memcpy(buf, m, len);
		res->len = len;
		int e = errno;
		if (munmap(m, len) != 0)
			r = -1;
		errno = e;
		break;
	}
	}
	res->ret = r;
	res->err = r < 0 ? errno : 0;
}

/* The bytes of name on side s into buf: its length, or -errno. */
static ssize_t content(const struct side *s, int name, unsigned char *buf)
{
	char p[PATH_MAX];
	path_of(p, s, name);
	return h_read_file(p, buf, MAX_FILE);
}

struct figures {
	long steps, seeds, ops[OP_KINDS];
};

/* Runs one seed; 0, or -1 after printing the first disagreement. */
static int run_seed(struct h_fs *fs, unsigned seed, int steps, struct figures *fig)
{
	static unsigned char ba[MAX_FILE + 1], bb[MAX_FILE + 1];
	struct side a = {.fd = {-1, -1, -1, -1}}, b = {.fd = {-1, -1, -1, -1}};
	h_path(a.dir, "%s/s%u", fs->mnt, seed);
	h_path(b.dir, "%s/s%u", fs->plain, seed);
	if (mkdir(a.dir, 0755) != 0 || mkdir(b.dir, 0755) != 0)
		return -1;
	struct rng r = {.s = 0x9E3779B97F4A7C15ull * (seed + 1)};
	int rc = 0;
	for (int step = 0; step < steps && rc == 0; step++) {
		struct op o;
		struct result ra, rb;
		draw(&r, &o);
		run(&a, &o, &ra, ba);
		run(&b, &o, &rb, bb);
		fig->ops[o.kind]++;
		fig->steps++;
		const char *what = NULL;
		if (ra.ret != rb.ret || ra.err != rb.err)
			what = "results";
		else if (ra.len != rb.len || memcmp(ra.data, rb.data, ra.len) != 0)
			what = "bytes returned";
		for (int n = 0; what == NULL && n < NAMES; n++) {
			ssize_t ca = content(&a, n, ba), cb = content(&b, n, bb);
			if (ca != cb || (ca > 0 && memcmp(ba, bb, (size_t)ca) != 0))
				what = "file contents";
			if (what != NULL)
				fprintf(stderr, "f%d: view %zd bytes, plain %zd\n", n, ca, cb);
		}
		if (what != NULL) {
			fprintf(
			    stderr,
			    "MODEL: seed %u (mount options '%s') step %d: %s(slot %d, f%d, f%d, "
			    "flags 0%o, mode %d, off %lld, len %lld): %s differ: view %lld "
			    "(%s), plain %lld (%s)\n",
			    seed, mount_opts[seed % 4] ? mount_opts[seed % 4] : "", step,
			    op_names[o.kind], o.slot, o.name, o.name2, o.flags, o.mode,
			    (long long)o.off, (long long)o.len, what, ra.ret, strerror(ra.err),
			    rb.ret, strerror(rb.err));
			rc = -1;
		}
	}
	for (int i = 0; i < SLOTS; i++) {
		if (a.fd[i] >= 0)
			close(a.fd[i]);
		if (b.fd[i] >= 0)
			close(b.fd[i]);
	}
	fig->seeds++;
	return rc;
}

static int env_int(const char *name, int def)
{
	const char *v = getenv(name);
	return v != NULL && atoi(v) > 0 ? atoi(v) : def;
}

static void test_model(void **state)
{
	struct figures fig = {0};
	int steps = env_int("MODEL_STEPS", 250);
	const char *one = getenv("MODEL_SEED");
	int failures = 0;
	for (int m = 0; m < 4 && failures == 0; m++) {
		struct h_fs *fs = h_fs_new();
		assert_non_null(fs);
		*state = fs;
		assert_int_equal(h_fs_mount(fs, mount_opts[m]), 0);
		int seeds = env_int("MODEL_SEEDS", h_sanitized(fs->pid) ? 12 : 36);
		for (unsigned seed = (unsigned)m; seed < (unsigned)seeds && failures == 0;
		     seed += 4) {
			if (one != NULL && *one != '\0' && (unsigned)atoi(one) != seed)
				continue;
			failures += run_seed(fs, seed, steps, &fig) != 0;
		}
		*state = NULL;
		assert_int_equal(h_fs_free(fs), 0);
	}
	fprintf(stderr, "model checker: %ld seeds, %ld steps:", fig.seeds, fig.steps);
	for (int k = 0; k < OP_KINDS; k++)
		fprintf(stderr, " %s %ld", op_names[k], fig.ops[k]);
	fprintf(stderr, "\n");
	assert_int_equal(failures, 0);
}

static int teardown(void **state)
{
	int rc = h_fs_free(*state);
	*state = NULL;
	return rc;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(test_model, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
