/*-------------------------------------------------------------------------
 *
 * pg_transport.c
 *		The postgresql:// transport: a site hub's dispatcher relays events
 *		into a central hub by calling hub.receive there over libpq,
 *		non-blocking, inside the dispatcher's event loop (transport.h).
 *
 * One connection per endpoint per dispatcher, reused.  It is opened with
 * PQconnectStartParams and driven by PQconnectPoll from the loop (its
 * socket in the loop's epoll set, hub_loop_watch), then put in pipeline
 * mode: each request is one
 *   SELECT hub.receive(source, event id, event type, the body's "data",
 *                      correlation_id => ..., aggregate_id => ...,
 *                      traceparent => ...)
 * and the requests one pump of the send queue started (up to the
 * endpoint's max_concurrency) go together, followed by one sync: one
 * transaction on the central server, one commit for all of them, committed
 * before the answers come back, which come in the order sent.  An error of
 * one call (a payload the central hub refuses) rolls back the others: that
 * one fails, the others are given back without an attempt and go again at
 * once, in a transaction without it.  No transaction is ever held
 * open across the WAN.  The event id is the message id: the central
 * inbox's deduplication makes a retry (after a lost answer, a crash of
 * either side) a duplicate, which hub.receive answers false and which is
 * success here, so every event is stored once.  Per-key order comes from
 * the claim (ordering per_key: a key's next event is claimed only once its
 * predecessor is delivered), as for HTTP.
 *
 * Safety.  The URI was checked when the endpoint was registered (egress.c:
 * one host the policy admits, a user but no password, only harmless
 * parameters); here it is parsed again (PQconninfoParse) and refused if it
 * names anything else, or a Unix-domain socket.  A host name is resolved
 * here without blocking (getaddrinfo_a, polled from the loop's timer, within
 * logistics_hub.connect_timeout) and every address checked against
 * logistics_hub.egress_allow; libpq is given the first address admitted
 * (hostaddr), so it connects nowhere else.  The
 * password comes from the sealed auth_secret (never in a table, URI or
 * log); a central server that does not ask for it (trust, peer) is refused,
 * as dblink refuses it for non-superusers, so that an endpoint cannot
 * borrow the site server's own network trust; passfile, Kerberos (gssencmode)
 * and client certificates from the server OS user's files are not used
 * (passfile=/dev/null, gssencmode=disable, sslcert, sslkey and sslcrl at a
 * path that does not exist; sslrootcert is logistics_hub.ca_file when set).
 * libpq's messages hold no password.  statement_timeout on the central
 * side is the endpoint's timeout_ms; the client also fails a request that
 * has no answer after timeout_ms plus logistics_hub.connect_timeout (a WAN
 * that drops packets silently), and a connection not made within
 * logistics_hub.connect_timeout.  A failure of the connection fails every
 * request on it (each an attempt that counts for the circuit) and the next
 * request connects again.
 *
 * workers/pg_transport.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "libpq-fe.h"
#include "lib/ilist.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "hub_workers.h"
#include "push.h"
#include "transport.h"

/* logistics_hub.site_name: the relayed messages' source is "site:<name>" */
static char *hub_site_name = NULL;

/* a path that does not exist: libpq then reads no such file of the OS user */
#define NO_FILE "/nonexistent/logistics_hub/none"

#define RECEIVE_SQL \
	"SELECT hub.receive($1, $2, $3, pg_catalog.jsonb_extract_path($4::pg_catalog.jsonb, 'data'), " \
	"correlation_id => $5, aggregate_id => $6, traceparent => $7)"

typedef enum PgConnState
{
	PG_IDLE,					/* no connection */
	PG_RESOLVING,				/* the host name being resolved (getaddrinfo_a) */
	PG_CONNECTING,
	PG_READY
} PgConnState;

