/*-------------------------------------------------------------------------
 *
 * step_guard.c
 *		Keep one event, subscription or endpoint from stopping a worker:
 *		run a piece of a step's SQL in a subtransaction, tell an error that
 *		belongs to the data from one that belongs to the server, and pause
 *		an endpoint the worker cannot serve.
 *
 * A worker's steps (claim, record) run as one transaction for everything
 * at once, which is what makes them cheap.  When such a step fails, the
 * dispatcher does it again piece by piece (push_claim.c, push_record.c): each
 * piece here in a subtransaction of its own, so that one that fails is
 * rolled back alone and the others go through.  What fails alone is then
 * dealt with where it belongs: an endpoint paused with the reason audited
 * (hub._pause_by_worker), an event kept aside (hub._route_events_each).
 *
 * Not every error is one piece's fault.  An error of the server or of the
 * extension itself (a missing object while the extension is dropped,
 * resources, a lock, a cancel, an internal error: hub_error_is_general)
 * would make every piece fail in turn, and pausing every endpoint for it
 * would be wrong: such an error still ends the worker, which the launcher
 * starts again, as before.
 *
 * workers/step_guard.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "utils/builtins.h"
#include "utils/resowner.h"

#include "http.h"

/*
 * hub_guard_run --- fn(arg) in a subtransaction of the current transaction
 * (inside SPI).  True when it succeeded; otherwise its work is rolled back,
 * *err describes the error (allocated in the caller's memory context) and
 * the result is false.  What fn leaves in SPI_tuptable survives a success.
 */
bool
hub_guard_run(void (*fn) (void *), void *arg, HubStepError *err)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool ok = true;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		hub_step_error_take(err);
		RollbackAndReleaseCurrentSubTransaction();
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return ok;
}

/*
 * hub_step_error_take --- inside PG_CATCH, in a memory context that
 * outlives the error: copy the error being handled into *err and clear it.
 * The caller logs err->message on one line; the error's CONTEXT (the
 * PL/pgSQL calls and statements) goes to a DEBUG1 line here.
 */
void
hub_step_error_take(HubStepError *err)
{
	ErrorData  *edata = CopyErrorData();
	ErrorContextCallback *stack = error_context_stack;

	FlushErrorState();
	err->sqlerrcode = edata->sqlerrcode;
	err->message = psprintf("%s (SQLSTATE %s)", edata->message, unpack_sql_state(edata->sqlerrcode));
	if (edata->context != NULL)
	{
		error_context_stack = NULL; /* (only the error's own context) */
		HOLD_INTERRUPTS();		/* (its end must not throw inside PG_CATCH) */
		ereport(DEBUG1,
				(errmsg_internal("%s: %s", MyBgworkerEntry ? MyBgworkerEntry->bgw_name : "logistics_hub",
								 err->message),
				 errcontext("%s", edata->context)));
		RESUME_INTERRUPTS();
		error_context_stack = stack;
	}
	FreeErrorData(edata);
}

/*
 * hub_error_is_general --- is this error the server's or the extension's
 * rather than one event's, subscription's or endpoint's?  Connection,
 * transaction and lock trouble, undefined or wrong objects (the extension
 * being dropped or updated), insufficient resources, objects not in the
 * required state, operator intervention (cancel, shutdown), system and
 * internal errors.
 */
bool
hub_error_is_general(int sqlerrcode)
{
	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
		case ERRCODE_CONNECTION_EXCEPTION:
		case ERRCODE_INVALID_TRANSACTION_STATE:
		case ERRCODE_TRANSACTION_ROLLBACK:
		case ERRCODE_SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION:
		case ERRCODE_INSUFFICIENT_RESOURCES:
		case ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE:
		case ERRCODE_OPERATOR_INTERVENTION:
		case ERRCODE_SYSTEM_ERROR:
		case ERRCODE_CONFIG_FILE_ERROR:
		case ERRCODE_INTERNAL_ERROR:
			return true;
		default:
			return false;
	}
}

typedef struct PauseArgs
{
	int			endpoint_id;
	const char *action;
	const char *reason;
} PauseArgs;

static void
pause_endpoint(void *arg)
{
	PauseArgs  *a = arg;
	Oid			types[3] = {INT4OID, TEXTOID, TEXTOID};
	Datum		values[3] = {Int32GetDatum(a->endpoint_id), CStringGetTextDatum(a->action),
	CStringGetTextDatum(a->reason)};

	if (SPI_execute_with_args("SELECT hub._pause_by_worker($1, $2, $3)", 3, types, values, NULL, false, 0)
		!= SPI_OK_SELECT)
		elog(ERROR, "pausing endpoint %d failed", a->endpoint_id);
}

/*
 * hub_guard_pause --- pause an endpoint this worker cannot serve, audited
 * as action with the reason (hub._pause_by_worker: a WARNING names the
 * endpoint), in a subtransaction of the current step; a failure to do so
 * is only logged.
 */
void
hub_guard_pause(int endpoint_id, const char *action, const char *reason)
{
	PauseArgs	a = {endpoint_id, action, reason};
	HubStepError err;

	if (!hub_guard_run(pause_endpoint, &a, &err))
		ereport(WARNING,
				(errcode(err.sqlerrcode),
				 errmsg("logistics_hub could not pause endpoint %d: %s", endpoint_id, err.message)));
}
