-- Endpoint throttling, shared by push and poll (sql/src/50_dispatch.sql,
-- issue 18): hub._throttle_endpoint records the time an endpoint asked us
-- to wait until, a later time wins and an earlier one changes nothing;
-- hub._dispatch_endpoints reports it to the dispatchers beside the
-- endpoint's own usability; the change is not audited; bad arguments are
-- 22023; only hub_worker may call it.  The worker's side (a 429 or 503
-- with Retry-After, X-RateLimit-Remaining: 0) is test/scripts/push_throttle.sh
-- and test/scripts/poll_engine.sh.
BEGIN;
SELECT plan(10);

SELECT hub.create_endpoint('thr', 'http://127.0.0.1:9/', 'erp');
SELECT is((SELECT throttled_until FROM hub.endpoints WHERE name = 'thr'), NULL, 'a new endpoint is not throttled');

SELECT hub._throttle_endpoint((SELECT endpoint_id FROM hub.endpoints WHERE name = 'thr'), now() + interval '10 s');
SELECT is((SELECT throttled_until FROM hub.endpoints WHERE name = 'thr'), now() + interval '10 s',
	'_throttle_endpoint records the time');
SELECT hub._throttle_endpoint((SELECT endpoint_id FROM hub.endpoints WHERE name = 'thr'), now() + interval '5 s');
SELECT is((SELECT throttled_until FROM hub.endpoints WHERE name = 'thr'), now() + interval '10 s',
	'an earlier time changes nothing');
SELECT hub._throttle_endpoint((SELECT endpoint_id FROM hub.endpoints WHERE name = 'thr'), now() + interval '20 s');
SELECT is((SELECT throttled_until FROM hub.endpoints WHERE name = 'thr'), now() + interval '20 s',
	'a later time wins');

SELECT is((SELECT row(d.usable, d.throttled_until)::text
		   FROM hub._dispatch_endpoints(ARRAY[(SELECT endpoint_id FROM hub.endpoints WHERE name = 'thr')], 0, 1) d),
	row(true, now() + interval '20 s')::text,
	'_dispatch_endpoints reports the throttle beside the endpoint''s own usability');

SELECT is((SELECT count(*)::int FROM hub.operator_audit WHERE target = 'thr' AND action <> 'create_endpoint'), 0,
	'a throttle is not audited');

SELECT throws_ok($$SELECT hub._throttle_endpoint(NULL, now())$$, '22023', NULL, 'no endpoint: 22023');
SELECT throws_ok($$SELECT hub._throttle_endpoint(1, NULL)$$, '22023', NULL, 'no time: 22023');
SELECT throws_ok($$SELECT hub._throttle_endpoint(1, now() + interval '25 hours')$$, '22023', NULL,
	'more than a day ahead: 22023');

SELECT is(ARRAY(SELECT r FROM unnest(ARRAY['hub_worker', 'hub_admin', 'hub_writer', 'hub_reader']) r
				WHERE has_function_privilege(r, 'hub._throttle_endpoint(integer, timestamptz)', 'EXECUTE')),
	ARRAY['hub_worker'], 'only hub_worker may record a throttle');

SELECT * FROM finish();
ROLLBACK;
