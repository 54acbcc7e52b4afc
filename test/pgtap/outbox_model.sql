-- Outbox table model beyond the happy path: every queue table WAL-logged,
-- the indexes the claim relies on, SECURITY DEFINER functions pinning
-- search_path, no EXECUTE for PUBLIC, the catalogue cache following
-- changes, the retention door of the immutability triggers, append-only
-- audit tables, circuit breaker with one half-open probe (counting each
-- failing key once until a success), defer, bulk
-- replays (dead of a subscription, backfill of a new endpoint by time range
-- and by correlation id) and their audit rows.
-- Runs in autocommit (its own database): routing only sees committed events.
SELECT plan(66);

-- schema invariants
SELECT is((SELECT string_agg(relname || ':' || relpersistence::text, ',' ORDER BY relname) FROM pg_class
		   WHERE relnamespace = 'hub'::regnamespace AND relkind IN ('r', 'p')
			 AND relname IN ('outbox', 'deliveries', 'attempts', 'operator_audit', 'endpoints',
							 'subscriptions', '_endpoint_secrets', 'event_types', '_router_state')),
	'_endpoint_secrets:p,_router_state:p,attempts:p,deliveries:p,endpoints:p,event_types:p,operator_audit:p,outbox:p,subscriptions:p',
	'every outbox and queue table is WAL-logged (relpersistence p)');
SELECT has_index('hub', 'deliveries', 'deliveries_ready_idx', 'the claim reads one ready index');
SELECT has_index('hub', 'deliveries', 'deliveries_open_key_idx', 'per-key heads are looked up by index');
SELECT is((SELECT count(*) FROM pg_index WHERE indrelid = 'hub.outbox'::regclass AND indpred IS NULL)::int, 1,
	'publishing writes one index entry: routing scans the primary key (event ids lead with the xid)');
SELECT is_empty($$
	SELECT p.oid::regprocedure::text FROM pg_proc p
	WHERE p.pronamespace = 'hub'::regnamespace AND p.prosecdef
		AND NOT coalesce(p.proconfig::text[] && ARRAY['search_path=pg_catalog, pg_temp'], false)
$$, 'every SECURITY DEFINER function pins search_path');
SELECT is_empty($$
	SELECT p.oid::regprocedure::text FROM pg_proc p
	WHERE p.pronamespace = 'hub'::regnamespace
		AND (p.proname IN ('publish', 'create_endpoint', 'subscribe', 'claim_deliveries', 'complete_delivery',
						   'fail_delivery', 'defer_delivery', 'pause_endpoint', 'resume_endpoint',
						   'skip_delivery', 'replay') OR p.proname ~ '^_(route|claim|fenced|audit|immutable|outbox|event_types|retention)')
		AND has_function_privilege('public', p.oid, 'EXECUTE')
$$, 'no outbox function keeps EXECUTE for PUBLIC');
SELECT ok(has_function_privilege('hub_writer', 'hub.publish(text, text, jsonb, text, text, jsonb, timestamptz, text)', 'EXECUTE')
	AND has_table_privilege('hub_writer', 'hub.outbox', 'INSERT')
	AND NOT has_table_privilege('hub_writer', 'hub.outbox', 'UPDATE')
	AND NOT has_function_privilege('hub_writer', 'hub.replay(bigint, text)', 'EXECUTE'),
	'hub_writer publishes and inserts, nothing more');
SELECT ok(has_function_privilege('hub_admin', 'hub.replay(integer, text, timestamptz, timestamptz, text)', 'EXECUTE')
	AND has_function_privilege('hub_admin', 'hub.skip_delivery(bigint, text)', 'EXECUTE')
	AND NOT has_table_privilege('hub_reader', 'hub._endpoint_secrets', 'SELECT'),
	'hub_admin replays and skips; readers never see secrets');

-- publishing as hub_writer (SECURITY INVOKER publish) and the contract cache
CREATE ROLE outbox_app LOGIN;
GRANT hub_writer TO outbox_app;
SET ROLE outbox_app;
SELECT ok(hub.publish('order.created', 'SO-W', '{"order_id": "SO-W"}') IS NOT NULL, 'a hub_writer member can publish');
SELECT throws_ok($$SELECT hub.publish('order.created', 'SO-W', '[1, 2]')$$, '22023',
	'the payload of a order.created event must be a JSON object', 'the payload must be an object');
