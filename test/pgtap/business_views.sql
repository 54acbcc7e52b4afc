-- The business views over entity state (75_business_views.sql) and their
-- thresholds (hub.thresholds, hub.set_threshold): orders awaiting release,
-- release backlog by site, missing tracking, returns awaiting
-- reconciliation, backlog by site, portal freshness, order-to-ship cycle
-- time.  Known data with explicit times relative to now() (constant in the
-- transaction).
BEGIN;
SELECT plan(44);

INSERT INTO hub.systems (system, role) VALUES ('tms1', 'tms');
CREATE FUNCTION pg_temp.ap(lc text, k text, sys text, st text, ago interval)
RETURNS text LANGUAGE sql AS $$
	SELECT (hub.apply_canonical_status(lc, k, sys, st, now() - ago, st)).outcome
$$;

-- ---- thresholds
SELECT is((SELECT value FROM hub.thresholds WHERE name = 'order_release'), interval '4 hours',
	'order_release defaults to 4 hours');
SELECT is((SELECT count(*) FROM hub.thresholds)::int, 8, 'eight thresholds');
SELECT throws_ok($$SELECT hub.set_threshold('no_such', '1 hour')$$, '22023', 'unknown threshold: "no_such"',
	'an unknown threshold is refused');
SELECT throws_ok($$SELECT hub.set_threshold('order_release', '-1 hour')$$, '22023', NULL,
	'a negative threshold is refused');
SELECT throws_ok($$SELECT hub.set_threshold('order_release', '400 days')$$, '22023', NULL,
	'a threshold above 366 days is refused');
SELECT is(hub.set_threshold('order_release', '3 hours', 'night shift'), interval '3 hours',
	'set_threshold returns the value in force');
SELECT is((SELECT details FROM hub.operator_audit WHERE action = 'set_threshold' ORDER BY audit_id DESC LIMIT 1),
	'{"new": "03:00:00", "old": "04:00:00"}'::jsonb, 'the change is audited with the old and new value');
SELECT is((SELECT reason FROM hub.operator_audit WHERE action = 'set_threshold' ORDER BY audit_id DESC LIMIT 1),
	'night shift', 'with its reason');
SELECT is(hub.set_threshold('order_release', NULL), interval '4 hours', 'NULL goes back to the default');
SELECT is((SELECT count(*) FROM hub.threshold_settings)::int, 0, 'and removes the operator''s row');

-- ---- orders awaiting release, by site
SELECT pg_temp.ap('order', 'SO-A', 'sap', 'created', '5 hours');
SELECT pg_temp.ap('order', 'SO-B', 'sap', 'created', '1 hour');
SELECT pg_temp.ap('order', 'SO-C', 'sap', 'created', '8 hours');
SELECT pg_temp.ap('order', 'SO-C', 'sap', 'released', '6 hours');
SELECT pg_temp.ap('order', 'SO-D', 'sap', 'created', '30 hours');
UPDATE hub.entity_state SET site = 'DC-EAST' WHERE business_key IN ('SO-A', 'SO-B');
UPDATE hub.entity_state SET site = 'DC-WEST' WHERE business_key IN ('SO-C', 'SO-D');

SELECT is((SELECT array_agg(order_key ORDER BY order_key) FROM hub.orders_awaiting_release), ARRAY['SO-A', 'SO-D'],
	'orders created longer than order_release ago and not released are listed');
SELECT is((SELECT site || ' ' || waiting_for FROM hub.orders_awaiting_release WHERE order_key = 'SO-A'), 'DC-EAST 05:00:00',
	'with their site and how long they have waited');
SELECT hub.set_threshold('order_release', '30 minutes');
SELECT is((SELECT array_agg(order_key ORDER BY order_key) FROM hub.orders_awaiting_release), ARRAY['SO-A', 'SO-B', 'SO-D'],
	'a lower threshold lists the newer order too');
SELECT hub.set_threshold('order_release', NULL);
SELECT results_eq($$SELECT site, orders, late, oldest_waiting_for FROM hub.release_backlog_by_site ORDER BY site$$,
	$$VALUES ('DC-EAST', 2::bigint, 1::bigint, interval '5 hours'), ('DC-WEST', 1, 1, interval '30 hours')$$,
	'release backlog by site: orders waiting, late ones, the oldest');

