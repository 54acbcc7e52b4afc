/*-------------------------------------------------------------------------
 *
 * dispatcher.c
 *		The dispatcher background worker: claims deliveries, sends them over
 *		HTTP with libcurl's multi interface and records the outcomes.
 *
 * One loop, three kinds of step, never a transaction open during HTTP:
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
 * endpoint paused with the reason (claim_isolated, record,
 * reload_endpoints; workers/step_guard.c).  An error of the server's
 * rather than the data's (the extension being dropped, a lock) ends the
 * process with exit code 1 and the launcher starts it again; leases it
 * held expire or, for its next incarnation, are given back at start.
 * Its WARNINGs and errors are one log line each, naming the worker and the
 * step (dispatcher_log_hook); their CONTEXT goes to DEBUG1.
 *
 * workers/dispatcher.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>
#include <sys/epoll.h>
#include <signal.h>

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "libpq/pqsignal.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/value.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "dispatch.h"
#include "hub_workers.h"
#include "sealed.h"

#define MAX_EPOLL_EVENTS 64

/*
 * A claim takes from each endpoint no more than makes this dispatcher hold
 * (queued and in flight) this many times its share of the endpoint's
 * connections: what it can start in as many rounds.  Without the cap the
 * first dispatcher to claim would take a spread endpoint's whole backlog
 * (claim after claim, right after its own completions) and send it over
 * its share alone while the others sharing the endpoint found nothing.
 */
#define CLAIM_ROUNDS 8

/* a finished request's outcome, kept until the record step */
typedef struct HubResult
{
	HubRequest *req;
	long		http_status;	/* 0: none (transport error) */
	char	   *error;			/* NULL on success */
	int			latency_ms;
	int64		retry_after_s;	/* -1: none */
	bool		deferred;		/* give back without an attempt */
	TimestampTz defer_until;
	bool		counted;		/* its failure already counts through another result */
} HubResult;

/*
 * A lease group (hub.subscriptions.lease_group): one delivery, one lease,
 * one request per event.  Each request's outcome waits in its slot until
 * the last one is in; the group is then recorded at once (see record).
 */
typedef struct HubGroupSlot
{
	char	   *event_id;
	long		http_status;
	char	   *error;			/* NULL on success */
	char	   *excerpt;		/* NULL: none */
	int			latency_ms;
	int64		retry_after_s;
	bool		deferred;
	TimestampTz defer_until;
	bool		counted;
} HubGroupSlot;

typedef struct HubGroup
{
	int64		delivery_id;
	int64		lease_token;
	HubEndpoint *ep;
	int			n;				/* events */
	int			left;			/* outcomes still to come */
	HubGroupSlot *slots;
} HubGroup;

static int	my_slot;
static char worker_name[64];
static const char *current_step = NULL; /* for log lines; NULL between steps */
static emit_log_hook_type prev_emit_log_hook = NULL;
static MemoryContext dispatcher_cxt;	/* lives as long as the process */
static MemoryContext loop_cxt;	/* reset every loop */
static HTAB *endpoints;
static dlist_head active_endpoints = DLIST_STATIC_INIT(active_endpoints);
static CURLM *multi = NULL;
static int	epoll_fd = -1;
static TimestampTz curl_deadline = 0;	/* 0: no timer */
static int	in_flight = 0;
static int	queued_total = 0;
static dlist_head token_fetches = DLIST_STATIC_INIT(token_fetches); /* in flight */
static List *results = NIL;		/* of HubResult, in dispatcher_cxt */
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
static SPIPlanPtr route_plan,
			claim_plan,
			claim_transformed_plan,
			claim_one_plan,
			probes_plan,
			endpoints_plan,
			complete_plan,
			fail_plan,
			defer_plan,
			due_plan,
			split_plan;

/* ---------------------------------------------------------------- curl glue */

static int
on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct epoll_event ev;

	memset(&ev, 0, sizeof(ev));
	ev.data.fd = s;
	if (what == CURL_POLL_REMOVE)
	{
		(void) epoll_ctl(epoll_fd, EPOLL_CTL_DEL, s, NULL);
		return 0;
	}
	if (what & CURL_POLL_IN)
		ev.events |= EPOLLIN;
	if (what & CURL_POLL_OUT)
		ev.events |= EPOLLOUT;
	if (epoll_ctl(epoll_fd, EPOLL_CTL_MOD, s, &ev) != 0 &&
		epoll_ctl(epoll_fd, EPOLL_CTL_ADD, s, &ev) != 0)
		return -1;
	return 0;
}

static int
on_timer(CURLM *m, long timeout_ms, void *userp)
{
	curl_deadline = timeout_ms < 0 ? 0 :
		GetCurrentTimestamp() + (int64) timeout_ms * 1000;
	return 0;
}

/*
 * Drive libcurl with every signal blocked, so that a resolver thread it
 * starts inherits a fully blocked mask and PostgreSQL's handlers only ever
 * run on this thread.
 */
static void
drive(curl_socket_t fd, int flags)
{
	int			running;
	sigset_t	all,
				old;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	curl_multi_socket_action(multi, fd, flags, &running);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/*
 * token_abort --- stop the endpoint's token request, if any, without an
 * outcome: its queue waits for the next one (a reload changed the token URL
 * or the credentials, or the dispatcher exits).
 */
static void
token_abort(HubEndpoint *ep)
{
	HubTokenFetch *fetch = ep->token_fetch;

	if (fetch == NULL)
		return;
	curl_multi_remove_handle(multi, fetch->easy);
	dlist_delete(&fetch->node);
	in_flight--;
	ep->token_fetch = NULL;
	hub_oauth2_release(fetch);
}

static void
dispatcher_cleanup(int code, Datum arg)
{
	dlist_mutable_iter it;

	if (multi == NULL)
		return;
	dlist_foreach_modify(it, &token_fetches)
		token_abort(dlist_container(HubTokenFetch, node, it.cur)->ep);
	curl_multi_cleanup(multi);
	multi = NULL;
}

/* ---------------------------------------------------------------- endpoints */

static HubEndpoint *
endpoint_get(int id)
{
	bool		found;
	HubEndpoint *ep = hash_search(endpoints, &id, HASH_ENTER, &found);

	if (!found)
	{
		memset((char *) ep + sizeof(int), 0, sizeof(HubEndpoint) - sizeof(int));
		ep->cxt = AllocSetContextCreate(dispatcher_cxt, "logistics_hub endpoint", ALLOCSET_SMALL_SIZES);
		dlist_init(&ep->queue);
	}
	return ep;
}

static char *
spi_text(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/* is a text datum exactly this string? */
static bool
text_is(text *t, const char *s)
{
	size_t		len = strlen(s);

	return VARSIZE_ANY_EXHDR(t) == len && memcmp(VARDATA_ANY(t), s, len) == 0;
}

/*
 * body_content_type --- the Content-Type of a request of this body_format:
 * CloudEvents' own media types for its structured and batched modes.
 */
static const char *
body_content_type(text *format)
{
	if (text_is(format, "cloudevents"))
		return "application/cloudevents+json";
	if (text_is(format, "cloudevents_batch"))
		return "application/cloudevents-batch+json";
	return "application/json";
}

static char **
spi_text_array(HeapTuple tup, TupleDesc desc, int col, int *n)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);
	Datum	   *elems;
	bool	   *nulls;
	int			count;
	char	  **out;
	int			k = 0;

	*n = 0;
	if (isnull)
		return NULL;
	deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &count);
	out = palloc0(sizeof(char *) * Max(count, 1));
	for (int i = 0; i < count; i++)
		if (!nulls[i])
			out[k++] = TextDatumGetCString(elems[i]);
	*n = k;
	return out;
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
 * dispatcher_cxt.
 */
