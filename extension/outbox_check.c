/*-------------------------------------------------------------------------
 *
 * outbox_check.c
 *		The contract check of hub.outbox: a BEFORE INSERT row trigger shared
 *		by hub.publish and plain INSERTs, with the event catalogue cached in
 *		each backend.
 *
 * Publishing is the hot path of the whole hub (the issue asks for at least
 * 0.85 of a plain INSERT), so the check is in C and reads no table per row:
 * hub.event_types is loaded with SPI into a hash table in a long-lived
 * memory context on first use.  A statement-level trigger on the catalogue
 * calls hub._event_types_changed(), which queues a relcache invalidation
 * for it; PostgreSQL delivers that at commit to every backend (and at the
 * next command to the changing one), whose callback drops the cache.
 *
 * Per row the trigger checks the <entity>.<verb> name, a non-empty
 * aggregate id, that the payload is a JSON object holding every key its
 * type requires (naming the first missing one), the limits on inputs (the
 * aggregate, correlation and causation ids at most HUB_KEY_MAXLEN bytes,
 * since they are keys of btree indexes and a longer one would fail routing
 * on the index row size limit, 22001; the payload at most
 * logistics_hub.max_payload_size bytes, 54000), an occurred_at in years
 * 0001 to 9999 (RFC 3339, 22008: hub_check_occurred_at, also called by
 * hub.publish before its direct insert), refuses unknown types when
 * logistics_hub.unknown_event_types = reject, and stamps xid (the top-level
 * transaction id, for the routing watermark) and published_at, so that a
 * plain INSERT cannot forge them.  The event id must carry the inserting
 * transaction's id (extension/outbox_event_id.c): the default does, and a
 * foreign id is refused, since routing finds events by that prefix.  Every
 * other error is 22023 with core wording.  hub._check_key_length() and
 * hub._check_payload_size() give the same two limit checks to the SQL
 * functions that take keys and payloads (hub.receive, hub.apply_status).  The checks are one function,
 * hub_outbox_check_event(), which hub.publish's direct insert calls itself
 * when this trigger is the only one an INSERT fires (outbox_publish.c), so
 * both paths check exactly the same.
 *
 * A restore of a dump (logistics_hub.restoring on, a superuser: see
 * extension/outbox_guc.c) brings events made by the dumped database's
 * transactions: a row that carries its event id, xid and published_at,
 * the xid being the one its id carries, is taken as it is, unchecked and
 * unstamped (it was checked when it was published; the catalogue and the
 * limits may have changed since).  Every other row is checked as always.
 *
 * extension/outbox_check.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"
#include "utils/xid8.h"

#include "hub_workers.h"
#include "outbox.h"
#include "traceparent.h"

#define EVENT_TYPE_MAXLEN 127

typedef struct EventTypeEntry
{
	char		event_type[EVENT_TYPE_MAXLEN + 1];	/* hash key */
	int			version;
	int			nkeys;
	char	  **keys;			/* required payload keys */
	char	  **types;			/* their JSON types ("" for any non-null value) */
	bool		deprecated;		/* publishing warns */
} EventTypeEntry;

static HTAB *etype_cache = NULL;
static MemoryContext etype_context = NULL;
static Oid	etype_relid = InvalidOid;
static bool etype_callback_registered = false;

/*
 * etype_invalidate --- relcache callback: drop the cache when hub.event_types
 * changed (or on a full reset).
 */
static void
etype_invalidate(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == etype_relid)
		etype_cache = NULL;
}

/*
 * etype_load --- read hub.event_types into the cache (no-op when loaded).
 */
