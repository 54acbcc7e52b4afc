-- GS1 keys: hub.gtin, hub.sscc, hub.gln
-- Vectors: GS1 "how to calculate a check digit manually" (6291041500213),
-- GS1 Sweden (7300011000017), GS1 India (8904000210037), GS1 General
-- Specifications table 7-9 via zint's tests (SSCC 376104250021234569),
-- GS1UTILS GTINTests (toGTIN14 padding), validator.js isEAN tests.
\set SHOW_CONTEXT never
SET search_path = public, hub;

-- valid GTINs of every length, shown as GTIN-14
SELECT '6291041500213'::hub.gtin AS gtin13_gs1,
       '7300011000017'::hub.gtin AS gtin13_gs1_se,
       '8904000210037'::hub.gtin AS gtin13_gs1_in,
       '96385074'::hub.gtin AS gtin8,
       '036000291452'::hub.gtin AS gtin12_upc,
       '09521234543213'::hub.gtin AS gtin14,
       '  4006381333931  '::hub.gtin AS padded;
SELECT hub.gtin_format('00000096385074', 8) AS as8,
       hub.gtin_format('00036000291452', 12) AS as12,
       hub.gtin_format('06291041500213', 13) AS as13,
       hub.gtin_format('06291041500213', 14) AS as14;
SELECT hub.gtin_is_valid('6291041500213') AS ok, hub.gtin_is_valid('6291041500214') AS bad_check,
       hub.gtin_is_valid('62910415x0213') AS bad_char, hub.gtin_is_valid('') AS empty;
SELECT '376104250021234569'::hub.sscc AS sscc_gs1,
       hub.make_sscc(3, '7610425', 2123456) AS built,
       hub.make_sscc(0, '0614141', 123456789) AS built2,
       hub.sscc_is_valid('376104250021234568') AS bad_check;
SELECT '0614141000012'::hub.gln AS gln, hub.gln_is_valid('0614141000012') AS ok;

-- invalid input: one case per way of failing
SELECT '6291041500214'::hub.gtin;
SELECT '62910415002'::hub.gtin;
SELECT '62910-41500213'::hub.gtin;
SELECT ''::hub.gtin;
SELECT '629104150021é'::hub.gtin;
SELECT '6291041500213 1'::hub.gtin;
SELECT hub.gtin_format('06291041500213', 12);
SELECT hub.gtin_format('06291041500213', 10);
SELECT '376104250021234568'::hub.sscc;
SELECT '37610425002123456'::hub.sscc;
SELECT '0614141000013'::hub.gln;
SELECT '061414100001'::hub.gln;
SELECT hub.make_sscc(10, '7610425', 1);
SELECT hub.make_sscc(3, '76A0425', 1);
SELECT hub.make_sscc(3, '761', 1);
SELECT hub.make_sscc(3, '7610425', 1000000000);
SELECT hub.make_sscc(3, '7610425', -1);

-- comparison, text casts and binary round trip
SELECT '96385074'::hub.gtin = '00000096385074'::hub.gtin AS same_item,
       '96385074'::hub.gtin < '6291041500213'::hub.gtin AS ordered,
       ('6291041500213'::hub.gtin)::text AS as_text;
CREATE TEMP TABLE keys_rt (g hub.gtin, s hub.sscc, l hub.gln);
INSERT INTO keys_rt VALUES ('6291041500213', '376104250021234569', '0614141000012');
SELECT g = hub.gtin_in(hub.gtin_out(g)) AS text_rt FROM keys_rt;

-- binary I/O: COPY BINARY out and back in; recv is as strict as text input
CREATE TEMP TABLE keys_rt2 (LIKE keys_rt);
CREATE TEMP TABLE raw_int8 (g bigint, s bigint, l bigint);
INSERT INTO raw_int8 VALUES (6291041500214, 376104250021234569, 614141000012);
DO $$
DECLARE f text := '/tmp/lh_keys_' || pg_backend_pid() || '.bin';
BEGIN
	EXECUTE format('COPY keys_rt TO %L WITH (FORMAT binary)', f);
	EXECUTE format('COPY keys_rt2 FROM %L WITH (FORMAT binary)', f);
	EXECUTE format('COPY raw_int8 TO %L WITH (FORMAT binary)', f);
	BEGIN
		EXECUTE format('COPY keys_rt2 FROM %L WITH (FORMAT binary)', f);
	EXCEPTION WHEN others THEN
		RAISE NOTICE 'binary input of a bad check digit: % (SQLSTATE %)', SQLERRM, SQLSTATE;
	END;
	EXECUTE format('COPY (SELECT 1) TO %L', f);
END
$$;
SELECT a.g = b.g AND a.s = b.s AND a.l = b.l AS binary_rt, b.* FROM keys_rt a, keys_rt2 b;
