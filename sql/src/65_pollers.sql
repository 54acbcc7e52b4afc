/*
 * 65_pollers.sql --- pollers: the hub reads the list endpoints of ERP, WMS,
 * TMS, carrier and portal APIs into hub.inbox, exactly once per record
 * version (issue 18; README, "Pollers").
 *
 * The dispatchers only do HTTP (workers/): they claim due pollers with
 * hub._poll_claim, send the request it returns, and hand the response,
 * as received, to hub._poll_page, which does everything else in ONE
 * transaction: the audit row (hub.poll_requests), the page's records into
 * hub.inbox (one message per record id and version: a version seen before
 * is a duplicate, counted), and the poller's position, so a crash between
 * fetch and commit re-fetches the page and deduplicates, and the position
 * never moves past records that were not committed.  It returns the next
 * request of the run, or none when the run is over.  So the whole page
 * logic is SQL, testable by calling these two functions with crafted
 * pages (test/pgtap/pollers.sql).
 *
 * One table, hub.pollers, holds a poller's configuration and its state:
 *   - the run: next_url is the committed position, the URL of the run's
 *     next request (NULL between runs); run_* count the run's pages and
 *     records, remember the run's last 256 request URLs (a next link or
 *     token met again ends the run: a cycle) and the largest version time
 *     seen (run_max_version), which becomes the watermark only when the
 *     run ends by protocol, never inside a run (records of one timestamp
 *     may span pages); etag / last_modified of a run's first page likewise;
 *   - the lease: one run of a poller at a time whatever the number of
 *     dispatchers (FOR UPDATE SKIP LOCKED to claim, a lease token checked
 *     on every page, an expiry of logistics_hub.lease seconds renewed by
 *     every page; an expired lease is claimed again and resumes at
 *     next_url);
 *   - failures: a page that is not what was asked for (an HTTP error, a 200
 *     that is HTML or not JSON or has no items array, a bad encoding, a
 *     body cut short, too big or timed out, as the dispatcher reports) is
 *     a failed page: recorded with an excerpt (secrets redacted), the
 *     position stays and the same page is retried after capped exponential
 *     backoff with jitter, at least Retry-After.
 * Every record is stored as received (payload), keyed by
 * message_id = id@version (the id as text, exactly: jsonb numerics are
 * exact; a \ or @ in it escaped by a \; without a version, or without an
 * id, md5: and the record's hash), or its sha256 when longer than 256
 * bytes; its source is 'poll:' || the poller's name, its aggregate_id the
 * record id (so hub.trace(aggregate => id) finds it), and
 * poll_request_id the request that brought it.
 * All tables are WAL-logged; hub.pollers (configuration and position) and
 * hub.poll_requests are in a dump.
 */

-- ---------------------------------------------------------------- tables

CREATE TABLE hub.pollers (
	poller_id		integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name			text NOT NULL UNIQUE CHECK (name <> '' AND octet_length(name) <= 200 AND name !~ '[[:cntrl:]]'),
	endpoint_id		integer NOT NULL REFERENCES hub.endpoints,
	path			text NOT NULL CHECK (octet_length(path) <= 2000 AND path !~ '[[:space:][:cntrl:]#]'),
	message_type	text NOT NULL CHECK (message_type <> '' AND octet_length(message_type) <= 256),
	every			interval NOT NULL DEFAULT '1 minute'
					CHECK (every BETWEEN interval '1 second' AND interval '7 days'),
	retry_base		interval NOT NULL DEFAULT '5 seconds'
					CHECK (retry_base BETWEEN interval '10 milliseconds' AND interval '1 day'),
	retry_max		interval NOT NULL DEFAULT '1 hour'
					CHECK (retry_max BETWEEN interval '10 milliseconds' AND interval '7 days'),
	max_pages		integer NOT NULL DEFAULT 1000 CHECK (max_pages BETWEEN 1 AND 1000000),
	items_path		jsonpath NOT NULL DEFAULT '$',
	id_field		text NOT NULL,
	id_path			jsonpath NOT NULL,
	version_field	text,
	version_path	jsonpath,
	pagination		text NOT NULL DEFAULT 'none'
					CHECK (pagination IN ('none', 'link_header', 'next_link', 'cursor', 'offset', 'page')),
	next_path		jsonpath,
	cursor_param	text,
	offset_param	text,
	limit_param		text,
	page_size		integer CHECK (page_size BETWEEN 1 AND 100000),
	has_more_path	jsonpath,
	page_param		text,
	first_page		integer CHECK (first_page BETWEEN 0 AND 1),
	since_param		text,
	lookback		interval NOT NULL DEFAULT '0' CHECK (lookback BETWEEN interval '0' AND interval '30 days'),
	since_format	text NOT NULL DEFAULT 'iso8601'
					CHECK (since_format IN ('iso8601', 'epoch_seconds', 'epoch_millis', 'local')),
	since_zone		text NOT NULL DEFAULT 'UTC',
	query			jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(query) = 'object'),
	paused			boolean NOT NULL DEFAULT false,
	created_at		timestamptz NOT NULL DEFAULT now(),
	-- state: schedule and lease
	next_run_at		timestamptz NOT NULL DEFAULT now(),
	lease			bigint,
	lease_worker	text,
	lease_until		timestamptz,
	segment_pages	integer NOT NULL DEFAULT 0,
	-- state: the run
	next_url		text,
	run_base_url	text,
	run_started_at	timestamptz,
	run_pages		integer NOT NULL DEFAULT 0,
	run_offset		bigint,
	run_seen		bigint[] NOT NULL DEFAULT '{}',
	run_new			bigint NOT NULL DEFAULT 0,
	run_duplicates	bigint NOT NULL DEFAULT 0,
	run_max_version	timestamptz,
	run_etag		text,
	run_last_modified text,
	-- state: between runs
	watermark		timestamptz,
	etag			text,
	last_modified	text,
	etag_url		text,
	failures		integer NOT NULL DEFAULT 0,
	last_status		integer,
	last_error		text,
	last_run_at		timestamptz,
	last_success_at	timestamptz,
	last_run_new	bigint,
	last_run_duplicates bigint,
	total_new		bigint NOT NULL DEFAULT 0,
	total_duplicates bigint NOT NULL DEFAULT 0,
	CHECK (retry_max >= retry_base)
);
CREATE INDEX pollers_due_idx ON hub.pollers (next_run_at) WHERE NOT paused;
COMMENT ON TABLE hub.pollers IS
'Pollers: what to read from which endpoint, how it pages, and where each is (position, watermark, lease, failures). Create with hub.create_poller(); watch with hub.poll_status.';
COMMENT ON COLUMN hub.pollers.path IS 'Appended to the endpoint''s URL (may carry a query string); the query column adds fixed parameters.';
COMMENT ON COLUMN hub.pollers.items_path IS 'jsonpath to the array of records in a page ($: the page is the array).';
COMMENT ON COLUMN hub.pollers.id_field IS 'The record id as given: a key name or a jsonpath (starting with $); id_path is its jsonpath.';
COMMENT ON COLUMN hub.pollers.version_field IS 'The record version or update time as given (key name or jsonpath), NULL: the version is a hash of the record; version_path is its jsonpath.';
COMMENT ON COLUMN hub.pollers.pagination IS 'none, link_header (RFC 8288 rel="next"), next_link (a URL at next_path), cursor (a token at next_path sent back as cursor_param), offset (offset_param, limit_param, page_size, has_more_path) or page (page_param from first_page, page_size).';
COMMENT ON COLUMN hub.pollers.since_param IS 'Incremental mode: the query parameter that carries the watermark minus lookback, formatted as since_format (iso8601, epoch_seconds, epoch_millis, or local: naive time of since_zone).';
COMMENT ON COLUMN hub.pollers.next_url IS 'The committed position: the URL of the current run''s next request; NULL between runs.';
COMMENT ON COLUMN hub.pollers.run_seen IS 'Hashes of the current run''s last 256 request URLs: a next link or token met again ends the run (a cycle).';
COMMENT ON COLUMN hub.pollers.run_max_version IS 'The largest version time of the current run''s records; it becomes the watermark when the run ends by protocol.';
COMMENT ON COLUMN hub.pollers.watermark IS 'Incremental mode: the largest version time of the records of the last complete run; NULL reads everything.';
COMMENT ON COLUMN hub.pollers.etag IS 'ETag of the first page of the last complete run (sent as If-None-Match on the next run''s first page when its URL is etag_url); last_modified likewise.';
COMMENT ON COLUMN hub.pollers.lease IS 'The fencing token of the run a dispatcher holds (lease_worker, until lease_until); NULL: none.';
COMMENT ON COLUMN hub.pollers.failures IS 'Failed pages in a row: the backoff before the next try is retry_base * 2^(failures-1), capped by retry_max, with jitter, at least Retry-After.';

