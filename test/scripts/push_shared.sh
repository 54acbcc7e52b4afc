#!/usr/bin/env bash
# test/scripts/push_shared.sh --- live push with two dispatchers sharing
# endpoints with spread set (hub._serves): each takes its share of the
# endpoint's limits, and a claim takes at most 8 rounds of its share, so
#   - both dispatchers deliver to a busy endpoint (attempt rows name both);
#   - the endpoint's max_concurrency holds in sum: with every request held
#     200 ms by the receiver, no 150 ms of arrivals holds more than 4
#     requests (max_concurrency 4: 2 + 2);
#   - the endpoint's rate_limit holds in sum: no 1-second window of arrivals
#     (less 100 ms of jitter) holds more than 10 (rate_limit 10: 5 + 5;
#     which dispatchers deliver is printed: the one that claims after its
#     own completions may take the whole of a small backlog, and then
#     sends it at its half of the rate);
#   - an endpoint without spread is served by one dispatcher only.
source test/receiver/push_lib.sh
PUSH_DISPATCHERS=2 push_setup push-shared 116 "logistics_hub.poll_interval = 200ms"

PUSH_SUB="ordering => 'none'" push_endpoint conc "delay/200?ep=conc" "max_concurrency => 4"
PUSH_SUB="ordering => 'none'" push_endpoint rate "ok?ep=rate" "rate_limit => 10" "max_concurrency => 2"
PUSH_SUB="ordering => 'none'" push_endpoint one "ok?ep=one" "max_concurrency => 4"
q "UPDATE hub.endpoints SET spread = true WHERE name IN ('conc', 'rate')" >/dev/null
for ep in conc rate one; do
	q "SELECT hub.publish('order.created', '$ep-' || i, jsonb_build_object('order_id', '$ep-' || i, 't', '$ep'))
	   FROM generate_series(1, 30) i" >/dev/null
done
for ep in conc rate one; do
	must_wait "SELECT bool_and(d.state = 'delivered') AND count(*) = 30 FROM hub.deliveries d
			   JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = '$ep'" 60 "$ep: not everything delivered"
done
workers() {
	q "SELECT count(DISTINCT a.worker) || ' ' || string_agg(DISTINCT a.worker, ',')
	   FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) JOIN hub.endpoints e USING (endpoint_id)
	   WHERE e.name = '$1' AND a.outcome = 'delivered'"
}

read -r n names <<<"$(workers conc)"
[ "$n" = 2 ] || fail "conc: delivered by $n dispatcher(s) ($names), want both"
got=$(recv "
t = sorted(e['t'] for e in E if 'ep=conc' in e['path'])
print(len(t), max(sum(1 for u in t if s <= u < s + 0.15) for s in t))")
read -r hits most <<<"$got"
[ "$hits" = 30 ] || fail "conc: $hits requests, want 30"
[ "$most" -le 4 ] || fail "conc: $most requests arrived within 150 ms, max_concurrency 4 (2 a dispatcher)"
ok "max_concurrency 4 shared by two dispatchers ($names): at most $most requests within 150 ms of each other while each is held 200 ms"

read -r n names <<<"$(workers rate)"
got=$(recv "
t = sorted(e['t'] for e in E if 'ep=rate' in e['path'])
print(len(t), max(sum(1 for u in t if s <= u < s + 0.9) for s in t), t[-1] - t[0] >= 2.0)")
read -r hits most spread <<<"$got"
[ "$hits" = 30 ] || fail "rate: $hits requests, want 30"
[ "$most" -le 10 ] && [ "$spread" = True ] ||
	fail "rate: $most requests in one 1-second window (less 100 ms of jitter), rate_limit 10 shared by two dispatchers (spread over 2 s: $spread)"
ok "rate_limit 10 shared by two dispatchers: at most $most requests in any 1-second window of arrivals, 30 requests (delivered by $names)"

read -r n names <<<"$(workers one)"
[ "$n" = 1 ] || fail "one: delivered by $n dispatchers ($names), want one (no spread)"
ok "an endpoint without spread is served by one dispatcher ($names)"

push_finish
