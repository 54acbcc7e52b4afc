#!/usr/bin/env bash
# test/scripts/poll_trace.sh --- W3C Trace Context on polls, with the real
# dispatcher against the loopback list API (test/receiver/poll_api.py logs
# each request's headers; README "Trace context"):
#   - every page request of a run carries the run's traceparent header, one
#     trace per run (two runs, the second a 304: two traces)
#   - the inbox messages of the run's records keep it, and hub.trace shows it
#   - an event published while processing a polled record is a child span
#     of the run: same trace id, new parent id
source test/receiver/push_lib.sh
push_setup poll-trace 168 "logistics_hub.dispatcher_naptime = 100ms"

dir=$LH_CLUSTER_DIR/api
mkdir -p "$dir"
python3 test/receiver/poll_api.py serve --port-file "$dir/api.port" --log "$dir/api.log" >"$dir/api.out" 2>&1 &
API_PID=$!
trap 'kill $API_PID 2>/dev/null; push_cleanup' EXIT
for _ in $(seq 100); do [ -s "$dir/api.port" ] && break; sleep 0.05; done
port=$(cat "$dir/api.port")
python3 test/receiver/poll_api.py control --port "$port" '{"op": "reset", "count": 25}' >/dev/null

q "CREATE FUNCTION public.item_handler(p jsonb, t text) RETURNS void LANGUAGE sql SECURITY DEFINER AS
   \$\$SELECT hub.publish('order.created', 'I-' || (p ->> 'id'), jsonb_build_object('order_id', 'I-' || (p ->> 'id')))\$\$" \
  "SELECT hub.register_handler('erp.item', 'public.item_handler')" \
  "SELECT hub.create_endpoint('api', 'http://127.0.0.1:$port/', 'erp')" \
  "SELECT hub.create_poller('api', '/link/items', 'erp.item', name => 'items', pagination => 'link_header',
	limit_param => 'limit', page_size => 10, every => '1 hour')" >/dev/null
must_wait "SELECT last_success_at IS NOT NULL AND next_url IS NULL FROM hub.pollers WHERE name = 'items'" 30 \
	"the poller did not finish its run"
RUN1=$(q "SELECT run_traceparent FROM hub.pollers WHERE name = 'items'")
sent() { python3 -c "
import json
tps = [json.loads(l)['headers'].get('traceparent') for l in open('$dir/api.log') if json.loads(l)['path'].startswith('/link/items')]
print(len(tps), ' '.join(sorted(set(str(t) for t in tps))))"; }
got=$(sent)
[ "$got" = "3 $RUN1" ] || fail "the run's three page requests carry its traceparent ($RUN1): $got"
ok "every page request of a run carries the run's traceparent"

got=$(q "SELECT count(*) || ' ' || count(*) FILTER (WHERE traceparent = '$RUN1') FROM hub.inbox WHERE source = 'poll:items'")
[ "$got" = "25 25" ] || fail "the run's records keep its traceparent: $got"
got=$(q "SELECT string_agg(DISTINCT what || '=' || (traceparent = '$RUN1'), ' ' ORDER BY what || '=' || (traceparent = '$RUN1')) FROM hub.trace(aggregate => '7') WHERE what IN ('polled', 'received')")
[ "$got" = "polled=true received=true" ] || fail "hub.trace shows the run's traceparent: $got"
ok "the inbox messages of its records keep it, and hub.trace shows it"

[ "$(q "SELECT processed FROM hub.process_inbox(100)")" = 25 ] || fail "the polled records were not processed"
got=$(q "SELECT count(*) FILTER (WHERE substr(traceparent, 1, 36) = substr('$RUN1', 1, 36) AND traceparent <> '$RUN1')
         FROM hub.outbox WHERE aggregate_id LIKE 'I-%'")
[ "$got" = 25 ] || fail "what processing the records published is a child span of the run: $got"
ok "an event published while processing a polled record is a child span of the run"

q "SELECT hub.poll_now('items')" >/dev/null
must_wait "SELECT run_traceparent <> '$RUN1' AND next_url IS NULL AND (SELECT count(*) FROM hub.poll_requests) >= 4
           FROM hub.pollers WHERE name = 'items'" 30 "the second run did not happen"
RUN2=$(q "SELECT run_traceparent FROM hub.pollers WHERE name = 'items'")
got=$(sent)
case $got in *"$RUN1"*"$RUN2"* | *"$RUN2"*"$RUN1"*) ;; *) fail "the second run sends a trace of its own: $got" ;; esac
[ "${RUN1:3:32}" != "${RUN2:3:32}" ] || fail "the two runs share a trace id"
ok "the next run is a new trace"

push_finish
