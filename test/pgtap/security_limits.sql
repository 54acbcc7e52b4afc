-- Limits on inputs (issue 16): no single input may stop delivery for
-- everyone.  For each limit the boundary value is accepted and the next one
-- refused with its SQLSTATE, through the API functions and through plain
-- INSERT/UPDATE: business keys and ids at most 256 bytes (22001; a table's
-- CHECK gives 23514), payloads at most logistics_hub.max_payload_size
-- (54000), endpoint, subscription and handler settings within their ranges
-- (22023 from the API, 23514 from the tables); the backoffs at the extreme
-- ends of the ranges compute without overflow; and a claim bounded by
-- payload bytes as well as by count (the first delivery always comes whole).
SELECT plan(86);

CREATE ROLE limits_writer LOGIN;
GRANT hub_writer TO limits_writer;
-- (per_key: routing puts each aggregate id into a btree index)
SELECT ok(hub.create_endpoint('keys', 'http://127.0.0.1:9/keys') > 0 AND hub.subscribe('keys', 'order.*') > 0,
	'an endpoint subscribed to every order event');

-- ------------------------------------------------------------ business keys

SELECT lives_ok($$SELECT hub.publish('order.created', repeat('k', 256), '{"order_id": "1"}')$$,
	'an aggregate id of 256 bytes is accepted');
SELECT throws_ok($$SELECT hub.publish('order.created', repeat('k', 257), '{"order_id": "1"}')$$, '22001',
	'aggregate id is longer than 256 bytes', 'one of 257 bytes is refused with 22001');
SELECT lives_ok($$SELECT hub.publish('order.created', repeat('é', 128), '{"order_id": "1"}')$$,
	'the limit is in bytes: 128 two-byte characters are accepted');
SELECT throws_ok($$SELECT hub.publish('order.created', repeat('é', 128) || 'x', '{"order_id": "1"}')$$, '22001',
	NULL, 'and 129 characters of 257 bytes are refused');
SELECT throws_ok($$INSERT INTO hub.outbox (event_type, aggregate_id, payload)
				 VALUES ('order.created', repeat('k', 257), '{"order_id": "1"}')$$, '22001',
	NULL, 'a plain INSERT gets the same check (the contract trigger)');
SELECT lives_ok($$SELECT hub.publish('order.created', 'SO-1', '{"order_id": "1"}',
									correlation_id => repeat('c', 256), causation_id => repeat('c', 256))$$,
	'correlation and causation ids of 256 bytes are accepted');
SELECT throws_ok($$SELECT hub.publish('order.created', 'SO-1', '{"order_id": "1"}', correlation_id => repeat('c', 257))$$,
	'22001', 'correlation id is longer than 256 bytes', 'a correlation id of 257 bytes is refused');
SELECT throws_ok($$INSERT INTO hub.outbox (event_type, aggregate_id, payload, causation_id)
				 VALUES ('order.created', 'SO-1', '{"order_id": "1"}', repeat('c', 257))$$, '22001',
	'causation id is longer than 256 bytes', 'a causation id of 257 bytes is refused on a plain INSERT');
SET ROLE limits_writer;
SELECT throws_ok($$SELECT hub.publish('order.created', repeat('k', 3000), '{"order_id": "1"}')$$, '22001',
	NULL, 'a hub_writer''s 3 kB aggregate id (the issue''s case) is refused when published');
RESET ROLE;
SELECT cmp_ok(hub._route_events(), '>', 0::bigint, 'routing the longest keys accepted works (no index row size error)');

-- the inbox
SELECT lives_ok($$SELECT hub.receive(repeat('s', 256), repeat('m', 256), repeat('t', 256), '{}',
									correlation_id => repeat('c', 256), aggregate_id => repeat('a', 256))$$,
	'hub.receive takes a source, message id, type, correlation and aggregate id of 256 bytes each');
SELECT throws_ok($$SELECT hub.receive(repeat('s', 257), 'm', 't', '{}')$$, '22001',
	'source is longer than 256 bytes', 'a source of 257 bytes is refused');
