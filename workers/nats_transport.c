/*-------------------------------------------------------------------------
 *
 * nats_transport.c
 *		The nats transport (transport.h): a push request to a nats://
 *		endpoint becomes one asynchronous publish into NATS JetStream,
 *		through the NATS C client (libnats), and the stream's publish
 *		acknowledgement becomes the attempt.
 *
 * Per dispatcher, one connection per nats endpoint (made at the first
 * request, kept across loads while the URL and credentials stay the same),
 * to the servers of the URL tried in the order given, reconnecting for
 * ever.  The connect runs in a thread of its own (connect_thread), its
 * outcome handed to the loop like an acknowledgement; the endpoint's
 * requests started meanwhile wait for it, in flight, and are published,
 * or fail with its error (connected).  Servers that the cluster advertises are ignored, so only the
 * listed, egress-checked ones are ever reached.  A literal address is
 * checked against logistics_hub.egress_allow here; a host name is resolved
 * by the connect thread (a DNS that does not answer holds up that thread
 * only), which checks every address against a copy of the policy taken
 * with the connect and gives the client the addresses as literals.  Credentials: auth_kind
 * bearer is a NATS token, basic a "user:password"; both come sealed like
 * any endpoint secret (endpoints.c opens them).
 *
 * A request: the subject is the endpoint's subject template
 * (hub.endpoints.subject_template) with {event_type} and {aggregate_id}
 * replaced (hub_nats_subject: an aggregate id's bytes other than
 * [A-Za-z0-9_-] are written %XX, so that no ".", "*", ">" or white space
 * reaches a subject; an empty or absent one is "_"); the header
 * Nats-Msg-Id is the event id, so that the stream's duplicate window drops
 * a re-sent event; the body is the event rendered per the subscription's
 * body_format (batch formats are refused: one event a message).
 * js_PublishMsgAsync sends it without waiting, with the endpoint's
 * timeout_ms as the acknowledgement's deadline.  Per-key order is the
 * claim's: a per_key subscription has one delivery of a key in flight.
 *
 * Threads: libnats answers on threads of its own.  The acknowledgement
 * callback touches nothing of PostgreSQL's: it copies the outcome into a
 * malloc'd record on a mutex-protected list and writes to an eventfd that
 * the dispatcher's loop watches (hub_loop_watch); the loop then drains the
 * list on its own thread (drain) and reports each request with
 * hub_send_complete.  Every libnats call that may start a thread runs with
 * every signal blocked, so that PostgreSQL's handlers only ever run on the
 * worker's thread (of the publishes, only the first that succeeds on a
 * connection: it creates the acknowledgements' subscription; the
 * reconnecting thread is started by libnats' own threads, whose signals
 * are blocked from the start).
 *
 * The same connection and hand-over serve a stream as a poller source
 * (nats_inbound.c, nats.h): a message of its subscription is queued like
 * an acknowledgement, marked with its poller, and passed on by drain.
 *
 * Outcomes: an acknowledgement (also a duplicate's) is success, its stream,
 * sequence and duplicate flag the attempt's excerpt; "no responders" (no
 * stream leader: an election) is given back without an attempt for a
 * second, and so is a timeout when the connection was lost meanwhile (the
 * event is re-sent with the same id later); any other error (a timeout
 * while connected, a stream error) is a failure.
 *
 * workers/nats_transport.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "common/hashfn.h"
#include "lib/ilist.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "http.h"
#include "hub_workers.h"
#include "nats.h"
#include "push.h"
#include "transport.h"

/* a deferral (no responders, lost connection) comes back after this */
#define NATS_DEFER_MS 1000
#define NATS_MAX_SERVERS 16


/* a request in flight, found by the address of its message */
typedef struct NatsPending
{
	natsMsg    *msg;			/* hash key */
	HubRequest *req;
	NatsConn   *conn;
	uint32		disconnects;	/* conn->disconnects at the publish */
} NatsPending;

/* an acknowledgement or error, from a libnats thread (malloc'd) */
typedef struct NatsDone
{
	struct NatsDone *next;
	natsMsg    *msg;			/* the message published or received (ours) */
	int			poller_id;		/* >0: a message received for this poller */
	bool		ok;
	uint64		seq;
	bool		duplicate;
	char		stream[64];
	natsStatus	err;
	int			err_code;		/* jsErrCode */
	char		err_text[256];
	struct NatsConnect *connect;	/* non-NULL: a connect thread's outcome */
	void		(*handler) (void *);	/* non-NULL: another thread's outcome */
	void	   *handler_arg;
} NatsDone;

