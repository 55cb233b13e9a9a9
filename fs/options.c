/*
 * options.c - the table of throttlefs's own options.
 *
 * Every option is a row of one table: its name, what kind of value it takes, its default and
 * its bounds. The same rows parse the command line, print --help and fill
 * user.throttlefs.config, so the three can never disagree. Values are checked here, before
 * anything is mounted: a bad value is a one-line error and exit status 2, never a surprise
 * budget at run time.
 */
#include "options.h"

#include <errno.h>
#include <fuse_opt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json.h"
#include "size.h"

enum opt_kind { OPT_SIZE, OPT_RATE, OPT_FLAG };

struct opt_row {
	const char *name;
	enum opt_kind kind;
	size_t offset;
	uint64_t def, min, max;
	const char *help;
};

#define KiB (1ull << 10)
#define MiB (1ull << 20)
#define GiB (1ull << 30)
#define TiB (1ull << 40)

static const struct opt_row rows[] = {
    {"rate", OPT_RATE, offsetof(struct tfs_options, rate), 0, 0, TiB,
     "total write rate into the backing store, bytes/s (0: unlimited)"},
    {"file_rate", OPT_RATE, offsetof(struct tfs_options, file_rate), 0, 0, TiB,
     "write rate of each file, bytes/s (0: unlimited)"},
    {"buffer", OPT_SIZE, offsetof(struct tfs_options, buffer), 4 * MiB, 64 * KiB, 64 * GiB,
     "a file's high-water mark: writers wait when this much is unwritten"},
    {"max_buffer", OPT_SIZE, offsetof(struct tfs_options, max_buffer), 32 * MiB, 1 * MiB, 64 * GiB,
     "budget for all stream buffers together"},
    {"max_semi_space", OPT_SIZE, offsetof(struct tfs_options, max_semi_space), 8 * MiB, 64 * KiB,
     4 * GiB, "metadata heap: size of one young semi-space"},
    {"max_old_space", OPT_SIZE, offsetof(struct tfs_options, max_old_space), 256 * MiB, 1 * MiB,
     64 * GiB, "metadata heap: size limit of the old space"},
    {"trace_gc", OPT_FLAG, offsetof(struct tfs_options, trace_gc), 0, 0, 1,
     "log one line per heap collection"},
    {"keep_cache", OPT_FLAG, offsetof(struct tfs_options, keep_cache), 0, 0, 1,
     "leave written data in the store's page cache (default: drop it once on the device)"},
    {"direct_write", OPT_FLAG, offsetof(struct tfs_options, direct_write), 0, 0, 1,
     "write big files to a local disk with O_DIRECT: less CPU, but slower on fast devices"},
};

#define NROWS (sizeof(rows) / sizeof(rows[0]))

static uint64_t *field(struct tfs_options *o, const struct opt_row *r)
{
	return (uint64_t *)((char *)o + r->offset);
}

static const char *kind_hint(enum opt_kind k)
{
	return k == OPT_RATE ? "bytes per second with an optional K, M, G suffix, e.g. 15M"
			     : "bytes with an optional K, M, G suffix, e.g. 4M";
}

static const struct opt_row *row_named(const char *name, size_t len)
{
	for (size_t i = 0; i < NROWS; i++)
		if (strlen(rows[i].name) == len && strncmp(rows[i].name, name, len) == 0)
			return &rows[i];
	return NULL;
}

/* Checks value against row r: 0, -EINVAL when malformed, -ERANGE when out of bounds. */
static int row_value(const struct opt_row *r, const char *value, uint64_t *out)
{
	uint64_t x;
	int err = size_parse(value, &x);
	if (err == -EINVAL)
		return err;
	if (err != 0 || x > r->max || (x < r->min && !(r->kind == OPT_RATE && x == 0)))
		return -ERANGE;
	*out = x;
	return 0;
}

int opts_value(const char *name, const char *value, uint64_t *out)
{
	const struct opt_row *r = row_named(name, strlen(name));
	if (r == NULL || r->kind == OPT_FLAG)
		return -ENOENT;
	return row_value(r, value, out);
}

/* Parses "name=value" or "flag" for a known row. Returns 1 when arg is not ours, 0 when
 * parsed, -1 on a bad value (reported). */
static int parse_row(struct tfs_options *o, const char *arg)
{
	const char *eq = strchr(arg, '=');
	const struct opt_row *r = row_named(arg, eq ? (size_t)(eq - arg) : strlen(arg));
	if (r == NULL)
		return 1;
	if (r->kind == OPT_FLAG) {
		if (eq != NULL) {
			fprintf(stderr, "throttlefs: -o %s takes no value\n", r->name);
			return -1;
		}
		*field(o, r) = 1;
		return 0;
	}
	if (eq == NULL) {
		fprintf(stderr, "throttlefs: -o %s needs a value: want %s\n", r->name,
			kind_hint(r->kind));
		return -1;
	}
	const char *v = eq + 1;
	int err = row_value(r, v, field(o, r));
	char lo[32], hi[32];
	if (err == -EINVAL)
		fprintf(stderr, "throttlefs: bad value '%s' for -o %s: want %s\n", v, r->name,
			kind_hint(r->kind));
	else if (err != 0)
		fprintf(stderr, "throttlefs: -o %s=%s is out of range (%s to %s)\n", r->name, v,
			size_format(r->min, lo, sizeof(lo)), size_format(r->max, hi, sizeof(hi)));
	return err == 0 ? 0 : -1;
}

struct parse_ctx {
	struct tfs_options *o;
	int nonopts;
	int failed;
};

