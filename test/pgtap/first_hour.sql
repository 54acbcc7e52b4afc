-- The first hour of a DBA (issue 17): the trips a first user of the hub
-- fell into, each pinned.  The README's way of calling hub.apply_status
-- writes one history row; a conflicting report sent again counts on its
-- open conflict instead of opening another; hub.trace lists the events of
-- one transaction in publishing order; a bad body_format or ordering is a
-- 22023 naming it; a writer's INSERT ... RETURNING event_id works and
-- reads nothing else; a role outside hub_* compares identifier values; an
-- occurred_at without an RFC 3339 form is refused; a CloudEvents batch
-- subscription gets batch deliveries.
-- Autocommit (own database): routing only sees committed events.
SELECT plan(38);

-- ---------------------------------------------------------------- apply_status

-- the README's example, verbatim: SELECT * FROM runs the function once
SELECT * FROM hub.apply_status('shipment', 'SH-1', 'easypost', 'in_transit', '2026-05-04 10:00+00')
\gset ap_
SELECT is(:'ap_outcome' || '/' || :'ap_state', 'created/in_transit', 'SELECT * FROM hub.apply_status(...) returns the result''s columns');
SELECT is((SELECT count(*) FROM hub.status_history WHERE business_key = 'SH-1')::int, 1,
	'SELECT * FROM hub.apply_status(...) writes one history row');
-- (what the README warns against: PostgreSQL expands (f()).* into one call
-- a column, so one report becomes nine)
SELECT * FROM (SELECT (hub.apply_status('shipment', 'SH-2', 'easypost', 'in_transit', '2026-05-04 10:00+00')).*) x \g /dev/null
SELECT is((SELECT count(*) FROM hub.status_history WHERE business_key = 'SH-2')::int,
	(SELECT count(*) FROM pg_attribute WHERE attrelid = 'hub.apply_result'::regclass AND attnum > 0)::int,
	'(f()).* calls the function once per column of hub.apply_result, which is why the README shows SELECT * FROM');

-- ---------------------------------------------------------------- conflicts

SELECT outcome FROM hub.apply_canonical_status('order', 'SO-C', 'sap', 'ABSTK=C', now() - interval '3 hours', 'cancelled');
SELECT is(r.outcome, 'conflict', 'the warehouse shipping a cancelled order is a conflict')
FROM hub.apply_canonical_status('order', 'SO-C', 'epcis', 'shipping', now() - interval '2 hours', 'shipped') r;
SELECT outcome FROM hub.apply_canonical_status('order', 'SO-C', 'epcis', 'shipping', now() - interval '2 hours', 'shipped');
SELECT outcome FROM hub.apply_canonical_status('order', 'SO-C', 'epcis', 'shipping', now() - interval '1 hour', 'shipped');
SELECT is((SELECT count(*) FROM hub.status_conflicts WHERE business_key = 'SO-C')::int, 1,
	'the same conflicting report sent three times opens one conflict');
SELECT is((SELECT reports FROM hub.status_conflicts WHERE business_key = 'SO-C'), 3,
	'which counts the three reports');
SELECT is((SELECT last_history_id FROM hub.status_conflicts WHERE business_key = 'SO-C'),
	(SELECT max(history_id) FROM hub.status_history WHERE business_key = 'SO-C'),
	'and points at the latest one''s history row');
SELECT is((SELECT history_id FROM hub.status_conflicts WHERE business_key = 'SO-C'),
	(SELECT min(history_id) FROM hub.status_history WHERE business_key = 'SO-C' AND outcome = 'conflict'),
	'and still at the first one''s');
SELECT is((SELECT count(*) FROM hub.status_history WHERE business_key = 'SO-C' AND outcome = 'conflict')::int, 3,
	'every report is still in the history');
SELECT outcome FROM hub.apply_canonical_status('order', 'SO-C', 'easypost', 'delivered', now(), 'delivered');
SELECT is((SELECT count(*) FROM hub.status_conflicts WHERE business_key = 'SO-C' AND resolved_at IS NULL)::int, 2,
	'another disagreement on the key is a conflict of its own');
SELECT ok(hub.resolve_conflict(conflict_id, 'the order was cancelled; the shipment is recalled'), 'the first conflict is resolved')
FROM hub.status_conflicts WHERE business_key = 'SO-C' AND incoming_state = 'shipped';
SELECT outcome FROM hub.apply_canonical_status('order', 'SO-C', 'epcis', 'shipping', now(), 'shipped');
SELECT is((SELECT array_agg(coalesce(resolution, 'open') || '/' || reports ORDER BY conflict_id)
		   FROM hub.status_conflicts WHERE business_key = 'SO-C' AND incoming_state = 'shipped'),
	ARRAY['the order was cancelled; the shipment is recalled/3', 'open/1'],
	'the same report after the resolution opens a new conflict');