/*
 * a connection being made by a thread of its own (malloc'd): what the
 * thread reads (opts, timeout_ms) and writes (nc, js, status); the worker's
 * thread reads the rest once the outcome came through the list (done,
 * allocated beforehand so that the outcome cannot be lost)
 */
/*
 * a server of an endpoint's URL: a literal address, checked by the worker,
 * or a host name the connect thread resolves and checks (host, port)
 */
typedef struct NatsServer
{
	char		url[INET6_ADDRSTRLEN + 32];	/* nats://address:port; "" to resolve */
	char		host[256];
	char		port[16];
} NatsServer;

typedef struct NatsConnect
{
	NatsConn   *conn;			/* (the worker's: never read by the thread) */
	natsOptions *opts;
	int			timeout_ms;
	int			nservers;
	NatsServer	servers[NATS_MAX_SERVERS];
	void	   *egress;			/* a copy of the egress policy (malloc'd) */
	natsConnection *nc;
	jsCtx	   *js;
	natsStatus	status;
	char		error_text[256];
	NatsDone   *done;
} NatsConnect;

static bool publish(HubRequest *req, NatsConn *c, char **error);

static dlist_head conns = DLIST_STATIC_INIT(conns);
static HTAB *pending = NULL;
static int	event_fd = -1;
static bool nats_opened = false;

static pthread_mutex_t done_lock = PTHREAD_MUTEX_INITIALIZER;
static NatsDone *done_head = NULL;
static NatsDone *done_tail = NULL;

/*
 * ---- on libnats threads: nothing of PostgreSQL's below this line until
 * the next one (no palloc, no elog, no locks but done_lock)
 */

static void
note_done(NatsDone *d)
{
	bool		was_empty;

	pthread_mutex_lock(&done_lock);
	was_empty = done_head == NULL;
	if (done_tail != NULL)
		done_tail->next = d;
	else
		done_head = d;
	done_tail = d;
	pthread_mutex_unlock(&done_lock);
	/* (a failed write: the eventfd's counter is full, so readable anyway) */
	if (was_empty && eventfd_write(event_fd, 1) != 0)
		return;
}

/*
 * hub_nats_handoff --- from any thread: have the worker's loop call
 * fn(arg) (handoff from hub_nats_handoff_new, consumed)
 */
void
hub_nats_handoff(void *handoff, void (*fn) (void *), void *arg)
{
	NatsDone   *d = handoff;

	d->handler = fn;
	d->handler_arg = arg;
	note_done(d);
}

static void
on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
	NatsDone   *d = calloc(1, sizeof(NatsDone));

	if (d == NULL)
	{
		/* (its request then times out with its lease) */
		natsMsg_Destroy(msg);
		return;
	}
	d->msg = msg;
	if (pa != NULL)
	{
		d->ok = true;
		d->seq = pa->Sequence;
		d->duplicate = pa->Duplicate;
		if (pa->Stream != NULL)
			strlcpy(d->stream, pa->Stream, sizeof(d->stream));
	}
	else
	{
		d->err = pae != NULL ? pae->Err : NATS_ERR;
		d->err_code = pae != NULL ? (int) pae->ErrCode : 0;
		strlcpy(d->err_text, pae != NULL && pae->ErrText != NULL ? pae->ErrText : natsStatus_GetText(d->err),
				sizeof(d->err_text));
	}
	note_done(d);
}

/* a message of a poller source's subscription (closure: the poller id) */
void
hub_nats_on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
	NatsDone   *d = calloc(1, sizeof(NatsDone));

	if (d == NULL)
	{
		/* (not acknowledged: delivered again) */
		natsMsg_Destroy(msg);
		return;
	}
	d->msg = msg;
	d->poller_id = (int) (intptr_t) closure;
	note_done(d);
}

static void
on_disconnected(natsConnection *nc, void *closure)
{
	NatsConn   *c = (NatsConn *) closure;

	__atomic_add_fetch(&c->disconnects, 1, __ATOMIC_SEQ_CST);
}

/*
 * connect_thread --- connect to the servers, tried in order (each for at
 * most the connect timeout), and open the JetStream context; the outcome
 * goes to the worker's loop like an acknowledgement.  Started with every
 * signal blocked, so libnats' threads it starts inherit that.
 */
/*
 * resolve_servers --- the servers as libnats gets them: literal addresses
 * as they are, host names resolved here (a DNS that does not answer holds
 * up this thread only) and every address of them checked against the copy
 * of the egress policy; false with error_text set
 */
