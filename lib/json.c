/*
 * json.c - the JSON writer (see json.h).
 *
 * need_comma is set after every complete value and cleared by an opening bracket and by a
 * key, so separators are always right without the caller counting. Escaping follows RFC 8259:
 * quote, backslash and control characters are escaped; valid UTF-8 sequences are copied as
 * they are; any other byte becomes \u00XX.
 */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void json_init(struct json *j)
{
	memset(j, 0, sizeof(*j));
}

static void put(struct json *j, const char *s, size_t n)
{
	if (j->failed)
		return;
	if (j->len + n + 1 > j->cap) {
		size_t cap = j->cap ? j->cap : 256;
		while (cap < j->len + n + 1)
			cap *= 2;
		char *b = realloc(j->buf, cap);
		if (b == NULL) {
			j->failed = 1;
			return;
		}
		j->buf = b;
		j->cap = cap;
	}
	memcpy(j->buf + j->len, s, n);
	j->len += n;
	j->buf[j->len] = '\0';
}

static void separate(struct json *j)
{
	if (j->need_comma)
		put(j, ",", 1);
	j->need_comma = 0;
}

static void open_bracket(struct json *j, const char *b)
{
	separate(j);
	put(j, b, 1);
}

static void close_bracket(struct json *j, const char *b)
{
	put(j, b, 1);
	j->need_comma = 1;
}

void json_begin_object(struct json *j)
{
	open_bracket(j, "{");
}

void json_end_object(struct json *j)
{
	close_bracket(j, "}");
}

void json_begin_array(struct json *j)
{
	open_bracket(j, "[");
}

void json_end_array(struct json *j)
{
	close_bracket(j, "]");
}

void json_key(struct json *j, const char *key)
{
	json_string(j, key);
	put(j, ":", 1);
	j->need_comma = 0;
}

static void value_text(struct json *j, const char *s, size_t n)
{
	separate(j);
	put(j, s, n);
	j->need_comma = 1;
}

void json_u64(struct json *j, uint64_t v)
{
	char b[24];
	int n = snprintf(b, sizeof(b), "%llu", (unsigned long long)v);
	value_text(j, b, (size_t)n);
}

void json_field_u64(struct json *j, const char *key, uint64_t v)
{
	json_key(j, key);
	json_u64(j, v);
}

void json_double(struct json *j, double v, int decimals)
{
	if (!isfinite(v)) {
		json_null(j);
		return;
	}
	char b[64];
	int n = snprintf(b, sizeof(b), "%.*f", decimals, v);
	value_text(j, b, (size_t)n);
}

void json_bool(struct json *j, int v)
{
	value_text(j, v ? "true" : "false", v ? 4 : 5);
}

void json_null(struct json *j)
{
	value_text(j, "null", 4);
}

/* Length of the valid UTF-8 sequence at s (1-4), or 0 when s does not start one. */
static size_t utf8_len(const unsigned char *s)
{
	if (s[0] < 0x80)
		return 1;
	size_t n;
	unsigned min;
	if ((s[0] & 0xe0) == 0xc0) {
		n = 2;
		min = 0x80;
	} else if ((s[0] & 0xf0) == 0xe0) {
		n = 3;
		min = 0x800;
	} else if ((s[0] & 0xf8) == 0xf0) {
		n = 4;
		min = 0x10000;
	} else {
		return 0;
	}
	unsigned cp = s[0] & (0x7f >> n);
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

void json_string(struct json *j, const char *s)
{
	separate(j);
	put(j, "\"", 1);
	const unsigned char *p = (const unsigned char *)s;
	while (*p != '\0') {
		char esc[8];
		size_t n = utf8_len(p);
		if (*p == '"' || *p == '\\') {
			esc[0] = '\\';
			esc[1] = (char)*p;
			put(j, esc, 2);
			n = 1;
		} else if (n == 1 && *p < 0x20) {
			snprintf(esc, sizeof(esc), "\\u%04x", *p);
			put(j, esc, 6);
		} else if (n == 0) {
			snprintf(esc, sizeof(esc), "\\u%04x", *p);
			put(j, esc, 6);
			n = 1;
		} else {
			put(j, (const char *)p, n);
		}
		p += n;
	}
	put(j, "\"", 1);
	j->need_comma = 1;
}

void json_raw(struct json *j, const char *text, size_t len)
{
	value_text(j, text, len);
}

int json_finish(struct json *j, char **text, size_t *len)
{
	if (j->failed || j->buf == NULL) {
		free(j->buf);
		j->buf = NULL;
		if (j->failed)
			return -ENOMEM;
		*text = strdup("");
		*len = 0;
		return *text ? 0 : -ENOMEM;
	}
	*text = j->buf;
	*len = j->len;
	j->buf = NULL;
	return 0;
}
