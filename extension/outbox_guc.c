/*-------------------------------------------------------------------------
 *
 * outbox_guc.c
 *		Settings of the transactional outbox and the two tiny SQL functions
 *		that read them from the outbox triggers.
 *
 * logistics_hub.unknown_event_types (accept | reject, default accept, any
 * user): what publishing an event type that is missing from hub.event_types
 * does.  accept stores it after checking only the <entity>.<verb> name, so
 * applications can start publishing before the catalogue is complete;
 * reject enforces contract governance (22023).
 *
 * logistics_hub.retention_period (seconds, default 7 days, superuser) and
 * logistics_hub.dead_retention_period (seconds, default 30 days,
 * superuser): what hub.run_retention() removes (sql/src/80_retention.sql):
 * finished events and attempts older than the first; dead deliveries are
 * kept until the second, so that they can still be replayed.
 * logistics_hub.inbox_retention_period (seconds, default 30 days, superuser)
 * is the inbox's deduplication window: a processed inbox message is removed
 * once it was received, processed and last seen again (a duplicate) longer
 * ago than that; a dead or unhandled one after dead_retention_period.
 * logistics_hub.retention_max_events (default 100,000, superuser) bounds one
 * call, which is one transaction: dispatcher 0 runs it between deliveries.
 *
 * logistics_hub.max_payload_size (bytes, default 1 MB, 1 kB to 256 MB,
 * superuser): the largest payload hub.publish, a plain INSERT into
 * hub.outbox and hub.receive accept (54000 beyond it), measured
 * uncompressed as the jsonb is stored.  Superuser-only, so that a writer
 * cannot raise it for its own session: it bounds what a dispatcher holds
 * for one event, and with logistics_hub.claim_max_bytes what one claim
 * takes.  The upper end is jsonb's own limit on a container (256 MB).
 *
 * logistics_hub._retention (boolean, superuser only, hidden): the one door
 * through which published events, attempts and audit rows may be removed.
 * The immutability triggers refuse UPDATE and DELETE unless it is on; only a
 * superuser can set it, so in practice only hub's own retention function
 * (SECURITY DEFINER, owned by the extension owner) turns it on, with
 * SET LOCAL for the length of its transaction.  The triggers read it
 * through hub._retention_active() rather than current_setting(), because
 * calling a C function loads this library: a value set as a placeholder by
 * an ordinary user before the library was loaded is then discarded by the
 * GUC machinery instead of being believed.  The trigger itself,
 * hub._immutable(), is here too, in C, since the retention job fires it for
 * every row it removes.
 *
 * logistics_hub.restoring (boolean, superuser only): the session is
 * restoring a dump of the hub, so the contract trigger of hub.outbox takes
 * the events of the dump as they are: their ids were made by transactions
 * of the dumped database, not by the restoring one, and their xid and
 * published_at are kept (extension/outbox_check.c).  A restore turns it on
 * by itself: pg_dump writes the one row of hub._restore_marker, whose name
 * sorts before every queue table, and inserting it (superuser only) runs
 * hub._restore_begin(), which sets the setting for the session and stores
 * nothing.  A restore whose statements do not all run in that one session
 * (pg_restore --jobs) sets it itself (PGOPTIONS='-c
 * logistics_hub.restoring=on').  Only a superuser can set it, and it takes
 * effect only for a superuser, who could disable the triggers anyway; the
 * immutability triggers ignore it (a restore only inserts).
 *
 * extension/outbox_guc.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "catalog/partition.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "outbox.h"

/* values of logistics_hub.unknown_event_types */
typedef enum HubUnknownEventTypes
{
	HUB_UNKNOWN_ACCEPT,
	HUB_UNKNOWN_REJECT
} HubUnknownEventTypes;

static const struct config_enum_entry unknown_event_type_options[] = {
	{"accept", HUB_UNKNOWN_ACCEPT, false},
	{"reject", HUB_UNKNOWN_REJECT, false},
	{NULL, 0, false}
};

static int	hub_unknown_event_types = HUB_UNKNOWN_ACCEPT;
static bool hub_retention = false;
static int	hub_retention_period = 7 * 86400;
static int	hub_dead_retention_period = 30 * 86400;
static int	hub_inbox_retention_period = 30 * 86400;
static int	hub_retention_max_events = 100000;
int			hub_max_payload_size = 1024 * 1024;
bool		hub_restoring = false;

/*
 * hub_outbox_define_gucs --- define the outbox settings.  Called from
 * _PG_init in every backend that loads the library (the settings make sense
 * without shared_preload_libraries).
 */
