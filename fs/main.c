/*
 * main.c - throttlefs [options] BACKING_DIR MOUNTPOINT
 *
 * Parses and checks the command line before anything is mounted (a bad input is one line on
 * stderr and exit status 2), opens the backing root, mounts, runs libfuse's multi-threaded
 * loop until unmounted or signalled (SIGINT, SIGTERM, SIGHUP unmount cleanly), then tears
 * down in the reverse order.
 */
#include "tfs.h"
#include "loop.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/magic.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#define EXIT_USAGE 2

/* Directory descriptors kept for fast lookups: far below the 20,000 open-file limit, so that
 * nearly all of it stays for open files. */
#define TFS_DIR_CACHE 1024

static void usage(const char *prog)
{
	printf("usage: %s [options] BACKING_DIR MOUNTPOINT\n\n"
	       "Mounts at MOUNTPOINT a view of BACKING_DIR in which every write streams through\n"
	       "bounded buffers, with backpressure, to BACKING_DIR at the rate you set.\n\n",
	       prog);
	opts_help();
	printf(
	    "\nWhen run by an ordinary user, files created through the view belong to that user, "
	    "as for\nany FUSE mount. Run as root with -o allow_other, it acts for each caller with "
	    "the\ncaller's credentials, and writes each file's data with its writer's.\n\n"
	    "throttlefs runs at most %d worker threads unless -o max_threads says otherwise "
	    "(libfuse's\nown default, shown below, is 10).\n\n",
	    TFS_MAX_THREADS);
	printf("FUSE options:\n");
	fuse_cmdline_help();
	fuse_lowlevel_help();
}

/* Is option name among the -o options in args? */
static int has_mount_opt(const struct fuse_args *args, const char *name)
{
	size_t n = strlen(name);
	for (int i = 1; i < args->argc; i++) {
		const char *a = args->argv[i];
		if (strncmp(a, "-o", 2) == 0)
			a += 2;
		else if (i > 1 && strcmp(args->argv[i - 1], "-o") == 0)
			; /* the value of a separate -o */
		else
			continue;
		for (const char *p = a; (p = strstr(p, name)) != NULL; p += n)
			if ((p == a || p[-1] == ',') && (p[n] == '\0' || p[n] == ','))
				return 1;
	}
	return 0;
}

/* Adds the -o options throttlefs always wants; the user's own come later and win. */
static int add_default_opts(struct fuse_args *args, const struct tfs_options *o)
{
	char opts[2 * PATH_MAX + 128] = "-ofsname=";
	size_t n = strlen(opts);
	/* The backing path names the mount in /proc/mounts; commas and backslashes in it are
	 * escaped, as libfuse's option parser expects. */
	for (const char *p = o->backing_real; *p != '\0' && n + 2 < sizeof(opts) - 128; p++) {
		if (*p == ',' || *p == '\\')
			opts[n++] = '\\';
		opts[n++] = *p;
	}
	opts[n] = '\0';
	/* libfuse's default of 10 threads is too few when writers wait and others must not;
	 * TFS_MAX_THREADS bounds what their receive buffers hold (tfs.h). max_read caps reads
	 * at TFS_MAX_READ as max_write (ops.c) caps writes. With allow_other the kernel checks
	 * permissions itself (default_permissions), so that nobody reaches through the view what
	 * the store's modes deny them; without it only the mounting user gets in, and the backing
	 * store's own checks, made as that user, suffice (and spare a GETATTR of the directory
	 * after every change in it). */
	snprintf(opts + n, sizeof(opts) - n, ",subtype=throttlefs,max_threads=%d,max_read=%u%s",
		 TFS_MAX_THREADS, TFS_MAX_READ,
		 has_mount_opt(args, "allow_other") ? ",default_permissions" : "");
	return fuse_opt_insert_arg(args, 1, opts);
}

/* The max_read mount option in force: the last one given (ours comes first, see
 * add_default_opts). libfuse wants the filesystem's init to state the same value. */
static unsigned mount_max_read(const struct fuse_args *args)
{
	static const struct fuse_opt spec[] = {{"max_read=%u", 0, 0}, FUSE_OPT_END};
	struct fuse_args copy = FUSE_ARGS_INIT(0, NULL);
	unsigned v = TFS_MAX_READ;
	for (int i = 0; i < args->argc; i++)
		if (fuse_opt_add_arg(&copy, args->argv[i]) != 0)
			goto out;
	if (fuse_opt_parse(&copy, &v, spec, NULL) != 0)
		v = TFS_MAX_READ;
out:
	fuse_opt_free_args(&copy);
	return v;
}

/* Decodes the octal escapes (\040 for a space...) of a /proc/self/mountinfo field in place. */
static void mountinfo_unescape(char *s)
{
	char *w = s;
	for (char *r = s; *r != '\0'; r++) {
		if (r[0] == '\\' && r[1] >= '0' && r[1] <= '7' && r[2] >= '0' && r[2] <= '7' &&
		    r[3] >= '0' && r[3] <= '7') {
			*w++ = (char)(((r[1] - '0') << 6) | ((r[2] - '0') << 3) | (r[3] - '0'));
			r += 3;
		} else {
			*w++ = *r;
		}
	}
	*w = '\0';
}

