-- Endpoints of the transports besides HTTP (issue 22): which URLs
-- hub.create_endpoint and the endpoints trigger accept for postgresql://
-- (a central hub over libpq: a user but no password, one host the egress
-- policy admits, only connection parameters that name no host and no file)
-- and nats:// (a server list, each server under the egress policy).  What
-- the dispatcher does with them is test/scripts/site_relay.sh.
-- (The harness's clusters allow 127.0.0.1 and public addresses.)
BEGIN;
SELECT plan(19);

SELECT lives_ok($$SELECT hub.create_endpoint('central', 'postgresql://site_relay@127.0.0.1:5432/hub?sslmode=require&application_name=dc1&connect_timeout=5', auth_secret => 'relay-secret-pw')$$,
	'a postgresql:// URI with a user, allowed parameters and a sealed password');
SELECT is((SELECT url FROM hub.endpoints WHERE name = 'central'),
	'postgresql://site_relay@127.0.0.1:5432/hub?sslmode=require&application_name=dc1&connect_timeout=5', 'the URI is kept as given');
SELECT is((SELECT count(*)::int FROM hub._endpoint_secrets x JOIN hub.endpoints e USING (endpoint_id)
		   WHERE e.name = 'central' AND position(convert_to('relay-secret-pw', 'UTF8') IN x.auth_secret) = 0), 1,
	'the password is sealed, not stored');
SELECT lives_ok($$SELECT hub.create_endpoint('central2', 'postgres://site_relay@127.0.0.1/hub', auth_secret => 'x')$$,
	'postgres:// is the same transport');

-- never a password in the URI, and the error does not show it
SELECT throws_ok($$SELECT hub.create_endpoint('p1', 'postgresql://site_relay:pw-in-uri@127.0.0.1/hub')$$,
	'22023', 'endpoint URL must not contain user information', 'a password in the URI is refused');
SELECT throws_ok($$SELECT hub.create_endpoint('p2', 'postgresql://site_relay@127.0.0.1/hub?password=pw-in-uri')$$,
	'22023', 'endpoint URL must not contain user information', 'a password parameter is refused');
-- nothing that names another host or a file of the server's OS user
SELECT throws_ok(format($$SELECT hub.create_endpoint('p3', 'postgresql://site_relay@127.0.0.1/hub?%s')$$, p), '22023', NULL,
	p || ' is refused')
FROM unnest(ARRAY['host=/tmp', 'hostaddr=10.1.2.3', 'passfile=/etc/passwd', 'service=other', 'sslkey=/k.pem',
				  'sslrootcert=/r.pem', 'options=-csearch_path%3Dx']) p;
SELECT throws_ok($$SELECT hub.create_endpoint('p4', 'postgresql://site_relay@127.0.0.1,10.1.2.3/hub')$$,
	'22023', NULL, 'a host list is refused');
SELECT throws_ok($$SELECT hub.create_endpoint('p5', 'postgresql://site_relay@10.1.2.3/hub')$$,
	'22023', NULL, 'a host outside the egress policy is refused');
SELECT throws_ok($$UPDATE hub.endpoints SET url = 'postgresql://site_relay@127.0.0.1/hub?sslcert=/c.pem' WHERE name = 'central'$$,
	'22023', NULL, 'the endpoints trigger applies the same rules to an UPDATE');

-- nats://: a list of servers, each under the egress policy
SELECT lives_ok($$SELECT hub.create_endpoint('bus', 'nats://127.0.0.1:4222,nats://127.0.0.1:4223,127.0.0.1:4224')$$,
	'a nats:// server list');
SELECT throws_ok($$SELECT hub.create_endpoint('bus2', 'nats://127.0.0.1:4222,nats://10.1.2.3:4222')$$,
	'22023', NULL, 'a nats:// list with a server outside the egress policy is refused');
SELECT throws_ok($$SELECT hub.create_endpoint('ftp', 'ftp://127.0.0.1/x')$$, '22023', NULL, 'other schemes are refused');

SELECT * FROM finish();
ROLLBACK;
