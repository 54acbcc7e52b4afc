#!/usr/bin/env bash
# test/bench/views.sh --- the business views, hub.sync_status and
# hub.metrics() at a million entities and a million attempts (issue 21),
# each beside a plain count(*) of the tables it reads, in the same run on a
# throwaway cluster with fsync = on.
#
# The load (bench only: direct INSERTs with triggers off, to reach the sizes
# in a minute): LH_BENCH_ENTITIES (1,000,000) keys of the four lifecycles
# over 20 sites, each with its WMS's last report and one in five with a
# portal's; a history row a key plus a shipped report for half the orders;
# LH_BENCH_ATTEMPTS (1,000,000) events, each with one delivery (1 in 100
# pending, 1 in 100 dead, 1 in 100 retrying) to one of 10 endpoints and one
# attempt, spread over the last 10 days in daily partitions of hub.attempts
# (as retention keeps them).  Each query runs LH_BENCH_ROUNDS (3) times; the
# medians are printed, with the ratio to the count of its tables (count(*)
# of each, summed), and how many attempt partitions the old and the new
# hub.sync_status read.
source "$(dirname "$0")/../harness/lib.sh"
cd "$LH_TOP"
PORT=${LH_BENCH_PORT:-54367}
N=${LH_BENCH_ENTITIES:-1000000}
A=${LH_BENCH_ATTEMPTS:-1000000}
ROUNDS=${LH_BENCH_ROUNDS:-3}
trap 'lh_cluster_stop bench-$PORT' EXIT
lh_prepare "bench-$PORT" "$PORT" "fsync = on" "max_parallel_workers_per_gather = 0" "shared_buffers = 256MB"

psql -X -q -A -t -v ON_ERROR_STOP=1 -d postgres <<SQL
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS logistics_hub;
-- daily partitions of the last 10 days and the next (retention makes them)
SELECT count(hub._attempts_partition(current_date - g)) AS partitions FROM generate_series(-2, 11) g \\g /dev/null
SET session_replication_role = replica;
INSERT INTO hub.endpoints (name, url, kind)
SELECT 'ep' || g, 'http://127.0.0.1:9/' || g, (ARRAY['erp', 'wms', 'portal', 'carrier', 'tms'])[1 + g % 5]
FROM generate_series(1, 10) g;
INSERT INTO hub.subscriptions (endpoint_id, event_pattern) SELECT endpoint_id, '*.*' FROM hub.endpoints;
INSERT INTO hub.outbox (event_type, aggregate_id, payload, occurred_at, published_at, xid)
SELECT (ARRAY['order.created', 'order.shipped', 'inventory.adjusted', 'shipment.dispatched'])[1 + g % 4], 'K' || g,
	   jsonb_build_object('order_id', 'K' || g), t - interval '2 minutes', t, pg_current_xact_id()
FROM generate_series(1, $A) g, LATERAL (SELECT now() - (g % 864000) * interval '1 second' AS t) x;
INSERT INTO hub.deliveries (subscription_id, endpoint_id, event_id, seq, aggregate_id, ordering, priority,
							state, attempts, next_attempt_at, updated_at)
SELECT s.subscription_id, s.endpoint_id, o.event_id, o.seq, o.aggregate_id, 'per_key', 0,
	   CASE o.seq % 100 WHEN 0 THEN 'pending' WHEN 1 THEN 'dead' WHEN 2 THEN 'retry_wait' ELSE 'delivered' END,
	   1, o.published_at, o.published_at
FROM hub.outbox o JOIN hub.subscriptions s ON s.subscription_id = 1 + o.seq % 10;
INSERT INTO hub.attempts (delivery_id, attempt, at, outcome, latency_ms, http_status)
SELECT delivery_id, 1, updated_at + interval '50 milliseconds',
	   CASE state WHEN 'delivered' THEN 'delivered' WHEN 'dead' THEN 'dead' ELSE 'retry' END, 50, 200
FROM hub.deliveries;
CREATE TEMP TABLE ls AS
SELECT l, array_agg(s.state ORDER BY s.ordinal) AS st
FROM unnest(ARRAY['order', 'shipment', 'movement', 'return']) l, hub.lifecycle_states(l) s GROUP BY l;
INSERT INTO hub.entity_state (lifecycle, business_key, state, state_system, state_occurred_at, last_advanced_at,
							  site, created_at, updated_at)
