#!/usr/bin/env bash
# test/harness/run-tests.sh --- `make test`: install what is missing, build,
# start a throwaway cluster with the library preloaded and run every test
# layer against it:
#   1. pg_regress       test/sql/*.sql against test/expected/*.out (exact text)
#   2. isolation        test/isolation/specs/*.spec (pg_isolation_regress)
#   3. pgTAP            test/pgtap/*.sql through pg_prove, each file in a fresh
#                       database made from a template
#   4. scripts          test/scripts/*.sh, each a self-contained test that exits
#                       non-zero on failure (sweeps, HTTP tests)
#   5. tap              test/tap/*.pl through prove: crash, restart and
#                       shutdown tests, each on clusters of its own made by
#                       PostgreSQL::Test::Cluster (not the cluster above)
# LH_TEST_ONLY=security runs the security layer: the pgTAP files and scripts
# named security_*, privileges.sql and secrets.sql.
# It ends with one line "N passed, N failed" and exits non-zero on any failure.
# The cluster is removed on exit, whatever happens.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$LH_TOP"

PORT=${LH_TEST_PORT:-54329}
ONLY=${LH_TEST_ONLY:-}		# e.g. LH_TEST_ONLY=pgtap to run one layer, security for the security tests
passed=0
failed=0
failures=()

count() { passed=$((passed + $1)); failed=$((failed + $2)); }

trap 'lh_cluster_stop test-$PORT' EXIT
lh_prepare "test-$PORT" "$PORT" "max_connections = 100"

OUT=${LH_TEST_OUT:-$LH_TOP/test/results}
rm -rf "$OUT"
mkdir -p "$OUT"
[ "$(id -u)" -eq 0 ] && chown "$CLUSTER_USER" "$OUT"

want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ] || { [ "$ONLY" = security ] && { [ "$1" = pgtap ] || [ "$1" = scripts ]; }; }; }

# the security layer (LH_TEST_ONLY=security): the pgTAP files and scripts
# of issue 16's threat model, run from their usual layers
security_file() { case $(basename "$1") in security_*|privileges.sql|secrets.sql) return 0 ;; esac; return 1; }
# LH_TEST_FILTER=REGEX: of the pgTAP files, scripts and TAP tests, only those
# whose file name matches (e.g. 'poll' while working on the pollers)
FILTER=${LH_TEST_FILTER:-}
in_run() {
	{ [ "$ONLY" != security ] || security_file "$1"; } &&
		{ [ -z "$FILTER" ] || [[ $(basename "$1") =~ $FILTER ]]; }
}

# run_regress LAYER DRIVER INPUTDIR OUTDIR TEST... --- run pg_regress or
# pg_isolation_regress (same options, same output) and count its results;
# a driver that fails before running a test counts as one failure.
run_regress()
{
	local layer=$1 driver=$2 inputdir=$3 outdir=$4 rc p f
	shift 4
	mkdir -p "$outdir"
	set +e
	"$driver" --inputdir="$inputdir" --outputdir="$outdir" --bindir="$PG_BIN" \
		--host="$PGHOST" --port="$PGPORT" --user=postgres --dbname="${layer}_hub" \
		--load-extension=logistics_hub "$@" >"$outdir/$layer.log" 2>&1
	rc=$?
	set -e
	cat "$outdir/$layer.log"
	p=$(grep -cE '\.\.\. ok|^ok ' "$outdir/$layer.log" || true)
	f=$(grep -cE '\.\.\. FAILED|^not ok ' "$outdir/$layer.log" || true)
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
	count "$p" "$f"
	if [ "$f" -ne 0 ]; then
		failures+=("$layer: see $outdir/regression.diffs")
		head -200 "$outdir/regression.diffs" 2>/dev/null || true
	fi
}

