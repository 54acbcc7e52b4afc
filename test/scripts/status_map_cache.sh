#!/usr/bin/env bash
# test/scripts/status_map_cache.sh --- the backend-local mapping cache is
# invalidated across sessions: a long-lived session that has already loaded
# its cache sees a mapping changed (updated, added, deleted) by another
# session on its next statement, and does not see a change rolled back.
set -euo pipefail
db=status_map_cache
psql -X -q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
psql -X -q -d "$db" -c "CREATE EXTENSION logistics_hub"

coproc S1 { psql -X -q -A -t -d "$db" 2>&1; }
# s1 QUERY --- run QUERY in the long-lived session and print its output
s1()
{
	local line out=""
	printf '%s\nSELECT %s;\n' "$1" "'--end--'" >&"${S1[1]}"
	while IFS= read -r -t 20 line <&"${S1[0]}"; do
		[ "$line" = "--end--" ] && break
		out+="$line"
	done
	printf '%s' "$out"
}
s2() { psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$db" -c "$1" >/dev/null; }
expect() { [ "$2" = "$3" ] || { echo "FAIL: $1: expected '$3', got '$2'"; exit 1; }; echo "ok: $1"; }

pid=$(s1 "SELECT pg_backend_pid();")
q="SELECT coalesce((hub.try_map_status('x12_214', 'shipment', 'X6')).state, 'none');"
expect "session 1 loads the built-in mapping" "$(s1 "$q")" "in_transit"
s2 "UPDATE hub.status_map SET state = 'out_for_delivery' WHERE system = 'x12_214' AND code = 'X6'"
expect "an update in session 2 is seen by session 1's next statement" "$(s1 "$q")" "out_for_delivery"
s2 "BEGIN; UPDATE hub.status_map SET state = 'delivered' WHERE system = 'x12_214' AND code = 'X6'; ROLLBACK;"
expect "a rolled-back update is not seen" "$(s1 "$q")" "out_for_delivery"
s2 "DELETE FROM hub.status_map WHERE system = 'x12_214' AND code = 'X6'"
expect "a delete is seen" "$(s1 "$q")" "none"
s2 "INSERT INTO hub.status_map (system, lifecycle, code, state) VALUES ('x12_214', 'shipment', 'X6', 'in_transit')"
expect "an insert is seen" "$(s1 "$q")" "in_transit"
expect "all of it in one long-lived backend" "$(s1 "SELECT pg_backend_pid();")" "$pid"
exec {S1[1]}>&-
psql -X -q -d postgres -c "DROP DATABASE $db WITH (FORCE)"
