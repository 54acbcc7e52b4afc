/*-------------------------------------------------------------------------
 *
 * push_record.c
 *		The record step of the push side: the outcomes of finished push
 *		requests written in one short transaction.
 *
 * Outcomes wait in memory (hub_push_finished) and are recorded every few
 * hundred, 10 ms after the first, or when nothing is in flight any more:
 * successes in bulk (hub._complete_many; a lease group, whose events are
 * sent one request each, once all of them are in, the events that did not
 * get through taken out of it first by hub._split_group), failures one by
 * one (hub.fail_delivery: backoff, Retry-After, dead letters, circuit
 * breaker), and requests given back without an attempt
 * (hub.defer_delivery: circuit opened, endpoint paused or throttled, or a
 * request that waited half its lease in a queue).  When the step fails
 * because of some outcome, each is recorded again in a transaction of its
 * own, and one that still fails pauses its endpoint with the reason.
 *
 * workers/push_record.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "hub_workers.h"
#include "push.h"

static List *results = NIL;		/* of HubResult, in hub_worker_cxt */
static int	nresults = 0;		/* list_length(results) */
static TimestampTz first_result_at = 0; /* when the oldest of them came */
static TimestampTz retry_due = 0;	/* earliest retry or deferral recorded, 0: none */

/*
 * Results are recorded in one transaction once this many are waiting, once
 * the oldest has waited RECORD_DELAY_MS, or as soon as nothing is in flight
 * any more: a busy dispatcher then pays the fixed cost of a transaction per
 * few hundred results rather than per handful, while the database never
 * lags its receivers by more than a few milliseconds.
 */
#define RECORD_BATCH Max(64, hub_max_in_flight)
#define RECORD_DELAY_MS 10
static SPIPlanPtr complete_plan,
			fail_plan,
			defer_plan,
			due_plan,
			split_plan;

/* prepare_plans --- the record step's plans, once a process */
static void
prepare_plans(void)
{
	Oid			complete_types[] = {INT8ARRAYOID, INT8ARRAYOID, INT4ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, TEXTOID,
	TEXTARRAYOID};
	Oid			split_types[] = {INT8OID, INT8OID, TEXTARRAYOID, TEXTARRAYOID};
	Oid			fail_types[] = {INT8OID, INT8OID, INT4OID, TEXTOID, INT4OID, TEXTOID, INT8OID, TEXTOID, BOOLOID};
	Oid			defer_types[] = {INT8OID, INT8OID, TIMESTAMPTZOID};

	if (complete_plan != NULL)
		return;
	complete_plan = hub_prepare_plan("SELECT hub._complete_many($1, $2, $3, $4, $5, $6, $7::pg_catalog.uuid[])", 7, complete_types);
	split_plan = hub_prepare_plan("SELECT event_id::pg_catalog.text, delivery_id "
						 "FROM hub._split_group($1, $2, $3::pg_catalog.uuid[], $4::pg_catalog.uuid[])",
						 4, split_types);
	/* a delivery deleted meanwhile (its endpoint dropped) is skipped */
	fail_plan = hub_prepare_plan("SELECT hub.fail_delivery($1, $2, $3, $4, $5, $6, "
						"CASE WHEN $7 OPERATOR(pg_catalog.>=) 0 THEN pg_catalog.make_interval(secs => $7) END, $8, $9) "
						"FROM hub.deliveries WHERE delivery_id OPERATOR(pg_catalog.=) $1", 9, fail_types);
	defer_plan = hub_prepare_plan("SELECT hub.defer_delivery($1, $2, $3) "
						 "FROM hub.deliveries WHERE delivery_id OPERATOR(pg_catalog.=) $1", 3, defer_types);
	/* when a failed delivery is due again (none when it is dead) */
	due_plan = hub_prepare_plan("SELECT next_attempt_at FROM hub.deliveries "
					   "WHERE delivery_id OPERATOR(pg_catalog.=) $1 "
					   "AND state OPERATOR(pg_catalog.=) 'retry_wait'", 1, defer_types);
}

static void
group_free(HubGroup *g)
{
	for (int k = 0; k < g->n; k++)
	{
		if (g->waiting != NULL && g->waiting[k] != NULL)
			hub_request_free(&g->waiting[k]->req);
		if (g->slots[k].event_id)
			pfree(g->slots[k].event_id);
		if (g->slots[k].error)
			pfree(g->slots[k].error);
		if (g->slots[k].excerpt)
			pfree(g->slots[k].excerpt);
	}
	pfree(g->slots);
	if (g->waiting != NULL)
		pfree(g->waiting);
	pfree(g);
}

