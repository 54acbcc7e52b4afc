/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		Shared state of the workers, what they publish for hub.workers, and
 *		the wake-up at commit.
 *
 * Only when the library is preloaded: a struct in shared memory, sized at
 * server start by logistics_hub.max_databases, with one entry per database
 * served (its name and OID, given out by the launcher) holding one slot
 * per dispatcher and per inbox worker: the pid and PGPROC number of the
 * worker running in it, and what that worker publishes about itself (its
 * current step, requests in flight, last claim and record, its shard
 * count), plus the launcher's own entry.  Identity fields (pid, procno,
 * database, restarts) change rarely and are guarded by one spinlock; the
 * fields a worker updates in its loop are written by that worker alone,
 * inside a change count (odd while it writes, as PostgreSQL's backend
 * status does), so that the writer never waits and a reader (hub._workers,
 * the view hub.workers) retries until it has a consistent copy.
 *
 * A publishing transaction notes that it wrote an event
 * (hub_note_outbox_insert, from the outbox contract trigger) and, when its
 * top-level transaction commits, sets the latch of every dispatcher of its
 * own database (the entry whose OID is MyDatabaseId; the workers of other
 * databases are left alone): the wake-up costs one flag per row and a few
 * SetLatch calls per commit, comes after the events are visible, and never
 * on abort or PREPARE (hub.wake() is there for COMMIT PREPARED).  A
 * transaction that inserts into hub.inbox (hub_note_inbox_insert, from a
 * statement-level trigger) wakes the inbox workers of its database the same
 * way.  The workers' naptime is only the safety net for a lost wake-up.
 *
 * Without preloading there is no shared memory and nothing to wake; the
 * flag is then never acted upon, and hub._workers() returns no row.
 *
 * workers/shmem.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "hub_workers.h"

#define HUB_STEP_LEN 48

/* one worker's slot */
typedef struct HubWorkerSlot
{
	/* under HubShared.mutex */
	pid_t		pid;			/* 0: free */
	int			procno;			/* PGPROC number, -1: none */
	Oid			dboid;			/* the database it is connected to */
	uint64		starts;			/* workers the launcher started here */
	uint64		restarts;		/* of which after one had run here */

	/* written by the worker alone, inside changecount */
	uint32		changecount;
	TimestampTz started_at;
	char		step[HUB_STEP_LEN];
	int			in_flight;
	int			nshards;
	TimestampTz last_claim_at;
	TimestampTz last_record_at;
} HubWorkerSlot;

/* one database served */
typedef struct HubDatabaseSlot
{
	char		name[NAMEDATALEN];	/* "": free */
	Oid			dboid;			/* InvalidOid: not found (yet) */
	bool		extension_missing;	/* a worker found no extension */
	HubWorkerSlot slots[HUB_KINDS][HUB_KIND_MAX_SLOTS];
} HubDatabaseSlot;

typedef struct HubShared
{
	slock_t		mutex;
	/* the launcher, under mutex */
	pid_t		launcher_pid;
	TimestampTz launcher_started_at;
	uint64		launcher_restarts;
	char		launcher_step[HUB_STEP_LEN];
	int			ndatabases;		/* logistics_hub.max_databases at start */
	HubDatabaseSlot dbs[FLEXIBLE_ARRAY_MEMBER];
} HubShared;

static HubShared *hub_shared = NULL;
static HubWorkerSlot *my_slot = NULL;	/* a worker's own slot */
static int	my_dbslot = -1;
static int	my_number = -1;	/* a worker's slot number */
static bool wake_at_commit = false;
static bool wake_inbox_at_commit = false;
static bool xact_callback_registered = false;

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static Size
hub_shmem_size(void)
{
	return add_size(offsetof(HubShared, dbs),
					mul_size(sizeof(HubDatabaseSlot), hub_max_databases));
}

#if PG_VERSION_NUM >= 150000
static void
hub_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(hub_shmem_size()));
}
#endif

