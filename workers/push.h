/*-------------------------------------------------------------------------
 *
 * push.h
 *		The push side of a dispatcher: deliveries claimed into requests
 *		(push_claim.c), their outcomes recorded (push_record.c), and the
 *		housekeeping of dispatcher 0 (maintenance.c).
 *
 * A push request is one delivery, several of a batch subscription, or one
 * event of a lease group (group set: the group's delivery and lease); it
 * begins with the engine's HubRequest (http.h).
 *
 * workers/push.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef HUB_PUSH_H
#define HUB_PUSH_H

#include "http.h"

struct HubGroup;

typedef struct HubPushRequest
{
	HubRequest	req;			/* first: the engine's part */
	int			subscription_id;
	int			batch_max;
	bool		batch;
	int			n;				/* deliveries */
	int			cap;
	int			events;			/* events in the body (a batch delivery has several) */
	int64	   *delivery_ids;
	int64	   *lease_tokens;
	char	   *webhook_id;
	const char *content_type;
	char	   *traceparent;	/* of its (first) event; NULL: no header */
	struct HubGroup *group;		/* NULL: not of a lease group */
	int			group_slot;		/* its event's place in the group */
	/* the (first) event's, for other transports (hub_push_request_event) */
	char	   *event_id;
	char	   *event_type;
	char	   *aggregate_id;	/* NULL: none */
	char	   *correlation_id; /* NULL: none */
} HubPushRequest;

/*
 * what a transport other than HTTP needs of a push request's event
 * (transport.h), besides the body rendered per the subscription's
 * body_format
 */
typedef struct HubPushEvent
{
	const char *event_id;		/* the message id: exactly once downstream */
	const char *event_type;
	const char *aggregate_id;	/* NULL: none */
	const char *correlation_id; /* NULL: none */
	const char *traceparent;	/* W3C trace context (a valid one); NULL: none */
	bool		batch;			/* the body is a batch (JSON array) of events */
	int			events;			/* events in the body */
} HubPushEvent;

/* a finished request's outcome, kept until the record step */
typedef struct HubResult
{
	HubPushRequest *req;
	long		http_status;	/* 0: none (transport error) */
	char	   *error;			/* NULL on success */
	int			latency_ms;
	int64		retry_after_s;	/* -1: none */
	bool		deferred;		/* give back without an attempt */
	TimestampTz defer_until;
	bool		counted;		/* its failure already counts through another result */
} HubResult;

/*
 * A lease group (hub.subscriptions.lease_group): one delivery, one lease,
 * one request per event.  Each request's outcome waits in its slot until
 * the last one is in; the group is then recorded at once (see record).
 * A sequential group (of a per_key subscription: events of one key) sends
 * its events one after another: request k + 1 waits in the group until k
 * got through, and the first that does not gives the rest back unsent.
 */
typedef struct HubGroupSlot
{
	char	   *event_id;
	long		http_status;
	char	   *error;			/* NULL on success */
	char	   *excerpt;		/* NULL: none */
	int			latency_ms;
	int64		retry_after_s;
	bool		deferred;
	TimestampTz defer_until;
	bool		counted;
} HubGroupSlot;

typedef struct HubGroup
{
	int64		delivery_id;
	int64		lease_token;
	HubEndpoint *ep;
	int			n;				/* events */
	int			left;			/* outcomes still to come */
	HubGroupSlot *slots;
	bool		sequential;
	HubPushRequest **waiting;	/* sequential: the requests not sent yet */
} HubGroup;

/* push_claim.c */
extern int	hub_push_claim(int max_events);
extern bool hub_push_request_event(HubRequest *req, HubPushEvent *ev);
extern void hub_push_refresh(void);

/* push_record.c */
extern void hub_push_finished(HubRequest *req, const HubOutcome *o);
extern void hub_push_record(void);
extern bool hub_push_record_due(TimestampTz now);
extern bool hub_push_results_pending(void);
extern TimestampTz hub_push_record_deadline(void);
extern TimestampTz hub_push_take_due(void);
extern bool hub_push_take_followups(void);

/* maintenance.c (dispatcher 0, and every dispatcher at start) */
extern void hub_release_old_leases(void);
extern void hub_release_retired_leases(void);
extern bool hub_maintenance_retention(void);

#endif							/* HUB_PUSH_H */
