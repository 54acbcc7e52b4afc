#!/usr/bin/env bash
# test/scripts/push_transport.sh --- live push against a receiver that
# misbehaves at the transport level, and the egress policy at work.  Every
# case must end as attempts recorded with the reason (never a dead worker):
#   - a delay longer than timeout_ms, a hang: timeout recorded, retried
#     (a delay shorter than the timeout is delivered)
#   - a connection reset, a body cut short: transport error recorded, retried
#     (and delivered with the same id and body once the receiver recovers)
#   - a huge body with Content-Length and an endless chunked body: aborted
#     by logistics_hub.max_response_size, the attempt says so
#   - a drip (1 byte/s): the low-speed abort, not the total timeout
#   - an answer of binary junk (NULs, invalid UTF-8), a malformed status
#     line, undefined codes (599 fails, 299 succeeds): recorded
#   - redirects: off by default (a 302 is then an ordinary non-2xx outcome
#     and the target is never asked), followed (POST kept, same body and id)
#     when the endpoint allows them, refused to file://, blocked by the
#     egress policy to 127.0.0.2, stopped after 5 in a loop
#   - a header value with CR LF, a signing secret that is not base64, both
#     written around the registration checks: refused before anything is sent
#   - egress: with logistics_hub.egress_allow = 'public, localhost' an
#     address URL is refused at registration (22023), a listed name that
#     resolves to 127.0.0.1 is blocked at connect time, and so is an
#     endpoint registered before the policy changed (even over a kept-alive
#     connection); with '127.0.0.1' alone, a name is refused at registration
source test/receiver/push_lib.sh
push_setup push-transport 111 "logistics_hub.poll_interval = 200ms"

PUSH_SUB="retry_base => '100 ms', retry_max => '200 ms', max_attempts => 2"
push_endpoint delay "delay/3000?ep=delay" "timeout_ms => 1000"
push_endpoint fast "delay/100?ep=fast" "timeout_ms => 2000"
push_endpoint hang "hang?ep=hang" "timeout_ms => 1000"
push_endpoint reset "reset?ep=reset" "timeout_ms => 2000"
push_endpoint closemid "close-mid-body?ep=closemid" "timeout_ms => 2000"
push_endpoint huge "huge?ep=huge" "timeout_ms => 5000"
push_endpoint endless "endless?ep=endless" "timeout_ms => 5000"
# (curl's speed is averaged over up to 5 s and counts the uploaded body, so
# the low-speed abort, set to half the timeout, comes some seconds after
# that; a 10 s timeout leaves it room to come first)
PUSH_SUB="max_attempts => 1" push_endpoint drip "drip?ep=drip" "timeout_ms => 10000"
push_endpoint redir_off "redirect?to=/ok%3Fep%3Dredir_off_target&ep=redir_off" "timeout_ms => 2000"
push_endpoint redir_on "redirect?to=/ok%3Fep%3Dredir_on_target&ep=redir_on" "timeout_ms => 2000" "allow_redirects => true"
push_endpoint redir_file "redirect?to=file:///etc/passwd&ep=redir_file" "timeout_ms => 2000" "allow_redirects => true"
push_endpoint redir_deny "redirect?to=http://127.0.0.2:$RECV_PORT/ok%3Fep%3Dredir_deny_target&ep=redir_deny" \
	"timeout_ms => 2000" "allow_redirects => true"
push_endpoint redir_loop "redirect-loop?ep=redir_loop" "timeout_ms => 2000" "allow_redirects => true"
push_endpoint crlf "ok?ep=crlf" "timeout_ms => 2000" "headers => '{\"X-Tenant\": \"a\"}'"
push_endpoint early "ok?ep=early" "timeout_ms => 2000"
push_endpoint garbage "garbage?ep=garbage" "timeout_ms => 2000"
push_endpoint badsecret "ok?ep=badsecret" "timeout_ms => 2000"
# a signing secret that is not base64, written (sealed) around create_endpoint's check
q "UPDATE hub._endpoint_secrets SET signing_secrets = ARRAY[hub._seal(endpoint_id, 'signing_secrets', 'whsec_%%%')]
   WHERE endpoint_id = (SELECT endpoint_id FROM hub.endpoints WHERE name = 'badsecret')"
