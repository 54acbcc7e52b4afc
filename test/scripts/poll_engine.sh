#!/usr/bin/env bash
# test/scripts/poll_engine.sh --- the pollers run by the dispatchers, end to
# end against the loopback list API (test/receiver/poll_api.py), through the
# same HTTP engine as push:
#   - link_header paging over huge ids: every record once in hub.inbox, the
#     run ended by the protocol, each page fetched by a dispatcher
#   - the endpoint's auth goes with every page (bearer token at the API)
#   - a 429 with Retry-After on a page pauses the endpoint for poll and push
#     alike: the API gets no request, and no push attempt is made, before
#     the pause is over; then the run resumes at its position
#   - an oversized page (logistics_hub.poll_max_page_bytes) is a failed page,
#     the position kept; the run completes once the limit allows it
#   - a next link to another host is refused by the SQL and never requested;
#     a URL of another origin put in the poller's position is refused by the
#     worker itself before anything is sent
#   - two dispatchers on a spread endpoint never run one poller twice at once:
#     the pages of each lease are one run's, leases never overlap
#   - the dispatchers never restarted
source test/receiver/push_lib.sh
PUSH_DISPATCHERS=2 push_setup poll-engine 152 "logistics_hub.dispatcher_naptime = 200ms" \
	"logistics_hub.retry_after_max = 30s"

dir=$LH_CLUSTER_DIR/api
mkdir -p "$dir"
python3 test/receiver/poll_api.py serve --port-file "$dir/port" --log "$dir/requests.log" >"$dir/api.out" 2>&1 &
api=$!
trap 'kill $api 2>/dev/null; push_cleanup' EXIT
for _ in $(seq 100); do [ -s "$dir/port" ] && break; sleep 0.05; done
APORT=$(cat "$dir/port")
ctl() { python3 test/receiver/poll_api.py control --port "$APORT" "$1" >/dev/null; }
# requests the API got whose path matches a regex
requests() { python3 -c "
import json, re, sys
print(sum(1 for l in open('$dir/requests.log') if re.search(sys.argv[1], json.loads(l)['path'])))" "$1"; }
# every poller so far paused and idle: the next part has the API to itself
quiet() {
	q "SELECT count(hub.pause_poller(name)) FROM hub.pollers WHERE NOT paused" >/dev/null
	must_wait "SELECT count(*) = 0 FROM hub.pollers WHERE lease IS NOT NULL" 30 "the pollers did not stop"
}
run_over() { must_wait "SELECT lease IS NULL AND next_url IS NULL AND last_run_at IS NOT NULL FROM hub.pollers WHERE name = '$1'" "${2:-30}" "poller $1: the run did not end: $(q "SELECT row_to_json(p) FROM hub.pollers p WHERE name = '$1'")"; }

q "SELECT hub.create_endpoint('api', 'http://127.0.0.1:$APORT/', 'erp', auth_kind => 'bearer', auth_secret => 'tok-poll-secret')" >/dev/null

# ---------------------------------------------------------------- paging, auth
ctl '{"op": "reset", "count": 50, "ids_from": 9007199254740993}'
q "SELECT hub.create_poller('api', '/link/orders', 'erp.order', name => 'link', pagination => 'link_header',
	limit_param => 'limit', page_size => 7, query => '{\"multi\": \"1\"}')" >/dev/null
must_wait "SELECT count(*) = 50 FROM hub.inbox WHERE source = 'poll:link'" 30 \
	"link_header: not every record reached the inbox ($(q "SELECT count(*) FROM hub.inbox WHERE source = 'poll:link'"))"
