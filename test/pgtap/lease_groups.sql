-- Lease groups (hub.subscriptions.lease_group): routing puts up to
-- lease_group events of an unordered subscription in one delivery row; a
-- claim hands the group out as one lease (a row per event); the claim cap
-- counts its requests, one per event; _complete_many completes it once
-- with an attempt row per event; _split_group takes the events that did not
-- get through out of it, each into a delivery of its own under the same
-- lease; trace shows each event its own attempts.
-- Autocommit (own database): routing only sees committed events.
SELECT plan(46);

SELECT hub.create_endpoint('erp', 'http://127.0.0.1:9/erp', 'erp', max_concurrency => 4) AS ep \gset

-- only subscriptions of one event a request (per_key ones: lease_groups_per_key.sql)
SELECT throws_ok($$SELECT hub.subscribe('erp', 'order.*', body_format => 'cloudevents_batch', lease_group => 8)$$,
	'22023', 'invalid lease_group: 8', 'a per_key batch subscription cannot have a lease group');
SELECT throws_ok($$SELECT hub.subscribe('erp', 'order.*', ordering => 'none', body_format => 'batch', lease_group => 8)$$,
	'22023', 'invalid lease_group: 8', 'nor a batch subscription');
SELECT throws_ok($$SELECT hub.subscribe('erp', 'order.*', ordering => 'none', lease_group => 0)$$,
	'22023', 'invalid lease_group: 0', 'a group holds at least one event');
SELECT throws_ok($$SELECT hub.subscribe('erp', 'order.*', ordering => 'none', lease_group => 1001)$$,
	'22023', 'invalid lease_group: 1001', 'and at most 1000');
SELECT throws_ok($$SELECT hub.subscribe('erp', 'order.*', ordering => 'none', lease_group => NULL)$$,
	'22023', 'invalid lease_group: NULL', 'and not NULL');

SELECT hub.subscribe('erp', 'order.*', ordering => 'none', lease_group => 5) AS s \gset
SELECT hub.subscribe('erp', 'shipment.*', ordering => 'none') AS s_one \gset
SELECT throws_ok($$UPDATE hub.subscriptions SET body_format = 'batch' WHERE lease_group > 1$$, '23514', NULL,
	'the table holds the same rule (a grouped subscription made a batch one)');
\o /dev/null
SELECT hub.publish('order.created', 'SO-' || g, jsonb_build_object('order_id', 'SO-' || g, 'n', g), correlation_id => 'c-' || g)
FROM generate_series(1, 12) g;
SELECT hub.publish('shipment.dispatched', 'SH-' || g, jsonb_build_object('shipment_id', 'SH-' || g, 'carrier', 'ACME'))
FROM generate_series(1, 3) g;
\o
SELECT is(hub._route_events(), 6::bigint, 'one pass routes 12 events in groups of 5, 5, 2 and 3 single deliveries');
SELECT is(ARRAY(SELECT cardinality(batch_events) FROM hub.deliveries WHERE subscription_id = :s ORDER BY seq),
	ARRAY[5, 5, 2], 'groups of lease_group events in publishing order');
SELECT is(ARRAY(SELECT o.payload ->> 'n' FROM hub.deliveries d, unnest(d.batch_events) WITH ORDINALITY b(e, i)
				JOIN hub.outbox o ON o.event_id = b.e WHERE d.subscription_id = :s ORDER BY d.seq, b.i),
	ARRAY(SELECT g::text FROM generate_series(1, 12) g), 'every event exactly once, in publishing order');
SELECT is((SELECT count(*) FROM hub.deliveries WHERE subscription_id = :s_one AND batch_events IS NULL), 3::bigint,
	'a subscription without a lease group keeps a delivery per event');
SELECT is((SELECT pending FROM hub.sync_status WHERE subscription_id = :s), 12::bigint,
	'sync_status counts the events of the groups, not their rows');

-- the claim cap counts requests: with rounds 1 and a share of 4 connections,
-- the first group comes whole (5 requests) and nothing more of the endpoint
CREATE TEMP TABLE c0 AS
SELECT * FROM hub._claim_all(100, 'w0', '60 s', 0, 1, NULL, 1, NULL, NULL, NULL);
SELECT is((SELECT count(DISTINCT delivery_id) FROM c0), 1::bigint,
	'a claim capped at 4 requests takes one group of 5 (the first delivery always comes whole)');