push_endpoint badstatus "badstatus?ep=badstatus" "timeout_ms => 2000"
push_endpoint s599 "status/599?ep=s599" "timeout_ms => 2000"
push_endpoint s299 "status/299?ep=s299" "timeout_ms => 2000"
# a receiver that crashes mid-response, then recovers
# (8 resets: libcurl itself sends a request again, up to 5 times, when a
# kept-alive connection dies before any answer, so one attempt may meet
# several of them)
PUSH_SUB="retry_base => '100 ms', retry_max => '200 ms', max_attempts => 12" \
	push_endpoint c8reset "fail-first/8/reset?ep=c8reset" "timeout_ms => 2000"
q "UPDATE hub.endpoints SET circuit_failure_threshold = 100 WHERE name = 'c8reset'"
PUSH_SUB="retry_base => '100 ms', retry_max => '200 ms', max_attempts => 5" \
	push_endpoint c8close "fail-first/2/close-mid-body?ep=c8close" "timeout_ms => 2000"
# a header value with CR LF, written around the registration check (as a
# restore or an old row could): the dispatcher must still refuse to send it
q "SET session_replication_role = replica" \
  "UPDATE hub.endpoints SET headers = '{\"X-Tenant\": \"a\\r\\nX-Injected: 1\"}' WHERE name = 'crlf'" \
  "SET session_replication_role = origin"
got=$(q "SELECT headers ->> 'X-Tenant' ~ E'\\r\\n' FROM hub.endpoints WHERE name = 'crlf'")
[ "$got" = t ] || fail "the CR LF header could not be planted ($got)"

declare -A EV
for ep in delay fast hang reset closemid huge endless drip redir_off redir_on redir_file redir_deny redir_loop crlf early c8reset c8close garbage badstatus s599 s299 badsecret; do
	EV[$ep]=$(push_publish $ep "SO-$ep")
done

final() { echo "SELECT state IN ('delivered', 'dead') FROM hub.deliveries WHERE event_id = '${EV[$1]}'"; }
for ep in "${!EV[@]}"; do must_wait "$(final "$ep")" 30 "$ep: no final state"; done

# check_attempts EP STATE LIKE --- the delivery ended in STATE after two
# attempts, and every failed attempt has no HTTP status and an error LIKE
check_attempts() {
	local ep=$1 state=$2 like=$3 got
	got=$(q "SELECT d.state || ' ' || d.attempts || ' ' ||
	                bool_and(a.http_status IS NULL AND a.error LIKE '$like') || ' ' ||
	                string_agg(a.outcome, ',' ORDER BY a.attempt_id)
	         FROM hub.deliveries d JOIN hub.attempts a USING (delivery_id)
	         WHERE d.event_id = '${EV[$ep]}' GROUP BY d.delivery_id")
	[ "$got" = "$state 2 true retry,dead" ] ||
		fail "$ep: '$got', want '$state 2 true retry,dead' (errors: $(q "SELECT string_agg(error, ' | ') FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) WHERE d.event_id = '${EV[$ep]}'"))"
	ok "$ep: $(q "SELECT error FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) WHERE d.event_id = '${EV[$ep]}' ORDER BY attempt_id LIMIT 1")"
}

