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
		signing_secret text DEFAULT NULL, headers jsonb DEFAULT '{}', subject text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id integer;
BEGIN
	-- (before anything that would show the URL, password and all; a
	-- postgresql:// URI may name its user, never a password)
	IF (url ~* '^postgres(ql)?://' AND (url ~ '^[^/?#]*//[^/?#@]*:[^/?#]*@' OR url ~* '[?&]password='))
		OR (url !~* '^postgres(ql)?://' AND url ~ '^[^/?#]*(//)?[^/?#]*@')
		OR oauth2_token_url ~ '^[^/?#]*(//)?[^/?#]*@' THEN
		RAISE EXCEPTION 'endpoint URL must not contain user information'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A user name or password in the URL would be readable by hub_reader.',
				  HINT = 'Pass credentials as auth_kind and auth_secret (or oauth2_client_id and oauth2_client_secret).';
	END IF;
	IF url !~* '^(https?|postgres(ql)?|nats)://[^/?#[:space:]]+' THEN
		RAISE EXCEPTION 'invalid endpoint URL: "%"', url
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Only http://, https://, postgresql:// (a central hub) and nats:// URLs can be delivered to.';
	END IF;
	IF signing_secret IS NOT NULL AND signing_secret !~ '^whsec_[A-Za-z0-9+/=]+$' THEN
		RAISE EXCEPTION 'invalid signing secret' USING ERRCODE = 'invalid_parameter_value',
			HINT = 'A Standard Webhooks secret is whsec_ followed by base64.';
	END IF;
	PERFORM hub._check_credentials(name, auth_secret, oauth2_client_id, oauth2_client_secret);
	IF url ~* '^nats://' THEN
		subject := coalesce(subject, 'lhub.{event_type}.{aggregate_id}');
		PERFORM hub._check_setting('subject', length(subject) <= 200 AND subject ~
			'^([A-Za-z0-9_-]+|\{event_type\}|\{aggregate_id\})(\.([A-Za-z0-9_-]+|\{event_type\}|\{aggregate_id\}))*$',
			subject, 'at most 200 characters of dot-separated tokens, each letters, digits, _ and - or {event_type} or {aggregate_id}');
		PERFORM hub._check_setting('auth_kind', auth_kind IN ('none', 'bearer', 'basic'), auth_kind,
								   'none, bearer (a NATS token) or basic (user:password) for a nats:// endpoint');
	ELSIF subject IS NOT NULL THEN
		RAISE EXCEPTION 'only a nats:// endpoint has a subject' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM hub._check_setting('timeout_ms', timeout_ms BETWEEN 100 AND 600000, timeout_ms::text,
							   'between 100 and 600000 (milliseconds)');
	PERFORM hub._check_setting('max_concurrency', max_concurrency BETWEEN 1 AND 1000, max_concurrency::text,
							   'between 1 and 1000');
	PERFORM hub._check_setting('rate_limit', rate_limit IS NULL OR rate_limit BETWEEN 0.001 AND 100000,
							   rate_limit::text, 'NULL (no limit) or between 0.001 and 100000 requests a second');
	INSERT INTO hub.endpoints (name, url, kind, timeout_ms, max_concurrency, rate_limit, allow_redirects,
							   auth_kind, api_key_header, oauth2_token_url, headers, subject_template)
	VALUES (name, url, kind, timeout_ms, max_concurrency, rate_limit, allow_redirects,
			auth_kind, api_key_header, oauth2_token_url, coalesce(headers, '{}'), subject)
	RETURNING endpoint_id INTO id;
	-- sealed (hub._seal, 55_secrets.sql): only ciphertext reaches the table
	INSERT INTO hub._endpoint_secrets (endpoint_id, auth_secret, oauth2_client_id, oauth2_client_secret, signing_secrets)
	VALUES (id, hub._seal(id, 'auth_secret', auth_secret), hub._seal(id, 'oauth2_client_id', oauth2_client_id),
			hub._seal(id, 'oauth2_client_secret', oauth2_client_secret),
			CASE WHEN signing_secret IS NULL THEN '{}' ELSE ARRAY[hub._seal(id, 'signing_secrets', signing_secret)] END);
	RETURN id;
END
$$;
COMMENT ON FUNCTION hub.create_endpoint(text, text, text, integer, integer, numeric, boolean, text, text, text, text, text, text, text, jsonb, text) IS
'Register a receiver: an http(s):// URL, a postgresql:// URI of a central hub (its password as auth_secret) or a nats:// server list (NATS JetStream: subject names the subject template, default lhub.{event_type}.{aggregate_id}; auth_kind bearer is a token, basic user:password); everything after kind is optional and passed by name. Secrets are sealed (55000 when no secret key is loaded) into a table only hub_admin can read. Returns the endpoint id.';

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
			OR body_format IN ('batch', 'cloudevents_batch')) THEN
		RAISE EXCEPTION 'invalid lease_group: %', coalesce(lease_group::text, 'NULL')
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'A lease group holds 1 to 1000 events, and only a subscription of one event a request (body_format event or cloudevents) can have one.';
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
'Subscribe an endpoint to events matching a pattern (order.*, *.delivered, shipment.dispatched). Applies to events published from now on; use hub.replay_subscription to backfill. lease_group > 1 (one event a request) lets up to that many events routed together (with ordering per_key: of one key) share one delivery row, leased and completed at once, each still its own request (with per_key: sent one after another, each once the one before got through). Returns the subscription id; 22023 for a setting out of its range, an unknown body_format (event, cloudevents, batch, cloudevents_batch) or ordering (per_key, none).';

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
	 * gets its events the same way, in deliveries of up to lease_group
	 * events, each of which is still sent on its own: with none, in one
	 * run; with per_key, per aggregate (the group's aggregate_id is the
	 * key's, so the claim hands out a key's groups one after another, and
	 * the dispatcher sends a group's events one after another).  Events
	 * routed in one pass are batched together: under load a pass sees many,
	 * and an idle hub sends an event as soon as it is routed, in a batch of
	 * one.
	 */
	WITH s AS (SELECT * FROM hub.subscriptions FOR KEY SHARE), ev AS (
		SELECT s.subscription_id, s.endpoint_id, o.event_id, o.seq, o.aggregate_id, s.ordering, s.priority,
			   s.body_format IN ('batch', 'cloudevents_batch') OR s.lease_group > 1 AS batched,
			   CASE WHEN s.body_format IN ('batch', 'cloudevents_batch') THEN s.batch_max ELSE s.lease_group END AS batch_max,
			   -- (what a batch or lease group may span: per_key, a batch one
			   -- of 64 buckets of keys, a lease group one key; none, all)
			   CASE WHEN s.ordering <> 'per_key' THEN ''
					WHEN s.body_format IN ('batch', 'cloudevents_batch')
					THEN 'batch:' || abs(hashtext(o.aggregate_id) % 64)
					ELSE o.aggregate_id END AS span
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
		   CASE WHEN b.ordering = 'per_key' THEN b.span ELSE min(b.aggregate_id) END,
		   b.ordering, b.priority, array_agg(b.event_id ORDER BY b.seq)
	FROM (SELECT ev.*, (row_number() OVER (PARTITION BY ev.subscription_id, ev.span ORDER BY ev.seq) - 1)
						   / ev.batch_max AS chunk
		  FROM ev
		  WHERE ev.batched) b
	GROUP BY b.subscription_id, b.endpoint_id, b.ordering, b.priority, b.span, b.chunk
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
 * (workers/endpoints.c) get the same shares, so neither cap is ever
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
	batch_max integer, body text, traceparent text, sequential boolean);
COMMENT ON TYPE hub._claimed IS
'API: Private. One event of a claimed delivery (a batch delivery gives one row per event, batch_size of them, with the same delivery_id and lease_token); body is the event rendered for its receiver (hub.event_body), when the claim was asked to render; traceparent the event''s; sequential: a lease group of a per_key subscription, whose events go one after another.';

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
			   -- requests at once: one a batch, one a per_key lease group
			   -- (its events go one after another), one an event of another
			   CASE WHEN d.batch_events IS NULL OR d.ordering = 'per_key' THEN 1
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
			-- (per_key: no earlier open delivery of the key, looked for
			-- nearest first: a blocked successor's is right before it,
			-- where a forward scan would first read through the dead
			-- index entries of every delivered event of the key)
			AND (d.ordering = 'none' OR (
				SELECT p.seq FROM hub.deliveries p
				WHERE p.subscription_id = d.subscription_id AND p.aggregate_id = d.aggregate_id
					AND p.seq < d.seq AND p.state NOT IN ('delivered', 'skipped')
				ORDER BY p.seq DESC LIMIT 1) IS NULL)
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
									o.correlation_id, o.payload, p_source, o.contract_version, o.traceparent) END,
		   o.traceparent, c.batch_events IS NOT NULL AND c.ordering = 'per_key'
				AND s.body_format NOT IN ('batch', 'cloudevents_batch')
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
 * group goes out; in a per_key group only the events before it go out, the
 * ones after it leave the group too, given back together behind it.  Each
 * transform runs in a subtransaction of its own; with
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
	back bigint;
	later uuid[];
	part record;
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
		CONTINUE WHEN r.transform IS NULL OR r.delivery_id = ANY (failed) OR r.event_id = ANY (failed_events);
		BEGIN
			r.payload := hub._transform(r.transform, r.payload);
			rows[i] := r;
		EXCEPTION WHEN OTHERS THEN
			err := format('transform %s failed: %s (SQLSTATE %s)', r.transform, SQLERRM, SQLSTATE);
			IF r.sequential THEN
				-- an event of a per_key lease group: it fails alone, and
				-- the group's later events stay behind it, given back
				-- together without an attempt; the earlier ones go out
				later := ARRAY(SELECT l.event_id FROM unnest(rows[i + 1:]) l WHERE l.delivery_id = r.delivery_id);
				back := NULL;
				FOR part IN SELECT * FROM hub._split_group(r.delivery_id, r.lease_token, ARRAY[r.event_id], later) LOOP
					IF part.event_id = r.event_id THEN
						alone := part.delivery_id;
					ELSE
						back := part.delivery_id;
					END IF;
				END LOOP;
				PERFORM hub.fail_delivery(alone, r.lease_token, NULL, err, 0, NULL, NULL, p_worker, false);
				IF back IS NOT NULL THEN
					PERFORM hub.defer_delivery(back, r.lease_token, now());
				END IF;
				failed_events := failed_events || r.event_id || later;
				failed_groups := failed_groups || array_fill(r.delivery_id, ARRAY[1 + cardinality(later)]);
			ELSIF r.batch_size > 1 AND r.body_format IS DISTINCT FROM 'batch'
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
									c.correlation_id, c.payload, p_source,
									(SELECT o.contract_version FROM hub.outbox o WHERE o.event_id = c.event_id),
									c.traceparent) END,
		   c.traceparent, c.sequential
	FROM unnest(rows) WITH ORDINALITY AS c
	WHERE c.delivery_id <> ALL (failed) AND c.event_id <> ALL (failed_events)
	ORDER BY c.ordinality;
