/*-------------------------------------------------------------------------
 *
 * http_oauth2.c
 *		OAuth2 access tokens of endpoints (client credentials grant): the
 *		token request, a transfer on the dispatcher's multi handle like any
 *		request, and the token cache.
 *
 * An OAuth2 endpoint without a valid token starts one token request (never
 * more than one at a time) and its queue waits, spending no attempt, until
 * the answer (hub_oauth2_ready, called by the send queue's pump): a token
 * lets the queue go, a failure fails every queued request once.  Nothing
 * blocks, so a slow or hung token URL holds up only its own endpoint.  A
 * token refused with 401 before it expired is dropped (hub_oauth2_refused)
 * and the retry fetches a new one; a reload that changes the token URL or
 * the client credentials drops the token and stops a request in flight
 * (hub_oauth2_after_load).  Token requests get every safety option of a
 * request (http_client.c), never a redirect.
 *
 * workers/http_oauth2.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "http.h"
#include "hub_workers.h"

#define SETOPT HUB_SETOPT

static dlist_head token_fetches = DLIST_STATIC_INIT(token_fetches); /* in flight */

static HubTokenFetch *hub_oauth2_prepare(HubEndpoint *ep, MemoryContext parent, char **error);
static bool hub_oauth2_finish(HubTokenFetch *fetch, CURLcode rc, char **error);
static void hub_oauth2_release(HubTokenFetch *fetch);

#define TOKEN_RESPONSE_MAX 65536

/* body of a token response, bounded */
static size_t
write_token(char *data, size_t size, size_t nmemb, void *userdata)
{
	HubTokenFetch *fetch = (HubTokenFetch *) userdata;
	size_t		len = size * nmemb;

	if (fetch->resp.len + len > TOKEN_RESPONSE_MAX)
	{
		fetch->too_big = true;
		return 0;
	}
	appendBinaryStringInfo(&fetch->resp, data, len);
	return len;
}

/* a string member of a JSON object, or NULL */
static char *
json_member(Jsonb *jb, const char *key)
{
	JsonbValue *v = getKeyJsonValueFromContainer(&jb->root, key, strlen(key), NULL);

	if (v == NULL)
		return NULL;
	if (v->type == jbvString)
		return pnstrdup(v->val.string.val, v->val.string.len);
	if (v->type == jbvNumeric)
		return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	return NULL;
}

static uint64
hash_string(const char *s, uint64 seed)
{
	/* NULL and "" differ; the terminator separates consecutive strings */
	if (s == NULL)
		return hash_bytes_uint32_extended(0x6e756c6c, seed);
	return hash_bytes_extended((const unsigned char *) s, strlen(s) + 1, seed);
}

/*
 * hub_oauth2_cred_hash --- a hash of what a token is fetched with (token
 * URL, client id and secret), 0 for an endpoint that is not
 * OAuth2.  Compared, never stored anywhere but in the dispatcher's memory.
 */
uint64
hub_oauth2_cred_hash(HubEndpoint *ep)
{
	uint64		h;

	if (ep->auth_kind != HUB_AUTH_OAUTH2)
		return 0;
	h = hash_string(ep->oauth2_token_url, 1);
	h = hash_string(ep->oauth2_client_id, h);
	h = hash_string(ep->oauth2_client_secret, h);
	return h == 0 ? 1 : h;
}

/*
 * hub_oauth2_prepare --- an easy handle, not started, that asks the
 * endpoint's token URL for an access token with the client credentials
 * grant (client id and secret sent as HTTP basic auth, RFC 6749 2.3.1),
 * with every safety option of a request (no redirects) and the endpoint's
 * timeout.  libcurl copies the URL and credentials, so a reload may free
 * the endpoint's strings while it runs.  NULL with *error when it cannot
 * be sent (no token URL, an option refused).  The memory is a child
 * context of parent; hub_oauth2_release frees everything.
 */
