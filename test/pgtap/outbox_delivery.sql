-- The outbox table model without HTTP: publish and contracts, immutability,
-- routing after commit, claim with leases and per-key order, complete, fail
-- with retry and dead, fencing of late results, pause, skip and replay.
-- Runs in autocommit (its own database): routing only sees committed events.
SELECT plan(41);

-- publishing and contracts
SELECT ok(hub.publish('order.created', 'SO-1', '{"order_id": "SO-1"}') IS NOT NULL, 'publish returns the event id');
SELECT throws_ok($$SELECT hub.publish('order.released', 'SO-1', '{"order_id": "SO-1"}')$$, '22023',
	'order.released event lacks the required payload key "warehouse"', 'a broken contract names the missing key');
SELECT throws_ok($$SELECT hub.publish('Order Released', 'SO-1', '{}')$$, '22023', NULL, 'event types are <entity>.<verb>');
SELECT lives_ok($$INSERT INTO hub.outbox (event_type, aggregate_id, payload) VALUES ('order.cancelled', 'SO-9', '{"order_id": "SO-9"}')$$,
	'a plain INSERT into hub.outbox publishes too');
SELECT throws_ok($$INSERT INTO hub.outbox (event_type, aggregate_id, payload) VALUES ('order.cancelled', 'SO-9', '{}')$$,
	'22023', NULL, 'the contract holds for plain INSERTs');
SET logistics_hub.unknown_event_types = reject;
SELECT throws_ok($$SELECT hub.publish('pallet.wrapped', 'P-1', '{}')$$, '22023', 'unknown event type: "pallet.wrapped"',
	'unknown event types are refused when the setting says reject');
SET logistics_hub.unknown_event_types = accept;
SELECT lives_ok($$SELECT hub.publish('pallet.wrapped', 'P-1', '{}')$$, 'and accepted when it says accept');
SELECT throws_ok($$UPDATE hub.outbox SET payload = '{}'$$, '55000', 'published events are immutable', 'events cannot be updated');
SELECT throws_ok($$DELETE FROM hub.outbox$$, '55000', 'published events are immutable', 'events cannot be deleted');