END
$$;
COMMENT ON FUNCTION hub._claim_transformed(integer, text, interval, integer, integer, integer, integer, integer, integer[], integer[], text, bigint) IS
'API: Private. hub._claim with subscription transforms applied; a transform that raises fails only its delivery (recorded, retried, never counted against the endpoint) and none of its events is handed out; for an event of a lease group, only that event, split out of its group (of a per_key group, with the group''s later events given back behind it).';

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
 * delivery functions change at high rate, nor throttled_until, which the
 * dispatchers set when the endpoint asks for a pause: the trigger's WHEN
 * leaves those updates alone) and every change or deletion of a subscription goes to
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
									 'circuit_failed_keys', 'circuit_probe_until', 'throttled_until'];
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
'API: Private. Trigger on hub.endpoints and hub.subscriptions: audit every change of an endpoint''s state or settings (not its circuit breaker nor its throttle) and every change or deletion of a subscription in hub.operator_audit, with the changed columns.';
REVOKE EXECUTE ON FUNCTION hub._audit_change() FROM PUBLIC;
CREATE TRIGGER endpoint_audit AFTER UPDATE ON hub.endpoints FOR EACH ROW
	WHEN ((pg_catalog.to_jsonb(OLD) - '{circuit_state,circuit_opened_at,consecutive_failures,circuit_failed_keys,circuit_probe_until,throttled_until}'::text[])
		  IS DISTINCT FROM
		  (pg_catalog.to_jsonb(NEW) - '{circuit_state,circuit_opened_at,consecutive_failures,circuit_failed_keys,circuit_probe_until,throttled_until}'::text[])
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
GRANT EXECUTE ON FUNCTION hub.publish(text, text, jsonb, text, text, jsonb, timestamptz, text) TO hub_writer;
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
	hub.create_endpoint(text, text, text, integer, integer, numeric, boolean, text, text, text, text, text, text, text, jsonb, text),
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
