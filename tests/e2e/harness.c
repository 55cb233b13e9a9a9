/*
 * harness.c - mounts the daemon for end-to-end tests, always unmounts it, and compares trees.
 *
 * The one invariant that matters: no FUSE mount outlives the test process. Three layers keep it.
 * h_teardown unmounts after every test, pass or fail (cmocka runs teardown after a failed
 * assertion too). Mounts still alive are listed in h_live; an atexit hook and a SIGINT/SIGTERM
 * handler lazily unmount them and signal their daemons, using only async-signal-safe calls
 * (fork, execve, kill). Last, each daemon is started with PR_SET_PDEATHSIG = SIGTERM, so if the
 * test process is killed outright the daemon unmounts itself on the way out.
 *
 * Unmounting has a clean path and a forced one. The clean path is fusermount3 -u (retried for a
 * few seconds while the mount is busy) followed by the daemon exiting on its own with status 0;
 * anything else - a busy mount, a daemon that hangs, crashes or exits non-zero (under ASan a
 * leak makes the exit status non-zero) - is a test failure, reported with the daemon's log, and
 * is then cleaned up by force: fusermount3 -uz, SIGTERM, SIGKILL.
 *
 * A test may put a store below the view (faultfs or a small tmpfs mounted on backing/). The same
 * layers cover it, in the order that works: the view goes first (its daemon drains into the
 * store as it exits, so a faultfs store is first told to stop stalling), then the store.
 *
 * Tree comparison walks both trees in name order and stops at the first difference, which it
 * prints with both paths: a test that fails should say where, not just that it failed.
 */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
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

extern char **environ;

#define H_MOUNT_TIMEOUT_MS 20000 /* daemon start to mount visible */
#define H_EXIT_TIMEOUT_MS  30000 /* unmount to daemon exit; generous for ASan's leak check */
#define H_UMOUNT_RETRY_MS  5000	 /* how long fusermount3 -u is retried while busy */
#define H_MAX_LIVE	   8

static struct h_fs *h_live[H_MAX_LIVE];
static bool h_hooks_installed;

static void h_sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static int64_t h_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char *h_path(char *buf, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, PATH_MAX, fmt, ap);
	va_end(ap);
	if (n < 0 || n >= PATH_MAX) {
		fprintf(stderr, "harness: path too long: %s...\n", buf);
		abort();
	}
	return buf;
}

/* ---- processes ---- */

/* Spawns argv (searched in PATH), stdout sent to stderr, and returns its exit status as h_run. */
static int h_spawn_wait(char *const argv[], bool quiet)
{
	posix_spawn_file_actions_t fa;
	pid_t pid;
	int st, err;

	if (posix_spawn_file_actions_init(&fa) != 0)
		return -1;
	err = quiet ? posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0) : 0;
	if (err == 0)
		err = posix_spawn_file_actions_adddup2(&fa, 2, 1);
	if (err == 0)
		err = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (err != 0) {
		fprintf(stderr, "harness: cannot run %s: %s\n", argv[0], strerror(err));
		return -1;
	}
	while (waitpid(pid, &st, 0) < 0) {
		if (errno != EINTR)
			return -1;
	}
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	return 128 + WTERMSIG(st);
}

