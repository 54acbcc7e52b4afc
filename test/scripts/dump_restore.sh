#!/usr/bin/env bash
# test/scripts/dump_restore.sh --- a logical backup keeps the whole hub.
#
# A served hub with a backlog: events delivered, a delivery waiting in retry
# after failed attempts, deliveries pending for a paused endpoint, events not
# routed yet (published while no dispatcher ran), day partitions of
# hub.attempts, inbox messages with a duplicate, entity state with history
# and a conflict, operator audit rows, an unroutable event, a sealed bearer
# token.  pg_dump -Fc, pg_restore into a new database of the same cluster:
# no error, and every table (every row, every column) and every sequence is
# what it was.  Outside a restore the checks still refuse: an UPDATE of an
# event, an INSERT with a forged event id (also one that carries its xid and
# publication time as a restore does), the restore marker and the restore
# setting for a non-superuser.  Then the cluster is restarted serving the
# restored database: the backlog is delivered from it exactly once (the
# events delivered before are not sent again, the unrouted ones are routed),
# with the restored token, a new event is published and delivered, and the
# inbox still knows its messages (a duplicate is recognised).
set -euo pipefail
source test/receiver/push_lib.sh

dump=$(mktemp)
trap 'rm -f "$dump"; push_cleanup' EXIT
src=postgres
dst=restored
qd() {
	local db=$1 args=() a
	shift
	for a in "$@"; do args+=(-c "$a"); done
	psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$db" "${args[@]}"
}
expect() { [ "$2" = "$3" ] || fail "$1: expected '$3', got '$2'"; ok "$1"; }

push_setup dump_restore 7
export PUSH_SUB="retry_base => '1 second', retry_max => '2 seconds', max_attempts => 100"
push_endpoint okep ok "auth_kind => 'bearer'" "auth_secret => 'tok-restore-7d2a'"
push_endpoint flaky fail-aggregate/SO-F
push_endpoint held ok

# delivered before the dump
for k in SO-1 SO-2 SO-3; do push_publish okep "$k" >/dev/null; done
must_wait "SELECT count(*) = 3 FROM hub.deliveries WHERE state = 'delivered'" 20 "the first events were not delivered"
# waiting in retry after failed attempts
push_publish flaky SO-F >/dev/null
must_wait "SELECT attempts >= 2 AND state = 'retry_wait' FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'flaky'" 20 \
	"the flaky endpoint's delivery did not wait in retry"
# pending for a paused endpoint (the pause is audited)
q "SELECT hub.pause_endpoint('held', 'receiver down for maintenance')" >/dev/null
push_publish held SO-H1 >/dev/null
push_publish held SO-H2 >/dev/null
must_wait "SELECT count(*) = 2 FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'held' AND d.state = 'pending'" 20 \
	"the paused endpoint's deliveries were not routed"
# day partitions, inbox with a duplicate, entity state with history and a
# conflict, an unroutable event kept by hand
q "SELECT * FROM hub.run_retention()" \
	"SELECT hub.receive('carrier', 'm-1', 'carrier.ack', '{\"n\": 1}')" \
	"SELECT hub.receive('carrier', 'm-1', 'carrier.ack', '{\"n\": 1}')" \
	"SELECT hub.receive('carrier', 'm-2', 'carrier.ack', '{\"n\": 2}')" >/dev/null
# (the canonical events of SO-S's moves, order.created, packed and closed and
# the exception its conflict raises, match no subscription: 4 events without
# a delivery; shipped lacks the shipment_id its contract needs: an exception)
q "SELECT hub.apply_canonical_status('order', 'SO-S', s, st, now() - h * interval '1 hour', st, NULL, NULL, NULL, false)
   FROM (VALUES ('odoo', 'created', 6), ('epcis', 'packed', 5), ('epcis', 'shipped', 4), ('sap', 'closed', 2), ('sap', 'cancelled', 1)) v(s, st, h)" >/dev/null
