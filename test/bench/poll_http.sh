#!/usr/bin/env bash
# test/bench/poll_http.sh --- the pollers' throughput of issue 18: records a
# second from a paged list API into hub.inbox, beside the ceiling measured in
# the same run on the same pages.
#
# nginx (Debian's nginx-light, one worker) serves LH_BENCH_PAGES (200)
# pre-generated JSON pages of LH_BENCH_PAGE_RECORDS (1000) records each, page
# N with a "Link: <.../pages/N+1>; rel="next"" header (a map per page), so the
# server is never the bottleneck.
#
# 1. fetch: every page fetched once over HTTP by one Python client (urllib),
#    in pages/s and records/s: what the loopback and nginx allow one client;
#    the bodies and headers are kept and loaded into a staging table;
# 2. ceiling: the same pages loaded with one
#    INSERT ... SELECT FROM jsonb_array_elements(...) ON CONFLICT DO NOTHING
#    per page, a commit each, into a table shaped like hub.inbox (LIKE
#    hub.inbox INCLUDING ALL: its identity, defaults, checks and indexes),
#    storing the rows the hub stores (message_id id@version, aggregate_id
#    the id, so the same index entries); and, for information, "minimal":
#    the id alone as message_id and no aggregate_id;
# 3. hub: the same pages recorded through hub._poll_page, as the dispatcher
#    does after each fetch, a commit each (a poller with link_header
#    paging, id and version fields): the records into hub.inbox with dedup,
#    the audit row, the position: the SQL part of polling alone, called
#    directly per page (the HTTP part is 1.);
# 4. worker: the same run through the dispatcher (logistics_hub.dispatchers
#    = 1 for this part only): a poller created on the nginx endpoint (woken
#    at commit), the time until its run has ended, every page fetched by
#    libcurl and recorded by hub._poll_page in its own transaction:
#    records/s end to end, against the ceiling (which had the pages already
#    fetched).  The end is awaited in the same session, a look every 5 ms
#    in a transaction of its own: a psql started every 20 ms took a good
#    share of the CPU being measured (the dispatcher's pages then took 26 to
#    49 ms where hub._poll_page alone took 18 to 30).
# Each round runs 2., 3. and 4. one after the other (LH_BENCH_ROUNDS, 3;
# LH_BENCH_SQL_ROUNDS of them with 2. and 3., all by default), each into
# empty tables (the ceiling table and hub.inbox truncated, a new poller)
# after a CHECKPOINT, so that a round's ratios compare runs made under the same
# load; the medians are reported, with the WAL each wrote, and the median
# of the rounds' own ratios.  LH_BENCH_INBOX_WORKERS (0): inbox workers
# running meanwhile (the ceiling has no consumer; 1 measures polling beside
# processing).  LH_BENCH_PIDFILE: a file to write the dispatcher's pid to
# (for perf or strace).
# Cluster: fsync = on, synchronous_commit = on, shared_buffers 512MB.
source "$(dirname "$0")/../harness/lib.sh"
cd "$LH_TOP"
PORT=${LH_BENCH_PORT:-54356}
HTTP_PORT=${LH_BENCH_HTTP_PORT:-18356}
PAGES=${LH_BENCH_PAGES:-200}
PER_PAGE=${LH_BENCH_PAGE_RECORDS:-1000}
ROUNDS=${LH_BENCH_ROUNDS:-3}
# inbox workers while the dispatcher polls (0: none, the default, as the
# ceiling has no consumer either; 1 measures polling beside processing)
INBOX_WORKERS=${LH_BENCH_INBOX_WORKERS:-0}
# LH_BENCH_SQL_ROUNDS: rounds of 2. and 3. (default ROUNDS)
SQL_ROUNDS=${LH_BENCH_SQL_ROUNDS:-$ROUNDS}
WORK=$(mktemp -d)
chmod 755 "$WORK"
NGINX_PID=
cleanup() {
	[ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null
	lh_cluster_stop "bench-$PORT"
	rm -rf "$WORK"
}
trap cleanup EXIT

lh_prepare "bench-$PORT" "$PORT" "fsync = on" "synchronous_commit = on" "max_connections = 50" \
	"shared_buffers = 512MB" "logistics_hub.dispatchers = 0" "logistics_hub.egress_allow = '127.0.0.1'"
q() { psql -X -q -A -t -v ON_ERROR_STOP=1 -d postgres "$@"; }

# the pages: records shaped like an ERP's order list (id, update time,
# status, customer, lines), and the map of Link headers
mkdir -p "$WORK/nginx/logs" "$WORK/www/pages" "$WORK/fetched"
python3 - "$WORK" "$PAGES" "$PER_PAGE" "$HTTP_PORT" <<'EOF'
import json, sys
work, pages, per, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with open(work + "/nginx/links.map", "w") as m:
    for p in range(1, pages + 1):
        recs = [{"id": 100000000 + (p - 1) * per + i, "updated_at": "2026-03-%02dT%02d:%02d:%02dZ" % (1 + p % 28, i % 24, i % 60, p % 60),
                 "status": "released", "customer": {"id": "C%05d" % (i * 7 % 10000), "name": "Customer %d" % i},
                 "lines": [{"sku": "SKU-%d" % (i % 500), "qty": 1 + i % 9}, {"sku": "SKU-%d" % (i % 300), "qty": 2}]}
                for i in range(per)]
        with open("%s/www/pages/%d" % (work, p), "w") as f:
            json.dump(recs, f)
        if p < pages:
            m.write('/pages/%d "<http://127.0.0.1:%d/pages/%d>; rel=\\"next\\"";\n' % (p, port, p + 1))
EOF
cat > "$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
error_log $WORK/nginx/logs/error.log warn;
pid $WORK/nginx/nginx.pid;
events { worker_connections 1024; }
http {
	access_log off;
	keepalive_requests 1000000;
	map \$uri \$next_link { default ""; include $WORK/nginx/links.map; }
	server {
		listen 127.0.0.1:$HTTP_PORT;
		root $WORK/www;
		location /pages/ { default_type application/json; add_header Link \$next_link; }
	}
}
EOF
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
NGINX_PID=$!
for _ in $(seq 50); do
	(exec 3<>/dev/tcp/127.0.0.1/$HTTP_PORT) 2>/dev/null && break
	sleep 0.1
done

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -r)," \
	"$("$PG_BIN/postgres" --version | sed 's/^postgres (PostgreSQL) /PostgreSQL /'), $(nginx -v 2>&1 | sed 's/^nginx version: //')"
