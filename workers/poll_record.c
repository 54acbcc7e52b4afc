/*-------------------------------------------------------------------------
 *
 * poll_record.c
 *		Fetched pages recorded: each page with everything it causes (its
 *		audit row, its records into hub.inbox once per id and version, the
 *		run's position, watermark and validators, a failure and its backoff)
 *		in one transaction of its own, by hub._poll_page; then the run's
 *		next page is queued at once, or the run is over.
 *
 * The position is committed with the records it covers: a dispatcher
 * killed between the fetch and the commit leaves the lease to run out, and
 * the run resumes at the committed position (duplicates are recognised).
 * What arrived is passed as it came: status (0 when no response: transport
 * error, refused, timeout, a body larger than
 * logistics_hub.poll_max_page_bytes), the final response's headers, the
 * body, the engine's error text (redacted).  A page that cannot be
 * recorded because of its data is recorded again as a failed page (status
 * 0, the error), so that it is retried with backoff and seen in
 * hub.poll_requests; should that fail too the run is dropped and its lease
 * runs out.  An error of the server's ends the worker, as for push.
 *
 * workers/poll_record.c
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

static List *pages = NIL;		/* HubPollRequest finished, in hub_worker_cxt */

/*
 * hub_poll_finished --- a page request's outcome (its finished operation):
 * kept for hub_poll_record; one given back waits (hub_poll_give_back)
 */
void
hub_poll_finished(HubRequest *base, const HubOutcome *o)
{
	HubPollRequest *req = (HubPollRequest *) base;
	MemoryContext old;

	if (o->given_back)
	{
		hub_poll_give_back(req, o->back_at);
		return;
	}
	req->outcome = *o;
	if (o->error != NULL)
		req->outcome.error = MemoryContextStrdup(base->cxt, o->error);
	old = MemoryContextSwitchTo(hub_worker_cxt);
	pages = lappend(pages, req);
	MemoryContextSwitchTo(old);
}

/* are pages waiting to be recorded? */
bool
hub_poll_pages_pending(void)
{
	return pages != NIL;
}

typedef struct PageArgs
{
	HubPollRequest *req;
	bool		as_failure;		/* record as a failed page with error */
	char	   *error;
	/* what it returned */
	bool		any;
	char	   *url;
	char	  **headers;
	int			nheaders;
	TimestampTz next_at;
} PageArgs;

/* the final response's headers as a text[] (NULL: none) */
static Datum
headers_array(HubPollRequest *req, bool *isnull)
{
	int			n = list_length(req->req.resp_headers);
	Datum	   *d;
	ListCell   *lc;
	int			i = 0;

	*isnull = n == 0;
	if (n == 0)
		return (Datum) 0;
	d = palloc(sizeof(Datum) * n);
	foreach(lc, req->req.resp_headers)
		d[i++] = CStringGetTextDatum((char *) lfirst(lc));
	return PointerGetDatum(construct_array(d, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/* one call of hub._poll_page (inside SPI, guarded) */
static void
page_fn(void *arg)
{
	PageArgs   *a = arg;
	HubPollRequest *req = a->req;
	const HubOutcome *o = &req->outcome;
	bool		response = !a->as_failure && o->http_status > 0;
	Oid			types[9] = {INT4OID, INT8OID, TEXTOID, INT4OID, TEXTARRAYOID, BYTEAOID, TEXTOID, INT4OID, INT8OID};
	Datum		v[9];
	char		nulls[9] = "         ";
	bool		isnull;

	v[0] = Int32GetDatum(req->poller_id);
	v[1] = Int64GetDatum(req->lease);
	v[2] = CStringGetTextDatum(req->req.url);
	v[3] = Int32GetDatum(response ? (int32) o->http_status : 0);
	v[4] = response ? headers_array(req, &isnull) : (Datum) 0;
	if (!response || isnull)
		nulls[4] = 'n';
	if (response)
	{
		bytea	   *b = palloc(VARHDRSZ + req->req.response.len);

		SET_VARSIZE(b, VARHDRSZ + req->req.response.len);
		memcpy(VARDATA(b), req->req.response.data, req->req.response.len);
		v[5] = PointerGetDatum(b);
		nulls[6] = 'n';
	}
	else
	{
		nulls[5] = 'n';
		v[6] = CStringGetTextDatum(a->error);
	}
	v[7] = Int32GetDatum(o->latency_ms);
	v[8] = Int64GetDatum((int64) req->req.received);
	if (SPI_execute_with_args("SELECT url, headers, next_at FROM hub._poll_page($1, $2, $3, $4, $5, $6, $7, $8, $9)",
							  9, types, v, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "recording a poll page failed");
	a->any = SPI_processed > 0;
	if (a->any)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Datum		d;

		a->url = hub_spi_text(tup, desc, 1);
		a->headers = hub_spi_text_array(tup, desc, 2, &a->nheaders);
		d = SPI_getbinval(tup, desc, 3, &isnull);
		a->next_at = isnull ? 0 : DatumGetTimestampTz(d);
	}
}

/*
 * record_page --- one page in a transaction of its own; queue the run's
 * next page, or note when the poller is due again
 */
static void
record_page(HubPollRequest *req)
{
	PageArgs	a;
	HubStepError err;
	const HubOutcome *o = &req->outcome;

	memset(&a, 0, sizeof(a));
	a.req = req;
	if (o->http_status <= 0)
		a.error = hub_http_redact(&req->req, pstrdup(o->error && o->error[0] ? o->error : "no response"), false);
	hub_begin_work_step("logistics_hub: poll page");
	if (!hub_guard_run(page_fn, &a, &err))
	{
		ereport(hub_error_is_general(err.sqlerrcode) ? ERROR : WARNING,
				(errcode(err.sqlerrcode),
				 errmsg("logistics_hub %s: recording a page of poller %d failed: %s",
						hub_worker_name, req->poller_id, err.message),
				 errdetail("Recording it as a failed page instead.")));
		a.as_failure = true;
		a.error = psprintf("the page could not be recorded: %s", err.message);
		if (!hub_guard_run(page_fn, &a, &err))
		{
			ereport(hub_error_is_general(err.sqlerrcode) ? ERROR : WARNING,
					(errcode(err.sqlerrcode),
					 errmsg("logistics_hub %s: recording a failed page of poller %d failed: %s",
							hub_worker_name, req->poller_id, err.message),
					 errdetail("The run is dropped; its lease runs out and it resumes at its committed position.")));
			a.any = false;
		}
	}
	if (a.any && a.url != NULL)
	{
		Datum		id = Int32GetDatum(req->req.ep->endpoint_id);

		if (hub_poll_enqueue(req->poller_id, req->req.ep->endpoint_id, req->lease, a.url, a.headers, a.nheaders))
		{
			Datum	   *ids = palloc(sizeof(Datum) * (1 + hub_endpoints_count()));

			ids[0] = id;
			hub_endpoints_reload(ids, 1, GetCurrentTimestamp());
		}
	}
	else if (a.any)
		hub_poll_run_over(a.next_at);
	hub_end_step();
}

/*
 * hub_poll_record --- record every page waiting, each in a transaction of
 * its own
 */
void
hub_poll_record(void)
{
	while (pages != NIL)
	{
		HubPollRequest *req = linitial(pages);
		MemoryContext old = MemoryContextSwitchTo(hub_worker_cxt);

		pages = list_delete_first(pages);
		MemoryContextSwitchTo(old);
		record_page(req);
		hub_poll_done(req);
	}
}
