#!/usr/bin/env bash
# test/scripts/push_tls.sh --- HTTPS receivers: TLS peer verification is always
# on and cannot be switched off from SQL; a CA file can be configured.
#   - a receiver with a self-signed certificate (made here with openssl for
#     IP 127.0.0.1) is refused while logistics_hub.ca_file is empty: the
#     attempt records the certificate error and the delivery waits to retry;
#   - a session cannot SET logistics_hub.ca_file (a server setting);
#   - with logistics_hub.ca_file naming that certificate (ALTER SYSTEM and a
#     reload), the retry is delivered over HTTPS, body and id intact.
source test/receiver/push_lib.sh
push_setup push-tls 114 "logistics_hub.poll_interval = 200ms"

tls=$LH_CLUSTER_DIR/tls
mkdir -p "$tls"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=127.0.0.1" \
	-addext "subjectAltName=IP:127.0.0.1" -keyout "$tls/key.pem" -out "$tls/cert.pem" >/dev/null 2>&1 ||
	fail "openssl could not make a test certificate"
[ "$(id -u)" -eq 0 ] && chown -R "$CLUSTER_USER" "$tls"
python3 "$LH_RECEIVER" serve --port-file "$tls/port" --log "$tls/receiver.log" \
	--tls-cert "$tls/cert.pem" --tls-key "$tls/key.pem" >"$tls/out" 2>&1 &
TLS_PID=$!
trap 'kill $TLS_PID 2>/dev/null; push_cleanup' EXIT
for _ in $(seq 100); do [ -s "$tls/port" ] && break; sleep 0.05; done
[ -s "$tls/port" ] || fail "the HTTPS receiver did not start: $(cat "$tls/out")"
url=https://127.0.0.1:$(cat "$tls/port")/ok

PUSH_SUB="retry_base => '200 ms', retry_max => '500 ms', max_attempts => 100" push_endpoint tls "$url"
# every attempt fails until the CA file is set: keep the circuit out of it
q "UPDATE hub.endpoints SET circuit_failure_threshold = 1000 WHERE name = 'tls'" >/dev/null
ev=$(push_publish tls T-1)

# 1. unknown issuer: refused, recorded, retried
must_wait "SELECT count(*) >= 2 FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id)
           WHERE d.event_id = '$ev' AND a.outcome = 'retry'" 20 "no failed attempts against the self-signed receiver"
err=$(q "SELECT a.error FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) WHERE d.event_id = '$ev' ORDER BY a.attempt_id LIMIT 1")
echo "$err" | grep -qiE 'certificate|SSL' || fail "the attempt does not name the certificate problem: '$err'"
[ ! -s "$tls/receiver.log" ] || fail "a request reached the receiver without a verified certificate"
ok "self-signed receiver refused while no CA file is set: $err"

# 2. verification cannot be switched off from SQL
got=$(q "SELECT sqlstate_of('SET logistics_hub.ca_file = ''''')")
[ "$got" = 55P02 ] || fail "a session could SET logistics_hub.ca_file ($got)"
ok "a session cannot SET logistics_hub.ca_file (55P02)"

# 3. with the CA file configured, the retry is delivered over HTTPS
q "ALTER SYSTEM SET logistics_hub.ca_file = '$tls/cert.pem'" "SELECT pg_reload_conf()" >/dev/null
must_wait "SELECT state = 'delivered' FROM hub.deliveries WHERE event_id = '$ev'" 20 \
	"not delivered over HTTPS after logistics_hub.ca_file was set"
got=$(python3 -c "
import json
rows = [json.loads(l) for l in open('$tls/receiver.log')]
print(len(rows), rows[0]['headers'].get('webhook-id'), json.loads(rows[0]['body'])['id'])")
read -r n wid bid <<<"$got"
[ "$n" -ge 1 ] && [ "$wid" = "$ev" ] && [ "$bid" = "$ev" ] || fail "the HTTPS receiver got '$got', want the event $ev"
ok "delivered over HTTPS once the CA file names the receiver's certificate ($n request, webhook-id = event id)"

push_finish
