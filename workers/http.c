/*-------------------------------------------------------------------------
 *
 * http.c
 *		libcurl settings of every request a dispatcher sends.
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
 * CR or LF are refused before anything is sent.  Requests are POSTs with
 * "Expect:" cleared (no 100-continue round trip).
 *
 * Easy handles are kept in a small pool and reset for reuse; connections
 * live in the dispatcher's multi handle, so keep-alive works across
 * requests.  libcurl allocates with malloc: handles and header lists are
 * freed explicitly, never left to memory contexts.
 *
 * workers/http.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include "miscadmin.h"
#include "common/base64.h"
#include "storage/pmsignal.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "dispatch.h"
#include "hub_workers.h"

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

#define SETOPT(easy, option, value) \
	setopt_note(curl_easy_setopt((easy), (option), (value)), #option)

static void
setopt_note(CURLcode rc, const char *option)
{
	if (rc != CURLE_OK && setopt_failed == NULL)
	{
		setopt_rc = rc;
		setopt_failed = option;
	}
}

static void
setopt_reset(void)
{
	setopt_rc = CURLE_OK;
	setopt_failed = NULL;
}

/* the refusal as an error message (palloc'd), or NULL if none */
static char *
setopt_error(const char *what)
{
	if (setopt_failed == NULL)
		return NULL;
	return psprintf("%slibcurl refused %s: %s", what, setopt_failed, curl_easy_strerror(setopt_rc));
}

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
	HubRequest *req = (HubRequest *) clientp;

	if (!hub_egress_address_allowed(&address->addr))
	{
		if (req != NULL)
		{
			req->blocked = true;
			hub_format_address(&address->addr, req->blocked_address, sizeof(req->blocked_address));
		}
		return CURL_SOCKET_BAD;
	}
	return socket(address->family, address->socktype, address->protocol);
}

/*
 * prereq: the egress policy once more just before every request is sent,
 * including one on a kept-alive connection, which open_socket never sees
 * (opened under an earlier, wider policy, or before a redirect).
 */
static int
check_connection(void *clientp, char *primary_ip, char *local_ip, int primary_port, int local_port)
{
	HubRequest *req = (HubRequest *) clientp;
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof(ss));
	if (inet_pton(AF_INET, primary_ip, &((struct sockaddr_in *) &ss)->sin_addr) == 1)
		ss.ss_family = AF_INET;
	else if (inet_pton(AF_INET6, primary_ip, &((struct sockaddr_in6 *) &ss)->sin6_addr) == 1)
		ss.ss_family = AF_INET6;
	if (ss.ss_family != 0 && hub_egress_address_allowed((struct sockaddr *) &ss))
		return CURL_PREREQFUNC_OK;
	if (req != NULL)
	{
		req->blocked = true;
		strlcpy(req->blocked_address, primary_ip, sizeof(req->blocked_address));
	}
	return CURL_PREREQFUNC_ABORT;
}

