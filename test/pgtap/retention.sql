-- Retention (hub.run_retention): finished events older than the period go
-- with their deliveries and attempts, whole days of attempts are dropped as
-- partitions (keeping those of open deliveries), recent and undelivered
-- events stay, dead ones stay for the dead period, processed inbox messages
-- go after the inbox's deduplication window, and only the retention
-- function opens the door of the immutability triggers.
-- Autocommit (own database): routing only sees committed events.
SELECT plan(43);

SELECT hub.create_endpoint('erp', 'http://127.0.0.1:9/erp', 'erp');
SELECT hub.subscribe('erp', 'order.*', ordering => 'none', max_attempts => 1);
SELECT hub.publish('order.created', 'SO-' || g, jsonb_build_object('order_id', 'SO-' || g)) FROM generate_series(1, 5) g;
SELECT hub.publish('shipment.delivered', 'SH-1', '{"shipment_id": "SH-1"}');	-- no subscription: no delivery
CREATE TEMP TABLE c AS SELECT * FROM hub.claim_deliveries(10, 'w');
SELECT hub.complete_delivery(delivery_id, lease_token, 200, 5) FROM c WHERE aggregate_id = 'SO-1';
SELECT hub.fail_delivery(delivery_id, lease_token, 500, 'boom', 5) FROM c WHERE aggregate_id IN ('SO-2', 'SO-5');
SELECT hub.skip_delivery(delivery_id, 'not needed') FROM c WHERE aggregate_id = 'SO-5';
SELECT hub.defer_delivery(delivery_id, lease_token, now() + interval '1 hour') FROM c WHERE aggregate_id = 'SO-4';
-- SO-1 delivered, SO-2 dead, SO-3 in flight, SO-4 pending, SO-5 skipped, SH-1 never routed anywhere
SELECT is((SELECT string_agg(aggregate_id || ':' || state, ',' ORDER BY aggregate_id) FROM hub.deliveries),
	'SO-1:delivered,SO-2:dead,SO-3:in_flight,SO-4:pending,SO-5:skipped', 'the deliveries are set up');

SELECT is((SELECT relkind::text FROM pg_class WHERE oid = 'hub.attempts'::regclass), 'p', 'hub.attempts is partitioned');
SELECT is((SELECT array_agg(c::regclass::text ORDER BY c::regclass::text) FROM pg_extension, unnest(extconfig) c
		   WHERE extname = 'logistics_hub' AND c::regclass::text ~ '^hub\.(_?endpoint|subscriptions|event_types|inbox_handlers|_endpoint_secrets)'),
	ARRAY['hub._endpoint_secrets', 'hub.endpoints', 'hub.endpoints_endpoint_id_seq', 'hub.event_types', 'hub.inbox_handlers',
		  'hub.subscriptions', 'hub.subscriptions_subscription_id_seq'],
	'the configuration tables of the outbox and inbox, and their identity sequences, are registered with pg_extension_config_dump');
SELECT is(current_setting('logistics_hub.retention_period'), '7d', 'logistics_hub.retention_period defaults to 7 days');
SELECT is(current_setting('logistics_hub.dead_retention_period'), '30d', 'logistics_hub.dead_retention_period defaults to 30 days');
SELECT is(current_setting('logistics_hub.retention_max_events'), '100000', 'logistics_hub.retention_max_events defaults to 100000');

-- a day partition of attempts long past: one attempt of a finished delivery, one of an open one
SELECT ok(hub._attempts_partition(((now() AT TIME ZONE 'UTC') - interval '30 days')::date), 'an old day partition can be made');
SELECT is((SELECT count(*) FROM pg_inherits WHERE inhparent = 'hub.attempts'::regclass)::int, 2, 'the default partition and the old day');
INSERT INTO hub.attempts (delivery_id, attempt, at, error, outcome)
SELECT delivery_id, 0, now() - interval '30 days', 'old ' || aggregate_id, 'retry' FROM hub.deliveries WHERE aggregate_id IN ('SO-1', 'SO-4');
SELECT is((SELECT count(*) FROM hub.attempts WHERE at < now() - interval '29 days' AND tableoid <> 'hub._attempts_default'::regclass)::int, 2,
	'they are in the old day''s partition');

-- recent events are kept; the old day goes as a whole
SELECT is((SELECT row(events_removed, deliveries_removed, partitions_dropped)::text FROM hub.run_retention(interval '1 hour', interval '1 hour')),
	'(0,0,1)', 'nothing recent is removed; the old day partition is dropped');
