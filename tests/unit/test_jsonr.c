/* test_jsonr.c - the JSON reader: navigation, numbers (exact u64), string decoding, strict
 * rejection of what RFC 8259 forbids, and a round trip through the writer (json.h), whose
 * output the reader must always accept. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "json.h"
#include "jsonr.h"

static struct jsonr *parse(const char *text)
{
	struct jsonr *d = NULL;
	assert_int_equal(jsonr_parse(text, strlen(text), &d), 0);
	assert_non_null(d);
	return d;
}

static void navigation(void **state)
{
	(void)state;
	struct jsonr *d = parse(" {\"a\": [1, {\"b\": \"x\"}, null, true, false],\n"
				"  \"c\": {}, \"d\": [], \"a\": 5 } ");
	const struct jsonr_value *r = jsonr_root(d);
	assert_int_equal(jsonr_type(r), JSONR_OBJECT);
	assert_int_equal(jsonr_len(r), 4);
	const struct jsonr_value *a = jsonr_get(r, "a");
	assert_int_equal(jsonr_type(a), JSONR_ARRAY); /* the first of a repeated key */
	assert_int_equal(jsonr_len(a), 5);
	assert_string_equal(jsonr_string(jsonr_get(jsonr_at(a, 1), "b")), "x");
	assert_int_equal(jsonr_type(jsonr_at(a, 2)), JSONR_NULL);
	int t = -1;
	assert_int_equal(jsonr_bool(jsonr_at(a, 3), &t), 0);
	assert_int_equal(t, 1);
	assert_int_equal(jsonr_bool(jsonr_at(a, 4), &t), 0);
	assert_int_equal(t, 0);
	assert_null(jsonr_at(a, 5));
	assert_int_equal(jsonr_type(jsonr_get(r, "c")), JSONR_OBJECT);
	assert_int_equal(jsonr_len(jsonr_get(r, "c")), 0);
	assert_int_equal(jsonr_len(jsonr_get(r, "d")), 0);
	assert_string_equal(jsonr_key_at(r, 2), "d");
	assert_int_equal(jsonr_type(jsonr_at(r, 1)), JSONR_OBJECT); /* value of member 1 */
	uint64_t u = 0;
	assert_int_equal(jsonr_u64(jsonr_at(r, 3), &u), 0);
	assert_int_equal(u, 5);
	/* Tolerant lookups: wrong types and missing keys give NULL or -EINVAL. */
	assert_null(jsonr_get(r, "missing"));
	assert_null(jsonr_get(a, "b"));
	assert_null(jsonr_get(NULL, "b"));
	assert_null(jsonr_key_at(a, 0));
	assert_null(jsonr_string(a));
	assert_int_equal(jsonr_u64(jsonr_get(r, "c"), &u), -EINVAL);
	assert_int_equal(jsonr_bool(NULL, &t), -EINVAL);
	jsonr_free(d);
}

static void numbers(void **state)
{
	(void)state;
	struct jsonr *d =
	    parse("[0, 18446744073709551615, 18446744073709551616, -3, 2.5, 1e3, -0.25E-1, 42]");
	const struct jsonr_value *r = jsonr_root(d);
	uint64_t u;
	double x;
	assert_int_equal(jsonr_u64(jsonr_at(r, 0), &u), 0);
	assert_int_equal(u, 0);
	assert_int_equal(jsonr_u64(jsonr_at(r, 1), &u), 0);
	assert_true(u == UINT64_MAX);
	assert_int_equal(jsonr_u64(jsonr_at(r, 2), &u), -EINVAL); /* overflows */
	assert_int_equal(jsonr_double(jsonr_at(r, 2), &x), 0);
	assert_true(x > 1.8e19);
	assert_int_equal(jsonr_u64(jsonr_at(r, 3), &u), -EINVAL);
	assert_int_equal(jsonr_double(jsonr_at(r, 3), &x), 0);
	assert_true(x == -3.0);
	assert_int_equal(jsonr_u64(jsonr_at(r, 4), &u), -EINVAL);
	assert_int_equal(jsonr_double(jsonr_at(r, 4), &x), 0);
	assert_true(x == 2.5);
	assert_int_equal(jsonr_double(jsonr_at(r, 5), &x), 0);
	assert_true(x == 1000.0);
	assert_int_equal(jsonr_double(jsonr_at(r, 6), &x), 0);
	assert_true(x == -0.025);
	assert_int_equal(jsonr_u64(jsonr_at(r, 7), &u), 0);
	assert_int_equal(u, 42);
	assert_int_equal(jsonr_double(jsonr_at(r, 7), &x), 0);
	assert_true(x == 42.0);
	jsonr_free(d);
}

