-- Lease groups of per_key subscriptions: routing puts up to lease_group
-- events of ONE key in a delivery row, whose aggregate_id is that key's; a
-- claim hands out a key's first group only (the next waits behind it), and
-- marks its rows sequential (the dispatcher sends them one after another);
-- the claim cap counts such a group as one request; when an event of a
-- group fails, the group's later events, given back together, stay behind
-- it; a transform raising for an event of a group fails it alone and gives
-- the later ones back behind it, while the earlier ones go out.
-- Autocommit (own database): routing only sees committed events.
SELECT plan(21);

SELECT hub.create_endpoint('wms', 'http://127.0.0.1:9/wms', 'wms', max_concurrency => 2) AS ep \gset
SELECT hub.subscribe('wms', 'order.*', lease_group => 4, retry_base => '1 hour', retry_max => '1 hour') AS s \gset
SELECT is((SELECT ordering || ' ' || lease_group FROM hub.subscriptions WHERE subscription_id = :s), 'per_key 4',
	'a per_key subscription may have a lease group');

-- keys A (6 events), B (2), C (1), published interleaved, A's fourth first
-- of its key to be refused below
\o /dev/null
SELECT hub.publish('order.updated', k, jsonb_build_object('order_id', k, 'n', n))
FROM (VALUES (1, 'A', 1), (2, 'B', 1), (3, 'A', 2), (4, 'C', 1), (5, 'A', 3), (6, 'B', 2),
			 (7, 'A', 4), (8, 'A', 5), (9, 'A', 6)) v(i, k, n)
ORDER BY i;
\o
SELECT is(hub._route_events(), 4::bigint, 'nine events of three keys route into four deliveries');
SELECT is(ARRAY(SELECT d.aggregate_id || ':' || cardinality(d.batch_events) FROM hub.deliveries d
				WHERE d.subscription_id = :s ORDER BY d.seq),
	ARRAY['A:4', 'B:2', 'C:1', 'A:2'], 'groups of one key each, up to lease_group events, named by the key');
SELECT is((SELECT count(*) FROM hub.deliveries d, unnest(d.batch_events) WITH ORDINALITY b(e, i)
		   JOIN hub.outbox o ON o.event_id = b.e
		   WHERE d.subscription_id = :s AND (o.aggregate_id <> d.aggregate_id OR (o.payload ->> 'n')::int
				<> i + CASE WHEN d.seq = (SELECT max(seq) FROM hub.deliveries WHERE aggregate_id = 'A') THEN 4 ELSE 0 END)),
	0::bigint, 'each group holds its key''s events only, in publishing order');
SELECT is((SELECT pending FROM hub.sync_status WHERE subscription_id = :s), 9::bigint,
	'sync_status counts the events of the groups');

-- the cap counts a per_key group as one request (its events go one after
-- another): two connections, rounds 1: two groups, all their events
CREATE TEMP TABLE c0 AS
SELECT * FROM hub._claim_all(100, 'w0', '60 s', 0, 1, NULL, 1, NULL, NULL, NULL);
SELECT is((SELECT string_agg(DISTINCT aggregate_id, ' ') FROM c0), 'A B',
	'a claim capped at 2 requests takes two per_key groups');
SELECT is((SELECT count(*) FROM c0), 6::bigint, 'with every event of both');
SELECT ok((SELECT bool_and(sequential) FROM c0), 'their rows say the events go one after another');
UPDATE hub.deliveries SET state = 'pending', lease_until = NULL, lease_token = NULL, next_attempt_at = now(),
	attempts = 0 WHERE state = 'in_flight';

CREATE TEMP TABLE c AS SELECT * FROM hub._claim_all(100, 'w', '60 s', 0, 1, NULL, NULL, NULL, NULL, NULL);
SELECT is(ARRAY(SELECT DISTINCT aggregate_id FROM c ORDER BY 1), ARRAY['A', 'B', 'C'],
	'an unlimited claim hands out the first group of each key');
SELECT is((SELECT count(DISTINCT delivery_id) FROM c WHERE aggregate_id = 'A'), 1::bigint,
	'and only the first of A: its second waits behind it');
SELECT is(ARRAY(SELECT payload ->> 'n' FROM c WHERE aggregate_id = 'A'), ARRAY['1', '2', '3', '4'],
	'a group''s rows come in the key''s order');
SELECT ok((SELECT bool_and(sequential) = true FROM c WHERE aggregate_id IN ('A', 'B')),
	'marked sequential');

