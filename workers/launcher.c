/*-------------------------------------------------------------------------
 *
 * launcher.c
 *		The settings of the push side and the launcher background worker.
 *
 * When the library is preloaded, the postmaster starts one launcher per
 * cluster.  It connects to no database (it reads only the shared
 * catalogues pg_database and pg_authid, so it never stands in the way of
 * DROP DATABASE), and keeps, for every database named in
 * logistics_hub.databases (a list, changed with a reload; empty, the
 * default: the one database of logistics_hub.database), its own
 * logistics_hub.dispatchers dispatcher workers and
 * logistics_hub.inbox_workers inbox workers (workers/inbox_worker.c)
 * running while that database exists, connected as the role named by
 * logistics_hub.worker_role (hub_worker), which must exist, may log in and
 * must not be a superuser: otherwise a WARNING says why once, and no worker
 * runs until it is fixed.
 *
 * Each database served has a slot in shared memory (workers/shmem.c; at
 * most logistics_hub.max_databases, fixed at server start) with slots of
 * its own for its workers: a dispatcher's number, and so its shard of the
 * endpoints (hub_nshards), counts within its database, wake-ups at commit
 * reach only the workers of the database that committed, and the pause
 * before a worker that keeps dying is started again is kept per slot, so
 * that one database's load or failure never holds up another's.  A worker
 * that finds no extension in its database exits at once and quietly; the
 * launcher logs that once for that database and starts it again after a
 * pause, so installing the extension is noticed within that pause.  A
 * database removed from the list on reload has its workers stopped (they
 * also leave by themselves on the same reload, which covers the ones a
 * restarted launcher adopted without a handle) and its slot freed once
 * they are gone; one added is started at once; one that does not exist
 * (yet) is looked for again at every pass.
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
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "hub_workers.h"
#include "transport.h"

char	   *hub_database = NULL;
char	   *hub_databases = NULL;
int			hub_max_databases = 8;
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

/*
 * check_databases --- check hook of logistics_hub.databases: a comma
 * separated list of database names (double-quoted for a name with a comma,
 * a space or a quote; never folded to lower case), each shorter than
 * NAMEDATALEN, none twice.  How many may be served at once is
 * logistics_hub.max_databases; the launcher warns about the rest.
 */
static bool
check_databases(char **newval, void **extra, GucSource source)
{
	char	   *raw;
	List	   *names;
	ListCell   *lc;

	if (*newval == NULL || **newval == '\0')
		return true;
	raw = pstrdup(*newval);
	if (!SplitGUCList(raw, ',', &names))
	{
		GUC_check_errdetail("The list of databases is not a comma-separated list of names (an empty name, or a double quote left open?).");
		return false;
	}
	foreach(lc, names)
	{
		const char *name = lfirst(lc);

		if (*name == '\0')
		{
			GUC_check_errdetail("A database name in the list is empty.");
			return false;
		}
		if (strlen(name) >= NAMEDATALEN)
		{
			GUC_check_errdetail("Database name \"%s\" is longer than %d bytes.", name, NAMEDATALEN - 1);
			return false;
		}
		for (ListCell *lc2 = list_head(names); lc2 != lc; lc2 = lnext(names, lc2))
			if (strcmp(lfirst(lc2), name) == 0)
			{
				GUC_check_errdetail("Database \"%s\" is listed twice.", name);
				return false;
			}
	}
	list_free(names);
	pfree(raw);
	return true;
}

/*
 * hub_database_names --- the databases to serve, in order (palloc'd in the
 * current context): logistics_hub.databases, or logistics_hub.database
 * when that list is empty
 */
List *
hub_database_names(void)
{
	List	   *names = NIL;

	if (hub_databases != NULL && hub_databases[0] != '\0')
	{
		char	   *raw = pstrdup(hub_databases);

		/* (checked when set) */
		if (!SplitGUCList(raw, ',', &names))
			names = NIL;
	}
	else if (hub_database != NULL && hub_database[0] != '\0')
		names = list_make1(pstrdup(hub_database));
	return names;
}

/* hub_database_listed --- is this database among the first max_databases to serve? */
bool
hub_database_listed(const char *name)
{
	List	   *names = hub_database_names();
	ListCell   *lc;
	bool		found = false;

	foreach(lc, names)
	{
		if (foreach_current_index(lc) >= hub_max_databases)
			break;
		if (strcmp(lfirst(lc), name) == 0)
			found = true;
	}
	list_free(names);
	return found;
}

