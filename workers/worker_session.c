/*-------------------------------------------------------------------------
 *
 * worker_session.c
 *		What every logistics_hub background worker that connects to the
 *		database does to its session first (the dispatchers and the inbox
 *		workers alike).
 *
 * A worker runs SQL as logistics_hub.worker_role, never as a superuser,
 * and must not depend on the defaults a database owner can set with ALTER
 * DATABASE ... SET or ALTER ROLE ... SET: hub_pin_session fixes them, at a
 * level no SET (or a function's SET clause) can override, once, before the
 * worker's first transaction.
 *
 * workers/worker_session.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/guc.h"

#include "hub_workers.h"

/*
 * hub_pin_session --- the settings every statement of the worker relies on,
 * whatever the database's or role's defaults say: search_path holds only
 * pg_catalog (and pg_temp, which is never searched for functions or
 * operators), so no function or operator planted in another schema can be
 * chosen even by a statement that forgot to qualify one; and the settings
 * that would stop every step (read-only transactions, timeouts, serializable
 * isolation) are fixed at the override level, and so is jit = off: a
 * worker's statements are short, and a plan whose estimate passes
 * jit_above_cost (a claim's LIMIT taken from a parameter) would be compiled
 * anew in every transaction (measured: 40% of an inbox worker's time).  who names the worker in the
 * error ("dispatcher 0", "inbox worker 1").  Raises ERROR, and so ends the
 * worker, when connected as a superuser after all.
 */
void
hub_pin_session(const char *who)
{
	static const char *const fixed[][2] = {
		{"default_transaction_read_only", "off"},
		{"default_transaction_isolation", "read committed"},
		{"statement_timeout", "0"},
		{"lock_timeout", "0"},
		{"idle_in_transaction_session_timeout", "0"},
		/* short statements: compiling one costs more than running it */
		{"jit", "off"},
	};

	if (superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("logistics_hub %s will not run as a superuser", who),
				 errhint("Set logistics_hub.worker_role to a role without superuser, such as hub_worker.")));
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION);
	for (int i = 0; i < (int) lengthof(fixed); i++)
		SetConfigOption(fixed[i][0], fixed[i][1], PGC_SUSET, PGC_S_OVERRIDE);
}
