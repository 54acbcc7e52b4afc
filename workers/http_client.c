/*-------------------------------------------------------------------------
 *
 * http_client.c
 *		libcurl handles of every request a dispatcher sends, pushed or
 *		polled: their safety options, transport and auth, the response and
 *		its outcome.
 *
 * Every handle: no signals; only http and https, also on redirects;
 * redirects off unless the endpoint allows them (then at most 5, POST kept
 * POST); connect and total timeouts and a low-speed abort (fewer than 100
 * bytes/s for half the timeout); proxies from the environment ignored; no
 * content decoding (no compression bombs); TLS always verified, with
 * logistics_hub.ca_file when set; the response read into a bounded excerpt
 * while the write callback enforces logistics_hub.max_response_size (libcurl's
 * own size limit does not stop a chunked body); every resolved address
 * checked against the egress policy when a socket is opened, so a DNS answer
 * or a redirect cannot reach an address outside it, and the connection's
 * address checked again before every request (a kept-alive connection may
 * predate a narrower policy).  Header values holding
 * CR or LF are refused before anything is sent.  A push request is a POST
 * with "Expect:" cleared (no 100-continue round trip); a poll request a GET
 * of its own URL, which must have the endpoint's origin (scheme, host and
 * port), whose whole body (up to logistics_hub.poll_max_page_bytes) and
 * final response headers are kept.  The request's maker adds its own
 * headers (HubRequestOps.prepare); the endpoint's fixed headers and auth
 * are added here, so push and poll send the same credentials the same way.
 *
 * The outcome (hub_http_outcome) is the same for everyone: a 2xx is a
 * success; another status a failure with its Retry-After; an OAuth2 token
 * refused with 401 is dropped (the retry fetches a new one); a transport
 * error, an egress refusal or a body too big a failure without a status.
 * A 429 or 503 with Retry-After, or any response with X-RateLimit-Remaining:
 * 0 and X-RateLimit-Reset, throttles the whole endpoint until then, capped
 * by logistics_hub.retry_after_max (endpoints.c).
 *
 * Credentials stay where they belong: a URL with user information is
 * refused (the endpoint's and a redirect's: CURLOPT_DISALLOW_USERNAME_IN_URL);
 * a request that carries a credential (bearer, basic, API key, OAuth2
 * token) follows a redirect only within the endpoint's origin (scheme, host
 * and port): the prereq callback refuses a request to another origin
 * before anything is sent on it, because libcurl keeps a custom header
 * such as an API key across hosts; fixed headers that frame the message
 * (Content-Length, Transfer-Encoding, Host, hop-by-hop ones) or that the
 * hub sets itself are refused, so a row that slipped past the endpoints
 * trigger fails its requests; and every secret a request carried is
 * redacted from the response excerpt that is stored (hub_http_redact).
 *
 * OAuth2 token requests (http_oauth2.c) get the same options (never a
 * redirect, hub_http_safety_options).
 *
 * Easy handles are kept for reuse: set up for an endpoint, a handle goes
 * back to that endpoint's idle list as it is, and its next request sets
 * only its own options (body, headers, the callbacks' data); one set up
 * under settings loaded since, or used for a GET of another URL, is reset
 * first (reset handles wait in a small
 * pool).  Connections live in the dispatcher's multi handle, so keep-alive
 * works across requests.  libcurl allocates with malloc: handles and header lists are
 * freed explicitly, never left to memory contexts.
 *
 * workers/http_client.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include "common/base64.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "http.h"
#include "hub_workers.h"
#include <curl/header.h>

#define POOL_MAX 512
#define USER_AGENT "logistics_hub/0.2.0"

static CURL *pool[POOL_MAX];
static int	npool = 0;

/*
 * Every option set is checked: libcurl refuses an option it was built
 * without or a value it cannot use (a protocol list, a CA file).  The first
 * refusal since setopt_reset() is kept, with the option's name, and the
 * request is then not sent.
 */
static CURLcode setopt_rc = CURLE_OK;
static const char *setopt_failed = NULL;

#define SETOPT HUB_SETOPT

/* hub_setopt_note --- keep the first refusal (see HUB_SETOPT) */
void
hub_setopt_note(CURLcode rc, const char *option)
{
	if (rc != CURLE_OK && setopt_failed == NULL)
	{
		setopt_rc = rc;
		setopt_failed = option;
	}
}