check_attempts delay dead 'Timeout was reached%'
check_attempts hang dead 'Timeout was reached%'
got=$(q "SELECT state || ' ' || attempts FROM hub.deliveries WHERE event_id = '${EV[fast]}'")
[ "$got" = "delivered 1" ] || fail "fast: a delay shorter than the timeout gave '$got'"
ok "fast: a delay within the timeout is delivered"
check_attempts reset dead '%'
check_attempts closemid dead '%partial%'
check_attempts huge dead 'response larger than 65536 bytes'
check_attempts endless dead 'response larger than 65536 bytes'
got=$(q "SELECT d.state || ' ' || d.attempts || ' ' || a.outcome || ' ' || (a.http_status IS NULL) || ' ' || a.error
         FROM hub.deliveries d JOIN hub.attempts a USING (delivery_id) WHERE d.event_id = '${EV[drip]}'")
case $got in
"dead 1 dead true Timeout was reached: Operation too slow."*) ok "drip: $got" ;;
*) fail "drip: not the low-speed abort: '$got'" ;;
esac
check_attempts redir_file dead '%rotocol%'
check_attempts redir_deny dead 'blocked by egress policy: address 127.0.0.2'
check_attempts redir_loop dead '%redirect%'
check_attempts crlf dead 'refused to send: the value of header "X-Tenant" holds CR or LF'

check_attempts badsecret dead 'a signing secret of the endpoint is not valid whsec_ base64'
n=$(recv "print(sum(1 for e in E if 'ep=crlf' in e['path'] or 'x-injected' in e['headers'] or 'ep=badsecret' in e['path']))")
[ "$n" = 0 ] || fail "crlf, badsecret: $n requests reached the receiver"
ok "crlf, badsecret: nothing was sent"
n=$(recv "print(sum(1 for e in E if 'ep=redir_loop' in e['path']))")
[ "$n" = 12 ] || fail "redir_loop: $n requests, want 12 (two attempts of 1 + 5 redirects)"
n=$(recv "print(sum(1 for e in E if e['path'].startswith('/ok') and 'target' in e['path'] and 'redir_on' not in e['path']))")
[ "$n" = 0 ] || fail "a redirect target that must not be asked was asked ($n)"