static bool
resolve_servers(NatsConnect *k)
{
	char	   *list[NATS_MAX_SERVERS];
	char		urls[NATS_MAX_SERVERS][INET6_ADDRSTRLEN + 32];
	int			n = 0;

	for (int i = 0; i < k->nservers; i++)
	{
		NatsServer *sv = &k->servers[i];
		struct addrinfo hints,
				   *res = NULL,
				   *ai;
		int			rc;

		if (sv->url[0] != '\0')
		{
			if (n < NATS_MAX_SERVERS)
				list[n++] = sv->url;
			continue;
		}
		memset(&hints, 0, sizeof(hints));
		hints.ai_socktype = SOCK_STREAM;
		rc = getaddrinfo(sv->host, sv->port, &hints, &res);
		if (rc != 0)
		{
			snprintf(k->error_text, sizeof(k->error_text), "server %s:%s: %s", sv->host, sv->port, gai_strerror(rc));
			return false;
		}
		for (ai = res; ai != NULL; ai = ai->ai_next)
		{
			char		addr[INET6_ADDRSTRLEN];
			const void *a;

			if (!hub_egress_copy_allows(k->egress, ai->ai_addr))
			{
				freeaddrinfo(res);
				snprintf(k->error_text, sizeof(k->error_text),
						 "server %s:%s: an address of it is not allowed by logistics_hub.egress_allow", sv->host, sv->port);
				return false;
			}
			if (n >= NATS_MAX_SERVERS)
				continue;
			a = ai->ai_family == AF_INET6 ? (const void *) &((struct sockaddr_in6 *) ai->ai_addr)->sin6_addr :
				(const void *) &((struct sockaddr_in *) ai->ai_addr)->sin_addr;
			if (inet_ntop(ai->ai_family, a, addr, sizeof(addr)) == NULL)
				continue;
			snprintf(urls[n], sizeof(urls[n]), ai->ai_family == AF_INET6 ? "nats://[%s]:%s" : "nats://%s:%s",
					 addr, sv->port);
			list[n] = urls[n];
			n++;
		}
		freeaddrinfo(res);
	}
	k->status = natsOptions_SetServers(k->opts, (const char **) list, n);
	if (k->status != NATS_OK)
	{
		strlcpy(k->error_text, natsStatus_GetText(k->status), sizeof(k->error_text));
		return false;
	}
	return true;
}

static void *
connect_thread(void *arg)
{
	NatsConnect *k = (NatsConnect *) arg;
	jsOptions	jo;

	if (!resolve_servers(k))
		k->status = NATS_ERR;	/* (error_text says why) */
	else
	{
		k->status = natsConnection_Connect(&k->nc, k->opts);
		if (k->status == NATS_OK)
		{
			jsOptions_Init(&jo);
			jo.Wait = k->timeout_ms;
			jo.PublishAsync.AckHandler = on_ack;
			jo.PublishAsync.MaxPending = 0; /* (the engine limits what is in flight) */
			k->status = natsConnection_JetStream(&k->js, k->nc, &jo);
		}
		if (k->status != NATS_OK)
		{
			strlcpy(k->error_text, natsStatus_GetText(k->status), sizeof(k->error_text));
			natsConnection_Destroy(k->nc);
			k->nc = NULL;
		}
	}
	natsOptions_Destroy(k->opts);
	k->opts = NULL;
	k->done->connect = k;
	note_done(k->done);
	return NULL;
}

/* ---- on the worker's thread */

/*
 * with_signals_blocked --- libnats starts threads (connection, reply
 * subscription, timers): they inherit a fully blocked signal mask
 */
static sigset_t saved_mask;

void
hub_nats_block_signals(void)
{
	sigset_t	all;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &saved_mask);
}

void
hub_nats_restore_signals(void)
{
	pthread_sigmask(SIG_SETMASK, &saved_mask, NULL);
}

/*
 * hub_nats_handoff_new --- (on the worker's thread) room for one outcome of
 * another thread, allocated before that thread starts so that its outcome
 * cannot be lost; NULL when out of memory
 */
void *
hub_nats_handoff_new(void)
{
	return calloc(1, sizeof(NatsDone));
}

/*
 * hub_nats_thread --- start fn(arg) on a detached thread of its own, with
 * every signal blocked (so that it and the threads libnats starts from it
 * never take the worker's signals); 0 or the error number
 */
