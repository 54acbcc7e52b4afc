/*-------------------------------------------------------------------------
 *
 * push_claim.c
 *		The claim step of the push side: one short transaction that routes
 *		what is not routed yet, leases ready deliveries of the endpoints
 *		this dispatcher serves with their bodies already rendered, and turns
 *		them into requests on their endpoints' queues.
 *
 * Routing (hub._route_events), the lease (hub._claim, or
 * hub._claim_transformed when a subscription has a transform; hub._serves:
 * an endpoint is shared by min(logistics_hub.dispatchers, max_concurrency)
 * dispatchers) and the probes of half-open circuits (hub._claim_probes) are
 * statements of their own, as hub.claim_deliveries does in one call;
 * endpoint settings are (re)read in the same transaction when older than a
 * second (endpoints.c).  A claim that fails because of one event or
 * endpoint is done again piece by piece (claim_isolated), so that only that
 * one stops.  A push request's own headers (content type, webhook-id and
 * timestamp, Idempotency-Key, W3C traceparent, Standard Webhooks
 * signatures) are added by its prepare operation, just before it is sent.
 *
 * workers/push_claim.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "hub_workers.h"
#include "push.h"
#include "traceparent.h"

/*
 * A claim takes from each endpoint no more than makes this dispatcher hold
 * (queued and in flight) this many times its share of the endpoint's
 * connections: what it can start in as many rounds.  Without the cap the
 * first dispatcher to claim would take a spread endpoint's whole backlog
 * (claim after claim, right after its own completions) and send it over
 * its share alone while the others sharing the endpoint found nothing.
 */
#define CLAIM_ROUNDS 8

static SPIPlanPtr route_plan,
			claim_plan,
			claim_transformed_plan,
			claim_one_plan,
			probes_plan;

static bool push_prepare(HubRequest *req, char **error);

static const HubRequestOps push_ops = {push_prepare, hub_push_finished};

/* prepare_plans --- the claim's plans, once a process */
static void
prepare_plans(void)
{
	Oid			claim_types[] = {INT4OID, TEXTOID, INT4OID, INT4OID, INT4OID, TEXTOID, INT4OID, INT4OID,
	INT4ARRAYOID, INT4ARRAYOID, INT8OID, INT4OID};
	Oid			probe_types[] = {INT4OID, INT4OID, TEXTOID, INT4OID, INT4OID, INT4OID, TEXTOID};

	if (claim_plan != NULL)
		return;

	/*
	 * The claim's three steps, each a statement of its own: from plpgsql
	 * (hub.claim_deliveries) every level of RETURN QUERY that the rows
	 * pass through copies each event's row, body and all, once more.
	 */
	route_plan = hub_prepare_plan("SELECT EXISTS (SELECT FROM hub.subscriptions WHERE transform IS NOT NULL), r "
						 "FROM hub._route_events() r", 0, NULL);
	/*
	 * (the event's traceparent, for the request's header; then its type,
	 * aggregate and correlation ids, for other transports; sequential: a
	 * per_key lease group, its events sent one after another)
	 */
#define CLAIMED_COLUMNS "c.delivery_id, c.lease_token, c.endpoint_id, c.subscription_id, c.body_format, " \
		"c.batch_max, c.event_id::pg_catalog.text, c.body, c.batch_size, c.traceparent, " \
		"c.event_type, c.aggregate_id, c.correlation_id, c.sequential"
	claim_plan = hub_prepare_plan("SELECT " CLAIMED_COLUMNS " FROM hub._claim($1, $2, pg_catalog.make_interval(secs => $3), "
						 "$4, $5, NULL, $7, $8, $9, $10, $6, $11) c", 11, claim_types);
	claim_transformed_plan = hub_prepare_plan("SELECT " CLAIMED_COLUMNS " FROM hub._claim_transformed($1, $2, "
									 "pg_catalog.make_interval(secs => $3), $4, $5, NULL, $7, $8, $9, $10, $6, $11) c",
									 11, claim_types);
	/* (claim_types has room for $12, the endpoint) */
	claim_one_plan = hub_prepare_plan("SELECT " CLAIMED_COLUMNS " FROM hub._claim_transformed($1, $2, "
							 "pg_catalog.make_interval(secs => $3), $4, $5, $12, $7, $8, $9, $10, $6, $11) c",
							 12, claim_types);
	probes_plan = hub_prepare_plan("SELECT " CLAIMED_COLUMNS " FROM hub._claim_probes($1, $2, $3, "
						  "pg_catalog.make_interval(secs => $4), $5, $6, $7) c", 7, probe_types);
}

