#!/usr/bin/env bash
# test/bench/inbox_flow.sh --- mapped status records per second from the
# inbox through hub.apply_status into entity state and canonical events,
# processed by the background inbox workers, side by side in one run on one
# throwaway cluster (fsync = on) with the same records applied by a plain
# SQL UPDATE ... FROM of a state table (the floor any status store pays):
#
# 1. baseline: the records (their key, code and time) copied into a plain
#    table; UPDATE bench_state SET state, code, updated_at FROM them, one
#    statement and commit per code round (a key's second record after its
#    first), timed from the client;
# 2. the hub: LH_BENCH_RECORDS EasyPost tracker records (two a key:
#    in_transit, then out_for_delivery) received into hub.inbox while no
#    inbox worker runs, then logistics_hub.inbox_workers set to each number
#    in LH_BENCH_INBOX_WORKERS and the time until the inbox is drained
#    measured (polled every 5 ms).  Each record is applied with
#    hub.apply_status and its canonical event published in the same
#    transaction: by the declared mapping (hub.map_inbox) when the
#    extension has it, else by a handler doing the same (hub.apply_status,
#    then hub.publish of shipment.moved when the state moved, unless
#    hub.apply_status publishes the canonical event itself).
#
# 3. where the time goes (LH_BENCH_PARTS has "components"): the same
#    records' work without the worker, each in one statement and one
#    transaction from psql: hub.apply_status alone, then the handler's body
#    (hub.apply_status and hub.publish), per record; and a worker run with a
#    handler that does nothing (the inbox processing itself: claim,
#    subtransaction, handler call, settlement).
#
# Prints records/s and the ratio to the UPDATE, the CPU time the inbox
# workers spent per record (from /proc), and checks the outcome (every
# message done, one history row each, one event per state change).
# LH_BENCH_RECORDS (100000), LH_BENCH_INBOX_WORKERS ("1 2"),
# LH_BENCH_PARTS ("baseline hub components"), LH_BENCH_TRACK_FUNCTIONS (none;
# pl or all: print each function's calls, self and total time per record
# after each worker run),
# LH_BENCH_BATCH (logistics_hub.inbox_batch, 500), LH_BENCH_MODE (auto |
# handler | mapping | noop: a handler that does nothing, the cost of the
# inbox processing itself), LH_BENCH_PERF=PATH records a profile of the workers
# (perf record -g) to PATH.<workers>.
source "$(dirname "$0")/../harness/lib.sh"
cd "$LH_TOP"
PORT=${LH_BENCH_PORT:-54357}
RECORDS=${LH_BENCH_RECORDS:-100000}
WORKERS=${LH_BENCH_INBOX_WORKERS:-1 2}
BATCH=${LH_BENCH_BATCH:-500}
MODE=${LH_BENCH_MODE:-auto}
KEYS=$((RECORDS / 2))
PARTS=${LH_BENCH_PARTS:-baseline hub components}
part() { [[ " $PARTS " == *" $1 "* ]]; }
trap 'lh_cluster_stop bench-$PORT' EXIT
lh_prepare "bench-$PORT" "$PORT" "fsync = on" "synchronous_commit = on" "shared_buffers = 256MB" \
	"logistics_hub.inbox_batch = $BATCH" "logistics_hub.inbox_naptime = 1s" "max_wal_size = 4GB" \
	"track_functions = '${LH_BENCH_TRACK_FUNCTIONS:-none}'"

