/*-------------------------------------------------------------------------
 *
 * http.h
 *		The HTTP engine shared by push and poll: endpoints (settings,
 *		limits, credentials, throttling), requests, the per-endpoint send
 *		queues, the libcurl multi loop, OAuth2 token requests, and the
 *		worker's transaction steps.
 *
 * A request is a request, whoever made it: HubRequest holds what the
 * transport needs (endpoint, handle, headers, the response read, the
 * egress note, times, the credential it carried) and two operations of
 * its maker: prepare (the request's own headers and body, just before it
 * is sent) and finished (its outcome).  A push request (push.h) and a poll
 * request (poll.h) each begin with a HubRequest.  An endpoint's
 * max_concurrency, rate_limit, auth, circuit and throttling are then one
 * budget for everything sent to that system, pushed or polled.
 *
 * Who owns what:
 *   worker_txn.c   the worker's name and slot, its memory contexts, short
 *                  transactions (begin/end step), SPI helpers, log lines
 *   endpoints.c    the endpoint cache, loading (secrets opened), reload
 *                  of stale endpoints, the rate window, throttling
 *   http_client.c  libcurl handles: safety options, egress callbacks,
 *                  transport and auth headers, the response (excerpt or
 *                  full body and headers), the outcome, redaction
 *   http_oauth2.c  OAuth2 token requests and the token cache
 *   send_queue.c   request memory, per-endpoint queues, pump (limits)
 *   http_loop.c    the multi handle, its epoll set, timers, collection
 *                  (and other transports' sockets: hub_loop_watch)
 *   transport.c    the transports besides HTTP (transport.h), by URL scheme
 *   pg_transport.c postgresql:// endpoints: relaying to a central hub
 *   step_guard.c   a piece of a step in a subtransaction
 *
 * workers/http.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef HUB_HTTP_H
#define HUB_HTTP_H

#include <curl/curl.h>

#include "access/htup.h"
#include "access/tupdesc.h"
#include "executor/spi.h"
#include "lib/ilist.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "storage/latch.h"
#include "utils/palloc.h"
#include "utils/timestamp.h"

#define EXCERPT_MAX 1024

typedef enum HubAuthKind
{
	HUB_AUTH_NONE,
	HUB_AUTH_BEARER,
	HUB_AUTH_BASIC,
	HUB_AUTH_API_KEY,
	HUB_AUTH_OAUTH2
} HubAuthKind;

/*
 * where the egress callbacks note the address they refused; with origin
 * set (a request carrying a credential, redirects allowed) they also refuse
 * a request to another origin than origin's, saying why in refused
 */
typedef struct HubEgressNote
{
	bool		blocked;
	char		address[64];
	CURL	   *easy;			/* the transfer (for its current URL) */
	const char *origin;			/* the URL whose origin credentials stay in */
	const char *refused;		/* static text: why a request was refused */
} HubEgressNote;

struct HubTokenFetch;

#define HUB_IDLE_HANDLES 64

/*
 * How requests reach an endpoint: the URL's scheme decides (endpoints.c,
 * hub_transport_of_url in transport.c).  HTTP goes through libcurl here;
 * the others through their HubTransportOps (transport.h).
 */
typedef enum HubTransport
{
	HUB_TRANSPORT_HTTP,			/* http://, https:// */
	HUB_TRANSPORT_PG,			/* postgresql://, postgres:// (pg_transport.c) */
	HUB_TRANSPORT_NATS			/* nats:// (NATS JetStream) */
} HubTransport;

typedef struct HubEndpoint
{
	int			endpoint_id;	/* hash key */
	MemoryContext cxt;			/* the strings below */
	bool		loaded;
	TimestampTz loaded_at;
	bool		usable;			/* enabled, not paused, circuit closed (as last read) */
	TimestampTz usable_again;	/* when not usable: when to give work back for */
	TimestampTz throttled_until;	/* nothing sent before (a 429/503...), 0: none */
	char	   *url;
	HubTransport transport;		/* from the URL's scheme, set at each load */
	void	   *transport_state;	/* a non-HTTP transport's own (its connection...),
									 * kept across loads; NULL: none */
	char	   *subject_template;	/* nats: the subject of an event, NULL: none */
	int			timeout_ms;
	int			max_concurrency;	/* this dispatcher's share (0: none) */
	double		rate_limit;		/* requests per second of that share, 0: none */
	bool		allow_redirects;
	HubAuthKind auth_kind;
	char	   *auth_secret;
	char	   *api_key_header;
	char	   *oauth2_token_url;
	char	   *oauth2_client_id;
	char	   *oauth2_client_secret;
	int			nheaders;
	char	  **headers;		/* "Name: value", checked for CR and LF */
	int			nsecrets;
	char	  **signing_secrets;

	/*
	 * OAuth2 access token, cached until it expires, and the one token
	 * request in flight (NULL: none).  The hashes say which token URL and
	 * client credentials a token or a token request belongs to, so that a
	 * reload that changes them drops both.
	 */
	char	   *oauth2_token;	/* malloc'd */
	TimestampTz oauth2_expires;
	bool		oauth2_fresh;	/* fetched, not used yet: good once even if
								 * expired (a token valid for seconds) */
	uint32		oauth2_generation;	/* counts the tokens fetched */
	uint64		oauth2_cred_hash;	/* of the settings loaded now */
	uint64		oauth2_token_hash;	/* of those the token came with */
	struct HubTokenFetch *token_fetch;

	/* limits */
	int			in_flight;
	int			rate_n;			/* at most rate_n starts per rate_window */
	TimestampTz *rate_starts;	/* ring of the last rate_n start times */
	int			rate_pos;
	int64		rate_window_us;

	dlist_head	queue;			/* HubRequest waiting to be sent */
	int			queued;
	dlist_node	active_node;	/* in the list of endpoints with a queue */
	bool		active;

	/*
	 * Easy handles set up for this endpoint and idle: a request takes one
	 * and sets only what is its own (body, headers, callbacks' data).
	 * config_gen counts the loads of the endpoint's settings (at least
	 * once a second); a handle set up under an older one is set up again.
	 */
	uint32		config_gen;
	int			nidle;
	void	   *idle[HUB_IDLE_HANDLES];	/* CURL * */
	uint32		idle_gen[HUB_IDLE_HANDLES];
} HubEndpoint;

