#!/usr/bin/env bash
# test/scripts/nats_push.sh --- push into NATS JetStream (the nats
# transport, workers/nats_transport.c) on a three-node cluster with a
# replicas-3 stream, all on loopback (test/nats/cluster.sh):
#   - hub.create_endpoint: a nats:// server list and subject template are
#     accepted, a bad template, a subject on an http endpoint, an auth kind
#     NATS has no use for and a server the egress policy refuses are not
#     (22023)
#   - subjects (endpoint js2 names its server by name, localhost, which the
#     connect thread resolves): {event_type} and {aggregate_id} filled in, an aggregate id
#     with ".", " ", "*", ">" escaped as %XX (read back from the stream)
#   - a burst of events over many keys, into two per_key subscriptions
#     (one without lease groups, one with lease groups of 16: a key's events
#     in a group, sent one after another), while the stream leader is
#     killed (kill -9) and restarted, then the node the dispatcher is
#     connected to (found by the client name in the nodes' /connz): every
#     event ends delivered; the stream holds every event id exactly once
#     (Nats-Msg-Id); per key, the stream's order is the publication order;
#     every successful attempt names the stream sequence that holds its
#     event (a re-sent one as a duplicate of its first)
#   - the dispatcher never died
source test/receiver/push_lib.sh
source test/nats/cluster.sh
# (ports of its own, from the test cluster's port like the other scripts: runs of
# other checkouts, with another LH_TEST_PORT, never collide)
NATS_BASE=${LH_NATS_TEST_BASE:-$((PGPORT + 300))}
# (localhost, js2's server, may resolve to ::1 as well as 127.0.0.1, as on a
# fresh Debian: a name is refused unless every address of it is allowed, so
# the policy here admits both)
push_setup nats-push 121 "logistics_hub.max_in_flight = 256" "logistics_hub.egress_allow = '127.0.0.1, ::1, public'"
NATS_DIR=$LH_CLUSTER_DIR/nats
trap 'lh_nats_stop || true; push_cleanup' EXIT
lh_nats_start "$NATS_DIR" "$NATS_BASE"
"$LH_NATS_TOOL" stream "$LH_NATS_URLS" LHUB 'lhub.>' 3
ok "three-node cluster on 127.0.0.1:$NATS_BASE-$((NATS_BASE + 2)), stream LHUB (R3), leader $("$LH_NATS_TOOL" leader "$LH_NATS_URLS" LHUB)"
if ss -ltnH 2>/dev/null | awk '{print $4}' | grep -E ":($NATS_BASE|$((NATS_BASE + 1))|$((NATS_BASE + 2))|$((NATS_BASE + 10))|$((NATS_BASE + 20)))\$" | grep -vq '^127\.0\.0\.1:'; then
	fail "a NATS node listens on another address than 127.0.0.1"
fi

# ---- registration
sq() { q "SELECT public.sqlstate_of(\$s\$$1\$s\$)"; }
[ "$(sq "SELECT hub.create_endpoint('bad1', '$LH_NATS_URLS', subject => 'lhub.{event_type}.>')")" = 22023 ] ||
	fail "a wildcard in a subject template was accepted"
[ "$(sq "SELECT hub.create_endpoint('bad2', '$LH_NATS_URLS', subject => 'lhub..{aggregate_id}')")" = 22023 ] ||
	fail "an empty token in a subject template was accepted"
[ "$(sq "SELECT hub.create_endpoint('bad3', '$LH_NATS_URLS', subject => 'lhub.{tenant}')")" = 22023 ] ||
	fail "an unknown placeholder in a subject template was accepted"
[ "$(sq "SELECT hub.create_endpoint('bad4', 'http://127.0.0.1:9/x', subject => 'lhub.x')")" = 22023 ] ||
	fail "an http endpoint took a subject"
[ "$(sq "SELECT hub.create_endpoint('bad5', '$LH_NATS_URLS', auth_kind => 'api_key', auth_secret => 'k', api_key_header => 'X-Key')")" = 22023 ] ||
	fail "a nats endpoint took auth_kind api_key"
[ "$(sq "SELECT hub.create_endpoint('bad6', 'nats://127.0.0.1:$NATS_BASE,nats://10.1.2.3:4222')")" = 22023 ] ||
	fail "a nats server list with a private address passed the egress policy (127.0.0.1, public)"