/* hub_setopt_reset --- forget the last refusal: a new handle's options begin */
void
hub_setopt_reset(void)
{
	setopt_rc = CURLE_OK;
	setopt_failed = NULL;
}

/* the refusal as an error message (palloc'd), or NULL if none */
char *
hub_setopt_error(const char *what)
{
	if (setopt_failed == NULL)
		return NULL;
	return psprintf("%slibcurl refused %s: %s", what, setopt_failed, curl_easy_strerror(setopt_rc));
}

/* hub_http_init --- libcurl's global set-up, once a process */
void
hub_http_init(void)
{
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		elog(ERROR, "could not initialize libcurl");
}

/* opensocket: the egress policy on every resolved address */
static curl_socket_t
open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *address)
{
	HubEgressNote *note = (HubEgressNote *) clientp;

	if (!hub_egress_address_allowed(&address->addr))
	{
		note->blocked = true;
		hub_format_address(&address->addr, note->address, sizeof(note->address));
		return CURL_SOCKET_BAD;
	}
	return socket(address->family, address->socktype, address->protocol);
}

/*
 * hub_same_origin --- do the two URLs have the same scheme, host and port (the
 * default port of the scheme when none is given)?  False when either
 * cannot be parsed.
 */
bool
hub_same_origin(const char *a, const char *b)
{
	CURLU	   *u[2] = {curl_url(), curl_url()};
	const char *url[2] = {a, b};
	char	   *part[2][3] = {{NULL}};
	CURLUPart	which[3] = {CURLUPART_SCHEME, CURLUPART_HOST, CURLUPART_PORT};
	bool		same = true;

	for (int i = 0; i < 2; i++)
	{
		if (u[i] == NULL || curl_url_set(u[i], CURLUPART_URL, url[i], 0) != CURLUE_OK)
		{
			same = false;
			continue;
		}
		for (int j = 0; j < 3; j++)
			if (curl_url_get(u[i], which[j], &part[i][j], CURLU_DEFAULT_PORT) != CURLUE_OK)
				same = false;
	}
	for (int j = 0; same && j < 3; j++)
		same = pg_strcasecmp(part[0][j], part[1][j]) == 0;
	for (int i = 0; i < 2; i++)
	{
		for (int j = 0; j < 3; j++)
			curl_free(part[i][j]);
		if (u[i] != NULL)
			curl_url_cleanup(u[i]);
	}
	return same;
}

/*
 * prereq: the egress policy once more just before every request is sent,
 * including one on a kept-alive connection, which open_socket never sees
 * (opened under an earlier, wider policy, or before a redirect); and, for
 * a request carrying a credential (note->origin set), no request to
 * another origin than the endpoint's (a redirect elsewhere): libcurl would
 * send a custom header such as an API key there.
 */
static int
check_connection(void *clientp, char *primary_ip, char *local_ip, int primary_port, int local_port)
{
	HubEgressNote *note = (HubEgressNote *) clientp;
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof(ss));
	if (inet_pton(AF_INET, primary_ip, &((struct sockaddr_in *) &ss)->sin_addr) == 1)
		ss.ss_family = AF_INET;
	else if (inet_pton(AF_INET6, primary_ip, &((struct sockaddr_in6 *) &ss)->sin6_addr) == 1)
		ss.ss_family = AF_INET6;
	if (ss.ss_family == 0 || !hub_egress_address_allowed((struct sockaddr *) &ss))
	{
		note->blocked = true;
		strlcpy(note->address, primary_ip, sizeof(note->address));
		return CURL_PREREQFUNC_ABORT;
	}
	if (note->origin != NULL && note->easy != NULL)
	{
		char	   *url = NULL;

		/* (the URL of the request about to go out: a redirect's target) */
		if (curl_easy_getinfo(note->easy, CURLINFO_EFFECTIVE_URL, &url) != CURLE_OK || url == NULL ||
			(strcmp(url, note->origin) != 0 && !hub_same_origin(url, note->origin)))
		{
			note->refused = "redirect to another origin refused: the endpoint's requests carry a credential, "
				"which is never sent to another scheme, host or port";
			return CURL_PREREQFUNC_ABORT;
		}
	}
	return CURL_PREREQFUNC_OK;
}

/*
 * write: keep an excerpt (or, for a request that wants it, the whole body),
 * abort past the size cap
 */
