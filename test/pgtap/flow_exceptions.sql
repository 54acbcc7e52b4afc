-- Business exceptions apart from technical failures: an unknown status
-- code, a conflict, a report from a system that does not own the state and
-- a report about a terminal key each open one hub.exceptions row (one per
-- kind, key and code, counting repeats), and the message is done, never
-- retried; hub.resolve_exception closes one, audited.
BEGIN;
SELECT plan(21);

INSERT INTO hub.systems (system, role) VALUES ('acme_wms', 'wms'), ('acme_erp', 'erp');
INSERT INTO hub.status_map (system, lifecycle, code, state) VALUES
	('acme_wms', 'order', 'PICKED', 'picked'), ('acme_wms', 'order', 'SHIPPED', 'shipped'),
	('acme_wms', 'order', 'CREATED', 'created'),
	('acme_erp', 'order', 'NEW', 'created'), ('acme_erp', 'order', 'CANCEL', 'cancelled');
SELECT hub.map_inbox('wms.order', 'order', 'acme_wms', '$.order', '$.status', occurred_at_path => '$.at');
SELECT hub.map_inbox('erp.order', 'order', 'acme_erp', '$.order', '$.status', occurred_at_path => '$.at');

CREATE FUNCTION pg_temp.rx(src text, id text, typ text, body text) RETURNS void LANGUAGE sql AS $$
	SELECT hub.receive(src, id, typ, body::jsonb); SELECT
$$;
CREATE FUNCTION pg_temp.open(k text) RETURNS text[] LANGUAGE sql AS $$
	SELECT coalesce(array_agg(kind || ':' || code || ':' || reports ORDER BY exception_id), '{}')
	FROM hub.exceptions WHERE business_key = k AND resolved_at IS NULL
$$;

-- ---- an unknown code: one open exception, the message done
SELECT pg_temp.rx('wms', 'u1', 'wms.order', '{"order": "SO-1", "status": "TELEPORTED", "at": "2026-05-04T08:00:00Z"}');
SELECT pg_temp.rx('wms', 'u2', 'wms.order', '{"order": "SO-1", "status": "TELEPORTED", "at": "2026-05-04T08:05:00Z"}');
SELECT is((SELECT (processed, failed) FROM hub.process_inbox()), (2, 0), 'unknown codes are processed, not failed');
SELECT is((SELECT array_agg(state || '/' || attempts ORDER BY message_id) FROM hub.inbox WHERE message_id IN ('u1', 'u2')),
	ARRAY['done/0', 'done/0'], 'the messages are done, never retried');
SELECT is(pg_temp.open('SO-1'), ARRAY['unknown_code:TELEPORTED:2'], 'one open exception, counting both reports');
SELECT is((SELECT message || '/' || last_message FROM hub.exceptions WHERE business_key = 'SO-1'),
	(SELECT min(inbox_id) || '/' || max(inbox_id) FROM hub.inbox WHERE message_id IN ('u1', 'u2')),
	'it names the first and the last message');
SELECT is((SELECT detail FROM hub.exceptions WHERE business_key = 'SO-1'),
	'acme_wms reported order code "TELEPORTED", which hub.status_map does not map', 'and says what is wrong');
SELECT is((SELECT count(*)::int FROM hub.entity_state WHERE business_key = 'SO-1'), 0, 'an unknown code moves nothing');

-- ---- not owner: the WMS creating an order the ERP owns
SELECT pg_temp.rx('wms', 'n1', 'wms.order', '{"order": "SO-2", "status": "CREATED", "at": "2026-05-04T08:00:00Z"}');
SELECT hub.process_inbox();
SELECT is(pg_temp.open('SO-2'), ARRAY['not_owner:CREATED:1'], 'a report of a state the system does not own');