static void
etype_load(void)
{
	HASHCTL		ctl;
	HTAB	   *cache;
	uint64		i;

	if (etype_cache != NULL)
		return;
	if (etype_context == NULL)
		etype_context = AllocSetContextCreate(TopMemoryContext, "logistics_hub event types",
											  ALLOCSET_SMALL_SIZES);
	etype_relid = get_relname_relid("event_types", get_namespace_oid("hub", false));
	if (!etype_callback_registered)
	{
		CacheRegisterRelcacheCallback(etype_invalidate, (Datum) 0);
		etype_callback_registered = true;
	}
	MemoryContextReset(etype_context);

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = EVENT_TYPE_MAXLEN + 1;
	ctl.entrysize = sizeof(EventTypeEntry);
	ctl.hcxt = etype_context;
	cache = hash_create("logistics_hub event types", 64, &ctl,
						HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT t.event_type, t.version, t.required_keys,"
					" ARRAY(SELECT coalesce(t.key_types OPERATOR(pg_catalog.->>) k.k, '')"
					"       FROM pg_catalog.unnest(t.required_keys) WITH ORDINALITY k(k, n) ORDER BY k.n),"
					" t.deprecated FROM hub.event_types t", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read hub.event_types");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *name = SPI_getvalue(tup, desc, 1);
		bool		isnull;
		Datum		keys;
		EventTypeEntry *e;
		bool		found;

		if (name == NULL || strlen(name) > EVENT_TYPE_MAXLEN)
			continue;			/* the catalogue's CHECK keeps names short */
		e = hash_search(cache, name, HASH_ENTER, &found);
		e->version = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		e->nkeys = 0;
		e->keys = NULL;
		e->types = NULL;
		e->deprecated = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull)) && !isnull;
		keys = SPI_getbinval(tup, desc, 3, &isnull);
		if (!isnull)
		{
			Datum	   *elems;
			bool	   *nulls;
			Datum	   *telems;
			bool	   *tnulls;
			int			n;
			int			nt;
			int			j;
			bool		tnull;
			Datum		types = SPI_getbinval(tup, desc, 4, &tnull);

			deconstruct_array(DatumGetArrayTypeP(keys), TEXTOID, -1, false, TYPALIGN_INT,
							  &elems, &nulls, &n);
			deconstruct_array(DatumGetArrayTypeP(types), TEXTOID, -1, false, TYPALIGN_INT,
							  &telems, &tnulls, &nt);
			e->keys = MemoryContextAlloc(etype_context, sizeof(char *) * Max(n, 1));
			e->types = MemoryContextAlloc(etype_context, sizeof(char *) * Max(n, 1));
			for (j = 0; j < n; j++)
				if (!nulls[j])
				{
					e->keys[e->nkeys] = MemoryContextStrdup(etype_context,
															TextDatumGetCString(elems[j]));
					e->types[e->nkeys++] = MemoryContextStrdup(etype_context,
															   (j < nt && !tnulls[j]) ? TextDatumGetCString(telems[j]) : "");
				}
		}
	}
	SPI_finish();
	etype_cache = cache;
}

/*
 * valid_event_type --- <entity>.<verb>: [a-z][a-z0-9_]* twice, one dot.
 */
static bool
valid_event_type(const char *s, int len)
{
	int			part = 0;
	bool		start = true;
	int			i;

	for (i = 0; i < len; i++)
	{
		char		c = s[i];

		if (c == '.')
		{
			if (start || part == 1)
				return false;
			part = 1;
			start = true;
		}
		else if ((c >= 'a' && c <= 'z') || (!start && ((c >= '0' && c <= '9') || c == '_')))
			start = false;
		else
			return false;
	}
	return part == 1 && !start;
}

/*
 * keys_list --- "a, b, c" for an error detail.
 */
static char *
keys_list(EventTypeEntry *e)
{
	StringInfoData buf;
	int			i;

	initStringInfo(&buf);
	for (i = 0; i < e->nkeys; i++)
	{
		appendStringInfo(&buf, "%s%s", i ? ", " : "", e->keys[i]);
		if (e->types != NULL && e->types[i][0] != '\0')
			appendStringInfo(&buf, " (%s)", e->types[i]);
	}
	return buf.data;
}

/*
 * contract_typed --- does the contract of e type any of its keys?
 */
static bool
contract_typed(EventTypeEntry *e)
{
	int			i;

	for (i = 0; i < e->nkeys; i++)
		if (e->types[i][0] != '\0')
			return true;
	return false;
}

/*
 * hub_check_key_length --- raise 22001 when a business key or id (a text
 * datum, possibly toasted: only its header is read) is longer than
 * HUB_KEY_MAXLEN bytes.  what names it in the message.
 */
void
hub_check_key_length(const char *what, Datum value)
{
	Size		len = toast_raw_datum_size(value) - VARHDRSZ;

	if (len > HUB_KEY_MAXLEN)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("%s is longer than %d bytes", what, HUB_KEY_MAXLEN),
				 errdetail("It has %zu bytes.", len),
				 errhint("Business keys, message ids, sources and correlation ids are at most %d bytes, since they are index keys; pass a shorter key (a hash of a longer one, for instance).",
						 HUB_KEY_MAXLEN)));
}

