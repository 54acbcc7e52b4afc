/*-------------------------------------------------------------------------
 *
 * outbox_publish.c
 *		hub.publish(): write one event to hub.outbox in the caller's
 *		transaction.
 *
 * Publishing is the hot path of the hub (the issue asks for 0.85 of a
 * plain INSERT), and a plain INSERT through SPI costs a second executor per
 * call: plan-cache revalidation, a Result node projecting eleven columns
 * and a ModifyTable node, set up and torn down for one row.  So hub.publish
 * inserts the row the way logical replication applies one
 * (ExecSimpleRelationInsert): BEFORE and AFTER row triggers (the contract
 * check among them), NOT NULL and CHECK constraints, every index and the
 * identity default all apply as they do to a plain INSERT, without a plan.
 *
 * That is only the same as a plain INSERT while hub.outbox has the shape
 * this file knows: the thirteen columns of 40_outbox.sql (defaults only where
 * the values are supplied here or stamped by the contract trigger), no row
 * security, no statement-level INSERT triggers or transition tables, and
 * table-level INSERT privilege for the caller.  Whenever that does not
 * hold, publish falls back to the plain INSERT through a plan prepared
 * once per backend (SPI_keepplan), which handles everything, including
 * column privileges and the exact privilege error.  The shape is checked
 * once and again after every relcache invalidation of hub.outbox; the
 * cheap conditions (privilege, row security, triggers) on every call.
 * When the contract check is the only trigger an INSERT fires (and
 * session_replication_role is origin, so that it would fire), the direct
 * insert runs the same check (hub_outbox_check_event) on the values instead
 * of calling the trigger, which saves forming the row twice.
 * hub.publish is SECURITY INVOKER either way: the caller needs INSERT on
 * hub.outbox (hub_writer has it).  Called without a correlation (or
 * causation) id while hub.process_inbox processes a message, it takes the
 * message's (context_default), so that what an inbound record causes is
 * traced back to it.
 *
 * extension/outbox_publish.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "catalog/pg_trigger.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/value.h"
#include "parser/parse_func.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

#include "outbox.h"
#include "traceparent.h"

#define PUBLISH_NARGS 9			/* columns the publish INSERT names */
#define OUTBOX_NATTS 13

/* hub.outbox as 40_outbox.sql makes it, in column order */
static const struct
{
	const char *name;
	Oid			type;
	bool		may_have_default;	/* supplied here, so its default is never used */
}			outbox_columns[OUTBOX_NATTS] =
{
	{"event_id", UUIDOID, true},
	{"seq", INT8OID, false},		/* identity: nextval here */
	{"event_type", TEXTOID, true},
	{"aggregate_id", TEXTOID, true},
	{"payload", JSONBOID, true},
	{"correlation_id", TEXTOID, true},
	{"causation_id", TEXTOID, true},
	{"headers", JSONBOID, true},
	{"occurred_at", TIMESTAMPTZOID, true},
	{"published_at", TIMESTAMPTZOID, false},	/* stamped by the trigger */
	{"xid", XID8OID, false},	/* stamped by the trigger */
	{"contract_version", INT4OID, false},	/* stamped by the trigger */
	{"traceparent", TEXTOID, true}	/* given, or stamped by the trigger */
};

/* what this backend knows of hub.outbox; valid until a relcache invalidation */
static Oid	outbox_relid = InvalidOid;
static bool outbox_known = false;
static bool outbox_direct = false;	/* the shape allows the direct insert */
static Oid	outbox_seqid = InvalidOid;
static bool outbox_check_only = false;	/* the contract check is its only INSERT trigger */
static bool publish_callback_registered = false;

/*
 * publish_invalidate --- relcache callback: forget what we know of
 * hub.outbox when it (or everything) is invalidated.
 */
static void
publish_invalidate(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == outbox_relid)
		outbox_known = false;
}

/*
 * check_is_only_insert_trigger --- is the contract check (hub._outbox_check,
 * no arguments, no WHEN, firing on origin) the one trigger an INSERT into
 * hub.outbox fires?  Then the direct insert runs the same check itself
 * (hub_outbox_check_event) instead of the trigger machinery.
 */