-- ---- shipments with a label and no carrier scan
SELECT pg_temp.ap('shipment', 'SH-A', 'tms1', 'label_created', '30 hours');
SELECT pg_temp.ap('shipment', 'SH-B', 'tms1', 'label_created', '30 hours');
SELECT pg_temp.ap('shipment', 'SH-B', 'easypost', 'in_transit', '20 hours');
SELECT pg_temp.ap('shipment', 'SH-C', 'tms1', 'label_created', '2 hours');
SELECT is((SELECT array_agg(shipment_key) FROM hub.missing_tracking), ARRAY['SH-A'],
	'a label without a carrier scan for longer than carrier_scan is listed; a scanned or newer one is not');
SELECT is((SELECT labelled_by || ' ' || (without_scan_for = interval '30 hours') FROM hub.missing_tracking), 'tms1 true',
	'with who labelled it and since when');
SELECT hub.set_threshold('carrier_scan', '1 hour');
SELECT is((SELECT count(*) FROM hub.missing_tracking)::int, 2, 'carrier_scan is configuration');
SELECT hub.set_threshold('carrier_scan', NULL);

-- ---- returns waiting for financial reconciliation
SELECT pg_temp.ap('return', 'RT-A', 'sap', 'requested', '100 hours');
SELECT pg_temp.ap('return', 'RT-A', 'epcis', 'received', '80 hours');
SELECT pg_temp.ap('return', 'RT-B', 'sap', 'requested', '10 hours');
SELECT pg_temp.ap('return', 'RT-B', 'epcis', 'inspected', '1 hour');
SELECT pg_temp.ap('return', 'RT-C', 'sap', 'requested', '100 hours');
SELECT pg_temp.ap('return', 'RT-C', 'epcis', 'received', '90 hours');
SELECT pg_temp.ap('return', 'RT-C', 'sap', 'resolved', '50 hours');
SELECT results_eq($$SELECT return_key, state, waiting_for, overdue FROM hub.returns_awaiting_reconciliation ORDER BY return_key$$,
	$$VALUES ('RT-A', 'received', interval '80 hours', true), ('RT-B', 'inspected', interval '1 hour', false)$$,
	'returns received or inspected and not resolved, overdue past return_reconciliation; a resolved one is not listed');

-- ---- backlog by site: open keys only
SELECT pg_temp.ap('order', 'SO-E', 'sap', 'created', '3 hours');
SELECT pg_temp.ap('order', 'SO-E', 'sap', 'cancelled', '2 hours');
SELECT is((SELECT count(*) FROM hub.backlog_by_site WHERE lifecycle = 'order' AND state = 'cancelled')::int, 0,
	'a key in a terminal state is not backlog');
SELECT results_eq($$SELECT site, state, keys FROM hub.backlog_by_site WHERE lifecycle = 'order' ORDER BY site, state$$,
	$$VALUES ('DC-EAST', 'created', 2::bigint), ('DC-WEST', 'created', 1), ('DC-WEST', 'released', 1)$$,
	'order backlog by site and state');
SELECT is((SELECT keys FROM hub.backlog_by_site WHERE lifecycle = 'order' AND site IS NULL), NULL::bigint,
	'a key without a site is counted under NULL only when there is one (none here)');
SELECT is((SELECT oldest_age FROM hub.backlog_by_site WHERE lifecycle = 'return' AND state = 'received'), interval '80 hours',
	'the oldest key of a state, since its last advance');
SELECT is((SELECT sum(keys) FROM hub.backlog_by_site WHERE lifecycle = 'shipment')::int, 3,
	'shipments: two labelled, one in transit');

-- ---- portal freshness
SELECT pg_temp.ap('order', 'SO-A', 'portal', 'created', '4 hours');
SELECT pg_temp.ap('order', 'SO-C', 'portal', 'created', '7 hours');
SELECT results_eq($$SELECT business_key, canonical_state, portal_state, in_sync, differs_for, overdue
	FROM hub.portal_freshness ORDER BY business_key$$,
	$$VALUES ('SO-A', 'created', 'created', true, NULL::interval, false),
			 ('SO-C', 'released', 'created', false, interval '6 hours', true)$$,
	'what the portal shows against the canonical state, since when they differ, overdue past portal_freshness');
