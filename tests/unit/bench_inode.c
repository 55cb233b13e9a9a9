/*
 * bench_inode.c - the inode table's figures for issue 5, on N live inodes (default 1000000)
 * in a directory tree: bytes per live inode (heap incl. handle table, plus the index), the
 * pauses a churn of lookups and forgets sees with N inodes live (collector pauses from the
 * trace, and the longest inode_link call, which also covers index rebuilds), and inode_link
 * throughput against a malloc-per-record baseline.
 * Built, not run as a test: `build/tests/unit/bench_inode [N]`; SEMI_KIB=n sets the
 * semi-space limit (-o max_semi_space). The heap's own pauses are measured in thread CPU
 * time (WALL=1: wall clock), so another process preempting the bench does not count as a
 * collector pause; the longest inode_link call is wall clock (a CPU clock read costs more
 * than the call), so it does include preemption: the count of calls over 1 ms says whether
 * a long one was a fluke. The old space is the daemon's default (256 MiB), and the churn
 * runs long enough (2N) to go through incremental marking, sweeping and compaction cycles.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "inode.h"

enum { NAMELEN = 16 };

static double scavenge_max_ms, other_max_ms;
static char other_max_what[64];
static unsigned long scavenges, others;

static void trace(void *arg, const char *line)
{
	(void)arg;
	const char *p = strstr(line, "pause ");
	if (p == NULL)
		return;
	double ms = strtod(p + 6, NULL);
	if (strstr(line, "scavenge") != NULL) {
		scavenges++;
		if (ms > scavenge_max_ms)
			scavenge_max_ms = ms;
	} else {
		others++;
		if (ms > other_max_ms) {
			other_max_ms = ms;
			snprintf(other_max_what, sizeof(other_max_what), "%.*s",
				 (int)strcspn(line + 6, " "), line + 6);
		}
	}
}

static uint64_t cpu_ns(void *arg)
{
	(void)arg;
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rnd_state = 42;
static uint64_t rnd(void)
{
	rnd_state = rnd_state * 6364136223846793005ull + 1442695040888963407ull;
	return rnd_state >> 33;
}

static struct inode_table *make(void)
{
	struct inode_config cfg = {.trace_gc = 1, .trace = trace};
	if (getenv("WALL") == NULL)
		cfg.clock_ns = cpu_ns;
	const char *semi = getenv("SEMI_KIB");
	if (semi != NULL)
		cfg.semi_space = strtoull(semi, NULL, 10) << 10;
	struct inode_table *t;
	int err = inode_table_new(1, 1, NULL, &cfg, &t);
	if (err != 0) {
		fprintf(stderr, "inode_table_new: %s\n", strerror(-err));
		exit(1);
	}
	return t;
}

static double link_max_ms;
static unsigned long link_over_1ms;

/* One lookup of file ino under parent, timed. */
static uint64_t lookup(struct inode_table *t, uint64_t parent, uint64_t ino)
{
	char name[32];
	snprintf(name, sizeof(name), "f%015llu", (unsigned long long)ino % 1000000000000000ull);
	uint64_t id, gen;
	double t0 = now_s();
	int err = inode_link(t, parent, name, 1, ino, &id, &gen);
	double ms = (now_s() - t0) * 1000;
	if (ms > link_max_ms)
		link_max_ms = ms;
	link_over_1ms += ms > 1;
	if (err != 0) {
		fprintf(stderr, "inode_link: %s\n", strerror(-err));
		exit(1);
	}
	return id;
}

/* N live inodes: directories of 64 entries, each directory itself an entry. */
static uint64_t *populate(struct inode_table *t, size_t n)
{
	uint64_t *v = malloc(n * sizeof(*v));
	if (v == NULL)
		exit(1);
	for (size_t i = 0; i < n; i++)
		v[i] = lookup(t, i < 64 ? INODE_ROOT : v[i / 64 - 1], 2 + i);
	return v;
}

