/*-------------------------------------------------------------------------
 *
 * egress.c
 *		The egress policy: which addresses the workers may connect to.
 *
 * logistics_hub.egress_allow is a comma-separated list of entries:
 *   public          any public unicast address (not loopback, private,
 *                   link-local, shared, multicast, reserved, documentation)
 *   *               any address at all
 *   192.0.2.7       one address (IPv4 or IPv6)
 *   10.20.0.0/16    a network
 *   erp.example.com a host name (also *.example.com): endpoints may name it
 * The default is "public": an endpoint can reach the internet but not the
 * database host itself, the private network or a cloud metadata service
 * until the administrator lists them.
 *
 * Two checks: when an endpoint is registered (hub._egress_check, from
 * hub.create_endpoint and the endpoints trigger), its URL is parsed the
 * way libcurl parses it and must be http or https with a host the policy
 * admits (an address literal must be allowed as an address; a name must be
 * listed, or public / * be on); and when a connection is opened (the
 * dispatcher's CURLOPT_OPENSOCKETFUNCTION), the resolved address must be
 * allowed as an address.  A listed name therefore does not admit whatever
 * it resolves to: its addresses must pass on their own, so neither a DNS
 * answer nor a redirect can reach an address outside the policy.  IPv6
 * addresses that carry an IPv4 address (IPv4-mapped ::ffff:a.b.c.d, NAT64,
 * 6to4, Teredo) match only IPv6 entries; for "public" they count as the
 * IPv4 address they carry (hub_address_is_public).
 *
 * A URL with user information (http://user:password@host/) is refused
 * before anything else, and without being shown in the error: credentials
 * belong in the endpoint's secrets, not in a column hub_reader reads.  A
 * postgresql:// URI (a central hub, pg_transport.c) may name its user but
 * no password, names one host, and carries only the connection parameters
 * of pg_uri_params (nothing that reads a file of the server's OS user or
 * names another host).  A nats:// URL may list several servers; each must
 * be allowed.
 *
 * workers/egress.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <curl/curl.h>

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "hub_workers.h"

#define EGRESS_MAX_ENTRIES 64
#define EGRESS_NAME_LEN 256

typedef struct EgressNet
{
	int			family;			/* AF_INET or AF_INET6 */
	uint8		addr[16];
	int			bits;
} EgressNet;

typedef struct EgressPolicy
{
	bool		any;
	bool		public_ok;
	int			nnets;
	int			nnames;
	EgressNet	nets[EGRESS_MAX_ENTRIES];
	char		names[EGRESS_MAX_ENTRIES][EGRESS_NAME_LEN];
} EgressPolicy;

static char *egress_allow_string = NULL;
static EgressPolicy *egress_policy = NULL;

static bool
parse_address(const char *s, EgressNet *net)
{
	char		buf[INET6_ADDRSTRLEN + 2];
	size_t		len = strlen(s);

	/* [v6] as in URLs */
	if (len >= 2 && s[0] == '[' && s[len - 1] == ']' && len - 2 < sizeof(buf))
	{
		memcpy(buf, s + 1, len - 2);
		buf[len - 2] = '\0';
		s = buf;
	}
	memset(net, 0, sizeof(*net));
	if (inet_pton(AF_INET, s, net->addr) == 1)
	{
		net->family = AF_INET;
		net->bits = 32;
		return true;
	}
	if (inet_pton(AF_INET6, s, net->addr) == 1)
	{
		net->family = AF_INET6;
		net->bits = 128;
		return true;
	}
	return false;
}

/* the address of a parsed literal as a socket address */
static struct sockaddr *
net_sockaddr(const EgressNet *lit, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	ss->ss_family = lit->family;
	if (lit->family == AF_INET)
		memcpy(&((struct sockaddr_in *) ss)->sin_addr, lit->addr, 4);
	else
		memcpy(&((struct sockaddr_in6 *) ss)->sin6_addr, lit->addr, 16);
	return (struct sockaddr *) ss;
}

static bool
valid_host_name(const char *s)
{
	if (strncmp(s, "*.", 2) == 0)
		s += 2;
	if (*s == '\0' || strlen(s) >= EGRESS_NAME_LEN - 2)
		return false;
	for (; *s; s++)
		if (!(isalnum((unsigned char) *s) || *s == '-' || *s == '.'))
			return false;
	return true;
}

