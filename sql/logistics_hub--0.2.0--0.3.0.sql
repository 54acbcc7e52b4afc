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



-- ================================================================ flow
-- (inbox -> canonical state -> canonical events: issue 19)



-- ================================================================ inbox worker
-- (issue 19)



-- ================================================================ end
