/*
 * bench_inode.c - the inode table's figures for issue 5, on N live inodes (default 1000000)
 * in a directory tree, each printed with its target and whether it is met:
 *  - the longest pause in normal operation, populate and churn: for every inode_link and
 *    inode_forget call, the heap time inside it (scavenges, incremental marking, sweeping
 *    and compaction slices, finishes), in thread CPU time so that another process holding
 *    the CPU is not counted (reading a thread CPU clock around every call costs ~10 us on
 *    this machine, more than the call, so the heap reads it at pause boundaries only); and
 *    each call's wall time (the lock hold, index steps included, preemption included);
 *  - stop-the-world full collections in normal operation: none (heap stats);
 *  - bytes per live inode (heap incl. handle table, plus the index) <= 96 + name;
 *  - inode_link throughput against a malloc design doing the same work: calloc + strdup of
 *    the record, the same tagged open-addressing (dev, ino) index (find, then insert), with
 *    a conventional doubling rehash.
 * The explicit full collection (heap_collect HEAP_FULL: tests, and the last resort before
 * ENOMEM) is timed last, as what it is. Built, not run as a test:
 * `build/tests/unit/bench_inode [N]`; SEMI_KIB=n sets the semi-space limit, RUNS=n the
 * throughput runs (5; medians compared), QUICK=1 stops after throughput and bytes,
 * SLOW_TRACE=1 prints every collection over 1 ms and every old-generation event.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "inode.h"

enum { NAMELEN = 16 };

static struct bench_hist scavenge_hist, call_hist;
static double other_max_ms;
static char other_max_what[64];
static unsigned long others;

static void trace(void *arg, const char *line)
{
	(void)arg;
	int scavenge;
	double ms = bench_trace_pause(line, &scavenge);
	if (ms < 0)
		return;
	/* SLOW_TRACE=1: the collections that took over 1 ms and every old-generation event */
	if (getenv("SLOW_TRACE") && (ms > 1.0 || !scavenge))
		fprintf(stderr, "trace: %s\n", line);
	if (scavenge) {
		bench_hist_add(&scavenge_hist, (uint64_t)(ms * 1000));
	} else {
		others++;
		if (ms > other_max_ms) {
			other_max_ms = ms;
			snprintf(other_max_what, sizeof(other_max_what), "%.*s",
				 (int)strcspn(line + 6, " "), line + 6);
		}
	}
}

static struct inode_table *cur;
static struct bench_hist wall_hist;

static uint64_t pause_total_us(void)
{
	struct heap_stats hs;
	inode_heap_stats(cur, &hs);
	return hs.pause_us.total;
}

/* Starts timing a call: its heap pause total and wall clock. */
static void call_start(uint64_t *p0, double *w0)
{
	*p0 = pause_total_us();
	*w0 = bench_now_s();
}

static void call_end(uint64_t p0, double w0)
{
	double w = bench_now_s() - w0;
	bench_hist_add(&call_hist, pause_total_us() - p0);
	bench_hist_add(&wall_hist, (uint64_t)(w * 1e6));
}

static uint64_t rnd_state = 42;
static uint64_t rnd(void)
{
	rnd_state = rnd_state * 6364136223846793005ull + 1442695040888963407ull;
	return rnd_state >> 33;
}

