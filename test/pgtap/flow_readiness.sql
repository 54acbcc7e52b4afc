-- Readiness rules: "the WMS reports the order packed and every package of
-- it has a carrier label, then order.ready_for_dispatch goes to route
-- planning".  Fires once when the last child arrives, not before, not again
-- when children move on; never while an open exception or a hold sits on
-- the key or a child (and fires once it is resolved); the pending view.
BEGIN;
SELECT plan(21);

INSERT INTO hub.systems (system, role) VALUES ('acme_wms', 'wms');
INSERT INTO hub.status_map (system, lifecycle, code, state, overlay, reason) VALUES
	('acme_wms', 'order', 'PACKED', 'packed', NULL, NULL), ('acme_wms', 'order', 'SHIPPED', 'shipped', NULL, NULL),
	('acme_wms', 'order', 'HOLD', NULL, 'on_hold', 'inspection'),
	('acme_wms', 'shipment', 'LABELED', 'label_created', NULL, NULL);
INSERT INTO hub.event_types (event_type, required_keys) VALUES ('order.ready_for_dispatch', '{order_id,children}');
SELECT hub.map_inbox('wms.pack', 'order', 'acme_wms', '$.order', '$.status', children_path => '$.packages[*]');
SELECT hub.map_inbox('wms.label', 'shipment', 'acme_wms', '$.sscc', '$.status', partner_path => '$.carrier',
	parent_path => '$.order');
SELECT hub.map_inbox('carrier.*', 'shipment', 'x12_214', '$.sscc', '$.code');

CREATE FUNCTION pg_temp.rx(id text, typ text, body text) RETURNS integer LANGUAGE sql AS $$
	SELECT hub.receive('wms', id, typ, body::jsonb); SELECT processed FROM hub.process_inbox()
$$;
CREATE FUNCTION pg_temp.fired(k text) RETURNS integer LANGUAGE sql AS $$
	SELECT count(*)::int FROM hub.outbox WHERE event_type = 'order.ready_for_dispatch' AND aggregate_id = k
$$;

-- ---- create_readiness_rule checks what it is given
SELECT throws_ok($$SELECT hub.create_readiness_rule('Bad Name', 'order.ready_for_dispatch', 'order', 'packed')$$,
	'22023', NULL, 'a rule name is lower case');
SELECT throws_ok($$SELECT hub.create_readiness_rule('r', 'order.ready_for_dispatch', 'order', 'boxed')$$,
	'22023', 'unknown order state: "boxed"', 'an unknown state');
SELECT throws_ok($$SELECT hub.create_readiness_rule('r', 'order.ready_for_dispatch', 'order', 'packed', 'shipment')$$,
	'22023', NULL, 'child lifecycle and child state go together');
SELECT throws_ok($$SELECT hub.create_readiness_rule('r', 'order.nowhere', 'order', 'packed')$$,
	'22023', 'unknown event type: "order.nowhere"', 'the event type needs a contract');
SELECT lives_ok($$SELECT hub.create_readiness_rule('ready_for_dispatch', 'order.ready_for_dispatch', 'order', 'packed',
	child_lifecycle => 'shipment', child_state => 'label_created')$$, 'create the rule');

-- ---- the order is packed with three packages; labels come one by one
SELECT is(pg_temp.rx('p1', 'wms.pack', '{"order": "SO-1", "status": "PACKED", "packages": ["P1", "P2", "P3"]}'), 1, 'packed');
SELECT is(pg_temp.fired('SO-1'), 0, 'no package labelled yet: not ready');
SELECT is((SELECT children || '/' || children_ready || '/' || blocked FROM hub.readiness_pending WHERE business_key = 'SO-1'),
	'3/0/false', 'pending: three children, none ready');
