-- The privilege matrix, for every role and every object of the extension:
-- exactly who holds which privilege on each table, view, sequence and
-- column of schema hub (besides their owner), who may execute each of
-- its functions (besides their owner; the identifier types' I/O and
-- operators, pure functions of their arguments, are left to PUBLIC and not
-- listed), and who may use the schema itself.  A grant added or lost
-- anywhere fails this test: change it together with README's "What the
-- roles can do" and "Privileges".
BEGIN;
SELECT plan(3);

SELECT set_eq($q$
SELECT m.object COLLATE "default", m.grantee COLLATE "default", m.privileges COLLATE "default" FROM (
SELECT c.relname::text AS object, coalesce(r.rolname, 'PUBLIC')::text AS grantee,
	   string_agg(a.privilege_type, ',' ORDER BY a.privilege_type) AS privileges
FROM pg_class c
CROSS JOIN LATERAL aclexplode(c.relacl) a
LEFT JOIN pg_roles r ON r.oid = a.grantee
WHERE c.relnamespace = 'hub'::regnamespace AND a.grantee <> c.relowner
GROUP BY 1, 2
UNION ALL
SELECT c.relname || '.' || t.attname, coalesce(r.rolname, 'PUBLIC'),
	   string_agg(a.privilege_type, ',' ORDER BY a.privilege_type)
FROM pg_class c
JOIN pg_attribute t ON t.attrelid = c.oid AND t.attacl IS NOT NULL
CROSS JOIN LATERAL aclexplode(t.attacl) a
LEFT JOIN pg_roles r ON r.oid = a.grantee
WHERE c.relnamespace = 'hub'::regnamespace
GROUP BY 1, 2
) m (object, grantee, privileges)
ORDER BY 1, 2
$q$, $q$ VALUES
	('_endpoint_secrets', 'hub_admin', 'SELECT'),
	('_endpoint_secrets', 'hub_worker', 'SELECT'),
	('_lease_token_seq', 'hub_worker', 'USAGE'),
	('attempts', 'hub_reader', 'SELECT'),
	('attempts', 'hub_worker', 'INSERT,SELECT'),
	('dead_letters', 'hub_reader', 'SELECT'),
	('deliveries', 'hub_reader', 'SELECT'),
	('deliveries', 'hub_worker', 'DELETE,INSERT,SELECT,UPDATE'),
	('drift', 'hub_reader', 'SELECT'),
	('drift_tolerances', 'hub_admin', 'DELETE,INSERT,UPDATE'),
	('drift_tolerances', 'hub_reader', 'SELECT'),
	('endpoints', 'hub_reader', 'SELECT'),
	('endpoints', 'hub_worker', 'SELECT'),
	('endpoints.allow_redirects', 'hub_admin', 'UPDATE'),
	('endpoints.api_key_header', 'hub_admin', 'UPDATE'),
	('endpoints.auth_kind', 'hub_admin', 'UPDATE'),
	('endpoints.circuit_cooloff', 'hub_admin', 'UPDATE'),
	('endpoints.circuit_failed_keys', 'hub_worker', 'UPDATE'),
	('endpoints.circuit_failure_threshold', 'hub_admin', 'UPDATE'),
	('endpoints.circuit_opened_at', 'hub_worker', 'UPDATE'),
	('endpoints.circuit_probe_until', 'hub_worker', 'UPDATE'),
	('endpoints.circuit_state', 'hub_worker', 'UPDATE'),
	('endpoints.consecutive_failures', 'hub_worker', 'UPDATE'),
	('endpoints.enabled', 'hub_admin', 'UPDATE'),
	('endpoints.headers', 'hub_admin', 'UPDATE'),
	('endpoints.kind', 'hub_admin', 'UPDATE'),
	('endpoints.max_concurrency', 'hub_admin', 'UPDATE'),
	('endpoints.oauth2_token_url', 'hub_admin', 'UPDATE'),
	('endpoints.rate_limit', 'hub_admin', 'UPDATE'),
	('endpoints.spread', 'hub_admin', 'UPDATE'),
	('endpoints.subject_template', 'hub_admin', 'UPDATE'),
	('endpoints.timeout_ms', 'hub_admin', 'UPDATE'),
	('endpoints.url', 'hub_admin', 'UPDATE'),
	('entity_links', 'hub_reader', 'SELECT'),
	('entity_state', 'hub_reader', 'SELECT'),
	('entity_system_state', 'hub_reader', 'SELECT'),
	('event_types', 'hub_admin', 'DELETE,INSERT,SELECT,UPDATE'),
	('event_types', 'hub_reader', 'SELECT'),
	('event_types', 'hub_worker', 'SELECT'),
	('event_types', 'hub_writer', 'SELECT'),
	('exceptions', 'hub_reader', 'SELECT'),
	('inbox', 'hub_reader', 'SELECT'),
	('inbox_handlers', 'hub_reader', 'SELECT'),
	('inbox_mappings', 'hub_admin', 'DELETE,INSERT,UPDATE'),
	('inbox_mappings', 'hub_reader', 'SELECT'),
	('operator_audit', 'hub_reader', 'SELECT'),
	('outbox', 'hub_reader', 'SELECT'),
	('outbox', 'hub_worker', 'SELECT'),
	('outbox', 'hub_writer', 'INSERT'),
	('outbox.event_id', 'hub_writer', 'SELECT'),
	('readiness_fired', 'hub_admin', 'DELETE'),
	('readiness_fired', 'hub_reader', 'SELECT'),
	('readiness_pending', 'hub_reader', 'SELECT'),
	('readiness_rules', 'hub_admin', 'DELETE,INSERT,UPDATE'),
	('readiness_rules', 'hub_reader', 'SELECT'),
	('poll_requests', 'hub_reader', 'SELECT'),
	('poll_status', 'hub_reader', 'SELECT'),
	('pollers', 'hub_reader', 'SELECT'),
	('stale_entities', 'hub_reader', 'SELECT'),
	('stale_thresholds', 'hub_admin', 'DELETE,INSERT,UPDATE'),
	('stale_thresholds', 'hub_reader', 'SELECT'),
	('state_events', 'hub_admin', 'DELETE,INSERT,UPDATE'),
	('state_events', 'hub_reader', 'SELECT'),
	('state_owners', 'hub_admin', 'DELETE,INSERT,UPDATE'),
	('state_owners', 'hub_reader', 'SELECT'),
	('status_conflicts', 'hub_reader', 'SELECT'),
	('status_conflicts.resolution', 'hub_admin', 'UPDATE'),
	('status_conflicts.resolved_at', 'hub_admin', 'UPDATE'),
	('status_history', 'hub_reader', 'SELECT'),
	('status_map', 'hub_admin', 'DELETE,INSERT,UPDATE'),
	('status_map', 'hub_reader', 'SELECT'),
	('status_map', 'hub_writer', 'SELECT'),
	('status_unmap', 'hub_admin', 'DELETE,INSERT,UPDATE'),
	('status_unmap', 'hub_reader', 'SELECT'),
	('status_unmap', 'hub_writer', 'SELECT'),
	('subscriptions', 'hub_reader', 'SELECT'),
	('subscriptions', 'hub_worker', 'SELECT'),
	('sync_status', 'hub_reader', 'SELECT'),
	-- (business views and thresholds: 68_thresholds.sql, 75_business_views.sql)
	('backlog_by_site', 'hub_reader', 'SELECT'),
	('cycle_times', 'hub_reader', 'SELECT'),
	('erp_postings_pending', 'hub_reader', 'SELECT'),
	('missing_tracking', 'hub_reader', 'SELECT'),
	('orders_awaiting_release', 'hub_reader', 'SELECT'),
	('portal_freshness', 'hub_reader', 'SELECT'),
	('release_backlog_by_site', 'hub_reader', 'SELECT'),
	('returns_awaiting_reconciliation', 'hub_reader', 'SELECT'),
	('threshold_settings', 'hub_reader', 'SELECT'),
	('thresholds', 'hub_reader', 'SELECT'),
	('systems', 'hub_admin', 'DELETE,INSERT,UPDATE'),
	('systems', 'hub_reader', 'SELECT'),
	('unroutable_events', 'hub_admin', 'DELETE,SELECT'),
	('unroutable_events', 'hub_reader', 'SELECT'),
	('workers', 'hub_reader', 'SELECT')
$q$, 'who holds which privilege on each relation and column of schema hub');

