/*
 * 55_secrets.sql --- changing an endpoint's credentials and rotating its
 * Standard Webhooks signing secrets, for hub_admin, audited.
 *
 * hub._endpoint_secrets stays readable, never writable, by hub_admin: every
 * change goes through these functions, which record who changed what and
 * why in hub.operator_audit without the secret itself.  A rotation puts the
 * new secret first and keeps the older ones: the dispatchers sign with
 * every secret of the list (one signature each in webhook-signature), so a
 * receiver that still verifies with the old secret keeps accepting while it
 * is switched over; hub.retire_signing_secrets then drops the old ones.
 * The dispatchers re-read secrets within a second.
 *
 * Every secret is sealed before it reaches the table (extension/sealed.c):
 * hub._seal encrypts it under the key named by logistics_hub.secret_key_file,
 * bound to its endpoint and column, and only the dispatchers open it, in C.
 * No SQL function returns a secret.  hub.reseal_secrets moves every secret
 * to the current key after a key rotation; an endpoint whose secrets the
 * dispatcher cannot open is paused through hub._pause_unsealed.
 */

CREATE FUNCTION hub._seal(endpoint_id integer, "column" text, secret text) RETURNS bytea
	AS 'MODULE_PATHNAME', 'hub_seal' LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION hub._seal(integer, text, text) IS
'API: Private. The sealed form of a secret for an endpoint''s column of hub._endpoint_secrets, under the current secret key (55000 when none is loaded); never shows the secret.';

CREATE FUNCTION hub._seal_signing_secret(endpoint_id integer, secret text, previous bytea[]) RETURNS bytea[]
	AS 'MODULE_PATHNAME', 'hub_seal_signing_secret' LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION hub._seal_signing_secret(integer, text, bytea[]) IS
'API: Private. previous with the signing secret sealed in front and an earlier copy of the same secret taken out; 55000 when no secret key is loaded.';

CREATE FUNCTION hub._reseal(endpoint_id integer, "column" text, sealed bytea) RETURNS bytea
	AS 'MODULE_PATHNAME', 'hub_reseal' LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION hub._reseal(integer, text, bytea) IS
'API: Private. A sealed value sealed again under the current key (itself when it already is); 55000 when it cannot be opened with any key loaded.';

CREATE FUNCTION hub.secret_keys() RETURNS TABLE (key_id text, is_current boolean)
	AS 'MODULE_PATHNAME', 'hub_secret_keys' LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION hub.secret_keys() IS
'The ids of the secret keys loaded at server start (logistics_hub.secret_key_file, is_current, and logistics_hub.previous_secret_key_files); no rows when none is.';

CREATE FUNCTION hub.sealed_key_id(sealed bytea) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN pg_catalog.length(sealed) >= 49 AND pg_catalog.get_byte(sealed, 0) = 1
				THEN pg_catalog.encode(pg_catalog.substr(sealed, 2, 8), 'hex') END
$$;
COMMENT ON FUNCTION hub.sealed_key_id(bytea) IS
'The id of the key a value of hub._endpoint_secrets is sealed with (as in hub.secret_keys()); NULL for anything else.';

/*
 * reseal_secrets --- after a key rotation (a new logistics_hub.secret_key_file,
 * the old one in logistics_hub.previous_secret_key_files, a restart): seal
 * every secret again under the current key.  All or nothing: a value that
 * no loaded key opens stops it (55000, naming the endpoint and column).
 */