int
hub_nats_thread(void *(*fn) (void *), void *arg)
{
	pthread_attr_t attr;
	pthread_t	thread;
	int			rc;

	hub_nats_block_signals();
	rc = pthread_attr_init(&attr);
	if (rc == 0)
	{
		rc = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		if (rc == 0)
			rc = pthread_create(&thread, &attr, fn, arg);
		pthread_attr_destroy(&attr);
	}
	hub_nats_restore_signals();
	return rc;
}

static char *
nats_error(const char *what, natsStatus s)
{
	return psprintf("NATS %s: %s", what, natsStatus_GetText(s));
}

/*
 * hub_nats_subject --- the subject of an event under a template: literal
 * tokens kept, {event_type} (its "domain.action" is two tokens) and
 * {aggregate_id} replaced, the aggregate id escaped (%XX for every byte
 * but [A-Za-z0-9_-]; "_" for none)
 */
char *
hub_nats_subject(const char *template, const char *event_type, const char *aggregate_id)
{
	StringInfoData s;
	const char *p = template;

	initStringInfo(&s);
	while (*p)
	{
		if (strncmp(p, "{event_type}", 12) == 0)
		{
			appendStringInfoString(&s, event_type);
			p += 12;
		}
		else if (strncmp(p, "{aggregate_id}", 14) == 0)
		{
			if (aggregate_id == NULL || *aggregate_id == '\0')
				appendStringInfoChar(&s, '_');
			for (const unsigned char *a = (const unsigned char *) aggregate_id; a && *a; a++)
			{
				if ((*a >= 'a' && *a <= 'z') || (*a >= 'A' && *a <= 'Z') ||
					(*a >= '0' && *a <= '9') || *a == '_' || *a == '-')
					appendStringInfoChar(&s, (char) *a);
				else
					appendStringInfo(&s, "%%%02X", *a);
			}
			p += 14;
		}
		else
			appendStringInfoChar(&s, *p++);
	}
	return s.data;
}

/* a request that was not sent: given back (no attempt), or failed */
static void
not_sent(HubRequest *req, char *error, bool counted)
{
	HubOutcome	o;

	memset(&o, 0, sizeof(o));
	o.retry_after_s = -1;
	o.latency_ms = (int) ((GetCurrentTimestamp() - req->started_at) / 1000);
	o.error = error;
	o.given_back = error == NULL;
	o.back_at = GetCurrentTimestamp();
	o.counted = counted;
	hub_send_complete(req, &o);
}

/*
 * connected --- a connect thread is done: the requests that waited for it
 * are published, or each fails with the connect's error (one failure for
 * the circuit), or, when the endpoint's settings changed meanwhile, are
 * given back; a failed connection is dropped (the next request makes a new
 * one)
 */
static void
connected(NatsConnect *k)
{
	NatsConn   *c = k->conn;
	List	   *waiting = c->waiting;
	char	   *error = NULL;
	bool		counted = false;
	ListCell   *lc;

	c->connecting = false;
	c->waiting = NIL;
	if (k->status == NATS_OK)
	{
		c->nc = k->nc;
		c->js = k->js;
	}
	else
	{
		error = psprintf("NATS connect: %s", k->error_text);
		if (c->ep != NULL)
		{
			if (waiting == NIL)
				ereport(WARNING,
						(errmsg("logistics_hub %s: could not connect to the NATS servers of endpoint %d: %s",
								hub_worker_name, c->ep->endpoint_id, k->error_text)));
			c->ep->transport_state = NULL;
			c->ep = NULL;
		}
	}
	free(k->egress);
	free(k);
	foreach(lc, waiting)
	{
		HubRequest *req = (HubRequest *) lfirst(lc);
		char	   *why = NULL;

		c->in_flight--;
		if (error != NULL)
		{
			not_sent(req, pstrdup(error), counted);
			counted = true;
		}
		else if (c->ep == NULL)
			not_sent(req, NULL, false); /* (retired: settings changed) */
		else if (!publish(req, c, &why))
			not_sent(req, why, false);
	}
	list_free(waiting);
	if (error == NULL)
		hub_nats_inbound_wake();	/* (poller sources may subscribe now) */
	hub_nats_release(c);
}

