#!/usr/bin/env bash
# test/scripts/nats_poller.sh --- a NATS JetStream stream as a poller
# source (workers/nats_inbound.c) on a three-node cluster with a replicas-3
# stream, all on loopback (test/nats/cluster.sh):
#   - hub.create_poller on a nats:// endpoint takes path STREAM/DURABLE and
#     refuses anything else (22023); the HTTP pollers' claim leaves it alone
#   - 1,000 messages published before the poller exists (Nats-Msg-Id
#     m1..m1000) reach hub.inbox, one row each, under source poll:<name>,
#     with the Nats-Msg-Id as message id and the payload as sent; one
#     without Nats-Msg-Id gets <stream>:<sequence>, one whose body is not
#     JSON is kept as {"nats_data_base64": ...}; the durable consumer is
#     created, and acknowledged up to date
#   - a crash between COMMIT and acknowledgement: with
#     synchronous_standby_names naming a standby that does not exist, the
#     dispatcher's commit of the next 500 messages is written but waits
#     (SyncRep) before it returns, so nothing is acknowledged; kill -9 of
#     the dispatcher then (the server restarts, recovery keeps the commit);
#     JetStream delivers the unacknowledged messages again: those of the
#     commit are counted as duplicates (on their rows, once each, and in
#     the poller's totals), the others stored: 1,502 rows, each message
#     once
# (The test's own sessions commit with synchronous_commit = local.)
source test/receiver/push_lib.sh
source test/nats/cluster.sh
export PGOPTIONS="-c synchronous_commit=local"
# (ports of its own, from the test cluster's port like the other scripts)
NATS_BASE=${LH_NATS_TEST_BASE2:-$((PGPORT + 330))}
push_setup nats-poller 122
NATS_DIR=$LH_CLUSTER_DIR/nats
trap 'lh_nats_stop || true; push_cleanup' EXIT
lh_nats_start "$NATS_DIR" "$NATS_BASE"
"$LH_NATS_TOOL" stream "$LH_NATS_URLS" SRC 'wms.>' 3
ok "three-node cluster on 127.0.0.1:$NATS_BASE-$((NATS_BASE + 2)), stream SRC (R3)"

"$LH_NATS_TOOL" publish "$LH_NATS_URLS" wms.stock 1000 7
q "SELECT hub.create_endpoint('wms_bus', '$LH_NATS_URLS', 'wms')" >/dev/null
sq() { q "SELECT public.sqlstate_of(\$s\$$1\$s\$)"; }
[ "$(sq "SELECT hub.create_poller('wms_bus', '/stock', 'wms.stock')")" = 22023 ] ||
	fail "a nats poller with an HTTP path was accepted"
[ "$(sq "SELECT hub.create_poller('wms_bus', 'SRC/hub.1', 'wms.stock')")" = 22023 ] ||
	fail "a durable name with a dot was accepted"
q "SELECT hub.create_poller('wms_bus', 'SRC/hub', 'wms.stock', name => 'wms_stream')" >/dev/null
ok "create_poller: nats:// takes STREAM/DURABLE, refuses other paths (22023)"

inbox() { q "SELECT count(*) FROM hub.inbox WHERE source = 'poll:wms_stream'"; }
must_wait "SELECT count(*) = 1000 FROM hub.inbox WHERE source = 'poll:wms_stream'" 60 \
	"the 1000 messages did not reach the inbox ($(inbox))"
[ "$(q "SELECT count(DISTINCT message_id) FILTER (WHERE message_id ~ '^m([1-9][0-9]{0,2}|1000)\$')
	   || ' ' || count(*) FILTER (WHERE message_type = 'wms.stock' AND (payload ->> 'n') = substr(message_id, 2))
	   FROM hub.inbox WHERE source = 'poll:wms_stream'")" = "1000 1000" ] ||
	fail "inbox rows are not the messages sent"
[ "$(q "SELECT count(*) FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'wms_stream'")" = 0 ] ||
	fail "the HTTP poller machinery ran the nats poller"
ok "1000 messages published before the poller: 1000 inbox rows, ids = Nats-Msg-Id, payloads as sent"