static List *unsealed_ids = NIL;
static List *unsealed_reasons = NIL;
static SPIPlanPtr pause_plan = NULL;

static SPIPlanPtr prepare(const char *sql, int nargs, Oid *types);

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
	old = MemoryContextSwitchTo(dispatcher_cxt);
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

		pause_plan = prepare("SELECT hub._pause_unsealed($1, $2)", 2, types);
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
	HubEndpoint *ep = endpoint_get(id);
	MemoryContext old;
	char	   *url;
	Datum		rate;
	bool		usable;

	MemoryContextReset(ep->cxt);
	old = MemoryContextSwitchTo(ep->cxt);
	ep->config_gen++;			/* (handles set up before are set up again) */
	if (ep->config_gen == 0)
		ep->config_gen = 1;
	url = spi_text(tup, desc, 2);
	ep->url = url;
	ep->timeout_ms = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
	ep->max_concurrency = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
	rate = SPI_getbinval(tup, desc, 5, &isnull);
	ep->rate_limit = isnull ? 0 : DatumGetFloat8(rate);
	ep->allow_redirects = DatumGetBool(SPI_getbinval(tup, desc, 6, &isnull));
	ep->auth_kind = auth_kind(spi_text(tup, desc, 7));
	ep->api_key_header = spi_text(tup, desc, 8);
	ep->oauth2_token_url = spi_text(tup, desc, 9);
	ep->headers = spi_text_array(tup, desc, 10, &ep->nheaders);
	usable = endpoint_open_secrets(ep, tup, desc);
	usable = DatumGetBool(SPI_getbinval(tup, desc, 15, &isnull)) && usable;
	ep->usable_again = DatumGetTimestampTz(SPI_getbinval(tup, desc, 16, &isnull));

	/* the rate window: at most rate_n starts in rate_n / rate seconds */
	if (ep->rate_limit > 0)
	{
		int			n = (int) Max(1.0, Min(floor(ep->rate_limit), 10000.0));

		if (n != ep->rate_n)
		{
			if (ep->rate_starts != NULL)
				pfree(ep->rate_starts);
			ep->rate_starts = MemoryContextAllocZero(dispatcher_cxt, sizeof(TimestampTz) * n);
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

	/*
	 * A new token URL or new client credentials (or no OAuth2 any more):
	 * the token and a token request in flight belong to the old ones.  The
	 * request is stopped rather than left to finish, so that fixing a token
	 * URL that hangs takes effect within a second, not after the timeout.
	 * (A request in flight needs none of the strings freed above: libcurl
	 * copied them.)
	 */
	ep->oauth2_cred_hash = hub_oauth2_cred_hash(ep);
	if (ep->token_fetch != NULL && ep->token_fetch->cred_hash != ep->oauth2_cred_hash)
		token_abort(ep);
	if (ep->oauth2_token != NULL && ep->oauth2_token_hash != ep->oauth2_cred_hash)
	{
		free(ep->oauth2_token);
		ep->oauth2_token = NULL;
		ep->oauth2_expires = 0;
	}
}

/* ---------------------------------------------------------------- SQL */

static SPIPlanPtr
prepare(const char *sql, int nargs, Oid *types)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

static void
prepare_plans(void)
{
	Oid			claim_types[] = {INT4OID, TEXTOID, INT4OID, INT4OID, INT4OID, TEXTOID, INT4OID, INT4OID,
	INT4ARRAYOID, INT4ARRAYOID, INT8OID, INT4OID};
	Oid			ids[] = {INT4ARRAYOID, INT4OID, INT4OID};
	Oid			complete_types[] = {INT8ARRAYOID, INT8ARRAYOID, INT4ARRAYOID, INT4ARRAYOID, TEXTARRAYOID, TEXTOID,
	TEXTARRAYOID};
	Oid			split_types[] = {INT8OID, INT8OID, TEXTARRAYOID, TEXTARRAYOID};
	Oid			fail_types[] = {INT8OID, INT8OID, INT4OID, TEXTOID, INT4OID, TEXTOID, INT8OID, TEXTOID, BOOLOID};
	Oid			defer_types[] = {INT8OID, INT8OID, TIMESTAMPTZOID};
	Oid			probe_types[] = {INT4OID, INT4OID, TEXTOID, INT4OID, INT4OID, INT4OID, TEXTOID};

	if (claim_plan != NULL)
		return;

	/*
	 * The claim's three steps, each a statement of its own: from plpgsql
	 * (hub.claim_deliveries) every level of RETURN QUERY that the rows
	 * pass through copies each event's row, body and all, once more.
	 */
	route_plan = prepare("SELECT EXISTS (SELECT FROM hub.subscriptions WHERE transform IS NOT NULL) "
						 "FROM hub._route_events()", 0, NULL);
#define CLAIMED_COLUMNS "delivery_id, lease_token, endpoint_id, subscription_id, body_format, batch_max, " \
		"event_id::pg_catalog.text, body, batch_size"
	claim_plan = prepare("SELECT " CLAIMED_COLUMNS " FROM hub._claim($1, $2, pg_catalog.make_interval(secs => $3), "
						 "$4, $5, NULL, $7, $8, $9, $10, $6, $11)", 11, claim_types);
	claim_transformed_plan = prepare("SELECT " CLAIMED_COLUMNS " FROM hub._claim_transformed($1, $2, "
									 "pg_catalog.make_interval(secs => $3), $4, $5, NULL, $7, $8, $9, $10, $6, $11)",
									 11, claim_types);
	/* (claim_types has room for $12, the endpoint) */
	claim_one_plan = prepare("SELECT " CLAIMED_COLUMNS " FROM hub._claim_transformed($1, $2, "
							 "pg_catalog.make_interval(secs => $3), $4, $5, $12, $7, $8, $9, $10, $6, $11)",
							 12, claim_types);
	probes_plan = prepare("SELECT " CLAIMED_COLUMNS " FROM hub._claim_probes($1, $2, $3, "
						  "pg_catalog.make_interval(secs => $4), $5, $6, $7)", 7, probe_types);
	endpoints_plan = prepare("SELECT * FROM hub._dispatch_endpoints($1, $2, $3)", 3, ids);
	complete_plan = prepare("SELECT hub._complete_many($1, $2, $3, $4, $5, $6, $7::pg_catalog.uuid[])", 7, complete_types);
	split_plan = prepare("SELECT event_id::pg_catalog.text, delivery_id "
						 "FROM hub._split_group($1, $2, $3::pg_catalog.uuid[], $4::pg_catalog.uuid[])",
						 4, split_types);
	/* a delivery deleted meanwhile (its endpoint dropped) is skipped */
	fail_plan = prepare("SELECT hub.fail_delivery($1, $2, $3, $4, $5, $6, "
						"CASE WHEN $7 OPERATOR(pg_catalog.>=) 0 THEN pg_catalog.make_interval(secs => $7) END, $8, $9) "
						"FROM hub.deliveries WHERE delivery_id OPERATOR(pg_catalog.=) $1", 9, fail_types);
	defer_plan = prepare("SELECT hub.defer_delivery($1, $2, $3) "
						 "FROM hub.deliveries WHERE delivery_id OPERATOR(pg_catalog.=) $1", 3, defer_types);
	/* when a failed delivery is due again (none when it is dead) */
	due_plan = prepare("SELECT next_attempt_at FROM hub.deliveries "
					   "WHERE delivery_id OPERATOR(pg_catalog.=) $1 "
					   "AND state OPERATOR(pg_catalog.=) 'retry_wait'", 1, defer_types);
}

/*
 * dispatcher_log_hook --- emit_log_hook of a dispatcher: a WARNING or an
 * error that comes out during one of its steps (an error in its own SQL,
 * a WARNING of a function it calls) is one line naming the worker and the
 * step, "logistics_hub dispatcher 0: claim: <message>"; its CONTEXT (the
 * PL/pgSQL calls and statement texts, some 80 lines for a claim) goes to a
 * DEBUG1 line of its own, written just before it.  A message that already
 * names the worker ("logistics_hub ...") keeps its text.  Cannot fail: a
 * DEBUG1 report does not throw, and this hook does not run for its own.
 */
static void
dispatcher_log_hook(ErrorData *edata)
{
	static bool busy = false;

	if (!busy && edata->output_to_server && edata->elevel >= WARNING && current_step != NULL)
	{
		busy = true;
		if (edata->message != NULL && strncmp(edata->message, "logistics_hub ", 14) != 0)
			edata->message = psprintf("logistics_hub %s: %s: %s", worker_name, current_step, edata->message);
		if (edata->context != NULL)
		{
			const char *context = edata->context;
			ErrorContextCallback *stack = error_context_stack;

			edata->context = NULL;
			/* (the callbacks already wrote the context; not twice) */
			error_context_stack = NULL;
			/* (nor may its end check for interrupts inside this report) */
			HOLD_INTERRUPTS();
			ereport(DEBUG1,
					(errmsg_internal("%s", edata->message ? edata->message : ""),
					 errcontext("%s", context)));
			RESUME_INTERRUPTS();
			error_context_stack = stack;
		}
		busy = false;
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

static void
begin_step(const char *what)
{
	/* the step's name for log lines: what, without "logistics_hub: " */
	current_step = strncmp(what, "logistics_hub: ", 15) == 0 ? what + 15 : what;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, what);
}

static void
end_step(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	current_step = NULL;

	/*
	 * The commit left TopMemoryContext current: what the loop allocates
	 * next (error messages, a token answer being parsed) belongs to this
	 * loop and goes with its reset, not into a context never reset.
	 */
	MemoryContextSwitchTo(loop_cxt);
}

/* does hub.<name>() exist?  Inside a transaction. */
static bool
hub_function_exists(const char *name)
{
	return FuncnameGetCandidates(list_make2(makeString("hub"), makeString(pstrdup(name))),
								 -1, NIL, false, false, false, true) != NULL;
}

/*
 * is the extension (at a version with workers) installed here?  Inside a
 * transaction.
 */
static bool
extension_present(void)
{
	return OidIsValid(get_extension_oid("logistics_hub", true)) &&
		hub_function_exists("_claim_probes");
}

static Datum
int_array(int64 *v, int n, bool wide)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		d[i] = wide ? Int64GetDatum(v[i]) : Int32GetDatum((int32) v[i]);
	return PointerGetDatum(construct_array(d, n, wide ? INT8OID : INT4OID, wide ? 8 : 4,
										   wide ? FLOAT8PASSBYVAL : true,
										   wide ? TYPALIGN_DOUBLE : TYPALIGN_INT));
}

/*
 * an excerpt cut to text valid in the database encoding, without NULs, and
 * without the secrets the request carried (hub_http_redact)
 */
static char *
excerpt_text(HubRequest *req)
{
	int			len = req->excerpt.len;
	char	   *s = req->excerpt.data;

	for (int i = 0; i < len; i++)
		if (s[i] == '\0')
		{
			len = i;
			break;
		}
	/* the valid prefix (an excerpt may end inside a character) */
	len = pg_encoding_verifymbstr(GetDatabaseEncoding(), s, len);
	return hub_http_redact(req, pnstrdup(s, len),
						   len < req->excerpt.len || req->received > (size_t) req->excerpt.len);
}

/* ---------------------------------------------------------------- claim */

/*
 * Request contexts are reset and kept for the next request rather than
 * deleted: a request's struct, body, excerpt and headers fit in the first
 * block, so a busy dispatcher makes and frees requests without a malloc
 * of its own.  At most REQUEST_CONTEXTS_KEPT wait (one claim's worth).
 */
#define REQUEST_BLOCK 4096
#define REQUEST_CONTEXTS_KEPT 1024
static MemoryContext kept_contexts[REQUEST_CONTEXTS_KEPT];
static int	nkept = 0;

static HubRequest *
request_new(HubEndpoint *ep, int subscription_id, int batch_max, bool batch)
{
	MemoryContext cxt = nkept > 0 ? kept_contexts[--nkept] :
		AllocSetContextCreate(dispatcher_cxt, "logistics_hub request", 0, REQUEST_BLOCK, 8 * REQUEST_BLOCK);
	HubRequest *req = MemoryContextAllocZero(cxt, sizeof(HubRequest));

	req->cxt = cxt;
	req->ep = ep;
	req->subscription_id = subscription_id;
	req->batch_max = batch_max;
	req->batch = batch;
	req->cap = batch ? Max(1, batch_max) : 1;
	req->delivery_ids = MemoryContextAlloc(cxt, sizeof(int64) * req->cap);
	req->lease_tokens = MemoryContextAlloc(cxt, sizeof(int64) * req->cap);
	req->claimed_at = GetCurrentTimestamp();
	{
		MemoryContext old = MemoryContextSwitchTo(cxt);

		initStringInfo(&req->body);
		initStringInfo(&req->excerpt);
		MemoryContextSwitchTo(old);
	}
	return req;
}

static void
request_free(HubRequest *req)
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

static void
endpoint_enqueue(HubEndpoint *ep, HubRequest *req)
{
	dlist_push_tail(&ep->queue, &req->node);
	ep->queued++;
	queued_total++;
	if (!ep->active)
	{
		dlist_push_tail(&active_endpoints, &ep->active_node);
		ep->active = true;
	}
}

/*
 * group_request --- the request of a lease group's event k: a delivery of
 * one event as far as sending goes (its own webhook-id, body and
 * signature), recorded through its group.
 */
static void
group_request(HubGroup *g, int k, int subscription_id, text *format, Datum event_id, text *body)
{
	HubRequest *req = request_new(g->ep, subscription_id, 1, false);

	req->content_type = body_content_type(format);
	req->webhook_id = MemoryContextStrdup(req->cxt, TextDatumGetCString(event_id));
	appendBinaryStringInfo(&req->body, VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body));
	req->delivery_ids[0] = g->delivery_id;
	req->lease_tokens[0] = g->lease_token;
	req->n = 1;
	req->events = 1;
	req->group = g;
	req->group_slot = k;
	g->slots[k].event_id = MemoryContextStrdup(dispatcher_cxt, req->webhook_id);
	endpoint_enqueue(g->ep, req);
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

static void
group_free(HubGroup *g)
{
	for (int k = 0; k < g->n; k++)
	{
		if (g->slots[k].event_id)
			pfree(g->slots[k].event_id);
		if (g->slots[k].error)
			pfree(g->slots[k].error);
		if (g->slots[k].excerpt)
			pfree(g->slots[k].excerpt);
	}
	pfree(g->slots);
	pfree(g);
}

/*
 * begin_work_step --- begin_step for a step that needs the extension: a
 * dispatcher whose extension is gone (DROP EXTENSION) leaves quietly with
 * exit code 0; the launcher starts it again once the extension is back.
 */
static void
begin_work_step(const char *what)
{
	begin_step(what);
	if (!extension_present())
	{
		end_step();
		ereport(DEBUG1, (errmsg("logistics_hub dispatcher %d: extension not installed in this database, exiting", my_slot)));
		proc_exit(0);
	}
	prepare_plans();
}

/*
 * nshards --- how many dispatchers split the work (hub._serves): a slot
 * beyond the setting, still finishing after it was lowered, counts as one.
 */
static int
nshards(void)
{
	return Max(hub_dispatchers, my_slot + 1);
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

	args[0] = PointerGetDatum(construct_array(r->ids, r->nids, INT4OID, 4, true, TYPALIGN_INT));
	args[1] = Int32GetDatum(my_slot);
	args[2] = Int32GetDatum(nshards());
	if (SPI_execute_plan(endpoints_plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading endpoints failed");
	for (uint64 i = 0; i < SPI_processed; i++)
		endpoint_load(SPI_tuptable->vals[i], SPI_tuptable->tupdesc);
	pause_unsealed();
}

/*
 * reload_endpoints --- re-read the settings of the endpoints in ids (nids of
 * them) and of every endpoint with queued requests not read for a second:
 * paused, resumed, re-pointed or its circuit opened meanwhile?  Inside a
 * step's transaction; ids must have room for every known endpoint more.
 * An endpoint whose settings cannot be read is paused with the reason.
 */
static void
reload_endpoints(Datum *ids, int nids, TimestampTz now)
{
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
	}
	if (nids > 0)
	{
		ReloadArgs	a = {ids, nids};
		HubStepError err;

		if (hub_guard_run(reload_some, &a, &err))
			return;
		if (hub_error_is_general(err.sqlerrcode))
			ereport(ERROR,
					(errcode(err.sqlerrcode),
					 errmsg("logistics_hub %s: reading endpoints failed: %s", worker_name, err.message)));
		/* one at a time: pause the endpoints that cannot be read */
		for (int i = 0; i < nids; i++)
		{
			a.ids = &ids[i];
			a.nids = 1;
			if (!hub_guard_run(reload_some, &a, &err))
			{
				HubEndpoint *ep = endpoint_get(DatumGetInt32(ids[i]));

				ereport(hub_error_is_general(err.sqlerrcode) ? ERROR : WARNING,
						(errcode(err.sqlerrcode),
						 errmsg("logistics_hub %s: reading endpoint %d failed: %s",
								worker_name, ep->endpoint_id, err.message)));
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
	HASH_SEQ_STATUS seq;
	HubEndpoint *known;

	c->args[0] = Int32GetDatum(Max(1, Min(max, (int) ceil(max / claim_events_per_delivery))));
	c->args[1] = CStringGetTextDatum(worker_name);
	c->args[2] = Int32GetDatum(hub_lease_seconds);
	c->args[3] = Int32GetDatum(my_slot);
	c->args[4] = Int32GetDatum(nshards());
	c->args[5] = CStringGetTextDatum(hub_event_source);
	c->args[6] = Int32GetDatum(max);
	c->args[7] = Int32GetDatum(CLAIM_ROUNDS);
	/* what this dispatcher holds of each endpoint: queued and in flight */
	held_ids = palloc(sizeof(int64) * (hash_get_num_entries(endpoints) + 1));
	held = palloc(sizeof(int64) * (hash_get_num_entries(endpoints) + 1));
	hash_seq_init(&seq, endpoints);
	while ((known = hash_seq_search(&seq)) != NULL)
	{
		if (known->queued + known->in_flight == 0)
			continue;
		held_ids[nheld] = known->endpoint_id;
		held[nheld++] = known->queued + known->in_flight;
	}
	c->args[8] = int_array(held_ids, nheld, false);
	c->args[9] = int_array(held, nheld, false);
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
			 errmsg("logistics_hub %s: %s failed: %s", worker_name, what, err->message)));
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

	begin_work_step("logistics_hub: claim");
	claim_args(c, max);
	PG_TRY();
	{
		claim_route(c);
		claim_lease(c);
		claim_probes(c);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(loop_cxt);
		hub_step_error_take(&err);
		AbortCurrentTransaction();
		MemoryContextSwitchTo(loop_cxt);
		failed = true;
	}
	PG_END_TRY();
	if (!failed)
		return;
	if (hub_error_is_general(err.sqlerrcode))
		ereport(ERROR,
				(errcode(err.sqlerrcode),
				 errmsg("logistics_hub %s: claim failed: %s", worker_name, err.message)));
	ereport(WARNING,
			(errcode(err.sqlerrcode),
			 errmsg("logistics_hub %s: claim failed: %s", worker_name, err.message),
			 errdetail("Claiming again piece by piece, so that only what fails stops.")));
	begin_work_step("logistics_hub: claim, piece by piece");
	claim_args(c, max);
	claim_isolated(c);
}

/*
 * claim --- one transaction: lease up to max events and, beyond the first
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
static int
claim(int max)
{
	HubClaim	c;
	int			n;
	int			ndeliveries = 0;
	int64		last_delivery = -1;
	Datum	   *ids;
	int			nids = 0;
	HubRequest *open_batch = NULL;
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
	ids = palloc(sizeof(Datum) * (n + 1 + hash_get_num_entries(endpoints)));

	tc = list_head(c.tables);
	table = tc ? lfirst(tc) : NULL;
	row = 0;
	for (int i = 0; i < n; i++)
	{
		Datum		v[9];
		bool		isnull[9];
		int64		delivery_id;
		int64		token;
		int			subscription_id;
		text	   *format;
		int			batch_max;
		text	   *body;
		int			batch_size;
		HubEndpoint *ep;
		bool		batch;
		HubRequest *req;

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
		ep = endpoint_get(DatumGetInt32(v[2]));
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
		batch = text_is(format, "batch") || text_is(format, "cloudevents_batch");

		if (delivery_id == last_delivery && open_batch != NULL)
		{
			/* the next event of a batch delivery */
			appendStringInfoChar(&open_batch->body, ',');
			appendBinaryStringInfo(&open_batch->body, VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body));
			open_batch->events++;
			continue;
		}
		if (delivery_id == last_delivery && group != NULL)
		{
			/* the next event of a lease group */
			group_request(group, group_filled++, subscription_id, format, v[6], body);
			continue;
		}
		group_finish(group, group_filled);
		group = NULL;
		last_delivery = delivery_id;
		ndeliveries++;

		if (!ep->loaded || now - ep->loaded_at > USECS_PER_SEC)
		{
			ep->loaded = false;
			ids[nids++] = Int32GetDatum(ep->endpoint_id);
			ep->loaded_at = now;	/* once per claim */
		}
		if (batch_size > 1 && !batch)
		{
			group = MemoryContextAllocZero(dispatcher_cxt, sizeof(HubGroup));
			group->delivery_id = delivery_id;
			group->lease_token = token;
			group->ep = ep;
			group->n = group->left = batch_size;
			group->slots = MemoryContextAllocZero(dispatcher_cxt, sizeof(HubGroupSlot) * batch_size);
			group_filled = 0;
			open_batch = NULL;
			group_request(group, group_filled++, subscription_id, format, v[6], body);
			continue;
		}
		if (batch && open_batch != NULL && open_batch->subscription_id == subscription_id &&
			open_batch->n < open_batch->cap && open_batch->events + batch_size <= open_batch->batch_max)
			req = open_batch;
		else
		{
			char	   *event_id = TextDatumGetCString(v[6]);

			req = request_new(ep, subscription_id, batch_max, batch);
			req->content_type = body_content_type(format);
			req->webhook_id = MemoryContextStrdup(req->cxt, batch ? psprintf("batch_%s", event_id) : event_id);
			if (batch)
				appendStringInfoChar(&req->body, '[');
			endpoint_enqueue(ep, req);
			open_batch = batch ? req : NULL;
		}
		if (req->batch && req->n > 0)
			appendStringInfoChar(&req->body, ',');
		appendBinaryStringInfo(&req->body, VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body));
		req->delivery_ids[req->n] = delivery_id;
		req->lease_tokens[req->n] = token;
		req->n++;
		req->events++;
	}
	group_finish(group, group_filled);
	if (ndeliveries > 0)
		claim_events_per_delivery = (double) n / ndeliveries;

	reload_endpoints(ids, nids, now);
	end_step();

	return n;
}

