-- hub.trace across both directions: the events of a correlation id or a
-- business key, their deliveries and attempts, and the inbound messages
-- received with that correlation id (as an argument or in the payload) or
-- that business key, with their processing.
-- Autocommit (own database): routing only sees committed events.
SELECT plan(9);

CREATE FUNCTION public.trace_ok(p jsonb, t text) RETURNS void LANGUAGE sql SECURITY DEFINER AS $$ SELECT $$;
SELECT hub.register_handler('carrier.*', 'public.trace_ok');
SELECT hub.create_endpoint('tms', 'http://127.0.0.1:9/tms', 'tms');
SELECT hub.subscribe('tms', 'order.*', ordering => 'none');
SELECT hub.publish('order.released', 'SO-9', '{"order_id": "SO-9", "warehouse": "DC1"}', correlation_id => 'C-9');
SELECT hub.publish('order.shipped', 'SO-9', '{"order_id": "SO-9", "shipment_id": "SH-9"}');	-- no correlation id
SELECT hub.publish('order.created', 'SO-8', '{"order_id": "SO-8"}', correlation_id => 'C-8');
SELECT hub.complete_delivery(delivery_id, lease_token, 200, 7) FROM hub.claim_deliveries(10, 'w') WHERE aggregate_id = 'SO-9';

SELECT ok(hub.receive('carrier', 'ack-1', 'carrier.label_created', '{"label": "1Z"}', correlation_id => 'C-9', aggregate_id => 'SO-9'),
	'receive with a correlation id and a business key');
SELECT ok(hub.receive('carrier', 'ack-2', 'carrier.picked_up', '{"correlation_id": "C-9"}'),
	'receive a message carrying its correlation id in the payload');
SELECT ok(NOT hub.receive('carrier', 'ack-2', 'carrier.picked_up', '{"correlation_id": "C-9"}'), 'a duplicate of it');
SELECT is((SELECT correlation_id FROM hub.inbox WHERE message_id = 'ack-2'), 'C-9', 'the payload''s correlation_id is kept in its column');
SELECT is((SELECT processed FROM hub.process_inbox()), 2, 'both inbound messages are processed');

SELECT is((SELECT array_agg(what || ':' || coalesce(source || '/' || message_id, aggregate_id) ORDER BY at, what) FROM hub.trace('C-9')),
	ARRAY['published:SO-9', 'attempt 1: delivered:SO-9', 'delivery delivered:SO-9',
		  'received:carrier/ack-1', 'received:carrier/ack-2', 'inbox done:carrier/ack-1', 'inbox done:carrier/ack-2'],
	'the trace of a correlation id runs from the outbox through deliveries and attempts into the inbox');
SELECT is((SELECT array_agg(DISTINCT coalesce(message_id, event_type) ORDER BY coalesce(message_id, event_type)) FROM hub.trace(aggregate => 'SO-9')),
	ARRAY['ack-1', 'order.released', 'order.shipped'],
	'the trace of a business key has every event of it and the inbound message naming it');
SELECT ok((SELECT detail LIKE '%(1 duplicates)' FROM hub.trace('C-9') WHERE what = 'received' AND message_id = 'ack-2'),
	'duplicates are shown');
SELECT throws_ok($$SELECT * FROM hub.trace()$$, '22023', 'a trace needs a correlation id or an aggregate id',
	'a trace needs something to follow');

SELECT * FROM finish();