/*
 * hub_check_payload_size --- raise 54000 when a payload (a jsonb datum,
 * possibly toasted or compressed: its uncompressed size is read from the
 * header, nothing is detoasted) is larger than logistics_hub.max_payload_size.
 * what names whose payload it is.
 */
void
hub_check_payload_size(const char *what, Datum payload)
{
	Size		size = toast_raw_datum_size(payload) - VARHDRSZ;

	if (size > (Size) hub_max_payload_size)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("the payload of %s has %zu bytes, more than logistics_hub.max_payload_size (%d bytes)",
						what, size, hub_max_payload_size),
				 errhint("Send a large document by reference (its URL or id) rather than in the payload; a superuser can raise logistics_hub.max_payload_size.")));
}

/*
 * hub_check_occurred_at --- raise 22008 unless an event's occurred_at (a
 * timestamptz datum) lies in years 0001 to 9999 in UTC: infinity, a BC
 * date or a five-digit year has no RFC 3339 form, which the canonical
 * event's occurred_at and the CloudEvents time must have.
 */
void
hub_check_occurred_at(Datum occurred_at)
{
	TimestampTz ts = DatumGetTimestampTz(occurred_at);
	const TimestampTz lo = (TimestampTz) (date2j(1, 1, 1) - POSTGRES_EPOCH_JDATE) * USECS_PER_DAY;
	const TimestampTz hi = (TimestampTz) (date2j(10000, 1, 1) - POSTGRES_EPOCH_JDATE) * USECS_PER_DAY;

	if (TIMESTAMP_NOT_FINITE(ts) || ts < lo || ts >= hi)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("occurred_at out of range: \"%s\"",
						DatumGetCString(DirectFunctionCall1(timestamptz_out, occurred_at))),
				 errdetail("An event's time is sent as an RFC 3339 time in UTC, which has years 0001 to 9999."),
				 errhint("Pass the time the event happened, or leave occurred_at to its default, the time of the transaction.")));
}

/*
 * hub_check_key_length_sql --- SQL hub._check_key_length(what, value):
 * hub_check_key_length for the SQL functions (NULL passes).  Returns
 * nothing; raises 22001.
 */
PG_FUNCTION_INFO_V1(hub_check_key_length_sql);
Datum
hub_check_key_length_sql(PG_FUNCTION_ARGS)
{
	if (!PG_ARGISNULL(0) && !PG_ARGISNULL(1))
		hub_check_key_length(text_to_cstring(PG_GETARG_TEXT_PP(0)), PG_GETARG_DATUM(1));
	PG_RETURN_VOID();
}

/*
 * hub_check_payload_size_sql --- SQL hub._check_payload_size(what, payload):
 * hub_check_payload_size for the SQL functions (NULL passes).  Returns
 * nothing; raises 54000.
 */
PG_FUNCTION_INFO_V1(hub_check_payload_size_sql);
Datum
hub_check_payload_size_sql(PG_FUNCTION_ARGS)
{
	if (!PG_ARGISNULL(0) && !PG_ARGISNULL(1))
		hub_check_payload_size(text_to_cstring(PG_GETARG_TEXT_PP(0)), PG_GETARG_DATUM(1));
	PG_RETURN_VOID();
}

/*
 * hub_payload_size --- SQL hub._payload_size(jsonb): the payload's size in
 * bytes, uncompressed, read from its header without detoasting it (what a
 * claim counts against logistics_hub.claim_max_bytes).  Never fails.
 */
PG_FUNCTION_INFO_V1(hub_payload_size);
Datum
hub_payload_size(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64((int64) (toast_raw_datum_size(PG_GETARG_DATUM(0)) - VARHDRSZ));
}

/*
 * json_type_name --- the contract's name of a JSON value's type.
 */
static const char *
json_type_name(JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			return "null";
		case jbvString:
			return "string";
		case jbvNumeric:
			return "number";
		case jbvBool:
			return "boolean";
		case jbvBinary:
			return JsonContainerIsArray(v->val.binary.data) ? "array" : "object";
		case jbvArray:
			return "array";
		case jbvObject:
			return "object";
		default:
			return "unknown";
	}
}

/*
 * contract_problem --- the first way payload (an object) breaks the
 * contract of e, as a message (palloc'd), or NULL when it keeps it: a
 * required key missing or null, or of another type than key_types says.
 */
