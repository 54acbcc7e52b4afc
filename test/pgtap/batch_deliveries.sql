-- Batch deliveries (body_format batch): routing forms them, up to batch_max
-- events each in publishing order; with per_key ordering per bucket of the
-- aggregate's hash (the batches of a bucket go in order), with none in one
-- run.  A claim hands a batch out whole (one row per event, one lease), it
-- is completed, failed, replayed and audited as one delivery, retention
-- keeps every event of an open batch, trace and ranged replay see the
-- events inside batches.
-- Autocommit (own database): routing only sees committed events.
SELECT plan(25);

SELECT hub.create_endpoint('wms', 'http://127.0.0.1:9/wms', 'wms') AS ep \gset
SELECT hub.subscribe('wms', 'order.*', ordering => 'none', body_format => 'batch', batch_max => 3) AS s_none \gset
SELECT hub.subscribe('wms', '*.created', ordering => 'per_key', body_format => 'batch', batch_max => 2) AS s_key \gset
SELECT hub.subscribe('wms', 'order.created', filter => '{"single": true}') AS s_one \gset
-- 7 events of keys SO-0, SO-1, SO-2, in three transactions
SELECT hub.publish('order.created', 'SO-' || (g % 3), jsonb_build_object('order_id', 'SO-' || g, 'n', g, 'single', g = 1)) FROM generate_series(1, 3) g;
SELECT hub.publish('order.created', 'SO-' || (g % 3), jsonb_build_object('order_id', 'SO-' || g, 'n', g, 'single', false)) FROM generate_series(4, 6) g;
SELECT hub.publish('order.created', 'SO-1', jsonb_build_object('order_id', 'SO-7', 'n', 7, 'single', false), correlation_id => 'c-7');
SELECT is(hub._route_events(), 8::bigint, 'one pass routes 3 + 4 batches and 1 single delivery');
SELECT is(hub._route_events(), 0::bigint, 'and a second pass routes nothing again');

-- batch none: 3, 3, 1 in publishing order; event_id the smallest; every event once
SELECT is(ARRAY(SELECT cardinality(batch_events) FROM hub.deliveries WHERE subscription_id = :s_none ORDER BY seq),
	ARRAY[3, 3, 1], 'ordering none: batches of batch_max in publishing order');
SELECT is((SELECT count(*) FROM hub.deliveries d WHERE subscription_id = :s_none
		   AND d.event_id <> (SELECT x FROM unnest(d.batch_events) x ORDER BY x LIMIT 1)), 0::bigint,
	'a batch''s event_id is its smallest event');
SELECT is((SELECT count(*) FROM hub.deliveries d WHERE subscription_id = :s_none
		   AND d.seq <> (SELECT o.seq FROM hub.outbox o WHERE o.event_id = d.batch_events[1])), 0::bigint,
	'and its seq that of its first');
SELECT is(ARRAY(SELECT o.payload ->> 'n' FROM hub.deliveries d, unnest(d.batch_events) WITH ORDINALITY b(e, i)
				JOIN hub.outbox o ON o.event_id = b.e WHERE d.subscription_id = :s_none ORDER BY d.seq, b.i),
	ARRAY['1', '2', '3', '4', '5', '6', '7'], 'every event exactly once, in publishing order');
-- per_key: per bucket, at most 2, each key in one bucket
SELECT is((SELECT count(*) FROM hub.deliveries WHERE subscription_id = :s_key AND aggregate_id !~ '^batch:[0-9]+$'), 0::bigint,
	'per_key: a batch''s aggregate_id is its bucket');
SELECT is((SELECT max(cardinality(batch_events)) FROM hub.deliveries WHERE subscription_id = :s_key), 2,
	'at most batch_max events a batch');
SELECT is((SELECT count(*) FROM (SELECT o.aggregate_id FROM hub.deliveries d, unnest(d.batch_events) e
								 JOIN hub.outbox o ON o.event_id = e
								 WHERE d.subscription_id = :s_key GROUP BY 1 HAVING count(DISTINCT d.aggregate_id) > 1) x), 0::bigint,
	'the events of a key are all in one bucket');
SELECT is((SELECT count(*) FROM hub.deliveries WHERE subscription_id = :s_one AND batch_events IS NULL), 1::bigint,
	'an event subscription gets deliveries of one event');

