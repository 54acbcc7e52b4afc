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
			  api_key_header, oauth2_token_url, headers, circuit_failure_threshold, circuit_cooloff, spread,
			  subject_template)
	ON hub.endpoints TO hub_admin;
GRANT EXECUTE ON FUNCTION hub._egress_check(text) TO hub_admin;

-- the library version is no business of PUBLIC; every other function left
-- with EXECUTE for PUBLIC is a pure function of its arguments (the
-- identifier types' I/O, operators and checks)
REVOKE EXECUTE ON FUNCTION hub.libcurl_version() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hub.libcurl_version() TO hub_reader, hub_writer;

/*
 * hub_worker: what the dispatchers connect as (logistics_hub.worker_role).
 * Only the queue: the functions a dispatcher calls and the tables those
 * functions read and write as their caller; fail_delivery, defer_delivery,
 * _route_events, _pause_unsealed and run_retention are SECURITY DEFINER and
 * need no table grant.  Of an endpoint it changes only the circuit
 * breaker's columns; it publishes nothing, changes no configuration and
 * owns nothing.
 */
GRANT USAGE ON SCHEMA hub TO hub_worker;
GRANT SELECT ON hub.outbox, hub.event_types, hub.subscriptions, hub._endpoint_secrets TO hub_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON hub.deliveries TO hub_worker;
GRANT SELECT, UPDATE (circuit_state, circuit_opened_at, consecutive_failures, circuit_failed_keys,
					   circuit_probe_until)
	ON hub.endpoints TO hub_worker;
GRANT SELECT, INSERT ON hub.attempts TO hub_worker;
GRANT USAGE ON SEQUENCE hub._lease_token_seq TO hub_worker;
GRANT EXECUTE ON FUNCTION
	hub._route_events(),
	hub._serves(integer, integer, integer, integer),
	hub._payload_size(jsonb),
	hub._serves_share(integer, integer, integer, integer),
	hub._claim(integer, text, interval, integer, integer, integer, integer, integer, integer[], integer[], text, bigint),
	hub._claim_transformed(integer, text, interval, integer, integer, integer, integer, integer, integer[], integer[], text, bigint),
	hub._claim_probes(integer, integer, text, interval, integer, integer, text),
	hub._transform(regproc, jsonb),
	hub._dispatch_endpoints(integer[], integer, integer),
	hub._complete_many(bigint[], bigint[], integer[], integer[], text[], text, uuid[]),
	hub._split_group(bigint, bigint, uuid[], uuid[]),
	hub._release_leases(text),
	hub.fail_delivery(bigint, bigint, integer, text, integer, text, interval, text, boolean),
	hub.defer_delivery(bigint, bigint, timestamptz),
	hub.event_body(text, uuid, text, text, timestamptz, text, jsonb, text),
	hub.run_retention(interval, interval, integer, interval),
	hub._pause_unsealed(integer, text),
	hub._route_events_each(),
	hub._ready_endpoints(integer, integer),
	hub._pause_by_worker(integer, text, text),
	hub._throttle_endpoint(integer, timestamptz)
	TO hub_worker;

-- the pollers' interface (65_pollers.sql): SECURITY DEFINER, so no table
-- grant; a dispatcher claims, records pages and gives leases back, and
-- changes no poller's configuration
GRANT EXECUTE ON FUNCTION
	hub._poll_claim(text, integer, integer, integer),
	hub._poll_page(integer, bigint, text, integer, text[], bytea, text, integer, bigint),
	hub._poll_next_due(integer, integer),
	hub._poll_release(text)
	TO hub_worker;

/*
 * hub_worker also processes the inbox (the inbox workers): hub.process_inbox
 * runs with its caller's rights and calls the claim, the declared mapping
 * step, the handler runner and the settle, each SECURITY DEFINER or, for
 * the handler, run as the handler's owner; the worker needs no table grant
 * for them.
 */
GRANT EXECUTE ON FUNCTION
	hub.process_inbox(integer),
	hub._inbox_claim(integer),
	hub._inbox_settle(bigint, text, text, integer, interval),
	hub._inbox_settle_many(bigint[], text),
	hub._inbox_mapping(text),
	hub._inbox_step(bigint, boolean),
	hub._inbox_apply_batch(bigint[]),
	hub._run_handler(regproc, jsonb, text, jsonb)
	TO hub_worker;

/*
 * hub_worker as the inbox workers (workers/inbox_worker.c) also looks for
 * the next due message between batches (hub._inbox_next_due, SECURITY
 * DEFINER, read only).
 */
GRANT EXECUTE ON FUNCTION hub._inbox_next_due()
	TO hub_worker;
