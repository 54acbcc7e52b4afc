-- What the inbox workers rely on in SQL: hub._inbox_next_due() (the
-- read-only look between batches: the earliest claimable message's
-- next_attempt_at, a message waiting behind an earlier one of its key not
-- counted), the claim's order per business key, the wake-up trigger, and
-- hub._inbox_pattern_matches (inlined now) with NULLs and patterns.
BEGIN;
SELECT plan(19);

CREATE FUNCTION public.h_ok(p jsonb, t text) RETURNS void LANGUAGE sql SECURITY DEFINER AS 'SELECT';
DO $$ BEGIN PERFORM hub.register_handler('w.*', 'public.h_ok'); END $$;

SELECT is(hub._inbox_next_due(), NULL, 'an empty inbox: nothing due');

-- three messages of key A, one of B, one without a key, due at set times
DO $$
BEGIN
	PERFORM hub.receive('wms', 'A-1', 'w.x', '{}', aggregate_id => 'A');
	PERFORM hub.receive('wms', 'A-2', 'w.x', '{}', aggregate_id => 'A');
	PERFORM hub.receive('wms', 'B-1', 'w.x', '{}', aggregate_id => 'B');
	PERFORM hub.receive('wms', 'N-1', 'w.x', '{}');
END $$;
UPDATE hub.inbox SET next_attempt_at = CASE message_id
	WHEN 'A-1' THEN now() + interval '1 hour' WHEN 'A-2' THEN now() - interval '1 hour'
	WHEN 'B-1' THEN now() + interval '2 hours' WHEN 'N-1' THEN now() + interval '3 hours' END;

SELECT is(hub._inbox_next_due(), now() + interval '1 hour',
	'A-2 is due first but waits behind A-1: the next due is A-1''s retry, an hour away');
SELECT is((SELECT count(*)::int FROM hub._inbox_claim(10)), 0, 'nothing is claimable now');

UPDATE hub.inbox SET state = 'retry_wait', attempts = 1 WHERE message_id = 'A-1';
SELECT is(hub._inbox_next_due(), now() + interval '1 hour', 'the same while A-1 waits for a retry (retry_wait)');

UPDATE hub.inbox SET state = 'dead', next_attempt_at = NULL WHERE message_id = 'A-1';
SELECT is(hub._inbox_next_due(), now() - interval '1 hour', 'once A-1 is dead, A-2 is due (an hour ago)');
SELECT results_eq($$SELECT i.message_id FROM hub._inbox_claim(10) c JOIN hub.inbox i USING (inbox_id)$$,
	$$VALUES ('A-2'::text)$$, 'and the claim takes A-2');

-- a key's later message never comes before its earlier one: claimed
-- together, run in inbox order; behind a retry that is not due, not at all
DO $$ BEGIN PERFORM hub.receive('wms', 'C-' || g, 'w.x', '{}', aggregate_id => 'C') FROM generate_series(1, 3) g; END $$;
UPDATE hub.inbox SET next_attempt_at = now() - interval '1 day' WHERE message_id = 'C-3';
SELECT results_eq($$SELECT i.message_id FROM hub._inbox_claim(2) c JOIN hub.inbox i USING (inbox_id) ORDER BY 1$$,
	$$VALUES ('A-2'::text), ('C-1'::text)$$,
	'C-3, due a day ago, is not claimed before C-1 and C-2 (the claim goes in inbox order)');
SELECT results_eq($$SELECT i.message_id FROM hub._inbox_claim(10) c JOIN hub.inbox i USING (inbox_id) ORDER BY 1$$,
	$$VALUES ('A-2'::text), ('C-1'::text), ('C-2'::text), ('C-3'::text)$$,
	'a claim with room takes a key''s messages together');
UPDATE hub.inbox SET state = 'retry_wait', attempts = 1, next_attempt_at = now() + interval '1 hour' WHERE message_id = 'C-1';
SELECT results_eq($$SELECT i.message_id FROM hub._inbox_claim(10) c JOIN hub.inbox i USING (inbox_id) ORDER BY 1$$,
	$$VALUES ('A-2'::text)$$, 'C-2 and C-3 wait behind C-1''s retry');
UPDATE hub.inbox SET state = 'new', attempts = 0, next_attempt_at = now() WHERE message_id = 'C-1';
SELECT results_eq('SELECT * FROM hub.process_inbox(10)', $$VALUES (4, 0, 0)$$, 'process_inbox processes the four');
SELECT results_eq($$SELECT message_id, state FROM hub.inbox WHERE aggregate_id IN ('A', 'C') ORDER BY inbox_id$$,
	$$VALUES ('A-1'::text, 'dead'::text), ('A-2', 'done'), ('C-1', 'done'), ('C-2', 'done'), ('C-3', 'done')$$,
	'every message of both keys is done');

-- the wake-up trigger
SELECT is((SELECT string_agg(tgname || ':' || (pg_get_triggerdef(oid) ~ 'AFTER INSERT OR UPDATE OF state')::text
							|| ':' || (tgtype & 1 = 0)::text, ',')
		   FROM pg_trigger WHERE tgrelid = 'hub.inbox'::regclass AND tgname = 'inbox_wake'),
	'inbox_wake:true:true', 'hub.inbox has the statement-level wake-up trigger after INSERT or UPDATE OF state');
SELECT throws_ok('SELECT hub._inbox_wake()', '39P01', NULL, 'the wake-up function is only a trigger');

-- the pattern match, inlined into the claim
SELECT is(hub._inbox_pattern_matches('easypost.*', 'easypost.tracker.updated'), true, 'a prefix pattern matches');
SELECT is(hub._inbox_pattern_matches('easypost.*', 'shipbob.order'), false, 'and not another prefix');
SELECT is(hub._inbox_pattern_matches('order.created', 'order.created'), true, 'an exact pattern matches itself');
SELECT is(hub._inbox_pattern_matches('order.created', 'order.created.v2'), false, 'and nothing longer');
SELECT is(hub._inbox_pattern_matches(NULL, 'x') IS NULL AND hub._inbox_pattern_matches('x*', NULL) IS NULL, true,
	'NULL in, NULL out (as when it was STRICT)');
SELECT is((SELECT prosecdef OR proconfig IS NOT NULL OR proisstrict FROM pg_proc
		   WHERE oid = 'hub._inbox_pattern_matches(text, text)'::regprocedure), false,
	'it has no SET clause and is not STRICT, so the planner can inline it');

SELECT * FROM finish();
ROLLBACK;
