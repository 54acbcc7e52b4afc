#!/usr/bin/env bash
# test/scripts/poll_api_sql.sh --- the pollers' SQL against a real HTTP list
# API (test/receiver/poll_api.py), with the dispatcher's part played by
# test/receiver/poll_drive.py (claim, send, hand the answer to
# hub._poll_page), so every misbehaviour of the API reaches the SQL as the
# worker would pass it:
#   - Link header paging (several links and rels in one header, a comma in
#     a URL, a second Link header) over huge ids (> 2^53): every record once,
#     ids exact
#   - OData @odata.nextLink (relative), cursor with an empty page announcing
#     more and a repeated token (the run ends, recorded), offset with
#     has_more, page numbers with a short last page
#   - failed pages one after another (HTML, not JSON, items not an array,
#     a body cut short, bad UTF-8, 503 with Retry-After as a date): each
#     recorded with its excerpt (credentials redacted), the position kept,
#     and after them every record exactly once
#   - incremental: 300 records of one timestamp over three pages, records
#     updated between pages (new versions), a late commit behind the
#     watermark caught by the lookback, the since parameter the API got
#   - ETag: an unchanged collection answers the next run's conditional first
#     page with 304, which moves nothing
#   - X-RateLimit-Remaining: 0 pauses the run; a next link to another host is
#     refused and never requested
set -euo pipefail
db=poll_api_sql
psql -X -q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
psql -X -q -d "$db" -c "CREATE EXTENSION logistics_hub"

dir=$(mktemp -d /tmp/poll_api_sql.XXXXXX)
python3 test/receiver/poll_api.py serve --port-file "$dir/port" --log "$dir/requests.log" >"$dir/api.out" 2>&1 &
api=$!
trap 'kill $api 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -s "$dir/port" ] && break; sleep 0.05; done
PORT=$(cat "$dir/port")

q() { psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$db" -c "$1"; }
ctl() { python3 test/receiver/poll_api.py control --port "$PORT" "$1" >/dev/null; }
drive() { python3 test/receiver/poll_drive.py --db "$db" --poller "$1" "${@:2}"; }
fail() { echo "FAIL: $*"; exit 1; }
expect() { [ "$2" = "$3" ] || fail "$1: expected '$3', got '$2'"; echo "ok: $1"; }
# requests the API got whose path matches a regex [and that carried a header]
requests() { python3 -c "
import json, re, sys
n = 0
for line in open('$dir/requests.log'):
    r = json.loads(line)
    if re.search(sys.argv[1], r['path']) and (len(sys.argv) < 3 or sys.argv[2].lower() in (h.lower() for h in r['headers'])):
        n += 1
print(n)" "$@"; }

q "SELECT hub.create_endpoint('api', 'http://127.0.0.1:$PORT/')" >/dev/null

# ---------------------------------------------------------------- link header, huge ids
ctl '{"op": "reset", "count": 50, "ids_from": 9007199254740993}'
q "SELECT hub.create_poller('api', '/link/orders', 'erp.order', name => 'link', pagination => 'link_header',
	limit_param => 'limit', page_size => 7, query => '{\"multi\": \"1\"}')" >/dev/null
expect "link_header: the run ends by protocol after 8 pages" \
	"$(drive link | python3 -c 'import json, sys; d = json.load(sys.stdin); print(d["requests"], d["open"], d["lost"])')" "8 False False"
expect "every record once, ids above 2^53 exact" \
	"$(q "SELECT count(*) || ' ' || count(DISTINCT aggregate_id) || ' ' || min(aggregate_id::numeric) || ' ' || max(aggregate_id::numeric) FROM hub.inbox WHERE source = 'poll:link'")" \
	"50 50 9007199254740993 9007199254741042"
expect "the payload is the record as the API sent it" \
	"$(q "SELECT payload ->> 'id' FROM hub.inbox WHERE source = 'poll:link' ORDER BY inbox_id LIMIT 1")" "9007199254740993"

# ---------------------------------------------------------------- odata, cursor, offset, page
ctl '{"op": "reset", "count": 30}'
q "SELECT hub.create_poller('api', '/odata/SalesOrders', 'erp.so', name => 'odata', items_path => 'value',
	pagination => 'next_link', next_path => '@odata.nextLink', limit_param => 'limit', page_size => 8)" >/dev/null
drive odata >/dev/null
expect "OData: relative @odata.nextLink followed to the end" "$(q "SELECT count(*) FROM hub.inbox WHERE source = 'poll:odata'")" 30

