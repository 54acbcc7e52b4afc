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
 */

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
	SET signing_secrets = CASE WHEN keep_previous
							   THEN ARRAY[new_secret] || array_remove(x.signing_secrets, new_secret)
							   ELSE ARRAY[new_secret] END
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
	SET auth_secret = coalesce(set_endpoint_credentials.auth_secret, x.auth_secret),
		oauth2_client_id = coalesce(set_endpoint_credentials.oauth2_client_id, x.oauth2_client_id),
		oauth2_client_secret = coalesce(set_endpoint_credentials.oauth2_client_secret, x.oauth2_client_secret)
	WHERE x.endpoint_id = id;
	PERFORM hub._audit('set_endpoint_credentials', endpoint, reason,
					   jsonb_build_object('auth_secret', auth_secret IS NOT NULL,
										  'oauth2_client_id', oauth2_client_id IS NOT NULL,
										  'oauth2_client_secret', oauth2_client_secret IS NOT NULL));
END
$$;
COMMENT ON FUNCTION hub.set_endpoint_credentials(text, text, text, text, text) IS
'Replace an endpoint''s bearer/basic/API-key secret or OAuth2 client credentials (those given; NULL keeps the old one); audited with which ones changed, never their values.';

REVOKE EXECUTE ON FUNCTION hub._check_signing_secret(text),
	hub.rotate_signing_secret(text, text, text, boolean), hub.retire_signing_secrets(text, integer, text),
	hub.set_endpoint_credentials(text, text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.rotate_signing_secret(text, text, text, boolean),
	hub.retire_signing_secrets(text, integer, text),
	hub.set_endpoint_credentials(text, text, text, text, text) TO hub_admin;
