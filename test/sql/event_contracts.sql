-- Event contracts: the messages of a broken contract (missing, null, of the
-- wrong type) and the WARNING a deprecated contract version gives its
-- publishers, who are not refused.
BEGIN;
INSERT INTO hub.event_types (event_type, version, required_keys, key_types) VALUES
	('stock.counted', 2, '{sku,quantity}', '{"quantity": "number"}');
SAVEPOINT s;
SELECT hub.publish('stock.counted', 'SKU-1', '{"sku": "SKU-1"}') IS NOT NULL AS published;
ROLLBACK TO s;
SELECT hub.publish('stock.counted', 'SKU-1', '{"sku": "SKU-1", "quantity": null}') IS NOT NULL AS published;
ROLLBACK TO s;
SELECT hub.publish('stock.counted', 'SKU-1', '{"sku": "SKU-1", "quantity": "four"}') IS NOT NULL AS published;
ROLLBACK TO s;
SELECT hub.publish('stock.counted', 'SKU-1', '{"sku": ["SKU-1"], "quantity": 4}') IS NOT NULL AS published;
UPDATE hub.event_types SET deprecated = true, description = 'Use stock.recounted.' WHERE event_type = 'stock.counted';
SELECT hub.publish('stock.counted', 'SKU-1', '{"sku": "SKU-1", "quantity": 4}') IS NOT NULL AS published;
SELECT count(*) AS events FROM hub.outbox WHERE event_type = 'stock.counted';
ROLLBACK;
