#!/usr/bin/env bash
# test/scripts/push_lease_group.sh --- live push: lease groups
# (hub.subscribe(..., lease_group => N), ordering none).  Events routed
# together share one delivery row, but each is still its own request:
#   - 10 events in one group, one of them refused (500) until healed: the
#     receiver gets each event alone (its id as webhook-id, a JSON object,
#     signed), the nine that got through once each; the refused one leaves
#     the group as a delivery of its own, is retried and delivered; the
#     group row holds the nine, with one delivered attempt row per event
#   - a group all of whose events are refused with a 4xx: every event dead,
#     each in its own dead letter, each sent once
#   - a CloudEvents group: one request per event with the CloudEvents type
#   - a group whose endpoint is paused while most of its requests still wait
#     in the queue: those are given back without an attempt, together as one
#     group, the ones in flight are completed in the group; after the resume
#     every event has been sent exactly once
#   - a group with a transform that raises for one of its events (configured
#     last: while a transform exists the dispatcher claims through
#     hub._claim_transformed): the other events are sent, transformed, one
#     request each, and completed as the group; the failing one is dead on
#     its own, never sent
source test/receiver/push_lib.sh
push_setup push-lease-group 117 "logistics_hub.poll_interval = 200ms"

S1=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
PUSH_SUB="ordering => 'none', lease_group => 10, retry_base => '200 ms', retry_max => '300 ms', max_attempts => 20" \
	push_endpoint grp "fail-aggregate/GK2?ep=grp" "signing_secret => '$S1'"
PUSH_SUB="ordering => 'none', lease_group => 5" push_endpoint grpdead "status/422?ep=grpdead"
PUSH_SUB="ordering => 'none', lease_group => 4, body_format => 'cloudevents'" push_endpoint grpce "ok?ep=grpce"
PUSH_SUB="ordering => 'none', lease_group => 20" push_endpoint grppause "delay/1000?ep=grppause" "max_concurrency => 2"

# each set in one transaction: routed in one pass, so one group each
# (looked at with the endpoints paused, before anything is sent)
for ep in grp grpdead grpce; do q "SELECT hub.pause_endpoint('$ep', 'routing first')" >/dev/null; done
pub() { q "SELECT count(hub.publish('order.created', '$2' || i, jsonb_build_object('order_id', '$2' || i, 't', '$1')))
		   FROM generate_series(1, $3) i" >/dev/null; }
pub grp GK 10
pub grpdead DK 5
pub grpce CK 4
q "SELECT hub._route_events()" >/dev/null
for ep in grp grpdead grpce; do
	n=$(q "SELECT count(*) FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = '$ep'")
	[ "$n" -eq 1 ] || fail "$ep: routed into $n deliveries, not one group"
done
ok "each set of events routed together is one delivery row (a lease group)"
for ep in grp grpdead grpce; do q "SELECT hub.resume_endpoint('$ep')" >/dev/null; done

GK2=$(q "SELECT event_id FROM hub.outbox WHERE aggregate_id = 'GK2'")
must_wait "SELECT count(*) >= 1 FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id)
		   WHERE d.event_id = '$GK2' AND a.outcome = 'retry' AND a.http_status = 500" 20 \
	"grp: the refused event was not retried as a delivery of its own"
must_wait "SELECT count(*) = 1 FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
		   WHERE e.name = 'grp' AND d.state = 'delivered' AND cardinality(d.batch_events) = 9" 20 \
	"grp: the nine events that got through are not delivered in the group"
ok "grp: the nine that got through are delivered in the group, the refused one retried on its own"
lh_receiver_control fail_GK2 0
must_wait "SELECT bool_and(d.state = 'delivered') AND count(*) = 2 FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
		   WHERE e.name = 'grp'" 20 "grp: the healed event was not delivered"
ok "grp: once healed, the split event is delivered"

# what the receiver got: one event a request, its id as webhook-id
out=$(recv "
import json
want = set('''$(q "SELECT event_id FROM hub.outbox WHERE payload->>'t' = 'grp'")'''.split())
hits = [e for e in E if 'ep=grp' in e['path'] and 'ep=grpdead' not in e['path'] and 'ep=grpce' not in e['path']]
bad = [e for e in hits if not isinstance(json.loads(e['body']), dict) or json.loads(e['body'])['id'] != e['headers'].get('webhook-id')]
ids = [e['headers'].get('webhook-id') for e in hits]
once = [i for i in want if i != '$GK2' and ids.count(i) != 1]
print(len(bad), set(ids) == want, len(once), ids.count('$GK2') >= 2)
")
[ "$out" = "0 True 0 True" ] || fail "grp: receiver saw '$out' (want: 0 bad bodies, the 10 ids, each of the nine once, the refused one at least twice)"
ok "grp: every request carried one event under its own id; the nine were sent once each, the refused one until it got through"
lh_receiver_verify "$S1" --path ep=grp || fail "grp: a signature does not verify"
ok "grp: every request's Standard Webhooks signature verifies (the receiver's own check)"

# the audit: one delivered attempt row per event, naming it
v=$(q "SELECT count(*) FILTER (WHERE a.outcome = 'delivered'), count(DISTINCT a.group_event_id) FILTER (WHERE a.outcome = 'delivered'),
			  bool_and(a.group_event_id = ANY (d.batch_events)), bool_and(a.attempt = 1)
	   FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) JOIN hub.attempts a USING (delivery_id)
	   WHERE e.name = 'grp' AND d.batch_events IS NOT NULL")
[ "$v" = "9|9|t|t" ] || fail "grp: the group's attempt rows are '$v' (want 9 delivered, one per event, attempt 1)"
v=$(q "SELECT string_agg(a.outcome, ',' ORDER BY a.attempt_id) FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id)
	   WHERE d.event_id = '$GK2'")
case $v in retry,*delivered) ;; *) fail "grp: the split event's attempts are '$v'" ;; esac
ok "grp: the audit has a delivered attempt per event of the group and the split event's own retries ($v)"

# a group refused whole with a 4xx: each event dead on its own, sent once
must_wait "SELECT count(*) = 5 FROM hub.dead_letters WHERE endpoint = 'grpdead'" 20 "grpdead: not every event is a dead letter"
v=$(q "SELECT count(DISTINCT event_id), sum(events), count(*) FILTER (WHERE last_error LIKE '%422%') FROM hub.dead_letters
	   WHERE endpoint = 'grpdead'")
[ "$v" = "5|5|5" ] || fail "grpdead: dead letters '$v' (want 5 events, one each, HTTP 422)"
n=$(recv "print(sum(1 for e in E if 'ep=grpdead' in e['path']))")
[ "$n" -eq 5 ] || fail "grpdead: $n requests for 5 events (a 4xx is not retried)"
ok "grpdead: a group refused with 422 leaves five dead letters of one event each, every event sent once"

# CloudEvents: still one request per event
must_wait "SELECT bool_and(d.state = 'delivered') FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
		   WHERE e.name = 'grpce'" 20 "grpce: not delivered"
out=$(recv "
import json
hits = [e for e in E if 'ep=grpce' in e['path']]
print(len(hits), all(e['headers'].get('content-type') == 'application/cloudevents+json'
                     and json.loads(e['body'])['specversion'] == '1.0' for e in hits),
      len(set(e['headers'].get('webhook-id') for e in hits)))
")
[ "$out" = "4 True 4" ] || fail "grpce: receiver saw '$out'"
ok "grpce: a CloudEvents group is four structured-mode requests"

# paused mid-group: 20 requests two at a time, a second each
pub grppause PK 20
must_wait "SELECT count(*) = 1 FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
		   WHERE e.name = 'grppause' AND d.state = 'in_flight' AND cardinality(d.batch_events) = 20" 20 \
	"grppause: the group of 20 was not leased"
sleep 1.5	# (the first requests go out)
q "SELECT hub.pause_endpoint('grppause', 'mid-group')" >/dev/null
must_wait "SELECT count(*) = 0 FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
		   WHERE e.name = 'grppause' AND d.state = 'in_flight'" 20 "grppause: still in flight after the pause"
v=$(q "SELECT count(*) FILTER (WHERE d.state = 'delivered'),
			  coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'delivered'), 0),
			  count(*) FILTER (WHERE d.state = 'pending'),
			  coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'pending'), 0)
	   FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'grppause'")
