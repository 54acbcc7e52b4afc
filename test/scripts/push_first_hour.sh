#!/usr/bin/env bash
# test/scripts/push_first_hour.sh --- live push, the first-hour trips of
# issue 17 that only a running dispatcher shows:
#   - CloudEvents batches (body_format cloudevents_batch): JSON arrays of
#     CloudEvents 1.0 events, sent as application/cloudevents-batch+json,
#     every event once, signed;
#   - times in UTC whatever the dispatcher's TimeZone: the server runs with
#     TimeZone America/New_York; an event is delivered, the TimeZone is
#     changed (ALTER SYSTEM and a reload, which the dispatcher follows) and
#     the event replayed: the same webhook-id carries the very same bytes
#     (signatures verified by the receiver);
#   - logistics_hub.event_source: ALTER SYSTEM refuses values that are not a
#     URI-reference; a good one is the source of the next CloudEvents body;
#   - the dispatcher's log: a WARNING raised in its SQL (a trigger on
#     hub.deliveries) and an error of one endpoint's claim are each one line
#     naming the worker and the step, without CONTEXT lines; with
#     log_min_messages = debug1 the context is there, on a DEBUG line.
source test/receiver/push_lib.sh
push_setup push-first-hour 137 "logistics_hub.poll_interval = 200ms" "TimeZone = 'America/New_York'"

S1=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
LOG=$LH_CLUSTER_DIR/server.log
PUSH_SUB="body_format => 'cloudevents_batch', batch_max => 3, ordering => 'none'" \
	push_endpoint ceb "ok?ep=ceb" "signing_secret => '$S1'"
PUSH_SUB="body_format => 'cloudevents'" push_endpoint cetz "ok?ep=cetz" "signing_secret => '$S1'"
PUSH_SUB="body_format => 'batch', batch_max => 3, ordering => 'none'" push_endpoint plainbatch "ok?ep=plainbatch"

delivered() { echo "SELECT count(*) > 0 AND bool_and(state = 'delivered') FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = '$1'"; }

# ---- CloudEvents batches
q "SELECT hub.publish('order.created', 'SO-c' || i, jsonb_build_object('order_id', 'SO-c' || i, 't', 'ceb'),
                      occurred_at => '2026-07-01 12:00:00+00')
   FROM generate_series(1, 5) i" >/dev/null
q "SELECT hub.publish('order.created', 'SO-p' || i, jsonb_build_object('order_id', 'SO-p' || i, 't', 'plainbatch'))
   FROM generate_series(1, 2) i" >/dev/null