/* one endpoint's connection (HubEndpoint.transport_state) */
typedef struct PgConn
{
	dlist_node	node;			/* in conns */
	HubEndpoint *ep;
	PGconn	   *conn;
	int			fd;				/* watched, -1: none */
	PgConnState state;
	uint32		watched;		/* the epoll events watched */
	TimestampTz connect_deadline;	/* of the resolution and the connection */
	char		host[256];		/* the URI's host and port */
	char		port[32];
	struct gaicb gai;			/* the resolution under way (gai_pending) */
	struct addrinfo gai_hints;
	bool		gai_pending;	/* gai is in use by the resolver's thread */
	uint64		config_hash;	/* of the URL and password it was opened with */
	bool		stale;			/* settings changed: close once idle */
	dlist_head	pending;		/* PgPending, in the order sent */
	int			npending;
	int			nunsent;		/* of them not sent yet */
	uint64		batches;		/* counts the transactions sent */
} PgConn;

/* a request on a connection: waiting to be sent, or sent and not answered */
typedef struct PgPending
{
	dlist_node	node;
	HubRequest *req;
	bool		sent;
	uint64		batch;			/* the transaction (the calls up to a sync) it is in */
	bool		answered;		/* its result came (the sync still to come) */
	char	   *error;			/* NULL: fine so far */
	TimestampTz deadline;
} PgPending;

static dlist_head conns = DLIST_STATIC_INIT(conns);

/*
 * notices of the central server (none expected of hub.receive) go to the
 * site's log at DEBUG1 rather than to its stderr
 */
static void
central_notice(void *arg, const char *message)
{
	elog(DEBUG1, "logistics_hub %s: central hub: %s", hub_worker_name, message);
}

static void conn_ready(int fd, uint32 events, void *arg);
static void conn_fail_all(PgConn *pc, const char *error);

/* hub_pg_transport_define_gucs --- logistics_hub.site_name */
void
hub_pg_transport_define_gucs(void)
{
	DefineCustomStringVariable("logistics_hub.site_name",
							   "The name of this hub as a site: events it relays to a central hub (postgresql:// endpoints) come from source \"site:<name>\" there.",
							   "With the event id as message id, the central inbox stores each relayed event once.",
							   &hub_site_name, "site", PGC_SIGHUP, 0, NULL, NULL, NULL);
}

static uint64
config_hash(HubEndpoint *ep)
{
	uint64		h = 1469598103934665603ULL;

	for (const char *s = ep->url; *s; s++)
		h = (h ^ (unsigned char) *s) * 1099511628211ULL;
	h = (h ^ 0xff) * 1099511628211ULL;
	for (const char *s = ep->auth_secret ? ep->auth_secret : ""; *s; s++)
		h = (h ^ (unsigned char) *s) * 1099511628211ULL;
	return h;
}

static PgConn *
conn_of(HubEndpoint *ep)
{
	PgConn	   *pc = ep->transport_state;

	if (pc == NULL)
	{
		pc = MemoryContextAllocZero(hub_worker_cxt, sizeof(PgConn));
		pc->ep = ep;
		pc->fd = -1;
		dlist_init(&pc->pending);
		dlist_push_tail(&conns, &pc->node);
		ep->transport_state = pc;
	}
	return pc;
}

/*
 * watch the connection's socket for these events (0: none).  While
 * connecting, libpq may close its socket and open another (the next
 * address, or without SSL after sslmode=prefer failed), possibly with the
 * same number, which epoll forgot: it is then watched afresh every time.
 */
static void
conn_watch(PgConn *pc, uint32 events)
{
	int			fd = pc->conn ? PQsocket(pc->conn) : -1;

	if (pc->fd >= 0 && (fd != pc->fd || events == 0 || pc->state == PG_CONNECTING))
	{
		hub_loop_unwatch(pc->fd);
		pc->fd = -1;
		pc->watched = 0;
	}
	if (fd < 0 || events == 0)
		return;
	if (pc->fd == fd && pc->watched == events)
		return;
	if (!hub_loop_watch(fd, events, conn_ready, pc))
	{
		conn_fail_all(pc, psprintf("could not watch the connection's socket: %m"));
		return;
	}
	pc->fd = fd;
	pc->watched = events;
}

