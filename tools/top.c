/*
 * top.c - throttlefs-top: a live view of a throttlefs mount, like top(1), drawn from the
 * mount's own virtual attributes.
 *
 * Everything shown comes from four attributes of the mount's root, user.throttlefs.transfers,
 * .memory, .heap and .config, read with getxattr(2) like any other attribute. So the tool needs
 * no socket, no privilege and no FUSE header: whoever can read the mount can watch it, and what
 * it shows is exactly what getfattr shows. A frame is one snapshot of the four, each read with
 * the usual size probe then read (the daemon serves the read from the value it generated for
 * the probe); each must parse as JSON or the frame is refused.
 *
 * The attributes' JSON grows as the daemon grows (the metadata heap's figures will change when
 * the generational heap takes over the inode table), so the renderer looks up the fields it
 * knows and silently skips any that are missing or of another type; unknown ones are ignored.
 *
 * The screen: the first frame clears it, later ones go home and overwrite line by line (each
 * line ends with erase-to-end-of-line, the frame with erase-below), so there is no flicker and
 * no curses. On a terminal the alternate screen is used and the cursor hidden; SIGINT, SIGTERM
 * and SIGHUP only set a flag, so the loop ends where it can restore both. Lines are cut to the
 * terminal's width (TIOCGWINSZ, 80 when unknown) so nothing wraps.
 *
 * Exit status: 0 after --once, --json, or a signal; 1 when reading the mount fails later on;
 * 2 on bad input (a bad option, a path that is not a throttlefs mount).
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "json.h"
#include "jsonr.h"

#define TOP_PREFIX	 "user.throttlefs."
#define TOP_MAX_TRIES	 5 /* size probe + read, again when the value grew in between */
#define TOP_BAR_MIN	 10
#define TOP_MIN_INTERVAL 0.1
#define TOP_MAX_INTERVAL 3600.0

enum { TOP_TRANSFERS, TOP_MEMORY, TOP_HEAP, TOP_CONFIG, TOP_NPARTS };

static const char *const top_parts[TOP_NPARTS] = {"transfers", "memory", "heap", "config"};

/* One frame's worth of the mount's state. */
struct top_snap {
	char *text[TOP_NPARTS];
	size_t len[TOP_NPARTS];
	struct jsonr *doc[TOP_NPARTS];
};

static volatile sig_atomic_t top_stop;

static void top_on_signal(int sig)
{
	(void)sig;
	top_stop = 1;
}

static void top_on_winch(int sig)
{
	(void)sig;
}

/* ---- reading the mount ---- */

/* Reads user.throttlefs.NAME of path into a new NUL-terminated buffer. 0 or -errno. */
static int top_read_attr(const char *path, const char *name, char **text, size_t *len)
{
	char full[64];
	snprintf(full, sizeof(full), TOP_PREFIX "%s", name);
	for (int tries = 0; tries < TOP_MAX_TRIES; tries++) {
		ssize_t size = getxattr(path, full, NULL, 0);
		if (size < 0)
			return -errno;
		char *buf = malloc((size_t)size + 1);
		if (buf == NULL)
			return -ENOMEM;
		ssize_t n = size > 0 ? getxattr(path, full, buf, (size_t)size) : 0;
		if (n < 0) {
			int err = errno;
			free(buf);
			if (err == ERANGE)
				continue; /* grew between probe and read: ask again */
			return -err;
		}
		buf[n] = '\0';
		*text = buf;
		*len = (size_t)n;
		return 0;
	}
	return -ERANGE;
}

static void top_snap_free(struct top_snap *s)
{
	for (int i = 0; i < TOP_NPARTS; i++) {
		free(s->text[i]);
		jsonr_free(s->doc[i]);
	}
	memset(s, 0, sizeof(*s));
}

/* Reads and parses all four parts. 0, or -errno with *failed naming the part (-EBADMSG: not
 * valid JSON). */
static int top_snap_read(const char *mnt, struct top_snap *s, const char **failed)
{
	memset(s, 0, sizeof(*s));
	for (int i = 0; i < TOP_NPARTS; i++) {
		int err = top_read_attr(mnt, top_parts[i], &s->text[i], &s->len[i]);
		if (err == 0 && jsonr_parse(s->text[i], s->len[i], &s->doc[i]) != 0)
			err = -EBADMSG;
		if (err != 0) {
			*failed = top_parts[i];
			top_snap_free(s);
			return err;
		}
	}
	return 0;
}

/* ---- numbers for people ---- */

