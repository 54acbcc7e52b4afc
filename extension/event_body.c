/*-------------------------------------------------------------------------
 *
 * event_body.c
 *		hub.event_body(): the JSON request body of one event, canonical or
 *		CloudEvents 1.0 structured mode.
 *
 * The dispatchers' claim renders one body per claimed event (hub._claim
 * in sql/src/45_delivery.sql).  The body used to be built as a jsonb
 * (jsonb_build_object, jsonb_strip_nulls for the CloudEvents envelope) and
 * cast to text, which costs a jsonb tree, its sorting and its
 * serialisation per row.  Here the text is written directly into one
 * buffer, and the bytes are exactly those the jsonb route produced, so
 * receivers (and signatures over the body) see no change:
 *
 *	 - keys in jsonb's order (shorter keys first, then bytewise), fixed
 *	   below for each format;
 *	 - ", " and ": " between members, as jsonb's text output has them;
 *	 - strings through escape_json, the routine jsonb's output uses;
 *	 - the timestamptz as JsonEncodeDateTime renders it for jsonb, but
 *	   always in UTC (RFC 3339, "+00:00"): the bytes of a delivery must not
 *	   depend on the session's TimeZone, since a retry sends them again
 *	   under the same webhook-id and signature, and the dispatcher's
 *	   TimeZone is whatever the database's or role's default says (so the
 *	   jsonb route's bytes are matched in a UTC session only); the uuid in
 *	   its text form and the payload as JsonbToCString prints it;
 *	 - a NULL argument is a JSON null; in CloudEvents mode null members of
 *	   the envelope are left out (jsonb_strip_nulls ran on the envelope
 *	   only, so "data": null stays).
 *
 * The nine-argument form adds the event's contract version (hub.outbox.
 * contract_version): the canonical event's last member "contract_version",
 * the CloudEvents extension attribute "contractversion" (an integer); both
 * left out when it is NULL (an unknown type that was accepted).  The
 * ten-argument form adds the event's W3C traceparent (hub.outbox.
 * traceparent) as the CloudEvents distributed tracing extension attribute
 * "traceparent", left out when NULL; the canonical event does not carry it
 * (the request's traceparent header does).  The eight- and nine-argument
 * forms give the bytes they always gave.
 *
 * 'cloudevents' and 'cloudevents_batch' (one member of the array a
 * CloudEvents batch is) give the CloudEvents envelope; a NULL body_format,
 * like any other value, gives the
 * canonical event (the SQL version's CASE fell through to its ELSE); the
 * comparison is bytewise, as text equality is under a deterministic
 * collation.  The result is never NULL.  test/pgtap/event_body.sql compares
 * this function with the former SQL definition (kept in
 * test/reference/event_body.sql) over generated inputs.
 *
 * extension/event_body.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

/* argument positions of hub.event_body */
#define ARG_FORMAT			0
#define ARG_EVENT_ID		1
#define ARG_EVENT_TYPE		2
#define ARG_AGGREGATE_ID	3
#define ARG_OCCURRED_AT		4
#define ARG_CORRELATION_ID	5
#define ARG_PAYLOAD			6
#define ARG_SOURCE			7
#define ARG_CONTRACT_VERSION 8	/* (the nine-argument form only) */
#define ARG_TRACEPARENT		9	/* (the ten-argument form only) */

/*
 * One member of the body: its key, the argument that gives its value (or
 * -1 for a constant), and how that value is written.
 */
typedef enum BodyValueKind
{
	BODY_TEXT,					/* a text argument, escaped */
	BODY_UUID,					/* a uuid argument */
	BODY_TIMESTAMPTZ,			/* a timestamptz argument */
	BODY_JSONB,					/* a jsonb argument, as its text */
	BODY_INT,					/* an integer argument; left out when NULL */
	BODY_CONSTANT				/* a fixed JSON string, already escaped */
} BodyValueKind;

typedef struct BodyMember
{
	const char *key;			/* the key as JSON, quotes included */
	int			arg;
	BodyValueKind kind;
	const char *constant;		/* for BODY_CONSTANT */
} BodyMember;

/* id, data, type, occurred_at, aggregate_id, correlation_id, contract_version */
static const BodyMember canonical_members[] = {
	{"\"id\"", ARG_EVENT_ID, BODY_UUID, NULL},
	{"\"data\"", ARG_PAYLOAD, BODY_JSONB, NULL},
	{"\"type\"", ARG_EVENT_TYPE, BODY_TEXT, NULL},
	{"\"occurred_at\"", ARG_OCCURRED_AT, BODY_TIMESTAMPTZ, NULL},
	{"\"aggregate_id\"", ARG_AGGREGATE_ID, BODY_TEXT, NULL},
	{"\"correlation_id\"", ARG_CORRELATION_ID, BODY_TEXT, NULL},
	{"\"contract_version\"", ARG_CONTRACT_VERSION, BODY_INT, NULL},
};

/*
 * id, data, time, type, source, subject, specversion, traceparent (the
 * distributed tracing extension), correlationid, contractversion (an
 * extension attribute, an integer), datacontenttype: jsonb's key order
 */