static bool
check_egress_allow(char **newval, void **extra, GucSource source)
{
	EgressPolicy *p;
	char	   *copy;
	char	   *tok;
	char	   *save = NULL;

	p = (EgressPolicy *) malloc(sizeof(EgressPolicy));	/* GUC extra: malloc */
	if (p == NULL)
		return false;
	memset(p, 0, sizeof(*p));

	copy = pstrdup(*newval);
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
	{
		char	   *e = tok;
		char	   *end;
		char	   *slash;

		while (isspace((unsigned char) *e))
			e++;
		end = e + strlen(e);
		while (end > e && isspace((unsigned char) end[-1]))
			*--end = '\0';
		if (*e == '\0')
			continue;

		if (strcmp(e, "*") == 0)
		{
			p->any = true;
			continue;
		}
		if (pg_strcasecmp(e, "public") == 0)
		{
			p->public_ok = true;
			continue;
		}
		if (p->nnets >= EGRESS_MAX_ENTRIES || p->nnames >= EGRESS_MAX_ENTRIES)
		{
			GUC_check_errdetail("At most %d addresses and %d host names can be listed.",
								EGRESS_MAX_ENTRIES, EGRESS_MAX_ENTRIES);
			goto bad;
		}
		slash = strchr(e, '/');
		if (slash != NULL)
		{
			EgressNet  *net = &p->nets[p->nnets];
			char	   *bitsend;
			long		bits;

			*slash = '\0';
			bits = strtol(slash + 1, &bitsend, 10);
			if (!parse_address(e, net) || *bitsend != '\0' || slash[1] == '\0' ||
				bits < 0 || bits > (net->family == AF_INET ? 32 : 128))
			{
				GUC_check_errdetail("\"%s/%s\" is not a valid network.", e, slash + 1);
				goto bad;
			}
			net->bits = (int) bits;
			p->nnets++;
		}
		else if (parse_address(e, &p->nets[p->nnets]))
			p->nnets++;
		else if (valid_host_name(e))
		{
			for (char *c = e; *c; c++)
				*c = pg_tolower((unsigned char) *c);
			strlcpy(p->names[p->nnames++], e, EGRESS_NAME_LEN);
		}
		else
		{
			GUC_check_errdetail("\"%s\" is neither an address, a network, a host name, \"public\" nor \"*\".", e);
			goto bad;
		}
	}
	pfree(copy);
	*extra = p;
	return true;

bad:
	pfree(copy);
	free(p);
	return false;
}

static void
assign_egress_allow(const char *newval, void *extra)
{
	egress_policy = (EgressPolicy *) extra;
}

void		hub_egress_define_guc(void);

void
hub_egress_define_guc(void)
{
	DefineCustomStringVariable("logistics_hub.egress_allow",
							   "Where the delivery workers may connect: addresses, CIDR networks, host names, public, or *.",
							   "Checked when an endpoint is registered and again against every resolved address at connect time.",
							   &egress_allow_string, "public", PGC_SIGHUP, GUC_LIST_INPUT,
							   check_egress_allow, assign_egress_allow, NULL);
}

/* does the address fall in the network? */
static bool
net_contains(const EgressNet *net, int family, const uint8 *addr)
{
	int			full,
				rest;

	if (net->family != family)
		return false;
	full = net->bits / 8;
	rest = net->bits % 8;
	if (memcmp(net->addr, addr, full) != 0)
		return false;
	if (rest == 0)
		return true;
	return ((net->addr[full] ^ addr[full]) & (0xff << (8 - rest))) == 0;
}

static bool
v4_in(const uint8 *a, uint8 b0, uint8 b1, int bits)
{
	EgressNet	net;

	memset(&net, 0, sizeof(net));
	net.family = AF_INET;
	net.addr[0] = b0;
	net.addr[1] = b1;
	net.bits = bits;
	return net_contains(&net, AF_INET, a);
}

static bool
v4_public(const uint8 *a)
{
	return !(a[0] == 0 ||		/* this network */
			 a[0] == 10 ||		/* private */
			 a[0] == 127 ||		/* loopback */
			 a[0] >= 224 ||		/* multicast, reserved, broadcast */
			 v4_in(a, 100, 64, 10) ||	/* shared (CGNAT) */
			 v4_in(a, 169, 254, 16) || /* link-local, cloud metadata */
			 v4_in(a, 172, 16, 12) ||	/* private */
			 v4_in(a, 192, 168, 16) || /* private */
			 (a[0] == 192 && a[1] == 0 && (a[2] == 0 || a[2] == 2)) ||	/* IETF, TEST-NET-1 */
			 (a[0] == 192 && a[1] == 88 && a[2] == 99) ||	/* 6to4 relay anycast (deprecated) */
			 v4_in(a, 198, 18, 15) ||	/* benchmarking */
			 (a[0] == 198 && a[1] == 51 && a[2] == 100) ||	/* TEST-NET-2 */
			 (a[0] == 203 && a[1] == 0 && a[2] == 113));	/* TEST-NET-3 */
}

