/*
 * 60_inbox.sql --- the idempotent inbox of inbound messages and the
 * handlers that process it.
 *
 * hub.receive() writes one row per (source, message_id): the unique key
 * makes a redelivered message a duplicate (counted, never stored twice),
 * also when two receivers race, since INSERT ... ON CONFLICT DO NOTHING
 * waits for the other inserter and then sees its row.
 *
 * hub.process_inbox() claims ready messages with FOR UPDATE SKIP LOCKED
 * (two processors never run one message twice), one message of a business
 * key (aggregate_id) at a time in inbox_id order, and runs, for each, the
 * handler of the longest matching message pattern in its own
 * subtransaction: a handler's writes are kept when it succeeds and rolled
 * back when it fails.  (Mapped messages without a handler whose report
 * simply creates or advances a key are applied first, together and
 * set-based, by hub._inbox_apply_batch in 65_flow.sql, with the result the
 * per-message path would give; done and unhandled messages are settled
 * with one UPDATE a batch.)  A message moves through
 *   new -> done | unhandled (no handler)
 *       -> retry_wait (next_attempt_at, backoff retry_base * 2^(attempts-1))
 *       -> dead (after max_attempts), the last error kept as "SQLSTATE: message"
 * and one failing message never stops the others.  There is no
 * 'processing' state: a claim is a row lock, so a processor that dies
 * loses nothing.  The claim and the state changes are private SECURITY
 * DEFINER helpers, while process_inbox() itself runs with its caller's
 * rights, and each handler as its own owner (hub._run_handler), so a
 * handler never runs with the privileges of the extension's owner or of
 * whoever processes the inbox.
 * All tables are WAL-logged.
 */

-- ---------------------------------------------------------------- inbox

CREATE TABLE hub.inbox (
	inbox_id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	-- (keys at most 256 bytes, as hub.receive checks: README, "Limits on inputs")
	source				text NOT NULL CHECK (source <> '' AND octet_length(source) <= 256),
	message_id			text NOT NULL CHECK (message_id <> '' AND octet_length(message_id) <= 256),
	message_type		text NOT NULL CHECK (message_type <> '' AND octet_length(message_type) <= 256),
	payload				jsonb NOT NULL,
	received_at			timestamptz NOT NULL DEFAULT now(),
	state				text NOT NULL DEFAULT 'new'
						CHECK (state IN ('new', 'done', 'retry_wait', 'dead', 'unhandled')),
	attempts			integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
	next_attempt_at		timestamptz DEFAULT now(),
	last_error			text,
	processed_at		timestamptz,
	duplicate_count		integer NOT NULL DEFAULT 0 CHECK (duplicate_count >= 0),
	last_duplicate_at	timestamptz,
	correlation_id		text CHECK (octet_length(correlation_id) <= 256),
	aggregate_id		text CHECK (octet_length(aggregate_id) <= 256),
	UNIQUE (source, message_id),
	CHECK ((state IN ('new', 'retry_wait')) = (next_attempt_at IS NOT NULL))
);
-- the claim's order (next_attempt_at, inbox_id): a backlog received in one
-- statement shares one next_attempt_at, and without inbox_id in the index
-- every claim would sort all of it to find the first few
CREATE INDEX inbox_ready_idx ON hub.inbox (next_attempt_at, inbox_id) WHERE state IN ('new', 'retry_wait');
-- hub.trace() follows a correlation id or a business key into the inbox
CREATE INDEX inbox_correlation_idx ON hub.inbox (correlation_id) WHERE correlation_id IS NOT NULL;
CREATE INDEX inbox_aggregate_idx ON hub.inbox (aggregate_id) WHERE aggregate_id IS NOT NULL;
COMMENT ON TABLE hub.inbox IS
'Inbound messages, one row per (source, message_id): write with hub.receive(), process with hub.process_inbox().';
COMMENT ON COLUMN hub.inbox.message_id IS 'The sender''s idempotency key, unique per source.';
COMMENT ON COLUMN hub.inbox.state IS
'new, done, retry_wait (waits for next_attempt_at), dead (max_attempts reached) or unhandled (no handler matched).';
COMMENT ON COLUMN hub.inbox.attempts IS 'Failed handler runs so far.';
COMMENT ON COLUMN hub.inbox.next_attempt_at IS 'When the message is ready for processing; NULL once it is done, dead or unhandled.';
COMMENT ON COLUMN hub.inbox.last_error IS 'The last handler error as "SQLSTATE: message".';
COMMENT ON COLUMN hub.inbox.duplicate_count IS 'How often the same (source, message_id) was received again.';
COMMENT ON COLUMN hub.inbox.correlation_id IS 'The correlation id the message carries (hub.receive''s argument, else the payload''s correlation_id key), for hub.trace().';
COMMENT ON COLUMN hub.inbox.aggregate_id IS 'The business key (order, shipment, SKU, return) the message is about, when the receiver names it; for hub.trace().';

