/*
 * options.h - throttlefs's own -o options: one table that parses them, validates them, prints
 * them in --help, and reports the effective values (user.throttlefs.config).
 */
#ifndef THROTTLEFS_OPTIONS_H
#define THROTTLEFS_OPTIONS_H

#include <stddef.h>
#include <stdint.h>

struct fuse_args;
struct json;

struct tfs_options {
	uint64_t rate;		 /* bytes/s into the backing store, all files; 0: unlimited */
	uint64_t file_rate;	 /* bytes/s per file; 0: unlimited */
	uint64_t buffer;	 /* a file's high-water mark */
	uint64_t max_buffer;	 /* budget for all stream buffers */
	uint64_t max_semi_space; /* metadata heap: young semi-space */
	uint64_t max_old_space;	 /* metadata heap: old space */
	uint64_t trace_gc;	 /* flag: one log line per collection */
	uint64_t keep_cache;	 /* flag: no write-behind (stream_config.keep_cache) */
	uint64_t direct_write;	 /* flag: big files go O_DIRECT (stream_config.direct_from) */
	char *backing;		 /* as given */
	char *backing_real;	 /* realpath of backing */
	int show_help, show_version;
};

/* Parses and removes throttlefs's own options and BACKING_DIR from args, leaving what libfuse
 * parses (-f, -d, -s, MOUNTPOINT, FUSE -o options). Prints one line naming the problem and
 * returns -1 on bad input; returns 0 otherwise. */
int opts_parse(struct fuse_args *args, struct tfs_options *o);

/* Checks BACKING_DIR and MOUNTPOINT: both directories, the mountpoint not inside the backing
 * dir. Prints one line and returns -1 when they are not usable. */
int opts_check_paths(struct tfs_options *o, const char *mountpoint);

/* Parses value for the size or rate option name by the same rules as the command line (for
 * changes at run time). Returns 0, -EINVAL when malformed, -ERANGE when out of range, or
 * -ENOENT when name is no such option. */
int opts_value(const char *name, const char *value, uint64_t *out);

/* Prints the option list with defaults, for --help. */
void opts_help(void);

/* Appends the effective options to j as one JSON object (the backing path escaped). */
void opts_json(const struct tfs_options *o, struct json *j);

void opts_free(struct tfs_options *o);

#endif