must_wait "$(delivered ceb)" 30 "ceb: not everything delivered"
must_wait "$(delivered plainbatch)" 30 "plainbatch: not everything delivered"
got=$(recv "
import json
rows = [e for e in E if 'ep=ceb' in e['path']]
arrays = [json.loads(e['body']) for e in rows]
evs = [x for a in arrays for x in a]
print(set(e['headers']['content-type'] for e in rows), all(isinstance(a, list) and 1 <= len(a) <= 3 for a in arrays),
      len(evs), len(set(x['id'] for x in evs)), set(x['specversion'] for x in evs), set(x['time'] for x in evs),
      set(x['source'] for x in evs), all(x['data']['t'] == 'ceb' for x in evs))")
[ "$got" = "{'application/cloudevents-batch+json'} True 5 5 {'1.0'} {'2026-07-01T12:00:00+00:00'} {'/logistics_hub'} True" ] ||
	fail "CloudEvents batch: content types / arrays of 1..3 / events / distinct / specversion / time / source / data: '$got'"
lh_receiver_verify "$S1" --path ep=ceb || fail "CloudEvents batch: a signature does not verify"
got=$(recv "print(set(e['headers']['content-type'] for e in E if 'ep=plainbatch' in e['path']))")
[ "$got" = "{'application/json'}" ] || fail "a batch of canonical events: content type '$got'"
ok "CloudEvents batches: arrays of CloudEvents 1.0 events as application/cloudevents-batch+json, all 5 events once, signed (canonical batches stay application/json)"

# ---- UTC whatever the TimeZone, the same bytes on a replay after it changed
ev=$(q "SELECT hub.publish('order.created', 'SO-tz', '{\"order_id\": \"SO-tz\", \"t\": \"cetz\"}', occurred_at => '2026-01-15 09:30:00.25+00')")
must_wait "$(delivered cetz)" 30 "cetz: not delivered"
q "ALTER SYSTEM SET TimeZone = 'Asia/Kathmandu'" "SELECT pg_reload_conf()" >/dev/null
# (a new session sees the new setting once the postmaster has read it, and
# the postmaster signals the dispatcher right after)
must_wait "SELECT current_setting('TimeZone') = 'Asia/Kathmandu'" 10 "the TimeZone change was not loaded"
q "SELECT hub.replay(delivery_id, 'first hour: TimeZone changed') FROM hub.deliveries WHERE event_id = '$ev'" >/dev/null
must_wait "SELECT count(*) = 2 FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id)
           WHERE d.event_id = '$ev' AND a.outcome = 'delivered'" 30 "cetz: the replay was not delivered"
got=$(recv "
import json
rows = [e for e in E if e['headers'].get('webhook-id') == '$ev']
print(len(rows), len(set(e['sha256'] for e in rows)), json.loads(rows[0]['body'])['time'])")
[ "$got" = "2 1 2026-01-15T09:30:00.25+00:00" ] ||
	fail "TimeZone change: requests / distinct bodies / time: '$got', want '2 1 2026-01-15T09:30:00.25+00:00'"
lh_receiver_verify "$S1" --path ep=cetz || fail "TimeZone change: a signature does not verify"
q "ALTER SYSTEM RESET TimeZone" "SELECT pg_reload_conf()" >/dev/null
ok "CloudEvents time in UTC under America/New_York, and the same bytes under the same webhook-id after the TimeZone changed"

# ---- logistics_hub.event_source
for bad in 'has space' '1x:y' '%zz' '' 'a"b'; do
	err=$(psql -X -q -d postgres -c "ALTER SYSTEM SET logistics_hub.event_source = '$bad'" 2>&1) &&
		fail "event_source '$bad' was accepted"
	case $err in *'invalid value for parameter "logistics_hub.event_source"'*) ;;
		*) fail "event_source '$bad': unexpected error: $err" ;; esac
done
ok "logistics_hub.event_source refuses what is not a URI-reference: $(echo "$err" | tr '\n' ' ')"
q "ALTER SYSTEM SET logistics_hub.event_source = 'https://hub.example.com/wms?site=DC%201'" "SELECT pg_reload_conf()" >/dev/null
must_wait "SELECT current_setting('logistics_hub.event_source') = 'https://hub.example.com/wms?site=DC%201'" 10 \
	"the event_source change was not loaded"
