#!/usr/bin/env bash
# test/scripts/metrics_exporter.sh --- the hub's metrics the two ways an
# operator collects them, against a database with known data:
#   1. hub.metrics() called by a login role granted hub_reader passes
#      `promtool check metrics` (Debian's prometheus package) and has the
#      samples of that data;
#   2. Debian's prometheus-postgres-exporter, started on 127.0.0.1 with
#      sql/postgres_exporter.yml as its --extend.query-path and connected
#      through the Unix socket as that role, serves the hub's metrics on
#      /metrics, with the values of that data; its whole page passes promtool
#      too.  The exporter is stopped on exit.
set -euo pipefail
db=metrics_exporter
role=metrics_exporter_login
WORK=$(mktemp -d)
EXPORTER_PID=
cleanup()
{
	local rc=$?
	if [ -n "$EXPORTER_PID" ]; then
		kill "$EXPORTER_PID" 2>/dev/null || true
		wait "$EXPORTER_PID" 2>/dev/null || true
	fi
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; [ -f "$WORK/exporter.log" ] && tail -20 "$WORK/exporter.log"; exit 1; }
ok() { echo "ok: $*"; }

command -v promtool >/dev/null || fail "promtool is missing (Debian package prometheus, in LH_PACKAGES)"
command -v prometheus-postgres-exporter >/dev/null ||
	fail "prometheus-postgres-exporter is missing (Debian package of that name, in LH_PACKAGES)"

psql -X -q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db" \
	-c "DROP ROLE IF EXISTS $role" -c "CREATE DATABASE $db"
q() { psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$db" "$@"; }
q -c "CREATE EXTENSION logistics_hub" -c "CREATE ROLE $role LOGIN IN ROLE hub_reader" >/dev/null
# known data: an endpoint whose name needs escaping, one dead and one
# pending delivery, an open exception, a stale order, a message nobody
# handles, an order waiting for release past its threshold
q <<'SQL' >/dev/null
SELECT hub.create_endpoint(E'erp "main"\\eu', 'http://127.0.0.1:9/erp', 'erp');
SELECT hub.subscribe(E'erp "main"\\eu', 'order.*', max_attempts => 1);
SELECT hub.publish('order.created', 'SO-1', '{"order_id": "SO-1"}');
SELECT hub.publish('order.created', 'SO-2', '{"order_id": "SO-2"}');
SELECT hub._route_events();
SELECT hub.fail_delivery(c.delivery_id, c.lease_token, 500, NULL, 9, 'boom')
FROM hub.claim_deliveries(1, 'w') c;
INSERT INTO hub.exceptions (kind, lifecycle, business_key, code) VALUES ('unknown_code', 'order', 'SO-9', 'X1');
SELECT hub.apply_canonical_status('order', 'SO-OLD', 'sap', 'created', now() - interval '30 hours', 'created');
SELECT hub.receive('wms', 'M-1', 'wms.nothing', '{}');
SELECT hub.process_inbox(10);
SQL

# ---- 1. hub.metrics() through promtool
psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$db" -U "$role" -c "SELECT hub.metrics()" >"$WORK/hub.prom"
promtool check metrics <"$WORK/hub.prom" >"$WORK/promtool.out" 2>&1 ||
	{ cat "$WORK/promtool.out"; fail "promtool check metrics refused hub.metrics()"; }
ok "promtool check metrics accepts hub.metrics() ($(grep -c '^# TYPE' "$WORK/hub.prom") families, $(grep -vc '^#' "$WORK/hub.prom") samples)"
grep -qxF 'logistics_hub_endpoint_dead_events{endpoint="erp \"main\"\\eu"} 1' "$WORK/hub.prom" ||
	fail "hub.metrics() lacks the dead event of the endpoint, label escaped: $(grep dead_events "$WORK/hub.prom")"
grep -qxF 'logistics_hub_open_exceptions{kind="unknown_code"} 1' "$WORK/hub.prom" || fail "hub.metrics() lacks the open exception"
ok "hub.metrics() read by a hub_reader login shows the data (dead event with its escaped endpoint label, open exception)"

# ---- 2. the exporter on loopback
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
DATA_SOURCE_NAME="host=$PGHOST port=$PGPORT dbname=$db user=$role sslmode=disable" \
	prometheus-postgres-exporter --web.listen-address="127.0.0.1:$port" \
	--extend.query-path="$PWD/sql/postgres_exporter.yml" --log.level=warn >"$WORK/exporter.log" 2>&1 &
EXPORTER_PID=$!
scrape()
{
	python3 - "$port" <<'PY'
import sys, urllib.request
print(urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=10).read().decode())
PY
}
for _ in $(seq 1 100); do
	scrape >"$WORK/scrape.prom" 2>/dev/null && grep -q '^logistics_hub_' "$WORK/scrape.prom" && break
	kill -0 "$EXPORTER_PID" 2>/dev/null || fail "the exporter exited"
	sleep 0.2
