/* test_json.c - the JSON writer: separators, nesting, numbers, and escaping that always yields
 * valid JSON, also for file names that are not UTF-8. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include "json.h"

static char *finish(struct json *j)
{
	char *t;
	size_t n;
	assert_int_equal(json_finish(j, &t, &n), 0);
	return t;
}

static void nesting_and_commas(void **state)
{
	(void)state;
	struct json j;
	json_init(&j);
	json_begin_object(&j);
	json_field_u64(&j, "a", 18446744073709551615ull);
	json_key(&j, "b");
	json_begin_array(&j);
	json_null(&j);
	json_bool(&j, 1);
	json_begin_object(&j);
	json_end_object(&j);
	json_double(&j, 12.345, 2);
	json_end_array(&j);
	json_key(&j, "c");
	json_raw(&j, "{\"x\":1}", 7);
	json_key(&j, "d");
	json_double(&j, 1.0 / 0.0, 1);
	json_end_object(&j);
	char *t = finish(&j);
	assert_string_equal(
	    t,
	    "{\"a\":18446744073709551615,\"b\":[null,true,{},12.35],\"c\":{\"x\":1},\"d\":null}");
	free(t);
}

static void escaping(void **state)
{
	(void)state;
	struct json j;
	json_init(&j);
	json_begin_array(&j);
	json_string(&j, "q\"b\\n\nt\t\x01");
	json_string(&j, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
	json_string(&j, "bad\xff\xc3(\xed\xa0\x80");
	json_end_array(&j);
	char *t = finish(&j);
	assert_string_equal(t, "[\"q\\\"b\\\\n\\u000at\\u0009\\u0001\","
			       "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\","
			       "\"bad\\u00ff\\u00c3(\\u00ed\\u00a0\\u0080\"]");
	free(t);
}

static void empty(void **state)
{
	(void)state;
	struct json j;
	json_init(&j);
	char *t = finish(&j);
	assert_string_equal(t, "");
	free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(nesting_and_commas),
	    cmocka_unit_test(escaping),
	    cmocka_unit_test(empty),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
