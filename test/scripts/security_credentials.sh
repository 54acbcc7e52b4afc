#!/usr/bin/env bash
# test/scripts/security_credentials.sh --- live push: credentials stay where
# they belong (issue 16).
#   - an endpoint with an API key (and one with a bearer token) and
#     allow_redirects, redirected by the receiver to a second receiver on
#     another port, and to the same port under another host name
#     (localhost): nothing reaches the other origin, the delivery fails with
#     "redirect to another origin refused"; a redirect within the origin
#     still carries the key and is delivered
#   - a redirect whose Location holds user information is not followed
#   - a receiver that echoes the request's headers: the bearer token, the
#     basic credentials (base64), the API key and the OAuth2 access token
#     are "[redacted]" in hub.attempts.response_excerpt; an excerpt cut
#     inside a secret has the secret's beginning redacted too
#   - rows that slipped past the endpoints trigger (written with it
#     disabled): a URL with user information, a fixed Content-Length header,
#     a token URL with user information; the worker refuses to send them,
#     nothing reaches the receiver
source test/receiver/push_lib.sh
push_setup sec-cred 118 "logistics_hub.poll_interval = 200ms"

# the second origin: another receiver on another port, its own log
RECV2_DIR=$LH_CLUSTER_DIR/recv2
mkdir -p "$RECV2_DIR"
: >"$RECV2_DIR/receiver.log"
python3 "$LH_RECEIVER" serve --port-file "$RECV2_DIR/receiver.port" --log "$RECV2_DIR/receiver.log" \
	>"$RECV2_DIR/receiver.out" 2>&1 &
RECV2_PID=$!
trap 'kill "$RECV2_PID" 2>/dev/null; push_cleanup' EXIT
for i in $(seq 100); do [ -s "$RECV2_DIR/receiver.port" ] && break; sleep 0.05; done
RECV2_PORT=$(cat "$RECV2_DIR/receiver.port")
[ -n "$RECV2_PORT" ] || fail "the second receiver did not start"
echo "second receiver on port $RECV2_PORT"

PUSH_SUB="max_attempts => 1"
KEY=k-leak-SECRET-0001
push_endpoint keyport "redirect?to=http://127.0.0.1:$RECV2_PORT/ok%3Fep%3Dkeyport_target&ep=keyport" \
	"allow_redirects => true" "auth_kind => 'api_key'" "api_key_header => 'X-Api-Key'" "auth_secret => '$KEY'"
push_endpoint keyhost "redirect?to=http://localhost:$RECV_PORT/ok%3Fep%3Dkeyhost_target&ep=keyhost" \
	"allow_redirects => true" "auth_kind => 'api_key'" "api_key_header => 'X-Api-Key'" "auth_secret => '$KEY'"
push_endpoint bearerport "redirect?to=http://127.0.0.1:$RECV2_PORT/ok%3Fep%3Dbearerport_target&ep=bearerport" \
	"allow_redirects => true" "auth_kind => 'bearer'" "auth_secret => 'tok-leak-SECRET-0002'"
push_endpoint keysame "redirect?to=/ok%3Fep%3Dkeysame_target&ep=keysame" \
	"allow_redirects => true" "auth_kind => 'api_key'" "api_key_header => 'X-Api-Key'" "auth_secret => '$KEY'"
push_endpoint redirui "redirect?to=http://u:pw-SECRET@127.0.0.1:$RECV_PORT/ok%3Fep%3Dredirui_target&ep=redirui" \
	"allow_redirects => true"

push_endpoint echobearer "echo-headers?ep=echobearer" "auth_kind => 'bearer'" "auth_secret => 'tok-echo-SECRET-0003'"
push_endpoint echobasic "echo-headers?ep=echobasic" "auth_kind => 'basic'" "auth_secret => 'alice:pw-echo-SECRET-0004'"
push_endpoint echokey "echo-headers?ep=echokey" "auth_kind => 'api_key'" "api_key_header => 'X-Api-Key'" \
	"auth_secret => 'key-echo-SECRET-0005'"
push_endpoint echooauth "echo-headers?ep=echooauth" "auth_kind => 'oauth2'" "oauth2_token_url => '$RECV_URL/oauth/token'" \
	"oauth2_client_id => 'hub'" "oauth2_client_secret => 'hub-secret'"
# the excerpt keeps 1024 bytes: 1010 of padding, then "Bearer tok-cut" of the
# token (redacted, the marker's 10 bytes kept whole within the 1024)
push_endpoint echocut "echo-headers?header=Authorization&pad=1010&ep=echocut" "auth_kind => 'bearer'" \
	"auth_secret => 'tok-cut-SECRET-0006'"

# rows from before the checks (written with the endpoints trigger disabled)
push_endpoint uirow "ok?ep=uirow"
push_endpoint clrow "ok?ep=clrow"
push_endpoint uitoken "ok?ep=uitoken" "auth_kind => 'oauth2'" "oauth2_token_url => '$RECV_URL/oauth/token?ep=uitoken_tok'" \
	"oauth2_client_id => 'hub'" "oauth2_client_secret => 'hub-secret'"
q "ALTER TABLE hub.endpoints DISABLE TRIGGER endpoint_check" \
	"UPDATE hub.endpoints SET url = 'http://u:pw-row-SECRET@127.0.0.1:$RECV_PORT/ok?ep=uirow' WHERE name = 'uirow'" \
	"UPDATE hub.endpoints SET headers = '{\"Content-Length\": \"0\"}' WHERE name = 'clrow'" \
	"UPDATE hub.endpoints SET oauth2_token_url = 'http://hub:pw-tok-SECRET@127.0.0.1:$RECV_PORT/oauth/token?ep=uitoken_tok' WHERE name = 'uitoken'" \
	"ALTER TABLE hub.endpoints ENABLE TRIGGER endpoint_check" >/dev/null