/*
 * the outcome of one request, as its maker's finished operation gets it.
 * A non-HTTP transport reports http_status 0, error NULL on success (its
 * acknowledgement, e.g. the central inbox row or the stream sequence, in
 * the request's excerpt), the error text on failure, given_back and
 * back_at to give the request back without an attempt.
 */
typedef struct HubOutcome
{
	long		http_status;	/* 0: no response */
	char	   *error;			/* NULL: success (2xx); "" a non-2xx status */
	int			latency_ms;
	int64		retry_after_s;	/* -1: none */
	bool		given_back;		/* not sent: endpoint not usable, or waited too long */
	TimestampTz back_at;		/* given back: when the endpoint may be used again */
	bool		counted;		/* its failure already counts through another outcome */
} HubOutcome;

struct HubRequest;

typedef struct HubRequestOps
{
	/*
	 * the request's own headers (hub_http_append_header) and last touches
	 * of its body, once a handle is set up for it; false with *error: it
	 * fails without being sent
	 */
	bool		(*prepare) (struct HubRequest *req, char **error);
	/* its outcome; the request is released by its maker afterwards */
	void		(*finished) (struct HubRequest *req, const HubOutcome *o);
} HubRequestOps;

/*
 * one HTTP request; a maker's own struct begins with it
 */
typedef struct HubRequest
{
	dlist_node	node;
	MemoryContext cxt;			/* everything of the request */
	HubEndpoint *ep;
	const HubRequestOps *ops;
	const char *url;			/* NULL: the endpoint's URL */
	bool		get;			/* GET (else POST of body) */
	StringInfoData body;		/* what is sent (POST) */
	TimestampTz claimed_at;
	TimestampTz started_at;

	/* the response */
	size_t		max_body;		/* >0: keep the whole body, up to this */
	StringInfoData response;	/* the body, when max_body > 0 */
	bool		want_headers;	/* keep the final response's headers */
	List	   *resp_headers;	/* of char * "Name: value" (in cxt) */
	StringInfoData excerpt;
	size_t		received;
	bool		too_big;

	/* transfer */
	CURL	   *easy;
	uint32		easy_gen;		/* the endpoint's config_gen it was set up at, 0: none */
	struct curl_slist *headers;
	HubEgressNote egress;
	uint32		token_generation;	/* the OAuth2 token it was sent with */
	char	   *sent_secret;	/* the credential it carried (to redact), or NULL */
	char		errbuf[CURL_ERROR_SIZE];
} HubRequest;

/*
 * an OAuth2 token request, a transfer on the dispatcher's multi handle like
 * the requests (at most one per endpoint); its memory lives in cxt, the
 * easy handle is malloc'd by libcurl
 */
typedef struct HubTokenFetch
{
	dlist_node	node;			/* in the dispatcher's list of them */
	MemoryContext cxt;			/* this struct and the response */
	HubEndpoint *ep;
	uint64		cred_hash;		/* the settings it was sent with */
	CURL	   *easy;
	StringInfoData resp;
	bool		too_big;
	HubEgressNote egress;
	char		errbuf[CURL_ERROR_SIZE];
} HubTokenFetch;

