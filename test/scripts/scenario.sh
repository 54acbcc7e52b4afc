#!/usr/bin/env bash
# test/scripts/scenario.sh --- the seeds' scenario end to end, as `make demo`
# runs it (test/sim/: the same driver, in test mode): a cluster with a
# dispatcher and an inbox worker, the simulated ERP, WMS, route planner,
# carrier and customer portal (test/sim/systems.py) on loopback, the hub
# configured for them in SQL (test/sim/hub_config.sql).  The driver plays
# the outside world (orders, picks, a short pick, labels, scans out of
# order, an ERP outage, a return) and then asserts:
#   - the final state of every simulated system: what the ERP, WMS, route
#     planner, carrier and portal each hold for each order and the return
#   - the hub's entity state (orders, packages, the return), its business
#     exceptions (none), dead letters (none), readiness fired once per order
#   - that every committed event reached each subscribed system exactly
#     once per webhook-id, in publishing order per key
source test/harness/lib.sh
source test/sim/sim.sh

NAME=scenario-$((PGPORT + 160))
cleanup() { sim_stop; lh_cluster_stop "$NAME"; }
trap cleanup EXIT
lh_cluster_start "$NAME" $((PGPORT + 160)) "${SIM_CONF[@]}"
sim_start "$LH_CLUSTER_DIR/sim"
sim_configure
set +e
sim_run test
rc=$?
set -e
if grep -E "terminated by signal|exited with exit code|PANIC|TRAP:" "$LH_CLUSTER_DIR/server.log"; then
	echo "FAIL: the server log shows a worker crash or exit"
	rc=1
fi
if [ "$rc" -ne 0 ]; then
	echo "--- server log (tail)"
	tail -30 "$LH_CLUSTER_DIR/server.log"
fi
exit "$rc"