-- endpoints and subscriptions
SELECT ok(hub.create_endpoint('wms', 'http://127.0.0.1:9/wms', 'wms', signing_secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw') > 0, 'create_endpoint');
SELECT throws_ok($$SELECT hub.create_endpoint('bad', 'file:///etc/passwd')$$, '22023', 'invalid endpoint URL: "file:///etc/passwd"', 'only http and https');
SELECT ok(hub.subscribe('wms', 'shipment.*', max_attempts => 2, retry_base => '0'::interval, retry_max => '0'::interval) > 0, 'subscribe with named options');
SELECT throws_ok($$SELECT hub.subscribe('nowhere', 'order.*')$$, '42704', NULL, 'subscribing an unknown endpoint fails');

-- routing happens after commit; a rolled-back publish never becomes a delivery
BEGIN;
SELECT hub.publish('shipment.dispatched', 'SH-X', '{"shipment_id": "SH-X", "carrier": "ACME"}');
ROLLBACK;
SELECT hub.publish('shipment.dispatched', 'SH-1', '{"shipment_id": "SH-1", "carrier": "ACME"}');
SELECT hub.publish('shipment.delivered', 'SH-1', '{"shipment_id": "SH-1"}');
SELECT hub.publish('shipment.dispatched', 'SH-2', '{"shipment_id": "SH-2", "carrier": "ACME"}');
SELECT hub.publish('order.created', 'SO-2', '{"order_id": "SO-2"}');
SELECT is(hub._route_events(), 3::bigint, 'three committed shipment events are routed, the rolled-back and order events are not');
SELECT is(hub._route_events(), 0::bigint, 'routing twice creates nothing twice');

-- claim: per-key order hands out only the head of each aggregate
CREATE TEMP TABLE c1 AS SELECT * FROM hub.claim_deliveries(10, 'w1', '1 hour');
SELECT is((SELECT array_agg(aggregate_id || ':' || event_type ORDER BY aggregate_id) FROM c1),
	ARRAY['SH-1:shipment.dispatched', 'SH-2:shipment.dispatched'], 'one head per aggregate is claimed');
SELECT is((SELECT count(*) FROM hub.claim_deliveries(10, 'w2'))::int, 0, 'leased deliveries and blocked successors are not handed out again');

-- complete SH-1's head: its next event becomes claimable
SELECT ok(hub.complete_delivery(delivery_id, lease_token, 204, 12, NULL, 'w1'), 'complete under the lease')
FROM c1 WHERE aggregate_id = 'SH-1';
SELECT is((SELECT event_type FROM hub.claim_deliveries(10, 'w1') WHERE aggregate_id = 'SH-1'), 'shipment.delivered',
	'after the head is delivered the next event of the key is claimed');

-- SH-2 fails: 500 retries, then dead after max_attempts (2)
SELECT is(hub.fail_delivery(delivery_id, lease_token, 500, NULL, 30, 'oops', NULL, 'w1'), 'retry_wait', 'a 500 is retried')
FROM c1 WHERE aggregate_id = 'SH-2';
SELECT is(hub.complete_delivery(delivery_id, lease_token, 204, 5), false, 'a result with a spent lease token is fenced off')
FROM c1 WHERE aggregate_id = 'SH-2';
SELECT is((SELECT outcome FROM hub.attempts ORDER BY attempt_id DESC LIMIT 1), 'stale', 'and recorded as a stale attempt');
CREATE TEMP TABLE c2 AS SELECT * FROM hub.claim_deliveries(10, 'w1') WHERE aggregate_id = 'SH-2';
SELECT is((SELECT attempt FROM c2), 2, 'the retry is claimed again as attempt 2');
SELECT is(hub.fail_delivery(delivery_id, lease_token, 503, NULL, 30), 'dead', 'dead after max_attempts') FROM c2;
SELECT is((SELECT array_agg(outcome ORDER BY attempt_id) FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) WHERE d.aggregate_id = 'SH-2'),
	ARRAY['retry', 'stale', 'dead'], 'every attempt of the delivery is in the audit trail');

-- a 4xx is permanent; a later event of a dead key waits until the key is skipped or replayed
SELECT hub.publish('shipment.delivered', 'SH-2', '{"shipment_id": "SH-2"}');
SELECT is((SELECT count(*) FROM hub.claim_deliveries(10) WHERE aggregate_id = 'SH-2')::int, 0, 'a dead head blocks its key');
SELECT lives_ok($$SELECT hub.replay((SELECT delivery_id FROM hub.deliveries WHERE aggregate_id = 'SH-2' AND state = 'dead'), 'receiver fixed')$$,
	'replay a dead delivery');
CREATE TEMP TABLE c3 AS SELECT * FROM hub.claim_deliveries(10) WHERE aggregate_id = 'SH-2';
SELECT is((SELECT event_type FROM c3), 'shipment.dispatched', 'the replayed head goes first, same event id');
SELECT is(hub.fail_delivery(delivery_id, lease_token, 422, 'unprocessable', 3), 'dead', 'a 422 is dead at once') FROM c3;
SELECT throws_ok($$SELECT hub.replay((SELECT delivery_id FROM hub.deliveries WHERE aggregate_id = 'SH-1' AND state = 'in_flight'), 'x')$$,
	'55000', NULL, 'a leased delivery cannot be replayed');
SELECT lives_ok($$SELECT hub.skip_delivery((SELECT delivery_id FROM hub.deliveries WHERE aggregate_id = 'SH-2' AND state = 'dead'), 'cancelled by phone')$$,
	'skip the dead head');
SELECT is((SELECT event_type FROM hub.claim_deliveries(10) WHERE aggregate_id = 'SH-2'), 'shipment.delivered', 'skipping unblocks the key');
SELECT is((SELECT array_agg(action ORDER BY audit_id) FROM hub.operator_audit), ARRAY['replay', 'skip_delivery'], 'operator actions are audited');

-- a failure with counts => false (all but one delivery of a failed batch
-- request) leaves the circuit breaker's count alone; one that counts adds one
SELECT hub.publish('shipment.dispatched', 'SH-' || g, jsonb_build_object('shipment_id', 'SH-' || g, 'carrier', 'DHL'))
FROM generate_series(20, 21) g;
CREATE TEMP TABLE c4 AS SELECT * FROM hub.claim_deliveries(10) WHERE aggregate_id IN ('SH-20', 'SH-21');
UPDATE hub.endpoints SET consecutive_failures = 0 WHERE name = 'wms';
SELECT is((SELECT count(*) FROM c4)::int, 2, 'both claimed');
SELECT hub.fail_delivery(delivery_id, lease_token, 503, NULL, 3, counts => aggregate_id = 'SH-20') FROM c4;
SELECT is((SELECT consecutive_failures FROM hub.endpoints WHERE name = 'wms'), 1,
	'two failed deliveries of one request count once towards the circuit breaker');

-- a transform that raises fails its own delivery, recorded; the claim and
-- every other delivery go on
CREATE FUNCTION public.picky(p jsonb) RETURNS jsonb LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
	IF p->>'return_id' = 'RMA-BAD' THEN
		RAISE EXCEPTION 'cannot map return %', p->>'return_id' USING ERRCODE = 'data_exception';
	END IF;
	RETURN jsonb_build_object('rma', p->>'return_id');
END $$;
SELECT hub.create_endpoint('erp2', 'http://127.0.0.1:9/erp2', 'erp');
SELECT hub.subscribe('erp2', 'return.*', transform => 'public.picky', ordering => 'none', max_attempts => 1);
SELECT hub.publish('return.received', r, jsonb_build_object('return_id', r)) FROM unnest(ARRAY['RMA-OK', 'RMA-BAD']) r;
CREATE TEMP TABLE c5 AS SELECT * FROM hub.claim_deliveries(100) WHERE endpoint_id = (SELECT endpoint_id FROM hub.endpoints WHERE name = 'erp2');
SELECT is((SELECT array_agg(payload) FROM c5), ARRAY['{"rma": "RMA-OK"}'::jsonb],
	'the claim hands out the transformed delivery and not the one whose transform raised');
SELECT is((SELECT d.state || ' ' || a.outcome || ' ' || a.error
		   FROM hub.deliveries d JOIN hub.attempts a USING (delivery_id)
		   WHERE d.aggregate_id = 'RMA-BAD' AND d.endpoint_id = (SELECT endpoint_id FROM hub.endpoints WHERE name = 'erp2')),
	'dead dead transform public.picky failed: cannot map return RMA-BAD (SQLSTATE 22000)',
	'the failing transform is recorded on its delivery (dead after max_attempts)');
SELECT is((SELECT consecutive_failures FROM hub.endpoints WHERE name = 'erp2'), 0, 'and not held against the endpoint');

-- the same claim as the dispatchers make it, rendered (source given): the
-- body is rendered from the transformed payload
SELECT hub.publish('return.received', r, jsonb_build_object('return_id', r)) FROM unnest(ARRAY['RMA-OK2', 'RMA-BAD']) r;
SELECT hub._route_events();
CREATE TEMP TABLE c6 AS
SELECT * FROM hub._claim_transformed(100, 'w6', '60 s', 0, 1, NULL, NULL, NULL, NULL, NULL, '/t')
WHERE endpoint_id = (SELECT endpoint_id FROM hub.endpoints WHERE name = 'erp2');
SELECT is((SELECT array_agg(body::jsonb -> 'data') FROM c6), ARRAY['{"rma": "RMA-OK2"}'::jsonb],
	'rendered for a dispatcher: the body holds the transformed payload, the failed transform is not handed out');
-- without a transform the claim itself renders, the body instead of the payload
SELECT hub.subscribe('erp2', 'shipment.*', ordering => 'none');
SELECT hub.publish('shipment.dispatched', 'SH-30', '{"shipment_id": "SH-30", "carrier": "DHL"}');
SELECT hub._route_events();
CREATE TEMP TABLE c7 AS
SELECT * FROM hub._claim(100, 'w7', '60 s', 0, 1, (SELECT endpoint_id FROM hub.endpoints WHERE name = 'erp2'),
						 NULL, NULL, NULL, NULL, '/t');
SELECT is((SELECT body::jsonb - 'occurred_at' FROM c7),
	jsonb_build_object('id', (SELECT event_id FROM c7), 'type', 'shipment.dispatched', 'aggregate_id', 'SH-30',
					   'correlation_id', NULL, 'data', '{"shipment_id": "SH-30", "carrier": "DHL"}'::jsonb,
					   'contract_version', 1),
	'rendered by the claim: the canonical event, with its contract version');
SELECT ok((SELECT payload IS NULL FROM c7), 'and no payload alongside it');

SELECT * FROM finish();
