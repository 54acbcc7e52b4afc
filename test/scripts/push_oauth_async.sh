#!/usr/bin/env bash
# test/scripts/push_oauth_async.sh --- live push: OAuth2 token requests run
# on the dispatcher's multi handle like any request, so one endpoint's token
# trouble holds up only that endpoint.  One dispatcher serves all of:
#   - a token URL that hangs (timeout 30 s): events of a plain endpoint
#     published meanwhile are all delivered within 5 s; the OAuth2
#     endpoint's deliveries wait in its queue with no attempt recorded and a
#     single token request; once the token URL is fixed they are delivered
#     within seconds (the hung request is dropped when the new URL is read,
#     not waited for), each with exactly one attempt
#   - a slow token URL (answers after 3 s): one token request for the 12
#     deliveries queued behind it, the plain endpoint's events delivered
#     before the token came; all 12 sent with that one token
#   - a token the receiver rotated: the 401s of the 8 requests sent with the
#     old one cost one new token request, not one each; delivered with it
#   - a token that expires at once (expires_in 0) is still used for the
#     requests that waited for it
#   - a token URL the egress policy no longer admits: refused at connect time
#     and recorded as blocked, the receiver never reached
source test/receiver/push_lib.sh
push_setup push-oauth-async 115 "logistics_hub.poll_interval = 200ms" "logistics_hub.lease = 120"

PUSH_SUB="retry_base => '100 ms', retry_max => '200 ms', max_attempts => 5, ordering => 'none'"
push_endpoint plain "ok?ep=plain"
push_endpoint oauthhang "oauth/api?ep=oauthhang" "timeout_ms => 30000" "auth_kind => 'oauth2'" \
	"oauth2_token_url => '$RECV_URL/hang?ep=tokhang'" "oauth2_client_id => 'hub'" "oauth2_client_secret => 'hub-secret'"
push_endpoint oauthslow "oauth/api?ep=oauthslow" "auth_kind => 'oauth2'" \
	"oauth2_token_url => '$RECV_URL/oauth/token?delay=3000&ep=tokslow'" "oauth2_client_id => 'hub'" "oauth2_client_secret => 'hub-secret'"

# the 401s of the rotation below must not open the circuit (not tested here)
q "UPDATE hub.endpoints SET circuit_failure_threshold = 1000 WHERE name = 'oauthslow'"

# publish_n ENDPOINT N PREFIX --- N events for ENDPOINT, order ids PREFIX-1..N
publish_n() {
	q "SELECT count(hub.publish('order.created', '$3-' || i, jsonb_build_object('order_id', '$3-' || i, 't', '$1')))
	   FROM generate_series(1, $2) i" >/dev/null
}
hits() { recv "print(sum(1 for e in E if 'ep=$1' in e['path']))"; }
state_of() {
	q "SELECT coalesce(string_agg(d.state || ':' || d.attempts, ',' ORDER BY d.delivery_id), '') || ' rows=' ||
	          (SELECT count(*) FROM hub.attempts a JOIN hub.deliveries x USING (delivery_id) JOIN hub.endpoints y USING (endpoint_id) WHERE y.name = '$1')
	   FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = '$1'"
}
delivered() { echo "SELECT count(*) = $2 AND bool_and(state = 'delivered') FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = '$1'"; }

# ---- a token URL that hangs
publish_n oauthhang 5 H
for i in $(seq 100); do [ "$(hits tokhang)" -ge 1 ] && break; sleep 0.1; done
[ "$(hits tokhang)" = 1 ] || fail "hung token URL: $(hits tokhang) token requests after 10 s, want 1"
sleep 0.5
t0=$(date +%s%N)
publish_n plain 20 P
must_wait "$(delivered plain 20)" 5 \
	"hung token URL: the plain endpoint's 20 events were not delivered within 5 s (the dispatcher waits for the token)"
ms=$((($(date +%s%N) - t0) / 1000000))
[ "$(hits plain)" = 20 ] || fail "hung token URL: the plain endpoint got $(hits plain) requests, want 20"
ok "hung token URL: 20 events of another endpoint delivered in ${ms} ms while the token request hangs"
sleep 1
got=$(state_of oauthhang)
[ "$got" = "in_flight:1,in_flight:1,in_flight:1,in_flight:1,in_flight:1 rows=0" ] ||
	fail "hung token URL: the OAuth2 deliveries are '$got', want all in_flight (claimed once), no attempt recorded"
[ "$(hits tokhang)" = 1 ] && [ "$(hits oauthhang)" = 0 ] ||
	fail "hung token URL: $(hits tokhang) token requests (want 1), $(hits oauthhang) API requests (want 0)"
ok "hung token URL: the 5 OAuth2 deliveries wait in their queue, no attempt recorded, one token request"