/* the eventfd is readable: every result in, each to its request */
static void
drain(int fd, uint32 events, void *arg)
{
	eventfd_t	n;
	NatsDone   *d;

	/* (nothing to read: a spurious wake-up, the list says what is there) */
	if (eventfd_read(event_fd, &n) != 0)
		n = 0;
	pthread_mutex_lock(&done_lock);
	d = done_head;
	done_head = done_tail = NULL;
	pthread_mutex_unlock(&done_lock);

	while (d != NULL)
	{
		NatsDone   *next = d->next;
		NatsPending *p;

		if (d->connect != NULL)
		{
			connected(d->connect);
			free(d);
			d = next;
			continue;
		}
		if (d->handler != NULL)
		{
			d->handler(d->handler_arg);
			free(d);
			d = next;
			continue;
		}
		if (d->poller_id > 0)
		{
			/* (the message is the poller source's now) */
			hub_nats_inbound_received(d->poller_id, d->msg);
			free(d);
			d = next;
			continue;
		}
		p = hash_search(pending, &d->msg, HASH_FIND, NULL);
		if (p != NULL)
		{
			HubRequest *req = p->req;
			NatsConn   *c = p->conn;
			uint32		disc = p->disconnects;
			HubOutcome	o;
			TimestampTz now = GetCurrentTimestamp();

			hash_search(pending, &d->msg, HASH_REMOVE, NULL);
			memset(&o, 0, sizeof(o));
			o.retry_after_s = -1;
			o.latency_ms = (int) ((now - req->started_at) / 1000);
			if (d->ok)
				appendStringInfo(&req->excerpt, "{\"stream\": \"%s\", \"seq\": " UINT64_FORMAT ", \"duplicate\": %s}",
								 d->stream, (uint64) d->seq, d->duplicate ? "true" : "false");
			else if (d->err == NATS_NO_RESPONDERS ||
					 (d->err == NATS_TIMEOUT &&
					  (__atomic_load_n(&c->disconnects, __ATOMIC_SEQ_CST) != disc ||
					   natsConnection_Status(c->nc) != NATS_CONN_STATUS_CONNECTED)))
			{
				/* an election, or the connection lost: later, no attempt */
				o.given_back = true;
				o.back_at = now + (int64) NATS_DEFER_MS * 1000;
			}
			else if (d->err == NATS_TIMEOUT)
				o.error = psprintf("NATS JetStream: no publish acknowledgement within %d ms", req->ep->timeout_ms);
			else if (d->err_code != 0)
				o.error = psprintf("NATS JetStream: %s (error code %d)", d->err_text, d->err_code);
			else
				o.error = psprintf("NATS JetStream: %s", d->err_text);
			c->in_flight--;
			hub_send_complete(req, &o);
			hub_nats_release(c);
		}
		natsMsg_Destroy(d->msg);
		free(d);
		d = next;
	}
}