SELECT throws_ok($$INSERT INTO hub.status_conflicts (history_id, lifecycle, business_key, system, current_state,
		incoming_state, occurred_at, last_history_id)
	SELECT history_id, lifecycle, business_key, system, current_state, incoming_state, occurred_at, last_history_id
	FROM hub.status_conflicts WHERE business_key = 'SO-C' AND resolved_at IS NULL AND incoming_state = 'shipped'$$,
	'23505', NULL, 'a second open row of one disagreement is refused by the table itself');

-- ---------------------------------------------------------------- trace

SELECT hub.create_endpoint('tms', 'http://127.0.0.1:9/tms', 'tms');
SELECT hub.subscribe('tms', 'order.*', ordering => 'none');
-- forty events of one transaction: they share their published_at
SELECT count(hub.publish('order.created', 'SO-T' || lpad(g::text, 2, '0'),
		jsonb_build_object('order_id', 'SO-T' || g), correlation_id => 'C-T'))
FROM generate_series(1, 40) g;
SELECT is((SELECT count(DISTINCT published_at) FROM hub.outbox WHERE correlation_id = 'C-T')::int, 1,
	'the events of one transaction have one published_at');
SELECT is((SELECT array_agg(aggregate_id ORDER BY n) FROM hub.trace('C-T') WITH ORDINALITY t(at, what, event_id, event_type, aggregate_id, endpoint, source, message_id, detail, traceparent, n)
		   WHERE what = 'published'),
	(SELECT array_agg('SO-T' || lpad(g::text, 2, '0') ORDER BY g) FROM generate_series(1, 40) g),
	'hub.trace lists the events of one transaction in publishing order');
-- whatever plan finds them: with nested loops (an index lookup per event
-- id, as a large outbox gets) they come in hash order
SET enable_hashjoin = off;
SET enable_mergejoin = off;
SET enable_seqscan = off;
SELECT is((SELECT array_agg(aggregate_id ORDER BY n) FROM hub.trace('C-T') WITH ORDINALITY t(at, what, event_id, event_type, aggregate_id, endpoint, source, message_id, detail, traceparent, n)
		   WHERE what = 'published'),
	(SELECT array_agg('SO-T' || lpad(g::text, 2, '0') ORDER BY g) FROM generate_series(1, 40) g),
	'in publishing order whatever the plan (nested loops)');
RESET enable_hashjoin;
RESET enable_mergejoin;
RESET enable_seqscan;
SELECT hub._route_events();
SELECT is((SELECT array_agg(what ORDER BY n) FROM hub.trace('C-T') WITH ORDINALITY t(at, what, event_id, event_type, aggregate_id, endpoint, source, message_id, detail, traceparent, n)
		   WHERE aggregate_id = 'SO-T01'),
	ARRAY['published', 'delivery pending'],
	'each event''s own rows follow in time order');

-- ---------------------------------------------------------------- subscribe

SELECT throws_ok($$SELECT hub.subscribe('tms', 'shipment.*', body_format => 'xml')$$, '22023',
	'invalid body_format: "xml"', 'an unknown body_format is a 22023 naming it, not a constraint violation');
SELECT throws_ok($$SELECT hub.subscribe('tms', 'shipment.*', body_format => NULL)$$, '22023',
	'invalid body_format: NULL', 'a NULL body_format too');
SELECT throws_ok($$SELECT hub.subscribe('tms', 'shipment.*', ordering => 'fifo')$$, '22023',
	'invalid ordering: "fifo"', 'an unknown ordering too');
SELECT hub.create_endpoint('portal', 'http://127.0.0.1:9/portal', 'portal');
SELECT lives_ok($$SELECT hub.subscribe('portal', 'return.*', body_format => 'cloudevents_batch', batch_max => 3, ordering => 'none')$$,
	'cloudevents_batch is a body format');
SELECT throws_ok($$SELECT hub.subscribe('tms', 'inventory.*', body_format => 'cloudevents_batch', ordering => 'none', lease_group => 4)$$,
	'22023', NULL, 'a CloudEvents batch cannot have a lease group (it is one request already)');
SELECT hub.publish('return.received', 'R-' || g, jsonb_build_object('return_id', 'R-' || g)) FROM generate_series(1, 7) g;
SELECT hub.pause_endpoint('tms');
SELECT results_eq($$SELECT batch_size FROM hub.claim_deliveries(10, 'w')
					WHERE body_format = 'cloudevents_batch' GROUP BY delivery_id, batch_size ORDER BY delivery_id$$,
	$$VALUES (3), (3), (1)$$, 'a cloudevents_batch subscription gets batch deliveries of up to batch_max events');

