/*-------------------------------------------------------------------------
 *
 * gs1_check.c
 *		GS1 mod-10 check digits and the input-error helper shared by every
 *		identifier parser of logistics_hub.
 *
 * The mod-10 rule (GS1 General Specifications, "how to calculate a check
 * digit manually") weights the body digits 3,1,3,... starting from the digit
 * just left of the check digit, so zero-padding on the left never changes the
 * check digit: that is why a GTIN-8, -12 or -13 can be stored as a GTIN-14.
 *
 * extension/gs1_check.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"

#include "gs1_check.h"

const int64 lh_pow10[19] = {
	INT64CONST(1), INT64CONST(10), INT64CONST(100), INT64CONST(1000),
	INT64CONST(10000), INT64CONST(100000), INT64CONST(1000000),
	INT64CONST(10000000), INT64CONST(100000000), INT64CONST(1000000000),
	INT64CONST(10000000000), INT64CONST(100000000000),
	INT64CONST(1000000000000), INT64CONST(10000000000000),
	INT64CONST(100000000000000), INT64CONST(1000000000000000),
	INT64CONST(10000000000000000), INT64CONST(100000000000000000),
	INT64CONST(1000000000000000000)
};

/*
 * lh_gs1_mod10 --- expected check digit of the n ASCII digits at `digits`.
 * The caller has checked that they are digits.
 */
int
lh_gs1_mod10(const char *digits, int n)
{
	int			sum = 0;
	int			weight = 3;

	for (int i = n - 1; i >= 0; i--)
	{
		sum += (digits[i] - '0') * weight;
		weight = 4 - weight;
	}
	return (10 - sum % 10) % 10;
}

/*
 * lh_gs1_mod10_int --- expected check digit of a body held as an integer; n is
 * unused beyond documentation since leading zeros weigh nothing.
 */
int
lh_gs1_mod10_int(int64 body, int n)
{
	int			sum = 0;
	int			weight = 3;

	(void) n;
	while (body > 0)
	{
		sum += (int) (body % 10) * weight;
		weight = 4 - weight;
		body /= 10;
	}
	return (10 - sum % 10) % 10;
}

/*
 * lh_input_error --- see gs1_check.h.  With error_ok it only returns false.
 */
bool
lh_input_error(bool error_ok, const char *subject, const char *input,
			   const char *hint, const char *detail_fmt,...)
{
	StringInfoData detail;

	if (error_ok)
		return false;

	initStringInfo(&detail);
	for (;;)
	{
		va_list		args;
		int			needed;

		va_start(args, detail_fmt);
		needed = appendStringInfoVA(&detail, detail_fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(&detail, needed);
	}

	ereport(ERROR,
			(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
			 errmsg("invalid input syntax for %s: \"%s\"", subject, input),
			 errdetail_internal("%s", detail.data),
			 hint ? errhint("%s", hint) : 0));
	pg_unreachable();
}

/*
 * lh_char_at --- render the character at p for an error detail.
 */
char *
lh_char_at(const char *p)
{
	unsigned char c = (unsigned char) *p;

	if (c < 0x20 || c == 0x7f)
		return psprintf("<0x%02X>", c);
	return pnstrdup(p, pg_mblen(p));
}
