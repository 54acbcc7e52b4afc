/*
 * 70_operations.sql --- what an operator and an analyst look at: dead
 * letters, sync status per endpoint and subscription, the trace of one
 * correlation id or business key across outbox and inbox.  No view shows a
 * secret.  (Bulk replays and backfills are hub.replay_subscription(subscription_id, ...)
 * in 45_delivery.sql.)
 */

CREATE VIEW hub.dead_letters AS
SELECT d.delivery_id, e.name AS endpoint, d.subscription_id, o.event_id, o.event_type,
	   o.aggregate_id, o.correlation_id, d.attempts, d.last_error, d.updated_at AS dead_since,
	   coalesce(cardinality(d.batch_events), 1) AS events
FROM hub.deliveries d
JOIN hub.endpoints e USING (endpoint_id)
JOIN hub.outbox o USING (event_id)
WHERE d.state = 'dead';
COMMENT ON VIEW hub.dead_letters IS
'Deliveries that gave up (permanent 4xx or attempts exhausted), with the last error; replay with hub.replay_delivery or unblock the key with hub.skip_delivery. A batch delivery shows its smallest event and how many events it carries.';

/*
 * sync_status reads the open deliveries (deliveries_open_key_idx) and the
 * attempts of the lookback sync_status_lookback only (hub.thresholds, one
 * day by default), through attempts_at_idx: the lookback's bound is known
 * when the executor starts, so the attempts of the other days (their
 * partitions) are not read at all.  A subscription without a success in the
 * lookback shows last_success NULL.
 */
-- the attempts of a time window (sync_status, cycle times, hub.metrics())
CREATE INDEX attempts_at_idx ON hub.attempts (at);

CREATE VIEW hub.sync_status AS
WITH recent AS (
	SELECT x.subscription_id,
		   max(a.at) FILTER (WHERE a.outcome = 'delivered') AS last_success,
		   round(avg((a.outcome = 'delivered')::int) FILTER (WHERE a.at > now() - interval '1 hour'
			   AND a.outcome IN ('delivered', 'retry', 'dead')), 3) AS success_rate_1h
	FROM hub.attempts a
	JOIN hub.deliveries x USING (delivery_id)
	WHERE a.at > now() - greatest((SELECT t.value FROM hub.thresholds t WHERE t.name = 'sync_status_lookback'),
								  interval '1 hour')
	GROUP BY x.subscription_id
)
SELECT e.name AS endpoint, e.kind, s.subscription_id, s.event_pattern,
	   e.enabled, e.paused, e.circuit_state,
	   -- (events: a batch or a lease group counts each of its events)
	   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'pending'), 0) AS pending,
	   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'in_flight'), 0) AS in_flight,
	   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'retry_wait'), 0) AS retrying,
	   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'dead'), 0) AS dead,
	   -- (the publication time of the open deliveries only, a lookup each: a
	   -- join with the outbox was planned as a scan of all of it)
	   now() - min((SELECT o.published_at FROM hub.outbox o WHERE o.event_id = d.event_id))
		   FILTER (WHERE d.state IN ('pending', 'retry_wait', 'in_flight')) AS oldest_pending_age,
	   min(r.last_success) AS last_success,
	   min(r.success_rate_1h) AS success_rate_1h
FROM hub.subscriptions s
JOIN hub.endpoints e USING (endpoint_id)
LEFT JOIN recent r ON r.subscription_id = s.subscription_id
LEFT JOIN hub.deliveries d ON d.subscription_id = s.subscription_id
	AND d.state NOT IN ('delivered', 'skipped')
GROUP BY e.endpoint_id, s.subscription_id;
COMMENT ON VIEW hub.sync_status IS
'Per endpoint and subscription: pending, in flight, retrying and dead events (a batch or lease group counts each of its events), the age of the oldest undelivered event, the last success within the lookback sync_status_lookback (hub.thresholds; NULL: none in it), the success rate of attempts over the last hour, and the circuit state. Reads the open deliveries and the lookback''s attempts only.';

