-- The set-based path of hub.process_inbox (hub._inbox_apply_batch): a
-- batch of mapped messages gives exactly what the per-message path gives
-- (state, per-system rows, history, events with their correlation and
-- causation, exceptions, failures), whichever of its messages the set-based
-- path takes; what it takes and what it leaves; the order around a handler;
-- a batch whose set-based apply fails goes message by message.
BEGIN;
SELECT plan(18);

INSERT INTO hub.systems (system, role) VALUES ('tcarrier', 'carrier');
INSERT INTO hub.status_map (system, lifecycle, code, state, overlay, reason) VALUES
	('tcarrier', 'shipment', 'LBL', 'label_created', NULL, NULL),
	('tcarrier', 'shipment', 'TRN', 'in_transit', NULL, NULL),
	('tcarrier', 'shipment', 'OFD', 'out_for_delivery', NULL, NULL),
	('tcarrier', 'shipment', 'DLV', 'delivered', NULL, NULL),
	('tcarrier', 'shipment', 'RET', 'returned', NULL, NULL),
	('tcarrier', 'shipment', 'EXC', NULL, 'exception', 'delayed'),
	('tcarrier', 'shipment', 'EXCT', 'in_transit', 'exception', 'delayed'),
	('tcarrier', 'shipment', 'CXL', 'cancelled', NULL, NULL),
	('tcarrier', 'shipment', 'INFO', NULL, NULL, NULL);
-- an event whose contract needs a field of the record (tracking_code)
INSERT INTO hub.event_types (event_type, required_keys) VALUES ('shipment.fb_out', '{shipment_id,tracking_code}');
UPDATE hub.state_events SET event_type = 'shipment.fb_out' WHERE lifecycle = 'shipment' AND state = 'out_for_delivery';
CREATE FUNCTION public.flow_batch_noop(p jsonb) RETURNS void LANGUAGE sql SECURITY DEFINER AS 'SELECT';

-- the same records twice: 'ref' through the per-message path (a mapping
-- and a handler that does nothing: never set-based), 'set' through a
-- mapping alone
SELECT hub.map_inbox('fb.ref', 'shipment', 'tcarrier', '$.id', '$.code', occurred_at_path => '$.at',
	partner_path => '$.carrier');
SELECT hub.register_handler('fb.ref', 'public.flow_batch_noop');
SELECT hub.map_inbox('fb.set', 'shipment', 'tcarrier', '$.id', '$.code', occurred_at_path => '$.at',
	partner_path => '$.carrier');

CREATE TEMP TABLE fb_records (n int, key text, rec jsonb, corr text) ON COMMIT DROP;
INSERT INTO fb_records VALUES
	-- earlier reports, processed first (the keys exist before the batch)
	(1, 'E1', '{"code": "LBL", "at": "2026-05-04T08:00:00Z"}', NULL),
	(2, 'E2', '{"code": "TRN", "at": "2026-05-04T08:00:00Z"}', 'C-2'),
	(3, 'E3', '{"code": "EXCT", "at": "2026-05-04T08:00:00Z"}', NULL),
	(4, 'E4', '{"code": "DLV", "at": "2026-05-04T08:00:00Z"}', NULL),
	(5, 'E5', '{"code": "OFD", "at": "2026-05-04T08:00:00Z", "tracking_code": "1Z5"}', NULL),
	-- the batch
	(11, 'N1', '{"code": "LBL", "at": "2026-05-04T09:00:00Z"}', 'C-11'),		-- created
	(12, 'N2', '{"code": "TRN", "at": "2026-05-04 09:00:00", "carrier": "UPSN"}', NULL),	-- created, naive time, partner
	(13, '4711', '{"code": "TRN", "at": 1777885200}', NULL),					-- a number key, Unix time
	(14, 'E1', '{"code": "TRN", "at": "2026-05-04T09:00:00Z"}', 'C-14'),		-- advanced
	(15, 'E2', '{"code": "DLV", "at": "2026-05-04T09:00:00Z"}', NULL),		-- advanced with a gap
	(16, 'E3', '{"code": "OFD", "at": "2026-05-04T09:00:00Z", "tracking_code": "1Z3"}', NULL),	-- advance that clears an exception
	(17, 'E4', '{"code": "TRN", "at": "2026-05-04T09:00:00Z"}', NULL),		-- stale on a terminal key
	(18, 'E5', '{"code": "OFD", "at": "2026-05-04T09:00:00Z", "tracking_code": "1Z5"}', NULL),	-- duplicate
	(19, 'N3', '{"code": "OFD", "at": "2026-05-04T09:00:00Z"}', NULL),		-- contract not met (no tracking_code)
	(20, 'N4', '{"code": "NOPE", "at": "2026-05-04T09:00:00Z"}', NULL),		-- unknown code
	(21, 'N5', '{"code": "TRN", "at": "yesterday"}', NULL),					-- malformed time
	(22, 'N6', '{"code": "EXC", "at": "2026-05-04T09:00:00Z"}', NULL),		-- an overlay only
	(23, 'N7', '{"code": "INFO", "at": "2026-05-04T09:00:00Z"}', NULL),		-- informational
	(24, 'N8', '{"code": "TRN", "at": "2026-05-04T09:00:00Z"}', NULL),		-- named twice in the batch
	(25, 'N8', '{"code": "LBL", "at": "2026-05-04T10:00:00Z"}', NULL),
	(26, 'E2', '{"code": "CXL", "at": "2026-05-04T10:00:00Z"}', NULL),		-- E2 named twice: the second a conflict
	(27, 'N9', '{"code": "TRN"}', NULL);										-- no time at all

