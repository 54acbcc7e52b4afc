/*
 * 62_inbox_worker.sql --- what the inbox workers (workers/inbox_worker.c)
 * need in SQL: the wake-up at commit, the read-only look for the next due
 * message, and the index that keeps the order per business key cheap.
 *
 * The order per key: a message's key is hub.inbox.aggregate_id (the
 * business key hub.receive was given, else the one its declared mapping
 * reads from the payload, or the poller's record id); hub._inbox_claim
 * claims a message only when every earlier one (lower inbox_id) of the
 * same key that is still new or retry_wait is due and claimed with it, and
 * hub.process_inbox runs a claim in inbox_id order and skips the rest of a
 * key's messages once one of them fails, so the messages of one key are
 * processed in inbox_id order, a failing one holding back those behind it
 * until it is done, dead or unhandled.  Messages without a key are not
 * ordered.  inbox_id is taken at insert, so of two messages
 * received concurrently in separate transactions the order is the one in
 * which they got their ids.
 */

-- the earlier pending messages of a key (the claim's NOT EXISTS and
-- hub._inbox_next_due): only pending rows, so it stays small
CREATE INDEX inbox_pending_key_idx ON hub.inbox (aggregate_id, inbox_id)
	WHERE state IN ('new', 'retry_wait') AND aggregate_id IS NOT NULL;
-- the claim's scan, in inbox order over the pending rows only
CREATE INDEX inbox_pending_idx ON hub.inbox (inbox_id) WHERE state IN ('new', 'retry_wait');

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
