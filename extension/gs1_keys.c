/*-------------------------------------------------------------------------
 *
 * gs1_keys.c
 *		The GS1 identification keys hub.gtin, hub.sscc and hub.gln.
 *
 * Like contrib/isn, each key is stored as a plain 8-byte integer (the type is
 * declared LIKE pg_catalog.int8), check digit included, so comparison,
 * hashing, sorting and indexing reuse PostgreSQL's own int8 support
 * functions and only the text and binary I/O live here.  A GTIN-8, -12 or -13
 * is stored as the GTIN-14 it pads to (GS1's mod-10 weights run from the
 * right, so the padding keeps the check digit); the text output is always
 * the canonical 14 digits and hub.gtin_format() gives the shorter forms.
 *
 * One table describes the three keys (name, accepted lengths); one parser
 * serves them all and validates in a single pass: whitespace only around the
 * value, digits only, an accepted length, and the check digit.  Binary
 * receive is as strict as text input.
 *
 * extension/gs1_keys.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "fmgr.h"
#include "libpq/pqformat.h"
#include "utils/builtins.h"

#include "gs1_check.h"

/* What distinguishes one GS1 key type from another. */
typedef struct Gs1KeyKind
{
	const char *typname;		/* SQL type name, for messages */
	const char *subject;		/* "type gtin", for input errors */
	const char *noun;			/* "A GTIN", for details */
	int			lengths[4];		/* accepted digit counts, 0-terminated */
	const char *lengths_text;	/* the same, in words */
	int			width;			/* digits of the canonical form */
} Gs1KeyKind;

static const Gs1KeyKind gtin_kind = {"gtin", "type gtin", "A GTIN", {8, 12, 13, 14}, "8, 12, 13 or 14", 14};
static const Gs1KeyKind sscc_kind = {"sscc", "type sscc", "An SSCC", {18, 0}, "18", 18};
static const Gs1KeyKind gln_kind = {"gln", "type gln", "A GLN", {13, 0}, "13", 13};

/*
 * gs1_key_parse --- parse `str` as a key of `kind` into *result.  Returns
 * false on bad input if error_ok, else raises 22P02 naming the problem.
 */
static bool
gs1_key_parse(const Gs1KeyKind *kind, const char *str, bool error_ok, int64 *result)
{
	const char *start = str;
	const char *end;
	int			ndigits;
	int			expected;
	bool		length_ok = false;
	int64		value = 0;

	while (isspace((unsigned char) *start))
		start++;
	end = start + strlen(start);
	while (end > start && isspace((unsigned char) end[-1]))
		end--;

	for (const char *p = start; p < end; p++)
	{
		if (!isdigit((unsigned char) *p))
			return lh_input_error(error_ok, kind->subject, str, NULL,
								  "Character \"%s\" at position %d is not a digit.",
								  lh_char_at(p), (int) (p - str) + 1);
	}

	ndigits = (int) (end - start);
	for (int i = 0; i < 4 && kind->lengths[i] != 0; i++)
		length_ok |= (ndigits == kind->lengths[i]);
	if (!length_ok)
		return lh_input_error(error_ok, kind->subject, str, NULL,
							  "%s has %s digits; this value has %d.",
							  kind->noun, kind->lengths_text, ndigits);

	expected = lh_gs1_mod10(start, ndigits - 1);
	if (start[ndigits - 1] - '0' != expected)
	{
		char	   *hint;

		hint = psprintf("The expected check digit is %d: \"%.*s%d\".",
						expected, ndigits - 1, start, expected);
		return lh_input_error(error_ok, kind->subject, str, hint,
							  "The check digit is %c, but the other digits call for %d.",
							  start[ndigits - 1], expected);
	}

	for (const char *p = start; p < end; p++)
		value = value * 10 + (*p - '0');
	*result = value;
	return true;
}

/*
 * gs1_key_valid_int --- true if v is a well-formed key of `kind` held as an
 * integer: in range and with a correct check digit.
 */
static bool
gs1_key_valid_int(const Gs1KeyKind *kind, int64 v)
{
	if (v < 0 || v >= lh_pow10[kind->width])
		return false;
	return lh_gs1_mod10_int(v / 10, kind->width - 1) == (int) (v % 10);
}

/* gs1_key_out --- canonical zero-padded text of a key. */
static char *
gs1_key_out(const Gs1KeyKind *kind, int64 v)
{
	return psprintf("%0*lld", kind->width, (long long) v);
}

/*
 * gs1_key_recv --- binary input: an int8 that must be a valid key, else
 * 22P03 (the core code for a bad binary value).
 */
static int64
gs1_key_recv(const Gs1KeyKind *kind, StringInfo buf)
{
	int64		v = pq_getmsgint64(buf);

	if (!gs1_key_valid_int(kind, v))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("invalid external value for type %s: %lld",
						kind->typname, (long long) v),
				 errdetail("%s has at most %d digits and a valid GS1 check digit.",
						   kind->noun, kind->width)));
	return v;
}

