/*-------------------------------------------------------------------------
 *
 * gs1_parse.c
 *		hub.gs1_parse(text) and hub.gs1_is_valid(text): GS1 element strings
 *		as printed under a barcode or sent by a scanner.
 *
 * Two forms are accepted:
 *	- the bracketed human-readable form, "(01)09521234543213(10)ABC123";
 *	  a literal "(" inside a value is written "\(";
 *	- the raw scanner form, AIs and values concatenated, with the GS
 *	  character (ASCII 29) after each variable-length value that is not the
 *	  last, optionally preceded by a GS1 symbology identifier (]C1 GS1-128,
 *	  ]e0 GS1 DataBar, ]d2 GS1 DataMatrix, ]Q3 GS1 QR Code) and by one
 *	  leading GS standing for FNC1.  Any other GS must be followed by an AI:
 *	  a trailing or doubled GS is an error, as it means a field was lost.
 *
 * One table, gs1_ais[], describes the Application Identifiers understood:
 * their length (fixed or maximum), character set (digits or GS1 character
 * set 82), and whether they carry a mod-10 check digit or a YYMMDD date.
 * GS1 AIs are prefix-free, so the raw form finds the AI by trying the 2-,
 * 3- and 4-digit candidates in turn.  Fixed-length AIs of the GS1
 * "predefined length" table need no separator; any other value runs to the
 * next GS or the end.
 *
 * Dates: DD = 00 ("day unspecified") is allowed for AIs 11, 13, 15, 16 and
 * 17 (GS1 yymmd0).  February 29 is accepted when YY is a multiple of 4: under
 * GS1's sliding century window (YY within -49..+50 years of the current
 * year) YY maps to 1977..2076 in 2026, and the rule is exact for every
 * window up to 2049, when 2100 (not a leap year) would enter it.  Not
 * reading the clock keeps the functions IMMUTABLE.
 *
 * The result is a jsonb object from AI to its value as text, built with the
 * jsonb API.  A repeated AI with the same value is accepted once; with a
 * different value it is an error.  Every error is 22P02 and names the AI and
 * what is wrong with it.
 *
 * extension/gs1_parse.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "gs1_check.h"

#define GS1_GS			'\x1d'

typedef enum Gs1Check
{
	GS1_CHECK_NONE,
	GS1_CHECK_MOD10,			/* last digit is a GS1 mod-10 check digit */
	GS1_CHECK_DATE				/* YYMMDD, DD may be 00 */
} Gs1Check;

typedef struct Gs1Ai
{
	const char *ai;
	const char *title;
	bool		numeric;		/* digits only, else GS1 character set 82 */
	bool		fixed;			/* exactly `len` characters */
	bool		predefined;		/* fixed and needs no FNC1 separator */
	int			len;			/* fixed length or maximum length */
	Gs1Check	check;
} Gs1Ai;

/* The AIs understood (GS1 syntax dictionary; LOGISTICS.md section 1.4). */
static const Gs1Ai gs1_ais[] = {
	{"00", "SSCC", true, true, true, 18, GS1_CHECK_MOD10},
	{"01", "GTIN", true, true, true, 14, GS1_CHECK_MOD10},
	{"02", "CONTENT", true, true, true, 14, GS1_CHECK_MOD10},
	{"10", "BATCH/LOT", false, false, false, 20, GS1_CHECK_NONE},
	{"11", "PROD DATE", true, true, true, 6, GS1_CHECK_DATE},
	{"13", "PACK DATE", true, true, true, 6, GS1_CHECK_DATE},
	{"15", "BEST BEFORE", true, true, true, 6, GS1_CHECK_DATE},
	{"16", "SELL BY", true, true, true, 6, GS1_CHECK_DATE},
	{"17", "USE BY", true, true, true, 6, GS1_CHECK_DATE},
	{"21", "SERIAL", false, false, false, 20, GS1_CHECK_NONE},
	{"37", "COUNT", true, false, false, 8, GS1_CHECK_NONE},
	{"3100", "NET WEIGHT (kg)", true, true, true, 6, GS1_CHECK_NONE},
	{"3101", "NET WEIGHT (kg)", true, true, true, 6, GS1_CHECK_NONE},
	{"3102", "NET WEIGHT (kg)", true, true, true, 6, GS1_CHECK_NONE},
	{"3103", "NET WEIGHT (kg)", true, true, true, 6, GS1_CHECK_NONE},
	{"3104", "NET WEIGHT (kg)", true, true, true, 6, GS1_CHECK_NONE},
	{"3105", "NET WEIGHT (kg)", true, true, true, 6, GS1_CHECK_NONE},
	{"3300", "GROSS WEIGHT (kg)", true, true, true, 6, GS1_CHECK_NONE},
	{"3301", "GROSS WEIGHT (kg)", true, true, true, 6, GS1_CHECK_NONE},
	{"3302", "GROSS WEIGHT (kg)", true, true, true, 6, GS1_CHECK_NONE},
	{"3303", "GROSS WEIGHT (kg)", true, true, true, 6, GS1_CHECK_NONE},
	{"3304", "GROSS WEIGHT (kg)", true, true, true, 6, GS1_CHECK_NONE},
	{"3305", "GROSS WEIGHT (kg)", true, true, true, 6, GS1_CHECK_NONE},
	{"400", "ORDER NUMBER", false, false, false, 30, GS1_CHECK_NONE},
	{"401", "GINC", false, false, false, 30, GS1_CHECK_NONE},
	{"402", "GSIN", true, true, false, 17, GS1_CHECK_MOD10},
	{"403", "ROUTE", false, false, false, 30, GS1_CHECK_NONE},
	{"410", "SHIP TO LOC", true, true, true, 13, GS1_CHECK_MOD10},
	{"411", "BILL TO", true, true, true, 13, GS1_CHECK_MOD10},
	{"412", "PURCHASE FROM", true, true, true, 13, GS1_CHECK_MOD10},
	{"413", "SHIP FOR LOC", true, true, true, 13, GS1_CHECK_MOD10},
	{"414", "LOC No.", true, true, true, 13, GS1_CHECK_MOD10},
	{"415", "PAY TO", true, true, true, 13, GS1_CHECK_MOD10},
	{"416", "PROD/SERV LOC", true, true, true, 13, GS1_CHECK_MOD10},
	{"417", "PARTY", true, true, true, 13, GS1_CHECK_MOD10},
	{"420", "SHIP TO POST", false, false, false, 20, GS1_CHECK_NONE},
};

