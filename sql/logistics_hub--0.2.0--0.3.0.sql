-- sql/logistics_hub--0.2.0--0.3.0.sql: the step from 0.2.0 to 0.3.0.
-- Written by hand beside the changes of sql/src/ it brings; frozen once
-- 0.3.0 is released (a later change is a step of its own).
-- test/sql/zz_upgrade.sql checks that 0.1.0 updated along the steps has
-- exactly the catalogue of a fresh install.

\echo Use "ALTER EXTENSION logistics_hub UPDATE TO '0.3.0'" to load this file. \quit

-- ================================================================ engine
-- (endpoint throttling shared by push and poll: issue 18)



-- ================================================================ pollers
-- (issue 18)



-- ================================================================ flow
-- (inbox -> canonical state -> canonical events: issue 19)



-- ================================================================ inbox worker
-- (issue 19)

-- the claim's order, (next_attempt_at, inbox_id) (sql/src/60_inbox.sql)
DROP INDEX hub.inbox_ready_idx;
CREATE INDEX inbox_ready_idx ON hub.inbox (next_attempt_at, inbox_id) WHERE state IN ('new', 'retry_wait');

-- hub._inbox_claim: in order per business key (sql/src/60_inbox.sql)
CREATE OR REPLACE FUNCTION hub._inbox_claim(max integer)
RETURNS TABLE (inbox_id bigint, message_type text, payload jsonb, attempts integer,
			   handler regproc, max_attempts integer, retry_base interval)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- (LIMIT max is a parameter here, which the planner estimates at a tenth
-- of the backlog: a large backlog would pass jit_above_cost and be
-- compiled at every call)
SET jit = off
AS $$
	WITH claimed AS (
		SELECT i.inbox_id, i.message_type, i.payload, i.attempts
		FROM hub.inbox i
		WHERE i.state IN ('new', 'retry_wait') AND i.next_attempt_at <= now()
		  -- in order per business key (aggregate_id): not while an earlier
		  -- message of the key is pending (62_inbox_worker.sql)
		  AND (i.aggregate_id IS NULL OR NOT EXISTS (
				SELECT FROM hub.inbox e
				WHERE e.aggregate_id = i.aggregate_id AND e.inbox_id < i.inbox_id
				  AND e.state IN ('new', 'retry_wait')))
		ORDER BY i.next_attempt_at, i.inbox_id
		LIMIT max
		FOR UPDATE SKIP LOCKED
	)
	SELECT c.inbox_id, c.message_type, c.payload, c.attempts, h.handler, h.max_attempts, h.retry_base
	FROM claimed c
	LEFT JOIN LATERAL (
		SELECT h.handler, h.max_attempts, h.retry_base
		FROM hub.inbox_handlers h
		WHERE hub._inbox_pattern_matches(h.message_pattern, c.message_type)
		ORDER BY h.message_pattern = c.message_type DESC, length(h.message_pattern) DESC
		LIMIT 1
	) h ON true
	ORDER BY c.inbox_id
$$;
COMMENT ON FUNCTION hub._inbox_claim(integer) IS
'API: Private. Lock up to max ready inbox messages (skipping locked ones), in order per business key (none while an earlier message with the same aggregate_id is new or retry_wait), and return each with its best-matching handler.';

-- sql/src/62_inbox_worker.sql
-- the earlier pending messages of a key (the claim's NOT EXISTS and
-- hub._inbox_next_due): only pending rows, so it stays small
CREATE INDEX inbox_pending_key_idx ON hub.inbox (aggregate_id, inbox_id)
	WHERE state IN ('new', 'retry_wait') AND aggregate_id IS NOT NULL;

/*
 * _inbox_wake --- the statement-level trigger that wakes the inbox workers
 * when the transaction commits (workers/shmem.c): one flag per statement,
 * a few latches per commit, nothing on abort.  Inserts (hub.receive, the
 * pollers, a plain INSERT) and updates of state (a message made new again
 * by hub.register_handler or by an operator) wake them.
 */
CREATE FUNCTION hub._inbox_wake() RETURNS trigger
	AS 'MODULE_PATHNAME', 'hub_inbox_wake' LANGUAGE C;
COMMENT ON FUNCTION hub._inbox_wake() IS
'API: Private. Statement-level trigger of hub.inbox: wake the inbox workers when the transaction commits.';
CREATE TRIGGER inbox_wake AFTER INSERT OR UPDATE OF state ON hub.inbox
	FOR EACH STATEMENT EXECUTE FUNCTION hub._inbox_wake();

CREATE FUNCTION hub._inbox_next_due()
RETURNS timestamptz
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT i.next_attempt_at
	FROM hub.inbox i
	WHERE i.state OPERATOR(pg_catalog.=) ANY ('{new,retry_wait}'::text[])
	  AND (i.aggregate_id IS NULL OR NOT EXISTS (
			SELECT FROM hub.inbox e
			WHERE e.aggregate_id OPERATOR(pg_catalog.=) i.aggregate_id
			  AND e.inbox_id OPERATOR(pg_catalog.<) i.inbox_id
			  AND e.state OPERATOR(pg_catalog.=) ANY ('{new,retry_wait}'::text[])))
	ORDER BY i.next_attempt_at
	LIMIT 1
$$;
COMMENT ON FUNCTION hub._inbox_next_due() IS
'API: Private. When the earliest inbox message that hub._inbox_claim may claim is ready (its next_attempt_at; a message waiting behind an earlier one of its key does not count), NULL when none is waiting. Read only: the inbox workers'' look between batches.';

REVOKE EXECUTE ON FUNCTION hub._inbox_wake(), hub._inbox_next_due() FROM PUBLIC;

-- sql/src/90_privileges.sql
GRANT EXECUTE ON FUNCTION
	hub._inbox_next_due(),
	hub.process_inbox(integer),
	hub._inbox_claim(integer),
	hub._inbox_settle(bigint, text, text, integer, interval),
	hub._run_handler(regproc, jsonb, text)
	TO hub_worker;

-- ================================================================ end
