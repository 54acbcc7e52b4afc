/*-------------------------------------------------------------------------
 *
 * poll_fetch.c
 *		Due pollers into GET requests: when a poller of this dispatcher's
 *		shard is due, lease it (hub._poll_claim) and put the request for its
 *		page on its endpoint's queue, like any push request.
 *
 * The idle dispatcher costs nothing: it asks hub._poll_next_due, a
 * read-only statement in a transaction that takes no transaction id and
 * writes no WAL, when the earliest poller is due, and sleeps until then (a
 * commit that creates, resumes or wakes a poller sets its latch; a slow
 * timer of POLL_RECHECK is the safety net).  Only a due poller costs a
 * write: its lease.  A page request is a GET of the URL the SQL gives,
 * with its headers (Accept, If-None-Match, If-Modified-Since) and the
 * endpoint's own headers and auth; a URL of another origin than the
 * endpoint's is refused before anything is sent (http_client.c), the whole
 * body is read up to logistics_hub.poll_max_page_bytes, and the final
 * response's headers are kept.  A request given back because its endpoint
 * cannot be used (paused, circuit open, throttled) waits for it while its
 * lease allows (half of it), else the run is dropped and its lease runs
 * out: the run resumes at its committed position.
 *
 * workers/poll_fetch.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "hub_workers.h"
#include "poll.h"

#define POLL_RECHECK (5 * USECS_PER_SEC)	/* the safety net's period */
#define POLL_ACTIVE_MAX 32		/* runs of this dispatcher going on at once at most */
#define POLL_WAKE_MIN (20 * 1000)	/* a wake-up looks at most this often (us) */

static bool poll_prepare(HubRequest *req, char **error);

static const HubRequestOps poll_ops = {poll_prepare, hub_poll_finished};

static TimestampTz check_at = 0;	/* when to look for due pollers, 0: now */
static TimestampTz last_check = 0;
static List *waiting = NIL;		/* HubPollRequest given back, in hub_worker_cxt */
static int	active = 0;			/* page requests made and not done: runs going on */

/* poll_prepare --- the page's own headers, from the SQL */
static bool
poll_prepare(HubRequest *base, char **error)
{
	HubPollRequest *req = (HubPollRequest *) base;

	for (int i = 0; i < req->nheaders; i++)
		if (!hub_http_append_header(base, req->headers[i]))
		{
			*error = pstrdup("refused to send: a request header of the poller holds CR or LF");
			return false;
		}
	return true;
}

/*
 * new_request --- the request of one page of a leased poller's run (not
 * queued yet); the endpoint is made known when new
 */
static HubPollRequest *
new_request(int poller_id, int endpoint_id, int64 lease, const char *url, char **headers, int nheaders)
{
	HubEndpoint *ep = hub_endpoint_get(endpoint_id);
	HubPollRequest *r = (HubPollRequest *) hub_request_new(ep, &poll_ops, sizeof(HubPollRequest));
	MemoryContext old = MemoryContextSwitchTo(r->req.cxt);

	active++;
	r->poller_id = poller_id;
	r->lease = lease;
	r->lease_from = GetCurrentTimestamp();
	r->req.url = pstrdup(url);
	r->req.get = true;
	/* (within what a StringInfo and a bytea can hold) */
	r->req.max_body = Min((Size) hub_poll_max_page_bytes, MaxAllocSize - VARHDRSZ - 1);
	r->req.want_headers = true;
	initStringInfo(&r->req.response);
	r->headers = palloc0(sizeof(char *) * Max(nheaders, 1));
	for (int i = 0; i < nheaders; i++)
		if (headers[i] != NULL)
			r->headers[r->nheaders++] = pstrdup(headers[i]);
	MemoryContextSwitchTo(old);
	return r;
}

/*
 * hub_poll_enqueue --- queue the request of one page of a leased poller's
 * run; true when its endpoint's settings are stale, which the step's
 * transaction must then read (hub_endpoints_reload)
 */
