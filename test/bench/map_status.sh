#!/usr/bin/env bash
# test/bench/map_status.sh --- hub.map_status (C, per-backend cache) against
# the same lookup written as a plain SQL function over the same table
# (partner row, qualifier row, then generic row), side by side in one run:
# N calls each over a mix of codes of every profile, median of LH_BENCH_ROUNDS rounds (default 1: the SQL side takes over a minute per million).
source "$(dirname "$0")/../harness/lib.sh"
cd "$LH_TOP"
PORT=${LH_BENCH_PORT:-54361}
N=${LH_BENCH_CALLS:-1000000}
trap 'lh_cluster_stop bench-$PORT' EXIT
lh_prepare "bench-$PORT" "$PORT" "fsync = on" "max_parallel_workers_per_gather = 0"

psql -X -q -A -t -v ON_ERROR_STOP=1 -d postgres <<SQL
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS logistics_hub;
CREATE FUNCTION sql_map_status(p_system text, p_lifecycle text, p_code text,
							   p_qualifier text DEFAULT NULL, p_partner text DEFAULT NULL)
RETURNS hub.mapped_status LANGUAGE sql STABLE AS \$\$
	SELECT ROW(m.state, m.overlay, m.reason)::hub.mapped_status
	FROM hub.status_map m
	WHERE m.system = lower(p_system) AND m.lifecycle = p_lifecycle AND lower(m.code) = lower(p_code)
		AND m.qualifier IN (coalesce(p_qualifier, ''), '') AND m.partner IN (coalesce(p_partner, ''), '')
	ORDER BY m.partner = '', m.qualifier = ''
	LIMIT 1
\$\$;
CREATE INDEX ON hub.status_map (system, lifecycle, lower(code));
CREATE TABLE calls AS
SELECT r.system, r.lifecycle, r.code, nullif(r.qualifier, '') AS qualifier
FROM generate_series(1, ($N / (SELECT count(*) FROM hub.status_map)) + 1) g, hub.status_map r
LIMIT $N;
ANALYZE calls;
\i test/bench/bench_time.sql
CREATE TEMP TABLE runs (kind text, ms double precision);
DO \$\$
BEGIN
	FOR r IN 1..${LH_BENCH_ROUNDS:-1} LOOP
		INSERT INTO runs SELECT 'hub.map_status (C, cached)', bench_time('SELECT count((hub.map_status(system, lifecycle, code, qualifier)).state) FROM calls');
		INSERT INTO runs SELECT 'plain SQL function', bench_time('SELECT count((sql_map_status(system, lifecycle, code, qualifier)).state) FROM calls');
	END LOOP;
END \$\$;
SELECT format('machine: %s', '$(nproc) cores, PostgreSQL $($PG_BIN/postgres --version | awk '{print $3}')');
WITH m AS (SELECT kind, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS ms FROM runs GROUP BY kind)
SELECT format('%-28s %s calls in %s ms  (%s k calls/s)', kind, $N, round(ms::numeric), round(($N / ms)::numeric)) FROM m ORDER BY kind;
WITH m AS (SELECT kind, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS ms FROM runs GROUP BY kind)
SELECT format('ratio: hub.map_status is %sx the plain SQL function',
	round(((SELECT ms FROM m WHERE kind LIKE 'plain%') / (SELECT ms FROM m WHERE kind LIKE 'hub%'))::numeric, 1));
SQL
