/*
 * 00_identifiers.sql --- the identifier types (GS1 keys, ISO 6346 container
 * numbers), as released in 0.1.0 (sql/logistics_hub--0.1.0.sql) and changed
 * by later steps: their current definition.
 */

COMMENT ON SCHEMA hub IS 'logistics_hub: integration hub between ERP, WMS, TMS, carriers and customer portals';

/*
 * GS1 keys and ISO 6346 container numbers.  Each is an 8-byte integer
 * underneath (LIKE pg_catalog.int8): only the I/O functions are in C; the
 * comparison, hash and sort support are PostgreSQL's own int8 functions,
 * bound below for each type.
 */
CREATE TYPE hub.gtin;
CREATE TYPE hub.sscc;
CREATE TYPE hub.gln;
CREATE TYPE hub.container_no;

CREATE FUNCTION hub.gtin_in(cstring) RETURNS hub.gtin
	AS 'MODULE_PATHNAME', 'gtin_in' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION hub.gtin_out(hub.gtin) RETURNS cstring
	AS 'MODULE_PATHNAME', 'gtin_out' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION hub.gtin_recv(internal) RETURNS hub.gtin
	AS 'MODULE_PATHNAME', 'gtin_recv' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION hub.gtin_send(hub.gtin) RETURNS bytea
	AS 'MODULE_PATHNAME', 'gtin_send' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE TYPE hub.gtin (
	INPUT = hub.gtin_in, OUTPUT = hub.gtin_out,
	RECEIVE = hub.gtin_recv, SEND = hub.gtin_send,
	LIKE = pg_catalog.int8, CATEGORY = 'U'
);

CREATE FUNCTION hub.sscc_in(cstring) RETURNS hub.sscc
	AS 'MODULE_PATHNAME', 'sscc_in' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION hub.sscc_out(hub.sscc) RETURNS cstring
	AS 'MODULE_PATHNAME', 'sscc_out' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION hub.sscc_recv(internal) RETURNS hub.sscc
	AS 'MODULE_PATHNAME', 'sscc_recv' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION hub.sscc_send(hub.sscc) RETURNS bytea
	AS 'MODULE_PATHNAME', 'sscc_send' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE TYPE hub.sscc (
	INPUT = hub.sscc_in, OUTPUT = hub.sscc_out,
	RECEIVE = hub.sscc_recv, SEND = hub.sscc_send,
	LIKE = pg_catalog.int8, CATEGORY = 'U'
);

CREATE FUNCTION hub.gln_in(cstring) RETURNS hub.gln
	AS 'MODULE_PATHNAME', 'gln_in' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION hub.gln_out(hub.gln) RETURNS cstring
	AS 'MODULE_PATHNAME', 'gln_out' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION hub.gln_recv(internal) RETURNS hub.gln
	AS 'MODULE_PATHNAME', 'gln_recv' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION hub.gln_send(hub.gln) RETURNS bytea
	AS 'MODULE_PATHNAME', 'gln_send' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE TYPE hub.gln (
	INPUT = hub.gln_in, OUTPUT = hub.gln_out,
	RECEIVE = hub.gln_recv, SEND = hub.gln_send,
	LIKE = pg_catalog.int8, CATEGORY = 'U'
);

CREATE FUNCTION hub.container_no_in(cstring) RETURNS hub.container_no
	AS 'MODULE_PATHNAME', 'container_no_in' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION hub.container_no_out(hub.container_no) RETURNS cstring
	AS 'MODULE_PATHNAME', 'container_no_out' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION hub.container_no_recv(internal) RETURNS hub.container_no
	AS 'MODULE_PATHNAME', 'container_no_recv' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION hub.container_no_send(hub.container_no) RETURNS bytea
	AS 'MODULE_PATHNAME', 'container_no_send' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE TYPE hub.container_no (
	INPUT = hub.container_no_in, OUTPUT = hub.container_no_out,
	RECEIVE = hub.container_no_recv, SEND = hub.container_no_send,
	LIKE = pg_catalog.int8, CATEGORY = 'U'
);

COMMENT ON TYPE hub.gtin IS 'GS1 Global Trade Item Number: GTIN-8, -12, -13 or -14 with a valid check digit, stored and shown as 14 digits';
COMMENT ON TYPE hub.sscc IS 'GS1 Serial Shipping Container Code: 18 digits with a valid check digit (pallet and parcel labels, AI 00)';
COMMENT ON TYPE hub.gln IS 'GS1 Global Location Number: 13 digits with a valid check digit (warehouses, docks, parties)';
COMMENT ON TYPE hub.container_no IS 'ISO 6346 freight container number: owner code, category U/J/Z, serial and check digit, shown as 11 upper-case characters';

