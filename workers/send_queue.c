/*-------------------------------------------------------------------------
 *
 * send_queue.c
 *		Requests waiting to be sent, one queue per endpoint, and the pump
 *		that starts them within the limits: logistics_hub.max_in_flight for
 *		the dispatcher, and each endpoint's max_concurrency, rate limit
 *		(a sliding window, endpoints.c), OAuth2 token (http_oauth2.c),
 *		usability (paused, circuit open, throttled) and a queue wait of at
 *		most half a lease.
 *
 * Push and poll requests share the queues, so an endpoint's limits are one
 * budget for everything sent to it, whatever its transport: an HTTP
 * request goes to libcurl (http_client.c, http_loop.c), a request to a
 * postgresql:// or nats:// endpoint to its transport's start operation
 * (transport.h), which reports it later with hub_send_complete.  A request that cannot go (endpoint not
 * usable, or waited half its lease) is given back to its maker without an
 * attempt; one whose handle cannot be prepared fails without being sent.
 * Request memory: each request has a memory context of its own, reset and
 * kept for the next request rather than deleted (a request's struct, body,
 * excerpt and headers fit in the first block, so a busy dispatcher makes
 * and frees requests without a malloc of its own).
 *
 * workers/send_queue.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/memutils.h"

#include "http.h"
#include "hub_workers.h"
#include "transport.h"

static dlist_head active_endpoints = DLIST_STATIC_INIT(active_endpoints);
static int	queued_total = 0;

/*
 * At most REQUEST_CONTEXTS_KEPT request contexts wait for reuse (one
 * claim's worth).
 */
#define REQUEST_BLOCK 4096
#define REQUEST_CONTEXTS_KEPT 1024
static MemoryContext kept_contexts[REQUEST_CONTEXTS_KEPT];
static int	nkept = 0;

/*
 * hub_request_new --- a request to ep made by ops, size bytes (a maker's
 * struct that begins with a HubRequest), zeroed, in a context of its own
 */
HubRequest *
hub_request_new(HubEndpoint *ep, const HubRequestOps *ops, Size size)
{
	MemoryContext cxt = nkept > 0 ? kept_contexts[--nkept] :
		AllocSetContextCreate(hub_worker_cxt, "logistics_hub request", 0, REQUEST_BLOCK, 8 * REQUEST_BLOCK);
	HubRequest *req = MemoryContextAllocZero(cxt, Max(size, sizeof(HubRequest)));
	MemoryContext old;

	req->cxt = cxt;
	req->ep = ep;
	req->ops = ops;
	req->claimed_at = GetCurrentTimestamp();
	old = MemoryContextSwitchTo(cxt);
	initStringInfo(&req->body);
	initStringInfo(&req->excerpt);
	MemoryContextSwitchTo(old);
	return req;
}

/* hub_request_free --- release the request's handle and memory */
void
hub_request_free(HubRequest *req)
{
	MemoryContext cxt = req->cxt;

	hub_http_release(req);
	if (nkept < REQUEST_CONTEXTS_KEPT)
	{
		MemoryContextReset(cxt);
		kept_contexts[nkept++] = cxt;
	}
	else
		MemoryContextDelete(cxt);
}

/* hub_send_enqueue --- queue the request behind its endpoint's others */
void
hub_send_enqueue(HubRequest *req)
{
	HubEndpoint *ep = req->ep;

	dlist_push_tail(&ep->queue, &req->node);
	ep->queued++;
	queued_total++;
	if (!ep->active)
	{
		dlist_push_tail(&active_endpoints, &ep->active_node);
		ep->active = true;
	}
}

/* hub_send_queued --- requests waiting in every queue */
int
hub_send_queued(void)
{
	return queued_total;
}

static void
dequeue(HubEndpoint *ep, HubRequest *req)
{
	dlist_delete(&req->node);
	ep->queued--;
	queued_total--;
}

/* the maker's finished operation with an outcome that is no response */
static void
finish_without_response(HubRequest *req, char *error, bool given_back, TimestampTz back_at, bool counted)
{
	HubOutcome	o;

	memset(&o, 0, sizeof(o));
	o.error = error;
	o.retry_after_s = -1;
	o.latency_ms = req->started_at ? (int) ((GetCurrentTimestamp() - req->started_at) / 1000) : 0;
	o.given_back = given_back;
	o.back_at = back_at;
	o.counted = counted;
	req->ops->finished(req, &o);
}

/*
 * hub_send_fail_endpoint --- every queued request of the endpoint fails
 * with error (an attempt each; the OAuth2 failure path): one failure counts
 * once for the circuit
 */
