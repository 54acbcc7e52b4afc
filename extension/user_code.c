/*-------------------------------------------------------------------------
 *
 * user_code.c
 *		Run a function chosen by hub_admin (a subscription's transform, an
 *		inbox handler) as its owner, within a time limit, without letting it
 *		change the session it runs in.
 *
 * Transforms run inside a dispatcher's claim and handlers inside whoever
 * calls hub.process_inbox.  Both sessions have rights the function's owner
 * may lack, and both go on after the call, so the call is fenced the way
 * PostgreSQL fences an index expression during VACUUM or REINDEX:
 *
 *   - the current user becomes the function's owner for the call, in a
 *     security-restricted operation (no SET ROLE, no temporary objects,
 *     no PREPARE or LISTEN that would outlive it): the function gets no
 *     right its owner does not have, whoever runs it;
 *   - every setting it changes, even with set_config(..., false), is
 *     undone when it returns (a GUC nest level closed as on abort), so a
 *     search_path, statement_timeout or default_transaction_read_only set
 *     by the function never reaches the caller's next statement;
 *   - it runs with search_path pg_catalog, pg_temp unless it sets its own;
 *   - it is cancelled after logistics_hub.user_code_timeout: a function
 *     that loops costs one call that long, not a dispatcher stalled for
 *     ever.  The cancellation is turned into an ordinary error (54000) that
 *     the caller's exception block can catch: a plain query cancel (57014)
 *     is one that plpgsql's WHEN OTHERS lets through.
 *
 * An error of the function propagates as it is; the caller's
 * subtransaction abort restores the user and the settings as well.
 *
 * extension/user_code.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/syscache.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "outbox.h"

int			hub_user_code_timeout_ms = 5000;

static TimeoutId user_code_timeout_id = MAX_TIMEOUTS;
static volatile sig_atomic_t user_code_timed_out = false;

void
hub_user_code_define_gucs(void)
{
	DefineCustomIntVariable("logistics_hub.user_code_timeout",
							"Longest a transform or inbox handler may run for one call before it is cancelled.",
							"The call then fails like any error of the function: the delivery is retried or dead, the message retried or dead.",
							&hub_user_code_timeout_ms, 5000, 10, 3600 * 1000,
							PGC_SUSET, GUC_UNIT_MS, NULL, NULL, NULL);
}

/* the timer's handler: cancel what runs, as statement_timeout does */
static void
user_code_timeout_handler(void)
{
	user_code_timed_out = true;
	InterruptPending = true;
	QueryCancelPending = true;
	SetLatch(MyLatch);
}

/* fn as schema.name, whatever the search_path of the moment */
static char *
qualified_name(Oid fn)
{
	return quote_qualified_identifier(get_namespace_name(get_func_namespace(fn)), get_func_name(fn));
}

/*
 * check_user_function --- the owner of a function chosen by hub_admin as a
 * transform or handler (what), after checking that it can be called with
 * nargs arguments of these types returning rettype (InvalidOid: any type),
 * 42883 otherwise, and that running it as its owner lends hub_admin no
 * right, 42501 otherwise.  That holds when the function is SECURITY
 * DEFINER (its owner lent it its rights, to whoever may execute it) or its
 * owner is a member of hub_admin without being a superuser; and hub_admin
 * must be allowed to execute it.  So a superuser's SECURITY INVOKER
 * function, or one whose EXECUTE was revoked, is never run with its
 * owner's rights on inputs that hub_admin and hub_writer choose.
 */