-- claims: a batch whole, in order, one lease; max_events caps the claim
CREATE TEMP TABLE c1 AS SELECT * FROM hub.claim_deliveries(100, 'w', max_events => 4);
SELECT is((SELECT count(*) FROM (SELECT delivery_id FROM c1 GROUP BY 1
								 HAVING count(*) <> min(batch_size) OR count(DISTINCT lease_token) <> 1) x), 0::bigint,
	'a batch delivery comes as batch_size rows with one lease token');
SELECT ok((SELECT count(*) FROM c1) BETWEEN 4 AND 6, 'max_events caps the claim (a delivery begun below it comes whole)');
CREATE TEMP TABLE c2 AS SELECT * FROM hub.claim_deliveries(100, 'w');
SELECT is((SELECT count(*) FROM c2 JOIN hub.deliveries d USING (delivery_id)
		   WHERE d.subscription_id = :s_key AND d.aggregate_id IN (SELECT d1.aggregate_id FROM c1 JOIN hub.deliveries d1 USING (delivery_id)
																	WHERE d1.subscription_id = :s_key)), 0::bigint,
	'a bucket''s next batch waits while its first is in flight');
SELECT is((SELECT count(*) FROM (SELECT 1 FROM c1 UNION ALL SELECT 1 FROM c2) x)
		  + (SELECT coalesce(sum(cardinality(batch_events)), 0) FROM hub.deliveries WHERE state = 'pending'), 15::bigint,
	'the claims and what is left pending hold each of the 7 + 7 + 1 events once');

-- outcomes of a batch are those of one delivery
SELECT hub.complete_delivery(delivery_id, lease_token, 204, 3) FROM (SELECT DISTINCT delivery_id, lease_token FROM c1) x;
SELECT is((SELECT count(*) FROM hub.attempts a JOIN (SELECT DISTINCT delivery_id FROM c1) x USING (delivery_id)),
		  (SELECT count(DISTINCT delivery_id) FROM c1), 'one attempt row a batch request');
SELECT is((SELECT string_agg(DISTINCT state, ',') FROM hub.deliveries WHERE delivery_id IN (SELECT delivery_id FROM c1)), 'delivered',
	'and the batch is delivered');
SELECT hub.fail_delivery(delivery_id, lease_token, 400, 'bad batch', 3) FROM (SELECT DISTINCT delivery_id, lease_token FROM c2) x;
SELECT is((SELECT count(*) FROM hub.dead_letters WHERE events > 1), (SELECT count(DISTINCT delivery_id) FROM c2 WHERE batch_size > 1),
	'a batch refused with a 4xx is one dead letter, with its event count');

-- trace sees events inside batches; a ranged replay creates no duplicate
SELECT is((SELECT count(*) FROM hub.trace('c-7') WHERE what LIKE 'delivery %'), 2::bigint,
	'trace shows the deliveries of an event inside batches (its ordering none batch and its bucket''s)');
SELECT hub.replay(delivery_id, 'receiver fixed') FROM hub.deliveries WHERE subscription_id = :s_none AND seq = 4;
SELECT is(hub.replay(:s_none, 'again', now() - interval '1 hour', now() + interval '1 hour'), 2,
	'a ranged replay of a batch subscription resets the two batches not pending and creates nothing');
SELECT is((SELECT count(*) FROM hub.deliveries WHERE subscription_id = :s_none), 3::bigint, 'still three batches');

-- retention keeps every event of a batch still open, though none has a
-- delivery of its own
SELECT is((SELECT events_removed FROM hub.run_retention(interval '0', interval '0')), 0::bigint,
	'no event is removed while a batch holding it is open');
SELECT is((SELECT count(*) FROM hub.outbox), 7::bigint, 'all seven events are still there');

-- deleting the subscription takes its batches, and then the events can go
DELETE FROM hub.subscriptions WHERE subscription_id = :s_none;
SELECT is((SELECT count(*) FROM hub.deliveries WHERE subscription_id = :s_none), 0::bigint, 'a deleted subscription''s batches go with it');
SELECT is((SELECT events_removed FROM hub.run_retention(interval '0', interval '0')), 6::bigint,
	'then the events go (delivered or dead past the dead period), all but one');
SELECT is((SELECT array_agg(o.payload ->> 'n') FROM hub.outbox o), ARRAY['7'],
	'the one in the batch still pending behind its bucket''s first (SO-1: 1 and 4, then 7)');

SELECT * FROM finish();