/*
 * refresh --- what a claim does besides claiming, for a dispatcher whose
 * queues are full and that therefore does not claim: leave if the extension
 * is gone, and re-read the endpoints with queued requests, so that a pause,
 * a new URL or an opened circuit reaches them even while every connection
 * hangs.
 */
static void
refresh(void)
{
	Datum	   *ids;

	begin_work_step("logistics_hub: refresh");
	ids = palloc(sizeof(Datum) * (1 + hash_get_num_entries(endpoints)));
	reload_endpoints(ids, 0, GetCurrentTimestamp());
	end_step();
}

/* ---------------------------------------------------------------- send */

static HubResult *
add_result(HubRequest *req, long status, char *error, int64 retry_after, bool deferred,
		   TimestampTz until)
{
	MemoryContext old = MemoryContextSwitchTo(dispatcher_cxt);
	HubResult  *r = palloc0(sizeof(HubResult));

	r->req = req;
	r->http_status = status;
	r->error = error ? pstrdup(error) : NULL;
	r->latency_ms = req->started_at ? (int) ((GetCurrentTimestamp() - req->started_at) / 1000) : 0;
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

static void
endpoint_dequeue(HubEndpoint *ep, HubRequest *req)
{
	dlist_delete(&req->node);
	ep->queued--;
	queued_total--;
}

/*
 * rate_wait_us --- how long until the rate limit lets one more request start
 * (0: now).  Two rules: never more than rate_n starts in rate_window_us
 * (the limit itself), and starts spaced by 1/rate.  Without the spacing a
 * full window would go out as a burst at its start, and a receiver counting
 * arrivals in its own one-second windows could see two bursts, twice the
 * limit, in one of them; spaced, any window holds the limit give or take
 * one request.
 */
static int64
rate_wait_us(HubEndpoint *ep, TimestampTz now)
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
 * batch_close --- end a batch's JSON array and name the batch by its content:
 * the first event's id and a hash of the body.  Each delivery of a failed
 * batch has its own backoff, so a retry may group other events behind the
 * same first one; an id naming only that event would then be reused for
 * another body, and a receiver deduplicating on it would drop events.
 */
static void
batch_close(HubRequest *req)
{
	uint64		h;

	appendStringInfoChar(&req->body, ']');
	h = hash_bytes_extended((const unsigned char *) req->body.data, req->body.len, 0);
	req->webhook_id = MemoryContextStrdup(req->cxt,
										  psprintf("%s_%016llx", req->webhook_id, (unsigned long long) h));
}

/* every queued request of the endpoint fails with error (an attempt each) */
static void
endpoint_fail_queue(HubEndpoint *ep, char *error)
{
	bool		first = true;

	while (!dlist_is_empty(&ep->queue))
	{
		HubRequest *r = dlist_head_element(HubRequest, node, &ep->queue);

		endpoint_dequeue(ep, r);
		/* one failure (of the token request) counts once for the circuit */
		add_result(r, 0, error, -1, false, 0)->counted = !first;
		first = false;
	}
}

/*
 * token_start --- start the endpoint's token request on the multi handle
 * (the caller checked that none is in flight).  One that cannot start fails
 * the whole queue at once, as a failed answer does (token_done): one token
 * error per queued request, each retried with its backoff, never a token
 * request per queued request.
 *
 * A token request counts towards logistics_hub.max_in_flight (it is an open
 * transfer and connection of this process, and pump starts it only below
 * that cap) but not towards the endpoint's max_concurrency, which protects
 * the endpoint's API, usually another server than its token URL, and would
 * otherwise delay a refresh behind the endpoint's own requests.
 */
static void
token_start(HubEndpoint *ep)
{
	char	   *error;
	HubTokenFetch *fetch;
	CURLMcode	mrc;

	/* an expired or refused token is of no use any more */
	if (ep->oauth2_token != NULL)
	{
		free(ep->oauth2_token);
		ep->oauth2_token = NULL;
	}
	fetch = hub_oauth2_prepare(ep, dispatcher_cxt, &error);
	if (fetch == NULL)
	{
		endpoint_fail_queue(ep, error);
		return;
	}
	if ((mrc = curl_multi_add_handle(multi, fetch->easy)) != CURLM_OK)
	{
		hub_oauth2_release(fetch);
		endpoint_fail_queue(ep, psprintf("oauth2 token request not sent: %s", curl_multi_strerror(mrc)));
		return;
	}
	dlist_push_tail(&token_fetches, &fetch->node);
	ep->token_fetch = fetch;
	in_flight++;
}

/*
 * token_done --- a token request finished with rc: the token is cached and
 * the next pump lets the queue go, or the queue fails with the error.
 */
static void
token_done(HubTokenFetch *fetch, CURLcode rc)
{
	HubEndpoint *ep = fetch->ep;
	char	   *error;

	curl_multi_remove_handle(multi, fetch->easy);
	dlist_delete(&fetch->node);
	in_flight--;
	ep->token_fetch = NULL;
	if (!hub_oauth2_finish(fetch, rc, &error))
		endpoint_fail_queue(ep, error);
	hub_oauth2_release(fetch);
}

/* the token request whose easy handle's private pointer is p, or NULL */
static HubTokenFetch *
token_fetch_of(void *p)
{
	dlist_iter	it;

	dlist_foreach(it, &token_fetches)
		if (dlist_container(HubTokenFetch, node, it.cur) == p)
			return (HubTokenFetch *) p;
	return NULL;
}

/*
 * pump --- start every queued request the limits allow; give back those
 * that cannot go (endpoint paused or circuit open, or waited too long).
 * Returns the earliest time a rate-limited request may start (0: none).
 */
static TimestampTz
pump(void)
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
			CURLMcode	mrc;

			if (!ep->usable || now - req->claimed_at > max_wait)
			{
				endpoint_dequeue(ep, req);
				add_result(req, 0, NULL, -1, true,
						   ep->usable ? now : Max(now, ep->usable_again));
				continue;
			}
			if (!ep->loaded || in_flight >= hub_max_in_flight)
				break;
			if (ep->auth_kind == HUB_AUTH_OAUTH2 &&
				(ep->oauth2_token == NULL || (ep->oauth2_expires <= now && !ep->oauth2_fresh)))
			{
				/* the queue waits for the token, spending no attempt */
				if (ep->token_fetch == NULL)
					token_start(ep);
				break;
			}
			if (ep->in_flight >= ep->max_concurrency)
				break;
			wait = rate_wait_us(ep, now);
			if (wait > 0)
			{
				if (next == 0 || now + wait < next)
					next = now + wait;
				break;
			}
			endpoint_dequeue(ep, req);
			if (req->batch)
				batch_close(req);
			req->started_at = now;
			if (hub_http_prepare(req, &error) == NULL)
			{
				add_result(req, 0, error, -1, false, 0);
				continue;
			}
			if (ep->rate_n > 0)
			{
				ep->rate_starts[ep->rate_pos] = now;
				ep->rate_pos = (ep->rate_pos + 1) % ep->rate_n;
			}
			if ((mrc = curl_multi_add_handle(multi, req->easy)) != CURLM_OK)
			{
				add_result(req, 0, psprintf("could not start the transfer: %s", curl_multi_strerror(mrc)),
						   -1, false, 0);
				hub_http_release(req);
				continue;
			}
			ep->in_flight++;
			in_flight++;
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

/* collect finished transfers */
static void
collect(void)
{
	CURLMsg    *msg;
	int			left;

	while ((msg = curl_multi_info_read(multi, &left)) != NULL)
	{
		HubRequest *req;
		void	   *priv = NULL;
		HubTokenFetch *fetch;
		long		status = 0;
		curl_off_t	retry_after = -1;
		CURLcode	rc = msg->data.result;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &priv);
		if ((fetch = token_fetch_of(priv)) != NULL)
		{
			token_done(fetch, rc);
			continue;
		}
		req = (HubRequest *) priv;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
		curl_multi_remove_handle(multi, msg->easy_handle);
		req->ep->in_flight--;
		in_flight--;

		if (rc == CURLE_OK && status >= 200 && status < 300)
			add_result(req, status, NULL, -1, false, 0);
		else if (rc == CURLE_OK)
		{
			if (status == 429 || status == 503)
				curl_easy_getinfo(req->easy, CURLINFO_RETRY_AFTER, &retry_after);
			if (status == 401 && req->ep->auth_kind == HUB_AUTH_OAUTH2)
			{
				/*
				 * The access token was refused (rotated or revoked before it
				 * expired): drop it and record a transient failure, without
				 * the status that would make it a permanent 4xx; the retry
				 * fetches a new token.  Bad client credentials fail at the
				 * token endpoint, transient too, until max_attempts.  Only
				 * a refusal of the current token drops it: the other
				 * requests that went out with the old one come back with
				 * 401 too, and must not each cost another token request.
				 */
				if (req->token_generation == req->ep->oauth2_generation)
				{
					req->ep->oauth2_expires = 0;
					req->ep->oauth2_fresh = false;
				}
				add_result(req, 0, "HTTP 401: the OAuth2 access token was refused; the retry fetches a new one",
						   -1, false, 0);
			}
			else
				add_result(req, status,
						   status >= 300 && status < 400 ? "redirect not followed" : "",
						   retry_after > 0 ? (int64) retry_after : -1, false, 0);
		}
		else
		{
			char	   *error;

			if (req->egress.refused != NULL)
				error = pstrdup(req->egress.refused);
			else if (req->egress.blocked)
				error = psprintf("blocked by egress policy: address %s", req->egress.address);
			else if (req->too_big || rc == CURLE_FILESIZE_EXCEEDED)
				error = psprintf("response larger than %d bytes", hub_max_response_bytes);
			else
				error = psprintf("%s%s%s", curl_easy_strerror(rc),
								 req->errbuf[0] ? ": " : "", req->errbuf);
			add_result(req, 0, error, -1, false, 0);
		}
		hub_http_release(req);
	}
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
	a[7] = CStringGetTextDatum(worker_name);
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

	begin_step("logistics_hub: record results");
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
		HubRequest *req = r->req;
		char	   *excerpt = req->excerpt.len > 0 ? excerpt_text(req) : NULL;

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
					failed_eps[nfailed++] = Int32GetDatum(req->ep->endpoint_id);
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

		a[0] = int_array(done.ids, done.n, true);
		a[1] = int_array(done.tokens, done.n, true);
		a[2] = int_array(done.statuses, done.n, false);
		a[3] = int_array(done.latencies, done.n, false);
		a[4] = PointerGetDatum(construct_md_array(done.excerpts, done.excerpt_nulls, 1, dims, lbs,
												  TEXTOID, -1, false, TYPALIGN_INT));
		a[5] = CStringGetTextDatum(worker_name);
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
		Datum		a[3];

		a[0] = PointerGetDatum(construct_array(failed_eps, nfailed, INT4OID, 4, true, TYPALIGN_INT));
		a[1] = Int32GetDatum(my_slot);
		a[2] = Int32GetDatum(nshards());

		/*
		 * not read-only: a read-only execution uses the step's first
		 * snapshot and would not see the circuit the failures above
		 * just opened
		 */
		if (SPI_execute_plan(endpoints_plan, a, NULL, false, 0) == SPI_OK_SELECT)
		{
			for (uint64 i = 0; i < SPI_processed; i++)
				endpoint_load(SPI_tuptable->vals[i], SPI_tuptable->tupdesc);
			pause_unsealed();
		}
	}
	end_step();
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
		MemoryContextSwitchTo(loop_cxt);
		hub_step_error_take(err);
		AbortCurrentTransaction();
		MemoryContextSwitchTo(loop_cxt);
		ok = false;
	}
	PG_END_TRY();
	if (!ok && hub_error_is_general(err->sqlerrcode))
		ereport(ERROR,
				(errcode(err->sqlerrcode),
				 errmsg("logistics_hub %s: recording outcomes failed: %s", worker_name, err->message)));
	return ok;
}

