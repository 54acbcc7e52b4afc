/*
 * 85_backup.sql --- a logical backup keeps the whole hub: pg_dump dumps the
 * rows of the queue, the truth and the audit, and a restore into a new
 * database takes them back as they were.
 *
 * Every table of the hub is registered with pg_extension_config_dump (the
 * configuration ones where they are made), with its identity sequence, so
 * that a dump holds: events (hub.outbox) and their deliveries, attempts,
 * the inbox (its deduplication memory), entity state with its history and
 * conflicts, the operator audit, the events routing could not take, the
 * routing state and the retention marks.  README, "Backup and restore".
 *
 * Three things make the restore work:
 *
 *   - hub.attempts is partitioned, and pg_dump dumps no rows of a
 *     partitioned table; its day partitions are made by hub.run_retention()
 *     as members of the extension, whose rows pg_dump could not load (a
 *     member's table is never in a dump) and which pg_extension_config_dump
 *     cannot register after CREATE EXTENSION.  So the default partition is
 *     registered with a condition that pg_dump appends to its SELECT of the
 *     partition ("FROM hub._attempts_default <condition>", for COPY and for
 *     --inserts alike): it adds every attempt of every partition.  They are
 *     restored into the default partition, which takes any day; retention
 *     prunes them there row by row, and makes day partitions for the days
 *     it holds no attempt of.  The column list must follow the table's (an
 *     upgrade that adds a column calls pg_extension_config_dump again).
 *
 *   - The contract trigger of hub.outbox refuses an event id not made by
 *     the inserting transaction and stamps xid and published_at; a restored
 *     event has neither.  pg_dump writes the data of the tables in name
 *     order, so the row of hub._restore_marker comes before every queue
 *     table's; inserting it turns logistics_hub.restoring on for the
 *     session (superuser only, extension/outbox_guc.c), under which the
 *     trigger keeps restored events as they are.  The immutability
 *     triggers never fire on a restore (it only inserts) and are unchanged.
 *
 *   - Routing follows transaction ids (40_outbox.sql), and those of the
 *     restoring cluster are not the dumped one's.  The restored routing
 *     state (hub._router_state) replaces the one CREATE EXTENSION made,
 *     through hub._router_state_restored: restored events the old state
 *     counts as routed stay routed, the others are routed by the next pass
 *     (their transactions are below every transaction of the new database,
 *     so routing sees them ended).  That holds only when no transaction
 *     the restoring cluster still runs or will run is one the restored
 *     state counts as ended: true in the cluster the dump came from, and in
 *     any other whose transaction ids are ahead; otherwise the row is
 *     refused (55000) and the README says how to move the cluster ahead.
 */

-- ---------------------------------------------------------------- the marker

CREATE TABLE hub._restore_marker (
	one			boolean PRIMARY KEY DEFAULT true CHECK (one)
);
COMMENT ON TABLE hub._restore_marker IS
'API: Private. One row, in every dump: restoring it turns logistics_hub.restoring on for the restoring session (hub._restore_begin), before any queue table is loaded.';
INSERT INTO hub._restore_marker VALUES (true);
SELECT pg_catalog.pg_extension_config_dump('hub._restore_marker', '');

CREATE FUNCTION hub._restore_begin() RETURNS trigger
	AS 'MODULE_PATHNAME', 'hub_restore_begin' LANGUAGE C;
COMMENT ON FUNCTION hub._restore_begin() IS
'API: Private. Trigger on hub._restore_marker: the restore of a dump (a superuser) turns logistics_hub.restoring on for its session; the row is not stored.';
CREATE TRIGGER restore_begin BEFORE INSERT ON hub._restore_marker
	FOR EACH ROW EXECUTE FUNCTION hub._restore_begin();

-- ---------------------------------------------------------------- routing state

/*
 * _router_state_restored --- BEFORE INSERT on hub._router_state: the one
 * row is made by CREATE EXTENSION, so a second one comes from a restore.
 * It replaces the row in place when every transaction that state had not
 * seen end is one the restored state has not seen end either (below its
 * xmax and in its in-progress list, or at or above its xmax); else 55000.
 */
CREATE FUNCTION hub._router_state_restored() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	here pg_snapshot;
BEGIN
	SELECT r.snapshot INTO here FROM hub._router_state r FOR UPDATE;
	IF NOT FOUND THEN
		RETURN NEW;
	END IF;
	IF pg_snapshot_xmax(NEW.snapshot) > pg_snapshot_xmax(here)
		OR EXISTS (SELECT 1 FROM pg_snapshot_xip(here) x
				   WHERE x < pg_snapshot_xmax(NEW.snapshot)
					   AND x NOT IN (SELECT pg_snapshot_xip(NEW.snapshot))) THEN
		RAISE EXCEPTION 'the routing state of the dump is ahead of this cluster''s transaction ids'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('The dump''s routing snapshot is %s; this cluster''s, when the extension was created, is %s.',
								  NEW.snapshot, here),
				  HINT = 'Restore into the cluster the dump came from, or into a new cluster whose transaction ids are ahead: stopped, before the restore, give it a higher epoch with pg_resetwal -e (README, "Backup and restore").';
	END IF;
	UPDATE hub._router_state SET watermark = NEW.watermark, snapshot = NEW.snapshot;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION hub._router_state_restored() IS
'API: Private. Trigger on hub._router_state: a restored routing state replaces the one CREATE EXTENSION made, when this cluster''s transaction ids are not behind it (55000 otherwise).';
CREATE TRIGGER router_state_restored BEFORE INSERT ON hub._router_state
	FOR EACH ROW EXECUTE FUNCTION hub._router_state_restored();
REVOKE EXECUTE ON FUNCTION hub._restore_begin(), hub._router_state_restored() FROM PUBLIC;

-- ---------------------------------------------------------------- what is dumped

SELECT pg_catalog.pg_extension_config_dump('hub.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('hub.deliveries', '');
SELECT pg_catalog.pg_extension_config_dump('hub._attempts_default',
	'WHERE false UNION ALL SELECT attempt_id, delivery_id, attempt, at, worker, lease_token, http_status, error, '
	'latency_ms, response_excerpt, outcome, group_event_id FROM hub.attempts');
SELECT pg_catalog.pg_extension_config_dump('hub.operator_audit', '');
SELECT pg_catalog.pg_extension_config_dump('hub.unroutable_events', '');
SELECT pg_catalog.pg_extension_config_dump('hub._router_state', '');
SELECT pg_catalog.pg_extension_config_dump('hub._retention_marks', '');
SELECT pg_catalog.pg_extension_config_dump('hub.inbox', '');
SELECT pg_catalog.pg_extension_config_dump('hub.entity_state', '');
SELECT pg_catalog.pg_extension_config_dump('hub.entity_system_state', '');
SELECT pg_catalog.pg_extension_config_dump('hub.status_history', '');
SELECT pg_catalog.pg_extension_config_dump('hub.status_conflicts', '');
-- the sequences, so that ids and fencing tokens go on after the restored ones
-- (one call a statement: each updates the extension's catalogue row)
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hub.outbox', 'seq')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hub.deliveries', 'delivery_id')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hub.attempts', 'attempt_id')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hub.operator_audit', 'audit_id')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hub.inbox', 'inbox_id')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hub.status_history', 'history_id')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hub.status_conflicts', 'conflict_id')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump('hub._lease_token_seq', '');