static void
conn_close(PgConn *pc)
{
	if (pc->fd >= 0)
		hub_loop_unwatch(pc->fd);
	pc->fd = -1;
	pc->watched = 0;
	if (pc->conn != NULL)
		PQfinish(pc->conn);
	pc->conn = NULL;
	pc->state = PG_IDLE;
	pc->stale = false;
}

/*
 * complete a request with its outcome: its error (NULL: success), or given
 * back without an attempt (its transaction was rolled back because of
 * another call in it)
 */
static void
pending_complete(PgConn *pc, PgPending *p, bool given_back)
{
	HubOutcome	o;
	HubRequest *req = p->req;

	dlist_delete(&p->node);
	pc->npending--;
	memset(&o, 0, sizeof(o));
	o.retry_after_s = -1;
	o.latency_ms = req->started_at ? (int) ((GetCurrentTimestamp() - req->started_at) / 1000) : 0;
	o.error = given_back ? NULL : p->error;
	o.given_back = given_back;
	o.back_at = given_back ? GetCurrentTimestamp() : 0;
	hub_send_complete(req, &o);
}

/*
 * conn_fail_all --- the connection failed: every request on it fails with
 * error, each counting for the circuit as an HTTP request to a server that
 * is down does (the circuit judges the endpoint: a connection lost under
 * the requests of five keys opens it), and it is closed
 */
static void
conn_fail_all(PgConn *pc, const char *error)
{
	char	   *msg = pstrdup(error);

	/* (libpq's messages end with a newline) */
	while (msg[0] && msg[strlen(msg) - 1] == '\n')
		msg[strlen(msg) - 1] = '\0';
	conn_close(pc);
	pc->nunsent = 0;
	while (!dlist_is_empty(&pc->pending))
	{
		PgPending  *p = dlist_head_element(PgPending, node, &pc->pending);
		HubOutcome	o;
		HubRequest *req = p->req;

		dlist_delete(&p->node);
		pc->npending--;
		memset(&o, 0, sizeof(o));
		o.retry_after_s = -1;
		o.latency_ms = req->started_at ? (int) ((GetCurrentTimestamp() - req->started_at) / 1000) : 0;
		o.error = MemoryContextStrdup(req->cxt, psprintf("central hub: %s", msg));
		hub_send_complete(req, &o);
	}
}

/*
 * pick_allowed --- the first address of res (host's) that the egress policy
 * admits, as text; NULL with *why when none.  Frees res.
 */
static char *
pick_allowed(struct addrinfo *res, const char *host, char **why)
{
	char	   *found = NULL;

	*why = NULL;
	for (struct addrinfo *a = res; a != NULL && found == NULL; a = a->ai_next)
	{
		char		buf[64];

		if (!hub_egress_address_allowed(a->ai_addr))
		{
			hub_format_address(a->ai_addr, buf, sizeof(buf));
			*why = psprintf("address %s of host \"%s\" is not allowed by logistics_hub.egress_allow", buf, host);
			continue;
		}
		hub_format_address(a->ai_addr, buf, sizeof(buf));
		found = pstrdup(buf);
	}
	freeaddrinfo(res);
	if (found == NULL && *why == NULL)
		*why = psprintf("host \"%s\" has no address", host);
	return found;
}

/* options a postgresql:// endpoint URI may set (besides host, port, dbname, user) */
static bool
uri_option_allowed(const char *k)
{
	static const char *const ok[] = {
		"host", "port", "dbname", "user", "sslmode", "application_name", "connect_timeout", "keepalives",
		"keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout",
		"channel_binding", "sslsni", "target_session_attrs", NULL
	};

	for (int i = 0; ok[i]; i++)
		if (strcmp(k, ok[i]) == 0)
			return true;
	return false;
}

/*
 * conn_params --- the URI's parameters (checked) into keys and vals (room
 * for 40), host and port apart; returns how many, -1 with *error
 */
