/*-------------------------------------------------------------------------
 *
 * status_map.c
 *		hub.map_status and hub.try_map_status: a system's status code to the
 *		canonical state and overlay, from a backend-local cache.
 *
 * hub.status_map holds one row per (system, lifecycle, code, qualifier,
 * partner); an empty qualifier or partner means "any".  A lookup tries, in
 * order, (qualifier, partner), (any qualifier, partner), (qualifier, profile
 * default) and (any qualifier, profile default): a partner's override wins
 * over the profile, and a qualifier-specific row over a generic one.  Codes
 * are matched case-insensitively after normalisation; EPCIS values are also
 * accepted as URNs (urn:epcglobal:cbv:bizstep:shipping) and as CBV web
 * vocabulary IRIs (https://ref.gs1.org/cbv/BizStep-shipping, cbv:Disp-...).
 *
 * The whole table is loaded with SPI into a hash table in a long-lived
 * memory context on first use.  A statement-level trigger on the table calls
 * hub._status_map_changed(), which queues a relcache invalidation for it;
 * PostgreSQL delivers that at commit to every backend, whose callback drops
 * the cache, so the next statement of every session sees the new mapping.
 *
 * extension/status_map.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/formatting.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#define MAP_KEY_LEN 256

typedef struct MapEntry
{
	char		key[MAP_KEY_LEN];	/* system|lifecycle|code|qualifier|partner */
	char	   *state;
	char	   *overlay;
	char	   *reason;
} MapEntry;

typedef struct KnownEntry
{
	char		key[MAP_KEY_LEN];	/* system or system|lifecycle */
} KnownEntry;

static HTAB *map_cache = NULL;
static HTAB *known_cache = NULL;
static MemoryContext map_context = NULL;
static Oid	map_relid = InvalidOid;
static bool map_callback_registered = false;

/* status_map_invalidate --- relcache callback: drop the cache when the
 * mapping table (or everything) is invalidated. */
static void
status_map_invalidate(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == map_relid)
	{
		map_cache = NULL;
		known_cache = NULL;
		if (map_context)
			MemoryContextReset(map_context);
	}
}

/*
 * normalise_code --- lower-case the code, trimmed, with the EPCIS URN and
 * IRI prefixes removed.
 */
static char *
normalise_code(const char *code)
{
	static const char *const prefixes[] = {
		"urn:epcglobal:cbv:bizstep:", "urn:epcglobal:cbv:disp:",
		"https://ref.gs1.org/cbv/bizstep-", "https://ref.gs1.org/cbv/disp-",
		"https://ns.gs1.org/cbv/bizstep-", "https://ns.gs1.org/cbv/disp-",
		"cbv:bizstep-", "cbv:disp-"
	};
	char	   *s;
	char	   *end;

	while (*code == ' ' || *code == '\t')
		code++;
	s = asc_tolower(code, strlen(code));
	end = s + strlen(s);
	while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
		*--end = '\0';
	for (int i = 0; i < (int) lengthof(prefixes); i++)
		if (strncmp(s, prefixes[i], strlen(prefixes[i])) == 0)
			return s + strlen(prefixes[i]);
	return s;
}

/* make_key --- the hash key of the parts, or false when it is too long. */
static bool
make_key(char *key, const char *system, const char *lifecycle, const char *code,
		 const char *qualifier, const char *partner)
{
	int			n;

	if (lifecycle == NULL)
		n = snprintf(key, MAP_KEY_LEN, "%s", system);
	else if (code == NULL)
		n = snprintf(key, MAP_KEY_LEN, "%s\x1f%s", system, lifecycle);
	else
		n = snprintf(key, MAP_KEY_LEN, "%s\x1f%s\x1f%s\x1f%s\x1f%s",
					 system, lifecycle, code, qualifier, partner);
	return n < MAP_KEY_LEN;
}

static char *
copy_attr(HeapTuple tup, TupleDesc desc, int attno)
{
	char	   *v = SPI_getvalue(tup, desc, attno);

	return v ? MemoryContextStrdup(map_context, v) : NULL;
}

/*
 * status_map_load --- read hub.status_map into the cache.  Rows whose key is
 * too long to cache are skipped (codes that long are refused at insert).
 */