static size_t
write_body(char *data, size_t size, size_t nmemb, void *userdata)
{
	HubRequest *req = (HubRequest *) userdata;
	size_t		len = size * nmemb;

	req->received += len;
	if (req->received > (req->max_body > 0 ? req->max_body : (size_t) hub_max_response_bytes))
	{
		req->too_big = true;
		return 0;
	}
	if (req->max_body > 0)
	{
		/* (no allocation may fail here: the body is in the request's context) */
		appendBinaryStringInfo(&req->response, data, len);
		return len;
	}
	if (req->excerpt.len < EXCERPT_MAX)
	{
		size_t		take = Min(len, (size_t) (EXCERPT_MAX - req->excerpt.len));

		/* cut at a character boundary is done when recording */
		appendBinaryStringInfo(&req->excerpt, data, take);
	}
	return len;
}

/*
 * hub_http_safety_options --- what every handle gets, requests and token
 * requests alike; the egress callbacks note a refusal in *note.
 */
void
hub_http_safety_options(CURL *easy, int timeout_ms, bool redirects, HubEgressNote *note)
{
	SETOPT(easy, CURLOPT_NOSIGNAL, 1L);
	SETOPT(easy, CURLOPT_PROTOCOLS_STR, "http,https");
	SETOPT(easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	SETOPT(easy, CURLOPT_DISALLOW_USERNAME_IN_URL, 1L);
	SETOPT(easy, CURLOPT_FOLLOWLOCATION, redirects ? 1L : 0L);
	SETOPT(easy, CURLOPT_MAXREDIRS, 5L);
	SETOPT(easy, CURLOPT_POSTREDIR, (long) CURL_REDIR_POST_ALL);
	SETOPT(easy, CURLOPT_CONNECTTIMEOUT_MS, (long) Min(hub_connect_timeout_ms, timeout_ms));
	SETOPT(easy, CURLOPT_TIMEOUT_MS, (long) timeout_ms);
	SETOPT(easy, CURLOPT_LOW_SPEED_LIMIT, 100L);
	SETOPT(easy, CURLOPT_LOW_SPEED_TIME, (long) Max(1, timeout_ms / 2000));
	SETOPT(easy, CURLOPT_PROXY, "");
	SETOPT(easy, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) hub_max_response_bytes);
	SETOPT(easy, CURLOPT_SSL_VERIFYPEER, 1L);
	SETOPT(easy, CURLOPT_SSL_VERIFYHOST, 2L);
	if (hub_ca_file != NULL && hub_ca_file[0] != '\0')
		SETOPT(easy, CURLOPT_CAINFO, hub_ca_file);
	SETOPT(easy, CURLOPT_USERAGENT, USER_AGENT);
	SETOPT(easy, CURLOPT_OPENSOCKETFUNCTION, open_socket);
	SETOPT(easy, CURLOPT_OPENSOCKETDATA, note);
	SETOPT(easy, CURLOPT_PREREQFUNCTION, check_connection);
	SETOPT(easy, CURLOPT_PREREQDATA, note);
	SETOPT(easy, CURLOPT_TCP_KEEPALIVE, 1L);
}

/* a header line is "Name: value" with no CR, LF or NUL anywhere */
bool
hub_header_value_ok(const char *header)
{
	return strpbrk(header, "\r\n") == NULL;
}

/*
 * Header names an endpoint's fixed headers may not use (the endpoints
 * trigger, hub._endpoint_check, refuses the same list): HTTP's framing
 * and hop-by-hop headers, which libcurl sets from the request itself (a
 * fixed Content-Length: 0 made the receiver read the body as the next
 * request), the headers the hub sets on every request, and credentials,
 * which belong in the endpoint's secrets.  The API key header may be
 * Authorization, not one of the others.
 */
static const char *const reserved_headers[] = {
	"content-length", "transfer-encoding", "host", "connection", "keep-alive",
	"proxy-connection", "te", "trailer", "upgrade", "expect",
	"content-type", "content-encoding", "webhook-id", "webhook-timestamp",
	"webhook-signature", "idempotency-key", "traceparent", "tracestate",
	"authorization", "proxy-authorization"	/* (last two: fixed headers only) */
};

/*
 * hub_header_name_reserved --- may a header line ("Name: value", or a bare
 * name) not be sent as a fixed header (api_key false) or as the API key
 * header (api_key true)?
 */
