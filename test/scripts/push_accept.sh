#!/usr/bin/env bash
# test/scripts/push_accept.sh --- live push against the loopback receiver:
# what a receiver that answers sees, and what every answer does.
#   - 2xx: delivered; webhook-id and Idempotency-Key (quoted) are the event id; the
#     Standard Webhooks signature verifies with Python's hmac over the logged
#     bytes (non-ASCII payload); during key rotation one signature per secret
#   - 500 / 503 then 200 (fail-first): retried with the same webhook-id and
#     the same body, then delivered
#   - 429 with Retry-After in seconds and 503 with Retry-After as an HTTP date:
#     the next attempt is not before it (hub.deliveries, hub.attempts and the
#     receiver's arrival times agree)
#   - proxies in the server's environment are ignored
#   - 400 dead at once; 410 retried with retry_on_4xx; 500 until max_attempts:
#     dead with the last status, error and response excerpt kept
#   - hub.replay of a dead delivery once the receiver is healed: delivered
#     with the same webhook-id, and audited in hub.operator_audit
# One cluster, one endpoint per behaviour, everything in flight at once.
source test/receiver/push_lib.sh
# proxies in the server's environment are ignored (CURLOPT_PROXY ""): were
# they used, nothing here would arrive
export http_proxy=http://127.0.0.1:9/ https_proxy=http://127.0.0.1:9/ ALL_PROXY=http://127.0.0.1:9/
push_setup push-accept 110 "logistics_hub.poll_interval = 200ms"

S1=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
S2=whsec_bG9naXN0aWNzLWh1Yi1rZXktdHdvLTIwMjYh
PUSH_SUB="retry_base => '100 ms', retry_max => '300 ms'"
push_endpoint acc "ok?ep=acc" "signing_secret => '$S1'"
push_endpoint rot "ok?ep=rot" "signing_secret => '$S1'"
# rotation: the new secret first, the old one still signed with
q "SELECT hub.rotate_signing_secret('rot', '$S2')" >/dev/null
push_endpoint ff500 "fail-first/2/500?ep=ff500"
push_endpoint ff503 "fail-first/1/503?ep=ff503"
PUSH_SUB="retry_base => '100 ms', retry_max => '300 ms', max_attempts => 2" \
	push_endpoint r429 "status/429?retry_after=3&ep=r429"
# Retry-After: an HTTP date 4 s after the receiver's answer
PUSH_SUB="retry_base => '100 ms', retry_max => '300 ms', max_attempts => 2" \
	push_endpoint r503 "status/503?retry_after_date=4&ep=r503"
PUSH_SUB="max_attempts => 5" push_endpoint s400 "status/400?ep=s400"
PUSH_SUB="retry_base => '100 ms', retry_max => '300 ms', max_attempts => 3, retry_on_4xx => true" \
	push_endpoint s410 "status/410?ep=s410"
PUSH_SUB="retry_base => '100 ms', retry_max => '300 ms', max_attempts => 3" \
	push_endpoint s500 "status/500?ep=s500"
PUSH_SUB="retry_base => '100 ms', retry_max => '300 ms', max_attempts => 2" \
	push_endpoint replay "fail-aggregate/RP?ep=replay"

# events: three for acc (one with non-ASCII text), one for each other endpoint
A1=$(q "SELECT hub.publish('order.created', 'SO-A1', '{\"order_id\": \"SO-A1\", \"t\": \"acc\", \"note\": \"Müller → Zürich ✓\"}')")
A2=$(push_publish acc SO-A2)
A3=$(push_publish acc SO-A3)
ROT=$(push_publish rot SO-R1)
FF500=$(push_publish ff500 SO-F1)
FF503=$(push_publish ff503 SO-F2)
S400=$(push_publish s400 SO-B1)
S410=$(push_publish s410 SO-G1)
S500=$(push_publish s500 SO-M1)
RP=$(push_publish replay RP)
# last, so that their first answer is still fresh when looked at
R429=$(push_publish r429 SO-T1)
R503=$(push_publish r503 SO-T2)

state_is() { echo "SELECT state = '$2' FROM hub.deliveries d JOIN hub.outbox o USING (event_id) WHERE o.event_id = '$1'"; }

