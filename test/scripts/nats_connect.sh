#!/usr/bin/env bash
# test/scripts/nats_connect.sh --- the connect to a nats endpoint's servers
# does not hold up the dispatcher (workers/nats_transport.c: it runs in a
# thread of its own, the endpoint's requests waiting for it):
#   - endpoint "hang" lists five servers on loopback, by name (localhost:
#     the connect thread resolves it), that accept the TCP connection and
#     never say a word (no NATS INFO), timeout_ms 2000: its
#     connect takes five connect timeouts before it fails; endpoint "web"
#     is the HTTP test receiver; events for both, published in one
#     transaction (one claim)
#   - every event of "web" is delivered while "hang" has no attempt yet
#     (its deliveries leased, its connect still under way); with a connect
#     on the dispatcher's own thread, the receiver's answers would only be
#     recorded after that connect gave up, with "hang"'s failures
#   - then each event of "hang" fails with one attempt naming the connect
#     ("NATS connect: ..."), none sent
#   - a nats poller source on "mute", a server that speaks the NATS protocol
#     but never answers a JetStream API request (timeout_ms 3000): once its
#     consumer lookup has reached the server, more events for web are all
#     delivered while that lookup still waits (no "could not subscribe"
#     yet); with the lookup on the dispatcher's own thread they could only
#     be after it gave up; then the poller's failure is reported
#   - the dispatcher never died
source test/receiver/push_lib.sh
# (localhost may resolve to ::1 as well as 127.0.0.1, as on a fresh Debian: a
# name is refused unless every address of it is allowed, so the policy here
# admits both)
push_setup nats-connect 127 "logistics_hub.egress_allow = '127.0.0.1, ::1, public'"
N=20

# five listeners that accept and stay silent until the test ends
HANG_PORTS=$LH_CLUSTER_DIR/hang.ports
python3 - "$HANG_PORTS" <<'PY' &
import socket, sys, threading, time
ls = []
for _ in range(5):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    ls.append(s)
held = []
def serve(s):
    while True:
        c, _ = s.accept()
        held.append(c)          # never written to, never closed
for s in ls:
    threading.Thread(target=serve, args=(s,), daemon=True).start()
with open(sys.argv[1] + ".tmp", "w") as f:
    # (by name: the connect thread resolves it)
    f.write(",".join("nats://localhost:%d" % s.getsockname()[1] for s in ls))
import os
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(600)
PY
HANG_PID=$!
trap 'kill $HANG_PID 2>/dev/null; push_cleanup' EXIT
for _ in $(seq 100); do [ -s "$HANG_PORTS" ] && break; sleep 0.1; done
[ -s "$HANG_PORTS" ] || fail "the silent listeners did not start"
HANG_URLS=$(cat "$HANG_PORTS")

push_endpoint web ok
# (a failed event waits an hour: the failures stay to be counted)
q "SELECT hub.create_endpoint('hang', '$HANG_URLS', 'other', timeout_ms => 2000)" \
  "SELECT hub.subscribe('hang', 'order.*', filter => '{\"t\": \"hang\"}', retry_base => '1 hour', retry_max => '1 hour')" >/dev/null
q "BEGIN" \
  "SELECT count(hub.publish('order.created', 'W-' || i, jsonb_build_object('order_id', 'W-' || i, 't', 'web'))) FROM generate_series(1, $N) i" \
  "SELECT count(hub.publish('order.created', 'H-' || i, jsonb_build_object('order_id', 'H-' || i, 't', 'hang'))) FROM generate_series(1, $N) i" \
  "COMMIT" >/dev/null
ok "$N events for web (HTTP receiver), $N for hang (five silent servers: $HANG_URLS)"

must_wait "SELECT count(*) = $N FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'web' AND d.state = 'delivered'" 60 \
	"the events of web were not delivered"
got=$(q "SELECT count(*) FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) JOIN hub.endpoints e ON e.endpoint_id = d.endpoint_id WHERE e.name = 'hang'")
[ "$got" = 0 ] || fail "hang had $got attempts by the time web's events were delivered: the connect held up the dispatcher"
leased=$(q "SELECT count(*) FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'hang' AND d.state = 'in_flight'")
ok "web: $N delivered while hang's connect was under way (no attempt of hang yet, $leased of its deliveries leased)"

must_wait "SELECT count(*) = $N FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'hang' AND d.state <> 'in_flight' AND d.attempts > 0" 120 \
	"hang's deliveries were not failed after its connect gave up"
