#!/usr/bin/env bash
# test/scripts/idle_hub.sh --- an idle hub costs nothing: with two
# dispatchers running, endpoints and subscriptions configured, events
# delivered before, a paused poller and one that ran and is not due for a
# week, retention running every 5 s, and two inbox workers looking every
# 100 ms with messages processed before and one waiting for a retry an hour
# away, 20 idle seconds take no transaction id and write no WAL (a claim
# that finds nothing, routing included, only reads; the dispatchers ask when
# a poller is due in a read-only transaction; a retention run with nothing
# new records no mark; an inbox worker's look only reads).
# Autovacuum is off in this cluster: its own work on the tables the setup
# wrote is PostgreSQL's, not the hub's, and would blur the measure.
source test/receiver/push_lib.sh
PUSH_DISPATCHERS=2 push_setup idle-hub 132 "logistics_hub.dispatcher_naptime = 100ms" \
	"logistics_hub.retention_interval = 5s" "autovacuum = off" \
	"logistics_hub.inbox_workers = 2" "logistics_hub.inbox_naptime = 100ms"

push_endpoint a "ok?ep=a"
push_endpoint b "ok?ep=b"
q "UPDATE hub.endpoints SET spread = true WHERE name = 'b'" >/dev/null
for i in 1 2 3 4 5; do push_publish a "A-$i" >/dev/null; push_publish b "B-$i" >/dev/null; done
must_wait "SELECT count(*) = 10 FROM hub.deliveries WHERE state = 'delivered'" 30 "the events were not delivered"
# the inbox: messages processed by the workers, one failed and waiting an
# hour, the next one of its key waiting behind it
q "CREATE FUNCTION public.h(p jsonb, t text) RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS
   \$\$BEGIN IF p ? 'fail' THEN RAISE EXCEPTION 'failing'; END IF; END\$\$" \
	"SELECT hub.register_handler('idle.*', 'public.h', retry_base => '1 hour')" \
	"SELECT hub.receive('wms', 'm-' || g, 'idle.x', CASE WHEN g = 3 THEN '{\"fail\": 1}' ELSE '{}' END::jsonb, aggregate_id => 'K' || g % 2)
	 FROM generate_series(1, 6) g" >/dev/null
must_wait "SELECT string_agg(state, ',' ORDER BY inbox_id) = 'done,done,retry_wait,done,new,done' FROM hub.inbox" 30 \
	"the inbox workers did not process the messages"
# pollers: one paused, one that ran once (against the receiver, whose
# 204 is no JSON: a failed page, retried after half a day or more)
q "SELECT hub.create_poller('a', '/ok', 'erp.paused', name => 'paused', paused => true)" >/dev/null
q "SELECT hub.create_poller('a', '/ok', 'erp.weekly', name => 'weekly', every => '7 days', retry_base => '1 day', retry_max => '7 days')" >/dev/null
must_wait "SELECT count(*) = 1 FROM hub.poll_requests" 30 "the weekly poller did not run once"
must_wait "SELECT lease IS NULL AND next_run_at > now() + interval '10 hours' FROM hub.pollers WHERE name = 'weekly'" 30 \
	"the weekly poller is not due in hours: $(q "SELECT row_to_json(p) FROM hub.pollers p WHERE name = 'weekly'")"
q "CHECKPOINT" >/dev/null
# (let retention run on what the setup left, and the WAL of the setup and
# the checkpoint settle: the background writer's snapshot record follows
# the last WAL activity by up to 15 s)
sleep 17

measure() { q "SELECT pg_snapshot_xmax(pg_current_snapshot()) || ' ' || pg_current_wal_insert_lsn()"; }
read -r x1 w1 <<<"$(measure)"
sleep 20
read -r x2 w2 <<<"$(measure)"
runs=$(q "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'logistics_hub dispatcher'")
[ "$runs" = 2 ] || fail "the dispatchers were not running ($runs)"
runs=$(q "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'logistics_hub inbox'")
[ "$runs" = 2 ] || fail "the inbox workers were not running ($runs)"
[ "$x1" = "$x2" ] || fail "20 idle seconds took $((x2 - x1)) transaction ids ($x1 -> $x2)"
[ "$w1" = "$w2" ] || fail "20 idle seconds wrote $(q "SELECT pg_wal_lsn_diff('$w2', '$w1')") bytes of WAL ($w1 -> $w2)"
ok "20 idle seconds with two dispatchers looking for work every 100 ms, a paused and a weekly poller, retention every 5 s and two inbox workers looking every 100 ms: no transaction id ($x1), no WAL ($w1)"
push_finish
