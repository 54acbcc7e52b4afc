-- Declared inbox mappings (hub.map_inbox): a WMS shipment record applied
-- to the canonical state by hub.process_inbox with no handler written,
-- times in every usual form, parent and child links (hub.entity_links, in
-- hub.trace and the views), malformed messages as technical failures,
-- a mapping and a handler on one pattern, and the handler's context.
BEGIN;
SELECT plan(43);
SET LOCAL TimeZone = 'America/New_York';	-- naive times must still be UTC

INSERT INTO hub.systems (system, role) VALUES ('acme_wms', 'wms');
INSERT INTO hub.status_map (system, lifecycle, code, state) VALUES
	('acme_wms', 'shipment', 'PLANNED', 'planned'), ('acme_wms', 'shipment', 'LABELED', 'label_created'),
	('acme_wms', 'order', 'PICKED', 'picked'), ('acme_wms', 'order', 'PACKED', 'packed'),
	('acme_wms', 'order', 'SHIPPED', 'shipped');

-- ---- map_inbox checks its arguments
SELECT throws_ok($q$SELECT hub.map_inbox('acme.shipment', 'shipment', 'acme_wms', '$.shipment.id', '$.bad[')$q$,
	'22023', NULL, 'a code_path that is not a jsonpath is refused with 22023');
SELECT throws_ok($q$SELECT hub.map_inbox('acme.shipment', 'shipment', 'acme_wms', '$.id', '$.s', parent_path => 'nope nope')$q$,
	'22023', 'invalid jsonpath for parent_path: "nope nope"', 'the bad path is named');
SELECT throws_ok($q$SELECT hub.map_inbox('acme.shipment', 'parcel', 'acme_wms', '$.id', '$.s')$q$,
	'22023', 'unknown lifecycle: "parcel"', 'an unknown lifecycle is refused');
SELECT throws_ok($q$SELECT hub.map_inbox('acme.shipment', 'shipment', 'nosuch', '$.id', '$.s')$q$,
	'22023', 'unknown system: "nosuch"', 'an unknown system is refused');
SELECT throws_ok($q$SELECT hub.map_inbox('acme.*.x', 'shipment', 'acme_wms', '$.id', '$.s')$q$,
	'22023', NULL, 'a * only at the end of a pattern');
SELECT throws_ok($q$SELECT hub.map_inbox('acme.x', 'shipment', 'acme_wms', '$.id', '$.s', max_attempts => 0)$q$,
	'22023', NULL, 'max_attempts has a range');

-- a message received before its mapping is unhandled, and new again once mapped
SELECT hub.receive('acme', 'm0', 'acme.shipment', '{"shipment": {"id": "SH-0", "status": "PLANNED"}, "at": "2026-05-04T08:00:00Z"}');
SELECT is((SELECT unhandled FROM hub.process_inbox()), 1, 'no mapping, no handler: unhandled');

SELECT lives_ok($q$SELECT hub.map_inbox('acme.shipment', 'shipment', 'acme_wms', '$.shipment.id', '$.shipment.status',
	occurred_at_path => '$.at', partner_path => '$.shipment.carrier', parent_path => '$.order_ref')$q$,
	'map a WMS shipment record: key, code, time, partner (carrier) and parent order');
SELECT is((SELECT state FROM hub.inbox WHERE message_id = 'm0'), 'new', 'the unhandled message is new again');
SELECT lives_ok($q$SELECT hub.map_inbox('acme.pack', 'order', 'acme_wms', '$.order', '$.status',
	occurred_at_path => '$.time', children_path => '$.packages[*].sscc')$q$,
	'map a pack record that lists its packages');

-- ---- a shipment record, end to end, without a handler
SELECT hub.receive('acme', 'm1', 'acme.shipment',
	'{"shipment": {"id": "SH-1", "status": "LABELED", "carrier": "UPSN"}, "order_ref": "SO-1", "at": "2026-05-04T10:00:00+02:00"}',
	correlation_id => 'C-1');
SELECT is((SELECT aggregate_id FROM hub.inbox WHERE message_id = 'm1'), 'SH-1',
	'a mapped message received without its business key gets the key its mapping reads (its order among the key''s messages)');
SELECT hub.receive('acme', 'm1-object-key', 'acme.shipment', '{"shipment": {"id": {"no": 1}, "status": "PLANNED"}}');
SELECT is((SELECT aggregate_id FROM hub.inbox WHERE message_id = 'm1-object-key'), NULL,
	'a key that is no value is left for the processing to refuse');
