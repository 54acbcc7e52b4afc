#!/usr/bin/env bash
# test/bench/nats_jetstream.sh --- events/s from the outbox into a three-node
# JetStream stream with replicas 3 (the nats transport), beside the ceiling:
# test/bench/nats_publish.c publishing the same number of messages shaped
# as the hub's (the same subjects per key, a Nats-Msg-Id of a UUID's length
# each, the hub's two headers, bodies of the hub's body size, as many
# unacknowledged at once as the hub's logistics_hub.max_in_flight) with the
# same client library and no database, in the same run, into the same
# stream.
#
# The hub: N events over KEYS aggregates published while the endpoint is
# paused and routed, then the endpoint resumed and the time until every
# delivery is delivered measured; with per_key ordering (one event of a
# key in flight at a time), with ordering none, and with ordering none
# and lease groups of 64 (still one message an event, one delivery row a
# group).  The CPU time the dispatcher and the three nats-servers spend an
# event is printed beside (from /proc): on 2 cores the servers' share of
# the machine is what the hub's own work competes with.  Target: at least 0.5
# of the ceiling.
# Sizes: LH_BENCH_EVENTS (50000), LH_BENCH_KEYS (1000), LH_BENCH_CONNS
# (logistics_hub.max_in_flight and the ceiling's pending limit, 256).
# NATS nodes on 127.0.0.1 ports LH_BENCH_NATS_BASE (the cluster's port + 400) .. +22.
# LH_BENCH_VARIANTS: which of "per_key per_key_group none group" to run (all
# four; per_key_group: per_key with lease groups of 64, a key's events in a
# group sent one after another);
# LH_BENCH_PERF=DIR: a perf profile of the dispatcher per variant in DIR.
source "$(dirname "$0")/../harness/lib.sh"
source "$LH_TOP/test/nats/cluster.sh"
cd "$LH_TOP"
PORT=${LH_BENCH_PORT:-54356}
EVENTS=${LH_BENCH_EVENTS:-50000}
KEYS=${LH_BENCH_KEYS:-1000}
CONNS=${LH_BENCH_CONNS:-256}
NATS_BASE=${LH_BENCH_NATS_BASE:-$((PORT + 400))}
WORK=$(mktemp -d)
cleanup() {
	lh_nats_stop
	lh_cluster_stop "bench-$PORT"
	rm -rf "$WORK"
}
trap cleanup EXIT

lh_prepare "bench-$PORT" "$PORT" "fsync = on" "synchronous_commit = on" \
	"logistics_hub.dispatchers = 1" "logistics_hub.database = 'postgres'" \
	"logistics_hub.max_in_flight = $CONNS" "logistics_hub.claim_batch = ${LH_BENCH_CLAIM_BATCH:-1000}" \
	"shared_buffers = 512MB"
q() { psql -X -q -A -t -v ON_ERROR_STOP=1 -d postgres "$@"; }
now() { date +%s.%N; }
q -c "SET client_min_messages = warning" -c "CREATE EXTENSION logistics_hub" >/dev/null

lh_nats_start "$WORK/nats" "$NATS_BASE"
# (the cluster may still be electing its meta leader: "no suitable peers")
for try in $(seq 30); do
	"$LH_NATS_TOOL" stream "$LH_NATS_URLS" LHUB 'lhub.>' 3 && break
	[ "$try" = 30 ] && exit 1
	sleep 1
done
cc -O2 -Wall -Werror -o "$WORK/nats_publish" test/bench/nats_publish.c -lnats
echo "machine: $(nproc) cores, $(uname -r), $("$PG_BIN/postgres" --version | sed 's/^postgres (PostgreSQL) /PostgreSQL /')," \
	"nats-server $(nats-server --version | sed 's/^nats-server: v//'), libnats $(dpkg-query -W -f='${Version}' libnats-dev)"
echo "events: $EVENTS over $KEYS keys, stream LHUB: 3 nodes, replicas 3, file storage; in flight: $CONNS"

# the hub: publish while paused, route, resume, time until delivered; once
# per ordering (per_key: one event of a key in flight, a key's next event
# claimable only once the previous one is recorded; none: no such wait)
q -c "SELECT hub.create_endpoint('js', '$LH_NATS_URLS', 'other', max_concurrency => $CONNS, timeout_ms => 10000)" >/dev/null
declare -A HUB
cpu() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# (the dispatcher's own thread, without libnats' threads)
cpu_main() { awk '{print $14 + $15}' "/proc/$1/task/$1/stat" 2>/dev/null || echo 0; }
# (ns the dispatcher's own thread waited for a CPU while runnable)
runq_main() { awk '{print $2}' "/proc/$1/task/$1/schedstat" 2>/dev/null || echo 0; }
cpus() { local t=0 p; for p in "$@"; do t=$((t + $(cpu "$p"))); done; echo "$t"; }
TICK=$(getconf CLK_TCK)
VARIANTS=${LH_BENCH_VARIANTS:-per_key per_key_group none group}
for variant in $VARIANTS; do
	ordering=$variant; group=1
	[ "$variant" = group ] && { ordering=none; group=64; }
	[ "$variant" = per_key_group ] && { ordering=per_key; group=64; }
	q >/dev/null <<SQL