done
grep -q '^logistics_hub_' "$WORK/scrape.prom" || { head -40 "$WORK/scrape.prom"; fail "the exporter serves no logistics_hub_ metric"; }
listen=$(python3 - "$EXPORTER_PID" <<'PY'
import os, sys
# the exporter's listening sockets, from /proc: every local address it binds
inodes = set()
for fd in os.listdir("/proc/%s/fd" % sys.argv[1]):
    try:
        t = os.readlink("/proc/%s/fd/%s" % (sys.argv[1], fd))
    except OSError:
        continue
    if t.startswith("socket:["):
        inodes.add(t[8:-1])
out = []
for f in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(f).readlines()[1:]:
        p = line.split()
        if p[3] == "0A" and p[9] in inodes:
            out.append(p[1])
print(" ".join(sorted(out)))
PY
)
case "$listen" in
	"0100007F:"*) [ "${listen#* }" = "$listen" ] || fail "the exporter listens on more than loopback: $listen" ;;
	*) fail "the exporter does not listen on 127.0.0.1 only: $listen" ;;
esac
ok "prometheus-postgres-exporter listens on 127.0.0.1:$port only"

# (the exporter adds the label server="<host>:<port>" to every sample: left out here)
sed -E 's/([{,])server="[^"]*"/\1/; s/\{,/{/; s/,\}/}/; s/\{\}//' "$WORK/scrape.prom" >"$WORK/scrape.norm"
expect()
{
	grep -qE "^$1 $2\$" "$WORK/scrape.norm" || fail "$3: no line '$1 $2' in $(grep -F "${1%%\\\{*}" "$WORK/scrape.norm" | head -5)"
}
expect 'logistics_hub_endpoint_dead_events\{endpoint="erp \\"main\\"\\\\eu"\}' '1' "the endpoint's dead event"
expect 'logistics_hub_endpoint_backlog_events\{endpoint="erp \\"main\\"\\\\eu"\}' '1' "the endpoint's pending event"
expect 'logistics_hub_exceptions_open\{kind="unknown_code"\}' '1' "the open exception"
expect 'logistics_hub_keys_stale\{lifecycle="order"\}' '1' "the stale order"
expect 'logistics_hub_inbox_messages\{state="unhandled"\}' '1' "the unhandled message"
expect 'logistics_hub_business_orders_awaiting_release' '1' "the order waiting for release"
expect 'logistics_hub_cycle_samples\{measure="order_to_ship"\}' '0' "no order shipped"
ok "the exporter's scrape has the hub's metrics with the data: $(grep -c '^logistics_hub_' "$WORK/scrape.prom") samples logistics_hub_*"
grep -q '^pg_up 1' "$WORK/scrape.prom" || fail "the exporter's own pg_up is not 1"
promtool check metrics <"$WORK/scrape.prom" >"$WORK/promtool2.out" 2>&1 ||
	{ grep -i logistics_hub "$WORK/promtool2.out" && fail "promtool finds fault with the hub's metrics in the scrape"; true; }
ok "promtool finds no fault with the hub's metrics in the exporter's page"
grep -qiE 'level=(error|warn).*logistics_hub' "$WORK/exporter.log" && fail "the exporter logged an error about a hub query: $(grep -iE 'logistics_hub' "$WORK/exporter.log" | head -3)"
ok "the exporter ran every hub query without an error"
kill "$EXPORTER_PID" && wait "$EXPORTER_PID" 2>/dev/null || true
EXPORTER_PID=
psql -X -q -d postgres -c "DROP DATABASE $db" -c "DROP ROLE $role"