/*
 * hub_address_is_public --- is this a public unicast address?  An IPv6
 * address that carries an IPv4 address (IPv4-mapped ::ffff:0:0/96, NAT64
 * 64:ff9b::/96, 6to4 2002::/16 with the IPv4 address in bits 16..47, Teredo
 * 2001::/32 with its server's IPv4 address in bits 32..63 and its client's,
 * inverted, in the last 32 bits) is judged by the IPv4 address(es) it
 * carries, since that is where its packets end up.
 */
bool
hub_address_is_public(const struct sockaddr *addr)
{
	if (addr->sa_family == AF_INET)
		return v4_public((const uint8 *) &((const struct sockaddr_in *) addr)->sin_addr);
	if (addr->sa_family == AF_INET6)
	{
		const uint8 *a = (const uint8 *) &((const struct sockaddr_in6 *) addr)->sin6_addr;
		static const uint8 mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
		static const uint8 nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};

		if (memcmp(a, mapped, 12) == 0 || memcmp(a, nat64, 12) == 0)
			return v4_public(a + 12);
		/* global unicast is 2000::/3 */
		if ((a[0] & 0xe0) != 0x20)
			return false;
		/* 6to4: 2002:AABB:CCDD::/48 is IPv4 AA.BB.CC.DD's */
		if (a[0] == 0x20 && a[1] == 0x02)
			return v4_public(a + 2);
		if (a[0] == 0x20 && a[1] == 0x01)
		{
			/* Teredo 2001:0::/32: server IPv4, then the client's inverted */
			if (a[2] == 0 && a[3] == 0)
			{
				uint8		client[4];

				for (int i = 0; i < 4; i++)
					client[i] = a[12 + i] ^ 0xff;
				return v4_public(a + 4) && v4_public(client);
			}
			/* documentation 2001:db8::/32, benchmarking 2001:2::/48, ORCHID 2001:10::/28, 2001:20::/28 */
			if ((a[2] == 0x0d && a[3] == 0xb8) ||
				(a[2] == 0 && a[3] == 0x02 && a[4] == 0 && a[5] == 0) ||
				(a[2] == 0 && (a[3] & 0xf0) == 0x10) ||
				(a[2] == 0 && (a[3] & 0xf0) == 0x20))
				return false;
		}
		/* documentation 3fff::/20 */
		if (a[0] == 0x3f && a[1] == 0xff && (a[2] & 0xf0) == 0)
			return false;
		return true;
	}
	return false;
}

/*
 * hub_egress_policy_copy --- the policy in force, copied with malloc (not
 * palloc), for a thread that checks addresses while a reload may replace
 * the setting (hub_egress_copy_allows); the caller free()s it.  NULL when
 * there is none (nothing allowed) or no memory.
 */
void *
hub_egress_policy_copy(void)
{
	EgressPolicy *copy;

	if (egress_policy == NULL || (copy = malloc(sizeof(EgressPolicy))) == NULL)
		return NULL;
	memcpy(copy, egress_policy, sizeof(EgressPolicy));
	return copy;
}

bool
hub_egress_address_allowed(const struct sockaddr *addr)
{
	return hub_egress_copy_allows(egress_policy, addr);
}

/*
 * hub_egress_copy_allows --- does this policy (the one in force, or a copy
 * of it) admit the address?  Touches nothing else: safe on any thread.
 */
bool
hub_egress_copy_allows(const void *policy, const struct sockaddr *addr)
{
	const EgressPolicy *p = policy;
	const uint8 *a;

	if (p == NULL)
		return false;
	if (p->any)
		return true;
	if (addr->sa_family == AF_INET)
		a = (const uint8 *) &((const struct sockaddr_in *) addr)->sin_addr;
	else if (addr->sa_family == AF_INET6)
		a = (const uint8 *) &((const struct sockaddr_in6 *) addr)->sin6_addr;
	else
		return false;
	for (int i = 0; i < p->nnets; i++)
		if (net_contains(&p->nets[i], addr->sa_family, a))
			return true;
	return p->public_ok && hub_address_is_public(addr);
}

void
hub_format_address(const struct sockaddr *addr, char *buf, size_t len)
{
	const void *a;

	if (addr->sa_family == AF_INET)
		a = &((const struct sockaddr_in *) addr)->sin_addr;
	else if (addr->sa_family == AF_INET6)
		a = &((const struct sockaddr_in6 *) addr)->sin6_addr;
	else
	{
		strlcpy(buf, "(unknown family)", len);
		return;
	}
	if (inet_ntop(addr->sa_family, a, buf, len) == NULL)
		strlcpy(buf, "(unprintable)", len);
}