static int
conn_params(PgConn *pc, const char **keys, const char **vals, const char **host, const char **port,
			char **error)
{
	HubEndpoint *ep = pc->ep;
	PQconninfoOption *opts;
	char	   *perr = NULL;
	int			n = 0;

	*host = NULL;
	*port = "5432";
	opts = PQconninfoParse(ep->url, &perr);
	if (opts == NULL)
	{
		*error = psprintf("the endpoint URI is not valid: %s", perr ? perr : "out of memory");
		if (perr)
			PQfreemem(perr);
		return -1;
	}
	for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
	{
		if (o->val == NULL)
			continue;
		if (!uri_option_allowed(o->keyword))
		{
			*error = psprintf("connection parameter \"%s\" is not allowed in a postgresql:// endpoint URI", o->keyword);
			PQconninfoFree(opts);
			return -1;
		}
		if (strcmp(o->keyword, "host") == 0)
			*host = pstrdup(o->val);
		else if (strcmp(o->keyword, "port") == 0)
			*port = pstrdup(o->val);
		else if (n < 20)
		{
			keys[n] = pstrdup(o->keyword);
			vals[n++] = pstrdup(o->val);
		}
	}
	PQconninfoFree(opts);
	if (*host == NULL || (*host)[0] == '\0' || (*host)[0] == '/' || (*host)[0] == '@' || strchr(*host, ',') != NULL ||
		strchr(*port, ',') != NULL || strlen(*host) >= sizeof(pc->host) || strlen(*port) >= sizeof(pc->port))
	{
		*error = pstrdup("a postgresql:// endpoint URI names one network host (Unix-domain sockets and host lists are refused)");
		return -1;
	}
	return n;
}

/*
 * conn_open --- open the connection to addr (the host's address the egress
 * policy admitted), non-blocking; false with *error when it cannot start
 */
static bool
conn_open(PgConn *pc, const char *addr, char **error)
{
	HubEndpoint *ep = pc->ep;
	const char *keys[40];
	const char *vals[40];
	const char *host;
	const char *port;
	int			n = conn_params(pc, keys, vals, &host, &port, error);

	if (n < 0)
		return false;
	keys[n] = "host";
	vals[n++] = host;
	keys[n] = "hostaddr";
	vals[n++] = addr;
	keys[n] = "port";
	vals[n++] = port;
	keys[n] = "password";
	vals[n++] = ep->auth_secret;
	/* nothing of the server OS user's own files or credentials */
	keys[n] = "passfile";
	vals[n++] = "/dev/null";
	keys[n] = "gssencmode";
	vals[n++] = "disable";
	keys[n] = "sslcert";
	vals[n++] = NO_FILE;
	keys[n] = "sslkey";
	vals[n++] = NO_FILE;
	keys[n] = "sslcrl";
	vals[n++] = NO_FILE;
	if (hub_ca_file && hub_ca_file[0])
	{
		keys[n] = "sslrootcert";
		vals[n++] = hub_ca_file;
	}
	/*
	 * a call is acknowledged only once durable at the central hub: the site
	 * then marks the event delivered, and a central crash must not lose it;
	 * and the relay's statement resolves no name through a schema of the
	 * central role's search_path (every name it uses is qualified anyway)
	 */
	keys[n] = "options";
	vals[n++] = psprintf("-c statement_timeout=%d -c synchronous_commit=on -c search_path=pg_catalog",
						 ep->timeout_ms);
	keys[n] = "fallback_application_name";
	vals[n++] = psprintf("logistics_hub relay %s", hub_worker_name);
	keys[n] = NULL;
	vals[n] = NULL;

	pc->conn = PQconnectStartParams(keys, vals, 0);
	if (pc->conn == NULL || PQstatus(pc->conn) == CONNECTION_BAD)
	{
		*error = psprintf("could not start the connection: %s",
						  pc->conn ? PQerrorMessage(pc->conn) : "out of memory");
		conn_close(pc);
		return false;
	}
	pc->state = PG_CONNECTING;
	pc->config_hash = config_hash(ep);
	pc->connect_deadline = GetCurrentTimestamp() + (int64) hub_connect_timeout_ms * 1000;
	/* PQconnectStartParams wants to be polled for writing first */
	conn_watch(pc, EPOLLOUT);
	if (pc->state != PG_CONNECTING)
	{
		*error = pstrdup("could not watch the connection's socket");
		return false;
	}
	return true;
}