-- receive prefix's records numbered lo..hi
CREATE FUNCTION pg_temp.fb_receive(prefix text, lo int, hi int) RETURNS void LANGUAGE sql AS $$
	SELECT hub.receive('fb', prefix || '-' || n, 'fb.' || prefix,
					   rec || jsonb_build_object('id', CASE WHEN key ~ '^\d+$' THEN to_jsonb(key::int + CASE prefix WHEN 'ref' THEN 1 ELSE 2 END)
															ELSE to_jsonb(prefix || '-' || key) END),
					   correlation_id => corr)
	FROM fb_records WHERE n BETWEEN lo AND hi ORDER BY n
$$;
SELECT pg_temp.fb_receive('ref', 1, 5);
SELECT pg_temp.fb_receive('set', 1, 5);
SELECT processed FROM hub.process_inbox(100);
SELECT pg_temp.fb_receive('ref', 11, 99);
SELECT processed FROM hub.process_inbox(100);

-- ---- what the set-based path takes: the plain creates and advances
SELECT pg_temp.fb_receive('set', 11, 99);
CREATE TEMP TABLE fb_taken ON COMMIT DROP AS
	SELECT unnest(hub._inbox_apply_batch(ARRAY(SELECT inbox_id FROM hub.inbox
											   WHERE message_type = 'fb.set' AND state = 'new' ORDER BY inbox_id))) AS id;
SELECT results_eq(
	$$SELECT i.message_id FROM fb_taken t JOIN hub.inbox i ON i.inbox_id = t.id ORDER BY i.inbox_id$$,
	$$VALUES ('set-11'), ('set-12'), ('set-13'), ('set-14')$$,
	'hub._inbox_apply_batch takes created and advanced keys without overlays, each named once, and leaves the rest');
SELECT is((SELECT count(*)::int FROM hub.inbox WHERE message_type = 'fb.set' AND state = 'new'), 17,
	'it settles nothing: the caller does');
SELECT throws_ok($$SELECT hub._inbox_settle_many('{1}', 'failed')$$, '22023', NULL,
	'hub._inbox_settle_many settles only done and unhandled');
SELECT is(hub._inbox_settle_many(ARRAY(SELECT id FROM fb_taken), 'done'), 4, 'the caller settles them, in one UPDATE');
SELECT is((SELECT processed || '/' || failed || '/' || unhandled FROM hub.process_inbox(100)), '11/2/0',
	'process_inbox does the rest message by message (the malformed and the missing time fail)');

-- ---- the same outcome either way (keys, message ids and inbox ids made comparable)
CREATE FUNCTION pg_temp.k(prefix text, key text) RETURNS text LANGUAGE sql AS $$
	SELECT CASE WHEN key ~ '^\d+$' THEN (key::int - CASE prefix WHEN 'ref' THEN 1 ELSE 2 END)::text
				ELSE replace(key, prefix || '-', '') END
