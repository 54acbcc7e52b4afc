/*-------------------------------------------------------------------------
 *
 * logistics_hub.c
 *		Library entry point of the logistics_hub extension.
 *
 * _PG_init must never break plain use: the identifier types and functions
 * work in any backend that loads the library on demand.  Settings that
 * every backend needs are defined here; background workers and settings
 * that only make sense at server start are registered only while the
 * library is being preloaded (shared_preload_libraries) and never during a
 * binary upgrade.  The GUC prefix "logistics_hub." is reserved so that a
 * misspelt setting is reported instead of silently ignored.  The secret
 * keys (extension/sealed.c) are read here too, by the postmaster while
 * preloading, so that every server process inherits them.
 *
 * extension/logistics_hub.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "hub_workers.h"
#include "outbox.h"
#include "sealed.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	hub_outbox_define_gucs();
	hub_user_code_define_gucs();
	hub_workers_define_gucs();
	hub_sealed_define_gucs();
	if (process_shared_preload_libraries_in_progress && !IsBinaryUpgrade)
	{
		hub_shmem_init_hooks();
		hub_workers_register();
	}
#if PG_VERSION_NUM >= 150000
	MarkGUCPrefixReserved("logistics_hub");
#else
	EmitWarningsOnPlaceholders("logistics_hub");
#endif
}

/*
 * hub_libcurl_version --- SQL hub.libcurl_version(): the libcurl the library
 * is linked with, its TLS backend and protocols, as libcurl reports them.
 */
PG_FUNCTION_INFO_V1(hub_libcurl_version);
Datum
hub_libcurl_version(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(curl_version()));
}
