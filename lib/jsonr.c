/*
 * jsonr.c - a strict JSON reader into one flat array of values.
 *
 * A document is the values of the text in pre-order, in one array: a container is followed by
 * its whole subtree, and each value records how many array slots its subtree takes (skip), so
 * the next sibling of v is v + v->skip and the first child of a container is v + 1. An
 * object's children alternate key (a string value) and value. No value points to another, so
 * the array may move while it grows during the parse, and a finished document is two blocks:
 * the values and the decoded strings.
 *
 * Decoded strings go into one arena sized to the text: a decoded string plus its NUL never
 * takes more bytes than its quoted form (an escape is never shorter than what it stands for),
 * so the arena never grows and string pointers stay put.
 *
 * Strictness is the point: the e2e tests use this reader to check that the daemon writes valid
 * JSON, so anything RFC 8259 forbids (raw control characters, invalid UTF-8, lone trailing
 * commas, leading zeros, trailing text) is -EINVAL. A lone \u surrogate escape, which RFC 8259
 * allows but which has no UTF-8 form, is decoded as U+FFFD.
 */
#include "jsonr.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define JSONR_MAX_DEPTH 64

struct jsonr_value {
	enum jsonr_type type;
	int is_u64;	 /* a number written as plain digits that fits a uint64_t */
	size_t skip;	 /* slots of this value's subtree, itself included */
	size_t count;	 /* array elements or object members */
	double num;	 /* JSONR_NUMBER */
	uint64_t u64;	 /* JSONR_NUMBER when is_u64 */
	const char *str; /* JSONR_STRING: into the arena */
	int truth;	 /* JSONR_BOOL */
};

struct jsonr {
	struct jsonr_value *v;
	size_t n, cap;
	char *arena;
	size_t alen;
};

struct parser {
	const char *p, *end;
	struct jsonr *doc;
	int depth;
};

/* ---- parsing ---- */

