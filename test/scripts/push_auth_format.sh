#!/usr/bin/env bash
# test/scripts/push_auth_format.sh --- live push: credentials and bodies.
#   - auth: bearer, basic, an API-key header; OAuth2 client credentials (the
#     token fetched from the receiver's /oauth/token with the client id and
#     secret as basic auth, cached: one token for several requests; after the
#     receiver rotates its token, the 401 makes the dispatcher fetch a new one
#     and the delivery succeeds with it; a token endpoint that hangs costs
#     one token request, bounded by the timeout, for all the endpoint's
#     queued deliveries, each recorded with its error; see
#     push_oauth_async.sh for what other endpoints do meanwhile)
#   - bodies: the canonical event JSON; CloudEvents 1.0 structured mode
#     (application/cloudevents+json with specversion, id, source, type,
#     subject, time, data); batch mode (JSON arrays of at most batch_max
#     events, every event exactly once, signed); a batch retried after a
#     failure: a webhook-id (the receivers' idempotency key) seen twice
#     always carries the same body
#   - a body over 1 MiB goes out whole
#   - a transform (configured last: while one exists the dispatcher claims
#     through hub._claim_transformed): the receiver gets the body rendered
#     from the transformed payload, signed over what it got; an event whose
#     transform raises is never sent, dead with the error recorded
source test/receiver/push_lib.sh
push_setup push-auth 113 "logistics_hub.poll_interval = 200ms"

S1=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
PUSH_SUB="retry_base => '100 ms', retry_max => '200 ms', max_attempts => 5"
push_endpoint bearer "ok?ep=bearer" "auth_kind => 'bearer'" "auth_secret => 'tok-bearer-1'"
push_endpoint basic "ok?ep=basic" "auth_kind => 'basic'" "auth_secret => 'alice:s3cret'"
push_endpoint apikey "ok?ep=apikey" "auth_kind => 'api_key'" "api_key_header => 'X-Api-Key'" "auth_secret => 'k-123'"
push_endpoint oauth "oauth/api?ep=oauth" "auth_kind => 'oauth2'" "oauth2_token_url => '$RECV_URL/oauth/token'" \
	"oauth2_client_id => 'hub'" "oauth2_client_secret => 'hub-secret'"
# a token endpoint that hangs: one token request fails the whole queue
PUSH_SUB="max_attempts => 1, ordering => 'none'" push_endpoint oauthdown "ok?ep=oauthdown" "timeout_ms => 1000" \
	"auth_kind => 'oauth2'" "oauth2_token_url => '$RECV_URL/hang?ep=tokhang'" "oauth2_client_id => 'hub'" "oauth2_client_secret => 'x'"
# a token endpoint that answers 200 with junk instead of JSON
PUSH_SUB="max_attempts => 1" push_endpoint oauthjunk "ok?ep=oauthjunk" "timeout_ms => 1000" \
	"auth_kind => 'oauth2'" "oauth2_token_url => '$RECV_URL/garbage?status=200&ep=tokjunk'" "oauth2_client_id => 'hub'" "oauth2_client_secret => 'x'"
PUSH_SUB="body_format => 'cloudevents'" push_endpoint ce "ok?ep=ce"
PUSH_SUB="body_format => 'batch', batch_max => 3, ordering => 'none'" push_endpoint batch "ok?ep=batch" "signing_secret => '$S1'"
PUSH_SUB="body_format => 'batch', batch_max => 3, ordering => 'none', retry_base => '1 s', retry_max => '1 s', max_attempts => 20" \
	push_endpoint batchretry "fail-first/1/500?ep=batchretry"
# every event of a failed batch counts as a failure for the circuit breaker
# (so one failed batch of 5 would open it); not what is tested here
q "UPDATE hub.endpoints SET circuit_failure_threshold = 1000 WHERE name = 'batchretry'"

declare -A EV
for ep in bearer basic apikey ce; do EV[$ep]=$(push_publish $ep "SO-$ep"); done
for i in 1 2 3; do EV[oauth$i]=$(push_publish oauth "SO-oauth-$i"); done
q "SELECT hub.publish('order.created', 'SO-b' || i, jsonb_build_object('order_id', 'SO-b' || i, 't', 'batch'))
   FROM generate_series(1, 7) i" >/dev/null
