-- Credentials stay where they belong (issue 16), the SQL side: no user
-- information in endpoint or token URLs (refused without being shown), no
-- framing, hub-set or credential header among an endpoint's fixed headers,
-- every change of an endpoint's or subscription's state audited whichever
-- way it is made (but not the circuit breaker's changes), and the egress
-- policy's "public" judging IPv6 addresses that carry an IPv4 address by
-- that address.  The test cluster runs with egress_allow = '127.0.0.1, public'.
-- Runs in autocommit (its own database).
SELECT plan(47);

CREATE FUNCTION pg_temp.sqlstate_of(stmt text) RETURNS text LANGUAGE plpgsql AS
$$BEGIN EXECUTE stmt; RETURN 'ok'; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END$$;
CREATE FUNCTION pg_temp.error_of(stmt text) RETURNS text LANGUAGE plpgsql AS
$$DECLARE m text; d text; h text;
BEGIN EXECUTE stmt; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
	RETURN concat_ws(' / ', m, d, h);
END$$;

-- ---------------------------------------------------------------- user information in URLs
SELECT throws_ok($$SELECT hub.create_endpoint('ui', 'http://user:s3cr3t-pw@127.0.0.1:9/hook')$$, '22023',
	'endpoint URL must not contain user information', 'create_endpoint refuses user:password@ in the URL');
SELECT ok(pg_temp.error_of($$SELECT hub.create_endpoint('ui', 'http://user:s3cr3t-pw@127.0.0.1:9/hook')$$) !~ 's3cr3t',
	'the refusal does not show the password (message, detail or hint)');
SELECT ok(pg_temp.error_of($$SELECT hub.create_endpoint('ui', 'ftp://user:s3cr3t-pw@127.0.0.1:9/hook')$$) !~ 's3cr3t',
	'nor for a URL that is refused for its scheme as well');
SELECT throws_ok($$SELECT hub.create_endpoint('ui', 'http://user@127.0.0.1:9/hook')$$, '22023',
	'endpoint URL must not contain user information', 'a user name alone is refused too');
SELECT throws_ok($$SELECT hub.create_endpoint('ui', 'http://127.0.0.1:9/hook', auth_kind => 'oauth2',
		oauth2_token_url => 'http://id:s3cr3t-pw@127.0.0.1:9/token', oauth2_client_id => 'id', oauth2_client_secret => 'x')$$,
	'22023', 'endpoint URL must not contain user information', 'and in the OAuth2 token URL');
SELECT throws_ok($$INSERT INTO hub.endpoints (name, url) VALUES ('ui', 'http://user:s3cr3t-pw@127.0.0.1:9/')$$, '22023',
	'endpoint URL must not contain user information', 'a plain INSERT is refused by the endpoints trigger');
SELECT lives_ok($$SELECT hub.create_endpoint('plain', 'http://127.0.0.1:9/hook/a@b?x=c@d')$$,
	'an @ in the path or query is not user information');
SELECT throws_ok($$UPDATE hub.endpoints SET url = 'http://user:s3cr3t-pw@127.0.0.1:9/' WHERE name = 'plain'$$, '22023',
	'endpoint URL must not contain user information', 'an UPDATE of the URL is refused');
SELECT throws_ok($$UPDATE hub.endpoints SET oauth2_token_url = 'https://user:pw@127.0.0.1:9/token' WHERE name = 'plain'$$,
	'22023', 'endpoint URL must not contain user information', 'an UPDATE of the token URL is refused');
SELECT is((SELECT count(*) FROM hub.endpoints WHERE url ~ '@127' OR oauth2_token_url IS NOT NULL)::int, 0,
	'no URL with user information was stored');

-- ---------------------------------------------------------------- fixed headers
SELECT is(ARRAY(SELECT h FROM unnest(ARRAY['Content-Length', 'Transfer-Encoding', 'Host', 'Connection', 'Keep-Alive',
		'Proxy-Connection', 'TE', 'Trailer', 'Upgrade', 'Expect', 'Content-Type', 'Content-Encoding', 'webhook-id',
		'webhook-timestamp', 'webhook-signature', 'Idempotency-Key', 'Authorization', 'Proxy-Authorization']) h
		WHERE pg_temp.sqlstate_of(format('SELECT hub.create_endpoint(%L, %L, headers => %L)', 'h-' || h,
				'http://127.0.0.1:9/', jsonb_build_object(h, '0'))) <> '22023'),
	'{}'::text[], 'every framing, hop-by-hop, hub-set and credential header is refused as a fixed header (22023)');
SELECT throws_ok($$SELECT hub.create_endpoint('cl', 'http://127.0.0.1:9/', headers => '{"content-LENGTH": "0"}')$$, '22023',
	'header "content-LENGTH" cannot be a fixed endpoint header', 'whatever its case');
SELECT throws_ok($$UPDATE hub.endpoints SET headers = '{"Transfer-Encoding": "chunked"}' WHERE name = 'plain'$$, '22023',
	'header "Transfer-Encoding" cannot be a fixed endpoint header', 'an UPDATE of the headers is checked too');
SELECT throws_ok($$SELECT hub.create_endpoint('ak', 'http://127.0.0.1:9/', auth_kind => 'api_key', auth_secret => 'k',
		api_key_header => 'X-Api-Key', headers => '{"x-api-key": "other"}')$$, '22023',
	'header "x-api-key" cannot be a fixed endpoint header', 'a fixed header cannot shadow the API key header');
SELECT throws_ok($$SELECT hub.create_endpoint('ak', 'http://127.0.0.1:9/', auth_kind => 'api_key', auth_secret => 'k',
		api_key_header => 'Content-Length')$$, '22023',
	'header "Content-Length" cannot be the API key header', 'the API key header cannot be a framing header');
SELECT lives_ok($$SELECT hub.create_endpoint('ak', 'http://127.0.0.1:9/', auth_kind => 'api_key', auth_secret => 'k',
		api_key_header => 'Authorization', headers => '{"X-Tenant": "t1", "User-Agent-Extra": "x"}')$$,
	'Authorization may be the API key header; ordinary fixed headers pass');

-- ---------------------------------------------------------------- audit
CREATE ROLE sec_cred_admin IN ROLE hub_admin;
SELECT hub.create_endpoint('aud', 'http://127.0.0.1:9/aud', 'erp');
SELECT hub.subscribe('aud', 'order.*', ordering => 'none', retry_base => '0'::interval) AS sub \gset
SELECT is((SELECT count(*) FROM hub.operator_audit)::int, 0, 'nothing audited yet (creation is not an audited change)');

SET ROLE sec_cred_admin;
UPDATE hub.endpoints SET enabled = false WHERE name = 'aud';
RESET ROLE;
SELECT is((SELECT action || ' ' || target || ' ' || actor || ' ' || (details->'enabled')::text FROM hub.operator_audit),
	'update_endpoint aud ' || session_user || ' {"new": false, "old": true}',
	'hub_admin disabling an endpoint with a plain UPDATE is audited, with who and the change');
SET ROLE sec_cred_admin;
UPDATE hub.endpoints SET timeout_ms = 2000, headers = '{"X-Tenant": "t2"}' WHERE name = 'aud';
UPDATE hub.endpoints SET max_concurrency = max_concurrency WHERE name = 'aud';
RESET ROLE;
SELECT is((SELECT array_agg(k ORDER BY k) FROM hub.operator_audit, jsonb_object_keys(details) k
		   WHERE audit_id = (SELECT max(audit_id) FROM hub.operator_audit)),
	ARRAY['headers', 'timeout_ms'], 'a change of settings is audited with the columns changed');
SELECT is((SELECT count(*) FROM hub.operator_audit)::int, 2, 'an UPDATE that changes nothing is not');
SET ROLE sec_cred_admin;
SELECT throws_ok($$INSERT INTO hub.operator_audit (action, target) VALUES ('x', 'y')$$, '42501', NULL,
	'hub_admin still cannot write the audit itself');
RESET ROLE;

SELECT coalesce(max(audit_id), 0) AS audit_mark FROM hub.operator_audit \gset
SELECT hub.pause_endpoint('aud', 'receiver maintenance');
SELECT hub.resume_endpoint('aud', 'maintenance over');
SELECT is((SELECT array_agg(action || ':' || coalesce(reason, '') || ':' || coalesce((details->'paused'->>'new'), '')
		   ORDER BY audit_id) FROM hub.operator_audit WHERE audit_id > :audit_mark),
	ARRAY['pause_endpoint:receiver maintenance:true', 'resume_endpoint:maintenance over:false'],
	'pause and resume are audited once each, with their reason and the change');
SELECT hub.resume_endpoint('aud', 'again');
SELECT is((SELECT action || ':' || reason FROM hub.operator_audit ORDER BY audit_id DESC LIMIT 1), 'resume_endpoint:again',
	'resuming an endpoint that runs is still audited (the operator acted)');
SELECT coalesce(max(audit_id), 0) AS audit_mark FROM hub.operator_audit \gset
BEGIN;
SELECT hub.pause_endpoint('aud', 'short');
UPDATE hub.endpoints SET kind = 'wms' WHERE name = 'aud';
COMMIT;
SELECT is((SELECT array_agg(action ORDER BY audit_id) FROM hub.operator_audit WHERE audit_id > :audit_mark),
	ARRAY['pause_endpoint', 'update_endpoint'],
	'a plain UPDATE after a pause in the same transaction is not labelled as the pause');
BEGIN;
SET LOCAL hub.audit_action = '';
UPDATE hub.endpoints SET kind = 'tms' WHERE name = 'aud';
COMMIT;
SELECT is((SELECT action FROM hub.operator_audit ORDER BY audit_id DESC LIMIT 1), 'update_endpoint',
	'the audit settings cannot suppress a row');
SELECT hub.resume_endpoint('aud');
UPDATE hub.endpoints SET enabled = true WHERE name = 'aud';

-- the circuit breaker is not an operator: its changes write no audit row
SELECT coalesce(max(audit_id), 0) AS audit_mark FROM hub.operator_audit \gset
UPDATE hub.endpoints SET circuit_state = 'open', circuit_opened_at = now(), consecutive_failures = 5 WHERE name = 'aud';
UPDATE hub.endpoints SET circuit_state = 'half_open', circuit_probe_until = now() WHERE name = 'aud';
UPDATE hub.endpoints SET circuit_state = 'closed', circuit_opened_at = NULL, circuit_probe_until = NULL,
	consecutive_failures = 0 WHERE name = 'aud';
SELECT hub.publish('order.created', 'SO-A1', '{"order_id": "SO-A1"}');
SELECT is(hub._route_events(), 1::bigint, 'one delivery to the audited endpoint');
SELECT is(hub.fail_delivery(delivery_id, lease_token, 500, 'down', 3), 'retry_wait', 'it fails')
FROM hub.claim_deliveries(10);
SELECT is((SELECT consecutive_failures FROM hub.endpoints WHERE name = 'aud'), 1, 'the failure is counted on the endpoint');
SELECT is((SELECT count(*) FROM hub.operator_audit WHERE audit_id > :audit_mark)::int, 0,
	'circuit-breaker changes (by hand and by fail_delivery) are not audited');

-- subscriptions: any change, and deletions
UPDATE hub.subscriptions SET max_attempts = 3 WHERE subscription_id = :sub;
SELECT is((SELECT action || ' ' || target || ' ' || (details->'max_attempts')::text FROM hub.operator_audit
		   ORDER BY audit_id DESC LIMIT 1),
	'update_subscription subscription:' || :sub || ' {"new": 3, "old": 12}', 'a change of a subscription is audited');
DELETE FROM hub.subscriptions WHERE subscription_id = :sub;
SELECT is((SELECT action || ' ' || target || ' ' || (details->>'event_pattern') FROM hub.operator_audit
		   ORDER BY audit_id DESC LIMIT 1),
	'delete_subscription subscription:' || :sub || ' order.*', 'deleting a subscription is audited with the row');
DELETE FROM hub.endpoints WHERE name = 'aud';
SELECT is((SELECT action || ' ' || target FROM hub.operator_audit ORDER BY audit_id DESC LIMIT 1),
	'delete_endpoint aud', 'deleting an endpoint is audited');

-- ---------------------------------------------------------------- egress: IPv6 forms carrying IPv4
SELECT ok(NOT hub.egress_allowed('2002:a00:1::1'), '6to4 of 10.0.0.1 (2002:0a00:0001::/48) is not public');
SELECT ok(NOT hub.egress_allowed('2002:7f00:1::1'), '6to4 of 127.0.0.1 is not allowed (a v4 entry does not admit it)');
SELECT ok(NOT hub.egress_allowed('2002:a9fe:a9fe::1'), '6to4 of the metadata address 169.254.169.254 is not public');
SELECT ok(hub.egress_allowed('2002:808:808::1'), '6to4 of 8.8.8.8 is public');
SELECT ok(NOT hub.egress_allowed('2001:0:4136:e378:8000:63bf:f5ff:fffe'),
	'Teredo with client 10.0.0.1 (last 32 bits inverted) is not public');
SELECT ok(NOT hub.egress_allowed('2001:0:4136:e378:8000:63bf:80ff:fffe'),
	'Teredo with client 127.0.0.1 is not public');
SELECT ok(hub.egress_allowed('2001:0:4136:e378:8000:63bf:f7f7:f7f7'), 'Teredo with server 65.54.227.120 and client 8.8.8.8 is public');
SELECT ok(NOT hub.egress_allowed('2001:0:a00:1:8000:63bf:f7f7:f7f7'), 'Teredo with a private server address is not');
SELECT ok(NOT hub.egress_allowed('64:ff9b::a00:1') AND hub.egress_allowed('64:ff9b::808:808'),
	'NAT64 64:ff9b::/96 is judged by its IPv4 address');
SELECT ok(NOT hub.egress_allowed('::ffff:192.168.1.1') AND NOT hub.egress_allowed('::ffff:169.254.169.254'),
	'IPv4-mapped private and metadata addresses are not public');
SELECT ok(NOT hub.egress_allowed('::a00:1') AND NOT hub.egress_allowed('::808:808'),
	'IPv4-compatible addresses (::/96, deprecated) are not public');
SELECT ok(NOT hub.egress_allowed('192.88.99.1') AND hub.egress_allowed('192.88.98.1'),
	'the 6to4 relay anycast 192.88.99.0/24 is not public, its neighbour is');
SELECT ok(NOT hub.egress_allowed('2001:2::1') AND NOT hub.egress_allowed('2001:20::1') AND NOT hub.egress_allowed('3fff::1'),
	'IPv6 benchmarking, ORCHIDv2 and the new documentation range are not public');
SELECT ok(hub.egress_allowed('2001:4860:4860::8888') AND hub.egress_allowed('2a00:1450:4001::1'),
	'ordinary global IPv6 addresses still are');
SELECT throws_like($$SELECT hub.create_endpoint('t6', 'http://[2002:a00:1::1]:9/')$$, '%not allowed%',
	'an endpoint at a 6to4 address of a private host is refused at registration');

DROP ROLE sec_cred_admin;
SELECT * FROM finish();