static void skip_ws(struct parser *ps)
{
	while (ps->p < ps->end &&
	       (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
		ps->p++;
}

/* Appends a value of type t; returns its index, or -ENOMEM. */
static long add(struct parser *ps, enum jsonr_type t)
{
	struct jsonr *d = ps->doc;
	if (d->n == d->cap) {
		size_t cap = d->cap ? 2 * d->cap : 32;
		struct jsonr_value *v = realloc(d->v, cap * sizeof(*v));
		if (v == NULL)
			return -ENOMEM;
		d->v = v;
		d->cap = cap;
	}
	memset(&d->v[d->n], 0, sizeof(d->v[0]));
	d->v[d->n].type = t;
	d->v[d->n].skip = 1;
	return (long)d->n++;
}

static int literal(struct parser *ps, const char *word, enum jsonr_type t, int truth)
{
	size_t l = strlen(word);
	if ((size_t)(ps->end - ps->p) < l || memcmp(ps->p, word, l) != 0)
		return -EINVAL;
	ps->p += l;
	long i = add(ps, t);
	if (i < 0)
		return (int)i;
	ps->doc->v[i].truth = truth;
	return 0;
}

static int is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static int number(struct parser *ps)
{
	const char *s = ps->p, *q = s;
	int plain = 1; /* only digits: a candidate for exact u64 */
	if (q < ps->end && *q == '-') {
		q++;
		plain = 0;
	}
	if (q >= ps->end || !is_digit(*q))
		return -EINVAL;
	if (*q == '0')
		q++; /* no leading zeros: "01" ends after the 0 and fails at the 1 */
	else
		while (q < ps->end && is_digit(*q))
			q++;
	if (q < ps->end && *q == '.') {
		plain = 0;
		q++;
		if (q >= ps->end || !is_digit(*q))
			return -EINVAL;
		while (q < ps->end && is_digit(*q))
			q++;
	}
	if (q < ps->end && (*q == 'e' || *q == 'E')) {
		plain = 0;
		q++;
		if (q < ps->end && (*q == '+' || *q == '-'))
			q++;
		if (q >= ps->end || !is_digit(*q))
			return -EINVAL;
		while (q < ps->end && is_digit(*q))
			q++;
	}
	size_t l = (size_t)(q - s);
	char small[64];
	char *copy = l < sizeof(small) ? small : malloc(l + 1);
	if (copy == NULL)
		return -ENOMEM;
	memcpy(copy, s, l);
	copy[l] = '\0';
	double d = strtod(copy, NULL);
	if (copy != small)
		free(copy);
	long i = add(ps, JSONR_NUMBER);
	if (i < 0)
		return (int)i;
	struct jsonr_value *v = &ps->doc->v[i];
	v->num = d;
	if (plain) {
		uint64_t u = 0;
		const char *c;
		for (c = s; c < q; c++) {
			uint64_t digit = (uint64_t)(*c - '0');
			if (u > (UINT64_MAX - digit) / 10)
				break;
			u = u * 10 + digit;
		}
		v->is_u64 = c == q;
		v->u64 = u;
	}
	ps->p = q;
	return 0;
}

static int hex4(const char *p, unsigned *out)
{
	unsigned x = 0;
	for (int i = 0; i < 4; i++) {
		char c = p[i];
		x <<= 4;
		if (c >= '0' && c <= '9')
			x |= (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			x |= (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			x |= (unsigned)(c - 'A' + 10);
		else
			return -EINVAL;
	}
	*out = x;
	return 0;
}

static size_t put_utf8(char *o, unsigned cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xc0 | (cp >> 6));
		o[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xe0 | (cp >> 12));
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		o[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	o[0] = (char)(0xf0 | (cp >> 18));
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	o[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

/* Length of the valid UTF-8 sequence at p (lead byte >= 0x80), or 0 if invalid. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
	unsigned char c = p[0];
	size_t n;
	unsigned cp, min;
	if (c >= 0xc2 && c <= 0xdf) {
		n = 2, cp = c & 0x1f, min = 0x80;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 3, cp = c & 0x0f, min = 0x800;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4, cp = c & 0x07, min = 0x10000;
	} else {
		return 0;
	}
	if ((size_t)(end - p) < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

/* Decodes the string at ps->p (on its opening quote) into the arena. */
static int string(struct parser *ps)
{
	struct jsonr *d = ps->doc;
	char *out = d->arena + d->alen, *o = out;
	const char *p = ps->p + 1;
	for (;;) {
		if (p >= ps->end)
			return -EINVAL;
		unsigned char c = (unsigned char)*p;
		if (c == '"')
			break;
		if (c < 0x20)
			return -EINVAL;
		if (c >= 0x80) {
			size_t n =
			    utf8_len((const unsigned char *)p, (const unsigned char *)ps->end);
			if (n == 0)
				return -EINVAL;
			memcpy(o, p, n);
			o += n;
			p += n;
			continue;
		}
		if (c != '\\') {
			*o++ = (char)c;
			p++;
			continue;
		}
		if (++p >= ps->end)
			return -EINVAL;
		const char *simple = "\"\"\\\\//b\bf\fn\nr\rt\t";
		const char *m = NULL;
		for (const char *s = simple; *s != '\0'; s += 2)
			if (*s == *p)
				m = s;
		if (m != NULL) {
			*o++ = m[1];
			p++;
			continue;
		}
		unsigned cp;
		if (*p != 'u' || ps->end - p < 5 || hex4(p + 1, &cp) != 0)
			return -EINVAL;
		p += 5;
		if (cp >= 0xd800 && cp <= 0xdbff) {
			unsigned lo;
			if (ps->end - p >= 6 && p[0] == '\\' && p[1] == 'u' &&
			    hex4(p + 2, &lo) == 0 && lo >= 0xdc00 && lo <= 0xdfff) {
				cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
				p += 6;
			} else {
				cp = 0xfffd;
			}
		} else if (cp >= 0xdc00 && cp <= 0xdfff) {
			cp = 0xfffd;
		}
		o += put_utf8(o, cp);
	}
	*o++ = '\0';
	long i = add(ps, JSONR_STRING);
	if (i < 0)
		return (int)i;
	d->v[i].str = out;
	d->alen += (size_t)(o - out);
	ps->p = p + 1;
	return 0;
}

static int value(struct parser *ps);

/* An array or object at ps->p (on its opening bracket). */
static int container(struct parser *ps, enum jsonr_type t)
{
	char close = t == JSONR_ARRAY ? ']' : '}';
	if (++ps->depth > JSONR_MAX_DEPTH)
		return -EINVAL;
	long i = add(ps, t);
	if (i < 0)
		return (int)i;
	ps->p++;
	skip_ws(ps);
	size_t count = 0;
	if (ps->p < ps->end && *ps->p == close) {
		ps->p++;
	} else {
		for (;;) {
			skip_ws(ps);
			int err;
			if (t == JSONR_OBJECT) {
				if (ps->p >= ps->end || *ps->p != '"')
					return -EINVAL;
				if ((err = string(ps)) != 0)
					return err;
				skip_ws(ps);
				if (ps->p >= ps->end || *ps->p != ':')
					return -EINVAL;
				ps->p++;
			}
			if ((err = value(ps)) != 0)
				return err;
			count++;
			skip_ws(ps);
			if (ps->p >= ps->end)
				return -EINVAL;
			if (*ps->p == close) {
				ps->p++;
				break;
			}
			if (*ps->p != ',')
				return -EINVAL;
			ps->p++;
		}
	}
	ps->doc->v[i].count = count;
	ps->doc->v[i].skip = ps->doc->n - (size_t)i;
	ps->depth--;
	return 0;
}

static int value(struct parser *ps)
{
	skip_ws(ps);
	if (ps->p >= ps->end)
		return -EINVAL;
	switch (*ps->p) {
	case '{':
		return container(ps, JSONR_OBJECT);
	case '[':
		return container(ps, JSONR_ARRAY);
	case '"':
		return string(ps);
	case 't':
		return literal(ps, "true", JSONR_BOOL, 1);
	case 'f':
		return literal(ps, "false", JSONR_BOOL, 0);
	case 'n':
		return literal(ps, "null", JSONR_NULL, 0);
	default:
		return number(ps);
	}
}

int jsonr_parse(const char *text, size_t len, struct jsonr **out)
{
	struct jsonr *d = calloc(1, sizeof(*d));
	if (d == NULL)
		return -ENOMEM;
	d->arena = malloc(len + 1);
	if (d->arena == NULL) {
		free(d);
		return -ENOMEM;
	}
	struct parser ps = {text, text + len, d, 0};
	int err = value(&ps);
	skip_ws(&ps);
	if (err == 0 && ps.p != ps.end)
		err = -EINVAL;
	if (err != 0) {
		jsonr_free(d);
		return err;
	}
	*out = d;
	return 0;
}

void jsonr_free(struct jsonr *doc)
{
	if (doc == NULL)
		return;
	free(doc->v);
	free(doc->arena);
	free(doc);
}

/* ---- access ---- */

const struct jsonr_value *jsonr_root(const struct jsonr *doc)
{
	return doc != NULL && doc->n > 0 ? &doc->v[0] : NULL;
}

enum jsonr_type jsonr_type(const struct jsonr_value *v)
{
	return v != NULL ? v->type : JSONR_NULL;
}

size_t jsonr_len(const struct jsonr_value *v)
{
	return v != NULL && (v->type == JSONR_ARRAY || v->type == JSONR_OBJECT) ? v->count : 0;
}

/* Child slot i of a container: elements of an array, keys and values of an object. */
static const struct jsonr_value *child(const struct jsonr_value *v, size_t i)
{
	const struct jsonr_value *c = v + 1;
	for (; i > 0; i--)
		c += c->skip;
	return c;
}

const struct jsonr_value *jsonr_at(const struct jsonr_value *v, size_t i)
{
	if (i >= jsonr_len(v))
		return NULL;
	return v->type == JSONR_ARRAY ? child(v, i) : child(v, 2 * i + 1);
}

const char *jsonr_key_at(const struct jsonr_value *obj, size_t i)
{
	if (jsonr_type(obj) != JSONR_OBJECT || i >= obj->count)
		return NULL;
	return child(obj, 2 * i)->str;
}

const struct jsonr_value *jsonr_get(const struct jsonr_value *obj, const char *key)
{
	if (jsonr_type(obj) != JSONR_OBJECT)
		return NULL;
	const struct jsonr_value *c = obj + 1;
	for (size_t i = 0; i < obj->count; i++) {
		const struct jsonr_value *val = c + 1; /* a key is a string: one slot */
		if (strcmp(c->str, key) == 0)
			return val;
		c = val + val->skip;
	}
	return NULL;
}

int jsonr_double(const struct jsonr_value *v, double *out)
{
	if (jsonr_type(v) != JSONR_NUMBER)
		return -EINVAL;
	*out = v->num;
	return 0;
}

int jsonr_u64(const struct jsonr_value *v, uint64_t *out)
{
	if (jsonr_type(v) != JSONR_NUMBER || !v->is_u64)
		return -EINVAL;
	*out = v->u64;
	return 0;
}

const char *jsonr_string(const struct jsonr_value *v)
{
	return jsonr_type(v) == JSONR_STRING ? v->str : NULL;
}

int jsonr_bool(const struct jsonr_value *v, int *out)
{
	if (jsonr_type(v) != JSONR_BOOL)
		return -EINVAL;
	*out = v->truth;
	return 0;
}