static HubResult *
add_result(HubPushRequest *req, long status, char *error, int64 retry_after, bool deferred,
		   TimestampTz until)
{
	MemoryContext old = MemoryContextSwitchTo(hub_worker_cxt);
	HubResult  *r = palloc0(sizeof(HubResult));

	r->req = req;
	r->http_status = status;
	r->error = error ? pstrdup(error) : NULL;
	r->retry_after_s = retry_after;
	r->deferred = deferred;
	r->defer_until = until;
	if (results == NIL)
		first_result_at = GetCurrentTimestamp();
	results = lappend(results, r);
	nresults++;
	MemoryContextSwitchTo(old);
	return r;
}

/* a sequential group's next request was queued since the last look */
static bool followups = false;

/*
 * hub_push_take_followups --- was a sequential group's next request queued
 * since the last call?  (The loop then pumps at once: see dispatcher.c.)
 */
bool
hub_push_take_followups(void)
{
	bool		was = followups;

	followups = false;
	return was;
}

/*
 * sequence_next --- request k of a sequential group finished: when it got
 * through, send the next one; otherwise give back every later one unsent
 * (their outcomes in their slots at once, deferred to now: they stay
 * behind the one that did not get through, which the claim keeps ahead of
 * them as the head of their key)
 */
static void
sequence_next(HubGroup *g, int k, bool through)
{
	TimestampTz now = GetCurrentTimestamp();

	for (int j = k + 1; j < g->n; j++)
	{
		HubPushRequest *next = g->waiting[j];

		if (next == NULL)
			continue;
		g->waiting[j] = NULL;
		if (through)
		{
			hub_send_enqueue(&next->req);
			followups = true;
			return;
		}
		g->slots[j].deferred = true;
		g->slots[j].defer_until = now;
		g->left--;
		hub_request_free(&next->req);
	}
}

/*
 * hub_push_finished --- a push request's outcome (its finished operation):
 * kept for the record step; the next request of a sequential group sent
 */
void
hub_push_finished(HubRequest *req, const HubOutcome *o)
{
	HubPushRequest *preq = (HubPushRequest *) req;
	HubGroup   *g = preq->group;
	HubResult  *r = add_result(preq, o->http_status, o->error, o->retry_after_s,
							   o->given_back, o->back_at);

	r->latency_ms = o->latency_ms;
	r->counted = o->counted;
	if (g != NULL && g->sequential)
		sequence_next(g, preq->group_slot, o->error == NULL && !o->given_back);
}

/*
 * note_due --- a delivery this dispatcher failed or gave back, or the
 * per-key successor of one it delivered, is claimable at t: claim then
 * rather than at the next poll, so a retry backoff or a Retry-After shorter
 * than logistics_hub.dispatcher_naptime is kept and a key's next event follows
 * its predecessor at once.
 */
static void
note_due(TimestampTz t)
{
	if (retry_due == 0 || t < retry_due)
		retry_due = t;
}

/* ---------------------------------------------------------------- record */

/* a delivery given back without an attempt, claimable again at until */
static void
record_deferral(int64 delivery_id, int64 token, TimestampTz until)
{
	Datum		a[3] = {Int64GetDatum(delivery_id), Int64GetDatum(token), TimestampTzGetDatum(until)};

	SPI_execute_plan(defer_plan, a, NULL, false, 0);
	note_due(until);
}

/* a failed attempt (count: it counts towards the endpoint's circuit breaker) */
static void
record_failure(int64 delivery_id, int64 token, long status, const char *error, int latency_ms,
			   const char *excerpt, int64 retry_after_s, bool count)
{
	Datum		a[9];
	char		nulls[9] = "         ";

	a[0] = Int64GetDatum(delivery_id);
	a[1] = Int64GetDatum(token);
	a[2] = Int32GetDatum((int32) status);
	nulls[2] = status == 0 ? 'n' : ' ';
	a[3] = CStringGetTextDatum(error[0] ? error : (status ? psprintf("HTTP %ld", status) : "failed"));
	a[4] = Int32GetDatum(latency_ms);
	a[5] = excerpt ? CStringGetTextDatum(excerpt) : (Datum) 0;
	nulls[5] = excerpt ? ' ' : 'n';
	a[6] = Int64GetDatum(retry_after_s);
	a[7] = CStringGetTextDatum(hub_worker_name);
	a[8] = BoolGetDatum(count);
	SPI_execute_plan(fail_plan, a, nulls, false, 0);
	if (SPI_execute_plan(due_plan, a, NULL, false, 1) == SPI_OK_SELECT && SPI_processed == 1)
	{
		bool		isnull;
		Datum		due = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			note_due(DatumGetTimestampTz(due));
	}
}

