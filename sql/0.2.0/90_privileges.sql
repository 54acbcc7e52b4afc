/*
 * 90_privileges.sql --- privileges that span the fragments before it (the
 * privilege matrix is tested in test/pgtap/privileges.sql).
 *
 * hub_admin changes an endpoint's settings with a plain UPDATE (its URL is
 * checked against the egress policy by the endpoint_check trigger, which
 * runs with the updater's rights and so needs hub._egress_check); pausing
 * stays with the audited hub.pause_endpoint / hub.resume_endpoint, and
 * the circuit breaker's columns with the delivery functions.  Secrets stay
 * readable, not writable, by hub_admin (hub._endpoint_secrets).
 */
GRANT UPDATE (url, kind, enabled, timeout_ms, max_concurrency, rate_limit, allow_redirects, auth_kind,
			  api_key_header, oauth2_token_url, headers, circuit_failure_threshold, circuit_cooloff, spread)
	ON hub.endpoints TO hub_admin;
GRANT EXECUTE ON FUNCTION hub._egress_check(text) TO hub_admin;

-- the library version is no business of PUBLIC; every other function left
-- with EXECUTE for PUBLIC is a pure function of its arguments (the
-- identifier types' I/O, operators and checks)
REVOKE EXECUTE ON FUNCTION hub.libcurl_version() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.libcurl_version() TO hub_reader, hub_writer;
