-- sql/logistics_hub--0.2.0--0.3.0.sql: the step from 0.2.0 to 0.3.0.
-- Written by hand beside the changes of sql/src/ it brings; frozen once
-- 0.3.0 is released (a later change is a step of its own).
-- test/sql/zz_upgrade.sql checks that 0.1.0 updated along the steps has
-- exactly the catalogue of a fresh install.

\echo Use "ALTER EXTENSION logistics_hub UPDATE TO '0.3.0'" to load this file. \quit

-- ================================================================ engine
-- (endpoint throttling shared by push and poll: issue 18)

-- a 429/503 with Retry-After or a used-up rate limit pauses the endpoint,
-- for push and poll alike, across restarts and dispatchers
ALTER TABLE hub.endpoints ADD COLUMN throttled_until timestamptz;
COMMENT ON COLUMN hub.endpoints.throttled_until IS
'Set by the dispatchers when the endpoint answered 429 or 503 with Retry-After, or any response with X-RateLimit-Remaining: 0 and X-RateLimit-Reset: nothing is sent to it, pushed or polled, by any dispatcher before this time (capped by logistics_hub.retry_after_max). NULL or past: not throttled. Not audited (runtime state, like the circuit breaker''s columns).';

/*
 * _throttle_endpoint --- a dispatcher records that an endpoint asked for a
 * pause (429 or 503 with Retry-After, or X-RateLimit-Remaining: 0 with
 * X-RateLimit-Reset), so that every dispatcher, and this one after a
 * restart, sends nothing to it, pushed or polled, before until
 * (hub._dispatch_endpoints).  A later time wins over an earlier one; an
 * earlier one changes nothing.  SECURITY DEFINER: hub_worker changes no
 * other column of an endpoint.
 */
CREATE FUNCTION hub._throttle_endpoint(endpoint_id integer, until timestamptz) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF endpoint_id IS NULL OR until IS NULL OR until > now() + interval '1 day' THEN
		RAISE EXCEPTION 'invalid throttle: endpoint % until %', endpoint_id, until
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'An endpoint id and a time at most a day ahead (logistics_hub.retry_after_max is at most 1d) are needed.';
	END IF;
	UPDATE hub.endpoints e SET throttled_until = until
	WHERE e.endpoint_id = _throttle_endpoint.endpoint_id
		AND (e.throttled_until IS NULL OR e.throttled_until < until);
END
$$;
COMMENT ON FUNCTION hub._throttle_endpoint(integer, timestamptz) IS
'API: Private. Record that an endpoint asked for a pause until then (429 or 503 with Retry-After, or a rate limit used up): no dispatcher sends to it, pushed or polled, before then. A later time wins; an earlier one changes nothing.';
REVOKE EXECUTE ON FUNCTION hub._throttle_endpoint(integer, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub._throttle_endpoint(integer, timestamptz) TO hub_worker;

-- the endpoints' settings for the dispatchers carry throttled_until (a new
-- result column: dropped and created again, with its privileges)
DROP FUNCTION hub._dispatch_endpoints(integer[], integer, integer);
CREATE FUNCTION hub._dispatch_endpoints(ids integer[], shard integer, nshards integer)
RETURNS TABLE (endpoint_id integer, url text, timeout_ms integer, max_concurrency integer,
			   rate_limit float8, allow_redirects boolean, auth_kind text, api_key_header text,
			   oauth2_token_url text, headers text[], auth_secret bytea, oauth2_client_id bytea,
			   oauth2_client_secret bytea, signing_secrets bytea[], usable boolean, usable_again timestamptz,
			   throttled_until timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT e.endpoint_id, e.url, e.timeout_ms,
		   CASE WHEN e.spread THEN hub._serves_share(shard, nshards, e.endpoint_id, e.max_concurrency)
				ELSE e.max_concurrency END,
		   CASE WHEN e.spread
				THEN e.rate_limit * hub._serves_share(shard, nshards, e.endpoint_id, e.max_concurrency)
					 / e.max_concurrency
				ELSE e.rate_limit END::float8,
		   e.allow_redirects,
		   e.auth_kind, e.api_key_header, e.oauth2_token_url,
		   ARRAY(SELECT h.key || ': ' || h.value FROM jsonb_each_text(e.headers) h ORDER BY h.key),
		   x.auth_secret, x.oauth2_client_id, x.oauth2_client_secret, coalesce(x.signing_secrets, '{}'),
		   e.enabled AND NOT e.paused AND e.circuit_state <> 'open',
		   CASE WHEN e.circuit_state = 'open' THEN e.circuit_opened_at + e.circuit_cooloff ELSE now() END,
		   e.throttled_until
	FROM hub.endpoints e
	LEFT JOIN hub._endpoint_secrets x ON x.endpoint_id = e.endpoint_id
	WHERE e.endpoint_id = ANY (ids)
$$;
COMMENT ON FUNCTION hub._dispatch_endpoints(integer[], integer, integer) IS
'API: Private. Settings and sealed secrets (opened by the workers in C) of endpoints for the dispatcher workers (never granted to anyone), with the concurrency and rate limit cut to the share of shard of nshards (hub._serves_share); not usable while paused, disabled or its circuit open (usable again at the circuit''s probe time), nor before throttled_until.';
REVOKE EXECUTE ON FUNCTION hub._dispatch_endpoints(integer[], integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub._dispatch_endpoints(integer[], integer, integer) TO hub_worker;

-- the throttle is runtime state, not audited (like the circuit breaker's columns)
CREATE OR REPLACE FUNCTION hub._audit_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	circuit constant text[] := ARRAY['circuit_state', 'circuit_opened_at', 'consecutive_failures',
									 'circuit_failed_keys', 'circuit_probe_until', 'throttled_until'];
	what text := CASE TG_TABLE_NAME WHEN 'endpoints' THEN 'endpoint' ELSE 'subscription' END;
	action text := nullif(current_setting('hub.audit_action', true), '');
	target text;
	details jsonb;
BEGIN
	IF TG_TABLE_NAME = 'endpoints' THEN
		target := OLD.name;
	ELSE
		target := 'subscription:' || OLD.subscription_id;
	END IF;
	IF TG_OP = 'DELETE' THEN
		details := to_jsonb(OLD) - circuit;
	ELSE
		SELECT jsonb_object_agg(n.key, jsonb_build_object('old', o.value, 'new', n.value)) INTO details
		FROM jsonb_each(to_jsonb(NEW) - circuit) n
		JOIN jsonb_each(to_jsonb(OLD)) o ON o.key = n.key
		WHERE n.value IS DISTINCT FROM o.value;
	END IF;
	PERFORM hub._audit(coalesce(action, lower(TG_OP) || '_' || what), target,
					   nullif(current_setting('hub.audit_reason', true), ''), details);
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION hub._audit_change() IS
'API: Private. Trigger on hub.endpoints and hub.subscriptions: audit every change of an endpoint''s state or settings (not its circuit breaker nor its throttle) and every change or deletion of a subscription in hub.operator_audit, with the changed columns.';
DROP TRIGGER endpoint_audit ON hub.endpoints;
CREATE TRIGGER endpoint_audit AFTER UPDATE ON hub.endpoints FOR EACH ROW
	WHEN ((pg_catalog.to_jsonb(OLD) - '{circuit_state,circuit_opened_at,consecutive_failures,circuit_failed_keys,circuit_probe_until,throttled_until}'::text[])
		  IS DISTINCT FROM
		  (pg_catalog.to_jsonb(NEW) - '{circuit_state,circuit_opened_at,consecutive_failures,circuit_failed_keys,circuit_probe_until,throttled_until}'::text[])
		  OR COALESCE(pg_catalog.current_setting('hub.audit_action', true), '') <> '')
	EXECUTE FUNCTION hub._audit_change();


-- ================================================================ pollers
-- (issue 18)

-- sql/src/65_pollers.sql, whole: the pollers' tables, functions and view
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
				run_max_version = NULL, run_etag = NULL, run_last_modified = NULL
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
'API: Private. Lease up to max due pollers of the endpoints this shard serves (one run of a poller at a time) and return the request to send for each: a new run''s first page (conditional when possible) or the committed position of a run in progress.';

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
	INSERT INTO hub.inbox AS i (source, message_id, message_type, payload, aggregate_id, poll_request_id)
	SELECT src, CASE WHEN octet_length(y.key) <= 256 THEN y.key
					 ELSE 'sha256:' || encode(sha256(convert_to(y.key, 'UTF8')), 'hex') END,
		   p.message_type, y.rec, CASE WHEN octet_length(y.rid) <= 256 THEN y.rid END, request_id
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
COMMENT ON FUNCTION hub._poll_store(hub.pollers, jsonb, bigint) IS 'API: Private. Store a page''s records in hub.inbox, one message per (id, version), counting duplicates and refusing records larger than logistics_hub.max_payload_size; returns records, new, duplicates, rejected and the rejected ids.';

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
				AND (e.spread OR e.endpoint_id % nshards = shard));
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

-- sql/src/80_retention.sql: hub.run_retention also removes old poll
-- requests and says how many (a new OUT column: drop and create)
DROP FUNCTION hub.run_retention(interval, interval, integer, interval);
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
REVOKE EXECUTE ON FUNCTION hub.run_retention(interval, interval, integer, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.run_retention(interval, interval, integer, interval) TO hub_admin, hub_worker;

-- sql/src/70_operations.sql: hub.trace follows a polled record from its request
CREATE OR REPLACE FUNCTION hub.trace(correlation_id text DEFAULT NULL, aggregate text DEFAULT NULL)
RETURNS TABLE (at timestamptz, what text, event_id uuid, event_type text, aggregate_id text,
			   endpoint text, source text, message_id text, detail text)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
	IF trace.correlation_id IS NULL AND trace.aggregate IS NULL THEN
		RAISE EXCEPTION 'a trace needs a correlation id or an aggregate id'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Call hub.trace(''<correlation id>'') or hub.trace(aggregate => ''<business key>'').';
	END IF;
	RETURN QUERY
	WITH ev AS (
		SELECT o.event_id FROM hub.outbox o WHERE o.correlation_id = trace.correlation_id
		UNION
		SELECT o.event_id FROM hub.outbox o WHERE o.aggregate_id = trace.aggregate
	), o AS (
		SELECT o.* FROM hub.outbox o WHERE o.event_id IN (SELECT ev.event_id FROM ev)
	), inb AS (
		SELECT i.inbox_id FROM hub.inbox i WHERE i.correlation_id = trace.correlation_id
		UNION
		SELECT i.inbox_id FROM hub.inbox i WHERE i.aggregate_id = trace.aggregate
	), i AS (
		SELECT i.* FROM hub.inbox i WHERE i.inbox_id IN (SELECT inb.inbox_id FROM inb)
	), dl AS (
		-- the deliveries of these events: their own, and the batches they
		-- are in (a scan of the batch deliveries: they have no index by event)
		SELECT o.event_id, d.delivery_id, d.endpoint_id, d.state, d.updated_at, d.last_error
		FROM o JOIN hub.deliveries d ON d.event_id = o.event_id
		UNION ALL
		SELECT o.event_id, d.delivery_id, d.endpoint_id, d.state, d.updated_at, d.last_error
		FROM o JOIN hub.deliveries d ON d.batch_events IS NOT NULL AND o.event_id = ANY (d.batch_events)
			AND d.event_id <> o.event_id
	)
	SELECT t.at, t.what, t.event_id, t.event_type, t.aggregate_id, t.endpoint, t.source, t.message_id, t.detail
	FROM (
	SELECT o.published_at AS at, 'published' AS what, o.event_id, o.event_type, o.aggregate_id,
		   NULL::text AS endpoint, NULL::text AS source, NULL::text AS message_id, o.payload::text AS detail,
		   o.seq AS ord
	FROM o
	UNION ALL
	SELECT a.at, 'attempt ' || a.attempt || ': ' || a.outcome, o.event_id, o.event_type, o.aggregate_id, e.name,
		   NULL, NULL, concat_ws(' ', a.http_status, a.error, a.latency_ms || ' ms'), o.seq
	FROM o
	JOIN dl d ON d.event_id = o.event_id
	JOIN hub.endpoints e ON e.endpoint_id = d.endpoint_id
	-- (an attempt of a lease group sent one of its events: that one's)
	JOIN hub.attempts a ON a.delivery_id = d.delivery_id AND (a.group_event_id IS NULL OR a.group_event_id = o.event_id)
	UNION ALL
	SELECT d.updated_at, 'delivery ' || d.state, o.event_id, o.event_type, o.aggregate_id, e.name,
		   NULL, NULL, d.last_error, o.seq
	FROM o
	JOIN dl d ON d.event_id = o.event_id
	JOIN hub.endpoints e ON e.endpoint_id = d.endpoint_id
	UNION ALL
	-- a polled record: the request that brought it (hub.poll_requests)
	SELECT r.at, 'polled', NULL::uuid, i.message_type, i.aggregate_id, e.name, i.source, i.message_id,
		   concat_ws(' ', 'GET', r.url, '->', coalesce(r.http_status::text, r.error),
					 '(page ' || r.page || ': ' || r.records || ' records, ' || r.new_records || ' new)'),
		   i.inbox_id
	FROM i
	JOIN hub.poll_requests r ON r.request_id = i.poll_request_id
	LEFT JOIN hub.pollers p ON p.poller_id = r.poller_id
	LEFT JOIN hub.endpoints e ON e.endpoint_id = p.endpoint_id
	UNION ALL
	SELECT i.received_at, 'received', NULL::uuid, i.message_type, i.aggregate_id, NULL, i.source, i.message_id,
		   i.payload::text || CASE WHEN i.duplicate_count > 0 THEN ' (' || i.duplicate_count || ' duplicates)' ELSE '' END,
		   i.inbox_id
	FROM i
	UNION ALL
	SELECT coalesce(i.processed_at, i.last_duplicate_at, i.received_at), 'inbox ' || i.state, NULL::uuid,
		   i.message_type, i.aggregate_id, NULL, i.source, i.message_id,
		   concat_ws(' ', CASE WHEN i.attempts > 0 THEN i.attempts || ' failed attempts:' END, i.last_error),
		   i.inbox_id
	FROM i
	WHERE i.state <> 'new'
	) t
	ORDER BY t.at, t.ord, t.what;
END
$$;
COMMENT ON FUNCTION hub.trace(text, text) IS
'Timeline of one correlation id or one business key (aggregate => ...) across the outbox, its deliveries and every attempt, and the inbox (messages received with that correlation id or aggregate id, a polled record''s poll request, and their processing), in time order and, at the same time, in publishing order (the events of one transaction share their time). 22023 when neither is given.';

-- sql/src/90_privileges.sql
-- the pollers' interface (65_pollers.sql): SECURITY DEFINER, so no table
-- grant; a dispatcher claims, records pages and gives leases back, and
-- changes no poller's configuration
GRANT EXECUTE ON FUNCTION
	hub._poll_claim(text, integer, integer, integer),
	hub._poll_page(integer, bigint, text, integer, text[], bytea, text, integer, bigint),
	hub._poll_next_due(integer, integer),
	hub._poll_release(text)
	TO hub_worker;



-- ================================================================ flow
-- (inbox -> canonical state -> canonical events: issue 19)

-- 40_outbox.sql: typed and deprecated contracts, and the version every
-- event carries (the columns at the end, as a fresh install has them)
CREATE OR REPLACE FUNCTION hub._key_types_valid(required_keys text[], key_types jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT key_types IS NOT NULL AND jsonb_typeof(key_types) = 'object'
		AND NOT EXISTS (SELECT FROM jsonb_each(key_types) t
						WHERE NOT (t.key = ANY (required_keys))
						   OR jsonb_typeof(t.value) IS DISTINCT FROM 'string'
						   OR t.value #>> '{}' NOT IN ('string', 'number', 'boolean', 'object', 'array'))
$$;
COMMENT ON FUNCTION hub._key_types_valid(text[], jsonb) IS
'API: Private. true when key_types is an object naming, for some required keys, one of the JSON types string, number, boolean, object, array.';
ALTER TABLE hub.event_types
	ADD COLUMN key_types jsonb NOT NULL DEFAULT '{}' CHECK (hub._key_types_valid(required_keys, key_types)),
	ADD COLUMN deprecated boolean NOT NULL DEFAULT false;
COMMENT ON TABLE hub.event_types IS
'Catalogue of event types (<entity>.<verb>) with their contract: a version, the payload keys each event must carry (non-null, optionally typed) and whether the version is deprecated.';
COMMENT ON COLUMN hub.event_types.required_keys IS 'Payload keys every event of the type must carry with a non-null value.';
COMMENT ON COLUMN hub.event_types.key_types IS 'Types of required keys, {"key": "string" | "number" | "boolean" | "object" | "array"}; a key without an entry may hold any non-null value.';
COMMENT ON COLUMN hub.event_types.deprecated IS 'true: publishing the type still works but warns the publisher (WARNING 01P01) that its contract version is deprecated.';
ALTER TABLE hub.outbox ADD COLUMN contract_version integer;
COMMENT ON COLUMN hub.outbox.contract_version IS 'The version of the event type''s contract (hub.event_types) the event was checked against, stamped by the contract check and sent in every body (canonical contract_version, CloudEvents contractversion); NULL for an unknown type that was accepted.';

-- 45_delivery.sql: the claim renders the body with the contract version
CREATE OR REPLACE FUNCTION hub._claim(p_max integer, p_worker text, p_lease interval, p_shard integer,
						   p_nshards integer, p_endpoint integer, p_max_events integer, p_rounds integer,
						   p_held_ids integer[], p_held integer[], p_source text, p_max_bytes bigint DEFAULT NULL)
RETURNS SETOF hub._claimed
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
SET plan_cache_mode = force_generic_plan
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_sort = off
AS $$
DECLARE
	cap bigint;
BEGIN
	/*
	 * With the claimer's per-endpoint cap (p_rounds), no more candidates
	 * than the cap can use in all: each is locked, and a lock is a write.
	 */
	IF p_rounds IS NOT NULL AND p_endpoint IS NULL THEN
		SELECT sum(greatest(0, p_rounds * CASE WHEN e.spread THEN hub._serves_share(p_shard, p_nshards, e.endpoint_id,
																					  e.max_concurrency)
										  ELSE e.max_concurrency END
							   - coalesce((SELECT h.n FROM unnest(p_held_ids, p_held) h(id, n)
										   WHERE h.id = e.endpoint_id), 0)))
		INTO cap
		FROM hub.endpoints e
		WHERE e.enabled AND NOT e.paused AND e.circuit_state = 'closed'
			AND hub._serves(p_shard, p_nshards, e.endpoint_id, CASE WHEN e.spread THEN e.max_concurrency ELSE 1 END);
		p_max := least(p_max, greatest(coalesce(cap, 0), 1));
	END IF;
	RETURN QUERY
	WITH candidates AS (
		SELECT d.delivery_id, d.state AS old_state, d.lease_token AS old_token,
			   d.leased_by AS old_worker, d.attempts AS old_attempt,
			   coalesce(cardinality(d.batch_events), 1) AS n_events,
			   -- requests: one a batch, one an event of a lease group
			   CASE WHEN d.batch_events IS NULL THEN 1
					WHEN (SELECT s.body_format FROM hub.subscriptions s
						  WHERE s.subscription_id = d.subscription_id) IN ('batch', 'cloudevents_batch') THEN 1
					ELSE cardinality(d.batch_events) END AS n_requests,
			   d.priority AS o_priority, d.next_attempt_at AS o_next, d.seq AS o_seq,
			   e.endpoint_id AS o_endpoint,
			   CASE WHEN e.spread THEN hub._serves_share(p_shard, p_nshards, e.endpoint_id, e.max_concurrency)
					ELSE e.max_concurrency END AS o_share,
			   -- payload bytes, with a byte budget only (a primary key
			   -- lookup an event, sizes read from the headers)
			   CASE WHEN p_max_bytes IS NULL THEN 0
					WHEN d.batch_events IS NULL
					THEN (SELECT hub._payload_size(o.payload) FROM hub.outbox o WHERE o.event_id = d.event_id)
					ELSE (SELECT sum(hub._payload_size(o.payload))
						  FROM unnest(d.batch_events) b(event_id)
						  JOIN hub.outbox o ON o.event_id = b.event_id) END AS n_bytes
		FROM hub.deliveries d
		JOIN (SELECT e.*, CASE WHEN e.spread THEN e.max_concurrency ELSE 1 END AS spread_width
			  FROM hub.endpoints e) e ON e.endpoint_id = d.endpoint_id
		WHERE d.state IN ('pending', 'retry_wait', 'in_flight') AND d.next_attempt_at <= now()
			AND e.enabled AND NOT e.paused
			AND CASE WHEN p_endpoint IS NULL
					 THEN e.circuit_state = 'closed' AND hub._serves(p_shard, p_nshards, e.endpoint_id, e.spread_width)
					 ELSE d.endpoint_id = p_endpoint END
			AND (d.ordering = 'none' OR NOT EXISTS (
				SELECT 1 FROM hub.deliveries p
				WHERE p.subscription_id = d.subscription_id AND p.aggregate_id = d.aggregate_id
					AND p.seq < d.seq AND p.state NOT IN ('delivered', 'skipped')))
		ORDER BY d.priority DESC, d.next_attempt_at, d.seq
		LIMIT p_max
		FOR UPDATE OF d SKIP LOCKED
	), capped AS (
		-- from each endpoint, no more requests than make the claimer hold
		-- (p_held: the requests it holds already) p_rounds times its share
		-- of the endpoint's connections; then at most p_max_events events
		-- and p_max_bytes payload bytes (the first delivery always); the
		-- rows locked above and left out here are free again at commit
		SELECT c.* FROM (
			SELECT c.*, sum(c.n_events) OVER w AS upto, sum(c.n_bytes) OVER w AS upto_bytes
			FROM (SELECT c.*, sum(c.n_requests) OVER (PARTITION BY c.o_endpoint
													  ORDER BY c.o_priority DESC, c.o_next, c.o_seq
													  ROWS UNBOUNDED PRECEDING) AS requests
				  FROM candidates c) c
			WHERE p_rounds IS NULL OR p_endpoint IS NOT NULL
				OR c.requests - c.n_requests < p_rounds * c.o_share
							 - coalesce((SELECT h.n FROM unnest(p_held_ids, p_held) h(id, n)
										 WHERE h.id = c.o_endpoint), 0)
			WINDOW w AS (ORDER BY c.o_priority DESC, c.o_next, c.o_seq ROWS UNBOUNDED PRECEDING)) c
		WHERE (p_max_events IS NULL OR c.upto - c.n_events < p_max_events)
			AND (p_max_bytes IS NULL OR c.upto_bytes - c.n_bytes < p_max_bytes)
	), claimed AS (
		UPDATE hub.deliveries d
		SET state = 'in_flight', lease_until = now() + p_lease, next_attempt_at = now() + p_lease,
			lease_token = nextval('hub._lease_token_seq'), attempts = d.attempts + 1,
			leased_by = p_worker, updated_at = now()
		FROM capped c
		WHERE d.delivery_id = c.delivery_id
		-- (the size apart: batch_events read above the join with the events
		-- would be read again for every event, the whole array detoasted
		-- once an event when it is large)
		RETURNING d.*, coalesce(cardinality(d.batch_events), 1) AS n_events
	), expired AS (
		-- a lease that ran out: its attempt never reported; say so in the audit
		INSERT INTO hub.attempts (delivery_id, attempt, worker, lease_token, error, outcome)
		SELECT c.delivery_id, c.old_attempt, c.old_worker, c.old_token, 'lease expired without a result', 'expired'
		FROM capped c
		WHERE c.old_state = 'in_flight'
	)
	-- (rendered: the body instead of the payload, the row carried no
	-- bigger than it must be through the callers' RETURN QUERY)
	SELECT c.delivery_id, c.lease_token, c.attempts, o.event_id, o.event_type, o.aggregate_id,
		   o.occurred_at, o.correlation_id,
		   CASE WHEN p_source IS NULL THEN o.payload END, c.subscription_id, c.endpoint_id, s.body_format, s.transform,
		   c.n_events, s.batch_max,
		   CASE WHEN p_source IS NOT NULL
				THEN hub.event_body(s.body_format, o.event_id, o.event_type, o.aggregate_id, o.occurred_at,
									o.correlation_id, o.payload, p_source, o.contract_version) END
	FROM claimed c
	CROSS JOIN LATERAL unnest(coalesce(c.batch_events, ARRAY[c.event_id])) WITH ORDINALITY AS b(event_id, ord)
	JOIN hub.outbox o ON o.event_id = b.event_id
	JOIN hub.subscriptions s ON s.subscription_id = c.subscription_id
	-- (rendering for a dispatcher: a subscription's deliveries together,
	-- for its batches)
	ORDER BY c.priority DESC, CASE WHEN p_source IS NOT NULL THEN c.subscription_id END, c.seq, c.delivery_id,
		b.ord;
END
$$;
COMMENT ON FUNCTION hub._claim(integer, text, interval, integer, integer, integer, integer, integer, integer[], integer[], text, bigint) IS
'API: Private. The leasing statement of hub.claim_deliveries (closed circuits of a shard, or one endpoint''s probe): up to p_max deliveries and, unless NULL, p_max_events events and p_max_bytes payload bytes (hub._payload_size; the first delivery always comes whole) and, with what the claimer holds (p_held_ids, p_held), p_rounds times the shard''s share of each endpoint''s max_concurrency; a batch delivery comes as one row per event, in order. With p_source, each event comes rendered (hub.event_body with that source; body, and payload NULL), a subscription''s deliveries together.';

CREATE OR REPLACE FUNCTION hub._claim_transformed(p_max integer, p_worker text, p_lease interval, p_shard integer,
									   p_nshards integer, p_endpoint integer, p_max_events integer,
									   p_rounds integer, p_held_ids integer[], p_held integer[], p_source text,
									   p_max_bytes bigint DEFAULT NULL)
RETURNS SETOF hub._claimed
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
	rows hub._claimed[];
	r hub._claimed;
	failed bigint[] := '{}';
	failed_events uuid[] := '{}';	-- events of lease groups that failed alone
	failed_groups bigint[] := '{}';	-- (and the group each left)
	alone bigint;
	err text;
BEGIN
	IF NOT EXISTS (SELECT 1 FROM hub.subscriptions s WHERE s.transform IS NOT NULL) THEN
		RETURN QUERY
		SELECT * FROM hub._claim(p_max, p_worker, p_lease, p_shard, p_nshards, p_endpoint, p_max_events, p_rounds,
								 p_held_ids, p_held, p_source, p_max_bytes);
		RETURN;
	END IF;
	-- (unrendered: the transforms need the payloads; rendered below, in
	-- claim order rather than a subscription's deliveries together, so a
	-- replay of single events of a transformed batch subscription may go
	-- out in more, smaller batches)
	rows := ARRAY(SELECT c FROM hub._claim(p_max, p_worker, p_lease, p_shard, p_nshards, p_endpoint, p_max_events, p_rounds,
						 p_held_ids, p_held, NULL, p_max_bytes) c);
	FOR i IN 1 .. coalesce(array_length(rows, 1), 0) LOOP
		r := rows[i];
		CONTINUE WHEN r.transform IS NULL OR r.delivery_id = ANY (failed);
		BEGIN
			r.payload := hub._transform(r.transform, r.payload);
			rows[i] := r;
		EXCEPTION WHEN OTHERS THEN
			err := format('transform %s failed: %s (SQLSTATE %s)', r.transform, SQLERRM, SQLSTATE);
			IF r.batch_size > 1 AND r.body_format IS DISTINCT FROM 'batch'
			   AND r.body_format IS DISTINCT FROM 'cloudevents_batch' THEN
				-- an event of a lease group, which is its own request: only
				-- it leaves the group (a delivery of its own, same lease) and
				-- fails; the rest of the group goes out
				SELECT x.delivery_id INTO alone
				FROM hub._split_group(r.delivery_id, r.lease_token, ARRAY[r.event_id]) x
				WHERE x.event_id = r.event_id;
				PERFORM hub.fail_delivery(alone, r.lease_token, NULL, err, 0, NULL, NULL, p_worker, false);
				failed_events := failed_events || r.event_id;
				failed_groups := failed_groups || r.delivery_id;
			ELSE
				PERFORM hub.fail_delivery(r.delivery_id, r.lease_token, NULL, err, 0, NULL, NULL, p_worker, false);
				failed := failed || r.delivery_id;
			END IF;
		END;
	END LOOP;
	RETURN QUERY
	SELECT c.delivery_id, c.lease_token, c.attempt, c.event_id, c.event_type, c.aggregate_id,
		   c.occurred_at, c.correlation_id, c.payload, c.subscription_id, c.endpoint_id, c.body_format,
		   c.transform,
		   c.batch_size - (SELECT count(*) FROM unnest(failed_groups) g WHERE g = c.delivery_id)::integer,
		   c.batch_max,
		   CASE WHEN p_source IS NOT NULL
				THEN hub.event_body(c.body_format, c.event_id, c.event_type, c.aggregate_id, c.occurred_at,
									c.correlation_id, c.payload, p_source,
									(SELECT o.contract_version FROM hub.outbox o WHERE o.event_id = c.event_id)) END
	FROM unnest(rows) WITH ORDINALITY AS c
	WHERE c.delivery_id <> ALL (failed) AND c.event_id <> ALL (failed_events)
	ORDER BY c.ordinality;
END
$$;
COMMENT ON FUNCTION hub._claim_transformed(integer, text, interval, integer, integer, integer, integer, integer, integer[], integer[], text, bigint) IS
'API: Private. hub._claim with subscription transforms applied; a transform that raises fails only its delivery (recorded, retried, never counted against the endpoint) and none of its events is handed out; for an event of a lease group, only that event, split out of its group.';

-- 30_entity_state.sql: parent and child links, the apply body with the
-- record's context and the canonical events, the views with the parent
CREATE TABLE hub.entity_links (
	parent_lifecycle	text NOT NULL,
	parent_key			text NOT NULL,
	child_lifecycle		text NOT NULL,
	child_key			text NOT NULL,
	system				text NOT NULL,
	inbox_id			bigint,
	linked_at			timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (parent_lifecycle, parent_key, child_lifecycle, child_key)
);
CREATE INDEX entity_links_child_idx ON hub.entity_links (child_lifecycle, child_key);
COMMENT ON TABLE hub.entity_links IS
'Parent and child business keys (an order and its shipments or packages) as inbound records name them through hub.map_inbox (parent_path, children_path); read by readiness rules, hub.trace and the drift and stale views.';
COMMENT ON COLUMN hub.entity_links.system IS 'The system whose record named the link.';
COMMENT ON COLUMN hub.entity_links.inbox_id IS 'The hub.inbox message that named the link first (NULL when linked otherwise).';

CREATE OR REPLACE FUNCTION hub._apply_canonical(lifecycle text, business_key text, system text,
		code text, occurred_at timestamptz, state text, overlay_kind text, reason text,
		qualifier text, correction boolean, p_record jsonb, p_partner text,
		p_parent_lifecycle text, p_parent_key text, p_inbox_id bigint)
RETURNS hub.apply_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m_state		text := $6;
	m_overlay	text := $7;
	m_reason	text := $8;
	v_role		text;
	e			hub.entity_state;
	r			hub.apply_result;
	v_owner		boolean;
	v_overlays	boolean;
	v_suspect	boolean := false;
	o_hold		boolean;
	o_hold_reason text;
	o_exception	text;
	v_new		boolean;
BEGIN
	IF lifecycle IS NULL OR lifecycle NOT IN ('order', 'shipment', 'movement', 'return') THEN
		RAISE EXCEPTION 'unknown lifecycle: "%"', lifecycle
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The lifecycles are order, shipment, movement and return.';
	END IF;
	IF business_key IS NULL OR business_key = '' OR code IS NULL OR occurred_at IS NULL
	   OR system IS NULL THEN
		RAISE EXCEPTION 'business_key, system, code and occurred_at must not be null or empty'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM hub._check_key_length('business key', business_key);
	IF m_state IS NOT NULL AND NOT hub.lifecycle_state_valid(lifecycle, m_state) THEN
		RAISE EXCEPTION 'unknown % state: "%"', lifecycle, m_state
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('%s code "%s" was mapped to it.', system, code),
				  HINT = format('The states are the labels of hub.%s_status.', lifecycle);
	END IF;
	IF m_overlay IS NOT NULL AND m_overlay NOT IN ('on_hold', 'exception') THEN
		RAISE EXCEPTION 'unknown overlay: "%"', m_overlay
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The overlays are on_hold and exception.';
	END IF;
	-- (hub._system_role, inline: this runs for every report)
	SELECT sy.role INTO v_role FROM hub.systems sy
	WHERE sy.system = _apply_canonical.system AND sy.qualifier IN ('', coalesce(_apply_canonical.qualifier, ''))
	ORDER BY sy.qualifier DESC LIMIT 1;
	IF v_role IS NULL THEN
		RAISE EXCEPTION 'unknown system: "%"', system
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Every reporting system needs a role (erp, wms, tms, carrier or portal).',
				  HINT = format('Add it with INSERT INTO hub.systems (system, role) VALUES (%L, ''carrier'').', system);
	END IF;

	-- one row lock per key serializes every report of it; a new key is
	-- inserted with its final values below, once, in one statement (ON
	-- CONFLICT: a concurrent insert of it makes us wait for its
	-- transaction and start over against its row)
	SELECT * INTO e FROM hub.entity_state es
	WHERE es.lifecycle = _apply_canonical.lifecycle
	  AND es.business_key = _apply_canonical.business_key
	FOR UPDATE;
	v_new := NOT FOUND;
	IF v_new THEN
		e.on_hold := false;
	END IF;

	-- owner of the reported state; overlays from roles owning any state
	SELECT coalesce(bool_or(o.state = m_state), false) OR m_state IS NULL, count(*) > 0
	INTO v_owner, v_overlays
	FROM hub.state_owners o
	WHERE o.lifecycle = _apply_canonical.lifecycle AND o.role = v_role;

	r.previous_state := e.state;
	o_hold := e.on_hold;
	o_hold_reason := e.on_hold_reason;
	o_exception := e.exception_reason;
	r.reported_state := m_state;
	r.owner := v_owner;
	IF m_state IS NOT NULL AND e.state IS NOT NULL THEN
		r.kind := hub._classify_transition(lifecycle, e.state, m_state, correction);
	END IF;

	r.outcome := CASE
		WHEN m_state IS NULL AND m_overlay IS NULL THEN 'informational'
		WHEN m_state IS NULL THEN 'overlay'
		WHEN NOT v_owner THEN 'not_owner'
		WHEN e.state IS NULL THEN 'created'
		WHEN r.kind IN ('advance', 'advance_with_gap') AND correction
			 AND hub._classify_transition(lifecycle, e.state, m_state, false) = 'stale' THEN 'corrected'
		WHEN r.kind IN ('advance', 'advance_with_gap') THEN 'advanced'
		ELSE r.kind::text
	END;

	IF r.outcome IN ('created', 'advanced', 'corrected') THEN
		e.state := m_state;
		e.state_system := system;
		e.state_occurred_at := occurred_at;
		e.last_advanced_at := occurred_at;
		e.on_hold := false;
		e.on_hold_reason := NULL;
		e.on_hold_since := NULL;
		e.exception_reason := NULL;
		e.exception_since := NULL;
	ELSIF r.outcome = 'conflict' THEN
		e.exception_reason := 'state_conflict';
		e.exception_since := occurred_at;
	ELSIF r.outcome = 'duplicate' AND m_overlay IS NULL
		  AND e.exception_reason IS DISTINCT FROM 'state_conflict'
		  AND e.exception_since < occurred_at THEN
		e.exception_reason := NULL;
		e.exception_since := NULL;
	ELSIF r.outcome = 'stale' THEN
		v_suspect := occurred_at > e.state_occurred_at;
	END IF;

	-- overlays of a current report (not of a stale, conflicting or foreign one)
	IF m_overlay IS NOT NULL AND v_overlays
	   AND r.outcome IN ('created', 'advanced', 'corrected', 'duplicate', 'overlay') THEN
		IF m_overlay = 'on_hold' THEN
			e.on_hold := true;
			e.on_hold_reason := m_reason;
			e.on_hold_since := occurred_at;
		ELSIF m_overlay = 'exception' AND e.exception_reason IS DISTINCT FROM 'state_conflict' THEN
			e.exception_reason := coalesce(m_reason, 'unspecified');
			e.exception_since := occurred_at;
		END IF;
	END IF;

	IF v_new THEN
		INSERT INTO hub.entity_state AS es
			(lifecycle, business_key, state, state_system, state_occurred_at, last_advanced_at, on_hold,
			 on_hold_reason, on_hold_since, exception_reason, exception_since)
		VALUES (_apply_canonical.lifecycle, _apply_canonical.business_key, e.state, e.state_system,
				e.state_occurred_at, e.last_advanced_at, e.on_hold, e.on_hold_reason, e.on_hold_since,
				e.exception_reason, e.exception_since)
		ON CONFLICT DO NOTHING;
		IF NOT FOUND THEN
			-- another transaction made the key first (it has committed now):
			-- nothing is written yet, so classify again against its row
			RETURN hub._apply_canonical(lifecycle, business_key, system, code, occurred_at, $6, $7, $8,
										qualifier, correction, p_record, p_partner, p_parent_lifecycle,
										p_parent_key, p_inbox_id);
		END IF;
	ELSE
		UPDATE hub.entity_state es
		SET state = e.state, state_system = e.state_system, state_occurred_at = e.state_occurred_at,
			last_advanced_at = e.last_advanced_at, on_hold = e.on_hold,
			on_hold_reason = e.on_hold_reason, on_hold_since = e.on_hold_since,
			exception_reason = e.exception_reason, exception_since = e.exception_since,
			updated_at = now()
		WHERE es.lifecycle = _apply_canonical.lifecycle AND es.business_key = _apply_canonical.business_key;
	END IF;

	INSERT INTO hub.entity_system_state AS s
		(lifecycle, business_key, system, role, qualifier, code, state, state_since,
		 overlay_kind, reason, occurred_at)
	VALUES (lifecycle, business_key, system, v_role, qualifier, code, m_state, occurred_at,
			m_overlay, m_reason, occurred_at)
	ON CONFLICT ON CONSTRAINT entity_system_state_pkey DO UPDATE
	SET role = EXCLUDED.role, qualifier = EXCLUDED.qualifier, code = EXCLUDED.code,
		state = coalesce(EXCLUDED.state, s.state),
		state_since = CASE WHEN EXCLUDED.state IS NULL OR EXCLUDED.state = s.state
						   THEN s.state_since ELSE EXCLUDED.occurred_at END,
		overlay_kind = EXCLUDED.overlay_kind, reason = EXCLUDED.reason,
		occurred_at = EXCLUDED.occurred_at, received_at = now()
	WHERE s.occurred_at <= EXCLUDED.occurred_at;

	INSERT INTO hub.status_history
		(lifecycle, business_key, system, role, qualifier, code, correction, mapped_state,
		 overlay_kind, reason, previous_state, new_state, kind, outcome, regression_suspect,
		 occurred_at)
	VALUES (lifecycle, business_key, system, v_role, qualifier, code, correction, m_state,
			m_overlay, m_reason, r.previous_state, e.state, r.kind, r.outcome, v_suspect,
			occurred_at)
	RETURNING history_id INTO r.history_id;

	-- one open conflict per key and disagreement (serialized by the key's
	-- row lock; status_conflicts_open_idx holds it): the same report again
	-- counts on the open one
	IF r.outcome = 'conflict' THEN
		UPDATE hub.status_conflicts c
		SET reports = c.reports + 1, last_history_id = r.history_id, last_reported_at = now()
		WHERE c.lifecycle = _apply_canonical.lifecycle
		  AND c.business_key = _apply_canonical.business_key
		  AND c.current_state = r.previous_state AND c.incoming_state = m_state
		  AND c.resolved_at IS NULL;
		IF NOT FOUND THEN
			INSERT INTO hub.status_conflicts
				(history_id, lifecycle, business_key, system, current_state, incoming_state, occurred_at,
				 last_history_id)
			VALUES (r.history_id, lifecycle, business_key, system, r.previous_state, m_state, occurred_at,
					r.history_id);
		END IF;
	END IF;

	-- the canonical events of what moved, in this transaction (65_flow.sql):
	-- the state, then each overlay raised or cleared; a duplicate, stale,
	-- not-owner or informational report moves nothing and publishes nothing
	IF r.outcome IN ('created', 'advanced', 'corrected') THEN
		PERFORM hub._state_event(lifecycle, business_key, e.state, e.state, r.previous_state, r.outcome,
								 system, occurred_at, NULL, p_partner, p_parent_lifecycle, p_parent_key,
								 p_record, p_inbox_id);
	END IF;
	IF e.exception_reason IS DISTINCT FROM o_exception THEN
		PERFORM hub._state_event(lifecycle, business_key,
								 CASE WHEN e.exception_reason IS NULL THEN 'exception_cleared' ELSE 'exception' END,
								 e.state, r.previous_state, CASE WHEN e.exception_reason IS NULL THEN 'cleared' ELSE 'raised' END,
								 system, occurred_at, coalesce(e.exception_reason, o_exception), p_partner,
								 p_parent_lifecycle, p_parent_key, p_record, p_inbox_id);
	END IF;
	IF e.on_hold IS DISTINCT FROM o_hold THEN
		PERFORM hub._state_event(lifecycle, business_key,
								 CASE WHEN e.on_hold THEN 'on_hold' ELSE 'hold_released' END,
								 e.state, r.previous_state, CASE WHEN e.on_hold THEN 'raised' ELSE 'cleared' END,
								 system, occurred_at, CASE WHEN e.on_hold THEN e.on_hold_reason ELSE o_hold_reason END,
								 p_partner, p_parent_lifecycle, p_parent_key, p_record, p_inbox_id);
	END IF;
	-- readiness rules: evaluated whenever a member's state or overlay moved
	IF (r.outcome IN ('created', 'advanced', 'corrected') OR e.exception_reason IS DISTINCT FROM o_exception
		OR e.on_hold IS DISTINCT FROM o_hold)
	   AND EXISTS (SELECT FROM hub.readiness_rules) THEN
		PERFORM hub._readiness_evaluate(lifecycle, business_key);
	END IF;

	r.state := e.state;
	r.on_hold := e.on_hold;
	r.exception_reason := e.exception_reason;
	RETURN r;
END
$$;
COMMENT ON FUNCTION hub._apply_canonical(text, text, text, text, timestamptz, text, text, text, text, boolean, jsonb, text, text, text, bigint) IS
'API: Private. hub.apply_canonical_status with the context of a mapped inbound record (record, partner, parent key, inbox message): applies the report and publishes the canonical events of what moved (hub.state_events), then evaluates readiness rules.';

CREATE OR REPLACE FUNCTION hub.apply_canonical_status(lifecycle text, business_key text, system text,
		code text, occurred_at timestamptz, state text, overlay_kind text DEFAULT NULL,
		reason text DEFAULT NULL, qualifier text DEFAULT NULL, correction boolean DEFAULT false)
RETURNS hub.apply_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	-- (plpgsql, not sql: a SQL function is planned again in every
	-- subtransaction, such as a handler's in hub.process_inbox)
	RETURN hub._apply_canonical($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, NULL, NULL, NULL, NULL);
END
$$;
COMMENT ON FUNCTION hub.apply_canonical_status(text, text, text, text, timestamptz, text, text, text, text, boolean) IS
'Apply an already mapped report (canonical state and/or overlay) of a system for a business key: classify it against the canonical state, advance on advance/advance_with_gap from the state''s owner, keep duplicate/stale/non-owner reports in history only, record a conflict and raise the exception overlay. When the state moves or an overlay is raised or cleared, the canonical event of hub.state_events is published in the same transaction (a duplicate, stale, not-owner or informational report publishes nothing; an event whose contract the report cannot satisfy is not published and opens a contract_violation exception in hub.exceptions). Every call appends to hub.status_history. Errors: 22023 for an unknown lifecycle, system, state or overlay; 22001 for a business key longer than 256 bytes.';

CREATE OR REPLACE FUNCTION hub.apply_status(lifecycle text, business_key text, system text, code text,
								 occurred_at timestamptz, qualifier text DEFAULT NULL,
								 correction boolean DEFAULT false, partner text DEFAULT NULL)
RETURNS hub.apply_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m			record;
BEGIN
	-- raises 22023-class errors naming system, lifecycle and code when unknown
	SELECT * INTO m FROM hub.map_status(system, lifecycle, code, qualifier, partner);
	RETURN hub._apply_canonical(lifecycle, business_key, system, code, occurred_at,
								m.state, m.overlay, m.reason, qualifier, correction,
								NULL, partner, NULL, NULL, NULL);
END
$$;
COMMENT ON FUNCTION hub.apply_status(text, text, text, text, timestamptz, text, boolean, text) IS
'Map a system''s status code for a business key with hub.map_status (qualifier and partner as there) and apply it with hub.apply_canonical_status: advance on advance/advance_with_gap from the state''s owner, keep duplicate/stale/non-owner reports in history only, record a conflict and raise the exception overlay; publish the canonical events of what moved (hub.state_events) in the same transaction. Every call appends to hub.status_history. Errors: those of hub.map_status for an unknown code; 22023 for an unknown lifecycle or system; 22001 for a business key longer than 256 bytes.';

CREATE OR REPLACE VIEW hub.drift AS
SELECT e.lifecycle, e.business_key, e.state AS canonical_state, s.system, s.role,
	   s.code AS system_code, s.state AS system_state,
	   greatest(e.state_occurred_at, s.state_since) AS disagreeing_since,
	   now() - greatest(e.state_occurred_at, s.state_since) AS disagreeing_for,
	   t.tolerance, pl.parent_lifecycle, pl.parent_key
FROM hub.entity_state e
JOIN hub.entity_system_state s USING (lifecycle, business_key)
JOIN hub.drift_tolerances t ON t.lifecycle = e.lifecycle AND t.role = s.role
LEFT JOIN LATERAL (
	SELECT l.parent_lifecycle, l.parent_key FROM hub.entity_links l
	WHERE l.child_lifecycle = e.lifecycle AND l.child_key = e.business_key
	ORDER BY l.linked_at, l.parent_lifecycle, l.parent_key LIMIT 1) pl ON true
WHERE e.state IS NOT NULL AND s.state IS NOT NULL AND s.state <> e.state
  AND now() - greatest(e.state_occurred_at, s.state_since) > t.tolerance
  AND NOT hub._projection_agrees(s.system, e.lifecycle, e.state, s.code);
COMMENT ON VIEW hub.drift IS
'Keys where a system''s last reported state differs from the canonical state for longer than its role''s tolerance (hub.drift_tolerances), with since when and for how long (measured from the later of the canonical state''s time and the system''s first report of its own state), and the key''s parent (hub.entity_links: its first) where known.';

CREATE OR REPLACE VIEW hub.stale_entities AS
SELECT e.lifecycle, e.business_key, e.state, e.last_advanced_at,
	   now() - e.last_advanced_at AS idle_for, t.threshold,
	   e.on_hold, e.exception_reason, pl.parent_lifecycle, pl.parent_key
FROM hub.entity_state e
JOIN hub.stale_thresholds t ON t.lifecycle = e.lifecycle AND t.state = e.state
LEFT JOIN LATERAL (
	SELECT l.parent_lifecycle, l.parent_key FROM hub.entity_links l
	WHERE l.child_lifecycle = e.lifecycle AND l.child_key = e.business_key
	ORDER BY l.linked_at, l.parent_lifecycle, l.parent_key LIMIT 1) pl ON true
WHERE now() - e.last_advanced_at > t.threshold;
COMMENT ON VIEW hub.stale_entities IS
'Entities without progress for longer than the threshold of their state (hub.stale_thresholds), e.g. an order packed for more than 24 hours, with the key''s parent (hub.entity_links: its first) where known.';

REVOKE EXECUTE ON FUNCTION
	hub._apply_canonical(text, text, text, text, timestamptz, text, text, text, text, boolean, jsonb, text, text, text, bigint)
FROM PUBLIC;
GRANT SELECT ON hub.entity_links TO hub_reader;

-- 60_inbox.sql: handlers with the message's context, mappings in process_inbox
COMMENT ON COLUMN hub.inbox_handlers.handler IS
'A function handler(payload jsonb, message_type text, context jsonb), or (payload jsonb, message_type text), or (payload jsonb); its result is ignored and an error it raises fails the message. Runs after the pattern''s declared mapping (hub.inbox_mappings), if any, in the same subtransaction.';

CREATE OR REPLACE FUNCTION hub.register_handler(message_pattern text, handler regproc,
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

CREATE OR REPLACE FUNCTION hub.process_inbox(max integer DEFAULT 100)
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
BEGIN
	IF max IS NULL OR max < 1 THEN
		RAISE EXCEPTION 'max must be at least 1' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	processed := 0;
	failed := 0;
	unhandled := 0;
	FOR m IN SELECT * FROM hub._inbox_claim(max) LOOP
		err := NULL;
		BEGIN
			-- its own subtransaction: the declared mapping's (65_flow.sql) and
			-- the handler's writes are rolled back together if either fails.
			-- The mapping first (the state, links, events and exceptions of
			-- the record), then the handler, as its owner, within the time
			-- limit, with the message's context; both publish with the
			-- message's correlation id unless they name one.  NULL: neither
			-- a mapping nor a handler
			ctx := hub._inbox_step(m.inbox_id, m.handler IS NOT NULL);
			IF ctx IS NOT NULL THEN
				IF m.handler IS NOT NULL THEN
					PERFORM hub._run_handler(m.handler, m.payload, m.message_type, ctx);
				END IF;
				PERFORM set_config('hub.inbox_correlation_id', '', true),
						set_config('hub.inbox_causation_id', '', true);
			END IF;
		EXCEPTION WHEN OTHERS THEN
			err := SQLSTATE || ': ' || SQLERRM;
		END;
		IF err IS NULL AND ctx IS NULL THEN
			PERFORM hub._inbox_settle(m.inbox_id, 'unhandled');
			unhandled := unhandled + 1;
		ELSIF err IS NULL THEN
			PERFORM hub._inbox_settle(m.inbox_id, 'done');
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
		END IF;
	END LOOP;
	RETURN NEXT;
END
$$;
COMMENT ON FUNCTION hub.process_inbox(integer) IS
'Process up to max ready inbox messages, each in its own subtransaction: a message with a declared mapping (hub.map_inbox) is applied to the canonical state with its canonical events, links and business exceptions; then its handler, if any, runs as the handler function''s owner within logistics_hub.user_code_timeout, with the message''s context; whatever either publishes carries the message''s correlation id unless it names one. Success (a business exception included) -> done; an error (a malformed message, a failing handler) -> retry_wait with exponential backoff, or dead after max_attempts, the error kept in last_error; neither mapping nor handler -> unhandled. Handlers run with search_path pg_catalog, pg_temp: qualify names or SET search_path on the handler. Returns the counts.';

-- 65_flow.sql (new)
-- ---------------------------------------------------------------- canonical event types

/*
 * The canonical events of the four lifecycles: the 0.2.0 catalogue has
 * some (order.created, shipment.delivered, ...); these are the rest.  Each
 * requires the key the hub always knows (<entity>_id); a state whose
 * 0.2.0 type requires more (order.released: warehouse) takes it from the
 * inbound record that moved the state.
 */
INSERT INTO hub.event_types (event_type, required_keys, description, builtin)
SELECT v.t, ARRAY[split_part(v.t, '.', 1) || '_id'] || v.extra, v.d, true
FROM (VALUES
	('order.picking', '{}'::text[], 'The warehouse started picking the order'),
	('order.in_transit', '{}', 'The order is moving with a carrier'),
	('order.out_for_delivery', '{}', 'The order is out for delivery'),
	('order.delivered', '{}', 'The order is delivered'),
	('order.closed', '{}', 'The order is closed (invoiced, complete)'),
	('order.exception', '{reason}', 'Something is wrong with the order (the exception overlay is raised)'),
	('order.exception_cleared', '{}', 'The order''s exception overlay is cleared'),
	('order.on_hold', '{reason}', 'The order is put on hold'),
	('order.hold_released', '{}', 'The order''s hold is released'),
	('shipment.planned', '{}', 'A shipment is planned'),
	('shipment.pickup_arrived', '{}', 'The carrier arrived at the pick-up location'),
	('shipment.out_for_delivery', '{}', 'The shipment is out for delivery'),
	('shipment.available_for_pickup', '{}', 'The shipment waits for the consignee at a pick-up point'),
	('shipment.return_to_sender', '{}', 'The shipment is on its way back to the shipper'),
	('shipment.returned', '{}', 'The shipment is back with the shipper'),
	('shipment.cancelled', '{}', 'The shipment is cancelled'),
	('shipment.exception_cleared', '{}', 'The shipment''s exception overlay is cleared'),
	('shipment.on_hold', '{reason}', 'The shipment is held'),
	('shipment.hold_released', '{}', 'The shipment''s hold is released'),
	('movement.planned', '{}', 'A stock movement is planned'),
	('movement.waiting_upstream', '{}', 'The movement waits for an earlier step'),
	('movement.awaiting_stock', '{}', 'The movement waits for stock'),
	('movement.partially_reserved', '{}', 'Part of the movement''s stock is reserved'),
	('movement.reserved', '{}', 'The movement''s stock is reserved'),
	('movement.in_progress', '{}', 'The movement is being carried out'),
	('movement.done', '{}', 'The movement is done'),
	('movement.cancelled', '{}', 'The movement is cancelled'),
	('movement.exception', '{reason}', 'Something is wrong with the movement'),
	('movement.exception_cleared', '{}', 'The movement''s exception overlay is cleared'),
	('movement.on_hold', '{reason}', 'The movement is held'),
	('movement.hold_released', '{}', 'The movement''s hold is released'),
	('return.requested', '{}', 'A return is requested'),
	('return.awaiting_item', '{}', 'The return waits for the item'),
	('return.in_transit_back', '{}', 'The returned item is on its way back'),
	('return.inspected', '{}', 'The returned item is inspected'),
	('return.closed', '{}', 'The return is closed'),
	('return.rejected', '{}', 'The return is rejected'),
	('return.cancelled', '{}', 'The return is cancelled'),
	('return.exception', '{reason}', 'Something is wrong with the return'),
	('return.exception_cleared', '{}', 'The return''s exception overlay is cleared'),
	('return.on_hold', '{reason}', 'The return is held'),
	('return.hold_released', '{}', 'The return''s hold is released')) v(t, extra, d);

-- ---------------------------------------------------------------- state events

CREATE TABLE hub.state_events (
	lifecycle	text NOT NULL CHECK (lifecycle IN ('order', 'shipment', 'movement', 'return')),
	state		text NOT NULL CHECK (hub.lifecycle_state_valid(lifecycle, state)
									 OR state IN ('exception', 'exception_cleared', 'on_hold', 'hold_released')),
	event_type	text NOT NULL REFERENCES hub.event_types ON UPDATE CASCADE,
	builtin		boolean NOT NULL DEFAULT false,
	PRIMARY KEY (lifecycle, state)
);
COMMENT ON TABLE hub.state_events IS
'Which canonical event a key publishes when its canonical state moves to a state (created, advanced or corrected), or when an overlay is raised or cleared (state exception, exception_cleared, on_hold, hold_released); published by hub.apply_status in the same transaction, once per move. A state without a row publishes nothing. Rows with builtin = true ship with the extension (not dumped by pg_dump).';
COMMENT ON COLUMN hub.state_events.state IS 'A state of the lifecycle, or one of the overlay changes exception, exception_cleared, on_hold, hold_released.';
COMMENT ON COLUMN hub.state_events.event_type IS 'The event type published (its contract in hub.event_types).';

INSERT INTO hub.state_events (lifecycle, state, event_type, builtin)
SELECT v.l, v.s, v.t, true FROM (VALUES
	('order', 'created', 'order.created'), ('order', 'released', 'order.released'),
	('order', 'allocated', 'order.allocated'), ('order', 'picking', 'order.picking'),
	('order', 'picked', 'order.picked'), ('order', 'packed', 'order.packed'),
	('order', 'shipped', 'order.shipped'), ('order', 'in_transit', 'order.in_transit'),
	('order', 'out_for_delivery', 'order.out_for_delivery'), ('order', 'delivered', 'order.delivered'),
	('order', 'closed', 'order.closed'), ('order', 'cancelled', 'order.cancelled'),
	('order', 'exception', 'order.exception'), ('order', 'exception_cleared', 'order.exception_cleared'),
	('order', 'on_hold', 'order.on_hold'), ('order', 'hold_released', 'order.hold_released'),
	('shipment', 'planned', 'shipment.planned'), ('shipment', 'label_created', 'shipment.label_created'),
	('shipment', 'pickup_arrived', 'shipment.pickup_arrived'), ('shipment', 'picked_up', 'shipment.dispatched'),
	('shipment', 'in_transit', 'shipment.in_transit'), ('shipment', 'out_for_delivery', 'shipment.out_for_delivery'),
	('shipment', 'available_for_pickup', 'shipment.available_for_pickup'),
	('shipment', 'delivered', 'shipment.delivered'), ('shipment', 'return_to_sender', 'shipment.return_to_sender'),
	('shipment', 'returned', 'shipment.returned'), ('shipment', 'cancelled', 'shipment.cancelled'),
	('shipment', 'exception', 'shipment.exception'), ('shipment', 'exception_cleared', 'shipment.exception_cleared'),
	('shipment', 'on_hold', 'shipment.on_hold'), ('shipment', 'hold_released', 'shipment.hold_released'),
	('movement', 'planned', 'movement.planned'), ('movement', 'waiting_upstream', 'movement.waiting_upstream'),
	('movement', 'awaiting_stock', 'movement.awaiting_stock'),
	('movement', 'partially_reserved', 'movement.partially_reserved'),
	('movement', 'reserved', 'movement.reserved'), ('movement', 'in_progress', 'movement.in_progress'),
	('movement', 'done', 'movement.done'), ('movement', 'cancelled', 'movement.cancelled'),
	('movement', 'exception', 'movement.exception'), ('movement', 'exception_cleared', 'movement.exception_cleared'),
	('movement', 'on_hold', 'movement.on_hold'), ('movement', 'hold_released', 'movement.hold_released'),
	('return', 'requested', 'return.requested'), ('return', 'authorized', 'return.authorized'),
	('return', 'awaiting_item', 'return.awaiting_item'), ('return', 'in_transit_back', 'return.in_transit_back'),
	('return', 'received', 'return.received'), ('return', 'inspected', 'return.inspected'),
	('return', 'resolved', 'return.resolved'), ('return', 'closed', 'return.closed'),
	('return', 'rejected', 'return.rejected'), ('return', 'cancelled', 'return.cancelled'),
	('return', 'exception', 'return.exception'), ('return', 'exception_cleared', 'return.exception_cleared'),
	('return', 'on_hold', 'return.on_hold'), ('return', 'hold_released', 'return.hold_released')) v(l, s, t);
SELECT pg_catalog.pg_extension_config_dump('hub.state_events', 'WHERE NOT builtin');

-- ---------------------------------------------------------------- exceptions

CREATE TABLE hub.exceptions (
	exception_id	bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	kind			text NOT NULL CHECK (kind IN ('unknown_code', 'conflict', 'not_owner', 'terminal',
												   'contract_violation')),
	lifecycle		text NOT NULL CHECK (lifecycle IN ('order', 'shipment', 'movement', 'return')),
	business_key	text NOT NULL,
	system			text,
	code			text NOT NULL DEFAULT '',
	detail			text,
	message			bigint,
	opened_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	reports			integer NOT NULL DEFAULT 1,
	last_message	bigint,
	last_reported_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	resolved_at		timestamptz,
	resolution		text,
	resolved_by		text,
	CHECK ((resolved_at IS NULL) = (resolution IS NULL))
);
-- one open exception per kind, key and code: the same report again counts on it
CREATE UNIQUE INDEX exceptions_open_idx ON hub.exceptions (lifecycle, business_key, kind, code)
	WHERE resolved_at IS NULL;
COMMENT ON TABLE hub.exceptions IS
'Business exceptions, which need a person rather than a retry: unknown_code (no mapping of a system''s status code), conflict (a report incomparable with the canonical state), not_owner (a state reported by a system that does not own it), terminal (a report about a key already in a terminal state, e.g. a pick for a cancelled order), contract_violation (a canonical event the record cannot satisfy). The message that raised one is done, not retried. One open row per kind, key and code; close it with hub.resolve_exception.';
COMMENT ON COLUMN hub.exceptions.code IS 'The status code reported (unknown_code, conflict, not_owner, terminal) or the event type whose contract failed (contract_violation).';
COMMENT ON COLUMN hub.exceptions.message IS 'The hub.inbox message (inbox_id) that opened the exception; NULL when it came from a direct call.';
COMMENT ON COLUMN hub.exceptions.reports IS 'How many reports of it came while it was open (1: only the one that opened it).';
COMMENT ON COLUMN hub.exceptions.last_message IS 'The hub.inbox message of the latest report.';
-- the truth, dumped with the queue (85_backup.sql), with its links
SELECT pg_catalog.pg_extension_config_dump('hub.exceptions', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hub.exceptions', 'exception_id')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump('hub.entity_links', '');
COMMENT ON COLUMN hub.exceptions.resolved_by IS 'The session user that resolved it (hub.resolve_exception, audited in hub.operator_audit).';

/*
 * _open_exception --- open an exception, or count the report on the open
 * one of the same kind, key and code (the partial unique index serializes
 * concurrent reports); returns its id.
 */
CREATE FUNCTION hub._open_exception(p_kind text, p_lifecycle text, p_business_key text, p_system text,
									p_code text, p_detail text, p_message bigint)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v_id bigint;
BEGIN
	-- (plpgsql: a SQL function would be planned again in every message's subtransaction)
	INSERT INTO hub.exceptions AS x (kind, lifecycle, business_key, system, code, detail, message, last_message)
	VALUES (p_kind, p_lifecycle, p_business_key, p_system, coalesce(p_code, ''), p_detail, p_message, p_message)
	ON CONFLICT (lifecycle, business_key, kind, code) WHERE resolved_at IS NULL
	DO UPDATE SET reports = x.reports + 1, last_message = EXCLUDED.message,
				  last_reported_at = now(), detail = EXCLUDED.detail, system = EXCLUDED.system
	RETURNING x.exception_id INTO v_id;
	RETURN v_id;
END
$$;
COMMENT ON FUNCTION hub._open_exception(text, text, text, text, text, text, bigint) IS
'API: Private. Open a business exception in hub.exceptions, or count the report on the open one of the same kind, key and code; returns its id.';

-- ---------------------------------------------------------------- contracts

CREATE FUNCTION hub.contract_violation(event_type text, payload jsonb) RETURNS text
	AS 'MODULE_PATHNAME', 'hub_contract_violation' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION hub.contract_violation(text, jsonb) IS
'Why an event of this type with this payload would be refused by the contract check (a required key missing or null, a key of the wrong type, a payload that is not an object, an unknown type when logistics_hub.unknown_event_types = reject), or NULL when it would be published. Raises nothing.';

/*
 * event_body with the contract version: what the claim renders (45_delivery
 * .sql), the eight-argument form (50_dispatch.sql) plus the event's
 * hub.outbox.contract_version, as the canonical event's contract_version and
 * the CloudEvents extension attribute contractversion (both left out when
 * NULL).  The same C function; the eight-argument form's bytes are unchanged.
 */
CREATE FUNCTION hub.event_body(body_format text, event_id uuid, event_type text, aggregate_id text,
		occurred_at timestamptz, correlation_id text, payload jsonb, source text, contract_version integer)
RETURNS text
	AS 'MODULE_PATHNAME', 'hub_event_body' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION hub.event_body(text, uuid, text, text, timestamptz, text, jsonb, text, integer) IS
'The JSON a receiver gets for one event, with the version of its contract: the canonical event (id, type, aggregate_id, occurred_at, correlation_id, data, contract_version) or, for body_format cloudevents or cloudevents_batch, a CloudEvents 1.0 structured-mode event with the extension attribute contractversion; a NULL version is left out. The time is in UTC whatever the session''s TimeZone.';

-- ---------------------------------------------------------------- canonical events

/*
 * _json_time --- a time read from an inbound record: an ISO 8601 string
 * with an offset (2026-05-04T10:00:00+02:00, ...Z), one without (naive:
 * taken as UTC, whatever the session's TimeZone), a date (midnight UTC),
 * or a number of seconds since 1970 (Unix time).  22007 for anything else
 * (a technical failure of the message: retried, then dead).
 */
CREATE FUNCTION hub._json_time(value jsonb) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s text;
BEGIN
	IF value IS NULL OR jsonb_typeof(value) = 'null' THEN
		RETURN NULL;
	ELSIF jsonb_typeof(value) = 'number' THEN
		RETURN to_timestamp((value #>> '{}')::float8);
	ELSIF jsonb_typeof(value) = 'string' THEN
		s := btrim(value #>> '{}');
		IF s ~ '^\d{4}-\d\d-\d\d([Tt ]\d\d:\d\d(:\d\d(\.\d+)?)?)?$' THEN
			RETURN s::timestamp AT TIME ZONE 'UTC';
		ELSIF s ~ '^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d(:\d\d(\.\d+)?)? ?([Zz]|[+-]\d\d(:?\d\d)?)$' THEN
			RETURN s::timestamptz;
		END IF;
	END IF;
	RAISE EXCEPTION 'invalid time in an inbound record: %', left(value::text, 100)
		USING ERRCODE = 'invalid_datetime_format',
			  HINT = 'Times are ISO 8601 strings with or without an offset (naive times are UTC), or Unix seconds.';
END
$$;
COMMENT ON FUNCTION hub._json_time(jsonb) IS
'API: Private. A time read from an inbound record: ISO 8601 with an offset, without one (naive, taken as UTC), a date (midnight UTC), or Unix seconds; 22007 otherwise.';

/*
 * _state_event --- publish the canonical event of one change of a key
 * (on: the state it moved to, or exception, exception_cleared, on_hold,
 * hold_released), as hub.state_events configures, in the caller's
 * transaction.  The payload: <entity>_id and business_key, lifecycle,
 * state and previous_state, change (created, advanced, corrected, raised,
 * cleared), the reporting system, occurred_at (UTC), the overlay and its
 * reason, the partner, a shipment's carrier when the contract needs it
 * (the partner, else the reporting system if it is a carrier), the parent key (and
 * <parent entity>_id) where known, and, from the inbound record, every
 * required key of the contract the hub does not know itself.  When the
 * contract still cannot be met, nothing is published and a
 * contract_violation exception names the reason (the state has moved:
 * the truth is kept, the event waits for a person).  Returns the event id,
 * or NULL when nothing was published.
 */
CREATE FUNCTION hub._state_event(p_lifecycle text, p_business_key text, p_on text, p_state text,
		p_previous_state text, p_change text, p_system text, p_occurred_at timestamptz, p_reason text,
		p_partner text, p_parent_lifecycle text, p_parent_key text, p_record jsonb, p_inbox_id bigint)
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v_type		text;
	v_keys		text[];
	v_payload	jsonb;
	v_problem	text;
	k			text;
BEGIN
	SELECT se.event_type, et.required_keys INTO v_type, v_keys
	FROM hub.state_events se
	JOIN hub.event_types et ON et.event_type = se.event_type
	WHERE se.lifecycle = $1 AND se.state = $3;
	IF v_type IS NULL THEN
		RETURN NULL;
	END IF;
	v_payload := jsonb_build_object($1 || '_id', $2, 'business_key', $2, 'lifecycle', $1,
		'state', $4, 'previous_state', $5, 'change', $6, 'system', $7,
		'occurred_at', to_char($8 AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'));
	IF $3 IN ('exception', 'exception_cleared', 'on_hold', 'hold_released') THEN
		v_payload := v_payload || jsonb_build_object(
			'overlay', CASE WHEN $3 IN ('exception', 'exception_cleared') THEN 'exception' ELSE 'on_hold' END,
			'reason', $9);
	END IF;
	IF $10 IS NOT NULL THEN
		v_payload := v_payload || jsonb_build_object('partner', $10);
	END IF;
	-- a shipment's carrier: the partner (a SCAC), else a reporting carrier system
	IF $1 = 'shipment' AND 'carrier' = ANY (v_keys) THEN
		v_payload := v_payload || jsonb_build_object('carrier',
			coalesce($10, (SELECT sy.system FROM hub.systems sy
						   WHERE sy.system = $7 AND sy.qualifier = '' AND sy.role = 'carrier')));
	END IF;
	IF $12 IS NOT NULL THEN
		v_payload := v_payload || jsonb_build_object('parent_lifecycle', $11, 'parent_key', $12);
		IF $11 <> $1 THEN
			v_payload := v_payload || jsonb_build_object($11 || '_id', $12);
		END IF;
	END IF;
	-- the source record's fields the contract needs
	IF $13 IS NOT NULL AND jsonb_typeof($13) = 'object' THEN
		FOREACH k IN ARRAY v_keys LOOP
			IF NOT v_payload ? k AND $13 ? k THEN
				v_payload := v_payload || jsonb_build_object(k, $13 -> k);
			END IF;
		END LOOP;
	END IF;
	v_problem := hub.contract_violation(v_type, v_payload);
	IF v_problem IS NOT NULL THEN
		PERFORM hub._open_exception('contract_violation', $1, $2, $7, v_type,
									v_problem || ' (the canonical event of ' || $3 || ' was not published)', $14);
		RETURN NULL;
	END IF;
	-- (correlation and causation: those of the inbox message in process, if any)
	RETURN hub.publish(v_type, $2, v_payload, occurred_at => $8);
END
$$;
COMMENT ON FUNCTION hub._state_event(text, text, text, text, text, text, text, timestamptz, text, text, text, text, jsonb, bigint) IS
'API: Private. Publish the canonical event (hub.state_events) of one change of a key, its payload completed from the inbound record where the contract needs it; a contract the change cannot satisfy opens a contract_violation exception instead. Returns the event id or NULL.';

-- ---------------------------------------------------------------- readiness

CREATE TABLE hub.readiness_rules (
	name			text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]*$' AND length(name) <= 63),
	event_type		text NOT NULL REFERENCES hub.event_types ON UPDATE CASCADE,
	lifecycle		text NOT NULL CHECK (lifecycle IN ('order', 'shipment', 'movement', 'return')),
	state			text NOT NULL,
	child_lifecycle	text CHECK (child_lifecycle IN ('order', 'shipment', 'movement', 'return')),
	child_state		text,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	CHECK (hub.lifecycle_state_valid(lifecycle, state)),
	CHECK ((child_lifecycle IS NULL) = (child_state IS NULL)),
	CHECK (child_state IS NULL OR hub.lifecycle_state_valid(child_lifecycle, child_state))
);
COMMENT ON TABLE hub.readiness_rules IS
'Readiness rules (hub.create_readiness_rule): publish event_type once per key of lifecycle when the key is at or past state and, with a child lifecycle, it has at least one linked child (hub.entity_links) and every one is at or past child_state; never while an open exception (hub.exceptions) or an overlay (on hold, exception) sits on the key or a child. Evaluated whenever a member''s state or overlay moves and when an exception is resolved.';
COMMENT ON COLUMN hub.readiness_rules.state IS 'The key must be at this state or past it (reachable forward from it, and not cancelled, rejected, return_to_sender or returned).';
COMMENT ON COLUMN hub.readiness_rules.child_state IS 'Every child of child_lifecycle linked to the key must be at this state or past it; NULL: no children needed.';

CREATE TABLE hub.readiness_fired (
	rule			text NOT NULL REFERENCES hub.readiness_rules ON DELETE CASCADE ON UPDATE CASCADE,
	business_key	text NOT NULL,
	event_id		uuid,
	fired_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (rule, business_key)
);
COMMENT ON TABLE hub.readiness_fired IS
'Keys a readiness rule has fired for (once per rule and key, whatever happens to the key afterwards), with the event published.';
SELECT pg_catalog.pg_extension_config_dump('hub.readiness_rules', '');
SELECT pg_catalog.pg_extension_config_dump('hub.readiness_fired', '');

/*
 * _at_or_past --- is a key in state cur at or past state target of its
 * lifecycle?  At it, or reachable forward from it; a cancelled, rejected or
 * returned key is never "past" anything.
 */
CREATE FUNCTION hub._at_or_past(lifecycle text, cur text, target text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT cur IS NOT NULL AND cur NOT IN ('cancelled', 'rejected', 'return_to_sender', 'returned')
		AND (cur = target
			 OR hub._classify_transition(lifecycle, target, cur, false) IN ('advance', 'advance_with_gap'))
$$;
COMMENT ON FUNCTION hub._at_or_past(text, text, text) IS
'API: Private. true when state cur is target or reachable forward from it, and not cancelled, rejected, return_to_sender or returned.';

/*
 * _readiness_blocked --- does an overlay or an open exception sit on the key?
 */
CREATE FUNCTION hub._readiness_blocked(p_lifecycle text, p_key text, p_on_hold boolean, p_exception text)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(p_on_hold, false) OR p_exception IS NOT NULL
		OR EXISTS (SELECT FROM hub.exceptions x
				   WHERE x.lifecycle = p_lifecycle AND x.business_key = p_key AND x.resolved_at IS NULL)
$$;
COMMENT ON FUNCTION hub._readiness_blocked(text, text, boolean, text) IS
'API: Private. true when the key is on hold, has the exception overlay or an open hub.exceptions row: readiness waits.';

/*
 * _readiness_try --- fire rule p_rule for key p_key if it is ready and has
 * not fired.  The key's hub.entity_state row is locked first: two children
 * finishing at once in two transactions are then evaluated one after the
 * other, the second seeing the first (READ COMMITTED), so the last child
 * fires the rule and none is missed; hub.readiness_fired's key makes it
 * once.  Returns the event id, or NULL.
 */
CREATE FUNCTION hub._readiness_try(p_rule text, p_key text)
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r			hub.readiness_rules;
	e			hub.entity_state;
	v_children	jsonb;
	v_ready		boolean;
	v_payload	jsonb;
	v_problem	text;
	v_id		uuid;
BEGIN
	SELECT * INTO r FROM hub.readiness_rules rr WHERE rr.name = p_rule;
	IF NOT FOUND OR EXISTS (SELECT FROM hub.readiness_fired f WHERE f.rule = p_rule AND f.business_key = p_key) THEN
		RETURN NULL;
	END IF;
	SELECT * INTO e FROM hub.entity_state es
	WHERE es.lifecycle = r.lifecycle AND es.business_key = p_key FOR UPDATE;
	IF NOT FOUND OR NOT hub._at_or_past(r.lifecycle, e.state, r.state)
	   OR hub._readiness_blocked(r.lifecycle, p_key, e.on_hold, e.exception_reason) THEN
		RETURN NULL;
	END IF;
	IF r.child_lifecycle IS NOT NULL THEN
		SELECT count(*) > 0
			   AND coalesce(bool_and(hub._at_or_past(r.child_lifecycle, c.state, r.child_state)
									 AND NOT hub._readiness_blocked(r.child_lifecycle, l.child_key,
																	c.on_hold, c.exception_reason)), false),
			   jsonb_agg(l.child_key ORDER BY l.child_key)
		INTO v_ready, v_children
		FROM hub.entity_links l
		LEFT JOIN hub.entity_state c ON c.lifecycle = l.child_lifecycle AND c.business_key = l.child_key
		WHERE l.parent_lifecycle = r.lifecycle AND l.parent_key = p_key
		  AND l.child_lifecycle = r.child_lifecycle;
		IF NOT v_ready THEN
			RETURN NULL;
		END IF;
	END IF;
	v_payload := jsonb_build_object(r.lifecycle || '_id', p_key, 'business_key', p_key, 'lifecycle', r.lifecycle,
									'state', e.state, 'rule', r.name)
				 || CASE WHEN v_children IS NOT NULL
						 THEN jsonb_build_object('children', v_children, 'child_lifecycle', r.child_lifecycle)
						 ELSE '{}' END;
	v_problem := hub.contract_violation(r.event_type, v_payload);
	IF v_problem IS NOT NULL THEN
		PERFORM hub._open_exception('contract_violation', r.lifecycle, p_key, NULL, r.event_type,
									v_problem || ' (readiness rule ' || r.name || ' did not fire)', NULL);
		RETURN NULL;
	END IF;
	INSERT INTO hub.readiness_fired (rule, business_key) VALUES (p_rule, p_key) ON CONFLICT DO NOTHING;
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	v_id := hub.publish(r.event_type, p_key, v_payload);
	UPDATE hub.readiness_fired f SET event_id = v_id WHERE f.rule = p_rule AND f.business_key = p_key;
	RETURN v_id;
END
$$;
COMMENT ON FUNCTION hub._readiness_try(text, text) IS
'API: Private. Fire a readiness rule for a key when it is ready (state, children, no exception or overlay) and has not fired: publish its event and remember the key. Returns the event id or NULL.';

/*
 * _readiness_evaluate --- after a change of a key: the rules of its
 * lifecycle for the key itself, and the rules of its parents for which it
 * is a child.
 */
CREATE FUNCTION hub._readiness_evaluate(p_lifecycle text, p_key text)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	x		record;
	fired	integer := 0;
BEGIN
	FOR x IN
		SELECT rr.name, p_key AS key FROM hub.readiness_rules rr WHERE rr.lifecycle = p_lifecycle
		UNION ALL
		SELECT rr.name, l.parent_key FROM hub.entity_links l
		JOIN hub.readiness_rules rr ON rr.lifecycle = l.parent_lifecycle AND rr.child_lifecycle = l.child_lifecycle
		WHERE l.child_lifecycle = p_lifecycle AND l.child_key = p_key
		ORDER BY 2, 1
	LOOP
		IF hub._readiness_try(x.name, x.key) IS NOT NULL THEN
			fired := fired + 1;
		END IF;
	END LOOP;
	RETURN fired;
END
$$;
COMMENT ON FUNCTION hub._readiness_evaluate(text, text) IS
'API: Private. Evaluate the readiness rules a change of a key can complete: those of its lifecycle for the key, those of its parents for them. Returns how many fired.';

CREATE FUNCTION hub.create_readiness_rule(name text, event_type text, lifecycle text, state text,
		child_lifecycle text DEFAULT NULL, child_state text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF name IS NULL OR name !~ '^[a-z][a-z0-9_]*$' OR length(name) > 63 THEN
		RAISE EXCEPTION 'invalid readiness rule name: "%"', name
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Name a rule in lower case letters, digits and _ (at most 63), e.g. order_ready_for_dispatch.';
	END IF;
	IF lifecycle IS NULL OR lifecycle NOT IN ('order', 'shipment', 'movement', 'return')
	   OR (child_lifecycle IS NOT NULL AND child_lifecycle NOT IN ('order', 'shipment', 'movement', 'return')) THEN
		RAISE EXCEPTION 'unknown lifecycle: "%"', coalesce(CASE WHEN lifecycle IN ('order', 'shipment', 'movement', 'return')
																THEN child_lifecycle END, lifecycle)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The lifecycles are order, shipment, movement and return.';
	END IF;
	IF state IS NULL OR NOT hub.lifecycle_state_valid(lifecycle, state) THEN
		RAISE EXCEPTION 'unknown % state: "%"', lifecycle, state
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = format('The states are the labels of hub.%s_status.', lifecycle);
	END IF;
	IF (child_lifecycle IS NULL) <> (child_state IS NULL) THEN
		RAISE EXCEPTION 'child_lifecycle and child_state go together'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF child_state IS NOT NULL AND NOT hub.lifecycle_state_valid(child_lifecycle, child_state) THEN
		RAISE EXCEPTION 'unknown % state: "%"', child_lifecycle, child_state
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = format('The states are the labels of hub.%s_status.', child_lifecycle);
	END IF;
	IF event_type IS NULL OR NOT EXISTS (SELECT FROM hub.event_types t WHERE t.event_type = create_readiness_rule.event_type) THEN
		RAISE EXCEPTION 'unknown event type: "%"', event_type
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = format('Register its contract first: INSERT INTO hub.event_types (event_type, required_keys) VALUES (%L, ''{%s_id}'');',
								event_type, lifecycle);
	END IF;
	INSERT INTO hub.readiness_rules AS r (name, event_type, lifecycle, state, child_lifecycle, child_state)
	VALUES (create_readiness_rule.name, create_readiness_rule.event_type, create_readiness_rule.lifecycle,
			create_readiness_rule.state, create_readiness_rule.child_lifecycle, create_readiness_rule.child_state)
	ON CONFLICT ON CONSTRAINT readiness_rules_pkey DO UPDATE
	SET event_type = EXCLUDED.event_type, lifecycle = EXCLUDED.lifecycle, state = EXCLUDED.state,
		child_lifecycle = EXCLUDED.child_lifecycle, child_state = EXCLUDED.child_state;
END
$$;
COMMENT ON FUNCTION hub.create_readiness_rule(text, text, text, text, text, text) IS
'Create (or replace) a readiness rule: publish event_type once per key of lifecycle when the key is at or past state and, with child_lifecycle and child_state, every child linked to it (at least one) is at or past child_state; never while an open exception or overlay sits on the key or a child. The event type must be in hub.event_types (its payload: <entity>_id, business_key, lifecycle, state, rule, children). Keys already ready fire at their next change. 22023 for a bad name, lifecycle, state or event type.';

CREATE VIEW hub.readiness_pending AS
SELECT r.name AS rule, r.event_type, e.lifecycle, e.business_key, e.state,
	   r.child_lifecycle, r.child_state, c.children, c.children_ready,
	   hub._readiness_blocked(e.lifecycle, e.business_key, e.on_hold, e.exception_reason)
		 OR coalesce(c.children_blocked, false) AS blocked
FROM hub.readiness_rules r
JOIN hub.entity_state e ON e.lifecycle = r.lifecycle AND hub._at_or_past(e.lifecycle, e.state, r.state)
LEFT JOIN LATERAL (
	SELECT count(*)::integer AS children,
		   count(*) FILTER (WHERE hub._at_or_past(l.child_lifecycle, ch.state, r.child_state))::integer AS children_ready,
		   bool_or(hub._readiness_blocked(l.child_lifecycle, l.child_key, ch.on_hold, ch.exception_reason)) AS children_blocked
	FROM hub.entity_links l
	LEFT JOIN hub.entity_state ch ON ch.lifecycle = l.child_lifecycle AND ch.business_key = l.child_key
	WHERE r.child_lifecycle IS NOT NULL AND l.parent_lifecycle = e.lifecycle
	  AND l.parent_key = e.business_key AND l.child_lifecycle = r.child_lifecycle) c ON true
WHERE NOT EXISTS (SELECT FROM hub.readiness_fired f WHERE f.rule = r.name AND f.business_key = e.business_key);
COMMENT ON VIEW hub.readiness_pending IS
'Keys at or past a readiness rule''s state for which it has not fired yet: how many children are linked and how many are ready, and whether an open exception or overlay on the key or a child blocks it.';

-- ---------------------------------------------------------------- resolve

CREATE FUNCTION hub.resolve_exception(exception_id bigint, resolution text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	x	hub.exceptions;
BEGIN
	IF resolution IS NULL OR btrim(resolution) = '' THEN
		RAISE EXCEPTION 'an exception''s resolution must say what was decided'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	UPDATE hub.exceptions e
	SET resolved_at = now(), resolution = resolve_exception.resolution, resolved_by = session_user
	WHERE e.exception_id = resolve_exception.exception_id AND e.resolved_at IS NULL
	RETURNING * INTO x;
	IF NOT FOUND THEN
		RETURN false;
	END IF;
	PERFORM hub._audit('resolve_exception', 'exception:' || x.exception_id, resolution,
					   jsonb_build_object('kind', x.kind, 'lifecycle', x.lifecycle,
										  'business_key', x.business_key, 'code', x.code));
	-- a readiness rule the exception held back may fire now
	IF EXISTS (SELECT FROM hub.readiness_rules) THEN
		PERFORM hub._readiness_evaluate(x.lifecycle, x.business_key);
	END IF;
	RETURN true;
END
$$;
COMMENT ON FUNCTION hub.resolve_exception(bigint, text) IS
'Close an open business exception with what was decided (22023 when empty); audited in hub.operator_audit (action resolve_exception). Readiness rules the exception held back are evaluated again. Returns false when the exception does not exist or is already resolved. The canonical state is not changed: apply a decided state with hub.apply_status.';

-- ---------------------------------------------------------------- mappings

CREATE TABLE hub.inbox_mappings (
	message_pattern		text PRIMARY KEY CHECK (message_pattern ~ '^[^*]*\*?$' AND message_pattern <> ''),
	lifecycle			text NOT NULL CHECK (lifecycle IN ('order', 'shipment', 'movement', 'return')),
	system				text NOT NULL,
	key_path			jsonpath NOT NULL,
	code_path			jsonpath NOT NULL,
	occurred_at_path	jsonpath,
	qualifier_path		jsonpath,
	partner_path		jsonpath,
	parent_path			jsonpath,
	parent_lifecycle	text NOT NULL DEFAULT 'order' CHECK (parent_lifecycle IN ('order', 'shipment', 'movement', 'return')),
	children_path		jsonpath,
	child_lifecycle		text NOT NULL DEFAULT 'shipment' CHECK (child_lifecycle IN ('order', 'shipment', 'movement', 'return')),
	max_attempts		integer NOT NULL DEFAULT 5 CHECK (max_attempts BETWEEN 1 AND 1000),
	retry_base			interval NOT NULL DEFAULT '1 second'
						CHECK (retry_base BETWEEN '0'::interval AND '1 day'::interval),
	created_at			timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE hub.inbox_mappings IS
'Declared mappings of inbound messages (hub.map_inbox): messages whose type matches message_pattern (exact, or a prefix ending in *; the longest wins) are applied by hub.process_inbox to lifecycle as reports of system, the business key, status code, time, qualifier, partner, parent and children read from the payload with jsonpaths. A message whose pattern also has a handler is mapped first, then handled, in one subtransaction.';
COMMENT ON COLUMN hub.inbox_mappings.key_path IS 'jsonpath of the business key (a string or number); a message where it does not resolve fails (retried, then dead).';
COMMENT ON COLUMN hub.inbox_mappings.code_path IS 'jsonpath of the system''s status code; a message where it does not resolve fails. An unknown code opens an unknown_code exception and the message is done.';
COMMENT ON COLUMN hub.inbox_mappings.occurred_at_path IS 'jsonpath of the time of the report (ISO 8601 with or without offset, naive = UTC, or Unix seconds); NULL: the message''s received_at. When set and not resolving, the message fails.';
COMMENT ON COLUMN hub.inbox_mappings.parent_path IS 'jsonpath of the parent''s key (a tracker names its order), of parent_lifecycle; linked in hub.entity_links. Optional in each record.';
COMMENT ON COLUMN hub.inbox_mappings.children_path IS 'jsonpath of the children''s keys (a pack record lists its packages: $.packages[*].id), of child_lifecycle; linked in hub.entity_links. Optional in each record.';
COMMENT ON COLUMN hub.inbox_mappings.max_attempts IS 'Failed runs (malformed messages) before a message without a handler is dead, 1 to 1000; with a handler, the handler''s setting counts.';
COMMENT ON COLUMN hub.inbox_mappings.retry_base IS 'Backoff after the first failure of a message without a handler, doubled after each further one up to a day; 0 to 1 day.';
SELECT pg_catalog.pg_extension_config_dump('hub.inbox_mappings', '');

/*
 * _jsonpath_arg --- a jsonpath argument of hub.map_inbox, checked: 22023
 * naming the argument for text that is not a jsonpath.
 */
CREATE FUNCTION hub._jsonpath_arg(what text, path text) RETURNS jsonpath
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN path::jsonpath;
EXCEPTION WHEN syntax_error OR invalid_text_representation OR invalid_parameter_value THEN
	RAISE EXCEPTION 'invalid jsonpath for %: "%"', what, path
		USING ERRCODE = 'invalid_parameter_value',
			  DETAIL = SQLERRM,
			  HINT = 'Write a jsonpath into the message payload, e.g. $.shipment.id or $.packages[*].sscc.';
END
$$;
COMMENT ON FUNCTION hub._jsonpath_arg(text, text) IS
'API: Private. text as a jsonpath; 22023 naming the argument when it is not one.';

CREATE FUNCTION hub.map_inbox(message_pattern text, lifecycle text, system text, key_path text, code_path text,
		occurred_at_path text DEFAULT NULL, qualifier_path text DEFAULT NULL, partner_path text DEFAULT NULL,
		parent_path text DEFAULT NULL, children_path text DEFAULT NULL,
		parent_lifecycle text DEFAULT 'order', child_lifecycle text DEFAULT 'shipment',
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
				  HINT = 'Use an exact message type, or a prefix followed by one trailing * (wms.shipment.*).';
	END IF;
	IF lifecycle IS NULL OR lifecycle NOT IN ('order', 'shipment', 'movement', 'return')
	   OR parent_lifecycle IS NULL OR parent_lifecycle NOT IN ('order', 'shipment', 'movement', 'return')
	   OR child_lifecycle IS NULL OR child_lifecycle NOT IN ('order', 'shipment', 'movement', 'return') THEN
		RAISE EXCEPTION 'unknown lifecycle: "%"',
			CASE WHEN lifecycle IS NULL OR lifecycle NOT IN ('order', 'shipment', 'movement', 'return') THEN lifecycle
				 WHEN parent_lifecycle IS NULL OR parent_lifecycle NOT IN ('order', 'shipment', 'movement', 'return') THEN parent_lifecycle
				 ELSE child_lifecycle END
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The lifecycles are order, shipment, movement and return.';
	END IF;
	IF system IS NULL OR NOT EXISTS (SELECT FROM hub.systems s WHERE s.system = map_inbox.system) THEN
		RAISE EXCEPTION 'unknown system: "%"', system
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Every reporting system needs a role (erp, wms, tms, carrier or portal).',
				  HINT = format('Add it with INSERT INTO hub.systems (system, role) VALUES (%L, ''wms'').', system);
	END IF;
	IF key_path IS NULL OR code_path IS NULL THEN
		RAISE EXCEPTION 'a mapping needs key_path and code_path'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM hub._check_setting('max_attempts', max_attempts BETWEEN 1 AND 1000, max_attempts::text,
							   'between 1 and 1000');
	PERFORM hub._check_setting('retry_base', retry_base BETWEEN '0'::interval AND '1 day'::interval,
							   retry_base::text, 'between 0 and 1 day');
	INSERT INTO hub.inbox_mappings AS m (message_pattern, lifecycle, system, key_path, code_path,
		occurred_at_path, qualifier_path, partner_path, parent_path, parent_lifecycle, children_path,
		child_lifecycle, max_attempts, retry_base)
	VALUES (map_inbox.message_pattern, map_inbox.lifecycle, map_inbox.system,
			hub._jsonpath_arg('key_path', map_inbox.key_path),
			hub._jsonpath_arg('code_path', map_inbox.code_path),
			hub._jsonpath_arg('occurred_at_path', map_inbox.occurred_at_path),
			hub._jsonpath_arg('qualifier_path', map_inbox.qualifier_path),
			hub._jsonpath_arg('partner_path', map_inbox.partner_path),
			hub._jsonpath_arg('parent_path', map_inbox.parent_path), map_inbox.parent_lifecycle,
			hub._jsonpath_arg('children_path', map_inbox.children_path), map_inbox.child_lifecycle,
			map_inbox.max_attempts, map_inbox.retry_base)
	ON CONFLICT ON CONSTRAINT inbox_mappings_pkey DO UPDATE
	SET lifecycle = EXCLUDED.lifecycle, system = EXCLUDED.system, key_path = EXCLUDED.key_path,
		code_path = EXCLUDED.code_path, occurred_at_path = EXCLUDED.occurred_at_path,
		qualifier_path = EXCLUDED.qualifier_path, partner_path = EXCLUDED.partner_path,
		parent_path = EXCLUDED.parent_path, parent_lifecycle = EXCLUDED.parent_lifecycle,
		children_path = EXCLUDED.children_path, child_lifecycle = EXCLUDED.child_lifecycle,
		max_attempts = EXCLUDED.max_attempts, retry_base = EXCLUDED.retry_base;
	-- messages that found neither handler nor mapping before are processed again
	UPDATE hub.inbox AS i SET state = 'new', next_attempt_at = now(), processed_at = NULL
	WHERE i.state = 'unhandled'
	  AND hub._inbox_pattern_matches(map_inbox.message_pattern, i.message_type);
END
$$;
COMMENT ON FUNCTION hub.map_inbox(text, text, text, text, text, text, text, text, text, text, text, text, integer, interval) IS
'Declare (or replace) how messages of a type pattern (exact, or a prefix ending in *) are applied: as reports of system for lifecycle, the business key, status code and, optionally, time (ISO 8601 with or without offset, naive = UTC, or Unix seconds; default: received_at), qualifier, partner, parent key and children keys read from the payload with jsonpaths (checked here: 22023 for a bad one). hub.process_inbox then maps the code (hub.status_map), applies it to the canonical state, publishes the canonical events and links parent and children (hub.entity_links); an unknown code, a conflict, a non-owner report or a report on a terminal key opens a hub.exceptions row and the message is done. Unhandled messages the pattern matches become new again.';

/*
 * _inbox_mapping --- the mapping of a message type: the longest matching
 * pattern, an exact one first (as for handlers); all NULL when none.
 */
CREATE FUNCTION hub._inbox_mapping(message_type text)
RETURNS hub.inbox_mappings
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT m.* FROM hub.inbox_mappings m
	WHERE hub._inbox_pattern_matches(m.message_pattern, $1)
	ORDER BY m.message_pattern = $1 DESC, length(m.message_pattern) DESC
	LIMIT 1
$$;
COMMENT ON FUNCTION hub._inbox_mapping(text) IS
'API: Private. The declared mapping (hub.inbox_mappings) of a message type: the longest matching pattern; a row of NULLs when none matches.';

/*
 * _inbox_not_a_value --- 22023 for a path that finds an object or array
 * where a value (key, code, qualifier, partner, parent) was expected: a
 * malformed inbound message (a technical failure: retried, then dead).
 */
CREATE FUNCTION hub._inbox_not_a_value(what text, path jsonpath, v jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RAISE EXCEPTION '% path % finds a JSON % where a value was expected', what, path, jsonb_typeof(v)
		USING ERRCODE = 'invalid_parameter_value';
END
$$;
COMMENT ON FUNCTION hub._inbox_not_a_value(text, jsonpath, jsonb) IS
'API: Private. Raise 22023: a mapping''s path found an object or array where a value was expected (a malformed message).';

/*
 * _inbox_step --- the hub's part of processing one message, inside
 * hub.process_inbox's subtransaction for it.  Finds the message's mapping
 * (an exact pattern by its key, else the longest matching prefix); with
 * neither mapping nor handler returns NULL (unhandled).  Otherwise makes
 * the message's context the transaction's (hub.inbox_correlation_id and
 * hub.inbox_causation_id, which hub.publish takes when it is given none)
 * and, with a mapping, applies the message: reads key, code, time,
 * qualifier, partner, parent and children (a payload that is not an
 * object, or a key, code or configured time that does not resolve,
 * raises: a technical failure); links parent and children; maps the code
 * (unknown: an unknown_code exception, done) and applies it with its
 * canonical events (hub._apply_canonical); opens the business exceptions
 * of the outcome: terminal (a conflicting report, or a stale one made
 * after the state, about a key in a terminal state), conflict, not_owner.
 * Returns the context a handler gets ('{}' when there is no handler).
 * One function, every path read inline: it runs once per message.
 */
CREATE FUNCTION hub._inbox_step(p_inbox_id bigint, p_handled boolean)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	mp			hub.inbox_mappings;
	i			record;
	v_key		text;
	v_code		text;
	v_at		timestamptz;
	v_qual		text;
	v_partner	text;
	v_parent	text;
	v_mapped	hub.mapped_status;
	r			hub.apply_result;
	v_terminal	boolean;
	v			jsonb;
	p_payload	jsonb;
	p_message_type text;
BEGIN
	-- the message as stored, and only one being processed (claimed by the
	-- caller, FOR UPDATE): the step never applies a payload it is handed
	SELECT x.source, x.message_id, x.message_type, x.payload, x.correlation_id, x.aggregate_id,
		   x.received_at, x.attempts, x.state
	INTO i FROM hub.inbox x WHERE x.inbox_id = p_inbox_id;
	IF NOT FOUND OR i.state NOT IN ('new', 'retry_wait') THEN
		RAISE EXCEPTION 'inbox message % is not waiting to be processed', p_inbox_id
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	p_payload := i.payload;
	p_message_type := i.message_type;
	SELECT * INTO mp FROM hub.inbox_mappings m WHERE m.message_pattern = p_message_type;
	IF NOT FOUND THEN
		SELECT * INTO mp FROM hub.inbox_mappings m
		WHERE right(m.message_pattern, 1) = '*' AND starts_with(p_message_type, left(m.message_pattern, -1))
		ORDER BY length(m.message_pattern) DESC LIMIT 1;
		IF NOT FOUND AND NOT p_handled THEN
			RETURN NULL;
		END IF;
	END IF;
	PERFORM set_config('hub.inbox_correlation_id', coalesce(i.correlation_id, ''), true),
			set_config('hub.inbox_causation_id', 'inbox:' || p_inbox_id, true);

	IF mp.message_pattern IS NOT NULL THEN
		IF jsonb_typeof(p_payload) IS DISTINCT FROM 'object' THEN
			RAISE EXCEPTION 'the payload of a % message must be a JSON object', mp.lifecycle
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('Mapping "%s" reads it with jsonpaths.', mp.message_pattern);
		END IF;
		-- (each path read inline: SQL functions would be planned again in
		-- every message's subtransaction)
		v := jsonb_path_query_first(p_payload, mp.key_path);
		IF jsonb_typeof(v) IN ('object', 'array') THEN
			PERFORM hub._inbox_not_a_value('key', mp.key_path, v);
		END IF;
		v_key := v #>> '{}';
		v := jsonb_path_query_first(p_payload, mp.code_path);
		IF jsonb_typeof(v) IN ('object', 'array') THEN
			PERFORM hub._inbox_not_a_value('code', mp.code_path, v);
		END IF;
		v_code := v #>> '{}';
		IF v_key IS NULL OR v_key = '' OR v_code IS NULL OR v_code = '' THEN
			RAISE EXCEPTION 'the % path % finds nothing in the message',
				CASE WHEN v_key IS NULL OR v_key = '' THEN 'key' ELSE 'code' END,
				CASE WHEN v_key IS NULL OR v_key = '' THEN mp.key_path ELSE mp.code_path END
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('Mapping "%s" of %s records needs both.', mp.message_pattern, mp.lifecycle);
		END IF;
		PERFORM hub._check_key_length('business key', v_key);
		IF mp.occurred_at_path IS NULL THEN
			v_at := i.received_at;
		ELSE
			v_at := hub._json_time(jsonb_path_query_first(p_payload, mp.occurred_at_path));
			IF v_at IS NULL THEN
				RAISE EXCEPTION 'the occurred_at path % finds nothing in the message', mp.occurred_at_path
					USING ERRCODE = 'invalid_parameter_value';
			END IF;
		END IF;
		IF mp.qualifier_path IS NOT NULL THEN
			v := jsonb_path_query_first(p_payload, mp.qualifier_path);
			IF jsonb_typeof(v) IN ('object', 'array') THEN
				PERFORM hub._inbox_not_a_value('qualifier', mp.qualifier_path, v);
			END IF;
			v_qual := v #>> '{}';
		END IF;
		IF mp.partner_path IS NOT NULL THEN
			v := jsonb_path_query_first(p_payload, mp.partner_path);
			IF jsonb_typeof(v) IN ('object', 'array') THEN
				PERFORM hub._inbox_not_a_value('partner', mp.partner_path, v);
			END IF;
			v_partner := v #>> '{}';
		END IF;
		IF mp.parent_path IS NOT NULL THEN
			v := jsonb_path_query_first(p_payload, mp.parent_path);
			IF jsonb_typeof(v) IN ('object', 'array') THEN
				PERFORM hub._inbox_not_a_value('parent', mp.parent_path, v);
			END IF;
			v_parent := nullif(v #>> '{}', '');
		END IF;

		-- the links the record names (kept once; a key never links to itself)
		IF v_parent IS NOT NULL AND (mp.parent_lifecycle, v_parent) IS DISTINCT FROM (mp.lifecycle, v_key) THEN
			PERFORM hub._check_key_length('parent key', v_parent);
			INSERT INTO hub.entity_links (parent_lifecycle, parent_key, child_lifecycle, child_key, system, inbox_id)
			VALUES (mp.parent_lifecycle, v_parent, mp.lifecycle, v_key, mp.system, p_inbox_id)
			ON CONFLICT DO NOTHING;
		END IF;
		IF mp.children_path IS NOT NULL THEN
			INSERT INTO hub.entity_links (parent_lifecycle, parent_key, child_lifecycle, child_key, system, inbox_id)
			SELECT DISTINCT mp.lifecycle, v_key, mp.child_lifecycle, c.v #>> '{}', mp.system, p_inbox_id
			FROM jsonb_path_query(p_payload, mp.children_path) c(v)
			WHERE jsonb_typeof(c.v) IN ('string', 'number') AND c.v #>> '{}' <> ''
			  AND octet_length(c.v #>> '{}') <= 256
			  AND (mp.child_lifecycle, c.v #>> '{}') IS DISTINCT FROM (mp.lifecycle, v_key)
			ON CONFLICT DO NOTHING;
		END IF;
		-- (a message received without its business key keeps none: hub.trace
		-- by key finds it through the events and exceptions it caused,
		-- whose causation id and message name it; a second UPDATE of the
		-- row per message would cost more than the trace saves)

		v_mapped := hub.try_map_status(mp.system, mp.lifecycle, v_code, v_qual, v_partner);
		IF v_mapped::text IS NULL THEN
			PERFORM hub._open_exception('unknown_code', mp.lifecycle, v_key, mp.system, v_code,
				format('%s reported %s code "%s"%s, which hub.status_map does not map', mp.system, mp.lifecycle,
					   v_code, CASE WHEN v_qual IS NOT NULL THEN format(' (qualifier "%s")', v_qual) ELSE '' END),
				p_inbox_id);
		ELSE
			r := hub._apply_canonical(mp.lifecycle, v_key, mp.system, v_code, v_at, v_mapped.state, v_mapped.overlay,
									  v_mapped.reason, v_qual, false, p_payload, v_partner,
									  CASE WHEN v_parent IS NOT NULL THEN mp.parent_lifecycle END, v_parent, p_inbox_id);
			IF r.outcome IN ('conflict', 'stale') AND r.previous_state IS NOT NULL THEN
				SELECT s.terminal INTO v_terminal FROM hub.lifecycle_states(mp.lifecycle) s WHERE s.state = r.previous_state;
				IF v_terminal AND (r.outcome = 'conflict'
								   OR (SELECT h.regression_suspect FROM hub.status_history h WHERE h.history_id = r.history_id)) THEN
					r.outcome := 'terminal';
					PERFORM hub._open_exception('terminal', mp.lifecycle, v_key, mp.system, v_code,
						format('%s reported %s (%s) after the %s reached its terminal state %s',
							   mp.system, r.reported_state, v_code, mp.lifecycle, r.previous_state), p_inbox_id);
				END IF;
			END IF;
			IF r.outcome = 'conflict' THEN
				PERFORM hub._open_exception('conflict', mp.lifecycle, v_key, mp.system, v_code,
					format('%s reported %s (%s), incomparable with the canonical state %s',
						   mp.system, r.reported_state, v_code, r.previous_state), p_inbox_id);
			ELSIF r.outcome = 'not_owner' THEN
				PERFORM hub._open_exception('not_owner', mp.lifecycle, v_key, mp.system, v_code,
					format('%s reported %s (%s), a state its role does not own', mp.system, r.reported_state, v_code),
					p_inbox_id);
			END IF;
		END IF;
	END IF;

	IF NOT p_handled THEN
		RETURN '{}';
	END IF;
	RETURN jsonb_build_object('inbox_id', p_inbox_id, 'source', i.source, 'message_id', i.message_id,
							  'message_type', p_message_type, 'correlation_id', i.correlation_id,
							  'aggregate_id', i.aggregate_id, 'received_at', i.received_at,
							  'attempts', i.attempts);
END
$$;
COMMENT ON FUNCTION hub._inbox_step(bigint, boolean) IS
'API: Private. Within hub.process_inbox''s subtransaction of one message (which must be new or retry_wait, 55000 otherwise; its payload is read from hub.inbox): find its declared mapping (NULL when there is neither mapping nor handler: unhandled), set the message''s correlation and causation ids for hub.publish, apply the mapping (read the fields: 22023/22007 for a malformed message, retried, then dead; link parent and children; map and apply the code with its canonical events; open the business exceptions unknown_code, terminal, conflict, not_owner), and return the context a handler gets (inbox_id, source, message_id, message_type, correlation_id, aggregate_id, received_at, attempts), or {} without a handler.';

CREATE FUNCTION hub._run_handler(f regproc, payload jsonb, message_type text, context jsonb) RETURNS void
	AS 'MODULE_PATHNAME', 'hub_run_handler_context' LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION hub._run_handler(regproc, jsonb, text, jsonb) IS
'API: Private. Call an inbox handler as the function''s owner, within logistics_hub.user_code_timeout, with what its signature takes: (payload jsonb, message_type text, context jsonb), or (payload jsonb, message_type text), or (payload jsonb); settings it changes are undone when it returns.';

-- ---------------------------------------------------------------- privileges

REVOKE EXECUTE ON FUNCTION
	hub._open_exception(text, text, text, text, text, text, bigint),
	hub.contract_violation(text, jsonb),
	hub._json_time(jsonb),
	hub._state_event(text, text, text, text, text, text, text, timestamptz, text, text, text, text, jsonb, bigint),
	hub._at_or_past(text, text, text),
	hub._readiness_blocked(text, text, boolean, text),
	hub._readiness_try(text, text),
	hub._readiness_evaluate(text, text),
	hub.create_readiness_rule(text, text, text, text, text, text),
	hub.resolve_exception(bigint, text),
	hub._jsonpath_arg(text, text),
	hub.map_inbox(text, text, text, text, text, text, text, text, text, text, text, text, integer, interval),
	hub._inbox_mapping(text),
	hub._inbox_not_a_value(text, jsonpath, jsonb),
	hub._inbox_step(bigint, boolean),
	hub._run_handler(regproc, jsonb, text, jsonb),
	hub.event_body(text, uuid, text, text, timestamptz, text, jsonb, text, integer)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.event_body(text, uuid, text, text, timestamptz, text, jsonb, text, integer)
TO hub_reader, hub_writer, hub_worker;
-- (the CHECK of hub.event_types.key_types: whoever writes the catalogue)
REVOKE EXECUTE ON FUNCTION hub._key_types_valid(text[], jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub._key_types_valid(text[], jsonb) TO hub_admin;
GRANT EXECUTE ON FUNCTION
	hub.create_readiness_rule(text, text, text, text, text, text),
	hub.resolve_exception(bigint, text),
	hub.map_inbox(text, text, text, text, text, text, text, text, text, text, text, text, integer, interval)
TO hub_admin;
GRANT EXECUTE ON FUNCTION hub.contract_violation(text, jsonb) TO hub_reader, hub_writer;
-- (hub.process_inbox runs with its caller's rights: these are what it calls)
GRANT EXECUTE ON FUNCTION hub._inbox_mapping(text), hub._inbox_step(bigint, boolean),
	hub._run_handler(regproc, jsonb, text, jsonb) TO hub_admin;
GRANT EXECUTE ON FUNCTION hub._at_or_past(text, text, text), hub._readiness_blocked(text, text, boolean, text)
TO hub_reader;
GRANT SELECT ON hub.state_events, hub.exceptions, hub.readiness_rules, hub.readiness_fired,
	hub.readiness_pending, hub.inbox_mappings TO hub_reader;
GRANT INSERT, UPDATE, DELETE ON hub.state_events, hub.inbox_mappings, hub.readiness_rules TO hub_admin;
GRANT DELETE ON hub.readiness_fired TO hub_admin;

-- 70_operations.sql: hub.trace shows links and business exceptions
CREATE OR REPLACE FUNCTION hub.trace(correlation_id text DEFAULT NULL, aggregate text DEFAULT NULL)
RETURNS TABLE (at timestamptz, what text, event_id uuid, event_type text, aggregate_id text,
			   endpoint text, source text, message_id text, detail text)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
	IF trace.correlation_id IS NULL AND trace.aggregate IS NULL THEN
		RAISE EXCEPTION 'a trace needs a correlation id or an aggregate id'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Call hub.trace(''<correlation id>'') or hub.trace(aggregate => ''<business key>'').';
	END IF;
	RETURN QUERY
	WITH ev AS (
		SELECT o.event_id FROM hub.outbox o WHERE o.correlation_id = trace.correlation_id
		UNION
		SELECT o.event_id FROM hub.outbox o WHERE o.aggregate_id = trace.aggregate
	), o AS (
		SELECT o.* FROM hub.outbox o WHERE o.event_id IN (SELECT ev.event_id FROM ev)
	), inb AS (
		SELECT i.inbox_id FROM hub.inbox i WHERE i.correlation_id = trace.correlation_id
		UNION
		SELECT i.inbox_id FROM hub.inbox i WHERE i.aggregate_id = trace.aggregate
		UNION
		-- the messages that caused these events (a mapped record received
		-- without its business key: hub.process_inbox's causation id)
		SELECT substr(o.causation_id, 7)::bigint FROM o
		WHERE o.causation_id ~ '^inbox:[0-9]{1,18}$'
		UNION
		-- and those that opened the key's business exceptions
		SELECT m.id FROM hub.exceptions x, LATERAL (VALUES (x.message), (x.last_message)) m(id)
		WHERE trace.aggregate IS NOT NULL AND x.business_key = trace.aggregate AND m.id IS NOT NULL
	), i AS (
		SELECT i.* FROM hub.inbox i WHERE i.inbox_id IN (SELECT inb.inbox_id FROM inb)
	), dl AS (
		-- the deliveries of these events: their own, and the batches they
		-- are in (a scan of the batch deliveries: they have no index by event)
		SELECT o.event_id, d.delivery_id, d.endpoint_id, d.state, d.updated_at, d.last_error
		FROM o JOIN hub.deliveries d ON d.event_id = o.event_id
		UNION ALL
		SELECT o.event_id, d.delivery_id, d.endpoint_id, d.state, d.updated_at, d.last_error
		FROM o JOIN hub.deliveries d ON d.batch_events IS NOT NULL AND o.event_id = ANY (d.batch_events)
			AND d.event_id <> o.event_id
	)
	SELECT t.at, t.what, t.event_id, t.event_type, t.aggregate_id, t.endpoint, t.source, t.message_id, t.detail
	FROM (
	SELECT o.published_at AS at, 'published' AS what, o.event_id, o.event_type, o.aggregate_id,
		   NULL::text AS endpoint, NULL::text AS source, NULL::text AS message_id, o.payload::text AS detail,
		   o.seq AS ord
	FROM o
	UNION ALL
	SELECT a.at, 'attempt ' || a.attempt || ': ' || a.outcome, o.event_id, o.event_type, o.aggregate_id, e.name,
		   NULL, NULL, concat_ws(' ', a.http_status, a.error, a.latency_ms || ' ms'), o.seq
	FROM o
	JOIN dl d ON d.event_id = o.event_id
	JOIN hub.endpoints e ON e.endpoint_id = d.endpoint_id
	-- (an attempt of a lease group sent one of its events: that one's)
	JOIN hub.attempts a ON a.delivery_id = d.delivery_id AND (a.group_event_id IS NULL OR a.group_event_id = o.event_id)
	UNION ALL
	SELECT d.updated_at, 'delivery ' || d.state, o.event_id, o.event_type, o.aggregate_id, e.name,
		   NULL, NULL, d.last_error, o.seq
	FROM o
	JOIN dl d ON d.event_id = o.event_id
	JOIN hub.endpoints e ON e.endpoint_id = d.endpoint_id
	UNION ALL
	-- a polled record: the request that brought it (hub.poll_requests)
	SELECT r.at, 'polled', NULL::uuid, i.message_type, i.aggregate_id, e.name, i.source, i.message_id,
		   concat_ws(' ', 'GET', r.url, '->', coalesce(r.http_status::text, r.error),
					 '(page ' || r.page || ': ' || r.records || ' records, ' || r.new_records || ' new)'),
		   i.inbox_id
	FROM i
	JOIN hub.poll_requests r ON r.request_id = i.poll_request_id
	LEFT JOIN hub.pollers p ON p.poller_id = r.poller_id
	LEFT JOIN hub.endpoints e ON e.endpoint_id = p.endpoint_id
	UNION ALL
	SELECT i.received_at, 'received', NULL::uuid, i.message_type, i.aggregate_id, NULL, i.source, i.message_id,
		   i.payload::text || CASE WHEN i.duplicate_count > 0 THEN ' (' || i.duplicate_count || ' duplicates)' ELSE '' END,
		   i.inbox_id
	FROM i
	UNION ALL
	SELECT coalesce(i.processed_at, i.last_duplicate_at, i.received_at), 'inbox ' || i.state, NULL::uuid,
		   i.message_type, i.aggregate_id, NULL, i.source, i.message_id,
		   concat_ws(' ', CASE WHEN i.attempts > 0 THEN i.attempts || ' failed attempts:' END, i.last_error),
		   i.inbox_id
	FROM i
	WHERE i.state <> 'new'
	UNION ALL
	-- the parent and child keys inbound records named for the aggregate
	SELECT l.linked_at, CASE WHEN l.child_key = trace.aggregate THEN 'linked to parent' ELSE 'linked to child' END,
		   NULL::uuid, NULL, CASE WHEN l.child_key = trace.aggregate THEN l.parent_key ELSE l.child_key END,
		   NULL, l.system, NULL,
		   l.parent_lifecycle || ' ' || l.parent_key || ' -> ' || l.child_lifecycle || ' ' || l.child_key, 0
	FROM hub.entity_links l
	WHERE trace.aggregate IS NOT NULL AND (l.parent_key = trace.aggregate OR l.child_key = trace.aggregate)
	UNION ALL
	-- its business exceptions, opened and resolved
	SELECT x.opened_at, 'exception ' || x.kind, NULL::uuid, NULL, x.business_key, NULL, x.system, NULL,
		   concat_ws(' ', x.code, x.detail, CASE WHEN x.reports > 1 THEN '(' || x.reports || ' reports)' END), 0
	FROM hub.exceptions x
	WHERE trace.aggregate IS NOT NULL AND x.business_key = trace.aggregate
	UNION ALL
	SELECT x.resolved_at, 'exception ' || x.kind || ' resolved', NULL::uuid, NULL, x.business_key, NULL, x.system,
		   NULL, x.resolution, 0
	FROM hub.exceptions x
	WHERE trace.aggregate IS NOT NULL AND x.business_key = trace.aggregate AND x.resolved_at IS NOT NULL
	) t
	ORDER BY t.at, t.ord, t.what;
END
$$;
COMMENT ON FUNCTION hub.trace(text, text) IS
'Timeline of one correlation id or one business key (aggregate => ...) across the outbox, its deliveries and every attempt, and the inbox (messages received with that correlation id or aggregate id, a polled record''s poll request, and their processing), the messages that caused these events (causation id inbox:<id>), and for a business key its parent and child links (hub.entity_links), business exceptions (hub.exceptions) and the messages that opened them, in time order and, at the same time, in publishing order (the events of one transaction share their time). 22023 when neither is given.';

-- 90_privileges.sql: hub_worker processes the inbox
GRANT EXECUTE ON FUNCTION
	hub.process_inbox(integer),
	hub._inbox_claim(integer),
	hub._inbox_settle(bigint, text, text, integer, interval),
	hub._inbox_mapping(text),
	hub._inbox_step(bigint, boolean),
	hub._run_handler(regproc, jsonb, text, jsonb)
	TO hub_worker;


-- ================================================================ inbox worker
-- (issue 19)

-- hub._inbox_pattern_matches inlinable (sql/src/60_inbox.sql)
CREATE OR REPLACE FUNCTION hub._inbox_pattern_matches(message_pattern text, message_type text)
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

-- sql/src/90_privileges.sql (hub.process_inbox and what it calls: the flow's section)
GRANT EXECUTE ON FUNCTION hub._inbox_next_due() TO hub_worker;

-- flowperf: a batch's mapped messages applied set-based, a batch settled
-- with one UPDATE (sql/src/60_inbox.sql, 65_flow.sql, 90_privileges.sql)
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
REVOKE EXECUTE ON FUNCTION hub._inbox_settle_many(bigint[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub._inbox_settle_many(bigint[], text) TO hub_admin;

/*
 * _inbox_apply_batch --- the mapped messages of a batch applied together,
 * set-based: a handful of statements for the whole batch instead of a
 * dozen for every message (hub.process_inbox calls it with the claimed
 * messages that have no handler, before its loop).  It takes only the
 * messages whose outcome is the plain one, and leaves every other one to
 * the per-message path (hub._inbox_step), which gives the same result for
 * these: a message with a mapping without parent or children paths, whose
 * key and code are strings or numbers (the key at most 256 bytes), whose
 * time reads, whose code maps to a state and no overlay that its system
 * owns, whose key is created or advanced (not corrected, stale, a
 * duplicate, a conflict) and carries no overlay (an advance would clear
 * it: more events), whose state publishes an event (hub.state_events)
 * whose contract the payload satisfies, and whose key no other message of
 * the batch names; and only while no readiness rule exists.  For those it
 * writes what hub._apply_canonical writes (entity_state, the per-system
 * row, the history row) and publishes the canonical event with the
 * message's correlation and causation ids, in inbox_id order.  A key
 * another transaction created meanwhile undoes the whole batch's apply
 * (it was classified as new): the per-message path then sees that row.
 * Everything runs in one subtransaction: any error undoes it all and every
 * message goes the per-message way.  Returns the ids applied (to be
 * settled done by the caller), in order.
 */
CREATE FUNCTION hub._inbox_apply_batch(p_ids bigint[])
RETURNS bigint[]
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	a_id		bigint[];
	a_lc		text[];
	a_key		text[];
	a_sys		text[];
	a_role		text[];
	a_qual		text[];
	a_partner	text[];
	a_code		text[];
	a_at		timestamptz[];
	a_state		text[];
	a_corr		text[];
	a_payload	jsonb[];
	v_done		bigint[];
	v_written	bigint;
BEGIN
	IF p_ids IS NULL OR cardinality(p_ids) = 0 OR EXISTS (SELECT FROM hub.readiness_rules) THEN
		RETURN '{}';
	END IF;
	BEGIN
		-- the messages, their mapping and fields (silent: a path that
		-- raises for a message leaves it to the per-message path, which
		-- fails it); per key, how many of the batch name it (any message of
		-- a mapping whose key reads)
		WITH msg AS (
			SELECT i.inbox_id, i.payload, i.correlation_id, i.received_at, mp.lifecycle, mp.system,
				   mp.occurred_at_path, mp.parent_path, mp.children_path,
				   jsonb_path_query_first(i.payload, mp.key_path, '{}', true) AS kv,
				   jsonb_path_query_first(i.payload, mp.code_path, '{}', true) AS cv,
				   CASE WHEN mp.occurred_at_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.occurred_at_path, '{}', true) END AS tv,
				   CASE WHEN mp.qualifier_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.qualifier_path, '{}', true) END AS qv,
				   CASE WHEN mp.partner_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.partner_path, '{}', true) END AS pv
			FROM hub.inbox i
			-- (the mapping of each message type once, not once a message)
			JOIN (SELECT ty.message_type, mm.*
				  FROM (SELECT DISTINCT x.message_type FROM hub.inbox x WHERE x.inbox_id = ANY (p_ids)) ty
				  CROSS JOIN LATERAL (
					SELECT m.* FROM hub.inbox_mappings m
					WHERE hub._inbox_pattern_matches(m.message_pattern, ty.message_type)
					ORDER BY m.message_pattern = ty.message_type DESC, length(m.message_pattern) DESC
					LIMIT 1) mm) mp ON mp.message_type = i.message_type
			-- (by the primary key: a join with the array may scan the backlog)
			WHERE i.inbox_id = ANY (p_ids) AND i.state IN ('new', 'retry_wait')
			  AND jsonb_typeof(i.payload) = 'object'
		), f AS (
			SELECT m.*, m.kv #>> '{}' AS key, m.cv #>> '{}' AS code,
				   CASE WHEN m.qualifier_ok THEN m.qv #>> '{}' END AS qual,
				   CASE WHEN m.partner_ok THEN m.pv #>> '{}' END AS partner,
				   count(*) OVER (PARTITION BY m.lifecycle, m.kv #>> '{}') AS named
			FROM (SELECT msg.*,
						 jsonb_typeof(msg.qv) IS DISTINCT FROM 'object' AND jsonb_typeof(msg.qv) IS DISTINCT FROM 'array' AS qualifier_ok,
						 jsonb_typeof(msg.pv) IS DISTINCT FROM 'object' AND jsonb_typeof(msg.pv) IS DISTINCT FROM 'array' AS partner_ok
				  FROM msg
				  WHERE jsonb_typeof(msg.kv) IN ('string', 'number', 'boolean') AND msg.kv #>> '{}' <> '') m
		), t AS (
			-- (hub._json_time's forms, without its error: a time it would
			-- refuse leaves the message to the per-message path)
			SELECT f.*,
				   CASE WHEN f.occurred_at_path IS NULL THEN f.received_at
						WHEN jsonb_typeof(f.tv) = 'number' THEN to_timestamp((f.tv #>> '{}')::float8)
						WHEN jsonb_typeof(f.tv) = 'string' THEN
							CASE WHEN btrim(f.tv #>> '{}') ~ '^\d{4}-\d\d-\d\d([Tt ]\d\d:\d\d(:\d\d(\.\d+)?)?)?$'
								 THEN btrim(f.tv #>> '{}')::timestamp AT TIME ZONE 'UTC'
								 WHEN btrim(f.tv #>> '{}') ~ '^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d(:\d\d(\.\d+)?)? ?([Zz]|[+-]\d\d(:?\d\d)?)$'
								 THEN btrim(f.tv #>> '{}')::timestamptz END END AS at
			FROM f
			WHERE f.named = 1 AND f.parent_path IS NULL AND f.children_path IS NULL
			  AND jsonb_typeof(f.kv) IN ('string', 'number') AND octet_length(f.key) <= 256
			  AND jsonb_typeof(f.cv) IN ('string', 'number') AND f.code <> ''
			  AND f.qualifier_ok AND f.partner_ok
		), r AS MATERIALIZED (
			-- (materialized: the owner check below is then an index probe a
			-- row, not a join of the whole table with the mapping's result)
			SELECT t.*, ms.state AS m_state, ro.role
			FROM t
			CROSS JOIN LATERAL hub.try_map_status(t.system, t.lifecycle, t.code, t.qual, t.partner) ms
			CROSS JOIN LATERAL (
				SELECT sy.role FROM hub.systems sy
				WHERE sy.system = t.system AND sy.qualifier IN ('', coalesce(t.qual, ''))
				ORDER BY sy.qualifier DESC LIMIT 1) ro
			WHERE t.at IS NOT NULL AND ms.state IS NOT NULL AND ms.overlay IS NULL
			  AND hub.lifecycle_state_valid(t.lifecycle, ms.state)
		)
		-- (the arrays stay aligned, being filled from the same rows in the
		-- same order; the writes below sort by inbox_id themselves)
		SELECT array_agg(r.inbox_id), array_agg(r.lifecycle), array_agg(r.key), array_agg(r.system),
			   array_agg(r.role), array_agg(r.qual), array_agg(r.partner), array_agg(r.code), array_agg(r.at),
			   array_agg(r.m_state), array_agg(r.correlation_id), array_agg(r.payload)
		INTO a_id, a_lc, a_key, a_sys, a_role, a_qual, a_partner, a_code, a_at, a_state, a_corr, a_payload
		FROM r
		WHERE EXISTS (SELECT FROM hub.state_owners o
					  WHERE o.lifecycle = r.lifecycle AND o.state = r.m_state AND o.role = r.role);
		IF a_id IS NULL THEN
			RETURN '{}';
		END IF;

		-- the keys' rows, locked in key order (as hub._apply_canonical does,
		-- one key at a time)
		PERFORM FROM hub.entity_state es
		JOIN unnest(a_lc, a_key) k(lc, key) ON es.lifecycle = k.lc AND es.business_key = k.key
		ORDER BY es.lifecycle, es.business_key
		FOR UPDATE OF es;

		-- (the correlation and causation ids are passed: none of a message
		-- processed before is current)
		PERFORM set_config('hub.inbox_correlation_id', '', true),
				set_config('hub.inbox_causation_id', '', true);
		WITH a AS (
			SELECT * FROM unnest(a_id, a_lc, a_key, a_sys, a_role, a_qual, a_partner, a_code, a_at, a_state,
								 a_corr, a_payload)
				AS a(inbox_id, lifecycle, key, system, role, qual, partner, code, at, state, corr, payload)
		), c AS (
			-- classified against the key's row: created (a new key, or one
			-- without a state) or advanced; no overlay on it
			SELECT a.*, es.lifecycle IS NULL AS is_new, es.state AS previous_state,
				   CASE WHEN es.state IS NOT NULL
						THEN hub._classify_transition(a.lifecycle, es.state, a.state, false) END AS kind,
				   CASE WHEN es.state IS NULL THEN 'created' ELSE 'advanced' END AS outcome,
				   se.event_type, et.required_keys
			FROM a
			LEFT JOIN hub.entity_state es ON es.lifecycle = a.lifecycle AND es.business_key = a.key
			JOIN hub.state_events se ON se.lifecycle = a.lifecycle AND se.state = a.state
			JOIN hub.event_types et ON et.event_type = se.event_type
			WHERE es.lifecycle IS NULL OR (NOT es.on_hold AND es.exception_reason IS NULL)
		), b AS MATERIALIZED (
			-- the canonical event's payload, as hub._state_event makes it
			-- (MATERIALIZED, here and below: each expression once a row)
			SELECT c.*,
				   jsonb_build_object(c.lifecycle || '_id', c.key, 'business_key', c.key, 'lifecycle', c.lifecycle,
						'state', c.state, 'previous_state', c.previous_state, 'change', c.outcome,
						'system', c.system,
						'occurred_at', to_char(c.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
				   || CASE WHEN c.partner IS NOT NULL THEN jsonb_build_object('partner', c.partner) ELSE '{}' END
				   || CASE WHEN c.lifecycle = 'shipment' AND 'carrier' = ANY (c.required_keys)
						   THEN jsonb_build_object('carrier',
								coalesce(c.partner, (SELECT sy.system FROM hub.systems sy
													 WHERE sy.system = c.system AND sy.qualifier = ''
													   AND sy.role = 'carrier')))
						   ELSE '{}' END AS base
			FROM c
			WHERE c.previous_state IS NULL OR c.kind IN ('advance', 'advance_with_gap')
		), e AS MATERIALIZED (
			SELECT b.*,
				   b.base || coalesce((SELECT jsonb_object_agg(k.k, b.payload -> k.k)
									   FROM unnest(b.required_keys) k(k)
									   WHERE NOT b.base ? k.k AND b.payload ? k.k), '{}') AS body
			FROM b
		), ok AS (
			SELECT e.* FROM e WHERE hub.contract_violation(e.event_type, e.body) IS NULL
		), ins AS (
			INSERT INTO hub.entity_state AS es
				(lifecycle, business_key, state, state_system, state_occurred_at, last_advanced_at, on_hold)
			SELECT ok.lifecycle, ok.key, ok.state, ok.system, ok.at, ok.at, false
			FROM ok WHERE ok.is_new
			ON CONFLICT DO NOTHING
			RETURNING es.lifecycle, es.business_key
		), upd AS (
			UPDATE hub.entity_state es
			SET state = ok.state, state_system = ok.system, state_occurred_at = ok.at, last_advanced_at = ok.at,
				on_hold = false, on_hold_reason = NULL, on_hold_since = NULL, exception_reason = NULL,
				exception_since = NULL, updated_at = now()
			FROM ok
			WHERE NOT ok.is_new AND es.lifecycle = ok.lifecycle AND es.business_key = ok.key
			RETURNING es.lifecycle, es.business_key
		), w AS (
			-- (every row of ok; a key another transaction created meanwhile
			-- is missing from ins: counted below, and all is undone)
			SELECT ok.* FROM ok
		), sys AS (
			INSERT INTO hub.entity_system_state AS s
				(lifecycle, business_key, system, role, qualifier, code, state, state_since,
				 overlay_kind, reason, occurred_at)
			SELECT w.lifecycle, w.key, w.system, w.role, w.qual, w.code, w.state, w.at, NULL, NULL, w.at
			FROM w
			ON CONFLICT ON CONSTRAINT entity_system_state_pkey DO UPDATE
			SET role = EXCLUDED.role, qualifier = EXCLUDED.qualifier, code = EXCLUDED.code,
				state = coalesce(EXCLUDED.state, s.state),
				state_since = CASE WHEN EXCLUDED.state IS NULL OR EXCLUDED.state = s.state
								   THEN s.state_since ELSE EXCLUDED.occurred_at END,
				overlay_kind = EXCLUDED.overlay_kind, reason = EXCLUDED.reason,
				occurred_at = EXCLUDED.occurred_at, received_at = now()
			WHERE s.occurred_at <= EXCLUDED.occurred_at
		), hist AS (
			INSERT INTO hub.status_history
				(lifecycle, business_key, system, role, qualifier, code, correction, mapped_state,
				 overlay_kind, reason, previous_state, new_state, kind, outcome, regression_suspect,
				 occurred_at)
			SELECT w.lifecycle, w.key, w.system, w.role, w.qual, w.code, false, w.state,
				   NULL, NULL, w.previous_state, w.state, w.kind, w.outcome, false, w.at
			FROM w ORDER BY w.inbox_id
		), ev AS (
			SELECT w.inbox_id,
				   hub.publish(w.event_type, w.key, w.body, correlation_id => nullif(w.corr, ''),
							   causation_id => 'inbox:' || w.inbox_id, occurred_at => w.at) AS event_id
			FROM w ORDER BY w.inbox_id
		)
		SELECT array_agg(ev.inbox_id ORDER BY ev.inbox_id), (SELECT count(*) FROM ins) + (SELECT count(*) FROM upd)
		INTO v_done, v_written FROM ev;
		IF v_written IS DISTINCT FROM cardinality(v_done)::bigint THEN
			RAISE EXCEPTION 'a key of the batch was created by another transaction meanwhile'
				USING ERRCODE = 'serialization_failure';
		END IF;
	EXCEPTION WHEN OTHERS THEN
		-- (undone: every message goes the per-message way, which reports
		-- the error of the one at fault)
		RETURN '{}';
	END;
	RETURN coalesce(v_done, '{}');
END
$$;
COMMENT ON FUNCTION hub._inbox_apply_batch(bigint[]) IS
'API: Private. Apply, set-based and in one subtransaction, the mapped messages of a batch (hub.process_inbox, messages without a handler) whose report creates or advances a key without overlays and publishes a canonical event it satisfies, each key named once in the batch, while no readiness rule exists; writes and publishes what the per-message path (hub._inbox_step) would. Returns the ids applied, for the caller to settle done; the others go the per-message way (all of them when anything fails).';
REVOKE EXECUTE ON FUNCTION hub._inbox_apply_batch(bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub._inbox_apply_batch(bigint[]) TO hub_admin;
GRANT EXECUTE ON FUNCTION hub._inbox_settle_many(bigint[], text), hub._inbox_apply_batch(bigint[]) TO hub_worker;

CREATE OR REPLACE FUNCTION hub.process_inbox(max integer DEFAULT 100)
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
BEGIN
	IF max IS NULL OR max < 1 THEN
		RAISE EXCEPTION 'max must be at least 1' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	processed := 0;
	failed := 0;
	unhandled := 0;
	SELECT array_agg(c.inbox_id ORDER BY c.inbox_id), array_agg(c.message_type ORDER BY c.inbox_id),
		   array_agg(c.payload ORDER BY c.inbox_id), array_agg(c.handler ORDER BY c.inbox_id),
		   array_agg(c.max_attempts ORDER BY c.inbox_id), array_agg(c.retry_base ORDER BY c.inbox_id)
	INTO c_id, c_type, c_payload, c_handler, c_max, c_base
	FROM hub._inbox_claim(max) c;
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
	IF v_prefix > 0 THEN
		v_fast := coalesce(hub._inbox_apply_batch(c_id[1:v_prefix]), '{}');
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


-- ---- per-key order for mapped messages received without their key
-- 60_inbox.sql: hub.receive gives such a message the key its mapping reads;
-- hub._inbox_claim takes a key's messages together, in inbox order;
-- hub.process_inbox applies a claim's mapped messages in rounds (a key's
-- first, then its next) and skips the rest of a key's messages once one
-- fails (hub._inbox_keys)
-- 62_inbox_worker.sql: the claim's index
CREATE INDEX inbox_pending_idx ON hub.inbox (inbox_id) WHERE state IN ('new', 'retry_wait');

CREATE OR REPLACE FUNCTION hub.receive(source text, message_id text, message_type text, payload jsonb,
		received_at timestamptz DEFAULT now(), correlation_id text DEFAULT NULL, aggregate_id text DEFAULT NULL)
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
									correlation_id, aggregate_id)
		VALUES (receive.source, receive.message_id, receive.message_type, receive.payload,
				coalesce(receive.received_at, now()), now(), corr, agg)
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
COMMENT ON FUNCTION hub.receive(text, text, text, jsonb, timestamptz, text, text) IS
'Store an inbound message in hub.inbox: true for a new message, false for a duplicate (same source and message_id), which only counts it. Concurrent receivers of one message produce one row. correlation_id (default: the payload''s correlation_id key) and aggregate_id (the business key; default: the key its declared mapping, hub.map_inbox, reads from the payload) make the message part of hub.trace(); the messages of one aggregate_id are processed in inbox order.';

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
		SELECT l.inbox_id, l.message_type, l.payload, l.attempts
		FROM locked l
		WHERE l.aggregate_id IS NULL OR NOT EXISTS (
				SELECT FROM hub.inbox e
				WHERE e.aggregate_id = l.aggregate_id AND e.inbox_id < l.inbox_id
				  AND e.state IN ('new', 'retry_wait')
				  AND NOT EXISTS (SELECT FROM locked o WHERE o.inbox_id = e.inbox_id))
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
'API: Private. Lock up to max ready inbox messages (skipping locked ones), in order per business key (a message of an aggregate_id only when every earlier message of it that is new or retry_wait is due and locked by the same claim), and return each with its best-matching handler.';

CREATE FUNCTION hub._inbox_keys(inbox_ids bigint[]) RETURNS text[]
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT pg_catalog.array_agg(i.aggregate_id ORDER BY x.n)
	FROM pg_catalog.unnest($1) WITH ORDINALITY x(id, n)
	LEFT JOIN hub.inbox i ON i.inbox_id OPERATOR(pg_catalog.=) x.id
$$;
COMMENT ON FUNCTION hub._inbox_keys(bigint[]) IS
'API: Private. The business keys (aggregate_id) of inbox messages, in the order given (NULL for none): hub.process_inbox applies a claim''s mapped messages in rounds, a key''s first message, then its next, and leaves the rest of a key''s messages once one fails.';
REVOKE EXECUTE ON FUNCTION hub._inbox_keys(bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub._inbox_keys(bigint[]) TO hub_admin, hub_worker;

CREATE OR REPLACE FUNCTION hub.process_inbox(max integer DEFAULT 100)
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
	SELECT array_agg(c.inbox_id ORDER BY c.inbox_id), array_agg(c.message_type ORDER BY c.inbox_id),
		   array_agg(c.payload ORDER BY c.inbox_id), array_agg(c.handler ORDER BY c.inbox_id),
		   array_agg(c.max_attempts ORDER BY c.inbox_id), array_agg(c.retry_base ORDER BY c.inbox_id)
	INTO c_id, c_type, c_payload, c_handler, c_max, c_base
	FROM hub._inbox_claim(max) c;
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
		c_key := hub._inbox_keys(c_id);
		v_left := c_id[1:v_prefix];
		LOOP
			SELECT array_agg(x.id ORDER BY x.n) INTO v_round
			FROM (SELECT DISTINCT ON (coalesce(c_key[n], '#' || n)) c_id[n] AS id, n
				  FROM generate_subscripts(c_id, 1) n
				  WHERE n <= v_prefix AND c_id[n] = ANY (v_left)
				  ORDER BY coalesce(c_key[n], '#' || n), n) x;
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
			IF c_key IS NULL THEN
				c_key := hub._inbox_keys(c_id);
			END IF;
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

-- ================================================================ trace
-- W3C Trace Context (issue 21): a traceparent on every event and inbox
-- message, hub.publish(..., traceparent) and hub.receive(..., traceparent),
-- child spans for what processing a message publishes, the traceparent
-- column of hub.trace (extension/trace_context.c, sql/src/67_trace.sql).
-- Existing rows keep a NULL traceparent.
ALTER TABLE hub.outbox ADD COLUMN traceparent text;
COMMENT ON COLUMN hub.outbox.traceparent IS 'W3C Trace Context traceparent of the event (version 00 form), sent as the traceparent header of its push requests: the publisher''s, else a child span of the inbox message whose processing published it, else a new trace; NULL for events published before 0.3.0.';
CREATE FUNCTION hub.traceparent_valid(traceparent text) RETURNS boolean
	AS 'MODULE_PATHNAME', 'hub_traceparent_valid' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION hub.traceparent_valid(text) IS
'Whether a value is a W3C Trace Context traceparent that hub.publish accepts: version-traceid-parentid-flags in lower-case hex, version not ff, ids not all zeros; version 00 exactly 55 characters, a later version read by its first four fields.';
CREATE FUNCTION hub._traceparent_or_new(inbound text) RETURNS text
	AS 'MODULE_PATHNAME', 'hub_traceparent_or_new' LANGUAGE C VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION hub._traceparent_or_new(text) IS
'API: Private. An inbound traceparent in its version 00 form when valid, else a new trace (random trace and parent ids, flags 01); never an error.';
CREATE FUNCTION hub._traceparent_child(parent text) RETURNS text
	AS 'MODULE_PATHNAME', 'hub_traceparent_child' LANGUAGE C VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION hub._traceparent_child(text) IS
'API: Private. A child span of parent: its trace id and flags with a new random parent id; a new trace when parent is NULL or invalid; never an error.';
REVOKE EXECUTE ON FUNCTION hub._traceparent_or_new(text), hub._traceparent_child(text) FROM PUBLIC;
DROP FUNCTION hub.publish(text, text, jsonb, text, text, jsonb, timestamptz);
CREATE FUNCTION hub.publish(event_type text, aggregate_id text, payload jsonb,
							correlation_id text DEFAULT NULL, causation_id text DEFAULT NULL,
							headers jsonb DEFAULT NULL, occurred_at timestamptz DEFAULT now(),
							traceparent text DEFAULT NULL)
RETURNS uuid
	AS 'MODULE_PATHNAME', 'hub_publish' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION hub.publish(text, text, jsonb, text, text, jsonb, timestamptz, text) IS
'Publish an event in the caller''s transaction and return its id (the receivers'' idempotency key). The payload must satisfy the event type''s contract in hub.event_types. traceparent: the W3C Trace Context of the publisher (22023 when invalid); none: a child span of the inbox message being processed, else a new trace.';
REVOKE EXECUTE ON FUNCTION hub.publish(text, text, jsonb, text, text, jsonb, timestamptz, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.publish(text, text, jsonb, text, text, jsonb, timestamptz, text) TO hub_writer;

ALTER TABLE hub.inbox ADD COLUMN traceparent text;
COMMENT ON COLUMN hub.inbox.traceparent IS
'W3C Trace Context traceparent of the message (version 00 form): the sender''s (hub.receive''s argument, else the payload''s traceparent key), the poll request''s for a polled record, else a new trace; invalid inbound values are ignored. The events its processing publishes are child spans of it. NULL for messages received before 0.3.0.';

ALTER TABLE hub.pollers ADD COLUMN run_traceparent text;
COMMENT ON COLUMN hub.pollers.run_traceparent IS
'W3C Trace Context traceparent of the run in progress (a new trace for each run): sent as the traceparent header of every page request of the run, and kept on the inbox messages of its records.';

DROP FUNCTION hub.receive(text, text, text, jsonb, timestamptz, text, text);
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
REVOKE EXECUTE ON FUNCTION hub.receive(text, text, text, jsonb, timestamptz, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.receive(text, text, text, jsonb, timestamptz, text, text, text) TO hub_writer;

CREATE OR REPLACE FUNCTION hub._inbox_step(p_inbox_id bigint, p_handled boolean)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	mp			hub.inbox_mappings;
	i			record;
	v_key		text;
	v_code		text;
	v_at		timestamptz;
	v_qual		text;
	v_partner	text;
	v_parent	text;
	v_mapped	hub.mapped_status;
	r			hub.apply_result;
	v_terminal	boolean;
	v			jsonb;
	p_payload	jsonb;
	p_message_type text;
BEGIN
	-- the message as stored, and only one being processed (claimed by the
	-- caller, FOR UPDATE): the step never applies a payload it is handed
	SELECT x.source, x.message_id, x.message_type, x.payload, x.correlation_id, x.aggregate_id,
		   x.received_at, x.attempts, x.state, x.traceparent
	INTO i FROM hub.inbox x WHERE x.inbox_id = p_inbox_id;
	IF NOT FOUND OR i.state NOT IN ('new', 'retry_wait') THEN
		RAISE EXCEPTION 'inbox message % is not waiting to be processed', p_inbox_id
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	p_payload := i.payload;
	p_message_type := i.message_type;
	SELECT * INTO mp FROM hub.inbox_mappings m WHERE m.message_pattern = p_message_type;
	IF NOT FOUND THEN
		SELECT * INTO mp FROM hub.inbox_mappings m
		WHERE right(m.message_pattern, 1) = '*' AND starts_with(p_message_type, left(m.message_pattern, -1))
		ORDER BY length(m.message_pattern) DESC LIMIT 1;
		IF NOT FOUND AND NOT p_handled THEN
			RETURN NULL;
		END IF;
	END IF;
	-- (the traceparent counts while the causation id is set: what is
	-- published gets a child span of the message's, trace_context.c)
	PERFORM set_config('hub.inbox_correlation_id', coalesce(i.correlation_id, ''), true),
			set_config('hub.inbox_causation_id', 'inbox:' || p_inbox_id, true),
			set_config('hub.inbox_traceparent', coalesce(i.traceparent, ''), true);

	IF mp.message_pattern IS NOT NULL THEN
		IF jsonb_typeof(p_payload) IS DISTINCT FROM 'object' THEN
			RAISE EXCEPTION 'the payload of a % message must be a JSON object', mp.lifecycle
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('Mapping "%s" reads it with jsonpaths.', mp.message_pattern);
		END IF;
		-- (each path read inline: SQL functions would be planned again in
		-- every message's subtransaction)
		v := jsonb_path_query_first(p_payload, mp.key_path);
		IF jsonb_typeof(v) IN ('object', 'array') THEN
			PERFORM hub._inbox_not_a_value('key', mp.key_path, v);
		END IF;
		v_key := v #>> '{}';
		v := jsonb_path_query_first(p_payload, mp.code_path);
		IF jsonb_typeof(v) IN ('object', 'array') THEN
			PERFORM hub._inbox_not_a_value('code', mp.code_path, v);
		END IF;
		v_code := v #>> '{}';
		IF v_key IS NULL OR v_key = '' OR v_code IS NULL OR v_code = '' THEN
			RAISE EXCEPTION 'the % path % finds nothing in the message',
				CASE WHEN v_key IS NULL OR v_key = '' THEN 'key' ELSE 'code' END,
				CASE WHEN v_key IS NULL OR v_key = '' THEN mp.key_path ELSE mp.code_path END
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('Mapping "%s" of %s records needs both.', mp.message_pattern, mp.lifecycle);
		END IF;
		PERFORM hub._check_key_length('business key', v_key);
		IF mp.occurred_at_path IS NULL THEN
			v_at := i.received_at;
		ELSE
			v_at := hub._json_time(jsonb_path_query_first(p_payload, mp.occurred_at_path));
			IF v_at IS NULL THEN
				RAISE EXCEPTION 'the occurred_at path % finds nothing in the message', mp.occurred_at_path
					USING ERRCODE = 'invalid_parameter_value';
			END IF;
		END IF;
		IF mp.qualifier_path IS NOT NULL THEN
			v := jsonb_path_query_first(p_payload, mp.qualifier_path);
			IF jsonb_typeof(v) IN ('object', 'array') THEN
				PERFORM hub._inbox_not_a_value('qualifier', mp.qualifier_path, v);
			END IF;
			v_qual := v #>> '{}';
		END IF;
		IF mp.partner_path IS NOT NULL THEN
			v := jsonb_path_query_first(p_payload, mp.partner_path);
			IF jsonb_typeof(v) IN ('object', 'array') THEN
				PERFORM hub._inbox_not_a_value('partner', mp.partner_path, v);
			END IF;
			v_partner := v #>> '{}';
		END IF;
		IF mp.parent_path IS NOT NULL THEN
			v := jsonb_path_query_first(p_payload, mp.parent_path);
			IF jsonb_typeof(v) IN ('object', 'array') THEN
				PERFORM hub._inbox_not_a_value('parent', mp.parent_path, v);
			END IF;
			v_parent := nullif(v #>> '{}', '');
		END IF;

		-- the links the record names (kept once; a key never links to itself)
		IF v_parent IS NOT NULL AND (mp.parent_lifecycle, v_parent) IS DISTINCT FROM (mp.lifecycle, v_key) THEN
			PERFORM hub._check_key_length('parent key', v_parent);
			INSERT INTO hub.entity_links (parent_lifecycle, parent_key, child_lifecycle, child_key, system, inbox_id)
			VALUES (mp.parent_lifecycle, v_parent, mp.lifecycle, v_key, mp.system, p_inbox_id)
			ON CONFLICT DO NOTHING;
		END IF;
		IF mp.children_path IS NOT NULL THEN
			INSERT INTO hub.entity_links (parent_lifecycle, parent_key, child_lifecycle, child_key, system, inbox_id)
			SELECT DISTINCT mp.lifecycle, v_key, mp.child_lifecycle, c.v #>> '{}', mp.system, p_inbox_id
			FROM jsonb_path_query(p_payload, mp.children_path) c(v)
			WHERE jsonb_typeof(c.v) IN ('string', 'number') AND c.v #>> '{}' <> ''
			  AND octet_length(c.v #>> '{}') <= 256
			  AND (mp.child_lifecycle, c.v #>> '{}') IS DISTINCT FROM (mp.lifecycle, v_key)
			ON CONFLICT DO NOTHING;
		END IF;
		-- (a message received without its business key keeps none: hub.trace
		-- by key finds it through the events and exceptions it caused,
		-- whose causation id and message name it; a second UPDATE of the
		-- row per message would cost more than the trace saves)

		v_mapped := hub.try_map_status(mp.system, mp.lifecycle, v_code, v_qual, v_partner);
		IF v_mapped::text IS NULL THEN
			PERFORM hub._open_exception('unknown_code', mp.lifecycle, v_key, mp.system, v_code,
				format('%s reported %s code "%s"%s, which hub.status_map does not map', mp.system, mp.lifecycle,
					   v_code, CASE WHEN v_qual IS NOT NULL THEN format(' (qualifier "%s")', v_qual) ELSE '' END),
				p_inbox_id);
		ELSE
			r := hub._apply_canonical(mp.lifecycle, v_key, mp.system, v_code, v_at, v_mapped.state, v_mapped.overlay,
									  v_mapped.reason, v_qual, false, p_payload, v_partner,
									  CASE WHEN v_parent IS NOT NULL THEN mp.parent_lifecycle END, v_parent, p_inbox_id);
			IF r.outcome IN ('conflict', 'stale') AND r.previous_state IS NOT NULL THEN
				SELECT s.terminal INTO v_terminal FROM hub.lifecycle_states(mp.lifecycle) s WHERE s.state = r.previous_state;
				IF v_terminal AND (r.outcome = 'conflict'
								   OR (SELECT h.regression_suspect FROM hub.status_history h WHERE h.history_id = r.history_id)) THEN
					r.outcome := 'terminal';
					PERFORM hub._open_exception('terminal', mp.lifecycle, v_key, mp.system, v_code,
						format('%s reported %s (%s) after the %s reached its terminal state %s',
							   mp.system, r.reported_state, v_code, mp.lifecycle, r.previous_state), p_inbox_id);
				END IF;
			END IF;
			IF r.outcome = 'conflict' THEN
				PERFORM hub._open_exception('conflict', mp.lifecycle, v_key, mp.system, v_code,
					format('%s reported %s (%s), incomparable with the canonical state %s',
						   mp.system, r.reported_state, v_code, r.previous_state), p_inbox_id);
			ELSIF r.outcome = 'not_owner' THEN
				PERFORM hub._open_exception('not_owner', mp.lifecycle, v_key, mp.system, v_code,
					format('%s reported %s (%s), a state its role does not own', mp.system, r.reported_state, v_code),
					p_inbox_id);
			END IF;
		END IF;
	END IF;

	IF NOT p_handled THEN
		RETURN '{}';
	END IF;
	RETURN jsonb_build_object('inbox_id', p_inbox_id, 'source', i.source, 'message_id', i.message_id,
							  'message_type', p_message_type, 'correlation_id', i.correlation_id,
							  'aggregate_id', i.aggregate_id, 'received_at', i.received_at,
							  'attempts', i.attempts);
END
$$;

CREATE OR REPLACE FUNCTION hub._inbox_apply_batch(p_ids bigint[])
RETURNS bigint[]
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	a_id		bigint[];
	a_lc		text[];
	a_key		text[];
	a_sys		text[];
	a_role		text[];
	a_qual		text[];
	a_partner	text[];
	a_code		text[];
	a_at		timestamptz[];
	a_state		text[];
	a_corr		text[];
	a_payload	jsonb[];
	a_trace		text[];
	v_done		bigint[];
	v_written	bigint;
BEGIN
	IF p_ids IS NULL OR cardinality(p_ids) = 0 OR EXISTS (SELECT FROM hub.readiness_rules) THEN
		RETURN '{}';
	END IF;
	BEGIN
		-- the messages, their mapping and fields (silent: a path that
		-- raises for a message leaves it to the per-message path, which
		-- fails it); per key, how many of the batch name it (any message of
		-- a mapping whose key reads)
		WITH msg AS (
			SELECT i.inbox_id, i.payload, i.correlation_id, i.traceparent, i.received_at, mp.lifecycle, mp.system,
				   mp.occurred_at_path, mp.parent_path, mp.children_path,
				   jsonb_path_query_first(i.payload, mp.key_path, '{}', true) AS kv,
				   jsonb_path_query_first(i.payload, mp.code_path, '{}', true) AS cv,
				   CASE WHEN mp.occurred_at_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.occurred_at_path, '{}', true) END AS tv,
				   CASE WHEN mp.qualifier_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.qualifier_path, '{}', true) END AS qv,
				   CASE WHEN mp.partner_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.partner_path, '{}', true) END AS pv
			FROM hub.inbox i
			-- (the mapping of each message type once, not once a message)
			JOIN (SELECT ty.message_type, mm.*
				  FROM (SELECT DISTINCT x.message_type FROM hub.inbox x WHERE x.inbox_id = ANY (p_ids)) ty
				  CROSS JOIN LATERAL (
					SELECT m.* FROM hub.inbox_mappings m
					WHERE hub._inbox_pattern_matches(m.message_pattern, ty.message_type)
					ORDER BY m.message_pattern = ty.message_type DESC, length(m.message_pattern) DESC
					LIMIT 1) mm) mp ON mp.message_type = i.message_type
			-- (by the primary key: a join with the array may scan the backlog)
			WHERE i.inbox_id = ANY (p_ids) AND i.state IN ('new', 'retry_wait')
			  AND jsonb_typeof(i.payload) = 'object'
		), f AS (
			SELECT m.*, m.kv #>> '{}' AS key, m.cv #>> '{}' AS code,
				   CASE WHEN m.qualifier_ok THEN m.qv #>> '{}' END AS qual,
				   CASE WHEN m.partner_ok THEN m.pv #>> '{}' END AS partner,
				   count(*) OVER (PARTITION BY m.lifecycle, m.kv #>> '{}') AS named
			FROM (SELECT msg.*,
						 jsonb_typeof(msg.qv) IS DISTINCT FROM 'object' AND jsonb_typeof(msg.qv) IS DISTINCT FROM 'array' AS qualifier_ok,
						 jsonb_typeof(msg.pv) IS DISTINCT FROM 'object' AND jsonb_typeof(msg.pv) IS DISTINCT FROM 'array' AS partner_ok
				  FROM msg
				  WHERE jsonb_typeof(msg.kv) IN ('string', 'number', 'boolean') AND msg.kv #>> '{}' <> '') m
		), t AS (
			-- (hub._json_time's forms, without its error: a time it would
			-- refuse leaves the message to the per-message path)
			SELECT f.*,
				   CASE WHEN f.occurred_at_path IS NULL THEN f.received_at
						WHEN jsonb_typeof(f.tv) = 'number' THEN to_timestamp((f.tv #>> '{}')::float8)
						WHEN jsonb_typeof(f.tv) = 'string' THEN
							CASE WHEN btrim(f.tv #>> '{}') ~ '^\d{4}-\d\d-\d\d([Tt ]\d\d:\d\d(:\d\d(\.\d+)?)?)?$'
								 THEN btrim(f.tv #>> '{}')::timestamp AT TIME ZONE 'UTC'
								 WHEN btrim(f.tv #>> '{}') ~ '^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d(:\d\d(\.\d+)?)? ?([Zz]|[+-]\d\d(:?\d\d)?)$'
								 THEN btrim(f.tv #>> '{}')::timestamptz END END AS at
			FROM f
			WHERE f.named = 1 AND f.parent_path IS NULL AND f.children_path IS NULL
			  AND jsonb_typeof(f.kv) IN ('string', 'number') AND octet_length(f.key) <= 256
			  AND jsonb_typeof(f.cv) IN ('string', 'number') AND f.code <> ''
			  AND f.qualifier_ok AND f.partner_ok
		), r AS MATERIALIZED (
			-- (materialized: the owner check below is then an index probe a
			-- row, not a join of the whole table with the mapping's result)
			SELECT t.*, ms.state AS m_state, ro.role
			FROM t
			CROSS JOIN LATERAL hub.try_map_status(t.system, t.lifecycle, t.code, t.qual, t.partner) ms
			CROSS JOIN LATERAL (
				SELECT sy.role FROM hub.systems sy
				WHERE sy.system = t.system AND sy.qualifier IN ('', coalesce(t.qual, ''))
				ORDER BY sy.qualifier DESC LIMIT 1) ro
			WHERE t.at IS NOT NULL AND ms.state IS NOT NULL AND ms.overlay IS NULL
			  AND hub.lifecycle_state_valid(t.lifecycle, ms.state)
		)
		-- (the arrays stay aligned, being filled from the same rows in the
		-- same order; the writes below sort by inbox_id themselves)
		SELECT array_agg(r.inbox_id), array_agg(r.lifecycle), array_agg(r.key), array_agg(r.system),
			   array_agg(r.role), array_agg(r.qual), array_agg(r.partner), array_agg(r.code), array_agg(r.at),
			   array_agg(r.m_state), array_agg(r.correlation_id), array_agg(r.payload), array_agg(r.traceparent)
		INTO a_id, a_lc, a_key, a_sys, a_role, a_qual, a_partner, a_code, a_at, a_state, a_corr, a_payload,
			 a_trace
		FROM r
		WHERE EXISTS (SELECT FROM hub.state_owners o
					  WHERE o.lifecycle = r.lifecycle AND o.state = r.m_state AND o.role = r.role);
		IF a_id IS NULL THEN
			RETURN '{}';
		END IF;

		-- the keys' rows, locked in key order (as hub._apply_canonical does,
		-- one key at a time)
		PERFORM FROM hub.entity_state es
		JOIN unnest(a_lc, a_key) k(lc, key) ON es.lifecycle = k.lc AND es.business_key = k.key
		ORDER BY es.lifecycle, es.business_key
		FOR UPDATE OF es;

		-- (the correlation and causation ids and a child span of the
		-- message's traceparent are passed: none of a message
		-- processed before is current)
		PERFORM set_config('hub.inbox_correlation_id', '', true),
				set_config('hub.inbox_causation_id', '', true);
		WITH a AS (
			SELECT * FROM unnest(a_id, a_lc, a_key, a_sys, a_role, a_qual, a_partner, a_code, a_at, a_state,
								 a_corr, a_payload, a_trace)
				AS a(inbox_id, lifecycle, key, system, role, qual, partner, code, at, state, corr, payload,
					 trace)
		), c AS (
			-- classified against the key's row: created (a new key, or one
			-- without a state) or advanced; no overlay on it
			SELECT a.*, es.lifecycle IS NULL AS is_new, es.state AS previous_state,
				   CASE WHEN es.state IS NOT NULL
						THEN hub._classify_transition(a.lifecycle, es.state, a.state, false) END AS kind,
				   CASE WHEN es.state IS NULL THEN 'created' ELSE 'advanced' END AS outcome,
				   se.event_type, et.required_keys
			FROM a
			LEFT JOIN hub.entity_state es ON es.lifecycle = a.lifecycle AND es.business_key = a.key
			JOIN hub.state_events se ON se.lifecycle = a.lifecycle AND se.state = a.state
			JOIN hub.event_types et ON et.event_type = se.event_type
			WHERE es.lifecycle IS NULL OR (NOT es.on_hold AND es.exception_reason IS NULL)
		), b AS MATERIALIZED (
			-- the canonical event's payload, as hub._state_event makes it
			-- (MATERIALIZED, here and below: each expression once a row)
			SELECT c.*,
				   jsonb_build_object(c.lifecycle || '_id', c.key, 'business_key', c.key, 'lifecycle', c.lifecycle,
						'state', c.state, 'previous_state', c.previous_state, 'change', c.outcome,
						'system', c.system,
						'occurred_at', to_char(c.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
				   || CASE WHEN c.partner IS NOT NULL THEN jsonb_build_object('partner', c.partner) ELSE '{}' END
				   || CASE WHEN c.lifecycle = 'shipment' AND 'carrier' = ANY (c.required_keys)
						   THEN jsonb_build_object('carrier',
								coalesce(c.partner, (SELECT sy.system FROM hub.systems sy
													 WHERE sy.system = c.system AND sy.qualifier = ''
													   AND sy.role = 'carrier')))
						   ELSE '{}' END AS base
			FROM c
			WHERE c.previous_state IS NULL OR c.kind IN ('advance', 'advance_with_gap')
		), e AS MATERIALIZED (
			SELECT b.*,
				   b.base || coalesce((SELECT jsonb_object_agg(k.k, b.payload -> k.k)
									   FROM unnest(b.required_keys) k(k)
									   WHERE NOT b.base ? k.k AND b.payload ? k.k), '{}') AS body
			FROM b
		), ok AS (
			SELECT e.* FROM e WHERE hub.contract_violation(e.event_type, e.body) IS NULL
		), ins AS (
			INSERT INTO hub.entity_state AS es
				(lifecycle, business_key, state, state_system, state_occurred_at, last_advanced_at, on_hold)
			SELECT ok.lifecycle, ok.key, ok.state, ok.system, ok.at, ok.at, false
			FROM ok WHERE ok.is_new
			ON CONFLICT DO NOTHING
			RETURNING es.lifecycle, es.business_key
		), upd AS (
			UPDATE hub.entity_state es
			SET state = ok.state, state_system = ok.system, state_occurred_at = ok.at, last_advanced_at = ok.at,
				on_hold = false, on_hold_reason = NULL, on_hold_since = NULL, exception_reason = NULL,
				exception_since = NULL, updated_at = now()
			FROM ok
			WHERE NOT ok.is_new AND es.lifecycle = ok.lifecycle AND es.business_key = ok.key
			RETURNING es.lifecycle, es.business_key
		), w AS (
			-- (every row of ok; a key another transaction created meanwhile
			-- is missing from ins: counted below, and all is undone)
			SELECT ok.* FROM ok
		), sys AS (
			INSERT INTO hub.entity_system_state AS s
				(lifecycle, business_key, system, role, qualifier, code, state, state_since,
				 overlay_kind, reason, occurred_at)
			SELECT w.lifecycle, w.key, w.system, w.role, w.qual, w.code, w.state, w.at, NULL, NULL, w.at
			FROM w
			ON CONFLICT ON CONSTRAINT entity_system_state_pkey DO UPDATE
			SET role = EXCLUDED.role, qualifier = EXCLUDED.qualifier, code = EXCLUDED.code,
				state = coalesce(EXCLUDED.state, s.state),
				state_since = CASE WHEN EXCLUDED.state IS NULL OR EXCLUDED.state = s.state
								   THEN s.state_since ELSE EXCLUDED.occurred_at END,
				overlay_kind = EXCLUDED.overlay_kind, reason = EXCLUDED.reason,
				occurred_at = EXCLUDED.occurred_at, received_at = now()
			WHERE s.occurred_at <= EXCLUDED.occurred_at
		), hist AS (
			INSERT INTO hub.status_history
				(lifecycle, business_key, system, role, qualifier, code, correction, mapped_state,
				 overlay_kind, reason, previous_state, new_state, kind, outcome, regression_suspect,
				 occurred_at)
			SELECT w.lifecycle, w.key, w.system, w.role, w.qual, w.code, false, w.state,
				   NULL, NULL, w.previous_state, w.state, w.kind, w.outcome, false, w.at
			FROM w ORDER BY w.inbox_id
		), ev AS (
			SELECT w.inbox_id,
				   hub.publish(w.event_type, w.key, w.body, correlation_id => nullif(w.corr, ''),
							   causation_id => 'inbox:' || w.inbox_id, occurred_at => w.at,
							   traceparent => hub._traceparent_child(w.trace)) AS event_id
			FROM w ORDER BY w.inbox_id
		)
		SELECT array_agg(ev.inbox_id ORDER BY ev.inbox_id), (SELECT count(*) FROM ins) + (SELECT count(*) FROM upd)
		INTO v_done, v_written FROM ev;
		IF v_written IS DISTINCT FROM cardinality(v_done)::bigint THEN
			RAISE EXCEPTION 'a key of the batch was created by another transaction meanwhile'
				USING ERRCODE = 'serialization_failure';
		END IF;
	EXCEPTION WHEN OTHERS THEN
		-- (undone: every message goes the per-message way, which reports
		-- the error of the one at fault)
		RETURN '{}';
	END;
	RETURN coalesce(v_done, '{}');
END
$$;

CREATE OR REPLACE FUNCTION hub._poll_claim(worker text, shard integer, nshards integer, max integer)
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

CREATE OR REPLACE FUNCTION hub._poll_store(p hub.pollers, items jsonb, request_id bigint,
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

CREATE OR REPLACE FUNCTION hub._poll_page(poller_id integer, lease bigint, page_url text, status integer,
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

CREATE OR REPLACE FUNCTION hub._endpoint_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	h record;
	-- framing and hop-by-hop headers, then those the hub sets on every request
	reserved constant text[] := ARRAY['content-length', 'transfer-encoding', 'host', 'connection', 'keep-alive',
		'proxy-connection', 'te', 'trailer', 'upgrade', 'expect',
		'content-type', 'content-encoding', 'webhook-id', 'webhook-timestamp', 'webhook-signature',
		'idempotency-key', 'traceparent', 'tracestate'];
BEGIN
	PERFORM hub._egress_check(NEW.url);
	IF NEW.oauth2_token_url IS NOT NULL THEN
		PERFORM hub._egress_check(NEW.oauth2_token_url);
	END IF;
	IF jsonb_typeof(NEW.headers) <> 'object' THEN
		RAISE EXCEPTION 'endpoint headers must be a JSON object of names and string values'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	FOR h IN SELECT key, value FROM jsonb_each(NEW.headers) LOOP
		IF h.key !~ '^[A-Za-z0-9!#$%&''*+.^_`|~-]+$' THEN
			RAISE EXCEPTION 'invalid header name "%"', h.key
				USING ERRCODE = 'invalid_parameter_value', HINT = 'Header names are HTTP tokens (letters, digits, - and a few symbols).';
		END IF;
		IF jsonb_typeof(h.value) <> 'string' OR h.value #>> '{}' ~ '[\r\n\x01-\x08\x0b\x0c\x0e-\x1f]' THEN
			RAISE EXCEPTION 'invalid value for header "%"', h.key
				USING ERRCODE = 'invalid_parameter_value', HINT = 'Header values are strings without CR, LF or other control characters.';
		END IF;
		IF lower(h.key) = ANY (reserved) THEN
			RAISE EXCEPTION 'header "%" cannot be a fixed endpoint header', h.key
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'Content-Length, Transfer-Encoding, Host, Connection, Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade and Expect frame the message and are set by libcurl; Content-Type, Content-Encoding, webhook-id, webhook-timestamp, webhook-signature, Idempotency-Key, traceparent and tracestate are set by the hub.',
					  HINT = 'Remove the header from headers.';
		END IF;
		IF lower(h.key) IN ('authorization', 'proxy-authorization') OR lower(h.key) = lower(NEW.api_key_header) THEN
			RAISE EXCEPTION 'header "%" cannot be a fixed endpoint header', h.key
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'Fixed headers are readable by hub_reader; credentials are not.',
					  HINT = 'Pass credentials as auth_kind and auth_secret (with api_key_header for an API key).';
		END IF;
	END LOOP;
	IF NEW.api_key_header IS NOT NULL AND NEW.api_key_header !~ '^[A-Za-z0-9!#$%&''*+.^_`|~-]+$' THEN
		RAISE EXCEPTION 'invalid API key header name "%"', NEW.api_key_header USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF lower(NEW.api_key_header) = ANY (reserved) THEN
		RAISE EXCEPTION 'header "%" cannot be the API key header', NEW.api_key_header
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Framing headers and the headers the hub sets itself are reserved; use a name such as X-API-Key.';
	END IF;
	RETURN NEW;
END
$$;

CREATE FUNCTION hub.event_body(body_format text, event_id uuid, event_type text, aggregate_id text,
		occurred_at timestamptz, correlation_id text, payload jsonb, source text, contract_version integer,
		traceparent text)
RETURNS text
	AS 'MODULE_PATHNAME', 'hub_event_body' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION hub.event_body(text, uuid, text, text, timestamptz, text, jsonb, text, integer, text) IS
'The JSON a receiver gets for one event, with its contract version and W3C traceparent: the canonical event as the nine-argument form gives it, or, for body_format cloudevents or cloudevents_batch, the CloudEvents 1.0 structured-mode event with the extension attributes contractversion and traceparent (the distributed tracing extension); NULLs are left out.';
REVOKE EXECUTE ON FUNCTION hub.event_body(text, uuid, text, text, timestamptz, text, jsonb, text, integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.event_body(text, uuid, text, text, timestamptz, text, jsonb, text, integer, text)
TO hub_reader, hub_writer, hub_worker;

CREATE OR REPLACE FUNCTION hub._claim(p_max integer, p_worker text, p_lease interval, p_shard integer,
						   p_nshards integer, p_endpoint integer, p_max_events integer, p_rounds integer,
						   p_held_ids integer[], p_held integer[], p_source text, p_max_bytes bigint DEFAULT NULL)
RETURNS SETOF hub._claimed
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
SET plan_cache_mode = force_generic_plan
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_sort = off
AS $$
DECLARE
	cap bigint;
BEGIN
	/*
	 * With the claimer's per-endpoint cap (p_rounds), no more candidates
	 * than the cap can use in all: each is locked, and a lock is a write.
	 */
	IF p_rounds IS NOT NULL AND p_endpoint IS NULL THEN
		SELECT sum(greatest(0, p_rounds * CASE WHEN e.spread THEN hub._serves_share(p_shard, p_nshards, e.endpoint_id,
																					  e.max_concurrency)
										  ELSE e.max_concurrency END
							   - coalesce((SELECT h.n FROM unnest(p_held_ids, p_held) h(id, n)
										   WHERE h.id = e.endpoint_id), 0)))
		INTO cap
		FROM hub.endpoints e
		WHERE e.enabled AND NOT e.paused AND e.circuit_state = 'closed'
			AND hub._serves(p_shard, p_nshards, e.endpoint_id, CASE WHEN e.spread THEN e.max_concurrency ELSE 1 END);
		p_max := least(p_max, greatest(coalesce(cap, 0), 1));
	END IF;
	RETURN QUERY
	WITH candidates AS (
		SELECT d.delivery_id, d.state AS old_state, d.lease_token AS old_token,
			   d.leased_by AS old_worker, d.attempts AS old_attempt,
			   coalesce(cardinality(d.batch_events), 1) AS n_events,
			   -- requests: one a batch, one an event of a lease group
			   CASE WHEN d.batch_events IS NULL THEN 1
					WHEN (SELECT s.body_format FROM hub.subscriptions s
						  WHERE s.subscription_id = d.subscription_id) IN ('batch', 'cloudevents_batch') THEN 1
					ELSE cardinality(d.batch_events) END AS n_requests,
			   d.priority AS o_priority, d.next_attempt_at AS o_next, d.seq AS o_seq,
			   e.endpoint_id AS o_endpoint,
			   CASE WHEN e.spread THEN hub._serves_share(p_shard, p_nshards, e.endpoint_id, e.max_concurrency)
					ELSE e.max_concurrency END AS o_share,
			   -- payload bytes, with a byte budget only (a primary key
			   -- lookup an event, sizes read from the headers)
			   CASE WHEN p_max_bytes IS NULL THEN 0
					WHEN d.batch_events IS NULL
					THEN (SELECT hub._payload_size(o.payload) FROM hub.outbox o WHERE o.event_id = d.event_id)
					ELSE (SELECT sum(hub._payload_size(o.payload))
						  FROM unnest(d.batch_events) b(event_id)
						  JOIN hub.outbox o ON o.event_id = b.event_id) END AS n_bytes
		FROM hub.deliveries d
		JOIN (SELECT e.*, CASE WHEN e.spread THEN e.max_concurrency ELSE 1 END AS spread_width
			  FROM hub.endpoints e) e ON e.endpoint_id = d.endpoint_id
		WHERE d.state IN ('pending', 'retry_wait', 'in_flight') AND d.next_attempt_at <= now()
			AND e.enabled AND NOT e.paused
			AND CASE WHEN p_endpoint IS NULL
					 THEN e.circuit_state = 'closed' AND hub._serves(p_shard, p_nshards, e.endpoint_id, e.spread_width)
					 ELSE d.endpoint_id = p_endpoint END
			AND (d.ordering = 'none' OR NOT EXISTS (
				SELECT 1 FROM hub.deliveries p
				WHERE p.subscription_id = d.subscription_id AND p.aggregate_id = d.aggregate_id
					AND p.seq < d.seq AND p.state NOT IN ('delivered', 'skipped')))
		ORDER BY d.priority DESC, d.next_attempt_at, d.seq
		LIMIT p_max
		FOR UPDATE OF d SKIP LOCKED
	), capped AS (
		-- from each endpoint, no more requests than make the claimer hold
		-- (p_held: the requests it holds already) p_rounds times its share
		-- of the endpoint's connections; then at most p_max_events events
		-- and p_max_bytes payload bytes (the first delivery always); the
		-- rows locked above and left out here are free again at commit
		SELECT c.* FROM (
			SELECT c.*, sum(c.n_events) OVER w AS upto, sum(c.n_bytes) OVER w AS upto_bytes
			FROM (SELECT c.*, sum(c.n_requests) OVER (PARTITION BY c.o_endpoint
													  ORDER BY c.o_priority DESC, c.o_next, c.o_seq
													  ROWS UNBOUNDED PRECEDING) AS requests
				  FROM candidates c) c
			WHERE p_rounds IS NULL OR p_endpoint IS NOT NULL
				OR c.requests - c.n_requests < p_rounds * c.o_share
							 - coalesce((SELECT h.n FROM unnest(p_held_ids, p_held) h(id, n)
										 WHERE h.id = c.o_endpoint), 0)
			WINDOW w AS (ORDER BY c.o_priority DESC, c.o_next, c.o_seq ROWS UNBOUNDED PRECEDING)) c
		WHERE (p_max_events IS NULL OR c.upto - c.n_events < p_max_events)
			AND (p_max_bytes IS NULL OR c.upto_bytes - c.n_bytes < p_max_bytes)
	), claimed AS (
		UPDATE hub.deliveries d
		SET state = 'in_flight', lease_until = now() + p_lease, next_attempt_at = now() + p_lease,
			lease_token = nextval('hub._lease_token_seq'), attempts = d.attempts + 1,
			leased_by = p_worker, updated_at = now()
		FROM capped c
		WHERE d.delivery_id = c.delivery_id
		-- (the size apart: batch_events read above the join with the events
		-- would be read again for every event, the whole array detoasted
		-- once an event when it is large)
		RETURNING d.*, coalesce(cardinality(d.batch_events), 1) AS n_events
	), expired AS (
		-- a lease that ran out: its attempt never reported; say so in the audit
		INSERT INTO hub.attempts (delivery_id, attempt, worker, lease_token, error, outcome)
		SELECT c.delivery_id, c.old_attempt, c.old_worker, c.old_token, 'lease expired without a result', 'expired'
		FROM capped c
		WHERE c.old_state = 'in_flight'
	)
	-- (rendered: the body instead of the payload, the row carried no
	-- bigger than it must be through the callers' RETURN QUERY)
	SELECT c.delivery_id, c.lease_token, c.attempts, o.event_id, o.event_type, o.aggregate_id,
		   o.occurred_at, o.correlation_id,
		   CASE WHEN p_source IS NULL THEN o.payload END, c.subscription_id, c.endpoint_id, s.body_format, s.transform,
		   c.n_events, s.batch_max,
		   CASE WHEN p_source IS NOT NULL
				THEN hub.event_body(s.body_format, o.event_id, o.event_type, o.aggregate_id, o.occurred_at,
									o.correlation_id, o.payload, p_source, o.contract_version, o.traceparent) END
	FROM claimed c
	CROSS JOIN LATERAL unnest(coalesce(c.batch_events, ARRAY[c.event_id])) WITH ORDINALITY AS b(event_id, ord)
	JOIN hub.outbox o ON o.event_id = b.event_id
	JOIN hub.subscriptions s ON s.subscription_id = c.subscription_id
	-- (rendering for a dispatcher: a subscription's deliveries together,
	-- for its batches)
	ORDER BY c.priority DESC, CASE WHEN p_source IS NOT NULL THEN c.subscription_id END, c.seq, c.delivery_id,
		b.ord;
END
$$;

CREATE OR REPLACE FUNCTION hub._claim_transformed(p_max integer, p_worker text, p_lease interval, p_shard integer,
									   p_nshards integer, p_endpoint integer, p_max_events integer,
									   p_rounds integer, p_held_ids integer[], p_held integer[], p_source text,
									   p_max_bytes bigint DEFAULT NULL)
RETURNS SETOF hub._claimed
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
	rows hub._claimed[];
	r hub._claimed;
	failed bigint[] := '{}';
	failed_events uuid[] := '{}';	-- events of lease groups that failed alone
	failed_groups bigint[] := '{}';	-- (and the group each left)
	alone bigint;
	err text;
BEGIN
	IF NOT EXISTS (SELECT 1 FROM hub.subscriptions s WHERE s.transform IS NOT NULL) THEN
		RETURN QUERY
		SELECT * FROM hub._claim(p_max, p_worker, p_lease, p_shard, p_nshards, p_endpoint, p_max_events, p_rounds,
								 p_held_ids, p_held, p_source, p_max_bytes);
		RETURN;
	END IF;
	-- (unrendered: the transforms need the payloads; rendered below, in
	-- claim order rather than a subscription's deliveries together, so a
	-- replay of single events of a transformed batch subscription may go
	-- out in more, smaller batches)
	rows := ARRAY(SELECT c FROM hub._claim(p_max, p_worker, p_lease, p_shard, p_nshards, p_endpoint, p_max_events, p_rounds,
						 p_held_ids, p_held, NULL, p_max_bytes) c);
	FOR i IN 1 .. coalesce(array_length(rows, 1), 0) LOOP
		r := rows[i];
		CONTINUE WHEN r.transform IS NULL OR r.delivery_id = ANY (failed);
		BEGIN
			r.payload := hub._transform(r.transform, r.payload);
			rows[i] := r;
		EXCEPTION WHEN OTHERS THEN
			err := format('transform %s failed: %s (SQLSTATE %s)', r.transform, SQLERRM, SQLSTATE);
			IF r.batch_size > 1 AND r.body_format IS DISTINCT FROM 'batch'
			   AND r.body_format IS DISTINCT FROM 'cloudevents_batch' THEN
				-- an event of a lease group, which is its own request: only
				-- it leaves the group (a delivery of its own, same lease) and
				-- fails; the rest of the group goes out
				SELECT x.delivery_id INTO alone
				FROM hub._split_group(r.delivery_id, r.lease_token, ARRAY[r.event_id]) x
				WHERE x.event_id = r.event_id;
				PERFORM hub.fail_delivery(alone, r.lease_token, NULL, err, 0, NULL, NULL, p_worker, false);
				failed_events := failed_events || r.event_id;
				failed_groups := failed_groups || r.delivery_id;
			ELSE
				PERFORM hub.fail_delivery(r.delivery_id, r.lease_token, NULL, err, 0, NULL, NULL, p_worker, false);
				failed := failed || r.delivery_id;
			END IF;
		END;
	END LOOP;
	RETURN QUERY
	SELECT c.delivery_id, c.lease_token, c.attempt, c.event_id, c.event_type, c.aggregate_id,
		   c.occurred_at, c.correlation_id, c.payload, c.subscription_id, c.endpoint_id, c.body_format,
		   c.transform,
		   c.batch_size - (SELECT count(*) FROM unnest(failed_groups) g WHERE g = c.delivery_id)::integer,
		   c.batch_max,
		   CASE WHEN p_source IS NOT NULL
				THEN hub.event_body(c.body_format, c.event_id, c.event_type, c.aggregate_id, c.occurred_at,
									c.correlation_id, c.payload, p_source,
									(SELECT o.contract_version FROM hub.outbox o WHERE o.event_id = c.event_id),
									(SELECT o.traceparent FROM hub.outbox o WHERE o.event_id = c.event_id)) END
	FROM unnest(rows) WITH ORDINALITY AS c
	WHERE c.delivery_id <> ALL (failed) AND c.event_id <> ALL (failed_events)
	ORDER BY c.ordinality;
END
$$;

DROP FUNCTION hub.trace(text, text);
CREATE FUNCTION hub.trace(correlation_id text DEFAULT NULL, aggregate text DEFAULT NULL)
RETURNS TABLE (at timestamptz, what text, event_id uuid, event_type text, aggregate_id text,
			   endpoint text, source text, message_id text, detail text, traceparent text)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
	IF trace.correlation_id IS NULL AND trace.aggregate IS NULL THEN
		RAISE EXCEPTION 'a trace needs a correlation id or an aggregate id'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Call hub.trace(''<correlation id>'') or hub.trace(aggregate => ''<business key>'').';
	END IF;
	RETURN QUERY
	WITH ev AS (
		SELECT o.event_id FROM hub.outbox o WHERE o.correlation_id = trace.correlation_id
		UNION
		SELECT o.event_id FROM hub.outbox o WHERE o.aggregate_id = trace.aggregate
	), o AS (
		SELECT o.* FROM hub.outbox o WHERE o.event_id IN (SELECT ev.event_id FROM ev)
	), inb AS (
		SELECT i.inbox_id FROM hub.inbox i WHERE i.correlation_id = trace.correlation_id
		UNION
		SELECT i.inbox_id FROM hub.inbox i WHERE i.aggregate_id = trace.aggregate
		UNION
		-- the messages that caused these events (a mapped record received
		-- without its business key: hub.process_inbox's causation id)
		SELECT substr(o.causation_id, 7)::bigint FROM o
		WHERE o.causation_id ~ '^inbox:[0-9]{1,18}$'
		UNION
		-- and those that opened the key's business exceptions
		SELECT m.id FROM hub.exceptions x, LATERAL (VALUES (x.message), (x.last_message)) m(id)
		WHERE trace.aggregate IS NOT NULL AND x.business_key = trace.aggregate AND m.id IS NOT NULL
	), i AS (
		SELECT i.* FROM hub.inbox i WHERE i.inbox_id IN (SELECT inb.inbox_id FROM inb)
	), dl AS (
		-- the deliveries of these events: their own, and the batches they
		-- are in (a scan of the batch deliveries: they have no index by event)
		SELECT o.event_id, d.delivery_id, d.endpoint_id, d.state, d.updated_at, d.last_error
		FROM o JOIN hub.deliveries d ON d.event_id = o.event_id
		UNION ALL
		SELECT o.event_id, d.delivery_id, d.endpoint_id, d.state, d.updated_at, d.last_error
		FROM o JOIN hub.deliveries d ON d.batch_events IS NOT NULL AND o.event_id = ANY (d.batch_events)
			AND d.event_id <> o.event_id
	)
	SELECT t.at, t.what, t.event_id, t.event_type, t.aggregate_id, t.endpoint, t.source, t.message_id, t.detail,
		   t.traceparent
	FROM (
	SELECT o.published_at AS at, 'published' AS what, o.event_id, o.event_type, o.aggregate_id,
		   NULL::text AS endpoint, NULL::text AS source, NULL::text AS message_id, o.payload::text AS detail,
		   o.seq AS ord, o.traceparent
	FROM o
	UNION ALL
	SELECT a.at, 'attempt ' || a.attempt || ': ' || a.outcome, o.event_id, o.event_type, o.aggregate_id, e.name,
		   NULL, NULL, concat_ws(' ', a.http_status, a.error, a.latency_ms || ' ms'), o.seq, o.traceparent
	FROM o
	JOIN dl d ON d.event_id = o.event_id
	JOIN hub.endpoints e ON e.endpoint_id = d.endpoint_id
	-- (an attempt of a lease group sent one of its events: that one's)
	JOIN hub.attempts a ON a.delivery_id = d.delivery_id AND (a.group_event_id IS NULL OR a.group_event_id = o.event_id)
	UNION ALL
	SELECT d.updated_at, 'delivery ' || d.state, o.event_id, o.event_type, o.aggregate_id, e.name,
		   NULL, NULL, d.last_error, o.seq, o.traceparent
	FROM o
	JOIN dl d ON d.event_id = o.event_id
	JOIN hub.endpoints e ON e.endpoint_id = d.endpoint_id
	UNION ALL
	-- a polled record: the request that brought it (hub.poll_requests)
	SELECT r.at, 'polled', NULL::uuid, i.message_type, i.aggregate_id, e.name, i.source, i.message_id,
		   concat_ws(' ', 'GET', r.url, '->', coalesce(r.http_status::text, r.error),
					 '(page ' || r.page || ': ' || r.records || ' records, ' || r.new_records || ' new)'),
		   i.inbox_id, i.traceparent
	FROM i
	JOIN hub.poll_requests r ON r.request_id = i.poll_request_id
	LEFT JOIN hub.pollers p ON p.poller_id = r.poller_id
	LEFT JOIN hub.endpoints e ON e.endpoint_id = p.endpoint_id
	UNION ALL
	SELECT i.received_at, 'received', NULL::uuid, i.message_type, i.aggregate_id, NULL, i.source, i.message_id,
		   i.payload::text || CASE WHEN i.duplicate_count > 0 THEN ' (' || i.duplicate_count || ' duplicates)' ELSE '' END,
		   i.inbox_id, i.traceparent
	FROM i
	UNION ALL
	SELECT coalesce(i.processed_at, i.last_duplicate_at, i.received_at), 'inbox ' || i.state, NULL::uuid,
		   i.message_type, i.aggregate_id, NULL, i.source, i.message_id,
		   concat_ws(' ', CASE WHEN i.attempts > 0 THEN i.attempts || ' failed attempts:' END, i.last_error),
		   i.inbox_id, i.traceparent
	FROM i
	WHERE i.state <> 'new'
	UNION ALL
	-- the parent and child keys inbound records named for the aggregate
	SELECT l.linked_at, CASE WHEN l.child_key = trace.aggregate THEN 'linked to parent' ELSE 'linked to child' END,
		   NULL::uuid, NULL, CASE WHEN l.child_key = trace.aggregate THEN l.parent_key ELSE l.child_key END,
		   NULL, l.system, NULL,
		   l.parent_lifecycle || ' ' || l.parent_key || ' -> ' || l.child_lifecycle || ' ' || l.child_key, 0, NULL
	FROM hub.entity_links l
	WHERE trace.aggregate IS NOT NULL AND (l.parent_key = trace.aggregate OR l.child_key = trace.aggregate)
	UNION ALL
	-- its business exceptions, opened and resolved
	SELECT x.opened_at, 'exception ' || x.kind, NULL::uuid, NULL, x.business_key, NULL, x.system, NULL,
		   concat_ws(' ', x.code, x.detail, CASE WHEN x.reports > 1 THEN '(' || x.reports || ' reports)' END), 0, NULL
	FROM hub.exceptions x
	WHERE trace.aggregate IS NOT NULL AND x.business_key = trace.aggregate
	UNION ALL
	SELECT x.resolved_at, 'exception ' || x.kind || ' resolved', NULL::uuid, NULL, x.business_key, NULL, x.system,
		   NULL, x.resolution, 0, NULL
	FROM hub.exceptions x
	WHERE trace.aggregate IS NOT NULL AND x.business_key = trace.aggregate AND x.resolved_at IS NOT NULL
	) t
	ORDER BY t.at, t.ord, t.what;
END
$$;
COMMENT ON FUNCTION hub.trace(text, text) IS
'Timeline of one correlation id or one business key (aggregate => ...) across the outbox, its deliveries and every attempt, and the inbox (messages received with that correlation id or aggregate id, a polled record''s poll request, and their processing), the messages that caused these events (causation id inbox:<id>), and for a business key its parent and child links (hub.entity_links), business exceptions (hub.exceptions) and the messages that opened them, in time order and, at the same time, in publishing order (the events of one transaction share their time). Rows of an event or an inbound message show its W3C traceparent (characters 4 to 35: the trace id, to follow in an OpenTelemetry backend). 22023 when neither is given.';
REVOKE EXECUTE ON FUNCTION hub.trace(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.trace(text, text) TO hub_reader;

-- ================================================================ metrics
-- (issue 21 a: the site dimension, thresholds, business views, a cheaper
-- hub.sync_status and hub.drift, hub.metrics())

-- the site dimension: hub.entity_state.site, read by a mapping's site_path
ALTER TABLE hub.entity_state ADD COLUMN site text CHECK (octet_length(site) <= 256);
COMMENT ON COLUMN hub.entity_state.site IS
'The warehouse or site of the key, read from its records by their mapping''s site_path (hub.map_inbox): the latest record processed that names one wins; NULL while none has. The site dimension of hub.backlog_by_site and the release views.';
ALTER TABLE hub.inbox_mappings ADD COLUMN site_path jsonpath;
COMMENT ON COLUMN hub.inbox_mappings.site_path IS 'jsonpath of the warehouse or site the record names (a string or number, at most 256 bytes), kept in hub.entity_state.site for the key (the latest record naming one wins). Optional in each record.';
DROP FUNCTION hub.map_inbox(text, text, text, text, text, text, text, text, text, text, text, text, integer, interval);
CREATE FUNCTION hub.map_inbox(message_pattern text, lifecycle text, system text, key_path text, code_path text,
		occurred_at_path text DEFAULT NULL, qualifier_path text DEFAULT NULL, partner_path text DEFAULT NULL,
		parent_path text DEFAULT NULL, children_path text DEFAULT NULL,
		parent_lifecycle text DEFAULT 'order', child_lifecycle text DEFAULT 'shipment',
		max_attempts integer DEFAULT 5, retry_base interval DEFAULT '1 second', site_path text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF message_pattern IS NULL OR message_pattern !~ '^[^*]*\*?$' OR message_pattern = '' THEN
		RAISE EXCEPTION 'invalid message pattern: "%"', message_pattern
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use an exact message type, or a prefix followed by one trailing * (wms.shipment.*).';
	END IF;
	IF lifecycle IS NULL OR lifecycle NOT IN ('order', 'shipment', 'movement', 'return')
	   OR parent_lifecycle IS NULL OR parent_lifecycle NOT IN ('order', 'shipment', 'movement', 'return')
	   OR child_lifecycle IS NULL OR child_lifecycle NOT IN ('order', 'shipment', 'movement', 'return') THEN
		RAISE EXCEPTION 'unknown lifecycle: "%"',
			CASE WHEN lifecycle IS NULL OR lifecycle NOT IN ('order', 'shipment', 'movement', 'return') THEN lifecycle
				 WHEN parent_lifecycle IS NULL OR parent_lifecycle NOT IN ('order', 'shipment', 'movement', 'return') THEN parent_lifecycle
				 ELSE child_lifecycle END
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The lifecycles are order, shipment, movement and return.';
	END IF;
	IF system IS NULL OR NOT EXISTS (SELECT FROM hub.systems s WHERE s.system = map_inbox.system) THEN
		RAISE EXCEPTION 'unknown system: "%"', system
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Every reporting system needs a role (erp, wms, tms, carrier or portal).',
				  HINT = format('Add it with INSERT INTO hub.systems (system, role) VALUES (%L, ''wms'').', system);
	END IF;
	IF key_path IS NULL OR code_path IS NULL THEN
		RAISE EXCEPTION 'a mapping needs key_path and code_path'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM hub._check_setting('max_attempts', max_attempts BETWEEN 1 AND 1000, max_attempts::text,
							   'between 1 and 1000');
	PERFORM hub._check_setting('retry_base', retry_base BETWEEN '0'::interval AND '1 day'::interval,
							   retry_base::text, 'between 0 and 1 day');
	INSERT INTO hub.inbox_mappings AS m (message_pattern, lifecycle, system, key_path, code_path,
		occurred_at_path, qualifier_path, partner_path, parent_path, parent_lifecycle, children_path,
		child_lifecycle, max_attempts, retry_base, site_path)
	VALUES (map_inbox.message_pattern, map_inbox.lifecycle, map_inbox.system,
			hub._jsonpath_arg('key_path', map_inbox.key_path),
			hub._jsonpath_arg('code_path', map_inbox.code_path),
			hub._jsonpath_arg('occurred_at_path', map_inbox.occurred_at_path),
			hub._jsonpath_arg('qualifier_path', map_inbox.qualifier_path),
			hub._jsonpath_arg('partner_path', map_inbox.partner_path),
			hub._jsonpath_arg('parent_path', map_inbox.parent_path), map_inbox.parent_lifecycle,
			hub._jsonpath_arg('children_path', map_inbox.children_path), map_inbox.child_lifecycle,
			map_inbox.max_attempts, map_inbox.retry_base, hub._jsonpath_arg('site_path', map_inbox.site_path))
	ON CONFLICT ON CONSTRAINT inbox_mappings_pkey DO UPDATE
	SET lifecycle = EXCLUDED.lifecycle, system = EXCLUDED.system, key_path = EXCLUDED.key_path,
		code_path = EXCLUDED.code_path, occurred_at_path = EXCLUDED.occurred_at_path,
		qualifier_path = EXCLUDED.qualifier_path, partner_path = EXCLUDED.partner_path,
		parent_path = EXCLUDED.parent_path, parent_lifecycle = EXCLUDED.parent_lifecycle,
		children_path = EXCLUDED.children_path, child_lifecycle = EXCLUDED.child_lifecycle,
		max_attempts = EXCLUDED.max_attempts, retry_base = EXCLUDED.retry_base, site_path = EXCLUDED.site_path;
	-- messages that found neither handler nor mapping before are processed again
	UPDATE hub.inbox AS i SET state = 'new', next_attempt_at = now(), processed_at = NULL
	WHERE i.state = 'unhandled'
	  AND hub._inbox_pattern_matches(map_inbox.message_pattern, i.message_type);
END
$$;
COMMENT ON FUNCTION hub.map_inbox(text, text, text, text, text, text, text, text, text, text, text, text, integer, interval, text) IS
'Declare (or replace) how messages of a type pattern (exact, or a prefix ending in *) are applied: as reports of system for lifecycle, the business key, status code and, optionally, time (ISO 8601 with or without offset, naive = UTC, or Unix seconds; default: received_at), qualifier, partner, parent key, children keys and site (warehouse) read from the payload with jsonpaths (checked here: 22023 for a bad one). hub.process_inbox then maps the code (hub.status_map), applies it to the canonical state, publishes the canonical events and links parent and children (hub.entity_links); an unknown code, a conflict, a non-owner report or a report on a terminal key opens a hub.exceptions row and the message is done. Unhandled messages the pattern matches become new again.';
REVOKE EXECUTE ON FUNCTION hub.map_inbox(text, text, text, text, text, text, text, text, text, text, text, text, integer, interval, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.map_inbox(text, text, text, text, text, text, text, text, text, text, text, text, integer, interval, text) TO hub_admin;

CREATE OR REPLACE FUNCTION hub._inbox_step(p_inbox_id bigint, p_handled boolean)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	mp			hub.inbox_mappings;
	i			record;
	v_key		text;
	v_code		text;
	v_at		timestamptz;
	v_qual		text;
	v_partner	text;
	v_parent	text;
	v_site		text;
	v_mapped	hub.mapped_status;
	r			hub.apply_result;
	v_terminal	boolean;
	v			jsonb;
	p_payload	jsonb;
	p_message_type text;
BEGIN
	-- the message as stored, and only one being processed (claimed by the
	-- caller, FOR UPDATE): the step never applies a payload it is handed
	SELECT x.source, x.message_id, x.message_type, x.payload, x.correlation_id, x.aggregate_id,
		   x.received_at, x.attempts, x.state
	INTO i FROM hub.inbox x WHERE x.inbox_id = p_inbox_id;
	IF NOT FOUND OR i.state NOT IN ('new', 'retry_wait') THEN
		RAISE EXCEPTION 'inbox message % is not waiting to be processed', p_inbox_id
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	p_payload := i.payload;
	p_message_type := i.message_type;
	SELECT * INTO mp FROM hub.inbox_mappings m WHERE m.message_pattern = p_message_type;
	IF NOT FOUND THEN
		SELECT * INTO mp FROM hub.inbox_mappings m
		WHERE right(m.message_pattern, 1) = '*' AND starts_with(p_message_type, left(m.message_pattern, -1))
		ORDER BY length(m.message_pattern) DESC LIMIT 1;
		IF NOT FOUND AND NOT p_handled THEN
			RETURN NULL;
		END IF;
	END IF;
	PERFORM set_config('hub.inbox_correlation_id', coalesce(i.correlation_id, ''), true),
			set_config('hub.inbox_causation_id', 'inbox:' || p_inbox_id, true);

	IF mp.message_pattern IS NOT NULL THEN
		IF jsonb_typeof(p_payload) IS DISTINCT FROM 'object' THEN
			RAISE EXCEPTION 'the payload of a % message must be a JSON object', mp.lifecycle
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('Mapping "%s" reads it with jsonpaths.', mp.message_pattern);
		END IF;
		-- (each path read inline: SQL functions would be planned again in
		-- every message's subtransaction)
		v := jsonb_path_query_first(p_payload, mp.key_path);
		IF jsonb_typeof(v) IN ('object', 'array') THEN
			PERFORM hub._inbox_not_a_value('key', mp.key_path, v);
		END IF;
		v_key := v #>> '{}';
		v := jsonb_path_query_first(p_payload, mp.code_path);
		IF jsonb_typeof(v) IN ('object', 'array') THEN
			PERFORM hub._inbox_not_a_value('code', mp.code_path, v);
		END IF;
		v_code := v #>> '{}';
		IF v_key IS NULL OR v_key = '' OR v_code IS NULL OR v_code = '' THEN
			RAISE EXCEPTION 'the % path % finds nothing in the message',
				CASE WHEN v_key IS NULL OR v_key = '' THEN 'key' ELSE 'code' END,
				CASE WHEN v_key IS NULL OR v_key = '' THEN mp.key_path ELSE mp.code_path END
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('Mapping "%s" of %s records needs both.', mp.message_pattern, mp.lifecycle);
		END IF;
		PERFORM hub._check_key_length('business key', v_key);
		IF mp.occurred_at_path IS NULL THEN
			v_at := i.received_at;
		ELSE
			v_at := hub._json_time(jsonb_path_query_first(p_payload, mp.occurred_at_path));
			IF v_at IS NULL THEN
				RAISE EXCEPTION 'the occurred_at path % finds nothing in the message', mp.occurred_at_path
					USING ERRCODE = 'invalid_parameter_value';
			END IF;
		END IF;
		IF mp.qualifier_path IS NOT NULL THEN
			v := jsonb_path_query_first(p_payload, mp.qualifier_path);
			IF jsonb_typeof(v) IN ('object', 'array') THEN
				PERFORM hub._inbox_not_a_value('qualifier', mp.qualifier_path, v);
			END IF;
			v_qual := v #>> '{}';
		END IF;
		IF mp.partner_path IS NOT NULL THEN
			v := jsonb_path_query_first(p_payload, mp.partner_path);
			IF jsonb_typeof(v) IN ('object', 'array') THEN
				PERFORM hub._inbox_not_a_value('partner', mp.partner_path, v);
			END IF;
			v_partner := v #>> '{}';
		END IF;
		IF mp.parent_path IS NOT NULL THEN
			v := jsonb_path_query_first(p_payload, mp.parent_path);
			IF jsonb_typeof(v) IN ('object', 'array') THEN
				PERFORM hub._inbox_not_a_value('parent', mp.parent_path, v);
			END IF;
			v_parent := nullif(v #>> '{}', '');
		END IF;
		IF mp.site_path IS NOT NULL THEN
			v := jsonb_path_query_first(p_payload, mp.site_path);
			IF jsonb_typeof(v) IN ('object', 'array') THEN
				PERFORM hub._inbox_not_a_value('site', mp.site_path, v);
			END IF;
			v_site := nullif(v #>> '{}', '');
			PERFORM hub._check_key_length('site', v_site);
		END IF;

		-- the links the record names (kept once; a key never links to itself)
		IF v_parent IS NOT NULL AND (mp.parent_lifecycle, v_parent) IS DISTINCT FROM (mp.lifecycle, v_key) THEN
			PERFORM hub._check_key_length('parent key', v_parent);
			INSERT INTO hub.entity_links (parent_lifecycle, parent_key, child_lifecycle, child_key, system, inbox_id)
			VALUES (mp.parent_lifecycle, v_parent, mp.lifecycle, v_key, mp.system, p_inbox_id)
			ON CONFLICT DO NOTHING;
		END IF;
		IF mp.children_path IS NOT NULL THEN
			INSERT INTO hub.entity_links (parent_lifecycle, parent_key, child_lifecycle, child_key, system, inbox_id)
			SELECT DISTINCT mp.lifecycle, v_key, mp.child_lifecycle, c.v #>> '{}', mp.system, p_inbox_id
			FROM jsonb_path_query(p_payload, mp.children_path) c(v)
			WHERE jsonb_typeof(c.v) IN ('string', 'number') AND c.v #>> '{}' <> ''
			  AND octet_length(c.v #>> '{}') <= 256
			  AND (mp.child_lifecycle, c.v #>> '{}') IS DISTINCT FROM (mp.lifecycle, v_key)
			ON CONFLICT DO NOTHING;
		END IF;
		-- (a message received without its business key keeps none: hub.trace
		-- by key finds it through the events and exceptions it caused,
		-- whose causation id and message name it; a second UPDATE of the
		-- row per message would cost more than the trace saves)

		v_mapped := hub.try_map_status(mp.system, mp.lifecycle, v_code, v_qual, v_partner);
		IF v_mapped::text IS NULL THEN
			PERFORM hub._open_exception('unknown_code', mp.lifecycle, v_key, mp.system, v_code,
				format('%s reported %s code "%s"%s, which hub.status_map does not map', mp.system, mp.lifecycle,
					   v_code, CASE WHEN v_qual IS NOT NULL THEN format(' (qualifier "%s")', v_qual) ELSE '' END),
				p_inbox_id);
		ELSE
			r := hub._apply_canonical(mp.lifecycle, v_key, mp.system, v_code, v_at, v_mapped.state, v_mapped.overlay,
									  v_mapped.reason, v_qual, false, p_payload, v_partner,
									  CASE WHEN v_parent IS NOT NULL THEN mp.parent_lifecycle END, v_parent, p_inbox_id);
			IF r.outcome IN ('conflict', 'stale') AND r.previous_state IS NOT NULL THEN
				SELECT s.terminal INTO v_terminal FROM hub.lifecycle_states(mp.lifecycle) s WHERE s.state = r.previous_state;
				IF v_terminal AND (r.outcome = 'conflict'
								   OR (SELECT h.regression_suspect FROM hub.status_history h WHERE h.history_id = r.history_id)) THEN
					r.outcome := 'terminal';
					PERFORM hub._open_exception('terminal', mp.lifecycle, v_key, mp.system, v_code,
						format('%s reported %s (%s) after the %s reached its terminal state %s',
							   mp.system, r.reported_state, v_code, mp.lifecycle, r.previous_state), p_inbox_id);
				END IF;
			END IF;
			IF r.outcome = 'conflict' THEN
				PERFORM hub._open_exception('conflict', mp.lifecycle, v_key, mp.system, v_code,
					format('%s reported %s (%s), incomparable with the canonical state %s',
						   mp.system, r.reported_state, v_code, r.previous_state), p_inbox_id);
			ELSIF r.outcome = 'not_owner' THEN
				PERFORM hub._open_exception('not_owner', mp.lifecycle, v_key, mp.system, v_code,
					format('%s reported %s (%s), a state its role does not own', mp.system, r.reported_state, v_code),
					p_inbox_id);
			END IF;
		END IF;
		-- the site the record names, on the key's row (issue 21)
		IF v_site IS NOT NULL THEN
			UPDATE hub.entity_state es SET site = v_site
			WHERE es.lifecycle = mp.lifecycle AND es.business_key = v_key AND es.site IS DISTINCT FROM v_site;
		END IF;
	END IF;

	IF NOT p_handled THEN
		RETURN '{}';
	END IF;
	RETURN jsonb_build_object('inbox_id', p_inbox_id, 'source', i.source, 'message_id', i.message_id,
							  'message_type', p_message_type, 'correlation_id', i.correlation_id,
							  'aggregate_id', i.aggregate_id, 'received_at', i.received_at,
							  'attempts', i.attempts);
END
$$;
COMMENT ON FUNCTION hub._inbox_step(bigint, boolean) IS
'API: Private. Within hub.process_inbox''s subtransaction of one message (which must be new or retry_wait, 55000 otherwise; its payload is read from hub.inbox): find its declared mapping (NULL when there is neither mapping nor handler: unhandled), set the message''s correlation and causation ids for hub.publish, apply the mapping (read the fields: 22023/22007 for a malformed message, retried, then dead; link parent and children; map and apply the code with its canonical events; open the business exceptions unknown_code, terminal, conflict, not_owner), and return the context a handler gets (inbox_id, source, message_id, message_type, correlation_id, aggregate_id, received_at, attempts), or {} without a handler.';

CREATE OR REPLACE FUNCTION hub._inbox_apply_batch(p_ids bigint[])
RETURNS bigint[]
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	a_id		bigint[];
	a_lc		text[];
	a_key		text[];
	a_sys		text[];
	a_role		text[];
	a_qual		text[];
	a_partner	text[];
	a_code		text[];
	a_at		timestamptz[];
	a_state		text[];
	a_corr		text[];
	a_payload	jsonb[];
	a_site		text[];
	v_done		bigint[];
	v_written	bigint;
BEGIN
	IF p_ids IS NULL OR cardinality(p_ids) = 0 OR EXISTS (SELECT FROM hub.readiness_rules) THEN
		RETURN '{}';
	END IF;
	BEGIN
		-- the messages, their mapping and fields (silent: a path that
		-- raises for a message leaves it to the per-message path, which
		-- fails it); per key, how many of the batch name it (any message of
		-- a mapping whose key reads)
		WITH msg AS (
			SELECT i.inbox_id, i.payload, i.correlation_id, i.received_at, mp.lifecycle, mp.system,
				   mp.occurred_at_path, mp.parent_path, mp.children_path,
				   jsonb_path_query_first(i.payload, mp.key_path, '{}', true) AS kv,
				   jsonb_path_query_first(i.payload, mp.code_path, '{}', true) AS cv,
				   CASE WHEN mp.occurred_at_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.occurred_at_path, '{}', true) END AS tv,
				   CASE WHEN mp.qualifier_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.qualifier_path, '{}', true) END AS qv,
				   CASE WHEN mp.partner_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.partner_path, '{}', true) END AS pv,
				   CASE WHEN mp.site_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.site_path, '{}', true) END AS sv
			FROM hub.inbox i
			-- (the mapping of each message type once, not once a message)
			JOIN (SELECT ty.message_type, mm.*
				  FROM (SELECT DISTINCT x.message_type FROM hub.inbox x WHERE x.inbox_id = ANY (p_ids)) ty
				  CROSS JOIN LATERAL (
					SELECT m.* FROM hub.inbox_mappings m
					WHERE hub._inbox_pattern_matches(m.message_pattern, ty.message_type)
					ORDER BY m.message_pattern = ty.message_type DESC, length(m.message_pattern) DESC
					LIMIT 1) mm) mp ON mp.message_type = i.message_type
			-- (by the primary key: a join with the array may scan the backlog)
			WHERE i.inbox_id = ANY (p_ids) AND i.state IN ('new', 'retry_wait')
			  AND jsonb_typeof(i.payload) = 'object'
		), f AS (
			SELECT m.*, m.kv #>> '{}' AS key, m.cv #>> '{}' AS code,
				   CASE WHEN m.qualifier_ok THEN m.qv #>> '{}' END AS qual,
				   CASE WHEN m.partner_ok THEN m.pv #>> '{}' END AS partner,
				   nullif(m.sv #>> '{}', '') AS site,
				   count(*) OVER (PARTITION BY m.lifecycle, m.kv #>> '{}') AS named
			FROM (SELECT msg.*,
						 jsonb_typeof(msg.qv) IS DISTINCT FROM 'object' AND jsonb_typeof(msg.qv) IS DISTINCT FROM 'array' AS qualifier_ok,
						 jsonb_typeof(msg.pv) IS DISTINCT FROM 'object' AND jsonb_typeof(msg.pv) IS DISTINCT FROM 'array' AS partner_ok
				  FROM msg
				  WHERE jsonb_typeof(msg.kv) IN ('string', 'number', 'boolean') AND msg.kv #>> '{}' <> '') m
		), t AS (
			-- (hub._json_time's forms, without its error: a time it would
			-- refuse leaves the message to the per-message path)
			SELECT f.*,
				   CASE WHEN f.occurred_at_path IS NULL THEN f.received_at
						WHEN jsonb_typeof(f.tv) = 'number' THEN to_timestamp((f.tv #>> '{}')::float8)
						WHEN jsonb_typeof(f.tv) = 'string' THEN
							CASE WHEN btrim(f.tv #>> '{}') ~ '^\d{4}-\d\d-\d\d([Tt ]\d\d:\d\d(:\d\d(\.\d+)?)?)?$'
								 THEN btrim(f.tv #>> '{}')::timestamp AT TIME ZONE 'UTC'
								 WHEN btrim(f.tv #>> '{}') ~ '^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d(:\d\d(\.\d+)?)? ?([Zz]|[+-]\d\d(:?\d\d)?)$'
								 THEN btrim(f.tv #>> '{}')::timestamptz END END AS at
			FROM f
			WHERE f.named = 1 AND f.parent_path IS NULL AND f.children_path IS NULL
			  AND jsonb_typeof(f.kv) IN ('string', 'number') AND octet_length(f.key) <= 256
			  AND jsonb_typeof(f.cv) IN ('string', 'number') AND f.code <> ''
			  AND f.qualifier_ok AND f.partner_ok
			  -- (a site that is no value or too long: the per-message path fails it)
			  AND jsonb_typeof(f.sv) IS DISTINCT FROM 'object' AND jsonb_typeof(f.sv) IS DISTINCT FROM 'array'
			  AND coalesce(octet_length(f.site), 0) <= 256
		), r AS MATERIALIZED (
			-- (materialized: the owner check below is then an index probe a
			-- row, not a join of the whole table with the mapping's result)
			SELECT t.*, ms.state AS m_state, ro.role
			FROM t
			CROSS JOIN LATERAL hub.try_map_status(t.system, t.lifecycle, t.code, t.qual, t.partner) ms
			CROSS JOIN LATERAL (
				SELECT sy.role FROM hub.systems sy
				WHERE sy.system = t.system AND sy.qualifier IN ('', coalesce(t.qual, ''))
				ORDER BY sy.qualifier DESC LIMIT 1) ro
			WHERE t.at IS NOT NULL AND ms.state IS NOT NULL AND ms.overlay IS NULL
			  AND hub.lifecycle_state_valid(t.lifecycle, ms.state)
		)
		-- (the arrays stay aligned, being filled from the same rows in the
		-- same order; the writes below sort by inbox_id themselves)
		SELECT array_agg(r.inbox_id), array_agg(r.lifecycle), array_agg(r.key), array_agg(r.system),
			   array_agg(r.role), array_agg(r.qual), array_agg(r.partner), array_agg(r.code), array_agg(r.at),
			   array_agg(r.m_state), array_agg(r.correlation_id), array_agg(r.payload), array_agg(r.site)
		INTO a_id, a_lc, a_key, a_sys, a_role, a_qual, a_partner, a_code, a_at, a_state, a_corr, a_payload, a_site
		FROM r
		WHERE EXISTS (SELECT FROM hub.state_owners o
					  WHERE o.lifecycle = r.lifecycle AND o.state = r.m_state AND o.role = r.role);
		IF a_id IS NULL THEN
			RETURN '{}';
		END IF;

		-- the keys' rows, locked in key order (as hub._apply_canonical does,
		-- one key at a time)
		PERFORM FROM hub.entity_state es
		JOIN unnest(a_lc, a_key) k(lc, key) ON es.lifecycle = k.lc AND es.business_key = k.key
		ORDER BY es.lifecycle, es.business_key
		FOR UPDATE OF es;

		-- (the correlation and causation ids are passed: none of a message
		-- processed before is current)
		PERFORM set_config('hub.inbox_correlation_id', '', true),
				set_config('hub.inbox_causation_id', '', true);
		WITH a AS (
			SELECT * FROM unnest(a_id, a_lc, a_key, a_sys, a_role, a_qual, a_partner, a_code, a_at, a_state,
								 a_corr, a_payload, a_site)
				AS a(inbox_id, lifecycle, key, system, role, qual, partner, code, at, state, corr, payload, site)
		), c AS (
			-- classified against the key's row: created (a new key, or one
			-- without a state) or advanced; no overlay on it
			SELECT a.*, es.lifecycle IS NULL AS is_new, es.state AS previous_state,
				   CASE WHEN es.state IS NOT NULL
						THEN hub._classify_transition(a.lifecycle, es.state, a.state, false) END AS kind,
				   CASE WHEN es.state IS NULL THEN 'created' ELSE 'advanced' END AS outcome,
				   se.event_type, et.required_keys
			FROM a
			LEFT JOIN hub.entity_state es ON es.lifecycle = a.lifecycle AND es.business_key = a.key
			JOIN hub.state_events se ON se.lifecycle = a.lifecycle AND se.state = a.state
			JOIN hub.event_types et ON et.event_type = se.event_type
			WHERE es.lifecycle IS NULL OR (NOT es.on_hold AND es.exception_reason IS NULL)
		), b AS MATERIALIZED (
			-- the canonical event's payload, as hub._state_event makes it
			-- (MATERIALIZED, here and below: each expression once a row)
			SELECT c.*,
				   jsonb_build_object(c.lifecycle || '_id', c.key, 'business_key', c.key, 'lifecycle', c.lifecycle,
						'state', c.state, 'previous_state', c.previous_state, 'change', c.outcome,
						'system', c.system,
						'occurred_at', to_char(c.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
				   || CASE WHEN c.partner IS NOT NULL THEN jsonb_build_object('partner', c.partner) ELSE '{}' END
				   || CASE WHEN c.lifecycle = 'shipment' AND 'carrier' = ANY (c.required_keys)
						   THEN jsonb_build_object('carrier',
								coalesce(c.partner, (SELECT sy.system FROM hub.systems sy
													 WHERE sy.system = c.system AND sy.qualifier = ''
													   AND sy.role = 'carrier')))
						   ELSE '{}' END AS base
			FROM c
			WHERE c.previous_state IS NULL OR c.kind IN ('advance', 'advance_with_gap')
		), e AS MATERIALIZED (
			SELECT b.*,
				   b.base || coalesce((SELECT jsonb_object_agg(k.k, b.payload -> k.k)
									   FROM unnest(b.required_keys) k(k)
									   WHERE NOT b.base ? k.k AND b.payload ? k.k), '{}') AS body
			FROM b
		), ok AS (
			SELECT e.* FROM e WHERE hub.contract_violation(e.event_type, e.body) IS NULL
		), ins AS (
			INSERT INTO hub.entity_state AS es
				(lifecycle, business_key, state, state_system, state_occurred_at, last_advanced_at, on_hold, site)
			SELECT ok.lifecycle, ok.key, ok.state, ok.system, ok.at, ok.at, false, ok.site
			FROM ok WHERE ok.is_new
			ON CONFLICT DO NOTHING
			RETURNING es.lifecycle, es.business_key
		), upd AS (
			UPDATE hub.entity_state es
			SET state = ok.state, state_system = ok.system, state_occurred_at = ok.at, last_advanced_at = ok.at,
				on_hold = false, on_hold_reason = NULL, on_hold_since = NULL, exception_reason = NULL,
				exception_since = NULL, updated_at = now(), site = coalesce(ok.site, es.site)
			FROM ok
			WHERE NOT ok.is_new AND es.lifecycle = ok.lifecycle AND es.business_key = ok.key
			RETURNING es.lifecycle, es.business_key
		), w AS (
			-- (every row of ok; a key another transaction created meanwhile
			-- is missing from ins: counted below, and all is undone)
			SELECT ok.* FROM ok
		), sys AS (
			INSERT INTO hub.entity_system_state AS s
				(lifecycle, business_key, system, role, qualifier, code, state, state_since,
				 overlay_kind, reason, occurred_at)
			SELECT w.lifecycle, w.key, w.system, w.role, w.qual, w.code, w.state, w.at, NULL, NULL, w.at
			FROM w
			ON CONFLICT ON CONSTRAINT entity_system_state_pkey DO UPDATE
			SET role = EXCLUDED.role, qualifier = EXCLUDED.qualifier, code = EXCLUDED.code,
				state = coalesce(EXCLUDED.state, s.state),
				state_since = CASE WHEN EXCLUDED.state IS NULL OR EXCLUDED.state = s.state
								   THEN s.state_since ELSE EXCLUDED.occurred_at END,
				overlay_kind = EXCLUDED.overlay_kind, reason = EXCLUDED.reason,
				occurred_at = EXCLUDED.occurred_at, received_at = now()
			WHERE s.occurred_at <= EXCLUDED.occurred_at
		), hist AS (
			INSERT INTO hub.status_history
				(lifecycle, business_key, system, role, qualifier, code, correction, mapped_state,
				 overlay_kind, reason, previous_state, new_state, kind, outcome, regression_suspect,
				 occurred_at)
			SELECT w.lifecycle, w.key, w.system, w.role, w.qual, w.code, false, w.state,
				   NULL, NULL, w.previous_state, w.state, w.kind, w.outcome, false, w.at
			FROM w ORDER BY w.inbox_id
		), ev AS (
			SELECT w.inbox_id,
				   hub.publish(w.event_type, w.key, w.body, correlation_id => nullif(w.corr, ''),
							   causation_id => 'inbox:' || w.inbox_id, occurred_at => w.at) AS event_id
			FROM w ORDER BY w.inbox_id
		)
		SELECT array_agg(ev.inbox_id ORDER BY ev.inbox_id), (SELECT count(*) FROM ins) + (SELECT count(*) FROM upd)
		INTO v_done, v_written FROM ev;
		IF v_written IS DISTINCT FROM cardinality(v_done)::bigint THEN
			RAISE EXCEPTION 'a key of the batch was created by another transaction meanwhile'
				USING ERRCODE = 'serialization_failure';
		END IF;
	EXCEPTION WHEN OTHERS THEN
		-- (undone: every message goes the per-message way, which reports
		-- the error of the one at fault)
		RETURN '{}';
	END;
	RETURN coalesce(v_done, '{}');
END
$$;
COMMENT ON FUNCTION hub._inbox_apply_batch(bigint[]) IS
'API: Private. Apply, set-based and in one subtransaction, the mapped messages of a batch (hub.process_inbox, messages without a handler) whose report creates or advances a key without overlays and publishes a canonical event it satisfies, each key named once in the batch, while no readiness rule exists; writes and publishes what the per-message path (hub._inbox_step) would. Returns the ids applied, for the caller to settle done; the others go the per-message way (all of them when anything fails).';

/*
 * 68_thresholds.sql --- the thresholds and windows of the business views
 * (75_business_views.sql), of hub.sync_status and of hub.metrics(), as
 * configuration: hub.thresholds shows each with its default and meaning,
 * hub.set_threshold changes one (audited in hub.operator_audit).
 */

/*
 * The defaults live in the view hub.thresholds; an operator's value is a
 * row of hub.threshold_settings, the only table a dump carries (so a
 * restore into a newer version keeps the operator's values and the new
 * defaults).
 */
CREATE TABLE hub.threshold_settings (
	name		text PRIMARY KEY,
	value		interval NOT NULL CHECK (value > interval '0' AND value <= interval '366 days'),
	set_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	set_by		text NOT NULL DEFAULT session_user
);
COMMENT ON TABLE hub.threshold_settings IS
'Operator values of the thresholds of the business views and of hub.metrics() (hub.thresholds shows them with their defaults); written by hub.set_threshold only, each change audited in hub.operator_audit.';
SELECT pg_catalog.pg_extension_config_dump('hub.threshold_settings', '');

CREATE VIEW hub.thresholds AS
SELECT d.name, coalesce(s.value, d.default_value) AS value, d.default_value, d.description,
	   s.set_at, s.set_by
FROM (VALUES
	('order_release', interval '4 hours',
	 'An order created (or draft) and not released to a warehouse for longer is listed by hub.orders_awaiting_release.'),
	('carrier_scan', interval '24 hours',
	 'A shipment with a label and no carrier scan for longer is listed by hub.missing_tracking.'),
	('erp_posting', interval '1 hour',
	 'An inventory adjustment or shipment confirmation not delivered to an ERP endpoint for longer is overdue in hub.erp_postings_pending.'),
	('return_reconciliation', interval '72 hours',
	 'A return received or inspected and not resolved by the ERP for longer is overdue in hub.returns_awaiting_reconciliation.'),
	('portal_freshness', interval '15 minutes',
	 'A portal showing another state than the canonical one for longer is overdue in hub.portal_freshness.'),
	('cycle_time_window', interval '1 day',
	 'The window of hub.cycle_times (orders shipped, confirmations delivered within it).'),
	('sync_status_lookback', interval '1 day',
	 'How far back hub.sync_status looks for the last success of a subscription (older: NULL).'),
	('metrics_window', interval '5 minutes',
	 'The window of hub.metrics()''s recent attempts, poll requests and delivery latency histogram.')
) d (name, default_value, description)
LEFT JOIN hub.threshold_settings s ON s.name = d.name;
COMMENT ON VIEW hub.thresholds IS
'Thresholds and windows of the business views and of hub.metrics(): their value (the operator''s, else the default), default and meaning. Change one with hub.set_threshold(name, value, reason).';

CREATE FUNCTION hub.set_threshold(name text, value interval, reason text DEFAULT NULL)
RETURNS interval
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v_old interval;
BEGIN
	IF NOT EXISTS (SELECT FROM hub.thresholds t WHERE t.name = set_threshold.name) THEN
		RAISE EXCEPTION 'unknown threshold: "%"', set_threshold.name
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'SELECT name FROM hub.thresholds lists them.';
	END IF;
	IF value IS NOT NULL THEN
		PERFORM hub._check_setting(set_threshold.name, value > interval '0' AND value <= interval '366 days',
								   value::text, 'above 0 and at most 366 days');
	END IF;
	SELECT t.value INTO v_old FROM hub.thresholds t WHERE t.name = set_threshold.name;
	IF value IS NULL THEN
		DELETE FROM hub.threshold_settings s WHERE s.name = set_threshold.name;
	ELSE
		INSERT INTO hub.threshold_settings AS s (name, value) VALUES (set_threshold.name, set_threshold.value)
		ON CONFLICT ON CONSTRAINT threshold_settings_pkey
		DO UPDATE SET value = excluded.value, set_at = pg_catalog.now(), set_by = session_user;
	END IF;
	PERFORM hub._audit('set_threshold', set_threshold.name, reason,
					   pg_catalog.jsonb_build_object('old', v_old, 'new', set_threshold.value));
	RETURN (SELECT t.value FROM hub.thresholds t WHERE t.name = set_threshold.name);
END
$$;
COMMENT ON FUNCTION hub.set_threshold(text, interval, text) IS
'Set a threshold of hub.thresholds (above 0, at most 366 days; NULL: back to its default), audited in hub.operator_audit with the old and new value; returns the value now in force. 22023 for an unknown name or a value out of range.';

-- ---------------------------------------------------------------- privileges

REVOKE EXECUTE ON FUNCTION hub.set_threshold(text, interval, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.set_threshold(text, interval, text) TO hub_admin;
GRANT SELECT ON hub.thresholds, hub.threshold_settings TO hub_reader;

/*
 * sync_status reads the open deliveries (deliveries_open_key_idx) and the
 * attempts of the lookback sync_status_lookback only (hub.thresholds, one
 * day by default), through attempts_at_idx: the lookback's bound is known
 * when the executor starts, so the attempts of the other days (their
 * partitions) are not read at all.  A subscription without a success in the
 * lookback shows last_success NULL.
 */
-- the attempts of a time window (sync_status, cycle times, hub.metrics())
CREATE INDEX attempts_at_idx ON hub.attempts (at);

CREATE OR REPLACE VIEW hub.sync_status AS
WITH recent AS (
	SELECT x.subscription_id,
		   max(a.at) FILTER (WHERE a.outcome = 'delivered') AS last_success,
		   round(avg((a.outcome = 'delivered')::int) FILTER (WHERE a.at > now() - interval '1 hour'
			   AND a.outcome IN ('delivered', 'retry', 'dead')), 3) AS success_rate_1h
	FROM hub.attempts a
	JOIN hub.deliveries x USING (delivery_id)
	WHERE a.at > now() - greatest((SELECT t.value FROM hub.thresholds t WHERE t.name = 'sync_status_lookback'),
								  interval '1 hour')
	GROUP BY x.subscription_id
)
SELECT e.name AS endpoint, e.kind, s.subscription_id, s.event_pattern,
	   e.enabled, e.paused, e.circuit_state,
	   -- (events: a batch or a lease group counts each of its events)
	   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'pending'), 0) AS pending,
	   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'in_flight'), 0) AS in_flight,
	   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'retry_wait'), 0) AS retrying,
	   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'dead'), 0) AS dead,
	   -- (the publication time of the open deliveries only, a lookup each: a
	   -- join with the outbox was planned as a scan of all of it)
	   now() - min((SELECT o.published_at FROM hub.outbox o WHERE o.event_id = d.event_id))
		   FILTER (WHERE d.state IN ('pending', 'retry_wait', 'in_flight')) AS oldest_pending_age,
	   min(r.last_success) AS last_success,
	   min(r.success_rate_1h) AS success_rate_1h
FROM hub.subscriptions s
JOIN hub.endpoints e USING (endpoint_id)
LEFT JOIN recent r ON r.subscription_id = s.subscription_id
LEFT JOIN hub.deliveries d ON d.subscription_id = s.subscription_id
	AND d.state NOT IN ('delivered', 'skipped')
GROUP BY e.endpoint_id, s.subscription_id;
COMMENT ON VIEW hub.sync_status IS
'Per endpoint and subscription: pending, in flight, retrying and dead events (a batch or lease group counts each of its events), the age of the oldest undelivered event, the last success within the lookback sync_status_lookback (hub.thresholds; NULL: none in it), the success rate of attempts over the last hour, and the circuit state. Reads the open deliveries and the lookback''s attempts only.';


CREATE OR REPLACE VIEW hub.drift AS
SELECT e.lifecycle, e.business_key, e.state AS canonical_state, s.system, s.role,
	   s.code AS system_code, s.state AS system_state,
	   greatest(e.state_occurred_at, s.state_since) AS disagreeing_since,
	   now() - greatest(e.state_occurred_at, s.state_since) AS disagreeing_for,
	   t.tolerance, pl.parent_lifecycle, pl.parent_key
FROM hub.entity_state e
JOIN hub.entity_system_state s USING (lifecycle, business_key)
JOIN hub.drift_tolerances t ON t.lifecycle = e.lifecycle AND t.role = s.role
LEFT JOIN LATERAL (
	SELECT l.parent_lifecycle, l.parent_key FROM hub.entity_links l
	WHERE l.child_lifecycle = e.lifecycle AND l.child_key = e.business_key
	ORDER BY l.linked_at, l.parent_lifecycle, l.parent_key LIMIT 1) pl ON true
WHERE e.state IS NOT NULL AND s.state IS NOT NULL AND s.state <> e.state
  AND now() - greatest(e.state_occurred_at, s.state_since) > t.tolerance
  -- a coarser vocabulary agrees when its code is the one the canonical
  -- state maps to in it (portal "Processing" covers released..packed);
  -- a join, not a function call a row (issue 21: a plpgsql call with an
  -- exception block, a subtransaction a row, made the view 35 times a
  -- count of its tables)
  AND NOT EXISTS (SELECT FROM hub.status_unmap u
				  WHERE u.system = lower(s.system) AND u.lifecycle = e.lifecycle AND u.state = e.state
					AND u.code = s.code);
DROP FUNCTION hub._projection_agrees(text, text, text, text);

/*
 * 75_business_views.sql --- the questions an analyst and a dashboard ask of
 * the hub (LOGISTICS seeds: "order synchronization lag, inventory update
 * success rates, shipment event throughput, backlog by warehouse, and
 * portal status freshness"), one view each, with their thresholds as
 * configuration (hub.thresholds, 68_thresholds.sql).
 *
 * Cost: each view reads what answers it and nothing more.  The views over
 * entity state read hub.entity_state once (no index on its state: an index
 * on state would make every advance a non-HOT update, paid by the flow);
 * those over deliveries read only the open ones (deliveries_open_key_idx);
 * those over attempts read only their window, through attempts_at_idx
 * (70_operations.sql; the window's bound is known at executor start, so
 * partition pruning leaves the other days untouched);
 * order-to-ship reads the shipped reports of its window through a partial
 * index of hub.status_history that only those reports enter.
 * test/bench/views.sh measures them at a million entities and attempts.
 */

-- ---------------------------------------------------------------- entity views

CREATE VIEW hub.orders_awaiting_release AS
SELECT e.business_key AS order_key, e.state, e.site, e.last_advanced_at AS since,
	   now() - e.last_advanced_at AS waiting_for, t.value AS threshold
FROM hub.entity_state e
CROSS JOIN (SELECT x.value FROM hub.thresholds x WHERE x.name = 'order_release') t
WHERE e.lifecycle = 'order' AND e.state IN ('draft', 'created')
  AND e.last_advanced_at < now() - t.value;
COMMENT ON VIEW hub.orders_awaiting_release IS
'Orders created (or draft) and not released to a warehouse within the threshold order_release (hub.thresholds), with their site and how long they have waited.';

CREATE VIEW hub.release_backlog_by_site AS
SELECT e.site, count(*) AS orders, min(e.last_advanced_at) AS oldest_since,
	   now() - min(e.last_advanced_at) AS oldest_waiting_for,
	   count(*) FILTER (WHERE e.last_advanced_at < now() - t.value) AS late
FROM hub.entity_state e
CROSS JOIN (SELECT x.value FROM hub.thresholds x WHERE x.name = 'order_release') t
WHERE e.lifecycle = 'order' AND e.state IN ('draft', 'created')
GROUP BY e.site;
COMMENT ON VIEW hub.release_backlog_by_site IS
'Orders waiting for warehouse release, by site (NULL: no mapping named one): how many, the oldest, and how many are past the threshold order_release.';

CREATE VIEW hub.missing_tracking AS
SELECT e.business_key AS shipment_key, e.site, e.state_system AS labelled_by,
	   e.last_advanced_at AS label_at, now() - e.last_advanced_at AS without_scan_for,
	   t.value AS threshold, e.exception_reason
FROM hub.entity_state e
CROSS JOIN (SELECT x.value FROM hub.thresholds x WHERE x.name = 'carrier_scan') t
WHERE e.lifecycle = 'shipment' AND e.state = 'label_created'
  AND e.last_advanced_at < now() - t.value;
COMMENT ON VIEW hub.missing_tracking IS
'Shipments with a label and no carrier scan since for longer than the threshold carrier_scan (hub.thresholds): missing tracking events.';

CREATE VIEW hub.returns_awaiting_reconciliation AS
SELECT e.business_key AS return_key, e.state, e.site, e.last_advanced_at AS since,
	   now() - e.last_advanced_at AS waiting_for, t.value AS threshold,
	   e.last_advanced_at < now() - t.value AS overdue
FROM hub.entity_state e
CROSS JOIN (SELECT x.value FROM hub.thresholds x WHERE x.name = 'return_reconciliation') t
WHERE e.lifecycle = 'return' AND e.state IN ('received', 'inspected');
COMMENT ON VIEW hub.returns_awaiting_reconciliation IS
'Returns received or inspected and not yet resolved (refunded, credited) by the ERP: waiting for financial reconciliation, since when, and overdue past the threshold return_reconciliation.';

CREATE VIEW hub.backlog_by_site AS
SELECT e.lifecycle, e.site, e.state, count(*) AS keys, min(e.last_advanced_at) AS oldest_since,
	   now() - min(e.last_advanced_at) AS oldest_age,
	   count(*) FILTER (WHERE e.on_hold) AS on_hold,
	   count(*) FILTER (WHERE e.exception_reason IS NOT NULL) AS exceptions
FROM hub.entity_state e
JOIN (SELECT l, s.state FROM unnest(ARRAY['order', 'shipment', 'movement', 'return']) l,
	  LATERAL hub.lifecycle_states(l) s WHERE NOT s.terminal) o ON o.l = e.lifecycle AND o.state = e.state
GROUP BY e.lifecycle, e.site, e.state;
COMMENT ON VIEW hub.backlog_by_site IS
'Open keys (in a state that is not terminal) by lifecycle, site and state: how many, the oldest since its last advance, how many are on hold or in exception.';

/*
 * (A portal's coarser code agrees with the canonical state when it is the
 * code the state maps to in the portal's vocabulary, as hub.drift counts
 * it: a join of hub.status_unmap.)
 */
CREATE VIEW hub.portal_freshness AS
SELECT v.lifecycle, v.business_key, v.canonical_state, v.canonical_since, v.portal, v.portal_code,
	   v.portal_state, v.portal_told_at, v.in_sync,
	   CASE WHEN NOT v.in_sync THEN v.since END AS differs_since,
	   CASE WHEN NOT v.in_sync THEN now() - v.since END AS differs_for,
	   NOT v.in_sync AND now() - v.since > t.value AS overdue
FROM (
	SELECT e.lifecycle, e.business_key, e.state AS canonical_state, e.state_occurred_at AS canonical_since,
		   s.system AS portal, s.code AS portal_code, s.state AS portal_state, s.received_at AS portal_told_at,
		   coalesce(s.state = e.state, false) OR coalesce(u.code = s.code, false) AS in_sync,
		   greatest(e.state_occurred_at, s.state_since) AS since
	FROM hub.entity_state e
	JOIN hub.entity_system_state s USING (lifecycle, business_key)
	LEFT JOIN hub.status_unmap u ON u.system = lower(s.system) AND u.lifecycle = e.lifecycle AND u.state = e.state
	WHERE s.role = 'portal' AND e.state IS NOT NULL
) v
CROSS JOIN (SELECT x.value FROM hub.thresholds x WHERE x.name = 'portal_freshness') t;
COMMENT ON VIEW hub.portal_freshness IS
'Per key and portal: what the portal last reported showing (hub.entity_system_state of a system of role portal) against the canonical state, whether they agree, since when and for how long they differ, and overdue past the threshold portal_freshness.';

-- ---------------------------------------------------------------- posting to the ERP

/*
 * What an ERP is waiting for: inventory adjustments (inventory.adjusted,
 * movement.done) and shipment confirmations (order.shipped,
 * shipment.dispatched) not yet delivered to an endpoint of kind erp.
 */
CREATE FUNCTION hub._erp_posting_kind(event_type text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN event_type IN ('inventory.adjusted', 'movement.done') THEN 'inventory_adjustment'
				WHEN event_type IN ('order.shipped', 'shipment.dispatched') THEN 'shipment_confirmation' END
$$;
COMMENT ON FUNCTION hub._erp_posting_kind(text) IS
'API: Private. inventory_adjustment for inventory.adjusted and movement.done, shipment_confirmation for order.shipped and shipment.dispatched, else NULL.';

CREATE VIEW hub.erp_postings_pending AS
SELECT en.name AS endpoint, hub._erp_posting_kind(o.event_type) AS kind, o.event_id, o.event_type,
	   o.aggregate_id, o.occurred_at, now() - o.occurred_at AS waiting_for, d.state, d.attempts,
	   d.last_error, now() - o.occurred_at > t.value AS overdue
FROM hub.deliveries d
JOIN hub.endpoints en ON en.endpoint_id = d.endpoint_id
CROSS JOIN LATERAL unnest(coalesce(d.batch_events, ARRAY[d.event_id])) b(event_id)
JOIN hub.outbox o ON o.event_id = b.event_id
CROSS JOIN (SELECT x.value FROM hub.thresholds x WHERE x.name = 'erp_posting') t
WHERE d.state NOT IN ('delivered', 'skipped') AND en.kind = 'erp'
  AND hub._erp_posting_kind(o.event_type) IS NOT NULL;
COMMENT ON VIEW hub.erp_postings_pending IS
'Inventory adjustments (inventory.adjusted, movement.done) and shipment confirmations (order.shipped, shipment.dispatched) not yet delivered to an endpoint of kind erp: how long since the event occurred, the delivery''s state, attempts and last error, overdue past the threshold erp_posting.';

-- ---------------------------------------------------------------- cycle times

-- only an order's shipped reports that moved it enter this index
CREATE INDEX status_history_shipped_idx ON hub.status_history (occurred_at)
	WHERE lifecycle = 'order' AND new_state = 'shipped' AND outcome IN ('created', 'advanced', 'corrected');

CREATE VIEW hub.cycle_times AS
WITH w AS (SELECT x.value FROM hub.thresholds x WHERE x.name = 'cycle_time_window'),
ship AS (
	SELECT pg_catalog.date_part('epoch', h.occurred_at - f.occurred_at) AS s
	FROM hub.status_history h
	CROSS JOIN LATERAL (SELECT h0.occurred_at FROM hub.status_history h0
						WHERE h0.lifecycle = 'order' AND h0.business_key = h.business_key
						ORDER BY h0.history_id LIMIT 1) f
	WHERE h.lifecycle = 'order' AND h.new_state = 'shipped' AND h.outcome IN ('created', 'advanced', 'corrected')
	  AND h.occurred_at > now() - (SELECT w.value FROM w)
), conf AS (
	SELECT pg_catalog.date_part('epoch', a.at - o.occurred_at) AS s
	FROM hub.attempts a
	JOIN hub.deliveries d ON d.delivery_id = a.delivery_id
	JOIN hub.endpoints en ON en.endpoint_id = d.endpoint_id
	CROSS JOIN LATERAL unnest(CASE WHEN a.group_event_id IS NOT NULL THEN ARRAY[a.group_event_id]
								   ELSE coalesce(d.batch_events, ARRAY[d.event_id]) END) b(event_id)
	JOIN hub.outbox o ON o.event_id = b.event_id
	WHERE a.at > now() - (SELECT w.value FROM w) AND a.outcome = 'delivered' AND en.kind = 'erp'
	  AND hub._erp_posting_kind(o.event_type) = 'shipment_confirmation'
)
SELECT m.measure, (SELECT w.value FROM w) AS "window", m.n AS count,
	   pg_catalog.make_interval(secs => m.p[1]) AS p50, pg_catalog.make_interval(secs => m.p[2]) AS p90,
	   pg_catalog.make_interval(secs => m.p[3]) AS p95, pg_catalog.make_interval(secs => m.p[4]) AS p99,
	   pg_catalog.make_interval(secs => m.mx) AS max
FROM (
	SELECT 'order_to_ship' AS measure, count(*) AS n, max(s) AS mx,
		   percentile_cont(ARRAY[0.5, 0.9, 0.95, 0.99]) WITHIN GROUP (ORDER BY s) AS p
	FROM ship
	UNION ALL
	SELECT 'shipment_confirmation_latency', count(*), max(s),
		   percentile_cont(ARRAY[0.5, 0.9, 0.95, 0.99]) WITHIN GROUP (ORDER BY s)
	FROM conf
) m;
COMMENT ON VIEW hub.cycle_times IS
'Percentiles (50, 90, 95, 99, max) over the window cycle_time_window (hub.thresholds) of order_to_ship (an order''s first report to its shipped report, for orders shipped in the window, by source times) and shipment_confirmation_latency (a shipment confirmation''s occurrence at the warehouse to its delivery to an ERP endpoint, for deliveries in the window). NULL percentiles when the window has none.';

-- ---------------------------------------------------------------- privileges

REVOKE EXECUTE ON FUNCTION hub._erp_posting_kind(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub._erp_posting_kind(text) TO hub_reader;
GRANT SELECT ON hub.orders_awaiting_release, hub.release_backlog_by_site,
	hub.missing_tracking, hub.returns_awaiting_reconciliation, hub.backlog_by_site, hub.portal_freshness,
	hub.erp_postings_pending, hub.cycle_times TO hub_reader;

/*
 * 76_metrics.sql --- hub.metrics(): what an operator scrapes, in the
 * Prometheus text exposition format 0.0.4 (one # HELP and # TYPE per
 * family, then its samples; label values escaped: backslash, double quote
 * and newline), names logistics_hub_*:
 *   events published (a counter: the outbox's sequence, never reset by
 *   retention); delivery attempts and poll requests by endpoint or poller
 *   and outcome, and the delivery latency (publication to the delivered
 *   attempt) as a histogram, over the window metrics_window (hub.thresholds:
 *   the attempts are an audit that retention drops by the day, so a total
 *   over them would fall back at each drop; a window is what attempts_at_idx
 *   reads cheaply); backlog, dead events and oldest pending age per
 *   endpoint; backlog, oldest pending age, overdue time and failures per
 *   poller; circuit states; inbox backlog and failed messages; open
 *   exceptions by kind; drift and stale keys by lifecycle.
 * Worker restarts are not here (the workers' view hub.workers exposes them).
 * Served by SQL (SELECT hub.metrics()) to any collector that can run a
 * query; sql/postgres_exporter.yml gives prometheus-postgres-exporter the
 * same figures as queries.
 */

-- failed inbox messages, for hub.metrics(): only dead and unhandled rows
-- enter it (rare), and state is in the inbox's partial indexes already, so
-- no update that was HOT stops being so
CREATE INDEX inbox_failed_idx ON hub.inbox (inbox_id) WHERE state IN ('dead', 'unhandled');

CREATE FUNCTION hub._prom_label(value text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(value, E'\\', E'\\\\'), '"', E'\\"'), E'\n', E'\\n')
$$;
COMMENT ON FUNCTION hub._prom_label(text) IS
'API: Private. A label value escaped for the Prometheus text format: backslash, double quote and newline.';

CREATE FUNCTION hub._prom_family(name text, type text, help text, samples text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT pg_catalog.format(E'# HELP %s %s\n# TYPE %s %s\n', name,
							 pg_catalog.replace(pg_catalog.replace(help, E'\\', E'\\\\'), E'\n', E'\\n'),
							 name, type) || coalesce(samples, '')
$$;
COMMENT ON FUNCTION hub._prom_family(text, text, text, text) IS
'API: Private. One metric family of the Prometheus text format: # HELP (escaped), # TYPE, then its sample lines.';

CREATE FUNCTION hub._prom_seconds(i interval) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(pg_catalog.round(pg_catalog.date_part('epoch', i)::numeric, 3)::text, 'NaN')
$$;
COMMENT ON FUNCTION hub._prom_seconds(interval) IS
'API: Private. An interval as seconds for the Prometheus text format (NaN for NULL).';

CREATE FUNCTION hub.metrics() RETURNS text
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	w interval := (SELECT t.value FROM hub.thresholds t WHERE t.name = 'metrics_window');
	wtxt text := (SELECT t.value::text FROM hub.thresholds t WHERE t.name = 'metrics_window');
	r text := '';
BEGIN
	r := r || hub._prom_family('logistics_hub_events_published_total', 'counter',
		'Events published to the outbox since the extension was created (the outbox sequence: a publication rolled back counts too).',
		format(E'logistics_hub_events_published_total %s\n',
			   coalesce(pg_catalog.pg_sequence_last_value(
				   pg_catalog.pg_get_serial_sequence('hub.outbox', 'seq')::regclass), 0)));

	-- ---------------------------------------------------------- deliveries
	r := r || hub._prom_family('logistics_hub_delivery_attempts', 'gauge',
		'Delivery attempts in the last ' || wtxt || ' (metrics_window), by endpoint and outcome.',
		(SELECT string_agg(format(E'logistics_hub_delivery_attempts{endpoint="%s",outcome="%s"} %s\n',
								  hub._prom_label(coalesce(en.name, '#' || c.endpoint_id)), c.outcome, c.n),
						   '' ORDER BY en.name, c.outcome)
		 FROM (SELECT d.endpoint_id, a.outcome, count(*) AS n
			   FROM hub.attempts a JOIN hub.deliveries d ON d.delivery_id = a.delivery_id
			   WHERE a.at > now() - w
			   GROUP BY d.endpoint_id, a.outcome) c
		 LEFT JOIN hub.endpoints en ON en.endpoint_id = c.endpoint_id));

	r := r || hub._prom_family('logistics_hub_delivery_latency_seconds', 'histogram',
		'Time from publication to the delivered attempt, for deliveries in the last ' || wtxt || ' (metrics_window), by endpoint.',
		(WITH l AS (
			SELECT d.endpoint_id, pg_catalog.date_part('epoch', a.at - o.published_at) AS s
			FROM hub.attempts a
			JOIN hub.deliveries d ON d.delivery_id = a.delivery_id
			JOIN hub.outbox o ON o.event_id = coalesce(a.group_event_id, d.event_id)
			WHERE a.at > now() - w AND a.outcome = 'delivered'
		 ), b (ord, le, le_text) AS (VALUES
			(1, 0.05, '0.05'), (2, 0.1, '0.1'), (3, 0.25, '0.25'), (4, 0.5, '0.5'), (5, 1, '1'),
			(6, 2.5, '2.5'), (7, 5, '5'), (8, 10, '10'), (9, 30, '30'), (10, 60, '60'),
			(11, 300, '300'), (12, NULL, '+Inf'))
		 SELECT string_agg(x.line, '' ORDER BY x.ep, x.ord)
		 FROM (
			SELECT en.name AS ep, b.ord,
				   format(E'logistics_hub_delivery_latency_seconds_bucket{endpoint="%s",le="%s"} %s\n',
						  hub._prom_label(en.name), b.le_text, count(*) FILTER (WHERE b.le IS NULL OR l.s <= b.le)) AS line
			FROM l JOIN hub.endpoints en ON en.endpoint_id = l.endpoint_id CROSS JOIN b
			GROUP BY en.name, b.ord, b.le_text
			UNION ALL
			SELECT en.name, 13, format(E'logistics_hub_delivery_latency_seconds_sum{endpoint="%s"} %s\n'
									   'logistics_hub_delivery_latency_seconds_count{endpoint="%s"} %s\n',
									   hub._prom_label(en.name), round(sum(l.s)::numeric, 3),
									   hub._prom_label(en.name), count(*))
			FROM l JOIN hub.endpoints en ON en.endpoint_id = l.endpoint_id
			GROUP BY en.name) x));

	r := r || (WITH o AS (
			SELECT d.endpoint_id,
				   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state IN ('pending', 'retry_wait', 'in_flight')), 0) AS backlog,
				   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'dead'), 0) AS dead,
				   now() - min(ob.published_at) FILTER (WHERE d.state IN ('pending', 'retry_wait', 'in_flight')) AS oldest
			FROM hub.deliveries d
			JOIN hub.outbox ob ON ob.event_id = d.event_id
			WHERE d.state NOT IN ('delivered', 'skipped')
			GROUP BY d.endpoint_id
		), e AS (
			SELECT en.name, en.circuit_state, coalesce(o.backlog, 0) AS backlog, coalesce(o.dead, 0) AS dead,
				   coalesce(o.oldest, interval '0') AS oldest
			FROM hub.endpoints en LEFT JOIN o ON o.endpoint_id = en.endpoint_id
		)
		SELECT hub._prom_family('logistics_hub_endpoint_backlog_events', 'gauge',
				'Events waiting for delivery (pending, retrying or in flight), by endpoint.',
				string_agg(format(E'logistics_hub_endpoint_backlog_events{endpoint="%s"} %s\n', hub._prom_label(e.name), e.backlog), '' ORDER BY e.name))
			|| hub._prom_family('logistics_hub_endpoint_dead_events', 'gauge',
				'Events whose delivery gave up (dead letters), by endpoint.',
				string_agg(format(E'logistics_hub_endpoint_dead_events{endpoint="%s"} %s\n', hub._prom_label(e.name), e.dead), '' ORDER BY e.name))
			|| hub._prom_family('logistics_hub_endpoint_oldest_pending_age_seconds', 'gauge',
				'Age of the oldest event waiting for delivery, by endpoint (0: none waits).',
				string_agg(format(E'logistics_hub_endpoint_oldest_pending_age_seconds{endpoint="%s"} %s\n', hub._prom_label(e.name), hub._prom_seconds(e.oldest)), '' ORDER BY e.name))
		FROM e)
		|| hub._prom_family('logistics_hub_circuit_state', 'gauge',
			'Circuit breaker state by endpoint: 1 for the state it is in, 0 for the others.',
			(SELECT string_agg(format(E'logistics_hub_circuit_state{endpoint="%s",state="%s"} %s\n', hub._prom_label(en.name), s.state,
									  (en.circuit_state = s.state)::int), '' ORDER BY en.name, s.ord)
			 FROM hub.endpoints en CROSS JOIN (VALUES (1, 'closed'), (2, 'open'), (3, 'half_open')) s (ord, state)));

	-- ---------------------------------------------------------- pollers
	r := r || hub._prom_family('logistics_hub_poll_requests', 'gauge',
		'Poll requests in the last ' || wtxt || ' (metrics_window), by poller and outcome.',
		(SELECT string_agg(format(E'logistics_hub_poll_requests{poller="%s",outcome="%s"} %s\n',
								  hub._prom_label(coalesce(p.name, '#' || c.poller_id)), c.outcome, c.n),
						   '' ORDER BY p.name, c.outcome)
		 FROM (SELECT q.poller_id, q.outcome, count(*) AS n FROM hub.poll_requests q
			   WHERE q.at > now() - w GROUP BY q.poller_id, q.outcome) c
		 LEFT JOIN hub.pollers p ON p.poller_id = c.poller_id));

	r := r || (WITH b AS (
			SELECT q.poller_id, count(*) AS n, now() - min(i.received_at) AS oldest
			FROM hub.inbox i JOIN hub.poll_requests q ON q.request_id = i.poll_request_id
			WHERE i.state IN ('new', 'retry_wait')
			GROUP BY q.poller_id
		), p AS (
			SELECT p.name, p.paused, p.failures, p.last_success_at, p.next_run_at,
				   coalesce(b.n, 0) AS backlog, coalesce(b.oldest, interval '0') AS oldest
			FROM hub.pollers p LEFT JOIN b ON b.poller_id = p.poller_id
		)
		SELECT hub._prom_family('logistics_hub_poller_backlog_messages', 'gauge',
				'Polled records waiting in the inbox (new or retrying), by poller.',
				string_agg(format(E'logistics_hub_poller_backlog_messages{poller="%s"} %s\n', hub._prom_label(p.name), p.backlog), '' ORDER BY p.name))
			|| hub._prom_family('logistics_hub_poller_oldest_pending_age_seconds', 'gauge',
				'Age of the oldest polled record waiting in the inbox, by poller (0: none waits).',
				string_agg(format(E'logistics_hub_poller_oldest_pending_age_seconds{poller="%s"} %s\n', hub._prom_label(p.name), hub._prom_seconds(p.oldest)), '' ORDER BY p.name))
			|| hub._prom_family('logistics_hub_poller_overdue_seconds', 'gauge',
				'How long a poller that is not paused is past its next run (0: not due yet).',
				string_agg(format(E'logistics_hub_poller_overdue_seconds{poller="%s"} %s\n', hub._prom_label(p.name),
								  hub._prom_seconds(greatest(now() - p.next_run_at, interval '0'))), '' ORDER BY p.name) FILTER (WHERE NOT p.paused))
			|| hub._prom_family('logistics_hub_poller_last_success_age_seconds', 'gauge',
				'Time since a poller''s last successful page (pollers that had one).',
				string_agg(format(E'logistics_hub_poller_last_success_age_seconds{poller="%s"} %s\n', hub._prom_label(p.name),
								  hub._prom_seconds(now() - p.last_success_at)), '' ORDER BY p.name) FILTER (WHERE p.last_success_at IS NOT NULL))
			|| hub._prom_family('logistics_hub_poller_failures', 'gauge',
				'Failed pages in a row, by poller.',
				string_agg(format(E'logistics_hub_poller_failures{poller="%s"} %s\n', hub._prom_label(p.name), p.failures), '' ORDER BY p.name))
		FROM p);

	-- ---------------------------------------------------------- inbox
	r := r || hub._prom_family('logistics_hub_inbox_messages', 'gauge',
		'Inbox messages not done, by state: new and retry_wait (the backlog), dead (failed max_attempts times), unhandled (no mapping or handler).',
		(SELECT string_agg(format(E'logistics_hub_inbox_messages{state="%s"} %s\n', s.state,
								  (SELECT count(*) FROM hub.inbox i WHERE i.state = s.state)), '' ORDER BY s.ord)
		 FROM (VALUES (1, 'new'), (2, 'retry_wait'), (3, 'dead'), (4, 'unhandled')) s (ord, state)))
		|| hub._prom_family('logistics_hub_inbox_oldest_pending_age_seconds', 'gauge',
		'Age of the oldest inbox message new or retrying (0: none waits).',
		(SELECT format(E'logistics_hub_inbox_oldest_pending_age_seconds %s\n',
					   hub._prom_seconds(coalesce(now() - min(i.received_at), interval '0')))
		 FROM hub.inbox i WHERE i.state IN ('new', 'retry_wait')));

	-- ---------------------------------------------------------- business
	r := r || hub._prom_family('logistics_hub_open_exceptions', 'gauge',
		'Open business exceptions (hub.exceptions), by kind.',
		(SELECT string_agg(format(E'logistics_hub_open_exceptions{kind="%s"} %s\n', k.kind,
								  (SELECT count(*) FROM hub.exceptions x WHERE x.resolved_at IS NULL AND x.kind = k.kind)), '' ORDER BY k.kind)
		 FROM unnest(ARRAY['conflict', 'contract_violation', 'not_owner', 'terminal', 'unknown_code']) k (kind)));

	-- (the conditions of hub.drift and hub.stale_entities, counted without
	-- the views' lookup of each key's parent: a probe of hub.entity_links a
	-- key, which made the counts 3 to 5 times slower at a million keys;
	-- metrics.sql checks that both agree with the views)
	r := r || (WITH d AS (
				SELECT e.lifecycle, count(*) AS n
				FROM hub.entity_state e
				JOIN hub.entity_system_state s USING (lifecycle, business_key)
				JOIN hub.drift_tolerances t ON t.lifecycle = e.lifecycle AND t.role = s.role
				WHERE e.state IS NOT NULL AND s.state IS NOT NULL AND s.state <> e.state
				  AND now() - greatest(e.state_occurred_at, s.state_since) > t.tolerance
				  AND NOT EXISTS (SELECT FROM hub.status_unmap u
								  WHERE u.system = lower(s.system) AND u.lifecycle = e.lifecycle
									AND u.state = e.state AND u.code = s.code)
				GROUP BY e.lifecycle),
			   s AS (
				SELECT e.lifecycle, count(*) AS n
				FROM hub.entity_state e
				JOIN hub.stale_thresholds t ON t.lifecycle = e.lifecycle AND t.state = e.state
				WHERE now() - e.last_advanced_at > t.threshold
				GROUP BY e.lifecycle)
		SELECT hub._prom_family('logistics_hub_drift_keys', 'gauge',
				'Keys where a system disagrees with the canonical state past its tolerance (hub.drift), by lifecycle.',
				string_agg(format(E'logistics_hub_drift_keys{lifecycle="%s"} %s\n', l.l, coalesce(d.n, 0)), '' ORDER BY l.l))
			|| hub._prom_family('logistics_hub_stale_keys', 'gauge',
				'Keys without progress past the threshold of their state (hub.stale_entities), by lifecycle.',
				string_agg(format(E'logistics_hub_stale_keys{lifecycle="%s"} %s\n', l.l, coalesce(s.n, 0)), '' ORDER BY l.l))
		FROM unnest(ARRAY['movement', 'order', 'return', 'shipment']) l (l)
		LEFT JOIN d ON d.lifecycle = l.l LEFT JOIN s ON s.lifecycle = l.l);
	RETURN r;
END
$$;
COMMENT ON FUNCTION hub.metrics() IS
'The hub''s metrics in the Prometheus text exposition format 0.0.4 (names logistics_hub_*): events published (counter); delivery attempts and poll requests by endpoint or poller and outcome, and the delivery latency histogram, over the window metrics_window (hub.thresholds); backlog, dead events, oldest pending age and circuit state per endpoint; backlog, oldest pending age, overdue time, last success age and failures per poller; inbox messages by state and the oldest pending age; open exceptions by kind; drift and stale keys by lifecycle. Serve it from any scraper that can run SELECT hub.metrics().';

REVOKE EXECUTE ON FUNCTION hub.metrics(), hub._prom_label(text), hub._prom_family(text, text, text, text),
	hub._prom_seconds(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.metrics() TO hub_reader;

-- ================================================================ merged
-- (the definitions of sql/src for objects that two branches both redefined above)

CREATE OR REPLACE FUNCTION hub._inbox_apply_batch(p_ids bigint[])
RETURNS bigint[]
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	a_id		bigint[];
	a_lc		text[];
	a_key		text[];
	a_sys		text[];
	a_role		text[];
	a_qual		text[];
	a_partner	text[];
	a_code		text[];
	a_at		timestamptz[];
	a_state		text[];
	a_corr		text[];
	a_payload	jsonb[];
	a_trace		text[];
	a_site		text[];
	v_done		bigint[];
	v_written	bigint;
BEGIN
	IF p_ids IS NULL OR cardinality(p_ids) = 0 OR EXISTS (SELECT FROM hub.readiness_rules) THEN
		RETURN '{}';
	END IF;
	BEGIN
		-- the messages, their mapping and fields (silent: a path that
		-- raises for a message leaves it to the per-message path, which
		-- fails it); per key, how many of the batch name it (any message of
		-- a mapping whose key reads)
		WITH msg AS (
			SELECT i.inbox_id, i.payload, i.correlation_id, i.traceparent, i.received_at, mp.lifecycle, mp.system,
				   mp.occurred_at_path, mp.parent_path, mp.children_path,
				   jsonb_path_query_first(i.payload, mp.key_path, '{}', true) AS kv,
				   jsonb_path_query_first(i.payload, mp.code_path, '{}', true) AS cv,
				   CASE WHEN mp.occurred_at_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.occurred_at_path, '{}', true) END AS tv,
				   CASE WHEN mp.qualifier_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.qualifier_path, '{}', true) END AS qv,
				   CASE WHEN mp.partner_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.partner_path, '{}', true) END AS pv,
				   CASE WHEN mp.site_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.site_path, '{}', true) END AS sv
			FROM hub.inbox i
			-- (the mapping of each message type once, not once a message)
			JOIN (SELECT ty.message_type, mm.*
				  FROM (SELECT DISTINCT x.message_type FROM hub.inbox x WHERE x.inbox_id = ANY (p_ids)) ty
				  CROSS JOIN LATERAL (
					SELECT m.* FROM hub.inbox_mappings m
					WHERE hub._inbox_pattern_matches(m.message_pattern, ty.message_type)
					ORDER BY m.message_pattern = ty.message_type DESC, length(m.message_pattern) DESC
					LIMIT 1) mm) mp ON mp.message_type = i.message_type
			-- (by the primary key: a join with the array may scan the backlog)
			WHERE i.inbox_id = ANY (p_ids) AND i.state IN ('new', 'retry_wait')
			  AND jsonb_typeof(i.payload) = 'object'
		), f AS (
			SELECT m.*, m.kv #>> '{}' AS key, m.cv #>> '{}' AS code,
				   CASE WHEN m.qualifier_ok THEN m.qv #>> '{}' END AS qual,
				   CASE WHEN m.partner_ok THEN m.pv #>> '{}' END AS partner,
				   nullif(m.sv #>> '{}', '') AS site,
				   count(*) OVER (PARTITION BY m.lifecycle, m.kv #>> '{}') AS named
			FROM (SELECT msg.*,
						 jsonb_typeof(msg.qv) IS DISTINCT FROM 'object' AND jsonb_typeof(msg.qv) IS DISTINCT FROM 'array' AS qualifier_ok,
						 jsonb_typeof(msg.pv) IS DISTINCT FROM 'object' AND jsonb_typeof(msg.pv) IS DISTINCT FROM 'array' AS partner_ok
				  FROM msg
				  WHERE jsonb_typeof(msg.kv) IN ('string', 'number', 'boolean') AND msg.kv #>> '{}' <> '') m
		), t AS (
			-- (hub._json_time's forms, without its error: a time it would
			-- refuse leaves the message to the per-message path)
			SELECT f.*,
				   CASE WHEN f.occurred_at_path IS NULL THEN f.received_at
						WHEN jsonb_typeof(f.tv) = 'number' THEN to_timestamp((f.tv #>> '{}')::float8)
						WHEN jsonb_typeof(f.tv) = 'string' THEN
							CASE WHEN btrim(f.tv #>> '{}') ~ '^\d{4}-\d\d-\d\d([Tt ]\d\d:\d\d(:\d\d(\.\d+)?)?)?$'
								 THEN btrim(f.tv #>> '{}')::timestamp AT TIME ZONE 'UTC'
								 WHEN btrim(f.tv #>> '{}') ~ '^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d(:\d\d(\.\d+)?)? ?([Zz]|[+-]\d\d(:?\d\d)?)$'
								 THEN btrim(f.tv #>> '{}')::timestamptz END END AS at
			FROM f
			WHERE f.named = 1 AND f.parent_path IS NULL AND f.children_path IS NULL
			  AND jsonb_typeof(f.kv) IN ('string', 'number') AND octet_length(f.key) <= 256
			  AND jsonb_typeof(f.cv) IN ('string', 'number') AND f.code <> ''
			  AND f.qualifier_ok AND f.partner_ok
			  -- (a site that is no value or too long: the per-message path fails it)
			  AND jsonb_typeof(f.sv) IS DISTINCT FROM 'object' AND jsonb_typeof(f.sv) IS DISTINCT FROM 'array'
			  AND coalesce(octet_length(f.site), 0) <= 256
		), r AS MATERIALIZED (
			-- (materialized: the owner check below is then an index probe a
			-- row, not a join of the whole table with the mapping's result)
			SELECT t.*, ms.state AS m_state, ro.role
			FROM t
			CROSS JOIN LATERAL hub.try_map_status(t.system, t.lifecycle, t.code, t.qual, t.partner) ms
			CROSS JOIN LATERAL (
				SELECT sy.role FROM hub.systems sy
				WHERE sy.system = t.system AND sy.qualifier IN ('', coalesce(t.qual, ''))
				ORDER BY sy.qualifier DESC LIMIT 1) ro
			WHERE t.at IS NOT NULL AND ms.state IS NOT NULL AND ms.overlay IS NULL
			  AND hub.lifecycle_state_valid(t.lifecycle, ms.state)
		)
		-- (the arrays stay aligned, being filled from the same rows in the
		-- same order; the writes below sort by inbox_id themselves)
		SELECT array_agg(r.inbox_id), array_agg(r.lifecycle), array_agg(r.key), array_agg(r.system),
			   array_agg(r.role), array_agg(r.qual), array_agg(r.partner), array_agg(r.code), array_agg(r.at),
			   array_agg(r.m_state), array_agg(r.correlation_id), array_agg(r.payload), array_agg(r.traceparent),
			   array_agg(r.site)
		INTO a_id, a_lc, a_key, a_sys, a_role, a_qual, a_partner, a_code, a_at, a_state, a_corr, a_payload,
			 a_trace, a_site
		FROM r
		WHERE EXISTS (SELECT FROM hub.state_owners o
					  WHERE o.lifecycle = r.lifecycle AND o.state = r.m_state AND o.role = r.role);
		IF a_id IS NULL THEN
			RETURN '{}';
		END IF;

		-- the keys' rows, locked in key order (as hub._apply_canonical does,
		-- one key at a time)
		PERFORM FROM hub.entity_state es
		JOIN unnest(a_lc, a_key) k(lc, key) ON es.lifecycle = k.lc AND es.business_key = k.key
		ORDER BY es.lifecycle, es.business_key
		FOR UPDATE OF es;

		-- (the correlation and causation ids and a child span of the
		-- message's traceparent are passed: none of a message
		-- processed before is current)
		PERFORM set_config('hub.inbox_correlation_id', '', true),
				set_config('hub.inbox_causation_id', '', true);
		WITH a AS (
			SELECT * FROM unnest(a_id, a_lc, a_key, a_sys, a_role, a_qual, a_partner, a_code, a_at, a_state,
								 a_corr, a_payload, a_trace, a_site)
				AS a(inbox_id, lifecycle, key, system, role, qual, partner, code, at, state, corr, payload,
					 trace, site)
		), c AS (
			-- classified against the key's row: created (a new key, or one
			-- without a state) or advanced; no overlay on it
			SELECT a.*, es.lifecycle IS NULL AS is_new, es.state AS previous_state,
				   CASE WHEN es.state IS NOT NULL
						THEN hub._classify_transition(a.lifecycle, es.state, a.state, false) END AS kind,
				   CASE WHEN es.state IS NULL THEN 'created' ELSE 'advanced' END AS outcome,
				   se.event_type, et.required_keys
			FROM a
			LEFT JOIN hub.entity_state es ON es.lifecycle = a.lifecycle AND es.business_key = a.key
			JOIN hub.state_events se ON se.lifecycle = a.lifecycle AND se.state = a.state
			JOIN hub.event_types et ON et.event_type = se.event_type
			WHERE es.lifecycle IS NULL OR (NOT es.on_hold AND es.exception_reason IS NULL)
		), b AS MATERIALIZED (
			-- the canonical event's payload, as hub._state_event makes it
			-- (MATERIALIZED, here and below: each expression once a row)
			SELECT c.*,
				   jsonb_build_object(c.lifecycle || '_id', c.key, 'business_key', c.key, 'lifecycle', c.lifecycle,
						'state', c.state, 'previous_state', c.previous_state, 'change', c.outcome,
						'system', c.system,
						'occurred_at', to_char(c.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
				   || CASE WHEN c.partner IS NOT NULL THEN jsonb_build_object('partner', c.partner) ELSE '{}' END
				   || CASE WHEN c.lifecycle = 'shipment' AND 'carrier' = ANY (c.required_keys)
						   THEN jsonb_build_object('carrier',
								coalesce(c.partner, (SELECT sy.system FROM hub.systems sy
													 WHERE sy.system = c.system AND sy.qualifier = ''
													   AND sy.role = 'carrier')))
						   ELSE '{}' END AS base
			FROM c
			WHERE c.previous_state IS NULL OR c.kind IN ('advance', 'advance_with_gap')
		), e AS MATERIALIZED (
			SELECT b.*,
				   b.base || coalesce((SELECT jsonb_object_agg(k.k, b.payload -> k.k)
									   FROM unnest(b.required_keys) k(k)
									   WHERE NOT b.base ? k.k AND b.payload ? k.k), '{}') AS body
			FROM b
		), ok AS (
			SELECT e.* FROM e WHERE hub.contract_violation(e.event_type, e.body) IS NULL
		), ins AS (
			INSERT INTO hub.entity_state AS es
				(lifecycle, business_key, state, state_system, state_occurred_at, last_advanced_at, on_hold, site)
			SELECT ok.lifecycle, ok.key, ok.state, ok.system, ok.at, ok.at, false, ok.site
			FROM ok WHERE ok.is_new
			ON CONFLICT DO NOTHING
			RETURNING es.lifecycle, es.business_key
		), upd AS (
			UPDATE hub.entity_state es
			SET state = ok.state, state_system = ok.system, state_occurred_at = ok.at, last_advanced_at = ok.at,
				on_hold = false, on_hold_reason = NULL, on_hold_since = NULL, exception_reason = NULL,
				exception_since = NULL, updated_at = now(), site = coalesce(ok.site, es.site)
			FROM ok
			WHERE NOT ok.is_new AND es.lifecycle = ok.lifecycle AND es.business_key = ok.key
			RETURNING es.lifecycle, es.business_key
		), w AS (
			-- (every row of ok; a key another transaction created meanwhile
			-- is missing from ins: counted below, and all is undone)
			SELECT ok.* FROM ok
		), sys AS (
			INSERT INTO hub.entity_system_state AS s
				(lifecycle, business_key, system, role, qualifier, code, state, state_since,
				 overlay_kind, reason, occurred_at)
			SELECT w.lifecycle, w.key, w.system, w.role, w.qual, w.code, w.state, w.at, NULL, NULL, w.at
			FROM w
			ON CONFLICT ON CONSTRAINT entity_system_state_pkey DO UPDATE
			SET role = EXCLUDED.role, qualifier = EXCLUDED.qualifier, code = EXCLUDED.code,
				state = coalesce(EXCLUDED.state, s.state),
				state_since = CASE WHEN EXCLUDED.state IS NULL OR EXCLUDED.state = s.state
								   THEN s.state_since ELSE EXCLUDED.occurred_at END,
				overlay_kind = EXCLUDED.overlay_kind, reason = EXCLUDED.reason,
				occurred_at = EXCLUDED.occurred_at, received_at = now()
			WHERE s.occurred_at <= EXCLUDED.occurred_at
		), hist AS (
			INSERT INTO hub.status_history
				(lifecycle, business_key, system, role, qualifier, code, correction, mapped_state,
				 overlay_kind, reason, previous_state, new_state, kind, outcome, regression_suspect,
				 occurred_at)
			SELECT w.lifecycle, w.key, w.system, w.role, w.qual, w.code, false, w.state,
				   NULL, NULL, w.previous_state, w.state, w.kind, w.outcome, false, w.at
			FROM w ORDER BY w.inbox_id
		), ev AS (
			SELECT w.inbox_id,
				   hub.publish(w.event_type, w.key, w.body, correlation_id => nullif(w.corr, ''),
							   causation_id => 'inbox:' || w.inbox_id, occurred_at => w.at,
							   traceparent => hub._traceparent_child(w.trace)) AS event_id
			FROM w ORDER BY w.inbox_id
		)
		SELECT array_agg(ev.inbox_id ORDER BY ev.inbox_id), (SELECT count(*) FROM ins) + (SELECT count(*) FROM upd)
		INTO v_done, v_written FROM ev;
		IF v_written IS DISTINCT FROM cardinality(v_done)::bigint THEN
			RAISE EXCEPTION 'a key of the batch was created by another transaction meanwhile'
				USING ERRCODE = 'serialization_failure';
		END IF;
	EXCEPTION WHEN OTHERS THEN
		-- (undone: every message goes the per-message way, which reports
		-- the error of the one at fault)
		RETURN '{}';
	END;
	RETURN coalesce(v_done, '{}');
END
$$;

CREATE OR REPLACE FUNCTION hub._inbox_step(p_inbox_id bigint, p_handled boolean)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	mp			hub.inbox_mappings;
	i			record;
	v_key		text;
	v_code		text;
	v_at		timestamptz;
	v_qual		text;
	v_partner	text;
	v_parent	text;
	v_site		text;
	v_mapped	hub.mapped_status;
	r			hub.apply_result;
	v_terminal	boolean;
	v			jsonb;
	p_payload	jsonb;
	p_message_type text;
BEGIN
	-- the message as stored, and only one being processed (claimed by the
	-- caller, FOR UPDATE): the step never applies a payload it is handed
	SELECT x.source, x.message_id, x.message_type, x.payload, x.correlation_id, x.aggregate_id,
		   x.received_at, x.attempts, x.state, x.traceparent
	INTO i FROM hub.inbox x WHERE x.inbox_id = p_inbox_id;
	IF NOT FOUND OR i.state NOT IN ('new', 'retry_wait') THEN
		RAISE EXCEPTION 'inbox message % is not waiting to be processed', p_inbox_id
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	p_payload := i.payload;
	p_message_type := i.message_type;
	SELECT * INTO mp FROM hub.inbox_mappings m WHERE m.message_pattern = p_message_type;
	IF NOT FOUND THEN
		SELECT * INTO mp FROM hub.inbox_mappings m
		WHERE right(m.message_pattern, 1) = '*' AND starts_with(p_message_type, left(m.message_pattern, -1))
		ORDER BY length(m.message_pattern) DESC LIMIT 1;
		IF NOT FOUND AND NOT p_handled THEN
			RETURN NULL;
		END IF;
	END IF;
	-- (the traceparent counts while the causation id is set: what is
	-- published gets a child span of the message's, trace_context.c)
	PERFORM set_config('hub.inbox_correlation_id', coalesce(i.correlation_id, ''), true),
			set_config('hub.inbox_causation_id', 'inbox:' || p_inbox_id, true),
			set_config('hub.inbox_traceparent', coalesce(i.traceparent, ''), true);

	IF mp.message_pattern IS NOT NULL THEN
		IF jsonb_typeof(p_payload) IS DISTINCT FROM 'object' THEN
			RAISE EXCEPTION 'the payload of a % message must be a JSON object', mp.lifecycle
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('Mapping "%s" reads it with jsonpaths.', mp.message_pattern);
		END IF;
		-- (each path read inline: SQL functions would be planned again in
		-- every message's subtransaction)
		v := jsonb_path_query_first(p_payload, mp.key_path);
		IF jsonb_typeof(v) IN ('object', 'array') THEN
			PERFORM hub._inbox_not_a_value('key', mp.key_path, v);
		END IF;
		v_key := v #>> '{}';
		v := jsonb_path_query_first(p_payload, mp.code_path);
		IF jsonb_typeof(v) IN ('object', 'array') THEN
			PERFORM hub._inbox_not_a_value('code', mp.code_path, v);
		END IF;
		v_code := v #>> '{}';
		IF v_key IS NULL OR v_key = '' OR v_code IS NULL OR v_code = '' THEN
			RAISE EXCEPTION 'the % path % finds nothing in the message',
				CASE WHEN v_key IS NULL OR v_key = '' THEN 'key' ELSE 'code' END,
				CASE WHEN v_key IS NULL OR v_key = '' THEN mp.key_path ELSE mp.code_path END
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('Mapping "%s" of %s records needs both.', mp.message_pattern, mp.lifecycle);
		END IF;
		PERFORM hub._check_key_length('business key', v_key);
		IF mp.occurred_at_path IS NULL THEN
			v_at := i.received_at;
		ELSE
			v_at := hub._json_time(jsonb_path_query_first(p_payload, mp.occurred_at_path));
			IF v_at IS NULL THEN
				RAISE EXCEPTION 'the occurred_at path % finds nothing in the message', mp.occurred_at_path
					USING ERRCODE = 'invalid_parameter_value';
			END IF;
		END IF;
		IF mp.qualifier_path IS NOT NULL THEN
			v := jsonb_path_query_first(p_payload, mp.qualifier_path);
			IF jsonb_typeof(v) IN ('object', 'array') THEN
				PERFORM hub._inbox_not_a_value('qualifier', mp.qualifier_path, v);
			END IF;
			v_qual := v #>> '{}';
		END IF;
		IF mp.partner_path IS NOT NULL THEN
			v := jsonb_path_query_first(p_payload, mp.partner_path);
			IF jsonb_typeof(v) IN ('object', 'array') THEN
				PERFORM hub._inbox_not_a_value('partner', mp.partner_path, v);
			END IF;
			v_partner := v #>> '{}';
		END IF;
		IF mp.parent_path IS NOT NULL THEN
			v := jsonb_path_query_first(p_payload, mp.parent_path);
			IF jsonb_typeof(v) IN ('object', 'array') THEN
				PERFORM hub._inbox_not_a_value('parent', mp.parent_path, v);
			END IF;
			v_parent := nullif(v #>> '{}', '');
		END IF;
		IF mp.site_path IS NOT NULL THEN
			v := jsonb_path_query_first(p_payload, mp.site_path);
			IF jsonb_typeof(v) IN ('object', 'array') THEN
				PERFORM hub._inbox_not_a_value('site', mp.site_path, v);
			END IF;
			v_site := nullif(v #>> '{}', '');
			PERFORM hub._check_key_length('site', v_site);
		END IF;

		-- the links the record names (kept once; a key never links to itself)
		IF v_parent IS NOT NULL AND (mp.parent_lifecycle, v_parent) IS DISTINCT FROM (mp.lifecycle, v_key) THEN
			PERFORM hub._check_key_length('parent key', v_parent);
			INSERT INTO hub.entity_links (parent_lifecycle, parent_key, child_lifecycle, child_key, system, inbox_id)
			VALUES (mp.parent_lifecycle, v_parent, mp.lifecycle, v_key, mp.system, p_inbox_id)
			ON CONFLICT DO NOTHING;
		END IF;
		IF mp.children_path IS NOT NULL THEN
			INSERT INTO hub.entity_links (parent_lifecycle, parent_key, child_lifecycle, child_key, system, inbox_id)
			SELECT DISTINCT mp.lifecycle, v_key, mp.child_lifecycle, c.v #>> '{}', mp.system, p_inbox_id
			FROM jsonb_path_query(p_payload, mp.children_path) c(v)
			WHERE jsonb_typeof(c.v) IN ('string', 'number') AND c.v #>> '{}' <> ''
			  AND octet_length(c.v #>> '{}') <= 256
			  AND (mp.child_lifecycle, c.v #>> '{}') IS DISTINCT FROM (mp.lifecycle, v_key)
			ON CONFLICT DO NOTHING;
		END IF;
		-- (a message received without its business key keeps none: hub.trace
		-- by key finds it through the events and exceptions it caused,
		-- whose causation id and message name it; a second UPDATE of the
		-- row per message would cost more than the trace saves)

		v_mapped := hub.try_map_status(mp.system, mp.lifecycle, v_code, v_qual, v_partner);
		IF v_mapped::text IS NULL THEN
			PERFORM hub._open_exception('unknown_code', mp.lifecycle, v_key, mp.system, v_code,
				format('%s reported %s code "%s"%s, which hub.status_map does not map', mp.system, mp.lifecycle,
					   v_code, CASE WHEN v_qual IS NOT NULL THEN format(' (qualifier "%s")', v_qual) ELSE '' END),
				p_inbox_id);
		ELSE
			r := hub._apply_canonical(mp.lifecycle, v_key, mp.system, v_code, v_at, v_mapped.state, v_mapped.overlay,
									  v_mapped.reason, v_qual, false, p_payload, v_partner,
									  CASE WHEN v_parent IS NOT NULL THEN mp.parent_lifecycle END, v_parent, p_inbox_id);
			IF r.outcome IN ('conflict', 'stale') AND r.previous_state IS NOT NULL THEN
				SELECT s.terminal INTO v_terminal FROM hub.lifecycle_states(mp.lifecycle) s WHERE s.state = r.previous_state;
				IF v_terminal AND (r.outcome = 'conflict'
								   OR (SELECT h.regression_suspect FROM hub.status_history h WHERE h.history_id = r.history_id)) THEN
					r.outcome := 'terminal';
					PERFORM hub._open_exception('terminal', mp.lifecycle, v_key, mp.system, v_code,
						format('%s reported %s (%s) after the %s reached its terminal state %s',
							   mp.system, r.reported_state, v_code, mp.lifecycle, r.previous_state), p_inbox_id);
				END IF;
			END IF;
			IF r.outcome = 'conflict' THEN
				PERFORM hub._open_exception('conflict', mp.lifecycle, v_key, mp.system, v_code,
					format('%s reported %s (%s), incomparable with the canonical state %s',
						   mp.system, r.reported_state, v_code, r.previous_state), p_inbox_id);
			ELSIF r.outcome = 'not_owner' THEN
				PERFORM hub._open_exception('not_owner', mp.lifecycle, v_key, mp.system, v_code,
					format('%s reported %s (%s), a state its role does not own', mp.system, r.reported_state, v_code),
					p_inbox_id);
			END IF;
		END IF;
		-- the site the record names, on the key's row (issue 21)
		IF v_site IS NOT NULL THEN
			UPDATE hub.entity_state es SET site = v_site
			WHERE es.lifecycle = mp.lifecycle AND es.business_key = v_key AND es.site IS DISTINCT FROM v_site;
		END IF;
	END IF;

	IF NOT p_handled THEN
		RETURN '{}';
	END IF;
	RETURN jsonb_build_object('inbox_id', p_inbox_id, 'source', i.source, 'message_id', i.message_id,
							  'message_type', p_message_type, 'correlation_id', i.correlation_id,
							  'aggregate_id', i.aggregate_id, 'received_at', i.received_at,
							  'attempts', i.attempts);
END
$$;

-- ================================================================ flow performance
-- (issue 19's throughput: the same behaviour, less CPU a record; sql/src/60_inbox.sql,
-- 65_flow.sql)

-- the claim returns each message's business key, so hub.process_inbox no
-- longer reads them again with hub._inbox_keys
DROP FUNCTION hub._inbox_keys(bigint[]);
DROP FUNCTION hub._inbox_claim(integer);
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

REVOKE EXECUTE ON FUNCTION hub._inbox_claim(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub._inbox_claim(integer) TO hub_admin, hub_worker;

CREATE OR REPLACE FUNCTION hub._inbox_apply_batch(p_ids bigint[])
RETURNS bigint[]
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	a_id		bigint[];
	a_lc		text[];
	a_key		text[];
	a_sys		text[];
	a_role		text[];
	a_qual		text[];
	a_partner	text[];
	a_code		text[];
	a_at		timestamptz[];
	a_state		text[];
	a_corr		text[];
	a_payload	jsonb[];
	a_trace		text[];
	a_site		text[];
	v_done		bigint[];
	v_written	bigint;
	v_events	bigint;
BEGIN
	IF p_ids IS NULL OR cardinality(p_ids) = 0 OR EXISTS (SELECT FROM hub.readiness_rules) THEN
		RETURN '{}';
	END IF;
	BEGIN
		-- the messages, their mapping and fields (silent: a path that
		-- raises for a message leaves it to the per-message path, which
		-- fails it); per key, how many of the batch name it (any message of
		-- a mapping whose key reads)
		WITH mp AS MATERIALIZED (
			-- (the mapping of each message type once, not once a message:
			-- materialized, here and in g, or the planner runs it again for
			-- every row it joins)
			SELECT ty.message_type, mm.*
			FROM (SELECT DISTINCT x.message_type FROM hub.inbox x WHERE x.inbox_id = ANY (p_ids)) ty
			CROSS JOIN LATERAL (
				SELECT m.* FROM hub.inbox_mappings m
				WHERE hub._inbox_pattern_matches(m.message_pattern, ty.message_type)
				ORDER BY m.message_pattern = ty.message_type DESC, length(m.message_pattern) DESC
				LIMIT 1) mm
		), msg AS MATERIALIZED (
			-- (materialized: each path evaluated once a message, not once
			-- for every expression that reads its value)
			SELECT i.inbox_id, i.payload, i.correlation_id, i.traceparent, i.received_at, mp.lifecycle, mp.system,
				   mp.occurred_at_path IS NULL AS no_time_path,
				   mp.parent_path IS NULL AND mp.children_path IS NULL AS flat,
				   jsonb_path_query_first(i.payload, mp.key_path, '{}', true) AS kv,
				   jsonb_path_query_first(i.payload, mp.code_path, '{}', true) AS cv,
				   CASE WHEN mp.occurred_at_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.occurred_at_path, '{}', true) END AS tv,
				   CASE WHEN mp.qualifier_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.qualifier_path, '{}', true) END AS qv,
				   CASE WHEN mp.partner_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.partner_path, '{}', true) END AS pv,
				   CASE WHEN mp.site_path IS NOT NULL
						THEN jsonb_path_query_first(i.payload, mp.site_path, '{}', true) END AS sv
			FROM hub.inbox i
			JOIN mp ON mp.message_type = i.message_type
			-- (by the primary key: a join with the array may scan the backlog)
			WHERE i.inbox_id = ANY (p_ids) AND i.state IN ('new', 'retry_wait')
			  AND jsonb_typeof(i.payload) = 'object'
		), f AS (
			SELECT m.*, m.kv #>> '{}' AS key, m.cv #>> '{}' AS code,
				   CASE WHEN m.qualifier_ok THEN m.qv #>> '{}' END AS qual,
				   CASE WHEN m.partner_ok THEN m.pv #>> '{}' END AS partner,
				   nullif(m.sv #>> '{}', '') AS site,
				   CASE WHEN jsonb_typeof(m.tv) = 'string' THEN btrim(m.tv #>> '{}') END AS ts,
				   -- (COLLATE "C": the same partitions, byte-equal keys, and
				   -- a sort by memcmp rather than strcoll)
				   count(*) OVER (PARTITION BY m.lifecycle COLLATE "C", (m.kv #>> '{}') COLLATE "C") AS named
			FROM (SELECT msg.*,
						 jsonb_typeof(msg.qv) IS DISTINCT FROM 'object' AND jsonb_typeof(msg.qv) IS DISTINCT FROM 'array' AS qualifier_ok,
						 jsonb_typeof(msg.pv) IS DISTINCT FROM 'object' AND jsonb_typeof(msg.pv) IS DISTINCT FROM 'array' AS partner_ok
				  FROM msg
				  WHERE jsonb_typeof(msg.kv) IN ('string', 'number', 'boolean') AND msg.kv #>> '{}' <> '') m
		), t AS (
			-- (hub._json_time's forms, without its error: a time it would
			-- refuse leaves the message to the per-message path; the two
			-- string forms exclude each other, the one with an offset, the
			-- more common, is tried first, and before its pattern (2 to 3 us
			-- a string) the shapes carriers and JSON encoders write most,
			-- its ASCII digits made 9s (a tenth of that; each of them
			-- matches the pattern))
			SELECT f.inbox_id, f.payload, f.correlation_id, f.traceparent, f.lifecycle, f.system, f.key, f.code,
				   f.qual, f.partner, f.site,
				   CASE WHEN f.no_time_path THEN f.received_at
						WHEN jsonb_typeof(f.tv) = 'number' THEN to_timestamp((f.tv #>> '{}')::float8)
						WHEN translate(f.ts, '012345678', '999999999')
							 IN ('9999-99-99T99:99:99Z', '9999-99-99T99:99:99+99:99', '9999-99-99T99:99:99-99:99',
								 '9999-99-99T99:99:99.999Z', '9999-99-99T99:99:99.999999Z',
								 '9999-99-99T99:99:99.999+99:99', '9999-99-99T99:99:99.999999+99:99',
								 '9999-99-99T99:99:99.999-99:99', '9999-99-99T99:99:99.999999-99:99',
								 '9999-99-99 99:99:99+99', '9999-99-99 99:99:99.999999+99')
						  OR f.ts ~ '^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d(:\d\d(\.\d+)?)? ?([Zz]|[+-]\d\d(:?\d\d)?)$'
						THEN f.ts::timestamptz
						WHEN f.ts ~ '^\d{4}-\d\d-\d\d([Tt ]\d\d:\d\d(:\d\d(\.\d+)?)?)?$'
						THEN f.ts::timestamp AT TIME ZONE 'UTC' END AS at,
				   -- (the grouping key of the mapping below: an array, whose
				   -- equality takes two NULLs as equal, and which hashes)
				   ARRAY[f.system, f.lifecycle, f.code, f.qual, f.partner] AS mk
			FROM f
			WHERE f.named = 1 AND f.flat
			  AND jsonb_typeof(f.kv) IN ('string', 'number') AND octet_length(f.key) <= 256
			  AND jsonb_typeof(f.cv) IN ('string', 'number') AND f.code <> ''
			  AND f.qualifier_ok AND f.partner_ok
			  -- (a site that is no value or too long: the per-message path fails it)
			  AND jsonb_typeof(f.sv) IS DISTINCT FROM 'object' AND jsonb_typeof(f.sv) IS DISTINCT FROM 'array'
			  AND coalesce(octet_length(f.site), 0) <= 256
		), g AS MATERIALIZED (
			-- the state each (system, lifecycle, code, qualifier, partner)
			-- maps to and the system's role, once each, kept where no
			-- overlay comes with it and the role owns the state
			SELECT d.mk, ms.state AS m_state, ro.role
			FROM (SELECT DISTINCT t.mk FROM t) d
			CROSS JOIN LATERAL hub.try_map_status(d.mk[1], d.mk[2], d.mk[3], d.mk[4], d.mk[5]) ms
			CROSS JOIN LATERAL (
				SELECT sy.role FROM hub.systems sy
				WHERE sy.system = d.mk[1] AND sy.qualifier IN ('', coalesce(d.mk[4], ''))
				ORDER BY sy.qualifier DESC LIMIT 1) ro
			WHERE ms.state IS NOT NULL AND ms.overlay IS NULL
			  AND hub.lifecycle_state_valid(d.mk[2], ms.state)
			  AND EXISTS (SELECT FROM hub.state_owners o
						  WHERE o.lifecycle = d.mk[2] AND o.state = ms.state AND o.role = ro.role)
		)
		-- (the arrays stay aligned, being filled from the same rows in the
		-- same order; the writes below sort by inbox_id themselves)
		SELECT array_agg(t.inbox_id), array_agg(t.lifecycle), array_agg(t.key), array_agg(t.system),
			   array_agg(g.role), array_agg(t.qual), array_agg(t.partner), array_agg(t.code), array_agg(t.at),
			   array_agg(g.m_state), array_agg(t.correlation_id), array_agg(t.payload), array_agg(t.traceparent),
			   array_agg(t.site)
		INTO a_id, a_lc, a_key, a_sys, a_role, a_qual, a_partner, a_code, a_at, a_state, a_corr, a_payload,
			 a_trace, a_site
		FROM t JOIN g ON g.mk = t.mk
		WHERE t.at IS NOT NULL;
		IF a_id IS NULL THEN
			RETURN '{}';
		END IF;

		-- the keys' rows, locked in key order (as hub._apply_canonical does,
		-- one key at a time)
		-- one probe of the primary key a key, in key order (a join may
		-- hash the whole table instead, in every batch; the order bytewise,
		-- COLLATE "C", the same for every batch, which is what matters)
		PERFORM FROM (SELECT k.lc, k.key FROM unnest(a_lc, a_key) k(lc, key)
					  ORDER BY k.lc COLLATE "C", k.key COLLATE "C") k
		CROSS JOIN LATERAL (
			SELECT FROM hub.entity_state es
			WHERE es.lifecycle = k.lc AND es.business_key = k.key
			FOR UPDATE) es;

		-- (the correlation and causation ids and a child span of the
		-- message's traceparent are passed: none of a message
		-- processed before is current)
		PERFORM set_config('hub.inbox_correlation_id', '', true),
				set_config('hub.inbox_causation_id', '', true);
		WITH a AS (
			SELECT * FROM unnest(a_id, a_lc, a_key, a_sys, a_role, a_qual, a_partner, a_code, a_at, a_state,
								 a_corr, a_payload, a_trace, a_site)
				AS a(inbox_id, lifecycle, key, system, role, qual, partner, code, at, state, corr, payload,
					 trace, site)
		), c AS (
			-- classified against the key's row: created (a new key, or one
			-- without a state) or advanced; no overlay on it
			SELECT a.*, es.lifecycle IS NULL AS is_new, es.state AS previous_state,
				   CASE WHEN es.state IS NOT NULL
						THEN hub._classify_transition(a.lifecycle, es.state, a.state, false) END AS kind,
				   CASE WHEN es.state IS NULL THEN 'created' ELSE 'advanced' END AS outcome,
				   se.event_type, et.required_keys
			FROM a
			LEFT JOIN hub.entity_state es ON es.lifecycle = a.lifecycle AND es.business_key = a.key
			JOIN hub.state_events se ON se.lifecycle = a.lifecycle AND se.state = a.state
			JOIN hub.event_types et ON et.event_type = se.event_type
			WHERE es.lifecycle IS NULL OR (NOT es.on_hold AND es.exception_reason IS NULL)
		), b AS MATERIALIZED (
			-- the canonical event's payload, as hub._state_event makes it
			-- (MATERIALIZED, here and below: each expression once a row;
			-- the partner, the carrier and the record's keys are added only
			-- when there are any, each || building the object anew)
			SELECT c.*,
				   CASE WHEN c.partner IS NULL AND NOT (c.lifecycle = 'shipment' AND 'carrier' = ANY (c.required_keys))
						THEN x.core
						ELSE x.core
							 || CASE WHEN c.partner IS NOT NULL THEN jsonb_build_object('partner', c.partner) ELSE '{}' END
							 || CASE WHEN c.lifecycle = 'shipment' AND 'carrier' = ANY (c.required_keys)
									 THEN jsonb_build_object('carrier',
										  coalesce(c.partner, (SELECT sy.system FROM hub.systems sy
															   WHERE sy.system = c.system AND sy.qualifier = ''
																 AND sy.role = 'carrier')))
									 ELSE '{}' END END AS base
			FROM c
			CROSS JOIN LATERAL (
				SELECT jsonb_build_object(c.lifecycle || '_id', c.key, 'business_key', c.key, 'lifecycle', c.lifecycle,
						'state', c.state, 'previous_state', c.previous_state, 'change', c.outcome,
						'system', c.system,
						'occurred_at', to_char(c.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')) AS core) x
			WHERE c.previous_state IS NULL OR c.kind IN ('advance', 'advance_with_gap')
		), ok AS MATERIALIZED (
			-- (the events whose contract the body meets; every row written
			-- below: a key whose row vanished meanwhile is missing from upd,
			-- counted at the end, and all is undone)
			SELECT b.*, y.body
			FROM b
			CROSS JOIN LATERAL (
				SELECT jsonb_object_agg(k.k, b.payload -> k.k) AS extra
				FROM unnest(b.required_keys) k(k)
				WHERE NOT b.base ? k.k AND b.payload ? k.k) x
			-- (OFFSET 0: the body built once, not again for the check)
			CROSS JOIN LATERAL (
				SELECT CASE WHEN x.extra IS NULL THEN b.base ELSE b.base || x.extra END AS body OFFSET 0) y
			WHERE hub.contract_violation(b.event_type, y.body) IS NULL
		), ins AS (
			-- (a plain INSERT: a key another transaction created meanwhile
			-- raises unique_violation, which undoes the batch's apply)
			INSERT INTO hub.entity_state AS es
				(lifecycle, business_key, state, state_system, state_occurred_at, last_advanced_at, on_hold, site)
			SELECT ok.lifecycle, ok.key, ok.state, ok.system, ok.at, ok.at, false, ok.site
			FROM ok WHERE ok.is_new
			RETURNING es.lifecycle, es.business_key
		), upd AS (
			UPDATE hub.entity_state es
			SET state = ok.state, state_system = ok.system, state_occurred_at = ok.at, last_advanced_at = ok.at,
				on_hold = false, on_hold_reason = NULL, on_hold_since = NULL, exception_reason = NULL,
				exception_since = NULL, updated_at = now(), site = coalesce(ok.site, es.site)
			FROM ok
			WHERE NOT ok.is_new AND es.lifecycle = ok.lifecycle AND es.business_key = ok.key
			RETURNING es.lifecycle, es.business_key
		), sys_new AS (
			-- (a new key has no per-system row yet: a plain INSERT)
			INSERT INTO hub.entity_system_state AS s
				(lifecycle, business_key, system, role, qualifier, code, state, state_since,
				 overlay_kind, reason, occurred_at)
			SELECT ok.lifecycle, ok.key, ok.system, ok.role, ok.qual, ok.code, ok.state, ok.at, NULL, NULL, ok.at
			FROM ok WHERE ok.is_new
		), sys AS (
			INSERT INTO hub.entity_system_state AS s
				(lifecycle, business_key, system, role, qualifier, code, state, state_since,
				 overlay_kind, reason, occurred_at)
			SELECT ok.lifecycle, ok.key, ok.system, ok.role, ok.qual, ok.code, ok.state, ok.at, NULL, NULL, ok.at
			FROM ok WHERE NOT ok.is_new
			ON CONFLICT ON CONSTRAINT entity_system_state_pkey DO UPDATE
			SET role = EXCLUDED.role, qualifier = EXCLUDED.qualifier, code = EXCLUDED.code,
				state = coalesce(EXCLUDED.state, s.state),
				state_since = CASE WHEN EXCLUDED.state IS NULL OR EXCLUDED.state = s.state
								   THEN s.state_since ELSE EXCLUDED.occurred_at END,
				overlay_kind = EXCLUDED.overlay_kind, reason = EXCLUDED.reason,
				occurred_at = EXCLUDED.occurred_at, received_at = now()
			WHERE s.occurred_at <= EXCLUDED.occurred_at
		), hist AS (
			INSERT INTO hub.status_history
				(lifecycle, business_key, system, role, qualifier, code, correction, mapped_state,
				 overlay_kind, reason, previous_state, new_state, kind, outcome, regression_suspect,
				 occurred_at)
			SELECT ok.lifecycle, ok.key, ok.system, ok.role, ok.qual, ok.code, false, ok.state,
				   NULL, NULL, ok.previous_state, ok.state, ok.kind, ok.outcome, false, ok.at
			FROM ok ORDER BY ok.inbox_id
		), ev AS (
			-- the events, in inbox_id order, as hub.publish writes them: a
			-- plain INSERT, whose contract trigger (hub._outbox_check)
			-- checks and stamps each row as it does for hub.publish, the
			-- event id and headers their defaults, the correlation id the
			-- message's (none: NULL, as hub.publish gives it here), a child
			-- span of its traceparent; one insert for the batch rather than
			-- one a row
			INSERT INTO hub.outbox (event_type, aggregate_id, payload, correlation_id, causation_id, occurred_at,
									traceparent)
			SELECT ok.event_type, ok.key, ok.body, nullif(ok.corr, ''), 'inbox:' || ok.inbox_id, ok.at,
				   hub._traceparent_child(ok.trace)
			FROM ok ORDER BY ok.inbox_id
			RETURNING 1
		)
		SELECT array_agg(ok.inbox_id ORDER BY ok.inbox_id), (SELECT count(*) FROM ins) + (SELECT count(*) FROM upd),
			   (SELECT count(*) FROM ev)
		INTO v_done, v_written, v_events FROM ok;
		IF v_written IS DISTINCT FROM cardinality(v_done)::bigint
		   OR v_events IS DISTINCT FROM cardinality(v_done)::bigint THEN
			RAISE EXCEPTION 'the batch wrote other rows than it applied (a key created or removed meanwhile)'
				USING ERRCODE = 'serialization_failure';
		END IF;
	EXCEPTION WHEN OTHERS THEN
		-- (undone: every message goes the per-message way, which reports
		-- the error of the one at fault)
		RETURN '{}';
	END;
	RETURN coalesce(v_done, '{}');
END
$$;
COMMENT ON FUNCTION hub._inbox_apply_batch(bigint[]) IS
'API: Private. Apply, set-based and in one subtransaction, the mapped messages of a batch (hub.process_inbox, messages without a handler) whose report creates or advances a key without overlays and publishes a canonical event it satisfies, each key named once in the batch, while no readiness rule exists; writes and publishes what the per-message path (hub._inbox_step) would. Returns the ids applied, for the caller to settle done; the others go the per-message way (all of them when anything fails).';

CREATE OR REPLACE FUNCTION hub.process_inbox(max integer DEFAULT 100)
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

-- ================================================================ sites (transports)
-- the transport follows the endpoint URL's scheme: postgresql:// (a central
-- hub over libpq) and nats:// (NATS JetStream) beside http(s)://
ALTER TABLE hub.endpoints DROP CONSTRAINT endpoints_url_check;
ALTER TABLE hub.endpoints ADD CONSTRAINT endpoints_url_check
	CHECK (url ~* '^(https?|postgres(ql)?|nats)://[^/?#[:space:]]+');
COMMENT ON TABLE hub.endpoints IS
'Receivers (ERP, WMS, TMS, carrier, portal over HTTP; a central hub over postgresql://; NATS JetStream over nats://) with their limits, auth kind and circuit-breaker state. Secrets live in hub._endpoint_secrets.';
COMMENT ON COLUMN hub.endpoints.url IS
'Where requests go; its scheme picks the transport: http:// or https:// (libcurl), postgresql:// or postgres:// (a central hub, libpq: README "Deployment beyond one server"), nats:// (NATS JetStream). Never a password.';

CREATE OR REPLACE FUNCTION hub.create_endpoint(name text, url text, kind text DEFAULT 'other',
		timeout_ms integer DEFAULT 10000, max_concurrency integer DEFAULT 16,
		rate_limit numeric DEFAULT NULL, allow_redirects boolean DEFAULT false,
		auth_kind text DEFAULT 'none', auth_secret text DEFAULT NULL,
		api_key_header text DEFAULT NULL, oauth2_token_url text DEFAULT NULL,
		oauth2_client_id text DEFAULT NULL, oauth2_client_secret text DEFAULT NULL,
		signing_secret text DEFAULT NULL, headers jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id integer;
BEGIN
	-- (before anything that would show the URL, password and all; a
	-- postgresql:// URI may name its user, never a password)
	IF (url ~* '^postgres(ql)?://' AND (url ~ '^[^/?#]*//[^/?#@]*:[^/?#]*@' OR url ~* '[?&]password='))
		OR (url !~* '^postgres(ql)?://' AND url ~ '^[^/?#]*(//)?[^/?#]*@')
		OR oauth2_token_url ~ '^[^/?#]*(//)?[^/?#]*@' THEN
		RAISE EXCEPTION 'endpoint URL must not contain user information'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A user name or password in the URL would be readable by hub_reader.',
				  HINT = 'Pass credentials as auth_kind and auth_secret (or oauth2_client_id and oauth2_client_secret).';
	END IF;
	IF url !~* '^(https?|postgres(ql)?|nats)://[^/?#[:space:]]+' THEN
		RAISE EXCEPTION 'invalid endpoint URL: "%"', url
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Only http://, https://, postgresql:// (a central hub) and nats:// URLs can be delivered to.';
	END IF;
	IF signing_secret IS NOT NULL AND signing_secret !~ '^whsec_[A-Za-z0-9+/=]+$' THEN
		RAISE EXCEPTION 'invalid signing secret' USING ERRCODE = 'invalid_parameter_value',
			HINT = 'A Standard Webhooks secret is whsec_ followed by base64.';
	END IF;
	PERFORM hub._check_credentials(name, auth_secret, oauth2_client_id, oauth2_client_secret);
	PERFORM hub._check_setting('timeout_ms', timeout_ms BETWEEN 100 AND 600000, timeout_ms::text,
							   'between 100 and 600000 (milliseconds)');
	PERFORM hub._check_setting('max_concurrency', max_concurrency BETWEEN 1 AND 1000, max_concurrency::text,
							   'between 1 and 1000');
	PERFORM hub._check_setting('rate_limit', rate_limit IS NULL OR rate_limit BETWEEN 0.001 AND 100000,
							   rate_limit::text, 'NULL (no limit) or between 0.001 and 100000 requests a second');
	INSERT INTO hub.endpoints (name, url, kind, timeout_ms, max_concurrency, rate_limit, allow_redirects,
							   auth_kind, api_key_header, oauth2_token_url, headers)
	VALUES (name, url, kind, timeout_ms, max_concurrency, rate_limit, allow_redirects,
			auth_kind, api_key_header, oauth2_token_url, coalesce(headers, '{}'))
	RETURNING endpoint_id INTO id;
	-- sealed (hub._seal, 55_secrets.sql): only ciphertext reaches the table
	INSERT INTO hub._endpoint_secrets (endpoint_id, auth_secret, oauth2_client_id, oauth2_client_secret, signing_secrets)
	VALUES (id, hub._seal(id, 'auth_secret', auth_secret), hub._seal(id, 'oauth2_client_id', oauth2_client_id),
			hub._seal(id, 'oauth2_client_secret', oauth2_client_secret),
			CASE WHEN signing_secret IS NULL THEN '{}' ELSE ARRAY[hub._seal(id, 'signing_secrets', signing_secret)] END);
	RETURN id;
END
$$;
COMMENT ON FUNCTION hub.create_endpoint(text, text, text, integer, integer, numeric, boolean, text, text, text, text, text, text, text, jsonb) IS
'Register a receiver: an http(s):// URL, a postgresql:// URI of a central hub (its password as auth_secret) or a nats:// server list; everything after kind is optional and passed by name. Secrets are sealed (55000 when no secret key is loaded) into a table only hub_admin can read. Returns the endpoint id.';

-- ================================================================ workers

/*
 * 72_workers.sql --- the background workers as the operator sees them: one
 * row per worker of the cluster (the launcher, and the dispatchers and inbox
 * workers of every database served, running or not), read from shared memory by
 * hub._workers() (workers/shmem.c); nothing without preloading.
 *
 * The endpoints and pollers a dispatcher serves are its shard's share
 * (hub._serves for the push side; the pollers of an endpoint it serves,
 * any shard for a spread endpoint), computed here from its number and
 * shard count against this database's endpoints and pollers: they are
 * shown for the dispatchers of the current database only (another
 * database's endpoints are not visible from here), NULL for the others.
 */
CREATE FUNCTION hub._workers(
	OUT database name, OUT pid integer, OUT kind text, OUT number integer,
	OUT started_at timestamptz, OUT step text, OUT in_flight integer, OUT nshards integer,
	OUT last_claim_at timestamptz, OUT last_record_at timestamptz, OUT restarts bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'hub_workers_list' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION hub._workers() IS
'API: Private. The workers of the cluster as they publish themselves in shared memory (no row without shared_preload_libraries); read it through hub.workers.';

CREATE VIEW hub.workers AS
SELECT w.database, w.pid, w.kind, w.number, w.started_at, w.step, w.in_flight,
	   CASE WHEN w.kind = 'dispatcher' AND w.database = pg_catalog.current_database() THEN
		   ARRAY(SELECT e.endpoint_id FROM hub.endpoints e
				 WHERE ((w.number - e.endpoint_id) % w.nshards + w.nshards) % w.nshards
					   < CASE WHEN e.spread THEN e.max_concurrency ELSE 1 END
				 ORDER BY e.endpoint_id)
	   END AS endpoints,
	   CASE WHEN w.kind = 'dispatcher' AND w.database = pg_catalog.current_database() THEN
		   ARRAY(SELECT p.name FROM hub.pollers p JOIN hub.endpoints e USING (endpoint_id)
				 WHERE e.spread OR e.endpoint_id % w.nshards = w.number
				 ORDER BY p.name)
	   END AS pollers,
	   w.last_claim_at, w.last_record_at, w.restarts
FROM hub._workers() w;
COMMENT ON VIEW hub.workers IS
'One row per background worker of the cluster: the launcher (database NULL) and, per database served (logistics_hub.databases), its dispatchers and inbox workers (a slot whose worker is not running, stopped or failing and about to be started again, with pid NULL and step stopped): pid, kind (launcher, dispatcher, inbox), number (the slot, and a dispatcher''s shard, within its database), started_at, the current step (idle between steps), HTTP requests in flight (a dispatcher), the endpoints and pollers a dispatcher serves (for the current database''s dispatchers only, else NULL), when it last claimed work and last recorded outcomes (an inbox worker: its last batch that processed messages), and how many times the launcher started a worker in that slot again since the database was first served (the launcher''s row: its own restarts; reset by a server restart or crash).';

REVOKE EXECUTE ON FUNCTION hub._workers() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub._workers() TO hub_reader;
GRANT SELECT ON hub.workers TO hub_reader;

COMMENT ON FUNCTION hub.wake() IS
'Wake the dispatchers of the current database now and return how many of them are running (the workers of other databases served by the cluster are left alone). Publishing wakes them at commit by itself; call this after COMMIT PREPARED.';

CREATE OR REPLACE FUNCTION hub.metrics() RETURNS text
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	w interval := (SELECT t.value FROM hub.thresholds t WHERE t.name = 'metrics_window');
	wtxt text := (SELECT t.value::text FROM hub.thresholds t WHERE t.name = 'metrics_window');
	r text := '';
BEGIN
	r := r || hub._prom_family('logistics_hub_events_published_total', 'counter',
		'Events published to the outbox since the extension was created (the outbox sequence: a publication rolled back counts too).',
		format(E'logistics_hub_events_published_total %s\n',
			   coalesce(pg_catalog.pg_sequence_last_value(
				   pg_catalog.pg_get_serial_sequence('hub.outbox', 'seq')::regclass), 0)));

	-- ---------------------------------------------------------- deliveries
	r := r || hub._prom_family('logistics_hub_delivery_attempts', 'gauge',
		'Delivery attempts in the last ' || wtxt || ' (metrics_window), by endpoint and outcome.',
		(SELECT string_agg(format(E'logistics_hub_delivery_attempts{endpoint="%s",outcome="%s"} %s\n',
								  hub._prom_label(coalesce(en.name, '#' || c.endpoint_id)), c.outcome, c.n),
						   '' ORDER BY en.name, c.outcome)
		 FROM (SELECT d.endpoint_id, a.outcome, count(*) AS n
			   FROM hub.attempts a JOIN hub.deliveries d ON d.delivery_id = a.delivery_id
			   WHERE a.at > now() - w
			   GROUP BY d.endpoint_id, a.outcome) c
		 LEFT JOIN hub.endpoints en ON en.endpoint_id = c.endpoint_id));

	r := r || hub._prom_family('logistics_hub_delivery_latency_seconds', 'histogram',
		'Time from publication to the delivered attempt, for deliveries in the last ' || wtxt || ' (metrics_window), by endpoint.',
		(WITH l AS (
			SELECT d.endpoint_id, pg_catalog.date_part('epoch', a.at - o.published_at) AS s
			FROM hub.attempts a
			JOIN hub.deliveries d ON d.delivery_id = a.delivery_id
			JOIN hub.outbox o ON o.event_id = coalesce(a.group_event_id, d.event_id)
			WHERE a.at > now() - w AND a.outcome = 'delivered'
		 ), b (ord, le, le_text) AS (VALUES
			(1, 0.05, '0.05'), (2, 0.1, '0.1'), (3, 0.25, '0.25'), (4, 0.5, '0.5'), (5, 1, '1'),
			(6, 2.5, '2.5'), (7, 5, '5'), (8, 10, '10'), (9, 30, '30'), (10, 60, '60'),
			(11, 300, '300'), (12, NULL, '+Inf'))
		 SELECT string_agg(x.line, '' ORDER BY x.ep, x.ord)
		 FROM (
			SELECT en.name AS ep, b.ord,
				   format(E'logistics_hub_delivery_latency_seconds_bucket{endpoint="%s",le="%s"} %s\n',
						  hub._prom_label(en.name), b.le_text, count(*) FILTER (WHERE b.le IS NULL OR l.s <= b.le)) AS line
			FROM l JOIN hub.endpoints en ON en.endpoint_id = l.endpoint_id CROSS JOIN b
			GROUP BY en.name, b.ord, b.le_text
			UNION ALL
			SELECT en.name, 13, format(E'logistics_hub_delivery_latency_seconds_sum{endpoint="%s"} %s\n'
									   'logistics_hub_delivery_latency_seconds_count{endpoint="%s"} %s\n',
									   hub._prom_label(en.name), round(sum(l.s)::numeric, 3),
									   hub._prom_label(en.name), count(*))
			FROM l JOIN hub.endpoints en ON en.endpoint_id = l.endpoint_id
			GROUP BY en.name) x));

	r := r || (WITH o AS (
			SELECT d.endpoint_id,
				   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state IN ('pending', 'retry_wait', 'in_flight')), 0) AS backlog,
				   coalesce(sum(coalesce(cardinality(d.batch_events), 1)) FILTER (WHERE d.state = 'dead'), 0) AS dead,
				   now() - min(ob.published_at) FILTER (WHERE d.state IN ('pending', 'retry_wait', 'in_flight')) AS oldest
			FROM hub.deliveries d
			JOIN hub.outbox ob ON ob.event_id = d.event_id
			WHERE d.state NOT IN ('delivered', 'skipped')
			GROUP BY d.endpoint_id
		), e AS (
			SELECT en.name, en.circuit_state, coalesce(o.backlog, 0) AS backlog, coalesce(o.dead, 0) AS dead,
				   coalesce(o.oldest, interval '0') AS oldest
			FROM hub.endpoints en LEFT JOIN o ON o.endpoint_id = en.endpoint_id
		)
		SELECT hub._prom_family('logistics_hub_endpoint_backlog_events', 'gauge',
				'Events waiting for delivery (pending, retrying or in flight), by endpoint.',
				string_agg(format(E'logistics_hub_endpoint_backlog_events{endpoint="%s"} %s\n', hub._prom_label(e.name), e.backlog), '' ORDER BY e.name))
			|| hub._prom_family('logistics_hub_endpoint_dead_events', 'gauge',
				'Events whose delivery gave up (dead letters), by endpoint.',
				string_agg(format(E'logistics_hub_endpoint_dead_events{endpoint="%s"} %s\n', hub._prom_label(e.name), e.dead), '' ORDER BY e.name))
			|| hub._prom_family('logistics_hub_endpoint_oldest_pending_age_seconds', 'gauge',
				'Age of the oldest event waiting for delivery, by endpoint (0: none waits).',
				string_agg(format(E'logistics_hub_endpoint_oldest_pending_age_seconds{endpoint="%s"} %s\n', hub._prom_label(e.name), hub._prom_seconds(e.oldest)), '' ORDER BY e.name))
		FROM e)
		|| hub._prom_family('logistics_hub_circuit_state', 'gauge',
			'Circuit breaker state by endpoint: 1 for the state it is in, 0 for the others.',
			(SELECT string_agg(format(E'logistics_hub_circuit_state{endpoint="%s",state="%s"} %s\n', hub._prom_label(en.name), s.state,
									  (en.circuit_state = s.state)::int), '' ORDER BY en.name, s.ord)
			 FROM hub.endpoints en CROSS JOIN (VALUES (1, 'closed'), (2, 'open'), (3, 'half_open')) s (ord, state)));

	-- ---------------------------------------------------------- pollers
	r := r || hub._prom_family('logistics_hub_poll_requests', 'gauge',
		'Poll requests in the last ' || wtxt || ' (metrics_window), by poller and outcome.',
		(SELECT string_agg(format(E'logistics_hub_poll_requests{poller="%s",outcome="%s"} %s\n',
								  hub._prom_label(coalesce(p.name, '#' || c.poller_id)), c.outcome, c.n),
						   '' ORDER BY p.name, c.outcome)
		 FROM (SELECT q.poller_id, q.outcome, count(*) AS n FROM hub.poll_requests q
			   WHERE q.at > now() - w GROUP BY q.poller_id, q.outcome) c
		 LEFT JOIN hub.pollers p ON p.poller_id = c.poller_id));

	r := r || (WITH b AS (
			SELECT q.poller_id, count(*) AS n, now() - min(i.received_at) AS oldest
			FROM hub.inbox i JOIN hub.poll_requests q ON q.request_id = i.poll_request_id
			WHERE i.state IN ('new', 'retry_wait')
			GROUP BY q.poller_id
		), p AS (
			SELECT p.name, p.paused, p.failures, p.last_success_at, p.next_run_at,
				   coalesce(b.n, 0) AS backlog, coalesce(b.oldest, interval '0') AS oldest
			FROM hub.pollers p LEFT JOIN b ON b.poller_id = p.poller_id
		)
		SELECT hub._prom_family('logistics_hub_poller_backlog_messages', 'gauge',
				'Polled records waiting in the inbox (new or retrying), by poller.',
				string_agg(format(E'logistics_hub_poller_backlog_messages{poller="%s"} %s\n', hub._prom_label(p.name), p.backlog), '' ORDER BY p.name))
			|| hub._prom_family('logistics_hub_poller_oldest_pending_age_seconds', 'gauge',
				'Age of the oldest polled record waiting in the inbox, by poller (0: none waits).',
				string_agg(format(E'logistics_hub_poller_oldest_pending_age_seconds{poller="%s"} %s\n', hub._prom_label(p.name), hub._prom_seconds(p.oldest)), '' ORDER BY p.name))
			|| hub._prom_family('logistics_hub_poller_overdue_seconds', 'gauge',
				'How long a poller that is not paused is past its next run (0: not due yet).',
				string_agg(format(E'logistics_hub_poller_overdue_seconds{poller="%s"} %s\n', hub._prom_label(p.name),
								  hub._prom_seconds(greatest(now() - p.next_run_at, interval '0'))), '' ORDER BY p.name) FILTER (WHERE NOT p.paused))
			|| hub._prom_family('logistics_hub_poller_last_success_age_seconds', 'gauge',
				'Time since a poller''s last successful page (pollers that had one).',
				string_agg(format(E'logistics_hub_poller_last_success_age_seconds{poller="%s"} %s\n', hub._prom_label(p.name),
								  hub._prom_seconds(now() - p.last_success_at)), '' ORDER BY p.name) FILTER (WHERE p.last_success_at IS NOT NULL))
			|| hub._prom_family('logistics_hub_poller_failures', 'gauge',
				'Failed pages in a row, by poller.',
				string_agg(format(E'logistics_hub_poller_failures{poller="%s"} %s\n', hub._prom_label(p.name), p.failures), '' ORDER BY p.name))
		FROM p);

	-- ---------------------------------------------------------- inbox
	r := r || hub._prom_family('logistics_hub_inbox_messages', 'gauge',
		'Inbox messages not done, by state: new and retry_wait (the backlog), dead (failed max_attempts times), unhandled (no mapping or handler).',
		(SELECT string_agg(format(E'logistics_hub_inbox_messages{state="%s"} %s\n', s.state,
								  (SELECT count(*) FROM hub.inbox i WHERE i.state = s.state)), '' ORDER BY s.ord)
		 FROM (VALUES (1, 'new'), (2, 'retry_wait'), (3, 'dead'), (4, 'unhandled')) s (ord, state)))
		|| hub._prom_family('logistics_hub_inbox_oldest_pending_age_seconds', 'gauge',
		'Age of the oldest inbox message new or retrying (0: none waits).',
		(SELECT format(E'logistics_hub_inbox_oldest_pending_age_seconds %s\n',
					   hub._prom_seconds(coalesce(now() - min(i.received_at), interval '0')))
		 FROM hub.inbox i WHERE i.state IN ('new', 'retry_wait')));

	-- ---------------------------------------------------------- workers
	-- (shared memory, hub.workers: no row without shared_preload_libraries)
	r := r || (SELECT hub._prom_family('logistics_hub_worker_up', 'gauge',
				'1 while the worker of a slot runs, 0 while it is stopped or about to be started again (hub.workers), by database (empty: the launcher), kind and number.',
				string_agg(format(E'logistics_hub_worker_up{database="%s",kind="%s",number="%s"} %s\n',
								  hub._prom_label(coalesce(w.database::text, '')), w.kind, w.number,
								  (w.pid IS NOT NULL)::integer), '' ORDER BY w.database NULLS FIRST, w.kind, w.number))
			|| hub._prom_family('logistics_hub_worker_restarts_total', 'counter',
				'Times the launcher started the worker of a slot again since its database was first served, reset by a server restart (hub.workers), by database (empty: the launcher''s own restarts), kind and number.',
				string_agg(format(E'logistics_hub_worker_restarts_total{database="%s",kind="%s",number="%s"} %s\n',
								  hub._prom_label(coalesce(w.database::text, '')), w.kind, w.number, w.restarts),
						   '' ORDER BY w.database NULLS FIRST, w.kind, w.number))
			   FROM hub._workers() w);

	-- ---------------------------------------------------------- business
	r := r || hub._prom_family('logistics_hub_open_exceptions', 'gauge',
		'Open business exceptions (hub.exceptions), by kind.',
		(SELECT string_agg(format(E'logistics_hub_open_exceptions{kind="%s"} %s\n', k.kind,
								  (SELECT count(*) FROM hub.exceptions x WHERE x.resolved_at IS NULL AND x.kind = k.kind)), '' ORDER BY k.kind)
		 FROM unnest(ARRAY['conflict', 'contract_violation', 'not_owner', 'terminal', 'unknown_code']) k (kind)));

	-- (the conditions of hub.drift and hub.stale_entities, counted without
	-- the views' lookup of each key's parent: a probe of hub.entity_links a
	-- key, which made the counts 3 to 5 times slower at a million keys;
	-- metrics.sql checks that both agree with the views)
	r := r || (WITH d AS (
				SELECT e.lifecycle, count(*) AS n
				FROM hub.entity_state e
				JOIN hub.entity_system_state s USING (lifecycle, business_key)
				JOIN hub.drift_tolerances t ON t.lifecycle = e.lifecycle AND t.role = s.role
				WHERE e.state IS NOT NULL AND s.state IS NOT NULL AND s.state <> e.state
				  AND now() - greatest(e.state_occurred_at, s.state_since) > t.tolerance
				  AND NOT EXISTS (SELECT FROM hub.status_unmap u
								  WHERE u.system = lower(s.system) AND u.lifecycle = e.lifecycle
									AND u.state = e.state AND u.code = s.code)
				GROUP BY e.lifecycle),
			   s AS (
				SELECT e.lifecycle, count(*) AS n
				FROM hub.entity_state e
				JOIN hub.stale_thresholds t ON t.lifecycle = e.lifecycle AND t.state = e.state
				WHERE now() - e.last_advanced_at > t.threshold
				GROUP BY e.lifecycle)
		SELECT hub._prom_family('logistics_hub_drift_keys', 'gauge',
				'Keys where a system disagrees with the canonical state past its tolerance (hub.drift), by lifecycle.',
				string_agg(format(E'logistics_hub_drift_keys{lifecycle="%s"} %s\n', l.l, coalesce(d.n, 0)), '' ORDER BY l.l))
			|| hub._prom_family('logistics_hub_stale_keys', 'gauge',
				'Keys without progress past the threshold of their state (hub.stale_entities), by lifecycle.',
				string_agg(format(E'logistics_hub_stale_keys{lifecycle="%s"} %s\n', l.l, coalesce(s.n, 0)), '' ORDER BY l.l))
		FROM unnest(ARRAY['movement', 'order', 'return', 'shipment']) l (l)
		LEFT JOIN d ON d.lifecycle = l.l LEFT JOIN s ON s.lifecycle = l.l);
	RETURN r;
END
$$;

COMMENT ON FUNCTION hub.metrics() IS
'The hub''s metrics in the Prometheus text exposition format 0.0.4 (names logistics_hub_*): events published (counter); delivery attempts and poll requests by endpoint or poller and outcome, and the delivery latency histogram, over the window metrics_window (hub.thresholds); backlog, dead events, oldest pending age and circuit state per endpoint; backlog, oldest pending age, overdue time, last success age and failures per poller; inbox messages by state and the oldest pending age; worker up and restarts by database, kind and number (hub.workers); open exceptions by kind; drift and stale keys by lifecycle. Serve it from any scraper that can run SELECT hub.metrics().';

-- ================================================================ nats
-- NATS JetStream endpoints (workers/nats_transport.c): the subject template
-- of a nats:// endpoint, read by the dispatchers with its settings, and
-- hub.create_endpoint's subject parameter.
ALTER TABLE hub.endpoints ADD COLUMN subject_template text CHECK (length(subject_template) <= 200 AND subject_template ~
	'^([A-Za-z0-9_-]+|\{event_type\}|\{aggregate_id\})(\.([A-Za-z0-9_-]+|\{event_type\}|\{aggregate_id\}))*$');
COMMENT ON COLUMN hub.endpoints.subject_template IS
'nats:// endpoints: the NATS subject of an event, dot-separated tokens each a literal ([A-Za-z0-9_-]) or {event_type} (two tokens, domain.action) or {aggregate_id} (escaped: bytes other than [A-Za-z0-9_-] as %XX, "_" for none); lhub.{event_type}.{aggregate_id} when created without one. NULL for other transports.';
GRANT UPDATE (subject_template) ON hub.endpoints TO hub_admin;

DROP FUNCTION hub._dispatch_endpoints(integer[], integer, integer);
CREATE FUNCTION hub._dispatch_endpoints(ids integer[], shard integer, nshards integer)
RETURNS TABLE (endpoint_id integer, url text, timeout_ms integer, max_concurrency integer,
			   rate_limit float8, allow_redirects boolean, auth_kind text, api_key_header text,
			   oauth2_token_url text, headers text[], auth_secret bytea, oauth2_client_id bytea,
			   oauth2_client_secret bytea, signing_secrets bytea[], usable boolean, usable_again timestamptz,
			   throttled_until timestamptz, subject_template text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT e.endpoint_id, e.url, e.timeout_ms,
		   CASE WHEN e.spread THEN hub._serves_share(shard, nshards, e.endpoint_id, e.max_concurrency)
				ELSE e.max_concurrency END,
		   CASE WHEN e.spread
				THEN e.rate_limit * hub._serves_share(shard, nshards, e.endpoint_id, e.max_concurrency)
					 / e.max_concurrency
				ELSE e.rate_limit END::float8,
		   e.allow_redirects,
		   e.auth_kind, e.api_key_header, e.oauth2_token_url,
		   ARRAY(SELECT h.key || ': ' || h.value FROM jsonb_each_text(e.headers) h ORDER BY h.key),
		   x.auth_secret, x.oauth2_client_id, x.oauth2_client_secret, coalesce(x.signing_secrets, '{}'),
		   e.enabled AND NOT e.paused AND e.circuit_state <> 'open',
		   CASE WHEN e.circuit_state = 'open' THEN e.circuit_opened_at + e.circuit_cooloff ELSE now() END,
		   e.throttled_until, e.subject_template
	FROM hub.endpoints e
	LEFT JOIN hub._endpoint_secrets x ON x.endpoint_id = e.endpoint_id
	WHERE e.endpoint_id = ANY (ids)
$$;
COMMENT ON FUNCTION hub._dispatch_endpoints(integer[], integer, integer) IS
'API: Private. Settings and sealed secrets (opened by the workers in C) of endpoints for the dispatcher workers (never granted to anyone), with the concurrency and rate limit cut to the share of shard of nshards (hub._serves_share); not usable while paused, disabled or its circuit open (usable again at the circuit''s probe time), nor before throttled_until.';
REVOKE EXECUTE ON FUNCTION hub._dispatch_endpoints(integer[], integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub._dispatch_endpoints(integer[], integer, integer) TO hub_worker;

DROP FUNCTION hub.create_endpoint(text, text, text, integer, integer, numeric, boolean, text, text, text, text, text, text, text, jsonb);
CREATE FUNCTION hub.create_endpoint(name text, url text, kind text DEFAULT 'other',
		timeout_ms integer DEFAULT 10000, max_concurrency integer DEFAULT 16,
		rate_limit numeric DEFAULT NULL, allow_redirects boolean DEFAULT false,
		auth_kind text DEFAULT 'none', auth_secret text DEFAULT NULL,
		api_key_header text DEFAULT NULL, oauth2_token_url text DEFAULT NULL,
		oauth2_client_id text DEFAULT NULL, oauth2_client_secret text DEFAULT NULL,
		signing_secret text DEFAULT NULL, headers jsonb DEFAULT '{}', subject text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	id integer;
BEGIN
	-- (before anything that would show the URL, password and all; a
	-- postgresql:// URI may name its user, never a password)
	IF (url ~* '^postgres(ql)?://' AND (url ~ '^[^/?#]*//[^/?#@]*:[^/?#]*@' OR url ~* '[?&]password='))
		OR (url !~* '^postgres(ql)?://' AND url ~ '^[^/?#]*(//)?[^/?#]*@')
		OR oauth2_token_url ~ '^[^/?#]*(//)?[^/?#]*@' THEN
		RAISE EXCEPTION 'endpoint URL must not contain user information'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A user name or password in the URL would be readable by hub_reader.',
				  HINT = 'Pass credentials as auth_kind and auth_secret (or oauth2_client_id and oauth2_client_secret).';
	END IF;
	IF url !~* '^(https?|postgres(ql)?|nats)://[^/?#[:space:]]+' THEN
		RAISE EXCEPTION 'invalid endpoint URL: "%"', url
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Only http://, https://, postgresql:// (a central hub) and nats:// URLs can be delivered to.';
	END IF;
	IF signing_secret IS NOT NULL AND signing_secret !~ '^whsec_[A-Za-z0-9+/=]+$' THEN
		RAISE EXCEPTION 'invalid signing secret' USING ERRCODE = 'invalid_parameter_value',
			HINT = 'A Standard Webhooks secret is whsec_ followed by base64.';
	END IF;
	PERFORM hub._check_credentials(name, auth_secret, oauth2_client_id, oauth2_client_secret);
	IF url ~* '^nats://' THEN
		subject := coalesce(subject, 'lhub.{event_type}.{aggregate_id}');
		PERFORM hub._check_setting('subject', length(subject) <= 200 AND subject ~
			'^([A-Za-z0-9_-]+|\{event_type\}|\{aggregate_id\})(\.([A-Za-z0-9_-]+|\{event_type\}|\{aggregate_id\}))*$',
			subject, 'at most 200 characters of dot-separated tokens, each letters, digits, _ and - or {event_type} or {aggregate_id}');
		PERFORM hub._check_setting('auth_kind', auth_kind IN ('none', 'bearer', 'basic'), auth_kind,
								   'none, bearer (a NATS token) or basic (user:password) for a nats:// endpoint');
	ELSIF subject IS NOT NULL THEN
		RAISE EXCEPTION 'only a nats:// endpoint has a subject' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM hub._check_setting('timeout_ms', timeout_ms BETWEEN 100 AND 600000, timeout_ms::text,
							   'between 100 and 600000 (milliseconds)');
	PERFORM hub._check_setting('max_concurrency', max_concurrency BETWEEN 1 AND 1000, max_concurrency::text,
							   'between 1 and 1000');
	PERFORM hub._check_setting('rate_limit', rate_limit IS NULL OR rate_limit BETWEEN 0.001 AND 100000,
							   rate_limit::text, 'NULL (no limit) or between 0.001 and 100000 requests a second');
	INSERT INTO hub.endpoints (name, url, kind, timeout_ms, max_concurrency, rate_limit, allow_redirects,
							   auth_kind, api_key_header, oauth2_token_url, headers, subject_template)
	VALUES (name, url, kind, timeout_ms, max_concurrency, rate_limit, allow_redirects,
			auth_kind, api_key_header, oauth2_token_url, coalesce(headers, '{}'), subject)
	RETURNING endpoint_id INTO id;
	-- sealed (hub._seal, 55_secrets.sql): only ciphertext reaches the table
	INSERT INTO hub._endpoint_secrets (endpoint_id, auth_secret, oauth2_client_id, oauth2_client_secret, signing_secrets)
	VALUES (id, hub._seal(id, 'auth_secret', auth_secret), hub._seal(id, 'oauth2_client_id', oauth2_client_id),
			hub._seal(id, 'oauth2_client_secret', oauth2_client_secret),
			CASE WHEN signing_secret IS NULL THEN '{}' ELSE ARRAY[hub._seal(id, 'signing_secrets', signing_secret)] END);
	RETURN id;
END
$$;
COMMENT ON FUNCTION hub.create_endpoint(text, text, text, integer, integer, numeric, boolean, text, text, text, text, text, text, text, jsonb, text) IS
'Register a receiver: an http(s):// URL, a postgresql:// URI of a central hub (its password as auth_secret) or a nats:// server list (NATS JetStream: subject names the subject template, default lhub.{event_type}.{aggregate_id}; auth_kind bearer is a token, basic user:password); everything after kind is optional and passed by name. Secrets are sealed (55000 when no secret key is loaded) into a table only hub_admin can read. Returns the endpoint id.';
REVOKE EXECUTE ON FUNCTION hub.create_endpoint(text, text, text, integer, integer, numeric, boolean, text, text, text, text, text, text, text, jsonb, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.create_endpoint(text, text, text, integer, integer, numeric, boolean, text, text, text, text, text, text, text, jsonb, text) TO hub_admin;

-- (a NATS JetStream stream as a poller source: sql/src/66_nats_pollers.sql;
-- HTTP pollers' claim and wake-up leave nats:// endpoints out, and
-- create_poller checks a nats poller's STREAM/DURABLE path)
CREATE OR REPLACE FUNCTION hub._poll_claim(worker text, shard integer, nshards integer, max integer)
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

CREATE OR REPLACE FUNCTION hub._poll_next_due(shard integer, nshards integer) RETURNS timestamptz
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

CREATE OR REPLACE FUNCTION hub.create_poller(endpoint text, path text, message_type text,
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

-- ================================================================ per-key lease groups
-- (a lease group of a per_key subscription: events of one key, sent one
-- after another; the claim's rows carry the traceparent and that flag)

ALTER TABLE hub.subscriptions DROP CONSTRAINT subscriptions_lease_group_unordered,
	ADD CONSTRAINT subscriptions_lease_group_format
		CHECK (lease_group = 1 OR body_format NOT IN ('batch', 'cloudevents_batch'));
COMMENT ON COLUMN hub.subscriptions.lease_group IS
'Up to this many events routed together share one delivery row (one lease, one completion), each still sent as its own request with its own attempt rows; events that fail leave the group as single deliveries. With ordering per_key a group holds events of one key, sent one after another, each once the one before got through (the first that does not stops the rest, which stay behind it). Only for one event a request (formats event and cloudevents); 1 (the default): a delivery per event.';
ALTER TYPE hub._claimed ADD ATTRIBUTE traceparent text, ADD ATTRIBUTE sequential boolean;
COMMENT ON TYPE hub._claimed IS
'API: Private. One event of a claimed delivery (a batch delivery gives one row per event, batch_size of them, with the same delivery_id and lease_token); body is the event rendered for its receiver (hub.event_body), when the claim was asked to render; traceparent the event''s; sequential: a lease group of a per_key subscription, whose events go one after another.';
CREATE OR REPLACE FUNCTION hub._route_events() RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
DECLARE
	cur pg_snapshot := pg_current_snapshot();
	prev pg_snapshot;
	n bigint;
BEGIN
	/*
	 * Nothing to look at (no event from a transaction in progress at the
	 * last pass nor from a later one): keep the state as it is, which is
	 * always safe, and spare every idle claim the planning of the INSERT.
	 * This look comes before the row lock, which would give every idle
	 * claim a transaction id and a WAL record: an idle hub writes nothing.
	 * A pass that finds work locks the state and looks again under the
	 * lock.  (Each probe is an ORDER BY ... LIMIT 1 outside EXISTS, which
	 * would drop the LIMIT, so that it is one descent of the primary key
	 * whatever the statistics say.)
	 */
	FOR pass IN 1 .. 2 LOOP
		IF pass = 1 THEN
			SELECT r.snapshot INTO prev FROM hub._router_state r;
		ELSE
			SELECT r.snapshot INTO prev FROM hub._router_state r FOR UPDATE SKIP LOCKED;
			IF NOT FOUND THEN
				RETURN 0;		-- another router is at work
			END IF;
		END IF;
		IF (SELECT o.event_id FROM hub.outbox o WHERE o.event_id >= hub._event_id_floor(pg_snapshot_xmax(prev))
			ORDER BY o.event_id LIMIT 1) IS NULL
			AND NOT EXISTS (SELECT 1 FROM pg_snapshot_xip(prev) x,
							LATERAL (SELECT 1 FROM hub.outbox o
									 WHERE o.event_id BETWEEN hub._event_id_floor(x) AND hub._event_id_ceiling(x)
									 ORDER BY o.event_id LIMIT 1) o) THEN
			RETURN 0;
		END IF;
	END LOOP;
	/*
	 * The subscriptions are locked in the inserting statement itself, so
	 * none read here can be deleted before the deliveries are committed
	 * (hub.deliveries has no foreign key, see 40_outbox.sql).  Only events
	 * of transactions that had ended in cur are routed: the statement's own
	 * snapshot is younger and may see more, which the next pass, starting
	 * from cur, routes (ON CONFLICT is only a safety net: a batch delivery
	 * has a key on its smallest event alone).
	 *
	 * A batch subscription gets its events in batch deliveries of up to
	 * batch_max, in seq order: with per_key ordering, per one of 64 buckets
	 * of the aggregate's hash (the bucket is the batch's aggregate_id, so
	 * the batches of a bucket go in order, and with them the events of
	 * each key), with none, in one run.  A subscription with a lease group
	 * gets its events the same way, in deliveries of up to lease_group
	 * events, each of which is still sent on its own: with none, in one
	 * run; with per_key, per aggregate (the group's aggregate_id is the
	 * key's, so the claim hands out a key's groups one after another, and
	 * the dispatcher sends a group's events one after another).  Events
	 * routed in one pass are batched together: under load a pass sees many,
	 * and an idle hub sends an event as soon as it is routed, in a batch of
	 * one.
	 */
	WITH s AS (SELECT * FROM hub.subscriptions FOR KEY SHARE), ev AS (
		SELECT s.subscription_id, s.endpoint_id, o.event_id, o.seq, o.aggregate_id, s.ordering, s.priority,
			   s.body_format IN ('batch', 'cloudevents_batch') OR s.lease_group > 1 AS batched,
			   CASE WHEN s.body_format IN ('batch', 'cloudevents_batch') THEN s.batch_max ELSE s.lease_group END AS batch_max,
			   -- (what a batch or lease group may span: per_key, a batch one
			   -- of 64 buckets of keys, a lease group one key; none, all)
			   CASE WHEN s.ordering <> 'per_key' THEN ''
					WHEN s.body_format IN ('batch', 'cloudevents_batch')
					THEN 'batch:' || abs(hashtext(o.aggregate_id) % 64)
					ELSE o.aggregate_id END AS span
		FROM (SELECT o.event_id, o.seq, o.event_type, o.aggregate_id, o.payload, o.published_at
			  FROM hub.outbox o
			  WHERE o.event_id >= hub._event_id_floor(pg_snapshot_xmax(prev))
			  UNION ALL
			  SELECT o.event_id, o.seq, o.event_type, o.aggregate_id, o.payload, o.published_at
			  FROM pg_snapshot_xip(prev) x
			  JOIN hub.outbox o ON o.event_id BETWEEN hub._event_id_floor(x) AND hub._event_id_ceiling(x)) o
		JOIN s
			ON (split_part(s.event_pattern, '.', 1) IN ('*', split_part(o.event_type, '.', 1))
				AND split_part(s.event_pattern, '.', 2) IN ('*', split_part(o.event_type, '.', 2)))
			AND (s.filter IS NULL OR o.payload @> s.filter)
			AND s.created_at <= o.published_at
		WHERE pg_visible_in_snapshot(hub._event_xid(o.event_id), cur)
	)
	INSERT INTO hub.deliveries (subscription_id, endpoint_id, event_id, seq, aggregate_id, ordering, priority,
								batch_events)
	SELECT ev.subscription_id, ev.endpoint_id, ev.event_id, ev.seq, ev.aggregate_id, ev.ordering, ev.priority, NULL
	FROM ev
	WHERE NOT ev.batched
	UNION ALL
	SELECT b.subscription_id, b.endpoint_id, (array_agg(b.event_id ORDER BY b.event_id))[1], min(b.seq),
		   CASE WHEN b.ordering = 'per_key' THEN b.span ELSE min(b.aggregate_id) END,
		   b.ordering, b.priority, array_agg(b.event_id ORDER BY b.seq)
	FROM (SELECT ev.*, (row_number() OVER (PARTITION BY ev.subscription_id, ev.span ORDER BY ev.seq) - 1)
						   / ev.batch_max AS chunk
		  FROM ev
		  WHERE ev.batched) b
	GROUP BY b.subscription_id, b.endpoint_id, b.ordering, b.priority, b.span, b.chunk
	ORDER BY 3, 1
	ON CONFLICT (subscription_id, event_id) DO NOTHING;
	GET DIAGNOSTICS n = ROW_COUNT;
	UPDATE hub._router_state SET snapshot = cur, watermark = pg_snapshot_xmin(cur);
	RETURN n;
END
$$;

COMMENT ON FUNCTION hub._route_events() IS
'API: Private. Create the deliveries of every committed event not routed yet (follows the transactions of the last routing snapshot, safe against out-of-order commits). Returns the number created.';

CREATE OR REPLACE FUNCTION hub.subscribe(endpoint text, event_pattern text, filter jsonb DEFAULT NULL,
		transform regproc DEFAULT NULL, ordering text DEFAULT 'per_key', priority integer DEFAULT 0,
		max_attempts integer DEFAULT 12, retry_base interval DEFAULT '1 second',
		retry_max interval DEFAULT '1 hour', retry_on_4xx boolean DEFAULT false,
		body_format text DEFAULT 'event', batch_max integer DEFAULT 100, lease_group integer DEFAULT 1)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	e integer;
	id integer;
BEGIN
	e := hub._endpoint_id(endpoint);
	PERFORM hub._check_setting('priority', priority BETWEEN -1000 AND 1000, priority::text, 'between -1000 and 1000');
	PERFORM hub._check_setting('max_attempts', max_attempts BETWEEN 1 AND 1000, max_attempts::text,
							   'between 1 and 1000');
	PERFORM hub._check_setting('retry_base', retry_base BETWEEN interval '0' AND interval '1 day',
							   retry_base::text, 'between 0 and 1 day');
	PERFORM hub._check_setting('retry_max', retry_max BETWEEN interval '0' AND interval '7 days',
							   retry_max::text, 'between 0 and 7 days');
	PERFORM hub._check_setting('retry_base', retry_base <= retry_max, retry_base::text,
							   pg_catalog.format('at most retry_max (%s)', retry_max));
	PERFORM hub._check_setting('batch_max', batch_max BETWEEN 1 AND 1000, batch_max::text, 'between 1 and 1000');
	-- (the table's CHECK constraints hold the same; this names the value)
	PERFORM hub._check_setting('body_format', body_format IN ('event', 'cloudevents', 'batch', 'cloudevents_batch'),
							   '"' || body_format || '"',
							   'event, cloudevents, batch or cloudevents_batch');
	PERFORM hub._check_setting('ordering', ordering IN ('per_key', 'none'), '"' || ordering || '"',
							   'per_key or none');
	IF transform IS NOT NULL THEN
		PERFORM hub._check_user_function(transform, 'transform function', '3802', 'jsonb');
	END IF;
	IF lease_group IS DISTINCT FROM 1 AND (lease_group IS NULL OR lease_group NOT BETWEEN 1 AND 1000
			OR body_format IN ('batch', 'cloudevents_batch')) THEN
		RAISE EXCEPTION 'invalid lease_group: %', coalesce(lease_group::text, 'NULL')
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'A lease group holds 1 to 1000 events, and only a subscription of one event a request (body_format event or cloudevents) can have one.';
	END IF;
	INSERT INTO hub.subscriptions (endpoint_id, event_pattern, filter, transform, ordering, priority,
								   max_attempts, retry_base, retry_max, retry_on_4xx, body_format, batch_max,
								   lease_group)
	VALUES (e, event_pattern, filter, transform, ordering, priority, max_attempts, retry_base,
			retry_max, retry_on_4xx, body_format, batch_max, lease_group)
	RETURNING subscription_id INTO id;
	RETURN id;
END
$$;

COMMENT ON FUNCTION hub.subscribe(text, text, jsonb, regproc, text, integer, integer, interval, interval, boolean, text, integer, integer) IS
'Subscribe an endpoint to events matching a pattern (order.*, *.delivered, shipment.dispatched). Applies to events published from now on; use hub.replay_subscription to backfill. lease_group > 1 (one event a request) lets up to that many events routed together (with ordering per_key: of one key) share one delivery row, leased and completed at once, each still its own request (with per_key: sent one after another, each once the one before got through). Returns the subscription id; 22023 for a setting out of its range, an unknown body_format (event, cloudevents, batch, cloudevents_batch) or ordering (per_key, none).';

CREATE OR REPLACE FUNCTION hub._claim(p_max integer, p_worker text, p_lease interval, p_shard integer,
						   p_nshards integer, p_endpoint integer, p_max_events integer, p_rounds integer,
						   p_held_ids integer[], p_held integer[], p_source text, p_max_bytes bigint DEFAULT NULL)
RETURNS SETOF hub._claimed
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
SET plan_cache_mode = force_generic_plan
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_sort = off
AS $$
DECLARE
	cap bigint;
BEGIN
	/*
	 * With the claimer's per-endpoint cap (p_rounds), no more candidates
	 * than the cap can use in all: each is locked, and a lock is a write.
	 */
	IF p_rounds IS NOT NULL AND p_endpoint IS NULL THEN
		SELECT sum(greatest(0, p_rounds * CASE WHEN e.spread THEN hub._serves_share(p_shard, p_nshards, e.endpoint_id,
																					  e.max_concurrency)
										  ELSE e.max_concurrency END
							   - coalesce((SELECT h.n FROM unnest(p_held_ids, p_held) h(id, n)
										   WHERE h.id = e.endpoint_id), 0)))
		INTO cap
		FROM hub.endpoints e
		WHERE e.enabled AND NOT e.paused AND e.circuit_state = 'closed'
			AND hub._serves(p_shard, p_nshards, e.endpoint_id, CASE WHEN e.spread THEN e.max_concurrency ELSE 1 END);
		p_max := least(p_max, greatest(coalesce(cap, 0), 1));
	END IF;
	RETURN QUERY
	WITH candidates AS (
		SELECT d.delivery_id, d.state AS old_state, d.lease_token AS old_token,
			   d.leased_by AS old_worker, d.attempts AS old_attempt,
			   coalesce(cardinality(d.batch_events), 1) AS n_events,
			   -- requests at once: one a batch, one a per_key lease group
			   -- (its events go one after another), one an event of another
			   CASE WHEN d.batch_events IS NULL OR d.ordering = 'per_key' THEN 1
					WHEN (SELECT s.body_format FROM hub.subscriptions s
						  WHERE s.subscription_id = d.subscription_id) IN ('batch', 'cloudevents_batch') THEN 1
					ELSE cardinality(d.batch_events) END AS n_requests,
			   d.priority AS o_priority, d.next_attempt_at AS o_next, d.seq AS o_seq,
			   e.endpoint_id AS o_endpoint,
			   CASE WHEN e.spread THEN hub._serves_share(p_shard, p_nshards, e.endpoint_id, e.max_concurrency)
					ELSE e.max_concurrency END AS o_share,
			   -- payload bytes, with a byte budget only (a primary key
			   -- lookup an event, sizes read from the headers)
			   CASE WHEN p_max_bytes IS NULL THEN 0
					WHEN d.batch_events IS NULL
					THEN (SELECT hub._payload_size(o.payload) FROM hub.outbox o WHERE o.event_id = d.event_id)
					ELSE (SELECT sum(hub._payload_size(o.payload))
						  FROM unnest(d.batch_events) b(event_id)
						  JOIN hub.outbox o ON o.event_id = b.event_id) END AS n_bytes
		FROM hub.deliveries d
		JOIN (SELECT e.*, CASE WHEN e.spread THEN e.max_concurrency ELSE 1 END AS spread_width
			  FROM hub.endpoints e) e ON e.endpoint_id = d.endpoint_id
		WHERE d.state IN ('pending', 'retry_wait', 'in_flight') AND d.next_attempt_at <= now()
			AND e.enabled AND NOT e.paused
			AND CASE WHEN p_endpoint IS NULL
					 THEN e.circuit_state = 'closed' AND hub._serves(p_shard, p_nshards, e.endpoint_id, e.spread_width)
					 ELSE d.endpoint_id = p_endpoint END
			-- (per_key: no earlier open delivery of the key, looked for
			-- nearest first: a blocked successor's is right before it,
			-- where a forward scan would first read through the dead
			-- index entries of every delivered event of the key)
			AND (d.ordering = 'none' OR (
				SELECT p.seq FROM hub.deliveries p
				WHERE p.subscription_id = d.subscription_id AND p.aggregate_id = d.aggregate_id
					AND p.seq < d.seq AND p.state NOT IN ('delivered', 'skipped')
				ORDER BY p.seq DESC LIMIT 1) IS NULL)
		ORDER BY d.priority DESC, d.next_attempt_at, d.seq
		LIMIT p_max
		FOR UPDATE OF d SKIP LOCKED
	), capped AS (
		-- from each endpoint, no more requests than make the claimer hold
		-- (p_held: the requests it holds already) p_rounds times its share
		-- of the endpoint's connections; then at most p_max_events events
		-- and p_max_bytes payload bytes (the first delivery always); the
		-- rows locked above and left out here are free again at commit
		SELECT c.* FROM (
			SELECT c.*, sum(c.n_events) OVER w AS upto, sum(c.n_bytes) OVER w AS upto_bytes
			FROM (SELECT c.*, sum(c.n_requests) OVER (PARTITION BY c.o_endpoint
													  ORDER BY c.o_priority DESC, c.o_next, c.o_seq
													  ROWS UNBOUNDED PRECEDING) AS requests
				  FROM candidates c) c
			WHERE p_rounds IS NULL OR p_endpoint IS NOT NULL
				OR c.requests - c.n_requests < p_rounds * c.o_share
							 - coalesce((SELECT h.n FROM unnest(p_held_ids, p_held) h(id, n)
										 WHERE h.id = c.o_endpoint), 0)
			WINDOW w AS (ORDER BY c.o_priority DESC, c.o_next, c.o_seq ROWS UNBOUNDED PRECEDING)) c
		WHERE (p_max_events IS NULL OR c.upto - c.n_events < p_max_events)
			AND (p_max_bytes IS NULL OR c.upto_bytes - c.n_bytes < p_max_bytes)
	), claimed AS (
		UPDATE hub.deliveries d
		SET state = 'in_flight', lease_until = now() + p_lease, next_attempt_at = now() + p_lease,
			lease_token = nextval('hub._lease_token_seq'), attempts = d.attempts + 1,
			leased_by = p_worker, updated_at = now()
		FROM capped c
		WHERE d.delivery_id = c.delivery_id
		-- (the size apart: batch_events read above the join with the events
		-- would be read again for every event, the whole array detoasted
		-- once an event when it is large)
		RETURNING d.*, coalesce(cardinality(d.batch_events), 1) AS n_events
	), expired AS (
		-- a lease that ran out: its attempt never reported; say so in the audit
		INSERT INTO hub.attempts (delivery_id, attempt, worker, lease_token, error, outcome)
		SELECT c.delivery_id, c.old_attempt, c.old_worker, c.old_token, 'lease expired without a result', 'expired'
		FROM capped c
		WHERE c.old_state = 'in_flight'
	)
	-- (rendered: the body instead of the payload, the row carried no
	-- bigger than it must be through the callers' RETURN QUERY)
	SELECT c.delivery_id, c.lease_token, c.attempts, o.event_id, o.event_type, o.aggregate_id,
		   o.occurred_at, o.correlation_id,
		   CASE WHEN p_source IS NULL THEN o.payload END, c.subscription_id, c.endpoint_id, s.body_format, s.transform,
		   c.n_events, s.batch_max,
		   CASE WHEN p_source IS NOT NULL
				THEN hub.event_body(s.body_format, o.event_id, o.event_type, o.aggregate_id, o.occurred_at,
									o.correlation_id, o.payload, p_source, o.contract_version, o.traceparent) END,
		   o.traceparent, c.batch_events IS NOT NULL AND c.ordering = 'per_key'
				AND s.body_format NOT IN ('batch', 'cloudevents_batch')
	FROM claimed c
	CROSS JOIN LATERAL unnest(coalesce(c.batch_events, ARRAY[c.event_id])) WITH ORDINALITY AS b(event_id, ord)
	JOIN hub.outbox o ON o.event_id = b.event_id
	JOIN hub.subscriptions s ON s.subscription_id = c.subscription_id
	-- (rendering for a dispatcher: a subscription's deliveries together,
	-- for its batches)
	ORDER BY c.priority DESC, CASE WHEN p_source IS NOT NULL THEN c.subscription_id END, c.seq, c.delivery_id,
		b.ord;
END
$$;

COMMENT ON FUNCTION hub._claim(integer, text, interval, integer, integer, integer, integer, integer, integer[], integer[], text, bigint) IS
'API: Private. The leasing statement of hub.claim_deliveries (closed circuits of a shard, or one endpoint''s probe): up to p_max deliveries and, unless NULL, p_max_events events and p_max_bytes payload bytes (hub._payload_size; the first delivery always comes whole) and, with what the claimer holds (p_held_ids, p_held), p_rounds times the shard''s share of each endpoint''s max_concurrency; a batch delivery comes as one row per event, in order. With p_source, each event comes rendered (hub.event_body with that source; body, and payload NULL), a subscription''s deliveries together.';

CREATE OR REPLACE FUNCTION hub._claim_transformed(p_max integer, p_worker text, p_lease interval, p_shard integer,
									   p_nshards integer, p_endpoint integer, p_max_events integer,
									   p_rounds integer, p_held_ids integer[], p_held integer[], p_source text,
									   p_max_bytes bigint DEFAULT NULL)
RETURNS SETOF hub._claimed
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
	rows hub._claimed[];
	r hub._claimed;
	failed bigint[] := '{}';
	failed_events uuid[] := '{}';	-- events of lease groups that failed alone
	failed_groups bigint[] := '{}';	-- (and the group each left)
	alone bigint;
	back bigint;
	later uuid[];
	part record;
	err text;
BEGIN
	IF NOT EXISTS (SELECT 1 FROM hub.subscriptions s WHERE s.transform IS NOT NULL) THEN
		RETURN QUERY
		SELECT * FROM hub._claim(p_max, p_worker, p_lease, p_shard, p_nshards, p_endpoint, p_max_events, p_rounds,
								 p_held_ids, p_held, p_source, p_max_bytes);
		RETURN;
	END IF;
	-- (unrendered: the transforms need the payloads; rendered below, in
	-- claim order rather than a subscription's deliveries together, so a
	-- replay of single events of a transformed batch subscription may go
	-- out in more, smaller batches)
	rows := ARRAY(SELECT c FROM hub._claim(p_max, p_worker, p_lease, p_shard, p_nshards, p_endpoint, p_max_events, p_rounds,
						 p_held_ids, p_held, NULL, p_max_bytes) c);
	FOR i IN 1 .. coalesce(array_length(rows, 1), 0) LOOP
		r := rows[i];
		CONTINUE WHEN r.transform IS NULL OR r.delivery_id = ANY (failed) OR r.event_id = ANY (failed_events);
		BEGIN
			r.payload := hub._transform(r.transform, r.payload);
			rows[i] := r;
		EXCEPTION WHEN OTHERS THEN
			err := format('transform %s failed: %s (SQLSTATE %s)', r.transform, SQLERRM, SQLSTATE);
			IF r.sequential THEN
				-- an event of a per_key lease group: it fails alone, and
				-- the group's later events stay behind it, given back
				-- together without an attempt; the earlier ones go out
				later := ARRAY(SELECT l.event_id FROM unnest(rows[i + 1:]) l WHERE l.delivery_id = r.delivery_id);
				back := NULL;
				FOR part IN SELECT * FROM hub._split_group(r.delivery_id, r.lease_token, ARRAY[r.event_id], later) LOOP
					IF part.event_id = r.event_id THEN
						alone := part.delivery_id;
					ELSE
						back := part.delivery_id;
					END IF;
				END LOOP;
				PERFORM hub.fail_delivery(alone, r.lease_token, NULL, err, 0, NULL, NULL, p_worker, false);
				IF back IS NOT NULL THEN
					PERFORM hub.defer_delivery(back, r.lease_token, now());
				END IF;
				failed_events := failed_events || r.event_id || later;
				failed_groups := failed_groups || array_fill(r.delivery_id, ARRAY[1 + cardinality(later)]);
			ELSIF r.batch_size > 1 AND r.body_format IS DISTINCT FROM 'batch'
			   AND r.body_format IS DISTINCT FROM 'cloudevents_batch' THEN
				-- an event of a lease group, which is its own request: only
				-- it leaves the group (a delivery of its own, same lease) and
				-- fails; the rest of the group goes out
				SELECT x.delivery_id INTO alone
				FROM hub._split_group(r.delivery_id, r.lease_token, ARRAY[r.event_id]) x
				WHERE x.event_id = r.event_id;
				PERFORM hub.fail_delivery(alone, r.lease_token, NULL, err, 0, NULL, NULL, p_worker, false);
				failed_events := failed_events || r.event_id;
				failed_groups := failed_groups || r.delivery_id;
			ELSE
				PERFORM hub.fail_delivery(r.delivery_id, r.lease_token, NULL, err, 0, NULL, NULL, p_worker, false);
				failed := failed || r.delivery_id;
			END IF;
		END;
	END LOOP;
	RETURN QUERY
	SELECT c.delivery_id, c.lease_token, c.attempt, c.event_id, c.event_type, c.aggregate_id,
		   c.occurred_at, c.correlation_id, c.payload, c.subscription_id, c.endpoint_id, c.body_format,
		   c.transform,
		   c.batch_size - (SELECT count(*) FROM unnest(failed_groups) g WHERE g = c.delivery_id)::integer,
		   c.batch_max,
		   CASE WHEN p_source IS NOT NULL
				THEN hub.event_body(c.body_format, c.event_id, c.event_type, c.aggregate_id, c.occurred_at,
									c.correlation_id, c.payload, p_source,
									(SELECT o.contract_version FROM hub.outbox o WHERE o.event_id = c.event_id),
									c.traceparent) END,
		   c.traceparent, c.sequential
	FROM unnest(rows) WITH ORDINALITY AS c
	WHERE c.delivery_id <> ALL (failed) AND c.event_id <> ALL (failed_events)
	ORDER BY c.ordinality;
END
$$;

COMMENT ON FUNCTION hub._claim_transformed(integer, text, interval, integer, integer, integer, integer, integer, integer[], integer[], text, bigint) IS
'API: Private. hub._claim with subscription transforms applied; a transform that raises fails only its delivery (recorded, retried, never counted against the endpoint) and none of its events is handed out; for an event of a lease group, only that event, split out of its group (of a per_key group, with the group''s later events given back behind it).';

-- ================================================================ end