-- ---------------------------------------------------------------- occurred_at

SELECT throws_ok($$SELECT hub.publish('order.created', 'SO-I', '{"order_id": "SO-I"}', occurred_at => 'infinity')$$,
	'22008', 'occurred_at out of range: "infinity"', 'hub.publish refuses an infinite occurred_at');
SELECT throws_ok($$SELECT hub.publish('order.created', 'SO-I', '{"order_id": "SO-I"}', occurred_at => '-infinity')$$,
	'22008', NULL, 'and -infinity');
SELECT throws_ok($$SELECT hub.publish('order.created', 'SO-I', '{"order_id": "SO-I"}', occurred_at => '0001-12-31 23:59:59.999999+00 BC')$$,
	'22008', NULL, 'and a BC time');
SELECT throws_ok($$SELECT hub.publish('order.created', 'SO-I', '{"order_id": "SO-I"}', occurred_at => '10000-01-01 00:00:00+00')$$,
	'22008', NULL, 'and a five-digit year');
SELECT throws_ok($$INSERT INTO hub.outbox (event_type, aggregate_id, payload, occurred_at)
	VALUES ('order.created', 'SO-I', '{"order_id": "SO-I"}', 'infinity')$$,
	'22008', NULL, 'a plain INSERT too');
SELECT lives_ok($$SELECT hub.publish('order.created', 'SO-I', '{"order_id": "SO-I"}', occurred_at => '0001-01-01 00:00:00+00'),
		hub.publish('order.created', 'SO-I', '{"order_id": "SO-I"}', occurred_at => '9999-12-31 23:59:59.999999+00')$$,
	'the first and the last instant of years 0001 to 9999 (UTC) are accepted');

-- ---------------------------------------------------------------- roles

SET client_min_messages = warning;
DROP ROLE IF EXISTS fh_writer;
DROP ROLE IF EXISTS fh_outsider;
RESET client_min_messages;
CREATE ROLE fh_writer LOGIN IN ROLE hub_writer;
CREATE ROLE fh_outsider LOGIN;
SET ROLE fh_writer;
SELECT lives_ok($$INSERT INTO hub.outbox (event_type, aggregate_id, payload)
	VALUES ('order.created', 'SO-W', '{"order_id": "SO-W"}') RETURNING event_id$$,
	'a writer''s INSERT ... RETURNING event_id works (as ORMs send it)');
SELECT throws_ok($$INSERT INTO hub.outbox (event_type, aggregate_id, payload)
	VALUES ('order.created', 'SO-W', '{"order_id": "SO-W"}') RETURNING payload$$,
	'42501', NULL, 'RETURNING any other column does not');
SELECT throws_ok($$SELECT payload FROM hub.outbox$$, '42501', NULL, 'a writer still reads no payload');
SELECT throws_ok($$SELECT event_id FROM hub.outbox WHERE aggregate_id = 'SO-W'$$, '42501', NULL,
	'nor filters events on anything but their id');
RESET ROLE;

SET ROLE fh_outsider;
CREATE TEMP TABLE fh_items (gtin hub.gtin, sscc hub.sscc, gln hub.gln, box hub.container_no);
INSERT INTO fh_items VALUES ('6291041500213', '376104250021234569', '7300011000017', 'CSQU3054383'),
	('08904000210037', '376104250021234569', '7300011000017', 'TASU1170000');
SELECT is((SELECT count(*) FROM fh_items a JOIN fh_items b ON a.gtin OPERATOR(hub.=) b.gtin)::int, 2,
	'a role outside hub_* stores and compares GTINs');
SET search_path = public, hub;
SELECT is((SELECT count(*) FROM fh_items WHERE sscc = '376104250021234569' AND gln = '7300011000017'
		   AND box < 'ZZZU0000005' AND gtin <> '6291041500213')::int, 1,
	'and SSCCs, GLNs and container numbers, with the schema on its search_path');
SELECT is((SELECT array_agg(gtin::text ORDER BY gtin) FROM fh_items),
	ARRAY['06291041500213', '08904000210037'], 'and sorts them');
DROP TABLE fh_items;
RESET search_path;
SELECT throws_ok($$SELECT hub.publish('order.created', 'SO-O', '{"order_id": "SO-O"}')$$, '42501', NULL,
	'but calls no function of the hub');
SELECT throws_ok($$SELECT * FROM hub.outbox$$, '42501', NULL, 'and reads no table');
RESET ROLE;

DROP ROLE fh_writer;
DROP ROLE fh_outsider;

SELECT * FROM finish();
