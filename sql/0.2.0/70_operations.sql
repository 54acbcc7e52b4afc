/*
 * 70_operations.sql --- what an operator and an analyst look at: dead
 * letters, sync status per endpoint and subscription, the trace of one
 * correlation id or aggregate, and the bulk replays (backfilling a new
 * endpoint included).  No view shows a secret.
 */

CREATE VIEW hub.dead_letters AS
SELECT d.delivery_id, e.name AS endpoint, d.subscription_id, o.event_id, o.event_type,
	   o.aggregate_id, o.correlation_id, d.attempts, d.last_error, d.updated_at AS dead_since
FROM hub.deliveries d
JOIN hub.endpoints e USING (endpoint_id)
JOIN hub.outbox o USING (event_id)
WHERE d.state = 'dead';
COMMENT ON VIEW hub.dead_letters IS
'Deliveries that gave up (permanent 4xx or attempts exhausted), with the last error; replay with hub.replay or unblock the key with hub.skip_delivery.';

CREATE VIEW hub.sync_status AS
SELECT e.name AS endpoint, e.kind, s.subscription_id, s.event_pattern,
	   e.enabled, e.paused, e.circuit_state,
	   count(*) FILTER (WHERE d.state = 'pending') AS pending,
	   count(*) FILTER (WHERE d.state = 'in_flight') AS in_flight,
	   count(*) FILTER (WHERE d.state = 'retry_wait') AS retrying,
	   count(*) FILTER (WHERE d.state = 'dead') AS dead,
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
'Per endpoint and subscription: pending, in flight, retrying and dead deliveries, the age of the oldest undelivered event, the last success, the success rate of attempts over the last hour, and the circuit state.';

CREATE FUNCTION hub.trace(correlation_id text)
RETURNS TABLE (at timestamptz, what text, event_id uuid, event_type text, aggregate_id text,
			   endpoint text, detail text)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT o.published_at, 'published', o.event_id, o.event_type, o.aggregate_id, NULL::text,
		   o.payload::text
	FROM hub.outbox o WHERE o.correlation_id = trace.correlation_id
	UNION ALL
	SELECT a.at, 'attempt ' || a.attempt || ': ' || a.outcome, o.event_id, o.event_type, o.aggregate_id, e.name,
		   concat_ws(' ', a.http_status, a.error, a.latency_ms || ' ms')
	FROM hub.outbox o
	JOIN hub.deliveries d ON d.event_id = o.event_id
	JOIN hub.endpoints e ON e.endpoint_id = d.endpoint_id
	JOIN hub.attempts a ON a.delivery_id = d.delivery_id
	WHERE o.correlation_id = trace.correlation_id
	UNION ALL
	SELECT d.updated_at, 'delivery ' || d.state, o.event_id, o.event_type, o.aggregate_id, e.name, d.last_error
	FROM hub.outbox o
	JOIN hub.deliveries d ON d.event_id = o.event_id
	JOIN hub.endpoints e ON e.endpoint_id = d.endpoint_id
	WHERE o.correlation_id = trace.correlation_id
	ORDER BY 1, 2
$$;
COMMENT ON FUNCTION hub.trace(text) IS
'Timeline of one correlation id across the outbox, its deliveries and every attempt.';

CREATE FUNCTION hub.replay_dead(subscription_id integer, reason text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
BEGIN
	UPDATE hub.deliveries d
	SET state = 'pending', attempts = 0, next_attempt_at = now(), last_error = NULL, updated_at = now()
	WHERE d.subscription_id = replay_dead.subscription_id AND d.state = 'dead';
	GET DIAGNOSTICS n = ROW_COUNT;
	PERFORM hub._audit('replay_dead', 'subscription ' || subscription_id, reason);
	RETURN n;
END
$$;
COMMENT ON FUNCTION hub.replay_dead(integer, text) IS
'Deliver every dead delivery of a subscription again (same event ids); audited. Returns how many.';

CREATE FUNCTION hub.replay_events(subscription_id integer, reason text,
		published_from timestamptz DEFAULT NULL, published_to timestamptz DEFAULT NULL,
		correlation_id text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s hub.subscriptions;
	n integer;
	m integer;
BEGIN
	SELECT * INTO s FROM hub.subscriptions x WHERE x.subscription_id = replay_events.subscription_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'subscription % does not exist', subscription_id USING ERRCODE = 'undefined_object';
	END IF;
	IF published_from IS NULL AND correlation_id IS NULL THEN
		RAISE EXCEPTION 'a replay needs a time range or a correlation id'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- events the subscription never had (e.g. a new endpoint): new deliveries
	INSERT INTO hub.deliveries (subscription_id, endpoint_id, event_id, seq, aggregate_id, ordering, priority)
	SELECT s.subscription_id, s.endpoint_id, o.event_id, o.seq, o.aggregate_id, s.ordering, s.priority
	FROM hub.outbox o
	WHERE (published_from IS NULL OR o.published_at >= published_from)
		AND (published_to IS NULL OR o.published_at < published_to)
		AND (replay_events.correlation_id IS NULL OR o.correlation_id = replay_events.correlation_id)
		AND split_part(s.event_pattern, '.', 1) IN ('*', split_part(o.event_type, '.', 1))
		AND split_part(s.event_pattern, '.', 2) IN ('*', split_part(o.event_type, '.', 2))
		AND (s.filter IS NULL OR o.payload @> s.filter)
	ON CONFLICT ON CONSTRAINT deliveries_subscription_id_event_id_key DO NOTHING;
	GET DIAGNOSTICS n = ROW_COUNT;
	-- deliveries it had and finished: again (leased ones are left alone)
	UPDATE hub.deliveries d
	SET state = 'pending', attempts = 0, next_attempt_at = now(), last_error = NULL, updated_at = now()
	FROM hub.outbox o
	WHERE d.subscription_id = s.subscription_id AND o.event_id = d.event_id
		AND d.state IN ('delivered', 'dead', 'skipped')
		AND (published_from IS NULL OR o.published_at >= published_from)
		AND (published_to IS NULL OR o.published_at < published_to)
		AND (replay_events.correlation_id IS NULL OR o.correlation_id = replay_events.correlation_id);
	GET DIAGNOSTICS m = ROW_COUNT;
	PERFORM hub._audit('replay_events',
		format('subscription %s, from %s to %s, correlation %s', subscription_id, published_from, published_to, correlation_id),
		reason);
	RETURN n + m;
END
$$;
COMMENT ON FUNCTION hub.replay_events(integer, text, timestamptz, timestamptz, text) IS
'Deliver every event of a time range or a correlation id to a subscription again, creating the deliveries it never had (backfill a newly added endpoint); in-flight ones are left alone; same event ids; audited. Returns how many deliveries were queued.';

REVOKE EXECUTE ON FUNCTION hub.trace(text), hub.replay_dead(integer, text),
	hub.replay_events(integer, text, timestamptz, timestamptz, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.trace(text) TO hub_reader;
GRANT EXECUTE ON FUNCTION hub.replay_dead(integer, text),
	hub.replay_events(integer, text, timestamptz, timestamptz, text) TO hub_admin;
GRANT SELECT ON hub.dead_letters, hub.sync_status TO hub_reader;