CREATE TABLE hub.poll_requests (
	request_id		bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	poller_id		integer NOT NULL,	-- no foreign key: an audit outlives its poller
	at				timestamptz NOT NULL DEFAULT now(),
	worker			text,
	lease			bigint,
	page			integer,
	url				text,
	http_status		integer,
	outcome			text NOT NULL CHECK (outcome IN ('more', 'end', 'not_modified', 'failed', 'cycle', 'refused',
													  'bad_next', 'max_pages', 'throttled', 'stale')),
	records			integer NOT NULL DEFAULT 0,
	new_records		integer NOT NULL DEFAULT 0,
	duplicates		integer NOT NULL DEFAULT 0,
	rejected		integer NOT NULL DEFAULT 0,
	bytes			bigint,
	latency_ms		integer,
	error			text,
	excerpt			text CHECK (length(excerpt) <= 1024)
);
CREATE INDEX poll_requests_poller_idx ON hub.poll_requests (poller_id, request_id);
CREATE INDEX poll_requests_at_idx ON hub.poll_requests (at);
COMMENT ON TABLE hub.poll_requests IS
'Append-only audit of every poll request: URL (credentials redacted), HTTP status, records, new and duplicate, bytes, latency, error and, for a failed page, an excerpt with secrets redacted; outcome more (the run goes on), end, not_modified (304), failed (retried), cycle, refused (next link to another origin), bad_next, max_pages, throttled, stale (the lease was taken over). Removed by hub.run_retention() after logistics_hub.retention_period.';
COMMENT ON COLUMN hub.poll_requests.page IS 'The page''s number in its run (1: the first).';
COMMENT ON COLUMN hub.poll_requests.rejected IS 'Records not stored: larger than logistics_hub.max_payload_size (as hub.receive refuses them); error names their ids.';
CREATE TRIGGER poll_requests_append_only BEFORE UPDATE OR DELETE ON hub.poll_requests
	FOR EACH ROW EXECUTE FUNCTION hub._immutable();
CREATE TRIGGER poll_requests_no_truncate BEFORE TRUNCATE ON hub.poll_requests
	FOR EACH STATEMENT EXECUTE FUNCTION hub._immutable();

ALTER TABLE hub.inbox ADD COLUMN poll_request_id bigint;
COMMENT ON COLUMN hub.inbox.poll_request_id IS 'For a polled record: the request (hub.poll_requests) that brought it first; for hub.trace().';

SELECT pg_catalog.pg_extension_config_dump('hub.pollers', '');
SELECT pg_catalog.pg_extension_config_dump('hub.poll_requests', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hub.pollers', 'poller_id')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hub.poll_requests', 'request_id')::regclass, '');

-- ---------------------------------------------------------------- URLs and headers