$$;
CREATE FUNCTION pg_temp.m(id text) RETURNS text LANGUAGE sql AS $$
	SELECT replace(replace(i.message_id, 'ref-', ''), 'set-', '') FROM hub.inbox i
	WHERE 'inbox:' || i.inbox_id = id OR i.inbox_id::text = id
$$;
SELECT results_eq(
	$$SELECT pg_temp.k('set', business_key), state, state_system, state_occurred_at, last_advanced_at, on_hold,
			 on_hold_reason, exception_reason, exception_since
	  FROM hub.entity_state WHERE business_key LIKE 'set-%' OR business_key = '4713' ORDER BY 1$$,
	$$SELECT pg_temp.k('ref', business_key), state, state_system, state_occurred_at, last_advanced_at, on_hold,
			 on_hold_reason, exception_reason, exception_since
	  FROM hub.entity_state WHERE business_key LIKE 'ref-%' OR business_key = '4712' ORDER BY 1$$,
	'the canonical state is the same');
SELECT results_eq(
	$$SELECT pg_temp.k('set', business_key), role, qualifier, code, state, state_since, overlay_kind, reason, occurred_at
	  FROM hub.entity_system_state WHERE business_key LIKE 'set-%' OR business_key = '4713' ORDER BY 1$$,
	$$SELECT pg_temp.k('ref', business_key), role, qualifier, code, state, state_since, overlay_kind, reason, occurred_at
	  FROM hub.entity_system_state WHERE business_key LIKE 'ref-%' OR business_key = '4712' ORDER BY 1$$,
	'the per-system rows are the same');
SELECT results_eq(
	$$SELECT pg_temp.k('set', business_key), code, correction, mapped_state, overlay_kind, reason, previous_state,
			 new_state, kind, outcome, regression_suspect, occurred_at
	  FROM hub.status_history WHERE business_key LIKE 'set-%' OR business_key = '4713' ORDER BY 1, history_id$$,
	$$SELECT pg_temp.k('ref', business_key), code, correction, mapped_state, overlay_kind, reason, previous_state,
			 new_state, kind, outcome, regression_suspect, occurred_at
	  FROM hub.status_history WHERE business_key LIKE 'ref-%' OR business_key = '4712' ORDER BY 1, history_id$$,
	'the history is the same, in the same order per key');
SELECT results_eq(
	$$SELECT event_type, pg_temp.k('set', aggregate_id), replace(replace(payload::text, 'set-', ''), '4713', 'K'),
			 correlation_id, pg_temp.m(causation_id), occurred_at, contract_version
	  FROM hub.outbox WHERE aggregate_id LIKE 'set-%' OR aggregate_id = '4713' ORDER BY 2, 5, 1$$,
	$$SELECT event_type, pg_temp.k('ref', aggregate_id), replace(replace(payload::text, 'ref-', ''), '4712', 'K'),
			 correlation_id, pg_temp.m(causation_id), occurred_at, contract_version
	  FROM hub.outbox WHERE aggregate_id LIKE 'ref-%' OR aggregate_id = '4712' ORDER BY 2, 5, 1$$,
	'the canonical events are the same: type, payload, correlation and causation (the message), time, contract version');
SELECT results_eq(
	$$SELECT kind, pg_temp.k('set', business_key), system, code, replace(detail, 'set-', ''), pg_temp.m(message::text), reports
	  FROM hub.exceptions WHERE business_key LIKE 'set-%' ORDER BY 2, 1, 4$$,
	$$SELECT kind, pg_temp.k('ref', business_key), system, code, replace(detail, 'ref-', ''), pg_temp.m(message::text), reports
	  FROM hub.exceptions WHERE business_key LIKE 'ref-%' ORDER BY 2, 1, 4$$,
	'the business exceptions are the same');
SELECT results_eq(
	$$SELECT replace(message_id, 'set-', ''), state, attempts, last_error IS NULL FROM hub.inbox WHERE message_type = 'fb.set' ORDER BY inbox_id$$,
	$$SELECT replace(message_id, 'ref-', ''), state, attempts, last_error IS NULL FROM hub.inbox WHERE message_type = 'fb.ref' ORDER BY inbox_id$$,
	'every message ends the same way (done, or failed and retried)');
