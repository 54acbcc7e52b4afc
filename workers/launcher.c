/*-------------------------------------------------------------------------
 *
 * launcher.c
 *		The settings of the push side and the launcher background worker.
 *
 * When the library is preloaded, the postmaster starts one launcher.  It
 * connects to no database (it reads only the shared catalogue pg_database,
 * so it never stands in the way of DROP DATABASE), and keeps
 * logistics_hub.dispatchers dispatcher workers running for the database
 * named by logistics_hub.database while that database exists, connected
 * as the role named by logistics_hub.worker_role (hub_worker), which must
 * exist, may log in and must not be a superuser: otherwise a WARNING says
 * why once, and no dispatcher runs until it is fixed.  A
 * dispatcher that finds no extension there exits at once and quietly; the
 * launcher starts it again after a pause, so installing the extension is
 * noticed within that pause and nothing else is needed.  The inbox workers
 * (logistics_hub.inbox_workers, workers/inbox_worker.c) are kept running
 * the same way, in slots of their own, as the same role.
 *
 * Exit codes, on purpose: the launcher and the dispatchers exit with 1 on
 * SIGTERM or an error (die() / FATAL), never 0, which would unregister the
 * launcher for good; the launcher is restarted by the postmaster after
 * bgw_restart_time, the dispatchers (registered as never-restart dynamic
 * workers) by the launcher.  A crash of any of them is a crash of the
 * server, as for any backend.
 *
 * workers/launcher.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_database.h"
#include "utils/snapmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "hub_workers.h"
#include "transport.h"

char	   *hub_database = NULL;
char	   *hub_worker_role = NULL;
int			hub_dispatchers = 1;
int			hub_max_in_flight = 256;
int			hub_claim_batch = 500;
int			hub_claim_max_bytes = 16 * 1024 * 1024;
int			hub_lease_seconds = 60;
int			hub_dispatcher_naptime_ms = 1000;
int			hub_poll_interval_ms = -1;	/* deprecated: -1, not set */
int			hub_connect_timeout_ms = 2000;
int			hub_max_response_bytes = 65536;
int			hub_poll_max_page_bytes = 16 * 1024 * 1024;
int			hub_retry_after_max_s = 3600;
int			hub_retention_interval_s = 600;
char	   *hub_ca_file = NULL;
char	   *hub_event_source = NULL;

/* a dispatcher that ran less than this is started again only after it */
#define DISPATCHER_RESTART_PAUSE_MS 5000

extern void hub_egress_define_guc(void);

/* the deprecated logistics_hub.poll_interval: -1 (not set) or 10 ms and more */
static bool
check_poll_interval(int *newval, void **extra, GucSource source)
{
	if (*newval == -1 || *newval >= 10)
		return true;
	GUC_check_errdetail("logistics_hub.poll_interval is -1 (not set) or at least 10 ms; it is the deprecated name of logistics_hub.dispatcher_naptime.");
	return false;
}

/*
 * check_event_source --- check hook of logistics_hub.event_source: the
 * CloudEvents source must be a non-empty URI-reference (RFC 3986): only
 * URI characters, a "%" only before two hex digits, and a ":" before the
 * first "/", "?" or "#" only after a valid scheme (a relative reference's
 * first segment has no colon).  A bad value is refused where it is set
 * (ALTER SYSTEM, the configuration file), never sent.
 */
static bool
check_event_source(char **newval, void **extra, GucSource source)
{
	const char *s = *newval;
	const char *colon = NULL;
	const char *p;

	if (s == NULL || *s == '\0')
	{
		GUC_check_errdetail("The CloudEvents source must not be empty.");
		return false;
	}
	for (p = s; *p; p++)
	{
		unsigned char c = (unsigned char) *p;

		if (c == '%')
		{
			if (!isxdigit((unsigned char) p[1]) || !isxdigit((unsigned char) p[2]))
			{
				GUC_check_errdetail("A \"%%\" must start a percent-encoding such as %%20.");
				return false;
			}
			continue;
		}
		if (!(isalnum(c) || strchr("-._~:/?#[]@!$&'()*+,;=", c) != NULL) || c >= 0x80)
		{
			GUC_check_errdetail("The CloudEvents source must be a URI-reference (RFC 3986); character \"%c\" at position %d must be percent-encoded.",
								c >= 0x20 && c < 0x7f ? c : '?', (int) (p - s) + 1);
			return false;
		}
		if (c == ':' && colon == NULL && strcspn(s, "/?#") > (size_t) (p - s))
			colon = p;
	}
	if (colon != NULL)
	{
		/* scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) */
		bool		ok = colon > s && isalpha((unsigned char) s[0]);

		for (p = s; ok && p < colon; p++)
			ok = isalnum((unsigned char) *p) || *p == '+' || *p == '-' || *p == '.';
		if (!ok)
		{
			GUC_check_errdetail("The part before the first \":\" is not a URI scheme, and a relative reference cannot have a \":\" in its first segment.");
			return false;
		}
	}
	return true;
}