q "SELECT hub.create_poller('api', '/next/shipments', 'tms.shipment', name => 'next', items_path => '\$.data.items',
	pagination => 'next_link', next_path => '\$.links.next', limit_param => 'limit', page_size => 12)" >/dev/null
drive next >/dev/null
expect "next_link at links.next (absolute), items nested under data.items" \
	"$(q "SELECT count(*) || ' ' || (SELECT count(*) FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'next') FROM hub.inbox WHERE source = 'poll:next'")" "30 3"

q "SELECT hub.create_poller('api', '/cursor/events', 'tms.event', name => 'cursor', items_path => 'results',
	pagination => 'cursor', next_path => '\$.meta.next_cursor', limit_param => 'limit', page_size => 10)" >/dev/null
ctl '{"op": "misbehave", "mode": "empty_more"}'
drive cursor >/dev/null
expect "cursor: an empty page announcing more does not end the run" "$(q "SELECT count(*) FROM hub.inbox WHERE source = 'poll:cursor'")" 30
q "UPDATE hub.pollers SET next_run_at = now() WHERE name = 'cursor'" >/dev/null
ctl '{"op": "misbehave", "mode": "repeat_next"}'
ctl '{"op": "misbehave", "mode": "repeat_next"}'
drive cursor >/dev/null
expect "a repeated token ends the run, recorded" \
	"$(q "SELECT outcome || ' ' || (p.last_error ~ 'cycle') FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'cursor' ORDER BY request_id DESC LIMIT 1")" "cycle true"

q "SELECT hub.create_poller('api', '/offset/rec', 'erp.rec', name => 'offset', items_path => 'items',
	pagination => 'offset', page_size => 7, has_more_path => 'has_more')" >/dev/null
drive offset >/dev/null
expect "offset with has_more" "$(q "SELECT count(*) || ' ' || (SELECT count(*) FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'offset') FROM hub.inbox WHERE source = 'poll:offset'")" "30 5"
q "SELECT hub.create_poller('api', '/page/rec', 'erp.rec', name => 'page', pagination => 'page',
	limit_param => 'per_page', page_size => 10)" >/dev/null
drive page >/dev/null
expect "page numbers: the short (empty) fourth page ends the run" "$(q "SELECT count(*) || ' ' || (SELECT count(*) FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'page') FROM hub.inbox WHERE source = 'poll:page'")" "30 4"

# ---------------------------------------------------------------- failed pages
ctl '{"op": "reset", "count": 12}'
q "SELECT hub.create_poller('api', '/link/f', 'erp.f', name => 'fail', pagination => 'link_header',
	limit_param => 'limit', page_size => 5, retry_base => '1 second')" >/dev/null
drive fail --max-requests 1 >/dev/null	# the first page; the run goes on at page 2
for m in html notjson not_array cut bad_utf8; do ctl '{"op": "misbehave", "mode": "'$m'"}'; done
ctl '{"op": "misbehave", "mode": "status", "code": 503, "retry_after": "date:120"}'
q "UPDATE hub.pollers SET lease = NULL WHERE name = 'fail'" >/dev/null
position=$(q "SELECT next_url FROM hub.pollers WHERE name = 'fail'")
for i in 1 2 3 4 5 6; do
	drive fail --now >/dev/null
	[ "$(q "SELECT next_url FROM hub.pollers WHERE name = 'fail'")" = "$position" ] || fail "failed page $i moved the position"
done
echo "ok: six failed pages in a row keep the position"
expect "each failed page is recorded with what was wrong" \
	"$(q "SELECT string_agg(coalesce(http_status::text, '-') || ':' || CASE WHEN error ~ 'text/html' THEN 'html' WHEN error ~ 'not JSON' THEN 'notjson' WHEN error ~ 'not an array' THEN 'array' WHEN error ~ 'remaining' THEN 'cut' WHEN error ~ '^HTTP 503' THEN '503' ELSE error END, ' ' ORDER BY request_id) FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'fail' AND outcome = 'failed'")" \
	"200:html 200:notjson 200:array 200:cut 200:notjson 503:503"
expect "the 503's Retry-After (an HTTP date 2 minutes ahead) holds the poller back" \
	"$(q "SELECT next_run_at > now() + interval '100 seconds' FROM hub.pollers WHERE name = 'fail'")" t
expect "excerpts are kept, credentials redacted" \
	"$(q "SELECT bool_and(excerpt IS NOT NULL) AND bool_and(excerpt !~ 'sk_live_leak') AND bool_or(excerpt ~ 'redacted') FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'fail' AND outcome = 'failed'")" t
