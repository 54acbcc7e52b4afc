#!/usr/bin/env bash
# test/sim/sim.sh --- what `make demo` (test/harness/demo.sh) and the
# scenario test (test/scripts/scenario.sh) share: start the simulated
# systems, configure the hub for them, run the scenario.  Source it after
# test/harness/lib.sh, with a cluster running (PGHOST, PGPORT, PGUSER set)
# whose configuration has the lines in SIM_CONF.
#
#   sim_start DIR        start test/sim/systems.py on free 127.0.0.1 ports
#                        (its ports in DIR/ports, its log in DIR/systems.log),
#                        with fresh credentials and a fresh signing secret;
#                        sets SIM_PID
#   sim_configure        create the extension and run test/sim/hub_config.sql
#                        with the systems' URLs and credentials
#   sim_run MODE         run test/sim/scenario.py (demo or test); its status
#   sim_stop [DIR]       stop the systems (of DIR's pid file, without SIM_PID)

SIM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# what the scenario needs of the cluster: the workers, woken fast
SIM_CONF=("logistics_hub.dispatchers = 1" "logistics_hub.inbox_workers = 1"
	"logistics_hub.dispatcher_naptime = 200ms" "logistics_hub.inbox_naptime = 200ms"
	"logistics_hub.egress_allow = '127.0.0.1'")

sim_start()
{
	local dir=$1 i
	SIM_RUN_DIR=$dir
	mkdir -p "$dir"
	rm -f "$dir/ports"
	# credentials and secret made up for this run (never the same twice)
	read -r SIM_ERP_SECRET SIM_WMS_KEY SIM_TMS_KEY SIM_CARRIER_KEY SIM_PORTAL_SECRET < <(python3 -c '
import base64, secrets
print(secrets.token_hex(16), secrets.token_hex(16), secrets.token_hex(16), "EZTK" + secrets.token_hex(12),
      "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode())')
	SIM_ERP_CLIENT=hub-$(date +%s)
	# the credentials go to the systems in a file only their owner reads,
	# not on a command line anyone may list
	(umask 077 && printf '%s\n' "--erp-client=$SIM_ERP_CLIENT:$SIM_ERP_SECRET" "--wms-key=$SIM_WMS_KEY" \
		"--tms-key=$SIM_TMS_KEY" "--carrier-key=$SIM_CARRIER_KEY" \
		"--signing-secret=$SIM_PORTAL_SECRET" >"$dir/args")
	python3 "$SIM_DIR/systems.py" --port-file "$dir/ports" --log "$dir/systems.log" "@$dir/args" \
		>"$dir/systems.out" 2>&1 &
	SIM_PID=$!
	echo "$SIM_PID" >"$dir/pid"
	for i in $(seq 100); do
		[ -s "$dir/ports" ] && return 0
		kill -0 "$SIM_PID" 2>/dev/null || break
		sleep 0.05
	done
	cat "$dir/systems.out" >&2
	return 1
}

sim_url() { python3 -c 'import json, sys; print("http://127.0.0.1:%d" % json.load(open(sys.argv[1]))[sys.argv[2]])' "$SIM_RUN_DIR/ports" "$1"; }

sim_configure()
{
	# the URLs and credentials as psql variables, from a file only its
	# owner reads rather than on psql's command line
	(umask 077 && {
		for v in erp wms tms carrier portal; do printf '\\set %s '\''%s'\''\n' "$v" "$(sim_url "$v")"; done
		printf '\\set %s '\''%s'\''\n' erp_client_id "$SIM_ERP_CLIENT" erp_client_secret "$SIM_ERP_SECRET" \
			wms_key "$SIM_WMS_KEY" tms_key "$SIM_TMS_KEY" carrier_key "$SIM_CARRIER_KEY" \
			portal_secret "$SIM_PORTAL_SECRET"
	} >"$SIM_RUN_DIR/vars.psql")
	psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "SET client_min_messages = warning" \
		-c "CREATE EXTENSION logistics_hub" &&
	psql -X -q -v ON_ERROR_STOP=1 -d postgres -o /dev/null \
		-f "$SIM_RUN_DIR/vars.psql" -f "$SIM_DIR/hub_config.sql"
}

sim_run() { python3 "$SIM_DIR/scenario.py" --ports "$SIM_RUN_DIR/ports" --mode "$1"; }

sim_stop()
{
	local dir=${1:-${SIM_RUN_DIR:-}}
	if [ -n "${SIM_PID:-}" ]; then
		kill "$SIM_PID" 2>/dev/null
	elif [ -n "$dir" ] && [ -f "$dir/pid" ]; then
		kill "$(cat "$dir/pid")" 2>/dev/null
	fi
	SIM_PID=
	return 0
}
