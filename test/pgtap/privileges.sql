-- The privilege matrix: a login role in each of hub_admin, hub_writer and
-- hub_reader, and one with nothing but USAGE on the schema, each trying
-- what it must not do (42501) and what it may.  Then the catalogue rules:
-- no extension function keeps EXECUTE for PUBLIC unless it is a pure
-- function of its arguments, every SECURITY DEFINER function pins
-- search_path, no column or function result a reader can see is a secret,
-- and functions chosen by hub_admin (transforms, handlers) never run with
-- more rights than their owner has.
-- Autocommit (own database).
SELECT plan(68);

SELECT hub.create_endpoint('erp', 'http://127.0.0.1:9/erp', 'erp', auth_kind => 'bearer', auth_secret => 's3cret');
SELECT hub.subscribe('erp', 'order.*', ordering => 'none', max_attempts => 1) AS sub \gset
SELECT hub.publish('order.created', 'SO-' || g, jsonb_build_object('order_id', 'SO-' || g)) FROM generate_series(1, 3) g;
SELECT hub.fail_delivery(delivery_id, lease_token, 500, 'boom', 1) FROM hub.claim_deliveries(10, 'w');
SELECT min(delivery_id) AS d1, max(delivery_id) AS d3 FROM hub.deliveries \gset
SELECT hub.receive('erp', 'in-1', 'order.confirmed', '{"order_id": "SO-1"}');

CREATE ROLE priv_admin LOGIN;
CREATE ROLE priv_writer LOGIN;
CREATE ROLE priv_reader LOGIN;
CREATE ROLE priv_nobody LOGIN;
GRANT hub_admin TO priv_admin;
GRANT hub_writer TO priv_writer;
GRANT hub_reader TO priv_reader;
GRANT USAGE ON SCHEMA hub TO priv_nobody;	-- so that the objects' own privileges are what is tested

SELECT is((SELECT count(*) FROM pg_roles WHERE rolname IN ('hub_admin', 'hub_writer', 'hub_reader') AND NOT rolcanlogin)::int, 3,
	'the three hub roles exist (without login)');

-- ---------------------------------------------------------------- nobody
SET ROLE priv_nobody;
SELECT throws_ok($$SELECT hub.publish('order.created', 'SO-9', '{"order_id": "SO-9"}')$$, '42501', NULL, 'nobody cannot publish');
SELECT throws_ok($$INSERT INTO hub.outbox (event_type, aggregate_id, payload) VALUES ('order.created', 'SO-9', '{"order_id": "SO-9"}')$$,
	'42501', NULL, 'nobody cannot insert events');
SELECT throws_ok($$SELECT hub.receive('erp', 'in-9', 'order.confirmed', '{}')$$, '42501', NULL, 'nobody cannot receive');
SELECT throws_ok(format($$SELECT hub.replay(%s::bigint, 'x')$$, :d1), '42501', NULL, 'nobody cannot replay a delivery');
SELECT throws_ok(format($$SELECT hub.replay(%s, 'x')$$, :sub), '42501', NULL, 'nobody cannot replay a subscription');
SELECT throws_ok($$SELECT * FROM hub._endpoint_secrets$$, '42501', NULL, 'nobody cannot read secrets');
SELECT throws_ok($$SELECT * FROM hub._dispatch_endpoints(ARRAY[1], 0, 1)$$, '42501', NULL, 'nobody cannot read secrets through the workers'' function');
SELECT throws_ok($$UPDATE hub.endpoints SET url = 'http://127.0.0.1:9/evil'$$, '42501', NULL, 'nobody cannot change endpoint URLs');
SELECT throws_ok($$SELECT hub.create_endpoint('evil', 'http://127.0.0.1:9/evil')$$, '42501', NULL, 'nobody cannot create endpoints');
SELECT throws_ok($$SELECT * FROM hub.sync_status$$, '42501', NULL, 'nobody cannot read the views');
SELECT throws_ok($$SELECT * FROM hub.trace('x')$$, '42501', NULL, 'nobody cannot trace');
RESET ROLE;

