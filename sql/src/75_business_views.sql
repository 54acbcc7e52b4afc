/*
 * 75_business_views.sql --- the questions an analyst and a dashboard ask of
 * the hub (LOGISTICS seeds: "order synchronization lag, inventory update
 * success rates, shipment event throughput, backlog by warehouse, and
 * portal status freshness"), one view each, with their thresholds as
 * configuration (hub.thresholds, 68_thresholds.sql).
 *
 * Cost: each view reads what answers it and nothing more.  The views over
 * entity state read hub.entity_state once (no index on its state: an index
 * on state would make every advance a non-HOT update, paid by the flow);
 * those over deliveries read only the open ones (deliveries_open_key_idx);
 * those over attempts read only their window, through attempts_at_idx
 * (70_operations.sql; the window's bound is known at executor start, so
 * partition pruning leaves the other days untouched);
 * order-to-ship reads the shipped reports of its window through a partial
 * index of hub.status_history that only those reports enter.
 * test/bench/views.sh measures them at a million entities and attempts.
 */

-- ---------------------------------------------------------------- entity views

CREATE VIEW hub.orders_awaiting_release AS
SELECT e.business_key AS order_key, e.state, e.site, e.last_advanced_at AS since,
	   now() - e.last_advanced_at AS waiting_for, t.value AS threshold
FROM hub.entity_state e
CROSS JOIN (SELECT x.value FROM hub.thresholds x WHERE x.name = 'order_release') t
WHERE e.lifecycle = 'order' AND e.state IN ('draft', 'created')
  AND e.last_advanced_at < now() - t.value;
COMMENT ON VIEW hub.orders_awaiting_release IS
'Orders created (or draft) and not released to a warehouse within the threshold order_release (hub.thresholds), with their site and how long they have waited.';

CREATE VIEW hub.release_backlog_by_site AS
SELECT e.site, count(*) AS orders, min(e.last_advanced_at) AS oldest_since,
	   now() - min(e.last_advanced_at) AS oldest_waiting_for,
	   count(*) FILTER (WHERE e.last_advanced_at < now() - t.value) AS late
FROM hub.entity_state e
CROSS JOIN (SELECT x.value FROM hub.thresholds x WHERE x.name = 'order_release') t
WHERE e.lifecycle = 'order' AND e.state IN ('draft', 'created')
GROUP BY e.site;
COMMENT ON VIEW hub.release_backlog_by_site IS
'Orders waiting for warehouse release, by site (NULL: no mapping named one): how many, the oldest, and how many are past the threshold order_release.';

CREATE VIEW hub.missing_tracking AS
SELECT e.business_key AS shipment_key, e.site, e.state_system AS labelled_by,
	   e.last_advanced_at AS label_at, now() - e.last_advanced_at AS without_scan_for,
	   t.value AS threshold, e.exception_reason
FROM hub.entity_state e
CROSS JOIN (SELECT x.value FROM hub.thresholds x WHERE x.name = 'carrier_scan') t
WHERE e.lifecycle = 'shipment' AND e.state = 'label_created'
  AND e.last_advanced_at < now() - t.value;
COMMENT ON VIEW hub.missing_tracking IS
'Shipments with a label and no carrier scan since for longer than the threshold carrier_scan (hub.thresholds): missing tracking events.';

CREATE VIEW hub.returns_awaiting_reconciliation AS
SELECT e.business_key AS return_key, e.state, e.site, e.last_advanced_at AS since,
	   now() - e.last_advanced_at AS waiting_for, t.value AS threshold,
	   e.last_advanced_at < now() - t.value AS overdue
FROM hub.entity_state e
CROSS JOIN (SELECT x.value FROM hub.thresholds x WHERE x.name = 'return_reconciliation') t
WHERE e.lifecycle = 'return' AND e.state IN ('received', 'inspected');
COMMENT ON VIEW hub.returns_awaiting_reconciliation IS
'Returns received or inspected and not yet resolved (refunded, credited) by the ERP: waiting for financial reconciliation, since when, and overdue past the threshold return_reconciliation.';