SELECT throws_ok($$SELECT hub.publish('order.created', '', '{"order_id": "x"}')$$, '22023',
	'the aggregate id of a order.created event must not be empty', 'the aggregate id must not be empty');
SELECT throws_ok($$UPDATE hub.outbox SET aggregate_id = 'x'$$, '42501', NULL, 'a writer cannot update events at all');
RESET ROLE;
INSERT INTO hub.event_types (event_type, required_keys, description) VALUES ('pallet.wrapped', '{pallet_id,film}', 'A pallet was stretch-wrapped');
SELECT throws_ok($$SELECT hub.publish('pallet.wrapped', 'P-1', '{"pallet_id": "P-1"}')$$, '22023',
	'pallet.wrapped event lacks the required payload key "film"', 'a new catalogue entry is enforced at once (cache invalidated)');
UPDATE hub.event_types SET required_keys = '{pallet_id}' WHERE event_type = 'pallet.wrapped';
SELECT lives_ok($$SELECT hub.publish('pallet.wrapped', 'P-1', '{"pallet_id": "P-1"}')$$, 'and a changed contract too');
INSERT INTO hub.outbox (event_type, aggregate_id, payload, xid, published_at)
VALUES ('order.created', 'SO-F', '{"order_id": "SO-F"}', '3', '2001-01-01');
SELECT throws_ok($$INSERT INTO hub.outbox (event_id, event_type, aggregate_id, payload)
	VALUES ('8f6c2a3e-0000-4000-8000-000000000000', 'order.created', 'SO-G', '{"order_id": "SO-G"}')$$,
	'22023', 'event id "8f6c2a3e-0000-4000-8000-000000000000" was not made by this transaction',
	'an event id not made by the publishing transaction is refused');
SELECT ok((SELECT bool_and(event_id >= hub._event_id_floor(xid) AND event_id < hub._event_id_floor((xid::text::bigint + 1)::text::xid8))
		   FROM hub.outbox), 'every event id sorts within its transaction''s range');
SELECT is((SELECT xid <> '3' AND published_at > '2001-01-01' FROM hub.outbox WHERE aggregate_id = 'SO-F'), true,
	'a plain INSERT cannot forge xid or published_at (the routing watermark relies on them)');

-- the retention door: immutable for everyone but a transaction with logistics_hub._retention on
SELECT throws_ok($$DELETE FROM hub.outbox WHERE aggregate_id = 'SO-W'$$, '55000', 'published events are immutable', 'DELETE is refused');
SELECT throws_ok($$TRUNCATE hub.outbox CASCADE$$, '55000', NULL, 'TRUNCATE is refused');
SET ROLE outbox_app;
SELECT throws_ok($$SET logistics_hub._retention = on$$, '42501', NULL, 'only a superuser (the retention function) can open the door');
RESET ROLE;
BEGIN;
SET LOCAL logistics_hub._retention = on;
DELETE FROM hub.outbox WHERE aggregate_id = 'SO-W';
COMMIT;
SELECT is((SELECT count(*) FROM hub.outbox WHERE aggregate_id = 'SO-W')::int, 0, 'the retention job can delete events');
SELECT throws_ok($$UPDATE hub.outbox SET aggregate_id = 'x' WHERE aggregate_id = 'P-1'$$, '55000', NULL, 'the door closes with the transaction');

-- circuit breaker: threshold, one half-open probe, closing on success
SELECT hub.create_endpoint('carrier', 'https://127.0.0.1:9/hook', 'carrier');
UPDATE hub.endpoints SET circuit_failure_threshold = 2, circuit_cooloff = '0' WHERE name = 'carrier';
SELECT hub.subscribe('carrier', 'shipment.*', ordering => 'none', retry_base => '0', retry_max => '0');
SELECT hub.publish('shipment.in_transit', 'SH-' || g, jsonb_build_object('shipment_id', 'SH-' || g)) FROM generate_series(1, 4) g;
CREATE TEMP TABLE k1 AS SELECT * FROM hub.claim_deliveries(2, 'w1');
SELECT is((SELECT count(*) FROM k1)::int, 2, 'two deliveries claimed');
SELECT is((SELECT array_agg(hub.fail_delivery(delivery_id, lease_token, NULL, 'connection refused', 3) ORDER BY delivery_id) FROM k1),
	ARRAY['retry_wait', 'retry_wait'], 'transport errors are retried');