-- ---------------------------------------------------------------- writer
SET ROLE priv_writer;
SELECT lives_ok($$SELECT hub.publish('order.created', 'SO-W', '{"order_id": "SO-W"}')$$, 'a writer can publish');
SELECT lives_ok($$INSERT INTO hub.outbox (event_type, aggregate_id, payload) VALUES ('order.created', 'SO-X', '{"order_id": "SO-X"}')$$,
	'a writer can insert events');
SELECT lives_ok($$SELECT hub.receive('erp', 'in-2', 'order.confirmed', '{"order_id": "SO-2"}')$$, 'a writer can receive');
SELECT throws_ok($$SELECT * FROM hub.outbox$$, '42501', NULL, 'a writer cannot read events');
SELECT throws_ok($$UPDATE hub.outbox SET aggregate_id = 'x'$$, '42501', NULL, 'a writer cannot update events');
SELECT throws_ok(format($$SELECT hub.replay(%s::bigint, 'x')$$, :d1), '42501', NULL, 'a writer cannot replay');
SELECT throws_ok(format($$SELECT hub.skip_delivery(%s, 'x')$$, :d1), '42501', NULL, 'a writer cannot skip');
SELECT throws_ok($$SELECT hub.pause_endpoint('erp')$$, '42501', NULL, 'a writer cannot pause');
SELECT throws_ok($$SELECT hub.create_endpoint('w', 'http://127.0.0.1:9/w')$$, '42501', NULL, 'a writer cannot create endpoints');
SELECT throws_ok($$SELECT hub.subscribe('erp', 'shipment.*')$$, '42501', NULL, 'a writer cannot subscribe');
SELECT throws_ok($$SELECT * FROM hub.claim_deliveries(1)$$, '42501', NULL, 'a writer cannot claim deliveries');
SELECT throws_ok($$SELECT * FROM hub.process_inbox()$$, '42501', NULL, 'a writer cannot run inbox handlers');
SELECT throws_ok($$SELECT * FROM hub._endpoint_secrets$$, '42501', NULL, 'a writer cannot read secrets');
SELECT throws_ok($$UPDATE hub.endpoints SET url = 'http://127.0.0.1:9/evil'$$, '42501', NULL, 'a writer cannot change endpoint URLs');
RESET ROLE;

-- ---------------------------------------------------------------- reader
SET ROLE priv_reader;
SELECT lives_ok($$SELECT * FROM hub.sync_status$$, 'a reader reads hub.sync_status');
SELECT lives_ok($$SELECT * FROM hub.dead_letters$$, 'a reader reads hub.dead_letters');
SELECT lives_ok($$SELECT * FROM hub.outbox, hub.deliveries, hub.attempts, hub.endpoints, hub.subscriptions, hub.inbox LIMIT 1$$,
	'a reader reads the tables');
SELECT lives_ok($$SELECT * FROM hub.trace('x')$$, 'a reader can trace');
SELECT throws_ok($$SELECT * FROM hub._endpoint_secrets$$, '42501', NULL, 'a reader cannot read secrets');
SELECT throws_ok($$SELECT * FROM hub._dispatch_endpoints(ARRAY[1], 0, 1)$$, '42501', NULL, 'a reader cannot read secrets through the workers'' function');
SELECT throws_ok($$SELECT hub.publish('order.created', 'SO-R', '{"order_id": "SO-R"}')$$, '42501', NULL, 'a reader cannot publish');
SELECT throws_ok($$SELECT hub.receive('erp', 'in-r', 'order.confirmed', '{}')$$, '42501', NULL, 'a reader cannot receive');
SELECT throws_ok(format($$SELECT hub.replay(%s, 'x')$$, :sub), '42501', NULL, 'a reader cannot replay');
SELECT throws_ok($$SELECT hub.pause_endpoint('erp')$$, '42501', NULL, 'a reader cannot pause');
SELECT throws_ok($$UPDATE hub.endpoints SET url = 'http://127.0.0.1:9/evil'$$, '42501', NULL, 'a reader cannot change endpoint URLs');
RESET ROLE;
SELECT is_empty($$
	SELECT c.relname || '.' || a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
	WHERE c.relnamespace = 'hub'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
		AND a.attname ~* 'secret|password|client_id|credential'
		AND has_column_privilege('hub_reader', c.oid, a.attnum, 'SELECT')
	UNION ALL
	SELECT p.oid::regprocedure::text FROM pg_proc p
	WHERE p.pronamespace = 'hub'::regnamespace AND has_function_privilege('hub_reader', p.oid, 'EXECUTE')
		AND array_to_string(p.proargnames, ',') ~* 'secret|password|client_id|credential'
		AND p.proname <> 'webhook_signature'
$$, 'no column or function result a reader can see holds a secret (webhook_signature takes one, returns none)');

