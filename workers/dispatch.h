/*-------------------------------------------------------------------------
 *
 * dispatch.h
 *		What a dispatcher keeps between its transactions: endpoints (their
 *		configuration, limits and queue of claimed requests) and requests.
 *
 * workers/dispatch.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef HUB_DISPATCH_H
#define HUB_DISPATCH_H

#include <curl/curl.h>

#include "lib/ilist.h"
#include "lib/stringinfo.h"
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

typedef struct HubEndpoint
{
	int			endpoint_id;	/* hash key */
	MemoryContext cxt;			/* the strings below */
	bool		loaded;
	TimestampTz loaded_at;
	bool		usable;			/* enabled, not paused, circuit closed */
	TimestampTz usable_again;	/* when not usable: when to give work back for */
	char	   *url;
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

struct HubGroup;

/*
 * one HTTP request: one delivery, several of a batch subscription, or one
 * event of a lease group (group set: the group's delivery and lease)
 */
typedef struct HubRequest
{
	dlist_node	node;
	MemoryContext cxt;			/* everything of the request */
	HubEndpoint *ep;
	int			subscription_id;
	int			batch_max;
	bool		batch;
	int			n;				/* deliveries */
	int			cap;
	int			events;			/* events in the body (a batch delivery has several) */
	int64	   *delivery_ids;
	int64	   *lease_tokens;
	char	   *webhook_id;
	StringInfoData body;
	const char *content_type;
	TimestampTz claimed_at;
	TimestampTz started_at;
	struct HubGroup *group;		/* NULL: not of a lease group */
	int			group_slot;		/* its event's place in the group */

	/* transfer */
	CURL	   *easy;
	uint32		easy_gen;		/* the endpoint's config_gen it was set up at, 0: none */
	struct curl_slist *headers;
	StringInfoData excerpt;
	size_t		received;
	bool		too_big;
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

/* http.c */
extern void hub_http_init(void);
extern CURL *hub_http_prepare(HubRequest *req, char **error);
extern void hub_http_release(HubRequest *req);
extern uint64 hub_oauth2_cred_hash(HubEndpoint *ep);
extern HubTokenFetch *hub_oauth2_prepare(HubEndpoint *ep, MemoryContext parent, char **error);
extern bool hub_oauth2_finish(HubTokenFetch *fetch, CURLcode rc, char **error);
extern void hub_oauth2_release(HubTokenFetch *fetch);
extern bool hub_header_value_ok(const char *header);

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
extern bool hub_header_name_reserved(const char *header, bool api_key);
extern char *hub_http_redact(HubRequest *req, char *text, bool truncated);

#endif							/* HUB_DISPATCH_H */
