-- Documentation is part of the feature: every public object of the
-- extension (everything not prefixed with an underscore) has a COMMENT, so
-- \d+, \df+ and \dT+ explain themselves.  Operator families (created with
-- their operator classes) and sequences owned by a column are not listed.
BEGIN;
SELECT plan(3);

CREATE TEMP VIEW members AS
SELECT d.classid, d.objid, pg_describe_object(d.classid, d.objid, 0) AS member
FROM pg_depend d
WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
	AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'logistics_hub');

SELECT ok((SELECT count(*) FROM members) > 50, 'the extension has members to check');

SELECT is_empty($$
	SELECT member FROM members m
	WHERE m.classid <> 'pg_opfamily'::regclass
		AND m.member !~ 'hub\._'
		AND NOT EXISTS (SELECT 1 FROM pg_depend o			-- identity and serial sequences
						WHERE o.classid = 'pg_class'::regclass AND o.objid = m.objid
							AND m.classid = 'pg_class'::regclass AND o.deptype IN ('a', 'i'))
		AND NOT EXISTS (SELECT 1 FROM pg_description c
						WHERE c.classoid = m.classid AND c.objoid = m.objid AND c.objsubid = 0)
	ORDER BY 1
$$, 'every public member of the extension has a COMMENT');

SELECT ok(obj_description('hub'::regnamespace, 'pg_namespace') IS NOT NULL, 'schema hub has a COMMENT');

SELECT * FROM finish();
ROLLBACK;