-- ---------------------------------------------------------------- admin
SET ROLE priv_admin;
SELECT lives_ok($$SELECT hub.create_endpoint('wms', 'http://127.0.0.1:9/wms', 'wms')$$, 'an admin creates endpoints');
SELECT lives_ok($$SELECT hub.subscribe('wms', 'order.*')$$, 'an admin subscribes');
SELECT lives_ok($$SELECT * FROM hub._endpoint_secrets$$, 'an admin reads secrets');
SELECT lives_ok($$UPDATE hub.endpoints SET url = 'http://127.0.0.1:9/wms2', timeout_ms = 5000 WHERE name = 'wms'$$,
	'an admin changes an endpoint''s URL and settings');
SELECT throws_ok($$UPDATE hub.endpoints SET url = 'ftp://127.0.0.1/wms' WHERE name = 'wms'$$, '22023', NULL,
	'and the new URL is checked like a new endpoint''s');
SELECT throws_ok($$UPDATE hub.endpoints SET circuit_state = 'closed'$$, '42501', NULL, 'the circuit breaker''s columns are not the admin''s');
SELECT throws_ok($$UPDATE hub.endpoints SET paused = true$$, '42501', NULL, 'pausing goes through the audited function');
SELECT lives_ok($$SELECT hub.pause_endpoint('erp', 'test'), hub.resume_endpoint('erp', 'test')$$, 'an admin pauses and resumes');
SELECT lives_ok(format($$SELECT hub.skip_delivery(%s, 'not needed')$$, :d1), 'an admin skips');
SELECT lives_ok(format($$SELECT hub.replay(%s::bigint, 'receiver fixed')$$, :d3), 'an admin replays a delivery');
SELECT lives_ok(format($$SELECT hub.replay(%s, 'receiver fixed')$$, :sub), 'an admin replays a subscription');
SELECT throws_ok($$SELECT * FROM hub.claim_deliveries(1)$$, '42501', NULL, 'claiming is for the workers (superuser) only');
SELECT throws_ok($$SELECT * FROM hub._dispatch_endpoints(ARRAY[1], 0, 1)$$, '42501', NULL, 'so is the workers'' secrets function');
RESET ROLE;