int h_run(const char *fmt, ...)
{
	char *cmd;
	va_list ap;
	va_start(ap, fmt);
	int n = vasprintf(&cmd, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -1;
	char *argv[] = {"/bin/sh", "-c", cmd, NULL};
	int rc = h_spawn_wait(argv, false);
	if (rc != 0)
		fprintf(stderr, "harness: exit status %d from: %s\n", rc, cmd);
	free(cmd);
	return rc;
}

static int h_fusermount(const char *flag, const char *mnt, bool quiet)
{
	char *argv[] = {"fusermount3", (char *)flag, (char *)mnt, NULL};
	return h_spawn_wait(argv, quiet);
}

int h_wait_pid(pid_t pid, int timeout_ms, int *status)
{
	int64_t deadline = h_now_ms() + timeout_ms;
	for (;;) {
		pid_t r = waitpid(pid, status, WNOHANG);
		if (r == pid)
			return 0;
		if (r < 0 && errno != EINTR) {
			fprintf(stderr, "harness: waitpid(%d): %s\n", (int)pid, strerror(errno));
			*status = -1;
			return 0;
		}
		if (h_now_ms() >= deadline)
			return -1;
		h_sleep_ms(10);
	}
}

const char *h_daemon_bin(void)
{
	const char *bin = getenv("THROTTLEFS_BIN_OVERRIDE");
	if (bin == NULL || *bin == '\0')
		bin = getenv("THROTTLEFS_BIN");
	if (bin == NULL || *bin == '\0') {
		fprintf(stderr,
			"harness: neither THROTTLEFS_BIN_OVERRIDE nor THROTTLEFS_BIN is set\n");
		return NULL;
	}
	return bin;
}

/* Runs bin with args (argv[0] excluded) as h_daemon_spawn does. */
static pid_t h_spawn_bin(const char *bin, const char *const *args, const char *logpath)
{
	const char *argv[32];
	size_t n = 0;

	if (bin == NULL)
		return -1;
	argv[n++] = bin;
	for (; *args != NULL; args++) {
		if (n == sizeof(argv) / sizeof(argv[0]) - 1) {
			fprintf(stderr, "harness: too many daemon arguments\n");
			return -1;
		}
		argv[n++] = *args;
	}
	argv[n] = NULL;

	int log = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (log < 0) {
		fprintf(stderr, "harness: cannot create %s: %s\n", logpath, strerror(errno));
		return -1;
	}
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0) {
		fprintf(stderr, "harness: fork: %s\n", strerror(errno));
		close(log);
		return -1;
	}
	if (pid == 0) {
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		int null = open("/dev/null", O_RDONLY);
		if (null < 0 || dup2(null, 0) < 0 || dup2(log, 1) < 0 || dup2(log, 2) < 0)
			_exit(127);
		/* The daemon unmounts on SIGTERM: let it do so if the test process dies. */
		if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent)
			_exit(127);
		execv(bin, (char *const *)argv);
		dprintf(2, "harness: cannot exec %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	close(log);
	return pid;
}

pid_t h_daemon_spawn(const char *const *args, const char *logpath)
{
	const char *bin = h_daemon_bin();
	return bin != NULL ? h_spawn_bin(bin, args, logpath) : -1;
}

/* ---- the safety net: unmount whatever is left when the process ends ---- */

/* Runs prog -flag dir and waits. Async-signal-safe: fork, execve and waitpid only. */
static void h_lazy_unmount(const char *prog, const char *flag, const char *dir)
{
	pid_t p = fork();
	if (p == 0) {
		char *argv[] = {(char *)prog, (char *)flag, (char *)dir, NULL};
		char *env[] = {NULL};
		execve(argv[0], argv, env);
		_exit(127);
	}
	if (p > 0)
		waitpid(p, NULL, 0);
}

/* Async-signal-safe: fork, execve, waitpid and kill only. The view goes before its store. */
static void h_force_cleanup(void)
{
	for (int i = 0; i < H_MAX_LIVE; i++) {
		struct h_fs *fs = h_live[i];
		if (fs == NULL)
			continue;
		if (fs->pid > 0) {
			h_lazy_unmount("/bin/fusermount3", "-uz", fs->mnt);
			kill(fs->pid, SIGTERM);
		}
		if (fs->lower == H_LOWER_TMPFS || fs->lower == H_LOWER_DISK)
			h_lazy_unmount("/bin/umount", "-l", fs->backing);
		if ((fs->lower == H_LOWER_FAULTFS || fs->lower == H_LOWER_DISK) &&
		    fs->lower_pid > 0) {
			h_lazy_unmount("/bin/fusermount3", "-uz", fs->ctl);
			kill(fs->lower_pid, SIGTERM);
		}
		h_live[i] = NULL;
	}
}

static void h_on_signal(int sig)
{
	h_force_cleanup();
	signal(sig, SIG_DFL);
	raise(sig);
}

static void h_on_exit(void)
{
	h_force_cleanup();
}

static void h_install_hooks(void)
{
	if (h_hooks_installed)
		return;
	h_hooks_installed = true;
	atexit(h_on_exit);
	struct sigaction sa = {.sa_handler = h_on_signal};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
}

static void h_live_set(struct h_fs *fs, bool live)
{
	for (int i = 0; live && i < H_MAX_LIVE; i++) {
		if (h_live[i] == fs)
			return;
	}
	for (int i = 0; i < H_MAX_LIVE; i++) {
		if (live && h_live[i] == NULL) {
			h_live[i] = fs;
			return;
		}
		if (!live && h_live[i] == fs) {
			h_live[i] = NULL;
			return;
		}
	}
}

/* ---- mounting ---- */

bool h_is_mounted(const char *path)
{
	char real[PATH_MAX], line[4 * PATH_MAX], mp[PATH_MAX];
	bool found = false;

	if (realpath(path, real) == NULL)
		h_path(real, "%s", path);
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (f == NULL)
		return false;
	while (!found && fgets(line, sizeof(line), f) != NULL) {
		/* id parent major:minor root MOUNTPOINT ... (no spaces in our paths) */
		if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) == 1 && strcmp(mp, real) == 0)
			found = true;
	}
	fclose(f);
	return found;
}

/*
 * A FUSE daemon the harness runs in the foreground: the view's own, or a faultfs store below it.
 * Starting, waiting for the mount and stopping work the same for both.
 */
struct h_proc {
	const char *who; /* "daemon" or "faultfs", for messages */
	const char *mnt;
	const char *log;
	pid_t *pid;
};

static struct h_proc h_view(struct h_fs *fs)
{
	return (struct h_proc){"daemon", fs->mnt, fs->log, &fs->pid};
}

static struct h_proc h_store(struct h_fs *fs)
{
	return (struct h_proc){"faultfs", fs->ctl, fs->lower_log, &fs->lower_pid};
}

/* Keeps fs in the list the safety net walks while anything of it is mounted. */
static void h_live_update(struct h_fs *fs)
{
	h_live_set(fs, fs->pid > 0 || fs->lower != H_LOWER_NONE);
}

