/*
 * 65_flow.sql --- from inbound records to one version of truth to
 * canonical events, declared in SQL rather than written as handlers.
 *
 *   hub.map_inbox        a message pattern -> lifecycle, system and the
 *                        jsonpaths of key, code, time, qualifier, partner,
 *                        parent and children in the payload; hub.process_inbox
 *                        applies a matching message with hub.apply_status's
 *                        machinery (hub._apply_canonical) in the message's
 *                        own subtransaction, records hub.entity_links, and
 *                        then runs the message's handler, if it has one
 *                        (mapping first, then handler, one subtransaction:
 *                        both are kept or neither); the plain reports of a
 *                        batch (created or advanced keys) are applied
 *                        together, set-based, by hub._inbox_apply_batch,
 *                        with the same result
 *   hub.state_events     which canonical event a state (or an overlay raised
 *                        or cleared) publishes: hub._apply_canonical calls
 *                        hub._state_event in the same transaction, once per
 *                        move, so a duplicate, stale, not-owner or
 *                        informational report publishes nothing
 *   readiness rules      an event once per key when the key and every child
 *                        linked to it are at or past a state, never while an
 *                        open exception or an overlay sits on one of them
 *   hub.exceptions       what needs a person rather than a retry: an unknown
 *                        status code, a conflict, a report from a system that
 *                        does not own the state, a report on a terminal key,
 *                        an event whose contract the record cannot satisfy;
 *                        the message is done, one open row per (kind, key,
 *                        code) counts the reports
 *
 * A malformed message (a payload that is not an object, a key, code or
 * time path that does not resolve, a time that cannot be read) stays a
 * technical failure: the step raises, hub.process_inbox retries it and
 * finally marks it dead, as for a failing handler.
 */

-- ---------------------------------------------------------------- canonical event types

/*
 * The canonical events of the four lifecycles: the 0.2.0 catalogue has
 * some (order.created, shipment.delivered, ...); these are the rest.  Each
 * requires the key the hub always knows (<entity>_id); a state whose
 * 0.2.0 type requires more (order.released: warehouse) takes it from the
 * inbound record that moved the state.
 */
INSERT INTO hub.event_types (event_type, required_keys, description, builtin)
SELECT v.t, ARRAY[split_part(v.t, '.', 1) || '_id'] || v.extra, v.d, true
FROM (VALUES
	('order.picking', '{}'::text[], 'The warehouse started picking the order'),
	('order.in_transit', '{}', 'The order is moving with a carrier'),
	('order.out_for_delivery', '{}', 'The order is out for delivery'),
	('order.delivered', '{}', 'The order is delivered'),
	('order.closed', '{}', 'The order is closed (invoiced, complete)'),
	('order.exception', '{reason}', 'Something is wrong with the order (the exception overlay is raised)'),
	('order.exception_cleared', '{}', 'The order''s exception overlay is cleared'),
	('order.on_hold', '{reason}', 'The order is put on hold'),
	('order.hold_released', '{}', 'The order''s hold is released'),
	('shipment.planned', '{}', 'A shipment is planned'),
	('shipment.pickup_arrived', '{}', 'The carrier arrived at the pick-up location'),
	('shipment.out_for_delivery', '{}', 'The shipment is out for delivery'),
	('shipment.available_for_pickup', '{}', 'The shipment waits for the consignee at a pick-up point'),
	('shipment.return_to_sender', '{}', 'The shipment is on its way back to the shipper'),
	('shipment.returned', '{}', 'The shipment is back with the shipper'),
	('shipment.cancelled', '{}', 'The shipment is cancelled'),
	('shipment.exception_cleared', '{}', 'The shipment''s exception overlay is cleared'),
	('shipment.on_hold', '{reason}', 'The shipment is held'),
	('shipment.hold_released', '{}', 'The shipment''s hold is released'),
	('movement.planned', '{}', 'A stock movement is planned'),
	('movement.waiting_upstream', '{}', 'The movement waits for an earlier step'),
	('movement.awaiting_stock', '{}', 'The movement waits for stock'),
	('movement.partially_reserved', '{}', 'Part of the movement''s stock is reserved'),
	('movement.reserved', '{}', 'The movement''s stock is reserved'),
	('movement.in_progress', '{}', 'The movement is being carried out'),
	('movement.done', '{}', 'The movement is done'),
	('movement.cancelled', '{}', 'The movement is cancelled'),
	('movement.exception', '{reason}', 'Something is wrong with the movement'),
	('movement.exception_cleared', '{}', 'The movement''s exception overlay is cleared'),
	('movement.on_hold', '{reason}', 'The movement is held'),
	('movement.hold_released', '{}', 'The movement''s hold is released'),
	('return.requested', '{}', 'A return is requested'),
	('return.awaiting_item', '{}', 'The return waits for the item'),
	('return.in_transit_back', '{}', 'The returned item is on its way back'),
	('return.inspected', '{}', 'The returned item is inspected'),
	('return.closed', '{}', 'The return is closed'),
	('return.rejected', '{}', 'The return is rejected'),
	('return.cancelled', '{}', 'The return is cancelled'),
	('return.exception', '{reason}', 'Something is wrong with the return'),
	('return.exception_cleared', '{}', 'The return''s exception overlay is cleared'),
	('return.on_hold', '{reason}', 'The return is held'),
	('return.hold_released', '{}', 'The return''s hold is released')) v(t, extra, d);

-- ---------------------------------------------------------------- state events

CREATE TABLE hub.state_events (
	lifecycle	text NOT NULL CHECK (lifecycle IN ('order', 'shipment', 'movement', 'return')),
	state		text NOT NULL CHECK (hub.lifecycle_state_valid(lifecycle, state)
									 OR state IN ('exception', 'exception_cleared', 'on_hold', 'hold_released')),
	event_type	text NOT NULL REFERENCES hub.event_types ON UPDATE CASCADE,
	builtin		boolean NOT NULL DEFAULT false,
	PRIMARY KEY (lifecycle, state)
);
COMMENT ON TABLE hub.state_events IS
'Which canonical event a key publishes when its canonical state moves to a state (created, advanced or corrected), or when an overlay is raised or cleared (state exception, exception_cleared, on_hold, hold_released); published by hub.apply_status in the same transaction, once per move. A state without a row publishes nothing. Rows with builtin = true ship with the extension (not dumped by pg_dump).';
COMMENT ON COLUMN hub.state_events.state IS 'A state of the lifecycle, or one of the overlay changes exception, exception_cleared, on_hold, hold_released.';
COMMENT ON COLUMN hub.state_events.event_type IS 'The event type published (its contract in hub.event_types).';

INSERT INTO hub.state_events (lifecycle, state, event_type, builtin)
SELECT v.l, v.s, v.t, true FROM (VALUES
	('order', 'created', 'order.created'), ('order', 'released', 'order.released'),
	('order', 'allocated', 'order.allocated'), ('order', 'picking', 'order.picking'),
	('order', 'picked', 'order.picked'), ('order', 'packed', 'order.packed'),
	('order', 'shipped', 'order.shipped'), ('order', 'in_transit', 'order.in_transit'),
	('order', 'out_for_delivery', 'order.out_for_delivery'), ('order', 'delivered', 'order.delivered'),
	('order', 'closed', 'order.closed'), ('order', 'cancelled', 'order.cancelled'),
	('order', 'exception', 'order.exception'), ('order', 'exception_cleared', 'order.exception_cleared'),
	('order', 'on_hold', 'order.on_hold'), ('order', 'hold_released', 'order.hold_released'),
	('shipment', 'planned', 'shipment.planned'), ('shipment', 'label_created', 'shipment.label_created'),
	('shipment', 'pickup_arrived', 'shipment.pickup_arrived'), ('shipment', 'picked_up', 'shipment.dispatched'),
	('shipment', 'in_transit', 'shipment.in_transit'), ('shipment', 'out_for_delivery', 'shipment.out_for_delivery'),
	('shipment', 'available_for_pickup', 'shipment.available_for_pickup'),
	('shipment', 'delivered', 'shipment.delivered'), ('shipment', 'return_to_sender', 'shipment.return_to_sender'),
	('shipment', 'returned', 'shipment.returned'), ('shipment', 'cancelled', 'shipment.cancelled'),
	('shipment', 'exception', 'shipment.exception'), ('shipment', 'exception_cleared', 'shipment.exception_cleared'),
	('shipment', 'on_hold', 'shipment.on_hold'), ('shipment', 'hold_released', 'shipment.hold_released'),
	('movement', 'planned', 'movement.planned'), ('movement', 'waiting_upstream', 'movement.waiting_upstream'),
	('movement', 'awaiting_stock', 'movement.awaiting_stock'),
	('movement', 'partially_reserved', 'movement.partially_reserved'),
	('movement', 'reserved', 'movement.reserved'), ('movement', 'in_progress', 'movement.in_progress'),
	('movement', 'done', 'movement.done'), ('movement', 'cancelled', 'movement.cancelled'),
	('movement', 'exception', 'movement.exception'), ('movement', 'exception_cleared', 'movement.exception_cleared'),
	('movement', 'on_hold', 'movement.on_hold'), ('movement', 'hold_released', 'movement.hold_released'),
	('return', 'requested', 'return.requested'), ('return', 'authorized', 'return.authorized'),
	('return', 'awaiting_item', 'return.awaiting_item'), ('return', 'in_transit_back', 'return.in_transit_back'),
	('return', 'received', 'return.received'), ('return', 'inspected', 'return.inspected'),
	('return', 'resolved', 'return.resolved'), ('return', 'closed', 'return.closed'),
	('return', 'rejected', 'return.rejected'), ('return', 'cancelled', 'return.cancelled'),
	('return', 'exception', 'return.exception'), ('return', 'exception_cleared', 'return.exception_cleared'),
	('return', 'on_hold', 'return.on_hold'), ('return', 'hold_released', 'return.hold_released')) v(l, s, t);
SELECT pg_catalog.pg_extension_config_dump('hub.state_events', 'WHERE NOT builtin');

-- ---------------------------------------------------------------- exceptions