SELECT is((SELECT count(*) FROM c0), 5::bigint, 'and hands out each of its events');
CREATE TEMP TABLE c0b AS
SELECT * FROM hub._claim_all(100, 'w0', '60 s', 0, 1, NULL, 1, ARRAY[:ep], ARRAY[5], NULL);
SELECT is((SELECT count(*) FROM c0b), 0::bigint, 'a claimer holding 5 requests of the endpoint gets nothing more');
-- give them back for the rest of the test
UPDATE hub.deliveries SET state = 'pending', lease_until = NULL, lease_token = NULL, next_attempt_at = now(),
	attempts = 0 WHERE state = 'in_flight';

CREATE TEMP TABLE c AS SELECT * FROM hub.claim_deliveries(100, 'w');
SELECT is((SELECT count(*) FROM c WHERE subscription_id = :s), 12::bigint, 'a claim hands out every event of the groups');
SELECT is((SELECT count(*) FROM (SELECT delivery_id FROM c WHERE subscription_id = :s GROUP BY 1
								 HAVING count(*) <> min(batch_size) OR count(DISTINCT lease_token) <> 1) x), 0::bigint,
	'a group comes as batch_size rows under one lease token');

SELECT delivery_id AS g1, lease_token AS t1 FROM c WHERE subscription_id = :s ORDER BY delivery_id LIMIT 1 \gset
SELECT delivery_id AS g2, lease_token AS t2 FROM c WHERE subscription_id = :s ORDER BY delivery_id OFFSET 5 LIMIT 1 \gset
SELECT delivery_id AS g3, lease_token AS t3 FROM c WHERE subscription_id = :s ORDER BY delivery_id DESC LIMIT 1 \gset

-- group 1 all delivered: completed once, an attempt row per event
SELECT is(hub._complete_many(array_agg(delivery_id), array_agg(lease_token), array_agg(200), array_agg(3),
							 array_agg(NULL::text), 'w', array_agg(event_id)), 5)
FROM c WHERE delivery_id = :g1;
SELECT is((SELECT state FROM hub.deliveries WHERE delivery_id = :g1), 'delivered', 'the group is delivered');
SELECT is((SELECT array_agg(a.group_event_id ORDER BY a.group_event_id) FROM hub.attempts a WHERE a.delivery_id = :g1 AND a.outcome = 'delivered'),
	(SELECT array_agg(e ORDER BY e) FROM hub.deliveries d, unnest(d.batch_events) e WHERE d.delivery_id = :g1),
	'with one delivered attempt naming each of its events');
SELECT is((SELECT count(*) FROM hub.attempts WHERE delivery_id = :g1 AND attempt <> 1), 0::bigint,
	'all of them attempt 1 of the group');

-- group 2: its 1st and 4th events failed
SELECT array_agg(event_id ORDER BY event_id) AS g2_events FROM c WHERE delivery_id = :g2 \gset
CREATE TEMP TABLE g2 AS SELECT c.event_id, row_number() OVER (ORDER BY c.event_id) AS k FROM c WHERE delivery_id = :g2;
CREATE TEMP TABLE split AS
SELECT * FROM hub._split_group(:g2, :t2, ARRAY(SELECT event_id FROM g2 WHERE k IN (1, 4)));
SELECT is((SELECT count(*) FROM split WHERE delivery_id <> :g2), 2::bigint, 'two events leave the group');
SELECT is((SELECT count(*) FROM split s JOIN hub.deliveries d USING (delivery_id)
		   WHERE d.event_id = s.event_id AND d.batch_events IS NULL AND d.state = 'in_flight'
			 AND d.lease_token = :t2 AND d.attempts = 1 AND d.leased_by = 'w'), 2::bigint,
	'each into a delivery of its own, in flight under the group''s lease and attempt');
SELECT is((SELECT batch_events FROM hub.deliveries WHERE delivery_id = :g2),
	ARRAY(SELECT event_id FROM g2 WHERE k NOT IN (1, 4) ORDER BY k), 'the group keeps the other three');
SELECT is((SELECT event_id FROM hub.deliveries WHERE delivery_id = :g2), (SELECT event_id FROM g2 WHERE k = 2),
	'and its key moves to its smallest remaining event');