SELECT throws_ok($$SELECT hub.receive('s', repeat('m', 257), 't', '{}')$$, '22001',
	'message id is longer than 256 bytes', 'a message id of 257 bytes is refused');
SELECT throws_ok($$SELECT hub.receive('s', 'm', repeat('t', 257), '{}')$$, '22001',
	'message type is longer than 256 bytes', 'a message type of 257 bytes is refused');
SELECT throws_ok($$SELECT hub.receive('s', 'm', 't', '{}', aggregate_id => repeat('a', 257))$$, '22001',
	'aggregate id is longer than 256 bytes', 'an aggregate id of 257 bytes is refused');
SELECT throws_ok($$SELECT hub.receive('s', 'm', 't', '{}', correlation_id => repeat('c', 257))$$, '22001',
	'correlation id is longer than 256 bytes', 'a correlation id of 257 bytes is refused');
SELECT throws_ok($$SELECT hub.receive('s', 'm', 't', jsonb_build_object('correlation_id', repeat('c', 257)))$$, '22001',
	'correlation id is longer than 256 bytes', 'so is one of 257 bytes taken from the payload');
SELECT throws_ok($$INSERT INTO hub.inbox (source, message_id, message_type, payload)
				 VALUES ('s', repeat('m', 257), 't', '{}')$$, '23514',
	NULL, 'a plain INSERT into hub.inbox is held by its CHECK');

-- entity state
SELECT lives_ok($$SELECT hub.apply_status('shipment', repeat('k', 256), 'easypost', 'in_transit', now())$$,
	'hub.apply_status takes a business key of 256 bytes');
SELECT throws_ok($$SELECT hub.apply_status('shipment', repeat('k', 257), 'easypost', 'in_transit', now())$$, '22001',
	'business key is longer than 256 bytes', 'and refuses one of 257 bytes');
SELECT throws_ok($$SELECT hub.apply_canonical_status('shipment', repeat('k', 257), 'easypost', 'x', now(), 'in_transit')$$,
	'22001', NULL, 'so does hub.apply_canonical_status');
SELECT throws_ok($$INSERT INTO hub.entity_state (lifecycle, business_key) VALUES ('order', repeat('k', 257))$$, '23514',
	NULL, 'a plain INSERT into hub.entity_state is held by its CHECK');

-- ------------------------------------------------------------ payload size

SELECT is(current_setting('logistics_hub.max_payload_size'), '1MB', 'logistics_hub.max_payload_size is 1 MB by default');
SET logistics_hub.max_payload_size = '1kB';
-- a payload of exactly 1024 bytes (jsonb, uncompressed): pad a string
CREATE TEMP TABLE sized AS
SELECT n, jsonb_build_object('order_id', '1', 'pad', repeat('x', n)) AS p
FROM generate_series(900, 1100) n
WHERE hub._payload_size(jsonb_build_object('order_id', '1', 'pad', repeat('x', n))) IN (1024, 1025);
SELECT is((SELECT count(*)::int FROM sized), 2, 'payloads of 1024 and 1025 bytes made');
SELECT lives_ok($$SELECT hub.publish('order.created', 'SO-P', (SELECT p FROM sized ORDER BY n LIMIT 1))$$,
	'a payload of max_payload_size bytes is accepted');
SELECT throws_ok($$SELECT hub.publish('order.created', 'SO-P', (SELECT p FROM sized ORDER BY n DESC LIMIT 1))$$, '54000',
	'the payload of an event of type order.created has 1025 bytes, more than logistics_hub.max_payload_size (1024 bytes)',
	'one byte more is refused with 54000, naming the size and the limit');
SELECT throws_ok($$INSERT INTO hub.outbox (event_type, aggregate_id, payload)
				 SELECT 'order.created', 'SO-P', p FROM sized ORDER BY n DESC LIMIT 1$$, '54000',
	NULL, 'so is a plain INSERT');
SELECT lives_ok($$SELECT hub.receive('s', 'p1', 't', (SELECT p FROM sized ORDER BY n LIMIT 1))$$,
	'hub.receive accepts a payload of max_payload_size bytes');
