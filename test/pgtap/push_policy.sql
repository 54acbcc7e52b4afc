-- The SQL faces of the push workers' C code: the egress policy (the test
-- cluster runs with logistics_hub.egress_allow = '127.0.0.1, public'), URL and
-- header checks at registration, Standard Webhooks signatures (the spec's
-- published example), the bodies sent, the batch completion API and the
-- lease give-back of a restarted dispatcher, and how dispatchers share
-- endpoints.
SELECT plan(41);

-- addresses: only 127.0.0.1 among the local ones, public ones by "public"
SELECT ok(hub.egress_allowed('127.0.0.1'), '127.0.0.1 is listed');
SELECT ok(NOT hub.egress_allowed('127.0.0.2'), '127.0.0.2 is not');
SELECT ok(NOT hub.egress_allowed('::1'), 'IPv6 loopback is not');
SELECT ok(NOT hub.egress_allowed('::ffff:127.0.0.1'), 'an IPv4-mapped loopback is not (mapped addresses match IPv6 entries only)');
SELECT ok(NOT hub.egress_allowed('0.0.0.0'), '0.0.0.0 is not');
SELECT ok(NOT hub.egress_allowed('169.254.169.254'), 'the cloud metadata address is not public');
SELECT ok(NOT hub.egress_allowed('10.20.1.5') AND NOT hub.egress_allowed('172.16.0.1') AND NOT hub.egress_allowed('192.168.1.1'),
	'private networks are not public');
SELECT ok(NOT hub.egress_allowed('100.64.0.1') AND NOT hub.egress_allowed('198.18.0.1') AND NOT hub.egress_allowed('224.0.0.1'),
	'shared, benchmarking and multicast ranges are not public');
SELECT ok(hub.egress_allowed('8.8.8.8') AND hub.egress_allowed('2001:4860:4860::8888'), 'public addresses are allowed by "public"');
SELECT ok(NOT hub.egress_allowed('fe80::1') AND NOT hub.egress_allowed('fd00::1') AND NOT hub.egress_allowed('2001:db8::1'),
	'IPv6 link-local, unique-local and documentation ranges are not');
SELECT ok(NOT hub.egress_allowed('::ffff:10.0.0.1') AND hub.egress_allowed('::ffff:8.8.8.8'),
	'a mapped address counts as the IPv4 address it carries for "public"');
SELECT throws_ok($$SELECT hub.egress_allowed('localhost')$$, '22P02', NULL, 'egress_allowed takes addresses, not names');

-- registration: the URL is parsed as libcurl parses it and checked
SELECT throws_like($$SELECT hub.create_endpoint('f', 'file:///etc/passwd')$$, '%invalid endpoint URL%', 'file URLs are refused');
SELECT throws_like($$INSERT INTO hub.endpoints (name, url) VALUES ('g', 'gopher://127.0.0.1:70/')$$,
	'%scheme "gopher" is not allowed%', 'a gopher URL cannot even be stored');
SELECT throws_like($$SELECT hub.create_endpoint('l2', 'http://127.0.0.2:9/')$$, '%address 127.0.0.2 is not allowed%',
	'an address outside the policy is refused at registration');
SELECT throws_like($$SELECT hub.create_endpoint('l6', 'http://[::1]:9/')$$, '%not allowed by logistics_hub.egress_allow%',
	'so is IPv6 loopback');
SELECT throws_like($$SELECT hub.create_endpoint('l0', 'http://0.0.0.0:9/')$$, '%not allowed%', 'and 0.0.0.0');
SELECT lives_ok($$SELECT hub.create_endpoint('ok', 'http://127.0.0.1:9/hook')$$, 'a listed address is accepted');
SELECT lives_ok($$SELECT hub.create_endpoint('named', 'https://erp.example.com/api/events')$$,
	'a host name passes with "public" (its addresses are checked at connect time)');
