/*-------------------------------------------------------------------------
 *
 * gs1_check.h
 *		Check-digit arithmetic and input-error reporting shared by the
 *		identifier types (GS1 keys, ISO 6346 container numbers) and the GS1
 *		element-string parser.
 *
 * Every parser in this extension follows contrib/isn's pattern: it takes an
 * `error_ok` flag and, when that flag is false, raises a 22P02 error with the
 * core wording ("invalid input syntax for type gtin: ...") and a detail that
 * says exactly what is wrong; when it is true it returns false instead, which
 * gives the non-throwing hub.<type>_is_valid() functions for free.
 *
 * extension/gs1_check.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef LH_GS1_CHECK_H
#define LH_GS1_CHECK_H

#include "postgres.h"

/* Largest power of ten an int64 identifier uses (10^18, for SSCC bodies). */
extern const int64 lh_pow10[19];

/*
 * lh_gs1_mod10 --- the GS1 check digit for n body digits (the digits before the
 * check digit): weights 3,1,3,... from the right, 10 minus the sum mod 10.
 */
extern int	lh_gs1_mod10(const char *digits, int n);

/* lh_gs1_mod10_int --- the same, for a body held as an integer of n digits. */
extern int	lh_gs1_mod10_int(int64 body, int n);

/*
 * lh_input_error --- raise (or, with error_ok, swallow) an invalid-input
 * error (22P02) about `subject` ("type gtin", "GS1 element string") and input
 * `input`, with a printf-style detail and an optional hint (NULL for none).  Returns false so that parsers can write
 * `return lh_input_error(...)`.
 */
extern bool lh_input_error(bool error_ok, const char *subject, const char *input,
						   const char *hint, const char *detail_fmt,...)
			pg_attribute_printf(5, 6);

/*
 * lh_char_at --- a printable rendering of the (possibly multibyte) character
 * at p, for error details; control characters are shown as <0xNN>.
 */
extern char *lh_char_at(const char *p);

#endif							/* LH_GS1_CHECK_H */