SELECT throws_ok($$SELECT hub.receive('s', 'p2', 't', (SELECT p FROM sized ORDER BY n DESC LIMIT 1))$$, '54000',
	NULL, 'and refuses one byte more');
SELECT throws_ok($$SELECT hub.publish('order.created', 'SO-P', jsonb_build_object('order_id', '1', 'pad', repeat('x', 100000)))$$,
	'54000', NULL, 'a compressible payload counts uncompressed');
RESET logistics_hub.max_payload_size;
SET ROLE limits_writer;
SELECT throws_ok($$SET logistics_hub.max_payload_size = '100MB'$$, '42501', NULL,
	'a writer cannot raise logistics_hub.max_payload_size');
RESET ROLE;

-- ------------------------------------------------------------ endpoint settings

SELECT lives_ok($$SELECT hub.create_endpoint('hi', 'http://127.0.0.1:9/hi', timeout_ms => 600000,
											max_concurrency => 1000, rate_limit => 100000)$$,
	'an endpoint at the top of every range is accepted');
SELECT lives_ok($$SELECT hub.create_endpoint('lo', 'http://127.0.0.1:9/lo', timeout_ms => 100,
											max_concurrency => 1, rate_limit => 0.001)$$,
	'an endpoint at the bottom of every range is accepted');
SELECT throws_ok($$SELECT hub.create_endpoint('x', 'http://127.0.0.1:9/', max_concurrency => 1001)$$, '22023',
	'invalid max_concurrency: 1001', 'max_concurrency 1001 is refused');
SELECT throws_ok($$SELECT hub.create_endpoint('x', 'http://127.0.0.1:9/', max_concurrency => 0)$$, '22023',
	'invalid max_concurrency: 0', 'max_concurrency 0 is refused');
SELECT throws_ok($$SELECT hub.create_endpoint('x', 'http://127.0.0.1:9/', max_concurrency => 268435456)$$, '22023',
	NULL, 'max_concurrency 268435456 (the issue''s overflow) is refused');
SELECT throws_ok($$SELECT hub.create_endpoint('x', 'http://127.0.0.1:9/', timeout_ms => 600001)$$, '22023',
	'invalid timeout_ms: 600001', 'timeout_ms 600001 is refused');
SELECT throws_ok($$SELECT hub.create_endpoint('x', 'http://127.0.0.1:9/', rate_limit => 100001)$$, '22023',
	'invalid rate_limit: 100001', 'rate_limit 100001 is refused');
SELECT throws_ok($$SELECT hub.create_endpoint('x', 'http://127.0.0.1:9/', rate_limit => 0.0009)$$, '22023',
	'invalid rate_limit: 0.0009', 'rate_limit 0.0009 is refused');
SELECT throws_ok($$SELECT hub.create_endpoint('x', 'http://127.0.0.1:9/', rate_limit => 'NaN')$$, '22023',
	'invalid rate_limit: NaN', 'rate_limit NaN is refused');
SELECT throws_ok($$SELECT hub.create_endpoint('x', 'http://127.0.0.1:9/', rate_limit => 'Infinity')$$, '22023',
	'invalid rate_limit: Infinity', 'rate_limit Infinity is refused');
SELECT throws_ok($$SELECT hub.create_endpoint('x', 'http://127.0.0.1:9/', rate_limit => 1e400)$$, '22023',
	NULL, 'a rate_limit beyond float8 is refused');
SELECT throws_ok($$UPDATE hub.endpoints SET max_concurrency = 1001 WHERE name = 'hi'$$, '23514', NULL,
	'an UPDATE to max_concurrency 1001 is refused');
SELECT throws_ok($$UPDATE hub.endpoints SET rate_limit = 'NaN' WHERE name = 'hi'$$, '23514', NULL,
	'an UPDATE to rate_limit NaN is refused');
SELECT throws_ok($$UPDATE hub.endpoints SET rate_limit = '-Infinity' WHERE name = 'hi'$$, '23514', NULL,
	'an UPDATE to rate_limit -Infinity is refused');
