-- User code chosen by hub_admin (transforms, inbox handlers) runs as its
-- owner, in a security-restricted operation, with every setting it changes
-- undone after the call and within logistics_hub.user_code_timeout: a
-- handler or transform that loops costs one call of that length and fails
-- like any error (catchable, so process_inbox goes on with the next
-- message); one that sets search_path, read-only transactions or timeouts
-- leaves the session as it was; none lends its caller's rights.
BEGIN;
SELECT plan(26);

CREATE ROLE uc_admin LOGIN;
GRANT hub_admin TO uc_admin;
CREATE SCHEMA uc_evil AUTHORIZATION uc_admin;
CREATE TABLE public.uc_seen (who text, what text);
GRANT INSERT, SELECT ON public.uc_seen TO PUBLIC;

SET ROLE uc_admin;
CREATE FUNCTION uc_evil.loop_handler(p jsonb, t text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	LOOP
		PERFORM pg_catalog.pg_sleep(0.01);
	END LOOP;
END $$;
CREATE FUNCTION uc_evil.settings_handler(p jsonb, t text) RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
	PERFORM pg_catalog.set_config('search_path', 'uc_evil, public', false);
	PERFORM pg_catalog.set_config('default_transaction_read_only', 'on', false);
	PERFORM pg_catalog.set_config('statement_timeout', '1', false);
	PERFORM pg_catalog.set_config('work_mem', '64kB', false);
	INSERT INTO public.uc_seen VALUES (current_user, 'settings');
END $$;
CREATE FUNCTION uc_evil.escalate_handler(p jsonb, t text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.uc_seen VALUES (current_user, 'escalate');
	EXECUTE 'SET ROLE postgres';
END $$;
CREATE FUNCTION uc_evil.temp_handler(p jsonb, t text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	CREATE TEMP TABLE uc_keep (x int);
END $$;
CREATE FUNCTION uc_evil.ok_handler(p jsonb, t text) RETURNS void LANGUAGE sql AS $$
	INSERT INTO public.uc_seen VALUES (current_user, 'ok:' || t)
$$;
CREATE FUNCTION uc_evil.loop_transform(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
	LOOP
		PERFORM pg_catalog.pg_sleep(0.01);
	END LOOP;
END $$;
SELECT lives_ok($$SELECT hub.register_handler('uc.loop', 'uc_evil.loop_handler', max_attempts => 1)$$, 'a looping handler registers');
SELECT lives_ok($$SELECT hub.register_handler('uc.settings', 'uc_evil.settings_handler', max_attempts => 1)$$, 'a handler that changes settings registers');
SELECT lives_ok($$SELECT hub.register_handler('uc.escalate', 'uc_evil.escalate_handler', max_attempts => 1)$$, 'a handler that tries SET ROLE registers');
SELECT lives_ok($$SELECT hub.register_handler('uc.temp', 'uc_evil.temp_handler', max_attempts => 1)$$, 'a handler that makes a temporary table registers');
SELECT lives_ok($$SELECT hub.register_handler('uc.ok', 'uc_evil.ok_handler', max_attempts => 1)$$, 'a plain handler registers');
RESET ROLE;

SELECT hub.receive('test', 'm-loop', 'uc.loop', '{}'), hub.receive('test', 'm-settings', 'uc.settings', '{}'),
	   hub.receive('test', 'm-escalate', 'uc.escalate', '{}'), hub.receive('test', 'm-temp', 'uc.temp', '{}'),
	   hub.receive('test', 'm-ok', 'uc.ok', '{}');

-- a superuser runs the inbox, with a short time limit
SET logistics_hub.user_code_timeout = '200ms';
SET search_path = public, pg_catalog;
SET work_mem = '4MB';
SELECT results_eq($$SELECT processed, failed, unhandled FROM hub.process_inbox()$$, $$VALUES (2, 3, 0)$$,
	'the looping handler is cancelled, and the run goes on: 2 processed, 3 failed');
SELECT is((SELECT state FROM hub.inbox WHERE message_id = 'm-loop'), 'dead', 'the looping handler''s message is dead');
SELECT matches((SELECT last_error FROM hub.inbox WHERE message_id = 'm-loop'),
	'^54000: inbox handler uc_evil\.loop_handler ran longer than logistics_hub\.user_code_timeout \(200 ms\)',
	'with an error that names the handler and the limit');
SELECT is((SELECT state FROM hub.inbox WHERE message_id = 'm-ok'), 'done', 'the message after it is processed');
SELECT results_eq($$SELECT who, what FROM public.uc_seen ORDER BY what$$,
	$$VALUES ('uc_admin'::text, 'ok:uc.ok'::text), ('uc_admin', 'settings')$$,
	'handlers run as their owner, not as the superuser running the inbox (the escalating one rolled back)');
SELECT matches((SELECT last_error FROM hub.inbox WHERE message_id = 'm-escalate'), '^42501: ',
	'SET ROLE inside a handler is refused (security-restricted operation)');
SELECT matches((SELECT last_error FROM hub.inbox WHERE message_id = 'm-temp'), '^42501: ',
	'so is a temporary table that would outlive the call');
SELECT is(current_setting('search_path'), 'public, pg_catalog', 'search_path is the caller''s again');
SELECT is(current_setting('default_transaction_read_only'), 'off', 'default_transaction_read_only too');
SELECT is(current_setting('statement_timeout'), '0', 'statement_timeout too');
SELECT is(current_setting('work_mem'), '4MB', 'and work_mem: no setting outlives the handler');
SELECT is(current_user::text, 'postgres', 'the caller is itself again');

-- a call inside a call keeps the outer deadline: a handler that catches its
-- inner call's cancellation and goes on is cancelled too
SET ROLE uc_admin;
CREATE FUNCTION uc_evil.nest_handler(p jsonb, t text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	BEGIN
		PERFORM hub._run_handler('uc_evil.loop_handler', p, t);
	EXCEPTION WHEN program_limit_exceeded THEN
		NULL;
	END;
	FOR i IN 1 .. 300 LOOP
		PERFORM pg_catalog.pg_sleep(0.01);
	END LOOP;
END $$;
SELECT lives_ok($$SELECT hub.register_handler('uc.nest', 'uc_evil.nest_handler', max_attempts => 1)$$, 'a handler calling another registers');
RESET ROLE;
SELECT hub.receive('test', 'm-nest', 'uc.nest', '{}');
SELECT hub.process_inbox();
SELECT matches((SELECT last_error FROM hub.inbox WHERE message_id = 'm-nest'),
	'^54000: inbox handler uc_evil\.nest_handler ran longer',
	'the outer handler is cancelled by its own deadline after catching the inner one''s cancellation');

-- transforms: the same fence
SELECT throws_ok($$SELECT hub._transform('uc_evil.loop_transform', '{}')$$, '54000', NULL,
	'a looping transform is cancelled with 54000, which an exception block catches');


-- whose functions may run as their owners: SECURITY DEFINER ones (the owner
-- lends its rights), or those of a member of hub_admin that is not a
-- superuser; and only functions hub_admin may execute
CREATE ROLE uc_other LOGIN;
CREATE FUNCTION public.uc_su_handler(p jsonb, t text) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION public.uc_other_handler(p jsonb, t text) RETURNS void LANGUAGE sql AS $$ SELECT $$;
ALTER FUNCTION public.uc_other_handler(jsonb, text) OWNER TO uc_other;
SELECT throws_ok($$SELECT hub.register_handler('uc.su', 'public.uc_su_handler')$$, '42501',
	'inbox handler public.uc_su_handler may not run with the rights of its owner postgres',
	'a superuser''s SECURITY INVOKER function is refused: it would run as superuser on inputs writers choose');
SELECT throws_ok($$SELECT hub.register_handler('uc.other', 'public.uc_other_handler')$$, '42501', NULL,
	'so is one of a role outside hub_admin');
ALTER FUNCTION public.uc_su_handler(jsonb, text) SECURITY DEFINER;
SELECT lives_ok($$SELECT hub.register_handler('uc.su', 'public.uc_su_handler')$$,
	'a SECURITY DEFINER function is accepted: its owner lent it its rights');
REVOKE EXECUTE ON FUNCTION public.uc_su_handler(jsonb, text) FROM PUBLIC;
SELECT throws_ok($$SELECT hub.register_handler('uc.su', 'public.uc_su_handler')$$, '42501', NULL,
	'but not once hub_admin may not execute it');
SELECT hub.receive('test', 'm-su', 'uc.su', '{}');
SELECT is((SELECT failed FROM hub.process_inbox()), 1, 'nor at the call, when EXECUTE was revoked after it was registered');

-- the limit is the superuser's to set
SET ROLE uc_admin;
SELECT throws_ok($$SET logistics_hub.user_code_timeout = '1h'$$, '42501', NULL,
	'an admin cannot lift the time limit');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