echo "pages: $PAGES of $PER_PAGE records ($(du -sh "$WORK/www/pages" | cut -f1)), rounds: $ROUNDS (median), fsync = on"

# 1. fetch, keeping what came (body and headers) for the loads
FETCH=$(python3 - "$WORK/fetched" "$HTTP_PORT" <<'EOF'
import http.client, json, sys, time
out, port = sys.argv[1], int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
url, n, recs, t0 = "/pages/1", 0, 0, time.time()
while url:
    c.request("GET", url, headers={"Accept": "application/json"})
    r = c.getresponse()
    body = r.read()
    n += 1
    with open("%s/%d.body" % (out, n), "wb") as f:
        f.write(body)
    hdrs = ["%s: %s" % kv for kv in r.getheaders()]
    with open("%s/%d.meta" % (out, n), "w") as f:
        json.dump({"url": "http://127.0.0.1:%d%s" % (port, url), "status": r.status, "headers": hdrs}, f)
    recs += body.count(b'"updated_at"')
    link = r.getheader("Link")
    url = link[link.index("<") + 1:link.index(">")].split(str(port), 1)[1] if link else None
dt = time.time() - t0
print("%d %d %.3f" % (n, recs, dt))
EOF
)
read -r NPAGES NRECS FETCH_S <<<"$FETCH"
[ "$NPAGES" -eq "$PAGES" ] || { echo "fetched $NPAGES pages, not $PAGES" >&2; exit 1; }
printf 'fetch over HTTP (one Python client): %d pages, %d records in %.2f s: %.0f pages/s, %.0f records/s\n' \
	"$NPAGES" "$NRECS" "$FETCH_S" "$(echo "$NPAGES / $FETCH_S" | bc -l)" "$(echo "$NRECS / $FETCH_S" | bc -l)"

