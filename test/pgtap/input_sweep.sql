-- Bad-input sweep: for every input function, 100,000+ random and mutated
-- strings (random bytes from a hostile alphabet, and valid values with a
-- digit changed, two characters swapped, one deleted, inserted or
-- duplicated, truncated, padded or case-changed).  No input may crash the
-- backend, every rejection must be SQLSTATE 22P02, and the input function
-- must accept exactly what the non-throwing *_is_valid function accepts.
-- The generator is seeded, so a failure is reproducible.
BEGIN;
SELECT plan(25);
SELECT setseed(0.4242);

CREATE FUNCTION pg_temp.random_string(alphabet text, maxlen int) RETURNS text
LANGUAGE sql VOLATILE AS $$
	SELECT coalesce(string_agg(substr(alphabet, 1 + floor(random() * length(alphabet))::int, 1), ''), '')
	FROM generate_series(1, floor(random() * (maxlen + 1))::int)
$$;

CREATE FUNCTION pg_temp.mutate(s text) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
	p int := 1 + floor(random() * greatest(length(s), 1))::int;
	c text := substr('0123456789AZaz -/()' || chr(29) || chr(9) || 'é€', 1 + floor(random() * 24)::int, 1);
BEGIN
	CASE floor(random() * 8)::int
		WHEN 0 THEN RETURN overlay(s placing c from p for 1);						-- replace
		WHEN 1 THEN RETURN overlay(s placing substr(s, p + 1, 1) || substr(s, p, 1) from p for 2);	-- swap
		WHEN 2 THEN RETURN overlay(s placing '' from p for 1);						-- delete
		WHEN 3 THEN RETURN overlay(s placing c from p for 0);						-- insert
		WHEN 4 THEN RETURN substr(s, 1, p);											-- truncate
		WHEN 5 THEN RETURN s || substr(s, p);										-- extend
		WHEN 6 THEN RETURN lower(s) || CASE WHEN random() < 0.5 THEN ' ' ELSE '' END;	-- case, padding
		ELSE RETURN s;																-- unchanged (valid)
	END CASE;
END
$$;

-- sweep one type: returns (tried, accepted, rejected_22p02, other_errors, disagreements with is_valid)
CREATE FUNCTION pg_temp.sweep(typ text, input_sql text, valid_sql text, seeds text[], n int,
	OUT tried int, OUT accepted int, OUT rejected int, OUT other int, OUT disagree int)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
	s text;
	ok boolean;
	valid boolean;
BEGIN
	tried := 0; accepted := 0; rejected := 0; other := 0; disagree := 0;
	FOR i IN 1..n LOOP
		IF i % 2 = 0 THEN
			s := pg_temp.random_string('0123456789' || 'ABCJUZabcz' || ' -()]\\' || chr(29) || chr(1) || 'é€', 30);
		ELSE
			s := seeds[1 + (i / 2) % array_length(seeds, 1)];
			s := pg_temp.mutate(s);
			IF random() < 0.3 THEN s := pg_temp.mutate(s); END IF;
		END IF;
		tried := tried + 1;
		BEGIN
			EXECUTE input_sql INTO ok USING s;
			accepted := accepted + 1;
		EXCEPTION
			WHEN invalid_text_representation THEN
				rejected := rejected + 1; ok := false;
			WHEN others THEN
				other := other + 1; ok := false;
				RAISE WARNING 'sweep %: % for input % (SQLSTATE %)', typ, SQLERRM, quote_literal(s), SQLSTATE;
		END;
		EXECUTE valid_sql INTO valid USING s;
		IF valid IS DISTINCT FROM ok THEN
			disagree := disagree + 1;
			RAISE WARNING 'sweep %: input function and is_valid disagree on %', typ, quote_literal(s);
		END IF;
	END LOOP;
END
$$;

CREATE TEMP TABLE sweep_result AS
SELECT t.typ, r.*
FROM (VALUES
	('gtin', ARRAY['6291041500213', '96385074', '036000291452', '09521234543213', '7300011000017']),
	('sscc', ARRAY['376104250021234569', '006141411234567890']),
	('gln', ARRAY['0614141000012', '4000001000005']),
	('container_no', ARRAY['CSQU3054383', 'TASU1170000', 'MSKJ1234568', 'csqu 305438 3']),
	('gs1', ARRAY['(01)09521234543213(10)ABC123(17)251231', '013842587609507417181119371',
				  ']C1010952012345678810ABC1' || chr(29) || '2112345' || chr(29) || '17180426',
				  '(00)376104250021234569(37)25(400)PO-4711(410)0614141000012'])
) AS t(typ, seeds),
	LATERAL pg_temp.sweep(t.typ,
		CASE t.typ WHEN 'gs1' THEN 'SELECT hub.gs1_parse($1) IS NOT NULL'
			ELSE format('SELECT $1::hub.%s IS NOT NULL', t.typ) END,
		format('SELECT hub.%s_is_valid($1)', t.typ),
		t.seeds, 100000) AS r;

SELECT ok(tried >= 100000, typ || ': at least 100,000 inputs tried') FROM sweep_result ORDER BY typ;
SELECT is(other, 0, typ || ': every rejection is SQLSTATE 22P02') FROM sweep_result ORDER BY typ;
SELECT is(disagree, 0, typ || ': the input function accepts exactly what is_valid accepts') FROM sweep_result ORDER BY typ;
SELECT ok(accepted > 100 AND rejected > 50000, typ || ': the sweep exercised both acceptance and rejection')
FROM sweep_result ORDER BY typ;
SELECT ok(accepted + rejected + other = tried, typ || ': every input accounted for') FROM sweep_result ORDER BY typ;

SELECT * FROM finish();
ROLLBACK;