/*
 * conn_start --- open the endpoint's connection: at once to an address
 * literal, else after resolving the host name without blocking
 * (getaddrinfo_a, whose thread starts with every signal blocked; polled by
 * pg_run_timers), so that a WAN whose DNS is down holds up nothing else of
 * the dispatcher.  False with *error when it cannot even start.
 */
static bool
conn_start(PgConn *pc, char **error)
{
	HubEndpoint *ep = pc->ep;
	const char *keys[40];
	const char *vals[40];
	const char *host;
	const char *port;
	unsigned char buf[16];
	struct gaicb *list[1];
	sigset_t	all,
				old;
	int			rc;

	if (ep->auth_secret == NULL || ep->auth_secret[0] == '\0')
	{
		*error = pstrdup("a postgresql:// endpoint needs the central role's password as its auth_secret "
						 "(hub.set_endpoint_credentials)");
		return false;
	}
	if (conn_params(pc, keys, vals, &host, &port, error) < 0)
		return false;
	strlcpy(pc->host, host, sizeof(pc->host));
	strlcpy(pc->port, port, sizeof(pc->port));
	memset(&pc->gai_hints, 0, sizeof(pc->gai_hints));
	pc->gai_hints.ai_family = AF_UNSPEC;
	pc->gai_hints.ai_socktype = SOCK_STREAM;
	pc->connect_deadline = GetCurrentTimestamp() + (int64) hub_connect_timeout_ms * 1000;
	if (inet_pton(AF_INET, pc->host, buf) == 1 || inet_pton(AF_INET6, pc->host, buf) == 1)
	{
		struct addrinfo *res = NULL;
		char	   *addr;

		pc->gai_hints.ai_flags = AI_NUMERICHOST;
		rc = getaddrinfo(pc->host, pc->port, &pc->gai_hints, &res);
		if (rc != 0)
		{
			*error = psprintf("not a valid address \"%s\": %s", pc->host, gai_strerror(rc));
			return false;
		}
		addr = pick_allowed(res, pc->host, error);
		return addr != NULL && conn_open(pc, addr, error);
	}
	if (pc->gai_pending)
	{
		*error = psprintf("the previous resolution of host \"%s\" has not ended yet", pc->host);
		return false;
	}
	memset(&pc->gai, 0, sizeof(pc->gai));
	pc->gai.ar_name = pc->host;
	pc->gai.ar_service = pc->port;
	pc->gai.ar_request = &pc->gai_hints;
	list[0] = &pc->gai;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	rc = getaddrinfo_a(GAI_NOWAIT, list, 1, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0)
	{
		*error = psprintf("could not start resolving host \"%s\": %s", pc->host, gai_strerror(rc));
		return false;
	}
	pc->gai_pending = true;
	pc->state = PG_RESOLVING;
	pc->config_hash = config_hash(ep);
	return true;
}

/*
 * resolve_poll --- has the resolution ended?  Then the connection opens to
 * the first address the egress policy admits, or its requests fail; past
 * the connect timeout they fail (the resolution cancelled, or left to end
 * unseen).
 */
static void
resolve_poll(PgConn *pc, TimestampTz now)
{
	int			rc;
	char	   *error = NULL;

	if (!pc->gai_pending)
		return;
	rc = gai_error(&pc->gai);
	if (rc == EAI_INPROGRESS)
	{
		if (pc->state == PG_RESOLVING && pc->connect_deadline <= now)
		{
			if (gai_cancel(&pc->gai) == EAI_CANCELED)
				pc->gai_pending = false;
			conn_fail_all(pc, psprintf("could not resolve host \"%s\" within logistics_hub.connect_timeout (%d ms)",
									   pc->host, hub_connect_timeout_ms));
		}
		return;
	}
	pc->gai_pending = false;
	if (pc->state != PG_RESOLVING)
	{
		/* (abandoned after a timeout) */
		if (rc == 0 && pc->gai.ar_result)
			freeaddrinfo(pc->gai.ar_result);
		return;
	}
	if (rc != 0)
	{
		conn_fail_all(pc, psprintf("could not resolve host \"%s\": %s", pc->host, gai_strerror(rc)));
		return;
	}
	{
		char	   *addr = pick_allowed(pc->gai.ar_result, pc->host, &error);

		pc->gai.ar_result = NULL;
		pc->state = PG_IDLE;
		if (addr == NULL || !conn_open(pc, addr, &error))
			conn_fail_all(pc, error);
	}
}