/*
 * Raises the view's readahead to TFS_READAHEAD_KB. The kernel gives a new FUSE mount the
 * default window (128 KiB) whatever the daemon offers at INIT; with a 1 MiB window a large
 * sequential read keeps four TFS_MAX_READ reads in flight, and cold reads run about
 * half again faster. Done through the mount's backing device in sysfs, found by its device
 * number in mountinfo (no request to the view, which is not served yet). Only root may do
 * it; anyone else keeps the default, which is correct, just slower.
 */

static void tune_readahead(const char *mountpoint)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (f == NULL)
		return;
	/* Lines and fields are malloc'd, not 20 KiB of PATH_MAX arrays on the main thread's
	 * stack: pages a stack touches once stay resident for the daemon's life. */
	char *line = NULL, dev[32] = "";
	size_t cap = 0;
	while (getline(&line, &cap, f) > 0) {
		char d[32], *mnt = NULL;
		if (sscanf(line, "%*d %*d %31s %*s %ms", d, &mnt) == 2) {
			mountinfo_unescape(mnt);
			if (strcmp(mnt, mountpoint) == 0)
				strcpy(dev, d); /* the last one is the topmost: ours */
		}
		free(mnt);
	}
	free(line);
	fclose(f);
	if (dev[0] == '\0')
		return;
	char path[96];
	snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", dev);
	FILE *ra = fopen(path, "we");
	if (ra == NULL)
		return;
	fprintf(ra, "%u\n", TFS_READAHEAD_KB);
	if (fclose(ra) != 0)
		fuse_log(FUSE_LOG_DEBUG, "throttlefs: %s: %s\n", path, strerror(errno));
}

/* The loop returns the number of the signal that ended it: a stop asked for, not a failure. */
static int loop_status(int r)
{
	int sig = r < 0 ? -r : r;
	if (r == 0 || sig == SIGINT || sig == SIGTERM || sig == SIGHUP)
		return 0;
	fuse_log(FUSE_LOG_ERR, "throttlefs: the session ended with an error: %s\n",
		 strerror(r < 0 ? -r : r));
	return 1;
}