SELECT is((SELECT circuit_state || ':' || consecutive_failures FROM hub.endpoints WHERE name = 'carrier'), 'open:2',
	'transport errors count and open the circuit at the threshold');
CREATE TEMP TABLE k2 AS SELECT * FROM hub.claim_deliveries(10, 'w1');
SELECT is((SELECT count(*) FROM k2)::int, 1, 'after the cool-off a half-open endpoint gets exactly one probe');
SELECT is((SELECT count(*) FROM hub.claim_deliveries(10, 'w2'))::int, 0, 'no second probe while the first is out');
SELECT ok((SELECT hub.complete_delivery(delivery_id, lease_token, 200, 5) FROM k2), 'the probe succeeds');
SELECT is((SELECT circuit_state || ':' || consecutive_failures FROM hub.endpoints WHERE name = 'carrier'), 'closed:0',
	'a success closes the circuit');
SELECT is((SELECT count(*) FROM hub.claim_deliveries(10, 'w1'))::int, 3, 'a closed circuit hands out everything ready');

-- defer gives a lease back without spending an attempt
SELECT hub.publish('shipment.exception', 'SH-9', '{"shipment_id": "SH-9", "reason": "damaged"}');
CREATE TEMP TABLE k3 AS SELECT * FROM hub.claim_deliveries(1, 'w1');
SELECT ok((SELECT hub.defer_delivery(delivery_id, lease_token, now() + interval '1 hour') FROM k3), 'defer under the lease');
SELECT is((SELECT state || ':' || attempts FROM hub.deliveries d JOIN k3 USING (delivery_id)), 'pending:0',
	'a deferred delivery is pending again with its attempt given back');
SELECT is((SELECT count(*) FROM hub.claim_deliveries(10, 'w1') WHERE aggregate_id = 'SH-9')::int, 0, 'and not claimable before the time given');

-- a retry_after longer than the backoff wins
SELECT hub.publish('shipment.exception', 'SH-10', '{"shipment_id": "SH-10", "reason": "late"}');
CREATE TEMP TABLE k4 AS SELECT * FROM hub.claim_deliveries(1, 'w1') WHERE aggregate_id = 'SH-10';
SELECT is((SELECT hub.fail_delivery(delivery_id, lease_token, 429, NULL, 3, NULL, interval '10 minutes') FROM k4), 'retry_wait', 'a 429 is retried');
SELECT ok((SELECT next_attempt_at >= updated_at + interval '10 minutes' FROM hub.deliveries d JOIN k4 USING (delivery_id)),
	'not before its Retry-After');
-- ... but not for years: at most the larger of retry_max and a day
UPDATE hub.deliveries d SET next_attempt_at = now() FROM k4 WHERE d.delivery_id = k4.delivery_id;
CREATE TEMP TABLE k5 AS SELECT * FROM hub.claim_deliveries(10, 'w1') WHERE aggregate_id = 'SH-10';
SELECT is((SELECT hub.fail_delivery(delivery_id, lease_token, 503, NULL, 3, NULL, interval '10 years') FROM k5), 'retry_wait',
	'a 503 asking for ten years is retried');
SELECT ok((SELECT d.next_attempt_at <= d.updated_at + interval '1 day'
		   FROM hub.deliveries d JOIN k5 USING (delivery_id)),
	'a Retry-After is honoured up to a day when retry_max is shorter');

-- bulk replay: every dead delivery of a subscription
SELECT hub.create_endpoint('portal', 'http://127.0.0.1:9/portal', 'portal');
SELECT hub.subscribe('portal', 'return.*', ordering => 'none');
SELECT hub.publish('return.received', 'RMA-' || g, jsonb_build_object('return_id', 'RMA-' || g), correlation_id => 'corr-7')
FROM generate_series(1, 3) g;
SELECT hub.fail_delivery(delivery_id, lease_token, 410, 'gone', 4) FROM hub.claim_deliveries(10, 'w1') WHERE aggregate_id LIKE 'RMA-%';
SELECT is((SELECT count(*) FROM hub.deliveries WHERE state = 'dead' AND aggregate_id LIKE 'RMA-%')::int, 3, 'three dead deliveries');
SELECT is(hub.replay((SELECT subscription_id FROM hub.subscriptions WHERE event_pattern = 'return.*'), 'portal fixed'), 3,
	'replay all dead deliveries of a subscription');
