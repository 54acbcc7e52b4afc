-- Canonical events from canonical transitions: published by the move
-- itself, in its transaction, exactly once; duplicate, re-sent, stale
-- (out-of-order), not-owner and informational reports publish nothing;
-- overlays raised and cleared are events; hub.state_events is
-- configuration; the source record fills what the contract needs, and a
-- record that cannot is a contract_violation exception.
BEGIN;
SELECT plan(23);

CREATE FUNCTION pg_temp.ap(k text, sys text, code text, at text, lc text DEFAULT 'shipment')
RETURNS text LANGUAGE sql AS $$
	SELECT (hub.apply_status(lc, k, sys, code, at::timestamptz)).outcome
$$;
CREATE FUNCTION pg_temp.events(k text) RETURNS text[] LANGUAGE sql AS $$
	SELECT coalesce(array_agg(event_type ORDER BY seq), '{}') FROM hub.outbox WHERE aggregate_id = k
$$;

-- ---- a carrier feed, direct calls of hub.apply_status
SELECT is(pg_temp.ap('SH-1', 'x12_214', 'XB', '2026-05-04 08:00Z'), 'created', 'label created');
SELECT is(pg_temp.events('SH-1'), ARRAY['shipment.label_created'], 'creating the key publishes its state''s event');
SELECT is(pg_temp.ap('SH-1', 'x12_214', 'XB', '2026-05-04 08:00Z'), 'duplicate', 'the same report re-sent');
SELECT is(pg_temp.ap('SH-1', 'x12_214', 'AF', '2026-05-04 10:00Z'), 'advanced', 'picked up');
SELECT is(pg_temp.ap('SH-1', 'x12_214', 'AF', '2026-05-04 10:05Z'), 'duplicate', 'a second scan of the same state');
SELECT is(pg_temp.ap('SH-1', 'x12_214', 'X3', '2026-05-04 09:00Z'), 'stale', 'an older scan arrives late (out of order)');
SELECT is(pg_temp.ap('SH-1', 'x12_214', 'AG', '2026-05-04 10:10Z'), 'informational', 'an estimate');
SELECT is(pg_temp.ap('SH-1', 'portal', 'Delivered', '2026-05-04 10:20Z'), 'not_owner', 'the portal claims delivery');
SELECT is(pg_temp.events('SH-1'), ARRAY['shipment.label_created', 'shipment.dispatched'],
	'duplicate, re-sent, stale, informational and not-owner reports published nothing');
SELECT is((SELECT payload ->> 'previous_state' || ' -> ' || (payload ->> 'state') || ' ' || (payload ->> 'change')
		   FROM hub.outbox WHERE aggregate_id = 'SH-1' AND event_type = 'shipment.dispatched'),
	'label_created -> picked_up advanced', 'the event names previous and new state and the change');

-- ---- overlays are events: raised, re-raised (nothing), cleared by an advance
SELECT is(pg_temp.ap('SH-1', 'x12_214', 'SD', '2026-05-04 11:00Z'), 'overlay', 'the carrier reports a delay');
SELECT is(pg_temp.ap('SH-1', 'x12_214', 'SD', '2026-05-04 11:30Z'), 'overlay', 'and again');
SELECT is(pg_temp.ap('SH-1', 'x12_214', 'D1', '2026-05-04 15:00Z'), 'advanced', 'delivered');
SELECT is(pg_temp.events('SH-1'),
	ARRAY['shipment.label_created', 'shipment.dispatched', 'shipment.exception', 'shipment.delivered', 'shipment.exception_cleared'],
	'the exception raised once, and cleared with the delivery');
SELECT is((SELECT payload ->> 'reason' FROM hub.outbox WHERE aggregate_id = 'SH-1' AND event_type = 'shipment.exception'),
	'delayed', 'the exception event carries its reason');
SELECT is(pg_temp.ap('SH-1', 'x12_214', 'P1', '2026-05-04 12:00Z'), 'stale', 'a late terminal scan after delivery');
SELECT is(cardinality(pg_temp.events('SH-1')), 5, 'publishes nothing');

-- ---- state_events is configuration
UPDATE hub.state_events SET event_type = 'shipment.in_transit' WHERE lifecycle = 'shipment' AND state = 'picked_up';
DELETE FROM hub.state_events WHERE lifecycle = 'shipment' AND state = 'label_created';
SELECT pg_temp.ap('SH-2', 'x12_214', 'XB', '2026-05-04 08:00Z');
SELECT pg_temp.ap('SH-2', 'x12_214', 'AF', '2026-05-04 09:00Z');
SELECT is(pg_temp.events('SH-2'), ARRAY['shipment.in_transit'], 'a state without a row publishes nothing; a changed row another type');

-- ---- the contract: what the hub knows, the record's fields, or an exception
-- (order.released requires warehouse, which only the record can give)
SELECT is(pg_temp.ap('SO-1', 'sap', 'GBSTK=A', '2026-05-04 08:00Z', 'order'), 'created', 'an ERP order');
SELECT is(pg_temp.ap('SO-1', 'sap', 'LFSTK=B', '2026-05-04 09:00Z', 'order'), 'advanced', 'released, by a direct call without a record');
SELECT is(pg_temp.events('SO-1'), ARRAY['order.created'], 'order.released could not be published without a warehouse');
SELECT is((SELECT kind || ' ' || code || ': ' || detail FROM hub.exceptions WHERE business_key = 'SO-1'),
	'contract_violation order.released: order.released event lacks the required payload key "warehouse" (the canonical event of released was not published)',
	'a contract_violation exception names the missing key');

INSERT INTO hub.systems (system, role) VALUES ('acme_erp', 'erp');
INSERT INTO hub.status_map (system, lifecycle, code, state) VALUES ('acme_erp', 'order', 'REL', 'released');
SELECT hub.map_inbox('erp.order', 'order', 'acme_erp', '$.order_id', '$.status');
SELECT hub.receive('erp', 'o2', 'erp.order', '{"order_id": "SO-2", "status": "REL", "warehouse": "DC1", "lines": 3}');
SELECT hub.process_inbox();
SELECT is((SELECT payload ->> 'warehouse' || ' ' || (payload ? 'lines')::text FROM hub.outbox WHERE aggregate_id = 'SO-2'),
	'DC1 false', 'from a mapped record, order.released takes the warehouse the contract needs (and nothing else)');

SELECT * FROM finish();
ROLLBACK;
