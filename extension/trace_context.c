/*-------------------------------------------------------------------------
 *
 * trace_context.c
 *		W3C Trace Context for events and inbox messages: the traceparent an
 *		event is published with, and the SQL helpers that give inbox
 *		messages and the events they cause theirs.
 *
 * Every event carries a traceparent (hub.outbox.traceparent), stamped by the
 * contract check (outbox_check.c) so that hub.publish and a plain INSERT
 * get the same: the publisher's own, which must be valid (22023: a
 * publisher's mistake is reported, not hidden), else a child span of the
 * inbox message being processed (same trace id, a new parent id), else a
 * new trace.  Inbound values (hub.receive's argument or the payload's
 * traceparent key, a poll response) are outside data: an invalid one is
 * ignored and a new trace started, never an error that loses a message.
 * Ids come from pg_strong_random.  The parser is traceparent_parse.c.
 *
 * extension/trace_context.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "traceparent.h"

/*
 * random_hex --- n random bytes as 2n lower-case hex digits at out, never
 * all zeros (which the recommendation makes invalid).
 */
static void
random_hex(char *out, int n)
{
	static const char hex[] = "0123456789abcdef";
	uint8		buf[16];
	bool		nonzero = false;
	int			i;

	Assert(n <= (int) sizeof(buf));
	while (!nonzero)
	{
		if (!pg_strong_random(buf, n))
			elog(ERROR, "could not generate a random trace id");
		for (i = 0; i < n; i++)
			nonzero |= (buf[i] != 0);
	}
	for (i = 0; i < n; i++)
	{
		out[2 * i] = hex[buf[i] >> 4];
		out[2 * i + 1] = hex[buf[i] & 0x0f];
	}
}

void
hub_traceparent_make(const char *parent, char *out)
{
	if (parent != NULL)
		memcpy(out, parent, HUB_TRACEPARENT_LEN);
	else
	{
		memcpy(out, "00-", 3);
		random_hex(out + 3, 16);
		memcpy(out + 52, "-01", 3);
	}
	out[35] = '-';
	random_hex(out + 36, 8);
	out[HUB_TRACEPARENT_LEN] = '\0';
}

/*
 * parse_text --- a text datum parsed as a traceparent into out; false (with
 * *why) when it is not one.
 */
static bool
parse_text(Datum value, char *out, const char **why)
{
	text	   *t = DatumGetTextPP(value);

	return hub_traceparent_parse(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), out, why);
}

void
hub_traceparent_for_event(Datum *value, bool *isnull)
{
	char		tp[HUB_TRACEPARENT_LEN + 1];
	char		parent[HUB_TRACEPARENT_LEN + 1];
	const char *why = NULL;

	if (!*isnull)
	{
		if (!parse_text(*value, tp, &why))
		{
			text	   *t = DatumGetTextPP(*value);
			int			len = Min((int) VARSIZE_ANY_EXHDR(t), 64);

			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid traceparent: \"%s\"",
							pnstrdup(VARDATA_ANY(t), len)),
					 errdetail("%s", why),
					 errhint("Pass a W3C Trace Context traceparent, e.g. 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01, or none: the hub then starts a trace.")));
		}
	}
	else
	{
		const char *ctx = GetConfigOption("hub.inbox_causation_id", true, false);
		const char *p = GetConfigOption("hub.inbox_traceparent", true, false);

		/* (the message's context is current while its causation id is set) */
		if (ctx != NULL && ctx[0] != '\0' && p != NULL &&
			hub_traceparent_parse(p, strlen(p), parent, NULL))
			hub_traceparent_make(parent, tp);
		else
			hub_traceparent_make(NULL, tp);
	}
	*value = CStringGetTextDatum(tp);
	*isnull = false;
}

/*
 * hub_traceparent_child --- SQL hub._traceparent_child(parent text): a new
 * span (new parent id) in parent's trace when parent is a valid
 * traceparent, else a new trace.  Never fails on its input.
 */
PG_FUNCTION_INFO_V1(hub_traceparent_child);
Datum
hub_traceparent_child(PG_FUNCTION_ARGS)
{
	char		parent[HUB_TRACEPARENT_LEN + 1];
	char		tp[HUB_TRACEPARENT_LEN + 1];
	bool		valid = !PG_ARGISNULL(0) && parse_text(PG_GETARG_DATUM(0), parent, NULL);

	hub_traceparent_make(valid ? parent : NULL, tp);
	PG_RETURN_TEXT_P(cstring_to_text(tp));
}

/*
 * hub_traceparent_or_new --- SQL hub._traceparent_or_new(inbound text): an
 * inbound traceparent in its version 00 form when it is valid, else a new
 * trace.  Never fails on its input.
 */
PG_FUNCTION_INFO_V1(hub_traceparent_or_new);
Datum
hub_traceparent_or_new(PG_FUNCTION_ARGS)
{
	char		tp[HUB_TRACEPARENT_LEN + 1];

	if (PG_ARGISNULL(0) || !parse_text(PG_GETARG_DATUM(0), tp, NULL))
		hub_traceparent_make(NULL, tp);
	PG_RETURN_TEXT_P(cstring_to_text(tp));
}

/*
 * hub_traceparent_valid --- SQL hub.traceparent_valid(text): whether a value
 * is a traceparent the hub accepts from a publisher.
 */
PG_FUNCTION_INFO_V1(hub_traceparent_valid);
Datum
hub_traceparent_valid(PG_FUNCTION_ARGS)
{
	char		tp[HUB_TRACEPARENT_LEN + 1];

	PG_RETURN_BOOL(parse_text(PG_GETARG_DATUM(0), tp, NULL));
}
