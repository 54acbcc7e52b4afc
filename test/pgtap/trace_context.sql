-- W3C Trace Context (issue 21): the traceparent of events and inbox
-- messages.  Validation; the CloudEvents traceparent attribute (hub.traceparent_valid, the publisher's 22023,
-- inbound values ignored); what hub.publish, a plain INSERT and
-- hub.receive keep; child spans for what processing a message publishes,
-- through a handler, the per-message mapping path and the set-based one;
-- no inherited context after hub.process_inbox; a poll run's trace on
-- its requests and records; the traceparent in hub.trace.
BEGIN;
SELECT plan(51);

-- ---------------------------------------------------------------- validation
SELECT ok(hub.traceparent_valid('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'), 'the W3C example is valid');
SELECT ok(hub.traceparent_valid('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00'), 'flags 00 are valid');
SELECT ok(NOT hub.traceparent_valid('00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01'), 'upper-case hex is invalid');
SELECT ok(NOT hub.traceparent_valid('00-00000000000000000000000000000000-00f067aa0ba902b7-01'), 'an all-zero trace id is invalid');
SELECT ok(NOT hub.traceparent_valid('00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01'), 'an all-zero parent id is invalid');
SELECT ok(NOT hub.traceparent_valid('ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'), 'version ff is invalid');
SELECT ok(NOT hub.traceparent_valid('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x'), 'version 00 with more fields is invalid');
SELECT ok(hub.traceparent_valid('cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next'),
	'a later version is read by its first four fields');
SELECT ok(NOT hub.traceparent_valid('cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x'),
	'what follows the flags of a later version starts with a dash');
SELECT ok(NOT hub.traceparent_valid('00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01'), 'a short trace id is invalid');
SELECT ok(NOT hub.traceparent_valid('00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01'), 'other separators are invalid');

-- ---------------------------------------------------------------- publish
CREATE TEMP TABLE tc_ev (name text, event_id uuid) ON COMMIT DROP;
INSERT INTO tc_ev SELECT 'given', hub.publish('order.created', 'SO-T1', '{"order_id": "SO-T1"}',
	traceparent => '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01');
INSERT INTO tc_ev SELECT 'future', hub.publish('order.created', 'SO-T2', '{"order_id": "SO-T2"}',
	traceparent => 'cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more');
INSERT INTO tc_ev SELECT 'none' || g, hub.publish('order.created', 'SO-T3', '{"order_id": "SO-T3"}') FROM generate_series(1, 2) g;
INSERT INTO hub.outbox (event_type, aggregate_id, payload) VALUES ('order.created', 'SO-T4', '{"order_id": "SO-T4"}');
INSERT INTO hub.outbox (event_type, aggregate_id, payload, traceparent)
VALUES ('order.created', 'SO-T5', '{"order_id": "SO-T5"}', '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00');

SELECT is((SELECT o.traceparent FROM hub.outbox o JOIN tc_ev USING (event_id) WHERE name = 'given'),
	'00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', 'a publisher''s traceparent is kept');
SELECT is((SELECT o.traceparent FROM hub.outbox o JOIN tc_ev USING (event_id) WHERE name = 'future'),
	'00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', 'a later version is kept in its version 00 form');
