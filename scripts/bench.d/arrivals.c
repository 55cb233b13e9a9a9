/*
 * arrivals.c - runs a command and watches a file grow: how fast do bytes reach the backing store?
 *
 *   arrivals FILE INTERVAL_MS COUNT CMD [ARGS...]
 *
 * Starts the clock, starts CMD, then every INTERVAL_MS, COUNT times (also after CMD is done),
 * prints "sample SECONDS BYTES", BYTES being FILE's size then (0 while it does not exist);
 * finally waits for CMD and prints "elapsed SECONDS status CODE".
 * scripts/bench uses it on throttlefs's backing file to see how soon a copy reaches the set rate.
 *
 * Why C and not a shell loop: a loop that forks `stat` and `date` on a loaded 2-core machine
 * drifts by tens of milliseconds per sample; here the sample times are absolute deadlines on
 * CLOCK_MONOTONIC (clock_nanosleep TIMER_ABSTIME), so a late sample never delays the next one,
 * and each printed time is when the size was actually read.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double arrivals_since(const struct timespec *t0)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

/* Waits for pid (ours) and returns its exit code, 128 + signal when killed, or -1. */
static int arrivals_reap(pid_t pid)
{
	int status;

	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			perror("arrivals: waitpid");
			return -1;
		}
	}
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int main(int argc, char **argv)
{
	struct timespec t0, due;
	struct stat st;
	long interval_ms, count, i, left_ms;
	double done = -1;
	int code = -1, pidfd;
	pid_t pid;

	if (argc < 5) {
		fprintf(stderr, "usage: arrivals FILE INTERVAL_MS COUNT CMD [ARGS...]\n");
		return 2;
	}
	interval_ms = strtol(argv[2], NULL, 10);
	count = strtol(argv[3], NULL, 10);
	if (interval_ms <= 0 || count < 0) {
		fprintf(stderr, "arrivals: bad INTERVAL_MS or COUNT\n");
		return 2;
	}
	if (clock_gettime(CLOCK_MONOTONIC, &t0) != 0) {
		perror("arrivals: clock_gettime");
		return 1;
	}
	pid = fork();
	if (pid < 0) {
		perror("arrivals: fork");
		return 1;
	}
	if (pid == 0) {
		execvp(argv[4], argv + 4);
		fprintf(stderr, "arrivals: exec %s: %s\n", argv[4], strerror(errno));
		_exit(127);
	}
	/* A pidfd becomes readable when CMD exits, so its end is timed to the millisecond even
	 * while we sleep between samples. */
	pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (pidfd < 0) {
		perror("arrivals: pidfd_open");
		return 1;
	}
	due = t0;
	for (i = 1; i <= count; i++) {
		due.tv_nsec += interval_ms * 1000000L;
		due.tv_sec += due.tv_nsec / 1000000000L;
		due.tv_nsec %= 1000000000L;
		while (done < 0) {
			struct pollfd p = {.fd = pidfd, .events = POLLIN};
			struct timespec now;

			clock_gettime(CLOCK_MONOTONIC, &now);
			left_ms = (due.tv_sec - now.tv_sec) * 1000 +
				  (due.tv_nsec - now.tv_nsec) / 1000000;
			if (left_ms <= 0 || poll(&p, 1, (int)left_ms) == 0)
				break;
			if (p.revents) {
				done = arrivals_since(&t0);
				code = arrivals_reap(pid);
			}
		}
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &due, NULL) == EINTR)
			;
		printf("sample %.6f %lld\n", arrivals_since(&t0),
		       stat(argv[1], &st) == 0 ? (long long)st.st_size : 0LL);
	}
	if (done < 0) {
		code = arrivals_reap(pid);
		done = arrivals_since(&t0);
	}
	printf("elapsed %.6f status %d\n", done, code);
	return code == 0 ? 0 : 1;
}
