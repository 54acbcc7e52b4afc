#!/usr/bin/env bash
# test/scripts/push_lease_group_per_key.sh --- live push: lease groups of a
# per_key subscription (hub.subscribe(..., lease_group => N), ordering
# per_key).  A group holds events of one key; the dispatcher sends them one
# after another, each once the one before got through:
#   - three keys of 10 events published together route into a group of 8
#     and one of 2 per key, each named by its key
#   - the receiver answers after 40 ms: a key's requests never overlap
#     (each arrives at least 40 ms after the one before it), while the keys
#     go at the same time
#   - one event of key PA refused (500) until healed: nothing of PA after it
#     reaches the receiver before it got through; the events before it were
#     sent once each and are delivered in the group, the refused one is
#     retried on its own, the ones after it follow once it got through;
#     keys PB and PC, and key PD published behind PA's refused event, are
#     not held up
#   - every event sent once except the refused one; the receiver sees each
#     key's events in publishing order (first arrivals); one delivered
#     attempt row per event
source test/receiver/push_lib.sh
push_setup push-lease-group-per-key 119 "logistics_hub.poll_interval = 200ms"

PUSH_SUB="lease_group => 8, retry_base => '300 ms', retry_max => '400 ms', max_attempts => 50" \
	push_endpoint seq "fail-marked?delay=40&ep=seq" "max_concurrency => 8"
q "SELECT hub.pause_endpoint('seq', 'routing first')" >/dev/null
# PA's 4th event is refused; keys interleaved in one transaction
q "SELECT count(hub.publish('order.updated', k || '', jsonb_build_object('order_id', k, 'n', n, 't', 'seq',
									   'refuse', k = 'PA' AND n = 4)))
   FROM generate_series(1, 10) n, unnest(ARRAY['PA', 'PB', 'PC']) k" >/dev/null
q "SELECT hub._route_events()" >/dev/null
v=$(q "SELECT string_agg(d.aggregate_id || ':' || cardinality(d.batch_events), ' ' ORDER BY d.aggregate_id, d.seq)
	   FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'seq'")
[ "$v" = "PA:8 PA:2 PB:8 PB:2 PC:8 PC:2" ] || fail "routing made '$v' (want a group of 8 and one of 2 per key)"
ok "each key's ten events route into a group of 8 and one of 2, named by the key"
q "SELECT hub.resume_endpoint('seq')" >/dev/null

PA4=$(q "SELECT event_id FROM hub.outbox WHERE aggregate_id = 'PA' AND (payload->>'n')::int = 4")
must_wait "SELECT count(*) >= 3 FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id)
		   WHERE d.event_id = '$PA4' AND a.outcome = 'retry' AND a.http_status = 500" 30 \
	"PA's refused event was not retried on its own"
# a key published now is not held up by PA
q "SELECT count(hub.publish('order.updated', 'PD', jsonb_build_object('order_id', 'PD', 'n', n, 't', 'seq')))
   FROM generate_series(1, 3) n" >/dev/null
must_wait "SELECT count(*) = 10 FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id),
				  unnest(coalesce(d.batch_events, ARRAY[d.event_id])) x
		   WHERE e.name = 'seq' AND d.state = 'delivered' AND d.aggregate_id = 'PB'" 30 "PB was held up"
must_wait "SELECT count(*) = 3 FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id),
				  unnest(coalesce(d.batch_events, ARRAY[d.event_id])) x
		   WHERE e.name = 'seq' AND d.state = 'delivered' AND d.aggregate_id = 'PD'" 30 "PD was held up behind PA"
out=$(recv "
import json
pa = [json.loads(e['body'])['data']['n'] for e in E if 'ep=seq' in e['path'] and json.loads(e['body'])['aggregate_id'] == 'PA']
print(sorted(set(pa)), pa.count(4) >= 3)
")
[ "$out" = "[1, 2, 3, 4] True" ] || fail "while PA's 4th is refused the receiver got PA's '$out' (want 1 to 3 once, the 4th retried, nothing after it)"
v=$(q "SELECT string_agg(d.state || ':' || coalesce(cardinality(d.batch_events), 1), ' ' ORDER BY d.seq)
	   FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'seq' AND d.aggregate_id = 'PA'")
case $v in "delivered:3 retry_wait:1 pending:4 pending:2" | "delivered:3 in_flight:1 pending:4 pending:2") ;;
	*) fail "PA's deliveries while refused: '$v' (want the three sent delivered in the group, the 4th alone, the rest behind it)" ;; esac
ok "while PA's 4th event is refused nothing of PA after it is sent (deliveries: $v); PB and PD go on"

lh_receiver_control fail_marked 0
must_wait "SELECT bool_and(d.state = 'delivered') FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
		   WHERE e.name = 'seq'" 30 "not everything was delivered once healed"
ok "once healed, PA's refused event and the ones behind it are delivered"

out=$(recv "
import json
hits = [e for e in E if 'ep=seq' in e['path']]
by = {}
for e in hits:
    b = json.loads(e['body'])
    by.setdefault(b['aggregate_id'], []).append((e['t'], b['data']['n'], e['headers'].get('webhook-id')))
bad_order, overlap, dup = [], [], []
for k, xs in sorted(by.items()):
    firsts = []
    for t, n, w in xs:
        if n not in firsts:
            firsts.append(n)
    if firsts != sorted(firsts) or len(firsts) != (3 if k == 'PD' else 10):
        bad_order.append(k)
    overlap += [k for (t1, _, _), (t2, _, _) in zip(xs, xs[1:]) if t2 - t1 < 0.039]
    ws = [w for _, n, w in xs if not (k == 'PA' and n == 4)]
    if len(ws) != len(set(ws)):
        dup.append(k)
starts = sorted(min(t for t, _, _ in xs) for xs in by.values())
print(bad_order, sorted(set(overlap)), dup, round(starts[2] - starts[0], 1) < 0.3)
")
[ "$out" = "[] [] [] True" ] || fail "receiver: '$out' (want every key in order, no key's requests overlapping, no event twice but the refused one, the keys started together)"
ok "the receiver got each key's events in publishing order, one request of a key at a time (40 ms apart at least), each once but the refused one; the keys went at the same time"

v=$(q "SELECT count(*), count(DISTINCT coalesce(a.group_event_id, d.event_id))
	   FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) JOIN hub.endpoints e USING (endpoint_id)
	   WHERE e.name = 'seq' AND a.outcome = 'delivered'")
[ "$v" = "33|33" ] || fail "delivered attempt rows '$v' (want 33, one per event)"
ok "one delivered attempt row per event (33)"

push_finish
