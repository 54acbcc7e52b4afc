#!/usr/bin/env bash
# test/scripts/site_relay.sh --- a warehouse site hub relaying its events to a
# central hub over libpq (issue 22, postgresql:// endpoints), two clusters on
# loopback:
#   - the URI is checked at registration: no password in it, no host or file
#     parameter, and a central server that does not ask for the password
#     (trust) is refused at connection time
#   - events relayed with hub.receive: the event id as message id, the event
#     type, aggregate and correlation ids and the traceparent carried, the
#     body's data as payload,
#     source "site:<logistics_hub.site_name>"
#   - the central server stopped while the site keeps publishing: the circuit
#     opens, events wait in the site's outbox, and once it is back every
#     event is in the central inbox once, in order per key
#   - the same with a kill -9 of the site's dispatcher during the catch-up,
#     and with an immediate stop (kill -9 semantics) of the central server
#     during the catch-up
#   - a new password (hub.set_endpoint_credentials) is used to reconnect
#   - a central mapping (hub.map_inbox) makes relayed WMS events central truth
#   - a WAN link that goes silent (a proxy that stops forwarding, no reset):
#     calls time out, the circuit opens, everything arrives once afterwards
#   - an event the central hub refuses fails alone; the others of its
#     transaction are given back and delivered
#   - a host name is resolved without blocking and each address checked
#     against the egress policy at connect time
# The password of the central role is sealed at the site (hub._endpoint_secrets)
# and appears in no table, log or attempt.
source test/receiver/push_lib.sh

CPORT=$((PGPORT + 161))
CNAME=site-central-$CPORT
PW='relay-Pw-7f3c91'
C_STARTED=

