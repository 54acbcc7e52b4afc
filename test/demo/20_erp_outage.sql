-- The hub's main job: the warehouse keeps shipping while the ERP is down.
-- Shipment events are published in the WMS's own transaction; a dispatcher
-- pushes them over HTTP to the ERP (which answers 503 twice, an outage)
-- and to the customer portal (signed with Standard Webhooks, CloudEvents
-- format).  Nothing is lost, order per shipment is kept, and every attempt
-- is in a table.  :recv is the loopback receiver make demo started.
SET search_path = public, hub;
\set SHOW_CONTEXT never

SELECT hub.create_endpoint('erp', :'recv' || '/fail-first/2/503', 'erp', timeout_ms => 2000);
SELECT hub.create_endpoint('portal', :'recv' || '/ok', 'portal',
       signing_secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw');
SELECT hub.subscribe('erp', 'shipment.*', retry_base => '200 milliseconds');
SELECT hub.subscribe('portal', 'shipment.dispatched', body_format => 'cloudevents');

-- The WMS ships two orders; each event commits with the warehouse's own
-- transaction and wakes a dispatcher at COMMIT.
BEGIN;
SELECT hub.publish('shipment.dispatched', 'SH-' || n,
       jsonb_build_object('shipment_id', 'SH-' || n, 'carrier', 'DHL'),
       correlation_id => 'SO-100' || n)
FROM generate_series(1, 2) n;
SELECT hub.publish('shipment.in_transit', 'SH-1', '{"shipment_id": "SH-1"}', correlation_id => 'SO-1001');
COMMIT;

-- A transaction that rolls back publishes nothing.
BEGIN;
SELECT hub.publish('shipment.dispatched', 'SH-9', '{"shipment_id": "SH-9", "carrier": "UPS"}') IS NOT NULL AS published;
ROLLBACK;

-- Wait (at most 30 s) until the ERP has recovered and all five deliveries
-- (three to the ERP, two to the portal) arrived.  The dispatcher notices
-- a newly created extension within a few seconds.
DO $$
BEGIN
	FOR i IN 1..300 LOOP
		EXIT WHEN (SELECT count(*) FROM hub.deliveries WHERE state = 'delivered') >= 5;
		PERFORM pg_sleep(0.1);
	END LOOP;
END $$;

-- Per endpoint and subscription: what is pending, retrying, dead, and how
-- deliveries went over the last hour.
SELECT endpoint, event_pattern, pending, retrying, dead, last_success IS NOT NULL AS succeeded,
       success_rate_1h, circuit_state
FROM hub.sync_status ORDER BY endpoint;

-- Every attempt is recorded: the ERP's two 503s, then success.
SELECT e.name AS endpoint, o.event_type, o.aggregate_id, a.attempt, a.http_status, a.outcome
FROM hub.attempts a
JOIN hub.deliveries d USING (delivery_id)
JOIN hub.endpoints e ON e.endpoint_id = d.endpoint_id
JOIN hub.outbox o ON o.event_id = d.event_id
ORDER BY e.name, o.aggregate_id, o.event_type, a.attempt;

-- One order's story across the outbox, deliveries and attempts (in order
-- already: the events of one transaction share their time, and an ORDER BY
-- on it alone would mix them).
SELECT * FROM hub.trace('SO-1001');
