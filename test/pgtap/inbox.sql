-- The inbox: idempotent receive with duplicate counting, handlers by exact
-- or wildcard pattern (longest match wins), process_inbox with one
-- subtransaction per message (a handler's writes kept on success, rolled
-- back on failure), retry with backoff, dead with the error kept, unhandled
-- messages, privileges and the table's properties.
BEGIN;
SELECT plan(41);

-- receive
SELECT is(hub.receive('easypost', 'evt_1', 'easypost.tracker.updated', jsonb_build_object('status', 'in_transit')),
	true, 'a new message is stored');
SELECT is(hub.receive('easypost', 'evt_1', 'easypost.tracker.updated', jsonb_build_object('status', 'in_transit')),
	false, 'the same (source, message_id) again is a duplicate');
SELECT is(hub.receive('easypost', 'evt_1', 'easypost.tracker.updated', '{}'), false, 'and again');
SELECT is((SELECT count(*)::int FROM hub.inbox WHERE source = 'easypost' AND message_id = 'evt_1'), 1,
	'duplicates are never stored twice');
SELECT is((SELECT duplicate_count FROM hub.inbox WHERE message_id = 'evt_1'), 2, 'duplicate_count counts them');
SELECT ok((SELECT last_duplicate_at IS NOT NULL AND payload = '{"status": "in_transit"}' FROM hub.inbox WHERE message_id = 'evt_1'),
	'last_duplicate_at is set and the first payload is kept');
SELECT is(hub.receive('shipbob', 'evt_1', 'shipbob.order.shipped', '{}'), true,
	'the same message_id from another source is a new message');
SELECT is((SELECT state FROM hub.inbox WHERE message_id = 'evt_1' AND source = 'easypost'), 'new', 'a received message is new');
SELECT throws_ok($$SELECT hub.receive('erp', NULL, 'order.created', '{}')$$, '23502', NULL, 'a message_id is required');

-- handlers
CREATE TABLE public.inbox_seen (tag text, message_type text, payload jsonb);
CREATE FUNCTION public.h_ok(p jsonb, t text) RETURNS void LANGUAGE sql SECURITY DEFINER
	AS $$ INSERT INTO public.inbox_seen VALUES ('ok', t, p) $$;
CREATE FUNCTION public.h_wild(p jsonb, t text) RETURNS void LANGUAGE sql SECURITY DEFINER
	AS $$ INSERT INTO public.inbox_seen VALUES ('wild', t, p) $$;
CREATE FUNCTION public.h_tracker(p jsonb, t text) RETURNS void LANGUAGE sql SECURITY DEFINER
	AS $$ INSERT INTO public.inbox_seen VALUES ('tracker', t, p) $$;
CREATE FUNCTION public.h_fail(p jsonb, t text) RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
	INSERT INTO public.inbox_seen VALUES ('fail', t, p);
	RAISE EXCEPTION 'carrier % is down', p->>'carrier' USING ERRCODE = 'connection_failure';
END
$$;
CREATE FUNCTION public.h_wrong(p text) RETURNS void LANGUAGE sql AS $$ SELECT $$;

SELECT lives_ok($$SELECT hub.register_handler('order.created', 'public.h_ok')$$, 'register an exact handler');
SELECT lives_ok($$SELECT hub.register_handler('easypost.*', 'public.h_wild')$$, 'register a wildcard handler');
SELECT lives_ok($$SELECT hub.register_handler('easypost.tracker.*', 'public.h_tracker')$$, 'register a longer wildcard');
SELECT lives_ok($$SELECT hub.register_handler('carrier.fail', 'public.h_fail', max_attempts => 2, retry_base => '0'::interval)$$,
	'register a handler with max_attempts and retry_base');
SELECT throws_ok($$SELECT hub.register_handler('x.y', 'public.h_wrong')$$, '42883',
	'inbox handler public.h_wrong has the wrong signature', 'a handler must take (jsonb), (jsonb, text) or (jsonb, text, jsonb)');
SELECT throws_ok($$SELECT hub.register_handler('easy*post', 'public.h_ok')$$, '22023',
	'invalid message pattern: "easy*post"', 'a * is only allowed at the end');
SELECT lives_ok($$SELECT hub.register_handler('order.created', 'public.h_ok', max_attempts => 3)$$, 'register again replaces');
SELECT is((SELECT max_attempts FROM hub.inbox_handlers WHERE message_pattern = 'order.created'), 3, 'the upsert kept the new settings');

DO $$ BEGIN PERFORM hub.receive('erp', 'm-ok', 'order.created', jsonb_build_object('order_id', 'SO-1')); END $$;
DO $$ BEGIN PERFORM hub.receive('carrier', 'm-fail', 'carrier.fail', jsonb_build_object('carrier', 'ups')); END $$;
DO $$ BEGIN PERFORM hub.receive('portal', 'm-none', 'portal.clicked', '{}'); END $$;
DO $$ BEGIN PERFORM hub.receive('easypost', 'evt_2', 'easypost.refund.created', '{}'); END $$;

-- first run: the failure does not stop the others
SELECT results_eq($$SELECT * FROM hub.process_inbox()$$, $$VALUES (3, 1, 2)$$,
	'process_inbox: 3 processed, 1 failed, 2 unhandled (one run, the failure stops nothing)');
SELECT results_eq($$SELECT tag, message_type FROM public.inbox_seen ORDER BY message_type$$,
	$$VALUES ('wild', 'easypost.refund.created'), ('tracker', 'easypost.tracker.updated'), ('ok', 'order.created')$$,
	'wildcard, longest match and exact handlers ran; the failing handler''s write was rolled back');