-- functions hub_admin chooses run as their owner, never with the rights of
-- whoever runs the claim or the inbox
CREATE TABLE public.priv_ran (who text, setting text);
GRANT INSERT, SELECT ON public.priv_ran TO PUBLIC;
CREATE FUNCTION public.priv_transform(p jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT p $$;
CREATE FUNCTION public.priv_handler(p jsonb, t text) RETURNS void LANGUAGE sql
AS $$ INSERT INTO public.priv_ran VALUES (current_user, pg_catalog.set_config('search_path', 'public', false)) $$;
CREATE FUNCTION public.priv_trigger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE FUNCTION public.priv_bad_shape(p jsonb) RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$;
ALTER FUNCTION public.priv_transform(jsonb) OWNER TO priv_admin;
ALTER FUNCTION public.priv_handler(jsonb, text) OWNER TO priv_admin;
ALTER FUNCTION public.priv_trigger() OWNER TO priv_admin;
SET ROLE priv_admin;
SELECT lives_ok($$SELECT hub.subscribe('wms', 'shipment.*', transform => 'public.priv_transform')$$,
	'a transform of the admin''s own is accepted (it runs as its owner)');
SELECT throws_ok($$SELECT hub.subscribe('wms', 'return.*', transform => 'public.priv_bad_shape')$$, '42883', NULL,
	'a transform must be (jsonb) -> jsonb');
SELECT throws_ok($$CREATE TRIGGER priv BEFORE INSERT ON hub.event_types FOR EACH ROW EXECUTE FUNCTION public.priv_trigger()$$,
	'42501', NULL, 'an admin cannot attach triggers to the catalogue (superusers write it)');
SELECT lives_ok($$SELECT hub.register_handler('order.confirmed', 'public.priv_handler', retry_base => '0')$$, 'an admin registers a handler');
RESET ROLE;
SELECT is((SELECT processed FROM hub.process_inbox()), 2, 'a superuser runs the inbox: the admin''s handler runs');
SELECT results_eq($$SELECT DISTINCT who FROM public.priv_ran$$, $$VALUES ('priv_admin'::text)$$,
	'as its owner, not as the superuser who ran the inbox');
SELECT is(current_setting('search_path'), '"$user", public',
	'the search_path the handler set with set_config(..., false) did not outlive its call');
SELECT is((SELECT hub._transform('public.priv_transform', '{"a": 1}')), '{"a": 1}'::jsonb, 'a transform called directly returns its result');
SELECT throws_ok($$SELECT hub._transform('public.priv_bad_shape', '{}')$$, '42883', NULL,
	'and one of the wrong shape is refused at the call too');
SET ROLE priv_writer;
SELECT throws_ok($$SELECT hub._run_handler('public.priv_handler', '{}', 'x')$$, '42501', NULL,
	'a writer cannot call a handler by itself');
RESET ROLE;

-- the workers' role: least privilege
SELECT ok((SELECT rolcanlogin AND NOT rolsuper AND NOT rolcreaterole AND NOT rolcreatedb AND NOT rolbypassrls
				  AND NOT rolreplication FROM pg_roles WHERE rolname = 'hub_worker'),
	'hub_worker may log in (a background worker needs it) and has no other attribute');
SELECT is((SELECT count(*)::int FROM pg_auth_members WHERE member = 'hub_worker'::regrole), 0,
	'hub_worker is a member of no role');
SELECT ok(NOT has_table_privilege('hub_worker', 'hub.outbox', 'INSERT')
		  AND NOT has_table_privilege('hub_worker', 'hub.event_types', 'UPDATE')
		  AND NOT has_table_privilege('hub_worker', 'hub._endpoint_secrets', 'UPDATE')
		  AND NOT has_table_privilege('hub_worker', 'hub.operator_audit', 'SELECT')
		  AND NOT has_column_privilege('hub_worker', 'hub.endpoints', 'url', 'UPDATE')
		  AND NOT has_column_privilege('hub_worker', 'hub.endpoints', 'paused', 'UPDATE')
		  AND has_column_privilege('hub_worker', 'hub.endpoints', 'circuit_state', 'UPDATE'),
	'hub_worker publishes nothing and changes no configuration: of an endpoint, only the circuit');
SELECT ok(NOT has_function_privilege('hub_worker', 'hub.create_endpoint(text, text, text, integer, integer, numeric, boolean, text, text, text, text, text, text, text, jsonb, text)', 'EXECUTE')
		  AND NOT has_function_privilege('hub_worker', 'hub.set_endpoint_credentials(text, text, text, text, text)', 'EXECUTE')
		  AND has_function_privilege('hub_worker', 'hub._claim_transformed(integer, text, interval, integer, integer, integer, integer, integer, integer[], integer[], text, bigint)', 'EXECUTE'),
	'hub_worker runs the queue''s functions, not the operators''');

-- catalogue rules
SELECT is_empty($$
	SELECT p.oid::regprocedure::text
	FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
	WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
		AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'logistics_hub')
		AND has_function_privilege('public', p.oid, 'EXECUTE')
		AND NOT (p.provolatile = 'i' AND NOT p.prosecdef AND p.prolang IN (SELECT oid FROM pg_language WHERE lanname IN ('c', 'internal'))
				 AND p.proname !~ '^_')
$$, 'no extension function keeps EXECUTE for PUBLIC, except pure C functions of their arguments (identifier types)');
SELECT is_empty($$
	SELECT p.oid::regprocedure::text
	FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
	WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
		AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'logistics_hub')
		AND p.prosecdef AND NOT coalesce(p.proconfig && ARRAY['search_path=pg_catalog, pg_temp'], false)
$$, 'every SECURITY DEFINER function of the extension pins search_path');
SELECT ok((SELECT count(*) FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
		   WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e' AND p.prosecdef
			 AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'logistics_hub')) >= 20,
	'(and there are SECURITY DEFINER functions to check)');

SELECT * FROM finish();
