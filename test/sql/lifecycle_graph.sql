-- Canonical lifecycles: hub.classify_transition over the full matrix of every
-- lifecycle, checked against the graphs of LOGISTICS.md 5.2-5.5 written out
-- independently below as SQL rows (the C tables are not consulted).
\set SHOW_CONTEXT never
SET search_path = public, hub;

-- The enums have exactly the labels of the issue, in order.
SELECT 'order' AS lifecycle, enum_range(NULL::hub.order_status)::text AS labels
UNION ALL SELECT 'shipment', enum_range(NULL::hub.shipment_status)::text
UNION ALL SELECT 'movement', enum_range(NULL::hub.movement_status)::text
UNION ALL SELECT 'return', enum_range(NULL::hub.return_status)::text
UNION ALL SELECT 'kind', enum_range(NULL::hub.transition_kind)::text;

CREATE TEMP TABLE spec (lc text, f text, t text, back boolean);
INSERT INTO spec
SELECT 'order', f, t, false FROM (VALUES
	('draft','created'), ('created','released'), ('released','allocated'),
	('allocated','picking'), ('picking','picked'), ('picked','packed'),
	('packed','shipped'), ('shipped','in_transit'), ('in_transit','out_for_delivery'),
	('out_for_delivery','delivered'), ('delivered','closed')) v(f, t)
UNION ALL
SELECT 'order', unnest(ARRAY['created','released','allocated','picking','picked','packed']), 'cancelled', false
UNION ALL
SELECT 'order', f, t, true FROM (VALUES
	('allocated','released'), ('picking','allocated'), ('picked','allocated'),
	('packed','picked'), ('shipped','packed')) v(f, t)
UNION ALL
SELECT 'shipment', f, t, false FROM (VALUES
	('planned','label_created'), ('label_created','pickup_arrived'),
	('pickup_arrived','picked_up'), ('picked_up','in_transit'),
	('in_transit','out_for_delivery'), ('out_for_delivery','delivered'),
	('in_transit','available_for_pickup'), ('available_for_pickup','delivered'),
	('out_for_delivery','available_for_pickup'), ('return_to_sender','returned')) v(f, t)
UNION ALL
SELECT 'shipment', unnest(ARRAY['picked_up','in_transit','out_for_delivery','available_for_pickup']), 'return_to_sender', false
UNION ALL
SELECT 'shipment', unnest(ARRAY['planned','label_created','pickup_arrived']), 'cancelled', false
UNION ALL
SELECT 'movement', f, t, false FROM (VALUES
	('planned','waiting_upstream'), ('waiting_upstream','awaiting_stock'),
	('awaiting_stock','partially_reserved'), ('partially_reserved','reserved'),
	('reserved','in_progress'), ('in_progress','done'),
	('planned','awaiting_stock'), ('awaiting_stock','reserved'), ('reserved','done')) v(f, t)
UNION ALL
SELECT 'movement', s::text, 'cancelled', false
FROM unnest(enum_range(NULL::hub.movement_status)) s WHERE s NOT IN ('done', 'cancelled')
UNION ALL
SELECT 'movement', f, 'awaiting_stock', true FROM (VALUES ('reserved'), ('partially_reserved')) v(f)
UNION ALL
SELECT 'return', f, t, false FROM (VALUES
	('requested','authorized'), ('authorized','awaiting_item'),
	('awaiting_item','in_transit_back'), ('in_transit_back','received'),
	('received','inspected'), ('inspected','resolved'), ('resolved','closed'),
	('authorized','received'), ('received','resolved'), ('requested','rejected')) v(f, t)
UNION ALL
SELECT 'return', unnest(ARRAY['requested','authorized','awaiting_item']), 'cancelled', false;

-- The compiled graph lists the same edges (both differences empty).
SELECT l.lc, e.from_state, e.to_state, e.correction
FROM (VALUES ('order'), ('shipment'), ('movement'), ('return')) l(lc),
	 hub.lifecycle_transitions(l.lc) e
EXCEPT SELECT lc, f, t, back FROM spec;
SELECT lc, f, t, back FROM spec
EXCEPT SELECT l.lc, e.from_state, e.to_state, e.correction
FROM (VALUES ('order'), ('shipment'), ('movement'), ('return')) l(lc),
	 hub.lifecycle_transitions(l.lc) e;