/* Copies the whole log to stderr: an ASan report is long, and all of it matters. */
static void h_print_log(const struct h_proc *p)
{
	char buf[4096];
	ssize_t n;
	bool newline = true;
	int fd = open(p->log, O_RDONLY | O_CLOEXEC);

	fprintf(stderr, "---- %s log: %s\n", p->who, p->log);
	if (fd < 0) {
		fprintf(stderr, "(cannot open: %s)\n", strerror(errno));
		return;
	}
	while ((n = read(fd, buf, sizeof(buf))) > 0) {
		fwrite(buf, 1, (size_t)n, stderr);
		newline = buf[n - 1] == '\n';
	}
	close(fd);
	fprintf(stderr, "%s---- end of %s log\n", newline ? "" : "\n", p->who);
}

static void h_describe_status(const struct h_proc *p, const char *what, int st)
{
	if (st == -1)
		fprintf(stderr, "harness: %s %s: status unknown\n", p->who, what);
	else if (WIFEXITED(st))
		fprintf(stderr, "harness: %s %s with exit status %d\n", p->who, what,
			WEXITSTATUS(st));
	else if (WIFSIGNALED(st))
		fprintf(stderr, "harness: %s %s, killed by signal %d\n", p->who, what,
			WTERMSIG(st));
}

struct h_fs *h_fs_new(void)
{
	const char *base = getenv("TFS_TEST_ROOT");
	struct h_fs *fs = calloc(1, sizeof(*fs));

	if (fs == NULL)
		return NULL;
	h_path(fs->root, "%s/e2e.XXXXXX", base != NULL && *base != '\0' ? base : "/tmp");
	if (mkdtemp(fs->root) == NULL) {
		fprintf(stderr, "harness: mkdtemp %s: %s\n", fs->root, strerror(errno));
		free(fs);
		return NULL;
	}
	h_path(fs->backing, "%s/backing", fs->root);
	h_path(fs->mnt, "%s/mnt", fs->root);
	h_path(fs->plain, "%s/plain", fs->root);
	h_path(fs->log, "%s/daemon.log", fs->root);
	h_path(fs->store, "%s", fs->backing);
	h_path(fs->lower_log, "%s/faultfs.log", fs->root);
	if (mkdir(fs->backing, 0755) != 0 || mkdir(fs->mnt, 0755) != 0 ||
	    mkdir(fs->plain, 0755) != 0) {
		fprintf(stderr, "harness: mkdir below %s: %s\n", fs->root, strerror(errno));
		h_fs_free(fs);
		return NULL;
	}
	return fs;
}

/* Forced cleanup after a failure: lazy unmount, then SIGTERM, then SIGKILL. */
static void h_force_stop(const struct h_proc *p)
{
	int st;
	if (h_is_mounted(p->mnt))
		h_fusermount("-uz", p->mnt, false);
	if (*p->pid > 0) {
		kill(*p->pid, SIGTERM);
		if (h_wait_pid(*p->pid, 5000, &st) != 0) {
			kill(*p->pid, SIGKILL);
			waitpid(*p->pid, &st, 0);
		}
	}
	*p->pid = 0;
}

/* Waits for the just-spawned p to mount below dir (its parent). On failure p is stopped and
 * its log printed, and -1 is returned. */
static int h_await_mount(const struct h_proc *p, const char *dir)
{
	int st;
	int64_t deadline = h_now_ms() + H_MOUNT_TIMEOUT_MS;
	while (!h_is_mounted(p->mnt)) {
		if (h_wait_pid(*p->pid, 0, &st) == 0) {
			h_describe_status(p, "exited before the mount appeared", st);
			h_print_log(p);
			*p->pid = 0;
			return -1;
		}
		if (h_now_ms() >= deadline) {
			fprintf(stderr, "harness: %s not mounted after %d ms\n", p->mnt,
				H_MOUNT_TIMEOUT_MS);
			h_force_stop(p);
			h_print_log(p);
			return -1;
		}
		h_sleep_ms(10);
	}
	/* A first request proves that the daemon answers, not only that it mounted. */
	struct stat sm, sr;
	if (stat(p->mnt, &sm) != 0 || stat(dir, &sr) != 0) {
		fprintf(stderr, "harness: stat %s: %s\n", p->mnt, strerror(errno));
	} else if (sm.st_dev == sr.st_dev) {
		fprintf(stderr, "harness: %s is listed as mounted but is not the mount\n", p->mnt);
	} else {
		return 0;
	}
	h_force_stop(p);
	h_print_log(p);
	return -1;
}

/* The clean path and its verdict, else the forced one; see h_fs_unmount. */
static int h_stop(const struct h_proc *p)
{
	int st = -1;

	if (*p->pid <= 0)
		return 0;
	int64_t deadline = h_now_ms() + H_UMOUNT_RETRY_MS;
	bool quiet = true;
	for (;;) {
		if (h_fusermount("-u", p->mnt, quiet) == 0)
			break;
		if (h_now_ms() >= deadline) {
			if (!quiet)
				break;
			quiet = false; /* one last try that shows why */
			continue;
		}
		h_sleep_ms(100);
	}
	if (h_is_mounted(p->mnt)) {
		fprintf(stderr, "harness: fusermount3 -u %s failed (busy?); forcing\n", p->mnt);
		h_force_stop(p);
		h_print_log(p);
		return -1;
	}
	if (h_wait_pid(*p->pid, H_EXIT_TIMEOUT_MS, &st) != 0) {
		fprintf(stderr, "harness: %s %d still running %d ms after unmount; killing\n",
			p->who, (int)*p->pid, H_EXIT_TIMEOUT_MS);
		h_force_stop(p);
		h_print_log(p);
		return -1;
	}
	*p->pid = 0;
	if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		h_describe_status(p, "ended after unmount", st);
		h_print_log(p);
		return -1;
	}
	return 0;
}

