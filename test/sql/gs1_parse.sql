-- GS1 element strings: bracketed and raw scanner forms.
-- Vectors: LOGISTICS.md 1.4 ((01)38425876095074(17)181119(37)1 and its
-- concatenated form, from python-stdnum tests/test_gs1_128.doctest),
-- (00)376104250021234569 (GS1 General Specifications table 7-9 via zint),
-- (01)09521234543213(10)ABC123(17)251231 (the issue), GS1 syntax engine
-- examples ^010952012345678810ABC1^2112345^17180426 (with GS for ^).
-- GLN 0614141000012 and GSIN 06141411234567890 carry valid mod-10 check
-- digits [derived, LOGISTICS.md 1.2]; weights, dates and text values are
-- made up for the case they test.
\set SHOW_CONTEXT never
SET search_path = public, hub;

-- valid: bracketed form
SELECT gs1_parse('(01)09521234543213(10)ABC123(17)251231');
SELECT gs1_parse('(01)38425876095074(17)181119(37)1');
SELECT gs1_parse('(00)376104250021234569');
SELECT gs1_parse('(00)376104250021234569(02)09521234543213(37)25(400)PO-4711(410)0614141000012(420)10115');
SELECT gs1_parse('(11)240229(13)250100(15)261231(16)270615(3103)001250(3302)012000');
SELECT gs1_parse('(21)A\(1)/B(402)06141411234567890(403)ROUTE-7(401)GINC-1');
-- every weight AI keeps its raw six digits (decimals are the last AI digit)
SELECT ai, gs1_parse('(' || ai || ')001250') AS parsed
FROM (VALUES ('3100'), ('3101'), ('3102'), ('3103'), ('3104'), ('3105'),
			 ('3300'), ('3301'), ('3302'), ('3303'), ('3304'), ('3305')) AS w(ai);
-- dates: day 00 is "unspecified"; leap years by YY mod 4 (2000 is one)
SELECT gs1_parse('(17)000229(11)991200(15)281231');
SELECT gs1_parse('(411)0614141000012(412)0614141000012(413)0614141000012(414)0614141000012(415)0614141000012(416)0614141000012(417)0614141000012');
-- valid: raw form, with and without symbology identifier and GS
SELECT gs1_parse('013842587609507417181119371');
SELECT gs1_parse(']C1010952012345678810ABC1' || chr(29) || '2112345' || chr(29) || '17180426');
SELECT gs1_parse(chr(29) || '0109521234543213' || '17251231' || '10ABC123');
SELECT gs1_parse(']e0' || '0109521234543213' || '3103001250' || '11240229');
SELECT gs1_parse(']Q3' || chr(29) || '0109521234543213' || '10)ABC');
SELECT gs1_parse(']d2' || '00376104250021234569' || '3700000025' || chr(29) || '40206141411234567890' || chr(29) || '400PO1');
SELECT gs1_parse('(01)09521234543213(01)09521234543213') AS repeated_same_value;
SELECT gs1_parse('(01)09521234543213(10)ABC123(17)251231') = gs1_parse('010952123454321310ABC123' || chr(29) || '17251231') AS forms_agree;
SELECT gs1_is_valid('(01)09521234543213') AS ok, gs1_is_valid('(01)09521234543214') AS bad, gs1_is_valid('') AS empty,
	gs1_is_valid('0109521234543213' || chr(29)) AS trailing_gs, gs1_is_valid(']X9(01)09521234543213') AS bad_symbology;

-- invalid: one case per way of failing
SELECT gs1_parse('(99)123');
SELECT gs1_parse('(01)09521234543214');
-- zint: [00]376104250021234568 "Bad checksum '8', expected '9'"
SELECT gs1_parse('00376104250021234568');
SELECT gs1_parse('(17)251301');
SELECT gs1_parse('(17)250230');
SELECT gs1_parse('(15)230229');
SELECT gs1_parse('(11)250431');
SELECT gs1_parse('(17)2512');
SELECT gs1_parse('(10)ABCDEFGHIJKLMNOPQRSTU');
SELECT gs1_parse('(37)123456789');
SELECT gs1_parse('(10)ABC#1');
SELECT gs1_parse('(21)A\(1)/B(401)GINC 1');
SELECT gs1_parse('(10)LOT' || chr(233));
SELECT gs1_parse('(01)0952123454321A');
SELECT gs1_parse('(01)09521234543213(10)');
SELECT gs1_parse('(01');
SELECT gs1_parse('(01)09521234543213(10ABC123');
SELECT gs1_parse('01)09521234543213');
SELECT gs1_parse('(1)23');
SELECT gs1_parse('(01)09521234543213X(10)ABC');
SELECT gs1_parse('');
SELECT gs1_parse(']C1');
SELECT gs1_parse(']A0010952123454321310ABC');
-- missing AI after GS: trailing GS, doubled GS, GS alone
SELECT gs1_parse('010952123454321310ABC123' || chr(29));
SELECT gs1_parse('010952123454321310ABC123' || chr(29) || chr(29) || '17251231');
SELECT gs1_parse(']C1' || chr(29));
SELECT gs1_parse('(01)09521234543213(01)00000096385074');
SELECT gs1_parse('0109521234543213' || chr(29) || '99ABC');
SELECT gs1_parse('0109521234543213' || '3106001250');
SELECT gs1_parse('0109521234543213' || '8' || chr(233) || chr(233));
SELECT gs1_parse('40206141411234567890' || '400PO1');
SELECT gs1_parse('010952123454321');
SELECT gs1_parse('0109521234543213' || '17251' || chr(29) || '10ABC');
SELECT gs1_parse('(410)0614141000013');