PPORT=$((PGPORT + 162))
PROXY_PID=
central_cleanup() {
	[ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null
	push_cleanup
	[ -n "$C_STARTED" ] && lh_cluster_stop "$CNAME"
	return 0
}

# ---- the central hub: listens on 127.0.0.1, the relay role authenticates
# with a password (scram) and may only call hub.receive (least privilege),
# one inbox worker
lh_cluster_start "$CNAME" "$CPORT" "listen_addresses = '127.0.0.1'" "logistics_hub.inbox_workers = 1" \
	"logistics_hub.inbox_naptime = 100" "password_encryption = 'scram-sha-256'"
C_STARTED=1
CHOST=$PGHOST
CDIR=$LH_CLUSTER_DIR
qc() {
	local args=() a
	for a in "$@"; do args+=(-c "$a"); done
	PGHOST=$CHOST PGPORT=$CPORT psql -X -q -A -t -v ON_ERROR_STOP=1 -d postgres "${args[@]}"
}
wait_c() { PGHOST=$CHOST PGPORT=$CPORT wait_sql "$@"; }
central_ctl() { lh_as_cluster_user "$PG_BIN/pg_ctl" -D "$CDIR/data" -l "$CDIR/server.log" -w -t 60 "$@" >/dev/null; }

qc "SET client_min_messages = warning" "CREATE EXTENSION logistics_hub" \
   "CREATE ROLE site_relay LOGIN PASSWORD '$PW'" "GRANT USAGE ON SCHEMA hub TO site_relay" \
   "GRANT EXECUTE ON FUNCTION hub.receive(text, text, text, jsonb, timestamptz, text, text, text) TO site_relay" >/dev/null
{
	echo "host all site_relay 127.0.0.1/32 scram-sha-256"
	cat "$CDIR/data/pg_hba.conf"
} >"$CDIR/pg_hba.new"
cp "$CDIR/pg_hba.new" "$CDIR/data/pg_hba.conf"
qc "SELECT pg_reload_conf()" >/dev/null
# each relayed row costs the central server 5 ms more (a trigger of the
# test's own), so that a catch-up of 300 events lasts long enough for the
# faults below to fall in its middle
qc "CREATE FUNCTION public.slow() RETURNS trigger LANGUAGE plpgsql AS \$\$BEGIN PERFORM pg_sleep(0.005); RETURN NEW; END\$\$" \
   "CREATE TRIGGER slow BEFORE INSERT ON hub.inbox FOR EACH ROW EXECUTE FUNCTION public.slow()" >/dev/null

# ---- the site hub (cleanup of both clusters on exit)
push_setup site-relay 160 "logistics_hub.site_name = 'dc-north'" "logistics_hub.unknown_event_types = accept"
trap central_cleanup EXIT
# (a host name: resolved by the dispatcher without blocking, each address
# checked against the egress policy)
URI="postgresql://site_relay@localhost:$CPORT/postgres?application_name=dc-north&connect_timeout=5"

# ---- registration checks
got=$(q "SELECT public.sqlstate_of(\$\$SELECT hub.create_endpoint('x', 'postgresql://site_relay:$PW@127.0.0.1:$CPORT/postgres')\$\$)")
[ "$got" = 22023 ] || fail "a password in the URI: $got, want 22023"
got=$(q "SELECT public.sqlstate_of(\$\$SELECT hub.create_endpoint('x', 'postgresql://site_relay@127.0.0.1:$CPORT/postgres?host=/tmp')\$\$)")
[ "$got" = 22023 ] || fail "a host parameter in the URI: $got, want 22023"
got=$(q "SELECT public.sqlstate_of(\$\$SELECT hub.create_endpoint('x', 'postgresql://site_relay@127.0.0.1:$CPORT/postgres?sslkey=/etc/ssl/private/k.pem')\$\$)")
[ "$got" = 22023 ] || fail "an sslkey parameter in the URI: $got, want 22023"
got=$(q "SELECT public.sqlstate_of(\$\$SELECT hub.create_endpoint('x', 'postgresql://site_relay@10.9.8.7:$CPORT/postgres')\$\$)")
[ "$got" = 22023 ] || fail "a host outside the egress policy: $got, want 22023"
ok "postgresql:// URIs: a password, a host or file parameter, a host outside the egress policy refused (22023)"

# an endpoint to a role the central server trusts without a password: refused
q "SELECT hub.create_endpoint('trusting', 'postgresql://postgres@127.0.0.1:$CPORT/postgres', auth_secret => 'whatever', max_concurrency => 1)" \
  "SELECT hub.subscribe('trusting', 'order.*', filter => '{\"t\": \"trusting\"}', max_attempts => 1)" >/dev/null
T=$(push_publish trusting TR-1)
must_wait "SELECT state = 'dead' FROM hub.deliveries WHERE event_id = '$T'" 30 "the delivery to a trusting server did not fail"
got=$(q "SELECT last_error FROM hub.deliveries WHERE event_id = '$T'")
case $got in *"did not ask for the password"*) ;; *) fail "trusting server: '$got'" ;; esac
err=$got
got=$(qc "SELECT count(*) FROM hub.inbox")
[ "$got" = 0 ] || fail "a message reached the central inbox through a trusting connection"
ok "a central server that does not ask for the password is refused: '$err'"

# ---- the relay endpoint
q "SELECT hub.create_endpoint('central', '$URI', auth_secret => '$PW', timeout_ms => 5000)" \
  "UPDATE hub.endpoints SET circuit_cooloff = '500 ms' WHERE name = 'central'" \
  "SELECT hub.subscribe('central', 'order.*', filter => '{\"t\": \"central\"}', retry_base => '100 ms', retry_max => '1 s', max_attempts => 1000)" >/dev/null
got=$(q "SELECT count(*) FROM hub.endpoints WHERE url LIKE '%$PW%'")
[ "$got" = 0 ] || fail "the password is in hub.endpoints"

