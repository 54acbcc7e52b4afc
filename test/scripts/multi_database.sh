#!/usr/bin/env bash
# test/scripts/multi_database.sh --- several databases on one cluster
# (logistics_hub.databases), live, and the view hub.workers:
#   - two databases listed, each with its own two dispatchers and inbox
#     worker (hub.workers: kinds, numbers, databases, pids that exist and
#     are connected to that database); a third, not listed, has none;
#   - events published in each are delivered by that database's own
#     dispatchers to the receiver, and messages received processed by its
#     own inbox worker, woken at commit (the inbox naptime is 10 minutes:
#     the safety net finds nothing); hub.wake() wakes only the dispatchers
#     of its own database;
#   - hub.workers with known data: the endpoints and pollers each
#     dispatcher serves, last claim and record, a restart counted;
#   - a reload that removes a database (its workers stop, its events wait)
#     and adds one (its workers start and deliver);
#   - a database whose extension is dropped (logged once, looked for again),
#     one that accepts no connection (logged once, no worker started) and
#     one whose workers may not connect do not stop the other;
#   - a bad list is refused where it is set;
#   - max_databases = 2 with three listed: the last is not served (one
#     WARNING) until a reload frees a slot, which it then takes.
source test/receiver/push_lib.sh

port=$((PGPORT + 160))
PUSH_NAME=multi-db-$port
trap push_cleanup EXIT
lh_cluster_start "$PUSH_NAME" "$port" "logistics_hub.databases = 'hub_a, hub_b'" \
	"logistics_hub.dispatchers = 2" "logistics_hub.inbox_workers = 1" \
	"logistics_hub.inbox_naptime = 10min"
lh_receiver_start "$LH_CLUSTER_DIR/recv"

# qd DB SQL... --- q in database DB
qd() {
	local db=$1 args=() a
	shift
	for a in "$@"; do args+=(-c "$a"); done
	psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$db" "${args[@]}"
}
wait_db() {
	local db=$1 sql=$2 secs=$3 end got
	end=$(($(date +%s%N) + secs * 1000000000))
	while :; do
		got=$(psql -X -q -A -t -d "$db" -c "$sql" 2>/dev/null || true)
		[ "$got" = t ] && return 0
		[ "$(date +%s%N)" -ge "$end" ] && return 1
		sleep 0.1
	done
}
must_db() { wait_db "$1" "$2" "$3" || fail "$4 (hub.workers in $1: $(qd "$1" "SELECT string_agg(w::text, ' | ') FROM hub.workers w" 2>&1))"; }
# worker pids of one database, as the server sees them
db_pids() {
	q "SELECT coalesce(string_agg(pid::text, ',' ORDER BY pid), '') FROM pg_stat_activity
	   WHERE backend_type IN ('logistics_hub dispatcher', 'logistics_hub inbox') AND datname = '$1'"
}
publish() {
	qd "$1" "SELECT hub.publish('order.created', '$2', '{\"order_id\": \"$2\", \"t\": \"a\"}')" >/dev/null
}
# wait_log PATTERN SECS --- until the server log has a line matching PATTERN
wait_log() {
	local end=$(($(date +%s) + $2))
	until grep -q "$1" "$LH_CLUSTER_DIR/server.log"; do
		[ "$(date +%s)" -ge "$end" ] && return 1
		sleep 0.2
	done
}
received() {
	recv "print(sum(1 for e in E if e['path'].startswith('/ok?db=$1') and '\"$2\"' in e['body']))"
}

for db in hub_a hub_b hub_c; do
	q "CREATE DATABASE $db" >/dev/null
	qd $db "SET client_min_messages = warning" "CREATE EXTENSION logistics_hub" >/dev/null
	# two endpoints (ids 1 and 2), a paused poller on each
	qd $db "SELECT hub.create_endpoint('a', '$RECV_URL/ok?db=$db', 'other')" \
		"SELECT hub.create_endpoint('b', '$RECV_URL/ok?db=$db&ep=b', 'other')" \
		"SELECT hub.subscribe('a', 'order.*')" \
		"SELECT hub.create_poller('a', '/ok', 'erp.x', name => 'poll-a', paused => true)" \
		"SELECT hub.create_poller('b', '/ok', 'erp.y', name => 'poll-b', paused => true)" >/dev/null
