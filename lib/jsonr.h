/*
 * jsonr.h - a small strict JSON reader, the counterpart of json.h, for the tools that read
 * the daemon's virtual attributes (throttlefs-top, the e2e tests).
 *
 * jsonr_parse turns a whole text into one read-only document; values are then reached by
 * key or index. Parsing is strict (RFC 8259: no trailing commas, no comments, no control
 * characters or invalid UTF-8 in strings, nothing after the value), so a caller that gets a
 * document knows the text was valid JSON. Lookups are tolerant: asking for a missing key, or
 * for a value of the wrong type, gives NULL or an error, never a crash, so a reader skips what
 * it does not know and survives fields that come and go.
 */
#ifndef THROTTLEFS_JSONR_H
#define THROTTLEFS_JSONR_H

#include <stddef.h>
#include <stdint.h>

enum jsonr_type {
	JSONR_NULL,
	JSONR_BOOL,
	JSONR_NUMBER,
	JSONR_STRING,
	JSONR_ARRAY,
	JSONR_OBJECT,
};

struct jsonr;	    /* a parsed document */
struct jsonr_value; /* one value inside it; lives as long as the document */

/* Parses text[0..len). Returns 0 and the document, -EINVAL for text that is not one valid
 * JSON value (nested at most 64 deep), or -ENOMEM. */
int jsonr_parse(const char *text, size_t len, struct jsonr **out);
void jsonr_free(struct jsonr *doc);

const struct jsonr_value *jsonr_root(const struct jsonr *doc);
/* The type of v; JSONR_NULL for v == NULL too. */
enum jsonr_type jsonr_type(const struct jsonr_value *v);
/* The value of key in object obj (the first one if repeated); NULL if obj is not an object
 * (or NULL) or has no such key. */
const struct jsonr_value *jsonr_get(const struct jsonr_value *obj, const char *key);
/* Elements of an array, members of an object; 0 for anything else. */
size_t jsonr_len(const struct jsonr_value *v);
/* Element i of an array (for an object: the value of member i); NULL when out of range. */
const struct jsonr_value *jsonr_at(const struct jsonr_value *v, size_t i);
/* The key of member i of an object; NULL when out of range or not an object. */
const char *jsonr_key_at(const struct jsonr_value *obj, size_t i);
/* 0 and the number, or -EINVAL if v is not a number. */
int jsonr_double(const struct jsonr_value *v, double *out);
/* 0 and the number, or -EINVAL if v is not a whole number in 0..UINT64_MAX (exact: read
 * from the text, not through a double). */
int jsonr_u64(const struct jsonr_value *v, uint64_t *out);
/* The decoded string (UTF-8, NUL-terminated; an escaped NUL ends it early), or NULL if v is
 * not a string. */
const char *jsonr_string(const struct jsonr_value *v);
/* 0 and the truth value, or -EINVAL if v is not true or false. */
int jsonr_bool(const struct jsonr_value *v, int *out);

#endif