/* The argument vector of a FUSE daemon run in the foreground: -f [-o opts] src dst. */
static const char *const *h_fuse_args(const char *args[6], const char *opts, const char *src,
				      const char *dst)
{
	size_t n = 0;
	args[n++] = "-f";
	if (opts != NULL && *opts != '\0') {
		args[n++] = "-o";
		args[n++] = opts;
	}
	args[n++] = src;
	args[n++] = dst;
	args[n] = NULL;
	return args;
}

int h_fs_mount(struct h_fs *fs, const char *opts)
{
	const char *args[6];

	if (fs->pid > 0) {
		fprintf(stderr, "harness: %s is already mounted\n", fs->mnt);
		return -1;
	}
	h_install_hooks();
	fs->pid = h_daemon_spawn(h_fuse_args(args, opts, fs->backing, fs->mnt), fs->log);
	if (fs->pid < 0) {
		fs->pid = 0;
		return -1;
	}
	h_live_update(fs);
	struct h_proc p = h_view(fs);
	int rc = h_await_mount(&p, fs->root);
	h_live_update(fs);
	return rc;
}

int h_fs_unmount(struct h_fs *fs)
{
	if (fs->pid <= 0) {
		/* Not the harness's daemon: a test mounted by other means (mount.fuse3, fstab)
		 * and failed before unmounting. Never leave it behind. */
		if (h_is_mounted(fs->mnt))
			h_fusermount("-uz", fs->mnt, false);
		return 0;
	}
	struct h_proc p = h_view(fs);
	int rc = h_stop(&p);
	h_live_update(fs);
	return rc;
}

int h_fs_wait_exit(struct h_fs *fs, int timeout_ms)
{
	int st = -1;
	if (fs->pid <= 0 || h_wait_pid(fs->pid, timeout_ms, &st) != 0) {
		fprintf(stderr, "harness: daemon %d did not exit within %d ms\n", (int)fs->pid,
			timeout_ms);
		return -1;
	}
	fs->pid = 0;
	h_live_update(fs);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		struct h_proc p = h_view(fs);
		h_describe_status(&p, "ended", st);
		h_print_log(&p);
		return -1;
	}
	return 0;
}

int h_fs_free(struct h_fs *fs)
{
	if (fs == NULL)
		return 0;
	/* A stalled or slow store would keep the view's daemon from draining and exiting. */
	if ((fs->lower == H_LOWER_FAULTFS || fs->lower == H_LOWER_DISK) && fs->pid > 0) {
		h_faultfs_set(fs, "stall", "0");
		h_faultfs_set(fs, "latency_us", "0");
	}
	int rc = h_fs_unmount(fs);
	if (h_fs_lower_unmount(fs) != 0)
		rc = -1;
	if (h_is_mounted(fs->mnt) || h_is_mounted(fs->backing) ||
	    (fs->ctl[0] != '\0' && h_is_mounted(fs->ctl))) {
		fprintf(stderr, "harness: %s still mounted; leaving %s in place\n", fs->mnt,
			fs->root);
		rc = -1;
	} else if (h_run("rm -rf '%s'", fs->root) != 0) {
		rc = -1;
	}
	free(fs);
	return rc;
}

/* ---- stores below the view ---- */

/* Starts faultfs (with "-o opts" unless NULL or empty) serving dir `serve` on fs->ctl, as the
 * store of kind `lower`, and waits for its mount. */
static int h_start_faultfs(struct h_fs *fs, const char *opts, const char *serve, int lower)
{
	const char *bin = getenv("FAULTFS_BIN");
	const char *args[6];

	if (bin == NULL || *bin == '\0') {
		fprintf(stderr, "harness: FAULTFS_BIN is not set\n");
		return -1;
	}
	if (mkdir(serve, 0755) != 0) {
		fprintf(stderr, "harness: mkdir %s: %s\n", serve, strerror(errno));
		return -1;
	}
	h_install_hooks();
	fs->lower_pid = h_spawn_bin(bin, h_fuse_args(args, opts, serve, fs->ctl), fs->lower_log);
	if (fs->lower_pid < 0) {
		fs->lower_pid = 0;
		return -1;
	}
	fs->lower = lower;
	h_live_update(fs);
	struct h_proc p = h_store(fs);
	if (h_await_mount(&p, fs->root) != 0) {
		fs->lower = H_LOWER_NONE;
		h_live_update(fs);
		return -1;
	}
	return 0;
}

/* Whether a store may still go below fs: none yet, and the view not mounted. */
static bool h_lower_free(struct h_fs *fs)
{
	if (fs->lower == H_LOWER_NONE && fs->pid <= 0)
		return true;
	fprintf(stderr, "harness: a store goes below %s before the view, once\n", fs->mnt);
	return false;
}