bool
hub_poll_enqueue(int poller_id, int endpoint_id, int64 lease, const char *url, char **headers, int nheaders)
{
	HubPollRequest *r = new_request(poller_id, endpoint_id, lease, url, headers, nheaders);
	bool		stale = hub_endpoint_stale(r->req.ep, GetCurrentTimestamp());

	hub_send_enqueue(&r->req);
	return stale;
}

/* hub_poll_done --- a page request is over: free it */
void
hub_poll_done(HubPollRequest *req)
{
	active--;
	hub_request_free(&req->req);
}

/*
 * hub_poll_give_back --- a page request was not sent (its endpoint cannot
 * be used until back_at): it waits for then when its lease lasts that
 * long, else the run is dropped (its lease runs out, and the run resumes
 * at its committed position).  Never queues at once: the send queue is
 * being pumped.
 */
void
hub_poll_give_back(HubPollRequest *req, TimestampTz back_at)
{
	MemoryContext old;

	if (back_at > req->lease_from + (int64) hub_lease_seconds * USECS_PER_SEC / 2)
	{
		ereport(DEBUG1,
				(errmsg_internal("logistics_hub %s: poller %d: endpoint %d not usable before its lease ends; run dropped",
								 hub_worker_name, req->poller_id, req->req.ep->endpoint_id)));
		hub_poll_done(req);
		return;
	}
	req->wait_until = back_at;
	old = MemoryContextSwitchTo(hub_worker_cxt);
	waiting = lappend(waiting, req);
	MemoryContextSwitchTo(old);
}

/* queue again the requests given back whose wait is over */
static void
requeue_waiting(TimestampTz now)
{
	ListCell   *lc;
	List	   *still = NIL;
	MemoryContext old;

	if (waiting == NIL)
		return;
	old = MemoryContextSwitchTo(hub_worker_cxt);
	foreach(lc, waiting)
	{
		HubPollRequest *r = lfirst(lc);

		if (r->wait_until > now)
			still = lappend(still, r);
		else
		{
			r->wait_until = 0;
			r->req.claimed_at = now;
			hub_send_enqueue(&r->req);
		}
	}
	list_free(waiting);
	waiting = still;
	MemoryContextSwitchTo(old);
}

/*
 * next_due --- when the earliest poller of this shard is due (0: none, or
 * no pollers in this version of the extension): hub._poll_next_due in a
 * read-only transaction, which takes no transaction id and writes no WAL
 */
