-- hub.publish inserts directly (as logical replication applies a row)
-- while hub.outbox has the shape it knows, and through a plain INSERT
-- otherwise; either way the effect is that of a plain INSERT: row
-- triggers and CHECK constraints added by a DBA apply, statement triggers
-- fire, an added column gets its default, column privileges and row
-- security are honoured.
BEGIN;
SELECT plan(13);

CREATE TABLE public.seen (what text);
CREATE FUNCTION public.seen_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.seen VALUES (TG_WHEN || ' ' || TG_LEVEL || ' ' || NEW.aggregate_id); RETURN NEW; END $$;
CREATE FUNCTION public.seen_stmt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.seen VALUES (TG_WHEN || ' ' || TG_LEVEL); RETURN NULL; END $$;

SELECT ok(hub.publish('order.created', 'SO-1', '{"order_id": "SO-1"}') IS NOT NULL, 'publish on the known shape');
SELECT is((SELECT xid = pg_current_xact_id() AND published_at = now() AND seq IS NOT NULL AND headers = '{}'
		   FROM hub.outbox WHERE aggregate_id = 'SO-1'), true, 'xid, published_at, seq and headers are filled');

SAVEPOINT ro;
SET LOCAL transaction_read_only = on;
SELECT throws_ok($$SELECT hub.publish('order.created', 'SO-RO', '{"order_id": "SO-RO"}')$$, '25006',
	'cannot execute INSERT in a read-only transaction', 'a read-only transaction cannot publish');
ROLLBACK TO SAVEPOINT ro;

-- row triggers and CHECK constraints (direct insert)
CREATE TRIGGER seen_before BEFORE INSERT ON hub.outbox FOR EACH ROW EXECUTE FUNCTION public.seen_row();
CREATE TRIGGER seen_after AFTER INSERT ON hub.outbox FOR EACH ROW EXECUTE FUNCTION public.seen_row();
ALTER TABLE hub.outbox ADD CONSTRAINT no_test_keys CHECK (aggregate_id <> 'SO-BAD');
SELECT lives_ok($$SELECT hub.publish('order.created', 'SO-2', '{"order_id": "SO-2"}')$$, 'publish with row triggers added');
SELECT is((SELECT array_agg(what ORDER BY what) FROM public.seen), ARRAY['AFTER ROW SO-2', 'BEFORE ROW SO-2'],
	'BEFORE and AFTER row triggers fire');
SELECT throws_ok($$SELECT hub.publish('order.created', 'SO-BAD', '{"order_id": "SO-BAD"}')$$, '23514', NULL,
	'an added CHECK constraint applies');
SELECT throws_ok($$SELECT hub.publish(NULL, 'SO-3', '{"order_id": "SO-3"}')$$, '23502', NULL, 'a NULL event type violates NOT NULL');
SELECT throws_ok($$SELECT hub.publish('order.created', 'SO-3', '{"no": 1}')$$, '22023', NULL, 'the contract trigger still applies');

-- statement triggers: the plain INSERT path
CREATE TRIGGER seen_stmt AFTER INSERT ON hub.outbox FOR EACH STATEMENT EXECUTE FUNCTION public.seen_stmt();
DELETE FROM public.seen;
SELECT lives_ok($$SELECT hub.publish('order.created', 'SO-4', '{"order_id": "SO-4"}')$$, 'publish with a statement trigger');
SELECT is((SELECT array_agg(what ORDER BY what) FROM public.seen), ARRAY['AFTER ROW SO-4', 'AFTER STATEMENT', 'BEFORE ROW SO-4'],
	'the statement trigger fires too');
DROP TRIGGER seen_stmt ON hub.outbox;

-- an added column gets its default
ALTER TABLE hub.outbox ADD COLUMN tenant text NOT NULL DEFAULT 'acme';
SELECT hub.publish('order.created', 'SO-5', '{"order_id": "SO-5"}');
SELECT is((SELECT tenant FROM hub.outbox WHERE aggregate_id = 'SO-5'), 'acme', 'an added column gets its default');
ALTER TABLE hub.outbox DROP COLUMN tenant;

-- column privileges only, and row security
DROP TRIGGER seen_before ON hub.outbox;
DROP TRIGGER seen_after ON hub.outbox;
CREATE ROLE publish_cols LOGIN;
GRANT USAGE ON SCHEMA hub TO publish_cols;
GRANT EXECUTE ON FUNCTION hub.publish(text, text, jsonb, text, text, jsonb, timestamptz, text), hub._event_id() TO publish_cols;
GRANT INSERT (event_id, event_type, aggregate_id, payload, correlation_id, causation_id, headers, occurred_at) ON hub.outbox TO publish_cols;
SET ROLE publish_cols;
SELECT lives_ok($$SELECT hub.publish('order.created', 'SO-6', '{"order_id": "SO-6"}')$$, 'INSERT privilege on the columns is enough');
RESET ROLE;
ALTER TABLE hub.outbox ENABLE ROW LEVEL SECURITY;
CREATE POLICY only_so7 ON hub.outbox FOR INSERT TO publish_cols WITH CHECK (aggregate_id = 'SO-7');
SET ROLE publish_cols;
SELECT throws_ok($$SELECT hub.publish('order.created', 'SO-8', '{"order_id": "SO-8"}')$$, '42501', NULL, 'row security applies');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
