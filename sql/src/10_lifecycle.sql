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