# a crash mid-response, then a healthy receiver: retried, delivered, same id
# and body; the receiver counts every request libcurl sent again by itself
for pair in c8reset:9 c8close:3; do
	IFS=: read -r ep n <<<"$pair"
	got=$(q "SELECT d.state || ' ' || string_agg(coalesce(a.http_status::text, '-') || ':' || a.outcome, ',' ORDER BY a.attempt_id)
	         FROM hub.deliveries d JOIN hub.attempts a USING (delivery_id) WHERE d.event_id = '${EV[$ep]}' GROUP BY d.delivery_id")
	[[ $got =~ ^delivered\ (-:retry,)+200:delivered$ ]] || fail "$ep: '$got', want transport errors retried, then delivered"
	got=$(recv "
rows = [e for e in E if 'ep=$ep' in e['path']]
print(len(rows), set(e['headers']['webhook-id'] for e in rows) == {'${EV[$ep]}'}, len(set(e['sha256'] for e in rows)))")
	[ "$got" = "$n True 1" ] || fail "$ep: requests / same id / bodies '$got', want '$n True 1'"
	echo "   $ep: $n requests in $(q "SELECT attempts FROM hub.deliveries WHERE event_id = '${EV[$ep]}'") attempts"
done
ok "a receiver that resets or cuts its answer short, then recovers: transport errors retried, delivered with the same id and body"

# an answer of binary junk: recorded with a valid-text excerpt
got=$(q "SELECT d.state || ' ' || d.last_http_status || ' ' || bool_and(a.response_excerpt LIKE '%not utf-8 %')
         FROM hub.deliveries d JOIN hub.attempts a USING (delivery_id) WHERE d.event_id = '${EV[garbage]}' GROUP BY d.delivery_id")
[ "$got" = "dead 500 false" ] || [ "$got" = "dead 500 true" ] || fail "garbage: '$got'"
ok "garbage: an answer of NULs and invalid UTF-8 is recorded (excerpt cut to valid text: $(q "SELECT quote_literal(response_excerpt) FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) WHERE d.event_id = '${EV[garbage]}' LIMIT 1"))"

# status codes nobody defined: a malformed one is a transport error, 599 a
# failure like any 5xx, 299 a success like any 2xx
check_attempts badstatus dead '%'
got=$(q "SELECT string_agg(state || ' ' || attempts || ' ' || last_http_status, ', ' ORDER BY event_id = '${EV[s599]}')
         FROM hub.deliveries WHERE event_id IN ('${EV[s599]}', '${EV[s299]}')")
[ "$got" = "delivered 1 299, dead 2 599" ] || fail "unknown status codes: '$got', want 'delivered 1 299, dead 2 599'"
ok "status 599 retried then dead, 299 delivered"

# redirects off: a 302 is a non-2xx answer like any other (retried, then dead)
got=$(q "SELECT state || ' ' || attempts || ' ' || last_http_status || ' ' || last_error FROM hub.deliveries WHERE event_id = '${EV[redir_off]}'")
[ "$got" = "dead 2 302 302 redirect not followed" ] || fail "redir_off: '$got'"
ok "redir_off: a 302 is not followed by default (retried as a non-2xx answer, then dead)"
# redirects on: POST kept, same id and body at the target
got=$(q "SELECT state || ' ' || attempts FROM hub.deliveries WHERE event_id = '${EV[redir_on]}'")
[ "$got" = "delivered 1" ] || fail "redir_on: '$got'"
got=$(recv "
a = [e for e in E if 'ep=redir_on&' in e['path'] or e['path'].endswith('ep=redir_on')]
b = [e for e in E if e['path'].startswith('/ok') and 'ep=redir_on_target' in e['path']]
print(len(a), len(b), b[0]['method'], a[0]['sha256'] == b[0]['sha256'],
      a[0]['headers']['webhook-id'] == b[0]['headers']['webhook-id'] == '${EV[redir_on]}')")
[ "$got" = "1 1 POST True True" ] || fail "redir_on: '$got', want '1 1 POST True True'"
ok "redir_on: followed when allowed; the POST, its body and webhook-id reach the target"

# ---- egress policy changed at run time
reload_policy() {
	q "ALTER SYSTEM SET logistics_hub.egress_allow = '$1'" "SELECT pg_reload_conf()" >/dev/null
	must_wait "SELECT current_setting('logistics_hub.egress_allow') = '$1'" 10 "the policy '$1' was not loaded"
	# the dispatcher re-reads its configuration when its latch is set
	q "SELECT hub.wake()" >/dev/null
}
reload_policy 'public, localhost'
got=$(q "SELECT sqlstate_of(\$\$SELECT hub.create_endpoint('addr', '$RECV_URL/ok')\$\$)")
[ "$got" = 22023 ] || fail "an address outside the policy was not refused at registration ($got)"
ok "egress: http://127.0.0.1 refused at registration under 'public, localhost' (22023)"
push_endpoint byname "http://localhost:$RECV_PORT/ok?ep=byname" "timeout_ms => 2000"
BYNAME=$(push_publish byname SO-byname)
EARLY2=$(push_publish early SO-early2)
must_wait "SELECT state = 'dead' FROM hub.deliveries WHERE event_id = '$BYNAME'" 20 "byname: not dead"
must_wait "SELECT state = 'dead' FROM hub.deliveries WHERE event_id = '$EARLY2'" 20 \
	"early: an endpoint registered before the policy changed still got through ($(q "SELECT state FROM hub.deliveries WHERE event_id = '$EARLY2'"))"
EV[byname]=$BYNAME
EV[early2]=$EARLY2
check_attempts byname dead 'blocked by egress policy: address %'
check_attempts early2 dead 'blocked by egress policy: address 127.0.0.1'
n=$(recv "print(sum(1 for e in E if 'ep=byname' in e['path'] or '$EARLY2' == e['headers'].get('webhook-id')))")
[ "$n" = 0 ] || fail "the receiver got $n requests the policy forbids"
ok "egress: a listed name resolving to a forbidden address, and an endpoint registered before the change, blocked at connect time"
reload_policy '127.0.0.1'
got=$(q "SELECT sqlstate_of(\$\$SELECT hub.create_endpoint('name2', 'http://localhost:$RECV_PORT/ok')\$\$)")
[ "$got" = 22023 ] || fail "a host name not listed was not refused at registration ($got)"
ok "egress: a host name not listed refused at registration under '127.0.0.1' (22023)"

push_finish