int h_lower_faultfs(struct h_fs *fs, const char *opts)
{
	if (!h_lower_free(fs))
		return -1;
	h_path(fs->store, "%s/store", fs->root);
	h_path(fs->ctl, "%s", fs->backing);
	return h_start_faultfs(fs, opts, fs->store, H_LOWER_FAULTFS);
}

int h_lower_tmpfs(struct h_fs *fs, const char *size)
{
	if (!h_lower_free(fs))
		return -1;
	h_install_hooks();
	/* Registered first: a signal during the mount must not leave it behind. */
	fs->lower = H_LOWER_TMPFS;
	h_live_update(fs);
	if (h_run("mount -t tmpfs -o size=%s,mode=0755 tmpfs '%s'", size, fs->backing) != 0 ||
	    !h_is_mounted(fs->backing)) {
		fs->lower = H_LOWER_NONE;
		h_live_update(fs);
		return -1;
	}
	return 0;
}

int h_lower_disk(struct h_fs *fs, int size_mib)
{
	if (!h_lower_free(fs))
		return -1;
	if (h_run("command -v mkfs.ext4 >/dev/null") != 0 ||
	    access("/dev/loop-control", F_OK) != 0) {
		fprintf(stderr, "harness: no mkfs.ext4 or no loop devices here\n");
		return 1;
	}
	h_path(fs->ctl, "%s/dev", fs->root);
	if (mkdir(fs->ctl, 0755) != 0) {
		fprintf(stderr, "harness: mkdir %s: %s\n", fs->ctl, strerror(errno));
		return -1;
	}
	if (h_start_faultfs(fs, NULL, H_AT(fs->root, "devstore"), H_LOWER_DISK) != 0)
		return -1;
	/* mount -o loop detaches the loop device itself when the filesystem is unmounted. */
	const char *img = H_AT(fs->ctl, "disk.img");
	if (h_run("truncate -s %dM '%s' && mkfs.ext4 -q -F '%s' >/dev/null 2>&1", size_mib, img,
		  img) != 0 ||
	    h_run("mount -o loop '%s' '%s'", img, fs->backing) != 0 || !h_is_mounted(fs->backing)) {
		fprintf(stderr, "harness: no ext4 on a loop device at %s\n", fs->backing);
		return -1;
	}
	return 0;
}

/* Unmounts the kernel filesystem on path, retrying while busy, lazily as a last resort. */
static int h_umount(const char *path)
{
	int64_t deadline = h_now_ms() + H_UMOUNT_RETRY_MS;
	while (h_is_mounted(path) && h_run("umount '%s'", path) != 0 && h_now_ms() < deadline)
		h_sleep_ms(100);
	if (!h_is_mounted(path))
		return 0;
	fprintf(stderr, "harness: umount %s failed; detaching it\n", path);
	h_run("umount -l '%s'", path);
	return -1;
}

int h_fs_lower_unmount(struct h_fs *fs)
{
	int rc = 0;

	if (fs->lower == H_LOWER_TMPFS) {
		rc = h_umount(fs->backing);
	} else if (fs->lower == H_LOWER_DISK) {
		/* The disk works again, so that ext4 can write what it still holds. */
		if (fs->lower_pid > 0)
			h_faultfs_set(fs, "fail_write_after", "off");
		if (h_is_mounted(fs->backing))
			rc = h_umount(fs->backing);
	}
	if (fs->lower == H_LOWER_FAULTFS || fs->lower == H_LOWER_DISK) {
		struct h_proc p = h_store(fs);
		if (h_stop(&p) != 0)
			rc = -1;
	}
	fs->lower = H_LOWER_NONE;
	h_live_update(fs);
	return rc;
}

int h_faultfs_set(struct h_fs *fs, const char *name, const char *value)
{
	char attr[64];
	snprintf(attr, sizeof(attr), "user.faultfs.%s", name);
	if (setxattr(fs->ctl, attr, value, strlen(value), 0) != 0) {
		int e = errno;
		fprintf(stderr, "harness: setting %s=%s: %s\n", attr, value, strerror(e));
		return -e;
	}
	return 0;
}

long long h_faultfs_get(struct h_fs *fs, const char *name)
{
	char attr[64], buf[32];
	snprintf(attr, sizeof(attr), "user.faultfs.%s", name);
	ssize_t n = getxattr(fs->ctl, attr, buf, sizeof(buf) - 1);
	if (n < 0) {
		fprintf(stderr, "harness: getting %s: %s\n", attr, strerror(errno));
		return -1;
	}
	buf[n] = '\0';
	char *end;
	long long v = strtoll(buf, &end, 10);
	if (end == buf || *end != '\0') {
		fprintf(stderr, "harness: %s is not a number: '%s'\n", attr, buf);
		return -1;
	}
	return v;
}

int h_setup(void **state)
{
	struct h_fs *fs = h_fs_new();
	if (fs == NULL)
		return -1;
	if (h_fs_mount(fs, NULL) != 0) {
		h_fs_free(fs);
		return -1;
	}
	*state = fs;
	return 0;
}