/* the successes waiting for _complete_many */
typedef struct HubDone
{
	int			n;
	int64	   *ids;
	int64	   *tokens;
	int64	   *statuses;
	int64	   *latencies;
	Datum	   *excerpts;
	bool	   *excerpt_nulls;
	Datum	   *events;
	bool	   *event_nulls;
	bool		any_event;
} HubDone;

static void
done_add(HubDone *d, int64 id, int64 token, long status, int latency_ms, const char *excerpt,
		 const char *event_id)
{
	d->ids[d->n] = id;
	d->tokens[d->n] = token;
	d->statuses[d->n] = status;
	d->latencies[d->n] = latency_ms;
	d->excerpts[d->n] = excerpt ? CStringGetTextDatum(excerpt) : (Datum) 0;
	d->excerpt_nulls[d->n] = excerpt == NULL;
	d->events[d->n] = event_id ? CStringGetTextDatum(event_id) : (Datum) 0;
	d->event_nulls[d->n] = event_id == NULL;
	d->any_event |= event_id != NULL;
	d->n++;
}

/*
 * record_group --- a lease group whose every request has its outcome: all
 * delivered, it is completed at once (an attempt row per event); all given
 * back, it is deferred whole; otherwise the events that did not get
 * through leave it (hub._split_group), the failed ones each a delivery of
 * its own, failed as such, the ones given back one group, deferred as
 * such, and the rest of it is completed.
 */
static void
record_group(HubGroup *g, HubDone *done, Datum *failed_eps, int *nfailed)
{
	int			nfail = 0;
	int			nback = 0;
	TimestampTz until = 0;
	Datum	   *fail_ids;
	Datum	   *back_ids;
	int64	   *out_ids;
	int64		deferred_id = -1;
	bool		counted_ep = false;

	for (int k = 0; k < g->n; k++)
	{
		HubGroupSlot *sl = &g->slots[k];

		if (sl->deferred)
		{
			nback++;
			until = Max(until, sl->defer_until);
		}
		else if (sl->error != NULL)
			nfail++;
	}
	if (nfail == 0 && nback == 0)
	{
		for (int k = 0; k < g->n; k++)
			done_add(done, g->delivery_id, g->lease_token, g->slots[k].http_status,
					 g->slots[k].latency_ms, g->slots[k].excerpt, g->slots[k].event_id);
		return;
	}
	if (nback == g->n)
	{
		record_deferral(g->delivery_id, g->lease_token, until);
		return;
	}

	fail_ids = palloc(sizeof(Datum) * (nfail + 1));
	back_ids = palloc(sizeof(Datum) * (nback + 1));
	out_ids = palloc(sizeof(int64) * g->n);
	nfail = nback = 0;
	for (int k = 0; k < g->n; k++)
	{
		if (g->slots[k].deferred)
			back_ids[nback++] = CStringGetTextDatum(g->slots[k].event_id);
		else if (g->slots[k].error != NULL)
			fail_ids[nfail++] = CStringGetTextDatum(g->slots[k].event_id);
	}
	{
		Datum		a[4];

		a[0] = Int64GetDatum(g->delivery_id);
		a[1] = Int64GetDatum(g->lease_token);
		a[2] = PointerGetDatum(construct_array(fail_ids, nfail, TEXTOID, -1, false, TYPALIGN_INT));
		a[3] = PointerGetDatum(construct_array(back_ids, nback, TEXTOID, -1, false, TYPALIGN_INT));
		if (SPI_execute_plan(split_plan, a, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "splitting a lease group failed");
	}
	/* each event's delivery now (the rows go with the next statement) */
	for (int k = 0; k < g->n; k++)
		out_ids[k] = g->delivery_id;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		char	   *e = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));

		for (int k = 0; e != NULL && k < g->n; k++)
			if (strcmp(e, g->slots[k].event_id) == 0)
			{
				out_ids[k] = id;
				break;
			}
	}
	for (int k = 0; k < g->n; k++)
	{
		HubGroupSlot *sl = &g->slots[k];

		if (sl->deferred)
		{
			/* (all of them one delivery: given back once) */
			if (out_ids[k] != deferred_id)
				record_deferral(out_ids[k], g->lease_token, until);
			deferred_id = out_ids[k];
		}
		else if (sl->error != NULL)
		{
			record_failure(out_ids[k], g->lease_token, sl->http_status, sl->error, sl->latency_ms,
						   sl->excerpt, sl->retry_after_s, !sl->counted);
			if (!counted_ep)
				failed_eps[(*nfailed)++] = Int32GetDatum(g->ep->endpoint_id);
			counted_ep = true;
		}
		else
			done_add(done, g->delivery_id, g->lease_token, sl->http_status, sl->latency_ms, sl->excerpt,
					 sl->event_id);
	}
}