/*
 * Comparison operators, btree and hash operator classes, text casts and the
 * non-throwing validity test, the same for each of the four types.  They are
 * created in one loop because they differ only in the type name; the C
 * validity test is named <type>_is_valid.
 */
DO $$
DECLARE
	t text;
	op record;
BEGIN
	FOREACH t IN ARRAY ARRAY['gtin', 'sscc', 'gln', 'container_no'] LOOP
		FOR op IN
			SELECT * FROM (VALUES
				('eq', '=', 'int8eq', 'equal to', '<>', '='),
				('ne', '<>', 'int8ne', 'not equal to', '=', '<>'),
				('lt', '<', 'int8lt', 'less than', '>=', '>'),
				('le', '<=', 'int8le', 'less than or equal to', '>', '>='),
				('gt', '>', 'int8gt', 'greater than', '<=', '<'),
				('ge', '>=', 'int8ge', 'greater than or equal to', '<', '<='))
				AS v(suffix, sym, internal_fn, words, negator, commutator)
		LOOP
			EXECUTE format('CREATE FUNCTION hub.%1$s_%2$s(hub.%1$s, hub.%1$s) RETURNS boolean '
						   'AS %3$L LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF',
						   t, op.suffix, op.internal_fn);
			EXECUTE format('COMMENT ON FUNCTION hub.%1$s_%2$s(hub.%1$s, hub.%1$s) IS %3$L',
						   t, op.suffix, format('%s %s: implementation of the %s operator', t, op.words, op.sym));
			EXECUTE format('CREATE OPERATOR hub.%2$s (LEFTARG = hub.%1$s, RIGHTARG = hub.%1$s, '
						   'FUNCTION = hub.%1$s_%3$s, COMMUTATOR = OPERATOR(hub.%4$s), NEGATOR = OPERATOR(hub.%5$s), '
						   'RESTRICT = %6$s, JOIN = %7$s%8$s)',
						   t, op.sym, op.suffix, op.commutator, op.negator,
						   CASE op.suffix WHEN 'eq' THEN 'eqsel' WHEN 'ne' THEN 'neqsel'
										  WHEN 'lt' THEN 'scalarltsel' WHEN 'le' THEN 'scalarlesel'
										  WHEN 'gt' THEN 'scalargtsel' ELSE 'scalargesel' END,
						   CASE op.suffix WHEN 'eq' THEN 'eqjoinsel' WHEN 'ne' THEN 'neqjoinsel'
										  WHEN 'lt' THEN 'scalarltjoinsel' WHEN 'le' THEN 'scalarlejoinsel'
										  WHEN 'gt' THEN 'scalargtjoinsel' ELSE 'scalargejoinsel' END,
						   CASE op.suffix WHEN 'eq' THEN ', HASHES, MERGES' ELSE '' END);
			EXECUTE format('COMMENT ON OPERATOR hub.%2$s (hub.%1$s, hub.%1$s) IS %3$L',
						   t, op.sym, format('%s %s', t, op.words));
		END LOOP;

		EXECUTE format('CREATE FUNCTION hub.%1$s_cmp(hub.%1$s, hub.%1$s) RETURNS integer '
					   'AS ''btint8cmp'' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF', t);
		EXECUTE format('CREATE FUNCTION hub.%1$s_hash(hub.%1$s) RETURNS integer '
					   'AS ''hashint8'' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE', t);
		EXECUTE format('CREATE FUNCTION hub.%1$s_hash_extended(hub.%1$s, bigint) RETURNS bigint '
					   'AS ''hashint8extended'' LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE', t);
		EXECUTE format('COMMENT ON FUNCTION hub.%1$s_cmp(hub.%1$s, hub.%1$s) IS %2$L', t, t || ' btree comparison support');
		EXECUTE format('COMMENT ON FUNCTION hub.%1$s_hash(hub.%1$s) IS %2$L', t, t || ' hash support');
		EXECUTE format('COMMENT ON FUNCTION hub.%1$s_hash_extended(hub.%1$s, bigint) IS %2$L', t, t || ' extended hash support');

		EXECUTE format('CREATE OPERATOR CLASS hub.%1$s_ops DEFAULT FOR TYPE hub.%1$s USING btree AS '
					   'OPERATOR 1 hub.<, OPERATOR 2 hub.<=, OPERATOR 3 hub.=, OPERATOR 4 hub.>=, OPERATOR 5 hub.>, '
					   'FUNCTION 1 hub.%1$s_cmp(hub.%1$s, hub.%1$s), '
					   'FUNCTION 2 (hub.%1$s, hub.%1$s) pg_catalog.btint8sortsupport(internal)', t);
		EXECUTE format('CREATE OPERATOR CLASS hub.%1$s_hash_ops DEFAULT FOR TYPE hub.%1$s USING hash AS '
					   'OPERATOR 1 hub.=, FUNCTION 1 hub.%1$s_hash(hub.%1$s), '
					   'FUNCTION 2 hub.%1$s_hash_extended(hub.%1$s, bigint)', t);
		EXECUTE format('COMMENT ON OPERATOR CLASS hub.%1$s_ops USING btree IS %2$L', t, 'default btree operator class for ' || t);
		EXECUTE format('COMMENT ON OPERATOR CLASS hub.%1$s_hash_ops USING hash IS %2$L', t, 'default hash operator class for ' || t);

		EXECUTE format('CREATE CAST (hub.%1$s AS text) WITH INOUT AS ASSIGNMENT', t);
		EXECUTE format('CREATE CAST (text AS hub.%1$s) WITH INOUT', t);
		EXECUTE format('COMMENT ON CAST (hub.%1$s AS text) IS %2$L', t, 'canonical text form of a ' || t);
		EXECUTE format('COMMENT ON CAST (text AS hub.%1$s) IS %2$L', t, 'parse and validate a ' || t || '; invalid input raises 22P02');

		EXECUTE format('CREATE FUNCTION hub.%1$s_is_valid(text) RETURNS boolean '
					   'AS ''MODULE_PATHNAME'', ''%1$s_is_valid'' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE', t);
		EXECUTE format('COMMENT ON FUNCTION hub.%1$s_is_valid(text) IS %2$L', t,
					   'true if the text is a valid ' || t || ' (the input function would accept it); never raises');
	END LOOP;