q() { psql -X -q -A -t -v ON_ERROR_STOP=1 -d postgres "$@"; }
now() { date +%s.%N; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
TICK=$(getconf CLK_TCK)
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
rate() { awk -v n="$1" -v t="$2" 'BEGIN { printf "%.0f", n / t }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else print "n/a" }'; }

q >/dev/null <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS logistics_hub;
INSERT INTO hub.event_types (event_type, required_keys) VALUES ('shipment.moved', '{shipment_id,state}');
CREATE FUNCTION public.bench_apply(p jsonb, t text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
	r hub.apply_result;
BEGIN
	r := hub.apply_status('shipment', p->>'shipment_id', 'easypost', p->>'status', (p->>'updated_at')::timestamptz);
	-- (where hub.apply_status publishes the canonical event itself, that is all)
	IF r.outcome IN ('created', 'advanced', 'corrected') AND to_regclass('hub.state_events') IS NULL THEN
		PERFORM hub.publish('shipment.moved', p->>'shipment_id',
			jsonb_build_object('shipment_id', p->>'shipment_id', 'state', r.state, 'previous_state', r.previous_state,
							   'system', 'easypost', 'occurred_at', p->>'updated_at'));
	END IF;
END
$$;
CREATE FUNCTION public.bench_noop(p jsonb, t text) RETURNS void LANGUAGE sql SECURITY DEFINER AS 'SELECT';
SQL
have_map=$(q -c "SELECT to_regproc('hub.map_inbox') IS NOT NULL")
if [ "$MODE" = auto ]; then [ "$have_map" = t ] && MODE=mapping || MODE=handler; fi
if [ "$MODE" = noop ]; then
	q -c "SELECT hub.register_handler('bench.tracker', 'public.bench_noop')" >/dev/null
elif [ "$MODE" = mapping ]; then
	q -c "SELECT hub.map_inbox('bench.tracker', 'shipment', 'easypost', '\$.shipment_id', '\$.status', occurred_at_path => '\$.updated_at')" >/dev/null
else
	q -c "SELECT hub.register_handler('bench.tracker', 'public.bench_apply')" >/dev/null
fi

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -r)," \
	"$("$PG_BIN/postgres" --version | sed 's/^postgres (PostgreSQL) /PostgreSQL /'), fsync on"
echo "records: $RECORDS ($KEYS keys, two records each), inbox_batch $BATCH, inbox workers: $WORKERS, applied by: $MODE"

# receive RUN --- the records of a run into hub.inbox (no worker runs):
# keys R<run>-1..KEYS, in_transit for every key, then out_for_delivery
receive() {
	local t0 t1
	t0=$(now)
	q -c "SELECT count(hub.receive('easypost', 'r$1-' || k || '-' || s, 'bench.tracker',
			jsonb_build_object('shipment_id', 'R$1-' || k, 'status', (ARRAY['in_transit', 'out_for_delivery'])[s],
							   'updated_at', '2026-01-01 00:00:00+00'::timestamptz + s * interval '1 hour',
							   'carrier', 'UPS', 'tracking_code', '1Z' || k),
			aggregate_id => 'R$1-' || k))
		  FROM generate_series(1, 2) s, generate_series(1, $KEYS) k" >/dev/null
	t1=$(now)
	q -c "VACUUM ANALYZE hub.inbox" >/dev/null
	echo "  (received $RECORDS records in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s, one statement)"
}

# 1. baseline: the same records applied by UPDATE ... FROM
base=0
if part baseline; then
receive base
q >/dev/null <<SQL
CREATE TABLE bench_records AS
	SELECT payload->>'shipment_id' AS key, payload->>'status' AS code, (payload->>'updated_at')::timestamptz AS at,
		   inbox_id
	FROM hub.inbox WHERE message_id LIKE 'rbase-%';
CREATE TABLE bench_state (key text PRIMARY KEY, state text, code text, occurred_at timestamptz, updated_at timestamptz);
INSERT INTO bench_state (key) SELECT DISTINCT key FROM bench_records;
VACUUM ANALYZE bench_records, bench_state;
DELETE FROM hub.inbox WHERE message_id LIKE 'rbase-%';
SQL
t0=$(now)
for code in in_transit out_for_delivery; do
	q -c "UPDATE bench_state s SET state = r.code, code = r.code, occurred_at = r.at, updated_at = now()
		  FROM bench_records r WHERE r.key = s.key AND r.code = '$code'" >/dev/null
done
t1=$(now)
base_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
base=$(rate "$RECORDS" "$base_s")
printf '%-44s %8s records/s  (%.2f s)\n' "plain UPDATE ... FROM of a state table" "$base" "$base_s"
fi