static bool
check_is_only_insert_trigger(Relation rel)
{
	TriggerDesc *td = rel->trigdesc;
	Oid			check_oid;
	int			n = 0;
	int			i;

	if (td == NULL || !td->trig_insert_before_row || td->trig_insert_after_row ||
		td->trig_insert_before_statement || td->trig_insert_after_statement ||
		td->trig_insert_new_table || td->trig_insert_instead_row)
		return false;
	check_oid = LookupFuncName(list_make2(makeString("hub"), makeString("_outbox_check")), 0, NULL, true);
	for (i = 0; i < td->numtriggers; i++)
	{
		Trigger    *t = &td->triggers[i];

		if (!TRIGGER_FOR_INSERT(t->tgtype))
			continue;
		if (t->tgfoid != check_oid || !TRIGGER_FOR_ROW(t->tgtype) || !TRIGGER_FOR_BEFORE(t->tgtype) ||
			t->tgenabled != TRIGGER_FIRES_ON_ORIGIN || t->tgnargs != 0 || t->tgqual != NULL)
			return false;
		n++;
	}
	return n == 1;
}

/*
 * outbox_shape_ok --- does the opened hub.outbox have exactly the columns
 * of 40_outbox.sql (no dropped or added ones, seq the only identity, no
 * generated column, no default where none is expected)?  Sets the identity
 * sequence.
 */
static bool
outbox_shape_ok(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;

	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rel->relispartition ||
		desc->natts != OUTBOX_NATTS)
		return false;
	for (i = 0; i < OUTBOX_NATTS; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || att->atttypid != outbox_columns[i].type ||
			strcmp(NameStr(att->attname), outbox_columns[i].name) != 0 ||
			att->attgenerated != '\0' ||
			(att->atthasdef && !outbox_columns[i].may_have_default) ||
			(i == 1) != (att->attidentity == ATTRIBUTE_IDENTITY_ALWAYS))
			return false;
	}
	outbox_seqid = getIdentitySequence(RelationGetRelid(rel), 2, true);
	outbox_check_only = check_is_only_insert_trigger(rel);
	return OidIsValid(outbox_seqid);
}

/*
 * open_outbox --- hub.outbox locked for inserting, with what we know of it
 * brought up to date.
 */
static Relation
open_outbox(void)
{
	Relation	rel = NULL;

	if (!publish_callback_registered)
	{
		CacheRegisterRelcacheCallback(publish_invalidate, (Datum) 0);
		publish_callback_registered = true;
	}
	if (OidIsValid(outbox_relid))
		rel = try_table_open(outbox_relid, RowExclusiveLock);
	if (rel != NULL && (strcmp(RelationGetRelationName(rel), "outbox") != 0 ||
						get_namespace_oid("hub", true) != RelationGetNamespace(rel)))
	{
		table_close(rel, RowExclusiveLock);
		rel = NULL;
	}
	if (rel == NULL)
	{
		outbox_known = false;
		outbox_relid = RangeVarGetRelid(makeRangeVar("hub", "outbox", -1), RowExclusiveLock, false);
		rel = table_open(outbox_relid, NoLock);
	}
	/* (opening may have processed an invalidation: check after it) */
	if (!outbox_known)
	{
		outbox_direct = outbox_shape_ok(rel);
		outbox_known = true;
	}
	return rel;
}

/*
 * direct_allowed --- may this call insert directly (same effect as the plain
 * INSERT)?  Per call: the caller's table privilege, row security, triggers.
 */
static bool
direct_allowed(Relation rel)
{
	TriggerDesc *td = rel->trigdesc;

	if (!outbox_direct || rel->rd_rel->relrowsecurity)
		return false;
	if (td != NULL && (td->trig_insert_before_statement || td->trig_insert_after_statement ||
					   td->trig_insert_new_table || td->trig_insert_instead_row))
		return false;
	return pg_class_aclcheck(RelationGetRelid(rel), GetUserId(), ACL_INSERT) == ACLCHECK_OK;
}

/*
 * insert_direct --- insert one row of values (in the publish INSERT's
 * column order) as ExecSimpleRelationInsert does for logical replication:
 * row triggers, constraints, indexes and the identity default apply.
 */