static void strings(void **state)
{
	(void)state;
	struct jsonr *d =
	    parse("[\"q\\\"b\\\\s\\/n\\nt\\tb\\bf\\fr\\r\", \"\\u0041\\u00e9\\u20ac\","
		  "\"\\ud83d\\ude00\", \"lone\\ud800x\", \"caf\xc3\xa9\", \"\"]");
	const struct jsonr_value *r = jsonr_root(d);
	assert_string_equal(jsonr_string(jsonr_at(r, 0)), "q\"b\\s/n\nt\tb\bf\fr\r");
	assert_string_equal(jsonr_string(jsonr_at(r, 1)), "A\xc3\xa9\xe2\x82\xac");
	assert_string_equal(jsonr_string(jsonr_at(r, 2)), "\xf0\x9f\x98\x80");
	assert_string_equal(jsonr_string(jsonr_at(r, 3)), "lone\xef\xbf\xbdx");
	assert_string_equal(jsonr_string(jsonr_at(r, 4)), "caf\xc3\xa9");
	assert_string_equal(jsonr_string(jsonr_at(r, 5)), "");
	jsonr_free(d);
	/* Not NUL-terminated input: only len bytes are read. */
	struct jsonr *e = NULL;
	assert_int_equal(jsonr_parse("\"ab\"garbage", 4, &e), 0);
	assert_string_equal(jsonr_string(jsonr_root(e)), "ab");
	jsonr_free(e);
}

static void rejects(void **state)
{
	(void)state;
	static const char *const bad[] = {
	    "",
	    " ",
	    "{",
	    "[1,]",
	    "{\"a\":1,}",
	    "{\"a\" 1}",
	    "{a:1}",
	    "[1 2]",
	    "01",
	    "-",
	    "1.",
	    ".5",
	    "1e",
	    "+1",
	    "tru",
	    "nul",
	    "\"abc",
	    "\"a\tb\"",
	    "\"\\x\"",
	    "\"\\u12g4\"",
	    "\"\xff\"",
	    "\"\xc0\x80\"",
	    "\"\xed\xa0\x80\"",
	    "1 2",
	    "[] x",
	    "{\"a\":}",
	    "[,]",
	    "NaN",
	    "\"\xe2\x82\"",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct jsonr *d = NULL;
		int err = jsonr_parse(bad[i], strlen(bad[i]), &d);
		if (err != -EINVAL)
			fail_msg("accepted or wrong error %d for: %s", err, bad[i]);
		assert_null(d);
	}
	/* Nesting: 64 levels parse, 65 do not. */
	char deep[200];
	for (int depth = 64; depth <= 65; depth++) {
		memset(deep, '[', (size_t)depth);
		memset(deep + depth, ']', (size_t)depth);
		struct jsonr *d = NULL;
		int err = jsonr_parse(deep, 2 * (size_t)depth, &d);
		assert_int_equal(err, depth == 64 ? 0 : -EINVAL);
		jsonr_free(d);
	}
}

/* What the writer writes, the reader reads back: the same keys, numbers and strings. */
static void writer_round_trip(void **state)
{
	(void)state;
	struct json j;
	json_init(&j);
	json_begin_object(&j);
	json_key(&j, "path");
	json_string(&j, "dir/f\xff\"\n");
	json_key(&j, "n");
	json_u64(&j, 18446744073709551615ull);
	json_key(&j, "pct");
	json_double(&j, 12.5, 1);
	json_key(&j, "list");
	json_begin_array(&j);
	json_begin_object(&j);
	json_key(&j, "x");
	json_null(&j);
	json_end_object(&j);
	json_bool(&j, 0);
	json_end_array(&j);
	json_end_object(&j);
	char *t;
	size_t n;
	assert_int_equal(json_finish(&j, &t, &n), 0);
	struct jsonr *d = NULL;
	assert_int_equal(jsonr_parse(t, n, &d), 0);
	const struct jsonr_value *r = jsonr_root(d);
	/* The writer escapes the invalid byte 0xff as \u00ff, which reads back as U+00FF. */
	assert_string_equal(jsonr_string(jsonr_get(r, "path")), "dir/f\xc3\xbf\"\n");
	uint64_t u;
	assert_int_equal(jsonr_u64(jsonr_get(r, "n"), &u), 0);
	assert_true(u == UINT64_MAX);
	double x;
	assert_int_equal(jsonr_double(jsonr_get(r, "pct"), &x), 0);
	assert_true(x == 12.5);
	const struct jsonr_value *l = jsonr_get(r, "list");
	assert_int_equal(jsonr_len(l), 2);
	assert_int_equal(jsonr_type(jsonr_get(jsonr_at(l, 0), "x")), JSONR_NULL);
	assert_int_equal(jsonr_type(jsonr_at(l, 1)), JSONR_BOOL);
	jsonr_free(d);
	free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(navigation),	 cmocka_unit_test(numbers),
	    cmocka_unit_test(strings),		 cmocka_unit_test(rejects),
	    cmocka_unit_test(writer_round_trip),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
