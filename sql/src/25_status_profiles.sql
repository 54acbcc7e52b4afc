/*
 * 25_status_profiles.sql --- the built-in status profiles (LOGISTICS.md
 * 5.6-5.11): odoo, sap, netsuite, oracle_om, x12_214, easypost, epcis and
 * portal.  Rows are marked builtin; add your own rows (or partner overrides)
 * to hub.status_map and pg_dump keeps them.
 *
 * Code conventions: Odoo codes are the state values, with the qualifier
 * naming the picking step (outgoing, internal_pick, internal_pack, incoming,
 * incoming_return) or the model (sale.order); SAP codes are VBUK status
 * conditions written FIELD=VALUE (WBSTK=C); NetSuite codes are the search
 * filter codes (SalesOrd:B, ItemShip:C); Oracle OM codes are the status
 * names; X12 codes are AT7-01 values; EPCIS codes are CBV business steps or
 * dispositions (the qualifier of an EPCIS business step may carry the
 * disposition).  State NULL and overlay NULL mark an informational code.
 */
INSERT INTO hub.status_map (system, lifecycle, code, qualifier, state, overlay, reason, note, builtin)
SELECT v.system, v.lifecycle, v.code, v.qualifier, v.state, v.overlay, v.reason, v.note, true
FROM (VALUES
	-- Odoo stock.picking.state, order lifecycle (5.6)
	('odoo', 'order', 'draft', '', 'released', NULL, NULL, 'fulfilment document exists, not confirmed'),
	('odoo', 'order', 'waiting', '', 'released', NULL, NULL, NULL),
	('odoo', 'order', 'confirmed', '', 'released', NULL, NULL, 'not yet reserved'),
	('odoo', 'order', 'assigned', '', 'allocated', NULL, NULL, 'outgoing or first internal step'),
	('odoo', 'order', 'done', 'internal_pick', 'picked', NULL, NULL, NULL),
	('odoo', 'order', 'done', 'internal_pack', 'packed', NULL, NULL, NULL),
	('odoo', 'order', 'done', 'outgoing', 'shipped', NULL, NULL, NULL),
	('odoo', 'order', 'cancel', '', 'cancelled', NULL, NULL, 'only when every picking of the order is cancelled'),
	-- Odoo sale.order.state and delivery_status (5.6)
	('odoo', 'order', 'draft', 'sale.order', 'draft', NULL, NULL, 'Quotation'),
	('odoo', 'order', 'sent', 'sale.order', 'draft', NULL, NULL, 'Quotation Sent'),
	('odoo', 'order', 'sale', 'sale.order', 'created', NULL, NULL, 'Sales Order'),
	('odoo', 'order', 'done', 'sale.order', 'closed', NULL, NULL, 'locked, older versions'),
	('odoo', 'order', 'cancel', 'sale.order', 'cancelled', NULL, NULL, NULL),
	('odoo', 'order', 'full', 'sale.order.delivery_status', 'shipped', NULL, NULL, 'at least shipped'),
	('odoo', 'order', 'partial', 'sale.order.delivery_status', NULL, NULL, NULL, 'partial flag only'),
	('odoo', 'order', 'started', 'sale.order.delivery_status', NULL, NULL, NULL, 'partial flag only'),
	('odoo', 'order', 'pending', 'sale.order.delivery_status', NULL, NULL, NULL, 'nothing delivered yet'),
	-- Odoo receipts of returns (5.6)
	('odoo', 'return', 'done', 'incoming_return', 'received', NULL, NULL, 'incoming picking with return_id'),
	('odoo', 'return', 'cancel', 'incoming_return', 'cancelled', NULL, NULL, NULL),
	-- Odoo stock.move / stock.picking, movement lifecycle (5.6)
	('odoo', 'movement', 'draft', '', 'planned', NULL, NULL, NULL),
	('odoo', 'movement', 'waiting', '', 'waiting_upstream', NULL, NULL, NULL),
	('odoo', 'movement', 'confirmed', '', 'awaiting_stock', NULL, NULL, NULL),
	('odoo', 'movement', 'partially_available', '', 'partially_reserved', NULL, NULL, NULL),
	('odoo', 'movement', 'assigned', '', 'reserved', NULL, NULL, NULL),
	('odoo', 'movement', 'done', '', 'done', NULL, NULL, NULL),
	('odoo', 'movement', 'cancel', '', 'cancelled', NULL, NULL, NULL),
	-- SAP SD VBUK status conditions (5.9)
	('sap', 'order', 'GBSTK=A', '', 'created', NULL, NULL, 'with LFSTK=A'),
	('sap', 'order', 'LFSTK=A', '', 'created', NULL, NULL, NULL),
	('sap', 'order', 'LFSTK=B', '', 'released', NULL, NULL, 'delivery exists'),
	('sap', 'order', 'LFSTK=C', '', 'released', NULL, NULL, 'delivery exists'),
	('sap', 'order', 'KOSTK=B', '', 'picking', NULL, NULL, NULL),
	('sap', 'order', 'KOSTK=C', '', 'picked', NULL, NULL, NULL),
	('sap', 'order', 'PKSTK=C', '', 'packed', NULL, NULL, NULL),
	('sap', 'order', 'WBSTK=C', '', 'shipped', NULL, NULL, 'goods issue posted'),
	('sap', 'order', 'FKSTK=C', '', 'closed', NULL, NULL, 'with GBSTK=C'),
	('sap', 'order', 'GBSTK=C', '', 'closed', NULL, NULL, NULL),
	('sap', 'order', 'ABSTK=C', '', 'cancelled', NULL, NULL, 'all items rejected'),
	('sap', 'order', 'CMGST=B', '', NULL, 'on_hold', 'credit', 'credit check not passed'),
	-- NetSuite sales order and item fulfillment (5.9)
	('netsuite', 'order', 'SalesOrd:A', '', 'created', 'on_hold', 'approval', 'Pending Approval'),
	('netsuite', 'order', 'SalesOrd:B', '', 'released', NULL, NULL, 'Pending Fulfillment'),
	('netsuite', 'order', 'SalesOrd:C', '', 'cancelled', NULL, NULL, 'Cancelled'),
	('netsuite', 'order', 'SalesOrd:D', '', 'shipped', NULL, NULL, 'Partially Fulfilled (partial)'),
	('netsuite', 'order', 'SalesOrd:E', '', 'shipped', NULL, NULL, 'Pending Billing/Partially Fulfilled (partial)'),
	('netsuite', 'order', 'SalesOrd:F', '', 'shipped', NULL, NULL, 'Pending Billing'),
	('netsuite', 'order', 'SalesOrd:G', '', 'closed', NULL, NULL, 'Billed'),
	('netsuite', 'order', 'SalesOrd:H', '', 'closed', NULL, NULL, 'Closed'),
	('netsuite', 'order', 'ItemShip:A', '', 'picked', NULL, NULL, 'Picked'),
	('netsuite', 'order', 'ItemShip:B', '', 'packed', NULL, NULL, 'Packed'),
	('netsuite', 'order', 'ItemShip:C', '', 'shipped', NULL, NULL, 'Shipped'),
	-- Oracle E-Business Suite Order Management (5.9)
	('oracle_om', 'order', 'Entered', '', 'draft', NULL, NULL, NULL),
	('oracle_om', 'order', 'Booked', '', 'created', NULL, NULL, NULL),
	('oracle_om', 'order', 'Awaiting Shipping', '', 'released', NULL, NULL, NULL),
	('oracle_om', 'order', 'Ready to Release', '', 'released', NULL, NULL, NULL),
	('oracle_om', 'order', 'Released to Warehouse', '', 'allocated', NULL, NULL, NULL),
	('oracle_om', 'order', 'Picked', '', 'picked', NULL, NULL, NULL),
	('oracle_om', 'order', 'Staged/Pick Confirmed', '', 'picked', NULL, NULL, NULL),
	('oracle_om', 'order', 'Backordered', '', 'released', 'exception', 'backorder', NULL),
	('oracle_om', 'order', 'Shipped', '', 'shipped', NULL, NULL, NULL),
	('oracle_om', 'order', 'Interfaced', '', 'shipped', NULL, NULL, NULL),
	('oracle_om', 'order', 'Closed', '', 'closed', NULL, NULL, NULL),
	('oracle_om', 'order', 'Cancelled', '', 'cancelled', NULL, NULL, NULL),
	-- X12 214 AT7-01 (5.8)
	('x12_214', 'shipment', 'XB', '', 'label_created', NULL, NULL, 'Shipment Acknowledged'),
	('x12_214', 'shipment', 'OO', '', 'label_created', 'exception', 'not_tendered', 'Paperwork Received - Did not Receive Shipment'),
	('x12_214', 'shipment', 'X3', '', 'pickup_arrived', NULL, NULL, 'Arrived at Pick-up Location'),
	('x12_214', 'shipment', 'X8', '', 'pickup_arrived', NULL, NULL, 'Arrived at Pick-up Location Loading Dock'),
	('x12_214', 'shipment', 'CP', '', 'picked_up', NULL, NULL, 'Completed Loading at Pick-up Location'),
	('x12_214', 'shipment', 'AF', '', 'picked_up', NULL, NULL, 'Carrier Departed Pick-up Location with Shipment'),
	('x12_214', 'shipment', 'AM', '', 'picked_up', NULL, NULL, 'Loaded on Truck'),
	('x12_214', 'shipment', 'L1', '', 'picked_up', NULL, NULL, 'Loading'),
	('x12_214', 'shipment', 'X4', '', 'in_transit', NULL, NULL, 'Arrived at Terminal Location'),
	('x12_214', 'shipment', 'P1', '', 'in_transit', NULL, NULL, 'Departed Terminal Location'),
	('x12_214', 'shipment', 'R1', '', 'in_transit', NULL, NULL, 'Received from Prior Carrier'),
	('x12_214', 'shipment', 'J1', '', 'in_transit', NULL, NULL, 'Delivered to Connecting Line (interline hand-off)'),
	('x12_214', 'shipment', 'BA', '', 'in_transit', NULL, NULL, 'Connecting Line or Cartage Pick-up'),
	('x12_214', 'shipment', 'AR', '', 'in_transit', NULL, NULL, 'Rail Arrival at Destination Intermodal Ramp'),
	('x12_214', 'shipment', 'RL', '', 'in_transit', NULL, NULL, 'Rail Departure from Origin Intermodal Ramp'),
	('x12_214', 'shipment', 'AN', '', 'in_transit', NULL, NULL, 'Diverted to Air Carrier'),
	('x12_214', 'shipment', 'K1', '', 'in_transit', NULL, NULL, 'Arrived at Customs'),
	('x12_214', 'shipment', 'BC', '', 'in_transit', NULL, NULL, 'Storage in Transit'),
	('x12_214', 'shipment', 'I1', '', 'in_transit', NULL, NULL, 'In-Gate'),
	('x12_214', 'shipment', 'X6', '', 'in_transit', NULL, NULL, 'En Route to Delivery Location'),
	('x12_214', 'shipment', 'AV', '', 'in_transit', NULL, NULL, 'Available for Delivery (at destination terminal)'),
	('x12_214', 'shipment', 'AJ', '', 'out_for_delivery', NULL, NULL, 'Tendered for Delivery'),
	('x12_214', 'shipment', 'X1', '', 'out_for_delivery', NULL, NULL, 'Arrived at Delivery Location'),
	('x12_214', 'shipment', 'X5', '', 'out_for_delivery', NULL, NULL, 'Arrived at Delivery Location Loading Dock'),
	('x12_214', 'shipment', 'S1', '', 'out_for_delivery', NULL, NULL, 'Trailer Spotted at Consignee''s Location'),
	('x12_214', 'shipment', 'AW', '', 'available_for_pickup', NULL, NULL, 'Shipment Available for Pick-up'),
	('x12_214', 'shipment', 'D1', '', 'delivered', NULL, NULL, 'Completed Unloading at Delivery Location'),
	('x12_214', 'shipment', 'CD', '', 'delivered', NULL, NULL, 'Carrier Departed Delivery Location'),
	('x12_214', 'shipment', 'CB', '', 'delivered', NULL, NULL, 'Completed Shipment'),
	('x12_214', 'shipment', 'PA', '', 'delivered', NULL, NULL, 'Partial Shipment (partial)'),
	('x12_214', 'shipment', 'AG', '', NULL, NULL, NULL, 'Estimated Delivery: ETA only'),
	('x12_214', 'shipment', 'X2', '', NULL, NULL, NULL, 'Estimated arrival at consignee: ETA only'),
	('x12_214', 'shipment', 'B6', '', NULL, NULL, NULL, 'Estimated to arrive at terminal: ETA only'),
	('x12_214', 'shipment', 'C1', '', NULL, NULL, NULL, 'Estimated to depart terminal: ETA only'),
	('x12_214', 'shipment', 'SD', '', NULL, 'exception', 'delayed', 'Shipment Delayed'),
	('x12_214', 'shipment', 'AH', '', NULL, 'exception', 'attempt_failed', 'Attempted Delivery'),
	('x12_214', 'shipment', 'AP', '', NULL, 'exception', 'attempt_failed', 'Delivery Not Completed'),
	('x12_214', 'shipment', 'A7', '', NULL, 'exception', 'refused', 'Refused by Consignee'),
	('x12_214', 'shipment', 'A9', '', NULL, 'exception', 'damaged', 'Shipment Damaged'),
	('x12_214', 'shipment', 'PR', '', NULL, 'exception', 'customs_hold', 'U.S. Customs Hold at In-Bond Location'),
	('x12_214', 'shipment', 'AI', '', NULL, 'exception', 'reconsigned', 'Shipment has been Reconsigned'),
	('x12_214', 'shipment', 'A3', '', 'returned', NULL, NULL, 'Shipment Returned to Shipper'),
	('x12_214', 'shipment', 'CA', '', 'cancelled', NULL, NULL, 'Shipment Cancelled'),
	-- EasyPost Tracker.status (5.7)
	('easypost', 'shipment', 'unknown', '', NULL, NULL, NULL, 'no change; event recorded'),
	('easypost', 'shipment', 'pre_transit', '', 'label_created', NULL, NULL, NULL),
	('easypost', 'shipment', 'in_transit', '', 'in_transit', NULL, NULL, NULL),
	('easypost', 'shipment', 'out_for_delivery', '', 'out_for_delivery', NULL, NULL, NULL),
	('easypost', 'shipment', 'available_for_pickup', '', 'available_for_pickup', NULL, NULL, NULL),
	('easypost', 'shipment', 'delivered', '', 'delivered', NULL, NULL, NULL),
	('easypost', 'shipment', 'return_to_sender', '', 'return_to_sender', NULL, NULL, NULL),
	('easypost', 'shipment', 'failure', '', NULL, 'exception', 'attempt_failed', NULL),
	('easypost', 'shipment', 'cancelled', '', 'cancelled', NULL, NULL, 'valid only before picked_up'),
	('easypost', 'shipment', 'error', '', NULL, 'exception', 'tracking_error', NULL),
	('easypost', 'order', 'unknown', '', NULL, NULL, NULL, 'no order effect'),
	('easypost', 'order', 'pre_transit', '', 'packed', NULL, NULL, 'at least packed'),
	('easypost', 'order', 'in_transit', '', 'in_transit', NULL, NULL, 'implies shipped'),
	('easypost', 'order', 'out_for_delivery', '', 'out_for_delivery', NULL, NULL, NULL),
	('easypost', 'order', 'available_for_pickup', '', 'out_for_delivery', NULL, NULL, 'portal: Ready for pickup'),
	('easypost', 'order', 'delivered', '', 'delivered', NULL, NULL, 'once all shipments are delivered'),
	('easypost', 'order', 'return_to_sender', '', NULL, 'exception', 'returning', NULL),
	('easypost', 'order', 'failure', '', NULL, 'exception', 'attempt_failed', NULL),
	('easypost', 'order', 'cancelled', '', NULL, NULL, NULL, 'no order effect (label void)'),
	('easypost', 'order', 'error', '', NULL, NULL, NULL, 'no order effect'),
	-- EPCIS / CBV business steps and dispositions (5.10)
	('epcis', 'order', 'picking', '', 'picking', NULL, NULL, NULL),
	('epcis', 'order', 'packing', '', 'packed', NULL, NULL, 'AggregationEvent ADD'),
	('epcis', 'order', 'staging_outbound', '', 'packed', NULL, NULL, 'with container_closed'),
	('epcis', 'order', 'shipping', '', 'shipped', NULL, NULL, NULL),
	('epcis', 'order', 'departing', '', 'shipped', NULL, NULL, NULL),
	('epcis', 'order', 'void_shipping', '', 'packed', NULL, NULL, 'correction shipped -> packed: apply with correction => true'),
	('epcis', 'order', 'holding', '', NULL, 'on_hold', 'holding', NULL),
	('epcis', 'shipment', 'loading', '', 'picked_up', NULL, NULL, NULL),
	('epcis', 'shipment', 'shipping', '', 'in_transit', NULL, NULL, NULL),
	('epcis', 'shipment', 'departing', '', 'in_transit', NULL, NULL, NULL),
	('epcis', 'shipment', 'transporting', '', 'in_transit', NULL, NULL, NULL),
	('epcis', 'shipment', 'in_transit', '', 'in_transit', NULL, NULL, 'disposition'),
	('epcis', 'shipment', 'arriving', '', 'out_for_delivery', NULL, NULL, 'at consignee, not yet accepted'),
	('epcis', 'shipment', 'accepting', '', 'delivered', NULL, NULL, NULL),
	('epcis', 'shipment', 'receiving', '', 'delivered', NULL, NULL, NULL),
	('epcis', 'shipment', 'holding', '', NULL, 'on_hold', 'holding', NULL),
	('epcis', 'shipment', 'damaged', '', NULL, 'exception', 'damaged', 'disposition'),
	('epcis', 'shipment', 'non_conformant', '', NULL, 'exception', 'damaged', 'disposition'),
	('epcis', 'movement', 'receiving', '', 'done', NULL, NULL, 'receiver''s movement'),
	('epcis', 'movement', 'destroying', '', 'done', NULL, NULL, 'kind = scrap'),
	('epcis', 'movement', 'decommissioning', '', 'done', NULL, NULL, 'kind = scrap'),
	('epcis', 'return', 'receiving', 'returned', 'received', NULL, NULL, 'receiving + disposition returned'),
	('epcis', 'return', 'inspecting', '', 'inspected', NULL, NULL, NULL),
	('epcis', 'return', 'returned', '', 'received', NULL, NULL, 'disposition'),
	-- portal labels (5.11), read back when a portal reports what it shows
	('portal', 'order', 'Order received', '', 'created', NULL, NULL, NULL),
	('portal', 'order', 'Processing', '', 'released', NULL, NULL, 'covers released..packed'),
	('portal', 'order', 'Shipped / In transit', '', 'shipped', NULL, NULL, NULL),
	('portal', 'order', 'Out for delivery', '', 'out_for_delivery', NULL, NULL, NULL),
	('portal', 'order', 'Delivered', '', 'delivered', NULL, NULL, NULL),
	('portal', 'order', 'Cancelled', '', 'cancelled', NULL, NULL, NULL),
	('portal', 'order', 'On hold', '', NULL, 'on_hold', 'portal', NULL),
	('portal', 'order', 'Delayed', '', NULL, 'exception', 'delayed', NULL),
	('portal', 'shipment', 'Label created', '', 'label_created', NULL, NULL, NULL),
	('portal', 'shipment', 'Shipped / In transit', '', 'in_transit', NULL, NULL, NULL),
	('portal', 'shipment', 'Out for delivery', '', 'out_for_delivery', NULL, NULL, NULL),
	('portal', 'shipment', 'Ready for pickup', '', 'available_for_pickup', NULL, NULL, NULL),
	('portal', 'shipment', 'Delivered', '', 'delivered', NULL, NULL, NULL),
	('portal', 'return', 'Return requested', '', 'requested', NULL, NULL, NULL),
	('portal', 'return', 'Return in transit', '', 'in_transit_back', NULL, NULL, NULL),
	('portal', 'return', 'Refunded', '', 'resolved', NULL, NULL, NULL)
) AS v(system, lifecycle, code, qualifier, state, overlay, reason, note);

/*
 * The reverse direction: for each system and canonical state, the code to
 * send.  Portal codes are the labels of hub.portal_status; for the other
 * systems the first mapped code, preferring generic rows over
 * qualifier-specific ones and plain states over overlays.
 */
INSERT INTO hub.status_unmap (system, lifecycle, state, code, builtin)
SELECT 'portal', l.lifecycle, s.state, hub.portal_status(l.lifecycle, s.state), true
FROM (VALUES ('order'), ('shipment'), ('return')) AS l(lifecycle),
	LATERAL hub.lifecycle_states(l.lifecycle) AS s(state)
WHERE hub.portal_status(l.lifecycle, s.state) IS NOT NULL;

INSERT INTO hub.status_unmap (system, lifecycle, state, code, builtin)
SELECT DISTINCT ON (system, lifecycle, state) system, lifecycle, state, code, true
FROM hub.status_map
WHERE builtin AND state IS NOT NULL AND partner = '' AND system <> 'portal'
ORDER BY system, lifecycle, state, qualifier <> '', overlay IS NOT NULL, code;