static void
status_map_load(void)
{
	HASHCTL		ctl;

	if (map_cache != NULL)
		return;

	if (map_context == NULL)
		map_context = AllocSetContextCreate(TopMemoryContext, "logistics_hub status map",
											ALLOCSET_DEFAULT_SIZES);
	map_relid = get_relname_relid("status_map", get_namespace_oid("hub", false));
	if (!map_callback_registered)
	{
		CacheRegisterRelcacheCallback(status_map_invalidate, (Datum) 0);
		map_callback_registered = true;
	}

	MemoryContextReset(map_context);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = MAP_KEY_LEN;
	ctl.entrysize = sizeof(MapEntry);
	ctl.hcxt = map_context;
	{
		HTAB	   *cache = hash_create("logistics_hub status map", 1024, &ctl,
										HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
		HTAB	   *known;

		ctl.entrysize = sizeof(KnownEntry);
		known = hash_create("logistics_hub status map systems", 64, &ctl,
							HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

		SPI_connect();
		if (SPI_execute("SELECT system, lifecycle, code, qualifier, partner, state, overlay, reason "
						"FROM hub.status_map", true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read hub.status_map");
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			char	   *system = SPI_getvalue(tup, desc, 1);
			char	   *lifecycle = SPI_getvalue(tup, desc, 2);
			char		key[MAP_KEY_LEN];
			MapEntry   *e;

			if (!make_key(key, system, lifecycle, normalise_code(SPI_getvalue(tup, desc, 3)),
						  asc_tolower(SPI_getvalue(tup, desc, 4), strlen(SPI_getvalue(tup, desc, 4))),
						  asc_tolower(SPI_getvalue(tup, desc, 5), strlen(SPI_getvalue(tup, desc, 5)))))
				continue;
			e = hash_search(cache, key, HASH_ENTER, NULL);
			e->state = copy_attr(tup, desc, 6);
			e->overlay = copy_attr(tup, desc, 7);
			e->reason = copy_attr(tup, desc, 8);
			if (make_key(key, system, NULL, NULL, NULL, NULL))
				hash_search(known, key, HASH_ENTER, NULL);
			if (make_key(key, system, lifecycle, NULL, NULL, NULL))
				hash_search(known, key, HASH_ENTER, NULL);
		}
		SPI_finish();
		map_cache = cache;
		known_cache = known;
	}
}

/* known --- is this system (lifecycle NULL) or system+lifecycle mapped? */
static bool
known(const char *system, const char *lifecycle)
{
	char		key[MAP_KEY_LEN];

	return make_key(key, system, lifecycle, NULL, NULL, NULL) &&
		hash_search(known_cache, key, HASH_FIND, NULL) != NULL;
}

/*
 * status_map_lookup --- the entry for the arguments, trying partner and
 * qualifier specific rows first; NULL when none.
 */
static MapEntry *
status_map_lookup(const char *system, const char *lifecycle, const char *code,
				  const char *qualifier, const char *partner)
{
	const char *quals[2] = {qualifier, ""};
	const char *partners[2] = {partner, ""};
	char	   *ncode = normalise_code(code);

	status_map_load();
	for (int p = 0; p < 2; p++)
		for (int q = 0; q < 2; q++)
		{
			char		key[MAP_KEY_LEN];
			MapEntry   *e;

			if ((p == 0 && partners[0][0] == '\0') || (q == 0 && quals[0][0] == '\0'))
				continue;
			if (!make_key(key, system, lifecycle, ncode, quals[q], partners[p]))
				continue;
			e = hash_search(map_cache, key, HASH_FIND, NULL);
			if (e)
				return e;
		}
	return NULL;
}

/* map_result --- the hub.mapped_status composite of an entry. */
static Datum
map_result(FunctionCallInfo fcinfo, MapEntry *e)
{
	TupleDesc	desc;
	Datum		values[3];
	bool		nulls[3];
	char	   *parts[3] = {e->state, e->overlay, e->reason};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "hub.map_status must return a composite type");
	for (int i = 0; i < 3; i++)
	{
		nulls[i] = (parts[i] == NULL);
		values[i] = nulls[i] ? (Datum) 0 : CStringGetTextDatum(parts[i]);
	}
	return HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls));
}

static char *
arg_text(FunctionCallInfo fcinfo, int n)
{
	if (PG_NARGS() <= n || PG_ARGISNULL(n))
		return "";
	return asc_tolower(text_to_cstring(PG_GETARG_TEXT_PP(n)),
					   VARSIZE_ANY_EXHDR(PG_GETARG_TEXT_PP(n)));
}

/*
 * status_map_common --- shared body of map_status and try_map_status.
 * Unknown system, lifecycle or code: 22023 unless try_only, then NULL.
 */
static Datum
status_map_common(FunctionCallInfo fcinfo, bool try_only)
{
	char	   *system;
	char	   *lifecycle;
	char	   *code;
	MapEntry   *e;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	system = asc_tolower(text_to_cstring(PG_GETARG_TEXT_PP(0)), VARSIZE_ANY_EXHDR(PG_GETARG_TEXT_PP(0)));
	lifecycle = asc_tolower(text_to_cstring(PG_GETARG_TEXT_PP(1)), VARSIZE_ANY_EXHDR(PG_GETARG_TEXT_PP(1)));
	code = text_to_cstring(PG_GETARG_TEXT_PP(2));

	e = status_map_lookup(system, lifecycle, code, arg_text(fcinfo, 3), arg_text(fcinfo, 4));
	if (e)
		return map_result(fcinfo, e);
	if (try_only)
		PG_RETURN_NULL();
	if (!known(system, NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown status system \"%s\"", system),
				 errhint("Built-in systems: odoo, sap, netsuite, oracle_om, x12_214, easypost, epcis, portal; add rows to hub.status_map for another.")));
	if (!known(system, lifecycle))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("system \"%s\" has no mapping for lifecycle \"%s\"", system, lifecycle),
				 errhint("The lifecycles are order, shipment, movement and return.")));
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown status code \"%s\" for system \"%s\", lifecycle \"%s\"",
					code, system, lifecycle),
			 errhint("Add a mapping: INSERT INTO hub.status_map (system, lifecycle, code, state) VALUES ('%s', '%s', '%s', '<canonical state>');",
					 system, lifecycle, code)));
	pg_unreachable();
}

PG_FUNCTION_INFO_V1(hub_map_status);
Datum
hub_map_status(PG_FUNCTION_ARGS)
{
	return status_map_common(fcinfo, false);
}

PG_FUNCTION_INFO_V1(hub_try_map_status);
Datum
hub_try_map_status(PG_FUNCTION_ARGS)
{
	return status_map_common(fcinfo, true);
}

/*
 * hub_status_map_changed --- statement trigger on hub.status_map: queue a
 * relcache invalidation so every backend reloads its cache after commit.
 */
PG_FUNCTION_INFO_V1(hub_status_map_changed);
Datum
hub_status_map_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "hub._status_map_changed must be called as a trigger");
	CacheInvalidateRelcacheByRelid(RelationGetRelid(trigdata->tg_relation));
	return PointerGetDatum(NULL);
}