static TimestampTz
next_due(void)
{
	TimestampTz due = 0;
	Oid			types[2] = {INT4OID, INT4OID};
	Datum		args[2] = {Int32GetDatum(hub_my_slot), Int32GetDatum(hub_nshards())};

	hub_begin_step("logistics_hub: poll due");
	if (hub_function_exists("_poll_next_due") &&
		SPI_execute_with_args("SELECT hub._poll_next_due($1, $2)", 2, types, args, NULL, true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			due = DatumGetTimestampTz(d);
	}
	hub_end_step();
	return due;
}

typedef struct ClaimArgs
{
	int			max;
} ClaimArgs;

static void
claim_fn(void *arg)
{
	ClaimArgs  *c = arg;
	Oid			types[4] = {TEXTOID, INT4OID, INT4OID, INT4OID};
	Datum		args[4];

	args[0] = CStringGetTextDatum(hub_worker_name);
	args[1] = Int32GetDatum(hub_my_slot);
	args[2] = Int32GetDatum(hub_nshards());
	args[3] = Int32GetDatum(c->max);
	if (SPI_execute_with_args("SELECT poller_id, endpoint_id, lease, url, headers "
							  "FROM hub._poll_claim($1, $2, $3, $4)", 4, types, args, NULL, false, 0)
		!= SPI_OK_SELECT)
		elog(ERROR, "claiming pollers failed");
}

/*
 * claim --- one transaction: lease up to max due pollers and queue the
 * request of each one's page; the settings of their endpoints are read when
 * stale.  A failure of the data's (not the server's: then the worker exits
 * and starts again) is a WARNING; the next look tries again.  Returns how
 * many were leased.
 */
static int
claim(int max)
{
	ClaimArgs	c = {max};
	HubStepError err;
	Datum	   *ids;
	int			nids = 0;
	int			n = 0;
	TimestampTz now = GetCurrentTimestamp();

	hub_begin_work_step("logistics_hub: poll claim");
	if (!hub_guard_run(claim_fn, &c, &err))
	{
		ereport(hub_error_is_general(err.sqlerrcode) ? ERROR : WARNING,
				(errcode(err.sqlerrcode),
				 errmsg("logistics_hub %s: claiming pollers failed: %s", hub_worker_name, err.message)));
		hub_end_step();
		return 0;
	}
	n = (int) SPI_processed;
	ids = palloc(sizeof(Datum) * (n + 1 + hub_endpoints_count()));
	for (int i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int			poller_id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		int			endpoint_id = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		int64		lease = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
		char	   *url = hub_spi_text(tup, desc, 4);
		int			nheaders;
		char	  **headers = hub_spi_text_array(tup, desc, 5, &nheaders);

		if (url == NULL)
			continue;			/* (cannot happen: the lease runs out) */
		if (hub_poll_enqueue(poller_id, endpoint_id, lease, url, headers, nheaders))
			ids[nids++] = Int32GetDatum(endpoint_id);
	}
	hub_endpoints_reload(ids, nids, now);
	hub_end_step();
	if (n > 0)
		hub_status_claimed();
	return n;
}

/*
 * hub_poll_fetch --- the poll side's share of a loop: requests given back
 * whose wait is over go back to their queues; when a look is due, ask when
 * the earliest poller is due and, if it is, lease the due ones and queue
 * their requests.
 */
void
hub_poll_fetch(TimestampTz now)
{
	TimestampTz due;
	int			room;

	requeue_waiting(now);
	if (check_at != 0 && now < check_at)
		return;
	last_check = now;
	check_at = now + POLL_RECHECK;
	due = next_due();
	if (due == 0)
		return;
	if (due > now)
	{
		check_at = Min(check_at, due);
		return;
	}
	/*
	 * (not bounded by the push backlog in the queues: a poll request waits
	 * in its endpoint's queue like any other, and pollers must not starve
	 * behind a busy push side)
	 */
	room = POLL_ACTIVE_MAX - active;
	if (room <= 0)
	{
		/* as many runs as it may have: look again once one is over */
		check_at = now + (int64) hub_naptime_ms() * 1000;
		return;
	}
	/* leased all it asked for: more may be due, look again at once */
	check_at = claim(room) >= room ? 0 : now + (int64) hub_naptime_ms() * 1000;
}

/*
 * hub_poll_wake --- the latch was set (a commit created, resumed or woke a
 * poller, or published events): look for due pollers soon, but not more
 * often than every POLL_WAKE_MIN
 */
void
hub_poll_wake(void)
{
	TimestampTz soon = last_check + POLL_WAKE_MIN;

	if (check_at != 0 && soon < check_at)
		check_at = Max(soon, 1);
}

/* hub_poll_run_over --- a run ended, its poller due again at next_at */
void
hub_poll_run_over(TimestampTz next_at)
{
	if (next_at != 0 && (check_at == 0 || next_at < check_at))
		check_at = next_at;
}

/*
 * hub_poll_next_wakeup --- when the loop must come back for the poll side:
 * now when pages wait to be recorded, else the next look or the end of a
 * given-back request's wait
 */
TimestampTz
hub_poll_next_wakeup(void)
{
	TimestampTz t = check_at;
	ListCell   *lc;

	if (hub_poll_pages_pending())
		return 1;
	foreach(lc, waiting)
	{
		HubPollRequest *r = lfirst(lc);

		if (t == 0 || r->wait_until < t)
			t = r->wait_until;
	}
	return t == 0 ? 1 : t;
}