/*
 * body_content_type --- the Content-Type of a request of this body_format:
 * CloudEvents' own media types for its structured and batched modes.
 */
static const char *
body_content_type(text *format)
{
	if (hub_text_is(format, "cloudevents"))
		return "application/cloudevents+json";
	if (hub_text_is(format, "cloudevents_batch"))
		return "application/cloudevents-batch+json";
	return "application/json";
}

/*
 * push_request_new --- a push request of a subscription, on its way to ep
 * (queued by the caller)
 */
static HubPushRequest *
push_request_new(HubEndpoint *ep, int subscription_id, int batch_max, bool batch)
{
	HubPushRequest *req = (HubPushRequest *) hub_request_new(ep, &push_ops, sizeof(HubPushRequest));
	MemoryContext cxt = req->req.cxt;

	req->subscription_id = subscription_id;
	req->batch_max = batch_max;
	req->batch = batch;
	req->cap = batch ? Max(1, batch_max) : 1;
	req->delivery_ids = MemoryContextAlloc(cxt, sizeof(int64) * req->cap);
	req->lease_tokens = MemoryContextAlloc(cxt, sizeof(int64) * req->cap);
	return req;
}

/*
 * request_event --- keep the claim row's event (v: its columns) on the
 * request, for transports that need more than the body
 */
static void
request_event(HubPushRequest *req, Datum *v, bool *isnull)
{
	MemoryContext cxt = req->req.cxt;

	req->event_id = MemoryContextStrdup(cxt, TextDatumGetCString(v[6]));
	req->event_type = MemoryContextStrdup(cxt, TextDatumGetCString(v[10]));
	req->aggregate_id = isnull[11] ? NULL : MemoryContextStrdup(cxt, TextDatumGetCString(v[11]));
	req->correlation_id = isnull[12] ? NULL : MemoryContextStrdup(cxt, TextDatumGetCString(v[12]));
}

/*
 * hub_push_request_event --- the event of a push request (the first one of
 * a batch), for a transport other than HTTP; false when req is not a push
 * request
 */
bool
hub_push_request_event(HubRequest *base, HubPushEvent *ev)
{
	HubPushRequest *req = (HubPushRequest *) base;

	if (base->ops != &push_ops)
		return false;
	ev->event_id = req->event_id;
	ev->event_type = req->event_type;
	ev->aggregate_id = req->aggregate_id;
	ev->correlation_id = req->correlation_id;
	ev->traceparent = req->traceparent;
	ev->batch = req->batch;
	ev->events = req->events;
	return true;
}

/*
 * push_request_trace --- the traceparent header value of a request: its
 * (first) event's traceparent, when it is a valid one (the contract
 * trigger stamps every event since 0.3.0; older events have none, and a
 * request without one carries no header)
 */
static void
push_request_trace(HubPushRequest *req, Datum traceparent, bool isnull)
{
	char		tp[HUB_TRACEPARENT_LEN + 1];
	text	   *t;

	if (isnull)
		return;
	t = DatumGetTextPP(traceparent);
	if (hub_traceparent_parse(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), tp, NULL))
		req->traceparent = MemoryContextStrdup(req->req.cxt, tp);
}

/*
 * group_request --- the request of a lease group's event k: a delivery of
 * one event as far as sending goes (its own webhook-id, body and
 * signature), recorded through its group.
 */
static void
group_request(HubGroup *g, int k, int subscription_id, text *format, Datum *v, bool *isnull, text *body)
{
	HubPushRequest *req = push_request_new(g->ep, subscription_id, 1, false);

	req->content_type = body_content_type(format);
	request_event(req, v, isnull);
	push_request_trace(req, v[9], isnull[9]);
	req->webhook_id = req->event_id;
	appendBinaryStringInfo(&req->req.body, VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body));
	req->delivery_ids[0] = g->delivery_id;
	req->lease_tokens[0] = g->lease_token;
	req->n = 1;
	req->events = 1;
	req->group = g;
	req->group_slot = k;
	g->slots[k].event_id = MemoryContextStrdup(hub_worker_cxt, req->webhook_id);
	if (g->sequential && k > 0)
		g->waiting[k] = req;	/* sent once the one before got through */
	else
		hub_send_enqueue(&req->req);
}

/*
 * group_finish --- a group's claim rows are all read: it has as many
 * requests as rows (an event missing from the outbox, which retention
 * never allows, would otherwise keep the group waiting for ever)
 */
