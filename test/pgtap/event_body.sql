-- hub.event_body is written in C (extension/event_body.c) and must give
-- the very bytes its former SQL definition gave (jsonb_build_object cast to
-- text; test/reference/event_body.sql) in a session whose TimeZone is UTC,
-- whatever the session's TimeZone: a retry must send the same bytes under
-- the same webhook-id and signature.  Both are run over a few thousand
-- generated argument sets: both formats and odd ones, NULL in every
-- argument, strings with quotes, backslashes, every control character,
-- non-ASCII and long runs, payloads from scalars to large and deeply nested
-- documents, timestamps with and without fractions, far past and future
-- and infinite, the C function under several TimeZone settings.
BEGIN;
SELECT plan(30);

\ir ../reference/event_body.sql

-- ---------------------------------------------------------------- the function

SELECT is((SELECT l.lanname || ' ' || p.prosrc FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
		   WHERE p.oid = 'hub.event_body(text,uuid,text,text,timestamptz,text,jsonb,text)'::regprocedure),
	'c hub_event_body', 'hub.event_body is the C function hub_event_body');
SELECT is((SELECT provolatile FROM pg_proc WHERE oid = 'hub.event_body(text,uuid,text,text,timestamptz,text,jsonb,text)'::regprocedure), 's', 'it is STABLE');
SELECT is((SELECT proisstrict FROM pg_proc WHERE oid = 'hub.event_body(text,uuid,text,text,timestamptz,text,jsonb,text)'::regprocedure), false, 'it is not strict');
SELECT is((SELECT proparallel FROM pg_proc WHERE oid = 'hub.event_body(text,uuid,text,text,timestamptz,text,jsonb,text)'::regprocedure), 's', 'it is PARALLEL SAFE');
SELECT is(pg_get_function_arguments('hub.event_body(text,uuid,text,text,timestamptz,text,jsonb,text)'::regprocedure),
	pg_get_function_arguments('event_body_ref.event_body'::regproc),
	'same arguments and default as the SQL definition');
SELECT is(pg_get_function_result('hub.event_body(text,uuid,text,text,timestamptz,text,jsonb,text)'::regprocedure), 'text', 'it returns text');
SELECT is(obj_description('hub.event_body(text,uuid,text,text,timestamptz,text,jsonb,text)'::regprocedure, 'pg_proc'),
	'The JSON a receiver gets for one event: the canonical event (id, type, aggregate_id, occurred_at, correlation_id, data) or, for body_format cloudevents or cloudevents_batch, a CloudEvents 1.0 structured-mode event; a batch request is a JSON array of them. The time is in UTC whatever the session''s TimeZone.',
	'the COMMENT is kept');

-- ---------------------------------------------------------------- inputs