SELECT cmp_ok((SELECT count(*)::int FROM hub.outbox WHERE aggregate_id LIKE 'set-%' OR aggregate_id = '4713'), '>=', 10,
	'the records published their events (the comparison compared something)');

-- ---- a handler's message sees the messages before it applied, not those after
CREATE TABLE public.fb_seen (n int);
CREATE FUNCTION public.flow_batch_peek(p jsonb) RETURNS void LANGUAGE sql SECURITY DEFINER AS
	$$INSERT INTO public.fb_seen SELECT count(*) FROM hub.entity_state WHERE business_key LIKE 'order-%'$$;
SELECT hub.register_handler('fb.peek', 'public.flow_batch_peek');
SELECT hub.map_inbox('fb.ord', 'shipment', 'tcarrier', '$.id', '$.code');
SELECT hub.receive('fb', 'o-1', 'fb.ord', '{"id": "order-1", "code": "LBL"}');
SELECT hub.receive('fb', 'o-2', 'fb.ord', '{"id": "order-2", "code": "LBL"}');
SELECT hub.receive('fb', 'p-1', 'fb.peek', '{}');
SELECT hub.receive('fb', 'o-3', 'fb.ord', '{"id": "order-3", "code": "LBL"}');
SELECT is((SELECT processed FROM hub.process_inbox(100)), 4, 'mapped messages and a handler''s in one batch');
SELECT is((SELECT n FROM public.fb_seen), 2, 'the handler saw the two keys received before it, not the one after');

-- ---- a batch whose set-based apply fails is processed message by message
-- (a time of the right form that is no date: the cast fails in the set)
SELECT hub.receive('fb', 'z-1', 'fb.ord', '{"id": "z-1", "code": "LBL"}');
SELECT hub.map_inbox('fb.zt', 'shipment', 'tcarrier', '$.id', '$.code', occurred_at_path => '$.at');
SELECT hub.receive('fb', 'z-2', 'fb.zt', '{"id": "z-2", "code": "LBL", "at": "2026-02-30T10:00:00Z"}');
SELECT hub.receive('fb', 'z-3', 'fb.ord', '{"id": "z-3", "code": "LBL"}');
SELECT is((SELECT processed || '/' || failed FROM hub.process_inbox(100)), '2/1',
	'the two good messages are done, the bad one fails alone');

-- ---- several messages of one key in one claim: applied in rounds, in order
SELECT hub.receive('fb', 'k-1', 'fb.ord', '{"id": "round-1", "code": "LBL"}');
SELECT hub.receive('fb', 'k-2', 'fb.ord', '{"id": "round-2", "code": "LBL"}');
SELECT hub.receive('fb', 'k-3', 'fb.ord', '{"id": "round-1", "code": "TRN"}');
SELECT hub.receive('fb', 'k-4', 'fb.ord', '{"id": "round-1", "code": "DLV"}');
SELECT is((SELECT processed || '/' || failed FROM hub.process_inbox(100)), '4/0',
	'three messages of one key and one of another, in one claim, are all processed');
SELECT is((SELECT string_agg(h.new_state, ',' ORDER BY h.history_id) || ' now ' || e.state
		   FROM hub.status_history h JOIN hub.entity_state e USING (lifecycle, business_key)
		   WHERE h.business_key = 'round-1' GROUP BY e.state),
	'label_created,in_transit,delivered now delivered', 'a key''s messages are applied in the order received');

-- ---- no set-based apply while a readiness rule exists (rules are evaluated per message)
SELECT hub.create_readiness_rule('fb_rule', 'shipment.delivered', 'shipment', 'delivered');
SELECT hub.receive('fb', 'r-1', 'fb.ord', '{"id": "r-1", "code": "LBL"}');
SELECT is(cardinality(hub._inbox_apply_batch(ARRAY(SELECT inbox_id FROM hub.inbox WHERE message_id = 'r-1'))), 0,
	'hub._inbox_apply_batch leaves everything to the per-message path while a readiness rule exists');

SELECT * FROM finish();
ROLLBACK;