DELETE FROM hub.inbox WHERE message_id = 'm1-object-key';
SELECT is((SELECT processed FROM hub.process_inbox()), 2, 'both mapped messages are processed');
SELECT is((SELECT state FROM hub.inbox WHERE message_id = 'm1'), 'done', 'the mapped message is done');
SELECT is((SELECT state || '/' || state_system FROM hub.entity_state WHERE lifecycle = 'shipment' AND business_key = 'SH-1'),
	'label_created/acme_wms', 'the record moved the canonical state (no handler written)');
SELECT is((SELECT state_occurred_at FROM hub.entity_state WHERE business_key = 'SH-1'),
	'2026-05-04 08:00:00+00'::timestamptz, 'a time with an offset is read as that instant');
SELECT is((SELECT state_occurred_at FROM hub.entity_state WHERE business_key = 'SH-0'),
	'2026-05-04 08:00:00+00'::timestamptz, 'a Z time is UTC');
SELECT is((SELECT count(*)::int FROM hub.status_history WHERE business_key = 'SH-1'), 1, 'one history row');
SELECT is((SELECT parent_lifecycle || ' ' || parent_key || ' -> ' || child_lifecycle || ' ' || child_key || ' by ' || system
		   FROM hub.entity_links WHERE child_key = 'SH-1'),
	'order SO-1 -> shipment SH-1 by acme_wms', 'the record''s parent is linked');
SELECT is((SELECT message_id FROM hub.trace(aggregate => 'SH-1') WHERE what = 'received'), 'm1',
	'hub.trace of the key finds the message received without it (through the event it caused)');

SELECT throws_ok($$SELECT hub._inbox_step((SELECT inbox_id FROM hub.inbox WHERE message_id = 'm1'), false)$$,
	'55000', NULL, 'the step applies only a message waiting to be processed, as stored');

-- its canonical event: in the same transaction, with the record's context
SELECT is((SELECT count(*)::int FROM hub.outbox WHERE aggregate_id = 'SH-1'), 1, 'one canonical event');
SELECT is((SELECT event_type || ' ' || correlation_id || ' ' || causation_id FROM hub.outbox WHERE aggregate_id = 'SH-1'),
	'shipment.label_created C-1 inbox:' || (SELECT inbox_id FROM hub.inbox WHERE message_id = 'm1'),
	'shipment.label_created carries the inbound correlation id and the message as its cause');
SELECT is((SELECT payload - 'occurred_at' FROM hub.outbox WHERE aggregate_id = 'SH-1'),
	'{"shipment_id": "SH-1", "business_key": "SH-1", "lifecycle": "shipment", "state": "label_created",
	  "previous_state": null, "change": "created", "system": "acme_wms", "partner": "UPSN", "carrier": "UPSN",
	  "parent_lifecycle": "order", "parent_key": "SH-1", "order_id": "SO-1"}'::jsonb - 'parent_key'
	  || '{"parent_key": "SO-1"}',
	'the payload: business key, previous and new state, system, carrier (the contract needs it), parent key');
SELECT is((SELECT payload ->> 'occurred_at' FROM hub.outbox WHERE aggregate_id = 'SH-1'), '2026-05-04T08:00:00.000000Z',
	'occurred_at in UTC');

