/*-------------------------------------------------------------------------
 *
 * signing.c
 *		Standard Webhooks signatures.
 *
 * A signing secret is "whsec_" followed by the base64 of the key.  The
 * signature of a request is "v1," and the base64 of HMAC-SHA256(key,
 * "<webhook-id>.<webhook-timestamp>.<body>"), computed over exactly the
 * bytes sent; during a key rotation an endpoint has several secrets and the
 * webhook-signature header carries one signature per secret, separated by
 * spaces.  HMAC, SHA-256 and base64 are PostgreSQL's own (src/common).
 *
 * workers/signing.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/base64.h"
#include "common/cryptohash.h"
#include "common/hmac.h"
#include "common/sha2.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/resowner.h"

#include "hub_workers.h"

#define WHSEC_PREFIX "whsec_"

/*
 * hub_webhook_sign --- append "v1,<signature>" for one secret to out.
 * false when the secret is not whsec_ + base64 or HMAC fails.
 */
bool
hub_webhook_sign(const char *secret, const char *msg_id, int64 timestamp,
				 const char *body, size_t bodylen, StringInfo out)
{
	const char *b64 = secret + strlen(WHSEC_PREFIX);
	int			b64len;
	char	   *key;
	int			keylen;
	char		ts[32];
	uint8		mac[PG_SHA256_DIGEST_LENGTH];
	char		enc[64];
	int			enclen;
	pg_hmac_ctx *ctx;
	bool		ok;
	bool		lent = false;

	if (strncmp(secret, WHSEC_PREFIX, strlen(WHSEC_PREFIX)) != 0)
		return false;
	b64len = strlen(b64);
	key = palloc(pg_b64_dec_len(b64len) + 1);
	keylen = pg_b64_decode(b64, b64len, key, pg_b64_dec_len(b64len));
	if (keylen <= 0)
	{
		pfree(key);
		return false;
	}
	snprintf(ts, sizeof(ts), INT64_FORMAT, timestamp);

	/*
	 * With OpenSSL, HMAC contexts are tracked by the current resource owner;
	 * a dispatcher signs outside any transaction, so it lends its own.
	 */
	if (CurrentResourceOwner == NULL)
	{
		static ResourceOwner signing_owner = NULL;

		if (signing_owner == NULL)
			signing_owner = ResourceOwnerCreate(NULL, "logistics_hub signing");
		CurrentResourceOwner = signing_owner;
		lent = true;
	}
	ctx = pg_hmac_create(PG_SHA256);
	ok = ctx != NULL &&
		pg_hmac_init(ctx, (uint8 *) key, keylen) == 0 &&
		pg_hmac_update(ctx, (const uint8 *) msg_id, strlen(msg_id)) == 0 &&
		pg_hmac_update(ctx, (const uint8 *) ".", 1) == 0 &&
		pg_hmac_update(ctx, (const uint8 *) ts, strlen(ts)) == 0 &&
		pg_hmac_update(ctx, (const uint8 *) ".", 1) == 0 &&
		pg_hmac_update(ctx, (const uint8 *) body, bodylen) == 0 &&
		pg_hmac_final(ctx, mac, sizeof(mac)) == 0;
	if (ctx != NULL)
		pg_hmac_free(ctx);
	if (lent)
		CurrentResourceOwner = NULL;
	pfree(key);
	if (!ok)
		return false;

	enclen = pg_b64_encode((const char *) mac, sizeof(mac), enc, sizeof(enc) - 1);
	if (enclen < 0)
		return false;
	enc[enclen] = '\0';
	appendStringInfo(out, "v1,%s", enc);
	return true;
}

/*
 * hub_webhook_signature --- SQL hub.webhook_signature(secret, msg_id,
 * timestamp, body): the webhook-signature value a receiver should expect
 * (for receivers' tests and for checking a captured request).
 */
PG_FUNCTION_INFO_V1(hub_webhook_signature);
Datum
hub_webhook_signature(PG_FUNCTION_ARGS)
{
	char	   *secret = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *msg_id = text_to_cstring(PG_GETARG_TEXT_PP(1));
	int64		ts = PG_GETARG_INT64(2);
	text	   *body = PG_GETARG_TEXT_PP(3);
	StringInfoData out;

	initStringInfo(&out);
	if (!hub_webhook_sign(secret, msg_id, ts, VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body), &out))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid signing secret"),
				 errhint("A Standard Webhooks secret is whsec_ followed by the base64 of the key.")));
	PG_RETURN_TEXT_P(cstring_to_text_with_len(out.data, out.len));
}
