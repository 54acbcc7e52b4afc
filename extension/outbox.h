/*-------------------------------------------------------------------------
 *
 * outbox.h
 *		Settings of the outbox (event publishing) side of logistics_hub.
 *
 * extension/outbox.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef HUB_OUTBOX_H
#define HUB_OUTBOX_H

/* Called once from _PG_init, before the GUC prefix is reserved. */
extern void hub_outbox_define_gucs(void);

/* user code run as its owner (user_code.c) */
extern int	hub_user_code_timeout_ms;
extern void hub_user_code_define_gucs(void);

/* logistics_hub.unknown_event_types = reject */
extern bool hub_outbox_reject_unknown(void);

/*
 * Limits on inputs: the longest business key (aggregate id, business key,
 * message id, source, correlation and causation id) in bytes, and
 * logistics_hub.max_payload_size, the largest payload in bytes.
 */
#define HUB_KEY_MAXLEN 256
extern int	hub_max_payload_size;

/* logistics_hub.restoring: the session restores a dump (outbox_guc.c) */
extern bool hub_restoring;

/* the transaction id an event id carries (false: not an event id) */
#include "fmgr.h"

struct pg_uuid_t;
extern bool hub_event_id_xid(const struct pg_uuid_t *uuid, uint64 *xid);

/* the contract check of one event (extension/outbox_check.c) */
extern bool hub_outbox_check_event(Datum etype, bool etype_null, Datum agg, bool agg_null,
								   Datum payload, bool payload_null, Datum *id, bool *id_null,
								   Datum correlation, bool correlation_null,
								   Datum causation, bool causation_null, int32 *version);

/* the limits on inputs, raising 22001 and 54000 (extension/outbox_check.c) */
extern void hub_check_key_length(const char *what, Datum value);
extern void hub_check_payload_size(const char *what, Datum payload);

/* an event's occurred_at as RFC 3339 can write it, else 22008 (outbox_check.c) */
extern void hub_check_occurred_at(Datum occurred_at);

/* SQL hub._event_id() */
extern Datum hub_event_id(PG_FUNCTION_ARGS);

#endif							/* HUB_OUTBOX_H */