-- naive time (UTC whatever the session's TimeZone), Unix seconds, a date
SELECT hub.receive('acme', 'm2', 'acme.pack',
	'{"order": "SO-1", "status": "PACKED", "time": "2026-05-04 11:30:00", "packages": [{"sscc": "SH-1"}, {"sscc": "SH-2"}, {"sscc": "SH-2"}]}');
SELECT hub.receive('acme', 'm3', 'acme.shipment', '{"shipment": {"id": "SH-3", "status": "PLANNED"}, "at": 1777896000}');
SELECT hub.receive('acme', 'm4', 'acme.shipment', '{"shipment": {"id": "SH-4", "status": "PLANNED"}, "at": "2026-05-04"}');
SELECT is((SELECT processed FROM hub.process_inbox()), 3, 'three more processed');
SELECT is((SELECT state_occurred_at FROM hub.entity_state WHERE business_key = 'SO-1'),
	'2026-05-04 11:30:00+00'::timestamptz, 'a naive time is UTC (the session is in New York)');
SELECT is((SELECT state_occurred_at FROM hub.entity_state WHERE business_key = 'SH-3'),
	to_timestamp(1777896000), 'a number is Unix seconds');
SELECT is((SELECT state_occurred_at FROM hub.entity_state WHERE business_key = 'SH-4'),
	'2026-05-04 00:00:00+00'::timestamptz, 'a date is midnight UTC');
SELECT is((SELECT array_agg(child_key ORDER BY child_key) FROM hub.entity_links WHERE parent_key = 'SO-1'),
	ARRAY['SH-1', 'SH-2'], 'the pack record links each package once (SH-1 was linked already)');

-- the links in hub.trace and the views
SELECT is((SELECT array_agg(what || ' ' || aggregate_id ORDER BY aggregate_id) FROM hub.trace(aggregate => 'SO-1') WHERE what LIKE 'linked%'),
	ARRAY['linked to child SH-1', 'linked to child SH-2'], 'hub.trace of the order shows its children');
SELECT is((SELECT array_agg(what ORDER BY what) FROM hub.trace(aggregate => 'SH-1')),
	ARRAY['inbox done', 'linked to parent', 'published', 'received'], 'and of the shipment, its parent, arrival, processing and event');
UPDATE hub.entity_state SET last_advanced_at = now() - interval '10 days' WHERE business_key = 'SH-1';
SELECT is((SELECT parent_key FROM hub.stale_entities WHERE business_key = 'SH-1'), 'SO-1', 'the stale view shows the parent key');

-- ---- malformed messages stay technical failures: retried, then dead
SELECT hub.map_inbox('acme.strict', 'shipment', 'acme_wms', '$.id', '$.status', max_attempts => 2, retry_base => '0');
SELECT hub.receive('acme', 'bad1', 'acme.strict', '["not", "an", "object"]');
SELECT hub.receive('acme', 'bad2', 'acme.strict', '{"status": "PLANNED"}');
SELECT hub.receive('acme', 'bad3', 'acme.shipment', '{"shipment": {"id": "SH-5", "status": "PLANNED"}, "at": "yesterday-ish"}');
SELECT is((SELECT failed FROM hub.process_inbox()), 3, 'three malformed messages fail');
SELECT is((SELECT array_agg(state || ' ' || left(last_error, 5) ORDER BY message_id) FROM hub.inbox WHERE message_id LIKE 'bad%'),
	ARRAY['retry_wait 22023', 'retry_wait 22023', 'retry_wait 22007'], 'a payload that is not an object, a missing key, a bad time: retried');
SELECT is((SELECT failed FROM hub.process_inbox()), 2, 'the two with max_attempts 2 fail again');
SELECT is((SELECT array_agg(state ORDER BY message_id) FROM hub.inbox WHERE message_id IN ('bad1', 'bad2')),
	ARRAY['dead', 'dead'], 'and are dead');
SELECT is((SELECT count(*)::int FROM hub.entity_state WHERE business_key = 'SH-5'), 0, 'nothing of a failed message is kept');

-- ---- a mapping and a handler on one pattern: mapping first, then handler, with its context
CREATE TABLE public.flow_seen (state text, ctx jsonb);
CREATE FUNCTION public.flow_ctx(p jsonb, t text, ctx jsonb) RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
	INSERT INTO public.flow_seen
	SELECT (SELECT e.state FROM hub.entity_state e WHERE e.lifecycle = 'shipment' AND e.business_key = p -> 'shipment' ->> 'id'), ctx;
	PERFORM hub.publish('shipment.exception', p -> 'shipment' ->> 'id',
						jsonb_build_object('shipment_id', p -> 'shipment' ->> 'id', 'reason', 'handler'));
END
$$;
CREATE FUNCTION public.flow_one(p jsonb) RETURNS void LANGUAGE sql SECURITY DEFINER
	AS $$ INSERT INTO public.flow_seen VALUES ('one-argument', p) $$;
SELECT hub.register_handler('acme.shipment', 'public.flow_ctx');
SELECT hub.register_handler('acme.old', 'public.flow_one');
SELECT hub.receive('acme', 'm6', 'acme.shipment', '{"shipment": {"id": "SH-6", "status": "PLANNED"}, "at": "2026-05-04T12:00:00Z"}',
	correlation_id => 'C-6');
SELECT hub.receive('acme', 'm7', 'acme.old', '{"x": 1}');
SELECT is((SELECT processed FROM hub.process_inbox()), 2, 'mapped+handled and one-argument handler messages are processed');
SELECT is((SELECT state FROM public.flow_seen WHERE ctx ? 'message_id'), 'planned', 'the handler runs after the mapping and sees its state');
SELECT is((SELECT ctx - 'received_at' - 'inbox_id' FROM public.flow_seen WHERE ctx ? 'message_id'),
	'{"source": "acme", "message_id": "m6", "message_type": "acme.shipment", "correlation_id": "C-6", "aggregate_id": "SH-6", "attempts": 0}'::jsonb,
	'the handler receives the message''s context');
SELECT is((SELECT array_agg(event_type || ' ' || correlation_id ORDER BY seq) FROM hub.outbox WHERE aggregate_id = 'SH-6'),
	ARRAY['shipment.planned C-6', 'shipment.exception C-6'],
	'the canonical event and what the handler published both carry the inbound correlation id');
SELECT is((SELECT state FROM public.flow_seen WHERE ctx = '{"x": 1}'), 'one-argument', 'a one-argument handler still works');

SELECT * FROM finish();
ROLLBACK;