declare -A EV
ALL="keyport keyhost bearerport keysame redirui echobearer echobasic echokey echooauth echocut uirow clrow uitoken"
for ep in $ALL; do EV[$ep]=$(push_publish $ep "SO-$ep"); done
must_wait "SELECT count(*) = 0 FROM hub.deliveries WHERE state NOT IN ('delivered', 'dead')" 60 \
	"not every delivery came to an end"

outcome() { q "SELECT state || ' ' || coalesce(last_error, '') FROM hub.deliveries WHERE event_id = '${EV[$1]}'"; }

# ---- redirects: credentials never leave the origin
for ep in keyport keyhost bearerport; do
	got=$(outcome $ep)
	case $got in
	"dead redirect to another origin refused"*) ok "$ep: $got" ;;
	*) fail "$ep: '$got', want dead with 'redirect to another origin refused'" ;;
	esac
done
n=$(python3 -c "import sys; print(sum(1 for l in open(sys.argv[1]) if l.strip()))" "$RECV2_DIR/receiver.log")
[ "$n" = 0 ] || fail "the receiver on the other port got $n requests: $(cat "$RECV2_DIR/receiver.log")"
# (at the first receiver: only the endpoints' own /redirect requests and the
# same-origin target may carry the key; the other targets get nothing)
n=$(recv "print(sum(1 for e in E if e['path'].startswith('/ok') and
                  ('keyhost_target' in e['path'] or ('$KEY' in json.dumps(e['headers']) and 'keysame_target' not in e['path']))))")
[ "$n" = 0 ] || fail "the key reached another origin or path than its own ($n requests)"
ok "redirects to another port and another host name: nothing sent there, no key anywhere else"
got=$(outcome keysame)
[ "$got" = "delivered " ] || fail "keysame: '$got', want delivered"
got=$(recv "print([e['headers'].get('x-api-key') for e in E if e['path'].startswith('/ok') and 'keysame_target' in e['path']])")
[ "$got" = "['$KEY']" ] || fail "keysame: the target within the origin got '$got'"
ok "a redirect within the endpoint's origin is followed with the key"
got=$(outcome redirui)
case $got in
"dead "*) ok "redirui: a Location with user information is not followed ($got)" ;;
*) fail "redirui: '$got', want dead" ;;
esac
n=$(recv "print(sum(1 for e in E if e['path'].startswith('/ok') and 'redirui_target' in e['path']))")
[ "$n" = 0 ] || fail "redirui: the target got $n requests"

# ---- echoed secrets are redacted from the stored excerpt
excerpt() { q "SELECT a.response_excerpt FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) WHERE d.event_id = '${EV[$1]}'"; }
for pair in echobearer:tok-echo-SECRET-0003 echobasic:pw-echo-SECRET-0004 echokey:key-echo-SECRET-0005 \
	echooauth:tok-; do
	IFS=: read -r ep secret <<<"$pair"
	[ "$(outcome $ep)" = "delivered " ] || fail "$ep: '$(outcome $ep)', want delivered"
	got=$(excerpt $ep)
	sent=$(recv "print(sum(1 for e in E if 'ep=$ep' in e['path'] and '$secret' in json.dumps(e['headers'])))")
	[ "$ep" = echobasic ] && sent=$(recv "print(sum(1 for e in E if 'ep=$ep' in e['path'] and e['headers'].get('authorization') == 'Basic ' + __import__('base64').b64encode(b'alice:$secret').decode()))")
	[ "$sent" = 1 ] || fail "$ep: the receiver did not get the credential ($sent)"
	case $got in
	*"$secret"* | *"$(printf 'alice:%s' "$secret" | base64 -w0)"*) fail "$ep: the excerpt holds the secret: $got" ;;
	*"[redacted]"*) ok "$ep: redacted: $(printf '%.160s' "$got")" ;;
	*) fail "$ep: nothing redacted in '$got'" ;;
	esac
done
got=$(excerpt echocut)
case $got in
*tok-cut*) fail "echocut: the beginning of the token is in the excerpt: ...${got: -40}" ;;
*"Bear"*"[redacted]") ok "echocut: an excerpt cut inside the token ends '...${got: -20}' (the marker whole, within 1024 bytes)" ;;
*) fail "echocut: '...${got: -40}'" ;;
esac
n=$(q "SELECT count(*) FROM hub.attempts WHERE response_excerpt ~ '(SECRET|tok-[0-9])' OR error ~ 'SECRET'")
[ "$n" = 0 ] || fail "$n attempts hold a secret"
ok "no attempt row holds a secret"

# ---- rows that slipped past the trigger
got=$(outcome uirow)
[ "$got" = "dead refused to send: the endpoint URL holds user information; credentials belong in auth_kind and auth_secret" ] ||
	fail "uirow: '$got'"
ok "uirow: $got"
got=$(outcome clrow)
[ "$got" = 'dead refused to send: header "Content-Length" cannot be a fixed endpoint header' ] || fail "clrow: '$got'"
ok "clrow: $got"
got=$(outcome uitoken)
[ "$got" = "dead oauth2: the token URL holds user information; the client credentials belong in oauth2_client_id and oauth2_client_secret" ] ||
	fail "uitoken: '$got'"
ok "uitoken: $got"
n=$(recv "print(sum(1 for e in E if 'ep=uirow' in e['path'] or 'ep=clrow' in e['path'] or 'ep=uitoken' in e['path']))")
[ "$n" = 0 ] || fail "uirow, clrow, uitoken: $n requests reached the receiver"
ok "uirow, clrow, uitoken: nothing was sent (no token request either)"

push_finish
