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
 * OAuth2 token requests (client credentials grant) get the same options
 * (never a redirect) and run on the dispatcher's multi handle like any
 * request: hub_oauth2_prepare builds one, hub_oauth2_finish parses the
 * answer into the endpoint's token cache; nothing here blocks.
 *
 * Easy handles are kept for reuse: set up for an endpoint, a handle goes
 * back to that endpoint's idle list as it is, and its next request sets
 * only its own options (body, headers, the callbacks' data); one set up
 * under settings loaded since is reset first (reset handles wait in a small
 * pool).  Connections live in the dispatcher's multi handle, so keep-alive
 * works across requests.  libcurl allocates with malloc: handles and header lists are
 * freed explicitly, never left to memory contexts.
 *
 * workers/http.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include "common/base64.h"
#include "common/hashfn.h"
#include "mb/pg_wchar.h"
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
 * same_origin --- do the two URLs have the same scheme, host and port (the
 * default port of the scheme when none is given)?  False when either
 * cannot be parsed.
 */
static bool
same_origin(const char *a, const char *b)
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
			(strcmp(url, note->origin) != 0 && !same_origin(url, note->origin)))
		{
			note->refused = "redirect to another origin refused: the endpoint's requests carry a credential, "
				"which is never sent to another scheme, host or port";
			return CURL_PREREQFUNC_ABORT;
		}
	}
	return CURL_PREREQFUNC_OK;
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
 * set_safety_options --- what every handle gets, requests and token
 * requests alike; the egress callbacks note a refusal in *note.
 */
static void
set_safety_options(CURL *easy, int timeout_ms, bool redirects, HubEgressNote *note)
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
	"webhook-signature", "idempotency-key",
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
	bool		set_up = false;

	*error = NULL;
	easy = NULL;
	/* a handle set up for this endpoint's current settings, or a fresh one */
	if (ep->nidle > 0)
	{
		easy = ep->idle[--ep->nidle];
		if (ep->idle_gen[ep->nidle] == ep->config_gen)
			set_up = true;
		else
			curl_easy_reset(easy);
	}
	if (easy == NULL)
		easy = npool > 0 ? pool[--npool] : curl_easy_init();
	if (easy == NULL)
	{
		*error = pstrdup("could not create a libcurl handle");
		MemoryContextSwitchTo(old);
		return NULL;
	}
	req->easy = easy;
	req->easy_gen = ep->config_gen;

	setopt_reset();
	if (!set_up && hub_url_has_userinfo(ep->url))
	{
		/* (a row from before the endpoints trigger refused it) */
		*error = pstrdup("refused to send: the endpoint URL holds user information; credentials belong in auth_kind and auth_secret");
		ok = false;
	}
	if (!set_up)
	{
		set_safety_options(easy, ep->timeout_ms, ep->allow_redirects, &req->egress);
		SETOPT(easy, CURLOPT_WRITEFUNCTION, write_body);
		SETOPT(easy, CURLOPT_URL, ep->url);
		SETOPT(easy, CURLOPT_POST, 1L);
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
	SETOPT(easy, CURLOPT_POSTFIELDS, req->body.data);
	SETOPT(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->body.len);
	req->errbuf[0] = '\0';

	ok &= append_header(req, psprintf("Content-Type: %s", req->content_type));
	/*
	 * No "Expect: 100-continue" (and its wait for the receiver's go-ahead):
	 * libcurl adds it, if at all, only to bodies over a threshold (1 KiB in
	 * the oldest versions), so the empty header that suppresses it goes
	 * only with bodies over 1 KiB; every header costs a request its share
	 * of libcurl's header handling
	 */
	if (req->body.len > 1024)
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
		else if (!append_header(req, ep->headers[i]))
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
			ok &= append_header(req, psprintf("Authorization: Bearer %s", req->sent_secret));
			break;
		case HUB_AUTH_BASIC:
			/* (set up with the handle, above) */
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
			ok &= append_header(req, psprintf("%s: %s", ep->api_key_header ? ep->api_key_header : "X-API-Key",
											  req->sent_secret));
			break;
		case HUB_AUTH_OAUTH2:
			req->token_generation = ep->oauth2_generation;
			req->sent_secret = pstrdup(ep->oauth2_token ? ep->oauth2_token : "");
			ok &= append_header(req, psprintf("Authorization: Bearer %s", req->sent_secret));
			break;
	}

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
		*error = setopt_error("");
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

/* ---------------------------------------------------------------- OAuth2 */

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
HubTokenFetch *
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

	setopt_reset();
	set_safety_options(easy, ep->timeout_ms, false, &fetch->egress);
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
	if (setopt_failed != NULL)
	{
		*error = setopt_error("oauth2 token request not sent: ");
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
bool
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
void
hub_oauth2_release(HubTokenFetch *fetch)
{
	curl_easy_cleanup(fetch->easy);
	MemoryContextDelete(fetch->cxt);
}