SELECT set_eq($q$
SELECT m.object COLLATE "default", m.grantee COLLATE "default" FROM (
SELECT p.oid::regprocedure::text AS object, coalesce(r.rolname, 'PUBLIC')::text AS grantee
FROM pg_proc p
JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
	AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'logistics_hub')
CROSS JOIN LATERAL aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
LEFT JOIN pg_roles r ON r.oid = a.grantee
WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
	AND p.proname !~ '^(gtin|sscc|gln|grai|giai|gsrn|container|iso6346|gs1)'
) m (object, grantee)
ORDER BY 1, 2
$q$, $q$ VALUES
	('hub._at_or_past(text,text,text)', 'hub_reader'),
	('hub._claim(integer,text,interval,integer,integer,integer,integer,integer,integer[],integer[],text,bigint)', 'hub_worker'),
	('hub._claim_probes(integer,integer,text,interval,integer,integer,text)', 'hub_worker'),
	('hub._claim_transformed(integer,text,interval,integer,integer,integer,integer,integer,integer[],integer[],text,bigint)', 'hub_worker'),
	('hub._complete_many(bigint[],bigint[],integer[],integer[],text[],text,uuid[])', 'hub_worker'),
	('hub._dispatch_endpoints(integer[],integer,integer)', 'hub_worker'),
	('hub._egress_check(text)', 'hub_admin'),
	('hub._event_id()', 'hub_writer'),
	('hub._inbox_apply_batch(bigint[])', 'hub_admin'),
	('hub._inbox_apply_batch(bigint[])', 'hub_worker'),
	('hub._inbox_claim(integer)', 'hub_admin'),
	('hub._inbox_claim(integer)', 'hub_worker'),
	('hub._inbox_mapping(text)', 'hub_admin'),
	('hub._inbox_mapping(text)', 'hub_worker'),
	('hub._inbox_next_due()', 'hub_worker'),
	('hub._inbox_settle(bigint,text,text,integer,interval)', 'hub_admin'),
	('hub._inbox_settle(bigint,text,text,integer,interval)', 'hub_worker'),
	('hub._inbox_settle_many(bigint[],text)', 'hub_admin'),
	('hub._inbox_settle_many(bigint[],text)', 'hub_worker'),
	('hub._inbox_step(bigint,boolean)', 'hub_admin'),
	('hub._inbox_step(bigint,boolean)', 'hub_worker'),
	('hub._key_types_valid(text[],jsonb)', 'hub_admin'),
	('hub._pause_by_worker(integer,text,text)', 'hub_worker'),
	('hub._nats_pollers(integer,integer)', 'hub_worker'),
	('hub._nats_receive(integer,text[],text[],bytea[],text[],text[])', 'hub_worker'),
	('hub._poll_claim(text,integer,integer,integer)', 'hub_worker'),
	('hub._poll_next_due(integer,integer)', 'hub_worker'),
	('hub._poll_page(integer,bigint,text,integer,text[],bytea,text,integer,bigint)', 'hub_worker'),
	('hub._poll_release(text)', 'hub_worker'),
	('hub._pause_unsealed(integer,text)', 'hub_worker'),
	('hub._payload_size(jsonb)', 'hub_worker'),
	('hub._readiness_blocked(text,text,boolean,text)', 'hub_reader'),
	('hub._ready_endpoints(integer,integer)', 'hub_worker'),
	('hub._release_leases(text)', 'hub_worker'),
	('hub._route_events()', 'hub_worker'),
	('hub._route_events_each()', 'hub_worker'),
	('hub._run_handler(regproc,jsonb,text)', 'hub_admin'),
	('hub._run_handler(regproc,jsonb,text,jsonb)', 'hub_admin'),
	('hub._run_handler(regproc,jsonb,text,jsonb)', 'hub_worker'),
	('hub._serves(integer,integer,integer,integer)', 'hub_worker'),
	('hub._serves_share(integer,integer,integer,integer)', 'hub_worker'),
	('hub._split_group(bigint,bigint,uuid[],uuid[])', 'hub_worker'),
	('hub._throttle_endpoint(integer,timestamp with time zone)', 'hub_worker'),
	('hub._transform(regproc,jsonb)', 'hub_worker'),
	('hub._workers()', 'hub_reader'),
	('hub.apply_canonical_status(text,text,text,text,timestamp with time zone,text,text,text,text,boolean)', 'hub_writer'),
	('hub.apply_status(text,text,text,text,timestamp with time zone,text,boolean,text)', 'hub_writer'),
	('hub.classify_transition(hub.movement_status,hub.movement_status,boolean)', 'hub_reader'),
	('hub.classify_transition(hub.movement_status,hub.movement_status,boolean)', 'hub_writer'),
	('hub.classify_transition(hub.order_status,hub.order_status,boolean)', 'hub_reader'),
	('hub.classify_transition(hub.order_status,hub.order_status,boolean)', 'hub_writer'),
	('hub.classify_transition(hub.return_status,hub.return_status,boolean)', 'hub_reader'),
	('hub.classify_transition(hub.return_status,hub.return_status,boolean)', 'hub_writer'),
	('hub.classify_transition(hub.shipment_status,hub.shipment_status,boolean)', 'hub_reader'),
	('hub.classify_transition(hub.shipment_status,hub.shipment_status,boolean)', 'hub_writer'),
	('hub.contract_violation(text,jsonb)', 'hub_reader'),
	('hub.contract_violation(text,jsonb)', 'hub_writer'),
	('hub.create_poller(text,text,text,text,interval,interval,interval,integer,text,text,text,text,text,text,text,text,integer,text,text,integer,text,interval,text,text,jsonb,boolean)', 'hub_admin'),
	('hub.create_endpoint(text,text,text,integer,integer,numeric,boolean,text,text,text,text,text,text,text,jsonb,text)', 'hub_admin'),
	('hub.create_readiness_rule(text,text,text,text,text,text)', 'hub_admin'),
	('hub.defer_delivery(bigint,bigint,timestamp with time zone)', 'hub_worker'),
	('hub.drop_poller(text,text)', 'hub_admin'),
	('hub.egress_allowed(text)', 'hub_admin'),
	('hub.event_body(text,uuid,text,text,timestamp with time zone,text,jsonb,text)', 'hub_reader'),
	('hub.event_body(text,uuid,text,text,timestamp with time zone,text,jsonb,text)', 'hub_worker'),
	('hub.event_body(text,uuid,text,text,timestamp with time zone,text,jsonb,text)', 'hub_writer'),
	('hub.event_body(text,uuid,text,text,timestamp with time zone,text,jsonb,text,integer)', 'hub_reader'),
	('hub.event_body(text,uuid,text,text,timestamp with time zone,text,jsonb,text,integer,text)', 'hub_reader'),
	('hub.event_body(text,uuid,text,text,timestamp with time zone,text,jsonb,text,integer)', 'hub_worker'),
	('hub.event_body(text,uuid,text,text,timestamp with time zone,text,jsonb,text,integer,text)', 'hub_worker'),
	('hub.event_body(text,uuid,text,text,timestamp with time zone,text,jsonb,text,integer)', 'hub_writer'),
	('hub.event_body(text,uuid,text,text,timestamp with time zone,text,jsonb,text,integer,text)', 'hub_writer'),
	('hub.fail_delivery(bigint,bigint,integer,text,integer,text,interval,text,boolean)', 'hub_worker'),
	('hub.libcurl_version()', 'hub_reader'),
	('hub.libcurl_version()', 'hub_writer'),
	('hub.lifecycle_state_valid(text,text)', 'hub_reader'),
	('hub.lifecycle_state_valid(text,text)', 'hub_writer'),
	('hub.lifecycle_states(text)', 'hub_reader'),
	('hub.lifecycle_states(text)', 'hub_writer'),
	('hub.lifecycle_transitions(text)', 'hub_reader'),
	('hub.lifecycle_transitions(text)', 'hub_writer'),
	('hub.make_sscc(integer,text,bigint)', 'PUBLIC'),
	('hub.map_inbox(text,text,text,text,text,text,text,text,text,text,text,text,integer,interval,text)', 'hub_admin'),
	('hub.map_status(text,text,text,text,text)', 'hub_reader'),
	('hub.map_status(text,text,text,text,text)', 'hub_writer'),
	('hub.pause_endpoint(text,text)', 'hub_admin'),
	('hub.pause_poller(text,text)', 'hub_admin'),
	('hub.portal_status(text,text,text,text,boolean)', 'hub_reader'),
	('hub.portal_status(text,text,text,text,boolean)', 'hub_writer'),
	('hub.poll_now(text,text)', 'hub_admin'),
	('hub.process_inbox(integer)', 'hub_admin'),
	('hub.process_inbox(integer)', 'hub_worker'),
	('hub.publish(text,text,jsonb,text,text,jsonb,timestamp with time zone,text)', 'hub_writer'),
	('hub.receive(text,text,text,jsonb,timestamp with time zone,text,text,text)', 'hub_writer'),
	('hub.register_handler(text,regproc,integer,interval)', 'hub_admin'),
	('hub.replay(bigint,text)', 'hub_admin'),
	('hub.replay(integer,text,timestamp with time zone,timestamp with time zone,text)', 'hub_admin'),
	('hub.replay_delivery(bigint,text)', 'hub_admin'),
	('hub.replay_subscription(integer,text,timestamp with time zone,timestamp with time zone,text)', 'hub_admin'),
	('hub.reseal_secrets()', 'hub_admin'),
	('hub.resolve_conflict(bigint,text)', 'hub_admin'),
	('hub.resolve_exception(bigint,text)', 'hub_admin'),
	('hub.resume_endpoint(text,text)', 'hub_admin'),
	('hub.resume_poller(text,text)', 'hub_admin'),
	('hub.retire_signing_secrets(text,integer,text)', 'hub_admin'),
	('hub.rotate_signing_secret(text,text,text,boolean)', 'hub_admin'),
	('hub.run_retention(interval,interval,integer,interval)', 'hub_admin'),
	('hub.run_retention(interval,interval,integer,interval)', 'hub_worker'),
	('hub.sealed_key_id(bytea)', 'hub_admin'),
	('hub.secret_keys()', 'hub_admin'),
	('hub.set_poller_watermark(text,text,text)', 'hub_admin'),
	('hub.set_endpoint_credentials(text,text,text,text,text)', 'hub_admin'),
	('hub.skip_delivery(bigint,text)', 'hub_admin'),
	('hub.subscribe(text,text,jsonb,regproc,text,integer,integer,interval,interval,boolean,text,integer,integer)', 'hub_admin'),
	('hub.trace(text,text)', 'hub_reader'),
	('hub.traceparent_valid(text)', 'PUBLIC'),
	('hub.metrics()', 'hub_reader'),
	('hub._erp_posting_kind(text)', 'hub_reader'),
	('hub.set_threshold(text,interval,text)', 'hub_admin'),
	('hub.try_map_status(text,text,text,text,text)', 'hub_reader'),
	('hub.try_map_status(text,text,text,text,text)', 'hub_writer'),
	('hub.unmap_status(text,text,text)', 'hub_reader'),
	('hub.unmap_status(text,text,text)', 'hub_writer'),
	('hub.wake()', 'hub_writer'),
	('hub.webhook_signature(text,text,bigint,text)', 'hub_reader'),
	('hub.webhook_signature(text,text,bigint,text)', 'hub_writer')
$q$, 'who may execute each function of the extension');

SELECT set_eq($q$
SELECT coalesce(r.rolname, 'PUBLIC')::text COLLATE "default", a.privilege_type::text COLLATE "default"
FROM pg_namespace n
CROSS JOIN LATERAL aclexplode(n.nspacl) a
LEFT JOIN pg_roles r ON r.oid = a.grantee
WHERE n.nspname = 'hub' AND a.grantee <> n.nspowner
$q$, $q$ VALUES
	('PUBLIC', 'USAGE'),
	('hub_admin', 'USAGE'),
	('hub_reader', 'USAGE'),
	('hub_worker', 'USAGE'),
	('hub_writer', 'USAGE')
$q$, 'who may use schema hub: everyone (the identifier types are for everyone), and nobody but its owner may create in it');

SELECT * FROM finish();
ROLLBACK;