static void
group_finish(HubGroup *g, int filled)
{
	if (g != NULL && filled < g->n)
		g->n = g->left = filled;
}

/*
 * batch_close --- end a batch's JSON array and name the batch by its content:
 * the first event's id and a hash of the body.  Each delivery of a failed
 * batch has its own backoff, so a retry may group other events behind the
 * same first one; an id naming only that event would then be reused for
 * another body, and a receiver deduplicating on it would drop events.
 */
static void
batch_close(HubPushRequest *req)
{
	uint64		h;

	appendStringInfoChar(&req->req.body, ']');
	h = hash_bytes_extended((const unsigned char *) req->req.body.data, req->req.body.len, 0);
	req->webhook_id = MemoryContextStrdup(req->req.cxt,
										  psprintf("%s_%016llx", req->webhook_id, (unsigned long long) h));
}

/*
 * push_prepare --- a push request's own headers, once its handle is set
 * up: Content-Type, "Expect:" for a large body, webhook-id and
 * webhook-timestamp, Idempotency-Key, the traceparent of its (first)
 * event when it has one and, with signing secrets, one
 * Standard Webhooks signature per secret; a batch's JSON array is closed
 * and named first.  False with *error when a signing secret is not valid.
 */
static bool
push_prepare(HubRequest *base, char **error)
{
	HubPushRequest *req = (HubPushRequest *) base;
	HubEndpoint *ep = base->ep;
	int64		now_s = (int64) time(NULL);
	StringInfoData sig;
	bool		ok = true;

	if (req->batch)
		batch_close(req);
	ok &= hub_http_append_header(base, psprintf("Content-Type: %s", req->content_type));

	/*
	 * No "Expect: 100-continue" (and its wait for the receiver's go-ahead):
	 * libcurl adds it, if at all, only to bodies over a threshold (1 KiB in
	 * the oldest versions), so the empty header that suppresses it goes
	 * only with bodies over 1 KiB; every header costs a request its share
	 * of libcurl's header handling
	 */
	if (base->body.len > 1024)
		ok &= hub_http_append_header(base, "Expect:");
	ok &= hub_http_append_header(base, psprintf("webhook-id: %s", req->webhook_id));
	ok &= hub_http_append_header(base, psprintf("webhook-timestamp: " INT64_FORMAT, now_s));
	/* a structured-field string, as draft-ietf-httpapi-idempotency-key-header has it */
	ok &= hub_http_append_header(base, psprintf("Idempotency-Key: \"%s\"", req->webhook_id));
	if (req->traceparent != NULL)
		ok &= hub_http_append_header(base, psprintf("traceparent: %s", req->traceparent));
	if (ep->nsecrets > 0)
	{
		initStringInfo(&sig);
		appendStringInfoString(&sig, "webhook-signature: ");
		for (int i = 0; i < ep->nsecrets; i++)
		{
			if (i > 0)
				appendStringInfoChar(&sig, ' ');
			if (!hub_webhook_sign(ep->signing_secrets[i], req->webhook_id, now_s,
								  base->body.data, base->body.len, &sig))
			{
				*error = pstrdup("a signing secret of the endpoint is not valid whsec_ base64");
				ok = false;
			}
		}
		ok &= hub_http_append_header(base, sig.data);
	}
	return ok;
}

/*
 * The claim's statements and what they return: the arguments of the claim
 * plans (args[11]: one endpoint, for claim_one_plan), the tuple tables of
 * the rows claimed, in order, and how many of them the claim proper gave
 * (the probes come after).
 */
typedef struct HubClaim
{
	Datum		args[12];
	bool		transforms;
	List	   *tables;			/* of SPITupleTable * */
	int			nclaimed;
} HubClaim;

static double claim_events_per_delivery = 1.0;

/* claim_args --- the claim plans' arguments for a claim of max events */
static void
claim_args(HubClaim *c, int max)
{
	int64	   *held_ids;
	int64	   *held;
	int			nheld = 0;
	c->args[0] = Int32GetDatum(Max(1, Min(max, (int) ceil(max / claim_events_per_delivery))));
	c->args[1] = CStringGetTextDatum(hub_worker_name);
	c->args[2] = Int32GetDatum(hub_lease_seconds);
	c->args[3] = Int32GetDatum(hub_my_slot);
	c->args[4] = Int32GetDatum(hub_nshards());
	c->args[5] = CStringGetTextDatum(hub_event_source);
	c->args[6] = Int32GetDatum(max);
	c->args[7] = Int32GetDatum(CLAIM_ROUNDS);
	/* what this dispatcher holds of each endpoint: queued and in flight */
	held_ids = palloc(sizeof(int64) * (hub_endpoints_count() + 1));
	held = palloc(sizeof(int64) * (hub_endpoints_count() + 1));
	nheld = hub_endpoints_held(held_ids, held);
	c->args[8] = hub_int_array(held_ids, nheld, false);
	c->args[9] = hub_int_array(held, nheld, false);
	c->args[10] = Int64GetDatum(hub_claim_max_bytes);
	c->args[11] = Int32GetDatum(0);
	c->transforms = false;
	c->tables = NIL;
	c->nclaimed = 0;
}

