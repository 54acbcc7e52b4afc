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

/* logistics_hub.unknown_event_types = reject */
extern bool hub_outbox_reject_unknown(void);

#endif							/* HUB_OUTBOX_H */