SELECT ok((SELECT bool_and(o.traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-01$' AND hub.traceparent_valid(o.traceparent))
		   FROM hub.outbox o JOIN tc_ev USING (event_id) WHERE name LIKE 'none%'),
	'an event published with no context starts a valid trace, sampled');
SELECT is((SELECT count(DISTINCT substr(o.traceparent, 4, 32)) FROM hub.outbox o JOIN tc_ev USING (event_id) WHERE name LIKE 'none%'),
	2::bigint, 'each of them a trace of its own');
SELECT ok((SELECT hub.traceparent_valid(traceparent) FROM hub.outbox WHERE aggregate_id = 'SO-T4'),
	'a plain INSERT gets a traceparent too');
SELECT is((SELECT traceparent FROM hub.outbox WHERE aggregate_id = 'SO-T5'),
	'00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00', 'a plain INSERT keeps its own');
SELECT throws_ok($$SELECT hub.publish('order.created', 'SO-X', '{"order_id": "SO-X"}', traceparent => '00-00000000000000000000000000000000-00f067aa0ba902b7-01')$$,
	'22023', 'invalid traceparent: "00-00000000000000000000000000000000-00f067aa0ba902b7-01"',
	'a publisher''s invalid traceparent is refused with 22023');
SELECT throws_ok($$SELECT hub.publish('order.created', 'SO-X', '{"order_id": "SO-X"}', traceparent => 'not a trace')$$,
	'22023', NULL, 'so is one that is no traceparent at all');
SELECT throws_ok($$INSERT INTO hub.outbox (event_type, aggregate_id, payload, traceparent) VALUES ('order.created', 'SO-X', '{"order_id": "SO-X"}', 'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01')$$,
	'22023', NULL, 'and through a plain INSERT');

-- the plain INSERT hub.publish falls back to (here: row security on)
ALTER TABLE hub.outbox ENABLE ROW LEVEL SECURITY;
SELECT ok(hub.publish('order.created', 'SO-RLS1', '{"order_id": "SO-RLS1"}',
		traceparent => '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01') IS NOT NULL
	AND hub.publish('order.created', 'SO-RLS2', '{"order_id": "SO-RLS2"}') IS NOT NULL,
	'hub.publish through its plain INSERT, with and without a traceparent');
ALTER TABLE hub.outbox DISABLE ROW LEVEL SECURITY;
SELECT is((SELECT array_agg(traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' ORDER BY aggregate_id)
		   FROM hub.outbox WHERE aggregate_id LIKE 'SO-RLS_' AND hub.traceparent_valid(traceparent)),
	ARRAY[true, false], 'keep the given one and stamp a new one alike');

-- ---------------------------------------------------------------- bodies
SELECT is(hub.event_body('cloudevents', '0190a5a4-0000-8000-8000-000000000001', 'order.created', 'SO-1',
		'2026-05-04 08:00:00+00', 'C-1', '{"order_id": "SO-1"}', '/hub', 1,
		'00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01')::jsonb ->> 'traceparent',
	'00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
	'a CloudEvents body carries the traceparent extension attribute');
SELECT is(hub.event_body('cloudevents_batch', '0190a5a4-0000-8000-8000-000000000001', 'order.created', 'SO-1',
		'2026-05-04 08:00:00+00', 'C-1', '{"order_id": "SO-1"}', '/hub', 1,
		'00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'),
	hub.event_body('cloudevents_batch', '0190a5a4-0000-8000-8000-000000000001', 'order.created', 'SO-1',
		'2026-05-04 08:00:00+00', 'C-1', '{"order_id": "SO-1"}', '/hub', 1,
		'00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01')::jsonb::text,
	'in the bytes jsonb would print');
SELECT is(hub.event_body('cloudevents', '0190a5a4-0000-8000-8000-000000000001', 'order.created', 'SO-1',
		'2026-05-04 08:00:00+00', 'C-1', '{"order_id": "SO-1"}', '/hub', 1, NULL),
	hub.event_body('cloudevents', '0190a5a4-0000-8000-8000-000000000001', 'order.created', 'SO-1',
		'2026-05-04 08:00:00+00', 'C-1', '{"order_id": "SO-1"}', '/hub', 1),
	'without one, the nine-argument form''s bytes');
SELECT is(hub.event_body('event', '0190a5a4-0000-8000-8000-000000000001', 'order.created', 'SO-1',
		'2026-05-04 08:00:00+00', 'C-1', '{"order_id": "SO-1"}', '/hub', 1,
		'00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'),
	hub.event_body('event', '0190a5a4-0000-8000-8000-000000000001', 'order.created', 'SO-1',
		'2026-05-04 08:00:00+00', 'C-1', '{"order_id": "SO-1"}', '/hub', 1),
	'the canonical event does not carry it (the header does)');

-- ---------------------------------------------------------------- receive
SELECT ok(hub.receive('tc', 'r1', 'tc.handled', '{"n": 1}', traceparent => '00-11111111111111111111111111111111-2222222222222222-01'),
	'receive with a traceparent');
SELECT ok(hub.receive('tc', 'r2', 'tc.handled', '{"n": 2, "traceparent": "00-33333333333333333333333333333333-4444444444444444-00"}'),
	'receive a message carrying its traceparent in the payload');
SELECT ok(hub.receive('tc', 'r3', 'tc.handled', '{"n": 3}', traceparent => '00-ZZ-bad'),
	'an invalid inbound traceparent never refuses the message');
SELECT ok(hub.receive('tc', 'r4', 'tc.handled', '{"n": 4}'), 'receive without one');
SELECT is((SELECT array_agg(traceparent ORDER BY message_id) FROM hub.inbox WHERE message_id IN ('r1', 'r2')),
	ARRAY['00-11111111111111111111111111111111-2222222222222222-01', '00-33333333333333333333333333333333-4444444444444444-00'],
	'the argument and the payload''s key are kept');
SELECT ok((SELECT bool_and(hub.traceparent_valid(traceparent) AND traceparent NOT LIKE '%ZZ%')
		   FROM hub.inbox WHERE message_id IN ('r3', 'r4')),
	'an invalid or missing one starts a new trace');

-- ---------------------------------------------------------------- processing
-- a handler publishes twice for each message: two child spans of it
CREATE FUNCTION public.tc_handler(p jsonb, t text) RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
	PERFORM hub.publish('order.created', 'SO-H' || (p ->> 'n'), jsonb_build_object('order_id', 'SO-H' || (p ->> 'n')));
	PERFORM hub.publish('order.created', 'SO-H' || (p ->> 'n'), jsonb_build_object('order_id', 'SO-H' || (p ->> 'n')));
	PERFORM hub.publish('order.created', 'SO-HG' || (p ->> 'n'), jsonb_build_object('order_id', 'SO-HG' || (p ->> 'n')),
		traceparent => '00-55555555555555555555555555555555-6666666666666666-01');
END
$$;
SELECT hub.register_handler('tc.handled', 'public.tc_handler');
SELECT is((SELECT processed FROM hub.process_inbox()), 4, 'the four messages are processed');
SELECT is((SELECT count(*) FROM hub.outbox o JOIN hub.inbox i ON o.causation_id = 'inbox:' || i.inbox_id
		   WHERE i.source = 'tc' AND o.aggregate_id LIKE 'SO-H_'
			 AND substr(o.traceparent, 4, 32) = substr(i.traceparent, 4, 32)
			 AND substr(o.traceparent, 37, 16) <> substr(i.traceparent, 37, 16)
			 AND right(o.traceparent, 2) = right(i.traceparent, 2)),
	8::bigint, 'what a handler publishes carries its message''s trace id and flags with a new parent id');
SELECT is((SELECT count(DISTINCT o.traceparent) FROM hub.outbox o WHERE o.aggregate_id LIKE 'SO-H_'),
	8::bigint, 'each event is a span of its own');
SELECT is((SELECT array_agg(DISTINCT o.traceparent) FROM hub.outbox o WHERE o.aggregate_id LIKE 'SO-HG_'),
	ARRAY['00-55555555555555555555555555555555-6666666666666666-01'], 'a handler''s own traceparent is kept');
SELECT hub.publish('order.created', 'SO-AFTER', '{"order_id": "SO-AFTER"}') IS NOT NULL AS published;
SELECT ok((SELECT substr(traceparent, 4, 32) FROM hub.outbox WHERE aggregate_id = 'SO-AFTER')
		NOT IN (SELECT substr(traceparent, 4, 32) FROM hub.inbox WHERE source = 'tc'),
	'after hub.process_inbox, a publish in the same transaction starts its own trace');

-- declared mappings: one message through the set-based path, one (with a
-- handler that does nothing) through the per-message path
INSERT INTO hub.systems (system, role) VALUES ('tccarrier', 'carrier');
INSERT INTO hub.status_map (system, lifecycle, code, state, overlay, reason) VALUES
	('tccarrier', 'shipment', 'LBL', 'label_created', NULL, NULL);
CREATE FUNCTION public.tc_noop(p jsonb) RETURNS void LANGUAGE sql SECURITY DEFINER AS 'SELECT';
SELECT hub.map_inbox('tcm.set', 'shipment', 'tccarrier', '$.id', '$.code');
SELECT hub.map_inbox('tcm.ref', 'shipment', 'tccarrier', '$.id', '$.code');
SELECT hub.register_handler('tcm.ref', 'public.tc_noop');
SELECT ok(hub.receive('tcm', 'm1', 'tcm.set', '{"id": "SH-TC1", "code": "LBL"}',
	traceparent => '00-77777777777777777777777777777777-8888888888888888-01'), 'a record for the set-based path');
SELECT ok(hub.receive('tcm', 'm2', 'tcm.ref', '{"id": "SH-TC2", "code": "LBL"}',
	traceparent => '00-99999999999999999999999999999999-aaaaaaaaaaaaaaaa-01'), 'and one for the per-message path');
SELECT is(hub._inbox_apply_batch(ARRAY[(SELECT inbox_id FROM hub.inbox WHERE message_id = 'm1')]),
	ARRAY[(SELECT inbox_id FROM hub.inbox WHERE message_id = 'm1')], 'the set-based path takes the first');
SELECT hub._inbox_settle_many(ARRAY[(SELECT inbox_id FROM hub.inbox WHERE message_id = 'm1')], 'done');
SELECT is((SELECT processed FROM hub.process_inbox()), 1, 'the second is processed message by message');
SELECT is((SELECT array_agg(substr(o.traceparent, 1, 36) ORDER BY o.aggregate_id) FROM hub.outbox o
		   WHERE o.aggregate_id IN ('SH-TC1', 'SH-TC2')),
	ARRAY['00-77777777777777777777777777777777-', '00-99999999999999999999999999999999-'],
	'the canonical events of a mapping carry their message''s trace id, set-based and per message');
SELECT ok((SELECT bool_and(hub.traceparent_valid(o.traceparent) AND substr(o.traceparent, 37, 16) NOT IN ('8888888888888888', 'aaaaaaaaaaaaaaaa'))
		   FROM hub.outbox o WHERE o.aggregate_id IN ('SH-TC1', 'SH-TC2')),
	'each with a new parent id');

-- ---------------------------------------------------------------- polls
-- driven without a worker, as test/pgtap/pollers.sql does: each run is a
-- trace; its page requests send it and its records keep it
SELECT hub.create_endpoint('tcapi', 'http://127.0.0.1:9/api', 'erp');
SELECT hub.create_poller('tcapi', '/items', 'tc.item', pagination => 'link_header');
CREATE TEMP TABLE tc_req ON COMMIT DROP AS
SELECT 1 AS page, c.headers FROM hub._poll_claim('tap', (SELECT endpoint_id FROM hub.endpoints WHERE name = 'tcapi'), 100000, 10) c;
SELECT is((SELECT h FROM tc_req, unnest(headers) h WHERE h LIKE 'traceparent: %'),
	(SELECT 'traceparent: ' || run_traceparent FROM hub.pollers WHERE name = 'tcapi:tc.item'),
	'a poll run''s first request carries the run''s traceparent');
SELECT ok((SELECT hub.traceparent_valid(run_traceparent) FROM hub.pollers WHERE name = 'tcapi:tc.item'), 'a valid one');
INSERT INTO tc_req
SELECT 2, r.headers FROM hub.pollers p,
	hub._poll_page(p.poller_id, p.lease, p.next_url, 200, ARRAY['Content-Type: application/json', 'Link: </api/items?p=2>; rel=next'],
				   convert_to('[{"id": 1}, {"id": 2}]', 'UTF8'), NULL, 7, 20) r
WHERE p.name = 'tcapi:tc.item';
SELECT is((SELECT h FROM tc_req, unnest(headers) h WHERE page = 2 AND h LIKE 'traceparent: %'),
	(SELECT h FROM tc_req, unnest(headers) h WHERE page = 1 AND h LIKE 'traceparent: %'), 'and so does its next page''s');
SELECT hub._poll_page(p.poller_id, p.lease, p.next_url, 200, ARRAY['Content-Type: application/json'],
					  convert_to('[{"id": 3}]', 'UTF8'), NULL, 7, 10) IS NOT NULL AS recorded
FROM hub.pollers p WHERE p.name = 'tcapi:tc.item';
SELECT is((SELECT array_agg(DISTINCT 'traceparent: ' || traceparent) FROM hub.inbox WHERE source = 'poll:tcapi:tc.item'),
	(SELECT array_agg(h) FROM tc_req, unnest(headers) h WHERE page = 1 AND h LIKE 'traceparent: %'),
	'the records of every page of the run keep its traceparent');
SELECT is((SELECT count(*) FROM hub.inbox WHERE source = 'poll:tcapi:tc.item'), 3::bigint, 'all three records');
UPDATE hub.pollers SET next_run_at = now() WHERE name = 'tcapi:tc.item';
SELECT ok((SELECT h FROM hub._poll_claim('tap', (SELECT endpoint_id FROM hub.endpoints WHERE name = 'tcapi'), 100000, 10) c,
				  unnest(c.headers) h WHERE h LIKE 'traceparent: %')
		  NOT IN (SELECT h FROM tc_req, unnest(headers) h WHERE h LIKE 'traceparent: %'),
	'the next run is a new trace');

-- ---------------------------------------------------------------- hub.trace
SELECT is((SELECT array_agg(DISTINCT what || ' ' || traceparent) FROM hub.trace(aggregate => 'SH-TC1')
		   WHERE what IN ('received', 'inbox done')),
	ARRAY['inbox done 00-77777777777777777777777777777777-8888888888888888-01',
		  'received 00-77777777777777777777777777777777-8888888888888888-01'],
	'hub.trace shows a message''s traceparent');
SELECT is((SELECT t.traceparent FROM hub.trace(aggregate => 'SH-TC1') t WHERE t.what = 'published'),
	(SELECT traceparent FROM hub.outbox WHERE aggregate_id = 'SH-TC1'), 'and an event''s');

SELECT * FROM finish();
ROLLBACK;
