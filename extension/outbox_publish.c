/*-------------------------------------------------------------------------
 *
 * outbox_publish.c
 *		hub.publish(): write one event to hub.outbox in the caller's
 *		transaction.
 *
 * Publishing is the hot path of the hub, so hub.publish is a C function
 * running one INSERT through a plan prepared once per backend (SPI_keepplan;
 * the plan cache re-plans it after DDL on the table).  It is SECURITY
 * INVOKER: the caller needs INSERT on hub.outbox (hub_writer has it), and
 * the INSERT goes through the executor, so the contract trigger, the
 * constraints and any other trigger on the table apply exactly as they do
 * to a plain INSERT.  The event id is made here (hub._event_id()) so no
 * RETURNING, and no SELECT privilege, is needed.
 *
 * extension/outbox_publish.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "outbox.h"

#define PUBLISH_NARGS 8

/*
 * hub_publish --- SQL hub.publish(event_type, aggregate_id, payload,
 * correlation_id, causation_id, headers, occurred_at): returns the new
 * event id.  Errors are those of the INSERT (the contract trigger's 22023,
 * 23502 for a missing event type, aggregate id or payload, 42501 without
 * INSERT privilege).
 */
PG_FUNCTION_INFO_V1(hub_publish);
Datum
hub_publish(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	Datum		id = DirectFunctionCall1(hub_event_id, (Datum) 0);
	Datum		values[PUBLISH_NARGS];
	char		nulls[PUBLISH_NARGS];
	int			i;

	values[0] = id;
	nulls[0] = ' ';
	for (i = 0; i < 6; i++)
	{
		nulls[i + 1] = PG_ARGISNULL(i) ? 'n' : ' ';
		values[i + 1] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
	}
	if (PG_ARGISNULL(5))		/* headers: none */
	{
		values[6] = DirectFunctionCall1(jsonb_in, CStringGetDatum("{}"));
		nulls[6] = ' ';
	}
	nulls[7] = ' ';
	values[7] = PG_ARGISNULL(6) ? TimestampTzGetDatum(GetCurrentTransactionStartTimestamp())
		: PG_GETARG_DATUM(6);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (plan == NULL)
	{
		Oid			types[PUBLISH_NARGS] = {UUIDOID, TEXTOID, TEXTOID, JSONBOID,
		TEXTOID, TEXTOID, JSONBOID, TIMESTAMPTZOID};
		SPIPlanPtr	p = SPI_prepare("INSERT INTO hub.outbox (event_id, event_type, aggregate_id, payload,"
									" correlation_id, causation_id, headers, occurred_at)"
									" VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
									PUBLISH_NARGS, types);

		if (p == NULL)
			elog(ERROR, "could not prepare the hub.publish insert: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		plan = p;
	}
	if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "hub.publish insert failed");
	SPI_finish();
	PG_RETURN_DATUM(id);
}
