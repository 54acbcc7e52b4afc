/*
 * 80_retention.sql --- removing what is old and finished, without bloat:
 * hub.run_retention(), which dispatcher 0 calls every
 * logistics_hub.retention_interval seconds (or you call from a scheduler).
 *
 * What is removed:
 *   - an event published more than logistics_hub.retention_period ago whose
 *     every delivery is finished: delivered or skipped, or dead for more
 *     than logistics_hub.dead_retention_period (dead deliveries are kept
 *     longer so they can still be replayed), with those deliveries and
 *     their attempts;
 *   - attempts older than retention_period, except those of a delivery
 *     that is still open (pending, in_flight, retry_wait) or dead within
 *     the dead period, which are kept with their delivery.
 *   - inbox messages past the deduplication window: a done one received,
 *     processed and last sent again (a duplicate) longer than
 *     logistics_hub.inbox_retention_period ago; a dead or unhandled one
 *     the same past dead_retention_period (it may still be retried).  A
 *     message sent again after its row went is accepted as new.
 *   - poll requests (hub.poll_requests, the pollers' audit) older than
 *     retention_period, at most max_events a run.
 * Never removed: an event with an open delivery, a dead one within the
 * dead period, or one not routed yet; an inbox message not processed yet
 * (new, retry_wait).
 *
 * How, and why it does not bloat:
 *   - hub.attempts (the largest table: one row or more per delivery, never
 *     updated) is partitioned by UTC day.  Each run creates the next days'
 *     partitions and removes each day older than retention_period as a
 *     whole: DETACH, copy out the few attempts still kept (they go to the
 *     default partition), DROP.  No dead tuple, no vacuum debt, no WAL per
 *     row.  The DDL waits at most lock_timeout 2 s for its brief lock and
 *     is retried by the next run otherwise.
 *   - hub.outbox and hub.deliveries are removed by DELETE in batches of
 *     10,000, oldest first, at most logistics_hub.retention_max_events a
 *     call (one transaction; dispatcher 0 runs it between deliveries).  Partitioning the outbox would add partition
 *     routing to every publish (the hot path) and split its primary key;
 *     the DELETE instead takes only the left end of the xid-led primary
 *     key.  The freed heap space is reused by new rows after autovacuum
 *     (the outbox is insert-only: its pages fill and empty in order), and
 *     btree pages emptied at the left end are deleted and recycled by
 *     vacuum, so at a steady rate the tables hold the retention window plus
 *     at most one run's worth of removed rows: their size is bounded, not
 *     growing.  Finding the batch costs no index on published_at (which
 *     would cost every publish): each run records a mark (now, the xmin of
 *     its snapshot) in hub._retention_marks; every transaction below the
 *     xmin of a mark taken before the cutoff had ended, and so had
 *     published, before it, so the candidates are exactly the primary key
 *     range below the event id floor of that xmin (and below the routing
 *     watermark: only routed events are candidates).
 */