static void
insert_direct(Relation rel, Datum *values, char *nulls)
{
	EState	   *estate = CreateExecutorState();
	RangeTblEntry *rte = makeNode(RangeTblEntry);
	ResultRelInfo *rri = makeNode(ResultRelInfo);
	TupleTableSlot *slot;
	int			i;

	rte->rtekind = RTE_RELATION;
	rte->relid = RelationGetRelid(rel);
	rte->relkind = RELKIND_RELATION;
	rte->rellockmode = RowExclusiveLock;
	ExecInitRangeTable(estate, list_make1(rte));
	ExecInitResultRelation(estate, rri, 1);
	estate->es_output_cid = GetCurrentCommandId(true);
	ExecOpenIndices(rri, false);

	slot = ExecInitExtraTupleSlot(estate, RelationGetDescr(rel), &TTSOpsVirtual);
	ExecClearTuple(slot);
	for (i = 0; i < OUTBOX_NATTS; i++)
	{
		slot->tts_values[i] = (Datum) 0;
		slot->tts_isnull[i] = true;
	}
	/*
	 * event_id, then (seq) event_type .. occurred_at, and traceparent;
	 * published_at, xid, contract_version by the trigger
	 */
	slot->tts_values[0] = values[0];
	slot->tts_isnull[0] = false;
	slot->tts_values[1] = Int64GetDatum(nextval_internal(outbox_seqid, false));
	slot->tts_isnull[1] = false;
	for (i = 1; i < PUBLISH_NARGS - 1; i++)
	{
		slot->tts_values[i + 1] = values[i];
		slot->tts_isnull[i + 1] = (nulls[i] == 'n');
	}
	slot->tts_values[12] = values[8];
	slot->tts_isnull[12] = (nulls[8] == 'n');
	if (outbox_check_only && SessionReplicationRole == SESSION_REPLICATION_ROLE_ORIGIN)
	{
		/* the contract trigger's work, without the trigger call */
		bool		id_null = false;
		int32		version;

		if (hub_outbox_check_event(slot->tts_values[2], slot->tts_isnull[2],
								   slot->tts_values[3], slot->tts_isnull[3],
								   slot->tts_values[4], slot->tts_isnull[4],
								   &slot->tts_values[0], &id_null,
								   slot->tts_values[5], slot->tts_isnull[5],
								   slot->tts_values[6], slot->tts_isnull[6], &version))
		{
			slot->tts_values[9] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
			slot->tts_isnull[9] = false;
			slot->tts_values[10] = FullTransactionIdGetDatum(GetTopFullTransactionId());
			slot->tts_isnull[10] = false;
			slot->tts_values[11] = Int32GetDatum(version);
			slot->tts_isnull[11] = (version == 0);
			hub_traceparent_for_event(&slot->tts_values[12], &slot->tts_isnull[12]);
		}
		rri->ri_TrigDesc = NULL;
	}
	ExecStoreVirtualTuple(slot);

	AfterTriggerBeginQuery();
	ExecSimpleRelationInsert(rri, estate, slot);
	AfterTriggerEndQuery(estate);

	ExecResetTupleTable(estate->es_tupleTable, false);
	ExecCloseResultRelations(estate);
	ExecCloseRangeTableRelations(estate);
	FreeExecutorState(estate);
}

/*
 * insert_spi --- the same row through a plain INSERT (plans kept per
 * backend): the fallback for every case the direct insert does not cover.
 * Without a traceparent the INSERT does not name the column (the contract
 * trigger stamps it), so that publishing also works while the library is
 * newer than the extension's tables (before ALTER EXTENSION UPDATE).
 */
