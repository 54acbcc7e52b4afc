#!/usr/bin/env bash
# test/scripts/no_preload.sh --- loading the library never breaks plain use:
# in a cluster that does NOT preload logistics_hub, CREATE EXTENSION works
# and the identifier types load on demand in every new backend.
source test/harness/lib.sh
port=$((PGPORT + 100))
trap 'lh_cluster_stop nopreload-$port' EXIT
LH_NO_PRELOAD=1 lh_cluster_start "nopreload-$port" "$port"

q() { psql -X -A -t -v ON_ERROR_STOP=1 -d postgres -c "$1"; }
fail() { echo "FAIL: $*"; exit 1; }

[ -z "$(q 'SHOW shared_preload_libraries')" ] || fail "the cluster preloads a library"
q "CREATE EXTENSION logistics_hub" >/dev/null
got=$(q "SELECT '96385074'::hub.gtin::text || ' ' || 'csqu 305438 3'::hub.container_no::text")
[ "$got" = "00000096385074 CSQU3054383" ] || fail "types in a fresh backend gave '$got'"
got=$(q "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'logistics_hub%'")
[ "$got" = 0 ] || fail "background workers started without preloading ($got)"
echo "ok: extension and types work without shared_preload_libraries; no workers started"
