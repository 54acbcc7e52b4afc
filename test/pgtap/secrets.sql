-- Changing credentials and rotating signing secrets: hub_admin only,
-- through audited functions that never write the secret into the audit or
-- an error message; rotation keeps the old secret first in line to retire,
-- the new one first in line to sign.
BEGIN;
SELECT plan(20);

SELECT hub.create_endpoint('erp', 'http://127.0.0.1:9/erp', 'erp', auth_kind => 'bearer', auth_secret => 'old-token',
	signing_secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw');
CREATE FUNCTION pg_temp.secrets() RETURNS text[] LANGUAGE sql AS
	$$SELECT x.signing_secrets FROM hub._endpoint_secrets x JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'erp'$$;

-- rotation
SELECT is(hub.rotate_signing_secret('erp', 'whsec_c2Vjb25kIHNlY3JldA==', 'yearly rotation'), 2,
	'a rotation keeps the previous secret: two now');
SELECT is(pg_temp.secrets(), ARRAY['whsec_c2Vjb25kIHNlY3JldA==', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'],
	'the new secret signs first, the old one still signs');
SELECT is(hub.rotate_signing_secret('erp', 'whsec_c2Vjb25kIHNlY3JldA=='), 2, 'rotating to the same secret again adds nothing');
SELECT throws_ok($$SELECT hub.rotate_signing_secret('erp', 'not-a-secret')$$, '22023', 'invalid signing secret',
	'a secret that is not whsec_ base64 is refused');
SELECT throws_ok($$SELECT hub.rotate_signing_secret('nosuch', 'whsec_c2Vjb25kIHNlY3JldA==')$$, '42704',
	'endpoint "nosuch" does not exist', 'an unknown endpoint is named');
SELECT hub.rotate_signing_secret('erp', 'whsec_' || encode(convert_to('k' || g, 'UTF8'), 'base64')) FROM generate_series(1, 3) g;
SELECT throws_ok($$SELECT hub.rotate_signing_secret('erp', 'whsec_c2l4dGg=')$$, '22023', NULL,
	'at most five secrets sign at once');
SELECT is(cardinality(pg_temp.secrets()), 5, 'the refused rotation changed nothing');

-- retiring
SELECT is(hub.retire_signing_secrets('erp'), 1, 'retiring keeps the newest one by default');
SELECT is(pg_temp.secrets(), ARRAY['whsec_' || encode(convert_to('k3', 'UTF8'), 'base64')], 'and it is the newest');
SELECT is(hub.rotate_signing_secret('erp', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', keep_previous => false), 1,
	'a rotation without keep_previous replaces every secret');
SELECT is(hub.retire_signing_secrets('erp', 0), 0, 'keep => 0 stops signing');
SELECT throws_ok($$SELECT hub.retire_signing_secrets('erp', -1)$$, '22023', NULL, 'a negative keep is refused');

-- credentials
SELECT lives_ok($$SELECT hub.set_endpoint_credentials('erp', auth_secret => 'new-token', reason => 'leaked')$$,
	'the bearer token is replaced');
SELECT is((SELECT auth_secret FROM hub._endpoint_secrets x JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'erp'),
	'new-token', 'the dispatchers read the new token');
SELECT throws_ok($$SELECT hub.set_endpoint_credentials('erp', auth_secret => E'tok\r\nX-Evil: 1')$$, '22023',
	'a credential of endpoint "erp" contains CR or LF', 'a credential with CR LF is refused without showing it');
SELECT throws_ok($$SELECT hub.set_endpoint_credentials('erp')$$, '22023', 'no credential given', 'nothing to change is an error');

-- audit: every change, never a secret
SELECT is((SELECT array_agg(action ORDER BY audit_id) FROM hub.operator_audit WHERE target = 'erp'),
	ARRAY['rotate_signing_secret', 'rotate_signing_secret', 'rotate_signing_secret', 'rotate_signing_secret',
		  'rotate_signing_secret', 'retire_signing_secrets', 'rotate_signing_secret', 'retire_signing_secrets',
		  'set_endpoint_credentials'],
	'every change is audited, refused ones are not');
SELECT is((SELECT count(*) FROM hub.operator_audit
		   WHERE details::text ~ '(whsec_|token)' OR coalesce(reason, '') ~ 'whsec_')::int, 0,
	'no secret in the audit');

-- privileges: hub_admin may, hub_writer and hub_reader may not
CREATE ROLE sec_admin IN ROLE hub_admin;
CREATE ROLE sec_writer IN ROLE hub_writer;
SET ROLE sec_writer;
SELECT throws_ok($$SELECT hub.rotate_signing_secret('erp', 'whsec_c2Vjb25kIHNlY3JldA==')$$, '42501', NULL,
	'hub_writer cannot rotate secrets');
RESET ROLE;
SET ROLE sec_admin;
SELECT lives_ok($$SELECT hub.rotate_signing_secret('erp', 'whsec_c2Vjb25kIHNlY3JldA==', 'by an admin')$$,
	'hub_admin can');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