CREATE FUNCTION hub.reseal_secrets(OUT endpoints integer, OUT resealed integer, OUT already_current integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cur text := (SELECT k.key_id FROM hub.secret_keys() k WHERE k.is_current);
BEGIN
	IF cur IS NULL THEN
		RAISE EXCEPTION 'no secret key is loaded, so secrets cannot be resealed'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Set logistics_hub.secret_key_file to the new key and restart the server.';
	END IF;
	PERFORM FROM hub._endpoint_secrets x FOR UPDATE;
	SELECT count(DISTINCT v.endpoint_id) FILTER (WHERE hub.sealed_key_id(v.value) IS DISTINCT FROM cur),
		   count(*) FILTER (WHERE hub.sealed_key_id(v.value) IS DISTINCT FROM cur),
		   count(*) FILTER (WHERE hub.sealed_key_id(v.value) = cur)
	INTO endpoints, resealed, already_current
	FROM (SELECT x.endpoint_id, u.value
		  FROM hub._endpoint_secrets x,
			   LATERAL unnest(ARRAY[x.auth_secret, x.oauth2_client_id, x.oauth2_client_secret] || x.signing_secrets) u(value)
		  WHERE u.value IS NOT NULL) v;
	UPDATE hub._endpoint_secrets x
	SET auth_secret = hub._reseal(x.endpoint_id, 'auth_secret', x.auth_secret),
		oauth2_client_id = hub._reseal(x.endpoint_id, 'oauth2_client_id', x.oauth2_client_id),
		oauth2_client_secret = hub._reseal(x.endpoint_id, 'oauth2_client_secret', x.oauth2_client_secret),
		signing_secrets = ARRAY(SELECT hub._reseal(x.endpoint_id, 'signing_secrets', u.s)
								FROM unnest(x.signing_secrets) WITH ORDINALITY u(s, i) ORDER BY u.i);
	PERFORM hub._audit('reseal_secrets', cur, NULL,
					   jsonb_build_object('endpoints', endpoints, 'resealed', resealed,
										  'already_current', already_current));
END
$$;
COMMENT ON FUNCTION hub.reseal_secrets() IS
'Seal every endpoint secret again under the current key (after a key rotation, while the old key is still loaded as a previous key); returns the endpoints changed and the values resealed or already current. All or nothing; audited.';

/*
 * _pause_unsealed --- called by a dispatcher whose endpoint's secrets do
 * not open (no key, another key, altered): pause it, audit the reason and
 * log a WARNING naming the endpoint, once (nothing when already paused).
 */
CREATE FUNCTION hub._pause_unsealed(endpoint_id integer, reason text) RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT hub._pause_by_worker(endpoint_id, 'pause_unsealed', reason)
$$;
COMMENT ON FUNCTION hub._pause_unsealed(integer, text) IS
'API: Private. Pause an endpoint whose sealed secrets the dispatcher cannot open, audited as pause_unsealed with the reason, with a WARNING naming the endpoint.';

CREATE FUNCTION hub._check_signing_secret(secret text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF secret IS NULL OR secret !~ '^whsec_[A-Za-z0-9+/]+={0,2}$' THEN
		RAISE EXCEPTION 'invalid signing secret' USING ERRCODE = 'invalid_parameter_value',
			HINT = 'A Standard Webhooks secret is whsec_ followed by base64.';
	END IF;
END
$$;
COMMENT ON FUNCTION hub._check_signing_secret(text) IS
'API: Private. Raise 22023 unless the text is a Standard Webhooks secret (whsec_ and base64); never shows the secret.';

CREATE FUNCTION hub.rotate_signing_secret(endpoint text, new_secret text, reason text DEFAULT NULL,
										  keep_previous boolean DEFAULT true)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id integer := hub._endpoint_id(endpoint);
	n integer;
BEGIN
	PERFORM hub._check_signing_secret(new_secret);
	UPDATE hub._endpoint_secrets x
	SET signing_secrets = hub._seal_signing_secret(id, new_secret,
												   CASE WHEN keep_previous THEN x.signing_secrets ELSE '{}' END)
	WHERE x.endpoint_id = id
	RETURNING cardinality(x.signing_secrets) INTO n;
	IF n > 5 THEN
		RAISE EXCEPTION 'endpoint "%" would sign with % secrets', endpoint, n
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Retire old secrets first with hub.retire_signing_secrets(); at most 5 are kept.';
	END IF;
	PERFORM hub._audit('rotate_signing_secret', endpoint, reason,
					   jsonb_build_object('secrets', n, 'kept_previous', keep_previous));
	RETURN n;
END
$$;
COMMENT ON FUNCTION hub.rotate_signing_secret(text, text, text, boolean) IS
'Make new_secret (whsec_...) the endpoint''s first signing secret; with keep_previous (the default) the older ones stay and every request carries one signature per secret until they are retired. Returns how many secrets it signs with (at most 5); audited without the secret.';

CREATE FUNCTION hub.retire_signing_secrets(endpoint text, keep integer DEFAULT 1, reason text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id integer := hub._endpoint_id(endpoint);
	n integer;
BEGIN
	IF keep IS NULL OR keep < 0 THEN
		RAISE EXCEPTION 'keep must be 0 or more, not %', coalesce(keep::text, 'NULL')
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	UPDATE hub._endpoint_secrets x
	SET signing_secrets = coalesce(x.signing_secrets[1:keep], '{}')
	WHERE x.endpoint_id = id
	RETURNING cardinality(x.signing_secrets) INTO n;
	PERFORM hub._audit('retire_signing_secrets', endpoint, reason, jsonb_build_object('secrets', n));
	RETURN n;
END
$$;
COMMENT ON FUNCTION hub.retire_signing_secrets(text, integer, text) IS
'Keep only the endpoint''s newest keep signing secrets (default 1; 0 stops signing). Returns how many remain; audited.';

CREATE FUNCTION hub.set_endpoint_credentials(endpoint text, auth_secret text DEFAULT NULL,
		oauth2_client_id text DEFAULT NULL, oauth2_client_secret text DEFAULT NULL,
		reason text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id integer := hub._endpoint_id(endpoint);
BEGIN
	IF auth_secret IS NULL AND oauth2_client_id IS NULL AND oauth2_client_secret IS NULL THEN
		RAISE EXCEPTION 'no credential given' USING ERRCODE = 'invalid_parameter_value',
			HINT = 'Pass auth_secret, oauth2_client_id or oauth2_client_secret by name.';
	END IF;
	PERFORM hub._check_credentials(endpoint, auth_secret, oauth2_client_id, oauth2_client_secret);
	UPDATE hub._endpoint_secrets x
	SET auth_secret = coalesce(hub._seal(id, 'auth_secret', set_endpoint_credentials.auth_secret), x.auth_secret),
		oauth2_client_id = coalesce(hub._seal(id, 'oauth2_client_id', set_endpoint_credentials.oauth2_client_id),
									x.oauth2_client_id),
		oauth2_client_secret = coalesce(hub._seal(id, 'oauth2_client_secret', set_endpoint_credentials.oauth2_client_secret),
										x.oauth2_client_secret)
	WHERE x.endpoint_id = id;
	PERFORM hub._audit('set_endpoint_credentials', endpoint, reason,
					   jsonb_build_object('auth_secret', auth_secret IS NOT NULL,
										  'oauth2_client_id', oauth2_client_id IS NOT NULL,
										  'oauth2_client_secret', oauth2_client_secret IS NOT NULL));
END
$$;
COMMENT ON FUNCTION hub.set_endpoint_credentials(text, text, text, text, text) IS
'Replace an endpoint''s bearer/basic/API-key secret or OAuth2 client credentials (those given; NULL keeps the old one); audited with which ones changed, never their values.';

REVOKE EXECUTE ON FUNCTION hub._seal(integer, text, text), hub._seal_signing_secret(integer, text, bytea[]),
	hub._reseal(integer, text, bytea), hub.secret_keys(), hub.sealed_key_id(bytea), hub.reseal_secrets(),
	hub._pause_unsealed(integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.secret_keys(), hub.sealed_key_id(bytea), hub.reseal_secrets() TO hub_admin;
REVOKE EXECUTE ON FUNCTION hub._check_signing_secret(text),
	hub.rotate_signing_secret(text, text, text, boolean), hub.retire_signing_secrets(text, integer, text),
	hub.set_endpoint_credentials(text, text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.rotate_signing_secret(text, text, text, boolean),
	hub.retire_signing_secrets(text, integer, text),
	hub.set_endpoint_credentials(text, text, text, text, text) TO hub_admin;
