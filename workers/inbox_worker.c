/*-------------------------------------------------------------------------
 *
 * inbox_worker.c
 *		The inbox worker: processes hub.inbox in the background as messages
 *		arrive, so that nobody has to call hub.process_inbox.
 *
 * The launcher keeps logistics_hub.inbox_workers of them running for
 * logistics_hub.database, connected as logistics_hub.worker_role (never a
 * superuser) with the session pinned (hub_pin_session).  Each loop has two
 * kinds of step, each a short transaction of its own:
 *
 *   look     read only: hub._inbox_next_due(), when the earliest message
 *            that may be claimed is ready (its next_attempt_at, with the
 *            per-key order applied).  No transaction id, no WAL: an idle
 *            hub costs a look per wake-up or naptime and nothing else.
 *   process  when something is due: hub.process_inbox(inbox_batch), which
 *            claims the ready messages (hub._inbox_claim: row locks, SKIP
 *            LOCKED, one message per business key at a time) and runs each
 *            in a subtransaction of its own, so one failing message never
 *            stops the others.  A full batch is followed by another at
 *            once, any other by a look.
 *
 * The worker sleeps on its latch until the earliest due time, at most
 * logistics_hub.inbox_naptime.  The latch is set when a transaction that
 * inserted into hub.inbox commits (the statement-level trigger
 * hub._inbox_wake, workers/shmem.c), by SIGHUP and SIGTERM; the naptime is
 * only the safety net for a lost wake-up, and retries wake the worker by
 * their next_attempt_at.  Several workers never process one message twice
 * (the claim's row locks) and keep the order per key (the claim skips a
 * message while an earlier one of its key is pending).
 *
 * A step that fails (an error outside the per-message subtransactions) is
 * rolled back and logged as one WARNING line naming the worker, its
 * CONTEXT at DEBUG1: messages claimed by the failed transaction are
 * claimable again at once, since a claim is only a row lock.  An error of
 * the server or the extension (a lock, a revoked grant, the extension being
 * updated: hub_error_is_general) is waited out for a naptime.  Any other
 * error may be one message's doing (a handler's failed ASSERT, which
 * process_inbox's WHEN OTHERS does not catch), and that message would fail
 * every batch it is in, every time: the worker then processes messages one
 * at a time (isolate), each claimed first and run by process_inbox(1) in a
 * subtransaction, until one fails alone; that one is set aside as a failed
 * attempt (hub._inbox_settle: retried on its backoff, dead after
 * max_attempts) and the batches resume.  A worker
 * that finds no extension (or one without the inbox worker's functions)
 * exits quietly; the launcher starts it again after a pause.  A worker
 * killed in the middle of a batch loses nothing: the batch's transaction
 * never committed, so every message of it is still new.
 *
 * workers/inbox_worker.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/value.h"
#include "parser/parse_func.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "http.h"
#include "hub_workers.h"

/* settings */
int			hub_inbox_workers = 1;
static int	inbox_naptime_ms = 1000;
static int	inbox_batch = 500;

static SPIPlanPtr due_plan = NULL;
static SPIPlanPtr process_plan = NULL;
static SPIPlanPtr first_plan = NULL;
static SPIPlanPtr aside_plan = NULL;

/* after a batch failed for a reason that may be one message's: how many
 * messages to process one at a time, looking for it (0: batches) */
static int	isolate_left = 0;