/* record_pause --- in a transaction of its own, pause an endpoint whose outcomes cannot be recorded */
static void
record_pause(HubEndpoint *ep, HubStepError *err)
{
	ereport(WARNING,
			(errcode(err->sqlerrcode),
			 errmsg("logistics_hub %s: recording an outcome of endpoint %d failed: %s",
					worker_name, ep->endpoint_id, err->message)));
	begin_step("logistics_hub: pause an endpoint");
	hub_guard_pause(ep->endpoint_id, "pause_failing",
					psprintf("a dispatcher could not record an outcome: %s", err->message));
	end_step();
}

/*
 * record --- the outcomes of every finished request, lease groups once all
 * their requests are in, in one transaction (record_write).  When that
 * fails because of some outcome, each request's or group's outcome is
 * recorded again in a transaction of its own: one that still fails is
 * dropped (its lease runs out, and it is sent again) and its endpoint
 * paused with the reason, so that it cannot fail every record step.
 */
static void
record(void)
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
	 * keeps the others (in dispatcher_cxt) until then.
	 */
	foreach(lc, results)
	{
		HubResult  *r = lfirst(lc);
		HubRequest *req = r->req;
		HubGroup   *g = req->group;
		HubGroupSlot *sl;

		if (g == NULL)
		{
			singles = lappend(singles, r);
			continue;
		}
		sl = &g->slots[req->group_slot];
		sl->http_status = r->http_status;
		sl->error = r->error ? MemoryContextStrdup(dispatcher_cxt, r->error) : NULL;
		sl->excerpt = req->excerpt.len > 0 ? MemoryContextStrdup(dispatcher_cxt, excerpt_text(req)) : NULL;
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
				 errmsg("logistics_hub %s: recording outcomes failed: %s", worker_name, err.message),
				 errdetail("Recording them again one request at a time, so that only what fails stops.")));
		foreach(lc, singles)
		{
			HubResult  *r = lfirst(lc);

			if (!record_guarded(list_make1(r), NIL, &err))
				record_pause(r->req->ep, &err);
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
		request_free(((HubResult *) lfirst(lc))->req);
	MemoryContextSwitchTo(dispatcher_cxt);
	list_free_deep(results);
	results = NIL;
	nresults = 0;
	MemoryContextSwitchTo(loop_cxt);
}