/* 512 B, 1.5 KiB, 12.3 MiB, 1.2 GiB, 3.0 TiB. */
static char *top_bytes(char *buf, size_t len, double bytes)
{
	static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
	size_t u = 0;
	while (bytes >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
		bytes /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%.0f B", bytes);
	else
		snprintf(buf, len, "%.1f %s", bytes, units[u]);
	return buf;
}

/* 12.3 MiB/s; "unlimited" for 0 when zero_is_unlimited (a limit, not a speed). */
static char *top_rate(char *buf, size_t len, double rate, int zero_is_unlimited)
{
	if (rate <= 0 && zero_is_unlimited) {
		snprintf(buf, len, "unlimited");
		return buf;
	}
	top_bytes(buf, len, rate);
	size_t l = strlen(buf);
	snprintf(buf + l, len - l, "/s");
	return buf;
}

/* 1h02m03s, 2m03s, 3s. */
static char *top_eta(char *buf, size_t len, double secs)
{
	unsigned long s = secs > 0 ? (unsigned long)(secs + 0.5) : 0;
	unsigned long h = s / 3600, m = s / 60 % 60;
	if (h > 0)
		snprintf(buf, len, "%luh%02lum%02lus", h, m, s % 60);
	else if (m > 0)
		snprintf(buf, len, "%lum%02lus", m, s % 60);
	else
		snprintf(buf, len, "%lus", s);
	return buf;
}

/* ---- JSON fields, tolerantly ---- */

/* The number at key of obj, or -1 when missing or not a number. */
static double top_num(const struct jsonr_value *obj, const char *key)
{
	double x;
	return jsonr_double(jsonr_get(obj, key), &x) == 0 ? x : -1;
}

/* ---- drawing ---- */

struct top_screen {
	FILE *f;   /* the frame being drawn (open_memstream) */
	int width; /* columns */
	int rows;  /* lines available for the frame; 0: no limit */
	int live;  /* end lines with erase-to-end-of-line */
	int lines; /* lines drawn so far */
};

/* Appends s cut to at most cols columns (UTF-8 aware: continuation bytes take no column). */
static void top_put_cut(FILE *f, const char *s, int cols)
{
	int used = 0;
	const char *p = s;
	for (; *p != '\0'; p++) {
		if (((unsigned char)*p & 0xc0) != 0x80 && used++ == cols)
			break;
	}
	fwrite(s, 1, (size_t)(p - s), f);
}

static void top_line(struct top_screen *sc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* One line of the frame, cut to the screen's width. */
static void top_line(struct top_screen *sc, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	top_put_cut(sc->f, buf, sc->width);
	fputs(sc->live ? "\033[K\n" : "\n", sc->f);
	sc->lines++;
}

/* Columns taken by s. */
static int top_cols(const char *s)
{
	int n = 0;
	for (; *s != '\0'; s++)
		n += ((unsigned char)*s & 0xc0) != 0x80;
	return n;
}

/* s fitted into cols columns: its tail after "..." when too long. */
static const char *top_fit(const char *s, int cols, char *buf, size_t len)
{
	int n = top_cols(s);
	if (n <= cols || cols < 4)
		return s;
	int drop = n - (cols - 3);
	const char *p = s;
	while (drop > 0 || ((unsigned char)*p & 0xc0) == 0x80) {
		if (((unsigned char)*p & 0xc0) != 0x80)
			drop--;
		p++;
	}
	/* The tail fits the columns; a tail of wide characters may still outrun buf's bytes,
	 * so it is cut there, at a character's start. */
	if (len < 4)
		return s;
	size_t rest = strlen(p);
	if (rest > len - 4) {
		rest = len - 4;
		while (rest > 0 && ((unsigned char)p[rest] & 0xc0) == 0x80)
			rest--;
	}
	memcpy(buf, "...", 3);
	memcpy(buf + 3, p, rest);
	buf[3 + rest] = '\0';
	return buf;
}

/* [####----....]: done and pending fractions (0..1) of width columns, brackets included. */
static char *top_bar(char *buf, int width, double done, double pending)
{
	int inner = width - 2;
	int d = (int)(done * inner + 0.5), p = (int)((done + pending) * inner + 0.5);
	d = d < 0 ? 0 : d > inner ? inner : d;
	p = p < d ? d : p > inner ? inner : p;
	buf[0] = '[';
	for (int i = 0; i < inner; i++)
		buf[1 + i] = i < d ? '#' : i < p ? '-' : '.';
	buf[width - 1] = ']';
	buf[width] = '\0';
	return buf;
}

/* "used / size" of a heap space given as an object {used, size} or a bare number. */
static int top_space(const struct jsonr_value *v, char *buf, size_t len)
{
	char a[32], b[32];
	double x;
	if (jsonr_double(v, &x) == 0) {
		snprintf(buf, len, "%s", top_bytes(a, sizeof(a), x));
		return 1;
	}
	double used = top_num(v, "used"), size = top_num(v, "size");
	if (used >= 0 && size >= 0)
		snprintf(buf, len, "%s / %s", top_bytes(a, sizeof(a), used),
			 top_bytes(b, sizeof(b), size));
	else if (size >= 0 || used >= 0)
		snprintf(buf, len, "%s", top_bytes(a, sizeof(a), size >= 0 ? size : used));
	else
		return 0;
	return 1;
}

/* Appends " label value" to line (of len bytes) when the value is there. */
static void top_add(char *line, size_t len, const char *label, const char *value)
{
	size_t l = strlen(line);
	snprintf(line + l, len - l, "%s%s %s", l > 0 ? "   " : "", label, value);
}

static void top_draw_heap(struct top_screen *sc, const struct jsonr_value *heap)
{
	char line[512] = "", v[96], a[32];
	const char *impl = jsonr_string(jsonr_get(heap, "implementation"));
	double inodes = top_num(heap, "inodes"), peak = top_num(heap, "peak_inodes");
	if (inodes >= 0) {
		if (peak >= 0)
			snprintf(v, sizeof(v), "%.0f (peak %.0f)", inodes, peak);
		else
			snprintf(v, sizeof(v), "%.0f", inodes);
		top_add(line, sizeof(line), "inodes", v);
	}
	double x;
	if ((x = top_num(heap, "bytes")) >= 0)
		top_add(line, sizeof(line), "bytes", top_bytes(a, sizeof(a), x));
	if ((x = top_num(heap, "objects")) >= 0) {
		snprintf(v, sizeof(v), "%.0f", x);
		top_add(line, sizeof(line), "objects", v);
	}
	double used = top_num(heap, "heap_used"), total = top_num(heap, "heap_total");
	if (used >= 0 && total >= 0) {
		char b[32];
		snprintf(v, sizeof(v), "%s / %s", top_bytes(a, sizeof(a), used),
			 top_bytes(b, sizeof(b), total));
		top_add(line, sizeof(line), "used", v);
	}
	top_line(sc, "Heap       %s%s%s", impl ? impl : "", impl && *line ? ": " : "", line);
	line[0] = '\0';
	if (top_space(jsonr_get(heap, "young"), v, sizeof(v)))
		top_add(line, sizeof(line), "young", v);
	if (top_space(jsonr_get(heap, "old"), v, sizeof(v)))
		top_add(line, sizeof(line), "old", v);
	if (*line)
		top_line(sc, "           %s", line);
}

/* Two lines for one transfer: its path and state, then bar and figures. */
static void top_draw_transfer(struct top_screen *sc, const struct jsonr_value *t)
{
	char fit[4096], bar[512], a[32], b[32], c[32], tail[192];
	const char *path = jsonr_string(jsonr_get(t, "path"));
	const char *state = jsonr_string(jsonr_get(t, "state"));
	if (state == NULL)
		state = "?";
	int pw = sc->width - 1 - (int)strlen(state);
	top_line(sc, "%-*s %s", pw, top_fit(path ? path : "(unlinked)", pw, fit, sizeof(fit)),
		 state);

	double committed = top_num(t, "committed"), received = top_num(t, "received");
	double expected = top_num(t, "expected"), rate = top_num(t, "rate");
	double percent = top_num(t, "percent"), eta = top_num(t, "eta");
	committed = committed < 0 ? 0 : committed;
	received = received < committed ? committed : received;
	/* With a known size the bar is of the size; without, of what was received so far. */
	double whole = expected > 0 ? expected : received;
	double done = whole > 0 ? committed / whole : 0;
	double pending = whole > 0 ? (received - committed) / whole : 0;
	size_t l = 0;
	if (expected > 0)
		l += (size_t)snprintf(tail + l, sizeof(tail) - l, " %s / %s",
				      top_bytes(a, sizeof(a), committed),
				      top_bytes(b, sizeof(b), expected));
	else
		l += (size_t)snprintf(tail + l, sizeof(tail) - l, " %s",
				      top_bytes(a, sizeof(a), committed));
	if (percent >= 0)
		l += (size_t)snprintf(tail + l, sizeof(tail) - l, " %5.1f%%", percent);
	l += (size_t)snprintf(tail + l, sizeof(tail) - l, " %s",
			      top_rate(c, sizeof(c), rate < 0 ? 0 : rate, 0));
	if (eta >= 0)
		snprintf(tail + l, sizeof(tail) - l, " ETA %s", top_eta(a, sizeof(a), eta));
	int bw = sc->width - 2 - (int)strlen(tail);
	if (bw > (int)sizeof(bar) - 1)
		bw = (int)sizeof(bar) - 1;
	if (bw >= TOP_BAR_MIN)
		top_line(sc, "  %s%s", top_bar(bar, bw, done, pending), tail);
	else
		top_line(sc, " %s", tail);
}

/* Draws one frame of s for mnt into sc. */
static void top_draw(struct top_screen *sc, const char *mnt, const struct top_snap *s)
{
	const struct jsonr_value *tr = jsonr_root(s->doc[TOP_TRANSFERS]);
	const struct jsonr_value *mem = jsonr_root(s->doc[TOP_MEMORY]);
	const struct jsonr_value *heap = jsonr_root(s->doc[TOP_HEAP]);
	const struct jsonr_value *cfg = jsonr_root(s->doc[TOP_CONFIG]);
	const struct jsonr_value *totals = jsonr_get(tr, "totals");
	const struct jsonr_value *active = jsonr_get(tr, "active");
	char a[32], b[32], line[512], clock[16];

	time_t now = time(NULL);
	struct tm tm;
	strftime(clock, sizeof(clock), "%H:%M:%S", localtime_r(&now, &tm));
	char title[4096];
	snprintf(title, sizeof(title), "throttlefs-top %s on %s", THROTTLEFS_VERSION, mnt);
	int tw = sc->width - 1 - (int)strlen(clock);
	top_line(sc, "%-*s %s", tw, top_fit(title, tw, line, sizeof(line)), clock);

	line[0] = '\0';
	size_t n_active = jsonr_len(active);
	double x;
	snprintf(a, sizeof(a), "%zu", n_active);
	top_add(line, sizeof(line), "active", a);
	if ((x = top_num(totals, "files_done")) >= 0) {
		snprintf(a, sizeof(a), "%.0f", x);
		top_add(line, sizeof(line), "done", a);
	}
	if ((x = top_num(totals, "throughput")) >= 0)
		top_add(line, sizeof(line), "throughput", top_rate(a, sizeof(a), x, 0));
	if ((x = top_num(totals, "bytes_committed")) >= 0)
		top_add(line, sizeof(line), "committed", top_bytes(a, sizeof(a), x));
	top_line(sc, "Transfers  %s", line);

	line[0] = '\0';
	if ((x = top_num(cfg, "rate")) >= 0)
		top_add(line, sizeof(line), "rate", top_rate(a, sizeof(a), x, 1));
	if ((x = top_num(cfg, "file_rate")) >= 0)
		top_add(line, sizeof(line), "per file", top_rate(a, sizeof(a), x, 1));
	top_line(sc, "Limits     %s", line);

	double buffered = top_num(mem, "buffered"), budget = top_num(mem, "buffer_budget");
	line[0] = '\0';
	if (buffered >= 0 && budget > 0) {
		char bar[32];
		snprintf(line, sizeof(line), "%s %s / %s (%.0f%%)",
			 top_bar(bar, 22, buffered / budget, 0), top_bytes(a, sizeof(a), buffered),
			 top_bytes(b, sizeof(b), budget), 100.0 * buffered / budget);
	}
	if ((x = top_num(totals, "parked_writes")) >= 0) {
		snprintf(a, sizeof(a), "%.0f", x);
		top_add(line, sizeof(line), "parked writes", a);
	}
	top_line(sc, "Buffers    %s", line);

	line[0] = '\0';
	if ((x = top_num(mem, "rss")) >= 0)
		top_add(line, sizeof(line), "rss", top_bytes(a, sizeof(a), x));
	if ((x = top_num(mem, "peak_rss")) >= 0)
		top_add(line, sizeof(line), "peak", top_bytes(a, sizeof(a), x));
	if ((x = top_num(mem, "peak_external")) >= 0)
		top_add(line, sizeof(line), "buffers peak", top_bytes(a, sizeof(a), x));
	top_line(sc, "Memory     %s", line);
	top_draw_heap(sc, heap);

	top_line(sc, "%s", "");
	size_t fits = n_active;
	if (sc->rows > 0) {
		int left = sc->rows - sc->lines - 1; /* keep a line for "... more" */
		fits = left > 1 ? (size_t)left / 2 : 0;
		if (fits + 1 >= n_active && (size_t)(sc->rows - sc->lines) >= 2 * n_active)
			fits = n_active;
	}
	for (size_t i = 0; i < n_active && i < fits; i++)
		top_draw_transfer(sc, jsonr_at(active, i));
	if (fits < n_active)
		top_line(sc, "... and %zu more", n_active - fits);
	if (n_active == 0)
		top_line(sc, "(no active transfer)");
}

/* ---- the terminal ---- */

static void top_screen_size(int *cols, int *rows)
{
	struct winsize ws;
	*cols = 80;
	*rows = 0;
	if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) {
		*cols = ws.ws_col;
		*rows = ws.ws_row;
	}
}

static int top_write_all(const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(STDOUT_FILENO, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Draws s and writes it out in one write; prefix (escape sequences) goes first. */
static int top_show(const char *mnt, const struct top_snap *s, int live, const char *prefix)
{
	char *frame = NULL;
	size_t len = 0;
	struct top_screen sc = {.live = live};
	sc.f = open_memstream(&frame, &len);
	if (sc.f == NULL)
		return -errno;
	top_screen_size(&sc.width, &sc.rows);
	if (!live)
		sc.rows = 0;
	fputs(prefix, sc.f);
	top_draw(&sc, mnt, s);
	if (live)
		fputs("\033[J", sc.f);
	int err = fclose(sc.f) == 0 ? 0 : -errno;
	if (err == 0)
		err = top_write_all(frame, len);
	free(frame);
	return err;
}

/* Sleeps secs, or less when a signal comes. */
static void top_sleep(double secs)
{
	struct timespec ts = {(time_t)secs, (long)((secs - floor(secs)) * 1e9)};
	nanosleep(&ts, NULL); /* EINTR is how a signal ends the wait: the loop checks the flag */
}

/* ---- the modes ---- */

static int top_fail(const char *mnt, const char *part, int err)
{
	if (err == -EBADMSG)
		fprintf(stderr, "throttlefs-top: %s: user.throttlefs.%s is not valid JSON\n", mnt,
			part);
	else
		fprintf(stderr, "throttlefs-top: %s: reading user.throttlefs.%s: %s\n", mnt, part,
			strerror(-err));
	return 1;
}

static int top_json(const char *mnt)
{
	struct top_snap s;
	const char *part = NULL;
	int err = top_snap_read(mnt, &s, &part);
	if (err != 0)
		return top_fail(mnt, part, err);
	struct json j;
	json_init(&j);
	json_begin_object(&j);
	for (int i = 0; i < TOP_NPARTS; i++) {
		json_key(&j, top_parts[i]);
		json_raw(&j, s.text[i], s.len[i]);
	}
	json_end_object(&j);
	top_snap_free(&s);
	char *text;
	size_t len;
	err = json_finish(&j, &text, &len);
	if (err == 0) {
		text[len] = '\n'; /* the NUL's place */
		err = top_write_all(text, len + 1);
		free(text);
	}
	if (err != 0) {
		fprintf(stderr, "throttlefs-top: writing the output: %s\n", strerror(-err));
		return 1;
	}
	return 0;
}

static int top_loop(const char *mnt, double interval, int once)
{
	int tty = !once && isatty(STDOUT_FILENO);
	/* No SA_RESTART: a signal ends the sleep. SIGWINCH only wakes it for an early redraw at
	 * the new size. */
	struct sigaction sa = {.sa_handler = top_on_signal}, winch = {.sa_handler = top_on_winch};
	sigemptyset(&sa.sa_mask);
	sigemptyset(&winch.sa_mask);
	if (!once &&
	    (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0 ||
	     sigaction(SIGHUP, &sa, NULL) != 0 || sigaction(SIGWINCH, &winch, NULL) != 0)) {
		fprintf(stderr, "throttlefs-top: sigaction: %s\n", strerror(errno));
		return 1;
	}
	if (tty && top_write_all("\033[?1049h\033[?25l", 14) != 0)
		return 1;
	const char *prefix = once ? "" : "\033[H\033[2J";
	int rc = 0;
	while (!top_stop) {
		struct top_snap s;
		const char *part = NULL;
		int err = top_snap_read(mnt, &s, &part);
		if (err != 0) {
			if (tty)
				top_write_all("\033[?25h\033[?1049l", 14);
			tty = 0;
			rc = top_fail(mnt, part, err);
			break;
		}
		err = top_show(mnt, &s, !once, prefix);
		top_snap_free(&s);
		if (err != 0) {
			rc = 1;
			break;
		}
		if (once)
			break;
		prefix = "\033[H";
		top_sleep(interval);
	}
	if (tty && top_write_all("\033[?25h\033[?1049l", 14) != 0)
		rc = 1;
	return rc;
}

/* ---- the command line ---- */

static void top_usage(FILE *f)
{
	fprintf(f,
		"usage: throttlefs-top [options] MOUNTPOINT\n"
		"Shows the transfers, rates, buffers and memory of a throttlefs mount.\n"
		"  -i, --interval SECONDS  time between frames (default 1, 0.1 to 3600)\n"
		"      --once              print one frame and exit\n"
		"      --json              print {\"transfers\",\"memory\",\"heap\",\"config\"} as "
		"JSON and exit\n"
		"  -h, --help              this help\n"
		"  -V, --version           the version\n");
}

/* Seconds from text: a number from TOP_MIN_INTERVAL to TOP_MAX_INTERVAL. 0 or -EINVAL. */
static int top_interval(const char *text, double *out)
{
	char *end;
	errno = 0;
	double x = strtod(text, &end);
	if (errno != 0 || end == text || *end != '\0' || !isfinite(x) || x < TOP_MIN_INTERVAL ||
	    x > TOP_MAX_INTERVAL)
		return -EINVAL;
	*out = x;
	return 0;
}

/* Whether mnt is a throttlefs mount: its root answers user.throttlefs.config. 0, or 2 after
 * one line saying why not. */
static int top_check(const char *mnt)
{
	char *text;
	size_t len;
	int err = top_read_attr(mnt, "config", &text, &len);
	if (err == 0) {
		free(text);
		return 0;
	}
	if (err == -ENODATA || err == -ENOTSUP)
		fprintf(stderr, "throttlefs-top: %s is not a throttlefs mount\n", mnt);
	else
		fprintf(stderr, "throttlefs-top: %s: %s\n", mnt, strerror(-err));
	return 2;
}

int main(int argc, char **argv)
{
	enum { OPT_ONCE = 256, OPT_JSON };
	static const struct option longs[] = {
	    {"interval", required_argument, NULL, 'i'}, {"once", no_argument, NULL, OPT_ONCE},
	    {"json", no_argument, NULL, OPT_JSON},	{"help", no_argument, NULL, 'h'},
	    {"version", no_argument, NULL, 'V'},	{NULL, 0, NULL, 0},
	};
	double interval = 1.0;
	int once = 0, json = 0, c;
	opterr = 0; /* our own one-line messages */
	while ((c = getopt_long(argc, argv, ":i:hV", longs, NULL)) != -1) {
		switch (c) {
		case 'i':
			if (top_interval(optarg, &interval) != 0) {
				fprintf(stderr,
					"throttlefs-top: bad interval '%s' (seconds, %g to %g)\n",
					optarg, TOP_MIN_INTERVAL, TOP_MAX_INTERVAL);
				return 2;
			}
			break;
		case OPT_ONCE:
			once = 1;
			break;
		case OPT_JSON:
			json = 1;
			break;
		case 'h':
			top_usage(stdout);
			return 0;
		case 'V':
			printf("throttlefs-top %s\n", THROTTLEFS_VERSION);
			return 0;
		case ':':
			fprintf(stderr, "throttlefs-top: option '%s' needs a value\n",
				argv[optind - 1]);
			return 2;
		default:
			if (optopt != 0 && optopt < 256)
				fprintf(stderr,
					"throttlefs-top: unknown option '-%c' (try --help)\n",
					optopt);
			else
				fprintf(stderr,
					"throttlefs-top: unknown option '%s' (try --help)\n",
					argv[optind - 1]);
			return 2;
		}
	}
	if (optind != argc - 1) {
		fprintf(stderr, "throttlefs-top: %s (try --help)\n",
			optind == argc ? "missing MOUNTPOINT" : "only one MOUNTPOINT, please");
		return 2;
	}
	const char *mnt = argv[optind];
	int rc = top_check(mnt);
	if (rc != 0)
		return rc;
	return json ? top_json(mnt) : top_loop(mnt, interval, once);
}
