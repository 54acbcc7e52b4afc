/*-------------------------------------------------------------------------
 *
 * worker_txn.c
 *		What every step of a worker (a dispatcher, an inbox worker) shares:
 *		the worker's name, slot and memory contexts, its short
 *		transactions, SPI helpers, and its log lines.
 *
 * A dispatcher never holds a transaction open while it waits on the
 * network: each step (claim, record, a poll page) is one short
 * transaction, begun with hub_begin_step and ended with hub_end_step, the
 * worker_spi recipe (start, SPI, snapshot, activity report, commit).  A
 * step that needs the extension (hub_begin_work_step) leaves the process
 * quietly when the extension is gone.  WARNINGs and errors raised during a
 * step are one log line naming the worker and the step (the emit_log_hook
 * installed by hub_worker_txn_init); their CONTEXT goes to DEBUG1.
 *
 * workers/worker_txn.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/value.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "http.h"
#include "hub_workers.h"

int			hub_my_slot;
char		hub_worker_name[64];
MemoryContext hub_worker_cxt;
MemoryContext hub_loop_cxt;

static const char *current_step = NULL; /* for log lines; NULL between steps */
static const char *required_function = NULL;	/* hub.<name>() the steps need */
static emit_log_hook_type prev_emit_log_hook = NULL;

/*
 * worker_log_hook --- emit_log_hook of a worker: a WARNING or an
 * error that comes out during one of its steps (an error in its own SQL,
 * a WARNING of a function it calls) is one line naming the worker and the
 * step, "logistics_hub dispatcher 0: claim: <message>"; its CONTEXT (the
 * PL/pgSQL calls and statement texts, some 80 lines for a claim) goes to a
 * DEBUG1 line of its own, written just before it.  A message that already
 * names the worker ("logistics_hub ...") keeps its text.  Cannot fail: a
 * DEBUG1 report does not throw, and this hook does not run for its own.
 */
