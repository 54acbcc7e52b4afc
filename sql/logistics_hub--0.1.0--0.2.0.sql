-- sql/logistics_hub--0.1.0--0.2.0.sql: the step from 0.1.0 to 0.2.0, as released.
-- Never edited again: a later change is a step of its own
-- (sql/logistics_hub--0.2.0--0.3.0.sql) and a change of sql/src/.

\echo Use "ALTER EXTENSION logistics_hub UPDATE TO '0.2.0'" to load this file. \quit

-- ---- 0.2.0: 05_roles.sql ----
/*
 * Roles of logistics_hub (created once per cluster; kept on DROP EXTENSION,
 * as roles are global objects):
 *   hub_reader  read the views (sync state, drift, dead letters); never secrets
 *   hub_writer  publish events and receive inbound messages; apply statuses
 *   hub_admin   endpoints, secrets, mappings, replay, skip; member of both
 *   hub_worker  what the background workers connect as (the setting
 *               logistics_hub.worker_role): no superuser, no membership,
 *               only the grants of the queue functions and tables they
 *               use (90_privileges.sql).  LOGIN because PostgreSQL 15 lets
 *               a background worker connect only as a role that may log in;
 *               it has no password, so no client can log in as it unless
 *               pg_hba.conf trusts it.
 * Grant the first three to login roles: GRANT hub_writer TO app_user;
 */
DO $$
DECLARE
	r text;
BEGIN
	FOREACH r IN ARRAY ARRAY['hub_reader', 'hub_writer', 'hub_admin'] LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
			EXECUTE format('CREATE ROLE %I NOLOGIN', r);
		END IF;
	END LOOP;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'hub_worker') THEN
		CREATE ROLE hub_worker LOGIN NOINHERIT;
	END IF;
END
$$;
GRANT hub_reader, hub_writer TO hub_admin;
GRANT USAGE ON SCHEMA hub TO hub_reader, hub_writer, hub_admin;
/*
 * The identifier types (hub.gtin, hub.sscc, hub.gln, hub.container_no)
 * are for everyone: a role outside the hub_* roles that stores one must be
 * able to name the type and compare two (its operators are looked up in
 * this schema).  USAGE lends nothing else: every function of the
 * extension is revoked from PUBLIC except the pure functions of their
 * arguments (the types' I/O, operators and checks), no table, view or
 * sequence has a PUBLIC grant, and nobody but the owner may create here
 * (test/pgtap/privileges.sql and security_matrix.sql pin all of it).
 */
GRANT USAGE ON SCHEMA hub TO PUBLIC;

-- ---- 0.2.0: 10_lifecycle.sql ----
/*
 * 10_lifecycle.sql --- canonical lifecycles (LOGISTICS.md 5.2-5.5).
 *
 * One enum per lifecycle, labels in progress order, and
 * hub.classify_transition(current, incoming [, correction]) for each,
 * implemented in C (extension/lifecycle.c) over precomputed reachability
 * bitmasks.  The kinds:
 *   duplicate         incoming = current (idempotent repeat)
 *   advance           a direct edge of the graph, or, with correction => true,
 *                     one of the explicit backward edges of section 5
 *   advance_with_gap  reachable forward but skipping states (carriers often
 *                     skip out_for_delivery; an ERP closing a shipped order)
 *   stale             incoming is an earlier state on a path to current:
 *                     a late or older report; keep it, do not move back
 *   conflict          neither: incomparable states (delivered vs
 *                     return_to_sender, cancelled vs shipped) or a backward
 *                     step without correction => true
 * Overlays (on_hold, exception with a reason) are not states; they live
 * beside the state in hub.entity_state.
 */

CREATE TYPE hub.order_status AS ENUM (
	'draft', 'created', 'released', 'allocated', 'picking', 'picked', 'packed',
	'shipped', 'in_transit', 'out_for_delivery', 'delivered', 'closed', 'cancelled');
COMMENT ON TYPE hub.order_status IS
'Canonical order lifecycle (LOGISTICS.md 5.2): draft -> created -> released -> allocated -> picking -> picked -> packed -> shipped -> in_transit -> out_for_delivery -> delivered -> closed; created..packed -> cancelled. Terminal: closed, cancelled.';

CREATE TYPE hub.shipment_status AS ENUM (
	'planned', 'label_created', 'pickup_arrived', 'picked_up', 'in_transit',
	'out_for_delivery', 'available_for_pickup', 'delivered', 'return_to_sender',
	'returned', 'cancelled');
COMMENT ON TYPE hub.shipment_status IS
'Canonical parcel/load lifecycle (LOGISTICS.md 5.3). Terminal: delivered, returned, cancelled; delivered vs return_to_sender is a conflict.';

CREATE TYPE hub.movement_status AS ENUM (
	'planned', 'waiting_upstream', 'awaiting_stock', 'partially_reserved',
	'reserved', 'in_progress', 'done', 'cancelled');
COMMENT ON TYPE hub.movement_status IS
'Canonical inventory movement (stock move / transfer line) lifecycle (LOGISTICS.md 5.4). Terminal: done, cancelled.';

CREATE TYPE hub.return_status AS ENUM (
	'requested', 'authorized', 'awaiting_item', 'in_transit_back', 'received',
	'inspected', 'resolved', 'closed', 'rejected', 'cancelled');
COMMENT ON TYPE hub.return_status IS
'Canonical return (RMA) lifecycle (LOGISTICS.md 5.5). Terminal: closed, rejected, cancelled.';

CREATE TYPE hub.transition_kind AS ENUM (
	'duplicate', 'advance', 'advance_with_gap', 'stale', 'conflict');
COMMENT ON TYPE hub.transition_kind IS
'How an incoming state relates to the current one: duplicate (same state), advance (direct edge, or explicit correction when asked), advance_with_gap (reachable forward, skipping states), stale (an earlier state: late report, not applied), conflict (incomparable, e.g. leaving a terminal state sideways).';

CREATE FUNCTION hub.classify_transition(current hub.order_status, incoming hub.order_status,
										correction boolean DEFAULT false)
RETURNS hub.transition_kind
AS 'MODULE_PATHNAME', 'hub_classify_order_transition'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION hub.classify_transition(current hub.shipment_status, incoming hub.shipment_status,
										correction boolean DEFAULT false)
RETURNS hub.transition_kind
AS 'MODULE_PATHNAME', 'hub_classify_shipment_transition'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION hub.classify_transition(current hub.movement_status, incoming hub.movement_status,
										correction boolean DEFAULT false)
RETURNS hub.transition_kind
AS 'MODULE_PATHNAME', 'hub_classify_movement_transition'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION hub.classify_transition(current hub.return_status, incoming hub.return_status,
										correction boolean DEFAULT false)
RETURNS hub.transition_kind
AS 'MODULE_PATHNAME', 'hub_classify_return_transition'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION hub.classify_transition(hub.order_status, hub.order_status, boolean) IS
'Classify an order status report against the current state: duplicate, advance, advance_with_gap, stale or conflict. correction => true turns the explicit backward edges allocated->released, picking|picked->allocated, packed->picked and shipped->packed into advance.';
COMMENT ON FUNCTION hub.classify_transition(hub.shipment_status, hub.shipment_status, boolean) IS
'Classify a shipment status report against the current state: duplicate, advance, advance_with_gap, stale or conflict. The shipment lifecycle has no backward edges, so correction changes nothing.';
COMMENT ON FUNCTION hub.classify_transition(hub.movement_status, hub.movement_status, boolean) IS
'Classify a movement status report against the current state: duplicate, advance, advance_with_gap, stale or conflict. correction => true turns reserved|partially_reserved->awaiting_stock (unreserve) into advance.';
COMMENT ON FUNCTION hub.classify_transition(hub.return_status, hub.return_status, boolean) IS
'Classify a return (RMA) status report against the current state: duplicate, advance, advance_with_gap, stale or conflict. The return lifecycle has no backward edges, so correction changes nothing.';

CREATE FUNCTION hub._classify_transition(lifecycle text, current text, incoming text,
										 correction boolean)
RETURNS hub.transition_kind
AS 'MODULE_PATHNAME', 'hub_classify_transition_text'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION hub._classify_transition(text, text, text, boolean) IS
'API: Private. hub.classify_transition by lifecycle and state names (used by hub.apply_status); 22023 on an unknown lifecycle or state.';