/*
 * send the requests not sent yet (connection ready), all in one
 * transaction: the calls, then one sync.  A pump's requests thus cost the
 * central server one commit (one WAL flush) together; an error in one
 * rolls back the others, which are then given back without an attempt
 * (conn_read) and go again in the next transaction without it.
 */
static void
conn_send(PgConn *pc)
{
	dlist_iter	it;
	int			flush;
	bool		any = false;
	uint64		batch = ++pc->batches;

	dlist_foreach(it, &pc->pending)
	{
		PgPending  *p = dlist_container(PgPending, node, it.cur);
		HubPushEvent ev;
		const char *values[7];

		if (p->sent)
			continue;
		(void) hub_push_request_event(p->req, &ev);	/* (checked by pg_start) */
		values[0] = psprintf("site:%s", hub_site_name ? hub_site_name : "site");
		values[1] = ev.event_id;
		values[2] = ev.event_type;
		values[3] = p->req->body.data;
		values[4] = ev.correlation_id;
		values[5] = ev.aggregate_id;
		values[6] = ev.traceparent;
		if (!PQsendQueryParams(pc->conn, RECEIVE_SQL, 7, NULL, values, NULL, NULL, 0))
		{
			conn_fail_all(pc, PQerrorMessage(pc->conn));
			return;
		}
		p->sent = true;
		p->batch = batch;
		any = true;
	}
	pc->nunsent = 0;
	if (any && !PQpipelineSync(pc->conn))
	{
		conn_fail_all(pc, PQerrorMessage(pc->conn));
		return;
	}
	flush = PQflush(pc->conn);
	if (flush < 0)
	{
		conn_fail_all(pc, PQerrorMessage(pc->conn));
		return;
	}
	conn_watch(pc, EPOLLIN | (flush > 0 ? EPOLLOUT : 0));
}

/* the first request sent whose result has not come */
static PgPending *
first_unanswered(PgConn *pc)
{
	dlist_iter	it;

	dlist_foreach(it, &pc->pending)
	{
		PgPending  *p = dlist_container(PgPending, node, it.cur);

		if (p->sent && !p->answered)
			return p;
	}
	return NULL;
}

/*
 * batch_done --- the sync of the oldest transaction came: it committed
 * unless a call in it failed.  Committed, every call of it succeeded; else
 * the call that failed fails, and the others, rolled back with it, are
 * given back without an attempt.
 */
static void
batch_done(PgConn *pc)
{
	uint64		batch;
	bool		failed = false;
	dlist_iter	it;

	if (dlist_is_empty(&pc->pending))
		return;
	batch = dlist_head_element(PgPending, node, &pc->pending)->batch;
	dlist_foreach(it, &pc->pending)
	{
		PgPending  *p = dlist_container(PgPending, node, it.cur);

		if (p->batch != batch)
			break;
		if (p->error != NULL || !p->answered)
			failed = true;
	}
	while (!dlist_is_empty(&pc->pending))
	{
		PgPending  *p = dlist_head_element(PgPending, node, &pc->pending);

		if (p->batch != batch || !p->sent)
			break;
		if (!p->answered && p->error == NULL && !failed)
			p->error = "central hub: no answer to hub.receive";
		pending_complete(pc, p, failed && p->error == NULL);
	}
}

