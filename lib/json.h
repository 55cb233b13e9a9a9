/*
 * json.h - a tiny append-only JSON writer for the daemon's virtual attributes.
 *
 * Values are written in order into a growing buffer; the writer keeps track of commas, so a
 * caller only says what comes next. Strings are escaped so that the output is always valid
 * JSON (and valid UTF-8): a byte that is not part of valid UTF-8, as a file name may hold, is
 * written as \u00XX of that byte. Allocation failure is sticky and reported by json_finish.
 */
#ifndef THROTTLEFS_JSON_H
#define THROTTLEFS_JSON_H

#include <stddef.h>
#include <stdint.h>

struct json {
	char *buf;
	size_t len, cap;
	int need_comma;
	int failed;
};

void json_init(struct json *j);
void json_begin_object(struct json *j);
void json_end_object(struct json *j);
void json_begin_array(struct json *j);
void json_end_array(struct json *j);
/* A key inside an object; the next call writes its value. */
void json_key(struct json *j, const char *key);
void json_u64(struct json *j, uint64_t v);
/* A key and its number, inside an object. */
void json_field_u64(struct json *j, const char *key, uint64_t v);
void json_double(struct json *j, double v, int decimals);
void json_bool(struct json *j, int v);
void json_null(struct json *j);
void json_string(struct json *j, const char *s);
/* Splices already formatted JSON (e.g. another object) as the next value. */
void json_raw(struct json *j, const char *text, size_t len);

/* Returns 0 and the text (NUL-terminated, *len without the NUL), owned by the caller, or
 * -ENOMEM. */
int json_finish(struct json *j, char **text, size_t *len);

#endif