void
hub_send_fail_endpoint(HubEndpoint *ep, char *error)
{
	bool		first = true;

	while (!dlist_is_empty(&ep->queue))
	{
		HubRequest *r = dlist_head_element(HubRequest, node, &ep->queue);

		dequeue(ep, r);
		finish_without_response(r, error, false, 0, !first);
		first = false;
	}
}

/*
 * hub_send_stale_endpoints --- add to ids (nids of them so far) every
 * endpoint with queued requests whose settings are older than a second;
 * returns the new count (ids must have room for every known endpoint more)
 */
int
hub_send_stale_endpoints(Datum *ids, int nids, TimestampTz now)
{
	dlist_iter	it;

	dlist_foreach(it, &active_endpoints)
	{
		HubEndpoint *ep = dlist_container(HubEndpoint, active_node, it.cur);

		if (ep->loaded && now - ep->loaded_at > USECS_PER_SEC)
		{
			ep->loaded = false;
			ids[nids++] = Int32GetDatum(ep->endpoint_id);
			ep->loaded_at = now;
		}
	}
	return nids;
}

/*
 * hub_send_pump --- start every queued request the limits allow; give back
 * those that cannot go (endpoint paused, circuit open or throttled, or
 * waited too long).  Returns the earliest time a rate-limited request may
 * start (0: none).
 */
TimestampTz
hub_send_pump(void)
{
	dlist_mutable_iter it;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next = 0;
	int64		max_wait = (int64) hub_lease_seconds * USECS_PER_SEC / 2;

	dlist_foreach_modify(it, &active_endpoints)
	{
		HubEndpoint *ep = dlist_container(HubEndpoint, active_node, it.cur);
		bool		sent = false;

		while (!dlist_is_empty(&ep->queue))
		{
			HubRequest *req = dlist_head_element(HubRequest, node, &ep->queue);
			int64		wait;
			char	   *error;
			TimestampTz back_at = now;

			if (!hub_endpoint_usable(ep, now, &back_at) || now - req->claimed_at > max_wait)
			{
				dequeue(ep, req);
				finish_without_response(req, NULL, true, back_at, false);
				continue;
			}
			if (!ep->loaded || hub_loop_in_flight() >= hub_max_in_flight)
				break;
			if (!hub_oauth2_ready(ep, now))
				break;			/* the queue waits for the token, spending no attempt */
			if (ep->in_flight >= ep->max_concurrency)
				break;
			wait = hub_endpoint_rate_wait(ep, now);
			if (wait > 0)
			{
				if (next == 0 || now + wait < next)
					next = now + wait;
				break;
			}
			dequeue(ep, req);
			req->started_at = now;
			if (ep->transport != HUB_TRANSPORT_HTTP)
			{
				const HubTransportOps *ops = hub_transport_ops(ep->transport);

				if (ops == NULL)
				{
					finish_without_response(req, pstrdup("this endpoint's transport is not built into the logistics_hub library"),
											false, 0, false);
					continue;
				}
				hub_endpoint_note_start(ep, now);
				/* (counted first: start may complete the request at once) */
				ep->in_flight++;
				hub_loop_count_in_flight(1);
				if (!ops->start(req, &error))
				{
					ep->in_flight--;
					hub_loop_count_in_flight(-1);
					finish_without_response(req, error, false, 0, false);
				}
				else
					sent = true;
				continue;
			}
			if (hub_http_prepare(req, &error) == NULL)
			{
				finish_without_response(req, error, false, 0, false);
				continue;
			}
			hub_endpoint_note_start(ep, now);
			if (!hub_loop_start(req->easy, &error))
			{
				finish_without_response(req, error, false, 0, false);
				hub_http_release(req);
				continue;
			}
			ep->in_flight++;
			sent = true;
		}

		/*
		 * A new token serves this pass whatever its expiry, so that one
		 * valid for less than the margin still carries what waited for it.
		 */
		if (sent)
			ep->oauth2_fresh = false;
		if (dlist_is_empty(&ep->queue))
		{
			dlist_delete(&ep->active_node);
			ep->active = false;
		}
	}
	return next;
}

/*
 * hub_send_complete --- a request started by another transport than HTTP
 * finished with outcome o (from the loop: its socket or timer): off the
 * in-flight counts, its outcome to its maker (which frees the request)
 */
void
hub_send_complete(HubRequest *req, const HubOutcome *o)
{
	req->ep->in_flight--;
	hub_loop_count_in_flight(-1);
	req->ops->finished(req, o);
}

/*
 * hub_send_finished --- a started request's transfer finished with rc:
 * off the loop, its outcome to its maker, its handle released (the maker
 * frees the request)
 */
void
hub_send_finished(HubRequest *req, CURLcode rc)
{
	HubOutcome	o;

	hub_loop_stop(req->easy);
	req->ep->in_flight--;
	hub_http_outcome(req, rc, &o);
	req->ops->finished(req, &o);
	hub_http_release(req);
}
