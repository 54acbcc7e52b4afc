-- hub.apply_status end to end over the built-in profiles: an order through
-- NetSuite, Odoo and EasyPost codes, and a carrier's X12 214 feed with an
-- estimate, an exception overlay and a late scan arriving after delivery.
BEGIN;
SELECT plan(16);

CREATE FUNCTION pg_temp.ap(lc text, k text, sys text, code text, ago text, q text DEFAULT NULL)
RETURNS hub.apply_result LANGUAGE sql AS $$
	SELECT * FROM hub.apply_status(lc, k, sys, code, now() - ago::interval, q)
$$;

-- order-to-ship: the ERP creates and releases, the WMS allocates, picks, packs and ships
SELECT is((pg_temp.ap('order', 'SO-1', 'netsuite', 'SalesOrd:A', '6 hours')).outcome, 'created', 'NetSuite Pending Approval creates the order');
SELECT is((SELECT exception_reason IS NULL AND on_hold AND on_hold_reason = 'approval' FROM hub.entity_state WHERE business_key = 'SO-1'),
	true, 'Pending Approval sets the on_hold(approval) overlay beside the state');
SELECT is((pg_temp.ap('order', 'SO-1', 'netsuite', 'SalesOrd:B', '5 hours')).state, 'released', 'Pending Fulfillment releases it and clears the hold');
SELECT is((pg_temp.ap('order', 'SO-1', 'odoo', 'assigned', '4 hours', 'outgoing')).state, 'allocated', 'Odoo assigned (WMS) allocates');
SELECT is((pg_temp.ap('order', 'SO-1', 'odoo', 'done', '3 hours', 'internal_pick')).outcome, 'advanced', 'Odoo pick step done advances');
SELECT is((pg_temp.ap('order', 'SO-1', 'odoo', 'done', '2 hours', 'internal_pack')).state, 'packed', 'Odoo pack step done: packed');
SELECT is((pg_temp.ap('order', 'SO-1', 'netsuite', 'ItemShip:C', '90 minutes')).outcome, 'not_owner',
	'the ERP saying shipped is kept but does not move the state the WMS owns');
SELECT is((pg_temp.ap('order', 'SO-1', 'odoo', 'done', '80 minutes', 'outgoing')).state, 'shipped', 'Odoo outgoing done: shipped');
SELECT is((pg_temp.ap('order', 'SO-1', 'easypost', 'in_transit', '1 hour')).state, 'in_transit', 'the carrier moves it in transit');

-- a carrier feed for the shipment
SELECT is((pg_temp.ap('shipment', 'SH-1', 'x12_214', 'XB', '5 hours')).state, 'label_created', 'X12 XB: label created');
SELECT is((pg_temp.ap('shipment', 'SH-1', 'x12_214', 'AF', '4 hours')).state, 'picked_up', 'X12 AF: picked up');
SELECT is((pg_temp.ap('shipment', 'SH-1', 'x12_214', 'AG', '3 hours')).outcome, 'informational', 'X12 AG (estimate) is recorded and changes nothing');
SELECT is((pg_temp.ap('shipment', 'SH-1', 'x12_214', 'SD', '150 minutes')).exception_reason, 'delayed', 'X12 SD raises exception(delayed) beside the state');
SELECT is((pg_temp.ap('shipment', 'SH-1', 'x12_214', 'D1', '1 hour')).state, 'delivered', 'X12 D1: delivered');
SELECT is((pg_temp.ap('shipment', 'SH-1', 'x12_214', 'P1', '2 hours')).state, 'delivered',
	'an older terminal scan arriving after delivery leaves the shipment delivered');
SELECT is((SELECT array_agg(outcome ORDER BY history_id) FROM hub.status_history WHERE business_key = 'SH-1'),
	ARRAY['created', 'advanced', 'informational', 'overlay', 'advanced', 'stale'],
	'every report is in the history, in arrival order');

SELECT * FROM finish();
ROLLBACK;
