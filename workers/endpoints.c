/*-------------------------------------------------------------------------
 *
 * endpoints.c
 *		The dispatcher's cache of endpoints: settings and opened secrets,
 *		the concurrency cap and rate window of this dispatcher's share, and
 *		throttling, the same for push and poll.
 *
 * Settings are read by hub._dispatch_endpoints() in a step's transaction
 * (never older than a second for an endpoint with queued requests: a pause,
 * a new URL or an opened circuit reaches the queue within a second) with
 * the concurrency cap and rate limit cut to this dispatcher's share.
 * Secrets come sealed and are opened here, in C (extension/sealed.c); an
 * endpoint whose secrets do not open (no key, another key) sends nothing
 * and is paused with the reason.  An endpoint whose settings cannot be read
 * is paused with the reason (step_guard.c).
 *
 * Throttling: a 429 or 503 with Retry-After, or X-RateLimit-Remaining: 0
 * with X-RateLimit-Reset (http_client.c), makes the endpoint unusable in
 * this dispatcher until then at once (hub_endpoint_throttle,
 * hub_endpoint_usable: its queue is given back as for an open circuit) and
 * is recorded in
 * hub.endpoints.throttled_until by the next step (hub._throttle_endpoint),
 * which hub._dispatch_endpoints reports: it survives a restart and every
 * dispatcher honours it.
 *
 * workers/endpoints.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "http.h"
#include "hub_workers.h"
#include "sealed.h"
#include "transport.h"

static HTAB *endpoints;
static SPIPlanPtr endpoints_plan = NULL;

/* throttles noted and not recorded yet: endpoint ids and times, in hub_worker_cxt */
static List *throttle_ids = NIL;
static List *throttle_untils = NIL;