run_over link
got=$(q "SELECT count(*) || ' ' || count(DISTINCT aggregate_id) || ' ' || min(aggregate_id::numeric) || ' ' || max(aggregate_id::numeric) FROM hub.inbox WHERE source = 'poll:link'")
[ "$got" = "50 50 9007199254740993 9007199254741042" ] || fail "link_header over huge ids: $got"
got=$(q "SELECT count(*) || ' ' || string_agg(DISTINCT outcome, ',' ORDER BY outcome) || ' ' || bool_and(worker LIKE 'dispatcher %')
         FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'link'")
[ "$got" = "8 end,more true" ] || fail "link_header: the pages the dispatchers fetched: $got"
got=$(python3 -c "
import json
print(all(json.loads(l)['headers'].get('Authorization') == 'Bearer tok-poll-secret' for l in open('$dir/requests.log')))")
[ "$got" = True ] || fail "not every page carried the endpoint's bearer token"
ok "link_header: 8 pages fetched by the dispatchers, 50 records once with ids above 2^53 exact, the endpoint's auth on every page"

# ---------------------------------------------------------------- 429 for poll and push alike
quiet
q "SELECT hub.subscribe('api', 'order.*', filter => '{\"t\": \"api\"}', retry_base => '100 ms', retry_max => '200 ms')" >/dev/null
ctl '{"op": "reset", "count": 30}'
q "SELECT hub.create_poller('api', '/link/thr', 'erp.thr', name => 'thr', pagination => 'link_header',
	limit_param => 'limit', page_size => 10, retry_base => '100 ms')" >/dev/null
must_wait "SELECT count(*) >= 10 FROM hub.inbox WHERE source = 'poll:thr'" 30 "the first page of 'thr' was not recorded"
run_over thr
# the next run's first page gets a 429 with Retry-After: 4
ctl '{"op": "misbehave", "mode": "status", "code": 429, "retry_after": 4}'
before=$(requests '^/link/thr')
q "SELECT hub.poll_now('thr')" >/dev/null
must_wait "SELECT count(*) = 1 FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'thr' AND r.http_status = 429" 20 \
	"the 429 was not recorded"
must_wait "SELECT throttled_until > now() FROM hub.endpoints WHERE name = 'api'" 10 "the 429 did not throttle the endpoint"
t429=$(python3 -c "
import json
print([json.loads(l)['at'] for l in open('$dir/requests.log') if json.loads(l)['path'].startswith('/link/thr')][$before])")
# meanwhile: a push to the same endpoint, and another poller of it made due
push_publish api P-1 >/dev/null
q "SELECT hub.create_poller('api', '/link/orders', 'erp.other', name => 'other', pagination => 'link_header', limit_param => 'limit', page_size => 50)" >/dev/null
must_wait "SELECT count(*) = 30 FROM hub.inbox WHERE source = 'poll:other'" 30 "the other poller did not run after the pause"
must_wait "SELECT state IN ('delivered', 'dead', 'retry_wait') AND attempts >= 1 FROM hub.deliveries" 30 "the push was not attempted after the pause"
early=$(python3 -c "
import json
print(sum(1 for l in open('$dir/requests.log') if $t429 < json.loads(l)['at'] < $t429 + 3.7))")
[ "$early" = 0 ] || fail "$early requests reached the API within the 4 s pause a 429 asked for"
# the push went out (a POST the read-only API refuses with 405) only after the pause
got=$(q "SELECT bool_and(a.at >= to_timestamp($t429) + interval '3.7 s') FROM hub.attempts a WHERE a.outcome <> 'deferred'")
[ "$got" = t ] || fail "a push attempt to the throttled endpoint was made during the pause"
ok "a 429 with Retry-After on a page paused the endpoint: no page and no push went to it before the pause was over"
run_over thr 30
got=$(q "SELECT count(*) || ' ' || count(DISTINCT aggregate_id) FROM hub.inbox WHERE source = 'poll:thr'")
[ "$got" = "30 30" ] || fail "after the pause the run did not finish with every record once: $got"
ok "then the run finished, every record once"

# ---------------------------------------------------------------- an oversized page
quiet
ctl '{"op": "reset", "count": 40}'
q "ALTER SYSTEM SET logistics_hub.poll_max_page_bytes = '2kB'" "SELECT pg_reload_conf()" >/dev/null
sleep 1
q "SELECT hub.create_poller('api', '/link/big', 'erp.big', name => 'big', pagination => 'link_header',
	limit_param => 'limit', page_size => 40, retry_base => '1 second', retry_max => '1 second')" >/dev/null
must_wait "SELECT count(*) >= 1 FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id)
           WHERE p.name = 'big' AND r.outcome = 'failed' AND r.error ~ 'response larger than 2048 bytes'" 20 \
	"an oversized page was not a failed page: $(q "SELECT string_agg(outcome || ':' || coalesce(error, ''), ' | ') FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'big'")"
got=$(q "SELECT count(*) FROM hub.inbox WHERE source = 'poll:big'")
[ "$got" = 0 ] || fail "an oversized page stored $got records"
q "ALTER SYSTEM RESET logistics_hub.poll_max_page_bytes" "SELECT pg_reload_conf()" >/dev/null
must_wait "SELECT count(*) = 40 FROM hub.inbox WHERE source = 'poll:big'" 30 "the page was not fetched once the limit allowed it"
ok "a page over logistics_hub.poll_max_page_bytes: a failed page, nothing stored, the position kept; fetched whole once allowed"

# ---------------------------------------------------------------- other hosts
quiet
ctl '{"op": "reset", "count": 20}'
ctl '{"op": "misbehave", "mode": "foreign_next"}'
q "SELECT hub.create_poller('api', '/link/fh', 'erp.fh', name => 'foreign', pagination => 'link_header', limit_param => 'limit', page_size => 10)" >/dev/null
must_wait "SELECT count(*) = 1 FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'foreign' AND outcome = 'refused'" 20 \
	"a next link to another host was not refused: $(q "SELECT string_agg(r.outcome || ':' || coalesce(r.http_status, 0) || ':' || coalesce(r.error, '') || ':' || r.url, ' | ' ORDER BY request_id) FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'foreign'") $(q "SELECT row_to_json(p) FROM hub.pollers p WHERE name = 'foreign'")"
[ "$(requests '^/link/fh')" = 1 ] || fail "the API got $(requests '^/link/fh') requests for the foreign-next poller"
ok "a next link to another host refused by the SQL, never requested"
# a position of another origin (localhost is the same server by another name): the worker refuses it
before=$(requests '^/link/pos')
q "SELECT hub.create_poller('api', '/link/pos', 'erp.pos', name => 'pos', pagination => 'link_header', paused => true)" >/dev/null
q "UPDATE hub.pollers SET next_url = 'http://localhost:$APORT/link/pos?after=0', next_run_at = now() WHERE name = 'pos'" \
	"SELECT hub.resume_poller('pos')" >/dev/null
must_wait "SELECT count(*) >= 1 FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'pos' AND r.outcome = 'failed'" 20 \
	"a URL of another origin was not a failed page"
got=$(q "SELECT error FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id) WHERE p.name = 'pos' ORDER BY request_id LIMIT 1")
case $got in *"not of the endpoint's origin"*) ;; *) fail "a URL of another origin: $got" ;; esac
[ "$(requests '^/link/pos')" = "$before" ] || fail "a URL of another origin was requested"
q "SELECT hub.pause_poller('pos')" >/dev/null
ok "a URL of another origin refused by the worker before anything was sent"

