#!/usr/bin/env bash
# test/scripts/poll_worker.sh --- pollers run by the real dispatcher against
# the loopback list API (test/receiver/poll_api.py), each misbehaviour on
# its own poller and endpoint, all at once, alongside push:
#   - created pollers run at once (woken at commit) and page to the end:
#     Link header (several links, rel="next last", commas in URLs), OData
#     next links, cursors, offset with has_more, page numbers; every record
#     once, ids above 2^53 exact
#   - failed pages (HTML, not JSON, items not an array, a body cut short, bad
#     UTF-8, 503 with Retry-After) are recorded with excerpts, retried with
#     backoff at the same position, and every record lands exactly once
#   - a cycling token ends the run with the cycle recorded; a next link to
#     another host is refused and never requested
#   - incremental: 300 records of one timestamp over pages, records updated
#     between pages (new versions; what the API's positions skipped comes
#     with the next run), a late commit caught by the lookback; an unchanged
#     collection answers the next run with 304
#   - a push endpoint delivers meanwhile; the dispatcher never dies
source test/receiver/push_lib.sh
push_setup poll-worker 153 "logistics_hub.dispatcher_naptime = 100ms" "logistics_hub.retry_after_max = 3s"

dir=$LH_CLUSTER_DIR/api
mkdir -p "$dir"
# one API server per scenario: misbehaviours are queued per server
declare -A API
api_start() {
	python3 test/receiver/poll_api.py serve --port-file "$dir/$1.port" --log "$dir/$1.log" >"$dir/$1.out" 2>&1 &
	API_PIDS+=" $!"
	for _ in $(seq 100); do [ -s "$dir/$1.port" ] && break; sleep 0.05; done
	API[$1]=$(cat "$dir/$1.port")
}
API_PIDS=
trap 'kill $API_PIDS 2>/dev/null; push_cleanup' EXIT
ctl() { python3 test/receiver/poll_api.py control --port "${API[$1]}" "$2" >/dev/null; }
# requests a server got whose path matches a regex [and that carried a header]
requests() { python3 -c "
import json, re, sys
n = 0
for line in open('$dir/$1.log'):
    r = json.loads(line)
    if re.search(sys.argv[1], r['path']) and (len(sys.argv) < 3 or sys.argv[2].lower() in (h.lower() for h in r['headers'])):
        n += 1
print(n)" "${@:2}"; }
inbox() { q "SELECT count(*) || ' ' || count(DISTINCT message_id) FROM hub.inbox WHERE source = 'poll:$1'"; }
expect() { [ "$2" = "$3" ] || fail "$1: expected '$3', got '$2'"; ok "$1"; }

for s in link odata cursor offset page fail cycle foreign inc cond; do api_start $s; done
ctl link '{"op": "reset", "count": 120, "ids_from": 9007199254740993}'
for s in odata cursor offset page; do ctl $s '{"op": "reset", "count": 95}'; done
ctl fail '{"op": "reset", "count": 40}'
for m in html notjson not_array cut bad_utf8; do ctl fail '{"op": "misbehave", "mode": "'$m'"}'; done
ctl fail '{"op": "misbehave", "mode": "status", "code": 503, "retry_after": 1}'
ctl cycle '{"op": "reset", "count": 50}'
ctl cycle '{"op": "misbehave", "mode": "pass"}'
ctl cycle '{"op": "misbehave", "mode": "cycle"}'
ctl foreign '{"op": "reset", "count": 30}'
ctl foreign '{"op": "misbehave", "mode": "foreign_next"}'
ctl inc '{"op": "reset", "count": 300, "ts": "2026-05-01T08:00:00Z", "ts_step": 0}'
ctl inc '{"op": "misbehave", "mode": "pass"}'
ctl inc '{"op": "misbehave", "mode": "mutate", "ids": [50, 60], "updated_at": "2026-05-01T08:00:30Z"}'
ctl cond '{"op": "reset", "count": 10}'

ep() { q "SELECT hub.create_endpoint('$1', 'http://127.0.0.1:${API[$1]}/', 'erp')" >/dev/null; }
for s in link odata cursor offset page fail cycle foreign inc cond; do ep $s; done
# a push endpoint working meanwhile
push_endpoint pushed ok
q "SELECT hub.create_poller('link', '/link/orders', 'erp.order', name => 'link', pagination => 'link_header',
	limit_param => 'limit', page_size => 7, query => '{\"multi\": \"1\"}')" \
  "SELECT hub.create_poller('odata', '/odata/SalesOrders', 'erp.so', name => 'odata', items_path => 'value',
	pagination => 'next_link', next_path => '@odata.nextLink', limit_param => 'limit', page_size => 10)" \
  "SELECT hub.create_poller('cursor', '/cursor/events', 'tms.event', name => 'cursor', items_path => 'results',
	pagination => 'cursor', next_path => '\$.meta.next_cursor', limit_param => 'limit', page_size => 10)" \
  "SELECT hub.create_poller('offset', '/offset/rec', 'erp.rec', name => 'offset', items_path => 'items',
	pagination => 'offset', page_size => 10, has_more_path => 'has_more')" \
  "SELECT hub.create_poller('page', '/page/rec', 'erp.rec', name => 'page', pagination => 'page',
	limit_param => 'per_page', page_size => 10)" \
  "SELECT hub.create_poller('fail', '/link/f', 'erp.f', name => 'fail', pagination => 'link_header',
	limit_param => 'limit', page_size => 10, retry_base => '100 milliseconds', retry_max => '300 milliseconds')" \
  "SELECT hub.create_poller('cycle', '/cursor/c', 'erp.c', name => 'cycle', items_path => 'results',
	pagination => 'cursor', next_path => '\$.meta.next_cursor', limit_param => 'limit', page_size => 10)" \
  "SELECT hub.create_poller('foreign', '/link/fh', 'erp.fh', name => 'foreign', pagination => 'link_header',
	limit_param => 'limit', page_size => 10)" \
  "SELECT hub.create_poller('inc', '/link/changes', 'erp.change', name => 'inc', pagination => 'link_header',
	limit_param => 'limit', page_size => 100, version_field => 'updated_at', since_param => 'since',
	lookback => '5 minutes', every => '1 hour')" \
  "SELECT hub.create_poller('cond', '/link/cond', 'erp.cond', name => 'cond', pagination => 'link_header', every => '1 hour')" >/dev/null