END
$$;

COMMENT ON FUNCTION hub.gtin_in(cstring) IS 'gtin text input';
COMMENT ON FUNCTION hub.gtin_out(hub.gtin) IS 'gtin text output (14 digits)';
COMMENT ON FUNCTION hub.gtin_recv(internal) IS 'gtin binary input';
COMMENT ON FUNCTION hub.gtin_send(hub.gtin) IS 'gtin binary output';
COMMENT ON FUNCTION hub.sscc_in(cstring) IS 'sscc text input';
COMMENT ON FUNCTION hub.sscc_out(hub.sscc) IS 'sscc text output (18 digits)';
COMMENT ON FUNCTION hub.sscc_recv(internal) IS 'sscc binary input';
COMMENT ON FUNCTION hub.sscc_send(hub.sscc) IS 'sscc binary output';
COMMENT ON FUNCTION hub.gln_in(cstring) IS 'gln text input';
COMMENT ON FUNCTION hub.gln_out(hub.gln) IS 'gln text output (13 digits)';
COMMENT ON FUNCTION hub.gln_recv(internal) IS 'gln binary input';
COMMENT ON FUNCTION hub.gln_send(hub.gln) IS 'gln binary output';
COMMENT ON FUNCTION hub.container_no_in(cstring) IS 'container_no text input';
COMMENT ON FUNCTION hub.container_no_out(hub.container_no) IS 'container_no text output (11 characters)';
COMMENT ON FUNCTION hub.container_no_recv(internal) IS 'container_no binary input';
COMMENT ON FUNCTION hub.container_no_send(hub.container_no) IS 'container_no binary output';

CREATE FUNCTION hub.gtin_format(hub.gtin, len integer) RETURNS text
	AS 'MODULE_PATHNAME', 'gtin_format' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION hub.gtin_format(hub.gtin, integer) IS
	'the GTIN written with len digits (8, 12, 13 or 14); an error when its leading digits are not zero';

CREATE FUNCTION hub.make_sscc(extension_digit integer, company_prefix text, serial_reference bigint)
	RETURNS hub.sscc
	AS 'MODULE_PATHNAME', 'make_sscc' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION hub.make_sscc(integer, text, bigint) IS
	'build an SSCC from extension digit, GS1 company prefix (4-12 digits) and serial reference; the check digit is computed';

CREATE FUNCTION hub.gs1_parse(text) RETURNS jsonb
	AS 'MODULE_PATHNAME', 'gs1_parse' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION hub.gs1_parse(text) IS
	'parse a GS1 element string, bracketed "(01)...(10)..." or raw scanner form with GS separators, into {"AI": "value"}; validates lengths, check digits and dates';

CREATE FUNCTION hub.gs1_is_valid(text) RETURNS boolean
	AS 'MODULE_PATHNAME', 'gs1_is_valid' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION hub.gs1_is_valid(text) IS
	'true if hub.gs1_parse would accept the element string; never raises';

CREATE FUNCTION hub.libcurl_version() RETURNS text
	AS 'MODULE_PATHNAME', 'hub_libcurl_version' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION hub.libcurl_version() IS
	'the libcurl version, TLS library and protocols the hub''s HTTP workers are linked with';