/* hub_endpoints_init --- the empty cache (at start, in hub_worker_cxt) */
void
hub_endpoints_init(void)
{
	HASHCTL		ctl;

	ctl.keysize = sizeof(int);
	ctl.entrysize = sizeof(HubEndpoint);
	ctl.hcxt = hub_worker_cxt;
	endpoints = hash_create("logistics_hub endpoints", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/* hub_endpoints_count --- how many endpoints are known */
long
hub_endpoints_count(void)
{
	return hash_get_num_entries(endpoints);
}

/*
 * hub_endpoints_held --- what this dispatcher holds of each endpoint,
 * queued and in flight: ids[] and held[] (room for every known endpoint)
 * of those holding some; returns how many
 */
int
hub_endpoints_held(int64 *ids, int64 *held)
{
	HASH_SEQ_STATUS seq;
	HubEndpoint *known;
	int			n = 0;

	hash_seq_init(&seq, endpoints);
	while ((known = hash_seq_search(&seq)) != NULL)
	{
		if (known->queued + known->in_flight == 0)
			continue;
		ids[n] = known->endpoint_id;
		held[n++] = known->queued + known->in_flight;
	}
	return n;
}

/* hub_endpoint_get --- the endpoint of this id, made (not loaded) if unknown */
HubEndpoint *
hub_endpoint_get(int id)
{
	bool		found;
	HubEndpoint *ep = hash_search(endpoints, &id, HASH_ENTER, &found);

	if (!found)
	{
		memset((char *) ep + sizeof(int), 0, sizeof(HubEndpoint) - sizeof(int));
		ep->cxt = AllocSetContextCreate(hub_worker_cxt, "logistics_hub endpoint", ALLOCSET_SMALL_SIZES);
		dlist_init(&ep->queue);
	}
	return ep;
}

static HubAuthKind
auth_kind(const char *s)
{
	if (s == NULL || strcmp(s, "none") == 0)
		return HUB_AUTH_NONE;
	if (strcmp(s, "bearer") == 0)
		return HUB_AUTH_BEARER;
	if (strcmp(s, "basic") == 0)
		return HUB_AUTH_BASIC;
	if (strcmp(s, "api_key") == 0)
		return HUB_AUTH_API_KEY;
	return HUB_AUTH_OAUTH2;
}

/*
 * Endpoints whose secrets did not open, to be paused once the rows of
 * hub._dispatch_endpoints() are read (pause_unsealed): ids and reasons, in
 * hub_worker_cxt.
 */
static List *unsealed_ids = NIL;
static List *unsealed_reasons = NIL;
static SPIPlanPtr pause_plan = NULL;

/*
 * open_secret --- the plain text of one sealed column (NULL when NULL);
 * false, with the endpoint noted for pause_unsealed, when it does not open
 * or a credential holds CR or LF.  The reason never holds the secret.
 */
static bool
open_secret(HubEndpoint *ep, const char *column, Datum d, bool credential, char **out)
{
	char	   *why = NULL;
	MemoryContext old;

	*out = hub_secret_open(ep->endpoint_id, column, DatumGetByteaPP(d), &why);
	if (*out != NULL && credential && strpbrk(*out, "\r\n") != NULL)
	{
		*out = NULL;
		why = pstrdup("it contains CR or LF");
	}
	if (*out != NULL)
		return true;
	old = MemoryContextSwitchTo(hub_worker_cxt);
	unsealed_ids = lappend_int(unsealed_ids, ep->endpoint_id);
	unsealed_reasons = lappend(unsealed_reasons,
							   psprintf("sealed secrets cannot be opened: %s of the endpoint: %s", column, why));
	MemoryContextSwitchTo(old);
	return false;
}

/*
 * endpoint_open_secrets --- open columns 11-14 of a hub._dispatch_endpoints()
 * row (sealed credentials and signing secrets, extension/sealed.c) into the
 * endpoint.  False when one does not open: the endpoint then keeps no
 * secret, sends nothing and is paused by pause_unsealed.
 */
static bool
endpoint_open_secrets(HubEndpoint *ep, HeapTuple tup, TupleDesc desc)
{
	static const char *const columns[] = {"auth_secret", "oauth2_client_id", "oauth2_client_secret"};
	char	  **fields[3];
	bool		isnull;
	Datum		d;
	Datum	   *elems;
	bool	   *nulls;
	int			count;

	fields[0] = &ep->auth_secret;
	fields[1] = &ep->oauth2_client_id;
	fields[2] = &ep->oauth2_client_secret;
	ep->auth_secret = ep->oauth2_client_id = ep->oauth2_client_secret = NULL;
	ep->signing_secrets = NULL;
	ep->nsecrets = 0;
	for (int i = 0; i < 3; i++)
	{
		d = SPI_getbinval(tup, desc, 11 + i, &isnull);
		if (!isnull && !open_secret(ep, columns[i], d, true, fields[i]))
			goto fail;
	}
	d = SPI_getbinval(tup, desc, 14, &isnull);
	if (isnull)
		return true;
	deconstruct_array(DatumGetArrayTypeP(d), BYTEAOID, -1, false, TYPALIGN_INT, &elems, &nulls, &count);
	ep->signing_secrets = palloc0(sizeof(char *) * Max(count, 1));
	for (int i = 0; i < count; i++)
		if (!nulls[i] &&
			!open_secret(ep, "signing_secrets", elems[i], false, &ep->signing_secrets[ep->nsecrets++]))
			goto fail;
	return true;

fail:
	ep->auth_secret = ep->oauth2_client_id = ep->oauth2_client_secret = NULL;
	ep->signing_secrets = NULL;
	ep->nsecrets = 0;
	return false;
}

/*
 * pause_unsealed --- pause the endpoints noted by open_secret, each with
 * its reason (hub._pause_unsealed: audited, a WARNING naming the endpoint
 * in the server log); inside SPI, after the endpoint rows were read.
 */
static void
pause_unsealed(void)
{
	ListCell   *a,
			   *b;

	if (unsealed_ids == NIL)
		return;
	if (pause_plan == NULL)
	{
		Oid			types[2] = {INT4OID, TEXTOID};

		pause_plan = hub_prepare_plan("SELECT hub._pause_unsealed($1, $2)", 2, types);
	}
	forboth(a, unsealed_ids, b, unsealed_reasons)
	{
		Datum		args[2];

		args[0] = Int32GetDatum(lfirst_int(a));
		args[1] = CStringGetTextDatum((char *) lfirst(b));
		if (SPI_execute_plan(pause_plan, args, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "pausing endpoint %d failed", lfirst_int(a));
	}
	list_free_deep(unsealed_reasons);
	list_free(unsealed_ids);
	unsealed_ids = unsealed_reasons = NIL;
}

/* store one row of hub._dispatch_endpoints() (inside SPI) */
static void
endpoint_load(HeapTuple tup, TupleDesc desc)
{
	bool		isnull;
	int			id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
	HubEndpoint *ep = hub_endpoint_get(id);
	MemoryContext old;
	char	   *url;
	Datum		rate;
	bool		usable;

	MemoryContextReset(ep->cxt);
	old = MemoryContextSwitchTo(ep->cxt);
	ep->config_gen++;			/* (handles set up before are set up again) */
	if (ep->config_gen == 0)
		ep->config_gen = 1;
	url = hub_spi_text(tup, desc, 2);
	ep->url = url;
	{
		/* the URL's scheme picks the transport; a former one lets go */
		HubTransport t = hub_transport_of_url(url);
		const HubTransportOps *was = hub_transport_ops(ep->transport);

		if (t != ep->transport && was != NULL && ep->transport_state != NULL)
			was->endpoint_dropped(ep);
		ep->transport = t;
	}
	ep->timeout_ms = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
	ep->max_concurrency = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
	rate = SPI_getbinval(tup, desc, 5, &isnull);
	ep->rate_limit = isnull ? 0 : DatumGetFloat8(rate);
	ep->allow_redirects = DatumGetBool(SPI_getbinval(tup, desc, 6, &isnull));
	ep->auth_kind = auth_kind(hub_spi_text(tup, desc, 7));
	ep->api_key_header = hub_spi_text(tup, desc, 8);
	ep->oauth2_token_url = hub_spi_text(tup, desc, 9);
	ep->headers = hub_spi_text_array(tup, desc, 10, &ep->nheaders);
	usable = endpoint_open_secrets(ep, tup, desc);
	usable = DatumGetBool(SPI_getbinval(tup, desc, 15, &isnull)) && usable;
	ep->usable_again = DatumGetTimestampTz(SPI_getbinval(tup, desc, 16, &isnull));
	{
		/* a throttle recorded by any dispatcher, or by this one earlier */
		Datum		t = SPI_getbinval(tup, desc, 17, &isnull);

		if (!isnull && DatumGetTimestampTz(t) > ep->throttled_until)
			ep->throttled_until = DatumGetTimestampTz(t);
	}
	ep->subject_template = hub_spi_text(tup, desc, 18);

	/* the rate window: at most rate_n starts in rate_n / rate seconds */
	if (ep->rate_limit > 0)
	{
		int			n = (int) Max(1.0, Min(floor(ep->rate_limit), 10000.0));

		if (n != ep->rate_n)
		{
			if (ep->rate_starts != NULL)
				pfree(ep->rate_starts);
			ep->rate_starts = MemoryContextAllocZero(hub_worker_cxt, sizeof(TimestampTz) * n);
			ep->rate_pos = 0;
		}
		ep->rate_n = n;
		ep->rate_window_us = (int64) ceil(n * 1e6 / ep->rate_limit);
	}
	else
		ep->rate_n = 0;
	MemoryContextSwitchTo(old);
	ep->usable = usable;
	ep->loaded = true;
	ep->loaded_at = GetCurrentTimestamp();

	hub_oauth2_after_load(ep);
	if (hub_transport_ops(ep->transport) != NULL)
		hub_transport_ops(ep->transport)->endpoint_loaded(ep);
}


typedef struct ReloadArgs
{
	Datum	   *ids;
	int			nids;
} ReloadArgs;

/*
 * reload_some --- read the settings of these endpoints (inside SPI).  Not
 * read-only: a fresh snapshot, at least as new as the claim's.  The
 * transaction's first snapshot can predate a resume_endpoint that the claim
 * already saw, and the endpoint would then be held paused for a second and
 * its claimed work given back; and it must see what the claim just changed
 * (a half-open circuit).
 */
static void
reload_some(void *arg)
{
	ReloadArgs *r = arg;
	Datum		args[3];

	if (endpoints_plan == NULL)
	{
		Oid			types[] = {INT4ARRAYOID, INT4OID, INT4OID};

		endpoints_plan = hub_prepare_plan("SELECT * FROM hub._dispatch_endpoints($1, $2, $3)", 3, types);
	}

	args[0] = PointerGetDatum(construct_array(r->ids, r->nids, INT4OID, 4, true, TYPALIGN_INT));
	args[1] = Int32GetDatum(hub_my_slot);
	args[2] = Int32GetDatum(hub_nshards());
	if (SPI_execute_plan(endpoints_plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading endpoints failed");
	for (uint64 i = 0; i < SPI_processed; i++)
		endpoint_load(SPI_tuptable->vals[i], SPI_tuptable->tupdesc);
	pause_unsealed();
}

/*
 * hub_endpoints_reload --- re-read the settings of the endpoints in ids (nids of
 * them) and of every endpoint with queued requests not read for a second:
 * paused, resumed, re-pointed or its circuit opened meanwhile?  Inside a
 * step's transaction; ids must have room for every known endpoint more.
 * An endpoint whose settings cannot be read is paused with the reason.
 */
void
hub_endpoints_reload(Datum *ids, int nids, TimestampTz now)
{
	nids = hub_send_stale_endpoints(ids, nids, now);
	if (nids > 0)
	{
		ReloadArgs	a = {ids, nids};
		HubStepError err;

		if (hub_guard_run(reload_some, &a, &err))
			return;
		if (hub_error_is_general(err.sqlerrcode))
			ereport(ERROR,
					(errcode(err.sqlerrcode),
					 errmsg("logistics_hub %s: reading endpoints failed: %s", hub_worker_name, err.message)));
		/* one at a time: pause the endpoints that cannot be read */
		for (int i = 0; i < nids; i++)
		{
			a.ids = &ids[i];
			a.nids = 1;
			if (!hub_guard_run(reload_some, &a, &err))
			{
				HubEndpoint *ep = hub_endpoint_get(DatumGetInt32(ids[i]));

				ereport(hub_error_is_general(err.sqlerrcode) ? ERROR : WARNING,
						(errcode(err.sqlerrcode),
						 errmsg("logistics_hub %s: reading endpoint %d failed: %s",
								hub_worker_name, ep->endpoint_id, err.message)));
				hub_guard_pause(ep->endpoint_id, "pause_failing",
								psprintf("a dispatcher could not read its settings: %s", err.message));
				/* its queue is given back; read again in a second */
				ep->usable = false;
				ep->usable_again = now + USECS_PER_SEC;
				ep->loaded = true;
				ep->loaded_at = now;
			}
		}
	}
}

/*
 * hub_endpoint_stale --- are the endpoint's settings older than a second
 * (or never read), or read as unusable until a time now past (an open
 * circuit whose cool-off is over: the claim that half-opened it leased its
 * probe, which must not be given back as if the circuit were still open,
 * and claimed again at once, many times a second, until the next read)?
 * Then it is marked for the next read.
 */
bool
hub_endpoint_stale(HubEndpoint *ep, TimestampTz now)
{
	if (ep->loaded && now - ep->loaded_at <= USECS_PER_SEC &&
		(ep->usable || ep->usable_again > now))
		return false;
	ep->loaded = false;
	ep->loaded_at = now;
	return true;
}

/*
 * hub_endpoints_load --- read these endpoints' settings now (inside SPI, in
 * the step's transaction, not guarded).  Not read-only: a read-only
 * execution uses the step's first snapshot and would not see the circuit
 * the step just opened.
 */
void
hub_endpoints_load(Datum *ids, int nids)
{
	ReloadArgs	a = {ids, nids};

	if (nids > 0)
		reload_some(&a);
}

/*
 * hub_endpoint_rate_wait --- how long until the rate limit lets one more request start
 * (0: now).  Two rules: never more than rate_n starts in rate_window_us
 * (the limit itself), and starts spaced by 1/rate.  Without the spacing a
 * full window would go out as a burst at its start, and a receiver counting
 * arrivals in its own one-second windows could see two bursts, twice the
 * limit, in one of them; spaced, any window holds the limit give or take
 * one request.
 */
int64
hub_endpoint_rate_wait(HubEndpoint *ep, TimestampTz now)
{
	TimestampTz oldest;
	TimestampTz last;
	int64		spacing;
	int64		wait = 0;

	if (ep->rate_n == 0)
		return 0;
	oldest = ep->rate_starts[ep->rate_pos];
	if (oldest != 0 && now - oldest < ep->rate_window_us)
		wait = ep->rate_window_us - (now - oldest);
	last = ep->rate_starts[(ep->rate_pos + ep->rate_n - 1) % ep->rate_n];
	spacing = ep->rate_window_us / ep->rate_n;
	if (last != 0 && now - last < spacing)
		wait = Max(wait, spacing - (now - last));
	return wait;
}

/*
 * hub_endpoint_usable --- may requests go to the endpoint now?  Not while
 * it is paused, disabled or its circuit open (as last read), nor before
 * its throttle ends; false then, with *back_at the time to give its work
 * back for.  A throttle's end needs no reload: the endpoint is usable again
 * at that very time.
 */
bool
hub_endpoint_usable(HubEndpoint *ep, TimestampTz now, TimestampTz *back_at)
{
	if (!ep->usable)
	{
		*back_at = Max(Max(now, ep->usable_again), ep->throttled_until);
		return false;
	}
	if (ep->throttled_until > now)
	{
		*back_at = ep->throttled_until;
		return false;
	}
	return true;
}

/* hub_endpoint_note_start --- a request to the endpoint starts now (the rate window) */
void
hub_endpoint_note_start(HubEndpoint *ep, TimestampTz now)
{
	if (ep->rate_n > 0)
	{
		ep->rate_starts[ep->rate_pos] = now;
		ep->rate_pos = (ep->rate_pos + 1) % ep->rate_n;
	}
}

/*
 * hub_endpoint_throttle --- the endpoint asked us to wait until then (a
 * 429 or 503 with Retry-After, or a rate limit used up; the caller capped
 * it by logistics_hub.retry_after_max): nothing more is sent to it from
 * this dispatcher before then, its queue is given back as for an open
 * circuit, and the time is noted for hub_endpoints_record_throttles.
 */
void
hub_endpoint_throttle(HubEndpoint *ep, TimestampTz until)
{
	MemoryContext old;

	if (until <= GetCurrentTimestamp() || until <= ep->throttled_until)
		return;
	ep->throttled_until = until;
	old = MemoryContextSwitchTo(hub_worker_cxt);
	throttle_ids = lappend_int(throttle_ids, ep->endpoint_id);
	throttle_untils = lappend(throttle_untils, memcpy(palloc(sizeof(TimestampTz)), &until, sizeof(TimestampTz)));
	MemoryContextSwitchTo(old);
}

/* are throttles waiting to be recorded? */
bool
hub_endpoints_throttles_pending(void)
{
	return throttle_ids != NIL;
}

static void
record_throttle(void *arg)
{
	Datum	   *a = arg;
	Oid			types[2] = {INT4OID, TIMESTAMPTZOID};

	if (SPI_execute_with_args("SELECT hub._throttle_endpoint($1, $2)", 2, types, a, NULL, false, 0)
		!= SPI_OK_SELECT)
		elog(ERROR, "recording a throttle failed");
}

/*
 * hub_endpoints_record_throttles --- record the throttles noted since the
 * last call in hub.endpoints.throttled_until, each in a subtransaction of
 * the current step (inside SPI): one that fails is a WARNING (this
 * dispatcher still honours it), never the step's end.
 */
void
hub_endpoints_record_throttles(void)
{
	ListCell   *a,
			   *b;

	if (throttle_ids == NIL)
		return;
	forboth(a, throttle_ids, b, throttle_untils)
	{
		Datum		args[2];
		HubStepError err;

		args[0] = Int32GetDatum(lfirst_int(a));
		args[1] = TimestampTzGetDatum(*(TimestampTz *) lfirst(b));
		if (!hub_guard_run(record_throttle, args, &err))
			ereport(hub_error_is_general(err.sqlerrcode) ? ERROR : WARNING,
					(errcode(err.sqlerrcode),
					 errmsg("logistics_hub %s: recording the throttle of endpoint %d failed: %s",
							hub_worker_name, lfirst_int(a), err.message)));
	}
	list_free_deep(throttle_untils);
	list_free(throttle_ids);
	throttle_ids = throttle_untils = NIL;
}