q "INSERT INTO hub.unroutable_events (event_id, error) SELECT event_id, 'XX000: kept by the test' FROM hub.outbox ORDER BY seq LIMIT 1" >/dev/null
# events not routed yet: no dispatcher runs when they are published
q "ALTER SYSTEM SET logistics_hub.dispatchers = 0" "SELECT pg_reload_conf()" >/dev/null
must_wait "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'logistics_hub dispatcher'" 20 "the dispatcher did not stop"
unrouted_ok=$(push_publish okep SO-U1)
push_publish flaky SO-U2 >/dev/null
expect "the source has a backlog: delivered, retrying, pending, not routed; day partitions; a conflict" \
	"$(q "SELECT (SELECT string_agg(state || ':' || n, ',' ORDER BY state) FROM (SELECT state, count(*) n FROM hub.deliveries GROUP BY 1) s)
	       || ';' || (SELECT count(*) FROM hub.outbox o WHERE NOT EXISTS (SELECT 1 FROM hub.deliveries d WHERE d.event_id = o.event_id))
	       || ';' || (SELECT count(*) > 1 FROM pg_inherits WHERE inhparent = 'hub.attempts'::regclass)
	       || ';' || (SELECT count(*) FROM hub.status_conflicts)")" \
	"delivered:3,pending:2,retry_wait:1;6;true;1"

# ---------------------------------------------------------------- dump and restore
"$PG_BIN/pg_dump" -Fc -d "$src" >"$dump"
qd postgres "CREATE DATABASE $dst" >/dev/null
restore_err=$("$PG_BIN/pg_restore" -d "$dst" "$dump" 2>&1) || fail "pg_restore failed: $restore_err"
[ -z "$restore_err" ] || fail "pg_restore said: $restore_err"
ok "pg_restore into a new database: no error, no warning"
"$PG_BIN/pg_restore" -f - "$dump" | grep -q "tok-restore-7d2a" && fail "the dump holds the bearer token in plain text"
ok "the dump holds no secret in plain text"

tables="outbox deliveries attempts operator_audit inbox entity_state entity_system_state status_history status_conflicts
	unroutable_events _router_state endpoints _endpoint_secrets subscriptions event_types inbox_handlers"
digest() { qd "$1" "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM hub.$2 t"; }
for t in $tables; do
	a=$(digest "$src" "$t")
	expect "hub.$t: every row restored as it was (${a%%:*} rows)" "$(digest "$dst" "$t")" "$a"
done
expect "every retention mark restored (with the one CREATE EXTENSION made)" \
	"$(qd "$dst" "SELECT count(*) FROM hub._retention_marks")" "$(($(q "SELECT count(*) FROM hub._retention_marks") + 1))"
marks=$(q "SELECT string_agg(m::text, '|') FROM hub._retention_marks m")
expect "and they are the source's" \
	"$(qd "$dst" "SELECT count(*) FROM unnest(string_to_array('$marks', '|')) s WHERE s NOT IN (SELECT m::text FROM hub._retention_marks m)")" "0"
seqs() { qd "$1" "SELECT string_agg(sequencename || '=' || coalesce(last_value::text, '-'), ',' ORDER BY sequencename) FROM pg_sequences WHERE schemaname = 'hub'"; }
expect "every sequence of the hub is where it was" "$(seqs "$dst")" "$(seqs "$src")"
expect "the restore session's setting did not outlive it" "$(qd "$dst" "SHOW logistics_hub.restoring")" "off"

# ---------------------------------------------------------------- the checks outside a restore
some=$(qd "$dst" "SELECT event_id FROM hub.outbox ORDER BY seq LIMIT 1")
expect "UPDATE of a restored event refused (55000)" \
	"$(qd "$dst" "SELECT public.sqlstate_of('UPDATE hub.outbox SET payload = ''{}'' WHERE event_id = ''$some''')")" "55000"
expect "DELETE of a restored attempt refused (55000)" \
	"$(qd "$dst" "SELECT public.sqlstate_of('DELETE FROM hub.attempts')")" "55000"
# what a restore would insert: an id of our layout carrying the xid given,
# and a publication time
forged=$(qd "$dst" "SELECT format('INSERT INTO hub.outbox (event_id, event_type, aggregate_id, payload, xid, published_at) VALUES (%L, %L, %L, %L, %L, %L)',
	hub._event_id_floor((xid::text::bigint + 5)::text::xid8), event_type, 'SO-X', payload, (xid::text::bigint + 5)::text::xid8, published_at) FROM hub.outbox WHERE event_id = '$some'")