/* read every answer that came */
static void
conn_read(PgConn *pc)
{
	int			nulls = 0;

	if (!PQconsumeInput(pc->conn))
	{
		conn_fail_all(pc, PQerrorMessage(pc->conn));
		return;
	}
	while (pc->conn != NULL && !PQisBusy(pc->conn))
	{
		PGresult   *r = PQgetResult(pc->conn);
		PgPending  *head;

		if (r == NULL)
		{
			/* the end of one statement's results; twice: nothing more now */
			if (++nulls > 1 || dlist_is_empty(&pc->pending))
				break;
			continue;
		}
		nulls = 0;
		if (dlist_is_empty(&pc->pending))
		{
			PQclear(r);
			continue;
		}
		if (PQresultStatus(r) == PGRES_PIPELINE_SYNC)
		{
			PQclear(r);
			batch_done(pc);
			continue;
		}
		head = first_unanswered(pc);
		if (head == NULL)
		{
			PQclear(r);
			continue;
		}
		switch (PQresultStatus(r))
		{
			case PGRES_TUPLES_OK:
				head->answered = true;
				if (PQntuples(r) == 1 && !PQgetisnull(r, 0, 0))
					appendStringInfo(&head->req->excerpt, "central hub: %s",
									 strcmp(PQgetvalue(r, 0, 0), "t") == 0 ? "received" : "duplicate (already received)");
				break;
			case PGRES_PIPELINE_ABORTED:
				/* (after another call's error: given back by batch_done) */
				head->answered = true;
				break;
			default:
				{
					const char *msg = PQresultErrorMessage(r);
					const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
					char	   *e = psprintf("central hub: %s%s%s", state ? state : "", state ? ": " : "", msg);

					while (e[0] && e[strlen(e) - 1] == '\n')
						e[strlen(e) - 1] = '\0';
					head->answered = true;
					head->error = MemoryContextStrdup(head->req->cxt, e);
				}
				break;
		}
		PQclear(r);
	}
	if (pc->conn != NULL && PQstatus(pc->conn) == CONNECTION_BAD)
		conn_fail_all(pc, PQerrorMessage(pc->conn));
	else if (pc->conn != NULL && pc->stale && dlist_is_empty(&pc->pending))
		conn_close(pc);
}

