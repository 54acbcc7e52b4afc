-- hub.apply_canonical_status: ownership, out-of-order arrival, conflicts,
-- corrections, overlays, history, drift and stale views.  Times are explicit
-- and relative to now() (constant in the transaction).
BEGIN;
SELECT plan(55);
SET search_path = public, hub;

CREATE FUNCTION pg_temp.ap(lc text, k text, sys text, st text, at interval,
						   ov text DEFAULT NULL, rs text DEFAULT NULL,
						   q text DEFAULT NULL, corr boolean DEFAULT false)
RETURNS hub.apply_result LANGUAGE sql AS $$
	SELECT hub.apply_canonical_status(lc, k, sys, coalesce(st, ov || ':' || rs), now() - at,
									  st, ov, rs, q, corr)
$$;

-- ---- an order moving through its owners
SELECT is((pg_temp.ap('order', 'SO1', 'odoo', 'created', '10 hours')).outcome, 'created',
	'first owner report creates the canonical state');
SELECT is(r.outcome || '/' || r.kind || '/' || r.state, 'advanced/advance_with_gap/packed',
	'the WMS (epcis) advances created -> packed as a gap')
FROM pg_temp.ap('order', 'SO1', 'epcis', 'packed', '9 hours') r;
SELECT is(r.outcome || '/' || r.state || '/' || r.owner, 'not_owner/packed/false',
	'a portal report does not move the canonical state')
FROM pg_temp.ap('order', 'SO1', 'portal', 'shipped', '8 hours 30 minutes') r;
SELECT is(state, 'shipped', 'the non-owner report is kept in its per-system row')
FROM hub.entity_system_state WHERE business_key = 'SO1' AND system = 'portal';
SELECT is(r.outcome || '/' || r.kind, 'not_owner/advance',
	'the ERP does not own shipped; the classification is still reported')
FROM pg_temp.ap('order', 'SO1', 'sap', 'shipped', '8 hours 20 minutes') r;
SELECT is(r.outcome || '/' || r.kind || '/' || r.state, 'advanced/advance/shipped',
	'the WMS advances packed -> shipped on a direct edge')
FROM pg_temp.ap('order', 'SO1', 'epcis', 'shipped', '8 hours') r;
SELECT is(r.outcome || '/' || r.state, 'advanced/delivered',
	'the carrier advances shipped -> delivered (gap over in_transit, out_for_delivery)')
FROM pg_temp.ap('order', 'SO1', 'easypost', 'delivered', '2 hours') r;

-- ---- out-of-order arrival
SELECT is(r.outcome || '/' || r.state || '/' || r.kind, 'stale/delivered/stale',
	'an older in_transit scan arriving after delivered leaves the state at delivered')
FROM pg_temp.ap('order', 'SO1', 'easypost', 'in_transit', '5 hours') r;
SELECT is(state || '@' || (now() - occurred_at)::text, 'delivered@02:00:00',
	'the carrier''s per-system row keeps its newest report, not the late one')
FROM hub.entity_system_state WHERE business_key = 'SO1' AND system = 'easypost';
SELECT is(regression_suspect, false, 'an older stale scan is not a regression suspect')
FROM hub.status_history WHERE business_key = 'SO1' ORDER BY history_id DESC LIMIT 1;
SELECT is((pg_temp.ap('order', 'SO1', 'easypost', 'in_transit', '1 hour')).outcome, 'stale',
	'a newer in_transit scan after delivered is stale too');
SELECT is(regression_suspect, true, 'a later-timestamped stale scan is flagged regression_suspect')
FROM hub.status_history WHERE business_key = 'SO1' ORDER BY history_id DESC LIMIT 1;
SELECT is(r.outcome || '/' || r.kind, 'duplicate/duplicate', 'the same state again is a duplicate')
FROM pg_temp.ap('order', 'SO1', 'easypost', 'delivered', '50 minutes') r;
SELECT is(r.outcome || '/' || r.state, 'advanced/closed', 'the ERP closes the order')
FROM pg_temp.ap('order', 'SO1', 'sap', 'closed', '30 minutes') r;
SELECT is(r.outcome || '/' || r.state || '/' || coalesce(r.exception_reason, '-'),
	'conflict/closed/state_conflict', 'cancelled after closed is a conflict and raises the exception overlay')