bool
hub_header_name_reserved(const char *header, bool api_key)
{
	size_t		len = strcspn(header, ":");
	int			n = lengthof(reserved_headers) - (api_key ? 2 : 0);

	for (int i = 0; i < n; i++)
		if (strlen(reserved_headers[i]) == len && pg_strncasecmp(header, reserved_headers[i], len) == 0)
			return true;
	return false;
}

/* hub_http_append_header --- one more request header; false when it holds CR or LF */
bool
hub_http_append_header(HubRequest *req, const char *line)
{
	struct curl_slist *l;

	if (!hub_header_value_ok(line))
		return false;
	l = curl_slist_append(req->headers, line);
	if (l == NULL)
		return false;
	req->headers = l;
	return true;
}

/*
 * take_handle --- a handle for the request: one set up for this endpoint's
 * current settings (*set_up true; only a POST to the endpoint's URL is kept
 * set up), a reset one, or a new one; NULL when libcurl cannot make one.
 */
static CURL *
take_handle(HubRequest *req, bool *set_up)
{
	HubEndpoint *ep = req->ep;
	bool		reusable = !req->get && req->url == NULL;
	CURL	   *easy = NULL;

	*set_up = false;
	if (reusable && ep->nidle > 0)
	{
		easy = ep->idle[--ep->nidle];
		if (ep->idle_gen[ep->nidle] == ep->config_gen)
			*set_up = true;
		else
			curl_easy_reset(easy);
	}
	if (easy == NULL)
		easy = npool > 0 ? pool[--npool] : curl_easy_init();
	req->easy = easy;
	req->easy_gen = reusable ? ep->config_gen : 0;
	return easy;
}

/*
 * add_endpoint_headers --- the endpoint's fixed headers and its auth
 * (bearer, basic's secret to redact, API key, OAuth2 token); false with
 * *error when one may not be sent.
 */
static bool
add_endpoint_headers(HubRequest *req, char **error)
{
	HubEndpoint *ep = req->ep;
	bool		ok = true;

	for (int i = 0; i < ep->nheaders; i++)
	{
		size_t		namelen = strcspn(ep->headers[i], ":\r\n");

		/* (a row from before the endpoints trigger refused it) */
		if (hub_header_name_reserved(ep->headers[i], false) ||
			(ep->auth_kind == HUB_AUTH_API_KEY && ep->api_key_header != NULL &&
			 strlen(ep->api_key_header) == namelen &&
			 pg_strncasecmp(ep->api_key_header, ep->headers[i], namelen) == 0))
		{
			*error = psprintf("refused to send: header \"%.*s\" cannot be a fixed endpoint header",
							  (int) Min(namelen, 64), ep->headers[i]);
			ok = false;
		}
		else if (!hub_http_append_header(req, ep->headers[i]))
		{
			*error = psprintf("refused to send: the value of header \"%.*s\" holds CR or LF",
							  (int) Min(namelen, 64), ep->headers[i]);
			ok = false;
		}
	}
	switch (ep->auth_kind)
	{
		case HUB_AUTH_NONE:
			break;
		case HUB_AUTH_BEARER:
			req->sent_secret = pstrdup(ep->auth_secret ? ep->auth_secret : "");
			ok &= hub_http_append_header(req, psprintf("Authorization: Bearer %s", req->sent_secret));
			break;
		case HUB_AUTH_BASIC:
			/* (set up with the handle) */
			req->sent_secret = pstrdup(ep->auth_secret ? ep->auth_secret : "");
			break;
		case HUB_AUTH_API_KEY:
			if (ep->api_key_header != NULL && hub_header_name_reserved(ep->api_key_header, true))
			{
				*error = psprintf("refused to send: header \"%.64s\" cannot be the API key header",
								  ep->api_key_header);
				ok = false;
			}
			req->sent_secret = pstrdup(ep->auth_secret ? ep->auth_secret : "");
			ok &= hub_http_append_header(req, psprintf("%s: %s", ep->api_key_header ? ep->api_key_header : "X-API-Key",
													   req->sent_secret));
			break;
		case HUB_AUTH_OAUTH2:
			req->token_generation = ep->oauth2_generation;
			req->sent_secret = pstrdup(ep->oauth2_token ? ep->oauth2_token : "");
			ok &= hub_http_append_header(req, psprintf("Authorization: Bearer %s", req->sent_secret));
			break;
	}
	return ok;
}

