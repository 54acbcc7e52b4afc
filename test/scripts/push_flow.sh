#!/usr/bin/env bash
# test/scripts/push_flow.sh --- live push: how deliveries flow over time.
#   - ordering per key: while one aggregate's head keeps failing
#     (fail-aggregate), its later events are not sent, and the other
#     aggregates' events all arrive, in order; once healed, the failing
#     aggregate's events arrive in order, each later one only after the
#     earlier one was delivered
#     (with the default circuit threshold: one failing key never opens it)
#   - circuit breaker: once N distinct keys have failed the circuit opens (in
#     hub.sync_status); deliveries wait without spending attempts and another
#     endpoint is served meanwhile; after the cool-off exactly one probe; the
#     circuit closes and everything is delivered once the receiver heals
#   - rate limit: in the receiver's arrival times no 1-second window holds
#     more than rate_limit requests
#   - wake-up at commit, with logistics_hub.poll_interval = 60s: an event
#     published in an open transaction is not received before COMMIT (the
#     dispatcher is even woken and claims meanwhile), arrives soon after it
#     (latency printed), and a rolled-back one never arrives
source test/receiver/push_lib.sh
push_setup push-flow 112 "logistics_hub.poll_interval = 200ms"

PUSH_SUB="retry_base => '100 ms', retry_max => '200 ms', max_attempts => 100" \
	push_endpoint ord "fail-aggregate/A?ep=ord"
PUSH_SUB="retry_base => '100 ms', retry_max => '200 ms', max_attempts => 100, ordering => 'none'" \
	push_endpoint cb "fail-prefix/CB?ep=cb" "max_concurrency => 1"
q "UPDATE hub.endpoints SET circuit_failure_threshold = 3, circuit_cooloff = '5 s' WHERE name = 'cb'"
push_endpoint cbok "ok?ep=cbok"
PUSH_SUB="ordering => 'none'" push_endpoint rate "ok?ep=rate" "rate_limit => 5"

pub() { q "SELECT hub.publish('order.created', '$2', '{\"order_id\": \"$2\", \"t\": \"$1\", \"n\": $3}')"; }

# ordering: A (failing), B and C interleaved
declare -A ORD
i=0
for k in A B A C A B C B C; do
	i=$((i + 1))
	ORD[$i]=$(pub ord $k $i)
	ORDKEY[$i]=$k
done
# all in one transaction: without the limit they would arrive at once
q "SELECT hub.publish('order.created', 'R-' || i, jsonb_build_object('order_id', 'R-' || i, 't', 'rate', 'n', i))
   FROM generate_series(1, 15) i" >/dev/null

# ---- ordering while A fails
A1=${ORD[1]}
must_wait "SELECT bool_and(state = 'delivered') FROM hub.deliveries d JOIN hub.outbox o USING (event_id)
           WHERE o.payload ->> 't' = 'ord' AND o.aggregate_id IN ('B', 'C')" 30 "B and C were not delivered while A failed"
