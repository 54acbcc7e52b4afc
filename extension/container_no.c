/*-------------------------------------------------------------------------
 *
 * container_no.c
 *		hub.container_no: ISO 6346 freight container numbers.
 *
 * A container number is a 3-letter owner code, a category identifier (U for
 * freight containers, J for detachable equipment, Z for trailers and
 * chassis), a 6-digit serial number and a check digit: each of the first ten
 * characters takes a value (digits their own, letters from A=10 upwards
 * skipping multiples of 11), is multiplied by 2^position, and the sum mod 11
 * is the check digit, a remainder of 10 giving 0.
 *
 * Input accepts lower case and spaces anywhere ("csqu 305438 3"); the output
 * is the canonical 11 upper-case characters.  The value is stored in 8 bytes
 * (LIKE pg_catalog.int8) as
 *		((owner as base 26) * 3 + category index) * 10^6 + serial
 * with categories ordered J < U < Z, so that integer order is the text order
 * of the canonical form and int8's comparison and hash functions serve the
 * operator classes.  The check digit is derived, so it is not stored.
 *
 * extension/container_no.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "fmgr.h"
#include "libpq/pqformat.h"
#include "utils/builtins.h"

#include "gs1_check.h"

#define CONTAINER_LEN 11
static const char container_categories[] = "JUZ";

/* Upper bound (exclusive) of the stored integer. */
#define CONTAINER_MAX (INT64CONST(26) * 26 * 26 * 3 * 1000000)

/*
 * iso6346_value --- the ISO 6346 value of an upper-case letter or digit:
 * A=10, then upwards skipping 11, 22 and 33.
 */
static int
iso6346_value(char c)
{
	/* A..Z: 10 upwards, skipping the multiples of 11 (22 and 33) */
	static const unsigned char letter_value[26] = {
		10, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 23, 24,
		25, 26, 27, 28, 29, 30, 31, 32, 34, 35, 36, 37, 38
	};

	if (c >= '0' && c <= '9')
		return c - '0';
	return letter_value[c - 'A'];
}

/*
 * iso6346_check --- the check digit of the first ten canonical characters.
 */
static int
iso6346_check(const char *s)
{
	int			sum = 0;

	for (int i = 0; i < 10; i++)
		sum += iso6346_value(s[i]) << i;
	return sum % 11 % 10;
}

/*
 * container_parse --- parse `str` into *result; false or a 22P02 error on
 * bad input.  `canon` collects the 11 characters with spaces removed and
 * letters upper-cased.
 */
static bool
container_parse(const char *str, bool error_ok, int64 *result)
{
	char		canon[CONTAINER_LEN + 1];
	int			n = 0;
	int64		v = 0;
	int			expected;
	const char *cat;

	for (const char *p = str; *p; p++)
	{
		char		c = *p;

		if (c == ' ' || c == '\t')
			continue;
		if (n < CONTAINER_LEN)
		{
			bool		want_letter = (n < 4);

			c = pg_ascii_toupper(c);
			if (want_letter ? !(c >= 'A' && c <= 'Z') : !(c >= '0' && c <= '9'))
				return lh_input_error(error_ok, "type container_no", str, NULL,
									  "Character \"%s\" at position %d should be %s.",
									  lh_char_at(p), (int) (p - str) + 1,
									  n < 3 ? "a letter of the owner code" :
									  n == 3 ? "the category letter U, J or Z" :
									  n < 10 ? "a digit of the serial number" :
									  "the check digit");
			canon[n] = c;
		}
		n++;
	}
	if (n != CONTAINER_LEN)
		return lh_input_error(error_ok, "type container_no", str, NULL,
							  "An ISO 6346 container number has 11 characters (owner code, category, 6-digit serial, check digit); this value has %d.",
							  n);
	canon[CONTAINER_LEN] = '\0';

	cat = strchr(container_categories, canon[3]);
	if (cat == NULL)
		return lh_input_error(error_ok, "type container_no", str,
							  "U is a freight container, J detachable equipment, Z a trailer or chassis.",
							  "The category identifier is \"%c\"; it must be U, J or Z.",
							  canon[3]);

	expected = iso6346_check(canon);
	if (canon[10] - '0' != expected)
	{
		char	   *hint = psprintf("The expected check digit is %d: \"%.10s%d\".",
									expected, canon, expected);

		return lh_input_error(error_ok, "type container_no", str, hint,
							  "The check digit is %c, but the other characters call for %d.",
							  canon[10], expected);
	}

	for (int i = 0; i < 3; i++)
		v = v * 26 + (canon[i] - 'A');
	v = v * 3 + (cat - container_categories);
	for (int i = 4; i < 10; i++)
		v = v * 10 + (canon[i] - '0');
	*result = v;
	return true;
}

/* container_format --- the canonical 11 characters of a stored value. */
static char *
container_format(int64 v)
{
	char	   *s = palloc(CONTAINER_LEN + 1);
	int64		serial = v % 1000000;
	int64		rest = v / 1000000;

	s[3] = container_categories[rest % 3];
	rest /= 3;
	for (int i = 2; i >= 0; i--)
	{
		s[i] = (char) ('A' + rest % 26);
		rest /= 26;
	}
	snprintf(s + 4, 7, "%06lld", (long long) serial);
	s[10] = (char) ('0' + iso6346_check(s));
	s[11] = '\0';
	return s;
}

PG_FUNCTION_INFO_V1(container_no_in);
Datum
container_no_in(PG_FUNCTION_ARGS)
{
	int64		v = 0;

	(void) container_parse(PG_GETARG_CSTRING(0), false, &v);
	PG_RETURN_INT64(v);
}

PG_FUNCTION_INFO_V1(container_no_out);
Datum
container_no_out(PG_FUNCTION_ARGS)
{
	PG_RETURN_CSTRING(container_format(PG_GETARG_INT64(0)));
}

/*
 * container_no_recv --- binary input: the stored integer, range-checked
 * (22P03 when out of range).
 */
PG_FUNCTION_INFO_V1(container_no_recv);
Datum
container_no_recv(PG_FUNCTION_ARGS)
{
	StringInfo	buf = (StringInfo) PG_GETARG_POINTER(0);
	int64		v = pq_getmsgint64(buf);

	if (v < 0 || v >= CONTAINER_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("invalid external value for type container_no: %lld",
						(long long) v)));
	PG_RETURN_INT64(v);
}

PG_FUNCTION_INFO_V1(container_no_send);
Datum
container_no_send(PG_FUNCTION_ARGS)
{
	StringInfoData buf;

	pq_begintypsend(&buf);
	pq_sendint64(&buf, PG_GETARG_INT64(0));
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

PG_FUNCTION_INFO_V1(container_no_is_valid);
Datum
container_no_is_valid(PG_FUNCTION_ARGS)
{
	int64		v;

	PG_RETURN_BOOL(container_parse(text_to_cstring(PG_GETARG_TEXT_PP(0)), true, &v));
}