t0=$(date +%s%N)
q "UPDATE hub.endpoints SET oauth2_token_url = '$RECV_URL/oauth/token?ep=tokfixed' WHERE name = 'oauthhang'"
must_wait "$(delivered oauthhang 5)" 10 "token URL fixed: the OAuth2 deliveries were not delivered within 10 s"
ms=$((($(date +%s%N) - t0) / 1000000))
got=$(q "SELECT count(*) || ' ' || bool_and(a.outcome = 'delivered') || ' ' || bool_and(d.attempts = 1)
         FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'oauthhang'")
[ "$got" = "5 true true" ] || fail "token URL fixed: attempts / all delivered / one attempt each: '$got', want '5 true true'"
got=$(recv "
api = [e for e in E if 'ep=oauthhang' in e['path']]
print(sum(1 for e in E if 'ep=tokfixed' in e['path']), sum(1 for e in E if 'ep=tokhang' in e['path']), len(api),
      set(e['headers'].get('authorization') for e in api) == {'Bearer tok-1'})")
[ "$got" = "1 1 5 True" ] ||
	fail "token URL fixed: new token requests / hung ones / API requests / bearer: '$got', want '1 1 5 True'"
ok "token URL fixed: the hung token request dropped, one new one; the 5 deliveries delivered ${ms} ms later with one attempt each"

# ---- a slow token URL: one token for everything queued behind it
publish_n oauthslow 12 S
for i in $(seq 100); do [ "$(hits tokslow)" -ge 1 ] && break; sleep 0.1; done
[ "$(hits tokslow)" = 1 ] || fail "slow token URL: no token request"
publish_n plain 10 P2
must_wait "$(delivered plain 30)" 10 "slow token URL: the plain endpoint's events were not delivered"
must_wait "$(delivered oauthslow 12)" 20 "slow token URL: the OAuth2 deliveries were not delivered"
got=$(recv "
api = [e for e in E if 'ep=oauthslow' in e['path']]
plain2 = [e for e in E if 'ep=plain' in e['path'] and '\"P2-' in e['body']]
print(sum(1 for e in E if 'ep=tokslow' in e['path']), len(api), set(e['headers'].get('authorization') for e in api) == {'Bearer tok-1'},
      len(plain2), max(e['t'] for e in plain2) < min(e['t'] for e in api))")
[ "$got" = "1 12 True 10 True" ] ||
	fail "slow token URL: token requests / API requests / one bearer / plain events / plain before the token: '$got', want '1 12 True 10 True'"
got=$(q "SELECT count(*) || ' ' || bool_and(a.outcome = 'delivered')
         FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'oauthslow'")
[ "$got" = "12 true" ] || fail "slow token URL: attempts / all delivered '$got', want '12 true'"
ok "slow token URL: one token request for 12 queued deliveries, all sent with it; the other endpoint flowed before the token came"

# ---- the token rotated: one new token for all the 401s
lh_receiver_control oauth_rotate
publish_n oauthslow 8 R
must_wait "$(delivered oauthslow 20)" 30 "token rotated: the OAuth2 deliveries were not delivered"
got=$(recv "
api = [e for e in E if 'ep=oauthslow' in e['path'] and '\"R-' in e['body']]
ok = [e for e in api if e['headers'].get('authorization') == 'Bearer tok-2']
print(sum(1 for e in E if 'ep=tokslow' in e['path']), len(set(e['headers']['webhook-id'] for e in ok)))")
[ "$got" = "2 8" ] || fail "token rotated: token requests / events sent with the new token '$got', want '2 8'"
got=$(q "SELECT count(*) FILTER (WHERE a.error LIKE 'HTTP 401: the OAuth2 access token was refused%') || ' ' || count(*) FILTER (WHERE a.outcome = 'delivered')
         FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) JOIN hub.outbox o USING (event_id)
         WHERE o.payload ->> 'order_id' LIKE 'R-%'")
case $got in *" 8") ;; *) fail "token rotated: 401 attempts / delivered '$got', want 8 delivered" ;; esac
ok "token rotated: $(echo "$got" | cut -d' ' -f1) requests refused with 401, one new token request, all 8 delivered with it"

# ---- a token valid for no time at all (expires_in 0): each one still
# carries the requests that waited for it
push_endpoint oauthshort "oauth/api?ep=oauthshort" "auth_kind => 'oauth2'" \
	"oauth2_token_url => '$RECV_URL/oauth/token?expires_in=0&ep=tokshort'" "oauth2_client_id => 'hub'" "oauth2_client_secret => 'x'"
publish_n oauthshort 10 T
must_wait "$(delivered oauthshort 10)" 20 "token valid for 0 s: the deliveries were not delivered (a token per pass, none used?)"
n=$(hits tokshort)
[ "$n" -ge 1 ] && [ "$n" -le 10 ] || fail "token valid for 0 s: $n token requests for 10 deliveries, want 1 to 10"
ok "token valid for 0 s: 10 deliveries delivered with $n token requests"

# ---- the egress policy applies to token requests too (checked at connect)
PUSH_SUB="max_attempts => 1" push_endpoint oauthdenied "ok?ep=oauthdenied" "auth_kind => 'oauth2'" \
	"oauth2_token_url => '$RECV_URL/oauth/token?ep=tokdenied'" "oauth2_client_id => 'hub'" "oauth2_client_secret => 'x'"
q "ALTER SYSTEM SET logistics_hub.egress_allow = 'public'" "SELECT pg_reload_conf()" >/dev/null
sleep 1
publish_n oauthdenied 1 D
must_wait "SELECT bool_and(d.state = 'dead') FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'oauthdenied'" 20 \
	"token URL outside the egress policy: no outcome"
got=$(q "SELECT d.last_error FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'oauthdenied'")
[ "$got" = "oauth2 token request blocked by egress policy: address 127.0.0.1" ] ||
	fail "token URL outside the egress policy: '$got'"
[ "$(hits tokdenied)" = 0 ] && [ "$(hits oauthdenied)" = 0 ] || fail "token URL outside the egress policy: the receiver was reached"
ok "token URL outside the egress policy (narrowed after registration): refused at connect, recorded as such"

push_finish