CREATE VIEW hub.backlog_by_site AS
SELECT e.lifecycle, e.site, e.state, count(*) AS keys, min(e.last_advanced_at) AS oldest_since,
	   now() - min(e.last_advanced_at) AS oldest_age,
	   count(*) FILTER (WHERE e.on_hold) AS on_hold,
	   count(*) FILTER (WHERE e.exception_reason IS NOT NULL) AS exceptions
FROM hub.entity_state e
JOIN (SELECT l, s.state FROM unnest(ARRAY['order', 'shipment', 'movement', 'return']) l,
	  LATERAL hub.lifecycle_states(l) s WHERE NOT s.terminal) o ON o.l = e.lifecycle AND o.state = e.state
GROUP BY e.lifecycle, e.site, e.state;
COMMENT ON VIEW hub.backlog_by_site IS
'Open keys (in a state that is not terminal) by lifecycle, site and state: how many, the oldest since its last advance, how many are on hold or in exception.';

/*
 * (A portal's coarser code agrees with the canonical state when it is the
 * code the state maps to in the portal's vocabulary, as hub.drift counts
 * it: a join of hub.status_unmap.)
 */
CREATE VIEW hub.portal_freshness AS
SELECT v.lifecycle, v.business_key, v.canonical_state, v.canonical_since, v.portal, v.portal_code,
	   v.portal_state, v.portal_told_at, v.in_sync,
	   CASE WHEN NOT v.in_sync THEN v.since END AS differs_since,
	   CASE WHEN NOT v.in_sync THEN now() - v.since END AS differs_for,
	   NOT v.in_sync AND now() - v.since > t.value AS overdue
FROM (
	SELECT e.lifecycle, e.business_key, e.state AS canonical_state, e.state_occurred_at AS canonical_since,
		   s.system AS portal, s.code AS portal_code, s.state AS portal_state, s.received_at AS portal_told_at,
		   coalesce(s.state = e.state, false) OR coalesce(u.code = s.code, false) AS in_sync,
		   greatest(e.state_occurred_at, s.state_since) AS since
	FROM hub.entity_state e
	JOIN hub.entity_system_state s USING (lifecycle, business_key)
	LEFT JOIN hub.status_unmap u ON u.system = lower(s.system) AND u.lifecycle = e.lifecycle AND u.state = e.state
	WHERE s.role = 'portal' AND e.state IS NOT NULL
) v
CROSS JOIN (SELECT x.value FROM hub.thresholds x WHERE x.name = 'portal_freshness') t;
COMMENT ON VIEW hub.portal_freshness IS
'Per key and portal: what the portal last reported showing (hub.entity_system_state of a system of role portal) against the canonical state, whether they agree, since when and for how long they differ, and overdue past the threshold portal_freshness.';

-- ---------------------------------------------------------------- posting to the ERP

/*
 * What an ERP is waiting for: inventory adjustments (inventory.adjusted,
 * movement.done) and shipment confirmations (order.shipped,
 * shipment.dispatched) not yet delivered to an endpoint of kind erp.
 */
