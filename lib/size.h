/*
 * size.h - parse and print byte counts and rates as users write them.
 *
 * "4M", "512K", "1G", "65536": a decimal number of bytes with an optional binary suffix
 * (K = 1024, M = 1024^2, G = 1024^3, T = 1024^4; upper or lower case). Rates are the same
 * numbers read as bytes per second. Nothing else is accepted: no sign, no fraction, no spaces,
 * no trailing garbage, so that a typo is an error and never a silently different budget.
 */
#ifndef THROTTLEFS_SIZE_H
#define THROTTLEFS_SIZE_H

#include <stddef.h>
#include <stdint.h>

/* Parses s into *out. Returns 0, -EINVAL when s is not of the form above, or -ERANGE when the
 * value does not fit in 64 bits. *out is untouched on error. */
int size_parse(const char *s, uint64_t *out);

/* Writes v in the shortest exact form ("4M", "1536K", "100") into buf. Returns buf. */
char *size_format(uint64_t v, char *buf, size_t len);

#endif