/* hub_inbox_define_gucs --- the inbox workers' settings (from _PG_init) */
void
hub_inbox_define_gucs(void)
{
	DefineCustomIntVariable("logistics_hub.inbox_workers",
							"Number of inbox workers processing hub.inbox in the background (0: none; call hub.process_inbox yourself).",
							"Several workers never process one message twice and keep the order per business key.",
							&hub_inbox_workers, 1, 0, HUB_MAX_INBOX_WORKERS,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("logistics_hub.inbox_naptime",
							"How often an idle inbox worker looks for due messages without being woken (the safety net of the wake-up at commit).",
							"Retries wake the worker at their next_attempt_at in any case.",
							&inbox_naptime_ms, 1000, 10, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("logistics_hub.inbox_batch",
							"Most inbox messages an inbox worker processes in one transaction.",
							NULL, &inbox_batch, 500, 1, 10000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
}

/* ---------------------------------------------------------------- steps */

/*
 * begin_work_step --- hub_begin_work_step (a worker whose extension is
 * missing leaves quietly, exit code 0; the launcher starts it again after a
 * pause), with the worker's plans prepared
 */
static void
begin_work_step(const char *what)
{
	static Oid	batch_type[1] = {INT4OID};

	hub_begin_work_step(what);
	if (due_plan == NULL)
		due_plan = hub_prepare_plan("SELECT hub._inbox_next_due()", 0, NULL);
	if (process_plan == NULL)
		process_plan = hub_prepare_plan("SELECT processed, failed, unhandled FROM hub.process_inbox($1)", 1, batch_type);
	if (first_plan == NULL)
		first_plan = hub_prepare_plan("SELECT inbox_id, max_attempts, retry_base FROM hub._inbox_claim(1)", 0, NULL);
	if (aside_plan == NULL)
	{
		Oid			aside_types[4] = {INT8OID, TEXTOID, INT4OID, INTERVALOID};

		/* (a mapped message has no handler's settings: the defaults) */
		aside_plan = hub_prepare_plan("SELECT hub._inbox_settle($1, 'failed', $2, COALESCE($3, 5), "
							 "COALESCE($4, '1 second'::pg_catalog.interval))", 4, aside_types);
	}
}

/*
 * look --- when is the earliest claimable message due?  *due is 0 when
 * nothing is waiting.  Read only: takes no transaction id, writes no WAL.
 */
static void
look(void *arg)
{
	TimestampTz *due = arg;
	bool		isnull = true;
	Datum		d = (Datum) 0;

	begin_work_step("logistics_hub: look for inbox messages");
	if (SPI_execute_plan(due_plan, NULL, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "hub._inbox_next_due() returned no row");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	*due = isnull ? 0 : DatumGetTimestampTz(d);
	hub_end_step();
}

/*
 * process --- one batch: hub.process_inbox(inbox_batch) in a transaction
 * of its own; *(int *) arg is the number of messages it settled.
 */
static void
process(void *arg)
{
	int		   *n = arg;
	Datum		values[1] = {Int32GetDatum(inbox_batch)};

	*n = 0;
	begin_work_step("logistics_hub: process inbox messages");
	if (SPI_execute_plan(process_plan, values, NULL, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "hub.process_inbox() returned no row");
	for (int col = 1; col <= 3; col++)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col, &isnull);

		if (!isnull)
			*n += DatumGetInt32(d);
	}
	hub_end_step();
	if (*n > 0)
	{
		/* (one transaction claims and settles: both at once) */
		hub_status_claimed();
		hub_status_recorded();
	}
}

/* process_one --- hub.process_inbox(1), inside isolate's transaction */
static void
process_one(void *arg)
{
	Datum		values[1] = {Int32GetDatum(1)};

	if (SPI_execute_plan(process_plan, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "hub.process_inbox(1) returned no row");
}

/*
 * isolate --- one message alone: claim the first claimable message (a row
 * lock, which process_inbox's own claim in the same transaction takes
 * again, so it runs that message), then process it in a subtransaction.  If
 * that fails for a reason of its own (not hub_error_is_general), the
 * message is settled as a failed attempt with the error as its last_error,
 * logged as a WARNING, and *(int *) arg set to 2; 1 when it went through,
 * 0 when nothing was claimable.  An error of the server's is raised again.
 *
 * (A message that became claimable ahead of it between the two claims, an
 * instant, would be the one processed; if that one failed, the first
 * would be set aside in its place: a retry, never a loss.)
 */
static void
isolate(void *arg)
{
	int		   *outcome = arg;
	HubStepError err;
	bool		isnull;
	Datum		id,
				max_attempts,
				retry_base;
	bool		max_null,
				base_null;

	*outcome = 0;
	begin_work_step("logistics_hub: process an inbox message alone");
	if (SPI_execute_plan(first_plan, NULL, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "hub._inbox_claim(1) failed");
	if (SPI_processed == 0)
	{
		hub_end_step();
		return;
	}
	id = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	max_attempts = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &max_null);
	retry_base = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &base_null);
	if (!base_null)				/* (a copy, out of SPI's tuple table) */
		retry_base = PointerGetDatum(memcpy(palloc(sizeof(Interval)), DatumGetPointer(retry_base), sizeof(Interval)));
	*outcome = 1;
	if (!hub_guard_run(process_one, NULL, &err))
	{
		char	   *cut = strstr(err.message, " (SQLSTATE ");
		char	   *why;
		Datum		values[4];
		char		nulls[4] = {' ', ' ', max_null ? 'n' : ' ', base_null ? 'n' : ' '};

		if (hub_error_is_general(err.sqlerrcode))
			ereport(ERROR, (errcode(err.sqlerrcode), errmsg_internal("%s", err.message)));
		if (cut != NULL)
			*cut = '\0';
		/* as process_inbox keeps a handler's error: "SQLSTATE: message" */
		why = psprintf("%s: %s", unpack_sql_state(err.sqlerrcode), err.message);
		values[0] = id;
		values[1] = CStringGetTextDatum(why);
		values[2] = max_attempts;
		values[3] = retry_base;
		if (SPI_execute_plan(aside_plan, values, nulls, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "hub._inbox_settle failed");
		ereport(WARNING,
				(errcode(err.sqlerrcode),
				 errmsg("logistics_hub %s: inbox message %lld failed its batch, set aside as a failed attempt: %s",
						hub_worker_name, (long long) DatumGetInt64(id), why),
				 errdetail("An error that process_inbox does not catch per message (a failed ASSERT) rolls back the whole batch; the worker found this message by processing one at a time.")));
		*outcome = 2;
	}
	hub_end_step();
}

/*
 * guarded --- run a step; an error is rolled back and logged as one
 * WARNING line (its CONTEXT at DEBUG1, hub_step_error_take) and false
 * returned, with the error's SQLSTATE in *sqlerrcode, so that the worker
 * goes on.  FATAL (SIGTERM, postmaster death) is not caught: it ends the
 * worker as it should.
 */
static bool
guarded(void (*step) (void *), void *arg, const char *what, int *sqlerrcode)
{
	volatile bool ok = true;

	PG_TRY();
	{
		step(arg);
	}
	PG_CATCH();
	{
		HubStepError err;

		MemoryContextSwitchTo(hub_loop_cxt);
		hub_step_error_take(&err);
		AbortCurrentTransaction();
		MemoryContextSwitchTo(hub_loop_cxt);
		pgstat_report_activity(STATE_IDLE, NULL);
		ereport(WARNING,
				(errcode(err.sqlerrcode),
				 errmsg("logistics_hub %s: %s failed: %s", hub_worker_name, what, err.message),
				 sqlerrcode == NULL || hub_error_is_general(err.sqlerrcode) ?
				 errhint("The worker tries again after logistics_hub.inbox_naptime.") :
				 errhint("The worker processes the next messages one at a time to find the one that fails.")));
		if (sqlerrcode != NULL)
			*sqlerrcode = err.sqlerrcode;
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/* ---------------------------------------------------------------- main loop */

/*
 * work --- look, and process what is due; returns when to look next (0:
 * at once).  After a batch that failed for a reason that may be one
 * message's, the next messages go one at a time (isolate) until one fails
 * alone, nothing is left, or a batch's worth went through.
 */
static TimestampTz
work(bool *again)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz nap = now + (int64) inbox_naptime_ms * 1000;
	TimestampTz due = 0;
	int			n = 0;
	int			code = 0;

	if (!*again)
	{
		if (!guarded(look, &due, "look", NULL))
			return nap;
		if (due == 0)
			return nap;			/* nothing waiting */
		if (due > now)
			return Min(due, nap);	/* a retry, later */
	}
	*again = false;
	if (isolate_left > 0)
	{
		if (!guarded(isolate, &n, "process alone", NULL))
			return nap;
		/* 0: nothing left; 2: the culprit was found and set aside */
		isolate_left = (n == 1) ? isolate_left - 1 : 0;
		*again = isolate_left > 0;
		return n > 0 ? 0 : nap;
	}
	if (!guarded(process, &n, "process", &code))
	{
		if (hub_error_is_general(code))
			return nap;
		isolate_left = inbox_batch;
		*again = true;
		return 0;
	}
	/* a full batch: another at once; some: look again at once */
	*again = n >= inbox_batch;
	return n > 0 ? 0 : nap;
}

void
hub_inbox_worker_main(Datum arg)
{
	Oid			dboid;
	Oid			roleoid;
	int			dbslot;
	TimestampTz next_look = 0;
	bool		again = false;

	hub_worker_txn_init("inbox worker", DatumGetInt32(arg), "_inbox_next_due");
	memcpy(&dboid, MyBgworkerEntry->bgw_extra, sizeof(Oid));
	memcpy(&roleoid, MyBgworkerEntry->bgw_extra + sizeof(Oid), sizeof(Oid));
	memcpy(&dbslot, MyBgworkerEntry->bgw_extra + 2 * sizeof(Oid), sizeof(int));

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, roleoid, 0);
	hub_pin_session(hub_worker_name);
	pgstat_report_appname(psprintf("logistics_hub %s", hub_worker_name));
	hub_worker_attach(HUB_KIND_INBOX, dbslot, hub_my_slot);

	for (;;)
	{
		TimestampTz now;

		MemoryContextReset(hub_loop_cxt);
		MemoryContextSwitchTo(hub_loop_cxt);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			/* no longer wanted: leave (exit code 1, as the dispatchers) */
			if (hub_my_slot >= hub_inbox_workers)
			{
				ereport(LOG,
						(errmsg("logistics_hub %s exiting: logistics_hub.inbox_workers is now %d",
								hub_worker_name, hub_inbox_workers)));
				proc_exit(1);
			}
			if (!hub_database_listed(hub_my_database()))
			{
				ereport(LOG,
						(errmsg("logistics_hub %s exiting: database \"%s\" is no longer in logistics_hub.databases",
								hub_worker_name, hub_my_database())));
				proc_exit(1);
			}
		}

		now = GetCurrentTimestamp();
		if (again || now >= next_look)
		{
			next_look = work(&again);
			now = GetCurrentTimestamp();
		}
		if (!again && next_look > now)
		{
			long		timeout = (long) ((next_look - now + 999) / 1000);
			int			rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
									   timeout, PG_WAIT_EXTENSION);

			if (rc & WL_LATCH_SET)
			{
				ResetLatch(MyLatch);
				next_look = 0;	/* woken: a commit inserted messages */
			}
		}
	}
}
