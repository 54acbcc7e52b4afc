-- Upgrade harness: install the oldest released version, store data in its
-- types, update along the chain to the default version, and check that the
-- data survived and that the result is the same set of objects as a fresh
-- install.  Runs last (zz_) because it reinstalls the extension.
SET search_path = public, hub;
SELECT version FROM pg_available_extension_versions
WHERE name = 'logistics_hub' ORDER BY string_to_array(version, '.')::int[];

DROP EXTENSION logistics_hub CASCADE;
CREATE EXTENSION logistics_hub VERSION '0.1.0';
SELECT extversion FROM pg_extension WHERE extname = 'logistics_hub';

CREATE TABLE upgrade_keep (g hub.gtin PRIMARY KEY, c hub.container_no, s hub.sscc);
INSERT INTO upgrade_keep VALUES ('96385074', 'CSQU3054383', '376104250021234569'),
	('6291041500213', 'TASU1170000', hub.make_sscc(0, '0614141', 42));

ALTER EXTENSION logistics_hub UPDATE;
SELECT extversion = (SELECT default_version FROM pg_available_extensions WHERE name = 'logistics_hub') AS at_default
FROM pg_extension WHERE extname = 'logistics_hub';

SET enable_seqscan = off;
SELECT * FROM upgrade_keep WHERE g = '00000096385074';
RESET enable_seqscan;
SELECT * FROM upgrade_keep ORDER BY g;

-- the updated extension has exactly the members of a fresh install
CREATE TEMP TABLE upgraded_members AS
SELECT pg_describe_object(classid, objid, 0) AS member
FROM pg_depend
WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
	AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'logistics_hub');
DROP TABLE upgrade_keep;
DROP EXTENSION logistics_hub;
CREATE EXTENSION logistics_hub;
CREATE TEMP TABLE fresh_members AS
SELECT pg_describe_object(classid, objid, 0) AS member
FROM pg_depend
WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
	AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'logistics_hub');
SELECT count(*) > 0 AS has_members,
	(SELECT count(*) FROM (TABLE upgraded_members EXCEPT TABLE fresh_members) d) AS only_upgraded,
	(SELECT count(*) FROM (TABLE fresh_members EXCEPT TABLE upgraded_members) d) AS only_fresh
FROM fresh_members;