/* is it time to record the results waiting?  (see RECORD_BATCH) */
static bool
record_due(TimestampTz now)
{
	return results != NIL &&
		(nresults >= RECORD_BATCH || in_flight == 0 ||
		 now - first_result_at >= RECORD_DELAY_MS * 1000L);
}

/* ---------------------------------------------------------------- start-up */

/* leases a previous incarnation of this dispatcher held are given back */
static void
release_old_leases(void)
{
	begin_step("logistics_hub: release leases");
	if (extension_present())
	{
		Datum		a[1] = {CStringGetTextDatum(worker_name)};
		Oid			t[1] = {TEXTOID};

		SPI_execute_with_args("SELECT hub._release_leases($1)", 1, t, a, NULL, false, 0);
	}
	end_step();
}

/*
 * release_retired_leases --- dispatcher 0 gives back the leases of a
 * dispatcher that is no longer wanted (logistics_hub.dispatchers lowered)
 * once it has exited: no incarnation of its name starts again to do it,
 * and its deliveries would otherwise wait for their whole lease.  Only
 * slots seen running by this process count, so this costs a few shared
 * memory reads a loop and one statement per retired dispatcher.
 */
static void
release_retired_leases(void)
{
	static uint32 seen = 0;		/* bit per slot seen running */
	static TimestampTz last = 0;
	TimestampTz now = GetCurrentTimestamp();

	/* (ten times a second is soon enough, and spares a busy loop) */
	if (now - last < USECS_PER_SEC / 10)
		return;
	last = now;
	for (int k = 1; k < HUB_MAX_DISPATCHERS; k++)
	{
		uint32		bit = (uint32) 1 << k;

		if (hub_dispatcher_pid(k) != 0)
			seen |= bit;
		else if ((seen & bit) && k >= hub_dispatchers)
		{
			Datum		a[1] = {CStringGetTextDatum(psprintf("dispatcher %d", k))};
			Oid			t[1] = {TEXTOID};

			seen &= ~bit;
			begin_step("logistics_hub: release leases of a retired dispatcher");
			if (extension_present())
				SPI_execute_with_args("SELECT hub._release_leases($1)", 1, t, a, NULL, false, 0);
			end_step();
		}
	}
}