q "SELECT hub.publish('order.created', 'SO-r' || i, jsonb_build_object('order_id', 'SO-r' || i, 't', 'batchretry'))
   FROM generate_series(1, 6) i" >/dev/null

EV[oauthjunk]=$(push_publish oauthjunk SO-oauthjunk)
# and five more in one transaction: queued together, they wait for one
# token request and fail with it
q "SELECT hub.publish('order.created', 'SO-j' || i, jsonb_build_object('order_id', 'SO-j' || i, 't', 'oauthjunk'))
   FROM generate_series(1, 5) i" >/dev/null
q "SELECT hub.publish('order.created', 'SO-d' || i, jsonb_build_object('order_id', 'SO-d' || i, 't', 'oauthdown'))
   FROM generate_series(1, 4) i" >/dev/null

delivered() { echo "SELECT bool_and(state = 'delivered') FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = '$1'"; }
for ep in bearer basic apikey oauth ce batch batchretry; do must_wait "$(delivered $ep)" 30 "$ep: not everything delivered"; done

# ---- auth
hdr() { recv "print(' '.join(sorted(set(str(e['headers'].get('$2')) for e in E if 'ep=$1' in e['path']))))"; }
[ "$(hdr bearer authorization)" = "Bearer tok-bearer-1" ] || fail "bearer: Authorization '$(hdr bearer authorization)'"
[ "$(hdr basic authorization)" = "Basic $(printf 'alice:s3cret' | base64)" ] || fail "basic: Authorization '$(hdr basic authorization)'"
[ "$(hdr apikey x-api-key)" = "k-123" ] && [ "$(hdr apikey authorization)" = None ] ||
	fail "api key: X-Api-Key '$(hdr apikey x-api-key)', Authorization '$(hdr apikey authorization)'"
