#!/usr/bin/env bash
# test/scripts/installcheck_dist.sh --- what PGXS and PGXN users expect of
# the build: `make installcheck` runs every pg_regress test of test/sql
# against a running server (here a cluster of its own, the extension
# installed by the harness), and passes; `make dist` writes the PGXN
# archive of the committed tree, named after the control file's version,
# with META.json, the control file, the Makefile, the sources and the
# install scripts, and nothing built or run (no objects, results,
# clusters).
source test/harness/lib.sh
set -euo pipefail
port=$((${PGPORT:-54329} + 133))
trap 'lh_cluster_stop "installcheck-$port"; rm -rf "$tmp"' EXIT
tmp=$(mktemp -d)
lh_cluster_start "installcheck-$port" "$port"

fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "ok: $*"; }

want=$(ls test/sql/*.sql | wc -l)
make -s -C "$LH_TOP" PG_CONFIG="$PG_CONFIG" installcheck >"$tmp/installcheck.log" 2>&1 ||
	{ cat "$tmp/installcheck.log"; fail "make installcheck failed"; }
grep -q "All $want tests passed" "$tmp/installcheck.log" ||
	{ cat "$tmp/installcheck.log"; fail "make installcheck did not run the $want tests of test/sql"; }
ok "make installcheck: all $want pg_regress tests of test/sql passed against a running server"

version=$(sed -n "s/^default_version *= *'\([^']*\)'.*/\1/p" control/logistics_hub.control)
archive=logistics_hub-$version.zip
rm -f "$archive"
make -s -C "$LH_TOP" PG_CONFIG="$PG_CONFIG" dist >/dev/null || fail "make dist failed"
[ -f "$archive" ] || fail "make dist wrote no $archive"
mv "$archive" "$tmp/"
python3 - "$tmp/$archive" "$version" <<'PY' || fail "the archive's contents are wrong"
import sys, zipfile, json, subprocess
z = zipfile.ZipFile(sys.argv[1])
names = set(z.namelist())
top = 'logistics_hub-%s/' % sys.argv[2]
want = ['META.json', 'LICENSE', 'README.md', 'Makefile', 'control/logistics_hub.control',
        'sql/logistics_hub--0.1.0.sql', 'sql/logistics_hub--0.1.0--0.2.0.sql', 'sql/src/00_identifiers.sql',
        'extension/user_code.c', 'workers/dispatcher.c']
missing = [w for w in want if top + w not in names]
bad = [n for n in names if not n.startswith(top) or n.endswith(('.o', '.so')) or '/test/results/' in n
       or '/.cluster/' in n]
tracked = set(subprocess.run(['git', 'ls-files'], capture_output=True, text=True).stdout.split())
extra = [n for n in names if not n.endswith('/') and n[len(top):] not in tracked]
meta = json.loads(z.read(top + 'META.json'))
print('missing', missing, 'bad', bad[:5], 'untracked', extra[:5], 'version', meta['version'])
sys.exit(1 if missing or bad or extra or meta['version'] != sys.argv[2] else 0)
PY
ok "make dist: $archive holds the committed tree under logistics_hub-$version/, META.json at $version, nothing built"