DELETE FROM hub.subscriptions;
SELECT hub.subscribe('js', 'order.*', ordering => '$ordering', lease_group => $group);
SELECT hub.pause_endpoint('js', 'bench');
INSERT INTO hub.outbox (event_type, aggregate_id, payload)
SELECT 'order.created', 'SO-' || (i % $KEYS), jsonb_build_object('order_id', 'SO-' || (i % $KEYS), 'lines', 3, 'warehouse', 'DC1')
FROM generate_series(1, $EVENTS) i;
SQL
	until [ "$(q -c "SELECT coalesce(sum(coalesce(cardinality(batch_events), 1)), 0) FROM hub.deliveries WHERE state = 'pending'")" -ge "$EVENTS" ]; do
		q -c "SELECT hub._route_events()" >/dev/null
		sleep 0.2
	done
	q -c "VACUUM ANALYZE hub.deliveries" -c "CHECKPOINT" >/dev/null
	sleep 1.5
	dpid=$(q -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'logistics_hub dispatcher'")
	d0=$(cpu "$dpid"); m0=$(cpu_main "$dpid"); r0=$(runq_main "$dpid"); n0=$(cpus "${LH_NATS_PIDS[1]}" "${LH_NATS_PIDS[2]}" "${LH_NATS_PIDS[3]}")
	[ -n "${LH_BENCH_PERF:-}" ] && { perf record -g -o "$LH_BENCH_PERF/$variant.data" -p "$dpid" >/dev/null 2>&1 & perf_pid=$!; sleep 0.5; }
	t0=$(now)
	q -c "SELECT hub.resume_endpoint('js', 'bench')" -c "SELECT hub.wake()" >/dev/null
	# (one session waits, polling every 20 ms: a psql started every few
	# milliseconds would take CPU from the hub the ceiling does not pay)
	q -c "DO \$\$BEGIN
			WHILE EXISTS (SELECT 1 FROM hub.deliveries WHERE state IN ('pending', 'in_flight', 'retry_wait')) LOOP
				PERFORM pg_sleep(0.02);
			END LOOP;
		  END\$\$"
	t1=$(now)
	[ -n "${LH_BENCH_PERF:-}" ] && { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
	d1=$(cpu "$dpid"); m1=$(cpu_main "$dpid"); r1=$(runq_main "$dpid"); n1=$(cpus "${LH_NATS_PIDS[1]}" "${LH_NATS_PIDS[2]}" "${LH_NATS_PIDS[3]}")
	HUB[$variant]=$(awk -v n="$EVENTS" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
	NOT_DELIVERED=$(q -c "SELECT count(*) FROM hub.attempts WHERE outcome <> 'delivered'")
	echo "hub (outbox -> JetStream R3, ordering $ordering, lease_group $group): $EVENTS events in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s: ${HUB[$variant]} events/s;" \
		"CPU an event: dispatcher $(( (d1 - d0) * 1000000 / TICK / EVENTS )) us" \
		"(its own thread $(( (m1 - m0) * 1000000 / TICK / EVENTS )) us, busy $(awk -v c="$((m1 - m0))" -v k="$TICK" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", 100 * c / k / (b - a) }')% of the time, waiting for a CPU $(awk -v r="$((r1 - r0))" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", 100 * r / 1e9 / (b - a) }')%)," \
		"the three nats-servers $(( (n1 - n0) * 1000000 / TICK / EVENTS )) us; attempts not delivered so far: $NOT_DELIVERED"
done
"$LH_NATS_TOOL" dump-sizes "$LH_NATS_URLS" LHUB >"$WORK/dump"
SIZE=$(awk '{ s += $4 } END { printf "%.0f", s / NR }' "$WORK/dump")
echo "body: $SIZE bytes on average"

# the ceiling: the same messages from a C program, no database
n0=$(cpus "${LH_NATS_PIDS[1]}" "${LH_NATS_PIDS[2]}" "${LH_NATS_PIDS[3]}")
read -r ACKED ERRS SECS CEIL < <("$WORK/nats_publish" "$LH_NATS_URLS" order.created "$EVENTS" "$KEYS" "$SIZE" "$CONNS")
n1=$(cpus "${LH_NATS_PIDS[1]}" "${LH_NATS_PIDS[2]}" "${LH_NATS_PIDS[3]}")
echo "libnats alone (js_PublishMsgAsync, $CONNS pending at most): $ACKED acknowledged, $ERRS errors in $SECS s: $CEIL msgs/s;" \
	"CPU a message: the three nats-servers $(( (n1 - n0) * 1000000 / TICK / EVENTS )) us"
for variant in $VARIANTS; do
	echo "ratio: hub ($variant) / libnats alone = $(awk -v h="${HUB[$variant]}" -v c="$CEIL" 'BEGIN { printf "%.2f", h / c }') (target at least 0.5)"
done