CREATE FUNCTION hub._erp_posting_kind(event_type text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN event_type IN ('inventory.adjusted', 'movement.done') THEN 'inventory_adjustment'
				WHEN event_type IN ('order.shipped', 'shipment.dispatched') THEN 'shipment_confirmation' END
$$;
COMMENT ON FUNCTION hub._erp_posting_kind(text) IS
'API: Private. inventory_adjustment for inventory.adjusted and movement.done, shipment_confirmation for order.shipped and shipment.dispatched, else NULL.';

CREATE VIEW hub.erp_postings_pending AS
SELECT en.name AS endpoint, hub._erp_posting_kind(o.event_type) AS kind, o.event_id, o.event_type,
	   o.aggregate_id, o.occurred_at, now() - o.occurred_at AS waiting_for, d.state, d.attempts,
	   d.last_error, now() - o.occurred_at > t.value AS overdue
FROM hub.deliveries d
JOIN hub.endpoints en ON en.endpoint_id = d.endpoint_id
CROSS JOIN LATERAL unnest(coalesce(d.batch_events, ARRAY[d.event_id])) b(event_id)
JOIN hub.outbox o ON o.event_id = b.event_id
CROSS JOIN (SELECT x.value FROM hub.thresholds x WHERE x.name = 'erp_posting') t
WHERE d.state NOT IN ('delivered', 'skipped') AND en.kind = 'erp'
  AND hub._erp_posting_kind(o.event_type) IS NOT NULL;
COMMENT ON VIEW hub.erp_postings_pending IS
'Inventory adjustments (inventory.adjusted, movement.done) and shipment confirmations (order.shipped, shipment.dispatched) not yet delivered to an endpoint of kind erp: how long since the event occurred, the delivery''s state, attempts and last error, overdue past the threshold erp_posting.';

-- ---------------------------------------------------------------- cycle times

-- only an order's shipped reports that moved it enter this index
CREATE INDEX status_history_shipped_idx ON hub.status_history (occurred_at)
	WHERE lifecycle = 'order' AND new_state = 'shipped' AND outcome IN ('created', 'advanced', 'corrected');

CREATE VIEW hub.cycle_times AS
WITH w AS (SELECT x.value FROM hub.thresholds x WHERE x.name = 'cycle_time_window'),
ship AS (
	SELECT pg_catalog.date_part('epoch', h.occurred_at - f.occurred_at) AS s
	FROM hub.status_history h
	CROSS JOIN LATERAL (SELECT h0.occurred_at FROM hub.status_history h0
						WHERE h0.lifecycle = 'order' AND h0.business_key = h.business_key
						ORDER BY h0.history_id LIMIT 1) f
	WHERE h.lifecycle = 'order' AND h.new_state = 'shipped' AND h.outcome IN ('created', 'advanced', 'corrected')
	  AND h.occurred_at > now() - (SELECT w.value FROM w)
), conf AS (
	SELECT pg_catalog.date_part('epoch', a.at - o.occurred_at) AS s
	FROM hub.attempts a
	JOIN hub.deliveries d ON d.delivery_id = a.delivery_id
	JOIN hub.endpoints en ON en.endpoint_id = d.endpoint_id
	CROSS JOIN LATERAL unnest(CASE WHEN a.group_event_id IS NOT NULL THEN ARRAY[a.group_event_id]
								   ELSE coalesce(d.batch_events, ARRAY[d.event_id]) END) b(event_id)
	JOIN hub.outbox o ON o.event_id = b.event_id
	WHERE a.at > now() - (SELECT w.value FROM w) AND a.outcome = 'delivered' AND en.kind = 'erp'
	  AND hub._erp_posting_kind(o.event_type) = 'shipment_confirmation'
)
SELECT m.measure, (SELECT w.value FROM w) AS "window", m.n AS count,
	   pg_catalog.make_interval(secs => m.p[1]) AS p50, pg_catalog.make_interval(secs => m.p[2]) AS p90,
	   pg_catalog.make_interval(secs => m.p[3]) AS p95, pg_catalog.make_interval(secs => m.p[4]) AS p99,
	   pg_catalog.make_interval(secs => m.mx) AS max
FROM (
	SELECT 'order_to_ship' AS measure, count(*) AS n, max(s) AS mx,
		   percentile_cont(ARRAY[0.5, 0.9, 0.95, 0.99]) WITHIN GROUP (ORDER BY s) AS p
	FROM ship
	UNION ALL
	SELECT 'shipment_confirmation_latency', count(*), max(s),
		   percentile_cont(ARRAY[0.5, 0.9, 0.95, 0.99]) WITHIN GROUP (ORDER BY s)
	FROM conf
) m;
COMMENT ON VIEW hub.cycle_times IS
'Percentiles (50, 90, 95, 99, max) over the window cycle_time_window (hub.thresholds) of order_to_ship (an order''s first report to its shipped report, for orders shipped in the window, by source times) and shipment_confirmation_latency (a shipment confirmation''s occurrence at the warehouse to its delivery to an ERP endpoint, for deliveries in the window). NULL percentiles when the window has none.';

-- ---------------------------------------------------------------- privileges

REVOKE EXECUTE ON FUNCTION hub._erp_posting_kind(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub._erp_posting_kind(text) TO hub_reader;
GRANT SELECT ON hub.orders_awaiting_release, hub.release_backlog_by_site,
	hub.missing_tracking, hub.returns_awaiting_reconciliation, hub.backlog_by_site, hub.portal_freshness,
	hub.erp_postings_pending, hub.cycle_times TO hub_reader;
