/*-------------------------------------------------------------------------
 *
 * nats_inbound.c
 *		A NATS JetStream stream as a poller source: the dispatcher serving
 *		a nats:// endpoint subscribes to the durable consumer of each of
 *		its pollers (hub.create_poller(..., path => 'STREAM/DURABLE')) and
 *		records what arrives into hub.inbox, acknowledging a message only
 *		after the transaction that stored it has committed.
 *
 * Which pollers: hub._nats_pollers(shard, nshards), read every
 * NATS_REFRESH_S seconds and whenever the dispatcher is woken (a poller created, paused,
 * resumed, dropped): a source is subscribed when it appears and
 * unsubscribed when it goes (or its endpoint's connection changes).  The
 * durable consumer is created when it does not exist (a push consumer,
 * explicit acknowledgement, deliver subject _LHUB_DELIVER.<stream>.<durable>,
 * everything from the start of the stream, at most NATS_MAX_ACK_PENDING
 * messages unacknowledged, delivered again after NATS_ACK_WAIT_S seconds
 * without an acknowledgement); one that exists is bound as it is.
 *
 * The messages arrive on a libnats thread (hub_nats_on_msg, nats_transport.c)
 * and reach this file on the worker's thread (hub_nats_inbound_received).
 * hub_nats_inbound_record then stores each source's messages, up to
 * NATS_RECORD_BATCH a transaction, with hub._nats_receive: message id
 * Nats-Msg-Id (else <stream>:<sequence>), type Lhub-Event-Type (else the
 * poller's message_type), correlation and aggregate ids from
 * Lhub-Correlation-Id / Lhub-Aggregate-Id.  After the commit each stored or
 * duplicate message is acknowledged; one refused for its data (an id too
 * long, a payload too large) is terminated at the stream (never delivered
 * again) with a WARNING, the reason in the poller's last_error.  A crash
 * or a failed transaction leaves them unacknowledged: JetStream delivers
 * them again after the acknowledgement wait, and hub.receive counts those
 * already stored as duplicates.
 *
 * workers/nats_inbound.c
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
#include "nats.h"

#define NATS_RECORD_BATCH 500
#define NATS_MAX_ACK_PENDING 1000
#define NATS_ACK_WAIT_S 30
#define NATS_REFRESH_S 5

typedef struct NatsSource
{
	dlist_node	node;
	int			poller_id;
	int			endpoint_id;
	char	   *name;
	char	   *stream;
	char	   *durable;
	NatsConn   *conn;			/* NULL: not subscribed */
	natsSubscription *sub;
	struct NatsSubscribe *subscribing;	/* its subscribe thread runs */
	bool		listed;			/* in the last read of hub._nats_pollers */
	TimestampTz retry_at;		/* a failed subscribe is tried again then */
	int			n;				/* messages waiting to be recorded */
	int			cap;
	natsMsg   **msgs;			/* (in TopMemoryContext) */
} NatsSource;

/*
 * A subscribe (look up the durable consumer, create it when missing, bind
 * to it: three JetStream API requests, each waiting up to the endpoint's
 * timeout for a cluster that is electing a leader) runs in a thread of its
 * own, so that the loop goes on meanwhile.  The thread reads and writes
 * only this struct (malloc'd); its outcome comes back through the
 * connection's hand-off list (subscribed, on the worker's thread).
 */
typedef struct NatsSubscribe
{
	NatsSource *source;			/* NULL once the source is gone (worker's) */
	NatsConn   *conn;			/* (worker's: the thread reads only js) */
	jsCtx	   *js;
	int			poller_id;
	char		stream[256];
	char		durable[256];
	natsSubscription *sub;
	natsStatus	status;
	jsErrCode	jerr;
	void	   *handoff;
} NatsSubscribe;

static dlist_head sources = DLIST_STATIC_INIT(sources);
static int	waiting = 0;		/* messages of every source */
static TimestampTz next_read = 0;

