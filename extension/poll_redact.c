/*-------------------------------------------------------------------------
 *
 * poll_redact.c
 *		The excerpt of a failed poll page without the endpoint's secrets.
 *
 * A poller's failed page is kept in hub.poll_requests with an excerpt of
 * its body, made by hub._poll_page in SQL (the body reaches SQL whole: the
 * records are parsed there).  A misbehaving API may echo the request's
 * credentials in that body, so before it is stored every occurrence of the
 * endpoint's own secrets is replaced by "[redacted]", as the dispatcher
 * does for the response excerpts of push attempts (workers/http_client.c,
 * hub_http_redact): the auth secret (bearer token, API key, basic's
 * "user:password", its base64 and the password alone) and the OAuth2 client
 * secret, each also with "/" escaped as JSON may write it.  The secrets are
 * opened here (extension/sealed.c) and wiped after use; the function is
 * revoked from PUBLIC and only hub._poll_page (SECURITY DEFINER) calls it,
 * and it returns nothing of a secret: only the text given, redacted.
 *
 * extension/poll_redact.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/base64.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"

#include <sodium.h>

#include "sealed.h"

#define MIN_SECRET_LEN 3		/* shorter values are not looked for */

/* replace every occurrence of needle in buf by [redacted] */
static void
redact_one(StringInfo buf, const char *needle)
{
	size_t		nlen = strlen(needle);
	StringInfoData out;
	const char *p;
	const char *hit;

	if (nlen < MIN_SECRET_LEN || strstr(buf->data, needle) == NULL)
		return;
	initStringInfo(&out);
	p = buf->data;
	while ((hit = strstr(p, needle)) != NULL)
	{
		appendBinaryStringInfo(&out, p, hit - p);
		appendStringInfoString(&out, "[redacted]");
		p = hit + nlen;
	}
	appendStringInfoString(&out, p);
	resetStringInfo(buf);
	appendBinaryStringInfo(buf, out.data, out.len);
	pfree(out.data);
}

/* the secret, and as JSON may write it ("/" as "\/") */
static void
redact_value(StringInfo buf, const char *secret)
{
	redact_one(buf, secret);
	if (strchr(secret, '/') != NULL)
	{
		StringInfoData esc;

		initStringInfo(&esc);
		for (const char *c = secret; *c; c++)
		{
			if (*c == '/')
				appendStringInfoChar(&esc, '\\');
			appendStringInfoChar(&esc, *c);
		}
		redact_one(buf, esc.data);
		sodium_memzero(esc.data, esc.len);
		pfree(esc.data);
	}
}

/* one opened secret: itself, and for "user:password" its base64 and the password */
static void
redact_secret(StringInfo buf, const char *secret)
{
	const char *colon = strchr(secret, ':');
	int			len = strlen(secret);
	int			b64max = pg_b64_enc_len(len);
	char	   *b64 = palloc(b64max + 1);
	int			b64len = pg_b64_encode(secret, len, b64, b64max);

	redact_value(buf, secret);
	if (b64len > 0)
	{
		b64[b64len] = '\0';
		redact_value(buf, b64);
	}
	sodium_memzero(b64, b64max + 1);
	pfree(b64);
	if (colon != NULL && colon[1] != '\0')
		redact_value(buf, colon + 1);
}

/*
 * hub_poll_redact_secrets --- SQL hub._poll_redact_secrets(endpoint_id,
 * text): text with the endpoint's secrets redacted (see above).  A secret
 * that cannot be opened (no key loaded) is skipped: the dispatcher could
 * not have sent it either.  NULL text gives NULL.
 */
PG_FUNCTION_INFO_V1(hub_poll_redact_secrets);
Datum
hub_poll_redact_secrets(PG_FUNCTION_ARGS)
{
	int32		endpoint_id;
	StringInfoData buf;
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1];
	static const char *const columns[] = {"auth_secret", "oauth2_client_secret"};

	if (PG_ARGISNULL(1))
		PG_RETURN_NULL();
	if (PG_ARGISNULL(0))
		PG_RETURN_TEXT_P(PG_GETARG_TEXT_PP(1));
	endpoint_id = PG_GETARG_INT32(0);
	initStringInfo(&buf);
	appendStringInfoString(&buf, text_to_cstring(PG_GETARG_TEXT_PP(1)));

	args[0] = Int32GetDatum(endpoint_id);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT s.auth_secret, s.oauth2_client_secret FROM hub._endpoint_secrets s "
							  "WHERE s.endpoint_id OPERATOR(pg_catalog.=) $1",
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading the secrets of endpoint %d failed", endpoint_id);
	if (SPI_processed == 1)
	{
		for (int i = 0; i < (int) lengthof(columns); i++)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, i + 1, &isnull);
			char	   *why = NULL;
			char	   *plain;

			if (isnull)
				continue;
			plain = hub_secret_open(endpoint_id, columns[i], DatumGetByteaPP(d), &why);
			if (plain == NULL)
				continue;
			redact_secret(&buf, plain);
			sodium_memzero(plain, strlen(plain));
			pfree(plain);
		}
	}
	SPI_finish();
	PG_RETURN_TEXT_P(cstring_to_text_with_len(buf.data, buf.len));
}