SELECT x.l, 'K' || g, ls.st[1 + (g / 10) % cardinality(ls.st)], 'sap', x.t, x.t, 'DC-' || (g % 20), x.t, x.t
FROM generate_series(1, $N) g
CROSS JOIN LATERAL (SELECT CASE WHEN g % 10 < 4 THEN 'order' WHEN g % 10 < 7 THEN 'shipment'
								WHEN g % 10 < 9 THEN 'movement' ELSE 'return' END AS l,
						   now() - (g % 2592000) * interval '1 second' AS t) x
JOIN ls ON ls.l = x.l;
INSERT INTO hub.entity_system_state (lifecycle, business_key, system, role, code, state, state_since, occurred_at)
SELECT lifecycle, business_key, 'epcis', 'wms', state, state, state_occurred_at, state_occurred_at FROM hub.entity_state;
INSERT INTO hub.entity_system_state (lifecycle, business_key, system, role, code, state, state_since, occurred_at)
SELECT e.lifecycle, e.business_key, 'portal', 'portal', ls.st[1], ls.st[1], e.created_at, e.created_at
FROM hub.entity_state e JOIN ls ON ls.l = e.lifecycle WHERE hashtext(e.business_key) % 5 = 0;
INSERT INTO hub.status_history (lifecycle, business_key, system, role, code, correction, new_state, outcome, occurred_at)
SELECT lifecycle, business_key, 'sap', 'erp', state, false, state, 'created', last_advanced_at - interval '6 hours'
FROM hub.entity_state;
INSERT INTO hub.status_history (lifecycle, business_key, system, role, code, correction, new_state, outcome, occurred_at)
SELECT lifecycle, business_key, 'epcis', 'wms', 'shipped', false, 'shipped', 'advanced', last_advanced_at
FROM hub.entity_state WHERE lifecycle = 'order' AND hashtext(business_key) % 2 = 0;
RESET session_replication_role;
VACUUM ANALYZE;

-- the definition of hub.sync_status before issue 21, for comparison
CREATE VIEW bench_old_sync_status AS
SELECT e.name AS endpoint, e.kind, s.subscription_id, s.event_pattern, e.enabled, e.paused, e.circuit_state,
	   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'pending'), 0) AS pending,
	   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'in_flight'), 0) AS in_flight,
	   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'retry_wait'), 0) AS retrying,
	   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'dead'), 0) AS dead,
	   now() - min(o.published_at) FILTER (WHERE d.state IN ('pending', 'retry_wait', 'in_flight')) AS oldest_pending_age,
	   (SELECT max(a.at) FROM hub.attempts a JOIN hub.deliveries x USING (delivery_id)
		WHERE x.subscription_id = s.subscription_id AND a.outcome = 'delivered') AS last_success,
	   (SELECT round(avg((a.outcome = 'delivered')::int), 3) FROM hub.attempts a JOIN hub.deliveries x USING (delivery_id)
		WHERE x.subscription_id = s.subscription_id AND a.at > now() - interval '1 hour'
			AND a.outcome IN ('delivered', 'retry', 'dead')) AS success_rate_1h
FROM hub.subscriptions s
JOIN hub.endpoints e USING (endpoint_id)
LEFT JOIN hub.deliveries d ON d.subscription_id = s.subscription_id AND d.state NOT IN ('delivered', 'skipped')
LEFT JOIN hub.outbox o ON o.event_id = d.event_id
GROUP BY e.endpoint_id, s.subscription_id;

\i test/bench/bench_time.sql
-- the attempt partitions a query reads (those its plan keeps and runs)
CREATE FUNCTION parts_read(q text) RETURNS bigint LANGUAGE plpgsql AS \$\$
DECLARE l text; seen text[] := '{}';
BEGIN
	FOR l IN EXECUTE 'EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) ' || q LOOP
		IF l ~ ' on _attempts_' AND l !~ 'never executed' THEN
			seen := seen || substring(l from ' on (_attempts_[a-z0-9]+)');
		END IF;
	END LOOP;
	RETURN (SELECT count(DISTINCT p) FROM unnest(seen) p);
