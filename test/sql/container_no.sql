-- ISO 6346 container numbers.
-- Vectors: CSQU3054383 (Wikipedia example, python-stdnum tests/test_iso6346.doctest),
-- TASU1170000 (python-stdnum docstring, remainder 10 gives 0), APZU3789870,
-- TEMU1002030, CMAU2221480 (validator.js isISO6346 tests, check digit 10 as 0).
\set SHOW_CONTEXT never
SET search_path = public, hub;

SELECT 'CSQU3054383'::hub.container_no AS wikipedia,
       'csqu 305438 3'::hub.container_no AS lower_spaced,
       'TASU1170000'::hub.container_no AS remainder_ten,
       'APZU3789870'::hub.container_no AS vjs1,
       'TEMU1002030'::hub.container_no AS vjs2,
       'CMAU2221480'::hub.container_no AS vjs3,
       'MSKJ1234568'::hub.container_no AS j_category;
SELECT hub.container_no_is_valid('CSQU3054383') AS ok,
       hub.container_no_is_valid('CSQU3054384') AS bad_check,
       hub.container_no_is_valid('CSQX3054383') AS bad_category;

-- ordering follows the text form
SELECT c FROM (VALUES ('TASU1170000'::hub.container_no), ('CSQU3054383'), ('APZU3789870'), ('AAAZ0000000')) v(c) ORDER BY c;

-- invalid input: one case per way of failing
SELECT 'CSQU3054384'::hub.container_no;
SELECT 'CSQX3054383'::hub.container_no;
SELECT 'CS1U3054383'::hub.container_no;
SELECT 'CSQU30543A3'::hub.container_no;
SELECT 'CSQU305438'::hub.container_no;
SELECT 'CSQU30543833'::hub.container_no;
SELECT ''::hub.container_no;
SELECT 'CSQU-305438-3'::hub.container_no;

-- text and binary round trips; binary input rejects values out of range
CREATE TEMP TABLE boxes (c hub.container_no);
INSERT INTO boxes VALUES ('CSQU3054383'), ('TASU1170000'), ('ZZZZ9999996'), ('AAAJ0000000');
SELECT c, c = hub.container_no_in(hub.container_no_out(c)) AS text_rt FROM boxes ORDER BY c;
CREATE TEMP TABLE boxes2 (LIKE boxes);
CREATE TEMP TABLE raw_box (c bigint);
INSERT INTO raw_box VALUES (52728000000);
DO $$
DECLARE f text := '/tmp/lh_boxes_' || pg_backend_pid() || '.bin';
BEGIN
	EXECUTE format('COPY boxes TO %L WITH (FORMAT binary)', f);
	EXECUTE format('COPY boxes2 FROM %L WITH (FORMAT binary)', f);
	EXECUTE format('COPY raw_box TO %L WITH (FORMAT binary)', f);
	BEGIN
		EXECUTE format('COPY boxes2 FROM %L WITH (FORMAT binary)', f);
	EXCEPTION WHEN others THEN
		RAISE NOTICE 'binary input out of range: % (SQLSTATE %)', SQLERRM, SQLSTATE;
	END;
	EXECUTE format('COPY (SELECT 1) TO %L', f);
END
$$;
SELECT (SELECT array_agg(c ORDER BY c) FROM boxes) = (SELECT array_agg(c ORDER BY c) FROM boxes2) AS binary_rt;