-- Expected kind of every (current, incoming, correction) from the spec rows.
CREATE TEMP TABLE matrix AS
WITH RECURSIVE reach(lc, f, t) AS (
	SELECT lc, f, t FROM spec WHERE NOT back
	UNION
	SELECT r.lc, r.f, s.t FROM reach r JOIN spec s ON s.lc = r.lc AND s.f = r.t AND NOT s.back
), states(lc, pos, s) AS (
	SELECT 'order', p, s::text FROM unnest(enum_range(NULL::hub.order_status)) WITH ORDINALITY u(s, p)
	UNION ALL SELECT 'shipment', p, s::text FROM unnest(enum_range(NULL::hub.shipment_status)) WITH ORDINALITY u(s, p)
	UNION ALL SELECT 'movement', p, s::text FROM unnest(enum_range(NULL::hub.movement_status)) WITH ORDINALITY u(s, p)
	UNION ALL SELECT 'return', p, s::text FROM unnest(enum_range(NULL::hub.return_status)) WITH ORDINALITY u(s, p)
)
SELECT a.lc, a.pos AS cpos, a.s AS cur, b.pos AS ipos, b.s AS inc, c.corr,
	CASE
		WHEN a.s = b.s THEN 'duplicate'
		WHEN c.corr AND EXISTS (SELECT FROM spec WHERE lc = a.lc AND f = a.s AND t = b.s AND back) THEN 'advance'
		WHEN EXISTS (SELECT FROM spec WHERE lc = a.lc AND f = a.s AND t = b.s AND NOT back) THEN 'advance'
		WHEN EXISTS (SELECT FROM reach WHERE lc = a.lc AND f = a.s AND t = b.s) THEN 'advance_with_gap'
		WHEN EXISTS (SELECT FROM reach WHERE lc = a.lc AND f = b.s AND t = a.s) THEN 'stale'
		ELSE 'conflict'
	END AS expected,
	CASE a.lc
		WHEN 'order' THEN hub.classify_transition(a.s::hub.order_status, b.s::hub.order_status, c.corr)
		WHEN 'shipment' THEN hub.classify_transition(a.s::hub.shipment_status, b.s::hub.shipment_status, correction => c.corr)
		WHEN 'movement' THEN hub.classify_transition(a.s::hub.movement_status, b.s::hub.movement_status, c.corr)
		WHEN 'return' THEN hub.classify_transition(a.s::hub.return_status, b.s::hub.return_status, c.corr)
	END::text AS actual,
	hub._classify_transition(a.lc, a.s, b.s, c.corr)::text AS by_name
FROM states a JOIN states b USING (lc) CROSS JOIN (VALUES (false), (true)) c(corr);

-- Every pair of every lifecycle agrees with the spec, through both entry points.
SELECT lc, cur, inc, corr, expected, actual, by_name
FROM matrix WHERE actual IS DISTINCT FROM expected OR by_name IS DISTINCT FROM expected;

SELECT lc, count(*) AS pairs,
	count(*) FILTER (WHERE expected = 'duplicate') AS duplicate,
	count(*) FILTER (WHERE expected = 'advance') AS advance,
	count(*) FILTER (WHERE expected = 'advance_with_gap') AS gap,
	count(*) FILTER (WHERE expected = 'stale') AS stale,
	count(*) FILTER (WHERE expected = 'conflict') AS conflict
FROM matrix WHERE NOT corr GROUP BY lc ORDER BY lc;

-- The full matrix, one row per current state, one letter per incoming state
-- in enum order: D duplicate, A advance, G advance_with_gap, S stale,
-- C conflict.
SELECT lc, cur,
	string_agg(CASE actual WHEN 'duplicate' THEN 'D' WHEN 'advance' THEN 'A'
		WHEN 'advance_with_gap' THEN 'G' WHEN 'stale' THEN 'S' ELSE 'C' END, '' ORDER BY ipos) AS incoming
FROM matrix WHERE NOT corr GROUP BY lc, cpos, cur ORDER BY lc, cpos;

-- What correction => true changes: exactly the explicit backward edges.
SELECT lc, cur, inc, m0.actual AS without, m1.actual AS with_correction
FROM matrix m1 JOIN matrix m0 USING (lc, cur, inc)
WHERE m1.corr AND NOT m0.corr AND m1.actual <> m0.actual ORDER BY lc, m1.cpos, m1.ipos;

-- Cases named in the specification.
SELECT hub.classify_transition('delivered'::hub.shipment_status, 'in_transit') AS late_scan,
	   hub.classify_transition('delivered'::hub.shipment_status, 'return_to_sender') AS rts_after_delivered,
	   hub.classify_transition('in_transit'::hub.shipment_status, 'delivered') AS skipped_ofd,
	   hub.classify_transition('out_for_delivery'::hub.shipment_status, 'in_transit') AS ofd_back,
	   hub.classify_transition('cancelled'::hub.order_status, 'shipped') AS cancelled_vs_shipped,
	   hub.classify_transition('shipped'::hub.order_status, 'closed') AS close_unscanned,
	   hub.classify_transition('shipped'::hub.order_status, 'packed') AS void_no_flag,
	   hub.classify_transition('shipped'::hub.order_status, 'packed', correction => true) AS void_flag,
	   hub.classify_transition('shipped'::hub.order_status, 'allocated', correction => true) AS not_an_edge;

SELECT * FROM hub.lifecycle_states('shipment');
SELECT hub.lifecycle_state_valid('order', 'packed') AS ok,
	   hub.lifecycle_state_valid('order', 'label_created') AS wrong_lifecycle,
	   hub.lifecycle_state_valid('parcel', 'planned') AS unknown_lifecycle;
SELECT hub.classify_transition(NULL::hub.order_status, 'created') AS strict_null;

-- Errors.
SELECT hub._classify_transition('parcel', 'planned', 'delivered', false);
SELECT hub._classify_transition('order', 'created', 'teleported', false);
SELECT * FROM hub.lifecycle_states('parcel');
SELECT hub.classify_transition('created'::hub.order_status, 'teleported');