N=0
publish() {	# publish COUNT events over 10 keys, n counting on
	local count=$1
	q "SELECT hub.publish('order.created', 'K-' || (i % 10), jsonb_build_object('order_id', 'K-' || (i % 10), 't', 'central', 'n', i),
			correlation_id => 'corr-' || i)
	   FROM generate_series($((N + 1)), $((N + count))) i" >/dev/null
	N=$((N + count))
}
# every event once, in order per key, carried with its ids
check_central() {
	local what=$1 got
	got=$(qc "SELECT count(*) || ' ' || count(DISTINCT message_id) FROM hub.inbox WHERE source = 'site:dc-north'")
	[ "$got" = "$N $N" ] || fail "$what: central inbox has '$got' (rows, distinct ids), want $N $N"
	got=$(qc "SELECT count(*) FROM (SELECT aggregate_id, (payload ->> 'n')::int AS n,
				 lag((payload ->> 'n')::int) OVER (PARTITION BY aggregate_id ORDER BY inbox_id) AS prev
				 FROM hub.inbox WHERE source = 'site:dc-north') s WHERE prev > n")
	[ "$got" = 0 ] || fail "$what: $got events arrived before an earlier event of their key"
	got=$(qc "SELECT count(*) FROM hub.inbox WHERE source = 'site:dc-north' AND (message_type <> 'order.created'
				 OR aggregate_id IS DISTINCT FROM payload ->> 'order_id' OR correlation_id IS DISTINCT FROM 'corr-' || (payload ->> 'n'))")
	[ "$got" = 0 ] || fail "$what: $got relayed rows lack their type, aggregate id or correlation id"
	got=$(q "SELECT count(*) FROM hub.deliveries d JOIN hub.outbox o USING (event_id)
			 WHERE o.payload ->> 't' = 'central' AND d.state <> 'delivered'")
	[ "$got" = 0 ] || fail "$what: $got site deliveries not delivered"
	# the trace context carried: the central row's traceparent is the event's
	got=$(qc "SELECT string_agg(message_id || ' ' || coalesce(traceparent, '-'), ',' ORDER BY message_id) FROM hub.inbox WHERE source = 'site:dc-north'" | md5sum)
	[ "$got" = "$(q "SELECT string_agg(o.event_id::text || ' ' || coalesce(o.traceparent, '-'), ',' ORDER BY o.event_id::text) FROM hub.outbox o WHERE o.payload ->> 't' = 'central'" | md5sum)" ] ||
		fail "$what: the central rows do not carry the events' traceparent"
	# message id = event id
	got=$(qc "SELECT string_agg(message_id, ',' ORDER BY message_id) FROM hub.inbox WHERE source = 'site:dc-north'" | md5sum)
	[ "$got" = "$(q "SELECT string_agg(o.event_id::text, ',' ORDER BY o.event_id::text) FROM hub.outbox o WHERE o.payload ->> 't' = 'central'" | md5sum)" ] ||
		fail "$what: the central message ids are not the site's event ids"
}
all_in() { wait_c "SELECT count(*) = $N FROM hub.inbox WHERE source = 'site:dc-north'" "$1"; }

publish 50
all_in 60 || fail "the first 50 events did not reach the central inbox: $(qc "SELECT count(*) FROM hub.inbox")"
check_central "link up"
got=$(q "SELECT count(*) FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) JOIN hub.endpoints e USING (endpoint_id)
		 WHERE e.name = 'central' AND a.outcome = 'delivered' AND a.response_excerpt = 'central hub: received'")
[ "$got" -ge 50 ] || fail "the attempts do not record the central acknowledgement ($got)"
ok "50 events relayed: once each, in order per key, event id as message id, type, aggregate and correlation ids and traceparent carried"

# ---- the central hub down while the site keeps publishing
central_ctl -m fast stop
publish 100
must_wait "SELECT circuit_state <> 'closed' FROM hub.endpoints WHERE name = 'central'" 30 "the circuit did not open with the central hub down"
publish 50
got=$(q "SELECT count(*) FROM hub.deliveries d JOIN hub.outbox o USING (event_id) WHERE o.payload ->> 't' = 'central' AND d.state <> 'delivered'")
[ "$got" -ge 150 ] || fail "only $got deliveries wait while the central hub is down, want 150"
ok "central hub down: the circuit opened, $got events wait in the site's outbox"
central_ctl start
all_in 90 || fail "after the central hub came back: $(qc "SELECT count(*) FROM hub.inbox WHERE source = 'site:dc-north'") of $N"
check_central "central back"
ok "central hub back: all $N events relayed once, in order per key"

# ---- kill -9 of the site's dispatcher during the catch-up
central_ctl -m fast stop
publish 300
central_ctl start
wait_c "SELECT count(*) >= $((N - 280)) FROM hub.inbox WHERE source = 'site:dc-north'" 60 || fail "the catch-up did not start"
pid=$(dispatcher_pid)
kill -9 "$pid"
have=$(qc "SELECT count(*) FROM hub.inbox WHERE source = 'site:dc-north'")
[ "$have" -lt "$N" ] || fail "the kill -9 came after the catch-up ($have of $N)"
all_in 120 || fail "after kill -9 of the dispatcher: $(qc "SELECT count(*) FROM hub.inbox WHERE source = 'site:dc-north'") of $N"
check_central "dispatcher killed"
ok "kill -9 of the site's dispatcher (pid $pid) during the catch-up at $have of $N: every event once, in order per key"
# (the server restarted every backend after the kill; wait for the dispatcher)
must_wait "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'logistics_hub dispatcher'" 60 "no dispatcher after the kill"

# ---- immediate stop of the central server during the catch-up
central_ctl -m fast stop
publish 300
central_ctl start
wait_c "SELECT count(*) >= $((N - 280)) FROM hub.inbox WHERE source = 'site:dc-north'" 60 || fail "the catch-up did not start (2)"
have=$(qc "SELECT count(*) FROM hub.inbox WHERE source = 'site:dc-north'")
[ "$have" -lt "$N" ] || fail "the central crash came after the catch-up ($have of $N)"
central_ctl -m immediate stop
central_ctl start
all_in 120 || fail "after the central crash: $(qc "SELECT count(*) FROM hub.inbox WHERE source = 'site:dc-north'") of $N"
check_central "central crashed"
dups=$(qc "SELECT sum(duplicate_count) FROM hub.inbox WHERE source = 'site:dc-north'")
ok "immediate stop of the central server during the catch-up at $have of $N: every event once, in order per key ($dups duplicates counted, not stored)"

# ---- a new password: set at the central hub and with
# hub.set_endpoint_credentials; the dispatcher reconnects with it (the
# relay's connections at the central hub are cut as well)
PW2='relay-Pw-rotated-22'
qc "ALTER ROLE site_relay PASSWORD '$PW2'" >/dev/null
q "SELECT hub.set_endpoint_credentials('central', auth_secret => '$PW2')" >/dev/null
sleep 1.5	# (the dispatcher reads an endpoint's settings at least once a second)
qc "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'site_relay'" >/dev/null
publish 30
all_in 60 || fail "after the password change: $(qc "SELECT count(*) FROM hub.inbox WHERE source = 'site:dc-north'") of $N"
check_central "password changed"
ok "a new password (hub.set_endpoint_credentials) is used for the next connection; all $N events once, in order per key"
PW1=$PW
PW=$PW2

# ---- a central mapping: relayed WMS events become central truth
qc "INSERT INTO hub.systems (system, role) VALUES ('dc_wms', 'wms')" \
   "INSERT INTO hub.status_map (system, lifecycle, code, state) VALUES ('dc_wms', 'order', 'PICKED', 'picked'), ('dc_wms', 'order', 'PACKED', 'packed')" \
   "SELECT hub.map_inbox('order.packing', 'order', 'dc_wms', '\$.order_id', '\$.status')" >/dev/null
q "SELECT hub.publish('order.packing', 'SO-77', '{\"order_id\": \"SO-77\", \"t\": \"central\", \"status\": \"PICKED\"}')" \
  "SELECT hub.publish('order.packing', 'SO-77', '{\"order_id\": \"SO-77\", \"t\": \"central\", \"status\": \"PACKED\"}')" >/dev/null
wait_c "SELECT state = 'packed' FROM hub.entity_state WHERE lifecycle = 'order' AND business_key = 'SO-77'" 60 ||
	fail "the relayed WMS events did not become central truth: $(qc "SELECT string_agg(message_type || ' ' || state || ' ' || coalesce(last_error, ''), '; ') FROM hub.inbox WHERE aggregate_id = 'SO-77'")"
ok "a central mapping (hub.map_inbox) applied the relayed WMS events: order SO-77 is packed at the central hub"

# ---- a WAN link that goes silent (packets dropped, no reset): a TCP proxy
# of the test's own stops forwarding; the calls in flight fail after the
# endpoint's timeout_ms plus logistics_hub.connect_timeout, new connections
# after the connect timeout, the circuit opens; once the link carries again,
# every event arrives once, in order per key
python3 test/receiver/wan_proxy.py "$PPORT" "$CPORT" "$CDIR/proxy.pid" &
PROXY_PID=$!
for _ in $(seq 50); do [ -s "$CDIR/proxy.pid" ] && break; sleep 0.1; done
q "SELECT hub.create_endpoint('wan', 'postgresql://site_relay@127.0.0.1:$PPORT/postgres', auth_secret => '$PW', timeout_ms => 1000)" \
  "UPDATE hub.endpoints SET circuit_cooloff = '500 ms' WHERE name = 'wan'" \
  "SELECT hub.subscribe('wan', 'order.*', filter => '{\"t\": \"wan\"}', retry_base => '100 ms', retry_max => '1 s', max_attempts => 1000)" >/dev/null
WN=0
publish_wan() {
	q "SELECT hub.publish('order.created', 'W-' || (i % 5), jsonb_build_object('order_id', 'W-' || (i % 5), 't', 'wan', 'n', i))
	   FROM generate_series($((WN + 1)), $((WN + $1))) i" >/dev/null
	WN=$((WN + $1))
}
wan_in() { wait_c "SELECT count(*) = $WN FROM hub.inbox WHERE payload ->> 't' = 'wan'" "$1"; }
check_wan() {
	local got
	got=$(qc "SELECT count(*) || ' ' || count(DISTINCT message_id) FROM hub.inbox WHERE payload ->> 't' = 'wan'")
	[ "$got" = "$WN $WN" ] || fail "$1: central inbox has '$got' WAN events (rows, distinct ids), want $WN $WN"
	got=$(qc "SELECT count(*) FROM (SELECT (payload ->> 'n')::int AS n, lag((payload ->> 'n')::int) OVER (PARTITION BY aggregate_id ORDER BY inbox_id) AS prev
				 FROM hub.inbox WHERE payload ->> 't' = 'wan') s WHERE prev > n")
	[ "$got" = 0 ] || fail "$1: $got WAN events arrived before an earlier event of their key"
}
publish_wan 20
wan_in 30 || fail "the events through the WAN proxy did not arrive"
kill -USR1 "$PROXY_PID"		# silent
publish_wan 30
must_wait "SELECT count(*) > 0 FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) JOIN hub.endpoints e USING (endpoint_id)
		   WHERE e.name = 'wan' AND (a.error LIKE '%no answer within%' OR a.error LIKE '%could not connect within%')" 30 \
	"no call failed on its timeout while the WAN was silent: $(q "SELECT string_agg(DISTINCT left(a.error, 80), '; ') FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'wan'")"
must_wait "SELECT circuit_state <> 'closed' FROM hub.endpoints WHERE name = 'wan'" 30 "the circuit did not open while the WAN was silent"
got=$(qc "SELECT count(*) FROM hub.inbox WHERE payload ->> 't' = 'wan'")
kill -USR1 "$PROXY_PID"		# carrying again
wan_in 60 || fail "after the WAN came back: $(qc "SELECT count(*) FROM hub.inbox WHERE payload ->> 't' = 'wan'") of $WN"
check_wan "WAN back"
ok "a silent WAN: calls failed on their timeout, the circuit opened with $got of $WN through; once it carried again all $WN arrived once, in order per key"

# ---- one event the central hub refuses: it alone fails, the events sent in
# the same transaction are given back and delivered without it
qc "ALTER SYSTEM SET logistics_hub.max_payload_size = '1kB'" "SELECT pg_reload_conf()" >/dev/null
BIG=$(q "SELECT hub.publish('order.created', 'BIG', jsonb_build_object('order_id', 'BIG', 't', 'central', 'pad', repeat('x', 2000)))")
q "SELECT hub.publish('order.created', 'B-' || i, jsonb_build_object('order_id', 'B-' || i, 't', 'central', 'n', i))
   FROM generate_series(1, 40) i" >/dev/null
wait_c "SELECT count(*) = 40 FROM hub.inbox WHERE aggregate_id LIKE 'B-%'" 60 ||
	fail "the events beside a refused one were not delivered: $(qc "SELECT count(*) FROM hub.inbox WHERE aggregate_id LIKE 'B-%'")"
must_wait "SELECT attempts >= 2 AND last_error LIKE '%54000%' FROM hub.deliveries WHERE event_id = '$BIG'" 30 \
	"the refused event did not fail with the central error: $(q "SELECT attempts || ' ' || coalesce(last_error, '') FROM hub.deliveries WHERE event_id = '$BIG'")"
got=$(qc "SELECT count(*) FROM hub.inbox WHERE aggregate_id = 'BIG'")
[ "$got" = 0 ] || fail "the refused event is in the central inbox"
got=$(q "SELECT count(*) FROM hub.deliveries d JOIN hub.outbox o USING (event_id) WHERE o.aggregate_id LIKE 'B-%' AND d.state <> 'delivered'")
[ "$got" = 0 ] || fail "$got events beside the refused one not delivered"
ok "a payload the central hub refuses (54000) fails alone and is retried; the 40 events beside it were delivered"

# ---- the egress policy at connect time: a name whose addresses the policy
# no longer admits is not connected to
q "ALTER SYSTEM SET logistics_hub.egress_allow = 'public'" "SELECT pg_reload_conf()" >/dev/null
sleep 1
q "SELECT hub.create_endpoint('named', 'postgresql://site_relay@localhost:$CPORT/postgres', auth_secret => '$PW', max_concurrency => 1)" \
  "SELECT hub.subscribe('named', 'order.*', filter => '{\"t\": \"named\"}', max_attempts => 1)" >/dev/null
E=$(push_publish named NM-1)
must_wait "SELECT state = 'dead' FROM hub.deliveries WHERE event_id = '$E'" 30 "the delivery to a name outside the policy did not fail"
got=$(q "SELECT last_error FROM hub.deliveries WHERE event_id = '$E'")
case $got in *"address 127.0.0.1 of host \"localhost\" is not allowed"*) ;; *) fail "egress at connect time: '$got'" ;; esac
got=$(qc "SELECT count(*) FROM hub.inbox WHERE aggregate_id = 'NM-1'")
[ "$got" = 0 ] || fail "the event reached the central hub through an address outside the policy"
ok "a host name resolving to an address outside the egress policy is not connected to"

# ---- the password appears nowhere in plain text
for f in "$LH_CLUSTER_DIR/server.log" "$CDIR/server.log"; do
	grep -q -e "$PW1" -e "$PW2" "$f" && fail "a password is in $f"
done
got=$(q "SELECT count(*) FROM hub.attempts WHERE response_excerpt LIKE '%relay-Pw-%' OR error LIKE '%relay-Pw-%'")
[ "$got" = 0 ] || fail "the password is in hub.attempts"
ok "the central password is in no server log and no attempt"
push_finish_any() {
	if grep -E "PANIC|TRAP:|segfault|terminated by signal 11" "$LH_CLUSTER_DIR/server.log"; then
		fail "the site's server log shows a crash"
	fi
	ok "no crash in the site's server log besides the kill -9 of the test"
}
push_finish_any