SELECT throws_ok($$INSERT INTO hub.endpoints (name, url, rate_limit) VALUES ('y', 'http://127.0.0.1:9/', 'Infinity')$$,
	'23514', NULL, 'a plain INSERT with rate_limit Infinity is refused');
SELECT lives_ok($$UPDATE hub.endpoints SET circuit_failure_threshold = 1000, circuit_cooloff = '1 day' WHERE name = 'hi'$$,
	'circuit_failure_threshold 1000 and circuit_cooloff of a day are accepted');
SELECT throws_ok($$UPDATE hub.endpoints SET circuit_failure_threshold = 1001 WHERE name = 'hi'$$, '23514', NULL,
	'circuit_failure_threshold 1001 is refused');
SELECT throws_ok($$UPDATE hub.endpoints SET circuit_cooloff = '1 day 1 second' WHERE name = 'hi'$$, '23514', NULL,
	'a circuit_cooloff over a day is refused');
SELECT throws_ok($$UPDATE hub.endpoints SET circuit_cooloff = '-1 second' WHERE name = 'hi'$$, '23514', NULL,
	'a negative circuit_cooloff is refused');

-- ------------------------------------------------------------ subscription settings

SELECT lives_ok($$SELECT hub.subscribe('hi', 'shipment.*', ordering => 'none', priority => 1000, max_attempts => 1000,
									  retry_base => '24 hours', retry_max => '7 days', batch_max => 1000)$$,
	'a subscription at the top of every range is accepted');
SELECT lives_ok($$SELECT hub.subscribe('lo', 'shipment.*', priority => -1000, max_attempts => 1,
									  retry_base => '0', retry_max => '0', batch_max => 1)$$,
	'a subscription at the bottom of every range is accepted');
SELECT throws_ok($$SELECT hub.subscribe('lo', 'order.*', max_attempts => 1001)$$, '22023',
	'invalid max_attempts: 1001', 'max_attempts 1001 is refused');
SELECT throws_ok($$SELECT hub.subscribe('lo', 'order.*', max_attempts => 1000000000)$$, '22023',
	NULL, 'max_attempts of a billion (the issue''s case) is refused');
SELECT throws_ok($$SELECT hub.subscribe('lo', 'order.*', priority => 1001)$$, '22023',
	'invalid priority: 1001', 'priority 1001 is refused');
SELECT throws_ok($$SELECT hub.subscribe('lo', 'order.*', priority => -1001)$$, '22023',
	'invalid priority: -1001', 'priority -1001 is refused');
SELECT throws_ok($$SELECT hub.subscribe('lo', 'order.*', retry_base => '1 day 1 second', retry_max => '7 days')$$, '22023',
	'invalid retry_base: 1 day 00:00:01', 'a retry_base over a day is refused');
SELECT throws_ok($$SELECT hub.subscribe('lo', 'order.*', retry_max => '7 days 1 second')$$, '22023',
	'invalid retry_max: 7 days 00:00:01', 'a retry_max over 7 days is refused');
SELECT throws_ok($$SELECT hub.subscribe('lo', 'order.*', retry_base => '-1 second')$$, '22023',
	NULL, 'a negative retry_base is refused');
SELECT throws_ok($$SELECT hub.subscribe('lo', 'order.*', retry_base => '2 hours', retry_max => '1 hour')$$, '22023',
	'invalid retry_base: 02:00:00', 'a retry_base above retry_max is refused');
SELECT throws_ok($$SELECT hub.subscribe('lo', 'order.*', body_format => 'batch', batch_max => 1001)$$, '22023',
	'invalid batch_max: 1001', 'batch_max 1001 is refused');
SELECT throws_ok($$UPDATE hub.subscriptions SET max_attempts = 1001$$, '23514', NULL,
	'an UPDATE to max_attempts 1001 is refused');
SELECT throws_ok($$UPDATE hub.subscriptions SET retry_max = '8 days'$$, '23514', NULL,
	'an UPDATE to a retry_max of 8 days is refused');