FROM pg_temp.ap('order', 'SO1', 'sap', 'cancelled', '20 minutes') r;
SELECT is((SELECT count(*) FROM hub.status_conflicts
		   WHERE business_key = 'SO1' AND current_state = 'closed' AND incoming_state = 'cancelled'
			 AND resolved_at IS NULL)::int, 1, 'the conflict is recorded for review');
SELECT is((SELECT history_id FROM hub.status_conflicts WHERE business_key = 'SO1'),
	(SELECT max(history_id) FROM hub.status_history WHERE business_key = 'SO1'),
	'the conflict points at its history row');
SELECT is(hub.resolve_conflict(c.conflict_id, 'ERP cancelled in error; order stays closed'), true,
	'an operator resolves the conflict')
FROM hub.status_conflicts c WHERE c.business_key = 'SO1';
SELECT is(coalesce(e.exception_reason, 'none') || '/' || e.state, 'none/closed',
	'resolving the last open conflict lifts the state_conflict exception')
FROM hub.entity_state e WHERE e.business_key = 'SO1';
SELECT is(hub.resolve_conflict(c.conflict_id, 'again'), false, 'a resolved conflict is not resolved twice')
FROM hub.status_conflicts c WHERE c.business_key = 'SO1';

-- ---- history completeness
SELECT is((SELECT count(*) FROM hub.status_history WHERE business_key = 'SO1')::int, 11,
	'every call on SO1 is in the history');
SELECT is(array_agg(outcome ORDER BY history_id),
	ARRAY['created', 'advanced', 'not_owner', 'not_owner', 'advanced', 'advanced', 'stale',
		  'stale', 'duplicate', 'advanced', 'conflict'],
	'history outcomes in call order')
FROM hub.status_history WHERE business_key = 'SO1';
SELECT throws_ok($$UPDATE hub.status_history SET outcome = 'advanced'$$, '0A000',
	'hub.status_history is append-only', 'history refuses UPDATE');
SELECT throws_ok($$DELETE FROM hub.status_history$$, '0A000',
	'hub.status_history is append-only', 'history refuses DELETE');
SELECT throws_ok($$TRUNCATE hub.status_history CASCADE$$, '0A000',
	'hub.status_history is append-only', 'history refuses TRUNCATE');

-- ---- corrections
SELECT pg_temp.ap('order', 'SO2', 'odoo', 'created', '5 hours');
SELECT pg_temp.ap('order', 'SO2', 'epcis', 'shipped', '4 hours');
SELECT is((pg_temp.ap('order', 'SO2', 'epcis', 'packed', '3 hours')).state, 'shipped',
	'shipped -> packed without the correction flag is stale');
SELECT is(r.outcome || '/' || r.state, 'corrected/packed',
	'void_shipping with correction => true moves shipped -> packed')
FROM pg_temp.ap('order', 'SO2', 'epcis', 'packed', '2 hours', corr => true) r;
SELECT is(r.outcome || '/' || r.state, 'stale/packed',
	'correction => true does not allow a backward step that is not an explicit edge')
FROM pg_temp.ap('order', 'SO2', 'sap', 'created', '1 hour', corr => true) r;

-- ---- Odoo's role depends on the qualifier
SELECT is((pg_temp.ap('order', 'SO3', 'odoo', 'created', '3 hours')).state, 'created', 'odoo as ERP creates');
SELECT is((pg_temp.ap('order', 'SO3', 'odoo', 'packed', '2 hours')).outcome, 'not_owner',
	'odoo sale.order codes (no qualifier) are ERP reports and do not own packed');
