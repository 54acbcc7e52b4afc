/*-------------------------------------------------------------------------
 *
 * fuzz_parsers.c
 *		libFuzzer target for the identifier parsers and the W3C
 *		traceparent parser, built with AddressSanitizer and
 *		UndefinedBehaviorSanitizer.
 *
 * The parsers (GS1 keys, ISO 6346 container numbers, GS1 element strings)
 * are compiled into this program from their own source files, outside the
 * server: inside it, palloc carves chunks out of large blocks, so neither
 * ASan nor valgrind would see a read past the end of an input string.
 * Here palloc is libpgcommon's frontend malloc-per-chunk version, so every
 * overread, use of freed memory or undefined behaviour is caught.  ereport
 * is replaced by a small shim that formats the message (so the formatting
 * of every error detail is exercised too) and longjmps back to the target.
 *
 * Every input that is valid UTF-8 without NUL (what a text datum can hold in
 * a UTF-8 database) is sent through each parser twice, with error_ok true
 * and false, and the two must agree: the non-throwing path accepts exactly
 * what the throwing one accepts (the is_valid functions rely on it).
 * Every input, any bytes, also goes through the traceparent parser (which
 * never throws) in a buffer of exactly its size: what it accepts must come
 * out as a version 00 traceparent that parses again to itself.
 *
 * test/fuzz/fuzz_parsers.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <setjmp.h>

#include "common/string.h"
#include "mb/pg_wchar.h"

/* the parsers, with their static functions */
#include "../../extension/gs1_check.c"
#include "../../extension/gs1_keys.c"
#include "../../extension/container_no.c"
#include "../../extension/gs1_parse.c"
#include "../../extension/traceparent_parse.c"

static sigjmp_buf *fuzz_catch = NULL;
static char fuzz_message[1024];

/* ---------------------------------------------------------------- memory */

/*
 * palloc and friends: one malloc per chunk (so ASan sees its bounds), each
 * remembered so that everything a parser call allocated is freed after the
 * input, as the server's memory context reset would.
 */
typedef struct FuzzChunk
{
	size_t		slot;
	max_align_t align[];
} FuzzChunk;

static FuzzChunk **fuzz_chunks = NULL;
static size_t fuzz_nchunks = 0;
static size_t fuzz_cap = 0;

void *
palloc(Size size)
{
	FuzzChunk  *c = malloc(sizeof(FuzzChunk) + size);

	if (c == NULL)
		abort();
	if (fuzz_nchunks == fuzz_cap)
	{
		fuzz_cap = fuzz_cap ? 2 * fuzz_cap : 1024;
		fuzz_chunks = realloc(fuzz_chunks, fuzz_cap * sizeof(FuzzChunk *));
		if (fuzz_chunks == NULL)
			abort();
	}
	c->slot = fuzz_nchunks;
	fuzz_chunks[fuzz_nchunks++] = c;
	return c->align;
}

void *
palloc0(Size size)
{
	return memset(palloc(size), 0, size);
}

void
pfree(void *pointer)
{
	FuzzChunk  *c = (FuzzChunk *) ((char *) pointer - offsetof(FuzzChunk, align));

	fuzz_chunks[c->slot] = NULL;
	free(c);
}

void *
repalloc(void *pointer, Size size)
{
	FuzzChunk  *c = (FuzzChunk *) ((char *) pointer - offsetof(FuzzChunk, align));
	FuzzChunk  *n = realloc(c, sizeof(FuzzChunk) + size);

	if (n == NULL)
		abort();
	fuzz_chunks[n->slot] = n;
	return n->align;
}

char *
pnstrdup(const char *in, Size len)
{
	char	   *out;

	len = strnlen(in, len);
	out = palloc(len + 1);
	memcpy(out, in, len);
	out[len] = '\0';
	return out;
}

char *
pstrdup(const char *in)
{
	return pnstrdup(in, strlen(in));
}

size_t
pvsnprintf(char *buf, size_t len, const char *fmt, va_list args)
{
	int			n = vsnprintf(buf, len, fmt, args);

	if (n < 0)
		abort();
	return (size_t) n < len ? (size_t) n : (size_t) n + 1;
}

char *
psprintf(const char *fmt,...)
{
	va_list		args;
	char	   *out;
	int			n;

	va_start(args, fmt);
	n = vsnprintf(NULL, 0, fmt, args);
	va_end(args);
	out = palloc(n + 1);
	va_start(args, fmt);
	vsnprintf(out, n + 1, fmt, args);
	va_end(args);
	return out;
}

static void
fuzz_free_all(void)
{
	for (size_t i = 0; i < fuzz_nchunks; i++)
		free(fuzz_chunks[i]);
	fuzz_nchunks = 0;
}

/* ---------------------------------------------------------------- shims */

bool
errstart_cold(int elevel, const char *domain)
{
	return true;
}

bool
errstart(int elevel, const char *domain)
{
	return true;
}

void
errfinish(const char *filename, int lineno, const char *funcname)
{
	if (fuzz_catch == NULL)
		abort();				/* an error outside a parser call */
	siglongjmp(*fuzz_catch, 1);
}

int
errcode(int sqlerrcode)
{
	if (sqlerrcode != ERRCODE_INVALID_TEXT_REPRESENTATION)
		abort();				/* bad text input is always 22P02 */
	return 0;
}

#define FUZZ_FORMAT(fmt) \
	do { \
		va_list		args; \
		va_start(args, fmt); \
		vsnprintf(fuzz_message, sizeof(fuzz_message), fmt, args); \
		va_end(args); \
	} while (0)