/* claim_route --- route what is not routed yet; is a transform configured? */
static void
claim_route(void *arg)
{
	HubClaim   *c = arg;
	bool		isnull;

	if (SPI_execute_plan(route_plan, NULL, NULL, false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "routing events failed");
	c->transforms = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

	/*
	 * Deliveries routed here may be another dispatcher's to lease, and it
	 * may have claimed already: wake the database's dispatchers when this
	 * step commits, as a publish does, rather than leave them to their
	 * naptime.
	 */
	if (hub_dispatchers > 1 &&
		DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)) > 0)
		hub_note_outbox_insert();
}

/* claim_route_each --- routing's slow path, event by event */
static void
claim_route_each(void *arg)
{
	HubClaim   *c = arg;

	if (SPI_execute("SELECT hub._route_events_each()", false, 0) != SPI_OK_SELECT)
		elog(ERROR, "routing events one by one failed");
	c->transforms = true;		/* (the transformed claim checks for itself) */
}

/* claim_keep --- keep the rows of the statement just run */
static void
claim_keep(HubClaim *c, int ret, const char *what)
{
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "%s failed", what);
	c->tables = lappend(c->tables, SPI_tuptable);
}

/* claim_lease --- lease ready deliveries of the endpoints this dispatcher serves */
static void
claim_lease(void *arg)
{
	HubClaim   *c = arg;

	claim_keep(c, SPI_execute_plan(c->transforms ? claim_transformed_plan : claim_plan, c->args, NULL, false, 0),
			   "claiming deliveries");
	c->nclaimed += (int) SPI_processed;
}

/* claim_lease_one --- claim_lease for one endpoint, args[11] */
static void
claim_lease_one(void *arg)
{
	HubClaim   *c = arg;

	claim_keep(c, SPI_execute_plan(claim_one_plan, c->args, NULL, false, 0), "claiming deliveries of an endpoint");
	c->nclaimed += (int) SPI_processed;
}

/* claim_probes --- one probe for each half-open circuit */
static void
claim_probes(void *arg)
{
	HubClaim   *c = arg;
	Datum		pargs[7] = {c->args[0], Int32GetDatum(c->nclaimed), c->args[1], c->args[2], c->args[3],
	c->args[4], c->args[5]};

	claim_keep(c, SPI_execute_plan(probes_plan, pargs, NULL, false, 0), "probing endpoints");
}

/* a piece of an isolated claim failed: fatal when the server is at fault */
static void
claim_piece_failed(const char *what, HubStepError *err)
{
	ereport(hub_error_is_general(err->sqlerrcode) ? ERROR : WARNING,
			(errcode(err->sqlerrcode),
			 errmsg("logistics_hub %s: %s failed: %s", hub_worker_name, what, err->message)));
}

/*
 * claim_isolated --- the claim's statements again, after they failed
 * together, each piece in a subtransaction of its own so that what fails
 * because of one event or endpoint stops only that one: routing event by
 * event if it fails as a whole (an event that cannot be routed is kept in
 * hub.unroutable_events), then a claim for each endpoint with work for
 * this dispatcher, sharing the claim's budget (an endpoint whose claim
 * fails is paused with the reason), then the probes.  Slower, and only
 * for the claim after a failure.
 */