SELECT is((SELECT count(*) FROM hub.deliveries WHERE state = 'pending' AND aggregate_id LIKE 'RMA-%' AND attempts = 0)::int, 3,
	'they are pending again with fresh attempts');

-- backfill a new endpoint: it gets nothing old by itself, then a range or a correlation id
SELECT hub.create_endpoint('wms2', 'http://127.0.0.1:9/wms2', 'wms');
SELECT hub.subscribe('wms2', 'return.*', ordering => 'none') AS s_new \gset
SELECT is(hub._route_events() >= 0, true, 'routing runs');
SELECT is((SELECT count(*) FROM hub.deliveries WHERE subscription_id = :s_new)::int, 0, 'a new subscription does not get old events');
SELECT is(hub.replay(:s_new, 'backfill new warehouse', correlation_id => 'corr-7'), 3, 'replay by correlation id creates its deliveries');
SELECT is((SELECT count(DISTINCT d.event_id) FROM hub.deliveries d JOIN hub.deliveries o USING (event_id)
		   WHERE d.subscription_id = :s_new AND o.subscription_id <> :s_new)::int, 3, 'with the same event ids (idempotency keys)');
SELECT is(hub.replay(:s_new, 'again', now() - interval '1 hour', now() + interval '1 hour'), 0,
	'a range replay leaves pending deliveries alone and creates no duplicates');
SELECT throws_ok($$SELECT hub.replay(1, '')$$, '22023', 'a replay needs a reason', 'a replay needs a reason');
SELECT is((SELECT array_agg(action || ':' || actor ORDER BY audit_id) FROM hub.operator_audit WHERE action LIKE 'replay%'),
	ARRAY['replay_dead:' || session_user, 'replay_range:' || session_user, 'replay_range:' || session_user],
	'bulk replays are audited with who');
SELECT throws_ok($$UPDATE hub.operator_audit SET reason = 'x'$$, '55000', NULL, 'the operator audit is append-only');

-- the references kept by construction rather than by foreign keys
SELECT is_empty($$SELECT d.delivery_id FROM hub.deliveries d WHERE NOT EXISTS (SELECT 1 FROM hub.outbox o WHERE o.event_id = d.event_id)$$,
	'every delivery has its event');
SELECT is_empty($$SELECT a.attempt_id FROM hub.attempts a WHERE NOT EXISTS (SELECT 1 FROM hub.deliveries d WHERE d.delivery_id = a.delivery_id)$$,
	'every attempt has its delivery');
SELECT is_empty($$SELECT d.delivery_id FROM hub.deliveries d WHERE NOT EXISTS (SELECT 1 FROM hub.subscriptions s WHERE s.subscription_id = d.subscription_id)$$,
	'every delivery has its subscription');
SELECT ok((SELECT count(*) FROM hub.deliveries WHERE subscription_id = :s_new) > 0, 'the backfilled subscription has deliveries');
CREATE TEMP TABLE before_drop AS
SELECT (SELECT count(*) FROM hub.attempts) AS attempts,
	   (SELECT count(*) FROM hub.deliveries WHERE subscription_id <> :s_new) AS others;
DELETE FROM hub.subscriptions WHERE subscription_id = :s_new;
SELECT is((SELECT (SELECT count(*) FROM hub.deliveries WHERE subscription_id = :s_new) || '/' ||
				  (SELECT count(*) FROM hub.deliveries) || '/' || (SELECT count(*) FROM hub.attempts)),
		  (SELECT '0/' || others || '/' || attempts FROM before_drop),
	'deleting a subscription deletes its deliveries (as a cascade would), no other, and keeps the attempts');

