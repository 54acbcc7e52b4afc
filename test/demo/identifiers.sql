-- The canonical identifier types: what a WMS, ERP or carrier feed can
-- store, index and join in logistics_hub.
SET search_path = public, hub;

-- GTINs of every length are stored as GTIN-14 and compare equal.
SELECT '96385074'::gtin AS gtin8_as_14, '96385074'::gtin = '00000096385074'::gtin AS same_item,
       gtin_format('00000096385074', 8) AS back_to_8;

-- A typo in a scanned barcode is caught by its check digit (a GTIN cast
-- from the typo would be refused with SQLSTATE 22P02, naming the digit
-- expected).
SELECT gs1_is_valid('(01)06291041500213') AS as_printed, gs1_is_valid('(01)06291041500214') AS typo;

-- The SSCCs of the scenario's packages, as the WMS printed them.
SELECT make_sscc(3, '7610425', s) AS package_label FROM generate_series(2123456, 2123461) s;

-- Container numbers from a carrier feed, however they were typed.
SELECT c::container_no AS canonical FROM (VALUES ('csqu 305438 3'), ('TASU1170000')) v(c);
SELECT container_no_is_valid('CSQU3054384') AS typo_is_valid;
