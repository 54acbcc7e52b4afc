-- Operations over the outbox: dead letters, sync status, trace, replay of
-- all dead deliveries of a subscription, and backfill of a new endpoint.
-- Autocommit (own database): routing only sees committed events.
SELECT plan(11);

SELECT hub.create_endpoint('erp', 'http://127.0.0.1:9/erp', 'erp');
SELECT hub.subscribe('erp', 'order.*', max_attempts => 1);
SELECT hub.publish('order.created', 'SO-1', '{"order_id": "SO-1"}', correlation_id => 'C-1');
SELECT hub.publish('order.created', 'SO-2', '{"order_id": "SO-2"}', correlation_id => 'C-2');
CREATE TEMP TABLE c AS SELECT * FROM hub.claim_deliveries(10, 'w');
SELECT hub.complete_delivery(delivery_id, lease_token, 200, 9) FROM c WHERE aggregate_id = 'SO-1';
SELECT hub.fail_delivery(delivery_id, lease_token, 500, NULL, 9, 'boom') FROM c WHERE aggregate_id = 'SO-2';

SELECT is((SELECT array_agg(aggregate_id) FROM hub.dead_letters), ARRAY['SO-2'], 'the exhausted delivery is a dead letter');
SELECT is((SELECT last_error FROM hub.dead_letters), '500 ', 'with its last error');
SELECT is((SELECT dead FROM hub.sync_status WHERE endpoint = 'erp')::int, 1, 'sync_status counts it dead');
SELECT is((SELECT success_rate_1h FROM hub.sync_status WHERE endpoint = 'erp'), 0.5, 'success rate over the last hour');
SELECT ok((SELECT last_success IS NOT NULL FROM hub.sync_status WHERE endpoint = 'erp'), 'last success is shown');
SELECT is((SELECT array_agg(what ORDER BY at, what) FROM hub.trace('C-1')),
	ARRAY['published', 'attempt 1: delivered', 'delivery delivered'], 'trace of a correlation id');

SELECT is(hub.replay_dead((SELECT subscription_id FROM hub.subscriptions), 'ERP back'), 1, 'replay_dead requeues the dead delivery');
SELECT is((SELECT count(*) FROM hub.dead_letters)::int, 0, 'no dead letters left');

-- a new endpoint gets old events only through a backfill
SELECT hub.create_endpoint('portal', 'http://127.0.0.1:9/portal', 'portal');
SELECT hub.subscribe('portal', 'order.created');
SELECT hub._route_events();
SELECT is((SELECT count(*) FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'portal')::int, 0,
	'a new subscription does not receive old events by itself');
SELECT is(hub.replay_events((SELECT subscription_id FROM hub.subscriptions s JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'portal'),
	'backfill the new portal', published_from => now() - interval '1 day'), 2, 'replay_events backfills the new endpoint');
SELECT throws_ok($$SELECT hub.replay_events(1, 'x')$$, '22023', 'a replay needs a time range or a correlation id', 'a replay must be bounded');

SELECT * FROM finish();
