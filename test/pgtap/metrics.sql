-- hub.metrics() (the Prometheus text format) with known data, the business
-- views over deliveries (hub.erp_postings_pending, the confirmation latency
-- of hub.cycle_times) and hub.sync_status after its rewrite.  Autocommit
-- (own database): routing only sees committed events.  The exporter's
-- scrape and promtool's check of this output: test/scripts/metrics_exporter.sh.
SELECT plan(32);

CREATE FUNCTION pg_temp.sample(line_start text) RETURNS text LANGUAGE sql AS $$
	SELECT split_part(l, ' ', -1) FROM regexp_split_to_table(hub.metrics(), E'\n') l
	WHERE starts_with(l, line_start || ' ')
$$;

SELECT hub.create_endpoint('erp', 'http://127.0.0.1:9/erp', 'erp');
SELECT hub.create_endpoint(E'portal "p"\\x\ny', 'http://127.0.0.1:9/portal', 'portal');
SELECT hub.subscribe('erp', 'order.*', max_attempts => 1);
SELECT hub.publish('order.shipped', 'SO-1', '{"order_id": "SO-1", "shipment_id": "SH-1"}', occurred_at => now() - interval '2 hours');
SELECT hub.publish('order.created', 'SO-2', '{"order_id": "SO-2"}');
SELECT hub.publish('order.created', 'SO-3', '{"order_id": "SO-3"}');
SELECT hub.publish('inventory.adjusted', 'SKU-1', '{"sku": "SKU-1", "location": "DC-1", "quantity": 1}');
SELECT hub._route_events();

-- ---- ERP postings pending
SELECT results_eq($$SELECT kind, aggregate_id, state FROM hub.erp_postings_pending ORDER BY aggregate_id$$,
	$$VALUES ('shipment_confirmation', 'SO-1', 'pending')$$,
	'a shipment confirmation not yet delivered to the ERP is pending; order.created is not a posting; inventory.adjusted has no ERP subscription');
SELECT ok((SELECT waiting_for >= interval '2 hours' AND overdue FROM hub.erp_postings_pending),
	'it has waited since the warehouse event, past erp_posting: overdue');

CREATE TEMP TABLE c AS SELECT * FROM hub.claim_deliveries(10, 'w');
SELECT hub.complete_delivery(delivery_id, lease_token, 200, 9) FROM c WHERE aggregate_id = 'SO-1';
SELECT hub.fail_delivery(delivery_id, lease_token, 500, NULL, 9, 'boom') FROM c WHERE aggregate_id = 'SO-2';
SELECT is((SELECT count(*) FROM hub.erp_postings_pending)::int, 0, 'once delivered it is no longer pending');

-- ---- confirmation latency
SELECT results_eq($$SELECT count, p50 BETWEEN interval '2 hours' AND interval '2 hours 10 minutes'
	FROM hub.cycle_times WHERE measure = 'shipment_confirmation_latency'$$,
	$$VALUES (1::bigint, true)$$, 'shipment confirmation latency: from the warehouse event to its delivery to the ERP');

-- ---- sync_status
SELECT results_eq($$SELECT in_flight, dead, success_rate_1h, last_success IS NOT NULL FROM hub.sync_status WHERE endpoint = 'erp'$$,
	$$VALUES (1::bigint, 1::bigint, 0.500, true)$$, 'sync_status: in flight, dead, success rate and last success');
SELECT is((SELECT last_success FROM hub.sync_status WHERE endpoint = 'erp'),
	(SELECT max(at) FROM hub.attempts WHERE outcome = 'delivered'), 'the last success is the delivered attempt''s time');
-- an old success, beyond the lookback, is not read
INSERT INTO hub.attempts (delivery_id, attempt, at, outcome)
SELECT delivery_id, 9, now() - interval '3 days', 'delivered' FROM c WHERE aggregate_id = 'SO-3';
SELECT is((SELECT last_success FROM hub.sync_status WHERE endpoint = 'erp'),
	(SELECT max(at) FROM hub.attempts WHERE outcome = 'delivered'), 'a newer success still wins');