# ---- Retry-After, while the first answer is fresh: next_attempt_at
must_wait "SELECT state = 'retry_wait' AND attempts = 1 FROM hub.deliveries WHERE event_id = '$R429'" 20 "429: no first attempt"
got=$(q "SELECT d.next_attempt_at >= a.at + interval '3 s' FROM hub.deliveries d JOIN hub.attempts a USING (delivery_id)
         WHERE d.event_id = '$R429' AND a.attempt = 1")
[ "$got" = t ] || fail "429 Retry-After: 3: next_attempt_at is sooner ($got)"
must_wait "SELECT state = 'retry_wait' AND attempts = 1 FROM hub.deliveries WHERE event_id = '$R503'" 20 "503: no first attempt"
# the date the receiver sent is no earlier than its first arrival + 4 s, rounded down
ra_epoch=$(recv "print(int(min(e['t'] for e in E if 'ep=r503' in e['path']) + 4))")
got=$(q "SELECT next_attempt_at >= to_timestamp($ra_epoch) FROM hub.deliveries WHERE event_id = '$R503'")
[ "$got" = t ] || fail "503 Retry-After as an HTTP date: next_attempt_at is sooner than $(date -u -d @$ra_epoch) ($got)"

# ---- accepted, signed
for e in $A1 $A2 $A3 $ROT; do must_wait "$(state_is "$e" delivered)" 20 "event $e was not delivered"; done
got=$(recv "
import sys
want = set('$A1 $A2 $A3'.split())
rows = [e for e in E if 'ep=acc' in e['path']]
ids = set(e['headers'].get('webhook-id') for e in rows)
# Idempotency-Key is a structured-field string (the IETF draft): quoted
keys = set(e['headers'].get('idempotency-key', '').strip(chr(34)) for e in rows)
bad = [e for e in rows if chr(34) + e['headers'].get('webhook-id') + chr(34) != e['headers'].get('idempotency-key')
       or e['headers'].get('content-type') != 'application/json'
       or __import__('json').loads(e['body'])['id'] != e['headers'].get('webhook-id')
       or abs(int(e['headers']['webhook-timestamp']) - e['t']) > 60]
print(ids == want and keys == want and not bad and len(rows) == 3)
")
[ "$got" = True ] || fail "acc: webhook-id / Idempotency-Key / body id / timestamp are not the event ids ($got)"
ok "2xx delivered; webhook-id = Idempotency-Key = body id = event id; timestamp current"
lh_receiver_verify "$S1" --path ep=acc || fail "acc: a signature does not verify"
lh_receiver_verify "$S1" --path ep=rot || fail "rot: no signature with the old secret"
lh_receiver_verify "$S2" --path ep=rot || fail "rot: no signature with the new secret"
lh_receiver_verify "$S1" --secret "$S2" --path ep=rot || fail "rot: not both secrets signed"
! lh_receiver_verify "$S2" --path ep=acc >/dev/null 2>&1 || fail "acc verifies with a secret it does not have: the verifier proves nothing"
n=$(recv "print(max(len(e['headers']['webhook-signature'].split()) for e in E if 'ep=rot' in e['path']))")
[ "$n" = 2 ] || fail "rot: $n signatures in the header, want 2"
ok "signatures verify over the exact bytes received (non-ASCII body); key rotation sends one per secret"

# ---- retried, then delivered with the same webhook-id and body
must_wait "$(state_is "$FF500" delivered)" 20 "500-then-200 was not delivered"
must_wait "$(state_is "$FF503" delivered)" 20 "503-then-200 was not delivered"
for pair in "ff500:$FF500:3" "ff503:$FF503:2"; do
	IFS=: read -r ep ev n <<<"$pair"
	got=$(recv "
rows = [e for e in E if 'ep=$ep' in e['path']]
print(len(rows), len(set(e['headers']['webhook-id'] for e in rows)), len(set(e['sha256'] for e in rows)),
      rows[0]['headers']['webhook-id'] == '$ev')")
	[ "$got" = "$n 1 1 True" ] || fail "$ep: requests / distinct ids / distinct bodies / id: '$got', want '$n 1 1 True'"
	got=$(q "SELECT d.attempts || ' ' || string_agg(coalesce(a.http_status::text, '-') || a.outcome, ',' ORDER BY a.attempt_id)
	         FROM hub.deliveries d JOIN hub.attempts a USING (delivery_id) WHERE d.event_id = '$ev' GROUP BY d.attempts")
	case $ep in
	ff500) want="3 500retry,500retry,200delivered" ;;
	ff503) want="2 503retry,200delivered" ;;
	esac
	[ "$got" = "$want" ] || fail "$ep: attempts '$got', want '$want'"
done
ok "500 and 503 retried with the same webhook-id and body, then delivered; every attempt audited"

# ---- Retry-After honoured (seconds and HTTP date)
must_wait "$(state_is "$R429" dead)" 30 "429 did not end dead after 2 attempts"
must_wait "$(state_is "$R503" dead)" 30 "503 did not end dead after 2 attempts"
got=$(q "SELECT bool_and(a2.at >= a1.at + interval '3 s') AND count(*) = 1
         FROM hub.deliveries d JOIN hub.attempts a1 ON a1.delivery_id = d.delivery_id AND a1.attempt = 1
         JOIN hub.attempts a2 ON a2.delivery_id = d.delivery_id AND a2.attempt = 2
         WHERE d.event_id = '$R429' AND a1.http_status = 429 AND a2.http_status = 429")
[ "$got" = t ] || fail "429 Retry-After: 3 s not honoured between attempts 1 and 2 ($got)"
got=$(recv "
rows = sorted(e['t'] for e in E if 'ep=r429' in e['path'])
print(len(rows) == 2 and rows[1] - rows[0] >= 3.0)")
[ "$got" = True ] || fail "429 Retry-After: the receiver saw the retry too early"
got=$(q "SELECT a2.at >= to_timestamp($ra_epoch) AND a1.http_status = 503 AND a2.http_status = 503
         FROM hub.deliveries d JOIN hub.attempts a1 ON a1.delivery_id = d.delivery_id AND a1.attempt = 1
         JOIN hub.attempts a2 ON a2.delivery_id = d.delivery_id AND a2.attempt = 2 WHERE d.event_id = '$R503'")
[ "$got" = t ] || fail "503 Retry-After as an HTTP date: second attempt too early ($got)"
got=$(recv "
rows = sorted(e['t'] for e in E if 'ep=r503' in e['path'])
print(len(rows) == 2 and rows[1] >= $ra_epoch)")
[ "$got" = True ] || fail "503 Retry-After date: the receiver saw the retry too early"
ok "Retry-After honoured: 429 with seconds, 503 with an HTTP date"

# ---- 4xx and max_attempts
must_wait "$(state_is "$S400" dead)" 20 "400 is not dead"
must_wait "$(state_is "$S410" dead)" 20 "410 with retry_on_4xx did not end dead"
must_wait "$(state_is "$S500" dead)" 20 "500 did not end dead after max_attempts"
got=$(q "SELECT string_agg(o.aggregate_id || ':' || d.attempts || ':' || d.last_http_status || ':' || (d.last_error LIKE d.last_http_status || ' %'), ' ' ORDER BY o.aggregate_id)
         FROM hub.deliveries d JOIN hub.outbox o USING (event_id) WHERE d.event_id IN ('$S400', '$S410', '$S500')")
[ "$got" = "SO-B1:1:400:true SO-G1:3:410:true SO-M1:3:500:true" ] || fail "dead letters: '$got'"
got=$(q "SELECT count(*) FROM hub.dead_letters WHERE event_id IN ('$S400', '$S410', '$S500') AND last_error IS NOT NULL")
[ "$got" = 3 ] || fail "hub.dead_letters shows $got of the three"
got=$(q "SELECT response_excerpt FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) WHERE d.event_id = '$S500' AND a.attempt = 3")
[ "$got" = '{"error": "as asked"}' ] || fail "the last response excerpt is '$got'"
n=$(recv "print(sum(1 for e in E if 'ep=s400' in e['path']))")
[ "$n" = 1 ] || fail "400: the receiver got $n requests, want 1"
ok "400 dead at once; 410 retried with retry_on_4xx; 500 dead after max_attempts; last status, error and excerpt kept"

# ---- replay once the receiver is healed
must_wait "$(state_is "$RP" dead)" 20 "the failing delivery did not end dead"
lh_receiver_control fail_RP 0
id=$(q "SELECT delivery_id FROM hub.deliveries WHERE event_id = '$RP'")
q "SELECT hub.replay($id::bigint, 'receiver fixed')" >/dev/null
must_wait "$(state_is "$RP" delivered)" 20 "the replayed delivery was not delivered"
got=$(recv "
rows = [e for e in E if 'ep=replay' in e['path']]
print(len(rows), set(e['headers']['webhook-id'] for e in rows) == {'$RP'}, len(set(e['sha256'] for e in rows)))")
[ "$got" = "3 True 1" ] || fail "replay: requests / same id / bodies: '$got', want '3 True 1'"
got=$(q "SELECT count(*) FROM hub.operator_audit WHERE action = 'replay' AND target = '$id' AND reason = 'receiver fixed' AND actor = 'postgres'")
[ "$got" = 1 ] || fail "the replay is not in hub.operator_audit"
ok "a dead delivery replayed after the receiver healed: delivered with the same webhook-id; audited"

push_finish