bad=$(q "SELECT count(*) FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) JOIN hub.endpoints e ON e.endpoint_id = d.endpoint_id
         WHERE e.name = 'hang' AND (a.outcome <> 'retry' OR a.error NOT LIKE 'NATS connect: %')")
[ "$bad" = 0 ] || fail "$bad attempts of hang are not connect failures"
err=$(q "SELECT min(a.error) FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) JOIN hub.endpoints e ON e.endpoint_id = d.endpoint_id WHERE e.name = 'hang'")
ok "hang: each event failed once the connect gave up, with an attempt naming it ($err)"
recv "
import re
hang = [e for e in E if re.search(r'\"t\"\\s*:\\s*\"hang\"', e['body'])]
web = [e for e in E if re.search(r'\"t\"\\s*:\\s*\"web\"', e['body'])]
assert not hang, hang[:1]
assert len(web) >= $N, len(web)
" || fail "the receiver's log does not match"

# a server that speaks NATS (INFO, PONG) and answers no request
MUTE_LOG=$LH_CLUSTER_DIR/mute.log
python3 - "$MUTE_LOG" <<'PY' &
import socket, sys, threading, time
log = sys.argv[1]
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(16)
def serve(c):
    c.sendall(b'INFO {"server_id":"mute","version":"2.9.10","go":"go","host":"127.0.0.1","port":%d,'
              b'"headers":true,"max_payload":1048576,"proto":1,"jetstream":true}\r\n' % srv.getsockname()[1])
    buf = b""
    while True:
        d = c.recv(65536)
        if not d:
            return
        buf += d
        while b"\r\n" in buf:
            line, rest = buf.split(b"\r\n", 1)
            words = line.split()
            op = words[0].upper() if words else b""
            if op in (b"PUB", b"HPUB"):
                size = int(words[-1])
                if len(rest) < size + 2:
                    break
                with open(log, "a") as f:
                    f.write(words[1].decode() + "\n")
                rest = rest[size + 2:]
            elif op == b"PING":
                c.sendall(b"PONG\r\n")
            buf = rest
with open(log + ".port.tmp", "w") as f:
    f.write(str(srv.getsockname()[1]))
import os
os.rename(log + ".port.tmp", log + ".port")
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
MUTE_PID=$!
trap 'kill $HANG_PID $MUTE_PID 2>/dev/null; push_cleanup' EXIT
for _ in $(seq 100); do [ -s "$MUTE_LOG.port" ] && break; sleep 0.1; done
[ -s "$MUTE_LOG.port" ] || fail "the mute server did not start"
q "SELECT hub.create_endpoint('mute', 'nats://127.0.0.1:$(cat "$MUTE_LOG.port")', 'other', timeout_ms => 3000)" \
  "SELECT hub.create_poller('mute', 'MUTE/hub', 'mute.x', name => 'mute_src')" >/dev/null
for _ in $(seq 200); do grep -q '^\$JS\.API\.CONSUMER\.INFO\.MUTE\.hub$' "$MUTE_LOG" 2>/dev/null && break; sleep 0.05; done
grep -q '^\$JS\.API\.CONSUMER\.INFO\.MUTE\.hub$' "$MUTE_LOG" || fail "the poller's consumer lookup never reached the mute server"
q "SELECT count(hub.publish('order.created', 'V-' || i, jsonb_build_object('order_id', 'V-' || i, 't', 'web'))) FROM generate_series(1, $N) i" >/dev/null
must_wait "SELECT count(*) = 2 * $N FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'web' AND d.state = 'delivered'" 60 \
	"the later events of web were not delivered"
! grep -q 'nats poller "mute_src" could not subscribe' "$LH_CLUSTER_DIR/server.log" ||
	fail "the poller's subscribe had given up before web's events were delivered: it held up the dispatcher"
ok "web: $N more delivered while the nats poller's consumer lookup waited for a server that never answers"
for _ in $(seq 200); do grep -q 'nats poller "mute_src" could not subscribe' "$LH_CLUSTER_DIR/server.log" && break; sleep 0.1; done
err=$(grep -m1 'nats poller "mute_src" could not subscribe' "$LH_CLUSTER_DIR/server.log") ||
	fail "the poller's failed subscribe was never reported"
ok "mute_src: the failed subscribe is reported (${err#*WARNING:  })"
push_finish