/*
 * trace --- the timeline of one correlation id, or of one business key
 * (aggregate), or both (rows matching either), across the outbox, the
 * deliveries and their attempts, and the inbox.  Correlation ids are
 * indexed on both sides; a business key is indexed in the inbox only: on
 * the outbox it is a scan, since an index on outbox.aggregate_id would be
 * paid by every publish.  Rows come in time order; rows at the same time
 * (the events of one transaction share their published_at) in publishing
 * order (hub.outbox.seq; inbox messages by inbox_id), then by what
 * happened.  A polled record (hub.inbox.poll_request_id) shows the poll
 * request that brought it first ('polled': URL, status, page), then its
 * reception.  Every row of an event or a message shows its W3C traceparent
 * (its trace id is the id to look up in an OpenTelemetry backend).
 */
CREATE FUNCTION hub.trace(correlation_id text DEFAULT NULL, aggregate text DEFAULT NULL)
RETURNS TABLE (at timestamptz, what text, event_id uuid, event_type text, aggregate_id text,
			   endpoint text, source text, message_id text, detail text, traceparent text)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
	IF trace.correlation_id IS NULL AND trace.aggregate IS NULL THEN
		RAISE EXCEPTION 'a trace needs a correlation id or an aggregate id'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Call hub.trace(''<correlation id>'') or hub.trace(aggregate => ''<business key>'').';
	END IF;
	RETURN QUERY
	WITH ev AS (
		SELECT o.event_id FROM hub.outbox o WHERE o.correlation_id = trace.correlation_id
		UNION
		SELECT o.event_id FROM hub.outbox o WHERE o.aggregate_id = trace.aggregate
	), o AS (
		SELECT o.* FROM hub.outbox o WHERE o.event_id IN (SELECT ev.event_id FROM ev)
	), inb AS (
		SELECT i.inbox_id FROM hub.inbox i WHERE i.correlation_id = trace.correlation_id
		UNION
		SELECT i.inbox_id FROM hub.inbox i WHERE i.aggregate_id = trace.aggregate
		UNION
		-- the messages that caused these events (a mapped record received
		-- without its business key: hub.process_inbox's causation id)
		SELECT substr(o.causation_id, 7)::bigint FROM o
		WHERE o.causation_id ~ '^inbox:[0-9]{1,18}$'
		UNION
		-- and those that opened the key's business exceptions
		SELECT m.id FROM hub.exceptions x, LATERAL (VALUES (x.message), (x.last_message)) m(id)
		WHERE trace.aggregate IS NOT NULL AND x.business_key = trace.aggregate AND m.id IS NOT NULL
	), i AS (
		SELECT i.* FROM hub.inbox i WHERE i.inbox_id IN (SELECT inb.inbox_id FROM inb)
	), dl AS (
		-- the deliveries of these events: their own, and the batches they
		-- are in (a scan of the batch deliveries: they have no index by event)
		SELECT o.event_id, d.delivery_id, d.endpoint_id, d.state, d.updated_at, d.last_error
		FROM o JOIN hub.deliveries d ON d.event_id = o.event_id
		UNION ALL
		SELECT o.event_id, d.delivery_id, d.endpoint_id, d.state, d.updated_at, d.last_error
		FROM o JOIN hub.deliveries d ON d.batch_events IS NOT NULL AND o.event_id = ANY (d.batch_events)
			AND d.event_id <> o.event_id
	)
	SELECT t.at, t.what, t.event_id, t.event_type, t.aggregate_id, t.endpoint, t.source, t.message_id, t.detail,
		   t.traceparent
	FROM (
	SELECT o.published_at AS at, 'published' AS what, o.event_id, o.event_type, o.aggregate_id,
		   NULL::text AS endpoint, NULL::text AS source, NULL::text AS message_id, o.payload::text AS detail,
		   o.seq AS ord, o.traceparent
	FROM o
	UNION ALL
	SELECT a.at, 'attempt ' || a.attempt || ': ' || a.outcome, o.event_id, o.event_type, o.aggregate_id, e.name,
		   NULL, NULL, concat_ws(' ', a.http_status, a.error, a.latency_ms || ' ms'), o.seq, o.traceparent
	FROM o
	JOIN dl d ON d.event_id = o.event_id
	JOIN hub.endpoints e ON e.endpoint_id = d.endpoint_id
	-- (an attempt of a lease group sent one of its events: that one's)
	JOIN hub.attempts a ON a.delivery_id = d.delivery_id AND (a.group_event_id IS NULL OR a.group_event_id = o.event_id)
	UNION ALL
	SELECT d.updated_at, 'delivery ' || d.state, o.event_id, o.event_type, o.aggregate_id, e.name,
		   NULL, NULL, d.last_error, o.seq, o.traceparent
	FROM o
	JOIN dl d ON d.event_id = o.event_id
	JOIN hub.endpoints e ON e.endpoint_id = d.endpoint_id
	UNION ALL
	-- a polled record: the request that brought it (hub.poll_requests)
	SELECT r.at, 'polled', NULL::uuid, i.message_type, i.aggregate_id, e.name, i.source, i.message_id,
		   concat_ws(' ', 'GET', r.url, '->', coalesce(r.http_status::text, r.error),
					 '(page ' || r.page || ': ' || r.records || ' records, ' || r.new_records || ' new)'),
		   i.inbox_id, i.traceparent
	FROM i
	JOIN hub.poll_requests r ON r.request_id = i.poll_request_id
	LEFT JOIN hub.pollers p ON p.poller_id = r.poller_id
	LEFT JOIN hub.endpoints e ON e.endpoint_id = p.endpoint_id
	UNION ALL
	SELECT i.received_at, 'received', NULL::uuid, i.message_type, i.aggregate_id, NULL, i.source, i.message_id,
		   i.payload::text || CASE WHEN i.duplicate_count > 0 THEN ' (' || i.duplicate_count || ' duplicates)' ELSE '' END,
		   i.inbox_id, i.traceparent
	FROM i
	UNION ALL
	SELECT coalesce(i.processed_at, i.last_duplicate_at, i.received_at), 'inbox ' || i.state, NULL::uuid,
		   i.message_type, i.aggregate_id, NULL, i.source, i.message_id,
		   concat_ws(' ', CASE WHEN i.attempts > 0 THEN i.attempts || ' failed attempts:' END, i.last_error),
		   i.inbox_id, i.traceparent
	FROM i
	WHERE i.state <> 'new'
	UNION ALL
	-- the parent and child keys inbound records named for the aggregate
	SELECT l.linked_at, CASE WHEN l.child_key = trace.aggregate THEN 'linked to parent' ELSE 'linked to child' END,
		   NULL::uuid, NULL, CASE WHEN l.child_key = trace.aggregate THEN l.parent_key ELSE l.child_key END,
		   NULL, l.system, NULL,
		   l.parent_lifecycle || ' ' || l.parent_key || ' -> ' || l.child_lifecycle || ' ' || l.child_key, 0, NULL
	FROM hub.entity_links l
	WHERE trace.aggregate IS NOT NULL AND (l.parent_key = trace.aggregate OR l.child_key = trace.aggregate)
	UNION ALL
	-- its business exceptions, opened and resolved
	SELECT x.opened_at, 'exception ' || x.kind, NULL::uuid, NULL, x.business_key, NULL, x.system, NULL,
		   concat_ws(' ', x.code, x.detail, CASE WHEN x.reports > 1 THEN '(' || x.reports || ' reports)' END), 0, NULL
	FROM hub.exceptions x
	WHERE trace.aggregate IS NOT NULL AND x.business_key = trace.aggregate
	UNION ALL
	SELECT x.resolved_at, 'exception ' || x.kind || ' resolved', NULL::uuid, NULL, x.business_key, NULL, x.system,
		   NULL, x.resolution, 0, NULL
	FROM hub.exceptions x
	WHERE trace.aggregate IS NOT NULL AND x.business_key = trace.aggregate AND x.resolved_at IS NOT NULL
	) t
	ORDER BY t.at, t.ord, t.what;
END
$$;
COMMENT ON FUNCTION hub.trace(text, text) IS
'Timeline of one correlation id or one business key (aggregate => ...) across the outbox, its deliveries and every attempt, and the inbox (messages received with that correlation id or aggregate id, a polled record''s poll request, and their processing), the messages that caused these events (causation id inbox:<id>), and for a business key its parent and child links (hub.entity_links), business exceptions (hub.exceptions) and the messages that opened them, in time order and, at the same time, in publishing order (the events of one transaction share their time). Rows of an event or an inbound message show its W3C traceparent (characters 4 to 35: the trace id, to follow in an OpenTelemetry backend). 22023 when neither is given.';

REVOKE EXECUTE ON FUNCTION hub.trace(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.trace(text, text) TO hub_reader;
GRANT SELECT ON hub.dead_letters, hub.sync_status TO hub_reader;