static bool
name_listed(const EgressPolicy *p, const char *host)
{
	size_t		hl = strlen(host);

	for (int i = 0; i < p->nnames; i++)
	{
		const char *n = p->names[i];

		if (strncmp(n, "*.", 2) == 0)
		{
			size_t		sl = strlen(n + 1);	/* ".example.com" */

			if (hl > sl && pg_strcasecmp(host + hl - sl, n + 1) == 0)
				return true;
		}
		else if (pg_strcasecmp(host, n) == 0)
			return true;
	}
	return false;
}

/*
 * The connection parameters a postgresql:// endpoint URI may carry in its
 * query: none that names a host (host, hostaddr: the egress policy checks
 * the URI's one host), a file of the server's OS user (passfile, service,
 * sslkey, sslcert, sslrootcert, sslcrl...), a password or a user-chosen
 * protocol setting.  README "Site hubs over libpq".
 */
static const char *const pg_uri_params[] = {
	"sslmode", "application_name", "connect_timeout", "keepalives", "keepalives_idle",
	"keepalives_interval", "keepalives_count", "tcp_user_timeout", "channel_binding",
	"sslsni", "target_session_attrs", NULL
};

/*
 * pg_uri_query_ok --- is every parameter of a postgresql:// URI's query
 * among pg_uri_params?  On false, *why names the first that is not.
 */
static bool
pg_uri_query_ok(CURLU *u, char **why)
{
	char	   *query = NULL;
	char	   *q;
	char	   *tok;
	char	   *save = NULL;
	bool		ok = true;

	if (curl_url_get(u, CURLUPART_QUERY, &query, 0) != CURLUE_OK || query == NULL)
		return true;
	q = pstrdup(query);
	curl_free(query);
	for (tok = strtok_r(q, "&", &save); tok != NULL && ok; tok = strtok_r(NULL, "&", &save))
	{
		char	   *eq = strchr(tok, '=');
		bool		known = false;

		if (eq != NULL)
			*eq = '\0';
		for (int i = 0; pg_uri_params[i] != NULL; i++)
			if (strcmp(tok, pg_uri_params[i]) == 0)
				known = true;
		if (!known)
		{
			*why = psprintf("connection parameter \"%s\" is not allowed in a postgresql:// endpoint URI "
							"(allowed: sslmode, application_name, connect_timeout, keepalives*, tcp_user_timeout, "
							"channel_binding, sslsni, target_session_attrs)", tok);
			ok = false;
		}
	}
	pfree(q);
	return ok;
}

static bool url_allowed(const char *url, char **why);

/*
 * hub_egress_url_allowed --- may an endpoint have this URL?  On false, *why
 * says why (palloc'd).  A nats:// URL may list several servers separated by
 * commas (each nats://host:port, the scheme optional after the first):
 * every one must be allowed.
 */
bool
hub_egress_url_allowed(const char *url, char **why)
{
	char	   *list;
	char	   *tok;
	char	   *save = NULL;

	if (pg_strncasecmp(url, "nats://", 7) != 0 || strchr(url, ',') == NULL)
		return url_allowed(url, why);
	list = pstrdup(url);
	for (tok = strtok_r(list, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save))
	{
		const char *server = pg_strncasecmp(tok, "nats://", 7) == 0 ? tok : psprintf("nats://%s", tok);

		if (!url_allowed(server, why))
			return false;
	}
	return true;
}

