/* test_size.c - the strict size parser: every accepted form, and every rejected one. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "size.h"

static void accepts_suffixes(void **state)
{
	(void)state;
	static const struct {
		const char *in;
		uint64_t want;
	} cases[] = {
	    {"0", 0},
	    {"65536", 65536},
	    {"4K", 4096},
	    {"4k", 4096},
	    {"4M", 4u << 20},
	    {"32m", 32u << 20},
	    {"1G", 1ull << 30},
	    {"2T", 2ull << 40},
	    {"18446744073709551615", UINT64_MAX},
	    {"15M", 15u << 20},
	    {"16777215T", 16777215ull << 40},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint64_t v = 12345;
		assert_int_equal(size_parse(cases[i].in, &v), 0);
		assert_true(v == cases[i].want);
	}
}

static void rejects_malformed(void **state)
{
	(void)state;
	static const char *bad[] = {"",	   "-1", "+1", " 1",   "1 ",  "1.5M",
				    "1MB", "M",	 "1X", "0x10", "1KK", "abc"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint64_t v = 777;
		assert_int_equal(size_parse(bad[i], &v), -EINVAL);
		assert_true(v == 777);
	}
	uint64_t v = 777;
	assert_int_equal(size_parse(NULL, &v), -EINVAL);
}

static void rejects_overflow(void **state)
{
	(void)state;
	uint64_t v = 1;
	assert_int_equal(size_parse("18446744073709551616", &v), -ERANGE);
	assert_int_equal(size_parse("16777216T", &v), -ERANGE);
	assert_int_equal(size_parse("99999999999999999999999G", &v), -ERANGE);
	assert_true(v == 1);
}

static void formats_exactly(void **state)
{
	(void)state;
	char buf[32];
	assert_string_equal(size_format(4u << 20, buf, sizeof(buf)), "4M");
	assert_string_equal(size_format(1536 * 1024, buf, sizeof(buf)), "1536K");
	assert_string_equal(size_format(100, buf, sizeof(buf)), "100");
	assert_string_equal(size_format(0, buf, sizeof(buf)), "0");
	assert_string_equal(size_format(1ull << 40, buf, sizeof(buf)), "1T");
	assert_string_equal(size_format(1ull << 50, buf, sizeof(buf)), "1024T");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(accepts_suffixes),
	    cmocka_unit_test(rejects_malformed),
	    cmocka_unit_test(rejects_overflow),
	    cmocka_unit_test(formats_exactly),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