/*
 * hub_http_prepare --- a ready easy handle for the request, or NULL with
 * *error set (the request is then recorded as failed without being sent):
 * the handle's transport (URL, method, safety options, basic auth), the
 * maker's own headers and body (req->ops->prepare), the endpoint's fixed
 * headers and auth.  A request to its own URL (a poll's page) is refused
 * unless that URL has the endpoint's origin: the endpoint's credentials
 * never go to another host.
 */
CURL *
hub_http_prepare(HubRequest *req, char **error)
{
	HubEndpoint *ep = req->ep;
	const char *url = req->url ? req->url : ep->url;
	CURL	   *easy;
	MemoryContext old = MemoryContextSwitchTo(req->cxt);
	bool		ok = true;
	bool		set_up;

	*error = NULL;
	easy = take_handle(req, &set_up);
	if (easy == NULL)
	{
		*error = pstrdup("could not create a libcurl handle");
		MemoryContextSwitchTo(old);
		return NULL;
	}

	hub_setopt_reset();
	if (!set_up && hub_url_has_userinfo(url))
	{
		/* (a row from before the endpoints trigger refused it) */
		*error = pstrdup("refused to send: the endpoint URL holds user information; credentials belong in auth_kind and auth_secret");
		ok = false;
	}
	if (ok && req->url != NULL && strcmp(req->url, ep->url) != 0 && !hub_same_origin(req->url, ep->url))
	{
		*error = pstrdup("refused to send: the URL is not of the endpoint's origin (scheme, host and port); "
						 "the endpoint's credentials are never sent to another host");
		ok = false;
	}
	if (!set_up)
	{
		hub_http_safety_options(easy, ep->timeout_ms, ep->allow_redirects, &req->egress);
		SETOPT(easy, CURLOPT_WRITEFUNCTION, write_body);
		SETOPT(easy, CURLOPT_URL, url);
		if (req->get)
			SETOPT(easy, CURLOPT_HTTPGET, 1L);
		else
			SETOPT(easy, CURLOPT_POST, 1L);
		if (req->max_body > 0)
			SETOPT(easy, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) req->max_body);
		if (ep->auth_kind == HUB_AUTH_BASIC)
		{
			SETOPT(easy, CURLOPT_HTTPAUTH, (long) CURLAUTH_BASIC);
			SETOPT(easy, CURLOPT_USERPWD, ep->auth_secret ? ep->auth_secret : "");
		}
	}
	/* what is this request's own */
	SETOPT(easy, CURLOPT_OPENSOCKETDATA, &req->egress);
	SETOPT(easy, CURLOPT_PREREQDATA, &req->egress);
	SETOPT(easy, CURLOPT_WRITEDATA, req);
	SETOPT(easy, CURLOPT_ERRORBUFFER, req->errbuf);
	SETOPT(easy, CURLOPT_PRIVATE, req);
	req->errbuf[0] = '\0';

	if (ok && req->ops->prepare != NULL && !req->ops->prepare(req, error))
		ok = false;
	if (!req->get)
	{
		SETOPT(easy, CURLOPT_POSTFIELDS, req->body.data);
		SETOPT(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->body.len);
	}
	ok &= add_endpoint_headers(req, error);

	/*
	 * A credential never leaves the endpoint's origin: with redirects
	 * allowed, check_connection refuses a request to another one (libcurl
	 * drops its own basic auth and an Authorization header there, but keeps
	 * an API key header).
	 */
	req->egress.easy = easy;
	req->egress.origin = (ep->allow_redirects && ep->auth_kind != HUB_AUTH_NONE) ? pstrdup(ep->url) : NULL;
	SETOPT(easy, CURLOPT_HTTPHEADER, req->headers);
	MemoryContextSwitchTo(old);
	if (ok && setopt_failed != NULL)
	{
		*error = hub_setopt_error("");
		ok = false;
	}
	if (!ok)
	{
		if (*error == NULL)
			*error = pstrdup("refused to send: a header value holds CR or LF");
		req->easy_gen = 0;		/* (not to be reused as set up) */
		hub_http_release(req);
		return NULL;
	}
	return easy;
}