static NatsSource *
source_of(int poller_id)
{
	dlist_iter	it;

	dlist_foreach(it, &sources)
	{
		NatsSource *s = dlist_container(NatsSource, node, it.cur);

		if (s->poller_id == poller_id)
			return s;
	}
	return NULL;
}

/* hub_nats_inbound_received --- a message for a poller (on the worker's thread) */
void
hub_nats_inbound_received(int poller_id, natsMsg *msg)
{
	NatsSource *s = source_of(poller_id);

	if (s == NULL || (s->sub == NULL && s->subscribing == NULL))
	{
		/* (gone meanwhile: not acknowledged, delivered again to whoever) */
		natsMsg_Destroy(msg);
		return;
	}
	if (s->n == s->cap)
	{
		s->cap = Max(64, s->cap * 2);
		s->msgs = s->msgs == NULL ? MemoryContextAlloc(TopMemoryContext, sizeof(natsMsg *) * s->cap) :
			repalloc(s->msgs, sizeof(natsMsg *) * s->cap);
	}
	s->msgs[s->n++] = msg;
	waiting++;
}

/* hub_nats_inbound_wake --- read the nats pollers again at the next refresh */
void
hub_nats_inbound_wake(void)
{
	next_read = 0;
}

/* hub_nats_inbound_pending --- are messages waiting to be recorded? */
bool
hub_nats_inbound_pending(void)
{
	return waiting > 0;
}

/* drop the messages not recorded (not acknowledged: delivered again) */
static void
drop_waiting(NatsSource *s)
{
	for (int i = 0; i < s->n; i++)
		natsMsg_Destroy(s->msgs[i]);
	waiting -= s->n;
	s->n = 0;
}

static void
unsubscribe(NatsSource *s)
{
	if (s->subscribing != NULL)
	{
		/* (its thread's outcome lets the subscription and connection go) */
		s->subscribing->source = NULL;
		s->subscribing = NULL;
	}
	if (s->sub != NULL)
	{
		hub_nats_block_signals();
		/* (Destroy, not Unsubscribe: the durable consumer stays) */
		natsSubscription_Destroy(s->sub);
		hub_nats_restore_signals();
		s->sub = NULL;
	}
	drop_waiting(s);
	if (s->conn != NULL)
	{
		s->conn->subscriptions--;
		hub_nats_release(s->conn);
		s->conn = NULL;
	}
}

/* ---- on the subscribe thread: nothing of PostgreSQL's until the next line */

static void subscribed(void *arg);

static void *
subscribe_thread(void *arg)
{
	NatsSubscribe *k = arg;
	jsConsumerInfo *ci = NULL;
	jsSubOptions so;
	natsStatus	st;

	st = js_GetConsumerInfo(&ci, k->js, k->stream, k->durable, NULL, &k->jerr);
	if (st == NATS_NOT_FOUND)
	{
		jsConsumerConfig cfg;
		char		deliver[600];

		snprintf(deliver, sizeof(deliver), "_LHUB_DELIVER.%s.%s", k->stream, k->durable);
		jsConsumerConfig_Init(&cfg);
		cfg.Durable = k->durable;
		cfg.DeliverSubject = deliver;
		cfg.DeliverPolicy = js_DeliverAll;
		cfg.AckPolicy = js_AckExplicit;
		cfg.AckWait = (int64) NATS_ACK_WAIT_S * 1000 * 1000 * 1000;
		cfg.MaxAckPending = NATS_MAX_ACK_PENDING;
		k->jerr = 0;
		st = js_AddConsumer(NULL, k->js, k->stream, &cfg, NULL, &k->jerr);
	}
	jsConsumerInfo_Destroy(ci);
	if (st == NATS_OK)
	{
		jsSubOptions_Init(&so);
		so.Stream = k->stream;
		so.Consumer = k->durable;
		so.ManualAck = true;
		k->jerr = 0;
		st = js_Subscribe(&k->sub, k->js, NULL, hub_nats_on_msg, (void *) (intptr_t) k->poller_id,
						  NULL, &so, &k->jerr);
	}
	k->status = st;
	hub_nats_handoff(k->handoff, subscribed, k);
	return NULL;
}