chmod -R a+rX "$WORK/fetched"
q >/dev/null <<SQL
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS logistics_hub;
SELECT hub.create_endpoint('nginx', 'http://127.0.0.1:$HTTP_PORT/', 'erp');
CREATE TABLE bench_pages (n integer PRIMARY KEY, url text, status integer, headers text[], body bytea);
INSERT INTO bench_pages
SELECT n, m ->> 'url', (m ->> 'status')::int, ARRAY(SELECT jsonb_array_elements_text(m -> 'headers')),
	   pg_read_binary_file('$WORK/fetched/' || n || '.body')
FROM generate_series(1, $NPAGES) n, LATERAL (SELECT pg_read_file('$WORK/fetched/' || n || '.meta')::jsonb AS m) x;
-- the ceiling's table: shaped like the inbox, indexes and all
CREATE TABLE bench_ceiling (LIKE hub.inbox INCLUDING ALL);
-- the same rows as the hub stores (message_id id@version, aggregate_id the
-- record id), or (minimal) only the id as message_id
CREATE PROCEDURE bench_ceiling_load(same_rows boolean) LANGUAGE plpgsql AS \$\$
DECLARE r record;
BEGIN
	FOR r IN SELECT n, body FROM bench_pages ORDER BY n LOOP
		IF same_rows THEN
			INSERT INTO bench_ceiling (source, message_id, message_type, payload, aggregate_id)
			SELECT 'bench', (e.value ->> 'id') || '@' || (e.value ->> 'updated_at'), 'erp.order', e.value, e.value ->> 'id'
			FROM jsonb_array_elements(convert_from(r.body, 'UTF8')::jsonb) e
			ON CONFLICT (source, message_id) DO NOTHING;
		ELSE
			INSERT INTO bench_ceiling (source, message_id, message_type, payload)
			SELECT 'bench', e.value ->> 'id', 'erp.order', e.value
			FROM jsonb_array_elements(convert_from(r.body, 'UTF8')::jsonb) e
			ON CONFLICT (source, message_id) DO NOTHING;
		END IF;
		COMMIT;
	END LOOP;
END \$\$;
-- until the poller's run has ended (each look in a transaction of its own:
-- a snapshot held through the run would keep every old version of the
-- poller's row, which each page updates, from being pruned)
CREATE PROCEDURE bench_wait(poller text) LANGUAGE plpgsql AS \$\$
BEGIN
	WHILE NOT coalesce((SELECT p.last_success_at IS NOT NULL FROM hub.pollers p WHERE p.name = poller), false) LOOP
		COMMIT;
		PERFORM pg_sleep(0.005);
	END LOOP;
END \$\$;
-- the hub: a poller's run, page by page as the dispatcher records them
CREATE PROCEDURE bench_poll_load(poller text) LANGUAGE plpgsql AS \$\$
DECLARE r record; c record; nxt text;
BEGIN
	SELECT * INTO c FROM hub._poll_claim('bench', 0, 1, 1);
	COMMIT;
	FOR r IN SELECT * FROM bench_pages ORDER BY n LOOP
		IF r.url IS DISTINCT FROM coalesce(nxt, c.url) THEN
			RAISE EXCEPTION 'the poller asked for %, the next page is %', coalesce(nxt, c.url), r.url;
		END IF;
		SELECT x.url INTO nxt FROM hub._poll_page(c.poller_id, c.lease, r.url, r.status, r.headers, r.body, NULL, 1,
												  length(r.body)) x;
		COMMIT;
	END LOOP;