int main(int argc, char **argv)
{
	size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 1000000;
	if (n < 100) {
		fprintf(stderr, "usage: bench_inode [N >= 100]\n");
		return 2;
	}
	struct inode_table *t = make();
	double t0 = now_s();
	uint64_t *v = populate(t, n);
	double fill_s = now_s() - t0;
	printf("populate %zu inodes: %.0f ns/inode_link, longest call %.3f ms (%lu over 1 ms), "
	       "max scavenge %.3f ms, max other pause %.3f ms (%s)\n",
	       n, fill_s * 1e9 / (double)n, link_max_ms, link_over_1ms, scavenge_max_ms,
	       other_max_ms, other_max_what);
	if (inode_table_collect(t, HEAP_FULL) != 0)
		exit(1);
	struct heap_stats hs;
	inode_heap_stats(t, &hs);
	printf("bytes per live inode (name of %d bytes, heap incl. handle table + index): %.1f = "
	       "%.1f + name (target <= 96 + name)\n",
	       NAMELEN, (double)hs.heap_used / (double)n,
	       (double)hs.heap_used / (double)n - NAMELEN);

	/* Churn: forget a random non-directory inode and look up a new one, N times. */
	scavenge_max_ms = other_max_ms = link_max_ms = 0;
	scavenges = others = link_over_1ms = 0;
	other_max_what[0] = '\0';
	struct heap_stats before;
	inode_heap_stats(t, &before);
	uint64_t next = 2 + n;
	t0 = now_s();
	for (size_t i = 0; i < 2 * n; i++) {
		size_t k = n / 64 + rnd() % (n - n / 64); /* beyond the directories */
		inode_forget(t, v[k], 1);
		v[k] = lookup(t, v[rnd() % (n / 64)], next++);
		if (i % 4 == 0) /* short-lived: a readdirplus entry forgotten at once */
			inode_forget(t, lookup(t, v[rnd() % (n / 64)], next++), 1);
	}
	double churn_s = now_s() - t0;
	inode_heap_stats(t, &hs);
	size_t ops = 2 * n + 2 * n / 4;
	printf("churn with %zu live: %zu lookups+forgets in %.2f s (%.0f ns each)\n", n, ops,
	       churn_s, churn_s * 1e9 / (double)ops);
	printf("  %lu scavenges, max scavenge pause %.3f ms; %llu mark-sweep, %llu mark-compact, "
	       "%lu other pauses, max %.3f ms (%s)\n",
	       scavenges, scavenge_max_ms,
	       (unsigned long long)(hs.old.mark_sweeps - before.old.mark_sweeps),
	       (unsigned long long)(hs.old.mark_compacts - before.old.mark_compacts), others,
	       other_max_ms, other_max_what);
	printf("  longest heap pause of the whole run incl. incremental slices %.3f ms\n",
	       (double)hs.pause_us.max / 1000);
	printf("  longest inode_link call (lock hold: collection + index, wall) %.3f ms, %lu over "
	       "1 ms\n",
	       link_max_ms, link_over_1ms);
	t0 = now_s();
	inode_table_collect(t, HEAP_FULL);
	printf("  explicit full collection (stop-the-world): %.1f ms\n", (now_s() - t0) * 1000);
	inode_table_free(t);
	free(v);

	/* Baseline: the same records as malloc'd structs with a strdup'd name. */
	struct mrec {
		uint64_t dev, ino, nlookup;
		void *data, *parent;
		char *name;
	};
	struct mrec **m = malloc(n * sizeof(*m));
	if (m == NULL)
		exit(1);
	t0 = now_s();
	for (size_t i = 0; i < n; i++) {
		char name[32];
		snprintf(name, sizeof(name), "f%015llu",
			 (unsigned long long)i % 1000000000000000ull);
		m[i] = calloc(1, sizeof(**m));
		if (m[i] == NULL || (m[i]->name = strdup(name)) == NULL)
			exit(1);
		m[i]->ino = i;
		m[i]->parent = i ? m[i / 64] : NULL;
	}
	double malloc_s = now_s() - t0;
	printf("baseline calloc+strdup per record: %.0f ns (inode_link above: %.0f ns, incl. "
	       "index and collections)\n",
	       malloc_s * 1e9 / (double)n, fill_s * 1e9 / (double)n);
	for (size_t i = 0; i < n; i++) {
		free(m[i]->name);
		free(m[i]);
	}
	free(m);
	return 0;
}