int
errmsg(const char *fmt,...)
{
	FUZZ_FORMAT(fmt);
	return 0;
}

int
errdetail(const char *fmt,...)
{
	FUZZ_FORMAT(fmt);
	return 0;
}

int
errdetail_internal(const char *fmt,...)
{
	FUZZ_FORMAT(fmt);
	return 0;
}

int
errhint(const char *fmt,...)
{
	FUZZ_FORMAT(fmt);
	return 0;
}

/* the server's multibyte helpers, for UTF-8 */
int
pg_mblen(const char *mbstr)
{
	return pg_utf_mblen((const unsigned char *) mbstr);
}

int
pg_mbcliplen(const char *mbstr, int len, int limit)
{
	int			clen = 0;

	while (len > 0 && *mbstr)
	{
		int			l = pg_utf_mblen((const unsigned char *) mbstr);

		if (clen + l > limit)
			break;
		clen += l;
		len -= l;
		mbstr += l;
	}
	return clen;
}

int64
pg_strtoint64(const char *s)
{
	return strtoll(s, NULL, 10);
}

/* only the SQL-callable wrappers use these; the target never calls them */
#define FUZZ_UNUSED(ret, name, args) ret name args { abort(); }
FUZZ_UNUSED(text *, cstring_to_text, (const char *s))
FUZZ_UNUSED(char *, text_to_cstring, (const text *t))
FUZZ_UNUSED(struct varlena *, pg_detoast_datum_packed, (struct varlena *datum))
FUZZ_UNUSED(void, pq_begintypsend, (StringInfo buf))
FUZZ_UNUSED(bytea *, pq_endtypsend, (StringInfo buf))
FUZZ_UNUSED(int64, pq_getmsgint64, (StringInfo msg))
FUZZ_UNUSED(JsonbValue *, pushJsonbValue, (JsonbParseState **p, JsonbIteratorToken t, JsonbValue *v))
FUZZ_UNUSED(Jsonb *, JsonbValueToJsonb, (JsonbValue *v))

/* ---------------------------------------------------------------- target */

typedef bool (*FuzzParser) (const char *s, bool error_ok);

static bool
fuzz_gtin(const char *s, bool error_ok)
{
	int64		v;

	return gs1_key_parse(&gtin_kind, s, error_ok, &v);
}

static bool
fuzz_sscc(const char *s, bool error_ok)
{
	int64		v;

	return gs1_key_parse(&sscc_kind, s, error_ok, &v);
}

static bool
fuzz_gln(const char *s, bool error_ok)
{
	int64		v;

	return gs1_key_parse(&gln_kind, s, error_ok, &v);
}

static bool
fuzz_container(const char *s, bool error_ok)
{
	int64		v;

	if (!container_parse(s, error_ok, &v))
		return false;
	/* what was accepted formats back into a valid container number */
	if (!container_parse(container_format(v), true, &v))
		abort();
	return true;
}

static bool
fuzz_gs1(const char *s, bool error_ok)
{
	Gs1Parser	p;

	return gs1_parse_string(&p, s, error_ok);
}

/* run one parser in throwing mode; true when it accepted */
static bool
fuzz_throwing(FuzzParser parse, const char *s)
{
	sigjmp_buf	jb;
	volatile bool ok = false;

	if (sigsetjmp(jb, 0) == 0)
	{
		fuzz_catch = &jb;
		ok = parse(s, false);
		if (!ok)
			abort();			/* throwing mode must throw, not return false */
	}
	fuzz_catch = NULL;
	return ok;
}

/*
 * fuzz_traceparent --- the traceparent parser on size bytes (no NUL after
 * them, so that ASan sees a read past the end): an accepted value must be
 * 55 characters of version 00 that parse again to the same.
 */
static void
fuzz_traceparent(const uint8_t *data, size_t size)
{
	char	   *buf = malloc(size ? size : 1);
	char		out[HUB_TRACEPARENT_LEN + 1];
	char		again[HUB_TRACEPARENT_LEN + 1];
	const char *why = NULL;

	memcpy(buf, data, size);
	if (hub_traceparent_parse(buf, size, out, &why))
	{
		if (strlen(out) != HUB_TRACEPARENT_LEN || out[0] != '0' || out[1] != '0' ||
			!hub_traceparent_parse(out, HUB_TRACEPARENT_LEN, again, NULL) ||
			strcmp(out, again) != 0 || memcmp(out + 2, buf + 2, HUB_TRACEPARENT_LEN - 2) != 0)
			abort();
	}
	else if (why == NULL)
		abort();				/* a refusal always says why */
	free(buf);
}

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const FuzzParser parsers[] = {fuzz_gtin, fuzz_sscc, fuzz_gln, fuzz_container, fuzz_gs1};
	char	   *s;

	fuzz_traceparent(data, size);
	if (memchr(data, 0, size) != NULL ||
		pg_encoding_verifymbstr(PG_UTF8, (const char *) data, (int) size) != (int) size)
		return -1;				/* not something a text value can hold */
	s = malloc(size + 1);
	memcpy(s, data, size);
	s[size] = '\0';
	for (int i = 0; i < (int) lengthof(parsers); i++)
	{
		bool		quiet = parsers[i] (s, true);

		if (quiet != fuzz_throwing(parsers[i], s))
			abort();			/* is_valid and the input function disagree */
		fuzz_free_all();
	}
	free(s);
	return 0;
}