/* One parsed element: the AI's table entry and a palloc'd copy of the value. */
typedef struct Gs1Element
{
	const Gs1Ai *ai;
	char	   *value;
} Gs1Element;

typedef struct Gs1Parser
{
	const char *input;			/* as given, for messages */
	char	   *shown;			/* input with GS shown as <GS> */
	bool		error_ok;
	int			n;
	Gs1Element	elems[lengthof(gs1_ais)];	/* one per distinct AI at most */
} Gs1Parser;

/* Characters of GS1 character set 82 other than digits and letters. */
static const char gs1_cset82_punct[] = "!\"%&'()*+,-./:;<=>?_";

/* GS1 symbology identifiers a scanner may put in front of the data. */
static const char *const gs1_symbology_ids[] = {"]C1", "]e0", "]d2", "]Q3"};

#define GS1_SUPPORTED_HINT \
	"Supported AIs: 00, 01, 02, 10, 11, 13, 15, 16, 17, 21, 37, 3100-3105, 3300-3305, 400-403, 410-417, 420."

/*
 * gs1_fail --- report a problem with the element string; returns false (or
 * raises 22P02 unless the parser is in error-ok mode).
 */
#define gs1_fail(p, hint, ...) \
	lh_input_error((p)->error_ok, "GS1 element string", (p)->shown, hint, __VA_ARGS__)

/* gs1_lookup --- the table entry for the AI of `len` digits at s, or NULL. */
static const Gs1Ai *
gs1_lookup(const char *s, int len)
{
	for (int i = 0; i < (int) lengthof(gs1_ais); i++)
		if ((int) strlen(gs1_ais[i].ai) == len && strncmp(gs1_ais[i].ai, s, len) == 0)
			return &gs1_ais[i];
	return NULL;
}

/*
 * gs1_raw_ai --- the AI at the start of raw data s: GS1 AIs are prefix-free,
 * so the 2-, 3- and 4-digit candidates are tried in turn.  NULL if none.
 */
static const Gs1Ai *
gs1_raw_ai(const char *s)
{
	int			digits = (int) strspn(s, "0123456789");
	const Gs1Ai *ai = NULL;

	for (int len = 2; len <= 4 && len <= digits && ai == NULL; len++)
		ai = gs1_lookup(s, len);
	return ai;
}

