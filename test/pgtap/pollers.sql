-- Pollers (issue 18): the operator's API (arguments, SQLSTATEs, audit) and
-- the whole page logic, driven without a worker by calling hub._poll_claim
-- and hub._poll_page with crafted pages: every pagination kind, dedup and
-- new versions, exact huge ids, every kind of failed page (position kept,
-- backoff), run ends, cycles, foreign next links, the watermark across a
-- run of equal timestamps, lookback and since formats, 304, max_pages,
-- throttling, leases, poll_status, retention and trace.
-- (One transaction: now() stands still, so the helpers make a poller due
-- by setting next_run_at, as time passing would.)
BEGIN;
SELECT plan(174);

-- ---------------------------------------------------------------- helpers

-- claim the poller named so (each test poller has an endpoint of its own:
-- the shard trick claims only that endpoint's pollers)
CREATE FUNCTION pg_temp.claim(pname text, due boolean DEFAULT true)
RETURNS TABLE (url text, headers text[]) LANGUAGE plpgsql AS $$
DECLARE
	e integer := (SELECT endpoint_id FROM hub.pollers WHERE name = pname);
BEGIN
	IF due THEN
		UPDATE hub.pollers SET next_run_at = now() WHERE name = pname;
	END IF;
	RETURN QUERY SELECT c.url, c.headers FROM hub._poll_claim('tap', e, 100000, 10) c;
END
$$;
-- hand the poller its page (as the worker would, for its current request)
CREATE FUNCTION pg_temp.pageb(pname text, body bytea, hdrs text[] DEFAULT ARRAY['Content-Type: application/json'],
							  status integer DEFAULT 200, err text DEFAULT NULL)
RETURNS TABLE (url text, headers text[], next_at timestamptz) LANGUAGE sql AS $$
	SELECT r.url, r.headers, r.next_at
	FROM hub.pollers p, hub._poll_page(p.poller_id, p.lease, p.next_url, status, hdrs, body, err, 7,
									   coalesce(length(body), 0)::bigint) r
	WHERE p.name = pname
$$;
CREATE FUNCTION pg_temp.page(pname text, body text, hdrs text[] DEFAULT ARRAY['Content-Type: application/json'],
							 status integer DEFAULT 200, err text DEFAULT NULL)
RETURNS TABLE (url text, headers text[], next_at timestamptz) LANGUAGE sql AS $$
	SELECT * FROM pg_temp.pageb(pname, convert_to(body, 'UTF8'), hdrs, status, err)
$$;
CREATE FUNCTION pg_temp.p(pname text) RETURNS hub.pollers LANGUAGE sql AS $$
	SELECT * FROM hub.pollers WHERE name = pname
$$;
CREATE FUNCTION pg_temp.last_req(pname text) RETURNS hub.poll_requests LANGUAGE sql AS $$
	SELECT r.* FROM hub.poll_requests r JOIN hub.pollers p USING (poller_id)
	WHERE p.name = pname ORDER BY r.request_id DESC LIMIT 1
$$;
CREATE FUNCTION pg_temp.ids(pname text) RETURNS text LANGUAGE sql AS $$
	SELECT string_agg(aggregate_id, ',' ORDER BY inbox_id) FROM hub.inbox WHERE source = 'poll:' || pname
$$;

SELECT hub.create_endpoint('erp' || n, 'http://127.0.0.1:' || (9000 + n) || '/api') FROM generate_series(1, 20) n;

-- ---------------------------------------------------------------- create_poller: arguments

SELECT throws_ok($$SELECT hub.create_poller('nope', '/x', 'erp.order')$$, '42704', 'endpoint "nope" does not exist',
	'an unknown endpoint is named (42704)');
SELECT throws_ok($$SELECT hub.create_poller('erp1', '/x', 'erp.order', pagination => 'pages')$$, '22023', 'invalid pagination: pages',
	'an unknown pagination is refused (22023)');
SELECT throws_ok($$SELECT hub.create_poller('erp1', '/x', 'erp.order', items_path => '$.data[')$$, '22023', 'invalid items_path: "$.data["',
	'a jsonpath that does not parse is refused at creation (22023)');
SELECT throws_ok($$SELECT hub.create_poller('erp1', '/x', 'erp.order', pagination => 'cursor')$$, '22023', NULL,
	'cursor pagination needs next_path');
SELECT throws_ok($$SELECT hub.create_poller('erp1', '/x', 'erp.order', next_path => 'next')$$, '22023', NULL,
	'next_path is refused where the pagination does not use it');
SELECT throws_ok($$SELECT hub.create_poller('erp1', '/x', 'erp.order', every => '0.5 seconds')$$, '22023', 'invalid every: 00:00:00.5',
	'every below a second is refused');
SELECT throws_ok($$SELECT hub.create_poller('erp1', '/x', 'erp.order', max_pages => 0)$$, '22023', 'invalid max_pages: 0',
	'max_pages 0 is refused');
SELECT throws_ok($$SELECT hub.create_poller('erp1', '/x', 'erp.order', pagination => 'offset', page_size => 0)$$, '22023',
	'invalid page_size: 0', 'page_size 0 is refused');
SELECT throws_ok($$SELECT hub.create_poller('erp1', '/x', 'erp.order', retry_base => '1 minute', retry_max => '10 seconds')$$,
	'22023', NULL, 'retry_max below retry_base is refused');
SELECT throws_ok($$SELECT hub.create_poller('erp1', '/x', 'erp.order', since_param => 'since')$$, '22023', NULL,
	'since_param needs a version_field');
SELECT throws_ok($$SELECT hub.create_poller('erp1', '/x', 'erp.order', version_field => 'u', since_param => 'since', since_zone => 'Mars/Olympus')$$,
	'22023', 'invalid since_zone: Mars/Olympus', 'an unknown time zone is refused');
SELECT throws_ok($$SELECT hub.create_poller('erp1', '/x', 'erp.order', since_format => 'rfc2822')$$, '22023', NULL,
	'an unknown since_format is refused');
SELECT throws_ok($$SELECT hub.create_poller('erp1', '/x', 'erp.order', lookback => '-1 minute')$$, '22023', NULL,
	'a negative lookback is refused');
SELECT throws_ok($$SELECT hub.create_poller('erp1', '/x y', 'erp.order')$$, '22023', NULL, 'a path with a space is refused');
SELECT throws_ok($$SELECT hub.create_poller('erp1', '/x', 'erp.order', pagination => 'cursor', next_path => 'next', cursor_param => 'a&b')$$,
	'22023', NULL, 'a parameter name with & is refused');
SELECT throws_ok($$SELECT hub.create_poller('erp1', '/x', 'erp.order', query => '{"a": {"b": 1}}')$$, '22023', NULL,
	'a query parameter that is not a scalar is refused');
SELECT throws_ok($$SELECT hub.create_poller('erp1', '/x', '')$$, '22023', NULL, 'an empty message type is refused');
SELECT throws_ok($$SELECT hub.create_poller('erp1', '/x?api_key=sk_live_1', 'erp.x')$$, '22023',
	'a poller''s path and query must not carry credentials', 'a credential in the path is refused (hub_reader reads it)');
SELECT throws_ok($$SELECT hub.create_poller('erp1', '/x', 'erp.x', query => '{"access_token": "t"}')$$, '22023',
	'a poller''s path and query must not carry credentials', 'and in the query');

SELECT lives_ok($$SELECT hub.create_poller('erp1', '/orders', 'erp.order', pagination => 'link_header', limit_param => 'limit', page_size => 2)$$,
	'a link_header poller is created');
SELECT is((SELECT name FROM hub.pollers WHERE endpoint_id = hub._endpoint_id('erp1')), 'erp1:erp.order', 'its default name is endpoint:message_type');
SELECT throws_ok($$SELECT hub.create_poller('erp1', '/orders', 'erp.order')$$, '42710', 'poller "erp1:erp.order" already exists',
	'a name in use is refused (42710)');
SELECT is((SELECT count(*)::int FROM hub.operator_audit WHERE action = 'create_poller' AND target = 'poller:erp1:erp.order'
		   AND details ->> 'pagination' = 'link_header' AND details ->> 'endpoint' = 'erp1'), 1,
	'creation is audited with the poller''s settings');
SELECT ok((SELECT next_run_at <= now() FROM hub.pollers WHERE name = 'erp1:erp.order'), 'a new poller is due at once');
SELECT throws_ok($$SELECT hub.poll_now('ghost')$$, '42704', 'poller "ghost" does not exist', 'poll_now of an unknown poller: 42704');
SELECT throws_ok($$SELECT hub.set_poller_watermark('erp1:erp.order', 'yesterday-ish')$$, '22023', NULL,
	'a watermark that is no time is refused');

-- ---------------------------------------------------------------- link_header

-- (the run's traceparent header aside: trace_context.sql, poll_trace.sh)
SELECT results_eq($$SELECT url, ARRAY(SELECT h FROM unnest(headers) h WHERE h NOT LIKE 'traceparent: %') FROM pg_temp.claim('erp1:erp.order')$$,
	$$VALUES ('http://127.0.0.1:9001/api/orders?limit=2', ARRAY['Accept: application/json'])$$,
	'the claim returns the first page''s URL and headers');
SELECT is_empty($$SELECT * FROM pg_temp.claim('erp1:erp.order')$$, 'a leased poller is not claimed again: one run at a time');
SELECT is((SELECT url FROM pg_temp.page('erp1:erp.order', '[{"id": 1}, {"id": 2}]',
		ARRAY['Content-Type: application/json; charset=utf-8',
			  'Link: <http://127.0.0.1:9001/api/orders?limit=2&cursor=a,b>; rel="next last", <http://127.0.0.1:9001/api/orders?limit=2>; rel="first"'])),
	'http://127.0.0.1:9001/api/orders?limit=2&cursor=a,b',
	'Link: the next link among several, with a comma inside the URL and two rels in one value');
SELECT is((SELECT url FROM pg_temp.page('erp1:erp.order', '[{"id": 3}, {"id": 4}]',
		ARRAY['Content-Type: application/json', 'Link: <?limit=2&page=1>; rel="prev"; title="a, b"', 'link: <../api/orders?limit=2&page=3>; REL=next'])),
	'http://127.0.0.1:9001/api/orders?limit=2&page=3',
	'Link: a second Link header, a quoted comma, a relative URL resolved against the request URL');
SELECT is((SELECT row(url IS NULL, next_at > now()) FROM pg_temp.page('erp1:erp.order', '[{"id": 5}]', ARRAY['Content-Type: application/json'])),
	row(true, true), 'no next link: the run ends and the poller is due again later');
SELECT is(pg_temp.ids('erp1:erp.order'), '1,2,3,4,5', 'every record of the run is in the inbox once, in page order');
SELECT is((SELECT string_agg(outcome || ':' || records || '/' || new_records, ',' ORDER BY request_id) FROM hub.poll_requests
		   WHERE poller_id = (pg_temp.p('erp1:erp.order')).poller_id), 'more:2/2,more:2/2,end:1/1',
	'every request is audited with its records and outcome');
SELECT is((SELECT row(lease, next_url, last_run_new, total_new, last_success_at = now())::text FROM hub.pollers WHERE name = 'erp1:erp.order'),
	row(NULL::bigint, NULL::text, 5::bigint, 5::bigint, true)::text, 'the run''s end releases the lease and counts the run');

-- ---------------------------------------------------------------- dedup, versions, huge ids

SELECT hub.create_poller('erp2', '/items', 'wms.item', items_path => '$.data.items', id_field => '$.key.sku',
						 version_field => 'rev');
SELECT is((SELECT url FROM pg_temp.claim('erp2:wms.item')), 'http://127.0.0.1:9002/api/items', 'none pagination: one page');
SELECT is((SELECT url FROM pg_temp.page('erp2:wms.item',
		'{"data": {"items": [{"key": {"sku": 9007199254740993}, "rev": 1}, {"key": {"sku": "A-1"}, "rev": 1}, {"key": {"sku": "A-1"}, "rev": 1}]}}')),
	NULL, 'a none-paginated run ends after its page');
SELECT is(pg_temp.ids('erp2:wms.item'), '9007199254740993,A-1', 'an id above 2^53 is kept exactly, as text');
SELECT is((SELECT message_id FROM hub.inbox WHERE aggregate_id = '9007199254740993'), '9007199254740993@1',
	'message_id is id@version');
SELECT is((SELECT payload::text FROM hub.inbox WHERE aggregate_id = '9007199254740993'), '{"key": {"sku": 9007199254740993}, "rev": 1}',
	'the payload is the record as received');
SELECT is((SELECT row(records, new_records, duplicates)::text FROM pg_temp.last_req('erp2:wms.item')), '(3,2,1)',
	'a record repeated within a page is a duplicate');
SELECT is((SELECT duplicate_count FROM hub.inbox WHERE aggregate_id = 'A-1'), 1, 'and counted on its message');
SELECT pg_temp.claim('erp2:wms.item');
SELECT pg_temp.page('erp2:wms.item', '{"data": {"items": [{"key": {"sku": 9007199254740993}, "rev": 1}, {"key": {"sku": "A-1"}, "rev": 2}]}}');
SELECT is((SELECT row(records, new_records, duplicates)::text FROM pg_temp.last_req('erp2:wms.item')), '(2,1,1)',
	'the same version again is a duplicate, a new version a new message');
SELECT is((SELECT string_agg(message_id, ' ' ORDER BY inbox_id) FROM hub.inbox WHERE aggregate_id = 'A-1'),
	'A-1@1 A-1@2', 'both versions of A-1 are messages');
SELECT is((SELECT row(total_new, total_duplicates, last_run_new, last_run_duplicates)::text FROM hub.pollers WHERE name = 'erp2:wms.item'),
	'(3,2,1,1)', 'the poller counts new and duplicate records, per run and in total');

-- no version: a hash of the record; no id: stored under its hash; a long id: hashed message id
SELECT hub.create_poller('erp3', '/x', 'erp.x');
SELECT pg_temp.claim('erp3:erp.x');
SELECT pg_temp.page('erp3:erp.x', '[{"id": 1, "a": 1}, {"id": 1, "a": 2}, {"a": 3}, {"id": "' || repeat('z', 300) || '"}, 7]');
SELECT is((SELECT count(*)::int FROM hub.inbox WHERE source = 'poll:erp3:erp.x'), 5,
	'without a version field a changed record is a new version (hash); records without an id are kept under their hash');
SELECT ok((SELECT bool_and(message_id ~ '^1@md5:[0-9a-f]{32}$') FROM hub.inbox WHERE source = 'poll:erp3:erp.x' AND aggregate_id = '1'),
	'the version is md5: and the record''s hash');
SELECT ok((SELECT message_id ~ '^sha256:[0-9a-f]{64}$' AND aggregate_id IS NULL FROM hub.inbox WHERE source = 'poll:erp3:erp.x' AND payload ? 'id' AND length(payload ->> 'id') = 300),
	'an id@version longer than 256 bytes becomes its sha256');
SELECT hub.create_poller('erp3', '/y', 'erp.y', version_field => 'v');
SELECT pg_temp.claim('erp3:erp.y');
SELECT pg_temp.page('erp3:erp.y', '[{"id": "a@b", "v": "c"}, {"id": "a", "v": "b@c"}, {"id": "a\\@b", "v": "c"}]');
SELECT is((SELECT string_agg(message_id, ' ' ORDER BY inbox_id) FROM hub.inbox WHERE source = 'poll:erp3:erp.y'),
	'a\@b@c a@b@c a\\\@b@c', 'an @ or \ in an id is escaped: ids and versions never run together');
-- id and version by key name (read as text with ->>): every kind of JSON value
SELECT hub.create_poller('erp18', '/k', 'erp.k', version_field => 'v');
SELECT pg_temp.claim('erp18:erp.k');
SELECT pg_temp.page('erp18:erp.k', '[{"id": 9007199254740995, "v": "2026-01-01T00:00:00Z"}, {"id": "x", "v": 1.50},
		{"id": {"n": 1}, "v": [1, "a"]}, {"id": "y", "v": true}, {"id": "z", "v": null}, {"id": null, "v": 1}]');
SELECT is((SELECT string_agg(message_id, ' ' ORDER BY inbox_id) FROM hub.inbox WHERE source = 'poll:erp18:erp.k' AND aggregate_id IS NOT NULL AND aggregate_id <> 'z'),
	'9007199254740995@2026-01-01T00:00:00Z x@1.50 {"n": 1}@[1, "a"] y@true',
	'ids and versions by key name: numbers exactly as written, strings unquoted, objects and arrays as JSON text');
SELECT ok((SELECT message_id ~ '^z@md5:[0-9a-f]{32}$' FROM hub.inbox WHERE source = 'poll:erp18:erp.k' AND aggregate_id = 'z'),
	'a JSON null version is no version: the record''s hash');
SELECT ok((SELECT message_id ~ '^@md5:[0-9a-f]{32}$' FROM hub.inbox WHERE source = 'poll:erp18:erp.k' AND aggregate_id IS NULL),
	'a JSON null id is no id: kept under the record''s hash');
SELECT is((SELECT row(records, new_records, duplicates)::text FROM pg_temp.last_req('erp18:erp.k')), '(6,6,0)',
	'all six records stored');
SELECT pg_temp.claim('erp3:erp.x');
SELECT pg_temp.page('erp3:erp.x', '[{"id": 1, "a": 1}, {"a": 3}]');
SELECT is((SELECT row(records, new_records, duplicates)::text FROM pg_temp.last_req('erp3:erp.x')), '(2,0,2)',
	'the same records again, with or without id, are duplicates');

-- a record larger than logistics_hub.max_payload_size: refused as hub.receive refuses it, the others stored
SET LOCAL logistics_hub.max_payload_size = '1kB';
SELECT hub.create_poller('erp3', '/z', 'erp.z');
SELECT pg_temp.claim('erp3:erp.z');
SELECT pg_temp.page('erp3:erp.z', '[{"id": 1}, {"id": "big-1", "blob": "' || repeat('x', 2000) || '"}, {"id": 3}]');
SELECT is((SELECT row(records, new_records, duplicates, rejected)::text || ' ' || error FROM pg_temp.last_req('erp3:erp.z')),
	'(3,2,0,1) 1 records larger than logistics_hub.max_payload_size (1kB) not stored: big-1',
	'a record larger than logistics_hub.max_payload_size is not stored, counted and named; the others are');
SELECT is(pg_temp.ids('erp3:erp.z'), '1,3', 'the page''s other records are stored');
RESET logistics_hub.max_payload_size;

-- ---------------------------------------------------------------- next_link (OData)

SELECT hub.create_poller('erp4', '/odata/SalesOrders', 'erp.so', items_path => 'value', id_field => 'SalesOrder',
						 pagination => 'next_link', next_path => '@odata.nextLink');
SELECT pg_temp.claim('erp4:erp.so');
SELECT is((SELECT url FROM pg_temp.page('erp4:erp.so',
		'{"value": [{"SalesOrder": "1"}], "@odata.nextLink": "SalesOrders?$skiptoken=1"}')),
	'http://127.0.0.1:9004/api/odata/SalesOrders?$skiptoken=1', 'next_link: @odata.nextLink, relative, resolved');
SELECT is((SELECT url FROM pg_temp.page('erp4:erp.so', '{"value": [], "@odata.nextLink": "http://127.0.0.1:9004/api/odata/SalesOrders?$skiptoken=2"}')),
	'http://127.0.0.1:9004/api/odata/SalesOrders?$skiptoken=2', 'an empty page with a next link goes on');
SELECT is((SELECT url FROM pg_temp.page('erp4:erp.so', '{"value": [{"SalesOrder": "2"}], "@odata.nextLink": null}')), NULL,
	'a null next link ends the run');
SELECT is((SELECT last_error FROM hub.pollers WHERE name = 'erp4:erp.so'), NULL, 'a run ended by protocol leaves no error');

-- foreign next link
SELECT pg_temp.claim('erp4:erp.so');
SELECT is((SELECT url FROM pg_temp.page('erp4:erp.so', '{"value": [{"SalesOrder": "3"}], "@odata.nextLink": "http://evil.example:9004/api/odata/SalesOrders?$skiptoken=3"}')),
	NULL, 'a next link to another host is not followed');
SELECT ok((SELECT outcome = 'refused' AND error ~ 'another origin' FROM pg_temp.last_req('erp4:erp.so')), 'it is recorded as refused');
SELECT ok((SELECT last_error ~ 'another origin' AND next_url IS NULL FROM hub.pollers WHERE name = 'erp4:erp.so'),
	'the run ends with the refusal as its error');
SELECT is(pg_temp.ids('erp4:erp.so'), '1,2,3', 'the page that carried it is still stored');
SELECT pg_temp.claim('erp4:erp.so');
SELECT is((SELECT url FROM pg_temp.page('erp4:erp.so', '{"value": [], "@odata.nextLink": "https://127.0.0.1:9004/api/x"}')),
	NULL, 'another scheme is another origin');
SELECT pg_temp.claim('erp4:erp.so');
SELECT is((SELECT url FROM pg_temp.page('erp4:erp.so', '{"value": [], "@odata.nextLink": "http://127.0.0.1:9005/api/x"}')),
	NULL, 'another port is another origin');
SELECT pg_temp.claim('erp4:erp.so');
SELECT is((SELECT url FROM pg_temp.page('erp4:erp.so', '{"value": [], "@odata.nextLink": "http://127.0.0.1:9004@evil.example/x"}')),
	NULL, 'user information that hides another host is another origin');
SELECT pg_temp.claim('erp4:erp.so');
SELECT is((SELECT url FROM pg_temp.page('erp4:erp.so', '{"value": [], "@odata.nextLink": 42}')), NULL,
	'a next link that is not a string ends the run');
SELECT is((pg_temp.last_req('erp4:erp.so')).outcome, 'bad_next', 'recorded as bad_next');

-- ---------------------------------------------------------------- cursor, cycles

SELECT hub.create_poller('erp5', '/events', 'tms.event', items_path => '$.results', pagination => 'cursor',
						 next_path => '$.meta.next_cursor', cursor_param => 'after', limit_param => 'limit', page_size => 50);
SELECT pg_temp.claim('erp5:tms.event');
SELECT is((SELECT url FROM pg_temp.page('erp5:tms.event', '{"results": [{"id": 1}], "meta": {"next_cursor": "c/1+"}}')),
	'http://127.0.0.1:9005/api/events?after=c%2F1%2B&limit=50', 'cursor: the token is sent back, encoded');
SELECT is((SELECT url FROM pg_temp.page('erp5:tms.event', '{"results": [], "meta": {"next_cursor": "c2"}}')),
	'http://127.0.0.1:9005/api/events?after=c2&limit=50', 'an empty page with a token goes on');
SELECT is((SELECT url FROM pg_temp.page('erp5:tms.event', '{"results": [{"id": 2}], "meta": {"next_cursor": "c/1+"}}')),
	NULL, 'a token seen before in the run ends it (a cycle)');
SELECT ok((SELECT outcome = 'cycle' AND error ~ 'seen before' FROM pg_temp.last_req('erp5:tms.event')), 'recorded as a cycle');
SELECT ok((SELECT last_error ~ 'cycle' AND last_success_at IS NULL FROM hub.pollers WHERE name = 'erp5:tms.event'),
	'the poller shows it, and the run does not count as a success');
SELECT is(pg_temp.ids('erp5:tms.event'), '1,2', 'the records before the cycle are kept');
SELECT pg_temp.claim('erp5:tms.event');
SELECT is((SELECT url FROM pg_temp.page('erp5:tms.event', '{"results": [{"id": 1}], "meta": {"next_cursor": "c/1+"}}')),
	'http://127.0.0.1:9005/api/events?after=c%2F1%2B&limit=50', 'a new run may see the same token again');
SELECT is((SELECT url FROM pg_temp.page('erp5:tms.event', '{"results": [{"id": 3}], "meta": {}}')), NULL,
	'no token: the run ends');

-- ---------------------------------------------------------------- offset, has_more

SELECT hub.create_poller('erp6', '/rec', 'erp.rec', items_path => 'items', pagination => 'offset', page_size => 2,
						 has_more_path => 'hasMore');
SELECT is((SELECT url FROM pg_temp.claim('erp6:erp.rec')), 'http://127.0.0.1:9006/api/rec?limit=2&offset=0', 'offset: the first page');
SELECT is((SELECT url FROM pg_temp.page('erp6:erp.rec', '{"items": [{"id": 1}, {"id": 2}], "hasMore": true}')),
	'http://127.0.0.1:9006/api/rec?limit=2&offset=2', 'offset advances by the records received');
SELECT is((SELECT url FROM pg_temp.page('erp6:erp.rec', '{"items": [{"id": 3}], "hasMore": true}')),
	'http://127.0.0.1:9006/api/rec?limit=2&offset=3', 'a short page with hasMore true goes on (by what was received: never a gap)');
SELECT is((SELECT url FROM pg_temp.page('erp6:erp.rec', '{"items": [], "hasMore": true}')),
	'http://127.0.0.1:9006/api/rec?limit=2&offset=5', 'an empty page with hasMore true goes on by a page');
SELECT is((SELECT url FROM pg_temp.page('erp6:erp.rec', '{"items": [{"id": 6}, {"id": 7}], "hasMore": false}')), NULL,
	'hasMore false ends the run, even after a full page');

SELECT hub.create_poller('erp7', '/rec', 'erp.rec', pagination => 'offset', offset_param => 'skip', limit_param => 'top', page_size => 2);
SELECT pg_temp.claim('erp7:erp.rec');
SELECT is((SELECT url FROM pg_temp.page('erp7:erp.rec', '[{"id": 1}, {"id": 2}]')), 'http://127.0.0.1:9007/api/rec?top=2&skip=2',
	'without has_more a full page goes on');
SELECT is((SELECT url FROM pg_temp.page('erp7:erp.rec', '[{"id": 3}]')), NULL, 'and a short page ends the run');

-- ---------------------------------------------------------------- page

SELECT hub.create_poller('erp8', '/p', 'erp.p', pagination => 'page', page_param => 'pg', limit_param => 'per_page', page_size => 2,
						 query => '{"status": "open"}');
SELECT is((SELECT url FROM pg_temp.claim('erp8:erp.p')), 'http://127.0.0.1:9008/api/p?status=open&pg=1&per_page=2',
	'page: the first page, with the fixed query');
SELECT is((SELECT url FROM pg_temp.page('erp8:erp.p', '[{"id": 1}, {"id": 2}]')), 'http://127.0.0.1:9008/api/p?status=open&pg=2&per_page=2',
	'a full page goes on to the next page number');
SELECT is((SELECT url FROM pg_temp.page('erp8:erp.p', '[]')), NULL, 'an empty page without has_more is short: the run ends');
SELECT pg_temp.claim('erp8:erp.p');
SELECT is((SELECT url FROM pg_temp.page('erp8:erp.p', '', NULL, 204)), NULL, 'a 204 No Content is an empty last page');
SELECT ok((SELECT failures = 0 AND last_success_at = now() AND next_url IS NULL FROM hub.pollers WHERE name = 'erp8:erp.p'),
	'and the run a success');

-- ---------------------------------------------------------------- failed pages

SELECT hub.create_poller('erp9', '/f', 'erp.f', pagination => 'link_header', retry_base => '10 seconds', retry_max => '1 minute');
SELECT pg_temp.claim('erp9:erp.f');
SELECT pg_temp.page('erp9:erp.f', '[{"id": 1}]', ARRAY['Link: </api/f?p=2>; rel=next']);
CREATE TEMP TABLE failing (label text, body bytea, hdrs text[], status integer, err text, pattern text);
INSERT INTO failing VALUES
	('a 500', convert_to('{"error": "boom", "api_key": "sk_live_123"}', 'UTF8'), ARRAY['Content-Type: application/json'], 500, NULL, '^HTTP 500$'),
	('a 200 that is HTML', convert_to('<html>Maintenance</html>', 'UTF8'), ARRAY['Content-Type: text/html'], 200, NULL, 'not JSON'),
	('a 200 that is not JSON', convert_to('OK then', 'UTF8'), ARRAY['Content-Type: application/json'], 200, NULL, 'not JSON'),
	('an empty 200', ''::bytea, ARRAY['Content-Type: application/json'], 200, NULL, 'not JSON'),
	('items that are not an array', convert_to('{"id": 1}', 'UTF8'), ARRAY['Content-Type: application/json'], 200, NULL, 'not an array'),
	('a bad encoding', '\x5b7b226964223a2022ff227d5d'::bytea, ARRAY['Content-Type: application/json'], 200, NULL, 'UTF8'),
	('a body cut short', convert_to('[{"id": 2}, {"i', 'UTF8'), ARRAY['Content-Type: application/json'], 200,
	 'transfer closed with 100 bytes remaining to read', 'remaining'),
	('an oversized body', NULL, NULL, 0, 'response larger than logistics_hub.poll_max_page_bytes (16MB)', 'larger'),
	('a timeout', NULL, NULL, 0, 'timeout after 10000 ms', 'timeout');
CREATE TEMP TABLE failed_results (label text, pattern text, url text, next_at timestamptz, p hub.pollers);
SELECT hub._poll_release('tap');
DO $$
DECLARE
	f record;
	r record;
BEGIN
	FOR f IN SELECT * FROM failing ORDER BY label LOOP
		PERFORM pg_temp.claim('erp9:erp.f');
		SELECT * INTO r FROM pg_temp.pageb('erp9:erp.f', f.body, f.hdrs, f.status, f.err);
		INSERT INTO failed_results VALUES (f.label, f.pattern, r.url, r.next_at, pg_temp.p('erp9:erp.f'));
	END LOOP;
END
$$;
SELECT is((SELECT count(*)::int FROM failed_results WHERE next_at IS NOT NULL), 9, 'every failed page was claimed and handed in');
SELECT is_empty($$SELECT label FROM failed_results WHERE url IS NOT NULL OR next_at <= now()$$,
	'a failed page never goes on: the run waits (backoff)');
SELECT is_empty($$SELECT label FROM failed_results WHERE (p).next_url <> 'http://127.0.0.1:9009/api/f?p=2'$$,
	'a failed page keeps the position');
SELECT is_empty($$SELECT label FROM failed_results WHERE (p).last_error !~ pattern$$, 'the error says what was wrong');
SELECT is((SELECT count(*)::int FROM hub.poll_requests WHERE outcome = 'failed' AND poller_id = (pg_temp.p('erp9:erp.f')).poller_id), 9,
	'each is audited as failed');
SELECT is((SELECT failures FROM hub.pollers WHERE name = 'erp9:erp.f'), 9, 'failures count the failed pages in a row');
SELECT ok((SELECT next_run_at BETWEEN now() + interval '30 seconds' AND now() + interval '60 seconds' FROM hub.pollers WHERE name = 'erp9:erp.f'),
	'the backoff grows to retry_max (with jitter: between half and all of it)');
SELECT is(pg_temp.ids('erp9:erp.f'), '1', 'no record of a failed page is stored (not even of the one cut short)');
SELECT ok((SELECT excerpt ~ 'boom' AND excerpt !~ 'sk_live_123' AND excerpt ~ '\[redacted\]' FROM hub.poll_requests
		   WHERE poller_id = (pg_temp.p('erp9:erp.f')).poller_id AND http_status = 500),
	'the excerpt of a failed page is kept with its secrets redacted');
SELECT ok((SELECT excerpt = '<html>Maintenance</html>' FROM hub.poll_requests
		   WHERE poller_id = (pg_temp.p('erp9:erp.f')).poller_id AND error ~ 'text/html'), 'the lying 200''s excerpt shows what came');
SELECT hub.create_endpoint('sec', 'http://127.0.0.1:9100/api', auth_kind => 'basic', auth_secret => 'alice:Zq81/LmN0pQ');
SELECT hub.create_poller('sec', '/s', 'erp.s');
SELECT pg_temp.claim('sec:erp.s');
SELECT pg_temp.page('sec:erp.s', '{"seen": "alice:Zq81/LmN0pQ", "pw": "Zq81\/LmN0pQ", "b64": "' || encode(convert_to('alice:Zq81/LmN0pQ', 'UTF8'), 'base64') || '"}', NULL, 502);
SELECT is((SELECT excerpt FROM pg_temp.last_req('sec:erp.s')), '{"seen": "[redacted]", "pw": "[redacted]", "b64": "[redacted]"}',
	'the endpoint''s own secret echoed by a failed page is redacted from the excerpt (as sent, JSON-escaped, base64, the password alone)');
SELECT is((SELECT state FROM hub.poll_status WHERE poller = 'erp9:erp.f'), 'retrying', 'poll_status shows the poller retrying');
SELECT is((SELECT url FROM pg_temp.page('erp9:erp.f', '[{"id": 2}]') UNION ALL SELECT 'no rows' LIMIT 1), 'no rows',
	'after a failed page the lease is gone: a late page is refused');
SELECT is((SELECT url FROM pg_temp.claim('erp9:erp.f')), 'http://127.0.0.1:9009/api/f?p=2', 'the retry asks for the same page');
SELECT is((SELECT url FROM pg_temp.page('erp9:erp.f', '[{"id": 2}]')), NULL, 'and a good page goes on from there');
SELECT is((SELECT row(failures, last_error)::text FROM hub.pollers WHERE name = 'erp9:erp.f'), '(0,)',
	'a success clears the failures');

-- 429 / 503 with Retry-After
SELECT pg_temp.claim('erp9:erp.f');
SELECT ok((SELECT next_at >= now() + interval '600 seconds' FROM pg_temp.page('erp9:erp.f', '', ARRAY['Retry-After: 600'], 429)),
	'a 429 backs off at least Retry-After seconds');
SELECT pg_temp.claim('erp9:erp.f');
SELECT ok((SELECT next_at >= now() + interval '29 minutes'
		   FROM pg_temp.page('erp9:erp.f', '', ARRAY['Retry-After: ' || to_char((now() + interval '30 minutes') AT TIME ZONE 'UTC', 'Dy, DD Mon YYYY HH24:MI:SS "GMT"')], 503)),
	'a 503 backs off at least a Retry-After HTTP date');
SELECT pg_temp.claim('erp9:erp.f');
SELECT ok((SELECT next_at < now() + interval '1 hour 1 second' FROM pg_temp.page('erp9:erp.f', '', ARRAY['Retry-After: 999999'], 429)),
	'Retry-After is capped (logistics_hub.retry_after_max)');
SELECT pg_temp.claim('erp9:erp.f');
SELECT is((SELECT url FROM pg_temp.page('erp9:erp.f', '[{"id": 3}]',
		ARRAY['Link: </api/f?p=3>; rel=next', 'X-RateLimit-Remaining: 0', 'X-RateLimit-Reset: 30'])), NULL,
	'X-RateLimit-Remaining: 0 on a good page: the run pauses');
SELECT ok((SELECT next_run_at BETWEEN now() + interval '29 seconds' AND now() + interval '31 seconds'
			  AND next_url = 'http://127.0.0.1:9009/api/f?p=3' AND lease IS NULL FROM hub.pollers WHERE name = 'erp9:erp.f'),
	'until X-RateLimit-Reset, keeping its position');
SELECT is((pg_temp.last_req('erp9:erp.f')).outcome, 'throttled', 'recorded as throttled');

-- ---------------------------------------------------------------- stale leases, one run at a time

SELECT hub.create_poller('erp10', '/l', 'erp.l', pagination => 'link_header');
SELECT pg_temp.claim('erp10:erp.l');
CREATE TEMP TABLE old_lease AS SELECT poller_id, lease, next_url FROM hub.pollers WHERE name = 'erp10:erp.l';
UPDATE hub.pollers SET lease_until = now() - interval '1 second' WHERE name = 'erp10:erp.l';
SELECT is((SELECT url FROM pg_temp.claim('erp10:erp.l', false)), 'http://127.0.0.1:9010/api/l',
	'an expired lease is claimed again, at the committed position');
SELECT is_empty($$SELECT * FROM hub._poll_page((SELECT poller_id FROM old_lease), (SELECT lease FROM old_lease),
		(SELECT next_url FROM old_lease), 200, NULL, '[{"id": 1}]', NULL, 1, 11)$$,
	'the old lease''s page returns zero rows');
SELECT is((pg_temp.last_req('erp10:erp.l')).outcome, 'stale', 'and is audited as stale');
SELECT is(pg_temp.ids('erp10:erp.l'), NULL, 'its records are not stored');
SELECT is(hub._poll_release('tap') >= 1, true, '_poll_release gives back the worker''s leases');
SELECT is((SELECT lease FROM hub.pollers WHERE name = 'erp10:erp.l'), NULL, 'the lease is gone');
SELECT is((SELECT url FROM pg_temp.claim('erp10:erp.l', false)), 'http://127.0.0.1:9010/api/l', 'and the run is claimable again');
SELECT throws_ok($$SELECT * FROM hub._poll_claim('w', 3, 2, 10)$$, '22023', NULL, 'a shard out of range is refused');
SELECT throws_ok($$SELECT * FROM hub._poll_claim('w', 0, 1, 0)$$, '22023', NULL, 'max 0 is refused');

-- ---------------------------------------------------------------- max_pages

SELECT hub.create_poller('erp11', '/m', 'erp.m', pagination => 'link_header', max_pages => 2, every => '5 minutes');
SELECT pg_temp.claim('erp11:erp.m');
SELECT is((SELECT url FROM pg_temp.page('erp11:erp.m', '[{"id": 1}]', ARRAY['Link: </api/m?p=2>; rel=next'])), 'http://127.0.0.1:9011/api/m?p=2',
	'max_pages 2: the first page goes on');
SELECT is((SELECT url FROM pg_temp.page('erp11:erp.m', '[{"id": 2}]', ARRAY['Link: </api/m?p=3>; rel=next'])), NULL,
	'the second ends this part of the run');
SELECT ok((SELECT next_url = 'http://127.0.0.1:9011/api/m?p=3' AND next_run_at = now() + interval '5 minutes' FROM hub.pollers WHERE name = 'erp11:erp.m'),
	'the run resumes at its position at the next run');
SELECT is((SELECT state FROM hub.poll_status WHERE poller = 'erp11:erp.m'), 'resuming', 'poll_status shows it resuming');
SELECT is((SELECT url FROM pg_temp.claim('erp11:erp.m')), 'http://127.0.0.1:9011/api/m?p=3', 'the next claim resumes there');
SELECT is((SELECT url FROM pg_temp.page('erp11:erp.m', '[{"id": 3}]')), NULL, 'and the run ends by protocol');
SELECT is((SELECT row(run_pages, last_run_new)::text FROM hub.pollers WHERE name = 'erp11:erp.m'), '(3,3)', 'one run of three pages');

-- ---------------------------------------------------------------- incremental: watermark, lookback, formats

SELECT hub.create_poller('erp12', '/ch', 'erp.ch', pagination => 'link_header', version_field => 'updated',
						 since_param => 'updated_since', lookback => '2 minutes');
SELECT is((SELECT url FROM pg_temp.claim('erp12:erp.ch')), 'http://127.0.0.1:9012/api/ch', 'no watermark yet: a full read');
SELECT pg_temp.page('erp12:erp.ch', '[{"id": 1, "updated": "2026-03-01T10:00:00Z"}, {"id": 2, "updated": "2026-03-01T12:00:00Z"}]',
	ARRAY['Link: </api/ch?p=2>; rel=next']);
SELECT is((SELECT watermark FROM hub.pollers WHERE name = 'erp12:erp.ch'), NULL, 'the watermark does not move inside a run');
SELECT pg_temp.page('erp12:erp.ch', '[{"id": 3, "updated": "2026-03-01T12:00:00Z"}, {"id": 4, "updated": "2026-03-01T12:00:00+02:00"}, {"id": 5, "updated": "2026-13-01T00:00:00Z"}]');
SELECT is((SELECT watermark FROM hub.pollers WHERE name = 'erp12:erp.ch'), '2026-03-01 12:00:00+00'::timestamptz,
	'at the run''s end it is the largest version time of the run (offsets understood, a malformed time skipped)');
SELECT is(pg_temp.ids('erp12:erp.ch'), '1,2,3,4,5', 'every record is stored, also the one with the malformed time');
SELECT is((SELECT url FROM pg_temp.claim('erp12:erp.ch')), 'http://127.0.0.1:9012/api/ch?updated_since=2026-03-01T11%3A58%3A00Z',
	'the next run asks since the watermark minus the lookback, in ISO 8601 UTC');
SELECT pg_temp.page('erp12:erp.ch', '[{"id": 3, "updated": "2026-03-01T12:00:00Z"}, {"id": 6, "updated": "2026-03-01T11:59:00Z"}]');
SELECT is((SELECT row(records, new_records, duplicates)::text FROM pg_temp.last_req('erp12:erp.ch')), '(2,1,1)',
	'the overlap is a duplicate; a late commit behind the watermark is caught by the lookback');
SELECT is((SELECT watermark FROM hub.pollers WHERE name = 'erp12:erp.ch'), '2026-03-01 12:00:00+00'::timestamptz,
	'an older record never moves the watermark back');
-- a run of equal timestamps across pages, cut by a failure: nothing promoted
SELECT pg_temp.claim('erp12:erp.ch');
SELECT pg_temp.page('erp12:erp.ch', (SELECT jsonb_agg(jsonb_build_object('id', 100 + n, 'updated', '2026-03-02T08:00:00Z'))::text FROM generate_series(1, 300) n),
	ARRAY['Link: </api/ch?p=2&since=x>; rel=next']);
SELECT pg_temp.page('erp12:erp.ch', 'oops', ARRAY['Content-Type: application/json']);
SELECT is((SELECT watermark FROM hub.pollers WHERE name = 'erp12:erp.ch'), '2026-03-01 12:00:00+00'::timestamptz,
	'300 records of one timestamp and then a failed page: the watermark stays (the rest of that second is still to come)');
SELECT pg_temp.claim('erp12:erp.ch');
SELECT pg_temp.page('erp12:erp.ch', (SELECT jsonb_agg(jsonb_build_object('id', 400 + n, 'updated', '2026-03-02T08:00:00Z'))::text FROM generate_series(1, 200) n));
SELECT is((SELECT watermark FROM hub.pollers WHERE name = 'erp12:erp.ch'), '2026-03-02 08:00:00+00'::timestamptz,
	'when the run ends it is promoted');
SELECT is((SELECT count(*)::int FROM hub.inbox WHERE source = 'poll:erp12:erp.ch' AND payload ->> 'updated' = '2026-03-02T08:00:00Z'), 500,
	'every record of the equal timestamps is there');
SELECT lives_ok($$SELECT hub.set_poller_watermark('erp12:erp.ch', '2026-01-01T00:00:00Z', 'backfill')$$, 'set_poller_watermark');
SELECT is((SELECT url FROM pg_temp.claim('erp12:erp.ch', false)), 'http://127.0.0.1:9012/api/ch?updated_since=2025-12-31T23%3A58%3A00Z',
	'a set watermark starts a run from there at once');
SELECT lives_ok($$SELECT hub.set_poller_watermark('erp12:erp.ch', NULL)$$, 'a NULL watermark');
SELECT is((SELECT url FROM pg_temp.claim('erp12:erp.ch', false)), 'http://127.0.0.1:9012/api/ch', 'rewinds to a full read');
SELECT is((SELECT count(*)::int FROM hub.operator_audit WHERE action = 'set_poller_watermark' AND target = 'poller:erp12:erp.ch'), 2,
	'watermark changes are audited');

SELECT hub.create_poller('erp13', '/e', 'erp.e', version_field => 'ts', since_param => 'since', since_format => 'epoch_millis');
SELECT pg_temp.claim('erp13:erp.e');
SELECT pg_temp.page('erp13:erp.e', '[{"id": 1, "ts": 1767225600123}]');
SELECT is((SELECT url FROM pg_temp.claim('erp13:erp.e')), 'http://127.0.0.1:9013/api/e?since=1767225600123', 'epoch milliseconds');
SELECT hub.create_poller('erp14', '/e', 'erp.e', version_field => 'ts', since_param => 'since', since_format => 'epoch_seconds', lookback => '10 seconds');
SELECT pg_temp.claim('erp14:erp.e');
SELECT pg_temp.page('erp14:erp.e', '[{"id": 1, "ts": "1767225600"}]');
SELECT is((SELECT url FROM pg_temp.claim('erp14:erp.e')), 'http://127.0.0.1:9014/api/e?since=1767225590', 'epoch seconds, minus the lookback');
SELECT hub.create_poller('erp15', '/e', 'erp.e', version_field => 'write_date', since_param => 'since', since_format => 'local', since_zone => 'Europe/Berlin');
SELECT pg_temp.claim('erp15:erp.e');
SELECT pg_temp.page('erp15:erp.e', '[{"id": 1, "write_date": "2026-07-01 12:00:00"}]');
SELECT is((SELECT watermark FROM hub.pollers WHERE name = 'erp15:erp.e'), '2026-07-01 10:00:00+00'::timestamptz,
	'a naive time is read in since_zone');
SELECT is((SELECT url FROM pg_temp.claim('erp15:erp.e')), 'http://127.0.0.1:9015/api/e?since=2026-07-01%2012%3A00%3A00',
	'and sent back as a naive time of since_zone');

-- ---------------------------------------------------------------- conditional requests

SELECT hub.create_poller('erp16', '/c', 'erp.c', pagination => 'link_header');
SELECT pg_temp.claim('erp16:erp.c');
SELECT pg_temp.page('erp16:erp.c', '[{"id": 1}]', ARRAY['ETag: "v1"', 'Last-Modified: Sun, 01 Mar 2026 10:00:00 GMT', 'Link: </api/c?p=2>; rel=next']);
SELECT pg_temp.page('erp16:erp.c', '[{"id": 2}]', ARRAY['ETag: "p2"']);
SELECT is((SELECT ARRAY(SELECT h FROM unnest(headers) h WHERE h NOT LIKE 'traceparent: %') FROM pg_temp.claim('erp16:erp.c')),
	ARRAY['Accept: application/json', 'If-None-Match: "v1"', 'If-Modified-Since: Sun, 01 Mar 2026 10:00:00 GMT'],
	'the next run''s first page is conditional on the last run''s first page''s validators');
SELECT is((SELECT url FROM pg_temp.page('erp16:erp.c', '', NULL, 304)), NULL, 'a 304 ends the run');
SELECT ok((SELECT last_success_at = now() AND last_run_new = 0 AND failures = 0 FROM hub.pollers WHERE name = 'erp16:erp.c'),
	'as a success with nothing moved');
SELECT is((pg_temp.last_req('erp16:erp.c')).outcome, 'not_modified', 'audited as not_modified');
SELECT pg_temp.claim('erp16:erp.c');
SELECT pg_temp.page('erp16:erp.c', '[{"id": 1}]', ARRAY['Link: </api/c?p=2>; rel=next']);
SELECT pg_temp.page('erp16:erp.c', '', NULL, 304);
SELECT is((SELECT row(failures, next_url)::text FROM hub.pollers WHERE name = 'erp16:erp.c'), '(1,http://127.0.0.1:9016/api/c?p=2)',
	'a 304 to a request that was not conditional is a failed page');

-- ---------------------------------------------------------------- pause, resume, poll_now, drop; next due

SELECT hub.create_poller('erp17', '/o', 'erp.o', every => '1 hour');
SELECT pg_temp.claim('erp17:erp.o');
SELECT pg_temp.page('erp17:erp.o', '[]');
SELECT is((SELECT hub._poll_next_due(hub._endpoint_id('erp17'), 100000)), now() + interval '1 hour', '_poll_next_due: when the shard''s next poller is due');
SELECT hub.poll_now('erp17:erp.o', 'a user asked');
SELECT is((SELECT hub._poll_next_due(hub._endpoint_id('erp17'), 100000)), now(), 'poll_now makes it due now');
SELECT hub.pause_poller('erp17:erp.o', 'ERP maintenance');
SELECT is_empty($$SELECT * FROM pg_temp.claim('erp17:erp.o')$$, 'a paused poller is not claimed');
SELECT is((SELECT hub._poll_next_due(hub._endpoint_id('erp17'), 100000)), NULL, 'nor due');
SELECT is((SELECT state FROM hub.poll_status WHERE poller = 'erp17:erp.o'), 'paused', 'poll_status shows it paused');
SELECT hub.resume_poller('erp17:erp.o');
SELECT isnt_empty($$SELECT * FROM pg_temp.claim('erp17:erp.o', false)$$, 'resumed, it is due at once');
UPDATE hub.pollers SET lease = NULL WHERE name = 'erp17:erp.o';
SELECT hub._throttle_endpoint(hub._endpoint_id('erp17'), now() + interval '42 seconds');
SELECT is_empty($$SELECT * FROM pg_temp.claim('erp17:erp.o')$$, 'a poller of a throttled endpoint is not claimed');
SELECT is((SELECT hub._poll_next_due(hub._endpoint_id('erp17'), 100000)), now() + interval '42 seconds',
	'it is due when the throttling ends');
UPDATE hub.endpoints SET throttled_until = NULL WHERE name = 'erp17';
SELECT hub.pause_endpoint('erp17');
SELECT hub._poll_release('tap');
SELECT is_empty($$SELECT * FROM pg_temp.claim('erp17:erp.o')$$, 'a poller of a paused endpoint is not claimed');
SELECT is((SELECT string_agg(action || ':' || coalesce(reason, ''), ',' ORDER BY audit_id) FROM hub.operator_audit WHERE target = 'poller:erp17:erp.o'),
	'create_poller:,poll_now:a user asked,pause_poller:ERP maintenance,resume_poller:', 'operator actions are audited with their reason');
SELECT hub.drop_poller('erp17:erp.o');
SELECT is((SELECT count(*)::int FROM hub.pollers WHERE name = 'erp17:erp.o'), 0, 'drop_poller drops it');
SELECT is((SELECT count(*)::int FROM hub.operator_audit WHERE action = 'drop_poller' AND target = 'poller:erp17:erp.o'), 1, 'audited');

-- ---------------------------------------------------------------- poll_status, trace, retention, privileges

SELECT is((SELECT row(state, watermark, total_new, last_run_new, position)::text FROM hub.poll_status WHERE poller = 'erp12:erp.ch'),
	row('resuming', NULL::timestamptz, (SELECT total_new FROM hub.pollers WHERE name = 'erp12:erp.ch'), 500::bigint,
		'http://127.0.0.1:9012/api/ch')::text, 'poll_status: state (a new run, its lease given back), watermark, totals, last run, position');
SELECT ok((SELECT lag = now() - last_success_at FROM hub.poll_status WHERE poller = 'erp1:erp.order'), 'lag is the time since the last complete run');
SELECT results_eq($$SELECT what, endpoint, source FROM hub.trace(aggregate => '9007199254740993') ORDER BY at, what$$,
	$$VALUES ('polled', 'erp2', 'poll:erp2:wms.item'), ('received', NULL, 'poll:erp2:wms.item')$$,
	'trace follows a polled record from its request into the inbox');
SELECT ok((SELECT detail ~ '^GET http://127.0.0.1:9002/api/items -> 200 \(page 1: 3 records, 2 new\)$' FROM hub.trace(aggregate => '9007199254740993') WHERE what = 'polled'),
	'with the request''s URL, status and page');
SELECT ok((SELECT url !~ 'sk_live' FROM (SELECT hub._poll_redact('http://h/x?api_key=sk_live_1&page=2') AS url) x)
		  AND hub._poll_redact('http://h/x?api_key=sk_live_1&page=2') = 'http://h/x?api_key=[redacted]&page=2',
	'credentials in a URL are redacted in the audit');
SELECT is((SELECT poll_requests_removed FROM hub.run_retention(interval '1 hour', interval '1 hour')), 0::bigint,
	'retention keeps poll requests within the period');
INSERT INTO hub.poll_requests (poller_id, at, outcome, url)
VALUES ((pg_temp.p('erp1:erp.order')).poller_id, now() - interval '2 hours', 'end', 'http://old');
SELECT is((SELECT poll_requests_removed FROM hub.run_retention(interval '1 hour', interval '1 hour')), 1::bigint,
	'and removes older ones');
SELECT ok(NOT EXISTS (SELECT 1 FROM hub.poll_requests WHERE url = 'http://old') AND EXISTS (SELECT 1 FROM hub.poll_requests),
	'only those');
SELECT throws_ok($$DELETE FROM hub.poll_requests$$, NULL, NULL, 'poll requests are append-only');
SELECT ok(NOT has_function_privilege('hub_worker', 'hub.create_poller(text, text, text, text, interval, interval, interval, integer, text, text, text, text, text, text, text, text, integer, text, text, integer, text, interval, text, text, jsonb, boolean)', 'EXECUTE')
		  AND has_function_privilege('hub_worker', 'hub._poll_page(integer, bigint, text, integer, text[], bytea, text, integer, bigint)', 'EXECUTE')
		  AND NOT has_table_privilege('hub_worker', 'hub.pollers', 'UPDATE')
		  AND has_table_privilege('hub_reader', 'hub.poll_status', 'SELECT'),
	'hub_worker records pages but changes no poller''s configuration; hub_reader reads poll_status');
SELECT is((SELECT relpersistence FROM pg_class WHERE oid = 'hub.poll_requests'::regclass), 'p', 'the audit is WAL-logged');
SELECT ok((SELECT extconfig @> ARRAY['hub.pollers'::regclass::oid, 'hub.poll_requests'::regclass::oid] FROM pg_extension WHERE extname = 'logistics_hub'),
	'pollers and their audit are in a dump');

SELECT * FROM finish();
ROLLBACK;