-- A's group: events 1 and 2 got through, 3 failed, 4 never sent (given back)
SELECT delivery_id AS ga, lease_token AS ta FROM c WHERE aggregate_id = 'A' LIMIT 1 \gset
CREATE TEMP TABLE ea AS SELECT event_id AS e, (payload ->> 'n')::int AS n FROM c WHERE delivery_id = :ga;
CREATE TEMP TABLE sa AS
SELECT * FROM hub._split_group(:ga, :ta, ARRAY(SELECT e FROM ea WHERE n = 3), ARRAY(SELECT e FROM ea WHERE n = 4));
SELECT hub.fail_delivery(s.delivery_id, :ta, 500, 'HTTP 500', 3)
FROM sa s JOIN ea ON ea.e = s.event_id WHERE ea.n = 3 \gset
-- (its backoff has full jitter: an hour from now, so that it is surely not due)
UPDATE hub.deliveries SET next_attempt_at = now() + interval '1 hour' WHERE state = 'retry_wait';
SELECT ok(hub.defer_delivery(s.delivery_id, :ta, now()), 'the event never sent is given back, due now')
FROM sa s JOIN ea ON ea.e = s.event_id WHERE ea.n = 4;
SELECT is(hub._complete_many(array_agg(:ga::bigint), array_agg(:ta::bigint), array_agg(204), array_agg(1),
							 array_agg(NULL::text), 'w', array_agg(e)), 2)
FROM ea WHERE n <= 2;
-- B and C delivered
SELECT is(hub._complete_many(array_agg(delivery_id), array_agg(lease_token), array_agg(204), array_agg(1),
							 array_agg(NULL::text), 'w', array_agg(event_id)), 3)
FROM c WHERE aggregate_id IN ('B', 'C');
SELECT is(ARRAY(SELECT d.state || ':' || array_to_string(ARRAY(SELECT o.payload ->> 'n' FROM unnest(coalesce(d.batch_events,
						ARRAY[d.event_id])) WITH ORDINALITY b(e, i) JOIN hub.outbox o ON o.event_id = b.e ORDER BY b.i), ',')
				FROM hub.deliveries d WHERE d.aggregate_id = 'A' ORDER BY d.seq),
	ARRAY['delivered:1,2', 'retry_wait:3', 'pending:4', 'pending:5,6'],
	'A: the two sent delivered in the group, the failed one alone, the rest behind it in order');
CREATE TEMP TABLE c2 AS SELECT * FROM hub._claim_all(100, 'w', '60 s', 0, 1, NULL, NULL, NULL, NULL, NULL);
SELECT is((SELECT count(*) FROM c2), 0::bigint,
	'nothing of A is claimable while its failed event waits for its retry (the events behind it are due, but not heads)');
UPDATE hub.deliveries SET next_attempt_at = now() WHERE state = 'retry_wait' AND aggregate_id = 'A';
CREATE TEMP TABLE c3 AS SELECT * FROM hub._claim_all(100, 'w', '60 s', 0, 1, NULL, NULL, NULL, NULL, NULL);
SELECT is(ARRAY(SELECT payload ->> 'n' FROM c3), ARRAY['3'], 'once due, the failed event alone is handed out first');

-- a transform raising for the 2nd event of a group of 4: the 1st goes out,
-- the 2nd fails alone, the 3rd and 4th are given back behind it
CREATE FUNCTION public.pk_picky(p jsonb) RETURNS jsonb LANGUAGE plpgsql SECURITY DEFINER AS $f$
BEGIN
	IF (p ->> 'n')::int = 2 THEN
		RAISE EXCEPTION 'no mapping for %', p ->> 'n' USING ERRCODE = 'data_exception';
	END IF;
	RETURN p || '{"mapped": true}';
END $f$;
SELECT hub.create_endpoint('tms', 'http://127.0.0.1:9/tms', 'tms', max_concurrency => 8) AS ep_t \gset
\o /dev/null
SELECT hub.subscribe('tms', 'return.*', lease_group => 4, transform => 'public.pk_picky', retry_base => '1 hour',
	retry_max => '1 hour');
SELECT hub.publish('return.received', 'RT-1', jsonb_build_object('return_id', 'RT-1', 'n', g)) FROM generate_series(1, 4) g;
\o
CREATE TEMP TABLE ct AS SELECT * FROM hub._claim_all(100, 'wt', '60 s', 0, 1, NULL, NULL, NULL, NULL, NULL)
	WHERE endpoint_id = :ep_t;
SELECT is((SELECT string_agg((payload ->> 'n') || ':' || batch_size || ':' || (payload ->> 'mapped'), ' ') FROM ct), '1:1:true',
	'a transform raising for the 2nd event of a per_key group: only the 1st is handed out, transformed');
SELECT is(ARRAY(SELECT d.state || ':' || array_to_string(ARRAY(SELECT o.payload ->> 'n' FROM unnest(coalesce(d.batch_events,
						ARRAY[d.event_id])) WITH ORDINALITY b(e, i) JOIN hub.outbox o ON o.event_id = b.e ORDER BY b.i), ',')
				FROM hub.deliveries d WHERE d.endpoint_id = :ep_t ORDER BY d.seq),
	ARRAY['in_flight:1', 'retry_wait:2', 'pending:3,4'],
	'the 2nd failed alone, the 3rd and 4th given back together behind it');
SELECT is((SELECT a.error FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id)
		   WHERE d.endpoint_id = :ep_t AND a.outcome = 'retry'),
	'transform public.pk_picky failed: no mapping for 2 (SQLSTATE 22000)', 'with the transform''s error');

SELECT * FROM finish();