CREATE FUNCTION hub._url_encode(s text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(string_agg(CASE WHEN c ~ '^[A-Za-z0-9._~-]$' THEN c
									ELSE upper(regexp_replace(encode(convert_to(c, 'UTF8'), 'hex'), '(..)', '%\1', 'g'))
							   END, '' ORDER BY o), '')
	FROM regexp_split_to_table(s, '') WITH ORDINALITY AS t(c, o)
$$;
COMMENT ON FUNCTION hub._url_encode(text) IS 'API: Private. Percent-encode a query parameter name or value (RFC 3986 unreserved characters kept).';

CREATE FUNCTION hub._url_with(url text, params jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT url || CASE WHEN q = '' THEN ''
					   WHEN strpos(url, '?') = 0 THEN '?'
					   WHEN right(url, 1) IN ('?', '&') THEN ''
					   ELSE '&' END || q
	FROM (SELECT coalesce(string_agg(hub._url_encode(p.key) || '=' || hub._url_encode(p.value #>> '{}'), '&'), '') AS q
		  FROM jsonb_each(coalesce(params, '{}')) p
		  WHERE jsonb_typeof(p.value) <> 'null') x
$$;
COMMENT ON FUNCTION hub._url_with(text, jsonb) IS 'API: Private. The URL with the query parameters of a JSON object appended (null values left out).';

/*
 * _url_origin --- scheme://host:port of an absolute http(s) URL, lower
 * case, with the default port; NULL when it is not one.  A next link may
 * only lead to the endpoint's own origin: the request carries its
 * credentials.
 */
CREATE FUNCTION hub._url_origin(url text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT lower(m[1]) || '://' || lower(m[2]) || ':'
		   || coalesce(ltrim(m[3], '0'), CASE lower(m[1]) WHEN 'https' THEN '443' ELSE '80' END)
	FROM regexp_match(url, '^(https?)://(?:[^/?#@]*@)?(\[[^]/?#]*\]|[^/?#:@]+)(?::([0-9]+))?(?:[/?#]|$)', 'i') m
	WHERE url !~ '[[:space:][:cntrl:]\\]'
$$;
COMMENT ON FUNCTION hub._url_origin(text) IS 'API: Private. scheme://host:port of an absolute http(s) URL (default port filled in), NULL for anything else.';

/*
 * _url_resolve --- RFC 3986 section 5.2: a URI reference (a next link)
 * resolved against the URL of the request it came with; the fragment is
 * dropped, dot segments removed.
 */
CREATE FUNCTION hub._url_resolve(base text, ref text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m text[];
	scheme text;
	authority text;
	bpath text;
	bquery text;
	q text := '';
	segs text[];
	outp text[] := '{}';
	n integer;
BEGIN
	ref := split_part(btrim(ref), '#', 1);
	IF ref ~* '^[a-z][a-z0-9+.-]*:' THEN
		RETURN ref;
	END IF;
	m := regexp_match(base, '^([a-zA-Z][a-zA-Z0-9+.-]*):(//[^/?#]*)?([^?#]*)(\?[^#]*)?');
	IF m IS NULL THEN
		RETURN NULL;
	END IF;
	scheme := m[1];
	authority := coalesce(m[2], '');
	bpath := m[3];
	bquery := coalesce(m[4], '');
	IF ref = '' THEN
		RETURN scheme || ':' || authority || bpath || bquery;
	ELSIF left(ref, 2) = '//' THEN
		RETURN scheme || ':' || ref;
	ELSIF left(ref, 1) = '?' THEN
		RETURN scheme || ':' || authority || bpath || ref;
	END IF;
	IF strpos(ref, '?') > 0 THEN
		q := substr(ref, strpos(ref, '?'));
		ref := left(ref, strpos(ref, '?') - 1);
	END IF;
	IF left(ref, 1) <> '/' THEN
		ref := regexp_replace(CASE WHEN bpath = '' THEN '/' ELSE bpath END, '[^/]*$', '') || ref;
	END IF;
	segs := string_to_array(ref, '/');
	n := cardinality(segs);
	FOR i IN 2 .. n LOOP
		IF segs[i] = '.' OR segs[i] = '..' THEN
			IF segs[i] = '..' THEN
				outp := outp[1:cardinality(outp) - 1];
			END IF;
			IF i = n THEN
				outp := outp || ''::text;
			END IF;
		ELSE
			outp := outp || segs[i];
		END IF;
	END LOOP;
	RETURN scheme || ':' || authority || '/' || array_to_string(outp, '/') || q;
END
$$;
COMMENT ON FUNCTION hub._url_resolve(text, text) IS 'API: Private. Resolve a URI reference against a base URL (RFC 3986 5.2), without its fragment.';

-- the values of the response headers named so ("Name: value" lines), in
-- order (plpgsql, not sql: called a few times in every page's transaction,
-- where a sql function with a SET clause is parsed and planned anew on each
-- first call, and plpgsql keeps its plan for the session)
CREATE FUNCTION hub._poll_header(headers text[], name text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN (SELECT coalesce(array_agg(btrim(substr(h, strpos(h, ':') + 1)) ORDER BY o), '{}')
			FROM unnest(headers) WITH ORDINALITY AS t(h, o)
			WHERE strpos(h, ':') > 1 AND lower(btrim(left(h, strpos(h, ':') - 1))) = lower(name));
END
$$;
COMMENT ON FUNCTION hub._poll_header(text[], text) IS 'API: Private. The values of the headers of that name (case-insensitive) among "Name: value" lines.';

/*
 * _poll_link_next --- the target of the rel="next" link of the Link
 * headers (RFC 8288): several headers, several links in one header,
 * several relation types in one rel ("next last"), quoted parameters with
 * commas, and commas inside the <URI>.  NULL when there is none.
 */
CREATE FUNCTION hub._poll_link_next(headers text[]) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v text;
	link text[];
	rel text;
BEGIN
	FOREACH v IN ARRAY hub._poll_header(headers, 'link') LOOP
		FOR link IN SELECT regexp_matches(v, '<([^>]*)>((?:\s*;\s*[^;,=[:space:]]+(?:\s*=\s*(?:"(?:[^"\\]|\\.)*"|[^;,[:space:]]*))?)*)', 'g')
		LOOP
			FOR rel IN SELECT coalesce(r[1], r[2])
					   FROM regexp_matches(link[2], ';\s*rel\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;,[:space:]]+))', 'gi') r
			LOOP
				IF 'next' = ANY (regexp_split_to_array(lower(btrim(rel)), '\s+')) THEN
					RETURN btrim(link[1]);
				END IF;
			END LOOP;
		END LOOP;
	END LOOP;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION hub._poll_link_next(text[]) IS 'API: Private. The URI reference of the rel="next" link among the Link headers (RFC 8288), NULL when there is none.';

/*
 * _poll_redact --- text for the audit (a URL, an error, a page excerpt)
 * with what looks like a credential replaced by [redacted]: values of
 * query parameters and JSON keys naming a key, token, secret, password,
 * signature, session or auth, and Bearer / Basic credentials.
 */
CREATE FUNCTION hub._poll_redact(s text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT regexp_replace(regexp_replace(regexp_replace(s,
		'([?&;](?:[^=&#[:space:]]*(?:key|token|secret|passw|pwd|signature|sig|auth|credential|session)[^=&#[:space:]]*)=)[^&#[:space:]"''<>]*',
		'\1[redacted]', 'gi'),
		'("[^"]*(?:key|token|secret|passw|pwd|signature|auth|credential|session)[^"]*"\s*:\s*)"(?:[^"\\]|\\.)*"',
		'\1"[redacted]"', 'gi'),
		'((?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]+', '\1[redacted]', 'gi')
$$;
COMMENT ON FUNCTION hub._poll_redact(text) IS 'API: Private. Redact credential-like query parameters, JSON string values and Bearer/Basic credentials in audit text.';

-- ---------------------------------------------------------------- times

/*
 * _poll_time --- a record's version as a time, for the watermark: a JSON
 * number or numeric string is epoch seconds (milliseconds for
 * epoch_millis); an OData /Date(ms)/; an ISO 8601 time with an offset;
 * one without an offset is a naive time of zone.  NULL for anything else;
 * a string that looks like a time but is none (month 13) raises, which
 * the caller catches (_poll_time_safe).
 */
CREATE FUNCTION hub._poll_time(v jsonb, format text, zone text) RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s text;
	m text[];
BEGIN
	IF v IS NULL OR jsonb_typeof(v) NOT IN ('string', 'number') THEN
		RETURN NULL;
	END IF;
	s := btrim(v #>> '{}');
	IF s ~ '^-?[0-9]{1,15}(\.[0-9]+)?$' THEN
		RETURN to_timestamp(s::numeric / CASE WHEN format = 'epoch_millis' THEN 1000 ELSE 1 END);
	END IF;
	m := regexp_match(s, '^/Date\((-?[0-9]{1,15})(?:[+-][0-9]{4})?\)/$');
	IF m IS NOT NULL THEN
		RETURN to_timestamp(m[1]::numeric / 1000);
	END IF;
	IF s ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?\s*(Z|z|[+-][0-9]{2}(:?[0-9]{2})?)$' THEN
		RETURN s::timestamptz;
	END IF;
	IF s ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?)?$' THEN
		RETURN s::timestamp AT TIME ZONE zone;
	END IF;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION hub._poll_time(jsonb, text, text) IS 'API: Private. A record version as a time (epoch seconds or milliseconds, OData /Date()/, ISO 8601, naive local time of a zone), NULL when it is none.';

CREATE FUNCTION hub._poll_time_safe(v jsonb, format text, zone text) RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN hub._poll_time(v, format, zone);
EXCEPTION WHEN OTHERS THEN
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION hub._poll_time_safe(jsonb, text, text) IS 'API: Private. hub._poll_time, NULL instead of an error (a page with a malformed time).';

-- the since parameter's value: t as the API wants it, rounded down
CREATE FUNCTION hub._poll_since_text(t timestamptz, format text, zone text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE format
		WHEN 'iso8601' THEN to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
		WHEN 'epoch_seconds' THEN floor(extract(epoch FROM t))::bigint::text
		WHEN 'epoch_millis' THEN floor(extract(epoch FROM t) * 1000)::bigint::text
		WHEN 'local' THEN to_char(t AT TIME ZONE zone, 'YYYY-MM-DD HH24:MI:SS')
	END
$$;
COMMENT ON FUNCTION hub._poll_since_text(timestamptz, text, text) IS 'API: Private. A watermark formatted for the since parameter (ISO 8601 UTC, epoch seconds or milliseconds, naive local time of a zone), rounded down to the second (millisecond).';

-- ---------------------------------------------------------------- settings

CREATE FUNCTION hub._poll_lease() RETURNS interval
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	-- (the setting shows with its unit, e.g. 1min; an interval reads that)
	SELECT coalesce(nullif(current_setting('logistics_hub.lease', true), '')::interval, interval '60 seconds')
$$;
COMMENT ON FUNCTION hub._poll_lease() IS 'API: Private. How long a poller''s lease lasts without a page: logistics_hub.lease seconds (60 without the library).';

CREATE FUNCTION hub._poll_retry_after_max() RETURNS interval
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN coalesce(nullif(current_setting('logistics_hub.retry_after_max', true), '')::interval, interval '1 hour');
EXCEPTION WHEN OTHERS THEN
	RETURN interval '1 hour';
END
$$;
COMMENT ON FUNCTION hub._poll_retry_after_max() IS 'API: Private. The cap on Retry-After and X-RateLimit-Reset: logistics_hub.retry_after_max (1 hour without it).';

/*
 * _poll_wait --- how long the response asks us to wait (Retry-After in
 * seconds or as an HTTP date; X-RateLimit-Reset as epoch seconds or
 * seconds from now when X-RateLimit-Remaining is 0), capped; NULL when it
 * asks nothing.
 */
CREATE FUNCTION hub._poll_wait(headers text[]) RETURNS interval
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v text := (hub._poll_header(headers, 'retry-after'))[1];
	w interval;
BEGIN
	IF v ~ '^\s*[0-9]{1,9}\s*$' THEN
		w := make_interval(secs => v::integer);
	ELSIF v IS NOT NULL THEN
		BEGIN
			w := greatest(v::timestamptz - now(), interval '0');
		EXCEPTION WHEN OTHERS THEN
			w := NULL;
		END;
	END IF;
	IF w IS NULL AND '0' = ANY (hub._poll_header(headers, 'x-ratelimit-remaining')) THEN
		v := (hub._poll_header(headers, 'x-ratelimit-reset'))[1];
		IF v ~ '^\s*[0-9]{1,12}\s*$' THEN
			w := CASE WHEN v::bigint > 1000000000 THEN greatest(to_timestamp(v::bigint) - now(), interval '0')
					  ELSE make_interval(secs => v::bigint) END;
		ELSE
			w := interval '1 second';
		END IF;
	END IF;
	RETURN CASE WHEN w IS NOT NULL THEN least(w, hub._poll_retry_after_max()) END;
END
$$;
COMMENT ON FUNCTION hub._poll_wait(text[]) IS 'API: Private. The wait a response asks for (Retry-After seconds or HTTP date, or X-RateLimit-Reset when X-RateLimit-Remaining is 0), capped by logistics_hub.retry_after_max; NULL when none.';

-- ---------------------------------------------------------------- a run's first request

/*
 * _poll_first_url --- the URL of a new run's first page: the endpoint's
 * URL and the path, the fixed query, the since parameter (watermark minus
 * lookback) in incremental mode, then the paging parameters.  Also returns
 * the run's base URL (without the paging parameters), from which cursor,
 * offset and page requests are built.
 */
CREATE FUNCTION hub._poll_first_url(p hub.pollers, endpoint_url text, OUT base text, OUT first text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	base := CASE WHEN p.path = '' THEN endpoint_url
				 WHEN left(p.path, 1) IN ('/', '?') THEN rtrim(endpoint_url, '/') || p.path
				 ELSE rtrim(endpoint_url, '/') || '/' || p.path END;
	base := hub._url_with(base, p.query);
	IF p.since_param IS NOT NULL AND p.watermark IS NOT NULL THEN
		base := hub._url_with(base, jsonb_build_object(p.since_param,
			hub._poll_since_text(p.watermark - p.lookback, p.since_format, p.since_zone)));
	END IF;
	first := CASE p.pagination
		WHEN 'offset' THEN hub._url_with(base, jsonb_build_object(p.offset_param, 0, p.limit_param, p.page_size))
		WHEN 'page' THEN hub._url_with(hub._url_with(base, jsonb_build_object(p.page_param, p.first_page)),
									   CASE WHEN p.limit_param IS NOT NULL THEN jsonb_build_object(p.limit_param, p.page_size) END)
		ELSE hub._url_with(base, CASE WHEN p.limit_param IS NOT NULL THEN jsonb_build_object(p.limit_param, p.page_size) END)
	END;
END
$$;
COMMENT ON FUNCTION hub._poll_first_url(hub.pollers, text) IS 'API: Private. The base URL of a new run (endpoint URL, path, query, since) and the URL of its first page.';

-- ---------------------------------------------------------------- the worker's interface

CREATE FUNCTION hub._poll_check_shard(shard integer, nshards integer) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF nshards IS NULL OR nshards < 1 OR shard IS NULL OR shard < 0 OR shard >= nshards THEN
		RAISE EXCEPTION 'invalid shard: % of %', coalesce(shard::text, 'NULL'), coalesce(nshards::text, 'NULL')
			USING ERRCODE = 'invalid_parameter_value', HINT = 'shard must be between 0 and nshards - 1, nshards at least 1.';
	END IF;
END
$$;
COMMENT ON FUNCTION hub._poll_check_shard(integer, integer) IS 'API: Private. Raise 22023 unless 0 <= shard < nshards.';

/*
 * _poll_claim --- claim up to max due pollers of the endpoints this shard
 * serves (a spread endpoint: any shard; else endpoint_id % nshards =
 * shard): not paused, endpoint enabled, not paused and not throttled
 * (throttled_until passed), next_run_at passed, no live lease.  Each gets a new lease (logistics_hub.lease seconds) and
 * its request: the first page of a new run (with If-None-Match /
 * If-Modified-Since from the last complete run when the URL is the same),
 * or the committed position of a run in progress (resumed after a crash,
 * max_pages, throttling or a failed page).
 */
CREATE FUNCTION hub._poll_claim(worker text, shard integer, nshards integer, max integer)
RETURNS TABLE (poller_id integer, endpoint_id integer, lease bigint, url text, headers text[])
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	p hub.pollers;
	e_url text;
	b text;
	f text;
	tok bigint;
	lease_for interval := hub._poll_lease();
BEGIN
	PERFORM hub._poll_check_shard(shard, nshards);
	IF max IS NULL OR max < 1 OR max > 10000 THEN
		RAISE EXCEPTION 'invalid max: %', coalesce(max::text, 'NULL')
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Claim between 1 and 10000 pollers.';
	END IF;
	FOR r IN
		SELECT x AS p, e.url AS e_url
		FROM hub.pollers x
		JOIN hub.endpoints e ON e.endpoint_id = x.endpoint_id
		WHERE NOT x.paused AND x.next_run_at <= now() AND e.enabled AND NOT e.paused
			AND (e.throttled_until IS NULL OR e.throttled_until <= now())
			AND (x.lease IS NULL OR x.lease_until < now())
			AND (e.spread OR e.endpoint_id % nshards = shard)
			AND e.url !~* '^nats://'	-- (a nats source: subscribed, hub._nats_pollers)
		ORDER BY x.next_run_at, x.poller_id
		LIMIT max
		FOR UPDATE OF x SKIP LOCKED
	LOOP
		p := r.p;
		e_url := r.e_url;
		tok := nextval('hub._lease_token_seq');
		IF p.next_url IS NULL THEN
			SELECT u.base, u.first INTO b, f FROM hub._poll_first_url(p, e_url) u;
			UPDATE hub.pollers x
			SET next_url = f, run_base_url = b, run_started_at = now(), last_run_at = now(), run_pages = 0,
				run_offset = CASE x.pagination WHEN 'offset' THEN 0 WHEN 'page' THEN x.first_page END,
				run_seen = ARRAY[hashtextextended(f, 0)], run_new = 0, run_duplicates = 0,
				run_max_version = NULL, run_etag = NULL, run_last_modified = NULL,
				-- (a new trace for each run: README "Trace context")
				run_traceparent = hub._traceparent_child(NULL)
			WHERE x.poller_id = p.poller_id
			RETURNING * INTO p;
		END IF;
		UPDATE hub.pollers x
		SET lease = tok, lease_worker = _poll_claim.worker, lease_until = now() + lease_for, segment_pages = 0
		WHERE x.poller_id = p.poller_id;
		poller_id := p.poller_id;
		endpoint_id := p.endpoint_id;
		lease := tok;
		url := p.next_url;
		headers := ARRAY['Accept: application/json'];
		IF p.run_traceparent IS NOT NULL THEN
			headers := headers || ('traceparent: ' || p.run_traceparent);
		END IF;
		IF p.run_pages = 0 AND p.etag_url = p.next_url THEN
			IF p.etag IS NOT NULL THEN
				headers := headers || ('If-None-Match: ' || p.etag);
			END IF;
			IF p.last_modified IS NOT NULL THEN
				headers := headers || ('If-Modified-Since: ' || p.last_modified);
			END IF;
		END IF;
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION hub._poll_claim(text, integer, integer, integer) IS
'API: Private. Lease up to max due pollers of the endpoints this shard serves (one run of a poller at a time) and return the request to send for each: a new run''s first page (conditional when possible; a new trace for the run, sent as the traceparent header of each of its pages) or the committed position of a run in progress.';

/*
 * _poll_finish --- end the run of poller p (locked, leased): success
 * promotes the run's largest version time to the watermark and its first
 * page's ETag / Last-Modified; otherwise (a cycle, a refused or bad next
 * link) the run ends with its error recorded and the old watermark kept,
 * so the next run reads again from there (duplicates are free).  The
 * lease is released; the next run is due every after this one started.
 */
CREATE FUNCTION hub._poll_finish(p hub.pollers, success boolean, error text) RETURNS timestamptz
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	due timestamptz := greatest(coalesce(p.run_started_at, now()) + p.every, now());
BEGIN
	UPDATE hub.pollers x
	SET next_url = NULL, run_base_url = NULL, run_offset = NULL, run_seen = '{}',
		watermark = CASE WHEN success THEN greatest(x.watermark, x.run_max_version) ELSE x.watermark END,
		etag = CASE WHEN success AND x.run_pages > 0 THEN x.run_etag ELSE x.etag END,
		last_modified = CASE WHEN success AND x.run_pages > 0 THEN x.run_last_modified ELSE x.last_modified END,
		etag_url = CASE WHEN success AND x.run_pages > 0 THEN
							CASE WHEN x.run_etag IS NOT NULL OR x.run_last_modified IS NOT NULL THEN x.etag_url END
						ELSE x.etag_url END,
		run_max_version = NULL, run_etag = NULL, run_last_modified = NULL,
		last_success_at = CASE WHEN success THEN now() ELSE x.last_success_at END,
		last_error = _poll_finish.error,
		last_run_new = x.run_new, last_run_duplicates = x.run_duplicates,
		failures = 0, lease = NULL, lease_worker = NULL, lease_until = NULL,
		next_run_at = due
	WHERE x.poller_id = p.poller_id;
	RETURN due;
END
$$;
COMMENT ON FUNCTION hub._poll_finish(hub.pollers, boolean, text) IS 'API: Private. End a poller''s run: on success promote the watermark and the first page''s validators; release the lease; schedule the next run.';

/*
 * _poll_store --- the records of one page into hub.inbox, set-based: one
 * message per (id, version), message_id = the id (with \ and @ escaped by
 * a \), an @, and the version, or its sha256 when longer than 256 bytes.
 * One INSERT ... SELECT FROM jsonb_array_elements ... ON CONFLICT DO
 * NOTHING stores the new ones (a key already there, or met before in the
 * page, is skipped); only when some were skipped does a second statement
 * count the duplicates on their messages: a message there before gets one
 * per copy in the page, one inserted now one per copy after the first
 * (told apart by poll_request_id, which is this request's only for those).
 * Returns records, new and duplicates.
 */
CREATE FUNCTION hub._poll_store(p hub.pollers, items jsonb, request_id bigint,
								OUT records integer, OUT new_records integer, OUT duplicates integer,
								OUT rejected integer, OUT rejected_ids text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	src text := 'poll:' || p.name;
	id_key text := CASE WHEN left(p.id_field, 1) <> '$' THEN p.id_field END;
	ver_key text := CASE WHEN left(p.version_field, 1) <> '$' THEN p.version_field END;
	max_size bigint := pg_size_bytes(nullif(current_setting('logistics_hub.max_payload_size', true), ''));
	-- (no record of a page smaller than the limit can be larger than it)
	check_size boolean := max_size IS NOT NULL AND hub._payload_size(items) > max_size;
BEGIN
	records := jsonb_array_length(items);
	rejected := 0;
	IF check_size THEN
		-- records larger than logistics_hub.max_payload_size are refused as
		-- hub.receive refuses them: not stored, counted, their ids named
		SELECT count(*), string_agg(left(coalesce(CASE WHEN id_key IS NOT NULL THEN e.value -> id_key
														  ELSE jsonb_path_query_first(e.value, p.id_path, '{}', true) END #>> '{}',
													 '(no id)'), 64), ', ')
		INTO rejected, rejected_ids
		FROM jsonb_array_elements(items) e
		WHERE hub._payload_size(e.value) > max_size;
	END IF;
	INSERT INTO hub.inbox AS i (source, message_id, message_type, payload, aggregate_id, poll_request_id, traceparent)
	SELECT src, CASE WHEN octet_length(y.key) <= 256 THEN y.key
					 ELSE 'sha256:' || encode(sha256(convert_to(y.key, 'UTF8')), 'hex') END,
		   p.message_type, y.rec, CASE WHEN octet_length(y.rid) <= 256 THEN y.rid END, request_id,
		   p.run_traceparent
	FROM (SELECT x.rec, x.rid,
				 replace(replace(coalesce(x.rid, ''), '\', '\\'), '@', '\@') || '@'
				 || CASE WHEN x.rid IS NULL OR x.ver IS NULL THEN 'md5:' || md5(x.rec::text) ELSE x.ver END AS key
		  FROM (SELECT e.value AS rec,
					   CASE WHEN id_key IS NOT NULL THEN e.value ->> id_key
							ELSE jsonb_path_query_first(e.value, p.id_path, '{}', true) #>> '{}' END AS rid,
					   CASE WHEN ver_key IS NOT NULL THEN e.value ->> ver_key
							WHEN p.version_path IS NOT NULL THEN jsonb_path_query_first(e.value, p.version_path, '{}', true) #>> '{}'
					   END AS ver
				FROM jsonb_array_elements(items) e
				WHERE NOT check_size OR hub._payload_size(e.value) <= max_size) x) y
	ON CONFLICT ON CONSTRAINT inbox_source_message_id_key DO NOTHING;
	GET DIAGNOSTICS new_records = ROW_COUNT;
	duplicates := records - new_records - rejected;
	IF duplicates > 0 THEN
		WITH k AS (
			SELECT CASE WHEN octet_length(y.key) <= 256 THEN y.key
						ELSE 'sha256:' || encode(sha256(convert_to(y.key, 'UTF8')), 'hex') END AS mid, count(*) AS n
			FROM (SELECT replace(replace(coalesce(x.rid, ''), '\', '\\'), '@', '\@') || '@'
						 || CASE WHEN x.rid IS NULL OR x.ver IS NULL THEN 'md5:' || md5(x.rec::text) ELSE x.ver END AS key
				  FROM (SELECT e.value AS rec,
							   CASE WHEN id_key IS NOT NULL THEN e.value ->> id_key
									ELSE jsonb_path_query_first(e.value, p.id_path, '{}', true) #>> '{}' END AS rid,
							   CASE WHEN ver_key IS NOT NULL THEN e.value ->> ver_key
									WHEN p.version_path IS NOT NULL THEN jsonb_path_query_first(e.value, p.version_path, '{}', true) #>> '{}'
							   END AS ver
						FROM jsonb_array_elements(items) e
						WHERE NOT check_size OR hub._payload_size(e.value) <= max_size) x) y
			GROUP BY 1
		)
		-- (by index: = ANY of an array; a join alone would read every
		-- message of the source)
		UPDATE hub.inbox i
		SET duplicate_count = i.duplicate_count + CASE WHEN i.poll_request_id = request_id THEN k.n - 1 ELSE k.n END,
			last_duplicate_at = now()
		FROM k
		WHERE i.source = src AND i.message_id = k.mid
			AND i.message_id = ANY (ARRAY(SELECT k.mid FROM k))
			AND (i.poll_request_id IS DISTINCT FROM request_id OR k.n > 1);
	END IF;
END
$$;
COMMENT ON FUNCTION hub._poll_store(hub.pollers, jsonb, bigint) IS 'API: Private. Store a page''s records in hub.inbox, one message per (id, version), with the run''s traceparent, counting duplicates and refusing records larger than logistics_hub.max_payload_size; returns records, new, duplicates, rejected and the rejected ids.';

-- the largest version time among a page's records (NULL: none)
CREATE FUNCTION hub._poll_page_max(p hub.pollers, items jsonb) RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ver_key text := CASE WHEN left(p.version_field, 1) <> '$' THEN p.version_field END;
	t timestamptz;
BEGIN
	BEGIN
		SELECT max(hub._poll_time(CASE WHEN ver_key IS NOT NULL THEN e.value -> ver_key
									   ELSE jsonb_path_query_first(e.value, p.version_path, '{}', true) END,
								  p.since_format, p.since_zone))
		INTO t FROM jsonb_array_elements(items) e;
	EXCEPTION WHEN OTHERS THEN
		-- a malformed time somewhere: skip it, record by record
		SELECT max(hub._poll_time_safe(CASE WHEN ver_key IS NOT NULL THEN e.value -> ver_key
											ELSE jsonb_path_query_first(e.value, p.version_path, '{}', true) END,
									   p.since_format, p.since_zone))
		INTO t FROM jsonb_array_elements(items) e;
	END;
	RETURN t;
END
$$;
COMMENT ON FUNCTION hub._poll_page_max(hub.pollers, jsonb) IS 'API: Private. The largest version time of a page''s records, skipping versions that are no time.';

/*
 * _poll_page --- record one fetched page of a leased poller, in one
 * transaction with all it causes, and say what to do next (see the file
 * header and the interface in README, "Pollers").  Zero rows when the
 * lease is not the poller's any more (then only a 'stale' audit row).
 */
CREATE FUNCTION hub._poll_page(poller_id integer, lease bigint, page_url text, status integer,
		response_headers text[], body bytea, error text, latency_ms integer, bytes bigint)
RETURNS TABLE (url text, headers text[], next_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p hub.pollers;
	e_url text;
	req bigint;
	fail text;
	outcome text;
	doc jsonb;
	items jsonb;
	ctype text;
	st hub.pollers;
	n_rec integer := 0;
	n_new integer := 0;
	n_dup integer := 0;
	page_max timestamptz;
	nxt text;
	v jsonb;
	has_more boolean;
	wait interval;
	backoff float8;
	run_end text;			-- NULL: go on; else why the run ends
	due timestamptz;
	page_no integer;
	excerpt text;
	n_rej integer := 0;
	rej_ids text;
BEGIN
	SELECT x.* INTO p FROM hub.pollers x
	WHERE x.poller_id = _poll_page.poller_id AND x.lease = _poll_page.lease
	FOR UPDATE;
	IF NOT FOUND THEN
		INSERT INTO hub.poll_requests (poller_id, lease, url, http_status, outcome, bytes, latency_ms, error)
		VALUES (_poll_page.poller_id, _poll_page.lease, hub._poll_redact(page_url), status, 'stale', bytes, latency_ms,
				'the lease was taken over: ' || coalesce(hub._poll_redact(error), 'response dropped'));
		RETURN;
	END IF;
	SELECT e.url INTO e_url FROM hub.endpoints e WHERE e.endpoint_id = p.endpoint_id;
	page_no := p.run_pages + 1;
	req := nextval(pg_get_serial_sequence('hub.poll_requests', 'request_id'));

	-- ---- is it the page that was asked for?
	IF error IS NOT NULL OR coalesce(status, 0) = 0 THEN
		fail := coalesce(hub._poll_redact(error), 'no response');
	ELSIF status = 304 THEN
		IF p.run_pages = 0 AND p.etag_url = p.next_url THEN
			outcome := 'not_modified';
		ELSE
			fail := 'HTTP 304 to a request that was not conditional';
		END IF;
	ELSIF status NOT BETWEEN 200 AND 299 THEN
		fail := 'HTTP ' || status;
	ELSIF status = 204 THEN
		-- No Content: the API says there is nothing (a last, empty page)
		doc := '{}';
		items := '[]';
	ELSE
		ctype := (hub._poll_header(response_headers, 'content-type'))[1];
		IF ctype ~* '(html|xml)' THEN
			fail := pg_catalog.format('HTTP %s that is not JSON (Content-Type %s)', status, ctype);
		ELSE
			BEGIN
				doc := convert_from(coalesce(body, ''::bytea), 'UTF8')::jsonb;
			EXCEPTION WHEN OTHERS THEN
				fail := pg_catalog.format('HTTP %s that is not JSON: %s', status, SQLERRM);
			END;
			IF fail IS NULL THEN
				items := CASE WHEN p.items_path::text = '$' THEN doc
							  ELSE jsonb_path_query_first(doc, p.items_path, '{}', true) END;
				IF items IS NULL THEN
					fail := pg_catalog.format('no items at %s', p.items_path);
				ELSIF jsonb_typeof(items) <> 'array' THEN
					fail := pg_catalog.format('the items at %s are a JSON %s, not an array', p.items_path, jsonb_typeof(items));
				END IF;
			END IF;
		END IF;
	END IF;

	-- ---- a failed page: record, keep the position, back off
	IF fail IS NOT NULL THEN
		backoff := least(extract(epoch FROM p.retry_max)::float8,
						 extract(epoch FROM p.retry_base)::float8 * power(2, least(p.failures, 30)))
				   * (0.5 + random() / 2);
		wait := hub._poll_wait(response_headers);
		-- the excerpt: the body's start as UTF-8 (a character cut at the
		-- end dropped), else as escaped bytes; the endpoint's secrets and
		-- whatever looks like a credential redacted
		IF body IS NOT NULL THEN
			BEGIN
				excerpt := convert_from(substring(body FROM 1 FOR 4096), 'UTF8');
			EXCEPTION WHEN OTHERS THEN
				BEGIN
					excerpt := convert_from(substring(body FROM 1 FOR greatest(least(length(body), 4096) - 3, 0)), 'UTF8');
				EXCEPTION WHEN OTHERS THEN
					excerpt := encode(substring(body FROM 1 FOR 1024), 'escape');
				END;
			END;
			excerpt := left(hub._poll_redact(hub._poll_redact_secrets(p.endpoint_id, excerpt)), 1024);
		END IF;
		due := now() + greatest(make_interval(secs => backoff), coalesce(wait, interval '0'));
		INSERT INTO hub.poll_requests
			(request_id, poller_id, worker, lease, page, url, http_status, outcome, bytes, latency_ms, error, excerpt)
		OVERRIDING SYSTEM VALUE VALUES (req, p.poller_id, p.lease_worker, p.lease, page_no, hub._poll_redact(page_url), status, 'failed',
				bytes, latency_ms, fail, excerpt);
		UPDATE hub.pollers x
		SET failures = x.failures + 1, last_status = status, last_error = fail,
			lease = NULL, lease_worker = NULL, lease_until = NULL, next_run_at = due
		WHERE x.poller_id = p.poller_id;
		url := NULL;
		headers := NULL;
		next_at := due;
		RETURN NEXT;
		RETURN;
	END IF;

	-- ---- 304 on the run's first page: nothing changed, nothing moves
	IF outcome = 'not_modified' THEN
		INSERT INTO hub.poll_requests
			(request_id, poller_id, worker, lease, page, url, http_status, outcome, bytes, latency_ms)
		OVERRIDING SYSTEM VALUE VALUES (req, p.poller_id, p.lease_worker, p.lease, page_no, hub._poll_redact(page_url), status, 'not_modified',
				bytes, latency_ms);
		UPDATE hub.pollers x SET last_status = status, run_max_version = NULL WHERE x.poller_id = p.poller_id;
		SELECT x.* INTO p FROM hub.pollers x WHERE x.poller_id = p.poller_id;
		url := NULL;
		headers := NULL;
		next_at := hub._poll_finish(p, true, NULL);
		RETURN NEXT;
		RETURN;
	END IF;

	-- ---- the records
	SELECT s.records, s.new_records, s.duplicates, s.rejected, s.rejected_ids
	INTO n_rec, n_new, n_dup, n_rej, rej_ids
	FROM hub._poll_store(p, items, req) s;
	IF p.since_param IS NOT NULL AND n_rec > 0 THEN
		page_max := hub._poll_page_max(p, items);
	END IF;

	-- ---- where the run goes next
	IF p.pagination IN ('cursor', 'offset', 'page') AND p.has_more_path IS NOT NULL THEN
		v := jsonb_path_query_first(doc, p.has_more_path, '{}', true);
		has_more := v = 'true'::jsonb OR v = '"true"'::jsonb;
	END IF;
	CASE p.pagination
	WHEN 'none' THEN
		run_end := 'end';
	WHEN 'link_header' THEN
		nxt := hub._poll_link_next(response_headers);
		IF nxt IS NULL THEN
			run_end := 'end';
		ELSE
			nxt := hub._url_resolve(page_url, nxt);
		END IF;
	WHEN 'next_link' THEN
		v := jsonb_path_query_first(doc, p.next_path, '{}', true);
		IF v IS NULL OR v = 'null'::jsonb OR v = '""'::jsonb THEN
			run_end := 'end';
		ELSIF jsonb_typeof(v) <> 'string' THEN
			run_end := 'bad_next';
			fail := pg_catalog.format('the next link at %s is a JSON %s, not a string', p.next_path, jsonb_typeof(v));
		ELSE
			nxt := hub._url_resolve(page_url, v #>> '{}');
		END IF;
	WHEN 'cursor' THEN
		v := jsonb_path_query_first(doc, p.next_path, '{}', true);
		IF v IS NULL OR v = 'null'::jsonb OR v = '""'::jsonb OR has_more IS FALSE THEN
			run_end := 'end';
		ELSIF jsonb_typeof(v) NOT IN ('string', 'number') THEN
			run_end := 'bad_next';
			fail := pg_catalog.format('the cursor at %s is a JSON %s, not a string', p.next_path, jsonb_typeof(v));
		ELSE
			nxt := hub._url_with(hub._url_with(p.run_base_url, jsonb_build_object(p.cursor_param, v #>> '{}')),
								 CASE WHEN p.limit_param IS NOT NULL THEN jsonb_build_object(p.limit_param, p.page_size) END);
		END IF;
	ELSE	-- offset, page
		IF coalesce(has_more, n_rec >= p.page_size) THEN
			IF p.pagination = 'offset' THEN
				-- by the records received (a server capping the page size
				-- then costs a re-read, never a gap); by a page when an
				-- empty page announces more
				p.run_offset := p.run_offset + CASE WHEN n_rec > 0 THEN n_rec ELSE p.page_size END;
				nxt := hub._url_with(p.run_base_url, jsonb_build_object(p.offset_param, p.run_offset, p.limit_param, p.page_size));
			ELSE
				p.run_offset := p.run_offset + 1;
				nxt := hub._url_with(hub._url_with(p.run_base_url, jsonb_build_object(p.page_param, p.run_offset)),
									 CASE WHEN p.limit_param IS NOT NULL THEN jsonb_build_object(p.limit_param, p.page_size) END);
			END IF;
		ELSE
			run_end := 'end';
		END IF;
	END CASE;

	IF nxt IS NOT NULL THEN
		IF hub._url_origin(nxt) IS DISTINCT FROM hub._url_origin(e_url) THEN
			run_end := 'refused';
			fail := pg_catalog.format('next link to another origin refused: %s', left(hub._poll_redact(nxt), 300));
		ELSIF hashtextextended(nxt, 0) = ANY (p.run_seen) THEN
			run_end := 'cycle';
			fail := pg_catalog.format('next link or token seen before in this run (a cycle), run ended after %s pages: %s',
									  page_no, left(hub._poll_redact(nxt), 300));
		ELSIF p.segment_pages + 1 >= p.max_pages THEN
			run_end := 'max_pages';
		ELSE
			wait := CASE WHEN '0' = ANY (hub._poll_header(response_headers, 'x-ratelimit-remaining'))
						 THEN hub._poll_wait(response_headers) END;
			IF wait > interval '0' THEN
				run_end := 'throttled';
			END IF;
		END IF;
	END IF;

	INSERT INTO hub.poll_requests
		(request_id, poller_id, worker, lease, page, url, http_status, outcome, records, new_records, duplicates,
		 rejected, bytes, latency_ms, error)
	OVERRIDING SYSTEM VALUE VALUES (req, p.poller_id, p.lease_worker, p.lease, page_no, hub._poll_redact(page_url), status,
			coalesce(run_end, 'more'), n_rec, n_new, n_dup, n_rej, bytes, latency_ms,
			nullif(concat_ws('; ', fail, CASE WHEN n_rej > 0 THEN
				pg_catalog.format('%s records larger than logistics_hub.max_payload_size (%s) not stored: %s',
								  n_rej, current_setting('logistics_hub.max_payload_size', true), left(rej_ids, 500)) END), ''));
	-- one UPDATE of the poller a page: the counts, the first page's
	-- validators, and the position when the run goes on (now or later)
	UPDATE hub.pollers x
	SET run_pages = page_no, segment_pages = x.segment_pages + 1,
		run_new = x.run_new + n_new, run_duplicates = x.run_duplicates + n_dup,
		total_new = x.total_new + n_new, total_duplicates = x.total_duplicates + n_dup,
		run_max_version = greatest(x.run_max_version, page_max),
		run_etag = CASE WHEN page_no = 1 THEN (hub._poll_header(response_headers, 'etag'))[1] ELSE x.run_etag END,
		run_last_modified = CASE WHEN page_no = 1 THEN (hub._poll_header(response_headers, 'last-modified'))[1]
								 ELSE x.run_last_modified END,
		-- (the first page's URL from here on: hub._poll_finish keeps it with
		-- the validators, or forgets it without them)
		etag_url = CASE WHEN page_no = 1 THEN page_url ELSE x.etag_url END,
		failures = 0, last_status = status, lease_until = now() + hub._poll_lease(),
		next_url = CASE WHEN nxt IS NOT NULL AND run_end IS DISTINCT FROM 'cycle' AND run_end IS DISTINCT FROM 'refused'
						THEN nxt ELSE x.next_url END,
		run_offset = p.run_offset,
		run_seen = CASE WHEN nxt IS NOT NULL AND run_end IS DISTINCT FROM 'cycle' AND run_end IS DISTINCT FROM 'refused'
						THEN (x.run_seen || hashtextextended(nxt, 0))[greatest(cardinality(x.run_seen) - 254, 1):]
						ELSE x.run_seen END
	WHERE x.poller_id = p.poller_id
	RETURNING * INTO st;

	IF run_end IN ('end', 'cycle', 'refused', 'bad_next') THEN
		url := NULL;
		headers := NULL;
		next_at := hub._poll_finish(st, run_end = 'end', fail);
	ELSIF run_end IS NULL THEN
		url := nxt;
		headers := ARRAY['Accept: application/json'];
		IF p.run_traceparent IS NOT NULL THEN
			headers := headers || ('traceparent: ' || p.run_traceparent);
		END IF;
		next_at := NULL;
	ELSE
		-- max_pages or throttled: the run resumes at nxt when due
		due := CASE WHEN run_end = 'throttled' THEN now() + wait
					ELSE greatest(coalesce(p.run_started_at, now()) + p.every, now()) END;
		UPDATE hub.pollers x
		SET lease = NULL, lease_worker = NULL, lease_until = NULL, next_run_at = due,
			last_error = CASE WHEN run_end = 'throttled'
							  THEN 'throttled by the API (X-RateLimit-Remaining: 0) until ' || due END
		WHERE x.poller_id = p.poller_id;
		url := NULL;
		headers := NULL;
		next_at := due;
	END IF;
	RETURN NEXT;
END
$$;
COMMENT ON FUNCTION hub._poll_page(integer, bigint, text, integer, text[], bytea, text, integer, bigint) IS
'API: Private. Record one fetched page of a leased poller in one transaction (audit row, records into hub.inbox once per id and version, position, watermark, validators, failure and backoff) and return the run''s next request, or url NULL with next_at when the run is over or paused; zero rows when the lease was taken over.';

/*
 * _poll_next_due --- when the earliest runnable poller of this shard is
 * due: next_run_at, or the end of a live lease (a crashed dispatcher's
 * run is taken over then), and not before its endpoint's throttling ends
 * (hub.endpoints.throttled_until).  Read-only, for the idle dispatcher's
 * sleep.
 */
CREATE FUNCTION hub._poll_next_due(shard integer, nshards integer) RETURNS timestamptz
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM hub._poll_check_shard(shard, nshards);
	RETURN (SELECT min(greatest(CASE WHEN x.lease IS NOT NULL AND x.lease_until >= now()
									 THEN greatest(x.next_run_at, x.lease_until) ELSE x.next_run_at END,
								e.throttled_until))
			FROM hub.pollers x
			JOIN hub.endpoints e ON e.endpoint_id = x.endpoint_id
			WHERE NOT x.paused AND e.enabled AND NOT e.paused
				AND (e.spread OR e.endpoint_id % nshards = shard) AND e.url !~* '^nats://');
END
$$;
COMMENT ON FUNCTION hub._poll_next_due(integer, integer) IS
'API: Private. The earliest time a runnable poller of this shard is due (its next_run_at, or the end of its live lease, not before its endpoint''s throttled_until); NULL when there is none. Read-only.';

CREATE FUNCTION hub._poll_release(worker text) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
BEGIN
	UPDATE hub.pollers x SET lease = NULL, lease_worker = NULL, lease_until = NULL
	WHERE x.lease_worker = _poll_release.worker;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION hub._poll_release(text) IS
'API: Private. Give back every poller lease held by worker (at its start and retirement); their runs resume at the committed position. Returns how many.';

CREATE FUNCTION hub._poll_redact_secrets(endpoint_id integer, t text) RETURNS text
	AS 'MODULE_PATHNAME', 'hub_poll_redact_secrets' LANGUAGE C STABLE;
COMMENT ON FUNCTION hub._poll_redact_secrets(integer, text) IS
'API: Private. The text (a failed page''s excerpt) with every occurrence of the endpoint''s own secrets replaced by [redacted] (extension/poll_redact.c).';

CREATE FUNCTION hub._wake_at_commit() RETURNS void
	AS 'MODULE_PATHNAME', 'hub_wake_at_commit' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION hub._wake_at_commit() IS
'API: Private. Wake the dispatchers when the current transaction commits (nothing on abort).';

-- ---------------------------------------------------------------- the operator's API

/*
 * _poll_path --- an option naming a place in a JSON document: a key name,
 * or a jsonpath when it starts with $; 22023 naming the option when it is
 * no valid jsonpath.
 */
CREATE FUNCTION hub._poll_path(option text, value text) RETURNS jsonpath
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF value IS NULL THEN
		RETURN NULL;
	END IF;
	IF value = '' OR octet_length(value) > 1000 THEN
		RAISE EXCEPTION 'invalid %: "%"', option, left(value, 100)
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Give a key name or a jsonpath starting with $, at most 1000 bytes.';
	END IF;
	IF left(value, 1) <> '$' THEN
		RETURN ('$."' || replace(replace(value, '\', '\\'), '"', '\"') || '"')::jsonpath;
	END IF;
	RETURN value::jsonpath;
EXCEPTION WHEN syntax_error OR invalid_text_representation THEN
	RAISE EXCEPTION 'invalid %: "%"', option, left(value, 100)
		USING ERRCODE = 'invalid_parameter_value', DETAIL = SQLERRM,
			  HINT = 'Give a key name or a jsonpath starting with $ (e.g. $.data.items).';
END
$$;
COMMENT ON FUNCTION hub._poll_path(text, text) IS 'API: Private. An option naming a JSON place (key name or jsonpath) as a jsonpath; 22023 when invalid.';

CREATE FUNCTION hub._poll_check_param(option text, value text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF value IS NOT NULL AND (value = '' OR octet_length(value) > 100 OR value ~ '[[:space:][:cntrl:]&=#?]') THEN
		RAISE EXCEPTION 'invalid %: "%"', option, left(value, 100)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'A query parameter name is 1 to 100 bytes without spaces, control characters, &, =, # or ?.';
	END IF;
END
$$;
COMMENT ON FUNCTION hub._poll_check_param(text, text) IS 'API: Private. 22023 unless a query parameter name is usable.';

-- the poller named so, locked, or 42704
CREATE FUNCTION hub._poller(name text) RETURNS hub.pollers
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p hub.pollers;
BEGIN
	SELECT x.* INTO p FROM hub.pollers x WHERE x.name = _poller.name FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'poller "%" does not exist', name
			USING ERRCODE = 'undefined_object', HINT = 'Create it with hub.create_poller(); see hub.poll_status.';
	END IF;
	RETURN p;
END
$$;
COMMENT ON FUNCTION hub._poller(text) IS 'API: Private. The poller of that name, locked; 42704 when there is none.';

CREATE FUNCTION hub.create_poller(endpoint text, path text, message_type text,
		name text DEFAULT NULL, every interval DEFAULT '1 minute', retry_base interval DEFAULT '5 seconds',
		retry_max interval DEFAULT '1 hour', max_pages integer DEFAULT 1000,
		items_path text DEFAULT '$', id_field text DEFAULT 'id', version_field text DEFAULT NULL,
		pagination text DEFAULT 'none', next_path text DEFAULT NULL, cursor_param text DEFAULT 'cursor',
		offset_param text DEFAULT 'offset', limit_param text DEFAULT NULL, page_size integer DEFAULT NULL,
		has_more_path text DEFAULT NULL, page_param text DEFAULT 'page', first_page integer DEFAULT 1,
		since_param text DEFAULT NULL, lookback interval DEFAULT '0', since_format text DEFAULT 'iso8601',
		since_zone text DEFAULT 'UTC', query jsonb DEFAULT '{}', paused boolean DEFAULT false)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	eid integer := hub._endpoint_id(endpoint);
	pname text := coalesce(create_poller.name, endpoint || ':' || message_type);
	kind text := lower(pagination);
	id integer;
	ip jsonpath := hub._poll_path('items_path', items_path);
	idp jsonpath := hub._poll_path('id_field', id_field);
	vp jsonpath := hub._poll_path('version_field', version_field);
	np jsonpath := hub._poll_path('next_path', next_path);
	hp jsonpath := hub._poll_path('has_more_path', has_more_path);
BEGIN
	PERFORM hub._check_setting('name', pname <> '' AND octet_length(pname) <= 200 AND pname !~ '[[:cntrl:]]',
							   pname, '1 to 200 bytes without control characters');
	PERFORM hub._check_setting('path', path IS NOT NULL AND octet_length(path) <= 2000 AND path !~ '[[:space:][:cntrl:]#]',
							   path, 'a URL path (and query) of at most 2000 bytes without spaces or #');
	PERFORM hub._check_setting('message_type', message_type <> '' AND octet_length(message_type) <= 256,
							   message_type, '1 to 256 bytes');
	-- a nats:// endpoint: path names a JetStream stream and durable consumer
	IF (SELECT e.url ~* '^nats://' FROM hub.endpoints e WHERE e.endpoint_id = eid) THEN
		PERFORM hub._check_setting('path', path ~ '^[A-Za-z0-9_-]{1,100}/[A-Za-z0-9_-]{1,100}$', path,
								   'STREAM/DURABLE for a nats:// endpoint: a JetStream stream and durable consumer name, each 1 to 100 letters, digits, _ or -');
	END IF;
	PERFORM hub._check_setting('every', every BETWEEN interval '1 second' AND interval '7 days', every::text,
							   'between 1 second and 7 days');
	PERFORM hub._check_setting('retry_base', retry_base BETWEEN interval '10 milliseconds' AND interval '1 day',
							   retry_base::text, 'between 10 milliseconds and 1 day');
	PERFORM hub._check_setting('retry_max', retry_max BETWEEN retry_base AND interval '7 days', retry_max::text,
							   'between retry_base and 7 days');
	PERFORM hub._check_setting('max_pages', max_pages BETWEEN 1 AND 1000000, max_pages::text, 'between 1 and 1000000');
	PERFORM hub._check_setting('id_field', id_field IS NOT NULL, id_field, 'a key name or a jsonpath');
	PERFORM hub._check_setting('pagination', kind IN ('none', 'link_header', 'next_link', 'cursor', 'offset', 'page'),
							   pagination, 'none, link_header, next_link, cursor, offset or page');
	PERFORM hub._check_setting('next_path', (next_path IS NOT NULL) = (kind IN ('next_link', 'cursor')), next_path,
							   'given for next_link and cursor pagination (where the next link or token is), and only then');
	PERFORM hub._check_setting('has_more_path', has_more_path IS NULL OR kind IN ('cursor', 'offset', 'page'),
							   has_more_path, 'NULL unless pagination is cursor, offset or page');
	PERFORM hub._poll_check_param('cursor_param', cursor_param);
	PERFORM hub._poll_check_param('offset_param', offset_param);
	PERFORM hub._poll_check_param('limit_param', limit_param);
	PERFORM hub._poll_check_param('page_param', page_param);
	PERFORM hub._poll_check_param('since_param', since_param);
	PERFORM hub._check_setting('cursor_param', kind <> 'cursor' OR cursor_param IS NOT NULL, cursor_param, 'a parameter name');
	PERFORM hub._check_setting('offset_param', kind <> 'offset' OR offset_param IS NOT NULL, offset_param, 'a parameter name');
	PERFORM hub._check_setting('page_param', kind <> 'page' OR page_param IS NOT NULL, page_param, 'a parameter name');
	PERFORM hub._check_setting('page_size',
							   CASE WHEN kind IN ('offset', 'page') THEN coalesce(page_size, 100) BETWEEN 1 AND 100000
									ELSE page_size IS NULL OR (page_size BETWEEN 1 AND 100000 AND limit_param IS NOT NULL) END,
							   page_size::text,
							   'between 1 and 100000 (for link_header, next_link and cursor only with limit_param)');
	PERFORM hub._check_setting('first_page', first_page IN (0, 1), first_page::text, '0 or 1');
	PERFORM hub._check_setting('since_param', since_param IS NULL OR version_field IS NOT NULL, since_param,
							   'NULL unless version_field names the records'' update time');
	PERFORM hub._check_setting('lookback', lookback BETWEEN interval '0' AND interval '30 days', lookback::text,
							   'between 0 and 30 days');
	PERFORM hub._check_setting('since_format', since_format IN ('iso8601', 'epoch_seconds', 'epoch_millis', 'local'),
							   since_format, 'iso8601, epoch_seconds, epoch_millis or local');
	PERFORM hub._check_setting('since_zone', since_zone IS NOT NULL AND since_zone IN (SELECT z.name FROM pg_timezone_names z),
							   since_zone, 'a time zone name of pg_timezone_names, such as UTC or Europe/Berlin');
	PERFORM hub._check_setting('query',
							   jsonb_typeof(query) = 'object'
							   AND NOT EXISTS (SELECT 1 FROM jsonb_each(query) q
											   WHERE jsonb_typeof(q.value) NOT IN ('string', 'number', 'boolean')),
							   left(query::text, 100), 'a JSON object of parameter names and string, number or boolean values');
	-- (path and query are readable by hub_reader: no credential in them)
	IF EXISTS (SELECT 1 FROM regexp_matches(path, '[?&;]([^=&#]*)=', 'g') m
			   WHERE m[1] ~* '^(key|sig)$|api[_-]?key|access[_-]?key|secret|token|passw|pwd|signature|auth|credential|session')
		OR EXISTS (SELECT 1 FROM jsonb_object_keys(query) k
				   WHERE k ~* '^(key|sig)$|api[_-]?key|access[_-]?key|secret|token|passw|pwd|signature|auth|credential|session') THEN
		RAISE EXCEPTION 'a poller''s path and query must not carry credentials'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A query parameter named like a key, token, secret, password, signature or session would be readable by hub_reader.',
				  HINT = 'Give the endpoint auth_kind and auth_secret (bearer, basic, api_key with api_key_header, oauth2).';
	END IF;
	IF EXISTS (SELECT 1 FROM hub.pollers x WHERE x.name = pname) THEN
		RAISE EXCEPTION 'poller "%" already exists', pname
			USING ERRCODE = 'duplicate_object', HINT = 'Pass another name, or drop it first with hub.drop_poller().';
	END IF;
	INSERT INTO hub.pollers (name, endpoint_id, path, message_type, every, retry_base, retry_max, max_pages,
							 items_path, id_field, id_path, version_field, version_path, pagination, next_path,
							 cursor_param, offset_param, limit_param, page_size, has_more_path, page_param, first_page,
							 since_param, lookback, since_format, since_zone, query, paused, next_run_at)
	VALUES (pname, eid, path, message_type, every, retry_base, retry_max, max_pages,
			ip, id_field, idp, version_field, vp, kind, np,
			CASE WHEN kind = 'cursor' THEN cursor_param END,
			CASE WHEN kind = 'offset' THEN offset_param END,
			CASE WHEN kind = 'offset' THEN coalesce(limit_param, 'limit') ELSE limit_param END,
			CASE WHEN kind IN ('offset', 'page') THEN coalesce(page_size, 100) ELSE page_size END,
			hp,
			CASE WHEN kind = 'page' THEN page_param END,
			CASE WHEN kind = 'page' THEN first_page END,
			since_param, lookback, since_format, since_zone, query, paused, now())
	RETURNING poller_id INTO id;
	PERFORM hub._audit('create_poller', 'poller:' || pname, NULL,
					   (SELECT jsonb_strip_nulls(jsonb_build_object(
								'endpoint', endpoint, 'path', x.path, 'message_type', x.message_type,
								'every', x.every, 'retry_base', x.retry_base, 'retry_max', x.retry_max,
								'max_pages', x.max_pages, 'items_path', x.items_path, 'id_field', x.id_field,
								'version_field', x.version_field, 'pagination', x.pagination, 'next_path', x.next_path,
								'cursor_param', x.cursor_param, 'offset_param', x.offset_param,
								'limit_param', x.limit_param, 'page_size', x.page_size,
								'has_more_path', x.has_more_path, 'page_param', x.page_param,
								'first_page', x.first_page, 'since_param', x.since_param, 'lookback', x.lookback,
								'since_format', x.since_format, 'since_zone', x.since_zone, 'query', x.query,
								'paused', x.paused))
						FROM hub.pollers x WHERE x.poller_id = id));
	PERFORM hub._wake_at_commit();
	RETURN id;
END
$$;
COMMENT ON FUNCTION hub.create_poller(text, text, text, text, interval, interval, interval, integer, text, text, text,
	text, text, text, text, text, integer, text, text, integer, text, interval, text, text, jsonb, boolean) IS
'Create a poller reading endpoint URL + path into hub.inbox as message_type, one message per record id and version; every option after message_type by name (README, "Pollers"). It runs at once (at commit) and then every interval. 42704 for an unknown endpoint, 42710 for a name in use, 22023 for an option out of range. Audited. Returns the poller id.';

CREATE FUNCTION hub.poll_now(name text, reason text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p hub.pollers := hub._poller(name);
BEGIN
	UPDATE hub.pollers x SET next_run_at = now() WHERE x.poller_id = p.poller_id;
	PERFORM hub._audit('poll_now', 'poller:' || p.name, reason);
	PERFORM hub._wake_at_commit();
END
$$;
COMMENT ON FUNCTION hub.poll_now(text, text) IS
'Make the poller due now (skipping its schedule or backoff; a run in progress goes on at its position); the dispatchers wake at commit. Audited.';

CREATE FUNCTION hub.pause_poller(name text, reason text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p hub.pollers := hub._poller(name);
BEGIN
	-- (a run in flight loses its lease: its next page is dropped, unstored,
	-- and fetched again after resume_poller from the committed position)
	UPDATE hub.pollers x SET paused = true, lease = NULL, lease_worker = NULL, lease_until = NULL
	WHERE x.poller_id = p.poller_id;
	PERFORM hub._audit('pause_poller', 'poller:' || p.name, reason);
END
$$;
COMMENT ON FUNCTION hub.pause_poller(text, text) IS
'Stop a poller: no request is sent until hub.resume_poller; a run in progress keeps its committed position. Audited.';

CREATE FUNCTION hub.resume_poller(name text, reason text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p hub.pollers := hub._poller(name);
BEGIN
	UPDATE hub.pollers x SET paused = false, next_run_at = least(x.next_run_at, now())
	WHERE x.poller_id = p.poller_id;
	PERFORM hub._audit('resume_poller', 'poller:' || p.name, reason);
	PERFORM hub._wake_at_commit();
END
$$;
COMMENT ON FUNCTION hub.resume_poller(text, text) IS 'Resume a paused poller; it is due at once (at commit). Audited.';

CREATE FUNCTION hub.set_poller_watermark(name text, watermark text, reason text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p hub.pollers := hub._poller(name);
	w timestamptz;
BEGIN
	IF watermark IS NOT NULL THEN
		w := hub._poll_time_safe(to_jsonb(watermark), p.since_format, p.since_zone);
		PERFORM hub._check_setting('watermark', w IS NOT NULL AND w > '-infinity' AND w < 'infinity', watermark,
								   'NULL (read everything again) or a time such as 2026-01-31T00:00:00Z or epoch seconds');
	END IF;
	-- a new run from the new watermark: the one in progress is dropped
	-- (its records stay), its lease voided, the validators forgotten
	UPDATE hub.pollers x
	SET watermark = w, next_url = NULL, run_base_url = NULL, run_offset = NULL, run_seen = '{}',
		run_max_version = NULL, run_etag = NULL, run_last_modified = NULL,
		etag = NULL, last_modified = NULL, etag_url = NULL, failures = 0,
		lease = NULL, lease_worker = NULL, lease_until = NULL, next_run_at = now()
	WHERE x.poller_id = p.poller_id;
	PERFORM hub._audit('set_poller_watermark', 'poller:' || p.name, reason,
					   jsonb_build_object('watermark', jsonb_build_object('old', p.watermark, 'new', w)));
	PERFORM hub._wake_at_commit();
END
$$;
COMMENT ON FUNCTION hub.set_poller_watermark(text, text, text) IS
'Set (or with NULL, clear: read everything again) an incremental poller''s watermark, written as the API writes times (ISO 8601, epoch seconds or milliseconds, local time of since_zone); a run in progress is dropped and a new one starts at once. Records already received stay deduplicated. Audited.';

CREATE FUNCTION hub.drop_poller(name text, reason text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p hub.pollers := hub._poller(name);
BEGIN
	DELETE FROM hub.pollers x WHERE x.poller_id = p.poller_id;
	PERFORM hub._audit('drop_poller', 'poller:' || p.name, reason,
					   to_jsonb(p) - '{run_seen}'::text[]);
END
$$;
COMMENT ON FUNCTION hub.drop_poller(text, text) IS
'Drop a poller (a run in flight is dropped: its page is not stored). Its messages and poll requests stay; a poller created again with the same name deduplicates against them. Audited.';

-- ---------------------------------------------------------------- status

CREATE VIEW hub.poll_status AS
SELECT x.name AS poller, e.name AS endpoint, x.message_type,
	   CASE WHEN x.paused THEN 'paused'
			WHEN NOT e.enabled OR e.paused THEN 'endpoint paused'
			WHEN x.lease IS NOT NULL AND x.lease_until >= now() THEN 'running'
			WHEN x.failures > 0 THEN 'retrying'
			WHEN x.next_url IS NOT NULL THEN 'resuming'
			ELSE 'idle' END AS state,
	   x.last_run_at, x.last_success_at, x.next_run_at, x.failures, x.last_status, x.last_error,
	   x.next_url AS position, x.watermark,
	   now() - coalesce(x.last_success_at, x.created_at) AS lag,
	   x.run_pages, x.run_new, x.run_duplicates, x.last_run_new, x.last_run_duplicates,
	   x.total_new, x.total_duplicates
FROM hub.pollers x
JOIN hub.endpoints e ON e.endpoint_id = x.endpoint_id;
COMMENT ON VIEW hub.poll_status IS
'Per poller: state (idle, running, retrying after failed pages, resuming a run cut by max_pages or throttling, paused, endpoint paused), last run start and last success, when it is due, failures in a row, the last status and error, position (the URL of the run''s next request, credentials redacted), watermark, lag (time since the last complete run), the current or last run''s pages and records new and duplicate, and the totals.';

REVOKE EXECUTE ON FUNCTION
	hub._url_encode(text), hub._url_with(text, jsonb), hub._url_origin(text), hub._url_resolve(text, text),
	hub._poll_header(text[], text), hub._poll_link_next(text[]), hub._poll_redact(text),
	hub._poll_time(jsonb, text, text), hub._poll_time_safe(jsonb, text, text),
	hub._poll_since_text(timestamptz, text, text), hub._poll_lease(), hub._poll_retry_after_max(),
	hub._poll_wait(text[]), hub._poll_first_url(hub.pollers, text), hub._poll_check_shard(integer, integer),
	hub._poll_claim(text, integer, integer, integer), hub._poll_finish(hub.pollers, boolean, text),
	hub._poll_store(hub.pollers, jsonb, bigint), hub._poll_page_max(hub.pollers, jsonb),
	hub._poll_page(integer, bigint, text, integer, text[], bytea, text, integer, bigint),
	hub._poll_next_due(integer, integer), hub._poll_release(text), hub._wake_at_commit(),
	hub._poll_redact_secrets(integer, text),
	hub._poll_path(text, text), hub._poll_check_param(text, text), hub._poller(text),
	hub.create_poller(text, text, text, text, interval, interval, interval, integer, text, text, text,
		text, text, text, text, text, integer, text, text, integer, text, interval, text, text, jsonb, boolean),
	hub.poll_now(text, text), hub.pause_poller(text, text), hub.resume_poller(text, text),
	hub.set_poller_watermark(text, text, text), hub.drop_poller(text, text)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
	hub.create_poller(text, text, text, text, interval, interval, interval, integer, text, text, text,
		text, text, text, text, text, integer, text, text, integer, text, interval, text, text, jsonb, boolean),
	hub.poll_now(text, text), hub.pause_poller(text, text), hub.resume_poller(text, text),
	hub.set_poller_watermark(text, text, text), hub.drop_poller(text, text)
TO hub_admin;
GRANT SELECT ON hub.pollers, hub.poll_requests, hub.poll_status TO hub_reader;