IFS='|' read -r ndel nin nbackrows nback <<<"$v"
[ "$ndel" -eq 1 ] && [ "$nbackrows" -eq 1 ] && [ "$nback" -ge 2 ] && [ $((nin + nback)) -eq 20 ] ||
	fail "grppause: after the pause '$v' (want the group delivered with the events sent, the others pending as one group)"
n=$(q "SELECT count(*) FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) JOIN hub.endpoints e USING (endpoint_id)
	   WHERE e.name = 'grppause' AND a.outcome = 'deferred'")
[ "$n" -eq 1 ] || fail "grppause: $n deferred attempt rows for the one group given back"
ok "grppause: paused mid-group, the $nin events sent were completed in the group, the $nback still queued given back together as one group, no attempt spent"
q "SELECT hub.resume_endpoint('grppause')" >/dev/null
must_wait "SELECT bool_and(d.state = 'delivered') FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
		   WHERE e.name = 'grppause'" 40 "grppause: not delivered after the resume"
out=$(recv "
ids = [e['headers'].get('webhook-id') for e in E if 'ep=grppause' in e['path']]
print(len(ids), len(set(ids)))
")
[ "$out" = "20 20" ] || fail "grppause: receiver saw '$out' (want 20 requests for 20 events)"
ok "grppause: after the resume every event was sent exactly once"

q "CREATE FUNCTION public.grp_map(p jsonb) RETURNS jsonb LANGUAGE plpgsql SECURITY DEFINER AS \$\$
   BEGIN
	 IF p->>'order_id' = 'XK3' THEN RAISE EXCEPTION 'no mapping for %', p->>'order_id'; END IF;
	 RETURN p || '{\"mapped\": true}';
   END \$\$" >/dev/null
PUSH_SUB="ordering => 'none', lease_group => 6, transform => 'public.grp_map', max_attempts => 1" \
	push_endpoint grpx "ok?ep=grpx"
pub grpx XK 6
XK3=$(q "SELECT event_id FROM hub.outbox WHERE aggregate_id = 'XK3'")
must_wait "SELECT count(*) = 2 AND bool_and(state IN ('delivered', 'dead')) FROM hub.deliveries d
		   JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'grpx'" 20 "grpx: the group and its failed event did not settle"
v=$(q "SELECT string_agg(d.state || ':' || coalesce(cardinality(d.batch_events), 1), ' ' ORDER BY d.state)
	   FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'grpx'")
[ "$v" = "dead:1 delivered:5" ] || fail "grpx: deliveries '$v' (want the group of five delivered, the failed event dead alone)"
out=$(recv "
import json
hits = [e for e in E if 'ep=grpx' in e['path']]
print(len(hits), len(set(e['headers']['webhook-id'] for e in hits)), all(json.loads(e['body'])['data'].get('mapped') for e in hits),
      '$XK3' in [e['headers']['webhook-id'] for e in hits])
")
[ "$out" = "5 5 True False" ] || fail "grpx: receiver saw '$out' (want 5 requests, 5 ids, all transformed, not the failed event)"
ok "grpx: a transform raising for one event of a group: the other five sent transformed and delivered as the group, the failed one dead alone, never sent"

push_finish