/* once a process: libnats, the eventfd in the loop, the pending map */
static bool
nats_init(char **error)
{
	HASHCTL		ctl;
	natsStatus	s;

	if (nats_opened)
		return true;
	hub_nats_block_signals();
	s = nats_Open(-1);
	hub_nats_restore_signals();
	if (s != NATS_OK)
	{
		*error = nats_error("library", s);
		return false;
	}
	event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (event_fd < 0 || !hub_loop_watch(event_fd, EPOLLIN, drain, NULL))
	{
		*error = psprintf("NATS: could not set up an eventfd: %m");
		return false;
	}
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(natsMsg *);
	ctl.entrysize = sizeof(NatsPending);
	ctl.hcxt = TopMemoryContext;
	pending = hash_create("logistics_hub nats requests", 1024, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	nats_opened = true;
	return true;
}

/* the key of an endpoint's connection settings (malloc'd) */
static char *
conn_key(HubEndpoint *ep)
{
	char	   *k = psprintf("%s\n%d\n%s", ep->url, (int) ep->auth_kind,
							 ep->auth_secret ? ep->auth_secret : "");
	char	   *m = strdup(k);

	pfree(k);
	return m;
}

/*
 * server_list --- the URL's servers: each allowed by name by the egress
 * policy; a literal address checked now and kept as nats://address:port, a
 * host name kept for the connect thread to resolve and check (so that a DNS
 * that does not answer never holds up the loop); false with *error
 */
static bool
server_list(const char *url, NatsServer *servers, int *n, char **error)
{
	char	   *list = pstrdup(url);
	char	   *save = NULL;

	*n = 0;
	for (char *tok = strtok_r(list, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save))
	{
		char	   *hostport = tok;
		char	   *host,
				   *port,
				   *why;
		NatsServer *sv;
		struct addrinfo hints,
				   *res = NULL;
		int			rc;

		while (*hostport == ' ')
			hostport++;
		if (pg_strncasecmp(hostport, "nats://", 7) == 0)
			hostport += 7;
		if (!hub_egress_url_allowed(psprintf("nats://%s", hostport), &why))
		{
			*error = psprintf("NATS server %s refused: %s", hostport, why);
			return false;
		}
		host = pstrdup(hostport);
		if (host[0] == '[')
		{
			char	   *end = strchr(host, ']');

			if (end == NULL)
			{
				*error = psprintf("NATS server %s: bad address", hostport);
				return false;
			}
			*end = '\0';
			port = end[1] == ':' ? end + 2 : "4222";
			host++;
		}
		else if ((port = strrchr(host, ':')) != NULL)
			*port++ = '\0';
		else
			port = "4222";
		if ((port = pstrdup(port)) && strchr(port, '/'))
			*strchr(port, '/') = '\0';
		if (*n >= NATS_MAX_SERVERS)
			break;
		if (strlen(host) >= sizeof(servers->host) || strlen(port) >= sizeof(servers->port))
		{
			*error = psprintf("NATS server %s: name too long", hostport);
			return false;
		}
		sv = &servers[(*n)++];
		memset(sv, 0, sizeof(*sv));
		strlcpy(sv->host, host, sizeof(sv->host));
		strlcpy(sv->port, port, sizeof(sv->port));
		memset(&hints, 0, sizeof(hints));
		hints.ai_socktype = SOCK_STREAM;
		hints.ai_flags = AI_NUMERICHOST;
		rc = getaddrinfo(host, port, &hints, &res);
		if (rc == EAI_NONAME)
			continue;			/* a host name: the connect thread resolves it */
		if (rc != 0)
		{
			*error = psprintf("NATS server %s: %s", hostport, gai_strerror(rc));
			return false;
		}
		if (!hub_egress_address_allowed(res->ai_addr))
		{
			freeaddrinfo(res);
			*error = psprintf("NATS server %s: an address of it is not allowed by logistics_hub.egress_allow", hostport);
			return false;
		}
		snprintf(sv->url, sizeof(sv->url), res->ai_family == AF_INET6 ? "nats://[%s]:%s" : "nats://%s:%s",
				 host, port);
		freeaddrinfo(res);
	}
	if (*n == 0)
	{
		*error = pstrdup("NATS: the endpoint URL names no server");
		return false;
	}
	return true;
}

/*
 * hub_nats_connection --- the endpoint's connection, started now if needed
 * (connecting: nc and js are set once its thread is done, see connected);
 * NULL with *error when it cannot even be started
 */
NatsConn *
hub_nats_connection(HubEndpoint *ep, char **error)
{
	NatsConn   *c = (NatsConn *) ep->transport_state;
	NatsServer	servers[NATS_MAX_SERVERS];
	int			nservers;
	natsOptions *opts = NULL;
	NatsConnect *k;
	natsStatus	s;
	int			rc = 0;

	if (c != NULL)
		return c;
	if (!nats_init(error))
		return NULL;
	if (ep->auth_kind != HUB_AUTH_NONE && ep->auth_kind != HUB_AUTH_BEARER && ep->auth_kind != HUB_AUTH_BASIC)
	{
		*error = pstrdup("a nats endpoint takes auth_kind none, bearer (a NATS token) or basic (user:password)");
		return NULL;
	}
	if (!server_list(ep->url, servers, &nservers, error))
		return NULL;

	c = MemoryContextAllocZero(TopMemoryContext, sizeof(NatsConn));
	k = calloc(1, sizeof(NatsConnect));
	if (k == NULL || (k->done = calloc(1, sizeof(NatsDone))) == NULL)
	{
		free(k);
		pfree(c);
		*error = pstrdup("NATS connect: out of memory");
		return NULL;
	}
	hub_nats_block_signals();
	s = natsOptions_Create(&opts);
	if (s == NATS_OK)
		s = natsOptions_SetNoRandomize(opts, true);
	if (s == NATS_OK)
		s = natsOptions_SetIgnoreDiscoveredServers(opts, true);
	if (s == NATS_OK)
		s = natsOptions_SetMaxReconnect(opts, -1);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectWait(opts, 250);
	if (s == NATS_OK)
		s = natsOptions_SetTimeout(opts, Min(ep->timeout_ms, 2000));
	if (s == NATS_OK)
		s = natsOptions_SetName(opts, psprintf("logistics_hub %s", hub_worker_name));
	if (s == NATS_OK)
		s = natsOptions_SetDisconnectedCB(opts, on_disconnected, c);
	if (s == NATS_OK && ep->auth_kind == HUB_AUTH_BEARER)
		s = natsOptions_SetToken(opts, ep->auth_secret ? ep->auth_secret : "");
	if (s == NATS_OK && ep->auth_kind == HUB_AUTH_BASIC)
	{
		char	   *user = pstrdup(ep->auth_secret ? ep->auth_secret : "");
		char	   *colon = strchr(user, ':');

		if (colon != NULL)
			*colon = '\0';
		s = natsOptions_SetUserInfo(opts, user, colon ? colon + 1 : "");
		memset(user, 0, strlen(user) + (colon ? strlen(colon + 1) + 1 : 0));
		pfree(user);
	}
	hub_nats_restore_signals();

	/*
	 * The connect (up to the connect timeout per server, more than a second
	 * each for a server that does not answer, and the resolution of host
	 * names) runs in a thread of its own, so that the loop goes on serving
	 * the other endpoints meanwhile.  (libnats' own retry on a failed
	 * connect, natsOptions_SetRetryOnFailedConnect, still makes the first
	 * pass over the servers in the caller's thread.)
	 */
	if (s == NATS_OK)
	{
		k->conn = c;
		k->opts = opts;
		k->timeout_ms = ep->timeout_ms;
		k->nservers = nservers;
		memcpy(k->servers, servers, sizeof(NatsServer) * nservers);
		k->egress = hub_egress_policy_copy();
		rc = hub_nats_thread(connect_thread, k);
	}
	if (s != NATS_OK || rc != 0)
	{
		*error = s != NATS_OK ? nats_error("connect", s) :
			psprintf("NATS connect: could not start a thread: %s", strerror(rc));
		natsOptions_Destroy(opts);
		free(k->egress);
		free(k->done);
		free(k);
		pfree(c);
		return NULL;
	}
	c->connecting = true;
	c->ep = ep;
	c->key = conn_key(ep);
	dlist_push_tail(&conns, &c->node);
	ep->transport_state = c;
	return c;
}

/* retire --- the endpoint lets go of its connection: closed once its requests are in */
static void
retire(HubEndpoint *ep)
{
	NatsConn   *c = (NatsConn *) ep->transport_state;

	if (c == NULL)
		return;
	ep->transport_state = NULL;
	c->ep = NULL;
	hub_nats_release(c);
}

/*
 * hub_nats_release --- close a retired connection once nothing uses it (no
 * publish waiting for its answer, no poller source subscribed, its connect
 * thread done)
 */
void
hub_nats_release(NatsConn *c)
{
	if (c->ep != NULL || c->in_flight > 0 || c->subscriptions > 0 || c->connecting)
		return;
	dlist_delete(&c->node);
	hub_nats_block_signals();
	jsCtx_Destroy(c->js);
	natsConnection_Destroy(c->nc);
	hub_nats_restore_signals();
	free(c->key);
	pfree(c);
}

/* request_event --- the request's event, when it is one a nats endpoint takes */
static bool
request_event(HubRequest *req, HubPushEvent *ev, char **error)
{
	if (!hub_push_request_event(req, ev))
	{
		*error = pstrdup("a nats endpoint only receives pushed events (a NATS stream is read by a nats poller source)");
		return false;
	}
	if (ev->batch)
	{
		*error = pstrdup("a nats endpoint takes one event a message: use body_format event or cloudevents");
		return false;
	}
	return true;
}

/* publish --- a request's event into the stream of a connected c */
static bool
publish(HubRequest *req, NatsConn *c, char **error)
{
	HubPushEvent ev;
	natsMsg    *msg = NULL;
	natsMsg    *key;
	NatsPending *p;
	jsPubOptions po;
	natsStatus	s;
	const char *template;

	if (!request_event(req, &ev, error))
		return false;
	template = req->ep->subject_template ? req->ep->subject_template : "lhub.{event_type}.{aggregate_id}";

	s = natsMsg_Create(&msg, hub_nats_subject(template, ev.event_type, ev.aggregate_id), NULL,
					   req->body.data, req->body.len);
	if (s == NATS_OK)
		s = natsMsgHeader_Set(msg, "Lhub-Event-Type", ev.event_type);
	if (s == NATS_OK && ev.correlation_id != NULL && hub_header_value_ok(ev.correlation_id))
		s = natsMsgHeader_Set(msg, "Lhub-Correlation-Id", ev.correlation_id);
	if (s == NATS_OK && ev.aggregate_id != NULL && *ev.aggregate_id && hub_header_value_ok(ev.aggregate_id))
		s = natsMsgHeader_Set(msg, "Lhub-Aggregate-Id", ev.aggregate_id);
	if (s != NATS_OK)
	{
		natsMsg_Destroy(msg);
		*error = nats_error("message", s);
		return false;
	}
	jsPubOptions_Init(&po);
	po.MsgId = ev.event_id;
	po.MaxWait = req->ep->timeout_ms;

	/* known before the publish: the answer may come before it returns */
	key = msg;
	p = hash_search(pending, &key, HASH_ENTER, NULL);
	p->req = req;
	p->conn = c;
	p->disconnects = __atomic_load_n(&c->disconnects, __ATOMIC_SEQ_CST);

	/*
	 * Only the first publish that goes through starts a thread (libnats'
	 * subscription for the acknowledgements; its timers' thread runs since
	 * nats_Open): later ones skip the two system calls of the signal mask.
	 */
	if (!c->published)
		hub_nats_block_signals();
	s = js_PublishMsgAsync(c->js, &msg, &po);
	if (!c->published)
	{
		hub_nats_restore_signals();
		c->published = s == NATS_OK;
	}
	if (s != NATS_OK)
	{
		hash_search(pending, &key, HASH_REMOVE, NULL);
		natsMsg_Destroy(msg);
		*error = nats_error("publish", s);
		return false;
	}
	c->in_flight++;
	return true;
}

/*
 * nats_start --- publish the request, or, while its connection is being
 * made, keep it until then (in flight meanwhile: it holds its place in the
 * endpoint's concurrency)
 */
static bool
nats_start(HubRequest *req, char **error)
{
	NatsConn   *c;
	HubPushEvent ev;
	MemoryContext old;

	if (!request_event(req, &ev, error) || (c = hub_nats_connection(req->ep, error)) == NULL)
		return false;
	if (!c->connecting)
		return publish(req, c, error);
	old = MemoryContextSwitchTo(TopMemoryContext);
	c->waiting = lappend(c->waiting, req);
	MemoryContextSwitchTo(old);
	c->in_flight++;
	return true;
}

/* the settings were read again: a new URL or credential, a new connection */
static void
nats_endpoint_loaded(HubEndpoint *ep)
{
	NatsConn   *c = (NatsConn *) ep->transport_state;
	char	   *k;

	if (c == NULL)
		return;
	k = conn_key(ep);
	if (strcmp(k, c->key) != 0)
		retire(ep);
	memset(k, 0, strlen(k));
	free(k);
}

/* the endpoint is no longer a nats one: what it has in flight fails */
static void
nats_endpoint_dropped(HubEndpoint *ep)
{
	NatsConn   *c = (NatsConn *) ep->transport_state;
	HASH_SEQ_STATUS seq;
	NatsPending *p;
	List	   *gone = NIL;
	ListCell   *lc;

	if (c == NULL)
		return;
	hash_seq_init(&seq, pending);
	while ((p = hash_seq_search(&seq)) != NULL)
		if (p->conn == c)
			gone = lappend(gone, p);
	foreach(lc, gone)
	{
		NatsPending *q = (NatsPending *) lfirst(lc);
		HubRequest *req = q->req;
		HubOutcome	o;

		hash_search(pending, &q->msg, HASH_REMOVE, NULL);
		memset(&o, 0, sizeof(o));
		o.retry_after_s = -1;
		o.given_back = true;
		o.back_at = GetCurrentTimestamp();
		c->in_flight--;
		hub_send_complete(req, &o);
	}
	foreach(lc, c->waiting)
	{
		c->in_flight--;
		not_sent((HubRequest *) lfirst(lc), NULL, false);
	}
	list_free(c->waiting);
	c->waiting = NIL;
	retire(ep);
}

/* the process exits: close every connection, reporting nothing */
static void
nats_abort_all(void)
{
	dlist_mutable_iter it;

	if (!nats_opened)
		return;
	hub_nats_inbound_abort_all();
	hub_nats_block_signals();
	dlist_foreach_modify(it, &conns)
	{
		NatsConn   *c = dlist_container(NatsConn, node, it.cur);

		dlist_delete(&c->node);
		/* (one still connecting is its thread's until the process ends) */
		if (!c->connecting)
		{
			jsCtx_Destroy(c->js);
			natsConnection_Destroy(c->nc);
		}
		if (c->ep != NULL)
			c->ep->transport_state = NULL;
	}
	hub_nats_restore_signals();
}

const HubTransportOps hub_nats_transport_ops = {
	.name = "nats",
	.start = nats_start,
	.endpoint_loaded = nats_endpoint_loaded,
	.endpoint_dropped = nats_endpoint_dropped,
	.abort_all = nats_abort_all,
	.deadline = NULL,
	.run_timers = NULL,
};