static Oid
check_user_function(Oid fn, const char *what, int nargs, const Oid *argtypes, Oid rettype)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	Form_pg_proc p;
	Oid			owner;
	bool		secdef;
	bool		ok;
	Oid			admin = get_role_oid("hub_admin", true);

	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("%s with OID %u does not exist", what, fn)));
	p = (Form_pg_proc) GETSTRUCT(tup);
	ok = p->prokind == PROKIND_FUNCTION && p->pronargs == nargs && !p->proretset &&
		(rettype == InvalidOid || p->prorettype == rettype);
	for (int i = 0; ok && i < nargs; i++)
		ok = p->proargtypes.values[i] == argtypes[i];
	owner = p->proowner;
	secdef = p->prosecdef;
	ReleaseSysCache(tup);
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("%s %s has the wrong signature", what, qualified_name(fn)),
				 errhint("A transform takes (jsonb) and returns jsonb; an inbox handler takes (jsonb), (jsonb, text) or (jsonb, text, jsonb).")));
	if (!OidIsValid(admin))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role \"hub_admin\" does not exist")));
	if (!secdef && (superuser_arg(owner) || !has_privs_of_role(owner, admin)))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("%s %s may not run with the rights of its owner %s",
						what, qualified_name(fn), GetUserNameFromId(owner, false)),
				 errdetail("It would run as its owner, and this SECURITY INVOKER function belongs to %s.",
						   superuser_arg(owner) ? "a superuser" : "a role that is not a member of hub_admin"),
				 errhint("Have a member of hub_admin that is not a superuser own it, or declare it SECURITY DEFINER (its owner then lends it its rights).")));
#if PG_VERSION_NUM >= 160000
	if (object_aclcheck(ProcedureRelationId, fn, admin, ACL_EXECUTE) != ACLCHECK_OK)
#else
	if (pg_proc_aclcheck(fn, admin, ACL_EXECUTE) != ACLCHECK_OK)
#endif
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function %s", qualified_name(fn)),
				 errdetail("hub_admin, which chooses transforms and handlers, may not execute it.")));
	return owner;
}

/*
 * call_as_owner --- call fn(args) as described in the file header and
 * return its result (*isnull for NULL).  Errors of the function propagate;
 * running out of time raises 54000 naming the function and the limit.
 */
static Datum
call_as_owner(Oid fn, Oid owner, const char *what, int nargs, Datum *args, bool *isnull)
{
	LOCAL_FCINFO(fcinfo, FUNC_MAX_ARGS);
	FmgrInfo	flinfo;
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
	MemoryContext cxt = CurrentMemoryContext;
	volatile Datum result = (Datum) 0;
	bool		outer;
	TimestampTz outer_deadline;

	if (user_code_timeout_id == MAX_TIMEOUTS)
		user_code_timeout_id = RegisterTimeout(USER_TIMEOUT, user_code_timeout_handler);

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	save_nestlevel = NewGUCNestLevel();
	SetUserIdAndSecContext(owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);

	fmgr_info(fn, &flinfo);
	InitFunctionCallInfoData(*fcinfo, &flinfo, nargs, InvalidOid, NULL, NULL);
	for (int i = 0; i < nargs; i++)
	{
		fcinfo->args[i].value = args[i];
		fcinfo->args[i].isnull = false;
	}

	/*
	 * A call inside another (a handler calling hub._run_handler) ends by
	 * the outer call's deadline at the latest, and gives it back after.
	 */
	outer = get_timeout_active(user_code_timeout_id);
	outer_deadline = outer ? get_timeout_finish_time(user_code_timeout_id) : 0;
	user_code_timed_out = false;
	enable_timeout_at(user_code_timeout_id,
					  outer ? Min(outer_deadline, TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
																			  hub_user_code_timeout_ms))
					  : TimestampTzPlusMilliseconds(GetCurrentTimestamp(), hub_user_code_timeout_ms));
	PG_TRY();
	{
		result = FunctionCallInvoke(fcinfo);
	}
	PG_CATCH();
	{
		/* (an outer call may catch this error and go on: its deadline stays) */
		if (outer)
			enable_timeout_at(user_code_timeout_id, outer_deadline);
		else
			disable_timeout(user_code_timeout_id, false);
		if (user_code_timed_out)
		{
			ErrorData  *edata;

			MemoryContextSwitchTo(cxt);
			edata = CopyErrorData();
			if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
			{
				FlushErrorState();
				ereport(ERROR,
						(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						 errmsg("%s %s ran longer than logistics_hub.user_code_timeout (%d ms) and was cancelled",
								what, qualified_name(fn), hub_user_code_timeout_ms)));
			}
		}
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (outer)
		enable_timeout_at(user_code_timeout_id, outer_deadline);
	else
		disable_timeout(user_code_timeout_id, false);
	if (user_code_timed_out)
	{
		/* the timer fired as the function returned: that cancel is ours */
		QueryCancelPending = false;
		user_code_timed_out = false;
	}

	AtEOXact_GUC(false, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec_context);
	*isnull = fcinfo->isnull;
	return result;
}