static void
insert_spi(Datum *values, char *nulls)
{
	static SPIPlanPtr plans[2] = {NULL, NULL};
	bool		traced = (nulls[PUBLISH_NARGS - 1] != 'n');
	int			nargs = traced ? PUBLISH_NARGS : PUBLISH_NARGS - 1;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (plans[traced] == NULL)
	{
		Oid			types[PUBLISH_NARGS] = {UUIDOID, TEXTOID, TEXTOID, JSONBOID,
		TEXTOID, TEXTOID, JSONBOID, TIMESTAMPTZOID, TEXTOID};
		SPIPlanPtr	p = SPI_prepare(traced ?
									"INSERT INTO hub.outbox (event_id, event_type, aggregate_id, payload,"
									" correlation_id, causation_id, headers, occurred_at, traceparent)"
									" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)" :
									"INSERT INTO hub.outbox (event_id, event_type, aggregate_id, payload,"
									" correlation_id, causation_id, headers, occurred_at)"
									" VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
									nargs, types);

		if (p == NULL)
			elog(ERROR, "could not prepare the hub.publish insert: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		plans[traced] = p;
	}
	if (SPI_execute_plan(plans[traced], values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "hub.publish insert failed");
	SPI_finish();
}

/*
 * context_default --- the value of a transaction-local setting that
 * hub.process_inbox sets for the message it processes (60_inbox.sql), as
 * a text datum, when it is set and not empty; otherwise leaves *value NULL.
 * A publisher that passes its own id is never overridden.
 */
static void
context_default(const char *setting, Datum *value, char *null)
{
	const char *v = GetConfigOption(setting, true, false);

	if (v != NULL && v[0] != '\0')
	{
		*value = CStringGetTextDatum(v);
		*null = ' ';
	}
}

/*
 * hub_publish --- SQL hub.publish(event_type, aggregate_id, payload,
 * correlation_id, causation_id, headers, occurred_at, traceparent): returns
 * the new event id.  Errors are those of the INSERT (the contract trigger's
 * 22023, an invalid traceparent among them, 23502 for a missing event type,
 * aggregate id or payload, 42501 without INSERT privilege).
 */
PG_FUNCTION_INFO_V1(hub_publish);
Datum
hub_publish(PG_FUNCTION_ARGS)
{
	static Datum empty_headers = (Datum) 0;
	Datum		id;
	Datum		values[PUBLISH_NARGS];
	char		nulls[PUBLISH_NARGS];
	Relation	rel;
	int			i;

	/* as the executor does for any INSERT (the direct insert has no executor) */
	if (XactReadOnly)
		PreventCommandIfReadOnly("INSERT");
	id = DirectFunctionCall1(hub_event_id, (Datum) 0);
	values[0] = id;
	nulls[0] = ' ';
	for (i = 0; i < 6; i++)
	{
		nulls[i + 1] = PG_ARGISNULL(i) ? 'n' : ' ';
		values[i + 1] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
	}
	/* no correlation or causation id given: those of the inbox message in process */
	if (PG_ARGISNULL(3))
		context_default("hub.inbox_correlation_id", &values[4], &nulls[4]);
	if (PG_ARGISNULL(4))
		context_default("hub.inbox_causation_id", &values[5], &nulls[5]);
	if (PG_ARGISNULL(5))		/* headers: none, one '{}' kept for the backend */
	{
		if (empty_headers == (Datum) 0)
		{
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			empty_headers = DirectFunctionCall1(jsonb_in, CStringGetDatum("{}"));
			MemoryContextSwitchTo(old);
		}
		values[6] = empty_headers;
		nulls[6] = ' ';
	}
	nulls[7] = ' ';
	values[7] = PG_ARGISNULL(6) ? TimestampTzGetDatum(GetCurrentTransactionStartTimestamp())
		: PG_GETARG_DATUM(6);
	/* (the direct insert does not run the trigger, which checks it too) */
	hub_check_occurred_at(values[7]);
	/* traceparent: the publisher's, or NULL for the trigger's (trace_context.c) */
	/* (the seven-argument hub.publish of 0.2.0, before ALTER EXTENSION UPDATE) */
	if (PG_NARGS() > 7 && !PG_ARGISNULL(7))
	{
		nulls[8] = ' ';
		values[8] = PG_GETARG_DATUM(7);
	}
	else
	{
		nulls[8] = 'n';
		values[8] = (Datum) 0;
	}

	rel = open_outbox();
	if (direct_allowed(rel))
		insert_direct(rel, values, nulls);
	else
		insert_spi(values, nulls);
	table_close(rel, NoLock);
	PG_RETURN_DATUM(id);
}
