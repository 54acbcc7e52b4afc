/*-------------------------------------------------------------------------
 *
 * dispatcher.c
 *		The dispatcher background worker: claims deliveries and due
 *		pollers, sends their requests over HTTP with libcurl's multi
 *		interface and records the outcomes.  This file holds its set-up and
 *		its loop; the steps live in files of their own (see the README's
 *		layout and workers/http.h, workers/push.h, workers/poll.h).
 *
 * One loop, three kinds of step, never a transaction open during HTTP
 * (the push side's are described here; the poll side has the same three:
 * a read-only look at when a poller is due, then a claim that leases due
 * pollers and queues their page requests (poll_fetch.c), and one
 * transaction per fetched page (poll_record.c)):
 *
 *   claim   one short transaction: route what is not routed yet
 *           (hub._route_events), lease ready deliveries of the endpoints
 *           this dispatcher serves (hub._claim, or hub._claim_transformed
 *           when a subscription has a transform; hub._serves: an endpoint
 *           is shared by min(logistics_hub.dispatchers, max_concurrency)
 *           dispatchers) with their bodies already rendered, then the
 *           probes of half-open circuits (hub._claim_probes), as
 *           hub.claim_deliveries does in one call; endpoint settings and
 *           secrets are (re)read in the same transaction when older than a
 *           second, with the concurrency cap and rate limit cut to this
 *           dispatcher's share of them (hub._serves_share).  Secrets
 *           come sealed and are opened here, in C (extension/sealed.c);
 *           an endpoint whose secrets do not open (no key, another key)
 *           sends nothing and is paused with the reason.
 *   send    requests wait in their endpoint's queue until its concurrency
 *           cap, its rate limit (a sliding window: never more than
 *           rate_limit starts in any second) and the dispatcher's total cap
 *           let them go; libcurl drives all transfers on one multi handle
 *           whose sockets sit in an epoll set that the loop's WaitEventSet
 *           watches together with the latch and postmaster death.  An
 *           OAuth2 endpoint without a valid token starts one token request
 *           on the same multi handle (never more than one at a time) and
 *           its queue waits, spending no attempt, until the answer: a
 *           token lets the queue go, a failure fails every queued request
 *           once.  Nothing blocks, so a slow or hung token URL holds up
 *           only its own endpoint.
 *   record  one short transaction for everything finished (every few
 *           hundred results, or 10 ms after the first, or when idle):
 *           successes in bulk (hub._complete_many; a lease group, whose
 *           events are sent one request each, once all of them are in,
 *           the events that did not get through taken out of it first by
 *           hub._split_group), failures one by one
 *           (hub.fail_delivery: backoff, Retry-After, dead letters, circuit
 *           breaker), and requests given back without an attempt
 *           (hub.defer_delivery: circuit opened, endpoint paused, or a
 *           request that waited half its lease in a queue).
 *
 * Push and poll requests share the endpoint queues, limits, auth, circuit
 * and throttle (send_queue.c, endpoints.c).
 *
 * The latch is set by publishing transactions at commit (shmem.c), by
 * SIGTERM (die) and SIGHUP; the naptime is only a safety net.  The
 * loop checks for interrupts after every wait, so neither a fast shutdown
 * nor DROP DATABASE (a procsignal barrier) is held up by a hung receiver:
 * transfers never block, they are only driven.  Outside data never raises
 * an error: every transport error, bad status, oversized or malformed
 * answer becomes an attempt row.  The dispatcher connects as
 * logistics_hub.worker_role, never a superuser, and pins its search_path
 * and the settings a claim relies on (hub_pin_session); transforms run as
 * their owners (extension/user_code.c).  A claim or record step that fails
 * because of one event, endpoint or outcome is done again piece by piece,
 * so that only that one stops: an event kept in hub.unroutable_events, an
 * endpoint paused with the reason (push_claim.c, push_record.c,
 * endpoints.c, poll_record.c; step_guard.c).  An error of the server's
 * rather than the data's (the extension being dropped, a lock) ends the
 * process with exit code 1 and the launcher starts it again; leases it
 * held expire or, for its next incarnation, are given back at start.
 * Its WARNINGs and errors are one log line each, naming the worker and the
 * step (worker_txn.c); their CONTEXT goes to DEBUG1.
 *
 * workers/dispatcher.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "libpq/pqsignal.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "hub_workers.h"
#include "nats.h"
#include "poll.h"
#include "push.h"

/*
 * dispatcher_setup --- signals, the connection as the worker role (never a
 * superuser), the pinned session, memory, the endpoint cache, and the
 * WaitEventSet of the latch, postmaster death and libcurl's sockets
 */