-- ---------------------------------------------------------------- handlers

CREATE TABLE hub.inbox_handlers (
	message_pattern		text PRIMARY KEY CHECK (message_pattern ~ '^[^*]*\*?$' AND message_pattern <> ''),
	handler				regproc NOT NULL,
	max_attempts		integer NOT NULL DEFAULT 5 CHECK (max_attempts BETWEEN 1 AND 1000),
	retry_base			interval NOT NULL DEFAULT '1 second'
						CHECK (retry_base BETWEEN '0'::interval AND '1 day'::interval)
);
COMMENT ON COLUMN hub.inbox_handlers.max_attempts IS 'Failed runs before a message is dead, 1 to 1000.';
COMMENT ON COLUMN hub.inbox_handlers.retry_base IS 'Backoff after the first failure, doubled after each further one up to a day; 0 to 1 day.';
COMMENT ON TABLE hub.inbox_handlers IS
'Inbox handlers by message type pattern: an exact type, or a prefix ending in * (easypost.*); the longest matching pattern wins. Register with hub.register_handler().';
COMMENT ON COLUMN hub.inbox_handlers.handler IS
'A function handler(payload jsonb, message_type text, context jsonb), or (payload jsonb, message_type text), or (payload jsonb); its result is ignored and an error it raises fails the message. Runs after the pattern''s declared mapping (hub.inbox_mappings), if any, in the same subtransaction.';
SELECT pg_catalog.pg_extension_config_dump('hub.inbox_handlers', '');