ok "bearer, basic and API-key credentials sent as configured"
got=$(recv "
tok = [e for e in E if e['path'].startswith('/oauth/token')]
api = [e for e in E if 'ep=oauth' in e['path']]
print(len(tok), tok[0]['headers'].get('authorization') == 'Basic ' + __import__('base64').b64encode(b'hub:hub-secret').decode(),
      'grant_type=client_credentials' in tok[0]['body'], len(api), set(e['headers'].get('authorization') for e in api) == {'Bearer tok-1'})")
[ "$got" = "1 True True 3 True" ] || fail "oauth2: token requests / client auth / grant / API requests / bearer: '$got', want '1 True True 3 True'"
ok "oauth2: one token fetched with the client credentials, cached for 3 requests"
lh_receiver_control oauth_rotate
EV[oauth4]=$(push_publish oauth SO-oauth-4)
must_wait "SELECT state IN ('delivered', 'dead') FROM hub.deliveries WHERE event_id = '${EV[oauth4]}'" 30 "oauth2: no outcome after the token rotation"
got=$(q "SELECT state || ' ' || string_agg(coalesce(a.http_status::text, '-') || ':' || a.outcome, ',' ORDER BY a.attempt_id)
         FROM hub.deliveries d JOIN hub.attempts a USING (delivery_id) WHERE d.event_id = '${EV[oauth4]}' GROUP BY d.delivery_id")
case $got in "delivered "*) ;; *) fail "oauth2: after the receiver rotated its token the delivery ended '$got'" ;; esac
got=$(recv "
tok = [e for e in E if e['path'].startswith('/oauth/token')]
api = [e for e in E if 'ep=oauth' in e['path'] and e['headers'].get('webhook-id') == '${EV[oauth4]}']
print(len(tok), api[-1]['headers'].get('authorization'))")
[ "$got" = "2 Bearer tok-2" ] || fail "oauth2 refresh: token requests / last bearer '$got', want '2 Bearer tok-2'"
ok "oauth2: a 401 after the token rotated fetches a new token; delivered with it"

must_wait "SELECT bool_and(d.state = 'dead') FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'oauthdown'" 30 \
	"oauth2 with a hanging token endpoint: the deliveries did not fail"
got=$(q "SELECT count(*) || ' ' || bool_and(a.error LIKE 'oauth2 token request failed: Timeout was reached%')
         FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'oauthdown'")
n=$(recv "print(sum(1 for e in E if 'ep=tokhang' in e['path']))")
[ "$got" = "4 true" ] && [ "$n" = 1 ] ||
	fail "oauth2 with a hanging token endpoint: attempts/all the token timeout '$got' (want '4 true'), token requests $n (want 1 for the whole queue)"
ok "oauth2: a hanging token endpoint costs one (bounded) token request for the 4 queued deliveries, each recorded"

must_wait "SELECT state = 'dead' FROM hub.deliveries WHERE event_id = '${EV[oauthjunk]}'" 20 "oauth2 with a junk token answer: no outcome"
got=$(q "SELECT last_error FROM hub.deliveries WHERE event_id = '${EV[oauthjunk]}'")
[ "$got" = "oauth2 token response is not JSON with an access_token" ] || fail "oauth2 with a junk token answer: '$got'"
n=$(recv "print(sum(1 for e in E if 'ep=oauthjunk' in e['path']))")
[ "$n" = 0 ] || fail "oauth2 with a junk token answer: the API was called ($n)"
ok "oauth2: a token answer of junk is recorded, the API is not called"
must_wait "SELECT bool_and(d.state = 'dead') AND count(*) = 6 FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
		   WHERE e.name = 'oauthjunk'" 20 "oauth2 with a junk token answer: not all six dead"
got=$(q "SELECT circuit_state || ' ' || consecutive_failures FROM hub.endpoints WHERE name = 'oauthjunk'")
tokreq=$(recv "print(sum(1 for e in E if 'ep=tokjunk' in e['path']))")
# each failed token request counts once however many requests waited for it
[ "${got% *}" = closed ] && [ "${got#* }" -le "$tokreq" ] ||
	fail "oauth2 with a junk token answer: circuit '$got' after $tokreq token requests (a token failure must count once, not once per queued request)"
ok "oauth2: a failed token request counts once towards the circuit breaker ($got after $tokreq token requests for 6 deliveries)"

# ---- bodies
got=$(recv "
import json
e = [e for e in E if 'ep=bearer' in e['path']][0]
b = json.loads(e['body'])
print(e['headers']['content-type'], sorted(b), b['id'] == '${EV[bearer]}', b['type'], b['aggregate_id'], b['data'] == {'order_id': 'SO-bearer', 't': 'bearer'})")
[ "$got" = "application/json ['aggregate_id', 'contract_version', 'correlation_id', 'data', 'id', 'occurred_at', 'type'] True order.created SO-bearer True" ] ||
	fail "canonical body: $got"
ok "canonical event JSON: id, type, aggregate_id, occurred_at, correlation_id, data, contract_version"
got=$(recv "
import json, datetime
e = [e for e in E if 'ep=ce' in e['path']][0]
b = json.loads(e['body'])
t = datetime.datetime.fromisoformat(b['time'])
print(e['headers']['content-type'], b['specversion'], b['id'] == e['headers']['webhook-id'] == '${EV[ce]}', b['source'], b['type'],
      b['subject'], t.tzinfo is not None, b['data'] == {'order_id': 'SO-ce', 't': 'ce'}, b.get('datacontenttype'))")
[ "$got" = "application/cloudevents+json 1.0 True /logistics_hub order.created SO-ce True True application/json" ] ||
	fail "CloudEvents body: $got"
ok "CloudEvents 1.0 structured mode: $got"
got=$(recv "
import json
rows = [e for e in E if 'ep=batch' in e['path'] and 'batchretry' not in e['path']]
arrays = [json.loads(e['body']) for e in rows]
ids = [x['id'] for a in arrays for x in a]
print(all(isinstance(a, list) and 1 <= len(a) <= 3 for a in arrays), len(ids), len(set(ids)),
      set(e['headers']['content-type'] for e in rows) == {'application/json'}, len(rows) >= 3)")
[ "$got" = "True 7 7 True True" ] || fail "batch: arrays of 1..3 / events / distinct / content type / requests: '$got'"
want=$(q "SELECT string_agg(event_id::text, ' ' ORDER BY event_id) FROM hub.outbox WHERE payload ->> 't' = 'batch'")
got=$(recv "
import json
print(' '.join(sorted(x['id'] for e in E if 'ep=batch' in e['path'] and 'batchretry' not in e['path'] for x in json.loads(e['body']))))")
[ "$got" = "$want" ] || fail "batch: the events sent are not the events published"
lh_receiver_verify "$S1" --path ep=batch || fail "batch: a signature does not verify"
ok "batch mode: $(recv "print(len([e for e in E if 'ep=batch' in e['path'] and 'batchretry' not in e['path']]))") requests, JSON arrays of at most 3, all 7 events once, signed"
got=$(recv "
import json
rows = [e for e in E if 'ep=batchretry' in e['path']]
by = {}
for e in rows:
    by.setdefault(e['headers']['webhook-id'], set()).add(e['sha256'])
reused = [k for k, v in by.items() if len(v) > 1]
print(len(rows), len(reused))")
read -r n reused <<<"$got"
[ "$reused" = 0 ] || fail "batch retries: $reused webhook-ids were sent with different bodies ($n requests): a receiver deduplicating on the id loses events"
ok "batch retries: $n requests; every webhook-id repeated carries the same body"

# ---- a large body (above the default logistics_hub.max_payload_size of
# 1 MB, which a superuser raises for the session)
EV[big]=$(q "SET logistics_hub.max_payload_size = '4MB'" "SELECT hub.publish('order.created', 'SO-big', jsonb_build_object('order_id', 'SO-big', 't', 'bearer',
			 'lines', (SELECT jsonb_agg(jsonb_build_object('line', i, 'sku', repeat('x', 40))) FROM generate_series(1, 20000) i)))")
must_wait "SELECT state = 'delivered' FROM hub.deliveries WHERE event_id = '${EV[big]}'" 30 "large body: not delivered"
got=$(recv "
import json
e = [e for e in E if e['headers'].get('webhook-id') == '${EV[big]}'][0]
print(len(e['body']) > 1048576, len(json.loads(e['body'])['data']['lines']))")
[ "$got" = "True 20000" ] || fail "large body: over 1 MiB / lines: '$got'"
ok "a body over 1 MiB arrives whole"

# ---- a transform
q "CREATE FUNCTION public.to_erp(p jsonb) RETURNS jsonb LANGUAGE plpgsql SECURITY DEFINER AS \$\$
   BEGIN
	 IF p->>'order_id' = 'SO-xbad' THEN RAISE EXCEPTION 'no ERP mapping for %', p->>'order_id'; END IF;
	 RETURN jsonb_build_object('erp_order', p->>'order_id', 'src', 'hub');
   END \$\$" >/dev/null
PUSH_SUB="transform => 'public.to_erp', ordering => 'none', max_attempts => 1" push_endpoint xform "ok?ep=xform" \
	"signing_secret => '$S1'"
EV[xform]=$(push_publish xform SO-xform)
EV[xbad]=$(push_publish xform SO-xbad)
must_wait "SELECT bool_and(state IN ('delivered', 'dead')) AND count(*) = 2 FROM hub.deliveries d
		   JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'xform'" 30 "xform: not settled"
got=$(recv "
import json
rows = [e for e in E if 'ep=xform' in e['path']]
print(len(rows), [json.loads(e['body'])['data'] for e in rows] == [{'erp_order': 'SO-xform', 'src': 'hub'}],
      rows[0]['headers']['webhook-id'] == '${EV[xform]}')")
[ "$got" = "1 True True" ] || fail "transform: requests / transformed data / id: '$got'"
lh_receiver_verify "$S1" --path ep=xform || fail "transform: the signature does not verify"
got=$(q "SELECT d.state || ': ' || a.error FROM hub.deliveries d JOIN hub.attempts a USING (delivery_id)
		 WHERE d.event_id = '${EV[xbad]}'")
case $got in "dead: transform public.to_erp failed: no ERP mapping for SO-xbad"*) ;; *) fail "transform failure: '$got'" ;; esac
ok "transform: the receiver got the transformed payload, signed; the event whose transform raised is $got"

push_finish