CREATE TABLE hub.exceptions (
	exception_id	bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	kind			text NOT NULL CHECK (kind IN ('unknown_code', 'conflict', 'not_owner', 'terminal',
												   'contract_violation')),
	lifecycle		text NOT NULL CHECK (lifecycle IN ('order', 'shipment', 'movement', 'return')),
	business_key	text NOT NULL,
	system			text,
	code			text NOT NULL DEFAULT '',
	detail			text,
	message			bigint,
	opened_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	reports			integer NOT NULL DEFAULT 1,
	last_message	bigint,
	last_reported_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	resolved_at		timestamptz,
	resolution		text,
	resolved_by		text,
	CHECK ((resolved_at IS NULL) = (resolution IS NULL))
);
-- one open exception per kind, key and code: the same report again counts on it
CREATE UNIQUE INDEX exceptions_open_idx ON hub.exceptions (lifecycle, business_key, kind, code)
	WHERE resolved_at IS NULL;
COMMENT ON TABLE hub.exceptions IS
'Business exceptions, which need a person rather than a retry: unknown_code (no mapping of a system''s status code), conflict (a report incomparable with the canonical state), not_owner (a state reported by a system that does not own it), terminal (a report about a key already in a terminal state, e.g. a pick for a cancelled order), contract_violation (a canonical event the record cannot satisfy). The message that raised one is done, not retried. One open row per kind, key and code; close it with hub.resolve_exception.';
COMMENT ON COLUMN hub.exceptions.code IS 'The status code reported (unknown_code, conflict, not_owner, terminal) or the event type whose contract failed (contract_violation).';
COMMENT ON COLUMN hub.exceptions.message IS 'The hub.inbox message (inbox_id) that opened the exception; NULL when it came from a direct call.';
COMMENT ON COLUMN hub.exceptions.reports IS 'How many reports of it came while it was open (1: only the one that opened it).';
COMMENT ON COLUMN hub.exceptions.last_message IS 'The hub.inbox message of the latest report.';
-- the truth, dumped with the queue (85_backup.sql), with its links
SELECT pg_catalog.pg_extension_config_dump('hub.exceptions', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hub.exceptions', 'exception_id')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump('hub.entity_links', '');
COMMENT ON COLUMN hub.exceptions.resolved_by IS 'The session user that resolved it (hub.resolve_exception, audited in hub.operator_audit).';

/*
 * _open_exception --- open an exception, or count the report on the open
 * one of the same kind, key and code (the partial unique index serializes
 * concurrent reports); returns its id.
 */
CREATE FUNCTION hub._open_exception(p_kind text, p_lifecycle text, p_business_key text, p_system text,
									p_code text, p_detail text, p_message bigint)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v_id bigint;
BEGIN
	-- (plpgsql: a SQL function would be planned again in every message's subtransaction)
	INSERT INTO hub.exceptions AS x (kind, lifecycle, business_key, system, code, detail, message, last_message)
	VALUES (p_kind, p_lifecycle, p_business_key, p_system, coalesce(p_code, ''), p_detail, p_message, p_message)
	ON CONFLICT (lifecycle, business_key, kind, code) WHERE resolved_at IS NULL
	DO UPDATE SET reports = x.reports + 1, last_message = EXCLUDED.message,
				  last_reported_at = now(), detail = EXCLUDED.detail, system = EXCLUDED.system
	RETURNING x.exception_id INTO v_id;
	RETURN v_id;
END
$$;
COMMENT ON FUNCTION hub._open_exception(text, text, text, text, text, text, bigint) IS
'API: Private. Open a business exception in hub.exceptions, or count the report on the open one of the same kind, key and code; returns its id.';

-- ---------------------------------------------------------------- contracts

CREATE FUNCTION hub.contract_violation(event_type text, payload jsonb) RETURNS text
	AS 'MODULE_PATHNAME', 'hub_contract_violation' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION hub.contract_violation(text, jsonb) IS
'Why an event of this type with this payload would be refused by the contract check (a required key missing or null, a key of the wrong type, a payload that is not an object, an unknown type when logistics_hub.unknown_event_types = reject), or NULL when it would be published. Raises nothing.';

/*
 * event_body with the contract version: what the claim renders (45_delivery
 * .sql), the eight-argument form (50_dispatch.sql) plus the event's
 * hub.outbox.contract_version, as the canonical event's contract_version and
 * the CloudEvents extension attribute contractversion (both left out when
 * NULL).  The same C function; the eight-argument form's bytes are unchanged.
 */
CREATE FUNCTION hub.event_body(body_format text, event_id uuid, event_type text, aggregate_id text,
		occurred_at timestamptz, correlation_id text, payload jsonb, source text, contract_version integer)
RETURNS text
	AS 'MODULE_PATHNAME', 'hub_event_body' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION hub.event_body(text, uuid, text, text, timestamptz, text, jsonb, text, integer) IS
'The JSON a receiver gets for one event, with the version of its contract: the canonical event (id, type, aggregate_id, occurred_at, correlation_id, data, contract_version) or, for body_format cloudevents or cloudevents_batch, a CloudEvents 1.0 structured-mode event with the extension attribute contractversion; a NULL version is left out. The time is in UTC whatever the session''s TimeZone.';
/*
 * event_body with the traceparent too (what the claim renders since 0.3.0,
 * README "Trace context"): the CloudEvents envelope gets the distributed
 * tracing extension attribute traceparent (left out when NULL); the
 * canonical event is the nine-argument form's.
 */
CREATE FUNCTION hub.event_body(body_format text, event_id uuid, event_type text, aggregate_id text,
		occurred_at timestamptz, correlation_id text, payload jsonb, source text, contract_version integer,
		traceparent text)
RETURNS text
	AS 'MODULE_PATHNAME', 'hub_event_body' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION hub.event_body(text, uuid, text, text, timestamptz, text, jsonb, text, integer, text) IS
'The JSON a receiver gets for one event, with its contract version and W3C traceparent: the canonical event as the nine-argument form gives it, or, for body_format cloudevents or cloudevents_batch, the CloudEvents 1.0 structured-mode event with the extension attributes contractversion and traceparent (the distributed tracing extension); NULLs are left out.';

-- ---------------------------------------------------------------- canonical events

/*
 * _json_time --- a time read from an inbound record: an ISO 8601 string
 * with an offset (2026-05-04T10:00:00+02:00, ...Z), one without (naive:
 * taken as UTC, whatever the session's TimeZone), a date (midnight UTC),
 * or a number of seconds since 1970 (Unix time).  22007 for anything else
 * (a technical failure of the message: retried, then dead).
 */
CREATE FUNCTION hub._json_time(value jsonb) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s text;
BEGIN
	IF value IS NULL OR jsonb_typeof(value) = 'null' THEN
		RETURN NULL;
	ELSIF jsonb_typeof(value) = 'number' THEN
		RETURN to_timestamp((value #>> '{}')::float8);
	ELSIF jsonb_typeof(value) = 'string' THEN
		s := btrim(value #>> '{}');
		IF s ~ '^\d{4}-\d\d-\d\d([Tt ]\d\d:\d\d(:\d\d(\.\d+)?)?)?$' THEN
			RETURN s::timestamp AT TIME ZONE 'UTC';
		ELSIF s ~ '^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d(:\d\d(\.\d+)?)? ?([Zz]|[+-]\d\d(:?\d\d)?)$' THEN
			RETURN s::timestamptz;
		END IF;
	END IF;
	RAISE EXCEPTION 'invalid time in an inbound record: %', left(value::text, 100)
		USING ERRCODE = 'invalid_datetime_format',
			  HINT = 'Times are ISO 8601 strings with or without an offset (naive times are UTC), or Unix seconds.';
END
$$;
COMMENT ON FUNCTION hub._json_time(jsonb) IS
'API: Private. A time read from an inbound record: ISO 8601 with an offset, without one (naive, taken as UTC), a date (midnight UTC), or Unix seconds; 22007 otherwise.';

/*
 * _state_event --- publish the canonical event of one change of a key
 * (on: the state it moved to, or exception, exception_cleared, on_hold,
 * hold_released), as hub.state_events configures, in the caller's
 * transaction.  The payload: <entity>_id and business_key, lifecycle,
 * state and previous_state, change (created, advanced, corrected, raised,
 * cleared), the reporting system, occurred_at (UTC), the overlay and its
 * reason, the partner, a shipment's carrier when the contract needs it
 * (the partner, else the reporting system if it is a carrier), the parent key (and
 * <parent entity>_id) where known, and, from the inbound record, every
 * required key of the contract the hub does not know itself.  When the
 * contract still cannot be met, nothing is published and a
 * contract_violation exception names the reason (the state has moved:
 * the truth is kept, the event waits for a person).  Returns the event id,
 * or NULL when nothing was published.
 */
CREATE FUNCTION hub._state_event(p_lifecycle text, p_business_key text, p_on text, p_state text,
		p_previous_state text, p_change text, p_system text, p_occurred_at timestamptz, p_reason text,
		p_partner text, p_parent_lifecycle text, p_parent_key text, p_record jsonb, p_inbox_id bigint)
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v_type		text;
	v_keys		text[];
	v_payload	jsonb;
	v_problem	text;
	k			text;
BEGIN
	SELECT se.event_type, et.required_keys INTO v_type, v_keys
	FROM hub.state_events se
	JOIN hub.event_types et ON et.event_type = se.event_type
	WHERE se.lifecycle = $1 AND se.state = $3;
	IF v_type IS NULL THEN
		RETURN NULL;
	END IF;
	v_payload := jsonb_build_object($1 || '_id', $2, 'business_key', $2, 'lifecycle', $1,
		'state', $4, 'previous_state', $5, 'change', $6, 'system', $7,
		'occurred_at', to_char($8 AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'));
	IF $3 IN ('exception', 'exception_cleared', 'on_hold', 'hold_released') THEN
		v_payload := v_payload || jsonb_build_object(
			'overlay', CASE WHEN $3 IN ('exception', 'exception_cleared') THEN 'exception' ELSE 'on_hold' END,
			'reason', $9);
	END IF;
	IF $10 IS NOT NULL THEN
		v_payload := v_payload || jsonb_build_object('partner', $10);
	END IF;
	-- a shipment's carrier: the partner (a SCAC), else a reporting carrier system
	IF $1 = 'shipment' AND 'carrier' = ANY (v_keys) THEN
		v_payload := v_payload || jsonb_build_object('carrier',
			coalesce($10, (SELECT sy.system FROM hub.systems sy
						   WHERE sy.system = $7 AND sy.qualifier = '' AND sy.role = 'carrier')));
	END IF;
	IF $12 IS NOT NULL THEN
		v_payload := v_payload || jsonb_build_object('parent_lifecycle', $11, 'parent_key', $12);
		IF $11 <> $1 THEN
			v_payload := v_payload || jsonb_build_object($11 || '_id', $12);
		END IF;
	END IF;
	-- the source record's fields the contract needs
	IF $13 IS NOT NULL AND jsonb_typeof($13) = 'object' THEN
		FOREACH k IN ARRAY v_keys LOOP
			IF NOT v_payload ? k AND $13 ? k THEN
				v_payload := v_payload || jsonb_build_object(k, $13 -> k);
			END IF;
		END LOOP;
	END IF;
	v_problem := hub.contract_violation(v_type, v_payload);
	IF v_problem IS NOT NULL THEN
		PERFORM hub._open_exception('contract_violation', $1, $2, $7, v_type,
									v_problem || ' (the canonical event of ' || $3 || ' was not published)', $14);
		RETURN NULL;
	END IF;
	-- (correlation and causation: those of the inbox message in process, if any)
	RETURN hub.publish(v_type, $2, v_payload, occurred_at => $8);
END
$$;
COMMENT ON FUNCTION hub._state_event(text, text, text, text, text, text, text, timestamptz, text, text, text, text, jsonb, bigint) IS
'API: Private. Publish the canonical event (hub.state_events) of one change of a key, its payload completed from the inbound record where the contract needs it; a contract the change cannot satisfy opens a contract_violation exception instead. Returns the event id or NULL.';

-- ---------------------------------------------------------------- readiness

CREATE TABLE hub.readiness_rules (
	name			text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]*$' AND length(name) <= 63),
	event_type		text NOT NULL REFERENCES hub.event_types ON UPDATE CASCADE,
	lifecycle		text NOT NULL CHECK (lifecycle IN ('order', 'shipment', 'movement', 'return')),
	state			text NOT NULL,
	child_lifecycle	text CHECK (child_lifecycle IN ('order', 'shipment', 'movement', 'return')),
	child_state		text,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	CHECK (hub.lifecycle_state_valid(lifecycle, state)),
	CHECK ((child_lifecycle IS NULL) = (child_state IS NULL)),
	CHECK (child_state IS NULL OR hub.lifecycle_state_valid(child_lifecycle, child_state))
);
COMMENT ON TABLE hub.readiness_rules IS
'Readiness rules (hub.create_readiness_rule): publish event_type once per key of lifecycle when the key is at or past state and, with a child lifecycle, it has at least one linked child (hub.entity_links) and every one is at or past child_state; never while an open exception (hub.exceptions) or an overlay (on hold, exception) sits on the key or a child. Evaluated whenever a member''s state or overlay moves and when an exception is resolved.';
COMMENT ON COLUMN hub.readiness_rules.state IS 'The key must be at this state or past it (reachable forward from it, and not cancelled, rejected, return_to_sender or returned).';
COMMENT ON COLUMN hub.readiness_rules.child_state IS 'Every child of child_lifecycle linked to the key must be at this state or past it; NULL: no children needed.';

CREATE TABLE hub.readiness_fired (
	rule			text NOT NULL REFERENCES hub.readiness_rules ON DELETE CASCADE ON UPDATE CASCADE,
	business_key	text NOT NULL,
	event_id		uuid,
	fired_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (rule, business_key)
);
COMMENT ON TABLE hub.readiness_fired IS
'Keys a readiness rule has fired for (once per rule and key, whatever happens to the key afterwards), with the event published.';
SELECT pg_catalog.pg_extension_config_dump('hub.readiness_rules', '');
SELECT pg_catalog.pg_extension_config_dump('hub.readiness_fired', '');

/*
 * _at_or_past --- is a key in state cur at or past state target of its
 * lifecycle?  At it, or reachable forward from it; a cancelled, rejected or
 * returned key is never "past" anything.
 */
CREATE FUNCTION hub._at_or_past(lifecycle text, cur text, target text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT cur IS NOT NULL AND cur NOT IN ('cancelled', 'rejected', 'return_to_sender', 'returned')
		AND (cur = target
			 OR hub._classify_transition(lifecycle, target, cur, false) IN ('advance', 'advance_with_gap'))
$$;
COMMENT ON FUNCTION hub._at_or_past(text, text, text) IS
'API: Private. true when state cur is target or reachable forward from it, and not cancelled, rejected, return_to_sender or returned.';

/*
 * _readiness_blocked --- does an overlay or an open exception sit on the key?
 */
CREATE FUNCTION hub._readiness_blocked(p_lifecycle text, p_key text, p_on_hold boolean, p_exception text)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(p_on_hold, false) OR p_exception IS NOT NULL
		OR EXISTS (SELECT FROM hub.exceptions x
				   WHERE x.lifecycle = p_lifecycle AND x.business_key = p_key AND x.resolved_at IS NULL)
$$;
COMMENT ON FUNCTION hub._readiness_blocked(text, text, boolean, text) IS
'API: Private. true when the key is on hold, has the exception overlay or an open hub.exceptions row: readiness waits.';

/*
 * _readiness_try --- fire rule p_rule for key p_key if it is ready and has
 * not fired.  The key's hub.entity_state row is locked first: two children
 * finishing at once in two transactions are then evaluated one after the
 * other, the second seeing the first (READ COMMITTED), so the last child
 * fires the rule and none is missed; hub.readiness_fired's key makes it
 * once.  Returns the event id, or NULL.
 */
CREATE FUNCTION hub._readiness_try(p_rule text, p_key text)
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r			hub.readiness_rules;
	e			hub.entity_state;
	v_children	jsonb;
	v_ready		boolean;
	v_payload	jsonb;
	v_problem	text;
	v_id		uuid;
BEGIN
	SELECT * INTO r FROM hub.readiness_rules rr WHERE rr.name = p_rule;
	IF NOT FOUND OR EXISTS (SELECT FROM hub.readiness_fired f WHERE f.rule = p_rule AND f.business_key = p_key) THEN
		RETURN NULL;
	END IF;
	SELECT * INTO e FROM hub.entity_state es
	WHERE es.lifecycle = r.lifecycle AND es.business_key = p_key FOR UPDATE;
	IF NOT FOUND OR NOT hub._at_or_past(r.lifecycle, e.state, r.state)
	   OR hub._readiness_blocked(r.lifecycle, p_key, e.on_hold, e.exception_reason) THEN
		RETURN NULL;
	END IF;
	IF r.child_lifecycle IS NOT NULL THEN
		SELECT count(*) > 0
			   AND coalesce(bool_and(hub._at_or_past(r.child_lifecycle, c.state, r.child_state)
									 AND NOT hub._readiness_blocked(r.child_lifecycle, l.child_key,
																	c.on_hold, c.exception_reason)), false),
			   jsonb_agg(l.child_key ORDER BY l.child_key)
		INTO v_ready, v_children
		FROM hub.entity_links l
		LEFT JOIN hub.entity_state c ON c.lifecycle = l.child_lifecycle AND c.business_key = l.child_key
		WHERE l.parent_lifecycle = r.lifecycle AND l.parent_key = p_key
		  AND l.child_lifecycle = r.child_lifecycle;
		IF NOT v_ready THEN
			RETURN NULL;
		END IF;
	END IF;
	v_payload := jsonb_build_object(r.lifecycle || '_id', p_key, 'business_key', p_key, 'lifecycle', r.lifecycle,
									'state', e.state, 'rule', r.name)
				 || CASE WHEN v_children IS NOT NULL
						 THEN jsonb_build_object('children', v_children, 'child_lifecycle', r.child_lifecycle)
						 ELSE '{}' END;
	v_problem := hub.contract_violation(r.event_type, v_payload);
	IF v_problem IS NOT NULL THEN
		PERFORM hub._open_exception('contract_violation', r.lifecycle, p_key, NULL, r.event_type,
									v_problem || ' (readiness rule ' || r.name || ' did not fire)', NULL);
		RETURN NULL;
	END IF;
	INSERT INTO hub.readiness_fired (rule, business_key) VALUES (p_rule, p_key) ON CONFLICT DO NOTHING;
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	v_id := hub.publish(r.event_type, p_key, v_payload);
	UPDATE hub.readiness_fired f SET event_id = v_id WHERE f.rule = p_rule AND f.business_key = p_key;
	RETURN v_id;
END
$$;
COMMENT ON FUNCTION hub._readiness_try(text, text) IS
'API: Private. Fire a readiness rule for a key when it is ready (state, children, no exception or overlay) and has not fired: publish its event and remember the key. Returns the event id or NULL.';

/*
 * _readiness_evaluate --- after a change of a key: the rules of its
 * lifecycle for the key itself, and the rules of its parents for which it
 * is a child.
 */
CREATE FUNCTION hub._readiness_evaluate(p_lifecycle text, p_key text)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	x		record;
	fired	integer := 0;
BEGIN
	FOR x IN
		SELECT rr.name, p_key AS key FROM hub.readiness_rules rr WHERE rr.lifecycle = p_lifecycle
		UNION ALL
		SELECT rr.name, l.parent_key FROM hub.entity_links l
		JOIN hub.readiness_rules rr ON rr.lifecycle = l.parent_lifecycle AND rr.child_lifecycle = l.child_lifecycle
		WHERE l.child_lifecycle = p_lifecycle AND l.child_key = p_key
		ORDER BY 2, 1
	LOOP
		IF hub._readiness_try(x.name, x.key) IS NOT NULL THEN
			fired := fired + 1;
		END IF;
	END LOOP;
	RETURN fired;
END
$$;
COMMENT ON FUNCTION hub._readiness_evaluate(text, text) IS
'API: Private. Evaluate the readiness rules a change of a key can complete: those of its lifecycle for the key, those of its parents for them. Returns how many fired.';

CREATE FUNCTION hub.create_readiness_rule(name text, event_type text, lifecycle text, state text,
		child_lifecycle text DEFAULT NULL, child_state text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF name IS NULL OR name !~ '^[a-z][a-z0-9_]*$' OR length(name) > 63 THEN
		RAISE EXCEPTION 'invalid readiness rule name: "%"', name
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Name a rule in lower case letters, digits and _ (at most 63), e.g. order_ready_for_dispatch.';
	END IF;
	IF lifecycle IS NULL OR lifecycle NOT IN ('order', 'shipment', 'movement', 'return')
	   OR (child_lifecycle IS NOT NULL AND child_lifecycle NOT IN ('order', 'shipment', 'movement', 'return')) THEN
		RAISE EXCEPTION 'unknown lifecycle: "%"', coalesce(CASE WHEN lifecycle IN ('order', 'shipment', 'movement', 'return')
																THEN child_lifecycle END, lifecycle)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The lifecycles are order, shipment, movement and return.';
	END IF;
	IF state IS NULL OR NOT hub.lifecycle_state_valid(lifecycle, state) THEN
		RAISE EXCEPTION 'unknown % state: "%"', lifecycle, state
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = format('The states are the labels of hub.%s_status.', lifecycle);
	END IF;
	IF (child_lifecycle IS NULL) <> (child_state IS NULL) THEN
		RAISE EXCEPTION 'child_lifecycle and child_state go together'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF child_state IS NOT NULL AND NOT hub.lifecycle_state_valid(child_lifecycle, child_state) THEN
		RAISE EXCEPTION 'unknown % state: "%"', child_lifecycle, child_state
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = format('The states are the labels of hub.%s_status.', child_lifecycle);
	END IF;
	IF event_type IS NULL OR NOT EXISTS (SELECT FROM hub.event_types t WHERE t.event_type = create_readiness_rule.event_type) THEN
		RAISE EXCEPTION 'unknown event type: "%"', event_type
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = format('Register its contract first: INSERT INTO hub.event_types (event_type, required_keys) VALUES (%L, ''{%s_id}'');',
								event_type, lifecycle);
	END IF;
	INSERT INTO hub.readiness_rules AS r (name, event_type, lifecycle, state, child_lifecycle, child_state)
	VALUES (create_readiness_rule.name, create_readiness_rule.event_type, create_readiness_rule.lifecycle,
			create_readiness_rule.state, create_readiness_rule.child_lifecycle, create_readiness_rule.child_state)
	ON CONFLICT ON CONSTRAINT readiness_rules_pkey DO UPDATE
	SET event_type = EXCLUDED.event_type, lifecycle = EXCLUDED.lifecycle, state = EXCLUDED.state,
		child_lifecycle = EXCLUDED.child_lifecycle, child_state = EXCLUDED.child_state;
END
$$;
COMMENT ON FUNCTION hub.create_readiness_rule(text, text, text, text, text, text) IS
'Create (or replace) a readiness rule: publish event_type once per key of lifecycle when the key is at or past state and, with child_lifecycle and child_state, every child linked to it (at least one) is at or past child_state; never while an open exception or overlay sits on the key or a child. The event type must be in hub.event_types (its payload: <entity>_id, business_key, lifecycle, state, rule, children). Keys already ready fire at their next change. 22023 for a bad name, lifecycle, state or event type.';

CREATE VIEW hub.readiness_pending AS
SELECT r.name AS rule, r.event_type, e.lifecycle, e.business_key, e.state,
	   r.child_lifecycle, r.child_state, c.children, c.children_ready,
	   hub._readiness_blocked(e.lifecycle, e.business_key, e.on_hold, e.exception_reason)
		 OR coalesce(c.children_blocked, false) AS blocked
FROM hub.readiness_rules r
JOIN hub.entity_state e ON e.lifecycle = r.lifecycle AND hub._at_or_past(e.lifecycle, e.state, r.state)
LEFT JOIN LATERAL (
	SELECT count(*)::integer AS children,
		   count(*) FILTER (WHERE hub._at_or_past(l.child_lifecycle, ch.state, r.child_state))::integer AS children_ready,
		   bool_or(hub._readiness_blocked(l.child_lifecycle, l.child_key, ch.on_hold, ch.exception_reason)) AS children_blocked
	FROM hub.entity_links l
	LEFT JOIN hub.entity_state ch ON ch.lifecycle = l.child_lifecycle AND ch.business_key = l.child_key
	WHERE r.child_lifecycle IS NOT NULL AND l.parent_lifecycle = e.lifecycle
	  AND l.parent_key = e.business_key AND l.child_lifecycle = r.child_lifecycle) c ON true
WHERE NOT EXISTS (SELECT FROM hub.readiness_fired f WHERE f.rule = r.name AND f.business_key = e.business_key);
COMMENT ON VIEW hub.readiness_pending IS
'Keys at or past a readiness rule''s state for which it has not fired yet: how many children are linked and how many are ready, and whether an open exception or overlay on the key or a child blocks it.';

-- ---------------------------------------------------------------- resolve

CREATE FUNCTION hub.resolve_exception(exception_id bigint, resolution text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	x	hub.exceptions;
BEGIN
	IF resolution IS NULL OR btrim(resolution) = '' THEN
		RAISE EXCEPTION 'an exception''s resolution must say what was decided'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	UPDATE hub.exceptions e
	SET resolved_at = now(), resolution = resolve_exception.resolution, resolved_by = session_user
	WHERE e.exception_id = resolve_exception.exception_id AND e.resolved_at IS NULL
	RETURNING * INTO x;
	IF NOT FOUND THEN
		RETURN false;
	END IF;
	PERFORM hub._audit('resolve_exception', 'exception:' || x.exception_id, resolution,
					   jsonb_build_object('kind', x.kind, 'lifecycle', x.lifecycle,
										  'business_key', x.business_key, 'code', x.code));
	-- a readiness rule the exception held back may fire now
	IF EXISTS (SELECT FROM hub.readiness_rules) THEN
		PERFORM hub._readiness_evaluate(x.lifecycle, x.business_key);
	END IF;
	RETURN true;
END
$$;
COMMENT ON FUNCTION hub.resolve_exception(bigint, text) IS
'Close an open business exception with what was decided (22023 when empty); audited in hub.operator_audit (action resolve_exception). Readiness rules the exception held back are evaluated again. Returns false when the exception does not exist or is already resolved. The canonical state is not changed: apply a decided state with hub.apply_status.';

-- ---------------------------------------------------------------- mappings

CREATE TABLE hub.inbox_mappings (
	message_pattern		text PRIMARY KEY CHECK (message_pattern ~ '^[^*]*\*?$' AND message_pattern <> ''),
	lifecycle			text NOT NULL CHECK (lifecycle IN ('order', 'shipment', 'movement', 'return')),
	system				text NOT NULL,
	key_path			jsonpath NOT NULL,
	code_path			jsonpath NOT NULL,
	occurred_at_path	jsonpath,
	qualifier_path		jsonpath,
	partner_path		jsonpath,
	parent_path			jsonpath,
	parent_lifecycle	text NOT NULL DEFAULT 'order' CHECK (parent_lifecycle IN ('order', 'shipment', 'movement', 'return')),
	children_path		jsonpath,
	child_lifecycle		text NOT NULL DEFAULT 'shipment' CHECK (child_lifecycle IN ('order', 'shipment', 'movement', 'return')),
	max_attempts		integer NOT NULL DEFAULT 5 CHECK (max_attempts BETWEEN 1 AND 1000),
	retry_base			interval NOT NULL DEFAULT '1 second'
						CHECK (retry_base BETWEEN '0'::interval AND '1 day'::interval),
	created_at			timestamptz NOT NULL DEFAULT pg_catalog.now(),
	site_path			jsonpath
);
COMMENT ON TABLE hub.inbox_mappings IS
'Declared mappings of inbound messages (hub.map_inbox): messages whose type matches message_pattern (exact, or a prefix ending in *; the longest wins) are applied by hub.process_inbox to lifecycle as reports of system, the business key, status code, time, qualifier, partner, parent and children read from the payload with jsonpaths. A message whose pattern also has a handler is mapped first, then handled, in one subtransaction.';
COMMENT ON COLUMN hub.inbox_mappings.key_path IS 'jsonpath of the business key (a string or number); a message where it does not resolve fails (retried, then dead).';
COMMENT ON COLUMN hub.inbox_mappings.code_path IS 'jsonpath of the system''s status code; a message where it does not resolve fails. An unknown code opens an unknown_code exception and the message is done.';
COMMENT ON COLUMN hub.inbox_mappings.occurred_at_path IS 'jsonpath of the time of the report (ISO 8601 with or without offset, naive = UTC, or Unix seconds); NULL: the message''s received_at. When set and not resolving, the message fails.';
COMMENT ON COLUMN hub.inbox_mappings.parent_path IS 'jsonpath of the parent''s key (a tracker names its order), of parent_lifecycle; linked in hub.entity_links. Optional in each record.';
COMMENT ON COLUMN hub.inbox_mappings.children_path IS 'jsonpath of the children''s keys (a pack record lists its packages: $.packages[*].id), of child_lifecycle; linked in hub.entity_links. Optional in each record.';
COMMENT ON COLUMN hub.inbox_mappings.site_path IS 'jsonpath of the warehouse or site the record names (a string or number, at most 256 bytes), kept in hub.entity_state.site for the key (the latest record naming one wins). Optional in each record.';
COMMENT ON COLUMN hub.inbox_mappings.max_attempts IS 'Failed runs (malformed messages) before a message without a handler is dead, 1 to 1000; with a handler, the handler''s setting counts.';
COMMENT ON COLUMN hub.inbox_mappings.retry_base IS 'Backoff after the first failure of a message without a handler, doubled after each further one up to a day; 0 to 1 day.';
SELECT pg_catalog.pg_extension_config_dump('hub.inbox_mappings', '');

/*
 * _jsonpath_arg --- a jsonpath argument of hub.map_inbox, checked: 22023
 * naming the argument for text that is not a jsonpath.
 */
CREATE FUNCTION hub._jsonpath_arg(what text, path text) RETURNS jsonpath
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN path::jsonpath;
EXCEPTION WHEN syntax_error OR invalid_text_representation OR invalid_parameter_value THEN
	RAISE EXCEPTION 'invalid jsonpath for %: "%"', what, path
		USING ERRCODE = 'invalid_parameter_value',
			  DETAIL = SQLERRM,
			  HINT = 'Write a jsonpath into the message payload, e.g. $.shipment.id or $.packages[*].sscc.';
END
$$;
COMMENT ON FUNCTION hub._jsonpath_arg(text, text) IS
'API: Private. text as a jsonpath; 22023 naming the argument when it is not one.';

CREATE FUNCTION hub.map_inbox(message_pattern text, lifecycle text, system text, key_path text, code_path text,
		occurred_at_path text DEFAULT NULL, qualifier_path text DEFAULT NULL, partner_path text DEFAULT NULL,
		parent_path text DEFAULT NULL, children_path text DEFAULT NULL,
		parent_lifecycle text DEFAULT 'order', child_lifecycle text DEFAULT 'shipment',
		max_attempts integer DEFAULT 5, retry_base interval DEFAULT '1 second', site_path text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF message_pattern IS NULL OR message_pattern !~ '^[^*]*\*?$' OR message_pattern = '' THEN
		RAISE EXCEPTION 'invalid message pattern: "%"', message_pattern
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use an exact message type, or a prefix followed by one trailing * (wms.shipment.*).';
	END IF;
	IF lifecycle IS NULL OR lifecycle NOT IN ('order', 'shipment', 'movement', 'return')
	   OR parent_lifecycle IS NULL OR parent_lifecycle NOT IN ('order', 'shipment', 'movement', 'return')
	   OR child_lifecycle IS NULL OR child_lifecycle NOT IN ('order', 'shipment', 'movement', 'return') THEN
		RAISE EXCEPTION 'unknown lifecycle: "%"',
			CASE WHEN lifecycle IS NULL OR lifecycle NOT IN ('order', 'shipment', 'movement', 'return') THEN lifecycle
				 WHEN parent_lifecycle IS NULL OR parent_lifecycle NOT IN ('order', 'shipment', 'movement', 'return') THEN parent_lifecycle
				 ELSE child_lifecycle END
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The lifecycles are order, shipment, movement and return.';
	END IF;
	IF system IS NULL OR NOT EXISTS (SELECT FROM hub.systems s WHERE s.system = map_inbox.system) THEN
		RAISE EXCEPTION 'unknown system: "%"', system
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Every reporting system needs a role (erp, wms, tms, carrier or portal).',
				  HINT = format('Add it with INSERT INTO hub.systems (system, role) VALUES (%L, ''wms'').', system);
	END IF;
	IF key_path IS NULL OR code_path IS NULL THEN
		RAISE EXCEPTION 'a mapping needs key_path and code_path'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM hub._check_setting('max_attempts', max_attempts BETWEEN 1 AND 1000, max_attempts::text,
							   'between 1 and 1000');
	PERFORM hub._check_setting('retry_base', retry_base BETWEEN '0'::interval AND '1 day'::interval,
							   retry_base::text, 'between 0 and 1 day');
	INSERT INTO hub.inbox_mappings AS m (message_pattern, lifecycle, system, key_path, code_path,
		occurred_at_path, qualifier_path, partner_path, parent_path, parent_lifecycle, children_path,
		child_lifecycle, max_attempts, retry_base, site_path)
	VALUES (map_inbox.message_pattern, map_inbox.lifecycle, map_inbox.system,
			hub._jsonpath_arg('key_path', map_inbox.key_path),
			hub._jsonpath_arg('code_path', map_inbox.code_path),
			hub._jsonpath_arg('occurred_at_path', map_inbox.occurred_at_path),
			hub._jsonpath_arg('qualifier_path', map_inbox.qualifier_path),
			hub._jsonpath_arg('partner_path', map_inbox.partner_path),
			hub._jsonpath_arg('parent_path', map_inbox.parent_path), map_inbox.parent_lifecycle,
			hub._jsonpath_arg('children_path', map_inbox.children_path), map_inbox.child_lifecycle,
			map_inbox.max_attempts, map_inbox.retry_base, hub._jsonpath_arg('site_path', map_inbox.site_path))
	ON CONFLICT ON CONSTRAINT inbox_mappings_pkey DO UPDATE
	SET lifecycle = EXCLUDED.lifecycle, system = EXCLUDED.system, key_path = EXCLUDED.key_path,
		code_path = EXCLUDED.code_path, occurred_at_path = EXCLUDED.occurred_at_path,
		qualifier_path = EXCLUDED.qualifier_path, partner_path = EXCLUDED.partner_path,
		parent_path = EXCLUDED.parent_path, parent_lifecycle = EXCLUDED.parent_lifecycle,
		children_path = EXCLUDED.children_path, child_lifecycle = EXCLUDED.child_lifecycle,
		max_attempts = EXCLUDED.max_attempts, retry_base = EXCLUDED.retry_base, site_path = EXCLUDED.site_path;
	-- messages that found neither handler nor mapping before are processed again
	UPDATE hub.inbox AS i SET state = 'new', next_attempt_at = now(), processed_at = NULL
	WHERE i.state = 'unhandled'
	  AND hub._inbox_pattern_matches(map_inbox.message_pattern, i.message_type);
END
$$;
COMMENT ON FUNCTION hub.map_inbox(text, text, text, text, text, text, text, text, text, text, text, text, integer, interval, text) IS
'Declare (or replace) how messages of a type pattern (exact, or a prefix ending in *) are applied: as reports of system for lifecycle, the business key, status code and, optionally, time (ISO 8601 with or without offset, naive = UTC, or Unix seconds; default: received_at), qualifier, partner, parent key, children keys and site (warehouse) read from the payload with jsonpaths (checked here: 22023 for a bad one). hub.process_inbox then maps the code (hub.status_map), applies it to the canonical state, publishes the canonical events and links parent and children (hub.entity_links); an unknown code, a conflict, a non-owner report or a report on a terminal key opens a hub.exceptions row and the message is done. Unhandled messages the pattern matches become new again.';

/*
 * _inbox_mapping --- the mapping of a message type: the longest matching
 * pattern, an exact one first (as for handlers); all NULL when none.
 */
CREATE FUNCTION hub._inbox_mapping(message_type text)
RETURNS hub.inbox_mappings
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT m.* FROM hub.inbox_mappings m
	WHERE hub._inbox_pattern_matches(m.message_pattern, $1)
	ORDER BY m.message_pattern = $1 DESC, length(m.message_pattern) DESC
	LIMIT 1
$$;
COMMENT ON FUNCTION hub._inbox_mapping(text) IS
'API: Private. The declared mapping (hub.inbox_mappings) of a message type: the longest matching pattern; a row of NULLs when none matches.';

/*
 * _inbox_not_a_value --- 22023 for a path that finds an object or array
 * where a value (key, code, qualifier, partner, parent) was expected: a
 * malformed inbound message (a technical failure: retried, then dead).
 */
CREATE FUNCTION hub._inbox_not_a_value(what text, path jsonpath, v jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RAISE EXCEPTION '% path % finds a JSON % where a value was expected', what, path, jsonb_typeof(v)
		USING ERRCODE = 'invalid_parameter_value';
END
$$;
COMMENT ON FUNCTION hub._inbox_not_a_value(text, jsonpath, jsonb) IS
'API: Private. Raise 22023: a mapping''s path found an object or array where a value was expected (a malformed message).';

/*
 * _inbox_step --- the hub's part of processing one message, inside
 * hub.process_inbox's subtransaction for it.  Finds the message's mapping
 * (an exact pattern by its key, else the longest matching prefix); with
 * neither mapping nor handler returns NULL (unhandled).  Otherwise makes
 * the message's context the transaction's (hub.inbox_correlation_id,
 * hub.inbox_causation_id and hub.inbox_traceparent, which hub.publish
 * takes when it is given none)
 * and, with a mapping, applies the message: reads key, code, time,
 * qualifier, partner, parent and children (a payload that is not an
 * object, or a key, code or configured time that does not resolve,
 * raises: a technical failure); links parent and children; maps the code
 * (unknown: an unknown_code exception, done) and applies it with its
 * canonical events (hub._apply_canonical); opens the business exceptions
 * of the outcome: terminal (a conflicting report, or a stale one made
 * after the state, about a key in a terminal state), conflict, not_owner.
 * Returns the context a handler gets ('{}' when there is no handler).
 * One function, every path read inline: it runs once per message.
 */
CREATE FUNCTION hub._inbox_step(p_inbox_id bigint, p_handled boolean)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	mp			hub.inbox_mappings;
	i			record;
	v_key		text;
	v_code		text;
	v_at		timestamptz;
	v_qual		text;
	v_partner	text;
	v_parent	text;
	v_site		text;
	v_mapped	hub.mapped_status;
	r			hub.apply_result;
	v_terminal	boolean;
	v			jsonb;
	p_payload	jsonb;
	p_message_type text;
BEGIN
	-- the message as stored, and only one being processed (claimed by the
	-- caller, FOR UPDATE): the step never applies a payload it is handed
	SELECT x.source, x.message_id, x.message_type, x.payload, x.correlation_id, x.aggregate_id,
		   x.received_at, x.attempts, x.state, x.traceparent
	INTO i FROM hub.inbox x WHERE x.inbox_id = p_inbox_id;
	IF NOT FOUND OR i.state NOT IN ('new', 'retry_wait') THEN
		RAISE EXCEPTION 'inbox message % is not waiting to be processed', p_inbox_id
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	p_payload := i.payload;
	p_message_type := i.message_type;
	SELECT * INTO mp FROM hub.inbox_mappings m WHERE m.message_pattern = p_message_type;
	IF NOT FOUND THEN
		SELECT * INTO mp FROM hub.inbox_mappings m
		WHERE right(m.message_pattern, 1) = '*' AND starts_with(p_message_type, left(m.message_pattern, -1))
		ORDER BY length(m.message_pattern) DESC LIMIT 1;
		IF NOT FOUND AND NOT p_handled THEN
			RETURN NULL;
		END IF;
	END IF;
	-- (the traceparent counts while the causation id is set: what is
	-- published gets a child span of the message's, trace_context.c)
	PERFORM set_config('hub.inbox_correlation_id', coalesce(i.correlation_id, ''), true),
			set_config('hub.inbox_causation_id', 'inbox:' || p_inbox_id, true),
			set_config('hub.inbox_traceparent', coalesce(i.traceparent, ''), true);

	IF mp.message_pattern IS NOT NULL THEN
		IF jsonb_typeof(p_payload) IS DISTINCT FROM 'object' THEN
			RAISE EXCEPTION 'the payload of a % message must be a JSON object', mp.lifecycle
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('Mapping "%s" reads it with jsonpaths.', mp.message_pattern);
		END IF;
		-- (each path read inline: SQL functions would be planned again in
		-- every message's subtransaction)
		v := jsonb_path_query_first(p_payload, mp.key_path);
		IF jsonb_typeof(v) IN ('object', 'array') THEN
			PERFORM hub._inbox_not_a_value('key', mp.key_path, v);
		END IF;
		v_key := v #>> '{}';
		v := jsonb_path_query_first(p_payload, mp.code_path);
		IF jsonb_typeof(v) IN ('object', 'array') THEN
			PERFORM hub._inbox_not_a_value('code', mp.code_path, v);
		END IF;
		v_code := v #>> '{}';
		IF v_key IS NULL OR v_key = '' OR v_code IS NULL OR v_code = '' THEN
			RAISE EXCEPTION 'the % path % finds nothing in the message',
				CASE WHEN v_key IS NULL OR v_key = '' THEN 'key' ELSE 'code' END,
				CASE WHEN v_key IS NULL OR v_key = '' THEN mp.key_path ELSE mp.code_path END
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('Mapping "%s" of %s records needs both.', mp.message_pattern, mp.lifecycle);
		END IF;
		PERFORM hub._check_key_length('business key', v_key);
		IF mp.occurred_at_path IS NULL THEN
			v_at := i.received_at;
		ELSE
			v_at := hub._json_time(jsonb_path_query_first(p_payload, mp.occurred_at_path));
			IF v_at IS NULL THEN
				RAISE EXCEPTION 'the occurred_at path % finds nothing in the message', mp.occurred_at_path
					USING ERRCODE = 'invalid_parameter_value';
			END IF;
		END IF;
		IF mp.qualifier_path IS NOT NULL THEN
			v := jsonb_path_query_first(p_payload, mp.qualifier_path);
			IF jsonb_typeof(v) IN ('object', 'array') THEN
				PERFORM hub._inbox_not_a_value('qualifier', mp.qualifier_path, v);
			END IF;
			v_qual := v #>> '{}';
		END IF;
		IF mp.partner_path IS NOT NULL THEN
			v := jsonb_path_query_first(p_payload, mp.partner_path);
			IF jsonb_typeof(v) IN ('object', 'array') THEN
				PERFORM hub._inbox_not_a_value('partner', mp.partner_path, v);
			END IF;
			v_partner := v #>> '{}';
		END IF;
		IF mp.parent_path IS NOT NULL THEN
			v := jsonb_path_query_first(p_payload, mp.parent_path);
			IF jsonb_typeof(v) IN ('object', 'array') THEN
				PERFORM hub._inbox_not_a_value('parent', mp.parent_path, v);
			END IF;
			v_parent := nullif(v #>> '{}', '');
		END IF;
		IF mp.site_path IS NOT NULL THEN
			v := jsonb_path_query_first(p_payload, mp.site_path);
			IF jsonb_typeof(v) IN ('object', 'array') THEN
				PERFORM hub._inbox_not_a_value('site', mp.site_path, v);
			END IF;
			v_site := nullif(v #>> '{}', '');
			PERFORM hub._check_key_length('site', v_site);
		END IF;

		-- the links the record names (kept once; a key never links to itself)
		IF v_parent IS NOT NULL AND (mp.parent_lifecycle, v_parent) IS DISTINCT FROM (mp.lifecycle, v_key) THEN
			PERFORM hub._check_key_length('parent key', v_parent);
			INSERT INTO hub.entity_links (parent_lifecycle, parent_key, child_lifecycle, child_key, system, inbox_id)
			VALUES (mp.parent_lifecycle, v_parent, mp.lifecycle, v_key, mp.system, p_inbox_id)
			ON CONFLICT DO NOTHING;
		END IF;
		IF mp.children_path IS NOT NULL THEN
			INSERT INTO hub.entity_links (parent_lifecycle, parent_key, child_lifecycle, child_key, system, inbox_id)
			SELECT DISTINCT mp.lifecycle, v_key, mp.child_lifecycle, c.v #>> '{}', mp.system, p_inbox_id
			FROM jsonb_path_query(p_payload, mp.children_path) c(v)
			WHERE jsonb_typeof(c.v) IN ('string', 'number') AND c.v #>> '{}' <> ''
			  AND octet_length(c.v #>> '{}') <= 256
			  AND (mp.child_lifecycle, c.v #>> '{}') IS DISTINCT FROM (mp.lifecycle, v_key)
			ON CONFLICT DO NOTHING;
		END IF;
		-- (a message received without its business key keeps none: hub.trace
		-- by key finds it through the events and exceptions it caused,
		-- whose causation id and message name it; a second UPDATE of the
		-- row per message would cost more than the trace saves)

		v_mapped := hub.try_map_status(mp.system, mp.lifecycle, v_code, v_qual, v_partner);
		IF v_mapped::text IS NULL THEN
			PERFORM hub._open_exception('unknown_code', mp.lifecycle, v_key, mp.system, v_code,
				format('%s reported %s code "%s"%s, which hub.status_map does not map', mp.system, mp.lifecycle,
					   v_code, CASE WHEN v_qual IS NOT NULL THEN format(' (qualifier "%s")', v_qual) ELSE '' END),
				p_inbox_id);
		ELSE
			r := hub._apply_canonical(mp.lifecycle, v_key, mp.system, v_code, v_at, v_mapped.state, v_mapped.overlay,
									  v_mapped.reason, v_qual, false, p_payload, v_partner,
									  CASE WHEN v_parent IS NOT NULL THEN mp.parent_lifecycle END, v_parent, p_inbox_id);
			IF r.outcome IN ('conflict', 'stale') AND r.previous_state IS NOT NULL THEN
				SELECT s.terminal INTO v_terminal FROM hub.lifecycle_states(mp.lifecycle) s WHERE s.state = r.previous_state;
				IF v_terminal AND (r.outcome = 'conflict'
								   OR (SELECT h.regression_suspect FROM hub.status_history h WHERE h.history_id = r.history_id)) THEN
					r.outcome := 'terminal';
					PERFORM hub._open_exception('terminal', mp.lifecycle, v_key, mp.system, v_code,
						format('%s reported %s (%s) after the %s reached its terminal state %s',
							   mp.system, r.reported_state, v_code, mp.lifecycle, r.previous_state), p_inbox_id);
				END IF;
			END IF;
			IF r.outcome = 'conflict' THEN
				PERFORM hub._open_exception('conflict', mp.lifecycle, v_key, mp.system, v_code,
					format('%s reported %s (%s), incomparable with the canonical state %s',
						   mp.system, r.reported_state, v_code, r.previous_state), p_inbox_id);
			ELSIF r.outcome = 'not_owner' THEN
				PERFORM hub._open_exception('not_owner', mp.lifecycle, v_key, mp.system, v_code,
					format('%s reported %s (%s), a state its role does not own', mp.system, r.reported_state, v_code),
					p_inbox_id);
			END IF;
		END IF;
		-- the site the record names, on the key's row (issue 21)
		IF v_site IS NOT NULL THEN
			UPDATE hub.entity_state es SET site = v_site
			WHERE es.lifecycle = mp.lifecycle AND es.business_key = v_key AND es.site IS DISTINCT FROM v_site;
		END IF;
	END IF;

	IF NOT p_handled THEN
		RETURN '{}';
	END IF;
	RETURN jsonb_build_object('inbox_id', p_inbox_id, 'source', i.source, 'message_id', i.message_id,
							  'message_type', p_message_type, 'correlation_id', i.correlation_id,
							  'aggregate_id', i.aggregate_id, 'received_at', i.received_at,
							  'attempts', i.attempts);
END
$$;
COMMENT ON FUNCTION hub._inbox_step(bigint, boolean) IS
'API: Private. Within hub.process_inbox''s subtransaction of one message (which must be new or retry_wait, 55000 otherwise; its payload is read from hub.inbox): find its declared mapping (NULL when there is neither mapping nor handler: unhandled), set the message''s correlation and causation ids for hub.publish, apply the mapping (read the fields: 22023/22007 for a malformed message, retried, then dead; link parent and children; map and apply the code with its canonical events; open the business exceptions unknown_code, terminal, conflict, not_owner), and return the context a handler gets (inbox_id, source, message_id, message_type, correlation_id, aggregate_id, received_at, attempts), or {} without a handler.';

/*
 * _inbox_apply_batch --- the mapped messages of a batch applied together,
 * set-based: a handful of statements for the whole batch instead of a
 * dozen for every message (hub.process_inbox calls it with the claimed
 * messages that have no handler, before its loop).  It takes only the
 * messages whose outcome is the plain one, and leaves every other one to
 * the per-message path (hub._inbox_step), which gives the same result for
 * these: a message with a mapping without parent or children paths, whose
 * key and code are strings or numbers (the key at most 256 bytes), whose
 * time reads, whose code maps to a state and no overlay that its system
 * owns, whose key is created or advanced (not corrected, stale, a
 * duplicate, a conflict) and carries no overlay (an advance would clear
 * it: more events), whose state publishes an event (hub.state_events)
 * whose contract the payload satisfies, and whose key no other message of
 * the batch names; and only while no readiness rule exists.  For those it
 * writes what hub._apply_canonical writes (entity_state, the per-system
 * row, the history row) and publishes the canonical event with the
 * message's correlation and causation ids and a child span of its
 * traceparent, in inbox_id order.  A key
 * another transaction created meanwhile undoes the whole batch's apply
 * (it was classified as new): the per-message path then sees that row.
 * Everything runs in one subtransaction: any error undoes it all and every
 * message goes the per-message way.  Returns the ids applied (to be
 * settled done by the caller), in order.
 */
CREATE FUNCTION hub._inbox_apply_batch(p_ids bigint[])
RETURNS bigint[]
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	a_id		bigint[];
	a_lc		text[];
	a_key		text[];
	a_sys		text[];
	a_role		text[];
	a_qual		text[];
	a_partner	text[];
	a_code		text[];
	a_at		timestamptz[];
	a_state		text[];
	a_corr		text[];
	a_payload	jsonb[];
	a_trace		text[];
	a_site		text[];
	v_done		bigint[];
	v_written	bigint;
	v_events	bigint;
BEGIN
	IF p_ids IS NULL OR cardinality(p_ids) = 0 OR EXISTS (SELECT FROM hub.readiness_rules) THEN
		RETURN '{}';
	END IF;
	BEGIN
		-- the messages, their mapping and fields (silent: a path that
		-- raises for a message leaves it to the per-message path, which
		-- fails it); per key, how many of the batch name it (any message of
		-- a mapping whose key reads)
		WITH mp AS MATERIALIZED (
			-- (the mapping of each message type once, not once a message:
			-- materialized, here and in g, or the planner runs it again for
			-- every row it joins)
			SELECT ty.message_type, mm.*
			FROM (SELECT DISTINCT x.message_type FROM hub.inbox x WHERE x.inbox_id = ANY (p_ids)) ty
			CROSS JOIN LATERAL (
				SELECT m.* FROM hub.inbox_mappings m
				WHERE hub._inbox_pattern_matches(m.message_pattern, ty.message_type)
				ORDER BY m.message_pattern = ty.message_type DESC, length(m.message_pattern) DESC
				LIMIT 1) mm
		), msg AS MATERIALIZED (
			-- (materialized: each path evaluated once a message, not once
			-- for every expression that reads its value)
			SELECT i.inbox_id, i.payload, i.correlation_id, i.traceparent, i.received_at, mp.lifecycle, mp.system,
				   mp.occurred_at_path IS NULL AS no_time_path,
				   mp.parent_path IS NULL AND mp.children_path IS NULL AS flat,
				   jsonb_path_query_first(i.payload, mp.key_path, '{}', true) AS kv,
				   jsonb_path_query_first(i.payload, mp.code_path, '{}', true) AS cv,
				   CASE WHEN mp.occurred_at_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.occurred_at_path, '{}', true) END AS tv,
				   CASE WHEN mp.qualifier_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.qualifier_path, '{}', true) END AS qv,
				   CASE WHEN mp.partner_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.partner_path, '{}', true) END AS pv,
				   CASE WHEN mp.site_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.site_path, '{}', true) END AS sv
			FROM hub.inbox i
			JOIN mp ON mp.message_type = i.message_type
			-- (by the primary key: a join with the array may scan the backlog)
			WHERE i.inbox_id = ANY (p_ids) AND i.state IN ('new', 'retry_wait')
			  AND jsonb_typeof(i.payload) = 'object'
		), f AS (
			SELECT m.*, m.kv #>> '{}' AS key, m.cv #>> '{}' AS code,
				   CASE WHEN m.qualifier_ok THEN m.qv #>> '{}' END AS qual,
				   CASE WHEN m.partner_ok THEN m.pv #>> '{}' END AS partner,
				   nullif(m.sv #>> '{}', '') AS site,
				   CASE WHEN jsonb_typeof(m.tv) = 'string' THEN btrim(m.tv #>> '{}') END AS ts,
				   -- (COLLATE "C": the same partitions, byte-equal keys, and
				   -- a sort by memcmp rather than strcoll)
				   count(*) OVER (PARTITION BY m.lifecycle COLLATE "C", (m.kv #>> '{}') COLLATE "C") AS named
			FROM (SELECT msg.*,
						 jsonb_typeof(msg.qv) IS DISTINCT FROM 'object' AND jsonb_typeof(msg.qv) IS DISTINCT FROM 'array' AS qualifier_ok,
						 jsonb_typeof(msg.pv) IS DISTINCT FROM 'object' AND jsonb_typeof(msg.pv) IS DISTINCT FROM 'array' AS partner_ok
				  FROM msg
				  WHERE jsonb_typeof(msg.kv) IN ('string', 'number', 'boolean') AND msg.kv #>> '{}' <> '') m
		), t AS (
			-- (hub._json_time's forms, without its error: a time it would
			-- refuse leaves the message to the per-message path; the two
			-- string forms exclude each other, the one with an offset, the
			-- more common, is tried first, and before its pattern (2 to 3 us
			-- a string) the shapes carriers and JSON encoders write most,
			-- its ASCII digits made 9s (a tenth of that; each of them
			-- matches the pattern))
			SELECT f.inbox_id, f.payload, f.correlation_id, f.traceparent, f.lifecycle, f.system, f.key, f.code,
				   f.qual, f.partner, f.site,
				   CASE WHEN f.no_time_path THEN f.received_at
						WHEN jsonb_typeof(f.tv) = 'number' THEN to_timestamp((f.tv #>> '{}')::float8)
						WHEN translate(f.ts, '012345678', '999999999')
							 IN ('9999-99-99T99:99:99Z', '9999-99-99T99:99:99+99:99', '9999-99-99T99:99:99-99:99',
								 '9999-99-99T99:99:99.999Z', '9999-99-99T99:99:99.999999Z',
								 '9999-99-99T99:99:99.999+99:99', '9999-99-99T99:99:99.999999+99:99',
								 '9999-99-99T99:99:99.999-99:99', '9999-99-99T99:99:99.999999-99:99',
								 '9999-99-99 99:99:99+99', '9999-99-99 99:99:99.999999+99')
						  OR f.ts ~ '^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d(:\d\d(\.\d+)?)? ?([Zz]|[+-]\d\d(:?\d\d)?)$'
						THEN f.ts::timestamptz
						WHEN f.ts ~ '^\d{4}-\d\d-\d\d([Tt ]\d\d:\d\d(:\d\d(\.\d+)?)?)?$'
						THEN f.ts::timestamp AT TIME ZONE 'UTC' END AS at,
				   -- (the grouping key of the mapping below: an array, whose
				   -- equality takes two NULLs as equal, and which hashes)
				   ARRAY[f.system, f.lifecycle, f.code, f.qual, f.partner] AS mk
			FROM f
			WHERE f.named = 1 AND f.flat
			  AND jsonb_typeof(f.kv) IN ('string', 'number') AND octet_length(f.key) <= 256
			  AND jsonb_typeof(f.cv) IN ('string', 'number') AND f.code <> ''
			  AND f.qualifier_ok AND f.partner_ok
			  -- (a site that is no value or too long: the per-message path fails it)
			  AND jsonb_typeof(f.sv) IS DISTINCT FROM 'object' AND jsonb_typeof(f.sv) IS DISTINCT FROM 'array'
			  AND coalesce(octet_length(f.site), 0) <= 256
		), g AS MATERIALIZED (
			-- the state each (system, lifecycle, code, qualifier, partner)
			-- maps to and the system's role, once each, kept where no
			-- overlay comes with it and the role owns the state
			SELECT d.mk, ms.state AS m_state, ro.role
			FROM (SELECT DISTINCT t.mk FROM t) d
			CROSS JOIN LATERAL hub.try_map_status(d.mk[1], d.mk[2], d.mk[3], d.mk[4], d.mk[5]) ms
			CROSS JOIN LATERAL (
				SELECT sy.role FROM hub.systems sy
				WHERE sy.system = d.mk[1] AND sy.qualifier IN ('', coalesce(d.mk[4], ''))
				ORDER BY sy.qualifier DESC LIMIT 1) ro
			WHERE ms.state IS NOT NULL AND ms.overlay IS NULL
			  AND hub.lifecycle_state_valid(d.mk[2], ms.state)
			  AND EXISTS (SELECT FROM hub.state_owners o
						  WHERE o.lifecycle = d.mk[2] AND o.state = ms.state AND o.role = ro.role)
		)
		-- (the arrays stay aligned, being filled from the same rows in the
		-- same order; the writes below sort by inbox_id themselves)
		SELECT array_agg(t.inbox_id), array_agg(t.lifecycle), array_agg(t.key), array_agg(t.system),
			   array_agg(g.role), array_agg(t.qual), array_agg(t.partner), array_agg(t.code), array_agg(t.at),
			   array_agg(g.m_state), array_agg(t.correlation_id), array_agg(t.payload), array_agg(t.traceparent),
			   array_agg(t.site)
		INTO a_id, a_lc, a_key, a_sys, a_role, a_qual, a_partner, a_code, a_at, a_state, a_corr, a_payload,
			 a_trace, a_site
		FROM t JOIN g ON g.mk = t.mk
		WHERE t.at IS NOT NULL;
		IF a_id IS NULL THEN
			RETURN '{}';
		END IF;

		-- the keys' rows, locked in key order (as hub._apply_canonical does,
		-- one key at a time)
		-- one probe of the primary key a key, in key order (a join may
		-- hash the whole table instead, in every batch; the order bytewise,
		-- COLLATE "C", the same for every batch, which is what matters)
		PERFORM FROM (SELECT k.lc, k.key FROM unnest(a_lc, a_key) k(lc, key)
					  ORDER BY k.lc COLLATE "C", k.key COLLATE "C") k
		CROSS JOIN LATERAL (
			SELECT FROM hub.entity_state es
			WHERE es.lifecycle = k.lc AND es.business_key = k.key
			FOR UPDATE) es;

		-- (the correlation and causation ids and a child span of the
		-- message's traceparent are passed: none of a message
		-- processed before is current)
		PERFORM set_config('hub.inbox_correlation_id', '', true),
				set_config('hub.inbox_causation_id', '', true);
		WITH a AS (
			SELECT * FROM unnest(a_id, a_lc, a_key, a_sys, a_role, a_qual, a_partner, a_code, a_at, a_state,
								 a_corr, a_payload, a_trace, a_site)
				AS a(inbox_id, lifecycle, key, system, role, qual, partner, code, at, state, corr, payload,
					 trace, site)
		), c AS (
			-- classified against the key's row: created (a new key, or one
			-- without a state) or advanced; no overlay on it
			SELECT a.*, es.lifecycle IS NULL AS is_new, es.state AS previous_state,
				   CASE WHEN es.state IS NOT NULL
						THEN hub._classify_transition(a.lifecycle, es.state, a.state, false) END AS kind,
				   CASE WHEN es.state IS NULL THEN 'created' ELSE 'advanced' END AS outcome,
				   se.event_type, et.required_keys
			FROM a
			LEFT JOIN hub.entity_state es ON es.lifecycle = a.lifecycle AND es.business_key = a.key
			JOIN hub.state_events se ON se.lifecycle = a.lifecycle AND se.state = a.state
			JOIN hub.event_types et ON et.event_type = se.event_type
			WHERE es.lifecycle IS NULL OR (NOT es.on_hold AND es.exception_reason IS NULL)
		), b AS MATERIALIZED (
			-- the canonical event's payload, as hub._state_event makes it
			-- (MATERIALIZED, here and below: each expression once a row;
			-- the partner, the carrier and the record's keys are added only
			-- when there are any, each || building the object anew)
			SELECT c.*,
				   CASE WHEN c.partner IS NULL AND NOT (c.lifecycle = 'shipment' AND 'carrier' = ANY (c.required_keys))
						THEN x.core
						ELSE x.core
							 || CASE WHEN c.partner IS NOT NULL THEN jsonb_build_object('partner', c.partner) ELSE '{}' END
							 || CASE WHEN c.lifecycle = 'shipment' AND 'carrier' = ANY (c.required_keys)
									 THEN jsonb_build_object('carrier',
										  coalesce(c.partner, (SELECT sy.system FROM hub.systems sy
															   WHERE sy.system = c.system AND sy.qualifier = ''
																 AND sy.role = 'carrier')))
									 ELSE '{}' END END AS base
			FROM c
			CROSS JOIN LATERAL (
				SELECT jsonb_build_object(c.lifecycle || '_id', c.key, 'business_key', c.key, 'lifecycle', c.lifecycle,
						'state', c.state, 'previous_state', c.previous_state, 'change', c.outcome,
						'system', c.system,
						'occurred_at', to_char(c.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')) AS core) x
			WHERE c.previous_state IS NULL OR c.kind IN ('advance', 'advance_with_gap')
		), ok AS MATERIALIZED (
			-- (the events whose contract the body meets; every row written
			-- below: a key whose row vanished meanwhile is missing from upd,
			-- counted at the end, and all is undone)
			SELECT b.*, y.body
			FROM b
			CROSS JOIN LATERAL (
				SELECT jsonb_object_agg(k.k, b.payload -> k.k) AS extra
				FROM unnest(b.required_keys) k(k)
				WHERE NOT b.base ? k.k AND b.payload ? k.k) x
			-- (OFFSET 0: the body built once, not again for the check)
			CROSS JOIN LATERAL (
				SELECT CASE WHEN x.extra IS NULL THEN b.base ELSE b.base || x.extra END AS body OFFSET 0) y
			WHERE hub.contract_violation(b.event_type, y.body) IS NULL
		), ins AS (
			-- (a plain INSERT: a key another transaction created meanwhile
			-- raises unique_violation, which undoes the batch's apply)
			INSERT INTO hub.entity_state AS es
				(lifecycle, business_key, state, state_system, state_occurred_at, last_advanced_at, on_hold, site)
			SELECT ok.lifecycle, ok.key, ok.state, ok.system, ok.at, ok.at, false, ok.site
			FROM ok WHERE ok.is_new
			RETURNING es.lifecycle, es.business_key
		), upd AS (
			UPDATE hub.entity_state es
			SET state = ok.state, state_system = ok.system, state_occurred_at = ok.at, last_advanced_at = ok.at,
				on_hold = false, on_hold_reason = NULL, on_hold_since = NULL, exception_reason = NULL,
				exception_since = NULL, updated_at = now(), site = coalesce(ok.site, es.site)
			FROM ok
			WHERE NOT ok.is_new AND es.lifecycle = ok.lifecycle AND es.business_key = ok.key
			RETURNING es.lifecycle, es.business_key
		), sys_new AS (
			-- (a new key has no per-system row yet: a plain INSERT)
			INSERT INTO hub.entity_system_state AS s
				(lifecycle, business_key, system, role, qualifier, code, state, state_since,
				 overlay_kind, reason, occurred_at)
			SELECT ok.lifecycle, ok.key, ok.system, ok.role, ok.qual, ok.code, ok.state, ok.at, NULL, NULL, ok.at
			FROM ok WHERE ok.is_new
		), sys AS (
			INSERT INTO hub.entity_system_state AS s
				(lifecycle, business_key, system, role, qualifier, code, state, state_since,
				 overlay_kind, reason, occurred_at)
			SELECT ok.lifecycle, ok.key, ok.system, ok.role, ok.qual, ok.code, ok.state, ok.at, NULL, NULL, ok.at
			FROM ok WHERE NOT ok.is_new
			ON CONFLICT ON CONSTRAINT entity_system_state_pkey DO UPDATE
			SET role = EXCLUDED.role, qualifier = EXCLUDED.qualifier, code = EXCLUDED.code,
				state = coalesce(EXCLUDED.state, s.state),
				state_since = CASE WHEN EXCLUDED.state IS NULL OR EXCLUDED.state = s.state
								   THEN s.state_since ELSE EXCLUDED.occurred_at END,
				overlay_kind = EXCLUDED.overlay_kind, reason = EXCLUDED.reason,
				occurred_at = EXCLUDED.occurred_at, received_at = now()
			WHERE s.occurred_at <= EXCLUDED.occurred_at
		), hist AS (
			INSERT INTO hub.status_history
				(lifecycle, business_key, system, role, qualifier, code, correction, mapped_state,
				 overlay_kind, reason, previous_state, new_state, kind, outcome, regression_suspect,
				 occurred_at)
			SELECT ok.lifecycle, ok.key, ok.system, ok.role, ok.qual, ok.code, false, ok.state,
				   NULL, NULL, ok.previous_state, ok.state, ok.kind, ok.outcome, false, ok.at
			FROM ok ORDER BY ok.inbox_id
		), ev AS (
			-- the events, in inbox_id order, as hub.publish writes them: a
			-- plain INSERT, whose contract trigger (hub._outbox_check)
			-- checks and stamps each row as it does for hub.publish, the
			-- event id and headers their defaults, the correlation id the
			-- message's (none: NULL, as hub.publish gives it here), a child
			-- span of its traceparent; one insert for the batch rather than
			-- one a row
			INSERT INTO hub.outbox (event_type, aggregate_id, payload, correlation_id, causation_id, occurred_at,
									traceparent)
			SELECT ok.event_type, ok.key, ok.body, nullif(ok.corr, ''), 'inbox:' || ok.inbox_id, ok.at,
				   hub._traceparent_child(ok.trace)
			FROM ok ORDER BY ok.inbox_id
			RETURNING 1
		)
		SELECT array_agg(ok.inbox_id ORDER BY ok.inbox_id), (SELECT count(*) FROM ins) + (SELECT count(*) FROM upd),
			   (SELECT count(*) FROM ev)
		INTO v_done, v_written, v_events FROM ok;
		IF v_written IS DISTINCT FROM cardinality(v_done)::bigint
		   OR v_events IS DISTINCT FROM cardinality(v_done)::bigint THEN
			RAISE EXCEPTION 'the batch wrote other rows than it applied (a key created or removed meanwhile)'
				USING ERRCODE = 'serialization_failure';
		END IF;
	EXCEPTION WHEN OTHERS THEN
		-- (undone: every message goes the per-message way, which reports
		-- the error of the one at fault)
		RETURN '{}';
	END;
	RETURN coalesce(v_done, '{}');
END
$$;
COMMENT ON FUNCTION hub._inbox_apply_batch(bigint[]) IS
'API: Private. Apply, set-based and in one subtransaction, the mapped messages of a batch (hub.process_inbox, messages without a handler) whose report creates or advances a key without overlays and publishes a canonical event it satisfies, each key named once in the batch, while no readiness rule exists; writes and publishes what the per-message path (hub._inbox_step) would. Returns the ids applied, for the caller to settle done; the others go the per-message way (all of them when anything fails).';

CREATE FUNCTION hub._run_handler(f regproc, payload jsonb, message_type text, context jsonb) RETURNS void
	AS 'MODULE_PATHNAME', 'hub_run_handler_context' LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION hub._run_handler(regproc, jsonb, text, jsonb) IS
'API: Private. Call an inbox handler as the function''s owner, within logistics_hub.user_code_timeout, with what its signature takes: (payload jsonb, message_type text, context jsonb), or (payload jsonb, message_type text), or (payload jsonb); settings it changes are undone when it returns.';

-- ---------------------------------------------------------------- privileges

REVOKE EXECUTE ON FUNCTION
	hub._open_exception(text, text, text, text, text, text, bigint),
	hub.contract_violation(text, jsonb),
	hub._json_time(jsonb),
	hub._state_event(text, text, text, text, text, text, text, timestamptz, text, text, text, text, jsonb, bigint),
	hub._at_or_past(text, text, text),
	hub._readiness_blocked(text, text, boolean, text),
	hub._readiness_try(text, text),
	hub._readiness_evaluate(text, text),
	hub.create_readiness_rule(text, text, text, text, text, text),
	hub.resolve_exception(bigint, text),
	hub._jsonpath_arg(text, text),
	hub.map_inbox(text, text, text, text, text, text, text, text, text, text, text, text, integer, interval, text),
	hub._inbox_mapping(text),
	hub._inbox_not_a_value(text, jsonpath, jsonb),
	hub._inbox_step(bigint, boolean),
	hub._inbox_apply_batch(bigint[]),
	hub._run_handler(regproc, jsonb, text, jsonb),
	hub.event_body(text, uuid, text, text, timestamptz, text, jsonb, text, integer),
	hub.event_body(text, uuid, text, text, timestamptz, text, jsonb, text, integer, text)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.event_body(text, uuid, text, text, timestamptz, text, jsonb, text, integer),
	hub.event_body(text, uuid, text, text, timestamptz, text, jsonb, text, integer, text)
TO hub_reader, hub_writer, hub_worker;
-- (the CHECK of hub.event_types.key_types: whoever writes the catalogue)
REVOKE EXECUTE ON FUNCTION hub._key_types_valid(text[], jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub._key_types_valid(text[], jsonb) TO hub_admin;
GRANT EXECUTE ON FUNCTION
	hub.create_readiness_rule(text, text, text, text, text, text),
	hub.resolve_exception(bigint, text),
	hub.map_inbox(text, text, text, text, text, text, text, text, text, text, text, text, integer, interval, text)
TO hub_admin;
GRANT EXECUTE ON FUNCTION hub.contract_violation(text, jsonb) TO hub_reader, hub_writer;
-- (hub.process_inbox runs with its caller's rights: these are what it calls)
GRANT EXECUTE ON FUNCTION hub._inbox_mapping(text), hub._inbox_step(bigint, boolean),
	hub._inbox_apply_batch(bigint[]), hub._run_handler(regproc, jsonb, text, jsonb) TO hub_admin;
GRANT EXECUTE ON FUNCTION hub._at_or_past(text, text, text), hub._readiness_blocked(text, text, boolean, text)
TO hub_reader;
GRANT SELECT ON hub.state_events, hub.exceptions, hub.readiness_rules, hub.readiness_fired,
	hub.readiness_pending, hub.inbox_mappings TO hub_reader;
GRANT INSERT, UPDATE, DELETE ON hub.state_events, hub.inbox_mappings, hub.readiness_rules TO hub_admin;
GRANT DELETE ON hub.readiness_fired TO hub_admin;
