-- Event contracts that protect the receivers: required keys are non-null
-- and may be typed (string, number, boolean, object, array); a deprecated
-- contract version warns its publishers without refusing them;
-- hub.contract_violation says why an event would be refused; the
-- catalogue refuses a malformed key_types.
BEGIN;
SELECT plan(23);

INSERT INTO hub.event_types (event_type, version, required_keys, key_types) VALUES
	('stock.counted', 2, '{sku,quantity,bins,lot,counted}',
	 '{"sku": "string", "quantity": "number", "bins": "array", "lot": "object", "counted": "boolean"}');

SELECT lives_ok($$SELECT hub.publish('stock.counted', 'SKU-1',
	'{"sku": "SKU-1", "quantity": 4, "bins": ["A1"], "lot": {"no": 7}, "counted": true}')$$,
	'a payload of the right types is published');
SELECT throws_ok($$SELECT hub.publish('stock.counted', 'SKU-1',
	'{"sku": "SKU-1", "quantity": null, "bins": [], "lot": {}, "counted": true}')$$,
	'22023', 'stock.counted event has null for the required payload key "quantity"', 'a required key may not be null');
SELECT throws_ok($$SELECT hub.publish('stock.counted', 'SKU-1',
	'{"sku": "SKU-1", "quantity": "4", "bins": [], "lot": {}, "counted": true}')$$,
	'22023', 'stock.counted event has a string for the payload key "quantity", which must be a number', 'a number is a number');
SELECT throws_ok($$SELECT hub.publish('stock.counted', 'SKU-1',
	'{"sku": 1, "quantity": 4, "bins": [], "lot": {}, "counted": true}')$$,
	'22023', NULL, 'a string is a string');
SELECT throws_ok($$SELECT hub.publish('stock.counted', 'SKU-1',
	'{"sku": "S", "quantity": 4, "bins": {}, "lot": {}, "counted": true}')$$,
	'22023', 'stock.counted event has a object for the payload key "bins", which must be a array', 'an array is an array');
SELECT throws_ok($$SELECT hub.publish('stock.counted', 'SKU-1',
	'{"sku": "S", "quantity": 4, "bins": [], "lot": [], "counted": true}')$$,
	'22023', NULL, 'an object is an object');
SELECT throws_ok($$SELECT hub.publish('stock.counted', 'SKU-1',
	'{"sku": "S", "quantity": 4, "bins": [], "lot": {}, "counted": "yes"}')$$,
	'22023', NULL, 'a boolean is a boolean');
SELECT throws_ok($$INSERT INTO hub.outbox (event_type, aggregate_id, payload)
	VALUES ('stock.counted', 'SKU-1', '{"sku": "S", "quantity": 4, "bins": [], "lot": {}, "counted": 1}')$$,
	'22023', NULL, 'a plain INSERT is checked alike');

-- every event carries its contract version: stamped on the row, sent in the body
SELECT is((SELECT contract_version FROM hub.outbox WHERE aggregate_id = 'SKU-1'), 2,
	'hub.publish stamps the contract version the event was checked against');
INSERT INTO hub.outbox (event_type, aggregate_id, payload) VALUES ('order.created', 'SO-V', '{"order_id": "SO-V"}');
SELECT is((SELECT contract_version FROM hub.outbox WHERE aggregate_id = 'SO-V'), 1, 'so does a plain INSERT');
SELECT hub.publish('stock.unlisted', 'SKU-U', '{}');
SELECT is((SELECT contract_version FROM hub.outbox WHERE aggregate_id = 'SKU-U'), NULL, 'an accepted unknown type has none');
SELECT is((SELECT hub.event_body('event', event_id, event_type, aggregate_id, occurred_at, correlation_id, payload, '/s', contract_version)::jsonb
				  ->> 'contract_version' FROM hub.outbox WHERE aggregate_id = 'SKU-1'),
	'2', 'the canonical body carries contract_version');
SELECT is((SELECT hub.event_body('cloudevents', event_id, event_type, aggregate_id, occurred_at, correlation_id, payload, '/s', contract_version)::jsonb
				  -> 'contractversion' FROM hub.outbox WHERE aggregate_id = 'SKU-1'),
	'2'::jsonb, 'a CloudEvent carries the extension attribute contractversion (an integer)');
SELECT is((SELECT hub.event_body(f, event_id, event_type, aggregate_id, occurred_at, correlation_id, payload, '/s', NULL)
		   FROM hub.outbox, unnest(ARRAY['event', 'cloudevents']) f WHERE aggregate_id = 'SKU-U' ORDER BY f LIMIT 1),
	(SELECT hub.event_body(f, event_id, event_type, aggregate_id, occurred_at, correlation_id, payload, '/s')
	 FROM hub.outbox, unnest(ARRAY['event', 'cloudevents']) f WHERE aggregate_id = 'SKU-U' ORDER BY f LIMIT 1),
	'without a version the body is the eight-argument form''s, byte for byte');

-- hub.contract_violation: the same check, as a value
SELECT is(hub.contract_violation('stock.counted', '{"sku": "S", "quantity": 4, "bins": [], "lot": {}, "counted": true}'),
	NULL, 'no violation');
SELECT is(hub.contract_violation('stock.counted', '{"sku": "S"}'),
	'stock.counted event lacks the required payload key "quantity"', 'the first missing key');
SELECT is(hub.contract_violation('stock.counted', '[1]'),
	'the payload of a stock.counted event must be a JSON object', 'not an object');
SET LOCAL logistics_hub.unknown_event_types = 'reject';
SELECT is(hub.contract_violation('stock.nowhere', '{}'), 'unknown event type: "stock.nowhere"',
	'an unknown type, when unknown types are rejected');

-- the catalogue checks key_types
SELECT throws_ok($$INSERT INTO hub.event_types (event_type, required_keys, key_types) VALUES ('x.y', '{a}', '{"b": "string"}')$$,
	'23514', NULL, 'a typed key must be a required key');
SELECT throws_ok($$INSERT INTO hub.event_types (event_type, required_keys, key_types) VALUES ('x.y', '{a}', '{"a": "date"}')$$,
	'23514', NULL, 'types are string, number, boolean, object or array');

-- a deprecated version warns, and publishes
UPDATE hub.event_types SET deprecated = true, description = 'use stock.counted_v3' WHERE event_type = 'stock.counted';
SET LOCAL client_min_messages = error;	-- (the WARNING itself: test/sql/event_contracts.sql)
SELECT lives_ok($$SELECT hub.publish('stock.counted', 'SKU-2', '{"sku": "S", "quantity": 4, "bins": [], "lot": {}, "counted": true}')$$,
	'a deprecated contract is not refused');
SELECT is((SELECT count(*)::int FROM hub.outbox WHERE aggregate_id = 'SKU-2'), 1, 'the event is there');
SELECT is((SELECT hub.contract_violation('stock.counted', '{"sku": "S", "quantity": 4, "bins": [], "lot": {}, "counted": true}')),
	NULL, 'and deprecation is no violation');

SELECT * FROM finish();
ROLLBACK;