/* gs1_days_in_month --- days of month mm (1-12) in year 20yy / 19yy. */
static int
gs1_days_in_month(int yy, int mm)
{
	static const int days[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

	if (mm == 2)
		return (yy % 4 == 0) ? 29 : 28;
	return days[mm - 1];
}

/*
 * gs1_check_value --- validate one value against its AI: length, character
 * set, check digit or date.
 */
static bool
gs1_check_value(Gs1Parser *p, const Gs1Ai *ai, const char *v)
{
	int			len = (int) strlen(v);

	if (len == 0)
		return gs1_fail(p, NULL, "AI (%s) has no value.", ai->ai);
	if (ai->fixed ? len != ai->len : len > ai->len)
		return gs1_fail(p, NULL, "AI (%s) %s takes %s%d characters; \"%s\" has %d.",
						ai->ai, ai->title, ai->fixed ? "" : "at most ", ai->len, v, len);
	for (int i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) v[i];
		bool		ok = ai->numeric ? (c >= '0' && c <= '9') :
			((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') ||
			 (c >= 'a' && c <= 'z') || (c != '\0' && strchr(gs1_cset82_punct, c)));

		if (!ok)
			return gs1_fail(p, ai->numeric ? NULL :
							"GS1 text values use digits, letters and !\"%&'()*+,-./:;<=>?_ only.",
							"AI (%s) %s: character \"%s\" at position %d of its value is not %s.",
							ai->ai, ai->title, lh_char_at(v + i), i + 1,
							ai->numeric ? "a digit" : "in the GS1 character set");
	}
	if (ai->check == GS1_CHECK_MOD10)
	{
		int			expected = lh_gs1_mod10(v, len - 1);

		if (v[len - 1] - '0' != expected)
			return gs1_fail(p, psprintf("The expected check digit is %d.", expected),
							"AI (%s) %s check digit is %c, but the other digits call for %d.",
							ai->ai, ai->title, v[len - 1], expected);
	}
	else if (ai->check == GS1_CHECK_DATE)
	{
		int			yy = (v[0] - '0') * 10 + (v[1] - '0');
		int			mm = (v[2] - '0') * 10 + (v[3] - '0');
		int			dd = (v[4] - '0') * 10 + (v[5] - '0');

		if (mm < 1 || mm > 12)
			return gs1_fail(p, NULL, "AI (%s) %s expects a date YYMMDD; month %02d is not valid.",
							ai->ai, ai->title, mm);
		if (dd > gs1_days_in_month(yy, mm))
			return gs1_fail(p, NULL, "AI (%s) %s expects a date YYMMDD; day %02d is not valid in month %02d of year %02d.",
							ai->ai, ai->title, dd, mm, yy);
	}
	return true;
}

/*
 * gs1_add --- record an element after validating it; a repeated AI must
 * repeat the same value.
 */
static bool
gs1_add(Gs1Parser *p, const Gs1Ai *ai, char *value)
{
	if (!gs1_check_value(p, ai, value))
		return false;
	for (int i = 0; i < p->n; i++)
	{
		if (p->elems[i].ai != ai)
			continue;
		if (strcmp(p->elems[i].value, value) == 0)
			return true;
		return gs1_fail(p, NULL, "AI (%s) appears twice with different values, \"%s\" and \"%s\".",
						ai->ai, p->elems[i].value, value);
	}
	Assert(p->n < (int) lengthof(p->elems));
	p->elems[p->n].ai = ai;
	p->elems[p->n].value = value;
	p->n++;
	return true;
}

/*
 * gs1_parse_bracketed --- "(AI)value(AI)value..."; `s` starts at "(".
 */
static bool
gs1_parse_bracketed(Gs1Parser *p, const char *s)
{
	while (*s)
	{
		const char *close;
		const Gs1Ai *ai;
		StringInfoData value;

		if (*s != '(')
			return gs1_fail(p, NULL, "Expected \"(\" to start an AI at \"%s\".", s);
		close = strchr(s, ')');
		if (close == NULL)
			return gs1_fail(p, NULL, "The AI starting at \"%s\" has no closing parenthesis.", s);
		if (close - s - 1 < 2 || close - s - 1 > 4 ||
			strspn(s + 1, "0123456789") != (size_t) (close - s - 1))
			return gs1_fail(p, NULL, "\"%.*s\" is not an Application Identifier of 2 to 4 digits.",
							(int) (close - s + 1), s);
		ai = gs1_lookup(s + 1, (int) (close - s - 1));
		if (ai == NULL)
			return gs1_fail(p, GS1_SUPPORTED_HINT,
							"AI (%.*s) is unknown or not supported.", (int) (close - s - 1), s + 1);
		initStringInfo(&value);
		for (s = close + 1; *s && *s != '('; s++)
		{
			if (*s == '\\' && s[1] == '(')
				s++;
			appendStringInfoChar(&value, *s);
		}
		if (!gs1_add(p, ai, value.data))
			return false;
	}
	return true;
}

/*
 * gs1_parse_raw --- concatenated AIs and values with GS separators; `s`
 * starts at an AI or at the leading GS (FNC1).  A GS not followed by an AI
 * fails.
 */
static bool
gs1_parse_raw(Gs1Parser *p, const char *s)
{
	while (*s)
	{
		const Gs1Ai *ai;
		int			vlen;

		if (*s == GS1_GS)
		{
			s++;
			if (*s == '\0' || *s == GS1_GS)
				return gs1_fail(p, "Remove the extra GS, or supply the missing element.",
								"The GS separator at position %d is not followed by an AI.",
								(int) (s - p->input));
			continue;
		}
		ai = gs1_raw_ai(s);
		if (ai == NULL)
			return gs1_fail(p, GS1_SUPPORTED_HINT,
							"No supported AI starts at \"%.*s\".",
							pg_mbcliplen(s, (int) strlen(s), 4), s);
		s += strlen(ai->ai);
		if (ai->fixed)
		{
			vlen = (int) strnlen(s, ai->len);
			for (int i = 0; i < vlen; i++)
				if (s[i] == GS1_GS)
				{
					vlen = i;
					break;
				}
		}
		else
			vlen = (int) strcspn(s, "\x1d");
		if (!gs1_add(p, ai, pnstrdup(s, vlen)))
			return false;
		s += vlen;
		if (*s && *s != GS1_GS && !ai->predefined)
			return gs1_fail(p, NULL, "AI (%s) %s is not of predefined length and must be followed by a GS separator.",
							ai->ai, ai->title);
	}
	return true;
}

/*
 * gs1_parse_string --- parse `input` into p->elems: strip a symbology
 * identifier, then hand over to the bracketed or the raw parser.  Returns
 * false on bad input when error_ok, else raises 22P02.
 */
static bool
gs1_parse_string(Gs1Parser *p, const char *input, bool error_ok)
{
	const char *s = input;
	StringInfoData shown;
	const Gs1Ai *ai;
	int			n;

	p->input = input;
	p->error_ok = error_ok;
	p->n = 0;
	initStringInfo(&shown);
	for (const char *c = input; *c; c++)
	{
		if (*c == GS1_GS)
			appendStringInfoString(&shown, "<GS>");
		else
			appendStringInfoChar(&shown, *c);
	}
	p->shown = shown.data;

	if (s[0] == ']')
	{
		int			i;

		for (i = 0; i < (int) lengthof(gs1_symbology_ids); i++)
			if (strncmp(s, gs1_symbology_ids[i], 3) == 0)
				break;
		if (i == (int) lengthof(gs1_symbology_ids))
			return gs1_fail(p, "Strip the symbology identifier, or send the data of a GS1 symbol.",
							"The string does not start with a GS1 symbology identifier (]C1, ]e0, ]d2 or ]Q3).");
		s += 3;
	}
	if (*s == '\0')
		return gs1_fail(p, NULL, "The element string is empty.");
	if (*s == '(')
		return gs1_parse_bracketed(p, s);

	/*
	 * "01)..." is a bracketed string that lost its "(".  Say so, unless the
	 * digits start a text AI whose value may legitimately begin with ")".
	 */
	n = (int) strspn(s, "0123456789");
	if (n >= 2 && n <= 4 && s[n] == ')' &&
		((ai = gs1_raw_ai(s)) == NULL || ai->numeric))
		return gs1_fail(p, "A bracketed element string starts with \"(\".",
						"The \")\" after AI %.*s has no opening parenthesis.", n, s);
	return gs1_parse_raw(p, s);
}

/*
 * gs1_parse --- SQL hub.gs1_parse(text) returns jsonb: {"AI": "value", ...}.
 */
PG_FUNCTION_INFO_V1(gs1_parse);
Datum
gs1_parse(PG_FUNCTION_ARGS)
{
	Gs1Parser	p;
	JsonbParseState *state = NULL;
	JsonbValue *result;

	gs1_parse_string(&p, text_to_cstring(PG_GETARG_TEXT_PP(0)), false);

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < p.n; i++)
	{
		JsonbValue	k;
		JsonbValue	v;

		k.type = jbvString;
		k.val.string.val = (char *) p.elems[i].ai->ai;
		k.val.string.len = (int) strlen(p.elems[i].ai->ai);
		v.type = jbvString;
		v.val.string.val = p.elems[i].value;
		v.val.string.len = (int) strlen(p.elems[i].value);
		pushJsonbValue(&state, WJB_KEY, &k);
		pushJsonbValue(&state, WJB_VALUE, &v);
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	PG_RETURN_JSONB_P(JsonbValueToJsonb(result));
}

/*
 * gs1_is_valid --- SQL hub.gs1_is_valid(text): true if gs1_parse would
 * accept the string; never raises.
 */
PG_FUNCTION_INFO_V1(gs1_is_valid);
Datum
gs1_is_valid(PG_FUNCTION_ARGS)
{
	Gs1Parser	p;

	PG_RETURN_BOOL(gs1_parse_string(&p, text_to_cstring(PG_GETARG_TEXT_PP(0)), true));
}
