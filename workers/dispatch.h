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

	/* OAuth2 access token, cached until it expires */
	char	   *oauth2_token;	/* malloc'd */
	TimestampTz oauth2_expires;

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
} HubEndpoint;

/* one HTTP request: one delivery, or several of a batch subscription */
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

	/* transfer */
	CURL	   *easy;
	struct curl_slist *headers;
	StringInfoData excerpt;
	size_t		received;
	bool		too_big;
	bool		blocked;
	char		blocked_address[64];
	char		errbuf[CURL_ERROR_SIZE];
} HubRequest;

/* http.c */
extern void hub_http_init(void);
extern CURL *hub_http_prepare(HubRequest *req, char **error);
extern void hub_http_release(HubRequest *req);
extern bool hub_oauth2_refresh(HubEndpoint *ep, char **error);
extern bool hub_header_value_ok(const char *header);

#endif							/* HUB_DISPATCH_H */