/* ---- on the worker's thread */

/*
 * subscribed --- a subscribe thread is done: the source is subscribed, or
 * tried again in 5 seconds; a source gone meanwhile lets the subscription
 * go (the durable consumer stays)
 */
static void
subscribed(void *arg)
{
	NatsSubscribe *k = arg;
	NatsSource *s = k->source;
	NatsConn   *c = k->conn;

	if (s != NULL)
		s->subscribing = NULL;
	if (k->status == NATS_OK && s != NULL)
	{
		s->sub = k->sub;
		s->conn = c;			/* (counted in c->subscriptions since the start) */
		free(k);
		return;
	}
	if (k->status == NATS_OK)
	{
		hub_nats_block_signals();
		natsSubscription_Destroy(k->sub);
		hub_nats_restore_signals();
	}
	else if (s != NULL)
	{
		drop_waiting(s);
		ereport(WARNING,
				(errmsg("logistics_hub %s: nats poller \"%s\" could not subscribe: NATS JetStream: consumer %s of stream %s: %s%s",
						hub_worker_name, s->name, k->durable, k->stream, natsStatus_GetText(k->status),
						k->jerr != 0 ? psprintf(" (error code %d)", (int) k->jerr) : ""),
				 errdetail("Tried again in 5 seconds.")));
		s->retry_at = GetCurrentTimestamp() + 5 * USECS_PER_SEC;
	}
	c->subscriptions--;
	hub_nats_release(c);
	free(k);
}

/*
 * subscribe --- start binding to the source's durable consumer (created
 * first when missing) in a thread of its own; false with *error, or with
 * *error NULL while the endpoint's connection is still being made
 */
static bool
subscribe(NatsSource *s, HubEndpoint *ep, char **error)
{
	NatsConn   *c = hub_nats_connection(ep, error);
	NatsSubscribe *k;
	int			rc;

	if (c == NULL)
		return false;
	if (c->connecting)
	{
		/* (tried again once connected: the loop is woken then) */
		*error = NULL;
		return false;
	}
	if (strlen(s->stream) >= sizeof(k->stream) || strlen(s->durable) >= sizeof(k->durable))
	{
		*error = pstrdup("NATS JetStream: stream or consumer name too long");
		hub_nats_release(c);
		return false;
	}
	k = calloc(1, sizeof(NatsSubscribe));
	if (k == NULL || (k->handoff = hub_nats_handoff_new()) == NULL)
	{
		free(k);
		*error = pstrdup("NATS JetStream: out of memory");
		hub_nats_release(c);
		return false;
	}
	k->source = s;
	k->conn = c;
	k->js = c->js;
	k->poller_id = s->poller_id;
	strlcpy(k->stream, s->stream, sizeof(k->stream));
	strlcpy(k->durable, s->durable, sizeof(k->durable));
	/* (the connection stays while the thread uses it) */
	c->subscriptions++;
	rc = hub_nats_thread(subscribe_thread, k);
	if (rc != 0)
	{
		*error = psprintf("NATS JetStream: could not start a thread: %s", strerror(rc));
		free(k->handoff);
		free(k);
		c->subscriptions--;
		hub_nats_release(c);
		return false;
	}
	s->subscribing = k;
	return true;
}

typedef struct ListedPoller
{
	int			poller_id;
	int			endpoint_id;
	char	   *name;
	char	   *stream;
	char	   *durable;
} ListedPoller;