CREATE TEMP TABLE strs (k integer, s text);
INSERT INTO strs (k, s)
SELECT row_number() OVER () - 1, s FROM unnest(ARRAY[
	'', 'order.created', 'SO-1', 'say "hi"', 'back\slash', 'C:\dir\"x"\', E'line\nbreak',
	E'\t\r\b\f', (SELECT string_agg(chr(i), '' ORDER BY i) FROM generate_series(1, 31) i), chr(127),
	E'caf\u00e9 \u00fc\u00df \u65e5\u672c\u8a9e \U0001F69A', E'\u2028\u2029\ufeff', '\u0000 as six characters',
	'</script>', '/', repeat('long-', 20000), repeat('"\', 3000), repeat(E'\u00f8', 3000), '   ', 'null',
	'{"not": "json"}']) s;
CREATE TEMP TABLE payloads (k integer, p jsonb);
INSERT INTO payloads (k, p)
SELECT row_number() OVER () - 1, p FROM unnest(ARRAY[
	'{}', '[]', 'null', '"scalar \" string"', '42', '-0.0', '1.50', '1e100', '0.000000000000000000001',
	'123456789012345678901234567890.123456789', 'true', 'false',
	'{"order_id": "SO-1", "lines": 3, "warehouse": "DC1"}',
	'{"a": {"b": [1, 2, {"c": null}], "d": "x\"y"}, "": 0, "zz": [], "b": {}}',
	'{"key with \"quote\"": "\\", "\u00e9": "\ud83d\ude9a", "ctl": "\u0001\u001f\n"}',
	(repeat('[', 200) || '1' || repeat(']', 200)),
	(repeat('{"x": ', 100) || '"deep"' || repeat('}', 100))]::jsonb[]) p;
INSERT INTO payloads (k, p) SELECT 100 + k, jsonb_build_object('s', s, 'list', jsonb_build_array(s, k)) FROM strs;
INSERT INTO payloads (k, p)
SELECT 200, jsonb_build_object('lines', jsonb_agg(jsonb_build_object('line', i, 'sku', 'SKU-' || i, 'qty', i % 7,
	'price', (i * 1.25)::numeric, 'note', repeat('n', i % 50), 'tags', ARRAY['a', 'b"', E'c\n'])))
FROM generate_series(1, 3000) i;
CREATE TEMP TABLE stamps (k integer, t timestamptz);
INSERT INTO stamps (k, t)
SELECT row_number() OVER () - 1, t FROM unnest(ARRAY[
	'2026-01-02 03:04:05+00', '2026-01-02 03:04:05.5+00', '2026-07-01 12:00:00.123456+00',
	'2024-02-29 23:59:59.999999+05:30', '1970-01-01 00:00:00.000001+00', '2000-01-01 00:00:00+00',
	'2026-03-08 06:59:59.9+00', '2026-03-08 07:00:00+00', '2026-11-01 05:30:00.25+00',
	'1850-06-01 00:00:00+00', '1900-01-01 12:34:56.789+00', '0044-03-15 12:00:00+00 BC',
	'4000-01-01 00:00:00+00 BC', '200000-01-01 00:00:00+00', 'infinity', '-infinity']::timestamptz[]) t;
CREATE TEMP TABLE formats (k integer, f text);
INSERT INTO formats (k, f)
SELECT row_number() OVER () - 1, f
FROM unnest(ARRAY['event', 'cloudevents', 'cloudevents', 'event', NULL, 'batch', 'CloudEvents', '', 'cloudevents ']) f;

-- one row an argument set; moduli prime to each other mix the columns, and
-- each argument is NULL in some rows of every format
CREATE TABLE event_body_ref.cases AS
SELECT i,
	(SELECT f FROM formats WHERE k = i % 9) AS body_format,
	CASE WHEN i % 13 = 0 THEN NULL WHEN i % 4 = 0 THEN '00000000-0000-0000-0000-000000000000'::uuid
		 ELSE md5(i::text)::uuid END AS event_id,
	CASE WHEN i % 29 = 0 THEN NULL ELSE (SELECT s FROM strs WHERE k = i % 21) END AS event_type,
	CASE WHEN i % 31 = 0 THEN NULL ELSE (SELECT s FROM strs WHERE k = (i * 7 + 3) % 21) END AS aggregate_id,
	CASE WHEN i % 23 = 0 THEN NULL ELSE (SELECT t FROM stamps WHERE k = i % 16) END AS occurred_at,
	CASE WHEN i % 5 = 0 THEN NULL ELSE (SELECT s FROM strs WHERE k = (i * 11 + 5) % 21) END AS correlation_id,
	CASE WHEN i % 11 = 0 THEN NULL WHEN i % 97 = 0 THEN (SELECT p FROM payloads WHERE k = 200)
		 WHEN i % 2 = 0 THEN (SELECT p FROM payloads WHERE k = 100 + i % 21)
		 ELSE (SELECT p FROM payloads WHERE k = i % 17) END AS payload,
	CASE WHEN i % 17 = 0 THEN NULL ELSE (SELECT s FROM strs WHERE k = (i * 5 + 1) % 21) END AS source,
	i % 3 = 0 AS default_source
FROM generate_series(1, 2500) i;
INSERT INTO event_body_ref.cases VALUES
	(0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, false),
	(-1, 'cloudevents', NULL, NULL, NULL, NULL, NULL, NULL, NULL, false),
	(-2, 'event', NULL, NULL, NULL, NULL, NULL, NULL, NULL, true),
	(-3, 'cloudevents', NULL, NULL, NULL, NULL, NULL, NULL, NULL, true);

-- the reference's bytes in a UTC session, once; the C function's are
-- computed in whatever TimeZone the session has
SET LOCAL TimeZone = 'UTC';
CREATE TABLE event_body_ref.bodies AS
SELECT i,
	CASE WHEN default_source
		 THEN event_body_ref.event_body(body_format, event_id, event_type, aggregate_id, occurred_at, correlation_id, payload)
		 ELSE event_body_ref.event_body(body_format, event_id, event_type, aggregate_id, occurred_at, correlation_id, payload, source)
	END AS r
FROM event_body_ref.cases;
RESET TimeZone;

CREATE TEMP VIEW bodies AS
SELECT i,
	CASE WHEN default_source
		 THEN hub.event_body(body_format, event_id, event_type, aggregate_id, occurred_at, correlation_id, payload)
		 ELSE hub.event_body(body_format, event_id, event_type, aggregate_id, occurred_at, correlation_id, payload, source)
	END AS c,
	x.r
FROM event_body_ref.cases JOIN event_body_ref.bodies x USING (i);

-- a mismatch shows its case number, both lengths and where the two part
-- (within their first 4000 characters)
CREATE TEMP VIEW mismatches AS
SELECT i, octet_length(c) AS c_len, octet_length(r) AS r_len,
	(SELECT min(n) FROM generate_series(1, least(4000, greatest(length(c), length(r)))) n
	 WHERE substr(c, n, 1) IS DISTINCT FROM substr(r, n, 1)) AS first_difference,
	left(c, 160) AS c_start, left(r, 160) AS r_start
FROM bodies WHERE c IS DISTINCT FROM r;

SELECT ok((SELECT count(*) FROM event_body_ref.cases WHERE body_format = 'cloudevents') > 500
		  AND (SELECT count(*) FROM event_body_ref.cases WHERE body_format IS DISTINCT FROM 'cloudevents') > 1000,
	'the cases cover both formats');
SELECT ok((SELECT bool_and(n >= 10) FROM (
		SELECT count(*) FILTER (WHERE event_id IS NULL) AS a, count(*) FILTER (WHERE event_type IS NULL) AS b,
			   count(*) FILTER (WHERE aggregate_id IS NULL) AS c, count(*) FILTER (WHERE occurred_at IS NULL) AS d,
			   count(*) FILTER (WHERE correlation_id IS NULL) AS e, count(*) FILTER (WHERE payload IS NULL) AS f,
			   count(*) FILTER (WHERE source IS NULL AND NOT default_source) AS g
		FROM event_body_ref.cases WHERE body_format = 'cloudevents') x, LATERAL unnest(ARRAY[a, b, c, d, e, f, g]) n),
	'every argument is NULL in some CloudEvents cases');

-- ---------------------------------------------------------------- byte for byte

SET LOCAL TimeZone = 'UTC';
SELECT is_empty('SELECT * FROM mismatches ORDER BY i LIMIT 5', 'TimeZone UTC: every body is byte-identical to the SQL definition''s');
SET LOCAL TimeZone = 'America/New_York';
SELECT is_empty('SELECT * FROM mismatches ORDER BY i LIMIT 5', 'TimeZone America/New_York: every body is byte-identical to the SQL definition''s in UTC');
SET LOCAL TimeZone = 'Asia/Kolkata';
SELECT is_empty('SELECT * FROM mismatches ORDER BY i LIMIT 5', 'TimeZone Asia/Kolkata: every body is byte-identical to the UTC one');
SET LOCAL TimeZone = 'Asia/Kathmandu';
SELECT is_empty('SELECT * FROM mismatches ORDER BY i LIMIT 5', 'TimeZone Asia/Kathmandu (+05:45): every body is byte-identical to the UTC one');
SET LOCAL TimeZone = '<-0330>+03:30';
SELECT is_empty('SELECT * FROM mismatches ORDER BY i LIMIT 5', 'a POSIX TimeZone west of Greenwich: every body is byte-identical to the UTC one');

-- PARALLEL SAFE: the same in a parallel worker (which gets the session's
-- TimeZone)
SET LOCAL force_parallel_mode = on;
SELECT is((SELECT count(*) FROM bodies WHERE c = r), (SELECT count(*) FROM event_body_ref.cases),
	'in a parallel worker too (force_parallel_mode, TimeZone <-0330>+03:30)');
RESET force_parallel_mode;

-- ---------------------------------------------------------------- valid JSON

SET LOCAL TimeZone = 'UTC';
CREATE TEMP TABLE rendered AS SELECT b.i, b.c, b.r, x.payload FROM bodies b JOIN event_body_ref.cases x USING (i);
SELECT lives_ok('SELECT count(c::json) FROM rendered', 'every body parses as JSON');
SELECT is((SELECT count(*) FROM rendered WHERE c::jsonb IS DISTINCT FROM r::jsonb), 0::bigint,
	'and as jsonb equals the SQL definition''s');
SELECT is((SELECT count(*) FROM rendered WHERE c::jsonb::text IS DISTINCT FROM c), 0::bigint,
	'every body is already in jsonb''s own text form');
SELECT is((SELECT count(*) FROM rendered WHERE c::jsonb -> 'data' IS DISTINCT FROM coalesce(payload, 'null')), 0::bigint,
	'"data" is the payload, JSON null for a NULL payload');

-- ---------------------------------------------------------------- NULLs and formats


SELECT is(hub.event_body(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
	'{"id": null, "data": null, "type": null, "occurred_at": null, "aggregate_id": null, "correlation_id": null}',
	'all arguments NULL: the canonical event of nulls');
SELECT is(hub.event_body('cloudevents', NULL, NULL, NULL, NULL, NULL, NULL, NULL),
	'{"data": null, "specversion": "1.0", "datacontenttype": "application/json"}',
	'CloudEvents with all arguments NULL: nulls stripped from the envelope, "data": null kept');
SELECT is(hub.event_body('cloudevents', NULL, NULL, NULL, NULL, NULL, NULL),
	'{"data": null, "source": "/logistics_hub", "specversion": "1.0", "datacontenttype": "application/json"}',
	'the default source is /logistics_hub');
SELECT is(hub.event_body(NULL, '00000000-0000-8000-8000-000000000001', 'order.created', 'SO-1',
		'2026-01-02 03:04:05+00', 'c-1', '{"n": 1}'),
	hub.event_body('event', '00000000-0000-8000-8000-000000000001', 'order.created', 'SO-1',
		'2026-01-02 03:04:05+00', 'c-1', '{"n": 1}'),
	'a NULL body_format gives the canonical event');
SELECT is(hub.event_body('cloudevents', '00000000-0000-8000-8000-000000000001', 'order.created', 'SO-1',
		'2026-01-02 03:04:05+00', NULL, NULL, '/src'),
	'{"id": "00000000-0000-8000-8000-000000000001", "data": null, "time": "2026-01-02T03:04:05+00:00", "type": "order.created", "source": "/src", "subject": "SO-1", "specversion": "1.0", "datacontenttype": "application/json"}',
	'CloudEvents: jsonb''s key order, a NULL correlation id left out, a NULL payload kept as null');
SELECT is(hub.event_body('cloudevents_batch', '00000000-0000-8000-8000-000000000001', 'order.created', 'SO-1',
		'2026-01-02 03:04:05+00', 'c-1', '{"n": 1}', '/src'),
	hub.event_body('cloudevents', '00000000-0000-8000-8000-000000000001', 'order.created', 'SO-1',
		'2026-01-02 03:04:05+00', 'c-1', '{"n": 1}', '/src'),
	'each event of a CloudEvents batch is the CloudEvents event');
SELECT is(hub.event_body('event', '00000000-0000-8000-8000-000000000001', E'a"b\\c\n\u0001\u001f\u00e9', 'SO-1',
		'2026-01-02 03:04:05.25+00', NULL, '[1, "x"]'),
	E'{"id": "00000000-0000-8000-8000-000000000001", "data": [1, "x"], "type": "a\\"b\\\\c\\n\\u0001\\u001f\u00e9", "occurred_at": "2026-01-02T03:04:05.25+00:00", "aggregate_id": "SO-1", "correlation_id": null}',
	'canonical: jsonb''s key order and escapes, a NULL correlation id as null');

-- ---------------------------------------------------------------- time zones

SET LOCAL TimeZone = 'Asia/Kolkata';
SELECT is(hub.event_body('event', NULL, NULL, NULL, '2026-01-02 03:04:05.123+00', NULL, NULL)::jsonb ->> 'occurred_at',
	'2026-01-02T03:04:05.123+00:00', 'a timestamp is rendered in UTC, not the session''s TimeZone (Asia/Kolkata)');
SET LOCAL TimeZone = 'America/New_York';
SELECT is(hub.event_body('cloudevents', NULL, NULL, NULL, '2026-07-01 12:00:00+00', NULL, NULL)::jsonb ->> 'time',
	'2026-07-01T12:00:00+00:00', 'the CloudEvents time too (America/New_York, in daylight saving time)');
SELECT is(hub.event_body('event', NULL, NULL, NULL, '1850-06-01 00:00:00+00', NULL, NULL)::jsonb ->> 'occurred_at',
	'1850-06-01T00:00:00+00:00', 'a time when the zone had a local mean time offset: UTC too');
SELECT is(hub.event_body('event', NULL, NULL, NULL, 'infinity', NULL, NULL)::jsonb ->> 'occurred_at',
	'infinity', 'an infinite timestamp is the string infinity');

SELECT * FROM finish();
ROLLBACK;