static HubTokenFetch *
hub_oauth2_prepare(HubEndpoint *ep, MemoryContext parent, char **error)
{
	MemoryContext cxt;
	HubTokenFetch *fetch;
	CURL	   *easy;

	*error = NULL;
	if (ep->oauth2_token_url == NULL)
	{
		*error = pstrdup("oauth2: the endpoint has no oauth2_token_url");
		return NULL;
	}
	if (hub_url_has_userinfo(ep->oauth2_token_url))
	{
		*error = pstrdup("oauth2: the token URL holds user information; the client credentials belong in oauth2_client_id and oauth2_client_secret");
		return NULL;
	}
	easy = curl_easy_init();
	if (easy == NULL)
	{
		*error = pstrdup("oauth2: could not create a libcurl handle");
		return NULL;
	}
	cxt = AllocSetContextCreate(parent, "logistics_hub token request", ALLOCSET_SMALL_SIZES);
	fetch = MemoryContextAllocZero(cxt, sizeof(HubTokenFetch));
	fetch->cxt = cxt;
	fetch->ep = ep;
	fetch->easy = easy;
	fetch->cred_hash = ep->oauth2_cred_hash;
	{
		MemoryContext old = MemoryContextSwitchTo(cxt);

		initStringInfo(&fetch->resp);
		MemoryContextSwitchTo(old);
	}

	hub_setopt_reset();
	hub_http_safety_options(easy, ep->timeout_ms, false, &fetch->egress);
	SETOPT(easy, CURLOPT_PRIVATE, fetch);
	SETOPT(easy, CURLOPT_URL, ep->oauth2_token_url);
	/* a literal: libcurl does not copy POSTFIELDS */
	SETOPT(easy, CURLOPT_POSTFIELDS, "grant_type=client_credentials");
	SETOPT(easy, CURLOPT_HTTPAUTH, (long) CURLAUTH_BASIC);
	SETOPT(easy, CURLOPT_USERNAME, ep->oauth2_client_id ? ep->oauth2_client_id : "");
	SETOPT(easy, CURLOPT_PASSWORD, ep->oauth2_client_secret ? ep->oauth2_client_secret : "");
	SETOPT(easy, CURLOPT_WRITEFUNCTION, write_token);
	SETOPT(easy, CURLOPT_WRITEDATA, fetch);
	SETOPT(easy, CURLOPT_ERRORBUFFER, fetch->errbuf);
	if ((*error = hub_setopt_error("oauth2 token request not sent: ")) != NULL)
	{
		hub_oauth2_release(fetch);
		return NULL;
	}
	return fetch;
}

/*
 * hub_oauth2_finish --- the outcome of a finished token request (rc its
 * libcurl result): on success the token is cached in the endpoint until
 * expires_in runs out, less a margin of 30 s or, for a token valid a
 * minute or less, half its life (3600 when the answer does not say), and
 * true is returned; otherwise false
 * with *error (palloc'd) saying why, a malformed answer included: outside
 * data is recorded, never raised.  The error never holds the token or the
 * response.
 */
static bool
hub_oauth2_finish(HubTokenFetch *fetch, CURLcode rc, char **error)
{
	HubEndpoint *ep = fetch->ep;
	long		status = 0;
	char	   *volatile token = NULL;
	char	   *volatile expires = NULL;
	volatile bool parsed = false;
	MemoryContext cxt = CurrentMemoryContext;

	*error = NULL;
	curl_easy_getinfo(fetch->easy, CURLINFO_RESPONSE_CODE, &status);
	if (fetch->egress.blocked)
	{
		*error = psprintf("oauth2 token request blocked by egress policy: address %s", fetch->egress.address);
		return false;
	}
	if (fetch->too_big)
	{
		*error = psprintf("oauth2 token response larger than %d bytes", TOKEN_RESPONSE_MAX);
		return false;
	}
	if (rc != CURLE_OK)
	{
		*error = psprintf("oauth2 token request failed: %s%s%s", curl_easy_strerror(rc),
						  fetch->errbuf[0] ? ": " : "", fetch->errbuf);
		return false;
	}
	if (status != 200)
	{
		*error = psprintf("oauth2 token request answered HTTP %ld", status);
		return false;
	}
	/* the answer is outside data: a parse error is recorded, not raised */
	PG_TRY();
	{
		Jsonb	   *jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(fetch->resp.data)));

		if (JB_ROOT_IS_OBJECT(jb))
		{
			token = json_member(jb, "access_token");
			expires = json_member(jb, "expires_in");
		}
		parsed = true;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
	}
	PG_END_TRY();
	if (!parsed || token == NULL || token[0] == '\0' || !hub_header_value_ok(token))
	{
		*error = pstrdup("oauth2 token response is not JSON with an access_token");
		return false;
	}
	if (ep->oauth2_token != NULL)
		free(ep->oauth2_token);
	ep->oauth2_token = strdup(token);
	if (ep->oauth2_token == NULL)
	{
		*error = pstrdup("out of memory");
		return false;
	}
	{
		int64		life = expires ? Max(0, atol(expires)) : 3600;

		ep->oauth2_expires = GetCurrentTimestamp() +
			(life - Min(30, life / 2)) * USECS_PER_SEC;
	}
	ep->oauth2_fresh = true;
	ep->oauth2_token_hash = fetch->cred_hash;
	ep->oauth2_generation++;
	return true;
}