SELECT is((pg_temp.ap('order', 'SO3', 'odoo', 'packed', '1 hour', q => 'stock.picking')).outcome, 'advanced',
	'odoo stock.picking codes are WMS reports and move the order to packed');

-- ---- shipments: conflict, overlays
SELECT pg_temp.ap('shipment', 'SH1', 'easypost', 'out_for_delivery', '6 hours');
SELECT is(r.outcome || '/' || r.state || '/' || r.exception_reason, 'overlay/out_for_delivery/attempt_failed',
	'an overlay-only report raises the exception beside the state')
FROM pg_temp.ap('shipment', 'SH1', 'easypost', NULL, '5 hours', 'exception', 'attempt_failed') r;
SELECT is((pg_temp.ap('shipment', 'SH1', 'easypost', 'out_for_delivery', '4 hours')).exception_reason, NULL,
	'a newer out_for_delivery (redelivery) clears the carrier exception');
SELECT is(r.outcome || '/' || r.state, 'advanced/delivered', 'then delivered')
FROM pg_temp.ap('shipment', 'SH1', 'easypost', 'delivered', '3 hours') r;
SELECT is(r.outcome || '/' || r.state || '/' || r.exception_reason, 'conflict/delivered/state_conflict',
	'return_to_sender after delivered is a conflict')
FROM pg_temp.ap('shipment', 'SH1', 'x12_214', 'return_to_sender', '2 hours') r;
SELECT is((pg_temp.ap('shipment', 'SH1', 'easypost', 'delivered', '1 hour')).exception_reason, 'state_conflict',
	'a duplicate does not clear a state_conflict exception');
SELECT is(r.outcome || '/' || r.state, 'informational/delivered',
	'a code mapped to neither state nor overlay (EasyPost unknown) is only recorded')
FROM hub.apply_canonical_status('shipment', 'SH1', 'easypost', 'unknown', now() - interval '30 minutes', NULL) r;
SELECT is(code || '/' || state, 'unknown/delivered',
	'the per-system row keeps the code and the last known state of the system')
FROM hub.entity_system_state WHERE business_key = 'SH1' AND system = 'easypost';

-- on_hold: set by the ERP, cleared by an advance; a portal cannot set it
SELECT pg_temp.ap('order', 'SO4', 'sap', 'created', '5 hours');
SELECT is((pg_temp.ap('order', 'SO4', 'portal', NULL, '4 hours', 'on_hold', 'customer_request')).on_hold, false,
	'a portal (owning no order state) cannot raise an overlay');
SELECT is((pg_temp.ap('order', 'SO4', 'sap', NULL, '3 hours', 'on_hold', 'credit_check')).on_hold, true,
	'the ERP puts the order on hold');
SELECT is((pg_temp.ap('order', 'SO4', 'sap', 'released', '2 hours')).on_hold, false,
	'an advance clears on_hold');

-- ---- errors
SELECT throws_ok($$SELECT pg_temp.ap('parcel', 'X', 'sap', 'created', '1 hour')$$, '22023',
	'unknown lifecycle: "parcel"', 'unknown lifecycle');
SELECT throws_ok($$SELECT pg_temp.ap('order', 'X', 'acme_wms', 'created', '1 hour')$$, '22023',
	'unknown system: "acme_wms"', 'unknown system');
SELECT throws_ok($$SELECT pg_temp.ap('order', 'X', 'sap', 'label_created', '1 hour')$$, '22023',
	'unknown order state: "label_created"', 'a state of another lifecycle');
SELECT throws_ok($$SELECT pg_temp.ap('order', 'X', 'sap', NULL, '1 hour', 'paused', 'x')$$, '22023',
	'unknown overlay: "paused"', 'unknown overlay');