CREATE FUNCTION hub._inbox_pattern_matches(message_pattern text, message_type text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
-- (no SET clause and not STRICT, every name qualified: the planner inlines
-- it into the claim and the mapping lookup; a SET clause made it a function
-- call parsed and planned anew for every message, 40 us each.  NULL in
-- gives NULL out all the same.)
AS $$
	SELECT CASE WHEN pg_catalog.right(message_pattern, 1) OPERATOR(pg_catalog.=) '*'
				THEN pg_catalog.starts_with(message_type, pg_catalog.left(message_pattern, -1))
				ELSE message_type OPERATOR(pg_catalog.=) message_pattern END
$$;
COMMENT ON FUNCTION hub._inbox_pattern_matches(text, text) IS
'API: Private. Whether an inbox handler pattern (exact, or a prefix ending in *) matches a message type.';

-- ---------------------------------------------------------------- receive

CREATE FUNCTION hub.receive(source text, message_id text, message_type text, payload jsonb,
		received_at timestamptz DEFAULT now(), correlation_id text DEFAULT NULL, aggregate_id text DEFAULT NULL,
		traceparent text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	corr text := coalesce(receive.correlation_id,
						  CASE WHEN jsonb_typeof(receive.payload) = 'object'
							   THEN receive.payload ->> 'correlation_id' END);
	agg text := receive.aggregate_id;
	-- (outside data: an invalid traceparent starts a new trace, it never
	-- refuses the message; extension/trace_context.c)
	tp text := hub._traceparent_or_new(coalesce(receive.traceparent,
								CASE WHEN jsonb_typeof(receive.payload) = 'object'
									 THEN receive.payload ->> 'traceparent' END));
	mapped_key jsonb;
BEGIN
	-- the limits on inputs (22001, 54000), before anything is written
	PERFORM hub._check_key_length('source', receive.source);
	PERFORM hub._check_key_length('message id', receive.message_id);
	PERFORM hub._check_key_length('message type', receive.message_type);
	PERFORM hub._check_key_length('correlation id', corr);
	PERFORM hub._check_key_length('aggregate id', agg);
	-- a message of a declared mapping (hub.map_inbox) received without its
	-- business key gets the key its mapping reads, so that it is processed
	-- in order among the key's messages; a key that is no value or is too
	-- long is left for the processing to refuse
	IF agg IS NULL AND jsonb_typeof(receive.payload) = 'object' THEN
		SELECT pg_catalog.jsonb_path_query_first(receive.payload, m.key_path) INTO mapped_key
		FROM hub._inbox_mapping(receive.message_type) m WHERE m.key_path IS NOT NULL;
		IF jsonb_typeof(mapped_key) IN ('string', 'number') AND octet_length(mapped_key #>> '{}') <= 256 THEN
			agg := mapped_key #>> '{}';
		END IF;
	END IF;
	PERFORM hub._check_payload_size(pg_catalog.format('message "%s" of "%s"', left(receive.message_id, 64),
													  left(receive.source, 64)),
									receive.payload);
	-- the loop only repeats if a concurrent receiver's row vanished between
	-- our INSERT and UPDATE (it rolled back or was deleted)
	LOOP
		INSERT INTO hub.inbox AS i (source, message_id, message_type, payload, received_at, next_attempt_at,
									correlation_id, aggregate_id, traceparent)
		VALUES (receive.source, receive.message_id, receive.message_type, receive.payload,
				coalesce(receive.received_at, now()), now(), corr, agg, tp)
		ON CONFLICT ON CONSTRAINT inbox_source_message_id_key DO NOTHING;
		IF FOUND THEN
			RETURN true;
		END IF;
		UPDATE hub.inbox AS i
		SET duplicate_count = i.duplicate_count + 1, last_duplicate_at = now()
		WHERE i.source = receive.source AND i.message_id = receive.message_id;
		IF FOUND THEN
			RETURN false;
		END IF;
	END LOOP;
END
$$;
COMMENT ON FUNCTION hub.receive(text, text, text, jsonb, timestamptz, text, text, text) IS
'Store an inbound message in hub.inbox: true for a new message, false for a duplicate (same source and message_id), which only counts it. Concurrent receivers of one message produce one row. correlation_id (default: the payload''s correlation_id key) and aggregate_id (the business key; default: the key its declared mapping, hub.map_inbox, reads from the payload) make the message part of hub.trace(); the messages of one aggregate_id are processed in inbox order. traceparent (default: the payload''s traceparent key) is the sender''s W3C Trace Context, kept in its version 00 form; absent or invalid (outside data, never refused): a new trace. What processing the message publishes is a child span of it.';

-- ---------------------------------------------------------------- handlers API

CREATE FUNCTION hub.register_handler(message_pattern text, handler regproc,
		max_attempts integer DEFAULT 5, retry_base interval DEFAULT '1 second')
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF message_pattern IS NULL OR message_pattern !~ '^[^*]*\*?$' OR message_pattern = '' THEN
		RAISE EXCEPTION 'invalid message pattern: "%"', message_pattern
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use an exact message type, or a prefix followed by one trailing * (easypost.*).';
	END IF;
	-- (jsonb, text, jsonb) gets the message's context; (jsonb, text) and
	-- (jsonb) are handlers written before it
	PERFORM hub._check_user_function(handler, 'inbox handler',
		CASE (SELECT p.pronargs FROM pg_catalog.pg_proc p WHERE p.oid = handler)
			WHEN 1 THEN '3802' WHEN 3 THEN '3802 25 3802' ELSE '3802 25' END::oidvector);
	PERFORM hub._check_setting('max_attempts', max_attempts BETWEEN 1 AND 1000, max_attempts::text,
							   'between 1 and 1000');
	PERFORM hub._check_setting('retry_base', retry_base BETWEEN '0'::interval AND '1 day'::interval,
							   retry_base::text, 'between 0 and 1 day');
	INSERT INTO hub.inbox_handlers AS h (message_pattern, handler, max_attempts, retry_base)
	VALUES (register_handler.message_pattern, register_handler.handler,
			register_handler.max_attempts, register_handler.retry_base)
	ON CONFLICT ON CONSTRAINT inbox_handlers_pkey DO UPDATE
		SET handler = excluded.handler, max_attempts = excluded.max_attempts, retry_base = excluded.retry_base;
	-- messages that found no handler before are processed again
	UPDATE hub.inbox AS i SET state = 'new', next_attempt_at = now(), processed_at = NULL
	WHERE i.state = 'unhandled'
	  AND hub._inbox_pattern_matches(register_handler.message_pattern, i.message_type);
END
$$;
COMMENT ON FUNCTION hub.register_handler(text, regproc, integer, interval) IS
'Register (or replace) the handler of a message pattern: an exact type or a prefix ending in *. The handler is a function (payload jsonb, message_type text, context jsonb) (the context: inbox_id, source, message_id, message_type, correlation_id, aggregate_id, received_at, attempts), or (payload jsonb, message_type text), or (payload jsonb). Unhandled messages the pattern matches become new again.';

CREATE FUNCTION hub._inbox_claim(max integer)
RETURNS TABLE (inbox_id bigint, message_type text, payload jsonb, attempts integer,
			   handler regproc, max_attempts integer, retry_base interval, aggregate_id text)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- (LIMIT max is a parameter here, which the planner estimates at a tenth
-- of the backlog: a large backlog would pass jit_above_cost and be
-- compiled at every call)
SET jit = off
AS $$
	-- in order per business key (aggregate_id, 62_inbox_worker.sql): a
	-- message is not taken behind an earlier pending message of its key
	-- that is not due (a retry waiting), nor behind one this claim does not
	-- lock (another processor's, or beyond max); the messages of a key it
	-- does take are processed in inbox_id order, the rest of the key's
	-- skipped after one of them fails (hub.process_inbox)
	WITH locked AS (
		SELECT i.inbox_id, i.message_type, i.payload, i.attempts, i.aggregate_id
		FROM hub.inbox i
		WHERE i.state IN ('new', 'retry_wait') AND i.next_attempt_at <= now()
		  AND (i.aggregate_id IS NULL OR NOT EXISTS (
				SELECT FROM hub.inbox e
				WHERE e.aggregate_id = i.aggregate_id AND e.inbox_id < i.inbox_id
				  AND e.state IN ('new', 'retry_wait') AND e.next_attempt_at > now()))
		-- (in inbox order, so an earlier due message of a key is never left
		-- out of a claim that takes a later one: inbox_pending_idx)
		ORDER BY i.inbox_id
		LIMIT max
		FOR UPDATE SKIP LOCKED
	), claimed AS (
		SELECT l.inbox_id, l.message_type, l.payload, l.attempts, l.aggregate_id
		FROM locked l
		WHERE l.aggregate_id IS NULL OR NOT EXISTS (
				SELECT FROM hub.inbox e
				WHERE e.aggregate_id = l.aggregate_id AND e.inbox_id < l.inbox_id
				  AND e.state IN ('new', 'retry_wait')
				  AND NOT EXISTS (SELECT FROM locked o WHERE o.inbox_id = e.inbox_id))
	), handlers AS MATERIALIZED (
		-- (the handler of each message type once, not once a message:
		-- materialized, or the planner runs it again for every row it joins)
		SELECT ty.message_type, h.handler, h.max_attempts, h.retry_base
		FROM (SELECT DISTINCT c.message_type FROM claimed c) ty
		LEFT JOIN LATERAL (
			SELECT h.handler, h.max_attempts, h.retry_base
			FROM hub.inbox_handlers h
			WHERE hub._inbox_pattern_matches(h.message_pattern, ty.message_type)
			ORDER BY h.message_pattern = ty.message_type DESC, length(h.message_pattern) DESC
			LIMIT 1
		) h ON true
	)
	SELECT c.inbox_id, c.message_type, c.payload, c.attempts, h.handler, h.max_attempts, h.retry_base,
		   c.aggregate_id
	FROM claimed c
	JOIN handlers h ON h.message_type = c.message_type
	ORDER BY c.inbox_id
$$;
COMMENT ON FUNCTION hub._inbox_claim(integer) IS
'API: Private. Lock up to max ready inbox messages (skipping locked ones), in order per business key (a message of an aggregate_id only when every earlier message of it that is new or retry_wait is due and locked by the same claim), and return each with its best-matching handler and its business key.';

CREATE FUNCTION hub._inbox_settle(inbox_id bigint, outcome text, error text DEFAULT NULL,
		max_attempts integer DEFAULT NULL, retry_base interval DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	new_state text;
BEGIN
	IF outcome = 'done' OR outcome = 'unhandled' THEN
		UPDATE hub.inbox i SET state = outcome, next_attempt_at = NULL, processed_at = now()
		WHERE i.inbox_id = _inbox_settle.inbox_id
		RETURNING i.state INTO new_state;
	ELSIF outcome = 'failed' THEN
		UPDATE hub.inbox i
		SET attempts = i.attempts + 1,
			last_error = error,
			state = CASE WHEN i.attempts + 1 >= _inbox_settle.max_attempts THEN 'dead' ELSE 'retry_wait' END,
			-- (in seconds as float8, capped at a day: an interval times
			-- 2^attempts would overflow)
			next_attempt_at = CASE WHEN i.attempts + 1 >= _inbox_settle.max_attempts THEN NULL
								   ELSE now() + make_interval(secs => least(86400,
										extract(epoch FROM _inbox_settle.retry_base)::float8
										* power(2, least(i.attempts, 30)))) END,
			processed_at = CASE WHEN i.attempts + 1 >= _inbox_settle.max_attempts THEN now() END
		WHERE i.inbox_id = _inbox_settle.inbox_id
		RETURNING i.state INTO new_state;
	ELSE
		RAISE EXCEPTION 'invalid inbox outcome: "%"', outcome USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN new_state;
END
$$;
COMMENT ON FUNCTION hub._inbox_settle(bigint, text, text, integer, interval) IS
'API: Private. Record the outcome of processing one inbox message (done, unhandled, or failed with backoff or dead).';

CREATE FUNCTION hub._inbox_settle_many(inbox_ids bigint[], outcome text)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
BEGIN
	IF outcome IS NULL OR outcome NOT IN ('done', 'unhandled') THEN
		RAISE EXCEPTION 'invalid inbox outcome: "%"', outcome USING ERRCODE = 'invalid_parameter_value',
			HINT = 'Settle done or unhandled messages here; a failed one with hub._inbox_settle.';
	END IF;
	IF inbox_ids IS NULL OR cardinality(inbox_ids) = 0 THEN
		RETURN 0;
	END IF;
	UPDATE hub.inbox i SET state = outcome, next_attempt_at = NULL, processed_at = now()
	WHERE i.inbox_id = ANY (inbox_ids);
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION hub._inbox_settle_many(bigint[], text) IS
'API: Private. Record the outcome done or unhandled of many inbox messages at once (hub.process_inbox settles a batch with one UPDATE); returns how many rows it settled.';

CREATE FUNCTION hub.process_inbox(max integer DEFAULT 100)
RETURNS TABLE (processed integer, failed integer, unhandled integer)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m record;
	ctx jsonb;
	err text;
	v_max integer;
	v_base interval;
	c_id bigint[];
	c_type text[];
	c_payload jsonb[];
	c_handler regproc[];
	c_max integer[];
	c_base interval[];
	v_prefix integer;
	v_fast bigint[] := '{}';
	v_done bigint[] := '{}';
	v_unhandled bigint[] := '{}';
	v_failed_keys text[] := '{}';
	c_key text[];
	v_left bigint[];
	v_round bigint[];
	v_taken bigint[];
BEGIN
	IF max IS NULL OR max < 1 THEN
		RAISE EXCEPTION 'max must be at least 1' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	processed := 0;
	failed := 0;
	unhandled := 0;
	-- (the business keys too: the rounds below, and the keys left after
	-- one of their messages failed)
	-- (in inbox_id order: the aggregates read the sorted subquery in its
	-- order, one sort for all seven)
	SELECT array_agg(c.inbox_id), array_agg(c.message_type), array_agg(c.payload), array_agg(c.handler),
		   array_agg(c.max_attempts), array_agg(c.retry_base), array_agg(c.aggregate_id)
	INTO c_id, c_type, c_payload, c_handler, c_max, c_base, c_key
	FROM (SELECT * FROM hub._inbox_claim(max) x ORDER BY x.inbox_id) c;
	IF c_id IS NULL THEN
		RETURN NEXT;
		RETURN;
	END IF;
	-- the mapped messages before the first one with a handler, applied
	-- together where their outcome is the plain one (65_flow.sql); those
	-- come first, the rest one by one in inbox_id order, so a handler never
	-- sees a later message applied before its own
	v_prefix := cardinality(c_id);
	FOR k IN 1 .. cardinality(c_id) LOOP
		IF c_handler[k] IS NOT NULL THEN
			v_prefix := k - 1;
			EXIT;
		END IF;
	END LOOP;
	-- (in rounds: a key's first message of the claim, then its next, each
	-- round set-based; a key whose message a round leaves keeps the rest of
	-- its messages for the loop below, in order)
	IF v_prefix > 0 THEN
		v_left := c_id[1:v_prefix];
		LOOP
			-- (unnest, not subscripts: c_key[n] walks the array from its
			-- start; and the first round takes from every message)
			SELECT array_agg(x.id ORDER BY x.n) INTO v_round
			-- (COLLATE "C": the same keys apart, sorted by memcmp)
			FROM (SELECT DISTINCT ON (coalesce(u.key, '#' || u.n) COLLATE "C") u.id, u.n
				  FROM unnest(c_id[1:v_prefix], c_key[1:v_prefix]) WITH ORDINALITY u(id, key, n)
				  WHERE v_round IS NULL OR u.id = ANY (v_left)
				  ORDER BY coalesce(u.key, '#' || u.n) COLLATE "C", u.n) x;
			EXIT WHEN v_round IS NULL;
			v_taken := coalesce(hub._inbox_apply_batch(v_round), '{}');
			v_fast := v_fast || v_taken;
			EXIT WHEN cardinality(v_taken) = 0 OR cardinality(v_round) = cardinality(v_left);
			SELECT coalesce(array_agg(c_id[n] ORDER BY n), '{}') INTO v_left
			FROM generate_subscripts(c_id, 1) n
			WHERE n <= v_prefix AND c_id[n] = ANY (v_left) AND c_id[n] <> ALL (v_round)
			  AND (c_key[n] IS NULL OR NOT EXISTS (
					SELECT FROM generate_subscripts(c_id, 1) r
					WHERE c_id[r] = ANY (v_round) AND c_id[r] <> ALL (v_taken) AND c_key[r] = c_key[n]));
		END LOOP;
		v_done := v_fast;
		processed := cardinality(v_fast);
	END IF;
	-- (when the set took them all, there is nothing left)
	FOR m IN
		SELECT x.inbox_id, x.message_type, x.payload, x.handler, x.max_attempts, x.retry_base
		FROM unnest(c_id, c_type, c_payload, c_handler, c_max, c_base) WITH ORDINALITY
			 x(inbox_id, message_type, payload, handler, max_attempts, retry_base, n)
		WHERE cardinality(v_fast) < cardinality(c_id) AND x.inbox_id <> ALL (v_fast)
		ORDER BY x.n
	LOOP
		-- after a message of a key failed, the key's later messages wait
		-- (unclaimed at commit, behind it in the next claim)
		IF cardinality(v_failed_keys) > 0
		   AND c_key[array_position(c_id, m.inbox_id)] = ANY (v_failed_keys) THEN
			CONTINUE;
		END IF;
		err := NULL;
		BEGIN
			-- its own subtransaction: the declared mapping's (65_flow.sql) and
			-- the handler's writes are rolled back together if either fails.
			-- The mapping first (the state, links, events and exceptions of
			-- the record), then the handler, as its owner, within the time
			-- limit, with the message's context; both publish with the
			-- message's correlation id unless they name one.  NULL: neither
			-- a mapping nor a handler.  (The step sets the message's context
			-- before anything that can publish; it is cleared once, after
			-- the loop.)
			ctx := hub._inbox_step(m.inbox_id, m.handler IS NOT NULL);
			IF ctx IS NOT NULL AND m.handler IS NOT NULL THEN
				PERFORM hub._run_handler(m.handler, m.payload, m.message_type, ctx);
			END IF;
		EXCEPTION WHEN OTHERS THEN
			err := SQLSTATE || ': ' || SQLERRM;
		END;
		IF err IS NULL AND ctx IS NULL THEN
			v_unhandled := v_unhandled || m.inbox_id;
			unhandled := unhandled + 1;
		ELSIF err IS NULL THEN
			v_done := v_done || m.inbox_id;
			processed := processed + 1;
		ELSE
			v_max := m.max_attempts;
			v_base := m.retry_base;
			IF m.handler IS NULL THEN
				-- (a mapped message: the mapping's retry settings)
				SELECT x.max_attempts, x.retry_base INTO v_max, v_base FROM hub._inbox_mapping(m.message_type) x;
			END IF;
			PERFORM hub._inbox_settle(m.inbox_id, 'failed', err, v_max, v_base);
			failed := failed + 1;
			v_failed_keys := pg_catalog.array_remove(v_failed_keys || c_key[array_position(c_id, m.inbox_id)], NULL);
		END IF;
	END LOOP;
	PERFORM set_config('hub.inbox_correlation_id', '', true),
			set_config('hub.inbox_causation_id', '', true);
	-- done and unhandled messages settled with one UPDATE each
	PERFORM hub._inbox_settle_many(v_done, 'done');
	PERFORM hub._inbox_settle_many(v_unhandled, 'unhandled');
	RETURN NEXT;
END
$$;
COMMENT ON FUNCTION hub.process_inbox(integer) IS
'Process up to max ready inbox messages, each in its own subtransaction (mapped messages without a handler whose report simply creates or advances a key are applied together, set-based, by hub._inbox_apply_batch, with the same result): a message with a declared mapping (hub.map_inbox) is applied to the canonical state with its canonical events, links and business exceptions; then its handler, if any, runs as the handler function''s owner within logistics_hub.user_code_timeout, with the message''s context; whatever either publishes carries the message''s correlation id unless it names one. Success (a business exception included) -> done; an error (a malformed message, a failing handler) -> retry_wait with exponential backoff, or dead after max_attempts, the error kept in last_error; neither mapping nor handler -> unhandled. Handlers run with search_path pg_catalog, pg_temp: qualify names or SET search_path on the handler. Returns the counts.';

-- ---------------------------------------------------------------- privileges

REVOKE EXECUTE ON FUNCTION
	hub._inbox_pattern_matches(text, text),
	hub.receive(text, text, text, jsonb, timestamptz, text, text, text),
	hub.register_handler(text, regproc, integer, interval),
	hub._inbox_claim(integer),
	hub._inbox_settle(bigint, text, text, integer, interval),
	hub._inbox_settle_many(bigint[], text),
	hub.process_inbox(integer)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.receive(text, text, text, jsonb, timestamptz, text, text, text) TO hub_writer;
GRANT EXECUTE ON FUNCTION
	hub.register_handler(text, regproc, integer, interval),
	hub.process_inbox(integer),
	hub._inbox_claim(integer),
	hub._inbox_settle(bigint, text, text, integer, interval),
	hub._inbox_settle_many(bigint[], text)
	TO hub_admin;
GRANT SELECT ON hub.inbox, hub.inbox_handlers TO hub_reader;
