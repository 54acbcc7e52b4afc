#!/usr/bin/env bash
# test/harness/demo.sh --- `make demo`: install what is missing, build, start
# a throwaway cluster named "demo" in .cluster/demo with the library
# preloaded, create the extension and run the product tour in
# test/demo/*.sql, in order, printing every statement and its result.
# The demo cluster is left running so that you can look around with psql;
# `make demo` again replaces it, `make stop-demo` removes it.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$LH_TOP"
PORT=${LH_DEMO_PORT:-54330}

if [ "${1:-}" = "--stop" ]; then
	lh_cluster_stop demo
	echo "demo cluster stopped and removed"
	exit 0
fi

lh_prepare demo "$PORT"
psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "CREATE EXTENSION logistics_hub"
for f in test/demo/*.sql; do
	echo
	echo "################ $(basename "$f")"
	psql -X -e -v ON_ERROR_STOP=1 -d postgres -f "$f" 2>&1
done

cat <<TXT

The demo cluster is still running. Connect with:

    psql -h $PGHOST -p $PGPORT -U postgres postgres

Stop and remove it with:  make stop-demo
TXT