static WaitEventSet *
dispatcher_setup(Datum arg)
{
	Oid			dboid;
	Oid			roleoid;
	int			dbslot;
	WaitEventSet *wes;

	hub_worker_txn_init("dispatcher", DatumGetInt32(arg), "_claim_probes");
	memcpy(&dboid, MyBgworkerEntry->bgw_extra, sizeof(Oid));
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	memcpy(&roleoid, MyBgworkerEntry->bgw_extra + sizeof(Oid), sizeof(Oid));
	memcpy(&dbslot, MyBgworkerEntry->bgw_extra + 2 * sizeof(Oid), sizeof(int));
	BackgroundWorkerInitializeConnectionByOid(dboid, roleoid, 0);
	hub_pin_session(hub_worker_name);
	pgstat_report_appname(psprintf("logistics_hub %s", hub_worker_name));
	hub_worker_attach(HUB_KIND_DISPATCHER, dbslot, hub_my_slot);
	hub_endpoints_init();

	wes = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(wes, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wes, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	hub_loop_init(wes);
	return wes;
}

/*
 * handle_signals --- record what finished before leaving when asked to stop
 * (one short transaction, no network, so that requests the receivers
 * already answered are not sent again once their leases run out; anything
 * still in flight is left to its lease), then a pending reload: a
 * dispatcher no longer wanted leaves by itself.
 */
static void
handle_signals(void)
{
	if (ProcDiePending && (hub_push_results_pending() || hub_poll_pages_pending()))
	{
		HOLD_INTERRUPTS();
		hub_push_record();
		hub_poll_record();
		RESUME_INTERRUPTS();
	}
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);

		/*
		 * No longer wanted: leave by ourselves.  The launcher stops such a
		 * dispatcher too, but only one it started: a launcher that was
		 * restarted has adopted the running ones by their slots, with no
		 * handle to stop them.  Exit code 1, never 0; dispatcher 0 gives
		 * back what is still leased.
		 */
		if (hub_my_slot >= hub_dispatchers || !hub_database_listed(hub_my_database()))
		{
			HOLD_INTERRUPTS();
			hub_push_record();
			hub_poll_record();
			RESUME_INTERRUPTS();
			if (hub_my_slot >= hub_dispatchers)
				ereport(LOG,
						(errmsg("logistics_hub dispatcher %d exiting: logistics_hub.dispatchers is now %d",
								hub_my_slot, hub_dispatchers)));
			else
				ereport(LOG,
						(errmsg("logistics_hub dispatcher %d exiting: database \"%s\" is no longer in logistics_hub.databases",
								hub_my_slot, hub_my_database())));
			proc_exit(1);
		}
	}
}

/*
 * between_steps --- after one of the loop's transactions: what came in
 * meanwhile (answers, acknowledgements) is taken, and the next event of
 * each sequential lease group whose last one got through goes out at once,
 * so that a key's events follow each other at the receiver's pace, not at
 * the pace of the loop's steps.  (The pump only then: one after every wait
 * cost HTTP pushes a fifth more CPU an event, their requests started one by
 * one instead of together.)
 */
static void
between_steps(void)
{
	hub_loop_socket_ready();
	hub_loop_collect();
	if (hub_push_take_followups())
		(void) hub_send_pump();
}

/*
 * claim_room --- is there room for a claim?  Fewer requests wait than may
 * be in flight, and, of logistics_hub.max_in_flight, a quarter is free (not
 * queued, not in flight): a dispatcher that is nearly full waits for its
 * completions rather than claiming the handful each record step makes room
 * for, so that a claim's fixed cost (routing; for per_key subscriptions,
 * reading past the events queued behind the heads of their keys) is paid
 * for many events.  (A finished request wakes the loop.)
 */
static bool
claim_room(void)
{
	int			queued = hub_send_queued();

	return queued < hub_max_in_flight &&
		queued + hub_loop_in_flight() <= hub_max_in_flight - Max(1, hub_max_in_flight / 4);
}

/* record_throttles --- a step of its own for throttles noted and not recorded */
static void
record_throttles(void)
{
	hub_begin_work_step("logistics_hub: record throttles");
	hub_endpoints_record_throttles();
	hub_end_step();
}