int main(int argc, char **argv)
{
	/* Descriptors 0-2 must be taken before we open anything, or the backing root could land
	 * on one of them and be clobbered by whoever writes to "stdout". */
	for (;;) {
		int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
		if (fd < 0 || fd > 2) {
			if (fd > 2)
				close(fd);
			break;
		}
	}
	/* Buffers of 32 KiB and more (libfuse's 1 MiB receive buffer per worker, directory
	 * streams, readdir replies, read buffers beyond the few ops.c keeps) are mapped on
	 * their own and unmapped when freed. With glibc's defaults they come from the
	 * per-thread arenas (its mmap threshold starts at 128 KiB and rises to the size of the
	 * first large block freed), and a freed one stays resident there behind any small
	 * block allocated after it: measured in the soak test, the arenas of a dozen worker
	 * threads held 15-20 MiB of free memory, more than the whole buffer budget. */
	/* And one arena for all threads: glibc gives each thread that allocates an arena of its
	 * own (up to 8 per core), and each kept 70-100 KiB resident for a few small blocks; the
	 * daemon's small allocations (requests, segments) are short-lived and mostly served by
	 * the per-thread cache without taking the arena's lock. RSS after find over 100,000
	 * files: 8.6 -> 8.2 MiB. */
	if (mallopt(M_MMAP_THRESHOLD, 32 << 10) != 1 || mallopt(M_ARENA_MAX, 1) != 1) {
		/* Only a replacement allocator (ASan's, valgrind's) refuses: it has no arenas
		 * to tune, and a warning would break the one-line errors of bad command lines. */
	}
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts cl = {0};
	struct tfs fs = {.root_fd = -1, .timeout = 1.0, .handles_lock = PTHREAD_MUTEX_INITIALIZER};
	int ret = EXIT_USAGE;

	if (opts_parse(&args, &fs.opt) != 0)
		goto out;
	if (fs.opt.show_help) {
		usage(argv[0]);
		ret = 0;
		goto out;
	}
	if (fs.opt.show_version) {
		printf("throttlefs %s (libfuse %s)\n", THROTTLEFS_VERSION, fuse_pkgversion());
		ret = 0;
		goto out;
	}
	/* Find MOUNTPOINT ourselves first: libfuse's message for a bad one is less clear. */
	const char *mnt = NULL;
	for (int i = 1; i < args.argc; i++)
		if (args.argv[i][0] != '-' && (i == 1 || strcmp(args.argv[i - 1], "-o") != 0))
			mnt = args.argv[i];
	if (mnt == NULL || opts_check_paths(&fs.opt, mnt) != 0)
		goto out;
	if (add_default_opts(&args, &fs.opt) != 0 || fuse_parse_cmdline(&args, &cl) != 0) {
		fprintf(stderr, "throttlefs: cannot parse the command line\n");
		goto out;
	}
	fs.max_read = mount_max_read(&args);
	if (cl.clone_fd) {
		/* loop.c reads through libfuse's public calls, which know one descriptor. */
		fprintf(stderr, "throttlefs: -o clone_fd is not supported\n");
		goto out;
	}

	fs.root_fd = open(fs.opt.backing_real, O_PATH | O_DIRECTORY | O_CLOEXEC);
	struct stat st;
	if (fs.root_fd < 0 || fstat(fs.root_fd, &st) != 0) {
		fprintf(stderr, "throttlefs: backing dir '%s': %s\n", fs.opt.backing,
			strerror(errno));
		goto out;
	}
	/* A store in memory frees a small file at once and cheaply (remove_entry). */
	struct statfs sf;
	if (fstatfs(fs.root_fd, &sf) == 0 && (sf.f_type == TMPFS_MAGIC || sf.f_type == RAMFS_MAGIC))
		fs.memory_dev = st.st_dev;
	int err = inode_table_new(st.st_dev, st.st_ino, node_free,
				  &(struct inode_config){.semi_space = fs.opt.max_semi_space,
							 .old_space = fs.opt.max_old_space,
							 .trace_gc = (int)fs.opt.trace_gc},
				  &fs.inodes);
	if (err == 0)
		err = collector_new(fs.inodes, &fs.collector);
	if (err == 0)
		err = fdcache_new(TFS_DIR_CACHE, &fs.dirs);
	if (err != 0) {
		fprintf(stderr, "throttlefs: cannot make the inode table: %s\n", strerror(-err));
		ret = 1;
		goto out;
	}
	err = cred_init();
	if (err != 0) {
		fprintf(stderr, "throttlefs: cannot read the daemon's credentials: %s\n",
			strerror(-err));
		ret = 1;
		goto out;
	}
	/* Modes arrive from the kernel with the caller's umask applied; ours must not apply too. */
	umask(0);

	fs.se = fuse_session_new(&args, &tfs_ops, sizeof(tfs_ops), &fs);
	if (fs.se == NULL)
		goto out; /* libfuse said why: an unknown or malformed FUSE option */
	ret = 1;
	if (fuse_set_signal_handlers(fs.se) != 0) {
		fprintf(stderr, "throttlefs: cannot install signal handlers\n");
		goto out_session;
	}
	if (fuse_session_mount(fs.se, cl.mountpoint) != 0)
		goto out_signals; /* libfuse printed the reason */
	tune_readahead(cl.mountpoint);
	if (fuse_daemonize(cl.foreground) != 0)
		goto out_unmount;
	/* Threads start only now: fuse_daemonize forks, and a fork keeps only the caller. */
	struct stream_config sc = {
	    .high_water = fs.opt.buffer,
	    .max_buffer = fs.opt.max_buffer,
	    .rate = fs.opt.rate,
	    .file_rate = fs.opt.file_rate,
	    .keep_cache = (int)fs.opt.keep_cache,
	    .direct_from = fs.opt.direct_write ? STREAM_DIRECT_FROM : 0,
	    .lend_max = TFS_RECV_LEND,
	};
	err = stream_engine_new(&sc, &fs.streams);
	if (err != 0) {
		fuse_log(FUSE_LOG_ERR, "throttlefs: cannot start the stream engine: %s\n",
			 strerror(-err));
		goto out_unmount;
	}

	/* Our own loop (loop.c): its receive buffers are a pool of TFS_RECV_BUFFERS, whatever
	 * the number of threads (tfs.h). TFS_MAX_THREADS unless the user's -o max_threads says
	 * otherwise (see add_default_opts); -s is one thread. */
	unsigned threads =
	    cl.max_threads >= 1 && cl.max_threads <= 100000 ? cl.max_threads : TFS_MAX_THREADS;
	struct loop_config lc = {
	    .max_threads = cl.singlethread ? 1 : threads,
	    .max_idle = cl.max_idle_threads, /* UINT_MAX: not given, no worker exits */
	    .buffers = TFS_RECV_BUFFERS,
	    .extra_buffers = TFS_RECV_EXTRA,
	};
	ret = loop_status(loop_run(fs.se, &lc));
	/* Graceful stop: what writers handed over reaches the store before the view goes. */
	ops_close_all(&fs);
	stream_engine_free(fs.streams);
out_unmount:
	fuse_session_unmount(fs.se);
out_signals:
	fuse_remove_signal_handlers(fs.se);
out_session:
	fuse_session_destroy(fs.se);
out:
	fdcache_free(fs.dirs);
	collector_free(fs.collector); /* its thread uses the table: it goes first */
	inode_table_free(fs.inodes);
	if (fs.root_fd >= 0)
		close(fs.root_fd);
	free(cl.mountpoint);
	fuse_opt_free_args(&args);
	opts_free(&fs.opt);
	return ret;
}
