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
 * Concurrency: SELECT ... FOR UPDATE of the key's row serializes all
 * reports of one key; a new key's row is inserted with its final values
 * (INSERT ... ON CONFLICT DO NOTHING: when another transaction inserted the
 * key first, we wait for it and classify again against its row, nothing
 * written yet); distinct keys never wait.
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
	-- (0.3.0: read by a mapping's site_path, hub.map_inbox)
	site				text CHECK (octet_length(site) <= 256),
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
COMMENT ON COLUMN hub.entity_state.site IS
'The warehouse or site of the key, read from its records by their mapping''s site_path (hub.map_inbox): the latest record processed that names one wins; NULL while none has. The site dimension of hub.backlog_by_site and the release views.';

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

/*
 * _apply_canonical --- the body of hub.apply_canonical_status and
 * hub.apply_status, with what a mapped inbound record adds (65_flow.sql):
 * the record itself (its fields fill the keys a canonical event's contract
 * needs), the partner, the parent key and the inbox message.  When the
 * state moves or an overlay is raised or cleared, the canonical events
 * (hub.state_events) are published here, in the caller's transaction, so
 * a state change and its event commit together or not at all; readiness
 * rules are evaluated after them.
 */
CREATE FUNCTION hub._apply_canonical(lifecycle text, business_key text, system text,
		code text, occurred_at timestamptz, state text, overlay_kind text, reason text,
		qualifier text, correction boolean, p_record jsonb, p_partner text,
		p_parent_lifecycle text, p_parent_key text, p_inbox_id bigint)
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
	o_hold		boolean;
	o_hold_reason text;
	o_exception	text;
	v_new		boolean;
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
	-- (hub._system_role, inline: this runs for every report)
	SELECT sy.role INTO v_role FROM hub.systems sy
	WHERE sy.system = _apply_canonical.system AND sy.qualifier IN ('', coalesce(_apply_canonical.qualifier, ''))
	ORDER BY sy.qualifier DESC LIMIT 1;
	IF v_role IS NULL THEN
		RAISE EXCEPTION 'unknown system: "%"', system
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Every reporting system needs a role (erp, wms, tms, carrier or portal).',
				  HINT = format('Add it with INSERT INTO hub.systems (system, role) VALUES (%L, ''carrier'').', system);
	END IF;

	-- one row lock per key serializes every report of it; a new key is
	-- inserted with its final values below, once, in one statement (ON
	-- CONFLICT: a concurrent insert of it makes us wait for its
	-- transaction and start over against its row)
	SELECT * INTO e FROM hub.entity_state es
	WHERE es.lifecycle = _apply_canonical.lifecycle
	  AND es.business_key = _apply_canonical.business_key
	FOR UPDATE;
	v_new := NOT FOUND;
	IF v_new THEN
		e.on_hold := false;
	END IF;

	-- owner of the reported state; overlays from roles owning any state
	SELECT coalesce(bool_or(o.state = m_state), false) OR m_state IS NULL, count(*) > 0
	INTO v_owner, v_overlays
	FROM hub.state_owners o
	WHERE o.lifecycle = _apply_canonical.lifecycle AND o.role = v_role;

	r.previous_state := e.state;
	o_hold := e.on_hold;
	o_hold_reason := e.on_hold_reason;
	o_exception := e.exception_reason;
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

	IF v_new THEN
		INSERT INTO hub.entity_state AS es
			(lifecycle, business_key, state, state_system, state_occurred_at, last_advanced_at, on_hold,
			 on_hold_reason, on_hold_since, exception_reason, exception_since)
		VALUES (_apply_canonical.lifecycle, _apply_canonical.business_key, e.state, e.state_system,
				e.state_occurred_at, e.last_advanced_at, e.on_hold, e.on_hold_reason, e.on_hold_since,
				e.exception_reason, e.exception_since)
		ON CONFLICT DO NOTHING;
		IF NOT FOUND THEN
			-- another transaction made the key first (it has committed now):
			-- nothing is written yet, so classify again against its row
			RETURN hub._apply_canonical(lifecycle, business_key, system, code, occurred_at, $6, $7, $8,
										qualifier, correction, p_record, p_partner, p_parent_lifecycle,
										p_parent_key, p_inbox_id);
		END IF;
	ELSE
		UPDATE hub.entity_state es
		SET state = e.state, state_system = e.state_system, state_occurred_at = e.state_occurred_at,
			last_advanced_at = e.last_advanced_at, on_hold = e.on_hold,
			on_hold_reason = e.on_hold_reason, on_hold_since = e.on_hold_since,
			exception_reason = e.exception_reason, exception_since = e.exception_since,
			updated_at = now()
		WHERE es.lifecycle = _apply_canonical.lifecycle AND es.business_key = _apply_canonical.business_key;
	END IF;

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
		WHERE c.lifecycle = _apply_canonical.lifecycle
		  AND c.business_key = _apply_canonical.business_key
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

	-- the canonical events of what moved, in this transaction (65_flow.sql):
	-- the state, then each overlay raised or cleared; a duplicate, stale,
	-- not-owner or informational report moves nothing and publishes nothing
	IF r.outcome IN ('created', 'advanced', 'corrected') THEN
		PERFORM hub._state_event(lifecycle, business_key, e.state, e.state, r.previous_state, r.outcome,
								 system, occurred_at, NULL, p_partner, p_parent_lifecycle, p_parent_key,
								 p_record, p_inbox_id);
	END IF;
	IF e.exception_reason IS DISTINCT FROM o_exception THEN
		PERFORM hub._state_event(lifecycle, business_key,
								 CASE WHEN e.exception_reason IS NULL THEN 'exception_cleared' ELSE 'exception' END,
								 e.state, r.previous_state, CASE WHEN e.exception_reason IS NULL THEN 'cleared' ELSE 'raised' END,
								 system, occurred_at, coalesce(e.exception_reason, o_exception), p_partner,
								 p_parent_lifecycle, p_parent_key, p_record, p_inbox_id);
	END IF;
	IF e.on_hold IS DISTINCT FROM o_hold THEN
		PERFORM hub._state_event(lifecycle, business_key,
								 CASE WHEN e.on_hold THEN 'on_hold' ELSE 'hold_released' END,
								 e.state, r.previous_state, CASE WHEN e.on_hold THEN 'raised' ELSE 'cleared' END,
								 system, occurred_at, CASE WHEN e.on_hold THEN e.on_hold_reason ELSE o_hold_reason END,
								 p_partner, p_parent_lifecycle, p_parent_key, p_record, p_inbox_id);
	END IF;
	-- readiness rules: evaluated whenever a member's state or overlay moved
	IF (r.outcome IN ('created', 'advanced', 'corrected') OR e.exception_reason IS DISTINCT FROM o_exception
		OR e.on_hold IS DISTINCT FROM o_hold)
	   AND EXISTS (SELECT FROM hub.readiness_rules) THEN
		PERFORM hub._readiness_evaluate(lifecycle, business_key);
	END IF;

	r.state := e.state;
	r.on_hold := e.on_hold;
	r.exception_reason := e.exception_reason;
	RETURN r;
END
$$;
COMMENT ON FUNCTION hub._apply_canonical(text, text, text, text, timestamptz, text, text, text, text, boolean, jsonb, text, text, text, bigint) IS
'API: Private. hub.apply_canonical_status with the context of a mapped inbound record (record, partner, parent key, inbox message): applies the report and publishes the canonical events of what moved (hub.state_events), then evaluates readiness rules.';

CREATE FUNCTION hub.apply_canonical_status(lifecycle text, business_key text, system text,
		code text, occurred_at timestamptz, state text, overlay_kind text DEFAULT NULL,
		reason text DEFAULT NULL, qualifier text DEFAULT NULL, correction boolean DEFAULT false)
RETURNS hub.apply_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	-- (plpgsql, not sql: a SQL function is planned again in every
	-- subtransaction, such as a handler's in hub.process_inbox)
	RETURN hub._apply_canonical($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, NULL, NULL, NULL, NULL);
END
$$;
COMMENT ON FUNCTION hub.apply_canonical_status(text, text, text, text, timestamptz, text, text, text, text, boolean) IS
'Apply an already mapped report (canonical state and/or overlay) of a system for a business key: classify it against the canonical state, advance on advance/advance_with_gap from the state''s owner, keep duplicate/stale/non-owner reports in history only, record a conflict and raise the exception overlay. When the state moves or an overlay is raised or cleared, the canonical event of hub.state_events is published in the same transaction (a duplicate, stale, not-owner or informational report publishes nothing; an event whose contract the report cannot satisfy is not published and opens a contract_violation exception in hub.exceptions). Every call appends to hub.status_history. Errors: 22023 for an unknown lifecycle, system, state or overlay; 22001 for a business key longer than 256 bytes.';

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
	RETURN hub._apply_canonical(lifecycle, business_key, system, code, occurred_at,
								m.state, m.overlay, m.reason, qualifier, correction,
								NULL, partner, NULL, NULL, NULL);
END
$$;
COMMENT ON FUNCTION hub.apply_status(text, text, text, text, timestamptz, text, boolean, text) IS
'Map a system''s status code for a business key with hub.map_status (qualifier and partner as there) and apply it with hub.apply_canonical_status: advance on advance/advance_with_gap from the state''s owner, keep duplicate/stale/non-owner reports in history only, record a conflict and raise the exception overlay; publish the canonical events of what moved (hub.state_events) in the same transaction. Every call appends to hub.status_history. Errors: those of hub.map_status for an unknown code; 22023 for an unknown lifecycle or system; 22001 for a business key longer than 256 bytes.';

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

-- ---------------------------------------------------------------- links

/*
 * entity_links --- parent and child keys named by inbound records (a
 * tracker names its order, a pack record lists its packages), recorded by
 * the declared mappings of 65_flow.sql (hub.map_inbox: parent_path,
 * children_path).  Readiness rules and the views follow them; a link is
 * kept once (the first record that named it), never moved.
 */
/*
 * No CHECK constraints: only the hub writes the table (nobody is granted
 * INSERT), from values it has checked (lifecycles of hub.inbox_mappings,
 * keys non-empty and at most 256 bytes, never a key linked to itself), and
 * PostgreSQL 15 reads a table's CHECK expressions anew for every INSERT
 * statement, which a link written per inbound message would pay each time.
 */
CREATE TABLE hub.entity_links (
	parent_lifecycle	text NOT NULL,
	parent_key			text NOT NULL,
	child_lifecycle		text NOT NULL,
	child_key			text NOT NULL,
	system				text NOT NULL,
	inbox_id			bigint,
	linked_at			timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (parent_lifecycle, parent_key, child_lifecycle, child_key)
);
CREATE INDEX entity_links_child_idx ON hub.entity_links (child_lifecycle, child_key);
COMMENT ON TABLE hub.entity_links IS
'Parent and child business keys (an order and its shipments or packages) as inbound records name them through hub.map_inbox (parent_path, children_path); read by readiness rules, hub.trace and the drift and stale views.';
COMMENT ON COLUMN hub.entity_links.system IS 'The system whose record named the link.';
COMMENT ON COLUMN hub.entity_links.inbox_id IS 'The hub.inbox message that named the link first (NULL when linked otherwise).';

-- ---------------------------------------------------------------- views

CREATE VIEW hub.drift AS
SELECT e.lifecycle, e.business_key, e.state AS canonical_state, s.system, s.role,
	   s.code AS system_code, s.state AS system_state,
	   greatest(e.state_occurred_at, s.state_since) AS disagreeing_since,
	   now() - greatest(e.state_occurred_at, s.state_since) AS disagreeing_for,
	   t.tolerance, pl.parent_lifecycle, pl.parent_key
FROM hub.entity_state e
JOIN hub.entity_system_state s USING (lifecycle, business_key)
JOIN hub.drift_tolerances t ON t.lifecycle = e.lifecycle AND t.role = s.role
LEFT JOIN LATERAL (
	SELECT l.parent_lifecycle, l.parent_key FROM hub.entity_links l
	WHERE l.child_lifecycle = e.lifecycle AND l.child_key = e.business_key
	ORDER BY l.linked_at, l.parent_lifecycle, l.parent_key LIMIT 1) pl ON true
WHERE e.state IS NOT NULL AND s.state IS NOT NULL AND s.state <> e.state
  AND now() - greatest(e.state_occurred_at, s.state_since) > t.tolerance
  -- a coarser vocabulary agrees when its code is the one the canonical
  -- state maps to in it (portal "Processing" covers released..packed);
  -- a join, not a function call a row (issue 21: a plpgsql call with an
  -- exception block, a subtransaction a row, made the view 35 times a
  -- count of its tables)
  AND NOT EXISTS (SELECT FROM hub.status_unmap u
				  WHERE u.system = lower(s.system) AND u.lifecycle = e.lifecycle AND u.state = e.state
					AND u.code = s.code);
COMMENT ON VIEW hub.drift IS
'Keys where a system''s last reported state differs from the canonical state for longer than its role''s tolerance (hub.drift_tolerances), with since when and for how long (measured from the later of the canonical state''s time and the system''s first report of its own state), and the key''s parent (hub.entity_links: its first) where known.';

CREATE VIEW hub.stale_entities AS
SELECT e.lifecycle, e.business_key, e.state, e.last_advanced_at,
	   now() - e.last_advanced_at AS idle_for, t.threshold,
	   e.on_hold, e.exception_reason, pl.parent_lifecycle, pl.parent_key
FROM hub.entity_state e
JOIN hub.stale_thresholds t ON t.lifecycle = e.lifecycle AND t.state = e.state
LEFT JOIN LATERAL (
	SELECT l.parent_lifecycle, l.parent_key FROM hub.entity_links l
	WHERE l.child_lifecycle = e.lifecycle AND l.child_key = e.business_key
	ORDER BY l.linked_at, l.parent_lifecycle, l.parent_key LIMIT 1) pl ON true
WHERE now() - e.last_advanced_at > t.threshold;
COMMENT ON VIEW hub.stale_entities IS
'Entities without progress for longer than the threshold of their state (hub.stale_thresholds), e.g. an order packed for more than 24 hours, with the key''s parent (hub.entity_links: its first) where known.';

-- ---------------------------------------------------------------- privileges

REVOKE EXECUTE ON FUNCTION
	hub.apply_status(text, text, text, text, timestamptz, text, boolean, text),
	hub.apply_canonical_status(text, text, text, text, timestamptz, text, text, text, text, boolean),
	hub._system_role(text, text),
	hub._refuse_history_change(),
	hub.resolve_conflict(bigint, text),
	hub._apply_canonical(text, text, text, text, timestamptz, text, text, text, text, boolean, jsonb, text, text, text, bigint)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.resolve_conflict(bigint, text) TO hub_admin;
GRANT EXECUTE ON FUNCTION hub.apply_status(text, text, text, text, timestamptz, text, boolean, text),
	hub.apply_canonical_status(text, text, text, text, timestamptz, text, text, text, text, boolean)
	TO hub_writer;
GRANT SELECT ON hub.drift, hub.stale_entities, hub.entity_state, hub.entity_system_state,
	hub.status_history, hub.status_conflicts, hub.systems, hub.state_owners,
	hub.stale_thresholds, hub.drift_tolerances, hub.entity_links TO hub_reader;
GRANT INSERT, UPDATE, DELETE ON hub.systems, hub.state_owners, hub.stale_thresholds,
	hub.drift_tolerances TO hub_admin;
GRANT UPDATE (resolved_at, resolution) ON hub.status_conflicts TO hub_admin;