static struct inode_table *make(void)
{
	struct inode_config cfg = {.trace_gc = 1, .trace = trace, .clock_ns = bench_cpu_ns};
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

static int timed; /* time every call into call_hist */

static void name_of(char *name, size_t len, uint64_t ino)
{
	snprintf(name, len, "f%015llu", (unsigned long long)ino % 1000000000000000ull);
}

static uint64_t lookup(struct inode_table *t, uint64_t parent, uint64_t ino)
{
	char name[32];
	name_of(name, sizeof(name), ino);
	uint64_t id, gen, p0 = 0;
	double w0 = 0;
	if (timed)
		call_start(&p0, &w0);
	int err = inode_link(t, parent, name, 1, ino, &id, &gen);
	if (timed)
		call_end(p0, w0);
	if (err != 0) {
		fprintf(stderr, "inode_link: %s\n", strerror(-err));
		exit(1);
	}
	return id;
}

static void forget(struct inode_table *t, uint64_t id)
{
	uint64_t p0 = 0;
	double w0 = 0;
	if (timed)
		call_start(&p0, &w0);
	inode_forget(t, id, 1);
	if (timed)
		call_end(p0, w0);
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

/* ---- the malloc design: same records, same index, malloc'd ---- */

struct mrec {
	uint64_t dev, ino, nlookup;
	void *data;
	struct mrec *parent;
	uint32_t npin;
	char *name;
};

struct mindex {
	struct mrec **v;
	uint8_t *tag;
	size_t cap, used;
};

static size_t mix_hash(uint64_t dev, uint64_t ino) /* inode.c's ix_hash */
{
	uint64_t h = (ino ^ (dev << 29) ^ (dev >> 7)) * 0x9e3779b97f4a7c15ull;
	return (size_t)(h ^ (h >> 29));
}

static void mix_place(struct mindex *ix, struct mrec *r)
{
	size_t hash = mix_hash(r->dev, r->ino), i = hash & (ix->cap - 1);
	while (ix->v[i] != NULL)
		i = (i + 1) & (ix->cap - 1);
	ix->v[i] = r;
	ix->tag[i] = (uint8_t)(hash >> 56);
	ix->used++;
}

static struct mrec *mix_find(const struct mindex *ix, uint64_t dev, uint64_t ino)
{
	size_t hash = mix_hash(dev, ino);
	for (size_t i = hash & (ix->cap - 1); ix->v[i] != NULL; i = (i + 1) & (ix->cap - 1))
		if (ix->tag[i] == (uint8_t)(hash >> 56) && ix->v[i]->ino == ino &&
		    ix->v[i]->dev == dev)
			return ix->v[i];
	return NULL;
}

static void mix_grow(struct mindex *ix)
{
	struct mindex n = {calloc(ix->cap * 2, sizeof(*n.v)), malloc(ix->cap * 2), ix->cap * 2, 0};
	if (n.v == NULL || n.tag == NULL)
		exit(1);
	for (size_t i = 0; i < ix->cap; i++)
		if (ix->v[i] != NULL)
			mix_place(&n, ix->v[i]);
	free(ix->v);
	free(ix->tag);
	*ix = n;
}

static struct mrec *mlink(struct mindex *ix, struct mrec *parent, const char *name, uint64_t dev,
			  uint64_t ino)
{
	struct mrec *r = mix_find(ix, dev, ino);
	if (r != NULL) {
		r->nlookup++;
		return r;
	}
	if ((ix->used + 1) * 4 > ix->cap * 3)
		mix_grow(ix);
	r = calloc(1, sizeof(*r));
	if (r == NULL || (r->name = strdup(name)) == NULL)
		exit(1);
	r->dev = dev;
	r->ino = ino;
	r->nlookup = 1;
	r->parent = parent;
	mix_place(ix, r);
	return r;
}

/* ns per lookup for the malloc design, on the same tree as populate(). */
static double malloc_design(size_t n)
{
	struct mindex ix = {calloc(1024, sizeof(*ix.v)), malloc(1024), 1024, 0};
	struct mrec **m = malloc(n * sizeof(*m));
	if (m == NULL || ix.v == NULL || ix.tag == NULL)
		exit(1);
	struct mrec root = {.dev = 1, .ino = 1};
	mix_place(&ix, &root);
	double t0 = bench_now_s();
	for (size_t i = 0; i < n; i++) {
		char name[32];
		name_of(name, sizeof(name), 2 + i);
		struct mrec *parent = i < 64 ? &root : m[i / 64 - 1];
		if (parent->ino == 0) /* the parent check inode_link makes */
			exit(1);
		m[i] = mlink(&ix, parent, name, 1, 2 + i);
	}
	double s = bench_now_s() - t0;
	for (size_t i = 0; i < n; i++) {
		free(m[i]->name);
		free(m[i]);
	}
	free(m);
	free(ix.v);
	free(ix.tag);
	return s * 1e9 / (double)n;
}

/* Clears the pause figures before a phase of the benchmark. */
static void pauses_reset(void)
{
	memset(&scavenge_hist, 0, sizeof(scavenge_hist));
	memset(&call_hist, 0, sizeof(call_hist));
	memset(&wall_hist, 0, sizeof(wall_hist));
	other_max_ms = 0;
	others = 0;
	other_max_what[0] = '\0';
}

/* Prints a phase's pauses and checks its worst one against the 1 ms target. */
static void pauses_report(const char *target)
{
	char buf[300];
	printf("  heap pause per call (CPU): %s\n", bench_hist_fmt(&call_hist, buf, sizeof(buf)));
	printf("  call wall time (preemption incl.): %s\n",
	       bench_hist_fmt(&wall_hist, buf, sizeof(buf)));
	printf("  scavenges: %s; other pauses %lu, max %.3f ms (%s)\n",
	       bench_hist_fmt(&scavenge_hist, buf, sizeof(buf)), others, other_max_ms,
	       other_max_what);
	/* What the machine alone does to work of a scavenge's size, timed the same way. */
	bench_noise_print("  ", HEAP_SEMI_SPACE_USED, &scavenge_hist);
	bench_target_le(target, (double)call_hist.max_us / 1000, 1, "ms");
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* The median of v[0..n), which it sorts. */
static double median(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
	size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 1000000;
	const char *runs_env = getenv("RUNS");
	size_t runs = runs_env != NULL ? strtoul(runs_env, NULL, 10) : 5;
	if (n < 100 || runs < 1 || runs > 99) {
		fprintf(stderr, "usage: [RUNS=1..99] [QUICK=1] bench_inode [N >= 100]\n");
		return 2;
	}

	/* Throughput: untimed populates, the heap table and the malloc design alternating, runs
	 * times each (this machine is shared and noisy): medians compared. The bytes per inode
	 * are read after the first populate: nothing is garbage yet, used bytes are live bytes. */
	double link_ns[99], malloc_ns[99], per_inode = 0;
	for (size_t r = 0; r < runs; r++) {
		struct inode_table *t = make();
		double t0 = bench_now_s();
		uint64_t *v = populate(t, n);
		link_ns[r] = (bench_now_s() - t0) * 1e9 / (double)n;
		struct heap_stats hs;
		inode_heap_stats(t, &hs);
		per_inode = (double)hs.heap_used / (double)n;
		inode_table_free(t);
		free(v);
		malloc_ns[r] = malloc_design(n);
	}
	printf("throughput, %zu lookups of new files (find + create + index insert), median of %zu:"
	       "\n",
	       n, runs);
	printf("  malloc design (calloc + strdup + same index, doubling rehash): %.0f ns each\n",
	       median(malloc_ns, runs));
	double link_med = median(link_ns, runs);
	printf("  inode_link runs: %.0f .. %.0f ns\n", link_ns[0], link_ns[runs - 1]);
	bench_target_le("inode_link (heap records, incremental index)", link_med,
			median(malloc_ns, runs), "ns");
	printf("bytes per live inode (name of %d bytes, heap incl. handle table + index): %.1f + "
	       "name\n",
	       NAMELEN, per_inode - NAMELEN);
	bench_target_le("bytes per live inode", per_inode, 96 + NAMELEN, "B");
	if (getenv("QUICK") != NULL)
		return 0;

	/* Pauses: populate again, every call timed. */
	pauses_reset();
	struct inode_table *t = cur = make();
	timed = 1;
	uint64_t *v = populate(t, n);
	printf("populate %zu inodes:\n", n);
	pauses_report("max pause, populate");

	struct heap_stats hs;
	/* Churn: forget a random non-directory inode and look up a new one, 2N times. */
	pauses_reset();
	struct heap_stats before;
	inode_heap_stats(t, &before);
	uint64_t next = 2 + n;
	double t0 = bench_now_s();
	for (size_t i = 0; i < 2 * n; i++) {
		size_t k = n / 64 + rnd() % (n - n / 64); /* beyond the directories */
		forget(t, v[k]);
		v[k] = lookup(t, v[rnd() % (n / 64)], next++);
		if (i % 4 == 0) /* short-lived: a readdirplus entry forgotten at once */
			forget(t, lookup(t, v[rnd() % (n / 64)], next++));
	}
	double churn_s = bench_now_s() - t0;
	inode_heap_stats(t, &hs);
	size_t ops = 2 * (2 * n + 2 * n / 4);
	printf("churn with %zu live: %zu calls in %.2f s (%.0f ns each, timed); %llu mark-sweep, "
	       "%llu mark-compact\n",
	       n, ops, churn_s, churn_s * 1e9 / (double)ops,
	       (unsigned long long)(hs.old.mark_sweeps - before.old.mark_sweeps),
	       (unsigned long long)(hs.old.mark_compacts - before.old.mark_compacts));
	pauses_report("max pause, churn");
	bench_target_le("stop-the-world full collections in normal operation", (double)hs.old.fulls,
			0, "");

	t0 = bench_now_s();
	if (inode_table_collect(t, HEAP_FULL) != 0)
		exit(1);
	printf("explicit full collection, stop-the-world, the last resort (tests, and before "
	       "ENOMEM; normal operation above took it %llu times): %.1f ms\n",
	       (unsigned long long)hs.old.fulls, (bench_now_s() - t0) * 1000);
	inode_table_free(t);
	free(v);
	return 0;
}
