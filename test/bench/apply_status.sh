#!/usr/bin/env bash
# test/bench/apply_status.sh --- hub.apply_status throughput from 4 pgbench
# clients on distinct keys, side by side in one run on one throwaway cluster
# with a plain UPDATE of one row per call (the floor any status store pays):
#   1. UPDATE bench_state SET state, code, updated_at WHERE key = ...
#   2. hub.apply_canonical_status (classification, ownership, history,
#      per-system row; no code mapping)
#   3. hub.apply_status (the same plus hub.map_status of an EasyPost code)
# Each client works on its own 1000 keys (shipment lifecycle, EasyPost
# tracker statuses in_transit / out_for_delivery / delivered drawn at
# random, so the outcomes mix advance, duplicate and stale).  Prints tps and
# the ratios to the UPDATE; asserts nothing.
source "$(dirname "$0")/../harness/lib.sh"
cd "$LH_TOP"
PORT=${LH_BENCH_PORT:-54351}
T=${LH_BENCH_SECONDS:-30}
CLIENTS=4
trap 'lh_cluster_stop bench-$PORT; rm -rf "$WORK"' EXIT
WORK=$(mktemp -d)
chmod 755 "$WORK"
lh_prepare "bench-$PORT" "$PORT" "fsync = on" "shared_buffers = 256MB" "synchronous_commit = on"

psql -X -q -v ON_ERROR_STOP=1 -d postgres <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS logistics_hub;
CREATE TABLE bench_state (key text PRIMARY KEY, state text, code text, updated_at timestamptz);
INSERT INTO bench_state
SELECT 'B' || c || '-' || k, 'in_transit', 'in_transit', now()
FROM generate_series(1, 4) c, generate_series(1, 1000) k;
VACUUM ANALYZE bench_state;
SQL

cat > "$WORK/update.sql" <<'EOF2'
\set k random(1, 1000)
\set s random(1, 3)
UPDATE bench_state SET state = (ARRAY['in_transit','out_for_delivery','delivered'])[:s], code = (ARRAY['in_transit','out_for_delivery','delivered'])[:s], updated_at = now() WHERE key = 'B' || :client_id + 1 || '-' || :k;
EOF2
cat > "$WORK/canonical.sql" <<'EOF2'
\set k random(1, 1000)
\set s random(1, 3)
SELECT outcome FROM hub.apply_canonical_status('shipment', 'B' || :client_id + 1 || '-' || :k, 'easypost', (ARRAY['in_transit','out_for_delivery','delivered'])[:s], now() - random() * interval '1 day', (ARRAY['in_transit','out_for_delivery','delivered'])[:s]);
EOF2
cat > "$WORK/mapped.sql" <<'EOF2'
\set k random(1, 1000)
\set s random(1, 3)
SELECT outcome FROM hub.apply_status('shipment', 'M' || :client_id + 1 || '-' || :k, 'easypost', (ARRAY['in_transit','out_for_delivery','delivered'])[:s], now() - random() * interval '1 day');
EOF2

tps()
{
	"$PG_BIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$T" -f "$1" postgres 2>&1 |
		awk '/^tps = / {print $3; found=1} END {if (!found) print "error"}'
}

echo "machine: $(nproc) cores, $(uname -r), PostgreSQL $($PG_BIN/postgres --version | awk '{print $3}')"
echo "clients: $CLIENTS on distinct keys, duration: ${T}s per run"
u=$(tps "$WORK/update.sql")
c=$(tps "$WORK/canonical.sql")
have_map=$(psql -X -A -t -d postgres -c "SELECT to_regprocedure('hub.map_status(text,text,text,text,text)') IS NOT NULL")
if [ "$have_map" = t ]; then m=$(tps "$WORK/mapped.sql"); mshow="$m tps"; else m=n/a; mshow="n/a (hub.map_status not installed)"; fi
printf '%-32s %s\n' "plain UPDATE of one row" "$u tps" "hub.apply_canonical_status" "$c tps" "hub.apply_status" "$mshow"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo "ratio: apply_canonical_status tps / UPDATE tps = $(ratio "$c" "$u")"
echo "ratio: apply_status tps / UPDATE tps = $(ratio "$m" "$u")"
psql -X -A -t -d postgres -c "SELECT 'history rows: ' || sum(n) || ', outcomes: ' || string_agg(o || '=' || n, ', ') FROM (SELECT outcome o, count(*) n FROM hub.status_history GROUP BY 1 ORDER BY 1) x"