static void
list_fn(void *arg)
{
	Oid			types[2] = {INT4OID, INT4OID};
	Datum		args[2] = {Int32GetDatum(hub_my_slot), Int32GetDatum(hub_nshards())};

	if (SPI_execute_with_args("SELECT poller_id, endpoint_id, name, stream, durable FROM hub._nats_pollers($1, $2)",
							  2, types, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading the nats pollers failed");
}

/*
 * hub_nats_inbound_refresh --- once a second (or now): which nats pollers
 * this dispatcher serves, their endpoints' settings; subscribe the new
 * ones, unsubscribe those gone or whose connection changed
 */
void
hub_nats_inbound_refresh(bool now_asked)
{
	TimestampTz now = GetCurrentTimestamp();
	HubStepError err;
	ListedPoller *listed = NULL;
	int			n = 0;
	Datum	   *ids;
	int			nids = 0;
	dlist_mutable_iter it;
	MemoryContext old;

	if (!now_asked && now < next_read)
		return;
	next_read = now + NATS_REFRESH_S * USECS_PER_SEC;

	hub_begin_work_step("logistics_hub: nats pollers");
	if (!hub_function_exists("_nats_pollers"))
	{
		/* (an extension older than these pollers) */
		hub_end_step();
		return;
	}
	if (!hub_guard_run(list_fn, NULL, &err))
	{
		ereport(hub_error_is_general(err.sqlerrcode) ? ERROR : WARNING,
				(errcode(err.sqlerrcode),
				 errmsg("logistics_hub %s: reading the nats pollers failed: %s", hub_worker_name, err.message)));
		hub_end_step();
		return;
	}
	n = (int) SPI_processed;
	if (n == 0 && dlist_is_empty(&sources))
	{
		hub_end_step();
		return;
	}
	/* (copied out of SPI's memory, which goes with the step) */
	old = MemoryContextSwitchTo(hub_loop_cxt);
	listed = palloc0(sizeof(ListedPoller) * Max(n, 1));
	ids = palloc(sizeof(Datum) * (n + 1 + hub_endpoints_count()));
	for (int i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		listed[i].poller_id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		listed[i].endpoint_id = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		listed[i].name = hub_spi_text(tup, desc, 3);
		listed[i].stream = hub_spi_text(tup, desc, 4);
		listed[i].durable = hub_spi_text(tup, desc, 5);
	}
	MemoryContextSwitchTo(old);
	for (int i = 0; i < n; i++)
	{
		HubEndpoint *ep = hub_endpoint_get(listed[i].endpoint_id);

		if (hub_endpoint_stale(ep, now))
			ids[nids++] = Int32GetDatum(ep->endpoint_id);
	}
	hub_endpoints_reload(ids, nids, now);
	hub_end_step();

	/* gone, or re-pointed (the endpoint's connection changed) */
	dlist_foreach_modify(it, &sources)
		dlist_container(NatsSource, node, it.cur)->listed = false;
	for (int i = 0; i < n; i++)
	{
		NatsSource *s = source_of(listed[i].poller_id);

		if (s != NULL && (s->endpoint_id != listed[i].endpoint_id ||
						  strcmp(s->stream, listed[i].stream) != 0 || strcmp(s->durable, listed[i].durable) != 0))
		{
			unsubscribe(s);
			dlist_delete(&s->node);
			s = NULL;
		}
		if (s == NULL)
		{
			s = MemoryContextAllocZero(TopMemoryContext, sizeof(NatsSource));
			s->poller_id = listed[i].poller_id;
			s->endpoint_id = listed[i].endpoint_id;
			s->name = MemoryContextStrdup(TopMemoryContext, listed[i].name);
			s->stream = MemoryContextStrdup(TopMemoryContext, listed[i].stream);
			s->durable = MemoryContextStrdup(TopMemoryContext, listed[i].durable);
			dlist_push_tail(&sources, &s->node);
		}
		s->listed = true;
	}
	dlist_foreach_modify(it, &sources)
	{
		NatsSource *s = dlist_container(NatsSource, node, it.cur);
		HubEndpoint *ep = hub_endpoint_get(s->endpoint_id);
		char	   *error = NULL;

		if (!s->listed)
		{
			unsubscribe(s);
			dlist_delete(&s->node);
			continue;
		}
		if (s->conn != NULL && (NatsConn *) ep->transport_state != s->conn)
			unsubscribe(s);		/* (its URL or credentials changed) */
		if (s->sub != NULL || s->subscribing != NULL || now < s->retry_at || ep->transport != HUB_TRANSPORT_NATS ||
			!ep->usable)
			continue;
		if (!subscribe(s, ep, &error) && error != NULL)
		{
			ereport(WARNING,
					(errmsg("logistics_hub %s: nats poller \"%s\" could not subscribe: %s",
							hub_worker_name, s->name, error),
					 errdetail("Tried again in 5 seconds.")));
			s->retry_at = now + 5 * USECS_PER_SEC;
		}
	}
}

/* the arrays of one batch, and what came back */
typedef struct RecordArgs
{
	NatsSource *s;
	int			n;
	Datum		args[6];
	char	  **status;
} RecordArgs;

static void
record_fn(void *arg)
{
	RecordArgs *r = arg;
	Oid			types[6] = {INT4OID, TEXTARRAYOID, TEXTARRAYOID, BYTEAARRAYOID, TEXTARRAYOID, TEXTARRAYOID};
	bool		isnull;
	Datum		d;
	ArrayType  *a;
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;

	if (SPI_execute_with_args("SELECT hub._nats_receive($1, $2, $3, $4, $5, $6)", 6, types, r->args, NULL,
							  false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "recording nats messages failed");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		elog(ERROR, "recording nats messages returned nothing");
	a = DatumGetArrayTypeP(d);
	deconstruct_array(a, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &nelems);
	if (nelems != r->n)
		elog(ERROR, "recording nats messages returned %d statuses for %d messages", nelems, r->n);
	/* (in the loop's memory: SPI's goes with the step) */
	r->status = MemoryContextAlloc(hub_loop_cxt, sizeof(char *) * nelems);
	for (int i = 0; i < nelems; i++)
		r->status[i] = nulls[i] ? "refused" : MemoryContextStrdup(hub_loop_cxt, TextDatumGetCString(elems[i]));
}

static Datum
text_array(Datum *v, bool *nulls, int n)
{
	int			dims[1] = {n};
	int			lbs[1] = {1};

	return PointerGetDatum(construct_md_array(v, nulls, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT));
}

/* a header of a message as text, NULL when absent */
static Datum
header(natsMsg *m, const char *name, bool *isnull)
{
	const char *v = NULL;

	*isnull = natsMsgHeader_Get(m, name, &v) != NATS_OK || v == NULL || *v == '\0';
	return *isnull ? (Datum) 0 : CStringGetTextDatum(v);
}

/* record_batch --- the first n waiting messages of s: one transaction, then the acknowledgements */
static void
record_batch(NatsSource *s, int n)
{
	RecordArgs	r;
	Datum	   *ids = palloc(sizeof(Datum) * n),
			   *types = palloc(sizeof(Datum) * n),
			   *bodies = palloc(sizeof(Datum) * n),
			   *corrs = palloc(sizeof(Datum) * n),
			   *aggs = palloc(sizeof(Datum) * n);
	bool	   *types_null = palloc(sizeof(bool) * n),
			   *corrs_null = palloc(sizeof(bool) * n),
			   *aggs_null = palloc(sizeof(bool) * n);
	HubStepError err;
	int			refused = 0;
	const char *why = NULL;

	for (int i = 0; i < n; i++)
	{
		natsMsg    *m = s->msgs[i];
		const char *id = NULL;
		int			len = natsMsg_GetDataLength(m);
		bytea	   *b = palloc(VARHDRSZ + len);

		if (natsMsgHeader_Get(m, "Nats-Msg-Id", &id) == NATS_OK && id != NULL && *id != '\0')
			ids[i] = CStringGetTextDatum(id);
		else
		{
			jsMsgMetaData *meta = NULL;

			if (natsMsg_GetMetaData(&meta, m) == NATS_OK)
			{
				ids[i] = CStringGetTextDatum(psprintf("%s:" UINT64_FORMAT, s->stream, (uint64) meta->Sequence.Stream));
				jsMsgMetaData_Destroy(meta);
			}
			else
				ids[i] = CStringGetTextDatum(psprintf("%s:unknown:%s", s->stream, natsMsg_GetSubject(m)));
		}
		types[i] = header(m, "Lhub-Event-Type", &types_null[i]);
		corrs[i] = header(m, "Lhub-Correlation-Id", &corrs_null[i]);
		aggs[i] = header(m, "Lhub-Aggregate-Id", &aggs_null[i]);
		SET_VARSIZE(b, VARHDRSZ + len);
		if (len > 0)
			memcpy(VARDATA(b), natsMsg_GetData(m), len);
		bodies[i] = PointerGetDatum(b);
	}
	memset(&r, 0, sizeof(r));
	r.s = s;
	r.n = n;
	r.args[0] = Int32GetDatum(s->poller_id);
	r.args[1] = text_array(ids, NULL, n);
	r.args[2] = text_array(types, types_null, n);
	r.args[3] = PointerGetDatum(construct_array(bodies, n, BYTEAOID, -1, false, TYPALIGN_INT));
	r.args[4] = text_array(corrs, corrs_null, n);
	r.args[5] = text_array(aggs, aggs_null, n);

	hub_begin_work_step("logistics_hub: nats receive");
	if (!hub_guard_run(record_fn, &r, &err))
	{
		ereport(hub_error_is_general(err.sqlerrcode) ? ERROR : WARNING,
				(errcode(err.sqlerrcode),
				 errmsg("logistics_hub %s: recording %d messages of nats poller \"%s\" failed: %s",
						hub_worker_name, n, s->name, err.message),
				 errdetail("They are not acknowledged and come again.")));
		r.status = NULL;
	}
	hub_end_step();

	/* committed: now the acknowledgements */
	for (int i = 0; i < n; i++)
	{
		natsMsg    *m = s->msgs[i];

		if (r.status != NULL)
		{
			if (strncmp(r.status[i], "refused", 7) == 0)
			{
				refused++;
				why = r.status[i];
				(void) natsMsg_Term(m, NULL);
			}
			else
				(void) natsMsg_Ack(m, NULL);
		}
		natsMsg_Destroy(m);
	}
	if (refused > 0)
		ereport(WARNING,
				(errmsg("logistics_hub %s: nats poller \"%s\": %d messages refused and terminated at the stream, the last %s",
						hub_worker_name, s->name, refused, why)));
	memmove(s->msgs, s->msgs + n, sizeof(natsMsg *) * (s->n - n));
	s->n -= n;
	waiting -= n;
}

/* hub_nats_inbound_record --- record every message waiting, a batch a transaction */
void
hub_nats_inbound_record(void)
{
	dlist_iter	it;

	dlist_foreach(it, &sources)
	{
		NatsSource *s = dlist_container(NatsSource, node, it.cur);

		while (s->n > 0)
			record_batch(s, Min(s->n, NATS_RECORD_BATCH));
	}
}

/* hub_nats_inbound_abort_all --- the process exits: every subscription closed */
void
hub_nats_inbound_abort_all(void)
{
	dlist_mutable_iter it;

	dlist_foreach_modify(it, &sources)
	{
		NatsSource *s = dlist_container(NatsSource, node, it.cur);

		if (s->sub != NULL)
			natsSubscription_Destroy(s->sub);
		s->sub = NULL;
		s->conn = NULL;
		dlist_delete(&s->node);
	}
}
