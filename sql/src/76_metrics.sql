/*
 * 76_metrics.sql --- hub.metrics(): what an operator scrapes, in the
 * Prometheus text exposition format 0.0.4 (one # HELP and # TYPE per
 * family, then its samples; label values escaped: backslash, double quote
 * and newline), names logistics_hub_*:
 *   events published (a counter: the outbox's sequence, never reset by
 *   retention); delivery attempts and poll requests by endpoint or poller
 *   and outcome, and the delivery latency (publication to the delivered
 *   attempt) as a histogram, over the window metrics_window (hub.thresholds:
 *   the attempts are an audit that retention drops by the day, so a total
 *   over them would fall back at each drop; a window is what attempts_at_idx
 *   reads cheaply); backlog, dead events and oldest pending age per
 *   endpoint; backlog, oldest pending age, overdue time and failures per
 *   poller; circuit states; inbox backlog and failed messages; open
 *   exceptions by kind; drift and stale keys by lifecycle.
 * Worker restarts are not here (the workers' view hub.workers exposes them).
 * Served by SQL (SELECT hub.metrics()) to any collector that can run a
 * query; sql/postgres_exporter.yml gives prometheus-postgres-exporter the
 * same figures as queries.
 */

-- failed inbox messages, for hub.metrics(): only dead and unhandled rows
-- enter it (rare), and state is in the inbox's partial indexes already, so
-- no update that was HOT stops being so
CREATE INDEX inbox_failed_idx ON hub.inbox (inbox_id) WHERE state IN ('dead', 'unhandled');

CREATE FUNCTION hub._prom_label(value text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(value, E'\\', E'\\\\'), '"', E'\\"'), E'\n', E'\\n')
$$;
COMMENT ON FUNCTION hub._prom_label(text) IS
'API: Private. A label value escaped for the Prometheus text format: backslash, double quote and newline.';

