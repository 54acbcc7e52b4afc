/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		Shared state of the workers and the wake-up at commit.
 *
 * Only when the library is preloaded: a small struct in shared memory
 * holding, per dispatcher slot and per inbox worker slot, the pid and the
 * PGPROC number of the worker running in it.  A publishing transaction
 * notes that it wrote an event (hub_note_outbox_insert, from the outbox
 * contract trigger) and, when its top-level transaction commits, sets every
 * dispatcher's latch: the wake-up costs one flag per row and a few SetLatch
 * calls per commit, comes after the events are visible, and never on abort
 * or PREPARE (hub.wake() is there for COMMIT PREPARED).  A transaction that
 * inserts into hub.inbox (hub_note_inbox_insert, from a statement-level
 * trigger) wakes the inbox workers the same way.  The workers' naptime is
 * only the safety net for a lost wake-up.
 *
 * Without preloading there is no shared memory and nothing to wake; the
 * flag is then never acted upon.
 *
 * workers/shmem.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"

#include "hub_workers.h"

typedef struct HubDispatcherSlot
{
	pid_t		pid;			/* 0: free */
	int			procno;			/* PGPROC number, -1: none */
} HubDispatcherSlot;

typedef struct HubShared
{
	slock_t		mutex;
	HubDispatcherSlot slots[HUB_MAX_DISPATCHERS];
	HubDispatcherSlot inbox_slots[HUB_MAX_INBOX_WORKERS];
} HubShared;

static HubShared *hub_shared = NULL;
static bool wake_at_commit = false;
static bool wake_inbox_at_commit = false;
static bool xact_callback_registered = false;

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

#if PG_VERSION_NUM >= 150000
static void
hub_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(HubShared)));
}
#endif

static void
hub_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	hub_shared = ShmemInitStruct("logistics_hub", sizeof(HubShared), &found);
	if (!found)
	{
		SpinLockInit(&hub_shared->mutex);
		for (int i = 0; i < HUB_MAX_DISPATCHERS; i++)
		{
			hub_shared->slots[i].pid = 0;
			hub_shared->slots[i].procno = -1;
		}
		for (int i = 0; i < HUB_MAX_INBOX_WORKERS; i++)
		{
			hub_shared->inbox_slots[i].pid = 0;
			hub_shared->inbox_slots[i].procno = -1;
		}
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
	RequestAddinShmemSpace(MAXALIGN(sizeof(HubShared)));
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = hub_shmem_startup;
}

bool
hub_shmem_ready(void)
{
	return hub_shared != NULL;
}

static void
hub_dispatcher_detach(int code, Datum arg)
{
	int			slot = DatumGetInt32(arg);

	SpinLockAcquire(&hub_shared->mutex);
	if (hub_shared->slots[slot].pid == MyProcPid)
	{
		hub_shared->slots[slot].pid = 0;
		hub_shared->slots[slot].procno = -1;
	}
	SpinLockRelease(&hub_shared->mutex);
}

/*
 * hub_dispatcher_attach --- a dispatcher takes its slot (freed again when it
 * exits, and by the shared memory reset of a crash restart).
 */
void
hub_dispatcher_attach(int slot)
{
	Assert(slot >= 0 && slot < HUB_MAX_DISPATCHERS);
	SpinLockAcquire(&hub_shared->mutex);
	hub_shared->slots[slot].pid = MyProcPid;
	hub_shared->slots[slot].procno = MyProc->pgprocno;
	SpinLockRelease(&hub_shared->mutex);
	on_shmem_exit(hub_dispatcher_detach, Int32GetDatum(slot));
}

pid_t
hub_dispatcher_pid(int slot)
{
	pid_t		pid;

	SpinLockAcquire(&hub_shared->mutex);
	pid = hub_shared->slots[slot].pid;
	SpinLockRelease(&hub_shared->mutex);
	return pid;
}

/*
 * hub_wake_dispatchers --- set the latch of every running dispatcher.  A
 * slot may be stale for an instant (its dispatcher exiting): a latch set on
 * a PGPROC that is free or reused is a harmless spurious wake-up.
 */
void
hub_wake_dispatchers(void)
{
	int			procnos[HUB_MAX_DISPATCHERS];
	int			n = 0;

	if (hub_shared == NULL)
		return;
	SpinLockAcquire(&hub_shared->mutex);
	for (int i = 0; i < HUB_MAX_DISPATCHERS; i++)
		if (hub_shared->slots[i].pid != 0 && hub_shared->slots[i].procno >= 0)
			procnos[n++] = hub_shared->slots[i].procno;
	SpinLockRelease(&hub_shared->mutex);
	for (int i = 0; i < n; i++)
		SetLatch(&ProcGlobal->allProcs[procnos[i]].procLatch);
}

/* ------------------------------------------------------------ inbox workers */

static void
hub_inbox_worker_detach(int code, Datum arg)
{
	int			slot = DatumGetInt32(arg);

	SpinLockAcquire(&hub_shared->mutex);
	if (hub_shared->inbox_slots[slot].pid == MyProcPid)
	{
		hub_shared->inbox_slots[slot].pid = 0;
		hub_shared->inbox_slots[slot].procno = -1;
	}
	SpinLockRelease(&hub_shared->mutex);
}

/*
 * hub_inbox_worker_attach --- an inbox worker takes its slot (freed again
 * when it exits, and by the shared memory reset of a crash restart).
 */
void
hub_inbox_worker_attach(int slot)
{
	Assert(slot >= 0 && slot < HUB_MAX_INBOX_WORKERS);
	SpinLockAcquire(&hub_shared->mutex);
	hub_shared->inbox_slots[slot].pid = MyProcPid;
	hub_shared->inbox_slots[slot].procno = MyProc->pgprocno;
	SpinLockRelease(&hub_shared->mutex);
	on_shmem_exit(hub_inbox_worker_detach, Int32GetDatum(slot));
}

pid_t
hub_inbox_worker_pid(int slot)
{
	pid_t		pid;

	SpinLockAcquire(&hub_shared->mutex);
	pid = hub_shared->inbox_slots[slot].pid;
	SpinLockRelease(&hub_shared->mutex);
	return pid;
}

/*
 * hub_wake_inbox_workers --- set the latch of every running inbox worker
 * (a stale slot is a harmless spurious wake-up, as for the dispatchers).
 */
void
hub_wake_inbox_workers(void)
{
	int			procnos[HUB_MAX_INBOX_WORKERS];
	int			n = 0;

	if (hub_shared == NULL)
		return;
	SpinLockAcquire(&hub_shared->mutex);
	for (int i = 0; i < HUB_MAX_INBOX_WORKERS; i++)
		if (hub_shared->inbox_slots[i].pid != 0 && hub_shared->inbox_slots[i].procno >= 0)
			procnos[n++] = hub_shared->inbox_slots[i].procno;
	SpinLockRelease(&hub_shared->mutex);
	for (int i = 0; i < n; i++)
		SetLatch(&ProcGlobal->allProcs[procnos[i]].procLatch);
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
 * Returns the number of running dispatchers.
 */
PG_FUNCTION_INFO_V1(hub_wake);
Datum
hub_wake(PG_FUNCTION_ARGS)
{
	int			n = 0;

	if (hub_shared == NULL)
		PG_RETURN_INT32(0);
	for (int i = 0; i < HUB_MAX_DISPATCHERS; i++)
		if (hub_dispatcher_pid(i) != 0)
			n++;
	hub_wake_dispatchers();
	PG_RETURN_INT32(n);
}