SELECT hub.set_threshold('portal_freshness', '7 hours');
SELECT is((SELECT overdue FROM hub.portal_freshness WHERE business_key = 'SO-C'), false,
	'portal_freshness is configuration');
SELECT hub.set_threshold('portal_freshness', NULL);
SELECT pg_temp.ap('order', 'SO-C', 'portal', 'released', '10 minutes');
SELECT is((SELECT in_sync FROM hub.portal_freshness WHERE business_key = 'SO-C'), true,
	'once the portal reports the canonical state they agree');

-- a portal's coarser code: "Processing" (reported as released) covers packed
SELECT pg_temp.ap('order', 'SO-P', 'sap', 'created', '9 hours');
SELECT pg_temp.ap('order', 'SO-P', 'portal', 'released', '8 hours');
UPDATE hub.entity_system_state SET code = 'Processing' WHERE business_key = 'SO-P' AND system = 'portal';
SELECT pg_temp.ap('order', 'SO-P', 'epcis', 'packed', '7 hours');
SELECT is((SELECT in_sync FROM hub.portal_freshness WHERE business_key = 'SO-P'), true,
	'a portal code that covers the canonical state (Processing for packed) agrees');
SELECT is((SELECT count(*) FROM hub.drift WHERE business_key = 'SO-P' AND system = 'portal')::int, 0,
	'and is no drift');
UPDATE hub.entity_system_state SET code = 'Order received' WHERE business_key = 'SO-P' AND system = 'portal';
SELECT is((SELECT in_sync FROM hub.portal_freshness WHERE business_key = 'SO-P'), false,
	'a code the canonical state does not map to differs');
SELECT is((SELECT count(*) FROM hub.drift WHERE business_key = 'SO-P' AND system = 'portal')::int, 1,
	'and is drift past the portal''s tolerance');

-- ---- order-to-ship cycle time
SELECT pg_temp.ap('order', 'SO-S', 'sap', 'created', '10 hours');
SELECT pg_temp.ap('order', 'SO-S', 'epcis', 'shipped', '4 hours');
SELECT pg_temp.ap('order', 'SO-T', 'sap', 'created', '5 hours');
SELECT pg_temp.ap('order', 'SO-T', 'epcis', 'packed', '4 hours');
SELECT pg_temp.ap('order', 'SO-T', 'epcis', 'shipped', '3 hours');
-- shipped before the window: not counted
SELECT pg_temp.ap('order', 'SO-U', 'sap', 'created', '50 hours');
SELECT pg_temp.ap('order', 'SO-U', 'epcis', 'shipped', '40 hours');
SELECT results_eq($$SELECT count, p50, max FROM hub.cycle_times WHERE measure = 'order_to_ship'$$,
	$$VALUES (2::bigint, interval '4 hours', interval '6 hours')$$,
	'order to ship over the window: the orders shipped in it, first report to shipped');
SELECT is((SELECT p90 FROM hub.cycle_times WHERE measure = 'order_to_ship'), interval '05:36:00',
	'p90 interpolates between the two');
SELECT hub.set_threshold('cycle_time_window', '3 days');
SELECT is((SELECT count FROM hub.cycle_times WHERE measure = 'order_to_ship')::int, 3, 'a wider window takes the older order in');
SELECT is((SELECT count FROM hub.cycle_times WHERE measure = 'shipment_confirmation_latency')::int, 0,
	'no confirmation delivered: count 0');
SELECT is((SELECT p50 FROM hub.cycle_times WHERE measure = 'shipment_confirmation_latency'), NULL,
	'and no percentiles');

-- ---- the site dimension: a mapping's site_path, through both paths of hub.process_inbox
INSERT INTO hub.systems (system, role) VALUES ('site_wms', 'wms');
INSERT INTO hub.status_map (system, lifecycle, code, state) VALUES
	('site_wms', 'order', 'PICKED', 'picked'), ('site_wms', 'order', 'PACKED', 'packed');