-- the breaker judges the endpoint, not a key (issue 17): a key counts once
-- until a success, distinct keys open the circuit at the threshold, a
-- failed probe opens it again whatever its key, any success empties the set
SELECT hub.create_endpoint('wh', 'http://127.0.0.1:9/wh', 'wms') AS wh \gset
UPDATE hub.endpoints SET circuit_failure_threshold = 3, circuit_cooloff = '0' WHERE name = 'wh';
SELECT hub.subscribe('wh', 'inventory.*', ordering => 'none', retry_base => '0', retry_max => '0', max_attempts => 100);
CREATE FUNCTION pg_temp.inv(sku text) RETURNS uuid LANGUAGE sql AS
$$ SELECT hub.publish('inventory.adjusted', sku, jsonb_build_object('sku', sku, 'quantity', 1, 'location', 'A1')) $$;
-- claim every ready delivery of wh and fail it (500); the keys, in claim order
CREATE FUNCTION pg_temp.fail_wh() RETURNS text LANGUAGE sql AS
$$ SELECT string_agg(c.aggregate_id || ':' || hub.fail_delivery(c.delivery_id, c.lease_token, 500, 'down', 3), ',')
   FROM hub.claim_deliveries(100, 'w9') c WHERE c.endpoint_id = (SELECT endpoint_id FROM hub.endpoints WHERE name = 'wh') $$;
CREATE FUNCTION pg_temp.wh_circuit() RETURNS text LANGUAGE sql AS
$$ SELECT circuit_state || ':' || consecutive_failures || ':' || cardinality(circuit_failed_keys) FROM hub.endpoints WHERE name = 'wh' $$;
SELECT pg_temp.inv('SKU-B');
SELECT pg_temp.fail_wh(), pg_temp.fail_wh(), pg_temp.fail_wh(), pg_temp.fail_wh();
SELECT is(pg_temp.wh_circuit() || ' ' || (SELECT attempts FROM hub.deliveries WHERE aggregate_id = 'SKU-B'), 'closed:1:1 4',
	'one key failing 4 times in a row (threshold 3) counts once: the circuit stays closed');
SELECT pg_temp.inv('SKU-C');
SELECT pg_temp.fail_wh();
SELECT is(pg_temp.wh_circuit(), 'closed:2:2', 'another key''s failure counts');
CREATE TEMP TABLE w1 AS SELECT * FROM hub.claim_deliveries(100, 'w9') WHERE endpoint_id = :wh;
SELECT ok((SELECT hub.complete_delivery(delivery_id, lease_token, 200, 3) FROM w1 WHERE aggregate_id = 'SKU-C'), 'C gets through');
SELECT is(pg_temp.wh_circuit(), 'closed:0:0', 'a success of any key empties the count');
SELECT hub.fail_delivery(delivery_id, lease_token, 500, 'down', 3) FROM w1 WHERE aggregate_id = 'SKU-B';
SELECT is(pg_temp.wh_circuit(), 'closed:1:1', 'after a success the failing key counts again, once');
SELECT pg_temp.inv('SKU-D'), pg_temp.inv('SKU-E');
SELECT pg_temp.fail_wh();
SELECT is(pg_temp.wh_circuit(), 'open:3:3', 'three distinct keys failing with no success between open the circuit');
SELECT is(pg_temp.fail_wh(), 'SKU-B:retry_wait', 'after the cool-off one probe goes (here of the key counted first) and fails');
SELECT is(pg_temp.wh_circuit(), 'open:3:3', 'a failed probe opens the circuit again, though its key already counted');
CREATE TEMP TABLE w2 AS SELECT * FROM hub.claim_deliveries(100, 'w9') WHERE endpoint_id = :wh;
SELECT ok((SELECT hub.complete_delivery(delivery_id, lease_token, 200, 3) FROM w2), 'the next probe succeeds');
SELECT is(pg_temp.wh_circuit(), 'closed:0:0', 'and closes the circuit with an empty count');
CREATE TEMP TABLE w3 AS SELECT * FROM hub.claim_deliveries(100, 'w9') WHERE endpoint_id = :wh;
SELECT hub.fail_delivery(delivery_id, lease_token, 500, 'down', 3) FROM w3 WHERE aggregate_id = (SELECT min(aggregate_id) FROM w3);
SELECT is(pg_temp.wh_circuit(), 'closed:1:1', 'a failure counts');
SELECT is(hub._complete_many(array_agg(delivery_id), array_agg(lease_token), array_agg(200), array_agg(3), array_agg(NULL::text), 'w9'), 1,
	'the batch completion records the other delivery') FROM w3 WHERE aggregate_id = (SELECT max(aggregate_id) FROM w3);
SELECT is(pg_temp.wh_circuit(), 'closed:0:0', 'and empties the count too');

SELECT * FROM finish();
