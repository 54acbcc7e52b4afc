#!/usr/bin/env bash
# test/bench/outbox_publish.sh --- the two outbox figures of issue 4, each
# side by side with its baseline in one run on a throwaway cluster:
#
# 1. publish: pgbench, 8 clients, hub.publish of an order.created event with
#    one matching subscription, against a plain INSERT of the same payload
#    into a table with an identity key; rounds alternate (plain, publish,
#    ...) and the ratio of the median rates is printed (target >= 0.85).
# 2. claim: claim-plus-complete in batches of 100 (pgbench, 2 clients, one
#    claim statement and one complete statement a transaction) on a backlog
#    of 10k deliveries and then of 1M; pgbench's per-statement latency of the
#    claim is compared (target: 1M within 1.5x of 10k).  Loading and routing
#    the 1M backlog takes about a minute here; every statement of the load
#    is bounded by statement_timeout (LH_BENCH_LOAD_TIMEOUT, 600 s).
#
# Sizes (smoke-run with small ones):
#   LH_BENCH_SECONDS (20) seconds a publish round, LH_BENCH_ROUNDS (2) rounds,
#   LH_BENCH_SMALL (10000) and LH_BENCH_LARGE (1000000) backlogs,
#   LH_BENCH_BATCHES (40) claim transactions a client at each backlog: the
#   two clients claim 2 x 100 x that many deliveries, which must stay below
#   the small backlog (with 200, 40,000 of 10,000: three quarters of the
#   small run's claims came back empty, and cheap, and the ratio was 2.8 to
#   4.5 instead of about 1.1).
source "$(dirname "$0")/../harness/lib.sh"
cd "$LH_TOP"
PORT=${LH_BENCH_PORT:-54353}
SECS=${LH_BENCH_SECONDS:-20}
ROUNDS=${LH_BENCH_ROUNDS:-2}
SMALL=${LH_BENCH_SMALL:-10000}
LARGE=${LH_BENCH_LARGE:-1000000}
BATCHES=${LH_BENCH_BATCHES:-40}
LOAD_TIMEOUT=${LH_BENCH_LOAD_TIMEOUT:-600}
if [ $((BATCHES * 2 * 100)) -ge "$SMALL" ]; then
	echo "LH_BENCH_BATCHES=$BATCHES claims $((BATCHES * 2 * 100)) deliveries, not fewer than the small backlog ($SMALL): its last claims would come back empty" >&2
	exit 2
fi
trap 'lh_cluster_stop bench-$PORT; rm -rf "$WORK"' EXIT
WORK=$(mktemp -d)
chmod 755 "$WORK"
lh_prepare "bench-$PORT" "$PORT" "fsync = on" "max_connections = 50"

q() { psql -X -q -A -t -v ON_ERROR_STOP=1 -d postgres "$@"; }

q <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS logistics_hub;
SELECT hub.create_endpoint('erp', 'http://127.0.0.1:9/erp', 'erp');
SELECT hub.subscribe('erp', 'order.*');
CREATE TABLE plain_events (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	event_type text NOT NULL, aggregate_id text NOT NULL, payload jsonb NOT NULL
);
CREATE TABLE claimed (pid integer NOT NULL, delivery_id bigint NOT NULL, lease_token bigint NOT NULL);
SQL