/* the connection's socket is ready */
static void
conn_ready(int fd, uint32 events, void *arg)
{
	PgConn	   *pc = arg;

	if (pc->conn == NULL)
		return;
	if (pc->state == PG_CONNECTING)
	{
		switch (PQconnectPoll(pc->conn))
		{
			case PGRES_POLLING_READING:
				conn_watch(pc, EPOLLIN);
				return;
			case PGRES_POLLING_WRITING:
				conn_watch(pc, EPOLLOUT);
				return;
			case PGRES_POLLING_FAILED:
				conn_fail_all(pc, psprintf("could not connect: %s", PQerrorMessage(pc->conn)));
				return;
			default:
				break;
		}
		/* connected: only with the password it asked for */
		if (!PQconnectionUsedPassword(pc->conn))
		{
			conn_fail_all(pc, "the central server did not ask for the password: refused "
						  "(a postgresql:// endpoint authenticates with its password, never by trust or peer)");
			return;
		}
		PQsetNoticeProcessor(pc->conn, central_notice, NULL);
		if (PQsetnonblocking(pc->conn, 1) != 0 || !PQenterPipelineMode(pc->conn))
		{
			conn_fail_all(pc, PQerrorMessage(pc->conn));
			return;
		}
		pc->state = PG_READY;
		conn_send(pc);
		return;
	}
	if (events & EPOLLOUT)
	{
		int			flush = PQflush(pc->conn);

		if (flush < 0)
		{
			conn_fail_all(pc, PQerrorMessage(pc->conn));
			return;
		}
		conn_watch(pc, EPOLLIN | (flush > 0 ? EPOLLOUT : 0));
	}
	if (pc->conn != NULL && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
		conn_read(pc);
}

/* ---------------------------------------------------------------- ops */

static bool
pg_start(HubRequest *req, char **error)
{
	PgConn	   *pc = conn_of(req->ep);
	PgPending  *p;
	HubPushEvent ev;

	if (!hub_push_request_event(req, &ev))
	{
		*error = pstrdup("only push requests can go to a postgresql:// endpoint");
		return false;
	}
	if (ev.batch)
	{
		*error = pstrdup("a postgresql:// endpoint relays one event a request: subscribe it with body_format event");
		return false;
	}
	if (pc->state == PG_IDLE && !conn_start(pc, error))
		return false;
	p = MemoryContextAllocZero(req->cxt, sizeof(PgPending));
	p->req = req;
	p->deadline = GetCurrentTimestamp() + (int64) (req->ep->timeout_ms + hub_connect_timeout_ms) * 1000;
	dlist_push_tail(&pc->pending, &p->node);
	pc->npending++;
	pc->nunsent++;
	/* (sent by pg_run_timers, which the loop calls right after the pump) */
	return true;
}

static void
pg_endpoint_loaded(HubEndpoint *ep)
{
	PgConn	   *pc = ep->transport_state;

	if (pc == NULL || pc->config_hash == config_hash(ep))
		return;
	if (pc->state == PG_RESOLVING)
	{
		/* (the resolution, of the former host, is left to end unseen) */
		conn_fail_all(pc, "the endpoint's settings changed while its host was being resolved");
		return;
	}
	if (pc->conn == NULL)
		return;
	/* a new URI or password: a new connection once this one's requests are done */
	if (dlist_is_empty(&pc->pending))
		conn_close(pc);
	else
		pc->stale = true;
}

static void
pg_endpoint_dropped(HubEndpoint *ep)
{
	PgConn	   *pc = ep->transport_state;

	if (pc == NULL)
		return;
	conn_fail_all(pc, "the endpoint is no longer a postgresql:// endpoint");
	dlist_delete(&pc->node);
	ep->transport_state = NULL;
	/* (a resolution that cannot be cancelled still writes into pc: kept) */
	if (!pc->gai_pending || gai_cancel(&pc->gai) == EAI_CANCELED)
		pfree(pc);
}

static void
pg_abort_all(void)
{
	dlist_iter	it;

	dlist_foreach(it, &conns)
	{
		PgConn	   *pc = dlist_container(PgConn, node, it.cur);

		if (pc->conn != NULL)
			PQfinish(pc->conn);
		pc->conn = NULL;
	}
}

/*
 * the earliest timeout; "now" (a time long past) while a connection has
 * requests to send: the loop calls pg_run_timers right after the pump, so
 * that what one pump started goes in one transaction
 */
static TimestampTz
pg_deadline(void)
{
	TimestampTz next = 0;
	dlist_iter	it;

	dlist_foreach(it, &conns)
	{
		PgConn	   *pc = dlist_container(PgConn, node, it.cur);
		TimestampTz t = 0;

		if (pc->state == PG_READY && pc->nunsent > 0)
			return 1;
		if (pc->gai_pending)
			t = GetCurrentTimestamp() + 10 * 1000;	/* (polled every 10 ms) */
		else if (pc->state == PG_CONNECTING)
			t = pc->connect_deadline;
		else if (!dlist_is_empty(&pc->pending))
			t = dlist_head_element(PgPending, node, &pc->pending)->deadline;
		if (t != 0 && (next == 0 || t < next))
			next = t;
	}
	return next;
}

static void
pg_run_timers(TimestampTz now)
{
	dlist_iter	it;

	dlist_foreach(it, &conns)
	{
		PgConn	   *pc = dlist_container(PgConn, node, it.cur);

		if (pc->state == PG_READY && pc->nunsent > 0)
			conn_send(pc);
		if (pc->gai_pending)
			resolve_poll(pc, now);
		if (pc->state == PG_CONNECTING && pc->connect_deadline <= now)
			conn_fail_all(pc, psprintf("could not connect within logistics_hub.connect_timeout (%d ms)",
									   hub_connect_timeout_ms));
		else if (pc->state == PG_READY && !dlist_is_empty(&pc->pending) &&
				 dlist_head_element(PgPending, node, &pc->pending)->deadline <= now)
			conn_fail_all(pc, psprintf("no answer within the endpoint's timeout (%d ms) and logistics_hub.connect_timeout",
									   pc->ep->timeout_ms));
	}
}

const HubTransportOps hub_pg_transport_ops = {
	"postgresql",
	pg_start,
	pg_endpoint_loaded,
	pg_endpoint_dropped,
	pg_abort_all,
	pg_deadline,
	pg_run_timers
};