[ "$(q "SELECT count(*) FROM hub.endpoints WHERE name LIKE 'bad%'")" = 0 ] || fail "a refused endpoint was created"
q "SELECT hub.create_endpoint('js', '$LH_NATS_URLS', 'other', timeout_ms => 3000, max_concurrency => 256)" \
  "SELECT hub.create_endpoint('js2', 'nats://localhost:$NATS_BASE', 'other', subject => 'lhub.t2.{aggregate_id}.{event_type}')" \
  "SELECT hub.create_endpoint('jsg', '$LH_NATS_URLS', 'other', timeout_ms => 3000, max_concurrency => 256,
								subject => 'lhub.g.{event_type}.{aggregate_id}')" >/dev/null
[ "$(q "SELECT string_agg(subject_template, ' ' ORDER BY name) FROM hub.endpoints WHERE name IN ('js', 'js2')")" = \
	"lhub.{event_type}.{aggregate_id} lhub.t2.{aggregate_id}.{event_type}" ] || fail "subject templates not stored"
q "SELECT hub.subscribe('js', 'order.*', filter => '{\"t\": \"js\"}', max_attempts => 50, retry_base => '200 ms', retry_max => '1 s')" \
  "SELECT hub.subscribe('js2', 'order.*', filter => '{\"t\": \"js2\"}')" \
  "SELECT hub.subscribe('jsg', 'order.*', filter => '{\"t\": \"jsg\"}', max_attempts => 50, retry_base => '200 ms',
					   retry_max => '1 s', lease_group => 16)" >/dev/null
ok "create_endpoint: nats:// lists and subject templates checked (22023 for bad ones)"

# ---- subjects
E1=$(q "SELECT hub.publish('order.created', 'A.1 *>', '{\"order_id\": \"A.1 *>\", \"t\": \"js2\"}')")
E2=$(q "SELECT hub.publish('order.created', 'B-2_x', '{\"order_id\": \"B-2_x\", \"t\": \"js2\"}')")
must_wait "SELECT count(*) = 2 FROM hub.deliveries WHERE state = 'delivered'" 30 "the two events were not delivered"
"$LH_NATS_TOOL" dump "$LH_NATS_URLS" LHUB >"$NATS_DIR/dump0"
grep -qx "[0-9]* lhub.t2.A%2E1%20%2A%3E.order.created $E1" "$NATS_DIR/dump0" || { cat "$NATS_DIR/dump0"; fail "subject of 'A.1 *>' not escaped as expected"; }
grep -qx "[0-9]* lhub.t2.B-2_x.order.created $E2" "$NATS_DIR/dump0" || { cat "$NATS_DIR/dump0"; fail "subject of 'B-2_x' not as expected"; }
got=$(q "SELECT string_agg(a.response_excerpt, ' ') FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) WHERE d.event_id = '$E1'")
case $got in *'"stream": "LHUB"'*'"duplicate": false'*) ;; *) fail "the attempt does not carry the publish acknowledgement: $got" ;; esac
ok "subjects from the template, aggregate id escaped; the acknowledgement is the attempt ($got)"

# ---- a burst through kill -9 of the stream leader and of the connected node
N=${LH_NATS_TEST_EVENTS:-3000}
KEYS=40
BATCH=100
publisher() {
	local b
	for b in $(seq 0 $((N / BATCH - 1))); do
		q "SELECT count(hub.publish('order.updated', 'K' || (i % $KEYS), jsonb_build_object('order_id', 'K' || (i % $KEYS), 't', t, 'i', i)))
		   FROM generate_series($((b * BATCH)), $((b * BATCH + BATCH - 1))) i, unnest(ARRAY['js', 'jsg']) t" >/dev/null
		sleep 0.1
	done
}
publisher &
PUB=$!
# (events delivered, a group's each counted, of both subscriptions)
js_done() { q "SELECT coalesce(sum(coalesce(cardinality(d.batch_events), 1)), 0) FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id)
			   WHERE e.name IN ('js', 'jsg') AND state = 'delivered'"; }
wait_count() { local t; for t in $(seq 1 600); do [ "$(js_done)" -ge "$1" ] && return 0; sleep 0.1; done; return 1; }
wait_count $((2 * N / 4)) || fail "a quarter of the burst was not delivered"
LEADER=$(lh_nats_node_of "$("$LH_NATS_TOOL" leader "$LH_NATS_URLS" LHUB)")
AT=$(js_done)
lh_nats_kill "$LEADER"
echo "kill -9 of the stream leader n$LEADER at $AT of $((2 * N)) delivered"
sleep 3
lh_nats_restart "$LEADER"
wait_count $((AT + 2 * N / 10)) || fail "delivery did not go on after the leader's kill"
CONN=$(lh_nats_client_node "logistics_hub dispatcher 0")
[ -n "$CONN" ] || fail "no node has the dispatcher's connection"
AT=$(js_done)
lh_nats_kill "$CONN"
echo "kill -9 of n$CONN, the node the dispatcher is connected to, at $AT of $((2 * N)) delivered"
sleep 3
lh_nats_restart "$CONN"
wait "$PUB" || fail "publishing failed"
must_wait "SELECT count(*) = 2 AND bool_and(n = $N) FROM (
			   SELECT e.name, sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'delivered') AS n
			   FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name IN ('js', 'jsg') GROUP BY 1) x" 180 \
	"not every event of the burst was delivered"