static char *
contract_problem(EventTypeEntry *e, const char *name, Jsonb *payload)
{
	int			i;

	for (i = 0; i < e->nkeys; i++)
	{
		JsonbValue *v = getKeyJsonValueFromContainer(&payload->root, e->keys[i],
													 strlen(e->keys[i]), NULL);

		if (v == NULL)
			return psprintf("%s event lacks the required payload key \"%s\"", name, e->keys[i]);
		if (v->type == jbvNull)
			return psprintf("%s event has null for the required payload key \"%s\"", name, e->keys[i]);
		if (e->types[i][0] != '\0' && strcmp(e->types[i], json_type_name(v)) != 0)
			return psprintf("%s event has a %s for the payload key \"%s\", which must be a %s",
							name, json_type_name(v), e->keys[i], e->types[i]);
	}
	return NULL;
}

/*
 * hub_contract_violation --- SQL hub.contract_violation(event_type, payload):
 * why the payload would be refused as an event of that type (the contract
 * check's message), or NULL when it would be accepted; an unknown type is
 * a violation only when logistics_hub.unknown_event_types = reject.
 * Raises nothing for a bad payload: a non-object payload is a violation.
 */
PG_FUNCTION_INFO_V1(hub_contract_violation);
Datum
hub_contract_violation(PG_FUNCTION_ARGS)
{
	char	   *name;
	Jsonb	   *payload;
	EventTypeEntry *e;
	char	   *problem;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_TEXT_P(cstring_to_text("an event needs an event type and a payload"));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	payload = PG_GETARG_JSONB_P(1);
	if (!valid_event_type(name, strlen(name)) || strlen(name) > EVENT_TYPE_MAXLEN)
		PG_RETURN_TEXT_P(cstring_to_text(psprintf("invalid event type: \"%s\"", name)));
	if (!JB_ROOT_IS_OBJECT(payload) || JB_ROOT_IS_SCALAR(payload))
		PG_RETURN_TEXT_P(cstring_to_text(psprintf("the payload of a %s event must be a JSON object", name)));
	etype_load();
	e = hash_search(etype_cache, name, HASH_FIND, NULL);
	if (e == NULL)
	{
		if (hub_outbox_reject_unknown())
			PG_RETURN_TEXT_P(cstring_to_text(psprintf("unknown event type: \"%s\"", name)));
		PG_RETURN_NULL();
	}
	problem = contract_problem(e, name, payload);
	if (problem == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(problem));
}

/*
 * hub_outbox_check_event --- the contract check of one event, shared by the
 * trigger and hub.publish's direct insert (which then skips the trigger;
 * extension/outbox_publish.c).  Raises 22023 for a malformed event type, an
 * empty aggregate id, a payload that is not an object or lacks a required
 * key, an unknown event type when unknown types are rejected, and an event
 * id not made by this transaction; 22001 for an aggregate, correlation or
 * causation id longer than HUB_KEY_MAXLEN bytes, and 54000 for a payload
 * larger than logistics_hub.max_payload_size.  *id is set when it is NULL.  Returns
 * false, checking nothing, when the event type is NULL (NOT NULL
 * constraints are checked after BEFORE triggers: NULLs are left to them);
 * otherwise notes the insert for the commit-time wake-up and returns true.
 * *version is set to the contract version the event was checked against,
 * which every event carries (hub.outbox.contract_version, the body), or 0
 * for an unknown type that was accepted.
 */