# 1. pg_regress
if want regress && compgen -G "test/sql/*.sql" >/dev/null; then
	lh_log "pg_regress"
	run_regress regress "$PGXS_DIR/src/test/regress/pg_regress" test "$OUT" \
		$(ls test/sql/*.sql | xargs -n1 basename | sed 's/\.sql$//' | sort)
fi

# 2. isolation specs
if want isolation && compgen -G "test/isolation/specs/*.spec" >/dev/null; then
	lh_log "pg_isolation_regress"
	run_regress isolation "$PGXS_DIR/src/test/isolation/pg_isolation_regress" test/isolation "$OUT/isolation" \
		$(ls test/isolation/specs/*.spec | xargs -n1 basename | sed 's/\.spec$//' | sort)
fi

# 3. pgTAP
if want pgtap && compgen -G "test/pgtap/*.sql" >/dev/null; then
	lh_log "pgTAP"
	psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "CREATE DATABASE tap_template" \
		-c "\\c tap_template" -c "CREATE EXTENSION pgtap" -c "CREATE EXTENSION logistics_hub" >/dev/null
	for t in test/pgtap/*.sql; do
		in_run "$t" || continue
		db="tap_$(basename "$t" .sql | tr -c 'a-z0-9_\n' '_')"
		psql -X -q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db TEMPLATE tap_template" >/dev/null
		set +e
		pg_prove -v -d "$db" "$t" >"$OUT/$(basename "$t" .sql).tap" 2>&1
		rc=$?
		set -e
		p=$(grep -cE '^ok [0-9]' "$OUT/$(basename "$t" .sql).tap" || true)
		f=$(grep -cE '^not ok [0-9]' "$OUT/$(basename "$t" .sql).tap" || true)
		if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
		count "$p" "$f"
		if [ "$f" -ne 0 ]; then
			failures+=("pgTAP $t")
			cat "$OUT/$(basename "$t" .sql).tap"
		else
			echo "pgTAP $(basename "$t") ... ok ($p assertions)"
		fi
	done
fi

# 4. script tests
if want scripts && compgen -G "test/scripts/*.sh" >/dev/null; then
	for t in test/scripts/*.sh; do
		in_run "$t" || continue
		lh_log "script $t"
		set +e
		bash "$t" >"$OUT/$(basename "$t" .sh).log" 2>&1
		rc=$?
		set -e
		if [ "$rc" -eq 0 ]; then
			count 1 0
			echo "script $(basename "$t") ... ok"
			tail -3 "$OUT/$(basename "$t" .sh).log"
		else
			count 0 1
			failures+=("script $t")
			echo "script $(basename "$t") ... FAILED (exit $rc)"
			tail -40 "$OUT/$(basename "$t" .sh).log"
		fi
	done
fi

# 5. TAP crash tests (PostgreSQL::Test::Cluster).  The module ships in
# postgresql-client-15 under pgxs; it finds initdb, pg_ctl, psql and
# pg_config on PATH, so PG_BIN (the tree the extension was just installed
# into, LH_PGROOT's copy when set) comes first.  initdb refuses root, so the
# tests run as the cluster user, in a results directory it owns (tmp_check
# with the nodes' data and logs: $OUT/tap/tmp_check).
if want tap && compgen -G "test/tap/*.pl" >/dev/null; then
	lh_log "TAP crash tests"
	TAPDIR=$OUT/tap
	TAPTOP=$LH_TOP
	PORTLOCK=/tmp/logistics_hub-tap-portlock
	# A checkout the cluster user cannot read (a home folder of mode 700,
	# like /root): the tests, the receiver and the results go to a copy it
	# can read, outside the checkout, removed at the end.
	if [ "$(id -u)" -eq 0 ] && ! runuser -u "$CLUSTER_USER" -- test -r "$LH_TOP/test/tap/LhubCrash.pm"; then
		TAPTOP=$(mktemp -d /tmp/logistics_hub-tap.XXXXXX)
		mkdir -p "$TAPTOP/test"
		cp -a "$LH_TOP/test/tap" "$LH_TOP/test/receiver" "$TAPTOP/test/"
		TAPDIR=$TAPTOP/results
		chmod 755 "$TAPTOP"
		trap 'lh_cluster_stop test-$PORT; rm -rf "$TAPTOP"' EXIT
		lh_log "the checkout is not readable by $CLUSTER_USER: TAP tests run from $TAPTOP"
	fi
	mkdir -p "$TAPDIR" "$PORTLOCK"
	if [ "$(id -u)" -eq 0 ]; then
		chown -R "$CLUSTER_USER" "$TAPDIR" "$PORTLOCK"
		[ "$TAPTOP" = "$LH_TOP" ] || chown -R "$CLUSTER_USER" "$TAPTOP"
	fi
	for t in test/tap/*.pl; do
		in_run "$t" || continue
		name=$(basename "$t" .pl)
		set +e
		(cd "$TAPTOP" && lh_as_cluster_user env PATH="$PG_BIN:$PATH" \
			PERL5LIB="$PGXS_DIR/src/test/perl:$TAPTOP/test/tap" \
			PG_REGRESS="$PGXS_DIR/src/test/regress/pg_regress" \
			TESTDIR="$TAPDIR" PG_TEST_PORT_DIR="$PORTLOCK" \
			PG_TEST_TIMEOUT_DEFAULT=60 LH_TOP="$TAPTOP" \
			prove -v --timer "$t") >"$TAPDIR/$name.tap" 2>&1
		rc=$?
		set -e
		p=$(grep -cE '^ *ok [0-9]' "$TAPDIR/$name.tap" || true)
		f=$(grep -cE '^ *not ok [0-9]' "$TAPDIR/$name.tap" || true)
		if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
		count "$p" "$f"
		if [ "$f" -ne 0 ]; then
			failures+=("TAP $t: see $TAPDIR/$name.tap and $TAPDIR/tmp_check/log/")
			cat "$TAPDIR/$name.tap"
		else
			echo "TAP $(basename "$t") ... ok ($p assertions)"
			grep -E '^# (measured|duplicates)' "$TAPDIR/$name.tap" || true
		fi
	done
fi

if [ ${#failures[@]} -gt 0 ]; then
	echo
	echo "Failures:"
	printf '  %s\n' "${failures[@]}"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