END \$\$;
SQL

ceil_ms=() min_ms=() poll_ms=() ceil_wal=() poll_wal=() work_ms=() work_ratio=()
lsn() { q -c "SELECT pg_current_wal_insert_lsn()"; }
walmb() { q -c "SELECT round(pg_wal_lsn_diff('$2', '$1') / 1048576.0, 1)"; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
# the launcher runs from here on (its inbox workers, if any, in every
# phase alike); the dispatcher only for 4.
q -c "ALTER SYSTEM SET logistics_hub.database = 'postgres'" \
  -c "ALTER SYSTEM SET logistics_hub.inbox_workers = $INBOX_WORKERS" -c "SELECT pg_reload_conf()" >/dev/null
dispatchers() {
	q -c "ALTER SYSTEM SET logistics_hub.dispatchers = $1" -c "SELECT pg_reload_conf()" >/dev/null
	for _ in $(seq 150); do
		[ "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'logistics_hub dispatcher'")" -eq "$1" ] && return
		sleep 0.2
	done
	echo "the dispatchers did not become $1" >&2
	exit 1
}
# every round: 2., 3. and 4. one after the other, so that each round's
# ratios compare runs made under the same load
for round in $(seq "$ROUNDS"); do
	if [ "$round" -le "$SQL_ROUNDS" ]; then
		q -c "TRUNCATE bench_ceiling" -c "CHECKPOINT" >/dev/null
		t0=$(date +%s.%N); q -c "CALL bench_ceiling_load(false)" >/dev/null; t1=$(date +%s.%N)
		min_ms+=("$(echo "($t1 - $t0) * 1000" | bc -l)")
		q -c "TRUNCATE bench_ceiling" -c "CHECKPOINT" >/dev/null
		l0=$(lsn); t0=$(date +%s.%N); q -c "CALL bench_ceiling_load(true)" >/dev/null; t1=$(date +%s.%N); l1=$(lsn)
		ceil_ms+=("$(echo "($t1 - $t0) * 1000" | bc -l)")
		ceil_wal+=("$(walmb "$l0" "$l1")")
		[ "$(q -c "SELECT count(*) FROM bench_ceiling")" -eq "$NRECS" ] || { echo "ceiling: records missing" >&2; exit 1; }
		# a new poller each round, on its own (empty) inbox source; the
		# rounds before stay paused
		q -c "UPDATE hub.pollers SET paused = true" -c "TRUNCATE hub.inbox" \
		  -c "SELECT hub.create_poller('nginx', '/pages/1', 'erp.order', name => 'bench$round', pagination => 'link_header',
				id_field => 'id', version_field => 'updated_at', max_pages => 1000000)" -c "CHECKPOINT" >/dev/null
		l0=$(lsn); t0=$(date +%s.%N); q -c "CALL bench_poll_load('bench$round')" >/dev/null; t1=$(date +%s.%N); l1=$(lsn)
		poll_ms+=("$(echo "($t1 - $t0) * 1000" | bc -l)")
		poll_wal+=("$(walmb "$l0" "$l1")")
		got=$(q -c "SELECT count(*) || ' ' || (SELECT last_success_at IS NOT NULL FROM hub.pollers WHERE name = 'bench$round') FROM hub.inbox WHERE source = 'poll:bench$round'")
		[ "$got" = "$NRECS true" ] || { echo "hub: expected $NRECS records and a finished run, got $got" >&2; exit 1; }
		printf 'round %d: minimal %.0f ms, ceiling %.0f ms (WAL %s MB), hub._poll_page %.0f ms (WAL %s MB)\n' \
			"$round" "${min_ms[-1]}" "${ceil_ms[-1]}" "${ceil_wal[-1]}" "${poll_ms[-1]}" "${poll_wal[-1]}"
	fi

	# 4. through the dispatcher
	q -c "UPDATE hub.pollers SET paused = true" -c "TRUNCATE hub.inbox" -c "CHECKPOINT" >/dev/null
	dispatchers 1
	[ -n "${LH_BENCH_PIDFILE:-}" ] && q -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'logistics_hub dispatcher'" >"$LH_BENCH_PIDFILE"
	# (the wait in one session, a look every 5 ms: a psql started every few
	# ms would take the CPU the dispatcher is being measured with)
	ms=$(q <<SQL
SELECT clock_timestamp() AS t0 \\gset
SELECT hub.create_poller('nginx', '/pages/1', 'erp.order', name => 'worker$round', pagination => 'link_header',
		id_field => 'id', version_field => 'updated_at', max_pages => 1000000, every => '1 hour') \\gset
CALL bench_wait('worker$round');
SELECT round(extract(epoch FROM clock_timestamp() - :'t0') * 1000, 1);
SQL
)
	dispatchers 0
	work_ms+=("$ms")
	got=$(q -c "SELECT count(*) FROM hub.inbox WHERE source = 'poll:worker$round'")
	[ "$got" = "$NRECS" ] || { echo "worker: expected $NRECS records, got $got" >&2; exit 1; }
	# a page's cycle: from one _poll_page transaction's start to the next;
	# of it, the HTTP request (latency_ms as the dispatcher measured it)
	ratio=
	if [ "$round" -le "$SQL_ROUNDS" ]; then
		work_ratio+=("$(echo "${ceil_ms[-1]} / ${work_ms[-1]}" | bc -l)")
		ratio=$(printf ', %.2f of this round'"'"'s ceiling' "${work_ratio[-1]}")
	fi
	printf 'round %d: through the dispatcher %.0f ms%s (%s)\n' "$round" "${work_ms[-1]}" "$ratio" \
		"$(q -c "SELECT count(*) || ' requests, ' || count(*) FILTER (WHERE outcome = 'failed') || ' failed, a page every '
					|| round(extract(epoch FROM max(at) - min(at)) * 1000 / greatest(count(*) - 1, 1), 1) || ' ms, of it '
					|| round(avg(latency_ms), 1) || ' ms HTTP'
				 FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'worker$round'")"
