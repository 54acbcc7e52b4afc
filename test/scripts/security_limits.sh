#!/usr/bin/env bash
# test/scripts/security_limits.sh --- limits on inputs, live (issue 16): no
# single input stops delivery for everyone.  One dispatcher, a claim budget
# of 2 MB (logistics_hub.claim_max_bytes), and
#   - inputs that used to put the dispatcher into a restart loop are refused
#     where they enter: a hub_writer's 3 kB aggregate id (22001), an endpoint
#     UPDATE to max_concurrency 268435456 or rate_limit NaN (23514), a
#     subscription with max_attempts of a billion (22023);
#   - an endpoint at the extreme ends of the ranges (max_concurrency 1000,
#     rate_limit 100000, circuit_failure_threshold 1000, circuit_cooloff a
#     day; max_attempts 1000, retry_base 24 hours, retry_max 7 days,
#     priority 1000) that always answers 500, its delivery failed at attempt
#     991 (where retry_base * 2^30 overflowed an interval), stays in
#     retry_wait with a backoff of at most 7 days;
#   - ten events with the largest payload allowed (1 MB), so about two a
#     claim, are all delivered whole;
#   - meanwhile a healthy endpoint gets all of its 20 events, and the
#     dispatcher never restarts.
source test/receiver/push_lib.sh
push_setup security-limits 120 "logistics_hub.claim_max_bytes = 2MB" "logistics_hub.poll_interval = 200ms"

q "CREATE ROLE limits_writer LOGIN" "GRANT hub_writer TO limits_writer" >/dev/null
push_endpoint healthy "ok?ep=healthy"
push_endpoint big "ok?ep=big"
PUSH_SUB="max_attempts => 1000, retry_base => '24 hours', retry_max => '7 days', priority => 1000" \
	push_endpoint extreme "status/500?ep=extreme" "max_concurrency => 1000" "rate_limit => 100000"
q "UPDATE hub.endpoints SET circuit_failure_threshold = 1000, circuit_cooloff = '1 day' WHERE name = 'extreme'" >/dev/null

# refused where they enter
got=$(q "SET ROLE limits_writer" \
	"SELECT public.sqlstate_of(\$\$SELECT hub.publish('order.created', repeat('k', 3000), '{\"order_id\": \"1\", \"t\": \"healthy\"}')\$\$)")
[ "$got" = 22001 ] || fail "a 3 kB aggregate id from a hub_writer: $got, want 22001"
got=$(q "SELECT public.sqlstate_of(\$\$UPDATE hub.endpoints SET max_concurrency = 268435456 WHERE name = 'extreme'\$\$)
		 || ' ' || public.sqlstate_of(\$\$UPDATE hub.endpoints SET rate_limit = 'NaN' WHERE name = 'extreme'\$\$)
		 || ' ' || public.sqlstate_of(\$\$SELECT hub.subscribe('healthy', 'shipment.*', max_attempts => 1000000000)\$\$)")
[ "$got" = "23514 23514 22023" ] || fail "settings out of range: $got, want 23514 23514 22023"
ok "a 3 kB aggregate id, max_concurrency 268435456, rate_limit NaN and max_attempts of a billion are refused where they enter"

# the extreme endpoint fails; its delivery is pushed to attempt 990 and retried
eid=$(push_publish extreme X-1)
must_wait "SELECT attempts >= 1 AND state = 'retry_wait' FROM hub.deliveries WHERE event_id = '$eid'" 30 \
	"extreme: the first attempt was not recorded"
q "UPDATE hub.deliveries SET attempts = 990, next_attempt_at = now() WHERE event_id = '$eid'" >/dev/null

# the largest payloads allowed, and the healthy endpoint's events
pad=$(q "SELECT n FROM generate_series(1048400, 1048576) n
		 WHERE hub._payload_size(jsonb_build_object('order_id', 'B-00', 't', 'big', 'pad', repeat('x', n))) <= 1048576
		 ORDER BY n DESC LIMIT 1")
q "SELECT hub.publish('order.created', 'B-' || lpad(i::text, 2, '0'),
				   jsonb_build_object('order_id', 'B-' || lpad(i::text, 2, '0'), 't', 'big', 'pad', repeat('x', $pad)))
   FROM generate_series(1, 10) i" >/dev/null
q "SELECT hub.publish('order.created', 'H-' || i, jsonb_build_object('order_id', 'H-' || i, 't', 'healthy'))
   FROM generate_series(1, 20) i" >/dev/null

must_wait "SELECT attempts >= 991 AND state = 'retry_wait' FROM hub.deliveries WHERE event_id = '$eid'" 30 \
	"extreme: the failure at attempt 991 was not recorded"
got=$(q "SELECT next_attempt_at <= now() + interval '7 days' FROM hub.deliveries WHERE event_id = '$eid'")
[ "$got" = t ] || fail "extreme: the backoff at attempt 991 is beyond retry_max"
ok "an endpoint at the ends of every range fails at attempt 991 into a backoff within retry_max (7 days)"

for ep in healthy big; do
	must_wait "SELECT count(*) FILTER (WHERE d.state = 'delivered') = count(*) AND count(*) > 0 FROM hub.deliveries d
			   JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = '$ep'" 60 "$ep: not everything delivered"
done
got=$(recv "
h = [e for e in E if 'ep=healthy' in e['path']]
b = [e for e in E if 'ep=big' in e['path']]
print(len(h), len(b), min(len(e['body']) for e in b) > 1000000)")
[ "$got" = "20 10 True" ] || fail "receiver got (healthy, big, big bodies over 1,000,000 bytes): $got, want 20 10 True"
ok "the healthy endpoint got its 20 events, and the ten 1 MB payloads arrived whole with a 2 MB claim budget"

push_finish
