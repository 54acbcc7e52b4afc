#!/usr/bin/env bash
# test/bench/outbox_publish.sh --- side by side in one run:
#   1. pgbench, 8 clients: hub.publish with one matching subscription against
#      a plain INSERT of the same payload into a table with an identity key;
#   2. claim + complete in batches of 100, and the time of one claim at a 10k
#      and at a large (LH_BENCH_BACKLOG, default 1M) backlog of ready
#      deliveries.
# Prints figures and ratios; asserts nothing.
source "$(dirname "$0")/../harness/lib.sh"
cd "$LH_TOP"
PORT=${LH_BENCH_PORT:-54362}
T=${LH_BENCH_SECONDS:-15}
BACKLOG=${LH_BENCH_BACKLOG:-1000000}
trap 'lh_cluster_stop bench-$PORT' EXIT
lh_prepare "bench-$PORT" "$PORT" "shared_buffers = 1GB" "max_wal_size = 8GB" "synchronous_commit = on"
work=$(mktemp -d)
trap 'lh_cluster_stop bench-$PORT; rm -rf "$work"' EXIT

psql -X -q -v ON_ERROR_STOP=1 -d postgres <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS logistics_hub;
SELECT hub.create_endpoint('wms', 'http://127.0.0.1:9/wms', 'wms');
SELECT hub.subscribe('wms', 'order.*', ordering => 'none');
CREATE TABLE plain_events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, event_type text,
	aggregate_id text, payload jsonb, published_at timestamptz DEFAULT now());
SQL
payload='{"order_id": "SO-1", "warehouse": "WH1", "lines": [{"sku": "A-1", "qty": 2}]}'
echo "\\set k random(1, 100000)
SELECT hub.publish('order.released', 'SO-' || :k, '$payload');" >"$work/publish.sql"
echo "\\set k random(1, 100000)
INSERT INTO plain_events (event_type, aggregate_id, payload) VALUES ('order.released', 'SO-' || :k, '$payload');" >"$work/insert.sql"
tps() { "$PG_BIN/pgbench" -n -c 8 -j 2 -T "$T" -f "$1" postgres 2>&1 | awk '/^tps/ {print $3}'; }

echo "machine: $(nproc) cores, $(uname -r), PostgreSQL $($PG_BIN/postgres --version | awk '{print $3}'); 8 clients, ${T}s per run"
insert1=$(tps "$work/insert.sql"); publish1=$(tps "$work/publish.sql")
insert2=$(tps "$work/insert.sql"); publish2=$(tps "$work/publish.sql")
insert=$(echo "$insert1 $insert2" | awk '{print ($1 + $2) / 2}')
publish=$(echo "$publish1 $publish2" | awk '{print ($1 + $2) / 2}')
printf 'plain INSERT            %10.0f tps\nhub.publish             %10.0f tps\nratio publish / insert  %10.2f\n' \
	"$insert" "$publish" "$(echo "$publish $insert" | awk '{print $1 / $2}')"

claim_ms() {
	# fastest of 5 claims of 100 (each leases 100 more), as psql \timing reports it
	local args=(-c '\timing on') i
	for i in 1 2 3 4 5; do args+=(-c "SELECT count(*) FROM hub.claim_deliveries(100, 'bench', '1 hour')"); done
	psql -X -q -d postgres "${args[@]}" 2>&1 | awk '/^Time:/ {print $2}' | sort -n | head -1
}
fill() {
	psql -X -q -d postgres -c "SET client_min_messages = warning" \
		-c "INSERT INTO hub.outbox (event_type, aggregate_id, payload) SELECT 'order.created', 'B-' || i, jsonb_build_object('order_id', i) FROM generate_series(1, $1) i" \
		-c "SELECT hub._route_events()" -c "VACUUM ANALYZE hub.deliveries" >/dev/null
}
psql -X -q -d postgres -c "TRUNCATE hub.deliveries CASCADE" >/dev/null
fill 10000
small=$(claim_ms)
fill $((BACKLOG - 10000))
big=$(claim_ms)
printf 'claim of 100 at a 10k backlog   %8s ms\nclaim of 100 at a %s backlog  %8s ms\nratio big / small               %8.2f\n' \
	"$small" "$BACKLOG" "$big" "$(echo "$big $small" | awk '{print $1 / $2}')"

psql -X -q -A -t -d postgres <<'SQL'
CREATE FUNCTION pg_temp.drain(batches int) RETURNS double precision LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp(); n bigint := 0;
BEGIN
	FOR i IN 1..batches LOOP
		PERFORM hub.complete_delivery(c.delivery_id, c.lease_token, 204, 1)
		FROM hub.claim_deliveries(100, 'bench') c;
	END LOOP;
	RETURN extract(epoch FROM clock_timestamp() - t0);
END $$;
SELECT format('claim+complete in batches of 100: %s deliveries/s (100 batches, one transaction)',
	round(10000 / pg_temp.drain(100)));
SQL
