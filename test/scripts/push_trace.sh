#!/usr/bin/env bash
# test/scripts/push_trace.sh --- W3C Trace Context on push requests, against
# the loopback receiver (README "Trace context"):
#   - a publisher's traceparent arrives as the traceparent header of the
#     event's request, byte for byte; an event published without one
#     carries the trace the hub started for it (hub.outbox.traceparent)
#   - a CloudEvents body carries it as the distributed tracing extension
#     attribute too
#   - a batch request carries its first event's traceparent
#   - an event published by an inbox handler arrives with the trace id of
#     the message received with a traceparent, under a new parent id
#   - traceparent and tracestate cannot be fixed endpoint headers (22023)
source test/receiver/push_lib.sh
push_setup push-trace 167 "logistics_hub.poll_interval = 200ms"

push_endpoint single "ok?ep=single"
PUSH_SUB="ordering => 'none', body_format => 'batch', batch_max => 3" push_endpoint batch "ok?ep=batch"
PUSH_SUB="body_format => 'cloudevents'" push_endpoint ce "ok?ep=ce"

TP=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
E1=$(q "SELECT hub.publish('order.created', 'T-1', '{\"order_id\": \"T-1\", \"t\": \"single\"}', traceparent => '$TP')")
E2=$(q "SELECT hub.publish('order.created', 'T-2', '{\"order_id\": \"T-2\", \"t\": \"single\"}')")
TP2=$(q "SELECT traceparent FROM hub.outbox WHERE event_id = '$E2'")
EC=$(q "SELECT hub.publish('order.created', 'C-1', '{\"order_id\": \"C-1\", \"t\": \"ce\"}', traceparent => '$TP')")
# three events of one transaction: one batch request
q "SELECT hub.publish('order.created', 'B-' || i, jsonb_build_object('order_id', 'B-' || i, 't', 'batch'))
   FROM generate_series(1, 3) i" >/dev/null

# an inbox message with a traceparent whose handler publishes
q "CREATE FUNCTION public.trace_handler(p jsonb, t text) RETURNS void LANGUAGE sql SECURITY DEFINER AS
   \$\$SELECT hub.publish('order.created', 'H-1', '{\"order_id\": \"H-1\", \"t\": \"single\"}')\$\$" \
	"SELECT hub.register_handler('erp.trace', 'public.trace_handler')" >/dev/null
q "SELECT hub.receive('erp', 'm-1', 'erp.trace', '{}', traceparent => '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01')" >/dev/null
[ "$(q "SELECT processed FROM hub.process_inbox()")" = 1 ] || fail "the inbox message was not processed"
EH=$(q "SELECT event_id FROM hub.outbox WHERE aggregate_id = 'H-1'")

must_wait "SELECT count(*) = 5 AND bool_and(state = 'delivered')
           FROM hub.deliveries" 30 "the events were not delivered (four single deliveries, one batch)"

got=$(recv "
h = {e['headers']['webhook-id']: e['headers'].get('traceparent') for e in E if 'ep=single' in e['path']}
print(h.get('$E1') == '$TP', h.get('$E2') == '$TP2', h.get('$E2', '') != '')")
[ "$got" = "True True True" ] || fail "a publisher's traceparent and the hub's own arrive as the header: $got"
ok "a publisher's traceparent arrives as the traceparent header; an event published without one carries the trace the hub started"

got=$(recv "
import json
rows = [e for e in E if 'ep=ce' in e['path']]
print(len(rows), rows[0]['headers'].get('traceparent') == '$TP', json.loads(rows[0]['body']).get('traceparent') == '$TP')")
[ "$got" = "1 True True" ] || fail "a CloudEvents request carries the traceparent as header and extension attribute: $got"
ok "a CloudEvents body carries the traceparent extension attribute, as its header does"

FIRST=$(q "SELECT traceparent FROM hub.outbox WHERE aggregate_id = 'B-1'")
got=$(recv "
import json
rows = [e for e in E if 'ep=batch' in e['path']]
body = json.loads(rows[0]['body']) if len(rows) == 1 else []
print(len(rows), len(body), rows[0]['headers'].get('traceparent') == '$FIRST' if rows else None,
      body[0]['aggregate_id'] if body else None)")
[ "$got" = "1 3 True B-1" ] || fail "one batch request of three events with its first event's traceparent: $got"
ok "a batch request carries its first event's traceparent"

got=$(recv "
h = [e['headers'].get('traceparent', '') for e in E if e['headers'].get('webhook-id') == '$EH']
print(len(h) == 1, h[0][:36] if h else None, h[0][36:52] != 'b7ad6b7169203331' if h else None)")
[ "$got" = "True 00-0af7651916cd43dd8448eb211c80319c- True" ] ||
	fail "what a handler publishes carries its message's trace id under a new parent id: $got"
ok "an event an inbox handler published arrives in the inbound message's trace, as a child span"

for h in traceparent TraceState; do
	got=$(q "SELECT public.sqlstate_of(\$\$SELECT hub.create_endpoint('fixed-$h', '$RECV_URL/ok', 'other', headers => '{\"$h\": \"x\"}')\$\$)")
	[ "$got" = 22023 ] || fail "$h as a fixed endpoint header: $got"
done
ok "traceparent and tracestate cannot be fixed endpoint headers (22023)"

push_finish
