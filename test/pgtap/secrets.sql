-- Changing credentials and rotating signing secrets: hub_admin only,
-- through audited functions that never write the secret into the audit or
-- an error message; rotation keeps the old secret first in line to retire,
-- the new one first in line to sign.  Secrets are sealed: the table holds
-- ciphertext under the current key (the harness's key file), bound to its
-- endpoint and column, and no SQL function opens it (what the dispatcher
-- does with it is test/scripts/security_sealed.sh).
BEGIN;
SELECT plan(45);

SELECT hub.create_endpoint('erp', 'http://127.0.0.1:9/erp', 'erp', auth_kind => 'bearer', auth_secret => 'old-token',
	signing_secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw');
CREATE FUNCTION pg_temp.secrets() RETURNS bytea[] LANGUAGE sql AS
	$$SELECT x.signing_secrets FROM hub._endpoint_secrets x JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'erp'$$;
-- does any sealed value of the table hold this text (plain, or base64 or hex of it)?
CREATE FUNCTION pg_temp.holds(t text) RETURNS boolean LANGUAGE sql AS $$
	SELECT coalesce(bool_or(position(convert_to(t, 'UTF8') IN v) > 0
						 OR position(convert_to(t, 'UTF8') IN convert_to(encode(v, 'base64'), 'UTF8')) > 0
						 OR encode(v, 'hex') LIKE '%' || encode(convert_to(t, 'UTF8'), 'hex') || '%'), false)
	FROM hub._endpoint_secrets x,
		 LATERAL unnest(ARRAY[x.auth_secret, x.oauth2_client_id, x.oauth2_client_secret] || x.signing_secrets) u(v)
$$;
SELECT pg_temp.secrets() AS first_sealed \gset

-- sealed at rest
SELECT col_type_is('hub', '_endpoint_secrets', 'auth_secret', 'bytea', 'auth_secret is bytea');
SELECT col_type_is('hub', '_endpoint_secrets', 'oauth2_client_id', 'bytea', 'oauth2_client_id is bytea');
SELECT col_type_is('hub', '_endpoint_secrets', 'oauth2_client_secret', 'bytea', 'oauth2_client_secret is bytea');
SELECT col_type_is('hub', '_endpoint_secrets', 'signing_secrets', 'bytea[]', 'signing_secrets is bytea[]');
SELECT is((SELECT count(*) FROM hub.secret_keys() WHERE is_current)::int, 1, 'the harness''s key is loaded and current');
SELECT ok(NOT pg_temp.holds('old-token') AND NOT pg_temp.holds('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'),
	'no plain text of a secret in the table');
SELECT is((SELECT hub.sealed_key_id(auth_secret) FROM hub._endpoint_secrets),
	(SELECT key_id FROM hub.secret_keys() WHERE is_current), 'a secret is sealed under the current key');
SELECT is((SELECT length(auth_secret) FROM hub._endpoint_secrets), 1 + 8 + 24 + length('old-token') + 16,
	'version, key id, nonce, ciphertext and tag');
SELECT isnt(hub._seal(1, 'auth_secret', 'old-token'), hub._seal(1, 'auth_secret', 'old-token'),
	'sealing the same secret twice gives different ciphertext (random nonce)');
SELECT throws_ok($$SELECT hub._seal(1, 'url', 'x')$$, '22023', '"url" is not a secret column', 'only the secret columns are sealed');
SELECT is_empty($$
	SELECT p.oid::regprocedure::text FROM pg_proc p
	WHERE p.pronamespace = 'hub'::regnamespace AND p.proname <> 'sealed_key_id'
		-- (its bytea are NATS message bodies, stored as JSON; it returns their statuses)
		AND p.oid <> 'hub._nats_receive(integer, text[], text[], bytea[], text[], text[])'::regprocedure
		AND ('bytea'::regtype = ANY (p.proargtypes::regtype[]) OR 'bytea[]'::regtype = ANY (p.proargtypes::regtype[]))
		AND p.prorettype IN ('text'::regtype, 'text[]'::regtype, 'cstring'::regtype)
$$, 'no SQL function turns a sealed value into text (nothing opens a secret in SQL)');
SELECT is(cardinality(hub._seal_signing_secret(2, 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', :'first_sealed'::bytea[])), 2,
	'a ciphertext copied to another endpoint does not open there (bound to its endpoint)');
SELECT is(cardinality(hub._seal_signing_secret(1, 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', :'first_sealed'::bytea[])), 1,
	'while on its own endpoint it opens (the same secret is recognised)');
SELECT is(cardinality(hub._seal_signing_secret(1, 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
		ARRAY[hub._seal(1, 'auth_secret', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')])), 2,
	'a ciphertext of another column does not open (bound to its column)');

-- rotation
SELECT is(hub.rotate_signing_secret('erp', 'whsec_c2Vjb25kIHNlY3JldA==', 'yearly rotation'), 2,
	'a rotation keeps the previous secret: two now');
SELECT ok((pg_temp.secrets())[2] = (:'first_sealed'::bytea[])[1] AND (pg_temp.secrets())[1] <> (:'first_sealed'::bytea[])[1],
	'the new secret signs first, the old one still signs');
SELECT is(hub.rotate_signing_secret('erp', 'whsec_c2Vjb25kIHNlY3JldA=='), 2, 'rotating to the same secret again adds nothing');
SELECT ok((pg_temp.secrets())[2] = (:'first_sealed'::bytea[])[1], 'and the old one stays second');
SELECT throws_ok($$SELECT hub.rotate_signing_secret('erp', 'not-a-secret')$$, '22023', 'invalid signing secret',
	'a secret that is not whsec_ base64 is refused');
SELECT throws_ok($$SELECT hub.rotate_signing_secret('nosuch', 'whsec_c2Vjb25kIHNlY3JldA==')$$, '42704',
	'endpoint "nosuch" does not exist', 'an unknown endpoint is named');
SELECT hub.rotate_signing_secret('erp', 'whsec_' || encode(convert_to('k' || g, 'UTF8'), 'base64')) FROM generate_series(1, 3) g;
SELECT throws_ok($$SELECT hub.rotate_signing_secret('erp', 'whsec_c2l4dGg=')$$, '22023', NULL,
	'at most five secrets sign at once');
SELECT is(cardinality(pg_temp.secrets()), 5, 'the refused rotation changed nothing');

-- retiring
SELECT pg_temp.secrets() AS five \gset
SELECT is(hub.retire_signing_secrets('erp'), 1, 'retiring keeps the newest one by default');
SELECT is(pg_temp.secrets(), (:'five'::bytea[])[1:1], 'and it is the newest');
SELECT is(hub.rotate_signing_secret('erp', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', keep_previous => false), 1,
	'a rotation without keep_previous replaces every secret');
SELECT is(hub.retire_signing_secrets('erp', 0), 0, 'keep => 0 stops signing');
SELECT throws_ok($$SELECT hub.retire_signing_secrets('erp', -1)$$, '22023', NULL, 'a negative keep is refused');

-- credentials
SELECT lives_ok($$SELECT hub.set_endpoint_credentials('erp', auth_secret => 'new-token', reason => 'leaked')$$,
	'the bearer token is replaced');
SELECT ok(pg_temp.holds('new-token') = false AND (SELECT hub.sealed_key_id(auth_secret) FROM hub._endpoint_secrets)
		  = (SELECT key_id FROM hub.secret_keys() WHERE is_current),
	'the new token is stored sealed');
SELECT lives_ok($$SELECT hub.set_endpoint_credentials('erp', oauth2_client_id => 'cid-1', oauth2_client_secret => 'csecret-1')$$,
	'OAuth2 client credentials are replaced');
SELECT ok(NOT pg_temp.holds('cid-1') AND NOT pg_temp.holds('csecret-1')
		  AND (SELECT oauth2_client_id IS NOT NULL AND oauth2_client_secret IS NOT NULL FROM hub._endpoint_secrets),
	'and stored sealed');
SELECT throws_ok($$SELECT hub.set_endpoint_credentials('erp', auth_secret => E'tok\r\nX-Evil: 1')$$, '22023',
	'a credential of endpoint "erp" contains CR or LF', 'a credential with CR LF is refused without showing it');
SELECT throws_ok($$SELECT hub.set_endpoint_credentials('erp')$$, '22023', 'no credential given', 'nothing to change is an error');

-- audit: every change, never a secret
SELECT is((SELECT array_agg(action ORDER BY audit_id) FROM hub.operator_audit WHERE target = 'erp'),
	ARRAY['rotate_signing_secret', 'rotate_signing_secret', 'rotate_signing_secret', 'rotate_signing_secret',
		  'rotate_signing_secret', 'retire_signing_secrets', 'rotate_signing_secret', 'retire_signing_secrets',
		  'set_endpoint_credentials', 'set_endpoint_credentials'],
	'every change is audited, refused ones are not');
SELECT is((SELECT count(*) FROM hub.operator_audit
		   WHERE details::text ~ '(whsec_|token)' OR coalesce(reason, '') ~ 'whsec_')::int, 0,
	'no secret in the audit');

-- resealing: everything is under the current key already
SELECT is((SELECT row(endpoints, resealed, already_current)::text FROM hub.reseal_secrets()), '(0,0,3)',
	'reseal_secrets counts what it changed (nothing) and what was current (token, client id and secret)');
SELECT is((SELECT action FROM hub.operator_audit ORDER BY audit_id DESC LIMIT 1), 'reseal_secrets', 'resealing is audited');

-- privileges: hub_admin may, hub_writer and hub_reader may not
CREATE ROLE sec_admin IN ROLE hub_admin;
CREATE ROLE sec_writer IN ROLE hub_writer;
CREATE ROLE sec_reader IN ROLE hub_reader;
SET ROLE sec_writer;
SELECT throws_ok($$SELECT hub.rotate_signing_secret('erp', 'whsec_c2Vjb25kIHNlY3JldA==')$$, '42501', NULL,
	'hub_writer cannot rotate secrets');
SELECT throws_ok($$SELECT * FROM hub.reseal_secrets()$$, '42501', NULL, 'hub_writer cannot reseal');
RESET ROLE;
SET ROLE sec_reader;
SELECT throws_ok($$SELECT * FROM hub.reseal_secrets()$$, '42501', NULL, 'hub_reader cannot reseal');
SELECT throws_ok($$SELECT * FROM hub.secret_keys()$$, '42501', NULL, 'hub_reader cannot list the keys');
RESET ROLE;
SET ROLE sec_admin;
SELECT lives_ok($$SELECT hub.rotate_signing_secret('erp', 'whsec_c2Vjb25kIHNlY3JldA==', 'by an admin')$$,
	'hub_admin can');
SELECT lives_ok($$SELECT * FROM hub.reseal_secrets()$$, 'hub_admin reseals');
SELECT throws_ok($$SELECT hub._seal(1, 'auth_secret', 'x')$$, '42501', NULL, 'but cannot seal directly');
SELECT throws_ok($$SELECT hub._pause_unsealed(1, 'x')$$, '42501', NULL, 'nor pause as the dispatcher does');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