void
hub_workers_define_gucs(void)
{
	hub_egress_define_guc();
	hub_inbox_define_gucs();
	hub_pg_transport_define_gucs();
	/* a server-start setting can only be defined while preloading */
	if (process_shared_preload_libraries_in_progress)
	{
		DefineCustomStringVariable("logistics_hub.database",
								   "Database whose outbox the delivery workers serve, when logistics_hub.databases is empty.",
								   "The extension must be installed there; workers wait quietly until it is.",
								   &hub_database, "postgres", PGC_POSTMASTER, 0,
								   NULL, NULL, NULL);
		DefineCustomIntVariable("logistics_hub.max_databases",
								"Most databases the workers serve at once (shared memory slots, sized at server start).",
								"Each database served runs its own dispatchers and inbox workers: count them in max_worker_processes.",
								&hub_max_databases, 8, 1, 64, PGC_POSTMASTER, 0,
								NULL, NULL, NULL);
	}
	DefineCustomStringVariable("logistics_hub.databases",
							   "Databases the workers serve, each with its own dispatchers and inbox workers (a comma-separated list; empty: logistics_hub.database).",
							   "Changed with a reload: workers of a database taken off the list stop, those of one added start.",
							   &hub_databases, "", PGC_SIGHUP, GUC_LIST_INPUT,
							   check_databases, NULL, NULL);
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

/*
 * find_database --- the OID of the database, or InvalidOid; *allowconn says
 * whether it accepts connections (datallowconn)
 */
static Oid
find_database(const char *name, bool *allowconn)
{
	HeapTuple	tup = shared_catalog_find(DatabaseRelationId, offsetof(FormData_pg_database, datname), name);
	Oid			oid = InvalidOid;

	*allowconn = false;
	if (tup != NULL)
	{
		oid = ((Form_pg_database) GETSTRUCT(tup))->oid;
		*allowconn = ((Form_pg_database) GETSTRUCT(tup))->datallowconn;
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
	bool		ran;			/* a worker ran here (the next start is a restart) */
} LauncherSlot;

/* what the launcher keeps about a database slot (workers/shmem.c) */
typedef struct LauncherDb
{
	LauncherSlot slots[HUB_KINDS][HUB_KIND_MAX_SLOTS];
	bool		said_missing;	/* "no extension there" logged */
	bool		said_no_database;	/* "no such database" logged */
	bool		said_no_connections;	/* "datallowconn is off" logged */
} LauncherDb;

/* a kind of worker the launcher keeps running, slot by slot */
typedef struct WorkerKind
{
	const char *function;		/* entry point */
	const char *type;			/* bgw_type, and the name's prefix */
	int			max;			/* slots */
	int		   *wanted;			/* the setting: how many to run */
} WorkerKind;

static const WorkerKind kinds[HUB_KINDS] = {
	[HUB_KIND_DISPATCHER] = {"hub_dispatcher_main", "logistics_hub dispatcher", HUB_MAX_DISPATCHERS, &hub_dispatchers},
	[HUB_KIND_INBOX] = {"hub_inbox_worker_main", "logistics_hub inbox", HUB_MAX_INBOX_WORKERS, &hub_inbox_workers},
};

static bool
start_worker(HubWorkerKind k, int dbslot, const char *dbname, int slot, Oid dboid, Oid roleoid,
			 LauncherSlot *ls)
{
	const WorkerKind *kind = &kinds[k];
	BackgroundWorker worker;
	MemoryContext old;
	bool		registered;

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
	memcpy(worker.bgw_extra + 2 * sizeof(Oid), &dbslot, sizeof(int));
	worker.bgw_notify_pid = MyProcPid;

	/* (the handle outlives the pass's memory) */
	old = MemoryContextSwitchTo(TopMemoryContext);
	registered = RegisterDynamicBackgroundWorker(&worker, &ls->handle);
	MemoryContextSwitchTo(old);
	if (!registered)
	{
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("logistics_hub could not start %s %d of database \"%s\"",
						kind->type + strlen("logistics_hub "), slot, dbname),
				 errhint("Raise max_worker_processes: every database served runs its own dispatchers and inbox workers.")));
		ls->handle = NULL;
		return false;
	}
	hub_slot_count_start(dbslot, k, slot, ls->ran);
	ls->ran = true;
	ls->started_at = GetCurrentTimestamp();
	return true;
}

/* is the worker of this slot running (or starting)? */
static bool
worker_alive(HubWorkerKind k, int dbslot, int slot, LauncherSlot *ls)
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
	if (hub_slot_pid(dbslot, k, slot) != 0)
	{
		ls->ran = true;
		return true;
	}
	return false;
}

/*
 * keep_running --- start or stop the workers of a kind in a database slot
 * so that the wanted number of them run (none without the database and the
 * role); a worker that did not last long is started again only after a
 * pause, which shortens *wait_ms to it, unless it stopped while not wanted
 * (a lowered setting raised again starts its workers at once).  Returns
 * how many still run.
 */
static int
keep_running(HubWorkerKind k, int dbslot, const char *dbname, LauncherSlot *slots,
			 Oid dboid, Oid roleoid, long *wait_ms)
{
	const WorkerKind *kind = &kinds[k];
	TimestampTz now = GetCurrentTimestamp();
	int			running = 0;

	for (int i = 0; i < kind->max; i++)
	{
		LauncherSlot *ls = &slots[i];
		bool		alive = worker_alive(k, dbslot, i, ls);
		bool		wanted = OidIsValid(dboid) && OidIsValid(roleoid) && i < *kind->wanted;

		if (alive)
			running++;
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
			else if (start_worker(k, dbslot, dbname, i, dboid, roleoid, ls))
				running++;
		}
	}
	return running;
}