static int parse_one(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct parse_ctx *c = data;
	(void)outargs;
	if (c->failed)
		return 1;
	switch (key) {
	case FUSE_OPT_KEY_OPT:
		if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
			c->o->show_help = 1;
			return 0;
		}
		if (strcmp(arg, "-V") == 0 || strcmp(arg, "--version") == 0) {
			c->o->show_version = 1;
			return 0;
		}
		int r = parse_row(c->o, arg);
		if (r < 0)
			c->failed = 1;
		return r < 0 ? 0 : r;
	case FUSE_OPT_KEY_NONOPT:
		c->nonopts++;
		if (c->nonopts == 1) {
			c->o->backing = strdup(arg);
			if (c->o->backing == NULL) {
				fprintf(stderr, "throttlefs: out of memory\n");
				c->failed = 1;
			}
			return 0;
		}
		if (c->nonopts == 2)
			return 1; /* MOUNTPOINT: libfuse's */
		fprintf(stderr,
			"throttlefs: unexpected argument '%s' (usage: throttlefs [options] "
			"BACKING_DIR MOUNTPOINT)\n",
			arg);
		c->failed = 1;
		return 0;
	default:
		return 1;
	}
}

int opts_parse(struct fuse_args *args, struct tfs_options *o)
{
	memset(o, 0, sizeof(*o));
	for (size_t i = 0; i < NROWS; i++)
		*field(o, &rows[i]) = rows[i].def;
	struct parse_ctx c = {.o = o};
	if (fuse_opt_parse(args, &c, NULL, parse_one) != 0) {
		fprintf(stderr, "throttlefs: cannot parse the command line\n");
		return -1;
	}
	if (c.failed)
		return -1;
	if (o->show_help || o->show_version)
		return 0;
	if (o->buffer > o->max_buffer) {
		char b[32], m[32];
		fprintf(stderr, "throttlefs: -o buffer=%s is larger than -o max_buffer=%s\n",
			size_format(o->buffer, b, sizeof(b)),
			size_format(o->max_buffer, m, sizeof(m)));
		return -1;
	}
	if (o->keep_cache && o->direct_write) {
		fprintf(stderr, "throttlefs: -o direct_write and -o keep_cache exclude each other "
				"(direct writes leave nothing in the page cache)\n");
		return -1;
	}
	if (c.nonopts < 2) {
		fprintf(stderr,
			"throttlefs: missing %s (usage: throttlefs [options] BACKING_DIR "
			"MOUNTPOINT)\n",
			c.nonopts == 0 ? "BACKING_DIR and MOUNTPOINT" : "MOUNTPOINT");
		return -1;
	}
	return 0;
}

/* Is path a directory we can use? Prints the problem when not. */
static int check_dir(const char *what, const char *path, int need_read)
{
	struct stat st;
	if (stat(path, &st) != 0) {
		fprintf(stderr, "throttlefs: %s '%s': %s\n", what, path, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		fprintf(stderr, "throttlefs: %s '%s' is not a directory\n", what, path);
		return -1;
	}
	if (need_read && access(path, R_OK | X_OK) != 0) {
		fprintf(stderr, "throttlefs: %s '%s' is not readable: %s\n", what, path,
			strerror(errno));
		return -1;
	}
	return 0;
}

int opts_check_paths(struct tfs_options *o, const char *mountpoint)
{
	if (check_dir("backing dir", o->backing, 1) != 0 ||
	    check_dir("mountpoint", mountpoint, 0) != 0)
		return -1;
	char mnt[PATH_MAX];
	o->backing_real = realpath(o->backing, NULL);
	if (o->backing_real == NULL || realpath(mountpoint, mnt) == NULL) {
		fprintf(stderr, "throttlefs: cannot resolve '%s' or '%s': %s\n", o->backing,
			mountpoint, strerror(errno));
		return -1;
	}
	size_t n = strlen(o->backing_real);
	if (strcmp(o->backing_real, "/") == 0 || strcmp(mnt, o->backing_real) == 0 ||
	    (strncmp(mnt, o->backing_real, n) == 0 && mnt[n] == '/')) {
		fprintf(stderr,
			"throttlefs: mountpoint '%s' is inside backing dir '%s': the view would "
			"contain itself\n",
			mountpoint, o->backing);
		return -1;
	}
	return 0;
}

void opts_help(void)
{
	printf("throttlefs options (-o name=value; sizes and rates take K, M, G, T = 1024^n):\n");
	for (size_t i = 0; i < NROWS; i++) {
		char d[32], name[48];
		snprintf(name, sizeof(name), "%s%s", rows[i].name,
			 rows[i].kind == OPT_FLAG ? "" : "=N");
		printf("    -o %-20s %s (default: %s)\n", name, rows[i].help,
		       rows[i].kind == OPT_FLAG ? "off" : size_format(rows[i].def, d, sizeof(d)));
	}
}

void opts_json(const struct tfs_options *o, struct json *j)
{
	json_begin_object(j);
	for (size_t i = 0; i < NROWS; i++) {
		uint64_t v = *(const uint64_t *)((const char *)o + rows[i].offset);
		if (rows[i].kind == OPT_FLAG) {
			json_key(j, rows[i].name);
			json_bool(j, v != 0);
		} else {
			json_field_u64(j, rows[i].name, v);
		}
	}
	json_key(j, "backing");
	json_string(j, o->backing_real ? o->backing_real : "");
	json_end_object(j);
}

void opts_free(struct tfs_options *o)
{
	free(o->backing);
	free(o->backing_real);
}
