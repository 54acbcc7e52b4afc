#!/usr/bin/env bash
# test/receiver/push_lib.sh --- what the live push tests (test/scripts/push_*.sh)
# share: a cluster with one dispatcher and the loopback receiver, SQL and
# receiver-log helpers, bounded polling, and the closing "the worker never
# died" check.  Source it from a test script run from the repository top
# (as `make test` does); it sources the harness and receiver.sh itself.
#
#   push_setup NAME OFFSET [postgresql.conf lines...]
#                     a cluster on PGPORT+OFFSET with logistics_hub.dispatchers
#                     = PUSH_DISPATCHERS (1), the extension created, a receiver
#                     started, the dispatchers awaited; cleaned up on exit
#   q SQL...          psql -A -t, stop on error (one -c per argument)
#   fail MSG          print "FAIL: MSG" (and diagnostics) and exit 1
#   ok MSG            print "ok: MSG"
#   wait_sql SQL SECS poll (every 0.1 s) until SQL returns t; false on timeout
#   must_wait SQL SECS MSG   wait_sql or fail MSG
#   recv PYTHON       run PYTHON with E = the receiver's log entries (a list
#                     of dicts: t, method, path, headers, body, sha256, peer)
#                     and print what it prints
#   push_endpoint NAME PATH|URL [create_endpoint args...]
#                     an endpoint at $RECV_URL/PATH (or URL), subscribed to order.*
#                     with the filter {"t": NAME}; more subscription arguments
#                     in PUSH_SUB (SQL, e.g. "max_attempts => 2")
#   push_publish NAME AGGREGATE   publish order.created for that endpoint,
#                     print the event id
#   push_finish       the dispatcher still runs with the pid it had at
#                     setup and the server log shows no crash

source test/harness/lib.sh
source test/receiver/receiver.sh

PUSH_NAME=
PUSH_DISPATCHER_PID=

q() {
	local args=() a
	for a in "$@"; do args+=(-c "$a"); done
	psql -X -q -A -t -v ON_ERROR_STOP=1 -d postgres "${args[@]}"
}

ok() { echo "ok: $*"; }

fail() {
	echo "FAIL: $*"
	if [ -n "${PGPORT:-}" ]; then
		echo "--- deliveries"
		psql -X -A -d postgres -c "SELECT d.delivery_id, e.name, d.state, d.attempts, d.last_http_status, left(d.last_error, 120) AS last_error FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) ORDER BY 1" 2>&1 | tail -60
		echo "--- server log (tail)"
		tail -20 "$LH_CLUSTER_DIR/server.log" 2>/dev/null
	fi
	exit 1
}

wait_sql() {
	local sql=$1 secs=$2 end got
	end=$(($(date +%s%N) + secs * 1000000000))
	while :; do
		got=$(psql -X -q -A -t -d postgres -c "$sql" 2>/dev/null || true)
		[ "$got" = t ] && return 0
		[ "$(date +%s%N)" -ge "$end" ] && return 1
		sleep 0.1
	done
}

must_wait() { wait_sql "$1" "$2" || fail "$3"; }

recv() {
	python3 - "$RECV_LOG" "$1" <<'PY'
import json, sys
E = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
exec(sys.argv[2])
PY
}

dispatcher_pid() {
	q "SELECT coalesce(string_agg(pid::text, ','), '') FROM pg_stat_activity WHERE backend_type = 'logistics_hub dispatcher'"
}

push_cleanup() {
	lh_receiver_stop
	[ -n "$PUSH_NAME" ] && lh_cluster_stop "$PUSH_NAME"
	return 0
}

push_setup() {
	local name=$1 offset=$2 port
	shift 2
	port=$((PGPORT + offset))
	PUSH_NAME=$name-$port
	trap push_cleanup EXIT
	lh_cluster_start "$PUSH_NAME" "$port" "logistics_hub.dispatchers = ${PUSH_DISPATCHERS:-1}" "$@"
	lh_receiver_start "$LH_CLUSTER_DIR/recv"
	q "SET client_min_messages = warning" "CREATE EXTENSION logistics_hub" >/dev/null
	# the helper that returns the SQLSTATE a statement raises ('ok' if none)
	q "CREATE FUNCTION public.sqlstate_of(stmt text) RETURNS text LANGUAGE plpgsql AS
	   \$\$BEGIN EXECUTE stmt; RETURN 'ok'; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END\$\$" >/dev/null
	# the launcher starts a dispatcher within a few seconds of the extension
	must_wait "SELECT count(*) = ${PUSH_DISPATCHERS:-1} FROM pg_stat_activity WHERE backend_type = 'logistics_hub dispatcher'" 30 \
		"the dispatchers did not start"
	PUSH_DISPATCHER_PID=$(dispatcher_pid)
	echo "cluster $PUSH_NAME, receiver $RECV_URL, dispatcher pid $PUSH_DISPATCHER_PID"
}

push_endpoint() {
	local name=$1 url=$2 extra=
	shift 2
	[ $# -gt 0 ] && extra=", $(IFS=,; echo "$*")"
	case $url in http*) ;; *) url=$RECV_URL/$url ;; esac
	q "SELECT hub.create_endpoint('$name', '$url', 'other'$extra)" \
		"SELECT hub.subscribe('$name', 'order.*', filter => '{\"t\": \"$name\"}'${PUSH_SUB:+, $PUSH_SUB})" >/dev/null
}

push_publish() {
	q "SELECT hub.publish('order.created', '$2', '{\"order_id\": \"$2\", \"t\": \"$1\"}')"
}

push_finish() {
	local now
	now=$(dispatcher_pid)
	[ "$now" = "$PUSH_DISPATCHER_PID" ] ||
		fail "the dispatcher changed: pid $PUSH_DISPATCHER_PID at start, now '$now'"
	if grep -E "terminated by signal|exited with exit code|PANIC|TRAP:" "$LH_CLUSTER_DIR/server.log"; then
		fail "the server log shows a worker crash or exit"
	fi
	ok "dispatcher $PUSH_DISPATCHER_PID ran throughout; no crash or worker exit in the server log"
}