void
hub_workers_define_gucs(void)
{
	hub_egress_define_guc();
	hub_inbox_define_gucs();
	hub_pg_transport_define_gucs();
	/* a server-start setting can only be defined while preloading */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomStringVariable("logistics_hub.database",
								   "Database whose outbox the delivery workers serve.",
								   "The extension must be installed there; workers wait quietly until it is.",
								   &hub_database, "postgres", PGC_POSTMASTER, 0,
								   NULL, NULL, NULL);
	DefineCustomStringVariable("logistics_hub.worker_role",
							   "Role the background workers (dispatchers and inbox workers) connect as.",
							   "It must exist, may log in and must not be a superuser; the extension creates hub_worker with just the grants the workers need. Changed, it applies to the workers started next.",
							   &hub_worker_role, "hub_worker", PGC_SIGHUP, 0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("logistics_hub.dispatchers",
							"Number of dispatcher workers (an endpoint is shared by min(dispatchers, max_concurrency) of them).",
							NULL, &hub_dispatchers, 1, 0, HUB_MAX_DISPATCHERS,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("logistics_hub.max_in_flight",
							"Most HTTP requests one dispatcher has in flight at once.",
							"Each endpoint is further capped by its max_concurrency.",
							&hub_max_in_flight, 256, 1, 10000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("logistics_hub.claim_batch",
							"Most events a dispatcher claims in one transaction (a batch delivery counts its events; the first delivery of a claim always comes whole).",
							NULL, &hub_claim_batch, 500, 1, 10000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("logistics_hub.claim_max_bytes",
							"Most payload bytes a dispatcher claims in one transaction (the first delivery of a claim always comes whole).",
							NULL, &hub_claim_max_bytes, 16 * 1024 * 1024, 64 * 1024, 1024 * 1024 * 1024,
							PGC_SIGHUP, GUC_UNIT_BYTE, NULL, NULL, NULL);
	DefineCustomIntVariable("logistics_hub.lease",
							"Lease of a claimed delivery beyond its endpoint's timeout; an expired lease makes it claimable again.",
							NULL, &hub_lease_seconds, 60, 5, 86400,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("logistics_hub.dispatcher_naptime",
							"How often an idle dispatcher looks for work without being woken (the safety net of the wake-up at commit).",
							NULL, &hub_dispatcher_naptime_ms, 1000, 10, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("logistics_hub.poll_interval",
							"Deprecated name of logistics_hub.dispatcher_naptime; when set (not -1) it wins.",
							"\"poll\" now means the pollers that read APIs into the inbox.",
							&hub_poll_interval_ms, -1, -1, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, check_poll_interval, NULL, NULL);
	DefineCustomIntVariable("logistics_hub.connect_timeout",
							"Connect timeout of every HTTP request.",
							NULL, &hub_connect_timeout_ms, 2000, 100, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("logistics_hub.max_response_size",
							"Largest response body read from a receiver; a longer one aborts the request as a failed attempt.",
							NULL, &hub_max_response_bytes, 65536, 1024, 64 * 1024 * 1024,
							PGC_SIGHUP, GUC_UNIT_BYTE, NULL, NULL, NULL);
	DefineCustomIntVariable("logistics_hub.poll_max_page_bytes",
							"Largest page body a poller reads; a longer one is a failed page, retried with backoff.",
							NULL, &hub_poll_max_page_bytes, 16 * 1024 * 1024, 1024, 1024 * 1024 * 1024,
							PGC_SIGHUP, GUC_UNIT_BYTE, NULL, NULL, NULL);
	DefineCustomIntVariable("logistics_hub.retry_after_max",
							"Longest pause an endpoint's Retry-After or X-RateLimit-Reset can ask for; a longer one is cut to this.",
							"A 429 or 503 with Retry-After, or X-RateLimit-Remaining: 0 with X-RateLimit-Reset, pauses the endpoint for push and poll alike.",
							&hub_retry_after_max_s, 3600, 1, 86400,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("logistics_hub.retention_interval",
							"How often dispatcher 0 runs hub.run_retention() (0: never; schedule it yourself).",
							NULL, &hub_retention_interval_s, 600, 0, 86400 * 7,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomStringVariable("logistics_hub.ca_file",
							   "CA bundle to verify receivers' TLS certificates with (empty: the system's). Verification cannot be switched off.",
							   NULL, &hub_ca_file, "", PGC_SIGHUP, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("logistics_hub.event_source",
							   "The CloudEvents source attribute of events sent in the cloudevents formats.",
							   "A URI-reference (RFC 3986), such as /logistics_hub or https://hub.example.com/wms.",
							   &hub_event_source, "/logistics_hub", PGC_SIGHUP, 0,
							   check_event_source, NULL, NULL);
}

/* hub_workers_register --- from _PG_init while preloading */
void
hub_workers_register(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "logistics_hub");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "hub_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "logistics_hub launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "logistics_hub launcher");
	RegisterBackgroundWorker(&worker);
}

/*
 * shared_catalog_find --- a copy (palloc'd in the caller's context) of the
 * row of shared catalogue relid whose name column (a name in Form_*'s
 * struct, name_offset bytes into it) is name, or NULL.  A plain heap scan
 * in a transaction of its own: without a database, only shared catalogues
 * can be read, and an index scan may need pg_class before the shared
 * relcache init file exists.
 */
static HeapTuple
shared_catalog_find(Oid relid, size_t name_offset, const char *name)
{
	MemoryContext cxt = CurrentMemoryContext;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	HeapTuple	found = NULL;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(relid, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		if (strcmp(NameStr(*(Name) ((char *) GETSTRUCT(tup) + name_offset)), name) == 0)
		{
			MemoryContext old = MemoryContextSwitchTo(cxt);

			found = heap_copytuple(tup);
			MemoryContextSwitchTo(old);
			break;
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	return found;
}

/* find_database --- the OID of the database, or InvalidOid */
static Oid
find_database(const char *name)
{
	HeapTuple	tup = shared_catalog_find(DatabaseRelationId, offsetof(FormData_pg_database, datname), name);
	Oid			oid = InvalidOid;

	if (tup != NULL)
	{
		oid = ((Form_pg_database) GETSTRUCT(tup))->oid;
		heap_freetuple(tup);
	}
	return oid;
}

/*
 * find_worker_role --- the OID of the role named by logistics_hub.worker_role
 * when the dispatchers may connect as it, else InvalidOid with the reason
 * logged once (until the setting or the role changes).  A plain heap scan
 * of the shared catalogue pg_authid, as for pg_database.  A superuser is
 * refused: user code and every function the workers call would then run
 * with every right.
 */
static Oid
find_worker_role(const char *name)
{
	static char last_problem[NAMEDATALEN + 64] = "";
	char		problem[NAMEDATALEN + 64] = "";
	HeapTuple	tup = shared_catalog_find(AuthIdRelationId, offsetof(FormData_pg_authid, rolname), name);
	Oid			oid = InvalidOid;

	if (tup == NULL)
		snprintf(problem, sizeof(problem), "missing:%s", name);
	else
	{
		Form_pg_authid role = (Form_pg_authid) GETSTRUCT(tup);

		if (role->rolsuper)
			snprintf(problem, sizeof(problem), "superuser:%s", name);
		else if (!role->rolcanlogin)
			snprintf(problem, sizeof(problem), "nologin:%s", name);
		else
			oid = role->oid;
		heap_freetuple(tup);
	}

	if (problem[0] != '\0' && strcmp(problem, last_problem) != 0)
	{
		if (strncmp(problem, "superuser:", 10) == 0)
			ereport(WARNING,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("logistics_hub dispatchers will not run as superuser \"%s\"", name),
					 errhint("Set logistics_hub.worker_role to a role without superuser, such as hub_worker, which CREATE EXTENSION logistics_hub makes.")));
		else if (strncmp(problem, "nologin:", 8) == 0)
			ereport(WARNING,
					(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
					 errmsg("logistics_hub dispatchers cannot connect as role \"%s\": it may not log in", name),
					 errhint("ALTER ROLE %s LOGIN (a background worker connects only as a role that may log in).", quote_identifier(name))));
		else
			ereport(LOG,
					(errmsg("logistics_hub dispatchers wait for role \"%s\" (logistics_hub.worker_role)", name),
					 errhint("CREATE EXTENSION logistics_hub creates hub_worker.")));
	}
	strlcpy(last_problem, problem, sizeof(last_problem));
	return oid;
}

typedef struct LauncherSlot
{
	BackgroundWorkerHandle *handle;
	TimestampTz started_at;
	TimestampTz stopped_at;
} LauncherSlot;

/* a kind of worker the launcher keeps running, slot by slot */
typedef struct WorkerKind
{
	const char *function;		/* entry point */
	const char *type;			/* bgw_type, and the name's prefix */
	int			max;			/* slots */
	int		   *wanted;			/* the setting: how many to run */
	pid_t		(*pid) (int slot);	/* the pid in a slot (shmem.c), 0: none */
} WorkerKind;

static const WorkerKind kinds[] = {
	{"hub_dispatcher_main", "logistics_hub dispatcher", HUB_MAX_DISPATCHERS, &hub_dispatchers,
	hub_dispatcher_pid},
	{"hub_inbox_worker_main", "logistics_hub inbox", HUB_MAX_INBOX_WORKERS, &hub_inbox_workers,
	hub_inbox_worker_pid},
};

#define MAX_SLOTS Max(HUB_MAX_DISPATCHERS, HUB_MAX_INBOX_WORKERS)

static bool
start_worker(const WorkerKind *kind, int slot, Oid dboid, Oid roleoid, LauncherSlot *ls)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "logistics_hub");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "%s", kind->function);
	snprintf(worker.bgw_name, BGW_MAXLEN, "%s %d", kind->type, slot);
	snprintf(worker.bgw_type, BGW_MAXLEN, "%s", kind->type);
	worker.bgw_main_arg = Int32GetDatum(slot);
	memcpy(worker.bgw_extra, &dboid, sizeof(Oid));
	memcpy(worker.bgw_extra + sizeof(Oid), &roleoid, sizeof(Oid));
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, &ls->handle))
	{
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("logistics_hub could not start %s %d", kind->type + strlen("logistics_hub "), slot),
				 errhint("Raise max_worker_processes.")));
		ls->handle = NULL;
		return false;
	}
	ls->started_at = GetCurrentTimestamp();
	return true;
}

/* is the worker of this slot running (or starting)? */
static bool
worker_alive(const WorkerKind *kind, int slot, LauncherSlot *ls)
{
	pid_t		pid;

	if (ls->handle != NULL)
	{
		if (GetBackgroundWorkerPid(ls->handle, &pid) != BGWH_STOPPED)
			return true;
		pfree(ls->handle);
		ls->handle = NULL;
		ls->stopped_at = GetCurrentTimestamp();
		return false;
	}
	/* started by an earlier launcher: known by its slot only */
	return kind->pid(slot) != 0;
}

/*
 * keep_running --- start or stop the workers of a kind so that the wanted
 * number of them run (none without the database and the role); a worker
 * that did not last long is started again only after a pause, which
 * shortens *wait_ms to it, unless it stopped while not wanted (a lowered
 * setting raised again starts its workers at once).
 */
static void
keep_running(const WorkerKind *kind, LauncherSlot *slots, Oid dboid, Oid roleoid, long *wait_ms)
{
	TimestampTz now = GetCurrentTimestamp();

	for (int i = 0; i < kind->max; i++)
	{
		LauncherSlot *ls = &slots[i];
		bool		alive = worker_alive(kind, i, ls);
		bool		wanted = OidIsValid(dboid) && OidIsValid(roleoid) && i < *kind->wanted;

		if (alive && !wanted && ls->handle != NULL)
			TerminateBackgroundWorker(ls->handle);
		else if (!alive && !wanted)
		{
			/*
			 * Stopped because it is not wanted (the setting was lowered):
			 * when it is wanted again it starts at once.  The pause below is
			 * for a worker that keeps dying on its own, not for one that was
			 * sent away after a short run.
			 */
			ls->started_at = 0;
		}
		else if (!alive && wanted)
		{
			long		ran = ls->stopped_at - ls->started_at;
			long		since = now - ls->stopped_at;

			if (ls->started_at != 0 && ran < DISPATCHER_RESTART_PAUSE_MS * 1000L &&
				since < DISPATCHER_RESTART_PAUSE_MS * 1000L)
				*wait_ms = Min(*wait_ms, (DISPATCHER_RESTART_PAUSE_MS * 1000L - since) / 1000 + 1);
			else
				start_worker(kind, i, dboid, roleoid, ls);
		}
	}
}

void
hub_launcher_main(Datum arg)
{
	LauncherSlot slots[lengthof(kinds)][MAX_SLOTS];

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* no database: pg_database is a shared catalogue */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("logistics_hub launcher");

	memset(slots, 0, sizeof(slots));
	for (;;)
	{
		Oid			dboid;
		Oid			roleoid = InvalidOid;
		long		wait_ms = 5000;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		dboid = find_database(hub_database);
		if (OidIsValid(dboid))
			roleoid = find_worker_role(hub_worker_role);

		for (int k = 0; k < (int) lengthof(kinds); k++)
			keep_running(&kinds[k], slots[k], dboid, roleoid, &wait_ms);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
