/*-------------------------------------------------------------------------
 *
 * traceparent_parse.c
 *		The W3C Trace Context (Level 1) traceparent parser: outside data
 *		(inbound payloads, a publisher's argument) read with no allocation
 *		and no error raised, so that the same code serves the publisher's
 *		strict check (22023, trace_context.c) and the receivers' lenient one
 *		(an invalid value is ignored and a new trace started), and runs in
 *		the fuzz target (test/fuzz/fuzz_parsers.c) as it is.
 *
 * The rules of the recommendation: the version is two lower-case hex
 * digits and never ff; trace id (32), parent id (16) and flags (2) are
 * lower-case hex, the ids not all zeros; version 00 is exactly 55
 * characters; a later version is read by its first four fields, and what
 * follows them, if anything, must start with a dash.  Upper-case hex is
 * invalid (the recommendation says so: receivers must not accept it).
 *
 * extension/traceparent_parse.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "traceparent.h"

/*
 * lower_hex --- are the n bytes at p lower-case hex digits?  *nonzero is
 * set when one of them is not '0'.
 */
static bool
lower_hex(const char *p, int n, bool *nonzero)
{
	int			i;

	*nonzero = false;
	for (i = 0; i < n; i++)
	{
		if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
			return false;
		if (p[i] != '0')
			*nonzero = true;
	}
	return true;
}

/*
 * traceparent_fail --- return false with the reason, for
 * hub_traceparent_parse.
 */
static bool
traceparent_fail(const char **why, const char *reason)
{
	if (why != NULL)
		*why = reason;
	return false;
}

bool
hub_traceparent_parse(const char *s, size_t len, char *out, const char **why)
{
	bool		nonzero;

	if (len < HUB_TRACEPARENT_LEN)
		return traceparent_fail(why, "A traceparent is 55 characters: version-traceid-parentid-flags (2, 32, 16 and 2 lower-case hex digits).");
	if (!lower_hex(s, 2, &nonzero))
		return traceparent_fail(why, "The version must be two lower-case hex digits.");
	if (s[0] == 'f' && s[1] == 'f')
		return traceparent_fail(why, "Version ff is invalid.");
	if (s[2] != '-' || s[35] != '-' || s[52] != '-')
		return traceparent_fail(why, "The fields must be separated by dashes at positions 3, 36 and 53.");
	if (!lower_hex(s + 3, 32, &nonzero))
		return traceparent_fail(why, "The trace id must be 32 lower-case hex digits.");
	if (!nonzero)
		return traceparent_fail(why, "The trace id must not be all zeros.");
	if (!lower_hex(s + 36, 16, &nonzero))
		return traceparent_fail(why, "The parent id must be 16 lower-case hex digits.");
	if (!nonzero)
		return traceparent_fail(why, "The parent id must not be all zeros.");
	if (!lower_hex(s + 53, 2, &nonzero))
		return traceparent_fail(why, "The flags must be two lower-case hex digits.");
	if (len > HUB_TRACEPARENT_LEN)
	{
		if (s[0] == '0' && s[1] == '0')
			return traceparent_fail(why, "A version 00 traceparent is exactly 55 characters.");
		if (s[HUB_TRACEPARENT_LEN] != '-')
			return traceparent_fail(why, "What follows the flags of a later version must start with a dash.");
	}
	memcpy(out, "00", 2);
	memcpy(out + 2, s + 2, HUB_TRACEPARENT_LEN - 2);
	out[HUB_TRACEPARENT_LEN] = '\0';
	return true;
}