SELECT is((SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		   WHERE i.inhparent = 'hub.attempts'::regclass AND c.relname ~ '^_attempts_p' AND c.relname < '_attempts_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD'))::int,
	0, 'no day partition before today is left');
SELECT is((SELECT string_agg(error, ',') FROM hub.attempts WHERE at < now() - interval '29 days'), 'old SO-4',
	'the old attempt of the open delivery is kept (moved to the default partition), the finished one''s is gone');
SELECT ok((SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		   WHERE i.inhparent = 'hub.attempts'::regclass AND c.relname > '_attempts_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD')) = 2,
	'the next two days have their partitions');
SELECT is((SELECT count(*) FROM pg_inherits i JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = i.inhrelid AND d.deptype = 'e'
		   WHERE i.inhparent = 'hub.attempts'::regclass)::int,
		  (SELECT count(*) FROM pg_inherits WHERE inhparent = 'hub.attempts'::regclass)::int,
	'every partition is a member of the extension, like hub.attempts (pg_dump leaves them out together)');
SELECT is((SELECT count(*) FROM hub.outbox)::int, 6, 'every event is still there');

-- finished events older than the period go, with their deliveries and attempts
SELECT is((SELECT row(events_removed, deliveries_removed, attempts_removed)::text FROM hub.run_retention(interval '0', interval '1 hour')),
	'(3,2,2)', 'delivered, skipped and never-routed old events are removed with their deliveries and attempts');
SELECT is((SELECT string_agg(aggregate_id, ',' ORDER BY aggregate_id) FROM hub.outbox), 'SO-2,SO-3,SO-4',
	'the dead one (within the dead period), the in-flight one and the pending one stay');
SELECT is((SELECT string_agg(aggregate_id || ':' || state, ',' ORDER BY aggregate_id) FROM hub.deliveries),
	'SO-2:dead,SO-3:in_flight,SO-4:pending', 'with their deliveries');
SELECT is((SELECT count(*) FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) WHERE d.aggregate_id IN ('SO-2', 'SO-4'))::int, 3,
	'and their attempts (dead, deferred, the old one)');

-- dead ones go after the dead period; undelivered ones never
SELECT is((SELECT row(events_removed, deliveries_removed, attempts_removed)::text FROM hub.run_retention(interval '0', interval '0')),
	'(1,1,1)', 'a dead delivery past the dead period goes with its event');
SELECT is((SELECT string_agg(aggregate_id, ',' ORDER BY aggregate_id) FROM hub.outbox), 'SO-3,SO-4',
	'undelivered events are never removed');
SELECT is((SELECT events_removed FROM hub.run_retention(interval '0', interval '0')), 0::bigint, 'and a second run finds nothing more');

-- an event whose delivery is replayed is kept
SELECT hub.complete_delivery(delivery_id, lease_token, 200, 5) FROM c WHERE aggregate_id = 'SO-3';
SELECT hub.replay((SELECT delivery_id FROM hub.deliveries WHERE aggregate_id = 'SO-3'), 'receiver lost it');
SELECT is((SELECT events_removed FROM hub.run_retention(interval '0', interval '0')), 0::bigint, 'a replayed (pending again) event stays');

-- the inbox: processed messages past the deduplication window go, dead and
-- unhandled ones after the dead period, unprocessed ones never
CREATE FUNCTION public.inbox_ok(payload jsonb, message_type text) RETURNS void LANGUAGE sql SECURITY DEFINER AS $$ SELECT $$;
CREATE FUNCTION public.inbox_bad(payload jsonb, message_type text) RETURNS void LANGUAGE plpgsql SECURITY DEFINER
AS $$ BEGIN RAISE EXCEPTION 'cannot book it'; END $$;
SELECT hub.register_handler('ok.*', 'public.inbox_ok');
SELECT hub.register_handler('bad.*', 'public.inbox_bad', max_attempts => 1);
SELECT hub.receive('wms', m, t, '{}') FROM (VALUES ('m-done-1', 'ok.x'), ('m-done-2', 'ok.x'), ('m-dup', 'ok.x'),
	('m-dead', 'bad.x'), ('m-unhandled', 'none.x')) v(m, t);
