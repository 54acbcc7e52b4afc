#!/usr/bin/env bash
# test/scripts/push_breaker.sh --- live push: the circuit breaker judges the
# endpoint, not one business key (issue 17), with the endpoints' default
# circuit settings (threshold 5, cool-off 30 s) and concurrency.
#   - one key always failing (fail-aggregate/BAD) on an endpoint that also
#     gets 200 healthy events of 50 other keys: the bad key is retried on
#     its own schedule (more failures in a row than the threshold before the
#     healthy events are even published) and dead-lettered after
#     max_attempts, every attempt spent on a request; all 200 healthy events
#     are delivered; the circuit never opens
#   - an endpoint down for every key (status/500): the circuit opens when the
#     threshold's number of distinct keys have failed in a row; its other
#     deliveries wait; another endpoint is served meanwhile
# Every change of an endpoint's circuit state is written to a log table by a
# trigger (the test's own), so "never opened" is a record, not a sample.
source test/receiver/push_lib.sh
push_setup push-breaker 141 "logistics_hub.poll_interval = 200ms"

q "CREATE TABLE public.circuit_log (at timestamptz NOT NULL DEFAULT clock_timestamp(), endpoint text, state text,
	failures integer)" \
  "CREATE FUNCTION public.log_circuit() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS \$\$
   BEGIN
	INSERT INTO public.circuit_log (endpoint, state, failures) VALUES (NEW.name, NEW.circuit_state, NEW.consecutive_failures);
	RETURN NULL;
   END \$\$" \
  "CREATE TRIGGER circuit_log AFTER UPDATE OF circuit_state ON hub.endpoints FOR EACH ROW
	WHEN (OLD.circuit_state IS DISTINCT FROM NEW.circuit_state) EXECUTE FUNCTION public.log_circuit()" >/dev/null

# (small retry times so that the bad key lives through the test; nothing
# else differs from the defaults)
PUSH_SUB="retry_base => '100 ms', retry_max => '300 ms', max_attempts => 15" push_endpoint shop "fail-aggregate/BAD?ep=shop"
push_endpoint down "status/500?ep=down"
push_endpoint other "ok?ep=other"
got=$(q "SELECT string_agg(circuit_failure_threshold || ' ' || circuit_cooloff || ' ' || max_concurrency, ',')
		 FROM hub.endpoints")
[ "$got" = "5 00:00:30 16,5 00:00:30 16,5 00:00:30 16" ] || fail "not the default circuit settings: $got"

# ---- one bad key among healthy ones
BAD=$(push_publish shop BAD)
# with a breaker that counts every failure, the fifth failure in a row opens
# the circuit and the key's retries stop for the cool-off
wait_sql "SELECT attempts >= 7 FROM hub.deliveries WHERE event_id = '$BAD'" 20 ||
	fail "the failing key was not retried on its own schedule: $(q "SELECT attempts || ' attempts, circuit ' || e.circuit_state
	 FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE d.event_id = '$BAD'")"
ok "the failing key was retried 7 times in a row without opening the circuit"
for b in $(seq 0 9); do
	q "SELECT hub.publish('order.created', 'K-' || (i % 50), jsonb_build_object('order_id', 'K-' || (i % 50), 't', 'shop', 'n', i))
	   FROM generate_series($((b * 20)), $((b * 20 + 19))) i" >/dev/null
done
wait_sql "SELECT count(*) = 200 AND bool_and(d.state = 'delivered') FROM hub.deliveries d JOIN hub.outbox o USING (event_id)
		   WHERE o.payload ->> 't' = 'shop' AND o.aggregate_id <> 'BAD'" 60 ||
	fail "the healthy events were not all delivered: $(q "SELECT string_agg(state || ' ' || n, ', ') FROM (SELECT d.state, count(*) n
	 FROM hub.deliveries d JOIN hub.outbox o USING (event_id) WHERE o.payload ->> 't' = 'shop' AND o.aggregate_id <> 'BAD'
	 GROUP BY 1) s")"
ok "all 200 healthy events of 50 other keys delivered"
must_wait "SELECT state = 'dead' FROM hub.deliveries WHERE event_id = '$BAD'" 60 "the failing key was not dead-lettered"
got=$(q "SELECT d.attempts || ' ' || string_agg(a.outcome, ',' ORDER BY a.attempt_id)
		 FROM hub.deliveries d JOIN hub.attempts a USING (delivery_id) WHERE d.event_id = '$BAD' GROUP BY d.attempts")
want="15 $(printf 'retry,%.0s' $(seq 14))dead"
[ "$got" = "$want" ] || fail "the failing key's attempts: '$got', want '$want'"
n=$(recv "print(sum(1 for e in E if 'ep=shop' in e['path'] and e['headers'].get('webhook-id') == '$BAD'))")
[ "$n" = 15 ] || fail "the failing key was sent $n times, want 15 (max_attempts)"
ok "the failing key: 15 requests, 14 retries and a dead letter, never given back"
got=$(q "SELECT count(*) FROM public.circuit_log WHERE endpoint = 'shop'")
[ "$got" = 0 ] || fail "the circuit of the endpoint with one bad key changed state: $(q "SELECT string_agg(state || '@' || failures, ' ' ORDER BY at) FROM public.circuit_log")"
got=$(q "SELECT circuit_state || ' ' || (consecutive_failures <= 1) FROM hub.endpoints WHERE name = 'shop'")
[ "$got" = "closed true" ] || fail "shop's circuit: '$got', want 'closed true'"
ok "one bad key never opened the circuit (no state change recorded)"

# ---- an endpoint down for every key
q "SELECT hub.publish('order.created', 'D-' || i, jsonb_build_object('order_id', 'D-' || i, 't', 'down'))
   FROM generate_series(1, 40) i" >/dev/null
must_wait "SELECT circuit_state = 'open' FROM hub.sync_status WHERE endpoint = 'down'" 30 "the circuit of an endpoint down for every key did not open"
got=$(q "SELECT state || ' ' || failures FROM public.circuit_log WHERE endpoint = 'down' ORDER BY at LIMIT 1")
[ "$got" = "open 5" ] || fail "the first circuit change of the endpoint down: '$got', want 'open 5' (the threshold)"
opened=$(q "SELECT min(at) FROM public.circuit_log WHERE endpoint = 'down'")
got=$(q "SELECT count(DISTINCT d.aggregate_id) >= 5 FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id)
		 JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'down' AND a.outcome = 'retry' AND a.at <= '$opened'")
[ "$got" = t ] || fail "the circuit opened before 5 distinct keys had failed"
ok "an endpoint down for every key: the circuit opened after 5 keys failed (threshold 5)"
OK1=$(push_publish other O-1)
must_wait "SELECT state = 'delivered' FROM hub.deliveries WHERE event_id = '$OK1'" 20 "another endpoint was not served while down's circuit was open"
got=$(q "SELECT count(*) FILTER (WHERE d.attempts = 0) > 0 FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
		 WHERE e.name = 'down'")
closed=$(q "SELECT count(*) FROM public.circuit_log WHERE endpoint = 'down' AND state = 'closed'")
after=$(q "SELECT a.at > '$opened' FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id)
		   WHERE d.event_id = '$OK1' AND a.outcome = 'delivered'")
[ "$got" = t ] && [ "$closed" = 0 ] && [ "$after" = t ] ||
	fail "while down's circuit was open: deliveries never tried '$got' (want t), closings $closed (want 0), other delivered after the opening '$after' (want t)"
ok "while its circuit is open, the endpoint's other deliveries wait untried; another endpoint is served"

push_finish