drive fail --now >/dev/null
expect "then every record exactly once" "$(q "SELECT count(*) || ' ' || count(DISTINCT message_id) || ' ' || sum(duplicate_count) FROM hub.inbox WHERE source = 'poll:fail'")" "12 12 0"

# ---------------------------------------------------------------- incremental
ctl '{"op": "reset", "count": 300, "ts": "2026-05-01T08:00:00Z", "ts_step": 0}'
q "SELECT hub.create_poller('api', '/link/changes', 'erp.change', name => 'inc', pagination => 'link_header',
	limit_param => 'limit', page_size => 100, version_field => 'updated_at', since_param => 'since', lookback => '5 minutes')" >/dev/null
ctl '{"op": "misbehave", "mode": "mutate", "ids": [250, 260], "updated_at": "2026-05-01T08:00:30Z"}'
drive inc >/dev/null
expect "300 records of one timestamp over three pages: all of them" "$(q "SELECT count(DISTINCT aggregate_id) FROM hub.inbox WHERE source = 'poll:inc'")" 300
expect "the watermark is the run's largest time" "$(q "SELECT watermark FROM hub.pollers WHERE name = 'inc'")" "2026-05-01 08:00:30+00"
ctl '{"op": "add", "records": [{"id": 9001, "updated_at": "2026-05-01T07:58:00Z", "late": true}, {"id": 17, "updated_at": "2026-05-01T09:00:00Z"}]}'
drive inc --now >/dev/null
expect "the next run asks since the watermark minus the lookback" \
	"$(python3 -c "
import json
print([json.loads(l)['path'] for l in open('$dir/requests.log') if '/link/changes?since' in l][0])")" \
	"/link/changes?since=2026-05-01T07%3A55%3A30Z&limit=100"
expect "a late commit behind the watermark and a new version are caught; records updated between pages are new versions" \
	"$(q "SELECT string_agg(aggregate_id, ',' ORDER BY aggregate_id::int) FROM hub.inbox WHERE source = 'poll:inc' AND (payload ? 'late' OR aggregate_id IN ('17', '250', '260'))")" \
	"17,17,250,260,9001"
expect "everything else of the overlap was a duplicate" "$(q "SELECT last_run_new FROM hub.pollers WHERE name = 'inc'")" 2

# ---------------------------------------------------------------- ETag / 304
ctl '{"op": "reset", "count": 5}'
q "SELECT hub.create_poller('api', '/link/cond', 'erp.cond', name => 'cond', pagination => 'link_header')" >/dev/null
drive cond >/dev/null
drive cond --now >/dev/null
expect "an unchanged collection: the next run's first page is conditional and answered 304" \
	"$(q "SELECT string_agg(coalesce(http_status::text, '') || ':' || outcome, ' ' ORDER BY request_id) FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'cond'")" \
	"200:end 304:not_modified"
expect "the API saw If-None-Match and If-Modified-Since once" "$(requests '^/link/cond' If-None-Match) $(requests '^/link/cond' If-Modified-Since)" "1 1"
expect "nothing moved" "$(q "SELECT count(*) FROM hub.inbox WHERE source = 'poll:cond'")" 5

# ---------------------------------------------------------------- rate limit, foreign host
ctl '{"op": "reset", "count": 20}'
q "SELECT hub.create_poller('api', '/link/rl', 'erp.rl', name => 'rl', pagination => 'link_header', limit_param => 'limit', page_size => 10)" >/dev/null
ctl '{"op": "misbehave", "mode": "ratelimited", "reset": 60}'
drive rl >/dev/null
expect "X-RateLimit-Remaining: 0 pauses the run until the reset, at its position" \
	"$(q "SELECT (next_run_at > now() + interval '50 seconds') || ' ' || (next_url ~ 'after=10') FROM hub.pollers WHERE name = 'rl'")" "true true"
q "SELECT hub.create_poller('api', '/link/fh', 'erp.fh', name => 'foreign', pagination => 'link_header', limit_param => 'limit', page_size => 10)" >/dev/null
ctl '{"op": "misbehave", "mode": "foreign_next"}'
drive foreign >/dev/null
expect "a next link to another host is refused and recorded" \
	"$(q "SELECT outcome FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'foreign' ORDER BY request_id DESC LIMIT 1")" refused
expect "and never requested" "$(requests '^/link/fh')" 1