END \$\$;
CREATE TEMP TABLE q (ord int, name text, query text, tables text[]);
INSERT INTO q VALUES
	(1, 'hub.orders_awaiting_release', 'SELECT * FROM hub.orders_awaiting_release', '{hub.entity_state}'),
	(2, 'hub.release_backlog_by_site', 'SELECT * FROM hub.release_backlog_by_site', '{hub.entity_state}'),
	(3, 'hub.missing_tracking', 'SELECT * FROM hub.missing_tracking', '{hub.entity_state}'),
	(4, 'hub.returns_awaiting_reconciliation', 'SELECT * FROM hub.returns_awaiting_reconciliation', '{hub.entity_state}'),
	(5, 'hub.backlog_by_site', 'SELECT * FROM hub.backlog_by_site', '{hub.entity_state}'),
	(6, 'hub.portal_freshness', 'SELECT * FROM hub.portal_freshness', '{hub.entity_state,hub.entity_system_state}'),
	(7, 'hub.erp_postings_pending', 'SELECT * FROM hub.erp_postings_pending', '{hub.deliveries}'),
	(8, 'hub.cycle_times', 'SELECT * FROM hub.cycle_times', '{hub.status_history,hub.attempts}'),
	(9, 'hub.sync_status', 'SELECT * FROM hub.sync_status', '{hub.deliveries,hub.attempts}'),
	(10, 'hub.sync_status before (0.2.0)', 'SELECT * FROM bench_old_sync_status', '{hub.deliveries,hub.attempts}'),
	(11, 'hub.drift', 'SELECT * FROM hub.drift', '{hub.entity_state,hub.entity_system_state}'),
	(12, 'hub.stale_entities', 'SELECT * FROM hub.stale_entities', '{hub.entity_state}'),
	(13, 'hub.metrics()', 'SELECT hub.metrics()',
	 '{hub.entity_state,hub.entity_system_state,hub.deliveries,hub.attempts,hub.inbox,hub.exceptions}');
CREATE TEMP TABLE runs (name text, ms double precision);
DO \$\$
DECLARE r record; t text;
BEGIN
	FOR i IN 1..${ROUNDS} LOOP
		FOR t IN SELECT DISTINCT unnest(tables) FROM q LOOP
			INSERT INTO runs SELECT 'count(*) ' || t, bench_time('SELECT count(*) FROM ' || t);
		END LOOP;
		FOR r IN SELECT * FROM q ORDER BY ord LOOP
			INSERT INTO runs SELECT r.name, bench_time(r.query);
		END LOOP;
	END LOOP;
END \$\$;
SELECT format('machine: %s', '$(nproc) cores, load average $(cut -d' ' -f1 /proc/loadavg) before, PostgreSQL $($PG_BIN/postgres --version | awk '{print $3}'), fsync = on');
SELECT format('%s entities, %s entity_system_state rows, %s history rows, %s deliveries, %s attempts in %s partitions',
	(SELECT count(*) FROM hub.entity_state), (SELECT count(*) FROM hub.entity_system_state),
	(SELECT count(*) FROM hub.status_history), (SELECT count(*) FROM hub.deliveries), (SELECT count(*) FROM hub.attempts),
	(SELECT count(*) FROM pg_inherits WHERE inhparent = 'hub.attempts'::regclass));
WITH m AS (SELECT name, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS ms FROM runs GROUP BY name)
SELECT format('%-36s %9s ms   count(*) of %s: %s ms   ratio %s', q.name, round(m.ms::numeric, 1),
	array_to_string(q.tables, ' + '), round(b.ms::numeric, 1), round((m.ms / b.ms)::numeric, 2))
FROM q JOIN m USING (name)
CROSS JOIN LATERAL (SELECT sum(c.ms) AS ms FROM m c WHERE c.name IN (SELECT 'count(*) ' || unnest(q.tables))) b
ORDER BY q.ord;
SELECT format('attempt partitions read: hub.sync_status %s, before %s, hub.cycle_times %s, hub.metrics() delivery attempts %s (of %s)',
	parts_read('SELECT * FROM hub.sync_status'), parts_read('SELECT * FROM bench_old_sync_status'),
	parts_read('SELECT * FROM hub.cycle_times'),
	parts_read('SELECT count(*) FROM hub.attempts a WHERE a.at > now() - interval ''5 minutes'''),
	(SELECT count(*) FROM pg_inherits WHERE inhparent = 'hub.attempts'::regclass));
SQL
