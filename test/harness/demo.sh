#!/usr/bin/env bash
# test/harness/demo.sh --- `make demo`: install what is missing, build, start
# a throwaway cluster named "demo" in .cluster/demo with the library
# preloaded, create the extension and run the product tour in
# test/demo/*.sql, in order, printing every statement and its result.
# The demo cluster is left running so that you can look around with psql;
# `make demo` again replaces it, `make stop-demo` removes it.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/../receiver/receiver.sh"
cd "$LH_TOP"
PORT=${LH_DEMO_PORT:-54330}
RECV_DIR=$LH_TOP/.cluster/demo-receiver

# the receiver of an earlier demo, if it still runs
stop_receiver()
{
	[ -f "$RECV_DIR/pid" ] && kill "$(cat "$RECV_DIR/pid")" 2>/dev/null
	rm -rf "$RECV_DIR"
}

if [ "${1:-}" = "--stop" ]; then
	stop_receiver
	lh_cluster_stop demo
	echo "demo cluster stopped and removed"
	exit 0
fi

stop_receiver
lh_prepare demo "$PORT" "logistics_hub.dispatchers = 1" "logistics_hub.egress_allow = '127.0.0.1'"
# the loopback receiver plays the ERP and the portal; it outlives this
# script like the cluster does (make stop-demo stops both)
lh_receiver_start "$RECV_DIR"
echo "$RECV_PID" >"$RECV_DIR/pid"
disown "$RECV_PID" 2>/dev/null || true
psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "CREATE EXTENSION logistics_hub"
for f in test/demo/*.sql; do
	echo
	echo "################ $(basename "$f")"
	psql -X -e -v ON_ERROR_STOP=1 -v recv="$RECV_URL" -d postgres -f "$f" 2>&1
done

cat <<TXT

The demo cluster is still running. Connect with:

    psql -h $PGHOST -p $PGPORT -U postgres postgres

What the receiver got (one JSON line a request): $RECV_LOG
Stop and remove both with:  make stop-demo
TXT
