#!/usr/bin/env bash
# test/scripts/retention_worker.sh --- dispatcher 0's retention runs, live:
# it removes inbox messages past the deduplication window (and leaves the
# ones not processed yet, or processed within the window), and a full slice
# (10,000) is followed at once by the next one instead of waiting for the
# next logistics_hub.retention_interval.
source test/harness/lib.sh
port=$((PGPORT + 110))
trap 'lh_cluster_stop retention-$port' EXIT
# (no dispatcher until the data is in place; the first retention run comes
# one interval after the dispatcher starts)
lh_cluster_start "retention-$port" "$port" "logistics_hub.retention_interval = 30" \
	"logistics_hub.inbox_retention_period = 3600"

q() { psql -X -A -t -q -v ON_ERROR_STOP=1 -d postgres -c "$1"; }
fail() { echo "FAIL: $*"; exit 1; }

q "CREATE EXTENSION logistics_hub"
# 10,050 messages processed two hours ago (set directly: the processing is
# not what is tested here), one processed just now, one not processed yet;
# and the mark a retention run two hours ago would have left
q "SELECT count(hub.receive('wms', 'old-' || g, 'ok.x', '{}')) FROM generate_series(1, 10050) g" >/dev/null
q "UPDATE hub.inbox SET state = 'done', next_attempt_at = NULL, processed_at = now() - interval '2 hours'"
q "INSERT INTO hub._retention_marks (at, snapshot_xmin, inbox_upto)
   SELECT now() - interval '2 hours', pg_snapshot_xmin(pg_current_snapshot()), max(inbox_id) FROM hub.inbox"
q "SELECT hub.receive('wms', 'recent', 'ok.x', '{}')" >/dev/null
q "UPDATE hub.inbox SET state = 'done', next_attempt_at = NULL, processed_at = now() WHERE message_id = 'recent'"
q "SELECT hub.receive('wms', 'waiting', 'ok.x', '{}', now() - interval '3 hours')" >/dev/null

q "ALTER SYSTEM SET logistics_hub.dispatchers = 1"
q "SELECT pg_reload_conf()" >/dev/null

# the first run comes about 30 s after the dispatcher started: wait (at most
# 60 s) for the first removal, then the rest must follow within 10 s, well
# before the next interval
old() { q "SELECT count(*) FROM hub.inbox WHERE message_id LIKE 'old-%'"; }
# old_until TEST LIMIT SECONDS --- poll until [ old TEST LIMIT ] holds; the
# count left then
old_until() {
	local i
	for i in $(seq $(($3 * 5))); do
		[ "$(old)" "$1" "$2" ] && break
		sleep 0.2
	done
	old
}
n=$(old_until -lt 10050 60)
[ "$n" -lt 10050 ] || fail "dispatcher 0 removed no old inbox message within 60 s"
n=$(old_until -eq 0 10)
[ "$n" -eq 0 ] || fail "$n old inbox messages left 10 s after the first slice: the next slice did not follow at once"
echo "ok: dispatcher 0's retention removed the 10,050 inbox messages past the window, the second slice right after the first"

got=$(q "SELECT string_agg(message_id || ':' || state, ',' ORDER BY inbox_id) FROM hub.inbox")
[ "$got" = "recent:done,waiting:new" ] || fail "the inbox holds '$got'"
echo "ok: a message processed within the window and one not processed yet stay"
got=$(q "SELECT hub.receive('wms', 'old-1', 'ok.x', '{}')")
[ "$got" = t ] || fail "a message sent again after its row went gave '$got'"
echo "ok: a message sent again after its row went is accepted as new"

! grep -q "retention failed" "$LH_CLUSTER_DIR/server.log" ||
	fail "the server log shows a failed retention run: $(grep "retention failed" "$LH_CLUSTER_DIR/server.log" | head -1)"
echo "ok: no failed retention run in the server log"