SELECT throws_ok($q$SELECT hub.map_inbox('wms.order', 'order', 'site_wms', '$.id', '$.s', site_path => '$.[')$q$,
	'22023', 'invalid jsonpath for site_path: "$.["', 'a site_path that is not a jsonpath is refused');
SELECT hub.map_inbox('wms.order', 'order', 'site_wms', '$.id', '$.s', site_path => '$.warehouse');
SELECT pg_temp.ap('order', k, 'sap', 'released', '10 hours') FROM unnest(ARRAY['SO-W1', 'SO-W2', 'SO-W3', 'SO-W4']) k;
-- W1 and W2 once each (the set-based path); W3 twice in one claim (the
-- per-message path), the second record naming another site; W4 names none
SELECT hub.receive('wms', 'w1', 'wms.order', '{"id": "SO-W1", "s": "PICKED", "warehouse": "DC-NORTH"}');
SELECT hub.receive('wms', 'w2', 'wms.order', '{"id": "SO-W2", "s": "PICKED", "warehouse": 7}');
SELECT hub.receive('wms', 'w3', 'wms.order', '{"id": "SO-W3", "s": "PICKED", "warehouse": "DC-NORTH"}');
SELECT hub.receive('wms', 'w3b', 'wms.order', '{"id": "SO-W3", "s": "PACKED", "warehouse": "DC-SOUTH"}');
SELECT hub.receive('wms', 'w4', 'wms.order', '{"id": "SO-W4", "s": "PICKED"}');
SELECT is((SELECT processed FROM hub.process_inbox(10)), 5, 'the five records are applied');
SELECT results_eq($$SELECT business_key, state, site FROM hub.entity_state WHERE business_key LIKE 'SO-W%' ORDER BY 1$$,
	$$VALUES ('SO-W1', 'picked', 'DC-NORTH'), ('SO-W2', 'picked', '7'), ('SO-W3', 'packed', 'DC-SOUTH'),
			 ('SO-W4', 'picked', NULL)$$,
	'the site a record names is the key''s site, whichever path applied it; the latest wins; none named: NULL');
SELECT hub.receive('wms', 'w5', 'wms.order', '{"id": "SO-W1", "s": "PACKED"}');
SELECT hub.receive('wms', 'w6', 'wms.order', '{"id": "SO-W2", "s": "PACKED", "warehouse": {"id": 1}}');
SELECT hub.process_inbox(10);
SELECT is((SELECT site FROM hub.entity_state WHERE business_key = 'SO-W1'), 'DC-NORTH',
	'a later record naming no site keeps the site');
SELECT is((SELECT state || ' ' || last_error FROM hub.inbox WHERE message_id = 'w6'),
	'retry_wait 22023: site path $."warehouse" finds a JSON object where a value was expected',
	'a site that is no value fails the record (retried), like any field');
SELECT is((SELECT state || ' ' || site FROM hub.entity_state WHERE business_key = 'SO-W2'), 'picked 7',
	'and moves nothing');
SELECT results_eq($$SELECT site, keys FROM hub.backlog_by_site WHERE lifecycle = 'order' AND state = 'packed' ORDER BY site$$,
	$$VALUES ('DC-NORTH', 1::bigint), ('DC-SOUTH', 1), (NULL, 1)$$,
	'the backlog by site counts them (SO-P, packed earlier by a direct report, has no site)');

-- ---- who may read and set
CREATE ROLE bv_reader;
GRANT hub_reader TO bv_reader;
SET ROLE bv_reader;
SELECT lives_ok($$SELECT * FROM hub.orders_awaiting_release, hub.missing_tracking, hub.returns_awaiting_reconciliation,
	hub.backlog_by_site, hub.portal_freshness, hub.release_backlog_by_site, hub.cycle_times, hub.erp_postings_pending, hub.thresholds$$,
	'a reader reads every business view');
SELECT throws_ok($$SELECT hub.set_threshold('order_release', '1 hour')$$, '42501', NULL,
	'a reader cannot set a threshold');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