-- ---- terminal: a pick reported after the order was cancelled
SELECT pg_temp.rx('erp', 't1', 'erp.order', '{"order": "SO-3", "status": "NEW", "at": "2026-05-04T08:00:00Z"}');
SELECT pg_temp.rx('erp', 't2', 'erp.order', '{"order": "SO-3", "status": "CANCEL", "at": "2026-05-04T09:00:00Z"}');
SELECT pg_temp.rx('wms', 't3', 'wms.order', '{"order": "SO-3", "status": "PICKED", "at": "2026-05-04T10:00:00Z"}');
SELECT is((SELECT processed FROM hub.process_inbox()), 3, 'created, cancelled, then a pick');
SELECT is((SELECT state FROM hub.entity_state WHERE business_key = 'SO-3'), 'cancelled', 'the order stays cancelled');
SELECT is(pg_temp.open('SO-3'), ARRAY['terminal:PICKED:1'], 'a pick for a cancelled order is a terminal exception');
-- (a late report made before the terminal state is only late, not an exception)
SELECT pg_temp.rx('wms', 't4', 'wms.order', '{"order": "SO-3", "status": "PICKED", "at": "2026-05-04T08:30:00Z"}');
SELECT hub.process_inbox();
SELECT is(pg_temp.open('SO-3'), ARRAY['terminal:PICKED:1'], 'a pick made before the cancellation, arriving late, adds nothing');

-- ---- conflict: the ERP cancels an order the WMS shipped
SELECT pg_temp.rx('erp', 'c1', 'erp.order', '{"order": "SO-4", "status": "NEW", "at": "2026-05-04T08:00:00Z"}');
SELECT pg_temp.rx('wms', 'c2', 'wms.order', '{"order": "SO-4", "status": "SHIPPED", "shipment_id": "SH-4", "at": "2026-05-04T09:00:00Z"}');
SELECT pg_temp.rx('erp', 'c3', 'erp.order', '{"order": "SO-4", "status": "CANCEL", "at": "2026-05-04T10:00:00Z"}');
SELECT hub.process_inbox();
SELECT is(pg_temp.open('SO-4'), ARRAY['conflict:CANCEL:1'], 'cancelled vs shipped is a conflict exception');
SELECT is((SELECT count(*)::int FROM hub.status_conflicts WHERE business_key = 'SO-4' AND resolved_at IS NULL), 1,
	'beside the conflict record of the state');
SELECT is((SELECT count(*)::int FROM hub.inbox WHERE state <> 'done'), 0, 'every business exception left its message done');

-- ---- resolve: audited, once, with a resolution
SELECT throws_ok($$SELECT hub.resolve_exception((SELECT exception_id FROM hub.exceptions WHERE business_key = 'SO-1'), ' ')$$,
	'22023', NULL, 'a resolution must say what was decided');
SELECT is(hub.resolve_exception((SELECT exception_id FROM hub.exceptions WHERE business_key = 'SO-1'), 'code added to the map'),
	true, 'resolve an exception');
SELECT is(hub.resolve_exception((SELECT exception_id FROM hub.exceptions WHERE business_key = 'SO-1'), 'again'),
	false, 'a resolved exception is not resolved twice');
SELECT is((SELECT action || ' ' || target || ' ' || reason || ' ' || (details ->> 'kind') FROM hub.operator_audit WHERE action = 'resolve_exception'),
	'resolve_exception exception:' || (SELECT exception_id FROM hub.exceptions WHERE business_key = 'SO-1') || ' code added to the map unknown_code',
	'the resolution is audited');
SELECT is((SELECT resolved_by = session_user AND resolved_at IS NOT NULL FROM hub.exceptions WHERE business_key = 'SO-1'),
	true, 'with who and when');
SELECT pg_temp.rx('wms', 'u3', 'wms.order', '{"order": "SO-1", "status": "TELEPORTED", "at": "2026-05-04T11:00:00Z"}');
SELECT hub.process_inbox();
SELECT is(pg_temp.open('SO-1'), ARRAY['unknown_code:TELEPORTED:1'], 'the same problem after a resolution opens a new exception');

-- the business exceptions in hub.trace
SELECT is((SELECT array_agg(what ORDER BY what) FROM hub.trace(aggregate => 'SO-1') WHERE what LIKE 'exception%'),
	ARRAY['exception unknown_code', 'exception unknown_code', 'exception unknown_code resolved'], 'hub.trace shows them');

SELECT * FROM finish();
ROLLBACK;