/*
 * run_retention --- one slice of hub.run_retention(): at most
 * RETENTION_SLICE events (and as many inbox messages), so that dispatcher
 * 0's deliveries pause for one slice at a time (about half a second), not
 * for a whole run.  Returns true when a slice was full and more may be
 * waiting.  A failure is a WARNING in the log: the next run tries again.
 */
#define RETENTION_SLICE 10000

/* retention_slice --- one slice (inside SPI); *(bool *) arg: was it full? */
static void
retention_slice(void *arg)
{
	bool	   *more = arg;

	/* (by name: inbox_removed is missing before the extension's update) */
	if (hub_function_exists("run_retention") &&
		SPI_execute("SELECT * FROM hub.run_retention(max_events => " CppAsString2(RETENTION_SLICE) ")",
					false, 0) == SPI_OK_SELECT && SPI_processed == 1)
	{
		const char *const counts[] = {"events_removed", "inbox_removed"};

		for (int i = 0; i < (int) lengthof(counts); i++)
		{
			int			col = SPI_fnumber(SPI_tuptable->tupdesc, counts[i]);
			bool		isnull = true;
			Datum		n = col > 0 ? SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col, &isnull)
				: (Datum) 0;

			if (!isnull && DatumGetInt64(n) >= RETENTION_SLICE)
				*more = true;
		}
	}
}

