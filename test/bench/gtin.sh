#!/usr/bin/env bash
# test/bench/gtin.sh --- hub.gtin against contrib/isn's ean13 and against text,
# side by side in one run on one throwaway cluster:
#   1. text input + output throughput of 1M GTIN-13 strings through hub.gtin
#      and through isn's ean13 (the same strings, runs alternated, median of 5)
#   2. btree index build on 1M rows: hub.gtin column against a text column
#      (time and size).
# Prints figures and ratios; asserts nothing.
source "$(dirname "$0")/../harness/lib.sh"
cd "$LH_TOP"
PORT=${LH_BENCH_PORT:-54360}
N=${LH_BENCH_ROWS:-1000000}
ROUNDS=${LH_BENCH_ROUNDS:-5}
trap 'lh_cluster_stop bench-$PORT' EXIT
lh_prepare "bench-$PORT" "$PORT" "fsync = on" "shared_buffers = 512MB" "maintenance_work_mem = 256MB" "work_mem = 64MB" "max_parallel_maintenance_workers = 0" "max_parallel_workers_per_gather = 0"

psql -X -q -v ON_ERROR_STOP=1 -d postgres <<SQL
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS isn;
CREATE EXTENSION IF NOT EXISTS logistics_hub;
-- 1M distinct valid GTIN-13 strings (company prefix 629104, random item refs)
CREATE TABLE gtin_strings AS
SELECT body || ((10 - (SELECT sum(substr(body, k, 1)::int * CASE WHEN k % 2 = 0 THEN 3 ELSE 1 END)
					   FROM generate_series(1, 12) k) % 10) % 10)::text AS s
FROM (SELECT '6' || lpad((i::bigint * 7919 % 100000000000)::text, 11, '0') AS body
	  FROM generate_series(1, $N) i) b;
VACUUM ANALYZE gtin_strings;

\i test/bench/bench_time.sql
SQL

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), PostgreSQL $($PG_BIN/postgres --version | awk '{print $3}')"
echo "rows: $N, rounds: $ROUNDS (median reported)"

psql -X -q -A -t -v ON_ERROR_STOP=1 -d postgres <<SQL
SET client_min_messages = warning;
CREATE TEMP TABLE io_runs (kind text, ms double precision);
DO \$\$
BEGIN
	FOR r IN 1..$ROUNDS LOOP
		INSERT INTO io_runs SELECT 'hub.gtin', bench_time('SELECT count(*) FROM (SELECT s::hub.gtin::text AS o FROM gtin_strings) x WHERE o IS NOT NULL');
		INSERT INTO io_runs SELECT 'isn.ean13', bench_time('SELECT count(*) FROM (SELECT s::ean13::text AS o FROM gtin_strings) x WHERE o IS NOT NULL');
		INSERT INTO io_runs SELECT 'text (no parsing)', bench_time('SELECT count(*) FROM (SELECT s::text AS o FROM gtin_strings) x WHERE o IS NOT NULL');
	END LOOP;
END \$\$;
WITH m AS (SELECT kind, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS ms FROM io_runs GROUP BY kind)
SELECT format('input+output %-18s %s ms  %s M values/s', kind, lpad(round(ms::numeric, 1)::text, 8), round(($N / ms / 1000)::numeric, 2)) FROM m ORDER BY kind;
WITH m AS (SELECT kind, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS ms FROM io_runs GROUP BY kind)
SELECT format('ratio: hub.gtin throughput / isn.ean13 throughput = %s',
	round(((SELECT ms FROM m WHERE kind = 'isn.ean13') / (SELECT ms FROM m WHERE kind = 'hub.gtin'))::numeric, 2));

CREATE TABLE idx_gtin AS SELECT s::hub.gtin AS g FROM gtin_strings;
CREATE TABLE idx_text AS SELECT s AS g FROM gtin_strings;
VACUUM ANALYZE idx_gtin;
VACUUM ANALYZE idx_text;
CREATE TEMP TABLE idx_runs (kind text, ms double precision);
DO \$\$
BEGIN
	FOR r IN 1..$ROUNDS LOOP
		DROP INDEX IF EXISTS idx_gtin_g;
		DROP INDEX IF EXISTS idx_text_g;
		INSERT INTO idx_runs SELECT 'hub.gtin', bench_time('CREATE INDEX idx_gtin_g ON idx_gtin (g)');
		INSERT INTO idx_runs SELECT 'text', bench_time('CREATE INDEX idx_text_g ON idx_text (g)');
	END LOOP;
END \$\$;
WITH m AS (SELECT kind, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS ms FROM idx_runs GROUP BY kind)
SELECT format('btree build  %-10s %s ms  size %s', kind, lpad(round(ms::numeric, 1)::text, 8),
	pg_size_pretty(pg_relation_size(CASE kind WHEN 'text' THEN 'idx_text_g' ELSE 'idx_gtin_g' END::regclass)))
FROM m ORDER BY kind;
WITH m AS (SELECT kind, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS ms FROM idx_runs GROUP BY kind)
SELECT format('ratio: text build time / hub.gtin build time = %s; hub.gtin index size / text index size = %s',
	round(((SELECT ms FROM m WHERE kind = 'text') / (SELECT ms FROM m WHERE kind = 'hub.gtin'))::numeric, 2),
	round(pg_relation_size('idx_gtin_g')::numeric / pg_relation_size('idx_text_g'), 2));
SQL
