#!/usr/bin/env bash
# test/scripts/push_throttle.sh --- an endpoint that asks for a pause is
# paused as a whole, for every request to it, and the pause is kept in SQL:
#   - 429 with Retry-After: 3 on the first request: the receiver gets no
#     other request to that endpoint before the three seconds are over (the
#     events published meanwhile are given back and sent after), and
#     hub.endpoints.throttled_until shows the pause
#   - a 200 with X-RateLimit-Remaining: 0 and X-RateLimit-Reset (epoch
#     seconds): delivered, and the endpoint paused until the reset
#   - 503 with X-RateLimit-Reset as delta seconds: the same
#   - a Retry-After of an hour is cut to logistics_hub.retry_after_max (5 s),
#     for the endpoint and for the delivery's own retry
#   - a throttled_until set in SQL (as another dispatcher or an earlier
#     incarnation records it) is honoured when the endpoint is loaded
#   - throttled_until changes are not audited; _throttle_endpoint refuses a
#     bad time with 22023
# What reached the receiver is counted from its own log, by its own clock.
source test/receiver/push_lib.sh
push_setup push-throttle 150 "logistics_hub.dispatcher_naptime = 100ms" "logistics_hub.retry_after_max = 5s"

PUSH_SUB="retry_base => '100 ms', retry_max => '200 ms'"
push_endpoint ra "throttle-first/1/ra?retry_after=3&ep=ra"
push_endpoint rl "throttle-first/1/rl?status=200&reset_in=4&ep=rl"
push_endpoint rd "throttle-first/1/rd?status=503&reset_in=3&reset_delta=1&ep=rd"
push_endpoint cap "throttle-first/1/cap?retry_after=3600&ep=cap"
push_endpoint pre "ok?ep=pre"

# the first request of each endpoint asks for the pause
for ep in ra rl rd cap; do push_publish $ep "$ep-1" >/dev/null; done
for ep in ra rl rd cap; do
	n=0
	for _ in $(seq 100); do
		n=$(recv "print(sum(1 for e in E if 'ep=$ep' in e['path']))")
		[ "$n" -ge 1 ] && break
		sleep 0.1
	done
	[ "$n" -ge 1 ] || fail "endpoint $ep got no first request"
done
must_wait "SELECT count(*) = 4 FROM hub.endpoints WHERE name IN ('ra', 'rl', 'rd', 'cap') AND throttled_until > now()" 10 \
	"throttled_until was not recorded for the four endpoints: $(q "SELECT string_agg(name || '=' || coalesce(throttled_until::text, 'null'), ' ') FROM hub.endpoints")"
ok "throttled_until recorded for 429 Retry-After, 200 and 503 with X-RateLimit-Reset, and a capped Retry-After"

# more events for each while paused: given back, sent once the pause ends
for ep in ra rl rd cap; do for i in 2 3 4; do push_publish $ep "$ep-$i" >/dev/null; done; done
must_wait "SELECT count(*) = 16 FROM hub.deliveries WHERE state = 'delivered'" 30 "the events were not delivered after the pauses"

# by the receiver's clock: nothing to an endpoint between its first request
# and the end of the pause it asked for (less 0.3 s for the way back)
for spec in "ra 2.7" "rl 2.7" "rd 2.7" "cap 4.7"; do
	set -- $spec
	early=$(recv "
t = sorted(e['t'] for e in E if 'ep=$1' in e['path'])
print(sum(1 for x in t[1:] if x < t[0] + $2), len(t))")
	set -- $1 $2 $early
	[ "$3" = 0 ] || fail "endpoint $1: $3 of $4 requests arrived within $2 s of the one that asked for a pause: $(recv "
t = sorted((e['t'], e['path']) for e in E if 'ep=$1' in e['path'])
print([(round(x - t[0][0], 2), p) for x, p in t])") $(q "SELECT string_agg(a.delivery_id || ':' || a.outcome || ':' || coalesce(a.http_status, 0) || '@' || a.at::time, ' ') FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = '$1'")"
	[ "$4" -ge 4 ] || fail "endpoint $1: only $4 requests arrived"
done
ok "no request reached a paused endpoint before its pause was over (receiver's clock); all sent afterwards"

# the cap: Retry-After 3600 came out at most logistics_hub.retry_after_max
got=$(q "SELECT throttled_until <= to_timestamp($(recv "print(min(e['t'] for e in E if 'ep=cap' in e['path']))")) + interval '6 s'
         FROM hub.endpoints WHERE name = 'cap'")
[ "$got" = t ] || fail "Retry-After: 3600 was not cut to retry_after_max = 5s ($(q "SELECT throttled_until FROM hub.endpoints WHERE name = 'cap'"))"
ok "a Retry-After of an hour cut to logistics_hub.retry_after_max"

# the events given back while paused failed no attempt
got=$(q "SELECT count(*) FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) JOIN hub.outbox o USING (event_id)
         WHERE a.http_status IN (429, 503) AND o.aggregate_id NOT LIKE '%-1'")
[ "$got" = 0 ] || fail "$got events published during a pause got a 429 or 503 attempt"
ok "events published during a pause were given back, not failed"

# a throttle found in SQL (another dispatcher's, or before a restart) is honoured
q "UPDATE hub.endpoints SET throttled_until = now() + interval '3 s' WHERE name = 'pre'" >/dev/null
t_set=$(q "SELECT extract(epoch FROM now())")
for i in 1 2 3; do push_publish pre "pre-$i" >/dev/null; done
must_wait "SELECT count(*) = 3 FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
           WHERE e.name = 'pre' AND d.state = 'delivered'" 30 "events of an endpoint throttled in SQL were not delivered"
early=$(recv "print(sum(1 for e in E if 'ep=pre' in e['path'] and e['t'] < $t_set + 2.8))")
[ "$early" = 0 ] || fail "$early requests reached an endpoint throttled in SQL before throttled_until"
ok "throttled_until set in SQL honoured by the dispatcher"

# not audited; bad arguments refused
got=$(q "SELECT count(*) FROM hub.operator_audit WHERE details ? 'throttled_until'")
[ "$got" = 0 ] || fail "throttled_until changes were audited ($got rows)"
got=$(q "SELECT sqlstate_of('SELECT hub._throttle_endpoint(1, now() + interval ''2 days'')') || sqlstate_of('SELECT hub._throttle_endpoint(NULL, now())')")
[ "$got" = 2202322023 ] || fail "_throttle_endpoint accepted a bad throttle ($got)"
ok "throttled_until not audited; a throttle beyond a day or without an endpoint refused with 22023"
push_finish