/* worker_txn.c: the worker's identity, memory and short transactions */
extern int	hub_my_slot;
extern char hub_worker_name[64];
extern MemoryContext hub_worker_cxt;	/* lives as long as the process */
extern MemoryContext hub_loop_cxt;	/* reset every loop */
extern void hub_worker_txn_init(const char *kind, int slot, const char *required);
extern void hub_begin_step(const char *what);
extern void hub_end_step(void);
extern void hub_begin_work_step(const char *what);
extern void hub_clear_step(void);
extern bool hub_function_exists(const char *name);
extern bool hub_extension_present(void);
extern SPIPlanPtr hub_prepare_plan(const char *sql, int nargs, Oid *types);
extern char *hub_spi_text(HeapTuple tup, TupleDesc desc, int col);
extern char **hub_spi_text_array(HeapTuple tup, TupleDesc desc, int col, int *n);
extern bool hub_text_is(text *t, const char *s);
extern Datum hub_int_array(int64 *v, int n, bool wide);
extern int	hub_nshards(void);

/* endpoints.c: settings, limits and throttling of endpoints */
extern void hub_endpoints_init(void);
extern HubEndpoint *hub_endpoint_get(int endpoint_id);
extern long hub_endpoints_count(void);
extern int	hub_endpoints_held(int64 *ids, int64 *held);
extern void hub_endpoints_load(Datum *ids, int nids);
extern void hub_endpoints_reload(Datum *ids, int nids, TimestampTz now);
extern bool hub_endpoint_stale(HubEndpoint *ep, TimestampTz now);
extern bool hub_endpoint_usable(HubEndpoint *ep, TimestampTz now, TimestampTz *back_at);
extern int64 hub_endpoint_rate_wait(HubEndpoint *ep, TimestampTz now);
extern void hub_endpoint_note_start(HubEndpoint *ep, TimestampTz now);
extern void hub_endpoint_throttle(HubEndpoint *ep, TimestampTz until);
extern void hub_endpoints_record_throttles(void);
extern bool hub_endpoints_throttles_pending(void);

/* http_oauth2.c: token requests and the token cache */
extern uint64 hub_oauth2_cred_hash(HubEndpoint *ep);
extern void hub_oauth2_after_load(HubEndpoint *ep);
extern bool hub_oauth2_ready(HubEndpoint *ep, TimestampTz now);
extern void hub_oauth2_refused(HubEndpoint *ep, uint32 token_generation);
extern bool hub_oauth2_collect(void *priv, CURLcode rc);
extern void hub_oauth2_abort_all(void);

/* send_queue.c: per-endpoint queues under the limits */
extern HubRequest *hub_request_new(HubEndpoint *ep, const HubRequestOps *ops, Size size);
extern void hub_request_free(HubRequest *req);
extern void hub_send_enqueue(HubRequest *req);
extern TimestampTz hub_send_pump(void);
extern void hub_send_fail_endpoint(HubEndpoint *ep, char *error);
extern int	hub_send_queued(void);
extern int	hub_send_stale_endpoints(Datum *ids, int nids, TimestampTz now);
extern void hub_send_finished(HubRequest *req, CURLcode rc);
extern void hub_send_complete(HubRequest *req, const HubOutcome *o);

/* http_client.c: handles, options, outcome */
extern void hub_http_init(void);
extern void hub_setopt_reset(void);
extern void hub_setopt_note(CURLcode rc, const char *option);
extern char *hub_setopt_error(const char *what);
extern void hub_http_safety_options(CURL *easy, int timeout_ms, bool redirects, HubEgressNote *note);
extern CURL *hub_http_prepare(HubRequest *req, char **error);
extern bool hub_http_append_header(HubRequest *req, const char *line);
extern void hub_http_outcome(HubRequest *req, CURLcode rc, HubOutcome *out);
extern void hub_http_release(HubRequest *req);
extern bool hub_header_value_ok(const char *header);
extern bool hub_header_name_reserved(const char *header, bool api_key);
extern bool hub_same_origin(const char *a, const char *b);
extern char *hub_http_redact(HubRequest *req, char *text, bool truncated);
extern char *hub_http_excerpt(HubRequest *req);

#define HUB_SETOPT(easy, option, value) \
	hub_setopt_note(curl_easy_setopt((easy), (option), (value)), #option)

/* http_loop.c: one multi handle and epoll set a process */
extern void hub_loop_init(WaitEventSet *wes);
extern bool hub_loop_start(CURL *easy, char **error);
extern void hub_loop_stop(CURL *easy);
extern void hub_loop_socket_ready(void);
extern void hub_loop_run_timer(void);
extern TimestampTz hub_loop_deadline(void);
extern void hub_loop_collect(void);
extern int	hub_loop_in_flight(void);
extern void hub_loop_count_in_flight(int delta);

/* step_guard.c: one piece of a step's SQL in a subtransaction */
typedef struct HubStepError
{
	int			sqlerrcode;
	char	   *message;		/* with its SQLSTATE */
} HubStepError;

extern bool hub_guard_run(void (*fn) (void *), void *arg, HubStepError *err);
extern void hub_step_error_take(HubStepError *err);
extern bool hub_error_is_general(int sqlerrcode);
extern void hub_guard_pause(int endpoint_id, const char *action, const char *reason);

#endif							/* HUB_HTTP_H */