# ---------------------------------------------------------------- two dispatchers, one run at a time
quiet
q "UPDATE hub.endpoints SET spread = true WHERE name = 'api'" >/dev/null
ctl '{"op": "reset", "count": 60}'
for i in 1 2 3 4 5 6; do
	q "SELECT hub.create_poller('api', '/link/two$i', 'erp.two$i', name => 'two$i', pagination => 'link_header',
		limit_param => 'limit', page_size => 6, every => '1 second')" >/dev/null
done
for round in 1 2 3; do
	must_wait "SELECT count(*) = 6 FROM hub.pollers WHERE name LIKE 'two%' AND total_new = 60 AND lease IS NULL" 60 \
		"round $round: the six pollers did not finish"
	for i in 1 2 3 4 5 6; do q "SELECT hub.poll_now('two$i')" >/dev/null; done
	sleep 1
done
got=$(q "WITH r AS (SELECT poller_id, lease, min(at) AS s, max(at) AS e, count(DISTINCT worker) AS w
                    FROM hub.poll_requests WHERE poller_id IN (SELECT poller_id FROM hub.pollers WHERE name LIKE 'two%')
                    GROUP BY poller_id, lease)
         SELECT count(*) FILTER (WHERE w > 1) || ' ' ||
                (SELECT count(*) FROM r a JOIN r b ON a.poller_id = b.poller_id AND a.lease < b.lease
                 WHERE a.s <= b.e AND b.s <= a.e) || ' ' || (count(*) >= 18)
         FROM r")
[ "$got" = "0 0 true" ] || fail "two dispatchers: leases with several workers, overlapping leases, enough runs: $got"
got=$(q "SELECT count(*) || ' ' || sum(duplicate_count) FROM hub.inbox WHERE source LIKE 'poll:two%'")
case $got in "360 "*) ;; *) fail "two dispatchers: the records in the inbox: $got" ;; esac
ok "two dispatchers, a spread endpoint, six pollers run again and again: one worker a lease, leases never overlap, every record once ($(q "SELECT string_agg(DISTINCT worker, ',') FROM hub.poll_requests"))"

grep -q "recording a page of poller" "$LH_CLUSTER_DIR/server.log" && fail "a page could not be recorded: $(grep "recording a page" "$LH_CLUSTER_DIR/server.log" | head -3)"
push_finish