SELECT is(hub.fail_delivery((SELECT delivery_id FROM split ORDER BY delivery_id LIMIT 1), :t2, 500, 'HTTP 500', 3),
	'retry_wait', 'a split event fails on its own, with the usual backoff');
SELECT is(hub._complete_many(array_agg(:g2::bigint), array_agg(:t2::bigint), array_agg(204), array_agg(1),
							 array_agg(NULL::text), 'w', array_agg(event_id)), 3)
FROM g2 WHERE k NOT IN (1, 4);
SELECT is((SELECT count(*) FROM hub.deliveries d, unnest(coalesce(d.batch_events, ARRAY[d.event_id])) e
		   WHERE d.subscription_id = :s AND e = ANY (:'g2_events'::uuid[])), 5::bigint,
	'every event of the group is in exactly one delivery');

-- group 3: none got through: it keeps its first event
CREATE TEMP TABLE split3 AS
SELECT * FROM hub._split_group(:g3, :t3, ARRAY(SELECT event_id FROM c WHERE delivery_id = :g3));
SELECT is((SELECT count(*) FROM split3 WHERE delivery_id = :g3), 1::bigint, 'a group none of whose events got through keeps one');
SELECT ok((SELECT batch_events IS NULL AND state = 'in_flight' FROM hub.deliveries WHERE delivery_id = :g3),
	'as a delivery of one event, still in flight');
SELECT is((SELECT count(*) FROM split3), 2::bigint, 'every event named gets its delivery');

-- events given back (deferred) leave together, as one group; failed ones alone
\o /dev/null
SELECT hub.publish('order.created', 'SO-' || g, jsonb_build_object('order_id', 'SO-' || g, 'n', g))
FROM generate_series(13, 22) g;
\o
SELECT is(hub._route_events(), 2::bigint, 'ten more events route into two groups of 5');
CREATE TEMP TABLE c4 AS SELECT * FROM hub.claim_deliveries(100, 'w');
SELECT min(delivery_id) AS g4, max(delivery_id) AS g5 FROM c4 WHERE batch_size = 5 \gset
SELECT lease_token AS t4 FROM c4 WHERE delivery_id = :g4 LIMIT 1 \gset
SELECT lease_token AS t5 FROM c4 WHERE delivery_id = :g5 LIMIT 1 \gset
CREATE TEMP TABLE e4 AS SELECT b.ev AS e, row_number() OVER (ORDER BY b.o) AS k
	FROM hub.deliveries d, unnest(d.batch_events) WITH ORDINALITY b(ev, o) WHERE d.delivery_id = :g4;
CREATE TEMP TABLE e5 AS SELECT b.ev AS e, row_number() OVER (ORDER BY b.o) AS k
	FROM hub.deliveries d, unnest(d.batch_events) WITH ORDINALITY b(ev, o) WHERE d.delivery_id = :g5;
-- group 4: the 1st failed, the 2nd delivered, the 3rd to 5th given back
CREATE TEMP TABLE split4 AS
SELECT * FROM hub._split_group(:g4, :t4, ARRAY(SELECT e FROM e4 WHERE k = 1), ARRAY(SELECT e FROM e4 WHERE k >= 3));
SELECT is((SELECT count(DISTINCT delivery_id) FROM split4 s JOIN e4 ON e4.e = s.event_id WHERE e4.k >= 3), 1::bigint,
	'the events given back leave together, as one delivery');
SELECT is((SELECT d.batch_events FROM split4 s JOIN e4 ON e4.e = s.event_id JOIN hub.deliveries d USING (delivery_id)
		   WHERE e4.k = 3), ARRAY(SELECT e FROM e4 WHERE k >= 3 ORDER BY k),
	'a group of their own, in order, under the same lease');
SELECT ok((SELECT d.batch_events IS NULL AND d.state = 'in_flight' AND d.lease_token = :t4
		   FROM split4 s JOIN e4 ON e4.e = s.event_id JOIN hub.deliveries d USING (delivery_id) WHERE e4.k = 1),
	'the failed one alone');
SELECT ok((SELECT batch_events IS NULL AND event_id = (SELECT e FROM e4 WHERE k = 2) FROM hub.deliveries WHERE delivery_id = :g4),
	'and the group row keeps the one that got through');