SELECT hub.create_endpoint('wms', 'http://127.0.0.1:9/wms', 'wms');
SELECT hub.subscribe('wms', 'inventory.*');
INSERT INTO hub.deliveries (subscription_id, endpoint_id, event_id, seq, aggregate_id, ordering, priority, state)
SELECT s.subscription_id, s.endpoint_id, o.event_id, o.seq, o.aggregate_id, 'per_key', 0, 'delivered'
FROM hub.subscriptions s, hub.outbox o WHERE s.event_pattern = 'inventory.*' AND o.aggregate_id = 'SKU-1';
INSERT INTO hub.attempts (delivery_id, attempt, at, outcome)
SELECT d.delivery_id, 1, now() - interval '3 days', 'delivered' FROM hub.deliveries d JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'wms';
SELECT is((SELECT last_success FROM hub.sync_status WHERE endpoint = 'wms'), NULL,
	'a success older than sync_status_lookback shows as none');
SELECT hub.set_threshold('sync_status_lookback', '4 days');
SELECT is((SELECT last_success FROM hub.sync_status WHERE endpoint = 'wms'),
	(SELECT max(a.at) FROM hub.attempts a JOIN hub.deliveries d USING (delivery_id) JOIN hub.endpoints e USING (endpoint_id) WHERE e.name = 'wms'),
	'a longer lookback finds it');
SELECT hub.set_threshold('sync_status_lookback', NULL);

-- ---- inbox, exceptions, drift and stale keys, a poller
SELECT hub.receive('wms', 'M-1', 'wms.nothing', '{}');
SELECT hub.receive('wms', 'M-2', 'wms.nothing', '{}');
SELECT hub.process_inbox(1);
INSERT INTO hub.exceptions (kind, lifecycle, business_key, code) VALUES ('unknown_code', 'order', 'SO-9', 'X1');
INSERT INTO hub.exceptions (kind, lifecycle, business_key, code, resolved_at, resolution)
	VALUES ('unknown_code', 'order', 'SO-9', 'X2', now(), 'mapped');
SELECT hub.apply_canonical_status('order', 'SO-STALE', 'sap', 'created', now() - interval '30 hours', 'created');
SELECT hub.apply_canonical_status('order', 'SO-DRIFT', 'sap', 'created', now() - interval '3 hours', 'created');
SELECT hub.apply_canonical_status('order', 'SO-DRIFT', 'epcis', 'packed', now() - interval '2 hours', 'packed');
INSERT INTO hub.pollers (name, endpoint_id, path, message_type, id_field, id_path, next_run_at, failures)
SELECT 'erp orders', endpoint_id, '/orders', 'erp.order', 'id', '$.id', now() - interval '90 seconds', 2
FROM hub.endpoints WHERE name = 'erp';
INSERT INTO hub.poll_requests (poller_id, outcome, records)
SELECT poller_id, o, 1 FROM hub.pollers, unnest(ARRAY['more', 'end', 'end']) o;
SELECT hub.receive('erp', 'P-1', 'erp.order', '{"id": 1}');
UPDATE hub.inbox SET poll_request_id = (SELECT min(request_id) FROM hub.poll_requests) WHERE message_id = 'P-1';

-- ---- hub.metrics()
SELECT is(pg_temp.sample('logistics_hub_events_published_total'), (SELECT count(*)::text FROM hub.outbox),
	'events published: a counter (four published here, three by the states applied)');
SELECT is(pg_temp.sample('logistics_hub_delivery_attempts{endpoint="erp",outcome="delivered"}'), '1', 'delivery attempts by endpoint and outcome: delivered');
SELECT is(pg_temp.sample('logistics_hub_delivery_attempts{endpoint="erp",outcome="dead"}'), '1', 'and dead');
SELECT is(pg_temp.sample('logistics_hub_delivery_latency_seconds_count{endpoint="erp"}'), '1', 'latency histogram: count');
SELECT is(pg_temp.sample('logistics_hub_delivery_latency_seconds_bucket{endpoint="erp",le="+Inf"}'), '1', 'the +Inf bucket is the count');
SELECT is(pg_temp.sample('logistics_hub_delivery_latency_seconds_bucket{endpoint="erp",le="300"}'), '1',
	'latency is measured from publication (the event occurred two hours before), not from occurrence');
