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

-- the updated extension has exactly the catalogue of a fresh install: the
-- full script (sql/src/) and the released steps are different files, so
-- a step that misses a change of sql/src/ shows here, line by line
SET search_path = pg_catalog;
CREATE FUNCTION pg_temp.hub_catalogue() RETURNS SETOF text LANGUAGE sql AS $$
	WITH m AS (
		SELECT d.classid, d.objid FROM pg_depend d
		WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
			AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'logistics_hub')
	), rel AS (
		SELECT c.* FROM m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
	)
	SELECT 'member ' || pg_describe_object(m.classid, m.objid, 0) || ' comment '
		|| coalesce(obj_description(m.objid, (SELECT relname FROM pg_class WHERE oid = m.classid)), '')
	FROM m
	UNION ALL
	SELECT 'function ' || p.oid::regprocedure || ' acl ' || coalesce(p.proacl::text, '') || ' '
		|| CASE WHEN p.prokind = 'a' THEN 'aggregate' ELSE pg_get_functiondef(p.oid) END
	FROM m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
	UNION ALL
	SELECT 'relation ' || c.oid::regclass || ' ' || c.relkind::text || c.relpersistence::text || ' options '
		|| coalesce(c.reloptions::text, '') || ' acl ' || coalesce(c.relacl::text, '')
		|| coalesce(' view ' || CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END, '')
	FROM rel c
	UNION ALL
	SELECT 'column ' || a.attrelid::regclass || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
		|| CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
		|| ' default ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '') || ' identity ' || a.attidentity::text
		|| ' generated ' || a.attgenerated::text || ' acl ' || coalesce(a.attacl::text, '')
		|| ' comment ' || coalesce(col_description(a.attrelid, a.attnum), '')
	FROM rel c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
	LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
	UNION ALL
	SELECT 'constraint ' || co.conrelid::regclass || ' ' || co.conname || ' ' || pg_get_constraintdef(co.oid)
		|| ' comment ' || coalesce(obj_description(co.oid, 'pg_constraint'), '')
	FROM rel c JOIN pg_constraint co ON co.conrelid = c.oid
	UNION ALL
	SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM rel c JOIN pg_index i ON i.indrelid = c.oid
	UNION ALL
	SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text
	FROM rel c JOIN pg_trigger t ON t.tgrelid = c.oid AND NOT t.tgisinternal
	UNION ALL
	SELECT 'enum ' || e.enumtypid::regtype || ' ' || string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
	FROM m JOIN pg_enum e ON m.classid = 'pg_type'::regclass AND e.enumtypid = m.objid
	GROUP BY e.enumtypid
	UNION ALL
	SELECT 'domain constraint ' || co.contypid::regtype || ' ' || co.conname || ' ' || pg_get_constraintdef(co.oid)
	FROM m JOIN pg_constraint co ON m.classid = 'pg_type'::regclass AND co.contypid = m.objid
	UNION ALL
	SELECT 'type ' || t.oid::regtype || ' acl ' || coalesce(t.typacl::text, '')
	FROM m JOIN pg_type t ON m.classid = 'pg_type'::regclass AND t.oid = m.objid
	UNION ALL
	SELECT 'operator ' || o.oid::regoperator || ' ' || o.oprcode::regprocedure || ' commutator '
		|| o.oprcom::regoperator || ' negator ' || o.oprnegate::regoperator
		|| ' restrict ' || o.oprrest::regproc || ' join ' || o.oprjoin::regproc
	FROM m JOIN pg_operator o ON m.classid = 'pg_operator'::regclass AND o.oid = m.objid
	UNION ALL
	SELECT 'dumped ' || x.cfg::regclass || ' where ' || coalesce(x.cond, '')
	FROM pg_extension e, unnest(e.extconfig, e.extcondition) x(cfg, cond) WHERE e.extname = 'logistics_hub'
	UNION ALL
	SELECT 'schema hub acl ' || coalesce(n.nspacl::text, '') || ' comment '
		|| coalesce(obj_description(n.oid, 'pg_namespace'), '')
	FROM pg_namespace n WHERE n.nspname = 'hub'
$$;
CREATE TEMP TABLE upgraded AS SELECT pg_temp.hub_catalogue() AS line;
DROP TABLE public.upgrade_keep;
DROP EXTENSION logistics_hub;
CREATE EXTENSION logistics_hub;
CREATE TEMP TABLE fresh AS SELECT pg_temp.hub_catalogue() AS line;
SELECT (SELECT count(*) FROM fresh) > 500
		AND NOT EXISTS (SELECT FROM fresh WHERE line IS NULL) AND NOT EXISTS (SELECT FROM upgraded WHERE line IS NULL)
		AS has_catalogue,
	(SELECT count(*) FROM (TABLE upgraded EXCEPT TABLE fresh) d) AS only_upgraded,
	(SELECT count(*) FROM (TABLE fresh EXCEPT TABLE upgraded) d) AS only_fresh;
-- (what differs, if anything, line by line)
SELECT 'upgraded only' AS side, left(line, 200) AS line FROM (TABLE upgraded EXCEPT TABLE fresh) d
UNION ALL
SELECT 'fresh only', left(line, 200) FROM (TABLE fresh EXCEPT TABLE upgraded) d
ORDER BY 2, 1;