ev2=$(push_publish cetz SO-src)
must_wait "SELECT state = 'delivered' FROM hub.deliveries WHERE event_id = '$ev2'" 30 "cetz: SO-src not delivered"
got=$(recv "
import json
print([json.loads(e['body'])['source'] for e in E if e['headers'].get('webhook-id') == '$ev2'])")
[ "$got" = "['https://hub.example.com/wms?site=DC%201']" ] || fail "event_source: the body's source is $got"
q "ALTER SYSTEM RESET logistics_hub.event_source" "SELECT pg_reload_conf()" >/dev/null
ok "a URI as logistics_hub.event_source is the CloudEvents source"

# ---- the dispatcher's log lines
pid=$(dispatcher_pid)
q "CREATE FUNCTION public.fh_trip() RETURNS trigger LANGUAGE plpgsql AS \$\$
   BEGIN
	 IF NEW.state = 'in_flight' AND NEW.endpoint_id = (SELECT endpoint_id FROM hub.endpoints WHERE name = 'warn') THEN
	   RAISE WARNING 'first hour: a trigger warns';
	 END IF;
	 IF NEW.state = 'in_flight' AND NEW.endpoint_id = (SELECT endpoint_id FROM hub.endpoints WHERE name = 'boom') THEN
	   RAISE EXCEPTION 'first hour: a trigger fails' USING ERRCODE = 'check_violation';
	 END IF;
	 RETURN NEW;
   END \$\$" \
  "CREATE TRIGGER fh_trip BEFORE UPDATE ON hub.deliveries FOR EACH ROW EXECUTE FUNCTION public.fh_trip()" >/dev/null
push_endpoint warn "ok?ep=warn"
push_endpoint boom "ok?ep=boom"
before=$(wc -l <"$LOG")
push_publish warn SO-w1 >/dev/null
must_wait "$(delivered warn)" 30 "warn: not delivered"
push_publish boom SO-b1 >/dev/null
must_wait "SELECT paused FROM hub.endpoints WHERE name = 'boom'" 30 "boom: not paused"
tail -n +"$((before + 1))" "$LOG" | grep -F "[$pid]" >"$LH_CLUSTER_DIR/dispatcher.log" || true
grep -qE "WARNING:  logistics_hub dispatcher 0: claim: first hour: a trigger warns$" "$LH_CLUSTER_DIR/dispatcher.log" ||
	fail "the trigger's WARNING is not one line naming the worker and the step: $(grep -F 'a trigger warns' "$LH_CLUSTER_DIR/dispatcher.log")"
grep -qE "WARNING:  logistics_hub dispatcher 0: claim failed: first hour: a trigger fails \(SQLSTATE 23514\)" "$LH_CLUSTER_DIR/dispatcher.log" ||
	fail "the failed claim is not logged naming the worker and the step"
grep -qE "WARNING:  logistics_hub dispatcher 0: claim, piece by piece: endpoint \"boom\" paused: " "$LH_CLUSTER_DIR/dispatcher.log" ||
	fail "the pause's WARNING is not one line naming the worker and the step: $(grep -F 'paused' "$LH_CLUSTER_DIR/dispatcher.log")"
n=$(grep -c 'CONTEXT:' "$LH_CLUSTER_DIR/dispatcher.log" || true)
[ "$n" = 0 ] || fail "the dispatcher logged $n CONTEXT lines: $(grep -A2 'CONTEXT:' "$LH_CLUSTER_DIR/dispatcher.log" | head -20)"
ok "a WARNING in the dispatcher's SQL, a failed claim and the pause it led to: one line each naming worker and step, no CONTEXT"

q "ALTER SYSTEM SET log_min_messages = debug1" "SELECT pg_reload_conf()" >/dev/null
must_wait "SELECT current_setting('log_min_messages') = 'debug1'" 10 "log_min_messages not loaded"
before=$(wc -l <"$LOG")
push_publish warn SO-w2 >/dev/null
must_wait "$(delivered warn)" 30 "warn: SO-w2 not delivered"
q "ALTER SYSTEM RESET log_min_messages" "SELECT pg_reload_conf()" >/dev/null
tail -n +"$((before + 1))" "$LOG" | grep -F "[$pid]" >"$LH_CLUSTER_DIR/dispatcher-debug.log" || true
grep -A1 -E "DEBUG:  logistics_hub dispatcher 0: claim: first hour: a trigger warns$" "$LH_CLUSTER_DIR/dispatcher-debug.log" |
	grep -qE 'CONTEXT:  PL/pgSQL function (public\.)?fh_trip\(\) line [0-9]+ at RAISE' ||
	fail "no DEBUG line with the WARNING's context: $(grep -A3 -F 'a trigger warns' "$LH_CLUSTER_DIR/dispatcher-debug.log" | head -10)"
ok "with log_min_messages = debug1 the context is on a DEBUG line of its own"
q "DROP TRIGGER fh_trip ON hub.deliveries" >/dev/null

push_finish