SELECT is((SELECT state FROM hub.inbox WHERE message_id = 'm-ok'), 'done', 'a successful message is done');
SELECT ok((SELECT processed_at IS NOT NULL AND next_attempt_at IS NULL FROM hub.inbox WHERE message_id = 'm-ok'),
	'a done message has processed_at and no next attempt');
SELECT is((SELECT state FROM hub.inbox WHERE message_id = 'm-none'), 'unhandled', 'no handler: unhandled');
SELECT results_eq($$SELECT state, attempts, last_error FROM hub.inbox WHERE message_id = 'm-fail'$$,
	$$VALUES ('retry_wait'::text, 1, '08006: carrier ups is down'::text)$$,
	'a failing message waits for a retry, with SQLSTATE and message kept');

-- second run: the retry fails again and the message is dead
SELECT results_eq($$SELECT * FROM hub.process_inbox()$$, $$VALUES (0, 1, 0)$$, 'only the retry runs');
SELECT results_eq($$SELECT state, attempts, last_error, next_attempt_at FROM hub.inbox WHERE message_id = 'm-fail'$$,
	$$VALUES ('dead'::text, 2, '08006: carrier ups is down'::text, NULL::timestamptz)$$,
	'after max_attempts the message is dead, the error kept');
SELECT results_eq($$SELECT * FROM hub.process_inbox()$$, $$VALUES (0, 0, 0)$$, 'dead and done messages are not run again');
SELECT is((SELECT count(*)::int FROM public.inbox_seen WHERE tag = 'fail'), 0, 'no failed run left a write behind');

-- backoff: retry_base * 2^(attempts - 1)
DO $$ BEGIN PERFORM hub.register_handler('slow.*', 'public.h_fail', retry_base => '1 minute'); END $$;
DO $$ BEGIN PERFORM hub.receive('carrier', 'm-slow', 'slow.carrier', jsonb_build_object('carrier', 'dhl')); END $$;
SELECT results_eq($$SELECT * FROM hub.process_inbox()$$, $$VALUES (0, 1, 0)$$, 'the slow handler fails');
SELECT is((SELECT next_attempt_at FROM hub.inbox WHERE message_id = 'm-slow'), now() + '1 minute'::interval,
	'first retry after retry_base');
SELECT results_eq($$SELECT * FROM hub.process_inbox()$$, $$VALUES (0, 0, 0)$$, 'a message waiting for its retry is not run');
UPDATE hub.inbox SET next_attempt_at = now() WHERE message_id = 'm-slow';
DO $$ BEGIN PERFORM hub.process_inbox(); END $$;
SELECT is((SELECT next_attempt_at FROM hub.inbox WHERE message_id = 'm-slow'), now() + '2 minutes'::interval,
	'second retry after twice retry_base');

-- a handler registered later picks up unhandled messages; max limits a run
DO $$ BEGIN PERFORM hub.register_handler('portal.*', 'public.h_ok'); END $$;
SELECT is((SELECT state FROM hub.inbox WHERE message_id = 'm-none'), 'new', 'registering a handler makes matching unhandled messages new');
DO $$ BEGIN PERFORM hub.receive('portal', 'm-p2', 'portal.clicked', '{}'); END $$;
SELECT results_eq($$SELECT * FROM hub.process_inbox(1)$$, $$VALUES (1, 0, 0)$$, 'max limits the messages of a run');
SELECT results_eq($$SELECT * FROM hub.process_inbox(10)$$, $$VALUES (1, 0, 0)$$, 'the next run takes the rest');
SELECT throws_ok($$SELECT * FROM hub.process_inbox(0)$$, '22023', 'max must be at least 1', 'max must be positive');

-- privileges and properties
SELECT ok(has_function_privilege('hub_writer', 'hub.receive(text, text, text, jsonb, timestamptz, text, text, text)', 'EXECUTE')
	AND NOT has_function_privilege('hub_writer', 'hub.process_inbox(integer)', 'EXECUTE')
	AND NOT has_function_privilege('hub_writer', 'hub.register_handler(text, regproc, integer, interval)', 'EXECUTE'),
	'hub_writer can receive, not process or register');
SELECT ok(has_function_privilege('hub_admin', 'hub.process_inbox(integer)', 'EXECUTE')
	AND has_function_privilege('hub_admin', 'hub.register_handler(text, regproc, integer, interval)', 'EXECUTE'),
	'hub_admin can process and register');
SELECT ok(has_table_privilege('hub_reader', 'hub.inbox', 'SELECT')
	AND NOT has_table_privilege('hub_reader', 'hub.inbox', 'UPDATE')
	AND NOT has_table_privilege('hub_writer', 'hub.inbox', 'INSERT'), 'hub_reader reads the inbox; nobody writes it directly');
SELECT is_empty($$
	SELECT p.oid::regprocedure FROM pg_proc p
	WHERE p.pronamespace = 'hub'::regnamespace
	  AND (p.proname ~ '^_?inbox' OR p.proname IN ('receive', 'register_handler', 'process_inbox'))
	  AND has_function_privilege('public', p.oid, 'EXECUTE')$$, 'no inbox function keeps EXECUTE for PUBLIC');
SELECT ok((SELECT relpersistence = 'p' FROM pg_class WHERE oid = 'hub.inbox'::regclass), 'hub.inbox is WAL-logged');
SELECT ok((SELECT 'hub.inbox_handlers'::regclass = ANY (extconfig) FROM pg_extension WHERE extname = 'logistics_hub'),
	'hub.inbox_handlers is dumped with pg_dump');

SELECT * FROM finish();
ROLLBACK;