SELECT throws_ok($$UPDATE hub.subscriptions SET retry_base = '30 seconds', retry_max = '10 seconds'$$, '23514', NULL,
	'an UPDATE to a retry_base above retry_max is refused');
SELECT throws_ok($$UPDATE hub.subscriptions SET priority = 1001$$, '23514', NULL, 'an UPDATE to priority 1001 is refused');
SELECT throws_ok($$UPDATE hub.subscriptions SET batch_max = 1001$$, '23514', NULL, 'an UPDATE to batch_max 1001 is refused');

-- inbox handlers
CREATE FUNCTION public.limits_fail(p jsonb, t text) RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
	RAISE EXCEPTION 'refused';
END
$$;
SELECT lives_ok($$SELECT hub.register_handler('lim.*', 'public.limits_fail', max_attempts => 1000, retry_base => '24 hours')$$,
	'a handler with max_attempts 1000 and retry_base of a day is accepted');
SELECT throws_ok($$SELECT hub.register_handler('lim.x', 'public.limits_fail', max_attempts => 1001)$$, '22023',
	'invalid max_attempts: 1001', 'a handler''s max_attempts 1001 is refused');
SELECT throws_ok($$SELECT hub.register_handler('lim.x', 'public.limits_fail', retry_base => '1 day 1 second')$$, '22023',
	NULL, 'a handler''s retry_base over a day is refused');
SELECT throws_ok($$UPDATE hub.inbox_handlers SET max_attempts = 1001$$, '23514', NULL,
	'an UPDATE of a handler to max_attempts 1001 is refused');

-- ------------------------------------------------------------ arithmetic at the ends of the ranges

-- a delivery near max_attempts 1000 with retry_base 24 hours (as time: an
-- interval times 2^30 would overflow) fails into a backoff of at most 7 days
SELECT hub.publish('shipment.delivered', 'SH-X', '{"shipment_id": "SH-X"}');
UPDATE hub.endpoints SET circuit_cooloff = '1 day', circuit_failure_threshold = 1000 WHERE name = 'hi';
CREATE TEMP TABLE c1 AS SELECT * FROM hub.claim_deliveries(10) WHERE endpoint_id = (SELECT endpoint_id FROM hub.endpoints WHERE name = 'hi');
UPDATE hub.deliveries d SET attempts = 998 FROM c1 WHERE d.delivery_id = c1.delivery_id;
SELECT is(hub.fail_delivery(c1.delivery_id, c1.lease_token, 500, 'err', 1), 'retry_wait',
	'a failure at attempt 998 with retry_base 24 hours computes its backoff') FROM c1;
SELECT ok((SELECT d.next_attempt_at <= now() + interval '7 days' FROM hub.deliveries d JOIN c1 USING (delivery_id)),
	'and the backoff is capped at retry_max');
-- an open circuit with a cool-off of a day and the extreme endpoints are claimed and loaded without error
UPDATE hub.endpoints SET circuit_state = 'open', circuit_opened_at = now() WHERE name = 'hi';
UPDATE hub.endpoints SET spread = true;
SELECT lives_ok($$SELECT count(*) FROM hub._claim_all(500, 'w', '60 s', 5, 16, NULL, 8, '{}', '{}', '/s')$$,
	'a claim of a shard of 16 over the extreme endpoints works');
SELECT is((SELECT array_agg(rate_limit ORDER BY rate_limit)
		   FROM hub._dispatch_endpoints(ARRAY(SELECT endpoint_id FROM hub.endpoints), 0, 1) WHERE rate_limit > 0),
	ARRAY[0.001, 100000]::float8[], 'and so does loading them for a dispatcher (rates as float8)');
-- an inbox message near max_attempts 1000 with retry_base 24 hours
SELECT hub.receive('lim', 'm1', 'lim.x', '{}');
UPDATE hub.inbox SET attempts = 900 WHERE message_id = 'm1';
SELECT is((SELECT failed FROM hub.process_inbox(10)), 1, 'an inbox failure at attempt 900 computes its backoff');
SELECT ok((SELECT next_attempt_at <= now() + interval '1 day' FROM hub.inbox WHERE message_id = 'm1'),
	'capped at a day');

