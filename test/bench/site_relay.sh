#!/usr/bin/env bash
# test/bench/site_relay.sh --- events per second relayed from a site hub to a
# central hub over libpq (postgresql:// endpoint, workers/pg_transport.c),
# against the same rows stored by hub.receive on the central server itself,
# in one run, two throwaway clusters on loopback, fsync = on for both:
#
# 1. local, one statement: SELECT hub.receive(...) FROM generate_series, all
#    LH_BENCH_EVENTS rows in one transaction (the ceiling of the central
#    inbox's insert path);
# 2. local, one transaction each: the same calls as separate statements
#    from one psql session (autocommit), as each relayed event is a
#    transaction of its own on the central server;
# 3. relayed: the events published at the site while its endpoint is
#    paused, then resumed (one dispatcher); the time from the resume until
#    the central inbox holds every event (polled every 20 ms).
# Prints events/s of each and the relay's ratio to 1 and 2, and checks that
# every event arrived once.  LH_BENCH_EVENTS (20000), LH_BENCH_KEYS (1000),
# LH_BENCH_CONCURRENCY (the endpoint's max_concurrency, the pipeline depth:
# 16), LH_BENCH_PORT (54371; the central server on the next port).
source "$(dirname "$0")/../harness/lib.sh"
cd "$LH_TOP"
PORT=${LH_BENCH_PORT:-54371}
CPORT=$((PORT + 1))
EVENTS=${LH_BENCH_EVENTS:-20000}
KEYS=${LH_BENCH_KEYS:-1000}
CONC=${LH_BENCH_CONCURRENCY:-16}
PW=bench-relay-pw
trap 'lh_cluster_stop bench-site-$PORT; lh_cluster_stop bench-central-$CPORT' EXIT

lh_prepare "bench-central-$CPORT" "$CPORT" "fsync = on" "synchronous_commit = on" "shared_buffers = 256MB" \
	"listen_addresses = '127.0.0.1'" "logistics_hub.inbox_workers = 0" "max_wal_size = 4GB"
CHOST=$PGHOST
CDIR=$LH_CLUSTER_DIR
qc() { PGHOST=$CHOST PGPORT=$CPORT psql -X -q -A -t -v ON_ERROR_STOP=1 -d postgres "$@"; }
qc -c "SET client_min_messages = warning" -c "CREATE EXTENSION logistics_hub" \
   -c "CREATE ROLE site_relay LOGIN PASSWORD '$PW'" -c "GRANT USAGE ON SCHEMA hub TO site_relay" \
   -c "GRANT EXECUTE ON FUNCTION hub.receive(text, text, text, jsonb, timestamptz, text, text, text) TO site_relay" >/dev/null
{ echo "host all site_relay 127.0.0.1/32 scram-sha-256"; cat "$CDIR/data/pg_hba.conf"; } >"$CDIR/pg_hba.new"
cp "$CDIR/pg_hba.new" "$CDIR/data/pg_hba.conf"
qc -c "SELECT pg_reload_conf()" >/dev/null

lh_cluster_start "bench-site-$PORT" "$PORT" "fsync = on" "synchronous_commit = on" "shared_buffers = 256MB" \
	"logistics_hub.dispatchers = 1" "logistics_hub.site_name = 'bench'" "max_wal_size = 4GB" \
	"logistics_hub.unknown_event_types = accept"
q() { psql -X -q -A -t -v ON_ERROR_STOP=1 -d postgres "$@"; }
now() { date +%s.%N; }
q -c "SET client_min_messages = warning" -c "CREATE EXTENSION logistics_hub" >/dev/null

PAYLOAD="jsonb_build_object('order_id', 'K-' || (i % $KEYS), 'n', i, 'lines', jsonb_build_array(jsonb_build_object('sku', 'SKU-' || (i % 97), 'qty', 1 + i % 5)))"

# ---- 1. local, one statement
t0=$(now)
qc -c "SELECT count(*) FROM (SELECT hub.receive('local1', 'm' || i, 'order.created', $PAYLOAD,
		correlation_id => 'c' || i, aggregate_id => 'K-' || (i % $KEYS)) FROM generate_series(1, $EVENTS) i) s" >/dev/null
t1=$(now)
one=$(echo "$EVENTS / ($t1 - $t0)" | bc -l)

# ---- 2. local, one transaction each
seq 1 "$EVENTS" | awk -v k="$KEYS" '{ printf "SELECT hub.receive('"'"'local2'"'"', '"'"'m%d'"'"', '"'"'order.created'"'"', jsonb_build_object('"'"'order_id'"'"', '"'"'K-%d'"'"', '"'"'n'"'"', %d, '"'"'lines'"'"', jsonb_build_array(jsonb_build_object('"'"'sku'"'"', '"'"'SKU-%d'"'"', '"'"'qty'"'"', %d))), correlation_id => '"'"'c%d'"'"', aggregate_id => '"'"'K-%d'"'"');\n", $1, $1 % k, $1, $1 % 97, 1 + $1 % 5, $1, $1 % k }' \
	>"$CDIR/calls.sql"
t0=$(now)
qc -f "$CDIR/calls.sql" >/dev/null
t1=$(now)
each=$(echo "$EVENTS / ($t1 - $t0)" | bc -l)

# ---- 3. relayed
q -c "SELECT hub.create_endpoint('central', 'postgresql://site_relay@127.0.0.1:$CPORT/postgres', auth_secret => '$PW',
		max_concurrency => $CONC)" \
  -c "SELECT hub.subscribe('central', 'order.*')" -c "SELECT hub.pause_endpoint('central', 'bench: the backlog first')" >/dev/null
q -c "SELECT count(*) FROM (SELECT hub.publish('order.created', 'K-' || (i % $KEYS), $PAYLOAD, correlation_id => 'c' || i)
		FROM generate_series(1, $EVENTS) i) s" >/dev/null
sleep 2	# (the dispatcher routes the backlog while the endpoint is paused)
q -c "SELECT hub.resume_endpoint('central')" >/dev/null
t0=$(now)
while :; do
	got=$(qc -c "SELECT count(*) FROM hub.inbox WHERE source = 'site:bench'")
	[ "$got" -ge "$EVENTS" ] && break
	sleep 0.02
done
t1=$(now)
relay=$(echo "$EVENTS / ($t1 - $t0)" | bc -l)
got=$(qc -c "SELECT count(*) || ' ' || count(DISTINCT message_id) FROM hub.inbox WHERE source = 'site:bench'")
[ "$got" = "$EVENTS $EVENTS" ] || echo "WARNING: the central inbox holds '$got' (rows, distinct ids), want $EVENTS $EVENTS"

printf 'site_relay: %d events, %d keys, pipeline depth %d, fsync on\n' "$EVENTS" "$KEYS" "$CONC"
printf '  local hub.receive, one statement:        %8.0f events/s\n' "$one"
printf '  local hub.receive, one transaction each: %8.0f events/s\n' "$each"
printf '  relayed site -> central over libpq:      %8.0f events/s  (%.2f of one statement, %.2f of one transaction each)\n' \
	"$relay" "$(echo "$relay / $one" | bc -l)" "$(echo "$relay / $each" | bc -l)"