static const BodyMember cloudevents_members[] = {
	{"\"id\"", ARG_EVENT_ID, BODY_UUID, NULL},
	{"\"data\"", ARG_PAYLOAD, BODY_JSONB, NULL},
	{"\"time\"", ARG_OCCURRED_AT, BODY_TIMESTAMPTZ, NULL},
	{"\"type\"", ARG_EVENT_TYPE, BODY_TEXT, NULL},
	{"\"source\"", ARG_SOURCE, BODY_TEXT, NULL},
	{"\"subject\"", ARG_AGGREGATE_ID, BODY_TEXT, NULL},
	{"\"specversion\"", -1, BODY_CONSTANT, "\"1.0\""},
	{"\"traceparent\"", ARG_TRACEPARENT, BODY_TEXT, NULL},
	{"\"correlationid\"", ARG_CORRELATION_ID, BODY_TEXT, NULL},
	{"\"contractversion\"", ARG_CONTRACT_VERSION, BODY_INT, NULL},
	{"\"datacontenttype\"", -1, BODY_CONSTANT, "\"application/json\""},
};

/*
 * append_value --- write the value of member m, taken from the function's
 * arguments, as jsonb would print it.  The argument is not NULL.
 */
static void
append_value(StringInfo buf, const BodyMember *m, FunctionCallInfo fcinfo)
{
	switch (m->kind)
	{
		case BODY_TEXT:
			escape_json(buf, text_to_cstring(PG_GETARG_TEXT_PP(m->arg)));
			break;
		case BODY_UUID:
			appendStringInfoChar(buf, '"');
			appendStringInfoString(buf,
								   DatumGetCString(DirectFunctionCall1(uuid_out,
																	   PG_GETARG_DATUM(m->arg))));
			appendStringInfoChar(buf, '"');
			break;
		case BODY_TIMESTAMPTZ:
			{
				char		ts[MAXDATELEN + 1];
				const int	utc = 0;

				JsonEncodeDateTime(ts, PG_GETARG_DATUM(m->arg), TIMESTAMPTZOID, &utc);
				escape_json(buf, ts);
			}
			break;
		case BODY_JSONB:
			{
				Jsonb	   *jb = PG_GETARG_JSONB_P(m->arg);

				(void) JsonbToCString(buf, &jb->root, VARSIZE(jb));
			}
			break;
		case BODY_INT:
			appendStringInfo(buf, "%d", PG_GETARG_INT32(m->arg));
			break;
		case BODY_CONSTANT:
			appendStringInfoString(buf, m->constant);
			break;
	}
}

/*
 * append_members --- write the object of the given members.  A member whose
 * argument is NULL is written as null, or left out when strip_nulls (the
 * CloudEvents envelope) unless it is "data".
 */
static void
append_members(StringInfo buf, const BodyMember *members, int nmembers,
			   bool strip_nulls, FunctionCallInfo fcinfo)
{
	bool		first = true;
	int			i;

	appendStringInfoChar(buf, '{');
	for (i = 0; i < nmembers; i++)
	{
		const BodyMember *m = &members[i];
		bool		isnull;

		/* (the contract version, the traceparent: only in the longer forms) */
		if (m->arg >= PG_NARGS())
			continue;
		isnull = m->arg >= 0 && PG_ARGISNULL(m->arg);
		if (isnull && ((strip_nulls && m->arg != ARG_PAYLOAD) || m->kind == BODY_INT))
			continue;
		if (!first)
			appendBinaryStringInfo(buf, ", ", 2);
		first = false;
		appendStringInfoString(buf, m->key);
		appendBinaryStringInfo(buf, ": ", 2);
		if (isnull)
			appendBinaryStringInfo(buf, "null", 4);
		else
			append_value(buf, m, fcinfo);
	}
	appendStringInfoChar(buf, '}');
}

/*
 * is_cloudevents --- is body_format (possibly NULL) 'cloudevents' or
 * 'cloudevents_batch'?
 */
static bool
is_cloudevents(FunctionCallInfo fcinfo)
{
	text	   *format;
	size_t		len;

	if (PG_ARGISNULL(ARG_FORMAT))
		return false;
	format = PG_GETARG_TEXT_PP(ARG_FORMAT);
	len = VARSIZE_ANY_EXHDR(format);
	return (len == strlen("cloudevents") &&
			memcmp(VARDATA_ANY(format), "cloudevents", len) == 0) ||
		(len == strlen("cloudevents_batch") &&
		 memcmp(VARDATA_ANY(format), "cloudevents_batch", len) == 0);
}

/*
 * hub_event_body --- SQL hub.event_body(body_format, event_id, event_type,
 * aggregate_id, occurred_at, correlation_id, payload, source [,
 * contract_version [, traceparent]]): the request
 * body of one event as text.  Not strict: NULL arguments become JSON nulls
 * (see the file header).  Fails only as its argument types' output does
 * (out of memory, a corrupt jsonb).
 */
PG_FUNCTION_INFO_V1(hub_event_body);
Datum
hub_event_body(PG_FUNCTION_ARGS)
{
	StringInfoData buf;

	/* the text's varlena header is reserved up front and filled in last */
	initStringInfo(&buf);
	appendStringInfoSpaces(&buf, VARHDRSZ);

	if (is_cloudevents(fcinfo))
		append_members(&buf, cloudevents_members, lengthof(cloudevents_members), true, fcinfo);
	else
		append_members(&buf, canonical_members, lengthof(canonical_members), false, fcinfo);

	SET_VARSIZE(buf.data, buf.len);
	PG_RETURN_TEXT_P((text *) buf.data);
}