forged=${forged//\'/\'\'}
expect "a forged event id with its xid and publication time refused outside a restore (22023)" \
	"$(qd "$dst" "SELECT public.sqlstate_of('$forged')")" "22023"
expect "a forged event id alone refused (22023)" \
	"$(qd "$dst" "SELECT public.sqlstate_of('INSERT INTO hub.outbox (event_id, event_type, aggregate_id, payload) VALUES (hub._event_id_floor(''5''), ''order.created'', ''SO-X'', ''{\"order_id\": \"SO-X\"}'')')")" "22023"
qd "$dst" "CREATE ROLE bk_writer IN ROLE hub_writer, hub_admin" >/dev/null
expect "a non-superuser cannot set logistics_hub.restoring (42501)" \
	"$(qd "$dst" "SET ROLE bk_writer" "SELECT public.sqlstate_of('SET logistics_hub.restoring = on')")" "42501"
expect "nor insert the restore marker (42501)" \
	"$(qd "$dst" "SET ROLE bk_writer" "SELECT public.sqlstate_of('INSERT INTO hub._restore_marker VALUES (true)')")" "42501"
expect "nor forge an event in a session a superuser set restoring (22023)" \
	"$(qd "$dst" "SET logistics_hub.restoring = on" "SET ROLE bk_writer" "SELECT public.sqlstate_of('$forged')")" "22023"
expect "nothing forged is stored" "$(qd "$dst" "SELECT count(*) FROM hub.outbox WHERE aggregate_id = 'SO-X'")" "0"

# ---------------------------------------------------------------- serve the restored hub
q "ALTER SYSTEM SET logistics_hub.database = '$dst'" "ALTER SYSTEM RESET logistics_hub.dispatchers" >/dev/null
lh_as_cluster_user "$PG_BIN/pg_ctl" -D "$LH_CLUSTER_DIR/data" -l "$LH_CLUSTER_DIR/server.log" -w -t 60 restart >/dev/null
must_wait "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'logistics_hub dispatcher' AND datname = '$dst'" 30 \
	"no dispatcher serves the restored database"
lh_receiver_control fail_SO-F 0
qd "$dst" "SELECT hub.resume_endpoint('held', 'receiver back')" >/dev/null
new_ok=$(qd "$dst" "SELECT hub.publish('order.created', 'SO-N', '{\"order_id\": \"SO-N\", \"t\": \"okep\"}')")
done_sql="SELECT count(*) = 9 AND count(*) FILTER (WHERE state = 'delivered') = 9 FROM hub.deliveries"
for i in $(seq 300); do
	[ "$(qd "$dst" "$done_sql")" = t ] && break
	sleep 0.1
done
[ "$(qd "$dst" "$done_sql")" = t ] ||
	fail "the restored backlog was not delivered: $(qd "$dst" "SELECT string_agg(aggregate_id || ':' || state, ',' ORDER BY seq) FROM hub.deliveries")"
ok "the restored hub delivered its backlog: the retrying, the pending, the unrouted events and a new one (9 deliveries, all delivered)"
expect "the source's backlog is left where it was (its database is not served)" \
	"$(q "SELECT count(*) FROM hub.deliveries WHERE state <> 'delivered'")" "3"

# every event of okep and held reached the receiver exactly once: the ones
# delivered before the dump were not sent again; ids are the events' own
expect "each event of okep and held arrived once (three before the dump, four after)" \
	"$(recv "
import collections
c = collections.Counter(e['headers'].get('webhook-id') for e in E if e['path'] in ('/ok',))
print(len(c), max(c.values()))")" "7 1"
expect "the unrouted event and the new one arrived with their ids and the restored bearer token" \
	"$(recv "
for want in ('$unrouted_ok', '$new_ok'):
    hits = [e for e in E if e['headers'].get('webhook-id') == want]
    print(len(hits), hits[0]['headers'].get('authorization') if hits else None)")" "$(printf '1 Bearer tok-restore-7d2a\n1 Bearer tok-restore-7d2a')"
expect "the flaky endpoint's retried event was delivered from the restored hub" \
	"$(qd "$dst" "SELECT d.state || ':' || (d.attempts > 2) FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'flaky' AND d.aggregate_id = 'SO-F'")" "delivered:true"

# the inbox's deduplication memory and the audit go on
expect "a duplicate of a restored inbox message is recognised" \
	"$(qd "$dst" "SELECT hub.receive('carrier', 'm-1', 'carrier.ack', '{\"n\": 1}')" "SELECT duplicate_count FROM hub.inbox WHERE message_id = 'm-1'")" \
	"$(printf 'f\n2')"
expect "a new inbox message is accepted" "$(qd "$dst" "SELECT hub.receive('carrier', 'm-3', 'carrier.ack', '{}')")" "t"
expect "the audit goes on after its restored rows" \
	"$(qd "$dst" "SELECT string_agg(action || ':' || target, ',' ORDER BY audit_id) FROM hub.operator_audit")" "pause_endpoint:held,resume_endpoint:held"
if grep -E "terminated by signal|PANIC|TRAP:" "$LH_CLUSTER_DIR/server.log"; then
	fail "the server log shows a crash"
fi
ok "no crash in the server log"