/*
 * record_write --- one transaction for the outcomes of these requests
 * (singles: HubResults of requests not in a lease group) and lease groups
 * (all their outcomes in): successes in bulk, failures and deferrals one by
 * one.  Then the endpoints that failed are re-read: an opened circuit gives
 * their queues back.
 */
static void
record_write(List *singles, List *groups)
{
	int			cap = 0;
	HubDone		done = {0};
	ListCell   *lc;
	Datum	   *failed_eps;
	int			nfailed = 0;

	foreach(lc, singles)
		cap += ((HubResult *) lfirst(lc))->req->n;
	foreach(lc, groups)
		cap += ((HubGroup *) lfirst(lc))->n;
	if (cap == 0)
		return;

	hub_begin_step("logistics_hub: record results");
	prepare_plans();
	done.ids = palloc(sizeof(int64) * cap);
	done.tokens = palloc(sizeof(int64) * cap);
	done.statuses = palloc(sizeof(int64) * cap);
	done.latencies = palloc(sizeof(int64) * cap);
	done.excerpts = palloc(sizeof(Datum) * cap);
	done.excerpt_nulls = palloc(sizeof(bool) * cap);
	done.events = palloc(sizeof(Datum) * cap);
	done.event_nulls = palloc(sizeof(bool) * cap);
	failed_eps = palloc(sizeof(Datum) * (list_length(singles) + list_length(groups) + 1));

	foreach(lc, singles)
	{
		HubResult  *r = lfirst(lc);
		HubPushRequest *req = r->req;
		char	   *excerpt = req->req.excerpt.len > 0 ? hub_http_excerpt(&req->req) : NULL;

		for (int i = 0; i < req->n; i++)
		{
			if (r->deferred)
				record_deferral(req->delivery_ids[i], req->lease_tokens[i], r->defer_until);
			else if (r->error == NULL)
				done_add(&done, req->delivery_ids[i], req->lease_tokens[i], r->http_status,
						 r->latency_ms, excerpt, NULL);
			else
			{
				/* a failed request counts once towards the circuit breaker */
				record_failure(req->delivery_ids[i], req->lease_tokens[i], r->http_status, r->error,
							   r->latency_ms, excerpt, r->retry_after_s, i == 0 && !r->counted);
				if (i == 0)
					failed_eps[nfailed++] = Int32GetDatum(req->req.ep->endpoint_id);
			}
		}
	}
	foreach(lc, groups)
		record_group(lfirst(lc), &done, failed_eps, &nfailed);

	if (done.n > 0)
	{
		Datum		a[7];
		char		nulls[7] = "       ";
		int			dims[1] = {done.n};
		int			lbs[1] = {1};

		a[0] = hub_int_array(done.ids, done.n, true);
		a[1] = hub_int_array(done.tokens, done.n, true);
		a[2] = hub_int_array(done.statuses, done.n, false);
		a[3] = hub_int_array(done.latencies, done.n, false);
		a[4] = PointerGetDatum(construct_md_array(done.excerpts, done.excerpt_nulls, 1, dims, lbs,
												  TEXTOID, -1, false, TYPALIGN_INT));
		a[5] = CStringGetTextDatum(hub_worker_name);
		if (done.any_event)
			a[6] = PointerGetDatum(construct_md_array(done.events, done.event_nulls, 1, dims, lbs,
													  TEXTOID, -1, false, TYPALIGN_INT));
		else
		{
			a[6] = (Datum) 0;
			nulls[6] = 'n';
		}
		if (SPI_execute_plan(complete_plan, a, nulls, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "recording deliveries failed");
		/* a per-key successor of what was delivered is claimable now */
		note_due(GetCurrentTimestamp());
	}
	if (nfailed > 0)
	{
		/* an opened circuit gives their queues back */
		hub_endpoints_load(failed_eps, nfailed);
	}
	hub_endpoints_record_throttles();
	hub_end_step();
}

/*
 * record_guarded --- record_write, its transaction aborted when it fails;
 * false then, with the error in *err.  An error of the server's (not of
 * these outcomes) ends the worker, as before.
 */
static bool
record_guarded(List *singles, List *groups, HubStepError *err)
{
	volatile bool ok = true;

	PG_TRY();
	{
		record_write(singles, groups);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(hub_loop_cxt);
		hub_step_error_take(err);
		AbortCurrentTransaction();
		MemoryContextSwitchTo(hub_loop_cxt);
		ok = false;
	}
	PG_END_TRY();
	if (!ok && hub_error_is_general(err->sqlerrcode))
		ereport(ERROR,
				(errcode(err->sqlerrcode),
				 errmsg("logistics_hub %s: recording outcomes failed: %s", hub_worker_name, err->message)));
	return ok;
}

/* record_pause --- in a transaction of its own, pause an endpoint whose outcomes cannot be recorded */
static void
record_pause(HubEndpoint *ep, HubStepError *err)
{
	ereport(WARNING,
			(errcode(err->sqlerrcode),
			 errmsg("logistics_hub %s: recording an outcome of endpoint %d failed: %s",
					hub_worker_name, ep->endpoint_id, err->message)));
	hub_begin_step("logistics_hub: pause an endpoint");
	hub_guard_pause(ep->endpoint_id, "pause_failing",
					psprintf("a dispatcher could not record an outcome: %s", err->message));
	hub_end_step();
}

/*
 * hub_push_record --- the outcomes of every finished request, lease groups once all
 * their requests are in, in one transaction (record_write).  When that
 * fails because of some outcome, each request's or group's outcome is
 * recorded again in a transaction of its own: one that still fails is
 * dropped (its lease runs out, and it is sent again) and its endpoint
 * paused with the reason, so that it cannot fail every record step.
 */
void
hub_push_record(void)
{
	ListCell   *lc;
	List	   *singles = NIL;
	List	   *groups = NIL;
	HubStepError err;

	if (results == NIL)
		return;

	/*
	 * The outcome of a lease group's request goes to its slot; a group
	 * whose last outcome is in is recorded now, one still waiting for some
	 * keeps the others (in hub_worker_cxt) until then.
	 */
	foreach(lc, results)
	{
		HubResult  *r = lfirst(lc);
		HubPushRequest *req = r->req;
		HubGroup   *g = req->group;
		HubGroupSlot *sl;

		if (g == NULL)
		{
			singles = lappend(singles, r);
			continue;
		}
		sl = &g->slots[req->group_slot];
		sl->http_status = r->http_status;
		sl->error = r->error ? MemoryContextStrdup(hub_worker_cxt, r->error) : NULL;
		sl->excerpt = req->req.excerpt.len > 0 ? MemoryContextStrdup(hub_worker_cxt, hub_http_excerpt(&req->req)) : NULL;
		sl->latency_ms = r->latency_ms;
		sl->retry_after_s = r->retry_after_s;
		sl->deferred = r->deferred;
		sl->defer_until = r->defer_until;
		sl->counted = r->counted;
		if (--g->left == 0)
			groups = lappend(groups, g);
	}

	if (!record_guarded(singles, groups, &err))
	{
		ereport(WARNING,
				(errcode(err.sqlerrcode),
				 errmsg("logistics_hub %s: recording outcomes failed: %s", hub_worker_name, err.message),
				 errdetail("Recording them again one request at a time, so that only what fails stops.")));
		foreach(lc, singles)
		{
			HubResult  *r = lfirst(lc);

			if (!record_guarded(list_make1(r), NIL, &err))
				record_pause(r->req->req.ep, &err);
		}
		foreach(lc, groups)
		{
			HubGroup   *g = lfirst(lc);

			if (!record_guarded(NIL, list_make1(g), &err))
				record_pause(g->ep, &err);
		}
	}

	foreach(lc, groups)
		group_free(lfirst(lc));
	foreach(lc, results)
		hub_request_free(&((HubResult *) lfirst(lc))->req->req);
	MemoryContextSwitchTo(hub_worker_cxt);
	list_free_deep(results);
	results = NIL;
	nresults = 0;
	MemoryContextSwitchTo(hub_loop_cxt);
}

/* is it time to record the results waiting?  (see RECORD_BATCH) */
bool
hub_push_record_due(TimestampTz now)
{
	return results != NIL &&
		(nresults >= RECORD_BATCH || hub_loop_in_flight() == 0 ||
		 now - first_result_at >= RECORD_DELAY_MS * 1000L);
}

/* are results waiting to be recorded? */
bool
hub_push_results_pending(void)
{
	return results != NIL;
}

/* when the results waiting must be recorded at the latest, 0: none wait */
TimestampTz
hub_push_record_deadline(void)
{
	return results != NIL ? first_result_at + RECORD_DELAY_MS * 1000L : 0;
}

/*
 * hub_push_take_due --- the earliest time a delivery recorded since the
 * last call is claimable again (a retry, a deferral, a key's successor),
 * 0: none; forgotten once taken
 */
TimestampTz
hub_push_take_due(void)
{
	TimestampTz t = retry_due;

	retry_due = 0;
	return t;
}