SELECT pg_temp.rx('l1', 'wms.label', '{"sscc": "P1", "status": "LABELED", "carrier": "UPSN", "order": "SO-1"}');
SELECT pg_temp.rx('l2', 'wms.label', '{"sscc": "P2", "status": "LABELED", "carrier": "UPSN", "order": "SO-1"}');
SELECT is(pg_temp.fired('SO-1'), 0, 'two of three labelled: not yet');
SELECT is((SELECT children_ready FROM hub.readiness_pending WHERE business_key = 'SO-1'), 2, 'the view counts them');
SELECT pg_temp.rx('l3', 'wms.label', '{"sscc": "P3", "status": "LABELED", "carrier": "UPSN", "order": "SO-1"}');
SELECT is(pg_temp.fired('SO-1'), 1, 'the last label fires the rule');
SELECT is((SELECT payload -> 'children' FROM hub.outbox WHERE event_type = 'order.ready_for_dispatch' AND aggregate_id = 'SO-1'),
	'["P1", "P2", "P3"]'::jsonb, 'the event names the children');
SELECT is((SELECT count(*)::int FROM hub.readiness_pending WHERE business_key = 'SO-1'), 0, 'and the key is no longer pending');

-- children move on, the label is re-sent, the order ships: nothing more
SELECT pg_temp.rx('k1', 'carrier.scan', '{"sscc": "P1", "code": "AF"}');
SELECT pg_temp.rx('l3b', 'wms.label', '{"sscc": "P3", "status": "LABELED", "carrier": "UPSN", "order": "SO-1"}');
SELECT pg_temp.rx('p2', 'wms.pack', '{"order": "SO-1", "status": "SHIPPED", "shipment_id": "P1"}');
SELECT is(pg_temp.fired('SO-1'), 1, 'children moving on and the order advancing fire nothing again');
SELECT is((SELECT count(*)::int FROM hub.readiness_fired WHERE rule = 'ready_for_dispatch'), 1, 'fired once per key');

-- ---- an exception on a child holds it back; resolving it fires
SELECT pg_temp.rx('p3', 'wms.pack', '{"order": "SO-2", "status": "PACKED", "packages": ["Q1", "Q2"]}');
SELECT pg_temp.rx('l4', 'wms.label', '{"sscc": "Q1", "status": "LABELED", "carrier": "UPSN", "order": "SO-2"}');
SELECT pg_temp.rx('l5', 'wms.label', '{"sscc": "Q2", "status": "WEIRD", "carrier": "UPSN", "order": "SO-2"}');
SELECT pg_temp.rx('l6', 'wms.label', '{"sscc": "Q2", "status": "LABELED", "carrier": "UPSN", "order": "SO-2"}');
SELECT is(pg_temp.fired('SO-2'), 0, 'every child labelled, but an unknown-code exception is open on one: not ready');
SELECT is((SELECT blocked FROM hub.readiness_pending WHERE business_key = 'SO-2'), true, 'the view says it is blocked');
SELECT hub.resolve_exception((SELECT exception_id FROM hub.exceptions WHERE business_key = 'Q2'), 'typo in the WMS');
SELECT is(pg_temp.fired('SO-2'), 1, 'resolving the exception fires the rule');

-- ---- a hold on the key holds it back; its release fires
SELECT pg_temp.rx('p4', 'wms.pack', '{"order": "SO-3", "status": "PACKED", "packages": ["R1"]}');
SELECT pg_temp.rx('h1', 'wms.pack', '{"order": "SO-3", "status": "HOLD"}');
SELECT pg_temp.rx('l7', 'wms.label', '{"sscc": "R1", "status": "LABELED", "carrier": "UPSN", "order": "SO-3"}');
SELECT is(pg_temp.fired('SO-3'), 0, 'on hold: not ready');
SELECT pg_temp.rx('p5', 'wms.pack', '{"order": "SO-3", "status": "SHIPPED", "shipment_id": "R1"}');
SELECT is(pg_temp.fired('SO-3'), 1, 'the advance that releases the hold fires it');

-- ---- a packed order with no package linked is not ready
SELECT pg_temp.rx('p6', 'wms.pack', '{"order": "SO-4", "status": "PACKED"}');
SELECT is(pg_temp.fired('SO-4'), 0, 'no child linked: not ready');

SELECT * FROM finish();
ROLLBACK;