int h_teardown(void **state)
{
	int rc = h_fs_free(*state);
	*state = NULL;
	return rc;
}

/* ---- files ---- */

int h_write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	const char *p = data;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			int e = errno;
			close(fd);
			return -e;
		}
		p += n;
		len -= (size_t)n;
	}
	return close(fd) == 0 ? 0 : -errno;
}

ssize_t h_read_file(const char *path, void *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	size_t got = 0;
	for (;;) {
		char extra;
		ssize_t n =
		    got < cap ? read(fd, (char *)buf + got, cap - got) : read(fd, &extra, 1);
		if (n < 0) {
			int e = errno;
			close(fd);
			return -e;
		}
		if (n == 0)
			break;
		if (got == cap) {
			close(fd);
			return -EFBIG;
		}
		got += (size_t)n;
	}
	if (close(fd) != 0)
		return -errno;
	return (ssize_t)got;
}

void h_fill(void *buf, size_t len, unsigned seed)
{
	unsigned char *p = buf;
	uint32_t x = seed * 2654435761u + 1;
	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		p[i] = (unsigned char)(x + i);
	}
}

/* ---- tree comparison ---- */

struct h_link {
	ino_t ino;
	char *rel;
};

struct h_links {
	struct h_link *v;
	size_t n, cap;
};

struct h_cmp {
	unsigned flags;
	const char *skip;
	struct h_links la, lb;
};

/* The first name seen (in walk order) of the inode of a multiply-linked file; rel if new. */
static const char *h_link_leader(struct h_links *l, const struct stat *st, const char *rel)
{
	if (st->st_nlink < 2)
		return rel;
	for (size_t i = 0; i < l->n; i++) {
		if (l->v[i].ino == st->st_ino)
			return l->v[i].rel;
	}
	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 64;
		struct h_link *v = realloc(l->v, cap * sizeof(*v));
		if (v == NULL)
			abort();
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n].ino = st->st_ino;
	l->v[l->n].rel = strdup(rel);
	if (l->v[l->n].rel == NULL)
		abort();
	return l->v[l->n++].rel;
}

static void h_links_free(struct h_links *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i].rel);
	free(l->v);
}

