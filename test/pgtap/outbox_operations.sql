-- Operations over the outbox: dead letters, sync status, trace, replay of
-- all dead deliveries of a subscription, and backfill of a new endpoint.
-- Autocommit (own database): routing only sees committed events.
SELECT plan(14);

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

SELECT is(hub.replay((SELECT subscription_id FROM hub.subscriptions), 'ERP back'), 1, 'replaying a subscription requeues its dead delivery');
SELECT is((SELECT count(*) FROM hub.dead_letters)::int, 0, 'no dead letters left');

-- a new endpoint gets old events only through a backfill
SELECT hub.create_endpoint('portal', 'http://127.0.0.1:9/portal', 'portal');
SELECT hub.subscribe('portal', 'order.created');
SELECT hub._route_events();
SELECT is((SELECT count(*) FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'portal')::int, 0,
	'a new subscription does not receive old events by itself');
SELECT is(hub.replay((SELECT subscription_id FROM hub.subscriptions s JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'portal'),
	'backfill the new portal', from_time => now() - interval '1 day'), 2, 'a replay with a time range backfills the new endpoint');

-- pausing an endpoint holds its deliveries without spending attempts
SELECT hub.pause_endpoint('portal', 'portal maintenance');
SELECT is((SELECT count(*) FROM hub.claim_deliveries(100) c JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'portal')::int, 0,
	'a paused endpoint''s deliveries are not handed out');
SELECT hub.resume_endpoint('portal', 'maintenance over');
SELECT is((SELECT count(*) FROM hub.claim_deliveries(100) c JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'portal')::int, 2,
	'after resume they are handed out');
SELECT is((SELECT array_agg(action || ':' || coalesce(reason, '') ORDER BY audit_id) FROM hub.operator_audit WHERE action LIKE '%endpoint'),
	ARRAY['pause_endpoint:portal maintenance', 'resume_endpoint:maintenance over'], 'pause and resume are audited with the reason');
SELECT throws_ok($$SELECT hub.pause_endpoint('nowhere')$$, '42704', 'endpoint "nowhere" does not exist', 'pausing an unknown endpoint fails');

SELECT * FROM finish();