-- ---- drift: the ERP still says created while the WMS moved the order on
SELECT pg_temp.ap('order', 'SO5', 'sap', 'created', '3 hours');
SELECT pg_temp.ap('order', 'SO5', 'epcis', 'shipped', '2 hours');
SELECT pg_temp.ap('order', 'SO6', 'sap', 'created', '3 hours');
SELECT pg_temp.ap('order', 'SO6', 'epcis', 'shipped', '10 minutes');
SELECT is(d.system || '/' || d.system_state || '/' || d.canonical_state || '/' || d.disagreeing_for::text,
	'sap/created/shipped/02:00:00', 'drift lists the lagging ERP with how long it has disagreed')
FROM hub.drift d WHERE d.business_key = 'SO5';
SELECT is((SELECT count(*) FROM hub.drift WHERE business_key = 'SO6')::int, 0,
	'a disagreement within the tolerance is not drift');
UPDATE hub.drift_tolerances SET tolerance = '5 minutes' WHERE lifecycle = 'order' AND role = 'erp';
SELECT is((SELECT count(*) FROM hub.drift WHERE business_key = 'SO6')::int, 1,
	'the tolerance is read from hub.drift_tolerances');

-- ---- stale entities
SELECT pg_temp.ap('order', 'SO7', 'epcis', 'packed', '25 hours');
SELECT pg_temp.ap('order', 'SO8', 'epcis', 'packed', '23 hours');
SELECT pg_temp.ap('order', 'SO9', 'sap', 'cancelled', '300 hours');
SELECT is(s.state || '/' || s.idle_for::text || '/' || s.threshold::text, 'packed/1 day 01:00:00/24:00:00',
	'an order packed for 25 h is stale')
FROM hub.stale_entities s WHERE s.business_key = 'SO7';
SELECT is((SELECT count(*) FROM hub.stale_entities WHERE business_key IN ('SO8', 'SO9'))::int, 0,
	'packed for 23 h, or a terminal state, is not stale');

-- ---- privileges
SELECT ok(has_function_privilege('hub_writer',
	'hub.apply_status(text, text, text, text, timestamptz, text, boolean, text)', 'EXECUTE'),
	'hub_writer may apply statuses');
SELECT ok(NOT has_function_privilege('public',
	'hub.apply_canonical_status(text, text, text, text, timestamptz, text, text, text, text, boolean)', 'EXECUTE'),
	'PUBLIC may not');
SELECT ok(has_table_privilege('hub_reader', 'hub.drift', 'SELECT')
	AND has_table_privilege('hub_admin', 'hub.stale_thresholds', 'UPDATE')
	AND NOT has_table_privilege('hub_reader', 'hub.stale_thresholds', 'UPDATE'),
	'views readable by hub_reader; thresholds writable by hub_admin only');

-- ---- catalog hygiene
SELECT ok(ARRAY['hub.systems'::regclass, 'hub.state_owners'::regclass,
				 'hub.stale_thresholds'::regclass, 'hub.drift_tolerances'::regclass]::oid[]
	<@ (SELECT extconfig FROM pg_extension WHERE extname = 'logistics_hub'),
	'the ownership, role, threshold and tolerance tables are registered for pg_dump');
SELECT is_empty($$
	SELECT c.oid::regclass::text FROM pg_class c
	WHERE c.relnamespace = 'hub'::regnamespace AND c.relkind IN ('r', 'v')
	  AND c.relname IN ('systems', 'state_owners', 'stale_thresholds', 'drift_tolerances',
						'entity_state', 'entity_system_state', 'status_history',
						'status_conflicts', 'drift', 'stale_entities')
	  AND obj_description(c.oid, 'pg_class') IS NULL
	UNION ALL
	SELECT p.oid::regprocedure::text FROM pg_proc p
	WHERE p.pronamespace = 'hub'::regnamespace
	  AND p.proname IN ('apply_status', 'apply_canonical_status', 'classify_transition',
						'lifecycle_states', 'lifecycle_transitions', 'lifecycle_state_valid')
	  AND obj_description(p.oid, 'pg_proc') IS NULL$$,
	'every public lifecycle and entity-state object has a comment');

SELECT * FROM finish();
ROLLBACK;