CREATE FUNCTION hub.lifecycle_state_valid(lifecycle text, state text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'hub_lifecycle_state_valid_sql'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION hub.lifecycle_state_valid(text, text) IS
'true when lifecycle is order, shipment, movement or return and state is one of its states; never raises.';

CREATE FUNCTION hub.lifecycle_states(lifecycle text,
									 OUT state text, OUT ordinal integer, OUT terminal boolean)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'hub_lifecycle_states'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE ROWS 13;
COMMENT ON FUNCTION hub.lifecycle_states(text) IS
'The states of a lifecycle in enum order (position 1..n), with terminal = true for states without successors.';

CREATE FUNCTION hub.lifecycle_transitions(lifecycle text,
										  OUT from_state text, OUT to_state text,
										  OUT correction boolean)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'hub_lifecycle_transitions'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE ROWS 20;
COMMENT ON FUNCTION hub.lifecycle_transitions(text) IS
'The edges of a lifecycle graph as compiled into the extension: forward edges (correction = false) and explicit backward corrections (correction = true).';

REVOKE EXECUTE ON FUNCTION
	hub.classify_transition(hub.order_status, hub.order_status, boolean),
	hub.classify_transition(hub.shipment_status, hub.shipment_status, boolean),
	hub.classify_transition(hub.movement_status, hub.movement_status, boolean),
	hub.classify_transition(hub.return_status, hub.return_status, boolean),
	hub._classify_transition(text, text, text, boolean),
	hub.lifecycle_state_valid(text, text),
	hub.lifecycle_states(text),
	hub.lifecycle_transitions(text)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
	hub.classify_transition(hub.order_status, hub.order_status, boolean),
	hub.classify_transition(hub.shipment_status, hub.shipment_status, boolean),
	hub.classify_transition(hub.movement_status, hub.movement_status, boolean),
	hub.classify_transition(hub.return_status, hub.return_status, boolean),
	hub.lifecycle_state_valid(text, text),
	hub.lifecycle_states(text),
	hub.lifecycle_transitions(text)
TO hub_reader, hub_writer;

-- ---- 0.2.0: 20_status_map.sql ----
/*
 * 20_status_map.sql --- status mapping: each system's status codes to the
 * canonical lifecycles (LOGISTICS.md 5.6-5.11).
 *
 * hub.status_map: (system, lifecycle, code, qualifier, partner) -> canonical
 * state and/or overlay (on_hold, exception) with a reason.  qualifier ''
 * matches any qualifier (e.g. an Odoo picking type code or model); partner ''
 * is the profile's default and a partner row (a carrier's SCAC, say) wins
 * over it.  A row with neither state nor overlay is informational (an X12
 * estimate, an EasyPost "unknown"): known, but it changes nothing.
 * hub.status_unmap gives the code to send to a system for a canonical state.
 * Built-in profile rows are marked builtin and are not dumped by pg_dump;
 * rows you add are.  The lookup is in C (extension/status_map.c) over a
 * per-backend cache that every backend drops when the table changes.
 */

CREATE TYPE hub.mapped_status AS (state text, overlay text, reason text);
COMMENT ON TYPE hub.mapped_status IS
'Result of hub.map_status: canonical state (NULL: no state change), overlay (on_hold or exception, NULL: none) and its reason.';

CREATE TABLE hub.status_map (
	system		text NOT NULL CHECK (system = lower(system) AND system <> ''),
	lifecycle	text NOT NULL CHECK (lifecycle IN ('order', 'shipment', 'movement', 'return')),
	code		text NOT NULL CHECK (length(code) BETWEEN 1 AND 120),
	qualifier	text NOT NULL DEFAULT '' CHECK (length(qualifier) <= 40),
	partner		text NOT NULL DEFAULT '' CHECK (length(partner) <= 40),
	state		text CHECK (state IS NULL OR hub.lifecycle_state_valid(lifecycle, state)),
	overlay		text CHECK (overlay IN ('on_hold', 'exception')),
	reason		text,
	note		text,
	builtin		boolean NOT NULL DEFAULT false,
	PRIMARY KEY (system, lifecycle, code, qualifier, partner),
	CHECK (reason IS NULL OR overlay IS NOT NULL)
);
COMMENT ON TABLE hub.status_map IS
'Status code mappings: (system, lifecycle, code, qualifier, partner) to canonical state and/or overlay. qualifier and partner '''' mean any / the profile default; partner rows override the profile. Codes match case-insensitively. Changes are seen by the next statement of every session.';
COMMENT ON COLUMN hub.status_map.qualifier IS 'Narrows the code, e.g. the Odoo picking type (outgoing, internal_pick, internal_pack, incoming); '''' = any.';
COMMENT ON COLUMN hub.status_map.partner IS 'A trading partner (carrier SCAC, customer) whose override wins over the profile''s default row; '''' = the default.';
COMMENT ON COLUMN hub.status_map.state IS 'Canonical state label of the lifecycle, or NULL for no state change.';
COMMENT ON COLUMN hub.status_map.overlay IS 'on_hold or exception, set beside the state; NULL for none.';
COMMENT ON COLUMN hub.status_map.builtin IS 'true for the built-in profiles shipped with the extension (not dumped by pg_dump).';

CREATE TABLE hub.status_unmap (
	system		text NOT NULL,
	lifecycle	text NOT NULL CHECK (lifecycle IN ('order', 'shipment', 'movement', 'return')),
	state		text NOT NULL CHECK (hub.lifecycle_state_valid(lifecycle, state)),
	code		text NOT NULL,
	builtin		boolean NOT NULL DEFAULT false,
	PRIMARY KEY (system, lifecycle, state)
);
COMMENT ON TABLE hub.status_unmap IS
'The code to send to a system for a canonical state (the reverse direction, used when pushing), read by hub.unmap_status.';

SELECT pg_catalog.pg_extension_config_dump('hub.status_map', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('hub.status_unmap', 'WHERE NOT builtin');

CREATE FUNCTION hub._status_map_changed() RETURNS trigger
	AS 'MODULE_PATHNAME', 'hub_status_map_changed' LANGUAGE C;
COMMENT ON FUNCTION hub._status_map_changed() IS
'API: Private. Statement trigger on hub.status_map: tells every backend to drop its mapping cache at commit.';
CREATE TRIGGER status_map_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON hub.status_map
	FOR EACH STATEMENT EXECUTE FUNCTION hub._status_map_changed();

CREATE FUNCTION hub.map_status(system text, lifecycle text, code text,
							   qualifier text DEFAULT NULL, partner text DEFAULT NULL)
	RETURNS hub.mapped_status
	AS 'MODULE_PATHNAME', 'hub_map_status' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION hub.map_status(text, text, text, text, text) IS
'Canonical state, overlay and reason for a system''s status code (partner override, then qualifier-specific, then generic row). An unknown system, lifecycle or code raises 22023 with a hint showing the INSERT that adds a mapping.';

CREATE FUNCTION hub.try_map_status(system text, lifecycle text, code text,
								   qualifier text DEFAULT NULL, partner text DEFAULT NULL)
	RETURNS hub.mapped_status
	AS 'MODULE_PATHNAME', 'hub_try_map_status' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION hub.try_map_status(text, text, text, text, text) IS
'As hub.map_status, but NULL instead of an error for an unknown system, lifecycle or code.';

CREATE FUNCTION hub.unmap_status(system text, lifecycle text, state text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	result text;
BEGIN
	SELECT u.code INTO result FROM hub.status_unmap u
	WHERE u.system = lower(unmap_status.system) AND u.lifecycle = lower(unmap_status.lifecycle)
		AND u.state = unmap_status.state;
	IF result IS NULL THEN
		RAISE EXCEPTION 'no code of system "%" for % state "%"', system, lifecycle, state
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = format('Add one: INSERT INTO hub.status_unmap (system, lifecycle, state, code) VALUES (%L, %L, %L, ''<code>'');',
								system, lifecycle, state);
	END IF;
	RETURN result;
END
$$;
COMMENT ON FUNCTION hub.unmap_status(text, text, text) IS
'The code to send to a system for a canonical state (from hub.status_unmap); 22023 with a hint when there is none.';

CREATE FUNCTION hub.portal_status(lifecycle text, state text, overlay_kind text DEFAULT NULL,
								  reason text DEFAULT NULL, partial boolean DEFAULT false)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
	SELECT CASE
		WHEN overlay_kind = 'exception' AND reason = 'delayed' THEN 'Delayed'
		WHEN overlay_kind = 'exception' AND reason = 'attempt_failed' THEN 'Delivery attempted'
		WHEN overlay_kind = 'exception' THEN 'Action needed'
		WHEN overlay_kind = 'on_hold' THEN 'On hold'
		WHEN state = 'cancelled' THEN 'Cancelled'
		WHEN partial AND state IN ('shipped', 'picked_up', 'in_transit', 'out_for_delivery') THEN 'Partially shipped'
		WHEN partial AND state = 'delivered' THEN 'Partially delivered'
		WHEN lifecycle = 'return' THEN CASE
			WHEN state IN ('requested', 'authorized', 'awaiting_item') THEN 'Return requested'
			WHEN state IN ('in_transit_back', 'received', 'inspected') THEN 'Return in transit'
			WHEN state IN ('resolved', 'closed') THEN 'Refunded'
			WHEN state = 'rejected' THEN 'Return rejected'
			END
		WHEN state IN ('draft', 'created', 'planned') THEN 'Order received'
		WHEN state IN ('released', 'allocated', 'picking', 'picked', 'packed') THEN 'Processing'
		WHEN state = 'label_created' THEN 'Label created'
		WHEN state IN ('shipped', 'pickup_arrived', 'picked_up', 'in_transit') THEN 'Shipped / In transit'
		WHEN state = 'out_for_delivery' THEN 'Out for delivery'
		WHEN state = 'available_for_pickup' THEN 'Ready for pickup'
		WHEN state IN ('delivered', 'closed') THEN 'Delivered'
		WHEN state IN ('return_to_sender', 'returned') THEN 'Returned to sender'
	END
$$;
COMMENT ON FUNCTION hub.portal_status(text, text, text, text, boolean) IS
'Customer-facing label (LOGISTICS.md 5.11) for a canonical state plus overlays: exceptions and holds win over the state, then cancellation and the partial flag.';

GRANT SELECT ON hub.status_map, hub.status_unmap TO hub_reader, hub_writer;
GRANT INSERT, UPDATE, DELETE ON hub.status_map, hub.status_unmap TO hub_admin;
REVOKE EXECUTE ON FUNCTION hub.map_status(text, text, text, text, text),
	hub.try_map_status(text, text, text, text, text), hub.unmap_status(text, text, text),
	hub.portal_status(text, text, text, text, boolean), hub._status_map_changed() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.map_status(text, text, text, text, text),
	hub.try_map_status(text, text, text, text, text), hub.unmap_status(text, text, text),
	hub.portal_status(text, text, text, text, boolean) TO hub_reader, hub_writer;

-- ---- 0.2.0: 25_status_profiles.sql ----
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

-- ---- 0.2.0: 30_entity_state.sql ----
/*
 * 30_entity_state.sql --- one version of operational truth per business key.
 *
 * hub.apply_status(lifecycle, business_key, system, code, occurred_at, ...)
 * maps a system's status code (hub.map_status) and hands the result to
 * hub.apply_canonical_status (also callable directly by systems that already
 * speak canonical states), which classifies the mapped state
 * against the canonical state of the key (hub._classify_transition, C) and
 * decides, under a row lock on the key's hub.entity_state row:
 *   created     first state of the key from an owner: adopted
 *   advanced    advance / advance_with_gap: the state moves forward
 *   corrected   an explicit backward edge with correction => true
 *   duplicate   same state: nothing moves (may clear a carrier exception)
 *   stale       an earlier state (late report): nothing moves
 *   conflict    incomparable states: a hub.status_conflicts row and the
 *               exception overlay with reason 'state_conflict'
 *   not_owner   the reporting system's role does not own the mapped state
 *               (hub.state_owners): kept in history and per-system state only
 *   overlay     the code maps only to an overlay (on_hold / exception)
 *   recorded    the code maps to nothing (EasyPost "unknown"): history only
 * Every call appends one row to hub.status_history (UPDATE, DELETE and
 * TRUNCATE refused).  Each system's last report (by occurred_at) is kept in
 * hub.entity_system_state, a child table rather than a jsonb column of
 * entity_state: the drift view is then a plain indexed join, the columns are
 * typed and checked, and a report rewrites one narrow row instead of the
 * whole document.
 *
 * Roles: systems report as a role kind (hub.systems: erp, wms, tms, carrier,
 * portal).  A (system, qualifier) row wins over the (system, '') row, so
 * Odoo is an ERP for sale.order codes and a WMS for stock.picking codes
 * (qualifier 'stock.picking' or a picking type code incoming / outgoing /
 * internal).  Overlays are accepted from any role that owns at least one
 * state of the lifecycle, so a portal never raises them on an order.
 * An advance clears both overlays; an owner's duplicate report newer than a
 * carrier exception clears that exception (EasyPost failure -> in_transit),
 * but never a 'state_conflict' exception, which waits for an advance.
 *
 * Concurrency: INSERT ... ON CONFLICT DO NOTHING followed by SELECT ... FOR
 * UPDATE serializes all reports of one key; distinct keys never wait.
 */

-- ---------------------------------------------------------------- config

CREATE TABLE hub.systems (
	system		text NOT NULL,
	qualifier	text NOT NULL DEFAULT '',
	role		text NOT NULL CHECK (role IN ('erp', 'wms', 'tms', 'carrier', 'portal')),
	builtin		boolean NOT NULL DEFAULT false,
	PRIMARY KEY (system, qualifier)
);
COMMENT ON TABLE hub.systems IS
'Role kind (erp, wms, tms, carrier, portal) of each reporting system; a row with a qualifier (e.g. odoo + stock.picking) wins over the system''s row with qualifier ''''. Rows with builtin = true ship with the extension.';
COMMENT ON COLUMN hub.systems.qualifier IS 'Qualifier passed to hub.apply_status (Odoo model or picking type code), or '''' for the system''s default role.';
COMMENT ON COLUMN hub.systems.builtin IS 'true for rows installed by the extension (not dumped by pg_dump; user rows are).';

INSERT INTO hub.systems (system, qualifier, role, builtin) VALUES
	('odoo', '', 'erp', true),
	('odoo', 'sale.order', 'erp', true),
	('odoo', 'stock.picking', 'wms', true),
	('odoo', 'stock.move', 'wms', true),
	('odoo', 'incoming', 'wms', true),
	('odoo', 'outgoing', 'wms', true),
	('odoo', 'internal', 'wms', true),
	('odoo', 'internal_pick', 'wms', true),
	('odoo', 'internal_pack', 'wms', true),
	('odoo', 'incoming_return', 'wms', true),
	('sap', '', 'erp', true),
	('netsuite', '', 'erp', true),
	('oracle_om', '', 'erp', true),
	('x12_214', '', 'carrier', true),
	('easypost', '', 'carrier', true),
	('epcis', '', 'wms', true),
	('portal', '', 'portal', true);

CREATE TABLE hub.state_owners (
	lifecycle	text NOT NULL,
	state		text NOT NULL,
	role		text NOT NULL CHECK (role IN ('erp', 'wms', 'tms', 'carrier', 'portal')),
	builtin		boolean NOT NULL DEFAULT false,
	PRIMARY KEY (lifecycle, state, role),
	CHECK (hub.lifecycle_state_valid(lifecycle, state))
);
COMMENT ON TABLE hub.state_owners IS
'System-of-record rules: a role may move the canonical state of a lifecycle to the states it owns; reports of other states are kept in history and per-system state but do not move the canonical state.';

INSERT INTO hub.state_owners (lifecycle, state, role, builtin)
SELECT 'order', s, r, true FROM (VALUES
	('erp', ARRAY['draft', 'created', 'released', 'closed', 'cancelled']),
	('wms', ARRAY['allocated', 'picking', 'picked', 'packed', 'shipped']),
	('tms', ARRAY['shipped']),
	('carrier', ARRAY['in_transit', 'out_for_delivery', 'delivered'])) v(r, a),
	unnest(a) s
UNION ALL
SELECT 'shipment', s, r, true FROM (VALUES
	('erp', ARRAY['planned']),
	('tms', ARRAY['planned', 'label_created', 'cancelled']),
	('wms', ARRAY['planned', 'label_created', 'cancelled']),
	('carrier', ARRAY['label_created', 'pickup_arrived', 'picked_up', 'in_transit',
					  'out_for_delivery', 'available_for_pickup', 'delivered',
					  'return_to_sender', 'returned', 'cancelled'])) v(r, a),
	unnest(a) s
UNION ALL
SELECT 'movement', s::text, 'wms', true FROM unnest(enum_range(NULL::hub.movement_status)) s
UNION ALL
SELECT 'movement', s, 'erp', true FROM unnest(ARRAY['planned', 'cancelled']) s
UNION ALL
SELECT 'return', s, r, true FROM (VALUES
	('portal', ARRAY['requested']),
	('erp', ARRAY['requested', 'authorized', 'awaiting_item', 'resolved', 'closed',
				  'rejected', 'cancelled']),
	('carrier', ARRAY['in_transit_back']),
	('wms', ARRAY['received', 'inspected'])) v(r, a),
	unnest(a) s;

CREATE TABLE hub.stale_thresholds (
	lifecycle	text NOT NULL,
	state		text NOT NULL,
	threshold	interval NOT NULL CHECK (threshold > interval '0'),
	builtin		boolean NOT NULL DEFAULT false,
	PRIMARY KEY (lifecycle, state),
	CHECK (hub.lifecycle_state_valid(lifecycle, state))
);
COMMENT ON TABLE hub.stale_thresholds IS
'How long an entity may stay in a state before hub.stale_entities lists it (e.g. order packed: 24 hours). States without a row are never stale.';

INSERT INTO hub.stale_thresholds (lifecycle, state, threshold, builtin)
SELECT l, s, t::interval, true FROM (VALUES
	('order', 'created', '24 hours'), ('order', 'released', '24 hours'),
	('order', 'allocated', '24 hours'), ('order', 'picking', '8 hours'),
	('order', 'picked', '12 hours'), ('order', 'packed', '24 hours'),
	('order', 'shipped', '48 hours'), ('order', 'in_transit', '5 days'),
	('order', 'out_for_delivery', '24 hours'), ('order', 'delivered', '30 days'),
	('shipment', 'planned', '72 hours'), ('shipment', 'label_created', '72 hours'),
	('shipment', 'pickup_arrived', '24 hours'), ('shipment', 'picked_up', '48 hours'),
	('shipment', 'in_transit', '5 days'), ('shipment', 'out_for_delivery', '24 hours'),
	('shipment', 'available_for_pickup', '7 days'), ('shipment', 'return_to_sender', '14 days'),
	('movement', 'waiting_upstream', '48 hours'), ('movement', 'awaiting_stock', '72 hours'),
	('movement', 'partially_reserved', '48 hours'), ('movement', 'reserved', '24 hours'),
	('movement', 'in_progress', '8 hours'),
	('return', 'requested', '48 hours'), ('return', 'authorized', '14 days'),
	('return', 'awaiting_item', '14 days'), ('return', 'in_transit_back', '10 days'),
	('return', 'received', '72 hours'), ('return', 'inspected', '72 hours'),
	('return', 'resolved', '7 days')) v(l, s, t);

CREATE TABLE hub.drift_tolerances (
	lifecycle	text NOT NULL CHECK (lifecycle IN ('order', 'shipment', 'movement', 'return')),
	role		text NOT NULL CHECK (role IN ('erp', 'wms', 'tms', 'carrier', 'portal')),
	tolerance	interval NOT NULL CHECK (tolerance >= interval '0'),
	builtin		boolean NOT NULL DEFAULT false,
	PRIMARY KEY (lifecycle, role)
);
COMMENT ON TABLE hub.drift_tolerances IS
'How long a system of a role may disagree with the canonical state before hub.drift lists it. Roles without a row are never listed.';

INSERT INTO hub.drift_tolerances (lifecycle, role, tolerance, builtin)
SELECT l, r, t::interval, true
FROM unnest(ARRAY['order', 'shipment', 'movement', 'return']) l,
	 (VALUES ('erp', '1 hour'), ('wms', '15 minutes'), ('tms', '15 minutes'),
			 ('carrier', '1 hour'), ('portal', '15 minutes')) v(r, t);

SELECT pg_catalog.pg_extension_config_dump('hub.systems', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('hub.state_owners', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('hub.stale_thresholds', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('hub.drift_tolerances', 'WHERE NOT builtin');

-- ---------------------------------------------------------------- state

CREATE TABLE hub.entity_state (
	lifecycle			text NOT NULL CHECK (lifecycle IN ('order', 'shipment', 'movement', 'return')),
	-- (at most 256 bytes, as hub.apply_status checks: README, "Limits on inputs")
	business_key		text NOT NULL CHECK (business_key <> '' AND octet_length(business_key) <= 256),
	state				text CHECK (state IS NULL OR hub.lifecycle_state_valid(lifecycle, state)),
	state_system		text,
	state_occurred_at	timestamptz,
	last_advanced_at	timestamptz,
	on_hold				boolean NOT NULL DEFAULT false,
	on_hold_reason		text,
	on_hold_since		timestamptz,
	exception_reason	text,
	exception_since		timestamptz,
	created_at			timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at			timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (lifecycle, business_key)
);
COMMENT ON TABLE hub.entity_state IS
'Canonical state per (lifecycle, business key), moved only by hub.apply_status. state is NULL until an owner reports; overlays live beside it.';
COMMENT ON COLUMN hub.entity_state.state IS 'Canonical state (a label of the lifecycle''s enum), or NULL while only non-owners have reported.';
COMMENT ON COLUMN hub.entity_state.state_system IS 'System whose report set the current state.';
COMMENT ON COLUMN hub.entity_state.state_occurred_at IS 'occurred_at of the report that set the current state.';
COMMENT ON COLUMN hub.entity_state.last_advanced_at IS 'Source time (occurred_at) of the last forward move or correction; hub.stale_entities measures from it.';
COMMENT ON COLUMN hub.entity_state.on_hold IS 'Overlay on_hold (not a state): set by a mapping with overlay on_hold, cleared by an advance.';
COMMENT ON COLUMN hub.entity_state.exception_reason IS 'Overlay exception (not a state): its reason (delayed, attempt_failed, ..., state_conflict), NULL when clear.';
COMMENT ON COLUMN hub.entity_state.exception_since IS 'occurred_at of the report that raised the exception.';

CREATE TABLE hub.entity_system_state (
	lifecycle		text NOT NULL,
	business_key	text NOT NULL,
	system			text NOT NULL,
	role			text NOT NULL,
	qualifier		text,
	code			text NOT NULL,
	state			text,
	state_since		timestamptz,
	overlay_kind		text,
	reason			text,
	occurred_at		timestamptz NOT NULL,
	received_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (lifecycle, business_key, system),
	FOREIGN KEY (lifecycle, business_key) REFERENCES hub.entity_state ON DELETE CASCADE
);
COMMENT ON TABLE hub.entity_system_state IS
'What each system last said about a key (the report with the latest occurred_at), whether or not it moved the canonical state.';
COMMENT ON COLUMN hub.entity_system_state.state_since IS 'occurred_at of this system''s first report of its current state (drift is measured from it).';

CREATE TABLE hub.status_history (
	history_id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	lifecycle			text NOT NULL,
	business_key		text NOT NULL,
	system				text NOT NULL,
	role				text NOT NULL,
	qualifier			text,
	code				text NOT NULL,
	correction			boolean NOT NULL,
	mapped_state		text,
	overlay_kind		text,
	reason				text,
	previous_state		text,
	new_state			text,
	kind				hub.transition_kind,
	outcome				text NOT NULL,
	regression_suspect	boolean NOT NULL DEFAULT false,
	occurred_at			timestamptz NOT NULL,
	received_at			timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
CREATE INDEX status_history_key_idx ON hub.status_history (lifecycle, business_key, history_id);
COMMENT ON TABLE hub.status_history IS
'Append-only audit trail: one row per hub.apply_status call, with the mapping, the classification and what was done. UPDATE, DELETE and TRUNCATE are refused.';
COMMENT ON COLUMN hub.status_history.outcome IS 'created, advanced, corrected, duplicate, stale, conflict, not_owner, overlay, or informational (a code that maps to neither state nor overlay, e.g. an X12 estimate).';
COMMENT ON COLUMN hub.status_history.kind IS 'hub.transition_kind of mapped_state against previous_state; NULL when there was nothing to compare.';
COMMENT ON COLUMN hub.status_history.regression_suspect IS 'A stale report whose occurred_at is later than that of the current state: a mis-scan or a return (LOGISTICS.md 5.1 point 5).';

CREATE TABLE hub.status_conflicts (
	conflict_id		bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	history_id		bigint NOT NULL REFERENCES hub.status_history,
	lifecycle		text NOT NULL,
	business_key	text NOT NULL,
	system			text NOT NULL,
	current_state	text NOT NULL,
	incoming_state	text NOT NULL,
	occurred_at		timestamptz NOT NULL,
	detected_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	reports			integer NOT NULL DEFAULT 1,
	last_history_id	bigint NOT NULL,
	last_reported_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	resolved_at		timestamptz,
	resolution		text
);
-- one open conflict per key and disagreement: a report sent again (a
-- carrier's retry, a poller's overlap) counts on it instead of opening
-- another; the index also finds a key's open conflicts
CREATE UNIQUE INDEX status_conflicts_open_idx
	ON hub.status_conflicts (lifecycle, business_key, current_state, incoming_state)
	WHERE resolved_at IS NULL;
COMMENT ON TABLE hub.status_conflicts IS
'Reports whose state was incomparable with the canonical state (e.g. cancelled vs shipped), for review; one open row per key and disagreement (current and incoming state), which a report sent again counts on; resolved_at and resolution are set by an operator.';
COMMENT ON COLUMN hub.status_conflicts.history_id IS 'The hub.status_history row of the report that opened the conflict.';
COMMENT ON COLUMN hub.status_conflicts.reports IS 'How many reports of this disagreement came while it was open (1: only the one that opened it).';
COMMENT ON COLUMN hub.status_conflicts.last_history_id IS 'The hub.status_history row of the latest report of this disagreement.';
COMMENT ON COLUMN hub.status_conflicts.last_reported_at IS 'When the latest report of this disagreement came.';

CREATE FUNCTION hub._refuse_history_change()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
	RAISE EXCEPTION 'hub.status_history is append-only'
		USING ERRCODE = 'feature_not_supported',
			  DETAIL = format('%s is not allowed on the status audit trail.', TG_OP),
			  HINT = 'Record a correction with hub.apply_status(..., correction => true) instead.';
END
$$;
COMMENT ON FUNCTION hub._refuse_history_change() IS
'API: Private. Trigger function keeping hub.status_history append-only.';

CREATE TRIGGER status_history_append_only
	BEFORE UPDATE OR DELETE ON hub.status_history
	FOR EACH ROW EXECUTE FUNCTION hub._refuse_history_change();
CREATE TRIGGER status_history_no_truncate
	BEFORE TRUNCATE ON hub.status_history
	FOR EACH STATEMENT EXECUTE FUNCTION hub._refuse_history_change();

-- ---------------------------------------------------------------- apply

CREATE TYPE hub.apply_result AS (
	outcome				text,
	kind				hub.transition_kind,
	previous_state		text,
	state				text,
	reported_state		text,
	owner				boolean,
	on_hold				boolean,
	exception_reason	text,
	history_id			bigint
);
COMMENT ON TYPE hub.apply_result IS
'What hub.apply_status did: outcome (created, advanced, corrected, duplicate, stale, conflict, not_owner, overlay, informational), the classification, the canonical state before and after, the mapped state, whether the system owns it, the overlays after, and the history row.';

CREATE FUNCTION hub._system_role(p_system text, p_qualifier text)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT role FROM hub.systems
	WHERE system = p_system AND qualifier IN ('', coalesce(p_qualifier, ''))
	ORDER BY qualifier DESC LIMIT 1
$$;
COMMENT ON FUNCTION hub._system_role(text, text) IS
'API: Private. Role kind of a system for a qualifier (the qualified row first), NULL if unknown.';

CREATE FUNCTION hub.apply_canonical_status(lifecycle text, business_key text, system text,
		code text, occurred_at timestamptz, state text, overlay_kind text DEFAULT NULL,
		reason text DEFAULT NULL, qualifier text DEFAULT NULL, correction boolean DEFAULT false)
RETURNS hub.apply_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m_state		text := $6;
	m_overlay	text := $7;
	m_reason	text := $8;
	v_role		text;
	e			hub.entity_state;
	r			hub.apply_result;
	v_owner		boolean;
	v_overlays	boolean;
	v_suspect	boolean := false;
BEGIN
	IF lifecycle IS NULL OR lifecycle NOT IN ('order', 'shipment', 'movement', 'return') THEN
		RAISE EXCEPTION 'unknown lifecycle: "%"', lifecycle
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The lifecycles are order, shipment, movement and return.';
	END IF;
	IF business_key IS NULL OR business_key = '' OR code IS NULL OR occurred_at IS NULL
	   OR system IS NULL THEN
		RAISE EXCEPTION 'business_key, system, code and occurred_at must not be null or empty'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM hub._check_key_length('business key', business_key);
	IF m_state IS NOT NULL AND NOT hub.lifecycle_state_valid(lifecycle, m_state) THEN
		RAISE EXCEPTION 'unknown % state: "%"', lifecycle, m_state
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('%s code "%s" was mapped to it.', system, code),
				  HINT = format('The states are the labels of hub.%s_status.', lifecycle);
	END IF;
	IF m_overlay IS NOT NULL AND m_overlay NOT IN ('on_hold', 'exception') THEN
		RAISE EXCEPTION 'unknown overlay: "%"', m_overlay
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The overlays are on_hold and exception.';
	END IF;
	v_role := hub._system_role(system, qualifier);
	IF v_role IS NULL THEN
		RAISE EXCEPTION 'unknown system: "%"', system
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Every reporting system needs a role (erp, wms, tms, carrier or portal).',
				  HINT = format('Add it with INSERT INTO hub.systems (system, role) VALUES (%L, ''carrier'').', system);
	END IF;

	-- one row lock per key serializes every report of it; a new key is
	-- inserted first (ON CONFLICT: a concurrent insert of it waits for us)
	SELECT * INTO e FROM hub.entity_state es
	WHERE es.lifecycle = apply_canonical_status.lifecycle
	  AND es.business_key = apply_canonical_status.business_key
	FOR UPDATE;
	IF NOT FOUND THEN
		INSERT INTO hub.entity_state AS es (lifecycle, business_key)
		VALUES (apply_canonical_status.lifecycle, apply_canonical_status.business_key)
		ON CONFLICT DO NOTHING;
		SELECT * INTO e FROM hub.entity_state es
		WHERE es.lifecycle = apply_canonical_status.lifecycle
		  AND es.business_key = apply_canonical_status.business_key
		FOR UPDATE;
	END IF;

	-- owner of the reported state; overlays from roles owning any state
	SELECT coalesce(bool_or(o.state = m_state), false) OR m_state IS NULL, count(*) > 0
	INTO v_owner, v_overlays
	FROM hub.state_owners o
	WHERE o.lifecycle = apply_canonical_status.lifecycle AND o.role = v_role;

	r.previous_state := e.state;
	r.reported_state := m_state;
	r.owner := v_owner;
	IF m_state IS NOT NULL AND e.state IS NOT NULL THEN
		r.kind := hub._classify_transition(lifecycle, e.state, m_state, correction);
	END IF;

	r.outcome := CASE
		WHEN m_state IS NULL AND m_overlay IS NULL THEN 'informational'
		WHEN m_state IS NULL THEN 'overlay'
		WHEN NOT v_owner THEN 'not_owner'
		WHEN e.state IS NULL THEN 'created'
		WHEN r.kind IN ('advance', 'advance_with_gap') AND correction
			 AND hub._classify_transition(lifecycle, e.state, m_state, false) = 'stale' THEN 'corrected'
		WHEN r.kind IN ('advance', 'advance_with_gap') THEN 'advanced'
		ELSE r.kind::text
	END;

	IF r.outcome IN ('created', 'advanced', 'corrected') THEN
		e.state := m_state;
		e.state_system := system;
		e.state_occurred_at := occurred_at;
		e.last_advanced_at := occurred_at;
		e.on_hold := false;
		e.on_hold_reason := NULL;
		e.on_hold_since := NULL;
		e.exception_reason := NULL;
		e.exception_since := NULL;
	ELSIF r.outcome = 'conflict' THEN
		e.exception_reason := 'state_conflict';
		e.exception_since := occurred_at;
	ELSIF r.outcome = 'duplicate' AND m_overlay IS NULL
		  AND e.exception_reason IS DISTINCT FROM 'state_conflict'
		  AND e.exception_since < occurred_at THEN
		e.exception_reason := NULL;
		e.exception_since := NULL;
	ELSIF r.outcome = 'stale' THEN
		v_suspect := occurred_at > e.state_occurred_at;
	END IF;

	-- overlays of a current report (not of a stale, conflicting or foreign one)
	IF m_overlay IS NOT NULL AND v_overlays
	   AND r.outcome IN ('created', 'advanced', 'corrected', 'duplicate', 'overlay') THEN
		IF m_overlay = 'on_hold' THEN
			e.on_hold := true;
			e.on_hold_reason := m_reason;
			e.on_hold_since := occurred_at;
		ELSIF m_overlay = 'exception' AND e.exception_reason IS DISTINCT FROM 'state_conflict' THEN
			e.exception_reason := coalesce(m_reason, 'unspecified');
			e.exception_since := occurred_at;
		END IF;
	END IF;

	UPDATE hub.entity_state es
	SET state = e.state, state_system = e.state_system, state_occurred_at = e.state_occurred_at,
		last_advanced_at = e.last_advanced_at, on_hold = e.on_hold,
		on_hold_reason = e.on_hold_reason, on_hold_since = e.on_hold_since,
		exception_reason = e.exception_reason, exception_since = e.exception_since,
		updated_at = now()
	WHERE es.lifecycle = apply_canonical_status.lifecycle AND es.business_key = apply_canonical_status.business_key;

	INSERT INTO hub.entity_system_state AS s
		(lifecycle, business_key, system, role, qualifier, code, state, state_since,
		 overlay_kind, reason, occurred_at)
	VALUES (lifecycle, business_key, system, v_role, qualifier, code, m_state, occurred_at,
			m_overlay, m_reason, occurred_at)
	ON CONFLICT ON CONSTRAINT entity_system_state_pkey DO UPDATE
	SET role = EXCLUDED.role, qualifier = EXCLUDED.qualifier, code = EXCLUDED.code,
		state = coalesce(EXCLUDED.state, s.state),
		state_since = CASE WHEN EXCLUDED.state IS NULL OR EXCLUDED.state = s.state
						   THEN s.state_since ELSE EXCLUDED.occurred_at END,
		overlay_kind = EXCLUDED.overlay_kind, reason = EXCLUDED.reason,
		occurred_at = EXCLUDED.occurred_at, received_at = now()
	WHERE s.occurred_at <= EXCLUDED.occurred_at;

	INSERT INTO hub.status_history
		(lifecycle, business_key, system, role, qualifier, code, correction, mapped_state,
		 overlay_kind, reason, previous_state, new_state, kind, outcome, regression_suspect,
		 occurred_at)
	VALUES (lifecycle, business_key, system, v_role, qualifier, code, correction, m_state,
			m_overlay, m_reason, r.previous_state, e.state, r.kind, r.outcome, v_suspect,
			occurred_at)
	RETURNING history_id INTO r.history_id;

	-- one open conflict per key and disagreement (serialized by the key's
	-- row lock; status_conflicts_open_idx holds it): the same report again
	-- counts on the open one
	IF r.outcome = 'conflict' THEN
		UPDATE hub.status_conflicts c
		SET reports = c.reports + 1, last_history_id = r.history_id, last_reported_at = now()
		WHERE c.lifecycle = apply_canonical_status.lifecycle
		  AND c.business_key = apply_canonical_status.business_key
		  AND c.current_state = r.previous_state AND c.incoming_state = m_state
		  AND c.resolved_at IS NULL;
		IF NOT FOUND THEN
			INSERT INTO hub.status_conflicts
				(history_id, lifecycle, business_key, system, current_state, incoming_state, occurred_at,
				 last_history_id)
			VALUES (r.history_id, lifecycle, business_key, system, r.previous_state, m_state, occurred_at,
					r.history_id);
		END IF;
	END IF;

	r.state := e.state;
	r.on_hold := e.on_hold;
	r.exception_reason := e.exception_reason;
	RETURN r;
END
$$;
COMMENT ON FUNCTION hub.apply_canonical_status(text, text, text, text, timestamptz, text, text, text, text, boolean) IS
'Apply an already mapped report (canonical state and/or overlay) of a system for a business key: classify it against the canonical state, advance on advance/advance_with_gap from the state''s owner, keep duplicate/stale/non-owner reports in history only, record a conflict and raise the exception overlay. Every call appends to hub.status_history. Errors: 22023 for an unknown lifecycle, system, state or overlay; 22001 for a business key longer than 256 bytes.';

CREATE FUNCTION hub.apply_status(lifecycle text, business_key text, system text, code text,
								 occurred_at timestamptz, qualifier text DEFAULT NULL,
								 correction boolean DEFAULT false, partner text DEFAULT NULL)
RETURNS hub.apply_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m			record;
BEGIN
	-- raises 22023-class errors naming system, lifecycle and code when unknown
	SELECT * INTO m FROM hub.map_status(system, lifecycle, code, qualifier, partner);
	RETURN hub.apply_canonical_status(lifecycle, business_key, system, code, occurred_at,
									  m.state, m.overlay, m.reason, qualifier, correction);
END
$$;
COMMENT ON FUNCTION hub.apply_status(text, text, text, text, timestamptz, text, boolean, text) IS
'Map a system''s status code for a business key with hub.map_status (qualifier and partner as there) and apply it with hub.apply_canonical_status: advance on advance/advance_with_gap from the state''s owner, keep duplicate/stale/non-owner reports in history only, record a conflict and raise the exception overlay. Every call appends to hub.status_history. Errors: those of hub.map_status for an unknown code; 22023 for an unknown lifecycle or system; 22001 for a business key longer than 256 bytes.';

CREATE FUNCTION hub.resolve_conflict(conflict_id bigint, resolution text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c	hub.status_conflicts;
BEGIN
	IF resolution IS NULL OR resolution = '' THEN
		RAISE EXCEPTION 'a conflict resolution must say what was decided'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	UPDATE hub.status_conflicts sc SET resolved_at = now(), resolution = resolve_conflict.resolution
	WHERE sc.conflict_id = resolve_conflict.conflict_id AND sc.resolved_at IS NULL
	RETURNING * INTO c;
	IF NOT FOUND THEN
		RETURN false;
	END IF;
	-- the last open conflict of the key lifts its state_conflict exception
	UPDATE hub.entity_state es SET exception_reason = NULL, exception_since = NULL, updated_at = now()
	WHERE es.lifecycle = c.lifecycle AND es.business_key = c.business_key
	  AND es.exception_reason = 'state_conflict'
	  AND NOT EXISTS (SELECT FROM hub.status_conflicts o
					  WHERE o.lifecycle = c.lifecycle AND o.business_key = c.business_key
						AND o.resolved_at IS NULL);
	RETURN true;
END
$$;
COMMENT ON FUNCTION hub.resolve_conflict(bigint, text) IS
'Mark an open conflict resolved with a note; when it was the key''s last open conflict, the state_conflict exception overlay is cleared. Returns false when the conflict does not exist or was already resolved. The canonical state is not changed: apply the decided state with hub.apply_status (correction => true for a backward edge).';

-- ---------------------------------------------------------------- views

CREATE FUNCTION hub._projection_agrees(p_system text, p_lifecycle text, p_state text, p_code text)
RETURNS boolean
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN hub.unmap_status(p_system, p_lifecycle, p_state) = p_code;
EXCEPTION
	WHEN invalid_parameter_value OR no_data_found OR undefined_object OR undefined_function THEN
		RETURN false;
END
$$;
COMMENT ON FUNCTION hub._projection_agrees(text, text, text, text) IS
'API: Private. true when the code a system last reported is the code the canonical state maps to in that system''s vocabulary (e.g. portal "Processing" covers released..packed), so coarser vocabularies do not count as drift.';

CREATE VIEW hub.drift AS
SELECT e.lifecycle, e.business_key, e.state AS canonical_state, s.system, s.role,
	   s.code AS system_code, s.state AS system_state,
	   greatest(e.state_occurred_at, s.state_since) AS disagreeing_since,
	   now() - greatest(e.state_occurred_at, s.state_since) AS disagreeing_for,
	   t.tolerance
FROM hub.entity_state e
JOIN hub.entity_system_state s USING (lifecycle, business_key)
JOIN hub.drift_tolerances t ON t.lifecycle = e.lifecycle AND t.role = s.role
WHERE e.state IS NOT NULL AND s.state IS NOT NULL AND s.state <> e.state
  AND now() - greatest(e.state_occurred_at, s.state_since) > t.tolerance
  AND NOT hub._projection_agrees(s.system, e.lifecycle, e.state, s.code);
COMMENT ON VIEW hub.drift IS
'Keys where a system''s last reported state differs from the canonical state for longer than its role''s tolerance (hub.drift_tolerances), with since when and for how long (measured from the later of the canonical state''s time and the system''s first report of its own state).';

CREATE VIEW hub.stale_entities AS
SELECT e.lifecycle, e.business_key, e.state, e.last_advanced_at,
	   now() - e.last_advanced_at AS idle_for, t.threshold,
	   e.on_hold, e.exception_reason
FROM hub.entity_state e
JOIN hub.stale_thresholds t ON t.lifecycle = e.lifecycle AND t.state = e.state
WHERE now() - e.last_advanced_at > t.threshold;
COMMENT ON VIEW hub.stale_entities IS
'Entities without progress for longer than the threshold of their state (hub.stale_thresholds), e.g. an order packed for more than 24 hours.';

-- ---------------------------------------------------------------- privileges

REVOKE EXECUTE ON FUNCTION
	hub.apply_status(text, text, text, text, timestamptz, text, boolean, text),
	hub.apply_canonical_status(text, text, text, text, timestamptz, text, text, text, text, boolean),
	hub._system_role(text, text),
	hub._projection_agrees(text, text, text, text),
	hub._refuse_history_change(),
	hub.resolve_conflict(bigint, text)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.resolve_conflict(bigint, text) TO hub_admin;
GRANT EXECUTE ON FUNCTION hub.apply_status(text, text, text, text, timestamptz, text, boolean, text),
	hub.apply_canonical_status(text, text, text, text, timestamptz, text, text, text, text, boolean)
	TO hub_writer;
GRANT EXECUTE ON FUNCTION hub._projection_agrees(text, text, text, text) TO hub_reader;
GRANT SELECT ON hub.drift, hub.stale_entities, hub.entity_state, hub.entity_system_state,
	hub.status_history, hub.status_conflicts, hub.systems, hub.state_owners,
	hub.stale_thresholds, hub.drift_tolerances TO hub_reader;
GRANT INSERT, UPDATE, DELETE ON hub.systems, hub.state_owners, hub.stale_thresholds,
	hub.drift_tolerances TO hub_admin;
GRANT UPDATE (resolved_at, resolution) ON hub.status_conflicts TO hub_admin;

-- ---- 0.2.0: 40_outbox.sql ----
/*
 * 40_outbox.sql --- transactional outbox, endpoints, subscriptions,
 * deliveries and attempts (the table model of the push side).
 *
 * Publishing writes one row to hub.outbox in the application's transaction
 * and nothing else: fan-out to subscriptions happens afterwards, in bulk, in
 * hub._route_events(), which every claim runs first.  Sequence numbers commit
 * out of order, so routing does not follow an id cursor: it follows a
 * watermark of transaction ids.  Every event carries the xid8 of the
 * transaction that wrote it; a routing pass handles the committed events
 * with xid >= watermark and then moves the watermark to its snapshot's xmin,
 * below which every transaction has ended.  An event whose transaction
 * commits after a later-numbered one was delivered is therefore still routed
 * and delivered.
 *
 * A delivery (one per subscription and event) moves through
 *   pending -> in_flight (leased until lease_until, fencing lease_token)
 *           -> delivered | retry_wait (next_attempt_at) | dead | skipped
 * and an expired lease makes an in_flight delivery claimable again.  Results
 * carry the lease token; a result whose lease was reclaimed is recorded as a
 * stale attempt and changes nothing.  For per_key subscriptions only the head
 * of each aggregate (the lowest event not delivered or skipped) is claimable.
 * All tables are WAL-logged.
 */

-- ---------------------------------------------------------------- catalogue

CREATE TABLE hub.event_types (
	event_type		text PRIMARY KEY CHECK (event_type ~ '^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$' AND length(event_type) <= 127),
	version			integer NOT NULL DEFAULT 1 CHECK (version > 0),
	required_keys	text[] NOT NULL DEFAULT '{}',
	description		text,
	builtin			boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE hub.event_types IS
'Catalogue of event types (<entity>.<verb>) with their contract: a version and the payload keys each event must carry.';
SELECT pg_catalog.pg_extension_config_dump('hub.event_types', 'WHERE NOT builtin');

INSERT INTO hub.event_types (event_type, required_keys, description, builtin) VALUES
	('order.created', '{order_id}', 'An order exists in the ERP', true),
	('order.released', '{order_id,warehouse}', 'The order is released to a warehouse', true),
	('order.allocated', '{order_id}', 'Stock is reserved for the order', true),
	('order.picked', '{order_id}', 'The order is picked', true),
	('order.packed', '{order_id}', 'The order is packed', true),
	('order.shipped', '{order_id,shipment_id}', 'The order left the warehouse', true),
	('order.cancelled', '{order_id}', 'The order is cancelled', true),
	('shipment.label_created', '{shipment_id,carrier}', 'A carrier label exists', true),
	('shipment.dispatched', '{shipment_id,carrier}', 'The carrier picked the shipment up', true),
	('shipment.in_transit', '{shipment_id}', 'The shipment is moving', true),
	('shipment.delivered', '{shipment_id}', 'The shipment is delivered', true),
	('shipment.exception', '{shipment_id,reason}', 'Something is wrong with the shipment', true),
	('inventory.adjusted', '{sku,quantity,location}', 'Stock on hand changed', true),
	('inventory.reserved', '{sku,quantity,order_id}', 'Stock was reserved', true),
	('return.authorized', '{return_id,order_id}', 'An RMA was authorized', true),
	('return.received', '{return_id}', 'The returned item arrived', true),
	('return.resolved', '{return_id,resolution}', 'Refund, replacement or repair decided', true);

-- ---------------------------------------------------------------- outbox

/*
 * Event ids lead with the publishing transaction's xid8 (a version 8 UUID,
 * extension/outbox_event_id.c): the primary key then serves the routing
 * scan (event_id >= _event_id_floor(watermark)) and the publisher writes no
 * second index entry.
 */
CREATE FUNCTION hub._event_id() RETURNS uuid
	AS 'MODULE_PATHNAME', 'hub_event_id' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION hub._event_id() IS
'API: Private. A new event id: a UUID (version 8) leading with the current transaction''s xid8, so ids sort by publishing transaction.';
CREATE FUNCTION hub._event_id_floor(xid8) RETURNS uuid
	AS 'MODULE_PATHNAME', 'hub_event_id_floor' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION hub._event_id_floor(xid8) IS
'API: Private. The lowest event id a transaction with this xid8 or a later one can have.';
CREATE FUNCTION hub._event_id_ceiling(xid8) RETURNS uuid
	AS 'MODULE_PATHNAME', 'hub_event_id_ceiling' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION hub._event_id_ceiling(xid8) IS
'API: Private. The highest event id a transaction with this xid8 can have.';
CREATE FUNCTION hub._event_xid(uuid) RETURNS xid8
	AS 'MODULE_PATHNAME', 'hub_event_xid' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION hub._event_xid(uuid) IS
'API: Private. The xid8 of the transaction that published an event (NULL for an id not made by hub._event_id).';

CREATE TABLE hub.outbox (
	event_id		uuid PRIMARY KEY DEFAULT hub._event_id(),
	seq				bigint GENERATED ALWAYS AS IDENTITY,
	event_type		text NOT NULL,
	aggregate_id	text NOT NULL,
	payload			jsonb NOT NULL,
	correlation_id	text,
	causation_id	text,
	headers			jsonb NOT NULL DEFAULT '{}',
	occurred_at		timestamptz NOT NULL DEFAULT now(),
	published_at	timestamptz NOT NULL,	-- set by the contract trigger
	xid				xid8 NOT NULL			-- set by the contract trigger
);
CREATE INDEX outbox_correlation_idx ON hub.outbox (correlation_id) WHERE correlation_id IS NOT NULL;
COMMENT ON TABLE hub.outbox IS
'Published events, immutable. Write with hub.publish() or a plain INSERT in the application''s transaction; nothing is routed or delivered unless that transaction commits.';
COMMENT ON COLUMN hub.outbox.event_id IS 'The event''s id and the receivers'' idempotency key, kept by every replay: a UUID (version 8) leading with the publishing transaction''s xid8, assigned by the hub.';
COMMENT ON COLUMN hub.outbox.seq IS 'Publication order (commits may come out of this order; routing does not rely on it).';
COMMENT ON COLUMN hub.outbox.xid IS 'Transaction that published the event, for the routing watermark.';

/*
 * _outbox_check --- contract check shared by hub.publish and plain INSERTs,
 * in C (extension/outbox_check.c) with the catalogue cached per backend:
 * the name, a non-empty aggregate id, a JSON object payload holding every
 * required key, unknown types per logistics_hub.unknown_event_types; it
 * stamps xid and published_at so that a plain INSERT cannot forge them (an
 * event with a made-up xid below the routing watermark would never be
 * routed).  The two columns have no default: the trigger always sets them,
 * and a default would be evaluated (and set up) by every publish only to
 * be overwritten.
 */
CREATE FUNCTION hub._outbox_check() RETURNS trigger
	AS 'MODULE_PATHNAME', 'hub_outbox_check' LANGUAGE C;
COMMENT ON FUNCTION hub._outbox_check() IS
'API: Private. Trigger on hub.outbox: validates the event type name and its payload contract, stamps xid and published_at.';
CREATE TRIGGER outbox_check BEFORE INSERT ON hub.outbox
	FOR EACH ROW EXECUTE FUNCTION hub._outbox_check();

/*
 * _check_key_length / _check_payload_size --- the limits the contract check
 * applies (a business key or id at most 256 bytes, 22001; a payload at most
 * logistics_hub.max_payload_size bytes, 54000), for the SQL functions that
 * take keys and payloads: hub.receive, hub.apply_canonical_status.  In C
 * (extension/outbox_check.c), so that the messages are the trigger's and
 * the sizes are read without detoasting.  NULL passes.
 */
CREATE FUNCTION hub._check_key_length(what text, value text) RETURNS void
	AS 'MODULE_PATHNAME', 'hub_check_key_length_sql' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION hub._check_key_length(text, text) IS
'API: Private. Raise 22001 naming what when value is longer than 256 bytes (the limit of business keys and ids).';
CREATE FUNCTION hub._check_payload_size(what text, payload jsonb) RETURNS void
	AS 'MODULE_PATHNAME', 'hub_check_payload_size_sql' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION hub._check_payload_size(text, jsonb) IS
'API: Private. Raise 54000 when a payload is larger than logistics_hub.max_payload_size (uncompressed, read without detoasting).';
CREATE FUNCTION hub._payload_size(jsonb) RETURNS bigint
	AS 'MODULE_PATHNAME', 'hub_payload_size' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION hub._payload_size(jsonb) IS
'API: Private. A payload''s size in bytes, uncompressed, read without detoasting it (what a dispatcher''s claim counts against logistics_hub.claim_max_bytes).';
REVOKE EXECUTE ON FUNCTION hub._check_key_length(text, text), hub._check_payload_size(text, jsonb),
	hub._payload_size(jsonb) FROM PUBLIC;

CREATE FUNCTION hub._event_types_changed() RETURNS trigger
	AS 'MODULE_PATHNAME', 'hub_event_types_changed' LANGUAGE C;
COMMENT ON FUNCTION hub._event_types_changed() IS
'API: Private. Statement trigger on hub.event_types: every backend drops its catalogue cache at commit.';
CREATE TRIGGER event_types_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON hub.event_types
	FOR EACH STATEMENT EXECUTE FUNCTION hub._event_types_changed();

CREATE FUNCTION hub._retention_active() RETURNS boolean
	AS 'MODULE_PATHNAME', 'hub_retention_active' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION hub._retention_active() IS
'API: Private. true while the retention job has set logistics_hub._retention (superuser-only) for its transaction.';

/*
 * _immutable --- refuses UPDATE, DELETE and TRUNCATE of published events and
 * audit rows, except to the retention job (logistics_hub._retention on).
 * Every UPDATE is refused on the audit tables; events can never be updated.
 * In C (extension/outbox_guc.c): the retention job fires it once per row it
 * removes.  On a partition of hub.attempts it names the partitioned table.
 */
CREATE FUNCTION hub._immutable() RETURNS trigger
	AS 'MODULE_PATHNAME', 'hub_immutable' LANGUAGE C;
COMMENT ON FUNCTION hub._immutable() IS
'API: Private. Trigger refusing UPDATE, DELETE and TRUNCATE of events and audit rows (DELETE and TRUNCATE allowed to the retention job through logistics_hub._retention).';
CREATE TRIGGER outbox_immutable BEFORE UPDATE OR DELETE ON hub.outbox
	FOR EACH ROW EXECUTE FUNCTION hub._immutable();
CREATE TRIGGER outbox_no_truncate BEFORE TRUNCATE ON hub.outbox
	FOR EACH STATEMENT EXECUTE FUNCTION hub._immutable();

/*
 * publish --- in C (extension/outbox_publish.c): one INSERT through a plan
 * prepared once per backend, SECURITY INVOKER (the publisher needs INSERT on
 * hub.outbox, which hub_writer has), so the contract trigger and every
 * constraint apply exactly as to a plain INSERT.
 */
CREATE FUNCTION hub.publish(event_type text, aggregate_id text, payload jsonb,
							correlation_id text DEFAULT NULL, causation_id text DEFAULT NULL,
							headers jsonb DEFAULT NULL, occurred_at timestamptz DEFAULT now())
RETURNS uuid
	AS 'MODULE_PATHNAME', 'hub_publish' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION hub.publish(text, text, jsonb, text, text, jsonb, timestamptz) IS
'Publish an event in the caller''s transaction and return its id (the receivers'' idempotency key). The payload must satisfy the event type''s contract in hub.event_types.';

-- ---------------------------------------------------------------- endpoints

CREATE TABLE hub.endpoints (
	endpoint_id		integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name			text NOT NULL UNIQUE,
	kind			text NOT NULL DEFAULT 'other' CHECK (kind IN ('erp', 'wms', 'tms', 'carrier', 'portal', 'other')),
	url				text NOT NULL CHECK (url ~* '^https?://[^/?#[:space:]]+'),
	enabled			boolean NOT NULL DEFAULT true,
	paused			boolean NOT NULL DEFAULT false,
	timeout_ms		integer NOT NULL DEFAULT 10000 CHECK (timeout_ms BETWEEN 100 AND 600000),
	max_concurrency	integer NOT NULL DEFAULT 16 CHECK (max_concurrency BETWEEN 1 AND 1000),
	-- (NaN and Infinity are out of the range too: NaN sorts above every number)
	rate_limit		numeric CHECK (rate_limit BETWEEN 0.001 AND 100000),
	allow_redirects	boolean NOT NULL DEFAULT false,
	spread			boolean NOT NULL DEFAULT false,
	auth_kind		text NOT NULL DEFAULT 'none' CHECK (auth_kind IN ('none', 'bearer', 'basic', 'api_key', 'oauth2')),
	api_key_header	text,
	oauth2_token_url text,
	headers			jsonb NOT NULL DEFAULT '{}',
	circuit_failure_threshold integer NOT NULL DEFAULT 5 CHECK (circuit_failure_threshold BETWEEN 1 AND 1000),
	circuit_cooloff	interval NOT NULL DEFAULT '30 seconds'
		CHECK (circuit_cooloff BETWEEN interval '0' AND interval '1 day'),
	circuit_state	text NOT NULL DEFAULT 'closed' CHECK (circuit_state IN ('closed', 'open', 'half_open')),
	circuit_opened_at timestamptz,
	consecutive_failures integer NOT NULL DEFAULT 0,
	circuit_failed_keys bigint[] NOT NULL DEFAULT '{}',
	circuit_probe_until timestamptz,
	created_at		timestamptz NOT NULL DEFAULT now()
);
COMMENT ON COLUMN hub.endpoints.spread IS
'Shared by every dispatcher (up to max_concurrency of them), each with its share of max_concurrency and rate_limit, so that one high-volume endpoint uses every core; false (the default): one dispatcher, endpoint_id % logistics_hub.dispatchers, with the full limits.';
COMMENT ON COLUMN hub.endpoints.headers IS 'Fixed extra request headers {"Name": "value"}; readable by hub_reader, so never credentials (auth_kind api_key with api_key_header keeps a key header among the secrets).';
COMMENT ON COLUMN hub.endpoints.consecutive_failures IS
'Distinct business keys (aggregate ids) whose requests failed since the endpoint''s last success; a retry of a key already among them does not count again. The circuit opens when it reaches circuit_failure_threshold.';
COMMENT ON COLUMN hub.endpoints.circuit_failed_keys IS
'The keys counted in consecutive_failures, as hashtextextended(aggregate_id, 0); emptied by a success.';
COMMENT ON COLUMN hub.endpoints.circuit_probe_until IS 'While half_open: the lease end of the one probe delivery handed out; no second probe before it.';
COMMENT ON TABLE hub.endpoints IS
'HTTP receivers (ERP, WMS, TMS, carrier, portal) with their limits, auth kind and circuit-breaker state. Secrets live in hub._endpoint_secrets.';
/*
 * The limits' ranges (CHECK constraints, so that hub.create_endpoint and a
 * plain UPDATE get the same): every value inside them keeps the workers'
 * arithmetic in range (rate windows, shares, cool-off times).  README,
 * "Limits on inputs".
 */
COMMENT ON COLUMN hub.endpoints.timeout_ms IS 'Total time of one request, 100 to 600000 ms.';
COMMENT ON COLUMN hub.endpoints.max_concurrency IS 'Most requests in flight to the endpoint at once, 1 to 1000 (shared by the dispatchers serving it with spread).';
COMMENT ON COLUMN hub.endpoints.rate_limit IS 'Most request starts a second, 0.001 to 100000 (not NaN or Infinity); NULL: no limit.';
COMMENT ON COLUMN hub.endpoints.circuit_failure_threshold IS 'Distinct business keys failing with no success in between that open the circuit, 1 to 1000.';
COMMENT ON COLUMN hub.endpoints.circuit_cooloff IS 'How long an open circuit waits before its probe, 0 to 1 day.';

-- sealed: ciphertext only (extension/sealed.c; README "Sealed secrets")
CREATE TABLE hub._endpoint_secrets (
	endpoint_id		integer PRIMARY KEY REFERENCES hub.endpoints ON DELETE CASCADE,
	auth_secret		bytea,
	oauth2_client_id bytea,
	oauth2_client_secret bytea,
	signing_secrets	bytea[] NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE hub._endpoint_secrets IS
'API: Private. Endpoint credentials and webhook signing secrets (newest first), sealed: each value is XChaCha20-Poly1305 ciphertext under the key of logistics_hub.secret_key_file, bound to its endpoint and column; readable by hub_admin only.';
COMMENT ON COLUMN hub._endpoint_secrets.auth_secret IS
'Sealed bearer token, user:password or API key: version, key id (hub.sealed_key_id), nonce, ciphertext and tag; opened only by the dispatchers.';
COMMENT ON COLUMN hub._endpoint_secrets.signing_secrets IS
'Sealed Standard Webhooks signing secrets, newest first; opened only by the dispatchers.';

CREATE TABLE hub.subscriptions (
	subscription_id	integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	endpoint_id		integer NOT NULL REFERENCES hub.endpoints ON DELETE CASCADE,
	event_pattern	text NOT NULL CHECK (event_pattern ~ '^([a-z][a-z0-9_]*|\*)\.([a-z][a-z0-9_]*|\*)$'),
	filter			jsonb,
	transform		regproc,
	ordering		text NOT NULL DEFAULT 'per_key' CHECK (ordering IN ('per_key', 'none')),
	priority		integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1000 AND 1000),
	max_attempts	integer NOT NULL DEFAULT 12 CHECK (max_attempts BETWEEN 1 AND 1000),
	retry_base		interval NOT NULL DEFAULT '1 second'
		CHECK (retry_base BETWEEN interval '0' AND interval '1 day'),
	retry_max		interval NOT NULL DEFAULT '1 hour'
		CHECK (retry_max BETWEEN interval '0' AND interval '7 days'),
	retry_on_4xx	boolean NOT NULL DEFAULT false,
	body_format		text NOT NULL DEFAULT 'event' CHECK (body_format IN ('event', 'cloudevents', 'batch', 'cloudevents_batch')),
	batch_max		integer NOT NULL DEFAULT 100 CHECK (batch_max BETWEEN 1 AND 1000),
	lease_group		integer NOT NULL DEFAULT 1 CHECK (lease_group BETWEEN 1 AND 1000),
	created_at		timestamptz NOT NULL DEFAULT now(),
	UNIQUE (endpoint_id, event_pattern),
	CONSTRAINT subscriptions_lease_group_unordered
		CHECK (lease_group = 1 OR (ordering = 'none' AND body_format NOT IN ('batch', 'cloudevents_batch'))),
	CONSTRAINT subscriptions_retry_base_max CHECK (retry_base <= retry_max)
);
COMMENT ON TABLE hub.subscriptions IS
'Which events go to which endpoint: an event type pattern (shipment.*), an optional payload filter (@>), an optional transform, ordering per_key or none, priority and retry policy.';
COMMENT ON COLUMN hub.subscriptions.priority IS 'Claim order across subscriptions, -1000 to 1000 (higher first).';
COMMENT ON COLUMN hub.subscriptions.max_attempts IS 'Attempts before a delivery is dead, 1 to 1000.';
COMMENT ON COLUMN hub.subscriptions.retry_base IS 'First retry''s backoff, doubled each attempt (with full jitter) up to retry_max; 0 to 1 day, at most retry_max.';
COMMENT ON COLUMN hub.subscriptions.retry_max IS 'Longest backoff between attempts, 0 to 7 days.';
COMMENT ON COLUMN hub.subscriptions.body_format IS 'What a request carries: event (the canonical event, application/json), cloudevents (a CloudEvents 1.0 structured-mode event, application/cloudevents+json), batch (a JSON array of canonical events, application/json) or cloudevents_batch (a JSON array of CloudEvents, application/cloudevents-batch+json).';
COMMENT ON COLUMN hub.subscriptions.batch_max IS 'Most events in one batch delivery (body_format batch or cloudevents_batch), 1 to 1000.';
COMMENT ON COLUMN hub.subscriptions.lease_group IS
'Up to this many events routed together share one delivery row (one lease, one completion), each still sent as its own request with its own attempt rows; events that fail leave the group as single deliveries. Only for ordering none and one event a request (formats event and cloudevents); 1 (the default): a delivery per event.';

SELECT pg_catalog.pg_extension_config_dump('hub.endpoints', '');
SELECT pg_catalog.pg_extension_config_dump('hub._endpoint_secrets', '');
SELECT pg_catalog.pg_extension_config_dump('hub.subscriptions', '');
-- and their identity sequences, or a restored hub keeps its endpoints and
-- subscriptions but hands out their ids again
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hub.endpoints', 'endpoint_id')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hub.subscriptions', 'subscription_id')::regclass, '');

-- ---------------------------------------------------------------- deliveries

/*
 * event_id has no foreign key on purpose: a key check is a query of its own
 * per routed delivery (a third of a dispatcher's CPU went to such checks),
 * and it would guard nothing the model does not already: events are
 * immutable, deliveries are made only from events just read (routing,
 * replay), and retention removes an event only when no delivery of it is
 * left (80_retention.sql).  subscription_id has none either, for the same
 * cost (a third of routing's time): routing and replay lock the
 * subscriptions they read (FOR KEY SHARE, in the statement that inserts),
 * so a subscription cannot be deleted while deliveries are made for it,
 * and its deletion removes its deliveries (hub._subscription_deleted, as
 * ON DELETE CASCADE did).
 */
CREATE TABLE hub.deliveries (
	delivery_id		bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	subscription_id	integer NOT NULL,	-- no foreign key: see above
	endpoint_id		integer NOT NULL,
	event_id		uuid NOT NULL,
	seq				bigint NOT NULL,
	aggregate_id	text NOT NULL,
	ordering		text NOT NULL,
	priority		integer NOT NULL,
	state			text NOT NULL DEFAULT 'pending'
		CHECK (state IN ('pending', 'in_flight', 'delivered', 'retry_wait', 'dead', 'skipped')),
	attempts		integer NOT NULL DEFAULT 0,
	next_attempt_at	timestamptz NOT NULL DEFAULT now(),
	lease_until		timestamptz,
	lease_token		bigint,
	leased_by		text,
	last_http_status integer,
	last_error		text,
	updated_at		timestamptz NOT NULL DEFAULT now(),
	-- a batch delivery (body_format batch): its events, in order; event_id is
	-- the smallest of them, seq that of the first
	batch_events	uuid[] CHECK (cardinality(batch_events) >= 1),
	-- event first: it also serves every lookup by event (retention, trace)
	CONSTRAINT deliveries_event_subscription_key UNIQUE (event_id, subscription_id),
	-- a lease exists exactly while in flight (the workers rely on it)
	CONSTRAINT deliveries_lease_in_flight CHECK ((state = 'in_flight') = (lease_until IS NOT NULL))
);
/*
 * One ready index for every claimable state, in the claim's order.  An
 * in_flight delivery keeps next_attempt_at = lease_until, so an expired lease
 * is just another ready row; live leases and future retries sit at the end
 * of their priority band, so a claim reads only the rows it hands out (plus
 * blocked successors of per_key heads), whatever the backlog.
 */
CREATE INDEX deliveries_ready_idx ON hub.deliveries (priority DESC, next_attempt_at, seq)
	WHERE state IN ('pending', 'retry_wait', 'in_flight');
-- per-key heads: the lowest open delivery of (subscription, aggregate)
CREATE INDEX deliveries_open_key_idx ON hub.deliveries (subscription_id, aggregate_id, seq)
	WHERE state NOT IN ('delivered', 'skipped');
-- retention keeps every event from the smallest one of an open batch on
-- (one entry a batch, not one an event)
CREATE INDEX deliveries_open_batch_idx ON hub.deliveries (event_id)
	WHERE batch_events IS NOT NULL AND state NOT IN ('delivered', 'skipped');
/*
 * No other index: every one is paid on each claim and each completion (a
 * state change is never a HOT update), about 5 us a row each on our
 * machine.  Open deliveries of a subscription (sync_status, dead letters,
 * replay of the dead) are found through deliveries_open_key_idx; a
 * subscription's delivered history (a ranged replay, the cascade of a
 * dropped subscription) is a scan.
 */
COMMENT ON TABLE hub.deliveries IS
'One delivery per (subscription, event), or per batch of events for body_format batch, or per lease group (hub.subscriptions.lease_group): pending, in_flight (leased, fenced by lease_token), delivered, retry_wait, dead or skipped.';
COMMENT ON COLUMN hub.deliveries.batch_events IS
'The events of a delivery of several, in order: a batch (body_format batch: one request of up to batch_max events, retried, dead-lettered and replayed whole) or a lease group (lease_group: one request per event, leased and completed together; an event that fails leaves the group as a delivery of its own). NULL for a delivery of one event (event_id). Routing forms both.';

CREATE FUNCTION hub._subscription_deleted() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM hub.deliveries d WHERE d.subscription_id = OLD.subscription_id;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION hub._subscription_deleted() IS
'API: Private. Trigger on hub.subscriptions: a deleted subscription takes its deliveries with it (its attempts stay in the audit).';
CREATE TRIGGER subscription_deleted AFTER DELETE ON hub.subscriptions
	FOR EACH ROW EXECUTE FUNCTION hub._subscription_deleted();

CREATE SEQUENCE hub._lease_token_seq;
COMMENT ON SEQUENCE hub._lease_token_seq IS 'API: Private. Fencing tokens for delivery leases.';

/*
 * Attempts are the highest-volume table of the hub (at least one row per
 * delivery, never updated), so they are partitioned by day of `at` (UTC):
 * hub.run_retention() (80_retention.sql) creates the coming days'
 * partitions and removes old days by detaching and dropping whole
 * partitions, which leaves no dead tuples behind.  The default partition
 * catches rows no daily partition covers (before retention first ran, or
 * the attempts of deliveries kept past their day) and is pruned by DELETE.
 * delivery_id has no foreign key: the check would be a query per recorded
 * attempt, every attempt is written under its delivery's lease by the
 * functions below (so the delivery exists), and an append-only audit should
 * outlive a dropped subscription or endpoint rather than be cascaded away
 * (retention removes those rows with their day).
 */
CREATE TABLE hub.attempts (
	attempt_id		bigint GENERATED ALWAYS AS IDENTITY,
	delivery_id		bigint NOT NULL,	-- no foreign key: see below
	attempt			integer NOT NULL,
	at				timestamptz NOT NULL DEFAULT now(),
	worker			text,
	lease_token		bigint,
	http_status		integer,
	error			text,
	latency_ms		integer,
	response_excerpt text CHECK (length(response_excerpt) <= 1024),
	outcome			text NOT NULL CHECK (outcome IN ('delivered', 'retry', 'dead', 'deferred', 'stale', 'expired')),
	group_event_id	uuid,	-- the request's event, for a delivery of a lease group
	PRIMARY KEY (attempt_id, at)
) PARTITION BY RANGE (at);
CREATE TABLE hub._attempts_default PARTITION OF hub.attempts DEFAULT;
COMMENT ON TABLE hub._attempts_default IS
'API: Private. Attempts no daily partition of hub.attempts covers; pruned row by row by hub.run_retention().';
CREATE INDEX attempts_delivery_idx ON hub.attempts (delivery_id, attempt_id);
COMMENT ON TABLE hub.attempts IS
'Append-only audit of every delivery attempt: time, worker, HTTP status or transport error, latency, a bounded response excerpt and the outcome (stale: the result arrived after its lease was reclaimed; expired: the lease ran out, or its worker restarted, with no result).';
COMMENT ON COLUMN hub.attempts.group_event_id IS
'For a delivery of a lease group (hub.subscriptions.lease_group), each of whose events is its own request: the event this attempt sent; NULL when the attempt was the whole delivery.';

CREATE TABLE hub.operator_audit (
	audit_id		bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	at				timestamptz NOT NULL DEFAULT now(),
	actor			text NOT NULL DEFAULT session_user,
	action			text NOT NULL,
	target			text NOT NULL,
	reason			text,
	details			jsonb
);
COMMENT ON TABLE hub.operator_audit IS 'Append-only: who (session user) replayed, skipped, paused or resumed what, or changed or deleted an endpoint or subscription (however it was done), when and why.';
COMMENT ON COLUMN hub.operator_audit.target IS 'What the action applied to: a delivery id, an endpoint name or subscription:<id>.';

CREATE TRIGGER attempts_append_only BEFORE UPDATE OR DELETE ON hub.attempts
	FOR EACH ROW EXECUTE FUNCTION hub._immutable();
CREATE TRIGGER operator_audit_append_only BEFORE UPDATE OR DELETE ON hub.operator_audit
	FOR EACH ROW EXECUTE FUNCTION hub._immutable();
CREATE TRIGGER attempts_no_truncate BEFORE TRUNCATE ON hub.attempts
	FOR EACH STATEMENT EXECUTE FUNCTION hub._immutable();
CREATE TRIGGER operator_audit_no_truncate BEFORE TRUNCATE ON hub.operator_audit
	FOR EACH STATEMENT EXECUTE FUNCTION hub._immutable();

CREATE TABLE hub._router_state (
	one			boolean PRIMARY KEY DEFAULT true CHECK (one),
	watermark	xid8 NOT NULL,
	snapshot	pg_snapshot NOT NULL
);
COMMENT ON TABLE hub._router_state IS
'API: Private. Routing state: every event of a transaction that had ended at snapshot (below its xmin = watermark, or below its xmax and not in its in-progress list) has been routed.';
INSERT INTO hub._router_state VALUES (true, pg_snapshot_xmin(pg_current_snapshot()), pg_current_snapshot());

-- ---- 0.2.0: 45_delivery.sql ----
/*
 * 45_delivery.sql --- the claim / complete / fail API that the delivery
 * workers call (and that works the same with no worker running), plus the
 * operator functions: endpoints, subscriptions, pause, resume, skip, replay.
 */

/*
 * _check_credentials --- refuse (22023) credentials holding CR or LF,
 * naming the endpoint but never the value: the secrets table's own check
 * would show the failing row, secret and all, in its error detail.
 */
CREATE FUNCTION hub._check_credentials(endpoint text, VARIADIC credentials text[]) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF array_to_string(credentials, '') ~ '[\r\n]' THEN
		RAISE EXCEPTION 'a credential of endpoint "%" contains CR or LF', endpoint
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Credentials are sent in header lines.';
	END IF;
END
$$;
COMMENT ON FUNCTION hub._check_credentials(text, text[]) IS
'API: Private. Raise 22023 when a credential holds CR or LF (it would go into a header line), without showing it.';
REVOKE EXECUTE ON FUNCTION hub._check_credentials(text, text[]) FROM PUBLIC;

/*
 * _check_setting --- raise 22023 naming a setting, its value and its range
 * unless ok is true (NULL counts as out of range).  The tables' CHECK
 * constraints hold the same ranges (40_outbox.sql, 60_inbox.sql); this
 * only gives the API functions an error that says what to change.
 */
CREATE FUNCTION hub._check_setting(setting text, ok boolean, value text, range text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF ok IS NOT TRUE THEN
		RAISE EXCEPTION 'invalid %: %', setting, coalesce(value, 'NULL')
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = pg_catalog.format('%s must be %s.', setting, range);
	END IF;
END
$$;
COMMENT ON FUNCTION hub._check_setting(text, boolean, text, text) IS
'API: Private. Raise 22023 "invalid <setting>: <value>" with the setting''s range in the hint unless ok is true.';
REVOKE EXECUTE ON FUNCTION hub._check_setting(text, boolean, text, text) FROM PUBLIC;

CREATE FUNCTION hub.create_endpoint(name text, url text, kind text DEFAULT 'other',
		timeout_ms integer DEFAULT 10000, max_concurrency integer DEFAULT 16,
		rate_limit numeric DEFAULT NULL, allow_redirects boolean DEFAULT false,
		auth_kind text DEFAULT 'none', auth_secret text DEFAULT NULL,
		api_key_header text DEFAULT NULL, oauth2_token_url text DEFAULT NULL,
		oauth2_client_id text DEFAULT NULL, oauth2_client_secret text DEFAULT NULL,
		signing_secret text DEFAULT NULL, headers jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id integer;
BEGIN
	-- (before anything that would show the URL, password and all)
	IF url ~ '^[^/?#]*(//)?[^/?#]*@' OR oauth2_token_url ~ '^[^/?#]*(//)?[^/?#]*@' THEN
		RAISE EXCEPTION 'endpoint URL must not contain user information'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A user name or password in the URL would be readable by hub_reader.',
				  HINT = 'Pass credentials as auth_kind and auth_secret (or oauth2_client_id and oauth2_client_secret).';
	END IF;
	IF url !~* '^https?://[^/?#[:space:]]+' THEN
		RAISE EXCEPTION 'invalid endpoint URL: "%"', url
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Only http:// and https:// URLs can be delivered to.';
	END IF;
	IF signing_secret IS NOT NULL AND signing_secret !~ '^whsec_[A-Za-z0-9+/=]+$' THEN
		RAISE EXCEPTION 'invalid signing secret' USING ERRCODE = 'invalid_parameter_value',
			HINT = 'A Standard Webhooks secret is whsec_ followed by base64.';
	END IF;
	PERFORM hub._check_credentials(name, auth_secret, oauth2_client_id, oauth2_client_secret);
	PERFORM hub._check_setting('timeout_ms', timeout_ms BETWEEN 100 AND 600000, timeout_ms::text,
							   'between 100 and 600000 (milliseconds)');
	PERFORM hub._check_setting('max_concurrency', max_concurrency BETWEEN 1 AND 1000, max_concurrency::text,
							   'between 1 and 1000');
	PERFORM hub._check_setting('rate_limit', rate_limit IS NULL OR rate_limit BETWEEN 0.001 AND 100000,
							   rate_limit::text, 'NULL (no limit) or between 0.001 and 100000 requests a second');
	INSERT INTO hub.endpoints (name, url, kind, timeout_ms, max_concurrency, rate_limit, allow_redirects,
							   auth_kind, api_key_header, oauth2_token_url, headers)
	VALUES (name, url, kind, timeout_ms, max_concurrency, rate_limit, allow_redirects,
			auth_kind, api_key_header, oauth2_token_url, coalesce(headers, '{}'))
	RETURNING endpoint_id INTO id;
	-- sealed (hub._seal, 55_secrets.sql): only ciphertext reaches the table
	INSERT INTO hub._endpoint_secrets (endpoint_id, auth_secret, oauth2_client_id, oauth2_client_secret, signing_secrets)
	VALUES (id, hub._seal(id, 'auth_secret', auth_secret), hub._seal(id, 'oauth2_client_id', oauth2_client_id),
			hub._seal(id, 'oauth2_client_secret', oauth2_client_secret),
			CASE WHEN signing_secret IS NULL THEN '{}' ELSE ARRAY[hub._seal(id, 'signing_secrets', signing_secret)] END);
	RETURN id;
END
$$;
COMMENT ON FUNCTION hub.create_endpoint(text, text, text, integer, integer, numeric, boolean, text, text, text, text, text, text, text, jsonb) IS
'Register an HTTP receiver; everything after kind is optional and passed by name. Secrets are sealed (55000 when no secret key is loaded) into a table only hub_admin can read. Returns the endpoint id.';

-- the endpoint's id, or 42704 naming it
CREATE FUNCTION hub._endpoint_id(endpoint text) RETURNS integer
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id integer;
BEGIN
	SELECT e.endpoint_id INTO id FROM hub.endpoints e WHERE e.name = endpoint;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'endpoint "%" does not exist', endpoint
			USING ERRCODE = 'undefined_object', HINT = 'Create it with hub.create_endpoint().';
	END IF;
	RETURN id;
END
$$;
COMMENT ON FUNCTION hub._endpoint_id(text) IS 'API: Private. The id of the endpoint named so, or 42704.';
REVOKE EXECUTE ON FUNCTION hub._endpoint_id(text) FROM PUBLIC;

CREATE FUNCTION hub.subscribe(endpoint text, event_pattern text, filter jsonb DEFAULT NULL,
		transform regproc DEFAULT NULL, ordering text DEFAULT 'per_key', priority integer DEFAULT 0,
		max_attempts integer DEFAULT 12, retry_base interval DEFAULT '1 second',
		retry_max interval DEFAULT '1 hour', retry_on_4xx boolean DEFAULT false,
		body_format text DEFAULT 'event', batch_max integer DEFAULT 100, lease_group integer DEFAULT 1)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	e integer;
	id integer;
BEGIN
	e := hub._endpoint_id(endpoint);
	PERFORM hub._check_setting('priority', priority BETWEEN -1000 AND 1000, priority::text, 'between -1000 and 1000');
	PERFORM hub._check_setting('max_attempts', max_attempts BETWEEN 1 AND 1000, max_attempts::text,
							   'between 1 and 1000');
	PERFORM hub._check_setting('retry_base', retry_base BETWEEN interval '0' AND interval '1 day',
							   retry_base::text, 'between 0 and 1 day');
	PERFORM hub._check_setting('retry_max', retry_max BETWEEN interval '0' AND interval '7 days',
							   retry_max::text, 'between 0 and 7 days');
	PERFORM hub._check_setting('retry_base', retry_base <= retry_max, retry_base::text,
							   pg_catalog.format('at most retry_max (%s)', retry_max));
	PERFORM hub._check_setting('batch_max', batch_max BETWEEN 1 AND 1000, batch_max::text, 'between 1 and 1000');
	-- (the table's CHECK constraints hold the same; this names the value)
	PERFORM hub._check_setting('body_format', body_format IN ('event', 'cloudevents', 'batch', 'cloudevents_batch'),
							   '"' || body_format || '"',
							   'event, cloudevents, batch or cloudevents_batch');
	PERFORM hub._check_setting('ordering', ordering IN ('per_key', 'none'), '"' || ordering || '"',
							   'per_key or none');
	IF transform IS NOT NULL THEN
		PERFORM hub._check_user_function(transform, 'transform function', '3802', 'jsonb');
	END IF;
	IF lease_group IS DISTINCT FROM 1 AND (lease_group IS NULL OR lease_group NOT BETWEEN 1 AND 1000
			OR ordering IS DISTINCT FROM 'none' OR body_format IN ('batch', 'cloudevents_batch')) THEN
		RAISE EXCEPTION 'invalid lease_group: %', coalesce(lease_group::text, 'NULL')
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'A lease group holds 1 to 1000 events, and only a subscription with ordering => ''none'' and one event a request (body_format event or cloudevents) can have one.';
	END IF;
	INSERT INTO hub.subscriptions (endpoint_id, event_pattern, filter, transform, ordering, priority,
								   max_attempts, retry_base, retry_max, retry_on_4xx, body_format, batch_max,
								   lease_group)
	VALUES (e, event_pattern, filter, transform, ordering, priority, max_attempts, retry_base,
			retry_max, retry_on_4xx, body_format, batch_max, lease_group)
	RETURNING subscription_id INTO id;
	RETURN id;
END
$$;
COMMENT ON FUNCTION hub.subscribe(text, text, jsonb, regproc, text, integer, integer, interval, interval, boolean, text, integer, integer) IS
'Subscribe an endpoint to events matching a pattern (order.*, *.delivered, shipment.dispatched). Applies to events published from now on; use hub.replay_subscription to backfill. lease_group > 1 (ordering none, one event a request) lets up to that many events routed together share one delivery row, leased and completed at once, each still its own request. Returns the subscription id; 22023 for a setting out of its range, an unknown body_format (event, cloudevents, batch, cloudevents_batch) or ordering (per_key, none).';

/*
 * _route_events --- fan out every committed event that is not routed yet.
 * Serialized by the row lock on hub._router_state (a second router skips).
 * Sequence numbers commit out of order, so routing follows transactions,
 * not an id cursor.  The state keeps the snapshot S taken at the start of
 * the last pass: every event of a transaction that had ended at S is
 * routed.  The events that may not be are therefore those of transactions
 * in progress at S (its xip list) or starting later (xid >= its xmax); event
 * ids lead with their transaction's xid, so both are primary key ranges.
 * A pass routes the committed ones among them and stores its own starting
 * snapshot.  An event whose transaction commits after later ones were
 * routed and delivered is thus still routed; a long-running transaction
 * delays only its own events and does not make every pass re-read what
 * was published since it began.  A pass routes only the events of
 * transactions that had ended at its own starting snapshot, so no event is
 * routed twice (ON CONFLICT is only a safety net).
 */
CREATE FUNCTION hub._route_events() RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
DECLARE
	cur pg_snapshot := pg_current_snapshot();
	prev pg_snapshot;
	n bigint;
BEGIN
	/*
	 * Nothing to look at (no event from a transaction in progress at the
	 * last pass nor from a later one): keep the state as it is, which is
	 * always safe, and spare every idle claim the planning of the INSERT.
	 * This look comes before the row lock, which would give every idle
	 * claim a transaction id and a WAL record: an idle hub writes nothing.
	 * A pass that finds work locks the state and looks again under the
	 * lock.  (Each probe is an ORDER BY ... LIMIT 1 outside EXISTS, which
	 * would drop the LIMIT, so that it is one descent of the primary key
	 * whatever the statistics say.)
	 */
	FOR pass IN 1 .. 2 LOOP
		IF pass = 1 THEN
			SELECT r.snapshot INTO prev FROM hub._router_state r;
		ELSE
			SELECT r.snapshot INTO prev FROM hub._router_state r FOR UPDATE SKIP LOCKED;
			IF NOT FOUND THEN
				RETURN 0;		-- another router is at work
			END IF;
		END IF;
		IF (SELECT o.event_id FROM hub.outbox o WHERE o.event_id >= hub._event_id_floor(pg_snapshot_xmax(prev))
			ORDER BY o.event_id LIMIT 1) IS NULL
			AND NOT EXISTS (SELECT 1 FROM pg_snapshot_xip(prev) x,
							LATERAL (SELECT 1 FROM hub.outbox o
									 WHERE o.event_id BETWEEN hub._event_id_floor(x) AND hub._event_id_ceiling(x)
									 ORDER BY o.event_id LIMIT 1) o) THEN
			RETURN 0;
		END IF;
	END LOOP;
	/*
	 * The subscriptions are locked in the inserting statement itself, so
	 * none read here can be deleted before the deliveries are committed
	 * (hub.deliveries has no foreign key, see 40_outbox.sql).  Only events
	 * of transactions that had ended in cur are routed: the statement's own
	 * snapshot is younger and may see more, which the next pass, starting
	 * from cur, routes (ON CONFLICT is only a safety net: a batch delivery
	 * has a key on its smallest event alone).
	 *
	 * A batch subscription gets its events in batch deliveries of up to
	 * batch_max, in seq order: with per_key ordering, per one of 64 buckets
	 * of the aggregate's hash (the bucket is the batch's aggregate_id, so
	 * the batches of a bucket go in order, and with them the events of
	 * each key), with none, in one run.  A subscription with a lease group
	 * (ordering none) gets its events the same way, in deliveries of up to
	 * lease_group events, each of which is still sent on its own.  Events
	 * routed in one pass are batched together: under load a pass sees many,
	 * and an idle hub sends an event as soon as it is routed, in a batch of
	 * one.
	 */
	WITH s AS (SELECT * FROM hub.subscriptions FOR KEY SHARE), ev AS (
		SELECT s.subscription_id, s.endpoint_id, o.event_id, o.seq, o.aggregate_id, s.ordering, s.priority,
			   s.body_format IN ('batch', 'cloudevents_batch') OR s.lease_group > 1 AS batched,
			   CASE WHEN s.body_format IN ('batch', 'cloudevents_batch') THEN s.batch_max ELSE s.lease_group END AS batch_max,
			   CASE WHEN s.ordering = 'per_key' THEN abs(hashtext(o.aggregate_id) % 64) ELSE 0 END AS bucket
		FROM (SELECT o.event_id, o.seq, o.event_type, o.aggregate_id, o.payload, o.published_at
			  FROM hub.outbox o
			  WHERE o.event_id >= hub._event_id_floor(pg_snapshot_xmax(prev))
			  UNION ALL
			  SELECT o.event_id, o.seq, o.event_type, o.aggregate_id, o.payload, o.published_at
			  FROM pg_snapshot_xip(prev) x
			  JOIN hub.outbox o ON o.event_id BETWEEN hub._event_id_floor(x) AND hub._event_id_ceiling(x)) o
		JOIN s
			ON (split_part(s.event_pattern, '.', 1) IN ('*', split_part(o.event_type, '.', 1))
				AND split_part(s.event_pattern, '.', 2) IN ('*', split_part(o.event_type, '.', 2)))
			AND (s.filter IS NULL OR o.payload @> s.filter)
			AND s.created_at <= o.published_at
		WHERE pg_visible_in_snapshot(hub._event_xid(o.event_id), cur)
	)
	INSERT INTO hub.deliveries (subscription_id, endpoint_id, event_id, seq, aggregate_id, ordering, priority,
								batch_events)
	SELECT ev.subscription_id, ev.endpoint_id, ev.event_id, ev.seq, ev.aggregate_id, ev.ordering, ev.priority, NULL
	FROM ev
	WHERE NOT ev.batched
	UNION ALL
	SELECT b.subscription_id, b.endpoint_id, (array_agg(b.event_id ORDER BY b.event_id))[1], min(b.seq),
		   CASE WHEN b.ordering = 'per_key' THEN 'batch:' || b.bucket ELSE min(b.aggregate_id) END,
		   b.ordering, b.priority, array_agg(b.event_id ORDER BY b.seq)
	FROM (SELECT ev.*, (row_number() OVER (PARTITION BY ev.subscription_id, ev.bucket ORDER BY ev.seq) - 1)
						   / ev.batch_max AS chunk
		  FROM ev
		  WHERE ev.batched) b
	GROUP BY b.subscription_id, b.endpoint_id, b.ordering, b.priority, b.bucket, b.chunk
	ORDER BY 3, 1
	ON CONFLICT (subscription_id, event_id) DO NOTHING;
	GET DIAGNOSTICS n = ROW_COUNT;
	UPDATE hub._router_state SET snapshot = cur, watermark = pg_snapshot_xmin(cur);
	RETURN n;
END
$$;
COMMENT ON FUNCTION hub._route_events() IS
'API: Private. Create the deliveries of every committed event not routed yet (follows the transactions of the last routing snapshot, safe against out-of-order commits). Returns the number created.';

/*
 * (jit is off for the claim and routing statements: their cost estimates
 * grow with the backlog and would cross jit_above_cost, and compiling
 * costs far more than the few rows they touch.  Routing reads only primary
 * key ranges of hub.outbox, the newest sliver of it, which a generic plan
 * cannot know: left to itself it would scan the whole outbox on every
 * claim.  With sequential scans disabled its one cached generic plan reads
 * those ranges by index (the subscriptions, which have no usable index,
 * are still read whole, once), so no claim pays for planning routing.)
 *
 * _claim --- lease up to max ready deliveries.  With p_endpoint NULL: the
 * deliveries of this shard's endpoints whose circuit is closed; otherwise
 * those of that one endpoint (a half-open probe).  The candidates are locked
 * FOR UPDATE SKIP LOCKED in the same statement that updates them, so under
 * READ COMMITTED a row another claimer changed meanwhile is re-checked
 * against the WHERE clause (EvalPlanQual) and one locked by another claimer
 * is skipped: no delivery is handed out twice and no claim waits.
 *
 * Every join of the claim goes from at most p_max rows to rows found by
 * primary key, so only nested loops are allowed: the cached generic plan
 * does not know p_max, guesses a tenth of the table, and would otherwise
 * hash the whole of hub.deliveries and hub.outbox on every claim (claim
 * time growing with the table, not with the rows claimed).  Sequential and
 * bitmap scans are off for the same reason: statistics taken when little
 * was ready make a scan and sort of the whole table look cheaper than the
 * ready index read in claim order, which stops after p_max rows.
 *
 * The candidates must come from the ready index in claim order, so that the
 * LIMIT stops the scan after the rows handed out.  The planner cannot see
 * that: the per-key NOT EXISTS has no useful estimate, and with a large
 * backlog it preferred reading every ready row and sorting them (8.5 s a
 * claim at 1M deliveries instead of 10 ms).  Sorting is therefore off for
 * this function (the final ORDER BY of at most max rows still sorts), and
 * the shard test is on the endpoint, where it is estimated on the small
 * endpoints table rather than as a 0.5% filter on every delivery.  The
 * plan is generic by force: left to choose, the plan cache planned the
 * statement anew for every claim that found little (two milliseconds a
 * claim of an idle dispatcher).
 */
/*
 * _serves / _serves_share --- how claimers split the endpoints.  Shard k of
 * n serves endpoint e when (k - e) mod n < w, where w is e's max_concurrency
 * for an endpoint with spread set and 1 for any other: an endpoint without
 * spread has one shard, e mod n, with its full limits; one with spread is
 * shared by min(n, max_concurrency) shards, so one busy endpoint keeps
 * every dispatcher (and core) at work.  Each shard serving it is entitled to a share of
 * its concurrency, max_concurrency / n plus one for the first
 * max_concurrency mod n of them (the shares add up to max_concurrency), and
 * to the same fraction of its rate limit; the dispatchers
 * (workers/dispatcher.c) compute the same shares, so neither cap is ever
 * exceeded in sum.  (Per-key order holds across shards: the claim hands
 * out only heads, and a head leased by one shard blocks its successors for
 * all.)  Inlined into the claim.
 */
CREATE FUNCTION hub._serves(shard integer, nshards integer, endpoint_id integer, max_concurrency integer)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
	SELECT ((shard OPERATOR(pg_catalog.-) endpoint_id) OPERATOR(pg_catalog.%) nshards
			OPERATOR(pg_catalog.+) nshards) OPERATOR(pg_catalog.%) nshards
		OPERATOR(pg_catalog.<) max_concurrency
$$;
COMMENT ON FUNCTION hub._serves(integer, integer, integer, integer) IS
'API: Private. Does shard of nshards serve this endpoint? (shard - endpoint_id) mod nshards < max_concurrency.';

CREATE FUNCTION hub._serves_share(shard integer, nshards integer, endpoint_id integer, max_concurrency integer)
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
	SELECT max_concurrency OPERATOR(pg_catalog./) nshards
		OPERATOR(pg_catalog.+) CASE WHEN hub._serves(shard, nshards, endpoint_id,
													 max_concurrency OPERATOR(pg_catalog.%) nshards)
									THEN 1 ELSE 0 END
$$;
COMMENT ON FUNCTION hub._serves_share(integer, integer, integer, integer) IS
'API: Private. The part of an endpoint''s max_concurrency (and the same fraction of its rate limit) that shard of nshards may use; 0 when it does not serve the endpoint.';

CREATE TYPE hub._claimed AS (delivery_id bigint, lease_token bigint, attempt integer, event_id uuid,
	event_type text, aggregate_id text, occurred_at timestamptz, correlation_id text, payload jsonb,
	subscription_id integer, endpoint_id integer, body_format text, transform regproc, batch_size integer,
	batch_max integer, body text);
COMMENT ON TYPE hub._claimed IS
'API: Private. One event of a claimed delivery (a batch delivery gives one row per event, batch_size of them, with the same delivery_id and lease_token); body is the event rendered for its receiver (hub.event_body), when the claim was asked to render.';

CREATE FUNCTION hub._claim(p_max integer, p_worker text, p_lease interval, p_shard integer,
						   p_nshards integer, p_endpoint integer, p_max_events integer, p_rounds integer,
						   p_held_ids integer[], p_held integer[], p_source text, p_max_bytes bigint DEFAULT NULL)
RETURNS SETOF hub._claimed
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
SET plan_cache_mode = force_generic_plan
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_sort = off
AS $$
DECLARE
	cap bigint;
BEGIN
	/*
	 * With the claimer's per-endpoint cap (p_rounds), no more candidates
	 * than the cap can use in all: each is locked, and a lock is a write.
	 */
	IF p_rounds IS NOT NULL AND p_endpoint IS NULL THEN
		SELECT sum(greatest(0, p_rounds * CASE WHEN e.spread THEN hub._serves_share(p_shard, p_nshards, e.endpoint_id,
																					  e.max_concurrency)
										  ELSE e.max_concurrency END
							   - coalesce((SELECT h.n FROM unnest(p_held_ids, p_held) h(id, n)
										   WHERE h.id = e.endpoint_id), 0)))
		INTO cap
		FROM hub.endpoints e
		WHERE e.enabled AND NOT e.paused AND e.circuit_state = 'closed'
			AND hub._serves(p_shard, p_nshards, e.endpoint_id, CASE WHEN e.spread THEN e.max_concurrency ELSE 1 END);
		p_max := least(p_max, greatest(coalesce(cap, 0), 1));
	END IF;
	RETURN QUERY
	WITH candidates AS (
		SELECT d.delivery_id, d.state AS old_state, d.lease_token AS old_token,
			   d.leased_by AS old_worker, d.attempts AS old_attempt,
			   coalesce(cardinality(d.batch_events), 1) AS n_events,
			   -- requests: one a batch, one an event of a lease group
			   CASE WHEN d.batch_events IS NULL THEN 1
					WHEN (SELECT s.body_format FROM hub.subscriptions s
						  WHERE s.subscription_id = d.subscription_id) IN ('batch', 'cloudevents_batch') THEN 1
					ELSE cardinality(d.batch_events) END AS n_requests,
			   d.priority AS o_priority, d.next_attempt_at AS o_next, d.seq AS o_seq,
			   e.endpoint_id AS o_endpoint,
			   CASE WHEN e.spread THEN hub._serves_share(p_shard, p_nshards, e.endpoint_id, e.max_concurrency)
					ELSE e.max_concurrency END AS o_share,
			   -- payload bytes, with a byte budget only (a primary key
			   -- lookup an event, sizes read from the headers)
			   CASE WHEN p_max_bytes IS NULL THEN 0
					WHEN d.batch_events IS NULL
					THEN (SELECT hub._payload_size(o.payload) FROM hub.outbox o WHERE o.event_id = d.event_id)
					ELSE (SELECT sum(hub._payload_size(o.payload))
						  FROM unnest(d.batch_events) b(event_id)
						  JOIN hub.outbox o ON o.event_id = b.event_id) END AS n_bytes
		FROM hub.deliveries d
		JOIN (SELECT e.*, CASE WHEN e.spread THEN e.max_concurrency ELSE 1 END AS spread_width
			  FROM hub.endpoints e) e ON e.endpoint_id = d.endpoint_id
		WHERE d.state IN ('pending', 'retry_wait', 'in_flight') AND d.next_attempt_at <= now()
			AND e.enabled AND NOT e.paused
			AND CASE WHEN p_endpoint IS NULL
					 THEN e.circuit_state = 'closed' AND hub._serves(p_shard, p_nshards, e.endpoint_id, e.spread_width)
					 ELSE d.endpoint_id = p_endpoint END
			AND (d.ordering = 'none' OR NOT EXISTS (
				SELECT 1 FROM hub.deliveries p
				WHERE p.subscription_id = d.subscription_id AND p.aggregate_id = d.aggregate_id
					AND p.seq < d.seq AND p.state NOT IN ('delivered', 'skipped')))
		ORDER BY d.priority DESC, d.next_attempt_at, d.seq
		LIMIT p_max
		FOR UPDATE OF d SKIP LOCKED
	), capped AS (
		-- from each endpoint, no more requests than make the claimer hold
		-- (p_held: the requests it holds already) p_rounds times its share
		-- of the endpoint's connections; then at most p_max_events events
		-- and p_max_bytes payload bytes (the first delivery always); the
		-- rows locked above and left out here are free again at commit
		SELECT c.* FROM (
			SELECT c.*, sum(c.n_events) OVER w AS upto, sum(c.n_bytes) OVER w AS upto_bytes
			FROM (SELECT c.*, sum(c.n_requests) OVER (PARTITION BY c.o_endpoint
													  ORDER BY c.o_priority DESC, c.o_next, c.o_seq
													  ROWS UNBOUNDED PRECEDING) AS requests
				  FROM candidates c) c
			WHERE p_rounds IS NULL OR p_endpoint IS NOT NULL
				OR c.requests - c.n_requests < p_rounds * c.o_share
							 - coalesce((SELECT h.n FROM unnest(p_held_ids, p_held) h(id, n)
										 WHERE h.id = c.o_endpoint), 0)
			WINDOW w AS (ORDER BY c.o_priority DESC, c.o_next, c.o_seq ROWS UNBOUNDED PRECEDING)) c
		WHERE (p_max_events IS NULL OR c.upto - c.n_events < p_max_events)
			AND (p_max_bytes IS NULL OR c.upto_bytes - c.n_bytes < p_max_bytes)
	), claimed AS (
		UPDATE hub.deliveries d
		SET state = 'in_flight', lease_until = now() + p_lease, next_attempt_at = now() + p_lease,
			lease_token = nextval('hub._lease_token_seq'), attempts = d.attempts + 1,
			leased_by = p_worker, updated_at = now()
		FROM capped c
		WHERE d.delivery_id = c.delivery_id
		-- (the size apart: batch_events read above the join with the events
		-- would be read again for every event, the whole array detoasted
		-- once an event when it is large)
		RETURNING d.*, coalesce(cardinality(d.batch_events), 1) AS n_events
	), expired AS (
		-- a lease that ran out: its attempt never reported; say so in the audit
		INSERT INTO hub.attempts (delivery_id, attempt, worker, lease_token, error, outcome)
		SELECT c.delivery_id, c.old_attempt, c.old_worker, c.old_token, 'lease expired without a result', 'expired'
		FROM capped c
		WHERE c.old_state = 'in_flight'
	)
	-- (rendered: the body instead of the payload, the row carried no
	-- bigger than it must be through the callers' RETURN QUERY)
	SELECT c.delivery_id, c.lease_token, c.attempts, o.event_id, o.event_type, o.aggregate_id,
		   o.occurred_at, o.correlation_id,
		   CASE WHEN p_source IS NULL THEN o.payload END, c.subscription_id, c.endpoint_id, s.body_format, s.transform,
		   c.n_events, s.batch_max,
		   CASE WHEN p_source IS NOT NULL
				THEN hub.event_body(s.body_format, o.event_id, o.event_type, o.aggregate_id, o.occurred_at,
									o.correlation_id, o.payload, p_source) END
	FROM claimed c
	CROSS JOIN LATERAL unnest(coalesce(c.batch_events, ARRAY[c.event_id])) WITH ORDINALITY AS b(event_id, ord)
	JOIN hub.outbox o ON o.event_id = b.event_id
	JOIN hub.subscriptions s ON s.subscription_id = c.subscription_id
	-- (rendering for a dispatcher: a subscription's deliveries together,
	-- for its batches)
	ORDER BY c.priority DESC, CASE WHEN p_source IS NOT NULL THEN c.subscription_id END, c.seq, c.delivery_id,
		b.ord;
END
$$;
COMMENT ON FUNCTION hub._claim(integer, text, interval, integer, integer, integer, integer, integer, integer[], integer[], text, bigint) IS
'API: Private. The leasing statement of hub.claim_deliveries (closed circuits of a shard, or one endpoint''s probe): up to p_max deliveries and, unless NULL, p_max_events events and p_max_bytes payload bytes (hub._payload_size; the first delivery always comes whole) and, with what the claimer holds (p_held_ids, p_held), p_rounds times the shard''s share of each endpoint''s max_concurrency; a batch delivery comes as one row per event, in order. With p_source, each event comes rendered (hub.event_body with that source; body, and payload NULL), a subscription''s deliveries together.';

/*
 * _claim_transformed --- _claim with each subscription's transform applied.
 * A transform that raises fails that one delivery (an attempt saying which
 * function failed and why, retried with backoff, dead after max_attempts;
 * it does not count towards the endpoint's circuit breaker, the receiver is
 * not at fault) instead of aborting the claim, which would stop every
 * endpoint; none of its events is handed out (a batch goes whole or not at
 * all).  An event of a lease group, though, is a request of its own: it
 * alone leaves the group (hub._split_group) and fails, and the rest of the
 * group goes out.  Each transform runs in a subtransaction of its own; with
 * no transform configured the rows go through untouched.
 */
CREATE FUNCTION hub._claim_transformed(p_max integer, p_worker text, p_lease interval, p_shard integer,
									   p_nshards integer, p_endpoint integer, p_max_events integer,
									   p_rounds integer, p_held_ids integer[], p_held integer[], p_source text,
									   p_max_bytes bigint DEFAULT NULL)
RETURNS SETOF hub._claimed
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
	rows hub._claimed[];
	r hub._claimed;
	failed bigint[] := '{}';
	failed_events uuid[] := '{}';	-- events of lease groups that failed alone
	failed_groups bigint[] := '{}';	-- (and the group each left)
	alone bigint;
	err text;
BEGIN
	IF NOT EXISTS (SELECT 1 FROM hub.subscriptions s WHERE s.transform IS NOT NULL) THEN
		RETURN QUERY
		SELECT * FROM hub._claim(p_max, p_worker, p_lease, p_shard, p_nshards, p_endpoint, p_max_events, p_rounds,
								 p_held_ids, p_held, p_source, p_max_bytes);
		RETURN;
	END IF;
	-- (unrendered: the transforms need the payloads; rendered below, in
	-- claim order rather than a subscription's deliveries together, so a
	-- replay of single events of a transformed batch subscription may go
	-- out in more, smaller batches)
	rows := ARRAY(SELECT c FROM hub._claim(p_max, p_worker, p_lease, p_shard, p_nshards, p_endpoint, p_max_events, p_rounds,
						 p_held_ids, p_held, NULL, p_max_bytes) c);
	FOR i IN 1 .. coalesce(array_length(rows, 1), 0) LOOP
		r := rows[i];
		CONTINUE WHEN r.transform IS NULL OR r.delivery_id = ANY (failed);
		BEGIN
			r.payload := hub._transform(r.transform, r.payload);
			rows[i] := r;
		EXCEPTION WHEN OTHERS THEN
			err := format('transform %s failed: %s (SQLSTATE %s)', r.transform, SQLERRM, SQLSTATE);
			IF r.batch_size > 1 AND r.body_format IS DISTINCT FROM 'batch'
			   AND r.body_format IS DISTINCT FROM 'cloudevents_batch' THEN
				-- an event of a lease group, which is its own request: only
				-- it leaves the group (a delivery of its own, same lease) and
				-- fails; the rest of the group goes out
				SELECT x.delivery_id INTO alone
				FROM hub._split_group(r.delivery_id, r.lease_token, ARRAY[r.event_id]) x
				WHERE x.event_id = r.event_id;
				PERFORM hub.fail_delivery(alone, r.lease_token, NULL, err, 0, NULL, NULL, p_worker, false);
				failed_events := failed_events || r.event_id;
				failed_groups := failed_groups || r.delivery_id;
			ELSE
				PERFORM hub.fail_delivery(r.delivery_id, r.lease_token, NULL, err, 0, NULL, NULL, p_worker, false);
				failed := failed || r.delivery_id;
			END IF;
		END;
	END LOOP;
	RETURN QUERY
	SELECT c.delivery_id, c.lease_token, c.attempt, c.event_id, c.event_type, c.aggregate_id,
		   c.occurred_at, c.correlation_id, c.payload, c.subscription_id, c.endpoint_id, c.body_format,
		   c.transform,
		   c.batch_size - (SELECT count(*) FROM unnest(failed_groups) g WHERE g = c.delivery_id)::integer,
		   c.batch_max,
		   CASE WHEN p_source IS NOT NULL
				THEN hub.event_body(c.body_format, c.event_id, c.event_type, c.aggregate_id, c.occurred_at,
									c.correlation_id, c.payload, p_source) END
	FROM unnest(rows) WITH ORDINALITY AS c
	WHERE c.delivery_id <> ALL (failed) AND c.event_id <> ALL (failed_events)
	ORDER BY c.ordinality;
END
$$;
COMMENT ON FUNCTION hub._claim_transformed(integer, text, interval, integer, integer, integer, integer, integer, integer[], integer[], text, bigint) IS
'API: Private. hub._claim with subscription transforms applied; a transform that raises fails only its delivery (recorded, retried, never counted against the endpoint) and none of its events is handed out; for an event of a lease group, only that event, split out of its group.';

/*
 * _claim_probes --- circuits: an open circuit whose cool-off is over turns
 * half_open, and a half-open endpoint gets one probe at a time.  The
 * probe's lease is kept on the endpoint row, which is locked and updated
 * here, so a concurrent claimer skips it or re-checks the updated row: never
 * two probes.  claimed: the rows the claim before it handed out (no probe
 * once they reach max).
 */
CREATE FUNCTION hub._claim_probes(max integer, claimed integer, worker text, lease interval, shard integer,
		nshards integer, source text)
RETURNS SETOF hub._claimed
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET jit = off
AS $$
DECLARE
	n integer := claimed;
	ep integer;
BEGIN
	UPDATE hub.endpoints e SET circuit_state = 'half_open', circuit_probe_until = NULL
	WHERE e.circuit_state = 'open' AND e.circuit_opened_at + e.circuit_cooloff <= now()
		AND hub._serves(shard, nshards, e.endpoint_id, CASE WHEN e.spread THEN e.max_concurrency ELSE 1 END);
	FOR ep IN
		SELECT e.endpoint_id FROM hub.endpoints e
		WHERE e.circuit_state = 'half_open' AND e.enabled AND NOT e.paused
			AND hub._serves(shard, nshards, e.endpoint_id, CASE WHEN e.spread THEN e.max_concurrency ELSE 1 END)
			AND (e.circuit_probe_until IS NULL OR e.circuit_probe_until <= now())
		ORDER BY e.endpoint_id
		FOR UPDATE SKIP LOCKED
	LOOP
		EXIT WHEN n >= max;
		RETURN QUERY SELECT * FROM hub._claim_transformed(1, worker, lease, shard, nshards, ep, NULL, NULL, NULL, NULL,
														  source);
		IF FOUND THEN
			n := n + 1;
			UPDATE hub.endpoints e SET circuit_probe_until = now() + lease WHERE e.endpoint_id = ep;
		END IF;
	END LOOP;
END
$$;
COMMENT ON FUNCTION hub._claim_probes(integer, integer, text, interval, integer, integer, text) IS
'API: Private. The probes of a claim: half-opens the circuits of the shard whose cool-off is over, and leases one delivery of each half-open endpoint not probed yet, while fewer than max rows are claimed.';

CREATE FUNCTION hub._claim_all(max integer, worker text, lease interval, shard integer, nshards integer,
		max_events integer, rounds integer, held_ids integer[], held integer[], source text)
RETURNS SETOF hub._claimed
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET jit = off
AS $$
DECLARE
	n integer;
BEGIN
	PERFORM hub._route_events();
	RETURN QUERY SELECT * FROM hub._claim_transformed(max, worker, lease, shard, nshards, NULL, max_events, rounds,
													  held_ids, held, source);
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN QUERY SELECT * FROM hub._claim_probes(max, n, worker, lease, shard, nshards, source);
END
$$;
COMMENT ON FUNCTION hub._claim_all(integer, text, interval, integer, integer, integer, integer, integer[], integer[], text) IS
'API: Private. What hub.claim_deliveries does once its arguments are checked (route, claim, probes), with the dispatchers'' per-endpoint cap: rounds times the shard''s share of an endpoint''s connections, less what the claimer holds (held_ids, held); with source, the events rendered (hub._claim). The dispatchers make the same three steps themselves, the claim straight from hub._claim when no transform is configured.';

CREATE FUNCTION hub.claim_deliveries(max integer, worker text DEFAULT NULL,
		lease interval DEFAULT '60 seconds', shard integer DEFAULT 0, nshards integer DEFAULT 1,
		max_events integer DEFAULT NULL)
RETURNS TABLE (delivery_id bigint, lease_token bigint, attempt integer, event_id uuid,
			   event_type text, aggregate_id text, occurred_at timestamptz, correlation_id text,
			   payload jsonb, subscription_id integer, endpoint_id integer, body_format text,
			   batch_size integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
BEGIN
	IF max IS NULL OR max < 1 THEN
		RAISE EXCEPTION 'invalid claim size: %', coalesce(max::text, 'NULL')
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Claim at least one delivery.';
	END IF;
	IF nshards IS NULL OR shard IS NULL OR nshards < 1 OR shard < 0 OR shard >= nshards THEN
		RAISE EXCEPTION 'invalid shard: % of %', coalesce(shard::text, 'NULL'), coalesce(nshards::text, 'NULL')
			USING ERRCODE = 'invalid_parameter_value', HINT = 'shard must be between 0 and nshards - 1.';
	END IF;
	IF lease IS NULL OR lease <= interval '0' THEN
		RAISE EXCEPTION 'invalid lease: "%"', coalesce(lease::text, 'NULL')
			USING ERRCODE = 'invalid_parameter_value', HINT = 'A lease must be a positive interval.';
	END IF;
	IF max_events < 1 THEN
		RAISE EXCEPTION 'invalid claim size: % events', max_events
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Claim at least one event, or pass NULL for no limit.';
	END IF;
	RETURN QUERY
	SELECT c.delivery_id, c.lease_token, c.attempt, c.event_id, c.event_type, c.aggregate_id, c.occurred_at,
		   c.correlation_id, c.payload, c.subscription_id, c.endpoint_id, c.body_format, c.batch_size
	FROM hub._claim_all(max, worker, lease, shard, nshards, max_events, NULL, NULL, NULL, NULL) c;
END
$$;
COMMENT ON FUNCTION hub.claim_deliveries(integer, text, interval, integer, integer, integer) IS
'Route what is not routed yet, then lease up to max ready deliveries: never one held by another claimer; for per_key subscriptions only the head of each aggregate; expired leases are claimable again; endpoints disabled, paused or with an open circuit are skipped, a half-open one gets a single probe. shard/nshards split the endpoints between workers: endpoint_id % nshards = shard, or, for an endpoint with spread set, shard k of n serves endpoint e when (k - e) mod n < max_concurrency, each of those min(n, max_concurrency) workers entitled to its hub._serves_share of the endpoint''s concurrency and rate. Each row carries a fencing lease_token for complete/fail/defer. A batch delivery (body_format batch) or a lease group (lease_group) comes as batch_size rows, one per event in order, with the same delivery_id and lease_token, and is completed, failed or deferred whole; max_events caps the events of a claim (the first delivery always comes whole).';

/*
 * _transform, _run_handler --- a function chosen by hub_admin (a
 * subscription's transform, an inbox handler) runs as its owner, in a
 * security-restricted operation, with every setting it changes undone when
 * it returns, cancelled after logistics_hub.user_code_timeout
 * (extension/user_code.c).  Whoever runs the claim or the inbox lends it
 * no right: a dispatcher's role or a superuser calling hub.process_inbox
 * runs the function with its owner's rights only.
 */
CREATE FUNCTION hub._transform(f regproc, payload jsonb) RETURNS jsonb
	AS 'MODULE_PATHNAME', 'hub_transform' LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION hub._transform(regproc, jsonb) IS
'API: Private. Apply a subscription''s transform function (jsonb) -> jsonb to a payload, as the function''s owner, within logistics_hub.user_code_timeout; settings it changes are undone when it returns.';

CREATE FUNCTION hub._run_handler(f regproc, payload jsonb, message_type text) RETURNS void
	AS 'MODULE_PATHNAME', 'hub_run_handler' LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION hub._run_handler(regproc, jsonb, text) IS
'API: Private. Call an inbox handler (payload jsonb, message_type text) as the function''s owner, within logistics_hub.user_code_timeout; settings it changes are undone when it returns.';

/*
 * _check_user_function --- raise 42883 unless f takes exactly these
 * argument types (and, when given, returns rettype), and 42501 unless
 * running it as its owner lends hub_admin no right (SECURITY DEFINER, or
 * owned by a member of hub_admin that is not a superuser; and hub_admin
 * may execute it): checked where hub_admin names the function, and again
 * at every call (extension/user_code.c).
 */
CREATE FUNCTION hub._check_user_function(f regproc, what text, argtypes oidvector, rettype regtype DEFAULT NULL)
RETURNS void
	AS 'MODULE_PATHNAME', 'hub_check_user_function' LANGUAGE C STABLE;
COMMENT ON FUNCTION hub._check_user_function(regproc, text, oidvector, regtype) IS
'API: Private. Refuse a transform or handler function of the wrong shape (42883) or one that would lend its owner''s rights (42501).';

/*
 * _fenced --- lock a delivery and return it only when the lease token still
 * holds; otherwise record a stale attempt and return NULL.
 */
CREATE FUNCTION hub._fenced(p_delivery bigint, p_token bigint, p_status integer, p_error text,
							p_latency integer, p_excerpt text, p_worker text)
RETURNS hub.deliveries
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	d hub.deliveries;
BEGIN
	SELECT * INTO d FROM hub.deliveries WHERE delivery_id = p_delivery FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'delivery % does not exist', p_delivery USING ERRCODE = 'undefined_object';
	END IF;
	IF d.state <> 'in_flight' OR d.lease_token IS DISTINCT FROM p_token THEN
		-- numbered as the attempt of its lease (known from the expiry row)
		INSERT INTO hub.attempts (delivery_id, attempt, worker, lease_token, http_status, error, latency_ms, response_excerpt, outcome)
		VALUES (p_delivery,
				coalesce((SELECT a.attempt FROM hub.attempts a
						  WHERE a.delivery_id = p_delivery AND a.lease_token = p_token
						  ORDER BY a.attempt_id LIMIT 1), d.attempts),
				p_worker, p_token, p_status, p_error, p_latency, left(p_excerpt, 1024), 'stale');
		RETURN NULL;
	END IF;
	RETURN d;
END
$$;
COMMENT ON FUNCTION hub._fenced(bigint, bigint, integer, text, integer, text, text) IS
'API: Private. Fencing check shared by complete, fail and defer.';

CREATE FUNCTION hub.complete_delivery(delivery_id bigint, lease_token bigint, http_status integer,
		latency_ms integer, response_excerpt text DEFAULT NULL, worker text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	d hub.deliveries := hub._fenced(delivery_id, lease_token, http_status, NULL, latency_ms, response_excerpt, worker);
BEGIN
	IF d.delivery_id IS NULL THEN
		RETURN false;
	END IF;
	UPDATE hub.deliveries x
	SET state = 'delivered', lease_until = NULL, last_error = NULL, last_http_status = http_status, updated_at = now()
	WHERE x.delivery_id = d.delivery_id;
	INSERT INTO hub.attempts (delivery_id, attempt, worker, lease_token, http_status, latency_ms, response_excerpt, outcome)
	VALUES (d.delivery_id, d.attempts, worker, d.lease_token, http_status, latency_ms, left(response_excerpt, 1024), 'delivered');
	UPDATE hub.endpoints e
	SET circuit_state = 'closed', circuit_opened_at = NULL, circuit_probe_until = NULL, consecutive_failures = 0,
		circuit_failed_keys = '{}'
	WHERE e.endpoint_id = d.endpoint_id
		AND (e.circuit_state <> 'closed' OR e.consecutive_failures <> 0 OR e.circuit_failed_keys <> '{}');
	RETURN true;
END
$$;
COMMENT ON FUNCTION hub.complete_delivery(bigint, bigint, integer, integer, text, text) IS
'Record a successful delivery under its lease. false (and a stale attempt row) when the lease was reclaimed meanwhile. Closes the endpoint''s circuit.';

/*
 * fail_delivery --- the circuit breaker judges the endpoint, not one
 * business key.  A key whose receiver refuses it for good (a bad record on
 * the other side) fails on every retry while every other key goes through;
 * counting each of its failures would open the circuit and hold all the
 * other keys' events behind it.  So a failure counts only when its key
 * (aggregate_id, hashed into circuit_failed_keys) has not failed already
 * since the endpoint's last success: the circuit opens when
 * circuit_failure_threshold distinct keys have failed with no success in
 * between, which an endpoint down for everyone reaches at once, and a key
 * failing alone never does; it is retried on its own backoff and
 * dead-lettered after max_attempts.  (Convoy opens on a failure rate over a
 * window with a minimum of requests, Svix disables an endpoint only after
 * days of failures; a rate needs a write per success, this only per
 * failure, and none for a key already counted.)  Any success empties the
 * set; a failed half-open probe opens the circuit again whatever its key.
 */
CREATE FUNCTION hub.fail_delivery(delivery_id bigint, lease_token bigint, http_status integer, error text,
		latency_ms integer, response_excerpt text DEFAULT NULL, retry_after interval DEFAULT NULL,
		worker text DEFAULT NULL, counts boolean DEFAULT true)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	d hub.deliveries := hub._fenced(delivery_id, lease_token, http_status, error, latency_ms, response_excerpt, worker);
	s hub.subscriptions;
	permanent boolean;
	backoff interval;
	new_state text;
	fail_key bigint;
BEGIN
	IF d.delivery_id IS NULL THEN
		RETURN 'stale';
	END IF;
	SELECT * INTO s FROM hub.subscriptions WHERE subscription_id = d.subscription_id;
	-- http_status NULL is a transport error or timeout: never permanent
	permanent := coalesce(http_status BETWEEN 400 AND 499 AND http_status NOT IN (408, 429), false)
				 AND NOT s.retry_on_4xx;
	IF permanent OR d.attempts >= s.max_attempts THEN
		new_state := 'dead';
	ELSE
		new_state := 'retry_wait';
		-- capped exponential backoff with full jitter, never sooner than
		-- Retry-After, which is itself capped at the larger of retry_max and
		-- a day (a receiver may not park a delivery for years); in seconds
		-- as float8, which cannot overflow where an interval times 2^30 can
		backoff := make_interval(secs => least(extract(epoch FROM s.retry_max)::float8,
											   extract(epoch FROM s.retry_base)::float8
											   * power(2, least(d.attempts - 1, 30))) * random());
		backoff := greatest(backoff, least(coalesce(retry_after, interval '0'),
										   greatest(s.retry_max, interval '1 day')));
	END IF;
	UPDATE hub.deliveries x
	SET state = new_state, lease_until = NULL, updated_at = now(), last_http_status = http_status,
		next_attempt_at = now() + coalesce(backoff, interval '0'),
		last_error = coalesce(http_status::text || ' ', '') || coalesce(error, '')
	WHERE x.delivery_id = d.delivery_id;
	INSERT INTO hub.attempts (delivery_id, attempt, worker, lease_token, http_status, error, latency_ms, response_excerpt, outcome)
	VALUES (d.delivery_id, d.attempts, worker, d.lease_token, http_status, error, latency_ms,
			left(response_excerpt, 1024), CASE new_state WHEN 'dead' THEN 'dead' ELSE 'retry' END);
	IF permanent THEN
		-- the receiver answered: a half-open circuit can close, nothing counts
		UPDATE hub.endpoints e
		SET circuit_state = 'closed', circuit_opened_at = NULL, circuit_probe_until = NULL, consecutive_failures = 0,
			circuit_failed_keys = '{}'
		WHERE e.endpoint_id = d.endpoint_id AND e.circuit_state = 'half_open';
	ELSIF counts THEN
		-- the breaker judges the endpoint, not a key: a key counts once in a
		-- streak of failures, so one key failing for good is left to its own
		-- retries and dead letter; no write when it already counts
		fail_key := pg_catalog.hashtextextended(d.aggregate_id, 0);
		UPDATE hub.endpoints e
		SET consecutive_failures = e.consecutive_failures + 1,
			circuit_failed_keys = e.circuit_failed_keys || fail_key,
			circuit_state = CASE WHEN e.consecutive_failures + 1 >= e.circuit_failure_threshold
								 THEN 'open' ELSE e.circuit_state END,
			circuit_opened_at = CASE WHEN e.consecutive_failures + 1 >= e.circuit_failure_threshold
									 THEN now() ELSE e.circuit_opened_at END
		WHERE e.endpoint_id = d.endpoint_id AND e.circuit_state = 'closed'
			AND fail_key <> ALL (e.circuit_failed_keys);
		-- a failed probe opens the circuit again, whatever its key
		UPDATE hub.endpoints e
		SET circuit_state = 'open', circuit_opened_at = now(), circuit_probe_until = NULL
		WHERE e.endpoint_id = d.endpoint_id AND e.circuit_state = 'half_open';
	END IF;
	RETURN new_state;
END
$$;
COMMENT ON FUNCTION hub.fail_delivery(bigint, bigint, integer, text, integer, text, interval, text, boolean) IS
'Record a failed attempt under its lease: a 4xx other than 408/429 is dead at once unless the subscription retries 4xx; otherwise retry_wait with capped exponential backoff and full jitter (at least retry_after, honoured up to the larger of retry_max and a day), dead after max_attempts. Transient failures count towards the endpoint''s circuit breaker, once per business key (aggregate_id) since the endpoint''s last success, so one failing key never opens it; a failed half-open probe reopens it (counts => false for all but one delivery of a failed batch request: a request fails once). Returns the new state, or stale when the lease was reclaimed.';

CREATE FUNCTION hub.defer_delivery(delivery_id bigint, lease_token bigint, until timestamptz)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	d hub.deliveries := hub._fenced(delivery_id, lease_token, NULL, 'deferred', NULL, NULL, NULL);
BEGIN
	IF d.delivery_id IS NULL THEN
		RETURN false;
	END IF;
	IF until IS NULL THEN
		RAISE EXCEPTION 'a deferred delivery needs a time to come back'
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass until, e.g. now() + interval ''5 seconds''.';
	END IF;
	UPDATE hub.deliveries x
	SET state = CASE WHEN d.attempts > 1 THEN 'retry_wait' ELSE 'pending' END,
		attempts = d.attempts - 1, lease_until = NULL, next_attempt_at = until, updated_at = now()
	WHERE x.delivery_id = d.delivery_id;
	INSERT INTO hub.attempts (delivery_id, attempt, lease_token, outcome)
	VALUES (d.delivery_id, d.attempts, d.lease_token, 'deferred');
	-- a deferred probe was never sent: let the next claim probe again
	UPDATE hub.endpoints e SET circuit_probe_until = NULL
	WHERE e.endpoint_id = d.endpoint_id AND e.circuit_state = 'half_open';
	RETURN true;
END
$$;
COMMENT ON FUNCTION hub.defer_delivery(bigint, bigint, timestamptz) IS
'Give a leased delivery back without spending an attempt (circuit opened or rate limit reached mid-batch); it is claimable again at until.';

-- ---------------------------------------------------------------- operations

CREATE FUNCTION hub._audit(action text, target text, reason text, details jsonb DEFAULT NULL) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
	INSERT INTO hub.operator_audit (action, target, reason, details) VALUES (action, target, reason, details)
$$;
COMMENT ON FUNCTION hub._audit(text, text, text, jsonb) IS 'API: Private. Append an operator action to hub.operator_audit.';

/*
 * _audit_change --- trigger on hub.endpoints and hub.subscriptions: every
 * change of an endpoint's state or settings (enabled, paused, URL, limits,
 * auth kind, headers, ...; not the circuit breaker's columns, which the
 * delivery functions change at high rate: the trigger's WHEN leaves those
 * updates alone) and every change or deletion of a subscription goes to
 * hub.operator_audit, whichever way it is made: an operator function or a
 * plain UPDATE or DELETE.  The row's details hold the changed columns
 * ({"column": {"old": ..., "new": ...}}) or, for a deletion, the row.  An
 * operator function names its action and reason in the transaction-local
 * settings hub.audit_action and hub.audit_reason (hub.pause_endpoint,
 * hub.resume_endpoint), so that its change is audited once, here; without
 * them the action is update_endpoint, delete_endpoint, update_subscription
 * or delete_subscription.  (The settings can only relabel a row, never
 * suppress one.)  SECURITY DEFINER: hub_admin cannot write the audit
 * itself; the actor is still the session user.
 */
CREATE FUNCTION hub._audit_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	circuit constant text[] := ARRAY['circuit_state', 'circuit_opened_at', 'consecutive_failures',
									 'circuit_failed_keys', 'circuit_probe_until'];
	what text := CASE TG_TABLE_NAME WHEN 'endpoints' THEN 'endpoint' ELSE 'subscription' END;
	action text := nullif(current_setting('hub.audit_action', true), '');
	target text;
	details jsonb;
BEGIN
	IF TG_TABLE_NAME = 'endpoints' THEN
		target := OLD.name;
	ELSE
		target := 'subscription:' || OLD.subscription_id;
	END IF;
	IF TG_OP = 'DELETE' THEN
		details := to_jsonb(OLD) - circuit;
	ELSE
		SELECT jsonb_object_agg(n.key, jsonb_build_object('old', o.value, 'new', n.value)) INTO details
		FROM jsonb_each(to_jsonb(NEW) - circuit) n
		JOIN jsonb_each(to_jsonb(OLD)) o ON o.key = n.key
		WHERE n.value IS DISTINCT FROM o.value;
	END IF;
	PERFORM hub._audit(coalesce(action, lower(TG_OP) || '_' || what), target,
					   nullif(current_setting('hub.audit_reason', true), ''), details);
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION hub._audit_change() IS
'API: Private. Trigger on hub.endpoints and hub.subscriptions: audit every change of an endpoint''s state or settings (not its circuit breaker) and every change or deletion of a subscription in hub.operator_audit, with the changed columns.';
REVOKE EXECUTE ON FUNCTION hub._audit_change() FROM PUBLIC;
CREATE TRIGGER endpoint_audit AFTER UPDATE ON hub.endpoints FOR EACH ROW
	WHEN ((pg_catalog.to_jsonb(OLD) - '{circuit_state,circuit_opened_at,consecutive_failures,circuit_failed_keys,circuit_probe_until}'::text[])
		  IS DISTINCT FROM
		  (pg_catalog.to_jsonb(NEW) - '{circuit_state,circuit_opened_at,consecutive_failures,circuit_failed_keys,circuit_probe_until}'::text[])
		  OR COALESCE(pg_catalog.current_setting('hub.audit_action', true), '') <> '')
	EXECUTE FUNCTION hub._audit_change();
CREATE TRIGGER endpoint_audit_delete AFTER DELETE ON hub.endpoints FOR EACH ROW
	EXECUTE FUNCTION hub._audit_change();
CREATE TRIGGER subscription_audit AFTER UPDATE ON hub.subscriptions FOR EACH ROW
	WHEN (OLD.* IS DISTINCT FROM NEW.*)
	EXECUTE FUNCTION hub._audit_change();
CREATE TRIGGER subscription_audit_delete AFTER DELETE ON hub.subscriptions FOR EACH ROW
	EXECUTE FUNCTION hub._audit_change();

/*
 * _audited --- run by an operator function before the UPDATE it audits:
 * name the action and reason that hub._audit_change writes for it (NULL
 * action: clear them again, after the UPDATE).
 */
CREATE FUNCTION hub._audited(action text, reason text) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT pg_catalog.set_config('hub.audit_action', coalesce(action, ''), true),
		   pg_catalog.set_config('hub.audit_reason', coalesce(reason, ''), true)
$$;
COMMENT ON FUNCTION hub._audited(text, text) IS
'API: Private. Name the action and reason that the audit trigger of hub.endpoints writes for the next change (NULL: clear them).';
REVOKE EXECUTE ON FUNCTION hub._audited(text, text) FROM PUBLIC;

CREATE FUNCTION hub.pause_endpoint(name text, reason text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	-- (audited by the trigger on hub.endpoints, as this action)
	PERFORM hub._audited('pause_endpoint', reason);
	UPDATE hub.endpoints e SET paused = true WHERE e.name = pause_endpoint.name;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'endpoint "%" does not exist', name USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM hub._audited(NULL, NULL);
END
$$;
COMMENT ON FUNCTION hub.pause_endpoint(text, text) IS 'Stop handing out the endpoint''s deliveries (they wait, spending no attempts); audited.';

CREATE FUNCTION hub.resume_endpoint(name text, reason text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	-- (audited by the trigger on hub.endpoints, as this action)
	PERFORM hub._audited('resume_endpoint', reason);
	UPDATE hub.endpoints e SET paused = false WHERE e.name = resume_endpoint.name;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'endpoint "%" does not exist', name USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM hub._audited(NULL, NULL);
END
$$;
COMMENT ON FUNCTION hub.resume_endpoint(text, text) IS 'Resume a paused endpoint; audited.';

CREATE FUNCTION hub.skip_delivery(delivery_id bigint, reason text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE hub.deliveries d SET state = 'skipped', lease_until = NULL, updated_at = now()
	WHERE d.delivery_id = skip_delivery.delivery_id AND d.state IN ('pending', 'retry_wait', 'dead');
	IF NOT FOUND THEN
		RAISE EXCEPTION 'delivery % cannot be skipped', delivery_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Only a pending, retrying or dead delivery can be skipped; an in-flight one is leased.';
	END IF;
	PERFORM hub._audit('skip_delivery', delivery_id::text, reason);
END
$$;
COMMENT ON FUNCTION hub.skip_delivery(bigint, text) IS
'Give up on a delivery to unblock its aggregate''s later events (per_key ordering); audited with the reason.';

CREATE FUNCTION hub.replay_delivery(delivery_id bigint, reason text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE hub.deliveries d
	SET state = 'pending', attempts = 0, next_attempt_at = now(), last_error = NULL, updated_at = now()
	WHERE d.delivery_id = replay_delivery.delivery_id AND d.state IN ('delivered', 'dead', 'skipped', 'retry_wait');
	IF NOT FOUND THEN
		RAISE EXCEPTION 'delivery % cannot be replayed now', delivery_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'It does not exist, or it is pending or leased (in flight): wait for its outcome.';
	END IF;
	PERFORM hub._audit('replay', delivery_id::text, reason);
END
$$;
COMMENT ON FUNCTION hub.replay_delivery(bigint, text) IS
'Deliver one delivery again (same event id, the receiver''s idempotency key); refused while it is leased; audited.';

CREATE FUNCTION hub.replay(delivery_id bigint, reason text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$ SELECT hub.replay_delivery(delivery_id, reason) $$;
COMMENT ON FUNCTION hub.replay(bigint, text) IS
'Deprecated: hub.replay_delivery(delivery_id, reason).';

-- no outbox or delivery function keeps EXECUTE for PUBLIC (the identifier
-- type functions of 0.1.0 are left as they are)
DO $$
DECLARE
	f regprocedure;
BEGIN
	FOR f IN SELECT p.oid FROM pg_catalog.pg_proc p
			 WHERE p.pronamespace = 'hub'::regnamespace
			   AND p.proname IN ('publish', 'create_endpoint', 'subscribe', 'claim_deliveries',
								 'complete_delivery', 'fail_delivery', 'defer_delivery',
								 'pause_endpoint', 'resume_endpoint', 'skip_delivery', 'replay', 'replay_delivery',
								 '_route_events', '_transform', '_fenced', '_outbox_check')
	LOOP
		EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
	END LOOP;
END
$$;
GRANT EXECUTE ON FUNCTION hub.publish(text, text, jsonb, text, text, jsonb, timestamptz) TO hub_writer;
GRANT INSERT ON hub.outbox TO hub_writer;
-- INSERT ... RETURNING event_id (what ORMs send) needs SELECT on the
-- returned column.  Only that column: a writer can then list event ids,
-- which are not secret (every receiver gets them), but reads no payload,
-- type, key or time, and cannot filter on them.  (Row security limited to
-- the writer's own transaction would send every hub.publish down its slow
-- path, and RETURNING * still fails, 42501.)
GRANT SELECT (event_id) ON hub.outbox TO hub_writer;
GRANT SELECT ON hub.outbox, hub.event_types, hub.endpoints, hub.subscriptions, hub.deliveries,
	hub.attempts, hub.operator_audit TO hub_reader;
-- (not ALL: TRIGGER would let hub_admin attach code that superusers' writes run)
GRANT SELECT, INSERT, UPDATE, DELETE ON hub.event_types TO hub_admin;
GRANT SELECT ON hub._endpoint_secrets TO hub_admin;
GRANT EXECUTE ON FUNCTION
	hub.create_endpoint(text, text, text, integer, integer, numeric, boolean, text, text, text, text, text, text, text, jsonb),
	hub.subscribe(text, text, jsonb, regproc, text, integer, integer, interval, interval, boolean, text, integer, integer),
	hub.pause_endpoint(text, text), hub.resume_endpoint(text, text), hub.skip_delivery(bigint, text),
	hub.replay(bigint, text), hub.replay_delivery(bigint, text)
	TO hub_admin;

/*
 * replay(subscription_id, reason, ...) --- the bulk replays of one
 * subscription.  Without a range or correlation id: every dead delivery of
 * the subscription.  With from_time/to_time (occurred_at, half-open range)
 * or a correlation id: every event of the outbox in it that the
 * subscription's pattern and filter match, whether or not it had a delivery
 * (a subscription added later is backfilled this way; the events routed
 * before it existed are not sent to it otherwise).  Existing deliveries are
 * reset to pending and keep their id and order; missing ones are created
 * (a batch delivery is reset whole when its smallest event is in the range;
 * events that had none are created as deliveries of their own).
 * Deliveries that are leased right now are left alone (never two live
 * leases) and counted in the audit row's details.  Returns the number of
 * deliveries made pending.
 */
CREATE FUNCTION hub.replay_subscription(subscription_id integer, reason text, from_time timestamptz DEFAULT NULL,
										to_time timestamptz DEFAULT NULL, correlation_id text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s hub.subscriptions;
	reset integer := 0;
	created integer := 0;
	leased integer := 0;
	ranged boolean := from_time IS NOT NULL OR to_time IS NOT NULL OR correlation_id IS NOT NULL;
BEGIN
	IF reason IS NULL OR btrim(reason) = '' THEN
		RAISE EXCEPTION 'a replay needs a reason'
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Say why, e.g. ''receiver fixed''; it goes to hub.operator_audit.';
	END IF;
	IF from_time > to_time THEN
		RAISE EXCEPTION 'invalid replay range: % is after %', from_time, to_time
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT * INTO s FROM hub.subscriptions x WHERE x.subscription_id = replay_subscription.subscription_id FOR SHARE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'subscription % does not exist', subscription_id USING ERRCODE = 'undefined_object';
	END IF;

	-- lock the affected deliveries (a claim in progress is waited for), reset
	-- all that are not leased right now
	WITH locked AS (
		SELECT d.delivery_id, d.state = 'in_flight' AND d.lease_until > now() AS leased
		FROM hub.deliveries d
		WHERE d.subscription_id = s.subscription_id
			AND CASE WHEN ranged
					 THEN d.state <> 'pending' AND EXISTS (
						SELECT 1 FROM hub.outbox o WHERE o.event_id = d.event_id
							AND (from_time IS NULL OR o.occurred_at >= from_time)
							AND (to_time IS NULL OR o.occurred_at < to_time)
							AND (replay_subscription.correlation_id IS NULL OR o.correlation_id = replay_subscription.correlation_id))
					 ELSE d.state = 'dead' END
		ORDER BY d.delivery_id
		FOR UPDATE OF d
	), done AS (
		UPDATE hub.deliveries d
		SET state = 'pending', attempts = 0, next_attempt_at = now(), lease_until = NULL,
			last_error = NULL, updated_at = now()
		FROM locked l
		WHERE d.delivery_id = l.delivery_id AND NOT l.leased
		RETURNING 1
	)
	SELECT (SELECT count(*) FROM done), (SELECT count(*) FILTER (WHERE l.leased) FROM locked l)
	INTO reset, leased;

	IF ranged THEN
		-- (events in a batch delivery of the subscription have one: the
		-- batch, reset above when its smallest event is in the range)
		INSERT INTO hub.deliveries (subscription_id, endpoint_id, event_id, seq, aggregate_id, ordering, priority)
		SELECT s.subscription_id, s.endpoint_id, o.event_id, o.seq, o.aggregate_id, s.ordering, s.priority
		FROM hub.outbox o
		WHERE o.event_id NOT IN (SELECT unnest(d.batch_events) FROM hub.deliveries d
								 WHERE d.subscription_id = s.subscription_id AND d.batch_events IS NOT NULL)
			AND (from_time IS NULL OR o.occurred_at >= from_time)
			AND (to_time IS NULL OR o.occurred_at < to_time)
			AND (replay_subscription.correlation_id IS NULL OR o.correlation_id = replay_subscription.correlation_id)
			AND split_part(s.event_pattern, '.', 1) IN ('*', split_part(o.event_type, '.', 1))
			AND split_part(s.event_pattern, '.', 2) IN ('*', split_part(o.event_type, '.', 2))
			AND (s.filter IS NULL OR o.payload @> s.filter)
		ORDER BY o.seq
		ON CONFLICT ON CONSTRAINT deliveries_event_subscription_key DO NOTHING;
		GET DIAGNOSTICS created = ROW_COUNT;
	END IF;

	PERFORM hub._audit(CASE WHEN ranged THEN 'replay_range' ELSE 'replay_dead' END,
					   'subscription:' || s.subscription_id, reason,
					   jsonb_strip_nulls(jsonb_build_object('from_time', from_time, 'to_time', to_time,
							'correlation_id', correlation_id, 'reset', reset, 'created', created,
							'left_leased', leased)));
	RETURN reset + created;
END
$$;
COMMENT ON FUNCTION hub.replay_subscription(integer, text, timestamptz, timestamptz, text) IS
'Replay for one subscription, audited: all its dead deliveries, or (with from_time/to_time on occurred_at, or correlation_id) every matching event of the outbox, creating deliveries for events it never had (backfill of a new endpoint). Event ids are kept; leased deliveries are left alone. Returns the number of deliveries made pending.';

CREATE FUNCTION hub.replay(subscription_id integer, reason text, from_time timestamptz DEFAULT NULL,
						   to_time timestamptz DEFAULT NULL, correlation_id text DEFAULT NULL)
RETURNS integer
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$ SELECT hub.replay_subscription(subscription_id, reason, from_time, to_time, correlation_id) $$;
COMMENT ON FUNCTION hub.replay(integer, text, timestamptz, timestamptz, text) IS
'Deprecated: hub.replay_subscription(subscription_id, reason, ...). (With an integer literal hub.replay(42, ''why'') named a subscription and with a bigint one delivery: hence the new names.)';

GRANT EXECUTE ON FUNCTION hub.replay(integer, text, timestamptz, timestamptz, text),
	hub.replay_subscription(integer, text, timestamptz, timestamptz, text) TO hub_admin;
REVOKE EXECUTE ON FUNCTION hub.replay(integer, text, timestamptz, timestamptz, text),
	hub.replay_subscription(integer, text, timestamptz, timestamptz, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION hub._serves(integer, integer, integer, integer),
	hub._serves_share(integer, integer, integer, integer),
	hub._claim(integer, text, interval, integer, integer, integer, integer, integer, integer[], integer[], text, bigint),
	hub._claim_transformed(integer, text, interval, integer, integer, integer, integer, integer, integer[], integer[], text, bigint),
	hub._claim_probes(integer, integer, text, interval, integer, integer, text),
	hub._claim_all(integer, text, interval, integer, integer, integer, integer, integer[], integer[], text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION hub._audit(text, text, text, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION hub._check_user_function(regproc, text, oidvector, regtype),
	hub._run_handler(regproc, jsonb, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub._run_handler(regproc, jsonb, text) TO hub_admin;
REVOKE EXECUTE ON FUNCTION hub._immutable(), hub._subscription_deleted(), hub._retention_active(), hub._event_types_changed(), hub._event_id(), hub._event_id_floor(xid8), hub._event_id_ceiling(xid8), hub._event_xid(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub._event_id() TO hub_writer;
GRANT SELECT ON hub.event_types TO hub_writer;

-- ---- 0.2.0: 50_dispatch.sql ----
-- 50_dispatch.sql --- what the dispatcher workers call (workers/dispatcher.c)
-- and the SQL faces of the push side's C code: the egress policy, the wake-up,
-- Standard Webhooks signatures and the bodies sent.

-- ---------------------------------------------------------------- egress

CREATE FUNCTION hub._egress_check(url text) RETURNS void
	AS 'MODULE_PATHNAME', 'hub_egress_check' LANGUAGE C STRICT;
COMMENT ON FUNCTION hub._egress_check(text) IS
'API: Private. Raise 22023 unless an endpoint may have this URL: http or https, parsed as libcurl parses it, with a host logistics_hub.egress_allow admits.';

CREATE FUNCTION hub.egress_allowed(address text) RETURNS boolean
	AS 'MODULE_PATHNAME', 'hub_egress_address_check' LANGUAGE C STRICT STABLE;
COMMENT ON FUNCTION hub.egress_allowed(text) IS
'Would the delivery workers connect to this IPv4 or IPv6 address under the current logistics_hub.egress_allow?';

/*
 * endpoints: the URL against the egress policy (and without user
 * information, refused by hub._egress_check before anything else and
 * without showing it), header values without CR or LF, and no fixed header
 * that HTTP's framing, the hub or the credentials own, whoever writes the
 * row (hub.create_endpoint or an UPDATE by hub_admin).  The list of
 * reserved names is the one workers/http.c refuses to send
 * (hub_header_name_reserved); the two must agree.
 */
CREATE FUNCTION hub._endpoint_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	h record;
	-- framing and hop-by-hop headers, then those the hub sets on every request
	reserved constant text[] := ARRAY['content-length', 'transfer-encoding', 'host', 'connection', 'keep-alive',
		'proxy-connection', 'te', 'trailer', 'upgrade', 'expect',
		'content-type', 'content-encoding', 'webhook-id', 'webhook-timestamp', 'webhook-signature',
		'idempotency-key'];
BEGIN
	PERFORM hub._egress_check(NEW.url);
	IF NEW.oauth2_token_url IS NOT NULL THEN
		PERFORM hub._egress_check(NEW.oauth2_token_url);
	END IF;
	IF jsonb_typeof(NEW.headers) <> 'object' THEN
		RAISE EXCEPTION 'endpoint headers must be a JSON object of names and string values'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	FOR h IN SELECT key, value FROM jsonb_each(NEW.headers) LOOP
		IF h.key !~ '^[A-Za-z0-9!#$%&''*+.^_`|~-]+$' THEN
			RAISE EXCEPTION 'invalid header name "%"', h.key
				USING ERRCODE = 'invalid_parameter_value', HINT = 'Header names are HTTP tokens (letters, digits, - and a few symbols).';
		END IF;
		IF jsonb_typeof(h.value) <> 'string' OR h.value #>> '{}' ~ '[\r\n\x01-\x08\x0b\x0c\x0e-\x1f]' THEN
			RAISE EXCEPTION 'invalid value for header "%"', h.key
				USING ERRCODE = 'invalid_parameter_value', HINT = 'Header values are strings without CR, LF or other control characters.';
		END IF;
		IF lower(h.key) = ANY (reserved) THEN
			RAISE EXCEPTION 'header "%" cannot be a fixed endpoint header', h.key
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'Content-Length, Transfer-Encoding, Host, Connection, Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade and Expect frame the message and are set by libcurl; Content-Type, Content-Encoding, webhook-id, webhook-timestamp, webhook-signature and Idempotency-Key are set by the hub.',
					  HINT = 'Remove the header from headers.';
		END IF;
		IF lower(h.key) IN ('authorization', 'proxy-authorization') OR lower(h.key) = lower(NEW.api_key_header) THEN
			RAISE EXCEPTION 'header "%" cannot be a fixed endpoint header', h.key
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'Fixed headers are readable by hub_reader; credentials are not.',
					  HINT = 'Pass credentials as auth_kind and auth_secret (with api_key_header for an API key).';
		END IF;
	END LOOP;
	IF NEW.api_key_header IS NOT NULL AND NEW.api_key_header !~ '^[A-Za-z0-9!#$%&''*+.^_`|~-]+$' THEN
		RAISE EXCEPTION 'invalid API key header name "%"', NEW.api_key_header USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF lower(NEW.api_key_header) = ANY (reserved) THEN
		RAISE EXCEPTION 'header "%" cannot be the API key header', NEW.api_key_header
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Framing headers and the headers the hub sets itself are reserved; use a name such as X-API-Key.';
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION hub._endpoint_check() IS
'API: Private. Trigger on hub.endpoints: URL and token URL against the egress policy and without user information, header names and values safe to send, no framing, hub-set or credential header among the fixed headers.';
CREATE TRIGGER endpoint_check BEFORE INSERT OR UPDATE OF url, headers, api_key_header, oauth2_token_url
	ON hub.endpoints FOR EACH ROW EXECUTE FUNCTION hub._endpoint_check();

-- secrets may not carry CR or LF either (they go into header lines): being
-- sealed, they are checked before sealing (hub._check_credentials) and
-- again by the dispatcher once opened

-- ---------------------------------------------------------------- wake-up

CREATE FUNCTION hub.wake() RETURNS integer
	AS 'MODULE_PATHNAME', 'hub_wake' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION hub.wake() IS
'Wake the dispatchers now and return how many are running. Publishing wakes them at commit by itself; call this after COMMIT PREPARED.';

-- ---------------------------------------------------------------- bodies

CREATE FUNCTION hub.webhook_signature(secret text, msg_id text, "timestamp" bigint, body text) RETURNS text
	AS 'MODULE_PATHNAME', 'hub_webhook_signature' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION hub.webhook_signature(text, text, bigint, text) IS
'The Standard Webhooks signature (v1,<base64 HMAC-SHA256 of msg_id.timestamp.body>) of a request, for a whsec_ secret.';

/*
 * event_body --- the bytes of one event's request body, written in C
 * (extension/event_body.c) byte for byte as the jsonb it replaced printed
 * them: jsonb_build_object of the canonical event, or of the CloudEvents
 * envelope with its nulls stripped and then "data" added, cast to text.
 * The time is always rendered in UTC, whatever the session's TimeZone (a
 * retry must send the same bytes under the same webhook-id and
 * signature); still declared STABLE, as it was when it followed TimeZone.  Not
 * strict: NULL arguments are JSON nulls, a NULL body_format gives the
 * canonical event.  test/reference/event_body.sql keeps the SQL definition
 * the tests compare it with.
 */
CREATE FUNCTION hub.event_body(body_format text, event_id uuid, event_type text, aggregate_id text,
		occurred_at timestamptz, correlation_id text, payload jsonb, source text DEFAULT '/logistics_hub')
RETURNS text
	AS 'MODULE_PATHNAME', 'hub_event_body' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION hub.event_body(text, uuid, text, text, timestamptz, text, jsonb, text) IS
'The JSON a receiver gets for one event: the canonical event (id, type, aggregate_id, occurred_at, correlation_id, data) or, for body_format cloudevents or cloudevents_batch, a CloudEvents 1.0 structured-mode event; a batch request is a JSON array of them. The time is in UTC whatever the session''s TimeZone.';

-- ---------------------------------------------------------------- worker API

CREATE FUNCTION hub._dispatch_endpoints(ids integer[], shard integer, nshards integer)
RETURNS TABLE (endpoint_id integer, url text, timeout_ms integer, max_concurrency integer,
			   rate_limit float8, allow_redirects boolean, auth_kind text, api_key_header text,
			   oauth2_token_url text, headers text[], auth_secret bytea, oauth2_client_id bytea,
			   oauth2_client_secret bytea, signing_secrets bytea[], usable boolean, usable_again timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT e.endpoint_id, e.url, e.timeout_ms,
		   CASE WHEN e.spread THEN hub._serves_share(shard, nshards, e.endpoint_id, e.max_concurrency)
				ELSE e.max_concurrency END,
		   CASE WHEN e.spread
				THEN e.rate_limit * hub._serves_share(shard, nshards, e.endpoint_id, e.max_concurrency)
					 / e.max_concurrency
				ELSE e.rate_limit END::float8,
		   e.allow_redirects,
		   e.auth_kind, e.api_key_header, e.oauth2_token_url,
		   ARRAY(SELECT h.key || ': ' || h.value FROM jsonb_each_text(e.headers) h ORDER BY h.key),
		   x.auth_secret, x.oauth2_client_id, x.oauth2_client_secret, coalesce(x.signing_secrets, '{}'),
		   e.enabled AND NOT e.paused AND e.circuit_state <> 'open',
		   CASE WHEN e.circuit_state = 'open' THEN e.circuit_opened_at + e.circuit_cooloff ELSE now() END
	FROM hub.endpoints e
	LEFT JOIN hub._endpoint_secrets x ON x.endpoint_id = e.endpoint_id
	WHERE e.endpoint_id = ANY (ids)
$$;
COMMENT ON FUNCTION hub._dispatch_endpoints(integer[], integer, integer) IS
'API: Private. Settings and sealed secrets (opened by the workers in C) of endpoints for the dispatcher workers (never granted to anyone), with the concurrency and rate limit cut to the share of shard of nshards (hub._serves_share).';

/*
 * _complete_many --- complete_delivery for a whole set of results in one
 * statement.  A result whose lease is gone (reclaimed by another claim) is
 * recorded as a stale attempt and changes nothing, as in complete_delivery;
 * the UPDATE re-checks the token under the row lock.  The events of a lease
 * group come as one result each, one after another (the same delivery id
 * and token, events naming the event): the delivery is completed once, with
 * an attempt row per event.  events is NULL, or NULL at a result, for a delivery sent
 * whole.
 *
 * Its plan is cached once and generic (forced: left to choose, the plan
 * cache kept planning it anew for every call whose arrays were small, a
 * millisecond each), made from whatever the statistics said then (often:
 * nothing in flight), so it is pinned down to the one
 * shape that is linear in the number of results whatever the table holds:
 * deliveries are reached only through the primary key (= ANY (ids)), and
 * the results are joined to them by hashing.  Nested loops are off (with
 * one in_flight row estimated, a loop over the results per such row costs
 * n^2), merge joins, bitmap and sequential scans too (each would read a
 * whole index or the table), and the state test is written so that no
 * partial index can serve it (a scan of the open-deliveries index reads
 * the whole backlog).
 */
CREATE FUNCTION hub._complete_many(ids bigint[], tokens bigint[], statuses integer[], latencies integer[],
								   excerpts text[], worker text, events uuid[] DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
SET plan_cache_mode = force_generic_plan
SET enable_nestloop = off
SET enable_mergejoin = off
SET enable_bitmapscan = off
SET enable_seqscan = off
AS $$
DECLARE
	n integer;
BEGIN
	WITH r AS (
		-- (events NULL: unnest pads it with NULLs; lead: the first result
		-- of its delivery, the results of a group coming one after another)
		SELECT r.*, (r.i = 1 OR ids[r.i - 1] IS DISTINCT FROM r.delivery_id) AS lead
		FROM unnest(ids, tokens, statuses, latencies, excerpts, events) WITH ORDINALITY
			AS r(delivery_id, token, status, latency, excerpt, event_id, i)
	), done AS (
		-- (a delivery joined once: a further join row of a group would be
		-- another attempt to update the row this statement just updated)
		UPDATE hub.deliveries d
		SET state = 'delivered', lease_until = NULL, last_error = NULL, last_http_status = r.status,
			updated_at = now()
		FROM r
		WHERE d.delivery_id = ANY (ids) AND d.delivery_id = r.delivery_id AND r.lead
			AND (d.state = 'in_flight') IS TRUE AND d.lease_token = r.token
		RETURNING d.delivery_id, d.attempts, d.endpoint_id, r.token, r.status, r.latency, r.excerpt, r.event_id
	), audit AS (
		INSERT INTO hub.attempts (delivery_id, attempt, worker, lease_token, http_status, latency_ms,
								  response_excerpt, outcome, group_event_id)
		SELECT done.delivery_id, done.attempts, worker, done.token, done.status, done.latency,
			   left(done.excerpt, 1024), 'delivered', done.event_id
		FROM done
		UNION ALL
		-- the other events of a group
		SELECT done.delivery_id, done.attempts, worker, done.token, r.status, r.latency,
			   left(r.excerpt, 1024), 'delivered', r.event_id
		FROM r JOIN done ON done.delivery_id = r.delivery_id
		WHERE NOT r.lead
		RETURNING 1
	), stale AS (
		INSERT INTO hub.attempts (delivery_id, attempt, worker, lease_token, http_status, latency_ms,
								  response_excerpt, outcome, group_event_id)
		SELECT r.delivery_id,
			   coalesce((SELECT a.attempt FROM hub.attempts a
						 WHERE a.delivery_id = r.delivery_id AND a.lease_token = r.token
						 ORDER BY a.attempt_id LIMIT 1),
						(SELECT d.attempts FROM hub.deliveries d WHERE d.delivery_id = r.delivery_id)),
			   worker, r.token, r.status, r.latency, left(r.excerpt, 1024), 'stale', r.event_id
		FROM r
		WHERE r.delivery_id NOT IN (SELECT done.delivery_id FROM done)
			AND r.delivery_id IN (SELECT d.delivery_id FROM hub.deliveries d WHERE d.delivery_id = ANY (ids))
		RETURNING 1
	), closed AS (
		UPDATE hub.endpoints e
		SET circuit_state = 'closed', circuit_opened_at = NULL, circuit_probe_until = NULL, consecutive_failures = 0,
			circuit_failed_keys = '{}'
		WHERE e.endpoint_id IN (SELECT done.endpoint_id FROM done)
			AND (e.circuit_state <> 'closed' OR e.consecutive_failures <> 0 OR e.circuit_failed_keys <> '{}')
		RETURNING 1
	)
	-- (data-modifying CTEs run to completion whether read or not)
	SELECT count(*) INTO n FROM audit;
	RETURN n;
END
$$;
COMMENT ON FUNCTION hub._complete_many(bigint[], bigint[], integer[], integer[], text[], text, uuid[]) IS
'API: Private. Record many successful deliveries under their leases at once (stale ones as stale attempts), an attempt row per event for a lease group (events); returns how many attempts were recorded delivered.';

/*
 * _split_group --- take the events of a leased lease group that did not
 * get through out of it, under the same lease (state, token, attempt count
 * and lease time), so that the dispatcher fails or defers them with the
 * usual functions while the rest of the group is completed.  p_events
 * (failed: each has its own outcome, backoff and attempts from now on)
 * each become a delivery of their own; p_together (given back without an
 * attempt) become one group again, so that what a pause or an opened
 * circuit gives back is still leased as one.  A group none of whose events
 * got through keeps what is given back together, or else its first event.
 * Returns the delivery of each event named; with the lease gone (the token
 * no longer the group's), nothing changes and every event maps to the
 * group, whose fenced functions then record stale attempts.
 */
CREATE FUNCTION hub._split_group(p_delivery bigint, p_token bigint, p_events uuid[],
								 p_together uuid[] DEFAULT '{}')
RETURNS TABLE (event_id uuid, delivery_id bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
	g hub.deliveries;
	keep uuid[];
	together uuid[];
	alone uuid[];
	kept_named boolean;
BEGIN
	SELECT * INTO g FROM hub.deliveries d
	WHERE d.delivery_id = p_delivery AND d.lease_token = p_token AND d.state = 'in_flight'
		AND d.batch_events IS NOT NULL
	FOR UPDATE;
	IF NOT FOUND THEN
		RETURN QUERY SELECT e.e, p_delivery FROM unnest(p_events || coalesce(p_together, '{}')) e(e);
		RETURN;
	END IF;
	-- (each list in the group's order, and only the group's own events)
	alone := ARRAY(SELECT b.e FROM unnest(g.batch_events) WITH ORDINALITY b(e, o)
				   WHERE b.e = ANY (p_events) ORDER BY b.o);
	together := ARRAY(SELECT b.e FROM unnest(g.batch_events) WITH ORDINALITY b(e, o)
					  WHERE b.e = ANY (p_together) AND b.e <> ALL (alone) ORDER BY b.o);
	keep := ARRAY(SELECT b.e FROM unnest(g.batch_events) WITH ORDINALITY b(e, o)
				  WHERE b.e <> ALL (alone) AND b.e <> ALL (together) ORDER BY b.o);
	kept_named := cardinality(keep) = 0;
	IF kept_named AND cardinality(together) > 0 THEN
		keep := together;		-- the group row is what goes back together
		together := '{}';
	ELSIF kept_named THEN
		keep := alone[1:1];		-- the group row is its first failed event
		alone := alone[2:];
	END IF;
	-- the group first: its key is its smallest event, which may be leaving
	UPDATE hub.deliveries d
	SET batch_events = CASE WHEN cardinality(keep) > 1 THEN keep END,
		event_id = k.event_id, seq = k.seq, aggregate_id = k.aggregate_id, updated_at = now()
	FROM (SELECT (array_agg(o.event_id ORDER BY o.event_id))[1] AS event_id, min(o.seq) AS seq,
				 min(o.aggregate_id) AS aggregate_id
		  FROM hub.outbox o WHERE o.event_id = ANY (keep)) k
	WHERE d.delivery_id = p_delivery;
	IF kept_named THEN
		RETURN QUERY SELECT e.e, p_delivery FROM unnest(keep) e(e);
	END IF;
	FOR event_id, delivery_id IN
		INSERT INTO hub.deliveries AS d (subscription_id, endpoint_id, event_id, seq, aggregate_id, ordering,
										 priority, state, attempts, next_attempt_at, lease_until, lease_token,
										 leased_by)
		SELECT g.subscription_id, g.endpoint_id, o.event_id, o.seq, o.aggregate_id, g.ordering, g.priority,
			   'in_flight', g.attempts, g.next_attempt_at, g.lease_until, g.lease_token, g.leased_by
		FROM hub.outbox o
		WHERE o.event_id = ANY (alone || CASE WHEN cardinality(together) = 1 THEN together ELSE '{}' END)
		RETURNING d.event_id, d.delivery_id
	LOOP
		RETURN NEXT;
	END LOOP;
	IF cardinality(together) > 1 THEN
		RETURN QUERY
		WITH regrouped AS (
			INSERT INTO hub.deliveries AS d (subscription_id, endpoint_id, event_id, seq, aggregate_id, ordering,
											 priority, state, attempts, next_attempt_at, lease_until,
											 lease_token, leased_by, batch_events)
			SELECT g.subscription_id, g.endpoint_id, (array_agg(o.event_id ORDER BY o.event_id))[1], min(o.seq),
				   min(o.aggregate_id), g.ordering, g.priority, 'in_flight', g.attempts, g.next_attempt_at,
				   g.lease_until, g.lease_token, g.leased_by, together
			FROM hub.outbox o
			WHERE o.event_id = ANY (together)
			RETURNING d.delivery_id
		)
		SELECT e.e, r.delivery_id FROM regrouped r, unnest(together) e(e);
	END IF;
END
$$;
COMMENT ON FUNCTION hub._split_group(bigint, bigint, uuid[], uuid[]) IS
'API: Private. Take the events of a leased lease group that did not get through out of it under the same lease: failed ones (p_events) each into a delivery of its own, ones given back (p_together) into one group; returns the delivery of each (all the group''s own when the lease is gone).';

CREATE FUNCTION hub._release_leases(worker text) RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
	WITH x AS (
		UPDATE hub.deliveries d SET state = CASE WHEN d.attempts > 1 THEN 'retry_wait' ELSE 'pending' END,
			next_attempt_at = now(), lease_until = NULL, updated_at = now()
		WHERE d.state = 'in_flight' AND d.leased_by = worker
		RETURNING d.delivery_id, d.attempts, d.lease_token
	), audit AS (
		INSERT INTO hub.attempts (delivery_id, attempt, worker, lease_token, error, outcome)
		SELECT x.delivery_id, x.attempts, worker, x.lease_token, 'worker restarted before a result', 'expired'
		FROM x
	)
	SELECT count(*)::integer FROM x
$$;
COMMENT ON FUNCTION hub._release_leases(text) IS
'API: Private. A dispatcher starting again gives back the leases its previous incarnation held (they are claimable at once).';

REVOKE EXECUTE ON FUNCTION hub._egress_check(text), hub.egress_allowed(text), hub._endpoint_check(),
	hub.wake(), hub.webhook_signature(text, text, bigint, text),
	hub.event_body(text, uuid, text, text, timestamptz, text, jsonb, text),
	hub._dispatch_endpoints(integer[], integer, integer),
	hub._complete_many(bigint[], bigint[], integer[], integer[], text[], text, uuid[]),
	hub._split_group(bigint, bigint, uuid[], uuid[]), hub._release_leases(text)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.wake() TO hub_writer;
GRANT EXECUTE ON FUNCTION hub.egress_allowed(text) TO hub_admin;
GRANT EXECUTE ON FUNCTION hub.webhook_signature(text, text, bigint, text),
	hub.event_body(text, uuid, text, text, timestamptz, text, jsonb, text)
	TO hub_reader, hub_writer;

-- ---------------------------------------------------------------- isolation

/*
 * What a dispatcher does when its claim fails as a whole (extension
 * workers/dispatcher.c, claim_isolated): it claims again endpoint by
 * endpoint, so that what fails because of one event, subscription or
 * endpoint stops only that one.  An event that routing cannot take is kept
 * in hub.unroutable_events, with the error, and routing goes on past it;
 * an endpoint whose claim, settings or outcomes cannot be handled is
 * paused with the reason audited (hub._pause_by_worker).  Nothing here runs
 * while the ordinary claim works.
 */
CREATE TABLE hub.unroutable_events (
	event_id		uuid PRIMARY KEY,
	error			text NOT NULL,
	failed_at		timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE hub.unroutable_events IS
'Events that routing could not give deliveries to (the error kept); routing went on past them. Fix the cause, then backfill with hub.replay_subscription(subscription_id, reason, from_time, to_time) and delete the row.';

/*
 * _event_matches --- does a subscription (pattern, filter, creation time)
 * take this event?  The rule of hub._route_events, for its slow path.
 */
CREATE FUNCTION hub._event_matches(event_pattern text, filter jsonb, created_at timestamptz,
								   event_type text, payload jsonb, published_at timestamptz)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT split_part(event_pattern, '.', 1) IN ('*', split_part(event_type, '.', 1))
		AND split_part(event_pattern, '.', 2) IN ('*', split_part(event_type, '.', 2))
		AND (filter IS NULL OR payload @> filter)
		AND created_at <= published_at
$$;
COMMENT ON FUNCTION hub._event_matches(text, jsonb, timestamptz, text, jsonb, timestamptz) IS
'API: Private. Whether a subscription (pattern, filter, created_at) takes an event (type, payload, published_at).';

/*
 * _route_events_each --- hub._route_events one event at a time, each in a
 * subtransaction of its own: an event whose deliveries cannot be made goes
 * to hub.unroutable_events, with a WARNING, and the others are routed.
 * Every delivery made here is of one event (batch and lease-group
 * subscriptions get theirs unbatched: the dispatcher batches single
 * deliveries of a batch subscription again).  The slow path of a routing
 * that failed as a whole.
 */
CREATE FUNCTION hub._route_events_each() RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cur pg_snapshot := pg_current_snapshot();
	prev pg_snapshot;
	ev record;
	k bigint;
	n bigint := 0;
BEGIN
	SELECT r.snapshot INTO prev FROM hub._router_state r FOR UPDATE SKIP LOCKED;
	IF NOT FOUND THEN
		RETURN 0;
	END IF;
	FOR ev IN
		SELECT o.event_id, o.seq, o.event_type, o.aggregate_id, o.payload, o.published_at
		FROM (SELECT o.* FROM hub.outbox o
			  WHERE o.event_id >= hub._event_id_floor(pg_snapshot_xmax(prev))
			  UNION ALL
			  SELECT o.* FROM pg_snapshot_xip(prev) x
			  JOIN hub.outbox o ON o.event_id BETWEEN hub._event_id_floor(x) AND hub._event_id_ceiling(x)) o
		WHERE pg_visible_in_snapshot(hub._event_xid(o.event_id), cur)
		ORDER BY o.seq
	LOOP
		BEGIN
			INSERT INTO hub.deliveries (subscription_id, endpoint_id, event_id, seq, aggregate_id, ordering,
										priority, batch_events)
			SELECT s.subscription_id, s.endpoint_id, ev.event_id, ev.seq, ev.aggregate_id, s.ordering, s.priority, NULL
			FROM (SELECT * FROM hub.subscriptions FOR KEY SHARE) s
			WHERE hub._event_matches(s.event_pattern, s.filter, s.created_at, ev.event_type, ev.payload,
									 ev.published_at)
			ON CONFLICT (subscription_id, event_id) DO NOTHING;
			GET DIAGNOSTICS k = ROW_COUNT;
			n := n + k;
		EXCEPTION WHEN OTHERS THEN
			INSERT INTO hub.unroutable_events AS u (event_id, error)
			VALUES (ev.event_id, SQLSTATE || ': ' || SQLERRM)
			ON CONFLICT (event_id) DO UPDATE SET error = excluded.error, failed_at = excluded.failed_at;
			RAISE WARNING 'event % could not be routed and is kept in hub.unroutable_events: %', ev.event_id, SQLERRM
				USING ERRCODE = SQLSTATE;
		END;
	END LOOP;
	UPDATE hub._router_state SET snapshot = cur, watermark = pg_snapshot_xmin(cur);
	RETURN n;
END
$$;
COMMENT ON FUNCTION hub._route_events_each() IS
'API: Private. Route what hub._route_events would, one event at a time: an event whose deliveries cannot be made is kept in hub.unroutable_events (with a WARNING) and the others are routed.';

/*
 * _ready_endpoints --- the endpoints a dispatcher (shard of nshards) would
 * claim from now: usable, closed circuit, served by it, with a delivery due.
 */
CREATE FUNCTION hub._ready_endpoints(shard integer, nshards integer) RETURNS integer[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(array_agg(e.endpoint_id ORDER BY e.endpoint_id), '{}')
	FROM hub.endpoints e
	WHERE e.enabled AND NOT e.paused AND e.circuit_state = 'closed'
		AND hub._serves(shard, nshards, e.endpoint_id, CASE WHEN e.spread THEN e.max_concurrency ELSE 1 END)
		AND EXISTS (SELECT 1 FROM hub.deliveries d
					WHERE d.endpoint_id = e.endpoint_id AND d.state IN ('pending', 'retry_wait', 'in_flight')
					  AND d.next_attempt_at <= now())
$$;
COMMENT ON FUNCTION hub._ready_endpoints(integer, integer) IS
'API: Private. The endpoints a dispatcher (shard of nshards) would claim from: enabled, not paused, circuit closed, served by it, with a delivery due.';

/*
 * _pause_by_worker --- a dispatcher pauses an endpoint it cannot serve
 * (secrets that do not open, a claim, settings or outcome that fail
 * because of it): audited as action with the reason, a WARNING naming the
 * endpoint; nothing when it is paused already.
 */
CREATE FUNCTION hub._pause_by_worker(endpoint_id integer, action text, reason text) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ep text;
BEGIN
	-- (audited by the trigger on hub.endpoints, as this action)
	PERFORM hub._audited(action, reason);
	UPDATE hub.endpoints e SET paused = true
	WHERE e.endpoint_id = _pause_by_worker.endpoint_id AND NOT e.paused
	RETURNING e.name INTO ep;
	PERFORM hub._audited(NULL, NULL);
	IF ep IS NOT NULL THEN
		RAISE WARNING 'endpoint "%" paused: %', ep, reason
			USING HINT = 'Fix the cause, then hub.resume_endpoint().';
	END IF;
END
$$;
COMMENT ON FUNCTION hub._pause_by_worker(integer, text, text) IS
'API: Private. Pause an endpoint a dispatcher cannot serve, audited as action with the reason, with a WARNING naming the endpoint.';

REVOKE EXECUTE ON FUNCTION hub._event_matches(text, jsonb, timestamptz, text, jsonb, timestamptz),
	hub._route_events_each(), hub._ready_endpoints(integer, integer), hub._pause_by_worker(integer, text, text)
	FROM PUBLIC;
GRANT SELECT ON hub.unroutable_events TO hub_reader;
GRANT SELECT, DELETE ON hub.unroutable_events TO hub_admin;

-- ---- 0.2.0: 55_secrets.sql ----
/*
 * 55_secrets.sql --- changing an endpoint's credentials and rotating its
 * Standard Webhooks signing secrets, for hub_admin, audited.
 *
 * hub._endpoint_secrets stays readable, never writable, by hub_admin: every
 * change goes through these functions, which record who changed what and
 * why in hub.operator_audit without the secret itself.  A rotation puts the
 * new secret first and keeps the older ones: the dispatchers sign with
 * every secret of the list (one signature each in webhook-signature), so a
 * receiver that still verifies with the old secret keeps accepting while it
 * is switched over; hub.retire_signing_secrets then drops the old ones.
 * The dispatchers re-read secrets within a second.
 *
 * Every secret is sealed before it reaches the table (extension/sealed.c):
 * hub._seal encrypts it under the key named by logistics_hub.secret_key_file,
 * bound to its endpoint and column, and only the dispatchers open it, in C.
 * No SQL function returns a secret.  hub.reseal_secrets moves every secret
 * to the current key after a key rotation; an endpoint whose secrets the
 * dispatcher cannot open is paused through hub._pause_unsealed.
 */

CREATE FUNCTION hub._seal(endpoint_id integer, "column" text, secret text) RETURNS bytea
	AS 'MODULE_PATHNAME', 'hub_seal' LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION hub._seal(integer, text, text) IS
'API: Private. The sealed form of a secret for an endpoint''s column of hub._endpoint_secrets, under the current secret key (55000 when none is loaded); never shows the secret.';

CREATE FUNCTION hub._seal_signing_secret(endpoint_id integer, secret text, previous bytea[]) RETURNS bytea[]
	AS 'MODULE_PATHNAME', 'hub_seal_signing_secret' LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION hub._seal_signing_secret(integer, text, bytea[]) IS
'API: Private. previous with the signing secret sealed in front and an earlier copy of the same secret taken out; 55000 when no secret key is loaded.';

CREATE FUNCTION hub._reseal(endpoint_id integer, "column" text, sealed bytea) RETURNS bytea
	AS 'MODULE_PATHNAME', 'hub_reseal' LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION hub._reseal(integer, text, bytea) IS
'API: Private. A sealed value sealed again under the current key (itself when it already is); 55000 when it cannot be opened with any key loaded.';

CREATE FUNCTION hub.secret_keys() RETURNS TABLE (key_id text, is_current boolean)
	AS 'MODULE_PATHNAME', 'hub_secret_keys' LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION hub.secret_keys() IS
'The ids of the secret keys loaded at server start (logistics_hub.secret_key_file, is_current, and logistics_hub.previous_secret_key_files); no rows when none is.';

CREATE FUNCTION hub.sealed_key_id(sealed bytea) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN pg_catalog.length(sealed) >= 49 AND pg_catalog.get_byte(sealed, 0) = 1
				THEN pg_catalog.encode(pg_catalog.substr(sealed, 2, 8), 'hex') END
$$;
COMMENT ON FUNCTION hub.sealed_key_id(bytea) IS
'The id of the key a value of hub._endpoint_secrets is sealed with (as in hub.secret_keys()); NULL for anything else.';

/*
 * reseal_secrets --- after a key rotation (a new logistics_hub.secret_key_file,
 * the old one in logistics_hub.previous_secret_key_files, a restart): seal
 * every secret again under the current key.  All or nothing: a value that
 * no loaded key opens stops it (55000, naming the endpoint and column).
 */
CREATE FUNCTION hub.reseal_secrets(OUT endpoints integer, OUT resealed integer, OUT already_current integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cur text := (SELECT k.key_id FROM hub.secret_keys() k WHERE k.is_current);
BEGIN
	IF cur IS NULL THEN
		RAISE EXCEPTION 'no secret key is loaded, so secrets cannot be resealed'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Set logistics_hub.secret_key_file to the new key and restart the server.';
	END IF;
	PERFORM FROM hub._endpoint_secrets x FOR UPDATE;
	SELECT count(DISTINCT v.endpoint_id) FILTER (WHERE hub.sealed_key_id(v.value) IS DISTINCT FROM cur),
		   count(*) FILTER (WHERE hub.sealed_key_id(v.value) IS DISTINCT FROM cur),
		   count(*) FILTER (WHERE hub.sealed_key_id(v.value) = cur)
	INTO endpoints, resealed, already_current
	FROM (SELECT x.endpoint_id, u.value
		  FROM hub._endpoint_secrets x,
			   LATERAL unnest(ARRAY[x.auth_secret, x.oauth2_client_id, x.oauth2_client_secret] || x.signing_secrets) u(value)
		  WHERE u.value IS NOT NULL) v;
	UPDATE hub._endpoint_secrets x
	SET auth_secret = hub._reseal(x.endpoint_id, 'auth_secret', x.auth_secret),
		oauth2_client_id = hub._reseal(x.endpoint_id, 'oauth2_client_id', x.oauth2_client_id),
		oauth2_client_secret = hub._reseal(x.endpoint_id, 'oauth2_client_secret', x.oauth2_client_secret),
		signing_secrets = ARRAY(SELECT hub._reseal(x.endpoint_id, 'signing_secrets', u.s)
								FROM unnest(x.signing_secrets) WITH ORDINALITY u(s, i) ORDER BY u.i);
	PERFORM hub._audit('reseal_secrets', cur, NULL,
					   jsonb_build_object('endpoints', endpoints, 'resealed', resealed,
										  'already_current', already_current));
END
$$;
COMMENT ON FUNCTION hub.reseal_secrets() IS
'Seal every endpoint secret again under the current key (after a key rotation, while the old key is still loaded as a previous key); returns the endpoints changed and the values resealed or already current. All or nothing; audited.';

/*
 * _pause_unsealed --- called by a dispatcher whose endpoint's secrets do
 * not open (no key, another key, altered): pause it, audit the reason and
 * log a WARNING naming the endpoint, once (nothing when already paused).
 */
CREATE FUNCTION hub._pause_unsealed(endpoint_id integer, reason text) RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT hub._pause_by_worker(endpoint_id, 'pause_unsealed', reason)
$$;
COMMENT ON FUNCTION hub._pause_unsealed(integer, text) IS
'API: Private. Pause an endpoint whose sealed secrets the dispatcher cannot open, audited as pause_unsealed with the reason, with a WARNING naming the endpoint.';

CREATE FUNCTION hub._check_signing_secret(secret text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF secret IS NULL OR secret !~ '^whsec_[A-Za-z0-9+/]+={0,2}$' THEN
		RAISE EXCEPTION 'invalid signing secret' USING ERRCODE = 'invalid_parameter_value',
			HINT = 'A Standard Webhooks secret is whsec_ followed by base64.';
	END IF;
END
$$;
COMMENT ON FUNCTION hub._check_signing_secret(text) IS
'API: Private. Raise 22023 unless the text is a Standard Webhooks secret (whsec_ and base64); never shows the secret.';

CREATE FUNCTION hub.rotate_signing_secret(endpoint text, new_secret text, reason text DEFAULT NULL,
										  keep_previous boolean DEFAULT true)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id integer := hub._endpoint_id(endpoint);
	n integer;
BEGIN
	PERFORM hub._check_signing_secret(new_secret);
	UPDATE hub._endpoint_secrets x
	SET signing_secrets = hub._seal_signing_secret(id, new_secret,
												   CASE WHEN keep_previous THEN x.signing_secrets ELSE '{}' END)
	WHERE x.endpoint_id = id
	RETURNING cardinality(x.signing_secrets) INTO n;
	IF n > 5 THEN
		RAISE EXCEPTION 'endpoint "%" would sign with % secrets', endpoint, n
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Retire old secrets first with hub.retire_signing_secrets(); at most 5 are kept.';
	END IF;
	PERFORM hub._audit('rotate_signing_secret', endpoint, reason,
					   jsonb_build_object('secrets', n, 'kept_previous', keep_previous));
	RETURN n;
END
$$;
COMMENT ON FUNCTION hub.rotate_signing_secret(text, text, text, boolean) IS
'Make new_secret (whsec_...) the endpoint''s first signing secret; with keep_previous (the default) the older ones stay and every request carries one signature per secret until they are retired. Returns how many secrets it signs with (at most 5); audited without the secret.';

CREATE FUNCTION hub.retire_signing_secrets(endpoint text, keep integer DEFAULT 1, reason text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id integer := hub._endpoint_id(endpoint);
	n integer;
BEGIN
	IF keep IS NULL OR keep < 0 THEN
		RAISE EXCEPTION 'keep must be 0 or more, not %', coalesce(keep::text, 'NULL')
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	UPDATE hub._endpoint_secrets x
	SET signing_secrets = coalesce(x.signing_secrets[1:keep], '{}')
	WHERE x.endpoint_id = id
	RETURNING cardinality(x.signing_secrets) INTO n;
	PERFORM hub._audit('retire_signing_secrets', endpoint, reason, jsonb_build_object('secrets', n));
	RETURN n;
END
$$;
COMMENT ON FUNCTION hub.retire_signing_secrets(text, integer, text) IS
'Keep only the endpoint''s newest keep signing secrets (default 1; 0 stops signing). Returns how many remain; audited.';

CREATE FUNCTION hub.set_endpoint_credentials(endpoint text, auth_secret text DEFAULT NULL,
		oauth2_client_id text DEFAULT NULL, oauth2_client_secret text DEFAULT NULL,
		reason text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id integer := hub._endpoint_id(endpoint);
BEGIN
	IF auth_secret IS NULL AND oauth2_client_id IS NULL AND oauth2_client_secret IS NULL THEN
		RAISE EXCEPTION 'no credential given' USING ERRCODE = 'invalid_parameter_value',
			HINT = 'Pass auth_secret, oauth2_client_id or oauth2_client_secret by name.';
	END IF;
	PERFORM hub._check_credentials(endpoint, auth_secret, oauth2_client_id, oauth2_client_secret);
	UPDATE hub._endpoint_secrets x
	SET auth_secret = coalesce(hub._seal(id, 'auth_secret', set_endpoint_credentials.auth_secret), x.auth_secret),
		oauth2_client_id = coalesce(hub._seal(id, 'oauth2_client_id', set_endpoint_credentials.oauth2_client_id),
									x.oauth2_client_id),
		oauth2_client_secret = coalesce(hub._seal(id, 'oauth2_client_secret', set_endpoint_credentials.oauth2_client_secret),
										x.oauth2_client_secret)
	WHERE x.endpoint_id = id;
	PERFORM hub._audit('set_endpoint_credentials', endpoint, reason,
					   jsonb_build_object('auth_secret', auth_secret IS NOT NULL,
										  'oauth2_client_id', oauth2_client_id IS NOT NULL,
										  'oauth2_client_secret', oauth2_client_secret IS NOT NULL));
END
$$;
COMMENT ON FUNCTION hub.set_endpoint_credentials(text, text, text, text, text) IS
'Replace an endpoint''s bearer/basic/API-key secret or OAuth2 client credentials (those given; NULL keeps the old one); audited with which ones changed, never their values.';

REVOKE EXECUTE ON FUNCTION hub._seal(integer, text, text), hub._seal_signing_secret(integer, text, bytea[]),
	hub._reseal(integer, text, bytea), hub.secret_keys(), hub.sealed_key_id(bytea), hub.reseal_secrets(),
	hub._pause_unsealed(integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.secret_keys(), hub.sealed_key_id(bytea), hub.reseal_secrets() TO hub_admin;
REVOKE EXECUTE ON FUNCTION hub._check_signing_secret(text),
	hub.rotate_signing_secret(text, text, text, boolean), hub.retire_signing_secrets(text, integer, text),
	hub.set_endpoint_credentials(text, text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.rotate_signing_secret(text, text, text, boolean),
	hub.retire_signing_secrets(text, integer, text),
	hub.set_endpoint_credentials(text, text, text, text, text) TO hub_admin;

-- ---- 0.2.0: 60_inbox.sql ----
/*
 * 60_inbox.sql --- the idempotent inbox of inbound messages and the
 * handlers that process it.
 *
 * hub.receive() writes one row per (source, message_id): the unique key
 * makes a redelivered message a duplicate (counted, never stored twice),
 * also when two receivers race, since INSERT ... ON CONFLICT DO NOTHING
 * waits for the other inserter and then sees its row.
 *
 * hub.process_inbox() claims ready messages with FOR UPDATE SKIP LOCKED
 * (two processors never run one message twice) and runs, for each, the
 * handler of the longest matching message pattern in its own
 * subtransaction: a handler's writes are kept when it succeeds and rolled
 * back when it fails.  A message moves through
 *   new -> done | unhandled (no handler)
 *       -> retry_wait (next_attempt_at, backoff retry_base * 2^(attempts-1))
 *       -> dead (after max_attempts), the last error kept as "SQLSTATE: message"
 * and one failing message never stops the others.  There is no
 * 'processing' state: a claim is a row lock, so a processor that dies
 * loses nothing.  The claim and the state changes are private SECURITY
 * DEFINER helpers, while process_inbox() itself runs with its caller's
 * rights, and each handler as its own owner (hub._run_handler), so a
 * handler never runs with the privileges of the extension's owner or of
 * whoever processes the inbox.
 * All tables are WAL-logged.
 */

-- ---------------------------------------------------------------- inbox

CREATE TABLE hub.inbox (
	inbox_id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	-- (keys at most 256 bytes, as hub.receive checks: README, "Limits on inputs")
	source				text NOT NULL CHECK (source <> '' AND octet_length(source) <= 256),
	message_id			text NOT NULL CHECK (message_id <> '' AND octet_length(message_id) <= 256),
	message_type		text NOT NULL CHECK (message_type <> '' AND octet_length(message_type) <= 256),
	payload				jsonb NOT NULL,
	received_at			timestamptz NOT NULL DEFAULT now(),
	state				text NOT NULL DEFAULT 'new'
						CHECK (state IN ('new', 'done', 'retry_wait', 'dead', 'unhandled')),
	attempts			integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
	next_attempt_at		timestamptz DEFAULT now(),
	last_error			text,
	processed_at		timestamptz,
	duplicate_count		integer NOT NULL DEFAULT 0 CHECK (duplicate_count >= 0),
	last_duplicate_at	timestamptz,
	correlation_id		text CHECK (octet_length(correlation_id) <= 256),
	aggregate_id		text CHECK (octet_length(aggregate_id) <= 256),
	UNIQUE (source, message_id),
	CHECK ((state IN ('new', 'retry_wait')) = (next_attempt_at IS NOT NULL))
);
CREATE INDEX inbox_ready_idx ON hub.inbox (next_attempt_at) WHERE state IN ('new', 'retry_wait');
-- hub.trace() follows a correlation id or a business key into the inbox
CREATE INDEX inbox_correlation_idx ON hub.inbox (correlation_id) WHERE correlation_id IS NOT NULL;
CREATE INDEX inbox_aggregate_idx ON hub.inbox (aggregate_id) WHERE aggregate_id IS NOT NULL;
COMMENT ON TABLE hub.inbox IS
'Inbound messages, one row per (source, message_id): write with hub.receive(), process with hub.process_inbox().';
COMMENT ON COLUMN hub.inbox.message_id IS 'The sender''s idempotency key, unique per source.';
COMMENT ON COLUMN hub.inbox.state IS
'new, done, retry_wait (waits for next_attempt_at), dead (max_attempts reached) or unhandled (no handler matched).';
COMMENT ON COLUMN hub.inbox.attempts IS 'Failed handler runs so far.';
COMMENT ON COLUMN hub.inbox.next_attempt_at IS 'When the message is ready for processing; NULL once it is done, dead or unhandled.';
COMMENT ON COLUMN hub.inbox.last_error IS 'The last handler error as "SQLSTATE: message".';
COMMENT ON COLUMN hub.inbox.duplicate_count IS 'How often the same (source, message_id) was received again.';
COMMENT ON COLUMN hub.inbox.correlation_id IS 'The correlation id the message carries (hub.receive''s argument, else the payload''s correlation_id key), for hub.trace().';
COMMENT ON COLUMN hub.inbox.aggregate_id IS 'The business key (order, shipment, SKU, return) the message is about, when the receiver names it; for hub.trace().';

-- ---------------------------------------------------------------- handlers

CREATE TABLE hub.inbox_handlers (
	message_pattern		text PRIMARY KEY CHECK (message_pattern ~ '^[^*]*\*?$' AND message_pattern <> ''),
	handler				regproc NOT NULL,
	max_attempts		integer NOT NULL DEFAULT 5 CHECK (max_attempts BETWEEN 1 AND 1000),
	retry_base			interval NOT NULL DEFAULT '1 second'
						CHECK (retry_base BETWEEN '0'::interval AND '1 day'::interval)
);
COMMENT ON COLUMN hub.inbox_handlers.max_attempts IS 'Failed runs before a message is dead, 1 to 1000.';
COMMENT ON COLUMN hub.inbox_handlers.retry_base IS 'Backoff after the first failure, doubled after each further one up to a day; 0 to 1 day.';
COMMENT ON TABLE hub.inbox_handlers IS
'Inbox handlers by message type pattern: an exact type, or a prefix ending in * (easypost.*); the longest matching pattern wins. Register with hub.register_handler().';
COMMENT ON COLUMN hub.inbox_handlers.handler IS
'A function handler(payload jsonb, message_type text); its result is ignored and an error it raises fails the message.';
SELECT pg_catalog.pg_extension_config_dump('hub.inbox_handlers', '');

CREATE FUNCTION hub._inbox_pattern_matches(message_pattern text, message_type text)
RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN right(message_pattern, 1) = '*'
				THEN starts_with(message_type, left(message_pattern, -1))
				ELSE message_type = message_pattern END
$$;
COMMENT ON FUNCTION hub._inbox_pattern_matches(text, text) IS
'API: Private. Whether an inbox handler pattern (exact, or a prefix ending in *) matches a message type.';

-- ---------------------------------------------------------------- receive

CREATE FUNCTION hub.receive(source text, message_id text, message_type text, payload jsonb,
		received_at timestamptz DEFAULT now(), correlation_id text DEFAULT NULL, aggregate_id text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	corr text := coalesce(receive.correlation_id,
						  CASE WHEN jsonb_typeof(receive.payload) = 'object'
							   THEN receive.payload ->> 'correlation_id' END);
BEGIN
	-- the limits on inputs (22001, 54000), before anything is written
	PERFORM hub._check_key_length('source', receive.source);
	PERFORM hub._check_key_length('message id', receive.message_id);
	PERFORM hub._check_key_length('message type', receive.message_type);
	PERFORM hub._check_key_length('correlation id', corr);
	PERFORM hub._check_key_length('aggregate id', receive.aggregate_id);
	PERFORM hub._check_payload_size(pg_catalog.format('message "%s" of "%s"', left(receive.message_id, 64),
													  left(receive.source, 64)),
									receive.payload);
	-- the loop only repeats if a concurrent receiver's row vanished between
	-- our INSERT and UPDATE (it rolled back or was deleted)
	LOOP
		INSERT INTO hub.inbox AS i (source, message_id, message_type, payload, received_at, next_attempt_at,
									correlation_id, aggregate_id)
		VALUES (receive.source, receive.message_id, receive.message_type, receive.payload,
				coalesce(receive.received_at, now()), now(), corr, receive.aggregate_id)
		ON CONFLICT ON CONSTRAINT inbox_source_message_id_key DO NOTHING;
		IF FOUND THEN
			RETURN true;
		END IF;
		UPDATE hub.inbox AS i
		SET duplicate_count = i.duplicate_count + 1, last_duplicate_at = now()
		WHERE i.source = receive.source AND i.message_id = receive.message_id;
		IF FOUND THEN
			RETURN false;
		END IF;
	END LOOP;
END
$$;
COMMENT ON FUNCTION hub.receive(text, text, text, jsonb, timestamptz, text, text) IS
'Store an inbound message in hub.inbox: true for a new message, false for a duplicate (same source and message_id), which only counts it. Concurrent receivers of one message produce one row. correlation_id (default: the payload''s correlation_id key) and aggregate_id (the business key) make the message part of hub.trace().';

-- ---------------------------------------------------------------- handlers API

CREATE FUNCTION hub.register_handler(message_pattern text, handler regproc,
		max_attempts integer DEFAULT 5, retry_base interval DEFAULT '1 second')
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF message_pattern IS NULL OR message_pattern !~ '^[^*]*\*?$' OR message_pattern = '' THEN
		RAISE EXCEPTION 'invalid message pattern: "%"', message_pattern
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use an exact message type, or a prefix followed by one trailing * (easypost.*).';
	END IF;
	PERFORM hub._check_user_function(handler, 'inbox handler', '3802 25');
	PERFORM hub._check_setting('max_attempts', max_attempts BETWEEN 1 AND 1000, max_attempts::text,
							   'between 1 and 1000');
	PERFORM hub._check_setting('retry_base', retry_base BETWEEN '0'::interval AND '1 day'::interval,
							   retry_base::text, 'between 0 and 1 day');
	INSERT INTO hub.inbox_handlers AS h (message_pattern, handler, max_attempts, retry_base)
	VALUES (register_handler.message_pattern, register_handler.handler,
			register_handler.max_attempts, register_handler.retry_base)
	ON CONFLICT ON CONSTRAINT inbox_handlers_pkey DO UPDATE
		SET handler = excluded.handler, max_attempts = excluded.max_attempts, retry_base = excluded.retry_base;
	-- messages that found no handler before are processed again
	UPDATE hub.inbox AS i SET state = 'new', next_attempt_at = now(), processed_at = NULL
	WHERE i.state = 'unhandled'
	  AND hub._inbox_pattern_matches(register_handler.message_pattern, i.message_type);
END
$$;
COMMENT ON FUNCTION hub.register_handler(text, regproc, integer, interval) IS
'Register (or replace) the handler of a message pattern: an exact type or a prefix ending in *. The handler is a function (payload jsonb, message_type text). Unhandled messages the pattern matches become new again.';

CREATE FUNCTION hub._inbox_claim(max integer)
RETURNS TABLE (inbox_id bigint, message_type text, payload jsonb, attempts integer,
			   handler regproc, max_attempts integer, retry_base interval)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	WITH claimed AS (
		SELECT i.inbox_id, i.message_type, i.payload, i.attempts
		FROM hub.inbox i
		WHERE i.state IN ('new', 'retry_wait') AND i.next_attempt_at <= now()
		ORDER BY i.next_attempt_at, i.inbox_id
		LIMIT max
		FOR UPDATE SKIP LOCKED
	)
	SELECT c.inbox_id, c.message_type, c.payload, c.attempts, h.handler, h.max_attempts, h.retry_base
	FROM claimed c
	LEFT JOIN LATERAL (
		SELECT h.handler, h.max_attempts, h.retry_base
		FROM hub.inbox_handlers h
		WHERE hub._inbox_pattern_matches(h.message_pattern, c.message_type)
		ORDER BY h.message_pattern = c.message_type DESC, length(h.message_pattern) DESC
		LIMIT 1
	) h ON true
	ORDER BY c.inbox_id
$$;
COMMENT ON FUNCTION hub._inbox_claim(integer) IS
'API: Private. Lock up to max ready inbox messages (skipping locked ones) and return each with its best-matching handler.';

CREATE FUNCTION hub._inbox_settle(inbox_id bigint, outcome text, error text DEFAULT NULL,
		max_attempts integer DEFAULT NULL, retry_base interval DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	new_state text;
BEGIN
	IF outcome = 'done' OR outcome = 'unhandled' THEN
		UPDATE hub.inbox i SET state = outcome, next_attempt_at = NULL, processed_at = now()
		WHERE i.inbox_id = _inbox_settle.inbox_id
		RETURNING i.state INTO new_state;
	ELSIF outcome = 'failed' THEN
		UPDATE hub.inbox i
		SET attempts = i.attempts + 1,
			last_error = error,
			state = CASE WHEN i.attempts + 1 >= _inbox_settle.max_attempts THEN 'dead' ELSE 'retry_wait' END,
			-- (in seconds as float8, capped at a day: an interval times
			-- 2^attempts would overflow)
			next_attempt_at = CASE WHEN i.attempts + 1 >= _inbox_settle.max_attempts THEN NULL
								   ELSE now() + make_interval(secs => least(86400,
										extract(epoch FROM _inbox_settle.retry_base)::float8
										* power(2, least(i.attempts, 30)))) END,
			processed_at = CASE WHEN i.attempts + 1 >= _inbox_settle.max_attempts THEN now() END
		WHERE i.inbox_id = _inbox_settle.inbox_id
		RETURNING i.state INTO new_state;
	ELSE
		RAISE EXCEPTION 'invalid inbox outcome: "%"', outcome USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN new_state;
END
$$;
COMMENT ON FUNCTION hub._inbox_settle(bigint, text, text, integer, interval) IS
'API: Private. Record the outcome of processing one inbox message (done, unhandled, or failed with backoff or dead).';

CREATE FUNCTION hub.process_inbox(max integer DEFAULT 100)
RETURNS TABLE (processed integer, failed integer, unhandled integer)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m record;
	err text;
BEGIN
	IF max IS NULL OR max < 1 THEN
		RAISE EXCEPTION 'max must be at least 1' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	processed := 0;
	failed := 0;
	unhandled := 0;
	FOR m IN SELECT * FROM hub._inbox_claim(max) LOOP
		IF m.handler IS NULL THEN
			PERFORM hub._inbox_settle(m.inbox_id, 'unhandled');
			unhandled := unhandled + 1;
			CONTINUE;
		END IF;
		err := NULL;
		BEGIN
			-- its own subtransaction: the handler's writes are rolled back if it
			-- fails; it runs as its owner, within the time limit
			PERFORM hub._run_handler(m.handler, m.payload, m.message_type);
		EXCEPTION WHEN OTHERS THEN
			err := SQLSTATE || ': ' || SQLERRM;
		END;
		IF err IS NULL THEN
			PERFORM hub._inbox_settle(m.inbox_id, 'done');
			processed := processed + 1;
		ELSE
			PERFORM hub._inbox_settle(m.inbox_id, 'failed', err, m.max_attempts, m.retry_base);
			failed := failed + 1;
		END IF;
	END LOOP;
	RETURN NEXT;
END
$$;
COMMENT ON FUNCTION hub.process_inbox(integer) IS
'Run the handlers of up to max ready inbox messages, each in its own subtransaction, as the handler function''s owner and within logistics_hub.user_code_timeout: success -> done; an error -> retry_wait with exponential backoff, or dead after max_attempts, the error kept in last_error; no handler -> unhandled. Handlers run with search_path pg_catalog, pg_temp: qualify names or SET search_path on the handler. Returns the counts.';

-- ---------------------------------------------------------------- privileges

REVOKE EXECUTE ON FUNCTION
	hub._inbox_pattern_matches(text, text),
	hub.receive(text, text, text, jsonb, timestamptz, text, text),
	hub.register_handler(text, regproc, integer, interval),
	hub._inbox_claim(integer),
	hub._inbox_settle(bigint, text, text, integer, interval),
	hub.process_inbox(integer)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.receive(text, text, text, jsonb, timestamptz, text, text) TO hub_writer;
GRANT EXECUTE ON FUNCTION
	hub.register_handler(text, regproc, integer, interval),
	hub.process_inbox(integer),
	hub._inbox_claim(integer),
	hub._inbox_settle(bigint, text, text, integer, interval)
	TO hub_admin;
GRANT SELECT ON hub.inbox, hub.inbox_handlers TO hub_reader;

-- ---- 0.2.0: 70_operations.sql ----
/*
 * 70_operations.sql --- what an operator and an analyst look at: dead
 * letters, sync status per endpoint and subscription, the trace of one
 * correlation id or business key across outbox and inbox.  No view shows a
 * secret.  (Bulk replays and backfills are hub.replay_subscription(subscription_id, ...)
 * in 45_delivery.sql.)
 */

CREATE VIEW hub.dead_letters AS
SELECT d.delivery_id, e.name AS endpoint, d.subscription_id, o.event_id, o.event_type,
	   o.aggregate_id, o.correlation_id, d.attempts, d.last_error, d.updated_at AS dead_since,
	   coalesce(cardinality(d.batch_events), 1) AS events
FROM hub.deliveries d
JOIN hub.endpoints e USING (endpoint_id)
JOIN hub.outbox o USING (event_id)
WHERE d.state = 'dead';
COMMENT ON VIEW hub.dead_letters IS
'Deliveries that gave up (permanent 4xx or attempts exhausted), with the last error; replay with hub.replay_delivery or unblock the key with hub.skip_delivery. A batch delivery shows its smallest event and how many events it carries.';

CREATE VIEW hub.sync_status AS
SELECT e.name AS endpoint, e.kind, s.subscription_id, s.event_pattern,
	   e.enabled, e.paused, e.circuit_state,
	   -- (events: a batch or a lease group counts each of its events)
	   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'pending'), 0) AS pending,
	   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'in_flight'), 0) AS in_flight,
	   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'retry_wait'), 0) AS retrying,
	   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'dead'), 0) AS dead,
	   now() - min(o.published_at) FILTER (WHERE d.state IN ('pending', 'retry_wait', 'in_flight')) AS oldest_pending_age,
	   (SELECT max(a.at) FROM hub.attempts a JOIN hub.deliveries x USING (delivery_id)
		WHERE x.subscription_id = s.subscription_id AND a.outcome = 'delivered') AS last_success,
	   (SELECT round(avg((a.outcome = 'delivered')::int), 3) FROM hub.attempts a JOIN hub.deliveries x USING (delivery_id)
		WHERE x.subscription_id = s.subscription_id AND a.at > now() - interval '1 hour'
			AND a.outcome IN ('delivered', 'retry', 'dead')) AS success_rate_1h
FROM hub.subscriptions s
JOIN hub.endpoints e USING (endpoint_id)
LEFT JOIN hub.deliveries d ON d.subscription_id = s.subscription_id
	AND d.state NOT IN ('delivered', 'skipped')
LEFT JOIN hub.outbox o ON o.event_id = d.event_id
GROUP BY e.endpoint_id, s.subscription_id;
COMMENT ON VIEW hub.sync_status IS
'Per endpoint and subscription: pending, in flight, retrying and dead events (a batch or lease group counts each of its events), the age of the oldest undelivered event, the last success, the success rate of attempts over the last hour, and the circuit state.';

/*
 * trace --- the timeline of one correlation id, or of one business key
 * (aggregate), or both (rows matching either), across the outbox, the
 * deliveries and their attempts, and the inbox.  Correlation ids are
 * indexed on both sides; a business key is indexed in the inbox only: on
 * the outbox it is a scan, since an index on outbox.aggregate_id would be
 * paid by every publish.  Rows come in time order; rows at the same time
 * (the events of one transaction share their published_at) in publishing
 * order (hub.outbox.seq; inbox messages by inbox_id), then by what
 * happened.
 */
CREATE FUNCTION hub.trace(correlation_id text DEFAULT NULL, aggregate text DEFAULT NULL)
RETURNS TABLE (at timestamptz, what text, event_id uuid, event_type text, aggregate_id text,
			   endpoint text, source text, message_id text, detail text)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
	IF trace.correlation_id IS NULL AND trace.aggregate IS NULL THEN
		RAISE EXCEPTION 'a trace needs a correlation id or an aggregate id'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Call hub.trace(''<correlation id>'') or hub.trace(aggregate => ''<business key>'').';
	END IF;
	RETURN QUERY
	WITH ev AS (
		SELECT o.event_id FROM hub.outbox o WHERE o.correlation_id = trace.correlation_id
		UNION
		SELECT o.event_id FROM hub.outbox o WHERE o.aggregate_id = trace.aggregate
	), o AS (
		SELECT o.* FROM hub.outbox o WHERE o.event_id IN (SELECT ev.event_id FROM ev)
	), inb AS (
		SELECT i.inbox_id FROM hub.inbox i WHERE i.correlation_id = trace.correlation_id
		UNION
		SELECT i.inbox_id FROM hub.inbox i WHERE i.aggregate_id = trace.aggregate
	), i AS (
		SELECT i.* FROM hub.inbox i WHERE i.inbox_id IN (SELECT inb.inbox_id FROM inb)
	), dl AS (
		-- the deliveries of these events: their own, and the batches they
		-- are in (a scan of the batch deliveries: they have no index by event)
		SELECT o.event_id, d.delivery_id, d.endpoint_id, d.state, d.updated_at, d.last_error
		FROM o JOIN hub.deliveries d ON d.event_id = o.event_id
		UNION ALL
		SELECT o.event_id, d.delivery_id, d.endpoint_id, d.state, d.updated_at, d.last_error
		FROM o JOIN hub.deliveries d ON d.batch_events IS NOT NULL AND o.event_id = ANY (d.batch_events)
			AND d.event_id <> o.event_id
	)
	SELECT t.at, t.what, t.event_id, t.event_type, t.aggregate_id, t.endpoint, t.source, t.message_id, t.detail
	FROM (
	SELECT o.published_at AS at, 'published' AS what, o.event_id, o.event_type, o.aggregate_id,
		   NULL::text AS endpoint, NULL::text AS source, NULL::text AS message_id, o.payload::text AS detail,
		   o.seq AS ord
	FROM o
	UNION ALL
	SELECT a.at, 'attempt ' || a.attempt || ': ' || a.outcome, o.event_id, o.event_type, o.aggregate_id, e.name,
		   NULL, NULL, concat_ws(' ', a.http_status, a.error, a.latency_ms || ' ms'), o.seq
	FROM o
	JOIN dl d ON d.event_id = o.event_id
	JOIN hub.endpoints e ON e.endpoint_id = d.endpoint_id
	-- (an attempt of a lease group sent one of its events: that one's)
	JOIN hub.attempts a ON a.delivery_id = d.delivery_id AND (a.group_event_id IS NULL OR a.group_event_id = o.event_id)
	UNION ALL
	SELECT d.updated_at, 'delivery ' || d.state, o.event_id, o.event_type, o.aggregate_id, e.name,
		   NULL, NULL, d.last_error, o.seq
	FROM o
	JOIN dl d ON d.event_id = o.event_id
	JOIN hub.endpoints e ON e.endpoint_id = d.endpoint_id
	UNION ALL
	SELECT i.received_at, 'received', NULL::uuid, i.message_type, i.aggregate_id, NULL, i.source, i.message_id,
		   i.payload::text || CASE WHEN i.duplicate_count > 0 THEN ' (' || i.duplicate_count || ' duplicates)' ELSE '' END,
		   i.inbox_id
	FROM i
	UNION ALL
	SELECT coalesce(i.processed_at, i.last_duplicate_at, i.received_at), 'inbox ' || i.state, NULL::uuid,
		   i.message_type, i.aggregate_id, NULL, i.source, i.message_id,
		   concat_ws(' ', CASE WHEN i.attempts > 0 THEN i.attempts || ' failed attempts:' END, i.last_error),
		   i.inbox_id
	FROM i
	WHERE i.state <> 'new'
	) t
	ORDER BY t.at, t.ord, t.what;
END
$$;
COMMENT ON FUNCTION hub.trace(text, text) IS
'Timeline of one correlation id or one business key (aggregate => ...) across the outbox, its deliveries and every attempt, and the inbox (messages received with that correlation id or aggregate id, and their processing), in time order and, at the same time, in publishing order (the events of one transaction share their time). 22023 when neither is given.';

REVOKE EXECUTE ON FUNCTION hub.trace(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.trace(text, text) TO hub_reader;
GRANT SELECT ON hub.dead_letters, hub.sync_status TO hub_reader;

-- ---- 0.2.0: 80_retention.sql ----
/*
 * 80_retention.sql --- removing what is old and finished, without bloat:
 * hub.run_retention(), which dispatcher 0 calls every
 * logistics_hub.retention_interval seconds (or you call from a scheduler).
 *
 * What is removed:
 *   - an event published more than logistics_hub.retention_period ago whose
 *     every delivery is finished: delivered or skipped, or dead for more
 *     than logistics_hub.dead_retention_period (dead deliveries are kept
 *     longer so they can still be replayed), with those deliveries and
 *     their attempts;
 *   - attempts older than retention_period, except those of a delivery
 *     that is still open (pending, in_flight, retry_wait) or dead within
 *     the dead period, which are kept with their delivery.
 *   - inbox messages past the deduplication window: a done one received,
 *     processed and last sent again (a duplicate) longer than
 *     logistics_hub.inbox_retention_period ago; a dead or unhandled one
 *     the same past dead_retention_period (it may still be retried).  A
 *     message sent again after its row went is accepted as new.
 * Never removed: an event with an open delivery, a dead one within the
 * dead period, or one not routed yet; an inbox message not processed yet
 * (new, retry_wait).
 *
 * How, and why it does not bloat:
 *   - hub.attempts (the largest table: one row or more per delivery, never
 *     updated) is partitioned by UTC day.  Each run creates the next days'
 *     partitions and removes each day older than retention_period as a
 *     whole: DETACH, copy out the few attempts still kept (they go to the
 *     default partition), DROP.  No dead tuple, no vacuum debt, no WAL per
 *     row.  The DDL waits at most lock_timeout 2 s for its brief lock and
 *     is retried by the next run otherwise.
 *   - hub.outbox and hub.deliveries are removed by DELETE in batches of
 *     10,000, oldest first, at most logistics_hub.retention_max_events a
 *     call (one transaction; dispatcher 0 runs it between deliveries).  Partitioning the outbox would add partition
 *     routing to every publish (the hot path) and split its primary key;
 *     the DELETE instead takes only the left end of the xid-led primary
 *     key.  The freed heap space is reused by new rows after autovacuum
 *     (the outbox is insert-only: its pages fill and empty in order), and
 *     btree pages emptied at the left end are deleted and recycled by
 *     vacuum, so at a steady rate the tables hold the retention window plus
 *     at most one run's worth of removed rows: their size is bounded, not
 *     growing.  Finding the batch costs no index on published_at (which
 *     would cost every publish): each run records a mark (now, the xmin of
 *     its snapshot) in hub._retention_marks; every transaction below the
 *     xmin of a mark taken before the cutoff had ended, and so had
 *     published, before it, so the candidates are exactly the primary key
 *     range below the event id floor of that xmin (and below the routing
 *     watermark: only routed events are candidates).
 */

CREATE TABLE hub._retention_marks (
	at			timestamptz PRIMARY KEY,
	snapshot_xmin	xid8 NOT NULL,
	-- the largest inbox_id by then: every inbox row at or below it had been
	-- inserted before at (an identity value is taken as the row is written)
	inbox_upto	bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE hub._retention_marks IS
'API: Private. One row per retention run: every transaction with an xid below snapshot_xmin had ended (so had published its events) by at, and every inbox row up to inbox_upto had been received.';
INSERT INTO hub._retention_marks (at, snapshot_xmin) VALUES (now(), pg_snapshot_xmin(pg_current_snapshot()));

/*
 * _retention_setting --- a retention period setting (seconds) as an
 * interval; the library is loaded first, so the setting is the real one.
 */
CREATE FUNCTION hub._retention_setting(name text) RETURNS interval
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT make_interval(secs => s.setting::float8)
	FROM pg_settings s
	WHERE hub._retention_active() IS NOT NULL AND s.name = _retention_setting.name
$$;
COMMENT ON FUNCTION hub._retention_setting(text) IS
'API: Private. logistics_hub.retention_period or dead_retention_period as an interval.';

/*
 * _attempts_partition --- create the partition of hub.attempts for one UTC
 * day, as a member of the extension, unless it exists; false when it does not exist and cannot be made
 * because the default partition already holds rows of that day (they stay
 * there and are pruned row by row).
 */
CREATE FUNCTION hub._attempts_partition(day date) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	part text := '_attempts_p' || to_char(day, 'YYYYMMDD');
	lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
	hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
	IF to_regclass('hub.' || part) IS NOT NULL THEN
		RETURN true;
	END IF;
	IF EXISTS (SELECT 1 FROM hub._attempts_default a WHERE a.at >= lo AND a.at < hi) THEN
		RETURN false;
	END IF;
	EXECUTE format('CREATE TABLE hub.%I PARTITION OF hub.attempts FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
	-- a member like hub.attempts itself, which DROP EXTENSION removes;
	-- pg_dump dumps its rows through hub._attempts_default (85_backup.sql)
	EXECUTE format('ALTER EXTENSION logistics_hub ADD TABLE hub.%I', part);
	EXECUTE format('COMMENT ON TABLE hub.%I IS %L', part,
				   'API: Private. Attempts of ' || to_char(day, 'YYYY-MM-DD') || ' (UTC); dropped whole by hub.run_retention().');
	RETURN true;
END
$$;
COMMENT ON FUNCTION hub._attempts_partition(date) IS
'API: Private. Create the hub.attempts partition of one UTC day if missing (false: the default partition holds rows of that day).';

/*
 * _attempts_drop_partition --- remove one day's partition of hub.attempts:
 * detach it, move the attempts still kept (of deliveries that are open, or
 * dead since after dead_cutoff) into the default partition with their ids,
 * drop it.  Returns the number of attempts kept.
 */
CREATE FUNCTION hub._attempts_drop_partition(part regclass, dead_cutoff timestamptz) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	kept bigint;
BEGIN
	EXECUTE format('ALTER TABLE hub.attempts DETACH PARTITION %s', part);
	EXECUTE format($q$
		INSERT INTO hub.attempts (attempt_id, delivery_id, attempt, at, worker, lease_token, http_status,
								  error, latency_ms, response_excerpt, outcome)
		OVERRIDING SYSTEM VALUE
		SELECT a.attempt_id, a.delivery_id, a.attempt, a.at, a.worker, a.lease_token, a.http_status,
			   a.error, a.latency_ms, a.response_excerpt, a.outcome
		FROM %s a JOIN hub.deliveries d ON d.delivery_id = a.delivery_id
		WHERE d.state IN ('pending', 'in_flight', 'retry_wait') OR (d.state = 'dead' AND d.updated_at >= $1)$q$, part)
		USING dead_cutoff;
	GET DIAGNOSTICS kept = ROW_COUNT;
	EXECUTE format('ALTER EXTENSION logistics_hub DROP TABLE %s', part);
	EXECUTE format('DROP TABLE %s', part);
	RETURN kept;
END
$$;
COMMENT ON FUNCTION hub._attempts_drop_partition(regclass, timestamptz) IS
'API: Private. Detach and drop one day of hub.attempts, keeping the attempts of open and recently dead deliveries.';

CREATE FUNCTION hub.run_retention(retention interval DEFAULT NULL, dead_retention interval DEFAULT NULL,
		max_events integer DEFAULT NULL, inbox_retention interval DEFAULT NULL,
		OUT events_removed bigint, OUT deliveries_removed bigint, OUT attempts_removed bigint,
		OUT partitions_dropped integer, OUT partitions_created integer, OUT inbox_removed bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	keep interval := coalesce(retention, hub._retention_setting('logistics_hub.retention_period'));
	keep_dead interval := coalesce(dead_retention, hub._retention_setting('logistics_hub.dead_retention_period'));
	keep_inbox interval := coalesce(inbox_retention, hub._retention_setting('logistics_hub.inbox_retention_period'));
	inbox_cutoff timestamptz;
	inbox_done_upto bigint;
	inbox_dead_upto bigint;
	inbox_last bigint;
	inbox_ids bigint[];
	cutoff timestamptz;
	dead_cutoff timestamptz;
	bound xid8;
	batch_floor uuid;
	ids uuid[];
	last_id uuid;
	p record;
	nd bigint;
	na bigint;
	old_lock_timeout text := current_setting('lock_timeout');
BEGIN
	IF keep < interval '0' OR keep_dead < interval '0' OR keep_inbox < interval '0' THEN
		RAISE EXCEPTION 'invalid retention period: "%"',
			CASE WHEN keep < interval '0' THEN keep WHEN keep_dead < interval '0' THEN keep_dead ELSE keep_inbox END
			USING ERRCODE = 'invalid_parameter_value', HINT = 'A retention period must not be negative.';
	END IF;
	PERFORM hub._retention_active();	-- loads the library: the settings are the real ones
	max_events := coalesce(max_events, current_setting('logistics_hub.retention_max_events')::integer);
	IF max_events < 0 THEN
		RAISE EXCEPTION 'invalid max_events: %', max_events
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass 0 or more events to remove in this run.';
	END IF;
	cutoff := now() - keep;
	dead_cutoff := now() - keep_dead;
	inbox_cutoff := now() - keep_inbox;
	events_removed := 0;
	inbox_removed := 0;
	deliveries_removed := 0;
	attempts_removed := 0;
	partitions_dropped := 0;
	partitions_created := 0;

	-- one run at a time (the dispatcher's and an operator's would race on
	-- the same partitions); a second one returns at once, removing nothing
	IF NOT pg_try_advisory_xact_lock(hashtext('logistics_hub'), hashtext('run_retention')) THEN
		RAISE NOTICE 'retention is already running in another session';
		RETURN;
	END IF;

	-- open the door for this function only (closed again below; an error
	-- rolls the setting back with the transaction or subtransaction)
	PERFORM set_config('logistics_hub._retention', 'on', true);
	-- (no mark when nothing was published or received since the newest one:
	-- it would bound nothing more, and an idle hub's retention runs then
	-- take no transaction id and write no WAL; the newest mark's own
	-- transaction id moves the xmin, so that cannot be the test)
	INSERT INTO hub._retention_marks (at, snapshot_xmin, inbox_upto)
	SELECT now(), x.snapshot_xmin, x.inbox_upto
	FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS snapshot_xmin,
				 coalesce((SELECT max(i.inbox_id) FROM hub.inbox i), 0) AS inbox_upto) x
	WHERE NOT EXISTS (SELECT 1
					  FROM (SELECT m.snapshot_xmin, m.inbox_upto FROM hub._retention_marks m
							ORDER BY m.at DESC LIMIT 1) l
					  WHERE l.inbox_upto = x.inbox_upto
						AND (SELECT o.event_id FROM hub.outbox o
							 WHERE o.event_id >= hub._event_id_floor(l.snapshot_xmin)
							 ORDER BY o.event_id LIMIT 1) IS NULL)
	ON CONFLICT (at) DO NOTHING;

	-- attempts: whole days, each DDL waiting at most 2 s for its lock
	PERFORM set_config('lock_timeout', '2s', true);
	FOR p IN
		SELECT c.oid::regclass AS part,
			   (to_date(substr(c.relname, 12), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC' AS hi
		FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'hub.attempts'::regclass AND c.relname ~ '^_attempts_p[0-9]{8}$'
		ORDER BY c.relname
	LOOP
		CONTINUE WHEN p.hi > cutoff;
		BEGIN
			PERFORM hub._attempts_drop_partition(p.part, dead_cutoff);
			partitions_dropped := partitions_dropped + 1;
		EXCEPTION WHEN lock_not_available THEN
			RAISE NOTICE 'retention: % is busy, left for the next run', p.part;
		END;
	END LOOP;
	FOR p IN SELECT d::date AS day FROM generate_series((now() AT TIME ZONE 'UTC')::date,
														(now() AT TIME ZONE 'UTC')::date + 2, interval '1 day') d
	LOOP
		CONTINUE WHEN to_regclass('hub._attempts_p' || to_char(p.day, 'YYYYMMDD')) IS NOT NULL;
		BEGIN
			IF hub._attempts_partition(p.day) THEN
				partitions_created := partitions_created + 1;
			END IF;
		EXCEPTION WHEN lock_not_available THEN
			RAISE NOTICE 'retention: hub.attempts is busy, partition of % left for the next run', p.day;
		END;
	END LOOP;
	PERFORM set_config('lock_timeout', old_lock_timeout, true);
	-- the overflow partition, row by row (normally nearly empty)
	DELETE FROM hub._attempts_default a
	WHERE a.at < cutoff
		AND NOT EXISTS (SELECT 1 FROM hub.deliveries d
						WHERE d.delivery_id = a.delivery_id
							AND (d.state IN ('pending', 'in_flight', 'retry_wait')
								 OR (d.state = 'dead' AND d.updated_at >= dead_cutoff)));
	GET DIAGNOSTICS na = ROW_COUNT;
	attempts_removed := attempts_removed + na;

	-- events: a primary key range below the xmin of a mark older than the
	-- cutoff and below the routing watermark
	SELECT least(m.snapshot_xmin, r.watermark) INTO bound
	FROM hub._router_state r,
		 LATERAL (SELECT m.snapshot_xmin FROM hub._retention_marks m WHERE m.at <= cutoff ORDER BY m.at DESC LIMIT 1) m;
	-- and below the smallest event of a batch delivery still kept: the
	-- other events of a batch have no delivery of their own to look at
	SELECT d.event_id INTO batch_floor
	FROM hub.deliveries d
	WHERE d.batch_events IS NOT NULL AND d.state NOT IN ('delivered', 'skipped')
		AND NOT (d.state = 'dead' AND d.updated_at < dead_cutoff)
	ORDER BY d.event_id LIMIT 1;
	WHILE bound IS NOT NULL AND events_removed < max_events LOOP
		-- each batch starts after the last candidate of the one before, so
		-- events kept (open or recently dead) are read once a run
		SELECT array_agg(x.event_id ORDER BY x.event_id) INTO ids
		FROM (SELECT o.event_id FROM hub.outbox o
			  WHERE o.event_id < hub._event_id_floor(bound) AND o.published_at < cutoff
				AND (batch_floor IS NULL OR o.event_id < batch_floor)
				AND o.event_id > coalesce(last_id, '00000000-0000-0000-0000-000000000000')
				AND NOT EXISTS (SELECT 1 FROM hub.deliveries d
								WHERE d.event_id = o.event_id
									AND NOT (d.state IN ('delivered', 'skipped')
											 OR (d.state = 'dead' AND d.updated_at < dead_cutoff)))
			  ORDER BY o.event_id
			  LIMIT least(10000, max_events - events_removed)) x;
		EXIT WHEN ids IS NULL;
		last_id := ids[array_upper(ids, 1)];
		-- the state is re-checked under the row lock: a delivery replayed
		-- meanwhile stays, and so does its event
		WITH d AS (
			DELETE FROM hub.deliveries d
			WHERE d.event_id = ANY (ids)
				AND (d.state IN ('delivered', 'skipped') OR (d.state = 'dead' AND d.updated_at < dead_cutoff))
			RETURNING d.delivery_id
		), a AS (
			DELETE FROM hub.attempts a USING d WHERE a.delivery_id = d.delivery_id
			RETURNING 1
		)
		SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM a) INTO nd, na;
		deliveries_removed := deliveries_removed + nd;
		attempts_removed := attempts_removed + na;
		DELETE FROM hub.outbox o
		WHERE o.event_id = ANY (ids)
			AND NOT EXISTS (SELECT 1 FROM hub.deliveries d WHERE d.event_id = o.event_id);
		GET DIAGNOSTICS nd = ROW_COUNT;
		events_removed := events_removed + nd;
	END LOOP;

	-- inbox: finished messages past their period, a primary-key range up
	-- to the inbox id recorded by the newest mark before each cutoff (so
	-- received before it); each batch starts after the last candidate of
	-- the one before, so messages kept (not processed yet, sent again
	-- lately) are read once a run
	SELECT max(m.inbox_upto) INTO inbox_done_upto FROM hub._retention_marks m WHERE m.at <= inbox_cutoff;
	SELECT max(m.inbox_upto) INTO inbox_dead_upto FROM hub._retention_marks m WHERE m.at <= dead_cutoff;
	WHILE greatest(inbox_done_upto, inbox_dead_upto) > 0 AND inbox_removed < max_events LOOP
		SELECT array_agg(x.inbox_id ORDER BY x.inbox_id) INTO inbox_ids
		FROM (SELECT i.inbox_id FROM hub.inbox i
			  WHERE i.inbox_id <= greatest(inbox_done_upto, inbox_dead_upto)
				AND i.inbox_id > coalesce(inbox_last, 0)
			  ORDER BY i.inbox_id
			  LIMIT least(10000, max_events - inbox_removed)) x;
		EXIT WHEN inbox_ids IS NULL;
		inbox_last := inbox_ids[array_upper(inbox_ids, 1)];
		-- the state and times are checked under the row lock: a message
		-- sent again or retried meanwhile stays
		DELETE FROM hub.inbox i
		WHERE i.inbox_id = ANY (inbox_ids)
			AND CASE WHEN i.state = 'done'
					 THEN i.inbox_id <= inbox_done_upto AND i.processed_at < inbox_cutoff
						  AND (i.last_duplicate_at IS NULL OR i.last_duplicate_at < inbox_cutoff)
					 WHEN i.state IN ('dead', 'unhandled')
					 THEN i.inbox_id <= inbox_dead_upto AND i.processed_at < dead_cutoff
						  AND (i.last_duplicate_at IS NULL OR i.last_duplicate_at < dead_cutoff)
					 ELSE false END;
		GET DIAGNOSTICS nd = ROW_COUNT;
		inbox_removed := inbox_removed + nd;
	END LOOP;

	-- marks: keep those a longer period (the settings') may still need
	DELETE FROM hub._retention_marks m
	WHERE m.at < now() - greatest(keep, keep_dead, keep_inbox,
								  hub._retention_setting('logistics_hub.retention_period'),
								  hub._retention_setting('logistics_hub.dead_retention_period'),
								  hub._retention_setting('logistics_hub.inbox_retention_period'))
				 - interval '1 day';
	PERFORM set_config('logistics_hub._retention', 'off', true);
END
$$;
COMMENT ON FUNCTION hub.run_retention(interval, interval, integer, interval) IS
'Remove events older than retention (default logistics_hub.retention_period) whose every delivery is delivered, skipped, or dead for longer than dead_retention (default logistics_hub.dead_retention_period), with their deliveries and attempts, at most max_events (default logistics_hub.retention_max_events) events a run; drop whole days of attempts older than retention (keeping those of open or recently dead deliveries) and create the coming days'' partitions; remove inbox messages processed and last sent again longer than inbox_retention ago (default logistics_hub.inbox_retention_period; dead and unhandled ones after dead_retention), at most max_events of them. Never removes an undelivered event or an inbox message not processed yet. Returns what it removed (attempts of dropped day partitions are counted in partitions_dropped, not row by row).';

REVOKE EXECUTE ON FUNCTION hub.run_retention(interval, interval, integer, interval), hub._retention_setting(text),
	hub._attempts_partition(date), hub._attempts_drop_partition(regclass, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.run_retention(interval, interval, integer, interval) TO hub_admin;

-- ---- 0.2.0: 85_backup.sql ----
/*
 * 85_backup.sql --- a logical backup keeps the whole hub: pg_dump dumps the
 * rows of the queue, the truth and the audit, and a restore into a new
 * database takes them back as they were.
 *
 * Every table of the hub is registered with pg_extension_config_dump (the
 * configuration ones where they are made), with its identity sequence, so
 * that a dump holds: events (hub.outbox) and their deliveries, attempts,
 * the inbox (its deduplication memory), entity state with its history and
 * conflicts, the operator audit, the events routing could not take, the
 * routing state and the retention marks.  README, "Backup and restore".
 *
 * Three things make the restore work:
 *
 *   - hub.attempts is partitioned, and pg_dump dumps no rows of a
 *     partitioned table; its day partitions are made by hub.run_retention()
 *     as members of the extension, whose rows pg_dump could not load (a
 *     member's table is never in a dump) and which pg_extension_config_dump
 *     cannot register after CREATE EXTENSION.  So the default partition is
 *     registered with a condition that pg_dump appends to its SELECT of the
 *     partition ("FROM hub._attempts_default <condition>", for COPY and for
 *     --inserts alike): it adds every attempt of every partition.  They are
 *     restored into the default partition, which takes any day; retention
 *     prunes them there row by row, and makes day partitions for the days
 *     it holds no attempt of.  The column list must follow the table's (an
 *     upgrade that adds a column calls pg_extension_config_dump again).
 *
 *   - The contract trigger of hub.outbox refuses an event id not made by
 *     the inserting transaction and stamps xid and published_at; a restored
 *     event has neither.  pg_dump writes the data of the tables in name
 *     order, so the row of hub._restore_marker comes before every queue
 *     table's; inserting it turns logistics_hub.restoring on for the
 *     session (superuser only, extension/outbox_guc.c), under which the
 *     trigger keeps restored events as they are.  The immutability
 *     triggers never fire on a restore (it only inserts) and are unchanged.
 *
 *   - Routing follows transaction ids (40_outbox.sql), and those of the
 *     restoring cluster are not the dumped one's.  The restored routing
 *     state (hub._router_state) replaces the one CREATE EXTENSION made,
 *     through hub._router_state_restored: restored events the old state
 *     counts as routed stay routed, the others are routed by the next pass
 *     (their transactions are below every transaction of the new database,
 *     so routing sees them ended).  That holds only when no transaction
 *     the restoring cluster still runs or will run is one the restored
 *     state counts as ended: true in the cluster the dump came from, and in
 *     any other whose transaction ids are ahead; otherwise the row is
 *     refused (55000) and the README says how to move the cluster ahead.
 */

-- ---------------------------------------------------------------- the marker

CREATE TABLE hub._restore_marker (
	one			boolean PRIMARY KEY DEFAULT true CHECK (one)
);
COMMENT ON TABLE hub._restore_marker IS
'API: Private. One row, in every dump: restoring it turns logistics_hub.restoring on for the restoring session (hub._restore_begin), before any queue table is loaded.';
INSERT INTO hub._restore_marker VALUES (true);
SELECT pg_catalog.pg_extension_config_dump('hub._restore_marker', '');

CREATE FUNCTION hub._restore_begin() RETURNS trigger
	AS 'MODULE_PATHNAME', 'hub_restore_begin' LANGUAGE C;
COMMENT ON FUNCTION hub._restore_begin() IS
'API: Private. Trigger on hub._restore_marker: the restore of a dump (a superuser) turns logistics_hub.restoring on for its session; the row is not stored.';
CREATE TRIGGER restore_begin BEFORE INSERT ON hub._restore_marker
	FOR EACH ROW EXECUTE FUNCTION hub._restore_begin();

-- ---------------------------------------------------------------- routing state

/*
 * _router_state_restored --- BEFORE INSERT on hub._router_state: the one
 * row is made by CREATE EXTENSION, so a second one comes from a restore.
 * It replaces the row in place when every transaction that state had not
 * seen end is one the restored state has not seen end either (below its
 * xmax and in its in-progress list, or at or above its xmax); else 55000.
 */
CREATE FUNCTION hub._router_state_restored() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	here pg_snapshot;
BEGIN
	SELECT r.snapshot INTO here FROM hub._router_state r FOR UPDATE;
	IF NOT FOUND THEN
		RETURN NEW;
	END IF;
	IF pg_snapshot_xmax(NEW.snapshot) > pg_snapshot_xmax(here)
		OR EXISTS (SELECT 1 FROM pg_snapshot_xip(here) x
				   WHERE x < pg_snapshot_xmax(NEW.snapshot)
					   AND x NOT IN (SELECT pg_snapshot_xip(NEW.snapshot))) THEN
		RAISE EXCEPTION 'the routing state of the dump is ahead of this cluster''s transaction ids'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('The dump''s routing snapshot is %s; this cluster''s, when the extension was created, is %s.',
								  NEW.snapshot, here),
				  HINT = 'Restore into the cluster the dump came from, or into a new cluster whose transaction ids are ahead: stopped, before the restore, give it a higher epoch with pg_resetwal -e (README, "Backup and restore").';
	END IF;
	UPDATE hub._router_state SET watermark = NEW.watermark, snapshot = NEW.snapshot;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION hub._router_state_restored() IS
'API: Private. Trigger on hub._router_state: a restored routing state replaces the one CREATE EXTENSION made, when this cluster''s transaction ids are not behind it (55000 otherwise).';
CREATE TRIGGER router_state_restored BEFORE INSERT ON hub._router_state
	FOR EACH ROW EXECUTE FUNCTION hub._router_state_restored();
REVOKE EXECUTE ON FUNCTION hub._restore_begin(), hub._router_state_restored() FROM PUBLIC;

-- ---------------------------------------------------------------- what is dumped

SELECT pg_catalog.pg_extension_config_dump('hub.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('hub.deliveries', '');
SELECT pg_catalog.pg_extension_config_dump('hub._attempts_default',
	'WHERE false UNION ALL SELECT attempt_id, delivery_id, attempt, at, worker, lease_token, http_status, error, '
	'latency_ms, response_excerpt, outcome, group_event_id FROM hub.attempts');
SELECT pg_catalog.pg_extension_config_dump('hub.operator_audit', '');
SELECT pg_catalog.pg_extension_config_dump('hub.unroutable_events', '');
SELECT pg_catalog.pg_extension_config_dump('hub._router_state', '');
SELECT pg_catalog.pg_extension_config_dump('hub._retention_marks', '');
SELECT pg_catalog.pg_extension_config_dump('hub.inbox', '');
SELECT pg_catalog.pg_extension_config_dump('hub.entity_state', '');
SELECT pg_catalog.pg_extension_config_dump('hub.entity_system_state', '');
SELECT pg_catalog.pg_extension_config_dump('hub.status_history', '');
SELECT pg_catalog.pg_extension_config_dump('hub.status_conflicts', '');
-- the sequences, so that ids and fencing tokens go on after the restored ones
-- (one call a statement: each updates the extension's catalogue row)
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hub.outbox', 'seq')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hub.deliveries', 'delivery_id')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hub.attempts', 'attempt_id')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hub.operator_audit', 'audit_id')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hub.inbox', 'inbox_id')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hub.status_history', 'history_id')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hub.status_conflicts', 'conflict_id')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump('hub._lease_token_seq', '');

-- ---- 0.2.0: 90_privileges.sql ----
/*
 * 90_privileges.sql --- privileges that span the fragments before it (the
 * privilege matrix is tested in test/pgtap/privileges.sql).
 *
 * hub_admin changes an endpoint's settings with a plain UPDATE (its URL is
 * checked against the egress policy by the endpoint_check trigger, which
 * runs with the updater's rights and so needs hub._egress_check); pausing
 * stays with the audited hub.pause_endpoint / hub.resume_endpoint, and
 * the circuit breaker's columns with the delivery functions.  Secrets stay
 * readable, not writable, by hub_admin (hub._endpoint_secrets).
 */
GRANT UPDATE (url, kind, enabled, timeout_ms, max_concurrency, rate_limit, allow_redirects, auth_kind,
			  api_key_header, oauth2_token_url, headers, circuit_failure_threshold, circuit_cooloff, spread)
	ON hub.endpoints TO hub_admin;
GRANT EXECUTE ON FUNCTION hub._egress_check(text) TO hub_admin;

-- the library version is no business of PUBLIC; every other function left
-- with EXECUTE for PUBLIC is a pure function of its arguments (the
-- identifier types' I/O, operators and checks)
REVOKE EXECUTE ON FUNCTION hub.libcurl_version() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.libcurl_version() TO hub_reader, hub_writer;

/*
 * hub_worker: what the dispatchers connect as (logistics_hub.worker_role).
 * Only the queue: the functions a dispatcher calls and the tables those
 * functions read and write as their caller; fail_delivery, defer_delivery,
 * _route_events, _pause_unsealed and run_retention are SECURITY DEFINER and
 * need no table grant.  Of an endpoint it changes only the circuit
 * breaker's columns; it publishes nothing, changes no configuration and
 * owns nothing.
 */
GRANT USAGE ON SCHEMA hub TO hub_worker;
GRANT SELECT ON hub.outbox, hub.event_types, hub.subscriptions, hub._endpoint_secrets TO hub_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON hub.deliveries TO hub_worker;
GRANT SELECT, UPDATE (circuit_state, circuit_opened_at, consecutive_failures, circuit_failed_keys,
					   circuit_probe_until)
	ON hub.endpoints TO hub_worker;
GRANT SELECT, INSERT ON hub.attempts TO hub_worker;
GRANT USAGE ON SEQUENCE hub._lease_token_seq TO hub_worker;
GRANT EXECUTE ON FUNCTION
	hub._route_events(),
	hub._serves(integer, integer, integer, integer),
	hub._payload_size(jsonb),
	hub._serves_share(integer, integer, integer, integer),
	hub._claim(integer, text, interval, integer, integer, integer, integer, integer, integer[], integer[], text, bigint),
	hub._claim_transformed(integer, text, interval, integer, integer, integer, integer, integer, integer[], integer[], text, bigint),
	hub._claim_probes(integer, integer, text, interval, integer, integer, text),
	hub._transform(regproc, jsonb),
	hub._dispatch_endpoints(integer[], integer, integer),
	hub._complete_many(bigint[], bigint[], integer[], integer[], text[], text, uuid[]),
	hub._split_group(bigint, bigint, uuid[], uuid[]),
	hub._release_leases(text),
	hub.fail_delivery(bigint, bigint, integer, text, integer, text, interval, text, boolean),
	hub.defer_delivery(bigint, bigint, timestamptz),
	hub.event_body(text, uuid, text, text, timestamptz, text, jsonb, text),
	hub.run_retention(interval, interval, integer, interval),
	hub._pause_unsealed(integer, text),
	hub._route_events_each(),
	hub._ready_endpoints(integer, integer),
	hub._pause_by_worker(integer, text, text)
	TO hub_worker;