ok "all $N events of each subscription delivered through both kills"

# ---- the stream against the outbox
"$LH_NATS_TOOL" dump "$LH_NATS_URLS" LHUB >"$NATS_DIR/dump"
q "SELECT o.event_id, o.aggregate_id, o.seq, o.payload ->> 't' FROM hub.outbox o WHERE o.payload ->> 't' IN ('js', 'jsg') ORDER BY o.seq" |
	tr '|' ' ' >"$NATS_DIR/outbox"
# (an attempt of a group names its event: group_event_id)
q "SELECT coalesce(a.group_event_id, d.event_id), a.response_excerpt::jsonb ->> 'seq', a.response_excerpt::jsonb ->> 'duplicate'
   FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) JOIN hub.endpoints e ON e.endpoint_id = d.endpoint_id
   WHERE e.name IN ('js', 'jsg') AND a.outcome = 'delivered'" | tr '|' ' ' >"$NATS_DIR/attempts"
q "SELECT e.name, outcome, count(*) FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) JOIN hub.endpoints e ON e.endpoint_id = d.endpoint_id
   WHERE e.name IN ('js', 'jsg') GROUP BY 1, 2 ORDER BY 1, 2" | tr '\n' ' '; echo
python3 - "$NATS_DIR" "$N" <<'PY' || fail "the stream does not match the outbox"
import sys, collections
d, n = sys.argv[1], int(sys.argv[2])
stream = [l.split() for l in open(d + "/dump") if l.strip()]
outbox = [l.split() for l in open(d + "/outbox") if l.strip()]
attempts = [l.split() for l in open(d + "/attempts") if l.strip()]
ids = collections.Counter(s[2] for s in stream)
mine = {o[0]: o for o in outbox}
assert len(mine) == 2 * n, f"{len(mine)} events in the outbox, {2 * n} expected"
missing = [e for e in mine if ids[e] == 0]
twice = [e for e in mine if ids[e] > 1]
assert not missing, f"{len(missing)} events missing from the stream, e.g. {missing[:3]}"
assert not twice, f"{len(twice)} events stored more than once, e.g. {twice[:3]}"
seq_of = {s[2]: int(s[0]) for s in stream}
for s in stream:
    if s[2] in mine:
        key, t = mine[s[2]][1], mine[s[2]][3]
        want = ("lhub.g.order.updated." if t == "jsg" else "lhub.order.updated.") + key
        assert s[1] == want, f"subject {s[1]} for key {key} of {t}"
inv = 0
last = {}
for o in outbox:           # publication order, per subscription and key
    k, sq = (o[3], o[1]), seq_of[o[0]]
    if k in last and sq < last[k]:
        inv += 1
    last[k] = sq
assert inv == 0, f"{inv} per-key order inversions in the stream"
bad = [a for a in attempts if a[0] in mine and int(a[1]) != seq_of[a[0]]]
assert not bad, f"{len(bad)} attempts name another sequence than the stream's, e.g. {bad[:3]}"
dups = sum(1 for a in attempts if a[0] in mine and a[2] == "true")
print(f"stream: {len(stream)} messages, every event once, per-key order kept over {len(last)} keys of two subscriptions; "
      f"{len(attempts)} successful attempts, each naming its event's stream sequence ({dups} acknowledged as duplicates)")
PY
ok "every event once in the stream, in order per key; every acknowledgement names the event's sequence"
push_finish