SELECT throws_like($$UPDATE hub.endpoints SET url = 'http://169.254.169.254/latest/meta-data' WHERE name = 'ok'$$,
	'%not allowed%', 'changing a URL is checked too');
SELECT throws_like($$SELECT hub.create_endpoint('crlf', 'http://127.0.0.1:9/', headers => '{"X-Tenant": "a\r\nX-Evil: 1"}')$$,
	'%invalid value for header "X-Tenant"%', 'a header value with CR LF is refused');
SELECT throws_like($$SELECT hub.create_endpoint('badname', 'http://127.0.0.1:9/', headers => '{"X Tenant": "a"}')$$,
	'%invalid header name%', 'a header name that is not a token is refused');
SELECT throws_ok($$SELECT hub.create_endpoint('crlfsecret', 'http://127.0.0.1:9/', auth_kind => 'bearer', auth_secret => E'tok\r\nX-Evil: 1')$$,
	'22023', 'a credential of endpoint "crlfsecret" contains CR or LF',
	'a secret with CR LF is refused (it would go into a header line), without showing it');

-- Standard Webhooks: the specification's published example
SELECT is(hub.webhook_signature('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'msg_p5jXN8AQM9LWM0D4loKWxJek', 1614265330,
		  '{"test": 2432232314}'),
	'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=', 'the signature of the spec example');
SELECT isnt(hub.webhook_signature('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'msg_p5jXN8AQM9LWM0D4loKWxJek', 1614265330,
		  '{"test": 2432232315}'),
	'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=', 'one changed byte of the body changes it');
SELECT throws_ok($$SELECT hub.webhook_signature('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'm', 1, 'b')$$, '22023',
	'invalid signing secret', 'a secret without whsec_ is refused');

-- bodies
SELECT is(hub.event_body('event', '00000000-0000-8000-8000-000000000001', 'order.created', 'SO-1',
		'2026-01-02 03:04:05+00', 'corr-1', '{"order_id": "SO-1"}')::jsonb,
	'{"id": "00000000-0000-8000-8000-000000000001", "type": "order.created", "aggregate_id": "SO-1",
	  "occurred_at": "2026-01-02T03:04:05+00:00", "correlation_id": "corr-1", "data": {"order_id": "SO-1"}}'::jsonb,
	'the canonical event body');
SELECT is(hub.event_body('cloudevents', '00000000-0000-8000-8000-000000000001', 'order.created', 'SO-1',
		'2026-01-02 03:04:05+00', NULL, '{"order_id": "SO-1"}', '/hub/test')::jsonb,
	'{"specversion": "1.0", "id": "00000000-0000-8000-8000-000000000001", "source": "/hub/test",
	  "type": "order.created", "subject": "SO-1", "time": "2026-01-02T03:04:05+00:00",
	  "datacontenttype": "application/json", "data": {"order_id": "SO-1"}}'::jsonb,
	'a CloudEvents 1.0 structured-mode body');

-- the workers' batch completion: fenced exactly like complete_delivery
SELECT hub.subscribe('ok', 'order.*');
SELECT hub.publish('order.created', 'SO-' || i, jsonb_build_object('order_id', 'SO-' || i)) FROM generate_series(1, 3) i;
CREATE TEMP TABLE c AS
SELECT delivery_id, lease_token, event_id::text, body FROM hub._claim_all(10, 'w1', '60 seconds', 0, 1, 10, NULL, NULL, NULL, '/x');
SELECT is((SELECT count(*) FROM c), 3::bigint, 'the workers'' claim renders three bodies');
SELECT ok((SELECT bool_and(body::jsonb ->> 'id' = event_id) FROM c), 'each body carries its event id');
SELECT is(hub._complete_many(ARRAY(SELECT delivery_id FROM c ORDER BY 1),
		ARRAY(SELECT CASE WHEN delivery_id = (SELECT min(delivery_id) FROM c) THEN -1 ELSE lease_token END FROM c ORDER BY delivery_id),
		'{204,204,204}', '{5,5,5}', '{NULL,NULL,ok}', 'w1'), 2, 'two of three complete; one had a wrong token');