static bytea *
gs1_key_send(int64 v)
{
	StringInfoData buf;

	pq_begintypsend(&buf);
	pq_sendint64(&buf, v);
	return pq_endtypsend(&buf);
}

/*
 * The SQL-callable functions: in, out, recv, send and is_valid for each key.
 * They are thin wrappers so that the three types share one parser.
 */
#define LH_GS1_KEY_FUNCS(name, kind) \
PG_FUNCTION_INFO_V1(name##_in); \
Datum \
name##_in(PG_FUNCTION_ARGS) \
{ \
	int64		v = 0; \
	(void) gs1_key_parse(&(kind), PG_GETARG_CSTRING(0), false, &v); \
	PG_RETURN_INT64(v); \
} \
PG_FUNCTION_INFO_V1(name##_out); \
Datum \
name##_out(PG_FUNCTION_ARGS) \
{ \
	PG_RETURN_CSTRING(gs1_key_out(&(kind), PG_GETARG_INT64(0))); \
} \
PG_FUNCTION_INFO_V1(name##_recv); \
Datum \
name##_recv(PG_FUNCTION_ARGS) \
{ \
	PG_RETURN_INT64(gs1_key_recv(&(kind), (StringInfo) PG_GETARG_POINTER(0))); \
} \
PG_FUNCTION_INFO_V1(name##_send); \
Datum \
name##_send(PG_FUNCTION_ARGS) \
{ \
	PG_RETURN_BYTEA_P(gs1_key_send(PG_GETARG_INT64(0))); \
} \
PG_FUNCTION_INFO_V1(name##_is_valid); \
Datum \
name##_is_valid(PG_FUNCTION_ARGS) \
{ \
	int64		v; \
	char	   *s = text_to_cstring(PG_GETARG_TEXT_PP(0)); \
	PG_RETURN_BOOL(gs1_key_parse(&(kind), s, true, &v)); \
}

LH_GS1_KEY_FUNCS(gtin, gtin_kind)
LH_GS1_KEY_FUNCS(sscc, sscc_kind)
LH_GS1_KEY_FUNCS(gln, gln_kind)

/*
 * gtin_format --- the GTIN written with `len` digits (8, 12, 13 or 14).
 * Raises 22023 for another length, or when the GTIN's leading digits are not
 * zero and so cannot be dropped.
 */
PG_FUNCTION_INFO_V1(gtin_format);
Datum
gtin_format(PG_FUNCTION_ARGS)
{
	int64		v = PG_GETARG_INT64(0);
	int32		len = PG_GETARG_INT32(1);

	if (len != 8 && len != 12 && len != 13 && len != 14)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid GTIN length: %d", len),
				 errhint("A GTIN can be written with 8, 12, 13 or 14 digits.")));
	if (v >= lh_pow10[len])
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("GTIN %014lld cannot be written with %d digits",
						(long long) v, len),
				 errdetail("Only a GTIN whose first %d digits are zero has a %d-digit form.",
						   14 - len, len)));
	PG_RETURN_TEXT_P(cstring_to_text(psprintf("%0*lld", len, (long long) v)));
}

/*
 * make_sscc --- build an SSCC from its parts: extension digit (0-9), GS1
 * company prefix (4 to 12 digits, as text to keep its leading zeros) and
 * serial reference, which must fit in the 16 - prefix-length digits left.
 * The check digit is computed.  Raises 22023 for a part that does not fit.
 */
PG_FUNCTION_INFO_V1(make_sscc);
Datum
make_sscc(PG_FUNCTION_ARGS)
{
	int32		ext = PG_GETARG_INT32(0);
	char	   *prefix = text_to_cstring(PG_GETARG_TEXT_PP(1));
	int64		serial = PG_GETARG_INT64(2);
	int			plen = (int) strlen(prefix);
	int			slen = 16 - plen;
	int64		body;

	if (ext < 0 || ext > 9)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid SSCC extension digit: %d", ext),
				 errhint("The extension digit is a single digit, 0 to 9.")));
	if (plen < 4 || plen > 12 || strspn(prefix, "0123456789") != (size_t) plen)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid GS1 company prefix: \"%s\"", prefix),
				 errdetail("A GS1 company prefix is 4 to 12 digits.")));
	if (serial < 0 || serial >= lh_pow10[slen])
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("serial reference %lld does not fit in an SSCC with company prefix \"%s\"",
						(long long) serial, prefix),
				 errdetail("With a %d-digit company prefix the serial reference has %d digits: 0 to %lld.",
						   plen, slen, (long long) (lh_pow10[slen] - 1))));

	body = ((int64) ext * lh_pow10[plen] + pg_strtoint64(prefix)) * lh_pow10[slen] + serial;
	PG_RETURN_INT64(body * 10 + lh_gs1_mod10_int(body, 17));
}
