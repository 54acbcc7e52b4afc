-- Status mapping: every built-in profile row through hub.map_status, the
-- lookup rules (partner override, qualifier fallback, case, EPCIS URN and
-- IRI forms), every error path, the reverse direction and the portal labels.
\set SHOW_CONTEXT never
SET search_path = public, hub;

-- every built-in row comes back from the C lookup exactly as stored
SELECT count(*) AS builtin_rows,
	count(*) FILTER (WHERE (m.state, m.overlay, m.reason) IS DISTINCT FROM (r.state, r.overlay, r.reason)) AS mismatches
FROM hub.status_map r,
	LATERAL hub.map_status(r.system, r.lifecycle, r.code, nullif(r.qualifier, '')) m
WHERE r.builtin;
SELECT r.system, r.lifecycle, r.code, r.qualifier, m.state, m.overlay, m.reason
FROM hub.status_map r,
	LATERAL hub.map_status(r.system, r.lifecycle, r.code, nullif(r.qualifier, '')) m
WHERE r.builtin
ORDER BY r.system, r.lifecycle, r.code, r.qualifier;

-- qualifier-specific rows win; an unknown qualifier falls back to the generic row
SELECT (map_status('odoo', 'order', 'draft')).state AS picking_draft,
	(map_status('odoo', 'order', 'draft', 'sale.order')).state AS sale_order_draft,
	(map_status('odoo', 'order', 'cancel', 'some_other_step')).state AS fallback;
-- case-insensitive codes, EPCIS URNs and CBV IRIs
SELECT (map_status('x12_214', 'shipment', 'af')).state AS lower_x12,
	(map_status('epcis', 'shipment', 'urn:epcglobal:cbv:bizstep:shipping')).state AS urn,
	(map_status('epcis', 'shipment', 'https://ref.gs1.org/cbv/BizStep-receiving')).state AS iri,
	(map_status('epcis', 'shipment', 'urn:epcglobal:cbv:disp:damaged')).reason AS disp_urn,
	(map_status('EasyPost', 'shipment', ' delivered ')).state AS padded;

-- a partner override wins over the profile default for that partner only
INSERT INTO hub.status_map (system, lifecycle, code, partner, state, note)
VALUES ('x12_214', 'shipment', 'X6', 'ABCD', 'out_for_delivery', 'ABCD uses X6 for final mile');
SELECT (map_status('x12_214', 'shipment', 'X6', partner => 'ABCD')).state AS abcd,
	(map_status('x12_214', 'shipment', 'X6', partner => 'WXYZ')).state AS other_carrier,
	(map_status('x12_214', 'shipment', 'X6')).state AS no_partner;
DELETE FROM hub.status_map WHERE partner = 'ABCD';
SELECT (map_status('x12_214', 'shipment', 'X6', partner => 'ABCD')).state AS abcd_after_delete;

-- informational codes map to nothing
SELECT * FROM map_status('x12_214', 'shipment', 'AG');

-- unknown system, lifecycle and code
SELECT * FROM map_status('x12_214', 'shipment', 'ZZ');
SELECT * FROM map_status('x12_214', 'return', 'AF');
SELECT * FROM map_status('dhl', 'shipment', 'AF');
SELECT try_map_status('x12_214', 'shipment', 'ZZ') IS NULL AS try_unknown_code,
	try_map_status('dhl', 'shipment', 'AF') IS NULL AS try_unknown_system,
	(try_map_status('x12_214', 'shipment', 'D1')).state AS try_known;
-- bad rows are refused
INSERT INTO hub.status_map (system, lifecycle, code, state) VALUES ('acme', 'shipment', 'S', 'shipped');
INSERT INTO hub.status_map (system, lifecycle, code, overlay) VALUES ('acme', 'shipment', 'S', 'paused');
INSERT INTO hub.status_map (system, lifecycle, code, state) VALUES ('acme', 'invoice', 'S', 'paid');

-- the reverse direction
SELECT unmap_status('x12_214', 'shipment', 'delivered') AS x12_delivered,
	unmap_status('netsuite', 'order', 'released') AS ns_released,
	unmap_status('odoo', 'movement', 'reserved') AS odoo_reserved,
	unmap_status('portal', 'order', 'packed') AS portal_packed,
	unmap_status('portal', 'shipment', 'available_for_pickup') AS portal_pickup;
SELECT unmap_status('x12_214', 'shipment', 'planned');

-- portal projection (5.11): overlays win over the state
SELECT s.state, portal_status('order', s.state) AS label
FROM lifecycle_states('order') s ORDER BY s.ordinal;
SELECT portal_status('shipment', 'in_transit', 'exception', 'delayed') AS delayed,
	portal_status('shipment', 'out_for_delivery', 'exception', 'attempt_failed') AS attempted,
	portal_status('shipment', 'in_transit', 'exception', 'damaged') AS other_exception,
	portal_status('order', 'released', 'on_hold', 'credit') AS held,
	portal_status('order', 'shipped', partial => true) AS partial,
	portal_status('return', 'in_transit_back') AS rma;