/*
 * hub_oauth2_release --- free a token request (already removed from the
 * multi handle, or never added).
 */
static void
hub_oauth2_release(HubTokenFetch *fetch)
{
	curl_easy_cleanup(fetch->easy);
	MemoryContextDelete(fetch->cxt);
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
	hub_loop_stop(fetch->easy);
	dlist_delete(&fetch->node);
	ep->token_fetch = NULL;
	hub_oauth2_release(fetch);
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

	/* an expired or refused token is of no use any more */
	if (ep->oauth2_token != NULL)
	{
		free(ep->oauth2_token);
		ep->oauth2_token = NULL;
	}
	fetch = hub_oauth2_prepare(ep, hub_worker_cxt, &error);
	if (fetch == NULL)
	{
		hub_send_fail_endpoint(ep, error);
		return;
	}
	if (!hub_loop_start(fetch->easy, &error))
	{
		hub_oauth2_release(fetch);
		hub_send_fail_endpoint(ep, psprintf("oauth2 token request not sent: %s", error));
		return;
	}
	dlist_push_tail(&token_fetches, &fetch->node);
	ep->token_fetch = fetch;
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

	hub_loop_stop(fetch->easy);
	dlist_delete(&fetch->node);
	ep->token_fetch = NULL;
	if (!hub_oauth2_finish(fetch, rc, &error))
		hub_send_fail_endpoint(ep, error);
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
 * hub_oauth2_collect --- if priv (a finished transfer's private pointer) is
 * a token request, take its outcome (rc) and return true
 */
bool
hub_oauth2_collect(void *priv, CURLcode rc)
{
	HubTokenFetch *fetch = token_fetch_of(priv);

	if (fetch == NULL)
		return false;
	token_done(fetch, rc);
	return true;
}

/* hub_oauth2_abort_all --- stop every token request (the process exits) */
void
hub_oauth2_abort_all(void)
{
	dlist_mutable_iter it;

	dlist_foreach_modify(it, &token_fetches)
		token_abort(dlist_container(HubTokenFetch, node, it.cur)->ep);
}

/*
 * hub_oauth2_ready --- may a request of this endpoint go out now as far as
 * its token goes?  An endpoint without OAuth2 always may; one without a
 * valid token starts the token request (when none is in flight) and its
 * queue waits, spending no attempt.
 */
bool
hub_oauth2_ready(HubEndpoint *ep, TimestampTz now)
{
	if (ep->auth_kind != HUB_AUTH_OAUTH2 ||
		(ep->oauth2_token != NULL && (ep->oauth2_expires > now || ep->oauth2_fresh)))
		return true;
	if (ep->token_fetch == NULL)
		token_start(ep);
	return false;
}

/*
 * hub_oauth2_refused --- a request sent with token generation gen was
 * answered 401: the access token was refused (rotated or revoked before it
 * expired).  The caller records a transient failure, without the status
 * that would make it a permanent 4xx; the retry fetches a new token.  Bad
 * client credentials fail at the token endpoint, transient too, until
 * max_attempts.  Only a refusal of the current token drops it: the other
 * requests that went out with the old one come back with 401 too, and must
 * not each cost another token request.
 */
void
hub_oauth2_refused(HubEndpoint *ep, uint32 gen)
{
	if (gen == ep->oauth2_generation)
	{
		ep->oauth2_expires = 0;
		ep->oauth2_fresh = false;
	}
}

/*
 * hub_oauth2_after_load --- the endpoint's settings were read again: a new
 * token URL or new client credentials (or no OAuth2 any more) make the
 * token and a token request in flight belong to the old ones.  The request
 * is stopped rather than left to finish, so that fixing a token URL that
 * hangs takes effect within a second, not after the timeout.  (A request in
 * flight needs none of the strings freed by the reload: libcurl copied
 * them.)
 */
void
hub_oauth2_after_load(HubEndpoint *ep)
{
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
