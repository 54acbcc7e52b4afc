/*
 * 66_nats_pollers.sql --- a NATS JetStream stream as a poller source
 * (issue 22; README, "NATS JetStream as a poller source").
 *
 * A poller whose endpoint is nats:// (hub.create_poller(endpoint, path =>
 * 'STREAM/DURABLE', message_type)) is not claimed and fetched like an HTTP
 * poller (hub._poll_claim and hub._poll_next_due leave it out): the
 * dispatcher serving its endpoint (endpoint_id % dispatchers) subscribes
 * to the stream's durable consumer (workers/nats_inbound.c) and records
 * what arrives with hub._nats_receive, one transaction a batch, and only
 * after that transaction commits acknowledges the messages.  A crash
 * between the commit and the acknowledgement makes JetStream deliver them
 * again; hub.receive's deduplication on (source, message_id) then counts
 * them as duplicates instead of storing a second row.
 */

CREATE FUNCTION hub._nats_pollers(shard integer, nshards integer)
RETURNS TABLE (poller_id integer, endpoint_id integer, name text, stream text, durable text, message_type text)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM hub._poll_check_shard(shard, nshards);
	RETURN QUERY
	SELECT x.poller_id, x.endpoint_id, x.name, split_part(x.path, '/', 1), split_part(x.path, '/', 2), x.message_type
	FROM hub.pollers x
	JOIN hub.endpoints e ON e.endpoint_id = x.endpoint_id
	WHERE NOT x.paused AND e.enabled AND NOT e.paused AND e.url ~* '^nats://'
		AND e.endpoint_id % nshards = shard
	ORDER BY x.poller_id;
END
$$;
COMMENT ON FUNCTION hub._nats_pollers(integer, integer) IS
'API: Private. The pollers reading a NATS JetStream stream (nats:// endpoint, path STREAM/DURABLE) that dispatcher shard of nshards subscribes to: not paused, endpoint enabled and not paused, endpoint_id % nshards = shard (a durable consumer has one subscriber). Read-only.';

/*
 * _nats_receive --- the messages of one batch of a nats poller into
 * hub.inbox through hub.receive, each under source 'poll:' || name, as
 * its message id (Nats-Msg-Id, or stream:sequence), message type (the
 * Lhub-Event-Type header, or the poller's), correlation and aggregate ids
 * (Lhub-* headers).  A body that is not UTF-8 JSON is kept as
 * {"nats_data_base64": ...}.  A message that hub.receive refuses for its
 * data (22xxx, 54xxx: an id too long, a payload too large) is not stored;
 * its status says why, and the caller terminates it at the stream (it is
 * not delivered again) rather than acknowledging it.  Returns one status a
 * message: new, duplicate, or refused: <message>; the poller's totals and
 * last run are updated.
 */
CREATE FUNCTION hub._nats_receive(poller_id integer, message_ids text[], message_types text[], payloads bytea[],
		correlation_ids text[], aggregate_ids text[])
RETURNS text[]
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p hub.pollers;
	st text[] := '{}';
	body jsonb;
	n_new bigint := 0;
	n_dup bigint := 0;
	refused text;
BEGIN
	SELECT * INTO p FROM hub.pollers x WHERE x.poller_id = _nats_receive.poller_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'poller % does not exist', _nats_receive.poller_id USING ERRCODE = 'undefined_object';
	END IF;
	FOR i IN 1 .. coalesce(cardinality(message_ids), 0) LOOP
		BEGIN
			body := convert_from(payloads[i], 'UTF8')::jsonb;
		EXCEPTION WHEN data_exception OR character_not_in_repertoire OR untranslatable_character THEN
			body := jsonb_build_object('nats_data_base64', encode(payloads[i], 'base64'));
		END;
		BEGIN
			IF hub.receive('poll:' || p.name, message_ids[i], coalesce(message_types[i], p.message_type), body,
						   now(), correlation_ids[i], aggregate_ids[i]) THEN
				st := st || 'new'::text;
				n_new := n_new + 1;
			ELSE
				st := st || 'duplicate'::text;
				n_dup := n_dup + 1;
			END IF;
		EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
			refused := 'refused: ' || SQLERRM;
			st := st || refused;
		END;
	END LOOP;
	UPDATE hub.pollers x
	SET total_new = x.total_new + n_new, total_duplicates = x.total_duplicates + n_dup,
		last_run_at = now(), last_success_at = now(), last_run_new = n_new, last_run_duplicates = n_dup,
		last_error = refused
	WHERE x.poller_id = p.poller_id;
	RETURN st;
END
$$;
COMMENT ON FUNCTION hub._nats_receive(integer, text[], text[], bytea[], text[], text[]) IS
'API: Private. Store one batch of a nats poller''s messages into hub.inbox (hub.receive, source poll:<name>; a body that is not UTF-8 JSON kept as {"nats_data_base64": ...}); one status a message: new, duplicate, or "refused: <why>" for one hub.receive refuses for its data (22xxx, 54xxx). Updates the poller''s totals and last run.';

REVOKE EXECUTE ON FUNCTION hub._nats_pollers(integer, integer),
	hub._nats_receive(integer, text[], text[], bytea[], text[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub._nats_pollers(integer, integer),
	hub._nats_receive(integer, text[], text[], bytea[], text[], text[]) TO hub_worker;
