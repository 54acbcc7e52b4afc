-- Backup and restore (sql/src/85_backup.sql): every table of the hub and
-- its sequence is registered for pg_dump; the restore marker turns
-- logistics_hub.restoring on for a superuser's session and stores nothing;
-- while restoring, a superuser's event carrying its id, the xid that id
-- carries and its publication time is kept as it is, and anything else is
-- checked as always; a restored routing state replaces the one in place
-- only when this cluster's transactions are not behind it.  The round trip
-- itself is test/scripts/dump_restore.sh.
BEGIN;
SELECT plan(16);

SELECT is((SELECT array_agg(c::regclass::text ORDER BY c::regclass::text) FROM pg_extension, unnest(extconfig) c
		   WHERE extname = 'logistics_hub'
			   AND c::regclass::text IN ('hub.outbox', 'hub.deliveries', 'hub._attempts_default', 'hub.operator_audit',
										 'hub.unroutable_events', 'hub._router_state', 'hub._retention_marks', 'hub.inbox',
										 'hub.entity_state', 'hub.entity_system_state', 'hub.status_history',
										 'hub.status_conflicts', 'hub._restore_marker', 'hub.entity_links', 'hub.exceptions')),
	ARRAY['hub._attempts_default', 'hub._restore_marker', 'hub._retention_marks', 'hub._router_state', 'hub.deliveries',
		  'hub.entity_links', 'hub.entity_state', 'hub.entity_system_state', 'hub.exceptions', 'hub.inbox', 'hub.operator_audit', 'hub.outbox',
		  'hub.status_conflicts', 'hub.status_history', 'hub.unroutable_events'],
	'the queue, the truth and the audit are registered with pg_extension_config_dump');
SELECT is((SELECT count(*) FROM pg_class s
		   WHERE s.relnamespace = 'hub'::regnamespace AND s.relkind = 'S'
			   AND s.oid <> ALL ((SELECT extconfig FROM pg_extension WHERE extname = 'logistics_hub')::oid[]))::int,
	0, 'and every sequence of the hub');
SELECT alike((SELECT extcondition[array_position(extconfig, 'hub._attempts_default'::regclass::oid)]
			 FROM pg_extension WHERE extname = 'logistics_hub'),
	'WHERE false UNION ALL SELECT % FROM hub.attempts',
	'hub._attempts_default is dumped with every partition''s attempts');

-- a restored event: an id of another transaction, its xid, a publication time
SELECT hub._event_id_floor('5') AS id5, hub._event_id_floor('6') AS id6, hub._event_id_floor('8') AS id8,
	hub._event_id_floor('9') AS id9 \gset
CREATE TEMP TABLE ins (id uuid, xid xid8, sql text);
INSERT INTO ins
SELECT v.id::uuid, v.xid::xid8,
	format('INSERT INTO hub.outbox (event_id, event_type, aggregate_id, payload, xid, published_at) VALUES (%L, %L, %L, %L, %L, %L)',
		   v.id, 'order.created', 'SO-R', '{"order_id": "SO-R"}', v.xid, '2026-01-02 03:04:05+00')
FROM (VALUES (:'id5', '5'), (:'id6', '7'), (:'id9', '9')) v(id, xid);
GRANT SELECT ON ins TO PUBLIC;

SELECT throws_ok((SELECT sql FROM ins WHERE xid = '5'), '22023', NULL,
	'outside a restore, an event of another transaction is refused, even with its xid and publication time');
SELECT is(current_setting('logistics_hub.restoring'), 'off', 'a session does not restore');
INSERT INTO hub._restore_marker VALUES (true);
SELECT is(current_setting('logistics_hub.restoring'), 'on', 'inserting the restore marker turns logistics_hub.restoring on');
SELECT is((SELECT count(*) FROM hub._restore_marker)::int, 1, 'and stores nothing');
SELECT lives_ok((SELECT sql FROM ins WHERE xid = '5'),
	'while restoring, a superuser''s event of another transaction with its xid and publication time is taken');
SELECT is((SELECT o.xid::text || ' ' || o.published_at::text FROM hub.outbox o WHERE o.event_id = :'id5'),
	'5 ' || timestamptz '2026-01-02 03:04:05+00',
	'as it is: xid and published_at are not stamped');
SELECT throws_ok((SELECT sql FROM ins WHERE xid = '7'), '22023', NULL,
	'an event whose xid is not the one its id carries is refused');
SELECT throws_ok(format($$INSERT INTO hub.outbox (event_id, event_type, aggregate_id, payload)
						  VALUES (%L, 'order.created', 'SO-R', '{"order_id": "SO-R"}')$$, :'id8'), '22023', NULL,
	'an event of another transaction without its xid is refused');
SELECT throws_ok($$INSERT INTO hub.outbox (event_type, aggregate_id, payload) VALUES ('order.created', 'SO-R', '{}')$$,
	'22023', NULL, 'a new event is checked as always');
CREATE ROLE bk_writer IN ROLE hub_writer;
SET LOCAL ROLE bk_writer;
SELECT throws_ok((SELECT sql FROM ins WHERE xid = '9'), '22023', NULL,
	'the setting does nothing for a user who is not a superuser');
SELECT throws_ok('INSERT INTO hub._restore_marker VALUES (true)', '42501', NULL,
	'who cannot insert the restore marker either');
RESET ROLE;
RESET logistics_hub.restoring;

-- the routing state
SELECT throws_ok(format($$INSERT INTO hub._router_state VALUES (true, %L, %L)$$,
						(x + 1000)::text, (x + 1000)::text || ':' || (x + 1000)::text || ':'), '55000', NULL,
	'a restored routing state ahead of this cluster''s transaction ids is refused')
FROM (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS x) s;
INSERT INTO hub._router_state VALUES (true, '3', '3:4:3');
SELECT is((SELECT count(*)::text || ' ' || min(snapshot::text) || ' ' || min(watermark::text) FROM hub._router_state), '1 3:4:3 3',
	'one behind it replaces the state in place');

SELECT * FROM finish();
ROLLBACK;