done
WORK_MS=$(median "${work_ms[@]}")
CEIL=$(median "${ceil_ms[@]}")
MIN=$(median "${min_ms[@]}")
POLL=$(median "${poll_ms[@]}")
printf 'minimal: INSERT ... SELECT FROM jsonb_array_elements, a commit a page, the id as message_id: %.0f ms, %.0f records/s\n' \
	"$MIN" "$(echo "$NRECS * 1000 / $MIN" | bc -l)"
printf 'ceiling: the same, storing the rows the hub stores (id@version, aggregate_id): %.0f ms, %.0f records/s\n' \
	"$CEIL" "$(echo "$NRECS * 1000 / $CEIL" | bc -l)"
printf 'hub: hub._poll_page a page (dedup, audit, position), a commit a page: %.0f ms, %.0f records/s\n' \
	"$POLL" "$(echo "$NRECS * 1000 / $POLL" | bc -l)"
printf 'ratio: hub / ceiling = %.2f (target >= 0.8), hub / minimal = %.2f; hub records/s against the target of 50,000: %.2f\n' \
	"$(echo "$CEIL / $POLL" | bc -l)" "$(echo "$MIN / $POLL" | bc -l)" "$(echo "$NRECS * 1000 / $POLL / 50000" | bc -l)"
printf 'through the dispatcher, end to end (fetch by libcurl, record by hub._poll_page): %.0f ms, %.0f records/s; ratio to the ceiling %.2f (target >= 0.8), median of the rounds'"'"' own ratios %.2f; against the target of 50,000: %.2f\n' \
	"$WORK_MS" "$(echo "$NRECS * 1000 / $WORK_MS" | bc -l)" "$(echo "$CEIL / $WORK_MS" | bc -l)" "$(median "${work_ratio[@]}")" \
	"$(echo "$NRECS * 1000 / $WORK_MS / 50000" | bc -l)"