void
hub_dispatcher_main(Datum arg)
{
	WaitEventSet *wes = dispatcher_setup(arg);
	TimestampTz next_claim = 0;
	TimestampTz next_refresh = 0;
	TimestampTz next_retention;
	bool		claim_full = false;

	hub_release_old_leases();
	next_retention = GetCurrentTimestamp() + (int64) Min(hub_retention_interval_s, 60) * USECS_PER_SEC;

	for (;;)
	{
		WaitEvent	events[3];
		int			nev;
		long		timeout;
		TimestampTz now;
		TimestampTz rate_next;
		TimestampTz due;

		MemoryContextReset(hub_loop_cxt);
		MemoryContextSwitchTo(hub_loop_cxt);
		hub_clear_step();		/* (a step that failed and was handled) */
		handle_signals();

		now = GetCurrentTimestamp();
		if (hub_push_record_due(now))
		{
			hub_push_record();
			hub_status_recorded();
			between_steps();
		}
		if (hub_poll_pages_pending())
		{
			hub_poll_record();
			hub_status_recorded();
		}
		/* a NATS stream as a poller source: record, then acknowledge */
		if (hub_nats_inbound_pending())
		{
			hub_nats_inbound_record();
			hub_status_recorded();
		}
		hub_nats_inbound_refresh(false);
		if (hub_endpoints_throttles_pending())
			record_throttles();

		/*
		 * Claim while fewer requests wait than may be in flight: a claim of
		 * logistics_hub.claim_batch events then keeps every connection
		 * busy until the next one, whether a request carries one delivery
		 * or a batch of them (see claim_room).
		 */
		now = GetCurrentTimestamp();
		if ((now >= next_claim || claim_full) && claim_room())
		{
			int			want = hub_claim_batch;
			int			got = hub_push_claim(want);

			between_steps();

			claim_full = got >= want;
			if (got > 0)
				hub_status_claimed();
			next_claim = GetCurrentTimestamp() + (int64) hub_naptime_ms() * 1000;
			next_refresh = GetCurrentTimestamp() + USECS_PER_SEC;
		}
		else if (now >= next_refresh)
		{
			hub_push_refresh();
			next_refresh = GetCurrentTimestamp() + USECS_PER_SEC;
		}
		/* failures recorded above are due again before the next poll? */
		due = hub_push_take_due();
		if (due != 0 && due < next_claim)
			next_claim = due;

		/* pollers due: their pages go on the same queues */
		hub_poll_fetch(GetCurrentTimestamp());

		rate_next = hub_send_pump();
		if (hub_loop_deadline() != 0 && hub_loop_deadline() <= GetCurrentTimestamp())
		{
			hub_loop_run_timer();
			hub_loop_collect();
		}

		if (hub_my_slot == 0)
			hub_release_retired_leases();
		if (hub_my_slot == 0 && hub_retention_interval_s > 0 && GetCurrentTimestamp() >= next_retention)
		{
			/* a full slice: the next one after this loop's deliveries */
			bool		more = hub_maintenance_retention();

			next_retention = GetCurrentTimestamp() +
				(more ? 0 : (int64) hub_retention_interval_s * USECS_PER_SEC);
		}

		/* sleep until the latch, a socket, libcurl's timer or the next claim */
		now = GetCurrentTimestamp();
		if (hub_push_record_due(now) || (claim_full && claim_room()))
			timeout = 0;
		else
		{
			/*
			 * (a claim falls due only once fewer requests wait than may be
			 * in flight, which a transfer ending wakes this loop for; until
			 * then a due claim must not make the wait a busy loop)
			 */
			TimestampTz until = claim_room() ? next_claim : Max(next_claim, next_refresh);
			TimestampTz t;

			if ((t = hub_push_record_deadline()) != 0 && t < until)
				until = t;
			if ((t = hub_loop_deadline()) != 0 && t < until)
				until = t;
			if ((t = hub_poll_next_wakeup()) != 0 && t < until)
				until = t;
			if (rate_next != 0 && rate_next < until)
				until = rate_next;
			timeout = until <= now ? 0 : (long) ((until - now + 999) / 1000);
		}
		hub_status_in_flight(hub_loop_in_flight());
		nev = WaitEventSetWait(wes, timeout, events, lengthof(events), PG_WAIT_EXTENSION);
		for (int i = 0; i < nev; i++)
		{
			if (events[i].events & WL_LATCH_SET)
			{
				ResetLatch(MyLatch);
				next_claim = 0; /* woken: a commit published events */
				hub_poll_wake();	/* or created, resumed or woke a poller */
				hub_nats_inbound_wake();
			}
			else if (events[i].events & WL_SOCKET_READABLE)
				hub_loop_socket_ready();
		}
		hub_loop_run_timer();
		hub_loop_collect();
		if (hub_push_take_followups())
			(void) hub_send_pump();
	}
}