/* write: keep an excerpt, abort past the size cap */
static size_t
write_body(char *data, size_t size, size_t nmemb, void *userdata)
{
	HubRequest *req = (HubRequest *) userdata;
	size_t		len = size * nmemb;

	req->received += len;
	if (req->received > (size_t) hub_max_response_bytes)
	{
		req->too_big = true;
		return 0;
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
 * progress: give up when the worker is asked to stop, when a procsignal
 * barrier waits for it (DROP DATABASE would otherwise wait for the whole
 * timeout) or when the postmaster is gone (an orphan must not outlive it:
 * it would keep the old shared memory in use and the next start would
 * fail).  libcurl calls this at least once a second even while nothing
 * arrives; the caller processes the interrupt after curl_easy_perform.
 */
static int
on_progress(void *clientp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
	if (ProcDiePending || QueryCancelPending || ProcSignalBarrierPending)
		return 1;
	return PostmasterIsAlive() ? 0 : 1;
}

static void
set_safety_options(CURL *easy, int timeout_ms, bool redirects)
{
	SETOPT(easy, CURLOPT_NOSIGNAL, 1L);
	SETOPT(easy, CURLOPT_PROTOCOLS_STR, "http,https");
	SETOPT(easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
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
	SETOPT(easy, CURLOPT_PREREQFUNCTION, check_connection);
	SETOPT(easy, CURLOPT_TCP_KEEPALIVE, 1L);
}

/* a header line is "Name: value" with no CR, LF or NUL anywhere */
bool
hub_header_value_ok(const char *header)
{
	return strpbrk(header, "\r\n") == NULL;
}

static bool
append_header(HubRequest *req, const char *line)
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
 * hub_http_prepare --- a ready easy handle for the request, or NULL with
 * *error set (the request is then recorded as failed without being sent).
 */
CURL *
hub_http_prepare(HubRequest *req, char **error)
{
	HubEndpoint *ep = req->ep;
	CURL	   *easy;
	MemoryContext old = MemoryContextSwitchTo(req->cxt);
	StringInfoData sig;
	int64		now_s = (int64) time(NULL);
	bool		ok = true;

	*error = NULL;
	easy = npool > 0 ? pool[--npool] : curl_easy_init();
	if (easy == NULL)
	{
		*error = pstrdup("could not create a libcurl handle");
		MemoryContextSwitchTo(old);
		return NULL;
	}
	req->easy = easy;

	setopt_reset();
	set_safety_options(easy, ep->timeout_ms, ep->allow_redirects);
	SETOPT(easy, CURLOPT_OPENSOCKETDATA, req);
	SETOPT(easy, CURLOPT_PREREQDATA, req);
	SETOPT(easy, CURLOPT_WRITEFUNCTION, write_body);
	SETOPT(easy, CURLOPT_WRITEDATA, req);
	SETOPT(easy, CURLOPT_ERRORBUFFER, req->errbuf);
	SETOPT(easy, CURLOPT_PRIVATE, req);
	SETOPT(easy, CURLOPT_URL, ep->url);
	SETOPT(easy, CURLOPT_POST, 1L);
	SETOPT(easy, CURLOPT_POSTFIELDS, req->body.data);
	SETOPT(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->body.len);
	req->errbuf[0] = '\0';

	ok &= append_header(req, psprintf("Content-Type: %s", req->content_type));
	ok &= append_header(req, "Expect:");
	ok &= append_header(req, psprintf("webhook-id: %s", req->webhook_id));
	ok &= append_header(req, psprintf("webhook-timestamp: " INT64_FORMAT, now_s));
	/* a structured-field string, as draft-ietf-httpapi-idempotency-key-header has it */
	ok &= append_header(req, psprintf("Idempotency-Key: \"%s\"", req->webhook_id));
	if (ep->nsecrets > 0)
	{
		initStringInfo(&sig);
		appendStringInfoString(&sig, "webhook-signature: ");
		for (int i = 0; i < ep->nsecrets; i++)
		{
			if (i > 0)
				appendStringInfoChar(&sig, ' ');
			if (!hub_webhook_sign(ep->signing_secrets[i], req->webhook_id, now_s,
								  req->body.data, req->body.len, &sig))
			{
				*error = pstrdup("a signing secret of the endpoint is not valid whsec_ base64");
				ok = false;
			}
		}
		ok &= append_header(req, sig.data);
	}
	for (int i = 0; i < ep->nheaders; i++)
		if (!append_header(req, ep->headers[i]))
		{
			*error = psprintf("refused to send: the value of header \"%.*s\" holds CR or LF",
							  (int) Min(strcspn(ep->headers[i], ":\r\n"), 64), ep->headers[i]);
			ok = false;
		}
	switch (ep->auth_kind)
	{
		case HUB_AUTH_NONE:
			break;
		case HUB_AUTH_BEARER:
			ok &= append_header(req, psprintf("Authorization: Bearer %s", ep->auth_secret ? ep->auth_secret : ""));
			break;
		case HUB_AUTH_BASIC:
			SETOPT(easy, CURLOPT_HTTPAUTH, (long) CURLAUTH_BASIC);
			SETOPT(easy, CURLOPT_USERPWD, ep->auth_secret ? ep->auth_secret : "");
			break;
		case HUB_AUTH_API_KEY:
			ok &= append_header(req, psprintf("%s: %s", ep->api_key_header ? ep->api_key_header : "X-API-Key",
											  ep->auth_secret ? ep->auth_secret : ""));
			break;
		case HUB_AUTH_OAUTH2:
			ok &= append_header(req, psprintf("Authorization: Bearer %s", ep->oauth2_token ? ep->oauth2_token : ""));
			break;
	}
	SETOPT(easy, CURLOPT_HTTPHEADER, req->headers);
	MemoryContextSwitchTo(old);
	if (ok && setopt_failed != NULL)
	{
		*error = setopt_error("");
		ok = false;
	}
	if (!ok)
	{
		if (*error == NULL)
			*error = pstrdup("refused to send: a header value holds CR or LF");
		hub_http_release(req);
		return NULL;
	}
	return easy;
}

/* hub_http_release --- give the handle back to the pool, free the headers */
void
hub_http_release(HubRequest *req)
{
	if (req->easy != NULL)
	{
		curl_easy_reset(req->easy);
		if (npool < POOL_MAX)
			pool[npool++] = req->easy;
		else
			curl_easy_cleanup(req->easy);
		req->easy = NULL;
	}
	if (req->headers != NULL)
	{
		curl_slist_free_all(req->headers);
		req->headers = NULL;
	}
}

/* body of a token response, bounded */
static size_t
write_token(char *data, size_t size, size_t nmemb, void *userdata)
{
	StringInfo	buf = (StringInfo) userdata;
	size_t		len = size * nmemb;

	if (buf->len + len > 65536)
		return 0;
	appendBinaryStringInfo(buf, data, len);
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

/*
 * hub_oauth2_refresh --- fetch an access token with the client credentials
 * grant (client id and secret sent as HTTP basic auth, RFC 6749 2.3.1) and
 * cache it until expires_in runs out (less 30 s).  Blocking, bounded by the
 * endpoint's timeout and interruptible.  false with *error on any failure,
 * a malformed answer included; false with *error NULL when interrupted
 * (a procsignal barrier or the postmaster's death): nothing to record, ask
 * again later.
 */
bool
hub_oauth2_refresh(HubEndpoint *ep, char **error)
{
	CURL	   *easy = curl_easy_init();
	StringInfoData resp;
	char		errbuf[CURL_ERROR_SIZE];
	CURLcode	rc;
	long		status = 0;
	char	   *token = NULL;
	char	   *expires = NULL;
	volatile bool parsed = false;
	MemoryContext cxt = CurrentMemoryContext;

	*error = NULL;
	if (ep->oauth2_token)
	{
		free(ep->oauth2_token);
		ep->oauth2_token = NULL;
	}
	if (easy == NULL)
	{
		*error = pstrdup("oauth2: could not create a libcurl handle");
		return false;
	}
	if (ep->oauth2_token_url == NULL)
	{
		*error = pstrdup("oauth2: the endpoint has no oauth2_token_url");
		curl_easy_cleanup(easy);
		return false;
	}
	initStringInfo(&resp);
	errbuf[0] = '\0';
	setopt_reset();
	set_safety_options(easy, ep->timeout_ms, false);
	SETOPT(easy, CURLOPT_OPENSOCKETDATA, NULL);
	SETOPT(easy, CURLOPT_PREREQDATA, NULL);
	SETOPT(easy, CURLOPT_URL, ep->oauth2_token_url);
	SETOPT(easy, CURLOPT_POSTFIELDS, "grant_type=client_credentials");
	SETOPT(easy, CURLOPT_HTTPAUTH, (long) CURLAUTH_BASIC);
	SETOPT(easy, CURLOPT_USERNAME, ep->oauth2_client_id ? ep->oauth2_client_id : "");
	SETOPT(easy, CURLOPT_PASSWORD, ep->oauth2_client_secret ? ep->oauth2_client_secret : "");
	SETOPT(easy, CURLOPT_WRITEFUNCTION, write_token);
	SETOPT(easy, CURLOPT_WRITEDATA, &resp);
	SETOPT(easy, CURLOPT_ERRORBUFFER, errbuf);
	SETOPT(easy, CURLOPT_NOPROGRESS, 0L);
	SETOPT(easy, CURLOPT_XFERINFOFUNCTION, on_progress);
	if (setopt_failed != NULL)
	{
		*error = setopt_error("oauth2 token request not sent: ");
		curl_easy_cleanup(easy);
		return false;
	}
	rc = curl_easy_perform(easy);
	curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_cleanup(easy);
	CHECK_FOR_INTERRUPTS();
	if (rc == CURLE_ABORTED_BY_CALLBACK)
	{
		/* interrupted (on_progress), not a failure of the endpoint */
		*error = NULL;
		return false;
	}

	if (rc != CURLE_OK)
	{
		*error = psprintf("oauth2 token request failed: %s%s%s", curl_easy_strerror(rc),
						  errbuf[0] ? ": " : "", errbuf);
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
		Jsonb	   *jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(resp.data)));

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
	ep->oauth2_token = strdup(token);
	if (ep->oauth2_token == NULL)
	{
		*error = pstrdup("out of memory");
		return false;
	}
	ep->oauth2_expires = GetCurrentTimestamp() +
		(int64) Max(0, (expires ? atol(expires) : 3600) - 30) * USECS_PER_SEC;
	return true;
}