static void
claim_isolated(HubClaim *c)
{
	HubStepError err;
	Datum		sargs[2] = {c->args[3], c->args[4]};
	Oid			stypes[2] = {INT4OID, INT4OID};
	Datum	   *eps;
	int			neps;
	bool		isnull;

	if (!hub_guard_run(claim_route, c, &err))
	{
		claim_piece_failed("routing (now event by event)", &err);
		if (!hub_guard_run(claim_route_each, c, &err))
			claim_piece_failed("routing event by event", &err);
		c->transforms = true;
	}

	if (SPI_execute_with_args("SELECT hub._ready_endpoints($1, $2)", 2, stypes, sargs, NULL, false, 0)
		!= SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "reading the endpoints with work failed");
	deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)),
					  INT4OID, 4, true, TYPALIGN_INT, &eps, NULL, &neps);
	if (neps > 1)
	{
		/* the claim's budget, shared */
		c->args[0] = Int32GetDatum(Max(1, DatumGetInt32(c->args[0]) / neps));
		c->args[6] = Int32GetDatum(Max(1, DatumGetInt32(c->args[6]) / neps));
		c->args[10] = Int64GetDatum(Max(1, hub_claim_max_bytes / neps));
	}
	for (int i = 0; i < neps; i++)
	{
		c->args[11] = eps[i];
		if (!hub_guard_run(claim_lease_one, c, &err))
		{
			claim_piece_failed(psprintf("the claim of endpoint %d", DatumGetInt32(eps[i])), &err);
			hub_guard_pause(DatumGetInt32(eps[i]), "pause_failing",
							psprintf("a dispatcher could not claim its deliveries: %s", err.message));
		}
	}
	if (!hub_guard_run(claim_probes, c, &err))
		claim_piece_failed("probing half-open circuits", &err);
}

/*
 * claim_statements --- begin the claim's transaction and run its
 * statements, all at once; when they fail for a reason of the data (not
 * the server's: then the worker exits and starts again), abort, say so,
 * and do them again piece by piece in a new transaction (claim_isolated).
 */
static void
claim_statements(HubClaim *c, int max)
{
	volatile bool failed = false;
	HubStepError err;

	hub_begin_work_step("logistics_hub: claim");
	prepare_plans();
	claim_args(c, max);
	PG_TRY();
	{
		claim_route(c);
		claim_lease(c);
		claim_probes(c);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(hub_loop_cxt);
		hub_step_error_take(&err);
		AbortCurrentTransaction();
		MemoryContextSwitchTo(hub_loop_cxt);
		failed = true;
	}
	PG_END_TRY();
	if (!failed)
		return;
	if (hub_error_is_general(err.sqlerrcode))
		ereport(ERROR,
				(errcode(err.sqlerrcode),
				 errmsg("logistics_hub %s: claim failed: %s", hub_worker_name, err.message)));
	ereport(WARNING,
			(errcode(err.sqlerrcode),
			 errmsg("logistics_hub %s: claim failed: %s", hub_worker_name, err.message),
			 errdetail("Claiming again piece by piece, so that only what fails stops.")));
	hub_begin_work_step("logistics_hub: claim, piece by piece");
	prepare_plans();
	claim_args(c, max);
	claim_isolated(c);
}

/*
 * hub_push_claim --- one transaction: lease up to max events and, beyond the first
 * delivery, logistics_hub.claim_max_bytes payload bytes, render them into
 * requests, refresh stale endpoint settings.  A batch delivery (formed by
 * routing) comes as one row per event and becomes one request; deliveries
 * of single events of a batch subscription (a replay) are grouped per
 * subscription up to batch_max events.  The claim asks for as many
 * deliveries as the last claims' events per delivery suggest, so that
 * batches of a hundred do not have a thousand deliveries locked to take
 * ten.  When the claim's statements fail together for a reason of the data
 * (not the server's: then the worker exits and starts again), the claim is
 * done again piece by piece (claim_isolated).  Returns the number of
 * events claimed.
 */