static void
hub_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	hub_shared = ShmemInitStruct("logistics_hub", hub_shmem_size(), &found);
	if (!found)
	{
		memset(hub_shared, 0, hub_shmem_size());
		SpinLockInit(&hub_shared->mutex);
		hub_shared->ndatabases = hub_max_databases;
		for (int d = 0; d < hub_max_databases; d++)
			for (int k = 0; k < HUB_KINDS; k++)
				for (int i = 0; i < HUB_KIND_MAX_SLOTS; i++)
					hub_shared->dbs[d].slots[k][i].procno = -1;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* hub_shmem_init_hooks --- from _PG_init while preloading */
void
hub_shmem_init_hooks(void)
{
#if PG_VERSION_NUM >= 150000
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = hub_shmem_request;
#else
	RequestAddinShmemSpace(MAXALIGN(hub_shmem_size()));
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = hub_shmem_startup;
}

bool
hub_shmem_ready(void)
{
	return hub_shared != NULL;
}

/* ------------------------------------------------------------ a worker's own slot */

/* what a worker publishes is written between these two (never waits) */
#define BEGIN_WRITE(slot) \
	do { (slot)->changecount++; pg_write_barrier(); } while (0)
#define END_WRITE(slot) \
	do { pg_write_barrier(); (slot)->changecount++; } while (0)

static void
hub_worker_detach(int code, Datum arg)
{
	SpinLockAcquire(&hub_shared->mutex);
	if (my_slot->pid == MyProcPid)
	{
		my_slot->pid = 0;
		my_slot->procno = -1;
	}
	SpinLockRelease(&hub_shared->mutex);
}

/*
 * hub_worker_attach --- a worker takes slot of its kind in database slot
 * dbslot (freed again when it exits, and by the shared memory reset of a
 * crash restart)
 */
void
hub_worker_attach(HubWorkerKind kind, int dbslot, int slot)
{
	HubWorkerSlot *s;

	if (dbslot < 0 || dbslot >= hub_shared->ndatabases || slot < 0 || slot >= HUB_KIND_MAX_SLOTS)
		elog(ERROR, "logistics_hub worker slot %d of database slot %d out of range", slot, dbslot);
	s = &hub_shared->dbs[dbslot].slots[kind][slot];
	SpinLockAcquire(&hub_shared->mutex);
	s->pid = MyProcPid;
	s->procno = MyProc->pgprocno;
	s->dboid = MyDatabaseId;
	SpinLockRelease(&hub_shared->mutex);
	BEGIN_WRITE(s);
	s->started_at = GetCurrentTimestamp();
	strlcpy(s->step, "start", HUB_STEP_LEN);
	s->in_flight = 0;
	s->nshards = kind == HUB_KIND_DISPATCHER ? Max(hub_dispatchers, slot + 1) : 0;
	s->last_claim_at = 0;
	s->last_record_at = 0;
	END_WRITE(s);
	my_slot = s;
	my_dbslot = dbslot;
	my_number = slot;
	on_shmem_exit(hub_worker_detach, (Datum) 0);
}

/* the name of the worker's database (as the launcher listed it) */
const char *
hub_my_database(void)
{
	return my_dbslot < 0 ? "" : hub_shared->dbs[my_dbslot].name;
}

/* the pid of dispatcher slot of the worker's own database, 0: none */
pid_t
hub_dispatcher_pid(int slot)
{
	pid_t		pid;

	Assert(my_dbslot >= 0);
	SpinLockAcquire(&hub_shared->mutex);
	pid = hub_shared->dbs[my_dbslot].slots[HUB_KIND_DISPATCHER][slot].pid;
	SpinLockRelease(&hub_shared->mutex);
	return pid;
}

/* hub_status_step --- the step the worker is in ("claim", "idle", ...) */
void
hub_status_step(const char *step)
{
	if (my_slot == NULL)
		return;
	BEGIN_WRITE(my_slot);
	strlcpy(my_slot->step, step, HUB_STEP_LEN);
	if (my_slot->nshards != 0)
		my_slot->nshards = Max(hub_dispatchers, my_number + 1);
	END_WRITE(my_slot);
}

/* hub_status_in_flight --- requests the worker has in flight */
void
hub_status_in_flight(int n)
{
	if (my_slot == NULL || my_slot->in_flight == n)
		return;
	BEGIN_WRITE(my_slot);
	my_slot->in_flight = n;
	END_WRITE(my_slot);
}

/* hub_status_claimed --- the worker just claimed work */
void
hub_status_claimed(void)
{
	if (my_slot == NULL)
		return;
	BEGIN_WRITE(my_slot);
	my_slot->last_claim_at = GetCurrentTimestamp();
	END_WRITE(my_slot);
}

/* hub_status_recorded --- the worker just recorded outcomes */
void
hub_status_recorded(void)
{
	if (my_slot == NULL)
		return;
	BEGIN_WRITE(my_slot);
	my_slot->last_record_at = GetCurrentTimestamp();
	END_WRITE(my_slot);
}

/*
 * hub_status_extension_missing --- the worker found the extension missing
 * in its database (before it leaves), or present: the launcher says so once
 */
void
hub_status_extension_missing(bool missing)
{
	if (my_dbslot < 0 || hub_shared->dbs[my_dbslot].extension_missing == missing)
		return;
	SpinLockAcquire(&hub_shared->mutex);
	hub_shared->dbs[my_dbslot].extension_missing = missing;
	SpinLockRelease(&hub_shared->mutex);
}

/* ------------------------------------------------------------ the launcher's side */

static void
hub_launcher_detach(int code, Datum arg)
{
	SpinLockAcquire(&hub_shared->mutex);
	if (hub_shared->launcher_pid == MyProcPid)
		hub_shared->launcher_pid = 0;
	SpinLockRelease(&hub_shared->mutex);
}

/* hub_launcher_attach --- the launcher's entry; a launcher that ran before counts a restart */
void
hub_launcher_attach(void)
{
	SpinLockAcquire(&hub_shared->mutex);
	if (hub_shared->launcher_started_at != 0)
		hub_shared->launcher_restarts++;
	hub_shared->launcher_pid = MyProcPid;
	hub_shared->launcher_started_at = GetCurrentTimestamp();
	strlcpy(hub_shared->launcher_step, "start", HUB_STEP_LEN);
	SpinLockRelease(&hub_shared->mutex);
	on_shmem_exit(hub_launcher_detach, (Datum) 0);
}

void
hub_launcher_step(const char *step)
{
	SpinLockAcquire(&hub_shared->mutex);
	strlcpy(hub_shared->launcher_step, step, HUB_STEP_LEN);
	SpinLockRelease(&hub_shared->mutex);
}

/* hub_dbslot_find --- the database slot named name, -1: none */
int
hub_dbslot_find(const char *name)
{
	int			found = -1;

	SpinLockAcquire(&hub_shared->mutex);
	for (int d = 0; d < hub_shared->ndatabases && found < 0; d++)
		if (strcmp(hub_shared->dbs[d].name, name) == 0)
			found = d;
	SpinLockRelease(&hub_shared->mutex);
	return found;
}

/* hub_dbslot_take --- a free database slot given to name, -1: none left */
int
hub_dbslot_take(const char *name)
{
	int			found = -1;

	SpinLockAcquire(&hub_shared->mutex);
	for (int d = 0; d < hub_shared->ndatabases && found < 0; d++)
	{
		HubDatabaseSlot *db = &hub_shared->dbs[d];

		if (db->name[0] == '\0')
		{
			found = d;
			strlcpy(db->name, name, NAMEDATALEN);
			db->dboid = InvalidOid;
			db->extension_missing = false;
			for (int k = 0; k < HUB_KINDS; k++)
				for (int i = 0; i < HUB_KIND_MAX_SLOTS; i++)
				{
					db->slots[k][i].starts = 0;
					db->slots[k][i].restarts = 0;
				}
		}
	}
	SpinLockRelease(&hub_shared->mutex);
	return found;
}

void
hub_dbslot_set_oid(int dbslot, Oid dboid)
{
	SpinLockAcquire(&hub_shared->mutex);
	hub_shared->dbs[dbslot].dboid = dboid;
	SpinLockRelease(&hub_shared->mutex);
}

/* hub_dbslot_free --- the database is no longer served (its workers are gone) */
void
hub_dbslot_free(int dbslot)
{
	SpinLockAcquire(&hub_shared->mutex);
	hub_shared->dbs[dbslot].name[0] = '\0';
	hub_shared->dbs[dbslot].dboid = InvalidOid;
	SpinLockRelease(&hub_shared->mutex);
}

/* the database name of a slot, copied into buf (NAMEDATALEN); "" when free */
const char *
hub_dbslot_name(int dbslot, char *buf)
{
	SpinLockAcquire(&hub_shared->mutex);
	strlcpy(buf, hub_shared->dbs[dbslot].name, NAMEDATALEN);
	SpinLockRelease(&hub_shared->mutex);
	return buf;
}

bool
hub_dbslot_extension_missing(int dbslot)
{
	bool		missing;

	SpinLockAcquire(&hub_shared->mutex);
	missing = hub_shared->dbs[dbslot].extension_missing;
	SpinLockRelease(&hub_shared->mutex);
	return missing;
}

/* the pid in a worker slot, 0: none */
pid_t
hub_slot_pid(int dbslot, HubWorkerKind kind, int slot)
{
	pid_t		pid;

	SpinLockAcquire(&hub_shared->mutex);
	pid = hub_shared->dbs[dbslot].slots[kind][slot].pid;
	SpinLockRelease(&hub_shared->mutex);
	return pid;
}

/* hub_slot_count_start --- the launcher started a worker in a slot (again?) */
void
hub_slot_count_start(int dbslot, HubWorkerKind kind, int slot, bool restart)
{
	HubWorkerSlot *s = &hub_shared->dbs[dbslot].slots[kind][slot];

	SpinLockAcquire(&hub_shared->mutex);
	s->starts++;
	if (restart)
		s->restarts++;
	SpinLockRelease(&hub_shared->mutex);
}

/* ------------------------------------------------------------ wake-ups */

/*
 * wake --- set the latch of every running worker of a kind connected to the
 * current database; returns how many.  A slot may be stale for an instant
 * (its worker exiting): a latch set on a PGPROC that is free or reused is
 * a harmless spurious wake-up.
 */
static int
wake(HubWorkerKind kind)
{
	int			procnos[HUB_KIND_MAX_SLOTS];
	int			n = 0;

	if (hub_shared == NULL || !OidIsValid(MyDatabaseId))
		return 0;
	SpinLockAcquire(&hub_shared->mutex);
	for (int d = 0; d < hub_shared->ndatabases; d++)
	{
		HubDatabaseSlot *db = &hub_shared->dbs[d];

		/* (the launcher names the database's OID in its slot) */
		if (db->name[0] == '\0' || db->dboid != MyDatabaseId)
			continue;
		for (int i = 0; i < HUB_KIND_MAX_SLOTS && n < HUB_KIND_MAX_SLOTS; i++)
		{
			HubWorkerSlot *s = &db->slots[kind][i];

			if (s->pid != 0 && s->procno >= 0 && s->dboid == MyDatabaseId)
				procnos[n++] = s->procno;
		}
	}
	SpinLockRelease(&hub_shared->mutex);
	for (int i = 0; i < n; i++)
		SetLatch(&ProcGlobal->allProcs[procnos[i]].procLatch);
	return n;
}

/* hub_wake_dispatchers --- wake the dispatchers of the current database */
void
hub_wake_dispatchers(void)
{
	(void) wake(HUB_KIND_DISPATCHER);
}

/* hub_wake_inbox_workers --- wake the inbox workers of the current database */
void
hub_wake_inbox_workers(void)
{
	(void) wake(HUB_KIND_INBOX);
}

/* ------------------------------------------------------------ hub._workers() */

static void
put_timestamp(Datum *values, bool *nulls, int col, TimestampTz t)
{
	if (t == 0)
		nulls[col] = true;
	else
		values[col] = TimestampTzGetDatum(t);
}

/*
 * hub_workers_list --- SQL hub._workers(): one row per worker of the
 * cluster (the launcher, and the dispatchers and inbox workers of every
 * database served, a slot whose worker is not running as pid NULL and
 * step "stopped"), read from shared memory: identity fields under the
 * spinlock, what a worker publishes as a consistent copy (retried while the
 * worker writes).  No row without preloading.
 */
PG_FUNCTION_INFO_V1(hub_workers_list);
Datum
hub_workers_list(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	static const char *const kind_names[HUB_KINDS] = {"dispatcher", "inbox"};
	Datum		values[11];
	bool		nulls[11];

	InitMaterializedSRF(fcinfo, 0);
	if (hub_shared == NULL)
		return (Datum) 0;

	/* the launcher */
	{
		pid_t		pid;
		TimestampTz started_at;
		uint64		restarts;
		char		step[HUB_STEP_LEN];

		SpinLockAcquire(&hub_shared->mutex);
		pid = hub_shared->launcher_pid;
		started_at = hub_shared->launcher_started_at;
		restarts = hub_shared->launcher_restarts;
		memcpy(step, hub_shared->launcher_step, HUB_STEP_LEN);
		SpinLockRelease(&hub_shared->mutex);
		if (pid != 0)
		{
			memset(nulls, false, sizeof(nulls));
			nulls[0] = true;	/* no database */
			values[1] = Int32GetDatum(pid);
			values[2] = CStringGetTextDatum("launcher");
			values[3] = Int32GetDatum(0);
			put_timestamp(values, nulls, 4, started_at);
			values[5] = CStringGetTextDatum(step);
			nulls[6] = true;	/* sends nothing */
			nulls[7] = true;
			nulls[8] = true;
			nulls[9] = true;
			values[10] = Int64GetDatum((int64) restarts);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}

	for (int d = 0; d < hub_shared->ndatabases; d++)
	{
		HubDatabaseSlot *db = &hub_shared->dbs[d];

		for (int k = 0; k < HUB_KINDS; k++)
			for (int i = 0; i < HUB_KIND_MAX_SLOTS; i++)
			{
				HubWorkerSlot *s = &db->slots[k][i];
				HubWorkerSlot copy;
				NameData	dbname;
				pid_t		pid;
				uint64		starts;
				uint64		restarts;

				SpinLockAcquire(&hub_shared->mutex);
				pid = s->pid;
				starts = s->starts;
				restarts = s->restarts;
				namestrcpy(&dbname, db->name);
				SpinLockRelease(&hub_shared->mutex);

				/*
				 * A slot without a worker is shown while its database is
				 * served and the setting wants a worker there that the
				 * launcher started before: stopped, failing or about to
				 * be started again.
				 */
				if (pid == 0 && (NameStr(dbname)[0] == '\0' || starts == 0 ||
								 i >= (k == HUB_KIND_DISPATCHER ? hub_dispatchers : hub_inbox_workers)))
					continue;
				/* a consistent copy of what the worker publishes */
				for (int tries = 0;; tries++)
				{
					uint32		before = s->changecount;

					pg_read_barrier();
					memcpy(&copy, s, sizeof(copy));
					pg_read_barrier();
					if (before == s->changecount && (before & 1) == 0)
						break;
					CHECK_FOR_INTERRUPTS();
					if (tries > 1000)
						pg_usleep(10);
				}
				copy.step[HUB_STEP_LEN - 1] = '\0';

				memset(nulls, false, sizeof(nulls));
				values[0] = NameGetDatum(&dbname);
				values[1] = Int32GetDatum(pid);
				nulls[1] = pid == 0;
				values[2] = CStringGetTextDatum(kind_names[k]);
				values[3] = Int32GetDatum(i);
				put_timestamp(values, nulls, 4, pid == 0 ? 0 : copy.started_at);
				values[5] = CStringGetTextDatum(pid == 0 ? "stopped" : copy.step);
				values[6] = Int32GetDatum(copy.in_flight);
				nulls[6] = pid == 0;
				if (k == HUB_KIND_DISPATCHER)
					values[7] = Int32GetDatum(pid == 0 ? hub_dispatchers : copy.nshards);
				else
					nulls[7] = true;
				put_timestamp(values, nulls, 8, copy.last_claim_at);
				put_timestamp(values, nulls, 9, copy.last_record_at);
				values[10] = Int64GetDatum((int64) restarts);
				/* (the name is copied by the tuplestore) */
				tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
			}
	}
	return (Datum) 0;
}

/* ------------------------------------------------------------ wake at commit */

static void
hub_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_at_commit)
				hub_wake_dispatchers();
			if (wake_inbox_at_commit)
				hub_wake_inbox_workers();
			wake_at_commit = false;
			wake_inbox_at_commit = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			wake_at_commit = false;
			wake_inbox_at_commit = false;
			break;
		default:
			break;
	}
}

