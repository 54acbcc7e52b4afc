/*-------------------------------------------------------------------------
 *
 * maintenance.c
 *		What a dispatcher does besides sending: give back the leases of its
 *		previous incarnation at start, and, dispatcher 0 only, those of a
 *		retired dispatcher, and run retention a slice at a time.
 *
 * Leases are deliveries' (hub._release_leases) and pollers'
 * (hub._poll_release, once the extension has pollers).  Retention
 * (hub.run_retention) runs in slices of RETENTION_SLICE events, so that
 * dispatcher 0's requests pause for one slice at a time, not a whole run; a
 * failure is a WARNING and the next run tries again.
 *
 * workers/maintenance.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"

#include "hub_workers.h"
#include "push.h"

/* release --- give back every lease worker holds (inside a step) */
static void
release(const char *worker)
{
	Datum		a[1] = {CStringGetTextDatum(worker)};
	Oid			t[1] = {TEXTOID};

	SPI_execute_with_args("SELECT hub._release_leases($1)", 1, t, a, NULL, false, 0);
	if (hub_function_exists("_poll_release"))
		SPI_execute_with_args("SELECT hub._poll_release($1)", 1, t, a, NULL, false, 0);
}

/* leases a previous incarnation of this dispatcher held are given back */
void
hub_release_old_leases(void)
{
	hub_begin_step("logistics_hub: release leases");
	if (hub_extension_present())
		release(hub_worker_name);
	hub_end_step();
}

/*
 * hub_release_retired_leases --- dispatcher 0 gives back the leases of a
 * dispatcher that is no longer wanted (logistics_hub.dispatchers lowered)
 * once it has exited: no incarnation of its name starts again to do it,
 * and its deliveries would otherwise wait for their whole lease.  Only
 * slots seen running by this process count, so this costs a few shared
 * memory reads a loop and one statement per retired dispatcher.
 */
void
hub_release_retired_leases(void)
{
	static uint32 seen = 0;		/* bit per slot seen running */
	static TimestampTz last = 0;
	TimestampTz now = GetCurrentTimestamp();

	/* (ten times a second is soon enough, and spares a busy loop) */
	if (now - last < USECS_PER_SEC / 10)
		return;
	last = now;
	for (int k = 1; k < HUB_MAX_DISPATCHERS; k++)
	{
		uint32		bit = (uint32) 1 << k;

		if (hub_dispatcher_pid(k) != 0)
			seen |= bit;
		else if ((seen & bit) && k >= hub_dispatchers)
		{
			seen &= ~bit;
			hub_begin_step("logistics_hub: release leases of a retired dispatcher");
			if (hub_extension_present())
				release(psprintf("dispatcher %d", k));
			hub_end_step();
		}
	}
}

/*
 * hub_maintenance_retention --- one slice of hub.run_retention(): at most
 * RETENTION_SLICE events (and as many inbox messages), so that dispatcher
 * 0's deliveries pause for one slice at a time (about half a second), not
 * for a whole run.  Returns true when a slice was full and more may be
 * waiting.  A failure is a WARNING in the log: the next run tries again.
 */
#define RETENTION_SLICE 10000

/* retention_slice --- one slice (inside SPI); *(bool *) arg: was it full? */
static void
retention_slice(void *arg)
{
	bool	   *more = arg;

	/* (by name: inbox_removed is missing before the extension's update) */
	if (hub_function_exists("run_retention") &&
		SPI_execute("SELECT * FROM hub.run_retention(max_events => " CppAsString2(RETENTION_SLICE) ")",
					false, 0) == SPI_OK_SELECT && SPI_processed == 1)
	{
		const char *const counts[] = {"events_removed", "inbox_removed"};

		for (int i = 0; i < (int) lengthof(counts); i++)
		{
			int			col = SPI_fnumber(SPI_tuptable->tupdesc, counts[i]);
			bool		isnull = true;
			Datum		n = col > 0 ? SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col, &isnull)
				: (Datum) 0;

			if (!isnull && DatumGetInt64(n) >= RETENTION_SLICE)
				*more = true;
		}
	}
}

bool
hub_maintenance_retention(void)
{
	bool		more = false;
	HubStepError err;

	hub_begin_step("logistics_hub: retention");
	if (!hub_guard_run(retention_slice, &more, &err))
		ereport(WARNING,
				(errcode(err.sqlerrcode),
				 errmsg("logistics_hub retention failed: %s", err.message)));
	hub_end_step();
	return more;
}