static bool
run_retention(void)
{
	bool		more = false;
	HubStepError err;

	begin_step("logistics_hub: retention");
	if (!hub_guard_run(retention_slice, &more, &err))
		ereport(WARNING,
				(errcode(err.sqlerrcode),
				 errmsg("logistics_hub retention failed: %s", err.message)));
	end_step();
	return more;
}

void
hub_dispatcher_main(Datum arg)
{
	Oid			dboid;
	Oid			roleoid;
	WaitEventSet *wes;
	TimestampTz next_claim = 0;
	TimestampTz next_refresh = 0;
	TimestampTz next_retention;
	bool		claim_full = false;

	my_slot = DatumGetInt32(arg);
	memcpy(&dboid, MyBgworkerEntry->bgw_extra, sizeof(Oid));
	snprintf(worker_name, sizeof(worker_name), "dispatcher %d", my_slot);
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = dispatcher_log_hook;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	memcpy(&roleoid, MyBgworkerEntry->bgw_extra + sizeof(Oid), sizeof(Oid));
	BackgroundWorkerInitializeConnectionByOid(dboid, roleoid, 0);
	hub_pin_session(worker_name);
	pgstat_report_appname(psprintf("logistics_hub %s", worker_name));
	hub_dispatcher_attach(my_slot);

	dispatcher_cxt = AllocSetContextCreate(TopMemoryContext, "logistics_hub dispatcher", ALLOCSET_DEFAULT_SIZES);
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "logistics_hub dispatcher loop", ALLOCSET_DEFAULT_SIZES);
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(int);
		ctl.entrysize = sizeof(HubEndpoint);
		ctl.hcxt = dispatcher_cxt;
		endpoints = hash_create("logistics_hub endpoints", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}

	hub_http_init();
	multi = curl_multi_init();
	epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	if (multi == NULL || epoll_fd < 0)
		elog(ERROR, "could not set up libcurl multi handle: %m");
	on_proc_exit(dispatcher_cleanup, 0);
	if (curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, on_socket) != CURLM_OK ||
		curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, on_timer) != CURLM_OK ||
		curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long) Max(hub_max_in_flight, 16)) != CURLM_OK)
		elog(ERROR, "could not set up the libcurl multi handle");

	wes = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(wes, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wes, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	AddWaitEventToSet(wes, WL_SOCKET_READABLE, epoll_fd, NULL, NULL);

	release_old_leases();
	next_retention = GetCurrentTimestamp() + (int64) Min(hub_retention_interval_s, 60) * USECS_PER_SEC;

	for (;;)
	{
		WaitEvent	events[3];
		int			nev;
		long		timeout;
		TimestampTz now;
		TimestampTz rate_next;

		MemoryContextReset(loop_cxt);
		MemoryContextSwitchTo(loop_cxt);
		current_step = NULL;	/* (a step that failed and was handled) */

		/*
		 * Asked to stop with results not recorded yet: record them first
		 * (one short transaction, no network), so that requests the
		 * receivers already answered are not sent again once their leases
		 * run out.  Anything still in flight is left to its lease.
		 */
		if (ProcDiePending && results != NIL)
		{
			HOLD_INTERRUPTS();
			record();
			RESUME_INTERRUPTS();
		}
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);

			/*
			 * No longer wanted: leave by ourselves.  The launcher stops such
			 * a dispatcher too, but only one it started: a launcher that was
			 * restarted has adopted the running ones by their slots, with
			 * no handle to stop them.  Exit code 1, never 0; dispatcher 0
			 * gives back what is still leased.
			 */
			if (my_slot >= hub_dispatchers)
			{
				HOLD_INTERRUPTS();
				record();
				RESUME_INTERRUPTS();
				ereport(LOG,
						(errmsg("logistics_hub dispatcher %d exiting: logistics_hub.dispatchers is now %d",
								my_slot, hub_dispatchers)));
				proc_exit(1);
			}
		}

		now = GetCurrentTimestamp();
		if (record_due(now))
			record();

		/*
		 * Claim while fewer requests wait than may be in flight: a claim of
		 * logistics_hub.claim_batch events then keeps every connection
		 * busy until the next one, whether a request carries one delivery
		 * or a batch of them.
		 */
		now = GetCurrentTimestamp();
		if ((now >= next_claim || claim_full) && queued_total < hub_max_in_flight)
		{
			int			want = hub_claim_batch;
			int			got = claim(want);

			claim_full = got >= want;
			next_claim = GetCurrentTimestamp() + (int64) hub_naptime_ms() * 1000;
			next_refresh = GetCurrentTimestamp() + USECS_PER_SEC;
		}
		else if (now >= next_refresh)
		{
			refresh();
			next_refresh = GetCurrentTimestamp() + USECS_PER_SEC;
		}
		if (retry_due != 0)
		{
			/* failures recorded above are due again before the next poll? */
			if (retry_due < next_claim)
				next_claim = retry_due;
			retry_due = 0;
		}

		rate_next = pump();
		if (curl_deadline != 0 && curl_deadline <= GetCurrentTimestamp())
		{
			curl_deadline = 0;
			drive(CURL_SOCKET_TIMEOUT, 0);
			collect();
		}

		if (my_slot == 0)
			release_retired_leases();
		if (my_slot == 0 && hub_retention_interval_s > 0 && GetCurrentTimestamp() >= next_retention)
		{
			/* a full slice: the next one after this loop's deliveries */
			bool		more = run_retention();

			next_retention = GetCurrentTimestamp() +
				(more ? 0 : (int64) hub_retention_interval_s * USECS_PER_SEC);
		}

		/* sleep until the latch, a socket, libcurl's timer or the next claim */
		now = GetCurrentTimestamp();
		if (record_due(now) || (claim_full && queued_total < hub_max_in_flight))
			timeout = 0;
		else
		{
			/*
			 * (a claim falls due only once fewer requests wait than may be
			 * in flight, which a transfer ending wakes this loop for; until
			 * then a due claim must not make the wait a busy loop)
			 */
			TimestampTz until = queued_total < hub_max_in_flight ? next_claim : Max(next_claim, next_refresh);

			if (results != NIL && first_result_at + RECORD_DELAY_MS * 1000L < until)
				until = first_result_at + RECORD_DELAY_MS * 1000L;
			if (curl_deadline != 0 && curl_deadline < until)
				until = curl_deadline;
			if (rate_next != 0 && rate_next < until)
				until = rate_next;
			timeout = until <= now ? 0 : (long) ((until - now + 999) / 1000);
		}
		nev = WaitEventSetWait(wes, timeout, events, lengthof(events), PG_WAIT_EXTENSION);
		for (int i = 0; i < nev; i++)
		{
			if (events[i].events & WL_LATCH_SET)
			{
				ResetLatch(MyLatch);
				next_claim = 0; /* woken: a commit published events */
			}
			else if (events[i].events & WL_SOCKET_READABLE)
			{
				struct epoll_event ev[MAX_EPOLL_EVENTS];
				int			n;

				while ((n = epoll_wait(epoll_fd, ev, MAX_EPOLL_EVENTS, 0)) > 0)
				{
					for (int k = 0; k < n; k++)
					{
						int			flags = 0;

						if (ev[k].events & (EPOLLIN | EPOLLHUP))
							flags |= CURL_CSELECT_IN;
						if (ev[k].events & EPOLLOUT)
							flags |= CURL_CSELECT_OUT;
						if (ev[k].events & EPOLLERR)
							flags |= CURL_CSELECT_ERR;
						drive(ev[k].data.fd, flags);
					}
					if (n < MAX_EPOLL_EVENTS)
						break;
				}
			}
		}
		if (curl_deadline != 0 && curl_deadline <= GetCurrentTimestamp())
		{
			curl_deadline = 0;
			drive(CURL_SOCKET_TIMEOUT, 0);
		}
		collect();
	}
}