static void
register_xact_callback(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(hub_xact_callback, NULL);
		xact_callback_registered = true;
	}
}

void
hub_note_outbox_insert(void)
{
	if (wake_at_commit || hub_shared == NULL)
		return;
	register_xact_callback();
	wake_at_commit = true;
}

void
hub_note_inbox_insert(void)
{
	if (wake_inbox_at_commit || hub_shared == NULL)
		return;
	register_xact_callback();
	wake_inbox_at_commit = true;
}

/*
 * hub_inbox_wake --- SQL hub._inbox_wake(), the statement-level AFTER
 * INSERT trigger of hub.inbox: the inbox workers are woken when the
 * top-level transaction commits (hub.receive, the pollers' inserts and a
 * plain INSERT alike), never before and never on abort.
 */
PG_FUNCTION_INFO_V1(hub_inbox_wake);
Datum
hub_inbox_wake(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("hub._inbox_wake() may only be called as a trigger")));
	hub_note_inbox_insert();
	return PointerGetDatum(NULL);
}

/*
 * hub_wake_at_commit --- SQL hub._wake_at_commit(): wake the dispatchers
 * when the current transaction commits, as a publish does (a poller
 * created, made due or resumed: the dispatcher's read-only look must see
 * the committed row).  Nothing on abort; nothing without preloading.
 */
PG_FUNCTION_INFO_V1(hub_wake_at_commit);
Datum
hub_wake_at_commit(PG_FUNCTION_ARGS)
{
	hub_note_outbox_insert();
	PG_RETURN_VOID();
}

/*
 * hub_wake --- SQL hub.wake(): wake the dispatchers now (after COMMIT
 * PREPARED of a transaction that published, or to skip the naptime).
 * Returns the number of running dispatchers of the current database (the
 * only ones it wakes).
 */
PG_FUNCTION_INFO_V1(hub_wake);
Datum
hub_wake(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(wake(HUB_KIND_DISPATCHER));
}