/*
 * serve_database --- one pass over a database slot: its workers kept
 * running when the database is listed and exists, stopped otherwise.
 * Returns how many of its workers still run.  What is wrong with the
 * database (it does not exist, its extension is missing) is logged once
 * until it changes.
 */
static int
serve_database(int dbslot, const char *dbname, bool listed, Oid *roleoid, bool *role_looked,
			   LauncherDb *ldb, long *wait_ms)
{
	bool		allowconn = false;
	Oid			dboid = listed ? find_database(dbname, &allowconn) : InvalidOid;
	int			running = 0;

	hub_dbslot_set_oid(dbslot, dboid);
	if (listed && !OidIsValid(dboid) && !ldb->said_no_database)
		ereport(LOG,
				(errmsg("logistics_hub waits for database \"%s\" (logistics_hub.databases)", dbname)));
	ldb->said_no_database = listed && !OidIsValid(dboid);

	/* one that accepts no connection (ALTER DATABASE ... ALLOW_CONNECTIONS false): no worker */
	if (OidIsValid(dboid) && !allowconn)
	{
		if (!ldb->said_no_connections)
			ereport(LOG,
					(errmsg("logistics_hub waits for database \"%s\" to accept connections", dbname),
					 errhint("ALTER DATABASE %s ALLOW_CONNECTIONS true, or take it off logistics_hub.databases.",
							 quote_identifier(dbname))));
		ldb->said_no_connections = true;
		dboid = InvalidOid;
	}
	else
		ldb->said_no_connections = false;

	if (OidIsValid(dboid) && !*role_looked)
	{
		*roleoid = find_worker_role(hub_worker_role);
		*role_looked = true;
	}
	for (int k = 0; k < HUB_KINDS; k++)
		running += keep_running(k, dbslot, dbname, ldb->slots[k], dboid,
								OidIsValid(dboid) ? *roleoid : InvalidOid, wait_ms);

	if (hub_dbslot_extension_missing(dbslot))
	{
		if (!ldb->said_missing && listed)
			ereport(LOG,
					(errmsg("logistics_hub extension is not installed in database \"%s\"; its workers look again every %d seconds",
							dbname, DISPATCHER_RESTART_PAUSE_MS / 1000),
					 errhint("CREATE EXTENSION logistics_hub there, or take the database off logistics_hub.databases.")));
		ldb->said_missing = true;
	}
	else
		ldb->said_missing = false;
	return running;
}

void
hub_launcher_main(Datum arg)
{
	LauncherDb *ldbs;
	bool		said_too_many = false;
	MemoryContext pass_cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* no database: pg_database is a shared catalogue */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("logistics_hub launcher");
	hub_launcher_attach();

	ldbs = MemoryContextAllocZero(TopMemoryContext, sizeof(LauncherDb) * hub_max_databases);
	pass_cxt = AllocSetContextCreate(TopMemoryContext, "logistics_hub launcher pass", ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		Oid			roleoid = InvalidOid;
		bool		role_looked = false;
		long		wait_ms = 5000;
		List	   *names;
		ListCell   *lc;
		char		dbname[NAMEDATALEN];

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		MemoryContextReset(pass_cxt);
		MemoryContextSwitchTo(pass_cxt);
		hub_launcher_step("start workers");

		/* the databases listed: each keeps its slot, or takes a free one */
		names = hub_database_names();
		foreach(lc, names)
		{
			const char *name = lfirst(lc);
			int			d = hub_dbslot_find(name);

			if (d < 0 && foreach_current_index(lc) < hub_max_databases)
			{
				d = hub_dbslot_take(name);
				if (d >= 0)
					memset(&ldbs[d], 0, sizeof(LauncherDb));
			}
			if (d < 0 && !said_too_many)
			{
				ereport(WARNING,
						(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
						 errmsg("logistics_hub serves at most %d databases; \"%s\" and the ones after it are not served",
								hub_max_databases, name),
						 errhint("Raise logistics_hub.max_databases (a server restart), or take databases off logistics_hub.databases.")));
				said_too_many = true;
			}
		}
		if (list_length(names) <= hub_max_databases)
			said_too_many = false;

		/*
		 * Every slot in use: the listed ones served, the others' workers
		 * stopped and the slot freed once none runs.  (A database taken off
		 * the list waits for its workers to go before its slot is free, so
		 * that its name never has workers in two slots.)
		 */
		for (int d = 0; d < hub_max_databases; d++)
		{
			bool		listed;
			int			running;

			if (hub_dbslot_name(d, dbname)[0] == '\0')
				continue;
			listed = hub_database_listed(dbname);
			running = serve_database(d, dbname, listed, &roleoid, &role_looked, &ldbs[d], &wait_ms);
			if (!listed && running == 0)
			{
				ereport(LOG,
						(errmsg("logistics_hub no longer serves database \"%s\"", dbname)));
				hub_dbslot_free(d);
				memset(&ldbs[d], 0, sizeof(LauncherDb));
				wait_ms = 0;	/* (a database waiting for a slot takes it now) */
			}
			else if (!listed)
				wait_ms = Min(wait_ms, 100);	/* until they are gone */
		}

		hub_launcher_step("wait");
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
