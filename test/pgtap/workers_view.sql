-- hub.workers, the view of the background workers (the live behaviour,
-- several databases and known endpoints, is test/scripts/multi_database.sh):
-- its columns, the launcher's row as the server sees it, no worker for this
-- database (the test cluster runs no dispatcher and no inbox worker), and
-- who may read it.
BEGIN;
SELECT plan(6);

SELECT is((SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
		   FROM pg_attribute WHERE attrelid = 'hub.workers'::regclass AND attnum > 0),
	'database name, pid integer, kind text, number integer, started_at timestamp with time zone, step text, '
	'in_flight integer, endpoints integer[], pollers text[], last_claim_at timestamp with time zone, '
	'last_record_at timestamp with time zone, restarts bigint',
	'hub.workers has its documented columns');

SELECT is((SELECT count(*)::int FROM hub.workers w JOIN pg_stat_activity a USING (pid)
		   WHERE w.kind = 'launcher' AND a.backend_type = 'logistics_hub launcher' AND w.database IS NULL
			   AND w.number = 0 AND w.started_at <= now() AND w.step IN ('start workers', 'wait')
			   AND w.in_flight IS NULL AND w.endpoints IS NULL AND w.restarts >= 0),
	1, 'one launcher row: the running launcher, no database');

SELECT is((SELECT count(*)::int FROM hub.workers WHERE database = current_database()), 0,
	'no worker serves this database');

SET LOCAL ROLE hub_reader;
SELECT lives_ok($$SELECT * FROM hub.workers$$, 'hub_reader reads hub.workers');
RESET ROLE;
SET LOCAL ROLE hub_writer;
SELECT throws_ok($$SELECT * FROM hub.workers$$, '42501', NULL, 'hub_writer does not');
SELECT throws_ok($$SELECT * FROM hub._workers()$$, '42501', NULL, 'nor calls hub._workers()');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
