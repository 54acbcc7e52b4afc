#!/usr/bin/env bash
# test/bench/push_http.sh --- the push figures of issue 5, side by side in one
# run against one nginx (Debian's nginx-light, one worker process) answering
# 204 on loopback:
#
# 1. wrk posting the same event body to the same nginx with the same number
#    of connections (the baseline: what the loopback, nginx and the machine
#    allow), in requests/s; and test/bench/curl_multi_post.c, the same POSTs
#    through libcurl's multi interface with nothing else, in one process and
#    in two (what libcurl itself costs a request);
# 2. the hub: N events published while the endpoint is paused, routed, then
#    the endpoint resumed and the time until every delivery is delivered
#    measured (one event per request), in events/s, and the ratio to wrk;
#    and the same again with lease groups of LH_BENCH_GROUP events (64): still
#    one event a request, but the events routed together share a delivery
#    row, leased and completed at once (hub.subscribe(..., lease_group));
# 3. the same in batch mode (a JSON array of up to 100 events a request: batch
#    deliveries of 100, formed by routing);
# 4. latency: a steady rate of publishes (pgbench --rate, one event a
#    transaction) for some seconds; nginx logs the arrival time ($msec) and
#    the webhook-id of every request, and commit-to-receiver latency is the
#    arrival minus the event's published_at (its transaction's start, a few
#    tenths of a millisecond before its commit): p50, p99, max; without and
#    with lease groups.
#
# Runs 2. and 3. with each number of dispatchers in LH_BENCH_DISPATCHERS ("1 2":
# one endpoint is shared by all of them, each with its share of the 64
# connections), and so does 4.
# LH_BENCH_PERF=PATH records a profile of the dispatchers of each hub run
# (perf record -g) to PATH.<format>-<dispatchers>-<group>.
# LH_BENCH_PARTS picks what runs ("baseline event group batch latency steady";
# the ratios need baseline; steady, publishing and delivering at once, is
# not in the default set).  LH_BENCH_CLAIM_BATCH (1000) and
# LH_BENCH_SHARED_BUFFERS (512MB) set logistics_hub.claim_batch and
# shared_buffers (500 and 128MB are the defaults a new user has).
# Sizes: LH_BENCH_EVENTS (100000), LH_BENCH_CONNS (logistics_hub.max_in_flight
# and wrk's connections, 64), LH_BENCH_RATE (1000 events/s) for
# LH_BENCH_LATENCY_SECONDS (10).
#
# For each hub run it also prints the CPU time the dispatcher and nginx
# spent per event (from /proc, utime + stime): on a machine shared with
# other work the wall-clock rate moves with the load, the CPU cost per
# event much less.  "attempts not delivered" counts every attempt row
# whose outcome is not delivered (retries, deferrals, stale results), with
# the outcomes named; a healthy run has none.
source "$(dirname "$0")/../harness/lib.sh"
cd "$LH_TOP"
PORT=${LH_BENCH_PORT:-54355}
HTTP_PORT=${LH_BENCH_HTTP_PORT:-18355}
EVENTS=${LH_BENCH_EVENTS:-100000}
CONNS=${LH_BENCH_CONNS:-64}
RATE=${LH_BENCH_RATE:-1000}
LSECS=${LH_BENCH_LATENCY_SECONDS:-10}
DISPATCHERS=${LH_BENCH_DISPATCHERS:-1 2}
GROUP=${LH_BENCH_GROUP:-64}
PARTS=${LH_BENCH_PARTS:-baseline event group batch latency}
CLAIM_BATCH=${LH_BENCH_CLAIM_BATCH:-1000}
SHARED_BUFFERS=${LH_BENCH_SHARED_BUFFERS:-512MB}
part() { [[ " $PARTS " == *" $1 "* ]]; }
WORK=$(mktemp -d)
chmod 755 "$WORK"
NGINX_PID=
cleanup() {
	[ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null
	lh_cluster_stop "bench-$PORT"
	rm -rf "$WORK"
}
trap cleanup EXIT

lh_prepare "bench-$PORT" "$PORT" "fsync = on" "max_connections = 50" \
	"logistics_hub.dispatchers = 1" "logistics_hub.database = 'postgres'" \
	"logistics_hub.max_in_flight = $CONNS" "logistics_hub.claim_batch = $CLAIM_BATCH" \
	"logistics_hub.egress_allow = '127.0.0.1'" "shared_buffers = $SHARED_BUFFERS" \
	"synchronous_commit = on"

# nginx: one worker, 204 for everything, keep-alive without a request limit
mkdir -p "$WORK/nginx/logs"
chmod 777 "$WORK/nginx/logs"
cat > "$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
error_log $WORK/nginx/logs/error.log warn;
pid $WORK/nginx/nginx.pid;
events { worker_connections 4096; }
http {
	access_log off;
	keepalive_requests 1000000;
	keepalive_timeout 60s;
	client_body_buffer_size 64k;
	log_format arrival '\$msec \$http_webhook_id';
	server {
		listen 127.0.0.1:$HTTP_PORT;
		location /log { access_log $WORK/nginx/logs/arrival.log arrival; return 204; }
		location / { return 204; }
	}
}
EOF
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
NGINX_PID=$!
for _ in $(seq 50); do
	(exec 3<>/dev/tcp/127.0.0.1/$HTTP_PORT) 2>/dev/null && break
	sleep 0.1
done

q() { psql -X -q -A -t -v ON_ERROR_STOP=1 -d postgres "$@"; }
now() { date +%s.%N; }
# cpu PID --- CPU time of a process so far, in clock ticks
cpu() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# cpus PID... --- the same, summed over processes
cpus() { local t=0 p; for p in "$@"; do t=$((t + $(cpu "$p"))); done; echo "$t"; }
TICK=$(getconf CLK_TCK)
# poll_until QUERY --- every 5 ms until QUERY says t, each time a statement
# (and transaction) of its own in one session kept open in a coprocess
coproc POLL { psql -X -q -A -t -v ON_ERROR_STOP=1 -d postgres; }
poll_until() {
	local answer
	while :; do
		printf '%s;\n' "${1//$'\n'/ }" >&"${POLL[1]}"
		read -r answer <&"${POLL[0]}" || { echo "the polling session ended" >&2; exit 1; }
		[ "$answer" = t ] && return
		sleep 0.005
	done
}
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -r)," \
	"$("$PG_BIN/postgres" --version | sed 's/^postgres (PostgreSQL) /PostgreSQL /'), libcurl $(curl-config --version | cut -d' ' -f2)," \
	"$(nginx -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
echo "events: $EVENTS, connections: $CONNS (wrk, logistics_hub.max_in_flight and the endpoint's max_concurrency), claim_batch $CLAIM_BATCH, shared_buffers $SHARED_BUFFERS, dispatchers: $DISPATCHERS"

q >/dev/null <<SQL
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS logistics_hub;
SELECT hub.create_endpoint('nginx', 'http://127.0.0.1:$HTTP_PORT/', 'wms', max_concurrency => $CONNS,
	signing_secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw');
UPDATE hub.endpoints SET spread = true WHERE name = 'nginx';	-- shared by the dispatchers
SQL
BODY=$(q -c "SELECT hub.event_body('event', gen_random_uuid(), 'order.created', 'SO-1', now(), NULL, '{\"order_id\": \"SO-1\", \"lines\": 3, \"warehouse\": \"DC1\"}')")

# 1. wrk baseline
WRK_RPS=1 CURL1=1 CURL2=1 BASELINE=False
if part baseline; then
BASELINE=True
cat > "$WORK/post.lua" <<EOF
wrk.method = "POST"
wrk.body = [[$BODY]]
wrk.headers["Content-Type"] = "application/json"
EOF
WRK_RPS=$(wrk -t1 -c"$CONNS" -d10s -s "$WORK/post.lua" "http://127.0.0.1:$HTTP_PORT/" |
	awk '/Requests\/sec/ {print $2}')
echo "wrk: $WRK_RPS requests/s ($CONNS connections, 10 s)"

# 1b. libcurl alone: the same POSTs over the same connections through
# libcurl's multi interface and nothing else, in one process and in two
# (as the one and two dispatchers below): what libcurl itself costs
printf '%s' "$BODY" > "$WORK/body.json"
gcc -O2 -o "$WORK/curl_multi_post" test/bench/curl_multi_post.c $(curl-config --libs)
CURL1=$("$WORK/curl_multi_post" "http://127.0.0.1:$HTTP_PORT/" "$CONNS" 100000 "$WORK/body.json")
CURL2=$( ("$WORK/curl_multi_post" "http://127.0.0.1:$HTTP_PORT/" $((CONNS / 2)) 50000 "$WORK/body.json" &
		  "$WORK/curl_multi_post" "http://127.0.0.1:$HTTP_PORT/" $((CONNS / 2)) 50000 "$WORK/body.json"; wait) |
		awk '{s += $1} END {printf "%.0f", s}')
echo "libcurl alone (no database): $CURL1 requests/s in one process, $CURL2 in two ($CONNS connections in all)"
fi

# 2./3. the hub: publish while paused, route, resume, time until delivered
run_hub() {
	local format=$1 ndisp=$2 group=${3:-1} label perf_pid t0 t1 dpids npid d0 d1 n0 n1 failed
	label=$format; [ "$group" -gt 1 ] && label="$format, lease_group $group"
	q >/dev/null <<SQL
SELECT hub.pause_endpoint('nginx', 'bench');
DELETE FROM hub.subscriptions;
SELECT hub.subscribe('nginx', 'order.*', ordering => 'none', body_format => '$format', batch_max => 100,
	lease_group => $group);
INSERT INTO hub.outbox (event_type, aggregate_id, payload)
SELECT 'order.created', 'SO-' || i, jsonb_build_object('order_id', 'SO-' || i, 'lines', 3, 'warehouse', 'DC1')
FROM generate_series(1, $EVENTS) i;
SQL
	# the dispatcher routes at its next claim; wait until all are routed
	until [ "$(q -c "SELECT coalesce(sum(coalesce(cardinality(batch_events), 1)), 0) FROM hub.deliveries WHERE state = 'pending'")" -ge "$EVENTS" ]; do
		q -c "SELECT hub._route_events()" >/dev/null
		sleep 0.2
	done
	q -c "VACUUM ANALYZE hub.deliveries" -c "CHECKPOINT" >/dev/null
	q -c "ALTER SYSTEM SET logistics_hub.dispatchers = $ndisp" -c "SELECT pg_reload_conf()" >/dev/null
	until [ "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'logistics_hub dispatcher'")" -eq "$ndisp" ]; do
		sleep 0.2
	done
	sleep 1.5	# endpoint settings (and so the dispatchers' shares) are re-read within a second
	dpids=$(q -c "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE backend_type = 'logistics_hub dispatcher'")
	npid=$(pgrep -P "$NGINX_PID" | head -1)
	d0=$(cpus $dpids); n0=$(cpu "$npid")
	perf_pid=
	if [ -n "${LH_BENCH_PERF:-}" ]; then	# a profile of the dispatchers, for reading with perf report
		perf record -q -F 1999 -g -o "$LH_BENCH_PERF.$format-$ndisp-$group" -p "${dpids// /,}" >/dev/null 2>&1 &
		perf_pid=$!
		sleep 0.5
	fi
	t0=$(now)
	# resume, then wake once the resume is committed (wake() inside the
	# resuming transaction would wake the dispatcher before it can see it)
	q -c "SELECT hub.resume_endpoint('nginx', 'bench')" -c "SELECT hub.wake()" >/dev/null
	# (polled every 5 ms by one session, a statement at a time: a run of
	# batches takes about a second, which a shell loop starting psql every
	# 50 ms would blur.  Not from one DO block: one that never commits holds
	# its snapshot, and so the xmin horizon, for the whole run, and then no dead
	# index entry of a claimed delivery is ever killed, and every claim reads
	# all of those before it again (24 million index entries for 100k events,
	# a quarter of the dispatchers' CPU).  First the newest delivery, by primary
	# key, then every open one: a scan of the open deliveries every 5 ms for
	# the whole run took a third of a core from the dispatchers)
	poll_until "SELECT d.state NOT IN ('pending', 'in_flight', 'retry_wait') FROM hub.deliveries d
		WHERE d.delivery_id = (SELECT max(m.delivery_id) FROM hub.deliveries m)"
	poll_until "SELECT NOT EXISTS (SELECT 1 FROM hub.deliveries WHERE state IN ('pending', 'in_flight', 'retry_wait'))"
	t1=$(now)
	d1=$(cpus $dpids); n1=$(cpu "$npid")
	[ -n "$perf_pid" ] && { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
	failed=$(q -c "SELECT coalesce(sum(n), 0) || coalesce(' (' || string_agg(outcome || ' ' || n, ', ') || ')', '')
		FROM (SELECT outcome, count(*) AS n FROM hub.attempts WHERE outcome <> 'delivered' GROUP BY 1) a")
	python3 -c "
n = $EVENTS; dt = $t1 - $t0; r = n / dt; per = 100 if '$format' == 'batch' else 1
ratios = f', {r / $WRK_RPS:.3f} of wrk, {r / per / $([ "$ndisp" -gt 1 ] && echo "$CURL2" || echo "$CURL1"):.3f} of libcurl alone in as many processes (requests)' if $BASELINE else ''
print(f'hub ($label, $ndisp dispatcher$([ "$ndisp" -gt 1 ] && echo s)): {n} events in {dt:.2f} s = {r:.0f} events/s ({r / per:.0f} requests/s){ratios};'
      f' CPU per event: dispatchers {($d1 - $d0) * 1e6 / $TICK / n:.0f} us, nginx {($n1 - $n0) * 1e6 / $TICK / n:.1f} us;'
      f' attempts not delivered: $failed')"
	q -c "SET logistics_hub._retention = on; TRUNCATE hub.attempts, hub.deliveries, hub.outbox CASCADE" >/dev/null 2>&1 ||
		q -c "DELETE FROM hub.deliveries" >/dev/null
}
for ndisp in $DISPATCHERS; do
	part event && run_hub event "$ndisp"
	part group && run_hub event "$ndisp" "$GROUP"
	part batch && run_hub batch "$ndisp"
done

# 4. latency at a steady rate
q -c "UPDATE hub.endpoints SET url = 'http://127.0.0.1:$HTTP_PORT/log'" >/dev/null
cat > "$WORK/publish.sql" <<'EOF'
\set k random(1, 1000000)
SELECT hub.publish('order.created', 'SO-' || :k, jsonb_build_object('order_id', 'SO-' || :k));
EOF
chmod 644 "$WORK/publish.sql"
# part_setup NDISP GROUP --- one subscription with lease groups of GROUP,
# NDISP dispatchers running, nginx's arrival log emptied, the endpoint's
# settings re-read: what the latency and steady parts start from
part_setup() {
	local ndisp=$1 group=$2
	q -c "DELETE FROM hub.subscriptions" \
		-c "SELECT hub.subscribe('nginx', 'order.*', ordering => 'none', lease_group => $group)" >/dev/null
	q -c "ALTER SYSTEM SET logistics_hub.dispatchers = $ndisp" -c "SELECT pg_reload_conf()" >/dev/null
	until [ "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'logistics_hub dispatcher'")" -eq "$ndisp" ]; do
		sleep 0.2
	done
	: > "$WORK/nginx/logs/arrival.log"	# (nginx appends)
	sleep 1.5	# endpoint settings are re-read within a second
}
latency() {
	local ndisp=$1 group=$2
	part_setup "$ndisp" "$group"
	"$PG_BIN/pgbench" -n -c 4 -j 2 -R "$RATE" -T "$LSECS" -f "$WORK/publish.sql" postgres >/dev/null
	sleep 2
	q -c "SET client_min_messages = warning" -c "DROP TABLE IF EXISTS arrival" -c "CREATE TABLE arrival (at float8, event_id text)" >/dev/null
	q -c "\\copy arrival FROM '$WORK/nginx/logs/arrival.log' WITH (FORMAT text, DELIMITER ' ')"
	q -v ndisp="$ndisp" -v group="$group" <<'SQL'
SELECT format('latency at %s events/s, %s dispatcher(s), lease_group %s: %s events, p50 %s ms, p99 %s ms, max %s ms',
	round(count(*) / greatest(extract(epoch FROM max(o.published_at) - min(o.published_at)), 1)),
	:ndisp, :group, count(*),
	round(percentile_cont(0.5) WITHIN GROUP (ORDER BY l)::numeric, 1),
	round(percentile_cont(0.99) WITHIN GROUP (ORDER BY l)::numeric, 1),
	round(max(l)::numeric, 1))
FROM (SELECT a.at * 1000 - extract(epoch FROM o.published_at) * 1000 AS l, o.published_at
	  FROM arrival a JOIN hub.outbox o ON o.event_id = a.event_id::uuid) o;
SQL
}
# steady NDISP GROUP --- publish and deliver at once, as an application
# does: 8 pgbench clients publish one event a transaction as fast as they
# can for LH_BENCH_LATENCY_SECONDS while the dispatchers deliver; prints
# the publishing rate and the delivery rate over the whole window (first
# publish to last arrival), which is what a user who publishes while
# measuring sees.
steady() {
	local ndisp=$1 group=$2
	part_setup "$ndisp" "$group"
	"$PG_BIN/pgbench" -n -c 8 -j 2 -T "$LSECS" -f "$WORK/publish.sql" postgres >/dev/null
	poll_until "SELECT count(*) = 0 FROM hub.deliveries WHERE state <> 'delivered'"
	q -c "SET client_min_messages = warning" -c "DROP TABLE IF EXISTS arrival" -c "CREATE TABLE arrival (at float8, event_id text)" >/dev/null
	q -c "\\copy arrival FROM '$WORK/nginx/logs/arrival.log' WITH (FORMAT text, DELIMITER ' ')"
	q -v ndisp="$ndisp" -v group="$group" <<'SQL'
SELECT format('steady, %s dispatcher(s), lease_group %s: %s events published at %s events/s, delivered at %s events/s (first publish to last arrival), last arrival %s ms after the last publish',
	:ndisp, :group, count(*),
	round(count(*) / greatest(extract(epoch FROM max(o.published_at) - min(o.published_at)), 0.001)),
	round(count(*) / greatest(max(a.at) - extract(epoch FROM min(o.published_at)), 0.001)),
	round(((max(a.at) - extract(epoch FROM max(o.published_at))) * 1000)::numeric, 1))
FROM arrival a JOIN hub.outbox o ON o.event_id = a.event_id::uuid;
SQL
	q -c "SELECT hub.run_retention(retention => '0 s')" >/dev/null 2>&1 || true
}
if part steady; then
	for ndisp in $DISPATCHERS; do
		steady "$ndisp" 1
		steady "$ndisp" "$GROUP"
	done
fi
# (an if, not part latency && ...: without the latency part that would be
# the script's exit status, a failure)
if part latency; then
	for ndisp in $DISPATCHERS; do
		latency "$ndisp" 1
		latency "$ndisp" "$GROUP"
	done
fi