SELECT is((SELECT string_agg(a.outcome, ',' ORDER BY a.delivery_id) FROM hub.attempts a), 'stale,delivered,delivered',
	'the wrong token is a stale attempt');

-- a dispatcher that starts again gives back what its previous incarnation held
SELECT hub.publish('order.created', 'SO-9', '{"order_id": "SO-9"}');
SELECT count(*) FROM hub._claim_all(10, 'w9', '60 seconds', 0, 1, 10, NULL, NULL, NULL, '/x');
SELECT is(hub._release_leases('w9'), 1, 'its lease is released (not the live one of w1)');
SELECT is((SELECT state || '/' || count(*) FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id)
		   WHERE a.outcome = 'expired' AND a.worker = 'w9' GROUP BY state), 'pending/1',
	'claimable again, with an expired attempt in the audit');

-- sharing endpoints between dispatchers (hub._serves, hub._serves_share),
-- over 1 to 5 shards, max_concurrency 1 to 20, endpoint ids 1 to 12
CREATE TEMP TABLE shares AS
SELECT n, k, e, m, hub._serves(k, n, e, m) AS serves, hub._serves_share(k, n, e, m) AS share
FROM generate_series(1, 5) n, generate_series(0, 4) k, generate_series(1, 12) e, generate_series(1, 20) m
WHERE k < n;
SELECT is((SELECT count(*) FROM (SELECT n, e, m FROM shares GROUP BY 1, 2, 3 HAVING sum(share) <> m) x), 0::bigint,
	'the shares of an endpoint add up to its max_concurrency');
SELECT is((SELECT count(*) FROM shares WHERE serves <> (share > 0)), 0::bigint,
	'a shard serves an endpoint exactly when its share is not zero');
SELECT is((SELECT count(*) FROM (SELECT n, e, m FROM shares GROUP BY 1, 2, 3
								 HAVING count(*) FILTER (WHERE serves) <> least(n, m)) x), 0::bigint,
	'an endpoint is served by min(shards, max_concurrency) shards');
SELECT is((SELECT count(*) FROM shares WHERE m = 1 AND serves <> (e % n = k)), 0::bigint,
	'with max_concurrency 1 an endpoint has one shard, endpoint_id % nshards');
SELECT is((SELECT count(*) FROM (SELECT n, e, m FROM shares WHERE serves GROUP BY 1, 2, 3
								 HAVING max(share) - min(share) > 1) x), 0::bigint,
	'the shares of one endpoint differ by at most one');
DO $$ BEGIN PERFORM hub.create_endpoint('shared', 'http://127.0.0.1:9/', max_concurrency => 5, rate_limit => 10); END $$;
SELECT is(ARRAY(SELECT d.max_concurrency || ' at ' || round(d.rate_limit::numeric, 3) || '/s'
				FROM generate_series(0, 2) k,
					 hub._dispatch_endpoints(ARRAY[(SELECT endpoint_id FROM hub.endpoints WHERE name = 'shared')], k, 3) d
				ORDER BY 1),
	ARRAY['5 at 10.000/s', '5 at 10.000/s', '5 at 10.000/s'],
	'without spread an endpoint''s limits are not cut (it has one dispatcher)');
UPDATE hub.endpoints SET spread = true WHERE name = 'shared';
SELECT is(ARRAY(SELECT d.max_concurrency || ' at ' || round(d.rate_limit::numeric, 3) || '/s'
				FROM generate_series(0, 2) k,
					 hub._dispatch_endpoints(ARRAY[(SELECT endpoint_id FROM hub.endpoints WHERE name = 'shared')], k, 3) d
				ORDER BY 1),
	ARRAY['1 at 2.000/s', '2 at 4.000/s', '2 at 4.000/s'],
	'each of 3 dispatchers gets its share of 5 connections and of 10 requests a second');

SELECT * FROM finish();