-- group 5: none got through, the 1st failed, the rest given back: the
-- group row is what goes back
CREATE TEMP TABLE split5 AS
SELECT * FROM hub._split_group(:g5, :t5, ARRAY(SELECT e FROM e5 WHERE k = 1), ARRAY(SELECT e FROM e5 WHERE k >= 2));
SELECT is((SELECT batch_events FROM hub.deliveries WHERE delivery_id = :g5), ARRAY(SELECT e FROM e5 WHERE k >= 2 ORDER BY k),
	'a group none of whose events got through keeps those given back together');
SELECT is((SELECT count(*) FROM split5 WHERE delivery_id = :g5), 4::bigint, 'and maps them to itself');
SELECT is((SELECT count(*) FROM hub.deliveries d, unnest(coalesce(d.batch_events, ARRAY[d.event_id])) x
		   WHERE x IN (SELECT e FROM e4 UNION ALL SELECT e FROM e5)), 10::bigint,
	'every event of both groups is in exactly one delivery');

-- a lease gone: nothing changes, every event maps to the group
SELECT is((SELECT count(*) FROM hub._split_group(:g1, :t1, ARRAY(SELECT event_id FROM c WHERE delivery_id = :g1))
		   WHERE delivery_id = :g1), 5::bigint, 'a group no longer leased maps every event to itself');
SELECT is((SELECT cardinality(batch_events) FROM hub.deliveries WHERE delivery_id = :g1), 5, 'and stays whole');
-- a stale completion: an attempt row per event, marked stale
SELECT is(hub._complete_many(array_agg(delivery_id), array_agg(lease_token), array_agg(200), array_agg(3),
							 array_agg(NULL::text), 'w', array_agg(event_id)), 0)
FROM c WHERE delivery_id = :g1;
SELECT is((SELECT count(DISTINCT group_event_id) FROM hub.attempts WHERE delivery_id = :g1 AND outcome = 'stale'), 5::bigint,
	'a result for a lease that is gone is a stale attempt of each event');

-- trace: an event of a group shows its own attempts, not its neighbours'
SELECT is((SELECT count(*) FROM hub.trace('c-2') WHERE what LIKE 'attempt%'), 2::bigint,
	'the trace of an event of a group shows its attempts only (delivered, stale)');

-- a transform that raises for one event of a group: that event alone
-- leaves the group and fails; the rest goes out as the group
CREATE FUNCTION public.lg_picky(p jsonb) RETURNS jsonb LANGUAGE plpgsql SECURITY DEFINER AS $f$
BEGIN
	IF p->>'return_id' = 'RT-2' THEN
		RAISE EXCEPTION 'no mapping for %', p->>'return_id' USING ERRCODE = 'data_exception';
	END IF;
	RETURN p || '{"mapped": true}';
END $f$;
SELECT hub.create_endpoint('erp_t', 'http://127.0.0.1:9/erp_t', 'erp', max_concurrency => 8) AS ep_t \gset
\o /dev/null
SELECT hub.subscribe('erp_t', 'return.*', ordering => 'none', lease_group => 4, transform => 'public.lg_picky',
	max_attempts => 1);
SELECT hub.publish('return.received', 'RT-' || g, jsonb_build_object('return_id', 'RT-' || g)) FROM generate_series(1, 4) g;
\o
CREATE TEMP TABLE ct AS SELECT * FROM hub.claim_deliveries(100, 'wt') WHERE endpoint_id = :ep_t;
SELECT is((SELECT string_agg(aggregate_id, ' ' ORDER BY aggregate_id) FROM ct), 'RT-1 RT-3 RT-4',
	'a transform raising for one event of a group: the other events are handed out');
SELECT is((SELECT count(DISTINCT delivery_id) || ' ' || min(batch_size) || ' ' || bool_and((payload ->> 'mapped')::boolean)
		   FROM ct), '1 3 true', 'as one group of three, transformed');
SELECT is((SELECT d.state || ' ' || (d.batch_events IS NULL) || ' ' || a.error
		   FROM hub.deliveries d JOIN hub.attempts a USING (delivery_id) WHERE d.aggregate_id = 'RT-2'),
	'dead true transform public.lg_picky failed: no mapping for RT-2 (SQLSTATE 22000)',
	'the failing event alone, in a delivery of its own, dead with the transform''s error');

SELECT * FROM finish();