/*
 * note_throttle --- a response that asks for a pause throttles the whole
 * endpoint (endpoints.c): a 429 or 503 with Retry-After (delta seconds or
 * an HTTP date: libcurl's CURLINFO_RETRY_AFTER reads both), or any
 * response with X-RateLimit-Remaining: 0 and X-RateLimit-Reset (epoch
 * seconds when above 10^9, else delta seconds); capped by
 * logistics_hub.retry_after_max.  Returns the Retry-After of a 429 or 503
 * in seconds, capped the same way, -1 when none.  Bad header values are
 * ignored.
 */
static int64
note_throttle(HubRequest *req, long status)
{
	curl_off_t	retry_after = -1;
	int64		secs = -1;
	int64		ra = -1;
	struct curl_header *h;

	if (status == 429 || status == 503)
	{
		if (curl_easy_getinfo(req->easy, CURLINFO_RETRY_AFTER, &retry_after) == CURLE_OK && retry_after > 0)
			secs = ra = (int64) retry_after;
	}
	if (secs < 0 &&
		curl_easy_header(req->easy, "X-RateLimit-Remaining", 0, CURLH_HEADER, -1, &h) == CURLHE_OK &&
		strspn(h->value, " 0") == strlen(h->value) && strchr(h->value, '0') != NULL &&
		curl_easy_header(req->easy, "X-RateLimit-Reset", 0, CURLH_HEADER, -1, &h) == CURLHE_OK)
	{
		char	   *end;
		long long	v;

		errno = 0;
		v = strtoll(h->value, &end, 10);
		while (*end == ' ')
			end++;
		if (errno == 0 && end != h->value && *end == '\0' && v > 0)
			secs = v > 1000000000LL ? (int64) (v - (long long) time(NULL)) : (int64) v;
	}
	if (secs > 0)
		hub_endpoint_throttle(req->ep, GetCurrentTimestamp() +
							  Min(secs, (int64) hub_retry_after_max_s) * USECS_PER_SEC);
	return ra > 0 ? Min(ra, (int64) hub_retry_after_max_s) : ra;
}

/*
 * hub_http_outcome --- what a finished transfer (rc its libcurl result)
 * comes to, for its maker: success (a 2xx), a failure with the status and
 * Retry-After, a refused OAuth2 token (dropped, the failure transient), or
 * a failure without a status (transport, egress, a body too big).  Never
 * raises for what the response holds.  With req->want_headers, the final
 * response's headers are kept in req->resp_headers.
 */
void
hub_http_outcome(HubRequest *req, CURLcode rc, HubOutcome *out)
{
	long		status = 0;

	memset(out, 0, sizeof(*out));
	out->retry_after_s = -1;
	out->latency_ms = req->started_at ? (int) ((GetCurrentTimestamp() - req->started_at) / 1000) : 0;
	curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &status);
	if (rc == CURLE_OK && req->want_headers)
	{
		struct curl_header *h = NULL;
		MemoryContext old = MemoryContextSwitchTo(req->cxt);

		while ((h = curl_easy_nextheader(req->easy, CURLH_HEADER, -1, h)) != NULL)
			req->resp_headers = lappend(req->resp_headers, psprintf("%s: %s", h->name, h->value));
		MemoryContextSwitchTo(old);
	}

	if (rc == CURLE_OK)
	{
		int64		retry_after = note_throttle(req, status);

		out->http_status = status;
		if (status >= 200 && status < 300)
			out->error = NULL;
		else if (status == 401 && req->ep->auth_kind == HUB_AUTH_OAUTH2)
		{
			/* the token was refused: see hub_oauth2_refused */
			hub_oauth2_refused(req->ep, req->token_generation);
			out->http_status = 0;
			out->error = "HTTP 401: the OAuth2 access token was refused; the retry fetches a new one";
		}
		else
		{
			out->error = status >= 300 && status < 400 ? "redirect not followed" : "";
			out->retry_after_s = retry_after;
		}
	}
	else if (req->egress.refused != NULL)
		out->error = pstrdup(req->egress.refused);
	else if (req->egress.blocked)
		out->error = psprintf("blocked by egress policy: address %s", req->egress.address);
	else if (req->too_big || rc == CURLE_FILESIZE_EXCEEDED)
		out->error = psprintf("response larger than %zu bytes",
							  req->max_body > 0 ? req->max_body : (size_t) hub_max_response_bytes);
	else
		out->error = psprintf("%s%s%s", curl_easy_strerror(rc),
							  req->errbuf[0] ? ": " : "", req->errbuf);
}

