#!/usr/bin/env bash
# test/bench/event_body.sh --- hub.event_body (C, extension/event_body.c)
# against the SQL definition it replaced (test/reference/event_body.sql,
# jsonb_build_object cast to text), side by side in one run on a throwaway
# cluster.  Both render every row of an outbox-like table of 100,000 order
# events (uuid ids, fractional timestamps, a correlation id on most rows, a
# payload of a few hundred bytes with order lines), once a round for each
# body format; the format comes from a joined table as in the claim, so the
# planner cannot fold the SQL version's CASE.  jit and parallel query are off
# as in the claim (hub._claim).  Rounds alternate; medians are reported, minus
# the time of the same scan rendering nothing, as rows/s and us a row; the
# payload's own text output (payload::text), which both versions include,
# is shown for scale.
# Prints figures and ratios; asserts nothing.
#
# Sizes: LH_BENCH_ROWS (100000) rows, LH_BENCH_ROUNDS (5) rounds.
source "$(dirname "$0")/../harness/lib.sh"
cd "$LH_TOP"
PORT=${LH_BENCH_PORT:-54462}
N=${LH_BENCH_ROWS:-100000}
ROUNDS=${LH_BENCH_ROUNDS:-5}
trap 'lh_cluster_stop bench-$PORT' EXIT
lh_prepare "bench-$PORT" "$PORT" "fsync = on" "shared_buffers = 256MB" "jit = off" "max_parallel_workers_per_gather = 0"

psql -X -q -v ON_ERROR_STOP=1 -d postgres <<SQL
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS logistics_hub;
\i test/reference/event_body.sql
\i test/bench/bench_time.sql
-- the columns the claim renders from, with hub.outbox's types
CREATE TABLE bench_events AS
SELECT gen_random_uuid() AS event_id,
	(ARRAY['order.created', 'order.allocated', 'shipment.dispatched', 'shipment.delivered'])[1 + g % 4] AS event_type,
	'SO-' || lpad((g % 50000)::text, 7, '0') AS aggregate_id,
	timestamptz '2026-11-01 00:00:00+00' + g * interval '1.234567 second' AS occurred_at,
	CASE WHEN g % 10 = 0 THEN NULL ELSE 'req-' || md5(g::text) END AS correlation_id,
	jsonb_build_object('order_id', 'SO-' || lpad((g % 50000)::text, 7, '0'), 'warehouse', 'DC' || (g % 7),
		'customer', jsonb_build_object('id', 'C-' || (g % 9973), 'name', 'Kunde ' || (g % 9973) || ' GmbH & Co. "Nord"'),
		'lines', (SELECT jsonb_agg(jsonb_build_object('line', l, 'gtin', '0629104' || lpad(((g * 31 + l) % 1000000)::text, 6, '0') || '5',
												  'qty', 1 + (g + l) % 12, 'uom', 'EA', 'price', round(((g + l) % 1000) * 1.37, 2)))
				  FROM generate_series(1, 1 + g % 5) l),
		'note', CASE WHEN g % 3 = 0 THEN E'Anlieferung Rampe 3\nbitte avisieren' END) AS payload
FROM generate_series(1, $N) g;
CREATE TABLE bench_format (body_format text);
INSERT INTO bench_format VALUES ('event');
VACUUM ANALYZE bench_events, bench_format;
SQL

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}')"
psql -X -q -A -t -d postgres -c "SELECT format('rows: %s, average payload %s bytes, average canonical body %s bytes, TimeZone %s, rounds: $ROUNDS (median reported)',
	count(*), round(avg(octet_length(payload::text))), round(avg(octet_length(hub.event_body('event', event_id, event_type,
	aggregate_id, occurred_at, correlation_id, payload)))), current_setting('TimeZone')) FROM bench_events"

psql -X -q -A -t -v ON_ERROR_STOP=1 -d postgres <<SQL
SET client_min_messages = warning;
CREATE TEMP TABLE runs (kind text, format text, ms double precision);
DO \$\$
DECLARE
	q constant text := 'SELECT sum(octet_length(%s(f.body_format, e.event_id, e.event_type, e.aggregate_id, e.occurred_at, '
					   'e.correlation_id, e.payload, ''/logistics_hub''))) FROM bench_events e CROSS JOIN bench_format f';
	fmt text;
BEGIN
	FOR r IN 1..$ROUNDS LOOP
		FOREACH fmt IN ARRAY ARRAY['event', 'cloudevents'] LOOP
			UPDATE bench_format SET body_format = fmt;
			INSERT INTO runs SELECT 'scan only', fmt,
				bench_time('SELECT sum(octet_length(e.aggregate_id) + octet_length(f.body_format)) FROM bench_events e CROSS JOIN bench_format f');
			INSERT INTO runs SELECT 'payload::text', fmt,
				bench_time('SELECT sum(octet_length(e.payload::text) + octet_length(f.body_format)) FROM bench_events e CROSS JOIN bench_format f');
			INSERT INTO runs SELECT 'C', fmt, bench_time(format(q, 'hub.event_body'));
			INSERT INTO runs SELECT 'SQL', fmt, bench_time(format(q, 'event_body_ref.event_body'));
		END LOOP;
	END LOOP;
END \$\$;
CREATE TEMP VIEW m AS
SELECT kind, format, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS ms FROM runs GROUP BY kind, format;
CREATE TEMP VIEW net AS
SELECT m.kind, m.format, m.ms - s.ms AS ms FROM m JOIN m s ON s.format = m.format AND s.kind = 'scan only'
WHERE m.kind <> 'scan only';
SELECT format('%-11s %-13s %8s ms', format, 'scan only', lpad(round(ms::numeric, 1)::text, 8)) FROM m WHERE kind = 'scan only' ORDER BY format DESC;
SELECT format('%-11s %-13s %8s ms  %9s rows/s  %6s us a row', n.format, n.kind, lpad(round(n.ms::numeric, 1)::text, 8),
	round($N / n.ms * 1000), round((n.ms * 1000 / $N)::numeric, 2))
FROM net n ORDER BY n.format DESC, n.kind = 'payload::text', n.kind;
SELECT format('ratio: %s rows/s C / SQL = %s', c.format, round((s.ms / c.ms)::numeric, 1))
FROM net c JOIN net s ON s.format = c.format AND s.kind = 'SQL' WHERE c.kind = 'C' ORDER BY c.format DESC;
SQL