SELECT * FROM hub.process_inbox(10);
SELECT hub.receive('wms', 'm-new', 'ok.x', '{}', now() - interval '3 hours');	-- old, but not processed yet
UPDATE hub.inbox SET processed_at = now() - interval '2 hours' WHERE processed_at IS NOT NULL;
SELECT is((SELECT string_agg(message_id || ':' || state, ',' ORDER BY inbox_id) FROM hub.inbox),
	'm-done-1:done,m-done-2:done,m-dup:done,m-dead:dead,m-unhandled:unhandled,m-new:new', 'the inbox is set up');
SELECT is(current_setting('logistics_hub.inbox_retention_period'), '30d', 'logistics_hub.inbox_retention_period defaults to 30 days');
SELECT is((SELECT inbox_removed FROM hub.run_retention(interval '1 hour', interval '1 hour', NULL, interval '1 hour')), 0::bigint,
	'no message is removed while no retention mark from before the cutoff names it (received before the cutoff)');
-- a run two hours ago would have recorded every message so far
INSERT INTO hub._retention_marks (at, snapshot_xmin, inbox_upto)
SELECT now() - interval '2 hours', pg_snapshot_xmin(pg_current_snapshot()), max(inbox_id) FROM hub.inbox;
SELECT ok(hub.receive('wms', 'm-dup', 'ok.x', '{}') = false, 'm-dup is sent again: a duplicate');
SELECT is((SELECT inbox_removed FROM hub.run_retention(interval '1 hour', interval '3 hours', 1, interval '1 hour')), 1::bigint,
	'max_events bounds the inbox messages of a run too');
SELECT is((SELECT inbox_removed FROM hub.run_retention(interval '1 hour', interval '3 hours', NULL, interval '1 hour')), 1::bigint,
	'the next run takes the rest');
SELECT is((SELECT string_agg(message_id, ',' ORDER BY inbox_id) FROM hub.inbox), 'm-dup,m-dead,m-unhandled,m-new',
	'done messages processed before the cutoff are gone; one sent again since, dead, unhandled and unprocessed ones stay');
SELECT is((SELECT inbox_removed FROM hub.run_retention(interval '1 hour', interval '1 hour', NULL, interval '1 hour')), 2::bigint,
	'dead and unhandled messages go after the dead period');
SELECT is((SELECT string_agg(message_id, ',' ORDER BY inbox_id) FROM hub.inbox), 'm-dup,m-new',
	'the one sent again within the window and the unprocessed one stay');
SELECT ok(hub.receive('wms', 'm-done-1', 'ok.x', '{}'), 'a message sent again after its row went is accepted as new');
SELECT is((SELECT count(*) FROM hub.outbox)::int, 2, 'the events are untouched by the inbox''s retention');
SELECT throws_ok($$SELECT * FROM hub.run_retention(inbox_retention => interval '-1 day')$$, '22023',
	'invalid retention period: "-1 days"', 'a negative inbox period is refused');

-- the door
SELECT throws_ok($$SELECT * FROM hub.run_retention(interval '-1 day')$$, '22023', 'invalid retention period: "-1 days"',
	'a negative period is refused');
BEGIN;
SELECT events_removed FROM hub.run_retention(interval '1 hour');
SELECT is(current_setting('logistics_hub._retention'), 'off', 'run_retention closes the door behind it in the same transaction');
SELECT throws_ok($$DELETE FROM hub.outbox$$, '55000', 'published events are immutable', 'so a DELETE after it is still refused');
ROLLBACK;
SELECT throws_ok($$UPDATE hub.attempts SET error = 'x'$$, '55000', 'hub.attempts is append-only',
	'attempts stay append-only in every partition, and the error names the partitioned table');
CREATE ROLE retention_admin LOGIN;
GRANT hub_admin TO retention_admin;
CREATE ROLE retention_nobody LOGIN;
SET ROLE retention_admin;
SELECT lives_ok($$SELECT * FROM hub.run_retention()$$, 'hub_admin may run retention');
SELECT throws_ok($$SELECT set_config('logistics_hub._retention', 'on', true)$$, '42501', NULL,
	'a non-superuser cannot open the door itself');
SELECT throws_ok($$DELETE FROM hub.attempts$$, '42501', NULL, 'nor delete attempts');
RESET ROLE;
SET ROLE retention_nobody;
SELECT throws_ok($$SELECT * FROM hub.run_retention()$$, '42501', NULL, 'a role without hub_admin cannot run retention');
RESET ROLE;

SELECT * FROM finish();
