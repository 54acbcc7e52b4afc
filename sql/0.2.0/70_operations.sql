/*
 * 70_operations.sql --- what an operator and an analyst look at: dead
 * letters, sync status per endpoint and subscription, the trace of one
 * correlation id.  No view shows a secret.  (Bulk replays and backfills are
 * hub.replay(subscription_id, ...) in 45_delivery.sql.)
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

REVOKE EXECUTE ON FUNCTION hub.trace(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.trace(text) TO hub_reader;
GRANT SELECT ON hub.dead_letters, hub.sync_status TO hub_reader;