cat > "$WORK/plain.sql" <<'EOF2'
\set k random(1, 100000)
INSERT INTO plain_events (event_type, aggregate_id, payload) VALUES ('order.created', 'SO-' || :k, jsonb_build_object('order_id', 'SO-' || :k, 'lines', 3, 'warehouse', 'DC1'));
EOF2
cat > "$WORK/publish.sql" <<'EOF2'
\set k random(1, 100000)
SELECT hub.publish('order.created', 'SO-' || :k, jsonb_build_object('order_id', 'SO-' || :k, 'lines', 3, 'warehouse', 'DC1'));
EOF2
cat > "$WORK/claim.sql" <<'EOF2'
INSERT INTO claimed SELECT pg_backend_pid(), delivery_id, lease_token FROM hub.claim_deliveries(100, 'bench');
SELECT count(hub.complete_delivery(delivery_id, lease_token, 200, 1)) FROM claimed WHERE pid = pg_backend_pid();
DELETE FROM claimed WHERE pid = pg_backend_pid();
EOF2
chmod 644 "$WORK"/*.sql

pgb() { "$PG_BIN/pgbench" -n "$@" postgres; }

echo "machine: $(nproc) cores, PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}')"
echo "publish: 8 clients, $ROUNDS rounds of ${SECS}s each side"
plain=() pub=()
for r in $(seq 1 "$ROUNDS"); do
	t=$(pgb -c 8 -j 2 -M prepared -T "$SECS" -f "$WORK/plain.sql" | awk '/^tps = /{print $3}')
	plain+=("$t")
	t=$(pgb -c 8 -j 2 -M prepared -T "$SECS" -f "$WORK/publish.sql" | awk '/^tps = /{print $3}')
	pub+=("$t")
	echo "  round $r: plain INSERT ${plain[-1]} tps, hub.publish ${pub[-1]} tps"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
mp=$(median "${plain[@]}"); mb=$(median "${pub[@]}")
printf 'plain INSERT (identity key)      %10.0f events/s\n' "$mp"
printf 'hub.publish (1 subscription)     %10.0f events/s\n' "$mb"
awk -v a="$mb" -v b="$mp" 'BEGIN {printf "ratio: hub.publish / plain INSERT = %.2f (target >= 0.85)\n", a / b}'

# the claim backlog: fresh events, routed in bulk, then measured
fill() {
	local t0=$SECONDS
	q -c "SET client_min_messages = warning" -c "SELECT set_config('logistics_hub._retention', 'on', false)" \
	  -c "SET session_replication_role = replica" -c "TRUNCATE hub.attempts, hub.deliveries, hub.outbox, claimed" >/dev/null
	PGOPTIONS="-c statement_timeout=${LOAD_TIMEOUT}s" q -c "INSERT INTO hub.outbox (event_type, aggregate_id, payload)
		  SELECT 'order.created', 'SO-' || (g % 50000), jsonb_build_object('order_id', 'SO-' || (g % 50000), 'lines', 3)
		  FROM generate_series(1, $1) g" \
	  -c "SELECT hub._route_events()" -c "VACUUM ANALYZE hub.outbox, hub.deliveries" >/dev/null
	echo "  backlog of $1 events loaded and routed in $((SECONDS - t0)) s"
}
claim_ms() {
	pgb -c 2 -j 2 -M prepared -r -t "$BATCHES" -f "$WORK/claim.sql" >"$WORK/claim.out"
	awk '/INSERT INTO claimed/ {print $1}' "$WORK/claim.out"
}
fill "$SMALL"
small_ms=$(claim_ms); small_tps=$(awk '/^tps = /{print $3}' "$WORK/claim.out")
fill "$LARGE"
large_ms=$(claim_ms); large_tps=$(awk '/^tps = /{print $3}' "$WORK/claim.out")
echo "claim+complete: batches of 100, 2 clients, $BATCHES batches a client"
printf 'backlog %8d: claim %7.2f ms a batch, %8.0f deliveries/s claimed and completed\n' "$SMALL" "$small_ms" "$(awk -v t="$small_tps" 'BEGIN{print t*100}')"
printf 'backlog %8d: claim %7.2f ms a batch, %8.0f deliveries/s claimed and completed\n' "$LARGE" "$large_ms" "$(awk -v t="$large_tps" 'BEGIN{print t*100}')"
awk -v a="$large_ms" -v b="$small_ms" -v s="$SMALL" -v l="$LARGE" \
	'BEGIN {printf "ratio: claim time at %d / claim time at %d = %.2f (target <= 1.5)\n", l, s, a / b}'