bool
hub_outbox_check_event(Datum etype_datum, bool etype_null, Datum agg, bool agg_null,
					   Datum payload_datum, bool payload_null, Datum *id, bool *id_null,
					   Datum correlation, bool correlation_null,
					   Datum causation, bool causation_null, int32 *version)
{
	text	   *etype;
	char	   *name;
	int			len;
	Jsonb	   *payload = NULL;
	EventTypeEntry *e;
	uint64		top_xid;

	*version = 0;
	if (etype_null)
		return false;
	etype = pg_detoast_datum_packed((text *) DatumGetPointer(etype_datum));
	name = VARDATA_ANY(etype);
	len = VARSIZE_ANY_EXHDR(etype);
	if (len > EVENT_TYPE_MAXLEN || !valid_event_type(name, len))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid event type: \"%s\"", text_to_cstring(etype)),
				 errhint("Event types are named <entity>.<verb> in lower case, e.g. shipment.dispatched.")));
	name = pnstrdup(name, len);

	if (!agg_null && VARSIZE_ANY_EXHDR(DatumGetPointer(agg)) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the aggregate id of a %s event must not be empty", name),
				 errhint("Pass the business key the event is about (order, shipment, SKU, return number).")));
	if (!agg_null)
		hub_check_key_length("aggregate id", agg);
	if (!correlation_null)
		hub_check_key_length("correlation id", correlation);
	if (!causation_null)
		hub_check_key_length("causation id", causation);

	if (!payload_null)
	{
		/* the size first: from the header, before detoasting it */
		if (toast_raw_datum_size(payload_datum) - VARHDRSZ > (Size) hub_max_payload_size)
			hub_check_payload_size(psprintf("an event of type %s", name), payload_datum);
		payload = DatumGetJsonbP(payload_datum);
		if (!JB_ROOT_IS_OBJECT(payload) || JB_ROOT_IS_SCALAR(payload))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the payload of a %s event must be a JSON object", name)));
	}

	etype_load();
	e = hash_search(etype_cache, name, HASH_FIND, NULL);
	if (e == NULL)
	{
		if (hub_outbox_reject_unknown())
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown event type: \"%s\"", name),
					 errhint("Add it to hub.event_types with the payload keys it requires, or SET logistics_hub.unknown_event_types = accept.")));
	}
	else
	{
		*version = e->version;
		if (payload != NULL)
		{
			char	   *problem = contract_problem(e, name, payload);

			if (problem != NULL)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg_internal("%s", problem),
						 errdetail("Contract version %d of %s requires the keys: %s.",
								   e->version, name, keys_list(e)),
						 errhint("Required keys must be present and not null%s.",
								 contract_typed(e) ? ", and of the type in parentheses" : "")));
		}
		if (e->deprecated)
			ereport(WARNING,
					(errcode(ERRCODE_WARNING_DEPRECATED_FEATURE),
					 errmsg("contract version %d of event type %s is deprecated", e->version, name),
					 errhint("The event is published; move its publisher to the type's successor, which hub.event_types.description names.")));
	}

	top_xid = U64FromFullTransactionId(GetTopFullTransactionId());
	if (*id_null)
	{
		*id = DirectFunctionCall1(hub_event_id, (Datum) 0);
		*id_null = false;
	}
	else
	{
		uint64		id_xid;

		if (!hub_event_id_xid(DatumGetUUIDP(*id), &id_xid) || id_xid != top_xid)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("event id \"%s\" was not made by this transaction",
							DatumGetCString(DirectFunctionCall1(uuid_out, *id))),
					 errdetail("Event ids carry the publishing transaction's id, which routing relies on."),
					 errhint("Leave event_id to its default; hub.publish returns the id, and INSERT ... RETURNING event_id gives it back. A superuser restoring a dump in several sessions (pg_restore --jobs) sets logistics_hub.restoring.")));
	}
	/* wake hook: called once per inserted event (the dispatchers at commit) */
	hub_note_outbox_insert();
	return true;
}

/*
 * restored_event --- true when a row inserted into hub.outbox is an event
 * restored from a dump: the session is restoring, the user is a superuser,
 * and the row carries an event id of our layout, published_at, and the xid
 * its id carries.  Never fails.
 */
static bool
restored_event(HeapTuple tuple, TupleDesc desc, int att_id, int att_xid, int att_published)
{
	bool		isnull;
	Datum		id;
	Datum		xid;
	uint64		id_xid;

	if (!hub_restoring || !superuser())
		return false;
	id = heap_getattr(tuple, att_id, desc, &isnull);
	if (isnull || !hub_event_id_xid(DatumGetUUIDP(id), &id_xid))
		return false;
	(void) heap_getattr(tuple, att_published, desc, &isnull);
	if (isnull)
		return false;
	xid = heap_getattr(tuple, att_xid, desc, &isnull);
	return !isnull && U64FromFullTransactionId(DatumGetFullTransactionId(xid)) == id_xid;
}

/*
 * hub_outbox_check --- BEFORE INSERT row trigger on hub.outbox: the checks
 * of hub_outbox_check_event, then xid, published_at, the contract version
 * and the traceparent (hub_traceparent_for_event: the given one checked,
 * 22023, or a child of the inbox message in process, or a new trace)
 * stamped; an event
 * restored from a dump (restored_event) is kept as it is.
 */
