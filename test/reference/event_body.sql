-- test/reference/event_body.sql --- the SQL definition of hub.event_body
-- before it was written in C (extension/event_body.c), created as
-- event_body_ref.event_body: the reference the C function must match byte
-- for byte.  Not part of the extension; test/pgtap/event_body.sql and
-- test/bench/event_body.sh load it with \ir / \i.  The body below is the
-- former definition's text unchanged; only the schema differs.
CREATE SCHEMA event_body_ref;
CREATE FUNCTION event_body_ref.event_body(body_format text, event_id uuid, event_type text, aggregate_id text,
		occurred_at timestamptz, correlation_id text, payload jsonb, source text DEFAULT '/logistics_hub')
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
	SELECT CASE WHEN body_format OPERATOR(pg_catalog.=) 'cloudevents' THEN
		pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
			'specversion', '1.0', 'id', event_id, 'source', source, 'type', event_type,
			'subject', aggregate_id, 'time', occurred_at, 'datacontenttype', 'application/json',
			'correlationid', correlation_id))
		OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('data', payload)
	ELSE
		pg_catalog.jsonb_build_object('id', event_id, 'type', event_type, 'aggregate_id', aggregate_id,
						   'occurred_at', occurred_at, 'correlation_id', correlation_id, 'data', payload)
	END::pg_catalog.text
$$;