static int h_diff(const char *a, const char *b, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* H_CMP_QUIET for the h_tree_compare call in progress (tests are single-threaded). */
static bool h_diff_quiet;

static int h_diff(const char *a, const char *b, const char *fmt, ...)
{
	va_list ap;
	if (h_diff_quiet)
		return -1;
	fprintf(stderr, "tree difference: %s vs %s: ", a, b);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return -1;
}

static int h_cmp_content(const char *a, const char *b)
{
	static char ba[65536], bb[65536];
	int fa = open(a, O_RDONLY | O_CLOEXEC), fb = open(b, O_RDONLY | O_CLOEXEC);
	int rc = 0;
	off_t off = 0;

	if (fa < 0 || fb < 0) {
		rc = h_diff(a, b, "open: %s", strerror(errno));
		goto out;
	}
	for (;;) {
		ssize_t na = read(fa, ba, sizeof(ba)), nb = read(fb, bb, sizeof(bb));
		if (na < 0 || nb < 0) {
			rc = h_diff(a, b, "read: %s", strerror(errno));
			break;
		}
		/* Both are regular files of equal size, so short reads line up in practice; still,
		 * compare only the common prefix and flag any disagreement in length. */
		ssize_t n = na < nb ? na : nb;
		for (ssize_t i = 0; i < n; i++) {
			if (ba[i] != bb[i]) {
				rc = h_diff(a, b, "content differs at offset %lld",
					    (long long)(off + i));
				goto out;
			}
		}
		if (na != nb) {
			rc = h_diff(a, b, "read lengths differ at offset %lld", (long long)off);
			break;
		}
		if (na == 0)
			break;
		off += na;
	}
out:
	if (fa >= 0)
		close(fa);
	if (fb >= 0)
		close(fb);
	return rc;
}

static int h_str_cmp(const void *x, const void *y)
{
	return strcmp(*(char *const *)x, *(char *const *)y);
}

/* The user.* attribute names of path, sorted, in names[] (pointing into buf). */
static ssize_t h_user_xattrs(const char *path, char *buf, size_t cap, char **names, size_t max)
{
	ssize_t len = llistxattr(path, buf, cap);
	size_t n = 0;
	if (len < 0)
		return errno == ENOTSUP ? 0 : -errno;
	for (char *p = buf; p < buf + len; p += strlen(p) + 1) {
		if (strncmp(p, "user.", 5) == 0 && n < max)
			names[n++] = p;
	}
	qsort(names, n, sizeof(*names), h_str_cmp);
	return (ssize_t)n;
}

static int h_cmp_xattrs(const char *a, const char *b)
{
	static char la[65536], lb[65536], va[65536], vb[65536];
	char *na[256], *nb[256];
	ssize_t ca = h_user_xattrs(a, la, sizeof(la), na, 256);
	ssize_t cb = h_user_xattrs(b, lb, sizeof(lb), nb, 256);

	if (ca < 0 || cb < 0)
		return h_diff(a, b, "llistxattr: %s", strerror((int)-(ca < 0 ? ca : cb)));
	for (ssize_t i = 0; i < ca || i < cb; i++) {
		if (i >= ca || i >= cb || strcmp(na[i], nb[i]) != 0)
			return h_diff(a, b, "xattr names differ: %s vs %s",
				      i < ca ? na[i] : "(none)", i < cb ? nb[i] : "(none)");
		ssize_t sa = lgetxattr(a, na[i], va, sizeof(va));
		ssize_t sb = lgetxattr(b, nb[i], vb, sizeof(vb));
		if (sa < 0 || sb < 0)
			return h_diff(a, b, "lgetxattr %s: %s", na[i], strerror(errno));
		if (sa != sb || memcmp(va, vb, (size_t)sa) != 0)
			return h_diff(a, b, "xattr %s values differ", na[i]);
	}
	return 0;
}

static int h_cmp_tree(struct h_cmp *c, const char *a, const char *b, const char *rel, bool root);

static int h_cmp_dir(struct h_cmp *c, const char *a, const char *b, const char *rel)
{
	struct dirent **da = NULL, **db = NULL;
	int na = scandir(a, &da, NULL, alphasort), nb = scandir(b, &db, NULL, alphasort);
	int rc = 0, i = 0, j = 0;

	if (na < 0 || nb < 0) {
		rc = h_diff(a, b, "scandir: %s", strerror(errno));
		goto out;
	}
	while (rc == 0 && (i < na || j < nb)) {
		const char *x = i < na ? da[i]->d_name : NULL, *y = j < nb ? db[j]->d_name : NULL;
		if (x != NULL &&
		    (!strcmp(x, ".") || !strcmp(x, "..") || (c->skip && !strcmp(x, c->skip)))) {
			i++;
			continue;
		}
		if (y != NULL &&
		    (!strcmp(y, ".") || !strcmp(y, "..") || (c->skip && !strcmp(y, c->skip)))) {
			j++;
			continue;
		}
		int order = x == NULL ? 1 : y == NULL ? -1 : strcmp(x, y);
		if (order != 0) {
			rc = h_diff(a, b, "'%s' only in %s", order < 0 ? x : y,
				    order < 0 ? "the first" : "the second");
			break;
		}
		char pa[PATH_MAX], pb[PATH_MAX], pr[PATH_MAX];
		h_path(pa, "%s/%s", a, x);
		h_path(pb, "%s/%s", b, y);
		h_path(pr, "%s%s%s", rel, *rel ? "/" : "", x);
		rc = h_cmp_tree(c, pa, pb, pr, false);
		i++;
		j++;
	}
out:
	for (int k = 0; k < na; k++)
		free(da[k]);
	for (int k = 0; k < nb; k++)
		free(db[k]);
	free(da);
	free(db);
	return rc;
}

static int h_cmp_tree(struct h_cmp *c, const char *a, const char *b, const char *rel, bool root)
{
	struct stat sa, sb;
	unsigned f = root && !(c->flags & H_CMP_ROOT) ? 0 : c->flags;

	if (lstat(a, &sa) != 0)
		return h_diff(a, b, "lstat first: %s", strerror(errno));
	if (lstat(b, &sb) != 0)
		return h_diff(a, b, "lstat second: %s", strerror(errno));
	if ((sa.st_mode & S_IFMT) != (sb.st_mode & S_IFMT))
		return h_diff(a, b, "types differ: 0%o vs 0%o", sa.st_mode & S_IFMT,
			      sb.st_mode & S_IFMT);
	if ((f & H_CMP_MODE) && !S_ISLNK(sa.st_mode) &&
	    (sa.st_mode & 07777) != (sb.st_mode & 07777))
		return h_diff(a, b, "modes differ: 0%o vs 0%o", sa.st_mode & 07777,
			      sb.st_mode & 07777);
	if ((f & H_CMP_OWNER) && (sa.st_uid != sb.st_uid || sa.st_gid != sb.st_gid))
		return h_diff(a, b, "owners differ: %d:%d vs %d:%d", (int)sa.st_uid, (int)sa.st_gid,
			      (int)sb.st_uid, (int)sb.st_gid);
	if ((f & H_CMP_MTIME) &&
	    (sa.st_mtim.tv_sec != sb.st_mtim.tv_sec || sa.st_mtim.tv_nsec != sb.st_mtim.tv_nsec))
		return h_diff(a, b, "mtimes differ: %lld.%09ld vs %lld.%09ld",
			      (long long)sa.st_mtim.tv_sec, sa.st_mtim.tv_nsec,
			      (long long)sb.st_mtim.tv_sec, sb.st_mtim.tv_nsec);
	if ((f & H_CMP_XATTR) && h_cmp_xattrs(a, b) != 0)
		return -1;
	if ((f & H_CMP_LINKS) && !S_ISDIR(sa.st_mode)) {
		const char *la = h_link_leader(&c->la, &sa, rel);
		const char *lb = h_link_leader(&c->lb, &sb, rel);
		if (strcmp(la, lb) != 0)
			return h_diff(a, b, "hard links differ: same inode as '%s' vs '%s'", la,
				      lb);
	}
	switch (sa.st_mode & S_IFMT) {
	case S_IFREG:
		if (sa.st_size != sb.st_size)
			return h_diff(a, b, "sizes differ: %lld vs %lld", (long long)sa.st_size,
				      (long long)sb.st_size);
		return h_cmp_content(a, b);
	case S_IFLNK: {
		char ta[PATH_MAX], tb[PATH_MAX];
		ssize_t na = readlink(a, ta, sizeof(ta) - 1), nb = readlink(b, tb, sizeof(tb) - 1);
		if (na < 0 || nb < 0)
			return h_diff(a, b, "readlink: %s", strerror(errno));
		ta[na] = tb[nb] = '\0';
		if (strcmp(ta, tb) != 0)
			return h_diff(a, b, "symlink targets differ: '%s' vs '%s'", ta, tb);
		return 0;
	}
	case S_IFCHR:
	case S_IFBLK:
		if (sa.st_rdev != sb.st_rdev)
			return h_diff(a, b, "device numbers differ");
		return 0;
	case S_IFDIR:
		return h_cmp_dir(c, a, b, rel);
	default: /* fifo, socket: the type is all there is */
		return 0;
	}
}

int h_tree_compare(const char *a, const char *b, unsigned flags, const char *skip)
{
	struct h_cmp c = {.flags = flags, .skip = skip};
	h_diff_quiet = flags & H_CMP_QUIET;
	int rc = h_cmp_tree(&c, a, b, "", true);
	h_diff_quiet = false;
	h_links_free(&c.la);
	h_links_free(&c.lb);
	return rc;
}

static int h_sync_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)ftw;
	if (type != FTW_F && type != FTW_D)
		return 0;
	if (type == FTW_F && !S_ISREG(st->st_mode))
		return 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0 || fsync(fd) != 0) {
		fprintf(stderr, "harness: fsync %s: %s\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return close(fd) == 0 ? 0 : -1;
}

int h_sync_tree(const char *dir)
{
	return nftw(dir, h_sync_one, 16, FTW_PHYS) == 0 ? 0 : -1;
}

int h_both(struct h_fs *fs, void (*work)(const char *dir), unsigned flags)
{
	work(fs->plain);
	work(fs->mnt);
	if (h_tree_compare(fs->mnt, fs->plain, flags, NULL) != 0)
		return -1;
	if (h_sync_tree(fs->mnt) != 0)
		return -1;
	return h_tree_compare(fs->mnt, fs->backing, H_CMP_ALL, NULL);
}

/* ---- helpers shared by the fault, soak, model and input tests ---- */

int64_t h_clock_ms(void)
{
	return h_now_ms();
}

void h_nap_ms(int ms)
{
	h_sleep_ms(ms);
}

int h_fs_reap(struct h_fs *fs, int timeout_ms, int *status)
{
	if (fs->pid <= 0 || h_wait_pid(fs->pid, timeout_ms, status) != 0)
		return -1;
	fs->pid = 0;
	h_live_update(fs);
	return 0;
}

static unsigned char h_pat_byte(uint64_t off, unsigned seed)
{
	uint64_t x = ((off >> 3) + 1) * 0x9E3779B97F4A7C15ull ^ (seed + 1) * 0xBF58476D1CE4E5B9ull;
	x ^= x >> 31;
	x *= 0x94D049BB133111EBull;
	x ^= x >> 29;
	return (unsigned char)(x >> ((off & 7) * 8));
}

void h_pat_fill(void *buf, size_t len, uint64_t off, unsigned seed)
{
	unsigned char *p = buf;
	for (size_t i = 0; i < len; i++)
		p[i] = h_pat_byte(off + i, seed);
}

ssize_t h_pat_check(const void *buf, size_t len, uint64_t off, unsigned seed)
{
	const unsigned char *p = buf;
	for (size_t i = 0; i < len; i++) {
		if (p[i] != h_pat_byte(off + i, seed))
			return (ssize_t)i;
	}
	return -1;
}

/* The value of a "Name:   N kB" line of /proc/PID/status, or -1. */
static long h_status_kib(pid_t pid, const char *format)
{
	char path[64], line[256];
	long kib = -1;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "re");
	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL) {
		if (sscanf(line, format, &kib) == 1)
			break;
	}
	fclose(f);
	return kib;
}

long h_rss_kib(pid_t pid)
{
	return h_status_kib(pid, "VmRSS: %ld kB");
}

long h_hwm_kib(pid_t pid)
{
	return h_status_kib(pid, "VmHWM: %ld kB");
}

bool h_sanitized(pid_t pid)
{
	char path[64], line[512];
	bool found = false;
	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	FILE *f = fopen(path, "re");
	if (f == NULL)
		return false;
	while (!found && fgets(line, sizeof(line), f) != NULL)
		found =
		    strstr(line, "libasan") || strstr(line, "libtsan") || strstr(line, "libubsan");
	fclose(f);
	return found;
}

int h_drop_dentries(void)
{
	sync();
	int fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, "2\n", 2) != 2) {
		fprintf(stderr, "harness: drop_caches: %s\n", strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (close(fd) != 0) {
		fprintf(stderr, "harness: drop_caches: %s\n", strerror(errno));
		return -1;
	}
	return 0;
}