done

# ---------------------------------------------------------------- the workers
for db in hub_a hub_b; do
	must_db $db "SELECT count(*) = 3 FROM hub.workers w JOIN pg_stat_activity a USING (pid)
				 WHERE w.database = '$db' AND a.datname = '$db' AND a.usename = 'hub_worker'" 40 \
		"the workers of $db did not start, connected to $db as hub_worker"
done
got=$(qd hub_a "SELECT string_agg(coalesce(database::text, '-') || ':' || kind || ':' || number, ' ' ORDER BY database NULLS FIRST, kind, number)
				FROM hub.workers")
[ "$got" = "-:launcher:0 hub_a:dispatcher:0 hub_a:dispatcher:1 hub_a:inbox:0 hub_b:dispatcher:0 hub_b:dispatcher:1 hub_b:inbox:0" ] ||
	fail "hub.workers lists '$got'"
[ "$(db_pids hub_c)" = "" ] || fail "database hub_c, not listed, has workers: $(db_pids hub_c)"
got=$(qd hub_a "SELECT count(*) FROM hub.workers w LEFT JOIN pg_stat_activity a USING (pid)
				WHERE a.pid IS NULL OR a.backend_type <> 'logistics_hub ' || w.kind OR w.step = 'stopped'")
[ "$got" = 0 ] || fail "$got rows of hub.workers are not the running worker of their kind"
got=$(qd hub_a "SELECT a.backend_type || ':' || (a.datname IS NULL) FROM hub.workers w JOIN pg_stat_activity a USING (pid) WHERE w.kind = 'launcher'")
[ "$got" = "logistics_hub launcher:true" ] || fail "the launcher row is '$got'"
ok "hub.workers: the launcher, and two dispatchers and an inbox worker for each of hub_a and hub_b, pids of running workers connected to their database as hub_worker; none for hub_c"

# the shard each dispatcher serves: endpoint 2 (and its poller) for
# dispatcher 0, endpoint 1 for dispatcher 1; another database's rows carry
# no endpoint (not visible from here)
got=$(qd hub_a "SELECT string_agg(number || '=' || endpoints::text || pollers::text, ' ' ORDER BY number)
				FROM hub.workers WHERE kind = 'dispatcher' AND database = 'hub_a'")
[ "$got" = "0={2}{poll-b} 1={1}{poll-a}" ] || fail "the dispatchers of hub_a serve '$got'"
got=$(qd hub_a "SELECT count(*) FROM hub.workers WHERE database = 'hub_b' AND endpoints IS NULL AND pollers IS NULL")
[ "$got" = 3 ] || fail "rows of hub_b seen from hub_a carry endpoints or pollers ($got without)"
qd hub_b "UPDATE hub.endpoints SET spread = true, max_concurrency = 2 WHERE name = 'a'"
got=$(qd hub_b "SELECT string_agg(number || '=' || endpoints::text || pollers::text, ' ' ORDER BY number)
				FROM hub.workers WHERE kind = 'dispatcher' AND database = 'hub_b'")
[ "$got" = "0={1,2}{poll-a,poll-b} 1={1}{poll-a}" ] || fail "with endpoint 1 spread, the dispatchers of hub_b serve '$got'"
ok "hub.workers shows the endpoints and pollers each dispatcher serves (spread endpoints by every dispatcher within max_concurrency)"

# ---------------------------------------------------------------- delivery
[ "$(qd hub_a "SELECT hub.wake()")" = 2 ] || fail "hub.wake() in hub_a did not count its own two dispatchers"
for db in hub_a hub_b; do
	for i in 1 2 3; do publish $db "$db-$i"; done
done
for db in hub_a hub_b; do
	must_db $db "SELECT count(*) = 3 FROM hub.deliveries WHERE state = 'delivered'" 30 \
		"the events of $db were not delivered"
	for i in 1 2 3; do
		[ "$(received $db "$db-$i")" = 1 ] || fail "event $db-$i did not reach the receiver once at its database's endpoint"
	done
done
got=$(recv "print(sum(1 for e in E if ('hub_a-' in e['body']) != ('db=hub_a' in e['path'])))")
[ "$got" = 0 ] || fail "$got requests went to the other database's endpoint"
# dispatcher 1 serves endpoint 1 in hub_a: it claimed and recorded
got=$(qd hub_a "SELECT last_claim_at IS NOT NULL AND last_record_at >= last_claim_at AND in_flight = 0 AND step = 'idle'
				FROM hub.workers WHERE database = 'hub_a' AND kind = 'dispatcher' AND number = 1")
[ "$got" = t ] || fail "dispatcher 1 of hub_a shows no claim and record: $(qd hub_a "SELECT w::text FROM hub.workers w WHERE database = 'hub_a' AND kind = 'dispatcher'")"
ok "events published in hub_a and hub_b were delivered by their own dispatchers, each to its database's endpoint; last claim and record shown"

# the inbox worker of hub_b processes hub_b's messages
qd hub_b "CREATE FUNCTION public.h(p jsonb, t text) RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS 'BEGIN END'" \
	"SELECT hub.register_handler('t.*', 'public.h')" \
	"SELECT hub.receive('wms', 'm-1', 't.x', '{}')" >/dev/null
must_db hub_b "SELECT state = 'done' FROM hub.inbox" 30 "the inbox worker of hub_b did not process its message"
got=$(qd hub_b "SELECT last_record_at IS NOT NULL FROM hub.workers WHERE database = 'hub_b' AND kind = 'inbox'")
[ "$got" = t ] || fail "the inbox worker of hub_b shows no batch"
got=$(qd hub_b "SELECT last_record_at IS NULL FROM hub.workers WHERE database = 'hub_a' AND kind = 'inbox'")
[ "$got" = t ] || fail "the inbox worker of hub_a shows a batch it did not process"
ok "the inbox worker of hub_b processed its message (woken at commit); hub_a's did nothing"

# a restart: the launcher starts dispatcher 0 of hub_b again and counts it
before=$(qd hub_a "SELECT pid || ' ' || restarts FROM hub.workers WHERE database = 'hub_b' AND kind = 'dispatcher' AND number = 0")
read -r oldpid oldrestarts <<<"$before"
q "SELECT pg_terminate_backend($oldpid)" >/dev/null
must_db hub_a "SELECT pid <> $oldpid AND restarts = $oldrestarts + 1 FROM hub.workers WHERE database = 'hub_b' AND kind = 'dispatcher' AND number = 0" 30 \
	"dispatcher 0 of hub_b was not started again with its restart counted"
ok "a terminated dispatcher is started again and hub.workers counts the restart ($oldrestarts -> $((oldrestarts + 1)))"

# ---------------------------------------------------------------- reload
q "ALTER SYSTEM SET logistics_hub.databases = 'hub_b, hub_c'" "SELECT pg_reload_conf()" >/dev/null
must_db hub_c "SELECT count(*) = 3 FROM hub.workers w JOIN pg_stat_activity a USING (pid)
			   WHERE w.database = 'hub_c' AND a.datname = 'hub_c'" 30 "the workers of hub_c did not start on reload"
wait_sql "SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = 'hub_a' AND backend_type LIKE 'logistics_hub%'" 30 ||
	fail "the workers of hub_a did not stop on reload: $(db_pids hub_a)"
grep -q 'logistics_hub no longer serves database "hub_a"' "$LH_CLUSTER_DIR/server.log" || fail "no log line for hub_a's removal"
publish hub_c hub_c-1
publish hub_a hub_a-4
must_db hub_c "SELECT count(*) = 1 FROM hub.deliveries WHERE state = 'delivered'" 30 "the event of hub_c was not delivered"
[ "$(received hub_c hub_c-1)" = 1 ] || fail "event hub_c-1 did not reach hub_c's endpoint"
[ "$(qd hub_a "SELECT count(*) FROM hub.deliveries WHERE state = 'delivered'")" = 3 ] && [ "$(received hub_a hub_a-4)" = 0 ] ||
	fail "hub_a, no longer served, delivered"
[ "$(qd hub_a "SELECT hub.wake()")" = 0 ] || fail "hub.wake() in hub_a counts dispatchers"
got=$(qd hub_c "SELECT string_agg(DISTINCT database::text, ',') FROM hub.workers")
[ "$got" = "hub_b,hub_c" ] || fail "after the reload hub.workers shows databases '$got'"
ok "a reload took hub_a off (its workers stopped, its event waits) and added hub_c (its workers started and delivered)"

# ---------------------------------------------------------------- failures
# hub_b's extension dropped: its workers (terminated here, or at their next
# step: the inbox naptime is 10 minutes) leave quietly and come back every 5 s to
# look (hub.workers: their slots stopped, restarts counted); logged once;
# hub_c goes on
mark=$(wc -l <"$LH_CLUSTER_DIR/server.log")
qd hub_b "SET client_min_messages = warning" "DROP EXTENSION logistics_hub CASCADE" >/dev/null
r0=$(qd hub_c "SELECT coalesce(sum(restarts), 0) FROM hub.workers WHERE database = 'hub_b'")
q "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'hub_b' AND backend_type LIKE 'logistics_hub%'" >/dev/null
must_db hub_c "SELECT coalesce(sum(restarts), 0) >= $r0 + 6 AND count(*) = 3 FROM hub.workers WHERE database = 'hub_b'" 40 \
	"the workers of hub_b did not keep looking for the extension"
must_db hub_c "SELECT count(*) = 3 FROM hub.workers WHERE database = 'hub_b' AND pid IS NULL AND step = 'stopped' AND started_at IS NULL" 20 \
	"hub.workers does not show hub_b's slots stopped"
n=$(tail -n +$((mark + 1)) "$LH_CLUSTER_DIR/server.log" | grep -c 'logistics_hub extension is not installed in database "hub_b"')
[ "$n" = 1 ] || fail "the missing extension of hub_b was logged $n times, not once"
publish hub_c hub_c-2
must_db hub_c "SELECT count(*) = 2 FROM hub.deliveries WHERE state = 'delivered'" 30 "hub_c stopped delivering while hub_b has no extension"
ok "hub_b without its extension: logged once, looked for again, hub_c delivers on"

# hub_a back on the list while it accepts no connection: the launcher says
# so once and starts none of its workers
q "ALTER DATABASE hub_a WITH ALLOW_CONNECTIONS false" \
	"ALTER SYSTEM SET logistics_hub.databases = 'hub_a, hub_b, hub_c'" "SELECT pg_reload_conf()" >/dev/null
wait_log 'logistics_hub waits for database "hub_a" to accept connections' 30 ||
	fail "no log line for hub_a not accepting connections"
! grep -q 'database "hub_a" is not currently accepting connections' "$LH_CLUSTER_DIR/server.log" ||
	fail "a worker of hub_a tried to connect while it accepts no connection"
[ "$(qd hub_c "SELECT count(*) FROM hub.workers WHERE database = 'hub_a'")" = 0 ] || fail "hub_a has workers while it accepts no connection"
# then its workers may not connect (no CONNECT): they fail at every start;
# hub_c goes on; once they may, hub_a's waiting event goes
q "REVOKE CONNECT ON DATABASE hub_a FROM PUBLIC" "ALTER DATABASE hub_a WITH ALLOW_CONNECTIONS true" >/dev/null
wait_log 'permission denied for database "hub_a"' 30 || fail "hub_a's workers did not fail to connect"
publish hub_c hub_c-3
must_db hub_c "SELECT count(*) = 3 FROM hub.deliveries WHERE state = 'delivered'" 30 "hub_c stopped delivering while hub_a's workers fail"
q "GRANT CONNECT ON DATABASE hub_a TO PUBLIC" >/dev/null
must_db hub_a "SELECT count(*) = 4 FROM hub.deliveries WHERE state = 'delivered'" 40 "hub_a did not deliver its waiting event once its workers could connect"
[ "$(received hub_a hub_a-4)" = 1 ] || fail "event hub_a-4 did not reach hub_a's endpoint"
ok "hub_a not accepting connections: logged once, no worker tried; its workers failing to connect (no CONNECT) did not stop hub_c; once they could, hub_a delivered the event that waited"

# ---------------------------------------------------------------- settings
for bad in "'hub_a, hub_a'" "'hub_a, '" "'\"hub_a'"; do
	got=$(psql -X -q -A -t -d postgres -c "ALTER SYSTEM SET logistics_hub.databases = $bad" 2>&1 || true)
	case $got in *"invalid value for parameter"*) ;; *) fail "logistics_hub.databases = $bad was not refused: $got" ;; esac
done
[ "$(q "SHOW logistics_hub.max_databases")" = 8 ] || fail "logistics_hub.max_databases is not 8 by default"
ok "a list naming a database twice, an empty name or an open quote is refused; max_databases defaults to 8"

# ---------------------------------------------------------------- max_databases
# two slots for three databases (a restart): the one listed last is not
# served, with one WARNING; taking the first off the list (a reload) frees
# its slot, which the third takes
qd hub_b "SET client_min_messages = warning" "CREATE EXTENSION logistics_hub" \
	"SELECT hub.create_endpoint('a', '$RECV_URL/ok?db=hub_b', 'other')" "SELECT hub.subscribe('a', 'order.*')" >/dev/null
q "ALTER SYSTEM SET logistics_hub.max_databases = 2" "ALTER SYSTEM SET logistics_hub.databases = 'hub_a, hub_c, hub_b'" >/dev/null
mark=$(wc -l <"$LH_CLUSTER_DIR/server.log")
lh_as_cluster_user "$PG_BIN/pg_ctl" -D "$LH_CLUSTER_DIR/data" -l "$LH_CLUSTER_DIR/server.log" -w -t 60 restart >/dev/null ||
	fail "the cluster did not restart"
must_db hub_a "SELECT count(*) = 6 AND count(*) FILTER (WHERE database = 'hub_b') = 0 FROM hub.workers w JOIN pg_stat_activity a USING (pid)
			   WHERE w.database::text = a.datname" 40 "hub_a and hub_c are not served alone with max_databases = 2"
wait_log 'logistics_hub serves at most 2 databases; "hub_b" and the ones after it are not served' 20 ||
	fail "no WARNING for the database beyond max_databases"
sleep 6	# (a pass of the launcher more: the WARNING is not repeated)
n=$(tail -n +$((mark + 1)) "$LH_CLUSTER_DIR/server.log" | grep -c 'serves at most 2 databases')
[ "$n" = 1 ] || fail "the WARNING for max_databases came $n times"
[ "$(qd hub_b "SELECT count(*) FROM hub.workers WHERE database = 'hub_b'")" = 0 ] || fail "hub_b, beyond max_databases, has rows"
q "ALTER SYSTEM SET logistics_hub.databases = 'hub_c, hub_b'" "SELECT pg_reload_conf()" >/dev/null
must_db hub_b "SELECT count(*) = 3 FROM hub.workers w JOIN pg_stat_activity a USING (pid)
			   WHERE w.database = 'hub_b' AND a.datname = 'hub_b'" 30 "hub_b did not take the slot hub_a left"
must_db hub_b "SELECT string_agg(DISTINCT database::text, ',') = 'hub_b,hub_c' FROM hub.workers" 30 "hub_a is still served"
publish hub_b hub_b-9
must_db hub_b "SELECT count(*) = 1 FROM hub.outbox o JOIN hub.deliveries d USING (event_id) WHERE d.state = 'delivered'" 30 \
	"hub_b, in its new slot, did not deliver"
[ "$(received hub_b hub_b-9)" = 1 ] || fail "event hub_b-9 did not reach hub_b's endpoint"
ok "max_databases = 2: the third database listed not served (one WARNING); once the first was taken off, the third took its slot and delivered"

if grep -E "terminated by signal|PANIC|TRAP:" "$LH_CLUSTER_DIR/server.log"; then
	fail "the server log shows a crash"
fi
ok "no crash in the server log"
