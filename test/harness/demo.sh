#!/usr/bin/env bash
# test/harness/demo.sh --- `make demo`: install what is missing, build, start
# a throwaway cluster named "demo" in .cluster/demo with the library
# preloaded, a dispatcher and an inbox worker, start the simulated ERP, WMS,
# route planner, carrier and customer portal (test/sim/systems.py) on
# loopback, configure the hub for them (test/sim/hub_config.sql, printed)
# and run the seeds' scenario (test/sim/scenario.py, the same driver as
# test/scripts/scenario.sh), then the tour of the identifier types
# (test/demo/identifiers.sql).  The cluster and the simulated systems are
# left running so that you can look around with psql; `make demo` again
# replaces them, `make stop-demo` removes them.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/../sim/sim.sh"
cd "$LH_TOP"
PORT=${LH_DEMO_PORT:-54330}
SIM_RUN_DIR=$LH_TOP/.cluster/demo-sim

# what an earlier demo left running (the receiver of demos before the
# scenario, too)
stop_demo_processes()
{
	sim_stop "$SIM_RUN_DIR"
	rm -rf "$SIM_RUN_DIR"
	[ -f "$LH_TOP/.cluster/demo-receiver/pid" ] && kill "$(cat "$LH_TOP/.cluster/demo-receiver/pid")" 2>/dev/null
	rm -rf "$LH_TOP/.cluster/demo-receiver"
	return 0
}

if [ "${1:-}" = "--stop" ]; then
	stop_demo_processes
	lh_cluster_stop demo
	echo "demo cluster and simulated systems stopped and removed"
	exit 0
fi

stop_demo_processes
start=$(date +%s)
lh_prepare demo "$PORT" "${SIM_CONF[@]}"
# the simulated systems outlive this script like the cluster does (make
# stop-demo stops both)
sim_start "$SIM_RUN_DIR"
disown "$SIM_PID" 2>/dev/null || true
SIM_PID=

cat <<TXT

logistics_hub demo: the integration hub between an ERP, a WMS, route planning,
a carrier and a customer portal, each simulated on loopback with its own
vocabulary, paging and quirks:

$(python3 -c 'import json, sys
for k, v in json.load(open(sys.argv[1])).items():
    print("    %-8s http://127.0.0.1:%d   (GET /_state shows what it holds)" % (k, v))' "$SIM_RUN_DIR/ports")

==============================================================================
The hub's configuration, in SQL (test/sim/hub_config.sql)
==============================================================================
TXT
# the file without its header comment and psql settings
sed -n '/^-- -* endpoints/,$p' test/sim/hub_config.sql
sim_configure
echo "(configuration loaded: $(psql -X -A -t -d postgres -c "SELECT count(*) FROM hub.pollers") pollers, $(psql -X -A -t -d postgres -c "SELECT count(*) FROM hub.subscriptions") subscriptions)"

rc=0
sim_run demo || rc=$?

echo
echo "=============================================================================="
echo "The identifier types (test/demo/identifiers.sql)"
echo "=============================================================================="
psql -X -e -q -v ON_ERROR_STOP=1 -P footer=off -d postgres -f test/demo/identifiers.sql 2>&1

cat <<TXT

The demo took $(($(date +%s) - start)) s.  The cluster and the simulated systems are still
running.  Connect with:

    psql -h $PGHOST -p $PGPORT -U postgres postgres

and try, for example:

    SELECT * FROM hub.trace(aggregate => 'SO-1003');
    SELECT * FROM hub.status_history WHERE business_key = 'SO-1001' ORDER BY history_id;
    SELECT * FROM hub.poll_requests ORDER BY request_id DESC LIMIT 20;

What each simulated system holds: GET /_state at its URL above (its log:
$SIM_RUN_DIR/systems.log).
Stop and remove everything with:  make stop-demo
TXT
exit "$rc"
