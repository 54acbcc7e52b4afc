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