CREATE TABLE hub._retention_marks (
	at			timestamptz PRIMARY KEY,
	snapshot_xmin	xid8 NOT NULL,
	-- the largest inbox_id by then: every inbox row at or below it had been
	-- inserted before at (an identity value is taken as the row is written)
	inbox_upto	bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE hub._retention_marks IS
'API: Private. One row per retention run: every transaction with an xid below snapshot_xmin had ended (so had published its events) by at, and every inbox row up to inbox_upto had been received.';
INSERT INTO hub._retention_marks (at, snapshot_xmin) VALUES (now(), pg_snapshot_xmin(pg_current_snapshot()));

/*
 * _retention_setting --- a retention period setting (seconds) as an
 * interval; the library is loaded first, so the setting is the real one.
 */
CREATE FUNCTION hub._retention_setting(name text) RETURNS interval
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT make_interval(secs => s.setting::float8)
	FROM pg_settings s
	WHERE hub._retention_active() IS NOT NULL AND s.name = _retention_setting.name
$$;
COMMENT ON FUNCTION hub._retention_setting(text) IS
'API: Private. logistics_hub.retention_period or dead_retention_period as an interval.';

/*
 * _attempts_partition --- create the partition of hub.attempts for one UTC
 * day, as a member of the extension, unless it exists; false when it does not exist and cannot be made
 * because the default partition already holds rows of that day (they stay
 * there and are pruned row by row).
 */
CREATE FUNCTION hub._attempts_partition(day date) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	part text := '_attempts_p' || to_char(day, 'YYYYMMDD');
	lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
	hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
	IF to_regclass('hub.' || part) IS NOT NULL THEN
		RETURN true;
	END IF;
	IF EXISTS (SELECT 1 FROM hub._attempts_default a WHERE a.at >= lo AND a.at < hi) THEN
		RETURN false;
	END IF;
	EXECUTE format('CREATE TABLE hub.%I PARTITION OF hub.attempts FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
	-- a member like hub.attempts itself, which DROP EXTENSION removes;
	-- pg_dump dumps its rows through hub._attempts_default (85_backup.sql)
	EXECUTE format('ALTER EXTENSION logistics_hub ADD TABLE hub.%I', part);
	EXECUTE format('COMMENT ON TABLE hub.%I IS %L', part,
				   'API: Private. Attempts of ' || to_char(day, 'YYYY-MM-DD') || ' (UTC); dropped whole by hub.run_retention().');
	RETURN true;
END
$$;
COMMENT ON FUNCTION hub._attempts_partition(date) IS
'API: Private. Create the hub.attempts partition of one UTC day if missing (false: the default partition holds rows of that day).';

/*
 * _attempts_drop_partition --- remove one day's partition of hub.attempts:
 * detach it, move the attempts still kept (of deliveries that are open, or
 * dead since after dead_cutoff) into the default partition with their ids,
 * drop it.  Returns the number of attempts kept.
 */
CREATE FUNCTION hub._attempts_drop_partition(part regclass, dead_cutoff timestamptz) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	kept bigint;
BEGIN
	EXECUTE format('ALTER TABLE hub.attempts DETACH PARTITION %s', part);
	EXECUTE format($q$
		INSERT INTO hub.attempts (attempt_id, delivery_id, attempt, at, worker, lease_token, http_status,
								  error, latency_ms, response_excerpt, outcome)
		OVERRIDING SYSTEM VALUE
		SELECT a.attempt_id, a.delivery_id, a.attempt, a.at, a.worker, a.lease_token, a.http_status,
			   a.error, a.latency_ms, a.response_excerpt, a.outcome
		FROM %s a JOIN hub.deliveries d ON d.delivery_id = a.delivery_id
		WHERE d.state IN ('pending', 'in_flight', 'retry_wait') OR (d.state = 'dead' AND d.updated_at >= $1)$q$, part)
		USING dead_cutoff;
	GET DIAGNOSTICS kept = ROW_COUNT;
	EXECUTE format('ALTER EXTENSION logistics_hub DROP TABLE %s', part);
	EXECUTE format('DROP TABLE %s', part);
	RETURN kept;
END
$$;
COMMENT ON FUNCTION hub._attempts_drop_partition(regclass, timestamptz) IS
'API: Private. Detach and drop one day of hub.attempts, keeping the attempts of open and recently dead deliveries.';

CREATE FUNCTION hub.run_retention(retention interval DEFAULT NULL, dead_retention interval DEFAULT NULL,
		max_events integer DEFAULT NULL, inbox_retention interval DEFAULT NULL,
		OUT events_removed bigint, OUT deliveries_removed bigint, OUT attempts_removed bigint,
		OUT partitions_dropped integer, OUT partitions_created integer, OUT inbox_removed bigint,
		OUT poll_requests_removed bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	keep interval := coalesce(retention, hub._retention_setting('logistics_hub.retention_period'));
	keep_dead interval := coalesce(dead_retention, hub._retention_setting('logistics_hub.dead_retention_period'));
	keep_inbox interval := coalesce(inbox_retention, hub._retention_setting('logistics_hub.inbox_retention_period'));
	inbox_cutoff timestamptz;
	inbox_done_upto bigint;
	inbox_dead_upto bigint;
	inbox_last bigint;
	inbox_ids bigint[];
	cutoff timestamptz;
	dead_cutoff timestamptz;
	bound xid8;
	batch_floor uuid;
	ids uuid[];
	last_id uuid;
	p record;
	nd bigint;
	na bigint;
	old_lock_timeout text := current_setting('lock_timeout');
BEGIN
	IF keep < interval '0' OR keep_dead < interval '0' OR keep_inbox < interval '0' THEN
		RAISE EXCEPTION 'invalid retention period: "%"',
			CASE WHEN keep < interval '0' THEN keep WHEN keep_dead < interval '0' THEN keep_dead ELSE keep_inbox END
			USING ERRCODE = 'invalid_parameter_value', HINT = 'A retention period must not be negative.';
	END IF;
	PERFORM hub._retention_active();	-- loads the library: the settings are the real ones
	max_events := coalesce(max_events, current_setting('logistics_hub.retention_max_events')::integer);
	IF max_events < 0 THEN
		RAISE EXCEPTION 'invalid max_events: %', max_events
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass 0 or more events to remove in this run.';
	END IF;
	cutoff := now() - keep;
	dead_cutoff := now() - keep_dead;
	inbox_cutoff := now() - keep_inbox;
	events_removed := 0;
	inbox_removed := 0;
	poll_requests_removed := 0;
	deliveries_removed := 0;
	attempts_removed := 0;
	partitions_dropped := 0;
	partitions_created := 0;

	-- one run at a time (the dispatcher's and an operator's would race on
	-- the same partitions); a second one returns at once, removing nothing
	IF NOT pg_try_advisory_xact_lock(hashtext('logistics_hub'), hashtext('run_retention')) THEN
		RAISE NOTICE 'retention is already running in another session';
		RETURN;
	END IF;

	-- open the door for this function only (closed again below; an error
	-- rolls the setting back with the transaction or subtransaction)
	PERFORM set_config('logistics_hub._retention', 'on', true);
	-- (no mark when nothing was published or received since the newest one:
	-- it would bound nothing more, and an idle hub's retention runs then
	-- take no transaction id and write no WAL; the newest mark's own
	-- transaction id moves the xmin, so that cannot be the test)
	INSERT INTO hub._retention_marks (at, snapshot_xmin, inbox_upto)
	SELECT now(), x.snapshot_xmin, x.inbox_upto
	FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS snapshot_xmin,
				 coalesce((SELECT max(i.inbox_id) FROM hub.inbox i), 0) AS inbox_upto) x
	WHERE NOT EXISTS (SELECT 1
					  FROM (SELECT m.snapshot_xmin, m.inbox_upto FROM hub._retention_marks m
							ORDER BY m.at DESC LIMIT 1) l
					  WHERE l.inbox_upto = x.inbox_upto
						AND (SELECT o.event_id FROM hub.outbox o
							 WHERE o.event_id >= hub._event_id_floor(l.snapshot_xmin)
							 ORDER BY o.event_id LIMIT 1) IS NULL)
	ON CONFLICT (at) DO NOTHING;

	-- attempts: whole days, each DDL waiting at most 2 s for its lock
	PERFORM set_config('lock_timeout', '2s', true);
	FOR p IN
		SELECT c.oid::regclass AS part,
			   (to_date(substr(c.relname, 12), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC' AS hi
		FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'hub.attempts'::regclass AND c.relname ~ '^_attempts_p[0-9]{8}$'
		ORDER BY c.relname
	LOOP
		CONTINUE WHEN p.hi > cutoff;
		BEGIN
			PERFORM hub._attempts_drop_partition(p.part, dead_cutoff);
			partitions_dropped := partitions_dropped + 1;
		EXCEPTION WHEN lock_not_available THEN
			RAISE NOTICE 'retention: % is busy, left for the next run', p.part;
		END;
	END LOOP;
	FOR p IN SELECT d::date AS day FROM generate_series((now() AT TIME ZONE 'UTC')::date,
														(now() AT TIME ZONE 'UTC')::date + 2, interval '1 day') d
	LOOP
		CONTINUE WHEN to_regclass('hub._attempts_p' || to_char(p.day, 'YYYYMMDD')) IS NOT NULL;
		BEGIN
			IF hub._attempts_partition(p.day) THEN
				partitions_created := partitions_created + 1;
			END IF;
		EXCEPTION WHEN lock_not_available THEN
			RAISE NOTICE 'retention: hub.attempts is busy, partition of % left for the next run', p.day;
		END;
	END LOOP;
	PERFORM set_config('lock_timeout', old_lock_timeout, true);
	-- the overflow partition, row by row (normally nearly empty)
	DELETE FROM hub._attempts_default a
	WHERE a.at < cutoff
		AND NOT EXISTS (SELECT 1 FROM hub.deliveries d
						WHERE d.delivery_id = a.delivery_id
							AND (d.state IN ('pending', 'in_flight', 'retry_wait')
								 OR (d.state = 'dead' AND d.updated_at >= dead_cutoff)));
	GET DIAGNOSTICS na = ROW_COUNT;
	attempts_removed := attempts_removed + na;

	-- events: a primary key range below the xmin of a mark older than the
	-- cutoff and below the routing watermark
	SELECT least(m.snapshot_xmin, r.watermark) INTO bound
	FROM hub._router_state r,
		 LATERAL (SELECT m.snapshot_xmin FROM hub._retention_marks m WHERE m.at <= cutoff ORDER BY m.at DESC LIMIT 1) m;
	-- and below the smallest event of a batch delivery still kept: the
	-- other events of a batch have no delivery of their own to look at
	SELECT d.event_id INTO batch_floor
	FROM hub.deliveries d
	WHERE d.batch_events IS NOT NULL AND d.state NOT IN ('delivered', 'skipped')
		AND NOT (d.state = 'dead' AND d.updated_at < dead_cutoff)
	ORDER BY d.event_id LIMIT 1;
	WHILE bound IS NOT NULL AND events_removed < max_events LOOP
		-- each batch starts after the last candidate of the one before, so
		-- events kept (open or recently dead) are read once a run
		SELECT array_agg(x.event_id ORDER BY x.event_id) INTO ids
		FROM (SELECT o.event_id FROM hub.outbox o
			  WHERE o.event_id < hub._event_id_floor(bound) AND o.published_at < cutoff
				AND (batch_floor IS NULL OR o.event_id < batch_floor)
				AND o.event_id > coalesce(last_id, '00000000-0000-0000-0000-000000000000')
				AND NOT EXISTS (SELECT 1 FROM hub.deliveries d
								WHERE d.event_id = o.event_id
									AND NOT (d.state IN ('delivered', 'skipped')
											 OR (d.state = 'dead' AND d.updated_at < dead_cutoff)))
			  ORDER BY o.event_id
			  LIMIT least(10000, max_events - events_removed)) x;
		EXIT WHEN ids IS NULL;
		last_id := ids[array_upper(ids, 1)];
		-- the state is re-checked under the row lock: a delivery replayed
		-- meanwhile stays, and so does its event
		WITH d AS (
			DELETE FROM hub.deliveries d
			WHERE d.event_id = ANY (ids)
				AND (d.state IN ('delivered', 'skipped') OR (d.state = 'dead' AND d.updated_at < dead_cutoff))
			RETURNING d.delivery_id
		), a AS (
			DELETE FROM hub.attempts a USING d WHERE a.delivery_id = d.delivery_id
			RETURNING 1
		)
		SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM a) INTO nd, na;
		deliveries_removed := deliveries_removed + nd;
		attempts_removed := attempts_removed + na;
		DELETE FROM hub.outbox o
		WHERE o.event_id = ANY (ids)
			AND NOT EXISTS (SELECT 1 FROM hub.deliveries d WHERE d.event_id = o.event_id);
		GET DIAGNOSTICS nd = ROW_COUNT;
		events_removed := events_removed + nd;
	END LOOP;

	-- inbox: finished messages past their period, a primary-key range up
	-- to the inbox id recorded by the newest mark before each cutoff (so
	-- received before it); each batch starts after the last candidate of
	-- the one before, so messages kept (not processed yet, sent again
	-- lately) are read once a run
	SELECT max(m.inbox_upto) INTO inbox_done_upto FROM hub._retention_marks m WHERE m.at <= inbox_cutoff;
	SELECT max(m.inbox_upto) INTO inbox_dead_upto FROM hub._retention_marks m WHERE m.at <= dead_cutoff;
	WHILE greatest(inbox_done_upto, inbox_dead_upto) > 0 AND inbox_removed < max_events LOOP
		SELECT array_agg(x.inbox_id ORDER BY x.inbox_id) INTO inbox_ids
		FROM (SELECT i.inbox_id FROM hub.inbox i
			  WHERE i.inbox_id <= greatest(inbox_done_upto, inbox_dead_upto)
				AND i.inbox_id > coalesce(inbox_last, 0)
			  ORDER BY i.inbox_id
			  LIMIT least(10000, max_events - inbox_removed)) x;
		EXIT WHEN inbox_ids IS NULL;
		inbox_last := inbox_ids[array_upper(inbox_ids, 1)];
		-- the state and times are checked under the row lock: a message
		-- sent again or retried meanwhile stays
		DELETE FROM hub.inbox i
		WHERE i.inbox_id = ANY (inbox_ids)
			AND CASE WHEN i.state = 'done'
					 THEN i.inbox_id <= inbox_done_upto AND i.processed_at < inbox_cutoff
						  AND (i.last_duplicate_at IS NULL OR i.last_duplicate_at < inbox_cutoff)
					 WHEN i.state IN ('dead', 'unhandled')
					 THEN i.inbox_id <= inbox_dead_upto AND i.processed_at < dead_cutoff
						  AND (i.last_duplicate_at IS NULL OR i.last_duplicate_at < dead_cutoff)
					 ELSE false END;
		GET DIAGNOSTICS nd = ROW_COUNT;
		inbox_removed := inbox_removed + nd;
	END LOOP;

	-- poll requests (the pollers' audit, 65_pollers.sql): older than the
	-- period, oldest first, at most max_events a run
	DELETE FROM hub.poll_requests r
	WHERE r.request_id IN (SELECT x.request_id FROM hub.poll_requests x WHERE x.at < cutoff
						   ORDER BY x.at LIMIT max_events);
	GET DIAGNOSTICS nd = ROW_COUNT;
	poll_requests_removed := nd;

	-- marks: keep those a longer period (the settings') may still need
	DELETE FROM hub._retention_marks m
	WHERE m.at < now() - greatest(keep, keep_dead, keep_inbox,
								  hub._retention_setting('logistics_hub.retention_period'),
								  hub._retention_setting('logistics_hub.dead_retention_period'),
								  hub._retention_setting('logistics_hub.inbox_retention_period'))
				 - interval '1 day';
	PERFORM set_config('logistics_hub._retention', 'off', true);
END
$$;
COMMENT ON FUNCTION hub.run_retention(interval, interval, integer, interval) IS
'Remove events older than retention (default logistics_hub.retention_period) whose every delivery is delivered, skipped, or dead for longer than dead_retention (default logistics_hub.dead_retention_period), with their deliveries and attempts, at most max_events (default logistics_hub.retention_max_events) events a run; drop whole days of attempts older than retention (keeping those of open or recently dead deliveries) and create the coming days'' partitions; remove inbox messages processed and last sent again longer than inbox_retention ago (default logistics_hub.inbox_retention_period; dead and unhandled ones after dead_retention), at most max_events of them; remove poll requests (hub.poll_requests) older than retention, at most max_events of them. Never removes an undelivered event or an inbox message not processed yet. Returns what it removed (attempts of dropped day partitions are counted in partitions_dropped, not row by row).';

REVOKE EXECUTE ON FUNCTION hub.run_retention(interval, interval, integer, interval), hub._retention_setting(text),
	hub._attempts_partition(date), hub._attempts_drop_partition(regclass, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.run_retention(interval, interval, integer, interval) TO hub_admin;
