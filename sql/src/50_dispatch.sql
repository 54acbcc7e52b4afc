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
 * reserved names is the one workers/http_client.c refuses to send
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
		'idempotency-key', 'traceparent', 'tracestate'];
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
					  DETAIL = 'Content-Length, Transfer-Encoding, Host, Connection, Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade and Expect frame the message and are set by libcurl; Content-Type, Content-Encoding, webhook-id, webhook-timestamp, webhook-signature, Idempotency-Key, traceparent and tracestate are set by the hub.',
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
'Wake the dispatchers of the current database now and return how many of them are running (the workers of other databases served by the cluster are left alone). Publishing wakes them at commit by itself; call this after COMMIT PREPARED.';

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
			   oauth2_client_secret bytea, signing_secrets bytea[], usable boolean, usable_again timestamptz,
			   throttled_until timestamptz, subject_template text)
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
		   CASE WHEN e.circuit_state = 'open' THEN e.circuit_opened_at + e.circuit_cooloff ELSE now() END,
		   e.throttled_until, e.subject_template
	FROM hub.endpoints e
	LEFT JOIN hub._endpoint_secrets x ON x.endpoint_id = e.endpoint_id
	WHERE e.endpoint_id = ANY (ids)
$$;
COMMENT ON FUNCTION hub._dispatch_endpoints(integer[], integer, integer) IS
'API: Private. Settings and sealed secrets (opened by the workers in C) of endpoints for the dispatcher workers (never granted to anyone), with the concurrency and rate limit cut to the share of shard of nshards (hub._serves_share); not usable while paused, disabled or its circuit open (usable again at the circuit''s probe time), nor before throttled_until.';

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
 * workers/push_claim.c, claim_isolated): it claims again endpoint by
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

/*
 * _throttle_endpoint --- a dispatcher records that an endpoint asked for a
 * pause (429 or 503 with Retry-After, or X-RateLimit-Remaining: 0 with
 * X-RateLimit-Reset), so that every dispatcher, and this one after a
 * restart, sends nothing to it, pushed or polled, before until
 * (hub._dispatch_endpoints).  A later time wins over an earlier one; an
 * earlier one changes nothing.  SECURITY DEFINER: hub_worker changes no
 * other column of an endpoint.
 */
CREATE FUNCTION hub._throttle_endpoint(endpoint_id integer, until timestamptz) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF endpoint_id IS NULL OR until IS NULL OR until > now() + interval '1 day' THEN
		RAISE EXCEPTION 'invalid throttle: endpoint % until %', endpoint_id, until
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'An endpoint id and a time at most a day ahead (logistics_hub.retry_after_max is at most 1d) are needed.';
	END IF;
	UPDATE hub.endpoints e SET throttled_until = until
	WHERE e.endpoint_id = _throttle_endpoint.endpoint_id
		AND (e.throttled_until IS NULL OR e.throttled_until < until);
END
$$;
COMMENT ON FUNCTION hub._throttle_endpoint(integer, timestamptz) IS
'API: Private. Record that an endpoint asked for a pause until then (429 or 503 with Retry-After, or a rate limit used up): no dispatcher sends to it, pushed or polled, before then. A later time wins; an earlier one changes nothing.';

REVOKE EXECUTE ON FUNCTION hub._event_matches(text, jsonb, timestamptz, text, jsonb, timestamptz),
	hub._route_events_each(), hub._ready_endpoints(integer, integer), hub._pause_by_worker(integer, text, text),
	hub._throttle_endpoint(integer, timestamptz)
	FROM PUBLIC;
GRANT SELECT ON hub.unroutable_events TO hub_reader;
GRANT SELECT, DELETE ON hub.unroutable_events TO hub_admin;