-- ------------------------------------------------------------ the claim's byte budget

SELECT hub.create_endpoint('big', 'http://127.0.0.1:9/big');
SELECT hub.subscribe('big', 'inventory.*', ordering => 'none');
SELECT hub.create_endpoint('bigb', 'http://127.0.0.1:9/bigb');
SELECT hub.subscribe('bigb', 'return.*', ordering => 'none', body_format => 'batch', batch_max => 4);
SELECT hub.publish('inventory.adjusted', 'SKU-' || i,
				   jsonb_build_object('sku', 'S', 'quantity', '1', 'location', 'L', 'pad', repeat('x', 100000)))
FROM generate_series(1, 6) i;
SELECT hub.publish('return.received', 'R-' || i, jsonb_build_object('return_id', 'R', 'pad', repeat('x', 100000)))
FROM generate_series(1, 4) i;
SELECT hub._route_events();
SELECT is((SELECT min(hub._payload_size(payload))::int FROM hub.outbox WHERE event_type = 'inventory.adjusted'),
	(SELECT max(hub._payload_size(payload))::int FROM hub.outbox WHERE event_type = 'inventory.adjusted'),
	'six payloads of one size (about 100 kB each)');
CREATE TEMP TABLE psize AS SELECT hub._payload_size(payload) AS b FROM hub.outbox WHERE event_type = 'inventory.adjusted' LIMIT 1;
SELECT is((SELECT count(*)::int FROM hub._claim(100, 'w', '60 s', 0, 1, (SELECT endpoint_id FROM hub.endpoints WHERE name = 'big'),
												NULL, NULL, NULL, NULL, '/s', (SELECT 2 * b + 1 FROM psize))), 3,
	'a budget of two payloads and a byte takes three deliveries (the one that reaches it is the last)');
SELECT is((SELECT count(*)::int FROM hub._claim(100, 'w', '60 s', 0, 1, (SELECT endpoint_id FROM hub.endpoints WHERE name = 'big'),
												NULL, NULL, NULL, NULL, '/s', (SELECT 2 * b FROM psize))), 2,
	'a budget of exactly two payloads takes two');
SELECT is((SELECT count(*)::int FROM hub._claim(100, 'w', '60 s', 0, 1, (SELECT endpoint_id FROM hub.endpoints WHERE name = 'big'),
												NULL, NULL, NULL, NULL, '/s', 1)), 1,
	'a budget smaller than one payload still takes the first delivery');
SELECT is((SELECT count(*)::int FROM hub._claim(100, 'w', '60 s', 0, 1, (SELECT endpoint_id FROM hub.endpoints WHERE name = 'bigb'),
												NULL, NULL, NULL, NULL, '/s', 1)), 4,
	'a batch of four payloads comes whole as the first delivery, whatever the budget');
SELECT is((SELECT count(*)::int FROM hub._claim_transformed(100, 'w', '60 s', 0, 1, NULL, NULL, NULL, NULL, NULL, '/s', 1)), 0,
	'nothing else is ready (the budget left nothing behind leased)');
UPDATE hub.deliveries SET state = 'pending', lease_until = NULL, next_attempt_at = now()
WHERE endpoint_id = (SELECT endpoint_id FROM hub.endpoints WHERE name = 'big');
SELECT is((SELECT count(*)::int FROM hub._claim_transformed(100, 'w', '60 s', 0, 1, NULL, NULL, NULL, NULL, NULL, '/s',
															(SELECT 3 * b FROM psize))), 3,
	'hub._claim_transformed passes the budget on');
SELECT is((SELECT count(*)::int FROM hub._claim(100, 'w', '60 s', 0, 1, NULL, NULL, NULL, NULL, NULL, '/s', NULL)), 3,
	'without a budget a claim takes every ready delivery');
SELECT is(current_setting('logistics_hub.claim_max_bytes'), '16MB', 'logistics_hub.claim_max_bytes is 16 MB by default');

SELECT * FROM finish();
