/*-------------------------------------------------------------------------
 *
 * nats.h
 *		What the two sides of NATS JetStream share (nats_transport.c, the
 *		push side; nats_inbound.c, a stream as a poller source): an
 *		endpoint's connection, and the hand-over of what libnats' threads
 *		receive to the worker's loop (a mutex-protected list and an eventfd
 *		in the loop's epoll set, drained on the worker's thread).
 *
 * workers/nats.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef HUB_NATS_H
#define HUB_NATS_H

#include <nats/nats.h>

#include "http.h"
#include "lib/ilist.h"
#include "nodes/pg_list.h"

/* an endpoint's connection (HubEndpoint.transport_state) */
typedef struct NatsConn
{
	dlist_node	node;			/* in the list of connections */
	HubEndpoint *ep;			/* NULL once retired (settings changed) */
	char	   *key;			/* URL, auth kind and secret it was made with */
	natsConnection *nc;			/* NULL while connecting */
	jsCtx	   *js;
	bool		connecting;		/* its connect thread runs (nc, js not set) */
	List	   *waiting;		/* of HubRequest *: started while connecting */
	int			in_flight;		/* requests not answered yet (waiting too) */
	int			subscriptions;	/* poller sources subscribed through it */
	bool		published;		/* an async publish went through: libnats'
								 * reply subscription (and its thread) exist */
	/* written by libnats threads: times the connection was lost */
	volatile uint32 disconnects;
} NatsConn;

/* nats_transport.c */
extern NatsConn *hub_nats_connection(HubEndpoint *ep, char **error);
extern void hub_nats_release(NatsConn *c);
extern void hub_nats_block_signals(void);
extern void hub_nats_restore_signals(void);
extern void hub_nats_on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);
extern int	hub_nats_thread(void *(*fn) (void *), void *arg);
extern void *hub_nats_handoff_new(void);
extern void hub_nats_handoff(void *handoff, void (*fn) (void *), void *arg);

/* nats_inbound.c */
extern void hub_nats_inbound_received(int poller_id, natsMsg *msg);
extern void hub_nats_inbound_refresh(bool now);
extern void hub_nats_inbound_wake(void);
extern bool hub_nats_inbound_pending(void);
extern void hub_nats_inbound_record(void);
extern void hub_nats_inbound_abort_all(void);

#endif							/* HUB_NATS_H */