# a message without Nats-Msg-Id and one that is not JSON, through a tiny publisher
python3 - "$NATS_BASE" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.recv(4096)
s.sendall(b'CONNECT {"verbose":false,"headers":true}\r\nPUB wms.raw 3\r\n{"a\r\nPUB wms.raw 8\r\n{"x": 1}\r\nPING\r\n')
buf = b""
while b"PONG" not in buf:
    buf += s.recv(4096)
PY
must_wait "SELECT count(*) = 1002 FROM hub.inbox WHERE source = 'poll:wms_stream'" 30 "the two raw messages did not arrive"
[ "$(q "SELECT string_agg(message_id || '=' || payload::text, ' ' ORDER BY message_id) FROM hub.inbox
	   WHERE source = 'poll:wms_stream' AND message_id LIKE 'SRC:%'")" = 'SRC:1001={"nats_data_base64": "eyJh"} SRC:1002={"x": 1}' ] ||
	fail "raw messages: $(q "SELECT string_agg(message_id || '=' || payload::text, ' ') FROM hub.inbox WHERE message_id LIKE 'SRC:%'")"
ok "no Nats-Msg-Id: <stream>:<sequence>; a body that is not JSON kept as base64"

# ---- a crash between COMMIT and the acknowledgement
OLD=$(dispatcher_pid)
# (paused while the 500 are published, so that they arrive together)
# (the dispatcher lets go of a paused poller's subscription when woken, at
# the latest after its 5-second refresh; resumed, it binds again and gets
# the 500 at once)
q "SELECT hub.pause_poller('wms_stream', 'test')" >/dev/null
sleep 6
"$LH_NATS_TOOL" publish "$LH_NATS_URLS" wms.stock 500 7 2001
q "ALTER SYSTEM SET synchronous_standby_names = 'lhub_nobody'" "SELECT pg_reload_conf()" >/dev/null
q "SELECT hub.resume_poller('wms_stream', 'test')" >/dev/null
must_wait "SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'logistics_hub dispatcher' AND wait_event = 'SyncRep'" 30 \
	"the dispatcher's commit never waited for the missing standby"
# (committed, not yet visible: the commit waits for the standby; nothing acknowledged)
q "ALTER SYSTEM RESET synchronous_standby_names" >/dev/null
kill -9 "$OLD"
echo "kill -9 of dispatcher $OLD while its commit of the next messages waited, before any acknowledgement"
must_wait "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'logistics_hub dispatcher' AND pid <> $OLD" 60 \
	"no dispatcher after the crash"
q "SELECT pg_reload_conf()" >/dev/null
must_wait "SELECT count(*) = 1502 FROM hub.inbox WHERE source = 'poll:wms_stream'" 30 "the committed messages are not there after the crash"
# JetStream delivers the unacknowledged 500 again after the acknowledgement wait (30 s)
must_wait "SELECT sum(duplicate_count) > 0 FROM hub.inbox WHERE source = 'poll:wms_stream' AND message_id ~ '^m2[0-9]{3}\$'" 90 \
	"the messages committed before the crash were not delivered again"
[ "$(q "SELECT count(*) || ' ' || count(DISTINCT message_id) || ' ' || count(*) FILTER (WHERE message_id ~ '^m2[0-9]{3}\$')
	   FROM hub.inbox WHERE source = 'poll:wms_stream'")" = "1502 1502 500" ] || fail "rows after the crash are not each message once"
# (both in one snapshot: a further batch of the redelivery may commit between two queries)
read -r DUPS TOTAL_DUPS < <(q "SELECT (SELECT sum(duplicate_count) FROM hub.inbox WHERE source = 'poll:wms_stream') || ' ' ||
	(SELECT total_duplicates FROM hub.pollers WHERE name = 'wms_stream')")
[ "$TOTAL_DUPS" = "$DUPS" ] || fail "the poller did not count the duplicates ($TOTAL_DUPS counted, $DUPS on the rows)"
[ "$(q "SELECT count(*) FROM hub.inbox WHERE source = 'poll:wms_stream' AND duplicate_count > 1")" = 0 ] ||
	fail "a message was delivered again more than once"
ok "crash between commit and acknowledgement: 1502 rows, each once; the $DUPS messages of the commit that was never acknowledged delivered again and counted as duplicates"
if grep -E "PANIC|TRAP:" "$LH_CLUSTER_DIR/server.log"; then fail "the server log shows a PANIC or assertion"; fi
ok "no PANIC or assertion in the server log"