PG_FUNCTION_INFO_V1(hub_outbox_check);
Datum
hub_outbox_check(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	HeapTuple	tuple;
	int			att_id,
				att_occurred,
				att_type,
				att_agg,
				att_corr,
				att_caus,
				att_payload,
				att_xid,
				att_published,
				att_version;
	int32		version;
	Datum		etype,
				agg,
				payload,
				corr,
				caus,
				id;
	bool		etype_null,
				agg_null,
				corr_null,
				caus_null,
				payload_null,
				id_null,
				id_was_null;
	int			att_trace;
	int			ncols = 2;
	int			cols[5];
	Datum		vals[5];
	bool		nulls[5] = {false, false, false, false, false};

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) || !TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		elog(ERROR, "hub._outbox_check must be a BEFORE INSERT row trigger");

	desc = RelationGetDescr(trigdata->tg_relation);
	tuple = trigdata->tg_trigtuple;
	att_id = SPI_fnumber(desc, "event_id");
	att_type = SPI_fnumber(desc, "event_type");
	att_agg = SPI_fnumber(desc, "aggregate_id");
	att_payload = SPI_fnumber(desc, "payload");
	att_corr = SPI_fnumber(desc, "correlation_id");
	att_caus = SPI_fnumber(desc, "causation_id");
	att_xid = SPI_fnumber(desc, "xid");
	att_published = SPI_fnumber(desc, "published_at");
	att_occurred = SPI_fnumber(desc, "occurred_at");
	att_version = SPI_fnumber(desc, "contract_version");	/* (not before 0.3.0) */
	att_trace = SPI_fnumber(desc, "traceparent");	/* (not before 0.3.0) */
	if (att_id <= 0 || att_type <= 0 || att_agg <= 0 || att_payload <= 0 || att_corr <= 0 || att_caus <= 0 || att_xid <= 0 || att_published <= 0 || att_occurred <= 0)
		elog(ERROR, "hub._outbox_check fired on a table that is not hub.outbox");
	if (restored_event(tuple, desc, att_id, att_xid, att_published))
		return PointerGetDatum(tuple);

	etype = heap_getattr(tuple, att_type, desc, &etype_null);
	agg = heap_getattr(tuple, att_agg, desc, &agg_null);
	payload = heap_getattr(tuple, att_payload, desc, &payload_null);
	corr = heap_getattr(tuple, att_corr, desc, &corr_null);
	caus = heap_getattr(tuple, att_caus, desc, &caus_null);
	id = heap_getattr(tuple, att_id, desc, &id_null);
	id_was_null = id_null;
	if (!hub_outbox_check_event(etype, etype_null, agg, agg_null, payload, payload_null, &id, &id_null,
								corr, corr_null, caus, caus_null, &version))
		return PointerGetDatum(tuple);
	{
		bool		occurred_null;
		Datum		occurred = heap_getattr(tuple, att_occurred, desc, &occurred_null);

		if (!occurred_null)
			hub_check_occurred_at(occurred);
	}
	if (id_was_null)
	{
		cols[ncols] = att_id;
		vals[ncols] = id;
		ncols++;
	}
	if (att_version > 0)
	{
		cols[ncols] = att_version;
		vals[ncols] = Int32GetDatum(version);
		nulls[ncols] = (version == 0);
		ncols++;
	}
	if (att_trace > 0)
	{
		bool		trace_null;
		Datum		trace = heap_getattr(tuple, att_trace, desc, &trace_null);

		hub_traceparent_for_event(&trace, &trace_null);
		cols[ncols] = att_trace;
		vals[ncols] = trace;
		ncols++;
	}
	cols[0] = att_xid;
	vals[0] = FullTransactionIdGetDatum(GetTopFullTransactionId());
	cols[1] = att_published;
	vals[1] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	return PointerGetDatum(heap_modify_tuple_by_cols(tuple, desc, ncols, cols, vals, nulls));
}

/*
 * hub_event_types_changed --- statement trigger on hub.event_types: queue a
 * relcache invalidation so every backend reloads its catalogue cache.
 */
PG_FUNCTION_INFO_V1(hub_event_types_changed);
Datum
hub_event_types_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "hub._event_types_changed must be called as a trigger");
	CacheInvalidateRelcacheByRelid(RelationGetRelid(trigdata->tg_relation));
	return PointerGetDatum(NULL);
}
