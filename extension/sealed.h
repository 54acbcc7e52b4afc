/*-------------------------------------------------------------------------
 *
 * sealed.h
 *		Sealed secrets: endpoint credentials and signing secrets encrypted
 *		under a key read from a file at server start (extension/sealed.c).
 *
 * extension/sealed.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef HUB_SEALED_H
#define HUB_SEALED_H

#include "fmgr.h"

/* Called once from _PG_init: the settings, and the keys while preloading. */
extern void hub_sealed_define_gucs(void);

/*
 * The plain text of one sealed value of an endpoint's column, palloc'd in
 * the current memory context; NULL with *why set (palloc'd, never holding
 * any of the secret) when it cannot be opened.
 */
extern char *hub_secret_open(int32 endpoint_id, const char *column, const bytea *sealed, char **why);

#endif							/* HUB_SEALED_H */
