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

/*
 * _key_types_valid --- the CHECK of hub.event_types.key_types: an object
 * whose keys are required keys and whose values name a JSON type.
 */
CREATE FUNCTION hub._key_types_valid(required_keys text[], key_types jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT key_types IS NOT NULL AND jsonb_typeof(key_types) = 'object'
		AND NOT EXISTS (SELECT FROM jsonb_each(key_types) t
						WHERE NOT (t.key = ANY (required_keys))
						   OR jsonb_typeof(t.value) IS DISTINCT FROM 'string'
						   OR t.value #>> '{}' NOT IN ('string', 'number', 'boolean', 'object', 'array'))
$$;
COMMENT ON FUNCTION hub._key_types_valid(text[], jsonb) IS
'API: Private. true when key_types is an object naming, for some required keys, one of the JSON types string, number, boolean, object, array.';

CREATE TABLE hub.event_types (
	event_type		text PRIMARY KEY CHECK (event_type ~ '^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$' AND length(event_type) <= 127),
	version			integer NOT NULL DEFAULT 1 CHECK (version > 0),
	required_keys	text[] NOT NULL DEFAULT '{}',
	description		text,
	builtin			boolean NOT NULL DEFAULT false,
	-- (0.3.0: after builtin, so that an updated catalogue has a fresh one's column order)
	key_types		jsonb NOT NULL DEFAULT '{}' CHECK (hub._key_types_valid(required_keys, key_types)),
	deprecated		boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE hub.event_types IS
'Catalogue of event types (<entity>.<verb>) with their contract: a version, the payload keys each event must carry (non-null, optionally typed) and whether the version is deprecated.';
COMMENT ON COLUMN hub.event_types.required_keys IS 'Payload keys every event of the type must carry with a non-null value.';
COMMENT ON COLUMN hub.event_types.key_types IS 'Types of required keys, {"key": "string" | "number" | "boolean" | "object" | "array"}; a key without an entry may hold any non-null value.';
COMMENT ON COLUMN hub.event_types.deprecated IS 'true: publishing the type still works but warns the publisher (WARNING 01P01) that its contract version is deprecated.';
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
	xid				xid8 NOT NULL,			-- set by the contract trigger
	contract_version integer,				-- set by the contract trigger (0.3.0)
	traceparent		text					-- set by the contract trigger (0.3.0)
);
CREATE INDEX outbox_correlation_idx ON hub.outbox (correlation_id) WHERE correlation_id IS NOT NULL;
COMMENT ON TABLE hub.outbox IS
'Published events, immutable. Write with hub.publish() or a plain INSERT in the application''s transaction; nothing is routed or delivered unless that transaction commits.';
COMMENT ON COLUMN hub.outbox.event_id IS 'The event''s id and the receivers'' idempotency key, kept by every replay: a UUID (version 8) leading with the publishing transaction''s xid8, assigned by the hub.';
COMMENT ON COLUMN hub.outbox.seq IS 'Publication order (commits may come out of this order; routing does not rely on it).';
COMMENT ON COLUMN hub.outbox.xid IS 'Transaction that published the event, for the routing watermark.';
COMMENT ON COLUMN hub.outbox.traceparent IS 'W3C Trace Context traceparent of the event (version 00 form), sent as the traceparent header of its push requests: the publisher''s, else a child span of the inbox message whose processing published it, else a new trace; NULL for events published before 0.3.0.';
COMMENT ON COLUMN hub.outbox.contract_version IS 'The version of the event type''s contract (hub.event_types) the event was checked against, stamped by the contract check and sent in every body (canonical contract_version, CloudEvents contractversion); NULL for an unknown type that was accepted.';

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
 * Trace context (W3C Trace Context, extension/trace_context.c): the contract
 * trigger gives every event a traceparent; these give inbox messages theirs
 * (an inbound value is outside data: invalid means a new trace, never an
 * error) and the events hub.process_inbox publishes a child span of it.
 */
CREATE FUNCTION hub.traceparent_valid(traceparent text) RETURNS boolean
	AS 'MODULE_PATHNAME', 'hub_traceparent_valid' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION hub.traceparent_valid(text) IS
'Whether a value is a W3C Trace Context traceparent that hub.publish accepts: version-traceid-parentid-flags in lower-case hex, version not ff, ids not all zeros; version 00 exactly 55 characters, a later version read by its first four fields.';
CREATE FUNCTION hub._traceparent_or_new(inbound text) RETURNS text
	AS 'MODULE_PATHNAME', 'hub_traceparent_or_new' LANGUAGE C VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION hub._traceparent_or_new(text) IS
'API: Private. An inbound traceparent in its version 00 form when valid, else a new trace (random trace and parent ids, flags 01); never an error.';
CREATE FUNCTION hub._traceparent_child(parent text) RETURNS text
	AS 'MODULE_PATHNAME', 'hub_traceparent_child' LANGUAGE C VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION hub._traceparent_child(text) IS
'API: Private. A child span of parent: its trace id and flags with a new random parent id; a new trace when parent is NULL or invalid; never an error.';
REVOKE EXECUTE ON FUNCTION hub._traceparent_or_new(text), hub._traceparent_child(text) FROM PUBLIC;

/*
 * publish --- in C (extension/outbox_publish.c): one INSERT through a plan
 * prepared once per backend, SECURITY INVOKER (the publisher needs INSERT on
 * hub.outbox, which hub_writer has), so the contract trigger and every
 * constraint apply exactly as to a plain INSERT.
 */
CREATE FUNCTION hub.publish(event_type text, aggregate_id text, payload jsonb,
							correlation_id text DEFAULT NULL, causation_id text DEFAULT NULL,
							headers jsonb DEFAULT NULL, occurred_at timestamptz DEFAULT now(),
							traceparent text DEFAULT NULL)
RETURNS uuid
	AS 'MODULE_PATHNAME', 'hub_publish' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION hub.publish(text, text, jsonb, text, text, jsonb, timestamptz, text) IS
'Publish an event in the caller''s transaction and return its id (the receivers'' idempotency key). The payload must satisfy the event type''s contract in hub.event_types. traceparent: the W3C Trace Context of the publisher (22023 when invalid); none: a child span of the inbox message being processed, else a new trace.';

-- ---------------------------------------------------------------- endpoints

CREATE TABLE hub.endpoints (
	endpoint_id		integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name			text NOT NULL UNIQUE,
	kind			text NOT NULL DEFAULT 'other' CHECK (kind IN ('erp', 'wms', 'tms', 'carrier', 'portal', 'other')),
	url				text NOT NULL CHECK (url ~* '^(https?|postgres(ql)?|nats)://[^/?#[:space:]]+'),
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
	created_at		timestamptz NOT NULL DEFAULT now(),
	throttled_until	timestamptz,
	subject_template text CHECK (length(subject_template) <= 200 AND subject_template ~
		'^([A-Za-z0-9_-]+|\{event_type\}|\{aggregate_id\})(\.([A-Za-z0-9_-]+|\{event_type\}|\{aggregate_id\}))*$')
);
COMMENT ON COLUMN hub.endpoints.subject_template IS
'nats:// endpoints: the NATS subject of an event, dot-separated tokens each a literal ([A-Za-z0-9_-]) or {event_type} (two tokens, domain.action) or {aggregate_id} (escaped: bytes other than [A-Za-z0-9_-] as %XX, "_" for none); lhub.{event_type}.{aggregate_id} when created without one. NULL for other transports.';
COMMENT ON COLUMN hub.endpoints.spread IS
'Shared by every dispatcher (up to max_concurrency of them), each with its share of max_concurrency and rate_limit, so that one high-volume endpoint uses every core; false (the default): one dispatcher, endpoint_id % logistics_hub.dispatchers, with the full limits.';
COMMENT ON COLUMN hub.endpoints.headers IS 'Fixed extra request headers {"Name": "value"}; readable by hub_reader, so never credentials (auth_kind api_key with api_key_header keeps a key header among the secrets).';
COMMENT ON COLUMN hub.endpoints.consecutive_failures IS
'Distinct business keys (aggregate ids) whose requests failed since the endpoint''s last success; a retry of a key already among them does not count again. The circuit opens when it reaches circuit_failure_threshold.';
COMMENT ON COLUMN hub.endpoints.circuit_failed_keys IS
'The keys counted in consecutive_failures, as hashtextextended(aggregate_id, 0); emptied by a success.';
COMMENT ON COLUMN hub.endpoints.throttled_until IS
'Set by the dispatchers when the endpoint answered 429 or 503 with Retry-After, or any response with X-RateLimit-Remaining: 0 and X-RateLimit-Reset: nothing is sent to it, pushed or polled, by any dispatcher before this time (capped by logistics_hub.retry_after_max). NULL or past: not throttled. Not audited (runtime state, like the circuit breaker''s columns).';
COMMENT ON COLUMN hub.endpoints.circuit_probe_until IS 'While half_open: the lease end of the one probe delivery handed out; no second probe before it.';
COMMENT ON TABLE hub.endpoints IS
'Receivers (ERP, WMS, TMS, carrier, portal over HTTP; a central hub over postgresql://; NATS JetStream over nats://) with their limits, auth kind and circuit-breaker state. Secrets live in hub._endpoint_secrets.';
COMMENT ON COLUMN hub.endpoints.url IS
'Where requests go; its scheme picks the transport: http:// or https:// (libcurl), postgresql:// or postgres:// (a central hub, libpq: README "Deployment beyond one server"), nats:// (NATS JetStream). Never a password.';
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
	CONSTRAINT subscriptions_lease_group_format
		CHECK (lease_group = 1 OR body_format NOT IN ('batch', 'cloudevents_batch')),
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
'Up to this many events routed together share one delivery row (one lease, one completion), each still sent as its own request with its own attempt rows; events that fail leave the group as single deliveries. With ordering per_key a group holds events of one key, sent one after another, each once the one before got through (the first that does not stops the rest, which stay behind it). Only for one event a request (formats event and cloudevents); 1 (the default): a delivery per event.';

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
