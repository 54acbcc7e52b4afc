-- test/sim/hub_config.sql --- the hub's configuration for the seeds'
-- scenario (test/sim/scenario.py), written as a user would: endpoints,
-- pollers, mappings, subscriptions, a readiness rule, two handlers and two
-- transforms.  Nothing here calls a hub internal.  psql variables: the
-- simulated systems' base URLs (:erp, :wms, :tms, :carrier, :portal), the
-- portal's signing secret (:portal_secret) and the systems' credentials.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;

-- ---------------------------------------------------------------- endpoints
-- The ERP: OAuth2 client credentials; a circuit that opens after 3 keys
-- failed and probes again after 2 s (a demo's pace; 5 and 30 s by default).
SELECT hub.create_endpoint('erp', :'erp' || '/services/rest/record/v1', 'erp', timeout_ms => 3000,
	auth_kind => 'oauth2', oauth2_token_url => :'erp' || '/services/rest/auth/oauth2/v1/token',
	oauth2_client_id => :'erp_client_id', oauth2_client_secret => :'erp_client_secret');
UPDATE hub.endpoints SET circuit_failure_threshold = 3, circuit_cooloff = '2 seconds' WHERE name = 'erp';
SELECT hub.create_endpoint('wms', :'wms' || '/api', 'wms', timeout_ms => 3000,
	auth_kind => 'bearer', auth_secret => :'wms_key');
SELECT hub.create_endpoint('tms', :'tms' || '/api', 'tms', timeout_ms => 3000,
	auth_kind => 'api_key', api_key_header => 'X-API-Key', auth_secret => :'tms_key');
SELECT hub.create_endpoint('carrier', :'carrier' || '/v2', 'carrier', timeout_ms => 3000,
	auth_kind => 'basic', auth_secret => :'carrier_key' || ':');
SELECT hub.create_endpoint('portal', :'portal' || '/api', 'portal', timeout_ms => 3000,
	signing_secret => :'portal_secret');

-- ---------------------------------------------------------------- vocabularies
-- Our WMS records a pick confirmed short with a state of its own; the
-- ERP's return authorizations (RtnAuth) are not in the built-in profile.
INSERT INTO hub.status_map (system, lifecycle, code, qualifier, state, overlay, reason, note) VALUES
	('odoo', 'order', 'short', 'internal_pick', NULL, 'exception', 'short_pick', 'pick confirmed short'),
	('netsuite', 'return', 'RtnAuth:A', '', 'requested', NULL, NULL, 'Pending Approval'),
	('netsuite', 'return', 'RtnAuth:B', '', 'authorized', NULL, NULL, 'Pending Receipt'),
	('netsuite', 'return', 'RtnAuth:G', '', 'resolved', NULL, NULL, 'Refunded');
-- The ERP books item fulfilments itself (its sales order goes to Pending
-- Billing), so it may report shipped too.
INSERT INTO hub.state_owners (lifecycle, state, role) VALUES ('order', 'shipped', 'erp');
-- A demo's minute, not production's hour: show a system lagging after 10 s.
UPDATE hub.drift_tolerances SET tolerance = '10 seconds' WHERE lifecycle = 'order' AND role IN ('erp', 'wms');

-- ---------------------------------------------------------------- pollers
-- ERP sales orders and return authorizations: offset paging with hasMore.
SELECT hub.create_poller('erp', '/salesOrder', 'erp.sales_order', name => 'erp-orders',
	every => '1 second', retry_base => '1 second', retry_max => '2 seconds',
	items_path => 'items', pagination => 'offset', limit_param => 'limit', page_size => 4,
	has_more_path => 'hasMore');
SELECT hub.create_poller('erp', '/returnAuthorization', 'erp.return_authorization', name => 'erp-returns',
	every => '1 second', retry_base => '1 second', retry_max => '2 seconds',
	items_path => 'items', pagination => 'offset', limit_param => 'limit', page_size => 4,
	has_more_path => 'hasMore');
-- WMS pickings: a bare array, offset paging ending on a short page; its
-- write_date has whole seconds and many pickings share one, so a
-- picking's version is its content (no version field).
SELECT hub.create_poller('wms', '/stock.picking', 'wms.picking', name => 'wms-pickings',
	every => '1 second', retry_base => '1 second', retry_max => '2 seconds',
	pagination => 'offset', limit_param => 'limit', page_size => 5,
	query => '{"picking_type_code": "internal,outgoing"}');
SELECT hub.create_poller('wms', '/stock.picking', 'wms.return_picking', name => 'wms-returns',
	every => '1 second', retry_base => '1 second', retry_max => '2 seconds',
	pagination => 'offset', limit_param => 'limit', page_size => 5,
	query => '{"picking_type_code": "incoming"}');
-- Route planning: the routes it planned, page by page.
SELECT hub.create_poller('tms', '/routes', 'tms.route', name => 'tms-routes',
	every => '1 second', retry_base => '1 second', retry_max => '2 seconds',
	items_path => 'routes', pagination => 'page', limit_param => 'per_page', page_size => 3);
-- The carrier's tracker events: newest first, the next page before the
-- last id seen, incremental from the newest event time less 5 s.
SELECT hub.create_poller('carrier', '/events', 'carrier.tracker_event', name => 'carrier-events',
	every => '1 second', retry_base => '1 second', retry_max => '2 seconds',
	items_path => 'events', version_field => 'created_at',
	pagination => 'cursor', next_path => '$.events[last].id', cursor_param => 'before_id',
	has_more_path => 'has_more', limit_param => 'page_size', page_size => 5,
	since_param => 'start_datetime', lookback => '5 seconds');
-- The portal's return requests: a cursor in the body.
SELECT hub.create_poller('portal', '/returns', 'portal.return', name => 'portal-returns',
	every => '1 second', retry_base => '1 second', retry_max => '2 seconds',
	items_path => 'data', version_field => 'requested_at',
	pagination => 'cursor', next_path => 'next_cursor', cursor_param => 'cursor');

-- ---------------------------------------------------------------- mappings
SELECT hub.map_inbox('erp.sales_order', 'order', 'netsuite', key_path => '$.id', code_path => '$.status',
	occurred_at_path => '$.lastModifiedDate');
SELECT hub.map_inbox('erp.return_authorization', 'return', 'netsuite', key_path => '$.id',
	code_path => '$.status', occurred_at_path => '$.lastModifiedDate', parent_path => '$.createdFrom');
SELECT hub.map_inbox('wms.picking', 'order', 'odoo', key_path => '$.origin', code_path => '$.state',
	qualifier_path => '$.step', occurred_at_path => '$.write_date',
	children_path => '$.package_ids[*].name');
SELECT hub.map_inbox('wms.return_picking', 'return', 'odoo', key_path => '$.origin', code_path => '$.state',
	qualifier_path => '$.step', occurred_at_path => '$.write_date', parent_path => '$.sale_origin');
SELECT hub.map_inbox('carrier.tracker_event', 'shipment', 'easypost', key_path => '$.result.shipment_id',
	code_path => '$.result.status', occurred_at_path => '$.result.updated_at',
	parent_path => '$.result.order_ref');
SELECT hub.map_inbox('portal.return', 'return', 'portal', key_path => '$.id', code_path => '$.status',
	occurred_at_path => '$.requested_at', parent_path => '$.order_id');

-- ---------------------------------------------------------------- readiness
INSERT INTO hub.event_types (event_type, required_keys, description) VALUES
	('order.ready_for_dispatch', '{order_id,children}', 'Packed, every package labelled: plan its route'),
	('order.route_planned', '{order_id,route_id,stops}', 'Route planning planned the order''s route');
SELECT hub.create_readiness_rule('ready_for_dispatch', 'order.ready_for_dispatch', 'order', 'packed',
	child_lifecycle => 'shipment', child_state => 'label_created');

-- ---------------------------------------------------------------- handlers
CREATE SCHEMA demo;
COMMENT ON SCHEMA demo IS 'The seeds'' scenario: handlers and transforms written as a user would.';

-- A planned route read back from route planning becomes order.route_planned.
CREATE FUNCTION demo.route_planned(payload jsonb, message_type text, context jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	PERFORM hub.publish('order.route_planned', payload ->> 'order_id',
		jsonb_build_object('order_id', payload ->> 'order_id', 'route_id', payload ->> 'id',
						   'vehicle', payload ->> 'vehicle', 'stops', payload -> 'stops',
						   'eta', payload ->> 'eta'));
END $$;

-- After a carrier event moved a package, the order follows its least
-- advanced package (in transit, out for delivery, delivered).
CREATE FUNCTION demo.order_follows_packages(payload jsonb, message_type text, context jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	v_order text;
	v_least hub.shipment_status;
	v_unknown boolean;
BEGIN
	SELECT l.parent_key INTO v_order FROM hub.entity_links l
	WHERE l.child_lifecycle = 'shipment' AND l.child_key = payload #>> '{result,shipment_id}'
	  AND l.parent_lifecycle = 'order'
	ORDER BY l.linked_at LIMIT 1;
	IF v_order IS NULL THEN
		RETURN;
	END IF;
	SELECT min(s.state::hub.shipment_status), bool_or(s.state IS NULL) INTO v_least, v_unknown
	FROM hub.entity_links l
	LEFT JOIN hub.entity_state s ON s.lifecycle = 'shipment' AND s.business_key = l.child_key
	WHERE l.parent_lifecycle = 'order' AND l.parent_key = v_order AND l.child_lifecycle = 'shipment';
	IF NOT v_unknown AND v_least::text IN ('in_transit', 'out_for_delivery', 'delivered') THEN
		PERFORM hub.apply_status('order', v_order, 'easypost', v_least::text,
								 (payload #>> '{result,updated_at}')::timestamptz);
	END IF;
END $$;

-- The ERP's fields: its sales order, its ship status code, its
-- fulfilment status for an exception, the route, the return.
CREATE FUNCTION demo.erp_record(p jsonb) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
	SELECT jsonb_strip_nulls(jsonb_build_object(
		'salesOrder', coalesce(p ->> 'order_id', p ->> 'parent_key'),
		'returnId', p ->> 'return_id',
		'shipStatus', CASE WHEN p ->> 'lifecycle' = 'order' AND p ->> 'state' = 'shipped'
						   THEN hub.unmap_status('netsuite', 'order', 'shipped') END,
		'shipDate', CASE WHEN p ->> 'state' = 'shipped' THEN p ->> 'occurred_at' END,
		'deliveredDate', CASE WHEN p ->> 'state' = 'delivered' THEN p ->> 'occurred_at' END,
		'fulfilmentStatus', CASE WHEN p ->> 'overlay' = 'exception'
								 THEN initcap(replace(p ->> 'reason', '_', ' ')) END,
		'route', CASE WHEN p ? 'route_id' THEN p - 'order_id' END))
$$;

-- The portal's label (hub.portal_status) next to the canonical data.
CREATE FUNCTION demo.portal_view(p jsonb) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
	SELECT p || jsonb_strip_nulls(jsonb_build_object('portal_status',
		CASE WHEN p ? 'lifecycle' AND p ? 'state' AND p ->> 'change' IS DISTINCT FROM 'exception_cleared'
			 THEN hub.portal_status(p ->> 'lifecycle', p ->> 'state', p ->> 'overlay', p ->> 'reason') END))
$$;

GRANT USAGE ON SCHEMA demo TO hub_admin, hub_worker;
GRANT EXECUTE ON FUNCTION demo.route_planned(jsonb, text, jsonb), demo.order_follows_packages(jsonb, text, jsonb),
	demo.erp_record(jsonb), demo.portal_view(jsonb) TO hub_admin, hub_worker;

SELECT hub.register_handler('tms.route', 'demo.route_planned');
SELECT hub.register_handler('carrier.tracker_event', 'demo.order_follows_packages');

-- ---------------------------------------------------------------- subscriptions
-- Short retries so that an outage clears within the demo.
SELECT hub.subscribe('erp', 'order.*', transform => 'demo.erp_record',
	retry_base => '200 milliseconds', retry_max => '2 seconds', max_attempts => 100);
SELECT hub.subscribe('erp', 'return.*', transform => 'demo.erp_record',
	retry_base => '200 milliseconds', retry_max => '2 seconds', max_attempts => 100);
SELECT hub.subscribe('wms', 'order.released', retry_base => '200 milliseconds', retry_max => '2 seconds');
SELECT hub.subscribe('wms', 'return.authorized', retry_base => '200 milliseconds', retry_max => '2 seconds');
SELECT hub.subscribe('tms', 'order.ready_for_dispatch', retry_base => '200 milliseconds', retry_max => '2 seconds');
SELECT hub.subscribe('portal', 'order.*', transform => 'demo.portal_view', body_format => 'cloudevents',
	retry_base => '200 milliseconds', retry_max => '2 seconds');
SELECT hub.subscribe('portal', 'return.*', transform => 'demo.portal_view', body_format => 'cloudevents',
	retry_base => '200 milliseconds', retry_max => '2 seconds');