static bool
url_allowed(const char *url, char **why)
{
	CURLU	   *u = curl_url();
	char	   *scheme = NULL;
	char	   *host = NULL;
	bool		ok = false;
	EgressNet	lit;

	*why = NULL;
	if (u == NULL)
		elog(ERROR, "out of memory");
	if (curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK ||
		curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
		curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
		*why = pstrdup("it is not a valid URL");
	else if (pg_strcasecmp(scheme, "http") != 0 && pg_strcasecmp(scheme, "https") != 0 &&
			 pg_strcasecmp(scheme, "postgresql") != 0 && pg_strcasecmp(scheme, "postgres") != 0 &&
			 pg_strcasecmp(scheme, "nats") != 0)
		*why = psprintf("scheme \"%s\" is not allowed; only http, https, postgresql and nats are", scheme);
	else if (pg_strncasecmp(scheme, "postgres", 8) == 0 && strchr(host, ',') != NULL)
		*why = pstrdup("a postgresql:// endpoint URI names one host");
	else if (pg_strncasecmp(scheme, "postgres", 8) == 0 && !pg_uri_query_ok(u, why))
		;
	else if (egress_policy == NULL)
		*why = pstrdup("no egress policy is in effect");
	else if (parse_address(host, &lit))
	{
		struct sockaddr_storage ss;

		ok = hub_egress_address_allowed(net_sockaddr(&lit, &ss));
		if (!ok)
			*why = psprintf("address %s is not allowed by logistics_hub.egress_allow", host);
	}
	else
	{
		ok = egress_policy->any || egress_policy->public_ok || name_listed(egress_policy, host);
		if (!ok)
			*why = psprintf("host \"%s\" is not allowed by logistics_hub.egress_allow", host);
	}
	curl_free(scheme);
	curl_free(host);
	curl_url_cleanup(u);
	return ok;
}

/*
 * hub_url_has_userinfo --- does the URL carry user information (a user
 * name or password before the host)?  True when libcurl finds one, or when
 * the authority (after "://", up to the first /, ? or #) holds an "@"
 * whatever libcurl makes of it.  Never fails.
 */
bool
hub_url_has_userinfo(const char *url)
{
	CURLU	   *u = curl_url();
	const char *auth = strstr(url, "://");
	bool		found = false;

	auth = auth ? auth + 3 : url;
	for (const char *c = auth; *c && *c != '/' && *c != '?' && *c != '#'; c++)
		if (*c == '@')
			found = true;
	if (!found && u != NULL && curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK)
	{
		CURLUPart	parts[2] = {CURLUPART_USER, CURLUPART_PASSWORD};

		for (int i = 0; i < 2; i++)
		{
			char	   *part = NULL;

			if (curl_url_get(u, parts[i], &part, 0) == CURLUE_OK)
				found = true;
			curl_free(part);
		}
	}
	if (u != NULL)
		curl_url_cleanup(u);
	return found;
}

/*
 * hub_url_has_password --- does the URL carry a password in its user
 * information (a postgresql:// URI may name its user)?  Never fails.
 */
bool
hub_url_has_password(const char *url)
{
	CURLU	   *u = curl_url();
	const char *auth = strstr(url, "://");
	const char *at = NULL;
	bool		found = false;

	auth = auth ? auth + 3 : url;
	for (const char *c = auth; *c && *c != '/' && *c != '?' && *c != '#'; c++)
		if (*c == '@')
			at = c;
	for (const char *c = auth; at != NULL && c < at; c++)
		if (*c == ':')
			found = true;
	if (!found && u != NULL && curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK)
	{
		char	   *part = NULL;

		if (curl_url_get(u, CURLUPART_PASSWORD, &part, 0) == CURLUE_OK)
			found = true;
		curl_free(part);
	}
	if (u != NULL)
		curl_url_cleanup(u);
	return found;
}

/*
 * hub_egress_check --- SQL hub._egress_check(url text): raise 22023 unless
 * an endpoint may have this URL; a URL with user information first, without
 * showing it.
 */
PG_FUNCTION_INFO_V1(hub_egress_check);
Datum
hub_egress_check(PG_FUNCTION_ARGS)
{
	char	   *url = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *why;

	if (pg_strncasecmp(url, "postgres", 8) == 0 ? hub_url_has_password(url) : hub_url_has_userinfo(url))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("endpoint URL must not contain user information"),
				 errdetail("A user name or password in the URL would be readable by hub_reader."),
				 errhint("Pass credentials as auth_kind and auth_secret (or oauth2_client_id and oauth2_client_secret) of hub.create_endpoint or hub.set_endpoint_credentials.")));
	if (!hub_egress_url_allowed(url, &why))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("endpoint URL \"%s\" is refused: %s", url, why),
				 errhint("Only http://, https://, postgresql:// and nats:// URLs whose host logistics_hub.egress_allow admits (currently \"%s\") can be registered.",
						 egress_allow_string ? egress_allow_string : "")));
	PG_RETURN_VOID();
}

/*
 * hub_egress_address_check --- SQL hub.egress_allowed(address inet): would
 * the workers connect to this address?  (For operators checking a policy.)
 */
PG_FUNCTION_INFO_V1(hub_egress_address_check);
Datum
hub_egress_address_check(PG_FUNCTION_ARGS)
{
	char	   *s = text_to_cstring(PG_GETARG_TEXT_PP(0));
	EgressNet	lit;
	struct sockaddr_storage ss;

	if (!parse_address(s, &lit))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("invalid address: \"%s\"", s),
				 errhint("Pass one IPv4 or IPv6 address.")));
	PG_RETURN_BOOL(hub_egress_address_allowed(net_sockaddr(&lit, &ss)));
}