must_wait "SELECT attempts >= 3 FROM hub.deliveries WHERE event_id = '$A1'" 30 "A's head was not retried"
got=$(q "SELECT string_agg(d.state || '/' || d.attempts, ' ' ORDER BY o.seq) FROM hub.deliveries d JOIN hub.outbox o USING (event_id)
         WHERE o.payload ->> 't' = 'ord' AND o.aggregate_id = 'A'")
case $got in "retry_wait/"*" pending/0 pending/0" | "in_flight/"*" pending/0 pending/0") ;;
*) fail "A's later events moved while its head failed: $got" ;; esac
got=$(recv "
rows = [e for e in E if 'ep=ord' in e['path']]
a = [e['headers']['webhook-id'] for e in rows if '\"aggregate_id\": \"A\"' in e['body']]
def order(k):
    seen = []
    for e in rows:
        if '\"aggregate_id\": \"%s\"' % k in e['body'] and e['headers']['webhook-id'] not in seen:
            seen.append(e['headers']['webhook-id'])
    return seen
print(set(a) == {'$A1'}, order('B') == ['${ORD[2]}', '${ORD[6]}', '${ORD[8]}'], order('C') == ['${ORD[4]}', '${ORD[7]}', '${ORD[9]}'])")
[ "$got" = "True True True" ] || fail "while A failed: only A's head sent / B in order / C in order: $got"
ok "per key: while A's head fails ($(q "SELECT attempts FROM hub.deliveries WHERE event_id = '$A1'") attempts) nothing later of A is sent; B and C all arrive, in order"
lh_receiver_control fail_A 0
must_wait "SELECT bool_and(state = 'delivered') FROM hub.deliveries d JOIN hub.outbox o USING (event_id)
           WHERE o.payload ->> 't' = 'ord'" 30 "A was not delivered after healing"
got=$(recv "
rows = [e for e in E if 'ep=ord' in e['path'] and '\"aggregate_id\": \"A\"' in e['body']]
ids = [e['headers']['webhook-id'] for e in rows]
want = ['${ORD[1]}', '${ORD[3]}', '${ORD[5]}']
# the arrival order, with repeats of a retried event folded
folded = [x for i, x in enumerate(ids) if i == 0 or ids[i - 1] != x]
print(folded == want, ids.count(want[1]), ids.count(want[2]))")
[ "$got" = "True 1 1" ] || fail "after healing, A's events did not arrive in order, once each after the previous: $got"
ok "per key: after healing A's events arrive in order, each after the previous was delivered"

# ---- circuit breaker
# four keys failing (fail-prefix/CB), published together so that the first
# try of each comes before any retry
q "SELECT hub.publish('order.created', 'CB' || i, jsonb_build_object('order_id', 'CB' || i, 't', 'cb', 'n', i))
   FROM generate_series(1, 4) i" >/dev/null
must_wait "SELECT circuit_state = 'open' FROM hub.sync_status WHERE endpoint = 'cb'" 30 "the circuit did not open"
opened1=$(q "SELECT circuit_opened_at FROM hub.endpoints WHERE name = 'cb'")
# (from the audit, not a sample: the attempts up to the opening)
spent1=$(q "SELECT count(*) FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) JOIN hub.endpoints e USING (endpoint_id)
            WHERE e.name = 'cb' AND a.outcome IN ('retry', 'dead', 'delivered') AND a.at <= '$opened1'")
OK1=$(pub cbok CB-ok 1)
must_wait "SELECT state = 'delivered' FROM hub.deliveries WHERE event_id = '$OK1'" 10 "another endpoint was not served while cb's circuit was open"
got=$(q "SELECT e.circuit_state || ' ' || (e.circuit_opened_at = '$opened1') || ' ' || e.consecutive_failures || ' ' ||
                count(*) FILTER (WHERE d.state IN ('retry_wait', 'pending'))
         FROM hub.endpoints e JOIN hub.deliveries d USING (endpoint_id) WHERE e.name = 'cb' GROUP BY e.endpoint_id")
spent=$(q "SELECT sum(d.attempts) FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'cb'")
seen=$(recv "print(sum(1 for e in E if 'ep=cb' in e['path'] and 'ep=cbok' not in e['path']))")
# The third key's failure opens the circuit: exactly 3 keys counted, and
# counting stops while it is open.  The attempts spent are not exactly 3:
# the dispatcher may start the next request of its queue (the fourth key's
# first try, or a retry of a key already counted) while a failure waits up
# to 10 ms to be recorded with others, so a few requests may go out before
# the opening is recorded; each is an attempt, recorded, counting no
# further.  Once the circuit is open nothing goes until the probe (checked
# below from the receiver's log: exactly one request between two openings).
[ "$got" = "open true 3 4" ] && [ "$spent1" -ge 3 ] && [ "$spent1" -le "$spent" ] && [ "$seen" = "$spent" ] ||
	fail "while open: state/same opening/keys counted/waiting '$got' (want 'open true 3 4'), attempts up to the opening $spent1 (want 3 or more) and in all $spent, requests $seen (want $spent): $(q "SELECT string_agg(a.delivery_id || ':' || a.attempt || ':' || a.outcome || '@' || to_char(a.at, 'SS.MS'), ' ' ORDER BY a.attempt_id) FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'cb'") opened $opened1"
ok "circuit open once 3 keys failed (hub.sync_status; $spent attempts: $((spent - 3)) started before the opening was recorded); 4 deliveries wait; another endpoint served meanwhile"
must_wait "SELECT circuit_opened_at > '$opened1' FROM hub.endpoints WHERE name = 'cb'" 30 "no probe after the cool-off"
opened2=$(q "SELECT circuit_opened_at FROM hub.endpoints WHERE name = 'cb'")
got=$(recv "
import datetime
def ts(s):
    return datetime.datetime.fromisoformat(s.replace(' ', 'T') + ('' if s[-3] == ':' else ':00')).timestamp()
o1, o2 = ts('$opened1'), ts('$opened2')
probes = [e['t'] for e in E if 'ep=cb' in e['path'] and 'ep=cbok' not in e['path'] and o1 < e['t'] < o2]
print(len(probes), all(t >= o1 + 5 for t in probes))")
[ "$got" = "1 True" ] || fail "between two openings: probes / after the cool-off: '$got', want '1 True'"
got=$(q "SELECT count(*) FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) JOIN hub.endpoints e USING (endpoint_id)
         WHERE e.name = 'cb' AND a.outcome = 'deferred' AND a.at > '$opened1'::timestamptz + interval '5 s' AND a.at < '$opened2'")
[ "$got" = 0 ] || fail "the probe was given back $got times before it went"
ok "after the cool-off exactly one probe, not given back; it failed and the circuit opened again"
lh_receiver_control fail_CB 0
must_wait "SELECT bool_and(d.state = 'delivered') AND min(e.circuit_state) = 'closed' AND min(e.consecutive_failures) = 0
           FROM hub.endpoints e JOIN hub.deliveries d USING (endpoint_id) WHERE e.name = 'cb'" 30 "cb did not recover"
ok "the receiver healed: the probe succeeded, the circuit closed, all 4 delivered"

# ---- rate limit
must_wait "SELECT bool_and(state = 'delivered') FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'rate'" 30 \
	"the rate-limited endpoint did not get everything"
# The dispatcher never starts more than rate_limit requests in any second,
# and spaces them by 1/rate;
# the receiver sees them after a loopback trip whose length varies by some
# milliseconds (a busy 2-core machine), so a window is 1 s less 100 ms here (the first requests of a burst
# open connections and arrive some ms later than those that reuse them).
got=$(recv "
t = sorted(e['t'] for e in E if 'ep=rate' in e['path'])
most = max(sum(1 for u in t if s <= u < s + 0.9) for s in t)
exact = max(sum(1 for u in t if s <= u < s + 1.0) for s in t)
print(len(t), most, exact, t[-1] - t[0] >= 2.0)")
read -r n most exact spread <<<"$got"
[ "$n" = 15 ] || fail "rate: $n requests, want 15"
# starts are also spaced by 1/rate, so even exact windows hold at most one
# more (a jittered arrival at the edge), never a second burst
[ "$most" -le 5 ] && [ "$exact" -le 6 ] && [ "$spread" = True ] || fail "rate: $most requests in one 1-second window, limit 5 (arrivals: $(recv "
t = sorted(e['t'] for e in E if 'ep=rate' in e['path'])
print(' '.join('%.3f' % (u - t[0]) for u in t))"))"
ok "rate limit 5/s: at most $most requests in any 1-second window of arrivals (less 100 ms of transport jitter; $exact in exact 1-s windows), 15 requests"
echo "   arrivals (s): $(recv "
t = sorted(e['t'] for e in E if 'ep=rate' in e['path'])
print(' '.join('%.3f' % (u - t[0]) for u in t))")"

# ---- wake-up at commit
q "ALTER SYSTEM SET logistics_hub.poll_interval = '60s'" "SELECT pg_reload_conf()" >/dev/null
must_wait "SELECT current_setting('logistics_hub.poll_interval') = '1min'" 10 "poll_interval did not change"
q "SELECT hub.wake()" >/dev/null
push_endpoint wake "ok?ep=wake"
W0=$(q "BEGIN" "SELECT hub.publish('order.created', 'W-0', '{\"order_id\": \"W-0\", \"t\": \"wake\"}')" "ROLLBACK" | head -1)
out=$(psql -X -q -A -t -v ON_ERROR_STOP=1 -d postgres <<'SQL'
BEGIN;
SELECT 'id ' || hub.publish('order.created', 'W-1', '{"order_id": "W-1", "t": "wake"}');
SELECT 'woken ' || hub.wake();
SELECT 'slept ' || pg_sleep(1);
SELECT 'before ' || extract(epoch FROM clock_timestamp());
COMMIT;
SQL
)
W1=$(sed -n 's/^id //p' <<<"$out")
before=$(sed -n 's/^before //p' <<<"$out")
[ "$(sed -n 's/^woken //p' <<<"$out")" = 1 ] || fail "hub.wake() inside the transaction did not find the dispatcher: $out"
must_wait "SELECT state = 'delivered' FROM hub.deliveries WHERE event_id = '$W1'" 15 \
	"the committed event did not arrive within 15 s (poll interval 60 s): no wake-up at commit"
got=$(recv "
t = [e['t'] for e in E if e['headers'].get('webhook-id') == '$W1']
print(len(t), min(t) > $before, round((min(t) - $before) * 1000, 1))")
read -r n later latency <<<"$got"
[ "$n" = 1 ] && [ "$later" = True ] || fail "the open transaction's event: $n arrivals, after its COMMIT: $later"
ok "wake-up at commit: not received before COMMIT (the dispatcher was woken meanwhile); received at most ${latency} ms after it (measured from the statement before COMMIT; poll interval 60 s)"
got=$(q "SELECT count(*) FROM hub.outbox WHERE aggregate_id = 'W-0'")
n=$(recv "print(sum(1 for e in E if e['headers'].get('webhook-id') == '$W0' or 'W-0' in e['body']))")
[ "$got" = 0 ] && [ "$n" = 0 ] || fail "the rolled-back event exists ($got) or arrived ($n)"
ok "a rolled-back publish never arrives"

push_finish