/* hub_http_release --- give the handle back to the pool, free the headers */
void
hub_http_release(HubRequest *req)
{
	HubEndpoint *ep = req->ep;

	if (req->easy != NULL)
	{
		if (req->easy_gen != 0 && req->easy_gen == ep->config_gen && ep->nidle < HUB_IDLE_HANDLES)
		{
			/* kept set up for the endpoint's next request */
			ep->idle_gen[ep->nidle] = req->easy_gen;
			ep->idle[ep->nidle++] = req->easy;
		}
		else
		{
			curl_easy_reset(req->easy);
			if (npool < POOL_MAX)
				pool[npool++] = req->easy;
			else
				curl_easy_cleanup(req->easy);
		}
		req->easy = NULL;
	}
	if (req->headers != NULL)
	{
		curl_slist_free_all(req->headers);
		req->headers = NULL;
	}
}

/*
 * hub_http_redact --- text (a response excerpt of req) with every
 * occurrence of a secret the request carried replaced by "[redacted]": the
 * bearer token, API key or OAuth2 access token, for basic auth
 * "user:password", its base64 and the password alone, each also with "/"
 * escaped as JSON may write it ("\/").  With truncated (the excerpt was cut),
 * a tail that begins a secret (3 characters or more) is redacted too.  The
 * result stays within EXCERPT_MAX bytes (a marker is never cut: the text
 * before it is).  Returns text itself when there is nothing to redact, else a palloc'd
 * copy.  Never fails but for out of memory.
 */
#define REDACTED_LEN 10			/* strlen("[redacted]") */

char *
hub_http_redact(HubRequest *req, char *text, bool truncated)
{
	const char *v[8];
	int			nv = 0;
	int			n;
	size_t		len;
	StringInfoData out;

	if (req->sent_secret == NULL || req->sent_secret[0] == '\0' || text == NULL)
		return text;
	v[nv++] = req->sent_secret;
	if (req->ep->auth_kind == HUB_AUTH_BASIC)
	{
		const char *colon = strchr(req->sent_secret, ':');
		int			srclen = strlen(req->sent_secret);
		char	   *b64 = palloc(pg_b64_enc_len(srclen) + 1);
		int			b64len = pg_b64_encode(req->sent_secret, srclen, b64, pg_b64_enc_len(srclen));

		b64[Max(b64len, 0)] = '\0';
		if (b64len > 0)
			v[nv++] = b64;
		if (colon != NULL && colon[1] != '\0')
			v[nv++] = colon + 1;
	}
	n = nv;
	for (int i = 0; i < n; i++)
		if (strchr(v[i], '/') != NULL)
		{
			StringInfoData esc;

			initStringInfo(&esc);
			for (const char *c = v[i]; *c; c++)
			{
				if (*c == '/')
					appendStringInfoChar(&esc, '\\');
				appendStringInfoChar(&esc, *c);
			}
			v[nv++] = esc.data;
		}

	len = strlen(text);
	initStringInfo(&out);
	for (size_t i = 0; i < len;)
	{
		size_t		best = 0;

		for (int k = 0; k < nv; k++)
		{
			size_t		vl = strlen(v[k]);

			if (vl <= len - i && vl > best && memcmp(text + i, v[k], vl) == 0)
				best = vl;
			/* a cut excerpt that ends inside a secret */
			else if (truncated && vl > len - i && len - i >= 3 && memcmp(text + i, v[k], len - i) == 0)
				best = Max(best, len - i);
		}
		if (best > 0)
		{
			/*
			 * Within the excerpt's size, a marker whole: the record cuts a
			 * longer excerpt, and a cut marker would end in the secret's
			 * place with "[redact"
			 */
			if (out.len + REDACTED_LEN > EXCERPT_MAX)
			{
				out.len = pg_mbcliplen(out.data, out.len, Max(0, EXCERPT_MAX - REDACTED_LEN));
				out.data[out.len] = '\0';
				appendStringInfoString(&out, "[redacted]");
				break;
			}
			appendStringInfoString(&out, "[redacted]");
			i += best;
		}
		else if (out.len + 1 > EXCERPT_MAX)
			break;
		else
			appendStringInfoChar(&out, text[i++]);
	}
	return out.data;
}

/*
 * hub_http_excerpt --- the response excerpt cut to text valid in the
 * database encoding, without NULs, and without the secrets the request
 * carried (hub_http_redact)
 */
char *
hub_http_excerpt(HubRequest *req)
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
