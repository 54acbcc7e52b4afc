-- Names settled before 0.3.0: hub.replay_delivery and hub.replay_subscription
-- (hub.replay(bigint, ...) and hub.replay(integer, ...) replayed different
-- things depending only on the argument's type) with the old names as
-- deprecated aliases that do the same; logistics_hub.dispatcher_naptime,
-- with logistics_hub.poll_interval kept as its deprecated name ("poll" is
-- the pollers' word now).  Autocommit (own database): routing only sees
-- committed events.
SELECT plan(9);

SELECT hub.create_endpoint('erp', 'http://127.0.0.1:9/erp', 'erp');
SELECT hub.subscribe('erp', 'order.*', max_attempts => 1, ordering => 'none');
SELECT hub.publish('order.created', 'SO-' || i, jsonb_build_object('order_id', 'SO-' || i)) FROM generate_series(1, 3) i;
CREATE TEMP TABLE c AS SELECT * FROM hub.claim_deliveries(10, 'w');
SELECT hub.fail_delivery(delivery_id, lease_token, 500, NULL, 9, 'boom') FROM c;

SELECT lives_ok(format($$SELECT hub.replay_delivery(%s, 'one again')$$,
	(SELECT delivery_id FROM c WHERE aggregate_id = 'SO-1')), 'hub.replay_delivery replays one delivery');
SELECT lives_ok(format($$SELECT hub.replay(%s::bigint, 'one again, old name')$$,
	(SELECT delivery_id FROM c WHERE aggregate_id = 'SO-2')), 'hub.replay(bigint, ...) still does, deprecated');
SELECT is((SELECT array_agg(d.state ORDER BY d.aggregate_id) FROM hub.deliveries d), ARRAY['pending', 'pending', 'dead'],
	'the two replayed deliveries are pending again, the third still dead');
SELECT is(hub.replay_subscription((SELECT subscription_id FROM hub.subscriptions), 'the rest'), 1,
	'hub.replay_subscription requeues the subscription''s dead delivery');
CREATE TEMP TABLE c2 AS SELECT * FROM hub.claim_deliveries(10, 'w');
SELECT hub.fail_delivery(delivery_id, lease_token, 500, NULL, 9, 'boom again') FROM c2;
SELECT is(hub.replay((SELECT subscription_id FROM hub.subscriptions), 'the rest, old name'), 3,
	'hub.replay(integer, ...) still does, deprecated');
SELECT is((SELECT array_agg(action ORDER BY audit_id) FROM hub.operator_audit WHERE action = 'replay'
		   OR action LIKE 'replay%'),
	ARRAY['replay', 'replay', 'replay_dead', 'replay_dead'],
	'each replay, by either name, is audited once');
SELECT is(obj_description('hub.replay(bigint, text)'::regprocedure, 'pg_proc'), 'Deprecated: hub.replay_delivery(delivery_id, reason).',
	'the old names say they are deprecated');

SELECT is(current_setting('logistics_hub.dispatcher_naptime'), '1s', 'logistics_hub.dispatcher_naptime, 1 s by default');
SELECT is(current_setting('logistics_hub.poll_interval'), '-1', 'logistics_hub.poll_interval, its deprecated name, is not set by default');

SELECT * FROM finish();
