-- Operator classes of the identifier types: primary keys, btree index scans,
-- hash indexes, hash joins, merge joins, DISTINCT and GROUP BY.
SET search_path = public, hub;

CREATE TABLE item (gtin hub.gtin PRIMARY KEY, name text);
INSERT INTO item
SELECT (lpad(i::text, 13, '0') || hub_check.d)::hub.gtin, 'item ' || i
FROM generate_series(1, 5000) i,
	LATERAL (SELECT (10 - (SELECT sum(substr(lpad(i::text, 13, '0'), k, 1)::int * CASE WHEN k % 2 = 1 THEN 3 ELSE 1 END)
							FROM generate_series(1, 13) k) % 10) % 10 AS d) hub_check;
INSERT INTO item VALUES ('96385074', 'short GTIN-8');
INSERT INTO item VALUES ('00000096385074', 'duplicate');	-- same GTIN: unique violation
CREATE TABLE pallet (sscc hub.sscc PRIMARY KEY, gtin hub.gtin, container hub.container_no, ship_to hub.gln);
CREATE INDEX ON pallet USING hash (gtin);
CREATE INDEX ON pallet (container);
CREATE INDEX ON pallet USING hash (ship_to);
INSERT INTO pallet
SELECT hub.make_sscc(0, '0614141', i), (SELECT gtin FROM item ORDER BY gtin OFFSET (i % 100) LIMIT 1),
	CASE WHEN i % 2 = 0 THEN 'CSQU3054383' ELSE 'TASU1170000' END::hub.container_no,
	'0614141000012'
FROM generate_series(1, 2000) i;
ANALYZE item;
ANALYZE pallet;

SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT * FROM item WHERE gtin = '6291041500213';
SELECT name FROM item WHERE gtin = '96385074';
EXPLAIN (COSTS OFF) SELECT count(*) FROM item WHERE gtin BETWEEN '00000000000017' AND '00000000001007';
SELECT count(*) FROM item WHERE gtin BETWEEN '00000000000017' AND '00000000001007';
EXPLAIN (COSTS OFF) SELECT * FROM pallet WHERE gtin = '00000000000017';
SELECT count(*) FROM pallet WHERE gtin = '00000000000017';
EXPLAIN (COSTS OFF) SELECT count(*) FROM pallet WHERE container = 'csqu 3054383';
SELECT count(*) FROM pallet WHERE container = 'csqu 3054383';
SELECT count(*) FROM pallet WHERE ship_to = '0614141000012';
RESET enable_seqscan;

-- hash join
SET enable_mergejoin = off;
SET enable_nestloop = off;
EXPLAIN (COSTS OFF) SELECT count(*) FROM pallet p JOIN item i USING (gtin);
SELECT count(*) FROM pallet p JOIN item i USING (gtin);
RESET enable_mergejoin;
RESET enable_nestloop;

-- merge join
SET enable_hashjoin = off;
SET enable_nestloop = off;
EXPLAIN (COSTS OFF) SELECT count(*) FROM pallet p JOIN item i USING (gtin);
SELECT count(*) FROM pallet p JOIN item i USING (gtin);
RESET enable_hashjoin;
RESET enable_nestloop;

-- DISTINCT and GROUP BY, hashed and sorted
SET enable_sort = off;
SELECT container, count(*) FROM pallet GROUP BY container ORDER BY container;
RESET enable_sort;
SET enable_hashagg = off;
SELECT count(DISTINCT gtin), count(DISTINCT container), count(DISTINCT ship_to) FROM pallet;
RESET enable_hashagg;
SELECT DISTINCT ship_to FROM pallet;

-- ordering operators agree with the canonical text order
SELECT count(*) FILTER (WHERE (a.gtin < b.gtin) <> (a.gtin::text < b.gtin::text)) AS disagreements, count(*) > 0 AS compared
FROM item a JOIN item b ON a.gtin <> b.gtin AND a.name < 'item 2' AND b.name < 'item 2';

DROP TABLE pallet, item;