/*
 * hub._transform(f regproc, payload jsonb) RETURNS jsonb --- a
 * subscription's transform applied to a payload, as its owner.
 */
PG_FUNCTION_INFO_V1(hub_transform);
Datum
hub_transform(PG_FUNCTION_ARGS)
{
	Oid			fn = PG_GETARG_OID(0);
	Oid			argtypes[1] = {JSONBOID};
	Datum		args[1] = {PG_GETARG_DATUM(1)};
	Oid			owner = check_user_function(fn, "transform function", 1, argtypes, JSONBOID);
	bool		isnull;
	Datum		result = call_as_owner(fn, owner, "transform function", 1, args, &isnull);

	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}

/*
 * hub._run_handler(f regproc, payload jsonb, message_type text) --- an
 * inbox handler called for one message, as its owner; its result, of any
 * type, is ignored.
 */
PG_FUNCTION_INFO_V1(hub_run_handler);
Datum
hub_run_handler(PG_FUNCTION_ARGS)
{
	Oid			fn = PG_GETARG_OID(0);
	Oid			argtypes[2] = {JSONBOID, TEXTOID};
	Datum		args[2] = {PG_GETARG_DATUM(1), PG_GETARG_DATUM(2)};
	Oid			owner = check_user_function(fn, "inbox handler", 2, argtypes, InvalidOid);
	bool		isnull;

	(void) call_as_owner(fn, owner, "inbox handler", 2, args, &isnull);
	PG_RETURN_VOID();
}

/*
 * hub._run_handler(f regproc, payload jsonb, message_type text, context
 * jsonb) --- an inbox handler called for one message with the message's
 * context, as its owner.  The handler's signature says what it gets: a
 * handler (jsonb, text, jsonb) the payload, the message type and the
 * context (message id, source, correlation id, aggregate id, ...); one of
 * (jsonb, text) or (jsonb), as handlers were written before the context,
 * what it declares.  Its result, of any type, is ignored.
 */
PG_FUNCTION_INFO_V1(hub_run_handler_context);
Datum
hub_run_handler_context(PG_FUNCTION_ARGS)
{
	Oid			fn = PG_GETARG_OID(0);
	Oid			argtypes[3] = {JSONBOID, TEXTOID, JSONBOID};
	Datum		args[3] = {PG_GETARG_DATUM(1), PG_GETARG_DATUM(2), PG_GETARG_DATUM(3)};
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	int			nargs = 2;
	Oid			owner;
	bool		isnull;

	if (HeapTupleIsValid(tup))
	{
		int			n = ((Form_pg_proc) GETSTRUCT(tup))->pronargs;

		if (n == 1 || n == 3)
			nargs = n;
		ReleaseSysCache(tup);
	}
	/* (a function that vanished or has another shape fails the check) */
	owner = check_user_function(fn, "inbox handler", nargs, argtypes, InvalidOid);
	(void) call_as_owner(fn, owner, "inbox handler", nargs, args, &isnull);
	PG_RETURN_VOID();
}

/*
 * hub._check_user_function(f regproc, what text, argtypes oidvector,
 * rettype regtype DEFAULT NULL) --- check_user_function where hub_admin
 * names the function (hub.subscribe, hub.register_handler), so that a
 * wrong one is refused at once rather than failing every event later.
 */
PG_FUNCTION_INFO_V1(hub_check_user_function);
Datum
hub_check_user_function(PG_FUNCTION_ARGS)
{
	oidvector  *types;
	char	   *what;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("a function must be named")));
	types = (oidvector *) PG_GETARG_POINTER(2);
	what = text_to_cstring(PG_GETARG_TEXT_PP(1));
	(void) check_user_function(PG_GETARG_OID(0), what, types->dim1, types->values,
							   PG_ARGISNULL(3) ? InvalidOid : PG_GETARG_OID(3));
	PG_RETURN_VOID();
}