int
hub_push_claim(int max)
{
	HubClaim	c;
	int			n;
	int			ndeliveries = 0;
	int64		last_delivery = -1;
	Datum	   *ids;
	int			nids = 0;
	HubPushRequest *open_batch = NULL;
	HubGroup   *group = NULL;
	int			group_filled = 0;
	TimestampTz now = GetCurrentTimestamp();
	ListCell   *tc;
	SPITupleTable *table;
	uint64		row;

	claim_statements(&c, max);

	n = 0;
	foreach(tc, c.tables)
		n += (int) ((SPITupleTable *) lfirst(tc))->numvals;
	ids = palloc(sizeof(Datum) * (n + 1 + hub_endpoints_count()));

	tc = list_head(c.tables);
	table = tc ? lfirst(tc) : NULL;
	row = 0;
	for (int i = 0; i < n; i++)
	{
		Datum		v[14];
		bool		isnull[14];
		int64		delivery_id;
		int64		token;
		int			subscription_id;
		text	   *format;
		int			batch_max;
		text	   *body;
		int			batch_size;
		HubEndpoint *ep;
		bool		batch;
		HubPushRequest *req;

		/* one pass over the row (a batch claim has one per event) */
		while (row >= table->numvals)
		{
			tc = lnext(c.tables, tc);
			table = lfirst(tc);
			row = 0;
		}
		heap_deform_tuple(table->vals[row++], table->tupdesc, v, isnull);
		delivery_id = DatumGetInt64(v[0]);
		token = DatumGetInt64(v[1]);
		ep = hub_endpoint_get(DatumGetInt32(v[2]));
		subscription_id = DatumGetInt32(v[3]);
		format = DatumGetTextPP(v[4]);
		batch_max = DatumGetInt32(v[5]);
		body = DatumGetTextPP(v[7]);
		batch_size = DatumGetInt32(v[8]);
		/*
		 * A delivery of several events is one request for a batch
		 * subscription, and one request per event otherwise (a lease
		 * group); the format read now decides.
		 */
		batch = hub_text_is(format, "batch") || hub_text_is(format, "cloudevents_batch");

		if (delivery_id == last_delivery && open_batch != NULL)
		{
			/* the next event of a batch delivery */
			appendStringInfoChar(&open_batch->req.body, ',');
			appendBinaryStringInfo(&open_batch->req.body, VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body));
			open_batch->events++;
			continue;
		}
		if (delivery_id == last_delivery && group != NULL)
		{
			/* the next event of a lease group */
			group_request(group, group_filled++, subscription_id, format, v, isnull, body);
			continue;
		}
		group_finish(group, group_filled);
		group = NULL;
		last_delivery = delivery_id;
		ndeliveries++;

		if (hub_endpoint_stale(ep, now))
			ids[nids++] = Int32GetDatum(ep->endpoint_id);	/* (once per claim) */
		if (batch_size > 1 && !batch)
		{
			group = MemoryContextAllocZero(hub_worker_cxt, sizeof(HubGroup));
			group->delivery_id = delivery_id;
			group->lease_token = token;
			group->ep = ep;
			group->n = group->left = batch_size;
			group->slots = MemoryContextAllocZero(hub_worker_cxt, sizeof(HubGroupSlot) * batch_size);
			group->sequential = !isnull[13] && DatumGetBool(v[13]);
			if (group->sequential)
				group->waiting = MemoryContextAllocZero(hub_worker_cxt, sizeof(HubPushRequest *) * batch_size);
			group_filled = 0;
			open_batch = NULL;
			group_request(group, group_filled++, subscription_id, format, v, isnull, body);
			continue;
		}
		if (batch && open_batch != NULL && open_batch->subscription_id == subscription_id &&
			open_batch->n < open_batch->cap && open_batch->events + batch_size <= open_batch->batch_max)
			req = open_batch;
		else
		{
			char	   *event_id = TextDatumGetCString(v[6]);

			req = push_request_new(ep, subscription_id, batch_max, batch);
			req->content_type = body_content_type(format);
			request_event(req, v, isnull);
			req->webhook_id = MemoryContextStrdup(req->req.cxt, batch ? psprintf("batch_%s", event_id) : event_id);
			/* (a batch: its first event's, README "Trace context") */
			push_request_trace(req, v[9], isnull[9]);
			if (batch)
				appendStringInfoChar(&req->req.body, '[');
			hub_send_enqueue(&req->req);
			open_batch = batch ? req : NULL;
		}
		if (req->batch && req->n > 0)
			appendStringInfoChar(&req->req.body, ',');
		appendBinaryStringInfo(&req->req.body, VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body));
		req->delivery_ids[req->n] = delivery_id;
		req->lease_tokens[req->n] = token;
		req->n++;
		req->events++;
	}
	group_finish(group, group_filled);
	if (ndeliveries > 0)
		claim_events_per_delivery = (double) n / ndeliveries;

	hub_endpoints_reload(ids, nids, now);
	hub_end_step();

	return n;
}

/*
 * hub_push_refresh --- what a claim does besides claiming, for a dispatcher whose
 * queues are full and that therefore does not claim: leave if the extension
 * is gone, and re-read the endpoints with queued requests, so that a pause,
 * a new URL or an opened circuit reaches them even while every connection
 * hangs.
 */
void
hub_push_refresh(void)
{
	Datum	   *ids;

	hub_begin_work_step("logistics_hub: refresh");
	ids = palloc(sizeof(Datum) * (1 + hub_endpoints_count()));
	hub_endpoints_reload(ids, 0, GetCurrentTimestamp());
	hub_end_step();
}