CREATE FUNCTION hub._prom_family(name text, type text, help text, samples text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT pg_catalog.format(E'# HELP %s %s\n# TYPE %s %s\n', name,
							 pg_catalog.replace(pg_catalog.replace(help, E'\\', E'\\\\'), E'\n', E'\\n'),
							 name, type) || coalesce(samples, '')
$$;
COMMENT ON FUNCTION hub._prom_family(text, text, text, text) IS
'API: Private. One metric family of the Prometheus text format: # HELP (escaped), # TYPE, then its sample lines.';

CREATE FUNCTION hub._prom_seconds(i interval) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(pg_catalog.round(pg_catalog.date_part('epoch', i)::numeric, 3)::text, 'NaN')
$$;
COMMENT ON FUNCTION hub._prom_seconds(interval) IS
'API: Private. An interval as seconds for the Prometheus text format (NaN for NULL).';

CREATE FUNCTION hub.metrics() RETURNS text
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	w interval := (SELECT t.value FROM hub.thresholds t WHERE t.name = 'metrics_window');
	wtxt text := (SELECT t.value::text FROM hub.thresholds t WHERE t.name = 'metrics_window');
	r text := '';
BEGIN
	r := r || hub._prom_family('logistics_hub_events_published_total', 'counter',
		'Events published to the outbox since the extension was created (the outbox sequence: a publication rolled back counts too).',
		format(E'logistics_hub_events_published_total %s\n',
			   coalesce(pg_catalog.pg_sequence_last_value(
				   pg_catalog.pg_get_serial_sequence('hub.outbox', 'seq')::regclass), 0)));

	-- ---------------------------------------------------------- deliveries
	r := r || hub._prom_family('logistics_hub_delivery_attempts', 'gauge',
		'Delivery attempts in the last ' || wtxt || ' (metrics_window), by endpoint and outcome.',
		(SELECT string_agg(format(E'logistics_hub_delivery_attempts{endpoint="%s",outcome="%s"} %s\n',
								  hub._prom_label(coalesce(en.name, '#' || c.endpoint_id)), c.outcome, c.n),
						   '' ORDER BY en.name, c.outcome)
		 FROM (SELECT d.endpoint_id, a.outcome, count(*) AS n
			   FROM hub.attempts a JOIN hub.deliveries d ON d.delivery_id = a.delivery_id
			   WHERE a.at > now() - w
			   GROUP BY d.endpoint_id, a.outcome) c
		 LEFT JOIN hub.endpoints en ON en.endpoint_id = c.endpoint_id));

	r := r || hub._prom_family('logistics_hub_delivery_latency_seconds', 'histogram',
		'Time from publication to the delivered attempt, for deliveries in the last ' || wtxt || ' (metrics_window), by endpoint.',
		(WITH l AS (
			SELECT d.endpoint_id, pg_catalog.date_part('epoch', a.at - o.published_at) AS s
			FROM hub.attempts a
			JOIN hub.deliveries d ON d.delivery_id = a.delivery_id
			JOIN hub.outbox o ON o.event_id = coalesce(a.group_event_id, d.event_id)
			WHERE a.at > now() - w AND a.outcome = 'delivered'
		 ), b (ord, le, le_text) AS (VALUES
			(1, 0.05, '0.05'), (2, 0.1, '0.1'), (3, 0.25, '0.25'), (4, 0.5, '0.5'), (5, 1, '1'),
			(6, 2.5, '2.5'), (7, 5, '5'), (8, 10, '10'), (9, 30, '30'), (10, 60, '60'),
			(11, 300, '300'), (12, NULL, '+Inf'))
		 SELECT string_agg(x.line, '' ORDER BY x.ep, x.ord)
		 FROM (
			SELECT en.name AS ep, b.ord,
				   format(E'logistics_hub_delivery_latency_seconds_bucket{endpoint="%s",le="%s"} %s\n',
						  hub._prom_label(en.name), b.le_text, count(*) FILTER (WHERE b.le IS NULL OR l.s <= b.le)) AS line
			FROM l JOIN hub.endpoints en ON en.endpoint_id = l.endpoint_id CROSS JOIN b
			GROUP BY en.name, b.ord, b.le_text
			UNION ALL
			SELECT en.name, 13, format(E'logistics_hub_delivery_latency_seconds_sum{endpoint="%s"} %s\n'
									   'logistics_hub_delivery_latency_seconds_count{endpoint="%s"} %s\n',
									   hub._prom_label(en.name), round(sum(l.s)::numeric, 3),
									   hub._prom_label(en.name), count(*))
			FROM l JOIN hub.endpoints en ON en.endpoint_id = l.endpoint_id
			GROUP BY en.name) x));

	r := r || (WITH o AS (
			SELECT d.endpoint_id,
				   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state IN ('pending', 'retry_wait', 'in_flight')), 0) AS backlog,
				   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'dead'), 0) AS dead,
				   now() - min(ob.published_at) FILTER (WHERE d.state IN ('pending', 'retry_wait', 'in_flight')) AS oldest
			FROM hub.deliveries d
			JOIN hub.outbox ob ON ob.event_id = d.event_id
			WHERE d.state NOT IN ('delivered', 'skipped')
			GROUP BY d.endpoint_id
		), e AS (
			SELECT en.name, en.circuit_state, coalesce(o.backlog, 0) AS backlog, coalesce(o.dead, 0) AS dead,
				   coalesce(o.oldest, interval '0') AS oldest
			FROM hub.endpoints en LEFT JOIN o ON o.endpoint_id = en.endpoint_id
		)
		SELECT hub._prom_family('logistics_hub_endpoint_backlog_events', 'gauge',
				'Events waiting for delivery (pending, retrying or in flight), by endpoint.',
				string_agg(format(E'logistics_hub_endpoint_backlog_events{endpoint="%s"} %s\n', hub._prom_label(e.name), e.backlog), '' ORDER BY e.name))
			|| hub._prom_family('logistics_hub_endpoint_dead_events', 'gauge',
				'Events whose delivery gave up (dead letters), by endpoint.',
				string_agg(format(E'logistics_hub_endpoint_dead_events{endpoint="%s"} %s\n', hub._prom_label(e.name), e.dead), '' ORDER BY e.name))
			|| hub._prom_family('logistics_hub_endpoint_oldest_pending_age_seconds', 'gauge',
				'Age of the oldest event waiting for delivery, by endpoint (0: none waits).',
				string_agg(format(E'logistics_hub_endpoint_oldest_pending_age_seconds{endpoint="%s"} %s\n', hub._prom_label(e.name), hub._prom_seconds(e.oldest)), '' ORDER BY e.name))
		FROM e)
		|| hub._prom_family('logistics_hub_circuit_state', 'gauge',
			'Circuit breaker state by endpoint: 1 for the state it is in, 0 for the others.',
			(SELECT string_agg(format(E'logistics_hub_circuit_state{endpoint="%s",state="%s"} %s\n', hub._prom_label(en.name), s.state,
									  (en.circuit_state = s.state)::int), '' ORDER BY en.name, s.ord)
			 FROM hub.endpoints en CROSS JOIN (VALUES (1, 'closed'), (2, 'open'), (3, 'half_open')) s (ord, state)));

	-- ---------------------------------------------------------- pollers
	r := r || hub._prom_family('logistics_hub_poll_requests', 'gauge',
		'Poll requests in the last ' || wtxt || ' (metrics_window), by poller and outcome.',
		(SELECT string_agg(format(E'logistics_hub_poll_requests{poller="%s",outcome="%s"} %s\n',
								  hub._prom_label(coalesce(p.name, '#' || c.poller_id)), c.outcome, c.n),
						   '' ORDER BY p.name, c.outcome)
		 FROM (SELECT q.poller_id, q.outcome, count(*) AS n FROM hub.poll_requests q
			   WHERE q.at > now() - w GROUP BY q.poller_id, q.outcome) c
		 LEFT JOIN hub.pollers p ON p.poller_id = c.poller_id));

	r := r || (WITH b AS (
			SELECT q.poller_id, count(*) AS n, now() - min(i.received_at) AS oldest
			FROM hub.inbox i JOIN hub.poll_requests q ON q.request_id = i.poll_request_id
			WHERE i.state IN ('new', 'retry_wait')
			GROUP BY q.poller_id
		), p AS (
			SELECT p.name, p.paused, p.failures, p.last_success_at, p.next_run_at,
				   coalesce(b.n, 0) AS backlog, coalesce(b.oldest, interval '0') AS oldest
			FROM hub.pollers p LEFT JOIN b ON b.poller_id = p.poller_id
		)
		SELECT hub._prom_family('logistics_hub_poller_backlog_messages', 'gauge',
				'Polled records waiting in the inbox (new or retrying), by poller.',
				string_agg(format(E'logistics_hub_poller_backlog_messages{poller="%s"} %s\n', hub._prom_label(p.name), p.backlog), '' ORDER BY p.name))
			|| hub._prom_family('logistics_hub_poller_oldest_pending_age_seconds', 'gauge',
				'Age of the oldest polled record waiting in the inbox, by poller (0: none waits).',
				string_agg(format(E'logistics_hub_poller_oldest_pending_age_seconds{poller="%s"} %s\n', hub._prom_label(p.name), hub._prom_seconds(p.oldest)), '' ORDER BY p.name))
			|| hub._prom_family('logistics_hub_poller_overdue_seconds', 'gauge',
				'How long a poller that is not paused is past its next run (0: not due yet).',
				string_agg(format(E'logistics_hub_poller_overdue_seconds{poller="%s"} %s\n', hub._prom_label(p.name),
								  hub._prom_seconds(greatest(now() - p.next_run_at, interval '0'))), '' ORDER BY p.name) FILTER (WHERE NOT p.paused))
			|| hub._prom_family('logistics_hub_poller_last_success_age_seconds', 'gauge',
				'Time since a poller''s last successful page (pollers that had one).',
				string_agg(format(E'logistics_hub_poller_last_success_age_seconds{poller="%s"} %s\n', hub._prom_label(p.name),
								  hub._prom_seconds(now() - p.last_success_at)), '' ORDER BY p.name) FILTER (WHERE p.last_success_at IS NOT NULL))
			|| hub._prom_family('logistics_hub_poller_failures', 'gauge',
				'Failed pages in a row, by poller.',
				string_agg(format(E'logistics_hub_poller_failures{poller="%s"} %s\n', hub._prom_label(p.name), p.failures), '' ORDER BY p.name))
		FROM p);

	-- ---------------------------------------------------------- inbox
	r := r || hub._prom_family('logistics_hub_inbox_messages', 'gauge',
		'Inbox messages not done, by state: new and retry_wait (the backlog), dead (failed max_attempts times), unhandled (no mapping or handler).',
		(SELECT string_agg(format(E'logistics_hub_inbox_messages{state="%s"} %s\n', s.state,
								  (SELECT count(*) FROM hub.inbox i WHERE i.state = s.state)), '' ORDER BY s.ord)
		 FROM (VALUES (1, 'new'), (2, 'retry_wait'), (3, 'dead'), (4, 'unhandled')) s (ord, state)))
		|| hub._prom_family('logistics_hub_inbox_oldest_pending_age_seconds', 'gauge',
		'Age of the oldest inbox message new or retrying (0: none waits).',
		(SELECT format(E'logistics_hub_inbox_oldest_pending_age_seconds %s\n',
					   hub._prom_seconds(coalesce(now() - min(i.received_at), interval '0')))
		 FROM hub.inbox i WHERE i.state IN ('new', 'retry_wait')));

	-- ---------------------------------------------------------- business
	r := r || hub._prom_family('logistics_hub_open_exceptions', 'gauge',
		'Open business exceptions (hub.exceptions), by kind.',
		(SELECT string_agg(format(E'logistics_hub_open_exceptions{kind="%s"} %s\n', k.kind,
								  (SELECT count(*) FROM hub.exceptions x WHERE x.resolved_at IS NULL AND x.kind = k.kind)), '' ORDER BY k.kind)
		 FROM unnest(ARRAY['conflict', 'contract_violation', 'not_owner', 'terminal', 'unknown_code']) k (kind)));

	-- (the conditions of hub.drift and hub.stale_entities, counted without
	-- the views' lookup of each key's parent: a probe of hub.entity_links a
	-- key, which made the counts 3 to 5 times slower at a million keys;
	-- metrics.sql checks that both agree with the views)
	r := r || (WITH d AS (
				SELECT e.lifecycle, count(*) AS n
				FROM hub.entity_state e
				JOIN hub.entity_system_state s USING (lifecycle, business_key)
				JOIN hub.drift_tolerances t ON t.lifecycle = e.lifecycle AND t.role = s.role
				WHERE e.state IS NOT NULL AND s.state IS NOT NULL AND s.state <> e.state
				  AND now() - greatest(e.state_occurred_at, s.state_since) > t.tolerance
				  AND NOT EXISTS (SELECT FROM hub.status_unmap u
								  WHERE u.system = lower(s.system) AND u.lifecycle = e.lifecycle
									AND u.state = e.state AND u.code = s.code)
				GROUP BY e.lifecycle),
			   s AS (
				SELECT e.lifecycle, count(*) AS n
				FROM hub.entity_state e
				JOIN hub.stale_thresholds t ON t.lifecycle = e.lifecycle AND t.state = e.state
				WHERE now() - e.last_advanced_at > t.threshold
				GROUP BY e.lifecycle)
		SELECT hub._prom_family('logistics_hub_drift_keys', 'gauge',
				'Keys where a system disagrees with the canonical state past its tolerance (hub.drift), by lifecycle.',
				string_agg(format(E'logistics_hub_drift_keys{lifecycle="%s"} %s\n', l.l, coalesce(d.n, 0)), '' ORDER BY l.l))
			|| hub._prom_family('logistics_hub_stale_keys', 'gauge',
				'Keys without progress past the threshold of their state (hub.stale_entities), by lifecycle.',
				string_agg(format(E'logistics_hub_stale_keys{lifecycle="%s"} %s\n', l.l, coalesce(s.n, 0)), '' ORDER BY l.l))
		FROM unnest(ARRAY['movement', 'order', 'return', 'shipment']) l (l)
		LEFT JOIN d ON d.lifecycle = l.l LEFT JOIN s ON s.lifecycle = l.l);
	RETURN r;
END
$$;
COMMENT ON FUNCTION hub.metrics() IS
'The hub''s metrics in the Prometheus text exposition format 0.0.4 (names logistics_hub_*): events published (counter); delivery attempts and poll requests by endpoint or poller and outcome, and the delivery latency histogram, over the window metrics_window (hub.thresholds); backlog, dead events, oldest pending age and circuit state per endpoint; backlog, oldest pending age, overdue time, last success age and failures per poller; inbox messages by state and the oldest pending age; open exceptions by kind; drift and stale keys by lifecycle. Serve it from any scraper that can run SELECT hub.metrics().';

REVOKE EXECUTE ON FUNCTION hub.metrics(), hub._prom_label(text), hub._prom_family(text, text, text, text),
	hub._prom_seconds(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.metrics() TO hub_reader;