SELECT is(pg_temp.sample('logistics_hub_endpoint_backlog_events{endpoint="erp"}'), '1', 'backlog per endpoint: the one in flight');
SELECT is(pg_temp.sample('logistics_hub_endpoint_dead_events{endpoint="erp"}'), '1', 'dead events per endpoint');
SELECT is(pg_temp.sample(E'logistics_hub_circuit_state{endpoint="portal \\"p\\"\\\\x\\ny",state="closed"}'), '1',
	'an endpoint name with a quote, a backslash and a newline is escaped in its label');
SELECT is(pg_temp.sample('logistics_hub_circuit_state{endpoint="erp",state="open"}'), '0', 'the other circuit states are 0');
SELECT is(pg_temp.sample('logistics_hub_inbox_messages{state="new"}'), '2', 'inbox backlog (one message of the other source and the polled one)');
SELECT is(pg_temp.sample('logistics_hub_inbox_messages{state="unhandled"}'), '1', 'inbox messages nobody handles');
SELECT is(pg_temp.sample('logistics_hub_open_exceptions{kind="unknown_code"}'), '1', 'open exceptions by kind (a resolved one is not counted)');
SELECT is(pg_temp.sample('logistics_hub_stale_keys{lifecycle="order"}'), '1', 'stale keys by lifecycle');
SELECT is(pg_temp.sample('logistics_hub_drift_keys{lifecycle="order"}'), '1', 'drift keys by lifecycle');
SELECT is((SELECT array_agg(pg_temp.sample(format('logistics_hub_%s_keys{lifecycle="%s"}', v, l)) ORDER BY v, l)
		   FROM unnest(ARRAY['drift', 'stale']) v, unnest(ARRAY['movement', 'order', 'return', 'shipment']) l),
	(SELECT array_agg((SELECT count(*) FROM hub.drift x WHERE x.lifecycle = l)::text ORDER BY l)
	 FROM unnest(ARRAY['movement', 'order', 'return', 'shipment']) l)
	|| (SELECT array_agg((SELECT count(*) FROM hub.stale_entities x WHERE x.lifecycle = l)::text ORDER BY l)
		FROM unnest(ARRAY['movement', 'order', 'return', 'shipment']) l),
	'the drift and stale counts are those of the views, every lifecycle');
SELECT is(pg_temp.sample('logistics_hub_poll_requests{poller="erp orders",outcome="end"}'), '2', 'poll requests by poller and outcome');
SELECT is(pg_temp.sample('logistics_hub_poller_backlog_messages{poller="erp orders"}'), '1', 'polled records waiting in the inbox, by poller');
SELECT is(pg_temp.sample('logistics_hub_poller_failures{poller="erp orders"}'), '2', 'poller failures');
SELECT ok(pg_temp.sample('logistics_hub_poller_overdue_seconds{poller="erp orders"}')::numeric >= 90, 'poller overdue time');
SELECT is((SELECT count(*) FROM regexp_split_to_table(hub.metrics(), E'\n') l
		   WHERE l <> '' AND l !~ '^# (HELP|TYPE) logistics_hub_[a-z_]+ '
			 AND l !~ '^logistics_hub_[a-z_]+(\{([a-z_]+="([^"\\\n]|\\[\\"n])*",?)*\})? ([0-9]+(\.[0-9]+)?|NaN|\+Inf)$')::int, 0,
	'every line is a # HELP, a # TYPE or a sample');

-- ---- who may call it
CREATE ROLE metrics_reader;
GRANT hub_reader TO metrics_reader;
CREATE ROLE metrics_nobody;
SET ROLE metrics_reader;
SELECT lives_ok($$SELECT hub.metrics()$$, 'hub_reader may call hub.metrics()');
SET ROLE metrics_nobody;
SELECT throws_ok($$SELECT hub.metrics()$$, '42501', NULL, 'a role without hub_reader may not');
RESET ROLE;
DROP ROLE metrics_reader;
DROP ROLE metrics_nobody;

SELECT * FROM finish();