for i in $(seq 20); do push_publish pushed "SO-$i" >/dev/null; done

done_run() { echo "SELECT last_success_at IS NOT NULL AND next_url IS NULL FROM hub.pollers WHERE name = '$1'"; }
for s in link odata cursor offset page fail inc cond; do
	must_wait "$(done_run $s)" 30 "poller $s did not finish its run: $(q "SELECT row(x.*) FROM hub.poll_status x WHERE poller = '$s'")"
done
ok "every poller ran at once on creation and finished its run"
expect "link_header: every record once, ids above 2^53 exact" \
	"$(q "SELECT count(*) || ' ' || count(DISTINCT aggregate_id) || ' ' || min(aggregate_id::numeric) || ' ' || max(aggregate_id::numeric) FROM hub.inbox WHERE source = 'poll:link'")" \
	"120 120 9007199254740993 9007199254741112"
for s in odata cursor offset page; do expect "$s paging: every record once" "$(inbox $s)" "95 95"; done
expect "page paging: ten pages, the last one short" "$(q "SELECT count(*) FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'page'")" 10

expect "failed pages: every record once after them" "$(inbox fail)" "40 40"
expect "each failed page recorded with what was wrong, all at the same position" \
	"$(q "SELECT string_agg(CASE WHEN error ~ 'text/html' THEN 'html' WHEN error ~ 'not an array' THEN 'array' WHEN error ~ '^HTTP 503' THEN '503' WHEN error ~ 'not JSON' THEN 'notjson' ELSE 'transport' END, ' ' ORDER BY request_id) || ' ' || count(DISTINCT url) FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'fail' AND outcome = 'failed'")" \
	"html notjson array transport notjson 503 1"
expect "the excerpts of failed pages are kept, credentials redacted" \
	"$(q "SELECT bool_and(excerpt !~ 'sk_live_leak') AND bool_or(excerpt ~ 'redacted') FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'fail' AND outcome = 'failed'")" t

must_wait "SELECT last_error ~ 'cycle' FROM hub.pollers WHERE name = 'cycle'" 30 "the cycling token did not end the run"
ok "a cycling token ends the run, recorded: $(q "SELECT left(last_error, 60) FROM hub.pollers WHERE name = 'cycle'")"
must_wait "SELECT last_error ~ 'another origin' FROM hub.pollers WHERE name = 'foreign'" 30 "the foreign next link was not refused"
expect "a next link to another host is refused, never requested" "$(requests foreign '^/link/fh')" 1

# ids 50 and 60 (page 1) move behind the others after page 2: page 3 brings
# their new versions, and the API's positions drift by two (ids 201 and 202
# fall between pages 2 and 3, as with any offset paging): the next run,
# since the watermark minus the lookback, brings them
expect "300 records of one timestamp over three pages, two of page 1 updated between pages: their new versions" \
	"$(q "SELECT count(*) || ' ' || count(*) FILTER (WHERE aggregate_id IN ('50', '60')) FROM hub.inbox WHERE source = 'poll:inc'")" "300 4"
expect "the watermark is the run's largest time" "$(q "SELECT watermark FROM hub.pollers WHERE name = 'inc'")" "2026-05-01 08:00:30+00"
ctl inc '{"op": "add", "records": [{"id": 9001, "updated_at": "2026-05-01T07:58:00Z", "late": true}]}'
before=$(q "SELECT string_agg(last_success_at::text, '|' ORDER BY name) FROM hub.pollers WHERE name IN ('inc', 'cond')")
q "SELECT hub.poll_now('inc')" "SELECT hub.poll_now('cond')" >/dev/null
must_wait "SELECT count(*) = 2 FROM hub.pollers WHERE name IN ('inc', 'cond') AND next_url IS NULL
	AND last_success_at::text NOT IN (SELECT unnest(string_to_array('$before', '|')))" 30 \
	"poll_now did not run inc and cond again"
expect "the next run: a late commit behind the watermark caught by the lookback, and the records the drift skipped" \
	"$(q "SELECT (SELECT last_run_new FROM hub.pollers WHERE name = 'inc') || ' ' || count(DISTINCT aggregate_id) FROM hub.inbox WHERE source = 'poll:inc'")" "3 301"
expect "an unchanged collection: 304 to the conditional first page, nothing moved" \
	"$(q "SELECT string_agg(http_status || ':' || outcome, ' ' ORDER BY request_id) FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'cond'") $(requests cond '^/link/cond' If-None-Match) $(inbox cond)" \
	"200:end 304:not_modified 1 10 10"

must_wait "SELECT count(*) = 20 FROM hub.deliveries WHERE state = 'delivered'" 30 "push stopped meanwhile"
ok "push delivered meanwhile"
expect "poll_status shows every poller" "$(q "SELECT count(*) FROM hub.poll_status WHERE state IN ('idle', 'running')")" 10
push_finish