# hub_run RUN WORKERS LABEL --- drain the records of RUN with WORKERS inbox workers
hub_run() {
	local run=$1 w=$2 label=$3 t0 t1 pids c0 c1 p secs r perf_pid
	receive "$run"
	t0=$(now)
	q -c "SELECT pg_stat_reset()" >/dev/null
	q -c "ALTER SYSTEM SET logistics_hub.inbox_workers = $w" -c "SELECT pg_reload_conf()" >/dev/null
	poll_until "SELECT count(*) = $w FROM pg_stat_activity WHERE backend_type = 'logistics_hub inbox'"
	pids=$(q -c "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE backend_type = 'logistics_hub inbox'")
	c0=0
	for p in $pids; do c0=$((c0 + $(cpu "$p"))); done
	if [ -n "${LH_BENCH_PERF:-}" ]; then
		perf record -g -o "$LH_BENCH_PERF.$w" -p "$(echo "$pids" | tr ' ' ',')" >/dev/null 2>&1 &
		perf_pid=$!
	fi
	poll_until "SELECT NOT EXISTS (SELECT FROM hub.inbox WHERE state IN ('new', 'retry_wait'))"
	t1=$(now)
	if [ -n "${LH_BENCH_PERF:-}" ]; then kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; fi
	c1=0
	for p in $pids; do c1=$((c1 + $(cpu "$p"))); done
	q -c "ALTER SYSTEM SET logistics_hub.inbox_workers = 0" -c "SELECT pg_reload_conf()" >/dev/null
	poll_until "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'logistics_hub inbox'"
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
	r=$(rate "$RECORDS" "$secs")
	printf '%-44s %8s records/s  (%.2f s; worker CPU %.1f us/record)\n' "$label" "$r" "$secs" \
		"$(awk -v c=$((c1 - c0)) -v t="$TICK" -v n="$RECORDS" 'BEGIN { print c / t / n * 1e6 }')"
	echo "ratio: $label / UPDATE ... FROM = $(ratio "$r" "$base")"
	q -c "SELECT '  check: ' || (SELECT count(*) FILTER (WHERE state = 'done') || ' done, ' || count(*) FILTER (WHERE state <> 'done') || ' not done' FROM hub.inbox WHERE message_id LIKE 'r$run-%')
		|| ', ' || (SELECT count(*) || ' history rows (' || string_agg(DISTINCT outcome, ',') || ')' FROM hub.status_history WHERE business_key LIKE 'R$run-%')
		|| ', ' || (SELECT count(*) || ' events' FROM hub.outbox WHERE aggregate_id LIKE 'R$run-%')
		|| ', ' || (SELECT count(*) || ' keys in state' FROM hub.entity_state WHERE business_key LIKE 'R$run-%' AND state = 'out_for_delivery')"
	if [ "${LH_BENCH_TRACK_FUNCTIONS:-none}" != none ]; then
		# (the workers report their counts at the end of each transaction)
		sleep 1
		echo "  functions by self time (track_functions = $LH_BENCH_TRACK_FUNCTIONS; calls and us a record):"
		q -F ' ' -c "SELECT rpad(schemaname || '.' || funcname, 34), lpad(round(calls::numeric / $RECORDS, 2)::text, 6),
			lpad(round(self_time::numeric * 1000 / $RECORDS, 1)::text, 8), lpad(round(total_time::numeric * 1000 / $RECORDS, 1)::text, 8)
			FROM pg_stat_user_functions ORDER BY self_time DESC LIMIT 25" | sed 's/^/    /'
	fi
}

# 2. the hub, with each number of inbox workers
if part hub; then
	for w in $WORKERS; do
		hub_run "w$w" "$w" "hub: $w inbox worker(s), $MODE"
	done
fi

# 3. where the time goes
if part components; then
	echo "where the time goes (one statement, one transaction each, no worker):"
	# timed SQL: the same work over the records, printed per record
	timed() {
		local t0 t1
		t0=$(now)
		q -c "$2" >/dev/null
		t1=$(now)
		printf '  %-42s %8.1f us/record\n' "$1" "$(awk -v a="$t0" -v b="$t1" -v n="$RECORDS" 'BEGIN { print (b - a) / n * 1e6 }')"
	}
	records="FROM generate_series(1, 2) s, generate_series(1, $KEYS) k"
	code="(ARRAY['in_transit', 'out_for_delivery'])[s]"
	at="'2026-01-01 00:00:00+00'::timestamptz + s * interval '1 hour'"
	timed "hub.apply_status" \
		"SELECT count(hub.apply_status('shipment', 'CA-' || k, 'easypost', $code, $at)) $records"
	timed "the handler's body (apply_status [+ publish])" \
		"SELECT count(public.bench_apply(jsonb_build_object('shipment_id', 'CB-' || k, 'status', $code,
			'updated_at', $at), 'bench.tracker')) $records"
	timed "hub.publish alone" \
		"SELECT count(hub.publish('shipment.moved', 'CC-' || k, jsonb_build_object('shipment_id', 'CC-' || k,
			'state', $code, 'system', 'easypost'))) $records"
	timed "plpgsql loop, subtransaction per record" \
		"DO \$\$ BEGIN FOR i IN 1..$RECORDS LOOP BEGIN PERFORM 1; EXCEPTION WHEN OTHERS THEN NULL; END; END LOOP; END \$\$"
	MODE_SAVED=$MODE
	MODE=noop
	q -c "SELECT hub.register_handler('bench.tracker', 'public.bench_noop')" >/dev/null
	[ "$have_map" = t ] && q -c "DELETE FROM hub.inbox_mappings WHERE message_pattern = 'bench.tracker'" >/dev/null
	hub_run noop 1 "  inbox processing alone (no-op handler)"
	MODE=$MODE_SAVED
fi