void
hub_outbox_define_gucs(void)
{
	DefineCustomEnumVariable("logistics_hub.unknown_event_types",
							 "What publishing an event type missing from hub.event_types does.",
							 "accept stores it after checking its <entity>.<verb> name; "
							 "reject raises an error (SQLSTATE 22023).",
							 &hub_unknown_event_types,
							 HUB_UNKNOWN_ACCEPT,
							 unknown_event_type_options,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("logistics_hub.retention_period",
							"How long delivered events and attempts are kept before hub.run_retention() removes them.",
							"Events with an undelivered delivery are never removed.",
							&hub_retention_period,
							7 * 86400, 60, INT_MAX,
							PGC_SUSET, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("logistics_hub.dead_retention_period",
							"How long dead deliveries (and their events) are kept for replay before hub.run_retention() removes them.",
							NULL,
							&hub_dead_retention_period,
							30 * 86400, 60, INT_MAX,
							PGC_SUSET, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("logistics_hub.inbox_retention_period",
							"How long processed inbox messages are kept, and so recognized as duplicates, before hub.run_retention() removes them.",
							"Counted from the last of receipt, processing and the last duplicate; "
							"a message sent again after its row was removed is accepted as new. "
							"Dead and unhandled messages are kept for logistics_hub.dead_retention_period.",
							&hub_inbox_retention_period,
							30 * 86400, 60, INT_MAX,
							PGC_SUSET, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("logistics_hub.retention_max_events",
							"Most events, and most inbox messages, one hub.run_retention() call removes.",
							"A call runs in one transaction (dispatcher 0 runs it between its deliveries); "
							"about 50 microseconds an event.",
							&hub_retention_max_events,
							100000, 1, INT_MAX,
							PGC_SUSET, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("logistics_hub.max_payload_size",
							"Largest event or inbox payload accepted (jsonb, uncompressed).",
							"hub.publish, INSERT into hub.outbox and hub.receive raise SQLSTATE 54000 "
							"for a larger payload.",
							&hub_max_payload_size,
							1024 * 1024, 1024, 256 * 1024 * 1024,
							PGC_SUSET, GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("logistics_hub._retention",
							 "Lets hub's retention job remove published events and audit rows.",
							 "Internal: set locally by the retention function only.",
							 &hub_retention,
							 false,
							 PGC_SUSET,
							 GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE | GUC_DISALLOW_IN_FILE,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("logistics_hub.restoring",
							 "The session restores a dump of the hub: events keep the ids, xid and publication time they have in the dump.",
							 "Set by the restore itself (the row of hub._restore_marker); "
							 "set it with PGOPTIONS for a restore in several sessions (pg_restore --jobs).",
							 &hub_restoring,
							 false,
							 PGC_SUSET,
							 GUC_NOT_IN_SAMPLE | GUC_DISALLOW_IN_FILE,
							 NULL, NULL, NULL);
}

/*
 * hub_outbox_reject_unknown --- true when unknown event types are refused.
 */
bool
hub_outbox_reject_unknown(void)
{
	return hub_unknown_event_types == HUB_UNKNOWN_REJECT;
}

/*
 * hub_retention_active --- SQL hub._retention_active(): true while the
 * retention job has logistics_hub._retention on.
 */
PG_FUNCTION_INFO_V1(hub_retention_active);
Datum
hub_retention_active(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(hub_retention);
}

/*
 * hub_immutable --- SQL trigger hub._immutable() (BEFORE UPDATE OR DELETE
 * row trigger and BEFORE TRUNCATE statement trigger on hub.outbox and the
 * audit tables): lets DELETE and TRUNCATE through while the retention job
 * has logistics_hub._retention on, and refuses everything else with 55000
 * ("published events are immutable", or "hub.<table> is append-only").
 */
PG_FUNCTION_INFO_V1(hub_immutable);
Datum
hub_immutable(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	rel;
	const char *op;
	const char *table;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(td->tg_event))
		elog(ERROR, "hub._immutable must be a BEFORE trigger");
	if (!TRIGGER_FIRED_BY_UPDATE(td->tg_event) && hub_retention)
		return TRIGGER_FIRED_FOR_ROW(td->tg_event) ? PointerGetDatum(td->tg_trigtuple) : PointerGetDatum(NULL);

	op = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? "UPDATE" :
		TRIGGER_FIRED_BY_DELETE(td->tg_event) ? "DELETE" : "TRUNCATE";
	rel = td->tg_relation;
	table = rel->rd_rel->relispartition ?
		get_rel_name(get_partition_parent(RelationGetRelid(rel), false)) : RelationGetRelationName(rel);
	if (strcmp(table, "outbox") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("published events are immutable"),
				 errdetail("%s on hub.outbox is refused.", op),
				 errhint("Publish a new event (a correction or compensation) instead; old events are removed by the retention job only.")));
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("hub.%s is append-only", table),
			 errdetail("%s on hub.%s is refused.", op, table),
			 errhint("Audit rows are removed by the retention job only.")));
	PG_RETURN_NULL();			/* not reached */
}

/*
 * hub_restore_begin --- SQL trigger hub._restore_begin() (BEFORE INSERT row
 * trigger on hub._restore_marker): the restore of a dump inserts the
 * marker's row before any queue table's, which turns
 * logistics_hub.restoring on for the rest of the session; the row itself
 * is not stored (the extension's own is there).  Raises 42501 for a user
 * who is not a superuser.
 */
PG_FUNCTION_INFO_V1(hub_restore_begin);
Datum
hub_restore_begin(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) || !TRIGGER_FIRED_BY_INSERT(td->tg_event))
		elog(ERROR, "hub._restore_begin must be a BEFORE INSERT row trigger");
	if (!superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("only a superuser can restore a dump of logistics_hub"),
				 errhint("Run pg_restore, or psql with the dump, as a superuser.")));
	SetConfigOption("logistics_hub.restoring", "on", PGC_SUSET, PGC_S_SESSION);
	return PointerGetDatum(NULL);
}