static void
worker_log_hook(ErrorData *edata)
{
	static bool busy = false;

	if (!busy && edata->output_to_server && edata->elevel >= WARNING && current_step != NULL)
	{
		busy = true;
		if (edata->message != NULL && strncmp(edata->message, "logistics_hub ", 14) != 0)
			edata->message = psprintf("logistics_hub %s: %s: %s", hub_worker_name, current_step, edata->message);
		if (edata->context != NULL)
		{
			const char *context = edata->context;
			ErrorContextCallback *stack = error_context_stack;

			edata->context = NULL;
			/* (the callbacks already wrote the context; not twice) */
			error_context_stack = NULL;
			/* (nor may its end check for interrupts inside this report) */
			HOLD_INTERRUPTS();
			ereport(DEBUG1,
					(errmsg_internal("%s", edata->message ? edata->message : ""),
					 errcontext("%s", context)));
			RESUME_INTERRUPTS();
			error_context_stack = stack;
		}
		busy = false;
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

/*
 * hub_worker_txn_init --- name the worker after its kind and slot
 * ("dispatcher 0", "inbox worker 1"), say which hub function its steps
 * need (hub_begin_work_step), make its memory contexts and install its
 * log hook
 */
void
hub_worker_txn_init(const char *kind, int slot, const char *required)
{
	hub_my_slot = slot;
	snprintf(hub_worker_name, sizeof(hub_worker_name), "%s %d", kind, slot);
	required_function = required;
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = worker_log_hook;
	hub_worker_cxt = AllocSetContextCreate(TopMemoryContext, "logistics_hub worker", ALLOCSET_DEFAULT_SIZES);
	hub_loop_cxt = AllocSetContextCreate(TopMemoryContext, "logistics_hub worker loop", ALLOCSET_DEFAULT_SIZES);
}

/* hub_clear_step --- no step is running (one failed and was handled) */
void
hub_clear_step(void)
{
	if (current_step != NULL)
		hub_status_step("idle");
	current_step = NULL;
}

/* hub_prepare_plan --- a kept plan of sql; raises when it cannot be prepared */
SPIPlanPtr
hub_prepare_plan(const char *sql, int nargs, Oid *types)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/* hub_begin_step --- begin a step's transaction, SPI connected, a snapshot pushed */
void
hub_begin_step(const char *what)
{
	/* the step's name for log lines: what, without "logistics_hub: " */
	current_step = strncmp(what, "logistics_hub: ", 15) == 0 ? what + 15 : what;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, what);
	hub_status_step(current_step);
}

/* hub_end_step --- commit the step's transaction */
void
hub_end_step(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	current_step = NULL;
	hub_status_step("idle");

	/*
	 * The commit left TopMemoryContext current: what the loop allocates
	 * next (error messages, a token answer being parsed) belongs to this
	 * loop and goes with its reset, not into a context never reset.
	 */
	MemoryContextSwitchTo(hub_loop_cxt);
}

/* does hub.<name>() exist?  Inside a transaction. */
bool
hub_function_exists(const char *name)
{
	return FuncnameGetCandidates(list_make2(makeString("hub"), makeString(pstrdup(name))),
								 -1, NIL, false, false, false, true) != NULL;
}

/*
 * is the extension (at a version with this worker's functions) installed
 * here?  Inside a transaction.
 */
bool
hub_extension_present(void)
{
	return OidIsValid(get_extension_oid("logistics_hub", true)) &&
		hub_function_exists(required_function);
}

/*
 * hub_begin_work_step --- hub_begin_step for a step that needs the
 * extension: a worker whose extension is gone (DROP EXTENSION) leaves
 * quietly with exit code 0; the launcher starts it again once the
 * extension is back.
 */
void
hub_begin_work_step(const char *what)
{
	hub_begin_step(what);
	if (!hub_extension_present())
	{
		hub_end_step();
		hub_status_extension_missing(true);
		ereport(DEBUG1, (errmsg("logistics_hub %s: extension not installed in this database, exiting",
								hub_worker_name)));
		proc_exit(0);
	}
	hub_status_extension_missing(false);
}

/*
 * hub_nshards --- how many dispatchers split the work (hub._serves): a slot
 * beyond the setting, still finishing after it was lowered, counts as one.
 */
int
hub_nshards(void)
{
	return Max(hub_dispatchers, hub_my_slot + 1);
}

/* hub_spi_text --- a text column of a row as a C string, NULL for NULL */
char *
hub_spi_text(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/* is a text datum exactly this string? */
bool
hub_text_is(text *t, const char *s)
{
	size_t		len = strlen(s);

	return VARSIZE_ANY_EXHDR(t) == len && memcmp(VARDATA_ANY(t), s, len) == 0;
}

/* hub_spi_text_array --- a text[] column as C strings (NULLs left out), *n of them */
char **
hub_spi_text_array(HeapTuple tup, TupleDesc desc, int col, int *n)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);
	Datum	   *elems;
	bool	   *nulls;
	int			count;
	char	  **out;
	int			k = 0;

	*n = 0;
	if (isnull)
		return NULL;
	deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &count);
	out = palloc0(sizeof(char *) * Max(count, 1));
	for (int i = 0; i < count; i++)
		if (!nulls[i])
			out[k++] = TextDatumGetCString(elems[i]);
	*n = k;
	return out;
}

/* hub_int_array --- an int8[] (wide) or int4[] of n values */
Datum
hub_int_array(int64 *v, int n, bool wide)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		d[i] = wide ? Int64GetDatum(v[i]) : Int32GetDatum((int32) v[i]);
	return PointerGetDatum(construct_array(d, n, wide ? INT8OID : INT4OID, wide ? 8 : 4,
										   wide ? FLOAT8PASSBYVAL : true,
										   wide ? TYPALIGN_DOUBLE : TYPALIGN_INT));
}
